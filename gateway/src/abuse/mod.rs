//! The feedback loop: what the proxy learns about a client reaches the kernel.
//!
//! Every request outcome that says "this client misbehaves" (a failed token, a
//! WAF block, a 429, a malformed request), every failed TLS handshake and every
//! XDP "rate exceeded" event is a weighted [`Signal`] for the client's key: the
//! address, or for IPv6 the prefix the XDP rate limiter buckets by, so both
//! planes count the same thing. [`Abuse::record`] adds it to a sliding window;
//! once the window's weight reaches `abuse.threshold`, a [`BlockRequest`] goes
//! over a channel to the daemon, which owns the kernel maps and puts the key on
//! the blocklist with a TTL that doubles for repeat offenders. Each block keeps
//! its [`Provenance`] in the state directory for `gateway explain`.
//!
//! Only evidence from a source that proved its address can block it: L7
//! signals come over a completed TCP handshake; a packet-level signal counts
//! only for a key that completed one recently ([`Abuse::connected`]), and for
//! at most as much as its L7 signals, unless `abuse.trust_packet_sources` says
//! otherwise. A forged-source flood therefore blocks nobody (XDP still rate
//! limits it).
//!
//! The proxy runs on tokio worker threads and must never wait on the kernel, so
//! recording is a short critical section and the block itself is the daemon's.

pub mod provenance;
mod shared;
mod tracker;

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub use self::provenance::{Provenance, ProvenanceFile};
pub use self::tracker::ActiveBlock;
use self::{
    shared::{FleetWindow, Publisher},
    tracker::{Observation, Proven, Tracker},
};
use crate::{
    addr::Cidr,
    clock,
    config::{AbuseSection, Config, abuse::Weights},
    fleet::Link,
};

/// One kind of evidence against a client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    AuthFailure,
    AuthzFailure,
    WafBlock,
    RateLimited,
    Malformed,
    TlsHandshakeFailure,
    XdpRateExceeded,
}

impl Signal {
    /// The name in provenance, logs and metrics; the same as its weight's key.
    pub fn name(self) -> &'static str {
        match self {
            Signal::AuthFailure => "auth_failure",
            Signal::AuthzFailure => "authz_failure",
            Signal::WafBlock => "waf_block",
            Signal::RateLimited => "rate_limited",
            Signal::Malformed => "malformed",
            Signal::TlsHandshakeFailure => "tls_handshake_failure",
            Signal::XdpRateExceeded => "xdp_rate_exceeded",
        }
    }

    /// The signal a gateway answer stands for, from its `ProxyError::code()`.
    /// Failures that are the gateway's or the fleet's (5xx, `auth_unavailable`)
    /// and ordinary client mistakes (404, 405) are no evidence of abuse.
    pub fn from_code(code: &str) -> Option<Signal> {
        Some(match code {
            "invalid_token"
            | "missing_token"
            | "expired_token"
            | "revoked_token"
            | "invalid_credentials"
            | "unauthenticated" => Signal::AuthFailure,
            "insufficient_scope" | "forbidden" | "access_denied" => Signal::AuthzFailure,
            "waf_blocked" => Signal::WafBlock,
            "rate_limited"
            | "quota_exceeded"
            | "too_many_client_requests"
            | "too_many_client_connections"
            | "body_too_slow" => Signal::RateLimited,
            "uri_too_long"
            | "headers_too_large"
            | "invalid_path"
            | "bad_body"
            | "malformed_request"
            | "invalid_request"
            | "protocol_anomaly"
            | "content_type_not_allowed"
            | "schema_invalid" => Signal::Malformed,
            _ => return None,
        })
    }

    /// Whether the signal is seen in packets only, with no handshake behind
    /// it: its source address may be forged.
    pub fn is_packet_level(self) -> bool {
        matches!(self, Signal::XdpRateExceeded)
    }

    fn weight(self, weights: &Weights) -> u32 {
        match self {
            Signal::AuthFailure => weights.auth_failure,
            Signal::AuthzFailure => weights.authz_failure,
            Signal::WafBlock => weights.waf_block,
            Signal::RateLimited => weights.rate_limited,
            Signal::Malformed => weights.malformed,
            Signal::TlsHandshakeFailure => weights.tls_handshake_failure,
            Signal::XdpRateExceeded => weights.xdp_rate_exceeded,
        }
    }
}

