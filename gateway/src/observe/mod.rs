//! What operators see: Prometheus metrics, the admin endpoint (`/metrics`,
//! `/healthz`, `/readyz`, `/config`), and the access and audit log streams.
//!
//! - [`metrics`]: the recorder, the per-request metrics, and the gauges read
//!   from the pools and the kernel maps when Prometheus scrapes.
//! - [`admin`]: the admin listener and its readiness checks.
//! - [`alerts`]: `[[alert]]` rules judged every second, webhooks.
//! - [`logs`]: the access, audit and daemon streams and their files.
//! - [`redact`]: the active config for `/config`, secrets hidden by their type.
//!
//! Other modules only record (the `metrics` facade, `tracing` events with
//! `target: "audit"`); this module makes that visible.

pub mod admin;
pub mod alerts;
pub mod logs;
pub mod metrics;
pub mod redact;
