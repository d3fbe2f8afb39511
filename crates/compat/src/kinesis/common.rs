//! What the Kinesis operations share: the context they run in (the stream, ARNs, the
//! running subscriptions), errors and the protocol's two encodings, the fields of a request,
//! and records as responses show them. Depends on no other module of `kinesis` but
//! `leases`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sluice_stream::{IteratorSpec, Stream, StreamError, StreamMode};

use sluice_policy::resource::ResourcePolicy;

use super::leases::Subscriptions;
use crate::ttl_cache::TtlCache;

pub const SERVICE: &str = "Kinesis_20131202";

/// Where ARNs point.
#[derive(Clone)]
pub struct KinesisContext {
    pub stream: Arc<dyn Stream>,
    pub region: String,
    pub account_id: String,
    /// SubscribeToShard's running subscriptions (and their timings).
    pub subscriptions: Subscriptions,
    /// What the edge remembers of streams' settings.
    pub settings: Arc<SettingsCache>,
    /// The region this context serves when it is not the server's own (see
    /// [`KinesisContext::in_region`]); `None`: the server's region.
    pub foreign_region: Option<String>,
}

/// How long a stream's resource policy or encryption is remembered: a change made through
/// another process applies here within this time (through this one, at once).
const SETTINGS_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// The settings read on every request (resource policies, by the ARN they are attached
/// to; encryption, by stream name), remembered for [`SETTINGS_TTL`].
pub struct SettingsCache {
    pub(crate) policies: TtlCache<Option<Arc<ResourcePolicy>>>,
    pub(crate) encryption: TtlCache<Option<String>>,
}

impl Default for SettingsCache {
    fn default() -> Self {
        SettingsCache {
            policies: TtlCache::new(SETTINGS_TTL, 10_000),
            encryption: TtlCache::new(SETTINGS_TTL, 10_000),
        }
    }
}

/// Streams are regional, as on AWS: a stream created by a request signed for another
/// region than the server's is stored as `NAME@REGION` (a character stream names cannot
/// hold), and only requests signed for that region see it, by its name. The server's own
/// region keeps plain names, so nothing else (mappings, the upload pipeline) changes.
impl KinesisContext {
    /// This context as a request signed for `region` sees it.
    pub fn in_region(&self, region: &str) -> KinesisContext {
        let mut ctx = self.clone();
        if region != self.region {
            ctx.foreign_region = Some(region.to_owned());
            ctx.region = region.to_owned();
        }
        ctx
    }

    /// The stored name of the stream a request names `name`.
    pub(crate) fn stored(&self, name: &str) -> String {
        match &self.foreign_region {
            Some(r) => format!("{name}@{r}"),
            None => name.to_owned(),
        }
    }

    /// The name a request knows a stored stream by; `None`: the stream is another region's.
    pub(crate) fn visible<'a>(&self, stored: &'a str) -> Option<&'a str> {
        match &self.foreign_region {
            Some(r) => stored
                .strip_suffix(r.as_str())
                .and_then(|n| n.strip_suffix('@')),
            None => (!stored.contains('@')).then_some(stored),
        }
    }

    /// [`visible`](Self::visible), for answers: a stream of another region (which a
    /// request cannot reach) keeps its stored name.
    pub(crate) fn shown<'a>(&self, stored: &'a str) -> &'a str {
        self.visible(stored).unwrap_or(stored)
    }

    /// The ARN of a stored stream, in this context's region.
    pub(crate) fn arn(&self, stored: &str) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:stream/{}",
            self.region,
            self.account_id,
            self.shown(stored)
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

/// A failure of sluice's own, logged where it happened; clients learn no more than this.
pub(crate) fn internal_failure() -> KinesisError {
    KinesisError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "InternalFailure",
        message: "internal failure".into(),
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

/// A record's data over the stream's limit: Kinesis' validation message for `field`.
pub(crate) fn too_large(field: &str, max: usize) -> KinesisError {
    err(
        "ValidationException",
        format!(
            "1 validation error detected: Value at '{field}' failed to satisfy constraint: Member must have length less than or equal to {max}"
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
            // PutRecords' wording; PutRecord names its field itself (`streams::put_record`).
            StreamError::RecordTooLarge { index, max, .. } => {
                too_large(&format!("records.{}.member.data", index + 1), max)
            }
            StreamError::Meta(m) => match crate::json11::unavailable(&m) {
                Some(message) => KinesisError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: "ServiceUnavailable",
                    message,
                },
                None => {
                    tracing::error!(error = %m, "kinesis request failed");
                    internal_failure()
                }
            },
            StreamError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "kinesis request failed: record engine unavailable");
                KinesisError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: "ServiceUnavailable",
                    message: "the service is unavailable; try again later".into(),
                }
            }
            StreamError::Backend(detail) => {
                tracing::error!(error = %detail, "kinesis request failed");
                internal_failure()
            }
        }
    }
}

/// The account's open shards, across its streams (DescribeLimits' `ShardLimit`).
pub(crate) const ACCOUNT_SHARD_LIMIT: u64 = 10_000;
/// The account's on-demand streams (DescribeLimits' `OnDemandStreamCountLimit`).
pub(crate) const ON_DEMAND_STREAM_LIMIT: u64 = 50;

