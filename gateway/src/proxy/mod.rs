//! The TLS-terminating HTTP proxy: request path normalization and header rules.
pub mod headers;
pub mod normalize;
