//! S3's REST protocol over the `store` part, built on the `s3s` crate (which parses and
//! serialises S3's wire format and verifies SigV4, headers and presigned URLs alike).
//!
//! An object written into `<upload bucket>/uploads/` is an upload like any other when the
//! adapter has an [`UploadHook`] (the `s3_uploads_enqueue` setting): it goes through the
//! [`UploadSink`], so it gets a stream record and is processed, exactly as a `POST /uploads`
//! would be. That holds for PutObject, CopyObject and CompleteMultipartUpload alike (for the
//! last, the assembled object, the end of the multipart upload, the record and the status
//! row commit in one transaction).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use sluice_identity::access_keys::AccessKeys;
use sluice_policy::resource::ResourcePolicy;
use sluice_store::versions::VERSIONING_CONFIG;
use sluice_store::{
    ByteRange, ObjectHeaders, ObjectInfo, ObjectStore, PutOptions, StoreError, UploadMarker,
};
use sluice_uploads::{MultipartCompletion, UploadError, UploadMeta, UploadSink};

use crate::s3_lifecycle::LIFECYCLE;
use crate::s3_policy::{BucketPolicies, Caller};

/// How S3 writes become uploads.
#[derive(Clone)]
pub struct UploadHook {
    pub sink: Arc<dyn UploadSink>,
    /// The bucket whose `uploads/` prefix feeds the pipeline.
    pub bucket: String,
    pub stream: String,
}

#[derive(Clone)]
pub struct S3Adapter {
    pub store: Arc<dyn ObjectStore>,
    pub region: String,
    /// Largest object a single PutObject or UploadPart may carry (bodies are streamed to the
    /// store, never held whole).
    pub max_object_bytes: u64,
    /// `None` when S3 writes into the uploads prefix are plain objects.
    pub uploads: Option<UploadHook>,
    /// Event notifications to functions; `None`: `PutBucketNotificationConfiguration` is
    /// not implemented.
    pub notifications: Option<NotificationsHook>,
    /// Bucket policies; `None`: `PutBucketPolicy` is not implemented.
    pub policies: Option<Arc<BucketPolicies>>,
    /// The buckets' CORS configurations as the CORS middleware reads them.
    pub cors: Arc<crate::s3_cors::CorsCache>,
    /// The buckets' regions (`s3_region`).
    pub regions: Arc<crate::s3_region::BucketRegions>,
    /// The buckets' object lock configurations (`s3_lock`).
    pub locks: Arc<crate::s3_lock::BucketLocks>,
    /// The buckets' default encryptions (`s3_sse`).
    pub encryptions: Arc<crate::s3_sse::BucketEncryptions>,
}

/// What bucket notifications need: the store keeps each bucket's configuration and records
/// the events; the functions say which destinations exist.
#[derive(Clone)]
pub struct NotificationsHook {
    pub store: Arc<sluice_store::embedded::EmbeddedStore>,
    pub functions: sluice_functions::Functions,
}

/// Access keys as s3s wants them.
pub struct KeyAuth(pub AccessKeys);

#[async_trait]
impl s3s::auth::S3Auth for KeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<s3s::auth::SecretKey> {
        match self.0.secret(access_key).await {
            Ok(Some(secret)) => Ok(s3s::auth::SecretKey::from(secret)),
            Ok(None) => {
                metrics::counter!("sluice_auth_total", "edge" => "sigv4", "result" => "failure", "reason" => "unknown_key")
                    .increment(1);
                Err(s3_error!(InvalidAccessKeyId))
            }
            Err(e) => Err(key_lookup_error(e)),
        }
    }
}

/// Completions of objects at least this large answer 200 at once and keep the connection
/// alive with whitespace while the parts are assembled (smaller ones take well under a
/// client's read timeout, and answer with their own status).
const KEEP_ALIVE_COMPLETION_BYTES: u64 = 256 * 1024 * 1024;

/// The signing key's policy and the bucket's policy on every S3 request (see
/// [`crate::authz`] and [`crate::s3_policy`]). s3s calls [`s3s::access::S3Access::check`]
/// once the signature is verified (or for an unsigned request), before the body is read;
/// the per-operation hooks add what the path alone does not show: the source of a copy and
/// each key of a DeleteObjects.
pub struct KeyAccess {
    pub keys: AccessKeys,
    pub account_id: String,
    /// `None`: buckets have no policies (every unsigned request is refused).
    pub policies: Option<Arc<BucketPolicies>>,
    /// Where the buckets' regions are read (a request signed for another region than its
    /// bucket's is redirected: `s3_region`).
    pub store: Arc<dyn ObjectStore>,
    pub regions: Arc<crate::s3_region::BucketRegions>,
    /// The server's region: buckets that kept none are in it.
    pub region: String,
}

/// Keys of a DeleteObjects that the policies do not let the caller delete: answered as
/// per-key `AccessDenied` errors, as S3 does, while the others are deleted.
#[derive(Clone, Default)]
struct DeniedKeys(Vec<String>);

impl KeyAccess {
    async fn policy_of(&self, bucket: &str) -> S3Result<Option<Arc<ResourcePolicy>>> {
        match &self.policies {
            Some(p) => p.get(bucket).await.map_err(s3_err),
            None => Ok(None),
        }
    }

    /// A copy also reads its source.
    async fn check_copy_source(&self, caller: &Caller, source: &CopySource) -> S3Result<()> {
        let (bucket, key, version) = copy_source(source)?;
        let policy = self.policy_of(&bucket).await?;
        let action = if version.is_some() {
            "s3:GetObjectVersion"
        } else {
            "s3:GetObject"
        };
        caller.decide(
            policy.as_deref(),
            action,
            &crate::authz::s3_resource(Some(&bucket), Some(&key)),
        )
    }
}

#[async_trait]
impl s3s::access::S3Access for KeyAccess {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name().to_owned();
        let (bucket, key) = match cx.s3_path() {
            s3s::path::S3Path::Root => (None, None),
            s3s::path::S3Path::Bucket { bucket } => (Some(bucket.to_string()), None),
            s3s::path::S3Path::Object { bucket, key } => {
                (Some(bucket.to_string()), Some(key.to_string()))
            }
        };
        // A request signed for another region than its bucket's is sent there.
        if let Some(b) = &bucket
            && !matches!(
                op.as_str(),
                "CreateBucket" | "GetBucketLocation" | "ListBuckets"
            )
            && let Some(signed) = crate::s3_region::signed_region(cx.headers(), cx.uri().query())
            && let Some(home) = self
                .regions
                .get(&self.store, b, &self.region)
                .await
                .map_err(s3_err)?
            && home != signed
        {
            return Err(crate::s3_region::redirect(b, &home));
        }
        let resource = crate::authz::s3_resource(bucket.as_deref(), key.as_deref());
        let policy = match &bucket {
            Some(b) => self.policy_of(b).await?,
            None => None,
        };
        let source = crate::peer_of(cx.extensions_mut());
        let query = cx.uri().query().map(str::to_owned);
        let signed_header = cx.headers().contains_key("authorization");
        let principal = match cx.credentials() {
            // Only a bucket policy that names everyone lets an unsigned request in.
            None if policy.is_none() => {
                metrics::counter!("sluice_auth_total", "edge" => "sigv4", "result" => "failure", "reason" => "missing")
                    .increment(1);
                return Err(S3Error::with_message(
                    S3ErrorCode::AccessDenied,
                    "Anonymous access is not allowed: sign the request with an access key",
                ));
            }
            None => None,
            Some(credentials) => {
                let access_key = credentials.access_key.clone();
                let grant = match self.keys.lookup(&access_key).await {
                    Ok(Some(g)) => {
                        // s3s verified the signature before calling this hook.
                        metrics::counter!("sluice_auth_total", "edge" => "sigv4", "result" => "success", "reason" => "ok")
                            .increment(1);
                        g
                    }
                    // The signature was verified with this key a moment ago; it was deleted
                    // since.
                    Ok(None) => return Err(s3_error!(InvalidAccessKeyId)),
                    Err(e) => return Err(key_lookup_error(e)),
                };
                if !crate::authz::session_token_ok(&grant, cx.headers(), query.as_deref()) {
                    return Err(S3Error::with_message(
                        S3ErrorCode::InvalidToken,
                        "The provided token is malformed or otherwise invalid.",
                    ));
                }
                let mut principal =
                    crate::authz::Principal::new(access_key, grant, &self.account_id, source);
                if !principal.unrestricted() {
                    let mut context = (*principal.context).clone();
                    crate::authz::s3_condition_keys(
                        &mut context,
                        &op,
                        query.as_deref(),
                        signed_header,
                    );
                    principal.context = Arc::new(context);
                }
                Some(principal)
            }
        };
        let caller = Caller {
            principal,
            source,
            op,
            query,
            signed_header,
        };
        // DeleteObjects is decided key by key (in `delete_objects` below).
        if caller.op != "DeleteObjects" {
            let action = match crate::authz::s3_version_action(&caller.op, caller.query.as_deref())
            {
                Some(versioned) => std::borrow::Cow::Borrowed(versioned),
                None => crate::authz::s3_action(&caller.op),
            };
            caller.decide(policy.as_deref(), &action, &resource)?;
        }
        // Bypassing GOVERNANCE retention is an action of its own, as on S3.
        if matches!(
            caller.op.as_str(),
            "DeleteObject" | "DeleteObjects" | "PutObjectRetention"
        ) && cx
            .headers()
            .get("x-amz-bypass-governance-retention")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
        {
            caller.decide(policy.as_deref(), "s3:BypassGovernanceRetention", &resource)?;
        }
        // A write that tags its object also needs `s3:PutObjectTagging`, as on S3.
        if matches!(
            caller.op.as_str(),
            "PutObject" | "CopyObject" | "CreateMultipartUpload"
        ) && cx.headers().contains_key("x-amz-tagging")
        {
            caller.decide(policy.as_deref(), "s3:PutObjectTagging", &resource)?;
        }
        cx.extensions_mut().insert(caller);
        Ok(())
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        match req.extensions.get::<Caller>() {
            Some(c) => self.check_copy_source(c, &req.input.copy_source).await,
            None => Ok(()),
        }
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        match req.extensions.get::<Caller>() {
            Some(c) => self.check_copy_source(c, &req.input.copy_source).await,
            None => Ok(()),
        }
    }

    async fn delete_objects(&self, req: &mut S3Request<DeleteObjectsInput>) -> S3Result<()> {
        let Some(caller) = req.extensions.get::<Caller>().cloned() else {
            return Ok(());
        };
        let bucket = req.input.bucket.clone();
        let policy = self.policy_of(&bucket).await?;
        let mut denied = DeniedKeys::default();
        req.input.delete.objects.retain(|o| {
            let resource = crate::authz::s3_resource(Some(&bucket), Some(&o.key));
            // Deleting a version for good is its own action, as on S3.
            let action = if o.version_id.is_some() {
                "s3:DeleteObjectVersion"
            } else {
                "s3:DeleteObject"
            };
            let ok = caller.decide(policy.as_deref(), action, &resource).is_ok();
            if !ok {
                denied.0.push(o.key.clone());
            }
            ok
        });
        req.extensions.insert(denied);
        Ok(())
    }
}

/// A failure to read the access keys, as S3 answers it.
fn key_lookup_error(e: sluice_identity::IdentityError) -> S3Error {
    match e {
        sluice_identity::IdentityError::Meta(m) if m.is_unavailable() || m.is_full() => {
            tracing::warn!(error = %m, "cannot read access keys");
            S3Error::with_message(
                S3ErrorCode::ServiceUnavailable,
                "the service is unavailable; try again later",
            )
        }
        e => {
            tracing::error!(error = %e, "cannot read access keys");
            s3_error!(InternalError)
        }
    }
}

/// A write's ACL request: its canned ACL and whether it names explicit grants.
macro_rules! acl_of {
    ($input:expr) => {
        (
            $input.acl.as_ref().map(|a| a.as_str().to_owned()),
            $input.grant_full_control.is_some()
                || $input.grant_read.is_some()
                || $input.grant_read_acp.is_some()
                || $input.grant_write_acp.is_some(),
        )
    };
}

/// A PutBucketAcl / PutObjectAcl request's ACL: its canned ACL and whether it names
/// explicit grants (`x-amz-grant-write` and an `AccessControlPolicy` document included).
macro_rules! acl_put_of {
    ($input:expr) => {{
        let (acl, grants) = acl_of!($input);
        (
            acl,
            grants || $input.grant_write.is_some() || $input.access_control_policy.is_some(),
        )
    }};
}

/// What a write (PutObject, CopyObject, CreateMultipartUpload) decides of its new
/// version's ACL, object lock and encryption, from its request and its bucket (never from a
/// copy's source).
macro_rules! version_settings {
    ($self:ident, $input:ident, $headers:ident) => {{
        let (acl, grants) = acl_of!($input);
        $headers.acl = $self
            .acl_for(&$input.bucket, acl.as_deref(), grants, false)
            .await?;
        ($headers.lock, $headers.legal_hold) = $self
            .lock_for_write(
                &$input.bucket,
                $input.object_lock_mode.as_ref(),
                $input.object_lock_retain_until_date.as_ref(),
                $input.object_lock_legal_hold_status.as_ref(),
            )
            .await?;
        $headers.sse = Some(
            $self
                .sse_for_write(
                    &$input.bucket,
                    $input.server_side_encryption.as_ref(),
                    $input.ssekms_key_id.as_deref(),
                )
                .await?,
        );
    }};
}

/// Whether a read asked for the object's checksum (`x-amz-checksum-mode: ENABLED`).
fn checksum_wanted(mode: Option<&ChecksumMode>) -> bool {
    mode.is_some_and(|m| m.as_str() == ChecksumMode::ENABLED)
}

