//! Blobs on any S3-compatible store (Garage, SeaweedFS, Ceph, MinIO, AWS S3), through the
//! `object_store` crate's S3 client.
//!
//! URL: `s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION` plus, optionally,
//! `access_key_id=…&secret_access_key=…` (otherwise the standard `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` / `AWS_REGION` / `AWS_ENDPOINT_URL`
//! variables apply). Requests are path-style (`endpoint/BUCKET/key`), as self-hosted
//! stores expect. Blob `ID` is the object `PREFIX/ID`.
//!
//! - A blob of up to [`SINGLE_PUT`] bytes is one `PutObject`; a larger one a multipart
//!   upload of [`PART`]-byte parts, at most [`PARTS_IN_FLIGHT`] at once (so memory stays
//!   bounded), completed only once the body ended; a body that fails aborts it. S3
//!   acknowledges an object once it is stored; self-hosted stores must be configured to
//!   sync before they acknowledge (Garage: `data_fsync` and `metadata_fsync`; see
//!   `docs/DEPLOY.md`).
//! - Requests that fail with a 5xx, `SlowDown` or a broken connection are retried with a
//!   growing pause, for at most [`RETRY_FOR`]; then the operation fails with
//!   [`BlobError::Unavailable`], which clients see as a 503 to retry.
//! - A multipart upload abandoned by a crash stays incomplete in the bucket (invisible as
//!   an object); an S3 lifecycle rule `AbortIncompleteMultipartUpload` removes it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    BackoffConfig, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};

use crate::{BlobEntry, BlobError, Blobs, ByteStream, valid_id};

/// Bodies up to this size go in one `PutObject` (gathered in memory first).
pub const SINGLE_PUT: usize = 8 << 20;
/// Size of each part of a multipart upload.
pub const PART: usize = 8 << 20;
/// Parts uploading at once.
pub const PARTS_IN_FLIGHT: usize = 4;
/// How long a request is retried before the store counts as unavailable.
pub const RETRY_FOR: Duration = Duration::from_secs(5);

pub struct S3Blobs {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    shown: String,
}

fn invalid(url: &str, message: impl Into<String>) -> BlobError {
    BlobError::InvalidUrl {
        url: url.split('?').next().unwrap_or(url).to_owned(),
        message: message.into(),
    }
}

impl S3Blobs {
    pub fn open(url: &str) -> Result<S3Blobs, BlobError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| invalid(url, "an S3 URL starts with s3://"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err(invalid(url, "the URL names no bucket"));
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: 8,
                retry_timeout: RETRY_FOR,
            });
        let mut endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "endpoint" => endpoint = Some(v),
                "region" => builder = builder.with_region(v),
                "access_key_id" => builder = builder.with_access_key_id(v),
                "secret_access_key" => builder = builder.with_secret_access_key(v),
                "session_token" => builder = builder.with_token(v),
                other => return Err(invalid(url, format!("unknown parameter {other:?}"))),
            }
        }
        if let Some(e) = &endpoint {
            builder = builder
                .with_endpoint(e.clone())
                .with_allow_http(e.starts_with("http://"));
        }
        let store = builder.build().map_err(|e| invalid(url, e.to_string()))?;
        let prefix = prefix.trim_matches('/').to_owned();
        let shown = format!(
            "s3://{bucket}{}{}",
            if prefix.is_empty() { "" } else { "/" },
            prefix
        ) + &endpoint.map(|e| format!(" at {e}")).unwrap_or_default();
        Ok(S3Blobs {
            store: Arc::new(store),
            prefix,
            shown,
        })
    }

    fn path(&self, id: &str) -> Result<Path, BlobError> {
        if !valid_id(id) {
            return Err(BlobError::Backend(format!("invalid blob id {id:?}")));
        }
        Ok(if self.prefix.is_empty() {
            Path::from(id)
        } else {
            Path::from(format!("{}/{id}", self.prefix))
        })
    }
}

/// `%XX` escapes of a URL parameter decoded (a secret may hold `/` or `+`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Classifies a client error: a missing object, credentials or permissions the operator
/// must fix, or (everything else, after the client's own retries) an unavailable store.
///
/// Decided on the error's kind and on S3's own `<Code>` in the response body, never on bare
/// numbers in the message: the message carries the request's URL, whose port may well
/// contain "403" (a server that is down on port 40312 once counted as "access denied").
fn s3_err(id: &str, e: object_store::Error) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound(id.to_owned()),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => BlobError::Backend(e.to_string()),
        other => {
            let text = other.to_string();
            let refused = [
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "NoSuchBucket",
            ];
            if refused
                .iter()
                .any(|code| text.contains(&format!("<Code>{code}</Code>")))
            {
                BlobError::Backend(text)
            } else {
                BlobError::Unavailable(text)
            }
        }
    }
}

