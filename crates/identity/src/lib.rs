//! User pools, app clients, users, passwords, signing keys and tokens — Cognito user pools'
//! model, without any wire format (the `compat` crate speaks Cognito's protocol; the gateway
//! only needs a [`Verifier`]).
//!
//! Users sign in by email. As in a Cognito pool whose sign-in option is email, a user's
//! `cognito:username` is its `sub` (a UUID), and email addresses are case-insensitive.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rand::Rng;
use rand::distributions::Alphanumeric;
use sha2::{Digest, Sha256};
use sluice_meta::params;
use sluice_meta::{Meta, Migration, now_ms};

use crate::throttle::Throttle;

pub mod access_keys;
mod auth;
mod client_secret;
pub mod custom_auth;
pub mod federation;
pub mod groups;
pub mod hashing;
pub mod keys;
mod mail;
pub mod mfa;
pub mod oauth;
pub mod password;
mod pool_verifier;
mod pools;
pub mod rates;
pub mod revocations;
pub mod schema;
pub mod secret_box;
pub mod srp;
mod throttle;
pub mod tokens;
pub mod triggers;
mod users;

pub use auth::{AccessSession, SrpChallenge};
pub use client_secret::secret_hash;
pub use keys::{Jwk, Jwks, SigningKey};
pub use mail::SmtpSettings;
pub use password::PasswordPolicy;
pub use pool_verifier::PoolVerifier;
pub use pools::{
    AccountRecoverySetting, AdminCreateUserConfig, Client, ClientSettings, ClientSpec,
    OAuthSettings, Policies, Pool, PoolSettings, PoolUpdate, RecoveryOption,
    SoftwareTokenMfaConfiguration, TokenValidityUnits, UsernameConfiguration,
};
pub use tokens::{TokenError, VerifiedClaims, Verifier};
pub use triggers::TriggerData;
pub use users::{CodeDelivery, ListUsersPage, NewUser, OutboxMessage, UserRecord};

/// How long the session of an auth challenge stays valid, as Cognito (3 minutes).
pub(crate) const SESSION_TTL_MS: i64 = 3 * 60 * 1000;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
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
    },
    Migration {
        name: "identity-0002",
        sql: MIGRATION_0002,
    },
    Migration {
        name: "identity-0003",
        sql: MIGRATION_0003,
    },
    Migration {
        name: "identity-0004",
        sql: revocations::MIGRATION,
    },
    Migration {
        name: "identity-0005",
        sql: groups::MIGRATION,
    },
    Migration {
        name: "identity-0006",
        sql: keys::MIGRATION,
    },
    Migration {
        name: "identity-0007",
        sql: mfa::MIGRATION,
    },
    Migration {
        name: "identity-0008",
        sql: MIGRATION_0008,
    },
    Migration {
        name: "identity-0009",
        sql: mfa::MIGRATION_CODES,
    },
    Migration {
        name: "identity-0010",
        sql: oauth::MIGRATION,
    },
    Migration {
        name: "identity-0011",
        sql: federation::MIGRATION,
    },
];

/// Outbox messages know their user (`sub`), and may carry the subject and body a
/// CustomMessage trigger wrote (`NULL`: the default text, `mail::compose`).
const MIGRATION_0008: &str = "
ALTER TABLE outbox ADD COLUMN sub TEXT;
ALTER TABLE outbox ADD COLUMN subject TEXT;
ALTER TABLE outbox ADD COLUMN body TEXT;
";

/// Outbox messages record their email delivery: `delivery` is NULL (not emailed: SMTP not
/// configured, or not an email address), `sent` or `failed` (with `delivery_error`).
const MIGRATION_0003: &str = "
ALTER TABLE outbox ADD COLUMN delivery TEXT;
ALTER TABLE outbox ADD COLUMN delivery_error TEXT;
ALTER TABLE outbox ADD COLUMN delivery_ms INTEGER;
";

