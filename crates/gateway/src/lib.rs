//! The upload API — what API Gateway, its JWT authorizer and the seed's upload Lambda are in
//! the AWS version: `POST /uploads`, upload status and contents, `GET /healthz`.
//!
//! Handlers only run for requests that carry a valid bearer token: they take an
//! [`Authenticated`] argument, which only the authorizer can build. This crate knows HTTP
//! but no AWS wire format.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::{HeaderMap, HeaderValue, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sluice_identity::{TokenError, VerifiedClaims, Verifier};
use sluice_meta::now_ms;
use sluice_store::ObjectStore;
use sluice_uploads::{
    Staged, Upload, UploadError, UploadLedger, UploadMeta, UploadSink, UploadStatus,
};

mod cache;
mod error;
pub mod live;
pub mod oidc;
mod openapi;
pub mod quota;
mod request_id;
pub use cache::{CachingAuthorizer, RevokingAuthorizer};
pub use error::GatewayError;

/// Default largest JSON request body: 10 MiB, API Gateway's payload limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Default largest streamed upload (raw body or multipart form): 5 GiB, S3's largest
/// single PUT.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// Checks bearer tokens. [`Verifier`] is the implementation for a Cognito-style issuer.
pub trait Authorizer: Send + Sync + 'static {
    fn authorize(&self, token: &str) -> Result<VerifiedClaims, TokenError>;
}

impl Authorizer for Verifier {
    fn authorize(&self, token: &str) -> Result<VerifiedClaims, TokenError> {
        self.verify(token, now_secs())
    }
}

impl Authorizer for sluice_identity::PoolVerifier {
    fn authorize(&self, token: &str) -> Result<VerifiedClaims, TokenError> {
        self.verify(token, now_secs())
    }
}

pub(crate) fn now_secs() -> i64 {
    sluice_meta::now_ms() / 1000
}

/// Everything the API needs, shared by every request: cloned once or twice per request (by
/// axum's `State` and the middleware), so one reference count, not a copy of each part.
#[derive(Clone)]
pub struct Gateway(Arc<GatewayConfig>);

impl From<GatewayConfig> for Gateway {
    fn from(config: GatewayConfig) -> Self {
        Gateway(Arc::new(config))
    }
}

impl std::ops::Deref for Gateway {
    type Target = GatewayConfig;
    fn deref(&self) -> &GatewayConfig {
        &self.0
    }
}

/// The parts of a [`Gateway`].
pub struct GatewayConfig {
    pub authorizer: Arc<dyn Authorizer>,
    pub sink: Arc<dyn UploadSink>,
    pub ledger: Arc<dyn UploadLedger>,
    pub store: Arc<dyn ObjectStore>,
    /// Bucket uploads go to.
    pub bucket: String,
    /// Stream upload records go to.
    pub stream: String,
    /// Largest JSON upload body (parsed whole, so read into memory).
    pub max_body_bytes: usize,
    /// Largest raw-body or multipart upload (streamed to disk, never held whole).
    pub max_upload_bytes: u64,
    /// Per-user upload limits.
    pub quota: Arc<quota::Quota>,
    /// Turns `true` when the server shuts down: long-lived answers (the live view) end, so
    /// that a graceful shutdown does not wait for them.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The request id of the request being served: in every response's `x-request-id`, and
/// the `requestId` of the stream record an upload produces.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Proof that the request carried a valid token. Only the authorizer builds it.
#[derive(Debug, Clone)]
pub struct Authenticated {
    claims: VerifiedClaims,
    /// The bearer token itself, checked again by long-lived answers (the live view).
    token: String,
}

impl Authenticated {
    pub fn sub(&self) -> &str {
        &self.claims.sub
    }
    pub fn claims(&self) -> &VerifiedClaims {
        &self.claims
    }
    pub(crate) fn token(&self) -> &str {
        &self.token
    }
}

// The counters every request of the upload path touches, looked up in the recorder once
// (at their first use, which is after `sluice serve` installed it) rather than per request.
static AUTH_OK: std::sync::LazyLock<metrics::Counter> = std::sync::LazyLock::new(
    || metrics::counter!("sluice_auth_total", "edge" => "api", "result" => "success", "reason" => "ok"),
);
static UPLOADS: std::sync::LazyLock<metrics::Counter> =
    std::sync::LazyLock::new(|| metrics::counter!("sluice_uploads_total", "via" => "api"));
static UPLOAD_BYTES: std::sync::LazyLock<metrics::Counter> =
    std::sync::LazyLock::new(|| metrics::counter!("sluice_upload_bytes_total", "via" => "api"));

impl FromRequestParts<Gateway> for Authenticated {
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, Self::Rejection> {
        let verdict = Self::check(parts, gw);
        match &verdict {
            Ok(_) => AUTH_OK.increment(1),
            Err(e) => {
                let reason = match e {
                    GatewayError::InvalidToken(e) => e.reason(),
                    GatewayError::Unauthorized(_) => "no_bearer_token",
                    _ => "bad_request",
                };
                metrics::counter!("sluice_auth_total", "edge" => "api", "result" => "failure", "reason" => reason)
                    .increment(1);
            }
        }
        verdict
    }
}

impl Authenticated {
    /// The bearer token's verdict (counted by the caller in `sluice_auth_total`).
    fn check(parts: &Parts, gw: &Gateway) -> Result<Self, GatewayError> {
        Self::from_headers(&parts.headers, gw.authorizer.as_ref())
    }

