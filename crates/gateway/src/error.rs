//! The API's errors and the one place where they become HTTP responses.

use crate::openapi::ErrorBody;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_identity::TokenError;
use sluice_store::StoreError;
use sluice_uploads::UploadError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("unauthorized: {0}")]
    InvalidToken(TokenError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    /// Authenticated, but not allowed (an operator route without the `admin` group).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A per-user limit is reached (429 with `Retry-After`).
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// What an upload id refers to existed but is gone (deleted or replaced).
    #[error("{0}")]
    Gone(String),
    /// The metadata engine is down: try again later (503 with `Retry-After`).
    #[error("the service is unavailable; try again later")]
    Unavailable(String),
    /// Storage is full (507): nothing was stored.
    #[error("the service has no storage left; nothing was stored")]
    Full(String),
    /// The user's storage limit would be passed (507): nothing was stored.
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// A metadata failure as the answer it deserves: 503 or 507 for what a client can wait
    /// out, 500 for the rest.
    fn from_meta(e: sluice_meta::MetaError) -> GatewayError {
        if e.is_unavailable() {
            GatewayError::Unavailable(e.to_string())
        } else if e.is_full() {
            GatewayError::Full(e.to_string())
        } else {
            GatewayError::Internal(e.to_string())
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Unauthorized(_) | GatewayError::InvalidToken(_) => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::Conflict(_) => StatusCode::CONFLICT,
            GatewayError::Gone(_) => StatusCode::GONE,
            GatewayError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Full(_) | GatewayError::QuotaExceeded(_) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            GatewayError::Unauthorized(_) | GatewayError::InvalidToken(_) => "invalid_token",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::UnsupportedMediaType(_) => "unsupported_media_type",
            GatewayError::TooLarge(_) => "payload_too_large",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::Conflict(_) => "conflict",
            GatewayError::Gone(_) => "gone",
            GatewayError::TooManyRequests { .. } => "too_many_requests",
            GatewayError::Unavailable(_) => "service_unavailable",
            GatewayError::Full(_) => "insufficient_storage",
            GatewayError::QuotaExceeded(_) => "storage_limit_exceeded",
            GatewayError::Internal(_) => "internal_error",
        }
    }
}

impl From<UploadError> for GatewayError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Conflict { bucket, key } => {
                GatewayError::Conflict(format!("{bucket}/{key} was uploaded by another user"))
            }
            UploadError::NotFound(id) => GatewayError::NotFound(format!("upload {id} not found")),
            UploadError::AccessDenied(m) => GatewayError::Forbidden(m),
            UploadError::Meta(m)
            | UploadError::Store(StoreError::Meta(m))
            | UploadError::Stream(sluice_stream::StreamError::Meta(m)) => {
                GatewayError::from_meta(m)
            }
            UploadError::Store(e) => GatewayError::from(e),
            UploadError::Stream(e @ sluice_stream::StreamError::Unavailable(_)) => {
                GatewayError::Unavailable(e.to_string())
            }
            other => GatewayError::Internal(other.to_string()),
        }
    }
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchKey { bucket, key } => {
                GatewayError::NotFound(format!("object {bucket}/{key} not found"))
            }
            StoreError::Meta(m) => GatewayError::from_meta(m),
            e @ StoreError::Blobs(_) if e.is_unavailable() => {
                GatewayError::Unavailable(e.to_string())
            }
            e @ StoreError::Blobs(_) if e.is_full() => GatewayError::Full(e.to_string()),
            other => GatewayError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let plain = |message: String| ErrorBody {
            message,
            error: self.code().to_owned(),
            error_description: None,
        };
        let body = match &self {
            // API Gateway's body for a refused token, plus the reason.
            GatewayError::Unauthorized(_) | GatewayError::InvalidToken(_) => ErrorBody {
                error_description: Some(self.to_string()),
                ..plain("Unauthorized".into())
            },
            // Internal details go to the log, not to the client.
            GatewayError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                plain("Internal server error".into())
            }
            GatewayError::Unavailable(detail) | GatewayError::Full(detail) => {
                tracing::warn!(error = %detail, "request refused");
                plain(self.to_string())
            }
            _ => plain(self.to_string()),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let GatewayError::TooManyRequests {
            retry_after_secs, ..
        } = &self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        resp
    }
}
