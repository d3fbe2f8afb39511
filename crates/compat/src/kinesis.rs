//! Kinesis Data Streams' JSON 1.1 protocol (`Kinesis_20131202.*`) over the `Stream` part.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::collections::BTreeMap;

use sluice_stream::{
    CreateStreamOptions, IteratorSpec, ListShardsInput, ListStreamsInput, MAX_PUT_RECORDS,
    PutRecord, ShardDesc, ShardFilter, Stream, StreamError, StreamMode,
};

use crate::{json_error, json_ok};

pub const SERVICE: &str = "Kinesis_20131202";

/// Largest PutRecords request payload (data + partition keys), as AWS.
const MAX_PUT_RECORDS_BYTES: usize = 5 * 1024 * 1024;

/// Where ARNs point.
#[derive(Clone)]
pub struct KinesisContext {
    pub stream: Arc<dyn Stream>,
    pub region: String,
    pub account_id: String,
    /// SubscribeToShard's running subscriptions (and their timings).
    pub subscriptions: crate::kinesis_efo::Subscriptions,
}

impl KinesisContext {
    pub(crate) fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:stream/{name}",
            self.region, self.account_id
        )
    }
}

/// A Kinesis error: HTTP status, exception name and message.
#[derive(Debug)]
pub struct KinesisError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

pub(crate) fn err(kind: &'static str, message: impl Into<String>) -> KinesisError {
    KinesisError {
        status: StatusCode::BAD_REQUEST,
        kind,
        message: message.into(),
    }
}

pub(crate) fn validation(field: &str) -> KinesisError {
    err(
        "ValidationException",
        format!(
            "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
        ),
    )
}

/// Stream errors as Kinesis exceptions, in one place.
impl From<StreamError> for KinesisError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::ResourceNotFound(m) => err("ResourceNotFoundException", m),
            StreamError::ResourceInUse(m) => err("ResourceInUseException", m),
            StreamError::InvalidArgument(m) => err("InvalidArgumentException", m),
            StreamError::ExpiredIterator(m) => err("ExpiredIteratorException", m),
            StreamError::LimitExceeded(m) => err("LimitExceededException", m),
            StreamError::ProvisionedThroughputExceeded(m) => {
                err("ProvisionedThroughputExceededException", m)
            }
            StreamError::Meta(m) => match crate::unavailable(&m) {
                Some(message) => KinesisError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: "ServiceUnavailable",
                    message,
                },
                None => {
                    tracing::error!(error = %m, "kinesis request failed");
                    KinesisError {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        kind: "InternalFailure",
                        message: "internal failure".into(),
                    }
                }
            },
            StreamError::Backend(detail) => {
                tracing::error!(error = %detail, "kinesis request failed");
                KinesisError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    kind: "InternalFailure",
                    message: "internal failure".into(),
                }
            }
        }
    }
}

pub(crate) type OpResult = Result<Value, KinesisError>;

/// The Kinesis protocol's two encodings: JSON 1.1 (most SDKs) and CBOR 1.1 (the Java SDK
/// v2 and the KCL by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Cbor,
}

impl Encoding {
    pub fn of(content_type: Option<&str>) -> Encoding {
        match content_type {
            Some(ct) if ct.starts_with("application/x-amz-cbor") => Encoding::Cbor,
            _ => Encoding::Json,
        }
    }
}

pub async fn handle(ctx: &KinesisContext, op: &str, body: &[u8], enc: Encoding) -> Response {
    let req = match enc {
        Encoding::Json => serde_json::from_slice::<Value>(body).ok(),
        Encoding::Cbor => crate::cbor::decode(body),
    };
    let result = match req {
        // GetRecords in JSON is written straight to the body: its records (base64 data)
        // are most of what the edge serialises, and a `Value` tree of them costs an
        // allocation per field plus escaping on the way out.
        Some(req @ Value::Object(_)) if enc == Encoding::Json && op == "GetRecords" => {
            return match get_records_output(ctx, &req)
                .await
                .and_then(|out| get_records_json(&out))
            {
                Ok(body) => (
                    StatusCode::OK,
                    [("content-type", "application/x-amz-json-1.1")],
                    body,
                )
                    .into_response(),
                Err(e) => json_error(e.status, e.kind, &e.message),
            };
        }
        // SubscribeToShard answers with an event stream; only its refusals are rendered here.
        Some(req @ Value::Object(_)) if op == "SubscribeToShard" => {
            match crate::kinesis_efo::subscribe_to_shard(ctx, &req, enc).await {
                Ok(resp) => return resp,
                Err(e) => Err(e),
            }
        }
        Some(req @ Value::Object(_)) => call(ctx, op, &req).await,
        _ => Err(err(
            "SerializationException",
            "request body is not a JSON or CBOR map",
        )),
    };
    match (result, enc) {
        (Ok(v), Encoding::Json) => json_ok(v),
        (Err(e), Encoding::Json) => json_error(e.status, e.kind, &e.message),
        (Ok(v), Encoding::Cbor) => crate::cbor::response(StatusCode::OK, &v),
        (Err(e), Encoding::Cbor) => {
            crate::cbor::response(e.status, &json!({"__type": e.kind, "message": e.message}))
        }
    }
}

