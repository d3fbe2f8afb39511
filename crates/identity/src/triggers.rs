//! Cognito's Lambda triggers: a pool's `LambdaConfig` names functions that sluice runs at
//! points of the user's life, with Cognito's event JSON (`version`, `triggerSource`,
//! `region`, `userPoolId`, `userName`, `callerContext`, `request`, `response`).
//!
//! Which run, and where:
//! - **PreSignUp** (`PreSignUp_SignUp`, `PreSignUp_AdminCreateUser`) before the user is
//!   stored: `autoConfirmUser` (sign-up only: no confirmation code is sent),
//!   `autoVerifyEmail`, `autoVerifyPhone`.
//! - **PostConfirmation** (`PostConfirmation_ConfirmSignUp`,
//!   `PostConfirmation_ConfirmForgotPassword`) after the confirmation is stored.
//! - **PreAuthentication** (`PreAuthentication_Authentication`) once the password is found
//!   right, before the user's state is looked at; **PostAuthentication**
//!   (`PostAuthentication_Authentication`) before the tokens of a sign-in (after its second
//!   factor), not on refresh.
//! - **PreTokenGeneration** (`TokenGeneration_Authentication`,
//!   `TokenGeneration_RefreshTokens`), events of version 1 (claims of the ID token) or, with
//!   `PreTokenGenerationConfig.LambdaVersion` `V2_0`, version 2 (ID and access token claims,
//!   scopes); both may override the groups.
//!
//! A function that throws fails the operation with `UserLambdaValidationException`
//! "`<Trigger>` failed with error `<message>`.", as Cognito; a function that does not answer
//! within 5 seconds likewise; a function that does not exist, or a deployment without
//! functions, is `UnexpectedLambdaException`; an answer of the wrong shape is
//! `InvalidLambdaResponseException`. The custom auth challenge triggers are run by
//! `custom_auth.rs`, UserMigration by `users.rs` (`migrate_user`: at a password sign-in
//! or ForgotPassword naming a user the pool does not know), CustomMessage by `users.rs`
//! (`compose_messages`: a pool's messages are held in the outbox until the trigger wrote
//! them). Not run yet: the custom sender triggers; a pool configured with one is refused ([`LambdaConfig::check`]), so that no
//! pool silently skips a trigger.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Identity, IdentityError};

/// How long a trigger may take, as Cognito (5 seconds).
pub const TRIGGER_TIMEOUT: Duration = Duration::from_secs(5);

/// `ClientId` of the events of operations no app client makes (AdminCreateUser, …).
pub const NO_CLIENT: &str = "CLIENT_ID_NOT_APPLICABLE";

/// `PreTokenGenerationConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PreTokenGenerationConfig {
    pub lambda_version: String,
    pub lambda_arn: String,
}

/// A pool's `LambdaConfig` (function ARNs by trigger).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LambdaConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_sign_up: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_confirmation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_authentication: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_authentication: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub define_auth_challenge: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_auth_challenge: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_auth_challenge_response: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_token_generation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_token_generation_config: Option<PreTokenGenerationConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_migration: Option<String>,
    #[serde(rename = "CustomSMSSender", skip_serializing_if = "Option::is_none")]
    pub custom_sms_sender: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_email_sender: Option<Value>,
    #[serde(rename = "KMSKeyID", skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