/// The account's open shards and on-demand streams, counted now.
pub(crate) async fn account_usage(ctx: &KinesisContext) -> Result<(u64, u64), KinesisError> {
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
    Ok((open, on_demand))
}

/// Refuses a change that would take the account past its shard limit (`more` shards
/// opened) or its on-demand stream limit, with Kinesis' messages. Counted before the
/// change, not with it: two changes racing may pass the limit together (the limit guards
/// against runaway scripts, not a budget).
pub(crate) async fn check_account_limits(
    ctx: &KinesisContext,
    more: u64,
    new_on_demand: bool,
) -> Result<(), KinesisError> {
    let (open, on_demand) = account_usage(ctx).await?;
    let (account, region) = (&ctx.account_id, &ctx.region);
    if more > 0 && open + more > ACCOUNT_SHARD_LIMIT {
        return Err(err(
            "LimitExceededException",
            format!(
                "This request would exceed the shard limit for the account {account} in {region}. Current shard count for the account: {open}. Limit: {ACCOUNT_SHARD_LIMIT}. Number of additional shards that would have resulted from this request: {more}. Refer to the AWS Service Limits page (http://docs.aws.amazon.com/general/latest/gr/aws_service_limits.html) for current limits and how to request higher limits."
            ),
        ));
    }
    if new_on_demand && on_demand >= ON_DEMAND_STREAM_LIMIT {
        return Err(err(
            "LimitExceededException",
            format!(
                "This request would exceed the limit on the number of On-Demand streams for the account {account} in {region}. Current On-Demand streams count: {on_demand}. Limit: {ON_DEMAND_STREAM_LIMIT}."
            ),
        ));
    }
    Ok(())
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

pub(crate) fn str_field<'a>(req: &'a Value, name: &str) -> Option<&'a str> {
    req.get(name).and_then(Value::as_str)
}

/// The stream a request names, by `StreamName` or `StreamARN`.
pub(crate) fn stream_name(ctx: &KinesisContext, req: &Value) -> Result<String, KinesisError> {
    if let Some(name) = str_field(req, "StreamName") {
        sluice_stream::validate_stream_name(name)?;
        return Ok(ctx.stored(name));
    }
    if let Some(arn) = str_field(req, "StreamARN") {
        return stream_of_arn(ctx, arn);
    }
    Err(validation("streamName"))
}

/// The stream a stream ARN names (of this region and account; another's is not found).
pub(crate) fn stream_of_arn(ctx: &KinesisContext, arn: &str) -> Result<String, KinesisError> {
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
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("ValidationException", format!("invalid stream ARN {arn:?}")))?;
    sluice_stream::validate_stream_name(name)?;
    Ok(ctx.stored(name))
}

pub(crate) fn epoch_secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

pub(crate) fn tags_in(v: Option<&Value>) -> Result<BTreeMap<String, String>, KinesisError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(BTreeMap::new());
    };
    let obj = v
        .as_object()
        .ok_or_else(|| err("ValidationException", "Tags must be a map of strings"))?;
    let tags: BTreeMap<String, String> = obj
        .iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|s| (k.clone(), s.to_owned()))
                .ok_or_else(|| err("ValidationException", "tag values must be strings"))
        })
        .collect::<Result<_, _>>()?;
    for (k, v) in &tags {
        validate_tag(k, v)?;
    }
    Ok(tags)
}

/// Kinesis's rules for a tag: a key of 1 to 128 characters and a value of up to 256
/// (`ValidationException`, in the Smithy wording of a length constraint), of letters,
/// digits, white space and `_ . : / = + - @ %` (`InvalidArgumentException` otherwise; AWS
/// accepts `:` and `@` though its guide leaves them out), and no key starting with `aws:`.
pub(crate) fn validate_tag(key: &str, value: &str) -> Result<(), KinesisError> {
    let key_len = key.chars().count();
    if !(1..=128).contains(&key_len) {
        return Err(err(
            "ValidationException",
            format!(
                "1 validation error detected: Value '{key}' at 'tags' failed to satisfy constraint: Map keys must satisfy constraint: [Member must have length less than or equal to 128, Member must have length greater than or equal to 1]"
            ),
        ));
    }
    if value.chars().count() > 256 {
        return Err(err(
            "ValidationException",
            format!(
                "1 validation error detected: Value at 'tags' failed to satisfy constraint: Map value for key '{key}' must satisfy constraint: [Member must have length less than or equal to 256]"
            ),
        ));
    }
    let allowed = |s: &str| {
        s.chars()
            .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@%".contains(c))
    };
    if !allowed(key) || !allowed(value) {
        return Err(err(
            "InvalidArgumentException",
            format!(
                "Tag {key:?} contains characters that are not allowed: letters, digits, white space and _ . : / = + - @ % are"
            ),
        ));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(err(
            "InvalidArgumentException",
            format!("Tag key {key:?} starts with aws:, a prefix reserved for AWS"),
        ));
    }
    Ok(())
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
}
