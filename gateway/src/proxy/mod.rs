//! The TLS-terminating HTTP proxy: request path normalization and header rules.
pub mod normalize;
