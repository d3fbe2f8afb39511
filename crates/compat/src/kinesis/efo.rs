//! Kinesis enhanced fan-out on the edge: RegisterStreamConsumer, DescribeStreamConsumer,
//! ListStreamConsumers, DeregisterStreamConsumer (over the `Stream` part's consumers) and
//! SubscribeToShard, which answers with an `application/vnd.amazon.eventstream` body
//! (`eventstream.rs`): an `initial-response` event, then `SubscribeToShardEvent`s pushed as
//! records are committed (woken by `Stream::watch`), at least every [`super::HEARTBEAT`] even when
//! there is nothing new, until [`super::SUBSCRIPTION_DURATION`] has passed (AWS: 5 minutes).
//!
//! Errors found before the stream starts are ordinary JSON 1.1 errors; errors after it
//! started are exception events (`:message-type: exception`) that end it.
//!
//! One subscription per consumer and shard: a second SubscribeToShard within
//! [`super::TAKEOVER_AFTER`] of the first is refused with `ResourceInUseException`; a later one
//! takes over, and the earlier one ends with a `ResourceInUseException` event (as AWS).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use sluice_stream::{
    Consumer, ConsumerRef, ConsumerStatus, IteratorSpec, ListConsumersInput, Stream, StreamError,
};

use super::common::{
    Encoding, KinesisContext, KinesisError, OpResult, child_shards_value, epoch_secs, err,
    internal_failure, record_value, str_field, stream_name, validation,
};
use super::leases::{Lease, LeaseError, SubscribeOptions};
use crate::eventstream;

/// How long to wait before reading again when the stream's read limits refuse a read.
const THROTTLED_RETRY: Duration = Duration::from_millis(200);
/// Frames buffered between the reader task and the response body.
const FRAMES_IN_FLIGHT: usize = 4;

fn internal(what: &str) -> KinesisError {
    tracing::error!(what, "enhanced fan-out failure");
    internal_failure()
}

// --- consumers ---------------------------------------------------------------------------

/// `arn:aws:kinesis:<region>:<account>:stream/<stream>/consumer/<name>:<creation seconds>`.
pub(crate) fn consumer_arn(ctx: &KinesisContext, c: &Consumer) -> String {
    format!(
        "{}/consumer/{}:{}",
        ctx.arn(&c.stream),
        c.name,
        c.created_ms.div_euclid(1000)
    )
}

/// The stream setting a consumer's resource policy is kept under (its name and creation
/// second: a consumer registered again under the same name is another consumer, with
/// another ARN).
pub(crate) fn consumer_policy_key(name: &str, created_secs: i64) -> String {
    format!("policy:consumer/{name}:{created_secs}")
}

