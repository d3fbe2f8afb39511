//! Kinesis Data Streams' JSON 1.1 protocol (`Kinesis_20131202.*`) over the `Stream` part.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_stream::{
    IteratorSpec, MAX_PUT_RECORDS, PutRecord, ShardDesc, Stream, StreamDesc, StreamError,
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
}

impl KinesisContext {
    fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:stream/{name}",
            self.region, self.account_id
        )
    }
}

/// A Kinesis error: HTTP status, exception name and message.
#[derive(Debug)]
pub struct KinesisError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

fn err(kind: &'static str, message: impl Into<String>) -> KinesisError {
    KinesisError {
        status: StatusCode::BAD_REQUEST,
        kind,
        message: message.into(),
    }
}

fn validation(field: &str) -> KinesisError {
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

type OpResult = Result<Value, KinesisError>;

pub async fn handle(ctx: &KinesisContext, op: &str, body: &[u8]) -> Response {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) | Err(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "SerializationException",
                "request body is not a JSON object",
            );
        }
    };
    let result = match op {
        "CreateStream" => create_stream(ctx, &req).await,
        "DeleteStream" => delete_stream(ctx, &req).await,
        "DescribeStream" => describe_stream(ctx, &req).await,
        "DescribeStreamSummary" => describe_stream_summary(ctx, &req).await,
        "ListStreams" => list_streams(ctx, &req).await,
        "ListShards" => list_shards(ctx, &req).await,
        "PutRecord" => put_record(ctx, &req).await,
        "PutRecords" => put_records(ctx, &req).await,
        "GetShardIterator" => get_shard_iterator(ctx, &req).await,
        "GetRecords" => get_records(ctx, &req).await,
        "DescribeLimits" => Ok(json!({
            "ShardLimit": 10000,
            "OpenShardCount": 0,
            "OnDemandStreamCount": 0,
            "OnDemandStreamCountLimit": 50,
        })),
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                &format!("operation {op} is not supported by sluice's Kinesis endpoint"),
            );
        }
    };
    match result {
        Ok(v) => json_ok(v),
        Err(e) => json_error(e.status, e.kind, &e.message),
    }
}

fn str_field<'a>(req: &'a Value, name: &str) -> Option<&'a str> {
    req.get(name).and_then(Value::as_str)
}

