//! Request rates for the operations anyone may call: sign-up and sign-in, per user pool
//! (here) and per client address (at the edge, with the same [`Buckets`]).
//!
//! Token buckets: a key may make `burst` requests at once and `per_second` on average; a
//! request beyond that is refused with [`IdentityError::TooManyRequests`] (Cognito's
//! `TooManyRequestsException`, which the AWS SDKs retry with backoff). The per-pool defaults
//! are Cognito's default quotas (UserCreation 50 requests/s, UserAuthentication 120/s).
//!
//! Buckets live in memory: they reset when the server restarts and are not shared between
//! server processes, so N gateways admit up to N times the rate.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

use crate::IdentityError;

/// Buckets idle this long are forgotten when the table is full.
const FORGET_SECS: f64 = 600.0;
/// Most keys remembered; beyond it idle buckets are dropped first, then all.
const MAX_KEYS: usize = 100_000;

/// A rate limit: `per_second` on average, `burst` at once. `per_second <= 0`: no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// `per_second` with a burst of two seconds' worth (at least one request).
    pub fn per_second(per_second: f64) -> Rate {
        Rate {
            per_second,
            burst: (per_second * 2.0).max(1.0),
        }
    }

    pub fn unlimited() -> Rate {
        Rate {
            per_second: 0.0,
            burst: 0.0,
        }
    }

    fn limited(&self) -> bool {
        self.per_second > 0.0
    }
}

/// The rates of the public operations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// SignUp, ResendConfirmationCode, ForgotPassword, ConfirmForgotPassword per pool.
    pub sign_up_per_pool: Rate,
    /// InitiateAuth / AdminInitiateAuth (password and SRP flows) per pool.
    pub sign_in_per_pool: Rate,
    /// The sign-up operations per client address (unsigned requests, at the edge).
    pub sign_up_per_address: Rate,
    /// The sign-in operations per client address (unsigned requests, at the edge).
    pub sign_in_per_address: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            sign_up_per_pool: Rate::per_second(50.0),
            sign_in_per_pool: Rate::per_second(120.0),
            sign_up_per_address: Rate::per_second(10.0),
            sign_in_per_address: Rate::per_second(40.0),
        }
    }
}

/// Which operations a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    SignUp,
    SignIn,
}

/// Token buckets by key.
pub struct Buckets<K> {
    started: Instant,
    map: Mutex<HashMap<K, (f64, f64)>>,
}

impl<K> Default for Buckets<K> {
    fn default() -> Self {
        Buckets {
            started: Instant::now(),
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Takes one token from `key`'s bucket; false when it is empty.
    pub fn admit(&self, key: &K, rate: Rate) -> bool {
        self.admit_at(key, rate, self.started.elapsed().as_secs_f64())
    }

    fn admit_at(&self, key: &K, rate: Rate, now: f64) -> bool {
        if !rate.limited() {
            return true;
        }
        let Ok(mut map) = self.map.lock() else {
            return true;
        };
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            map.retain(|_, (_, last)| now - *last < FORGET_SECS);
            if map.len() >= MAX_KEYS {
                map.clear();
            }
        }
        let (tokens, last) = map.entry(key.clone()).or_insert((rate.burst, now));
        *tokens = (*tokens + (now - *last) * rate.per_second).min(rate.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The error a refused request gets.
pub fn too_many(category: Category) -> IdentityError {
    let what = match category {
        Category::SignUp => "sign-up",
        Category::SignIn => "sign-in",
    };
    IdentityError::TooManyRequests(format!("Rate exceeded for {what} requests, retry later"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let b = Buckets::default();
        let r = Rate::per_second(2.0);
        for _ in 0..4 {
            assert!(b.admit_at(&"a", r, 10.0));
        }
        assert!(!b.admit_at(&"a", r, 10.0));
        assert!(b.admit_at(&"b", r, 10.0), "keys are independent");
        assert!(!b.admit_at(&"a", r, 10.2));
        assert!(b.admit_at(&"a", r, 10.6));
        assert!(!b.admit_at(&"a", r, 10.6));
        // Never more than the burst, however long it was idle.
        for _ in 0..4 {
            assert!(b.admit_at(&"a", r, 1000.0));
        }
        assert!(!b.admit_at(&"a", r, 1000.0));
    }

    #[test]
    fn unlimited_admits_everything() {
        let b = Buckets::default();
        for _ in 0..1000 {
            assert!(b.admit_at(&1u8, Rate::unlimited(), 0.0));
        }
        assert!(b.map.lock().map(|m| m.is_empty()).unwrap_or(false));
    }
}
