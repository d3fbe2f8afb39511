//! HTTP APIs, as API Gateway v2 has them (`aws apigatewayv2 …`): APIs, JWT authorizers,
//! `AWS_PROXY` integrations to functions, routes and stages ([`HttpApis`], the registry),
//! and serving them ([`serve`]: route matching, the JWT authorizer, the payload format 2.0
//! and 1.0 events, the response rules).
//!
//! An API and its parts are rows of the metadata engine (`http_apis`, and `http_api_items`
//! holding each authorizer, integration, route, stage and deployment as the JSON document
//! the API answers with), so every gateway process sharing the engine serves the same APIs.
//! Every change bumps the API's `revision`; a serving process re-reads an API whose
//! revision changed, so a change is served from the next request on.
//!
//! **Where an API is served** (`ApiEndpoint`): on the upload API's listener, under
//! `/_aws/execute-api/<apiId>` — e.g. `http://127.0.0.1:8080/_aws/execute-api/a1b2c3d4e5`.
//! A path prefix rather than a host name under `*.localhost`, because curl, browsers and
//! SDKs reach it with no name resolution set up; the stage `$default` is served at that
//! root, another stage under `/<stage name>`, as on AWS.
//!
//! **Deployments.** Every stage serves the API's current configuration (as an auto-deployed
//! stage does); `CreateDeployment` is accepted and recorded, and freezes nothing.
//!
//! Not supported, refused with `BadRequestException`: WebSocket APIs, `REQUEST` (Lambda)
//! authorizers, integrations other than `AWS_PROXY` to a function, CORS configuration,
//! custom domains, and JWT issuers other than this server's user pools.

pub mod serve;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sluice_meta::{Meta, MetaError, Migration, Tx, now_ms, params};

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "apis-0001",
    sql: "
CREATE TABLE http_apis (
    api_id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    revision INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE http_api_items (
    api_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    item_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (api_id, kind, item_id)
);
",
}];

/// Where a served API lives under the upload API's listener.
pub const PATH_PREFIX: &str = "/_aws/execute-api";

#[derive(Debug, thiserror::Error)]
pub enum ApisError {
    /// `NotFoundException` (404).
    #[error("{0}")]
    NotFound(String),
    /// `BadRequestException` (400).
    #[error("{0}")]
    BadRequest(String),
    /// `ConflictException` (409).
    #[error("{0}")]
    Conflict(String),
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error("{0}")]
    Internal(String),
}

impl ApisError {
    /// The engine is down or full: 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ApisError::Meta(m) if m.is_unavailable() || m.is_full())
    }
}

fn bad(m: impl Into<String>) -> ApisError {
    ApisError::BadRequest(m.into())
}

/// The kinds of an API's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Authorizer,
    Integration,
    Route,
    Stage,
    Deployment,
}

impl Kind {
    /// The path segment (`authorizers`, …).
    pub fn from_segment(s: &str) -> Option<Kind> {
        Some(match s {
            "authorizers" => Kind::Authorizer,
            "integrations" => Kind::Integration,
            "routes" => Kind::Route,
            "stages" => Kind::Stage,
            "deployments" => Kind::Deployment,
            _ => return None,
        })
    }

    fn table_kind(self) -> &'static str {
        match self {
            Kind::Authorizer => "authorizer",
            Kind::Integration => "integration",
            Kind::Route => "route",
            Kind::Stage => "stage",
            Kind::Deployment => "deployment",
        }
    }

    /// The id field of the kind's document.
    fn id_field(self) -> &'static str {
        match self {
            Kind::Authorizer => "authorizerId",
            Kind::Integration => "integrationId",
            Kind::Route => "routeId",
            Kind::Stage => "stageName",
            Kind::Deployment => "deploymentId",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Authorizer => "Authorizer",
            Kind::Integration => "Integration",
            Kind::Route => "Route",
            Kind::Stage => "Stage",
            Kind::Deployment => "Deployment",
        }
    }
}

/// A route key: `$default`, or `METHOD /path` with `{param}` and a last `{proxy+}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKey {
    Default,
    Path {
        /// `None`: `ANY`.
        method: Option<String>,
        segments: Vec<Segment>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    Greedy(String),
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "ANY",
];

