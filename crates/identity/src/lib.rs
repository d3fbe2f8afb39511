//! User pools, app clients, users, passwords, signing keys and tokens — Cognito user pools'
//! model, without any wire format (the `compat` crate speaks Cognito's protocol; the gateway
//! only needs a [`Verifier`]).
//!
//! Users sign in by email. As in a Cognito pool whose sign-in option is email, a user's
//! `cognito:username` is its `sub` (a UUID), and email addresses are case-insensitive.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rand::Rng;
use rand::distributions::Alphanumeric;
use sha2::{Digest, Sha256};
use sluice_db::rusqlite::{Connection, OptionalExtension, params};
use sluice_db::{Db, Migration, now_ms};

pub mod access_keys;
pub mod keys;
pub mod password;
pub mod tokens;

pub use keys::{Jwk, Jwks, SigningKey};
pub use tokens::{TokenError, VerifiedClaims, Verifier};

/// How long the session of an auth challenge stays valid, as Cognito (3 minutes).
const SESSION_TTL_MS: i64 = 3 * 60 * 1000;

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "identity-0001",
    sql: "
CREATE TABLE pools (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    is_default INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE TABLE clients (
    id TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL REFERENCES pools(id),
    name TEXT NOT NULL,
    id_validity_secs INTEGER NOT NULL,
    access_validity_secs INTEGER NOT NULL,
    refresh_validity_secs INTEGER NOT NULL,
    prevent_user_existence_errors INTEGER NOT NULL DEFAULT 1,
    created_ms INTEGER NOT NULL
);
CREATE TABLE users (
    pool_id TEXT NOT NULL REFERENCES pools(id),
    sub TEXT NOT NULL,
    email TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (pool_id, sub),
    UNIQUE (pool_id, email)
);
CREATE TABLE refresh_tokens (
    hash TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    sub TEXT NOT NULL,
    origin_jti TEXT NOT NULL,
    auth_time INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE auth_sessions (
    hash TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    sub TEXT NOT NULL,
    challenge TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
",
}];

/// Failures, named after the Cognito exceptions they become on the wire.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    NotAuthorized(String),
    #[error("{0}")]
    UserNotFound(String),
    #[error("{0}")]
    UsernameExists(String),
    #[error("{0}")]
    InvalidPassword(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("identity backend failure: {0}")]
    Backend(String),
}

impl From<sluice_db::DbError> for IdentityError {
    fn from(e: sluice_db::DbError) -> Self {
        IdentityError::Backend(e.to_string())
    }
}

impl From<sluice_db::rusqlite::Error> for IdentityError {
    fn from(e: sluice_db::rusqlite::Error) -> Self {
        IdentityError::Backend(e.to_string())
    }
}

/// Token lifetimes of an app client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub id_secs: i64,
    pub access_secs: i64,
    pub refresh_secs: i64,
}

