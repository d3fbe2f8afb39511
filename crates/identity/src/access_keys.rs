//! Access keys for AWS Signature Version 4: what AWS clients (the aws CLI, boto3, the SDKs)
//! sign their Kinesis, S3 and Cognito admin requests with.
//!
//! A SigV4 verifier needs the secret itself (it recomputes the HMAC), so a secret cannot be
//! stored as a hash. It is stored *sealed* (encrypted, see [`crate::secret_box`]) under the
//! data directory's key file; the metadata engine never holds a secret in clear. Secrets an
//! earlier version stored in clear are sealed when the keys are opened ([`AccessKeys::open`]).
//!
//! A key may carry an IAM-style policy ([`sluice_policy::Policy`]): the edge then allows
//! only what the policy allows ([`KeyGrant::policy`]). A key without a policy has full
//! access (the development key, and keys created without `--policy`/`--allow`), as an AWS
//! account's root keys do.

use std::path::Path;
use std::sync::Arc;

use rand::Rng;
use sluice_meta::params;
use sluice_meta::{Meta, Migration, now_ms};
use sluice_policy::Policy;

use crate::IdentityError;
use crate::secret_box::{SecretBox, is_sealed, sealed_with};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "access-keys-0001",
        sql: "
CREATE TABLE access_keys (
    id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    description TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
",
    },
    // The key's policy document (JSON); NULL: full access.
    Migration {
        name: "access-keys-0002",
        sql: "ALTER TABLE access_keys ADD COLUMN policy TEXT;",
    },
    // The IAM user a key belongs to (NULL: an account key, see the module docs) and its
    // status (`Active` / `Inactive`: an inactive key is refused as an unknown one).
    Migration {
        name: "access-keys-0003",
        sql: "
ALTER TABLE access_keys ADD COLUMN user_name TEXT;
ALTER TABLE access_keys ADD COLUMN status TEXT NOT NULL DEFAULT 'Active';
CREATE INDEX access_keys_by_user ON access_keys (user_name);
",
    },
    // Role sessions (STS AssumeRole): temporary keys of a role, with a session token (its
    // SHA-256) and an expiry.
    Migration {
        name: "access-keys-0004",
        sql: "
ALTER TABLE access_keys ADD COLUMN role_name TEXT;
ALTER TABLE access_keys ADD COLUMN session_name TEXT;
ALTER TABLE access_keys ADD COLUMN token_hash TEXT;
ALTER TABLE access_keys ADD COLUMN expires_ms INTEGER;
CREATE INDEX access_keys_by_expiry ON access_keys (expires_ms);
",
    },
];

/// What the edge needs to know of an IAM user whose key signed a request. Implemented by
/// the IAM part (`sluice-iam`), attached with [`AccessKeys::attach_users`].
#[async_trait::async_trait]
pub trait UserDirectory: Send + Sync + 'static {
    /// The user's ARN and the union of its inline, attached and groups' policies;
    /// `ResourceNotFound` if there is no such user.
    async fn grant_of(&self, user: &str) -> Result<UserGrant, IdentityError>;
    /// The same of a role: its ARN, id, policies and tags.
    async fn role_grant_of(&self, role: &str) -> Result<UserGrant, IdentityError>;
}

/// An IAM user's identity and permissions, as [`UserDirectory::grant_of`] answers.
#[derive(Debug, Clone)]
pub struct UserGrant {
    pub arn: String,
    /// The user's unique id (`AIDA…`), as GetCallerIdentity answers.
    pub user_id: String,
    pub policy: Policy,
    /// The user's tags (`aws:PrincipalTag/…` in conditions).
    pub tags: Vec<(String, String)>,
}

/// An IAM user's access key, without its secret (IAM's `AccessKeyMetadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeyInfo {
    pub id: String,
    pub user: String,
    pub active: bool,
    pub created_ms: i64,
}

/// An access key with its secret (in clear, in memory only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
    pub description: String,
    pub created_ms: i64,
    /// The policy document; `None`: full access.
    pub policy: Option<String>,
}

