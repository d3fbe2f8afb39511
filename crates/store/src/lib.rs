//! Objects in buckets: bytes plus metadata (size, ETag, SHA-256, content type, owner).
//!
//! [`ObjectStore`] is the boundary; [`embedded::EmbeddedStore`] keeps objects under the data
//! directory. This crate knows nothing about HTTP or S3's wire format.

use async_trait::async_trait;
use std::sync::Arc;

use bytes::Bytes;

pub mod embedded;
pub mod notifications;
pub mod verify;
pub mod versions;

pub use versions::{Deleted, VersionEntry, VersionMarker, Versioning};

/// A body that arrives or leaves in chunks (an HTTP request body, one part of a form, an
/// object being read): never held whole in memory.
pub type ByteStream = sluice_blobs::ByteStream;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bucket {0} does not exist")]
    NoSuchBucket(String),
    #[error("object {bucket}/{key} does not exist")]
    NoSuchKey { bucket: String, key: String },
    #[error("object {bucket}/{key} belongs to another user")]
    OwnedByOther { bucket: String, key: String },
    #[error("bucket {0} already exists")]
    BucketExists(String),
    #[error("bucket {0} is not empty")]
    BucketNotEmpty(String),
    #[error("multipart upload {0} does not exist")]
    NoSuchUpload(String),
    /// The object has no version of this id.
    #[error("object {bucket}/{key} has no version {version_id}")]
    NoSuchVersion {
        bucket: String,
        key: String,
        version_id: String,
    },
    /// The version is protected by object lock (retention or legal hold); the message says
    /// how.
    #[error("Access Denied because object protected by object lock: {0}")]
    ObjectLocked(String),
    /// The version asked for is a delete marker: it has no bytes and no metadata to read.
    #[error("version {version_id} is a delete marker")]
    DeleteMarker {
        version_id: String,
        last_modified_ms: i64,
    },
    #[error("{0}")]
    InvalidPart(String),
    #[error("object {bucket}/{key} already exists")]
    AlreadyExists { bucket: String, key: String },
    #[error("parts must be listed in ascending order of part number")]
    InvalidPartOrder,
    #[error("part {part} is {size} bytes; every part but the last must be at least {min} bytes")]
    EntityTooSmall { part: u32, size: u64, min: u64 },
    #[error("{0}")]
    InvalidArgument(String),
    /// A conditional write lost a race: the object it was conditioned on changed while it
    /// was being written (S3's 409 `ConditionalRequestConflict`; retrying may succeed).
    #[error("a conflicting operation occurred during the write of {bucket}/{key}; retry it")]
    ConditionalConflict { bucket: String, key: String },
    /// A copy source failed one of the caller's conditions ([`SourceCheck`]).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The bytes do not match the MD5 the client sent.
    #[error("the Content-MD5 you specified did not match what we received")]
    BadDigest,
    /// The bytes do not match a checksum the client sent ([`BodyCheck`]): the message says
    /// which.
    #[error("{0}")]
    BadChecksum(String),
    #[error("{size} bytes is more than the largest allowed, {max} bytes")]
    EntityTooLarge { size: u64, max: u64 },
    #[error("storage i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage backend failure: {0}")]
    Backend(String),
    /// The metadata engine failed (full, unavailable, …: see [`sluice_meta::MetaError`]).
    #[error("{0}")]
    Meta(sluice_meta::MetaError),
    /// The blob engine failed (full, unavailable, …: see [`sluice_blobs::BlobError`]).
    #[error("{0}")]
    Blobs(sluice_blobs::BlobError),
    /// Stored bytes do not match the digest written with them (or their recorded size):
    /// they are refused, never served ([`verify`]). A server error (500), not a client's:
    /// no replica engine exists that could serve the object instead (when one does, this
    /// becomes a 503 while it can).
    #[error("stored bytes are damaged: {0}")]
    Corrupt(Box<verify::Damage>),
}

