//! Tokens as Cognito issues them, and their verification as API Gateway's JWT authorizer
//! does it.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::{Jwks, SigningKey};

/// The scope Cognito puts on access tokens from the user-password flows.
pub const ADMIN_SCOPE: &str = "aws.cognito.signin.user.admin";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdClaims {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    pub iss: String,
    #[serde(rename = "cognito:username")]
    pub cognito_username: String,
    pub origin_jti: String,
    pub aud: String,
    pub event_id: String,
    pub token_use: String,
    pub auth_time: i64,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The user's groups, in precedence order (absent when none).
    #[serde(
        rename = "cognito:groups",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub groups: Vec<String>,
    /// The roles of those groups (absent when none has one).
    #[serde(
        rename = "cognito:roles",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub roles: Vec<String>,
    #[serde(
        rename = "cognito:preferred_role",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub preferred_role: Option<String>,
    /// The user's other attributes (`name`, `phone_number`, `custom:…`), as Cognito puts
    /// them in IdTokens.
    #[serde(flatten)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub sub: String,
    pub iss: String,
    pub client_id: String,
    pub origin_jti: String,
    pub event_id: String,
    pub token_use: String,
    pub scope: String,
    pub auth_time: i64,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub username: String,
    /// The user's groups, in precedence order (absent when none).
    #[serde(
        rename = "cognito:groups",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub groups: Vec<String>,
}

/// What one sign-in is about.
pub struct Subject<'a> {
    pub sub: &'a str,
    pub username: &'a str,
    /// User attributes; `sub` in here is ignored, `email_verified` and
    /// `phone_number_verified` become booleans.
    pub attributes: &'a BTreeMap<String, String>,
    pub client_id: &'a str,
    pub issuer: &'a str,
    pub auth_time: i64,
    pub origin_jti: &'a str,
    /// `cognito:groups`, `cognito:roles`, `cognito:preferred_role`.
    pub groups: &'a crate::groups::GroupClaims,
    /// Claims and scopes a PreTokenGeneration trigger added or suppressed (its group
    /// overrides are in `groups` already).
    pub overrides: Option<&'a crate::triggers::TokenOverrides>,
    /// For tokens of the OAuth 2.0 endpoints: the granted scopes (the access token's
    /// `scope`, in place of `aws.cognito.signin.user.admin`), the authorization's `nonce`
    /// (in the ID token), and an `at_hash` in the ID token.
    pub oauth: Option<OAuthClaims<'a>>,
}

/// What an OAuth 2.0 grant puts in tokens (see [`Subject::oauth`]).
#[derive(Debug, Clone, Copy)]
pub struct OAuthClaims<'a> {
    pub scopes: &'a [String],
    pub nonce: Option<&'a str>,
}

