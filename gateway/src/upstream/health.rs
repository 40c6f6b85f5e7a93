//! The pool's background duties: active health checks over the same mutual TLS
//! as real requests, re-resolving DNS names, and closing connections idle past
//! `pool_idle_timeout`. One task per pool; it holds only
//! a weak reference, so dropping the pool (after a reload) ends it.

use std::{
    net::SocketAddr,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use tracing::{info, warn};

use super::pool::Pool;

/// Checks every endpoint once and takes each result as its state, so the
/// listener never opens with a dead endpoint in rotation.
pub async fn check_all_once(pool: &Pool) {
    if pool.config.health.path.is_empty() {
        return;
    }
    let endpoints = pool.endpoints();
    let results = join_all(endpoints.iter().map(|endpoint| pool.probe(endpoint))).await;
    for (endpoint, result) in endpoints.iter().zip(results) {
        if let Err(reason) = &result {
            warn!(pool = %pool.name, endpoint = %endpoint.addr, %reason, "endpoint failed its first health check; no traffic until it passes");
        }
        endpoint.set_initial_health(result.is_ok());
    }
}

/// Starts the pool's background task.
pub fn spawn(pool: &Arc<Pool>) {
    let weak = Arc::downgrade(pool);
    let interval = pool.config.health.interval;
    tokio::spawn(async move {
        let mut next_resolve = Instant::now() + resolve_interval(&weak);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            for endpoint in pool.endpoints().iter() {
                endpoint.reap_idle();
            }
            if Instant::now() >= next_resolve {
                refresh_addresses(&pool).await;
                next_resolve = Instant::now() + pool.config.resolve_interval;
            }
            if !pool.config.health.path.is_empty() {
                check_all(&pool).await;
            }
        }
    });
}

fn resolve_interval(pool: &Weak<Pool>) -> Duration {
    pool.upgrade()
        .map_or(Duration::from_secs(30), |p| p.config.resolve_interval)
}

async fn check_all(pool: &Pool) {
    let endpoints = pool.endpoints();
    let results = join_all(endpoints.iter().map(|endpoint| pool.probe(endpoint))).await;
    for (endpoint, result) in endpoints.iter().zip(results) {
        match endpoint.record_check(result.is_ok(), &pool.config) {
            Some(true) => {
                info!(pool = %pool.name, endpoint = %endpoint.addr, "endpoint healthy again; back in rotation")
            }
            Some(false) => warn!(
                pool = %pool.name,
                endpoint = %endpoint.addr,
                reason = result.err().unwrap_or_default(),
                "endpoint unhealthy; taken out of rotation"
            ),
            None => {}
        }
    }
}

/// Resolves the pool's endpoint list again; a failed lookup keeps the old set.
pub async fn refresh_addresses(pool: &Pool) {
    match resolve(&pool.config.endpoints).await {
        Ok(addrs) => {
            let current: Vec<SocketAddr> = pool.endpoints().iter().map(|e| e.addr).collect();
            if addrs != current {
                info!(pool = %pool.name, ?addrs, "endpoint addresses changed");
                pool.set_addrs(&addrs);
            }
        }
        Err(err) => {
            warn!(pool = %pool.name, %err, "resolving endpoints failed; keeping the last known addresses")
        }
    }
}

/// Every address of every endpoint entry, in config order, without duplicates.
pub async fn resolve(endpoints: &[String]) -> Result<Vec<SocketAddr>, std::io::Error> {
    let mut addrs = Vec::new();
    for endpoint in endpoints {
        let found: Vec<SocketAddr> = match endpoint.parse::<SocketAddr>() {
            Ok(addr) => vec![addr],
            Err(_) => tokio::net::lookup_host(endpoint.as_str())
                .await
                .map_err(|err| std::io::Error::new(err.kind(), format!("{endpoint}: {err}")))?
                .collect(),
        };
        for addr in found {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
    }
    Ok(addrs)
}
