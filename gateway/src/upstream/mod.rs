//! The fleet: named pools of endpoints reached over mutual TLS, with load
//! balancing, health checks, outlier ejection, a circuit breaker and retries.
//!
//! - [`pool`]: choosing an endpoint and sending a request, retries included.
//! - [`conn`]: the connections to one endpoint, kept for reuse.
//! - [`health`]: active health checks and DNS re-resolution.
//! - [`tls`]: the gateway's client certificate and the fleet's CA.
//! - [`balance`], [`outlier`], [`breaker`], [`circuit`], [`retry`]: the policies,
//!   each alone.

pub mod balance;
pub mod breaker;
pub mod circuit;
pub mod conn;
pub mod health;
pub mod outlier;
pub mod pool;
pub mod retry;
pub mod tls;

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use tracing::info;

pub use self::pool::{Forwarded, Pool, RequestBody, UpstreamBody};
use crate::{
    config::{Config, UpstreamConfig},
    tls::TlsFileError,
};

/// Errors of any body the gateway sends or relays.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type between client, gateway and fleet.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Why a request got no usable answer from the fleet. Turned into a response in
/// one place (`proxy::error`).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no healthy endpoint in pool {pool}")]
    NoHealthyEndpoint {
        pool: String,
        /// When a health check may have found one again.
        retry_after: std::time::Duration,
    },
    #[error("circuit breaker open: {0}")]
    BreakerOpen(#[from] breaker::BreakerOpen),
    #[error(transparent)]
    CircuitOpen(#[from] circuit::CircuitOpen),
    #[error("{endpoint} did not answer within the attempt's {after:?}")]
    AttemptTimeout {
        endpoint: SocketAddr,
        after: std::time::Duration,
    },
    #[error("connecting to {endpoint} failed: {reason}")]
    Connect {
        endpoint: SocketAddr,
        reason: String,
    },
    #[error("request to {endpoint} failed: {reason}")]
    Request {
        endpoint: SocketAddr,
        reason: String,
    },
    #[error(transparent)]
    ClientBody(#[from] ClientBodyError),
    #[error("{0}")]
    Internal(String),
}

/// The request body failed for a reason that is the client's: such a failure
/// is answered 400/408/413 and is neither retried nor held against the
/// endpoint, the pool or its metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientBodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    #[error("request body stalled for {0:?}")]
    Stalled(std::time::Duration),
    #[error("request body slower than {0}")]
    TooSlow(crate::config::byte_rate::ByteRate),
    #[error("the request body's framing is malformed")]
    Malformed,
    #[error("the request body ended before it was complete")]
    Incomplete,
}

/// Where a client's body records that it failed, when it does: the body
/// knows, so the pool need not guess from the error the upstream client
/// reports.
#[derive(Clone, Debug, Default)]
pub struct BodyFault(Arc<std::sync::OnceLock<ClientBodyError>>);

impl BodyFault {
    /// Records the first failure.
    pub fn set(&self, err: ClientBodyError) {
        let _ = self.0.set(err);
    }

    pub fn get(&self) -> Option<ClientBodyError> {
        self.0.get().copied()
    }
}

/// A pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("upstream.{pool}: {source}")]
    Tls { pool: String, source: TlsFileError },
    #[error("upstream.{pool}: resolving endpoints: {source}")]
    Resolve {
        pool: String,
        source: std::io::Error,
    },
}

/// Every pool of one configuration.
#[derive(Default)]
pub struct Upstreams {
    pools: HashMap<String, Arc<Pool>>,
}

impl Upstreams {
    /// Builds the pools of `config`, reusing from `previous` every pool whose
    /// settings and TLS files did not change, so a reload keeps their health,
    /// connections and breaker state.
    pub async fn build(config: &Config, previous: Option<&Upstreams>) -> Result<Self, PoolError> {
        let mut pools = HashMap::new();
        for (name, upstream) in &config.upstreams {
            let reused = previous
                .and_then(|p| p.pools.get(name))
                .filter(|pool| is_unchanged(pool, upstream));
            let pool = match reused {
                Some(pool) => pool.clone(),
                None => start_pool(name, upstream).await?,
            };
            pools.insert(name.clone(), pool);
        }
        Ok(Self { pools })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }
}

fn is_unchanged(pool: &Pool, config: &UpstreamConfig) -> bool {
    pool.config == *config && pool.tls_fingerprint == tls::fingerprint(config)
}

async fn start_pool(name: &str, config: &UpstreamConfig) -> Result<Arc<Pool>, PoolError> {
    let addrs = health::resolve(&config.endpoints)
        .await
        .map_err(|source| PoolError::Resolve {
            pool: name.to_owned(),
            source,
        })?;
    let pool = Arc::new(
        Pool::new(name, config, &addrs).map_err(|source| PoolError::Tls {
            pool: name.to_owned(),
            source,
        })?,
    );
    health::check_all_once(&pool).await;
    let healthy = pool.endpoints().iter().filter(|e| e.is_healthy()).count();
    info!(
        pool = name,
        endpoints = addrs.len(),
        healthy,
        "upstream pool ready"
    );
    health::spawn(&pool);
    Ok(pool)
}
