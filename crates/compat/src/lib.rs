//! The AWS edge: AWS wire protocols, adapted to sluice's parts. Only this crate knows AWS
//! wire formats.
//!
//! Requests are routed by `X-Amz-Target` (the JSON 1.1 protocols); OpenID discovery and
//! JWKS documents are served under each pool's issuer path.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sha2::{Digest, Sha256};
use sluice_identity::Identity;
use sluice_identity::access_keys::AccessKeys;
use sluice_identity::rates::{Buckets, Category};
use sluice_meta::now_ms;

pub mod apigw;
pub mod authz;
mod cbor;
pub mod cognito;
pub mod eventstream;
#[doc(hidden)]
pub mod fuzzing;
pub mod hosted;
pub mod iam;
mod json11;
pub mod kinesis;
pub mod lambda;
pub mod s3;
mod s3_acl;
pub mod s3_checksum;
pub mod s3_cors;
mod s3_encoding;
pub mod s3_guard;
pub mod s3_lifecycle;
pub mod s3_lock;
pub mod s3_policy;
pub mod s3_region;
pub mod s3_sse;
mod s3_versions;
pub mod sigv4;
pub mod source_throttle;
pub mod ttl_cache;

use json11::unavailable;
pub use json11::{json_error, json_ok};
pub use kinesis::KinesisContext;

/// What the edge serves.
#[derive(Clone)]
pub struct Edge {
    pub identity: Identity,
    /// Access keys accepted in SigV4 signatures.
    pub keys: AccessKeys,
    pub kinesis: KinesisContext,
    pub s3: s3::S3Adapter,
    /// Base domain for virtual-host-style S3 requests (`<bucket>.<domain>`); path style
    /// only when `None`.
    pub s3_base_domain: Option<String>,
    /// Failed sign-ins per source address.
    pub sign_in_sources: Arc<source_throttle::SourceThrottle>,
    /// Unsigned sign-up and sign-in requests per source address (limits from
    /// `identity.rate_limits()`).
    pub address_rates: Arc<Buckets<(std::net::IpAddr, Category)>>,
    /// Functions and their mappings (Lambda's API); `None`: the edge answers Lambda
    /// requests that it runs no functions.
    pub lambda: Option<lambda::LambdaApi>,
    /// HTTP APIs (API Gateway v2's API); `None`: the edge answers that it serves none.
    pub apigw: Option<apigw::ApigwApi>,
    /// IAM (users, groups, roles, policies); `None`: the edge answers that it serves none.
    /// STS's GetCallerIdentity is answered either way.
    pub iam: Option<iam::IamApi>,
}

/// Largest JSON 1.1 request body: a PutRecords of 5 MiB, or a PutRecord of a 10 MiB record,
/// base64-encoded, with room for the JSON around it.
const MAX_JSON_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Cognito operations whose failures count as failed sign-ins.
const SIGN_IN_OPS: &[&str] = &[
    "InitiateAuth",
    "AdminInitiateAuth",
    "RespondToAuthChallenge",
    "AdminRespondToAuthChallenge",
];

/// Cognito operations anyone may call that count as sign-ups against the address rate.
const SIGN_UP_OPS: &[&str] = &[
    "SignUp",
    "ResendConfirmationCode",
    "ForgotPassword",
    "ConfirmForgotPassword",
];

/// The rate an unsigned Cognito request counts against, if any.
fn address_rate(edge: &Edge, op: &str) -> Option<(Category, sluice_identity::rates::Rate)> {
    let limits = edge.identity.rate_limits();
    if SIGN_UP_OPS.contains(&op) {
        Some((Category::SignUp, limits.sign_up_per_address))
    } else if SIGN_IN_OPS.contains(&op) {
        Some((Category::SignIn, limits.sign_in_per_address))
    } else {
        None
    }
}

