//! User pools and app clients: their settings (in Cognito's shapes, stored as JSON), their
//! creation, description, listing, update and deletion.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sluice_meta::Tx;
use sluice_meta::now_ms;
use sluice_meta::params;

use crate::password::PasswordPolicy;
use crate::{ClientRow, Identity, IdentityError, Lifetimes, random_alnum, random_lower_alnum};

/// `Policies` of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Policies {
    #[serde(default = "PasswordPolicy::cognito_default")]
    pub password_policy: PasswordPolicy,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            password_policy: PasswordPolicy::cognito_default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UsernameConfiguration {
    pub case_sensitive: bool,
}

impl Default for UsernameConfiguration {
    /// Cognito's API default: case sensitive.
    fn default() -> Self {
        UsernameConfiguration {
            case_sensitive: true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AdminCreateUserConfig {
    pub allow_admin_create_user_only: bool,
}

/// The settings of a user pool that sluice honours, named as in Cognito's
/// `CreateUserPool` request. Invariant (checked by [`PoolSettings::validate`]): at most one
/// of `username_attributes` and `alias_attributes` is non-empty, and every name in them is
/// one Cognito allows there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PoolSettings {
    pub policies: Policies,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub username_attributes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alias_attributes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub auto_verified_attributes: Vec<String>,
    pub username_configuration: UsernameConfiguration,
    pub admin_create_user_config: AdminCreateUserConfig,
    pub mfa_configuration: String,
    /// Whether the software token (TOTP) factor is enabled; absent: enabled when
    /// `mfa_configuration` is not `OFF` (see [`PoolSettings::software_token_mfa_enabled`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub software_token_mfa_configuration: Option<SoftwareTokenMfaConfiguration>,
    /// `SmsMfaConfiguration` of SetUserPoolMfaConfig: present, the SMS factor is on (codes
    /// go to the outbox; sluice sends no SMS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms_mfa_configuration: Option<serde_json::Value>,
    /// `EmailMfaConfiguration`: present, the email factor is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_mfa_configuration: Option<serde_json::Value>,
    pub deletion_protection: String,
    pub user_pool_tags: BTreeMap<String, String>,
    /// The declared attributes (`Schema`); `None` in pools created before sluice enforced
    /// schemas (see [`crate::schema`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<crate::schema::SchemaAttribute>>,
    /// `AccountRecoverySetting`: how ForgotPassword reaches the user (absent: a verified
    /// email, else a verified phone number, as Cognito's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_recovery_setting: Option<AccountRecoverySetting>,
    /// `LambdaConfig`: the pool's triggers (see [`crate::triggers`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_config: Option<crate::triggers::LambdaConfig>,
}

/// `AccountRecoverySetting` of CreateUserPool / UpdateUserPool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AccountRecoverySetting {
    pub recovery_mechanisms: Vec<RecoveryOption>,
}

/// One `RecoveryOptionType`: `verified_email`, `verified_phone_number` or `admin_only`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RecoveryOption {
    pub priority: i64,
    pub name: String,
}

impl AccountRecoverySetting {
    fn validate(&self) -> Result<(), IdentityError> {
        let bad = |m: String| Err(IdentityError::InvalidParameter(m));
        let n = self.recovery_mechanisms.len();
        if !(1..=2).contains(&n) {
            return bad("AccountRecoverySetting must have 1 or 2 RecoveryMechanisms".into());
        }
        let mut priorities: Vec<i64> = self
            .recovery_mechanisms
            .iter()
            .map(|r| r.priority)
            .collect();
        priorities.sort_unstable();
        priorities.dedup();
        if priorities.len() != n || priorities.iter().any(|p| !(1..=2).contains(p)) {
            return bad("RecoveryMechanisms must have distinct priorities 1 and 2".into());
        }
        for r in &self.recovery_mechanisms {
            if !["verified_email", "verified_phone_number", "admin_only"].contains(&r.name.as_str())
            {
                return bad(format!(
                    "1 validation error detected: Value '{}' at 'accountRecoverySetting.recoveryMechanisms.member.name' failed to satisfy constraint: Member must satisfy enum value set: [admin_only, verified_email, verified_phone_number]",
                    r.name
                ));
            }
        }
        if n == 2
            && self
                .recovery_mechanisms
                .iter()
                .any(|r| r.name == "admin_only")
        {
            return bad("admin_only cannot be combined with another recovery mechanism".into());
        }
        Ok(())
    }

    /// The mechanisms in priority order.
    pub fn ordered(&self) -> Vec<&str> {
        let mut v: Vec<&RecoveryOption> = self.recovery_mechanisms.iter().collect();
        v.sort_by_key(|r| r.priority);
        v.into_iter().map(|r| r.name.as_str()).collect()
    }
}

/// `SoftwareTokenMfaConfiguration` of SetUserPoolMfaConfig.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SoftwareTokenMfaConfiguration {
    pub enabled: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            policies: Policies::default(),
            username_attributes: Vec::new(),
            alias_attributes: Vec::new(),
            auto_verified_attributes: Vec::new(),
            username_configuration: UsernameConfiguration::default(),
            admin_create_user_config: AdminCreateUserConfig::default(),
            mfa_configuration: "OFF".into(),
            software_token_mfa_configuration: None,
            sms_mfa_configuration: None,
            email_mfa_configuration: None,
            deletion_protection: "INACTIVE".into(),
            user_pool_tags: BTreeMap::new(),
            schema: None,
            account_recovery_setting: None,
            lambda_config: None,
        }
    }
}

