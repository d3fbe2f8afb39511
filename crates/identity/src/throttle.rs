//! Failed sign-in throttling, per user (and per source when the caller knows it), in the
//! spirit of Cognito's: after [`FREE_FAILURES`] consecutive failures every further attempt is
//! refused with "Password attempts exceeded" for a lockout that doubles with each failure,
//! from [`BASE_LOCKOUT_MS`] up to 15 minutes. A success clears the user's count.
//!
//! Counts live in memory: they reset when the server restarts and are not shared between
//! server processes.

use std::collections::HashMap;
use std::sync::Mutex;

use sluice_meta::now_ms;

pub(crate) const FREE_FAILURES: u32 = 5;
const BASE_LOCKOUT_MS: i64 = 5_000;
const MAX_LOCKOUT_MS: i64 = 15 * 60 * 1000;
/// Entries idle this long are forgotten.
const FORGET_MS: i64 = 60 * 60 * 1000;
const MAX_ENTRIES: usize = 100_000;

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    locked_until_ms: i64,
    last_ms: i64,
}

#[derive(Default)]
pub(crate) struct Throttle {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Throttle {
    /// Whether any of `keys` is locked out now.
    pub(crate) fn locked(&self, keys: &[String]) -> bool {
        let now = now_ms();
        let Ok(map) = self.entries.lock() else {
            return false;
        };
        keys.iter()
            .any(|k| map.get(k).is_some_and(|e| e.locked_until_ms > now))
    }

    pub(crate) fn failure(&self, keys: &[String]) {
        let now = now_ms();
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now - e.last_ms < FORGET_MS);
        }
        for k in keys {
            let e = map.entry(k.clone()).or_insert(Entry {
                failures: 0,
                locked_until_ms: 0,
                last_ms: now,
            });
            e.failures = e.failures.saturating_add(1);
            e.last_ms = now;
            if e.failures >= FREE_FAILURES {
                let doublings = (e.failures - FREE_FAILURES).min(20);
                let lockout = (BASE_LOCKOUT_MS << doublings).min(MAX_LOCKOUT_MS);
                e.locked_until_ms = now + lockout;
            }
        }
    }

    pub(crate) fn success(&self, key: &str) {
        if let Ok(mut map) = self.entries.lock() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_free_failures_and_clears_on_success() {
        let t = Throttle::default();
        let k = vec!["p\0u".to_string()];
        for _ in 0..FREE_FAILURES - 1 {
            t.failure(&k);
            assert!(!t.locked(&k));
        }
        t.failure(&k);
        assert!(t.locked(&k));
        assert!(!t.locked(&["other".to_string()]));
        t.success(&k[0]);
        assert!(!t.locked(&k));
    }
}