    /// Checks the request's `Authorization: Bearer` token with `authorizer`: what every
    /// route of the API does before its handler runs (other routers on the API listener,
    /// such as the operators' API, use it too).
    pub fn from_headers(
        headers: &HeaderMap,
        authorizer: &dyn Authorizer,
    ) -> Result<Self, GatewayError> {
        let mut all = headers.get_all(header::AUTHORIZATION).iter();
        let header = all
            .next()
            .ok_or(GatewayError::Unauthorized("missing Authorization header"))?;
        if all.next().is_some() {
            // Two credentials: which one a proxy in front would have checked is anyone's
            // guess, so neither is used.
            return Err(GatewayError::BadRequest(
                "the request has more than one Authorization header".into(),
            ));
        }
        let value = header
            .to_str()
            .map_err(|_| GatewayError::Unauthorized("Authorization header is not ASCII"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(GatewayError::Unauthorized(
                "Authorization header is not 'Bearer <token>'",
            ))?;
        let claims = authorizer
            .authorize(token)
            .map_err(GatewayError::InvalidToken)?;
        Ok(Authenticated {
            claims,
            token: token.to_owned(),
        })
    }
}

/// A query string parsed into `T`; one that does not parse (a repeated field, say) is a 400
/// in the API's own error body, where axum's `Query` would answer in plain text.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|e| GatewayError::BadRequest(format!("bad query string: {e}")))
    }
}

/// The routes [`router`] serves (the OpenAPI document is held to them in its tests).
pub(crate) const ROUTES: &[&str] = &[
    "/uploads",
    "/uploads/{id}",
    "/uploads/{id}/content",
    "/uploads/{id}/processed",
    "/healthz",
    "/openapi.json",
    "/uploads/events",
];

/// `GET /healthz` alone, as [`router`] serves it: for a process that serves health,
/// readiness and metrics without the upload API.
pub fn health_router() -> Router {
    Router::new().route(ROUTES[4], get(healthz))
}

pub fn router(gw: Gateway) -> Router {
    let limit = gw.max_body_bytes;
    Router::new()
        .route(ROUTES[0], post(create_upload).get(live::list_uploads))
        .route(ROUTES[1], get(get_upload))
        .route(ROUTES[2], get(get_content))
        .route(ROUTES[3], get(get_processed))
        .route(ROUTES[4], get(healthz))
        .route(ROUTES[5], get(openapi_json))
        .route(ROUTES[6], get(live::upload_events))
        .fallback(|| async { GatewayError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gw)
        .layer(request_id::RequestIds)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(openapi::Health {
        status: "ok".into(),
    })
}

/// The OpenAPI 3.1 document of this API (see [`openapi`]), built once.
async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| {
        serde_json::to_string(&openapi::document()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot render the OpenAPI document");
            String::from("{}")
        })
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.clone(),
    )
        .into_response()
}

