//! The embedded object store: metadata (and small objects, inline) in the shared SQLite
//! database, large objects in files under `<data>/blobs/`.
//!
//! Small objects (≤ [`INLINE_MAX`]) are written with the row that describes them, in one
//! group commit: many concurrent puts share one fsync. A large object is first written to
//! its own file and fsynced (file and directory); only then is the row that references it
//! committed. A crash in between leaves a file that no row references; [`EmbeddedStore::sweep`]
//! removes such files at start. Each blob file belongs to exactly one row (named by a random
//! id, never by content), so deleting or overwriting a row can delete its file right after
//! the commit without a reference count.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use md5::Md5;
use sha2::{Digest, Sha256};
use sluice_db::rusqlite::{Connection, OptionalExtension, params};
use sluice_db::{Db, Migration, now_ms, sync_dir};

use crate::{
    Object, ObjectInfo, ObjectStore, PutOptions, StoreError, validate_bucket_name, validate_key,
};

/// Objects up to this size are stored inline in the database.
pub const INLINE_MAX: usize = 64 * 1024;

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "store-0001",
    sql: "
CREATE TABLE buckets (name TEXT PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    modified_ms INTEGER NOT NULL,
    owner TEXT,
    inline BLOB,
    blob TEXT,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE INDEX objects_blob ON objects (blob) WHERE blob IS NOT NULL;
",
}];

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Db,
    blob_dir: PathBuf,
}

/// An object whose bytes are hashed and, if large, already durable in a blob file: what
/// [`put_in_tx`] commits.
#[derive(Debug, Clone)]
pub struct Prepared {
    size: u64,
    etag: String,
    sha256: String,
    body: PreparedBody,
}

#[derive(Debug, Clone)]
enum PreparedBody {
    Inline(Bytes),
    Blob(String),
}

impl Prepared {
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The blob file holding a large object's bytes (`None` for inline objects).
    pub fn blob_name(&self) -> Option<&str> {
        match &self.body {
            PreparedBody::Blob(n) => Some(n),
            PreparedBody::Inline(_) => None,
        }
    }
}

