//! The operators' API, under `/admin/` on the API listener: what the console's operator
//! pages show and do. Every route needs the ID token (or access token) of a user of the
//! default pool in its `admin` group (`cognito:groups`); anyone else gets 403. Group
//! membership is read from the token, so a user added to or removed from `admin` gets or
//! loses access with their next token (at most the token lifetime, an hour by default).
//!
//! It lives in the binary, not in the gateway crate, because it reads every part (streams,
//! mappings and their statistics and logs, uploads of every user, users): the binary is the
//! one place that holds them all.
//!
//! Routes (JSON; errors in the upload API's error body):
//! - `GET  /admin/overview` — streams and their shards, mappings with state and counters,
//!   uploads by status;
//! - `GET  /admin/history` — the last hour: records/s and bytes/s per stream, iterator age
//!   per mapping, one point every 10 s (`history.rs`);
//! - `GET  /admin/failed?limit=N` — failed uploads of every user, newest first, with errors;
//! - `POST /admin/uploads/{id}/redrive` — a failed upload is queued again (409 otherwise);
//! - `GET  /admin/mappings/{name}/logs?lines=N` — a mapping's last function log lines;
//! - `GET  /admin/users?next=…` — the default pool's users with their groups;
//! - `POST /admin/users/{username}/disable`, `…/enable` — AdminDisableUser / AdminEnableUser.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sluice_gateway::{Authenticated, Authorizer, GatewayError};
use sluice_identity::Identity;
use sluice_processor::embedded::{EmbeddedMappings, EmbeddedStats};
use sluice_processor::logs::EmbeddedLogs;
use sluice_processor::mappings::BUILTIN_MAPPING;
use sluice_stream::Stream as _;
use sluice_stream::embedded::EmbeddedStream;
use sluice_uploads::embedded::EmbeddedUploads;
use sluice_uploads::{Upload, UploadStatus};

use crate::config::Settings;

/// The group whose members are operators.
pub(crate) const ADMIN_GROUP: &str = "admin";

#[derive(Clone)]
pub(crate) struct AdminApi {
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) uploads: EmbeddedUploads,
    pub(crate) stream: EmbeddedStream,
    pub(crate) identity: Identity,
    pub(crate) pool_id: String,
    pub(crate) settings: Arc<Settings>,
    pub(crate) db: sluice_meta::Meta,
    pub(crate) history: Arc<crate::history::History>,
}

pub(crate) fn router(api: AdminApi) -> Router {
    Router::new()
        .route("/admin/overview", get(overview))
        .route("/admin/history", get(history))
        .route("/admin/failed", get(failed))
        .route("/admin/uploads/{id}/redrive", post(redrive))
        .route("/admin/mappings/{name}/logs", get(logs))
        .route("/admin/users", get(users))
        .route("/admin/users/{username}/disable", post(disable))
        .route("/admin/users/{username}/enable", post(enable))
        .with_state(api)
}

/// The caller, when it is an operator.
fn operator(api: &AdminApi, headers: &HeaderMap) -> Result<Authenticated, GatewayError> {
    let who = Authenticated::from_headers(headers, api.authorizer.as_ref())?;
    if !who.claims().groups.iter().any(|g| g == ADMIN_GROUP) {
        return Err(GatewayError::Forbidden(format!(
            "operators only: this needs a user in the `{ADMIN_GROUP}` group (sign in again after being added)"
        )));
    }
    Ok(who)
}

fn internal(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Internal(e.to_string())
}

fn upload_json(u: &Upload) -> Value {
    json!({
        "uploadId": u.id,
        "userSub": u.user_sub,
        "filename": u.filename,
        "size": u.size,
        "status": u.status.as_str(),
        "error": u.error,
        "attempts": u.attempts,
        "stream": u.stream,
        "shardId": u.shard_id,
        "sequenceNumber": u.sequence_number,
        "createdAt": sluice_uploads::iso8601_ms(u.created_ms),
        "updatedAt": sluice_uploads::iso8601_ms(u.updated_ms),
    })
}

async fn overview(
    State(api): State<AdminApi>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    operator(&api, &headers)?;
    let mut streams = Vec::new();
    for name in api.stream.list_streams().await.map_err(internal)? {
        let d = match api.stream.describe_stream(&name).await {
            Ok(d) => d,
            // Deleted between the list and now.
            Err(_) => continue,
        };
        let open = d
            .shards
            .iter()
            .filter(|s| s.ending_sequence_number.is_none())
            .count();
        streams.push(json!({
            "name": d.name,
            "status": d.status,
            "retentionHours": d.retention_hours,
            "openShards": open,
            "shards": d.shards.iter().map(|s| json!({
                "shardId": s.shard_id,
                "open": s.ending_sequence_number.is_none(),
                "parentShardId": s.parent_shard_id,
                "startingSequenceNumber": s.starting_sequence_number,
            })).collect::<Vec<_>>(),
            "createdAt": sluice_uploads::iso8601_ms(d.created_ms),
        }));
    }
    let store = EmbeddedMappings::new(api.db.clone());
    let saved = EmbeddedStats::new(api.db.clone())
        .load_all()
        .await
        .map_err(internal)?;
    let mut mappings = Vec::new();
    if api.settings.builtin_mapping {
        mappings.push(crate::mapping_cmd::builtin_view(
            &api.settings,
            saved.get(BUILTIN_MAPPING),
        ));
    }
    for def in sluice_processor::MappingStore::list(&store)
        .await
        .map_err(internal)?
    {
        mappings.push(crate::mapping_cmd::view(
            &api.settings,
            &def,
            saved.get(def.name()),
        ));
    }
    let (_, counts) = api
        .uploads
        .by_status(UploadStatus::Failed, 0)
        .await
        .map_err(GatewayError::from)?;
    let uploads: serde_json::Map<String, Value> =
        counts.into_iter().map(|(s, n)| (s, json!(n))).collect();
    Ok(axum::Json(json!({
        "streams": streams,
        "mappings": mappings,
        "uploads": uploads,
    }))
    .into_response())
}

