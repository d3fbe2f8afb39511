//! Serving HTTP APIs: a request under `/_aws/execute-api/<apiId>` is matched to a stage
//! and a route, authorized (a route with a JWT authorizer answers 401 with
//! `WWW-Authenticate` before any function runs, exactly as the built-in upload route does;
//! a token without one of the route's scopes gets 403), turned into the integration's
//! event (payload format 2.0 or 1.0) and given to the function; its result becomes the
//! response by API Gateway's rules.
//!
//! Route matching, as API Gateway does it: the most specific route wins — more literal
//! segments first, then path variables over a greedy `{proxy+}`, then a method over `ANY`;
//! `$default` catches what nothing else matches; nothing matching is 404
//! `{"message":"Not Found"}`.
//!
//! Failures, as API Gateway answers them: the function threw (or returned what the format
//! does not allow) → 502 `{"message":"Internal Server Error"}`; it ran past its timeout or
//! the integration's → 503 `{"message":"Service Unavailable"}`; the function is gone → 500;
//! a request body over 6 MB (Lambda's payload limit) → 413.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use sluice_functions::FunctionsError;
use sluice_functions::invoke::{Admission, Invoker};
use sluice_gateway::GatewayError;
use sluice_identity::{Identity, PoolVerifier, TokenError};
use sluice_processor::lambda::FailureKind;

use crate::{ApisError, HttpApis, Kind, PATH_PREFIX, RouteKey, Segment, function_arn_of};

/// Largest request body given to a function (Lambda's synchronous payload limit).
pub const MAX_PAYLOAD: usize = 6 * 1024 * 1024;

/// What serving needs.
pub struct Serving {
    pub apis: HttpApis,
    pub invoker: Arc<Invoker>,
    pub identity: Identity,
    pub account_id: String,
    pub leeway_secs: i64,
    compiled: Mutex<HashMap<String, Arc<Compiled>>>,
    verifiers: Mutex<HashMap<String, Arc<PoolVerifier>>>,
}

struct Compiled {
    revision: i64,
    disabled: bool,
    routes: Vec<(RouteKey, Value)>,
    stages: HashMap<String, Value>,
    authorizers: HashMap<String, Value>,
    integrations: HashMap<String, Value>,
}

impl Serving {
    pub fn new(
        apis: HttpApis,
        invoker: Arc<Invoker>,
        identity: Identity,
        account_id: &str,
        leeway_secs: i64,
    ) -> Self {
        Serving {
            apis,
            invoker,
            identity,
            account_id: account_id.to_owned(),
            leeway_secs,
            compiled: Mutex::new(HashMap::new()),
            verifiers: Mutex::new(HashMap::new()),
        }
    }

    /// The API's configuration, compiled once per revision.
    async fn compiled(&self, api_id: &str) -> Result<Arc<Compiled>, ApisError> {
        let revision = self
            .apis
            .revision(api_id)
            .await?
            .ok_or_else(|| ApisError::NotFound(api_id.to_owned()))?;
        if let Some(c) = self
            .compiled
            .lock()
            .ok()
            .and_then(|m| m.get(api_id).cloned())
            .filter(|c| c.revision == revision)
        {
            return Ok(c);
        }
        let snap = self.apis.snapshot(api_id).await?;
        let mut c = Compiled {
            revision: snap.revision,
            disabled: snap.api["disableExecuteApiEndpoint"] == true,
            routes: Vec::new(),
            stages: HashMap::new(),
            authorizers: HashMap::new(),
            integrations: HashMap::new(),
        };
        for (kind, v) in snap.items {
            let id = |f: &str| v[f].as_str().unwrap_or_default().to_owned();
            match kind {
                Kind::Route => {
                    if let Ok(k) = RouteKey::parse(v["routeKey"].as_str().unwrap_or_default()) {
                        c.routes.push((k, v));
                    }
                }
                Kind::Stage => {
                    c.stages.insert(id("stageName"), v);
                }
                Kind::Authorizer => {
                    c.authorizers.insert(id("authorizerId"), v);
                }
                Kind::Integration => {
                    c.integrations.insert(id("integrationId"), v);
                }
                Kind::Deployment => {}
            }
        }
        let c = Arc::new(c);
        if let Ok(mut m) = self.compiled.lock() {
            m.insert(api_id.to_owned(), c.clone());
        }
        Ok(c)
    }