impl EmbeddedStore {
    /// Opens the store on a database migrated with [`MIGRATIONS`]; blobs live in `blob_dir`.
    pub fn open(db: Db, blob_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(blob_dir)?;
        Ok(EmbeddedStore {
            db,
            blob_dir: blob_dir.to_owned(),
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Hashes `body` and, for a large object, writes it to a fresh blob file and fsyncs it.
    /// Runs on the blocking pool.
    pub async fn prepare(&self, body: Bytes) -> Result<Prepared, StoreError> {
        let dir = self.blob_dir.clone();
        // Hashing a small object takes microseconds: not worth a trip to the blocking pool.
        if body.len() <= INLINE_MAX {
            return prepare_blocking(&dir, body);
        }
        tokio::task::spawn_blocking(move || prepare_blocking(&dir, body))
            .await
            .map_err(|e| StoreError::Backend(format!("prepare task failed: {e}")))?
    }

    /// Removes blob files that no row references: leftovers of a crash between writing a
    /// blob and committing its row, or between a commit and the old blob's deletion.
    /// Call at start, before serving writes.
    pub fn sweep(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        let Ok(shards) = std::fs::read_dir(&self.blob_dir) else {
            return Ok(0);
        };
        for shard in shards {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(shard.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                let referenced: bool = self.db.read_blocking(|c| {
                    Ok::<_, StoreError>(c.query_row(
                        "SELECT EXISTS(SELECT 1 FROM objects WHERE blob = ?1)",
                        [&name],
                        |r| r.get(0),
                    )?)
                })?;
                if !referenced {
                    std::fs::remove_file(f.path())?;
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!(files = removed, "removed unreferenced blob files");
        }
        Ok(removed)
    }

    fn blob_path(&self, name: &str) -> PathBuf {
        blob_path(&self.blob_dir, name)
    }

    /// Deletes blob files of rows that a commit replaced or removed.
    pub fn discard_blobs(&self, names: Vec<String>) {
        for n in names {
            if let Err(e) = std::fs::remove_file(self.blob_path(&n))
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(blob = %n, error = %e, "cannot delete replaced blob; it is swept at next start");
            }
        }
    }
}

fn blob_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(&name[..2.min(name.len())]).join(name)
}

fn prepare_blocking(dir: &Path, body: Bytes) -> Result<Prepared, StoreError> {
    let etag = hex::encode(Md5::digest(&body));
    let sha256 = hex::encode(Sha256::digest(&body));
    let size = body.len() as u64;
    if body.len() <= INLINE_MAX {
        return Ok(Prepared {
            size,
            etag,
            sha256,
            body: PreparedBody::Inline(body),
        });
    }
    use std::io::Write;
    let name = uuid::Uuid::new_v4().simple().to_string();
    let path = blob_path(dir, &name);
    let parent = path
        .parent()
        .ok_or_else(|| StoreError::Backend("blob path has no parent".into()))?;
    std::fs::create_dir_all(parent)?;
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&body)?;
    f.sync_all()?;
    sync_dir(parent)?;
    Ok(Prepared {
        size,
        etag,
        sha256,
        body: PreparedBody::Blob(name),
    })
}

/// Ensures a bucket exists, inside a transaction of the shared database.
pub fn ensure_bucket_in_tx(conn: &Connection, bucket: &str) -> Result<(), StoreError> {
    validate_bucket_name(bucket)?;
    conn.execute(
        "INSERT OR IGNORE INTO buckets (name, created_ms) VALUES (?1, ?2)",
        params![bucket, now_ms()],
    )?;
    Ok(())
}

/// Writes a prepared object inside a transaction of the shared database. Returns the new
/// object's info and the blob file the write replaced, if any; the caller deletes it with
/// [`EmbeddedStore::discard_blobs`] once the transaction committed.
pub fn put_in_tx(
    conn: &Connection,
    bucket: &str,
    key: &str,
    obj: &Prepared,
    opts: &PutOptions,
    now: i64,
) -> Result<(ObjectInfo, Option<String>), StoreError> {
    validate_key(key)?;
    let bucket_exists: bool = conn
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM buckets WHERE name = ?1)")?
        .query_row([bucket], |r| r.get(0))?;
    if !bucket_exists {
        return Err(StoreError::NoSuchBucket(bucket.to_owned()));
    }
    let existing: Option<(Option<String>, Option<String>)> = conn
        .prepare_cached("SELECT owner, blob FROM objects WHERE bucket = ?1 AND key = ?2")?
        .query_row(params![bucket, key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let mut replaced = None;
    if let Some((owner, blob)) = existing {
        if let (Some(new), Some(old)) = (&opts.owner, &owner)
            && new != old
        {
            return Err(StoreError::OwnedByOther {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            });
        }
        replaced = blob;
    }
    let content_type = opts
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let (inline, blob): (Option<&[u8]>, Option<&str>) = match &obj.body {
        PreparedBody::Inline(b) => (Some(b.as_ref()), None),
        PreparedBody::Blob(n) => (None, Some(n.as_str())),
    };
    conn.prepare_cached(
        "INSERT OR REPLACE INTO objects
             (bucket, key, size, etag, sha256, content_type, modified_ms, owner, inline, blob)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        bucket,
        key,
        obj.size as i64,
        obj.etag,
        obj.sha256,
        content_type,
        now,
        opts.owner,
        inline,
        blob
    ])?;
    Ok((
        ObjectInfo {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: obj.size,
            etag: obj.etag.clone(),
            sha256: obj.sha256.clone(),
            content_type,
            last_modified_ms: now,
            owner: opts.owner.clone(),
        },
        replaced,
    ))
}

const INFO_COLUMNS: &str = "bucket, key, size, etag, sha256, content_type, modified_ms, owner";

fn info_from_row(r: &sluice_db::rusqlite::Row<'_>) -> sluice_db::rusqlite::Result<ObjectInfo> {
    Ok(ObjectInfo {
        bucket: r.get(0)?,
        key: r.get(1)?,
        size: r.get::<_, i64>(2)? as u64,
        etag: r.get(3)?,
        sha256: r.get(4)?,
        content_type: r.get(5)?,
        last_modified_ms: r.get(6)?,
        owner: r.get(7)?,
    })
}

#[async_trait]
impl ObjectStore for EmbeddedStore {
    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        let bucket = bucket.to_owned();
        self.db
            .write(move |c| ensure_bucket_in_tx(c, &bucket))
            .await
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        validate_key(key)?;
        let prepared = self.prepare(body).await?;
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let committed = self
            .db
            .write(move |c| put_in_tx(c, &b, &k, &prepared, &opts, now_ms()))
            .await;
        match committed {
            Ok((info, replaced)) => {
                self.discard_blobs(replaced.into_iter().collect());
                Ok(info)
            }
            Err(e) => Err(e),
        }
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Object, StoreError> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let row = self
            .db
            .read(move |c| {
                let sql = format!(
                    "SELECT {INFO_COLUMNS}, inline, blob FROM objects WHERE bucket = ?1 AND key = ?2"
                );
                let row = c
                    .prepare_cached(&sql)?
                    .query_row(params![b, k], |r| {
                        Ok((
                            info_from_row(r)?,
                            r.get::<_, Option<Vec<u8>>>(8)?,
                            r.get::<_, Option<String>>(9)?,
                        ))
                    })
                    .optional()?;
                Ok::<_, StoreError>(row)
            })
            .await?;
        let (info, inline, blob) = row.ok_or_else(|| StoreError::NoSuchKey {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })?;
        let body = match (inline, blob) {
            (Some(b), _) => Bytes::from(b),
            (None, Some(name)) => Bytes::from(tokio::fs::read(self.blob_path(&name)).await?),
            (None, None) => Bytes::new(),
        };
        Ok(Object { info, body })
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, StoreError> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        self.db
            .read(move |c| {
                let sql =
                    format!("SELECT {INFO_COLUMNS} FROM objects WHERE bucket = ?1 AND key = ?2");
                c.prepare_cached(&sql)?
                    .query_row(params![b, k], info_from_row)
                    .optional()?
                    .ok_or(StoreError::NoSuchKey {
                        bucket: b.clone(),
                        key: k.clone(),
                    })
            })
            .await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let blob: Option<String> = self
            .db
            .write(move |c| {
                let blob: Option<Option<String>> = c
                    .query_row(
                        "DELETE FROM objects WHERE bucket = ?1 AND key = ?2 RETURNING blob",
                        params![b, k],
                        |r| r.get(0),
                    )
                    .optional()?;
                Ok::<_, StoreError>(blob.flatten())
            })
            .await?;
        self.discard_blobs(blob.into_iter().collect());
        Ok(())
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        let (b, p) = (bucket.to_owned(), prefix.to_owned());
        let after = start_after.unwrap_or("").to_owned();
        self.db
            .read(move |c| {
                let exists: bool = c.query_row(
                    "SELECT EXISTS(SELECT 1 FROM buckets WHERE name = ?1)",
                    [&b],
                    |r| r.get(0),
                )?;
                if !exists {
                    return Err(StoreError::NoSuchBucket(b.clone()));
                }
                let sql = format!(
                    "SELECT {INFO_COLUMNS} FROM objects
                     WHERE bucket = ?1 AND key > ?2 AND substr(key, 1, length(?3)) = ?3
                     ORDER BY key LIMIT ?4"
                );
                let mut st = c.prepare_cached(&sql)?;
                let rows = st
                    .query_map(params![b, after, p, limit as i64], info_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open() -> (EmbeddedStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "sluice-store-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let db = Db::open(&dir.join("s.db"), MIGRATIONS).expect("db");
        let s = EmbeddedStore::open(db, &dir.join("blobs")).expect("store");
        s.ensure_bucket("b-1").await.expect("bucket");
        (s, dir)
    }

    #[tokio::test]
    async fn small_and_large_objects_round_trip() {
        let (s, _d) = open().await;
        for size in [0usize, 10, INLINE_MAX, INLINE_MAX + 1, 3 * INLINE_MAX] {
            let body = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<_>>());
            let key = format!("k{size}");
            let info = s
                .put("b-1", &key, body.clone(), PutOptions::default())
                .await
                .expect("put");
            assert_eq!(info.size, size as u64);
            assert_eq!(info.etag, hex::encode(Md5::digest(&body)));
            let got = s.get("b-1", &key).await.expect("get");
            assert_eq!(got.body, body);
            assert_eq!(got.info, info);
        }
        let listed = s.list("b-1", "k10", None, 100).await.expect("list");
        assert_eq!(listed.len(), 1);
    }

    #[tokio::test]
    async fn owners_cannot_overwrite_each_other() {
        let (s, _d) = open().await;
        let as_user = |u: &str| PutOptions {
            content_type: None,
            owner: Some(u.into()),
        };
        s.put("b-1", "k", Bytes::from("a"), as_user("alice"))
            .await
            .expect("put");
        s.put("b-1", "k", Bytes::from("b"), as_user("alice"))
            .await
            .expect("same owner overwrites");
        let err = s.put("b-1", "k", Bytes::from("c"), as_user("bob")).await;
        assert!(matches!(err, Err(StoreError::OwnedByOther { .. })));
        assert_eq!(s.get("b-1", "k").await.expect("get").body, Bytes::from("b"));
    }

    #[tokio::test]
    async fn replaced_and_orphaned_blobs_are_removed() {
        let (s, dir) = open().await;
        let big = Bytes::from(vec![7u8; INLINE_MAX + 10]);
        s.put("b-1", "big", big.clone(), PutOptions::default())
            .await
            .expect("put");
        s.put("b-1", "big", big.clone(), PutOptions::default())
            .await
            .expect("overwrite");
        // An orphan, as a crash between blob write and commit would leave it.
        let orphan = s.prepare(big).await.expect("prepare");
        assert!(matches!(orphan.body, PreparedBody::Blob(_)));
        let count = || walk(&dir.join("blobs"));
        assert_eq!(count(), 2);
        assert_eq!(s.sweep().expect("sweep"), 1);
        assert_eq!(count(), 1);
        s.delete("b-1", "big").await.expect("delete");
        assert_eq!(count(), 0);
        assert!(matches!(
            s.get("b-1", "big").await,
            Err(StoreError::NoSuchKey { .. })
        ));
        s.delete("b-1", "big")
            .await
            .expect("deleting a missing key is ok");
    }

    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            walk(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn missing_bucket() {
        let (s, _d) = open().await;
        assert!(matches!(
            s.put("nope", "k", Bytes::from("x"), PutOptions::default())
                .await,
            Err(StoreError::NoSuchBucket(_))
        ));
    }
}
