//! OAuth 2.0 and OpenID Connect as a Cognito user pool's domain serves them: user pool
//! domains, resource servers with custom scopes, app clients' OAuth settings, the
//! authorization endpoint's checks, the hosted UI's sign-in (a login session), authorization
//! codes with PKCE, the token endpoint's three grants, userInfo and logout.
//!
//! The HTTP side (pages, redirects, cookies, form parsing) is the edge's
//! (`sluice_compat::hosted`); everything that decides is here, so that it is written once
//! and tested without HTTP.
//!
//! Rows (all in the metadata engine, so every process of a deployment sees them):
//! - `pool_domains`: a pool's domain prefix (at most one per pool, unique everywhere).
//! - `resource_servers`: `(pool, identifier)` with a name and its scopes (JSON).
//! - `oauth_codes`: an authorization code's hash with everything the token request must
//!   match (client, redirect URI, PKCE challenge) and what the tokens carry (scopes,
//!   nonce). A code is deleted by the request that redeems it, in the same write that
//!   reads it: a code is redeemed at most once, by one of any number of racing requests.
//! - `login_sessions`: a hosted-UI sign-in's hash (the cookie holds the token), valid for
//!   an hour as Cognito's; ended by /logout, global sign-out, or the user's deletion.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use sluice_meta::{Tx, now_ms, params};

use crate::auth::Issuance;
use crate::mfa::MfaChallenge;
use crate::pools::{OAuthSettings, check_max_results, encode_token, page_token, pool_settings};
use crate::{
    AuthOutcome, AuthTokens, ClientRow, Identity, IdentityError, random_token, token_hash, users,
};

pub(crate) const MIGRATION: &str = "
CREATE TABLE pool_domains (
    domain TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
CREATE TABLE resource_servers (
    pool_id TEXT NOT NULL,
    identifier TEXT NOT NULL,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    PRIMARY KEY (pool_id, identifier)
);
CREATE TABLE oauth_codes (
    hash TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    sub TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scopes TEXT NOT NULL,
    challenge TEXT,
    challenge_method TEXT,
    nonce TEXT,
    auth_time INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE login_sessions (
    hash TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL,
    sub TEXT NOT NULL,
    auth_time INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX login_sessions_user ON login_sessions(pool_id, sub);
ALTER TABLE refresh_tokens ADD COLUMN scopes TEXT;
";

/// An authorization code lives 5 minutes, as Cognito's.
pub const CODE_TTL_MS: i64 = 5 * 60_000;
/// A hosted-UI sign-in lasts an hour, as Cognito's session cookie.
pub const LOGIN_TTL_MS: i64 = 60 * 60_000;

/// The standard scopes an app client may be allowed.
pub const STANDARD_SCOPES: &[&str] = &[
    "openid",
    "email",
    "phone",
    "profile",
    crate::tokens::ADMIN_SCOPE,
];

pub use crate::federation::COGNITO_PROVIDER;

/// What an OAuth 2.0 grant gives the tokens it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scopes: Vec<String>,
    pub nonce: Option<String>,
}

impl Grant {
    fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Scopes as OAuth writes them (space separated), each once, in order.
pub fn split_scopes(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in s.split([' ', '+']).filter(|p| !p.is_empty()) {
        if !out.iter().any(|o| o == p) {
            out.push(p.to_owned());
        }
    }
    out
}

/// An OAuth 2.0 error (RFC 6749 §4.1.2.1, §5.2; RFC 6750 §3.1): its code and a
/// description for the developer.
fn oauth(error: &'static str, description: impl Into<String>) -> IdentityError {
    IdentityError::OAuth {
        error,
        description: description.into(),
    }
}

fn invalid(m: impl Into<String>) -> IdentityError {
    IdentityError::InvalidParameter(m.into())
}

/// Whether `url` may be a callback or logout URL: absolute, no fragment, at most 1024
/// characters, and `https` unless it points at this machine (`http://localhost`, as
/// Cognito allows for testing). Other schemes (`myapp://`) are apps' own, as in Cognito.
fn check_url(url: &str, field: &str) -> Result<(), IdentityError> {
    let bad = |why: &str| invalid(format!("Invalid {field} {url:?}: {why}"));
    if url.is_empty() || url.len() > 1024 {
        return Err(bad("must be 1 to 1024 characters"));
    }
    if url.contains('#') {
        return Err(bad("must not contain a fragment"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("must be an absolute URL"));
    };
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Err(bad("must be an absolute URL"));
    }
    if scheme.eq_ignore_ascii_case("http") {
        let host_port = rest.split(['/', '?']).next().unwrap_or("");
        let host = if let Some(v6) = host_port.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            host_port.split(':').next().unwrap_or("")
        };
        if !matches!(host, "localhost" | "127.0.0.1" | "::1") {
            return Err(bad("must use https (http is only allowed for localhost)"));
        }
    }
    if rest.is_empty() {
        return Err(bad("must name a host"));
    }
    Ok(())
}

/// The scopes of the pool's resource servers, as `<identifier>/<scope>`.
fn custom_scopes(c: &Tx<'_>, pool_id: &str) -> Result<Vec<String>, IdentityError> {
    let mut out = Vec::new();
    for rs in read_resource_servers(c, pool_id, "", i64::MAX)? {
        for s in rs.scopes {
            out.push(format!("{}/{}", rs.identifier, s.scope_name));
        }
    }
    Ok(out)
}

/// Checks an app client's OAuth settings (see [`OAuthSettings`]'s invariant) against its
/// pool, in the write that stores them.
pub(crate) fn check_client(
    c: &Tx<'_>,
    pool_id: &str,
    o: &OAuthSettings,
    has_secret: bool,
) -> Result<(), IdentityError> {
    for (urls, field) in [
        (&o.callback_urls, "CallbackURL"),
        (&o.logout_urls, "LogoutURL"),
    ] {
        if urls.len() > 100 {
            return Err(invalid(format!(
                "1 validation error detected: Value at '{field}s' failed to satisfy constraint: Member must have length less than or equal to 100"
            )));
        }
        for u in urls {
            check_url(u, field)?;
        }
    }
    if let Some(d) = &o.default_redirect_uri {
        check_url(d, "DefaultRedirectURI")?;
        if !o.callback_urls.contains(d) {
            return Err(invalid(
                "DefaultRedirectURI must be one of the client's CallbackURLs",
            ));
        }
    }
    for f in &o.allowed_oauth_flows {
        if !matches!(f.as_str(), "code" | "implicit" | "client_credentials") {
            return Err(invalid(format!(
                "1 validation error detected: Value '[{f}]' at 'allowedOAuthFlows' failed to satisfy constraint: Member must satisfy enum value set: [implicit, client_credentials, code]"
            )));
        }
    }
    let flow = |f: &str| o.allowed_oauth_flows.iter().any(|x| x == f);
    let machine = flow("client_credentials");
    if machine && (flow("code") || flow("implicit")) {
        return Err(invalid(
            "client_credentials flow can not be selected along with code flow or implicit flow.",
        ));
    }
    if machine && !has_secret {
        return Err(invalid(
            "client_credentials flow can not be selected if client does not have a client secret.",
        ));
    }
    let custom = custom_scopes(c, pool_id)?;
    for s in &o.allowed_oauth_scopes {
        let standard = STANDARD_SCOPES.contains(&s.as_str());
        if !standard && !custom.contains(s) {
            return Err(invalid(format!(
                "{s} is not a valid scope: not a standard scope (openid, email, phone, profile, aws.cognito.signin.user.admin) nor a scope of one of this pool's resource servers"
            )));
        }
        if machine && standard {
            return Err(invalid(format!(
                "client_credentials flow can only be used with custom scopes; {s} is a standard scope"
            )));
        }
    }
    let providers = crate::federation::provider_names(c, pool_id)?;
    for p in &o.supported_identity_providers {
        if p != COGNITO_PROVIDER && !providers.contains(p) {
            return Err(invalid(format!(
                "The provider {p} does not exist for User Pool {pool_id}"
            )));
        }
    }
    if o.allowed_oauth_flows_user_pool_client {
        if o.allowed_oauth_flows.is_empty() || o.allowed_oauth_scopes.is_empty() {
            return Err(invalid(
                "AllowedOAuthFlows and AllowedOAuthScopes are required if the client is allowed to use OAuth flows (AllowedOAuthFlowsUserPoolClient)",
            ));
        }
        if (flow("code") || flow("implicit")) && o.callback_urls.is_empty() {
            return Err(invalid(
                "CallbackURLs are required for the code and implicit flows",
            ));
        }
    }
    Ok(())
}

/// A user pool domain as DescribeUserPoolDomain shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDomain {
    pub domain: String,
    pub pool_id: String,
    pub created_ms: i64,
}

/// A domain prefix as Cognito takes it: 1 to 63 lower-case letters, digits and inner
/// hyphens, without the reserved words `aws`, `amazon` and `cognito`.
fn check_domain(domain: &str) -> Result<(), IdentityError> {
    let ok = !domain.is_empty()
        && domain.len() <= 63
        && domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !domain.starts_with('-')
        && !domain.ends_with('-');
    if !ok {
        return Err(invalid(format!(
            "1 validation error detected: Value '{domain}' at 'domain' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-z0-9](?:[a-z0-9\\-]{{0,61}}[a-z0-9])?$"
        )));
    }
    if ["aws", "amazon", "cognito"]
        .iter()
        .any(|w| domain.contains(w))
    {
        return Err(invalid(format!(
            "Domain {domain} contains a reserved word (aws, amazon or cognito)."
        )));
    }
    Ok(())
}

/// A resource server's scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceScope {
    pub scope_name: String,
    pub scope_description: String,
}