use openapi::UploadBody;

/// `?filename=` of a raw-body upload.
#[derive(Deserialize)]
struct RawUploadParams {
    filename: Option<String>,
}

async fn create_upload(
    State(gw): State<Gateway>,
    auth: Authenticated,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    ApiQuery(params): ApiQuery<RawUploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    // Checked in this order: token (above, before any byte of the body is read), the
    // user's upload rate, media type, size, the user's daily and stored bytes, then the
    // body itself.
    gw.quota.admit(auth.sub())?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let kind = match media.as_str() {
        "application/json" => BodyKind::Json,
        "application/octet-stream" => BodyKind::Raw,
        "multipart/form-data" => BodyKind::Form,
        _ => {
            return Err(GatewayError::UnsupportedMediaType(format!(
                "expected Content-Type application/json (the seed's {{\"filename\",\"content\"}}), \
                 application/octet-stream (raw bytes, ?filename=) or multipart/form-data \
                 (a `file` part), got {content_type:?}"
            )));
        }
    };
    let limit = match kind {
        BodyKind::Json => gw.max_body_bytes as u64,
        BodyKind::Raw | BodyKind::Form => gw.max_upload_bytes,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit.saturating_add(DRAIN_MAX_BYTES as u64)) {
        // Far too large to be worth reading: answer now and let the connection close.
        return Err(GatewayError::TooLarge(limit));
    }
    // Only a raw body's length is the upload's size; a JSON or multipart body's includes its
    // wrapping (checked below once the content's size is known).
    let declared = match kind {
        BodyKind::Raw => declared.unwrap_or(0),
        BodyKind::Json | BodyKind::Form => 0,
    };
    gw.quota
        .check_upload(gw.ledger.as_ref(), gw.store.as_ref(), auth.sub(), declared)
        .await?;
    let meta = |filename: String, content_type: &str| UploadMeta {
        user_sub: auth.sub().to_owned(),
        bucket: gw.bucket.clone(),
        key: format!("uploads/{filename}"),
        filename,
        content_type: content_type.to_owned(),
        metadata: Default::default(),
        tags: Vec::new(),
        headers: Default::default(),
        request_id: request_id.clone(),
        stream: gw.stream.clone(),
        partition_key: uuid::Uuid::new_v4().to_string(),
    };
    let upload = match kind {
        BodyKind::Json => {
            let bytes = read_limited(body, gw.max_body_bytes).await?;
            let parsed: UploadBody = serde_json::from_slice(&bytes)
                .map_err(|e| GatewayError::BadRequest(format!("malformed JSON body: {e}")))?;
            // The seed's defaults: `file-<ms>.txt` and "empty" (its `content || "empty"`
            // also turns an empty string into "empty").
            let filename = parsed
                .filename
                .unwrap_or_else(|| format!("file-{}.txt", now_ms()));
            let filename = validate_filename(&filename)?;
            let content = match parsed.content {
                Some(c) if !c.is_empty() => c,
                _ => "empty".to_owned(),
            };
            gw.quota
                .check_upload(
                    gw.ledger.as_ref(),
                    gw.store.as_ref(),
                    auth.sub(),
                    content.len() as u64,
                )
                .await?;
            gw.sink
                .commit(meta(filename, "text/plain").with_body(bytes::Bytes::from(content)))
                .await?
        }
        BodyKind::Raw => {
            // The name is known before the body: a bad one is refused unread.
            let filename = params
                .filename
                .unwrap_or_else(|| format!("file-{}.bin", now_ms()));
            let filename = validate_filename(&filename)?;
            let body = LimitedBody::new(body, limit);
            let over = body.over.clone();
            let staged = gw
                .sink
                .stage(Box::pin(body))
                .await
                .map_err(|e| body_error(e, &over, limit))?;
            gw.quota
                .check_upload(
                    gw.ledger.as_ref(),
                    gw.store.as_ref(),
                    auth.sub(),
                    staged.size(),
                )
                .await?;
            gw.sink
                .commit_staged(meta(filename, "application/octet-stream"), staged)
                .await?
        }
        BodyKind::Form => {
            let (filename, part_type, staged) = read_form(&gw, content_type, body, limit).await?;
            gw.quota
                .check_upload(
                    gw.ledger.as_ref(),
                    gw.store.as_ref(),
                    auth.sub(),
                    staged.size(),
                )
                .await?;
            gw.sink
                .commit_staged(meta(filename, &part_type), staged)
                .await?
        }
    };
    UPLOADS.increment(1);
    UPLOAD_BYTES.increment(upload.size);
    Ok(axum::Json(openapi::UploadAccepted {
        message: "Uploaded and queued for processing".into(),
        s3: openapi::S3Location {
            bucket: upload.bucket,
            key: upload.key,
        },
        upload_id: upload.id,
        request_id,
    })
    .into_response())
}

