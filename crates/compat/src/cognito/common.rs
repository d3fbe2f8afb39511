//! What the Cognito operations share: their error and its mapping from identity errors,
//! request parsing and fields, attributes and times as Cognito shows them.

use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use sluice_identity::IdentityError;

use crate::json11::json_error;

/// A Cognito error: HTTP status, exception name (`__type`) and message.
#[derive(Debug)]
pub struct CognitoError {
    pub(super) status: StatusCode,
    pub(super) kind: &'static str,
    pub(super) message: String,
}

impl CognitoError {
    pub(super) fn bad_request(kind: &'static str, message: String) -> Self {
        CognitoError {
            status: StatusCode::BAD_REQUEST,
            kind,
            message,
        }
    }
}

impl From<IdentityError> for CognitoError {
    fn from(e: IdentityError) -> Self {
        cognito_error(e)
    }
}

pub(super) type OpResult = Result<serde_json::Value, CognitoError>;

pub(super) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, CognitoError> {
    serde_json::from_slice(body).map_err(|e| {
        CognitoError::bad_request(
            "SerializationException",
            format!("cannot parse request: {e}"),
        )
    })
}

pub(super) fn invalid(message: &str) -> CognitoError {
    CognitoError::bad_request("InvalidParameterException", message.to_owned())
}

/// Identity errors as a Cognito error response.
pub fn error_response(e: IdentityError) -> Response {
    let e = cognito_error(e);
    json_error(e.status, e.kind, &e.message)
}

/// Maps identity errors to Cognito's exception names, in one place.
pub(super) fn cognito_error(e: IdentityError) -> CognitoError {
    let kind = match &e {
        IdentityError::NotAuthorized(_) => "NotAuthorizedException",
        IdentityError::UserNotFound(_) => "UserNotFoundException",
        IdentityError::UsernameExists(_) => "UsernameExistsException",
        IdentityError::GroupExists(_) => "GroupExistsException",
        IdentityError::DuplicateProvider(_) => "DuplicateProviderException",
        IdentityError::InvalidPassword(_) => "InvalidPasswordException",
        IdentityError::InvalidParameter(_) => "InvalidParameterException",
        IdentityError::ResourceNotFound(_) => "ResourceNotFoundException",
        IdentityError::CodeMismatch(_) => "CodeMismatchException",
        IdentityError::ExpiredCode(_) => "ExpiredCodeException",
        IdentityError::UserNotConfirmed(_) => "UserNotConfirmedException",
        IdentityError::PasswordResetRequired(_) => "PasswordResetRequiredException",
        IdentityError::LimitExceeded(_) => "LimitExceededException",
        IdentityError::TooManyRequests(_) => "TooManyRequestsException",
        IdentityError::UnsupportedUserState(_) => "UnsupportedUserStateException",
        IdentityError::Unauthorized(_) => "UnauthorizedException",
        IdentityError::UnsupportedTokenType(_) => "UnsupportedTokenTypeException",
        IdentityError::EnableSoftwareTokenMfa(_) => "EnableSoftwareTokenMFAException",
        IdentityError::SoftwareTokenMfaNotFound(_) => "SoftwareTokenMFANotFoundException",
        IdentityError::UserLambdaValidation(_) => "UserLambdaValidationException",
        IdentityError::InvalidLambdaResponse(_) => "InvalidLambdaResponseException",
        IdentityError::UnexpectedLambda(_) => "UnexpectedLambdaException",
        IdentityError::Meta(m) => {
            if let Some(message) = crate::json11::unavailable(m) {
                return CognitoError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: "ServiceUnavailable",
                    message,
                };
            }
            tracing::error!(error = %m, "cognito request failed");
            return CognitoError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "InternalErrorException",
                message: "internal error".into(),
            };
        }
        // Only the OAuth endpoints make these; a JSON operation never does.
        IdentityError::OAuth { .. } => "InvalidParameterException",
        IdentityError::Backend(detail) => {
            tracing::error!(error = %detail, "cognito request failed");
            return CognitoError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "InternalErrorException",
                message: "internal error".into(),
            };
        }
    };
    CognitoError::bad_request(kind, e.to_string())
}

pub(super) fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, CognitoError> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(&format!("1 validation error detected: Value at '{name}' failed to satisfy constraint: Member must not be null")))
}

pub(super) fn param<'a>(
    p: &'a HashMap<String, String>,
    name: &str,
) -> Result<&'a str, CognitoError> {
    p.get(name)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(&format!("Missing required parameter {name}")))
}

/// `[{"Name","Value"}]`, as Cognito lists attributes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct AttributeType {
    pub(super) name: String,
    #[serde(default)]
    pub(super) value: Option<String>,
}

pub(super) fn attribute_map(list: Vec<AttributeType>) -> BTreeMap<String, String> {
    list.into_iter()
        .map(|a| (a.name, a.value.unwrap_or_default()))
        .collect()
}

pub(super) fn attribute_list(sub: &str, attrs: &BTreeMap<String, String>) -> serde_json::Value {
    let mut list = vec![json!({"Name": "sub", "Value": sub})];
    list.extend(attrs.iter().map(|(k, v)| json!({"Name": k, "Value": v})));
    serde_json::Value::Array(list)
}

/// Epoch seconds, as JSON 1.1 timestamps.
pub(super) fn epoch(ms: i64) -> serde_json::Value {
    json!(ms as f64 / 1000.0)
}

/// `UserMFASettingList` and `PreferredMfaSetting` (AdminGetUser, GetUser), present only
/// when the user has a factor on, as Cognito answers.
pub(super) fn add_mfa_fields(v: &mut serde_json::Value, u: &sluice_identity::UserRecord) {
    if !u.mfa_factors.is_empty() {
        v["UserMFASettingList"] = json!(u.mfa_factors);
    }
    if let Some(p) = &u.preferred_mfa {
        v["PreferredMfaSetting"] = json!(p);
    }
}

pub(super) fn delivery_json(d: &sluice_identity::CodeDelivery) -> serde_json::Value {
    json!({
        "Destination": d.destination,
        "DeliveryMedium": d.medium,
        "AttributeName": d.attribute,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_errors_map_to_cognito_exceptions() {
        let e = cognito_error(IdentityError::CodeMismatch("m".into()));
        assert_eq!(
            (e.status, e.kind),
            (StatusCode::BAD_REQUEST, "CodeMismatchException")
        );
        let e = cognito_error(IdentityError::Backend("disk on fire".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            e.message, "internal error",
            "backend details stay in the log"
        );
    }
}