/// An access key without its secret, as `sluice keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeyInfo {
    pub id: String,
    pub description: String,
    pub created_ms: i64,
    /// The policy document; `None`: full access (unless the key has an `owner`).
    pub policy: Option<String>,
    /// Whose key it is when IAM decides what it may do: `user NAME` or
    /// `role-session ROLE/SESSION`; `None`: an account key.
    pub owner: Option<String>,
}

/// What a signed request's key may do: its secret (to verify the signature) and its policy.
#[derive(Debug, Clone)]
pub struct KeyGrant {
    pub secret: String,
    /// `None`: full access. A stored policy that no longer parses (it was validated when
    /// stored, so only a damaged row) is an empty policy: it allows nothing. For an IAM
    /// user's key: the user's policies.
    pub policy: Option<Arc<Policy>>,
    /// The IAM user (or the role, for a role session) the key belongs to, if any.
    pub user: Option<GrantUser>,
    /// A role session's token (its SHA-256, hex): requests must carry the token.
    pub session_token_hash: Option<String>,
    /// When a role session's credentials expire.
    pub expires_ms: Option<i64>,
}

/// The IAM user of a key, as the edge names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantUser {
    /// The user's name, or for a role session the role's.
    pub name: String,
    /// The user's ARN, or the session's (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`).
    pub arn: String,
    /// `AIDA…`, or for a role session `AROA…:SESSION`.
    pub user_id: String,
    pub tags: Vec<(String, String)>,
    /// The session name of a role session; `None`: an IAM user.
    pub session: Option<String>,
}

/// Parses a policy document for a key; `InvalidParameter` with IAM's reason if unusable.
pub fn parse_policy(document: &str) -> Result<Policy, IdentityError> {
    Policy::parse(document).map_err(|e| {
        IdentityError::InvalidParameter(format!("the key's policy is not usable: {e}"))
    })
}

/// How long a looked-up secret (or its absence) is remembered. A key deleted with
/// `sluice keys delete` (possibly from another process) stops working within this time.
const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

type SecretCache = std::collections::HashMap<String, (Option<KeyGrant>, std::time::Instant)>;

/// The access keys sluice accepts.
#[derive(Clone)]
pub struct AccessKeys {
    db: Meta,
    sealer: SecretBox,
    /// Signed requests look their key up on every call: remembered briefly, in memory.
    cache: std::sync::Arc<std::sync::RwLock<SecretCache>>,
    /// IAM users' identities and policies, for keys of users.
    users: Arc<std::sync::OnceLock<Arc<dyn UserDirectory>>>,
}

impl AccessKeys {
    /// The access keys of `db`, their secrets sealed under the key file `key_file` (created,
    /// mode 0600, if there is none). Blocking: loads the key file, then seals, in one write,
    /// every secret an earlier version stored in clear, so that existing keys keep working
    /// and the database no longer holds them in clear. (Older copies of those rows may
    /// remain in the engine's free space until overwritten — a SQLite page not yet reused, a
    /// PostgreSQL tuple not yet vacuumed; replace such keys to be rid of them.)
    pub fn open(db: Meta, key_file: &Path) -> Result<Self, IdentityError> {
        let keys = AccessKeys {
            db,
            sealer: SecretBox::load_or_create(key_file)?,
            cache: Default::default(),
            users: Default::default(),
        };
        keys.seal_stored_in_clear()?;
        Ok(keys)
    }

