//! Cognito user pools' JSON 1.1 protocol (`AWSCognitoIdentityProviderService.*`).
//!
//! Operations that AWS only accepts with IAM credentials (pool and client management and
//! every `Admin*` operation, plus ListUsers) are refused to [`Caller::Anonymous`] callers
//! with `MissingAuthenticationTokenException`; the others are public, as in Cognito.

use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use sluice_identity::{Identity, IdentityError};

use crate::{json_error, json_ok};

mod admin;
mod auth;

pub const SERVICE: &str = "AWSCognitoIdentityProviderService";

/// How the request was authenticated at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Signed with a valid access key (SigV4).
    Signed,
    /// No (valid) signature.
    Anonymous,
}

/// Operations that need IAM credentials on AWS.
const SIGNED_ONLY: &[&str] = &[
    "CreateUserPool",
    "DescribeUserPool",
    "ListUserPools",
    "UpdateUserPool",
    "DeleteUserPool",
    "CreateUserPoolClient",
    "DescribeUserPoolClient",
    "ListUserPoolClients",
    "UpdateUserPoolClient",
    "DeleteUserPoolClient",
    "AdminCreateUser",
    "AdminSetUserPassword",
    "AdminGetUser",
    "AdminDeleteUser",
    "AdminDisableUser",
    "AdminEnableUser",
    "AdminUpdateUserAttributes",
    "AdminConfirmSignUp",
    "AdminUserGlobalSignOut",
    "AdminInitiateAuth",
    "AdminRespondToAuthChallenge",
    "ListUsers",
];

pub async fn handle(identity: &Identity, op: &str, body: &[u8], caller: Caller) -> Response {
    if caller == Caller::Anonymous && SIGNED_ONLY.contains(&op) {
        return json_error(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationTokenException",
            "Request is missing Authentication Token",
        );
    }
    let result = match op {
        "InitiateAuth" => auth::initiate_auth(identity, body).await,
        "RespondToAuthChallenge" => auth::respond_to_auth_challenge(identity, body).await,
        "AdminInitiateAuth" => auth::admin_initiate_auth(identity, body).await,
        "AdminRespondToAuthChallenge" => {
            auth::admin_respond_to_auth_challenge(identity, body).await
        }
        "SignUp" => auth::sign_up(identity, body).await,
        "ConfirmSignUp" => auth::confirm_sign_up(identity, body).await,
        "ResendConfirmationCode" => auth::resend_confirmation_code(identity, body).await,
        "ForgotPassword" => auth::forgot_password(identity, body).await,
        "ConfirmForgotPassword" => auth::confirm_forgot_password(identity, body).await,
        "ChangePassword" => auth::change_password(identity, body).await,
        "GetUser" => auth::get_user(identity, body).await,
        "UpdateUserAttributes" => auth::update_user_attributes(identity, body).await,
        "GetUserAttributeVerificationCode" => {
            auth::get_user_attribute_verification_code(identity, body).await
        }
        "VerifyUserAttribute" => auth::verify_user_attribute(identity, body).await,
        "GlobalSignOut" => auth::global_sign_out(identity, body).await,
        "RevokeToken" => auth::revoke_token(identity, body).await,
        "CreateUserPool" => admin::create_user_pool(identity, body).await,
        "DescribeUserPool" => admin::describe_user_pool(identity, body).await,
        "ListUserPools" => admin::list_user_pools(identity, body).await,
        "UpdateUserPool" => admin::update_user_pool(identity, body).await,
        "DeleteUserPool" => admin::delete_user_pool(identity, body).await,
        "CreateUserPoolClient" => admin::create_user_pool_client(identity, body).await,
        "DescribeUserPoolClient" => admin::describe_user_pool_client(identity, body).await,
        "ListUserPoolClients" => admin::list_user_pool_clients(identity, body).await,
        "UpdateUserPoolClient" => admin::update_user_pool_client(identity, body).await,
        "DeleteUserPoolClient" => admin::delete_user_pool_client(identity, body).await,
        "AdminCreateUser" => admin::admin_create_user(identity, body).await,
        "AdminSetUserPassword" => admin::admin_set_user_password(identity, body).await,
        "AdminGetUser" => admin::admin_get_user(identity, body).await,
        "AdminDeleteUser" => admin::admin_delete_user(identity, body).await,
        "AdminDisableUser" => admin::admin_set_enabled(identity, body, false).await,
        "AdminEnableUser" => admin::admin_set_enabled(identity, body, true).await,
        "AdminUpdateUserAttributes" => admin::admin_update_user_attributes(identity, body).await,
        "AdminConfirmSignUp" => admin::admin_confirm_sign_up(identity, body).await,
        "AdminUserGlobalSignOut" => admin::admin_user_global_sign_out(identity, body).await,
        "ListUsers" => admin::list_users(identity, body).await,
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                &format!("operation {op} is not supported by sluice's Cognito endpoint"),
            );
        }
    };
    match result {
        Ok(v) => json_ok(v),
        Err(e) => json_error(e.status, e.kind, &e.message),
    }
}

