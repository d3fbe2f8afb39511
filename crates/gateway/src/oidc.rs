//! Tokens of external OpenID Connect issuers (a real Cognito pool, Keycloak, Auth0, another
//! sluice): `--issuer URL --audience ID`.
//!
//! Each issuer's keys come from its discovery document (`{issuer}/.well-known/openid-
//! configuration`, whose `issuer` must be exactly the configured URL, as OpenID Connect
//! Discovery requires) and the `jwks_uri` it names. They are fetched at start, refreshed
//! every hour, and again when a token names a key id the set does not hold (a key
//! rotation) — at most once per [`MIN_REFRESH`] per issuer, so a stream of tokens with
//! made-up key ids cannot turn into a stream of requests to the issuer. A token is routed
//! to an issuer by its (unverified) `iss` claim and then verified as API Gateway's JWT
//! authorizer verifies: RS256 signature by a key of that issuer, `iss`, `aud` (or
//! `client_id`) among the configured audiences, `exp`/`nbf`/`iat`. `token_use` is not
//! required (only Cognito sets it). Tokens of any other issuer go to sluice's own pool,
//! unless that is switched off.
//!
//! The HTTP client is the caller's ([`Fetch`]), so this crate stays free of one.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sluice_identity::{Jwks, TokenError, VerifiedClaims, Verifier};
use tokio::sync::Notify;

use crate::Authorizer;

/// Fewest seconds between two fetches of one issuer's keys triggered by unknown key ids.
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// Keys are fetched again this often, whatever happens.
pub const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// How long a request waits for a refresh its unknown key id triggered.
const WAIT_FOR_REFRESH: Duration = Duration::from_secs(3);

/// GETs a URL and answers its body (or why not, for the logs).
pub type Fetch = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>> + Send + Sync,
>;

/// One external issuer and the client ids (audiences) its tokens must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
}

struct Issuer {
    config: IssuerConfig,
    verifier: RwLock<Option<Verifier>>,
    /// When keys were last fetched because of an unknown key id.
    last_forced: Mutex<Option<Instant>>,
    /// Wakes the refresher; `refreshed` is notified after each fetch.
    wake: Notify,
    refreshed: Notify,
}

