//! Responses of the JSON 1.1 protocols (Cognito, Kinesis): answers, errors in their shape,
//! and which metadata failures clients should wait out. Used by the edge's router and by
//! each protocol's module; uses none of them.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

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
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // An engine that is down or restarting: worth another try in a second.
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    resp
}

/// A metadata failure a client can wait out (engine down or out of space): AWS's common
/// `ServiceUnavailable` (503) rather than an internal error. `None` for any other failure.
pub(crate) fn unavailable(e: &sluice_meta::MetaError) -> Option<String> {
    if e.is_unavailable() {
        tracing::warn!(error = %e, "metadata engine unavailable");
        Some("the service is unavailable; try again later".into())
    } else if e.is_full() {
        tracing::warn!(error = %e, "metadata storage is full");
        Some("the service has no storage left; try again later".into())
    } else {
        None
    }
}

pub fn json_ok(body: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/x-amz-json-1.1")],
        body.to_string(),
    )
        .into_response()
}
