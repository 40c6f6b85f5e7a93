//! Several gateways as one fleet: what they share through Redis.
//!
//! - [`link`]: the Redis connection every feature uses, its budget and its health.
//! - [`status`]: heartbeats, and the fleet as `gateway fleet status` shows it.
//! - [`stream`]: the shared sets in Redis and the event stream every edge tails.
//! - [`blocks`], [`revocations`]: what a shared block or revocation is, and what
//!   is accepted back from Redis.
//! - [`sync`]: keeps this edge's lists in step with the fleet's, both ways.

pub mod blocks;
pub mod link;
pub mod revocations;
pub mod status;
pub mod stream;
pub mod sync;

pub use link::{Conn, FleetError, Link, LinkSetupError, LinkStatus, now_ms};
