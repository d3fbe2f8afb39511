//! External identity providers of a user pool (CreateIdentityProvider and friends) and
//! OpenID Connect federation through the hosted UI: the authorization request goes on to the
//! provider's authorization endpoint, its answer comes back to `/oauth2/idpresponse`, the
//! code is redeemed at the provider's token endpoint, its ID token verified with the
//! provider's keys, and the user signed in as `<provider>_<sub>` (status
//! `EXTERNAL_PROVIDER`, with the provider's claims mapped to attributes and an `identities`
//! attribute), as Cognito does.
//!
//! Identity makes no HTTP request itself: the binary gives it a [`FederationHttp`]
//! ([`Identity::set_federation_http`]), as it gives the trigger runner.
//!
//! Rows: `identity_providers` (`(pool, name)`: type, details, attribute mapping and
//! identifiers as JSON); `federation_states` (a redirect to a provider in flight: its
//! `state`'s hash, the authorization request to answer afterwards, the `nonce` the ID token
//! must carry; 10 minutes; deleted by the answer that reads it, so each is used once).
//!
//! Only OIDC providers sign users in here; SAML and the social providers (Google, Facebook,
//! Login with Amazon, Sign in with Apple) are stored and listed, and an authorization
//! naming one is refused (`unsupported` in COMPATIBILITY.md).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_meta::{Tx, now_ms, params};

use crate::keys::Jwks;
use crate::pools::{check_max_results, encode_token, page_token, pool_settings};
use crate::{Identity, IdentityError, random_token, token_hash};

pub(crate) const MIGRATION: &str = "
CREATE TABLE identity_providers (
    pool_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    details TEXT NOT NULL,
    mapping TEXT NOT NULL,
    identifiers TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (pool_id, name)
);
CREATE TABLE federation_states (
    hash TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    request TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
";

/// The identity provider of the pool's own users, in `SupportedIdentityProviders`.
pub const COGNITO_PROVIDER: &str = "COGNITO";

/// A redirect to a provider may take this long to come back.
const STATE_TTL_MS: i64 = 10 * 60_000;

/// The provider types Cognito knows.
const KINDS: &[&str] = &[
    "OIDC",
    "SAML",
    "Google",
    "Facebook",
    "LoginWithAmazon",
    "SignInWithApple",
];

/// HTTP for federation: discovery documents, key sets and token requests to providers.
#[async_trait::async_trait]
pub trait FederationHttp: Send + Sync {
    /// GET `url`: the body of a 2xx answer.
    async fn get(&self, url: &str) -> Result<Vec<u8>, String>;
    /// POST a form to `url`: the status and body, whatever the status.
    async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<(u16, Vec<u8>), String>;
}

/// An identity provider as DescribeIdentityProvider shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityProvider {
    pub pool_id: String,
    pub name: String,
    pub kind: String,
    pub details: BTreeMap<String, String>,
    pub mapping: BTreeMap<String, String>,
    pub identifiers: Vec<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

fn invalid(m: impl Into<String>) -> IdentityError {
    IdentityError::InvalidParameter(m.into())
}

fn not_found(name: &str) -> IdentityError {
    IdentityError::ResourceNotFound(format!("Identity provider {name} does not exist."))
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 32
        && !name.chars().any(char::is_whitespace)
        && !name.starts_with('_')
        && !name.eq_ignore_ascii_case(COGNITO_PROVIDER);
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "1 validation error detected: Value '{name}' at 'providerName' failed to satisfy constraint: 1 to 32 characters, no white space, not COGNITO"
        )))
    }
}

fn check_identifiers(ids: &[String]) -> Result<(), IdentityError> {
    if ids.len() > 50 {
        return Err(invalid("At most 50 IdpIdentifiers"));
    }
    for i in ids {
        let ok = !i.is_empty()
            && i.chars().count() <= 40
            && i.chars()
                .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_+=.@-".contains(c));
        if !ok {
            return Err(invalid(format!(
                "1 validation error detected: Value '{i}' at 'idpIdentifiers' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w\\s+=.@-]+"
            )));
        }
    }
    Ok(())
}

