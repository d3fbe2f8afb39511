//! Server-side encryption as objects report it: each version keeps the encryption its write
//! asked for (`x-amz-server-side-encryption`, `x-amz-server-side-encryption-aws-kms-key-id`)
//! or, asking for none, its bucket's default encryption (SSE-S3, `AES256`, unless
//! PutBucketEncryption said otherwise), and GET, HEAD and the write answers report it, as
//! infrastructure tools and compliance checks read it. sluice itself stores the bytes as
//! sent: encryption at rest is the volume's (docs/COMPATIBILITY.md says so).

use std::sync::Arc;
use std::time::Duration;

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Result};
use sluice_store::{ObjectHeaders, ObjectStore, StoreError};

use crate::ttl_cache::TtlCache;

/// The bucket configuration kind default encryption is kept under.
pub(crate) const ENCRYPTION: &str = "encryption";

const ALGORITHMS: [&str; 3] = ["AES256", "aws:kms", "aws:kms:dsse"];

/// An encryption: algorithm and, for KMS, the key id.
pub(crate) type Sse = (String, Option<String>);

/// The buckets' default encryptions, remembered for 5 seconds (read by every write).
pub struct BucketEncryptions(TtlCache<Sse>);

impl Default for BucketEncryptions {
    fn default() -> Self {
        BucketEncryptions(TtlCache::new(Duration::from_secs(5), 10_000))
    }
}

impl BucketEncryptions {
    /// The bucket's default encryption (`AES256` when none is configured or the bucket
    /// does not exist: the write then fails on the bucket).
    pub async fn get(&self, store: &Arc<dyn ObjectStore>, bucket: &str) -> Result<Sse, StoreError> {
        if let Some(e) = self.0.get(bucket) {
            return Ok(e);
        }
        let doc = match store.bucket_config(bucket, ENCRYPTION).await {
            Ok(doc) => doc,
            Err(StoreError::NoSuchBucket(_)) => None,
            Err(e) => return Err(e),
        };
        let sse = doc
            .and_then(|d| serde_json::from_str::<ServerSideEncryptionConfiguration>(&d).ok())
            .and_then(|cfg| {
                let d = cfg
                    .rules
                    .into_iter()
                    .find_map(|r| r.apply_server_side_encryption_by_default)?;
                Some((d.sse_algorithm.as_str().to_owned(), d.kms_master_key_id))
            })
            .unwrap_or_else(|| ("AES256".to_owned(), None));
        self.0.put(bucket, sse.clone());
        Ok(sse)
    }

    pub fn forget(&self, bucket: &str) {
        self.0.forget(bucket);
    }
}

/// Whether `algorithm` is one S3 takes.
pub(crate) fn valid_algorithm(algorithm: &str) -> bool {
    ALGORITHMS.contains(&algorithm)
}

/// The encryption a write gives its version: the request's, or the bucket's default. A
/// KMS key id without a KMS algorithm, or an unknown algorithm, is refused as S3 refuses it.
pub(crate) fn for_write(
    bucket_default: Sse,
    algorithm: Option<&ServerSideEncryption>,
    kms_key: Option<&str>,
) -> S3Result<Sse> {
    match algorithm.map(|a| a.as_str()) {
        None if kms_key.is_some() => Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            "Server Side Encryption with AWS KMS managed key requires HTTP header x-amz-server-side-encryption : aws:kms",
        )),
        None => Ok(bucket_default),
        Some(a) if !valid_algorithm(a) => Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("The encryption method specified is not supported: {a}"),
        )),
        Some("AES256") if kms_key.is_some() => Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            "Server Side Encryption with AWS KMS managed key requires HTTP header x-amz-server-side-encryption : aws:kms",
        )),
        Some(a) => Ok((a.to_owned(), kms_key.map(str::to_owned))),
    }
}

/// What an answer reports of a version's encryption (`AES256` for versions written before
/// encryptions were kept: S3's default).
pub(crate) fn answer(h: &ObjectHeaders) -> (Option<ServerSideEncryption>, Option<String>) {
    match &h.sse {
        Some((a, key)) => (Some(ServerSideEncryption::from(a.clone())), key.clone()),
        None => (
            Some(ServerSideEncryption::from_static(
                ServerSideEncryption::AES256,
            )),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_take_the_request_or_the_default() {
        let default = ("AES256".to_owned(), None);
        assert_eq!(
            for_write(default.clone(), None, None).expect("default"),
            default
        );
        let kms = ServerSideEncryption::from_static("aws:kms");
        assert_eq!(
            for_write(default.clone(), Some(&kms), Some("alias/x")).expect("kms"),
            ("aws:kms".to_owned(), Some("alias/x".to_owned()))
        );
        assert!(for_write(default.clone(), None, Some("alias/x")).is_err());
        let bad = ServerSideEncryption::from_static("rot13");
        assert!(for_write(default, Some(&bad), None).is_err());
    }
}