impl From<sluice_blobs::BlobError> for StoreError {
    fn from(e: sluice_blobs::BlobError) -> Self {
        match e {
            // The body handed to a put failed: the caller's stream, not the engine.
            sluice_blobs::BlobError::Body(io) => StoreError::Io(io),
            other => StoreError::Blobs(other),
        }
    }
}

impl StoreError {
    /// An engine (metadata or blobs) is down or out of reach: try again later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Meta(m) => m.is_unavailable(),
            StoreError::Blobs(b) => b.is_unavailable(),
            _ => false,
        }
    }

    /// An engine is out of space.
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::Meta(m) => m.is_full(),
            StoreError::Blobs(b) => b.is_full(),
            StoreError::Io(e) => matches!(e.raw_os_error(), Some(28) | Some(122)),
            _ => false,
        }
    }
}

impl From<sluice_meta::MetaError> for StoreError {
    fn from(e: sluice_meta::MetaError) -> Self {
        StoreError::Meta(e)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// MD5 of the bytes in hex, as S3 computes the ETag of a single-part upload (unquoted).
    pub etag: String,
    /// SHA-256 of the bytes in hex.
    pub sha256: String,
    pub content_type: String,
    pub last_modified_ms: i64,
    /// The user (`sub`) that wrote the object, if written on a user's behalf.
    pub owner: Option<String>,
    /// User metadata (S3's `x-amz-meta-*`), names lower-case.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Tags (S3's object tagging), in the order they were given.
    pub tags: Vec<(String, String)>,
    /// The standard headers kept with the object.
    pub headers: ObjectHeaders,
    /// The object's version (S3's `x-amz-version-id`); `None` for the `null` version, the
    /// only version an object has in a bucket whose versioning was never enabled.
    pub version_id: Option<String>,
}

/// The standard headers S3 keeps with an object and answers on GET and HEAD. `None`: not
/// set (for the storage class: `STANDARD`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ObjectHeaders {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// `Expires`, as the HTTP date it was given as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// `x-amz-website-redirect-location`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub website_redirect: Option<String>,
    /// `x-amz-storage-class` other than `STANDARD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// The object's checksum as S3 reports it (`x-amz-checksum-*`): the algorithm's name
    /// (`CRC32`, `CRC32C`, `CRC64NVME`, `SHA1`, `SHA256`) and its base64 value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<(String, String)>,
    /// Object lock retention: the mode (`GOVERNANCE` or `COMPLIANCE`) and until when
    /// (milliseconds since the epoch) the version cannot be deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<(String, i64)>,
    /// An object lock legal hold: the version cannot be deleted while it is on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub legal_hold: bool,
    /// The server-side encryption the version reports: algorithm and KMS key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse: Option<(String, Option<String>)>,
    /// The version's canned ACL (`None`: private).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<String>,
}

impl ObjectHeaders {
    /// Why this version may not be deleted at `now` (S3's object lock): a legal hold, a
    /// COMPLIANCE retention not yet over, or a GOVERNANCE one unless `bypass_governance`.
    pub fn deletion_refused(&self, now_ms: i64, bypass_governance: bool) -> Option<&'static str> {
        if self.legal_hold {
            return Some("the version is under a legal hold");
        }
        match &self.lock {
            Some((mode, until)) if *until > now_ms => {
                if mode == "COMPLIANCE" {
                    Some("the version is under COMPLIANCE retention")
                } else if !bypass_governance {
                    Some("the version is under GOVERNANCE retention")
                } else {
                    None
                }
            }
            _ => None,
        }
    }
}

/// A change of a version's headers, made in the transaction that reads them
/// ([`ObjectStore::update_headers`]): an error leaves them as they were. It may run more
/// than once (a transaction the engine retries).
pub type HeadersUpdate =
    Box<dyn Fn(&mut ObjectHeaders) -> Result<(), StoreError> + Send + Sync + 'static>;

