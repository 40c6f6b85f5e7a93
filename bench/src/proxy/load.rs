//! The load the proxy suite puts on its targets — wrk (HTTP/1.1), h2load (HTTP/2),
//! oha (open loop) and a handshake client of its own — pinned to their own CPU, and
//! the parsing of what the tools print.

use std::{
    fs, io,
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore,
    client::Resumption,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};

use anyhow::{Context as _, anyhow, bail};

use crate::machine::pin_current_thread;

/// What one closed-loop keep-alive run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    pub requests_per_s: f64,
    pub requests: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// wrk's Lua script for a bearer token no request has sent before: it reads the file
/// named by its first argument (one token a line) before the run starts and sends the
/// next token with each request. Should wrk send more requests than there are lines
/// it starts over; the caller sees that from the request count.
pub const FRESH_TOKENS_LUA: &str = r#"local tokens = {}
local next_token = 0

function init(args)
  for line in io.lines(args[1]) do
    tokens[#tokens + 1] = line
  end
end

function request()
  next_token = next_token % #tokens + 1
  wrk.headers["Authorization"] = "Bearer " .. tokens[next_token]
  return wrk.format()
end
"#;

/// A wrk Lua script and the arguments it gets (`wrk ... <url> -- <args>`).
pub struct WrkScript<'a> {
    pub path: &'a Path,
    pub args: Vec<String>,
}

/// `wrk -t1 -c<connections> -d<seconds>s --latency <url>` on `cpu`, with `headers`
/// and, if given, a Lua script; inside the network namespace at `netns` (a path for
/// `nsenter --net=`) if given.
pub fn wrk(
    netns: Option<&str>,
    url: &str,
    connections: u32,
    seconds: u32,
    cpu: usize,
    headers: &[String],
    script: Option<&WrkScript>,
) -> anyhow::Result<Throughput> {
    let mut command = match netns {
        Some(path) => {
            let mut command = Command::new("nsenter");
            command.arg(format!("--net={path}")).arg("taskset");
            command
        }
        None => Command::new("taskset"),
    };
    command
        .args(["-c", &cpu.to_string(), "wrk"])
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(headers.iter().flat_map(|header| ["-H", header]));
    if let Some(script) = script {
        command.arg("-s").arg(script.path);
    }
    command.args(["--latency", url]);
    if let Some(script) = script {
        command.arg("--").args(&script.args);
    }
    let text = stdout_of(&mut command, "wrk", " (apt-get install wrk)")?;
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// `h2load -t1 -c<connections> -D <seconds>` on `cpu`, one stream per connection
/// (as wrk has one request in flight per connection); latencies from its per-request
/// log, since h2load prints no percentiles.
pub fn h2load(
    url: &str,
    connections: u32,
    seconds: u32,
    cpu: usize,
    headers: &[String],
    log: &Path,
) -> anyhow::Result<Throughput> {
    let mut command = pinned(cpu, "h2load");
    command
        .args(["-t1", &format!("-c{connections}"), "-m1"])
        .args(headers.iter().flat_map(|header| ["-H", header]))
        .args(["-D", &seconds.to_string(), "--warm-up-time", "1"])
        .arg("--log-file")
        .arg(log)
        .arg(url);
    let text = stdout_of(&mut command, "h2load", " (apt-get install nghttp2-client)")?;
    let (requests_per_s, done, failed) =
        parse_h2load(&text).with_context(|| format!("unexpected h2load output:\n{text}"))?;
    if failed > 0 || done == 0 {
        bail!("h2load: {failed} of {done} requests failed against {url}:\n{text}");
    }
    let log_text = fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut micros = parse_h2load_log(&log_text);
    let _ = fs::remove_file(log);
    micros.sort_by(f64::total_cmp);
    Ok(Throughput {
        requests_per_s,
        requests: done as f64,
        p50_ms: percentile(&micros, 0.50) / 1000.0,
        p99_ms: percentile(&micros, 0.99) / 1000.0,
    })
}

/// What one open-loop run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenLoop {
    pub achieved_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// An open-loop run of oha.
pub struct OhaRun<'a> {
    pub oha: &'a Path,
    /// `https://<name>:<port><path>`, the name the proxy's certificate carries.
    pub url: &'a str,
    /// `<name>:<port>:<ip>:<port>`, where that name really is.
    pub connect_to: String,
    /// The CA the proxy's certificate chains to.
    pub ca: &'a Path,
    pub rate: f64,
    pub connections: u32,
    pub seconds: u32,
    pub cpu: usize,
    pub headers: &'a [String],
}