/// Store errors as S3 error codes, in one place.
pub(crate) fn s3_err(e: StoreError) -> S3Error {
    let code = match &e {
        StoreError::NoSuchBucket(_) => S3ErrorCode::NoSuchBucket,
        StoreError::NoSuchKey { .. } => S3ErrorCode::NoSuchKey,
        StoreError::NoSuchVersion { .. } => {
            return S3Error::with_message(
                S3ErrorCode::NoSuchVersion,
                "The specified version does not exist.",
            );
        }
        StoreError::DeleteMarker {
            version_id,
            last_modified_ms,
        } => return crate::s3_versions::delete_marker_error(version_id, *last_modified_ms),
        StoreError::OwnedByOther { .. } | StoreError::ObjectLocked(_) => S3ErrorCode::AccessDenied,
        StoreError::BucketExists(_) => S3ErrorCode::BucketAlreadyOwnedByYou,
        StoreError::BucketNotEmpty(_) => S3ErrorCode::BucketNotEmpty,
        StoreError::NoSuchUpload(_) => S3ErrorCode::NoSuchUpload,
        StoreError::InvalidPart(_) => S3ErrorCode::InvalidPart,
        StoreError::InvalidPartOrder => S3ErrorCode::InvalidPartOrder,
        StoreError::EntityTooSmall { .. } => S3ErrorCode::EntityTooSmall,
        StoreError::InvalidArgument(_) => S3ErrorCode::InvalidArgument,
        StoreError::AlreadyExists { .. } | StoreError::PreconditionFailed(_) => {
            S3ErrorCode::PreconditionFailed
        }
        StoreError::ConditionalConflict { .. } => S3ErrorCode::ConditionalRequestConflict,
        StoreError::EntityTooLarge { .. } => S3ErrorCode::EntityTooLarge,
        StoreError::BadDigest | StoreError::BadChecksum(_) => S3ErrorCode::BadDigest,
        StoreError::Meta(_) | StoreError::Blobs(_) => {
            if e.is_unavailable() || e.is_full() {
                tracing::warn!(error = %e, "s3 request refused");
                let message = if e.is_full() {
                    "the service has no storage left; try again later"
                } else {
                    "the service is unavailable; try again later"
                };
                return S3Error::with_message(S3ErrorCode::ServiceUnavailable, message);
            }
            tracing::error!(error = %e, "s3 request failed");
            return s3_error!(InternalError);
        }
        StoreError::Io(_) | StoreError::Backend(_) => {
            tracing::error!(error = %e, "s3 request failed");
            return s3_error!(InternalError);
        }
        // Damaged bytes at rest: the store logged the object and blob; never served.
        StoreError::Corrupt(_) => {
            tracing::error!(error = %e, "s3 request refused: the object's stored bytes are damaged");
            return s3_error!(InternalError);
        }
    };
    S3Error::with_message(code, e.to_string())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn upload_err(e: UploadError) -> S3Error {
    match e {
        UploadError::Conflict { bucket, key } => S3Error::with_message(
            S3ErrorCode::AccessDenied,
            format!("{bucket}/{key} was uploaded by another user"),
        ),
        UploadError::Store(e) => s3_err(e),
        UploadError::Meta(m) => s3_err(StoreError::Meta(m)),
        UploadError::Stream(sluice_stream::StreamError::Meta(m)) => s3_err(StoreError::Meta(m)),
        UploadError::Stream(e @ sluice_stream::StreamError::Unavailable(_)) => {
            tracing::warn!(error = %e, "s3 upload refused");
            S3Error::with_message(
                S3ErrorCode::ServiceUnavailable,
                "the service is unavailable; try again later",
            )
        }
        other => {
            tracing::error!(error = %other, "s3 upload failed");
            s3_error!(InternalError)
        }
    }
}

/// Milliseconds since the epoch of an S3 timestamp (the inverse of [`timestamp`]).
pub(crate) fn millis(t: &Timestamp) -> Option<i64> {
    let text = serde_json::to_value(t).ok()?;
    chrono::DateTime::parse_from_rfc3339(text.as_str()?)
        .ok()
        .map(|d| d.timestamp_millis())
}

pub(crate) fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// The owner of every bucket and object: sluice has one account.
/// The kinds of bucket configuration kept with [`ObjectStore::set_bucket_config`].
use crate::s3_sse::ENCRYPTION;
const PUBLIC_ACCESS_BLOCK: &str = "public-access-block";
const OWNERSHIP: &str = "ownership-controls";
pub(crate) const CORS: &str = "cors";
const WEBSITE: &str = "website";
const LOGGING: &str = "logging";
const ACCELERATE: &str = "accelerate";
const REQUEST_PAYMENT: &str = "request-payment";

fn no_content<T>(output: T) -> S3Response<T> {
    S3Response::with_status(output, http::StatusCode::NO_CONTENT)
}

pub(crate) fn owner() -> Owner {
    Owner {
        display_name: Some("sluice".into()),
        id: Some("sluice".into()),
    }
}

pub(crate) fn etag(e: &str) -> ETag {
    ETag::Strong(e.to_owned())
}

/// The standard headers of a write request, from any input that has them (PutObject,
/// CopyObject, CreateMultipartUpload name them alike).
macro_rules! headers_of {
    ($input:expr) => {
        HeadersIn {
            cache_control: $input.cache_control,
            content_disposition: $input.content_disposition,
            content_encoding: $input.content_encoding,
            content_language: $input.content_language,
            expires: $input.expires,
            website_redirect: $input.website_redirect_location,
            storage_class: $input.storage_class,
        }
    };
}

/// The standard headers of a write request.
struct HeadersIn {
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    expires: Option<Timestamp>,
    website_redirect: Option<String>,
    storage_class: Option<StorageClass>,
}

/// The storage classes S3 accepts on a write (directory buckets' `EXPRESS_ONEZONE` aside).
const STORAGE_CLASSES: &[&str] = &[
    StorageClass::STANDARD,
    StorageClass::REDUCED_REDUNDANCY,
    StorageClass::STANDARD_IA,
    StorageClass::ONEZONE_IA,
    StorageClass::INTELLIGENT_TIERING,
    StorageClass::GLACIER,
    StorageClass::DEEP_ARCHIVE,
    StorageClass::GLACIER_IR,
];

/// The headers kept with an object: a storage class S3 does not know is
/// `InvalidStorageClass`; `STANDARD` is kept as none (S3 does not answer it).
fn headers_in(h: HeadersIn) -> S3Result<ObjectHeaders> {
    let storage_class = match h.storage_class {
        Some(c) if !STORAGE_CLASSES.contains(&c.as_str()) => {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidStorageClass,
                "The storage class you specified is not valid",
            ));
        }
        Some(c) if c.as_str() == StorageClass::STANDARD => None,
        other => other.map(|c| c.as_str().to_owned()),
    };
    let expires = match h.expires {
        Some(t) => {
            let mut out = Vec::new();
            t.format(TimestampFormat::HttpDate, &mut out)
                .map_err(|_| s3_error!(InvalidArgument, "Expires is not a valid date"))?;
            Some(String::from_utf8_lossy(&out).into_owned())
        }
        None => None,
    };
    Ok(ObjectHeaders {
        cache_control: h.cache_control,
        content_disposition: h.content_disposition,
        content_encoding: h.content_encoding,
        content_language: h.content_language,
        expires,
        website_redirect: h.website_redirect,
        storage_class,
        // Set by the caller: the checksum once the body is read, the lock and the
        // encryption by the request and the bucket.
        checksum: None,
        lock: None,
        legal_hold: false,
        sse: None,
        acl: None,
    })
}

fn expires_out(h: &ObjectHeaders) -> Option<Timestamp> {
    h.expires
        .as_deref()
        .and_then(|e| Timestamp::parse(TimestampFormat::HttpDate, e).ok())
}

/// Most tags an object may have.
const MAX_OBJECT_TAGS: usize = 10;
/// Most tags a bucket may have.
const MAX_BUCKET_TAGS: usize = 50;

fn invalid_tag(message: &str) -> S3Error {
    S3Error::with_message(S3ErrorCode::InvalidTag, message.to_owned())
}

/// S3's rules for a tag set: at most `max` tags with distinct keys; keys of 1 to 128 and
/// values of up to 256 characters, letters, digits, white space and `+ - = . _ : / @`;
/// no key starting with `aws:`.
fn validate_tags(tags: &[(String, String)], max: usize) -> S3Result<()> {
    if tags.len() > max {
        return Err(invalid_tag(&if max == MAX_OBJECT_TAGS {
            format!("Object tags cannot be greater than {max}")
        } else {
            format!("Bucket tag count cannot be greater than {max}")
        }));
    }
    let allowed = |s: &str| {
        s.chars()
            .all(|c| c.is_alphanumeric() || c.is_whitespace() || "+-=._:/@".contains(c))
    };
    let mut seen = std::collections::HashSet::new();
    for (k, v) in tags {
        let key_len = k.chars().count();
        if key_len == 0 || !allowed(k) {
            return Err(invalid_tag("The TagKey you have provided is invalid"));
        }
        if key_len > 128 {
            return Err(invalid_tag(
                "The TagKey you have provided is too long, max 128",
            ));
        }
        if v.chars().count() > 256 {
            return Err(invalid_tag(
                "The TagValue you have provided is too long, max 256",
            ));
        }
        if !allowed(v) {
            return Err(invalid_tag("The TagValue you have provided is invalid"));
        }
        if k.starts_with("aws:") {
            return Err(invalid_tag("Your TagKey cannot be prefixed with aws:"));
        }
        if !seen.insert(k.as_str()) {
            return Err(invalid_tag(
                "Cannot provide multiple Tags with the same key",
            ));
        }
    }
    Ok(())
}

/// The tags of an `x-amz-tagging` header (URL query form: `k1=v1&k2=v2`), validated.
fn tags_from_header(header: Option<&str>) -> S3Result<Vec<(String, String)>> {
    let Some(h) = header.filter(|h| !h.is_empty()) else {
        return Ok(Vec::new());
    };
    let tags: Vec<(String, String)> = serde_urlencoded::from_str(h).map_err(|_| {
        S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query parameters without tag name duplicates.",
        )
    })?;
    validate_tags(&tags, MAX_OBJECT_TAGS)?;
    Ok(tags)
}

/// A request's `Tagging` body as tags, validated (at most `max`).
fn tags_in(tagging: Tagging, max: usize) -> S3Result<Vec<(String, String)>> {
    let tags: Vec<(String, String)> = tagging
        .tag_set
        .into_iter()
        .map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default()))
        .collect();
    validate_tags(&tags, max)?;
    Ok(tags)
}

fn tag_set(tags: &[(String, String)]) -> TagSet {
    tags.iter()
        .map(|(k, v)| Tag {
            key: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect()
}

fn metadata_in(m: Option<Metadata>) -> BTreeMap<String, String> {
    m.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

fn metadata_out(m: &BTreeMap<String, String>) -> Option<Metadata> {
    (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// What went wrong with a request body while it streamed into the store (the store only
/// sees an I/O error; this keeps S3's code for it).
#[derive(Default)]
struct BodyFault(std::sync::Mutex<Option<S3Error>>);

impl BodyFault {
    fn set(&self, e: S3Error) {
        if let Ok(mut f) = self.0.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
    }

    /// The body's own failure if it had one, else `otherwise`.
    fn or(&self, otherwise: S3Error) -> S3Error {
        self.0
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or(otherwise)
    }
}

/// A request body as a stream, failed past `max` bytes (`EntityTooLarge`) or when the
/// client's body breaks (`IncompleteBody`): it goes to the store chunk by chunk, never whole.
fn body_in(body: Option<StreamingBlob>, max: u64) -> (sluice_store::ByteStream, Arc<BodyFault>) {
    let fault = Arc::new(BodyFault::default());
    let Some(body) = body else {
        return (sluice_blobs_once(), fault);
    };
    let f = fault.clone();
    let mut seen = 0u64;
    let stream = body.map(move |chunk| match chunk {
        Ok(bytes) => {
            seen += bytes.len() as u64;
            if seen > max {
                f.set(S3Error::with_message(
                    S3ErrorCode::EntityTooLarge,
                    format!("objects of more than {max} bytes must be uploaded in parts"),
                ));
                Err(std::io::Error::other("the body is too large"))
            } else {
                Ok(bytes)
            }
        }
        Err(e) => {
            f.set(S3Error::with_message(
                S3ErrorCode::IncompleteBody,
                format!("cannot read the request body: {e}"),
            ));
            Err(std::io::Error::other(e.to_string()))
        }
    });
    (Box::pin(stream), fault)
}

/// An empty body.
fn sluice_blobs_once() -> sluice_store::ByteStream {
    Box::pin(futures_util::stream::empty())
}

/// S3's `Content-MD5` header: the base64 MD5 the client computed of the body (checked by
/// the store against what it received before anything is kept).
pub(crate) fn content_md5(given: Option<&str>) -> S3Result<Option<[u8; 16]>> {
    let Some(given) = given else { return Ok(None) };
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(given.trim())
        .ok()
        .and_then(|v| <[u8; 16]>::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidDigest,
                "the Content-MD5 you specified is not valid",
            )
        })
}

/// An object's bytes as a response body.
fn body_out(body: sluice_store::ByteStream) -> StreamingBlob {
    StreamingBlob::wrap(SyncStream(std::sync::Mutex::new(body)))
}

/// A stream made `Sync` (what s3s's body type asks for) by a mutex that polling, which has
/// `&mut` access, never needs to lock.
struct SyncStream(std::sync::Mutex<sluice_store::ByteStream>);

impl futures_util::Stream for SyncStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.get_mut().0.get_mut() {
            Ok(inner) => inner.as_mut().poll_next(cx),
            Err(_) => {
                std::task::Poll::Ready(Some(Err(std::io::Error::other("body stream poisoned"))))
            }
        }
    }
}

fn access_key<T>(req: &S3Request<T>) -> String {
    req.credentials
        .as_ref()
        .map(|c| c.access_key.clone())
        .unwrap_or_else(|| "anonymous".into())
}

/// Evaluates S3's conditional request headers against an object.
fn check_conditions(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == info.etag,
    };
    let modified = timestamp(info.last_modified_ms / 1000 * 1000);
    let secs = |t: &Timestamp| -> Option<i64> {
        let mut out = Vec::new();
        t.format(TimestampFormat::EpochSeconds, &mut out).ok()?;
        String::from_utf8(out).ok()?.split('.').next()?.parse().ok()
    };
    let modified_secs = secs(&modified).unwrap_or(0);
    if let Some(c) = if_match
        && !matches(c)
    {
        return Err(s3_error!(PreconditionFailed));
    }
    if if_match.is_none()
        && let Some(t) = if_unmodified_since
        && secs(t).is_some_and(|t| modified_secs > t)
    {
        return Err(s3_error!(PreconditionFailed));
    }
    if let Some(c) = if_none_match
        && matches(c)
    {
        return Err(s3_error!(NotModified));
    }
    if if_none_match.is_none()
        && let Some(t) = if_modified_since
        && secs(t).is_some_and(|t| modified_secs <= t)
    {
        return Err(s3_error!(NotModified));
    }
    Ok(())
}

/// The source conditions of a copy (`x-amz-copy-source-if-*`): as [`check_conditions`],
/// except that every failure is `PreconditionFailed` (a copy never answers 304).
fn check_copy_conditions(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    check_conditions(
        info,
        if_match,
        if_none_match,
        if_modified_since,
        if_unmodified_since,
    )
    .map_err(|e| match e.code() {
        S3ErrorCode::NotModified => s3_error!(PreconditionFailed),
        _ => e,
    })
}

/// The bucket and key of `x-amz-copy-source`.
/// The bucket, key and version (`None`: the current one) a copy reads.
pub(crate) fn copy_source(source: &CopySource) -> S3Result<(String, String, Option<String>)> {
    match source {
        CopySource::Bucket {
            bucket,
            key,
            version_id,
        } => {
            let version = crate::s3_versions::version_arg(version_id.as_deref())?;
            Ok((
                bucket.to_string(),
                key.to_string(),
                version.map(str::to_owned),
            ))
        }
        _ => Err(S3Error::with_message(
            S3ErrorCode::NotImplemented,
            "copying from access points and outposts is not supported",
        )),
    }
}

/// `x-amz-copy-source-range`: exactly `bytes=first-last` (whether it lies within the source
/// is the store's check, against the version it copies).
pub(crate) fn parse_copy_range(value: &str) -> S3Result<ByteRange> {
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    value
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(first, last)| {
            Some(ByteRange {
                first: number(first)?,
                last: number(last)?,
            })
        })
        .ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy",
            )
        })
}

pub(crate) fn part_number(n: i32) -> S3Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })
}

