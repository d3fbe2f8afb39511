//! The object store, written once over the metadata engine (rows; small objects inline)
//! and a blob engine (large objects' bytes): the same code on SQLite and files, or on
//! PostgreSQL and S3.
//!
//! Small objects (≤ [`INLINE_MAX`]) are written with the row that describes them, in one
//! transaction: on SQLite many concurrent puts share one group commit. A large object is
//! first streamed to a blob of its own (durable when [`Blobs::put_stream`] returns); only
//! then is the row that references it committed. A crash in between leaves a blob that no
//! row references; [`EmbeddedStore::sweep`] removes such blobs. Each blob belongs to exactly
//! one row (named by a random id, never by content), so deleting or overwriting a row can
//! delete its blob right after the commit without a reference count.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use md5::Md5;
use sha2::{Digest, Sha256};
use sluice_blobs::{BlobError, Blobs};
use sluice_meta::{Meta, Migration, Tx, now_ms, params};

use crate::verify::{Damage, Expected, Problem, ScrubReport, Subject, verified, verify_bytes};
use crate::{
    BucketInfo, ByteRange, ByteStream, CopySource, MAX_PART_BYTES, MIN_PART_BYTES, MultipartInfo,
    NewObject, Object, ObjectInfo, ObjectStore, ObjectStream, PartInfo, PutOptions, SourceCheck,
    StoreError, UploadMarker, validate_bucket_name, validate_key,
};

/// Objects up to this size are stored inline in the database.
pub const INLINE_MAX: usize = 64 * 1024;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
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
    },
    Migration {
        name: "store-0002",
        sql: "
ALTER TABLE objects ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
CREATE TABLE multipart_uploads (
    upload_id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    content_type TEXT,
    owner TEXT,
    metadata TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE multipart_parts (
    upload_id TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    modified_ms INTEGER NOT NULL,
    inline BLOB,
    blob TEXT,
    PRIMARY KEY (upload_id, part_number)
) WITHOUT ROWID;
CREATE INDEX multipart_parts_blob ON multipart_parts (blob) WHERE blob IS NOT NULL;
",
    },
    Migration {
        name: "store-0003",
        sql: "
CREATE INDEX multipart_uploads_by_key ON multipart_uploads (bucket, key, upload_id);
ALTER TABLE objects ADD COLUMN parts TEXT;
",
    },
    // What each user stores (the per-user storage limit).
    Migration {
        name: "store-0004",
        sql: "CREATE INDEX objects_by_owner ON objects (owner) WHERE owner IS NOT NULL;",
    },
    // CRC-32 of every BLOCK of a blob object (4 bytes each, big-endian): ranged reads are
    // verified block by block (crate::verify::verified_blocks). NULL for inline objects and
    // for objects written before this migration (their ranged reads are not verified).
    Migration {
        name: "store-0005",
        sql: "ALTER TABLE objects ADD COLUMN blocks BLOB;",
    },
    // Blobs another part's rows reference (a function's code): `sweep` keeps them.
    Migration {
        name: "store-0006",
        sql: "CREATE TABLE blob_holds (blob TEXT PRIMARY KEY, holder TEXT NOT NULL, created_ms INTEGER NOT NULL);",
    },
    // S3 event notifications (crate::notifications): each bucket's configuration, and the
    // outbox of events its writes produced.
    Migration {
        name: "store-0007",
        sql: "
CREATE TABLE bucket_notifications (bucket TEXT PRIMARY KEY, config TEXT NOT NULL);
CREATE TABLE object_notifications (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
",
    },
    // Bucket policies (PutBucketPolicy): the document as stored, validated by the S3 edge.
    // Deleted with the bucket, so a bucket created again under the name starts without one.
    Migration {
        name: "store-0008",
        sql: "CREATE TABLE bucket_policies (bucket TEXT PRIMARY KEY, policy TEXT NOT NULL);",
    },
    // Tags (S3's tagging): an object's and a multipart upload's (JSON `[[key, value], …]`,
    // NULL: none), and a bucket's, deleted with the bucket.
    Migration {
        name: "store-0009",
        sql: "
ALTER TABLE objects ADD COLUMN tags TEXT;
ALTER TABLE multipart_uploads ADD COLUMN tags TEXT;
CREATE TABLE bucket_tags (bucket TEXT PRIMARY KEY, tags TEXT NOT NULL);
",
    },
    // The standard headers S3 keeps with an object (`crate::ObjectHeaders` as JSON; NULL:
    // none), of objects and of multipart uploads.
    Migration {
        name: "store-0010",
        sql: "
ALTER TABLE objects ADD COLUMN headers TEXT;
ALTER TABLE multipart_uploads ADD COLUMN headers TEXT;
",
    },
    // A bucket's configurations the S3 edge keeps and answers (CORS, lifecycle, encryption,
    // …: one document per kind), deleted with the bucket.
    Migration {
        name: "store-0011",
        sql: "CREATE TABLE bucket_configs (bucket TEXT NOT NULL, kind TEXT NOT NULL, config TEXT NOT NULL, PRIMARY KEY (bucket, kind));",
    },
    // A part's flexible checksum (`ALGORITHM:base64`), kept to answer ListParts and to
    // compute the completed object's checksum.
    Migration {
        name: "store-0012",
        sql: "ALTER TABLE multipart_parts ADD COLUMN checksum TEXT;",
    },
    // Versioning (crate::versions): the current version's id in `objects` ('null' when
    // written unversioned), every other version and every delete marker in
    // `object_versions`.
    Migration {
        name: "store-0013",
        sql: "
ALTER TABLE objects ADD COLUMN version_id TEXT NOT NULL DEFAULT 'null';
CREATE TABLE object_versions (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    version_id TEXT NOT NULL,
    marker INTEGER NOT NULL DEFAULT 0,
    noncurrent_ms INTEGER,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    modified_ms INTEGER NOT NULL,
    owner TEXT,
    inline BLOB,
    blob TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    parts TEXT,
    blocks BLOB,
    tags TEXT,
    headers TEXT,
    PRIMARY KEY (bucket, key, seq)
) WITHOUT ROWID;
CREATE INDEX object_versions_id ON object_versions (bucket, key, version_id);
CREATE INDEX object_versions_blob ON object_versions (blob) WHERE blob IS NOT NULL;
CREATE INDEX object_versions_owner ON object_versions (owner) WHERE owner IS NOT NULL;
",
    },
];

/// A blob written for another part's row ([`EmbeddedStore::put_held_blob`]): durable, not
/// yet held. Until [`hold_blob_in_tx`] commits, [`EmbeddedStore::sweep`] may remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBlob {
    pub id: String,
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
}

/// Records, in the caller's transaction, that `holder` references blob `id`: sweeping keeps
/// it from then on.
pub fn hold_blob_in_tx(tx: &Tx<'_>, id: &str, holder: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO blob_holds (blob, holder, created_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (blob) DO UPDATE SET holder = excluded.holder",
        params![id, holder, now_ms()],
    )?;
    Ok(())
}

/// Ends the hold on blob `id` in the caller's transaction; once it is durable the caller
/// deletes the blob ([`EmbeddedStore::delete_held_blob`]), or the next sweep does.
pub fn release_blob_in_tx(tx: &Tx<'_>, id: &str) -> Result<(), StoreError> {
    tx.execute("DELETE FROM blob_holds WHERE blob = ?1", params![id])?;
    Ok(())
}

/// The stored parts a completion lists, in its order, checked as S3 checks them: at least
/// one, ascending part numbers, each uploaded with that ETag, every one but the last at
/// least [`MIN_PART_BYTES`]. `fields` gives a stored part's number, size and ETag.
fn chosen_parts<'a, P>(
    parts: &[(u32, String)],
    stored: &'a [P],
    fields: impl Fn(&P) -> (u32, u64, &String),
) -> Result<Vec<&'a P>, StoreError> {
    if parts.is_empty() {
        return Err(StoreError::InvalidPart(
            "a multipart upload needs at least one part".into(),
        ));
    }
    if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(StoreError::InvalidPartOrder);
    }
    let mut chosen = Vec::with_capacity(parts.len());
    for (i, (n, etag)) in parts.iter().enumerate() {
        let want = etag.trim_matches('"');
        let part = stored
            .iter()
            .find(|p| {
                let (number, _, e) = fields(p);
                number == *n && e == want
            })
            .ok_or_else(|| {
                StoreError::InvalidPart(format!("part {n} with ETag {etag} was not uploaded"))
            })?;
        let size = fields(part).1;
        if i + 1 < parts.len() && size < MIN_PART_BYTES {
            return Err(StoreError::EntityTooSmall {
                part: *n,
                size,
                min: MIN_PART_BYTES,
            });
        }
        chosen.push(part);
    }
    Ok(chosen)
}

/// An object's row as reads need it: its info, inline bytes or blob, and block CRCs.
type ObjectRow = (ObjectInfo, Option<Vec<u8>>, Option<String>, Option<Vec<u8>>);

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Meta,
    blobs: Arc<dyn Blobs>,
}

/// An object whose bytes are hashed and, if large, already durable in a blob: what
/// [`put_in_tx`] commits.
#[derive(Debug, Clone)]
pub struct Prepared {
    size: u64,
    etag: String,
    sha256: String,
    body: PreparedBody,
    /// Number and size of each part, for an object assembled from a multipart upload.
    parts: Option<Vec<(u32, u64)>>,
    /// The CRC-32 of each block of a blob object ([`crate::verify::BLOCK`]).
    blocks: Option<Vec<u8>>,
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
    /// The MD5 of the bytes in hex (the ETag of a single-part object).
    pub fn md5(&self) -> &str {
        &self.etag
    }
    /// The blob holding a large object's bytes (`None` for inline objects).
    pub fn blob_name(&self) -> Option<&str> {
        match &self.body {
            PreparedBody::Blob(n) => Some(n),
            PreparedBody::Inline(_) => None,
        }
    }
}

/// MD5, SHA-256 and size of the bytes that went through a stream.
#[derive(Default)]
struct Hashes {
    md5: Md5,
    sha: Sha256,
    size: u64,
    blocks: crate::verify::BlockCrcs,
}

impl Hashes {
    fn update(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        self.sha.update(bytes);
        self.size += bytes.len() as u64;
        self.blocks.update(bytes);
    }
}

/// A small object, kept in its row.
fn inline(body: Bytes) -> Prepared {
    Prepared {
        size: body.len() as u64,
        etag: hex::encode(Md5::digest(&body)),
        sha256: hex::encode(Sha256::digest(&body)),
        body: PreparedBody::Inline(body),
        parts: None,
        blocks: None,
    }
}

/// `body`, hashed into `hashes` as it passes.
fn hashing(body: ByteStream, hashes: Arc<Mutex<Hashes>>) -> ByteStream {
    Box::pin(body.inspect(move |chunk| {
        if let Ok(bytes) = chunk
            && let Ok(mut h) = hashes.lock()
        {
            h.update(bytes);
        }
    }))
}

/// A body's failure as the store's error: damage found by a verified read
/// ([`crate::verify`]) stays [`StoreError::Corrupt`], anything else is i/o.
fn body_error(e: std::io::Error) -> StoreError {
    match Damage::of(&e) {
        Some(d) => StoreError::Corrupt(Box::new(d.clone())),
        None => StoreError::Io(e),
    }
}

/// A blob engine's error as the store's, keeping damage found while its body was read.
fn blob_error(e: BlobError) -> StoreError {
    match e {
        BlobError::Body(io) => body_error(io),
        other => other.into(),
    }
}