enum BodyKind {
    Json,
    Raw,
    Form,
}

/// The error of a streamed body that failed: too large (the limit was passed), or the
/// client's body itself broke off, or the store failed.
fn body_error(e: UploadError, over: &AtomicBool, limit: u64) -> GatewayError {
    if over.load(Ordering::Relaxed) {
        return GatewayError::TooLarge(limit);
    }
    match e {
        UploadError::Store(sluice_store::StoreError::Io(io))
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<BodyReadError>()) =>
        {
            GatewayError::BadRequest(format!("cannot read request body: {io}"))
        }
        other => other.into(),
    }
}

/// A request body that could not be read (the client broke it off, a malformed chunk).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BodyReadError(String);

/// Reads a `multipart/form-data` body: exactly one file part named `file`, streamed to
/// staging as it arrives, and optionally a `filename` text field that names the upload
/// instead of the part's own file name. Returns the file name, the part's content type
/// and the staged body.
async fn read_form(
    gw: &Gateway,
    content_type: &str,
    body: Body,
    limit: u64,
) -> Result<(String, String, Staged), GatewayError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| GatewayError::BadRequest(format!("bad multipart/form-data: {e}")))?;
    let body = LimitedBody::new(body, limit);
    let over = body.over.clone();
    let form_error = |e: multer::Error| {
        if over.load(Ordering::Relaxed) {
            GatewayError::TooLarge(limit)
        } else {
            GatewayError::BadRequest(format!("bad multipart/form-data: {e}"))
        }
    };
    let mut form = multer::Multipart::new(body, boundary);
    let mut name_field: Option<String> = None;
    // (the part's file name, its content type, its staged bytes)
    let mut file: Option<(Option<String>, String, Staged)> = None;
    while let Some(mut field) = form.next_field().await.map_err(form_error)? {
        match field.name() {
            Some("file") => {
                if file.is_some() {
                    return Err(GatewayError::BadRequest(
                        "the form has more than one `file` part".into(),
                    ));
                }
                let part_name = field.file_name().map(str::to_owned);
                let part_type = field
                    .content_type()
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "application/octet-stream".to_owned());
                let chunks = futures_util::TryStreamExt::map_err(field, |e| {
                    std::io::Error::other(BodyReadError(e.to_string()))
                });
                let staged = gw
                    .sink
                    .stage(Box::pin(chunks))
                    .await
                    .map_err(|e| body_error(e, &over, limit))?;
                file = Some((part_name, part_type, staged));
            }
            Some("filename") => {
                if name_field.is_some() {
                    return Err(GatewayError::BadRequest(
                        "the form has more than one `filename` field".into(),
                    ));
                }
                let mut text = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(form_error)? {
                    text.extend_from_slice(&chunk);
                    if text.len() > MAX_FILENAME_FIELD {
                        return Err(GatewayError::BadRequest(
                            "filename must be at most 255 bytes".into(),
                        ));
                    }
                }
                let name = String::from_utf8(text).map_err(|_| {
                    GatewayError::BadRequest("the `filename` field is not UTF-8".into())
                })?;
                name_field = Some(validate_filename(&name)?);
            }
            other => {
                return Err(GatewayError::BadRequest(format!(
                    "unexpected form field {:?}: expected `file` and optionally `filename`",
                    other.unwrap_or("")
                )));
            }
        }
    }
    let Some((part_name, part_type, staged)) = file else {
        return Err(GatewayError::BadRequest(
            "the form has no `file` part".into(),
        ));
    };
    let filename = match (name_field, part_name) {
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => format!("file-{}.bin", now_ms()),
    };
    let filename = validate_filename(&filename)?;
    Ok((filename, part_type, staged))
}

