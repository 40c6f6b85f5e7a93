//! Several gateways and a real Redis, as root: three edges, each a `gateway
//! run` with XDP attached in its own namespace, reach `redis-server` processes
//! in a backplane namespace. Every edge shows up in `gateway fleet status`
//! with its version; killing Redis leaves every edge running and ready on its
//! local state (one "link down" line each), and a restarted, empty Redis is
//! repopulated by the next heartbeats. A three-node Redis Cluster carries the
//! same core case.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use gateway::config::{AdminSection, Config, XdpSection};
use gateway_tests::{
    fleet::render,
    gateway::Daemon,
    net::NetNs,
    redis::{Backplane, Edge},
    require_root,
};

const ADMIN: &str = "127.0.0.1:9190";

/// `[fleet]` for node `node` against `redis_url` (`mode`: standalone or cluster).
fn fleet_section(node: &str, redis_url: &str, mode: &str, more: &[String]) -> String {
    format!(
        "\n[fleet]\nredis_url = {redis_url:?}\nmode = {mode:?}\nmore_nodes = {more:?}\nnode = {node:?}\n\
         heartbeat = \"200ms\"\nconnect_timeout = \"500ms\"\n"
    )
}

/// The edge's config: XDP on its gateway veth, the admin endpoint on its own
/// loopback, no listener, and `fleet`.
fn config_text(edge: &Edge, fleet: &str) -> String {
    let config = Config {
        xdp: XdpSection {
            enabled: true,
            interface: edge.topology.gw_iface.clone(),
            ..XdpSection::default()
        },
        admin: AdminSection {
            enabled: true,
            address: ADMIN.parse().expect("admin address"),
            ..AdminSection::default()
        },
        ..Config::default()
    };
    format!("{}{fleet}", render(&config))
}

fn start(edge: &Edge, fleet: &str) -> Daemon {
    edge.gateway.spawn_daemon(&config_text(edge, fleet))
}

fn config_path(edge: &Edge) -> String {
    edge.gateway
        .state_dir
        .path()
        .join("gateway.toml")
        .display()
        .to_string()
}

/// `GET path` on the edge's admin endpoint: (status line, body).
fn admin_get(ns: &NetNs, path: &'static str) -> Option<(String, String)> {
    let admin: SocketAddr = ADMIN.parse().expect("admin address");
    ns.run(move || {
        use std::io::{Read as _, Write as _};
        let mut stream =
            std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        Some((head.lines().next()?.to_owned(), body.to_owned()))
    })
}

/// Polls `check` every 50 ms until it holds or `limit` passes; how long it took.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return start.elapsed();
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {limit:?}");
}

fn ready(edge: &Edge) -> bool {
    admin_get(&edge.topology.gateway, "/readyz").is_some_and(|(status, _)| status.contains("200"))
}

/// The nodes `gateway fleet status` lists from `edge`.
fn nodes_seen(edge: &Edge) -> Vec<String> {
    let status = edge
        .gateway
        .json(&["fleet", "status", "--config", &config_path(edge)]);
    status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|node| {
            assert_eq!(node["version"], env!("CARGO_PKG_VERSION"), "{status}");
            node["node"].as_str().expect("node name").to_owned()
        })
        .collect()
}

fn link_downs(daemon: &Daemon) -> usize {
    daemon
        .log()
        .lines()
        .filter(|line| line.contains("fleet link down"))
        .count()
}

#[test]
fn three_edges_share_one_redis_and_outlive_it() {
    require_root();
    let backplane = Backplane::new();
    let mut redis = backplane.redis(6391);
    let edges: Vec<Edge> = (0..3).map(|_| backplane.edge(&["198.18.0.2"])).collect();
    let names = ["edge-a", "edge-b", "edge-c"];
    let daemons: Vec<Daemon> = edges
        .iter()
        .zip(names)
        .map(|(edge, name)| start(edge, &fleet_section(name, &redis.url(), "standalone", &[])))
        .collect();
    for edge in &edges {
        eventually(Duration::from_secs(15), "every edge ready", || ready(edge));
    }
    eventually(Duration::from_secs(10), "all three nodes seen", || {
        nodes_seen(&edges[1]) == names
    });
    let (_, metrics) = admin_get(&edges[0].topology.gateway, "/metrics").expect("metrics");
    assert!(metrics.contains("gateway_fleet_connected 1"), "{metrics}");

    // Redis dies: every edge keeps running and ready, and says so once.
    redis.kill();
    for (edge, daemon) in edges.iter().zip(&daemons) {
        daemon.wait_for_log("fleet link down", Duration::from_secs(10));
        assert!(ready(edge), "an edge must stay ready without Redis");
        let (_, metrics) = admin_get(&edge.topology.gateway, "/metrics").expect("metrics");
        assert!(metrics.contains("gateway_fleet_connected 0"), "{metrics}");
    }
    // Let the link retry for a while: still one line each, not one per retry.
    thread::sleep(Duration::from_secs(2));
    for daemon in &daemons {
        assert_eq!(link_downs(daemon), 1, "{}", daemon.log());
    }
    // `fleet status` without Redis fails with a clear error, quickly.
    let started = Instant::now();
    let err = edges[0]
        .gateway
        .fails(&["fleet", "status", "--config", &config_path(&edges[0])]);
    assert!(err.contains("connecting to"), "{err}");
    println!(
        "fleet status without Redis failed after {:?}",
        started.elapsed()
    );

    // Redis comes back empty: the heartbeats repopulate it.
    redis.restart();
    let took = eventually(Duration::from_secs(20), "all three nodes back", || {
        nodes_seen(&edges[2]) == names
    });
    println!("an empty Redis knew every node again after {took:?}");
    for daemon in daemons {
        assert!(daemon.log().contains("fleet link up"));
        daemon.stop();
    }
}

#[test]
fn a_redis_cluster_carries_the_fleet() {
    require_root();
    let backplane = Backplane::new();
    let cluster = backplane.cluster([7101, 7102, 7103]);
    let urls: Vec<String> = cluster.iter().map(|node| node.url()).collect();
    let edges: Vec<Edge> = (0..2).map(|_| backplane.edge(&["198.18.0.2"])).collect();
    let names = ["edge-a", "edge-b"];
    let daemons: Vec<Daemon> = edges
        .iter()
        .zip(names)
        .map(|(edge, name)| start(edge, &fleet_section(name, &urls[0], "cluster", &urls[1..])))
        .collect();
    for edge in &edges {
        eventually(Duration::from_secs(15), "every edge ready", || ready(edge));
    }
    eventually(Duration::from_secs(10), "both nodes seen", || {
        nodes_seen(&edges[0]) == names
    });
    for daemon in daemons {
        daemon.stop();
    }
}
