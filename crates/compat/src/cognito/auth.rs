//! Public operations: sign-in flows and their challenges, sign-up, codes, and what an
//! access token lets its bearer do.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::json;
use sluice_identity::mfa::{
    EMAIL_OTP, FactorSetting, FactorSettings, MfaChallenge, SMS_MFA, SOFTWARE_TOKEN_MFA, TokenOwner,
};
use sluice_identity::{AuthOutcome, AuthTokens, Identity, SrpChallenge};

use super::common::{
    AttributeType, CognitoError, OpResult, add_mfa_fields, attribute_list, attribute_map,
    delivery_json, invalid, param, parse, required,
};

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

fn outcome_json(o: AuthOutcome) -> serde_json::Value {
    match o {
        AuthOutcome::Tokens(t) => tokens_json(t),
        AuthOutcome::NewPasswordRequired {
            session,
            username,
            attributes,
        } => {
            let visible: BTreeMap<&String, &String> = attributes
                .iter()
                .filter(|(k, _)| !k.ends_with("_verified"))
                .collect();
            json!({
                "ChallengeName": "NEW_PASSWORD_REQUIRED",
                "Session": session,
                "ChallengeParameters": {
                    "USER_ID_FOR_SRP": username,
                    "requiredAttributes": "[]",
                    "userAttributes": json!(visible).to_string(),
                },
            })
        }
        AuthOutcome::Custom {
            session,
            parameters,
            ..
        } => json!({
            "ChallengeName": "CUSTOM_CHALLENGE",
            "Session": session,
            "ChallengeParameters": parameters,
        }),
        AuthOutcome::Mfa {
            challenge,
            session,
            username,
        } => {
            let mut parameters = json!({"USER_ID_FOR_SRP": username});
            match &challenge {
                MfaChallenge::SoftwareToken { friendly_name } => {
                    if let Some(n) = friendly_name {
                        parameters["FRIENDLY_DEVICE_NAME"] = json!(n);
                    }
                }
                MfaChallenge::Setup => {
                    parameters["MFAS_CAN_SETUP"] = json!(json!([SOFTWARE_TOKEN_MFA]).to_string());
                }
                MfaChallenge::Sms { destination } => {
                    parameters["CODE_DELIVERY_DELIVERY_MEDIUM"] = json!("SMS");
                    parameters["CODE_DELIVERY_DESTINATION"] = json!(destination);
                }
                MfaChallenge::Email { destination } => {
                    parameters["CODE_DELIVERY_DELIVERY_MEDIUM"] = json!("EMAIL");
                    parameters["CODE_DELIVERY_DESTINATION"] = json!(destination);
                }
                MfaChallenge::Select { options } => {
                    parameters["MFAS_CAN_CHOOSE"] = json!(json!(options).to_string());
                }
            }
            json!({
                "ChallengeName": challenge.name(),
                "Session": session,
                "ChallengeParameters": parameters,
            })
        }
    }
}