/// OpenID Connect's `at_hash`: the left half of the access token's SHA-256, base64url.
pub fn at_hash(access_token: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

fn json_error(e: serde_json::Error) -> jsonwebtoken::errors::Error {
    jsonwebtoken::errors::ErrorKind::Json(std::sync::Arc::new(e)).into()
}

/// Adds, overrides and removes claims of a token's payload.
fn apply(
    claims: &mut serde_json::Value,
    add: &serde_json::Map<String, serde_json::Value>,
    suppress: &[String],
) {
    if let Some(m) = claims.as_object_mut() {
        for (k, v) in add {
            m.insert(k.clone(), v.clone());
        }
        for k in suppress {
            m.remove(k);
        }
    }
}

/// Signs an IdToken and an AccessToken for `subject`, valid `id_secs` / `access_secs` from `now`.
pub fn issue_pair(
    key: &SigningKey,
    s: &Subject<'_>,
    now: i64,
    id_secs: i64,
    access_secs: i64,
) -> Result<(String, String), jsonwebtoken::errors::Error> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    let event_id = uuid::Uuid::new_v4().to_string();
    let mut attributes = BTreeMap::new();
    for (k, v) in s.attributes {
        match k.as_str() {
            "sub" | "email" | "email_verified" => {}
            // Developer-only attributes are for administrators, never in tokens.
            k if k.starts_with("dev:") => {}
            "phone_number_verified" => {
                attributes.insert(k.clone(), serde_json::Value::Bool(v == "true"));
            }
            // A federated user's providers: a JSON array in the ID token, as Cognito's.
            "identities" => {
                let v = serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone()));
                attributes.insert(k.clone(), v);
            }
            _ => {
                attributes.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
        }
    }
    let id = IdClaims {
        sub: s.sub.into(),
        email_verified: s.attributes.get("email_verified").map(|v| v == "true"),
        iss: s.issuer.into(),
        cognito_username: s.username.into(),
        origin_jti: s.origin_jti.into(),
        aud: s.client_id.into(),
        event_id: event_id.clone(),
        token_use: "id".into(),
        auth_time: s.auth_time,
        exp: now + id_secs,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        email: s.attributes.get("email").cloned(),
        groups: s.groups.groups.clone(),
        roles: s.groups.roles.clone(),
        preferred_role: s.groups.preferred_role.clone(),
        attributes,
    };
    let access = AccessClaims {
        sub: s.sub.into(),
        iss: s.issuer.into(),
        client_id: s.client_id.into(),
        origin_jti: s.origin_jti.into(),
        event_id,
        token_use: "access".into(),
        scope: ADMIN_SCOPE.into(),
        auth_time: s.auth_time,
        exp: now + access_secs,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        username: s.username.into(),
        groups: s.groups.groups.clone(),
    };
    let mut access = access;
    if let Some(g) = &s.oauth {
        access.scope = g.scopes.join(" ");
    }
    if s.overrides.is_none() && s.oauth.is_none() {
        return Ok((
            jsonwebtoken::encode(&header, &id, &key.encoding)?,
            jsonwebtoken::encode(&header, &access, &key.encoding)?,
        ));
    }
    let mut id = serde_json::to_value(&id).map_err(json_error)?;
    let mut scopes: Vec<String> = access.scope.split(' ').map(str::to_owned).collect();
    let mut access = serde_json::to_value(&access).map_err(json_error)?;
    if let Some(o) = s.overrides {
        apply(&mut id, &o.id_add, &o.id_suppress);
        scopes.retain(|s| !o.scopes_suppress.contains(s));
        for s in &o.scopes_add {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        apply(&mut access, &o.access_add, &o.access_suppress);
    }
    scopes.retain(|s| !s.is_empty());
    access["scope"] = serde_json::Value::String(scopes.join(" "));
    let access = jsonwebtoken::encode(&header, &access, &key.encoding)?;
    if let Some(g) = &s.oauth {
        id["at_hash"] = serde_json::Value::String(at_hash(&access));
        if let Some(n) = g.nonce {
            id["nonce"] = serde_json::Value::String(n.to_owned());
        }
    }
    Ok((jsonwebtoken::encode(&header, &id, &key.encoding)?, access))
}

/// The access token of a `client_credentials` grant: the client speaks for itself (`sub`
/// and `client_id` are the client's id), with the granted resource-server scopes.
pub fn issue_client_access(
    key: &SigningKey,
    issuer: &str,
    client_id: &str,
    scopes: &[String],
    now: i64,
    access_secs: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    let claims = serde_json::json!({
        "sub": client_id,
        "token_use": "access",
        "scope": scopes.join(" "),
        "auth_time": now,
        "iss": issuer,
        "exp": now + access_secs,
        "iat": now,
        "version": 2,
        "jti": uuid::Uuid::new_v4().to_string(),
        "client_id": client_id,
    });
    jsonwebtoken::encode(&header, &claims, &key.encoding)
}

/// The claims of a token's payload, read without any verification: only for tokens that
/// a [`Verifier`] accepted already, or to find which verifier applies.
pub fn unverified_payload(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Why a token was refused. Each variant is one step of the authorizer, in order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm {0} is not accepted (RS256 only)")]
    Algorithm(String),
    #[error("the token's key id is not in the JWKS")]
    UnknownKid,
    /// RFC 7515 §4.1.11: a recipient must refuse a JWS whose `crit` header names extensions
    /// it does not understand; sluice understands none.
    #[error("the token's header has critical extensions (crit) that are not understood")]
    Critical,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token's audience (aud or client_id) is not accepted")]
    Audience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token_use claim is not accepted")]
    TokenUse,
    /// The user was disabled, deleted or signed out everywhere, or the sign-in's refresh
    /// token was revoked, after the token was issued.
    #[error("the token has been revoked")]
    Revoked,
}

impl TokenError {
    /// A short, stable name for metrics labels (`sluice_auth_total{reason=…}`).
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm(_) => "algorithm",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::Critical => "critical_header",
            TokenError::Signature => "signature",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::TokenUse => "token_use",
            TokenError::Revoked => "revoked",
        }
    }
}

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClaims {
    pub sub: String,
    pub username: Option<String>,
    pub email: Option<String>,
    pub token_use: String,
    /// `aud` of an IdToken or `client_id` of an AccessToken.
    pub client_id: String,
    pub scopes: Vec<String>,
    pub issuer: String,
    pub exp: i64,
    /// `iat`, seconds (0 when the token has none).
    pub issued_at: i64,
    /// The sign-in every token of it carries (`origin_jti`), when present.
    pub origin_jti: Option<String>,
    /// `cognito:groups`: the user pool groups the user was in when the token was issued.
    pub groups: Vec<String>,
}