/// The edge's routes: JSON 1.1 protocols on `POST /` (by `X-Amz-Target`), OpenID documents
/// under each pool's issuer path, and everything else is S3's REST protocol. A pool id
/// (`<region>_<id>`) is never a valid bucket name, so the issuer paths cannot shadow a bucket.
pub fn router(edge: Edge) -> Result<Router, String> {
    let mut builder = s3s::service::S3ServiceBuilder::new(edge.s3.clone());
    builder.set_auth(s3::KeyAuth(edge.keys.clone()));
    builder.set_access(s3::KeyAccess {
        keys: edge.keys.clone(),
        account_id: edge.kinesis.account_id.clone(),
        policies: edge.s3.policies.clone(),
        store: edge.s3.store.clone(),
        regions: edge.s3.regions.clone(),
        region: edge.s3.region.clone(),
    });
    // A browser POST upload is read whole by s3s (to check its policy) before sluice sees
    // it: its size is bounded here and the number read at once in `s3_guard`, so memory
    // stays bounded (`POST_OBJECT_MAX_BYTES` × `POST_OBJECT_CONCURRENCY`).
    let mut config = s3s::config::S3Config::default();
    config.post_object_max_file_size = s3_guard::POST_OBJECT_MAX_BYTES;
    builder.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(
        config,
    ))));
    if let Some(domain) = &edge.s3_base_domain {
        let host = s3s::host::SingleDomain::new(domain)
            .map_err(|e| format!("invalid S3 base domain {domain:?}: {e}"))?;
        builder.set_host(host);
    }
    let s3_service = builder.build();
    let s3 = axum::error_handling::HandleError::new(s3_service, |e: s3s::HttpError| async move {
        tracing::error!(error = ?e, "s3 request failed");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    });
    Ok(Router::new()
        .route(
            "/",
            post(dispatch)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY_BYTES))
                .layer(axum::middleware::map_response(cors_allow))
                .options(cors_preflight)
                .fallback_service(s3.clone()),
        )
        .route("/{pool}/.well-known/jwks.json", get(jwks))
        .route("/{pool}/.well-known/openid-configuration", get(discovery))
        .fallback_service(s3)
        // Operations s3s does not know are refused before it could mistake them for
        // others (`s3_guard`).
        .layer(axum::middleware::from_fn_with_state(
            edge.clone(),
            s3_guard::layer,
        ))
        // S3's CORS, by the bucket's configuration (`s3_cors`): preflights never reach s3s.
        .layer(axum::middleware::from_fn_with_state(
            edge.clone(),
            s3_cors::layer,
        ))
        // Lambda's paths are valid S3 paths too: the service a request is signed for
        // decides (see `by_service`).
        .layer(axum::middleware::from_fn_with_state(
            edge.clone(),
            by_service,
        ))
        // The pools' hosted UI and OAuth 2.0 endpoints (`hosted`): paths under a pool id,
        // which no bucket can have.
        .layer(axum::middleware::from_fn_with_state(
            edge.clone(),
            hosted::layer,
        ))
        // HeadObject with a Range answers 206 (see `s3::partial_content`).
        .layer(axum::middleware::map_response(s3::partial_content))
        .layer(axum::middleware::map_response(retry_after))
        .layer(axum::middleware::from_fn(close_after_refused_expect))
        .with_state(edge))
}

/// Sends requests signed for Lambda (`lambda`) or API Gateway (`apigateway`) to their
/// REST-JSON front ends, and those signed for IAM (`iam`) or STS (`sts`) to the Query
/// protocol's; everything else goes on to the routes above.
async fn by_service(
    State(edge): State<Edge>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if lambda::signed_for(req.headers(), req.uri().query(), "lambda") {
        return lambda::handle(State(edge), req).await;
    }
    if lambda::signed_for(req.headers(), req.uri().query(), "apigateway") {
        return apigw::handle(State(edge), req).await;
    }
    if let Some(service) = iam::service_of(req.headers(), req.uri().query()) {
        return iam::handle(State(edge), req, service).await;
    }
    next.run(req).await
}

