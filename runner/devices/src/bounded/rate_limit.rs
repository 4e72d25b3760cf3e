//! At most so many warnings per second from one device of one VM.
//!
//! A guest decides how often a device model sees a malformed request, so
//! without a limit it decides how much the host logs. Each device owns a
//! [`RateLimiter`]: within one window the first `burst` messages pass,
//! the rest are counted, and the first message of a later window reports
//! how many were suppressed (use [`warn_limited!`](crate::warn_limited)).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to do with one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` messages were dropped since the last one logged.
    Log { suppressed: u64 },
    /// Over the limit: drop it (it is counted).
    Suppress,
}

#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    window_start: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

impl Default for RateLimiter {
    /// 10 messages per second.
    fn default() -> Self {
        RateLimiter::new(10, Duration::from_secs(1))
    }
}

impl RateLimiter {
    pub fn new(burst: u32, window: Duration) -> RateLimiter {
        RateLimiter {
            burst: burst.max(1),
            window,
            state: Mutex::new(State::default()),
        }
    }

    pub fn check(&self) -> Verdict {
        self.check_at(Instant::now())
    }

    /// [`Self::check`] at a given time, for tests.
    pub fn check_at(&self, now: Instant) -> Verdict {
        // A poisoned lock only means a logger panicked; the counts are fine.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let expired = state
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            state.window_start = Some(now);
            state.passed = 0;
        }
        if state.passed < self.burst {
            state.passed += 1;
            Verdict::Log {
                suppressed: std::mem::take(&mut state.suppressed),
            }
        } else {
            state.suppressed += 1;
            Verdict::Suppress
        }
    }
}

/// `tracing::warn!` through a [`RateLimiter`]: `warn_limited!(self.limiter,
/// "virtio-blk: malformed request: {reason}")`. The first message after a
/// suppressed stretch is followed by `suppressed K similar messages`.
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $($arg:tt)+) => {
        match $limiter.check() {
            $crate::bounded::Verdict::Log { suppressed } => {
                ::tracing::warn!($($arg)+);
                if suppressed > 0 {
                    ::tracing::warn!("suppressed {suppressed} similar messages");
                }
            }
            $crate::bounded::Verdict::Suppress => {}
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rest_is_counted_until_the_next_window() {
        let limiter = RateLimiter::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..10).map(|_| limiter.check_at(t0)).collect();
        assert_eq!(
            verdicts[..3],
            [Verdict::Log { suppressed: 0 }; 3],
            "{verdicts:?}"
        );
        assert!(verdicts[3..].iter().all(|v| *v == Verdict::Suppress));
        // Still the same window.
        let later = t0 + Duration::from_millis(999);
        assert_eq!(limiter.check_at(later), Verdict::Suppress);
        // A new window: the first message carries the count.
        let next = t0 + Duration::from_secs(1);
        assert_eq!(limiter.check_at(next), Verdict::Log { suppressed: 8 });
        assert_eq!(limiter.check_at(next), Verdict::Log { suppressed: 0 });
    }

    #[test]
    fn the_macro_logs_at_most_the_burst() {
        let limiter = RateLimiter::new(2, Duration::from_secs(3600));
        let mut logged = 0;
        for _ in 0..100 {
            if let Verdict::Log { .. } = limiter.check() {
                logged += 1;
            }
        }
        assert_eq!(logged, 2);
        // And the macro compiles against it.
        warn_limited!(limiter, "still limited: {}", 1);
    }
}
