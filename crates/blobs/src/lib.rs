//! **blobs**: object bytes, behind one engine trait, [`Blobs`]. Metadata (which object a
//! blob holds, its size and hashes) lives in `meta`; a blob engine only keeps numbered byte
//! strings and never holds a whole one in memory.
//!
//! Engines, chosen by URL ([`open`]):
//! - `file://DIR` or a plain path (the embedded default): one file per blob under `DIR`,
//!   written through a temporary name, fsynced with its directory, then renamed
//!   (`fs.rs`).
//! - `s3://BUCKET?endpoint=URL&region=R&prefix=P`: any S3-compatible store (`s3.rs`, when
//!   built with the `s3` feature).
//!
//! Contract of every engine (checked by [`conformance::run_all`]):
//! - [`Blobs::put_stream`] returns `Ok` only once the whole blob is durable (fsynced, or
//!   acknowledged by an engine that is configured to sync). If the body fails, or the call
//!   is dropped, no blob of that id becomes visible (a partial file or multipart upload is
//!   removed, or left for [`Blobs::list`]-based sweeping when even that fails).
//! - Blob ids are chosen by the caller ([`new_id`]), never reused, never overwritten.
//! - [`Blobs::get_range`] streams the bytes asked for; reading a range never reads the rest.
//! - [`Blobs::delete`] is `Ok` when the blob does not exist.

use std::pin::Pin;

use bytes::Bytes;

pub mod fs;
#[cfg(feature = "s3")]
pub mod s3;

#[cfg(feature = "conformance")]
pub mod conformance;

/// A body that arrives (or leaves) in chunks.
pub type ByteStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} does not exist")]
    NotFound(String),
    /// The body handed to `put_stream` failed (the client went away, a limit was hit).
    #[error("the body failed: {0}")]
    Body(std::io::Error),
    /// No room left on the engine.
    #[error("blob storage is full: {0}")]
    Full(String),
    /// The engine cannot be reached: try again later.
    #[error("blob storage unavailable: {0}")]
    Unavailable(String),
    #[error("blob storage i/o failed: {0}")]
    Io(std::io::Error),
    #[error("blob storage failure: {0}")]
    Backend(String),
    #[error("blob engine {0} is not built in (rebuild with its cargo feature)")]
    NotBuiltIn(String),
    #[error("invalid blob storage URL {url}: {message}")]
    InvalidUrl { url: String, message: String },
}

impl From<std::io::Error> for BlobError {
    fn from(e: std::io::Error) -> Self {
        // ENOSPC and EDQUOT: the disk or the quota is full.
        if matches!(e.raw_os_error(), Some(28) | Some(122)) {
            BlobError::Full(e.to_string())
        } else {
            BlobError::Io(e)
        }
    }
}

impl BlobError {
    /// The engine is down or out of reach: the operation may succeed later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, BlobError::Unavailable(_))
    }

    /// The engine is out of space.
    pub fn is_full(&self) -> bool {
        matches!(self, BlobError::Full(_))
    }
}

/// A blob as [`Blobs::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    pub id: String,
    /// When it was written, in milliseconds since the epoch.
    pub modified_ms: i64,
}

/// Where object bytes live.
#[async_trait::async_trait]
pub trait Blobs: Send + Sync + 'static {
    /// Stores `body` as the new blob `id` and returns its size once it is durable. On
    /// failure (or if the future is dropped) no blob `id` is left behind.
    async fn put_stream(&self, id: &str, body: ByteStream) -> Result<u64, BlobError>;

    /// The bytes `first..=last` of blob `id` (all of it when `range` is `None`), as a
    /// stream. [`BlobError::NotFound`] if there is no such blob. A range past the end is
    /// cut at the end (`last = u64::MAX` means "to the end").
    async fn get_range(&self, id: &str, range: Option<(u64, u64)>)
    -> Result<ByteStream, BlobError>;

    /// Deletes blob `id`; `Ok` if it does not exist.
    async fn delete(&self, id: &str) -> Result<(), BlobError>;

    /// Up to `limit` blobs with ids after `after`, in id order (for sweeping blobs that no
    /// row references).
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<BlobEntry>, BlobError>;

    /// Removes what writes that never finished (a crash mid-`put_stream`) left behind and
    /// that is older than `before_ms`; returns how many. Engines whose partial writes are
    /// invisible and cleaned by the store itself (S3 multipart uploads, with a lifecycle
    /// rule) have nothing to do.
    async fn remove_partial(&self, before_ms: i64) -> Result<usize, BlobError> {
        let _ = before_ms;
        Ok(0)
    }

    /// Whether the engine can be used now (`sluice doctor`): by default, one blob is
    /// listed, which proves the engine reachable and its location there (an S3 bucket
    /// exists and the credentials may read it). Writes nothing that stays.
    async fn check(&self) -> Result<(), BlobError> {
        self.list(None, 1).await.map(|_| ())
    }

    /// The engine's URL without secrets, for logs and `sluice doctor`.
    fn describe(&self) -> String;
}

/// A fresh blob id: 32 lower-case hex digits, random.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether `id` has the shape [`new_id`] gives (engines refuse others: an id becomes a
/// path or an object key).
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Opens the engine a URL names: `file://DIR` or a plain directory path (created if
/// needed), or `s3://BUCKET?…` (see the `s3` module).
pub fn open(url: &str) -> Result<std::sync::Arc<dyn Blobs>, BlobError> {
    open_engine(url, true)
}

/// Opens the engine a URL names without creating anything, to inspect it (`sluice
/// doctor`): a missing directory is reported by [`Blobs::check`].
pub fn inspect(url: &str) -> Result<std::sync::Arc<dyn Blobs>, BlobError> {
    open_engine(url, false)
}

fn open_engine(url: &str, create: bool) -> Result<std::sync::Arc<dyn Blobs>, BlobError> {
    let dir = |path: &str| -> Result<std::sync::Arc<dyn Blobs>, BlobError> {
        let path = std::path::Path::new(path);
        Ok(std::sync::Arc::new(if create {
            fs::FsBlobs::open(path)?
        } else {
            fs::FsBlobs::at(path)
        }))
    };
    match url.split_once("://") {
        None => dir(url),
        Some(("file", path)) => dir(path),
        Some(("s3", _)) => open_s3(url),
        Some((other, _)) => Err(BlobError::InvalidUrl {
            url: url.to_owned(),
            message: format!("unknown engine {other:?}; use file:// or s3://"),
        }),
    }
}

#[cfg(feature = "s3")]
fn open_s3(url: &str) -> Result<std::sync::Arc<dyn Blobs>, BlobError> {
    Ok(std::sync::Arc::new(s3::S3Blobs::open(url)?))
}

#[cfg(not(feature = "s3"))]
fn open_s3(url: &str) -> Result<std::sync::Arc<dyn Blobs>, BlobError> {
    Err(BlobError::NotBuiltIn(format!(
        "s3 ({})",
        url.split('?').next().unwrap_or(url)
    )))
}

/// A stream of one chunk.
pub fn once(bytes: Bytes) -> ByteStream {
    Box::pin(futures_util::stream::once(async move { Ok(bytes) }))
}

/// Reads a whole stream into memory, refusing more than `max` bytes.
pub async fn collect(mut body: ByteStream, max: u64) -> Result<Bytes, BlobError> {
    use futures_util::StreamExt;
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(BlobError::from)?;
        if (out.len() + chunk.len()) as u64 > max {
            return Err(BlobError::Backend(format!(
                "a blob read into memory is larger than {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_checked() {
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        assert!(!valid_id("../etc/passwd"));
        assert!(!valid_id(&id.to_uppercase()));
    }
}