async fn history(
    State(api): State<AdminApi>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    operator(&api, &headers)?;
    Ok(axum::Json(api.history.series()).into_response())
}

fn limit_param(
    q: &std::collections::HashMap<String, String>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, GatewayError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                GatewayError::BadRequest(format!(
                    "{name} must be a whole number from 1 to {max}, got {v:?}"
                ))
            }),
    }
}

fn query(uri: &axum::http::Uri) -> Result<std::collections::HashMap<String, String>, GatewayError> {
    serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| GatewayError::BadRequest(format!("bad query string: {e}")))
}

async fn failed(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, GatewayError> {
    operator(&api, &headers)?;
    let limit = limit_param(&query(&uri)?, "limit", 50, 500)?;
    let (rows, _) = api
        .uploads
        .by_status(UploadStatus::Failed, limit)
        .await
        .map_err(GatewayError::from)?;
    Ok(
        axum::Json(json!({"uploads": rows.iter().map(upload_json).collect::<Vec<_>>()}))
            .into_response(),
    )
}

async fn redrive(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let who = operator(&api, &headers)?;
    match api.uploads.redrive(&id).await.map_err(GatewayError::from)? {
        Some((shard, seq)) => {
            tracing::info!(upload = %id, operator = %who.sub(), "failed upload redriven");
            Ok(
                axum::Json(json!({"uploadId": id, "shardId": shard, "sequenceNumber": seq}))
                    .into_response(),
            )
        }
        None => match sluice_uploads::UploadLedger::get(&api.uploads, &id).await {
            Ok(u) => Err(GatewayError::Conflict(format!(
                "upload {id} is {}, not failed: only a failed upload is redriven",
                u.status.as_str()
            ))),
            Err(_) => Err(GatewayError::NotFound(format!("upload {id} not found"))),
        },
    }
}

async fn logs(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    Path(name): Path<String>,
    uri: axum::http::Uri,
) -> Result<Response, GatewayError> {
    operator(&api, &headers)?;
    let n = limit_param(&query(&uri)?, "lines", 100, 1000)?;
    let lines = EmbeddedLogs::new(api.db.clone())
        .tail(&name, n)
        .await
        .map_err(internal)?;
    let lines: Vec<Value> = lines
        .iter()
        .map(|l| {
            json!({
                "id": l.id,
                "time": sluice_uploads::iso8601_ms(l.ts_ms),
                "requestId": l.request_id,
                "stream": l.stream,
                "line": l.line,
            })
        })
        .collect();
    Ok(axum::Json(json!({"mapping": name, "lines": lines})).into_response())
}

fn identity_error(e: sluice_identity::IdentityError) -> GatewayError {
    use sluice_identity::IdentityError as E;
    match e {
        E::UserNotFound(m) | E::ResourceNotFound(m) => GatewayError::NotFound(m),
        E::InvalidParameter(m) => GatewayError::BadRequest(m),
        E::Meta(m) if m.is_unavailable() => GatewayError::Unavailable(m.to_string()),
        other => GatewayError::Internal(other.to_string()),
    }
}

async fn users(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, GatewayError> {
    operator(&api, &headers)?;
    let q = query(&uri)?;
    let page = api
        .identity
        .list_users(
            &api.pool_id,
            None,
            Some(60),
            q.get("next").map(String::as_str),
        )
        .await
        .map_err(identity_error)?;
    let mut users = Vec::new();
    for u in &page.users {
        let (groups, _) = api
            .identity
            .list_groups_for_user(&api.pool_id, &u.username, Some(60), None)
            .await
            .map_err(identity_error)?;
        users.push(json!({
            "username": u.username,
            "sub": u.sub,
            "email": u.attributes.get("email"),
            "status": u.status,
            "enabled": u.enabled,
            "groups": groups.iter().map(|g| g.name.clone()).collect::<Vec<_>>(),
            "createdAt": sluice_uploads::iso8601_ms(u.created_ms),
        }));
    }
    Ok(axum::Json(json!({"users": users, "next": page.next_token})).into_response())
}

async fn set_enabled(
    api: AdminApi,
    headers: HeaderMap,
    username: String,
    enabled: bool,
) -> Result<Response, GatewayError> {
    let who = operator(&api, &headers)?;
    let user = api
        .identity
        .admin_get_user(&api.pool_id, &username)
        .await
        .map_err(identity_error)?;
    if !enabled && user.sub == who.sub() {
        return Err(GatewayError::Conflict(
            "an operator cannot disable their own user here".into(),
        ));
    }
    api.identity
        .admin_set_enabled(&api.pool_id, &username, enabled)
        .await
        .map_err(identity_error)?;
    tracing::info!(user = %username, enabled, operator = %who.sub(), "user enabled or disabled");
    Ok(axum::Json(json!({"username": username, "enabled": enabled})).into_response())
}

async fn disable(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Result<Response, GatewayError> {
    set_enabled(api, headers, username, false).await
}

async fn enable(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Result<Response, GatewayError> {
    set_enabled(api, headers, username, true).await
}