    /// Seals the secrets stored in clear (by versions before sealing); warns about secrets
    /// sealed under another key file. Returns how many were sealed now.
    fn seal_stored_in_clear(&self) -> Result<u64, IdentityError> {
        let stored: Vec<(String, String)> = self.db.read_blocking(|c| {
            Ok::<_, IdentityError>(c.query_vec(
                "SELECT id, secret FROM access_keys ORDER BY id",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })?;
        let foreign = stored
            .iter()
            .filter(|(_, s)| sealed_with(s).is_some_and(|f| f != self.sealer.fingerprint()))
            .count();
        if foreign > 0 {
            tracing::warn!(
                keys = foreign,
                key_file = %self.sealer.path().display(),
                "access keys sealed with another key file cannot be used here: servers sharing one metadata database need the same key file"
            );
        }
        let mut clear = Vec::new();
        for (id, secret) in stored.into_iter().filter(|(_, s)| !is_sealed(s)) {
            let sealed = self.sealer.seal(&id, &secret)?;
            clear.push((id, secret, sealed));
        }
        if clear.is_empty() {
            return Ok(0);
        }
        let sealed_now = self.db.write_blocking(move |c| {
            let mut n = 0u64;
            for (id, secret, sealed) in &clear {
                // Only the value read above: a process racing here seals it once.
                n += c.execute(
                    "UPDATE access_keys SET secret = ?1 WHERE id = ?2 AND secret = ?3",
                    params![sealed, id, secret],
                )?;
            }
            Ok::<_, IdentityError>(n)
        })?;
        tracing::info!(
            keys = sealed_now,
            "sealed access-key secrets an earlier version stored in clear"
        );
        Ok(sealed_now)
    }

    /// Creates a key with full access: an id like AWS's (`AKIA` + 16 upper-case letters and
    /// digits) and a 40-character secret.
    pub fn create(&self, description: &str) -> Result<AccessKey, IdentityError> {
        self.create_with_policy(description, None)
    }

    /// Creates a key limited to `policy` (a policy document, validated here), or with full
    /// access when `None`.
    pub fn create_with_policy(
        &self,
        description: &str,
        policy: Option<&str>,
    ) -> Result<AccessKey, IdentityError> {
        if let Some(doc) = policy {
            parse_policy(doc)?;
        }
        let key = AccessKey {
            id: new_key_id(),
            secret: new_secret(),
            description: description.to_owned(),
            created_ms: now_ms(),
            policy: policy.map(str::to_owned),
        };
        let k = key.clone();
        let sealed = self.sealer.seal(&k.id, &k.secret)?;
        self.db.write_blocking(move |c| {
            c.execute(
                "INSERT INTO access_keys (id, secret, description, created_ms, policy) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![k.id, sealed, k.description, k.created_ms, k.policy],
            )?;
            Ok::<_, IdentityError>(())
        })?;
        Ok(key)
    }

    /// Replaces a key's policy (`None`: full access). `ResourceNotFound` if there is no such
    /// key. This process sees the change at once, others within the cache time.
    pub fn set_policy(&self, id: &str, policy: Option<&str>) -> Result<(), IdentityError> {
        if let Some(doc) = policy {
            parse_policy(doc)?;
        }
        let (key, doc) = (id.to_owned(), policy.map(str::to_owned));
        self.db.write_blocking(move |c| {
            let n = c.execute(
                "UPDATE access_keys SET policy = ?1 WHERE id = ?2",
                params![doc, &key],
            )?;
            if n == 0 {
                return Err(IdentityError::ResourceNotFound(format!(
                    "access key {key} does not exist"
                )));
            }
            Ok(())
        })?;
        self.forget(id);
        Ok(())
    }

    fn forget(&self, id: &str) {
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(id);
        }
    }

    /// Forgets every remembered key: a user's permissions changed (this process sees the
    /// change at once; others within `CACHE_TTL`, as IAM's changes also take a few seconds
    /// to reach every server).
    pub fn forget_all(&self) {
        if let Ok(mut cache) = self.cache.write() {
            cache.clear();
        }
    }

    /// Where keys of IAM users find their user's identity and policies. Until one is
    /// attached, a user's key may do nothing.
    pub fn attach_users(&self, users: Arc<dyn UserDirectory>) {
        let _ = self.users.set(users);
        self.forget_all();
    }

    /// Creates a key for the IAM user `user` (at most `limit` per user: `LimitExceeded`
    /// otherwise, checked in the transaction that adds it).
    pub async fn create_for_user(
        &self,
        user: &str,
        limit: u64,
    ) -> Result<AccessKey, IdentityError> {
        let key = AccessKey {
            id: new_key_id(),
            secret: new_secret(),
            description: format!("IAM user {user}"),
            created_ms: now_ms(),
            policy: None,
        };
        let sealed = self.sealer.seal(&key.id, &key.secret)?;
        let (k, owner) = (key.clone(), user.to_owned());
        self.db
            .write(move |c| {
                let n: i64 = c.query_row(
                    "SELECT COUNT(*) FROM access_keys WHERE user_name = ?1",
                    params![&owner],
                    |r| r.get(0),
                )?;
                if n as u64 >= limit {
                    return Err(IdentityError::LimitExceeded(format!(
                        "Cannot exceed quota for AccessKeysPerUser: {limit}"
                    )));
                }
                c.execute(
                    "INSERT INTO access_keys (id, secret, description, created_ms, user_name, status) VALUES (?1, ?2, ?3, ?4, ?5, 'Active')",
                    params![k.id, sealed, k.description, k.created_ms, &owner],
                )?;
                Ok(())
            })
            .await?;
        Ok(key)
    }

    /// The keys of the IAM user `user`, oldest first.
    pub async fn list_for_user(&self, user: &str) -> Result<Vec<UserKeyInfo>, IdentityError> {
        let owner = user.to_owned();
        self.db
            .read(move |c| {
                Ok(c.query_vec(
                    "SELECT id, user_name, status, created_ms FROM access_keys WHERE user_name = ?1 ORDER BY created_ms, id",
                    params![&owner],
                    |r| {
                        let status: String = r.get(2)?;
                        Ok(UserKeyInfo {
                            id: r.get(0)?,
                            user: r.get(1)?,
                            active: status == "Active",
                            created_ms: r.get(3)?,
                        })
                    },
                )?)
            })
            .await
    }

    /// The user a key belongs to, if it exists and belongs to one.
    pub async fn user_of(&self, id: &str) -> Result<Option<String>, IdentityError> {
        let key = id.to_owned();
        let user: Option<Option<String>> = self
            .db
            .read(move |c| {
                Ok::<_, IdentityError>(c.query_opt(
                    "SELECT user_name FROM access_keys WHERE id = ?1",
                    params![&key],
                    |r| r.get(0),
                )?)
            })
            .await?;
        Ok(user.flatten())
    }

    /// Sets a user's key `Active` or `Inactive`; `ResourceNotFound` unless `user` has it.
    pub async fn set_active_for_user(
        &self,
        id: &str,
        user: &str,
        active: bool,
    ) -> Result<(), IdentityError> {
        let (key, owner) = (id.to_owned(), user.to_owned());
        let status = if active { "Active" } else { "Inactive" };
        self.db
            .write(move |c| {
                let n = c.execute(
                    "UPDATE access_keys SET status = ?1 WHERE id = ?2 AND user_name = ?3",
                    params![status, &key, &owner],
                )?;
                if n == 0 {
                    return Err(IdentityError::ResourceNotFound(format!(
                        "The Access Key with id {key} cannot be found."
                    )));
                }
                Ok(())
            })
            .await?;
        self.forget(id);
        Ok(())
    }

    /// Deletes a user's key; `ResourceNotFound` unless `user` has it.
    pub async fn delete_for_user(&self, id: &str, user: &str) -> Result<(), IdentityError> {
        let (key, owner) = (id.to_owned(), user.to_owned());
        self.db
            .write(move |c| {
                let n = c.execute(
                    "DELETE FROM access_keys WHERE id = ?1 AND user_name = ?2",
                    params![&key, &owner],
                )?;
                if n == 0 {
                    return Err(IdentityError::ResourceNotFound(format!(
                        "The Access Key with id {key} cannot be found."
                    )));
                }
                Ok(())
            })
            .await?;
        self.forget(id);
        Ok(())
    }

    /// Creates the development key unless some key exists; returns it when it was created
    /// now (so that it is shown once, at first start).
    pub fn ensure_initial(&self) -> Result<Option<AccessKey>, IdentityError> {
        let any: bool = self.db.read_blocking(|c| {
            Ok::<_, IdentityError>(c.query_row(
                "SELECT EXISTS(SELECT 1 FROM access_keys)",
                params![],
                |r| r.get(0),
            )?)
        })?;
        if any {
            return Ok(None);
        }
        self.create("development key created at first start")
            .map(Some)
    }

    /// The oldest key with this description, created now if there is none: a dedicated
    /// key that a part of sluice keeps for itself (its secret is never printed), with full
    /// access. A key whose secret this key file cannot unseal (another data directory's, on
    /// a shared metadata engine; or the key file was lost) is passed over, not deleted: its
    /// owner may still use it.
    pub fn find_or_create(&self, description: &str) -> Result<AccessKey, IdentityError> {
        self.find_or_create_scoped(description, None)
    }

    /// As [`AccessKeys::find_or_create`], for a key limited to `policy`: a key found with
    /// another policy gets this one (a function's key follows its mapping's needs).
    pub fn find_or_create_scoped(
        &self,
        description: &str,
        policy: Option<&str>,
    ) -> Result<AccessKey, IdentityError> {
        let wanted = description.to_owned();
        let found: Vec<(String, String, i64, Option<String>)> = self.db.read_blocking(move |c| {
            Ok::<_, IdentityError>(c.query_vec(
                "SELECT id, secret, created_ms, policy FROM access_keys WHERE description = ?1 ORDER BY created_ms, id",
                params![&wanted],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?)
        })?;
        for (id, stored, created_ms, stored_policy) in found {
            match self.sealer.open(&id, &stored) {
                Ok(secret) => {
                    if stored_policy.as_deref() != policy {
                        self.set_policy(&id, policy)?;
                    }
                    return Ok(AccessKey {
                        id,
                        secret,
                        description: description.to_owned(),
                        created_ms,
                        policy: policy.map(str::to_owned),
                    });
                }
                Err(e) => tracing::warn!(key = %id, error = %e, "passing over an access key"),
            }
        }
        self.create_with_policy(description, policy)
    }

    /// Deletes every key with this description (a managed key no longer needed); returns
    /// how many.
    pub fn retire(&self, description: &str) -> Result<u64, IdentityError> {
        let wanted = description.to_owned();
        let ids: Vec<String> = self.db.write_blocking(move |c| {
            let ids = c.query_vec(
                "SELECT id FROM access_keys WHERE description = ?1",
                params![&wanted],
                |r| r.get(0),
            )?;
            c.execute(
                "DELETE FROM access_keys WHERE description = ?1",
                params![&wanted],
            )?;
            Ok::<_, IdentityError>(ids)
        })?;
        for id in &ids {
            self.forget(id);
        }
        Ok(ids.len() as u64)
    }

    /// Every key, oldest first, without secrets (expired role sessions left out).
    pub fn list(&self) -> Result<Vec<AccessKeyInfo>, IdentityError> {
        let now = now_ms();
        self.db.read_blocking(move |c| {
            let keys = c.query_vec(
                "SELECT id, description, created_ms, policy, user_name, role_name, session_name FROM access_keys WHERE expires_ms IS NULL OR expires_ms > ?1 ORDER BY created_ms, id",
                params![now],
                |r| {
                    let user: Option<String> = r.get(4)?;
                    let role: Option<String> = r.get(5)?;
                    let session: Option<String> = r.get(6)?;
                    let owner = match (user, role) {
                        (Some(u), _) => Some(format!("user {u}")),
                        (None, Some(role)) => Some(format!(
                            "role-session {role}/{}",
                            session.unwrap_or_default()
                        )),
                        (None, None) => None,
                    };
                    Ok(AccessKeyInfo {
                        id: r.get(0)?,
                        description: r.get(1)?,
                        created_ms: r.get(2)?,
                        policy: r.get(3)?,
                        owner,
                    })
                },
            )?;
            Ok(keys)
        })
    }

    /// Deletes a key. `ResourceNotFound` if there is none with that id.
    pub fn delete(&self, id: &str) -> Result<(), IdentityError> {
        let key = id.to_owned();
        self.db.write_blocking(move |c| {
            let n = c.execute("DELETE FROM access_keys WHERE id = ?1", params![&key])?;
            if n == 0 {
                return Err(IdentityError::ResourceNotFound(format!(
                    "access key {key} does not exist"
                )));
            }
            Ok(())
        })?;
        self.forget(id);
        Ok(())
    }

    /// The secret of a key, for signature verification. A secret that cannot be unsealed
    /// (sealed with another key file, or damaged) is an error, logged by the caller.
    pub async fn secret(&self, id: &str) -> Result<Option<String>, IdentityError> {
        Ok(self.lookup(id).await?.map(|g| g.secret))
    }

    /// A key's secret and policy (remembered for a few seconds, see `CACHE_TTL`).
    pub async fn lookup(&self, id: &str) -> Result<Option<KeyGrant>, IdentityError> {
        if let Ok(cache) = self.cache.read()
            && let Some((grant, at)) = cache.get(id)
            && at.elapsed() < CACHE_TTL
            && grant
                .as_ref()
                .is_none_or(|g| g.expires_ms.is_none_or(|e| e > now_ms()))
        {
            return Ok(grant.clone());
        }
        let key = id.to_owned();
        let stored: Option<StoredKey> = self
            .db
            .read(move |c| {
                Ok::<_, IdentityError>(c.query_opt(
                    "SELECT secret, policy, user_name, status, role_name, session_name, token_hash, expires_ms FROM access_keys WHERE id = ?1",
                    params![&key],
                    |r| {
                        Ok(StoredKey {
                            sealed: r.get(0)?,
                            policy: r.get(1)?,
                            user: r.get(2)?,
                            active: r.get::<String>(3)? == "Active",
                            role: r.get(4)?,
                            session: r.get(5)?,
                            token_hash: r.get(6)?,
                            expires_ms: r.get(7)?,
                        })
                    },
                )?)
            })
            .await?;
        let grant = match stored {
            // An inactive or expired key is refused as IAM refuses it: as if it did not exist.
            Some(k) if !k.active || k.expires_ms.is_some_and(|e| e <= now_ms()) => None,
            Some(k) => self.grant_of(id, k).await?,
            None => None,
        };
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= 10_000 {
                cache.clear();
            }
            cache.insert(id.to_owned(), (grant.clone(), std::time::Instant::now()));
        }
        Ok(grant)
    }
}

/// A row of `access_keys`, as `lookup` reads it.
struct StoredKey {
    sealed: String,
    policy: Option<String>,
    user: Option<String>,
    active: bool,
    role: Option<String>,
    session: Option<String>,
    token_hash: Option<String>,
    expires_ms: Option<i64>,
}

impl AccessKeys {
    /// What a stored key may do: its own policy, its user's or its role's.
    async fn grant_of(&self, id: &str, k: StoredKey) -> Result<Option<KeyGrant>, IdentityError> {
        let secret = self.sealer.open(id, &k.sealed)?;
        let (who, session) = match (&k.user, &k.role) {
            (None, None) => {
                return Ok(Some(KeyGrant {
                    secret,
                    policy: k.policy.map(|doc| {
                        Arc::new(parse_policy(&doc).unwrap_or_else(|e| {
                            tracing::error!(key = %id, error = %e, "an access key's stored policy does not parse: the key may do nothing");
                            Policy::deny_all()
                        }))
                    }),
                    user: None,
                    session_token_hash: None,
                    expires_ms: None,
                }));
            }
            (Some(user), _) => (user.clone(), None),
            (None, Some(role)) => (role.clone(), Some(k.session.clone().unwrap_or_default())),
        };
        let Some(users) = self.users.get() else {
            tracing::error!(key = %id, principal = %who, "a user's or role's key signed a request, but no IAM directory is attached: the key may do nothing");
            return Ok(None);
        };
        let found = match &session {
            None => users.grant_of(&who).await,
            Some(_) => users.role_grant_of(&who).await,
        };
        let g = match found {
            Ok(g) => g,
            // The user or role is gone (its keys go with it): the key is unknown.
            Err(IdentityError::ResourceNotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let user = match &session {
            None => GrantUser {
                name: who,
                arn: g.arn,
                user_id: g.user_id,
                tags: g.tags,
                session: None,
            },
            Some(s) => {
                let account = g.arn.split(':').nth(4).unwrap_or_default().to_owned();
                GrantUser {
                    arn: format!("arn:aws:sts::{account}:assumed-role/{who}/{s}"),
                    user_id: format!("{}:{s}", g.user_id),
                    name: who,
                    tags: g.tags,
                    session: Some(s.clone()),
                }
            }
        };
        Ok(Some(KeyGrant {
            secret,
            policy: Some(Arc::new(g.policy)),
            user: Some(user),
            session_token_hash: k.token_hash,
            expires_ms: k.expires_ms,
        }))
    }

    /// Temporary credentials of a role session (STS's AssumeRole): an `ASIA…` key, its
    /// secret and a session token, valid until `expires_ms`. Expired sessions are deleted in
    /// the same transaction.
    pub async fn create_session(
        &self,
        role: &str,
        session_name: &str,
        expires_ms: i64,
    ) -> Result<SessionCredentials, IdentityError> {
        let id = format!(
            "ASIA{}",
            random_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
        );
        let secret = new_secret();
        let token = random_from(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            128,
        );
        let sealed = self.sealer.seal(&id, &secret)?;
        let (k, r, s, h) = (
            id.clone(),
            role.to_owned(),
            session_name.to_owned(),
            token_hash(&token),
        );
        self.db
            .write(move |c| {
                let now = now_ms();
                c.execute(
                    "DELETE FROM access_keys WHERE expires_ms IS NOT NULL AND expires_ms <= ?1",
                    params![now],
                )?;
                c.execute(
                    "INSERT INTO access_keys (id, secret, description, created_ms, status, role_name, session_name, token_hash, expires_ms) VALUES (?1, ?2, ?3, ?4, 'Active', ?5, ?6, ?7, ?8)",
                    params![&k, &sealed, format!("role session {r}/{s}"), now, &r, &s, &h, expires_ms],
                )?;
                Ok::<_, IdentityError>(())
            })
            .await?;
        Ok(SessionCredentials {
            access_key_id: id,
            secret,
            session_token: token,
            expires_ms,
        })
    }
}

/// A role session's credentials, as AssumeRole answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCredentials {
    pub access_key_id: String,
    pub secret: String,
    pub session_token: String,
    pub expires_ms: i64,
}

/// How a session token is stored and compared: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A key id like AWS's: `AKIA` and 16 upper-case letters and digits.
fn new_key_id() -> String {
    format!(
        "AKIA{}",
        random_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
    )
}

/// A 40-character secret.
fn new_secret() -> String {
    random_from(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        40,
    )
}

fn random_from(alphabet: &[u8], n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_secret(db: &Meta, id: &str) -> String {
        let id = id.to_owned();
        db.read_blocking(move |c| {
            Ok::<_, IdentityError>(c.query_row(
                "SELECT secret FROM access_keys WHERE id = ?1",
                params![&id],
                |r| r.get(0),
            )?)
        })
        .expect("stored secret")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_list_delete() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("keys", MIGRATIONS);
        let key_file = engines.dir().join("keys").join("access-keys.key");
        let keys = AccessKeys::open(db, &key_file).expect("open");
        let first = keys.ensure_initial().expect("ensure").expect("created");
        assert!(
            keys.ensure_initial().expect("ensure").is_none(),
            "only once"
        );
        assert!(first.id.starts_with("AKIA") && first.id.len() == 20);
        assert_eq!(first.secret.len(), 40);
        let second = keys.create("ci").expect("create");
        assert_eq!(keys.list().expect("list").len(), 2);
        assert_eq!(
            keys.secret(&second.id).await.expect("secret"),
            Some(second.secret.clone())
        );
        keys.delete(&second.id).expect("delete");
        // Another handle (as another process would be) sees the deletion at once; this one
        // within its cache time.
        let fresh = AccessKeys::open(keys.db.clone(), &key_file).expect("open");
        assert!(fresh.secret(&second.id).await.expect("secret").is_none());
        assert!(matches!(
            keys.delete(&second.id),
            Err(IdentityError::ResourceNotFound(_))
        ));
        let own = keys.find_or_create("mine").expect("created");
        assert_eq!(keys.find_or_create("mine").expect("found"), own, "reused");
        assert_ne!(own.id, first.id);
        assert_eq!(
            fresh.secret(&first.id).await.expect("secret"),
            Some(first.secret)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_are_stored_sealed() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("sealed", MIGRATIONS);
        let keys = AccessKeys::open(db.clone(), &engines.dir().join("k.key")).expect("open");
        let k = keys.create("ci").expect("create");
        let stored = stored_secret(&db, &k.id);
        assert!(is_sealed(&stored), "{stored}");
        assert!(!stored.contains(&k.secret));
        assert_eq!(keys.secret(&k.id).await.expect("secret"), Some(k.secret));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_stored_in_clear_are_sealed_at_open_and_keep_working() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("migrate", MIGRATIONS);
        // What a version before sealing wrote.
        let old = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY12";
        db.write_blocking(move |c| {
            c.execute(
                "INSERT INTO access_keys (id, secret, description, created_ms) VALUES ('AKIAOLD', ?1, 'old', 1)",
                params![old],
            )?;
            Ok::<_, IdentityError>(())
        })
        .expect("insert");
        let key_file = engines.dir().join("k.key");
        let keys = AccessKeys::open(db.clone(), &key_file).expect("open");
        let stored = stored_secret(&db, "AKIAOLD");
        assert!(is_sealed(&stored) && !stored.contains(old), "{stored}");
        assert_eq!(
            keys.secret("AKIAOLD").await.expect("secret"),
            Some(old.to_owned())
        );
        // Opening again changes nothing.
        let again = AccessKeys::open(db.clone(), &key_file).expect("open");
        assert_eq!(again.seal_stored_in_clear().expect("seal"), 0);
        assert_eq!(stored_secret(&db, "AKIAOLD"), stored);

        // Another key file cannot read it, and says why.
        let other = AccessKeys::open(db, &engines.dir().join("other.key")).expect("open");
        let e = other.secret("AKIAOLD").await.expect_err("other key file");
        assert!(e.to_string().contains("another key file"), "{e}");
        // A managed key it cannot open is passed over (and left), not an error.
        let own = other.find_or_create("old").expect("a key of its own");
        assert_ne!(own.id, "AKIAOLD");
        assert_eq!(other.find_or_create("old").expect("again"), own);
        assert_eq!(other.list().expect("list").len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_carry_their_policy() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("policies", MIGRATIONS);
        let keys = AccessKeys::open(db, &engines.dir().join("k.key")).expect("open");
        let doc = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/uploads/*"}}"#;
        let e = keys
            .create_with_policy("bad", Some(r#"{"Statement":{"Effect":"Maybe"}}"#))
            .expect_err("malformed");
        assert!(matches!(e, IdentityError::InvalidParameter(_)), "{e}");
        assert!(keys.list().expect("list").is_empty(), "nothing stored");

        let k = keys
            .create_with_policy("reader", Some(doc))
            .expect("create");
        let grant = keys.lookup(&k.id).await.expect("lookup").expect("exists");
        let policy = grant.policy.expect("scoped");
        assert!(
            policy
                .decide("s3:GetObject", "arn:aws:s3:::b/uploads/x")
                .allowed()
        );
        assert!(
            !policy
                .decide("s3:DeleteObject", "arn:aws:s3:::b/uploads/x")
                .allowed()
        );
        assert_eq!(keys.list().expect("list")[0].policy.as_deref(), Some(doc));
        let full = keys.create("admin").expect("create");
        assert!(
            keys.lookup(&full.id)
                .await
                .expect("lookup")
                .expect("exists")
                .policy
                .is_none()
        );

        // A managed key follows the policy it is asked for, and is seen at once.
        let managed = keys.find_or_create_scoped("fn", Some(doc)).expect("scoped");
        let wider = doc.replace("uploads/*", "*");
        let again = keys
            .find_or_create_scoped("fn", Some(&wider))
            .expect("again");
        assert_eq!(again.id, managed.id);
        let grant = keys
            .lookup(&managed.id)
            .await
            .expect("lookup")
            .expect("exists");
        assert!(
            grant
                .policy
                .expect("scoped")
                .decide("s3:GetObject", "arn:aws:s3:::b/other")
                .allowed()
        );

        assert_eq!(keys.retire("fn").expect("retire"), 1);
        assert!(keys.lookup(&managed.id).await.expect("lookup").is_none());
        assert_eq!(keys.retire("fn").expect("retire"), 0);
    }
}
