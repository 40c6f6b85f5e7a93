//! Talking to upstream pools: pure building blocks for choosing, ejecting, bounding and retrying.

pub mod balance;
pub mod breaker;
pub mod outlier;
pub mod retry;