/// One Kinesis operation on a decoded request.
async fn call(ctx: &KinesisContext, op: &str, req: &Value) -> OpResult {
    match op {
        "CreateStream" => create_stream(ctx, req).await,
        "DeleteStream" => delete_stream(ctx, req).await,
        "DescribeStream" => describe_stream(ctx, req).await,
        "DescribeStreamSummary" => describe_stream_summary(ctx, req).await,
        "ListStreams" => list_streams(ctx, req).await,
        "ListShards" => list_shards(ctx, req).await,
        "PutRecord" => put_record(ctx, req).await,
        "PutRecords" => put_records(ctx, req).await,
        "GetShardIterator" => get_shard_iterator(ctx, req).await,
        "GetRecords" => Ok(get_records_value(&get_records_output(ctx, req).await?)),
        "SplitShard" => split_shard(ctx, req).await,
        "MergeShards" => merge_shards(ctx, req).await,
        "UpdateShardCount" => update_shard_count(ctx, req).await,
        "IncreaseStreamRetentionPeriod" => retention(ctx, req, true).await,
        "DecreaseStreamRetentionPeriod" => retention(ctx, req, false).await,
        "UpdateMaxRecordSize" => update_max_record_size(ctx, req).await,
        "AddTagsToStream" => add_tags(ctx, req).await,
        "RemoveTagsFromStream" => remove_tags(ctx, req).await,
        "ListTagsForStream" => list_tags(ctx, req).await,
        "TagResource" => tag_resource(ctx, req).await,
        "UntagResource" => untag_resource(ctx, req).await,
        "ListTagsForResource" => list_tags_for_resource(ctx, req).await,
        "DescribeLimits" => describe_limits(ctx).await,
        "RegisterStreamConsumer" => crate::kinesis_efo::register(ctx, req).await,
        "DescribeStreamConsumer" => crate::kinesis_efo::describe(ctx, req).await,
        "ListStreamConsumers" => crate::kinesis_efo::list(ctx, req).await,
        "DeregisterStreamConsumer" => crate::kinesis_efo::deregister(ctx, req).await,
        _ => Err(err(
            "UnknownOperationException",
            format!("operation {op} is not supported by sluice's Kinesis endpoint"),
        )),
    }
}

pub(crate) fn str_field<'a>(req: &'a Value, name: &str) -> Option<&'a str> {
    req.get(name).and_then(Value::as_str)
}

/// The stream a request names, by `StreamName` or `StreamARN`.
pub(crate) fn stream_name(ctx: &KinesisContext, req: &Value) -> Result<String, KinesisError> {
    if let Some(name) = str_field(req, "StreamName") {
        return Ok(name.to_owned());
    }
    if let Some(arn) = str_field(req, "StreamARN") {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let name = match parts.as_slice() {
            ["arn", _, "kinesis", region, account, resource] => {
                if *region != ctx.region || *account != ctx.account_id {
                    return Err(err(
                        "ResourceNotFoundException",
                        format!("stream {arn} not found"),
                    ));
                }
                resource.strip_prefix("stream/")
            }
            _ => None,
        };
        return name
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| err("ValidationException", format!("invalid stream ARN {arn:?}")));
    }
    Err(validation("streamName"))
}

pub(crate) fn epoch_secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn shard_json(s: &ShardDesc) -> Value {
    let mut v = json!({
        "ShardId": s.shard_id,
        "HashKeyRange": {
            "StartingHashKey": s.starting_hash_key.to_string(),
            "EndingHashKey": s.ending_hash_key.to_string(),
        },
        "SequenceNumberRange": {"StartingSequenceNumber": s.starting_sequence_number},
    });
    if let Some(p) = &s.parent_shard_id {
        v["ParentShardId"] = json!(p);
    }
    if let Some(p) = &s.adjacent_parent_shard_id {
        v["AdjacentParentShardId"] = json!(p);
    }
    if let Some(e) = &s.ending_sequence_number {
        v["SequenceNumberRange"]["EndingSequenceNumber"] = json!(e);
    }
    v
}