/// A resource server: an API whose scopes app clients may be allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceServer {
    pub pool_id: String,
    pub identifier: String,
    pub name: String,
    pub scopes: Vec<ResourceScope>,
}

fn check_resource_server(
    identifier: &str,
    name: &str,
    scopes: &[ResourceScope],
) -> Result<(), IdentityError> {
    let printable = |s: &str, extra_bad: &[char]| {
        s.chars().all(|c| {
            ('\x21'..='\x7e').contains(&c) && c != '"' && c != '\\' && !extra_bad.contains(&c)
        })
    };
    if identifier.is_empty() || identifier.len() > 256 || !printable(identifier, &[]) {
        return Err(invalid(format!(
            "1 validation error detected: Value '{identifier}' at 'identifier' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\x21\\x23-\\x5B\\x5D-\\x7E]+"
        )));
    }
    let name_ok = !name.is_empty()
        && name.chars().count() <= 256
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_+=,.@-".contains(c));
    if !name_ok {
        return Err(invalid(format!(
            "1 validation error detected: Value '{name}' at 'name' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w\\s+=,.@-]+"
        )));
    }
    if scopes.len() > 100 {
        return Err(invalid(
            "1 validation error detected: Value at 'scopes' failed to satisfy constraint: Member must have length less than or equal to 100",
        ));
    }
    for (i, s) in scopes.iter().enumerate() {
        if s.scope_name.is_empty() || s.scope_name.len() > 256 || !printable(&s.scope_name, &['/'])
        {
            return Err(invalid(format!(
                "1 validation error detected: Value '{}' at 'scopes.{}.member.scopeName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\x21\\x23-\\x2E\\x30-\\x5B\\x5D-\\x7E]+",
                s.scope_name,
                i + 1
            )));
        }
        if s.scope_description.is_empty() || s.scope_description.chars().count() > 256 {
            return Err(invalid(format!(
                "1 validation error detected: Value '{}' at 'scopes.{}.member.scopeDescription' failed to satisfy constraint: Member must have length between 1 and 256",
                s.scope_description,
                i + 1
            )));
        }
        if scopes[..i].iter().any(|o| o.scope_name == s.scope_name) {
            return Err(invalid(format!(
                "Duplicate scope name {} in resource server {identifier}",
                s.scope_name
            )));
        }
    }
    Ok(())
}

fn read_resource_servers(
    c: &Tx<'_>,
    pool_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<ResourceServer>, IdentityError> {
    let rows: Vec<(String, String, String)> = c
        .query_map(
            "SELECT identifier, name, scopes FROM resource_servers
             WHERE pool_id = ?1 AND identifier > ?2 ORDER BY identifier LIMIT ?3",
            params![pool_id, after, limit],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(identifier, name, scopes)| {
            Ok(ResourceServer {
                pool_id: pool_id.to_owned(),
                identifier,
                name,
                scopes: serde_json::from_str(&scopes)?,
            })
        })
        .collect()
}

fn resource_server_not_found(identifier: &str) -> IdentityError {
    IdentityError::ResourceNotFound(format!("Resource server {identifier} does not exist."))
}

/// The `/oauth2/authorize` request's parameters, as given.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthorizeRequest {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub state: Option<String>,
    pub scope: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub nonce: Option<String>,
    pub identity_provider: Option<String>,
    pub idp_identifier: Option<String>,
    pub prompt: Option<String>,
}

/// An authorization request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    pub client_id: String,
    pub redirect_uri: String,
    /// `code` or `token` (implicit).
    pub response_type: String,
    pub grant: Grant,
    /// PKCE: the challenge and its method (`S256` or `plain`).
    pub challenge: Option<(String, String)>,
    pub state: Option<String>,
    /// `prompt=login`: sign in again even with a live session.
    pub force_login: bool,
    /// `prompt=none`: never show a page.
    pub no_prompt: bool,
    /// The external identity provider to sign in with (`identity_provider` or
    /// `idp_identifier`); `None`: the pool's own users (the hosted sign-in page).
    pub provider: Option<String>,
}

/// Why an authorization request was refused. RFC 6749 §4.1.2.1: with no trustworthy
/// redirect URI (unknown client, URI not registered) the user is shown the error; else the
/// error goes back to the client's redirect URI (in the fragment for implicit requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeRefusal {
    Page {
        error: &'static str,
        description: String,
    },
    Redirect {
        redirect_uri: String,
        fragment: bool,
        error: &'static str,
        description: String,
        state: Option<String>,
    },
}

/// A PKCE challenge as RFC 7636 §4.2 allows: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn pkce_shape(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
}

/// Whether `verifier` answers `challenge` by `method` (RFC 7636 §4.6).
pub fn pkce_matches(method: &str, challenge: &str, verifier: &str) -> bool {
    let derived = match method {
        "S256" => URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes())),
        _ => verifier.to_owned(),
    };
    // Both are public once redeemed; equal length and content is all that matters.
    derived.len() == challenge.len()
        && derived
            .bytes()
            .zip(challenge.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The outcome of a hosted-UI sign-in step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostedStep {
    /// Signed in: the login session's token, for the hosted UI's cookie.
    SignedIn(String),
    /// The user holds a temporary password and must choose a new one.
    NewPassword { session: String, username: String },
    /// A second factor is due.
    Mfa {
        challenge: MfaChallenge,
        session: String,
        username: String,
    },
}

/// An answer to a hosted-UI challenge.
#[derive(Debug, Clone)]
pub enum HostedAnswer {
    NewPassword(String),
    /// A code for `SOFTWARE_TOKEN_MFA`, `SMS_MFA` or `EMAIL_OTP`.
    Code {
        factor: String,
        code: String,
    },
    /// The factor chosen at `SELECT_MFA_TYPE`.
    Select(String),
}

/// The `/oauth2/token` request's form, as given; the client's credentials come from
/// HTTP Basic authentication or the form (`client_secret_post`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// The token endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthTokens {
    pub access_token: String,
    /// Only with the `openid` scope.
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: i64,
}