impl LambdaConfig {
    /// Refuses triggers sluice does not run yet, so that a pool never silently skips one
    /// its owner counts on; checks the ARNs' shape.
    pub fn check(&self) -> Result<(), IdentityError> {
        let not_yet = [
            ("CustomSMSSender", self.custom_sms_sender.is_some()),
            ("CustomEmailSender", self.custom_email_sender.is_some()),
        ];
        if let Some((name, _)) = not_yet.iter().find(|(_, set)| *set) {
            return Err(IdentityError::InvalidParameter(format!(
                "the {name} trigger is not supported by this sluice version (PreSignUp, CustomMessage, PostConfirmation, PreAuthentication, PostAuthentication, PreTokenGeneration, UserMigration and the custom auth challenge triggers are)"
            )));
        }
        if let Some(c) = &self.pre_token_generation_config {
            if !["V1_0", "V2_0", "V3_0"].contains(&c.lambda_version.as_str()) {
                return Err(IdentityError::InvalidParameter(format!(
                    "1 validation error detected: Value '{}' at 'lambdaConfig.preTokenGenerationConfig.lambdaVersion' failed to satisfy constraint: Member must satisfy enum value set: [V1_0, V2_0, V3_0]",
                    c.lambda_version
                )));
            }
            if let Some(arn) = &self.pre_token_generation
                && *arn != c.lambda_arn
            {
                return Err(IdentityError::InvalidParameter(
                    "PreTokenGeneration and PreTokenGenerationConfig.LambdaArn must name the same function".into(),
                ));
            }
        }
        for arn in [
            &self.pre_sign_up,
            &self.post_confirmation,
            &self.pre_authentication,
            &self.post_authentication,
            &self.pre_token_generation,
            &self.define_auth_challenge,
            &self.create_auth_challenge,
            &self.verify_auth_challenge_response,
            &self.user_migration,
            &self.custom_message,
        ]
        .into_iter()
        .flatten()
        .chain(
            self.pre_token_generation_config
                .iter()
                .map(|c| &c.lambda_arn),
        ) {
            if !arn.starts_with("arn:aws:lambda:") || arn.len() > 2048 {
                return Err(IdentityError::InvalidParameter(format!(
                    "Invalid Lambda function ARN {arn:?}"
                )));
            }
        }
        Ok(())
    }

    /// The PreTokenGeneration function and its event version (`"1"` or `"2"`).
    fn token_generation(&self) -> Option<(&str, &'static str)> {
        match &self.pre_token_generation_config {
            Some(c) if !c.lambda_arn.is_empty() => Some((
                c.lambda_arn.as_str(),
                if c.lambda_version == "V1_0" { "1" } else { "2" },
            )),
            _ => self.pre_token_generation.as_deref().map(|a| (a, "1")),
        }
    }
}

/// What a caller hands the pool's triggers (`ClientMetadata`, SignUp's `ValidationData`).
#[derive(Debug, Clone, Default)]
pub struct TriggerData {
    pub client_metadata: BTreeMap<String, String>,
    pub validation_data: BTreeMap<String, String>,
}

/// How a trigger's function failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerFailure {
    /// The function threw: its `errorMessage`.
    Failed(String),
    /// No answer within [`TRIGGER_TIMEOUT`].
    Timeout,
    /// It could not be run (no such function, no functions in this deployment, …).
    Unavailable(String),
}

/// Runs trigger functions: the functions runtime, given to [`Identity::set_trigger_runner`]
/// by the binary (identity knows nothing of how functions run).
#[async_trait::async_trait]
pub trait TriggerRunner: Send + Sync {
    /// Invokes the function `arn` with `event` and returns its result.
    async fn run(&self, arn: &str, event: Value) -> Result<Value, TriggerFailure>;
}

/// The events' `userAttributes`: the user's attributes with `sub` (developer-only ones
/// left out).
pub(crate) fn event_attributes(sub: &str, attrs: &BTreeMap<String, String>) -> Value {
    let mut m: serde_json::Map<String, Value> = attrs
        .iter()
        .filter(|(k, _)| !k.starts_with("dev:"))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if !sub.is_empty() {
        m.insert("sub".into(), json!(sub));
    }
    Value::Object(m)
}

/// What PreTokenGeneration asked for.
#[derive(Debug, Clone, Default)]
pub struct TokenOverrides {
    pub id_add: serde_json::Map<String, Value>,
    pub id_suppress: Vec<String>,
    pub access_add: serde_json::Map<String, Value>,
    pub access_suppress: Vec<String>,
    pub scopes_add: Vec<String>,
    pub scopes_suppress: Vec<String>,
    pub groups: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    pub preferred_role: Option<String>,
}

/// Claims a trigger may neither add, override nor suppress (Cognito's list).
const PROTECTED: &[&str] = &[
    "acr",
    "amr",
    "aud",
    "auth_time",
    "azp",
    "client_id",
    "cognito:username",
    "event_id",
    "exp",
    "iat",
    "identities",
    "iss",
    "jti",
    "nbf",
    "nonce",
    "origin_jti",
    "scope",
    "sub",
    "token_use",
    "username",
    "at_hash",
];