impl RouteKey {
    pub fn parse(key: &str) -> Result<RouteKey, ApisError> {
        if key == "$default" {
            return Ok(RouteKey::Default);
        }
        let invalid = || {
            bad(format!(
                "Invalid route key {key:?}: expected $default or \"<METHOD> /<path>\" with METHOD one of {}",
                METHODS.join(", ")
            ))
        };
        let (method, path) = key.split_once(' ').ok_or_else(invalid)?;
        if !METHODS.contains(&method) || !path.starts_with('/') || path.contains(' ') {
            return Err(invalid());
        }
        let mut segments = Vec::new();
        let parts: Vec<&str> = path[1..].split('/').collect();
        for (i, p) in parts.iter().enumerate() {
            if p.is_empty() {
                if parts.len() == 1 {
                    break; // `/`
                }
                return Err(invalid());
            }
            if let Some(inner) = p.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if let Some(name) = inner.strip_suffix('+') {
                    if i + 1 != parts.len() || name.is_empty() {
                        return Err(bad(format!(
                            "Invalid route key {key:?}: a greedy path variable ({{name+}}) must be the last segment"
                        )));
                    }
                    segments.push(Segment::Greedy(name.to_owned()));
                } else if inner.is_empty() || inner.contains(['{', '}']) {
                    return Err(invalid());
                } else {
                    segments.push(Segment::Param(inner.to_owned()));
                }
            } else if p.contains(['{', '}']) {
                return Err(invalid());
            } else {
                segments.push(Segment::Literal((*p).to_owned()));
            }
        }
        Ok(RouteKey::Path {
            method: (method != "ANY").then(|| method.to_owned()),
            segments,
        })
    }
}

fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let more = uuid::Uuid::new_v4().into_bytes();
    bytes
        .iter()
        .chain(more.iter())
        .take(len)
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

fn iso(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What validation of an integration and an authorizer needs from the rest of sluice,
/// looked up before a change is checked ([`Checks::gather`]).
#[derive(Debug, Clone, Default)]
pub struct Checks {
    /// Integration URIs whose function exists.
    pub functions: Vec<String>,
    /// Issuers that are user pools of this server.
    pub issuers: Vec<String>,
}

impl Checks {
    fn function_of(&self, uri: &str) -> Result<Option<String>, ApisError> {
        Ok(self
            .functions
            .iter()
            .any(|f| f == uri)
            .then(|| uri.to_owned()))
    }

    fn known_issuer(&self, issuer: &str) -> Result<bool, ApisError> {
        Ok(self.issuers.iter().any(|i| i == issuer))
    }
}

/// The registry of HTTP APIs.
#[derive(Clone)]
pub struct HttpApis {
    db: Meta,
    region: String,
    /// The upload API's base URL (`http://127.0.0.1:8080`).
    base_url: String,
}

/// An API's whole configuration, as serving needs it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub api: Value,
    pub revision: i64,
    pub items: Vec<(Kind, Value)>,
}

