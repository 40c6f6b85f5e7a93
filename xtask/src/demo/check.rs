//! `cargo xtask demo --check` (and step f of `cargo xtask test`): starts the real
//! demo in its own process group, runs every command it printed through `bash -c`
//! as a user would (after the printed exports and alias), verifies what each one
//! promises, then sends Ctrl-C to the group and checks that the demo left no
//! namespace, veth, pinned map, file or process behind. Every wait is bounded; on
//! any failure, or Ctrl-C (which does not reach the demo's group), the whole group
//! is killed and torn down, and the demo's output is shown.

use std::{
    collections::HashMap,
    env, fs,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use super::{
    COMMANDS_FILE, PIN_DIR, WORK_DIR,
    steps::{Commands, Expect},
};
use crate::util;

/// Start-up: namespaces, certificates, the identity provider, XDP and health checks.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// One printed command (the slowest, the blocked burst, takes about 10 s).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// From Ctrl-C to the demo's exit, teardown included.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the demo's output a failure shows.
const TAIL_LINES: usize = 60;

/// Set by Ctrl-C; every wait checks it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Runs the check with the binaries in `bins`; the demo's output goes to
/// `bins/demo-check.log`.
pub fn run(bins: &Path) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        )
    };
    let gateway = bins.join("gateway");
    super::teardown(&gateway);
    let log_path = bins.join("demo-check.log");
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let started = Instant::now();
    let mut demo = Command::new(env::current_exe().context("locating xtask itself")?)
        .arg("demo")
        .arg("--bin-dir")
        .arg(bins)
        // Its own group, like a job in a terminal: Ctrl-C goes to every process in it.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("demo log")?)
        .stderr(log)
        .spawn()
        .context("starting the demo")?;
    let group = group_of(&demo)?;
    let result = drive(&mut demo, group, &log_path);
    if let Err(err) = result {
        // SAFETY: kill has no memory preconditions; the group is the demo's own.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = demo.wait();
        super::teardown(&gateway);
        eprintln!("{}", tail(&log_path));
        return Err(err.context(format!(
            "the demo check failed; its output is in {}",
            log_path.display()
        )));
    }
    println!(
        "demo check passed in {:.0} s (the demo's output: {})",
        started.elapsed().as_secs_f64(),
        log_path.display()
    );
    Ok(())
}

/// The process group id of `child`, which leads its own group.
fn group_of(child: &Child) -> anyhow::Result<libc::pid_t> {
    libc::pid_t::try_from(child.id()).context("a child's pid does not fit a pid_t")
}

/// Waits for the printed commands, runs and verifies them, stops the demo and checks
/// what it left behind.
fn drive(demo: &mut Child, group: libc::pid_t, log_path: &Path) -> anyhow::Result<()> {
    let commands = wait_for_commands(demo)?;
    let printed = fs::read_to_string(log_path).context("reading the demo's output")?;
    for line in commands
        .setup
        .iter()
        .chain(commands.steps.iter().map(|s| &s.command))
    {
        if !printed.contains(&format!("  {line}")) {
            bail!("{COMMANDS_FILE} holds a command the demo did not print: {line}");
        }
    }
    let setup = format!("shopt -s expand_aliases\n{}\n", commands.setup.join("\n"));
    let mut last_output = HashMap::<&str, String>::new();
    for step in &commands.steps {
        if step.expect == Expect::Interactive {
            println!("(not run, interactive) {}", step.command);
            continue;
        }
        println!("$ {}", step.command);
        let (status, output) = run_step(&format!("{setup}{}", step.command))?;
        print!("{output}");
        if !status.success() {
            bail!("`{}` failed ({status})", step.command);
        }
        let previous = last_output.get(step.command.as_str()).map(String::as_str);
        if let Err(broken) = step.expect.verify(&output, previous) {
            bail!("`{}` did not keep its promise: {broken}", step.command);
        }
        last_output.insert(&step.command, output);
    }
    println!("==> Ctrl-C to the demo");
    // SAFETY: kill has no memory preconditions; the group is the demo's own.
    if unsafe { libc::kill(-group, libc::SIGINT) } != 0 {
        bail!(
            "could not send SIGINT to the demo: {}",
            std::io::Error::last_os_error()
        );
    }
    let status = wait_child(demo, STOP_TIMEOUT)?.with_context(|| {
        format!(
            "the demo did not exit within {} s of Ctrl-C",
            STOP_TIMEOUT.as_secs()
        )
    })?;
    if !status.success() {
        bail!("the demo exited with {status} after Ctrl-C");
    }
    left_behind(group)
}