impl OAuthTokens {
    fn of(t: AuthTokens, grant: Option<&Grant>) -> OAuthTokens {
        let openid = grant.is_none_or(|g| g.has("openid"));
        OAuthTokens {
            access_token: t.access_token,
            id_token: openid.then_some(t.id_token),
            refresh_token: t.refresh_token,
            expires_in: t.expires_in,
        }
    }
}

/// Attributes the `profile` scope shows at userInfo (besides `custom:*`).
const PROFILE_ATTRIBUTES: &[&str] = &[
    "name",
    "family_name",
    "given_name",
    "middle_name",
    "nickname",
    "preferred_username",
    "profile",
    "picture",
    "website",
    "gender",
    "birthdate",
    "zoneinfo",
    "locale",
    "updated_at",
    "address",
];

impl Identity {
    // ---- user pool domains ----

    /// CreateUserPoolDomain (a prefix domain; the hosted UI is served on the edge).
    pub async fn create_domain(&self, pool_id: &str, domain: &str) -> Result<(), IdentityError> {
        check_domain(domain)?;
        let (p, d) = (pool_id.to_owned(), domain.to_owned());
        self.db
            .write(move |c| {
                pool_settings(c, &p)?;
                if c.exists("SELECT 1 FROM pool_domains WHERE domain = ?1", params![&d])? {
                    return Err(invalid("Domain already associated with another user pool."));
                }
                if c.exists("SELECT 1 FROM pool_domains WHERE pool_id = ?1", params![&p])? {
                    return Err(invalid(format!(
                        "User pool {p} already has a domain configured."
                    )));
                }
                c.execute(
                    "INSERT INTO pool_domains (domain, pool_id, created_ms) VALUES (?1, ?2, ?3)",
                    params![d, p, now_ms()],
                )?;
                Ok(())
            })
            .await
    }

    /// DescribeUserPoolDomain: `None` for a domain nobody has.
    pub async fn describe_domain(&self, domain: &str) -> Result<Option<PoolDomain>, IdentityError> {
        let d = domain.to_owned();
        self.db
            .read(move |c| {
                Ok(c.query_opt(
                    "SELECT domain, pool_id, created_ms FROM pool_domains WHERE domain = ?1",
                    params![&d],
                    |r| {
                        Ok(PoolDomain {
                            domain: r.get(0)?,
                            pool_id: r.get(1)?,
                            created_ms: r.get(2)?,
                        })
                    },
                )?)
            })
            .await
    }

