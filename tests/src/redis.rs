//! Real `redis-server` processes for the fleet tests, in a "backplane" network
//! namespace that every gateway namespace reaches over its own veth pair.
//!
//! The backplane holds a bridge with [`REDIS_ADDR`]; gateway `i` gets
//! `198.19.0.(10 + i)` on its side. Redis listens on the bridge address only,
//! so a test can cut one gateway off (its veth down) or stop Redis for all.
//! Everything is removed on drop; processes are killed by their own pid.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    gateway::Gateway,
    net::{NetNs, Topology, ip},
};

/// Redis's address on the backplane bridge.
pub const REDIS_ADDR: &str = "198.19.0.1";

/// The backplane namespace and its bridge.
pub struct Backplane {
    pub ns: NetNs,
    bridge: String,
    suffix: String,
    links: std::sync::Mutex<u32>,
}

impl Backplane {
    pub fn new() -> Self {
        let suffix = crate::unique_suffix();
        let ns = NetNs::new(format!("flrd-{suffix}"));
        let bridge = format!("br{suffix}");
        ip(&["-n", &ns.name, "link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{REDIS_ADDR}/24"),
            "dev",
            &bridge,
        ]);
        ip(&["-n", &ns.name, "link", "set", &bridge, "up"]);
        Self {
            ns,
            bridge,
            suffix,
            links: std::sync::Mutex::new(0),
        }
    }

    /// Joins `gateway_ns` to the backplane; returns the address it got there and
    /// the name of its interface (in `gateway_ns`).
    pub fn join(&self, gateway_ns: &NetNs) -> (String, String) {
        let i = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            *links += 1;
            *links
        };
        let (inner, outer) = (
            format!("bg{i}{}", self.suffix),
            format!("bp{i}{}", self.suffix),
        );
        ip(&[
            "link",
            "add",
            &inner,
            "netns",
            &gateway_ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &outer,
            "netns",
            &self.ns.name,
        ]);
        ip(&[
            "-n",
            &self.ns.name,
            "link",
            "set",
            &outer,
            "master",
            &self.bridge,
        ]);
        ip(&["-n", &self.ns.name, "link", "set", &outer, "up"]);
        let addr = format!("198.19.0.{}", 10 + i);
        ip(&[
            "-n",
            &gateway_ns.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inner,
        ]);
        ip(&["-n", &gateway_ns.name, "link", "set", &inner, "up"]);
        (addr, inner)
    }

    /// One edge: a gateway namespace with its own client namespace (see
    /// [`Topology`]) and a gateway instance in it, joined to the backplane.
    pub fn edge(&self, client_addrs: &[&str]) -> Edge {
        let topology = Topology::new(client_addrs);
        let (backplane_addr, _) = self.join(&topology.gateway);
        let gateway = Gateway::new(&topology.gateway);
        Edge {
            gateway,
            topology,
            backplane_addr,
        }
    }

    /// Starts a standalone `redis-server` on `port` with no persistence (a
    /// restart comes back empty, the case the gateways must repair).
    pub fn redis(&self, port: u16) -> Redis {
        Redis::start(&self.ns, port, &[])
    }

    /// Three `redis-server` processes in cluster mode on `ports`, joined with
    /// `redis-cli --cluster create` (three masters, no replicas).
    pub fn cluster(&self, ports: [u16; 3]) -> Vec<Redis> {
        let nodes: Vec<Redis> = ports
            .iter()
            .map(|port| {
                Redis::start(
                    &self.ns,
                    *port,
                    &["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"],
                )
            })
            .collect();
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(ports.iter().map(|port| format!("{REDIS_ADDR}:{port}")));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(str::to_owned));
        let output = self.cli_raw(&args);
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info = self.cli(ports[0], &["cluster", "info"]);
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not converge within 20 s:\n{info}"
            );
            thread::sleep(Duration::from_millis(100));
        }
        nodes
    }

    /// `redis-cli -h REDIS_ADDR -p port args…` in the backplane; returns stdout.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let mut all = vec![
            "-h".to_owned(),
            REDIS_ADDR.to_owned(),
            "-p".to_owned(),
            port.to_string(),
        ];
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        let output = self.cli_raw(&all);
        assert!(
            output.status.success(),
            "redis-cli {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn cli_raw(&self, args: &[String]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.ns.path()))
            .arg("redis-cli")
            .args(args)
            .output()
            .expect("running redis-cli (apt-get install redis-server, or `cargo xtask setup`)")
    }
}

impl Default for Backplane {
    fn default() -> Self {
        Self::new()
    }
}

/// A gateway host of the fleet: what [`Backplane::edge`] builds. The gateway
/// (with XDP, once started) guards `topology.gateway`; its clients live in
/// `topology.client`.
pub struct Edge {
    // Declared first so it is dropped (and detached) while its namespace exists.
    pub gateway: Gateway,
    pub topology: Topology,
    /// The gateway namespace's address on the backplane.
    pub backplane_addr: String,
}

/// One `redis-server` process; killed (by its pid) on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    ns_path: String,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Redis {
    fn start(ns: &NetNs, port: u16, extra: &[&str]) -> Self {
        let mut redis = Self {
            child: None,
            port,
            ns_path: ns.path(),
            dir: tempfile::tempdir().expect("a directory for redis-server"),
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
        };
        redis.restart();
        redis
    }

    /// `redis://REDIS_ADDR:port`.
    pub fn url(&self) -> String {
        format!("redis://{REDIS_ADDR}:{}", self.port)
    }

    /// Kills the process (SIGKILL, as a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (after [`Redis::kill`]): empty, as nothing is persisted.
    pub fn restart(&mut self) {
        self.kill();
        let log = self.dir.path().join("redis.log");
        // The last run's "Ready to accept connections" must not count for this one.
        let _ = std::fs::remove_file(&log);
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.ns_path))
            .arg(redis_server())
            .args(["--bind", REDIS_ADDR, "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(command.spawn().expect("spawning redis-server"));
        self.wait_until_listening(&log);
    }

    fn wait_until_listening(&self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("Ready to accept connections") {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not start within 10 s; log:\n{}",
            self.port,
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-server`'s path; panics with how to install it.
fn redis_server() -> PathBuf {
    let path = PathBuf::from("/usr/bin/redis-server");
    assert!(
        path.exists(),
        "redis-server is not installed: run `cargo xtask setup` (or apt-get install redis-server)"
    );
    path
}

/// A `redis-server` on a free loopback port (no namespace), persistence
/// off, for gateways on loopback with XDP off; killed on drop or on demand.
pub struct LoopbackRedis {
    child: Option<Child>,
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl LoopbackRedis {
    /// Starts one and waits (at most 10 s) until it answers PING.
    pub fn start() -> Self {
        use std::io::{Read as _, Write as _};
        let addr = crate::fleet::free_port();
        let dir = tempfile::tempdir().expect("tempdir for redis-server");
        let child = Command::new("redis-server")
            .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (cargo xtask setup)");
        let ping = || {
            let Ok(mut stream) =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
            else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut reply = [0u8; 7];
            stream.write_all(b"PING\r\n").is_ok()
                && stream.read_exact(&mut reply).is_ok()
                && &reply == b"+PONG\r\n"
        };
        let server = Self {
            child: Some(child),
            addr,
            _dir: dir,
        };
        for _ in 0..200 {
            if ping() {
                return server;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on {addr} did not answer within 10 s");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// kill -9, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LoopbackRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
