//! The Redis link: one cloneable handle every fleet feature talks through.
//!
//! A request never waits on Redis longer than the configured budget: a call that
//! would is cut off with [`FleetError::Timeout`], and while the link is down a
//! call fails at once with [`FleetError::Unreachable`]; either way the caller
//! decides locally. A supervisor task keeps the link: it connects with backoff,
//! heartbeats, notices drops and Redis restarts, and bumps [`Link::epochs`] so
//! the features resynchronise.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use redis::{
    Client, Cmd, FromRedisValue, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};
use tokio::sync::{Mutex, watch};

use super::status::Heartbeat;
use crate::config::{FleetSection, RedisMode, Sharing, Unreachable, fleet::PASSWORD_ENV};

/// Why a call through the link gave no answer; the caller decides locally.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The link is down (not connected yet, or lost); nothing was sent.
    #[error("fleet link is down")]
    Unreachable,
    /// Redis did not answer within the budget.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection broke mid-call.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl FleetError {
    /// The `reason` label of the fallback metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Timeout(_) => "timeout",
            Self::Redis(_) => "error",
        }
    }
}

/// The link could not be set up from the config (the daemon does not start).
#[derive(Debug, thiserror::Error)]
pub enum LinkSetupError {
    #[error("fleet.password_file {path}: {source}")]
    Password {
        path: String,
        source: std::io::Error,
    },
    #[error("fleet.{key} {path}: {source}")]
    TlsFile {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("fleet.redis_url: {0}")]
    Url(redis::RedisError),
}

/// A Redis password; never printed.
#[derive(Clone)]
struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A connection to the fleet's Redis, whatever its topology. Cheap to clone;
/// clones share the underlying multiplexed socket(s).
#[derive(Clone)]
pub enum Conn {
    /// A standalone server or a sentinel-resolved master, reconnecting by itself.
    Managed(ConnectionManager),
    /// A Redis Cluster: routes each command by its key's slot.
    Cluster(ClusterConnection),
    /// A dedicated socket (see [`Link::dedicated`]).
    Plain(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
            Conn::Plain(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Plain(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
            Conn::Plain(conn) => conn.get_db(),
        }
    }
}

/// How new connections are made for the configured topology.
enum Opener {
    Standalone(Client),
    Cluster(ClusterClient),
    /// Asked again on every (re)connect, so a failover is followed.
    Sentinel(Mutex<SentinelClient>),
}

/// What the link looks like now, for `/readyz`, metrics and `gateway fleet status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LinkStatus {
    pub node: String,
    pub connected: bool,
    /// The last heartbeat's round trip, in microseconds.
    pub rtt_us: u64,
    /// When the link last completed a heartbeat, ms since the epoch (0: never).
    pub last_sync_ms: u64,
    /// How many times the link came (back) up.
    pub epoch: u64,
}