impl ObjectHeaders {
    pub fn is_empty(&self) -> bool {
        *self == ObjectHeaders::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    pub created_ms: i64,
}

/// A part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub part_number: u32,
    pub size: u64,
    /// MD5 of the part in hex (unquoted).
    pub etag: String,
    pub last_modified_ms: i64,
    /// The part's flexible checksum (algorithm, base64 value), when its upload sent one.
    pub checksum: Option<(String, String)>,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartInfo {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub created_ms: i64,
    /// The checksum the upload was created for (S3's `x-amz-checksum-algorithm` and
    /// `x-amz-checksum-type` on CreateMultipartUpload): algorithm and `FULL_OBJECT` or
    /// `COMPOSITE`. Created with [`PutOptions::headers`]' `checksum` set to that pair; the
    /// completed object's checksum replaces it ([`ObjectStore::set_multipart_checksum`]).
    pub checksum: Option<(String, String)>,
}

/// Smallest size of every part of a multipart upload but the last, as S3 (5 MiB).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;

/// Largest part of a multipart upload, as S3 (5 GiB).
pub const MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// A byte range: offsets of the first and the last byte, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

/// The object (or a range of it) that [`ObjectStore::upload_part_copy`] copies.
#[derive(Debug, Clone, Copy)]
pub struct CopySource<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    /// The version to copy; `None`: the current one.
    pub version_id: Option<&'a str>,
    /// The whole object when `None`. A range that does not lie within the object is
    /// [`StoreError::InvalidArgument`].
    pub range: Option<ByteRange>,
}

/// A check of a copy source's metadata, run on the very version whose bytes are then
/// copied (S3's `x-amz-copy-source-if-*` conditions). Its error is returned as is.
pub type SourceCheck<'a> = &'a (dyn Fn(&ObjectInfo) -> Result<(), StoreError> + Send + Sync);

/// Where a listing of multipart uploads starts: after every upload of keys up to `key`
/// when `upload_id` is `None`, otherwise after that upload of `key`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadMarker {
    pub key: String,
    pub upload_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Object {
    pub info: ObjectInfo,
    pub body: Bytes,
}

/// An object to write with [`ObjectStore::put_many`].
#[derive(Debug, Clone)]
pub struct NewObject {
    pub bucket: String,
    pub key: String,
    pub body: Bytes,
    pub opts: PutOptions,
}

/// An object's metadata and (a range of) its bytes, streamed.
pub struct ObjectStream {
    pub info: ObjectInfo,
    pub body: ByteStream,
}

/// A check of a streamed body that the store runs once every byte has been read and before
/// the object is committed: S3's flexible checksums, which the edge computes as the body
/// streams through and compares with the client's value (which may come in a trailer, after
/// the body). `Ok(Some(checksum))` is kept as the object's [`ObjectHeaders::checksum`];
/// an error refuses the write and nothing is kept.
#[derive(Clone)]
pub struct BodyCheck(
    #[allow(clippy::type_complexity)]
    pub  Arc<dyn Fn() -> Result<Option<(String, String)>, StoreError> + Send + Sync>,
);

impl std::fmt::Debug for BodyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyCheck")
    }
}

#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Defaults to `application/octet-stream`.
    pub content_type: Option<String>,
    /// Records the writer. When set, a put over an object of a *different* owner fails
    /// with [`StoreError::OwnedByOther`]; objects without an owner may be overwritten.
    pub owner: Option<String>,
    /// User metadata to store with the object.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Write only if no object has the key (S3's `If-None-Match: *`): otherwise
    /// [`StoreError::AlreadyExists`], checked in the same transaction as the write.
    pub if_absent: bool,
    /// The MD5 the client computed (S3's `Content-MD5`): the object is stored only if its
    /// bytes match, otherwise [`StoreError::BadDigest`] and nothing is kept.
    pub content_md5: Option<[u8; 16]>,
    /// The S3 event name the write is notified as (`ObjectCreated:Copy` for CopyObject);
    /// `None`: `ObjectCreated:Put`. Multipart completion is always
    /// `ObjectCreated:CompleteMultipartUpload`.
    pub created_event: Option<&'static str>,
    /// Tags (S3's `x-amz-tagging`); they replace an existing object's.
    pub tags: Vec<(String, String)>,
    /// Standard headers to keep with the object; they replace an existing object's.
    pub headers: ObjectHeaders,
    /// Write only over an object whose ETag (unquoted MD5) is this one, or over any object
    /// for `*` (S3's `If-Match`):
    /// otherwise [`StoreError::PreconditionFailed`], or `NoSuchKey` when there is no
    /// object; checked in the same transaction as the write.
    pub if_match: Option<String>,
    /// Run on a streamed body ([`ObjectStore::put_stream`]) before it is committed.
    pub body_check: Option<BodyCheck>,
    /// When the write began (ms). A condition (`if_absent`, `if_match`) that fails
    /// because of an object written since is [`StoreError::ConditionalConflict`] (another
    /// write raced this one), not a precondition failure.
    pub started_ms: Option<i64>,
}