impl HttpApis {
    pub fn new(db: Meta, region: &str, base_url: &str) -> Self {
        HttpApis {
            db,
            region: region.to_owned(),
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The `ApiEndpoint` of an API.
    pub fn endpoint(&self, api_id: &str) -> String {
        format!("{}{PATH_PREFIX}/{api_id}", self.base_url)
    }

    fn with_endpoint(&self, mut doc: Value) -> Value {
        if let Some(id) = doc.get("apiId").and_then(Value::as_str).map(str::to_owned) {
            doc["apiEndpoint"] = json!(self.endpoint(&id));
        }
        doc
    }

    fn not_found(api_id: &str) -> ApisError {
        ApisError::NotFound(format!("Invalid API identifier specified {api_id}"))
    }

    /// CreateApi.
    pub async fn create_api(
        &self,
        body: &serde_json::Map<String, Value>,
    ) -> Result<Value, ApisError> {
        let name = str_field(body, "name")?.ok_or_else(|| bad("name is required"))?;
        let protocol =
            str_field(body, "protocolType")?.ok_or_else(|| bad("protocolType is required"))?;
        if protocol != "HTTP" {
            return Err(bad(format!(
                "protocolType {protocol} is not supported by sluice: HTTP APIs only"
            )));
        }
        refuse(body, &["corsConfiguration", "target", "credentialsArn"])?;
        let route_selection = str_field(body, "routeSelectionExpression")?
            .unwrap_or_else(|| "$request.method $request.path".into());
        if route_selection != "$request.method $request.path" {
            return Err(bad(
                "routeSelectionExpression of an HTTP API must be $request.method $request.path",
            ));
        }
        let now = now_ms();
        let api_id = random_id(10);
        let doc = json!({
            "apiId": api_id,
            "name": name,
            "protocolType": "HTTP",
            "description": str_field(body, "description")?,
            "version": str_field(body, "version")?,
            "routeSelectionExpression": route_selection,
            "apiKeySelectionExpression": "$request.header.x-api-key",
            "disableExecuteApiEndpoint": body.get("disableExecuteApiEndpoint").and_then(Value::as_bool).unwrap_or(false),
            "createdDate": iso(now),
            "tags": string_map(body.get("tags"))?,
        });
        let stored = strip_nulls(doc);
        let (id, text) = (api_id.clone(), stored.to_string());
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO http_apis (api_id, doc, revision, created_ms) VALUES (?1, ?2, 1, ?3)",
                    params![&id, &text, now],
                )?;
                Ok::<_, ApisError>(())
            })
            .await?;
        Ok(self.with_endpoint(stored))
    }

    pub async fn get_api(&self, api_id: &str) -> Result<Value, ApisError> {
        let id = api_id.to_owned();
        let doc: Option<String> = self
            .db
            .read(move |c| {
                Ok::<_, ApisError>(c.query_opt(
                    "SELECT doc FROM http_apis WHERE api_id = ?1",
                    params![&id],
                    |r| r.get(0),
                )?)
            })
            .await?;
        let doc = doc.ok_or_else(|| Self::not_found(api_id))?;
        Ok(self.with_endpoint(parse_doc(&doc)?))
    }

    pub async fn list_apis(&self) -> Result<Vec<Value>, ApisError> {
        let docs: Vec<String> = self
            .db
            .read(|c| {
                Ok::<_, ApisError>(c.query_vec(
                    "SELECT doc FROM http_apis ORDER BY created_ms, api_id",
                    params![],
                    |r| r.get(0),
                )?)
            })
            .await?;
        docs.iter()
            .map(|d| parse_doc(d).map(|v| self.with_endpoint(v)))
            .collect()
    }

    /// UpdateApi: `name`, `description`, `version`, `disableExecuteApiEndpoint`.
    pub async fn update_api(
        &self,
        api_id: &str,
        body: &serde_json::Map<String, Value>,
    ) -> Result<Value, ApisError> {
        refuse(body, &["corsConfiguration", "target", "credentialsArn"])?;
        let mut doc = self.get_api(api_id).await?;
        for k in ["name", "description", "version"] {
            if let Some(v) = str_field(body, k)? {
                doc[k] = json!(v);
            }
        }
        if let Some(b) = body
            .get("disableExecuteApiEndpoint")
            .and_then(Value::as_bool)
        {
            doc["disableExecuteApiEndpoint"] = json!(b);
        }
        if let Some(o) = doc.as_object_mut() {
            o.remove("apiEndpoint");
        }
        let (id, text) = (api_id.to_owned(), doc.to_string());
        self.db
            .write(move |tx| {
                tx.execute(
                    "UPDATE http_apis SET doc = ?2, revision = revision + 1 WHERE api_id = ?1",
                    params![&id, &text],
                )?;
                Ok::<_, ApisError>(())
            })
            .await?;
        Ok(self.with_endpoint(doc))
    }

    pub async fn delete_api(&self, api_id: &str) -> Result<(), ApisError> {
        let id = api_id.to_owned();
        let n = self
            .db
            .write(move |tx| {
                let n = tx.execute("DELETE FROM http_apis WHERE api_id = ?1", params![&id])?;
                tx.execute("DELETE FROM http_api_items WHERE api_id = ?1", params![&id])?;
                Ok::<_, ApisError>(n)
            })
            .await?;
        if n == 0 {
            return Err(Self::not_found(api_id));
        }
        Ok(())
    }

    async fn items(
        &self,
        api_id: &str,
        kind: Option<Kind>,
    ) -> Result<Vec<(Kind, Value)>, ApisError> {
        let id = api_id.to_owned();
        let rows: Vec<(String, String)> = self
            .db
            .read(move |c| {
                Ok::<_, ApisError>(c.query_vec(
                    "SELECT kind, doc FROM http_api_items WHERE api_id = ?1 ORDER BY created_ms, item_id",
                    params![&id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .await?;
        let mut out = Vec::new();
        for (k, d) in rows {
            let Some(found) = [
                Kind::Authorizer,
                Kind::Integration,
                Kind::Route,
                Kind::Stage,
                Kind::Deployment,
            ]
            .into_iter()
            .find(|x| x.table_kind() == k) else {
                continue;
            };
            if kind.is_none_or(|want| want == found) {
                out.push((found, parse_doc(&d)?));
            }
        }
        Ok(out)
    }

    /// An API's configuration with its revision.
    pub async fn snapshot(&self, api_id: &str) -> Result<Snapshot, ApisError> {
        let api = self.get_api(api_id).await?;
        let revision = self.revision(api_id).await?.unwrap_or(0);
        let items = self.items(api_id, None).await?;
        Ok(Snapshot {
            api,
            revision,
            items,
        })
    }

    /// The API's revision (`None`: no such API).
    pub async fn revision(&self, api_id: &str) -> Result<Option<i64>, ApisError> {
        let id = api_id.to_owned();
        self.db
            .read(move |c| {
                Ok::<_, ApisError>(c.query_opt(
                    "SELECT revision FROM http_apis WHERE api_id = ?1",
                    params![&id],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    /// Lists an API's parts of one kind.
    pub async fn list(&self, api_id: &str, kind: Kind) -> Result<Vec<Value>, ApisError> {
        self.get_api(api_id).await?;
        Ok(self
            .items(api_id, Some(kind))
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    pub async fn get(&self, api_id: &str, kind: Kind, id: &str) -> Result<Value, ApisError> {
        self.list(api_id, kind)
            .await?
            .into_iter()
            .find(|v| v[kind.id_field()] == id)
            .ok_or_else(|| {
                ApisError::NotFound(format!("Invalid {} identifier specified {id}", kind.noun()))
            })
    }

    /// Creates a part of an API from a request body.
    pub async fn create(
        &self,
        api_id: &str,
        kind: Kind,
        body: &serde_json::Map<String, Value>,
        checks: &Checks,
    ) -> Result<Value, ApisError> {
        self.get_api(api_id).await?;
        let existing = self.items(api_id, None).await?;
        let now = now_ms();
        let doc = match kind {
            Kind::Stage => {
                let name =
                    str_field(body, "stageName")?.ok_or_else(|| bad("stageName is required"))?;
                json!({"stageName": name, "createdDate": iso(now), "lastUpdatedDate": iso(now)})
            }
            Kind::Deployment => json!({
                "deploymentId": random_id(6),
                "deploymentStatus": "DEPLOYED",
                "autoDeployed": false,
                "createdDate": iso(now),
            }),
            other => json!({ other.id_field(): random_id(7) }),
        };
        let doc = merge(kind, doc, body, &existing, checks, true)?;
        let item_id = doc[kind.id_field()].as_str().unwrap_or_default().to_owned();
        let (api, k, text, id2) = (
            api_id.to_owned(),
            kind.table_kind(),
            doc.to_string(),
            item_id.clone(),
        );
        let inserted = self
            .db
            .write(move |tx| {
                let n = tx.execute(
                    "INSERT INTO http_api_items (api_id, kind, item_id, doc, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (api_id, kind, item_id) DO NOTHING",
                    params![&api, k, &id2, &text, now],
                )?;
                bump(tx, &api)?;
                Ok::<_, ApisError>(n == 1)
            })
            .await?;
        if !inserted {
            return Err(ApisError::Conflict(format!(
                "{} {item_id} already exists for this API",
                kind.noun()
            )));
        }
        Ok(doc)
    }

    /// Updates a part (PATCH): the fields given replace the stored ones, then the whole is
    /// checked again.
    pub async fn update(
        &self,
        api_id: &str,
        kind: Kind,
        id: &str,
        body: &serde_json::Map<String, Value>,
        checks: &Checks,
    ) -> Result<Value, ApisError> {
        let old = self.get(api_id, kind, id).await?;
        let others: Vec<(Kind, Value)> = self
            .items(api_id, None)
            .await?
            .into_iter()
            .filter(|(k, v)| !(*k == kind && v[kind.id_field()] == id))
            .collect();
        let mut doc = merge(kind, old, body, &others, checks, false)?;
        if kind == Kind::Stage {
            doc["lastUpdatedDate"] = json!(iso(now_ms()));
        }
        let (api, k, text, item) = (
            api_id.to_owned(),
            kind.table_kind(),
            doc.to_string(),
            id.to_owned(),
        );
        self.db
            .write(move |tx| {
                tx.execute(
                    "UPDATE http_api_items SET doc = ?4 WHERE api_id = ?1 AND kind = ?2 AND item_id = ?3",
                    params![&api, k, &item, &text],
                )?;
                bump(tx, &api)?;
                Ok::<_, ApisError>(())
            })
            .await?;
        Ok(doc)
    }

    pub async fn delete(&self, api_id: &str, kind: Kind, id: &str) -> Result<(), ApisError> {
        self.get(api_id, kind, id).await?;
        if matches!(kind, Kind::Integration | Kind::Authorizer) {
            let field = if kind == Kind::Integration {
                "target"
            } else {
                "authorizerId"
            };
            let want = if kind == Kind::Integration {
                format!("integrations/{id}")
            } else {
                id.to_owned()
            };
            let used = self
                .items(api_id, Some(Kind::Route))
                .await?
                .into_iter()
                .any(|(_, r)| r[field] == want.as_str());
            if used {
                return Err(ApisError::Conflict(format!(
                    "Cannot delete {} {id}: a route uses it",
                    kind.noun()
                )));
            }
        }
        let (api, k, item) = (api_id.to_owned(), kind.table_kind(), id.to_owned());
        self.db
            .write(move |tx| {
                tx.execute(
                    "DELETE FROM http_api_items WHERE api_id = ?1 AND kind = ?2 AND item_id = ?3",
                    params![&api, k, &item],
                )?;
                bump(tx, &api)?;
                Ok::<_, ApisError>(())
            })
            .await
    }
}

fn bump(tx: &Tx<'_>, api_id: &str) -> Result<(), MetaError> {
    tx.execute(
        "UPDATE http_apis SET revision = revision + 1 WHERE api_id = ?1",
        params![api_id],
    )?;
    Ok(())
}

/// The function ARN an integration URI names: a function ARN, or API Gateway's
/// `arn:aws:apigateway:<region>:lambda:path/2015-03-31/functions/<function ARN>/invocations`.
pub fn function_arn_of(uri: &str) -> &str {
    uri.split_once(":lambda:path/2015-03-31/functions/")
        .map(|(_, rest)| rest.strip_suffix("/invocations").unwrap_or(rest))
        .unwrap_or(uri)
}

/// Applies a request's fields to a part's document and checks the result.
fn merge(
    kind: Kind,
    mut doc: Value,
    body: &serde_json::Map<String, Value>,
    others: &[(Kind, Value)],
    checks: &Checks,
    creating: bool,
) -> Result<Value, ApisError> {
    let fields: &[&str] = match kind {
        Kind::Authorizer => &[
            "name",
            "authorizerType",
            "identitySource",
            "jwtConfiguration",
            "authorizerPayloadFormatVersion",
            "authorizerUri",
            "enableSimpleResponses",
            "authorizerResultTtlInSeconds",
            "authorizerCredentialsArn",
            "identityValidationExpression",
        ],
        Kind::Integration => &[
            "integrationType",
            "integrationUri",
            "integrationMethod",
            "payloadFormatVersion",
            "timeoutInMillis",
            "description",
            "connectionType",
            "connectionId",
            "credentialsArn",
            "requestParameters",
            "responseParameters",
            "tlsConfig",
            "integrationSubtype",
        ],
        Kind::Route => &[
            "routeKey",
            "target",
            "authorizationType",
            "authorizerId",
            "authorizationScopes",
            "apiKeyRequired",
            "operationName",
            "requestParameters",
            "requestModels",
            "modelSelectionExpression",
            "routeResponseSelectionExpression",
        ],
        Kind::Stage => &[
            "description",
            "autoDeploy",
            "stageVariables",
            "tags",
            "defaultRouteSettings",
            "routeSettings",
            "accessLogSettings",
            "deploymentId",
            "clientCertificateId",
        ],
        Kind::Deployment => &["description", "stageName"],
    };
    for (k, v) in body {
        if fields.contains(&k.as_str()) {
            doc[k.as_str()] = v.clone();
        }
    }
    let unsupported: &[&str] = match kind {
        Kind::Authorizer => &[
            "authorizerUri",
            "authorizerCredentialsArn",
            "identityValidationExpression",
        ],
        Kind::Integration => &[
            "connectionId",
            "credentialsArn",
            "requestParameters",
            "responseParameters",
            "tlsConfig",
            "integrationSubtype",
        ],
        Kind::Route => &["requestParameters", "requestModels"],
        Kind::Stage => &["accessLogSettings", "clientCertificateId"],
        Kind::Deployment => &[],
    };
    for k in unsupported {
        if doc.get(*k).is_some_and(|v| !v.is_null() && v != &json!({})) {
            return Err(bad(format!("{k} is not supported by sluice")));
        }
    }
    let same = |k: Kind| others.iter().filter(move |(x, _)| *x == k).map(|(_, v)| v);
    match kind {
        Kind::Authorizer => {
            if doc["name"].as_str().is_none_or(str::is_empty) {
                return Err(bad("name is required"));
            }
            if doc["authorizerType"] != "JWT" {
                return Err(bad(
                    "authorizerType must be JWT: sluice has no Lambda (REQUEST) authorizers",
                ));
            }
            let sources = doc["identitySource"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let header_ok = |v: &Value| {
                v.as_str().is_some_and(|s| {
                    s.strip_prefix("$request.header.")
                        .is_some_and(|h| !h.is_empty())
                })
            };
            if sources.len() != 1 || !header_ok(&sources[0]) {
                return Err(bad(
                    "identitySource must be one header, e.g. $request.header.Authorization",
                ));
            }
            let issuer = doc
                .pointer("/jwtConfiguration/issuer")
                .and_then(Value::as_str)
                .unwrap_or("");
            if issuer.is_empty() {
                return Err(bad(
                    "jwtConfiguration.issuer is required for a JWT authorizer",
                ));
            }
            if !checks.known_issuer(issuer)? {
                return Err(bad(format!(
                    "Issuer {issuer} is not a user pool of this server: sluice verifies tokens of its own pools (<edge URL>/<pool id>)"
                )));
            }
            let audience = doc
                .pointer("/jwtConfiguration/audience")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if audience.is_empty()
                || audience
                    .iter()
                    .any(|a| a.as_str().is_none_or(str::is_empty))
            {
                return Err(bad(
                    "jwtConfiguration.audience must list at least one app client id",
                ));
            }
            if creating && same(Kind::Authorizer).any(|a| a["name"] == doc["name"]) {
                return Err(ApisError::Conflict(format!(
                    "An authorizer named {} already exists",
                    doc["name"]
                )));
            }
        }
        Kind::Integration => {
            if doc["integrationType"] != "AWS_PROXY" {
                return Err(bad(
                    "integrationType must be AWS_PROXY: sluice integrates functions",
                ));
            }
            let uri = doc["integrationUri"].as_str().unwrap_or("").to_owned();
            if uri.is_empty() {
                return Err(bad("integrationUri is required: a function ARN"));
            }
            if checks.function_of(&uri)?.is_none() {
                return Err(ApisError::NotFound(format!(
                    "Invalid integration URI specified: function {} not found",
                    function_arn_of(&uri)
                )));
            }
            let version = doc["payloadFormatVersion"].as_str().unwrap_or("");
            if version.is_empty() {
                return Err(bad(
                    "payloadFormatVersion is required for an AWS_PROXY integration (2.0 or 1.0)",
                ));
            }
            if version != "2.0" && version != "1.0" {
                return Err(bad(format!(
                    "payloadFormatVersion must be 2.0 or 1.0, got {version}"
                )));
            }
            match doc.get("timeoutInMillis") {
                None | Some(Value::Null) => doc["timeoutInMillis"] = json!(30_000),
                Some(v) if v.as_u64().is_some_and(|t| (50..=30_000).contains(&t)) => {}
                Some(_) => return Err(bad("timeoutInMillis must be between 50 and 30000")),
            }
            if doc.get("integrationMethod").is_none_or(Value::is_null) {
                doc["integrationMethod"] = json!("POST");
            }
            doc["connectionType"] = json!("INTERNET");
        }
        Kind::Route => {
            let key = doc["routeKey"].as_str().unwrap_or("").to_owned();
            if key.is_empty() {
                return Err(bad("routeKey is required"));
            }
            RouteKey::parse(&key)?;
            if same(Kind::Route).any(|r| r["routeKey"] == key.as_str()) {
                return Err(ApisError::Conflict(format!(
                    "Route with key {key} already exists for this API"
                )));
            }
            if let Some(t) = doc.get("target").and_then(Value::as_str) {
                let id = t.strip_prefix("integrations/").ok_or_else(|| {
                    bad(format!(
                        "Invalid target {t}: expected integrations/<integrationId>"
                    ))
                })?;
                if !same(Kind::Integration).any(|i| i["integrationId"] == id) {
                    return Err(ApisError::NotFound(format!(
                        "Invalid integration identifier specified {id}"
                    )));
                }
            }
            let auth = doc["authorizationType"]
                .as_str()
                .unwrap_or("NONE")
                .to_owned();
            doc["authorizationType"] = json!(auth);
            match auth.as_str() {
                "NONE" => {
                    if doc.get("authorizerId").is_some_and(|v| !v.is_null()) {
                        return Err(bad("authorizerId needs authorizationType JWT"));
                    }
                }
                "JWT" => {
                    let id = doc["authorizerId"].as_str().unwrap_or("");
                    if !same(Kind::Authorizer).any(|a| a["authorizerId"] == id) {
                        return Err(ApisError::NotFound(format!(
                            "Invalid authorizer identifier specified {id}"
                        )));
                    }
                }
                other => {
                    return Err(bad(format!(
                        "authorizationType {other} is not supported: NONE or JWT"
                    )));
                }
            }
            if let Some(scopes) = doc.get("authorizationScopes").filter(|v| !v.is_null())
                && !scopes
                    .as_array()
                    .is_some_and(|a| a.iter().all(Value::is_string))
            {
                return Err(bad("authorizationScopes must be a list of strings"));
            }
            doc["apiKeyRequired"] = json!(doc["apiKeyRequired"].as_bool().unwrap_or(false));
            if doc["apiKeyRequired"] == true {
                return Err(bad("API keys are not supported by sluice (apiKeyRequired)"));
            }
        }
        Kind::Stage => {
            let name = doc["stageName"].as_str().unwrap_or("");
            let ok = name == "$default"
                || (!name.is_empty()
                    && name.len() <= 128
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            if !ok {
                return Err(bad(format!(
                    "Invalid stage name {name:?}: $default, or letters, digits, - and _"
                )));
            }
            if creating && same(Kind::Stage).any(|s| s["stageName"] == name) {
                return Err(ApisError::Conflict(format!("Stage {name} already exists")));
            }
            doc["autoDeploy"] = json!(doc["autoDeploy"].as_bool().unwrap_or(false));
            if doc.get("stageVariables").is_none_or(Value::is_null) {
                doc["stageVariables"] = json!({});
            }
            string_map(doc.get("stageVariables"))?;
            if doc.get("defaultRouteSettings").is_none_or(Value::is_null) {
                doc["defaultRouteSettings"] = json!({"detailedMetricsEnabled": false});
            }
            if doc.get("routeSettings").is_none_or(Value::is_null) {
                doc["routeSettings"] = json!({});
            }
            if doc.get("tags").is_none_or(Value::is_null) {
                doc["tags"] = json!({});
            }
        }
        Kind::Deployment => {}
    }
    Ok(strip_nulls(doc))
}

fn parse_doc(d: &str) -> Result<Value, ApisError> {
    serde_json::from_str(d)
        .map_err(|e| ApisError::Internal(format!("a stored API document is unreadable: {e}")))
}

fn str_field(m: &serde_json::Map<String, Value>, k: &str) -> Result<Option<String>, ApisError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{k} must be a string"))),
    }
}

fn string_map(v: Option<&Value>) -> Result<BTreeMap<String, String>, ApisError> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(bad("map values must be strings")),
            })
            .collect(),
        Some(_) => Err(bad("expected an object of strings")),
    }
}

fn refuse(m: &serde_json::Map<String, Value>, keys: &[&str]) -> Result<(), ApisError> {
    for k in keys {
        if m.get(*k).is_some_and(|v| !v.is_null()) {
            return Err(bad(format!("{k} is not supported by sluice")));
        }
    }
    Ok(())
}

fn strip_nulls(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    v
}
