//! Enhanced fan-out at the edge: consumer operations and SubscribeToShard's event stream,
//! decoded frame by frame (`sluice_compat::eventstream::decode` checks both CRCs). The edge
//! runs in-process on the embedded stream; subscription timings are shortened through
//! `SubscribeOptions`, and every wait is a generous guard, never a speed threshold.

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice_compat::KinesisContext;
use sluice_compat::eventstream::{Message, decode};
use sluice_compat::kinesis::{Encoding, SubscribeOptions, Subscriptions, handle};
use sluice_stream::Clock;
use sluice_stream::embedded::{EmbeddedStream, MIGRATIONS, StreamOptions};

const GUARD: Duration = Duration::from_secs(60);

struct Fixture {
    ctx: KinesisContext,
    _dir: sluice_meta::conformance::TestEngines,
}

fn fixture_with(options: SubscribeOptions, stream_options: StreamOptions) -> Fixture {
    let engines = sluice_meta::conformance::TestEngines::new();
    let dir = engines.dir().to_owned();
    let db = engines.meta("efo", MIGRATIONS);
    let stream = EmbeddedStream::open_with(db, &dir.join("log"), stream_options).expect("stream");
    Fixture {
        ctx: KinesisContext {
            stream: Arc::new(stream),
            region: "us-east-2".into(),
            account_id: "000000000000".into(),
            subscriptions: Subscriptions::new(options),
            settings: Default::default(),
            foreign_region: None,
        },
        _dir: engines,
    }
}

fn fixture(options: SubscribeOptions) -> Fixture {
    fixture_with(options, StreamOptions::default())
}

const STREAM_ARN: &str = "arn:aws:kinesis:us-east-2:000000000000:stream/s";

async fn call(f: &Fixture, op: &str, body: Value) -> (u16, Value) {
    let resp = handle(
        &f.ctx,
        op,
        body.to_string().as_bytes(),
        Encoding::Json,
        &full_access(),
    )
    .await;
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)})),
    )
}

async fn ok(f: &Fixture, op: &str, body: Value) -> Value {
    let (status, v) = call(f, op, body).await;
    assert_eq!(status, 200, "{op}: {v}");
    v
}

async fn error(f: &Fixture, op: &str, body: Value) -> String {
    let (status, v) = call(f, op, body).await;
    assert_eq!(status, 400, "{op} should fail: {v}");
    v["__type"].as_str().expect("__type").to_owned()
}

async fn setup(f: &Fixture, shards: u32) -> String {
    ok(
        f,
        "CreateStream",
        json!({"StreamName": "s", "ShardCount": shards}),
    )
    .await;
    let v = ok(
        f,
        "RegisterStreamConsumer",
        json!({"StreamARN": STREAM_ARN, "ConsumerName": "app"}),
    )
    .await;
    v["Consumer"]["ConsumerARN"]
        .as_str()
        .expect("arn")
        .to_owned()
}

async fn put(f: &Fixture, data: &str) -> String {
    let v = ok(
        f,
        "PutRecord",
        json!({"StreamName": "s", "PartitionKey": "pk",
               "Data": base64::engine::general_purpose::STANDARD.encode(data)}),
    )
    .await;
    v["SequenceNumber"].as_str().expect("seq").to_owned()
}

/// Reads messages off an event-stream body.
struct Events {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
}

impl Events {
    fn new(resp: Response) -> Self {
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/vnd.amazon.eventstream")
        );
        Events {
            body: resp.into_body().into_data_stream(),
            buf: Vec::new(),
        }
    }

    /// The next message, or `None` once the body ended.
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some((m, used)) = decode(&self.buf).expect("well-formed frame") {
                self.buf.drain(..used);
                return Some(m);
            }
            let chunk = tokio::time::timeout(GUARD, self.body.next())
                .await
                .expect("the subscription went silent");
            match chunk {
                Some(c) => self.buf.extend_from_slice(&c.expect("body chunk")),
                None => {
                    assert!(self.buf.is_empty(), "body ended mid-frame");
                    return None;
                }
            }
        }
    }

    /// The next SubscribeToShardEvent's payload.
    async fn event(&mut self) -> Value {
        let m = self.next().await.expect("an event");
        assert_eq!(m.header(":message-type"), Some("event"), "{m:?}");
        assert_eq!(m.header(":event-type"), Some("SubscribeToShardEvent"));
        assert_eq!(m.header(":content-type"), Some("application/json"));
        serde_json::from_slice(&m.payload).expect("json payload")
    }
}