impl PoolSettings {
    /// The settings of the pool `bootstrap` creates: sign-in by email, case insensitive,
    /// emails verified by code.
    pub fn default_pool() -> Self {
        PoolSettings {
            username_attributes: vec!["email".into()],
            auto_verified_attributes: vec!["email".into()],
            username_configuration: UsernameConfiguration {
                case_sensitive: false,
            },
            schema: Some(Vec::new()),
            ..PoolSettings::default()
        }
    }

    pub fn validate(&self) -> Result<(), IdentityError> {
        let bad = |m: String| Err(IdentityError::InvalidParameter(m));
        self.policies.password_policy.validate()?;
        if !self.username_attributes.is_empty() && !self.alias_attributes.is_empty() {
            return bad(
                "Only one of the aliasAttributes or usernameAttributes can be set in a User Pool"
                    .into(),
            );
        }
        for (list, allowed, name) in [
            (
                &self.username_attributes,
                &["email", "phone_number"][..],
                "usernameAttributes",
            ),
            (
                &self.alias_attributes,
                &["email", "phone_number", "preferred_username"][..],
                "aliasAttributes",
            ),
            (
                &self.auto_verified_attributes,
                &["email", "phone_number"][..],
                "autoVerifiedAttributes",
            ),
        ] {
            if let Some(v) = list.iter().find(|v| !allowed.contains(&v.as_str())) {
                return bad(format!(
                    "1 validation error detected: Value '[{v}]' at '{name}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                    allowed.join(", ")
                ));
            }
        }
        if !["OFF", "ON", "OPTIONAL"].contains(&self.mfa_configuration.as_str()) {
            return bad(format!(
                "1 validation error detected: Value '{}' at 'mfaConfiguration' failed to satisfy constraint: Member must satisfy enum value set: [OFF, ON, OPTIONAL]",
                self.mfa_configuration
            ));
        }
        if let Some(schema) = &self.schema {
            crate::schema::validate_schema(schema)?;
        }
        if let Some(r) = &self.account_recovery_setting {
            r.validate()?;
        }
        if let Some(l) = &self.lambda_config {
            l.check()?;
        }
        if !["ACTIVE", "INACTIVE"].contains(&self.deletion_protection.as_str()) {
            return bad(format!(
                "1 validation error detected: Value '{}' at 'deletionProtection' failed to satisfy constraint: Member must satisfy enum value set: [ACTIVE, INACTIVE]",
                self.deletion_protection
            ));
        }
        Ok(())
    }

    /// Whether the software token factor is enabled. A pool whose MFA was turned on by
    /// CreateUserPool or UpdateUserPool, without SetUserPoolMfaConfig, has it enabled:
    /// Cognito would ask for an SMS configuration there, and the software token is the
    /// factor sluice has.
    pub fn software_token_mfa_enabled(&self) -> bool {
        match self.software_token_mfa_configuration {
            Some(c) => c.enabled,
            None => self.mfa_configuration != "OFF",
        }
    }

    /// What attribute writes in this pool are checked against.
    pub(crate) fn attribute_rules(&self) -> crate::schema::Rules<'_> {
        crate::schema::Rules {
            schema: self.schema.as_deref(),
            sign_in: &self.username_attributes,
        }
    }

    /// Whether the SMS factor is on (SetUserPoolMfaConfig gave `SmsMfaConfiguration`).
    pub fn sms_mfa_enabled(&self) -> bool {
        self.mfa_configuration != "OFF"
            && self
                .sms_mfa_configuration
                .as_ref()
                .is_some_and(|v| !v.is_null())
    }

    /// Whether the email factor is on.
    pub fn email_mfa_enabled(&self) -> bool {
        self.mfa_configuration != "OFF"
            && self
                .email_mfa_configuration
                .as_ref()
                .is_some_and(|v| !v.is_null())
    }

    /// Whether users sign in with their email (as username attribute or alias).
    pub(crate) fn email_signs_in(&self) -> bool {
        self.username_attributes.iter().any(|a| a == "email")
            || self.alias_attributes.iter().any(|a| a == "email")
    }
}

/// What `UpdateUserPool` may change: everything but the sign-in attributes and case
/// sensitivity. Fields absent from the request take their defaults, as in Cognito.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PoolUpdate {
    pub policies: Option<Policies>,
    pub auto_verified_attributes: Vec<String>,
    pub admin_create_user_config: AdminCreateUserConfig,
    pub mfa_configuration: Option<String>,
    pub deletion_protection: Option<String>,
    pub user_pool_tags: BTreeMap<String, String>,
    pub account_recovery_setting: Option<AccountRecoverySetting>,
    pub lambda_config: Option<crate::triggers::LambdaConfig>,
}

/// A pool as `DescribeUserPool` shows it.
#[derive(Debug, Clone)]
pub struct Pool {
    pub id: String,
    pub name: String,
    pub settings: PoolSettings,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub estimated_users: i64,
}

/// `TokenValidityUnits`: `seconds`, `minutes`, `hours` or `days` per token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TokenValidityUnits {
    pub access_token: String,
    pub id_token: String,
    pub refresh_token: String,
}

impl Default for TokenValidityUnits {
    /// Cognito's defaults: hours for access and id tokens, days for refresh tokens.
    fn default() -> Self {
        TokenValidityUnits {
            access_token: "hours".into(),
            id_token: "hours".into(),
            refresh_token: "days".into(),
        }
    }
}

