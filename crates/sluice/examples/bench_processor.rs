//! Benchmark of event-source mappings on the embedded backends, wired as `sluice serve`
//! wires them (one database, group commit, buffered function logs), each figure beside a
//! baseline measured in the same run:
//!
//! 1. records/s through a mapping with the no-op built-in (`builtin:noop`), batch sizes 100
//!    and 1,000, 4 shards — beside reading the same records with `get_records`;
//! 2. records/s through `uppercase` on 1 KiB objects — beside the same get/upper-case/put
//!    work done by 4 plain tasks (one per shard) without the mapping;
//! 3. upload-to-processed latency p50/p99 at a steady rate (default 2,000 uploads/s) through
//!    the built-in mapping as `serve` runs it (batch 10, upload status rows) — beside the
//!    upload commit latency itself;
//! 4. one warm `lambda` batch invocation (Node.js and Python, 10 records) — beside an
//!    in-process call of the no-op function.
//!
//! Usage: `cargo run --release -p sluice --example bench_processor -- [--dir DIR]
//! [--records N] [--objects N] [--rate PER_SEC] [--seconds N] [--invocations N]
//! [--only noop,uppercase,latency,lambda]`

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use bytes::Bytes;
use sluice_meta::{Meta, Migration};
use sluice_processor::embedded::EmbeddedCheckpoints;
use sluice_processor::functions::{self, Noop};
use sluice_processor::lambda::{LambdaEnvironment, LambdaFunction};
use sluice_processor::logs::{BufferedLogs, EmbeddedLogs};
use sluice_processor::mappings::{FunctionSettings, LambdaRuntime};
use sluice_processor::{
    BatchFunction, BatchInput, CallContext, Checkpoints, MappingConfig, NoObserver, Observer,
    Processor, StartingPosition, StatusUpdate, TxWrite,
};
use sluice_store::embedded::EmbeddedStore;
use sluice_store::{ObjectStore, PutOptions};
use sluice_stream::embedded::EmbeddedStream;
use sluice_stream::{IteratorSpec, PutRecord, Record, Stream, shard_id};
use sluice_uploads::embedded::EmbeddedUploads;
use sluice_uploads::{NewUpload, UploadLedger, UploadSink};
use tokio::sync::watch;

const SHARDS: u32 = 4;

struct Args {
    dir: PathBuf,
    records: usize,
    objects: usize,
    rate: u64,
    seconds: u64,
    invocations: usize,
    /// Sections to run (`noop`, `uppercase`, `latency`, `lambda`); empty = all.
    only: Vec<String>,
}