fn subscribe_body(arn: &str, shard: &str, position: Value) -> Value {
    json!({"ConsumerARN": arn, "ShardId": shard, "StartingPosition": position})
}

async fn subscribe(f: &Fixture, arn: &str, shard: &str, position: Value) -> Events {
    let resp = handle(
        &f.ctx,
        "SubscribeToShard",
        subscribe_body(arn, shard, position).to_string().as_bytes(),
        Encoding::Json,
        &full_access(),
    )
    .await;
    let mut events = Events::new(resp);
    let first = events.next().await.expect("initial response");
    assert_eq!(first.header(":event-type"), Some("initial-response"));
    assert_eq!(first.header(":message-type"), Some("event"));
    assert_eq!(first.payload, b"{}");
    events
}

fn data_of(event: &Value) -> Vec<String> {
    event["Records"]
        .as_array()
        .expect("Records")
        .iter()
        .map(|r| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(r["Data"].as_str().expect("Data"))
                    .expect("base64"),
            )
            .expect("utf-8")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_operations() {
    let f = fixture(SubscribeOptions::default());
    let arn = setup(&f, 1).await;
    assert!(
        arn.starts_with(&format!("{STREAM_ARN}/consumer/app:")),
        "{arn}"
    );
    let by_arn = ok(&f, "DescribeStreamConsumer", json!({"ConsumerARN": arn})).await;
    let d = &by_arn["ConsumerDescription"];
    assert_eq!(d["ConsumerName"], "app");
    assert_eq!(d["ConsumerStatus"], "ACTIVE");
    assert_eq!(d["StreamARN"], STREAM_ARN);
    assert!(d["ConsumerCreationTimestamp"].as_f64().is_some());
    let by_name = ok(
        &f,
        "DescribeStreamConsumer",
        json!({"StreamARN": STREAM_ARN, "ConsumerName": "app"}),
    )
    .await;
    assert_eq!(by_name, by_arn);
    let summary = ok(&f, "DescribeStreamSummary", json!({"StreamName": "s"})).await;
    assert_eq!(summary["StreamDescriptionSummary"]["ConsumerCount"], 1);

    for (body, expected) in [
        (
            json!({"StreamARN": STREAM_ARN, "ConsumerName": "app"}),
            "ResourceInUseException",
        ),
        (
            json!({"StreamARN": STREAM_ARN, "ConsumerName": "bad name"}),
            "InvalidArgumentException",
        ),
        (
            json!({"StreamARN": format!("{STREAM_ARN}x"), "ConsumerName": "app"}),
            "ResourceNotFoundException",
        ),
        (json!({"StreamARN": STREAM_ARN}), "ValidationException"),
        (json!({"ConsumerName": "x"}), "ValidationException"),
    ] {
        assert_eq!(
            error(&f, "RegisterStreamConsumer", body.clone()).await,
            expected,
            "{body}"
        );
    }
    for body in [
        json!({}),
        json!({"ConsumerName": "app"}),
        json!({"ConsumerARN": "arn:aws:kinesis:us-east-2:000000000000:stream/s"}),
        json!({"ConsumerARN": arn, "ConsumerName": "other"}),
    ] {
        assert_eq!(
            error(&f, "DescribeStreamConsumer", body.clone()).await,
            "InvalidArgumentException",
            "{body}"
        );
    }
    let stale = format!("{STREAM_ARN}/consumer/app:1");
    assert_eq!(
        error(&f, "DescribeStreamConsumer", json!({"ConsumerARN": stale})).await,
        "ResourceNotFoundException"
    );

    // Up to 20 consumers; pages of ListStreamConsumers.
    for i in 1..20 {
        ok(
            &f,
            "RegisterStreamConsumer",
            json!({"StreamARN": STREAM_ARN, "ConsumerName": format!("c{i:02}")}),
        )
        .await;
    }
    assert_eq!(
        error(
            &f,
            "RegisterStreamConsumer",
            json!({"StreamARN": STREAM_ARN, "ConsumerName": "c20"})
        )
        .await,
        "LimitExceededException"
    );
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = json!({"StreamARN": STREAM_ARN, "MaxResults": 6});
        if let Some(t) = &token {
            req["NextToken"] = json!(t);
        }
        let page = ok(&f, "ListStreamConsumers", req).await;
        let consumers = page["Consumers"].as_array().expect("Consumers");
        assert!(consumers.len() <= 6);
        for c in consumers {
            assert_eq!(c["ConsumerStatus"], "ACTIVE");
            assert!(
                c["ConsumerARN"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(STREAM_ARN))
            );
            names.push(c["ConsumerName"].as_str().expect("name").to_owned());
        }
        match page.get("NextToken").and_then(Value::as_str) {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<String> = (1..20).map(|i| format!("c{i:02}")).collect();
    expected.insert(0, "app".into());
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(
        error(
            &f,
            "ListStreamConsumers",
            json!({"StreamARN": STREAM_ARN, "MaxResults": 0})
        )
        .await,
        "InvalidArgumentException"
    );

    // A stream with consumers is deleted only with EnforceConsumerDeletion.
    assert_eq!(
        error(&f, "DeleteStream", json!({"StreamName": "s"})).await,
        "ResourceInUseException"
    );
    ok(&f, "DeregisterStreamConsumer", json!({"ConsumerARN": arn})).await;
    assert_eq!(
        error(&f, "DeregisterStreamConsumer", json!({"ConsumerARN": arn})).await,
        "ResourceNotFoundException"
    );
    ok(
        &f,
        "DeregisterStreamConsumer",
        json!({"StreamARN": STREAM_ARN, "ConsumerName": "c01"}),
    )
    .await;
    ok(
        &f,
        "DeleteStream",
        json!({"StreamName": "s", "EnforceConsumerDeletion": true}),
    )
    .await;
    ok(
        &f,
        "CreateStream",
        json!({"StreamName": "s", "ShardCount": 1}),
    )
    .await;
    let page = ok(&f, "ListStreamConsumers", json!({"StreamARN": STREAM_ARN})).await;
    assert_eq!(page["Consumers"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_pushes_records_as_they_arrive() {
    // Heartbeats every 50 ms; the takeover window is long, so a second subscription is
    // refused.
    let f = fixture(SubscribeOptions {
        heartbeat: Duration::from_millis(50),
        takeover_after: Duration::from_secs(3600),
        ..SubscribeOptions::default()
    });
    let arn = setup(&f, 1).await;
    let s1 = put(&f, "one").await;
    let s2 = put(&f, "two").await;
    let shard = "shardId-000000000000";
    let mut events = subscribe(&f, &arn, shard, json!({"Type": "TRIM_HORIZON"})).await;
    let e = events.event().await;
    assert_eq!(data_of(&e), ["one", "two"]);
    assert_eq!(e["ContinuationSequenceNumber"], s2);
    assert_eq!(e["Records"][0]["SequenceNumber"], s1);
    assert_eq!(e["Records"][0]["PartitionKey"], "pk");
    assert!(
        e["Records"][0]["ApproximateArrivalTimestamp"]
            .as_f64()
            .is_some()
    );
    assert!(e.get("ChildShards").is_none());

    // The same consumer and shard are busy; another shard is not.
    let (status, v) = call(
        &f,
        "SubscribeToShard",
        subscribe_body(&arn, shard, json!({"Type": "LATEST"})),
    )
    .await;
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("ResourceInUseException"))
    );

    // Empty heartbeats carry the continuation; a record put now arrives in an event.
    let e = events.event().await;
    assert_eq!(data_of(&e), Vec::<String>::new());
    assert_eq!(e["ContinuationSequenceNumber"], s2);
    assert_eq!(e["MillisBehindLatest"], 0);
    let s3 = put(&f, "three").await;
    let got = loop {
        let e = events.event().await;
        if !data_of(&e).is_empty() {
            break e;
        }
    };
    assert_eq!(data_of(&got), ["three"]);
    assert_eq!(got["ContinuationSequenceNumber"], s3);

    // Once the client goes away, the consumer and shard are free again.
    drop(events);
    let mut again = None;
    let deadline = tokio::time::Instant::now() + GUARD;
    while again.is_none() {
        let resp = handle(
            &f.ctx,
            "SubscribeToShard",
            subscribe_body(
                &arn,
                shard,
                json!({"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": s2}),
            )
            .to_string()
            .as_bytes(),
            Encoding::Json,
            &full_access(),
        )
        .await;
        if resp.status() == 200 {
            again = Some(Events::new(resp));
        } else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lease was never released"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut again = again.expect("subscribed");
    assert_eq!(
        again.next().await.expect("initial").header(":event-type"),
        Some("initial-response")
    );
    assert_eq!(data_of(&again.event().await), ["three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_ends_after_its_duration() {
    let f = fixture(SubscribeOptions {
        duration: Duration::from_millis(300),
        heartbeat: Duration::from_millis(50),
        ..SubscribeOptions::default()
    });
    let arn = setup(&f, 1).await;
    let mut events = subscribe(&f, &arn, "shardId-000000000000", json!({"Type": "LATEST"})).await;
    let mut count = 0;
    while let Some(m) = events.next().await {
        assert_eq!(m.header(":event-type"), Some("SubscribeToShardEvent"));
        count += 1;
    }
    assert!(count >= 1, "at least the first event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_subscription_takes_over() {
    let f = fixture(SubscribeOptions {
        takeover_after: Duration::ZERO,
        ..SubscribeOptions::default()
    });
    let arn = setup(&f, 1).await;
    let shard = "shardId-000000000000";
    let mut first = subscribe(&f, &arn, shard, json!({"Type": "LATEST"})).await;
    first.event().await;
    let mut second = subscribe(&f, &arn, shard, json!({"Type": "LATEST"})).await;
    second.event().await;
    let m = first.next().await.expect("an exception");
    assert_eq!(m.header(":message-type"), Some("exception"));
    assert_eq!(m.header(":exception-type"), Some("ResourceInUseException"));
    let body: Value = serde_json::from_slice(&m.payload).expect("json");
    assert!(body["message"].as_str().is_some());
    assert!(first.next().await.is_none(), "the first subscription ended");
    put(&f, "x").await;
    let e = loop {
        let e = second.event().await;
        if !data_of(&e).is_empty() {
            break e;
        }
    };
    assert_eq!(data_of(&e), ["x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistering_ends_the_subscription() {
    let f = fixture(SubscribeOptions {
        heartbeat: Duration::from_millis(50),
        ..SubscribeOptions::default()
    });
    let arn = setup(&f, 1).await;
    let mut events = subscribe(&f, &arn, "shardId-000000000000", json!({"Type": "LATEST"})).await;
    events.event().await;
    ok(&f, "DeregisterStreamConsumer", json!({"ConsumerARN": arn})).await;
    let m = loop {
        let m = events.next().await.expect("events until the exception");
        if m.header(":message-type") == Some("exception") {
            break m;
        }
    };
    assert_eq!(
        m.header(":exception-type"),
        Some("ResourceNotFoundException")
    );
    assert!(events.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_shard_ends_with_its_children() {
    let f = fixture(SubscribeOptions::default());
    let arn = setup(&f, 1).await;
    put(&f, "before").await;
    ok(
        &f,
        "SplitShard",
        json!({"StreamName": "s", "ShardToSplit": "shardId-000000000000",
               "NewStartingHashKey": (1u128 << 127).to_string()}),
    )
    .await;
    let mut events = subscribe(
        &f,
        &arn,
        "shardId-000000000000",
        json!({"Type": "TRIM_HORIZON"}),
    )
    .await;
    let mut seen = Vec::new();
    let last = loop {
        let e = events.event().await;
        seen.extend(data_of(&e));
        if e.get("ChildShards").is_some() {
            break e;
        }
    };
    assert_eq!(seen, ["before"]);
    let children: Vec<&str> = last["ChildShards"]
        .as_array()
        .expect("children")
        .iter()
        .map(|c| c["ShardId"].as_str().expect("id"))
        .collect();
    assert_eq!(children, ["shardId-000000000001", "shardId-000000000002"]);
    assert!(events.next().await.is_none(), "the subscription ends");
}

struct FixedClock(i64);

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_json_errors() {
    // Consumers stay CREATING for an hour by this clock, which never moves.
    let f = fixture_with(
        SubscribeOptions::default(),
        StreamOptions {
            clock: Arc::new(FixedClock(sluice_stream::embedded_now_ms())),
            consumer_activation_ms: 3_600_000,
            ..StreamOptions::default()
        },
    );
    let arn = setup(&f, 1).await;
    let d = ok(&f, "DescribeStreamConsumer", json!({"ConsumerARN": arn})).await;
    assert_eq!(d["ConsumerDescription"]["ConsumerStatus"], "CREATING");
    let shard = "shardId-000000000000";
    let cases = [
        (
            subscribe_body(&arn, shard, json!({"Type": "LATEST"})),
            "ResourceInUseException",
        ),
        (
            subscribe_body(
                &format!("{STREAM_ARN}/consumer/nobody:1"),
                shard,
                json!({"Type": "LATEST"}),
            ),
            "ResourceNotFoundException",
        ),
        (
            subscribe_body("not-an-arn", shard, json!({"Type": "LATEST"})),
            "InvalidArgumentException",
        ),
        (
            subscribe_body(&arn, shard, json!({"Type": "SOMEWHERE"})),
            "ValidationException",
        ),
        (
            subscribe_body(&arn, shard, json!({"Type": "AT_SEQUENCE_NUMBER"})),
            "InvalidArgumentException",
        ),
        (
            json!({"ShardId": shard, "StartingPosition": {"Type": "LATEST"}}),
            "ValidationException",
        ),
        (
            json!({"ConsumerARN": arn, "StartingPosition": {"Type": "LATEST"}}),
            "ValidationException",
        ),
        (
            json!({"ConsumerARN": arn, "ShardId": shard}),
            "ValidationException",
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(
            error(&f, "SubscribeToShard", body.clone()).await,
            expected,
            "{body}"
        );
    }
    // Five consumers may be CREATING at once, not six.
    for i in 0..4 {
        ok(
            &f,
            "RegisterStreamConsumer",
            json!({"StreamARN": STREAM_ARN, "ConsumerName": format!("c{i}")}),
        )
        .await;
    }
    assert_eq!(
        error(
            &f,
            "RegisterStreamConsumer",
            json!({"StreamARN": STREAM_ARN, "ConsumerName": "c5"})
        )
        .await,
        "LimitExceededException"
    );

    // With an ACTIVE consumer: an unknown shard, a sequence number of another shard.
    let g = fixture(SubscribeOptions::default());
    let arn = setup(&g, 2).await;
    g.ctx
        .stream
        .put_record(
            "s",
            sluice_stream::PutRecord {
                partition_key: "k".into(),
                explicit_hash_key: Some("0".into()),
                data: bytes::Bytes::from_static(b"x"),
            },
        )
        .await
        .expect("put");
    let seq0 = g
        .ctx
        .stream
        .get_records(
            &g.ctx
                .stream
                .get_shard_iterator(
                    "s",
                    "shardId-000000000000",
                    sluice_stream::IteratorSpec::TrimHorizon,
                )
                .await
                .expect("iterator"),
            10,
        )
        .await
        .expect("records")
        .records[0]
        .sequence_number
        .clone();
    assert_eq!(
        error(
            &g,
            "SubscribeToShard",
            subscribe_body(&arn, "shardId-000000000009", json!({"Type": "LATEST"}))
        )
        .await,
        "ResourceNotFoundException"
    );
    assert_eq!(
        error(
            &g,
            "SubscribeToShard",
            subscribe_body(
                &arn,
                "shardId-000000000001",
                json!({"Type": "AT_SEQUENCE_NUMBER", "SequenceNumber": seq0})
            )
        )
        .await,
        "InvalidArgumentException"
    );
}

/// A key without a policy: these tests are about the protocol, not authorization.
fn full_access() -> sluice_compat::authz::Principal {
    sluice_compat::authz::Principal {
        access_key_id: "AKIATEST".into(),
        policy: None,
        account_id: "000000000000".into(),
        user: None,
        context: Default::default(),
    }
}