/// The bytes a GET or HEAD selects of an object of `size` bytes: all of them (`None`), a
/// `Range`, or the part `partNumber` names (`parts`: the object's parts, empty when it was
/// not assembled from parts, which makes the whole object its part 1). The second value is
/// the parts count S3 reports (`x-amz-mp-parts-count`) when a part of a multipart object
/// was asked for.
pub(crate) fn select(
    size: u64,
    range: Option<&Range>,
    part: Option<i32>,
    parts: &[(u32, u64)],
) -> S3Result<(Option<std::ops::Range<u64>>, Option<i32>)> {
    match (range, part) {
        (None, None) => Ok((None, None)),
        (Some(_), Some(_)) => Err(S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            "Cannot specify both Range header and partNumber query parameter",
        )),
        (Some(r), None) => {
            let range = r.check(size).map_err(|_| s3_error!(InvalidRange))?;
            // A suffix range of an empty object is satisfiable and selects nothing: the
            // whole (empty) object, 200, as S3 answers (a `Content-Range` of an empty range
            // cannot be written: its last byte would be -1).
            if range.is_empty() {
                return Ok((None, None));
            }
            Ok((Some(range), None))
        }
        (None, Some(n)) => {
            let n = part_number(n)?;
            let unsatisfiable = || {
                let mut e = S3Error::with_message(
                    S3ErrorCode::Custom("InvalidPartNumber".into()),
                    "The requested partnumber is not satisfiable",
                );
                e.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
                e
            };
            if parts.is_empty() {
                return match n {
                    1 => Ok(((size > 0).then_some(0..size), None)),
                    _ => Err(unsatisfiable()),
                };
            }
            let mut offset = 0u64;
            for &(number, len) in parts {
                if number == n {
                    let count = i32::try_from(parts.len()).unwrap_or(i32::MAX);
                    return Ok(((len > 0).then_some(offset..offset + len), Some(count)));
                }
                offset += len;
            }
            Err(unsatisfiable())
        }
    }
}

/// The (part number, ETag) list of a CompleteMultipartUpload body, as the client sent it
/// (whether it names the upload's parts, in order, is the store's check).
/// The checksums a CompleteMultipartUpload request lists for its parts.
fn completion_part_checksums(
    body: Option<&CompletedMultipartUpload>,
) -> Vec<(u32, (String, String))> {
    let mut out = Vec::new();
    for p in body.and_then(|m| m.parts.as_ref()).into_iter().flatten() {
        let Some(n) = p.part_number.and_then(|n| u32::try_from(n).ok()) else {
            continue;
        };
        let given = [
            ("CRC32", &p.checksum_crc32),
            ("CRC32C", &p.checksum_crc32c),
            ("CRC64NVME", &p.checksum_crc64nvme),
            ("SHA1", &p.checksum_sha1),
            ("SHA256", &p.checksum_sha256),
        ];
        for (name, v) in given {
            if let Some(v) = v {
                out.push((n, (name.to_owned(), v.clone())));
            }
        }
    }
    out
}

pub(crate) fn completion_parts(
    body: Option<CompletedMultipartUpload>,
) -> S3Result<Vec<(u32, String)>> {
    body.and_then(|m| m.parts)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let n = p
                .part_number
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| s3_error!(InvalidPart, "a part has no part number"))?;
            let e = p
                .e_tag
                .map(ETag::into_value)
                .ok_or_else(|| s3_error!(InvalidPart, "a part has no ETag"))?;
            Ok((n, e))
        })
        .collect()
}

/// The common prefix `key` falls into: `prefix` and what follows it up to and including
/// the first `delimiter`.
pub(crate) fn fold<'k>(key: &'k str, prefix: &str, delimiter: &str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    rest.find(delimiter)
        .map(|i| &key[..prefix.len() + i + delimiter.len()])
}

/// Marks a HeadObject response as partial (a `Range` was honoured). s3s answers HeadObject
/// with 200 whatever the handler says, but carries a response's extensions through:
/// [`partial_content`], a layer around the edge's router, turns the marker into 206.
#[derive(Debug, Clone, Copy)]
struct PartialContent;

/// Gives a response that [`PartialContent`] marks the status 206 Partial Content.
pub async fn partial_content(mut resp: axum::response::Response) -> axum::response::Response {
    if resp.extensions_mut().remove::<PartialContent>().is_some() {
        *resp.status_mut() = http::StatusCode::PARTIAL_CONTENT;
    }
    resp
}

/// One object write: what PutObject and CopyObject hand to [`S3Adapter::write`].
struct Write {
    bucket: String,
    key: String,
    body: sluice_store::ByteStream,
    /// How the body itself failed, if it did.
    fault: Arc<BodyFault>,
    /// The `Content-MD5` the client sent.
    content_md5: Option<[u8; 16]>,
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
    /// The access key that signed the request.
    who: String,
    /// `If-None-Match: *`.
    if_absent: bool,
    /// The S3 event the write is notified as (`None`: `ObjectCreated:Put`). A copy into
    /// the uploads prefix goes through the upload pipeline and is notified as a put.
    event: Option<&'static str>,
    tags: Vec<(String, String)>,
    headers: ObjectHeaders,
    /// `If-Match`: the ETag (unquoted) the object must have, or `*`.
    if_match: Option<String>,
    /// The flexible checksum to compute (and compare with the client's).
    checksum: crate::s3_checksum::Spec,
}

/// The user of an upload written through S3: the access key that signed the write.
fn s3_user_sub(access_key: &str) -> String {
    format!("aws:{access_key}")
}

/// The file name of an upload written through S3: its key without the uploads prefix.
pub(crate) fn upload_filename(key: &str) -> String {
    key.trim_start_matches("uploads/").to_owned()
}

impl S3Adapter {
    /// A bucket's configuration of `kind`, as it was put (`None`: not set).
    async fn config<T: serde::de::DeserializeOwned>(
        &self,
        bucket: &str,
        kind: &str,
    ) -> S3Result<Option<T>> {
        match self.store.bucket_config(bucket, kind).await.map_err(s3_err)? {
            Some(doc) => serde_json::from_str(&doc).map(Some).map_err(|e| {
                tracing::error!(bucket, kind, error = %e, "a stored bucket configuration cannot be read");
                s3_error!(InternalError)
            }),
            None => Ok(None),
        }
    }

    /// Sets (`Some`) or removes (`None`) a bucket's configuration of `kind`.
    async fn set_config<T: serde::Serialize>(
        &self,
        bucket: &str,
        kind: &str,
        value: Option<&T>,
    ) -> S3Result<()> {
        let doc = match value {
            Some(v) => Some(serde_json::to_string(v).map_err(|e| {
                tracing::error!(bucket, kind, error = %e, "a bucket configuration cannot be stored");
                s3_error!(InternalError)
            })?),
            None => None,
        };
        self.store
            .set_bucket_config(bucket, kind, doc)
            .await
            .map_err(s3_err)
    }

    /// A bucket's region (the server's when it kept none).
    async fn bucket_region(&self, bucket: &str) -> S3Result<String> {
        Ok(self
            .regions
            .get(&self.store, bucket, &self.region)
            .await
            .map_err(s3_err)?
            .unwrap_or_else(|| self.region.clone()))
    }

    fn policies(&self) -> S3Result<&BucketPolicies> {
        self.policies
            .as_deref()
            .ok_or_else(|| s3_error!(NotImplemented, "this server keeps no bucket policies"))
    }

    fn enqueue_target(&self, bucket: &str, key: &str) -> Option<&UploadHook> {
        self.uploads
            .as_ref()
            .filter(|h| h.bucket == bucket && key.starts_with("uploads/") && key.len() > 8)
    }

    /// Writes an object, as an upload when it lands in the uploads prefix.
    async fn write(&self, w: Write) -> S3Result<ObjectInfo> {
        let Write {
            bucket,
            key,
            body,
            fault,
            content_md5,
            content_type,
            metadata,
            who,
            if_absent,
            event,
            tags,
            mut headers,
            if_match,
            checksum,
        } = w;
        let (bucket, key) = (bucket.as_str(), key.as_str());
        let started_ms = now_ms();
        let (body, check) = crate::s3_checksum::hashing(body, checksum);
        if let Some(hook) = self.enqueue_target(bucket, key) {
            if if_absent && self.store.head(bucket, key).await.is_ok() {
                return Err(s3_error!(PreconditionFailed));
            }
            if let Some(want) = &if_match {
                match self.store.head(bucket, key).await {
                    Ok(i) if want == "*" || i.etag == *want => {}
                    Ok(_) => return Err(s3_error!(PreconditionFailed)),
                    Err(e) => return Err(self.not_found(bucket, e).await),
                }
            }
            // Staged as it arrives (never whole in memory), checked, then committed as an
            // upload; a staged body dropped uncommitted takes its blob with it.
            let staged = hook
                .sink
                .stage(body)
                .await
                .map_err(|e| fault.or(upload_err(e)))?;
            let md5 = staged.md5().to_owned();
            if content_md5.is_some_and(|want| hex::encode(want) != md5) {
                return Err(s3_err(StoreError::BadDigest));
            }
            headers.checksum = (check.0)().map_err(s3_err)?;
            let meta = UploadMeta {
                user_sub: s3_user_sub(&who),
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                filename: upload_filename(key),
                content_type: content_type.unwrap_or_else(|| "application/octet-stream".into()),
                metadata,
                tags: tags.clone(),
                headers: headers.clone(),
                request_id: uuid::Uuid::new_v4().to_string(),
                stream: hook.stream.clone(),
                partition_key: uuid::Uuid::new_v4().to_string(),
            };
            let upload = hook
                .sink
                .commit_staged(meta, staged)
                .await
                .map_err(upload_err)?;
            return Ok(ObjectInfo {
                bucket: upload.bucket,
                key: upload.key,
                size: upload.size,
                etag: md5,
                sha256: upload.sha256,
                content_type: upload.content_type,
                last_modified_ms: upload.created_ms,
                owner: Some(upload.user_sub),
                metadata: BTreeMap::new(),
                tags,
                headers,
                // The uploads ledger reads objects by key: an upload is not versioned.
                version_id: None,
            });
        }
        self.store
            .put_stream(
                bucket,
                key,
                body,
                PutOptions {
                    content_type,
                    owner: None,
                    metadata,
                    if_absent,
                    content_md5,
                    created_event: event,
                    tags,
                    headers,
                    if_match,
                    body_check: Some(check),
                    // A condition failing on an object written since the body began to
                    // stream is a race (409), as S3 answers it.
                    started_ms: Some(started_ms),
                },
            )
            .await
            .map_err(|e| fault.or(s3_err(e)))
    }
}