/// An app client's settings beyond its lifetimes, stored as JSON. Invariant:
/// `explicit_auth_flows` holds only `ALLOW_*` names (legacy names are translated on input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ClientSettings {
    pub explicit_auth_flows: Vec<String>,
    pub token_validity_units: TokenValidityUnits,
    pub enable_token_revocation: bool,
    pub auth_session_validity: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub read_attributes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub write_attributes: Vec<String>,
    /// The hosted UI and OAuth 2.0 endpoints' settings (see [`crate::oauth`]).
    #[serde(flatten)]
    pub oauth: OAuthSettings,
}

/// An app client's OAuth 2.0 settings, as Cognito names them. Invariant (checked by
/// [`OAuthSettings::check`] on every write): every callback and logout URL is absolute,
/// without a fragment, and `https` unless its host is the local machine;
/// `default_redirect_uri` is one of `callback_urls`; `client_credentials` is never
/// combined with `code` or `implicit` and needs a client secret; every scope is a standard
/// one or `<resource server>/<scope>` of the pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct OAuthSettings {
    #[serde(rename = "CallbackURLs", skip_serializing_if = "Vec::is_empty")]
    pub callback_urls: Vec<String>,
    #[serde(rename = "LogoutURLs", skip_serializing_if = "Vec::is_empty")]
    pub logout_urls: Vec<String>,
    #[serde(rename = "DefaultRedirectURI", skip_serializing_if = "Option::is_none")]
    pub default_redirect_uri: Option<String>,
    #[serde(rename = "AllowedOAuthFlows", skip_serializing_if = "Vec::is_empty")]
    pub allowed_oauth_flows: Vec<String>,
    #[serde(rename = "AllowedOAuthScopes", skip_serializing_if = "Vec::is_empty")]
    pub allowed_oauth_scopes: Vec<String>,
    #[serde(rename = "AllowedOAuthFlowsUserPoolClient")]
    pub allowed_oauth_flows_user_pool_client: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub supported_identity_providers: Vec<String>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            explicit_auth_flows: default_flows(),
            token_validity_units: TokenValidityUnits::default(),
            enable_token_revocation: true,
            auth_session_validity: 3,
            read_attributes: Vec::new(),
            write_attributes: Vec::new(),
            oauth: OAuthSettings::default(),
        }
    }
}

fn default_flows() -> Vec<String> {
    [
        "ALLOW_REFRESH_TOKEN_AUTH",
        "ALLOW_USER_SRP_AUTH",
        "ALLOW_CUSTOM_AUTH",
    ]
    .map(String::from)
    .to_vec()
}

impl ClientSettings {
    /// The default pool's client: password, SRP, admin and refresh flows.
    pub fn default_client() -> Self {
        ClientSettings {
            explicit_auth_flows: [
                "ALLOW_USER_PASSWORD_AUTH",
                "ALLOW_USER_SRP_AUTH",
                "ALLOW_ADMIN_USER_PASSWORD_AUTH",
                "ALLOW_REFRESH_TOKEN_AUTH",
            ]
            .map(String::from)
            .to_vec(),
            token_validity_units: TokenValidityUnits {
                access_token: "seconds".into(),
                id_token: "seconds".into(),
                refresh_token: "seconds".into(),
            },
            ..ClientSettings::default()
        }
    }

    pub(crate) fn allows(&self, flow: &str) -> bool {
        self.explicit_auth_flows.iter().any(|f| f == flow)
    }
}

/// A `CreateUserPoolClient` / `UpdateUserPoolClient` request's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ClientSpec {
    pub client_name: Option<String>,
    pub generate_secret: bool,
    pub refresh_token_validity: Option<i64>,
    pub access_token_validity: Option<i64>,
    pub id_token_validity: Option<i64>,
    pub token_validity_units: Option<TokenValidityUnits>,
    pub explicit_auth_flows: Option<Vec<String>>,
    pub prevent_user_existence_errors: Option<String>,
    pub enable_token_revocation: Option<bool>,
    pub auth_session_validity: Option<i64>,
    pub read_attributes: Vec<String>,
    pub write_attributes: Vec<String>,
    #[serde(flatten)]
    pub oauth: OAuthSettings,
}

/// An app client as `DescribeUserPoolClient` shows it.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub pool_id: String,
    pub name: String,
    pub secret: Option<String>,
    pub lifetimes: Lifetimes,
    /// `ENABLED` or `LEGACY`.
    pub prevent_user_existence_errors: String,
    pub settings: ClientSettings,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl Client {
    /// A lifetime in the client's unit for it; in seconds when it does not divide evenly.
    pub fn validity(&self, which: &str) -> (i64, String) {
        let (secs, unit) = match which {
            "access" => (
                self.lifetimes.access_secs,
                &self.settings.token_validity_units.access_token,
            ),
            "id" => (
                self.lifetimes.id_secs,
                &self.settings.token_validity_units.id_token,
            ),
            _ => (
                self.lifetimes.refresh_secs,
                &self.settings.token_validity_units.refresh_token,
            ),
        };
        match unit_secs(unit) {
            Some(u) if secs % u == 0 => (secs / u, unit.clone()),
            _ => (secs, "seconds".into()),
        }
    }
}

fn unit_secs(unit: &str) -> Option<i64> {
    match unit {
        "seconds" => Some(1),
        "minutes" => Some(60),
        "hours" => Some(3600),
        "days" => Some(86400),
        _ => None,
    }
}

