//! The userspace data plane: TLS termination, routing and forwarding to the
//! fleet.
//!
//! - [`listener`]: accepting connections, TLS handshake, HTTP/1.1 and HTTP/2,
//!   client timeouts.
//! - [`service`]: the request pipeline, stage by stage.
//! - [`error`]: the one place where failures become responses.
//! - [`tls`]: certificates by SNI, client certificates, reload.
//! - [`client`]: who the client of a request is (trusted proxies).
//! - [`framing`]: strict HTTP/1.1 framing on the raw bytes, `Host` rules.
//! - [`normalize`], [`headers`], [`body`]: what the pipeline's stages use.
//! - [`trace`]: the W3C `traceparent` the fleet gets.
//! - `connections`: connection caps per listener and per client address;
//!   `authority`: whether a request's host belongs on its connection (421).
//!
//! The active configuration is one [`Snapshot`] behind an atomic pointer: a
//! reload builds a new one and swaps it in, requests in flight keep theirs.

mod authority;
pub mod body;
pub mod client;
mod connections;
pub mod error;
pub mod framing;
pub mod headers;
mod listener;
pub mod normalize;
pub mod service;
pub mod tls;
pub mod trace;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use self::{connections::Connections, listener::Acceptor, tls::ServerTls};
use crate::{
    abuse::Abuse,
    auth::{Auth, AuthStartError, revocation::Revocations},
    config::{Config, ListenerConfig, ProxySection},
    fleet::Link,
    policy::{
        quota::{Quotas, RouteQuotas},
        ratelimit::RateLimits,
        routes::RouteTable,
        waf::Waf,
    },
    tls::TlsFileError,
    upstream::{PoolError, Upstreams},
};

/// The proxy could not start or take a new configuration.
#[derive(Debug, thiserror::Error)]
pub enum ProxyStartError {
    #[error("listener[{index}] ({name}): binding {address}: {source}")]
    Bind {
        index: usize,
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {name}: {source}")]
    Tls { name: String, source: TlsFileError },
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Auth(#[from] AuthStartError),
}

/// One configuration's routes, pools and listener settings.
pub struct Snapshot {
    pub proxy: ProxySection,
    pub routes: RouteTable,
    pub upstreams: Upstreams,
    pub auth: Auth,
    pub limits: RateLimits,
    pub quotas: RouteQuotas,
    pub waf: Waf,
    /// The abuse loop's signal windows; one for the proxy's lifetime.
    pub abuse: Arc<Abuse>,
    /// The fleet's Redis link, for the proxy's lifetime (`[fleet]` needs a
    /// restart to change).
    fleet: Option<Link>,
    listeners: HashMap<Arc<str>, ListenerConfig>,
}

impl Snapshot {
    async fn build(
        config: &Config,
        previous: Option<&Snapshot>,
        revocations: &Arc<Revocations>,
        abuse: Arc<Abuse>,
        quotas: Arc<Quotas>,
        fleet: Option<Link>,
    ) -> Result<Self, ProxyStartError> {
        // Listeners a reload dropped keep serving (that needs a restart), so
        // they keep their last settings.
        let mut listeners = previous.map(|p| p.listeners.clone()).unwrap_or_default();
        for listener in &config.listeners {
            listeners.insert(Arc::from(listener.name.as_str()), listener.clone());
        }
        Ok(Self {
            proxy: config.proxy.clone(),
            routes: RouteTable::new(&config.routes),
            limits: RateLimits::new(&config.routes, previous.map(|p| &p.limits), fleet.as_ref()),
            quotas: RouteQuotas::new(&config.routes, quotas, fleet.as_ref()),
            waf: Waf::new(&config.routes),
            upstreams: Upstreams::build(config, previous.map(|p| &p.upstreams)).await?,
            auth: Auth::build(&config.auth, previous.map(|p| &p.auth), revocations.clone()).await?,
            abuse,
            fleet,
            listeners,
        })
    }

    /// The settings of a running listener. Snapshots only ever add listener
    /// names, and connections come from started listeners, so the name is there.
    fn listener(&self, name: &str) -> &ListenerConfig {
        #[expect(
            clippy::expect_used,
            reason = "names of running listeners are never removed"
        )]
        self.listeners
            .get(name)
            .expect("every running listener has settings")
    }
}

/// State shared by every connection.
pub(crate) struct Shared {
    snapshot: ArcSwap<Snapshot>,
}

/// A read-only view of the proxy's active [`Snapshot`], for metrics and
/// readiness: always the one new requests get.
#[derive(Clone)]
pub struct Snapshots(Arc<Shared>);

impl Snapshots {
    pub fn current(&self) -> Arc<Snapshot> {
        self.0.snapshot.load_full()
    }
}

struct RunningListener {
    name: String,
    address: SocketAddr,
    tls: Arc<ServerTls>,
}

/// The running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    revocations: Arc<Revocations>,
    listeners: Vec<RunningListener>,
    shutdown: watch::Sender<bool>,
    open: mpsc::Sender<()>,
    closed: mpsc::Receiver<()>,
}

