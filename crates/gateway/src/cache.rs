//! Verified tokens, remembered until they expire: verifying an RS256 signature costs tens of
//! microseconds, a lookup by the token's SHA-256 well under one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use sluice_identity::{TokenError, VerifiedClaims};

use crate::Authorizer;

/// Entries kept at most; the cache is emptied when full (tokens are re-verified, never
/// wrongly accepted).
const MAX_ENTRIES: usize = 10_000;

/// An [`Authorizer`] that remembers successful verifications.
///
/// Invariant: a cached token is accepted only while `now <= exp + leeway`, exactly as the
/// inner authorizer would; failures are never cached.
pub struct CachingAuthorizer {
    inner: Arc<dyn Authorizer>,
    leeway_secs: i64,
    now: fn() -> i64,
    cache: Mutex<HashMap<[u8; 32], VerifiedClaims>>,
}

impl CachingAuthorizer {
    pub fn new(inner: Arc<dyn Authorizer>, leeway_secs: i64) -> Self {
        Self::with_clock(inner, leeway_secs, crate::now_secs)
    }

    fn with_clock(inner: Arc<dyn Authorizer>, leeway_secs: i64, now: fn() -> i64) -> Self {
        CachingAuthorizer {
            inner,
            leeway_secs,
            now,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl Authorizer for CachingAuthorizer {
    fn authorize(&self, token: &str) -> Result<VerifiedClaims, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = (self.now)();
        if let Ok(cache) = self.cache.lock()
            && let Some(c) = cache.get(&key)
            // Saturating: a signed `exp` near `i64::MAX` (a token that never expires) must
            // not overflow, as in the verifier.
            && now <= c.exp.saturating_add(self.leeway_secs)
        {
            return Ok(c.clone());
        }
        let claims = self.inner.authorize(token)?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(key, claims.clone());
        }
        Ok(claims)
    }
}

/// An [`Authorizer`] that also refuses tokens revoked after they were issued (a disabled,
/// deleted or globally signed-out user; a revoked refresh token's sign-in). Placed outside
/// the cache: a cached token is checked again on every request, with a hash lookup.
pub struct RevokingAuthorizer {
    inner: Arc<dyn Authorizer>,
    revocations: Arc<sluice_identity::revocations::Revocations>,
}

impl RevokingAuthorizer {
    pub fn new(
        inner: Arc<dyn Authorizer>,
        revocations: Arc<sluice_identity::revocations::Revocations>,
    ) -> Self {
        RevokingAuthorizer { inner, revocations }
    }
}

impl Authorizer for RevokingAuthorizer {
    fn authorize(&self, token: &str) -> Result<VerifiedClaims, TokenError> {
        let claims = self.inner.authorize(token)?;
        if self.revocations.revoked(&claims) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

    static NOW: AtomicI64 = AtomicI64::new(1000);
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    struct Counting;
    impl Authorizer for Counting {
        fn authorize(&self, token: &str) -> Result<VerifiedClaims, TokenError> {
            CALLS.fetch_add(1, Ordering::SeqCst);
            if token == "bad" {
                return Err(TokenError::Signature);
            }
            if NOW.load(Ordering::SeqCst) > 2000 + 60 {
                return Err(TokenError::Expired);
            }
            Ok(VerifiedClaims {
                sub: "s".into(),
                username: None,
                email: None,
                token_use: "id".into(),
                client_id: "c".into(),
                scopes: vec![],
                issued_at: 0,
                origin_jti: None,
                groups: vec![],
                issuer: "i".into(),
                exp: 2000,
            })
        }
    }

    /// Found by fuzzing (`jwt`, a token signed with `"exp": 9223372036854775807`): the
    /// verifier accepts it (its own check saturates), and the cache's expiry check of the
    /// second request overflowed (a panic with overflow checks; otherwise a wrapped, negative
    /// expiry, and the token verified again on every request).
    #[test]
    fn a_token_that_never_expires_is_served_from_the_cache() {
        static VERIFIED: AtomicUsize = AtomicUsize::new(0);
        struct NeverExpires;
        impl Authorizer for NeverExpires {
            fn authorize(&self, _: &str) -> Result<VerifiedClaims, TokenError> {
                VERIFIED.fetch_add(1, Ordering::SeqCst);
                Ok(VerifiedClaims {
                    sub: "s".into(),
                    username: None,
                    email: None,
                    token_use: "id".into(),
                    client_id: "c".into(),
                    scopes: vec![],
                    issued_at: 0,
                    origin_jti: None,
                    groups: vec![],
                    issuer: "i".into(),
                    exp: i64::MAX,
                })
            }
        }
        let a = CachingAuthorizer::with_clock(Arc::new(NeverExpires), 30, || 1_800_000_000);
        for _ in 0..2 {
            assert_eq!(a.authorize("forever").map(|c| c.exp), Ok(i64::MAX));
        }
        assert_eq!(
            VERIFIED.load(Ordering::SeqCst),
            1,
            "the second from the cache"
        );
    }

    #[test]
    fn caches_until_expiry_and_never_caches_failures() {
        let a =
            CachingAuthorizer::with_clock(Arc::new(Counting), 60, || NOW.load(Ordering::SeqCst));
        assert!(a.authorize("good").is_ok());
        assert!(a.authorize("good").is_ok());
        assert_eq!(
            CALLS.load(Ordering::SeqCst),
            1,
            "second call served from the cache"
        );
        assert!(a.authorize("bad").is_err());
        assert!(a.authorize("bad").is_err());
        assert_eq!(
            CALLS.load(Ordering::SeqCst),
            3,
            "failures are verified every time"
        );
        NOW.store(2061, Ordering::SeqCst);
        assert_eq!(a.authorize("good"), Err(TokenError::Expired));
    }
}
