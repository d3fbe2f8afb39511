//! Failed sign-ins counted per source address, on top of identity's per-user throttle: a
//! client that guesses passwords for many users from one address is refused too.
//!
//! After its limit of failed sign-ins within [`WINDOW_MS`] ([`FREE_FAILURES`] unless
//! configured), the source's sign-in attempts are refused with Cognito's "Password attempts
//! exceeded" until the window that started with its first failure has passed. The limit is
//! much higher than the per-user one (5): many users may share an address (a NAT, a proxy),
//! and one of them guessing must not lock the others out; the per-user lockout counts each
//! user on its own. Counts live in memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Failed sign-ins a source may make within one window, by default.
pub const FREE_FAILURES: u32 = 200;
/// The window, and so the longest lockout: 5 minutes.
pub const WINDOW_MS: i64 = 5 * 60 * 1000;
const MAX_ENTRIES: usize = 100_000;

pub struct SourceThrottle {
    /// Failures a source may make within a window.
    free: u32,
    /// Per source: failures in the current window and when the window began.
    entries: Mutex<HashMap<IpAddr, (u32, i64)>>,
}

impl Default for SourceThrottle {
    fn default() -> Self {
        SourceThrottle::new(FREE_FAILURES)
    }
}

impl SourceThrottle {
    pub fn new(free: u32) -> Self {
        SourceThrottle {
            free: free.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn locked(&self, source: IpAddr, now_ms: i64) -> bool {
        self.entries.lock().is_ok_and(|m| {
            m.get(&source)
                .is_some_and(|(n, start)| *n >= self.free && now_ms - start < WINDOW_MS)
        })
    }

    pub fn failure(&self, source: IpAddr, now_ms: i64) {
        let Ok(mut m) = self.entries.lock() else {
            return;
        };
        if m.len() >= MAX_ENTRIES {
            m.retain(|_, (_, start)| now_ms - *start < WINDOW_MS);
        }
        let e = m.entry(source).or_insert((0, now_ms));
        if now_ms - e.1 >= WINDOW_MS {
            *e = (0, now_ms);
        }
        e.0 = e.0.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_the_free_failures_for_the_rest_of_the_window() {
        let t = SourceThrottle::default();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        for i in 0..FREE_FAILURES {
            assert!(!t.locked(a, 1000 + i64::from(i)));
            t.failure(a, 1000 + i64::from(i));
        }
        assert!(t.locked(a, 2000));
        assert!(!t.locked(b, 2000), "other sources are not affected");
        assert!(t.locked(a, 1000 + WINDOW_MS - 1));
        assert!(!t.locked(a, 1000 + WINDOW_MS));
        t.failure(a, 1000 + WINDOW_MS);
        assert!(
            !t.locked(a, 1000 + WINDOW_MS + 1),
            "a new window starts from zero"
        );
    }
}