impl Proxy {
    /// Builds the pools (first health checks included) and the token issuers
    /// (keys fetched), loads certificates and binds every listener; traffic is
    /// accepted only once all of that worked. `revocations` is the token
    /// denylist file in the state directory; misbehaving clients are reported
    /// to `abuse`; quota counts live in `quotas` (the daemon saves them);
    /// `fleet` shares rate limits and quotas with the other gateways.
    pub async fn start(
        config: &Config,
        revocations: Option<std::path::PathBuf>,
        abuse: Arc<Abuse>,
        quotas: Arc<Quotas>,
        fleet: Option<Link>,
    ) -> Result<Self, ProxyStartError> {
        let revocations = Arc::new(Revocations::open(revocations));
        let snapshot = Snapshot::build(config, None, &revocations, abuse, quotas, fleet).await?;
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (open, closed) = mpsc::channel(1);
        let nofile = connections::descriptor_limit();
        let connections = Arc::new(Connections::new(nofile, config.proxy.reserved_descriptors));
        info!(
            descriptors = nofile,
            default_max_connections = connections.budget(),
            "connection budget"
        );
        let mut listeners = Vec::new();
        let mut acceptors = Vec::new();
        for (index, listener) in config.listeners.iter().enumerate() {
            let tls =
                Arc::new(
                    ServerTls::new(listener).map_err(|source| ProxyStartError::Tls {
                        name: listener.name.clone(),
                        source,
                    })?,
                );
            let socket = bind(listener.address).map_err(|source| ProxyStartError::Bind {
                index,
                name: listener.name.clone(),
                address: listener.address,
                source,
            })?;
            let address = socket.local_addr().unwrap_or(listener.address);
            info!(listener = %listener.name, %address, "listening");
            acceptors.push(Acceptor {
                name: Arc::from(listener.name.as_str()),
                socket,
                tls: tls.clone(),
                shared: shared.clone(),
                shutdown: shutdown_rx.clone(),
                open: open.clone(),
                connections: connections.clone(),
            });
            listeners.push(RunningListener {
                name: listener.name.clone(),
                address,
                tls,
            });
        }
        for acceptor in acceptors {
            tokio::spawn(acceptor.run());
        }
        Ok(Self {
            shared,
            revocations,
            listeners,
            shutdown,
            open,
            closed,
        })
    }

    /// The active configuration's routes and pools, as they change.
    pub fn snapshots(&self) -> Snapshots {
        Snapshots(self.shared.clone())
    }

    /// Where each listener is bound.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.address).collect()
    }

    /// Applies a validated configuration: new requests see it at once, requests
    /// in flight finish on the old one. Listener sockets stay as they are.
    pub async fn reload(&self, config: &Config) -> Result<(), ProxyStartError> {
        let previous = self.shared.snapshot.load_full();
        let mut new_tls = Vec::new();
        for running in &self.listeners {
            match config.listeners.iter().find(|l| l.name == running.name) {
                Some(listener) => {
                    if listener.address != running.address {
                        warn!(listener = %running.name, "address changes need a restart; keeping {}", running.address);
                    }
                    let built =
                        tls::server_config(listener).map_err(|source| ProxyStartError::Tls {
                            name: listener.name.clone(),
                            source,
                        })?;
                    new_tls.push((running, listener, built));
                }
                None => {
                    warn!(listener = %running.name, "removing a listener needs a restart; it keeps serving")
                }
            }
        }
        for listener in &config.listeners {
            if !self.listeners.iter().any(|r| r.name == listener.name) {
                warn!(listener = %listener.name, "adding a listener needs a restart");
            }
        }
        let snapshot = Snapshot::build(
            config,
            Some(&previous),
            &self.revocations,
            previous.abuse.clone(),
            previous.quotas.counts().clone(),
            previous.fleet.clone(),
        )
        .await?;
        snapshot.abuse.reconfigure(config);
        for (running, listener, _) in new_tls {
            if let Err(err) = running.tls.update(listener) {
                error!(listener = %running.name, %err, "keeping the previous certificates");
            }
        }
        self.shared.snapshot.store(Arc::new(snapshot));
        Ok(())
    }

    /// Re-reads certificate files that changed on disk; a bad file keeps the
    /// old certificates and is reported once per change.
    pub fn check_certificates(&self) {
        for listener in &self.listeners {
            match listener.tls.reload_if_changed() {
                Ok(true) => info!(listener = %listener.name, "certificates reloaded"),
                Ok(false) => {}
                Err(err) => {
                    error!(listener = %listener.name, %err, "certificate change rejected; keeping the previous certificates")
                }
            }
        }
    }

    /// Re-reads the token denylist if its file changed.
    pub fn check_revocations(&self) {
        self.revocations.reload_if_changed();
    }

    /// Re-reads the token denylist now (SIGUSR1 from `gateway token`).
    pub fn reload_revocations(&self) {
        self.revocations.reload();
    }

    /// Re-reads every certificate file (SIGHUP).
    pub fn reload_certificates(&self) {
        for listener in &self.listeners {
            if let Err(err) = listener.tls.reload() {
                error!(listener = %listener.name, %err, "keeping the previous certificates");
            }
        }
    }

    /// Stops accepting, lets open connections finish their requests, and
    /// returns once all are closed or `deadline` passed (`false` then).
    pub async fn drain(self, deadline: Duration) -> bool {
        let Self {
            shutdown,
            open,
            mut closed,
            ..
        } = self;
        let _ = shutdown.send(true);
        drop(open);
        tokio::time::timeout(deadline, closed.recv()).await.is_ok()
    }
}

/// Problems with the certificate, key and CA files a configuration names,
/// each with its key path: what `gateway check` and a reload report, and what
/// keeps `gateway run` from starting.
pub fn tls_problems(config: &Config) -> Vec<String> {
    let listeners = config
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, listener)| {
            tls::server_config(listener)
                .err()
                .map(|err| format!("listener[{i}] ({}): {err}", listener.name))
        });
    let upstreams = config.upstreams.iter().filter_map(|(name, upstream)| {
        crate::upstream::tls::connector(upstream)
            .err()
            .map(|err| format!("upstream.{name}: {err}"))
    });
    listeners.chain(upstreams).collect()
}

/// A listening socket with `SO_REUSEADDR`, so a restart can bind at once.
fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}