/// The details each type requires (as Cognito's API reference lists them).
fn check_details(kind: &str, d: &BTreeMap<String, String>) -> Result<(), IdentityError> {
    let need = |keys: &[&str]| -> Result<(), IdentityError> {
        for k in keys {
            if d.get(*k).is_none_or(|v| v.is_empty()) {
                return Err(invalid(format!(
                    "ProviderDetails of a {kind} provider need {k}"
                )));
            }
        }
        Ok(())
    };
    match kind {
        "OIDC" => {
            need(&[
                "client_id",
                "authorize_scopes",
                "oidc_issuer",
                "attributes_request_method",
            ])?;
            if !d["authorize_scopes"].split(' ').any(|s| s == "openid") {
                return Err(invalid(
                    "authorize_scopes of an OIDC provider must include openid",
                ));
            }
            if !matches!(d["attributes_request_method"].as_str(), "GET" | "POST") {
                return Err(invalid("attributes_request_method must be GET or POST"));
            }
            Ok(())
        }
        "SAML" => {
            if d.contains_key("MetadataURL") || d.contains_key("MetadataFile") {
                Ok(())
            } else {
                Err(invalid(
                    "ProviderDetails of a SAML provider need MetadataURL or MetadataFile",
                ))
            }
        }
        "SignInWithApple" => need(&[
            "client_id",
            "team_id",
            "key_id",
            "private_key",
            "authorize_scopes",
        ]),
        _ => need(&["client_id", "client_secret", "authorize_scopes"]),
    }
}

const PROVIDER_COLUMNS: &str = "name, kind, details, mapping, identifiers, created_ms, updated_ms";

fn provider_from_row(
    pool: &str,
    r: &sluice_meta::Row<'_>,
) -> sluice_meta::MetaResult<(IdentityProvider, [String; 3])> {
    Ok((
        IdentityProvider {
            pool_id: pool.to_owned(),
            name: r.get(0)?,
            kind: r.get(1)?,
            details: BTreeMap::new(),
            mapping: BTreeMap::new(),
            identifiers: Vec::new(),
            created_ms: r.get(5)?,
            updated_ms: r.get(6)?,
        },
        [r.get(2)?, r.get(3)?, r.get(4)?],
    ))
}

fn decoded(
    (mut ip, [details, mapping, identifiers]): (IdentityProvider, [String; 3]),
) -> Result<IdentityProvider, IdentityError> {
    ip.details = serde_json::from_str(&details)?;
    ip.mapping = serde_json::from_str(&mapping)?;
    ip.identifiers = serde_json::from_str(&identifiers)?;
    Ok(ip)
}

fn read_provider(
    c: &Tx<'_>,
    pool: &str,
    name: &str,
) -> Result<Option<IdentityProvider>, IdentityError> {
    c.query_opt(
        &format!(
            "SELECT {PROVIDER_COLUMNS} FROM identity_providers WHERE pool_id = ?1 AND name = ?2"
        ),
        params![pool, name],
        |r| provider_from_row(pool, r),
    )?
    .map(decoded)
    .transpose()
}

/// Every provider of the pool, by name, in one read.
fn read_providers(c: &Tx<'_>, pool: &str) -> Result<Vec<IdentityProvider>, IdentityError> {
    c.query_vec(
        &format!(
            "SELECT {PROVIDER_COLUMNS} FROM identity_providers WHERE pool_id = ?1 ORDER BY name"
        ),
        params![pool],
        |r| provider_from_row(pool, r),
    )?
    .into_iter()
    .map(decoded)
    .collect()
}

/// The names of the pool's providers.
pub(crate) fn provider_names(c: &Tx<'_>, pool: &str) -> Result<Vec<String>, IdentityError> {
    Ok(c.query_vec(
        "SELECT name FROM identity_providers WHERE pool_id = ?1 ORDER BY name",
        params![pool],
        |r| r.get(0),
    )?)
}

/// Another provider of the pool already has one of `ids`.
fn identifiers_taken(
    c: &Tx<'_>,
    pool: &str,
    name: &str,
    ids: &[String],
) -> Result<Option<String>, IdentityError> {
    Ok(read_providers(c, pool)?
        .into_iter()
        .filter(|p| p.name != name)
        .find_map(|p| ids.iter().find(|i| p.identifiers.contains(i)).cloned()))
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    userinfo_endpoint: Option<String>,
    jwks_uri: Option<String>,
}

