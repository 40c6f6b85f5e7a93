//! Issue 12 items 8-11, end to end with the real binary, real TLS and real
//! upstreams on loopback: routes bound to listeners (421), slow uploads and
//! per-client limits that leave the pool to everyone else, descriptor
//! exhaustion that degrades instead of locking clients out, and the admin
//! endpoint's access control.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use gateway::config::{CertificateConfig, ClientAuth, Config, byte_rate::ByteRate};
use gateway_tests::{
    fleet::{EDGE_NAME, Fleet, free_port, render, route},
    http::{Client, Protocol, json, raw_tls_from},
    pki::Ca,
};
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Bounds every await, so a hang fails the test instead of the suite.
async fn within<T>(seconds: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {seconds} s"))
}

/// The host only the client-certificate listener serves.
const INTERNAL: &str = "internal.api.test";

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `GET uri` (absolute: its authority is the `Host`/`:authority`) to `addr`.
async fn get(client: &Client, addr: SocketAddr, uri: &str) -> http::Response<Bytes> {
    let request = Request::get(uri).body(Bytes::new()).expect("request");
    within(15, uri, client.send(addr, request))
        .await
        .unwrap_or_else(|err| panic!("GET {uri}: {err}"))
}

/// A raw GET on the admin listener from `source`; `None` when the connection
/// was closed without an answer.
async fn admin_get_from(source: IpAddr, admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    within(10, "admin request", async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(source, 0)).expect("bind");
        let mut stream = socket.connect(admin).await.expect("connect to admin");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            return None;
        }
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    })
    .await
}