/// What was seen, for the provenance of a block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Evidence {
    /// [`Signal::name`].
    pub signal: String,
    /// Unix seconds.
    pub at: u64,
    /// The gateway's answer code (`waf_blocked`, `invalid_token`…), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The WAF rule that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The hash of the token's `jti` (never the token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The trusted proxy the request came through, when the client address
    /// was taken from its forwarding headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_by: Option<IpAddr>,
}

impl Evidence {
    /// Evidence of `signal`, seen now.
    pub fn new(signal: Signal) -> Self {
        Self {
            signal: signal.name().to_owned(),
            at: clock::unix_now(),
            ..Self::default()
        }
    }
}

/// A decision to block, on its way to the daemon.
#[derive(Clone, Debug)]
pub struct BlockRequest {
    pub cidr: Cidr,
    pub ttl: Duration,
    pub provenance: Provenance,
}

/// The key signals of `ip` count under and its block covers: the IPv4
/// address itself, or the IPv6 address's /`ipv6_prefix` network, the bucket
/// the XDP rate limiter uses (`xdp.ipv6_rate_limit_prefix`), so an L7 signal
/// and a rate event of the same host add up, and the block drops that host
/// whichever address of its prefix it uses next.
pub fn key_of(ip: IpAddr, ipv6_prefix: u8) -> Cidr {
    match ip.to_canonical() {
        ip @ IpAddr::V4(_) => Cidr::host(ip),
        ip @ IpAddr::V6(_) => Cidr::network_of(ip, ipv6_prefix),
    }
}

/// The settings in force: `[abuse]` plus the addresses that are never blocked.
struct Settings {
    config: AbuseSection,
    never: Vec<Cidr>,
    ipv6_prefix: u8,
}

impl Settings {
    fn from_config(config: &Config) -> Self {
        let mut never = config.abuse.exempt.clone();
        never.extend(config.xdp.allowlist.iter().copied());
        never.extend(config.proxy.trusted_proxies.iter().copied());
        Self {
            config: config.abuse.clone(),
            never,
            ipv6_prefix: config.xdp.ipv6_rate_limit_prefix,
        }
    }

    fn key(&self, ip: IpAddr) -> Cidr {
        key_of(ip, self.ipv6_prefix)
    }
}

/// Signal windows for every client address, shared by all connections.
pub struct Abuse {
    settings: ArcSwap<Settings>,
    tracker: Mutex<Tracker>,
    /// Kept apart from the windows: touched on every accepted connection.
    proven: Mutex<Proven>,
    blocks: mpsc::UnboundedSender<BlockRequest>,
    /// Where L7 signals go to be summed over the fleet, once shared.
    fleet: OnceLock<Publisher>,
}

impl Abuse {
    /// The loop's front half; the daemon reads the returned receiver.
    pub fn new(config: &Config) -> (Arc<Self>, mpsc::UnboundedReceiver<BlockRequest>) {
        let (blocks, receiver) = mpsc::unbounded_channel();
        let abuse = Arc::new(Self {
            settings: ArcSwap::from_pointee(Settings::from_config(config)),
            tracker: Mutex::new(Tracker::default()),
            proven: Mutex::new(Proven::default()),
            blocks,
            fleet: OnceLock::new(),
        });
        (abuse, receiver)
    }

    /// Takes a reloaded config's thresholds and exemptions; windows and offence
    /// counts carry over.
    pub fn reconfigure(&self, config: &Config) {
        self.settings.store(Arc::new(Settings::from_config(config)));
    }

    /// Sums this edge's L7 signals with every other edge's through `link`
    /// (see [`shared`]); the returned task publishes them. A second call
    /// shares nothing more.
    pub fn share(self: &Arc<Self>, link: Link) -> Option<tokio::task::JoinHandle<()>> {
        if self.fleet.get().is_some() {
            return None;
        }
        let (publisher, worker) = shared::spawn(link, self);
        match self.fleet.set(publisher) {
            Ok(()) => Some(worker),
            Err(_) => {
                worker.abort();
                None
            }
        }
    }