/// Where a redirect to a provider goes, and the state that brings its answer back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationStart {
    pub url: String,
}

/// A provider's answer, verified: the login session of the signed-in user, and the
/// authorization request (its parameters) to answer now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationDone {
    pub login: String,
    pub request: BTreeMap<String, String>,
}

impl Identity {
    /// Gives the identity service the HTTP client federation uses.
    pub fn set_federation_http(&self, http: Arc<dyn FederationHttp>) {
        if let Ok(mut f) = self.federation.write() {
            *f = Some(http);
        }
    }

    fn http(&self) -> Result<Arc<dyn FederationHttp>, IdentityError> {
        self.federation
            .read()
            .ok()
            .and_then(|f| f.clone())
            .ok_or_else(|| {
                invalid("Federation is not available in this deployment (no HTTP client).")
            })
    }

    /// An OIDC provider's endpoints, from its discovery document when its details do not
    /// name them (Cognito does the same when a provider is created).
    async fn discover(&self, d: &mut BTreeMap<String, String>) -> Result<(), IdentityError> {
        let wanted = ["authorize_url", "token_url", "attributes_url", "jwks_uri"];
        if wanted.iter().all(|k| d.contains_key(*k)) {
            return Ok(());
        }
        let issuer = d.get("oidc_issuer").cloned().unwrap_or_default();
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let body = self.http()?.get(&url).await.map_err(|e| {
            invalid(format!(
                "Unable to contact the provider's discovery document: {e}"
            ))
        })?;
        let doc: Discovery = serde_json::from_slice(&body)
            .map_err(|e| invalid(format!("{url} is not an OpenID discovery document: {e}")))?;
        if doc.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(invalid(format!(
                "{url} names issuer {}, not {issuer}",
                doc.issuer
            )));
        }
        for (k, v) in [
            ("authorize_url", doc.authorization_endpoint),
            ("token_url", doc.token_endpoint),
            ("attributes_url", doc.userinfo_endpoint),
            ("jwks_uri", doc.jwks_uri),
        ] {
            if let Some(v) = v
                && !d.contains_key(k)
            {
                d.insert(k.to_owned(), v);
            }
        }
        for k in ["authorize_url", "token_url", "jwks_uri"] {
            if !d.contains_key(k) {
                return Err(invalid(format!(
                    "The provider's discovery document names no {k}"
                )));
            }
        }
        Ok(())
    }

    /// CreateIdentityProvider.
    pub async fn create_identity_provider(
        &self,
        pool_id: &str,
        name: &str,
        kind: &str,
        mut details: BTreeMap<String, String>,
        mapping: BTreeMap<String, String>,
        identifiers: Vec<String>,
    ) -> Result<IdentityProvider, IdentityError> {
        check_name(name)?;
        if !KINDS.contains(&kind) {
            return Err(invalid(format!(
                "1 validation error detected: Value '{kind}' at 'providerType' failed to satisfy constraint: Member must satisfy enum value set: [SAML, Facebook, Google, LoginWithAmazon, SignInWithApple, OIDC]"
            )));
        }
        check_details(kind, &details)?;
        check_identifiers(&identifiers)?;
        {
            let p = pool_id.to_owned();
            self.db.read(move |c| pool_settings(c, &p)).await?;
        }
        if kind == "OIDC" {
            self.discover(&mut details).await?;
        }
        let now = now_ms();
        let provider = IdentityProvider {
            pool_id: pool_id.to_owned(),
            name: name.to_owned(),
            kind: kind.to_owned(),
            details,
            mapping,
            identifiers,
            created_ms: now,
            updated_ms: now,
        };
        let p = provider.clone();
        self.db
            .write(move |c| {
                pool_settings(c, &p.pool_id)?;
                if read_provider(c, &p.pool_id, &p.name)?.is_some() {
                    return Err(IdentityError::DuplicateProvider(format!(
                        "A provider with the name {} already exists in this user pool.",
                        p.name
                    )));
                }
                if let Some(i) = identifiers_taken(c, &p.pool_id, &p.name, &p.identifiers)? {
                    return Err(IdentityError::DuplicateProvider(format!(
                        "The identifier {i} is already used by another provider of this user pool."
                    )));
                }
                c.execute(
                    "INSERT INTO identity_providers (pool_id, name, kind, details, mapping,
                         identifiers, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                    params![
                        p.pool_id,
                        p.name,
                        p.kind,
                        serde_json::to_string(&p.details)?,
                        serde_json::to_string(&p.mapping)?,
                        serde_json::to_string(&p.identifiers)?,
                        p.created_ms
                    ],
                )?;
                Ok(())
            })
            .await?;
        Ok(provider)
    }

    /// DescribeIdentityProvider.
    pub async fn describe_identity_provider(
        &self,
        pool_id: &str,
        name: &str,
    ) -> Result<IdentityProvider, IdentityError> {
        let (p, n) = (pool_id.to_owned(), name.to_owned());
        self.db
            .read(move |c| {
                pool_settings(c, &p)?;
                read_provider(c, &p, &n)?.ok_or_else(|| not_found(&n))
            })
            .await
    }

    /// GetIdentityProviderByIdentifier.
    pub async fn identity_provider_by_identifier(
        &self,
        pool_id: &str,
        identifier: &str,
    ) -> Result<IdentityProvider, IdentityError> {
        let (p, i) = (pool_id.to_owned(), identifier.to_owned());
        self.db
            .read(move |c| {
                pool_settings(c, &p)?;
                read_providers(c, &p)?
                    .into_iter()
                    .find(|ip| ip.identifiers.contains(&i))
                    .ok_or_else(|| {
                        IdentityError::ResourceNotFound(format!(
                            "Identity provider with identifier {i} does not exist."
                        ))
                    })
            })
            .await
    }

    /// ListIdentityProviders: by name, `max_results` (1 to 60) a page.
    pub async fn list_identity_providers(
        &self,
        pool_id: &str,
        max_results: i64,
        next_token: Option<&str>,
    ) -> Result<(Vec<IdentityProvider>, Option<String>), IdentityError> {
        let max_results = check_max_results(max_results, 60)?;
        let after = page_token(next_token)?;
        let p = pool_id.to_owned();
        self.db
            .read(move |c| {
                pool_settings(c, &p)?;
                let mut out: Vec<IdentityProvider> = read_providers(c, &p)?
                    .into_iter()
                    .filter(|ip| ip.name.as_str() > after.as_str())
                    .collect();
                let more = out.len() as i64 > max_results;
                out.truncate(max_results as usize);
                let next = if more {
                    out.last().map(|ip| encode_token(&ip.name))
                } else {
                    None
                };
                Ok((out, next))
            })
            .await
    }

    /// UpdateIdentityProvider: the given parts replace the stored ones (details are
    /// merged, as in Cognito).
    pub async fn update_identity_provider(
        &self,
        pool_id: &str,
        name: &str,
        details: Option<BTreeMap<String, String>>,
        mapping: Option<BTreeMap<String, String>>,
        identifiers: Option<Vec<String>>,
    ) -> Result<IdentityProvider, IdentityError> {
        let mut ip = self.describe_identity_provider(pool_id, name).await?;
        if let Some(d) = details {
            for (k, v) in d {
                ip.details.insert(k, v);
            }
            check_details(&ip.kind, &ip.details)?;
            if ip.kind == "OIDC" {
                self.discover(&mut ip.details).await?;
            }
        }
        if let Some(m) = mapping {
            ip.mapping = m;
        }
        if let Some(i) = identifiers {
            check_identifiers(&i)?;
            ip.identifiers = i;
        }
        ip.updated_ms = now_ms();
        let p = ip.clone();
        self.db
            .write(move |c| {
                if read_provider(c, &p.pool_id, &p.name)?.is_none() {
                    return Err(not_found(&p.name));
                }
                if let Some(i) = identifiers_taken(c, &p.pool_id, &p.name, &p.identifiers)? {
                    return Err(IdentityError::DuplicateProvider(format!(
                        "The identifier {i} is already used by another provider of this user pool."
                    )));
                }
                c.execute(
                    "UPDATE identity_providers SET details = ?3, mapping = ?4, identifiers = ?5,
                         updated_ms = ?6 WHERE pool_id = ?1 AND name = ?2",
                    params![
                        p.pool_id,
                        p.name,
                        serde_json::to_string(&p.details)?,
                        serde_json::to_string(&p.mapping)?,
                        serde_json::to_string(&p.identifiers)?,
                        p.updated_ms
                    ],
                )?;
                Ok(())
            })
            .await?;
        Ok(ip)
    }

    /// DeleteIdentityProvider. Its users stay (as in Cognito); they can no longer sign in.
    pub async fn delete_identity_provider(
        &self,
        pool_id: &str,
        name: &str,
    ) -> Result<(), IdentityError> {
        let (p, n) = (pool_id.to_owned(), name.to_owned());
        self.db
            .write(move |c| {
                pool_settings(c, &p)?;
                let gone = c.execute(
                    "DELETE FROM identity_providers WHERE pool_id = ?1 AND name = ?2",
                    params![&p, &n],
                )?;
                if gone == 0 {
                    return Err(not_found(&n));
                }
                c.execute(
                    "DELETE FROM federation_states WHERE pool_id = ?1 AND provider = ?2",
                    params![&p, &n],
                )?;
                Ok(())
            })
            .await
    }

    /// The provider an authorization request names (`identity_provider`, or one of its
    /// `idp_identifier`s), if it is one of the pool's.
    pub(crate) async fn provider_for(
        &self,
        pool_id: &str,
        name: Option<&str>,
        identifier: Option<&str>,
    ) -> Result<Option<IdentityProvider>, IdentityError> {
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            let (p, n) = (pool_id.to_owned(), n.to_owned());
            return self.db.read(move |c| read_provider(c, &p, &n)).await;
        }
        if let Some(i) = identifier.filter(|i| !i.is_empty()) {
            return match self.identity_provider_by_identifier(pool_id, i).await {
                Ok(ip) => Ok(Some(ip)),
                Err(IdentityError::ResourceNotFound(_)) => Ok(None),
                Err(e) => Err(e),
            };
        }
        Ok(None)
    }

    /// The start of a federated sign-in through provider `name`: its authorization URL,
    /// with a state that brings its answer (to `callback`, the pool's
    /// `/oauth2/idpresponse`) back to `request` (the checked authorization request's
    /// parameters).
    pub async fn federation_start(
        &self,
        pool_id: &str,
        name: &str,
        request: &BTreeMap<String, String>,
        callback: &str,
    ) -> Result<FederationStart, IdentityError> {
        let name = name.to_owned();
        let ip = self.describe_identity_provider(pool_id, &name).await?;
        if ip.kind != "OIDC" {
            return Err(IdentityError::OAuth {
                error: "invalid_request",
                description: format!(
                    "sign-in through {} providers is not supported by sluice (only OIDC)",
                    ip.kind
                ),
            });
        }
        let state = random_token();
        let nonce = random_token();
        let (h, p, n, req, no) = (
            token_hash(&state),
            pool_id.to_owned(),
            name.clone(),
            serde_json::to_string(request)?,
            nonce.clone(),
        );
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO federation_states (hash, pool_id, provider, request, nonce, expires_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![h, p, n, req, no, now_ms() + STATE_TTL_MS],
                )?;
                Ok::<_, IdentityError>(())
            })
            .await?;
        let d = &ip.details;
        let query = [
            ("response_type", "code"),
            ("client_id", d.get("client_id").map_or("", String::as_str)),
            ("redirect_uri", callback),
            (
                "scope",
                d.get("authorize_scopes").map_or("openid", String::as_str),
            ),
            ("state", state.as_str()),
            ("nonce", nonce.as_str()),
        ];
        let encoded: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect();
        let base = d.get("authorize_url").cloned().unwrap_or_default();
        let sep = if base.contains('?') { '&' } else { '?' };
        Ok(FederationStart {
            url: format!("{base}{sep}{}", encoded.join("&")),
        })
    }

    /// A provider's answer at `/oauth2/idpresponse`: the code redeemed at its token
    /// endpoint, its ID token verified (issuer, audience, expiry, signature, nonce), the
    /// user created or updated, and a login session opened.
    pub async fn federation_finish(
        &self,
        pool_id: &str,
        state: &str,
        code: &str,
        callback: &str,
    ) -> Result<FederationDone, IdentityError> {
        let denied = |m: String| IdentityError::OAuth {
            error: "access_denied",
            description: m,
        };
        let (h, p) = (token_hash(state), pool_id.to_owned());
        let row: Option<(String, String, String, i64)> = self
            .db
            .write(move |c| {
                Ok::<_, IdentityError>(c.query_opt(
                    "DELETE FROM federation_states WHERE hash = ?1 AND pool_id = ?2
                     RETURNING provider, request, nonce, expires_ms",
                    params![&h, &p],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?)
            })
            .await?;
        let Some((name, request, nonce, expires)) = row else {
            return Err(denied(
                "the sign-in's state is unknown or already used".into(),
            ));
        };
        if expires < now_ms() {
            return Err(denied("the sign-in took too long; start again".into()));
        }
        let request: BTreeMap<String, String> = serde_json::from_str(&request)?;
        let ip = self
            .describe_identity_provider(pool_id, &name)
            .await
            .map_err(|_| denied(format!("identity provider {name} no longer exists")))?;
        let d = &ip.details;
        let get = |k: &str| d.get(k).map_or("", String::as_str);
        let http = self.http()?;
        let (status, body) = http
            .post_form(
                get("token_url"),
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", callback),
                    ("client_id", get("client_id")),
                    ("client_secret", get("client_secret")),
                ],
            )
            .await
            .map_err(|e| denied(format!("the provider's token endpoint failed: {e}")))?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(denied(format!(
                "the provider refused the code ({status}): {}",
                answer
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no error given")
            )));
        }
        let id_token = answer
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| denied("the provider sent no ID token".into()))?;
        let keys_body = http
            .get(get("jwks_uri"))
            .await
            .map_err(|e| denied(format!("the provider's keys could not be read: {e}")))?;
        let jwks = Jwks::from_published(&keys_body)
            .map_err(|e| denied(format!("the provider's keys are unusable: {e}")))?;
        let verifier = crate::tokens::Verifier::new(
            get("oidc_issuer"),
            &jwks,
            [get("client_id").to_owned()],
            60,
        )
        .map_err(|e| denied(format!("the provider's keys are unusable: {e}")))?
        .without_token_use();
        verifier.verify(id_token, now_ms() / 1000).map_err(|e| {
            denied(format!(
                "the provider's ID token is not valid: {}",
                e.reason()
            ))
        })?;
        let claims = crate::tokens::unverified_payload(id_token)
            .ok_or_else(|| denied("the provider's ID token is unreadable".into()))?;
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce.as_str()) {
            return Err(denied(
                "the provider's ID token does not carry this sign-in's nonce".into(),
            ));
        }
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| denied("the provider's ID token has no sub".into()))?
            .to_owned();
        let sub = self.federated_user(&ip, &subject, &claims).await?;
        let login = self.start_login_session(pool_id, &sub).await?;
        Ok(FederationDone { login, request })
    }

    /// Creates the user `<provider>_<subject>` at its first sign-in, or updates its mapped
    /// attributes at the next ones (as Cognito does); returns its `sub`.
    async fn federated_user(
        &self,
        ip: &IdentityProvider,
        subject: &str,
        claims: &Value,
    ) -> Result<String, IdentityError> {
        let username = format!("{}_{subject}", ip.name);
        let mut mapped = BTreeMap::new();
        for (attr, claim) in &ip.mapping {
            if attr == "username" {
                continue;
            }
            let v = match claims.get(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => continue,
            };
            mapped.insert(attr.clone(), v);
        }
        let identities = json!([{
            "userId": subject,
            "providerName": ip.name,
            "providerType": ip.kind,
            "issuer": null,
            "primary": true,
            "dateCreated": now_ms(),
        }])
        .to_string();
        let (pool, name) = (ip.pool_id.clone(), username.clone());
        let existing = self
            .db
            .read(move |c| crate::users::user_where(c, "username", &pool, &name))
            .await?;
        if let Some(u) = existing {
            if !u.enabled {
                return Err(IdentityError::OAuth {
                    error: "access_denied",
                    description: "User is disabled.".into(),
                });
            }
            if !mapped.is_empty() {
                let (pool, sub) = (ip.pool_id.clone(), u.sub.clone());
                let mut attrs = u.attributes.clone();
                attrs.extend(mapped);
                self.db
                    .write(move |c| {
                        c.execute(
                            "UPDATE users SET attributes = ?3, updated_ms = ?4 WHERE pool_id = ?1 AND sub = ?2",
                            params![pool, sub, serde_json::to_string(&attrs)?, now_ms()],
                        )?;
                        Ok::<_, IdentityError>(())
                    })
                    .await?;
            }
            return Ok(u.sub);
        }
        mapped.insert("identities".to_owned(), identities);
        let rec = self
            .insert_external_user(&ip.pool_id, &username, mapped)
            .await?;
        Ok(rec.sub)
    }
}

