//! The gateway daemon as a library; the `gateway` binary adds the command line, and
//! the verdict tests drive the same code the binary runs.
//!
//! - [`xdp`]: load, attach and pin the XDP program; read and change its maps.
//! - [`lists`]: allowlist and blocklist entries, kept in the kernel and in the state
//!   file so a reboot loses nothing.
//! - [`config`]: the daemon's configuration file.
//! - [`daemon`]: `gateway run`.
//! - [`proxy`]: the HTTP proxy: path normalization and header rules.
//! - [`policy`]: which route serves a request (later scopes, WAF, rate limits).

pub mod addr;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod lists;
pub mod policy;
pub mod proxy;
pub mod state;
pub mod xdp;
