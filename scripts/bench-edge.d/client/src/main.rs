//! The client side of `scripts/bench-edge`: the AWS SDK for Rust, `level` concurrent tokio
//! tasks sharing one client (one keep-alive HTTP/1.1 connection pool) per target. Targets are
//! measured interleaved (for each operation and concurrency, one after another), so each
//! figure stands beside the others taken a few seconds apart.
//!
//!   bench-edge-client CONFIG.json RESULTS.json
//!
//! Progress goes to stderr; every measurement is written to RESULTS.json (read by
//! `report.cjs`). The config is written by `scripts/bench-edge`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_cognitoidentityprovider as cog;
use aws_sdk_kinesis as kin;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3 as s3;
use aws_smithy_http_client::Builder as HttpClientBuilder;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Target {
    name: String,
    endpoint: String,
    region: String,
    pid: Option<u32>,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    null: bool,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    seconds: f64,
    warmup_seconds: f64,
    levels: Vec<usize>,
    auth_levels: Vec<usize>,
    clock_ticks: f64,
    record_bytes: usize,
    /// GetRecords is measured once per limit; the first is reported as "GetRecords", the
    /// others as "GetRecords, Limit N".
    get_limits: Vec<i32>,
    shards: i32,
    read_records: usize,
    object_bytes: usize,
    get_objects: usize,
    kinesis: Vec<Target>,
    cognito: Vec<Target>,
    s3: Vec<Target>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Measurement {
    what: String,
    target: String,
    level: usize,
    ops: u64,
    per_sec: f64,
    items_per_sec: f64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    p50: Option<f64>,
    p99: Option<f64>,
    seconds: f64,
    client_cpu_us_per_op: Option<f64>,
    server_cpu_us_per_op: Option<f64>,
    server_cores: Option<f64>,
    client_cores: Option<f64>,
}

const STREAM: &str = "bench-edge";
const READ_STREAM: &str = "bench-edge-read";
const BUCKET: &str = "bench-edge";

fn log(msg: impl AsRef<str>) {
    eprintln!("[bench-edge-client] {}", msg.as_ref());
}

/// An SDK error's exception name (or failure kind) and its full message.
fn describe<E, R>(e: &SdkError<E, R>) -> (String, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let kind = e.code().map(str::to_owned).unwrap_or_else(|| {
        match e {
            SdkError::ConstructionFailure(_) => "ConstructionFailure",
            SdkError::TimeoutError(_) => "TimeoutError",
            SdkError::DispatchFailure(_) => "DispatchFailure",
            SdkError::ResponseError(_) => "ResponseError",
            _ => "ServiceError",
        }
        .to_owned()
    });
    (kind, DisplayErrorContext(e).to_string())
}

type OpError = (String, String);

/// CPU time (ms) a process has used so far, all threads: utime + stime from /proc.
fn cpu_ms(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split(' ').collect();
    let t = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(t * 1000.0 / ticks)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((p / 100.0) * sorted.len() as f64) as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

enum Op {
    PutRecord(kin::Client, Arc<Vec<u8>>),
    GetRecords(kin::Client, Vec<String>, i32),
    InitiateAuth(cog::Client, String, String, String),
    S3Put(s3::Client, Arc<Vec<u8>>),
    S3Get(s3::Client, usize, usize),
}

#[derive(Default)]
struct WorkerState {
    iterator: Option<String>,
    n: u64,
}

/// One call of `op` by worker `w`: the number of items it moved and, when only part of the
/// call is to be timed, that part's duration.
async fn call(op: &Op, w: usize, st: &mut WorkerState) -> Result<(u64, Option<Duration>), OpError> {
    match op {
        Op::PutRecord(c, data) => {
            let key = format!("{:032x}", rand::rng().random::<u128>());
            c.put_record()
                .stream_name(STREAM)
                .data(kin::primitives::Blob::new(data.as_slice()))
                .partition_key(key)
                .send()
                .await
                .map_err(|e| describe(&e))?;
            Ok((1, None))
        }
        // Each worker reads one shard from TRIM_HORIZON to its end, `limit` records a call,
        // and starts over; only GetRecords calls are timed.
        Op::GetRecords(c, shards, limit) => {
            let it = match st.iterator.take() {
                Some(it) => it,
                None => c
                    .get_shard_iterator()
                    .stream_name(READ_STREAM)
                    .shard_id(&shards[w % shards.len()])
                    .shard_iterator_type(kin::types::ShardIteratorType::TrimHorizon)
                    .send()
                    .await
                    .map_err(|e| describe(&e))?
                    .shard_iterator
                    .unwrap_or_default(),
            };
            let t0 = Instant::now();
            let r = c
                .get_records()
                .shard_iterator(it)
                .limit(*limit)
                .send()
                .await
                .map_err(|e| describe(&e))?;
            let took = t0.elapsed();
            let n = r.records.len();
            st.iterator = if (n as i32) < *limit { None } else { r.next_shard_iterator };
            Ok((n as u64, Some(took)))
        }
        Op::InitiateAuth(c, client_id, user, password) => {
            let r = c
                .initiate_auth()
                .auth_flow(cog::types::AuthFlowType::UserPasswordAuth)
                .client_id(client_id)
                .auth_parameters("USERNAME", user)
                .auth_parameters("PASSWORD", password)
                .send()
                .await
                .map_err(|e| describe(&e))?;
            if r.authentication_result.and_then(|a| a.id_token).is_none() {
                return Err(("NoIdToken".into(), "no IdToken in the answer".into()));
            }
            Ok((1, None))
        }
        Op::S3Put(c, body) => {
            st.n += 1;
            c.put_object()
                .bucket(BUCKET)
                .key(format!("p/{w}/{}", st.n))
                .body(s3::primitives::ByteStream::from(body.as_ref().clone()))
                .send()
                .await
                .map_err(|e| describe(&e))?;
            Ok((1, None))
        }
        Op::S3Get(c, objects, size) => {
            let k = rand::rng().random_range(0..*objects);
            let r = c
                .get_object()
                .bucket(BUCKET)
                .key(format!("g/{k}"))
                .send()
                .await
                .map_err(|e| describe(&e))?;
            let body = r
                .body
                .collect()
                .await
                .map_err(|e| ("BodyError".to_owned(), e.to_string()))?
                .into_bytes();
            if body.len() != *size {
                return Err(("ShortObject".into(), format!("{} bytes", body.len())));
            }
            Ok((1, None))
        }
    }
}

struct Driven {
    lat: Vec<f64>,
    ok: u64,
    items: u64,
    errors: BTreeMap<String, (u64, String)>,
}

async fn drive(op: Arc<Op>, level: usize, secs: f64) -> (Driven, f64) {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..level)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut st = WorkerState::default();
                let mut d = Driven { lat: Vec::new(), ok: 0, items: 0, errors: BTreeMap::new() };
                while Instant::now() < end {
                    let t0 = Instant::now();
                    match call(&op, w, &mut st).await {
                        Ok((n, timed)) => {
                            let took = timed.unwrap_or_else(|| t0.elapsed());
                            d.lat.push(took.as_secs_f64() * 1000.0);
                            d.ok += 1;
                            d.items += n;
                        }
                        Err((kind, msg)) => {
                            let e = d.errors.entry(kind).or_insert((0, msg));
                            e.0 += 1;
                            st.iterator = None;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                d
            })
        })
        .collect();
    let mut all = Driven { lat: Vec::new(), ok: 0, items: 0, errors: BTreeMap::new() };
    for t in tasks {
        let d = t.await.expect("worker panicked");
        all.lat.extend(d.lat);
        all.ok += d.ok;
        all.items += d.items;
        for (k, (n, m)) in d.errors {
            all.errors.entry(k).or_insert((0, m)).0 += n;
        }
    }
    (all, start.elapsed().as_secs_f64())
}