/// Pools and clients get their settings (Cognito's shapes, as JSON), clients a secret; users
/// get a username distinct from their email, attributes, an SRP verifier and a temporary
/// password expiry; confirmation codes (hashed) and the outbox of messages appear. Rows from
/// 0001 keep their behaviour: the default pool signs in by email, its client allows the
/// password flows, and its users are named by their `sub`.
const MIGRATION_0002: &str = r#"
ALTER TABLE pools ADD COLUMN settings TEXT NOT NULL DEFAULT '{"UsernameAttributes":["email"],"AutoVerifiedAttributes":["email"],"UsernameConfiguration":{"CaseSensitive":false}}';
ALTER TABLE pools ADD COLUMN updated_ms INTEGER NOT NULL DEFAULT 0;
UPDATE pools SET updated_ms = created_ms;
ALTER TABLE clients ADD COLUMN secret TEXT;
ALTER TABLE clients ADD COLUMN settings TEXT NOT NULL DEFAULT '{"ExplicitAuthFlows":["ALLOW_USER_PASSWORD_AUTH","ALLOW_USER_SRP_AUTH","ALLOW_ADMIN_USER_PASSWORD_AUTH","ALLOW_REFRESH_TOKEN_AUTH"],"TokenValidityUnits":{"AccessToken":"seconds","IdToken":"seconds","RefreshToken":"seconds"}}';
ALTER TABLE clients ADD COLUMN updated_ms INTEGER NOT NULL DEFAULT 0;
UPDATE clients SET updated_ms = created_ms;
CREATE INDEX clients_pool ON clients(pool_id);
CREATE TABLE users_v2 (
    pool_id TEXT NOT NULL REFERENCES pools(id),
    sub TEXT NOT NULL,
    username TEXT NOT NULL,
    username_key TEXT NOT NULL,
    email TEXT,
    password_hash TEXT NOT NULL,
    srp_salt TEXT,
    srp_verifier TEXT,
    temp_expires_ms INTEGER,
    status TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    attributes TEXT NOT NULL DEFAULT '{}',
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (pool_id, sub),
    UNIQUE (pool_id, username_key)
);
INSERT INTO users_v2 (pool_id, sub, username, username_key, email, password_hash, status,
    enabled, attributes, created_ms, updated_ms)