    async fn verifier(&self, issuer: &str) -> Result<Arc<PoolVerifier>, TokenError> {
        if let Some(v) = self
            .verifiers
            .lock()
            .ok()
            .and_then(|m| m.get(issuer).cloned())
        {
            return Ok(v);
        }
        let pool = issuer.rsplit('/').next().unwrap_or_default().to_owned();
        let (identity, leeway) = (self.identity.clone(), self.leeway_secs);
        let v = tokio::task::spawn_blocking(move || PoolVerifier::new(identity, &pool, leeway))
            .await
            .map_err(|_| TokenError::Issuer)?
            .map_err(|_| TokenError::Issuer)?;
        let v = Arc::new(v);
        if let Ok(mut m) = self.verifiers.lock() {
            m.insert(issuer.to_owned(), v.clone());
        }
        Ok(v)
    }
}

/// The routes that serve every API: `/_aws/execute-api/<apiId>[/<path>]`, any method.
pub fn router(serving: Arc<Serving>) -> Router {
    Router::new()
        .route(
            &format!("{PATH_PREFIX}/{{api}}"),
            axum::routing::any(handle),
        )
        .route(
            &format!("{PATH_PREFIX}/{{api}}/{{*rest}}"),
            axum::routing::any(handle),
        )
        .with_state(serving)
}

fn message(status: StatusCode, text: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"message": text}).to_string(),
    )
        .into_response()
}

/// Literal segments, variables (a greedy one counting less), and whether the route names a
/// method: higher is more specific.
type Specificity = (usize, usize, usize);

/// A verified token's claims (as strings) and scopes.
type Claims = (Map<String, Value>, Option<Vec<String>>);

/// The most specific route matching `method` and `path`, with its path parameters.
fn match_route<'a>(
    routes: &'a [(RouteKey, Value)],
    method: &str,
    path: &str,
) -> Option<(&'a Value, Map<String, Value>)> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let segs: Vec<&str> = if segs == [""] { Vec::new() } else { segs };
    let mut best: Option<(Specificity, &Value, Map<String, Value>)> = None;
    let mut default = None;
    for (key, route) in routes {
        let (m, pattern) = match key {
            RouteKey::Default => {
                default = Some(route);
                continue;
            }
            RouteKey::Path { method, segments } => (method, segments),
        };
        if m.as_deref().is_some_and(|m| m != method) {
            continue;
        }
        let mut params = Map::new();
        let mut literals = 0;
        let mut vars = 0;
        let mut ok = true;
        let mut i = 0;
        for seg in pattern {
            match seg {
                Segment::Greedy(name) => {
                    if i >= segs.len() {
                        ok = false;
                        break;
                    }
                    params.insert(name.clone(), json!(segs[i..].join("/")));
                    i = segs.len();
                    break;
                }
                _ if i >= segs.len() => {
                    ok = false;
                    break;
                }
                Segment::Literal(l) => {
                    if l != segs[i] {
                        ok = false;
                        break;
                    }
                    literals += 1;
                }
                Segment::Param(name) => {
                    if segs[i].is_empty() {
                        ok = false;
                        break;
                    }
                    params.insert(name.clone(), json!(decode(segs[i])));
                    vars += 1;
                }
            }
            i += 1;
        }
        if !ok || i != segs.len() {
            continue;
        }
        let greedy = usize::from(matches!(pattern.last(), Some(Segment::Greedy(_))));
        // Higher is more specific: literals, then variables over greedy, then a method.
        let score = (literals, vars + (1 - greedy), usize::from(m.is_some()));
        if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
            best = Some((score, route, params));
        }
    }
    best.map(|(_, r, p)| (r, p))
        .or_else(|| default.map(|r| (r, Map::new())))
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            )
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A verified token's claims as API Gateway passes them: every value a string.
fn claims_of(token: &str) -> Map<String, Value> {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .unwrap_or_default();
    let map: Map<String, Value> = serde_json::from_slice(&raw).unwrap_or_default();
    map.into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                Value::Array(a) => format!(
                    "[{}]",
                    a.iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                other => other.to_string(),
            };
            (k, Value::String(s))
        })
        .collect()
}

/// Whether a body of this content type reaches the function as text (else base64).
fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ct.starts_with("text/")
        || ct == "application/json"
        || ct.ends_with("+json")
        || ct == "application/xml"
        || ct.ends_with("+xml")
        || ct == "application/javascript"
        || ct == "application/x-www-form-urlencoded"
}