struct Bench {
    cfg: Config,
    results: Vec<Measurement>,
}

impl Bench {
    async fn measure(&mut self, what: &str, t: &Target, level: usize, op: Op) {
        let op = Arc::new(op);
        if self.cfg.warmup_seconds > 0.0 {
            drive(op.clone(), level, self.cfg.warmup_seconds).await;
        }
        let ticks = self.cfg.clock_ticks;
        let me = std::process::id();
        let s0 = t.pid.and_then(|p| cpu_ms(p, ticks));
        let c0 = cpu_ms(me, ticks);
        let (mut d, secs) = drive(op, level, self.cfg.seconds).await;
        let c1 = cpu_ms(me, ticks);
        let s1 = t.pid.and_then(|p| cpu_ms(p, ticks));
        d.lat.sort_by(f64::total_cmp);
        let ops = d.ok;
        let per_op = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if ops > 0 => Some((b - a) * 1000.0 / ops as f64),
            _ => None,
        };
        let cores = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some((b - a) / 1000.0 / secs),
            _ => None,
        };
        let m = Measurement {
            what: what.into(),
            target: t.name.clone(),
            level,
            ops,
            per_sec: ops as f64 / secs,
            items_per_sec: d.items as f64 / secs,
            errors: d.errors.values().map(|e| e.0).sum(),
            error_kinds: d.errors.iter().map(|(k, v)| (k.clone(), v.0)).collect(),
            p50: percentile(&d.lat, 50.0),
            p99: percentile(&d.lat, 99.0),
            seconds: secs,
            client_cpu_us_per_op: per_op(c0, c1),
            server_cpu_us_per_op: per_op(s0, s1),
            server_cores: cores(s0, s1),
            client_cores: cores(c0, c1),
        };
        for (k, (n, msg)) in &d.errors {
            log(format!("  {n} × {k}: {msg}"));
        }
        log(format!(
            "{what} {} c={level}: {:.0}/s{} p50 {:.2} ms p99 {:.2} ms errors {} cpu/op server {:.0} us client {:.0} us",
            t.name,
            m.per_sec,
            if what == "GetRecords" { format!(" ({:.0} records/s)", m.items_per_sec) } else { String::new() },
            m.p50.unwrap_or(f64::NAN),
            m.p99.unwrap_or(f64::NAN),
            m.errors,
            m.server_cpu_us_per_op.unwrap_or(f64::NAN),
            m.client_cpu_us_per_op.unwrap_or(f64::NAN),
        ));
        self.results.push(m);
    }
}