async fn create_stream(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = str_field(req, "StreamName").ok_or_else(|| validation("streamName"))?;
    let on_demand = req
        .pointer("/StreamModeDetails/StreamMode")
        .and_then(Value::as_str)
        == Some("ON_DEMAND");
    let shard_count = match req.get("ShardCount").and_then(Value::as_u64) {
        Some(n) if n >= 1 => Some(
            u32::try_from(n)
                .map_err(|_| err("LimitExceededException", "shard count exceeds the limit"))?,
        ),
        Some(_) => {
            return Err(err(
                "ValidationException",
                "1 validation error detected: Value at 'shardCount' failed to satisfy constraint: Member must have value greater than or equal to 1",
            ));
        }
        None if on_demand => None,
        None => return Err(validation("shardCount")),
    };
    let max_record_bytes = req
        .get("MaxRecordSizeInKiB")
        .and_then(Value::as_u64)
        .map(|k| k as usize * 1024);
    ctx.stream
        .create_stream_with(
            name,
            CreateStreamOptions {
                shard_count,
                max_record_bytes,
                tags: tags_in(req.get("Tags"))?,
            },
        )
        .await?;
    Ok(json!({}))
}

pub(crate) fn tags_in(v: Option<&Value>) -> Result<BTreeMap<String, String>, KinesisError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(BTreeMap::new());
    };
    let obj = v
        .as_object()
        .ok_or_else(|| err("ValidationException", "Tags must be a map of strings"))?;
    obj.iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|s| (k.clone(), s.to_owned()))
                .ok_or_else(|| err("ValidationException", "tag values must be strings"))
        })
        .collect()
}

async fn delete_stream(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    // As AWS: a stream with registered consumers is deleted (with them) only when asked to.
    let enforce = req
        .get("EnforceConsumerDeletion")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !enforce {
        let consumers = ctx
            .stream
            .list_consumers(sluice_stream::ListConsumersInput {
                stream: name.clone(),
                max_results: Some(1),
                ..Default::default()
            })
            .await?;
        if !consumers.consumers.is_empty() {
            return Err(err(
                "ResourceInUseException",
                format!(
                    "stream {name} has registered consumers: deregister them or set EnforceConsumerDeletion"
                ),
            ));
        }
    }
    ctx.stream.delete_stream(&name).await?;
    Ok(json!({}))
}

async fn describe_stream(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let d = ctx.stream.describe_stream(&name).await?;
    let mode = ctx.stream.describe_stream_summary(&name).await?.mode;
    let limit = req
        .get("Limit")
        .and_then(Value::as_u64)
        .unwrap_or(100)
        .clamp(1, 10_000) as usize;
    let start = str_field(req, "ExclusiveStartShardId");
    let shards: Vec<&ShardDesc> = d
        .shards
        .iter()
        .filter(|s| start.is_none_or(|st| s.shard_id.as_str() > st))
        .collect();
    let has_more = shards.len() > limit;
    Ok(json!({"StreamDescription": {
        "StreamName": d.name,
        "StreamARN": ctx.arn(&d.name),
        "StreamStatus": d.status,
        "StreamModeDetails": {"StreamMode": mode_name(mode)},
        "Shards": shards.iter().take(limit).map(|s| shard_json(s)).collect::<Vec<_>>(),
        "HasMoreShards": has_more,
        "RetentionPeriodHours": d.retention_hours,
        "StreamCreationTimestamp": epoch_secs(d.created_ms),
        "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
        "EncryptionType": "NONE",
    }}))
}

async fn describe_stream_summary(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let d = ctx.stream.describe_stream_summary(&name).await?;
    Ok(json!({"StreamDescriptionSummary": {
        "StreamName": d.name,
        "StreamARN": ctx.arn(&d.name),
        "StreamStatus": d.status,
        "StreamModeDetails": {"StreamMode": mode_name(d.mode)},
        "RetentionPeriodHours": d.retention_hours,
        "StreamCreationTimestamp": epoch_secs(d.created_ms),
        "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
        "EncryptionType": "NONE",
        "OpenShardCount": d.open_shard_count,
        "ConsumerCount": d.consumer_count,
        "MaxRecordSizeInKiB": d.max_record_bytes / 1024,
    }}))
}

async fn describe_limits(ctx: &KinesisContext) -> OpResult {
    let mut open = 0u64;
    let mut on_demand = 0u64;
    for name in ctx.stream.list_streams().await? {
        if let Ok(s) = ctx.stream.describe_stream_summary(&name).await {
            open += u64::from(s.open_shard_count);
            if s.mode == StreamMode::OnDemand {
                on_demand += 1;
            }
        }
    }
    Ok(json!({
        "ShardLimit": 10000,
        "OpenShardCount": open,
        "OnDemandStreamCount": on_demand,
        "OnDemandStreamCountLimit": 50,
    }))
}

fn mode_name(m: StreamMode) -> &'static str {
    match m {
        StreamMode::Provisioned => "PROVISIONED",
        StreamMode::OnDemand => "ON_DEMAND",
    }
}