/// A Cognito error: HTTP status, exception name (`__type`) and message.
#[derive(Debug)]
pub struct CognitoError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl CognitoError {
    fn bad_request(kind: &'static str, message: String) -> Self {
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

type OpResult = Result<serde_json::Value, CognitoError>;

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, CognitoError> {
    serde_json::from_slice(body).map_err(|e| {
        CognitoError::bad_request(
            "SerializationException",
            format!("cannot parse request: {e}"),
        )
    })
}

fn invalid(message: &str) -> CognitoError {
    CognitoError::bad_request("InvalidParameterException", message.to_owned())
}

/// Identity errors as a Cognito error response.
pub fn error_response(e: IdentityError) -> Response {
    let e = cognito_error(e);
    json_error(e.status, e.kind, &e.message)
}

/// Maps identity errors to Cognito's exception names, in one place.
fn cognito_error(e: IdentityError) -> CognitoError {
    let kind = match &e {
        IdentityError::NotAuthorized(_) => "NotAuthorizedException",
        IdentityError::UserNotFound(_) => "UserNotFoundException",
        IdentityError::UsernameExists(_) => "UsernameExistsException",
        IdentityError::InvalidPassword(_) => "InvalidPasswordException",
        IdentityError::InvalidParameter(_) => "InvalidParameterException",
        IdentityError::ResourceNotFound(_) => "ResourceNotFoundException",
        IdentityError::CodeMismatch(_) => "CodeMismatchException",
        IdentityError::ExpiredCode(_) => "ExpiredCodeException",
        IdentityError::UserNotConfirmed(_) => "UserNotConfirmedException",
        IdentityError::PasswordResetRequired(_) => "PasswordResetRequiredException",
        IdentityError::LimitExceeded(_) => "LimitExceededException",
        IdentityError::UnsupportedUserState(_) => "UnsupportedUserStateException",
        IdentityError::Unauthorized(_) => "UnauthorizedException",
        IdentityError::UnsupportedTokenType(_) => "UnsupportedTokenTypeException",
        IdentityError::Meta(m) => {
            if let Some(message) = crate::unavailable(m) {
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

fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, CognitoError> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(&format!("1 validation error detected: Value at '{name}' failed to satisfy constraint: Member must not be null")))
}

fn param<'a>(p: &'a HashMap<String, String>, name: &str) -> Result<&'a str, CognitoError> {
    p.get(name)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(&format!("Missing required parameter {name}")))
}

/// `[{"Name","Value"}]`, as Cognito lists attributes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AttributeType {
    name: String,
    #[serde(default)]
    value: Option<String>,
}

fn attribute_map(list: Vec<AttributeType>) -> BTreeMap<String, String> {
    list.into_iter()
        .map(|a| (a.name, a.value.unwrap_or_default()))
        .collect()
}

fn attribute_list(sub: &str, attrs: &BTreeMap<String, String>) -> serde_json::Value {
    let mut list = vec![json!({"Name": "sub", "Value": sub})];
    list.extend(attrs.iter().map(|(k, v)| json!({"Name": k, "Value": v})));
    serde_json::Value::Array(list)
}

/// Epoch seconds, as JSON 1.1 timestamps.
fn epoch(ms: i64) -> serde_json::Value {
    json!(ms as f64 / 1000.0)
}

fn delivery_json(d: &sluice_identity::CodeDelivery) -> serde_json::Value {
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
        for (op, signed_only) in [
            ("AdminGetUser", true),
            ("ListUsers", true),
            ("SignUp", false),
        ] {
            assert_eq!(SIGNED_ONLY.contains(&op), signed_only, "{op}");
        }
    }
}