/// The stream a request names, by `StreamName` or `StreamARN`.
fn stream_name(ctx: &KinesisContext, req: &Value) -> Result<String, KinesisError> {
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

fn epoch_secs(ms: i64) -> f64 {
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

fn open_shards(d: &StreamDesc) -> usize {
    d.shards
        .iter()
        .filter(|s| s.ending_sequence_number.is_none())
        .count()
}

async fn create_stream(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = str_field(req, "StreamName").ok_or_else(|| validation("streamName"))?;
    let on_demand = req
        .pointer("/StreamModeDetails/StreamMode")
        .and_then(Value::as_str)
        == Some("ON_DEMAND");
    let shards = match req.get("ShardCount").and_then(Value::as_u64) {
        Some(n) if n >= 1 => n,
        Some(_) => {
            return Err(err(
                "ValidationException",
                "1 validation error detected: Value at 'shardCount' failed to satisfy constraint: Member must have value greater than or equal to 1",
            ));
        }
        // On-demand streams start with 4 shards, as AWS's do.
        None if on_demand => 4,
        None => return Err(validation("shardCount")),
    };
    let shards = u32::try_from(shards)
        .map_err(|_| err("LimitExceededException", "shard count exceeds the limit"))?;
    ctx.stream.create_stream(name, shards).await?;
    Ok(json!({}))
}

async fn delete_stream(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    ctx.stream.delete_stream(&name).await?;
    Ok(json!({}))
}

async fn describe_stream(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let d = ctx.stream.describe_stream(&name).await?;
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
        "StreamModeDetails": {"StreamMode": "PROVISIONED"},
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
    let d = ctx.stream.describe_stream(&name).await?;
    Ok(json!({"StreamDescriptionSummary": {
        "StreamName": d.name,
        "StreamARN": ctx.arn(&d.name),
        "StreamStatus": d.status,
        "StreamModeDetails": {"StreamMode": "PROVISIONED"},
        "RetentionPeriodHours": d.retention_hours,
        "StreamCreationTimestamp": epoch_secs(d.created_ms),
        "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
        "EncryptionType": "NONE",
        "OpenShardCount": open_shards(&d),
        "ConsumerCount": 0,
    }}))
}

async fn list_streams(ctx: &KinesisContext, req: &Value) -> OpResult {
    let names = ctx.stream.list_streams().await?;
    let limit = req
        .get("Limit")
        .and_then(Value::as_u64)
        .unwrap_or(100)
        .clamp(1, 10_000) as usize;
    let start = str_field(req, "ExclusiveStartStreamName")
        .or_else(|| str_field(req, "NextToken"))
        .map(str::to_owned);
    let after: Vec<String> = names
        .into_iter()
        .filter(|n| start.as_deref().is_none_or(|s| n.as_str() > s))
        .collect();
    let page: Vec<&String> = after.iter().take(limit).collect();
    let has_more = after.len() > limit;
    let mut summaries = Vec::new();
    for n in &page {
        if let Ok(d) = ctx.stream.describe_stream(n).await {
            summaries.push(json!({
                "StreamName": d.name,
                "StreamARN": ctx.arn(&d.name),
                "StreamStatus": d.status,
                "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                "StreamCreationTimestamp": epoch_secs(d.created_ms),
            }));
        }
    }
    let mut out = json!({
        "StreamNames": page,
        "HasMoreStreams": has_more,
        "StreamSummaries": summaries,
    });
    if has_more && let Some(last) = page.last() {
        out["NextToken"] = json!(last);
    }
    Ok(out)
}

async fn list_shards(ctx: &KinesisContext, req: &Value) -> OpResult {
    // NextToken carries "<stream>/<last shard id>" so that it alone identifies the page.
    let (name, start) = match str_field(req, "NextToken") {
        Some(token) => {
            let (n, s) = token
                .rsplit_once('/')
                .ok_or_else(|| err("InvalidArgumentException", "invalid NextToken"))?;
            (n.to_owned(), Some(s.to_owned()))
        }
        None => (
            stream_name(ctx, req)?,
            str_field(req, "ExclusiveStartShardId").map(str::to_owned),
        ),
    };
    let d = ctx.stream.describe_stream(&name).await?;
    let limit = req
        .get("MaxResults")
        .and_then(Value::as_u64)
        .unwrap_or(1000)
        .clamp(1, 10_000) as usize;
    let shards: Vec<&ShardDesc> = d
        .shards
        .iter()
        .filter(|s| start.as_deref().is_none_or(|st| s.shard_id.as_str() > st))
        .collect();
    let page: Vec<&&ShardDesc> = shards.iter().take(limit).collect();
    let mut out = json!({"Shards": page.iter().map(|s| shard_json(s)).collect::<Vec<_>>()});
    if shards.len() > limit
        && let Some(last) = page.last()
    {
        out["NextToken"] = json!(format!("{name}/{}", last.shard_id));
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordIn {
    data: Option<String>,
    partition_key: Option<String>,
    explicit_hash_key: Option<String>,
}

fn record_in(r: RecordIn) -> Result<PutRecord, KinesisError> {
    let data = r.data.ok_or_else(|| validation("data"))?;
    let data = B64
        .decode(data.as_bytes())
        .map_err(|_| err("SerializationException", "Data is not valid base64"))?;
    let partition_key = r.partition_key.ok_or_else(|| validation("partitionKey"))?;
    Ok(PutRecord {
        partition_key,
        explicit_hash_key: r.explicit_hash_key,
        data: data.into(),
    })
}

async fn put_record(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let rec: RecordIn = serde_json::from_value(req.clone())
        .map_err(|e| err("SerializationException", e.to_string()))?;
    let put = ctx.stream.put_record(&name, record_in(rec)?).await?;
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
        let r: RecordIn = serde_json::from_value(r.clone())
            .map_err(|e| err("SerializationException", e.to_string()))?;
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

async fn get_shard_iterator(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let shard = str_field(req, "ShardId").ok_or_else(|| validation("shardId"))?;
    let kind =
        str_field(req, "ShardIteratorType").ok_or_else(|| validation("shardIteratorType"))?;
    let seq = || {
        str_field(req, "StartingSequenceNumber")
            .map(str::to_owned)
            .ok_or_else(|| {
                err(
                    "InvalidArgumentException",
                    format!("StartingSequenceNumber is required for {kind}"),
                )
            })
    };
    let spec = match kind {
        "TRIM_HORIZON" => IteratorSpec::TrimHorizon,
        "LATEST" => IteratorSpec::Latest,
        "AT_SEQUENCE_NUMBER" => IteratorSpec::AtSequenceNumber(seq()?),
        "AFTER_SEQUENCE_NUMBER" => IteratorSpec::AfterSequenceNumber(seq()?),
        "AT_TIMESTAMP" => {
            let ts = req
                .get("Timestamp")
                .and_then(Value::as_f64)
                .ok_or_else(|| {
                    err(
                        "InvalidArgumentException",
                        "Timestamp is required for AT_TIMESTAMP",
                    )
                })?;
            IteratorSpec::AtTimestamp((ts * 1000.0) as i64)
        }
        other => {
            return Err(err(
                "ValidationException",
                format!(
                    "1 validation error detected: Value '{other}' at 'shardIteratorType' failed to satisfy constraint: Member must satisfy enum value set: [AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER, TRIM_HORIZON, LATEST, AT_TIMESTAMP]"
                ),
            ));
        }
    };
    let it = ctx.stream.get_shard_iterator(&name, shard, spec).await?;
    Ok(json!({"ShardIterator": it}))
}

async fn get_records(ctx: &KinesisContext, req: &Value) -> OpResult {
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
    let out = ctx.stream.get_records(it, limit).await?;
    let records: Vec<Value> = out
        .records
        .iter()
        .map(|r| {
            json!({
                "SequenceNumber": r.sequence_number,
                "ApproximateArrivalTimestamp": epoch_secs(r.approximate_arrival_ms),
                "Data": B64.encode(&r.data),
                "PartitionKey": r.partition_key,
            })
        })
        .collect();
    let mut v = json!({"Records": records, "MillisBehindLatest": out.millis_behind_latest});
    if let Some(next) = out.next_iterator {
        v["NextShardIterator"] = json!(next);
    }
    Ok(v)
}