#[async_trait::async_trait]
impl Blobs for S3Blobs {
    async fn put_stream(&self, id: &str, mut body: ByteStream) -> Result<u64, BlobError> {
        let path = self.path(id)?;
        // Gather up to one single PUT's worth; a body that ends there is one request.
        let mut head: Vec<Bytes> = Vec::new();
        let mut head_len = 0usize;
        let overflow = loop {
            match body.next().await {
                None => {
                    let payload = PutPayload::from_iter(head);
                    self.store
                        .put(&path, payload)
                        .await
                        .map_err(|e| s3_err(id, e))?;
                    return Ok(head_len as u64);
                }
                Some(Err(e)) => return Err(BlobError::Body(e)),
                Some(Ok(chunk)) => {
                    head_len += chunk.len();
                    head.push(chunk);
                    if head_len > SINGLE_PUT {
                        break true;
                    }
                }
            }
        };
        debug_assert!(overflow);
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| s3_err(id, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut size = 0u64;
        let fed: Result<(), BlobError> = async {
            for chunk in head {
                size += chunk.len() as u64;
                writer.put(chunk);
            }
            while let Some(item) = body.next().await {
                let chunk = item.map_err(BlobError::Body)?;
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| s3_err(id, e))?;
                size += chunk.len() as u64;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        match fed {
            Ok(()) => {
                writer.finish().await.map_err(|e| s3_err(id, e))?;
                Ok(size)
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(blob = %id, error = %abort, "cannot abort a multipart upload; a lifecycle rule removes it");
                }
                Err(e)
            }
        }
    }

    async fn get_range(
        &self,
        id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, BlobError> {
        let path = self.path(id)?;
        let range = match range {
            None => None,
            Some((first, last)) if last < first => {
                return Ok(Box::pin(futures_util::stream::empty()));
            }
            // "To the end" asks for no range, or an open one: `bytes=0-18446744073709551614`
            // is valid HTTP, but not every S3 server takes a last byte that large.
            Some((0, u64::MAX)) => None,
            Some((first, u64::MAX)) => Some(GetRange::Offset(first)),
            Some((first, last)) => Some(GetRange::Bounded(first..last.saturating_add(1))),
        };
        let opts = GetOptions {
            range,
            ..GetOptions::default()
        };
        let got = match self.store.get_opts(&path, opts).await {
            Ok(g) => g,
            // A range that starts past the end: nothing to read. (Matched on S3's code and
            // the status text, never on a bare "416", which a URL's port may contain.)
            Err(object_store::Error::Generic { source, .. })
                if source.to_string().contains("InvalidRange")
                    || source.to_string().contains("Range Not Satisfiable") =>
            {
                return Ok(Box::pin(futures_util::stream::empty()));
            }
            Err(e) => return Err(s3_err(id, e)),
        };
        let id = id.to_owned();
        Ok(Box::pin(got.into_stream().map_err(move |e| {
            std::io::Error::other(format!("reading blob {id}: {e}"))
        })))
    }

    async fn delete(&self, id: &str) -> Result<(), BlobError> {
        let path = self.path(id)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_err(id, e)),
        }
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<BlobEntry>, BlobError> {
        let prefix = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
        let mut listing = match after {
            Some(a) => {
                let offset = self.path(a)?;
                self.store.list_with_offset(prefix.as_ref(), &offset)
            }
            None => self.store.list(prefix.as_ref()),
        };
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| s3_err("(listing)", e))?;
            let Some(id) = meta.location.filename().map(str::to_owned) else {
                continue;
            };
            if !valid_id(&id) {
                continue;
            }
            out.push(BlobEntry {
                id,
                modified_ms: meta.last_modified.timestamp_millis(),
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed() {
        let b = S3Blobs::open(
            "s3://bkt/some/prefix?endpoint=http://127.0.0.1:3900&region=garage&access_key_id=GK1&secret_access_key=a%2Fb",
        )
        .expect("open");
        assert_eq!(b.prefix, "some/prefix");
        assert!(
            b.describe()
                .starts_with("s3://bkt/some/prefix at http://127.0.0.1:3900")
        );
        assert!(!b.describe().contains("a/b"), "the secret is not shown");
        assert!(S3Blobs::open("s3://?region=x").is_err());
        assert!(S3Blobs::open("s3://b?bogus=1").is_err());
        assert_eq!(percent_decode("a%2Fb%2bc"), "a/b+c");
    }

    #[test]
    fn a_server_that_is_down_is_unavailable_whatever_its_port() {
        let down = object_store::Error::Generic {
            store: "S3",
            source: "Error performing PUT http://127.0.0.1:40312/b/x in 1s, after 3 retries: \
                     error sending request: connection refused"
                .into(),
        };
        assert!(s3_err("x", down).is_unavailable());
        let denied = object_store::Error::Generic {
            store: "S3",
            source: "Server returned error response: <Error><Code>AccessDenied</Code></Error>"
                .into(),
        };
        assert!(matches!(s3_err("x", denied), BlobError::Backend(_)));
        let forbidden = object_store::Error::PermissionDenied {
            path: "b/x".into(),
            source: "403 Forbidden".into(),
        };
        assert!(matches!(s3_err("x", forbidden), BlobError::Backend(_)));
    }
}