/// The sum of a metric's samples whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `/readyz` says the pool has a healthy endpoint: on a loaded
/// 2-core machine the first health check of a debug build may time out.
async fn ready(fleet: &Fleet) {
    for _ in 0..100 {
        if let Some((200, _)) = admin_get_from(loopback(1), fleet.admin, "/readyz").await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the gateway did not become ready within 20 s");
}

async fn scrape(fleet: &Fleet) -> String {
    let (status, body) = admin_get_from(loopback(1), fleet.admin, "/metrics")
        .await
        .expect("the admin endpoint answers");
    assert_eq!(status, 200, "{body}");
    body
}

/// A config with two listeners on the fleet's certificate: `public`, and
/// `mtls` requiring certificates of `clients_ca` with a second certificate for
/// `other.test`; route `internal` (host [`INTERNAL`]) bound to `mtls`.
fn two_listeners(fleet: &Fleet, clients_ca: &Ca, mtls: SocketAddr) -> Config {
    let mut config = fleet.config();
    let mut strict = config.listeners[0].clone();
    strict.name = "mtls".to_owned();
    strict.address = mtls;
    strict.client_ca = Some(fleet.write_ca(clients_ca, "clients-ca"));
    strict.client_auth = ClientAuth::Required;
    strict.certificates[0].server_names = vec![EDGE_NAME.to_owned(), "*.api.test".to_owned()];
    let (cert, key) = fleet.write(&fleet.edge_ca.issue_server(&["other.test"]), "other");
    strict.certificates.push(CertificateConfig {
        cert,
        key,
        server_names: vec!["other.test".to_owned()],
    });
    config.listeners.push(strict);
    let mut internal = route("internal", "/");
    internal.hosts = vec![INTERNAL.to_owned()];
    internal.listeners = vec!["mtls".to_owned()];
    config.routes.insert(0, internal);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_bound_to_the_client_certificate_listener_is_misdirected_elsewhere() {
    let fleet = Fleet::new(1);
    let clients_ca = Ca::new("clients CA");
    let alice = clients_ca.issue_client("alice");
    let mtls = free_port();
    let config = two_listeners(&fleet, &clients_ca, mtls);
    let _daemon = fleet.start(&config);
    ready(&fleet).await;

    for protocol in [Protocol::Http1, Protocol::Http2] {
        // On the public listener, whatever the SNI, the internal host is 421…
        for sni in [EDGE_NAME, INTERNAL, "x.api.test"] {
            let client = Client::builder(fleet.edge_ca.cert_pem(), sni)
                .protocol(protocol)
                .build();
            for uri in [
                format!("https://{INTERNAL}/secret"),
                format!(
                    "https://{}:{}/secret",
                    INTERNAL.to_uppercase(),
                    fleet.listen.port()
                ),
                format!("https://{INTERNAL}./secret"),
            ] {
                let response = get(&client, fleet.listen, &uri).await;
                assert_eq!(
                    response.status(),
                    StatusCode::MISDIRECTED_REQUEST,
                    "{protocol:?} SNI {sni} {uri}: {}",
                    String::from_utf8_lossy(response.body())
                );
                let body = json(&response);
                assert_eq!(body["error"], "misdirected_request", "{body}");
                assert!(body["request_id"].is_string(), "{body}");
            }
            // …while the public host is served there as before.
            let public = get(&client, fleet.listen, &format!("https://{EDGE_NAME}/hello")).await;
            assert_eq!(public.status(), StatusCode::OK, "{protocol:?} SNI {sni}");
        }

        // With a certificate on the right listener it is served, and HTTP/2
        // coalescing under the same certificate (SNI api.test) is allowed…
        for sni in [INTERNAL, EDGE_NAME] {
            let client = Client::builder(fleet.edge_ca.cert_pem(), sni)
                .identity(&alice)
                .protocol(protocol)
                .build();
            let response = get(&client, mtls, &format!("https://{INTERNAL}/secret")).await;
            assert_eq!(response.status(), StatusCode::OK, "{protocol:?} SNI {sni}");
            assert_eq!(json(&response)["path"], "/secret");
        }
        // …but a connection set up for another certificate's name is not.
        let other = Client::builder(fleet.edge_ca.cert_pem(), "other.test")
            .identity(&alice)
            .protocol(protocol)
            .build();
        let response = get(&other, mtls, &format!("https://{INTERNAL}/secret")).await;
        assert_eq!(
            response.status(),
            StatusCode::MISDIRECTED_REQUEST,
            "{protocol:?}: {}",
            String::from_utf8_lossy(response.body())
        );
        let response = get(&other, mtls, "https://other.test/ok").await;
        assert_eq!(response.status(), StatusCode::OK, "{protocol:?}");
    }
    // Only the served requests reached the fleet: 3 SNIs × public host + 2
    // internal + other.test, per protocol.
    assert_eq!(fleet.upstream_count().await, 2 * (3 + 2 + 1));

    // Without a client certificate the listener does not even finish the handshake.
    let anonymous = Client::builder(fleet.edge_ca.cert_pem(), INTERNAL).build();
    let request = Request::get(format!("https://{INTERNAL}/secret"))
        .body(Bytes::new())
        .expect("request");
    within(15, "anonymous", anonymous.send(mtls, request))
        .await
        .expect_err("the mTLS listener requires a certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_hosts_reachable_without_the_required_certificate() {
    let fleet = Fleet::new(1);
    let clients_ca = Ca::new("clients CA");
    let check = |config: &Config| {
        let path = fleet.gateway.state_dir.path().join("check.toml");
        std::fs::write(&path, render(config)).expect("config");
        let output = fleet
            .gateway
            .output(&["check", "--config", path.to_str().expect("path")]);
        // The rig's certificates live two days, so each also gets an expiry
        // warning; this test is about host reachability only.
        let stderr = String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|line| !line.contains("expires at"))
            .collect::<Vec<_>>()
            .join("\n");
        (output.status.code(), stderr)
    };

    // Bound: the catch-all serves any host on both listeners, so it warns
    // (any host includes the internal one); bound to `public`, nothing does.
    let mut config = two_listeners(&fleet, &clients_ca, free_port());
    let (code, stderr) = check(&config);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("warning: route \"all\""), "{stderr}");
    config.routes[1].listeners = vec!["public".to_owned()];
    let (code, stderr) = check(&config);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");

    // The internal route left unbound is reachable on the public listener.
    config.routes[0].listeners.clear();
    let (_, stderr) = check(&config);
    assert!(
        stderr.contains(&format!("{INTERNAL}/ is served on listener \"mtls\"")),
        "{stderr}"
    );

    // A listener name that does not exist is an error.
    config.routes[0].listeners = vec!["mtsl".to_owned()];
    let (code, stderr) = check(&config);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("route[0].listeners: no listener named \"mtsl\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_off_loopback_needs_an_access_control() {
    let fleet = Fleet::new(1);
    let run = |config: &Config, args: &[&str]| {
        let path = fleet.gateway.state_dir.path().join("admin.toml");
        std::fs::write(&path, render(config)).expect("config");
        let mut all = args.to_vec();
        all.extend(["--config", path.to_str().expect("path")]);
        let output = fleet.gateway.output(&all);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let any_address = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), fleet.admin.port());
    let mut config = fleet.config();
    for (address, allow) in [
        (any_address, vec![]),
        (any_address, vec!["0.0.0.0/0"]),
        ("[::]:9".parse().expect("addr"), vec![]),
        ("[::]:9".parse().expect("addr"), vec!["::/0", "127.0.0.1"]),
        ("198.18.0.1:9".parse().expect("addr"), vec![]),
    ] {
        config.admin.address = address;
        config.admin.allow = allow.iter().map(|a| a.parse().expect("cidr")).collect();
        for command in [&["check"][..], &["run"]] {
            let (code, stderr) = run(&config, command);
            assert_eq!(code, Some(64), "{command:?} {address} {allow:?}: {stderr}");
            assert!(stderr.contains("admin."), "{stderr}");
        }
    }
    // Explicitly allowed, or loopback (also IPv4-mapped) without a list: fine.
    config.admin.allow_non_loopback = true;
    config.admin.allow.clear();
    assert_eq!(run(&config, &["check"]).0, Some(0));
    config.admin.allow_non_loopback = false;
    config.admin.address = "[::ffff:127.0.0.1]:9".parse().expect("addr");
    assert_eq!(run(&config, &["check"]).0, Some(0));

    // An allowlist is enforced: only 127.0.0.2 is answered.
    config.admin.address = any_address;
    config.admin.allow = vec!["127.0.0.2/32".parse().expect("cidr")];
    let (code, stderr) = run(&config, &["check"]);
    assert_eq!(code, Some(0), "{stderr}");
    let _daemon = fleet.start(&config);
    let allowed = admin_get_from(loopback(2), fleet.admin, "/healthz").await;
    assert_eq!(allowed.map(|(status, _)| status), Some(200));
    for refused in [1, 3] {
        assert_eq!(
            admin_get_from(loopback(refused), fleet.admin, "/metrics").await,
            None,
            "127.0.0.{refused} is not in admin.allow"
        );
    }
}

/// Opens a TLS connection from `source` and sends a POST head declaring
/// `length` bytes, then one byte every `every` until the gateway answers;
/// returns the status it answered (0: closed without one).
async fn trickle(fleet: &Fleet, source: IpAddr, length: u64, every: Duration) -> u16 {
    let Ok(mut stream) = raw_tls_from(
        Some(source),
        fleet.listen,
        EDGE_NAME,
        fleet.edge_ca.cert_pem(),
    )
    .await
    else {
        return 0;
    };
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: {EDGE_NAME}\r\nContent-Length: {length}\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let mut answer = [0u8; 64];
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            read = stream.read(&mut answer) => {
                let text = match read {
                    Ok(n) if n > 0 => String::from_utf8_lossy(&answer[..n]).into_owned(),
                    _ => return 0,
                };
                return text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            }
            _ = ticker.tick() => {
                if stream.write_all(b"x").await.is_err() {
                    return 0;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_uploads_hold_no_pool_slots_and_are_cut_off() {
    let fleet = Arc::new(Fleet::new(1));
    let mut config = fleet.config();
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    // A pool far smaller than the attack: any slot held by a trickle shows.
    pool.breaker.max_concurrent = 64;
    pool.breaker.max_pending = 16;
    // Lenient health checks: the rig's 200 ms / one-strike checks measure how
    // busy 1,100 debug-build TLS handshakes keep the 2-core test machine (the
    // client side runs here too), not the pool.
    pool.health.interval = Duration::from_secs(2);
    pool.health.timeout = Duration::from_secs(5);
    pool.health.unhealthy_threshold = 3;
    let listener = &mut config.listeners[0];
    listener.limits.min_body_rate = ByteRate(1024);
    listener.timeouts.body_read = Duration::from_secs(60);
    listener.timeouts.body_rate_window = Duration::from_secs(10);
    listener.timeouts.body_rate_grace = Duration::from_secs(5);
    listener.limits.max_connections_per_client = 200;
    listener.limits.max_requests_per_client = 200;
    // The uploads are longer than the WAF reads (64 KiB): streamed past their
    // first part only because the route opts out of refusing such bodies.
    config.routes[0].waf.oversize = gateway::config::Oversize::InspectPrefix;
    let daemon = fleet.start(&config);
    ready(&fleet).await;

    // 1,100 uploads from 127.0.0.2-12, one byte every 3 s: half declare a
    // small body (buffered before it may take a slot), half a large one
    // (streamed only once more than the buffer has arrived).
    let mut uploads = Vec::new();
    for i in 0..1100u32 {
        let fleet = fleet.clone();
        let source = loopback(2 + u8::try_from(i % 11).expect("small"));
        let length = if i % 2 == 0 { 1000 } else { 10_000_000 };
        uploads.push(tokio::spawn(async move {
            trickle(&fleet, source, length, Duration::from_secs(3)).await
        }));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Meanwhile another address is served: every request, with and without a body.
    let client = fleet.client(Protocol::Http1);
    let mut served = 0;
    for i in 0..40 {
        let request = if i % 2 == 0 {
            Request::get("/ordinary").body(Bytes::new())
        } else {
            Request::post("/ordinary").body(Bytes::from(vec![b'a'; 100_000]))
        }
        .expect("request");
        let response = within(15, "ordinary request", client.send(fleet.listen, request))
            .await
            .expect("ordinary request");
        if response.status() != StatusCode::OK {
            let log = daemon.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "request {i} during the trickle: {} {}\nlog tail (newest first):\n{}",
                response.status(),
                String::from_utf8_lossy(response.body()),
                tail.join("\n")
            );
        }
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The trickles are cut with 408 once grace and one window are over.
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for upload in uploads {
        let status = within(60, "a trickling upload", upload)
            .await
            .expect("task");
        *statuses.entry(status).or_default() += 1;
    }
    assert!(
        statuses.get(&408).copied().unwrap_or(0) >= 1000,
        "most trickles end with 408: {statuses:?}"
    );
    // No byte of theirs reached the fleet: it counted the ordinary requests only.
    assert_eq!(fleet.upstream_count().await, served);
    let metrics = scrape(&fleet).await;
    assert!(
        metric(
            &metrics,
            "gateway_request_errors_total",
            "code=\"body_too_slow\""
        ) >= 1000.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_the_listener_or_the_pool() {
    let fleet = Arc::new(Fleet::new(1));
    let mut config = fleet.config();
    let listener = &mut config.listeners[0];
    listener.limits.max_connections_per_client = 100;
    listener.limits.max_requests_per_client = 20;
    let _daemon = fleet.start(&config);
    ready(&fleet).await;

    // 300 connections from one address: 100 are kept, the rest refused.
    let attacker = loopback(20);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        match raw_tls_from(
            Some(attacker),
            fleet.listen,
            EDGE_NAME,
            fleet.edge_ca.cert_pem(),
        )
        .await
        {
            Ok(stream) => held.push(stream),
            Err(_) => refused += 1,
        }
    }
    assert!(held.len() <= 100, "{} connections held", held.len());
    assert!(refused >= 200, "{refused} refused");
    // Another address is served all the same.
    let client = fleet.client(Protocol::Http2);
    let response = get(&client, fleet.listen, "/hello").await;
    assert_eq!(response.status(), StatusCode::OK);
    drop(held);

    // 60 slow requests at once from one address (HTTP/2, one connection):
    // at most 20 are in flight, the others get 429; another address is served.
    let busy = Arc::new(
        Client::builder(fleet.edge_ca.cert_pem(), EDGE_NAME)
            .protocol(Protocol::Http2)
            .build(),
    );
    let too_many = Arc::new(AtomicU64::new(0));
    let mut slow = Vec::new();
    for _ in 0..60 {
        let busy = busy.clone();
        let too_many = too_many.clone();
        let listen = fleet.listen;
        slow.push(tokio::spawn(async move {
            let request = Request::get("/slow?ms=3000")
                .body(Bytes::new())
                .expect("request");
            let response = busy.send(listen, request).await.expect("slow request");
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(json(&response)["error"], "too_many_client_requests");
                too_many.fetch_add(1, Ordering::Relaxed);
            } else {
                assert_eq!(response.status(), StatusCode::OK);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let other = within(15, "another client", idle_connection(&fleet, loopback(21))).await;
    assert!(
        other.is_some(),
        "another address is served while one is at its limit"
    );
    for task in slow {
        within(30, "slow request", task).await.expect("task");
    }
    let refused = too_many.load(Ordering::Relaxed);
    assert!((30..=40).contains(&refused), "{refused} of 60 got 429");

    let metrics = scrape(&fleet).await;
    assert!(
        metric(
            &metrics,
            "gateway_listener_connections_refused_total",
            "reason=\"per_client\""
        ) >= 200.0,
        "{metrics}"
    );
}

/// A TLS connection from `source` that made one keep-alive request and now
/// sits idle; `None` when the gateway refused or closed it.
async fn idle_connection(
    fleet: &Fleet,
    source: IpAddr,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut stream = raw_tls_from(
        Some(source),
        fleet.listen,
        EDGE_NAME,
        fleet.edge_ca.cert_pem(),
    )
    .await
    .ok()?;
    let head = format!("GET /healthz-ish HTTP/1.1\r\nHost: {EDGE_NAME}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the whole (small) response: head and JSON body.
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") || !seen.ends_with(b"}") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    seen.starts_with(b"HTTP/1.1 200").then_some(stream)
}

/// Starts the fleet's gateway with `nofile` descriptors (soft and hard).
fn start_with_nofile(
    fleet: &Fleet,
    config: &Config,
    nofile: u64,
) -> gateway_tests::gateway::Daemon {
    let start = Duration::from_secs(20);
    fleet
        .gateway
        .spawn_daemon_with(&render(config), start, |command| {
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: nofile,
                        rlim_max: nofile,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        })
}

/// Holds `n` idle keep-alive connections from 127.0.0.30 onwards (at most
/// 200 per address); returns those the gateway kept open.
async fn hold_idle(
    fleet: &Arc<Fleet>,
    n: usize,
) -> Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut tasks = tokio::task::JoinSet::new();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..n {
        let fleet = fleet.clone();
        let semaphore = semaphore.clone();
        let source = loopback(30 + u8::try_from(i / 200).expect("few addresses"));
        tasks.spawn(async move {
            let _permit = semaphore.acquire().await.expect("semaphore");
            idle_connection(&fleet, source).await
        });
    }
    let mut held = Vec::new();
    while let Some(result) = tasks.join_next().await {
        if let Some(stream) = result.expect("task") {
            held.push(stream);
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_degrades_and_never_locks_clients_out() {
    let fleet = Arc::new(Fleet::new(1));
    let mut config = fleet.config();
    let listener = &mut config.listeners[0];
    listener.timeouts.idle = Duration::from_secs(600);
    listener.limits.max_connections_per_client = 200;

    // The default cap: (2048 - 256 reserved) / 2 = 896 connections.
    let daemon = start_with_nofile(&fleet, &config, 2048);
    ready(&fleet).await;
    let held = within(180, "2,500 idle connections", hold_idle(&fleet, 2500)).await;
    assert!(
        held.len() >= 500,
        "only {} idle connections were set up",
        held.len()
    );
    // New clients are served (an idle connection makes room), and so is /metrics.
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let client = fleet.client(protocol);
        let response = get(&client, fleet.listen, &format!("https://{EDGE_NAME}/new")).await;
        assert_eq!(response.status(), StatusCode::OK, "{protocol:?}");
    }
    let metrics = scrape(&fleet).await;
    let open = metric(
        &metrics,
        "gateway_listener_connections",
        "listener=\"public\"",
    );
    assert!(open <= 896.0, "{open} open connections: {metrics}");
    assert!(
        metric(
            &metrics,
            "gateway_listener_connections_evicted_total",
            "public"
        ) >= 1000.0,
        "{metrics}"
    );
    let log = daemon.log();
    assert!(!log.contains("accept failed"), "{log}");
    drop(held);
    daemon.stop();

    // No reserve and a cap above what the descriptors allow: accept meets
    // EMFILE, closes idle connections and backs off; clients are still served.
    config.listeners[0].limits.max_connections = Some(100_000);
    config.proxy.reserved_descriptors = 0;
    let daemon = start_with_nofile(&fleet, &config, 1024);
    ready(&fleet).await;
    let held = within(180, "1,500 idle connections", hold_idle(&fleet, 1500)).await;
    assert!(
        held.len() >= 300,
        "only {} idle connections were set up",
        held.len()
    );
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let client = fleet.client(protocol);
        let response = within(30, "a new client", async {
            loop {
                let request = Request::get("/new").body(Bytes::new()).expect("request");
                match client.send(fleet.listen, request).await {
                    Ok(response) if response.status() == StatusCode::OK => break response,
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
        .await;
        assert_eq!(response.status(), StatusCode::OK, "{protocol:?}");
    }
    let metrics = scrape(&fleet).await;
    assert!(
        metric(
            &metrics,
            "gateway_listener_connections_refused_total",
            "reason=\"accept_error\""
        ) >= 1.0,
        "{metrics}"
    );
    let log = daemon.log();
    let lines = log.matches("connections refused").count();
    assert!((1..=20).contains(&lines), "{lines} refusal lines: {log}");
    drop(held);
    daemon.stop();
}
