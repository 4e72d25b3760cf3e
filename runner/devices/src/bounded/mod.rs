//! Keeping what a guest can make the host do bounded: warnings that cannot
//! flood the host's log ([`RateLimiter`]). A guest can make a device model
//! complain as often as it likes, so this is needed before running
//! pipelines from strangers. (Logs that cannot fill the disk are the
//! `capped-log` crate's.)

mod rate_limit;

pub use rate_limit::{RateLimiter, Verdict};
