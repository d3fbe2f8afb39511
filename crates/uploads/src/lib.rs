//! Upload bookkeeping: the stream record an upload produces, the upload's status row, and
//! the commit that makes an upload's object, record and row durable together.
//!
//! [`UploadSink`] commits uploads; [`UploadLedger`] reads and advances their status. The
//! embedded implementation ([`embedded::EmbeddedUploads`]) writes all three in one
//! transaction of the shared database: an upload is entirely there or not at all.
//! [`LedgerObserver`] lets upload status follow a processor's mapping.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub mod embedded;
pub mod observer;

pub use observer::LedgerObserver;
/// The metadata naming the upload a processed output came from (see its documentation).
pub use sluice_processor::functions::UPLOAD_ID_METADATA;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{bucket}/{key} belongs to another user")]
    Conflict { bucket: String, key: String },
    #[error("upload {0} not found")]
    NotFound(String),
    /// The role the upload route acts as may not store the upload or put its record
    /// (`sluice-upload-route`, see the binary's `builtin_roles`): nothing was stored.
    #[error("{0}")]
    AccessDenied(String),
    #[error(transparent)]
    Store(#[from] sluice_store::StoreError),
    #[error(transparent)]
    Stream(#[from] sluice_stream::StreamError),
    #[error("upload bookkeeping failed: {0}")]
    Backend(String),
    /// The metadata engine failed (full, unavailable, …: see [`sluice_meta::MetaError`]).
    #[error("{0}")]
    Meta(sluice_meta::MetaError),
}

impl From<sluice_meta::MetaError> for UploadError {
    fn from(e: sluice_meta::MetaError) -> Self {
        UploadError::Meta(e)
    }
}

/// A new upload id: a UUID of version 7 (time-ordered, 74 random bits), so that status
/// rows are appended at the end of their index rather than scattered through it.
pub fn new_upload_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The stream record of an upload: the seed's `{bucket,key,uploadedAt,requestId,userSub}`
/// plus what a processor may want without reading the object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UploadRecord {
    pub bucket: String,
    pub key: String,
    /// RFC 3339, UTC, milliseconds.
    pub uploaded_at: String,
    pub request_id: String,
    pub user_sub: String,
    pub upload_id: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadStatus {
    Queued,
    Processing,
    Processed,
    Failed,
}

impl UploadStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadStatus::Queued => "queued",
            UploadStatus::Processing => "processing",
            UploadStatus::Processed => "processed",
            UploadStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> UploadStatus {
        match s {
            "processing" => UploadStatus::Processing,
            "processed" => UploadStatus::Processed,
            "failed" => UploadStatus::Failed,
            _ => UploadStatus::Queued,
        }
    }
}

/// An upload and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub id: String,
    pub user_sub: String,
    pub bucket: String,
    pub key: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub request_id: String,
    pub stream: String,
    pub shard_id: String,
    pub sequence_number: String,
    pub status: UploadStatus,
    /// How many times a processor started on it.
    pub attempts: u32,
    pub error: Option<String>,
    pub processed_bucket: Option<String>,
    pub processed_key: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub processed_ms: Option<i64>,
}

/// An upload to commit.
#[derive(Debug, Clone)]
pub struct NewUpload {
    pub user_sub: String,
    pub bucket: String,
    pub key: String,
    pub filename: String,
    pub body: Bytes,
    pub content_type: String,
    /// User metadata stored with the object (S3's `x-amz-meta-*`).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Tags of the object (S3's `x-amz-tagging`).
    pub tags: Vec<(String, String)>,
    /// Standard headers kept with the object (S3's `Cache-Control`, …).
    pub headers: sluice_store::ObjectHeaders,
    pub request_id: String,
    pub stream: String,
    pub partition_key: String,
}

impl NewUpload {
    /// The upload without its body, and the body.
    pub fn split(self) -> (UploadMeta, Bytes) {
        (
            UploadMeta {
                user_sub: self.user_sub,
                bucket: self.bucket,
                key: self.key,
                filename: self.filename,
                content_type: self.content_type,
                metadata: self.metadata,
                tags: self.tags,
                headers: self.headers,
                request_id: self.request_id,
                stream: self.stream,
                partition_key: self.partition_key,
            },
            self.body,
        )
    }
}