/// `commands.json`, once the demo has written it (it does once the gateway is ready).
fn wait_for_commands(demo: &mut Child) -> anyhow::Result<Commands> {
    let path = Path::new(WORK_DIR).join(COMMANDS_FILE);
    let deadline = Instant::now() + START_TIMEOUT;
    while !path.exists() {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted (Ctrl-C)");
        }
        if let Some(status) = demo.try_wait().context("waiting for the demo")? {
            bail!("the demo exited ({status}) before printing its commands");
        }
        if Instant::now() > deadline {
            bail!(
                "the demo printed no commands within {} s",
                START_TIMEOUT.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    let json = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&json).with_context(|| format!("parsing {}", path.display()))
}

/// Runs `script` with `bash -c` in a process group of its own, killed after
/// [`STEP_TIMEOUT`]; its exit status and standard output (stderr is shown as is).
fn run_step(script: &str) -> anyhow::Result<(ExitStatus, String)> {
    let out_path = env::temp_dir().join(format!("gateway-demo-check-{}.out", std::process::id()));
    let out =
        fs::File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
    let mut child = Command::new("bash")
        .args(["-c", script])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .spawn()
        .context("running bash")?;
    let waited = wait_child(&mut child, STEP_TIMEOUT);
    let output = fs::read(&out_path);
    let _ = fs::remove_file(&out_path);
    let status = match waited {
        Ok(Some(status)) => status,
        stopped => {
            let group = group_of(&child)?;
            // SAFETY: kill has no memory preconditions; the group is the step's own.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            return Err(stopped.err().unwrap_or_else(|| {
                anyhow!(
                    "the command did not finish within {} s",
                    STEP_TIMEOUT.as_secs()
                )
            }));
        }
    };
    let output = output.context("reading the command's output")?;
    Ok((status, String::from_utf8_lossy(&output).into_owned()))
}

/// `child`'s exit status, or `None` if it is still running after `timeout`; an
/// error on Ctrl-C.
fn wait_child(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted (Ctrl-C)");
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Fails naming whatever the demo left: a process of its group, a `gwdemo-*`
/// namespace, a `gwdemo*` interface in this namespace, the pinned maps or its files.
fn left_behind(group: libc::pid_t) -> anyhow::Result<()> {
    let mut left = Vec::new();
    // SAFETY: signal 0 only checks whether the group still has a process.
    if unsafe { libc::kill(-group, 0) } == 0 {
        left.push(format!("processes of the demo's group {group}"));
    }
    let namespaces = util::stdout_of(Command::new("ip").args(["netns", "list"]))?;
    left.extend(
        namespaces
            .lines()
            .filter(|line| line.starts_with("gwdemo-"))
            .map(|line| format!("namespace {line}")),
    );
    let links = util::stdout_of(Command::new("ip").args(["-o", "link", "show"]))?;
    left.extend(
        links
            .lines()
            .filter_map(|line| line.split(':').nth(1))
            .map(str::trim)
            .filter(|name| name.starts_with("gwdemo"))
            .map(|name| format!("interface {name}")),
    );
    for path in [PIN_DIR, WORK_DIR] {
        if Path::new(path).exists() {
            left.push(path.to_owned());
        }
    }
    if !left.is_empty() {
        bail!("the demo left behind: {}", left.join(", "));
    }
    println!("==> the demo left no namespace, interface, pinned map, file or process behind");
    Ok(())
}

/// The last [`TAIL_LINES`] lines of the demo's output.
fn tail(log_path: &Path) -> String {
    let text = fs::read_to_string(log_path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    format!(
        "--- the demo's output, last lines ---\n{}",
        lines[from..].join("\n")
    )
}