/// The operation a response answered, for metrics and request logs
/// (`sluice_http_requests_total{route=…}`): `kinesis:PutRecord`, `cognito-idp:SignUp`, … .
/// Set only for operations the edge knows, so that a client sending made-up
/// `X-Amz-Target`s cannot grow the number of label values; S3 requests carry none (the
/// server labels them by method).
#[derive(Debug, Clone, Copy)]
pub struct OperationLabel(pub &'static str);

impl OperationLabel {
    fn of(service: &str, op: &str) -> Option<OperationLabel> {
        let known = match service {
            kinesis::SERVICE => KINESIS_LABELS,
            cognito::SERVICE => COGNITO_LABELS,
            _ => return None,
        };
        known
            .iter()
            .find(|l| l.split_once(':').is_some_and(|(_, o)| o == op))
            .map(|l| OperationLabel(l))
    }
}

const KINESIS_LABELS: &[&str] = &[
    "kinesis:AddTagsToStream",
    "kinesis:CreateStream",
    "kinesis:DecreaseStreamRetentionPeriod",
    "kinesis:DeleteResourcePolicy",
    "kinesis:DeleteStream",
    "kinesis:DeregisterStreamConsumer",
    "kinesis:DescribeLimits",
    "kinesis:DescribeStream",
    "kinesis:DescribeStreamConsumer",
    "kinesis:DescribeStreamSummary",
    "kinesis:DisableEnhancedMonitoring",
    "kinesis:EnableEnhancedMonitoring",
    "kinesis:GetRecords",
    "kinesis:GetResourcePolicy",
    "kinesis:GetShardIterator",
    "kinesis:IncreaseStreamRetentionPeriod",
    "kinesis:ListShards",
    "kinesis:ListStreamConsumers",
    "kinesis:ListStreams",
    "kinesis:ListTagsForResource",
    "kinesis:ListTagsForStream",
    "kinesis:MergeShards",
    "kinesis:PutRecord",
    "kinesis:PutRecords",
    "kinesis:PutResourcePolicy",
    "kinesis:RegisterStreamConsumer",
    "kinesis:RemoveTagsFromStream",
    "kinesis:SplitShard",
    "kinesis:StartStreamEncryption",
    "kinesis:StopStreamEncryption",
    "kinesis:SubscribeToShard",
    "kinesis:TagResource",
    "kinesis:UntagResource",
    "kinesis:UpdateMaxRecordSize",
    "kinesis:UpdateShardCount",
    "kinesis:UpdateStreamMode",
];

const COGNITO_LABELS: &[&str] = &[
    "cognito-idp:AddCustomAttributes",
    "cognito-idp:AdminAddUserToGroup",
    "cognito-idp:AdminConfirmSignUp",
    "cognito-idp:AdminCreateUser",
    "cognito-idp:AdminDeleteUser",
    "cognito-idp:AdminDeleteUserAttributes",
    "cognito-idp:AdminDisableUser",
    "cognito-idp:AdminEnableUser",
    "cognito-idp:AdminGetUser",
    "cognito-idp:AdminInitiateAuth",
    "cognito-idp:AdminListGroupsForUser",
    "cognito-idp:AdminRemoveUserFromGroup",
    "cognito-idp:AdminResetUserPassword",
    "cognito-idp:AdminRespondToAuthChallenge",
    "cognito-idp:AdminSetUserMFAPreference",
    "cognito-idp:AdminSetUserPassword",
    "cognito-idp:AdminUpdateUserAttributes",
    "cognito-idp:AdminUserGlobalSignOut",
    "cognito-idp:AssociateSoftwareToken",
    "cognito-idp:ChangePassword",
    "cognito-idp:ConfirmForgotPassword",
    "cognito-idp:ConfirmSignUp",
    "cognito-idp:CreateGroup",
    "cognito-idp:CreateIdentityProvider",
    "cognito-idp:CreateResourceServer",
    "cognito-idp:CreateUserPool",
    "cognito-idp:CreateUserPoolClient",
    "cognito-idp:CreateUserPoolDomain",
    "cognito-idp:DeleteGroup",
    "cognito-idp:DeleteIdentityProvider",
    "cognito-idp:DeleteResourceServer",
    "cognito-idp:DeleteUser",
    "cognito-idp:DeleteUserAttributes",
    "cognito-idp:DeleteUserPool",
    "cognito-idp:DeleteUserPoolClient",
    "cognito-idp:DeleteUserPoolDomain",
    "cognito-idp:DescribeIdentityProvider",
    "cognito-idp:DescribeResourceServer",
    "cognito-idp:DescribeUserPool",
    "cognito-idp:DescribeUserPoolClient",
    "cognito-idp:DescribeUserPoolDomain",
    "cognito-idp:ForgotPassword",
    "cognito-idp:GetGroup",
    "cognito-idp:GetIdentityProviderByIdentifier",
    "cognito-idp:GetUser",
    "cognito-idp:GetUserAttributeVerificationCode",
    "cognito-idp:GetUserPoolMfaConfig",
    "cognito-idp:GlobalSignOut",
    "cognito-idp:InitiateAuth",
    "cognito-idp:ListGroups",
    "cognito-idp:ListIdentityProviders",
    "cognito-idp:ListResourceServers",
    "cognito-idp:ListTagsForResource",
    "cognito-idp:ListUserPoolClients",
    "cognito-idp:ListUserPools",
    "cognito-idp:ListUsers",
    "cognito-idp:ListUsersInGroup",
    "cognito-idp:ResendConfirmationCode",
    "cognito-idp:RespondToAuthChallenge",
    "cognito-idp:RevokeToken",
    "cognito-idp:SetUserMFAPreference",
    "cognito-idp:SetUserPoolMfaConfig",
    "cognito-idp:SignUp",
    "cognito-idp:TagResource",
    "cognito-idp:UntagResource",
    "cognito-idp:UpdateGroup",
    "cognito-idp:UpdateIdentityProvider",
    "cognito-idp:UpdateResourceServer",
    "cognito-idp:UpdateUserAttributes",
    "cognito-idp:UpdateUserPool",
    "cognito-idp:UpdateUserPoolClient",
    "cognito-idp:UpdateUserPoolDomain",
    "cognito-idp:VerifySoftwareToken",
    "cognito-idp:VerifyUserAttribute",
];

/// Routes a JSON 1.1 request by its `X-Amz-Target` (`<service>.<operation>`).
async fn dispatch(
    State(edge): State<Edge>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut resp = match target.split_once('.') {
        Some((cognito::SERVICE, op)) => {
            // Cognito's public operations (InitiateAuth, SignUp, …) are unsigned; its
            // admin and management operations need a valid signature. A signature that is
            // present is always verified.
            let caller = if headers.contains_key("authorization") {
                match authenticate(
                    &edge.keys,
                    &edge.kinesis.account_id,
                    &method,
                    &uri,
                    &headers,
                    &body,
                    peer.as_ref().map(|p| p.0.0.ip()),
                )
                .await
                {
                    Ok(principal) if cognito::needs_iam(op) => {
                        let resource = authz::cognito_resource(
                            &edge.kinesis.region,
                            &edge.kinesis.account_id,
                            &body,
                        );
                        match principal.check(&format!("cognito-idp:{op}"), &resource) {
                            Ok(()) => Ok(cognito::Caller::Signed),
                            Err(denied) => Err(json_error(
                                StatusCode::BAD_REQUEST,
                                "AccessDeniedException",
                                &denied.message(),
                            )),
                        }
                    }
                    Ok(_) => Ok(cognito::Caller::Signed),
                    Err(e) => Err(e),
                }
            } else {
                Ok(cognito::Caller::Anonymous)
            };
            let source = peer.map(|p| p.0.0.ip());
            let now = now_ms();
            let signs_in = SIGN_IN_OPS.contains(&op);
            let over_rate = match (&caller, source, address_rate(&edge, op)) {
                (Ok(cognito::Caller::Anonymous), Some(ip), Some((category, rate))) => {
                    (!edge.address_rates.admit(&(ip, category), rate)).then_some(category)
                }
                _ => None,
            };
            match (caller, source) {
                (Err(e), _) => e,
                (Ok(_), _) if let Some(category) = over_rate => {
                    cognito::error_response(sluice_identity::rates::too_many(category))
                }
                (Ok(_), Some(ip)) if signs_in && edge.sign_in_sources.locked(ip, now) => {
                    json_error(
                        StatusCode::BAD_REQUEST,
                        "NotAuthorizedException",
                        "Password attempts exceeded",
                    )
                }
                (Ok(caller), source) => {
                    let resp = cognito::handle(
                        &edge.identity,
                        op,
                        &body,
                        caller,
                        &edge.kinesis.account_id,
                        crate::s3_region::signed_region(&headers, None).as_deref(),
                    )
                    .await;
                    let refused = resp
                        .headers()
                        .get("x-amzn-errortype")
                        .is_some_and(|v| v.as_bytes().starts_with(b"NotAuthorizedException"));
                    if signs_in
                        && refused
                        && let Some(ip) = source
                    {
                        edge.sign_in_sources.failure(ip, now);
                    }
                    resp
                }
            }
        }
        Some((kinesis::SERVICE, op)) => {
            match authenticate(
                &edge.keys,
                &edge.kinesis.account_id,
                &method,
                &uri,
                &headers,
                &body,
                peer.as_ref().map(|p| p.0.0.ip()),
            )
            .await
            {
                Ok(principal) => {
                    let enc = kinesis::Encoding::of(
                        headers.get("content-type").and_then(|v| v.to_str().ok()),
                    );
                    // Streams are regional: the request's own region decides which it sees.
                    match crate::s3_region::signed_region(&headers, None) {
                        Some(region) if region != edge.kinesis.region => {
                            let ctx = edge.kinesis.in_region(&region);
                            kinesis::handle(&ctx, op, &body, enc, &principal).await
                        }
                        _ => kinesis::handle(&edge.kinesis, op, &body, enc, &principal).await,
                    }
                }
                Err(e) => e,
            }
        }
        _ => json_error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            &format!("unknown operation {target:?}"),
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amzn-requestid", v);
    }
    if let Some((service, op)) = target.split_once('.')
        && let Some(label) = OperationLabel::of(service, op)
    {
        if service == cognito::SERVICE && SIGN_IN_OPS.contains(&op) {
            count_sign_in(&resp);
        }
        resp.extensions_mut().insert(label);
    }
    resp
}

/// CORS for the JSON protocols on `POST /` (Cognito, Kinesis), as AWS answers them: any
/// origin may call them from a browser (a web app signs users in with `InitiateAuth`
/// straight from the page, as the Amplify libraries do; the console does too). No cookie or
/// other ambient credential is involved — a call is anonymous or carries its own signature —
/// so allowing every origin gives a page nothing the request itself does not carry.
/// S3 requests are not covered: S3's CORS is a per-bucket configuration.
async fn cors_preflight(headers: HeaderMap) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, OPTIONS"),
    );
    // The headers the browser asks for, when they are plain header names.
    let asked = headers
        .get("access-control-request-headers")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.len() <= 1024
                && v.split(',').all(|n| {
                    let n = n.trim();
                    !n.is_empty()
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        });
    if let Some(v) = asked.and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert("access-control-allow-headers", v);
    }
    h.insert("access-control-max-age", HeaderValue::from_static("86400"));
    resp
}

