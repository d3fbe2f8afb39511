//! Access keys for AWS Signature Version 4: what AWS clients (the aws CLI, boto3, the SDKs)
//! sign their Kinesis, S3 and Cognito admin requests with.
//!
//! A SigV4 verifier needs the secret itself (it recomputes the HMAC), so secrets are
//! stored as they are; the database lives in the data directory, which `serve` creates
//! with mode 0700.

use rand::Rng;
use sluice_meta::params;
use sluice_meta::{Meta, Migration, now_ms};

use crate::IdentityError;

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "access-keys-0001",
    sql: "
CREATE TABLE access_keys (
    id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    description TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
",
}];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
    pub description: String,
    pub created_ms: i64,
}

/// How long a looked-up secret (or its absence) is remembered. A key deleted with
/// `sluice keys delete` (possibly from another process) stops working within this time.
const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

type SecretCache = std::collections::HashMap<String, (Option<String>, std::time::Instant)>;

/// The access keys sluice accepts.
#[derive(Clone)]
pub struct AccessKeys {
    db: Meta,
    /// Signed requests look their key up on every call: remembered briefly, in memory.
    cache: std::sync::Arc<std::sync::RwLock<SecretCache>>,
}

impl AccessKeys {
    pub fn new(db: Meta) -> Self {
        AccessKeys {
            db,
            cache: Default::default(),
        }
    }

    /// Creates a key: an id like AWS's (`AKIA` + 16 upper-case letters and digits) and a
    /// 40-character secret.
    pub fn create(&self, description: &str) -> Result<AccessKey, IdentityError> {
        let key = AccessKey {
            id: format!(
                "AKIA{}",
                random_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
            ),
            secret: random_from(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                40,
            ),
            description: description.to_owned(),
            created_ms: now_ms(),
        };
        let k = key.clone();
        self.db.write_blocking(move |c| {
            c.execute(
                "INSERT INTO access_keys (id, secret, description, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![k.id, k.secret, k.description, k.created_ms],
            )?;
            Ok::<_, IdentityError>(())
        })?;
        Ok(key)
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
    /// key that a part of sluice keeps for itself (its secret is never printed).
    pub fn find_or_create(&self, description: &str) -> Result<AccessKey, IdentityError> {
        if let Some(k) = self
            .list()?
            .into_iter()
            .find(|k| k.description == description)
        {
            return Ok(k);
        }
        self.create(description)
    }

    pub fn list(&self) -> Result<Vec<AccessKey>, IdentityError> {
        self.db.read_blocking(|c| {
            let keys = c.query_vec(
                "SELECT id, secret, description, created_ms FROM access_keys ORDER BY created_ms",
                params![],
                |r| {
                    Ok(AccessKey {
                        id: r.get(0)?,
                        secret: r.get(1)?,
                        description: r.get(2)?,
                        created_ms: r.get(3)?,
                    })
                },
            )?;
            Ok(keys)
        })
    }

    /// Deletes a key. `ResourceNotFound` if there is none with that id.
    pub fn delete(&self, id: &str) -> Result<(), IdentityError> {
        let id = id.to_owned();
        self.db.write_blocking(move |c| {
            let n = c.execute("DELETE FROM access_keys WHERE id = ?1", params![&id])?;
            if n == 0 {
                return Err(IdentityError::ResourceNotFound(format!(
                    "access key {id} does not exist"
                )));
            }
            Ok(())
        })
    }

    /// The secret of a key, for signature verification.
    pub async fn secret(&self, id: &str) -> Result<Option<String>, IdentityError> {
        if let Ok(cache) = self.cache.read()
            && let Some((secret, at)) = cache.get(id)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(secret.clone());
        }
        let key = id.to_owned();
        let secret: Option<String> = self
            .db
            .read(move |c| {
                Ok::<_, IdentityError>(c.query_opt(
                    "SELECT secret FROM access_keys WHERE id = ?1",
                    params![&key],
                    |r| r.get(0),
                )?)
            })
            .await?;
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= 10_000 {
                cache.clear();
            }
            cache.insert(id.to_owned(), (secret.clone(), std::time::Instant::now()));
        }
        Ok(secret)
    }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_list_delete() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("keys", MIGRATIONS);
        let keys = AccessKeys::new(db);
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
        let fresh = AccessKeys::new(keys.db.clone());
        assert!(fresh.secret(&second.id).await.expect("secret").is_none());
        assert!(matches!(
            keys.delete(&second.id),
            Err(IdentityError::ResourceNotFound(_))
        ));
        let own = keys.find_or_create("mine").expect("created");
        assert_eq!(keys.find_or_create("mine").expect("found"), own, "reused");
        assert_ne!(own.id, first.id);
    }
}