/// The handle: cheap to clone, shared by every fleet feature.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    prefix: String,
    budget: Duration,
    timeout: Duration,
    heartbeat: Duration,
    share: Sharing,
    quota_when_unreachable: Unreachable,
    opener: Opener,
    conn: ArcSwapOption<Conn>,
    connected: AtomicBool,
    rtt_us: AtomicU64,
    last_sync_ms: AtomicU64,
    /// Bumped each time the link comes up on a Redis that may not hold what this
    /// gateway last saw there (first connect, reconnect, Redis restarted).
    epoch: watch::Sender<u64>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("node", &self.inner.node)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Builds the link from `[fleet]` (reading the password and TLS files); it
    /// connects only when [`Link::spawn_supervisor`] runs.
    pub fn new(config: &FleetSection) -> Result<Self, LinkSetupError> {
        let password = read_password(config)?;
        let opener = opener(config, password.as_ref())?;
        let (epoch, _) = watch::channel(0);
        Ok(Self {
            inner: Arc::new(Inner {
                node: config.node.clone(),
                prefix: config.key_prefix.clone(),
                budget: config.budget,
                timeout: config.connect_timeout,
                heartbeat: config.heartbeat,
                share: config.share.clone(),
                quota_when_unreachable: config.quota_when_unreachable,
                opener,
                conn: ArcSwapOption::empty(),
                connected: AtomicBool::new(false),
                rtt_us: AtomicU64::new(0),
                last_sync_ms: AtomicU64::new(0),
                epoch,
            }),
        })
    }

    /// This gateway's name in the fleet.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The longest a request waits on Redis.
    pub fn budget(&self) -> Duration {
        self.inner.budget
    }

    /// The bound for background work (resync, publishing): the connect timeout.
    pub fn background_timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// What is shared.
    pub fn share(&self) -> &Sharing {
        &self.inner.share
    }

    /// What a shared quota does without an answer.
    pub fn quota_when_unreachable(&self) -> Unreachable {
        self.inner.quota_when_unreachable
    }

    /// `{prefix}:name`: a key in the fleet's hash slot. Every key built this way
    /// lands on the same Cluster node, so one script may touch several.
    pub fn key(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.inner.prefix)
    }

    /// `prefix:{tag}:name`: a key spread over the Cluster by `tag` (e.g. a
    /// quota's client), for state that need not sit with the rest.
    pub fn spread_key(&self, tag: &str, name: &str) -> String {
        format!("{}:{{{tag}}}:{name}", self.inner.prefix)
    }

    /// Whether the last heartbeat went through.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// The link's state now.
    pub fn status(&self) -> LinkStatus {
        LinkStatus {
            node: self.inner.node.clone(),
            connected: self.is_connected(),
            rtt_us: self.inner.rtt_us.load(Ordering::Relaxed),
            last_sync_ms: self.inner.last_sync_ms.load(Ordering::Relaxed),
            epoch: *self.inner.epoch.borrow(),
        }
    }

    /// `/readyz`'s fleet check, `running` after the daemon started: ready once
    /// the link has been up (and the features synchronised on it), or once
    /// Redis stayed unreachable for ten connect timeouts, so an edge restarted
    /// while Redis is down still serves from its local state.
    pub fn ready(&self, running: Duration) -> Result<(), String> {
        if *self.inner.epoch.borrow() > 0 || running >= self.inner.timeout * 10 {
            Ok(())
        } else {
            Err("not synchronised with Redis yet".to_owned())
        }
    }

    /// Changes each time the link comes up on a Redis that may have lost or
    /// missed state: a feature resynchronises (and republishes) on every change.
    pub fn epochs(&self) -> watch::Receiver<u64> {
        self.inner.epoch.subscribe()
    }

    /// The shared connection, if the link is up.
    pub fn conn(&self) -> Result<Conn, FleetError> {
        if !self.is_connected() {
            return Err(FleetError::Unreachable);
        }
        self.inner
            .conn
            .load_full()
            .map(|conn| Conn::clone(&conn))
            .ok_or(FleetError::Unreachable)
    }

    /// Runs `work` on the shared connection within the request budget.
    pub async fn within_budget<T, F, Fut>(&self, work: F) -> Result<T, FleetError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.within(self.inner.budget, work).await
    }

    /// Runs `work` on the shared connection within `limit`.
    pub async fn within<T, F, Fut>(&self, limit: Duration, work: F) -> Result<T, FleetError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn()?;
        match tokio::time::timeout(limit, work(conn)).await {
            Ok(result) => result.map_err(FleetError::from),
            Err(_) => {
                metrics::counter!("gateway_fleet_budget_exceeded_total").increment(1);
                Err(FleetError::Timeout(limit))
            }
        }
    }

    /// One command within the request budget.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, FleetError> {
        self.within_budget(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// A script within the request budget (EVALSHA, loading it on first use).
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, FleetError> {
        self.within_budget(|mut conn| async move { script.invoke_async(&mut conn).await })
            .await
    }

    /// A connection of its own, for blocking reads (`XREAD BLOCK`) that must not
    /// hold up the shared one. Its answers may take up to `block` plus the
    /// connect timeout.
    pub async fn dedicated(&self, block: Duration) -> Result<Conn, FleetError> {
        let limit = self.inner.timeout;
        let response = Some(block + limit);
        let conn = async {
            match &self.inner.opener {
                Opener::Standalone(client) => client
                    .get_multiplexed_async_connection_with_config(&plain_config(limit, response))
                    .await
                    .map(Conn::Plain),
                Opener::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
                Opener::Sentinel(sentinel) => {
                    let client = sentinel.lock().await.async_get_client().await?;
                    client
                        .get_multiplexed_async_connection_with_config(&plain_config(
                            limit, response,
                        ))
                        .await
                        .map(Conn::Plain)
                }
            }
        };
        match tokio::time::timeout(limit, conn).await {
            Ok(result) => result.map_err(FleetError::from),
            Err(_) => Err(FleetError::Timeout(limit)),
        }
    }

    /// Connects once, without a supervisor, within the connect timeout: for a
    /// one-shot command such as `gateway fleet status`.
    pub async fn connect(&self) -> Result<(), FleetError> {
        let conn = tokio::time::timeout(self.inner.timeout, self.open())
            .await
            .map_err(|_| FleetError::Timeout(self.inner.timeout))??;
        self.inner.conn.store(Some(Arc::new(conn)));
        self.inner.connected.store(true, Ordering::Release);
        Ok(())
    }

    /// Starts the task that keeps the link up; it ends when the returned handle
    /// is aborted or the runtime stops.
    pub fn spawn_supervisor(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(supervise(self.clone()))
    }

    async fn open(&self) -> redis::RedisResult<Conn> {
        let limit = self.inner.timeout;
        match &self.inner.opener {
            Opener::Standalone(client) => {
                ConnectionManager::new_with_config(client.clone(), manager_config(limit))
                    .await
                    .map(Conn::Managed)
            }
            Opener::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            Opener::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await?;
                ConnectionManager::new_with_config(client, manager_config(limit))
                    .await
                    .map(Conn::Managed)
            }
        }
    }
}