fn invalid(m: String) -> IdentityError {
    IdentityError::InvalidParameter(m)
}

fn pool_not_found(pool_id: &str) -> IdentityError {
    IdentityError::ResourceNotFound(format!("User pool {pool_id} does not exist."))
}

fn client_not_found(client_id: &str) -> IdentityError {
    IdentityError::ResourceNotFound(format!("User pool client {client_id} does not exist."))
}

/// The settings of a pool, or ResourceNotFound.
pub(crate) fn pool_settings(c: &Tx<'_>, pool_id: &str) -> Result<PoolSettings, IdentityError> {
    let s: Option<String> = c.query_opt(
        "SELECT settings FROM pools WHERE id = ?1",
        params![pool_id],
        |r| r.get(0),
    )?;
    let s = s.ok_or_else(|| pool_not_found(pool_id))?;
    Ok(serde_json::from_str(&s)?)
}

fn check_pool_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 128
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_+=,.@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "1 validation error detected: Value '{name}' at 'poolName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w\\s+=,.@-]+"
        )))
    }
}

/// Page tokens are the base64url of the last key returned.
fn decode_token(token: Option<&str>) -> Result<String, IdentityError> {
    match token {
        None => Ok(String::new()),
        Some(t) => URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| invalid("Invalid pagination token".into())),
    }
}

pub(crate) fn encode_token(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

pub(crate) fn page_token(token: Option<&str>) -> Result<String, IdentityError> {
    decode_token(token)
}

/// A `MaxResults` between 1 and `limit` (60 for most lists, 50 for resource servers).
pub(crate) fn check_max_results(max: i64, limit: i64) -> Result<i64, IdentityError> {
    if (1..=limit).contains(&max) {
        Ok(max)
    } else {
        Err(invalid(format!(
            "1 validation error detected: Value '{max}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and {limit}"
        )))
    }
}

/// Translates legacy flow names and checks them; `None` gives Cognito's default flows.
fn normalize_flows(flows: Option<&[String]>) -> Result<Vec<String>, IdentityError> {
    let Some(flows) = flows else {
        return Ok(default_flows());
    };
    const NEW: &[&str] = &[
        "ALLOW_ADMIN_USER_PASSWORD_AUTH",
        "ALLOW_CUSTOM_AUTH",
        "ALLOW_USER_PASSWORD_AUTH",
        "ALLOW_USER_SRP_AUTH",
        "ALLOW_REFRESH_TOKEN_AUTH",
        "ALLOW_USER_AUTH",
    ];
    const LEGACY: &[&str] = &[
        "ADMIN_NO_SRP_AUTH",
        "CUSTOM_AUTH_FLOW_ONLY",
        "USER_PASSWORD_AUTH",
    ];
    let legacy = flows.iter().any(|f| LEGACY.contains(&f.as_str()));
    let new = flows.iter().any(|f| NEW.contains(&f.as_str()));
    if let Some(f) = flows
        .iter()
        .find(|f| !NEW.contains(&f.as_str()) && !LEGACY.contains(&f.as_str()))
    {
        return Err(invalid(format!(
            "1 validation error detected: Value '[{f}]' at 'explicitAuthFlows' failed to satisfy constraint: Member must satisfy enum value set"
        )));
    }
    if legacy && new {
        return Err(invalid(
            "ExplicitAuthFlows cannot have both legacy and new values".into(),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for f in flows {
        let mapped = match f.as_str() {
            "ADMIN_NO_SRP_AUTH" => "ALLOW_ADMIN_USER_PASSWORD_AUTH",
            "USER_PASSWORD_AUTH" => "ALLOW_USER_PASSWORD_AUTH",
            "CUSTOM_AUTH_FLOW_ONLY" => "ALLOW_CUSTOM_AUTH",
            other => other,
        };
        if !out.iter().any(|o| o == mapped) {
            out.push(mapped.to_owned());
        }
    }
    if legacy {
        // Legacy clients always allowed SRP and refresh.
        for f in ["ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"] {
            if !out.iter().any(|o| o == f) {
                out.push(f.to_owned());
            }
        }
    }
    Ok(out)
}

/// Lifetimes and units from a spec, within Cognito's bounds: access and id tokens 5
/// minutes to 1 day, refresh tokens 1 hour to 10 years.
fn lifetimes_of(spec: &ClientSpec) -> Result<(Lifetimes, TokenValidityUnits), IdentityError> {
    let units = spec.token_validity_units.clone().unwrap_or_default();
    let d = Lifetimes::default();
    let secs = |v: Option<i64>, unit: &str, default: i64, name: &str, min: i64, max: i64| {
        let Some(v) = v else { return Ok(default) };
        let u = unit_secs(unit).ok_or_else(|| {
            invalid(format!(
                "1 validation error detected: Value '{unit}' at 'tokenValidityUnits.{name}' failed to satisfy constraint: Member must satisfy enum value set: [seconds, minutes, hours, days]"
            ))
        })?;
        let s = v.checked_mul(u).unwrap_or(i64::MAX);
        if s < min || s > max {
            return Err(invalid(format!(
                "Invalid range for token validity: {name} must be between {min} and {max} seconds"
            )));
        }
        Ok(s)
    };
    let lifetimes = Lifetimes {
        access_secs: secs(
            spec.access_token_validity,
            &units.access_token,
            d.access_secs,
            "accessToken",
            300,
            86400,
        )?,
        id_secs: secs(
            spec.id_token_validity,
            &units.id_token,
            d.id_secs,
            "idToken",
            300,
            86400,
        )?,
        refresh_secs: secs(
            spec.refresh_token_validity,
            &units.refresh_token,
            d.refresh_secs,
            "refreshToken",
            3600,
            10 * 365 * 86400,
        )?,
    };
    // Show defaults in the units Cognito uses for them.
    let units = TokenValidityUnits {
        access_token: if spec.access_token_validity.is_some() {
            units.access_token
        } else {
            "hours".into()
        },
        id_token: if spec.id_token_validity.is_some() {
            units.id_token
        } else {
            "hours".into()
        },
        refresh_token: if spec.refresh_token_validity.is_some() {
            units.refresh_token
        } else {
            "days".into()
        },
    };
    Ok((lifetimes, units))
}

fn settings_of(spec: &ClientSpec) -> Result<(Lifetimes, ClientSettings, bool), IdentityError> {
    let (lifetimes, units) = lifetimes_of(spec)?;
    let session = spec.auth_session_validity.unwrap_or(3);
    if !(3..=15).contains(&session) {
        return Err(invalid(format!(
            "1 validation error detected: Value '{session}' at 'authSessionValidity' failed to satisfy constraint: Member must have value between 3 and 15"
        )));
    }
    let prevent = match spec.prevent_user_existence_errors.as_deref() {
        None | Some("LEGACY") => false,
        Some("ENABLED") => true,
        Some(other) => {
            return Err(invalid(format!(
                "1 validation error detected: Value '{other}' at 'preventUserExistenceErrors' failed to satisfy constraint: Member must satisfy enum value set: [LEGACY, ENABLED]"
            )));
        }
    };
    let settings = ClientSettings {
        explicit_auth_flows: normalize_flows(spec.explicit_auth_flows.as_deref())?,
        token_validity_units: units,
        enable_token_revocation: spec.enable_token_revocation.unwrap_or(true),
        auth_session_validity: session,
        read_attributes: spec.read_attributes.clone(),
        write_attributes: spec.write_attributes.clone(),
        oauth: spec.oauth.clone(),
    };
    Ok((lifetimes, settings, prevent))
}

fn check_client_name(name: Option<&str>) -> Result<String, IdentityError> {
    let name = name.unwrap_or("");
    let ok = !name.is_empty()
        && name.chars().count() <= 128
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_+=,.@-".contains(c));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(invalid(format!(
            "1 validation error detected: Value '{name}' at 'clientName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w\\s+=,.@-]+"
        )))
    }
}