struct Incoming<'a> {
    api_id: &'a str,
    stage: &'a str,
    route_key: &'a str,
    route_id: &'a str,
    method: &'a str,
    /// The path the client asked for (with a named stage's prefix).
    raw_path: String,
    /// The path within the stage, as the route matched it.
    resource_path: String,
    query: &'a str,
    headers: &'a HeaderMap,
    path_params: Map<String, Value>,
    stage_vars: Value,
    body: Option<(String, bool)>,
    claims: Option<Claims>,
    request_id: &'a str,
    source_ip: String,
    domain: String,
    now_ms: i64,
}

fn query_params(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(&k.replace('+', " ")), decode(&v.replace('+', " ")))
        })
        .collect()
}

fn event_v2(r: &Incoming<'_>) -> Value {
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    for (name, value) in r.headers {
        let v = value.to_str().unwrap_or_default().to_owned();
        if name == "cookie" {
            cookies.extend(
                v.split(';')
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty()),
            );
            continue;
        }
        match headers.get_mut(name.as_str()) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(&v);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), json!(v));
            }
        }
    }
    let mut qs = Map::new();
    for (k, v) in query_params(r.query) {
        match qs.get_mut(&k) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(&v);
            }
            _ => {
                qs.insert(k, json!(v));
            }
        }
    }
    let time = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(r.now_ms)
        .unwrap_or_default()
        .format("%d/%b/%Y:%H:%M:%S +0000")
        .to_string();
    let mut ctx = json!({
        "accountId": "",
        "apiId": r.api_id,
        "domainName": r.domain,
        "domainPrefix": r.domain.split('.').next().unwrap_or_default(),
        "http": {
            "method": r.method,
            "path": r.raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": r.source_ip,
            "userAgent": r.headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or(""),
        },
        "requestId": r.request_id,
        "routeKey": r.route_key,
        "stage": r.stage,
        "time": time,
        "timeEpoch": r.now_ms,
    });
    if let Some((claims, scopes)) = &r.claims {
        ctx["authorizer"] = json!({"jwt": {"claims": claims, "scopes": scopes}});
    }
    let mut e = json!({
        "version": "2.0",
        "routeKey": r.route_key,
        "rawPath": r.raw_path,
        "rawQueryString": r.query,
        "headers": headers,
        "requestContext": ctx,
        "isBase64Encoded": false,
    });
    if !cookies.is_empty() {
        e["cookies"] = json!(cookies);
    }
    if !qs.is_empty() {
        e["queryStringParameters"] = Value::Object(qs);
    }
    if !r.path_params.is_empty() {
        e["pathParameters"] = Value::Object(r.path_params.clone());
    }
    if r.stage_vars.as_object().is_some_and(|o| !o.is_empty()) {
        e["stageVariables"] = r.stage_vars.clone();
    }
    if let Some((body, b64)) = &r.body {
        e["body"] = json!(body);
        e["isBase64Encoded"] = json!(b64);
    }
    e
}

fn event_v1(r: &Incoming<'_>) -> Value {
    let mut headers = Map::new();
    let mut multi: Map<String, Value> = Map::new();
    for (name, value) in r.headers {
        let v = value.to_str().unwrap_or_default().to_owned();
        headers.insert(name.as_str().to_owned(), json!(v));
        match multi.get_mut(name.as_str()) {
            Some(Value::Array(a)) => a.push(json!(v)),
            _ => {
                multi.insert(name.as_str().to_owned(), json!([v]));
            }
        }
    }
    let mut qs = Map::new();
    let mut mqs: Map<String, Value> = Map::new();
    for (k, v) in query_params(r.query) {
        qs.insert(k.clone(), json!(v));
        match mqs.get_mut(&k) {
            Some(Value::Array(a)) => a.push(json!(v)),
            _ => {
                mqs.insert(k, json!([v]));
            }
        }
    }
    let time = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(r.now_ms)
        .unwrap_or_default()
        .format("%d/%b/%Y:%H:%M:%S +0000")
        .to_string();
    let obj_or_null = |m: Map<String, Value>| {
        if m.is_empty() {
            Value::Null
        } else {
            Value::Object(m)
        }
    };
    let mut ctx = json!({
        "accountId": "",
        "apiId": r.api_id,
        "domainName": r.domain,
        "domainPrefix": r.domain.split('.').next().unwrap_or_default(),
        "extendedRequestId": r.request_id,
        "httpMethod": r.method,
        "identity": {
            "sourceIp": r.source_ip,
            "userAgent": r.headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or(""),
        },
        "path": r.raw_path,
        "protocol": "HTTP/1.1",
        "requestId": r.request_id,
        "requestTime": time,
        "requestTimeEpoch": r.now_ms,
        "resourceId": r.route_id,
        "resourcePath": r.resource_path,
        "stage": r.stage,
    });
    if let Some((claims, scopes)) = &r.claims {
        ctx["authorizer"] = json!({"claims": claims, "scopes": scopes});
    }
    let resource = r.route_key.split_once(' ').map_or(r.route_key, |(_, p)| p);
    json!({
        "version": "1.0",
        "resource": resource,
        "path": r.raw_path,
        "httpMethod": r.method,
        "headers": headers,
        "multiValueHeaders": multi,
        "queryStringParameters": obj_or_null(qs),
        "multiValueQueryStringParameters": obj_or_null(mqs),
        "requestContext": ctx,
        "pathParameters": obj_or_null(r.path_params.clone()),
        "stageVariables": r.stage_vars.as_object().filter(|o| !o.is_empty()).map_or(Value::Null, |o| Value::Object(o.clone())),
        "body": r.body.as_ref().map_or(Value::Null, |(b, _)| json!(b)),
        "isBase64Encoded": r.body.as_ref().is_some_and(|(_, b)| *b),
    })
}

