//! Memory with many idle keep-alive client connections: the resident size of a proxy
//! before and while it holds N TLS connections that each made one request and then
//! went quiet, as a fleet of mostly idle clients (mobile apps, dashboards) leaves them.
//!
//! The connections come from the runner itself, on a thread pinned to the load CPU:
//! TCP connect, TLS 1.3 handshake, one `GET /` answered 200, then the client keeps only
//! the TCP socket (its TLS state is dropped, so the runner's own memory stays small;
//! the server sees an idle keep-alive connection). Before the memory is read the
//! runner counts the server's established sockets on its port in `/proc/net/tcp*`,
//! so a proxy that quietly closed some cannot look cheap.

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinSet,
};
use tokio_rustls::TlsConnector;

use crate::machine::pin_current_thread;

/// The gateway's idle timeout in the proxy suite (the default is 60 s; opening 10,000
/// connections takes longer on a small machine). HAProxy's `timeout client` and
/// `timeout http-keep-alive` are 300 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Handshakes in flight at once while the connections open.
const OPENING_CONCURRENCY: usize = 64;
/// One connection's connect, handshake and request must finish within this.
const PER_CONNECTION: Duration = Duration::from_secs(20);
/// After the last connection opened, the proxy gets this long before its memory is
/// read (lazily freed handshake buffers, deferred work).
const SETTLE: Duration = Duration::from_secs(2);
/// How long the server's sockets may take to show up as established, or to go.
const COUNT_WAIT: Duration = Duration::from_secs(10);

/// One proxy holding idle connections.
pub struct Target<'a> {
    pub label: &'static str,
    pub addr: SocketAddr,
    pub pid: u32,
    /// The connections to open; less than asked where the proxy cannot hold more.
    pub connections: u32,
    pub server_name: &'a str,
    pub ca_pem: &'a str,
}

/// What one proxy's memory did.
#[derive(Clone, Debug, Serialize)]
pub struct IdleRow {
    pub target: &'static str,
    /// Connections opened, each with one request answered 200.
    pub connections: u32,
    /// The server's established sockets on its port while the memory was read.
    pub established: u32,
    pub rss_before_kib: u64,
    pub rss_idle_kib: u64,
    pub rss_anon_before_kib: u64,
    pub rss_anon_idle_kib: u64,
    /// Seconds the runner took to open the connections.
    pub opening_s: f64,
}

impl IdleRow {
    /// Growth of VmRSS per connection, KiB.
    pub fn rss_per_connection_kib(&self) -> f64 {
        self.rss_idle_kib.saturating_sub(self.rss_before_kib) as f64
            / f64::from(self.connections.max(1))
    }

    /// Growth of RssAnon (heap and stacks, no shared file pages) per connection, KiB.
    pub fn anon_per_connection_kib(&self) -> f64 {
        self.rss_anon_idle_kib
            .saturating_sub(self.rss_anon_before_kib) as f64
            / f64::from(self.connections.max(1))
    }
}

/// The idle table of the proxy report.
pub fn markdown(rows: &[IdleRow], requested: u32, open_file_limit: u64) -> String {
    let mut out = format!(
        "### Memory with idle keep-alive connections\n\nThe runner opens the connections \
         from the load CPU, {OPENING_CONCURRENCY} handshakes at a time: TLS 1.3 (ECDSA \
         P-256), one `GET /` answered 200 through the fleet, then nothing; each proxy's \
         established sockets on its port are counted in `/proc/net/tcp*` before its memory \
         is read from `/proc/<pid>/status`, {} s after the last connection opened. Idle \
         timeouts: gateway {} s (`idle`), HAProxy 300 s. Open-file limit of the runner and its \
         children: {open_file_limit}",
        SETTLE.as_secs(),
        IDLE_TIMEOUT.as_secs()
    );
    if rows.iter().any(|row| row.connections < requested) {
        let _ = write!(
            out,
            " (the hard limit; raising it needs CAP_SYS_RESOURCE, which the runner does not \
             have here): HAProxy wants two descriptors per connection of its `maxconn` and \
             refuses to start above the limit, so it holds fewer than the {requested} asked \
             for; compare the per-connection columns"
        );
    }
    out.push_str(
        ".\n\n| target | connections | established | VmRSS before MiB | VmRSS idle MiB | \
         VmRSS KiB/conn | RssAnon before MiB | RssAnon idle MiB | RssAnon KiB/conn | opened in s \
         |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            row.target,
            row.connections,
            row.established,
            mib(row.rss_before_kib),
            mib(row.rss_idle_kib),
            row.rss_per_connection_kib(),
            mib(row.rss_anon_before_kib),
            mib(row.rss_anon_idle_kib),
            row.anon_per_connection_kib(),
            row.opening_s,
        );
    }
    out.push('\n');
    out
}