const CLIENT_COLUMNS: &str = "id, pool_id, name, secret, id_validity_secs, access_validity_secs,
    refresh_validity_secs, prevent_user_existence_errors, settings, created_ms, updated_ms";

fn client_from_row(r: &sluice_meta::Row<'_>) -> sluice_meta::MetaResult<(Client, String)> {
    let prevent: bool = r.get(7)?;
    Ok((
        Client {
            id: r.get(0)?,
            pool_id: r.get(1)?,
            name: r.get(2)?,
            secret: r.get(3)?,
            lifetimes: Lifetimes {
                id_secs: r.get(4)?,
                access_secs: r.get(5)?,
                refresh_secs: r.get(6)?,
            },
            prevent_user_existence_errors: if prevent { "ENABLED" } else { "LEGACY" }.into(),
            settings: ClientSettings::default(),
            created_ms: r.get(9)?,
            updated_ms: r.get(10)?,
        },
        r.get(8)?,
    ))
}

fn read_client(c: &Tx<'_>, client_id: &str) -> Result<Option<Client>, IdentityError> {
    let row = c.query_opt(
        &format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE id = ?1"),
        params![client_id],
        client_from_row,
    )?;
    match row {
        None => Ok(None),
        Some((mut client, settings)) => {
            client.settings = serde_json::from_str(&settings)?;
            Ok(Some(client))
        }
    }
}