/// oha on `cpu` sending `rate` requests per second over `connections` keep-alive
/// connections (HTTP/1.1, TLS verified), `--latency-correction`: each latency counts
/// from when the request was due, not from when a free connection sent it, so a
/// stall shows in the tail instead of slowing the sender (coordinated omission).
/// Requests still in flight at the end are waited for (`-w`).
pub fn oha(run: &OhaRun) -> anyhow::Result<OpenLoop> {
    let mut command = pinned(run.cpu, run.oha);
    command
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "-w",
            "--latency-correction",
        ])
        .args(["--worker-threads", "1"])
        .args(["-z", &format!("{}s", run.seconds)])
        .args(["-q", &run.rate.to_string()])
        .args(["-c", &run.connections.to_string()])
        .arg("--cacert")
        .arg(run.ca)
        .args(["--connect-to", &run.connect_to])
        .args(run.headers.iter().flat_map(|header| ["-H", header]))
        .arg(run.url);
    let text = stdout_of(&mut command, &run.oha.display().to_string(), "")?;
    parse_oha(&text).with_context(|| format!("unexpected oha output:\n{text}"))
}

/// Runs a load tool and returns what it printed on standard output; when it fails,
/// the error holds both of its outputs. `hint` follows the tool's name when it cannot
/// start at all (how to install it).
pub(super) fn stdout_of(command: &mut Command, tool: &str, hint: &str) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {tool}{hint}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{tool} failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(text)
}

/// `oha --version`'s line (`oha 1.16.0`), or why `oha` cannot run.
pub fn oha_version(oha: &Path) -> anyhow::Result<String> {
    let output = Command::new(oha)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "running {} (`cargo xtask bench proxy` installs oha; or `cargo install oha \
             --locked` and pass --oha)",
                oha.display()
            )
        })?;
    if !output.status.success() {
        bail!("{} --version failed ({})", oha.display(), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// oha's `--output-format json`: the achieved rate and latency percentiles (seconds),
/// refused unless every request got a 200.
fn parse_oha(text: &str) -> anyhow::Result<OpenLoop> {
    let json: serde_json::Value = serde_json::from_str(text)?;
    let statuses = json["statusCodeDistribution"]
        .as_object()
        .ok_or_else(|| anyhow!("no statusCodeDistribution"))?;
    let errors = json["errorDistribution"]
        .as_object()
        .ok_or_else(|| anyhow!("no errorDistribution"))?;
    if statuses.keys().any(|status| status != "200") || !errors.is_empty() {
        bail!("not every request got a 200: {statuses:?}, errors {errors:?}");
    }
    let number = |value: &serde_json::Value, what: &str| {
        value.as_f64().ok_or_else(|| anyhow!("no number at {what}"))
    };
    let percentiles = &json["latencyPercentiles"];
    let ms = |key: &str| Ok::<_, anyhow::Error>(number(&percentiles[key], key)? * 1000.0);
    Ok(OpenLoop {
        achieved_per_s: number(&json["summary"]["requestsPerSec"], "summary.requestsPerSec")?,
        p50_ms: ms("p50")?,
        p99_ms: ms("p99")?,
        p999_ms: ms("p99.9")?,
    })
}

/// Whether a handshake client resumes sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// No session store: every connection makes a full handshake.
    Full,
    /// Sessions (TLS 1.3 tickets) kept and offered on the next connection.
    Resumed,
}

/// What one handshake run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Handshakes {
    pub connections: f64,
    pub per_s: f64,
    /// Connections the server actually resumed.
    pub resumed: f64,
}

/// One connection after the other to `addr` for `seconds`, on a thread pinned to
/// `cpu`: TCP connect, a TLS 1.3 handshake with SNI `server_name` (trusting
/// `ca_pem`), a close_notify, and reading to the end so the server's session tickets
/// arrive. wrk resumes silently and `openssl s_time -reuse` never reads the TLS 1.3
/// tickets, so neither can tell full from resumed handshakes; this client counts what
/// rustls reports for each connection.
pub fn handshakes(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    kind: Handshake,
    seconds: u32,
    cpu: usize,
) -> anyhow::Result<Handshakes> {
    let mut config = tls13_client(ca_pem)?;
    if kind == Handshake::Full {
        config.resumption = Resumption::disabled();
    }
    let config = Arc::new(config);
    let name = ServerName::try_from(server_name.to_owned())?;
    let duration = Duration::from_secs(seconds.into());
    thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_current_thread(cpu)?;
                let start = Instant::now();
                let (mut connections, mut resumed) = (0u64, 0u64);
                while start.elapsed() < duration {
                    let mut conn = ClientConnection::new(config.clone(), name.clone())?;
                    let mut tcp = TcpStream::connect(addr)?;
                    tcp.set_nodelay(true)?;
                    while conn.is_handshaking() {
                        conn.complete_io(&mut tcp)?;
                    }
                    if conn.handshake_kind() == Some(HandshakeKind::Resumed) {
                        resumed += 1;
                    }
                    conn.send_close_notify();
                    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
                    let _ = io::copy(&mut stream, &mut io::sink());
                    connections += 1;
                }
                let elapsed = start.elapsed().as_secs_f64();
                Ok(Handshakes {
                    connections: connections as f64,
                    per_s: connections as f64 / elapsed,
                    resumed: resumed as f64,
                })
            })
            .join()
            .map_err(|_| anyhow!("the handshake client panicked"))?
    })
}

