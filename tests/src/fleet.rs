//! A gateway in front of a fleet on loopback, the way an operator deploys it:
//! an edge CA whose certificate clients trust, a private fleet CA that signs the
//! upstreams' server certificates and the gateway's client certificate, real
//! `test-upstream` processes that require that client certificate, and the real
//! `gateway` binary running a config built from [`gateway::config::Config`].

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    time::Duration,
};

use gateway::config::{
    AdminSection, CertificateConfig, Config, ListenerConfig, RouteConfig, UpstreamConfig,
    XdpSection,
};

use crate::{
    gateway::{Daemon, Gateway},
    http::{Client, Protocol},
    pki::{Ca, Issued},
    upstream::Upstream,
};

/// The name on every fleet endpoint's certificate.
pub const FLEET_NAME: &str = "fleet.internal";
/// The name clients use for the gateway.
pub const EDGE_NAME: &str = "api.test";

/// Certificates, upstream processes and the gateway's files.
pub struct Fleet {
    pub edge_ca: Ca,
    pub fleet_ca: Ca,
    pub upstreams: Vec<Upstream>,
    pub gateway: Gateway,
    pub listen: SocketAddr,
    /// The admin listener (`/metrics`, `/readyz`, …), on its own loopback port.
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    edge_cert: (PathBuf, PathBuf),
    client_cert: (PathBuf, PathBuf),
    fleet_ca_path: PathBuf,
}

impl Fleet {
    /// `n` upstreams named `up-0`…, each requiring the gateway's client certificate.
    pub fn new(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for certificates");
        let edge_ca = Ca::new("edge CA");
        let fleet_ca = Ca::new("fleet CA");
        let edge_cert = edge_ca
            .issue_server(&[EDGE_NAME, "*.api.test"])
            .write(dir.path(), "edge");
        let client_cert = fleet_ca
            .issue_client("gateway")
            .write(dir.path(), "gateway");
        let fleet_ca_path = fleet_ca.write(dir.path(), "fleet-ca");
        let server = fleet_ca.issue_server(&[FLEET_NAME]);
        let upstreams = (0..n)
            .map(|i| Self::upstream(&format!("up-{i}"), &server, &fleet_ca))
            .collect();
        Self {
            edge_ca,
            fleet_ca,
            upstreams,
            gateway: Gateway::local(),
            listen: free_port(),
            admin: free_port(),
            dir,
            edge_cert,
            client_cert,
            fleet_ca_path,
        }
    }

    /// An upstream presenting `server`, trusting `ca` for client certificates.
    pub fn upstream(name: &str, server: &Issued, ca: &Ca) -> Upstream {
        Upstream::builder(name, server, ca.cert_pem()).start()
    }

    /// Writes a PEM pair into the fleet's directory.
    pub fn write(&self, issued: &Issued, stem: &str) -> (PathBuf, PathBuf) {
        issued.write(self.dir.path(), stem)
    }

    /// Writes a CA certificate into the fleet's directory.
    pub fn write_ca(&self, ca: &Ca, stem: &str) -> PathBuf {
        ca.write(self.dir.path(), stem)
    }

    /// A config: one listener, one route `all` to pool `fleet` with every
    /// upstream, quick health checks; tests change what they need.
    pub fn config(&self) -> Config {
        let listener = ListenerConfig {
            name: "public".to_owned(),
            address: self.listen,
            certificates: vec![CertificateConfig {
                cert: self.edge_cert.0.clone(),
                key: self.edge_cert.1.clone(),
                server_names: vec![EDGE_NAME.to_owned()],
            }],
            client_ca: None,
            client_auth: Default::default(),
            sni_host_match: None,
            timeouts: Default::default(),
            limits: Default::default(),
        };
        let mut upstream: UpstreamConfig = toml::from_str(&format!(
            "endpoints = []\nserver_name = {FLEET_NAME:?}\nca = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
            self.fleet_ca_path, self.client_cert.0, self.client_cert.1
        ))
        .expect("upstream table");
        upstream.endpoints = self
            .upstreams
            .iter()
            .map(|u| u.addr().to_string())
            .collect();
        upstream.health.interval = Duration::from_millis(200);
        // Generous: on a loaded 2-core machine a first probe over mTLS can take
        // longer than half a second, and one slow probe would eject the endpoint.
        upstream.health.timeout = Duration::from_secs(2);
        upstream.health.healthy_threshold = 1;
        upstream.health.unhealthy_threshold = 1;
        Config {
            xdp: XdpSection {
                enabled: false,
                ..XdpSection::default()
            },
            listeners: vec![listener],
            routes: vec![route("all", "/")],
            upstreams: BTreeMap::from([("fleet".to_owned(), upstream)]),
            admin: AdminSection {
                enabled: true,
                address: self.admin,
                ..AdminSection::default()
            },
            ..Config::default()
        }
    }

    /// Starts `gateway run` with `config`.
    pub fn start(&self, config: &Config) -> Daemon {
        self.gateway.spawn_daemon(&render(config))
    }

    /// Replaces the running daemon's config file (reload it with SIGHUP).
    pub fn rewrite(&self, config: &Config) {
        std::fs::write(
            self.gateway.state_dir.path().join("gateway.toml"),
            render(config),
        )
        .expect("rewriting the config");
    }

    /// Requests `upstream` has counted, asked directly with the gateway's
    /// identity; `ca` and `name` are what its server certificate chains to and
    /// carries.
    pub async fn count_at(&self, upstream: &Upstream, ca: &Ca, name: &str) -> u64 {
        let client = Client::builder(ca.cert_pem(), name)
            .identity(&self.fleet_ca.issue_client("gateway"))
            .build();
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            client.get(upstream.addr(), "/count"),
        )
        .await
        .expect("GET /count within 10 s")
        .expect("the upstream answers /count");
        let body: serde_json::Value =
            serde_json::from_slice(response.body()).expect("/count answers JSON");
        body["count"].as_u64().expect("count")
    }

    /// Requests the first upstream has counted.
    pub async fn upstream_count(&self) -> u64 {
        self.count_at(&self.upstreams[0], &self.fleet_ca, FLEET_NAME)
            .await
    }

    /// The admin listener's `/metrics` text (plain HTTP on loopback).
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(self.admin).await?;
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&raw).into_owned())
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("GET /metrics within 10 s")
            .expect("GET /metrics on the admin listener");
        raw.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// A client that trusts the edge CA and speaks `protocol`.
    pub fn client(&self, protocol: Protocol) -> Client {
        Client::builder(self.edge_ca.cert_pem(), EDGE_NAME)
            .protocol(protocol)
            .build()
    }
}

/// A route from `prefix` to pool `fleet`.
pub fn route(name: &str, prefix: &str) -> RouteConfig {
    toml::from_str(&format!(
        "name = {name:?}\npath_prefix = {prefix:?}\nupstream = \"fleet\"\n"
    ))
    .expect("route table")
}

/// The config as TOML, the way an operator would write it.
pub fn render(config: &Config) -> String {
    toml::to_string(config).expect("a config serializes")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free loopback port")
}