fn kinesis_client(t: &Target) -> kin::Client {
    let conf = kin::Config::builder()
        .behavior_version(kin::config::BehaviorVersion::latest())
        .endpoint_url(&t.endpoint)
        .region(kin::config::Region::new(t.region.clone()))
        .credentials_provider(kin::config::Credentials::new(
            &t.access_key_id, &t.secret_access_key, None, None, "bench-edge",
        ))
        .http_client(HttpClientBuilder::new().build_http())
        // Errors are counted, not hidden by retries.
        .retry_config(kin::config::retry::RetryConfig::disabled())
        .build();
    kin::Client::from_conf(conf)
}

fn cognito_client(t: &Target) -> cog::Client {
    let conf = cog::Config::builder()
        .behavior_version(cog::config::BehaviorVersion::latest())
        .endpoint_url(&t.endpoint)
        .region(cog::config::Region::new(t.region.clone()))
        .credentials_provider(cog::config::Credentials::new(
            &t.access_key_id, &t.secret_access_key, None, None, "bench-edge",
        ))
        .http_client(HttpClientBuilder::new().build_http())
        .retry_config(cog::config::retry::RetryConfig::disabled())
        .build();
    cog::Client::from_conf(conf)
}

fn s3_client(t: &Target) -> s3::Client {
    let conf = s3::Config::builder()
        .behavior_version(s3::config::BehaviorVersion::latest())
        .endpoint_url(&t.endpoint)
        .region(s3::config::Region::new(t.region.clone()))
        .credentials_provider(s3::config::Credentials::new(
            &t.access_key_id, &t.secret_access_key, None, None, "bench-edge",
        ))
        .force_path_style(true)
        .http_client(HttpClientBuilder::new().build_http())
        .retry_config(s3::config::retry::RetryConfig::disabled())
        .build();
    s3::Client::from_conf(conf)
}

