//! Lambda's Kinesis event-source-mapping semantics, each checked against the real embedded
//! stream and store on a temporary directory.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Value, json};
use sluice_meta::{Meta, Migration};
use sluice_processor::embedded::{EmbeddedCheckpoints, MIGRATIONS};
use sluice_processor::{
    BatchFunction, BatchInput, BatchResponse, CallContext, Checkpoints, DestinationSpec,
    FunctionError, MappingConfig, NoObserver, Observer, Processor, StartingPosition,
};
use sluice_store::ObjectStore;
use sluice_store::embedded::EmbeddedStore;
use sluice_stream::embedded::EmbeddedStream;
use sluice_stream::{PutRecord, Record, Stream};
use tokio::sync::watch;

struct Env {
    _dir: sluice_meta::conformance::TestEngines,
    db: Meta,
    stream: EmbeddedStream,
    store: EmbeddedStore,
    shutdown: watch::Sender<bool>,
}

fn env() -> Env {
    let dir = sluice_meta::conformance::TestEngines::new();
    let all: Vec<Migration> = [
        sluice_store::embedded::MIGRATIONS,
        sluice_stream::embedded::MIGRATIONS,
        MIGRATIONS,
    ]
    .iter()
    .flat_map(|ms| ms.iter().copied())
    .collect();
    let db = dir.meta("semantics", &all);
    let stream = EmbeddedStream::open(db.clone(), &dir.dir().join("log")).expect("stream");
    let store = EmbeddedStore::new(
        db.clone(),
        sluice_blobs::conformance::test_blobs(&dir.dir().join("blobs")),
    );
    Env {
        _dir: dir,
        db,
        stream,
        store,
        shutdown: watch::channel(false).0,
    }
}

impl Env {
    fn processor(&self) -> Processor {
        self.processor_with(Arc::new(NoObserver))
    }

    fn processor_with(&self, observer: Arc<dyn Observer>) -> Processor {
        Processor::new(
            Arc::new(self.stream.clone()),
            Arc::new(self.store.clone()),
            Arc::new(EmbeddedCheckpoints::new(self.db.clone())),
            observer,
        )
    }

    async fn put(&self, stream: &str, pk: &str, data: &str) -> String {
        self.stream
            .put_record(
                stream,
                PutRecord {
                    partition_key: pk.into(),
                    explicit_hash_key: None,
                    data: Bytes::from(data.to_owned()),
                },
            )
            .await
            .expect("put")
            .sequence_number
    }

    /// Appends records in one commit, so they are read as one batch.
    async fn put_all(&self, stream: &str, data: &[&str]) -> Vec<String> {
        let recs = data
            .iter()
            .map(|d| PutRecord {
                partition_key: "pk".into(),
                explicit_hash_key: None,
                data: Bytes::from(d.to_string()),
            })
            .collect();
        self.stream
            .put_records(stream, recs)
            .await
            .expect("put_records")
            .into_iter()
            .map(|r| r.expect("record").sequence_number)
            .collect()
    }

    async fn checkpoint(&self, mapping: &str, shard: &str) -> Option<String> {
        EmbeddedCheckpoints::new(self.db.clone())
            .load(mapping, shard)
            .await
            .expect("load checkpoint")
    }

    async fn stop(&self, handles: Vec<tokio::task::JoinHandle<()>>) {
        self.shutdown.send_replace(true);
        for h in handles {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("workers stop")
                .expect("join");
        }
    }
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn eventually_async<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Behaviour = dyn Fn(&[Record], usize) -> Result<BatchResponse, FunctionError> + Send + Sync;

/// A batch function that records every invocation (the data of its records) and answers
/// as `behaviour` says (given the records and the invocation's index).
struct Recorder {
    calls: Mutex<Vec<Vec<String>>>,
    behaviour: Box<Behaviour>,
}

impl Recorder {
    fn new(
        f: impl Fn(&[Record], usize) -> Result<BatchResponse, FunctionError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Recorder {
            calls: Mutex::new(Vec::new()),
            behaviour: Box::new(f),
        })
    }

    fn ok() -> Arc<Self> {
        Self::new(|_, _| Ok(BatchResponse::Returned(Value::Null)))
    }

    fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().expect("lock").clone()
    }

    fn delivered(&self) -> Vec<String> {
        self.calls().into_iter().flatten().collect()
    }
}

#[async_trait]
impl BatchFunction for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn invoke(
        &self,
        input: &BatchInput,
        _ctx: &CallContext,
    ) -> Result<BatchResponse, FunctionError> {
        let data: Vec<String> = input
            .records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect();
        let n = {
            let mut c = self.calls.lock().expect("lock");
            c.push(data);
            c.len() - 1
        };
        (self.behaviour)(&input.records, n)
    }
}

fn data_of(r: &Record) -> String {
    String::from_utf8_lossy(&r.data).into_owned()
}

const SHARD0: &str = "shardId-000000000000";

