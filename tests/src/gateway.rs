//! The real `gateway` binary, run as its own process inside a test namespace with a
//! private pin directory and state directory, the way an operator runs it.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::net::NetNs;

/// Path of the `gateway` binary: `$GATEWAY_BIN` (set by `cargo xtask test`), else
/// the one next to this test's target directory.
pub fn binary() -> PathBuf {
    crate::built_binary(
        "GATEWAY_BIN",
        "gateway",
        "`cargo build -p gateway` or run `cargo xtask test`",
    )
}

/// One gateway instance: its namespace (none: the host's, for proxy-only runs),
/// pin directory and state directory.
pub struct Gateway {
    bin: PathBuf,
    netns: Option<String>,
    pub pin_dir: String,
    pub state_dir: tempfile::TempDir,
}

impl Gateway {
    pub fn new(netns: &NetNs) -> Self {
        crate::require_root();
        Self {
            bin: binary(),
            netns: Some(netns.path()),
            pin_dir: format!("/sys/fs/bpf/gateway-test-{}", crate::unique_suffix()),
            state_dir: tempfile::tempdir().expect("temporary state directory"),
        }
    }

    /// A gateway in the host's network namespace with XDP disabled by its config:
    /// the proxy alone, on loopback, without root.
    pub fn local() -> Self {
        Self {
            bin: binary(),
            netns: None,
            pin_dir: format!("/sys/fs/bpf/gateway-test-{}", crate::unique_suffix()),
            state_dir: tempfile::tempdir().expect("temporary state directory"),
        }
    }

    /// `gateway <args>` inside the gateway namespace (nsenter changes only the
    /// network namespace, so bpffs stays visible).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command.arg(format!("--net={netns}")).arg(&self.bin);
                command
            }
            None => Command::new(&self.bin),
        };
        command
            .args(args)
            .env("GATEWAY_PIN_DIR", &self.pin_dir)
            .env("GATEWAY_STATE_DIR", self.state_dir.path());
        command
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|err| panic!("running gateway {}: {err}", args.join(" ")))
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "gateway {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        let stdout = self.ok(&args);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|err| panic!("gateway {args:?} printed invalid JSON ({err}): {stdout}"))
    }

    /// Runs, asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            !output.status.success(),
            "gateway {} should have failed but printed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Packets counted for a verdict reason, from `gateway stats --json`.
    pub fn stat(&self, reason: &str) -> (u64, u64) {
        let stats = self.json(&["stats"]);
        let row = stats
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["reason"] == reason))
            .unwrap_or_else(|| panic!("no {reason} row in {stats}"));
        (
            row["packets"].as_u64().expect("packets"),
            row["bytes"].as_u64().expect("bytes"),
        )
    }

    /// Starts `gateway run` with this config; logs go to a file in the state dir.
    pub fn spawn_daemon(&self, config: &str) -> Daemon {
        self.spawn_daemon_within(config, Duration::from_secs(20))
    }

    /// [`spawn_daemon`](Self::spawn_daemon), allowing `timeout` for the start (a
    /// debug build restoring a large list on a busy machine takes a while).
    pub fn spawn_daemon_within(&self, config: &str, timeout: Duration) -> Daemon {
        self.spawn_daemon_with(config, timeout, |_| {})
    }

    /// Like [`Gateway::spawn_daemon_within`], with `adjust` applied to the
    /// command first (a lower descriptor limit, …).
    pub fn spawn_daemon_with(
        &self,
        config: &str,
        timeout: Duration,
        adjust: impl FnOnce(&mut Command),
    ) -> Daemon {
        let config_path = self.state_dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).expect("writing the config");
        let log = self
            .state_dir
            .path()
            .join(format!("daemon-{}.log", crate::unique_suffix()));
        let log_file = std::fs::File::create(&log).expect("creating the daemon log");
        let mut command =
            self.command(&["run", "--config", config_path.to_str().expect("UTF-8 path")]);
        adjust(&mut command);
        let child = command
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning gateway run");
        let daemon = Daemon { child, log };
        daemon.wait_for_log("gateway running", timeout);
        daemon
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.netns.is_some() {
            let _ = self.command(&["xdp", "detach"]).output();
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
    }
}

/// A running `gateway run`; killed on drop.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// The daemon's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the daemon did not log {needle:?} within {timeout:?}; log:\n{}",
            self.log()
        );
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, signal) };
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().expect("waiting for the daemon");
        assert!(
            status.success(),
            "the daemon exited with {status}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
