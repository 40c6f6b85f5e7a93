//! Several gateways as one fleet: what they share through Redis.
//!
//! - [`link`]: the Redis connection every feature uses, its budget and its health.
//! - [`status`]: heartbeats, and the fleet as `gateway fleet status` shows it.

pub mod link;
pub mod status;

pub use link::{Conn, FleetError, Link, LinkSetupError, LinkStatus, now_ms};
