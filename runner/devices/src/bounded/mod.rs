//! Keeping what a guest can make the host do bounded: logs that cannot
//! fill the disk ([`CappedLog`]) and warnings that cannot flood the host's
//! log ([`RateLimiter`]). A guest controls its console output and can make
//! a device model complain as often as it likes, so both are needed before
//! running pipelines from strangers.

mod capped_log;
mod rate_limit;

pub use capped_log::{omitted_marker, CappedLog, DEFAULT_LOG_LIMIT, MIN_LOG_LIMIT};
pub use rate_limit::{RateLimiter, Verdict};
