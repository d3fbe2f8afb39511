//! A verifier that follows its pool: app clients created (or deleted) while the server runs
//! are picked up without a restart.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::{Identity, IdentityError, TokenError, VerifiedClaims, Verifier};

/// How often at most the pool's clients and keys are reloaded after a refusal that a reload
/// could change (unknown audience or key id). Bounds the cost of a stream of bad tokens.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Verifies tokens of one pool against its current app clients.
///
/// Invariant: a token is accepted only by a [`Verifier`] built from the pool's clients and
/// keys as stored; a reload never widens what one verification accepts beyond that.
pub struct PoolVerifier {
    identity: Identity,
    pool_id: String,
    leeway_secs: i64,
    /// Built at the first verification: the pool's first signing key may still be being
    /// generated when the server starts, and no token can name it before it exists.
    current: RwLock<Option<(Verifier, Instant)>>,
}

impl PoolVerifier {
    pub fn new(
        identity: Identity,
        pool_id: &str,
        leeway_secs: i64,
    ) -> Result<PoolVerifier, IdentityError> {
        if !identity.pool_exists(pool_id)? {
            return Err(IdentityError::ResourceNotFound(format!(
                "User pool {pool_id} does not exist."
            )));
        }
        Ok(PoolVerifier {
            identity,
            pool_id: pool_id.to_owned(),
            leeway_secs,
            current: RwLock::new(None),
        })
    }

    pub fn verify(&self, token: &str, now: i64) -> Result<VerifiedClaims, TokenError> {
        let built = match self.current.read() {
            Ok(g) => g
                .as_ref()
                .map(|(v, at)| (v.verify(token, now), at.elapsed() >= RELOAD_EVERY)),
            Err(_) => return Err(TokenError::Malformed),
        };
        let Some((first, stale)) = built else {
            return match self.identity.verifier(&self.pool_id, self.leeway_secs) {
                Ok(v) => {
                    let result = v.verify(token, now);
                    if let Ok(mut g) = self.current.write() {
                        *g = Some((v, Instant::now()));
                    }
                    result
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load the pool's clients and keys");
                    Err(TokenError::UnknownKid)
                }
            };
        };
        match first {
            Err(TokenError::Audience | TokenError::UnknownKid) if stale => {
                match self.identity.verifier(&self.pool_id, self.leeway_secs) {
                    Ok(fresh) => {
                        let result = fresh.verify(token, now);
                        if let Ok(mut g) = self.current.write() {
                            *g = Some((fresh, Instant::now()));
                        }
                        result
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reload the pool's clients");
                        first
                    }
                }
            }
            other => other,
        }
    }
}