/// A TLS 1.3 client trusting the CAs in `ca_pem`, with rustls' default resumption.
pub fn tls13_client(ca_pem: &str) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("the edge CA PEM")?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `taskset -c <cpu> <program>`.
pub(super) fn pinned(cpu: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", &cpu.to_string()]).arg(program);
    command
}

/// `Requests/sec:`, the request count and the 50% and 99% lines of `--latency`.
fn parse_wrk(text: &str) -> anyhow::Result<Throughput> {
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx or 3xx")) {
        bail!("the target answered with errors: {}", line.trim());
    }
    let value_after = |prefix: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .map(str::trim)
            .ok_or_else(|| anyhow!("no `{prefix}` line"))
    };
    let requests_per_s = value_after("Requests/sec:")?.parse()?;
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .ok_or_else(|| anyhow!("no request count"))?
        .parse()?;
    Ok(Throughput {
        requests_per_s,
        requests,
        p50_ms: wrk_duration_ms(value_after("50%")?)?,
        p99_ms: wrk_duration_ms(value_after("99%")?)?,
    })
}

/// `250.00us`, `1.20ms`, `2.00s` in milliseconds.
fn wrk_duration_ms(text: &str) -> anyhow::Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| anyhow!("no unit in {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => bail!("unknown unit in {text:?}"),
    })
}

/// `finished in 5.00s, 1234.56 req/s, ...` and `requests: N total, N started, N done,
/// N succeeded, N failed, ...`: (req/s, done, failed).
pub(super) fn parse_h2load(text: &str) -> anyhow::Result<(f64, u64, u64)> {
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|field| field.strip_suffix(" req/s"))
        .ok_or_else(|| anyhow!("no `finished in` line"))?
        .parse()?;
    let counts = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .ok_or_else(|| anyhow!("no `requests:` line"))?;
    let count = |name: &str| -> anyhow::Result<u64> {
        counts
            .split(", ")
            .find_map(|field| field.strip_suffix(name))
            .ok_or_else(|| anyhow!("no `{name}` count"))?
            .trim()
            .parse()
            .map_err(Into::into)
    };
    Ok((rate, count(" done")?, count(" failed")?))
}

/// h2load's `--log-file`: `<start µs>\t<status>\t<duration µs>` per request; only
/// successful requests count.
fn parse_h2load_log(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let status: u16 = fields.nth(1)?.parse().ok()?;
            let micros: f64 = fields.next()?.parse().ok()?;
            (200..300).contains(&status).then_some(micros)
        })
        .collect()
}

/// The `q` quantile of sorted `values` (nearest rank); 0 when there are none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 5s test @ https://127.0.0.1:8443/\n  1 threads and 16 connections\n  \
                    Latency Distribution\n     50%  250.00us\n     75%  400.00us\n     90%    \
                    1.00ms\n     99%    2.50ms\n  60000 requests in 5.00s, 9.00MB read\n\
                    Requests/sec:  12000.50\nTransfer/sec:      1.80MB\n";
        let got = parse_wrk(text).expect("parses");
        assert_eq!(
            got,
            Throughput {
                requests_per_s: 12000.5,
                requests: 60000.0,
                p50_ms: 0.25,
                p99_ms: 2.5
            }
        );
        assert!(parse_wrk(&format!("{text}  Non-2xx or 3xx responses: 5\n")).is_err());
        assert_eq!(wrk_duration_ms("1.5s").expect("seconds"), 1500.0);
    }

    #[test]
    fn reads_h2load_output_and_log() {
        let text = "finished in 5.00s, 8000.20 req/s, 1.00MB/s\nrequests: 40001 total, 40001 \
                    started, 40001 done, 40000 succeeded, 1 failed, 0 errored, 0 timeout\n";
        assert_eq!(parse_h2load(text).expect("parses"), (8000.2, 40001, 1));
        let log = "1700000000000\t200\t150\n1700000000001\t200\t250\n1700000000002\t502\t9\n";
        assert_eq!(parse_h2load_log(log), [150.0, 250.0]);
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
    }

    #[test]
    fn reads_oha_json() {
        let text = r#"{"summary":{"successRate":1.0,"requestsPerSec":999.5},
            "latencyPercentiles":{"p50":0.0005,"p99":0.002,"p99.9":0.0125},
            "statusCodeDistribution":{"200":9995},"errorDistribution":{}}"#;
        assert_eq!(
            parse_oha(text).expect("parses"),
            OpenLoop {
                achieved_per_s: 999.5,
                p50_ms: 0.5,
                p99_ms: 2.0,
                p999_ms: 12.5
            }
        );
        assert!(parse_oha(&text.replace(r#""200":9995"#, r#""200":9990,"401":5"#)).is_err());
        assert!(
            parse_oha(&text.replace(
                r#""errorDistribution":{}"#,
                r#""errorDistribution":{"aborted":1}"#
            ))
            .is_err()
        );
    }
}
