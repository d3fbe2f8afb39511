//! Buckets in regions: CreateBucket's `LocationConstraint` gives a bucket its region (kept
//! as the bucket configuration `location`), GetBucketLocation and HeadBucket
//! (`x-amz-bucket-region`) answer it, and a request signed for another region is answered
//! `301 PermanentRedirect` with `x-amz-bucket-region`, from which the SDKs retry in the
//! bucket's region. A bucket created before regions were kept, or without a constraint, is
//! in the region the request was signed for (S3 refuses a missing constraint outside
//! us-east-1; sluice takes it, so that scripts written against one region keep working).

use std::sync::Arc;
use std::time::Duration;

use s3s::{S3Error, S3ErrorCode};
use sluice_store::{ObjectStore, StoreError};

use crate::ttl_cache::TtlCache;

/// The bucket configuration kind a bucket's region is kept under.
pub(crate) const LOCATION: &str = "location";

/// The buckets' regions, remembered for 5 seconds (`None`: the bucket does not exist).
pub struct BucketRegions(TtlCache<Option<String>>);

impl Default for BucketRegions {
    fn default() -> Self {
        BucketRegions(TtlCache::new(Duration::from_secs(5), 10_000))
    }
}

impl BucketRegions {
    /// `bucket`'s region (`default` when none was kept); `None` when it does not exist.
    pub async fn get(
        &self,
        store: &Arc<dyn ObjectStore>,
        bucket: &str,
        default: &str,
    ) -> Result<Option<String>, StoreError> {
        if let Some(r) = self.0.get(bucket) {
            return Ok(r);
        }
        let region = match store.bucket_config(bucket, LOCATION).await {
            Ok(r) => Some(r.unwrap_or_else(|| default.to_owned())),
            Err(StoreError::NoSuchBucket(_)) => None,
            Err(e) => return Err(e),
        };
        self.0.put(bucket, region.clone());
        Ok(region)
    }

    pub fn forget(&self, bucket: &str) {
        self.0.forget(bucket);
    }
}

/// The region a request is signed for: the credential scope of its `Authorization` header
/// or of a presigned URL's `X-Amz-Credential`.
pub fn signed_region(headers: &http::HeaderMap, query: Option<&str>) -> Option<String> {
    let scope_region = |credential: &str| credential.split('/').nth(2).map(str::to_owned);
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let credential = auth.split("Credential=").nth(1)?.split(',').next()?;
        return scope_region(credential.trim());
    }
    let credential = query?
        .split('&')
        .find_map(|p| p.strip_prefix("X-Amz-Credential="))?;
    scope_region(&crate::sigv4::percent_decode(credential))
}

/// The region a CreateBucket request puts its bucket in: its `LocationConstraint` (`EU`
/// is eu-west-1, as S3 reads it), or the region it is signed for. Outside us-east-1 (S3's
/// global endpoint) a constraint naming another region is refused, as S3 refuses it.
pub fn create_region(constraint: Option<&str>, signed: &str) -> Result<String, S3Error> {
    let Some(c) = constraint.filter(|c| !c.is_empty()) else {
        return Ok(signed.to_owned());
    };
    let wanted = if c == "EU" { "eu-west-1" } else { c };
    if signed != "us-east-1" && wanted != signed {
        return Err(S3Error::with_message(
            S3ErrorCode::IllegalLocationConstraintException,
            format!(
                "The {c} location constraint is incompatible for the region specific endpoint this request was sent to."
            ),
        ));
    }
    Ok(wanted.to_owned())
}

/// S3's answer to a request for a bucket in another region.
pub fn redirect(bucket: &str, region: &str) -> S3Error {
    let mut e = S3Error::with_message(
        S3ErrorCode::PermanentRedirect,
        format!(
            "The bucket you are attempting to access must be addressed using the specified endpoint. Please send all future requests to this endpoint. (bucket {bucket} is in {region})"
        ),
    );
    e.set_status_code(http::StatusCode::MOVED_PERMANENTLY);
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(region) {
        headers.insert("x-amz-bucket-region", v);
    }
    e.set_headers(headers);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_of_signatures_and_constraints() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            http::HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKID/20260101/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=x",
            ),
        );
        assert_eq!(signed_region(&h, None).as_deref(), Some("eu-west-1"));
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20260101%2Fus-west-2%2Fs3%2Faws4_request";
        assert_eq!(
            signed_region(&http::HeaderMap::new(), Some(q)).as_deref(),
            Some("us-west-2")
        );
        assert_eq!(signed_region(&http::HeaderMap::new(), None), None);

        assert_eq!(create_region(None, "us-east-2").expect("ok"), "us-east-2");
        assert_eq!(
            create_region(Some("us-east-2"), "us-east-2").expect("ok"),
            "us-east-2"
        );
        assert_eq!(
            create_region(Some("EU"), "us-east-1").expect("ok"),
            "eu-west-1"
        );
        assert_eq!(
            create_region(Some("ap-south-1"), "us-east-1").expect("ok"),
            "ap-south-1"
        );
        assert!(create_region(Some("eu-west-1"), "us-east-2").is_err());
    }
}