impl Args {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn args() -> Result<Args> {
    let mut a = Args {
        dir: std::env::temp_dir(),
        records: 200_000,
        objects: 20_000,
        rate: 2_000,
        seconds: 10,
        invocations: 2_000,
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        let num = |v: &str| -> Result<u64> {
            v.parse()
                .with_context(|| format!("{flag} takes a number, got {v:?}"))
        };
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(v),
            "--records" => a.records = num(&v)? as usize,
            "--objects" => a.objects = num(&v)? as usize,
            "--rate" => a.rate = num(&v)?.max(1),
            "--seconds" => a.seconds = num(&v)?.max(1),
            "--invocations" => a.invocations = num(&v)? as usize,
            "--only" => {
                a.only = v.split(',').map(|s| s.trim().to_owned()).collect();
                for s in &a.only {
                    if !["noop", "uppercase", "latency", "lambda"].contains(&s.as_str()) {
                        bail!("unknown section {s:?} (noop, uppercase, latency, lambda)");
                    }
                }
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn migrations() -> Vec<Migration> {
    let mut all = Vec::new();
    for part in [
        sluice_store::embedded::MIGRATIONS,
        sluice_stream::embedded::MIGRATIONS,
        sluice_uploads::embedded::MIGRATIONS,
        sluice_processor::embedded::MIGRATIONS,
    ] {
        all.extend_from_slice(part);
    }
    all
}

struct Env {
    _dir: tempfile::TempDir,
    db: Meta,
    stream: EmbeddedStream,
    store: EmbeddedStore,
    logs: BufferedLogs,
}

async fn env(base: &std::path::Path) -> Result<Env> {
    let dir = tempfile::Builder::new()
        .prefix("bench-processor-")
        .tempdir_in(base)?;
    let db = Meta::open_sqlite(&dir.path().join("sluice.db"), &migrations())?;
    let store = EmbeddedStore::open(db.clone(), &dir.path().join("blobs"))?;
    store.ensure_bucket("sluice").await?;
    let stream = EmbeddedStream::open(db.clone(), &dir.path().join("log"))?;
    let logs = BufferedLogs::start(EmbeddedLogs::new(db.clone()));
    Ok(Env {
        _dir: dir,
        db,
        stream,
        store,
        logs,
    })
}

impl Env {
    fn processor(&self, observer: Arc<dyn Observer>) -> Processor {
        Processor::new(
            Arc::new(self.stream.clone()),
            Arc::new(self.store.clone()),
            Arc::new(EmbeddedCheckpoints::new(self.db.clone())),
            observer,
        )
        .with_logs(Arc::new(self.logs.clone()))
    }

    /// Last sequence number of every shard.
    async fn tails(&self, stream: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let shard = shard_id(u64::from(i));
            let it = self
                .stream
                .get_shard_iterator(stream, &shard, IteratorSpec::TrimHorizon)
                .await?;
            let mut it = Some(it);
            let mut last = None;
            while let Some(i) = it.take() {
                let o = self.stream.get_records(&i, 10_000).await?;
                if o.records.is_empty() {
                    break;
                }
                last = o.records.last().map(|r| r.sequence_number.clone());
                it = o.next_iterator;
            }
            if let Some(l) = last {
                out.push((shard, l));
            }
        }
        Ok(out)
    }

    /// Waits until a mapping's checkpoints reached every tail.
    async fn wait_done(&self, mapping: &str, tails: &[(String, String)]) -> Result<()> {
        let cps = EmbeddedCheckpoints::new(self.db.clone());
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let mut all = true;
            for (shard, last) in tails {
                if cps.load(mapping, shard).await?.as_deref() != Some(last.as_str()) {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("mapping {mapping} did not finish");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

async fn put_records(stream: &EmbeddedStream, name: &str, data: Vec<Bytes>) -> Result<()> {
    let mut chunks = Vec::new();
    for (i, chunk) in data.chunks(500).enumerate() {
        let recs: Vec<PutRecord> = chunk
            .iter()
            .enumerate()
            .map(|(j, d)| PutRecord {
                partition_key: format!("pk-{i}-{j}"),
                explicit_hash_key: None,
                data: d.clone(),
            })
            .collect();
        chunks.push(recs);
    }
    let mut set = tokio::task::JoinSet::new();
    for recs in chunks {
        let s = stream.clone();
        let n = name.to_owned();
        set.spawn(async move { s.put_records(&n, recs).await });
        while set.len() >= 16 {
            if let Some(r) = set.join_next().await {
                r??;
            }
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

fn rate(n: usize, d: Duration) -> u64 {
    (n as f64 / d.as_secs_f64()) as u64
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

async fn run_mapping(
    e: &Env,
    cfg: MappingConfig,
    f: Arc<dyn BatchFunction>,
    observer: Arc<dyn Observer>,
    tails: &[(String, String)],
) -> Result<Duration> {
    let (tx, rx) = watch::channel(false);
    let started = Instant::now();
    let name = cfg.name.clone();
    let handles = e.processor(observer).start_batch(cfg, f, rx).await?;
    e.wait_done(&name, tails).await?;
    let took = started.elapsed();
    tx.send_replace(true);
    for h in handles {
        let _ = h.await;
    }
    Ok(took)
}

async fn bench_noop(a: &Args) -> Result<()> {
    let e = env(&a.dir).await?;
    e.stream.create_stream("noop", SHARDS).await?;
    let data: Vec<Bytes> = (0..a.records)
        .map(|i| Bytes::from(format!(r#"{{"bucket":"sluice","key":"uploads/r{i}.txt"}}"#)))
        .collect();
    put_records(&e.stream, "noop", data).await?;
    let t = Instant::now();
    let tails = e.tails("noop").await?;
    let read = t.elapsed();
    println!(
        "| get_records from TRIM_HORIZON, 4 shards one after another (baseline) | {} | {} |",
        a.records,
        rate(a.records, read)
    );
    for batch in [100usize, 1000] {
        let mut cfg = MappingConfig::new(format!("noop-{batch}"), "noop");
        cfg.batch_size = batch;
        cfg.starting_position = StartingPosition::TrimHorizon;
        let took = run_mapping(&e, cfg, Arc::new(Noop), Arc::new(NoObserver), &tails).await?;
        println!(
            "| mapping → builtin:noop, batch size {batch} | {} | {} |",
            a.records,
            rate(a.records, took)
        );
    }
    Ok(())
}

async fn bench_uppercase(a: &Args) -> Result<()> {
    let e = env(&a.dir).await?;
    e.stream.create_stream("objs", SHARDS).await?;
    let body = Bytes::from(
        "the quick brown fox jumps over the lazy dog, 1 KiB of text. "
            .repeat(20)
            .into_bytes()[..1024]
            .to_vec(),
    );
    let keys: Vec<String> = (0..a.objects)
        .map(|i| format!("uploads/o{i}.txt"))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for k in keys.clone() {
        let s = e.store.clone();
        let b = body.clone();
        set.spawn(async move {
            s.put(
                "sluice",
                &k,
                b,
                PutOptions {
                    content_type: Some("text/plain".into()),
                    ..Default::default()
                },
            )
            .await
        });
        while set.len() >= 64 {
            if let Some(r) = set.join_next().await {
                r??;
            }
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let data: Vec<Bytes> = keys
        .iter()
        .map(|k| Bytes::from(format!(r#"{{"bucket":"sluice","key":"{k}"}}"#)))
        .collect();
    put_records(&e.stream, "objs", data).await?;
    let tails = e.tails("objs").await?;

    // Baseline: the same work, 4 plain tasks (one per shard's share), no mapping.
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for part in keys.chunks(keys.len().div_ceil(SHARDS as usize)) {
        let part = part.to_vec();
        let s = e.store.clone();
        set.spawn(async move {
            let f = functions::Uppercase;
            for k in part {
                let o = s.get("sluice", &k).await?;
                let out = sluice_processor::Function::call(&f, o.body, &o.info)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let key = k.replacen("uploads/", "baseline/", 1);
                s.put(
                    "sluice",
                    &key,
                    out,
                    PutOptions {
                        content_type: Some(o.info.content_type.clone()),
                        ..Default::default()
                    },
                )
                .await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let base = t.elapsed();
    println!(
        "| get + upper-case + put, 4 plain tasks (baseline) | {} | {} |",
        a.objects,
        rate(a.objects, base)
    );
    let mut cfg = MappingConfig::new("upper", "objs");
    cfg.batch_size = 100;
    cfg.starting_position = StartingPosition::TrimHorizon;
    let processor = e.processor(Arc::new(NoObserver));
    let f = Arc::new(sluice_processor::ObjectFunction::new(
        Arc::new(functions::Uppercase),
        Arc::new(e.store.clone()),
        None,
        "processed/".into(),
    ));
    drop(processor);
    let took = run_mapping(&e, cfg, f, Arc::new(NoObserver), &tails).await?;
    println!(
        "| mapping → builtin:uppercase, 1 KiB objects, batch size 100 | {} | {} |",
        a.objects,
        rate(a.objects, took)
    );
    Ok(())
}

/// Upload status follows the records as `sluice_uploads::LedgerObserver` does (status rows
/// committed with the checkpoint, `processing` only for slow batches), and notes when
/// each upload's `processed` row was durable (the first time).
struct Timed {
    ledger: EmbeddedUploads,
    done: Mutex<HashMap<String, Instant>>,
}

impl Timed {
    fn note(&self, updates: &[StatusUpdate]) {
        let now = Instant::now();
        if let Ok(mut d) = self.done.lock() {
            for u in updates {
                if let StatusUpdate::Succeeded { upload_id, .. } = u {
                    d.entry(upload_id.clone()).or_insert(now);
                }
            }
        }
    }
}

#[async_trait]
impl Observer for Timed {
    async fn started(&self, id: &str) {
        let _ = self.ledger.mark_processing(id).await;
    }
    async fn succeeded(&self, id: &str, bucket: &str, key: &str) {
        let _ = self.ledger.mark_processed(id, bucket, key).await;
    }
    async fn failed(&self, id: &str, error: &str) {
        let _ = self.ledger.mark_failed(id, error).await;
    }
    async fn report(&self, updates: Vec<StatusUpdate>) {
        if self
            .ledger
            .apply(sluice_uploads::observer::status_changes(&updates))
            .await
            .is_ok()
        {
            self.note(&updates);
        }
    }
    fn write_with(&self, db: &Meta, updates: &[StatusUpdate]) -> Option<TxWrite> {
        sluice_uploads::observer::write_in(&self.ledger, db, updates)
    }
    fn written(&self, updates: &[StatusUpdate]) {
        self.note(updates);
    }
}

async fn bench_latency(a: &Args) -> Result<()> {
    let e = env(&a.dir).await?;
    e.stream.create_stream("uploads-stream", SHARDS).await?;
    let uploads = EmbeddedUploads::new(e.db.clone(), e.store.clone(), e.stream.clone());
    let timed = Arc::new(Timed {
        ledger: uploads.clone(),
        done: Mutex::new(HashMap::new()),
    });
    let (tx, rx) = watch::channel(false);
    let mut cfg = MappingConfig::new("builtin-uppercase", "uploads-stream");
    cfg.batch_size = 10;
    cfg.max_attempts = 3;
    let handles = e
        .processor(timed.clone())
        .start(cfg, Arc::new(functions::Uppercase), rx)
        .await?;
    // Let the workers reach the tail before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let total = (a.rate * a.seconds) as usize;
    let period = Duration::from_secs_f64(1.0 / a.rate as f64);
    let started = Instant::now();
    let sent: Arc<Mutex<Vec<(String, Instant, Duration)>>> =
        Arc::new(Mutex::new(Vec::with_capacity(total)));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..total {
        let at = started + period.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        let u = uploads.clone();
        let sent = sent.clone();
        set.spawn(async move {
            // From the scheduled time, not from when the task got to run: a generator that
            // falls behind must not hide the delay (coordinated omission).
            let t0 = at;
            let up = u
                .commit(NewUpload {
                    user_sub: "bench".into(),
                    bucket: "sluice".into(),
                    key: format!("uploads/lat-{i}.txt"),
                    filename: format!("lat-{i}.txt"),
                    body: Bytes::from_static(b"hello kinesis"),
                    content_type: "text/plain".into(),
                    metadata: Default::default(),
                    tags: Vec::new(),
                    headers: Default::default(),
                    request_id: format!("req-{i}"),
                    stream: "uploads-stream".into(),
                    partition_key: format!("pk-{i}"),
                })
                .await?;
            if let Ok(mut s) = sent.lock() {
                s.push((up.id, t0, t0.elapsed()));
            }
            Ok::<_, anyhow::Error>(())
        });
        while let Some(r) = set.try_join_next() {
            r??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let offered = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = timed.done.lock().map(|d| d.len()).unwrap_or(0);
        if n >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send_replace(true);
    for h in handles {
        let _ = h.await;
    }
    let sent = sent.lock().map(|s| s.clone()).unwrap_or_default();
    let done = timed.done.lock().map(|d| d.clone()).unwrap_or_default();
    let mut commit: Vec<Duration> = sent.iter().map(|s| s.2).collect();
    let mut processed: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, t0, _)| done.get(id).map(|t| t.duration_since(*t0)))
        .collect();
    commit.sort();
    processed.sort();
    println!(
        "| upload commit (object + record + status row, acknowledged) (baseline) | {} | {} | {:.2} | {:.2} |",
        commit.len(),
        rate(commit.len(), offered),
        pct(&commit, 0.5),
        pct(&commit, 0.99)
    );
    println!(
        "| upload → status processed (builtin-uppercase, batch 10) | {} of {} | {} | {:.2} | {:.2} |",
        processed.len(),
        total,
        rate(total, offered),
        pct(&processed, 0.5),
        pct(&processed, 0.99)
    );
    Ok(())
}

fn batch_of(n: usize) -> BatchInput {
    BatchInput {
        stream: "s".into(),
        stream_arn: "arn:aws:kinesis:us-east-2:000000000000:stream/s".into(),
        shard_id: shard_id(0),
        region: "us-east-2".into(),
        invoke_identity_arn: "arn:aws:iam::000000000000:role/sluice".into(),
        records: (0..n)
            .map(|i| Record {
                sequence_number: format!("{}", 1000 + i),
                partition_key: "pk".into(),
                data: Bytes::from(format!(r#"{{"bucket":"sluice","key":"uploads/{i}"}}"#)),
                approximate_arrival_ms: 1_700_000_000_000,
            })
            .collect(),
    }
}

async fn time_invocations(f: &dyn BatchFunction, n: usize) -> Result<Vec<Duration>> {
    let input = batch_of(10);
    // Warm up: the first call starts the worker.
    f.invoke(&input, &CallContext::new("bench"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ctx = CallContext::new("bench");
        let t = Instant::now();
        f.invoke(&input, &ctx)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

async fn bench_lambda(a: &Args) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("bench-lambda-")
        .tempdir_in(&a.dir)?;
    let code = dir.path().join("code");
    std::fs::create_dir_all(&code)?;
    std::fs::write(
        code.join("index.mjs"),
        "export const handler = async (event) => ({ n: event.Records.length });\n",
    )?;
    std::fs::write(
        code.join("handler.py"),
        "def handler(event, context):\n    return {\"n\": len(event[\"Records\"])}\n",
    )?;
    let base = time_invocations(&Noop, a.invocations).await?;
    println!(
        "| in-process call of builtin:noop, 10 records (baseline) | {} | {:.3} | {:.3} |",
        a.invocations,
        pct(&base, 0.5),
        pct(&base, 0.99)
    );
    let env = LambdaEnvironment::new(dir.path().join("runtime"));
    for (rt, handler, label) in [
        (LambdaRuntime::Nodejs, "index.handler", "lambda:nodejs"),
        (LambdaRuntime::Python, "handler.handler", "lambda:python"),
    ] {
        let f = LambdaFunction::new(
            "bench",
            rt,
            &code,
            handler,
            FunctionSettings::default(),
            env.clone(),
        )?;
        let t = time_invocations(&f, a.invocations).await?;
        println!(
            "| warm {label} invocation, 10 records | {} | {:.3} | {:.3} |",
            a.invocations,
            pct(&t, 0.5),
            pct(&t, 0.99)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        if a.runs("noop") {
            println!("\n### Records/s through a mapping (no-op function)\n");
            println!("| what | records | records/s |\n|---|---|---|");
            bench_noop(&a).await?;
        }
        if a.runs("uppercase") {
            println!("\n### Records/s through `uppercase` on 1 KiB objects\n");
            println!("| what | objects | objects/s |\n|---|---|---|");
            bench_uppercase(&a).await?;
        }
        if a.runs("latency") {
            println!(
                "\n### Upload-to-processed latency at a steady {} uploads/s for {} s\n",
                a.rate, a.seconds
            );
            println!("| what | uploads | offered/s | p50 ms | p99 ms |\n|---|---|---|---|---|");
            bench_latency(&a).await?;
        }
        if a.runs("lambda") {
            println!("\n### One warm lambda batch invocation\n");
            println!("| what | invocations | p50 ms | p99 ms |\n|---|---|---|---|");
            bench_lambda(&a).await?;
        }
        Ok(())
    })
}