/// A function's result as an HTTP response, by the payload format's rules; `None` when
/// the result breaks them (502).
fn respond(result: Value, version: &str) -> Option<Response> {
    let structured = result.as_object().filter(|o| o.contains_key("statusCode"));
    let Some(o) = structured else {
        if version == "1.0" {
            return None;
        }
        // Format 2.0 without a statusCode: the value is the body of a 200.
        let body = match &result {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut resp = Response::new(Body::from(body));
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        return Some(resp);
    };
    let status = o.get("statusCode").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })?;
    let status = StatusCode::from_u16(u16::try_from(status).ok()?).ok()?;
    let body = match o.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => {
            if o.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
                base64::engine::general_purpose::STANDARD.decode(s).ok()?
            } else {
                s.clone().into_bytes()
            }
        }
        Some(other) if version == "2.0" => other.to_string().into_bytes(),
        Some(_) => return None,
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Some(Value::Object(headers)) = o.get("headers") {
        for (k, v) in headers {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            if let (Ok(n), Ok(v)) = (
                axum::http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                h.insert(n, v);
            }
        }
    }
    if let Some(Value::Object(multi)) = o.get("multiValueHeaders") {
        for (k, vs) in multi {
            for v in vs.as_array().into_iter().flatten() {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                if let (Ok(n), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    h.append(n, v);
                }
            }
        }
    }
    if version == "2.0"
        && let Some(Value::Array(cookies)) = o.get("cookies")
    {
        for c in cookies.iter().filter_map(Value::as_str) {
            if let Ok(v) = HeaderValue::from_str(c) {
                h.append("set-cookie", v);
            }
        }
    }
    Some(resp)
}

async fn handle(
    State(s): State<Arc<Serving>>,
    Path(params): Path<HashMap<String, String>>,
    req: Request,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut resp = serve(&s, &params, req, &request_id).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("apigw-requestid", v);
    }
    resp
}