    /// The domain of a pool, if it has one (DescribeUserPool's `Domain`).
    pub async fn pool_domain(&self, pool_id: &str) -> Result<Option<String>, IdentityError> {
        let p = pool_id.to_owned();
        self.db
            .read(move |c| {
                Ok(c.query_opt(
                    "SELECT domain FROM pool_domains WHERE pool_id = ?1",
                    params![&p],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    /// DeleteUserPoolDomain: the hosted UI stops answering; live login sessions end.
    pub async fn delete_domain(&self, pool_id: &str, domain: &str) -> Result<(), IdentityError> {
        let (p, d) = (pool_id.to_owned(), domain.to_owned());
        self.db
            .write(move |c| {
                let n = c.execute(
                    "DELETE FROM pool_domains WHERE domain = ?1 AND pool_id = ?2",
                    params![&d, &p],
                )?;
                if n == 0 {
                    return Err(invalid("No such domain or user pool exists."));
                }
                c.execute("DELETE FROM login_sessions WHERE pool_id = ?1", params![&p])?;
                Ok(())
            })
            .await
    }

    // ---- resource servers ----

    /// CreateResourceServer.
    pub async fn create_resource_server(
        &self,
        pool_id: &str,
        identifier: &str,
        name: &str,
        scopes: Vec<ResourceScope>,
    ) -> Result<ResourceServer, IdentityError> {
        check_resource_server(identifier, name, &scopes)?;
        let rs = ResourceServer {
            pool_id: pool_id.to_owned(),
            identifier: identifier.to_owned(),
            name: name.to_owned(),
            scopes,
        };
        let row = rs.clone();
        self.db
            .write(move |c| {
                pool_settings(c, &row.pool_id)?;
                if c.exists(
                    "SELECT 1 FROM resource_servers WHERE pool_id = ?1 AND identifier = ?2",
                    params![&row.pool_id, &row.identifier],
                )? {
                    return Err(invalid(format!(
                        "{} already exists in user pool {}.",
                        row.identifier, row.pool_id
                    )));
                }
                c.execute(
                    "INSERT INTO resource_servers (pool_id, identifier, name, scopes) VALUES (?1, ?2, ?3, ?4)",
                    params![row.pool_id, row.identifier, row.name, serde_json::to_string(&row.scopes)?],
                )?;
                Ok(())
            })
            .await?;
        Ok(rs)
    }

    /// DescribeResourceServer.
    pub async fn describe_resource_server(
        &self,
        pool_id: &str,
        identifier: &str,
    ) -> Result<ResourceServer, IdentityError> {
        let (p, i) = (pool_id.to_owned(), identifier.to_owned());
        self.db
            .read(move |c| {
                pool_settings(c, &p)?;
                let row: Option<(String, String)> = c.query_opt(
                    "SELECT name, scopes FROM resource_servers WHERE pool_id = ?1 AND identifier = ?2",
                    params![&p, &i],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let (name, scopes) = row.ok_or_else(|| resource_server_not_found(&i))?;
                Ok(ResourceServer {
                    pool_id: p,
                    identifier: i,
                    name,
                    scopes: serde_json::from_str(&scopes)?,
                })
            })
            .await
    }

    /// ListResourceServers: by identifier, `max_results` (1 to 50) a page.
    pub async fn list_resource_servers(
        &self,
        pool_id: &str,
        max_results: i64,
        next_token: Option<&str>,
    ) -> Result<(Vec<ResourceServer>, Option<String>), IdentityError> {
        let max_results = check_max_results(max_results, 50)?;
        let after = page_token(next_token)?;
        let p = pool_id.to_owned();
        self.db
            .read(move |c| {
                pool_settings(c, &p)?;
                let mut page = read_resource_servers(c, &p, &after, max_results + 1)?;
                let more = page.len() as i64 > max_results;
                page.truncate(max_results as usize);
                let next = if more {
                    page.last().map(|r| encode_token(&r.identifier))
                } else {
                    None
                };
                Ok((page, next))
            })
            .await
    }

    /// UpdateResourceServer: replaces the name and scopes.
    pub async fn update_resource_server(
        &self,
        pool_id: &str,
        identifier: &str,
        name: &str,
        scopes: Vec<ResourceScope>,
    ) -> Result<ResourceServer, IdentityError> {
        check_resource_server(identifier, name, &scopes)?;
        let rs = ResourceServer {
            pool_id: pool_id.to_owned(),
            identifier: identifier.to_owned(),
            name: name.to_owned(),
            scopes,
        };
        let row = rs.clone();
        self.db
            .write(move |c| {
                pool_settings(c, &row.pool_id)?;
                let n = c.execute(
                    "UPDATE resource_servers SET name = ?3, scopes = ?4 WHERE pool_id = ?1 AND identifier = ?2",
                    params![row.pool_id, row.identifier, row.name, serde_json::to_string(&row.scopes)?],
                )?;
                if n == 0 {
                    return Err(resource_server_not_found(&row.identifier));
                }
                Ok(())
            })
            .await?;
        Ok(rs)
    }

    /// DeleteResourceServer. Clients allowed its scopes keep them listed, but no token
    /// carries a scope that no longer exists (see [`Identity::check_authorize`]).
    pub async fn delete_resource_server(
        &self,
        pool_id: &str,
        identifier: &str,
    ) -> Result<(), IdentityError> {
        let (p, i) = (pool_id.to_owned(), identifier.to_owned());
        self.db
            .write(move |c| {
                pool_settings(c, &p)?;
                let n = c.execute(
                    "DELETE FROM resource_servers WHERE pool_id = ?1 AND identifier = ?2",
                    params![&p, &i],
                )?;
                if n == 0 {
                    return Err(resource_server_not_found(&i));
                }
                Ok(())
            })
            .await
    }

    // ---- the authorization endpoint ----

    /// Whether the pool serves the hosted UI and OAuth endpoints (it has a domain).
    pub async fn hosted_enabled(&self, pool_id: &str) -> Result<bool, IdentityError> {
        Ok(self.pool_domain(pool_id).await?.is_some())
    }

    /// The scopes a client may be granted now: its allowed scopes, less custom scopes whose
    /// resource server (or scope) was deleted since.
    async fn grantable(&self, client: &ClientRow) -> Result<Vec<String>, IdentityError> {
        let p = client.pool_id.clone();
        let custom = self.db.read(move |c| custom_scopes(c, &p)).await?;
        Ok(client
            .settings
            .oauth
            .allowed_oauth_scopes
            .iter()
            .filter(|s| STANDARD_SCOPES.contains(&s.as_str()) || custom.contains(s))
            .cloned()
            .collect())
    }

    /// Checks an authorization request (RFC 6749 §4.1.1, §4.2.1; RFC 7636 §4.3) in the
    /// order RFC 6749 §4.1.2.1 needs: the client and its redirect URI first (their faults
    /// are shown to the user), then everything else (sent back to the redirect URI).
    pub async fn check_authorize(
        &self,
        pool_id: &str,
        req: &AuthorizeRequest,
    ) -> Result<Result<Authorized, AuthorizeRefusal>, IdentityError> {
        let page = |error: &'static str, d: &str| {
            Ok(Err(AuthorizeRefusal::Page {
                error,
                description: d.to_owned(),
            }))
        };
        let Some(client_id) = req.client_id.as_deref().filter(|c| !c.is_empty()) else {
            return page("invalid_request", "client_id is missing");
        };
        let client = match self.client_of_pool(pool_id, client_id).await {
            Ok(c) => c,
            Err(IdentityError::ResourceNotFound(_)) => {
                return page("invalid_client", "no such client in this user pool");
            }
            Err(e) => return Err(e),
        };
        let o = &client.settings.oauth;
        let redirect_uri = match req.redirect_uri.as_deref().filter(|r| !r.is_empty()) {
            Some(r) => r.to_owned(),
            None => match &o.default_redirect_uri {
                Some(d) => d.clone(),
                None => return page("invalid_request", "redirect_uri is missing"),
            },
        };
        if !o.callback_urls.contains(&redirect_uri) {
            return page(
                "redirect_mismatch",
                "redirect_uri is not one of the client's callback URLs",
            );
        }
        let response_type = req.response_type.clone().unwrap_or_default();
        let implicit = response_type == "token";
        let refuse = |error: &'static str, description: &str| {
            Ok(Err(AuthorizeRefusal::Redirect {
                redirect_uri: redirect_uri.clone(),
                fragment: implicit,
                error,
                description: description.to_owned(),
                state: req.state.clone(),
            }))
        };
        let flow = match response_type.as_str() {
            "code" => "code",
            "token" => "implicit",
            "" => return refuse("invalid_request", "response_type is missing"),
            _ => {
                return refuse(
                    "unsupported_response_type",
                    "response_type must be code or token",
                );
            }
        };
        if !o.allowed_oauth_flows_user_pool_client
            || !o.allowed_oauth_flows.iter().any(|f| f == flow)
        {
            return refuse(
                "unauthorized_client",
                &format!("the client is not allowed the {flow} flow"),
            );
        }
        let supported = |p: &str| {
            o.supported_identity_providers.iter().any(|s| s == p)
                || (p == COGNITO_PROVIDER && o.supported_identity_providers.is_empty())
        };
        let named = req.identity_provider.as_deref().filter(|i| !i.is_empty());
        let provider = match named {
            Some(COGNITO_PROVIDER) => None,
            _ => match self
                .provider_for(pool_id, named, req.idp_identifier.as_deref())
                .await?
            {
                Some(ip) => Some(ip.name),
                None if named.is_some()
                    || req.idp_identifier.as_deref().is_some_and(|i| !i.is_empty()) =>
                {
                    return refuse(
                        "invalid_request",
                        "the identity provider is not one of this user pool's",
                    );
                }
                None => None,
            },
        };
        match &provider {
            Some(p) if !supported(p) => {
                return refuse(
                    "unauthorized_client",
                    &format!("the client does not allow sign-in with {p}"),
                );
            }
            None if named == Some(COGNITO_PROVIDER) && !supported(COGNITO_PROVIDER) => {
                return refuse(
                    "unauthorized_client",
                    "the client does not allow sign-in with the user pool (COGNITO)",
                );
            }
            _ => {}
        }
        let grantable = self.grantable(&client).await?;
        let scopes = match req.scope.as_deref().map(split_scopes) {
            Some(s) if !s.is_empty() => {
                if let Some(bad) = s.iter().find(|x| !grantable.contains(x)) {
                    return refuse(
                        "invalid_scope",
                        &format!("the client may not ask for scope {bad}"),
                    );
                }
                s
            }
            // No scope asked: all the client's, as Cognito.
            _ => grantable,
        };
        let needs_openid = ["email", "phone", "profile"];
        if scopes.iter().any(|s| needs_openid.contains(&s.as_str()))
            && !scopes.iter().any(|s| s == "openid")
        {
            return refuse(
                "invalid_scope",
                "the email, phone and profile scopes need the openid scope",
            );
        }
        let challenge = match (
            req.code_challenge.as_deref().filter(|c| !c.is_empty()),
            req.code_challenge_method.as_deref(),
        ) {
            (None, None) => None,
            (None, Some(_)) => return refuse("invalid_request", "code_challenge is missing"),
            (Some(c), m) => {
                let method = m.unwrap_or("plain");
                if method != "S256" && method != "plain" {
                    return refuse(
                        "invalid_request",
                        "code_challenge_method must be S256 or plain",
                    );
                }
                if !pkce_shape(c) {
                    return refuse(
                        "invalid_request",
                        "code_challenge must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~",
                    );
                }
                Some((c.to_owned(), method.to_owned()))
            }
        };
        if implicit && challenge.is_some() {
            return refuse("invalid_request", "PKCE applies to the code flow only");
        }
        let prompt = req.prompt.clone().unwrap_or_default();
        Ok(Ok(Authorized {
            client_id: client.id,
            redirect_uri,
            response_type,
            grant: Grant {
                scopes,
                nonce: req.nonce.clone().filter(|n| !n.is_empty()),
            },
            challenge,
            state: req.state.clone(),
            force_login: prompt.split(' ').any(|p| p == "login"),
            no_prompt: prompt.split(' ').any(|p| p == "none"),
            provider,
        }))
    }

    // ---- hosted-UI sign-in ----

    pub(crate) async fn start_login_session(
        &self,
        pool_id: &str,
        sub: &str,
    ) -> Result<String, IdentityError> {
        let token = random_token();
        let (h, p, s) = (token_hash(&token), pool_id.to_owned(), sub.to_owned());
        let now = now_ms();
        self.db
            .write(move |c| {
                c.execute(
                    "DELETE FROM login_sessions WHERE pool_id = ?1 AND sub = ?2 AND expires_ms < ?3",
                    params![&p, &s, now],
                )?;
                c.execute(
                    "INSERT INTO login_sessions (hash, pool_id, sub, auth_time, expires_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![h, p, s, now / 1000, now + LOGIN_TTL_MS],
                )?;
                Ok::<_, IdentityError>(())
            })
            .await?;
        Ok(token)
    }

    /// The live login session of a hosted-UI cookie: its user (still enabled) and when they
    /// signed in.
    async fn login_of(
        &self,
        pool_id: &str,
        token: &str,
    ) -> Result<Option<(crate::UserRow, i64)>, IdentityError> {
        let (h, p) = (token_hash(token), pool_id.to_owned());
        self.db
            .read(move |c| {
                let row: Option<(String, i64, i64)> = c.query_opt(
                    "SELECT sub, auth_time, expires_ms FROM login_sessions WHERE hash = ?1 AND pool_id = ?2",
                    params![&h, &p],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                let Some((sub, auth_time, expires)) = row else {
                    return Ok(None);
                };
                if expires < now_ms() {
                    return Ok(None);
                }
                let user = users::user_where(c, "sub", &p, &sub)?.filter(|u| {
                    u.enabled && (u.status == "CONFIRMED" || u.status == "EXTERNAL_PROVIDER")
                });
                Ok(user.map(|u| (u, auth_time)))
            })
            .await
    }

    /// Whether a hosted-UI cookie holds a live login session of this pool.
    pub async fn login_session_live(
        &self,
        pool_id: &str,
        token: &str,
    ) -> Result<bool, IdentityError> {
        Ok(self.login_of(pool_id, token).await?.is_some())
    }

    async fn hosted_client(
        &self,
        pool_id: &str,
        client_id: &str,
    ) -> Result<ClientRow, IdentityError> {
        let mut client = self.client_of_pool(pool_id, client_id).await?;
        client.hosted = true;
        Ok(client)
    }

    fn hosted_step(o: AuthOutcome) -> Result<HostedStep, IdentityError> {
        match o {
            AuthOutcome::Tokens(t) => t
                .refresh_token
                .map(HostedStep::SignedIn)
                .ok_or_else(|| IdentityError::Backend("hosted sign-in without a session".into())),
            AuthOutcome::NewPasswordRequired {
                session, username, ..
            } => Ok(HostedStep::NewPassword { session, username }),
            AuthOutcome::Mfa {
                challenge,
                session,
                username,
            } => Ok(HostedStep::Mfa {
                challenge,
                session,
                username,
            }),
            _ => Err(IdentityError::NotAuthorized(
                "This sign-in needs a step the hosted UI does not offer.".into(),
            )),
        }
    }

    /// How a client's users may sign in on the hosted page: with the pool's own users
    /// (`COGNITO`), and through which of the pool's external providers.
    pub async fn sign_in_options(
        &self,
        pool_id: &str,
        client_id: &str,
    ) -> Result<(bool, Vec<String>), IdentityError> {
        let client = self.client_of_pool(pool_id, client_id).await?;
        let listed = &client.settings.oauth.supported_identity_providers;
        let p = pool_id.to_owned();
        let providers = self
            .db
            .read(move |c| crate::federation::provider_names(c, &p))
            .await?;
        Ok((
            listed.is_empty() || listed.iter().any(|l| l == COGNITO_PROVIDER),
            providers
                .into_iter()
                .filter(|n| listed.contains(n))
                .collect(),
        ))
    }

    /// The hosted UI's sign-in with a username (or alias) and password. The client's
    /// `ExplicitAuthFlows` do not apply (they are the API's), its secret is known here.
    pub async fn hosted_sign_in(
        &self,
        pool_id: &str,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<HostedStep, IdentityError> {
        let client = self.hosted_client(pool_id, client_id).await?;
        let listed = &client.settings.oauth.supported_identity_providers;
        if !listed.is_empty() && !listed.iter().any(|l| l == COGNITO_PROVIDER) {
            return Err(IdentityError::NotAuthorized(
                "This app signs users in through its identity providers only.".into(),
            ));
        }
        let hash = client
            .secret
            .as_deref()
            .map(|s| crate::secret_hash(s, username, &client.id));
        let outcome = self
            .password_sign_in(&client, username, password, hash.as_deref())
            .await?;
        Self::hosted_step(outcome)
    }

    /// The hosted UI's answer to a challenge of [`Identity::hosted_sign_in`].
    pub async fn hosted_respond(
        &self,
        pool_id: &str,
        client_id: &str,
        session: &str,
        username: &str,
        answer: HostedAnswer,
    ) -> Result<HostedStep, IdentityError> {
        let client = self.hosted_client(pool_id, client_id).await?;
        let hash = client
            .secret
            .as_deref()
            .map(|s| crate::secret_hash(s, username, &client.id));
        let outcome = match answer {
            HostedAnswer::NewPassword(pw) => {
                self.new_password(
                    &client,
                    session,
                    username,
                    &pw,
                    BTreeMap::new(),
                    hash.as_deref(),
                )
                .await?
            }
            HostedAnswer::Code { factor, code } => {
                let user = match factor.as_str() {
                    crate::users::SOFTWARE_TOKEN_MFA => {
                        self.answer_software_token(&client, session, username, &code)
                            .await?
                    }
                    crate::users::SMS_MFA => {
                        self.answer_code(&client, session, username, crate::users::SMS_MFA, &code)
                            .await?
                    }
                    crate::users::EMAIL_OTP => {
                        self.answer_code(&client, session, username, crate::users::EMAIL_OTP, &code)
                            .await?
                    }
                    other => {
                        return Err(invalid(format!("{other} is not a second factor")));
                    }
                };
                AuthOutcome::Tokens(self.issue(&client, &user, Issuance::SignIn).await?)
            }
            HostedAnswer::Select(factor) => {
                let (challenge, session) = self
                    .answer_select(&client, session, username, &factor)
                    .await?;
                AuthOutcome::Mfa {
                    challenge,
                    session,
                    username: username.to_owned(),
                }
            }
        };
        Self::hosted_step(outcome)
    }

    /// Ends a hosted-UI login session (/logout).
    pub async fn end_login_session(&self, pool_id: &str, token: &str) -> Result<(), IdentityError> {
        let (h, p) = (token_hash(token), pool_id.to_owned());
        self.db
            .write(move |c| {
                c.execute(
                    "DELETE FROM login_sessions WHERE hash = ?1 AND pool_id = ?2",
                    params![&h, &p],
                )?;
                Ok(())
            })
            .await
    }

    /// Whether `logout_uri` is one of the client's sign-out URLs (/logout).
    pub async fn check_logout(
        &self,
        pool_id: &str,
        client_id: &str,
        logout_uri: &str,
    ) -> Result<bool, IdentityError> {
        let client = self.client_of_pool(pool_id, client_id).await?;
        Ok(client
            .settings
            .oauth
            .logout_urls
            .iter()
            .any(|u| u == logout_uri))
    }

    // ---- codes and tokens ----

    /// What a checked authorization gives a signed-in user (`login`: the hosted UI's
    /// cookie): an authorization code (`code`), or tokens (`token`, implicit: no refresh
    /// token, as RFC 6749 §4.2.2). `None` when the login session is no longer live.
    pub async fn authorize_signed_in(
        &self,
        pool_id: &str,
        login: &str,
        a: &Authorized,
    ) -> Result<Option<AuthorizeAnswer>, IdentityError> {
        let Some((user, auth_time)) = self.login_of(pool_id, login).await? else {
            return Ok(None);
        };
        if a.response_type == "token" {
            let client = self.client_of_pool(pool_id, &a.client_id).await?;
            let t = self
                .issue(
                    &client,
                    &user,
                    Issuance::OAuth {
                        grant: &a.grant,
                        auth_time,
                        with_refresh: false,
                    },
                )
                .await?;
            return Ok(Some(AuthorizeAnswer::Tokens(OAuthTokens::of(
                t,
                Some(&a.grant),
            ))));
        }
        let code = random_token();
        let (h, p, a2, sub) = (token_hash(&code), pool_id.to_owned(), a.clone(), user.sub);
        self.db
            .write(move |c| {
                c.execute(
                    "DELETE FROM oauth_codes WHERE pool_id = ?1 AND expires_ms < ?2",
                    params![&p, now_ms()],
                )?;
                let (challenge, method) = a2.challenge.clone().unzip();
                c.execute(
                    "INSERT INTO oauth_codes (hash, pool_id, client_id, sub, redirect_uri, scopes,
                         challenge, challenge_method, nonce, auth_time, expires_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        h,
                        p,
                        a2.client_id,
                        sub,
                        a2.redirect_uri,
                        a2.grant.scopes.join(" "),
                        challenge,
                        method,
                        a2.grant.nonce,
                        auth_time,
                        now_ms() + CODE_TTL_MS
                    ],
                )?;
                Ok::<_, IdentityError>(())
            })
            .await?;
        Ok(Some(AuthorizeAnswer::Code(code)))
    }

    /// Authenticates the client of a token or revocation request: a confidential client
    /// must give its secret (Basic or form), a public one none.
    async fn token_client(
        &self,
        pool_id: &str,
        req: &TokenRequest,
    ) -> Result<ClientRow, IdentityError> {
        let Some(client_id) = req.client_id.as_deref().filter(|c| !c.is_empty()) else {
            return Err(oauth("invalid_request", "client_id is missing"));
        };
        let client = match self.client_of_pool(pool_id, client_id).await {
            Ok(c) => c,
            Err(IdentityError::ResourceNotFound(_)) => {
                return Err(oauth("invalid_client", "no such client in this user pool"));
            }
            Err(e) => return Err(e),
        };
        match (&client.secret, req.client_secret.as_deref()) {
            (Some(s), Some(given)) if crate::client_secret::same(s, given) => Ok(client),
            (Some(_), _) => Err(oauth("invalid_client", "client authentication failed")),
            (None, None) => Ok(client),
            (None, Some(_)) => Err(oauth(
                "invalid_client",
                "the client has no secret; do not send one",
            )),
        }
    }

    /// The token endpoint (RFC 6749 §4.1.3, §4.4, §6; RFC 7636 §4.5).
    pub async fn oauth_token(
        &self,
        pool_id: &str,
        req: &TokenRequest,
    ) -> Result<OAuthTokens, IdentityError> {
        let grant_type = req
            .grant_type
            .as_deref()
            .filter(|g| !g.is_empty())
            .ok_or_else(|| oauth("invalid_request", "grant_type is missing"))?;
        if !matches!(
            grant_type,
            "authorization_code" | "refresh_token" | "client_credentials"
        ) {
            return Err(oauth(
                "unsupported_grant_type",
                format!("grant_type {grant_type} is not supported"),
            ));
        }
        let client = self.token_client(pool_id, req).await?;
        let o = &client.settings.oauth;
        match grant_type {
            "authorization_code" => {
                if !o.allowed_oauth_flows_user_pool_client
                    || !o.allowed_oauth_flows.iter().any(|f| f == "code")
                {
                    return Err(oauth(
                        "unauthorized_client",
                        "the client is not allowed the code flow",
                    ));
                }
                self.redeem_code(&client, req).await
            }
            "refresh_token" => {
                let rt = req
                    .refresh_token
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| oauth("invalid_request", "refresh_token is missing"))?;
                match self.refresh(&client, rt, None).await {
                    Ok((t, grant)) => Ok(OAuthTokens::of(t, grant.as_ref())),
                    Err(IdentityError::NotAuthorized(m)) => Err(oauth("invalid_grant", m)),
                    Err(e) => Err(e),
                }
            }
            _ => {
                if !o.allowed_oauth_flows_user_pool_client
                    || !o
                        .allowed_oauth_flows
                        .iter()
                        .any(|f| f == "client_credentials")
                {
                    return Err(oauth(
                        "unauthorized_client",
                        "the client is not allowed the client_credentials flow",
                    ));
                }
                let grantable = self.grantable(&client).await?;
                let scopes = match req.scope.as_deref().map(split_scopes) {
                    Some(s) if !s.is_empty() => {
                        if let Some(bad) = s.iter().find(|x| !grantable.contains(x)) {
                            return Err(oauth(
                                "invalid_scope",
                                format!("the client may not ask for scope {bad}"),
                            ));
                        }
                        s
                    }
                    _ => grantable,
                };
                if scopes.is_empty() {
                    return Err(oauth("invalid_scope", "the client has no scope to grant"));
                }
                let key = self.signing_key(&client.pool_id)?;
                let access = crate::tokens::issue_client_access(
                    &key,
                    &self.issuer(&client.pool_id),
                    &client.id,
                    &scopes,
                    now_ms() / 1000,
                    client.lifetimes.access_secs,
                )
                .map_err(|e| IdentityError::Backend(format!("cannot sign token: {e}")))?;
                Ok(OAuthTokens {
                    access_token: access,
                    id_token: None,
                    refresh_token: None,
                    expires_in: client.lifetimes.access_secs,
                })
            }
        }
    }

    async fn redeem_code(
        &self,
        client: &ClientRow,
        req: &TokenRequest,
    ) -> Result<OAuthTokens, IdentityError> {
        let code = req
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| oauth("invalid_request", "code is missing"))?;
        let redirect_uri = req
            .redirect_uri
            .as_deref()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| oauth("invalid_request", "redirect_uri is missing"))?;
        if let Some(v) = req.code_verifier.as_deref()
            && !pkce_shape(v)
        {
            return Err(oauth(
                "invalid_request",
                "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~",
            ));
        }
        type CodeRow = (
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            i64,
            i64,
        );
        let (h, p) = (token_hash(code), client.pool_id.clone());
        // Deleted as it is read: whatever the checks below decide, the code is spent.
        let row: Option<CodeRow> = self
            .db
            .write(move |c| {
                Ok::<_, IdentityError>(c.query_opt(
                    "DELETE FROM oauth_codes WHERE hash = ?1 AND pool_id = ?2
                     RETURNING client_id, sub, redirect_uri, scopes, challenge, challenge_method,
                         nonce, auth_time, expires_ms",
                    params![&h, &p],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                            r.get(8)?,
                        ))
                    },
                )?)
            })
            .await?;
        let bad = || {
            oauth(
                "invalid_grant",
                "the authorization code is invalid, expired or already used",
            )
        };
        let (cid, sub, uri, scopes, challenge, method, nonce, auth_time, expires) =
            row.ok_or_else(bad)?;
        if cid != client.id || expires < now_ms() {
            return Err(bad());
        }
        if uri != redirect_uri {
            return Err(oauth(
                "invalid_grant",
                "redirect_uri does not match the authorization request's",
            ));
        }
        if let Some(challenge) = challenge {
            let Some(verifier) = req.code_verifier.as_deref() else {
                return Err(oauth("invalid_request", "code_verifier is missing"));
            };
            let method = method.unwrap_or_else(|| "plain".into());
            if !pkce_matches(&method, &challenge, verifier) {
                return Err(oauth(
                    "invalid_grant",
                    "code_verifier does not match the code_challenge",
                ));
            }
        }
        let p = client.pool_id.clone();
        let user = self
            .db
            .read(move |c| users::user_where(c, "sub", &p, &sub))
            .await?
            .filter(|u| u.enabled)
            .ok_or_else(|| oauth("invalid_grant", "the user no longer exists or is disabled"))?;
        let grant = Grant {
            scopes: split_scopes(&scopes),
            nonce,
        };
        let t = self
            .issue(
                client,
                &user,
                Issuance::OAuth {
                    grant: &grant,
                    auth_time,
                    with_refresh: true,
                },
            )
            .await?;
        Ok(OAuthTokens::of(t, Some(&grant)))
    }

    /// The userInfo endpoint: the attributes an access token's scopes show (it must hold
    /// `openid`). Scopes as Cognito reads them: `openid` alone shows every attribute the
    /// client may read; with `profile`, `email` or `phone`, those groups of attributes.
    pub async fn user_info(
        &self,
        access_token: &str,
    ) -> Result<BTreeMap<String, serde_json::Value>, IdentityError> {
        let invalid_token = |m: &str| oauth("invalid_token", m);
        let claims = crate::tokens::unverified_payload(access_token)
            .ok_or_else(|| invalid_token("the access token is malformed"))?;
        let scopes: Vec<String> = claims
            .get("scope")
            .and_then(|v| v.as_str())
            .map(split_scopes)
            .unwrap_or_default();
        let session = match self.access_session_any_scope(access_token).await {
            Ok(s) => s,
            Err(IdentityError::NotAuthorized(m)) => return Err(invalid_token(&m)),
            Err(IdentityError::UserNotFound(m)) => return Err(invalid_token(&m)),
            Err(e) => return Err(e),
        };
        if !scopes.iter().any(|s| s == "openid") {
            return Err(oauth(
                "insufficient_scope",
                "the access token does not have the openid scope",
            ));
        }
        let client = self
            .client_of_pool(&session.pool_id, &session.client_id)
            .await?;
        let u = self
            .admin_get_user(&session.pool_id, &session.username)
            .await?;
        let readable = |k: &str| {
            !k.starts_with("dev:")
                && (client.settings.read_attributes.is_empty()
                    || client.settings.read_attributes.iter().any(|r| r == k))
        };
        let has = |s: &str| scopes.iter().any(|x| x == s);
        let narrowed = has("profile") || has("email") || has("phone");
        let mut out = BTreeMap::new();
        out.insert("sub".to_owned(), serde_json::json!(u.sub));
        for (k, v) in &u.attributes {
            if k == "sub" || !readable(k) {
                continue;
            }
            let shown = !narrowed
                || (has("profile")
                    && (PROFILE_ATTRIBUTES.contains(&k.as_str()) || k.starts_with("custom:")))
                || (has("email") && (k == "email" || k == "email_verified"))
                || (has("phone") && (k == "phone_number" || k == "phone_number_verified"));
            if shown {
                // Cognito answers the verified flags as strings.
                out.insert(k.clone(), serde_json::json!(v));
            }
        }
        out.insert("username".to_owned(), serde_json::json!(u.username));
        Ok(out)
    }

    /// /oauth2/revoke: the client is authenticated as at the token endpoint; then as
    /// RevokeToken.
    pub async fn oauth_revoke(
        &self,
        pool_id: &str,
        req: &TokenRequest,
        token: &str,
    ) -> Result<(), IdentityError> {
        let client = self.token_client(pool_id, req).await?;
        match self
            .revoke_token(&client.id, client.secret.as_deref(), token)
            .await
        {
            Ok(()) => Ok(()),
            Err(IdentityError::UnsupportedTokenType(m)) => Err(oauth("unsupported_token_type", m)),
            Err(IdentityError::Unauthorized(m)) if m.contains("not enabled") => {
                Err(oauth("unauthorized_client", m))
            }
            Err(IdentityError::Unauthorized(m)) => Err(oauth("invalid_request", m)),
            Err(e) => Err(e),
        }
    }
}