/// Opens `target.connections` idle connections to the proxy, reads its memory, closes
/// them again and waits until the proxy has let go of them.
pub fn measure(target: &Target<'_>, cpu: usize) -> anyhow::Result<IdleRow> {
    let port = target.addr.port();
    let already = established_on(port)?;
    let before = Memory::of(target.pid)?;
    let started = Instant::now();
    let sockets = open(target, cpu)
        .with_context(|| format!("opening idle connections to {}", target.label))?;
    let opening_s = started.elapsed().as_secs_f64();
    thread::sleep(SETTLE);
    let wanted = already + target.connections;
    let established = wait_for_count(port, |n| n >= wanted)?;
    if established < wanted {
        bail!(
            "{}: only {} of {} connections are established on port {port}; the proxy closed \
             some (idle timeout, connection cap, file limit?)",
            target.label,
            established.saturating_sub(already),
            target.connections
        );
    }
    let idle = Memory::of(target.pid)?;
    drop(sockets);
    wait_for_count(port, |n| n <= already)?;
    Ok(IdleRow {
        target: target.label,
        connections: target.connections,
        established: established.saturating_sub(already),
        rss_before_kib: before.rss_kib,
        rss_idle_kib: idle.rss_kib,
        rss_anon_before_kib: before.anon_kib,
        rss_anon_idle_kib: idle.anon_kib,
        opening_s,
    })
}

/// Polls the established-socket count on `port` until `done` holds or
/// [`COUNT_WAIT`] has passed; returns the last count.
fn wait_for_count(port: u16, done: impl Fn(u32) -> bool) -> anyhow::Result<u32> {
    let deadline = Instant::now() + COUNT_WAIT;
    loop {
        let count = established_on(port)?;
        if done(count) || Instant::now() >= deadline {
            return Ok(count);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Opens the connections on a thread pinned to `cpu`, each with one request answered
/// 200; returns their TCP sockets (the TLS state is dropped, the connection stays).
fn open(target: &Target<'_>, cpu: usize) -> anyhow::Result<Vec<std::net::TcpStream>> {
    let config = Arc::new(super::load::tls13_client(target.ca_pem)?);
    let name = ServerName::try_from(target.server_name.to_owned())?;
    let request = format!(
        "GET / HTTP/1.1\r\nhost: {}\r\nuser-agent: gateway-bench-idle\r\n\r\n",
        target.server_name
    );
    let (addr, count) = (target.addr, target.connections);
    thread::scope(|scope| {
        scope
            .spawn(move || -> anyhow::Result<Vec<std::net::TcpStream>> {
                pin_current_thread(cpu)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let connector = TlsConnector::from(config);
                    let mut tasks = JoinSet::new();
                    let mut sockets = Vec::with_capacity(count as usize);
                    let mut started = 0;
                    while sockets.len() < count as usize {
                        while started < count && tasks.len() < OPENING_CONCURRENCY {
                            let (connector, name) = (connector.clone(), name.clone());
                            let request = request.clone();
                            tasks.spawn(tokio::time::timeout(
                                PER_CONNECTION,
                                one_request(connector, name, addr, request),
                            ));
                            started += 1;
                        }
                        let done = tasks
                            .join_next()
                            .await
                            .ok_or_else(|| anyhow!("no connection in flight"))??
                            .map_err(|_| anyhow!("a connection took longer than 20 s"))?
                            .with_context(|| format!("connection {}", sockets.len() + 1))?;
                        sockets.push(done.into_std()?);
                    }
                    Ok(sockets)
                })
            })
            .join()
            .map_err(|_| anyhow!("the idle-connection client panicked"))?
    })
}

/// Connect, handshake, one request read to its end; the TCP socket is kept.
async fn one_request(
    connector: TlsConnector,
    name: ServerName<'static>,
    addr: SocketAddr,
    request: String,
) -> anyhow::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            bail!("the server closed the connection before the response ended");
        }
        response.extend_from_slice(&buf[..n]);
        match response_complete(&response) {
            Some(Ok(())) => break,
            Some(Err(status)) => bail!("the server answered {status}"),
            None => {}
        }
    }
    Ok(tls.into_inner().0)
}

/// Whether `bytes` hold a whole HTTP/1.1 response: `Some(Ok)` for a complete 200,
/// `Some(Err(status line))` for any other status, `None` while more is due. Bodies are
/// framed by `content-length` or chunked (the terminating chunk ends it).
fn response_complete(bytes: &[u8]) -> Option<Result<(), String>> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Some(Err(status.to_owned()));
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    if let Some(length) = header("content-length") {
        let length: usize = length.parse().ok()?;
        return (body.len() >= length).then_some(Ok(()));
    }
    body.ends_with("0\r\n\r\n").then_some(Ok(()))
}