/// Longest `filename` form field read (the limit is 255 bytes; a little slack so that the
/// error names the real rule).
const MAX_FILENAME_FIELD: usize = 1024;

/// How much of an oversized body is read (and thrown away) before answering 413, so that a
/// client that sends its whole body before reading the answer gets the 413 instead of a
/// reset connection. Past this the connection is closed.
const DRAIN_MAX_BYTES: usize = 16 * 1024 * 1024;

/// A request body as a stream of chunks that fails once more than `limit` bytes arrived
/// (after reading and dropping up to [`DRAIN_MAX_BYTES`] more, see there), and records
/// that in `over`.
struct LimitedBody {
    inner: axum::body::BodyDataStream,
    seen: u64,
    limit: u64,
    over: Arc<AtomicBool>,
    done: bool,
}

impl LimitedBody {
    fn new(body: Body, limit: u64) -> Self {
        LimitedBody {
            inner: body.into_data_stream(),
            seen: 0,
            limit,
            over: Arc::new(AtomicBool::new(false)),
            done: false,
        }
    }
}

impl futures_util::Stream for LimitedBody {
    type Item = Result<bytes::Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let too_large = || std::io::Error::other(BodyReadError("request body too large".into()));
        loop {
            match std::pin::Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    this.seen += data.len() as u64;
                    if this.seen <= this.limit {
                        return Poll::Ready(Some(Ok(data)));
                    }
                    this.over.store(true, Ordering::Relaxed);
                    if this.seen > this.limit.saturating_add(DRAIN_MAX_BYTES as u64) {
                        this.done = true;
                        return Poll::Ready(Some(Err(too_large())));
                    }
                    // Drain: read on, throw away.
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(std::io::Error::other(BodyReadError(
                        e.to_string(),
                    )))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(if this.over.load(Ordering::Relaxed) {
                        Some(Err(too_large()))
                    } else {
                        None
                    });
                }
            }
        }
    }
}