async fn list_streams(ctx: &KinesisContext, req: &Value) -> OpResult {
    let page = ctx
        .stream
        .list_streams_page(ListStreamsInput {
            exclusive_start_stream_name: str_field(req, "ExclusiveStartStreamName")
                .map(str::to_owned),
            next_token: str_field(req, "NextToken").map(str::to_owned),
            limit: req
                .get("Limit")
                .and_then(Value::as_u64)
                .map(|l| l.min(u64::from(u32::MAX)) as u32),
        })
        .await?;
    let mut summaries = Vec::new();
    for n in &page.names {
        if let Ok(d) = ctx.stream.describe_stream_summary(n).await {
            summaries.push(json!({
                "StreamName": d.name,
                "StreamARN": ctx.arn(&d.name),
                "StreamStatus": d.status,
                "StreamModeDetails": {"StreamMode": mode_name(d.mode)},
                "StreamCreationTimestamp": epoch_secs(d.created_ms),
            }));
        }
    }
    let mut out = json!({
        "StreamNames": page.names,
        "HasMoreStreams": page.has_more,
        "StreamSummaries": summaries,
    });
    if let Some(t) = page.next_token {
        out["NextToken"] = json!(t);
    }
    Ok(out)
}

async fn list_shards(ctx: &KinesisContext, req: &Value) -> OpResult {
    let next_token = str_field(req, "NextToken").map(str::to_owned);
    let stream = if next_token.is_some() {
        if req.get("StreamName").is_some() || req.get("StreamARN").is_some() {
            return Err(err(
                "InvalidArgumentException",
                "NextToken and StreamName/StreamARN cannot be provided together",
            ));
        }
        None
    } else {
        Some(stream_name(ctx, req)?)
    };
    let filter = match req.get("ShardFilter") {
        None | Some(Value::Null) => None,
        Some(f) => Some(shard_filter(f)?),
    };
    let out = ctx
        .stream
        .list_shards(ListShardsInput {
            stream,
            next_token,
            exclusive_start_shard_id: str_field(req, "ExclusiveStartShardId").map(str::to_owned),
            max_results: req
                .get("MaxResults")
                .and_then(Value::as_u64)
                .map(|m| m.min(u64::from(u32::MAX)) as u32),
            filter,
        })
        .await?;
    let mut v = json!({"Shards": out.shards.iter().map(shard_json).collect::<Vec<_>>()});
    if let Some(t) = out.next_token {
        v["NextToken"] = json!(t);
    }
    Ok(v)
}

fn shard_filter(f: &Value) -> Result<ShardFilter, KinesisError> {
    let kind = f
        .get("Type")
        .and_then(Value::as_str)
        .ok_or_else(|| validation("shardFilter.type"))?;
    let ts = || {
        f.get("Timestamp")
            .and_then(Value::as_f64)
            .map(|t| (t * 1000.0) as i64)
            .ok_or_else(|| {
                err(
                    "InvalidArgumentException",
                    format!("ShardFilter {kind} needs a Timestamp"),
                )
            })
    };
    Ok(match kind {
        "AFTER_SHARD_ID" => ShardFilter::AfterShardId(
            f.get("ShardId")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    err(
                        "InvalidArgumentException",
                        "ShardFilter AFTER_SHARD_ID needs a ShardId",
                    )
                })?,
        ),
        "AT_TRIM_HORIZON" => ShardFilter::AtTrimHorizon,
        "FROM_TRIM_HORIZON" => ShardFilter::FromTrimHorizon,
        "AT_LATEST" => ShardFilter::AtLatest,
        "AT_TIMESTAMP" => ShardFilter::AtTimestamp(ts()?),
        "FROM_TIMESTAMP" => ShardFilter::FromTimestamp(ts()?),
        other => {
            return Err(err(
                "ValidationException",
                format!(
                    "1 validation error detected: Value '{other}' at 'shardFilter.type' failed to satisfy constraint: Member must satisfy enum value set"
                ),
            ));
        }
    })
}

async fn split_shard(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let shard = str_field(req, "ShardToSplit").ok_or_else(|| validation("shardToSplit"))?;
    let key =
        str_field(req, "NewStartingHashKey").ok_or_else(|| validation("newStartingHashKey"))?;
    let key = sluice_stream::parse_hash_key(key)?;
    ctx.stream.split_shard(&name, shard, key).await?;
    Ok(json!({}))
}

async fn merge_shards(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let shard = str_field(req, "ShardToMerge").ok_or_else(|| validation("shardToMerge"))?;
    let adjacent =
        str_field(req, "AdjacentShardToMerge").ok_or_else(|| validation("adjacentShardToMerge"))?;
    ctx.stream.merge_shards(&name, shard, adjacent).await?;
    Ok(json!({}))
}