fn manager_config(limit: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(limit))
        .set_response_timeout(Some(limit))
        .set_number_of_retries(1)
        .set_max_delay(limit)
}

fn plain_config(limit: Duration, response: Option<Duration>) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(limit))
        .set_response_timeout(response)
}

/// The link's keeper: connect with backoff, heartbeat, notice a drop (one log
/// line each way) and a Redis that came back empty (a new epoch either way).
async fn supervise(link: Link) {
    let inner = &link.inner;
    let mut backoff = Backoff::new(inner.heartbeat);
    let mut seen_mark: Option<String> = None;
    let mut was_up = false;
    let mut ever_up = false;
    loop {
        if inner.conn.load().is_none() {
            match tokio::time::timeout(inner.timeout, link.open()).await {
                Ok(Ok(conn)) => inner.conn.store(Some(Arc::new(conn))),
                Ok(Err(err)) => {
                    link_down(&link, &mut was_up, ever_up, &err.to_string());
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
                Err(_) => {
                    link_down(&link, &mut was_up, ever_up, "connect timed out");
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            }
        }
        let started = Instant::now();
        match heartbeat(&link).await {
            Ok(mark) => {
                let rtt = started.elapsed();
                inner.rtt_us.store(micros(rtt), Ordering::Relaxed);
                inner.last_sync_ms.store(now_ms(), Ordering::Relaxed);
                metrics::gauge!("gateway_fleet_rtt_seconds").set(rtt.as_secs_f64());
                metrics::gauge!("gateway_fleet_last_sync_timestamp_seconds")
                    .set(now_ms() as f64 / 1000.0);
                let fresh = seen_mark.as_deref() != Some(mark.as_str());
                if !was_up || fresh {
                    if ever_up && was_up {
                        tracing::warn!(
                            node = %inner.node,
                            "fleet link: Redis lost the shared state (restarted empty or flushed); resynchronising and republishing"
                        );
                    } else {
                        tracing::info!(node = %inner.node, "fleet link up");
                    }
                    inner.connected.store(true, Ordering::Release);
                    metrics::gauge!("gateway_fleet_connected").set(1.0);
                    inner.epoch.send_modify(|epoch| *epoch += 1);
                    was_up = true;
                    ever_up = true;
                    seen_mark = Some(mark);
                }
                backoff.reset();
                tokio::time::sleep(inner.heartbeat).await;
            }
            Err(err) => {
                link_down(&link, &mut was_up, ever_up, &err.to_string());
                if matches!(inner.opener, Opener::Sentinel(_)) {
                    // The master may have moved: ask the sentinels again.
                    inner.conn.store(None);
                }
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

fn link_down(link: &Link, was_up: &mut bool, ever_up: bool, why: &str) {
    let inner = &link.inner;
    inner.connected.store(false, Ordering::Release);
    metrics::gauge!("gateway_fleet_connected").set(0.0);
    if *was_up {
        metrics::counter!("gateway_fleet_link_drops_total").increment(1);
        tracing::error!(node = %inner.node, error = why, "fleet link down; enforcing from local state until Redis is back");
    } else if !ever_up {
        tracing::debug!(node = %inner.node, error = why, "fleet link not up yet");
    }
    *was_up = false;
}

/// Writes this node's heartbeat and returns the fleet's epoch mark: a random
/// value the first gateway to find it missing puts there. A Redis that restarted
/// empty (or was flushed) has lost it, so a changed mark means "republish".
async fn heartbeat(link: &Link) -> Result<String, FleetError> {
    let beat = serde_json::to_string(&Heartbeat {
        node: link.node().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        time_ms: now_ms(),
        rtt_us: link.inner.rtt_us.load(Ordering::Relaxed),
    })
    .unwrap_or_default();
    let mark = format!("{}-{:016x}", link.node(), fastrand::u64(..));
    let (nodes, epoch) = (link.key("nodes"), link.key("epoch"));
    let node = link.node().to_owned();
    let conn = link
        .inner
        .conn
        .load_full()
        .map(|conn| Conn::clone(&conn))
        .ok_or(FleetError::Unreachable)?;
    let work = async move {
        let mut conn = conn;
        redis::Script::new(HEARTBEAT)
            .key(nodes)
            .key(epoch)
            .arg(node)
            .arg(beat)
            .arg(mark)
            .invoke_async(&mut conn)
            .await
    };
    match tokio::time::timeout(link.inner.timeout, work).await {
        Ok(result) => result.map_err(FleetError::from),
        Err(_) => Err(FleetError::Timeout(link.inner.timeout)),
    }
}

/// KEYS: nodes hash, epoch mark. ARGV: node, heartbeat JSON, a new mark.
const HEARTBEAT: &str = r"
local mark = redis.call('GET', KEYS[2])
if not mark then
  mark = ARGV[3]
  redis.call('SET', KEYS[2], mark)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return mark
";

/// Exponential backoff with jitter, from 100 ms up to `cap`.
struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    const START: Duration = Duration::from_millis(100);

    fn new(cap: Duration) -> Self {
        Self {
            next: Self::START,
            cap: cap.max(Duration::from_secs(5)),
        }
    }

    fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.cap);
        wait.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    fn reset(&mut self) {
        self.next = Self::START;
    }
}

fn read_password(config: &FleetSection) -> Result<Option<Password>, LinkSetupError> {
    match &config.password_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|text| Some(Password(text.lines().next().unwrap_or_default().to_owned())))
            .map_err(|source| LinkSetupError::Password {
                path: path.display().to_string(),
                source,
            }),
        None => Ok(std::env::var(PASSWORD_ENV).ok().map(Password)),
    }
}

fn read_tls(config: &FleetSection) -> Result<Option<redis::TlsCertificates>, LinkSetupError> {
    if !config.uses_tls() {
        return Ok(None);
    }
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| LinkSetupError::TlsFile {
            key,
            path: path.display().to_string(),
            source,
        })
    };
    let root_cert = config
        .ca_file
        .as_deref()
        .map(|path| read("ca_file", path))
        .transpose()?;
    let client_tls = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("cert_file", cert)?,
            client_key: read("key_file", key)?,
        }),
        _ => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn opener(config: &FleetSection, password: Option<&Password>) -> Result<Opener, LinkSetupError> {
    // redis' rustls support uses the process-wide provider: make sure it is ours.
    let _ = rustls::crypto::CryptoProvider::install_default(
        rustls::crypto::aws_lc_rs::default_provider(),
    );
    let tls = read_tls(config)?;
    let infos = std::iter::once(&config.redis_url)
        .chain(&config.more_nodes)
        .map(|url| {
            let info = redis::IntoConnectionInfo::into_connection_info(url.expose())
                .map_err(LinkSetupError::Url)?;
            let mut settings = info.redis_settings().clone();
            if let Some(user) = &config.username {
                settings = settings.set_username(user);
            }
            if let Some(password) = password {
                settings = settings.set_password(&password.0);
            }
            Ok(info.set_redis_settings(settings))
        })
        .collect::<Result<Vec<_>, LinkSetupError>>()?;
    match config.mode {
        RedisMode::Standalone => {
            let info = infos.into_iter().next().ok_or_else(|| {
                LinkSetupError::Url(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "no URL",
                )))
            })?;
            let client = match tls {
                Some(certs) => Client::build_with_tls(info, certs),
                None => Client::open(info),
            }
            .map_err(LinkSetupError::Url)?;
            Ok(Opener::Standalone(client))
        }
        RedisMode::Cluster => {
            let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.connect_timeout)
                .retries(1);
            if let Some(certs) = tls {
                builder = builder.certs(certs);
            }
            builder
                .build()
                .map(Opener::Cluster)
                .map_err(LinkSetupError::Url)
        }
        RedisMode::Sentinel => {
            let master = config.sentinel_master.clone().unwrap_or_default();
            let addrs = infos.iter().map(|info| info.addr().clone());
            let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                .map_err(LinkSetupError::Url)?;
            if let Some(user) = &config.username {
                builder = builder.set_client_to_redis_username(user);
            }
            if let Some(password) = password {
                builder = builder.set_client_to_redis_password(&password.0);
            }
            if let Some(certs) = tls {
                builder = builder
                    .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
                    .set_client_to_sentinel_certificates(certs);
            }
            builder
                .build()
                .map(|client| Opener::Sentinel(Mutex::new(client)))
                .map_err(LinkSetupError::Url)
        }
    }
}