/// A durable object store.
///
/// `put` returns only after the object is durable. Writes of one key are atomic: a reader
/// sees the old object or the new one, never a mix.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// The bytes of every object whose owner is `owner` (one indexed read): what a user
    /// stores, for the per-user storage limit.
    async fn owned_bytes(&self, owner: &str) -> Result<u64, StoreError>;
    /// Creates a bucket unless it exists.
    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError>;
    /// Creates a bucket; `BucketExists` if it exists.
    async fn create_bucket(&self, bucket: &str) -> Result<(), StoreError>;
    /// `NoSuchBucket` if the bucket does not exist.
    async fn head_bucket(&self, bucket: &str) -> Result<BucketInfo, StoreError>;
    async fn list_buckets(&self) -> Result<Vec<BucketInfo>, StoreError>;
    /// Deletes an empty bucket (`BucketNotEmpty` otherwise).
    async fn delete_bucket(&self, bucket: &str) -> Result<(), StoreError>;
    /// A bucket's configuration of one kind (an opaque document the S3 edge keeps: CORS,
    /// lifecycle, …); `None`: not set. `NoSuchBucket` if the bucket does not exist.
    async fn bucket_config(&self, bucket: &str, kind: &str) -> Result<Option<String>, StoreError>;
    /// Sets (`Some`) or removes (`None`) a bucket's configuration of one kind; it goes with
    /// the bucket.
    async fn set_bucket_config(
        &self,
        bucket: &str,
        kind: &str,
        config: Option<String>,
    ) -> Result<(), StoreError>;
    /// A bucket's tags (`None`: it has no tag set); `NoSuchBucket` if it does not exist.
    async fn bucket_tags(&self, bucket: &str) -> Result<Option<Vec<(String, String)>>, StoreError>;
    /// Replaces (`Some`) or removes (`None`) a bucket's tags; they go with the bucket.
    async fn set_bucket_tags(
        &self,
        bucket: &str,
        tags: Option<Vec<(String, String)>>,
    ) -> Result<(), StoreError>;
    /// Replaces the tags of an object's current version, or of the version `version_id`
    /// (empty: removes them); `NoSuchKey` if there is no object, `NoSuchVersion` /
    /// `DeleteMarker` as [`head_version`](Self::head_version).
    async fn set_object_tags(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        tags: Vec<(String, String)>,
    ) -> Result<(), StoreError>;
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError>;
    /// Writes several objects (bodies in memory) in one metadata transaction: all of them
    /// or none. Durable when it returns.
    async fn put_many(&self, objects: Vec<NewObject>) -> Result<Vec<ObjectInfo>, StoreError>;
    /// [`put`](Self::put) for a body that arrives in chunks: it is never held whole in
    /// memory. A body that fails (an error item) stores nothing and is [`StoreError::Io`].
    async fn put_stream(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError>;
    /// The whole object, in memory, checked against its digest ([`StoreError::Corrupt`]
    /// when damaged): for small objects only (use
    /// [`get_stream`](Self::get_stream) for anything a client sent).
    async fn get(&self, bucket: &str, key: &str) -> Result<Object, StoreError>;
    /// Several objects, each found or not on its own, opened together for reading: one
    /// metadata read for all of them. A small object comes with its bytes (they live in its
    /// row); a large one is streamed from its blob as the caller reads, so opening any
    /// number of objects of any size holds none of them whole in memory.
    async fn open_many(
        &self,
        keys: Vec<(String, String)>,
    ) -> Result<Vec<Result<ObjectStream, StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for (b, k) in keys {
            out.push(self.get_stream(&b, &k, None).await);
        }
        Ok(out)
    }
    /// The object's metadata and the bytes `range` names (all of them when `None`; a range
    /// past the end is cut at the end), streamed: only the range is read. A read of the
    /// whole object is checked against the digest written with it: damage is
    /// [`StoreError::Corrupt`], or — found after the first chunk — an error item in place
    /// of the chunk that would complete the object (see [`verify`]). Ranges are not checked.
    async fn get_stream(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<ObjectStream, StoreError>;
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, StoreError>;
    /// The object's metadata and, for an object assembled from a multipart upload, the
    /// number and size of each of its parts, in order (empty for any other object).
    async fn head_parts(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(ObjectInfo, Vec<(u32, u64)>), StoreError>;
    /// Deletes an object as S3's DeleteObject without a version id: in a bucket with
    /// versioning it leaves a delete marker (see [`Versioning`]). `Ok` if it did not exist.
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.delete_version(bucket, key, None, false)
            .await
            .map(|_| ())
    }
    /// Deletes the version `version_id` of an object for good (the version before it
    /// becomes current when it was the current one), or — `None` — the object as
    /// [`delete`](Self::delete) does. A version that does not exist is not an error; one
    /// that object lock protects is [`StoreError::ObjectLocked`] (see
    /// [`ObjectHeaders::deletion_refused`]).
    async fn delete_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        bypass_governance: bool,
    ) -> Result<Deleted, StoreError>;
    /// Changes the headers of an object's current version, or of the version `version_id`
    /// (object lock's retention and legal hold), in one transaction; returns them as
    /// changed. Errors as [`head_version`](Self::head_version), or `update`'s.
    async fn update_headers(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        update: HeadersUpdate,
    ) -> Result<ObjectHeaders, StoreError>;
    /// The metadata of one version of an object and its parts (as
    /// [`head_parts`](Self::head_parts)). `NoSuchVersion` when it has no such version,
    /// `DeleteMarker` when the version is a delete marker.
    async fn head_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> Result<(ObjectInfo, Vec<(u32, u64)>), StoreError>;
    /// [`get_stream`](Self::get_stream) of one version of an object; errors as
    /// [`head_version`](Self::head_version).
    async fn get_version_stream(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
        range: Option<ByteRange>,
    ) -> Result<ObjectStream, StoreError>;
    /// Every version and delete marker of the objects whose key starts with `prefix`:
    /// ordered by key, then newest first; after `after`. `NoSuchBucket` if the bucket does
    /// not exist; a marker naming a version that does not exist is `InvalidArgument`.
    async fn list_versions(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<VersionMarker>,
        limit: usize,
    ) -> Result<Vec<VersionEntry>, StoreError>;
    /// Objects whose key starts with `prefix`, in key order, after `start_after`.
    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Starts a multipart upload of `bucket/key`; returns its upload id.
    async fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        opts: PutOptions,
    ) -> Result<String, StoreError>;
    /// Stores a part (1–10,000); a part uploaded again replaces the previous one. Returns
    /// the part's ETag (MD5 hex). Durable when it returns.
    async fn upload_part(
        &self,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError>;
    /// [`upload_part`](Self::upload_part) for a body that arrives in chunks; with
    /// `content_md5`, a part whose bytes do not match is [`StoreError::BadDigest`] and not
    /// kept; `body_check` runs once the body is read, before the part is kept (its
    /// checksum is kept with the part: [`PartInfo::checksum`]).
    async fn upload_part_stream(
        &self,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        content_md5: Option<[u8; 16]>,
        body_check: Option<BodyCheck>,
    ) -> Result<String, StoreError>;
    /// Sets the checksum the completed object of a multipart upload will have (computed by
    /// the caller from its parts' checksums before completing).
    async fn set_multipart_checksum(
        &self,
        upload_id: &str,
        checksum: Option<(String, String)>,
    ) -> Result<(), StoreError>;
    /// Stores a part copied from an object (the whole object or `source.range`), like
    /// [`upload_part`](Self::upload_part): the part's ETag is the MD5 of the copied bytes.
    /// `check` sees the source's metadata before a byte is copied. `NoSuchKey` /
    /// `NoSuchBucket` when the source does not exist.
    async fn upload_part_copy(
        &self,
        upload_id: &str,
        part_number: u32,
        source: CopySource<'_>,
        check: SourceCheck<'_>,
    ) -> Result<PartInfo, StoreError>;
    async fn multipart(&self, upload_id: &str) -> Result<MultipartInfo, StoreError>;
    /// Multipart uploads in progress in `bucket` whose key starts with `prefix`, after
    /// `after`, ordered by key and, for one key, by initiation (upload ids of one key sort
    /// in the order the uploads were created). `NoSuchBucket` if the bucket does not exist.
    async fn list_multipart_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<UploadMarker>,
        limit: usize,
    ) -> Result<Vec<MultipartInfo>, StoreError>;
    async fn list_parts(&self, upload_id: &str) -> Result<Vec<PartInfo>, StoreError>;
    /// What [`ObjectStore::complete_multipart`] would refuse about the part list, checked
    /// without reading the parts' bytes (`NoSuchUpload`, `InvalidPart`,
    /// `InvalidPartOrder`, `EntityTooSmall`); the object's size when it would go ahead.
    async fn check_completion(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<u64, StoreError>;
    /// Assembles the listed parts (ascending part numbers, ETags as returned by
    /// `upload_part`) into the object, with S3's multipart ETag (`md5(md5s)-N`), and ends
    /// the upload.
    async fn complete_multipart(
        &self,
        upload_id: &str,
        parts: Vec<(u32, String)>,
    ) -> Result<ObjectInfo, StoreError>;
    /// Ends the upload and discards its parts. `NoSuchUpload` if it does not exist.
    async fn abort_multipart(&self, upload_id: &str) -> Result<(), StoreError>;
}

