//! Request policy: route matching now; later scopes, the WAF and rate limits.

pub mod quota;
pub mod ratelimit;
pub mod routes;
pub mod shared;
pub mod waf;
