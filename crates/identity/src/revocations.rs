//! Revoked sign-ins, as the upload API's authorizer needs them: within seconds of a user
//! being disabled, deleted or signed out everywhere (GlobalSignOut, AdminUserGlobalSignOut),
//! or of a refresh token being revoked (RevokeToken), the ID and access tokens issued before
//! are refused — on every server process sharing the metadata engine.
//!
//! API Gateway's JWT authorizer does not do this (a Cognito token stays valid at the API
//! until it expires); sluice does, as a documented improvement.
//!
//! The `revocations` table holds one row per revoked user (`kind = 'user'`, `id` = its `sub`:
//! tokens issued at or before `at_ms` are refused — a disabled or deleted user) and per
//! revoked sign-in (`kind = 'origin'`, `id` = the `origin_jti` every token of that sign-in
//! carries — RevokeToken, and GlobalSignOut for each of the user's sign-ins, so that a
//! sign-in right after a sign-out works even within the same second). Writers upsert a
//! row in the transaction that disables, deletes or signs out. [`Revocations`] keeps the
//! rows in memory and reads the ones changed since its last look every [`POLL`]; a check is
//! a hash lookup, nothing on the request path touches the database.
//!
//! Rows are kept [`KEEP_MS`] (longer than any ID or access token lives: Cognito's limit is
//! one day) and then forgotten.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sluice_meta::{Meta, Tx, now_ms, params};

use crate::IdentityError;
use crate::tokens::VerifiedClaims;

/// How often the table is read for changes.
pub const POLL: Duration = Duration::from_secs(1);
/// How long a revocation is remembered.
pub const KEEP_MS: i64 = 8 * 24 * 60 * 60 * 1000;
/// Rows changed this long before the last one seen are read again: writers' clocks and
/// commit order may differ by this much without a revocation being missed.
const OVERLAP_MS: i64 = 10_000;

pub(crate) const MIGRATION: &str = "
CREATE TABLE revocations (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX revocations_updated ON revocations (updated_ms);
";

/// Records, inside the caller's transaction, that tokens of `sub` issued until now are
/// revoked.
pub(crate) fn revoke_user_in(c: &Tx<'_>, sub: &str) -> Result<(), IdentityError> {
    upsert(c, "user", sub)
}

/// Records, inside the caller's transaction, that the tokens of the sign-in `origin_jti`
/// are revoked.
pub(crate) fn revoke_origin_in(c: &Tx<'_>, origin_jti: &str) -> Result<(), IdentityError> {
    upsert(c, "origin", origin_jti)
}

fn upsert(c: &Tx<'_>, kind: &str, id: &str) -> Result<(), IdentityError> {
    let now = now_ms();
    c.execute(
        "INSERT INTO revocations (kind, id, at_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (kind, id) DO UPDATE SET at_ms = excluded.at_ms,
             updated_ms = excluded.updated_ms",
        params![kind, id, now],
    )?;
    Ok(())
}

#[derive(Default)]
struct Known {
    /// `sub` → tokens issued at or before this (ms) are refused.
    users: HashMap<String, i64>,
    /// Revoked sign-ins.
    origins: HashMap<String, i64>,
    /// The newest `updated_ms` read.
    seen_ms: i64,
}

/// The revocations in memory, refreshed by [`Revocations::refresh`].
pub struct Revocations {
    db: Meta,
    known: RwLock<Known>,
}

impl Revocations {
    pub fn new(db: Meta) -> Arc<Revocations> {
        Arc::new(Revocations {
            db,
            known: RwLock::new(Known::default()),
        })
    }

    /// Whether a verified token's sign-in or user was revoked after it was issued.
    pub fn revoked(&self, claims: &VerifiedClaims) -> bool {
        let Ok(known) = self.known.read() else {
            return false;
        };
        if let Some(origin) = &claims.origin_jti
            && known.origins.contains_key(origin)
        {
            return true;
        }
        // `iat` has whole seconds: a token issued in the second of the revocation is refused
        // too (signing in again a second later works).
        known
            .users
            .get(&claims.sub)
            .is_some_and(|at_ms| claims.issued_at * 1000 <= *at_ms)
    }

    /// Reads the rows changed since the last look (and forgets old ones).
    pub async fn refresh(&self) -> Result<(), IdentityError> {
        let since = self.known.read().map(|k| k.seen_ms).unwrap_or(0) - OVERLAP_MS;
        let rows: Vec<(String, String, i64, i64)> = self
            .db
            .read(move |c| {
                c.query_vec(
                    "SELECT kind, id, at_ms, updated_ms FROM revocations
                     WHERE updated_ms >= ?1 ORDER BY updated_ms",
                    params![since],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(IdentityError::from)
            })
            .await?;
        let forget_before = now_ms() - KEEP_MS;
        if let Ok(mut known) = self.known.write() {
            for (kind, id, at, updated) in rows {
                known.seen_ms = known.seen_ms.max(updated);
                let map = if kind == "user" {
                    &mut known.users
                } else {
                    &mut known.origins
                };
                map.insert(id, at);
            }
            known.users.retain(|_, at| *at >= forget_before);
            known.origins.retain(|_, at| *at >= forget_before);
        }
        Ok(())
    }

    /// Deletes rows older than [`KEEP_MS`], and the expired rows of sign-ins in progress
    /// (challenge sessions, authorization codes, hosted-UI login sessions), which nothing
    /// else would delete when their users never come back.
    pub async fn sweep(&self) -> Result<(), IdentityError> {
        let now = now_ms();
        let before = now - KEEP_MS;
        self.db
            .write(move |c| {
                c.execute("DELETE FROM revocations WHERE at_ms < ?1", params![before])?;
                for t in [
                    "auth_sessions",
                    "oauth_codes",
                    "login_sessions",
                    "federation_states",
                ] {
                    c.execute(
                        &format!("DELETE FROM {t} WHERE expires_ms < ?1"),
                        params![now],
                    )?;
                }
                Ok::<_, IdentityError>(())
            })
            .await
    }

    /// Refreshes every [`POLL`] (and sweeps hourly) until the runtime stops. The first
    /// refresh happens before this returns, so that a server never starts with an empty
    /// list.
    pub async fn watch(self: &Arc<Self>) -> Result<(), IdentityError> {
        self.refresh().await?;
        let this = self.clone();
        tokio::spawn(async move {
            let mut polls = 0u64;
            loop {
                tokio::time::sleep(POLL).await;
                if let Err(e) = this.refresh().await {
                    tracing::warn!(error = %e, "cannot read token revocations; retrying");
                }
                polls += 1;
                if polls.is_multiple_of(3600)
                    && let Err(e) = this.sweep().await
                {
                    tracing::warn!(error = %e, "cannot forget old token revocations");
                }
            }
        });
        Ok(())
    }
}
