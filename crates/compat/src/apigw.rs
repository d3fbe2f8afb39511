//! API Gateway v2's REST-JSON protocol (SigV4 service `apigateway`) for HTTP APIs:
//! `CreateApi`, `GetApi(s)`, `UpdateApi`, `DeleteApi` and the same four for authorizers,
//! integrations, routes, stages and deployments (`/v2/apis/{apiId}/{kind}s[/{id}]`).
//! What the APIs do is `sluice_apis`; this module is the wire format.
//!
//! Errors are API Gateway's: the status, `x-amzn-ErrorType: <Code>` and
//! `{"message": …}` (`BadRequestException` 400, `NotFoundException` 404,
//! `ConflictException` 409, `AccessDeniedException` 403).
//!
//! IAM: API Gateway's actions are HTTP verbs on resource paths — `apigateway:POST` on
//! `arn:aws:apigateway:<region>::/apis`, `apigateway:GET` on
//! `arn:aws:apigateway:<region>::/apis/<id>/routes`, and so on.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sluice_apis::{ApisError, Checks, HttpApis, Kind, function_arn_of};
use sluice_functions::invoke::Invoker;
use std::sync::Arc;

use crate::Edge;

/// What the API Gateway front end works with.
#[derive(Clone)]
pub struct ApigwApi {
    pub apis: HttpApis,
    pub invoker: Arc<Invoker>,
}

const MAX_REQUEST: usize = 1024 * 1024;

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut resp = (
        status,
        [("content-type", "application/json")],
        json!({"message": message}).to_string(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(code) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

fn apis_error(e: ApisError) -> Response {
    if e.is_unavailable() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "the service is unavailable; try again later",
        );
    }
    let m = e.to_string();
    match e {
        ApisError::NotFound(_) => error(StatusCode::NOT_FOUND, "NotFoundException", &m),
        ApisError::BadRequest(_) => error(StatusCode::BAD_REQUEST, "BadRequestException", &m),
        ApisError::Conflict(_) => error(StatusCode::CONFLICT, "ConflictException", &m),
        other => {
            tracing::error!(error = %other, "apigateway operation failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerErrorException",
                "internal failure",
            )
        }
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// Serves one API Gateway v2 request (see [`crate::router`]: requests signed for
/// `apigateway` come here).
pub async fn handle(State(edge): State<Edge>, req: Request) -> Response {
    let Some(api) = edge.apigw.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFoundException",
            "this server does not serve HTTP APIs",
        );
    };
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_REQUEST).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BadRequestException",
                "the request is too large",
            );
        }
    };
    let principal = match crate::authenticate(
        &edge.keys,
        &edge.kinesis.account_id,
        &parts.method,
        &parts.uri,
        &parts.headers,
        &body,
        crate::peer_of(&parts.extensions),
    )
    .await
    {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    let resource = format!("arn:aws:apigateway:{}::{path}", api.apis.region());
    if let Err(d) = principal.check(&format!("apigateway:{}", parts.method), &resource) {
        return error(StatusCode::FORBIDDEN, "AccessDeniedException", &d.message());
    }
    let map = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => m,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequestException",
                    "the request body must be a JSON object",
                );
            }
        }
    };
    metrics::counter!("sluice_apigateway_requests_total", "method" => parts.method.to_string())
        .increment(1);
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = parts.method.clone();
    let r = match (m, segs.as_slice()) {
        (Method::POST, ["v2", "apis"]) => api
            .apis
            .create_api(&map)
            .await
            .map(|v| (StatusCode::CREATED, v)),
        (Method::GET, ["v2", "apis"]) => api
            .apis
            .list_apis()
            .await
            .map(|items| (StatusCode::OK, json!({"items": items}))),
        (Method::GET, ["v2", "apis", id]) => {
            api.apis.get_api(id).await.map(|v| (StatusCode::OK, v))
        }
        (Method::PATCH, ["v2", "apis", id]) => api
            .apis
            .update_api(id, &map)
            .await
            .map(|v| (StatusCode::OK, v)),
        (Method::DELETE, ["v2", "apis", id]) => api
            .apis
            .delete_api(id)
            .await
            .map(|()| (StatusCode::NO_CONTENT, Value::Null)),
        (method, ["v2", "apis", id, kind, rest @ ..]) if rest.len() <= 1 => {
            let Some(kind) = Kind::from_segment(kind) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "NotFoundException",
                    "unknown resource",
                );
            };
            match (method, rest) {
                (Method::POST, []) => {
                    let checks = gather(&edge, &api, &map, None).await;
                    api.apis
                        .create(id, kind, &map, &checks)
                        .await
                        .map(|v| (StatusCode::CREATED, v))
                }
                (Method::GET, []) => api
                    .apis
                    .list(id, kind)
                    .await
                    .map(|items| (StatusCode::OK, json!({"items": items}))),
                (Method::GET, [item]) => api
                    .apis
                    .get(id, kind, item)
                    .await
                    .map(|v| (StatusCode::OK, v)),
                (Method::PATCH, [item]) => {
                    let existing = api.apis.get(id, kind, item).await.ok();
                    let checks = gather(&edge, &api, &map, existing.as_ref()).await;
                    api.apis
                        .update(id, kind, item, &map, &checks)
                        .await
                        .map(|v| (StatusCode::OK, v))
                }
                (Method::DELETE, [item]) => api
                    .apis
                    .delete(id, kind, item)
                    .await
                    .map(|()| (StatusCode::NO_CONTENT, Value::Null)),
                _ => {
                    return error(
                        StatusCode::NOT_FOUND,
                        "NotFoundException",
                        "unknown operation",
                    );
                }
            }
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "NotFoundException",
                &format!(
                    "API Gateway v2 has no operation {} {path} (or sluice does not support it)",
                    parts.method
                ),
            );
        }
    };
    match r {
        Ok((StatusCode::NO_CONTENT, _)) => StatusCode::NO_CONTENT.into_response(),
        Ok((status, v)) => json_response(status, &v),
        Err(e) => apis_error(e),
    }
}

/// Looks up what checking a change needs: whether the function an integration names
/// exists, whether an authorizer's issuer is a pool of this server.
async fn gather(
    edge: &Edge,
    api: &ApigwApi,
    body: &Map<String, Value>,
    existing: Option<&Value>,
) -> Checks {
    let field = |k: &str| {
        body.get(k)
            .or_else(|| existing.and_then(|e| e.get(k)))
            .cloned()
    };
    let mut checks = Checks::default();
    if let Some(Value::String(uri)) = field("integrationUri") {
        let functions = api.invoker.functions();
        if let Ok(name) = functions.resolve_name(function_arn_of(&uri))
            && functions.get(&name).await.is_ok()
        {
            checks.functions.push(uri);
        }
    }
    if let Some(issuer) = field("jwtConfiguration")
        .and_then(|j| j.get("issuer").and_then(Value::as_str).map(str::to_owned))
    {
        let pool = issuer.rsplit('/').next().unwrap_or_default().to_owned();
        let identity = edge.identity.clone();
        let expected = identity.issuer(&pool);
        let exists = tokio::task::spawn_blocking(move || identity.pool_exists(&pool))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if exists && expected == issuer {
            checks.issuers.push(issuer);
        }
    }
    checks
}