#[async_trait]
impl S3 for S3Adapter {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self.store.list_buckets().await.map_err(s3_err)?;
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(
                buckets
                    .into_iter()
                    .map(|b| Bucket {
                        name: Some(b.name),
                        creation_date: Some(timestamp(b.created_ms)),
                        bucket_region: Some(self.region.clone()),
                    })
                    .collect(),
            ),
            owner: Some(owner()),
            continuation_token: None,
            prefix: None,
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let signed = req
            .region
            .as_ref()
            .map_or(self.region.as_str(), |r| r.as_str());
        let constraint = req
            .input
            .create_bucket_configuration
            .as_ref()
            .and_then(|c| c.location_constraint.as_ref())
            .map(|c| c.as_str().to_owned());
        let region = crate::s3_region::create_region(constraint.as_deref(), signed)?;
        // `x-amz-object-ownership` and `x-amz-acl` are decided before the bucket exists, so
        // that a refused ACL leaves no bucket behind.
        let ownership = req
            .input
            .object_ownership
            .as_ref()
            .map(|o| o.as_str().to_owned());
        if let Some(o) = &ownership
            && !matches!(
                o.as_str(),
                "BucketOwnerEnforced" | "BucketOwnerPreferred" | "ObjectWriter"
            )
        {
            return Err(s3_error!(
                InvalidArgument,
                "Invalid x-amz-object-ownership header: {o}"
            ));
        }
        let (acl, grants) = acl_of!(req.input);
        let acl = crate::s3_acl::decide(
            ownership
                .as_deref()
                .unwrap_or(ObjectOwnership::BUCKET_OWNER_ENFORCED),
            acl.as_deref(),
            grants || req.input.grant_write.is_some(),
            false,
            true,
        )
        .map_err(|e| {
            if *e.code() == S3ErrorCode::AccessControlListNotSupported {
                S3Error::with_message(
                    S3ErrorCode::InvalidBucketAclWithObjectOwnership,
                    "Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced setting",
                )
            } else {
                e
            }
        })?;
        let bucket = req.input.bucket;
        self.store.create_bucket(&bucket).await.map_err(s3_err)?;
        if let Some(o) = &ownership {
            self.set_config(&bucket, OWNERSHIP, Some(o)).await?;
        }
        if let Some(a) = &acl {
            self.set_config(&bucket, crate::s3_acl::ACL, Some(a))
                .await?;
        }
        if region != self.region {
            self.store
                .set_bucket_config(&bucket, crate::s3_region::LOCATION, Some(region))
                .await
                .map_err(s3_err)?;
        }
        if req.input.object_lock_enabled_for_bucket == Some(true) {
            // Object lock comes with versioning, which can then not be suspended.
            self.store
                .set_bucket_config(&bucket, VERSIONING_CONFIG, Some("Enabled".into()))
                .await
                .map_err(s3_err)?;
            let cfg = ObjectLockConfiguration {
                object_lock_enabled: Some(ObjectLockEnabled::from_static(
                    ObjectLockEnabled::ENABLED,
                )),
                rule: None,
            };
            self.set_config(&bucket, crate::s3_lock::OBJECT_LOCK, Some(&cfg))
                .await?;
        }
        self.regions.forget(&bucket);
        self.locks.forget(&bucket);
        if let Some(p) = &self.policies {
            p.forget(&bucket);
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.store
            .head_bucket(&req.input.bucket)
            .await
            .map_err(s3_err)?;
        let region = self.bucket_region(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(region),
            ..Default::default()
        }))
    }

    // --- bucket configurations, kept and answered (see `config`) -----------------------
    async fn put_bucket_encryption(
        &self,
        req: S3Request<PutBucketEncryptionInput>,
    ) -> S3Result<S3Response<PutBucketEncryptionOutput>> {
        let input = req.input;
        let cfg = input.server_side_encryption_configuration;
        if cfg.rules.is_empty() {
            return Err(s3_error!(MalformedXML, "at least one rule is required"));
        }
        for rule in &cfg.rules {
            if let Some(d) = &rule.apply_server_side_encryption_by_default
                && !crate::s3_sse::valid_algorithm(d.sse_algorithm.as_str())
            {
                return Err(s3_error!(
                    InvalidArgument,
                    "The server side encryption algorithm is not valid: AES256, aws:kms and aws:kms:dsse are"
                ));
            }
        }
        self.set_config(&input.bucket, ENCRYPTION, Some(&cfg))
            .await?;
        self.encryptions.forget(&input.bucket);
        Ok(S3Response::new(PutBucketEncryptionOutput::default()))
    }

    async fn get_bucket_encryption(
        &self,
        req: S3Request<GetBucketEncryptionInput>,
    ) -> S3Result<S3Response<GetBucketEncryptionOutput>> {
        // Every bucket is encrypted with SSE-S3 unless configured otherwise, as on S3.
        let cfg = self
            .config(&req.input.bucket, ENCRYPTION)
            .await?
            .unwrap_or_else(|| ServerSideEncryptionConfiguration {
                rules: vec![ServerSideEncryptionRule {
                    apply_server_side_encryption_by_default: Some(ServerSideEncryptionByDefault {
                        kms_master_key_id: None,
                        sse_algorithm: ServerSideEncryption::from_static(
                            ServerSideEncryption::AES256,
                        ),
                    }),
                    bucket_key_enabled: Some(false),
                }],
            });
        Ok(S3Response::new(GetBucketEncryptionOutput {
            server_side_encryption_configuration: Some(cfg),
        }))
    }

    async fn delete_bucket_encryption(
        &self,
        req: S3Request<DeleteBucketEncryptionInput>,
    ) -> S3Result<S3Response<DeleteBucketEncryptionOutput>> {
        self.encryptions.forget(&req.input.bucket);
        self.set_config::<()>(&req.input.bucket, ENCRYPTION, None)
            .await?;
        Ok(no_content(DeleteBucketEncryptionOutput::default()))
    }

    async fn put_public_access_block(
        &self,
        req: S3Request<PutPublicAccessBlockInput>,
    ) -> S3Result<S3Response<PutPublicAccessBlockOutput>> {
        let input = req.input;
        self.set_config(
            &input.bucket,
            PUBLIC_ACCESS_BLOCK,
            Some(&input.public_access_block_configuration),
        )
        .await?;
        Ok(S3Response::new(PutPublicAccessBlockOutput::default()))
    }

    async fn get_public_access_block(
        &self,
        req: S3Request<GetPublicAccessBlockInput>,
    ) -> S3Result<S3Response<GetPublicAccessBlockOutput>> {
        match self.config(&req.input.bucket, PUBLIC_ACCESS_BLOCK).await? {
            Some(cfg) => Ok(S3Response::new(GetPublicAccessBlockOutput {
                public_access_block_configuration: Some(cfg),
            })),
            None => {
                let mut e = S3Error::with_message(
                    S3ErrorCode::Custom("NoSuchPublicAccessBlockConfiguration".into()),
                    "The public access block configuration was not found",
                );
                e.set_status_code(http::StatusCode::NOT_FOUND);
                Err(e)
            }
        }
    }

    async fn delete_public_access_block(
        &self,
        req: S3Request<DeletePublicAccessBlockInput>,
    ) -> S3Result<S3Response<DeletePublicAccessBlockOutput>> {
        self.set_config::<()>(&req.input.bucket, PUBLIC_ACCESS_BLOCK, None)
            .await?;
        Ok(no_content(DeletePublicAccessBlockOutput::default()))
    }

    async fn put_bucket_ownership_controls(
        &self,
        req: S3Request<PutBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<PutBucketOwnershipControlsOutput>> {
        let input = req.input;
        let rules = &input.ownership_controls.rules;
        if rules.len() != 1 {
            return Err(s3_error!(
                MalformedXML,
                "exactly one ownership rule is required"
            ));
        }
        if !matches!(
            rules[0].object_ownership.as_str(),
            "BucketOwnerEnforced" | "BucketOwnerPreferred" | "ObjectWriter"
        ) {
            return Err(s3_error!(
                MalformedXML,
                "ObjectOwnership must be BucketOwnerEnforced, BucketOwnerPreferred or ObjectWriter"
            ));
        }
        let ownership = rules[0].object_ownership.as_str().to_owned();
        self.set_config(&input.bucket, OWNERSHIP, Some(&ownership))
            .await?;
        Ok(S3Response::new(PutBucketOwnershipControlsOutput::default()))
    }

    async fn get_bucket_ownership_controls(
        &self,
        req: S3Request<GetBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<GetBucketOwnershipControlsOutput>> {
        // ACLs are disabled, as on a new S3 bucket: the owner owns every object.
        let ownership = self
            .config::<String>(&req.input.bucket, OWNERSHIP)
            .await?
            .unwrap_or_else(|| ObjectOwnership::BUCKET_OWNER_ENFORCED.to_owned());
        Ok(S3Response::new(GetBucketOwnershipControlsOutput {
            ownership_controls: Some(OwnershipControls {
                rules: vec![OwnershipControlsRule {
                    object_ownership: ObjectOwnership::from(ownership),
                }],
            }),
        }))
    }

    async fn delete_bucket_ownership_controls(
        &self,
        req: S3Request<DeleteBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<DeleteBucketOwnershipControlsOutput>> {
        self.set_config::<()>(&req.input.bucket, OWNERSHIP, None)
            .await?;
        Ok(no_content(DeleteBucketOwnershipControlsOutput::default()))
    }

    async fn put_bucket_cors(
        &self,
        req: S3Request<PutBucketCorsInput>,
    ) -> S3Result<S3Response<PutBucketCorsOutput>> {
        let input = req.input;
        let rules = &input.cors_configuration.cors_rules;
        if rules.is_empty() || rules.len() > 100 {
            return Err(s3_error!(
                MalformedXML,
                "a CORS configuration has 1 to 100 rules"
            ));
        }
        for rule in rules {
            if let Some(m) = rule
                .allowed_methods
                .iter()
                .find(|m| !matches!(m.as_str(), "GET" | "PUT" | "POST" | "DELETE" | "HEAD"))
            {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidRequest,
                    format!(
                        "Found unsupported HTTP method in CORS config. Unsupported method is {m}"
                    ),
                ));
            }
            if rule.allowed_origins.is_empty() || rule.allowed_methods.is_empty() {
                return Err(s3_error!(
                    MalformedXML,
                    "each CORS rule needs AllowedOrigin and AllowedMethod"
                ));
            }
            // One `*` per pattern is what S3's matching knows (`s3_cors::wildcard`).
            if let Some(o) = rule
                .allowed_origins
                .iter()
                .find(|o| o.matches('*').count() > 1)
            {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidRequest,
                    format!("AllowedOrigin \"{o}\" can not have more than one wildcard."),
                ));
            }
            if let Some(h) = rule
                .allowed_headers
                .iter()
                .flatten()
                .find(|h| h.matches('*').count() > 1)
            {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidRequest,
                    format!("AllowedHeader \"{h}\" can not have more than one wildcard."),
                ));
            }
        }
        self.set_config(&input.bucket, CORS, Some(&input.cors_configuration))
            .await?;
        self.cors.forget(&input.bucket);
        Ok(S3Response::new(PutBucketCorsOutput::default()))
    }

    async fn get_bucket_cors(
        &self,
        req: S3Request<GetBucketCorsInput>,
    ) -> S3Result<S3Response<GetBucketCorsOutput>> {
        match self
            .config::<CORSConfiguration>(&req.input.bucket, CORS)
            .await?
        {
            Some(cfg) => Ok(S3Response::new(GetBucketCorsOutput {
                cors_rules: Some(cfg.cors_rules),
            })),
            None => Err(S3Error::with_message(
                S3ErrorCode::NoSuchCORSConfiguration,
                "The CORS configuration does not exist",
            )),
        }
    }

    async fn delete_bucket_cors(
        &self,
        req: S3Request<DeleteBucketCorsInput>,
    ) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
        self.set_config::<()>(&req.input.bucket, CORS, None).await?;
        self.cors.forget(&req.input.bucket);
        Ok(no_content(DeleteBucketCorsOutput::default()))
    }

    async fn put_bucket_lifecycle_configuration(
        &self,
        req: S3Request<PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketLifecycleConfigurationOutput>> {
        let input = req.input;
        let Some(cfg) = input.lifecycle_configuration else {
            return Err(s3_error!(
                MalformedXML,
                "a lifecycle configuration is required"
            ));
        };
        crate::s3_lifecycle::validate(&cfg)?;
        self.set_config(&input.bucket, LIFECYCLE, Some(&cfg))
            .await?;
        Ok(S3Response::new(
            PutBucketLifecycleConfigurationOutput::default(),
        ))
    }

    async fn get_bucket_lifecycle_configuration(
        &self,
        req: S3Request<GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<GetBucketLifecycleConfigurationOutput>> {
        match self
            .config::<BucketLifecycleConfiguration>(&req.input.bucket, LIFECYCLE)
            .await?
        {
            Some(cfg) => Ok(S3Response::new(GetBucketLifecycleConfigurationOutput {
                rules: Some(cfg.rules),
                ..Default::default()
            })),
            None => Err(S3Error::with_message(
                S3ErrorCode::NoSuchLifecycleConfiguration,
                "The lifecycle configuration does not exist",
            )),
        }
    }

    async fn delete_bucket_lifecycle(
        &self,
        req: S3Request<DeleteBucketLifecycleInput>,
    ) -> S3Result<S3Response<DeleteBucketLifecycleOutput>> {
        self.set_config::<()>(&req.input.bucket, LIFECYCLE, None)
            .await?;
        Ok(no_content(DeleteBucketLifecycleOutput::default()))
    }

    async fn put_bucket_website(
        &self,
        req: S3Request<PutBucketWebsiteInput>,
    ) -> S3Result<S3Response<PutBucketWebsiteOutput>> {
        let input = req.input;
        let cfg = &input.website_configuration;
        if cfg.index_document.is_none() && cfg.redirect_all_requests_to.is_none() {
            return Err(s3_error!(
                InvalidArgument,
                "A value for IndexDocument Suffix must be provided if RedirectAllRequestsTo is empty"
            ));
        }
        self.set_config(&input.bucket, WEBSITE, Some(cfg)).await?;
        Ok(S3Response::new(PutBucketWebsiteOutput::default()))
    }

    async fn get_bucket_website(
        &self,
        req: S3Request<GetBucketWebsiteInput>,
    ) -> S3Result<S3Response<GetBucketWebsiteOutput>> {
        match self
            .config::<WebsiteConfiguration>(&req.input.bucket, WEBSITE)
            .await?
        {
            Some(cfg) => Ok(S3Response::new(GetBucketWebsiteOutput {
                error_document: cfg.error_document,
                index_document: cfg.index_document,
                redirect_all_requests_to: cfg.redirect_all_requests_to,
                routing_rules: cfg.routing_rules,
            })),
            None => Err(S3Error::with_message(
                S3ErrorCode::NoSuchWebsiteConfiguration,
                "The specified bucket does not have a website configuration",
            )),
        }
    }

    async fn delete_bucket_website(
        &self,
        req: S3Request<DeleteBucketWebsiteInput>,
    ) -> S3Result<S3Response<DeleteBucketWebsiteOutput>> {
        self.set_config::<()>(&req.input.bucket, WEBSITE, None)
            .await?;
        Ok(no_content(DeleteBucketWebsiteOutput::default()))
    }

    async fn put_bucket_logging(
        &self,
        req: S3Request<PutBucketLoggingInput>,
    ) -> S3Result<S3Response<PutBucketLoggingOutput>> {
        let input = req.input;
        let status = input.bucket_logging_status;
        if let Some(target) = &status.logging_enabled {
            self.store
                .head_bucket(&target.target_bucket)
                .await
                .map_err(|_| {
                    S3Error::with_message(
                        S3ErrorCode::InvalidTargetBucketForLogging,
                        "The target bucket for logging does not exist",
                    )
                })?;
        }
        // The target bucket and prefix are kept (target grants and key formats are not).
        let kept = status
            .logging_enabled
            .as_ref()
            .map(|l| (l.target_bucket.clone(), l.target_prefix.clone()));
        self.set_config(&input.bucket, LOGGING, kept.as_ref())
            .await?;
        Ok(S3Response::new(PutBucketLoggingOutput::default()))
    }

    async fn get_bucket_logging(
        &self,
        req: S3Request<GetBucketLoggingInput>,
    ) -> S3Result<S3Response<GetBucketLoggingOutput>> {
        let target = self
            .config::<(String, String)>(&req.input.bucket, LOGGING)
            .await?;
        Ok(S3Response::new(GetBucketLoggingOutput {
            logging_enabled: target.map(|(target_bucket, target_prefix)| LoggingEnabled {
                target_bucket,
                target_prefix,
                ..Default::default()
            }),
        }))
    }

    async fn put_bucket_accelerate_configuration(
        &self,
        req: S3Request<PutBucketAccelerateConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketAccelerateConfigurationOutput>> {
        let input = req.input;
        if input
            .accelerate_configuration
            .status
            .as_ref()
            .is_some_and(|s| !matches!(s.as_str(), "Enabled" | "Suspended"))
        {
            return Err(s3_error!(
                MalformedXML,
                "Status must be Enabled or Suspended"
            ));
        }
        self.set_config(
            &input.bucket,
            ACCELERATE,
            Some(&input.accelerate_configuration),
        )
        .await?;
        Ok(S3Response::new(
            PutBucketAccelerateConfigurationOutput::default(),
        ))
    }

    async fn get_bucket_accelerate_configuration(
        &self,
        req: S3Request<GetBucketAccelerateConfigurationInput>,
    ) -> S3Result<S3Response<GetBucketAccelerateConfigurationOutput>> {
        let cfg = self
            .config::<AccelerateConfiguration>(&req.input.bucket, ACCELERATE)
            .await?;
        Ok(S3Response::new(GetBucketAccelerateConfigurationOutput {
            status: cfg.and_then(|c| c.status),
            ..Default::default()
        }))
    }

    async fn put_bucket_request_payment(
        &self,
        req: S3Request<PutBucketRequestPaymentInput>,
    ) -> S3Result<S3Response<PutBucketRequestPaymentOutput>> {
        let input = req.input;
        if !matches!(
            input.request_payment_configuration.payer.as_str(),
            "BucketOwner" | "Requester"
        ) {
            return Err(s3_error!(
                MalformedXML,
                "Payer must be BucketOwner or Requester"
            ));
        }
        self.set_config(
            &input.bucket,
            REQUEST_PAYMENT,
            Some(&input.request_payment_configuration),
        )
        .await?;
        Ok(S3Response::new(PutBucketRequestPaymentOutput::default()))
    }

    async fn get_bucket_request_payment(
        &self,
        req: S3Request<GetBucketRequestPaymentInput>,
    ) -> S3Result<S3Response<GetBucketRequestPaymentOutput>> {
        let payer = self
            .config::<RequestPaymentConfiguration>(&req.input.bucket, REQUEST_PAYMENT)
            .await?
            .map(|c| c.payer)
            .unwrap_or_else(|| Payer::from_static(Payer::BUCKET_OWNER));
        Ok(S3Response::new(GetBucketRequestPaymentOutput {
            payer: Some(payer),
        }))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let state = self
            .store
            .bucket_config(&req.input.bucket, VERSIONING_CONFIG)
            .await
            .map_err(s3_err)?;
        // A bucket whose versioning was never enabled has no status.
        Ok(S3Response::new(GetBucketVersioningOutput {
            status: state.map(BucketVersioningStatus::from),
            ..Default::default()
        }))
    }

    async fn put_bucket_versioning(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        let input = req.input;
        let status = crate::s3_versions::requested_status(&input.versioning_configuration)?;
        if status != "Enabled"
            && self
                .locks
                .get(&self.store, &input.bucket)
                .await
                .map_err(s3_err)?
                .is_some()
        {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidBucketState,
                "An Object Lock configuration is present on this bucket, so the versioning state cannot be changed.",
            ));
        }
        self.store
            .set_bucket_config(&input.bucket, VERSIONING_CONFIG, Some(status.to_owned()))
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(PutBucketVersioningOutput::default()))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let input = req.input;
        let encode = crate::s3_encoding::url_wanted(input.encoding_type.as_ref())?;
        let page = crate::s3_versions::list_page(
            self.store.as_ref(),
            &input.bucket,
            input.prefix.as_deref().unwrap_or(""),
            input.delimiter.as_deref(),
            input.key_marker.as_deref(),
            input.version_id_marker.as_deref(),
            input.max_keys,
        )
        .await?;
        let (next_key_marker, next_version_id_marker) = match page.next {
            Some((k, v)) => (Some(k), v),
            None => (None, None),
        };
        let mut out = ListObjectVersionsOutput {
            is_truncated: Some(next_key_marker.is_some()),
            next_key_marker,
            next_version_id_marker,
            versions: (!page.versions.is_empty()).then_some(page.versions),
            delete_markers: (!page.markers.is_empty()).then_some(page.markers),
            common_prefixes: (!page.prefixes.is_empty()).then_some(page.prefixes),
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            key_marker: input.key_marker,
            version_id_marker: input.version_id_marker,
            max_keys: Some(page.max_keys),
            ..Default::default()
        };
        if encode {
            crate::s3_encoding::versions(&mut out);
        }
        Ok(S3Response::new(out))
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        let bucket = &req.input.bucket;
        let acl = match crate::s3_acl::disabled(&self.ownership(bucket).await?) {
            true => None,
            false => self.config::<String>(bucket, crate::s3_acl::ACL).await?,
        };
        Ok(S3Response::new(GetBucketAclOutput {
            grants: Some(crate::s3_acl::grants(acl.as_deref())),
            owner: Some(owner()),
        }))
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        let input = req.input;
        self.store
            .head_bucket(&input.bucket)
            .await
            .map_err(s3_err)?;
        let kept = self
            .acl_put(&input.bucket, acl_put_of!(input), true)
            .await?;
        self.set_config(&input.bucket, crate::s3_acl::ACL, kept.as_ref())
            .await?;
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    async fn get_object_acl(
        &self,
        req: S3Request<GetObjectAclInput>,
    ) -> S3Result<S3Response<GetObjectAclOutput>> {
        let input = req.input;
        let info = self
            .version_info(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        let disabled = crate::s3_acl::disabled(&self.ownership(&input.bucket).await?);
        let acl = if disabled { None } else { info.headers.acl };
        Ok(S3Response::new(GetObjectAclOutput {
            grants: Some(crate::s3_acl::grants(acl.as_deref())),
            owner: Some(owner()),
            ..Default::default()
        }))
    }

    async fn put_object_acl(
        &self,
        req: S3Request<PutObjectAclInput>,
    ) -> S3Result<S3Response<PutObjectAclOutput>> {
        let input = req.input;
        let kept = self
            .acl_put(&input.bucket, acl_put_of!(input), false)
            .await?;
        let version = crate::s3_versions::version_arg(input.version_id.as_deref())?;
        let update: sluice_store::HeadersUpdate = Box::new(move |h| {
            h.acl = kept.clone();
            Ok(())
        });
        match self
            .store
            .update_headers(&input.bucket, &input.key, version, update)
            .await
        {
            Ok(_) => Ok(S3Response::new(PutObjectAclOutput::default())),
            Err(e) => Err(self.not_found(&input.bucket, e).await),
        }
    }

    async fn get_object_lock_configuration(
        &self,
        req: S3Request<GetObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<GetObjectLockConfigurationOutput>> {
        match self
            .config::<ObjectLockConfiguration>(&req.input.bucket, crate::s3_lock::OBJECT_LOCK)
            .await?
        {
            Some(cfg) => Ok(S3Response::new(GetObjectLockConfigurationOutput {
                object_lock_configuration: Some(cfg),
            })),
            None => Err(S3Error::with_message(
                S3ErrorCode::ObjectLockConfigurationNotFoundError,
                "Object Lock configuration does not exist for this bucket",
            )),
        }
    }

    async fn put_object_lock_configuration(
        &self,
        req: S3Request<PutObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<PutObjectLockConfigurationOutput>> {
        let input = req.input;
        let cfg = input.object_lock_configuration.unwrap_or_default();
        crate::s3_lock::validate(&cfg)?;
        let versioning = self
            .store
            .bucket_config(&input.bucket, VERSIONING_CONFIG)
            .await
            .map_err(s3_err)?;
        if versioning.as_deref() != Some("Enabled") {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidBucketState,
                "Versioning must be 'Enabled' on the bucket to apply a Object Lock configuration",
            ));
        }
        self.set_config(&input.bucket, crate::s3_lock::OBJECT_LOCK, Some(&cfg))
            .await?;
        self.locks.forget(&input.bucket);
        Ok(S3Response::new(PutObjectLockConfigurationOutput::default()))
    }

    async fn put_object_retention(
        &self,
        req: S3Request<PutObjectRetentionInput>,
    ) -> S3Result<S3Response<PutObjectRetentionOutput>> {
        let input = req.input;
        let bypass = input.bypass_governance_retention == Some(true);
        let update = crate::s3_lock::retention_update(input.retention, bypass, now_ms())?;
        self.update_lock(
            &input.bucket,
            &input.key,
            input.version_id.as_deref(),
            update,
        )
        .await?;
        Ok(S3Response::new(PutObjectRetentionOutput::default()))
    }

    async fn get_object_retention(
        &self,
        req: S3Request<GetObjectRetentionInput>,
    ) -> S3Result<S3Response<GetObjectRetentionOutput>> {
        let input = req.input;
        let info = self
            .version_info(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        let Some((mode, until)) = info.headers.lock else {
            return Err(crate::s3_lock::not_configured());
        };
        Ok(S3Response::new(GetObjectRetentionOutput {
            retention: Some(ObjectLockRetention {
                mode: Some(ObjectLockRetentionMode::from(mode)),
                retain_until_date: Some(timestamp(until)),
            }),
        }))
    }

    async fn put_object_legal_hold(
        &self,
        req: S3Request<PutObjectLegalHoldInput>,
    ) -> S3Result<S3Response<PutObjectLegalHoldOutput>> {
        let input = req.input;
        let update = crate::s3_lock::legal_hold_update(input.legal_hold)?;
        self.update_lock(
            &input.bucket,
            &input.key,
            input.version_id.as_deref(),
            update,
        )
        .await?;
        Ok(S3Response::new(PutObjectLegalHoldOutput::default()))
    }

    async fn get_object_legal_hold(
        &self,
        req: S3Request<GetObjectLegalHoldInput>,
    ) -> S3Result<S3Response<GetObjectLegalHoldOutput>> {
        let input = req.input;
        let info = self
            .version_info(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        if !info.headers.legal_hold {
            return Err(crate::s3_lock::not_configured());
        }
        Ok(S3Response::new(GetObjectLegalHoldOutput {
            legal_hold: Some(ObjectLockLegalHold {
                status: Some(ObjectLockLegalHoldStatus::from_static(
                    ObjectLockLegalHoldStatus::ON,
                )),
            }),
        }))
    }

    async fn get_bucket_replication(
        &self,
        req: S3Request<GetBucketReplicationInput>,
    ) -> S3Result<S3Response<GetBucketReplicationOutput>> {
        self.store
            .head_bucket(&req.input.bucket)
            .await
            .map_err(s3_err)?;
        Err(S3Error::with_message(
            S3ErrorCode::ReplicationConfigurationNotFoundError,
            "The replication configuration was not found",
        ))
    }

    async fn put_bucket_tagging(
        &self,
        req: S3Request<PutBucketTaggingInput>,
    ) -> S3Result<S3Response<PutBucketTaggingOutput>> {
        let input = req.input;
        let tags = tags_in(input.tagging, MAX_BUCKET_TAGS)?;
        self.store
            .set_bucket_tags(&input.bucket, Some(tags))
            .await
            .map_err(s3_err)?;
        Ok(S3Response::with_status(
            PutBucketTaggingOutput::default(),
            http::StatusCode::NO_CONTENT,
        ))
    }

    async fn get_bucket_tagging(
        &self,
        req: S3Request<GetBucketTaggingInput>,
    ) -> S3Result<S3Response<GetBucketTaggingOutput>> {
        match self
            .store
            .bucket_tags(&req.input.bucket)
            .await
            .map_err(s3_err)?
        {
            Some(tags) => Ok(S3Response::new(GetBucketTaggingOutput {
                tag_set: tag_set(&tags),
            })),
            None => Err(S3Error::with_message(
                S3ErrorCode::NoSuchTagSet,
                "The TagSet does not exist",
            )),
        }
    }

    async fn delete_bucket_tagging(
        &self,
        req: S3Request<DeleteBucketTaggingInput>,
    ) -> S3Result<S3Response<DeleteBucketTaggingOutput>> {
        self.store
            .set_bucket_tags(&req.input.bucket, None)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::with_status(
            DeleteBucketTaggingOutput::default(),
            http::StatusCode::NO_CONTENT,
        ))
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let input = req.input;
        let tags = tags_in(input.tagging, MAX_OBJECT_TAGS)?;
        let version = crate::s3_versions::version_arg(input.version_id.as_deref())?;
        match self
            .store
            .set_object_tags(&input.bucket, &input.key, version, tags)
            .await
        {
            Ok(()) => Ok(S3Response::new(PutObjectTaggingOutput {
                version_id: input.version_id.clone(),
            })),
            Err(e) => Err(self.not_found(&input.bucket, e).await),
        }
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let input = req.input;
        let found = match crate::s3_versions::version_arg(input.version_id.as_deref())? {
            Some(v) => self
                .store
                .head_version(&input.bucket, &input.key, v)
                .await
                .map(|(i, _)| i),
            None => self.store.head(&input.bucket, &input.key).await,
        };
        match found {
            Ok(info) => Ok(S3Response::new(GetObjectTaggingOutput {
                tag_set: tag_set(&info.tags),
                version_id: info.version_id.clone(),
            })),
            Err(e) => Err(self.not_found(&input.bucket, e).await),
        }
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        let input = req.input;
        let version = crate::s3_versions::version_arg(input.version_id.as_deref())?;
        match self
            .store
            .set_object_tags(&input.bucket, &input.key, version, Vec::new())
            .await
        {
            Ok(()) => Ok(S3Response::with_status(
                DeleteObjectTaggingOutput {
                    version_id: input.version_id.clone(),
                },
                http::StatusCode::NO_CONTENT,
            )),
            Err(e) => Err(self.not_found(&input.bucket, e).await),
        }
    }

    async fn put_bucket_policy(
        &self,
        req: S3Request<PutBucketPolicyInput>,
    ) -> S3Result<S3Response<PutBucketPolicyOutput>> {
        let policies = self.policies()?;
        let input = req.input;
        crate::s3_policy::validate(&input.policy, &input.bucket)?;
        policies
            .set(&input.bucket, Some(input.policy))
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(PutBucketPolicyOutput::default()))
    }

    async fn get_bucket_policy(
        &self,
        req: S3Request<GetBucketPolicyInput>,
    ) -> S3Result<S3Response<GetBucketPolicyOutput>> {
        let policies = self.policies()?;
        match policies.document(&req.input.bucket).await.map_err(s3_err)? {
            Some(policy) => Ok(S3Response::new(GetBucketPolicyOutput {
                policy: Some(policy),
            })),
            None => Err(S3Error::with_message(
                S3ErrorCode::NoSuchBucketPolicy,
                "The bucket policy does not exist",
            )),
        }
    }

    async fn delete_bucket_policy(
        &self,
        req: S3Request<DeleteBucketPolicyInput>,
    ) -> S3Result<S3Response<DeleteBucketPolicyOutput>> {
        let policies = self.policies()?;
        policies
            .set(&req.input.bucket, None)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(DeleteBucketPolicyOutput::default()))
    }

    async fn get_bucket_policy_status(
        &self,
        req: S3Request<GetBucketPolicyStatusInput>,
    ) -> S3Result<S3Response<GetBucketPolicyStatusOutput>> {
        let policies = self.policies()?;
        let Some(document) = policies.document(&req.input.bucket).await.map_err(s3_err)? else {
            return Err(S3Error::with_message(
                S3ErrorCode::NoSuchBucketPolicy,
                "The bucket policy does not exist",
            ));
        };
        let public = ResourcePolicy::parse(&document).is_ok_and(|p| p.is_public());
        Ok(S3Response::new(GetBucketPolicyStatusOutput {
            policy_status: Some(PolicyStatus {
                is_public: Some(public),
            }),
        }))
    }

    /// Only `LambdaFunctionConfigurations`: queues (SQS), topics (SNS) and EventBridge are
    /// refused with `InvalidArgument` (sluice has none of them).
    async fn put_bucket_notification_configuration(
        &self,
        req: S3Request<PutBucketNotificationConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketNotificationConfigurationOutput>> {
        let Some(hook) = &self.notifications else {
            return Err(s3_error!(NotImplemented, "this server runs no functions"));
        };
        let input = req.input;
        let cfg = input.notification_configuration;
        if cfg
            .queue_configurations
            .as_ref()
            .is_some_and(|q| !q.is_empty())
            || cfg
                .topic_configurations
                .as_ref()
                .is_some_and(|t| !t.is_empty())
            || cfg.event_bridge_configuration.is_some()
        {
            return Err(s3_error!(
                InvalidArgument,
                "sluice sends bucket notifications to functions only (LambdaFunctionConfigurations): queue, topic and EventBridge configurations are not supported"
            ));
        }
        let skip = input.skip_destination_validation == Some(true);
        let mut functions = Vec::new();
        for c in cfg.lambda_function_configurations.unwrap_or_default() {
            let events: Vec<String> = c.events.iter().map(|e| e.as_ref().to_owned()).collect();
            if events.is_empty() {
                return Err(s3_error!(
                    InvalidArgument,
                    "A notification configuration needs at least one event"
                ));
            }
            if let Some(bad) = events
                .iter()
                .find(|e| !sluice_store::notifications::EVENT_TYPES.contains(&e.as_str()))
            {
                return Err(s3_error!(
                    InvalidArgument,
                    "The event {bad} is not supported for notifications by sluice (supported: {})",
                    sluice_store::notifications::EVENT_TYPES.join(", ")
                ));
            }
            let (mut prefix, mut suffix) = (String::new(), String::new());
            for rule in c
                .filter
                .and_then(|f| f.key)
                .and_then(|k| k.filter_rules)
                .unwrap_or_default()
            {
                let name = rule.name.as_ref().map(|n| n.as_str().to_ascii_lowercase());
                let value = rule.value.unwrap_or_default();
                match name.as_deref() {
                    Some("prefix") => prefix = value,
                    Some("suffix") => suffix = value,
                    _ => {
                        return Err(s3_error!(
                            InvalidArgument,
                            "A filter rule name must be prefix or suffix"
                        ));
                    }
                }
            }
            let arn = c.lambda_function_arn.clone();
            if !skip {
                let exists = match hook.functions.resolve_name(&arn) {
                    Ok(name) => hook.functions.get(&name).await.is_ok(),
                    Err(_) => false,
                };
                if !exists {
                    return Err(s3_error!(
                        InvalidArgument,
                        "Unable to validate the following destination configurations: {arn} (no such function)"
                    ));
                }
            }
            functions.push(sluice_store::notifications::FunctionTarget {
                id: c.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                function_arn: arn,
                events,
                prefix,
                suffix,
            });
        }
        hook.store
            .set_notifications(
                &input.bucket,
                sluice_store::notifications::NotificationConfig {
                    region: self.region.clone(),
                    functions,
                },
            )
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(
            PutBucketNotificationConfigurationOutput::default(),
        ))
    }

    async fn get_bucket_notification_configuration(
        &self,
        req: S3Request<GetBucketNotificationConfigurationInput>,
    ) -> S3Result<S3Response<GetBucketNotificationConfigurationOutput>> {
        let Some(hook) = &self.notifications else {
            return Err(s3_error!(NotImplemented, "this server runs no functions"));
        };
        let cfg = hook
            .store
            .notifications(&req.input.bucket)
            .await
            .map_err(s3_err)?
            .unwrap_or_default();
        let list: Vec<LambdaFunctionConfiguration> = cfg
            .functions
            .into_iter()
            .map(|t| {
                let mut rules = Vec::new();
                for (name, value) in [("prefix", t.prefix), ("suffix", t.suffix)] {
                    if !value.is_empty() {
                        rules.push(FilterRule {
                            name: Some(FilterRuleName::from(name.to_owned())),
                            value: Some(value),
                        });
                    }
                }
                LambdaFunctionConfiguration {
                    events: t.events.into_iter().map(Event::from).collect(),
                    filter: (!rules.is_empty()).then_some(NotificationConfigurationFilter {
                        key: Some(S3KeyFilter {
                            filter_rules: Some(rules),
                        }),
                    }),
                    id: Some(t.id),
                    lambda_function_arn: t.function_arn,
                }
            })
            .collect();
        Ok(S3Response::new(GetBucketNotificationConfigurationOutput {
            lambda_function_configurations: (!list.is_empty()).then_some(list),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.store
            .head_bucket(&req.input.bucket)
            .await
            .map_err(s3_err)?;
        let region = self.bucket_region(&req.input.bucket).await?;
        // us-east-1 is answered as no constraint, as S3 answers it.
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: (region != "us-east-1")
                .then(|| BucketLocationConstraint::from(region)),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.store
            .delete_bucket(&req.input.bucket)
            .await
            .map_err(s3_err)?;
        // The bucket's policy, CORS configuration and region went with it.
        if let Some(p) = &self.policies {
            p.forget(&req.input.bucket);
        }
        self.cors.forget(&req.input.bucket);
        self.regions.forget(&req.input.bucket);
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let who = access_key(&req);
        let if_absent = req
            .headers
            .get("if-none-match")
            .is_some_and(|v| v.as_bytes() == b"*");
        let if_match = match req.headers.get("if-match") {
            Some(v) => Some(
                v.to_str()
                    .map(|s| s.trim().trim_matches('"').to_owned())
                    .map_err(|_| s3_error!(InvalidArgument, "If-Match is not a valid ETag"))?,
            ),
            None => None,
        };
        let checksum = crate::s3_checksum::spec(&req.headers, req.trailing_headers.as_ref())?;
        let input = req.input;
        let content_md5 = content_md5(input.content_md5.as_deref())?;
        let tags = tags_from_header(input.tagging.as_deref())?;
        let mut headers = headers_in(headers_of!(input))?;
        version_settings!(self, input, headers);
        let (body, fault) = body_in(input.body, self.max_object_bytes);
        let info = self
            .write(Write {
                bucket: input.bucket,
                key: input.key,
                body,
                fault,
                content_md5,
                content_type: input.content_type,
                metadata: metadata_in(input.metadata),
                who,
                if_absent,
                event: None,
                tags,
                headers,
                if_match,
                checksum,
            })
            .await?;
        let mut out = PutObjectOutput {
            e_tag: Some(etag(&info.etag)),
            version_id: info.version_id.clone(),
            ..Default::default()
        };
        (out.server_side_encryption, out.ssekms_key_id) = crate::s3_sse::answer(&info.headers);
        crate::checksum_out!(out, &info.headers.checksum);
        Ok(S3Response::new(out))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let version = crate::s3_versions::version_arg(input.version_id.as_deref())?;
        // The metadata first (conditions and the range are decided on it), then exactly
        // the bytes asked for, of that same version (read again if it changed meanwhile).
        for _ in 0..3 {
            let (info, parts) = self
                .object_info(&input.bucket, &input.key, version, input.part_number)
                .await?;
            check_conditions(
                &info,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                input.if_unmodified_since.as_ref(),
            )?;
            let total = info.size;
            let (range, parts_count) =
                select(total, input.range.as_ref(), input.part_number, &parts)?;
            let bytes = range.as_ref().map(|r| ByteRange {
                first: r.start,
                last: r.end.saturating_sub(1),
            });
            let read = match version {
                Some(v) => {
                    self.store
                        .get_version_stream(&input.bucket, &input.key, v, bytes)
                        .await
                }
                None => {
                    self.store
                        .get_stream(&input.bucket, &input.key, bytes)
                        .await
                }
            };
            let obj = match read {
                Ok(o) => o,
                Err(e) => return Err(self.not_found(&input.bucket, e).await),
            };
            if obj.info.etag != info.etag || obj.info.last_modified_ms != info.last_modified_ms {
                continue;
            }
            let (content_length, content_range) = match &range {
                Some(r) => (
                    r.end - r.start,
                    Some(format!("bytes {}-{}/{total}", r.start, r.end - 1)),
                ),
                None => (total, None),
            };
            let partial = content_range.is_some();
            let output = GetObjectOutput {
                content_length: Some(content_length as i64),
                body: Some(body_out(obj.body)),
                content_range,
                parts_count,
                accept_ranges: Some("bytes".into()),
                content_type: Some(info.content_type.clone()),
                e_tag: Some(etag(&info.etag)),
                last_modified: Some(timestamp(info.last_modified_ms)),
                metadata: metadata_out(&info.metadata),
                tag_count: (!info.tags.is_empty()).then_some(info.tags.len() as i32),
                cache_control: input
                    .response_cache_control
                    .clone()
                    .or_else(|| info.headers.cache_control.clone()),
                content_disposition: input
                    .response_content_disposition
                    .clone()
                    .or_else(|| info.headers.content_disposition.clone()),
                content_encoding: input
                    .response_content_encoding
                    .clone()
                    .or_else(|| info.headers.content_encoding.clone()),
                content_language: input
                    .response_content_language
                    .clone()
                    .or_else(|| info.headers.content_language.clone()),
                expires: input
                    .response_expires
                    .clone()
                    .or_else(|| expires_out(&info.headers)),
                website_redirect_location: info.headers.website_redirect.clone(),
                storage_class: info.headers.storage_class.clone().map(StorageClass::from),
                version_id: info.version_id.clone(),
                ..Default::default()
            };
            let mut output = output;
            (
                output.object_lock_mode,
                output.object_lock_retain_until_date,
                output.object_lock_legal_hold_status,
            ) = crate::s3_lock::answer(&info.headers);
            (output.server_side_encryption, output.ssekms_key_id) =
                crate::s3_sse::answer(&info.headers);
            if !partial && checksum_wanted(input.checksum_mode.as_ref()) {
                crate::checksum_out!(output, &info.headers.checksum);
            }
            return Ok(if partial {
                S3Response::with_status(output, http::StatusCode::PARTIAL_CONTENT)
            } else {
                S3Response::new(output)
            });
        }
        Err(S3Error::with_message(
            S3ErrorCode::SlowDown,
            "the object is being rewritten; try again",
        ))
    }

    /// GetObjectAttributes: what the request names of ETag, Checksum, ObjectParts (the part
    /// sizes of a multipart object, paged by `max-parts` / `part-number-marker`; parts carry
    /// no checksums here), ObjectSize and StorageClass.
    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        let input = req.input;
        let found = match crate::s3_versions::version_arg(input.version_id.as_deref())? {
            Some(v) => self.store.head_version(&input.bucket, &input.key, v).await,
            None => self.store.head_parts(&input.bucket, &input.key).await,
        };
        let (info, parts) = match found {
            Ok(found) => found,
            Err(e) => return Err(self.not_found(&input.bucket, e).await),
        };
        // One header, comma-separated (as the SDKs send it), or repeated.
        let wants = |a: &str| {
            input
                .object_attributes
                .iter()
                .flat_map(|x| x.as_str().split(','))
                .any(|x| x.trim() == a)
        };
        let mut out = GetObjectAttributesOutput {
            last_modified: Some(timestamp(info.last_modified_ms)),
            version_id: info.version_id.clone(),
            ..Default::default()
        };
        if wants(ObjectAttributes::ETAG) {
            out.e_tag = Some(etag(&info.etag));
        }
        if wants(ObjectAttributes::OBJECT_SIZE) {
            out.object_size = Some(info.size as i64);
        }
        if wants(ObjectAttributes::STORAGE_CLASS) {
            out.storage_class = Some(StorageClass::from(
                info.headers
                    .storage_class
                    .clone()
                    .unwrap_or_else(|| StorageClass::STANDARD.to_owned()),
            ));
        }
        if wants(ObjectAttributes::CHECKSUM)
            && let Some(sum) = &info.headers.checksum
        {
            // A composite checksum of a multipart object ends in `-N`.
            let kind = if sum.1.contains('-') {
                ChecksumType::COMPOSITE
            } else {
                ChecksumType::FULL_OBJECT
            };
            let mut c = Checksum {
                checksum_type: Some(ChecksumType::from_static(kind)),
                ..Default::default()
            };
            crate::checksum_out!(c, &Some(sum.clone()));
            out.checksum = Some(c);
        }
        if wants(ObjectAttributes::OBJECT_PARTS) && !parts.is_empty() {
            let max = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
            let after = input.part_number_marker.unwrap_or(0).max(0) as u32;
            let rest: Vec<&(u32, u64)> = parts.iter().filter(|(n, _)| *n > after).collect();
            let page: Vec<ObjectPart> = rest
                .iter()
                .take(max)
                .map(|(n, size)| ObjectPart {
                    part_number: Some(*n as i32),
                    size: Some(*size as i64),
                    ..Default::default()
                })
                .collect();
            let truncated = rest.len() > page.len();
            out.object_parts = Some(GetObjectAttributesParts {
                total_parts_count: Some(parts.len() as i32),
                part_number_marker: input.part_number_marker,
                next_part_number_marker: page.last().and_then(|p| p.part_number),
                max_parts: Some(max as i32),
                is_truncated: Some(truncated),
                parts: Some(page),
            });
        }
        Ok(S3Response::new(out))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let version = crate::s3_versions::version_arg(input.version_id.as_deref())?;
        let (info, parts) = self
            .object_info(&input.bucket, &input.key, version, input.part_number)
            .await?;
        check_conditions(
            &info,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let (range, parts_count) =
            select(info.size, input.range.as_ref(), input.part_number, &parts)?;
        let (content_length, content_range) = match range {
            Some(range) => (
                range.end - range.start,
                Some(format!(
                    "bytes {}-{}/{}",
                    range.start,
                    range.end - 1,
                    info.size
                )),
            ),
            None => (info.size, None),
        };
        let partial = content_range.is_some();
        let output = HeadObjectOutput {
            content_length: Some(content_length as i64),
            content_range,
            parts_count,
            accept_ranges: Some("bytes".into()),
            content_type: Some(info.content_type.clone()),
            e_tag: Some(etag(&info.etag)),
            last_modified: Some(timestamp(info.last_modified_ms)),
            metadata: metadata_out(&info.metadata),
            cache_control: info.headers.cache_control.clone(),
            content_disposition: info.headers.content_disposition.clone(),
            content_encoding: info.headers.content_encoding.clone(),
            content_language: info.headers.content_language.clone(),
            expires: expires_out(&info.headers),
            website_redirect_location: info.headers.website_redirect.clone(),
            storage_class: info.headers.storage_class.clone().map(StorageClass::from),
            version_id: info.version_id.clone(),
            ..Default::default()
        };
        let mut output = output;
        (
            output.object_lock_mode,
            output.object_lock_retain_until_date,
            output.object_lock_legal_hold_status,
        ) = crate::s3_lock::answer(&info.headers);
        (output.server_side_encryption, output.ssekms_key_id) =
            crate::s3_sse::answer(&info.headers);
        if !partial && checksum_wanted(input.checksum_mode.as_ref()) {
            crate::checksum_out!(output, &info.headers.checksum);
        }
        let mut resp = S3Response::new(output);
        if partial {
            resp.extensions.insert(PartialContent);
        }
        Ok(resp)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        let version = crate::s3_versions::version_arg(input.version_id.as_deref())?;
        self.store
            .head_bucket(&input.bucket)
            .await
            .map_err(s3_err)?;
        let deleted = self
            .store
            .delete_version(
                &input.bucket,
                &input.key,
                version,
                input.bypass_governance_retention == Some(true),
            )
            .await
            .map_err(s3_err)?;
        Ok(S3Response::with_status(
            DeleteObjectOutput {
                delete_marker: deleted.delete_marker.then_some(true),
                version_id: deleted.version_id,
                ..Default::default()
            },
            http::StatusCode::NO_CONTENT,
        ))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let bucket = req.input.bucket;
        self.store.head_bucket(&bucket).await.map_err(s3_err)?;
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let bypass = req.input.bypass_governance_retention == Some(true);
        let mut deleted = Vec::new();
        let mut errors: Vec<Error> = req
            .extensions
            .get::<DeniedKeys>()
            .map(|d| d.0.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|key| Error {
                key: Some(key),
                code: Some("AccessDenied".into()),
                message: Some("Access Denied".into()),
                ..Default::default()
            })
            .collect();
        for o in req.input.delete.objects {
            // A key XML cannot carry names no object (none can be written) and cannot be
            // echoed as it is: it is answered percent-encoded.
            if let Err(e) = sluice_store::validate_key(&o.key) {
                errors.push(Error {
                    key: Some(crate::s3_encoding::encode(&o.key)),
                    version_id: o.version_id.clone(),
                    code: Some("InvalidArgument".into()),
                    message: Some(e.to_string()),
                });
                continue;
            }
            let version = match crate::s3_versions::version_arg(o.version_id.as_deref()) {
                Ok(v) => v,
                Err(_) => {
                    errors.push(Error {
                        key: Some(o.key),
                        version_id: o.version_id.clone(),
                        code: Some("NoSuchVersion".into()),
                        message: Some("The specified version does not exist.".into()),
                    });
                    continue;
                }
            };
            match self
                .store
                .delete_version(&bucket, &o.key, version, bypass)
                .await
            {
                Ok(d) => {
                    if !quiet {
                        // Deleting by version id echoes it; a marker made (or deleted) is
                        // said so, with the marker's id.
                        let marker_id = d.version_id.clone().filter(|_| d.delete_marker);
                        deleted.push(DeletedObject {
                            key: Some(o.key),
                            version_id: o.version_id.clone(),
                            delete_marker: d.delete_marker.then_some(true),
                            delete_marker_version_id: marker_id,
                        });
                    }
                }
                Err(e) => {
                    let e = s3_err(e);
                    errors.push(Error {
                        key: Some(o.key),
                        version_id: o.version_id.clone(),
                        code: Some(e.code().as_str().to_owned()),
                        message: e.message().map(str::to_owned),
                    });
                }
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let who = access_key(&req);
        // The copy's checksum: the algorithm the request names, else the source's
        // (computed again over the copied bytes), else CRC64NVME.
        let named = req.headers.contains_key("x-amz-checksum-algorithm");
        let mut checksum = crate::s3_checksum::spec(&req.headers, None)?;
        let input = req.input;
        let (src_bucket, src_key, src_version) = copy_source(&input.copy_source)?;
        let read = match &src_version {
            Some(v) => {
                self.store
                    .get_version_stream(&src_bucket, &src_key, v, None)
                    .await
            }
            None => self.store.get_stream(&src_bucket, &src_key, None).await,
        };
        let src = match read {
            Ok(o) => o,
            Err(e) => return Err(self.not_found(&src_bucket, e).await),
        };
        check_copy_conditions(
            &src.info,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
        )?;
        let src_info_version = src.info.version_id.clone();
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if !replace
            && src_bucket == input.bucket
            && src_key == input.key
            && src_version.is_none()
            && input.storage_class.is_none()
            && input.website_redirect_location.is_none()
        {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
            ));
        }
        let (content_type, metadata) = if replace {
            (input.content_type, metadata_in(input.metadata))
        } else {
            (
                Some(src.info.content_type.clone()),
                src.info.metadata.clone(),
            )
        };
        // The content headers follow the metadata directive; the storage class and the
        // redirect are the request's (STANDARD and none when it names none), as on S3.
        let given = headers_in(headers_of!(input))?;
        let mut headers = if replace {
            given
        } else {
            ObjectHeaders {
                website_redirect: given.website_redirect,
                storage_class: given.storage_class,
                ..src.info.headers.clone()
            }
        };
        version_settings!(self, input, headers);
        // `x-amz-tagging-directive`: the source's tags (COPY, the default) or the request's.
        let tags = match input.tagging_directive.as_ref().map(|d| d.as_str()) {
            Some(TaggingDirective::REPLACE) => tags_from_header(input.tagging.as_deref())?,
            Some(TaggingDirective::COPY) | None => src.info.tags.clone(),
            Some(other) => {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidArgument,
                    format!("Unknown tagging directive: {other}"),
                ));
            }
        };
        if !named
            && let Some(a) = src
                .info
                .headers
                .checksum
                .as_ref()
                .and_then(|(name, _)| crate::s3_checksum::Algorithm::from_name(name))
        {
            checksum = crate::s3_checksum::Spec::computed(a);
        }
        // The source's bytes stream into the new object; the copy has the source's MD5.
        let want = hex::decode(&src.info.etag)
            .ok()
            .and_then(|v| <[u8; 16]>::try_from(v).ok());
        let info = self
            .write(Write {
                bucket: input.bucket,
                key: input.key,
                body: src.body,
                fault: Arc::default(),
                content_md5: want,
                content_type,
                metadata,
                who,
                if_absent: false,
                event: Some("ObjectCreated:Copy"),
                tags,
                headers,
                if_match: None,
                checksum,
            })
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&info.etag)),
                last_modified: Some(timestamp(info.last_modified_ms)),
                ..Default::default()
            }),
            copy_source_version_id: src_info_version,
            version_id: info.version_id.clone(),
            server_side_encryption: crate::s3_sse::answer(&info.headers).0,
            ssekms_key_id: crate::s3_sse::answer(&info.headers).1,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let encode = crate::s3_encoding::url_wanted(input.encoding_type.as_ref())?;
        let after = match &input.continuation_token {
            Some(t) => Some(decode_token(t)?),
            None => input.start_after.clone(),
        };
        let page = self
            .list_page(
                &input.bucket,
                input.prefix.as_deref().unwrap_or(""),
                input.delimiter.as_deref(),
                after,
                input.max_keys,
            )
            .await?;
        let mut contents = page.contents;
        if input.fetch_owner == Some(true) {
            for o in &mut contents {
                o.owner = Some(owner());
            }
        }
        let mut out = ListObjectsV2Output {
            key_count: Some((contents.len() + page.prefixes.len()) as i32),
            next_continuation_token: page.next.as_deref().map(encode_token),
            is_truncated: Some(page.next.is_some()),
            contents: Some(contents),
            common_prefixes: Some(page.prefixes),
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_keys: Some(page.max_keys),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            ..Default::default()
        };
        if encode {
            crate::s3_encoding::objects_v2(&mut out);
        }
        Ok(S3Response::new(out))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let encode = crate::s3_encoding::url_wanted(input.encoding_type.as_ref())?;
        let page = self
            .list_page(
                &input.bucket,
                input.prefix.as_deref().unwrap_or(""),
                input.delimiter.as_deref(),
                input.marker.clone(),
                input.max_keys,
            )
            .await?;
        let next_marker = page.next.clone().filter(|_| input.delimiter.is_some());
        let mut out = ListObjectsOutput {
            is_truncated: Some(page.next.is_some()),
            next_marker,
            contents: Some(page.contents),
            common_prefixes: Some(page.prefixes),
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            marker: input.marker,
            max_keys: Some(page.max_keys),
            ..Default::default()
        };
        if encode {
            crate::s3_encoding::objects_v1(&mut out);
        }
        Ok(S3Response::new(out))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        let mut headers = headers_in(headers_of!(input))?;
        headers.checksum = crate::s3_checksum::multipart_request(
            input.checksum_algorithm.as_ref().map(|a| a.as_str()),
            input.checksum_type.as_ref().map(|t| t.as_str()),
        )?;
        let requested = headers.checksum.clone();
        version_settings!(self, input, headers);
        let (server_side_encryption, ssekms_key_id) = crate::s3_sse::answer(&headers);
        let id = self
            .store
            .create_multipart(
                &input.bucket,
                &input.key,
                PutOptions {
                    content_type: input.content_type,
                    owner: None,
                    metadata: metadata_in(input.metadata),
                    if_absent: false,
                    content_md5: None,
                    created_event: None,
                    tags: tags_from_header(input.tagging.as_deref())?,
                    headers,
                    if_match: None,
                    body_check: None,
                    started_ms: None,
                },
            )
            .await
            .map_err(s3_err)?;
        let (checksum_algorithm, checksum_type) = match requested {
            Some((a, t)) => (
                Some(ChecksumAlgorithm::from(a)),
                Some(ChecksumType::from(t)),
            ),
            None => (None, None),
        };
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            checksum_algorithm,
            checksum_type,
            server_side_encryption,
            ssekms_key_id,
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        // A part's checksum is verified and kept when the request names one (parts get no
        // default: the completed object's checksum is made of its parts').
        let checksum = crate::s3_checksum::spec(&req.headers, req.trailing_headers.as_ref())?;
        let input = req.input;
        self.check_upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        let part = part_number(input.part_number)?;
        let content_md5 = content_md5(input.content_md5.as_deref())?;
        let (body, fault) = body_in(input.body, self.max_object_bytes);
        let (body, check) = if checksum.named() {
            let (body, check) = crate::s3_checksum::hashing(body, checksum);
            (body, Some(check))
        } else {
            (body, None)
        };
        let e = self
            .store
            .upload_part_stream(&input.upload_id, part, body, content_md5, check.clone())
            .await
            .map_err(|e| fault.or(s3_err(e)))?;
        let mut out = UploadPartOutput {
            e_tag: Some(etag(&e)),
            ..Default::default()
        };
        // The check is pure: run again, it gives the value the store kept.
        let sum = check.and_then(|c| (c.0)().ok().flatten());
        crate::checksum_out!(out, &sum);
        Ok(S3Response::new(out))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        self.check_upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        let part = part_number(input.part_number)?;
        let (src_bucket, src_key, src_version) = copy_source(&input.copy_source)?;
        let range = input
            .copy_source_range
            .as_deref()
            .map(parse_copy_range)
            .transpose()?;
        let conditions = (
            input.copy_source_if_match,
            input.copy_source_if_none_match,
            input.copy_source_if_modified_since,
            input.copy_source_if_unmodified_since,
        );
        let check = |info: &ObjectInfo| {
            check_copy_conditions(
                info,
                conditions.0.as_ref(),
                conditions.1.as_ref(),
                conditions.2.as_ref(),
                conditions.3.as_ref(),
            )
            .map_err(|e| {
                StoreError::PreconditionFailed(
                    e.message()
                        .unwrap_or("At least one of the pre-conditions you specified did not hold")
                        .to_owned(),
                )
            })
        };
        let source = sluice_store::CopySource {
            bucket: &src_bucket,
            key: &src_key,
            version_id: src_version.as_deref(),
            range,
        };
        let copied = match self
            .store
            .upload_part_copy(&input.upload_id, part, source, &check)
            .await
        {
            Ok(p) => p,
            Err(e) => return Err(self.not_found(&src_bucket, e).await),
        };
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag(&copied.etag)),
                last_modified: Some(timestamp(copied.last_modified_ms)),
                ..Default::default()
            }),
            copy_source_version_id: src_version,
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let encode = crate::s3_encoding::url_wanted(input.encoding_type.as_ref())?;
        let max = match input.max_uploads {
            None => 1000,
            Some(n) if n < 0 => {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidArgument,
                    "Argument max-uploads must be an integer between 0 and 2147483647",
                ));
            }
            Some(n) => n.min(1000),
        };
        let want = max as usize;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.as_deref().filter(|d| !d.is_empty());
        // The upload-id-marker counts only with a key-marker.
        let mut cursor = input
            .key_marker
            .as_ref()
            .filter(|k| !k.is_empty())
            .map(|k| UploadMarker {
                key: k.clone(),
                upload_id: input.upload_id_marker.clone().filter(|u| !u.is_empty()),
            });
        // A marker inside a common prefix means that prefix was listed already.
        if let (Some(d), Some(c)) = (delimiter, cursor.as_mut())
            && let Some(cp) = fold(&c.key, &prefix, d)
        {
            *c = UploadMarker {
                key: format!("{cp}\u{10FFFF}"),
                upload_id: None,
            };
        }
        let mut uploads = Vec::new();
        let mut prefixes: Vec<CommonPrefix> = Vec::new();
        let mut last: Option<UploadMarker> = None;
        let mut truncated = false;
        'pages: loop {
            let batch = self
                .store
                .list_multipart_uploads(&input.bucket, &prefix, cursor.clone(), 1000)
                .await
                .map_err(s3_err)?;
            if batch.is_empty() {
                break;
            }
            for m in batch {
                if uploads.len() + prefixes.len() == want {
                    truncated = true;
                    break 'pages;
                }
                if let Some(cp) = delimiter.and_then(|d| fold(&m.key, &prefix, d)) {
                    // Skip every upload under this common prefix.
                    cursor = Some(UploadMarker {
                        key: format!("{cp}\u{10FFFF}"),
                        upload_id: None,
                    });
                    last = Some(UploadMarker {
                        key: cp.to_owned(),
                        upload_id: None,
                    });
                    prefixes.push(CommonPrefix {
                        prefix: Some(cp.to_owned()),
                    });
                    continue 'pages;
                }
                let marker = UploadMarker {
                    key: m.key.clone(),
                    upload_id: Some(m.upload_id.clone()),
                };
                cursor = Some(marker.clone());
                last = Some(marker);
                uploads.push(MultipartUpload {
                    key: Some(m.key),
                    upload_id: Some(m.upload_id),
                    initiated: Some(timestamp(m.created_ms)),
                    storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                    owner: Some(owner()),
                    initiator: Some(Initiator {
                        display_name: Some("sluice".into()),
                        id: Some("sluice".into()),
                    }),
                    ..Default::default()
                });
            }
        }
        let (next_key_marker, next_upload_id_marker) = match last {
            Some(m) if truncated => (Some(m.key), m.upload_id),
            _ => (None, None),
        };
        let mut out = ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            next_key_marker,
            next_upload_id_marker,
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_uploads: Some(max),
            is_truncated: Some(truncated),
            uploads: Some(uploads),
            common_prefixes: Some(prefixes),
            ..Default::default()
        };
        if encode {
            crate::s3_encoding::uploads(&mut out);
        }
        Ok(S3Response::new(out))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        self.check_upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        let marker = input
            .part_number_marker
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(0);
        let max = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
        let all: Vec<_> = self
            .store
            .list_parts(&input.upload_id)
            .await
            .map_err(s3_err)?
            .into_iter()
            .filter(|p| p.part_number > marker)
            .collect();
        let truncated = all.len() > max;
        let page: Vec<_> = all.into_iter().take(max).collect();
        let next = if truncated {
            page.last().map(|p| p.part_number as i32)
        } else {
            None
        };
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            is_truncated: Some(truncated),
            next_part_number_marker: next,
            max_parts: Some(max as i32),
            parts: Some(
                page.into_iter()
                    .map(|p| {
                        let mut part = Part {
                            part_number: Some(p.part_number as i32),
                            size: Some(p.size as i64),
                            e_tag: Some(etag(&p.etag)),
                            last_modified: Some(timestamp(p.last_modified_ms)),
                            ..Default::default()
                        };
                        crate::checksum_out!(part, &p.checksum);
                        part
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let who = access_key(&req);
        let headers = req.headers.clone();
        let mut input = req.input;
        let upload = self
            .check_upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        let listed_sums = completion_part_checksums(input.multipart_upload.as_ref());
        let parts = completion_parts(input.multipart_upload.take())?;
        // What the part list alone shows is refused now, with its own status, as S3 does.
        let size = self
            .store
            .check_completion(&input.upload_id, &parts)
            .await
            .map_err(s3_err)?;
        let sum = self
            .complete_checksum(
                &input.upload_id,
                upload.checksum.as_ref(),
                &parts,
                &listed_sums,
                &headers,
            )
            .await?;
        // The rest (assembling the parts: for gigabytes longer than clients wait for a first
        // byte) runs, for a large object, while s3s answers 200 and sends whitespace every
        // 100 ms, then the result's XML — or an error's XML in that 200, as S3 documents for
        // CompleteMultipartUpload and the SDKs handle.
        let this = self.clone();
        let work = async move {
            let (bucket, key, e_tag, version_id) =
                match this.enqueue_target(&input.bucket, &input.key) {
                    // Into the uploads prefix: object, record and status row in one transaction.
                    Some(hook) => {
                        let done = hook
                            .sink
                            .complete_multipart(MultipartCompletion {
                                multipart_id: input.upload_id,
                                parts,
                                user_sub: s3_user_sub(&who),
                                filename: upload_filename(&input.key),
                                request_id: uuid::Uuid::new_v4().to_string(),
                                stream: hook.stream.clone(),
                                partition_key: uuid::Uuid::new_v4().to_string(),
                            })
                            .await
                            .map_err(upload_err)?;
                        (done.upload.bucket, done.upload.key, done.etag, None)
                    }
                    None => {
                        let info = this
                            .store
                            .complete_multipart(&input.upload_id, parts)
                            .await
                            .map_err(s3_err)?;
                        (info.bucket, info.key, info.etag, info.version_id)
                    }
                };
            let mut out = CompleteMultipartUploadOutput {
                location: Some(format!("/{bucket}/{key}")),
                bucket: Some(bucket),
                key: Some(key),
                e_tag: Some(etag(&e_tag)),
                version_id,
                ..Default::default()
            };
            crate::checksum_out!(out, &sum);
            Ok(out)
        };
        if size < KEEP_ALIVE_COMPLETION_BYTES {
            return Ok(S3Response::new(work.await?));
        }
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            future: Some(Box::pin(work)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.check_upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        self.store
            .abort_multipart(&input.upload_id)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::with_status(
            AbortMultipartUploadOutput::default(),
            http::StatusCode::NO_CONTENT,
        ))
    }
}

struct ListPage {
    contents: Vec<Object>,
    prefixes: Vec<CommonPrefix>,
    /// Where the next page starts (exclusive), when there is one.
    next: Option<String>,
    max_keys: i32,
}

impl S3Adapter {
    /// One page of a listing: keys under `prefix` after `after`, with keys that share a
    /// delimited part after the prefix folded into common prefixes.
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<String>,
        max_keys: Option<i32>,
    ) -> S3Result<ListPage> {
        let max_keys = max_keys.unwrap_or(1000).clamp(0, 1000);
        let want = max_keys as usize;
        let mut contents = Vec::new();
        let mut prefixes: Vec<CommonPrefix> = Vec::new();
        let mut cursor = after;
        let mut next = None;
        self.store.head_bucket(bucket).await.map_err(s3_err)?;
        'pages: loop {
            let batch = self
                .store
                .list(bucket, prefix, cursor.as_deref(), 1000)
                .await
                .map_err(s3_err)?;
            if batch.is_empty() {
                break;
            }
            for obj in batch {
                let folded = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                    obj.key[prefix.len()..]
                        .find(d)
                        .map(|i| obj.key[..prefix.len() + i + d.len()].to_owned())
                });
                if contents.len() + prefixes.len() == want {
                    next = cursor.clone();
                    break 'pages;
                }
                match folded {
                    Some(cp) => {
                        // Skip every key under this common prefix.
                        cursor = Some(format!("{cp}\u{10FFFF}"));
                        prefixes.push(CommonPrefix { prefix: Some(cp) });
                        continue 'pages;
                    }
                    None => {
                        cursor = Some(obj.key.clone());
                        contents.push(Object {
                            key: Some(obj.key.clone()),
                            size: Some(obj.size as i64),
                            e_tag: Some(etag(&obj.etag)),
                            last_modified: Some(timestamp(obj.last_modified_ms)),
                            storage_class: Some(match &obj.headers.storage_class {
                                Some(c) => ObjectStorageClass::from(c.clone()),
                                None => {
                                    ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)
                                }
                            }),
                            ..Default::default()
                        });
                    }
                }
            }
        }
        Ok(ListPage {
            contents,
            prefixes,
            next,
            max_keys,
        })
    }

    /// The canned ACL a request sets on a bucket or an object version, by the bucket's
    /// object ownership and public access block ([`crate::s3_acl::decide`]). Read only when
    /// the request names an ACL.
    async fn acl_for(
        &self,
        bucket: &str,
        acl: Option<&str>,
        grants: bool,
        for_bucket: bool,
    ) -> S3Result<Option<String>> {
        if acl.is_none() && !grants {
            return Ok(None);
        }
        let ownership = self.ownership(bucket).await?;
        let block = self
            .config::<PublicAccessBlockConfiguration>(bucket, PUBLIC_ACCESS_BLOCK)
            .await?
            .is_some_and(|c| c.block_public_acls == Some(true));
        crate::s3_acl::decide(&ownership, acl, grants, block, for_bucket)
    }

    /// [`acl_for`](Self::acl_for) for PutBucketAcl / PutObjectAcl, which must name an
    /// ACL or grants.
    async fn acl_put(
        &self,
        bucket: &str,
        (acl, grants): (Option<String>, bool),
        for_bucket: bool,
    ) -> S3Result<Option<String>> {
        if acl.is_none() && !grants {
            return Err(s3_error!(
                MalformedACLError,
                "The request names no canned ACL and no grants"
            ));
        }
        self.acl_for(bucket, acl.as_deref(), grants, for_bucket)
            .await
    }

    /// The bucket's object ownership (`BucketOwnerEnforced` when none is set).
    async fn ownership(&self, bucket: &str) -> S3Result<String> {
        Ok(self
            .config::<String>(bucket, OWNERSHIP)
            .await?
            .unwrap_or_else(|| ObjectOwnership::BUCKET_OWNER_ENFORCED.to_owned()))
    }

    /// The encryption a write gives its version ([`crate::s3_sse::for_write`]).
    async fn sse_for_write(
        &self,
        bucket: &str,
        algorithm: Option<&ServerSideEncryption>,
        kms_key: Option<&str>,
    ) -> S3Result<crate::s3_sse::Sse> {
        let default = self
            .encryptions
            .get(&self.store, bucket)
            .await
            .map_err(s3_err)?;
        crate::s3_sse::for_write(default, algorithm, kms_key)
    }

    /// The lock a write gives its version ([`crate::s3_lock::for_write`]).
    async fn lock_for_write(
        &self,
        bucket: &str,
        mode: Option<&ObjectLockMode>,
        until: Option<&Timestamp>,
        hold: Option<&ObjectLockLegalHoldStatus>,
    ) -> S3Result<(Option<(String, i64)>, bool)> {
        let cfg = self.locks.get(&self.store, bucket).await.map_err(s3_err)?;
        crate::s3_lock::for_write(cfg.as_deref(), mode, until, hold, now_ms())
    }

    /// Changes the object lock of a version (PutObjectRetention, PutObjectLegalHold):
    /// `InvalidRequest` unless the bucket has object lock, as S3 answers.
    async fn update_lock(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        update: sluice_store::HeadersUpdate,
    ) -> S3Result<()> {
        let version = crate::s3_versions::version_arg(version_id)?;
        self.store.head_bucket(bucket).await.map_err(s3_err)?;
        if self
            .locks
            .get(&self.store, bucket)
            .await
            .map_err(s3_err)?
            .is_none()
        {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "Bucket is missing Object Lock Configuration",
            ));
        }
        match self
            .store
            .update_headers(bucket, key, version, update)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.not_found(bucket, e).await),
        }
    }

    /// The metadata of an object's current version or of the version a request names.
    async fn version_info(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<ObjectInfo> {
        let found = match crate::s3_versions::version_arg(version_id)? {
            Some(v) => self
                .store
                .head_version(bucket, key, v)
                .await
                .map(|(i, _)| i),
            None => self.store.head(bucket, key).await,
        };
        match found {
            Ok(info) => Ok(info),
            Err(e) => Err(self.not_found(bucket, e).await),
        }
    }

    /// A missing object in a missing bucket is `NoSuchBucket`, as S3 answers.
    /// An object's metadata for GetObject / HeadObject, with its parts' sizes when a part
    /// is asked for; a missing object or bucket is the error S3 gives.
    async fn object_info(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
        part_number: Option<i32>,
    ) -> S3Result<(ObjectInfo, Vec<(u32, u64)>)> {
        let found = match (version, part_number) {
            (Some(v), _) => self.store.head_version(bucket, key, v).await,
            (None, Some(_)) => self.store.head_parts(bucket, key).await,
            (None, None) => self.store.head(bucket, key).await.map(|i| (i, Vec::new())),
        };
        match found {
            Ok(found) => Ok(found),
            Err(e) => {
                let e = self.not_found(bucket, e).await;
                Err(crate::s3_versions::mark_if_deleted(self.store.as_ref(), bucket, key, e).await)
            }
        }
    }

    /// The completed object's checksum, from its parts' (see
    /// [`crate::s3_checksum::multipart_checksum`]), checked against what the request says
    /// of each part and of the whole, then kept with the upload for its completion. Full
    /// object (CRCs combined) when the request says `x-amz-checksum-type: FULL_OBJECT` or
    /// the algorithm is CRC64NVME; composite otherwise.
    async fn complete_checksum(
        &self,
        upload_id: &str,
        requested: Option<&(String, String)>,
        parts: &[(u32, String)],
        listed_sums: &[(u32, (String, String))],
        headers: &http::HeaderMap,
    ) -> S3Result<Option<(String, String)>> {
        let stored = self.store.list_parts(upload_id).await.map_err(s3_err)?;
        let find = |n: u32| stored.iter().find(|p| p.part_number == n);
        for (n, sum) in listed_sums {
            if find(*n).and_then(|p| p.checksum.as_ref()) != Some(sum) {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidPart,
                    format!(
                        "The {} you specified for part {n} did not match the part's uploaded checksum.",
                        sum.0
                    ),
                ));
            }
        }
        let chosen: Vec<(Option<&(String, String)>, u64)> = parts
            .iter()
            .map(|(n, _)| find(*n).map_or((None, 0), |p| (p.checksum.as_ref(), p.size)))
            .collect();
        let full = requested.is_some_and(|(_, t)| t == ChecksumType::FULL_OBJECT)
            || headers
                .get("x-amz-checksum-type")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"FULL_OBJECT"));
        let sum = crate::s3_checksum::multipart_checksum(&chosen, full);
        // An upload created for an algorithm completes only from parts that carry it.
        if let Some((algorithm, _)) = requested
            && sum.as_ref().is_none_or(|(a, _)| a != algorithm)
        {
            let n = parts
                .iter()
                .find(|(n, _)| {
                    find(*n)
                        .and_then(|p| p.checksum.as_ref())
                        .is_none_or(|(a, _)| a != algorithm)
                })
                .map_or(0, |(n, _)| *n);
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                format!(
                    "The upload was created using the {algorithm} checksum algorithm. The complete request referenced part {n}, which was uploaded without a {algorithm} checksum."
                ),
            ));
        }
        if let Some((algorithm, value)) = &sum
            && let Some(want) = crate::s3_checksum::header_value(headers, algorithm)
            && want.trim() != value
        {
            return Err(S3Error::with_message(
                S3ErrorCode::BadDigest,
                format!("The {algorithm} you specified did not match the calculated checksum."),
            ));
        }
        // Set whenever the upload holds one: its request, until now.
        if sum.is_some() || requested.is_some() {
            self.store
                .set_multipart_checksum(upload_id, sum.clone())
                .await
                .map_err(s3_err)?;
        }
        Ok(sum)
    }

    async fn not_found(&self, bucket: &str, e: StoreError) -> S3Error {
        if matches!(e, StoreError::NoSuchKey { .. })
            && let Err(b @ StoreError::NoSuchBucket(_)) = self.store.head_bucket(bucket).await
        {
            return s3_err(b);
        }
        s3_err(e)
    }

    /// A multipart request must name the bucket and key its upload was created for.
    async fn check_upload(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
    ) -> S3Result<sluice_store::MultipartInfo> {
        let m = self.store.multipart(upload_id).await.map_err(s3_err)?;
        if m.bucket != bucket || m.key != key {
            return Err(S3Error::with_message(
                S3ErrorCode::NoSuchUpload,
                format!("upload {upload_id} is not an upload of {bucket}/{key}"),
            ));
        }
        Ok(m)
    }
}