/// The CORS headers of an answer on `POST /` (see [`cors_preflight`]).
async fn cors_allow(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("x-amzn-RequestId, x-amzn-ErrorType, x-amzn-ErrorMessage, Date"),
    );
    resp
}

/// `sluice_auth_total{edge="cognito"}`: the outcome of a sign-in operation, by Cognito's
/// error type (a fixed set, so a label).
fn count_sign_in(resp: &Response) {
    let (result, reason) = if resp.status().is_success() {
        ("success", "ok")
    } else {
        let kind = resp
            .headers()
            .get("x-amzn-errortype")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let reason = [
            ("NotAuthorizedException", "not_authorized"),
            ("UserNotFoundException", "user_not_found"),
            ("UserNotConfirmedException", "user_not_confirmed"),
            ("PasswordResetRequiredException", "password_reset_required"),
            ("TooManyRequestsException", "throttled"),
            ("InvalidParameterException", "invalid_parameter"),
            ("ResourceNotFoundException", "resource_not_found"),
            ("CodeMismatchException", "code_mismatch"),
        ]
        .iter()
        .find(|(k, _)| kind.starts_with(k.as_bytes()))
        .map_or("other", |(_, r)| r);
        ("failure", reason)
    };
    metrics::counter!("sluice_auth_total", "edge" => "cognito", "result" => result, "reason" => reason)
        .increment(1);
}

