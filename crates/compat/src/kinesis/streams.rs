//! The stream operations of Kinesis: streams, shards, tags, records, iterators.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sluice_stream::{
    CreateStreamOptions, ListShardsInput, ListStreamsInput, MAX_PUT_RECORDS, PutRecord, ShardDesc,
    ShardFilter, StreamError, StreamMode,
};

use super::common::{
    IteratorFields, KinesisContext, KinesisError, OpResult, child_shards_value, epoch_secs, err,
    internal_failure, iterator_spec, record_value, str_field, stream_name, stream_of_arn, tags_in,
    too_large, validation,
};
use super::config;

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

/// CreateStream's `MaxRecordSizeInKiB` in bytes. A size whose byte count does not fit a
/// `usize` is refused here: multiplied unchecked it would wrap (to an in-range size, for
/// some values) instead of being refused by the stream's range check.
fn max_record_bytes(req: &Value) -> Result<Option<usize>, KinesisError> {
    let Some(kib) = req.get("MaxRecordSizeInKiB").and_then(Value::as_u64) else {
        return Ok(None);
    };
    usize::try_from(kib)
        .ok()
        .and_then(|k| k.checked_mul(1024))
        .map(Some)
        .ok_or_else(|| err("InvalidArgumentException", "record size out of range"))
}