pub(crate) fn parse_consumer_arn(
    ctx: &KinesisContext,
    arn: &str,
) -> Result<ConsumerRef, KinesisError> {
    let invalid = || {
        err(
            "InvalidArgumentException",
            format!("invalid consumer ARN {arn:?}"),
        )
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ["arn", _, "kinesis", region, account, resource] = parts.as_slice() else {
        return Err(invalid());
    };
    let (stream, rest) = resource
        .strip_prefix("stream/")
        .and_then(|r| r.split_once("/consumer/"))
        .ok_or_else(invalid)?;
    let (name, secs) = rest.rsplit_once(':').ok_or_else(invalid)?;
    if stream.is_empty()
        || name.is_empty()
        || secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let secs: i64 = secs.parse().map_err(|_| invalid())?;
    if *region != ctx.region || *account != ctx.account_id {
        return Err(err(
            "ResourceNotFoundException",
            format!("consumer {arn} not found"),
        ));
    }
    sluice_stream::validate_stream_name(stream)?;
    sluice_stream::validate_consumer_name(name)?;
    Ok(ConsumerRef {
        stream: ctx.stored(stream),
        name: name.to_owned(),
        created_secs: Some(secs),
    })
}

/// The consumer a Describe/DeregisterStreamConsumer names: by ConsumerARN, or by StreamARN
/// and ConsumerName.
fn consumer_ref(ctx: &KinesisContext, req: &Value) -> Result<ConsumerRef, KinesisError> {
    let by_arn = str_field(req, "ConsumerARN");
    let by_name = str_field(req, "ConsumerName");
    let has_stream = req.get("StreamARN").is_some() || req.get("StreamName").is_some();
    match (by_arn, by_name) {
        (Some(arn), None) if !has_stream => parse_consumer_arn(ctx, arn),
        (Some(arn), _) => {
            // Both ways given: they must agree.
            let r = parse_consumer_arn(ctx, arn)?;
            let stream_matches = !has_stream || stream_name(ctx, req)? == r.stream;
            if by_name.is_some_and(|n| n != r.name) || !stream_matches {
                return Err(err(
                    "InvalidArgumentException",
                    "ConsumerARN does not match StreamARN and ConsumerName",
                ));
            }
            Ok(r)
        }
        (None, Some(name)) if has_stream => {
            let stream = stream_name(ctx, req)?;
            sluice_stream::validate_consumer_name(name)?;
            Ok(ConsumerRef::by_name(&stream, name))
        }
        _ => Err(err(
            "InvalidArgumentException",
            "specify either ConsumerARN, or StreamARN and ConsumerName",
        )),
    }
}

fn consumer_json(ctx: &KinesisContext, c: &Consumer) -> Value {
    json!({
        "ConsumerName": c.name,
        "ConsumerARN": consumer_arn(ctx, c),
        "ConsumerStatus": c.status.as_str(),
        "ConsumerCreationTimestamp": epoch_secs(c.created_ms),
    })
}

pub(crate) async fn register(ctx: &KinesisContext, req: &Value) -> OpResult {
    if req.get("StreamARN").is_none() && req.get("StreamName").is_none() {
        return Err(validation("streamARN"));
    }
    let stream = stream_name(ctx, req)?;
    let name = str_field(req, "ConsumerName").ok_or_else(|| validation("consumerName"))?;
    let tags = super::common::tags_in(req.get("Tags"))?;
    let c = ctx
        .stream
        .register_consumer_with_tags(&stream, name, tags)
        .await?;
    Ok(json!({ "Consumer": consumer_json(ctx, &c) }))
}

pub(crate) async fn describe(ctx: &KinesisContext, req: &Value) -> OpResult {
    let r = consumer_ref(ctx, req)?;
    let c = ctx.stream.describe_consumer(&r).await?;
    let mut v = consumer_json(ctx, &c);
    v["StreamARN"] = json!(ctx.arn(&c.stream));
    Ok(json!({ "ConsumerDescription": v }))
}

pub(crate) async fn list(ctx: &KinesisContext, req: &Value) -> OpResult {
    if req.get("StreamARN").is_none() && req.get("StreamName").is_none() {
        return Err(validation("streamARN"));
    }
    let stream = stream_name(ctx, req)?;
    let max_results = match req.get("MaxResults") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| err("ValidationException", "MaxResults must be an integer"))?
                .min(u64::from(u32::MAX)) as u32,
        ),
    };
    let stream_created_ms = match req.get("StreamCreationTimestamp") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            (v.as_f64().ok_or_else(|| {
                err(
                    "ValidationException",
                    "StreamCreationTimestamp must be a timestamp",
                )
            })? * 1000.0)
                .round() as i64,
        ),
    };
    let out = ctx
        .stream
        .list_consumers(ListConsumersInput {
            stream,
            stream_created_ms,
            next_token: str_field(req, "NextToken").map(str::to_owned),
            max_results,
        })
        .await?;
    let mut v = json!({
        "Consumers": out.consumers.iter().map(|c| consumer_json(ctx, c)).collect::<Vec<_>>(),
    });
    if let Some(t) = out.next_token {
        v["NextToken"] = json!(t);
    }
    Ok(v)
}

