//! The processes under test besides the gateway: the nginx fleet (three mTLS
//! upstreams plus one plain-TLS server for the ceiling) and HAProxy, each with its
//! config written into the run's directory, pinned to the server CPU.

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The body every upstream answers with.
pub const BODY: &str = "hello from the fleet\n";

/// A server process, killed when dropped.
pub struct Process {
    name: &'static str,
    child: Child,
}

impl Process {
    /// Starts `command` with its output in `log`, pins it (and threads it makes
    /// later) to `cpus` and waits until every address in `ready` accepts connections.
    pub fn start(
        name: &'static str,
        mut command: Command,
        log: &Path,
        cpus: &str,
        ready: &[SocketAddr],
    ) -> anyhow::Result<Self> {
        let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut process = Self { name, child };
        process.pin(cpus)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        for addr in ready {
            while std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err() {
                if let Some(status) = process.child.try_wait()? {
                    bail!(
                        "{name} exited ({status}): {}",
                        fs::read_to_string(log).unwrap_or_default()
                    );
                }
                if Instant::now() >= deadline {
                    bail!("{name} does not listen on {addr} after 10 s");
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Pins every thread of the process and of its children to `cpus`.
    fn pin(&mut self, cpus: &str) -> anyhow::Result<()> {
        pin(self.pid(), cpus).with_context(|| format!("pinning {}", self.name))
    }
}

impl Drop for Process {
    /// SIGTERM first: nginx's master stops its workers then, whereas SIGKILL would
    /// leave them running, orphaned. SIGKILL only if it has not ended after 5 s.
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.pid()) {
            // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `taskset -a -p -c <cpus> <pid>`: every thread of `pid`. A process that is still
/// starting may end a thread while taskset walks them (HAProxy did, once), which fails
/// the call: it is tried three times.
pub fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let mut last = String::new();
    for _ in 0..3 {
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(Stdio::null())
            .status()
            .context("running taskset")?;
        if status.success() {
            return Ok(());
        }
        last = status.to_string();
        thread::sleep(Duration::from_millis(100));
    }
    bail!("taskset -p {pid} failed three times (last: {last})")
}

/// Files of the fleet: the upstreams' server certificate, the CA that signs client
/// certificates, the certificate for the ceiling's plain-TLS server.
pub struct FleetFiles {
    pub server: (PathBuf, PathBuf),
    pub client_ca: PathBuf,
    pub ceiling: (PathBuf, PathBuf),
}

/// nginx as the fleet: one worker process; `upstreams` each require a client
/// certificate signed by `client_ca`; `ceiling` serves the same answer with no client
/// certificate (wrk and h2load cannot present one), on the same worker.
pub fn nginx_config(
    dir: &Path,
    files: &FleetFiles,
    upstreams: &[SocketAddr],
    ceiling: SocketAddr,
) -> String {
    let mut servers = String::new();
    let server = |out: &mut String, addr: SocketAddr, cert: &(PathBuf, PathBuf), mtls: bool| {
        let _ = writeln!(
            out,
            "  server {{\n    listen {addr} ssl http2;\n    ssl_certificate {};\n    \
             ssl_certificate_key {};",
            cert.0.display(),
            cert.1.display()
        );
        if mtls {
            let _ = writeln!(
                out,
                "    ssl_client_certificate {};\n    ssl_verify_client on;",
                files.client_ca.display()
            );
        }
        let _ = writeln!(out, "    location / {{ return 200 {BODY:?}; }}\n  }}");
    };
    for &addr in upstreams {
        server(&mut servers, addr, &files.server, true);
    }
    server(&mut servers, ceiling, &files.ceiling, false);
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {dir}/nginx.pid;\n\
         error_log {dir}/nginx-error.log warn;\nworker_rlimit_nofile 65536;\n\
         events {{ worker_connections 20000; }}\nhttp {{\n  access_log off;\n  \
         keepalive_requests 100000000;\n  keepalive_timeout 300s;\n  ssl_protocols TLSv1.3;\n  \
         client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  \
         fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  \
         scgi_temp_path {dir}/scgi;\n{servers}}}\n",
        dir = dir.display()
    )
}

/// Files HAProxy needs: its frontend certificates (certificate and key in one PEM,
/// the first the default, the others chosen by SNI), the fleet CA, its client
/// certificate (one PEM).
pub struct HaproxyFiles {
    pub frontend: Vec<PathBuf>,
    pub fleet_ca: PathBuf,
    pub client: PathBuf,
}

/// HAProxy doing the gateway's work: TLS 1.3 termination with h2 and http/1.1,
/// round robin over `upstreams` with `ssl verify required`, its client certificate,
/// `verifyhost` and keep-alive; `threads` worker threads; `maxconn` (HAProxy refuses to
/// start unless the open-file limit covers twice that); no logging (the gateway's
/// access log is off too). `jwt` adds the rules of [`jwt_rules`].
pub fn haproxy_config(
    files: &HaproxyFiles,
    listen: SocketAddr,
    upstreams: &[SocketAddr],
    server_name: &str,
    threads: usize,
    maxconn: u32,
    jwt: Option<(SocketAddr, &str)>,
) -> String {
    let crts: String = files
        .frontend
        .iter()
        .map(|path| format!(" crt {}", path.display()))
        .collect();
    let mut servers = String::new();
    for (i, addr) in upstreams.iter().enumerate() {
        let _ = writeln!(
            servers,
            "  server up{i} {addr} ssl verify required ca-file {} crt {} verifyhost \
             {server_name} sni str({server_name}) alpn http/1.1",
            files.fleet_ca.display(),
            files.client.display()
        );
    }
    format!(
        "global\n  nbthread {threads}\n  maxconn {maxconn}\n  ssl-default-bind-options \
         ssl-min-ver TLSv1.3\n\ndefaults\n  mode http\n  option http-keep-alive\n  timeout \
         connect 5s\n  timeout client 300s\n  timeout server 30s\n  timeout http-keep-alive \
         300s\n\nfrontend edge\n  bind {listen} ssl{crts} alpn h2,http/1.1\n  default_backend \
         fleet\n\n{}backend fleet\n  balance roundrobin\n  http-reuse always\n{servers}",
        jwt.map(|(addr, rules)| format!(
            "frontend edge_jwt\n  bind {addr} ssl{crts} alpn h2,http/1.1\n{rules}  \
             default_backend fleet\n\n"
        ))
        .unwrap_or_default()
    )
}

/// HAProxy's `jwt_verify` (2.5+) of an ES256 bearer token with the public key in
/// `key_pem`, `iss`, `aud`, `exp` and a scope checked with ACLs: 401 unless all hold.
pub fn jwt_rules(key_pem: &Path, issuer: &str, audience: &str, scope: &str) -> String {
    format!(
        "  http-request set-var(txn.bearer) http_auth_bearer\n  \
         http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('$.alg')\n  \
         http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')\n  \
         http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')\n  \
         http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')\n  \
         http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('$.scope')\n  \
         http-request set-var(txn.now) date()\n  \
         http-request deny status 401 unless {{ var(txn.jwt_alg) -m str ES256 }}\n  \
         http-request deny status 401 unless {{ var(txn.bearer),jwt_verify(txn.jwt_alg,\"{}\") -m int 1 }}\n  \
         http-request deny status 401 unless {{ var(txn.iss) -m str {issuer} }}\n  \
         http-request deny status 401 unless {{ var(txn.aud) -m str {audience} }}\n  \
         http-request deny status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}\n  \
         http-request deny status 403 unless {{ var(txn.scope) -m sub {scope} }}\n",
        key_pem.display()
    )
}
