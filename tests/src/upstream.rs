//! A real upstream process (the `test-upstream` binary of this crate) for the
//! end-to-end tests, optionally inside a test network namespace. The guard owns the
//! process: [`Upstream::kill`] and [`Upstream::restart`] (same address) simulate a
//! host failing and coming back; drop kills it.

use std::{
    fs::OpenOptions,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use crate::{net::NetNs, pki::Issued};

/// How long the upstream may take to print `listening ADDR`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the `test-upstream` binary: `$TEST_UPSTREAM_BIN` if set, else the one cargo
/// builds into this test's target directory (`target/<profile>/test-upstream`). Cargo
/// builds a package's binaries before running its integration tests, so it is there
/// under `cargo test -p gateway-tests` and `cargo xtask test`. (`CARGO_BIN_EXE_*` would
/// name the same file, but only integration tests can read it, at compile time.)
pub fn binary() -> PathBuf {
    crate::built_binary(
        "TEST_UPSTREAM_BIN",
        "test-upstream",
        "`cargo build -p gateway-tests --bin test-upstream`",
    )
}

/// Options for an [`Upstream`]; see [`Upstream::builder`].
pub struct UpstreamBuilder<'a> {
    name: &'a str,
    server: &'a Issued,
    client_ca_pem: &'a str,
    listen: SocketAddr,
    http2: bool,
    netns: Option<&'a NetNs>,
}

impl<'a> UpstreamBuilder<'a> {
    /// Listens here instead of `127.0.0.1:0` (port 0: a free port, see [`Upstream::addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Offers HTTP/2 by ALPN as well as HTTP/1.1.
    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// Runs inside this network namespace (needs root).
    pub fn netns(mut self, netns: &'a NetNs) -> Self {
        self.netns = Some(netns);
        self
    }

    /// Starts the process and waits until it listens; panics with its log if it does
    /// not within 10 s.
    pub fn start(self) -> Upstream {
        let dir = tempfile::tempdir().expect("temporary directory for the upstream");
        let (cert, key) = self.server.write(dir.path(), "server");
        let client_ca = dir.path().join("client-ca.crt");
        std::fs::write(&client_ca, self.client_ca_pem).expect("writing the client CA");
        let mut args = vec![
            "--cert".into(),
            cert.into_os_string(),
            "--key".into(),
            key.into_os_string(),
            "--client-ca".into(),
            client_ca.into_os_string(),
            "--name".into(),
            self.name.into(),
        ];
        if self.http2 {
            args.push("--http2".into());
        }
        args.push("--mode-file".into());
        args.push(dir.path().join("mode").into_os_string());
        let mut upstream = Upstream {
            name: self.name.to_owned(),
            binary: binary(),
            args,
            netns: self.netns.map(NetNs::path),
            log: dir.path().join("upstream.log"),
            addr: self.listen,
            child: None,
            dir,
        };
        upstream.spawn();
        upstream
    }
}

/// A running `test-upstream` process; killed on drop.
pub struct Upstream {
    name: String,
    binary: PathBuf,
    /// Everything but `--listen`.
    args: Vec<std::ffi::OsString>,
    netns: Option<String>,
    log: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Upstream {
    /// An upstream called `name` serving `server`'s certificate and accepting client
    /// certificates issued by the CA whose certificate is `client_ca_pem`.
    pub fn builder<'a>(
        name: &'a str,
        server: &'a Issued,
        client_ca_pem: &'a str,
    ) -> UpstreamBuilder<'a> {
        UpstreamBuilder {
            name,
            server,
            client_ca_pem,
            listen: (Ipv4Addr::LOCALHOST, 0).into(),
            http2: false,
            netns: None,
        }
    }

    /// The address it listens on (the real port when started with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the fault the host acts out, live (see `test-upstream`'s docs):
    /// `ok`, `slow MS`, `status CODE`, `reset`, `blackhole`, `close-after-headers`,
    /// `truncate`.
    pub fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode)
            .unwrap_or_else(|err| panic!("setting upstream {}'s mode: {err}", self.name));
    }

    /// The process's stderr so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process (SIGKILL: no goodbye to open connections) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns how it exited.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("upstream {} is not running", self.name));
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        child
            .wait()
            .unwrap_or_else(|err| panic!("waiting for upstream {}: {err}", self.name))
    }

    /// Kills the process if it runs and starts a new one on the same address; the
    /// request count starts again from zero.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts the process on `self.addr` and records the address it reports.
    fn spawn(&mut self) {
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command.arg(format!("--net={netns}")).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the upstream log");
        let mut child = command
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("spawning {}: {err}", self.binary.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let Some(addr) = line
            .strip_prefix("listening ")
            .and_then(|addr| addr.trim().parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "upstream {} did not report `listening ADDR` within {START_TIMEOUT:?} \
                 (stdout: {line:?}); its log:\n{}",
                self.name,
                self.log()
            );
        };
        self.addr = addr;
        self.child = Some(child);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}
