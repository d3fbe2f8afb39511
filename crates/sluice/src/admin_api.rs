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
//! - `POST /admin/users` `{"email","temporaryPassword"}` — a user who must choose their own
//!   password at the first sign-in (AdminCreateUser);
//! - `POST /admin/users/{username}/password` `{"temporaryPassword"}` — a password reset
//!   (AdminSetUserPassword, not permanent: the user chooses a new one at the next sign-in);
//! - `PUT|DELETE /admin/users/{username}/groups/{group}` — group membership (the group is
//!   created when missing);
//! - `POST /admin/users/{username}/disable`, `…/enable` — AdminDisableUser / AdminEnableUser;
//! - `GET /admin/keys`, `POST /admin/keys` `{"description","policy"?}` (the secret is in this
//!   answer only), `DELETE /admin/keys/{id}` — the edge's access keys (`sluice keys`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sluice_gateway::{ApiQuery, Authenticated, Authorizer, GatewayError};
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
    pub(crate) keys: sluice_identity::access_keys::AccessKeys,
}

pub(crate) fn router(api: AdminApi) -> Router {
    Router::new()
        .route("/admin/overview", get(overview))
        .route("/admin/history", get(history))
        .route("/admin/failed", get(failed))
        .route("/admin/uploads/{id}/redrive", post(redrive))
        .route("/admin/mappings/{name}/logs", get(logs))
        .route("/admin/users", get(users).post(create_user))
        .route("/admin/users/{username}/password", post(reset_password))
        .route(
            "/admin/users/{username}/groups/{group}",
            axum::routing::put(add_to_group).delete(remove_from_group),
        )
        .route("/admin/keys", get(list_keys).post(create_key))
        .route("/admin/keys/{id}", axum::routing::delete(delete_key))
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
    let counts = api
        .uploads
        .status_counts()
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

/// A query string's parameters.
type Params = std::collections::HashMap<String, String>;

fn limit_param(q: &Params, name: &str, default: usize, max: usize) -> Result<usize, GatewayError> {
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

async fn failed(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<Params>,
) -> Result<Response, GatewayError> {
    operator(&api, &headers)?;
    let limit = limit_param(&q, "limit", 50, 500)?;
    let rows = api
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
    ApiQuery(q): ApiQuery<Params>,
) -> Result<Response, GatewayError> {
    operator(&api, &headers)?;
    let n = limit_param(&q, "lines", 100, 1000)?;
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
        E::InvalidParameter(m) | E::InvalidPassword(m) => GatewayError::BadRequest(m),
        E::UsernameExists(m) | E::GroupExists(m) => GatewayError::Conflict(m),
        E::Meta(m) if m.is_unavailable() => GatewayError::Unavailable(m.to_string()),
        other => GatewayError::Internal(other.to_string()),
    }
}

async fn users(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<Params>,
) -> Result<Response, GatewayError> {
    operator(&api, &headers)?;
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

/// A JSON request body of at most 64 KiB, as `T`.
async fn json_body<T: serde::de::DeserializeOwned>(
    body: axum::body::Body,
) -> Result<T, GatewayError> {
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|e| GatewayError::BadRequest(format!("cannot read the request body: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| GatewayError::BadRequest(format!("malformed JSON body: {e}")))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewUserBody {
    email: String,
    temporary_password: String,
}

async fn create_user(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, GatewayError> {
    let who = operator(&api, &headers)?;
    let b: NewUserBody = json_body(body).await?;
    let (identity, pool) = (api.identity.clone(), api.pool_id.clone());
    let user = tokio::task::spawn_blocking(move || {
        identity.create_user(&pool, &b.email, &b.temporary_password, true)
    })
    .await
    .map_err(internal)?
    .map_err(identity_error)?;
    tracing::info!(user = %user.email, operator = %who.sub(), "user created");
    Ok((
        axum::http::StatusCode::CREATED,
        axum::Json(json!({"sub": user.sub, "email": user.email, "status": user.status})),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PasswordBody {
    temporary_password: String,
}

async fn reset_password(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: axum::body::Body,
) -> Result<Response, GatewayError> {
    let who = operator(&api, &headers)?;
    let b: PasswordBody = json_body(body).await?;
    api.identity
        .admin_set_password(&api.pool_id, &username, &b.temporary_password, false)
        .await
        .map_err(identity_error)?;
    tracing::info!(user = %username, operator = %who.sub(), "password reset");
    Ok(
        axum::Json(json!({"username": username, "status": "FORCE_CHANGE_PASSWORD"}))
            .into_response(),
    )
}

async fn add_to_group(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    Path((username, group)): Path<(String, String)>,
) -> Result<Response, GatewayError> {
    let who = operator(&api, &headers)?;
    api.identity
        .add_user_to_group_creating_it(&api.pool_id, &username, &group)
        .await
        .map_err(identity_error)?;
    tracing::info!(user = %username, group = %group, operator = %who.sub(), "added to group");
    Ok(axum::Json(json!({"username": username, "group": group})).into_response())
}

async fn remove_from_group(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    Path((username, group)): Path<(String, String)>,
) -> Result<Response, GatewayError> {
    let who = operator(&api, &headers)?;
    if group == ADMIN_GROUP {
        let user = api
            .identity
            .admin_get_user(&api.pool_id, &username)
            .await
            .map_err(identity_error)?;
        if user.sub == who.sub() {
            return Err(GatewayError::Conflict(
                "an operator cannot remove themselves from the admin group here".into(),
            ));
        }
    }
    api.identity
        .remove_user_from_group(&api.pool_id, &username, &group)
        .await
        .map_err(identity_error)?;
    tracing::info!(user = %username, group = %group, operator = %who.sub(), "removed from group");
    Ok(axum::Json(json!({"username": username, "group": group})).into_response())
}

async fn list_keys(
    State(api): State<AdminApi>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    operator(&api, &headers)?;
    let keys = api.keys.clone();
    let list = tokio::task::spawn_blocking(move || keys.list())
        .await
        .map_err(internal)?
        .map_err(identity_error)?;
    let keys: Vec<Value> = list
        .iter()
        .map(|k| {
            json!({
                "accessKeyId": k.id,
                "description": k.description,
                "createdAt": sluice_uploads::iso8601_ms(k.created_ms),
                "policy": k.policy.as_deref().map(|d| serde_json::from_str::<Value>(d).unwrap_or(Value::String(d.to_owned()))),
                "owner": k.owner,
            })
        })
        .collect();
    Ok(axum::Json(json!({"keys": keys})).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    #[serde(default)]
    description: String,
    /// An IAM policy document (JSON object) limiting the key; none: full access.
    policy: Option<Value>,
}

async fn create_key(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, GatewayError> {
    let who = operator(&api, &headers)?;
    let b: NewKeyBody = json_body(body).await?;
    let policy = b.policy.map(|p| p.to_string());
    let keys = api.keys.clone();
    let description = b.description.clone();
    let k = tokio::task::spawn_blocking(move || {
        keys.create_with_policy(&description, policy.as_deref())
    })
    .await
    .map_err(internal)?
    .map_err(identity_error)?;
    tracing::info!(key = %k.id, operator = %who.sub(), "access key created");
    Ok((
        axum::http::StatusCode::CREATED,
        axum::Json(
            json!({"accessKeyId": k.id, "secretAccessKey": k.secret, "description": b.description}),
        ),
    )
        .into_response())
}

async fn delete_key(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let who = operator(&api, &headers)?;
    let keys = api.keys.clone();
    let key_id = id.clone();
    tokio::task::spawn_blocking(move || keys.delete(&key_id))
        .await
        .map_err(internal)?
        .map_err(identity_error)?;
    // The data directory's credentials file goes with the development key.
    let _ = crate::wiring::forget_credentials(&api.settings, &id);
    tracing::info!(key = %id, operator = %who.sub(), "access key deleted");
    Ok(axum::Json(json!({"accessKeyId": id, "deleted": true})).into_response())
}
