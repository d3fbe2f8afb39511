//! Cognito user pools' JSON 1.1 protocol (`AWSCognitoIdentityProviderService.*`).

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use sluice_identity::{AuthOutcome, AuthTokens, Identity, IdentityError};

use crate::{json_error, json_ok};

pub const SERVICE: &str = "AWSCognitoIdentityProviderService";

pub async fn handle(identity: &Identity, op: &str, body: &[u8]) -> Response {
    let result = match op {
        "InitiateAuth" => initiate_auth(identity, body).await,
        "RespondToAuthChallenge" => respond_to_auth_challenge(identity, body).await,
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
    let (status, kind) = match &e {
        IdentityError::NotAuthorized(_) => (StatusCode::BAD_REQUEST, "NotAuthorizedException"),
        IdentityError::UserNotFound(_) => (StatusCode::BAD_REQUEST, "UserNotFoundException"),
        IdentityError::UsernameExists(_) => (StatusCode::BAD_REQUEST, "UsernameExistsException"),
        IdentityError::InvalidPassword(_) => (StatusCode::BAD_REQUEST, "InvalidPasswordException"),
        IdentityError::InvalidParameter(_) => {
            (StatusCode::BAD_REQUEST, "InvalidParameterException")
        }
        IdentityError::ResourceNotFound(_) => {
            (StatusCode::BAD_REQUEST, "ResourceNotFoundException")
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
    CognitoError {
        status,
        kind,
        message: e.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateAuthRequest {
    auth_flow: Option<String>,
    client_id: Option<String>,
    #[serde(default)]
    auth_parameters: HashMap<String, String>,
}

fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, CognitoError> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(&format!("1 validation error detected: Value at '{name}' failed to satisfy constraint: Member must not be null")))
}

fn auth_param<'a>(p: &'a HashMap<String, String>, name: &str) -> Result<&'a str, CognitoError> {
    p.get(name)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(&format!("Missing required parameter {name}")))
}

fn tokens_json(t: AuthTokens) -> serde_json::Value {
    let mut result = json!({
        "AccessToken": t.access_token,
        "ExpiresIn": t.expires_in,
        "IdToken": t.id_token,
        "TokenType": "Bearer",
    });
    if let Some(rt) = t.refresh_token {
        result["RefreshToken"] = json!(rt);
    }
    json!({"AuthenticationResult": result, "ChallengeParameters": {}})
}

async fn initiate_auth(identity: &Identity, body: &[u8]) -> OpResult {
    let req: InitiateAuthRequest = parse(body)?;
    let flow = required(&req.auth_flow, "authFlow")?;
    let client_id = required(&req.client_id, "clientId")?;
    match flow {
        "USER_PASSWORD_AUTH" => {
            let username = auth_param(&req.auth_parameters, "USERNAME")?;
            let password = auth_param(&req.auth_parameters, "PASSWORD")?;
            match identity
                .initiate_user_password(client_id, username, password)
                .await
                .map_err(cognito_error)?
            {
                AuthOutcome::Tokens(t) => Ok(tokens_json(t)),
                AuthOutcome::NewPasswordRequired {
                    session,
                    username,
                    email,
                } => Ok(json!({
                    "ChallengeName": "NEW_PASSWORD_REQUIRED",
                    "Session": session,
                    "ChallengeParameters": {
                        "USER_ID_FOR_SRP": username,
                        "requiredAttributes": "[]",
                        "userAttributes": json!({"email": email}).to_string(),
                    },
                })),
            }
        }
        "REFRESH_TOKEN_AUTH" | "REFRESH_TOKEN" => {
            let rt = auth_param(&req.auth_parameters, "REFRESH_TOKEN")?;
            let t = identity
                .initiate_refresh(client_id, rt)
                .await
                .map_err(cognito_error)?;
            Ok(tokens_json(t))
        }
        "USER_SRP_AUTH" | "CUSTOM_AUTH" | "USER_AUTH" => Err(invalid(&format!(
            "auth flow {flow} is not supported by this sluice version"
        ))),
        _ => Err(invalid(&format!(
            "1 validation error detected: Value '{flow}' at 'authFlow' failed to satisfy constraint: Member must satisfy enum value set"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RespondRequest {
    challenge_name: Option<String>,
    client_id: Option<String>,
    session: Option<String>,
    #[serde(default)]
    challenge_responses: HashMap<String, String>,
}

async fn respond_to_auth_challenge(identity: &Identity, body: &[u8]) -> OpResult {
    let req: RespondRequest = parse(body)?;
    let challenge = required(&req.challenge_name, "challengeName")?;
    let client_id = required(&req.client_id, "clientId")?;
    if challenge != "NEW_PASSWORD_REQUIRED" {
        return Err(invalid(&format!(
            "challenge {challenge} is not supported by this sluice version"
        )));
    }
    let session = required(&req.session, "session")?;
    let username = auth_param(&req.challenge_responses, "USERNAME")?;
    let new_password = auth_param(&req.challenge_responses, "NEW_PASSWORD")?;
    let t = identity
        .respond_new_password(client_id, session, username, new_password)
        .await
        .map_err(cognito_error)?;
    Ok(tokens_json(t))
}