impl Default for Lifetimes {
    /// Cognito's defaults: 1 hour id and access tokens, 30 day refresh tokens.
    fn default() -> Self {
        Lifetimes {
            id_secs: 3600,
            access_secs: 3600,
            refresh_secs: 30 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub pool_id: String,
    pub client_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub sub: String,
    pub email: String,
    /// `CONFIRMED` or `FORCE_CHANGE_PASSWORD`.
    pub status: String,
    pub enabled: bool,
}

#[derive(Debug, Clone)]
pub struct AuthTokens {
    pub id_token: String,
    pub access_token: String,
    /// Absent on REFRESH_TOKEN_AUTH, as in Cognito.
    pub refresh_token: Option<String>,
    pub expires_in: i64,
}

#[derive(Debug, Clone)]
pub enum AuthOutcome {
    Tokens(AuthTokens),
    /// The user holds a temporary password and must choose a new one.
    NewPasswordRequired {
        session: String,
        username: String,
        email: String,
    },
}

struct ClientRow {
    pool_id: String,
    lifetimes: Lifetimes,
    prevent_user_existence_errors: bool,
}

struct UserRow {
    sub: String,
    email: String,
    hash: String,
    status: String,
    enabled: bool,
}

/// The identity service over the embedded database.
#[derive(Clone)]
pub struct Identity {
    db: Db,
    key_dir: PathBuf,
    /// `<edge-url>`; a pool's issuer is `<base>/<pool id>`.
    issuer_base: String,
    keys: Arc<RwLock<HashMap<String, Arc<SigningKey>>>>,
}

impl Identity {
    pub fn new(db: Db, key_dir: &Path, issuer_base: &str) -> Identity {
        Identity {
            db,
            key_dir: key_dir.to_owned(),
            issuer_base: issuer_base.trim_end_matches('/').to_owned(),
            keys: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    pub fn issuer(&self, pool_id: &str) -> String {
        format!("{}/{pool_id}", self.issuer_base)
    }

    /// Creates the default pool, its app client and its signing key unless they exist, and
    /// sets the client's token lifetimes. Safe to run from several processes at once.
    pub fn bootstrap(&self, region: &str, lifetimes: Lifetimes) -> Result<PoolInfo, IdentityError> {
        let pool_id = format!("{region}_{}", random_alnum(9));
        let client_id = random_lower_alnum(26);
        let info = self.db.write_blocking(move |c| {
            let existing: Option<String> = c
                .query_row("SELECT id FROM pools WHERE is_default = 1", [], |r| r.get(0))
                .optional()?;
            let now = now_ms();
            let pool = match existing {
                Some(p) => p,
                None => {
                    c.execute(
                        "INSERT INTO pools (id, name, is_default, created_ms) VALUES (?1, 'sluice', 1, ?2)",
                        params![pool_id, now],
                    )?;
                    c.execute(
                        "INSERT INTO clients (id, pool_id, name, id_validity_secs,
                             access_validity_secs, refresh_validity_secs, created_ms)
                         VALUES (?1, ?2, 'sluice-app', ?3, ?4, ?5, ?6)",
                        params![
                            client_id,
                            pool_id,
                            lifetimes.id_secs,
                            lifetimes.access_secs,
                            lifetimes.refresh_secs,
                            now
                        ],
                    )?;
                    pool_id.clone()
                }
            };
            let client: String = c.query_row(
                "SELECT id FROM clients WHERE pool_id = ?1 ORDER BY created_ms LIMIT 1",
                [&pool],
                |r| r.get(0),
            )?;
            c.execute(
                "UPDATE clients SET id_validity_secs = ?2, access_validity_secs = ?3,
                     refresh_validity_secs = ?4 WHERE id = ?1",
                params![
                    client,
                    lifetimes.id_secs,
                    lifetimes.access_secs,
                    lifetimes.refresh_secs
                ],
            )?;
            Ok::<_, IdentityError>(PoolInfo {
                pool_id: pool,
                client_id: client,
            })
        })?;
        self.signing_key(&info.pool_id)?;
        Ok(info)
    }

    /// The default pool and its first client, if bootstrapped.
    pub fn default_pool(&self) -> Result<Option<PoolInfo>, IdentityError> {
        self.db.read_blocking(|c| {
            let pool: Option<String> = c
                .query_row("SELECT id FROM pools WHERE is_default = 1", [], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(pool) = pool else { return Ok(None) };
            let client: String = c.query_row(
                "SELECT id FROM clients WHERE pool_id = ?1 ORDER BY created_ms LIMIT 1",
                [&pool],
                |r| r.get(0),
            )?;
            Ok(Some(PoolInfo {
                pool_id: pool,
                client_id: client,
            }))
        })
    }

    pub fn pool_exists(&self, pool_id: &str) -> Result<bool, IdentityError> {
        let p = pool_id.to_owned();
        self.db.read_blocking(move |c| {
            Ok(c.query_row(
                "SELECT EXISTS(SELECT 1 FROM pools WHERE id = ?1)",
                [&p],
                |r| r.get(0),
            )?)
        })
    }

    /// App client ids of a pool: the audiences its tokens are issued for.
    pub fn client_ids(&self, pool_id: &str) -> Result<Vec<String>, IdentityError> {
        let p = pool_id.to_owned();
        self.db.read_blocking(move |c| {
            let mut st = c.prepare("SELECT id FROM clients WHERE pool_id = ?1")?;
            let ids = st
                .query_map([&p], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ids)
        })
    }

    /// The signing key of a pool, loaded (or generated) once.
    pub fn signing_key(&self, pool_id: &str) -> Result<Arc<SigningKey>, IdentityError> {
        if let Ok(keys) = self.keys.read()
            && let Some(k) = keys.get(pool_id)
        {
            return Ok(k.clone());
        }
        if !valid_pool_id(pool_id) {
            return Err(IdentityError::ResourceNotFound(format!(
                "User pool {pool_id} does not exist."
            )));
        }
        let key = Arc::new(SigningKey::load_or_generate(
            &self.key_dir.join(format!("{pool_id}.pem")),
        )?);
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(pool_id.to_owned(), key.clone());
        }
        Ok(key)
    }

    pub fn jwks(&self, pool_id: &str) -> Result<Jwks, IdentityError> {
        Ok(Jwks {
            keys: vec![self.signing_key(pool_id)?.jwk()],
        })
    }

    /// A verifier for tokens of `pool_id` issued to any of its app clients.
    pub fn verifier(&self, pool_id: &str, leeway_secs: i64) -> Result<Verifier, IdentityError> {
        Verifier::new(
            &self.issuer(pool_id),
            &self.jwks(pool_id)?,
            self.client_ids(pool_id)?,
            leeway_secs,
        )
        .map_err(|e| IdentityError::Backend(e.to_string()))
    }

    /// Creates a user. With `temporary`, the user must choose a new password at first
    /// sign-in (FORCE_CHANGE_PASSWORD); otherwise it is CONFIRMED.
    pub fn create_user(
        &self,
        pool_id: &str,
        email: &str,
        password: &str,
        temporary: bool,
    ) -> Result<User, IdentityError> {
        let email = normalize_email(email)?;
        password::check_policy(password)?;
        let hash = password::hash(password)?;
        let sub = uuid::Uuid::new_v4().to_string();
        let status = if temporary {
            "FORCE_CHANGE_PASSWORD"
        } else {
            "CONFIRMED"
        };
        let pool = pool_id.to_owned();
        let user = User {
            sub: sub.clone(),
            email: email.clone(),
            status: status.to_owned(),
            enabled: true,
        };
        self.db.write_blocking(move |c| {
            let exists: bool = c.query_row(
                "SELECT EXISTS(SELECT 1 FROM pools WHERE id = ?1)",
                [&pool],
                |r| r.get(0),
            )?;
            if !exists {
                return Err(IdentityError::ResourceNotFound(format!(
                    "User pool {pool} does not exist."
                )));
            }
            let now = now_ms();
            let inserted = c.execute(
                "INSERT OR IGNORE INTO users (pool_id, sub, email, password_hash, status,
                     enabled, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?6)",
                params![pool, sub, email, hash, status, now],
            )?;
            if inserted == 0 {
                return Err(IdentityError::UsernameExists(
                    "An account with the given email already exists.".into(),
                ));
            }
            Ok(())
        })?;
        Ok(user)
    }

    /// USER_PASSWORD_AUTH.
    pub async fn initiate_user_password(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<AuthOutcome, IdentityError> {
        let client = self.client(client_id).await?;
        let email = normalize_email(username).ok();
        let user = match email {
            Some(e) => self.user_by_email(&client.pool_id, &e).await?,
            None => None,
        };
        let pw = password.to_owned();
        let hash = user
            .as_ref()
            .map(|u| u.hash.clone())
            .unwrap_or_else(|| password::decoy_hash().to_owned());
        let ok = tokio::task::spawn_blocking(move || password::verify(&pw, &hash))
            .await
            .map_err(|e| IdentityError::Backend(e.to_string()))?;
        let Some(user) = user else {
            return Err(if client.prevent_user_existence_errors {
                incorrect()
            } else {
                IdentityError::UserNotFound("User does not exist.".into())
            });
        };
        if !ok {
            return Err(incorrect());
        }
        if !user.enabled {
            return Err(IdentityError::NotAuthorized("User is disabled.".into()));
        }
        if user.status == "FORCE_CHANGE_PASSWORD" {
            let session = random_token();
            let (h, pool, cid, sub) = (
                token_hash(&session),
                client.pool_id.clone(),
                client_id.to_owned(),
                user.sub.clone(),
            );
            self.db
                .write(move |c| {
                    c.execute(
                        "INSERT INTO auth_sessions (hash, pool_id, client_id, sub, challenge, expires_ms)
                         VALUES (?1, ?2, ?3, ?4, 'NEW_PASSWORD_REQUIRED', ?5)",
                        params![h, pool, cid, sub, now_ms() + SESSION_TTL_MS],
                    )?;
                    Ok::<_, IdentityError>(())
                })
                .await?;
            return Ok(AuthOutcome::NewPasswordRequired {
                session,
                username: user.sub,
                email: user.email,
            });
        }
        let tokens = self.issue(client_id, &client, &user, true, None).await?;
        Ok(AuthOutcome::Tokens(tokens))
    }

    /// RespondToAuthChallenge for NEW_PASSWORD_REQUIRED.
    pub async fn respond_new_password(
        &self,
        client_id: &str,
        session: &str,
        username: &str,
        new_password: &str,
    ) -> Result<AuthTokens, IdentityError> {
        let client = self.client(client_id).await?;
        password::check_policy(new_password)?;
        let pw = new_password.to_owned();
        let new_hash = tokio::task::spawn_blocking(move || password::hash(&pw))
            .await
            .map_err(|e| IdentityError::Backend(e.to_string()))??;
        let (h, cid, uname) = (
            token_hash(session),
            client_id.to_owned(),
            username.to_lowercase(),
        );
        let sub: String = self
            .db
            .write(move |c| {
                let row: Option<(String, String, i64)> = c
                    .query_row(
                        "DELETE FROM auth_sessions WHERE hash = ?1
                         RETURNING client_id, sub, expires_ms",
                        [&h],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                let invalid =
                    || IdentityError::NotAuthorized("Invalid session for the user.".into());
                let (s_client, sub, expires) = row.ok_or_else(invalid)?;
                if s_client != cid || expires < now_ms() {
                    return Err(invalid());
                }
                let email: String =
                    c.query_row("SELECT email FROM users WHERE sub = ?1", [&sub], |r| {
                        r.get(0)
                    })?;
                if uname != sub && uname != email {
                    return Err(invalid());
                }
                c.execute(
                    "UPDATE users SET password_hash = ?2, status = 'CONFIRMED', updated_ms = ?3
                     WHERE sub = ?1",
                    params![sub, new_hash, now_ms()],
                )?;
                Ok(sub)
            })
            .await?;
        let user = self
            .user_by_sub(&client.pool_id, &sub)
            .await?
            .ok_or_else(|| IdentityError::UserNotFound("User does not exist.".into()))?;
        self.issue(client_id, &client, &user, true, None).await
    }

    /// REFRESH_TOKEN_AUTH: new id and access tokens for a valid refresh token.
    pub async fn initiate_refresh(
        &self,
        client_id: &str,
        refresh_token: &str,
    ) -> Result<AuthTokens, IdentityError> {
        let client = self.client(client_id).await?;
        let h = token_hash(refresh_token);
        let row: Option<(String, String, String, i64, i64, bool)> = self
            .db
            .read(move |c| {
                Ok::<_, IdentityError>(
                    c.query_row(
                        "SELECT client_id, sub, origin_jti, auth_time, expires_ms, revoked
                         FROM refresh_tokens WHERE hash = ?1",
                        [&h],
                        |r| {
                            Ok((
                                r.get(0)?,
                                r.get(1)?,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                            ))
                        },
                    )
                    .optional()?,
                )
            })
            .await?;
        let invalid = || IdentityError::NotAuthorized("Invalid Refresh Token".into());
        let (rt_client, sub, origin_jti, auth_time, expires, revoked) = row.ok_or_else(invalid)?;
        if rt_client != client_id || revoked || expires < now_ms() {
            return Err(invalid());
        }
        let user = self
            .user_by_sub(&client.pool_id, &sub)
            .await?
            .ok_or_else(invalid)?;
        if !user.enabled {
            return Err(IdentityError::NotAuthorized("User is disabled.".into()));
        }
        self.issue(
            client_id,
            &client,
            &user,
            false,
            Some((origin_jti, auth_time)),
        )
        .await
    }

    async fn issue(
        &self,
        client_id: &str,
        client: &ClientRow,
        user: &UserRow,
        with_refresh: bool,
        origin: Option<(String, i64)>,
    ) -> Result<AuthTokens, IdentityError> {
        let key = self.signing_key(&client.pool_id)?;
        let now = now_ms() / 1000;
        let (origin_jti, auth_time) =
            origin.unwrap_or_else(|| (uuid::Uuid::new_v4().to_string(), now));
        let issuer = self.issuer(&client.pool_id);
        let (id_token, access_token) = tokens::issue_pair(
            &key,
            &tokens::Subject {
                sub: &user.sub,
                username: &user.sub,
                email: &user.email,
                client_id,
                issuer: &issuer,
                auth_time,
                origin_jti: &origin_jti,
            },
            now,
            client.lifetimes.id_secs,
            client.lifetimes.access_secs,
        )
        .map_err(|e| IdentityError::Backend(format!("cannot sign token: {e}")))?;
        let refresh_token = if with_refresh {
            let rt = random_token();
            let (h, pool, cid, sub, oj) = (
                token_hash(&rt),
                client.pool_id.clone(),
                client_id.to_owned(),
                user.sub.clone(),
                origin_jti.clone(),
            );
            let expires = now_ms() + client.lifetimes.refresh_secs * 1000;
            self.db
                .write(move |c| {
                    c.execute(
                        "INSERT INTO refresh_tokens (hash, pool_id, client_id, sub, origin_jti,
                             auth_time, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![h, pool, cid, sub, oj, auth_time, expires],
                    )?;
                    Ok::<_, IdentityError>(())
                })
                .await?;
            Some(rt)
        } else {
            None
        };
        Ok(AuthTokens {
            id_token,
            access_token,
            refresh_token,
            expires_in: client.lifetimes.access_secs,
        })
    }

    async fn client(&self, client_id: &str) -> Result<ClientRow, IdentityError> {
        let id = client_id.to_owned();
        let row = self
            .db
            .read(move |c| {
                Ok::<_, IdentityError>(
                    c.query_row(
                        "SELECT pool_id, id_validity_secs, access_validity_secs,
                                refresh_validity_secs, prevent_user_existence_errors
                         FROM clients WHERE id = ?1",
                        [&id],
                        |r| {
                            Ok(ClientRow {
                                pool_id: r.get(0)?,
                                lifetimes: Lifetimes {
                                    id_secs: r.get(1)?,
                                    access_secs: r.get(2)?,
                                    refresh_secs: r.get(3)?,
                                },
                                prevent_user_existence_errors: r.get(4)?,
                            })
                        },
                    )
                    .optional()?,
                )
            })
            .await?;
        row.ok_or_else(|| {
            IdentityError::ResourceNotFound(format!("User pool client {client_id} does not exist."))
        })
    }

    async fn user_by_email(
        &self,
        pool: &str,
        email: &str,
    ) -> Result<Option<UserRow>, IdentityError> {
        let (p, e) = (pool.to_owned(), email.to_owned());
        self.db.read(move |c| user_where(c, "email", &p, &e)).await
    }

    async fn user_by_sub(&self, pool: &str, sub: &str) -> Result<Option<UserRow>, IdentityError> {
        let (p, s) = (pool.to_owned(), sub.to_owned());
        self.db.read(move |c| user_where(c, "sub", &p, &s)).await
    }

    pub fn get_user(&self, pool: &str, email: &str) -> Result<Option<User>, IdentityError> {
        let (p, e) = (pool.to_owned(), normalize_email(email)?);
        let row = self
            .db
            .read_blocking(move |c| user_where(c, "email", &p, &e))?;
        Ok(row.map(|u| User {
            sub: u.sub,
            email: u.email,
            status: u.status,
            enabled: u.enabled,
        }))
    }
}

fn user_where(
    c: &Connection,
    column: &str,
    pool: &str,
    value: &str,
) -> Result<Option<UserRow>, IdentityError> {
    let sql = format!(
        "SELECT sub, email, password_hash, status, enabled FROM users
         WHERE pool_id = ?1 AND {column} = ?2"
    );
    Ok(c.prepare_cached(&sql)?
        .query_row(params![pool, value], |r| {
            Ok(UserRow {
                sub: r.get(0)?,
                email: r.get(1)?,
                hash: r.get(2)?,
                status: r.get(3)?,
                enabled: r.get(4)?,
            })
        })
        .optional()?)
}

fn incorrect() -> IdentityError {
    IdentityError::NotAuthorized("Incorrect username or password.".into())
}

/// Lower-cases and minimally checks an email address used as a username.
pub fn normalize_email(email: &str) -> Result<String, IdentityError> {
    let e = email.trim().to_lowercase();
    let valid = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        })
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(e)
    } else {
        Err(IdentityError::InvalidParameter(format!(
            "Invalid email address format: {email:?}"
        )))
    }
}

/// `<region>_<9 alphanumerics>`, as Cognito's pool ids.
pub fn valid_pool_id(id: &str) -> bool {
    match id.split_once('_') {
        Some((region, rest)) => {
            !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && rest.len() == 9
                && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        None => false,
    }
}

fn random_alnum(n: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

fn random_lower_alnum(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// An opaque secret (refresh token, challenge session): 48 random bytes, base64url.
fn random_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 48];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Secrets are stored only as their SHA-256.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> (Identity, PoolInfo) {
        let dir = std::env::temp_dir().join(format!("sluice-id-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let db = Db::open(&dir.join("i.db"), MIGRATIONS).expect("db");
        let id = Identity::new(db, &dir.join("keys"), "http://127.0.0.1:4566");
        let info = id
            .bootstrap("us-east-2", Lifetimes::default())
            .expect("bootstrap");
        (id, info)
    }

    #[test]
    fn ids_look_like_cognitos() {
        let (id, info) = identity();
        assert!(valid_pool_id(&info.pool_id), "{}", info.pool_id);
        assert!(info.pool_id.starts_with("us-east-2_"));
        assert_eq!(info.client_id.len(), 26);
        assert_eq!(
            id.bootstrap("us-east-2", Lifetimes::default())
                .expect("again"),
            info,
            "bootstrap is idempotent"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sign_in_refresh_and_new_password_challenge() {
        let (id, info) = identity();
        id.create_user(&info.pool_id, "Me@Example.com", "Passw0rd!", false)
            .expect("create");
        assert!(matches!(
            id.create_user(&info.pool_id, "me@example.com", "Passw0rd!", false),
            Err(IdentityError::UsernameExists(_))
        ));
        let AuthOutcome::Tokens(t) = id
            .initiate_user_password(&info.client_id, "me@example.com", "Passw0rd!")
            .await
            .expect("sign in")
        else {
            panic!("expected tokens");
        };
        let v = id.verifier(&info.pool_id, 60).expect("verifier");
        let claims = v.verify(&t.id_token, now_ms() / 1000).expect("valid");
        assert_eq!(claims.email.as_deref(), Some("me@example.com"));
        assert!(matches!(
            id.initiate_user_password(&info.client_id, "me@example.com", "wrong")
                .await,
            Err(IdentityError::NotAuthorized(_))
        ));
        assert!(matches!(
            id.initiate_user_password(&info.client_id, "nobody@example.com", "Passw0rd!")
                .await,
            Err(IdentityError::NotAuthorized(_))
        ));
        let rt = t.refresh_token.expect("refresh token");
        let refreshed = id
            .initiate_refresh(&info.client_id, &rt)
            .await
            .expect("refresh");
        assert!(refreshed.refresh_token.is_none());
        assert!(id.initiate_refresh(&info.client_id, "bogus").await.is_err());

        id.create_user(&info.pool_id, "temp@example.com", "Temp0rary!", true)
            .expect("create temp");
        let AuthOutcome::NewPasswordRequired { session, .. } = id
            .initiate_user_password(&info.client_id, "temp@example.com", "Temp0rary!")
            .await
            .expect("challenge")
        else {
            panic!("expected challenge");
        };
        assert!(matches!(
            id.respond_new_password(&info.client_id, &session, "temp@example.com", "weak")
                .await,
            Err(IdentityError::InvalidPassword(_))
        ));
        id.respond_new_password(
            &info.client_id,
            &session,
            "temp@example.com",
            "N3w-Passw0rd",
        )
        .await
        .expect("new password");
        assert!(
            id.respond_new_password(
                &info.client_id,
                &session,
                "temp@example.com",
                "N3w-Passw0rd"
            )
            .await
            .is_err(),
            "a session is used once"
        );
        assert!(matches!(
            id.initiate_user_password(&info.client_id, "temp@example.com", "N3w-Passw0rd")
                .await,
            Ok(AuthOutcome::Tokens(_))
        ));
    }
}