/// `application/x-www-form-urlencoded` of one key or value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::{AuthorizeAnswer, AuthorizeRequest, HostedStep, TokenRequest};

    /// Another pool of the same identity service as the provider: its discovery document,
    /// keys and token endpoint answered in process.
    struct Upstream {
        id: Identity,
        pool: String,
    }

    #[async_trait::async_trait]
    impl FederationHttp for Upstream {
        async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
            let issuer = self.id.issuer(&self.pool);
            if url == format!("{issuer}/.well-known/openid-configuration") {
                return Ok(json!({
                    "issuer": issuer,
                    "authorization_endpoint": format!("{issuer}/oauth2/authorize"),
                    "token_endpoint": format!("{issuer}/oauth2/token"),
                    "userinfo_endpoint": format!("{issuer}/oauth2/userInfo"),
                    "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
                })
                .to_string()
                .into_bytes());
            }
            if url == format!("{issuer}/.well-known/jwks.json") {
                let jwks = self.id.jwks(&self.pool).map_err(|e| e.to_string())?;
                return serde_json::to_vec(&jwks).map_err(|e| e.to_string());
            }
            Err(format!("GET {url}: 404"))
        }

        async fn post_form(
            &self,
            _url: &str,
            form: &[(&str, &str)],
        ) -> Result<(u16, Vec<u8>), String> {
            let get = |k: &str| {
                form.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            };
            let req = TokenRequest {
                grant_type: get("grant_type"),
                code: get("code"),
                redirect_uri: get("redirect_uri"),
                client_id: get("client_id"),
                client_secret: get("client_secret"),
                ..TokenRequest::default()
            };
            match self.id.oauth_token(&self.pool, &req).await {
                Ok(t) => Ok((
                    200,
                    json!({"id_token": t.id_token, "access_token": t.access_token})
                        .to_string()
                        .into_bytes(),
                )),
                Err(e) => Ok((
                    400,
                    json!({"error": e.to_string()}).to_string().into_bytes(),
                )),
            }
        }
    }

    fn oauth_client(callback: &str, providers: &[&str]) -> crate::ClientSpec {
        crate::ClientSpec {
            client_name: Some("app".into()),
            generate_secret: true,
            oauth: crate::OAuthSettings {
                callback_urls: vec![callback.into()],
                allowed_oauth_flows: vec!["code".into()],
                allowed_oauth_scopes: vec!["openid".into(), "email".into()],
                allowed_oauth_flows_user_pool_client: true,
                supported_identity_providers: providers.iter().map(|p| p.to_string()).collect(),
                ..crate::OAuthSettings::default()
            },
            ..crate::ClientSpec::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_of_another_pool_signs_in_through_oidc() {
        let (id, info, _engines) = crate::test_support::identity();
        let down = info.pool_id.clone();
        let up = id
            .create_pool("us-east-2", "upstream", crate::PoolSettings::default())
            .await
            .expect("upstream pool")
            .id;
        let idp_callback = format!("{}/oauth2/idpresponse", id.issuer(&down));
        let upstream_client = id
            .create_client(&up, oauth_client(&idp_callback, &[]))
            .await
            .expect("upstream client");
        id.create_user(&up, "fay@example.com", "Passw0rd!", false)
            .expect("upstream user");
        id.set_federation_http(Arc::new(Upstream {
            id: id.clone(),
            pool: up.clone(),
        }));
        let details: BTreeMap<String, String> = [
            ("client_id", upstream_client.id.as_str()),
            (
                "client_secret",
                upstream_client.secret.as_deref().unwrap_or(""),
            ),
            ("authorize_scopes", "openid email"),
            ("oidc_issuer", id.issuer(&up).as_str()),
            ("attributes_request_method", "GET"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ip = id
            .create_identity_provider(
                &down,
                "Up",
                "OIDC",
                details,
                BTreeMap::from([("email".to_owned(), "email".to_owned())]),
                vec![],
            )
            .await
            .expect("provider");
        assert!(ip.details["token_url"].ends_with("/oauth2/token"));
        let app = id
            .create_client(&down, oauth_client("https://app.example/cb", &["Up"]))
            .await
            .expect("app");
        let a = id
            .check_authorize(
                &down,
                &AuthorizeRequest {
                    response_type: Some("code".into()),
                    client_id: Some(app.id.clone()),
                    redirect_uri: Some("https://app.example/cb".into()),
                    identity_provider: Some("Up".into()),
                    ..AuthorizeRequest::default()
                },
            )
            .await
            .expect("check")
            .expect("authorized");
        assert_eq!(a.provider.as_deref(), Some("Up"));
        // Only through the provider: the pool's own sign-in is refused for this app.
        assert!(matches!(
            id.hosted_sign_in(&down, &app.id, "fay@example.com", "Passw0rd!")
                .await,
            Err(IdentityError::NotAuthorized(_))
        ));
        let request = BTreeMap::from([("client_id".to_owned(), app.id.clone())]);
        let start = id
            .federation_start(
                &down,
                a.provider.as_deref().expect("provider"),
                &request,
                &idp_callback,
            )
            .await
            .expect("start");
        let q: BTreeMap<String, String> = start
            .url
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":").replace("%2F", "/")))
            .collect();
        // The browser at the provider: it signs in there and comes back with a code.
        let up_a = id
            .check_authorize(
                &up,
                &AuthorizeRequest {
                    response_type: Some("code".into()),
                    client_id: Some(upstream_client.id.clone()),
                    redirect_uri: Some(idp_callback.clone()),
                    scope: Some("openid email".into()),
                    nonce: q.get("nonce").cloned(),
                    ..AuthorizeRequest::default()
                },
            )
            .await
            .expect("check")
            .expect("authorized upstream");
        let HostedStep::SignedIn(up_login) = id
            .hosted_sign_in(&up, &upstream_client.id, "fay@example.com", "Passw0rd!")
            .await
            .expect("upstream sign-in")
        else {
            panic!("expected a login");
        };
        let Some(AuthorizeAnswer::Code(code)) = id
            .authorize_signed_in(&up, &up_login, &up_a)
            .await
            .expect("code")
        else {
            panic!("expected a code");
        };
        let state = q.get("state").cloned().expect("state");
        let done = id
            .federation_finish(&down, &state, &code, &idp_callback)
            .await
            .expect("finish");
        assert_eq!(done.request, request);
        assert!(
            id.login_session_live(&down, &done.login)
                .await
                .expect("live")
        );
        // The state is used once.
        assert!(matches!(
            id.federation_finish(&down, &state, &code, &idp_callback)
                .await,
            Err(IdentityError::OAuth {
                error: "access_denied",
                ..
            })
        ));
        let page = id.list_users(&down, None, None, None).await.expect("users");
        let fed = page
            .users
            .iter()
            .find(|u| u.username.starts_with("Up_"))
            .expect("federated user");
        assert_eq!(fed.status, "EXTERNAL_PROVIDER");
        assert_eq!(
            fed.attributes.get("email").map(String::as_str),
            Some("fay@example.com")
        );
        assert!(fed.attributes["identities"].contains("\"providerName\":\"Up\""));
    }

    #[test]
    fn names_details_and_identifiers() {
        assert!(check_name("Upstream").is_ok());
        for bad in ["", "COGNITO", "has space", "_x", &"x".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let d = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let oidc = d(&[
            ("client_id", "c"),
            ("authorize_scopes", "openid email"),
            ("oidc_issuer", "https://idp.example.com"),
            ("attributes_request_method", "GET"),
        ]);
        assert!(check_details("OIDC", &oidc).is_ok());
        let mut no_openid = oidc.clone();
        no_openid.insert("authorize_scopes".into(), "email".into());
        assert!(check_details("OIDC", &no_openid).is_err());
        assert!(check_details("SAML", &d(&[("MetadataURL", "https://x/m")])).is_ok());
        assert!(check_details("SAML", &d(&[])).is_err());
        assert!(check_details("Google", &d(&[("client_id", "c")])).is_err());
        assert!(check_identifiers(&["example.com".into()]).is_ok());
        assert!(check_identifiers(&["bad/slash".into()]).is_err());
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }
}