pub(super) async fn create_stream(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = str_field(req, "StreamName").ok_or_else(|| validation("streamName"))?;
    sluice_stream::validate_stream_name(name)?;
    let name = &ctx.stored(name);
    let on_demand = req
        .pointer("/StreamModeDetails/StreamMode")
        .and_then(Value::as_str)
        == Some("ON_DEMAND");
    if on_demand && req.get("ShardCount").is_some_and(|c| !c.is_null()) {
        return Err(err(
            "InvalidArgumentException",
            "ShardCount is not taken for a stream in ON_DEMAND mode: it starts with 4 shards",
        ));
    }
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
    let max_record_bytes = max_record_bytes(req)?;
    super::common::check_account_limits(
        ctx,
        u64::from(shard_count.unwrap_or(sluice_stream::DEFAULT_ON_DEMAND_SHARDS)),
        on_demand,
    )
    .await?;
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

pub(super) async fn delete_stream(ctx: &KinesisContext, req: &Value) -> OpResult {
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

pub(super) async fn describe_stream(ctx: &KinesisContext, req: &Value) -> OpResult {
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
    let mut v = json!({
        "StreamName": ctx.shown(&d.name),
        "StreamARN": ctx.arn(&d.name),
        "StreamStatus": d.status,
        "StreamModeDetails": {"StreamMode": mode.as_str()},
        "Shards": shards.iter().take(limit).map(|s| shard_json(s)).collect::<Vec<_>>(),
        "HasMoreShards": has_more,
        "RetentionPeriodHours": d.retention_hours,
        "StreamCreationTimestamp": epoch_secs(d.created_ms),
        "EnhancedMonitoring": [{"ShardLevelMetrics": config::monitoring(ctx, &name).await?}],
    });
    config::describe_encryption(ctx, &name, &mut v).await?;
    Ok(json!({ "StreamDescription": v }))
}

pub(super) async fn describe_stream_summary(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let d = ctx.stream.describe_stream_summary(&name).await?;
    let mut v = json!({
        "StreamName": ctx.shown(&d.name),
        "StreamARN": ctx.arn(&d.name),
        "StreamStatus": d.status,
        "StreamModeDetails": {"StreamMode": d.mode.as_str()},
        "RetentionPeriodHours": d.retention_hours,
        "StreamCreationTimestamp": epoch_secs(d.created_ms),
        "EnhancedMonitoring": [{"ShardLevelMetrics": config::monitoring(ctx, &name).await?}],
        "OpenShardCount": d.open_shard_count,
        "ConsumerCount": d.consumer_count,
        "MaxRecordSizeInKiB": d.max_record_bytes / 1024,
    });
    config::describe_encryption(ctx, &name, &mut v).await?;
    Ok(json!({ "StreamDescriptionSummary": v }))
}

pub(super) async fn describe_limits(ctx: &KinesisContext) -> OpResult {
    let (open, on_demand) = super::common::account_usage(ctx).await?;
    Ok(json!({
        "ShardLimit": super::common::ACCOUNT_SHARD_LIMIT,
        "OpenShardCount": open,
        "OnDemandStreamCount": on_demand,
        "OnDemandStreamCountLimit": super::common::ON_DEMAND_STREAM_LIMIT,
    }))
}

pub(super) async fn list_streams(ctx: &KinesisContext, req: &Value) -> OpResult {
    let page = ctx
        .stream
        .list_streams_page(ListStreamsInput {
            exclusive_start_stream_name: str_field(req, "ExclusiveStartStreamName")
                .map(|n| ctx.stored(n)),
            next_token: str_field(req, "NextToken").map(str::to_owned),
            limit: req
                .get("Limit")
                .and_then(Value::as_u64)
                .map(|l| l.min(u64::from(u32::MAX)) as u32),
        })
        .await?;
    // A page holds every stream; this region's are answered (so a page may hold fewer
    // than `Limit`, and paging goes on over the others).
    let mut names = Vec::new();
    let mut summaries = Vec::new();
    for n in &page.names {
        let Some(visible) = ctx.visible(n) else {
            continue;
        };
        names.push(visible.to_owned());
        if let Ok(d) = ctx.stream.describe_stream_summary(n).await {
            summaries.push(json!({
                "StreamName": visible,
                "StreamARN": ctx.arn(&d.name),
                "StreamStatus": d.status,
                "StreamModeDetails": {"StreamMode": d.mode.as_str()},
                "StreamCreationTimestamp": epoch_secs(d.created_ms),
            }));
        }
    }
    let mut out = json!({
        "StreamNames": names,
        "HasMoreStreams": page.has_more,
        "StreamSummaries": summaries,
    });
    if let Some(t) = page.next_token {
        out["NextToken"] = json!(t);
    }
    Ok(out)
}

pub(super) async fn list_shards(ctx: &KinesisContext, req: &Value) -> OpResult {
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

pub(super) async fn split_shard(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let shard = str_field(req, "ShardToSplit").ok_or_else(|| validation("shardToSplit"))?;
    let key =
        str_field(req, "NewStartingHashKey").ok_or_else(|| validation("newStartingHashKey"))?;
    let key = sluice_stream::parse_hash_key(key)?;
    super::common::check_account_limits(ctx, 1, false).await?;
    ctx.stream.split_shard(&name, shard, key).await?;
    Ok(json!({}))
}

pub(super) async fn merge_shards(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let shard = str_field(req, "ShardToMerge").ok_or_else(|| validation("shardToMerge"))?;
    let adjacent =
        str_field(req, "AdjacentShardToMerge").ok_or_else(|| validation("adjacentShardToMerge"))?;
    ctx.stream.merge_shards(&name, shard, adjacent).await?;
    Ok(json!({}))
}

pub(super) async fn update_shard_count(ctx: &KinesisContext, req: &Value) -> OpResult {
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
    // On-demand streams scale themselves on AWS; sluice does not scale them by hand either.
    let summary = ctx.stream.describe_stream_summary(&name).await?;
    super::common::check_account_limits(
        ctx,
        u64::from(target.saturating_sub(summary.open_shard_count)),
        false,
    )
    .await?;
    if summary.mode == StreamMode::OnDemand {
        return Err(err(
            "ValidationException",
            format!(
                "Request is invalid. Stream {name} under account {} is in On-Demand mode.",
                ctx.account_id
            ),
        ));
    }
    let out = ctx.stream.update_shard_count(&name, target).await?;
    Ok(json!({
        "StreamName": ctx.shown(&name),
        "StreamARN": ctx.arn(&name),
        "CurrentShardCount": out.current_shard_count,
        "TargetShardCount": out.target_shard_count,
    }))
}

pub(super) async fn retention(ctx: &KinesisContext, req: &Value, increase: bool) -> OpResult {
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

pub(super) async fn update_max_record_size(ctx: &KinesisContext, req: &Value) -> OpResult {
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

pub(super) async fn add_tags(ctx: &KinesisContext, req: &Value) -> OpResult {
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

pub(super) async fn remove_tags(ctx: &KinesisContext, req: &Value) -> OpResult {
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
        return super::efo::parse_consumer_arn(ctx, arn).map(Resource::Consumer);
    }
    stream_of_arn(ctx, arn).map(Resource::Stream)
}

/// TagResource: a stream's tags as AddTagsToStream, or a consumer's.
pub(super) async fn tag_resource(ctx: &KinesisContext, req: &Value) -> OpResult {
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

pub(super) async fn untag_resource(ctx: &KinesisContext, req: &Value) -> OpResult {
    let keys = tag_keys_in(req)?;
    match resource(ctx, req)? {
        Resource::Stream(name) => ctx.stream.remove_tags(&name, keys).await?,
        Resource::Consumer(c) => ctx.stream.remove_consumer_tags(&c, keys).await?,
    }
    Ok(json!({}))
}

/// ListTagsForResource: every tag, in key order (no pagination in this call).
pub(super) async fn list_tags_for_resource(ctx: &KinesisContext, req: &Value) -> OpResult {
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

pub(super) async fn list_tags(ctx: &KinesisContext, req: &Value) -> OpResult {
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

pub(super) async fn put_record(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let ordering = str_field(req, "SequenceNumberForOrdering").map(str::to_owned);
    let put = match ordering {
        Some(o) => {
            ctx.stream
                .put_record_ordered(&name, record_in(req)?, Some(o))
                .await
        }
        None => ctx.stream.put_record(&name, record_in(req)?).await,
    }
    .map_err(|e| match e {
        StreamError::RecordTooLarge { max, .. } => too_large("data", max),
        other => other.into(),
    })?;
    Ok(json!({
        "ShardId": put.shard_id,
        "SequenceNumber": put.sequence_number,
        "EncryptionType": config::encryption_type(ctx, &name).await,
    }))
}

pub(super) async fn put_records(ctx: &KinesisContext, req: &Value) -> OpResult {
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
    let records = raw.iter().map(record_in).collect::<Result<Vec<_>, _>>()?;
    // A record that breaks a rule (its partition key, hash key, size), or a request over
    // 5 MiB, fails the whole request, as in AWS: the stream refuses it before writing any.
    // Failures of the backend (throughput) are per record.
    let results = ctx.stream.put_records(&name, records).await?;
    let mut failed = 0;
    let out: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(p) => json!({"SequenceNumber": p.sequence_number, "ShardId": p.shard_id}),
            Err(e) => {
                failed += 1;
                let (code, message) = match e {
                    StreamError::ProvisionedThroughputExceeded(m) => {
                        ("ProvisionedThroughputExceededException", m)
                    }
                    other => {
                        tracing::error!(error = %other, "a record of a PutRecords request failed");
                        ("InternalFailure", "Internal service failure.".to_owned())
                    }
                };
                json!({"ErrorCode": code, "ErrorMessage": message})
            }
        })
        .collect();
    Ok(json!({
        "FailedRecordCount": failed,
        "Records": out,
        "EncryptionType": config::encryption_type(ctx, &name).await,
    }))
}

pub(super) async fn get_shard_iterator(ctx: &KinesisContext, req: &Value) -> OpResult {
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

pub(super) async fn get_records_output(
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
pub(super) fn get_records_value(out: &sluice_stream::GetRecordsOutput) -> Value {
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

/// GetRecords' JSON response, written directly: the same document as
/// `get_records_value(out).to_string()` (keys in the same, sorted order), without building
/// it as a tree first.
pub(super) fn get_records_json(
    out: &sluice_stream::GetRecordsOutput,
) -> Result<Vec<u8>, KinesisError> {
    fn write(buf: &mut Vec<u8>, v: &impl serde::Serialize) -> Result<(), KinesisError> {
        serde_json::to_writer(buf, v).map_err(|e| {
            tracing::error!(error = %e, "cannot serialise GetRecords response");
            internal_failure()
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

    /// A `MaxRecordSizeInKiB` whose byte count overflows is refused, not wrapped: 2^54 + 1024
    /// KiB used to become exactly 1 MiB (or panic with overflow checks).
    #[test]
    fn an_overflowing_record_size_is_refused() {
        let kib = (1u64 << 54) + 1024;
        let e = max_record_bytes(&json!({"StreamName": "s", "MaxRecordSizeInKiB": kib}))
            .expect_err("refused");
        assert_eq!(e.kind, "InvalidArgumentException");
        let e = max_record_bytes(&json!({"MaxRecordSizeInKiB": u64::MAX})).expect_err("refused");
        assert_eq!(e.kind, "InvalidArgumentException");
        assert_eq!(
            max_record_bytes(&json!({"MaxRecordSizeInKiB": 2048})).expect("ok"),
            Some(2 << 20)
        );
        assert_eq!(max_record_bytes(&json!({})).expect("ok"), None);
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