async fn failure_objects(e: &Env, bucket: &str, prefix: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for info in e
        .store
        .list(bucket, prefix, None, 100)
        .await
        .unwrap_or_default()
    {
        let obj = e
            .store
            .get(bucket, &info.key)
            .await
            .expect("get failure record");
        out.push(serde_json::from_slice(&obj.body).expect("failure record is json"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_positions_are_honoured() {
    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    e.put("s", "k", "before").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ts = sluice_meta::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let p = e.processor();
    let mut handles = Vec::new();
    let mut fns = HashMap::new();
    for (name, pos) in [
        ("trim", StartingPosition::TrimHorizon),
        ("latest", StartingPosition::Latest),
        ("at", StartingPosition::AtTimestamp(ts)),
    ] {
        let f = Recorder::ok();
        let mut m = MappingConfig::new(name, "s");
        m.starting_position = pos;
        handles.extend(
            p.start_batch(m, f.clone(), e.shutdown.subscribe())
                .await
                .expect("start"),
        );
        fns.insert(name, f);
    }
    e.put("s", "k", "after").await;
    eventually("every mapping saw the new record", || {
        fns.values()
            .all(|f| f.delivered().contains(&"after".to_owned()))
    })
    .await;
    assert_eq!(fns["trim"].delivered(), ["before", "after"]);
    assert_eq!(
        fns["latest"].delivered(),
        ["after"],
        "LATEST starts at the mapping's creation"
    );
    assert_eq!(fns["at"].delivered(), ["after"]);
    e.stop(handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bisect_isolates_a_poison_record_while_neighbours_succeed() {
    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    let seqs = e.put_all("s", &["a", "b", "poison", "d", "e"]).await;
    let f = Recorder::new(|recs, _| {
        if recs.iter().any(|r| data_of(r) == "poison") {
            Err(FunctionError::Failed("cannot digest poison".into()))
        } else {
            Ok(BatchResponse::Returned(Value::Null))
        }
    });
    let mut m = MappingConfig::new("m", "s");
    m.starting_position = StartingPosition::TrimHorizon;
    m.bisect_batch_on_function_error = true;
    m.set_maximum_retry_attempts(1).expect("retries");
    m.on_failure = Some(DestinationSpec::parse("s3://dlq/failed/").expect("dest"));
    let p = e.processor();
    let handles = p
        .start_batch(m, f.clone(), e.shutdown.subscribe())
        .await
        .expect("start");
    eventually_async("checkpoint at the last record", || async {
        e.checkpoint("m", SHARD0).await.as_deref() == Some(seqs[4].as_str())
    })
    .await;
    let calls = f.calls();
    assert_eq!(
        calls[0],
        ["a", "b", "poison", "d", "e"],
        "first the whole batch"
    );
    let succeeded: Vec<String> = calls
        .iter()
        .filter(|c| !c.contains(&"poison".to_owned()))
        .flatten()
        .cloned()
        .collect();
    assert_eq!(
        succeeded,
        ["a", "b", "d", "e"],
        "neighbours succeed, in order"
    );
    assert_eq!(
        calls.iter().filter(|c| c.as_slice() == ["poison"]).count(),
        2,
        "the isolated record is tried once and retried once"
    );
    let failures = failure_objects(&e, "dlq", "failed/").await;
    assert_eq!(failures.len(), 1);
    let fr = &failures[0];
    assert_eq!(fr["requestContext"]["condition"], "RetryAttemptsExhausted");
    assert_eq!(fr["version"], "1.0");
    assert_eq!(fr["responseContext"]["functionError"], "Unhandled");
    let info = &fr["KinesisBatchInfo"];
    assert_eq!(info["batchSize"], 1);
    assert_eq!(info["startSequenceNumber"], seqs[2].as_str());
    assert_eq!(info["endSequenceNumber"], seqs[2].as_str());
    assert_eq!(info["shardId"], SHARD0);
    assert_eq!(
        info["streamArn"],
        "arn:aws:kinesis:us-east-2:000000000000:stream/s"
    );
    assert!(
        info["approximateArrivalOfFirstRecord"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(
        fr["payload"]["Records"][0]["kinesis"]["sequenceNumber"],
        seqs[2].as_str(),
        "bucket destinations carry the invocation payload"
    );
    let stats = p.stats()["m"].clone();
    assert_eq!((stats.succeeded, stats.failed, stats.records_in), (4, 1, 5));
    e.stop(handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_batch_responses() {
    let e = env();
    let p = e.processor();
    let mut handles = Vec::new();
    // (stream, first response) → what the second invocation must be.
    let cases: Vec<(&str, Value)> = vec![
        (
            "lowest",
            json!({"batchItemFailures": [{"itemIdentifier": "@3"}, {"itemIdentifier": "@2"}]}),
        ),
        (
            "malformed",
            json!({"batchItemFailures": [{"itemIdentifier": ""}]}),
        ),
        ("empty", json!({"batchItemFailures": []})),
    ];
    let mut fns = Vec::new();
    for (name, first) in cases {
        e.stream.create_stream(name, 1).await.expect("create");
        let seqs = e.put_all(name, &["r0", "r1", "r2", "r3", "r4"]).await;
        // "@i" stands for the sequence number of record i.
        let text = first.to_string();
        let resolved = seqs
            .iter()
            .enumerate()
            .fold(text, |t, (i, s)| t.replace(&format!("@{i}"), s));
        let first: Value = serde_json::from_str(&resolved).expect("json");
        let f = Recorder::new(move |_, n| {
            Ok(BatchResponse::Returned(if n == 0 {
                first.clone()
            } else {
                Value::Null
            }))
        });
        let mut m = MappingConfig::new(name, name);
        m.starting_position = StartingPosition::TrimHorizon;
        m.function_response_types = vec!["ReportBatchItemFailures".into()];
        handles.extend(
            p.start_batch(m, f.clone(), e.shutdown.subscribe())
                .await
                .expect("start"),
        );
        fns.push((name, f, seqs));
    }
    for (name, _, seqs) in &fns {
        eventually_async("checkpoint at the end", || async {
            e.checkpoint(name, SHARD0).await.as_deref() == Some(seqs[4].as_str())
        })
        .await;
    }
    let all = ["r0", "r1", "r2", "r3", "r4"];
    assert_eq!(
        fns[0].1.calls(),
        vec![all.to_vec(), vec!["r2", "r3", "r4"]],
        "retried from the lowest failed record"
    );
    assert_eq!(
        fns[1].1.calls(),
        vec![all.to_vec(), all.to_vec()],
        "malformed = whole batch failed"
    );
    assert_eq!(fns[2].1.calls(), vec![all.to_vec()], "empty list = success");
    e.stop(handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_go_to_the_destination_stream_and_the_shard_moves_on() {
    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    e.stream.create_stream("failures", 1).await.expect("create");
    let seqs = e.put_all("s", &["a", "bad", "c"]).await;
    let f = Recorder::new(|recs, _| {
        if recs.iter().any(|r| data_of(r) == "bad") {
            Err(FunctionError::Failed("bad record".into()))
        } else {
            Ok(BatchResponse::Returned(Value::Null))
        }
    });
    let mut m = MappingConfig::new("m", "s");
    m.starting_position = StartingPosition::TrimHorizon;
    m.batch_size = 1;
    m.set_maximum_retry_attempts(2).expect("retries");
    m.on_failure = Some(DestinationSpec::parse("stream:failures").expect("dest"));
    let handles = e
        .processor()
        .start_batch(m, f.clone(), e.shutdown.subscribe())
        .await
        .expect("start");
    eventually_async("checkpoint at the last record", || async {
        e.checkpoint("m", SHARD0).await.as_deref() == Some(seqs[2].as_str())
    })
    .await;
    assert_eq!(
        f.calls(),
        [vec!["a"], vec!["bad"], vec!["bad"], vec!["bad"], vec!["c"]]
    );
    let it = e
        .stream
        .get_shard_iterator("failures", SHARD0, sluice_stream::IteratorSpec::TrimHorizon)
        .await
        .expect("iterator");
    let got = e.stream.get_records(&it, 10).await.expect("read failures");
    assert_eq!(got.records.len(), 1);
    let fr: Value = serde_json::from_slice(&got.records[0].data).expect("json");
    assert_eq!(fr["requestContext"]["condition"], "RetryAttemptsExhausted");
    assert_eq!(fr["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(fr["responseContext"]["statusCode"], 200);
    assert_eq!(
        fr["KinesisBatchInfo"]["startSequenceNumber"],
        seqs[1].as_str()
    );
    assert!(
        fr.get("payload").is_none(),
        "stream destinations get metadata only"
    );
    e.stop(handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_are_skipped_to_the_destination() {
    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    // The first two records arrive through a handle whose clock runs two hours behind.
    struct TwoHoursAgo;
    impl sluice_stream::Clock for TwoHoursAgo {
        fn now_ms(&self) -> i64 {
            sluice_meta::now_ms() - 7_200_000
        }
    }
    let past = EmbeddedStream::open_with(
        e.db.clone(),
        &e._dir.dir().join("log"),
        sluice_stream::embedded::StreamOptions {
            clock: std::sync::Arc::new(TwoHoursAgo),
            ..Default::default()
        },
    )
    .expect("second handle");
    let mut seqs = Vec::new();
    for data in ["old1", "old2"] {
        let r = past
            .put_record(
                "s",
                sluice_stream::PutRecord {
                    partition_key: "pk".into(),
                    explicit_hash_key: None,
                    data: bytes::Bytes::from(data),
                },
            )
            .await
            .expect("put");
        seqs.push(r.sequence_number);
    }
    let fresh = e.put("s", "pk", "fresh").await;
    let f = Recorder::ok();
    let mut m = MappingConfig::new("m", "s");
    m.starting_position = StartingPosition::TrimHorizon;
    m.maximum_record_age_secs = 3600;
    m.on_failure = Some(DestinationSpec::parse("s3://dlq/expired/").expect("dest"));
    let handles = e
        .processor()
        .start_batch(m, f.clone(), e.shutdown.subscribe())
        .await
        .expect("start");
    eventually_async("checkpoint at the fresh record", || async {
        e.checkpoint("m", SHARD0).await.as_deref() == Some(fresh.as_str())
    })
    .await;
    assert_eq!(
        f.delivered(),
        ["fresh"],
        "expired records are never invoked"
    );
    let failures = failure_objects(&e, "dlq", "expired/").await;
    assert_eq!(failures.len(), 1);
    assert_eq!(
        failures[0]["requestContext"]["condition"],
        "RecordAgeExceeded"
    );
    assert_eq!(failures[0]["requestContext"]["approximateInvokeCount"], 0);
    assert_eq!(failures[0]["KinesisBatchInfo"]["batchSize"], 2);
    assert_eq!(
        failures[0]["KinesisBatchInfo"]["startSequenceNumber"],
        seqs[0].as_str()
    );
    assert_eq!(
        failures[0]["KinesisBatchInfo"]["endSequenceNumber"],
        seqs[1].as_str()
    );
    e.stop(handles).await;
}

/// Records the order each partition key was seen in, and how many invocations overlapped.
struct KeyOrder {
    seen: Mutex<BTreeMap<String, Vec<u32>>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

#[async_trait]
impl BatchFunction for KeyOrder {
    fn name(&self) -> &str {
        "key-order"
    }

    async fn invoke(
        &self,
        input: &BatchInput,
        _ctx: &CallContext,
    ) -> Result<BatchResponse, FunctionError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        {
            let mut seen = self.seen.lock().expect("lock");
            for r in &input.records {
                let d = data_of(r);
                let (k, i) = d.split_once(':').expect("key:index");
                seen.entry(k.to_owned())
                    .or_default()
                    .push(i.parse().expect("index"));
            }
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(BatchResponse::Returned(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallelization_keeps_order_per_partition_key() {
    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    let mut last = String::new();
    for chunk in 0..4u32 {
        let recs = (0..50u32)
            .map(|j| {
                let i = chunk * 50 + j;
                let key = format!("key{}", i % 10);
                PutRecord {
                    partition_key: key.clone(),
                    explicit_hash_key: None,
                    data: Bytes::from(format!("{key}:{i}")),
                }
            })
            .collect();
        let res = e.stream.put_records("s", recs).await.expect("put");
        last = res
            .last()
            .and_then(|r| r.as_ref().ok())
            .expect("ok")
            .sequence_number
            .clone();
    }
    let f = Arc::new(KeyOrder {
        seen: Mutex::new(BTreeMap::new()),
        running: AtomicUsize::new(0),
        max_running: AtomicUsize::new(0),
    });
    let mut m = MappingConfig::new("m", "s");
    m.starting_position = StartingPosition::TrimHorizon;
    m.batch_size = 5;
    m.parallelization_factor = 4;
    let handles = e
        .processor()
        .start_batch(m, f.clone(), e.shutdown.subscribe())
        .await
        .expect("start");
    eventually_async("checkpoint at the last record", || async {
        e.checkpoint("m", SHARD0).await.as_deref() == Some(last.as_str())
    })
    .await;
    let seen = f.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 10);
    for (k, idx) in &seen {
        assert_eq!(idx.len(), 20, "every record of {k} delivered once");
        assert!(
            idx.windows(2).all(|w| w[0] < w[1]),
            "{k} delivered in order: {idx:?}"
        );
    }
    assert!(
        f.max_running.load(Ordering::SeqCst) > 1,
        "batches of one shard ran concurrently"
    );
    e.stop(handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_middle_of_a_batch_is_at_least_once_without_gap() {
    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    let seqs = e.put_all("s", &["r0", "r1", "r2", "r3", "r4", "r5"]).await;
    let (reached_tx, mut reached_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    /// Succeeds until it meets r3, then hangs as a crashed process would.
    struct HangsAtR3(tokio::sync::mpsc::UnboundedSender<()>, Mutex<Vec<String>>);
    #[async_trait]
    impl BatchFunction for HangsAtR3 {
        fn name(&self) -> &str {
            "hangs"
        }
        async fn invoke(
            &self,
            input: &BatchInput,
            _ctx: &CallContext,
        ) -> Result<BatchResponse, FunctionError> {
            if input.records.iter().any(|r| data_of(r) == "r3") {
                let _ = self.0.send(());
                std::future::pending::<()>().await;
            }
            self.1
                .lock()
                .expect("lock")
                .extend(input.records.iter().map(data_of));
            Ok(BatchResponse::Returned(Value::Null))
        }
    }
    let mut m = MappingConfig::new("m", "s");
    m.starting_position = StartingPosition::TrimHorizon;
    m.batch_size = 2;
    let first = Arc::new(HangsAtR3(reached_tx, Mutex::new(Vec::new())));
    let handles = e
        .processor()
        .start_batch(m.clone(), first.clone(), e.shutdown.subscribe())
        .await
        .expect("start");
    tokio::time::timeout(Duration::from_secs(30), reached_rx.recv())
        .await
        .expect("reached r3");
    e.stop(handles).await;
    // Batches are cut from what the reader handed over so far, so r2 may have made a batch
    // of its own before r3 arrived: what succeeded is r0, r1 and perhaps r2.
    let done = first.1.lock().expect("lock").clone();
    assert!(
        done == ["r0", "r1"] || done == ["r0", "r1", "r2"],
        "{done:?}"
    );
    assert_eq!(
        e.checkpoint("m", SHARD0).await.as_deref(),
        Some(seqs[done.len() - 1].as_str())
    );

    // Restart: a new processor on the same database.
    e.shutdown.send_replace(false);
    let second = Recorder::ok();
    let handles = e
        .processor()
        .start_batch(m, second.clone(), e.shutdown.subscribe())
        .await
        .expect("restart");
    eventually_async("checkpoint at the last record", || async {
        e.checkpoint("m", SHARD0).await.as_deref() == Some(seqs[5].as_str())
    })
    .await;
    let expected: Vec<&str> = ["r0", "r1", "r2", "r3", "r4", "r5"][done.len()..].to_vec();
    assert_eq!(
        second.delivered(),
        expected,
        "the interrupted batch is delivered again, nothing after the checkpoint is skipped"
    );
    e.stop(handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_parent_shards_are_finished_before_children() {
    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    for i in 0..30 {
        e.put("s", &format!("k{i}"), &format!("parent{i}")).await;
    }
    // Split shard 0 into shards 1 and 2.
    e.stream
        .split_shard("s", SHARD0, u128::MAX / 2 + 1)
        .await
        .expect("split");
    for i in 0..30 {
        e.put("s", &format!("k{i}"), &format!("child{i}")).await;
    }
    let f = Recorder::new(|_, _| Ok(BatchResponse::Returned(Value::Null)));
    let mut m = MappingConfig::new("m", "s");
    m.starting_position = StartingPosition::TrimHorizon;
    m.batch_size = 4;
    let handles = e
        .processor()
        .start_batch(m, f.clone(), e.shutdown.subscribe())
        .await
        .expect("start");
    eventually("all 60 records delivered", || f.delivered().len() >= 60).await;
    let d = f.delivered();
    let last_parent = d
        .iter()
        .rposition(|x| x.starts_with("parent"))
        .expect("parents");
    let first_child = d
        .iter()
        .position(|x| x.starts_with("child"))
        .expect("children");
    assert!(
        last_parent < first_child,
        "every parent record before any child record: {d:?}"
    );
    assert_eq!(d.len(), 60);
    e.stop(handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_window_gathers_records() {
    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    let f = Recorder::ok();
    let mut m = MappingConfig::new("m", "s");
    m.batch_size = 5;
    m.maximum_batching_window_secs = 300;
    let handles = e
        .processor()
        .start_batch(m, f.clone(), e.shutdown.subscribe())
        .await
        .expect("start");
    for i in 0..5 {
        e.put("s", "k", &format!("r{i}")).await;
    }
    eventually("a full batch", || !f.calls().is_empty()).await;
    assert_eq!(
        f.calls(),
        [vec!["r0", "r1", "r2", "r3", "r4"]],
        "records put one by one wait for the window (or a full batch)"
    );
    e.stop(handles).await;
}

/// Remembers what the observer was told.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

#[async_trait]
impl Observer for Seen {
    async fn started(&self, id: &str) {
        self.0.lock().expect("lock").push(format!("started {id}"));
    }
    async fn succeeded(&self, id: &str, bucket: &str, key: &str) {
        self.0
            .lock()
            .expect("lock")
            .push(format!("succeeded {id} {bucket}/{key}"));
    }
    async fn failed(&self, id: &str, error: &str) {
        self.0
            .lock()
            .expect("lock")
            .push(format!("failed {id}: {error}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_functions_write_outputs_and_report_upload_status() {
    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    e.store.ensure_bucket("sluice").await.expect("bucket");
    e.store
        .put(
            "sluice",
            "uploads/a.txt",
            Bytes::from("hello"),
            Default::default(),
        )
        .await
        .expect("put");
    e.store
        .put(
            "sluice",
            "uploads/bin",
            Bytes::from_static(&[0xff, 0xfe]),
            Default::default(),
        )
        .await
        .expect("put");
    let seen = Arc::new(Seen::default());
    let p = e.processor_with(seen.clone());
    let mut m = MappingConfig::new("m", "s");
    m.starting_position = StartingPosition::TrimHorizon;
    m.set_maximum_retry_attempts(0).expect("retries");
    let handles = p
        .start(
            m,
            Arc::new(sluice_processor::functions::Uppercase),
            e.shutdown.subscribe(),
        )
        .await
        .expect("start");
    e.put_all(
        "s",
        &[
            r#"{"bucket":"sluice","key":"uploads/a.txt","uploadId":"u1"}"#,
            r#"{"bucket":"sluice","key":"uploads/bin","uploadId":"u2"}"#,
        ],
    )
    .await;
    // A fast batch reports only outcomes; one still running after `PROCESSING_AFTER` (a
    // slower metadata engine) reports `started` first.
    eventually("both uploads resolved", || {
        let log = seen.0.lock().expect("lock");
        log.iter()
            .filter(|l| l.starts_with("succeeded") || l.starts_with("failed"))
            .count()
            >= 2
    })
    .await;
    let log = seen.0.lock().expect("lock").clone();
    let out = e
        .store
        .get("sluice", "processed/a.txt")
        .await
        .unwrap_or_else(|err| panic!("output: {err}; reported: {log:?}"));
    assert_eq!(out.body, Bytes::from("HELLO"));
    // The output names the upload it came from (the gateway serves it by that name).
    assert_eq!(
        out.info
            .metadata
            .get(sluice_processor::functions::UPLOAD_ID_METADATA)
            .map(String::as_str),
        Some("u1"),
        "{:?}",
        out.info
    );
    assert!(
        log.contains(&"succeeded u1 sluice/processed/a.txt".to_owned()),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("failed u2: content is not UTF-8")),
        "{log:?}"
    );
    e.stop(handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_lambda_mapping_with_partial_failures_bisect_and_logs() {
    use sluice_processor::embedded::EmbeddedMappings;
    use sluice_processor::lambda::LambdaEnvironment;
    use sluice_processor::logs::EmbeddedLogs;
    use sluice_processor::{FunctionSpec, MappingDefinition, MappingStore};

    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    let code = e._dir.dir().join("processor");
    std::fs::create_dir_all(&code).expect("mkdir");
    std::fs::write(
        code.join("index.mjs"),
        r#"
export const handler = async (event, context) => {
  const batchItemFailures = [];
  for (const r of event.Records) {
    const text = Buffer.from(r.kinesis.data, 'base64').toString();
    console.log('record', text, 'for', process.env.PROCESSED_BUCKET);
    if (text === 'bad') batchItemFailures.push({ itemIdentifier: r.kinesis.sequenceNumber });
  }
  return { batchItemFailures };
};
"#,
    )
    .expect("handler");
    let seqs = e.put_all("s", &["ok1", "bad", "ok2"]).await;

    let mut cfg = MappingConfig::new("m", "s");
    cfg.starting_position = StartingPosition::TrimHorizon;
    cfg.function_response_types = vec!["ReportBatchItemFailures".into()];
    cfg.bisect_batch_on_function_error = true;
    cfg.set_maximum_retry_attempts(0).expect("retries");
    cfg.on_failure = Some(DestinationSpec::parse("s3://sluice/failed/").expect("dest"));
    let spec = FunctionSpec::parse(
        &format!("lambda:nodejs:{}/index.handler", code.display()),
        &[],
    )
    .expect("spec");
    let mut def = MappingDefinition::new(cfg, spec);
    def.settings
        .environment
        .insert("PROCESSED_BUCKET".into(), "sluice".into());
    let mappings = EmbeddedMappings::new(e.db.clone());
    mappings.create(def).await.expect("create mapping");
    let def = mappings.get("m").await.expect("get mapping");

    let logs = EmbeddedLogs::new(e.db.clone());
    let p = e.processor().with_logs(Arc::new(logs.clone()));
    let handles = p
        .start_definition(
            &def,
            &LambdaEnvironment::new(e._dir.dir().join("runtime")),
            e.shutdown.subscribe(),
        )
        .await
        .expect("start");
    eventually_async("checkpoint at the last record", || async {
        e.checkpoint("m", SHARD0).await.as_deref() == Some(seqs[2].as_str())
    })
    .await;
    let failures = failure_objects(&e, "sluice", "failed/").await;
    assert_eq!(failures.len(), 1, "only the bad record is given up on");
    assert_eq!(
        failures[0]["KinesisBatchInfo"]["startSequenceNumber"],
        seqs[1].as_str()
    );
    assert_eq!(failures[0]["KinesisBatchInfo"]["batchSize"], 1);
    let stats = p.stats()["m"].clone();
    assert_eq!((stats.succeeded, stats.failed), (2, 1));
    assert_eq!(stats.state, "Enabled");

    let lines = logs.tail("m", 100).await.expect("tail");
    assert!(
        lines
            .iter()
            .any(|l| l.line.starts_with("START RequestId: "))
    );
    let rec = lines
        .iter()
        .find(|l| l.stream == "stdout" && l.line.ends_with("\tINFO\trecord ok1 for sluice"))
        .expect("handler output in the log");
    assert!(
        rec.line.contains(&rec.request_id),
        "lines carry their request id"
    );
    e.stop(handles).await;
    assert_eq!(p.stats()["m"].state, "Disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_follows_create_disable_update_delete() {
    use sluice_processor::embedded::EmbeddedMappings;
    use sluice_processor::lambda::LambdaEnvironment;
    use sluice_processor::runner::MappingRunner;
    use sluice_processor::{FunctionSpec, MappingDefinition, MappingStore};

    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    e.store.ensure_bucket("sluice").await.expect("bucket");
    e.store
        .put(
            "sluice",
            "uploads/a.txt",
            Bytes::from("abc"),
            Default::default(),
        )
        .await
        .expect("put");
    let store = Arc::new(EmbeddedMappings::new(e.db.clone()));
    let p = e.processor();
    let runner = MappingRunner::new(
        p.clone(),
        store.clone(),
        LambdaEnvironment::new(e._dir.dir().join("runtime")),
    );
    let mut cfg = MappingConfig::new("copy", "s");
    cfg.starting_position = StartingPosition::TrimHorizon;
    store
        .create(MappingDefinition::new(
            cfg,
            FunctionSpec::parse("builtin:copy", &[]).expect("spec"),
        ))
        .await
        .expect("create");
    let r = runner.sync().await.expect("sync");
    assert_eq!(r.started, ["copy"]);
    e.put("s", "k", r#"{"bucket":"sluice","key":"uploads/a.txt"}"#)
        .await;
    eventually_async("copied", || async {
        e.store.get("sluice", "processed/a.txt").await.is_ok()
    })
    .await;

    store.disable("copy").await.expect("disable");
    let r = runner.sync().await.expect("sync");
    assert_eq!(r.stopped, ["copy"]);
    assert!(runner.running().await.is_empty());
    assert_eq!(p.stats()["copy"].state, "Disabled");

    let mut def = store.enable("copy").await.expect("enable");
    def.function = FunctionSpec::parse("builtin:manifest", &[]).expect("spec");
    store.update(def).await.expect("update");
    let r = runner.sync().await.expect("sync");
    assert_eq!(r.started, ["copy"]);
    e.put("s", "k", r#"{"bucket":"sluice","key":"uploads/a.txt"}"#)
        .await;
    eventually_async("manifest written", || async {
        e.store
            .get("sluice", "processed/a.txt.manifest.json")
            .await
            .is_ok()
    })
    .await;

    store.delete("copy").await.expect("delete");
    let r = runner.sync().await.expect("sync");
    assert_eq!(r.stopped, ["copy"]);
    runner.stop_all().await;
}

/// Holds its batch until the observer was told `started` for it: a batch that is still
/// running after a moment shows `processing`, and its outcome comes after.
struct WaitsForStarted(Arc<Seen>);

#[async_trait]
impl BatchFunction for WaitsForStarted {
    fn name(&self) -> &str {
        "waits-for-started"
    }
    async fn invoke(
        &self,
        _input: &BatchInput,
        _ctx: &CallContext,
    ) -> Result<BatchResponse, FunctionError> {
        while !self
            .0
            .0
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l == "started u1")
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(BatchResponse::Returned(serde_json::Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_batches_report_started_before_the_outcome() {
    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    let seen = Arc::new(Seen::default());
    let p = e.processor_with(seen.clone());
    let mut m = MappingConfig::new("m", "s");
    m.starting_position = StartingPosition::TrimHorizon;
    let handles = p
        .start_batch(
            m,
            Arc::new(WaitsForStarted(seen.clone())),
            e.shutdown.subscribe(),
        )
        .await
        .expect("start");
    e.put_all(
        "s",
        &[r#"{"bucket":"b","key":"uploads/a","uploadId":"u1"}"#],
    )
    .await;
    eventually("the upload resolved", || {
        seen.0.lock().expect("lock").len() >= 2
    })
    .await;
    let log = seen.0.lock().expect("lock").clone();
    assert_eq!(
        log,
        vec![
            "started u1".to_owned(),
            "succeeded u1 b/processed/a".to_owned()
        ]
    );
    e.stop(handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_functions_report_the_first_failure_in_sequence_order() {
    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    e.store.ensure_bucket("sluice").await.expect("bucket");
    // 40 records (more than run at once), the 13th not UTF-8: the 12 before it succeed,
    // the 13th is the batch's failure point. Its retries exhausted, only it is given up
    // (an object function's failure is its record's): every other record succeeds, and
    // outcomes are reported in sequence order.
    let mut data = Vec::new();
    for i in 0..40 {
        let body = if i == 12 {
            Bytes::from_static(&[0xff])
        } else {
            Bytes::from(format!("r{i}"))
        };
        e.store
            .put("sluice", &format!("uploads/{i}"), body, Default::default())
            .await
            .expect("put");
        data.push(format!(
            r#"{{"bucket":"sluice","key":"uploads/{i}","uploadId":"u{i}"}}"#
        ));
    }
    let refs: Vec<&str> = data.iter().map(String::as_str).collect();
    let seen = Arc::new(Seen::default());
    let p = e.processor_with(seen.clone());
    let mut m = MappingConfig::new("m", "s");
    m.starting_position = StartingPosition::TrimHorizon;
    m.set_maximum_retry_attempts(0).expect("retries");
    let handles = p
        .start(
            m,
            Arc::new(sluice_processor::functions::Uppercase),
            e.shutdown.subscribe(),
        )
        .await
        .expect("start");
    let seqs = e.put_all("s", &refs).await;
    let shard = sluice_stream::shard_id(0);
    eventually_async("every record done", || async {
        e.checkpoint("m", &shard).await.as_deref() == seqs.last().map(String::as_str)
    })
    .await;
    let log = seen.0.lock().expect("lock").clone();
    let outcomes: Vec<&String> = log.iter().filter(|l| !l.starts_with("started")).collect();
    assert_eq!(outcomes.len(), 40, "{log:?}");
    for (i, l) in outcomes.iter().enumerate() {
        if i == 12 {
            assert!(l.starts_with("failed u12: content is not UTF-8"), "{l}");
        } else {
            assert_eq!(**l, format!("succeeded u{i} sluice/processed/{i}"));
        }
    }
    let out = e.store.get("sluice", "processed/39").await.expect("output");
    assert_eq!(out.body, Bytes::from("R39"));
    e.stop(handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_limits_fail_only_their_record_and_large_outputs_stream() {
    use sluice_processor::functions::{BATCHED_OUTPUT_MAX, Manifest, Uppercase};
    let e = env();
    e.stream.create_stream("s", 1).await.expect("create");
    e.stream.create_stream("t", 1).await.expect("create");
    e.store.ensure_bucket("sluice").await.expect("bucket");
    // Records 0 and 2 small, record 1 over the manifest's limit (and in a blob of its own),
    // record 3 a large text whose output streams to the store (past what a batch gathers),
    // record 4 a large text whose last byte is not UTF-8 (its output already streaming).
    let big = 3 * BATCHED_OUTPUT_MAX;
    let text: String = "straße 日本 ".chars().cycle().take(big).collect();
    let mut bad = text.clone().into_bytes();
    bad.push(0xff);
    let bodies: Vec<Bytes> = vec![
        Bytes::from("small"),
        Bytes::from(vec![b'x'; 200 * 1024]),
        Bytes::from("tiny"),
        Bytes::from(text.clone()),
        Bytes::from(bad.clone()),
    ];
    let mut data = Vec::new();
    for (i, body) in bodies.into_iter().enumerate() {
        e.store
            .put("sluice", &format!("uploads/{i}"), body, Default::default())
            .await
            .expect("put");
        data.push(format!(
            r#"{{"bucket":"sluice","key":"uploads/{i}","uploadId":"u{i}"}}"#
        ));
    }
    let refs: Vec<&str> = data.iter().map(String::as_str).collect();

    // The manifest (an in-memory function) with a 100 KiB limit.
    let seen = Arc::new(Seen::default());
    let p = e.processor_with(seen.clone());
    let mut m = MappingConfig::new("m", "s");
    m.starting_position = StartingPosition::TrimHorizon;
    m.set_maximum_retry_attempts(0).expect("retries");
    let handles = p
        .start(
            m,
            Arc::new(Manifest::with_limit(100 * 1024)),
            e.shutdown.subscribe(),
        )
        .await
        .expect("start");
    let seqs = e.put_all("s", &refs[..3]).await;
    let shard = sluice_stream::shard_id(0);
    eventually_async("every manifest record done", || async {
        e.checkpoint("m", &shard).await.as_deref() == seqs.last().map(String::as_str)
    })
    .await;
    let log = seen.0.lock().expect("lock").clone();
    let outcomes: Vec<&String> = log.iter().filter(|l| !l.starts_with("started")).collect();
    assert_eq!(
        outcomes,
        [
            "succeeded u0 sluice/processed/0.manifest.json",
            "failed u1: object is 204800 bytes, more than the 102400 bytes the manifest \
             function reads into memory (use a streaming function for larger objects)",
            "succeeded u2 sluice/processed/2.manifest.json",
        ],
        "{log:?}"
    );
    assert!(matches!(
        e.store.head("sluice", "processed/1.manifest.json").await,
        Err(sluice_store::StoreError::NoSuchKey { .. })
    ));

    // Uppercase streams large objects both ways; a failure late in the output stores
    // nothing and fails only its record.
    let seen = Arc::new(Seen::default());
    let p = e.processor_with(seen.clone());
    let mut m = MappingConfig::new("u", "t");
    m.starting_position = StartingPosition::TrimHorizon;
    m.set_maximum_retry_attempts(0).expect("retries");
    let more = p
        .start(m, Arc::new(Uppercase), e.shutdown.subscribe())
        .await
        .expect("start");
    let seqs = e.put_all("t", &[refs[3], refs[4], refs[0]]).await;
    eventually_async("every uppercase record done", || async {
        e.checkpoint("u", &shard).await.as_deref() == seqs.last().map(String::as_str)
    })
    .await;
    let log = seen.0.lock().expect("lock").clone();
    let outcomes: Vec<&String> = log.iter().filter(|l| !l.starts_with("started")).collect();
    assert_eq!(outcomes.len(), 3, "{log:?}");
    assert_eq!(outcomes[0], "succeeded u3 sluice/processed/3");
    assert_eq!(
        *outcomes[1],
        format!(
            "failed u4: content is not UTF-8 text (invalid byte at offset {})",
            text.len()
        )
    );
    assert_eq!(outcomes[2], "succeeded u0 sluice/processed/0");
    let out = e.store.get("sluice", "processed/3").await.expect("output");
    assert!(
        out.body == text.to_uppercase().as_bytes(),
        "large output differs"
    );
    assert!(matches!(
        e.store.head("sluice", "processed/4").await,
        Err(sluice_store::StoreError::NoSuchKey { .. })
    ));
    e.stop(handles).await;
    e.stop(more).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_processors_share_shards_keep_parents_before_children_and_take_over() {
    use sluice_processor::leases::ShardLeases;
    let e = env();
    e.stream.create_stream("s", 2).await.expect("create");
    for i in 0..40 {
        e.put("s", &format!("k{i}"), &format!("k{i}:p")).await;
    }
    // Shard 0 splits into shards 2 and 3; shard 1 stays open.
    e.stream
        .split_shard("s", SHARD0, u128::MAX / 4)
        .await
        .expect("split");
    for i in 0..40 {
        e.put("s", &format!("k{i}"), &format!("k{i}:c")).await;
    }
    let f = Recorder::ok();
    let mut m = MappingConfig::new("m", "s");
    m.starting_position = StartingPosition::TrimHorizon;
    m.batch_size = 4;
    let leased = |owner: &str| {
        let leases = ShardLeases::new(e.db.clone(), owner, Duration::from_secs(3));
        Processor::new(
            Arc::new(e.stream.clone()),
            Arc::new(e.store.clone()),
            Arc::new(EmbeddedCheckpoints::new(e.db.clone()).with_leases(leases.clone())),
            Arc::new(NoObserver),
        )
        .with_leases(leases)
    };
    let (stop_a, stop_b) = (watch::channel(false).0, watch::channel(false).0);
    let a = leased("a")
        .start_batch(m.clone(), f.clone(), stop_a.subscribe())
        .await
        .expect("start a");
    let b = leased("b")
        .start_batch(m.clone(), f.clone(), stop_b.subscribe())
        .await
        .expect("start b");
    eventually("all 80 records delivered", || {
        f.delivered()
            .into_iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= 80
    })
    .await;
    let d = f.delivered();
    for i in 0..40 {
        let p = d.iter().position(|x| *x == format!("k{i}:p")).expect("p");
        let c = d.iter().position(|x| *x == format!("k{i}:c")).expect("c");
        assert!(p < c, "k{i}: its record before the split came first: {d:?}");
    }
    let owners: Vec<Option<String>> =
        e.db.read(|c| {
            c.query_vec(
                "SELECT owner FROM shard_leases WHERE finished = 0 ORDER BY shard_id",
                sluice_meta::params![],
                |r| r.get(0),
            )
        })
        .await
        .expect("owners");
    assert_eq!(
        owners.len(),
        3,
        "shard 0 finished, 1, 2 and 3 open: {owners:?}"
    );

    // a leaves: b takes its shards at once and processes what comes next.
    stop_a.send_replace(true);
    for h in a {
        h.await.expect("a stops");
    }
    for i in 0..40 {
        e.put("s", &format!("k{i}"), &format!("k{i}:after")).await;
    }
    eventually("the records after a left delivered", || {
        (0..40).all(|i| f.delivered().contains(&format!("k{i}:after")))
    })
    .await;
    stop_b.send_replace(true);
    for h in b {
        h.await.expect("b stops");
    }
    let held: i64 =
        e.db.read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM shard_leases WHERE owner IS NOT NULL",
                sluice_meta::params![],
                |r| r.get(0),
            )
        })
        .await
        .expect("count");
    assert_eq!(held, 0, "leases given back");
}
