//! The admin listener: plain HTTP/1.1 on a private address (127.0.0.1:9090 by
//! default), never on a public listener; clients outside `admin.allow` (when
//! set) are closed at accept.
//!
//! - `GET /metrics`: Prometheus text, with the pool and XDP gauges read now.
//! - `GET /healthz`: 200 while the process serves requests at all.
//! - `GET /readyz`: 200 when every [`ReadyCheck`] passes, else 503 naming the
//!   failing ones. Other modules add their own checks (keys loaded, …) with
//!   [`AdminState::add_ready_check`].
//! - `GET /config`: the active configuration as JSON, secrets redacted.
//! - `GET /xdp/top`: the sources with the most XDP drops and the latest
//!   blocks, as JSON (what `gateway top` shows; XDP enabled only).

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{metrics, redact};
use crate::{
    config::Config,
    lists::{ListKind, Lists},
    proxy::Snapshots,
    state::StateDir,
    xdp::{self, KernelMaps, PinDir},
};

/// One condition of readiness: `Err` says what is missing.
pub type ReadyCheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the admin endpoints read.
pub struct AdminState {
    config: ArcSwap<Config>,
    proxy: Option<Snapshots>,
    kernel: Option<(PinDir, StateDir)>,
    checks: Vec<(&'static str, ReadyCheck)>,
}

impl AdminState {
    /// The state for a daemon running `config`, with the proxy's pools (when it
    /// runs one) and the kernel plane's pins (when XDP is enabled). Readiness
    /// starts with "every pool has a healthy endpoint" and "XDP attached".
    pub fn new(
        config: &Config,
        proxy: Option<Snapshots>,
        kernel: Option<(PinDir, StateDir)>,
    ) -> Self {
        let pins = kernel.as_ref().map(|(pins, _)| pins.clone());
        let mut state = Self {
            config: ArcSwap::from_pointee(config.clone()),
            proxy: proxy.clone(),
            kernel,
            checks: Vec::new(),
        };
        if let Some(proxy) = proxy {
            let keys = proxy.clone();
            state.add_ready_check("upstreams", Box::new(move || pools_ready(&proxy)));
            state.add_ready_check("keys", Box::new(move || keys_ready(&keys)));
        }
        if let Some(pins) = pins {
            state.add_ready_check("xdp", Box::new(move || xdp_ready(&pins)));
        }
        state
    }

    /// One more condition for `/readyz` (a hook for later stages).
    pub fn add_ready_check(&mut self, name: &'static str, check: ReadyCheck) {
        self.checks.push((name, check));
    }

    /// The configuration `/config` shows (after a reload).
    pub fn set_config(&self, config: &Config) {
        self.config.store(Arc::new(config.clone()));
    }

    /// Every failing check as `name: reason`.
    pub fn unready(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter_map(|(name, check)| check().err().map(|why| format!("{name}: {why}")))
            .collect()
    }

    /// The Prometheus exposition with every scrape-time gauge refreshed.
    pub fn render_metrics(&self) -> String {
        let handle = metrics::handle();
        if let Some(proxy) = &self.proxy {
            metrics::record_upstreams(&proxy.current().upstreams);
        }
        if let Some((pins, _)) = &self.kernel {
            let read = KernelMaps::open(pins).and_then(|maps| metrics::record_xdp(&maps));
            if let Err(err) = read {
                warn!(%err, "reading the XDP maps for /metrics failed");
            }
        }
        metrics::record_process();
        handle.run_upkeep();
        handle.render()
    }

    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned());
        }
        match request.uri().path() {
            "/metrics" => {
                let mut response = text(StatusCode::OK, self.render_metrics());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/healthz" => text(StatusCode::OK, "alive\n".to_owned()),
            "/readyz" => {
                let unready = self.unready();
                if unready.is_empty() {
                    text(StatusCode::OK, "ready\n".to_owned())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready:\n{}\n", unready.join("\n")),
                    )
                }
            }
            "/config" => {
                let body = redact::config_view(&self.config.load());
                let mut response = text(
                    StatusCode::OK,
                    serde_json::to_string_pretty(&body).unwrap_or_default(),
                );
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            "/xdp/top" => match self.xdp_top() {
                Ok(top) => {
                    let mut response = text(StatusCode::OK, top.to_string());
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /healthz, /readyz, /config or /xdp/top\n".to_owned(),
            ),
        }
    }
}

impl AdminState {
    /// The [`TOP_N`] sources with the most drops (rate-limited buckets and
    /// blocked addresses, each with its verdict) and the latest blocks.
    fn xdp_top(&self) -> Result<serde_json::Value, String> {
        let Some((pins, state)) = &self.kernel else {
            return Err("XDP is disabled on this gateway".to_owned());
        };
        let maps = KernelMaps::open(pins).map_err(|err| err.to_string())?;
        let blocks = Lists::new(&maps, state)
            .list(ListKind::Block)
            .map_err(|err| err.to_string())?;
        let mut sources: Vec<serde_json::Value> = maps
            .top_rate_limited(TOP_N)
            .map_err(|err| err.to_string())?
            .into_iter()
            .filter(|(_, bucket)| bucket.dropped > 0)
            .map(|(source, bucket)| {
                serde_json::json!({
                    "source": source, "verdict": "rate_limited",
                    "dropped": bucket.dropped, "passed": bucket.passed,
                })
            })
            .collect();
        sources.extend(blocks.iter().filter(|b| b.hits.unwrap_or(0) > 0).map(|b| {
            serde_json::json!({
                "source": b.cidr.to_string(), "verdict": "blocked",
                "dropped": b.hits, "passed": 0,
            })
        }));
        sources.sort_by_key(|s| std::cmp::Reverse(s["dropped"].as_u64().unwrap_or(0)));
        sources.truncate(TOP_N);
        let mut recent = blocks;
        recent.sort_by_key(|b| std::cmp::Reverse(b.added_at.unwrap_or(0)));
        recent.truncate(TOP_N);
        Ok(serde_json::json!({ "sources": sources, "blocks": recent }))
    }
}

/// Rows in each `/xdp/top` list.
const TOP_N: usize = 10;

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

fn pools_ready(proxy: &Snapshots) -> Result<(), String> {
    let snapshot = proxy.current();
    let mut empty: Vec<&str> = snapshot
        .upstreams
        .iter()
        .filter(|pool| !pool.endpoints().iter().any(|e| e.is_healthy()))
        .map(|pool| pool.name.as_str())
        .collect();
    if empty.is_empty() {
        return Ok(());
    }
    empty.sort_unstable();
    Err(format!(
        "no healthy endpoint in pool(s) {}",
        empty.join(", ")
    ))
}

fn keys_ready(proxy: &Snapshots) -> Result<(), String> {
    let snapshot = proxy.current();
    let missing = snapshot.auth.issuers_without_keys();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "no signing keys yet for issuer(s) {}",
            missing.join(", ")
        ))
    }
}

fn xdp_ready(pins: &PinDir) -> Result<(), String> {
    match xdp::pinned_program_id(pins) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "no XDP program pinned under {}",
            pins.path().display()
        )),
        Err(err) => Err(err.to_string()),
    }
}

/// Binds the admin listener; errors name the address.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(%err, "admin listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if !state.config.load().admin.admits(peer.ip()) {
            debug!(%peer, "admin listener: client not in admin.allow; closed");
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = state.respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %err, "admin connection ended with an error");
            }
        });
    }
}