/// Everything about an upload to commit but its body: what goes with a [`Staged`] body to
/// [`UploadSink::commit_staged`].
#[derive(Debug, Clone)]
pub struct UploadMeta {
    pub user_sub: String,
    pub bucket: String,
    pub key: String,
    pub filename: String,
    pub content_type: String,
    /// User metadata stored with the object (S3's `x-amz-meta-*`).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Tags of the object (S3's `x-amz-tagging` on a write into the uploads prefix).
    pub tags: Vec<(String, String)>,
    /// Standard headers kept with the object (S3's `Cache-Control`, …).
    pub headers: sluice_store::ObjectHeaders,
    pub request_id: String,
    pub stream: String,
    pub partition_key: String,
}

impl UploadMeta {
    /// The upload with its body in memory, for [`UploadSink::commit`].
    pub fn with_body(self, body: Bytes) -> NewUpload {
        NewUpload {
            user_sub: self.user_sub,
            bucket: self.bucket,
            key: self.key,
            filename: self.filename,
            body,
            content_type: self.content_type,
            metadata: self.metadata,
            tags: self.tags,
            headers: self.headers,
            request_id: self.request_id,
            stream: self.stream,
            partition_key: self.partition_key,
        }
    }
}

/// A multipart upload of the object store, completed as an upload: the object it assembles
/// is the upload's object. Bucket, key, content type and user metadata are those the
/// multipart upload was created with.
#[derive(Debug, Clone)]
pub struct MultipartCompletion {
    /// The object store's id of the multipart upload.
    pub multipart_id: String,
    /// The parts to assemble: ascending part numbers with the ETags their upload returned.
    pub parts: Vec<(u32, String)>,
    /// The upload's user; also the object's owner.
    pub user_sub: String,
    pub filename: String,
    pub request_id: String,
    pub stream: String,
    pub partition_key: String,
}

/// An upload committed by [`UploadSink::complete_multipart`].
#[derive(Debug, Clone)]
pub struct CompletedMultipart {
    pub upload: Upload,
    /// The object's ETag: S3's multipart ETag, `hex(md5(part MD5s))-N`.
    pub etag: String,
}

pub use sluice_store::ByteStream;
use sluice_store::embedded::Prepared;

/// A body written to durable staging by [`UploadSink::stage`] (hashed; a large one in an
/// fsynced blob file that no row references yet), waiting for
/// [`UploadSink::commit_staged`]. Dropping it uncommitted deletes what was staged.
pub struct Staged {
    prepared: Prepared,
    discard: Option<Box<dyn FnOnce(Prepared) + Send + Sync>>,
}

impl Staged {
    /// `discard` runs if the body is dropped without being committed.
    pub fn new(prepared: Prepared, discard: impl FnOnce(Prepared) + Send + Sync + 'static) -> Self {
        Staged {
            prepared,
            discard: Some(Box::new(discard)),
        }
    }

    pub fn size(&self) -> u64 {
        self.prepared.size()
    }

    /// The MD5 of the staged bytes in hex.
    pub fn md5(&self) -> &str {
        self.prepared.md5()
    }

    /// Hands the body over for committing: from now on the committer owns its blob file.
    pub fn into_prepared(mut self) -> Prepared {
        self.discard = None;
        // Cheap: a prepared body is a blob name or a shared `Bytes`.
        self.prepared.clone()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(discard) = self.discard.take() {
            discard(self.prepared.clone());
        }
    }
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("prepared", &self.prepared)
            .finish_non_exhaustive()
    }
}

/// Commits uploads: object, stream record and status row, all durable, or none visible.
#[async_trait]
pub trait UploadSink: Send + Sync + 'static {
    /// Commits an upload whose body is in memory.
    async fn commit(&self, upload: NewUpload) -> Result<Upload, UploadError>;

    /// Streams a body to durable staging, hashing it, without holding it whole in memory
    /// and without committing anything. A body whose stream fails leaves nothing behind.
    async fn stage(&self, body: ByteStream) -> Result<Staged, UploadError>;

    /// Commits an upload whose body was staged: all or nothing, as [`commit`](Self::commit).
    async fn commit_staged(&self, upload: UploadMeta, body: Staged) -> Result<Upload, UploadError>;

    /// Completes a multipart upload of the object store as an upload: the assembled
    /// object, the end of the multipart upload, the stream record and the status row, all
    /// durable, or none of them. When it fails, the multipart upload is left as it was (it
    /// can be completed again, or aborted).
    async fn complete_multipart(
        &self,
        completion: MultipartCompletion,
    ) -> Result<CompletedMultipart, UploadError>;
}