async fn update_shard_count(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let target = req
        .get("TargetShardCount")
        .and_then(Value::as_u64)
        .ok_or_else(|| validation("targetShardCount"))?;
    match str_field(req, "ScalingType") {
        Some("UNIFORM_SCALING") => {}
        Some(other) => {
            return Err(err(
                "ValidationException",
                format!("ScalingType {other} is not supported (UNIFORM_SCALING only)"),
            ));
        }
        None => return Err(validation("scalingType")),
    }
    let target = u32::try_from(target).map_err(|_| {
        err(
            "LimitExceededException",
            "target shard count exceeds the limit",
        )
    })?;
    let out = ctx.stream.update_shard_count(&name, target).await?;
    Ok(json!({
        "StreamName": name,
        "StreamARN": ctx.arn(&name),
        "CurrentShardCount": out.current_shard_count,
        "TargetShardCount": out.target_shard_count,
    }))
}

async fn retention(ctx: &KinesisContext, req: &Value, increase: bool) -> OpResult {
    let name = stream_name(ctx, req)?;
    let hours = req
        .get("RetentionPeriodHours")
        .and_then(Value::as_u64)
        .ok_or_else(|| validation("retentionPeriodHours"))?;
    let hours = u32::try_from(hours)
        .map_err(|_| err("InvalidArgumentException", "retention period out of range"))?;
    if increase {
        ctx.stream.increase_retention(&name, hours).await?;
    } else {
        ctx.stream.decrease_retention(&name, hours).await?;
    }
    Ok(json!({}))
}

async fn update_max_record_size(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let kib = req
        .get("MaxRecordSizeInKiB")
        .and_then(Value::as_u64)
        .ok_or_else(|| validation("maxRecordSizeInKiB"))?;
    let kib = u32::try_from(kib)
        .map_err(|_| err("InvalidArgumentException", "record size out of range"))?;
    ctx.stream.update_max_record_size(&name, kib).await?;
    Ok(json!({}))
}

async fn add_tags(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let tags = tags_in(req.get("Tags"))?;
    if tags.is_empty() {
        return Err(validation("tags"));
    }
    ctx.stream.add_tags(&name, tags).await?;
    Ok(json!({}))
}

/// A request's `TagKeys`.
fn tag_keys_in(req: &Value) -> Result<Vec<String>, KinesisError> {
    req.get("TagKeys")
        .and_then(Value::as_array)
        .ok_or_else(|| validation("tagKeys"))?
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_owned)
                .ok_or_else(|| err("ValidationException", "tag keys must be strings"))
        })
        .collect()
}

async fn remove_tags(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let keys = tag_keys_in(req)?;
    ctx.stream.remove_tags(&name, keys).await?;
    Ok(json!({}))
}

/// What a `ResourceARN` names: a stream, or a consumer of one.
enum Resource {
    Stream(String),
    Consumer(sluice_stream::ConsumerRef),
}

fn resource(ctx: &KinesisContext, req: &Value) -> Result<Resource, KinesisError> {
    let arn = str_field(req, "ResourceARN").ok_or_else(|| validation("resourceARN"))?;
    if arn.contains("/consumer/") {
        return crate::kinesis_efo::parse_consumer_arn(ctx, arn).map(Resource::Consumer);
    }
    stream_name(ctx, &json!({ "StreamARN": arn })).map(Resource::Stream)
}

/// TagResource: a stream's tags as AddTagsToStream, or a consumer's.
async fn tag_resource(ctx: &KinesisContext, req: &Value) -> OpResult {
    let tags = tags_in(req.get("Tags"))?;
    if tags.is_empty() {
        return Err(validation("tags"));
    }
    match resource(ctx, req)? {
        Resource::Stream(name) => ctx.stream.add_tags(&name, tags).await?,
        Resource::Consumer(c) => ctx.stream.add_consumer_tags(&c, tags).await?,
    }
    Ok(json!({}))
}

async fn untag_resource(ctx: &KinesisContext, req: &Value) -> OpResult {
    let keys = tag_keys_in(req)?;
    match resource(ctx, req)? {
        Resource::Stream(name) => ctx.stream.remove_tags(&name, keys).await?,
        Resource::Consumer(c) => ctx.stream.remove_consumer_tags(&c, keys).await?,
    }
    Ok(json!({}))
}

/// ListTagsForResource: every tag, in key order (no pagination in this call).
async fn list_tags_for_resource(ctx: &KinesisContext, req: &Value) -> OpResult {
    let tags: Vec<(String, String)> = match resource(ctx, req)? {
        Resource::Stream(name) => {
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let page = ctx.stream.list_tags(&name, after.take(), None).await?;
                after = page.tags.last().map(|(k, _)| k.clone());
                all.extend(page.tags);
                if !page.has_more || after.is_none() {
                    break;
                }
            }
            all
        }
        Resource::Consumer(c) => ctx.stream.consumer_tags(&c).await?.into_iter().collect(),
    };
    Ok(json!({
        "Tags": tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
    }))
}