/// Reads a whole stream into memory, refusing more than `max` bytes; damage found by a
/// verified read is [`StoreError::Corrupt`].
async fn collect(mut body: ByteStream, max: u64) -> Result<Bytes, StoreError> {
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| match Damage::of(&e) {
            Some(d) => StoreError::Corrupt(Box::new(d.clone())),
            None => BlobError::from(e).into(),
        })?;
        if (out.len() + chunk.len()) as u64 > max {
            return Err(StoreError::Backend(format!(
                "an object read into memory is larger than {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// `body` with its first chunk read now: a read that fails at once — an engine error, or
/// damage found by a verified read of an object that fits in one chunk — is an error
/// before anything is answered (a 500) rather than a response cut short. Holds one chunk.
async fn read_ahead(mut body: ByteStream) -> Result<ByteStream, StoreError> {
    match body.next().await {
        None => Ok(Box::pin(futures_util::stream::empty())),
        Some(Err(e)) => Err(match Damage::of(&e) {
            Some(d) => StoreError::Corrupt(Box::new(d.clone())),
            None => BlobError::from(e).into(),
        }),
        Some(Ok(first)) => Ok(Box::pin(
            futures_util::stream::once(async move { Ok(first) }).chain(body),
        )),
    }
}

/// Whether the bytes `range` names are all of an object of `size` bytes: only such reads
/// can be checked against the object's digest.
fn covers_all(range: Option<(u64, u64)>, size: u64) -> bool {
    match range {
        None => true,
        Some((first, last)) => first == 0 && last.saturating_add(1) >= size,
    }
}

fn object_subject(bucket: &str, key: &str, blob: Option<&str>) -> Subject {
    Subject {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        part: None,
        blob: blob.map(str::to_owned),
    }
}

/// Rows [`EmbeddedStore::scrub`] reads at a time (inline objects come with their row: at
/// most 64 × 64 KiB in memory).
const SCRUB_PAGE: i64 = 64;

/// What reading one object's (or part's) bytes whole found.
enum Scrubbed {
    /// Intact: this many bytes read and checked.
    Ok(u64),
    /// The blob is not there (the caller checks whether the row still names it).
    Missing,
    Problem(Problem),
}

impl EmbeddedStore {
    /// The store over metadata migrated with [`MIGRATIONS`] and a blob engine.
    pub fn new(db: Meta, blobs: Arc<dyn Blobs>) -> Self {
        EmbeddedStore { db, blobs }
    }

    /// [`EmbeddedStore::new`] with the embedded blob engine on `blob_dir`.
    pub fn open(db: Meta, blob_dir: &Path) -> Result<Self, StoreError> {
        Ok(EmbeddedStore::new(
            db,
            Arc::new(sluice_blobs::fs::FsBlobs::open(blob_dir)?),
        ))
    }

    pub fn db(&self) -> &Meta {
        &self.db
    }

    /// The blob engine.
    pub fn blobs(&self) -> &Arc<dyn Blobs> {
        &self.blobs
    }

    /// Hashes `body` and, for a large object, writes it to a new blob (durable when this
    /// returns).
    pub async fn prepare(&self, body: Bytes) -> Result<Prepared, StoreError> {
        if body.len() <= INLINE_MAX {
            return Ok(inline(body));
        }
        self.write_blob(sluice_blobs::once(body)).await
    }

    /// Like [`prepare`](Self::prepare), for a body that arrives in chunks: it is never held
    /// whole in memory. Up to [`INLINE_MAX`] bytes are gathered and kept inline; past that,
    /// every chunk is hashed and goes to a new blob. If the body fails (an error item) or
    /// this future is dropped, no blob is left (see [`Blobs::put_stream`]).
    pub async fn prepare_stream(&self, mut body: ByteStream) -> Result<Prepared, StoreError> {
        let mut head = bytes::BytesMut::new();
        let overflow = loop {
            match body.next().await {
                None => return Ok(inline(head.freeze())),
                Some(Err(e)) => return Err(body_error(e)),
                Some(Ok(chunk)) if head.len() + chunk.len() > INLINE_MAX => break chunk,
                Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            }
        };
        let whole: ByteStream =
            Box::pin(futures_util::stream::iter([Ok(head.freeze()), Ok(overflow)]).chain(body));
        self.write_blob(whole).await
    }

    /// Writes `body` to a new blob, hashing it on the way.
    async fn write_blob(&self, body: ByteStream) -> Result<Prepared, StoreError> {
        let hashes = Arc::new(Mutex::new(Hashes::default()));
        let id = sluice_blobs::new_id();
        self.blobs
            .put_stream(&id, hashing(body, hashes.clone()))
            .await
            .map_err(blob_error)?;
        let h = std::mem::take(
            &mut *hashes
                .lock()
                .map_err(|_| StoreError::Backend("hash state poisoned".into()))?,
        );
        Ok(Prepared {
            size: h.size,
            etag: hex::encode(h.md5.finalize()),
            sha256: hex::encode(h.sha.finalize()),
            body: PreparedBody::Blob(id),
            parts: None,
            blocks: Some(h.blocks.finish()),
        })
    }

    /// A bucket's notification configuration (`None`: none).
    pub async fn notifications(
        &self,
        bucket: &str,
    ) -> Result<Option<crate::notifications::NotificationConfig>, StoreError> {
        let b = bucket.to_owned();
        self.db
            .read(move |c| {
                require_bucket(c, &b)?;
                Ok::<_, StoreError>(crate::notifications::load(c, &b)?)
            })
            .await
    }

    /// Replaces a bucket's notification configuration (an empty one removes it).
    pub async fn set_notifications(
        &self,
        bucket: &str,
        config: crate::notifications::NotificationConfig,
    ) -> Result<(), StoreError> {
        let b = bucket.to_owned();
        self.db
            .write(move |c| {
                require_bucket(c, &b)?;
                crate::notifications::store(c, &b, &config)?;
                Ok::<_, StoreError>(())
            })
            .await
    }

    /// A bucket's policy document (`None`: the bucket has none).
    pub async fn bucket_policy(&self, bucket: &str) -> Result<Option<String>, StoreError> {
        let b = bucket.to_owned();
        self.db
            .read(move |c| {
                require_bucket(c, &b)?;
                Ok::<_, StoreError>(c.query_opt(
                    "SELECT policy FROM bucket_policies WHERE bucket = ?1",
                    params![&b],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    /// Sets (`Some`) or removes (`None`) a bucket's policy document; `NoSuchBucket` if the
    /// bucket does not exist.
    pub async fn set_bucket_policy(
        &self,
        bucket: &str,
        policy: Option<String>,
    ) -> Result<(), StoreError> {
        let b = bucket.to_owned();
        self.db
            .write(move |c| {
                require_bucket(c, &b)?;
                match &policy {
                    Some(p) => c.execute(
                        "INSERT INTO bucket_policies (bucket, policy) VALUES (?1, ?2)
                         ON CONFLICT (bucket) DO UPDATE SET policy = excluded.policy",
                        params![&b, p],
                    )?,
                    None => {
                        c.execute("DELETE FROM bucket_policies WHERE bucket = ?1", params![&b])?
                    }
                };
                Ok::<_, StoreError>(())
            })
            .await
    }

    /// Writes `body` to a new blob for another part's row (a function's code), hashing it:
    /// durable when this returns; a body longer than `max` bytes fails and leaves no
    /// blob. The caller commits [`hold_blob_in_tx`] with its row.
    pub async fn put_held_blob(&self, body: ByteStream, max: u64) -> Result<HeldBlob, StoreError> {
        let mut seen = 0u64;
        let capped: ByteStream = Box::pin(body.map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if seen > max {
                return Err(std::io::Error::other(format!(
                    "the body is larger than {max} bytes"
                )));
            }
            Ok(chunk)
        }));
        let prepared = self.write_blob(capped).await?;
        let PreparedBody::Blob(id) = prepared.body else {
            return Err(StoreError::Backend(
                "a blob write returned inline bytes".into(),
            ));
        };
        Ok(HeldBlob {
            id,
            size: prepared.size,
            sha256: prepared.sha256,
        })
    }

    /// The bytes of a held blob.
    pub async fn read_held_blob(&self, id: &str) -> Result<ByteStream, StoreError> {
        self.blobs.get_range(id, None).await.map_err(blob_error)
    }

    /// Deletes a blob no longer held (absent is fine).
    pub async fn delete_held_blob(&self, id: &str) -> Result<(), StoreError> {
        self.blobs.delete(id).await.map_err(blob_error)
    }

    /// Deletes blobs that no row references and that are older than `grace`: leftovers of
    /// a crash between writing a blob and committing its row, or between a commit and the
    /// old blob's deletion. A blob younger than `grace` may belong to a write still in
    /// flight (in this process or, on shared engines, another); at start, with the data
    /// directory locked and nothing in flight, `grace` can be zero.
    pub async fn sweep(&self, grace: std::time::Duration) -> Result<usize, StoreError> {
        let cutoff = now_ms() - i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let partial = self.blobs.remove_partial(cutoff + 1).await?;
        if partial > 0 {
            tracing::info!(writes = partial, "removed what unfinished blob writes left");
        }
        let mut removed = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self.blobs.list(after.as_deref(), 1000).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.id.clone());
            let candidates: Vec<String> = page
                .into_iter()
                .filter(|e| e.modified_ms <= cutoff)
                .map(|e| e.id)
                .collect();
            let unreferenced: Vec<String> = self
                .db
                .read(move |c| {
                    let mut out = Vec::new();
                    for id in candidates {
                        let used = c.exists(
                            "SELECT 1 FROM objects WHERE blob = ?1
                             UNION ALL SELECT 1 FROM object_versions WHERE blob = ?1
                             UNION ALL SELECT 1 FROM multipart_parts WHERE blob = ?1
                             UNION ALL SELECT 1 FROM blob_holds WHERE blob = ?1",
                            params![id],
                        )?;
                        if !used {
                            out.push(id);
                        }
                    }
                    Ok::<_, StoreError>(out)
                })
                .await?;
            for id in unreferenced {
                self.blobs.delete(&id).await?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(blobs = removed, engine = %self.blobs.describe(), "removed unreferenced blobs");
        }
        Ok(removed)
    }

    /// Reads every object's bytes (every version's, and every stored part of the multipart
    /// uploads in progress) whole and checks them against the digest written with them: the deep
    /// check of `sluice doctor --deep`. Read-only; rows are read a page at a time and blobs
    /// streamed, so memory stays bounded whatever the store holds. A blob that is missing
    /// is reported only if its row still names it when it is found missing (an object
    /// replaced meanwhile by a running server is not a problem). Fails only when an engine
    /// cannot be used (unavailable, or the metadata cannot be read); what is wrong with
    /// single objects is in the report.
    pub async fn scrub(&self) -> Result<ScrubReport, StoreError> {
        type ObjectRow = (String, String, i64, String, Option<Vec<u8>>, Option<String>);
        let mut report = ScrubReport::default();
        let (mut bucket, mut key) = (String::new(), String::new());
        loop {
            let (b, k) = (bucket.clone(), key.clone());
            let page: Vec<ObjectRow> = self
                .db
                .read(move |c| {
                    let rows = c.query_vec(
                        "SELECT bucket, key, size, sha256, inline, blob FROM objects
                         WHERE bucket > ?1 OR (bucket = ?1 AND key > ?2)
                         ORDER BY bucket, key LIMIT ?3",
                        params![b, k, SCRUB_PAGE],
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
                    )?;
                    Ok::<_, StoreError>(rows)
                })
                .await?;
            let Some(last) = page.last() else { break };
            (bucket, key) = (last.0.clone(), last.1.clone());
            for (b, k, size, sha256, inline, blob) in page {
                let subject = object_subject(&b, &k, blob.as_deref());
                self.scrub_object(
                    &mut report,
                    subject,
                    &sha256,
                    size,
                    inline,
                    blob,
                    move |c| {
                        c.query_opt(
                            "SELECT blob FROM objects WHERE bucket = ?1 AND key = ?2",
                            params![b, k],
                            |r| r.get(0),
                        )
                    },
                )
                .await?;
            }
        }

        // Noncurrent versions (delete markers have no bytes), by (bucket, key, seq).
        type VersionRow = (
            String,
            String,
            i64,
            String,
            i64,
            String,
            Option<Vec<u8>>,
            Option<String>,
        );
        let (mut bucket, mut key, mut seq) = (String::new(), String::new(), i64::MIN);
        loop {
            let (b, k, q) = (bucket.clone(), key.clone(), seq);
            let page: Vec<VersionRow> = self
                .db
                .read(move |c| {
                    let rows = c.query_vec(
                        "SELECT bucket, key, seq, version_id, size, sha256, inline, blob
                         FROM object_versions
                         WHERE marker = 0 AND (bucket > ?1 OR (bucket = ?1 AND key > ?2)
                             OR (bucket = ?1 AND key = ?2 AND seq > ?3))
                         ORDER BY bucket, key, seq LIMIT ?4",
                        params![b, k, q, SCRUB_PAGE],
                        |r| {
                            Ok((
                                r.get(0)?,
                                r.get(1)?,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                                r.get(6)?,
                                r.get(7)?,
                            ))
                        },
                    )?;
                    Ok::<_, StoreError>(rows)
                })
                .await?;
            let Some(last) = page.last() else { break };
            (bucket, key, seq) = (last.0.clone(), last.1.clone(), last.2);
            for (b, k, q, version, size, sha256, inline, blob) in page {
                let label = format!("{k} (version {version})");
                let subject = object_subject(&b, &label, blob.as_deref());
                self.scrub_object(
                    &mut report,
                    subject,
                    &sha256,
                    size,
                    inline,
                    blob,
                    move |c| {
                        c.query_opt(
                            "SELECT blob FROM object_versions
                         WHERE bucket = ?1 AND key = ?2 AND seq = ?3",
                            params![b, k, q],
                            |r| r.get(0),
                        )
                    },
                )
                .await?;
            }
        }

        type PartRow = (
            String,
            u32,
            i64,
            String,
            Option<Vec<u8>>,
            Option<String>,
            String,
            String,
        );
        let (mut upload, mut number) = (String::new(), 0u32);
        loop {
            let (u, n) = (upload.clone(), number);
            let page: Vec<PartRow> = self
                .db
                .read(move |c| {
                    let rows = c.query_vec(
                        "SELECT p.upload_id, p.part_number, p.size, p.etag, p.inline, p.blob,
                                u.bucket, u.key
                         FROM multipart_parts p
                         JOIN multipart_uploads u ON u.upload_id = p.upload_id
                         WHERE p.upload_id > ?1 OR (p.upload_id = ?1 AND p.part_number > ?2)
                         ORDER BY p.upload_id, p.part_number LIMIT ?3",
                        params![u, n, SCRUB_PAGE],
                        |r| {
                            Ok((
                                r.get(0)?,
                                r.get(1)?,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                                r.get(6)?,
                                r.get(7)?,
                            ))
                        },
                    )?;
                    Ok::<_, StoreError>(rows)
                })
                .await?;
            let Some(last) = page.last() else { break };
            (upload, number) = (last.0.clone(), last.1);
            for (u, n, size, etag, inline, blob, b, k) in page {
                let subject = Subject {
                    bucket: b,
                    key: k,
                    part: Some((u.clone(), n)),
                    blob: blob.clone(),
                };
                let Some(want) = Expected::md5_hex(&etag) else {
                    report.problems.push(Problem::NoChecksum(subject, etag));
                    continue;
                };
                match self
                    .scrub_one(subject.clone(), want, size as u64, inline)
                    .await?
                {
                    Scrubbed::Ok(n) => report.bytes += n,
                    Scrubbed::Problem(p) => report.problems.push(p),
                    Scrubbed::Missing => {
                        let now: Option<Option<String>> = self
                            .db
                            .read(move |c| {
                                Ok::<_, StoreError>(c.query_opt(
                                    "SELECT blob FROM multipart_parts
                                     WHERE upload_id = ?1 AND part_number = ?2",
                                    params![u, n],
                                    |r| r.get(0),
                                )?)
                            })
                            .await?;
                        if now.flatten() == blob {
                            report.problems.push(Problem::Missing(subject));
                        }
                    }
                }
                report.parts += 1;
            }
        }
        Ok(report)
    }

    /// Checks one object row (a current version or another) for [`Self::scrub`] against
    /// its SHA-256. A blob found missing is a problem only if the row, read again by
    /// `blob_now`, still names it (it was not replaced meanwhile).
    #[allow(clippy::too_many_arguments)]
    async fn scrub_object<F>(
        &self,
        report: &mut ScrubReport,
        subject: Subject,
        sha256: &str,
        size: i64,
        inline: Option<Vec<u8>>,
        blob: Option<String>,
        blob_now: F,
    ) -> Result<(), StoreError>
    where
        F: FnOnce(&Tx<'_>) -> sluice_meta::MetaResult<Option<Option<String>>> + Send + 'static,
    {
        report.objects += 1;
        let Some(want) = Expected::sha256_hex(sha256) else {
            report
                .problems
                .push(Problem::NoChecksum(subject, sha256.to_owned()));
            return Ok(());
        };
        match self
            .scrub_one(subject.clone(), want, size as u64, inline)
            .await?
        {
            Scrubbed::Ok(n) => report.bytes += n,
            Scrubbed::Problem(p) => report.problems.push(p),
            Scrubbed::Missing => {
                let now = self
                    .db
                    .read(move |c| Ok::<_, StoreError>(blob_now(c)?))
                    .await?;
                if now.flatten() == blob {
                    report.problems.push(Problem::Missing(subject));
                }
            }
        }
        Ok(())
    }

    /// Reads the bytes `subject` names whole (from `inline`, or streamed from its blob)
    /// and checks them against `want` and `size`. `Err` only when the blob engine is
    /// unavailable (the rest of the check would fail the same way).
    async fn scrub_one(
        &self,
        subject: Subject,
        want: Expected,
        size: u64,
        inline: Option<Vec<u8>>,
    ) -> Result<Scrubbed, StoreError> {
        if let Some(bytes) = inline {
            return Ok(match verify_bytes(&bytes, want, size, &subject) {
                Ok(()) => Scrubbed::Ok(bytes.len() as u64),
                Err(d) => Scrubbed::Problem(Problem::Damaged(*d)),
            });
        }
        let Some(blob) = subject.blob.clone() else {
            // No bytes stored: right only for an empty object.
            return Ok(if size == 0 {
                Scrubbed::Ok(0)
            } else {
                Scrubbed::Problem(Problem::Damaged(Damage {
                    subject,
                    detail: format!("holds no bytes where {size} were written"),
                }))
            });
        };
        let body = match self.blobs.get_range(&blob, None).await {
            Ok(body) => body,
            Err(BlobError::NotFound(_)) => return Ok(Scrubbed::Missing),
            Err(e) if e.is_unavailable() => return Err(e.into()),
            Err(e) => {
                return Ok(Scrubbed::Problem(Problem::Unreadable(
                    subject,
                    e.to_string(),
                )));
            }
        };
        let mut body = verified(body, want, size, subject.clone());
        let mut read = 0u64;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => read += c.len() as u64,
                Err(e) => {
                    return Ok(Scrubbed::Problem(match Damage::of(&e) {
                        Some(d) => Problem::Damaged(d.clone()),
                        None => Problem::Unreadable(subject, e.to_string()),
                    }));
                }
            }
        }
        Ok(Scrubbed::Ok(read))
    }

    /// An object's row — its current version's, or the version `version`'s: its metadata
    /// and where its bytes are (inline, or a blob).
    async fn object_row(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
    ) -> Result<ObjectRow, StoreError> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        if let Some(v) = version {
            let v = v.to_owned();
            let (info, inline, blob, blocks, _) = self
                .db
                .read(move |c| crate::versions::version_row(c, &b, &k, &v))
                .await?;
            return Ok((info, inline, blob, blocks));
        }
        let row = self
            .db
            .read(move |c| {
                let sql = format!(
                    "SELECT {INFO_COLUMNS}, inline, blob, blocks FROM objects WHERE bucket = ?1 AND key = ?2"
                );
                let row = c.query_opt(&sql, params![b, k], |r| {
                    Ok((
                        info_from_row(r)?,
                        r.get::<Option<Vec<u8>>>(INFO_LEN)?,
                        r.get::<Option<String>>(INFO_LEN + 1)?,
                        r.get::<Option<Vec<u8>>>(INFO_LEN + 2)?,
                    ))
                })?;
                Ok::<_, StoreError>(row)
            })
            .await?;
        row.ok_or_else(|| StoreError::NoSuchKey {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The object's metadata and the bytes `first..=last` of it (all when `range` is
    /// `None`; a range past the end is cut at the end), streamed. If the object is replaced
    /// between reading its row and opening its blob, the row is read again.
    async fn open_object(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<(ObjectInfo, ByteStream), StoreError> {
        for _ in 0..4 {
            let (info, inline, blob, blocks) = self.object_row(bucket, key, version).await?;
            let span = range.map(|r| (r.first, r.last));
            let subject = object_subject(bucket, key, blob.as_deref());
            match (inline, blob) {
                (Some(bytes), _) => {
                    // In memory already: checked whole, whatever the range.
                    if let Some(want) = Expected::sha256_hex(&info.sha256) {
                        verify_bytes(&bytes, want, info.size, &subject)
                            .map_err(StoreError::Corrupt)?;
                    }
                    let bytes = Bytes::from(bytes);
                    let part = match span {
                        Some((first, last)) => {
                            let len = bytes.len() as u64;
                            let start = first.min(len) as usize;
                            let end = last.saturating_add(1).min(len) as usize;
                            bytes.slice(start..end.max(start))
                        }
                        None => bytes,
                    };
                    return Ok((info, sluice_blobs::once(part)));
                }
                (None, Some(id)) => {
                    // Reads of the whole object are checked against its SHA-256; ranged
                    // reads block by block against the blocks' CRC-32 (crate::verify),
                    // reading from the first block's start to the last block's end.
                    let whole = covers_all(span, info.size);
                    let blockwise = match (span, &blocks) {
                        (Some((first, last)), Some(crcs))
                            if !whole && first <= last && first < info.size =>
                        {
                            Some((first, last.min(info.size - 1), crcs.clone()))
                        }
                        _ => None,
                    };
                    let read_span = match &blockwise {
                        Some((first, last, _)) => {
                            Some(crate::verify::block_span(*first, *last, info.size))
                        }
                        None => span,
                    };
                    match self.blobs.get_range(&id, read_span).await {
                        Ok(body) => {
                            let body = match (blockwise, whole) {
                                (Some((first, last, crcs)), _) => crate::verify::verified_blocks(
                                    body, crcs, info.size, first, last, subject,
                                ),
                                (None, true) => match Expected::sha256_hex(&info.sha256) {
                                    Some(want) => verified(body, want, info.size, subject),
                                    None => body,
                                },
                                (None, false) => body,
                            };
                            return Ok((info, read_ahead(body).await?));
                        }
                        // Replaced (and its blob deleted) meanwhile: read the row again.
                        Err(BlobError::NotFound(_)) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                (None, None) => return Ok((info, sluice_blobs::once(Bytes::new()))),
            }
        }
        Err(StoreError::Backend(format!(
            "object {bucket}/{key} kept changing while it was being read"
        )))
    }

    /// Commits a prepared part of a multipart upload, replacing a part of the same number.
    /// The prepared blob (if any) is deleted when the commit fails.
    async fn commit_part(
        &self,
        upload_id: &str,
        part_number: u32,
        prepared: Prepared,
        checksum: Option<(String, String)>,
    ) -> Result<PartInfo, StoreError> {
        let stored_sum = checksum.as_ref().map(|(a, v)| format!("{a}:{v}"));
        let blob = prepared.blob_name().map(str::to_owned);
        let id = upload_id.to_owned();
        let committed = self
            .db
            .write(move |c| {
                let exists: bool = c.query_row(
                    "SELECT EXISTS(SELECT 1 FROM multipart_uploads WHERE upload_id = ?1)",
                    params![&id],
                    |r| r.get(0),
                )?;
                if !exists {
                    return Err(StoreError::NoSuchUpload(id.clone()));
                }
                let replaced: Option<Option<String>> = c.query_opt(
                    "SELECT blob FROM multipart_parts WHERE upload_id = ?1 AND part_number = ?2",
                    params![id, part_number],
                    |r| r.get(0),
                )?;
                let (inline, blob): (Option<&[u8]>, Option<&str>) = match &prepared.body {
                    PreparedBody::Inline(b) => (Some(b.as_ref()), None),
                    PreparedBody::Blob(n) => (None, Some(n.as_str())),
                };
                let now = now_ms();
                c.execute(
                    "INSERT INTO multipart_parts
                         (upload_id, part_number, size, etag, modified_ms, inline, blob, checksum)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (upload_id, part_number) DO UPDATE SET size = excluded.size,
                         etag = excluded.etag, modified_ms = excluded.modified_ms,
                         inline = excluded.inline, blob = excluded.blob,
                         checksum = excluded.checksum",
                    params![
                        id,
                        part_number,
                        prepared.size as i64,
                        prepared.etag,
                        now,
                        inline,
                        blob,
                        stored_sum
                    ],
                )?;
                let part = PartInfo {
                    part_number,
                    size: prepared.size,
                    etag: prepared.etag.clone(),
                    last_modified_ms: now,
                    checksum: checksum.clone(),
                };
                Ok((part, replaced.flatten()))
            })
            .await;
        let committed = committed.map(|(part, replaced)| (part, replaced.into_iter().collect()));
        self.settle_commit(committed, blob.into_iter().collect())
            .await
    }

    /// First half of completing a multipart upload: checks the listed parts (ascending
    /// part numbers, ETags as `upload_part` returned them, every part but the last at least
    /// [`MIN_PART_BYTES`]) and assembles them into one object with S3's multipart ETag and
    /// the SHA-256 of the whole, written to a new durable blob when large (part by part,
    /// never whole in memory). Nothing is committed: [`complete_multipart_in_tx`] does that,
    /// inside the caller's transaction. Until it commits, the blob is the caller's: delete
    /// it with [`discard_blobs`](Self::discard_blobs) if the commit fails.
    pub async fn assemble_multipart(
        &self,
        upload_id: &str,
        parts: Vec<(u32, String)>,
    ) -> Result<AssembledMultipart, StoreError> {
        let upload = self.multipart(upload_id).await?;
        // Where each listed part's bytes are, checked against what was uploaded.
        let id = upload_id.to_owned();
        let stored: Vec<StoredPart> = self
            .db
            .read(move |c| {
                let rows = c.query_vec(
                    "SELECT part_number, size, etag, inline, blob FROM multipart_parts
                     WHERE upload_id = ?1 ORDER BY part_number",
                    params![&id],
                    |r| {
                        Ok(StoredPart {
                            number: r.get(0)?,
                            size: r.get::<i64>(1)? as u64,
                            etag: r.get(2)?,
                            inline: r.get(3)?,
                            blob: r.get(4)?,
                        })
                    },
                )?;
                Ok::<_, StoreError>(rows)
            })
            .await?;
        let chosen: Vec<StoredPart> =
            chosen_parts(&parts, &stored, |p| (p.number, p.size, &p.etag))?
                .into_iter()
                .cloned()
                .collect();
        let prepared = self.assemble(&upload, &chosen).await?;
        Ok(AssembledMultipart {
            upload,
            prepared,
            parts: parts
                .into_iter()
                .map(|(n, e)| (n, e.trim_matches('"').to_owned()))
                .collect(),
        })
    }

    /// What completing `upload_id` with `parts` would refuse, checked without reading a
    /// byte of the parts: the listed parts exist with those ETags, in ascending order, every
    /// one but the last at least [`MIN_PART_BYTES`]. Returns the object's size.
    pub async fn check_completion_impl(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<u64, StoreError> {
        self.multipart(upload_id).await?;
        let id = upload_id.to_owned();
        let stored: Vec<(u32, u64, String)> = self
            .db
            .read(move |c| {
                Ok::<_, StoreError>(c.query_vec(
                    "SELECT part_number, size, etag FROM multipart_parts
                     WHERE upload_id = ?1 ORDER BY part_number",
                    params![&id],
                    |r| Ok((r.get(0)?, r.get::<i64>(1)? as u64, r.get(2)?)),
                )?)
            })
            .await?;
        let chosen = chosen_parts(parts, &stored, |p| (p.0, p.1, &p.2))?;
        Ok(chosen.iter().map(|p| p.1).sum())
    }

    /// Concatenates parts into one prepared object with S3's multipart ETag
    /// (`hex(md5(md5(part1) ‖ … ‖ md5(partN)))-N`), streaming each part's bytes in turn.
    /// Each part is checked against its MD5 (its ETag) as it passes, so a damaged part
    /// fails the completion ([`StoreError::Corrupt`]) instead of becoming an object whose
    /// fresh SHA-256 would vouch for the damage.
    async fn assemble(
        &self,
        upload: &MultipartInfo,
        parts: &[StoredPart],
    ) -> Result<Prepared, StoreError> {
        let total: u64 = parts.iter().map(|p| p.size).sum();
        let mut md5s = Vec::with_capacity(parts.len() * 16);
        for p in parts {
            md5s.extend(
                hex::decode(&p.etag).map_err(|_| StoreError::Backend("bad part etag".into()))?,
            );
        }
        let etag = format!("{}-{}", hex::encode(Md5::digest(&md5s)), parts.len());
        let blobs = self.blobs.clone();
        let sources = parts.to_vec();
        let upload = upload.clone();
        let body: ByteStream = Box::pin(
            futures_util::stream::iter(sources)
                .then(move |p| {
                    let blobs = blobs.clone();
                    let subject = Subject {
                        bucket: upload.bucket.clone(),
                        key: upload.key.clone(),
                        part: Some((upload.upload_id.clone(), p.number)),
                        blob: p.blob.clone(),
                    };
                    async move {
                        let want = Expected::md5_hex(&p.etag);
                        match (p.inline, p.blob) {
                            (Some(bytes), _) => {
                                if let Some(want) = want {
                                    verify_bytes(&bytes, want, p.size, &subject)
                                        .map_err(|d| d.into_io())?;
                                }
                                Ok::<_, std::io::Error>(sluice_blobs::once(Bytes::from(bytes)))
                            }
                            (None, Some(blob)) => {
                                let body = blobs
                                    .get_range(&blob, None)
                                    .await
                                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                                Ok(match want {
                                    Some(want) => verified(body, want, p.size, subject),
                                    None => body,
                                })
                            }
                            (None, None) => Ok(sluice_blobs::once(Bytes::new())),
                        }
                    }
                })
                .try_flatten(),
        );
        let mut prepared = if total as usize > INLINE_MAX {
            self.write_blob(body).await?
        } else {
            let bytes = collect(body, INLINE_MAX as u64).await?;
            self.prepare(bytes).await?
        };
        if prepared.size != total {
            self.discard_prepared(&prepared).await;
            return Err(StoreError::Backend(format!(
                "the parts hold {} bytes, {total} were recorded",
                prepared.size
            )));
        }
        prepared.etag = etag;
        prepared.parts = Some(parts.iter().map(|p| (p.number, p.size)).collect());
        Ok(prepared)
    }

    /// Commits a prepared object under `bucket/key`; its blob is deleted if that fails, the
    /// blob it replaced once it committed.
    async fn commit_object(
        &self,
        bucket: &str,
        key: &str,
        prepared: Prepared,
        mut opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        self.check_md5(&prepared, opts.content_md5).await?;
        if let Some(check) = opts.body_check.take() {
            match (check.0)() {
                Ok(Some(sum)) => opts.headers.checksum = Some(sum),
                Ok(None) => {}
                Err(e) => {
                    self.discard_prepared(&prepared).await;
                    return Err(e);
                }
            }
        }
        let new_blob = prepared.blob_name().map(str::to_owned);
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let committed = self
            .db
            .write(move |c| put_in_tx(c, &b, &k, &prepared, &opts, now_ms()))
            .await;
        let committed = committed.map(|(info, replaced)| (info, replaced.into_iter().collect()));
        self.settle_commit(committed, new_blob.into_iter().collect())
            .await
    }

    /// `BadDigest` (and the prepared blob deleted) unless the bytes match `content_md5`.
    pub async fn check_md5(
        &self,
        prepared: &Prepared,
        content_md5: Option<[u8; 16]>,
    ) -> Result<(), StoreError> {
        let Some(want) = content_md5 else {
            return Ok(());
        };
        if hex::encode(want) == prepared.etag {
            return Ok(());
        }
        self.discard_prepared(prepared).await;
        Err(StoreError::BadDigest)
    }

    /// Deletes the blob of a prepared write that is not committed (refused, or failed).
    async fn discard_prepared(&self, prepared: &Prepared) {
        self.discard_blobs(
            prepared
                .blob_name()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        )
        .await;
    }

    /// Deletes blobs of rows that a commit replaced or removed (or of a write that did not
    /// commit). A blob that cannot be deleted now is left for [`Self::sweep`].
    pub async fn discard_blobs(&self, ids: Vec<String>) {
        for id in ids {
            if let Err(e) = self.blobs.delete(&id).await {
                tracing::warn!(blob = %id, error = %e, "cannot delete an unreferenced blob; the sweep removes it later");
            }
        }
    }
    /// Finishes a write that may have made blobs garbage: committed, the blobs it replaced
    /// are deleted; failed, nothing references the new blobs it would have stored, so they
    /// are deleted now rather than at the next sweep.
    async fn settle_commit<T>(
        &self,
        committed: Result<(T, Vec<String>), StoreError>,
        new_blobs: Vec<String>,
    ) -> Result<T, StoreError> {
        match committed {
            Ok((out, replaced)) => {
                self.discard_blobs(replaced).await;
                Ok(out)
            }
            Err(e) => {
                self.discard_blobs(new_blobs).await;
                Err(e)
            }
        }
    }
}

fn validate_part_number(n: u32) -> Result<(), StoreError> {
    if (1..=10_000).contains(&n) {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(format!(
            "Part number must be an integer between 1 and 10000, inclusive, got {n}"
        )))
    }
}

/// A new upload (or version) id: a 12-hex-digit sequence taken from the clock (milliseconds, but always
/// above the previous id's, so strictly increasing within a process) then 20 random hex
/// digits. The ids of one key thus sort in the order the uploads were created, as
/// ListMultipartUploads lists them.
pub(crate) fn new_sortable_id(now_ms: i64) -> String {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    let seq = loop {
        let next = now_ms.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(actual) => prev = actual,
        }
    };
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{:012x}{}", seq.max(0), &random[..20])
}

/// A stored part of a multipart upload: number, size, ETag and where its bytes are.
#[derive(Clone)]
struct StoredPart {
    number: u32,
    size: u64,
    etag: String,
    inline: Option<Vec<u8>>,
    blob: Option<String>,
}

/// Ensures a bucket exists, inside a transaction of the shared database.
pub fn ensure_bucket_in_tx(conn: &Tx<'_>, bucket: &str) -> Result<(), StoreError> {
    validate_bucket_name(bucket)?;
    conn.execute(
        "INSERT INTO buckets (name, created_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        params![bucket, now_ms()],
    )?;
    Ok(())
}

/// `NoSuchBucket` unless the bucket exists.
pub(crate) fn require_bucket(conn: &Tx<'_>, bucket: &str) -> Result<(), StoreError> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM buckets WHERE name = ?1)",
        params![bucket],
        |r| r.get(0),
    )?;
    if exists {
        Ok(())
    } else {
        Err(StoreError::NoSuchBucket(bucket.to_owned()))
    }
}

/// Writes a prepared object inside a transaction of the shared database. Returns the new
/// object's info and the blob file the write replaced, if any; the caller deletes it with
/// [`EmbeddedStore::discard_blobs`] once the transaction committed.
pub fn put_in_tx(
    conn: &Tx<'_>,
    bucket: &str,
    key: &str,
    obj: &Prepared,
    opts: &PutOptions,
    now: i64,
) -> Result<(ObjectInfo, Option<String>), StoreError> {
    let event = opts.created_event.unwrap_or("ObjectCreated:Put");
    validate_key(key)?;
    // The bucket's existence, versioning state and notification configuration, and the
    // object it holds under `key` now: one statement (every put runs it, on the upload path
    // twice per upload; a round trip per write on a networked engine).
    type Existing = (Option<String>, Option<String>, String, String, i64);
    type Found = (Option<String>, Option<String>, Option<Existing>);
    let found: Option<Found> = conn.query_opt(
        "SELECT (SELECT config FROM bucket_configs WHERE bucket = ?1 AND kind = ?3),
                (SELECT config FROM bucket_notifications WHERE bucket = ?1),
                o.owner, o.blob, o.etag, o.version_id, o.modified_ms
         FROM buckets b LEFT JOIN objects o ON o.bucket = b.name AND o.key = ?2
         WHERE b.name = ?1",
        params![bucket, key, crate::versions::VERSIONING_CONFIG],
        |r| {
            // A joined object always has its version id (NOT NULL in `objects`).
            let existing = match r.get::<Option<String>>(5)? {
                Some(version_id) => Some((r.get(2)?, r.get(3)?, r.get(4)?, version_id, r.get(6)?)),
                None => None,
            };
            Ok((r.get(0)?, r.get(1)?, existing))
        },
    )?;
    let Some((versioning, notifications, existing)) = found else {
        return Err(StoreError::NoSuchBucket(bucket.to_owned()));
    };
    let state = crate::versions::Versioning::from_config(versioning.as_deref());
    let notifications = crate::notifications::parse(notifications.as_deref());
    // A condition failing on an object written while this write was in flight is a race.
    let raced = |modified: i64| {
        opts.started_ms
            .is_some_and(|started| modified >= started)
            .then(|| StoreError::ConditionalConflict {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            })
    };
    if let Some((_, _, _, _, modified)) = &existing
        && opts.if_absent
    {
        return Err(raced(*modified).unwrap_or(StoreError::AlreadyExists {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        }));
    }
    if let Some(want) = &opts.if_match {
        match &existing {
            None => {
                return Err(StoreError::NoSuchKey {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                });
            }
            Some((_, _, etag, _, modified)) if want != "*" && etag != want => {
                return Err(raced(*modified)
                    .unwrap_or_else(|| StoreError::PreconditionFailed(etag.clone())));
            }
            Some(_) => {}
        }
    }
    if let Some((Some(old), _, _, _, _)) = &existing
        && let Some(new) = &opts.owner
        && new != old
    {
        return Err(StoreError::OwnedByOther {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        });
    }
    let current =
        existing.map(|(_, blob, _, version_id, _)| crate::versions::Current { version_id, blob });
    let (version_id, replaced) =
        crate::versions::make_room(conn, bucket, key, state, current, now)?;
    let content_type = opts
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let (inline, blob): (Option<&[u8]>, Option<&str>) = match &obj.body {
        PreparedBody::Inline(b) => (Some(b.as_ref()), None),
        PreparedBody::Blob(n) => (None, Some(n.as_str())),
    };
    conn.execute(
        "INSERT INTO objects
             (bucket, key, size, etag, sha256, content_type, modified_ms, owner, inline, blob,
              metadata, parts, blocks, tags, headers, version_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT (bucket, key) DO UPDATE SET size = excluded.size, etag = excluded.etag,
             sha256 = excluded.sha256, content_type = excluded.content_type,
             modified_ms = excluded.modified_ms, owner = excluded.owner,
             inline = excluded.inline, blob = excluded.blob, metadata = excluded.metadata,
             parts = excluded.parts, blocks = excluded.blocks, tags = excluded.tags,
             headers = excluded.headers, version_id = excluded.version_id",
        params![
            bucket,
            key,
            obj.size as i64,
            obj.etag,
            obj.sha256,
            content_type,
            now,
            opts.owner,
            inline,
            blob,
            metadata_json(&opts.metadata),
            obj.parts
                .as_ref()
                .map(|p| serde_json::to_string(p).unwrap_or_else(|_| "[]".into())),
            obj.blocks.as_deref(),
            tags_json(&opts.tags),
            headers_json(&opts.headers),
            &version_id
        ],
    )?;
    let versioned = (state != crate::versions::Versioning::Off).then_some(version_id.as_str());
    crate::notifications::record_in_tx(
        conn,
        notifications.as_ref(),
        bucket,
        key,
        event,
        obj.size,
        &obj.etag,
        versioned,
        now,
    )?;
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
            metadata: opts.metadata.clone(),
            tags: opts.tags.clone(),
            headers: opts.headers.clone(),
            version_id: Some(version_id).filter(|v| v != crate::versions::NULL_VERSION),
        },
        replaced,
    ))
}

/// A multipart upload's parts assembled into one durable object by
/// [`EmbeddedStore::assemble_multipart`], waiting for [`complete_multipart_in_tx`].
#[derive(Debug, Clone)]
pub struct AssembledMultipart {
    /// The upload (its bucket and key are the object's).
    pub upload: MultipartInfo,
    prepared: Prepared,
    /// The parts it was assembled from (number, unquoted ETag), checked again at commit.
    parts: Vec<(u32, String)>,
}

impl AssembledMultipart {
    /// The assembled object: size, SHA-256 of the whole, blob file.
    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }
}

/// Second half of completing a multipart upload, inside a transaction of the shared
/// database: writes the assembled object (with the content type and metadata the upload
/// was created with; `owner` replaces the upload's owner when given) and ends the upload
/// (its part rows and upload row are deleted). Fails with `NoSuchUpload` if the upload
/// ended meanwhile and `InvalidPart` if one of its parts was replaced after assembly.
/// Returns the object's info and the blob files that are garbage once the transaction
/// committed (the parts', the replaced object's): delete them with
/// [`EmbeddedStore::discard_blobs`]. If the transaction does not commit, the upload is
/// left as it was: it can still be completed or aborted.
pub fn complete_multipart_in_tx(
    conn: &Tx<'_>,
    assembled: &AssembledMultipart,
    owner: Option<&str>,
    now: i64,
) -> Result<(ObjectInfo, Vec<String>), StoreError> {
    let id = &assembled.upload.upload_id;
    // Content type, owner, metadata and tags the upload was created with.
    type Created = (
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
    );
    let row: Option<Created> = conn.query_opt(
        "SELECT content_type, owner, metadata, tags, headers FROM multipart_uploads
         WHERE upload_id = ?1",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?;
    let (content_type, created_owner, metadata, tags, headers) =
        row.ok_or_else(|| StoreError::NoSuchUpload(id.clone()))?;
    {
        for (n, etag) in &assembled.parts {
            let now_etag: Option<String> = conn.query_opt(
                "SELECT etag FROM multipart_parts WHERE upload_id = ?1 AND part_number = ?2",
                params![id, n],
                |r| r.get(0),
            )?;
            if now_etag.as_deref() != Some(etag.as_str()) {
                return Err(StoreError::InvalidPart(format!(
                    "part {n} was replaced while the upload was being completed"
                )));
            }
        }
    }
    let opts = PutOptions {
        content_type,
        owner: owner.map(str::to_owned).or(created_owner),
        metadata: metadata_from(&metadata),
        if_absent: false,
        content_md5: None,
        created_event: Some("ObjectCreated:CompleteMultipartUpload"),
        tags: tags_from(tags.as_deref()),
        headers: headers_from(headers.as_deref()),
        if_match: None,
        body_check: None,
        started_ms: None,
    };
    let (info, replaced) = put_in_tx(
        conn,
        &assembled.upload.bucket,
        &assembled.upload.key,
        &assembled.prepared,
        &opts,
        now,
    )?;
    let mut garbage: Vec<String> = replaced.into_iter().collect();
    for blob in conn.query_vec(
        "DELETE FROM multipart_parts WHERE upload_id = ?1 AND blob IS NOT NULL RETURNING blob",
        params![id],
        |r| r.get::<String>(0),
    )? {
        garbage.push(blob);
    }
    conn.execute(
        "DELETE FROM multipart_parts WHERE upload_id = ?1",
        params![id],
    )?;
    conn.execute(
        "DELETE FROM multipart_uploads WHERE upload_id = ?1",
        params![id],
    )?;
    Ok((info, garbage))
}

/// A multipart upload's row (upload_id, bucket, key, created_ms, headers).
fn multipart_from_row(r: &sluice_meta::Row<'_>) -> sluice_meta::MetaResult<MultipartInfo> {
    Ok(MultipartInfo {
        upload_id: r.get(0)?,
        bucket: r.get(1)?,
        key: r.get(2)?,
        created_ms: r.get(3)?,
        checksum: headers_from(r.get::<Option<String>>(4)?.as_deref()).checksum,
    })
}

/// An object's part list as stored (none: not assembled from a multipart upload).
fn part_list(
    bucket: &str,
    key: &str,
    parts: Option<String>,
) -> Result<Vec<(u32, u64)>, StoreError> {
    match parts {
        None => Ok(Vec::new()),
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| StoreError::Backend(format!("bad part list of {bucket}/{key}: {e}"))),
    }
}

fn metadata_json(m: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(m).unwrap_or_else(|_| "{}".into())
}

fn metadata_from(s: &str) -> std::collections::BTreeMap<String, String> {
    serde_json::from_str(s).unwrap_or_default()
}

/// Tags as stored: `None` (SQL NULL) when there are none.
fn tags_json(tags: &[(String, String)]) -> Option<String> {
    if tags.is_empty() {
        None
    } else {
        serde_json::to_string(tags).ok()
    }
}

fn tags_from(s: Option<&str>) -> Vec<(String, String)> {
    s.and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// Standard headers as stored: `None` (SQL NULL) when there are none.
fn headers_json(h: &crate::ObjectHeaders) -> Option<String> {
    if h.is_empty() {
        None
    } else {
        serde_json::to_string(h).ok()
    }
}

fn headers_from(s: Option<&str>) -> crate::ObjectHeaders {
    s.and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

pub(crate) const INFO_COLUMNS: &str = "bucket, key, size, etag, sha256, content_type, modified_ms, \
                                     owner, metadata, tags, headers, version_id";
/// How many columns [`INFO_COLUMNS`] has: the index of the first column a query selects
/// after them.
pub(crate) const INFO_LEN: usize = 12;

pub(crate) fn info_from_row(r: &sluice_meta::Row<'_>) -> sluice_meta::MetaResult<ObjectInfo> {
    Ok(ObjectInfo {
        bucket: r.get(0)?,
        key: r.get(1)?,
        size: r.get::<i64>(2)? as u64,
        etag: r.get(3)?,
        sha256: r.get(4)?,
        content_type: r.get(5)?,
        last_modified_ms: r.get(6)?,
        owner: r.get(7)?,
        metadata: metadata_from(&r.get::<String>(8)?),
        tags: tags_from(r.get::<Option<String>>(9)?.as_deref()),
        headers: headers_from(r.get::<Option<String>>(10)?.as_deref()),
        version_id: Some(r.get::<String>(11)?).filter(|v| v != crate::versions::NULL_VERSION),
    })
}

#[async_trait]
impl ObjectStore for EmbeddedStore {
    async fn bucket_config(&self, bucket: &str, kind: &str) -> Result<Option<String>, StoreError> {
        let (b, k) = (bucket.to_owned(), kind.to_owned());
        self.db
            .read(move |c| {
                require_bucket(c, &b)?;
                Ok::<_, StoreError>(c.query_opt(
                    "SELECT config FROM bucket_configs WHERE bucket = ?1 AND kind = ?2",
                    params![&b, &k],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    async fn set_bucket_config(
        &self,
        bucket: &str,
        kind: &str,
        config: Option<String>,
    ) -> Result<(), StoreError> {
        let (b, k) = (bucket.to_owned(), kind.to_owned());
        self.db
            .write(move |c| {
                require_bucket(c, &b)?;
                match &config {
                    Some(doc) => c.execute(
                        "INSERT INTO bucket_configs (bucket, kind, config) VALUES (?1, ?2, ?3)
                         ON CONFLICT (bucket, kind) DO UPDATE SET config = excluded.config",
                        params![&b, &k, doc],
                    )?,
                    None => c.execute(
                        "DELETE FROM bucket_configs WHERE bucket = ?1 AND kind = ?2",
                        params![&b, &k],
                    )?,
                };
                Ok::<_, StoreError>(())
            })
            .await
    }

    /// A bucket's tags (`None`: it has no tag set).
    async fn bucket_tags(&self, bucket: &str) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let b = bucket.to_owned();
        self.db
            .read(move |c| {
                require_bucket(c, &b)?;
                let tags: Option<String> = c.query_opt(
                    "SELECT tags FROM bucket_tags WHERE bucket = ?1",
                    params![&b],
                    |r| r.get(0),
                )?;
                Ok::<_, StoreError>(tags.map(|t| tags_from(Some(&t))))
            })
            .await
    }

    /// Replaces (`Some`) or removes (`None`) a bucket's tags.
    async fn set_bucket_tags(
        &self,
        bucket: &str,
        tags: Option<Vec<(String, String)>>,
    ) -> Result<(), StoreError> {
        let b = bucket.to_owned();
        self.db
            .write(move |c| {
                require_bucket(c, &b)?;
                match &tags {
                    Some(t) => c.execute(
                        "INSERT INTO bucket_tags (bucket, tags) VALUES (?1, ?2)
                         ON CONFLICT (bucket) DO UPDATE SET tags = excluded.tags",
                        params![&b, serde_json::to_string(t).unwrap_or_else(|_| "[]".into())],
                    )?,
                    None => c.execute("DELETE FROM bucket_tags WHERE bucket = ?1", params![&b])?,
                };
                Ok::<_, StoreError>(())
            })
            .await
    }

    async fn set_object_tags(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        tags: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let v = version_id.map(str::to_owned);
        self.db
            .write(move |c| {
                require_bucket(c, &b)?;
                if let Some(v) = &v {
                    // The version must exist and not be a delete marker.
                    crate::versions::version_row(c, &b, &k, v)?;
                    for table in ["objects", "object_versions"] {
                        c.execute(
                            &format!(
                                "UPDATE {table} SET tags = ?4
                                 WHERE bucket = ?1 AND key = ?2 AND version_id = ?3"
                            ),
                            params![&b, &k, v, tags_json(&tags)],
                        )?;
                    }
                    return Ok(());
                }
                let n = c.execute(
                    "UPDATE objects SET tags = ?3 WHERE bucket = ?1 AND key = ?2",
                    params![&b, &k, tags_json(&tags)],
                )?;
                if n == 0 {
                    return Err(StoreError::NoSuchKey {
                        bucket: b.clone(),
                        key: k.clone(),
                    });
                }
                Ok(())
            })
            .await
    }

    async fn owned_bytes(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = owner.to_owned();
        let n: i64 = self
            .db
            .read(move |c| {
                Ok::<_, StoreError>(c.query_row(
                    "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM (
                         SELECT size FROM objects WHERE owner = ?1
                         UNION ALL SELECT size FROM object_versions WHERE owner = ?1
                     ) o",
                    params![&owner],
                    |r| r.get(0),
                )?)
            })
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        let bucket = bucket.to_owned();
        self.db
            .write(move |c| ensure_bucket_in_tx(c, &bucket))
            .await
    }

    async fn create_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        validate_bucket_name(bucket)?;
        let bucket = bucket.to_owned();
        self.db
            .write(move |c| {
                let n = c.execute(
                    "INSERT INTO buckets (name, created_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![bucket, now_ms()],
                )?;
                if n == 0 {
                    return Err(StoreError::BucketExists(bucket.clone()));
                }
                Ok(())
            })
            .await
    }

    async fn head_bucket(&self, bucket: &str) -> Result<BucketInfo, StoreError> {
        let bucket = bucket.to_owned();
        self.db
            .read(move |c| {
                c.query_opt(
                    "SELECT name, created_ms FROM buckets WHERE name = ?1",
                    params![&bucket],
                    |r| {
                        Ok(BucketInfo {
                            name: r.get(0)?,
                            created_ms: r.get(1)?,
                        })
                    },
                )?
                .ok_or(StoreError::NoSuchBucket(bucket.clone()))
            })
            .await
    }

    async fn list_buckets(&self) -> Result<Vec<BucketInfo>, StoreError> {
        self.db
            .read(|c| {
                let rows = c.query_vec(
                    "SELECT name, created_ms FROM buckets ORDER BY name",
                    params![],
                    |r| {
                        Ok(BucketInfo {
                            name: r.get(0)?,
                            created_ms: r.get(1)?,
                        })
                    },
                )?;
                Ok(rows)
            })
            .await
    }

    async fn delete_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        let bucket = bucket.to_owned();
        self.db
            .write(move |c| {
                require_bucket(c, &bucket)?;
                let used: bool = c.query_row(
                    "SELECT EXISTS(SELECT 1 FROM objects WHERE bucket = ?1)
                         OR EXISTS(SELECT 1 FROM object_versions WHERE bucket = ?1)
                         OR EXISTS(SELECT 1 FROM multipart_uploads WHERE bucket = ?1)",
                    params![&bucket],
                    |r| r.get(0),
                )?;
                if used {
                    return Err(StoreError::BucketNotEmpty(bucket.clone()));
                }
                c.execute("DELETE FROM buckets WHERE name = ?1", params![&bucket])?;
                c.execute(
                    "DELETE FROM bucket_notifications WHERE bucket = ?1",
                    params![&bucket],
                )?;
                c.execute(
                    "DELETE FROM bucket_policies WHERE bucket = ?1",
                    params![&bucket],
                )?;
                c.execute(
                    "DELETE FROM bucket_tags WHERE bucket = ?1",
                    params![&bucket],
                )?;
                c.execute(
                    "DELETE FROM bucket_configs WHERE bucket = ?1",
                    params![&bucket],
                )?;
                Ok(())
            })
            .await
    }

    async fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        opts: PutOptions,
    ) -> Result<String, StoreError> {
        validate_key(key)?;
        let created = now_ms();
        let id = new_sortable_id(created);
        let (b, k, upload_id) = (bucket.to_owned(), key.to_owned(), id.clone());
        self.db
            .write(move |c| {
                require_bucket(c, &b)?;
                c.execute(
                    "INSERT INTO multipart_uploads
                         (upload_id, bucket, key, content_type, owner, metadata, created_ms, tags,
                          headers)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        upload_id,
                        b,
                        k,
                        opts.content_type,
                        opts.owner,
                        metadata_json(&opts.metadata),
                        created,
                        tags_json(&opts.tags),
                        headers_json(&opts.headers)
                    ],
                )?;
                Ok::<_, StoreError>(())
            })
            .await?;
        Ok(id)
    }

    async fn upload_part(
        &self,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.upload_part_stream(upload_id, part_number, sluice_blobs::once(body), None, None)
            .await
    }

    async fn upload_part_stream(
        &self,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        content_md5: Option<[u8; 16]>,
        body_check: Option<crate::BodyCheck>,
    ) -> Result<String, StoreError> {
        validate_part_number(part_number)?;
        self.multipart(upload_id).await?;
        let prepared = self.prepare_stream(body).await?;
        self.check_md5(&prepared, content_md5).await?;
        let checksum = match body_check.map(|check| (check.0)()) {
            None => None,
            Some(Ok(sum)) => sum,
            Some(Err(e)) => {
                self.discard_prepared(&prepared).await;
                return Err(e);
            }
        };
        Ok(self
            .commit_part(upload_id, part_number, prepared, checksum)
            .await?
            .etag)
    }

    async fn upload_part_copy(
        &self,
        upload_id: &str,
        part_number: u32,
        source: CopySource<'_>,
        check: SourceCheck<'_>,
    ) -> Result<PartInfo, StoreError> {
        validate_part_number(part_number)?;
        self.multipart(upload_id).await?;
        let mut attempt = 0;
        let prepared = loop {
            let (info, inline, blob, _) = self
                .object_row(source.bucket, source.key, source.version_id)
                .await?;
            check(&info)?;
            let (start, len) = match source.range {
                None => (0, info.size),
                Some(r) if r.first <= r.last && r.last < info.size => {
                    (r.first, r.last - r.first + 1)
                }
                Some(_) => {
                    return Err(StoreError::InvalidArgument(format!(
                        "Range specified is not valid for source object of size: {}",
                        info.size
                    )));
                }
            };
            if len > MAX_PART_BYTES {
                return Err(StoreError::EntityTooLarge {
                    size: len,
                    max: MAX_PART_BYTES,
                });
            }
            // A copy of the whole source is checked against its SHA-256 on the way, so
            // damage is refused rather than copied under a fresh digest; a range cannot be.
            let expected = if start == 0 && len == info.size {
                Expected::sha256_hex(&info.sha256)
            } else {
                None
            };
            match (inline, blob) {
                (Some(bytes), _) => {
                    if let Some(want) = expected {
                        verify_bytes(
                            &bytes,
                            want,
                            info.size,
                            &object_subject(source.bucket, source.key, None),
                        )
                        .map_err(StoreError::Corrupt)?;
                    }
                    let bytes = Bytes::from(bytes);
                    let end = start + len;
                    if end > bytes.len() as u64 {
                        return Err(StoreError::Backend(format!(
                            "object {}/{} is shorter than its recorded size",
                            source.bucket, source.key
                        )));
                    }
                    break self
                        .prepare(bytes.slice(start as usize..end as usize))
                        .await?;
                }
                (None, Some(name)) if len == 0 => {
                    let _ = name;
                    break self.prepare(Bytes::new()).await?;
                }
                (None, Some(name)) => {
                    match self
                        .blobs
                        .get_range(&name, Some((start, start + len - 1)))
                        .await
                    {
                        Ok(body) => {
                            let body = match expected {
                                Some(want) => verified(
                                    body,
                                    want,
                                    info.size,
                                    object_subject(source.bucket, source.key, Some(&name)),
                                ),
                                None => body,
                            };
                            let p = self.prepare_stream(body).await?;
                            if p.size != len {
                                self.discard_prepared(&p).await;
                                return Err(StoreError::Backend(format!(
                                    "object {}/{} is shorter than its recorded size",
                                    source.bucket, source.key
                                )));
                            }
                            break p;
                        }
                        // The source was replaced (and its blob deleted) between reading its
                        // row and opening the blob: read the row again.
                        Err(BlobError::NotFound(_)) if attempt < 3 => attempt += 1,
                        Err(BlobError::NotFound(_)) => {
                            return Err(StoreError::Backend(format!(
                                "object {}/{} kept changing during the copy",
                                source.bucket, source.key
                            )));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                (None, None) => break self.prepare(Bytes::new()).await?,
            }
        };
        self.commit_part(upload_id, part_number, prepared, None)
            .await
    }

    async fn multipart(&self, upload_id: &str) -> Result<MultipartInfo, StoreError> {
        let id = upload_id.to_owned();
        self.db
            .read(move |c| {
                c.query_opt(
                    "SELECT upload_id, bucket, key, created_ms, headers FROM multipart_uploads
                     WHERE upload_id = ?1",
                    params![&id],
                    multipart_from_row,
                )?
                .ok_or(StoreError::NoSuchUpload(id.clone()))
            })
            .await
    }

    async fn list_multipart_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<UploadMarker>,
        limit: usize,
    ) -> Result<Vec<MultipartInfo>, StoreError> {
        let (b, p) = (bucket.to_owned(), prefix.to_owned());
        let after = after.unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .read(move |c| {
                require_bucket(c, &b)?;
                let rows = c.query_vec(
                    "SELECT upload_id, bucket, key, created_ms, headers FROM multipart_uploads
                     WHERE bucket = ?1 AND substr(key, 1, length(?2)) = ?2
                       AND (key > ?3 OR (key = ?3 AND CAST(?4 AS TEXT) IS NOT NULL AND upload_id > ?4))
                     ORDER BY key, upload_id LIMIT ?5",
                    params![b, p, after.key, after.upload_id, limit],
                    multipart_from_row,
                )?;
                Ok(rows)
            })
            .await
    }

    async fn list_parts(&self, upload_id: &str) -> Result<Vec<PartInfo>, StoreError> {
        self.multipart(upload_id).await?;
        let id = upload_id.to_owned();
        self.db
            .read(move |c| {
                let parts = c.query_vec(
                    "SELECT part_number, size, etag, modified_ms, checksum FROM multipart_parts
                     WHERE upload_id = ?1 ORDER BY part_number",
                    params![&id],
                    |r| {
                        Ok(PartInfo {
                            part_number: r.get(0)?,
                            size: r.get::<i64>(1)? as u64,
                            etag: r.get(2)?,
                            last_modified_ms: r.get(3)?,
                            checksum: r.get::<Option<String>>(4)?.and_then(|s| {
                                s.split_once(':').map(|(a, v)| (a.to_owned(), v.to_owned()))
                            }),
                        })
                    },
                )?;
                Ok(parts)
            })
            .await
    }

    async fn check_completion(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<u64, StoreError> {
        self.check_completion_impl(upload_id, parts).await
    }

    async fn set_multipart_checksum(
        &self,
        upload_id: &str,
        checksum: Option<(String, String)>,
    ) -> Result<(), StoreError> {
        let id = upload_id.to_owned();
        self.db
            .write(move |c| {
                let headers: Option<Option<String>> = c.query_opt(
                    "SELECT headers FROM multipart_uploads WHERE upload_id = ?1",
                    params![&id],
                    |r| r.get(0),
                )?;
                let Some(headers) = headers else {
                    return Err(StoreError::NoSuchUpload(id.clone()));
                };
                let mut headers = headers_from(headers.as_deref());
                headers.checksum = checksum.clone();
                c.execute(
                    "UPDATE multipart_uploads SET headers = ?2 WHERE upload_id = ?1",
                    params![&id, headers_json(&headers)],
                )?;
                Ok(())
            })
            .await
    }

    async fn complete_multipart(
        &self,
        upload_id: &str,
        parts: Vec<(u32, String)>,
    ) -> Result<ObjectInfo, StoreError> {
        let assembled = self.assemble_multipart(upload_id, parts).await?;
        let new_blob = assembled.prepared.blob_name().map(str::to_owned);
        let committed = self
            .db
            .write(move |c| complete_multipart_in_tx(c, &assembled, None, now_ms()))
            .await;
        self.settle_commit(committed, new_blob.into_iter().collect())
            .await
    }

    async fn abort_multipart(&self, upload_id: &str) -> Result<(), StoreError> {
        let id = upload_id.to_owned();
        let garbage = self
            .db
            .write(move |c| {
                let n = c.execute(
                    "DELETE FROM multipart_uploads WHERE upload_id = ?1",
                    params![&id],
                )?;
                if n == 0 {
                    return Err(StoreError::NoSuchUpload(id.clone()));
                }
                let blobs = c.query_vec(
                    "DELETE FROM multipart_parts WHERE upload_id = ?1 RETURNING blob",
                    params![&id],
                    |r| r.get::<Option<String>>(0),
                )?;
                Ok(blobs.into_iter().flatten().collect::<Vec<_>>())
            })
            .await?;
        self.discard_blobs(garbage).await;
        Ok(())
    }

    async fn put_stream(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        validate_key(key)?;
        let prepared = self.prepare_stream(body).await?;
        self.commit_object(bucket, key, prepared, opts).await
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
        self.commit_object(bucket, key, prepared, opts).await
    }

    async fn put_many(&self, objects: Vec<NewObject>) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut prepared = Vec::with_capacity(objects.len());
        let mut new_blobs = Vec::new();
        for o in objects {
            let p = match validate_key(&o.key) {
                Ok(()) => self.prepare(o.body).await,
                Err(e) => Err(e),
            };
            match p {
                Ok(p) => {
                    new_blobs.extend(p.blob_name().map(str::to_owned));
                    prepared.push((o.bucket, o.key, p, o.opts));
                }
                Err(e) => {
                    self.discard_blobs(new_blobs).await;
                    return Err(e);
                }
            }
        }
        let committed = self
            .db
            .write(move |c| {
                let now = now_ms();
                let mut infos = Vec::with_capacity(prepared.len());
                let mut replaced = Vec::new();
                for (bucket, key, p, opts) in &prepared {
                    let (info, old) = put_in_tx(c, bucket, key, p, opts, now)?;
                    infos.push(info);
                    replaced.extend(old);
                }
                Ok::<_, StoreError>((infos, replaced))
            })
            .await;
        self.settle_commit(committed, new_blobs).await
    }

    async fn get_stream(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<ObjectStream, StoreError> {
        let (info, body) = self.open_object(bucket, key, None, range).await?;
        Ok(ObjectStream { info, body })
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Object, StoreError> {
        let (info, body) = self.open_object(bucket, key, None, None).await?;
        let body = collect(body, info.size).await?;
        Ok(Object { info, body })
    }

    async fn open_many(
        &self,
        keys: Vec<(String, String)>,
    ) -> Result<Vec<Result<ObjectStream, StoreError>>, StoreError> {
        let wanted = keys.clone();
        let rows = self
            .db
            .read(move |c| {
                let sql = format!(
                    "SELECT {INFO_COLUMNS}, inline, blob FROM objects WHERE bucket = ?1 AND key = ?2"
                );
                let mut rows = Vec::with_capacity(wanted.len());
                for (b, k) in &wanted {
                    rows.push(c.query_opt(&sql, params![b, k], |r| {
                        Ok((info_from_row(r)?, r.get::<Option<Vec<u8>>>(INFO_LEN)?))
                    })?);
                }
                Ok::<_, StoreError>(rows)
            })
            .await?;
        let mut out = Vec::with_capacity(keys.len());
        for ((bucket, key), row) in keys.into_iter().zip(rows) {
            out.push(match row {
                None => Err(StoreError::NoSuchKey { bucket, key }),
                // Small objects come with their row (checked against their checksum); a
                // large one is streamed from its blob (opened now, read as the caller reads,
                // verified as it streams).
                Some((info, Some(bytes))) => {
                    match Expected::sha256_hex(&info.sha256).map(|want| {
                        verify_bytes(
                            &bytes,
                            want,
                            info.size,
                            &object_subject(&bucket, &key, None),
                        )
                    }) {
                        Some(Err(damage)) => Err(StoreError::Corrupt(damage)),
                        _ => Ok(ObjectStream {
                            info,
                            body: sluice_blobs::once(Bytes::from(bytes)),
                        }),
                    }
                }
                Some(_) => self.get_stream(&bucket, &key, None).await,
            });
        }
        Ok(out)
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, StoreError> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        self.db
            .read(move |c| {
                let sql =
                    format!("SELECT {INFO_COLUMNS} FROM objects WHERE bucket = ?1 AND key = ?2");
                c.query_opt(&sql, params![b, k], info_from_row)?
                    .ok_or(StoreError::NoSuchKey {
                        bucket: b.clone(),
                        key: k.clone(),
                    })
            })
            .await
    }

    async fn head_parts(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(ObjectInfo, Vec<(u32, u64)>), StoreError> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        self.db
            .read(move |c| {
                let sql = format!(
                    "SELECT {INFO_COLUMNS}, parts FROM objects WHERE bucket = ?1 AND key = ?2"
                );
                let row = c
                    .query_opt(&sql, params![b, k], |r| {
                        Ok((info_from_row(r)?, r.get::<Option<String>>(INFO_LEN)?))
                    })?
                    .ok_or(StoreError::NoSuchKey {
                        bucket: b.clone(),
                        key: k.clone(),
                    })?;
                Ok((row.0, part_list(&b, &k, row.1)?))
            })
            .await
    }

    async fn delete_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        bypass_governance: bool,
    ) -> Result<crate::Deleted, StoreError> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let v = version_id.map(str::to_owned);
        let (deleted, garbage) = self
            .db
            .write(move |c| {
                let now = now_ms();
                let (deleted, event, garbage) =
                    crate::versions::delete_in_tx(c, &b, &k, v.as_deref(), bypass_governance, now)?;
                if let Some(event) = event {
                    let config = crate::notifications::load(c, &b)?;
                    crate::notifications::record_in_tx(
                        c,
                        config.as_ref(),
                        &b,
                        &k,
                        event,
                        0,
                        "",
                        deleted.version_id.as_deref(),
                        now,
                    )?;
                }
                Ok::<_, StoreError>((deleted, garbage))
            })
            .await?;
        self.discard_blobs(garbage).await;
        Ok(deleted)
    }

    async fn update_headers(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        update: crate::HeadersUpdate,
    ) -> Result<crate::ObjectHeaders, StoreError> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let v = version_id.map(str::to_owned);
        self.db
            .write(move |c| crate::versions::update_headers_in_tx(c, &b, &k, v.as_deref(), &update))
            .await
    }

    async fn head_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> Result<(ObjectInfo, Vec<(u32, u64)>), StoreError> {
        let (b, k, v) = (bucket.to_owned(), key.to_owned(), version_id.to_owned());
        let (info, _, _, _, parts) = self
            .db
            .read(move |c| crate::versions::version_row(c, &b, &k, &v))
            .await?;
        Ok((info, part_list(bucket, key, parts)?))
    }

    async fn get_version_stream(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
        range: Option<ByteRange>,
    ) -> Result<ObjectStream, StoreError> {
        let (info, body) = self
            .open_object(bucket, key, Some(version_id), range)
            .await?;
        Ok(ObjectStream { info, body })
    }

    async fn list_versions(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<crate::VersionMarker>,
        limit: usize,
    ) -> Result<Vec<crate::VersionEntry>, StoreError> {
        let (b, p) = (bucket.to_owned(), prefix.to_owned());
        self.db
            .read(move |c| crate::versions::list_in_tx(c, &b, &p, after.as_ref(), limit))
            .await
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
                require_bucket(c, &b)?;
                let sql = format!(
                    "SELECT {INFO_COLUMNS} FROM objects
                     WHERE bucket = ?1 AND key > ?2 AND substr(key, 1, length(?3)) = ?3
                     ORDER BY key LIMIT ?4"
                );
                let rows = c.query_vec(&sql, params![b, after, p, limit as i64], info_from_row)?;
                Ok(rows)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ByteRange;

    /// A store on fresh metadata (the engine `SLUICE_TEST_META` names) with its blobs in
    /// the engines' temporary directory.
    async fn open() -> (EmbeddedStore, sluice_meta::conformance::TestEngines) {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("store", MIGRATIONS);
        let blobs = sluice_blobs::conformance::test_blobs(&engines.dir().join("blobs"));
        let s = EmbeddedStore::new(db, blobs);
        s.ensure_bucket("b-1").await.expect("bucket");
        (s, engines)
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
            ..Default::default()
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
    async fn prepare_stream_matches_prepare_and_cleans_up_on_failure() {
        let (s, _engines) = open().await;
        let chunked = |data: Vec<u8>, fail: bool| -> crate::ByteStream {
            let mut items: Vec<Result<Bytes, std::io::Error>> = data
                .chunks(7_000)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            if fail {
                items.push(Err(std::io::Error::other("client went away")));
            }
            Box::pin(futures_util::stream::iter(items))
        };
        for size in [0usize, 10, INLINE_MAX, INLINE_MAX + 1, 3 * INLINE_MAX + 5] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let whole = s.prepare(Bytes::from(data.clone())).await.expect("prepare");
            let streamed = s
                .prepare_stream(chunked(data.clone(), false))
                .await
                .expect("prepare_stream");
            assert_eq!(streamed.size, whole.size, "{size}");
            assert_eq!(streamed.etag, whole.etag, "{size}");
            assert_eq!(streamed.sha256, whole.sha256, "{size}");
            assert_eq!(streamed.blob_name().is_some(), size > INLINE_MAX, "{size}");
            s.put_prepared("b-1", &format!("k{size}"), streamed).await;
            let got = s.get("b-1", &format!("k{size}")).await.expect("get");
            assert_eq!(got.body.as_ref(), &data[..], "{size}");
            s.discard_blobs(whole.blob_name().into_iter().map(str::to_owned).collect())
                .await;
        }
        let before = blob_count(&s).await;
        let err = s
            .prepare_stream(chunked(vec![1u8; 3 * INLINE_MAX], true))
            .await
            .expect_err("a failing body fails");
        assert!(matches!(err, StoreError::Io(_)), "{err:?}");
        assert_eq!(blob_count(&s).await, before, "the partial blob is deleted");
    }

    impl EmbeddedStore {
        async fn put_prepared(&self, bucket: &str, key: &str, p: Prepared) {
            let (b, k) = (bucket.to_owned(), key.to_owned());
            self.db
                .write(move |c| {
                    put_in_tx(c, &b, &k, &p, &PutOptions::default(), now_ms()).map(|_| ())
                })
                .await
                .expect("commit");
        }
    }

    #[tokio::test]
    async fn replaced_and_orphaned_blobs_are_removed() {
        let (s, _engines) = open().await;
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
        assert_eq!(blob_count(&s).await, 2);
        assert_eq!(s.sweep(std::time::Duration::ZERO).await.expect("sweep"), 1);
        assert_eq!(blob_count(&s).await, 1);
        s.delete("b-1", "big").await.expect("delete");
        assert_eq!(blob_count(&s).await, 0);
        assert!(matches!(
            s.get("b-1", "big").await,
            Err(StoreError::NoSuchKey { .. })
        ));
        s.delete("b-1", "big")
            .await
            .expect("deleting a missing key is ok");
    }

    async fn blob_count(s: &EmbeddedStore) -> usize {
        sluice_blobs::conformance::count(s.blobs().as_ref()).await
    }

    async fn body_of(s: &EmbeddedStore, key: &str, version: &str) -> Vec<u8> {
        let o = s
            .get_version_stream("v-b", key, version, None)
            .await
            .expect("version");
        collect(o.body, o.info.size).await.expect("body").to_vec()
    }

    /// (key, version, latest, marker) of every entry, paged by `page`.
    async fn versions_of(s: &EmbeddedStore, page: usize) -> Vec<(String, String, bool, bool)> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let batch = s
                .list_versions("v-b", "", after.clone(), page)
                .await
                .expect("list");
            let Some(last) = batch.last() else {
                return out;
            };
            // By name, as clients page.
            after = Some(crate::VersionMarker {
                key: last.info.key.clone(),
                version_id: Some(last.info.version_id.clone().unwrap_or("null".into())),
                position: None,
            });
            for e in batch {
                let v = e.info.version_id.clone().unwrap_or("null".into());
                out.push((e.info.key, v, e.is_latest, e.delete_marker));
            }
        }
    }

    #[tokio::test]
    async fn versions_markers_and_suspension() {
        use crate::versions::VERSIONING_CONFIG;
        let (s, _d) = open().await;
        s.create_bucket("v-b").await.expect("bucket");
        let put = |key: &'static str, body: Vec<u8>| {
            let s = &s;
            async move {
                s.put("v-b", key, Bytes::from(body), PutOptions::default())
                    .await
                    .expect("put")
            }
        };
        // Unversioned: the object is the null version, and is listed as such.
        let first = put("k", b"0".to_vec()).await;
        assert_eq!(first.version_id, None);
        assert_eq!(
            versions_of(&s, 10).await,
            vec![("k".into(), "null".into(), true, false)]
        );
        s.set_bucket_config("v-b", VERSIONING_CONFIG, Some("Enabled".into()))
            .await
            .expect("enable");
        // Each write adds a version; the null version written before stays.
        let big = vec![7u8; INLINE_MAX + 10];
        let v1 = put("k", big.clone()).await.version_id.expect("v1");
        let v2 = put("k", b"2".to_vec()).await.version_id.expect("v2");
        assert_ne!(v1, v2);
        assert_eq!(
            s.head("v-b", "k").await.expect("head").version_id,
            Some(v2.clone())
        );
        // The old version's blob survives a sweep and reads back.
        s.sweep(std::time::Duration::ZERO).await.expect("sweep");
        assert_eq!(body_of(&s, "k", &v1).await, big);
        assert_eq!(body_of(&s, "k", "null").await, b"0");
        // The deep check reads every version.
        let report = s.scrub().await.expect("scrub");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.objects, 3);
        assert_eq!(
            versions_of(&s, 10).await,
            vec![
                ("k".into(), v2.clone(), true, false),
                ("k".into(), v1.clone(), false, false),
                ("k".into(), "null".into(), false, false),
            ]
        );
        // A deletion adds a marker: the key is gone, its versions are not.
        let marker = s
            .delete_version("v-b", "k", None, false)
            .await
            .expect("delete");
        assert!(marker.delete_marker);
        let m = marker.version_id.expect("marker id");
        assert!(matches!(
            s.head("v-b", "k").await,
            Err(StoreError::NoSuchKey { .. })
        ));
        assert!(matches!(
            s.head_version("v-b", "k", &m).await,
            Err(StoreError::DeleteMarker { .. })
        ));
        assert!(matches!(
            s.head_version("v-b", "k", "0123456789abcdef0123456789abcdef")
                .await,
            Err(StoreError::NoSuchVersion { .. })
        ));
        assert!(s.list("v-b", "", None, 10).await.expect("list").is_empty());
        // Every page size lists the same entries.
        let all = versions_of(&s, 10).await;
        assert_eq!(all[0], ("k".into(), m.clone(), true, true));
        assert_eq!(all.len(), 4);
        assert_eq!(versions_of(&s, 1).await, all);
        assert_eq!(versions_of(&s, 3).await, all);
        // Deleting the marker brings the newest version back.
        let undone = s
            .delete_version("v-b", "k", Some(&m), false)
            .await
            .expect("undo");
        assert!(undone.delete_marker);
        assert_eq!(s.get("v-b", "k").await.expect("get").body.as_ref(), b"2");
        // Deleting the current version makes the one before it current.
        s.delete_version("v-b", "k", Some(&v2), false)
            .await
            .expect("drop v2");
        let now = s.head("v-b", "k").await.expect("head");
        assert_eq!(now.version_id, Some(v1.clone()));
        assert_eq!(
            s.get("v-b", "k").await.expect("get").body.as_ref(),
            big.as_slice()
        );
        // Suspended: writes replace the null version, older versions stay.
        s.set_bucket_config("v-b", VERSIONING_CONFIG, Some("Suspended".into()))
            .await
            .expect("suspend");
        assert_eq!(put("k", b"3".to_vec()).await.version_id, None);
        assert_eq!(put("k", b"4".to_vec()).await.version_id, None);
        assert_eq!(
            versions_of(&s, 10).await,
            vec![
                ("k".into(), "null".into(), true, false),
                ("k".into(), v1.clone(), false, false),
            ]
        );
        assert_eq!(body_of(&s, "k", "null").await, b"4");
        // A deletion makes the null version a delete marker.
        let d = s
            .delete_version("v-b", "k", None, false)
            .await
            .expect("delete");
        assert_eq!(
            (d.version_id.as_deref(), d.delete_marker),
            (Some("null"), true)
        );
        assert_eq!(
            versions_of(&s, 10).await,
            vec![
                ("k".into(), "null".into(), true, true),
                ("k".into(), v1.clone(), false, false),
            ]
        );
        // A bucket with versions left is not empty; without them it can go.
        assert!(matches!(
            s.delete_bucket("v-b").await,
            Err(StoreError::BucketNotEmpty(_))
        ));
        s.delete_version("v-b", "k", Some("null"), false)
            .await
            .expect("marker");
        assert_eq!(
            s.get("v-b", "k").await.expect("v1 current").body.len(),
            big.len()
        );
        s.delete_version("v-b", "k", Some(&v1), false)
            .await
            .expect("v1");
        assert!(versions_of(&s, 10).await.is_empty());
        s.delete_bucket("v-b").await.expect("delete bucket");
        // Every blob went with its version.
        s.sweep(std::time::Duration::ZERO).await.expect("sweep");
        assert_eq!(blob_count(&s).await, 0);
    }

    #[tokio::test]
    async fn a_condition_lost_to_a_racing_write_is_a_conflict() {
        let (s, _d) = open().await;
        s.create_bucket("race").await.expect("bucket");
        let began = now_ms() - 1;
        let first = s
            .put("race", "k", Bytes::from_static(b"1"), PutOptions::default())
            .await
            .expect("put");
        // Begun before the object was written: the race is a conflict (409)...
        let racing = PutOptions {
            if_absent: true,
            started_ms: Some(began),
            ..Default::default()
        };
        let e = s.put("race", "k", Bytes::from_static(b"2"), racing).await;
        assert!(
            matches!(e, Err(StoreError::ConditionalConflict { .. })),
            "{e:?}"
        );
        let racing = PutOptions {
            if_match: Some("0".repeat(32)),
            started_ms: Some(began),
            ..Default::default()
        };
        let e = s.put("race", "k", Bytes::from_static(b"2"), racing).await;
        assert!(
            matches!(e, Err(StoreError::ConditionalConflict { .. })),
            "{e:?}"
        );
        // ...begun after it, a plain precondition failure (412).
        let late = PutOptions {
            if_absent: true,
            started_ms: Some(first.last_modified_ms + 1),
            ..Default::default()
        };
        let e = s.put("race", "k", Bytes::from_static(b"2"), late).await;
        assert!(matches!(e, Err(StoreError::AlreadyExists { .. })), "{e:?}");
    }

    #[tokio::test]
    async fn object_lock_protects_versions_not_keys() {
        let (s, _d) = open().await;
        s.create_bucket("l-k").await.expect("bucket");
        s.set_bucket_config(
            "l-k",
            crate::versions::VERSIONING_CONFIG,
            Some("Enabled".into()),
        )
        .await
        .expect("versioning");
        let until = now_ms() + 3_600_000;
        let opts = PutOptions {
            headers: crate::ObjectHeaders {
                lock: Some(("GOVERNANCE".into(), until)),
                ..Default::default()
            },
            ..Default::default()
        };
        let v = s
            .put("l-k", "k", Bytes::from_static(b"x"), opts)
            .await
            .expect("put")
            .version_id
            .expect("version");
        let refused = s.delete_version("l-k", "k", Some(&v), false).await;
        assert!(
            matches!(refused, Err(StoreError::ObjectLocked(_))),
            "{refused:?}"
        );
        // A legal hold holds even against the bypass.
        let hold: crate::HeadersUpdate = Box::new(|h| {
            h.legal_hold = true;
            Ok(())
        });
        let h = s
            .update_headers("l-k", "k", Some(&v), hold)
            .await
            .expect("hold");
        assert!(h.legal_hold && h.lock.is_some());
        assert!(matches!(
            s.delete_version("l-k", "k", Some(&v), true).await,
            Err(StoreError::ObjectLocked(_))
        ));
        // The key can still be deleted: a marker, the version stays.
        let marker = s
            .delete_version("l-k", "k", None, false)
            .await
            .expect("marker");
        assert!(marker.delete_marker);
        assert!(s.head_version("l-k", "k", &v).await.is_ok());
        let release: crate::HeadersUpdate = Box::new(|h| {
            h.legal_hold = false;
            Ok(())
        });
        s.update_headers("l-k", "k", Some(&v), release)
            .await
            .expect("release");
        s.delete_version("l-k", "k", Some(&v), true)
            .await
            .expect("bypassed");
        assert!(matches!(
            s.head_version("l-k", "k", &v).await,
            Err(StoreError::NoSuchVersion { .. })
        ));
    }

    #[tokio::test]
    async fn multipart_uploads_assemble_with_s3_etags() {
        let (s, _d) = open().await;
        let id = s
            .create_multipart("b-1", "mp", PutOptions::default())
            .await
            .expect("create");
        let p1 = Bytes::from(vec![1u8; MIN_PART_BYTES as usize]);
        let p2 = Bytes::from_static(b"tail");
        let e1 = s.upload_part(&id, 1, p1.clone()).await.expect("part 1");
        let e2 = s.upload_part(&id, 2, p2.clone()).await.expect("part 2");
        assert_eq!(s.list_parts(&id).await.expect("parts").len(), 2);
        assert!(matches!(
            s.complete_multipart(&id, vec![(2, e2.clone()), (1, e1.clone())])
                .await,
            Err(StoreError::InvalidPartOrder)
        ));
        assert!(matches!(
            s.complete_multipart(&id, vec![(1, "0".repeat(32))]).await,
            Err(StoreError::InvalidPart(_))
        ));
        let info = s
            .complete_multipart(&id, vec![(1, e1.clone()), (2, format!("\"{e2}\""))])
            .await
            .expect("complete");
        let mut md5s = hex::decode(&e1).expect("hex");
        md5s.extend(hex::decode(&e2).expect("hex"));
        assert_eq!(info.etag, format!("{}-2", hex::encode(Md5::digest(&md5s))));
        let got = s.get("b-1", "mp").await.expect("get");
        assert_eq!(got.body.len(), p1.len() + p2.len());
        assert_eq!(&got.body[p1.len()..], b"tail");
        let (head, parts) = s.head_parts("b-1", "mp").await.expect("head_parts");
        assert_eq!(head, info);
        assert_eq!(parts, vec![(1, MIN_PART_BYTES), (2, 4)]);
        s.put("b-1", "single", p2.clone(), PutOptions::default())
            .await
            .expect("put");
        assert!(
            s.head_parts("b-1", "single")
                .await
                .expect("head")
                .1
                .is_empty()
        );
        assert!(matches!(
            s.head_parts("b-1", "nope").await,
            Err(StoreError::NoSuchKey { .. })
        ));
        assert!(matches!(
            s.list_parts(&id).await,
            Err(StoreError::NoSuchUpload(_))
        ));

        // Too-small parts and aborts.
        let id = s
            .create_multipart("b-1", "small", PutOptions::default())
            .await
            .expect("create");
        let a = s
            .upload_part(&id, 1, Bytes::from_static(b"a"))
            .await
            .expect("part");
        let b = s
            .upload_part(&id, 2, Bytes::from_static(b"b"))
            .await
            .expect("part");
        assert!(matches!(
            s.complete_multipart(&id, vec![(1, a), (2, b)]).await,
            Err(StoreError::EntityTooSmall { .. })
        ));
        s.abort_multipart(&id).await.expect("abort");
        assert!(matches!(
            s.abort_multipart(&id).await,
            Err(StoreError::NoSuchUpload(_))
        ));
    }

    #[tokio::test]
    async fn upload_part_copy_copies_objects_and_ranges() {
        let (s, _engines) = open().await;
        let small = Bytes::from_static(b"0123456789");
        let big = Bytes::from(
            (0..3 * INLINE_MAX + 17)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<_>>(),
        );
        s.put("b-1", "small", small.clone(), PutOptions::default())
            .await
            .expect("put");
        s.put("b-1", "big", big.clone(), PutOptions::default())
            .await
            .expect("put");
        let id = s
            .create_multipart("b-1", "dest", PutOptions::default())
            .await
            .expect("create");
        let any = |_: &ObjectInfo| Ok(());
        let src = |key, range| CopySource {
            bucket: "b-1",
            key,
            version_id: None,
            range,
        };
        let range = |first, last| Some(ByteRange { first, last });

        // A range of a blob, larger than INLINE_MAX: a new blob file.
        let (first, last) = (3u64, 2 * INLINE_MAX as u64 + 9);
        let p1 = s
            .upload_part_copy(&id, 1, src("big", range(first, last)), &any)
            .await
            .expect("copy a range of a blob");
        let want1 = big.slice(first as usize..=last as usize);
        assert_eq!(p1.size, want1.len() as u64);
        assert_eq!(p1.etag, hex::encode(Md5::digest(&want1)));
        // A small range of a blob (inline), and a range of an inline object.
        let p2 = s
            .upload_part_copy(&id, 2, src("big", range(5, 14)), &any)
            .await
            .expect("copy a small range of a blob");
        assert_eq!(p2.etag, hex::encode(Md5::digest(&big[5..15])));
        let p3 = s
            .upload_part_copy(&id, 3, src("small", range(2, 4)), &any)
            .await
            .expect("copy a range of an inline object");
        assert_eq!(p3.etag, hex::encode(Md5::digest(b"234")));
        // A whole object.
        let p4 = s
            .upload_part_copy(&id, 4, src("small", None), &any)
            .await
            .expect("copy a whole object");
        assert_eq!(
            (p4.size, p4.etag.as_str()),
            (10, hex::encode(Md5::digest(&small)).as_str())
        );
        let listed = s.list_parts(&id).await.expect("parts");
        assert_eq!(listed, vec![p1.clone(), p2.clone(), p3.clone(), p4.clone()]);

        // Ranges outside the source, failed checks and missing sources copy nothing.
        let blobs = blob_count(&s).await;
        for bad in [range(0, 10), range(10, 10), range(5, 4)] {
            let err = s
                .upload_part_copy(&id, 5, src("small", bad), &any)
                .await
                .expect_err("invalid range");
            assert!(
                matches!(&err, StoreError::InvalidArgument(m) if m.ends_with("size: 10")),
                "{err:?}"
            );
        }
        let refuse = |i: &ObjectInfo| Err(StoreError::PreconditionFailed(i.etag.clone()));
        assert!(matches!(
            s.upload_part_copy(&id, 5, src("big", None), &refuse).await,
            Err(StoreError::PreconditionFailed(_))
        ));
        assert!(matches!(
            s.upload_part_copy(&id, 5, src("missing", None), &any).await,
            Err(StoreError::NoSuchKey { .. })
        ));
        assert!(matches!(
            s.upload_part_copy("no-such-upload", 5, src("small", None), &any)
                .await,
            Err(StoreError::NoSuchUpload(_))
        ));
        assert!(matches!(
            s.upload_part_copy(&id, 0, src("small", None), &any).await,
            Err(StoreError::InvalidArgument(_))
        ));
        assert_eq!(blob_count(&s).await, blobs, "no blob file left behind");
        assert_eq!(s.list_parts(&id).await.expect("parts").len(), 4);

        // Copying again replaces the part (and deletes the blob it replaced).
        s.upload_part_copy(&id, 1, src("small", None), &any)
            .await
            .expect("replace part 1");
        assert_eq!(blob_count(&s).await, blobs - 1);
        s.upload_part_copy(&id, 1, src("big", range(first, last)), &any)
            .await
            .expect("replace part 1 again");

        // The assembled object is the copied bytes. (Every part but the last must be at
        // least 5 MiB, so only part 1 is used.)
        let info = s
            .complete_multipart(&id, vec![(1, p1.etag.clone())])
            .await
            .expect("complete");
        assert_eq!(s.get("b-1", "dest").await.expect("get").body, want1);
        assert_eq!(info.size, want1.len() as u64);
    }

    #[test]
    fn upload_ids_increase_even_within_a_millisecond() {
        let ids: Vec<String> = (0..100).map(|_| new_sortable_id(1_000)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert!(ids.iter().all(|i| i.len() == 32));
    }

    #[tokio::test]
    async fn multipart_uploads_are_listed_by_key_then_creation() {
        let (s, _d) = open().await;
        s.create_bucket("b-2").await.expect("bucket");
        let mut created = Vec::new();
        for key in ["b/x", "a", "b/x", "c", "a"] {
            let id = s
                .create_multipart("b-1", key, PutOptions::default())
                .await
                .expect("create");
            created.push((key.to_owned(), id));
        }
        s.create_multipart("b-2", "a", PutOptions::default())
            .await
            .expect("other bucket");
        let mut want = created.clone();
        want.sort_by(|x, y| x.0.cmp(&y.0)); // stable: creation order within a key
        let got = |v: Vec<MultipartInfo>| -> Vec<(String, String)> {
            v.into_iter().map(|m| (m.key, m.upload_id)).collect()
        };
        let all = s
            .list_multipart_uploads("b-1", "", None, 100)
            .await
            .expect("list");
        assert!(all.iter().all(|m| m.bucket == "b-1"));
        assert_eq!(got(all), want);
        assert_eq!(
            got(s
                .list_multipart_uploads("b-1", "b/", None, 100)
                .await
                .expect("prefix")),
            want[2..4].to_vec()
        );
        assert_eq!(
            got(s
                .list_multipart_uploads("b-1", "", None, 2)
                .await
                .expect("limit")),
            want[..2].to_vec()
        );
        let after_key = UploadMarker {
            key: "a".into(),
            upload_id: None,
        };
        assert_eq!(
            got(s
                .list_multipart_uploads("b-1", "", Some(after_key), 100)
                .await
                .expect("after a key")),
            want[2..].to_vec()
        );
        let after_upload = UploadMarker {
            key: "a".into(),
            upload_id: Some(want[0].1.clone()),
        };
        assert_eq!(
            got(s
                .list_multipart_uploads("b-1", "", Some(after_upload), 100)
                .await
                .expect("after an upload")),
            want[1..].to_vec()
        );
        s.abort_multipart(&want[0].1).await.expect("abort");
        assert_eq!(
            s.list_multipart_uploads("b-1", "a", None, 100)
                .await
                .expect("after abort")
                .len(),
            1
        );
        assert!(matches!(
            s.list_multipart_uploads("nope", "", None, 10).await,
            Err(StoreError::NoSuchBucket(_))
        ));
    }

    #[tokio::test]
    async fn buckets() {
        let (s, _d) = open().await;
        s.create_bucket("b-2").await.expect("create");
        assert!(matches!(
            s.create_bucket("b-2").await,
            Err(StoreError::BucketExists(_))
        ));
        assert_eq!(s.list_buckets().await.expect("list").len(), 2);
        s.put("b-2", "k", Bytes::from("x"), PutOptions::default())
            .await
            .expect("put");
        assert!(matches!(
            s.delete_bucket("b-2").await,
            Err(StoreError::BucketNotEmpty(_))
        ));
        s.delete("b-2", "k").await.expect("delete");
        s.delete_bucket("b-2").await.expect("delete bucket");
        assert!(matches!(
            s.head_bucket("b-2").await,
            Err(StoreError::NoSuchBucket(_))
        ));
    }

    #[tokio::test]
    async fn a_bucket_policy_goes_with_its_bucket() {
        let (s, _d) = open().await;
        assert!(matches!(
            s.set_bucket_policy("nope", Some("{}".into())).await,
            Err(StoreError::NoSuchBucket(_))
        ));
        s.create_bucket("pol-b").await.expect("create");
        assert_eq!(s.bucket_policy("pol-b").await.expect("get"), None);
        s.set_bucket_policy("pol-b", Some("one".into()))
            .await
            .expect("set");
        s.set_bucket_policy("pol-b", Some("two".into()))
            .await
            .expect("replace");
        assert_eq!(
            s.bucket_policy("pol-b").await.expect("get").as_deref(),
            Some("two")
        );
        s.delete_bucket("pol-b").await.expect("delete bucket");
        s.create_bucket("pol-b").await.expect("create again");
        assert_eq!(
            s.bucket_policy("pol-b").await.expect("get"),
            None,
            "a bucket created again has no policy"
        );
        s.set_bucket_policy("pol-b", Some("three".into()))
            .await
            .expect("set");
        s.set_bucket_policy("pol-b", None).await.expect("remove");
        assert_eq!(s.bucket_policy("pol-b").await.expect("get"), None);
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

    /// A blob engine that, for blobs marked damaged, hands out their bytes with the one at
    /// [`FLIPPED_AT`] flipped, as a disk that rots would: over whichever engine the tests
    /// run on (`SLUICE_TEST_STORE`).
    struct Rotting {
        inner: Arc<dyn Blobs>,
        damaged: Arc<Mutex<std::collections::HashSet<String>>>,
    }

    const FLIPPED_AT: u64 = 70_000;

    #[async_trait]
    impl Blobs for Rotting {
        async fn put_stream(&self, id: &str, body: ByteStream) -> Result<u64, BlobError> {
            self.inner.put_stream(id, body).await
        }
        async fn get_range(
            &self,
            id: &str,
            range: Option<(u64, u64)>,
        ) -> Result<ByteStream, BlobError> {
            let body = self.inner.get_range(id, range).await?;
            let damaged = self.damaged.lock().map(|d| d.contains(id)).unwrap_or(false);
            if !damaged {
                return Ok(body);
            }
            let mut at = range.map_or(0, |r| r.0);
            Ok(Box::pin(body.map_ok(move |chunk| {
                let start = at;
                at += chunk.len() as u64;
                if (start..at).contains(&FLIPPED_AT) {
                    let mut v = chunk.to_vec();
                    v[(FLIPPED_AT - start) as usize] ^= 0x01;
                    Bytes::from(v)
                } else {
                    chunk
                }
            })))
        }
        async fn delete(&self, id: &str) -> Result<(), BlobError> {
            self.inner.delete(id).await
        }
        async fn list(
            &self,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<sluice_blobs::BlobEntry>, BlobError> {
            self.inner.list(after, limit).await
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
    }

    /// A store whose blobs can be damaged: `damage(id)` marks one.
    async fn open_rotting() -> (
        EmbeddedStore,
        impl Fn(&str, bool),
        sluice_meta::conformance::TestEngines,
    ) {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("store", MIGRATIONS);
        let damaged = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let blobs = Arc::new(Rotting {
            inner: sluice_blobs::conformance::test_blobs(&engines.dir().join("blobs")),
            damaged: damaged.clone(),
        });
        let s = EmbeddedStore::new(db, blobs);
        s.ensure_bucket("b-1").await.expect("bucket");
        let mark = move |id: &str, on: bool| {
            let mut d = damaged.lock().expect("lock");
            if on {
                d.insert(id.to_owned());
            } else {
                d.remove(id);
            }
        };
        (s, mark, engines)
    }

    async fn blob_of(s: &EmbeddedStore, key: &str) -> String {
        let key = key.to_owned();
        s.db.read(move |c| {
            c.query_row(
                "SELECT blob FROM objects WHERE bucket = 'b-1' AND key = ?1",
                params![key],
                |r| r.get::<String>(0),
            )
        })
        .await
        .expect("blob of the object")
    }

    /// The bytes a stream gave before it failed, and its error.
    async fn drain(mut body: ByteStream) -> (usize, Option<std::io::Error>) {
        let mut n = 0;
        while let Some(item) = body.next().await {
            match item {
                Ok(c) => n += c.len(),
                Err(e) => return (n, Some(e)),
            }
        }
        (n, None)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranged_reads_are_checked_by_the_blocks_they_touch() {
        use crate::verify::BLOCK;
        let (s, damage, _engines) = open_rotting().await;
        // Two and a half blocks; the flipped byte is in block 0.
        let size = 2 * BLOCK + BLOCK / 2;
        let data = Bytes::from((0..size).map(|i| (i % 253) as u8).collect::<Vec<_>>());
        s.put("b-1", "blocks", data.clone(), PutOptions::default())
            .await
            .expect("put");
        let read = |first: u64, last: u64| {
            let s = s.clone();
            async move {
                let obj = match s
                    .get_stream("b-1", "blocks", Some(ByteRange { first, last }))
                    .await
                {
                    Ok(obj) => obj,
                    // Refused when opened: the damage was in the block read ahead.
                    Err(StoreError::Corrupt(d)) => return (Vec::new(), Some(d.into_io())),
                    Err(e) => panic!("{e:?}"),
                };
                let mut got = Vec::new();
                let mut body = obj.body;
                while let Some(item) = body.next().await {
                    match item {
                        Ok(chunk) => got.extend_from_slice(&chunk),
                        Err(e) => return (got, Some(e)),
                    }
                }
                (got, None)
            }
        };
        // Intact: every range gives exactly its bytes, across block edges and to the end.
        for (first, last) in [
            (0, 0),
            (5, 99),
            (BLOCK - 3, BLOCK + 2),
            (BLOCK, 2 * BLOCK - 1),
            (2 * BLOCK + 7, size - 1),
            (3, size + 100),
        ] {
            let (got, err) = read(first, last).await;
            assert!(err.is_none(), "{first}-{last}: {err:?}");
            let end = (last + 1).min(size) as usize;
            assert!(got == data[first as usize..end], "{first}-{last}");
        }
        let blob = blob_of(&s, "blocks").await;
        damage(&blob, true);
        const { assert!(FLIPPED_AT < BLOCK) };
        // Ranges that touch block 0 fail before any of its bytes leave; others are served.
        for (first, last) in [(0, 10), (FLIPPED_AT, FLIPPED_AT), (BLOCK - 1, BLOCK + 10)] {
            let (got, err) = read(first, last).await;
            let err = err.unwrap_or_else(|| panic!("{first}-{last} was served"));
            assert!(crate::verify::Damage::of(&err).is_some(), "{err}");
            assert!(got.is_empty(), "{first}-{last}: {} bytes left", got.len());
        }
        let (got, err) = read(BLOCK + 1, 2 * BLOCK + 5).await;
        assert!(err.is_none(), "{err:?}");
        assert!(got == data[(BLOCK + 1) as usize..(2 * BLOCK + 6) as usize]);
        damage(&blob, false);
        s.delete("b-1", "blocks").await.expect("delete");
    }

    #[tokio::test]
    async fn damaged_blobs_are_refused_by_every_whole_read() {
        let (s, damage, _engines) = open_rotting().await;
        // Larger than one chunk of the file engine (256 KiB), flipped in the first.
        let data = Bytes::from((0..300_000).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        s.put("b-1", "big", data.clone(), PutOptions::default())
            .await
            .expect("put");
        let blob = blob_of(&s, "big").await;
        assert_eq!(s.get("b-1", "big").await.expect("intact").body, data);
        assert!(s.scrub().await.expect("scrub").problems.is_empty());
        damage(&blob, true);

        // In memory (the processor's reads): refused.
        let err = s.get("b-1", "big").await.expect_err("damaged");
        assert!(
            matches!(&err, StoreError::Corrupt(d) if d.subject.blob.as_deref() == Some(blob.as_str())),
            "{err:?}"
        );
        // Opened for streaming (the processor's reads): refused, or a stream that fails.
        let mut many = s
            .open_many(vec![("b-1".into(), "big".into())])
            .await
            .expect("open_many");
        match many.remove(0) {
            Err(StoreError::Corrupt(_)) => {}
            Err(e) => panic!("{e:?}"),
            Ok(obj) => {
                let (_, err) = drain(obj.body).await;
                assert!(err.is_some(), "the stream of a damaged blob fails");
            }
        }

        // Streamed: fails before the last chunk, so the reader never has every byte (or,
        // when the first chunk already fails, before anything is answered).
        let streamed = |range| {
            let s = s.clone();
            async move {
                match s.get_stream("b-1", "big", range).await {
                    Err(StoreError::Corrupt(_)) => 0,
                    Err(e) => panic!("{e:?}"),
                    Ok(obj) => {
                        let (n, err) = drain(obj.body).await;
                        let err = err.expect("the stream fails");
                        assert!(crate::verify::Damage::of(&err).is_some(), "{err}");
                        assert!((n as u64) < obj.info.size, "{n} of {}", obj.info.size);
                        n
                    }
                }
            }
        };
        let sent = streamed(None).await;
        if s.blobs.describe().starts_with("file://") {
            assert_eq!(
                sent,
                256 * 1024,
                "the file engine's first chunk, not the second"
            );
        }
        // An object that fits in one chunk fails before anything is answered.
        let one = Bytes::from(vec![3u8; 100_000]);
        s.put("b-1", "one", one, PutOptions::default())
            .await
            .expect("put");
        damage(&blob_of(&s, "one").await, true);
        if s.blobs.describe().starts_with("file://") {
            assert!(matches!(
                s.get_stream("b-1", "one", None).await,
                Err(StoreError::Corrupt(_))
            ));
        }
        s.delete("b-1", "one").await.expect("delete");
        // A range covering the whole object is a whole read; other ranges are checked by
        // the blocks they touch (this object has one).
        let whole = ByteRange {
            first: 0,
            last: u64::MAX,
        };
        streamed(Some(whole)).await;
        let part = ByteRange {
            first: 10,
            last: 20,
        };
        // Refused when opened (the first block is read ahead), or a stream that fails.
        match s.get_stream("b-1", "big", Some(part)).await {
            Err(StoreError::Corrupt(_)) => {}
            Err(e) => panic!("{e:?}"),
            Ok(obj) => {
                let (n, err) = drain(obj.body).await;
                let damaged = err
                    .as_ref()
                    .is_some_and(|e| crate::verify::Damage::of(e).is_some());
                assert!(n == 0 && damaged, "{n} {err:?}");
            }
        }

        // Copies refuse damage instead of storing it under a fresh digest.
        let blobs = blob_count(&s).await;
        if let Ok(src) = s.get_stream("b-1", "big", None).await {
            let err = s
                .put_stream("b-1", "copy", src.body, PutOptions::default())
                .await
                .expect_err("copy of a damaged object");
            assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        }
        let id = s
            .create_multipart("b-1", "mp", PutOptions::default())
            .await
            .expect("create");
        let whole_source = CopySource {
            bucket: "b-1",
            key: "big",
            version_id: None,
            range: None,
        };
        let err = s
            .upload_part_copy(&id, 1, whole_source, &|_| Ok(()))
            .await
            .expect_err("part copy of a damaged object");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert_eq!(blob_count(&s).await, blobs, "nothing kept of the copies");

        // The deep check names it.
        let report = s.scrub().await.expect("scrub");
        assert_eq!(report.objects, 1);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let shown = report.problems[0].to_string();
        assert!(
            shown.contains("object b-1/big") && shown.contains(&blob) && shown.contains("SHA-256"),
            "{shown}"
        );
        damage(&blob, false);
        assert_eq!(s.get("b-1", "big").await.expect("intact again").body, data);
    }

    #[tokio::test]
    async fn damaged_inline_objects_and_missing_blobs_are_found() {
        let (s, _d) = open().await;
        s.put(
            "b-1",
            "small",
            Bytes::from_static(b"hello"),
            PutOptions::default(),
        )
        .await
        .expect("put");
        s.put("b-1", "empty", Bytes::new(), PutOptions::default())
            .await
            .expect("put");
        let big = Bytes::from(vec![5u8; INLINE_MAX + 1]);
        s.put("b-1", "big", big, PutOptions::default())
            .await
            .expect("put");
        let healthy = s.scrub().await.expect("scrub");
        assert_eq!((healthy.objects, healthy.problems.len()), (3, 0));
        assert_eq!(healthy.bytes, 5 + INLINE_MAX as u64 + 1);

        // A flipped byte in the row's inline bytes (below the engine, as a disk would).
        s.db.write(|c| {
            c.execute(
                "UPDATE objects SET inline = ?1 WHERE bucket = 'b-1' AND key = 'small'",
                params![&b"hellp"[..]],
            )
        })
        .await
        .expect("damage");
        assert!(matches!(
            s.get("b-1", "small").await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            s.get_stream("b-1", "small", None).await,
            Err(StoreError::Corrupt(_))
        ));
        let many = s
            .open_many(vec![("b-1".into(), "small".into())])
            .await
            .expect("open_many");
        assert!(matches!(many[0], Err(StoreError::Corrupt(_))));
        // A range of it too: an inline object is in memory, checked whole.
        let r = ByteRange { first: 0, last: 1 };
        assert!(matches!(
            s.get_stream("b-1", "small", Some(r)).await,
            Err(StoreError::Corrupt(_))
        ));

        // A blob that is gone.
        let blob = blob_of(&s, "big").await;
        s.blobs.delete(&blob).await.expect("delete");
        let report = s.scrub().await.expect("scrub");
        let shown: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown
                .iter()
                .any(|p| p.contains("object b-1/small (inline)")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|p| p.contains(&blob) && p.ends_with("its blob is missing")),
            "{shown:?}"
        );
    }

    #[tokio::test]
    async fn a_damaged_part_fails_its_completion_and_the_deep_check() {
        let (s, damage, _engines) = open_rotting().await;
        let id = s
            .create_multipart("b-1", "mp", PutOptions::default())
            .await
            .expect("create");
        let p1 = Bytes::from(vec![1u8; MIN_PART_BYTES as usize]);
        let e1 = s.upload_part(&id, 1, p1).await.expect("part 1");
        let e2 = s
            .upload_part(&id, 2, Bytes::from_static(b"tail"))
            .await
            .expect("part 2");
        let report = s.scrub().await.expect("scrub");
        assert_eq!((report.parts, report.problems.len()), (2, 0));
        let part_blob: String = {
            let id = id.clone();
            s.db.read(move |c| {
                c.query_row(
                    "SELECT blob FROM multipart_parts WHERE upload_id = ?1 AND part_number = 1",
                    params![id],
                    |r| r.get(0),
                )
            })
            .await
            .expect("part blob")
        };
        damage(&part_blob, true);
        let report = s.scrub().await.expect("scrub");
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(
            report.problems[0]
                .to_string()
                .starts_with(&format!("part 1 of upload {id} (b-1/mp)")),
            "{}",
            report.problems[0]
        );
        let blobs = blob_count(&s).await;
        let err = s
            .complete_multipart(&id, vec![(1, e1.clone()), (2, e2.clone())])
            .await
            .expect_err("a damaged part");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert_eq!(blob_count(&s).await, blobs, "the assembled blob is deleted");
        damage(&part_blob, false);
        s.complete_multipart(&id, vec![(1, e1), (2, e2)])
            .await
            .expect("the upload is still completable");
        let report = s.scrub().await.expect("scrub");
        assert_eq!((report.objects, report.parts), (1, 0));
        assert!(report.problems.is_empty());
    }
}