/// Verifies bearer tokens against one issuer's key set, in the order of API Gateway's JWT
/// authorizer: key id, signature, `iss`, `aud` (or `client_id` when there is no `aud`),
/// `exp` / `nbf` / `iat` with a leeway, then `token_use`. RS256 only.
#[derive(Clone)]
pub struct Verifier {
    issuer: String,
    audiences: HashSet<String>,
    keys: HashMap<String, DecodingKey>,
    leeway_secs: i64,
    /// Cognito's `token_use` (`id` or `access`) is required; external issuers do not set it.
    require_token_use: bool,
}

#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    iss: Option<String>,
    aud: Option<serde_json::Value>,
    client_id: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    token_use: Option<String>,
    scope: Option<String>,
    email: Option<String>,
    #[serde(rename = "cognito:username")]
    cognito_username: Option<String>,
    username: Option<String>,
    origin_jti: Option<String>,
    #[serde(rename = "cognito:groups", default)]
    groups: Option<Vec<String>>,
}

impl Verifier {
    pub fn new(
        issuer: &str,
        jwks: &Jwks,
        audiences: impl IntoIterator<Item = String>,
        leeway_secs: i64,
    ) -> Result<Verifier, TokenError> {
        let mut keys = HashMap::new();
        for k in &jwks.keys {
            if k.kty == "RSA" {
                let dk = DecodingKey::from_rsa_components(&k.n, &k.e)
                    .map_err(|_| TokenError::Malformed)?;
                keys.insert(k.kid.clone(), dk);
            }
        }
        Ok(Verifier {
            issuer: issuer.to_owned(),
            audiences: audiences.into_iter().collect(),
            keys,
            leeway_secs,
            require_token_use: true,
        })
    }

    /// The same verifier for an issuer that is not Cognito: a token without `token_use`
    /// is accepted (as an access token); one that has it must still say `id` or `access`.
    pub fn without_token_use(mut self) -> Verifier {
        self.require_token_use = false;
        self
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn verify(&self, token: &str, now: i64) -> Result<VerifiedClaims, TokenError> {
        if token.split('.').count() != 3 {
            return Err(TokenError::Malformed);
        }
        // Read the header ourselves: `alg: none` and unknown algorithms must be refused with
        // a clear reason, not a parse error.
        let header_b64 = token.split('.').next().ok_or(TokenError::Malformed)?;
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header_b64.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
        if alg != "RS256" {
            return Err(TokenError::Algorithm(alg.chars().take(16).collect()));
        }
        if header.get("crit").is_some() {
            return Err(TokenError::Critical);
        }
        let kid = header.get("kid").and_then(|k| k.as_str()).unwrap_or("");
        let key = self.keys.get(kid).ok_or(TokenError::UnknownKid)?;

        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        let data =
            jsonwebtoken::decode::<RawClaims>(token, key, &validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature,
                    _ => TokenError::Malformed,
                }
            })?;
        let c = data.claims;

