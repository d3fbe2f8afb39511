//! The Kinesis targets' harness: `sluice_compat::kinesis::handle` (what the edge calls once
//! a request's signature is verified) on the embedded stream, in either encoding.
//!
//! Input: the first line is the operation (`PutRecords`), optionally followed by ` scoped`
//! to run as a key whose policy allows only the `fuzz` stream (so that the resource of every
//! operation is worked out and checked); the rest is the body. Placeholders: `@iterator@`
//! (a live shard iterator of `fuzz`), `@consumer@` (the ARN of its registered consumer),
//! `@stream-arn@`.
//!
//! Invariants: nothing panics; no answer is a 5xx; an answer's body is well-formed in its
//! encoding; CBOR encoding of the request's JSON model decodes to a value that encodes to
//! the same bytes (the edge's answers in CBOR are encoded from that model).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sluice_compat::KinesisContext;
use sluice_compat::authz::Principal;
use sluice_compat::fuzzing::cbor;
use sluice_compat::kinesis::Encoding;

use crate::{ACCOUNT, Parts, REGION, STREAM, runtime, split_line, substitute};

struct Fixture {
    _parts: Parts,
    ctx: KinesisContext,
    full: Principal,
    scoped: Principal,
    live: Mutex<Live>,
}

/// What placeholders stand for; made again when the fuzzer deleted it.
struct Live {
    iterator: String,
    issued: Instant,
    consumer_arn: String,
}

const CONSUMER: &str = "fuzz-consumer";

fn stream_arn() -> String {
    format!("arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{STREAM}")
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let parts = crate::parts("kinesis");
        let ctx = parts.kinesis();
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"kinesis:*","Resource":["{arn}","{arn}/consumer/*"]}}]}}"#,
            arn = stream_arn()
        );
        let principal = |policy: Option<sluice_policy::Policy>| Principal {
            access_key_id: "AKIAFUZZ".into(),
            policy: policy.map(Arc::new),
            account_id: ACCOUNT.into(),
            user: None,
            context: Default::default(),
        };
        let scoped = principal(Some(sluice_policy::Policy::parse(&policy).expect("policy")));
        let live = runtime().block_on(live(&ctx)).expect("fixture stream");
        Fixture {
            _parts: parts,
            ctx,
            full: principal(None),
            scoped,
            live: Mutex::new(live),
        }
    })
}

/// Makes sure `fuzz` (2 shards, a few records) and its consumer exist; a fresh iterator.
/// (Errors are returned, not panicked: the fuzzer's panic hook aborts on any panic.)
async fn live(ctx: &KinesisContext) -> Result<Live, sluice_stream::StreamError> {
    let s = &ctx.stream;
    if s.describe_stream_summary(STREAM).await.is_err() {
        s.ensure_stream(STREAM, 2).await?;
        for i in 0..4u8 {
            s.put_record(
                STREAM,
                sluice_stream::PutRecord {
                    partition_key: format!("key-{i}"),
                    explicit_hash_key: None,
                    data: vec![b'a' + i; 3 + usize::from(i)].into(),
                },
            )
            .await?;
        }
    }
    let consumer = match s
        .describe_consumer(&sluice_stream::ConsumerRef::by_name(STREAM, CONSUMER))
        .await
    {
        Ok(c) => c,
        Err(_) => s.register_consumer(STREAM, CONSUMER).await?,
    };
    let iterator = s
        .get_shard_iterator(
            STREAM,
            "shardId-000000000000",
            sluice_stream::IteratorSpec::TrimHorizon,
        )
        .await?;
    Ok(Live {
        iterator,
        issued: Instant::now(),
        consumer_arn: format!(
            "{}/consumer/{CONSUMER}:{}",
            stream_arn(),
            consumer.created_ms.div_euclid(1000)
        ),
    })
}

/// Operations after which the fixture's stream, consumer or iterator may be gone.
const DESTRUCTIVE: &[&str] = &[
    "DeleteStream",
    "DeregisterStreamConsumer",
    "SplitShard",
    "MergeShards",
    "UpdateShardCount",
    "DecreaseStreamRetentionPeriod",
];