fn bad_response(trigger: &str, what: &str) -> IdentityError {
    IdentityError::InvalidLambdaResponse(format!("Invalid {trigger} response: {what}"))
}

fn claims_part(
    v: &Value,
    trigger: &str,
) -> Result<(serde_json::Map<String, Value>, Vec<String>), IdentityError> {
    let add = match v.get("claimsToAddOrOverride") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(bad_response(
                trigger,
                "claimsToAddOrOverride is not an object",
            ));
        }
    };
    let suppress = strings(v.get("claimsToSuppress"), trigger, "claimsToSuppress")?;
    for k in add.keys().chain(suppress.iter()) {
        if PROTECTED.contains(&k.as_str()) || k.starts_with("cognito:") {
            return Err(bad_response(
                trigger,
                &format!("the claim {k} cannot be added, overridden or suppressed"),
            ));
        }
    }
    Ok((add, suppress))
}

fn strings(v: Option<&Value>, trigger: &str, name: &str) -> Result<Vec<String>, IdentityError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad_response(trigger, &format!("{name} holds a non-string")))
            })
            .collect(),
        Some(_) => Err(bad_response(trigger, &format!("{name} is not a list"))),
    }
}

/// Reads PreTokenGeneration's `response` (version 1 or 2).
pub(crate) fn token_overrides(
    response: &Value,
    version: &str,
) -> Result<TokenOverrides, IdentityError> {
    const T: &str = "PreTokenGeneration";
    let mut o = TokenOverrides::default();
    let details = if version == "1" {
        response.get("claimsOverrideDetails")
    } else {
        response.get("claimsAndScopeOverrideDetails")
    };
    let Some(details) = details.filter(|d| !d.is_null()) else {
        return Ok(o);
    };
    if version == "1" {
        (o.id_add, o.id_suppress) = claims_part(details, T)?;
    } else {
        if let Some(id) = details.get("idTokenGeneration").filter(|v| !v.is_null()) {
            (o.id_add, o.id_suppress) = claims_part(id, T)?;
        }
        if let Some(access) = details
            .get("accessTokenGeneration")
            .filter(|v| !v.is_null())
        {
            (o.access_add, o.access_suppress) = claims_part(access, T)?;
            o.scopes_add = strings(access.get("scopesToAdd"), T, "scopesToAdd")?;
            o.scopes_suppress = strings(access.get("scopesToSuppress"), T, "scopesToSuppress")?;
        }
    }
    if let Some(g) = details.get("groupOverrideDetails").filter(|v| !v.is_null()) {
        if g.get("groupsToOverride").is_some_and(|v| !v.is_null()) {
            o.groups = Some(strings(g.get("groupsToOverride"), T, "groupsToOverride")?);
        }
        if g.get("iamRolesToOverride").is_some_and(|v| !v.is_null()) {
            o.roles = Some(strings(
                g.get("iamRolesToOverride"),
                T,
                "iamRolesToOverride",
            )?);
        }
        o.preferred_role = g
            .get("preferredRole")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    Ok(o)
}

/// One trigger to run: its name (for errors), source and the event's variable parts.
pub(crate) struct Call<'a> {
    pub(crate) trigger: &'static str,
    pub(crate) source: &'static str,
    pub(crate) version: &'static str,
    pub(crate) pool_id: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) username: &'a str,
    pub(crate) request: Value,
    pub(crate) response: Value,
}

impl Identity {
    /// Gives the identity service the functions runtime its triggers run on.
    pub fn set_trigger_runner(&self, runner: Arc<dyn TriggerRunner>) {
        if let Ok(mut r) = self.triggers.write() {
            *r = Some(runner);
        }
    }

