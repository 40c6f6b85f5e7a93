//! The machine a run happened on, and how busy it was: the bench shares its CPUs with
//! whatever else runs there, so it waits for a quiet moment before each run (within
//! a bounded budget) and records what it found.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use serde::Serialize;

/// CPU model, core count and kernel.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
}

/// Reads the machine description from `/proc`.
pub fn describe() -> anyhow::Result<Machine> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
    let cpu_model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or_else(
            || "unknown".to_owned(),
            |(_, model)| model.trim().to_owned(),
        );
    let cores = thread::available_parallelism().map_or(1, usize::from);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    Ok(Machine {
        cpu_model,
        cores,
        kernel,
    })
}

/// Aggregate CPU time of all CPUs from `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    /// Everything but idle and iowait.
    pub busy: u64,
    /// Softirq time only (where the receive path of a veth runs).
    pub softirq: u64,
    pub total: u64,
}

impl CpuTimes {
    pub fn now() -> anyhow::Result<Self> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse_stat(&stat).ok_or_else(|| anyhow!("no aggregate `cpu` line in /proc/stat"))
    }

    /// Busy share of all CPUs between `self` and `later`, in percent.
    pub fn busy_percent(&self, later: &Self) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * later.busy.saturating_sub(self.busy) as f64 / total as f64
    }

    /// Softirq time between `self` and `later`, in nanoseconds.
    pub fn softirq_ns(&self, later: &Self) -> f64 {
        later.softirq.saturating_sub(self.softirq) as f64 * tick_ns()
    }

    /// Busy time of all CPUs between `self` and `later`, in nanoseconds.
    pub fn busy_ns(&self, later: &Self) -> f64 {
        later.busy.saturating_sub(self.busy) as f64 * tick_ns()
    }
}

/// Length of one `/proc/stat` clock tick in nanoseconds.
fn tick_ns() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// The aggregate `cpu` line: user nice system idle iowait irq softirq steal ...
fn parse_stat(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // Guest time is already part of user time.
    let counted = fields.get(..8)?;
    let total: u64 = counted.iter().sum();
    let idle = counted[3] + counted[4];
    Some(CpuTimes {
        busy: total - idle,
        softirq: counted[6],
        total,
    })
}

/// What the machine looked like just before a run.
#[derive(Clone, Debug, Serialize)]
pub struct Idle {
    /// Busy share of all CPUs over the last sample before the run, percent.
    pub busy_percent: f64,
    /// One-minute load average at that moment.
    pub load1: f64,
    /// Seconds spent waiting for it to calm down.
    pub waited_s: f64,
    /// False when the wait gave up and the run went ahead on a busy machine.
    pub quiet: bool,
}

/// Waits for a quiet machine before each run, within a total budget so a machine that
/// never calms down still gets measured (and says so) in bounded time.
pub struct IdleWaiter {
    max_busy_percent: f64,
    per_run: Duration,
    budget_left: Duration,
    /// Every wait's outcome, for the report.
    pub history: Vec<Idle>,
}

/// How long one look at `/proc/stat` lasts.
const SAMPLE: Duration = Duration::from_millis(400);

impl IdleWaiter {
    pub fn new(max_busy_percent: f64, per_run: Duration, budget: Duration) -> Self {
        Self {
            max_busy_percent,
            per_run,
            budget_left: budget,
            history: Vec::new(),
        }
    }

    /// Samples the CPUs until they are quieter than the threshold or the wait for this
    /// run (or the whole budget) is used up.
    pub fn wait(&mut self) -> anyhow::Result<Idle> {
        let start = Instant::now();
        let limit = self.per_run.min(self.budget_left);
        loop {
            let before = CpuTimes::now()?;
            thread::sleep(SAMPLE);
            let busy_percent = before.busy_percent(&CpuTimes::now()?);
            let quiet = busy_percent <= self.max_busy_percent;
            let waited = start.elapsed();
            if quiet || waited >= limit {
                self.budget_left = self.budget_left.saturating_sub(waited);
                let idle = Idle {
                    busy_percent,
                    load1: load1()?,
                    waited_s: waited.as_secs_f64(),
                    quiet,
                };
                self.history.push(idle.clone());
                return Ok(idle);
            }
        }
    }
}

fn load1() -> anyhow::Result<f64> {
    let text = fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    text.split_whitespace()
        .next()
        .and_then(|load| load.parse().ok())
        .ok_or_else(|| anyhow!("unexpected /proc/loadavg: {text}"))
}

/// Pins the calling thread to `cpu` (load tools and the generator get their own CPU).
pub fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within it for any
    // cpu below CPU_SETSIZE, which sched_setaffinity checks again; only this thread's
    // affinity changes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning a thread to CPU {cpu}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_aggregate_cpu_line() {
        let stat = "cpu  100 5 50 800 10 1 20 0 0 0\ncpu0 50 2 25 400 5 0 10 0 0 0\n";
        let times = parse_stat(stat).expect("a cpu line");
        assert_eq!(times.total, 986);
        assert_eq!(times.busy, 176);
        assert_eq!(times.softirq, 20);
        assert!(parse_stat("intr 1 2 3\n").is_none());
    }
}