/// What the authorization endpoint sends back for a signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeAnswer {
    Code(String),
    Tokens(OAuthTokens),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_as_cognito_takes_them() {
        for ok in [
            "https://app.example.com/cb",
            "http://localhost:3000/cb",
            "http://127.0.0.1/cb?x=1",
            "http://[::1]:8080/",
            "myapp://signin",
        ] {
            assert!(check_url(ok, "CallbackURL").is_ok(), "{ok}");
        }
        for bad in [
            "",
            "http://app.example.com/cb",
            "https://app.example.com/cb#frag",
            "/relative",
            "https://",
        ] {
            assert!(check_url(bad, "CallbackURL").is_err(), "{bad}");
        }
    }

    #[test]
    fn pkce_s256_and_plain() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches("S256", challenge, verifier));
        assert!(!pkce_matches(
            "S256",
            challenge,
            &verifier.replace('d', "e")
        ));
        assert!(pkce_matches("plain", verifier, verifier));
        assert!(!pkce_matches("plain", challenge, verifier));
        assert!(pkce_shape(verifier));
        assert!(!pkce_shape("short"));
        assert!(!pkce_shape(&"a".repeat(129)));
    }

    #[test]
    fn domains_and_scopes() {
        assert!(check_domain("my-app-1").is_ok());
        for bad in ["", "-x", "x-", "UPPER", "my.app", "myaws", "cognito-x"] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
        assert_eq!(
            split_scopes("openid  email openid"),
            vec!["openid", "email"]
        );
        assert_eq!(split_scopes("a+b"), vec!["a", "b"]);
    }

    fn app_spec(secret: bool, flows: &[&str], scopes: &[&str]) -> crate::ClientSpec {
        crate::ClientSpec {
            client_name: Some("app".into()),
            generate_secret: secret,
            oauth: OAuthSettings {
                callback_urls: vec!["https://app.example.com/cb".into()],
                logout_urls: vec!["https://app.example.com/bye".into()],
                allowed_oauth_flows: flows.iter().map(|f| f.to_string()).collect(),
                allowed_oauth_scopes: scopes.iter().map(|f| f.to_string()).collect(),
                allowed_oauth_flows_user_pool_client: true,
                ..OAuthSettings::default()
            },
            ..crate::ClientSpec::default()
        }
    }

    fn request(client: &str, challenge: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            response_type: Some("code".into()),
            client_id: Some(client.into()),
            redirect_uri: Some("https://app.example.com/cb".into()),
            scope: Some("openid email".into()),
            code_challenge: Some(challenge.into()),
            code_challenge_method: Some("S256".into()),
            nonce: Some("n-1".into()),
            state: Some("st".into()),
            ..AuthorizeRequest::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_code_is_redeemed_once_with_its_verifier() {
        let (id, info, _engines) = crate::test_support::identity();
        let pool = info.pool_id.as_str();
        id.create_domain(pool, "unit-login").await.expect("domain");
        let app = id
            .create_client(pool, app_spec(false, &["code"], &["openid", "email"]))
            .await
            .expect("client");
        id.create_user(pool, "ana@example.com", "Passw0rd!", false)
            .expect("user");
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        let a = id
            .check_authorize(pool, &request(&app.id, challenge))
            .await
            .expect("check")
            .expect("authorized");
        assert_eq!(a.grant.scopes, vec!["openid", "email"]);
        let HostedStep::SignedIn(login) = id
            .hosted_sign_in(pool, &app.id, "ana@example.com", "Passw0rd!")
            .await
            .expect("sign in")
        else {
            panic!("expected a login session");
        };
        assert!(id.login_session_live(pool, &login).await.expect("live"));
        let Some(AuthorizeAnswer::Code(code)) = id
            .authorize_signed_in(pool, &login, &a)
            .await
            .expect("code")
        else {
            panic!("expected a code");
        };
        let redeem = |verifier: &str| TokenRequest {
            grant_type: Some("authorization_code".into()),
            code: Some(code.clone()),
            redirect_uri: Some("https://app.example.com/cb".into()),
            code_verifier: Some(verifier.into()),
            client_id: Some(app.id.clone()),
            ..TokenRequest::default()
        };
        // Two redemptions race: exactly one gets tokens.
        let (r1, r2) = (redeem(verifier), redeem(verifier));
        let (x, y) = tokio::join!(id.oauth_token(pool, &r1), id.oauth_token(pool, &r2));
        let won: Vec<_> = [x, y].into_iter().filter_map(Result::ok).collect();
        assert_eq!(won.len(), 1, "a code is redeemed once");
        let t = &won[0];
        let id_token = t.id_token.as_deref().expect("openid gives an ID token");
        let claims = crate::tokens::unverified_payload(id_token).expect("claims");
        assert_eq!(claims["nonce"], "n-1");
        assert_eq!(claims["at_hash"], crate::tokens::at_hash(&t.access_token));
        let access = crate::tokens::unverified_payload(&t.access_token).expect("claims");
        assert_eq!(access["scope"], "openid email");
        let info = id.user_info(&t.access_token).await.expect("userInfo");
        assert_eq!(info["email"], "ana@example.com");

        // A refresh keeps the grant's scopes.
        let r = id
            .oauth_token(
                pool,
                &TokenRequest {
                    grant_type: Some("refresh_token".into()),
                    refresh_token: t.refresh_token.clone(),
                    client_id: Some(app.id.clone()),
                    ..TokenRequest::default()
                },
            )
            .await
            .expect("refresh");
        let access = crate::tokens::unverified_payload(&r.access_token).expect("claims");
        assert_eq!(access["scope"], "openid email");

        // A wrong verifier spends a code.
        let Some(AuthorizeAnswer::Code(code2)) = id
            .authorize_signed_in(pool, &login, &a)
            .await
            .expect("code")
        else {
            panic!("expected a code");
        };
        let mut wrong = redeem(&verifier.replace('d', "e"));
        wrong.code = Some(code2.clone());
        assert!(matches!(
            id.oauth_token(pool, &wrong).await,
            Err(IdentityError::OAuth {
                error: "invalid_grant",
                ..
            })
        ));
        let mut right = redeem(verifier);
        right.code = Some(code2);
        assert!(matches!(
            id.oauth_token(pool, &right).await,
            Err(IdentityError::OAuth {
                error: "invalid_grant",
                ..
            })
        ));

        // Global sign-out ends the browser's sign-in.
        id.admin_global_sign_out(pool, "ana@example.com")
            .await
            .expect("sign out");
        assert!(!id.login_session_live(pool, &login).await.expect("live"));
        assert!(
            id.authorize_signed_in(pool, &login, &a)
                .await
                .expect("none")
                .is_none()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_settings_and_authorize_refusals() {
        let (id, info, _engines) = crate::test_support::identity();
        let pool = info.pool_id.as_str();
        // A custom scope needs its resource server.
        assert!(matches!(
            id.create_client(pool, app_spec(true, &["client_credentials"], &["api/read"]))
                .await,
            Err(IdentityError::InvalidParameter(_))
        ));
        id.create_resource_server(
            pool,
            "api",
            "api",
            vec![ResourceScope {
                scope_name: "read".into(),
                scope_description: "read".into(),
            }],
        )
        .await
        .expect("resource server");
        let machine = id
            .create_client(pool, app_spec(true, &["client_credentials"], &["api/read"]))
            .await
            .expect("machine client");
        assert!(matches!(
            id.create_client(pool, app_spec(false, &["client_credentials"], &["api/read"]))
                .await,
            Err(IdentityError::InvalidParameter(m)) if m.contains("client secret")
        ));
        let t = id
            .oauth_token(
                pool,
                &TokenRequest {
                    grant_type: Some("client_credentials".into()),
                    client_id: Some(machine.id.clone()),
                    client_secret: machine.secret.clone(),
                    ..TokenRequest::default()
                },
            )
            .await
            .expect("client credentials");
        let claims = crate::tokens::unverified_payload(&t.access_token).expect("claims");
        assert_eq!(claims["sub"], machine.id.as_str());
        assert_eq!(claims["scope"], "api/read");
        // Deleting the resource server takes its scopes out of every grant.
        id.delete_resource_server(pool, "api")
            .await
            .expect("delete");
        assert!(matches!(
            id.oauth_token(
                pool,
                &TokenRequest {
                    grant_type: Some("client_credentials".into()),
                    client_id: Some(machine.id.clone()),
                    client_secret: machine.secret.clone(),
                    ..TokenRequest::default()
                },
            )
            .await,
            Err(IdentityError::OAuth {
                error: "invalid_scope",
                ..
            })
        ));

        let app = id
            .create_client(pool, app_spec(false, &["code"], &["openid"]))
            .await
            .expect("client");
        let mut r = request(&app.id, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        r.scope = Some("openid".into());
        r.redirect_uri = Some("https://evil.example.com/cb".into());
        assert!(matches!(
            id.check_authorize(pool, &r).await.expect("check"),
            Err(AuthorizeRefusal::Page {
                error: "redirect_mismatch",
                ..
            })
        ));
        r.redirect_uri = Some("https://app.example.com/cb".into());
        r.scope = Some("openid email".into());
        assert!(matches!(
            id.check_authorize(pool, &r).await.expect("check"),
            Err(AuthorizeRefusal::Redirect {
                error: "invalid_scope",
                ..
            })
        ));
        r.scope = None;
        r.response_type = Some("token".into());
        assert!(matches!(
            id.check_authorize(pool, &r).await.expect("check"),
            Err(AuthorizeRefusal::Redirect {
                error: "unauthorized_client",
                fragment: true,
                ..
            })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hourly_sweep_forgets_expired_sign_ins() {
        let (id, info, _engines) = crate::test_support::identity();
        let pool = info.pool_id.clone();
        let live = id.start_login_session(&pool, "sub-1").await.expect("live");
        let p = pool.clone();
        id.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO login_sessions (hash, pool_id, sub, auth_time, expires_ms)
                     VALUES ('old', ?1, 'sub-2', 0, 1)",
                    params![p],
                )?;
                c.execute(
                    "INSERT INTO oauth_codes (hash, pool_id, client_id, sub, redirect_uri, scopes,
                         auth_time, expires_ms) VALUES ('old', ?1, 'c', 's', 'r', '', 0, 1)",
                    params![p],
                )?;
                Ok::<_, IdentityError>(())
            })
            .await
            .expect("old rows");
        crate::revocations::Revocations::new(id.db.clone())
            .sweep()
            .await
            .expect("sweep");
        let left: (i64, i64) = id
            .db
            .read(|c| {
                Ok::<_, IdentityError>((
                    c.query_row("SELECT COUNT(*) FROM login_sessions", params![], |r| {
                        r.get(0)
                    })?,
                    c.query_row("SELECT COUNT(*) FROM oauth_codes", params![], |r| r.get(0))?,
                ))
            })
            .await
            .expect("count");
        assert_eq!(left, (1, 0));
        let (h, p) = (token_hash(&live), pool);
        let kept = id
            .db
            .read(move |c| {
                Ok::<_, IdentityError>(c.exists(
                    "SELECT 1 FROM login_sessions WHERE hash = ?1 AND pool_id = ?2",
                    params![h, p],
                )?)
            })
            .await
            .expect("kept");
        assert!(kept, "a live session stays");
    }

    #[test]
    fn at_hash_is_half_a_sha256() {
        // OpenID Connect Core 3.1.3.6: base64url of the left-most 128 bits.
        let h = crate::tokens::at_hash("token");
        assert_eq!(h.len(), 22);
    }
}