    /// The function of `pick` in the pool's `LambdaConfig`, if any.
    pub(crate) async fn trigger_of(
        &self,
        pool_id: &str,
        pick: fn(&LambdaConfig) -> Option<(String, &'static str)>,
    ) -> Result<Option<(String, &'static str)>, IdentityError> {
        let p = pool_id.to_owned();
        let settings = self
            .db
            .read(move |c| crate::pools::pool_settings(c, &p))
            .await?;
        Ok(settings.lambda_config.as_ref().and_then(pick))
    }

    /// Runs a trigger function and returns its `response` object.
    pub(crate) async fn run_trigger(
        &self,
        arn: &str,
        call: Call<'_>,
    ) -> Result<Value, IdentityError> {
        let runner = self.triggers.read().ok().and_then(|r| r.clone());
        let Some(runner) = runner else {
            return Err(IdentityError::UnexpectedLambda(format!(
                "{} invocation failed: this sluice process runs no functions",
                call.trigger
            )));
        };
        let region = call.pool_id.split_once('_').map_or("", |(r, _)| r);
        let event = json!({
            "version": call.version,
            "triggerSource": call.source,
            "region": region,
            "userPoolId": call.pool_id,
            "userName": call.username,
            "callerContext": {
                "awsSdkVersion": "aws-sdk-unknown-unknown",
                "clientId": call.client_id,
            },
            "request": call.request,
            "response": call.response,
        });
        let outcome = tokio::time::timeout(TRIGGER_TIMEOUT, runner.run(arn, event)).await;
        let result = match outcome {
            Err(_) | Ok(Err(TriggerFailure::Timeout)) => {
                return Err(IdentityError::UserLambdaValidation(format!(
                    "{} failed with error Task timed out after {}.00 seconds.",
                    call.trigger,
                    TRIGGER_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(TriggerFailure::Failed(m))) => {
                return Err(IdentityError::UserLambdaValidation(format!(
                    "{} failed with error {m}.",
                    call.trigger
                )));
            }
            Ok(Err(TriggerFailure::Unavailable(m))) => {
                return Err(IdentityError::UnexpectedLambda(format!(
                    "{} invocation failed: {m}",
                    call.trigger
                )));
            }
            Ok(Ok(v)) => v,
        };
        match result.get("response") {
            None | Some(Value::Null) => Ok(json!({})),
            Some(r @ Value::Object(_)) => Ok(r.clone()),
            Some(_) => Err(bad_response(call.trigger, "response is not an object")),
        }
    }

    /// PreSignUp: `(autoConfirmUser, autoVerifyEmail, autoVerifyPhone)`, all false when the
    /// pool has no such trigger.
    pub(crate) async fn pre_sign_up(
        &self,
        pool_id: &str,
        client_id: &str,
        username: &str,
        admin: bool,
        attributes: &BTreeMap<String, String>,
        data: &TriggerData,
    ) -> Result<(bool, bool, bool), IdentityError> {
        let Some((arn, _)) = self
            .trigger_of(pool_id, |l| l.pre_sign_up.clone().map(|a| (a, "1")))
            .await?
        else {
            return Ok((false, false, false));
        };
        let r = self
            .run_trigger(
                &arn,
                Call {
                    trigger: "PreSignUp",
                    source: if admin {
                        "PreSignUp_AdminCreateUser"
                    } else {
                        "PreSignUp_SignUp"
                    },
                    version: "1",
                    pool_id,
                    client_id,
                    username,
                    request: json!({
                        "userAttributes": event_attributes("", attributes),
                        "validationData": data.validation_data,
                        "clientMetadata": data.client_metadata,
                    }),
                    response: json!({
                        "autoConfirmUser": false,
                        "autoVerifyEmail": false,
                        "autoVerifyPhone": false,
                    }),
                },
            )
            .await?;
        let flag = |k: &str| -> Result<bool, IdentityError> {
            match r.get(k) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(bad_response("PreSignUp", &format!("{k} is not a boolean"))),
            }
        };
        Ok((
            flag("autoConfirmUser")?,
            flag("autoVerifyEmail")?,
            flag("autoVerifyPhone")?,
        ))
    }

    /// A trigger whose answer only matters for failing (PostConfirmation,
    /// PreAuthentication, PostAuthentication).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn notify_trigger(
        &self,
        pool_id: &str,
        client_id: &str,
        username: &str,
        pick: fn(&LambdaConfig) -> Option<(String, &'static str)>,
        trigger: &'static str,
        source: &'static str,
        request: Value,
    ) -> Result<(), IdentityError> {
        let Some((arn, _)) = self.trigger_of(pool_id, pick).await? else {
            return Ok(());
        };
        self.run_trigger(
            &arn,
            Call {
                trigger,
                source,
                version: "1",
                pool_id,
                client_id,
                username,
                request,
                response: json!({}),
            },
        )
        .await
        .map(|_| ())
    }

    /// PreTokenGeneration: what to change in the tokens about to be issued.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn pre_token_generation(
        &self,
        pool_id: &str,
        client_id: &str,
        username: &str,
        sub: &str,
        attributes: &BTreeMap<String, String>,
        groups: &crate::groups::GroupClaims,
        source: &'static str,
        scopes: &[String],
    ) -> Result<TokenOverrides, IdentityError> {
        let Some((arn, version)) = self
            .trigger_of(pool_id, |l| {
                l.token_generation().map(|(a, v)| (a.to_owned(), v))
            })
            .await?
        else {
            return Ok(TokenOverrides::default());
        };
        let mut request = json!({
            "userAttributes": event_attributes(sub, attributes),
            "groupConfiguration": {
                "groupsToOverride": groups.groups,
                "iamRolesToOverride": groups.roles,
                "preferredRole": groups.preferred_role,
            },
            "clientMetadata": {},
        });
        if version == "2" {
            request["scopes"] = json!(scopes);
        }
        let response = if version == "1" {
            json!({"claimsOverrideDetails": null})
        } else {
            json!({"claimsAndScopeOverrideDetails": null})
        };
        let r = self
            .run_trigger(
                &arn,
                Call {
                    trigger: "PreTokenGeneration",
                    source,
                    version,
                    pool_id,
                    client_id,
                    username,
                    request,
                    response,
                },
            )
            .await?;
        token_overrides(&r, version)
    }
}

/// A CustomMessage answer as `(subject, body)` for a message to `to` carrying `code`:
/// the message for the medium (`emailMessage` for an address, `smsMessage` otherwise), which
/// must hold `{####}` (and `{username}` in an invitation), with them replaced; Cognito's
/// default text where the trigger gave none.
pub(crate) fn custom_message(
    response: &Value,
    to: &str,
    kind: &str,
    code: &str,
    username: &str,
) -> Result<(Option<String>, Option<String>), IdentityError> {
    let text = |k: &str| -> Result<Option<String>, IdentityError> {
        match response.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad_response(
                "CustomMessage",
                &format!("{k} is not a string"),
            )),
        }
    };
    let body = if to.contains('@') {
        text("emailMessage")?
    } else {
        text("smsMessage")?
    };
    let subject = text("emailSubject")?;
    let Some(body) = body else {
        return Ok((subject, None));
    };
    if !body.contains("{####}") {
        return Err(bad_response(
            "CustomMessage",
            "the message does not contain the code parameter {####}",
        ));
    }
    if kind == "invitation" && !body.contains("{username}") {
        return Err(bad_response(
            "CustomMessage",
            "the invitation does not contain the username parameter {username}",
        ));
    }
    if body.chars().count() > 20_000 {
        return Err(bad_response(
            "CustomMessage",
            "the message is longer than 20,000 characters",
        ));
    }
    let body = body.replace("{####}", code).replace("{username}", username);
    Ok((subject, Some(body)))
}

