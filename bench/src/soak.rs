//! Memory under a long steady load: the real `gateway run` in front of one
//! `test-upstream` on loopback, driven by wrk for `--seconds` (keep-alive
//! connections, plus connections that close after every request, so new TLS
//! connections keep arriving), with nothing scraping `/metrics`. Every
//! `--interval` the gateway's resident memory (`VmRSS`) and open descriptors
//! are sampled, with the requests the upstream has served so far (asked of the
//! upstream, never of the gateway, so no scrape hides a leak); the report
//! gives each sample and the trend: the least-squares slope of RSS per 1,000
//! requests over the second half of the run (after the allocator's warm-up)
//! and over all of it, and of descriptors per 1,000 requests.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use gateway::config::LogOutput;
use gateway_tests::{fleet::Fleet, gateway::Daemon, http::Protocol};
use serde::Serialize;

use crate::{proxy::load, report::Run};

#[derive(Clone, Serialize)]
pub struct Options {
    /// Length of the load.
    pub seconds: u32,
    /// Seconds between samples.
    pub interval: u32,
    /// wrk's keep-alive connections.
    pub connections: u32,
    /// wrk's connections that send `Connection: close` (a new TLS connection per request).
    pub new_connections: u32,
    /// CPU the load tools run on.
    pub load_cpu: usize,
}

/// One sample of the gateway process.
#[derive(Clone, Serialize)]
pub struct Sample {
    pub seconds: f64,
    /// Requests the upstream has served since the load started.
    pub requests: u64,
    pub rss_kib: u64,
    pub open_fds: u64,
}

/// The least-squares slopes of a run (or part of it).
#[derive(Clone, Serialize)]
pub struct Trend {
    pub samples: usize,
    pub rss_kib_per_1000_requests: f64,
    pub fds_per_1000_requests: f64,
}

/// Everything one `gateway-bench soak` run measured.
#[derive(Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub run: Run,
    pub options: Options,
    pub samples: Vec<Sample>,
    /// Over every sample.
    pub whole: Option<Trend>,
    /// Over the second half of the samples.
    pub second_half: Option<Trend>,
    /// What each wrk reported at the end: keep-alive, new connections.
    pub keep_alive_requests: f64,
    pub new_connection_requests: f64,
}