/// Verifies a request's SigV4 signature; returns who signed it (the key and its policy), or
/// the error response AWS gives for the failure.
pub async fn authenticate(
    keys: &AccessKeys,
    account_id: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    source: Option<std::net::IpAddr>,
) -> Result<authz::Principal, Response> {
    let refuse = |e: sigv4::SigError| {
        let reason = match &e {
            sigv4::SigError::Missing => "missing",
            sigv4::SigError::UnknownKey => "unknown_key",
            sigv4::SigError::Malformed(_) => "malformed",
            sigv4::SigError::Expired(_) => "expired",
            sigv4::SigError::Mismatch => "signature",
        };
        metrics::counter!("sluice_auth_total", "edge" => "sigv4", "result" => "failure", "reason" => reason)
            .increment(1);
        let kind = match e {
            sigv4::SigError::Missing => "MissingAuthenticationTokenException",
            sigv4::SigError::UnknownKey => "UnrecognizedClientException",
            sigv4::SigError::Malformed(_) => "IncompleteSignatureException",
            sigv4::SigError::Expired(_) | sigv4::SigError::Mismatch => "InvalidSignatureException",
        };
        json_error(StatusCode::BAD_REQUEST, kind, &e.to_string())
    };
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refuse(sigv4::SigError::Missing))?;
    let auth = sigv4::parse_authorization(value).map_err(refuse)?;
    let grant = keys
        .lookup(&auth.access_key_id)
        .await
        .map_err(|e| {
            if let sluice_identity::IdentityError::Meta(m) = &e
                && let Some(message) = unavailable(m)
            {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    &message,
                );
            }
            tracing::error!(error = %e, "cannot read access keys");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
                "internal failure",
            )
        })?
        .ok_or_else(|| refuse(sigv4::SigError::UnknownKey))?;
    // Only the headers the signature covers (and X-Amz-Date, which dates it) take part in
    // verification; the others are not copied.
    let mut pairs: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| {
            let n = n.as_str();
            n == "host" || n == "x-amz-date" || auth.signed_headers.iter().any(|s| s == n)
        })
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    // HTTP/2 carries the host in the :authority pseudo-header, which hyper puts in the URI.
    // Clients sign it as `host` or, over HTTP/2, as `:authority` itself.
    let authority = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        pairs
            .iter()
            .find(|(n, _)| n == "host")
            .map(|(_, v)| v.clone())
    });
    if let Some(a) = authority {
        if !pairs.iter().any(|(n, _)| n == "host") {
            pairs.push(("host".into(), a.clone()));
        }
        pairs.push((":authority".into(), a));
    }
    let payload_hash = match headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        Some(h) => h.to_owned(),
        None => hex::encode(Sha256::digest(body)),
    };
    let req = sigv4::SignedRequest {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: &pairs,
        payload_hash: &payload_hash,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    sigv4::verify(&auth, &req, &grant.secret, now).map_err(refuse)?;
    if !authz::session_token_ok(&grant, headers, uri.query()) {
        return Err(refuse(sigv4::SigError::UnknownKey));
    }
    metrics::counter!("sluice_auth_total", "edge" => "sigv4", "result" => "success", "reason" => "ok")
        .increment(1);
    Ok(authz::Principal::new(
        auth.access_key_id,
        grant,
        account_id,
        source,
    ))
}