/// `userAttributes` of PostConfirmation and the authentication triggers: with the user's
/// status, as Cognito adds it.
pub(crate) fn with_status(sub: &str, attrs: &BTreeMap<String, String>, status: &str) -> Value {
    let mut v = event_attributes(sub, attrs);
    v["cognito:user_status"] = json!(status);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_triggers_and_bad_arns_are_refused() {
        let ok = LambdaConfig {
            pre_sign_up: Some("arn:aws:lambda:us-east-2:000000000000:function:f".into()),
            ..LambdaConfig::default()
        };
        ok.check().expect("valid");
        let custom = LambdaConfig {
            custom_sms_sender: Some(json!({
                "LambdaVersion": "V1_0",
                "LambdaArn": "arn:aws:lambda:us-east-2:000000000000:function:f",
            })),
            ..LambdaConfig::default()
        };
        assert!(custom.check().is_err());
        let bad = LambdaConfig {
            post_confirmation: Some("not-an-arn".into()),
            ..LambdaConfig::default()
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn token_overrides_of_both_versions() {
        let v1 = token_overrides(
            &json!({"claimsOverrideDetails": {
                "claimsToAddOrOverride": {"tenant": "acme"},
                "claimsToSuppress": ["email"],
                "groupOverrideDetails": {"groupsToOverride": ["a", "b"]},
            }}),
            "1",
        )
        .expect("v1");
        assert_eq!(v1.id_add["tenant"], "acme");
        assert_eq!(v1.id_suppress, vec!["email"]);
        assert_eq!(v1.groups, Some(vec!["a".to_owned(), "b".to_owned()]));
        let v2 = token_overrides(
            &json!({"claimsAndScopeOverrideDetails": {
                "accessTokenGeneration": {
                    "claimsToAddOrOverride": {"plan": "pro"},
                    "scopesToAdd": ["api/read"],
                    "scopesToSuppress": ["aws.cognito.signin.user.admin"],
                },
            }}),
            "2",
        )
        .expect("v2");
        assert_eq!(v2.access_add["plan"], "pro");
        assert_eq!(v2.scopes_add, vec!["api/read"]);
        assert!(
            token_overrides(
                &json!({"claimsOverrideDetails": {"claimsToAddOrOverride": {"sub": "x"}}}),
                "1"
            )
            .is_err(),
            "protected claims stay"
        );
        assert!(
            token_overrides(&json!({}), "1")
                .expect("none")
                .id_add
                .is_empty()
        );
    }

    /// Records each event and answers by the `triggerSource` it is given.
    struct Fake {
        events: std::sync::Mutex<Vec<Value>>,
        answer: fn(&Value) -> Result<Value, TriggerFailure>,
    }

    #[async_trait::async_trait]
    impl TriggerRunner for Fake {
        async fn run(&self, arn: &str, event: Value) -> Result<Value, TriggerFailure> {
            assert!(arn.ends_with(":function:fake"), "{arn}");
            if let Ok(mut e) = self.events.lock() {
                e.push(event.clone());
            }
            (self.answer)(&event)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_cognitos_and_failures_are_its_errors() {
        let (id, info, _engines) = crate::test_support::identity();
        let pool = info.pool_id.as_str();
        let arn = "arn:aws:lambda:us-east-2:000000000000:function:fake".to_owned();
        id.update_pool(
            pool,
            crate::pools::PoolUpdate {
                lambda_config: Some(LambdaConfig {
                    pre_sign_up: Some(arn.clone()),
                    pre_token_generation: Some(arn.clone()),
                    ..LambdaConfig::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("triggers");
        // No runner: the operation fails, it is not let through.
        assert!(matches!(
            id.sign_up(
                &info.client_id,
                "a@example.com",
                "Passw0rd!",
                BTreeMap::new(),
                None
            )
            .await,
            Err(IdentityError::UnexpectedLambda(_))
        ));
        let fake = Arc::new(Fake {
            events: Default::default(),
            answer: |e| match e["request"]["userAttributes"]["email"].as_str() {
                Some("boom@example.com") => Err(TriggerFailure::Failed("nope".into())),
                Some("gone@example.com") => Err(TriggerFailure::Unavailable("missing".into())),
                Some("slow@example.com") => Err(TriggerFailure::Timeout),
                _ => {
                    let mut e = e.clone();
                    if e["triggerSource"] == "PreSignUp_SignUp" {
                        e["response"]["autoConfirmUser"] = json!(true);
                    } else {
                        e["response"]["claimsOverrideDetails"] =
                            json!({"claimsToAddOrOverride": {"tier": "gold"}});
                    }
                    Ok(e)
                }
            },
        });
        id.set_trigger_runner(fake.clone());
        let (rec, delivery) = id
            .sign_up(
                &info.client_id,
                "a@example.com",
                "Passw0rd!",
                BTreeMap::new(),
                None,
            )
            .await
            .expect("sign up");
        assert_eq!(rec.status, "CONFIRMED");
        assert!(delivery.is_none(), "no code for an auto-confirmed user");
        let t = match id
            .initiate_user_password(&info.client_id, "a@example.com", "Passw0rd!", None)
            .await
            .expect("sign in")
        {
            crate::AuthOutcome::Tokens(t) => t,
            _ => panic!("tokens"),
        };
        let claims = crate::tokens::unverified_payload(&t.id_token).expect("claims");
        assert_eq!(claims["tier"], "gold");
        let events = fake.events.lock().expect("events").clone();
        let first = &events[0];
        assert_eq!(first["version"], "1");
        assert_eq!(first["triggerSource"], "PreSignUp_SignUp");
        assert_eq!(first["userPoolId"], pool);
        assert_eq!(first["region"], "us-east-2");
        assert_eq!(first["callerContext"]["clientId"], info.client_id.as_str());
        assert_eq!(first["request"]["userAttributes"]["email"], "a@example.com");
        assert_eq!(events[1]["triggerSource"], "TokenGeneration_Authentication");
        assert_eq!(
            events[1]["request"]["userAttributes"]["sub"],
            rec.sub.as_str()
        );

        for (email, want) in [
            ("boom@example.com", "PreSignUp failed with error nope."),
            (
                "slow@example.com",
                "PreSignUp failed with error Task timed out after 5.00 seconds.",
            ),
        ] {
            match id
                .sign_up(&info.client_id, email, "Passw0rd!", BTreeMap::new(), None)
                .await
            {
                Err(IdentityError::UserLambdaValidation(m)) => assert_eq!(m, want),
                other => panic!("{email}: {other:?}"),
            }
        }
        assert!(matches!(
            id.sign_up(
                &info.client_id,
                "gone@example.com",
                "Passw0rd!",
                BTreeMap::new(),
                None
            )
            .await,
            Err(IdentityError::UnexpectedLambda(_))
        ));
        assert!(
            id.admin_get_user(pool, "boom@example.com").await.is_err(),
            "a refused sign-up stores nothing"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn custom_messages_are_written_by_the_trigger_before_they_go_out() {
        let (id, info, _engines) = crate::test_support::identity();
        let pool = info.pool_id.as_str();
        id.update_pool(
            pool,
            crate::pools::PoolUpdate {
                auto_verified_attributes: vec!["email".into()],
                lambda_config: Some(LambdaConfig {
                    custom_message: Some(
                        "arn:aws:lambda:us-east-2:000000000000:function:fake".into(),
                    ),
                    ..LambdaConfig::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("trigger");
        let fake = Arc::new(Fake {
            events: Default::default(),
            answer: |e| match e["request"]["userAttributes"]["email"].as_str() {
                Some("nocode@example.com") => {
                    let mut e = e.clone();
                    e["response"]["emailMessage"] = json!("Welcome!");
                    Ok(e)
                }
                Some("boom@example.com") => Err(TriggerFailure::Failed("no mail today".into())),
                _ => {
                    let mut e = e.clone();
                    e["response"]["emailSubject"] = json!("Your code for Acme");
                    e["response"]["emailMessage"] = json!(format!(
                        "Hello, your code is {}.",
                        e["request"]["codeParameter"].as_str().unwrap_or("")
                    ));
                    Ok(e)
                }
            },
        });
        id.set_trigger_runner(fake.clone());
        id.sign_up(
            &info.client_id,
            "ok@example.com",
            "Passw0rd!",
            BTreeMap::new(),
            None,
        )
        .await
        .expect("sign up");
        let sent = id.outbox(pool, 1).expect("outbox");
        assert_eq!(sent[0].subject.as_deref(), Some("Your code for Acme"));
        assert_eq!(
            sent[0].body.as_deref(),
            Some(format!("Hello, your code is {}.", sent[0].code).as_str())
        );
        assert_eq!(sent[0].delivery, None, "composed: ready to be emailed");
        let event = fake.events.lock().expect("events")[0].clone();
        assert_eq!(event["triggerSource"], "CustomMessage_SignUp");
        assert_eq!(event["request"]["codeParameter"], "{####}");

        assert!(matches!(
            id.sign_up(
                &info.client_id,
                "nocode@example.com",
                "Passw0rd!",
                BTreeMap::new(),
                None
            )
            .await,
            Err(IdentityError::InvalidLambdaResponse(_))
        ));
        match id
            .sign_up(
                &info.client_id,
                "boom@example.com",
                "Passw0rd!",
                BTreeMap::new(),
                None,
            )
            .await
        {
            Err(IdentityError::UserLambdaValidation(m)) => {
                assert_eq!(m, "CustomMessage failed with error no mail today.")
            }
            other => panic!("{other:?}"),
        }
        let failed = id.outbox(pool, 1).expect("outbox");
        assert_eq!(
            failed[0].delivery.as_deref(),
            Some("failed"),
            "never sent half-written"
        );
    }
}