        if c.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(TokenError::Issuer);
        }
        let aud = match &c.aud {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let client_id = if c.aud.is_some() {
            aud.into_iter().find(|a| self.audiences.contains(a))
        } else {
            c.client_id.clone().filter(|id| self.audiences.contains(id))
        }
        .ok_or(TokenError::Audience)?;
        let exp = c.exp.ok_or(TokenError::Expired)?;
        // Saturating: a signed `exp` near `i64::MAX` (a token that never expires) must not
        // overflow into the past, or panic where overflow is checked.
        if now > exp.saturating_add(self.leeway_secs) {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = c.nbf
            && now + self.leeway_secs < nbf
        {
            return Err(TokenError::NotYetValid);
        }
        if let Some(iat) = c.iat
            && now + self.leeway_secs < iat
        {
            return Err(TokenError::NotYetValid);
        }
        let token_use = match c.token_use.clone() {
            None if !self.require_token_use => "access".to_owned(),
            other => other.unwrap_or_default(),
        };
        if token_use != "id" && token_use != "access" {
            return Err(TokenError::TokenUse);
        }
        let sub = c.sub.ok_or(TokenError::Malformed)?;
        Ok(VerifiedClaims {
            sub,
            username: c.cognito_username.or(c.username),
            email: c.email,
            token_use,
            client_id,
            scopes: c
                .scope
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            issuer: self.issuer.clone(),
            exp,
            issued_at: c.iat.unwrap_or(0),
            origin_jti: c.origin_jti,
            groups: c.groups.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let pem = PEM.get_or_init(|| {
            use rsa::pkcs8::EncodePrivateKey;
            let k = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa");
            k.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .expect("pem")
                .to_string()
        });
        SigningKey::from_pem(pem).expect("key")
    }

    fn subject() -> Subject<'static> {
        static ATTRS: std::sync::OnceLock<BTreeMap<String, String>> = std::sync::OnceLock::new();
        Subject {
            sub: "sub-1",
            username: "sub-1",
            attributes: ATTRS.get_or_init(|| {
                BTreeMap::from([
                    ("email".to_string(), "me@example.com".to_string()),
                    ("email_verified".to_string(), "true".to_string()),
                    ("name".to_string(), "Me".to_string()),
                ])
            }),
            client_id: "client-1",
            issuer: "http://iss/pool",
            auth_time: 1000,
            origin_jti: "o",
            groups: NO_GROUPS.get_or_init(Default::default),
            overrides: None,
            oauth: None,
        }
    }

    static NO_GROUPS: std::sync::OnceLock<crate::groups::GroupClaims> = std::sync::OnceLock::new();

    fn decode_payload(t: &str) -> serde_json::Value {
        let p = t.split('.').nth(1).expect("payload");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("b64")).expect("json")
    }

    #[test]
    fn claims_are_cognitos() {
        let k = key();
        let (id, access) = issue_pair(&k, &subject(), 1000, 3600, 3600).expect("issue");
        let idc = decode_payload(&id);
        assert_eq!(idc["token_use"], "id");
        assert_eq!(idc["aud"], "client-1");
        assert_eq!(idc["cognito:username"], "sub-1");
        assert_eq!(idc["email"], "me@example.com");
        assert_eq!(idc["email_verified"], true);
        assert_eq!(idc["name"], "Me");
        assert_eq!(idc["exp"], 4600);
        for c in ["sub", "iss", "auth_time", "iat", "jti"] {
            assert!(idc.get(c).is_some(), "{c}");
        }
        let ac = decode_payload(&access);
        assert_eq!(ac["token_use"], "access");
        assert_eq!(ac["client_id"], "client-1");
        assert_eq!(ac["scope"], ADMIN_SCOPE);
        assert!(ac.get("aud").is_none());
    }

    #[test]
    fn verification_order_and_outcomes() {
        let k = key();
        let jwks = Jwks {
            keys: vec![k.jwk()],
        };
        let v = Verifier::new("http://iss/pool", &jwks, ["client-1".to_string()], 60)
            .expect("verifier");
        let (id, access) = issue_pair(&k, &subject(), 1000, 3600, 3600).expect("issue");
        let claims = v.verify(&id, 1000).expect("id token");
        assert_eq!(claims.sub, "sub-1");
        assert_eq!(claims.token_use, "id");
        assert_eq!(
            v.verify(&access, 1000).expect("access").client_id,
            "client-1"
        );
        assert_eq!(v.verify(&id, 4600 + 60).map(|_| ()), Ok(()));
        assert_eq!(v.verify(&id, 4600 + 61), Err(TokenError::Expired));
        assert_eq!(v.verify(&id, 1000 - 61), Err(TokenError::NotYetValid));

        let other_iss =
            Verifier::new("http://other", &jwks, ["client-1".to_string()], 60).expect("verifier");
        assert_eq!(other_iss.verify(&id, 1000), Err(TokenError::Issuer));
        let other_aud =
            Verifier::new("http://iss/pool", &jwks, ["x".to_string()], 60).expect("verifier");
        assert_eq!(other_aud.verify(&id, 1000), Err(TokenError::Audience));
        assert_eq!(other_aud.verify(&access, 1000), Err(TokenError::Audience));

        let no_keys =
            Verifier::new("http://iss/pool", &Jwks { keys: vec![] }, [], 60).expect("verifier");
        assert_eq!(no_keys.verify(&id, 1000), Err(TokenError::UnknownKid));

        assert_eq!(v.verify("abc", 1000), Err(TokenError::Malformed));
        let mut parts: Vec<String> = id.split('.').map(str::to_owned).collect();
        parts[2] = URL_SAFE_NO_PAD.encode([0u8; 256]);
        assert_eq!(v.verify(&parts.join("."), 1000), Err(TokenError::Signature));
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"x"}"#);
        let forged = format!("{none_header}.{}.", id.split('.').nth(1).expect("payload"));
        assert!(matches!(
            v.verify(&forged, 1000),
            Err(TokenError::Algorithm(_))
        ));
    }

    /// A validly signed token with `exp` = `i64::MAX` never expires; `exp + leeway` used to
    /// overflow (a panic with overflow checks, "expired" without).
    #[test]
    fn an_exp_at_the_end_of_time_does_not_overflow() {
        let k = key();
        let jwks = Jwks {
            keys: vec![k.jwk()],
        };
        let v = Verifier::new("http://iss/pool", &jwks, ["client-1".to_string()], 60)
            .expect("verifier");
        let (id, _) = issue_pair(&k, &subject(), 0, i64::MAX, 3600).expect("issue");
        assert_eq!(v.verify(&id, 1000).map(|c| c.exp), Ok(i64::MAX));
    }
}