/// Reads a body of at most `limit` bytes.
async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes, GatewayError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| GatewayError::BadRequest(format!("cannot read request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen > limit {
            if seen > limit + DRAIN_MAX_BYTES {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if seen > limit {
        return Err(GatewayError::TooLarge(limit as u64));
    }
    Ok(buf.freeze())
}

/// A file name that is safe as the last part of an object key and as a name on any file
/// system a user may download it to, in Unicode NFC (the form browsers and most systems
/// send; a decomposed name from macOS becomes the same key as its composed twin).
///
/// Refused, each with its own message: empty or over 255 bytes (after normalisation), path
/// separators, `.`/`..`, control characters (C0, DEL, C1), characters that change how text
/// around them is displayed or hide in it (bidi embeddings, overrides, isolates and marks,
/// zero-width spaces and joiners, the BOM), a leading or trailing space, a trailing dot, and
/// the names Windows reserves for devices (`CON`, `NUL`, `COM1`, … with any extension).
pub fn validate_filename(name: &str) -> Result<String, GatewayError> {
    use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};
    // Most names are NFC already (every ASCII one is): the quick check spares rebuilding them.
    let name: String = match is_nfc_quick(name.chars()) {
        IsNormalized::Yes => name.to_owned(),
        _ => name.nfc().collect(),
    };
    let bad = |r: &str| Err(GatewayError::BadRequest(format!("filename {r}")));
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > 255 {
        return bad("must be at most 255 bytes");
    }
    if name.contains('/') || name.contains('\\') {
        return bad("must not contain '/' or '\\'");
    }
    if name.contains("..") || name == "." {
        return bad("must not contain '..' or be '.'");
    }
    if name.chars().any(char::is_control) {
        return bad("must not contain NUL or other control characters");
    }
    if let Some(c) = name.chars().find(|c| invisible_or_reordering(*c)) {
        return bad(&format!(
            "must not contain U+{:04X} (a bidirectional or invisible formatting character)",
            u32::from(c)
        ));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return bad("must not begin or end with a space");
    }
    if name.ends_with('.') {
        return bad("must not end with a dot");
    }
    let stem = name.split('.').next().unwrap_or("").trim_end();
    if is_reserved_device(stem) {
        return bad(&format!("must not be a reserved device name ({stem})"));
    }
    Ok(name)
}

/// Bidi embeddings, overrides, isolates and marks, zero-width characters and the BOM:
/// characters that make a displayed name differ from the stored one.
fn invisible_or_reordering(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// The device names Windows reserves in any directory, with or without an extension.
fn is_reserved_device(stem: &str) -> bool {
    let upper = stem.to_ascii_uppercase();
    match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" => true,
        _ => {
            let mut chars = upper.chars();
            let digit = chars.next_back();
            matches!(chars.as_str(), "COM" | "LPT")
                && matches!(digit, Some('1'..='9' | '¹' | '²' | '³'))
        }
    }
}

async fn owned_upload(
    gw: &Gateway,
    auth: &Authenticated,
    id: &str,
) -> Result<Upload, GatewayError> {
    match gw.ledger.get(id).await {
        Ok(u) if u.user_sub == auth.sub() => Ok(u),
        // Another user's upload is indistinguishable from a missing one.
        Ok(_) | Err(UploadError::NotFound(_)) => {
            Err(GatewayError::NotFound(format!("upload {id} not found")))
        }
        Err(e) => Err(e.into()),
    }
}

fn ms_to_iso(ms: i64) -> String {
    sluice_uploads::iso8601_ms(ms)
}

async fn get_upload(
    State(gw): State<Gateway>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let u = owned_upload(&gw, &auth, &id).await?;
    Ok(axum::Json(upload_view(u)).into_response())
}

/// An upload as the API shows it.
pub(crate) fn upload_view(u: Upload) -> openapi::UploadView {
    let processed = match (u.processed_bucket, u.processed_key) {
        (Some(bucket), Some(key)) if u.status == UploadStatus::Processed => {
            Some(openapi::S3Location { bucket, key })
        }
        _ => None,
    };
    openapi::UploadView {
        upload_id: u.id,
        status: match u.status {
            UploadStatus::Queued => openapi::Status::Queued,
            UploadStatus::Processing => openapi::Status::Processing,
            UploadStatus::Processed => openapi::Status::Processed,
            UploadStatus::Failed => openapi::Status::Failed,
        },
        s3: openapi::S3Location {
            bucket: u.bucket,
            key: u.key,
        },
        filename: u.filename,
        size: u.size,
        sha256: u.sha256,
        content_type: u.content_type,
        request_id: u.request_id,
        stream: u.stream,
        shard_id: u.shard_id,
        sequence_number: u.sequence_number,
        attempts: u.attempts,
        error: u.error,
        processed,
        created_at: ms_to_iso(u.created_ms),
        updated_at: ms_to_iso(u.updated_ms),
        processed_at: u.processed_ms.map(ms_to_iso),
    }
}

/// The object's bytes, streamed from the store (never read whole into memory).
/// The bytes of the object an upload refers to, as a download: `Content-Disposition:
/// attachment` and `X-Content-Type-Options: nosniff`, so that user content is never rendered
/// by a browser as a page of the API's origin.
///
/// An upload id names one version of an object, not a key: `is_ours` says whether the
/// object now at the key is that version. When it is not (the object was deleted through S3,
/// and maybe another user wrote the same key since) the answer is 410 Gone, never the other
/// bytes.
async fn object_response(
    gw: &Gateway,
    u: &Upload,
    bucket: &str,
    key: &str,
    is_ours: impl Fn(&sluice_store::ObjectInfo) -> bool,
) -> Result<Response, GatewayError> {
    let gone = || {
        GatewayError::Gone(format!(
            "the object upload {} stored at {bucket}/{key} was deleted or replaced",
            u.id
        ))
    };
    let obj = match gw.store.get_stream(bucket, key, None).await {
        Ok(obj) => obj,
        Err(sluice_store::StoreError::NoSuchKey { .. }) => return Err(gone()),
        Err(e) => return Err(e.into()),
    };
    if !is_ours(&obj.info) {
        return Err(gone());
    }
    let mut resp = Response::new(Body::from_stream(obj.body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(obj.info.size));
    if let Ok(v) = HeaderValue::from_str(&obj.info.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", obj.info.etag)) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let name = key.rsplit('/').next().unwrap_or(key);
    let name = if bucket == u.bucket && key == u.key {
        u.filename.as_str()
    } else {
        name
    };
    if let Ok(v) = HeaderValue::from_str(&content_disposition(name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// `attachment` with the file name twice (RFC 6266): an ASCII fallback with anything
/// unsafe replaced by `_`, and the exact name percent-encoded in UTF-8 (RFC 8187).
fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

async fn get_content(
    State(gw): State<Gateway>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let u = owned_upload(&gw, &auth, &id).await?;
    // The upload's bytes are known by their digest: the object must still be exactly them.
    object_response(&gw, &u, &u.bucket, &u.key, |o| {
        o.sha256 == u.sha256 && o.size == u.size
    })
    .await
}

/// Whether `o` is the processed output of upload `u`. An output names the upload it was
/// computed from ([`sluice_uploads::UPLOAD_ID_METADATA`]): any run of `u` wrote it (a
/// record delivered again after a takeover writes it again, before its status row says so
/// a second time), and another upload's run to the same key did not. An output without
/// that name (written before outputs carried it, or by hand through S3) counts by its
/// time: `u`'s output was durable before `u` was marked processed, so one modified after
/// that is not `u`'s.
fn is_output_of(o: &sluice_store::ObjectInfo, u: &Upload) -> bool {
    match o.metadata.get(sluice_uploads::UPLOAD_ID_METADATA) {
        Some(id) => *id == u.id,
        None => o.last_modified_ms <= u.processed_ms.unwrap_or(i64::MAX),
    }
}

async fn get_processed(
    State(gw): State<Gateway>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let u = owned_upload(&gw, &auth, &id).await?;
    match (&u.processed_bucket, &u.processed_key, u.status) {
        (Some(b), Some(k), UploadStatus::Processed) => {
            object_response(&gw, &u, b, k, |o| is_output_of(o, &u)).await
        }
        _ => Err(GatewayError::NotFound(format!(
            "upload {id} has no processed output (status: {})",
            u.status.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_normalised_or_refused() {
        assert_eq!(validate_filename("demo.txt").expect("ok"), "demo.txt");
        // NFD "é" (e + combining acute) becomes NFC.
        assert_eq!(
            validate_filename("caf\u{65}\u{301}.txt").expect("ok"),
            "caf\u{e9}.txt"
        );
        assert_eq!(validate_filename("COM10.txt").expect("ok"), "COM10.txt");
        assert_eq!(validate_filename("console.log").expect("ok"), "console.log");
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "a\0b",
            "a\u{7f}",
            "a\u{85}",
            "evil\u{202E}txt.exe",
            "in\u{2066}visible",
            "zero\u{200B}width",
            "\u{FEFF}bom",
            " lead",
            "trail ",
            "trail.",
            "CON",
            "nul.txt",
            "Com1.tar.gz",
            "lpt9",
            "COM\u{b9}",
            "AUX .txt",
        ] {
            assert!(validate_filename(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(validate_filename(&"x".repeat(256)).is_err());
        // A multi-byte last character is not a reason to panic.
        assert!(validate_filename("COMé").is_ok());
    }

    #[test]
    fn downloads_name_the_file_safely() {
        assert_eq!(
            content_disposition("a b\"c\".txt"),
            "attachment; filename=\"a_b_c_.txt\"; filename*=UTF-8''a%20b%22c%22.txt"
        );
        assert_eq!(
            content_disposition("\u{e9}t\u{e9}.txt"),
            "attachment; filename=\"_t_.txt\"; filename*=UTF-8''%C3%A9t%C3%A9.txt"
        );
    }
}