/// The external issuers, their cached key sets and the task that refreshes them.
pub struct ExternalIssuers {
    issuers: Vec<Arc<Issuer>>,
    fetch: Fetch,
    leeway_secs: i64,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// A JWK as issuers publish it (`alg` and `use` are optional).
impl ExternalIssuers {
    pub fn new(configs: Vec<IssuerConfig>, fetch: Fetch, leeway_secs: i64) -> Arc<Self> {
        Arc::new(ExternalIssuers {
            issuers: configs
                .into_iter()
                .map(|config| {
                    Arc::new(Issuer {
                        config,
                        verifier: RwLock::new(None),
                        last_forced: Mutex::new(None),
                        wake: Notify::new(),
                        refreshed: Notify::new(),
                    })
                })
                .collect(),
            fetch,
            leeway_secs,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Fetches every issuer's keys now (at start); an issuer that cannot be reached is
    /// logged, its tokens are refused until a later fetch succeeds.
    pub async fn load(&self) {
        for i in &self.issuers {
            self.refresh(i).await;
        }
    }

    /// Refreshes each issuer every [`REFRESH_EVERY`], and when woken by an unknown key id.
    pub fn spawn_refresher(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.issuers
            .iter()
            .map(|i| {
                let (this, i) = (self.clone(), i.clone());
                tokio::spawn(async move {
                    loop {
                        let _ = tokio::time::timeout(REFRESH_EVERY, i.wake.notified()).await;
                        this.refresh(&i).await;
                    }
                })
            })
            .collect()
    }

    async fn refresh(&self, i: &Issuer) {
        match self.fetch_keys(&i.config).await {
            Ok(jwks) => match Verifier::new(
                &i.config.issuer,
                &jwks,
                i.config.audiences.iter().cloned(),
                self.leeway_secs,
            ) {
                Ok(v) => {
                    if let Ok(mut g) = i.verifier.write() {
                        *g = Some(v.without_token_use());
                    }
                    tracing::info!(issuer = %i.config.issuer, keys = jwks.keys.len(), "loaded the external issuer's keys");
                }
                Err(e) => {
                    tracing::warn!(issuer = %i.config.issuer, error = %e, "the external issuer's keys are unusable")
                }
            },
            Err(e) => {
                tracing::warn!(issuer = %i.config.issuer, error = %e, "cannot load the external issuer's keys; its tokens are refused until they load")
            }
        }
        i.refreshed.notify_waiters();
    }

    async fn fetch_keys(&self, c: &IssuerConfig) -> Result<Jwks, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            c.issuer.trim_end_matches('/')
        );
        let body = (self.fetch)(url.clone()).await?;
        let d: Discovery = serde_json::from_slice(&body)
            .map_err(|e| format!("{url} is not a discovery document: {e}"))?;
        if d.issuer != c.issuer {
            return Err(format!(
                "{url} names issuer {:?}, not {:?} (they must be identical)",
                d.issuer, c.issuer
            ));
        }
        let body = (self.fetch)(d.jwks_uri.clone()).await?;
        Jwks::from_published(&body).map_err(|e| format!("{}: {e}", d.jwks_uri))
    }

    /// The issuer a token names in its `iss` claim, if it is one of ours.
    fn route(&self, token: &str) -> Option<&Arc<Issuer>> {
        let payload = token.split('.').nth(1)?;
        let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        #[derive(Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        let iss = serde_json::from_slice::<Iss>(&bytes).ok()?.iss?;
        self.issuers.iter().find(|i| i.config.issuer == iss)
    }

    fn verify(&self, i: &Issuer, token: &str, now: i64) -> Result<VerifiedClaims, TokenError> {
        match i.verifier.read() {
            Ok(g) => match g.as_ref() {
                Some(v) => v.verify(token, now),
                None => Err(TokenError::UnknownKid),
            },
            Err(_) => Err(TokenError::UnknownKid),
        }
    }

    /// Asks for a refresh of `i`'s keys unless one was asked for recently; true if asked.
    fn ask_refresh(&self, i: &Issuer) -> bool {
        let Ok(mut last) = i.last_forced.lock() else {
            return false;
        };
        if last.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
            return false;
        }
        *last = Some(Instant::now());
        i.wake.notify_one();
        true
    }
}

/// The API's authorizer with external issuers: a token of one of them is verified against
/// its keys; any other goes to `own` (sluice's own pool), or is refused when that is off.
pub struct OidcAuthorizer {
    pub external: Arc<ExternalIssuers>,
    pub own: Option<Arc<dyn Authorizer>>,
}

impl Authorizer for OidcAuthorizer {
    fn authorize(&self, token: &str) -> Result<VerifiedClaims, TokenError> {
        let Some(issuer) = self.external.route(token) else {
            return match &self.own {
                Some(own) => own.authorize(token),
                None => Err(TokenError::Issuer),
            };
        };
        let now = crate::now_secs();
        match self.external.verify(issuer, token, now) {
            Err(TokenError::UnknownKid) if self.external.ask_refresh(issuer) => {
                // A key rotation: wait (briefly) for the new keys, on a runtime that can
                // spare this thread; elsewhere the next request will find them.
                let multi = tokio::runtime::Handle::try_current().is_ok_and(|h| {
                    h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                });
                if multi {
                    let issuer = issuer.clone();
                    tokio::task::block_in_place(|| {
                        tokio::runtime::Handle::current().block_on(async {
                            let _ =
                                tokio::time::timeout(WAIT_FOR_REFRESH, issuer.refreshed.notified())
                                    .await;
                        })
                    });
                }
                self.external.verify(issuer, token, now)
            }
            other => other,
        }
    }
}

/// Reads `--issuer`/`--audience` pairs: every issuer gets every audience given.
pub fn configs(issuers: &[String], audiences: &[String]) -> Result<Vec<IssuerConfig>, String> {
    if issuers.is_empty() {
        return Ok(Vec::new());
    }
    if audiences.is_empty() {
        return Err(
            "--issuer needs at least one --audience (the client id its tokens carry)".into(),
        );
    }
    let mut out: Vec<IssuerConfig> = Vec::new();
    let mut seen = HashMap::new();
    for i in issuers {
        if !(i.starts_with("https://") || i.starts_with("http://")) {
            return Err(format!("issuer {i:?} must be an http:// or https:// URL"));
        }
        if seen.insert(i.clone(), ()).is_none() {
            out.push(IssuerConfig {
                issuer: i.clone(),
                audiences: audiences.to_vec(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_need_audiences_and_urls() {
        assert!(configs(&[], &[]).expect("none").is_empty());
        assert!(configs(&["https://a".into()], &[]).is_err());
        assert!(configs(&["ftp://a".into()], &["x".into()]).is_err());
        let c = configs(
            &["https://a".into(), "https://a".into(), "http://b/p".into()],
            &["x".into()],
        )
        .expect("configs");
        assert_eq!(c.len(), 2, "duplicates collapse");
        assert_eq!(c[1].audiences, vec!["x".to_owned()]);
    }

    #[tokio::test]
    async fn a_token_is_routed_by_its_issuer_and_unknown_issuers_go_to_the_own_pool() {
        let fetch: Fetch = Arc::new(|url| Box::pin(async move { Err(format!("offline: {url}")) }));
        let ext = ExternalIssuers::new(
            vec![IssuerConfig {
                issuer: "https://idp.example".into(),
                audiences: vec!["app".into()],
            }],
            fetch,
            0,
        );
        let token = |iss: &str| {
            let p = URL_SAFE_NO_PAD.encode(format!("{{\"iss\":\"{iss}\"}}"));
            format!("e30.{p}.sig")
        };
        assert!(ext.route(&token("https://idp.example")).is_some());
        assert!(ext.route(&token("https://other")).is_none());
        assert!(ext.route("not a token").is_none());
        // Keys not loaded (the issuer is offline): refused, and a refresh is asked once.
        let auth = OidcAuthorizer {
            external: ext.clone(),
            own: None,
        };
        assert!(matches!(
            auth.authorize(&token("https://idp.example")),
            Err(TokenError::UnknownKid)
        ));
        assert!(!ext.ask_refresh(&ext.issuers[0]), "rate-limited");
        assert!(matches!(
            auth.authorize(&token("https://other")),
            Err(TokenError::Issuer)
        ));
    }
}