async fn wait_active(c: &kin::Client, name: &str) -> Result<(), String> {
    for _ in 0..600 {
        match c.describe_stream_summary().stream_name(name).send().await {
            Ok(d) => {
                if d.stream_description_summary.map(|s| s.stream_status)
                    == Some(kin::types::StreamStatus::Active)
                {
                    return Ok(());
                }
            }
            Err(e) => {
                let (kind, msg) = describe(&e);
                if kind != "ResourceNotFoundException" {
                    return Err(msg);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("stream {name} never became ACTIVE"))
}

/// Creates both streams, fills the read stream, and returns its shard ids.
async fn setup_kinesis(c: &kin::Client, cfg: &Config, record: &[u8]) -> Result<Vec<String>, String> {
    for name in [STREAM, READ_STREAM] {
        c.create_stream()
            .stream_name(name)
            .shard_count(cfg.shards)
            .send()
            .await
            .map_err(|e| describe(&e).1)?;
    }
    wait_active(c, STREAM).await?;
    wait_active(c, READ_STREAM).await?;
    let mut n = 0;
    while n < cfg.read_records {
        let count = 500.min(cfg.read_records - n);
        let mut req = c.put_records().stream_name(READ_STREAM);
        for i in 0..count {
            req = req.records(
                kin::types::PutRecordsRequestEntry::builder()
                    .data(kin::primitives::Blob::new(record))
                    .partition_key(format!("p-{}", n + i))
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
        let r = req.send().await.map_err(|e| describe(&e).1)?;
        if r.failed_record_count.unwrap_or(0) > 0 {
            return Err(format!("{} records failed", r.failed_record_count.unwrap_or(0)));
        }
        n += count;
    }
    let shards = c
        .list_shards()
        .stream_name(READ_STREAM)
        .send()
        .await
        .map_err(|e| describe(&e).1)?;
    Ok(shards.shards.unwrap_or_default().into_iter().map(|s| s.shard_id).collect())
}

async fn run(cfg: Config) -> Result<Vec<Measurement>, String> {
    let mut record = vec![0u8; cfg.record_bytes];
    rand::rng().fill(&mut record[..]);
    let record = Arc::new(record);
    let mut object = vec![0u8; cfg.object_bytes];
    rand::rng().fill(&mut object[..]);
    let object = Arc::new(object);

    let kinesis = cfg.kinesis.clone();
    let mut clients = Vec::new();
    for t in &kinesis {
        let c = kinesis_client(t);
        let t0 = Instant::now();
        let shards = if t.null {
            vec!["shardId-000000000000".to_owned()]
        } else {
            setup_kinesis(&c, &cfg, &record).await.map_err(|e| format!("{}: {e}", t.name))?
        };
        log(format!(
            "{}: streams ready in {:.1} s ({} records preloaded)",
            t.name,
            t0.elapsed().as_secs_f64(),
            if t.null { 0 } else { cfg.read_records }
        ));
        clients.push((c, shards));
    }
    let levels = cfg.levels.clone();
    let auth_levels = cfg.auth_levels.clone();
    let get_limits = cfg.get_limits.clone();
    let mut b = Bench { cfg, results: Vec::new() };
    for &level in &levels {
        for (t, (c, _)) in kinesis.iter().zip(&clients) {
            b.measure("PutRecord", t, level, Op::PutRecord(c.clone(), record.clone())).await;
        }
    }
    for (i, &limit) in get_limits.iter().enumerate() {
        let what = if i == 0 { "GetRecords".to_owned() } else { format!("GetRecords, Limit {limit}") };
        for &level in &levels {
            for (t, (c, shards)) in kinesis.iter().zip(&clients) {
                let op = Op::GetRecords(c.clone(), shards.clone(), limit);
                b.measure(&what, t, level, op).await;
            }
        }
    }

    for t in b.cfg.cognito.clone() {
        let c = cognito_client(&t);
        let (id, user, pw) = (
            t.client_id.clone().unwrap_or_default(),
            t.username.clone().unwrap_or_default(),
            t.password.clone().unwrap_or_default(),
        );
        for &level in &auth_levels {
            let op = Op::InitiateAuth(c.clone(), id.clone(), user.clone(), pw.clone());
            b.measure("InitiateAuth", &t, level, op).await;
        }
    }

    for t in b.cfg.s3.clone() {
        let c = s3_client(&t);
        let objects = b.cfg.get_objects;
        if !t.null {
            c.create_bucket().bucket(BUCKET).send().await.map_err(|e| describe(&e).1)?;
            for i in 0..objects {
                c.put_object()
                    .bucket(BUCKET)
                    .key(format!("g/{i}"))
                    .body(s3::primitives::ByteStream::from(object.as_ref().clone()))
                    .send()
                    .await
                    .map_err(|e| describe(&e).1)?;
            }
        }
        for &level in &levels {
            b.measure("S3 PutObject", &t, level, Op::S3Put(c.clone(), object.clone())).await;
            let op = Op::S3Get(c.clone(), objects, object.len());
            b.measure("S3 GetObject", &t, level, op).await;
        }
    }
    Ok(b.results)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: bench-edge-client CONFIG.json RESULTS.json");
        std::process::exit(2);
    }
    let cfg: Config = serde_json::from_str(&std::fs::read_to_string(&args[1]).expect("config"))
        .expect("config JSON");
    match run(cfg).await {
        Ok(results) => {
            std::fs::write(&args[2], serde_json::to_string_pretty(&results).unwrap())
                .expect("write results");
        }
        Err(e) => {
            log(format!("FAILED: {e}"));
            std::process::exit(1);
        }
    }
}
