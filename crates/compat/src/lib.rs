//! The AWS edge: AWS wire protocols, adapted to sluice's parts. Only this crate knows AWS
//! wire formats.
//!
//! Requests are routed by `X-Amz-Target` (the JSON 1.1 protocols); OpenID discovery and
//! JWKS documents are served under each pool's issuer path.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sluice_identity::Identity;

pub mod cognito;

/// What the edge serves.
#[derive(Clone)]
pub struct Edge {
    pub identity: Identity,
}

pub fn router(edge: Edge) -> Router {
    Router::new()
        .route("/", post(dispatch))
        .route("/{pool}/.well-known/jwks.json", get(jwks))
        .route("/{pool}/.well-known/openid-configuration", get(discovery))
        .fallback(|| async {
            json_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                "no such resource on the sluice edge",
            )
        })
        .with_state(edge)
}

/// Routes a JSON 1.1 request by its `X-Amz-Target` (`<service>.<operation>`).
async fn dispatch(State(edge): State<Edge>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut resp = match target.split_once('.') {
        Some((cognito::SERVICE, op)) => {
            cognito::handle(
                &edge.identity,
                op,
                &body,
                cognito::Caller::claimed(&headers),
            )
            .await
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
    resp
}

/// An error in the JSON 1.1 protocols' shape: `{"__type","message"}` and the
/// `x-amzn-ErrorType` header.
pub fn json_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut resp = (
        status,
        [("content-type", "application/x-amz-json-1.1")],
        json!({"__type": kind, "message": message}).to_string(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{kind}:")) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

pub fn json_ok(body: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/x-amz-json-1.1")],
        body.to_string(),
    )
        .into_response()
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
    axum::Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "response_types_supported": ["code", "token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "phone", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "claims_supported": ["sub", "email", "email_verified", "cognito:username", "iss", "aud",
            "token_use", "auth_time", "iat", "exp", "jti"],
    }))
    .into_response()
}