SELECT pool_id, sub, sub, sub, email, password_hash, status, enabled,
    COALESCE('{"email":"' || REPLACE(REPLACE(email, '\', '\\'), '"', '\"')
        || '","email_verified":"true"}', '{}'),
    created_ms, updated_ms
FROM users;
DROP TABLE users;
ALTER TABLE users_v2 RENAME TO users;
CREATE INDEX users_email ON users(pool_id, email);
ALTER TABLE auth_sessions ADD COLUMN data TEXT;
CREATE INDEX refresh_tokens_user ON refresh_tokens(pool_id, sub);
CREATE INDEX refresh_tokens_origin ON refresh_tokens(origin_jti);
CREATE TABLE codes (
    pool_id TEXT NOT NULL,
    sub TEXT NOT NULL,
    purpose TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pool_id, sub, purpose)
);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pool_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    code TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX outbox_pool ON outbox(pool_id, id);
"#;

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
    GroupExists(String),
    /// An identity provider (or one of its identifiers) of that name exists already.
    #[error("{0}")]
    DuplicateProvider(String),
    #[error("{0}")]
    InvalidPassword(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{0}")]
    CodeMismatch(String),
    #[error("{0}")]
    ExpiredCode(String),
    #[error("{0}")]
    UserNotConfirmed(String),
    #[error("{0}")]
    PasswordResetRequired(String),
    #[error("{0}")]
    LimitExceeded(String),
    /// Refused for load (the password hashing queue is full, a request rate is exceeded):
    /// the client should retry later.
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    UnsupportedUserState(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    UnsupportedTokenType(String),
    /// VerifySoftwareToken with a wrong code.
    #[error("{0}")]
    EnableSoftwareTokenMfa(String),
    /// The user has no software token (associated, or verified, as the call needs).
    #[error("{0}")]
    SoftwareTokenMfaNotFound(String),
    /// A Lambda trigger threw or timed out.
    #[error("{0}")]
    UserLambdaValidation(String),
    /// A Lambda trigger answered with something of the wrong shape.
    #[error("{0}")]
    InvalidLambdaResponse(String),
    /// A Lambda trigger could not be run.
    #[error("{0}")]
    UnexpectedLambda(String),
    /// An OAuth 2.0 endpoint's refusal (RFC 6749 §5.2, RFC 6750 §3.1): its error code
    /// (`invalid_grant`, …) and a description.
    #[error("{error}: {description}")]
    OAuth {
        error: &'static str,
        description: String,
    },
    #[error("identity backend failure: {0}")]
    Backend(String),
    /// The metadata engine failed (full, unavailable, …: see [`sluice_meta::MetaError`]).
    #[error("{0}")]
    Meta(sluice_meta::MetaError),
}

impl From<sluice_meta::MetaError> for IdentityError {
    fn from(e: sluice_meta::MetaError) -> Self {
        IdentityError::Meta(e)
    }
}

impl From<serde_json::Error> for IdentityError {
    fn from(e: serde_json::Error) -> Self {
        IdentityError::Backend(format!("stored json: {e}"))
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

/// A user as the command-line tools see it.
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
        /// `USER_ID_FOR_SRP`: the user's username.
        username: String,
        /// The user's attributes, for the challenge's `userAttributes`.
        attributes: BTreeMap<String, String>,
    },
    /// CUSTOM_AUTH: the pool's CreateAuthChallenge trigger asks (see [`custom_auth`]).
    Custom {
        session: String,
        username: String,
        /// `ChallengeParameters`: the trigger's public parameters and `USERNAME`.
        parameters: BTreeMap<String, String>,
    },
    /// The password was right; a second factor is due (see [`mfa`]).
    Mfa {
        challenge: mfa::MfaChallenge,
        session: String,
        /// `USER_ID_FOR_SRP`: the user's username.
        username: String,
    },
}

/// An app client as the sign-in flows need it.
pub(crate) struct ClientRow {
    pub(crate) id: String,
    pub(crate) pool_id: String,
    pub(crate) lifetimes: Lifetimes,
    pub(crate) prevent_user_existence_errors: bool,
    pub(crate) secret: Option<String>,
    pub(crate) settings: ClientSettings,
    /// A sign-in through the hosted UI: it ends in a login session (carried in
    /// `AuthTokens::refresh_token`, see `Issuance::SignIn`), not in tokens.
    pub(crate) hosted: bool,
}

impl ClientRow {
    /// How long a challenge's session lives: the client's `AuthSessionValidity` (minutes),
    /// else Cognito's 3 minutes.
    pub(crate) fn session_ttl_ms(&self) -> i64 {
        let ttl = self.settings.auth_session_validity * 60_000;
        if ttl > 0 { ttl } else { SESSION_TTL_MS }
    }
}

/// A user row. Invariant: `email` is the lower-cased `email` attribute (or `None`), and
/// `username_key` is `username` as the pool compares it (lower-cased unless the pool is
/// case sensitive).
#[derive(Debug, Clone)]
pub(crate) struct UserRow {
    pub(crate) sub: String,
    pub(crate) username: String,
    pub(crate) email: Option<String>,
    pub(crate) hash: String,
    pub(crate) srp: Option<(String, String)>,
    pub(crate) temp_expires_ms: Option<i64>,
    pub(crate) status: String,
    pub(crate) enabled: bool,
    pub(crate) attributes: BTreeMap<String, String>,
    pub(crate) created_ms: i64,
    pub(crate) updated_ms: i64,
}

/// The file, in the key folder, whose key seals the secrets kept in the metadata engine
/// (access keys' secrets, pools' signing keys). Every process of one deployment needs the
/// same file.
pub const SEALING_KEY_FILE: &str = "access-keys.key";

/// The identity service over the embedded database.
#[derive(Clone)]
pub struct Identity {
    db: Meta,
    key_dir: PathBuf,
    /// `<edge-url>`; a pool's issuer is `<base>/<pool id>`.
    issuer_base: String,
    keys: Arc<RwLock<HashMap<String, Arc<SigningKey>>>>,
    sealer: Arc<std::sync::OnceLock<Arc<secret_box::SecretBox>>>,
    /// Held while a signing key is loaded or generated, so that callers who need a key
    /// generation has not finished wait for that one instead of generating another.
    key_loading: Arc<std::sync::Mutex<()>>,
    throttle: Arc<Throttle>,
    /// Sign-up and sign-in rates per pool.
    pool_rates: Arc<rates::Buckets<(String, rates::Category)>>,
    limits: rates::RateLimits,
    /// Wakes the email delivery task (`None`: SMTP not configured).
    mail_wake: Option<Arc<tokio::sync::Notify>>,
    /// Runs the pools' Lambda triggers (`None` until the binary gives one).
    triggers: Arc<RwLock<Option<Arc<dyn triggers::TriggerRunner>>>>,
    /// The HTTP client of federation (`federation`), given by the binary.
    federation: Arc<RwLock<Option<Arc<dyn federation::FederationHttp>>>>,
}

impl Identity {
    pub fn new(db: Meta, key_dir: &Path, issuer_base: &str) -> Identity {
        Identity {
            db,
            key_dir: key_dir.to_owned(),
            issuer_base: issuer_base.trim_end_matches('/').to_owned(),
            keys: Arc::new(RwLock::new(HashMap::new())),
            sealer: Arc::default(),
            key_loading: Arc::default(),
            throttle: Arc::new(Throttle::default()),
            pool_rates: Arc::new(rates::Buckets::default()),
            limits: rates::RateLimits::default(),
            mail_wake: None,
            triggers: Arc::default(),
            federation: Arc::default(),
        }
    }

    /// Sets the public operations' rate limits (call before cloning this `Identity`).
    pub fn set_rate_limits(&mut self, limits: rates::RateLimits) {
        self.limits = limits;
    }

    pub fn rate_limits(&self) -> rates::RateLimits {
        self.limits
    }

    /// Counts one `category` request against `pool`'s rate.
    pub(crate) fn admit(&self, pool: &str, category: rates::Category) -> Result<(), IdentityError> {
        let rate = match category {
            rates::Category::SignUp => self.limits.sign_up_per_pool,
            rates::Category::SignIn => self.limits.sign_in_per_pool,
        };
        if self.pool_rates.admit(&(pool.to_owned(), category), rate) {
            Ok(())
        } else {
            Err(rates::too_many(category))
        }
    }

    /// Also delivers outbox messages written from now on by email (to email destinations),
    /// in the background. Call before cloning this `Identity`, inside a Tokio runtime.
    pub async fn start_mail(&mut self, settings: &SmtpSettings) -> Result<(), IdentityError> {
        let mailer = mail::Mailer::new(settings)?;
        self.mail_wake = Some(mail::start(self.db.clone(), mailer).await?);
        Ok(())
    }

    /// Tells the delivery task that the outbox may hold new messages.
    pub(crate) fn outbox_changed(&self) {
        if let Some(w) = &self.mail_wake {
            w.notify_one();
        }
    }

    pub fn issuer(&self, pool_id: &str) -> String {
        format!("{}/{pool_id}", self.issuer_base)
    }

    /// Creates the default pool, its app client and its signing key unless they exist, and
    /// sets the client's token lifetimes. Safe to run from several processes at once. The
    /// default pool signs users in by email (their username is their `sub`); its client
    /// allows the password, SRP, admin and refresh flows and has no secret.
    pub fn bootstrap(&self, region: &str, lifetimes: Lifetimes) -> Result<PoolInfo, IdentityError> {
        let info = self.bootstrap_rows(region, lifetimes)?;
        self.signing_key(&info.pool_id)?;
        Ok(info)
    }

    /// [`Identity::bootstrap`] without loading the pool's signing key: the server's start
    /// path, which generates a first key (RSA-2048, a few hundred milliseconds) in the
    /// background while it already answers; whatever signs or verifies a token before the
    /// key is ready waits for it in [`Identity::signing_key`].
    pub fn bootstrap_rows(
        &self,
        region: &str,
        lifetimes: Lifetimes,
    ) -> Result<PoolInfo, IdentityError> {
        let pool_id = format!("{region}_{}", random_alnum(9));
        let client_id = random_lower_alnum(26);
        let pool_settings = serde_json::to_string(&PoolSettings::default_pool())?;
        let client_settings = serde_json::to_string(&ClientSettings::default_client())?;
        let info = self.db.write_blocking(move |c| {
            let existing: Option<String> = c.query_opt(
                "SELECT id FROM pools WHERE is_default = 1",
                params![],
                |r| r.get(0),
            )?;
            let now = now_ms();
            let pool = match existing {
                Some(p) => p,
                None => {
                    c.execute(
                        "INSERT INTO pools (id, name, is_default, created_ms, settings, updated_ms)
                         VALUES (?1, 'sluice', 1, ?2, ?3, ?2)",
                        params![pool_id, now, pool_settings],
                    )?;
                    c.execute(
                        "INSERT INTO clients (id, pool_id, name, id_validity_secs,
                             access_validity_secs, refresh_validity_secs, created_ms, settings,
                             updated_ms)
                         VALUES (?1, ?2, 'sluice-app', ?3, ?4, ?5, ?6, ?7, ?6)",
                        params![
                            client_id,
                            pool_id,
                            lifetimes.id_secs,
                            lifetimes.access_secs,
                            lifetimes.refresh_secs,
                            now,
                            client_settings
                        ],
                    )?;
                    pool_id.clone()
                }
            };
            let client: String = c.query_row(
                "SELECT id FROM clients WHERE pool_id = ?1 ORDER BY created_ms, id LIMIT 1",
                params![&pool],
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
        Ok(info)
    }

    /// The default pool and its first client, if bootstrapped.
    pub fn default_pool(&self) -> Result<Option<PoolInfo>, IdentityError> {
        self.db.read_blocking(|c| {
            let pool: Option<String> = c.query_opt(
                "SELECT id FROM pools WHERE is_default = 1",
                params![],
                |r| r.get(0),
            )?;
            let Some(pool) = pool else { return Ok(None) };
            let client: String = c.query_row(
                "SELECT id FROM clients WHERE pool_id = ?1 ORDER BY created_ms, id LIMIT 1",
                params![&pool],
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
                params![&p],
                |r| r.get(0),
            )?)
        })
    }

    /// App client ids of a pool: the audiences its tokens are issued for.
    pub fn client_ids(&self, pool_id: &str) -> Result<Vec<String>, IdentityError> {
        let p = pool_id.to_owned();
        self.db.read_blocking(move |c| {
            let ids = c.query_vec(
                "SELECT id FROM clients WHERE pool_id = ?1",
                params![&p],
                |r| r.get::<String>(0),
            )?;
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
        let _loading = self
            .key_loading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Ok(keys) = self.keys.read()
            && let Some(k) = keys.get(pool_id)
        {
            return Ok(k.clone());
        }
        // A generated key is durable in the metadata engine (sealed) before this returns:
        // nothing is ever signed with a key that could be lost, and every process on the
        // same engine signs and verifies with the same key.
        let sealer = self.sealer()?;
        let key = Arc::new(keys::load_or_generate(
            &self.db,
            &sealer,
            pool_id,
            &self.key_path(pool_id),
        )?);
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(pool_id.to_owned(), key.clone());
        }
        Ok(key)
    }

    /// Where an earlier version kept the pool's signing key (read once, to keep it).
    fn key_path(&self, pool_id: &str) -> PathBuf {
        self.key_dir.join(format!("{pool_id}.pem"))
    }

    /// The key that seals signing keys in the metadata engine: the data directory's key
    /// file, the one access-key secrets are sealed with.
    fn sealer(&self) -> Result<Arc<secret_box::SecretBox>, IdentityError> {
        if let Some(b) = self.sealer.get() {
            return Ok(b.clone());
        }
        let b = Arc::new(secret_box::SecretBox::load_or_create(
            &self.key_dir.join(SEALING_KEY_FILE),
        )?);
        Ok(self.sealer.get_or_init(|| b).clone())
    }

    pub fn jwks(&self, pool_id: &str) -> Result<Jwks, IdentityError> {
        Ok(Jwks {
            keys: vec![self.signing_key(pool_id)?.jwk()],
        })
    }

    /// A verifier for tokens of `pool_id` issued to any of its app clients (as they are
    /// now: clients created later are not in it).
    pub fn verifier(&self, pool_id: &str, leeway_secs: i64) -> Result<Verifier, IdentityError> {
        Verifier::new(
            &self.issuer(pool_id),
            &self.jwks(pool_id)?,
            self.client_ids(pool_id)?,
            leeway_secs,
        )
        .map_err(|e| IdentityError::Backend(e.to_string()))
    }

    /// Creates a user of the default-style pool `pool_id` named by its email, with its email
    /// verified (the `sluice user create` command). With `temporary`, the user must choose a
    /// new password at first sign-in (FORCE_CHANGE_PASSWORD); otherwise it is CONFIRMED.
    pub fn create_user(
        &self,
        pool_id: &str,
        email: &str,
        password: &str,
        temporary: bool,
    ) -> Result<User, IdentityError> {
        let email = normalize_email(email)?;
        let rec = self.insert_user_blocking(NewUser {
            pool_id: pool_id.to_owned(),
            username: email.clone(),
            attributes: BTreeMap::from([
                ("email".to_owned(), email),
                ("email_verified".to_owned(), "true".to_owned()),
            ]),
            password: Some(password.to_owned()),
            temporary,
            admin: true,
        })?;
        Ok(User {
            sub: rec.sub,
            email: rec.attributes.get("email").cloned().unwrap_or_default(),
            status: rec.status,
            enabled: rec.enabled,
        })
    }
}

pub(crate) fn incorrect() -> IdentityError {
    IdentityError::NotAuthorized("Incorrect username or password.".into())
}

pub(crate) fn user_not_found() -> IdentityError {
    IdentityError::UserNotFound("User does not exist.".into())
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

pub(crate) fn random_alnum(n: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

pub(crate) fn random_lower_alnum(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// An opaque secret (refresh token, challenge session): 48 random bytes, base64url.
pub(crate) fn random_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 48];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Secrets are stored only as their SHA-256.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub(crate) fn blocking_err(e: tokio::task::JoinError) -> IdentityError {
    IdentityError::Backend(e.to_string())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// An identity on fresh metadata (kept until the returned engines are dropped).
    pub(crate) fn identity() -> (Identity, PoolInfo, sluice_meta::conformance::TestEngines) {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("identity", MIGRATIONS);
        let id = Identity::new(db, &engines.dir().join("keys"), "http://127.0.0.1:4566");
        let info = id
            .bootstrap("us-east-2", Lifetimes::default())
            .expect("bootstrap");
        (id, info, engines)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::identity;
    use super::*;

    #[test]
    fn ids_look_like_cognitos() {
        let (id, info, _engines) = identity();
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

    #[test]
    fn a_pool_bootstrapped_without_its_key_generates_it_once_for_concurrent_callers() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("identity", MIGRATIONS);
        let key_dir = engines.dir().join("keys");
        let id = Identity::new(db, &key_dir, "http://127.0.0.1:4566");
        let info = id
            .bootstrap_rows("us-east-2", Lifetimes::default())
            .expect("bootstrap");
        let stored = |db: &Meta| -> i64 {
            db.read_blocking(|c| {
                c.query_row("SELECT COUNT(*) FROM signing_keys", params![], |r| r.get(0))
            })
            .expect("count")
        };
        assert_eq!(stored(&id.db), 0, "no key on the start path");
        // The verifier is built without a key; it loads one at its first token.
        let verifier = PoolVerifier::new(id.clone(), &info.pool_id, 60).expect("verifier");
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let (id, pool) = (id.clone(), info.pool_id.clone());
                std::thread::spawn(move || id.signing_key(&pool).expect("key").kid.clone())
            })
            .collect();
        let kids: Vec<String> = callers
            .into_iter()
            .map(|c| c.join().expect("caller"))
            .collect();
        assert!(kids.iter().all(|k| *k == kids[0]), "{kids:?}");
        assert_eq!(stored(&id.db), 1, "one key");
        let files: Vec<_> = std::fs::read_dir(&key_dir)
            .expect("key dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert_eq!(files, vec![SEALING_KEY_FILE.to_owned()], "no key files");
        assert_eq!(
            verifier.verify("not.a.token", 0).err(),
            Some(TokenError::Malformed)
        );
        assert!(PoolVerifier::new(id, "us-east-2_nosuchpool", 60).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_0002_keeps_0001_users() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let dir = engines.dir().to_owned();
        {
            let db = engines.meta("old", &MIGRATIONS[..1]);
            db.write_blocking(|c| {
                c.execute(
                    "INSERT INTO pools (id, name, is_default, created_ms)
                         VALUES ('us-east-2_AAAAAAAAA', 'sluice', 1, 1)",
                    params![],
                )?;
                c.execute(
                    "INSERT INTO clients (id, pool_id, name, id_validity_secs,
                         access_validity_secs, refresh_validity_secs, created_ms)
                         VALUES ('c1', 'us-east-2_AAAAAAAAA', 'sluice-app', 3600, 3600, 86400, 1)",
                    params![],
                )?;
                c.execute(
                    "INSERT INTO users (pool_id, sub, email, password_hash, status, enabled,
                         created_ms, updated_ms)
                         VALUES ('us-east-2_AAAAAAAAA', 's1', 'old@example.com', 'x',
                             'CONFIRMED', 1, 1, 1)",
                    params![],
                )?;
                Ok::<_, IdentityError>(())
            })
            .expect("seed");
            db.close();
        }
        let db = engines.meta("old", MIGRATIONS);
        let id = Identity::new(db, &dir.join("keys"), "http://127.0.0.1:4566");
        let u = id
            .get_user("us-east-2_AAAAAAAAA", "old@example.com")
            .expect("get")
            .expect("kept");
        assert_eq!(u.sub, "s1");
        let rec = id
            .admin_get_user("us-east-2_AAAAAAAAA", "old@example.com")
            .await
            .expect("admin get");
        assert_eq!(rec.username, "s1");
        assert_eq!(
            rec.attributes.get("email_verified").map(String::as_str),
            Some("true")
        );
        let client = id
            .describe_client("us-east-2_AAAAAAAAA", "c1")
            .await
            .expect("client");
        assert!(
            client
                .settings
                .explicit_auth_flows
                .iter()
                .any(|f| f == "ALLOW_USER_PASSWORD_AUTH")
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