async fn serve(
    s: &Serving,
    params: &HashMap<String, String>,
    req: Request,
    request_id: &str,
) -> Response {
    let not_found = || message(StatusCode::NOT_FOUND, "Not Found");
    let Some(api_id) = params.get("api") else {
        return not_found();
    };
    let compiled = match s.compiled(api_id).await {
        Ok(c) => c,
        Err(ApisError::NotFound(_)) => return not_found(),
        Err(e) if e.is_unavailable() => {
            return message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read an API");
            return message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        }
    };
    if compiled.disabled {
        return message(StatusCode::FORBIDDEN, "Forbidden");
    }
    let rest = params.get("rest").map(String::as_str).unwrap_or("");
    let raw_path = format!("/{rest}");
    let first = rest.split('/').next().unwrap_or("");
    let (stage, path) =
        if !first.is_empty() && first != "$default" && compiled.stages.contains_key(first) {
            (
                first.to_owned(),
                format!("/{}", rest[first.len()..].trim_start_matches('/')),
            )
        } else if compiled.stages.contains_key("$default") {
            ("$default".to_owned(), raw_path.clone())
        } else {
            return not_found();
        };
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let Some((route, path_params)) = match_route(&compiled.routes, &method, &path) else {
        return not_found();
    };
    // The authorizer, before anything else runs.
    let mut claims = None;
    if route["authorizationType"] == "JWT" {
        let authorizer = route["authorizerId"]
            .as_str()
            .and_then(|id| compiled.authorizers.get(id));
        let Some(authorizer) = authorizer else {
            return message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        };
        let header = authorizer["identitySource"][0]
            .as_str()
            .and_then(|s| s.strip_prefix("$request.header."))
            .unwrap_or("Authorization")
            .to_ascii_lowercase();
        let Some(value) = parts
            .headers
            .get(header.as_str())
            .and_then(|v| v.to_str().ok())
        else {
            return GatewayError::Unauthorized("the request has no bearer token").into_response();
        };
        let token = value.strip_prefix("Bearer ").unwrap_or(value).trim();
        let issuer = authorizer
            .pointer("/jwtConfiguration/issuer")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let verified = match s.verifier(issuer).await {
            Ok(v) => v.verify(token, sluice_meta::now_ms() / 1000),
            Err(e) => Err(e),
        };
        let verified = match verified {
            Ok(c) => c,
            Err(e) => return GatewayError::InvalidToken(e).into_response(),
        };
        let audience: Vec<&str> = authorizer
            .pointer("/jwtConfiguration/audience")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !audience.contains(&verified.client_id.as_str()) {
            return GatewayError::InvalidToken(TokenError::Audience).into_response();
        }
        let wanted: Vec<&str> = route["authorizationScopes"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !wanted.is_empty()
            && !wanted
                .iter()
                .any(|w| verified.scopes.iter().any(|s| s == w))
        {
            return GatewayError::Forbidden(format!(
                "the token has none of the route's scopes ({})",
                wanted.join(", ")
            ))
            .into_response();
        }
        let scopes = (!verified.scopes.is_empty()).then(|| verified.scopes.clone());
        claims = Some((claims_of(token), scopes));
    }
    let Some(integration) = route["target"]
        .as_str()
        .and_then(|t| t.strip_prefix("integrations/"))
        .and_then(|id| compiled.integrations.get(id))
    else {
        return not_found();
    };
    let bytes = match axum::body::to_bytes(body, MAX_PAYLOAD).await {
        Ok(b) => b,
        Err(_) => return message(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large"),
    };
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok());
    let body = if bytes.is_empty() {
        None
    } else if is_text(content_type)
        && let Ok(text) = std::str::from_utf8(&bytes)
    {
        Some((text.to_owned(), false))
    } else {
        Some((
            base64::engine::general_purpose::STANDARD.encode(&bytes),
            true,
        ))
    };
    let source_ip = parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "127.0.0.1".to_owned(), |c| c.0.ip().to_string());
    let domain = parts
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let incoming = Incoming {
        api_id,
        stage: &stage,
        route_key: route["routeKey"].as_str().unwrap_or_default(),
        route_id: route["routeId"].as_str().unwrap_or_default(),
        method: &method,
        raw_path: raw_path.clone(),
        resource_path: path.clone(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        path_params,
        stage_vars: compiled
            .stages
            .get(&stage)
            .map_or(json!({}), |st| st["stageVariables"].clone()),
        body,
        claims,
        request_id,
        source_ip,
        domain,
        now_ms: sluice_meta::now_ms(),
    };
    let version = integration["payloadFormatVersion"]
        .as_str()
        .unwrap_or("2.0")
        .to_owned();
    let mut event = if version == "1.0" {
        event_v1(&incoming)
    } else {
        event_v2(&incoming)
    };
    event["requestContext"]["accountId"] = json!(s.account_id);
    let uri = integration["integrationUri"].as_str().unwrap_or_default();
    let function = match s.invoker.functions().resolve_name(function_arn_of(uri)) {
        Ok(f) => f,
        Err(_) => return message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
    };
    let timeout = Duration::from_millis(integration["timeoutInMillis"].as_u64().unwrap_or(30_000));
    let invoked = tokio::time::timeout(
        timeout,
        s.invoker
            .invoke(&function, event, Admission::Wait, false, None),
    )
    .await;
    let invocation = match invoked {
        Err(_) => return message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        Ok(Err(FunctionsError::Throttled)) => {
            return message(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        }
        Ok(Err(e)) if e.is_unavailable() => {
            return message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
        }
        Ok(Err(e)) => {
            tracing::warn!(api = %api_id, function = %function, error = %e, "integration failed");
            return message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        }
        Ok(Ok(i)) => i,
    };
    match invocation.result {
        Ok(v) => respond(v, &version).unwrap_or_else(|| {
            tracing::warn!(api = %api_id, function = %function, "the function's result is not a valid response");
            message(StatusCode::BAD_GATEWAY, "Internal Server Error")
        }),
        Err(f) if f.kind == FailureKind::Timeout => {
            message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
        }
        Err(_) => message(StatusCode::BAD_GATEWAY, "Internal Server Error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(keys: &[&str]) -> Vec<(RouteKey, Value)> {
        keys.iter()
            .map(|k| (RouteKey::parse(k).expect("key"), json!({"routeKey": k})))
            .collect()
    }

    fn matched(r: &[(RouteKey, Value)], method: &str, path: &str) -> Option<String> {
        match_route(r, method, path).map(|(v, _)| v["routeKey"].as_str().unwrap_or("").to_owned())
    }

    #[test]
    fn the_most_specific_route_wins() {
        let r = routes(&[
            "$default",
            "ANY /{proxy+}",
            "GET /pets/{id}",
            "GET /pets/dog",
            "POST /uploads",
            "ANY /uploads",
            "GET /",
        ]);
        assert_eq!(
            matched(&r, "POST", "/uploads").as_deref(),
            Some("POST /uploads")
        );
        assert_eq!(
            matched(&r, "PUT", "/uploads").as_deref(),
            Some("ANY /uploads")
        );
        assert_eq!(
            matched(&r, "GET", "/pets/dog").as_deref(),
            Some("GET /pets/dog")
        );
        assert_eq!(
            matched(&r, "GET", "/pets/cat").as_deref(),
            Some("GET /pets/{id}")
        );
        assert_eq!(
            matched(&r, "GET", "/a/b/c").as_deref(),
            Some("ANY /{proxy+}")
        );
        assert_eq!(matched(&r, "GET", "/").as_deref(), Some("GET /"));
        let (_, p) = match_route(&r, "GET", "/pets/a%20b").expect("match");
        assert_eq!(p["id"], "a b");
        let only = routes(&["POST /uploads"]);
        assert_eq!(matched(&only, "GET", "/uploads"), None);
        assert_eq!(matched(&only, "POST", "/uploads/x"), None);
        let d = routes(&["$default"]);
        assert_eq!(
            matched(&d, "DELETE", "/any/thing").as_deref(),
            Some("$default")
        );
    }

    #[test]
    fn route_keys_parse_as_api_gateway_reads_them() {
        assert!(RouteKey::parse("POST /uploads").is_ok());
        assert!(RouteKey::parse("ANY /{proxy+}").is_ok());
        assert!(RouteKey::parse("$default").is_ok());
        for bad in [
            "POST",
            "FETCH /x",
            "POST uploads",
            "GET /{a+}/b",
            "GET /a//b",
            "GET /{}",
            "post /x",
        ] {
            assert!(RouteKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses_follow_the_payload_formats() {
        let r = respond(
            json!({"statusCode": 201, "headers": {"x-a": "1"}, "body": "made", "cookies": ["a=1"]}),
            "2.0",
        )
        .expect("ok");
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers()["set-cookie"], "a=1");
        let r = respond(json!("just text"), "2.0").expect("ok");
        assert_eq!(
            (r.status(), r.headers()["content-type"].to_str().ok()),
            (StatusCode::OK, Some("application/json"))
        );
        let r = respond(json!({"a": 1}), "2.0").expect("ok");
        assert_eq!(r.status(), 200);
        assert!(respond(json!({"a": 1}), "1.0").is_none());
        assert!(respond(json!({"statusCode": "nope"}), "2.0").is_none());
        let r = respond(
            json!({"statusCode": 200, "body": "aGk=", "isBase64Encoded": true}),
            "1.0",
        )
        .expect("ok");
        assert_eq!(r.status(), 200);
    }

    #[test]
    fn claims_are_strings() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"s","exp":5,"cognito:groups":["a","b"]}"#);
        let c = claims_of(&format!("h.{payload}.s"));
        assert_eq!(c["sub"], "s");
        assert_eq!(c["exp"], "5");
        assert_eq!(c["cognito:groups"], "[a b]");
    }
}