fn read_pool(c: &Tx<'_>, pool_id: &str) -> Result<Pool, IdentityError> {
    let row: Option<(String, String, i64, i64)> = c.query_opt(
        "SELECT name, settings, created_ms, updated_ms FROM pools WHERE id = ?1",
        params![pool_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let (name, settings, created_ms, updated_ms) = row.ok_or_else(|| pool_not_found(pool_id))?;
    let estimated_users: i64 = c.query_row(
        "SELECT COUNT(*) FROM users WHERE pool_id = ?1",
        params![pool_id],
        |r| r.get(0),
    )?;
    Ok(Pool {
        id: pool_id.to_owned(),
        name,
        settings: serde_json::from_str(&settings)?,
        created_ms,
        updated_ms,
        estimated_users,
    })
}

impl Identity {
    /// CreateUserPool: a new pool `<region>_<9 alphanumerics>` with its own signing key.
    pub async fn create_pool(
        &self,
        region: &str,
        name: &str,
        mut settings: PoolSettings,
    ) -> Result<Pool, IdentityError> {
        check_pool_name(name)?;
        // A pool created now enforces its schema, declared or empty.
        settings.schema.get_or_insert_with(Vec::new);
        settings.validate()?;
        let id = format!("{region}_{}", random_alnum(9));
        if !crate::valid_pool_id(&id) {
            return Err(IdentityError::Backend(format!("invalid region {region:?}")));
        }
        let json = serde_json::to_string(&settings)?;
        let (pid, n) = (id.clone(), name.to_owned());
        self.db
            .write(move |c| {
                let now = now_ms();
                c.execute(
                    "INSERT INTO pools (id, name, is_default, created_ms, settings, updated_ms)
                     VALUES (?1, ?2, 0, ?3, ?4, ?3)",
                    params![pid, n, now, json],
                )?;
                Ok::<_, IdentityError>(())
            })
            .await?;
        let this = self.clone();
        let pid = id.clone();
        tokio::task::spawn_blocking(move || this.signing_key(&pid))
            .await
            .map_err(crate::blocking_err)??;
        self.describe_pool(&id).await
    }

    pub async fn describe_pool(&self, pool_id: &str) -> Result<Pool, IdentityError> {
        let p = pool_id.to_owned();
        self.db.read(move |c| read_pool(c, &p)).await
    }

    /// ListUserPools: pools by id, `max_results` (1–60) at a time.
    pub async fn list_pools(
        &self,
        max_results: i64,
        next_token: Option<&str>,
    ) -> Result<(Vec<Pool>, Option<String>), IdentityError> {
        let max = check_max_results(max_results, 60)?;
        let after = decode_token(next_token)?;
        self.db
            .read(move |c| {
                let ids: Vec<String> = c
                    .query_map(
                        "SELECT id FROM pools WHERE id > ?1 ORDER BY id LIMIT ?2",
                        params![after, max + 1],
                        |r| r.get(0),
                    )?
                    .collect::<Result<_, _>>()?;
                let more = ids.len() as i64 > max;
                let pools = ids
                    .iter()
                    .take(max as usize)
                    .map(|id| read_pool(c, id))
                    .collect::<Result<Vec<_>, _>>()?;
                let token = if more {
                    pools.last().map(|p| encode_token(&p.id))
                } else {
                    None
                };
                Ok((pools, token))
            })
            .await
    }

    /// UpdateUserPool: replaces the updatable settings (absent ones take their defaults).
    pub async fn update_pool(
        &self,
        pool_id: &str,
        update: PoolUpdate,
    ) -> Result<(), IdentityError> {
        self.change_settings(pool_id, move |s| {
            let update = update.clone();
            s.policies = update.policies.unwrap_or_default();
            s.auto_verified_attributes = update.auto_verified_attributes;
            s.admin_create_user_config = update.admin_create_user_config;
            s.mfa_configuration = update.mfa_configuration.unwrap_or_else(|| "OFF".into());
            s.deletion_protection = update
                .deletion_protection
                .unwrap_or_else(|| "INACTIVE".into());
            s.user_pool_tags = update.user_pool_tags;
            s.account_recovery_setting = update.account_recovery_setting;
            s.lambda_config = update.lambda_config;
            Ok(())
        })
        .await
    }

    /// TagResource / UntagResource on a pool: `add` set, then `remove` keys dropped (Cognito
    /// allows 50 tags per pool).
    pub async fn tag_pool(
        &self,
        pool_id: &str,
        add: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<(), IdentityError> {
        for (k, v) in &add {
            if k.is_empty()
                || k.chars().count() > 128
                || v.chars().count() > 256
                || k.starts_with("aws:")
            {
                return Err(IdentityError::InvalidParameter(format!(
                    "Invalid tag {k:?}: keys are 1 to 128 characters and may not start with aws:, values at most 256"
                )));
            }
        }
        self.change_settings(pool_id, move |s| {
            s.user_pool_tags.extend(add.clone());
            for k in &remove {
                s.user_pool_tags.remove(k);
            }
            if s.user_pool_tags.len() > 50 {
                return Err(IdentityError::LimitExceeded(
                    "A user pool can have at most 50 tags.".into(),
                ));
            }
            Ok(())
        })
        .await
    }

    /// AddCustomAttributes.
    pub async fn add_custom_attributes(
        &self,
        pool_id: &str,
        added: Vec<crate::schema::SchemaAttribute>,
    ) -> Result<(), IdentityError> {
        self.change_settings(pool_id, move |s| {
            crate::schema::add_custom(&mut s.schema, added.clone())
        })
        .await
    }

    /// Changes a pool's settings in one write: `f` changes them, they are validated and
    /// stored; `f`'s result is returned.
    pub(crate) async fn change_settings<T: Send + 'static>(
        &self,
        pool_id: &str,
        mut f: impl FnMut(&mut PoolSettings) -> Result<T, IdentityError> + Send + 'static,
    ) -> Result<T, IdentityError> {
        let p = pool_id.to_owned();
        self.db
            .write(move |c| {
                let mut s = pool_settings(c, &p)?;
                let out = f(&mut s)?;
                s.validate()?;
                c.execute(
                    "UPDATE pools SET settings = ?2, updated_ms = ?3 WHERE id = ?1",
                    params![p, serde_json::to_string(&s)?, now_ms()],
                )?;
                Ok(out)
            })
            .await
    }

    /// DeleteUserPool: the pool, its clients, users, tokens, codes and messages. The default
    /// pool and pools with deletion protection are kept.
    pub async fn delete_pool(&self, pool_id: &str) -> Result<(), IdentityError> {
        let p = pool_id.to_owned();
        self.db
            .write(move |c| {
                let row: Option<(bool, String)> = c
                    .query_opt(
                        "SELECT is_default, settings FROM pools WHERE id = ?1", params![&p],
                        |r| Ok((r.get(0)?, r.get(1)?)))?;
                let (is_default, settings) = row.ok_or_else(|| pool_not_found(&p))?;
                if is_default {
                    return Err(invalid(
                        "the default user pool of this sluice server cannot be deleted".into(),
                    ));
                }
                let s: PoolSettings = serde_json::from_str(&settings)?;
                if s.deletion_protection == "ACTIVE" {
                    return Err(invalid("The user pool cannot be deleted because deletion protection is activated. Deletion protection must be inactivated first.".into()));
                }
                for t in ["refresh_tokens", "auth_sessions", "codes", "outbox", "oauth_codes", "login_sessions", "resource_servers", "pool_domains", "identity_providers", "federation_states", "user_pool_group_members", "user_pool_groups", "user_mfa", "users", "clients"] {
                    c.execute(&format!("DELETE FROM {t} WHERE pool_id = ?1"), params![&p])?;
                }
                c.execute("DELETE FROM pools WHERE id = ?1", params![&p])?;
                Ok(())
            })
            .await?;
        if let Ok(mut keys) = self.keys.write() {
            keys.remove(pool_id);
        }
        let _ = std::fs::remove_file(self.key_path(pool_id));
        Ok(())
    }

    /// CreateUserPoolClient. A secret, when asked for, is 51 random lower-case
    /// alphanumerics; it is returned by DescribeUserPoolClient, as in Cognito.
    pub async fn create_client(
        &self,
        pool_id: &str,
        spec: ClientSpec,
    ) -> Result<Client, IdentityError> {
        let name = check_client_name(spec.client_name.as_deref())?;
        let (lifetimes, settings, prevent) = settings_of(&spec)?;
        let secret = spec.generate_secret.then(|| random_lower_alnum(51));
        let id = random_lower_alnum(26);
        let json = serde_json::to_string(&settings)?;
        let (p, cid) = (pool_id.to_owned(), id.clone());
        let has_secret = secret.is_some();
        self.db
            .write(move |c| {
                pool_settings(c, &p)?;
                crate::oauth::check_client(c, &p, &settings.oauth, has_secret)?;
                let now = now_ms();
                c.execute(
                    "INSERT INTO clients (id, pool_id, name, id_validity_secs, access_validity_secs,
                         refresh_validity_secs, prevent_user_existence_errors, created_ms, secret,
                         settings, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?8)",
                    params![
                        cid,
                        p,
                        name,
                        lifetimes.id_secs,
                        lifetimes.access_secs,
                        lifetimes.refresh_secs,
                        prevent,
                        now,
                        secret,
                        json
                    ],
                )?;
                Ok::<_, IdentityError>(())
            })
            .await?;
        let (p, cid) = (pool_id.to_owned(), id);
        self.db
            .read(move |c| {
                read_client(c, &cid)?
                    .filter(|cl| cl.pool_id == p)
                    .ok_or_else(|| client_not_found(&cid))
            })
            .await
    }

    pub async fn describe_client(
        &self,
        pool_id: &str,
        client_id: &str,
    ) -> Result<Client, IdentityError> {
        let (p, cid) = (pool_id.to_owned(), client_id.to_owned());
        self.db
            .read(move |c| {
                pool_settings(c, &p)?;
                read_client(c, &cid)?
                    .filter(|cl| cl.pool_id == p)
                    .ok_or_else(|| client_not_found(&cid))
            })
            .await
    }

    /// ListUserPoolClients: clients of a pool by id.
    pub async fn list_clients(
        &self,
        pool_id: &str,
        max_results: i64,
        next_token: Option<&str>,
    ) -> Result<(Vec<Client>, Option<String>), IdentityError> {
        let max = check_max_results(max_results, 60)?;
        let after = decode_token(next_token)?;
        let p = pool_id.to_owned();
        self.db
            .read(move |c| {
                pool_settings(c, &p)?;
                let ids: Vec<String> = c
                    .query_map("SELECT id FROM clients WHERE pool_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3", params![p, after, max + 1], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let more = ids.len() as i64 > max;
                let mut clients = Vec::new();
                for id in ids.iter().take(max as usize) {
                    if let Some(cl) = read_client(c, id)? {
                        clients.push(cl);
                    }
                }
                let token = if more {
                    clients.last().map(|cl| encode_token(&cl.id))
                } else {
                    None
                };
                Ok((clients, token))
            })
            .await
    }

    /// UpdateUserPoolClient: replaces the client's settings (absent ones take their
    /// defaults, as in Cognito); the secret stays.
    pub async fn update_client(
        &self,
        pool_id: &str,
        client_id: &str,
        spec: ClientSpec,
    ) -> Result<Client, IdentityError> {
        let (lifetimes, settings, prevent) = settings_of(&spec)?;
        let name = match spec.client_name.as_deref() {
            Some(n) => Some(check_client_name(Some(n))?),
            None => None,
        };
        let json = serde_json::to_string(&settings)?;
        let (p, cid) = (pool_id.to_owned(), client_id.to_owned());
        self.db
            .write(move |c| {
                pool_settings(c, &p)?;
                let existing = read_client(c, &cid)?
                    .filter(|cl| cl.pool_id == p)
                    .ok_or_else(|| client_not_found(&cid))?;
                crate::oauth::check_client(c, &p, &settings.oauth, existing.secret.is_some())?;
                c.execute(
                    "UPDATE clients SET name = ?2, id_validity_secs = ?3, access_validity_secs = ?4,
                         refresh_validity_secs = ?5, prevent_user_existence_errors = ?6,
                         settings = ?7, updated_ms = ?8
                     WHERE id = ?1",
                    params![
                        cid,
                        name.clone().unwrap_or(existing.name),
                        lifetimes.id_secs,
                        lifetimes.access_secs,
                        lifetimes.refresh_secs,
                        prevent,
                        json,
                        now_ms()
                    ],
                )?;
                read_client(c, &cid)?.ok_or_else(|| client_not_found(&cid))
            })
            .await
    }

    /// DeleteUserPoolClient: the client and the refresh tokens issued to it.
    pub async fn delete_client(&self, pool_id: &str, client_id: &str) -> Result<(), IdentityError> {
        let (p, cid) = (pool_id.to_owned(), client_id.to_owned());
        self.db
            .write(move |c| {
                pool_settings(c, &p)?;
                read_client(c, &cid)?
                    .filter(|cl| cl.pool_id == p)
                    .ok_or_else(|| client_not_found(&cid))?;
                c.execute(
                    "DELETE FROM refresh_tokens WHERE client_id = ?1",
                    params![&cid],
                )?;
                c.execute(
                    "DELETE FROM auth_sessions WHERE client_id = ?1",
                    params![&cid],
                )?;
                c.execute(
                    "DELETE FROM oauth_codes WHERE client_id = ?1",
                    params![&cid],
                )?;
                c.execute("DELETE FROM clients WHERE id = ?1", params![&cid])?;
                Ok(())
            })
            .await
    }

    /// The client a sign-in names, with its secret and flows.
    pub(crate) async fn client(&self, client_id: &str) -> Result<ClientRow, IdentityError> {
        let id = client_id.to_owned();
        let client = self.db.read(move |c| read_client(c, &id)).await?;
        let cl = client.ok_or_else(|| client_not_found(client_id))?;
        Ok(ClientRow {
            id: cl.id,
            pool_id: cl.pool_id,
            lifetimes: cl.lifetimes,
            prevent_user_existence_errors: cl.prevent_user_existence_errors == "ENABLED",
            secret: cl.secret,
            settings: cl.settings,
            hosted: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::identity;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pools_and_clients_side_by_side() {
        let (id, info, _engines) = identity();
        let pool = id
            .create_pool("eu-west-1", "second", PoolSettings::default())
            .await
            .expect("pool");
        assert!(pool.id.starts_with("eu-west-1_"));
        assert_eq!(pool.settings.policies.password_policy.minimum_length, 8);
        let (all, next) = id.list_pools(60, None).await.expect("list");
        assert_eq!(all.len(), 2);
        assert!(next.is_none());
        let (one, next) = id.list_pools(1, None).await.expect("page");
        assert_eq!(one.len(), 1);
        let (two, next2) = id.list_pools(1, next.as_deref()).await.expect("page 2");
        assert_eq!(two.len(), 1);
        assert_ne!(one[0].id, two[0].id);
        assert!(next2.is_none());

        let client = id
            .create_client(
                &pool.id,
                ClientSpec {
                    client_name: Some("web".into()),
                    generate_secret: true,
                    access_token_validity: Some(10),
                    token_validity_units: Some(TokenValidityUnits {
                        access_token: "minutes".into(),
                        ..TokenValidityUnits::default()
                    }),
                    explicit_auth_flows: Some(vec!["ADMIN_NO_SRP_AUTH".into()]),
                    ..ClientSpec::default()
                },
            )
            .await
            .expect("client");
        assert_eq!(client.lifetimes.access_secs, 600);
        assert_eq!(client.validity("access"), (10, "minutes".into()));
        assert_eq!(client.validity("refresh"), (30, "days".into()));
        assert_eq!(client.secret.as_deref().map(str::len), Some(51));
        assert!(client.settings.allows("ALLOW_ADMIN_USER_PASSWORD_AUTH"));
        assert!(!client.settings.allows("ALLOW_USER_PASSWORD_AUTH"));
        assert!(matches!(
            id.describe_client(&info.pool_id, &client.id).await,
            Err(IdentityError::ResourceNotFound(_))
        ));
        assert_eq!(
            id.client_ids(&pool.id).expect("ids"),
            vec![client.id.clone()]
        );
        assert_ne!(
            id.jwks(&pool.id).expect("jwks").keys[0].kid,
            id.jwks(&info.pool_id).expect("jwks").keys[0].kid
        );
        assert!(matches!(
            id.create_client(
                &pool.id,
                ClientSpec {
                    client_name: Some("bad".into()),
                    access_token_validity: Some(25),
                    ..ClientSpec::default()
                }
            )
            .await,
            Err(IdentityError::InvalidParameter(_))
        ));
        let updated = id
            .update_client(
                &pool.id,
                &client.id,
                ClientSpec {
                    explicit_auth_flows: Some(vec!["ALLOW_USER_PASSWORD_AUTH".into()]),
                    ..ClientSpec::default()
                },
            )
            .await
            .expect("update");
        assert_eq!(updated.name, "web");
        assert_eq!(updated.secret, client.secret);
        assert_eq!(updated.lifetimes, Lifetimes::default());
        id.delete_client(&pool.id, &client.id)
            .await
            .expect("delete");
        assert!(id.client_ids(&pool.id).expect("ids").is_empty());
        assert!(
            id.delete_pool(&info.pool_id).await.is_err(),
            "default pool stays"
        );
        id.delete_pool(&pool.id).await.expect("delete pool");
        assert!(!id.pool_exists(&pool.id).expect("exists"));
    }
}
