//! The gateway daemon as a library; the `gateway` binary adds the command line, and
//! the tests drive the same code the binary runs.
//!
//! - [`caps`]: the Linux capabilities the gateway needs instead of root.
//! - [`xdp`]: load, attach and pin the XDP program; read and change its maps.
//! - [`lists`]: allowlist and blocklist entries, kept in the kernel and in the state
//!   file so a reboot loses nothing.
//! - [`proxy`]: TLS termination and the request pipeline.
//! - [`auth`]: who is calling.
//! - [`policy`]: which route serves a request.
//! - [`upstream`]: the fleet's pools: balancing, health, ejection, breaker, retries.
//! - [`observe`]: metrics, the admin endpoint, log streams.
//! - [`tls`]: certificate, key and CA files.
//! - [`config`]: the daemon's configuration file.
//! - [`abuse`]: signals about misbehaving clients, and the blocks they lead to.
//! - [`fleet`]: several gateways sharing blocks, revocations and limits through Redis.
//! - [`daemon`]: `gateway run`.
//! - [`systemd`]: `sd_notify` readiness, reload and watchdog messages.
//! - [`control`]: the daemon's control socket, how `gateway reload` gets a verdict.

pub mod abuse;
pub mod addr;
pub mod auth;
pub mod caps;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod fleet;
pub mod lists;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod state;
pub mod systemd;
#[cfg(test)]
mod test_redis;
pub mod tls;
pub mod upstream;
pub mod xdp;