async fn list_tags(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let page = ctx
        .stream
        .list_tags(
            &name,
            str_field(req, "ExclusiveStartTagKey").map(str::to_owned),
            req.get("Limit")
                .and_then(Value::as_u64)
                .map(|l| l.min(u64::from(u32::MAX)) as u32),
        )
        .await?;
    Ok(json!({
        "Tags": page.tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
        "HasMoreTags": page.has_more,
    }))
}

/// A record of a PutRecord(s) request, read straight from the request's fields.
fn record_in(r: &Value) -> Result<PutRecord, KinesisError> {
    let data = r
        .get("Data")
        .and_then(Value::as_str)
        .ok_or_else(|| validation("data"))?;
    let data = B64
        .decode(data.as_bytes())
        .map_err(|_| err("SerializationException", "Data is not valid base64"))?;
    let partition_key = r
        .get("PartitionKey")
        .and_then(Value::as_str)
        .ok_or_else(|| validation("partitionKey"))?
        .to_owned();
    let explicit_hash_key = match r.get("ExplicitHashKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => {
            return Err(err(
                "SerializationException",
                "ExplicitHashKey must be a string",
            ));
        }
    };
    Ok(PutRecord {
        partition_key,
        explicit_hash_key,
        data: data.into(),
    })
}

async fn put_record(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let ordering = str_field(req, "SequenceNumberForOrdering").map(str::to_owned);
    let put = match ordering {
        Some(o) => {
            ctx.stream
                .put_record_ordered(&name, record_in(req)?, Some(o))
                .await?
        }
        None => ctx.stream.put_record(&name, record_in(req)?).await?,
    };
    Ok(json!({
        "ShardId": put.shard_id,
        "SequenceNumber": put.sequence_number,
        "EncryptionType": "NONE",
    }))
}

async fn put_records(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let raw = req
        .get("Records")
        .and_then(Value::as_array)
        .ok_or_else(|| validation("records"))?;
    if raw.is_empty() || raw.len() > MAX_PUT_RECORDS {
        return Err(err(
            "ValidationException",
            format!(
                "1 validation error detected: Value at 'records' failed to satisfy constraint: Member must have length between 1 and {MAX_PUT_RECORDS}"
            ),
        ));
    }
    let mut records = Vec::with_capacity(raw.len());
    let mut total = 0usize;
    for r in raw {
        let rec = record_in(r)?;
        total += rec.data.len() + rec.partition_key.len();
        records.push(rec);
    }
    if total > MAX_PUT_RECORDS_BYTES {
        return Err(err(
            "InvalidArgumentException",
            format!(
                "records total {total} bytes, more than the {MAX_PUT_RECORDS_BYTES} bytes a PutRecords request may carry"
            ),
        ));
    }
    // A record that breaks a rule fails the whole request, as in AWS; failures of the
    // backend are per record.
    for r in &records {
        sluice_stream::validate_record(r, usize::MAX)?;
    }
    let results = ctx.stream.put_records(&name, records).await?;
    let mut failed = 0;
    let out: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(p) => json!({"SequenceNumber": p.sequence_number, "ShardId": p.shard_id}),
            Err(e) => {
                failed += 1;
                let code = match e {
                    StreamError::ProvisionedThroughputExceeded(_) => {
                        "ProvisionedThroughputExceededException"
                    }
                    _ => "InternalFailure",
                };
                json!({"ErrorCode": code, "ErrorMessage": e.to_string()})
            }
        })
        .collect();
    Ok(json!({"FailedRecordCount": failed, "Records": out, "EncryptionType": "NONE"}))
}

/// Where an iterator-like position's parts are in a request: GetShardIterator's top-level
/// fields or SubscribeToShard's `StartingPosition` object.
pub(crate) struct IteratorFields {
    /// The position type's field, and its name in a validation error.
    pub(crate) kind: &'static str,
    pub(crate) kind_member: &'static str,
    /// As named in error messages (with any enclosing object's prefix).
    pub(crate) sequence_number: &'static str,
    pub(crate) timestamp: &'static str,
}