/// Upload status, read by the API and advanced by processors.
#[async_trait]
pub trait UploadLedger: Send + Sync + 'static {
    async fn get(&self, id: &str) -> Result<Upload, UploadError>;
    /// A processor started on the upload; counts an attempt.
    async fn mark_processing(&self, id: &str) -> Result<(), UploadError>;
    async fn mark_processed(&self, id: &str, bucket: &str, key: &str) -> Result<(), UploadError>;
    async fn mark_failed(&self, id: &str, error: &str) -> Result<(), UploadError>;
    /// The bytes `user_sub` uploaded since `since_ms` (for the per-user daily limit).
    async fn bytes_since(&self, user_sub: &str, since_ms: i64) -> Result<u64, UploadError>;
    /// `user_sub`'s uploads, newest first (by creation, then id): at most `limit` of them,
    /// starting after `after` (the last one of the previous page).
    async fn list(
        &self,
        user_sub: &str,
        after: Option<&UploadCursor>,
        limit: usize,
    ) -> Result<Vec<Upload>, UploadError>;
    /// `user_sub`'s uploads whose row changed at or after `since_ms` (`updated_ms`) — or,
    /// with `after_id`, after `(since_ms, after_id)` — in order of change then id, at most
    /// `limit`: what a live view polls for.
    async fn changed_since(
        &self,
        user_sub: &str,
        since_ms: i64,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Upload>, UploadError>;

    /// Several status changes together (the embedded ledger writes them in one
    /// transaction). By default, one after another.
    async fn apply(&self, changes: Vec<StatusChange>) -> Result<(), UploadError> {
        for c in changes {
            match c {
                StatusChange::Processing { id } => self.mark_processing(&id).await?,
                StatusChange::Processed {
                    id, bucket, key, ..
                } => self.mark_processed(&id, &bucket, &key).await?,
                StatusChange::Failed { id, error, .. } => self.mark_failed(&id, &error).await?,
            }
        }
        Ok(())
    }

    /// The embedded database whose `uploads` table holds the status rows, when there is
    /// one: other parts may then write [`embedded::apply_in_tx`] inside their own
    /// transaction of that database (e.g. the processor, with its checkpoint).
    fn db(&self) -> Option<&sluice_meta::Meta> {
        None
    }
}

/// Where a page of [`UploadLedger::list`] ended: the last upload's creation time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadCursor {
    pub created_ms: i64,
    pub id: String,
}

impl UploadCursor {
    pub fn of(u: &Upload) -> Self {
        UploadCursor {
            created_ms: u.created_ms,
            id: u.id.clone(),
        }
    }

    /// The opaque token clients pass back (`<created_ms>.<id>`).
    pub fn token(&self) -> String {
        format!("{}.{}", self.created_ms, self.id)
    }

    /// A token [`Self::token`] made; `None` for anything else.
    pub fn parse(token: &str) -> Option<Self> {
        let (ms, id) = token.split_once('.')?;
        let created_ms = ms.parse::<i64>().ok()?;
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| UploadCursor {
            created_ms,
            id: id.to_owned(),
        })
    }
}

/// A change of an upload's status row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    /// A processor started on the upload; counts a delivery (`attempts + 1`).
    Processing { id: String },
    /// Processed, output at `bucket/key`. `new_attempt`: no `Processing` was written for
    /// this delivery, so this change counts it.
    Processed {
        id: String,
        bucket: String,
        key: String,
        new_attempt: bool,
    },
    /// Given up on. `new_attempt` as for `Processed`.
    Failed {
        id: String,
        error: String,
        new_attempt: bool,
    },
}

/// RFC 3339 in UTC with milliseconds, as JavaScript's `Date.toISOString()` (the seed's
/// `uploadedAt`).
pub fn iso8601_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_uses_the_seeds_field_names() {
        let r = UploadRecord {
            bucket: "b".into(),
            key: "uploads/a.txt".into(),
            uploaded_at: iso8601_ms(0),
            request_id: "r".into(),
            user_sub: "u".into(),
            upload_id: "i".into(),
            size: 1,
            sha256: "s".into(),
            content_type: "text/plain".into(),
        };
        let v = serde_json::to_value(&r).expect("json");
        for f in [
            "bucket",
            "key",
            "uploadedAt",
            "requestId",
            "userSub",
            "uploadId",
        ] {
            assert!(v.get(f).is_some(), "{f}");
        }
        assert_eq!(v["uploadedAt"], "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(1_733_436_665_123), "2024-12-05T22:11:05.123Z");
        assert_eq!(iso8601_ms(1_733_436_665_000), "2024-12-05T22:11:05.000Z");
    }
}