/// The address of the connection a request came on, when the server records it.
pub(crate) fn peer_of(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// An error answer to an HTTP/1.1 request that announced its body with
/// `Expect: 100-continue` closes the connection (`Connection: close`).
///
/// The handler refused the request without reading its body, so the client may or may not
/// send it: botocore sends it anyway when the answer takes longer than its one-second wait,
/// after which the body's bytes and the next request on the connection can no longer be
/// told apart (seen as a spurious `SignatureDoesNotMatch` on the next request under load).
/// A fresh connection for the next request removes the ambiguity, at the cost of one
/// handshake after an error. The edge's router has it; the binary's request accounting
/// layer does the same on the upload API ([`expects_continue`], [`close_if_refused`]).
pub async fn close_after_refused_expect(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let expects = expects_continue(&req);
    let mut resp = next.run(req).await;
    if expects {
        close_if_refused(&mut resp);
    }
    resp
}

/// Whether `req` is an HTTP/1.1 request that announced its body with
/// `Expect: 100-continue` ([`close_after_refused_expect`]).
pub fn expects_continue<B>(req: &axum::http::Request<B>) -> bool {
    req.version() == axum::http::Version::HTTP_11
        && req
            .headers()
            .get(axum::http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Closes the connection after `resp` if it refuses the request (a 4xx or 5xx), for a
/// request that [`expects_continue`].
pub fn close_if_refused(resp: &mut Response) {
    if resp.status().is_client_error() || resp.status().is_server_error() {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
}

/// Every 503 and every TooManyRequestsException says when to try again (AWS SDKs retry both
/// on their own; `Retry-After` tells other clients the same).
async fn retry_after(mut resp: Response) -> Response {
    let throttled = resp
        .headers()
        .get("x-amzn-errortype")
        .is_some_and(|v| v.as_bytes().starts_with(b"TooManyRequestsException"));
    if (resp.status() == StatusCode::SERVICE_UNAVAILABLE || throttled)
        && !resp.headers().contains_key("retry-after")
    {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    resp
}

fn known_pool(identity: &Identity, pool: &str) -> bool {
    identity.pool_exists(pool).unwrap_or(false)
}

async fn jwks(State(edge): State<Edge>, Path(pool): Path<String>) -> Response {
    if !known_pool(&edge.identity, &pool) {
        return json_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("User pool {pool} does not exist."),
        );
    }
    match edge.identity.jwks(&pool) {
        Ok(jwks) => axum::Json(jwks).into_response(),
        Err(e) => cognito::error_response(e),
    }
}

async fn discovery(State(edge): State<Edge>, Path(pool): Path<String>) -> Response {
    if !known_pool(&edge.identity, &pool) {
        return json_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("User pool {pool} does not exist."),
        );
    }
    let issuer = edge.identity.issuer(&pool);
    let mut doc = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "response_types_supported": ["code", "token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "phone", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "claims_supported": ["sub", "email", "email_verified", "cognito:username", "iss", "aud",
            "token_use", "auth_time", "iat", "exp", "jti", "nonce", "at_hash"],
    });
    // The endpoints exist once the pool has a domain (`hosted`), as in Cognito.
    match edge.identity.hosted_enabled(&pool).await {
        Ok(true) => {
            doc["authorization_endpoint"] = json!(format!("{issuer}/oauth2/authorize"));
            doc["token_endpoint"] = json!(format!("{issuer}/oauth2/token"));
            doc["userinfo_endpoint"] = json!(format!("{issuer}/oauth2/userInfo"));
            doc["revocation_endpoint"] = json!(format!("{issuer}/oauth2/revoke"));
            doc["end_session_endpoint"] = json!(format!("{issuer}/logout"));
            doc["grant_types_supported"] = json!([
                "authorization_code",
                "implicit",
                "refresh_token",
                "client_credentials"
            ]);
            doc["code_challenge_methods_supported"] = json!(["S256", "plain"]);
            doc["response_modes_supported"] = json!(["query", "fragment"]);
        }
        Ok(false) => {}
        Err(e) => return cognito::error_response(e),
    }
    axum::Json(doc).into_response()
}

#[cfg(test)]
mod tests {
    use super::{OperationLabel, cognito, kinesis};

    #[test]
    fn only_known_operations_get_a_label() {
        assert_eq!(
            OperationLabel::of(kinesis::SERVICE, "PutRecords").map(|l| l.0),
            Some("kinesis:PutRecords")
        );
        assert_eq!(
            OperationLabel::of(cognito::SERVICE, "InitiateAuth").map(|l| l.0),
            Some("cognito-idp:InitiateAuth")
        );
        assert!(OperationLabel::of(kinesis::SERVICE, "MadeUp").is_none());
        // An operation of the other service is not this one's.
        assert!(OperationLabel::of(kinesis::SERVICE, "InitiateAuth").is_none());
        assert!(OperationLabel::of("NoSuchService", "PutRecord").is_none());
    }
}