pub(crate) async fn deregister(ctx: &KinesisContext, req: &Value) -> OpResult {
    let r = consumer_ref(ctx, req)?;
    let c = ctx.stream.describe_consumer(&r).await?;
    ctx.stream.deregister_consumer(&r).await?;
    // Its resource policy goes with it (a consumer registered again is another one).
    let arn = consumer_arn(ctx, &c);
    let key = consumer_policy_key(&c.name, c.created_ms.div_euclid(1000));
    if let Err(e) = ctx.stream.set_stream_setting(&r.stream, &key, None).await {
        tracing::warn!(consumer = %arn, error = %e, "cannot remove a deregistered consumer's resource policy");
    }
    ctx.settings.policies.forget(&arn);
    Ok(json!({}))
}

// --- SubscribeToShard --------------------------------------------------------------------

fn starting_position(pos: &Value) -> Result<IteratorSpec, KinesisError> {
    super::common::iterator_spec(
        pos,
        super::common::IteratorFields {
            kind: "Type",
            kind_member: "startingPosition.type",
            sequence_number: "StartingPosition.SequenceNumber",
            timestamp: "StartingPosition.Timestamp",
        },
    )
}

/// Checks the request, the consumer (ACTIVE), the shard and the starting position, takes
/// the consumer's lease on the shard, and starts streaming events. Everything that can be
/// refused is refused here, as a normal error response.
pub(crate) async fn subscribe_to_shard(
    ctx: &KinesisContext,
    req: &Value,
    enc: Encoding,
) -> Result<Response, KinesisError> {
    let arn = str_field(req, "ConsumerARN").ok_or_else(|| validation("consumerARN"))?;
    let shard = str_field(req, "ShardId").ok_or_else(|| validation("shardId"))?;
    let pos = req
        .get("StartingPosition")
        .filter(|v| v.is_object())
        .ok_or_else(|| validation("startingPosition"))?;
    let spec = starting_position(pos)?;
    let consumer_ref = parse_consumer_arn(ctx, arn)?;
    let consumer = ctx.stream.describe_consumer(&consumer_ref).await?;
    if consumer.status != ConsumerStatus::Active {
        return Err(err(
            "ResourceInUseException",
            format!("consumer {arn} is {}, not ACTIVE", consumer.status.as_str()),
        ));
    }
    let iterator = ctx
        .stream
        .get_shard_iterator(&consumer.stream, shard, spec)
        .await?;
    let shard_id = sluice_stream::parse_shard_id(shard)
        .map(sluice_stream::shard_id)
        .ok_or_else(|| {
            err(
                "InvalidArgumentException",
                format!("invalid shard id {shard:?}"),
            )
        })?;
    let lease = ctx
        .subscriptions
        .acquire((
            consumer.stream.clone(),
            consumer.name.clone(),
            consumer.created_ms,
            shard_id.clone(),
        ))
        .map_err(|e| match e {
            LeaseError::InUse {
                held_for,
                takeover_after,
            } => err(
                "ResourceInUseException",
                format!(
                    "consumer {} already has a subscription to shard {shard_id} (started {} ms ago); subscribe again after {} ms to take it over",
                    consumer.name,
                    held_for.as_millis(),
                    takeover_after.as_millis()
                ),
            ),
            LeaseError::Poisoned => internal("subscriptions lock"),
        })?;
    let (tx, rx) = mpsc::channel::<Bytes>(FRAMES_IN_FLIGHT);
    let sub = Subscription {
        stream: ctx.stream.clone(),
        consumer: consumer_ref,
        stream_name: consumer.stream,
        options: ctx.subscriptions.options(),
        enc,
        tx,
    };
    tokio::spawn(sub.run(iterator, lease));
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, Infallible>(frame), rx))
    }));
    Ok((
        StatusCode::OK,
        [("content-type", "application/vnd.amazon.eventstream")],
        body,
    )
        .into_response())
}

/// Why a subscription stopped early.
enum Stop {
    /// The client went away or stopped reading until the subscription's end.
    Gone,
    /// Send this exception event, then end.
    Exception(&'static str, String),
}

struct Subscription {
    stream: Arc<dyn Stream>,
    consumer: ConsumerRef,
    stream_name: String,
    options: SubscribeOptions,
    enc: Encoding,
    tx: mpsc::Sender<Bytes>,
}

impl Subscription {
    fn content_type(&self) -> &'static str {
        match self.enc {
            Encoding::Json => "application/json",
            Encoding::Cbor => "application/x-amz-cbor-1.1",
        }
    }