/// Reads a starting position (type, sequence number, timestamp) from `obj`. The sequence
/// number and timestamp fields are the last part of the names in `fields`.
pub(crate) fn iterator_spec(
    obj: &Value,
    fields: IteratorFields,
) -> Result<IteratorSpec, KinesisError> {
    let last = |name: &'static str| name.rsplit('.').next().unwrap_or(name);
    let kind = str_field(obj, fields.kind).ok_or_else(|| validation(fields.kind_member))?;
    let seq = || {
        str_field(obj, last(fields.sequence_number))
            .map(str::to_owned)
            .ok_or_else(|| {
                err(
                    "InvalidArgumentException",
                    format!("{} is required for {kind}", fields.sequence_number),
                )
            })
    };
    Ok(match kind {
        "TRIM_HORIZON" => IteratorSpec::TrimHorizon,
        "LATEST" => IteratorSpec::Latest,
        "AT_SEQUENCE_NUMBER" => IteratorSpec::AtSequenceNumber(seq()?),
        "AFTER_SEQUENCE_NUMBER" => IteratorSpec::AfterSequenceNumber(seq()?),
        "AT_TIMESTAMP" => {
            let ts = obj
                .get(last(fields.timestamp))
                .and_then(Value::as_f64)
                .ok_or_else(|| {
                    err(
                        "InvalidArgumentException",
                        format!("{} is required for AT_TIMESTAMP", fields.timestamp),
                    )
                })?;
            IteratorSpec::AtTimestamp((ts * 1000.0) as i64)
        }
        other => {
            return Err(err(
                "ValidationException",
                format!(
                    "1 validation error detected: Value '{other}' at '{}' failed to satisfy constraint: Member must satisfy enum value set: [AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER, TRIM_HORIZON, LATEST, AT_TIMESTAMP]",
                    fields.kind_member
                ),
            ));
        }
    })
}

async fn get_shard_iterator(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let shard = str_field(req, "ShardId").ok_or_else(|| validation("shardId"))?;
    let spec = iterator_spec(
        req,
        IteratorFields {
            kind: "ShardIteratorType",
            kind_member: "shardIteratorType",
            sequence_number: "StartingSequenceNumber",
            timestamp: "Timestamp",
        },
    )?;
    let it = ctx.stream.get_shard_iterator(&name, shard, spec).await?;
    Ok(json!({"ShardIterator": it}))
}

async fn get_records_output(
    ctx: &KinesisContext,
    req: &Value,
) -> Result<sluice_stream::GetRecordsOutput, KinesisError> {
    let it = str_field(req, "ShardIterator").ok_or_else(|| validation("shardIterator"))?;
    let limit = match req.get("Limit") {
        None | Some(Value::Null) => sluice_stream::MAX_GET_RECORDS,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=sluice_stream::MAX_GET_RECORDS as u64).contains(&n) => n as usize,
            _ => {
                return Err(err(
                    "ValidationException",
                    "1 validation error detected: Value at 'limit' failed to satisfy constraint: Member must have value between 1 and 10000",
                ));
            }
        },
    };
    Ok(ctx.stream.get_records(it, limit).await?)
}

/// GetRecords' response as a `Value` (for CBOR; JSON goes through [`get_records_json`]).
fn get_records_value(out: &sluice_stream::GetRecordsOutput) -> Value {
    let records: Vec<Value> = out.records.iter().map(record_value).collect();
    let mut v = json!({"Records": records, "MillisBehindLatest": out.millis_behind_latest});
    if let Some(next) = &out.next_iterator {
        v["NextShardIterator"] = json!(next);
    }
    if !out.child_shards.is_empty() {
        v["ChildShards"] = child_shards_value(out);
    }
    v
}

/// A record as GetRecords (and SubscribeToShard's events) return it.
pub(crate) fn record_value(r: &sluice_stream::Record) -> Value {
    json!({
        "SequenceNumber": r.sequence_number,
        "ApproximateArrivalTimestamp": epoch_secs(r.approximate_arrival_ms),
        "Data": B64.encode(&r.data),
        "PartitionKey": r.partition_key,
    })
}

pub(crate) fn child_shards_value(out: &sluice_stream::GetRecordsOutput) -> Value {
    json!(
        out.child_shards
            .iter()
            .map(|c| json!({
                "ShardId": c.shard_id,
                "ParentShards": c.parent_shards,
                "HashKeyRange": {
                    "StartingHashKey": c.starting_hash_key.to_string(),
                    "EndingHashKey": c.ending_hash_key.to_string(),
                },
            }))
            .collect::<Vec<_>>()
    )
}

