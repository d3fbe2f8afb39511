//! What the S3 routes refuse before s3s sees a request: operations s3s does not know.
//!
//! s3s routes a request by method, path and the query's subresource marker; a marker it
//! does not know is ignored, so a newer S3 operation lands on a plain one with the same
//! method and path — RenameObject (`PUT /key?renameObject`) on PutObject, which would write
//! an empty object, DeleteObjectAnnotation (`DELETE /key?annotation`) on DeleteObject,
//! which would delete the object, DeleteBucketMetadataConfiguration on DeleteBucket. Each
//! would answer success and do something else. They are refused here with
//! `NotImplemented` (501), as S3 answers a feature it does not have, and nothing happens.
//!
//! [`UNKNOWN_MARKERS`] is the set difference between the subresource markers in the
//! `requestUri`s of botocore's S3 model (1.43) and those s3s 0.14's router matches;
//! recompute it when either is upgraded. Bucket-level markers on an object path
//! ([`BUCKET_ONLY`], e.g. UpdateObjectEncryption's `PUT /key?encryption`) are refused too.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::Edge;

/// Subresource markers of S3 operations s3s does not route.
const UNKNOWN_MARKERS: &[&str] = &[
    "abac",
    "annotation",
    "metadataAnnotationTable",
    "metadataConfiguration",
    "metadataInventoryTable",
    "metadataJournalTable",
    "renameObject",
];

/// Markers s3s routes only on a bucket path: on an object path they name an operation on
/// the object that s3s would take for a plain PUT / GET / DELETE of it.
const BUCKET_ONLY: &[&str] = &[
    "accelerate",
    "analytics",
    "cors",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "lifecycle",
    "location",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "versioning",
    "website",
];

/// The bucket a request to the S3 routes is for, and whether it names a key: the host's
/// first label under the configured base domain (virtual-hosted style), else the path's
/// first segment.
pub(crate) fn bucket_of(edge: &Edge, headers: &HeaderMap, path: &str) -> Option<(String, bool)> {
    if let Some(domain) = &edge.s3_base_domain
        && let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok())
    {
        let host = host.split(':').next().unwrap_or(host);
        if let Some(bucket) = host
            .strip_suffix(domain.as_str())
            .and_then(|b| b.strip_suffix('.'))
            .filter(|b| !b.is_empty())
        {
            let has_key = !path.trim_start_matches('/').is_empty();
            return Some((bucket.to_owned(), has_key));
        }
    }
    let rest = path.strip_prefix('/')?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return None;
    }
    Some((crate::sigv4::percent_decode(bucket), !key.is_empty()))
}

/// The marker of an operation sluice does not implement, if the query names one.
fn unknown_operation(query: &str, object: bool) -> Option<&str> {
    query
        .split('&')
        .map(|pair| pair.split('=').next().unwrap_or(pair))
        .find(|k| UNKNOWN_MARKERS.contains(k) || (object && BUCKET_ONLY.contains(k)))
}

/// Largest file a browser POST upload may carry. s3s reads it whole (its policy is checked
/// before anything is stored), so it is bounded, unlike PutObject's streamed bodies.
pub const POST_OBJECT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Browser POST uploads read at once; more wait for a turn before their body is read.
pub const POST_OBJECT_CONCURRENCY: usize = 4;

static POST_UPLOADS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(POST_OBJECT_CONCURRENCY);

/// Whether a request is a browser POST upload (a form posted to a bucket).
fn is_post_upload(req: &axum::extract::Request) -> bool {
    req.method() == http::Method::POST
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("multipart/form-data")
            })
}

/// The middleware: refuses what [`unknown_operation`] finds, passes everything else
/// (browser POST uploads a few at a time: [`POST_OBJECT_CONCURRENCY`]).
pub async fn layer(
    State(edge): State<Edge>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let refused = match (
        req.uri().query(),
        req.headers().contains_key("x-amz-target"),
    ) {
        (Some(q), false) => bucket_of(&edge, req.headers(), req.uri().path())
            .and_then(|(_, object)| unknown_operation(q, object))
            .map(str::to_owned),
        _ => None,
    };
    // SSE-C: the client would believe its bytes encrypted under its key (and unreadable
    // without it); sluice cannot do that, so it says so rather than store them as sent.
    if req.headers().keys().any(|h| {
        matches!(
            h.as_str(),
            "x-amz-server-side-encryption-customer-algorithm"
                | "x-amz-copy-source-server-side-encryption-customer-algorithm"
        )
    }) {
        return xml_error(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "Server-side encryption with customer-provided keys (SSE-C) is not supported: sluice cannot keep your bytes encrypted under your key",
            "",
        );
    }
    let Some(marker) = refused else {
        if is_post_upload(&req) {
            // The semaphore is never closed; should it be, the upload goes ahead unqueued.
            let _turn = POST_UPLOADS.acquire().await.ok();
            return next.run(req).await;
        }
        return next.run(req).await;
    };
    xml_error(
        StatusCode::NOT_IMPLEMENTED,
        "NotImplemented",
        &format!(
            "A header you provided implies functionality that is not implemented: sluice does not implement the S3 operation of ?{}",
            crate::iam::esc(&marker)
        ),
        "",
    )
}

/// An S3 error in S3's XML, for the middlewares that answer before s3s: `extra` is more
/// elements (already XML) between the message and the request id.
pub(crate) fn xml_error(
    status: StatusCode,
    code: &str,
    message: &str,
    extra: &str,
) -> Response<Body> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>{extra}<RequestId>{id}</RequestId><HostId>{id}</HostId></Error>"
    );
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_operations_and_bucket_markers_on_objects_are_found() {
        assert_eq!(
            unknown_operation("renameObject", true),
            Some("renameObject")
        );
        assert_eq!(
            unknown_operation("x-id=DeleteObjectAnnotation&annotation&name=a", true),
            Some("annotation")
        );
        assert_eq!(
            unknown_operation("metadataConfiguration", false),
            Some("metadataConfiguration")
        );
        assert_eq!(unknown_operation("encryption", true), Some("encryption"));
        assert_eq!(
            unknown_operation("encryption", false),
            None,
            "PutBucketEncryption"
        );
        assert_eq!(unknown_operation("uploads", true), None);
        assert_eq!(unknown_operation("tagging", true), None);
        assert_eq!(unknown_operation("partNumber=1&uploadId=x", true), None);
        assert_eq!(unknown_operation("list-type=2&prefix=a", false), None);
    }
}