    fn payload(&self, v: &Value) -> Vec<u8> {
        match self.enc {
            Encoding::Json => v.to_string().into_bytes(),
            Encoding::Cbor => crate::cbor::encode(v),
        }
    }

    /// Sends a frame, waiting for room until the subscription's deadline.
    async fn send(&self, frame: Bytes, deadline: Instant) -> Result<(), Stop> {
        match tokio::time::timeout_at(deadline, self.tx.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Stop::Gone),
        }
    }

    async fn send_event(&self, kind: &str, v: &Value, deadline: Instant) -> Result<(), Stop> {
        let frame = eventstream::event(kind, self.content_type(), &self.payload(v))
            .map_err(|e| Stop::Exception("InternalFailureException", e.to_string()))?;
        self.send(frame, deadline).await
    }

    async fn run(self, iterator: String, mut lease: Lease) {
        let deadline = Instant::now() + self.options.duration;
        let stop = self.pump(iterator, &mut lease, deadline).await;
        if let Err(Stop::Exception(kind, message)) = stop {
            let payload = self.payload(&json!({ "message": message }));
            if let Ok(frame) = eventstream::exception(kind, self.content_type(), &payload) {
                // Past the deadline the client gets a moment more for the reason.
                let _ = self
                    .send(frame, Instant::now() + Duration::from_secs(1))
                    .await;
            }
        }
        drop(lease);
    }

    /// Reads the shard and pushes events until the deadline, the end of a closed shard, a
    /// takeover or a failure.
    async fn pump(
        &self,
        mut iterator: String,
        lease: &mut Lease,
        deadline: Instant,
    ) -> Result<(), Stop> {
        let mut changes = self.stream.watch(&self.stream_name);
        self.send_event("initial-response", &json!({}), deadline)
            .await?;
        let mut last_event: Option<Instant> = None;
        loop {
            if Instant::now() >= deadline {
                return Ok(());
            }
            // Mark what has been seen before reading, so a commit after the read wakes us.
            changes.borrow_and_update();
            let out = match self
                .stream
                .get_records(&iterator, sluice_stream::MAX_GET_RECORDS)
                .await
            {
                Ok(out) => out,
                Err(StreamError::ProvisionedThroughputExceeded(_)) => {
                    tokio::time::sleep(THROTTLED_RETRY).await;
                    continue;
                }
                Err(e) => return Err(stream_exception(e)),
            };
            let continuation = match out.records.last() {
                Some(r) => r.sequence_number.clone(),
                None => self
                    .stream
                    .continuation_sequence_number(&iterator)
                    .map_err(stream_exception)?,
            };
            let drained = out.next_iterator.is_none();
            let heartbeat_due = last_event.is_none_or(|t| t.elapsed() >= self.options.heartbeat);
            if !out.records.is_empty() || drained || heartbeat_due {
                let mut event = json!({
                    "Records": out.records.iter().map(record_value).collect::<Vec<_>>(),
                    "ContinuationSequenceNumber": continuation,
                    "MillisBehindLatest": out.millis_behind_latest,
                });
                if !out.child_shards.is_empty() {
                    event["ChildShards"] = child_shards_value(&out);
                }
                self.send_event("SubscribeToShardEvent", &event, deadline)
                    .await?;
                last_event = Some(Instant::now());
            }
            let Some(next) = out.next_iterator else {
                // A closed shard read to its end: its children are in the last event.
                return Ok(());
            };
            iterator = next;
            if !out.records.is_empty() {
                // There may be more right away.
                continue;
            }
            let next_heartbeat = last_event.map_or(deadline, |t| t + self.options.heartbeat);
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        // No more notifications: fall back to the heartbeat.
                        tokio::time::sleep_until(next_heartbeat.min(deadline)).await;
                    }
                }
                () = tokio::time::sleep_until(next_heartbeat.min(deadline)) => {
                    if Instant::now() < deadline {
                        self.check_registered().await?;
                    }
                }
                () = lease.taken_over() => {
                    return Err(Stop::Exception(
                        "ResourceInUseException",
                        format!(
                            "a newer subscription of consumer {} took over this shard",
                            self.consumer.name
                        ),
                    ));
                }
                () = self.tx.closed() => return Err(Stop::Gone),
            }
        }
    }

    /// Ends the subscription when its consumer was deregistered.
    async fn check_registered(&self) -> Result<(), Stop> {
        match self.stream.describe_consumer(&self.consumer).await {
            Ok(_) => Ok(()),
            Err(e) => Err(stream_exception(e)),
        }
    }
}