/// GetRecords' JSON response, written directly: the same document as
/// `get_records_value(out).to_string()` (keys in the same, sorted order), without building
/// it as a tree first.
fn get_records_json(out: &sluice_stream::GetRecordsOutput) -> Result<Vec<u8>, KinesisError> {
    fn write(buf: &mut Vec<u8>, v: &impl serde::Serialize) -> Result<(), KinesisError> {
        serde_json::to_writer(buf, v).map_err(|e| {
            tracing::error!(error = %e, "cannot serialise GetRecords response");
            KinesisError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "InternalFailure",
                message: "internal failure".into(),
            }
        })
    }
    let data_len: usize = out.records.iter().map(|r| r.data.len() * 4 / 3 + 128).sum();
    let mut buf = Vec::with_capacity(data_len + 256);
    buf.push(b'{');
    if !out.child_shards.is_empty() {
        buf.extend_from_slice(b"\"ChildShards\":");
        write(&mut buf, &child_shards_value(out))?;
        buf.push(b',');
    }
    buf.extend_from_slice(b"\"MillisBehindLatest\":");
    write(&mut buf, &out.millis_behind_latest)?;
    if let Some(next) = &out.next_iterator {
        buf.extend_from_slice(b",\"NextShardIterator\":");
        write(&mut buf, next)?;
    }
    buf.extend_from_slice(b",\"Records\":[");
    let mut b64 = String::new();
    for (i, r) in out.records.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"{\"ApproximateArrivalTimestamp\":");
        write(&mut buf, &epoch_secs(r.approximate_arrival_ms))?;
        // Base64 needs no JSON escaping.
        buf.extend_from_slice(b",\"Data\":\"");
        b64.clear();
        B64.encode_string(&r.data, &mut b64);
        buf.extend_from_slice(b64.as_bytes());
        buf.extend_from_slice(b"\",\"PartitionKey\":");
        write(&mut buf, &r.partition_key)?;
        buf.extend_from_slice(b",\"SequenceNumber\":");
        write(&mut buf, &r.sequence_number)?;
        buf.push(b'}');
    }
    buf.extend_from_slice(b"]}");
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_positions_read_their_fields_and_name_them_in_errors() {
        let top = || IteratorFields {
            kind: "ShardIteratorType",
            kind_member: "shardIteratorType",
            sequence_number: "StartingSequenceNumber",
            timestamp: "Timestamp",
        };
        let nested = || IteratorFields {
            kind: "Type",
            kind_member: "startingPosition.type",
            sequence_number: "StartingPosition.SequenceNumber",
            timestamp: "StartingPosition.Timestamp",
        };
        let seq = "49590338271490256608559692538361571095921575989136588898";
        let spec = iterator_spec(
            &json!({"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": seq}),
            top(),
        )
        .expect("spec");
        assert!(matches!(spec, IteratorSpec::AfterSequenceNumber(s) if s == seq));
        let spec = iterator_spec(&json!({"Type": "AT_TIMESTAMP", "Timestamp": 1.5}), nested())
            .expect("spec");
        assert!(matches!(spec, IteratorSpec::AtTimestamp(1500)));
        let e =
            iterator_spec(&json!({"Type": "AT_SEQUENCE_NUMBER"}), nested()).expect_err("no seq");
        assert_eq!(
            (e.kind, e.message.as_str()),
            (
                "InvalidArgumentException",
                "StartingPosition.SequenceNumber is required for AT_SEQUENCE_NUMBER"
            )
        );
        let e = iterator_spec(&json!({"ShardIteratorType": "AT_TIMESTAMP"}), top())
            .expect_err("no timestamp");
        assert_eq!(e.message, "Timestamp is required for AT_TIMESTAMP");
        let e = iterator_spec(&json!({"Type": "SOMEWHERE"}), nested()).expect_err("bad type");
        assert_eq!(e.kind, "ValidationException");
        assert!(
            e.message.contains("at 'startingPosition.type'"),
            "{}",
            e.message
        );
    }

    #[test]
    fn get_records_json_is_the_value_document() {
        let rec = |seq: &str, key: &str, data: &[u8], ms: i64| sluice_stream::Record {
            sequence_number: seq.into(),
            partition_key: key.into(),
            data: data.to_vec().into(),
            approximate_arrival_ms: ms,
        };
        let mut out = sluice_stream::GetRecordsOutput {
            records: vec![
                rec(
                    "4960000000000000000001",
                    "k\"ey\\\u{1}é",
                    b"hello\0\xff",
                    1_700_000_000_123,
                ),
                rec("4960000000000000000002", "", b"", 0),
            ],
            next_iterator: Some("it\"er".into()),
            millis_behind_latest: 42,
            child_shards: Vec::new(),
        };
        for _ in 0..2 {
            let direct = get_records_json(&out).expect("json");
            assert_eq!(direct, get_records_value(&out).to_string().into_bytes());
            out.next_iterator = None;
            out.records.clear();
        }
        out.child_shards = vec![sluice_stream::ChildShard {
            shard_id: "shardId-000000000001".into(),
            parent_shards: vec!["shardId-000000000000".into()],
            starting_hash_key: 0,
            ending_hash_key: u128::MAX,
        }];
        let direct = get_records_json(&out).expect("json");
        assert_eq!(direct, get_records_value(&out).to_string().into_bytes());
    }
}