pub fn run(options: &Options, run: Run) -> anyhow::Result<Report> {
    if options.interval == 0 || options.seconds < options.interval {
        bail!("--seconds must be at least one --interval (and --interval at least 1)");
    }
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    // No per-request access log, as in the other suites; the admin listener is
    // up (as deployed) and nobody scrapes it.
    config.log.access = LogOutput::Off;
    let daemon = fleet.start(&config);
    let url = format!("https://{}/", fleet.listen);
    wait_until_served(&fleet, &url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime that asks the upstream")?;
    let served = || runtime.block_on(fleet.upstream_count());
    let base = served();
    let started = Instant::now();
    let wrk = |connections: u32, headers: Vec<String>| {
        let url = url.clone();
        let (seconds, cpu) = (options.seconds, options.load_cpu);
        thread::spawn(move || load::wrk(None, &url, connections, seconds, cpu, &headers, None))
    };
    let keep_alive = wrk(options.connections, Vec::new());
    let closing = (options.new_connections > 0).then(|| {
        wrk(
            options.new_connections,
            vec!["Connection: close".to_owned()],
        )
    });
    let mut samples = vec![sample(&daemon, 0.0, 0)?];
    print_sample(&samples[0]);
    let interval = Duration::from_secs(u64::from(options.interval));
    let mut next = interval;
    while next <= Duration::from_secs(u64::from(options.seconds)) {
        thread::sleep(next.saturating_sub(started.elapsed()));
        let requests = served().saturating_sub(base);
        let taken = sample(&daemon, started.elapsed().as_secs_f64(), requests)?;
        print_sample(&taken);
        samples.push(taken);
        next += interval;
    }
    let finished = |handle: thread::JoinHandle<anyhow::Result<load::Throughput>>| {
        handle
            .join()
            .map_err(|_| anyhow!("a wrk thread panicked"))?
    };
    let keep_alive = finished(keep_alive).context("the keep-alive wrk")?;
    let closing = closing
        .map(finished)
        .transpose()
        .context("the new-connection wrk")?;
    let half = samples.len() / 2;
    Ok(Report {
        run,
        options: options.clone(),
        whole: trend(&samples),
        second_half: trend(&samples[half..]),
        samples,
        keep_alive_requests: keep_alive.requests,
        new_connection_requests: closing.map_or(0.0, |c| c.requests),
    })
}

/// Waits until a request through the gateway reaches the upstream (its pool
/// found the endpoint healthy).
fn wait_until_served(fleet: &Fleet, url: &str) -> anyhow::Result<()> {
    let client = fleet.client(Protocol::Http1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for _ in 0..100 {
        let ok = runtime.block_on(async {
            let request = http::Request::get("/").body(bytes::Bytes::new()).ok()?;
            let response =
                tokio::time::timeout(Duration::from_secs(5), client.send(fleet.listen, request))
                    .await
                    .ok()?
                    .ok()?;
            response.status().is_success().then_some(())
        });
        if ok.is_some() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("the gateway at {url} never served a request")
}

fn sample(daemon: &Daemon, seconds: f64, requests: u64) -> anyhow::Result<Sample> {
    let pid = daemon.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (did the gateway exit?)"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64;
    Ok(Sample {
        seconds,
        requests,
        rss_kib,
        open_fds,
    })
}

fn print_sample(sample: &Sample) {
    println!(
        "{:>6.0} s  {:>9} requests  RSS {:>7} KiB  {:>4} descriptors",
        sample.seconds, sample.requests, sample.rss_kib, sample.open_fds
    );
}

/// Least-squares slopes over `samples` against requests, per 1,000 requests.
fn trend(samples: &[Sample]) -> Option<Trend> {
    let slope = |value: fn(&Sample) -> f64| {
        let n = samples.len() as f64;
        let x = |s: &Sample| s.requests as f64 / 1000.0;
        let (mean_x, mean_y) = (
            samples.iter().map(x).sum::<f64>() / n,
            samples.iter().map(value).sum::<f64>() / n,
        );
        let covariance: f64 = samples
            .iter()
            .map(|s| (x(s) - mean_x) * (value(s) - mean_y))
            .sum();
        let variance: f64 = samples.iter().map(|s| (x(s) - mean_x).powi(2)).sum();
        (variance > 0.0).then(|| covariance / variance)
    };
    if samples.len() < 2 {
        return None;
    }
    Some(Trend {
        samples: samples.len(),
        rss_kib_per_1000_requests: slope(|s| s.rss_kib as f64)?,
        fds_per_1000_requests: slope(|s| s.open_fds as f64)?,
    })
}

impl Report {
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let o = &self.options;
        let mut out = self.run.markdown();
        let _ = writeln!(
            out,
            "### Soak: memory and descriptors under steady load, nothing scraping `/metrics`\n\n\
             Setup: `gateway run` on loopback in front of one `test-upstream` (mTLS), access \
             log off, admin listener up and never scraped. wrk for {} s: `-c{}` keep-alive and \
             `-c{}` with `Connection: close` (a new TLS connection per request). Requests are \
             counted by the upstream. Samples every {} s.\n",
            o.seconds, o.connections, o.new_connections, o.interval
        );
        out.push_str("| s | requests | RSS KiB | descriptors |\n| ---: | ---: | ---: | ---: |\n");
        for s in &self.samples {
            let _ = writeln!(
                out,
                "| {:.0} | {} | {} | {} |",
                s.seconds, s.requests, s.rss_kib, s.open_fds
            );
        }
        let _ = writeln!(
            out,
            "\nwrk: {:.0} keep-alive requests, {:.0} requests on new connections.\n",
            self.keep_alive_requests, self.new_connection_requests
        );
        for (label, trend) in [
            ("whole run", &self.whole),
            ("second half", &self.second_half),
        ] {
            match trend {
                Some(t) => {
                    let _ = writeln!(
                        out,
                        "Trend, {label} ({} samples): {:+.2} KiB RSS and {:+.3} descriptors per \
                         1,000 requests.",
                        t.samples, t.rss_kib_per_1000_requests, t.fds_per_1000_requests
                    );
                }
                None => {
                    let _ = writeln!(out, "Trend, {label}: too few samples.");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(requests: u64, rss_kib: u64, open_fds: u64) -> Sample {
        Sample {
            seconds: 0.0,
            requests,
            rss_kib,
            open_fds,
        }
    }

    #[test]
    fn slopes_per_thousand_requests() {
        let flat = trend(&[at(0, 100, 9), at(1000, 100, 9), at(2000, 100, 9)]).expect("trend");
        assert_eq!(flat.rss_kib_per_1000_requests, 0.0);
        let growing = trend(&[at(0, 100, 9), at(2000, 160, 11), at(4000, 220, 13)]).expect("trend");
        assert!((growing.rss_kib_per_1000_requests - 30.0).abs() < 1e-9);
        assert!((growing.fds_per_1000_requests - 1.0).abs() < 1e-9);
        assert!(trend(&[at(0, 1, 1)]).is_none());
        assert!(
            trend(&[at(5, 1, 1), at(5, 2, 1)]).is_none(),
            "no requests: no slope"
        );
    }
}