fn srp_json(c: SrpChallenge) -> serde_json::Value {
    json!({
        "ChallengeName": "PASSWORD_VERIFIER",
        "ChallengeParameters": {
            "SALT": c.salt,
            "SRP_B": c.srp_b,
            "SECRET_BLOCK": c.secret_block,
            "USER_ID_FOR_SRP": c.user_id_for_srp,
            "USERNAME": c.username,
        },
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct InitiateAuthRequest {
    auth_flow: Option<String>,
    client_id: Option<String>,
    user_pool_id: Option<String>,
    #[serde(default)]
    auth_parameters: HashMap<String, String>,
    #[serde(default)]
    client_metadata: BTreeMap<String, String>,
}

impl InitiateAuthRequest {
    fn trigger_data(&self) -> sluice_identity::TriggerData {
        sluice_identity::TriggerData {
            client_metadata: self.client_metadata.clone(),
            validation_data: BTreeMap::new(),
        }
    }
}

fn bad_flow(flow: &str) -> CognitoError {
    invalid(&format!(
        "1 validation error detected: Value '{flow}' at 'authFlow' failed to satisfy constraint: Member must satisfy enum value set"
    ))
}

pub(super) async fn initiate_auth(identity: &Identity, body: &[u8]) -> OpResult {
    let req: InitiateAuthRequest = parse(body)?;
    let flow = required(&req.auth_flow, "authFlow")?;
    let client_id = required(&req.client_id, "clientId")?;
    let p = &req.auth_parameters;
    let secret_hash = p.get("SECRET_HASH").map(String::as_str);
    match flow {
        "USER_PASSWORD_AUTH" => {
            let o = identity
                .initiate_user_password(
                    client_id,
                    param(p, "USERNAME")?,
                    param(p, "PASSWORD")?,
                    secret_hash,
                )
                .await?;
            Ok(outcome_json(o))
        }
        "REFRESH_TOKEN_AUTH" | "REFRESH_TOKEN" => {
            let t = identity
                .initiate_refresh(client_id, param(p, "REFRESH_TOKEN")?, secret_hash)
                .await?;
            Ok(tokens_json(t))
        }
        "USER_SRP_AUTH" => {
            let c = identity
                .initiate_srp(
                    client_id,
                    param(p, "USERNAME")?,
                    param(p, "SRP_A")?,
                    secret_hash,
                )
                .await?;
            Ok(srp_json(c))
        }
        "CUSTOM_AUTH" => {
            let o = identity
                .initiate_custom_auth(
                    None,
                    client_id,
                    param(p, "USERNAME")?,
                    secret_hash,
                    &req.trigger_data(),
                )
                .await?;
            Ok(outcome_json(o))
        }
        "USER_AUTH" => Err(invalid(&format!(
            "auth flow {flow} is not supported by this sluice version"
        ))),
        "ADMIN_USER_PASSWORD_AUTH" | "ADMIN_NO_SRP_AUTH" => Err(invalid(&format!(
            "Initiate Auth method not supported: {flow} is only accepted by AdminInitiateAuth"
        ))),
        _ => Err(bad_flow(flow)),
    }
}

pub(super) async fn admin_initiate_auth(identity: &Identity, body: &[u8]) -> OpResult {
    let req: InitiateAuthRequest = parse(body)?;
    let pool = required(&req.user_pool_id, "userPoolId")?;
    let flow = required(&req.auth_flow, "authFlow")?;
    let client_id = required(&req.client_id, "clientId")?;
    let p = &req.auth_parameters;
    let secret_hash = p.get("SECRET_HASH").map(String::as_str);
    match flow {
        "ADMIN_USER_PASSWORD_AUTH" | "ADMIN_NO_SRP_AUTH" => {
            let o = identity
                .admin_initiate_user_password(
                    pool,
                    client_id,
                    param(p, "USERNAME")?,
                    param(p, "PASSWORD")?,
                    secret_hash,
                )
                .await?;
            Ok(outcome_json(o))
        }
        "REFRESH_TOKEN_AUTH" | "REFRESH_TOKEN" => {
            let t = identity
                .admin_initiate_refresh(pool, client_id, param(p, "REFRESH_TOKEN")?, secret_hash)
                .await?;
            Ok(tokens_json(t))
        }
        "CUSTOM_AUTH" => {
            let o = identity
                .initiate_custom_auth(
                    Some(pool),
                    client_id,
                    param(p, "USERNAME")?,
                    secret_hash,
                    &req.trigger_data(),
                )
                .await?;
            Ok(outcome_json(o))
        }
        "USER_SRP_AUTH" | "USER_PASSWORD_AUTH" | "USER_AUTH" => Err(invalid(&format!(
            "auth flow {flow} is not supported by AdminInitiateAuth in this sluice version"
        ))),
        _ => Err(bad_flow(flow)),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RespondRequest {
    challenge_name: Option<String>,
    client_id: Option<String>,
    user_pool_id: Option<String>,
    session: Option<String>,
    #[serde(default)]
    challenge_responses: HashMap<String, String>,
    #[serde(default)]
    client_metadata: BTreeMap<String, String>,
}

/// `userAttributes.<name>` responses of NEW_PASSWORD_REQUIRED.
fn challenge_attributes(r: &HashMap<String, String>) -> BTreeMap<String, String> {
    r.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("userAttributes.")
                .map(|n| (n.to_owned(), v.clone()))
        })
        .collect()
}

pub(super) async fn respond_to_auth_challenge(identity: &Identity, body: &[u8]) -> OpResult {
    let req: RespondRequest = parse(body)?;
    respond(identity, &req, None).await
}

pub(super) async fn admin_respond_to_auth_challenge(identity: &Identity, body: &[u8]) -> OpResult {
    let req: RespondRequest = parse(body)?;
    let pool = required(&req.user_pool_id, "userPoolId")?;
    respond(identity, &req, Some(pool)).await
}

/// RespondToAuthChallenge, and AdminRespondToAuthChallenge (`admin_pool`: its pool).
async fn respond(identity: &Identity, req: &RespondRequest, admin_pool: Option<&str>) -> OpResult {
    let challenge = required(&req.challenge_name, "challengeName")?;
    let client_id = required(&req.client_id, "clientId")?;
    let r = &req.challenge_responses;
    let secret_hash = r.get("SECRET_HASH").map(String::as_str);
    match challenge {
        "NEW_PASSWORD_REQUIRED" => {
            let session = required(&req.session, "session")?;
            let (username, password, attributes) = (
                param(r, "USERNAME")?,
                param(r, "NEW_PASSWORD")?,
                challenge_attributes(r),
            );
            let o = match admin_pool {
                Some(pool) => {
                    identity
                        .admin_respond_new_password(
                            pool,
                            client_id,
                            session,
                            username,
                            password,
                            attributes,
                            secret_hash,
                        )
                        .await?
                }
                None => {
                    identity
                        .respond_new_password(
                            client_id,
                            session,
                            username,
                            password,
                            attributes,
                            secret_hash,
                        )
                        .await?
                }
            };
            Ok(outcome_json(o))
        }
        "PASSWORD_VERIFIER" if admin_pool.is_none() => {
            let o = identity
                .respond_password_verifier(
                    client_id,
                    param(r, "USERNAME")?,
                    param(r, "PASSWORD_CLAIM_SECRET_BLOCK")?,
                    param(r, "TIMESTAMP")?,
                    param(r, "PASSWORD_CLAIM_SIGNATURE")?,
                    secret_hash,
                )
                .await?;
            Ok(outcome_json(o))
        }
        "SOFTWARE_TOKEN_MFA" => {
            let session = required(&req.session, "session")?;
            let t = identity
                .respond_software_token(
                    admin_pool,
                    client_id,
                    session,
                    param(r, "USERNAME")?,
                    param(r, "SOFTWARE_TOKEN_MFA_CODE")?,
                    secret_hash,
                )
                .await?;
            Ok(tokens_json(t))
        }
        "MFA_SETUP" => {
            let session = required(&req.session, "session")?;
            let t = identity
                .respond_mfa_setup(
                    admin_pool,
                    client_id,
                    session,
                    param(r, "USERNAME")?,
                    secret_hash,
                )
                .await?;
            Ok(tokens_json(t))
        }
        "CUSTOM_CHALLENGE" => {
            let session = required(&req.session, "session")?;
            let o = identity
                .respond_custom_challenge(
                    admin_pool,
                    client_id,
                    session,
                    param(r, "USERNAME")?,
                    param(r, "ANSWER")?,
                    secret_hash,
                    &sluice_identity::TriggerData {
                        client_metadata: req.client_metadata.clone(),
                        validation_data: BTreeMap::new(),
                    },
                )
                .await?;
            Ok(outcome_json(o))
        }
        "SMS_MFA" | "EMAIL_OTP" => {
            let session = required(&req.session, "session")?;
            let (factor, field) = if challenge == "SMS_MFA" {
                (SMS_MFA, "SMS_MFA_CODE")
            } else {
                (EMAIL_OTP, "EMAIL_OTP_CODE")
            };
            let t = identity
                .respond_code(
                    admin_pool,
                    client_id,
                    session,
                    param(r, "USERNAME")?,
                    factor,
                    param(r, field)?,
                    secret_hash,
                )
                .await?;
            Ok(tokens_json(t))
        }
        "SELECT_MFA_TYPE" => {
            let session = required(&req.session, "session")?;
            let o = identity
                .respond_select_mfa(
                    admin_pool,
                    client_id,
                    session,
                    param(r, "USERNAME")?,
                    param(r, "ANSWER")?,
                )
                .await?;
            Ok(outcome_json(o))
        }
        "DEVICE_SRP_AUTH"
        | "DEVICE_PASSWORD_VERIFIER"
        | "ADMIN_NO_SRP_AUTH"
        | "PASSWORD_VERIFIER"
        | "SMS_OTP"
        | "PASSWORD"
        | "WEB_AUTHN"
        | "SELECT_CHALLENGE" => Err(invalid(&format!(
            "challenge {challenge} is not supported by this sluice version"
        ))),
        _ => Err(invalid(&format!(
            "1 validation error detected: Value '{challenge}' at 'challengeName' failed to satisfy constraint: Member must satisfy enum value set"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct SoftwareTokenRequest {
    access_token: Option<String>,
    session: Option<String>,
    user_code: Option<String>,
    friendly_device_name: Option<String>,
}

impl SoftwareTokenRequest {
    fn owner(&self) -> Result<TokenOwner<'_>, CognitoError> {
        match (self.access_token.as_deref(), self.session.as_deref()) {
            (Some(t), _) if !t.is_empty() => Ok(TokenOwner::AccessToken(t)),
            (_, Some(s)) if !s.is_empty() => Ok(TokenOwner::Session(s)),
            _ => Err(invalid("Either AccessToken or Session must be given")),
        }
    }
}

pub(super) async fn associate_software_token(identity: &Identity, body: &[u8]) -> OpResult {
    let req: SoftwareTokenRequest = parse(body)?;
    let (secret, session) = identity.associate_software_token(req.owner()?).await?;
    let mut out = json!({"SecretCode": secret});
    if let Some(s) = session {
        out["Session"] = json!(s);
    }
    Ok(out)
}

pub(super) async fn verify_software_token(identity: &Identity, body: &[u8]) -> OpResult {
    let req: SoftwareTokenRequest = parse(body)?;
    let code = required(&req.user_code, "userCode")?;
    let v = identity
        .verify_software_token(req.owner()?, code, req.friendly_device_name.as_deref())
        .await?;
    let mut out = json!({"Status": "SUCCESS"});
    if let Some(s) = v.session {
        out["Session"] = json!(s);
    }
    Ok(out)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct FactorSettingsType {
    enabled: Option<bool>,
    preferred_mfa: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct MfaPreferenceRequest {
    access_token: Option<String>,
    user_pool_id: Option<String>,
    username: Option<String>,
    software_token_mfa_settings: Option<FactorSettingsType>,
    #[serde(rename = "SMSMfaSettings")]
    sms_mfa_settings: Option<FactorSettingsType>,
    email_mfa_settings: Option<FactorSettingsType>,
}

impl MfaPreferenceRequest {
    fn settings(&self) -> FactorSettings {
        let one = |f: &Option<FactorSettingsType>| {
            f.as_ref().map(|f| FactorSetting {
                enabled: f.enabled,
                preferred: f.preferred_mfa,
            })
        };
        FactorSettings {
            software: one(&self.software_token_mfa_settings),
            sms: one(&self.sms_mfa_settings),
            email: one(&self.email_mfa_settings),
        }
    }
}

pub(super) async fn set_user_mfa_preference(identity: &Identity, body: &[u8]) -> OpResult {
    let req: MfaPreferenceRequest = parse(body)?;
    identity
        .set_mfa_preference(required(&req.access_token, "accessToken")?, req.settings())
        .await?;
    Ok(json!({}))
}

pub(super) async fn admin_set_user_mfa_preference(identity: &Identity, body: &[u8]) -> OpResult {
    let req: MfaPreferenceRequest = parse(body)?;
    identity
        .admin_set_mfa_preference(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
            req.settings(),
        )
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct SignUpRequest {
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    secret_hash: Option<String>,
    confirmation_code: Option<String>,
    #[serde(default)]
    user_attributes: Vec<AttributeType>,
    #[serde(default)]
    validation_data: Vec<AttributeType>,
    #[serde(default)]
    client_metadata: BTreeMap<String, String>,
}

pub(super) async fn sign_up(identity: &Identity, body: &[u8]) -> OpResult {
    let req: SignUpRequest = parse(body)?;
    let (rec, delivery) = identity
        .sign_up_with(
            required(&req.client_id, "clientId")?,
            required(&req.username, "username")?,
            required(&req.password, "password")?,
            attribute_map(req.user_attributes),
            req.secret_hash.as_deref(),
            sluice_identity::TriggerData {
                client_metadata: req.client_metadata,
                validation_data: attribute_map(req.validation_data),
            },
        )
        .await?;
    let mut out = json!({"UserConfirmed": rec.status == "CONFIRMED", "UserSub": rec.sub});
    if let Some(d) = delivery {
        out["CodeDeliveryDetails"] = delivery_json(&d);
    }
    Ok(out)
}

pub(super) async fn confirm_sign_up(identity: &Identity, body: &[u8]) -> OpResult {
    let req: SignUpRequest = parse(body)?;
    identity
        .confirm_sign_up(
            required(&req.client_id, "clientId")?,
            required(&req.username, "username")?,
            required(&req.confirmation_code, "confirmationCode")?,
            req.secret_hash.as_deref(),
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn resend_confirmation_code(identity: &Identity, body: &[u8]) -> OpResult {
    let req: SignUpRequest = parse(body)?;
    let d = identity
        .resend_confirmation_code(
            required(&req.client_id, "clientId")?,
            required(&req.username, "username")?,
            req.secret_hash.as_deref(),
        )
        .await?;
    Ok(json!({"CodeDeliveryDetails": delivery_json(&d)}))
}

pub(super) async fn forgot_password(identity: &Identity, body: &[u8]) -> OpResult {
    let req: SignUpRequest = parse(body)?;
    let d = identity
        .forgot_password(
            required(&req.client_id, "clientId")?,
            required(&req.username, "username")?,
            req.secret_hash.as_deref(),
        )
        .await?;
    Ok(json!({"CodeDeliveryDetails": delivery_json(&d)}))
}

pub(super) async fn confirm_forgot_password(identity: &Identity, body: &[u8]) -> OpResult {
    let req: SignUpRequest = parse(body)?;
    identity
        .confirm_forgot_password(
            required(&req.client_id, "clientId")?,
            required(&req.username, "username")?,
            required(&req.confirmation_code, "confirmationCode")?,
            required(&req.password, "password")?,
            req.secret_hash.as_deref(),
        )
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct TokenRequest {
    access_token: Option<String>,
    previous_password: Option<String>,
    proposed_password: Option<String>,
    #[serde(default)]
    user_attributes: Vec<AttributeType>,
    attribute_name: Option<String>,
    code: Option<String>,
}

pub(super) async fn change_password(identity: &Identity, body: &[u8]) -> OpResult {
    let req: TokenRequest = parse(body)?;
    identity
        .change_password(
            required(&req.access_token, "accessToken")?,
            required(&req.previous_password, "previousPassword")?,
            required(&req.proposed_password, "proposedPassword")?,
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn get_user(identity: &Identity, body: &[u8]) -> OpResult {
    let req: TokenRequest = parse(body)?;
    let u = identity
        .get_user_by_token(required(&req.access_token, "accessToken")?)
        .await?;
    let mut v = json!({
        "Username": u.username,
        "UserAttributes": attribute_list(&u.sub, &u.attributes),
    });
    add_mfa_fields(&mut v, &u);
    Ok(v)
}

pub(super) async fn update_user_attributes(identity: &Identity, body: &[u8]) -> OpResult {
    let req: TokenRequest = parse(body)?;
    let deliveries = identity
        .update_attributes_by_token(
            required(&req.access_token, "accessToken")?,
            attribute_map(req.user_attributes),
        )
        .await?;
    Ok(json!({
        "CodeDeliveryDetailsList": deliveries.iter().map(delivery_json).collect::<Vec<_>>(),
    }))
}

pub(super) async fn get_user_attribute_verification_code(
    identity: &Identity,
    body: &[u8],
) -> OpResult {
    let req: TokenRequest = parse(body)?;
    let d = identity
        .attribute_verification_code_by_token(
            required(&req.access_token, "accessToken")?,
            required(&req.attribute_name, "attributeName")?,
        )
        .await?;
    Ok(json!({"CodeDeliveryDetails": delivery_json(&d)}))
}

pub(super) async fn verify_user_attribute(identity: &Identity, body: &[u8]) -> OpResult {
    let req: TokenRequest = parse(body)?;
    identity
        .verify_attribute_by_token(
            required(&req.access_token, "accessToken")?,
            required(&req.attribute_name, "attributeName")?,
            required(&req.code, "code")?,
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn global_sign_out(identity: &Identity, body: &[u8]) -> OpResult {
    let req: TokenRequest = parse(body)?;
    identity
        .global_sign_out(required(&req.access_token, "accessToken")?)
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RevokeRequest {
    token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

pub(super) async fn revoke_token(identity: &Identity, body: &[u8]) -> OpResult {
    let req: RevokeRequest = parse(body)?;
    identity
        .revoke_token(
            required(&req.client_id, "clientId")?,
            req.client_secret.as_deref(),
            required(&req.token, "token")?,
        )
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DeleteAttributesRequest {
    access_token: Option<String>,
    #[serde(default)]
    user_attribute_names: Vec<String>,
}

pub(super) async fn delete_user_attributes(identity: &Identity, body: &[u8]) -> OpResult {
    let req: DeleteAttributesRequest = parse(body)?;
    identity
        .delete_attributes_by_token(
            required(&req.access_token, "accessToken")?,
            req.user_attribute_names,
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn delete_user(identity: &Identity, body: &[u8]) -> OpResult {
    let req: DeleteAttributesRequest = parse(body)?;
    identity
        .delete_user_by_token(required(&req.access_token, "accessToken")?)
        .await?;
    Ok(json!({}))
}
