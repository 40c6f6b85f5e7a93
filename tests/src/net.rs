//! Network namespaces joined by veth, and sockets opened inside them.
//!
//! Addresses come only from the benchmarking ranges 198.18.0.0/15 and 2001:2::/48.
//! Everything created here is removed on drop, also when a test fails.

use socket2::{Domain, Protocol, Socket, Type};
use std::{
    collections::HashMap,
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "running `ip {}`: {err} (is iproute2 installed?)",
                args.join(" ")
            )
        });
    assert!(
        output.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A named network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: String) -> Self {
        crate::require_root();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // No duplicate address detection: addresses (link-local ones too) are usable
        // the moment the link is up, instead of a second later.
        ip(&[
            "netns",
            "exec",
            &name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]);
        Self { name }
    }

    /// Path of the namespace file, for `nsenter --net=`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it creates
    /// stay in the namespace wherever they are used afterwards.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|err| panic!("opening {path}: {err}"));
            // SAFETY: a valid namespace fd; setns only affects this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("the namespace thread panicked")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces, "gateway" and "client", joined by a veth pair:
/// gateway 198.18.0.1/24 and 2001:2::1/64 on `gw_iface`; the client holds the
/// given source addresses on `client_iface`.
pub struct Topology {
    pub gateway: NetNs,
    pub client: NetNs,
    pub gw_iface: String,
    pub client_iface: String,
    client_addrs: Vec<String>,
}

pub const GATEWAY_V4: &str = "198.18.0.1";
pub const GATEWAY_V6: &str = "2001:2::1";

impl Topology {
    pub fn new(client_addrs: &[&str]) -> Self {
        Self::with_prefix("gwt", client_addrs)
    }

    /// Like [`Topology::new`], with namespace names starting `<prefix>-`, so a driver
    /// that runs it (the benchmark) can find and remove leftovers of a killed run.
    pub fn with_prefix(prefix: &str, client_addrs: &[&str]) -> Self {
        let suffix = crate::unique_suffix();
        let topology = Self {
            gateway: NetNs::new(format!("{prefix}-gw-{suffix}")),
            client: NetNs::new(format!("{prefix}-cl-{suffix}")),
            gw_iface: format!("gw{suffix}"),
            client_iface: format!("cl{suffix}"),
            client_addrs: client_addrs.iter().map(|addr| (*addr).to_owned()).collect(),
        };
        topology.link();
        topology
    }

    /// Deletes the veth pair and creates it again with the same names and addresses
    /// (new interface indexes), as when a NIC is re-probed.
    pub fn recreate_link(&self) {
        ip(&["-n", &self.gateway.name, "link", "del", &self.gw_iface]);
        self.link();
    }

    fn link(&self) {
        let (gw, client) = (&self.gateway.name, &self.client.name);
        let (gw_iface, client_iface) = (&self.gw_iface, &self.client_iface);
        ip(&[
            "link",
            "add",
            gw_iface,
            "netns",
            gw,
            "type",
            "veth",
            "peer",
            "name",
            client_iface,
            "netns",
            client,
        ]);
        ip(&[
            "-n",
            gw,
            "addr",
            "add",
            &format!("{GATEWAY_V4}/24"),
            "dev",
            gw_iface,
        ]);
        ip(&[
            "-n",
            gw,
            "addr",
            "add",
            &format!("{GATEWAY_V6}/64"),
            "dev",
            gw_iface,
        ]);
        for addr in &self.client_addrs {
            let prefix = if addr.contains(':') { 64 } else { 24 };
            ip(&[
                "-n",
                client,
                "addr",
                "add",
                &format!("{addr}/{prefix}"),
                "dev",
                client_iface,
            ]);
        }
        ip(&["-n", gw, "link", "set", gw_iface, "up"]);
        ip(&["-n", client, "link", "set", client_iface, "up"]);
    }
}

impl Topology {
    /// MAC addresses of the gateway's and the client's veth.
    pub fn macs(&self) -> ([u8; 6], [u8; 6]) {
        (
            mac_of(&self.gateway.name, &self.gw_iface),
            mac_of(&self.client.name, &self.client_iface),
        )
    }

    /// Static neighbour entries on the gateway: `addrs` are at the client's veth.
    /// For sources that only raw frames use, which no stack answers neighbour
    /// discovery for.
    pub fn neighbours_on_gateway(&self, addrs: &[&str]) {
        let client_mac = mac_of(&self.client.name, &self.client_iface)
            .map(|byte| format!("{byte:02x}"))
            .join(":");
        for addr in addrs {
            ip(&[
                "-n",
                &self.gateway.name,
                "neigh",
                "replace",
                addr,
                "lladdr",
                &client_mac,
                "dev",
                &self.gw_iface,
            ]);
        }
    }

