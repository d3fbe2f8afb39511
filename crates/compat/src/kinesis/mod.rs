//! Kinesis Data Streams' JSON 1.1 protocol (`Kinesis_20131202.*`) over the `Stream` part.
//!
//! Modules, each depending only on those after it: this one decodes a request, authorizes
//! and dispatches it; `streams` (stream, shard, tag and record operations) uses `config`
//! (capacity mode, encryption, enhanced monitoring, resource policies and the decision of
//! every request with them), which uses `efo` (enhanced fan-out: consumers and
//! SubscribeToShard) for consumer ARNs; all use `common` (context, errors, encodings,
//! request fields, record shapes), which uses `leases` (one subscription per consumer and
//! shard).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::json11::{json_error, json_ok};

mod common;
mod config;
mod efo;
mod leases;
mod streams;

pub use common::{Encoding, KinesisContext, KinesisError, SERVICE, SettingsCache};
pub use leases::{
    HEARTBEAT, SUBSCRIPTION_DURATION, SubscribeOptions, Subscriptions, TAKEOVER_AFTER,
};

use common::{OpResult, err, str_field};

use crate::authz::Principal;

pub async fn handle(
    ctx: &KinesisContext,
    op: &str,
    body: &[u8],
    enc: Encoding,
    principal: &Principal,
) -> Response {
    let req = match enc {
        Encoding::Json => serde_json::from_slice::<Value>(body).ok(),
        Encoding::Cbor => crate::cbor::decode(body),
    };
    let denied = match &req {
        Some(r @ Value::Object(_)) => config::authorize(ctx, principal, op, &resource(ctx, op, r))
            .await
            .err(),
        _ => None,
    };
    let result = match req {
        _ if let Some(e) = denied => Err(e),
        // GetRecords in JSON is written straight to the body: its records (base64 data)
        // are most of what the edge serialises, and a `Value` tree of them costs an
        // allocation per field plus escaping on the way out.
        Some(req @ Value::Object(_)) if enc == Encoding::Json && op == "GetRecords" => {
            return match streams::get_records_output(ctx, &req)
                .await
                .and_then(|out| streams::get_records_json(&out))
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
            match efo::subscribe_to_shard(ctx, &req, enc).await {
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

/// The resource a Kinesis operation is authorized on (see [`crate::authz`]): the stream (or
/// consumer) it names, or `*` when it names none that can be read.
fn resource(ctx: &KinesisContext, op: &str, req: &Value) -> String {
    let by_token = |field: &str| {
        str_field(req, field)
            .and_then(|t| ctx.stream.token_stream(t))
            .map(|name| ctx.arn(&name))
    };
    let stream = || common::stream_name(ctx, req).ok().map(|n| ctx.arn(&n));
    let found = match op {
        "ListStreams" | "DescribeLimits" => None,
        "GetRecords" => by_token("ShardIterator"),
        "TagResource"
        | "UntagResource"
        | "ListTagsForResource"
        | "PutResourcePolicy"
        | "GetResourcePolicy"
        | "DeleteResourcePolicy" => str_field(req, "ResourceARN").map(str::to_owned),
        "SubscribeToShard" => str_field(req, "ConsumerARN").map(str::to_owned),
        "DescribeStreamConsumer" | "DeregisterStreamConsumer" => {
            match (
                str_field(req, "ConsumerARN"),
                str_field(req, "StreamARN"),
                str_field(req, "ConsumerName"),
            ) {
                (Some(arn), _, _) => Some(arn.to_owned()),
                // By name, without its creation time: any consumer of that name.
                (None, Some(stream), Some(name)) => Some(format!("{stream}/consumer/{name}:*")),
                _ => None,
            }
        }
        "ListShards" | "ListStreamConsumers" => stream().or_else(|| by_token("NextToken")),
        _ => stream(),
    };
    found.unwrap_or_else(|| "*".to_owned())
}

/// One Kinesis operation on a decoded request.
async fn call(ctx: &KinesisContext, op: &str, req: &Value) -> OpResult {
    match op {
        "CreateStream" => streams::create_stream(ctx, req).await,
        "DeleteStream" => streams::delete_stream(ctx, req).await,
        "DescribeStream" => streams::describe_stream(ctx, req).await,
        "DescribeStreamSummary" => streams::describe_stream_summary(ctx, req).await,
        "ListStreams" => streams::list_streams(ctx, req).await,
        "ListShards" => streams::list_shards(ctx, req).await,
        "PutRecord" => streams::put_record(ctx, req).await,
        "PutRecords" => streams::put_records(ctx, req).await,
        "GetShardIterator" => streams::get_shard_iterator(ctx, req).await,
        "GetRecords" => Ok(streams::get_records_value(
            &streams::get_records_output(ctx, req).await?,
        )),
        "SplitShard" => streams::split_shard(ctx, req).await,
        "MergeShards" => streams::merge_shards(ctx, req).await,
        "UpdateShardCount" => streams::update_shard_count(ctx, req).await,
        "IncreaseStreamRetentionPeriod" => streams::retention(ctx, req, true).await,
        "DecreaseStreamRetentionPeriod" => streams::retention(ctx, req, false).await,
        "UpdateMaxRecordSize" => streams::update_max_record_size(ctx, req).await,
        "AddTagsToStream" => streams::add_tags(ctx, req).await,
        "RemoveTagsFromStream" => streams::remove_tags(ctx, req).await,
        "ListTagsForStream" => streams::list_tags(ctx, req).await,
        "TagResource" => streams::tag_resource(ctx, req).await,
        "UntagResource" => streams::untag_resource(ctx, req).await,
        "ListTagsForResource" => streams::list_tags_for_resource(ctx, req).await,
        "DescribeLimits" => streams::describe_limits(ctx).await,
        "UpdateStreamMode" => config::update_stream_mode(ctx, req).await,
        "StartStreamEncryption" => config::start_encryption(ctx, req).await,
        "StopStreamEncryption" => config::stop_encryption(ctx, req).await,
        "EnableEnhancedMonitoring" => config::enhanced_monitoring(ctx, req, true).await,
        "DisableEnhancedMonitoring" => config::enhanced_monitoring(ctx, req, false).await,
        "PutResourcePolicy" => config::put_resource_policy(ctx, req).await,
        "GetResourcePolicy" => config::get_resource_policy(ctx, req).await,
        "DeleteResourcePolicy" => config::delete_resource_policy(ctx, req).await,
        "RegisterStreamConsumer" => efo::register(ctx, req).await,
        "DescribeStreamConsumer" => efo::describe(ctx, req).await,
        "ListStreamConsumers" => efo::list(ctx, req).await,
        "DeregisterStreamConsumer" => efo::deregister(ctx, req).await,
        _ => Err(err(
            "UnknownOperationException",
            format!("operation {op} is not supported by sluice's Kinesis endpoint"),
        )),
    }
}