pub(crate) fn encode_token(after: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after.as_bytes())
}

pub(crate) fn decode_token(t: &str) -> S3Result<String> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            S3Error::with_message(S3ErrorCode::InvalidArgument, "invalid continuation token")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_ranges_are_exactly_first_last() {
        assert_eq!(
            parse_copy_range("bytes=0-9").expect("valid"),
            ByteRange { first: 0, last: 9 }
        );
        assert_eq!(
            parse_copy_range("bytes=7-3").expect("checked against the source later"),
            ByteRange { first: 7, last: 3 }
        );
        for bad in [
            "bytes=0-",
            "bytes=-5",
            "0-5",
            "bytes=+1-2",
            "bytes=1-2,3-4",
            "bytes=1",
            "bytes=99999999999999999999-1",
            "",
        ] {
            let e = parse_copy_range(bad).expect_err(bad);
            assert_eq!(e.code(), &S3ErrorCode::InvalidArgument, "{bad}");
        }
    }

    /// Found by fuzzing (`s3_values`, input `bytes=-500`): a suffix range of an empty
    /// object selected the empty range `0..0`, whose `Content-Range` GetObject and HeadObject
    /// wrote as `bytes 0-{0 - 1}/0`: an overflow (a panic with overflow checks, else
    /// `bytes 0-18446744073709551615/0` with a 206).
    #[test]
    fn a_suffix_range_of_an_empty_object_selects_the_whole_object() {
        let range = Range::parse("bytes=-500").expect("range");
        assert_eq!(
            select(0, Some(&range), None, &[]).expect("satisfiable"),
            (None, None)
        );
        assert_eq!(
            select(3, Some(&range), None, &[]).expect("whole object"),
            (Some(0..3), None)
        );
        let code = |r: S3Result<_>| r.expect_err("error").code().as_str().to_owned();
        let from_start = Range::parse("bytes=0-").expect("range");
        assert_eq!(
            code(select(0, Some(&from_start), None, &[])),
            "InvalidRange"
        );
    }

    #[test]
    fn keys_fold_into_common_prefixes() {
        assert_eq!(fold("a/b/c", "", "/"), Some("a/"));
        assert_eq!(fold("a/b/c", "a/", "/"), Some("a/b/"));
        assert_eq!(fold("a/b", "a/", "/"), None);
        assert_eq!(fold("x--y--z", "x", "--"), Some("x--"));
        assert_eq!(fold("other", "a/", "/"), None);
    }

    #[test]
    fn reads_select_ranges_and_parts() {
        let parts = [(1, 10), (2, 5), (4, 3)];
        let range = |s| Range::parse(s).expect("range");
        assert_eq!(select(18, None, None, &parts).expect("all"), (None, None));
        assert_eq!(
            select(18, Some(&range("bytes=2-4")), None, &[]).expect("range"),
            (Some(2..5), None)
        );
        assert_eq!(
            select(18, None, Some(2), &parts).expect("part 2"),
            (Some(10..15), Some(3))
        );
        assert_eq!(
            select(18, None, Some(4), &parts).expect("part 4"),
            (Some(15..18), Some(3))
        );
        let code = |r: S3Result<_>| r.expect_err("error").code().as_str().to_owned();
        assert_eq!(code(select(18, None, Some(3), &parts)), "InvalidPartNumber");
        assert_eq!(code(select(18, None, Some(0), &parts)), "InvalidArgument");
        assert_eq!(
            code(select(18, Some(&range("bytes=0-1")), Some(1), &parts)),
            "InvalidRequest"
        );
        assert_eq!(
            code(select(18, Some(&range("bytes=18-")), None, &[])),
            "InvalidRange"
        );
        // An object not assembled from parts is its own part 1.
        assert_eq!(
            select(8, None, Some(1), &[]).expect("part 1"),
            (Some(0..8), None)
        );
        assert_eq!(select(0, None, Some(1), &[]).expect("empty"), (None, None));
        assert_eq!(code(select(8, None, Some(2), &[])), "InvalidPartNumber");
    }
}