    /// Remembers earlier offences (from the state directory) so a restart does
    /// not reset escalation.
    pub fn restore(&self, file: &ProvenanceFile) {
        let now_unix = clock::unix_now();
        let now = Instant::now();
        let mut tracker = self.lock();
        for (cidr, history) in &file.blocks {
            if let Some(last) = history.last() {
                let ago = Duration::from_secs(now_unix.saturating_sub(last.blocked_at));
                let remaining = match last.unblocked_at {
                    Some(_) => Duration::ZERO,
                    None => Duration::from_secs(last.expires_at.saturating_sub(now_unix)),
                };
                let blocked_at = now.checked_sub(ago).unwrap_or(now);
                tracker.restore(
                    last.aggregated_from.unwrap_or(*cidr),
                    *cidr,
                    last,
                    blocked_at,
                    // A state file's expiry is bounded like any block's TTL, so a
                    // damaged one cannot overflow the clock.
                    now.max(blocked_at) + remaining.min(crate::lists::MAX_TTL),
                );
            }
        }
    }

    /// `peer` completed a TCP handshake: its address is its own, so its
    /// packet-level signals may count for a while (see [`Signal::is_packet_level`]).
    pub fn connected(&self, peer: IpAddr) {
        let settings = self.settings.load();
        if !settings.config.enabled || settings.config.trust_packet_sources {
            return;
        }
        self.proven
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saw(settings.key(peer), Instant::now(), settings.config.window);
    }

    /// The block in force for `client`, for enforcement at L7 of clients the
    /// kernel cannot drop (behind a trusted proxy).
    pub fn blocked(&self, client: IpAddr) -> Option<ActiveBlock> {
        let settings = self.settings.load();
        let client = client.to_canonical();
        let aggregate = Cidr::network_of(client, if client.is_ipv4() { 24 } else { 64 });
        let candidates = [settings.key(client), Cidr::host(client), aggregate];
        self.lock().blocked(&candidates, Instant::now())
    }

    /// The block on `cidr` ended before its TTL (an operator removed it): the
    /// proxy stops enforcing it.
    pub fn lift(&self, cidr: &Cidr) {
        self.lock().lift(cidr, Instant::now());
    }

    /// Counts `signal` against `client`'s key; past the threshold, asks the
    /// daemon to block it. A packet-level signal for a key that completed no
    /// handshake recently is dropped here (unless packet sources are trusted).
    pub fn record(&self, client: IpAddr, signal: Signal, evidence: Evidence) {
        let settings = self.settings.load();
        if !settings.config.enabled {
            return;
        }
        let weight = signal.weight(&settings.config.weights);
        if weight == 0 {
            return;
        }
        metrics::counter!("gateway_abuse_signals_total", "signal" => signal.name()).increment(1);
        if settings.never.iter().any(|cidr| cidr.contains(client)) {
            return;
        }
        let key = settings.key(client);
        let now = Instant::now();
        let packet = signal.is_packet_level();
        if packet
            && !settings.config.trust_packet_sources
            && !self
                .proven
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .recently(&key, now, settings.config.window)
        {
            metrics::counter!("gateway_abuse_signals_ignored_total", "signal" => signal.name(), "reason" => "unproven_source").increment(1);
            debug!(%key, signal = signal.name(), "packet-level signal from a source without a recent handshake: not counted");
            return;
        }
        let observation = Observation {
            key,
            host: client.to_canonical(),
            weight,
            packet,
            evidence,
        };
        let (decision, counted) = {
            let mut tracker = self.lock();
            let counted = !tracker.is_blocked(&key, now);
            let decision = tracker.record(&settings.config, &settings.never, observation, now);
            (decision, counted)
        };
        if let Some(fleet) = self.fleet.get() {
            match &decision {
                Some(_) => fleet.clear(key),
                // Packet-level signals stay here: their sources prove nothing.
                None if counted && !packet => {
                    fleet.signal(key, signal, weight, settings.config.window);
                }
                None => {}
            }
        }
        if let Some(request) = decision {
            self.send(request);
        }
    }

    /// The fleet's window for `key` after this edge added a signal to it:
    /// blocks when the fleet's sum reaches the threshold.
    fn record_fleet(&self, key: Cidr, window: &FleetWindow) {
        let settings = self.settings.load();
        if !settings.config.enabled {
            return;
        }
        let decision = self.lock().record_fleet(
            &settings.config,
            &settings.never,
            key,
            window,
            Instant::now(),
        );
        if let Some(request) = decision {
            metrics::counter!("gateway_abuse_fleet_blocks_total").increment(1);
            if let Some(fleet) = self.fleet.get() {
                fleet.clear(key);
            }
            self.send(request);
        }
    }

    fn send(&self, request: BlockRequest) {
        let cidr = request.cidr;
        if self.blocks.send(request).is_err() {
            warn!(%cidr, "the daemon no longer takes block requests; not blocking");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