    /// Waits until both ends have carrier and usable link-local addresses.
    ///
    /// Attaching XDP to a veth flaps its peer's carrier, and IPv6 on the peer needs a
    /// moment to come back; a test that sends at once would race it.
    pub fn wait_until_settled(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for (ns, iface) in [
            (&self.gateway, &self.gw_iface),
            (&self.client, &self.client_iface),
        ] {
            loop {
                let output = Command::new("ip")
                    .args(["-n", &ns.name, "-6", "addr", "show", "dev", iface])
                    .output()
                    .expect("running ip addr");
                let text = String::from_utf8_lossy(&output.stdout);
                let ready = text.contains("LOWER_UP")
                    && !text.contains("NO-CARRIER")
                    && text.contains("scope link")
                    && !text.contains("tentative");
                if ready {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{iface} in {} did not settle within 10 s:\n{text}",
                    ns.name
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The MAC address of `iface` in namespace `ns`.
fn mac_of(ns: &str, iface: &str) -> [u8; 6] {
    let output = Command::new("ip")
        .args(["-n", ns, "-br", "link", "show", "dev", iface])
        .output()
        .expect("running ip link show");
    let text = String::from_utf8_lossy(&output.stdout);
    let bytes: Vec<u8> = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .split(':')
        .filter_map(|hex| u8::from_str_radix(hex, 16).ok())
        .collect();
    bytes
        .try_into()
        .unwrap_or_else(|_| panic!("no MAC address for {iface} in `{text}`"))
}

/// Counts UDP datagrams per source address, on port `port` of both families.
pub struct UdpCounter {
    counts: Arc<Mutex<HashMap<IpAddr, u64>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpCounter {
    pub fn start(ns: &NetNs, port: u16) -> Self {
        let sockets = ns.run(move || {
            [wildcard_v4(port), wildcard_v6(port)]
                .map(|addr| UdpSocket::from(bind(addr, Type::DGRAM)))
        });
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = sockets
            .into_iter()
            .map(|socket| {
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("read timeout");
                let counts = Arc::clone(&counts);
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((_, from)) = socket.recv_from(&mut buf) {
                            let ip = canonical(from.ip());
                            *counts.lock().expect("counts lock").entry(ip).or_insert(0) += 1;
                        }
                    }
                })
            })
            .collect();
        Self {
            counts,
            stop,
            threads,
        }
    }

    /// Datagrams received from `source` so far.
    pub fn count(&self, source: &str) -> u64 {
        let ip: IpAddr = source.parse().expect("valid address");
        self.counts
            .lock()
            .expect("counts lock")
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for UdpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn wildcard_v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port)
}

fn wildcard_v6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port)
}

/// A socket bound to `addr`; IPv6 sockets are v6-only so both families can share
/// a port.
fn bind(addr: SocketAddr, ty: Type) -> Socket {
    let socket = Socket::new(Domain::for_address(addr), ty, None).expect("socket");
    if addr.is_ipv6() {
        socket.set_only_v6(true).expect("IPV6_V6ONLY");
    }
    socket
        .bind(&addr.into())
        .unwrap_or_else(|err| panic!("binding {addr}: {err}"));
    socket
}

/// A TCP echo service on `port` of both families; runs until the namespace goes.
pub fn start_tcp_echo(ns: &NetNs, port: u16) {
    let listeners = ns.run(move || {
        [wildcard_v4(port), wildcard_v6(port)].map(|addr| {
            let socket = bind(addr, Type::STREAM);
            socket.listen(128).expect("listen");
            TcpListener::from(socket)
        })
    });
    for listener in listeners {
        thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
}

/// A UDP socket in `ns` bound to `source`, connected to `dest`.
pub fn udp_from(ns: &NetNs, source: &str, dest: SocketAddr) -> UdpSocket {
    let source: IpAddr = source.parse().expect("valid source");
    ns.run(move || {
        let socket =
            UdpSocket::bind(SocketAddr::new(source, 0)).expect("binding the source address");
        socket.connect(dest).expect("connecting UDP");
        socket
    })
}

/// Whether a TCP connection from `source` in `ns` to `dest` completes and echoes
/// within `timeout`.
pub fn tcp_reachable(ns: &NetNs, source: &str, dest: SocketAddr, timeout: Duration) -> bool {
    let source: IpAddr = source.parse().expect("valid source");
    ns.run(move || {
        let socket = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))
            .expect("TCP socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .unwrap_or_else(|err| panic!("binding {source}: {err}"));
        if socket.connect_timeout(&dest.into(), timeout).is_err() {
            return false;
        }
        let mut stream: TcpStream = socket.into();
        let _ = stream.set_read_timeout(Some(timeout));
        let mut reply = [0u8; 4];
        stream.write_all(b"ping").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"ping"
    })
}