/// A stream error as an exception event of SubscribeToShard's event stream (whose members
/// are ResourceNotFound, ResourceInUse, the KMS exceptions and InternalFailure).
fn stream_exception(e: StreamError) -> Stop {
    match e {
        StreamError::ResourceNotFound(m) => Stop::Exception("ResourceNotFoundException", m),
        StreamError::ResourceInUse(m) => Stop::Exception("ResourceInUseException", m),
        other => {
            tracing::error!(error = %other, "subscription failed");
            Stop::Exception("InternalFailureException", "internal failure".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::leases::Subscriptions;

    fn ctx(dir: &std::path::Path) -> KinesisContext {
        let db =
            sluice_meta::Meta::open_sqlite(&dir.join("t.db"), sluice_stream::embedded::MIGRATIONS)
                .expect("db");
        KinesisContext {
            stream: Arc::new(
                sluice_stream::embedded::EmbeddedStream::open(db, &dir.join("log"))
                    .expect("stream"),
            ),
            region: "us-east-2".into(),
            account_id: "000000000000".into(),
            subscriptions: Subscriptions::default(),
            settings: Default::default(),
            foreign_region: None,
        }
    }

    #[test]
    fn consumer_arns_round_trip_and_are_checked() {
        let dir = std::env::temp_dir().join(format!("sluice-efo-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        check_arns(&ctx(&dir));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn check_arns(ctx: &KinesisContext) {
        let ctx = ctx.clone();
        let c = Consumer {
            stream: "s".into(),
            stream_created_ms: 0,
            name: "app".into(),
            status: ConsumerStatus::Active,
            created_ms: 1_700_000_000_999,
        };
        let arn = consumer_arn(&ctx, &c);
        assert_eq!(
            arn,
            "arn:aws:kinesis:us-east-2:000000000000:stream/s/consumer/app:1700000000"
        );
        assert_eq!(
            parse_consumer_arn(&ctx, &arn).expect("parses"),
            ConsumerRef {
                stream: "s".into(),
                name: "app".into(),
                created_secs: Some(1_700_000_000),
            }
        );
        for bad in [
            "arn:aws:kinesis:us-east-2:000000000000:stream/s",
            "arn:aws:kinesis:us-east-2:000000000000:stream/s/consumer/app",
            "arn:aws:kinesis:us-east-2:000000000000:stream/s/consumer/app:x1",
            "arn:aws:kinesis:us-east-2:000000000000:stream//consumer/app:1",
            "arn:aws:kinesis:us-east-2:000000000000:stream/s/consumer/:1",
            "arn:aws:kinesis:us-east-2:000000000000:stream/s/consumer/a b:1",
            "arn:aws:s3:us-east-2:000000000000:stream/s/consumer/app:1",
            "nonsense",
        ] {
            let e = parse_consumer_arn(&ctx, bad).expect_err(bad);
            assert_eq!(e.kind, "InvalidArgumentException", "{bad}");
        }
        let e = parse_consumer_arn(
            &ctx,
            "arn:aws:kinesis:eu-west-1:000000000000:stream/s/consumer/app:1",
        )
        .expect_err("other region");
        assert_eq!(e.kind, "ResourceNotFoundException");
    }
}