/// Bucket names as S3 allows them (3–63 of lower-case letters, digits, '.', '-', starting
/// and ending with a letter or digit).
pub fn validate_bucket_name(name: &str) -> Result<(), StoreError> {
    let b = name.as_bytes();
    let ok = (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.last().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(format!(
            "invalid bucket name {name:?}"
        )))
    }
}

/// Object keys: 1–1024 bytes of UTF-8, as S3, without the characters XML 1.0 cannot
/// carry (control characters other than tab, line feed and carriage return; U+FFFE,
/// U+FFFF). S3 takes those, then cannot name such a key in the XML of its own answers
/// (CreateMultipartUpload, DeleteObjects, a listing without `encoding-type=url`); sluice
/// refuses them when they are written, so every stored key can be answered.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > 1024 {
        return Err(StoreError::InvalidArgument(format!(
            "object key must be 1 to 1024 bytes, got {}",
            key.len()
        )));
    }
    let xml_cannot = |c: char| {
        (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFE}' || c == '\u{FFFF}'
    };
    if let Some(c) = key.chars().find(|c| xml_cannot(*c)) {
        return Err(StoreError::InvalidArgument(format!(
            "object key holds the character U+{:04X}, which XML 1.0 cannot carry",
            c as u32
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        assert!(validate_bucket_name("sluice").is_ok());
        assert!(validate_bucket_name("my.bucket-1").is_ok());
        assert!(validate_bucket_name("ab").is_err());
        assert!(validate_bucket_name("Upper").is_err());
        assert!(validate_bucket_name("-dash").is_err());
    }
}