pub fn run(data: &[u8], enc: Encoding) {
    let Some((line, body)) = split_line(data) else {
        return;
    };
    let (op, scoped) = match line.strip_suffix(" scoped") {
        Some(op) => (op, true),
        None => (line, false),
    };
    let f = fixture();
    let rt = runtime();
    let body = {
        let mut live = f.live.lock().expect("fixture");
        if live.issued.elapsed() > Duration::from_secs(240) {
            *live = rt.block_on(live_again(&f.ctx));
        }
        let values = [
            ("iterator", live.iterator.as_str()),
            ("consumer", live.consumer_arn.as_str()),
            ("stream-arn", &stream_arn()),
        ];
        match enc {
            Encoding::Json => substitute(body, &values),
            Encoding::Cbor => substitute_cbor(body, &values),
        }
    };
    model_round_trip(&body, enc);
    let principal = if scoped { &f.scoped } else { &f.full };
    let (status, content_type, answer) = rt.block_on(async {
        let resp = sluice_compat::kinesis::handle(&f.ctx, op, &body, enc, principal).await;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        // A subscription's event stream runs for minutes: its first events are enough.
        let answer = if content_type.starts_with("application/vnd.amazon.eventstream") {
            let mut body = resp.into_body().into_data_stream();
            let _ = tokio::time::timeout(Duration::from_millis(20), async {
                futures_util::StreamExt::next(&mut body).await
            })
            .await;
            bytes::Bytes::new()
        } else {
            axum::body::to_bytes(resp.into_body(), 64 << 20)
                .await
                .expect("answer body")
        };
        (status, content_type, answer)
    });
    crate::show(op, status, &answer);
    assert!(
        !status.is_server_error(),
        "{op}: {status} {}\nrequest: {:?}",
        String::from_utf8_lossy(&answer),
        String::from_utf8_lossy(&body)
    );
    if content_type.starts_with("application/x-amz-json") {
        serde_json::from_slice::<serde_json::Value>(&answer).expect("answer is JSON");
    } else if content_type.starts_with("application/x-amz-cbor") {
        cbor::decode(&answer).expect("answer is CBOR");
    }
    if DESTRUCTIVE.contains(&op) {
        let fresh = rt.block_on(live_again(&f.ctx));
        *f.live.lock().expect("fixture") = fresh;
    }
}

async fn live_again(ctx: &KinesisContext) -> Live {
    // A deleted stream may take a moment to go.
    let mut last = None;
    for _ in 0..200 {
        match live(ctx).await {
            Ok(live) => return live,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("cannot make the fixture's stream again: {last:?}");
}

/// The request's JSON model, encoded as the edge encodes CBOR answers, decodes to a value
/// whose encoding is the same bytes.
fn model_round_trip(body: &[u8], enc: Encoding) {
    let model = match enc {
        Encoding::Json => serde_json::from_slice::<serde_json::Value>(body).ok(),
        Encoding::Cbor => cbor::decode(body),
    };
    let Some(model) = model else { return };
    let bytes = cbor::encode(&model);
    let again = cbor::decode(&bytes).expect("an encoded model decodes");
    assert_eq!(cbor::encode(&again), bytes, "model {model} → {again}");
}

/// Placeholders in a CBOR body are text strings: the body is decoded, strings equal to a
/// placeholder are replaced, and the body encoded again. A body that is not CBOR is left as
/// it is.
fn substitute_cbor(body: &[u8], values: &[(&str, &str)]) -> Vec<u8> {
    use ciborium::value::Value;
    fn walk(v: &mut Value, values: &[(&str, &str)]) {
        match v {
            Value::Text(t) => {
                if let Some((_, with)) = values.iter().find(|(n, _)| *t == format!("@{n}@")) {
                    *t = (*with).to_owned();
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, values)),
            Value::Map(m) => m.iter_mut().for_each(|(_, x)| walk(x, values)),
            Value::Tag(_, x) => walk(x, values),
            _ => {}
        }
    }
    if !body.contains(&b'@') {
        return body.to_vec();
    }
    let Ok(mut v) = ciborium::de::from_reader::<Value, _>(body) else {
        return body.to_vec();
    };
    walk(&mut v, values);
    let mut out = Vec::new();
    match ciborium::ser::into_writer(&v, &mut out) {
        Ok(()) => out,
        Err(_) => body.to_vec(),
    }
}