/// Resident memory from `/proc/<pid>/status`.
struct Memory {
    rss_kib: u64,
    anon_kib: u64,
}

impl Memory {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let field = |name: &str| {
            status_kib(&status, name)
                .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status:\n{status}"))
        };
        Ok(Self {
            rss_kib: field("VmRSS")?,
            anon_kib: field("RssAnon")?,
        })
    }
}

/// `<name>:   1234 kB` in `/proc/<pid>/status`.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
}

/// Established TCP sockets (IPv4 and IPv6) in the runner's namespace whose local port
/// is `port`: the server's side of the connections to a listener on it.
pub fn established_on(port: u16) -> anyhow::Result<u32> {
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(table).with_context(|| format!("reading {table}"))?;
        count += count_established(&text, port);
    }
    Ok(count)
}

/// Lines of a `/proc/net/tcp` table with local port `port` and state 01 (established).
fn count_established(table: &str, port: u16) -> u32 {
    let port = format!(":{port:04X}");
    let count = table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1).unwrap_or_default();
            let state = fields.nth(1).unwrap_or_default();
            local.ends_with(&port) && state == "01"
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Raises the open-file limit of the runner (and so of every process it starts) as
/// far as it may: to 65,536 when it can raise the hard limit (CAP_SYS_RESOURCE),
/// else the soft limit to the hard one. Returns the limit now in force.
pub fn raise_open_file_limit() -> anyhow::Result<u64> {
    const WANTED: libc::rlim_t = 65_536;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading RLIMIT_NOFILE");
    }
    let raised = libc::rlimit {
        rlim_cur: WANTED.max(limit.rlim_max),
        rlim_max: WANTED.max(limit.rlim_max),
    };
    // SAFETY: a valid rlimit; only this process's limit changes.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(raised.rlim_cur);
    }
    let soft = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above; the soft limit may always go up to the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } != 0 {
        return Err(std::io::Error::last_os_error()).context("raising RLIMIT_NOFILE");
    }
    Ok(soft.rlim_cur)
}

/// The connections HAProxy can hold under the open-file limit `limit`: it wants two
/// descriptors per connection of `maxconn` (client and server side) and refuses to
/// start when the limit is lower, so `maxconn` is sized from the limit, and the idle
/// run leaves it a margin for the health of its own listeners.
pub fn haproxy_maxconn(limit: u64) -> u32 {
    u32::try_from(limit.saturating_sub(100) / 2).unwrap_or(u32::MAX)
}

/// Connections HAProxy is asked to hold in the idle run: `wanted`, or fewer when its
/// `maxconn` cannot reach that.
pub fn haproxy_idle_connections(wanted: u32, maxconn: u32) -> u32 {
    wanted.min(maxconn.saturating_sub(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_established_sockets_on_a_local_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n   \
                     0: 0100007F:20FB 0100007F:A1B2 01 00000000:00000000\n   \
                     1: 0100007F:20FB 00000000:0000 0A 00000000:00000000\n   \
                     2: 0100007F:A1B2 0100007F:20FB 01 00000000:00000000\n   \
                     3: 0100007F:20FB 0100007F:A1B3 01 00000000:00000000\n";
        assert_eq!(count_established(table, 0x20FB), 2);
        assert_eq!(count_established(table, 0xA1B2), 1);
    }

    #[test]
    fn reads_memory_fields() {
        let status = "Name:\tgateway\nVmRSS:\t   12345 kB\nRssAnon:\t    6789 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(12345));
        assert_eq!(status_kib(status, "RssAnon"), Some(6789));
        assert_eq!(status_kib(status, "RssFile"), None);
    }

    #[test]
    fn knows_when_a_response_is_complete() {
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(response_complete(head.as_bytes()), None);
        assert_eq!(
            response_complete(format!("{head}hello").as_bytes()),
            Some(Ok(()))
        );
        let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
        assert_eq!(response_complete(chunked.as_bytes()), None);
        assert_eq!(
            response_complete(format!("{chunked}0\r\n\r\n").as_bytes()),
            Some(Ok(()))
        );
        assert_eq!(
            response_complete(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            Some(Err("HTTP/1.1 503 Service Unavailable".to_owned()))
        );
    }

    #[test]
    fn sizes_haproxy_to_the_file_limit() {
        assert_eq!(haproxy_maxconn(20_000), 9_950);
        assert_eq!(haproxy_idle_connections(10_000, 9_950), 9_900);
        assert_eq!(haproxy_idle_connections(10_000, 32_718), 10_000);
    }
}