/// Milliseconds since the Unix epoch: the fleet's clock for expiries and
/// heartbeats (wall-clock, so it means the same on every host).
pub fn now_ms() -> u64 {
    crate::clock::unix_now_ms()
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> FleetSection {
        toml::from_str(text).expect("valid")
    }

    #[test]
    fn a_down_link_answers_at_once_and_never_shows_its_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "hunter2\nignored\n").expect("write");
        let config = section(&format!(
            "redis_url = \"redis://127.0.0.1:1\"\nnode = \"edge-a\"\npassword_file = {:?}\n",
            file.display().to_string()
        ));
        let link = Link::new(&config).expect("link");
        assert_eq!(link.node(), "edge-a");
        assert_eq!(link.key("blocks"), "{gateway}:blocks");
        assert!(!link.is_connected());
        assert!(matches!(link.conn(), Err(FleetError::Unreachable)));
        let shown = format!("{link:?} {:?}", read_password(&config).expect("read"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(
            read_password(&config)
                .expect("read")
                .map(|p| p.0)
                .as_deref(),
            Some("hunter2")
        );
    }

    #[test]
    fn a_missing_password_file_is_named() {
        let config =
            section("redis_url = \"redis://127.0.0.1\"\npassword_file = \"/nonexistent/pw\"\n");
        let err = Link::new(&config).expect_err("missing file").to_string();
        assert!(err.contains("/nonexistent/pw"), "{err}");
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_secs(1));
        let waits: Vec<_> = (0..10).map(|_| backoff.next()).collect();
        assert!(waits[0] <= Duration::from_millis(100));
        assert!(waits.iter().all(|wait| *wait <= Duration::from_secs(5)));
        assert!(waits[9] >= Duration::from_millis(2500), "{waits:?}");
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(100));
    }
}
