//! Kinesis semantics written once over the two engines below them: streams, shards, tags
//! and consumers in the metadata engine ([`sluice_meta::Meta`]: SQLite or PostgreSQL);
//! records in a record engine ([`crate::records::RecordLog`]: the embedded stream log by
//! default). This layer names no concrete record engine: it routes records to shards,
//! encodes sequence numbers, signs iterators and keeps shard lineage; the engine keeps
//! per-shard logs of positions ("counters" here).
//!
//! Invariants:
//! - Each shard's counters are dense and only the record engine assigns them; the engine
//!   is their truth while it holds records of the shard, and `shards.next_counter` is
//!   written back before the records that prove a counter are deleted (the engine's
//!   `trim` hands this layer the ends to persist first) and when the shard closes (inside
//!   the engine's fence), and it is the floor of the shard's next append, so sequence
//!   numbers never repeat or go backwards — not after a crash, not after every record has
//!   been trimmed. Shard indexes come from the stream's `next_shard_idx`,
//!   which only grows, so a shard id is never reused; stream ids are never reused either.
//! - Arrival timestamps are non-decreasing per shard, so AT_TIMESTAMP positions and
//!   retention trimming agree with sequence order (trimming removes a prefix).
//! - A closed shard never receives another record; its children have higher indexes, so
//!   their sequence numbers are higher than any of the parent's.
//! - A damaged record is reported as an error, never skipped or returned (the engine
//!   checks; the embedded log's frames carry a CRC-32 that every read verifies).
//! - An append is acknowledged, and visible to readers, only after it is durable.
//! - Trimming raises `shards.start_counter`, so trimmed records stay gone after a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_meta::Tx;
use sluice_meta::params;
use sluice_meta::{Meta, now_ms};
use tokio::sync::watch;

mod append;
mod consumers;
mod reshard;
mod schema;
mod throttle;

pub use crate::records::LogStats;
pub use crate::records::embedded::SEGMENT_BYTES;
pub use append::{OWN_TICKETS_FROM, enqueue_in_tx, settle_in_tx};
pub use schema::MIGRATIONS;
pub use throttle::{
    READ_BYTES_PER_SEC, READ_CALLS_PER_SEC, WRITE_BYTES_PER_SEC, WRITE_RECORDS_PER_SEC,
};

use crate::iterator::{self, Position};
use crate::records::embedded::EmbeddedLog;
use crate::records::{FenceOutcome, Imported, RecordError, RecordLog, ShardEnd, ShardKey};
use crate::{
    ChildShard, CreateStreamOptions, DEFAULT_LIST_SHARDS, DEFAULT_LIST_STREAMS,
    DEFAULT_MAX_RECORD_BYTES, DEFAULT_ON_DEMAND_SHARDS, DEFAULT_RETENTION_HOURS, GetRecordsOutput,
    IteratorSpec, ListShardsInput, ListShardsOutput, ListStreamsInput, ListStreamsOutput,
    MAX_GET_BYTES, MAX_GET_RECORDS, MAX_LIST_SHARDS, MAX_LIST_STREAMS, MAX_MAX_RECORD_BYTES,
    MAX_PUT_RECORDS, MAX_PUT_RECORDS_BYTES, MAX_SHARDS, MAX_TAGS, NEXT_TOKEN_TTL_MS, PutRecord,
    PutResult, Record, ShardDesc, ShardFilter, Stream, StreamDesc, StreamError, StreamMode,
    StreamSummary, TagsPage, UpdateShardCountOutput, check_retention_hours, check_tag, even_ranges,
    parse_sequence_number, parse_shard_id, record_checksum, sequence_number, shard_id,
    validate_stored_stream_name,
};
use append::StreamMeta;
use schema::{ShardRow, StreamRow, load_stream, not_found, shard_row, shard_rows};

/// The counter of a new shard's first record. Counter 0 stays unused, so the shard's
/// starting sequence number (its `start_counter`, 0) is below every record's: resuming
/// AFTER_SEQUENCE_NUMBER at it (what a SubscribeToShard continuation at the very start of a
/// shard says) reads the first record. Shards created before this rule (by an older
/// sluice) began at 0 and keep doing so.
const FIRST_RECORD_COUNTER: u64 = 1;

/// Streams with Kinesis semantics over a metadata engine and a record engine. (The name
/// is historical: "embedded" as in "implemented by sluice itself", on any engines.)
#[derive(Clone)]
pub struct EmbeddedStream {
    db: Meta,
    iterator_key: Arc<Vec<u8>>,
    /// Tailing readers' channels, by stream name, and the stream id each is registered
    /// with the record engine for ([`RecordLog::subscribe`]).
    watchers: Arc<Mutex<HashMap<String, Watcher>>>,
    /// The records: one engine per metadata handle (held in `Meta::shared`).
    records: Arc<dyn RecordLog>,
    /// State shared by every handle on the same metadata (the append path's cache).
    shared: Arc<EngineSlot>,
    throttle: Option<Arc<throttle::Throttle>>,
    /// Stamps consumers and decides when a `Creating` consumer is `Active`.
    clock: Arc<dyn crate::Clock>,
    consumer_activation_ms: i64,
}

struct Watcher {
    tx: Arc<watch::Sender<u64>>,
    /// The stream id `tx` is subscribed to with the record engine, once known.
    stream_id: Option<i64>,
}

/// What a metadata handle keeps for the streams over it (`Meta::shared`): its one record
/// engine and the append path's cache of stream metadata.
#[derive(Default)]
struct EngineSlot {
    records: Mutex<Option<Arc<dyn RecordLog>>>,
    metas: Mutex<HashMap<String, Arc<StreamMeta>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether two handles are the same engine (data pointers; vtables may differ).
fn same_engine(a: &Arc<dyn RecordLog>, b: &Arc<dyn RecordLog>) -> bool {
    std::ptr::eq(Arc::as_ptr(a) as *const (), Arc::as_ptr(b) as *const ())
}

impl EngineSlot {
    /// The engine of this metadata handle, opened with `open` if it has none yet (then
    /// `true`: it needs preparing).
    fn get_or_open(
        &self,
        open: impl FnOnce() -> Result<Arc<dyn RecordLog>, StreamError>,
    ) -> Result<(Arc<dyn RecordLog>, bool), StreamError> {
        let mut g = lock(&self.records);
        if let Some(l) = g.as_ref() {
            return Ok((l.clone(), false));
        }
        let l = open()?;
        *g = Some(l.clone());
        Ok((l, true))
    }

    fn cached_meta(&self, name: &str) -> Option<Arc<StreamMeta>> {
        lock(&self.metas).get(name).cloned()
    }

    fn cache_meta(&self, meta: Arc<StreamMeta>) {
        lock(&self.metas).insert(meta.name.clone(), meta);
    }

    /// Drops `meta` from the cache (if it is still the cached one): the engine found it
    /// stale.
    fn uncache_meta(&self, meta: &Arc<StreamMeta>) {
        let mut metas = lock(&self.metas);
        if metas.get(&meta.name).is_some_and(|m| Arc::ptr_eq(m, meta)) {
            metas.remove(&meta.name);
        }
    }

    /// Forgets the cached metadata of stream `id` (changed).
    fn uncache_stream(&self, id: i64) {
        lock(&self.metas).retain(|_, m| m.id != id);
    }
}

/// How an [`EmbeddedStream`] behaves beyond the Kinesis semantics every backend shares.
#[derive(Clone)]
pub struct StreamOptions {
    /// Enforce Kinesis' per-shard limits (writes: 1 MiB/s and 1,000 records/s; reads:
    /// 2 MiB/s and 5 GetRecords calls/s) with `ProvisionedThroughputExceeded`. Off by
    /// default. Records delivered from the outbox (the upload path) are not limited.
    pub throttle: bool,
    /// The clock the limits are measured with (and consumers are stamped with).
    pub clock: Arc<dyn crate::Clock>,
    /// How long a newly registered consumer stays `Creating` before it is `Active`
    /// (milliseconds by `clock`). 0 (the default): `Active` at once.
    pub consumer_activation_ms: i64,
    /// Size past which the embedded stream log starts a new segment file
    /// ([`SEGMENT_BYTES`], 64 MiB, by default) when [`EmbeddedStream::open_with`] opens it.
    /// Retention deletes whole segments. Only the first handle opened on a database sets it.
    pub segment_bytes: u64,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            throttle: false,
            clock: Arc::new(crate::SystemClock),
            consumer_activation_ms: 0,
            segment_bytes: SEGMENT_BYTES,
        }
    }
}

impl std::fmt::Debug for StreamOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamOptions")
            .field("throttle", &self.throttle)
            .field("consumer_activation_ms", &self.consumer_activation_ms)
            .field("segment_bytes", &self.segment_bytes)
            .finish_non_exhaustive()
    }
}

/// What [`EmbeddedStream::check`] found. Empty `problems` means the database passed
/// SQLite's integrity check and every record matched its checksum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub problems: Vec<String>,
    pub records_checked: u64,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrimReport {
    pub records: u64,
    /// Closed shards whose whole life lies before the trim horizon.
    pub shards: u64,
}

/// Where the log of the embedded SQLite database at `db_path` lives:
/// `<db_path>-stream-log` (`sluice-data/sluice.db-stream-log`).
pub fn log_dir_of(db_path: &Path) -> PathBuf {
    crate::records::embedded::dir_of(db_path)
}

impl EmbeddedStream {
    /// Opens the backend on metadata already migrated with [`MIGRATIONS`], with the
    /// records in the embedded stream log in `log_dir` (created if needed; see
    /// [`log_dir_of`]).
    pub fn open(db: Meta, log_dir: &Path) -> Result<Self, StreamError> {
        EmbeddedStream::open_with(db, log_dir, StreamOptions::default())
    }

    /// [`EmbeddedStream::open`] with options. The first handle opened on a metadata handle
    /// opens the log (later ones share it, whatever their `log_dir`) and brings it in line
    /// with the metadata.
    pub fn open_with(
        db: Meta,
        log_dir: &Path,
        options: StreamOptions,
    ) -> Result<Self, StreamError> {
        let key = iterator_key(&db)?;
        let shared = db.shared::<EngineSlot>();
        let (records, opened) = shared.get_or_open(|| {
            Ok(Arc::new(EmbeddedLog::open(log_dir, options.segment_bytes)?) as Arc<dyn RecordLog>)
        })?;
        if opened {
            // The embedded log answers from its own threads: no runtime needed to wait.
            block_on(prepare(&db, records.as_ref()))?;
        }
        Ok(EmbeddedStream::assemble(db, key, records, shared, options))
    }

    /// A handle on the same streams that is not held to the throughput limits: for sluice's
    /// own readers (the processors of event-source mappings). The limits are those of the
    /// Kinesis edge, as AWS meters its API; sluice's processors read the log in-process, and
    /// metering them would only slow the pipeline down (ARCHITECTURE.md, "Throughput
    /// limits").
    pub fn unthrottled(&self) -> EmbeddedStream {
        EmbeddedStream {
            throttle: None,
            ..self.clone()
        }
    }

    /// Opens the backend on metadata already migrated with [`MIGRATIONS`] and the record
    /// engine `records` (see [`crate::open_records`]), which it brings in line with the
    /// metadata the first time. One engine per metadata handle: a handle that already has
    /// another one is refused.
    pub async fn open_on(
        db: Meta,
        records: Arc<dyn RecordLog>,
        options: StreamOptions,
    ) -> Result<Self, StreamError> {
        let key = {
            let db = db.clone();
            iterator_key_async(db).await?
        };
        let shared = db.shared::<EngineSlot>();
        let (held, opened) = shared.get_or_open(|| Ok(records.clone()))?;
        if !same_engine(&held, &records) {
            return Err(StreamError::InvalidArgument(format!(
                "this metadata handle already has a record engine ({}), not {}",
                held.describe(),
                records.describe()
            )));
        }
        if opened {
            prepare(&db, records.as_ref()).await?;
        }
        Ok(EmbeddedStream::assemble(db, key, records, shared, options))
    }

    fn assemble(
        db: Meta,
        key: Vec<u8>,
        records: Arc<dyn RecordLog>,
        shared: Arc<EngineSlot>,
        options: StreamOptions,
    ) -> Self {
        EmbeddedStream {
            records,
            shared,
            db,
            iterator_key: Arc::new(key),
            watchers: Arc::new(Mutex::new(HashMap::new())),
            throttle: options
                .throttle
                .then(|| Arc::new(throttle::Throttle::new(options.clock.clone()))),
            clock: options.clock,
            consumer_activation_ms: options.consumer_activation_ms.max(0),
        }
    }

    /// Opens the backend to inspect a database opened with [`Meta::open_read_only`]
    /// (`sluice doctor`): writes nothing. [`EmbeddedStream::check`] and the other reads
    /// work; anything that writes fails. The database is not migrated, so it may be of an
    /// older layout; [`EmbeddedStream::check`] reads every layout.
    pub fn open_read_only(db: Meta, log_dir: &Path) -> Result<Self, StreamError> {
        let records: Arc<dyn RecordLog> = Arc::new(EmbeddedLog::open_read_only(log_dir)?);
        EmbeddedStream::open_read_only_on(db, records)
    }

    /// [`EmbeddedStream::open_read_only`] on a record engine opened for inspection
    /// ([`crate::open_records_read_only`]).
    pub fn open_read_only_on(db: Meta, records: Arc<dyn RecordLog>) -> Result<Self, StreamError> {
        let key: Vec<u8> = db.read_blocking(|c| {
            Ok::<_, StreamError>(
                c.query_opt(
                    "SELECT v FROM stream_meta WHERE k = 'iterator_key'",
                    params![],
                    |r| r.get(0),
                )?
                .unwrap_or_default(),
            )
        })?;
        let shared = db.shared::<EngineSlot>();
        let (records, _) = shared.get_or_open(|| Ok(records))?;
        Ok(EmbeddedStream::assemble(
            db,
            key,
            records,
            shared,
            StreamOptions::default(),
        ))
    }

    pub fn db(&self) -> &Meta {
        &self.db
    }

    /// The record engine under this backend.
    pub fn records(&self) -> &Arc<dyn RecordLog> {
        &self.records
    }

    /// What the record engine's writer did since it was opened.
    pub fn log_stats(&self) -> LogStats {
        self.records.stats()
    }

    /// Tells tailing readers of `stream` that records were appended. (The record engine
    /// does this after every append that made records of the stream durable.)
    pub fn notify(&self, stream: &str) {
        if let Some(w) = lock(&self.watchers).get(stream) {
            w.tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Makes sure the channel tailing readers of stream `name` wait on is subscribed with
    /// the record engine to the stream's current id. `create`: make the channel if no
    /// reader asked for one yet (the append path does, so that a reader that comes later
    /// finds it subscribed).
    fn watch_stream(&self, name: &str, id: i64, create: bool) {
        let mut watchers = lock(&self.watchers);
        let w = match watchers.get_mut(name) {
            Some(w) => w,
            None if create => watchers.entry(name.to_owned()).or_insert_with(|| Watcher {
                tx: Arc::new(watch::channel(0).0),
                stream_id: None,
            }),
            None => return,
        };
        if w.stream_id != Some(id) {
            self.records.subscribe(id, w.tx.clone());
            w.stream_id = Some(id);
        }
    }

    /// Runs `change` — a change of stream `name`'s metadata that returns its result — in
    /// the record engine's fence for the stream (see [`RecordLog::fence`]): every append
    /// of the stream before it is durable, none runs during it, and appends routed with
    /// metadata from before are sent back to be routed again. `change` gets the stream's
    /// row, as current inside its transaction, and the ends of its shards.
    async fn fenced<T: Send + 'static>(
        &self,
        name: &str,
        change: impl Fn(
            &Tx<'_>,
            StreamRow,
            &[(u64, ShardEnd)],
        ) -> Result<(T, FenceOutcome), StreamError>
        + Send
        + Sync
        + 'static,
    ) -> Result<T, StreamError> {
        let change = Arc::new(change);
        // The id is read first (the fence is per stream); a stream replaced meanwhile by
        // another of the same name is fenced again under its new id.
        for _ in 0..8 {
            let id = {
                let name = name.to_owned();
                self.db
                    .read(move |c| Ok::<_, StreamError>(load_stream(c, &name)?.id))
                    .await?
            };
            let out: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
            let (db, change, slot, name) = (
                self.db.clone(),
                change.clone(),
                out.clone(),
                name.to_owned(),
            );
            self.records
                .fence(
                    id,
                    Box::new(move |ends| {
                        let ends = ends.to_vec();
                        let (value, outcome) = db.write_blocking(move |c| {
                            let row = load_stream(c, &name)?;
                            if row.id != id {
                                return Ok((None, FenceOutcome::Unchanged));
                            }
                            write_back_counters(
                                c,
                                &ends
                                    .iter()
                                    .map(|(shard, e)| ((id, *shard), e.next, e.last_arrival_ms))
                                    .collect::<Vec<_>>(),
                            )?;
                            let open_before: Vec<u64> =
                                schema::open_shards(c, id)?.iter().map(|s| s.idx).collect();
                            let (value, outcome) = change(c, row, &ends)?;
                            // Shards the change closed are named, so that an engine shared
                            // by several processes can refuse them to everyone at once.
                            let outcome = match outcome {
                                FenceOutcome::Changed => {
                                    let open_after: Vec<u64> =
                                        schema::open_shards(c, id)?.iter().map(|s| s.idx).collect();
                                    let closed: Vec<u64> = open_before
                                        .into_iter()
                                        .filter(|i| !open_after.contains(i))
                                        .collect();
                                    if closed.is_empty() {
                                        FenceOutcome::Changed
                                    } else {
                                        FenceOutcome::Resharded { closed }
                                    }
                                }
                                other => other,
                            };
                            Ok::<_, StreamError>((Some(value), outcome))
                        })?;
                        *lock(&slot) = value;
                        Ok(outcome)
                    }),
                )
                .await?;
            self.shared.uncache_stream(id);
            if let Some(v) = lock(&out).take() {
                return Ok(v);
            }
        }
        Err(StreamError::Backend(format!(
            "stream {name} kept being replaced while changing it; try again"
        )))
    }

    /// Deletes records older than each stream's retention period, every `every`.
    pub fn spawn_retention(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match this.trim_expired(now_ms()).await {
                    Ok(r) if r == TrimReport::default() => {}
                    Ok(r) => tracing::info!(
                        records = r.records,
                        shards = r.shards,
                        "trimmed records and shards past retention"
                    ),
                    Err(e) => tracing::warn!(error = %e, "retention trimming failed"),
                }
            }
        })
    }

    /// One retention pass as of `now` (ms): drops every record that arrived before
    /// `now - retention` and every closed shard closed before then. Trimming removes a
    /// prefix of each shard, so TRIM_HORIZON moves forward for every reader; the new start
    /// of each trimmed shard is stored (`shards.start_counter`) before the record engine
    /// releases the trimmed records' storage.
    pub async fn trim_expired(&self, now: i64) -> Result<TrimReport, StreamError> {
        let db = self.db.clone();
        let horizons: Vec<(i64, i64)> = self
            .db
            .read(move |c| {
                c.query_map("SELECT id, retention_hours FROM streams", params![], |r| {
                    Ok((r.get::<i64>(0)?, now - r.get::<i64>(1)? * 3_600_000))
                })?
                .collect::<Result<_, _>>()
                .map_err(StreamError::from)
            })
            .await?;
        let list = horizons.clone();
        let shards = self
            .db
            .write(move |c| {
                let mut n = 0;
                for (id, horizon) in &list {
                    n += c.execute(
                        "DELETE FROM shards WHERE stream_id = ?1
                             AND closed_counter IS NOT NULL AND closed_ms < ?2",
                        params![id, horizon],
                    )?;
                }
                Ok::<_, StreamError>(n)
            })
            .await?;
        let records = self
            .records
            .trim(
                horizons,
                Box::new(move |plan| {
                    let ends: Vec<((i64, u64), u64, i64)> = plan
                        .ends
                        .iter()
                        .map(|(k, e)| ((k.stream, k.shard), e.next, e.last_arrival_ms))
                        .collect();
                    let starts: Vec<(ShardKey, u64)> = plan.starts.clone();
                    db.write_blocking(move |c| {
                        write_back_counters(c, &ends)?;
                        for &(k, start) in &starts {
                            c.execute(
                                "UPDATE shards SET start_counter = ?3
                                 WHERE stream_id = ?1 AND idx = ?2 AND start_counter < ?3",
                                params![k.stream, k.shard as i64, start as i64],
                            )?;
                        }
                        Ok::<_, StreamError>(())
                    })
                }),
            )
            .await?;
        Ok(TrimReport { records, shards })
    }

    /// Checks the database: SQLite's `PRAGMA integrity_check` (page structure, indexes),
    /// then every record against its checksum and every shard's counters. Problems are
    /// returned (and logged as errors), never repaired or skipped silently.
    pub async fn check(&self) -> Result<CheckReport, StreamError> {
        let mut report = self.db.read(check_db).await?;
        let verified = self.records.verify().await?;
        report.records_checked += verified.records;
        report
            .problems
            .extend(verified.problems.into_iter().map(|p| match p.record {
                Some((k, position)) => format!(
                    "record {} (stream id {}, shard {}) fails its checksum; {}",
                    sequence_number(k.shard, position),
                    k.stream,
                    shard_id(k.shard),
                    p.detail
                ),
                None => p.detail,
            }));
        // A closed shard holds no record at or past its end.
        let closed: Vec<(String, i64, u64, u64)> = self
            .db
            .read(|c| {
                c.query_map(
                    "SELECT s.name, sh.stream_id, sh.idx, sh.closed_counter
                     FROM shards sh JOIN streams s ON s.id = sh.stream_id
                     WHERE sh.closed_counter IS NOT NULL",
                    params![],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get::<i64>(2)? as u64,
                            r.get::<i64>(3)? as u64,
                        ))
                    },
                )?
                .collect::<Result<_, _>>()
                .map_err(StreamError::from)
            })
            .await?;
        for (name, id, idx, end) in closed {
            if let Some(e) = self.records.end(ShardKey::new(id, idx)).await?
                && e.next > end
            {
                report.problems.push(format!(
                    "closed shard {} of stream {name} holds records past its end (counter {end}, log has up to {})",
                    shard_id(idx),
                    e.next - 1
                ));
            }
        }
        for p in &report.problems {
            tracing::error!(problem = %p, "stream database check failed");
        }
        Ok(report)
    }

    async fn append(
        &self,
        stream: &str,
        records: Vec<(PutRecord, Option<String>)>,
    ) -> Result<Vec<Result<PutResult, StreamError>>, StreamError> {
        self.append_records(stream, records, None, self.throttle.clone())
            .await
    }
}

/// `sluice_stream_read_records_total`: records handed to readers (GetRecords, processors).
fn count_read(stream: &str, out: &GetRecordsOutput) {
    if !out.records.is_empty() {
        metrics::counter!("sluice_stream_read_records_total", "stream" => stream.to_owned())
            .increment(out.records.len() as u64);
    }
}

/// The key iterators and page tokens are sealed with (made at the first open).
fn iterator_key(db: &Meta) -> Result<Vec<u8>, StreamError> {
    let fresh = fresh_key();
    db.write_blocking(move |c| store_iterator_key(c, &fresh))
}

async fn iterator_key_async(db: Meta) -> Result<Vec<u8>, StreamError> {
    let fresh = fresh_key();
    db.write(move |c| store_iterator_key(c, &fresh)).await
}

fn fresh_key() -> Vec<u8> {
    use rand::RngCore;
    let mut fresh = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut fresh);
    fresh
}

fn store_iterator_key(c: &Tx<'_>, fresh: &[u8]) -> Result<Vec<u8>, StreamError> {
    c.execute(
        "INSERT INTO stream_meta (k, v) VALUES ('iterator_key', ?1) ON CONFLICT DO NOTHING",
        params![fresh],
    )?;
    let k: Vec<u8> = c.query_row(
        "SELECT v FROM stream_meta WHERE k = 'iterator_key'",
        params![],
        |r| r.get(0),
    )?;
    Ok(k)
}

/// Runs a future to completion on this thread: for the embedded log's preparation in the
/// synchronous [`EmbeddedStream::open_with`], whose futures are answered by the log's and
/// the metadata engine's own threads (no runtime needed). Called from inside a task, it
/// must not count against that task's cooperative budget: the task cannot yield while
/// this thread waits, so an exhausted budget would make every poll pending at once, and
/// this loop would spin forever.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let f = tokio::task::unconstrained(f);
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Raises each shard's stored `next_counter` and `last_arrival_ms` to the record engine's
/// ends. Closed shards are left alone: theirs were stored when they closed, and no record
/// has been appended to them since.
fn write_back_counters(c: &Tx<'_>, ends: &[((i64, u64), u64, i64)]) -> Result<(), StreamError> {
    for &((sid, idx), next, arrival) in ends {
        c.execute(
            "UPDATE shards SET
                 next_counter = CASE WHEN next_counter > ?3 THEN next_counter ELSE ?3 END,
                 last_arrival_ms = CASE WHEN last_arrival_ms > ?4 THEN last_arrival_ms ELSE ?4 END
             WHERE stream_id = ?1 AND idx = ?2 AND closed_counter IS NULL",
            params![sid, idx as i64, next as i64, arrival],
        )?;
    }
    Ok(())
}

/// Brings a freshly opened record engine in line with the metadata: drops records of
/// streams that no longer exist, drops records below each shard's stored start (trimmed
/// before a restart), and moves records an older sluice kept in SQLite into the engine.
async fn prepare(db: &Meta, records: &dyn RecordLog) -> Result<(), StreamError> {
    let (ids, starts): (Vec<i64>, Vec<(ShardKey, u64)>) = db
        .read(|c| {
            let ids = c.query_vec("SELECT id FROM streams", params![], |r| r.get(0))?;
            let starts = c.query_vec(
                "SELECT stream_id, idx, start_counter FROM shards WHERE start_counter > 0",
                params![],
                |r| {
                    Ok((
                        ShardKey::new(r.get::<i64>(0)?, r.get::<i64>(1)? as u64),
                        r.get::<i64>(2)? as u64,
                    ))
                },
            )?;
            Ok::<_, StreamError>((ids, starts))
        })
        .await?;
    let keep: std::collections::HashSet<i64> = ids.into_iter().collect();
    for stream in records.streams().await? {
        if !keep.contains(&stream) {
            records.drop_stream(stream).await?;
        }
    }
    for (key, start) in starts {
        records.drop_before(key, start).await?;
    }
    // Records of an older layout: copied in chunks, in counter order, then deleted.
    loop {
        let chunk: Vec<Imported> = db
            .read(|c| {
                c.query_vec(
                    "SELECT stream_id, shard_idx, counter, arrival_ms, partition_key, data
                     FROM records ORDER BY stream_id, shard_idx, counter LIMIT 10000",
                    params![],
                    |r| {
                        Ok(Imported {
                            shard: ShardKey::new(r.get::<i64>(0)?, r.get::<i64>(1)? as u64),
                            position: r.get::<i64>(2)? as u64,
                            arrival_ms: r.get(3)?,
                            partition_key: r.get(4)?,
                            data: Bytes::from(r.get::<Vec<u8>>(5)?),
                        })
                    },
                )
                .map_err(StreamError::from)
            })
            .await?;
        let Some(last) = chunk.last().map(|r| (r.shard, r.position)) else {
            break;
        };
        let n = chunk.len();
        records.import(chunk).await?;
        db.write(move |c| {
            c.execute(
                "DELETE FROM records WHERE stream_id < ?1
                    OR (stream_id = ?1 AND shard_idx < ?2)
                    OR (stream_id = ?1 AND shard_idx = ?2 AND counter <= ?3)",
                params![last.0.stream, last.0.shard as i64, last.1 as i64],
            )?;
            Ok::<_, StreamError>(())
        })
        .await?;
        tracing::info!(
            records = n,
            "moved records of an older layout into the record engine"
        );
    }
    Ok(())
}

/// Stream name, shard index, next counter, closed counter, highest stored counter.
type CounterRow = (String, i64, i64, Option<i64>, Option<i64>);
/// Shard index, parent, adjacent parent, start and end hash key.
type LineageRow = (i64, Option<i64>, Option<i64>, String, String);

/// Checks what an older sluice left in the `records` table (moved into the log at open)
/// and every shard's counters. The engine's own integrity check is `Meta::check`.
fn check_db(c: &Tx<'_>) -> Result<CheckReport, StreamError> {
    let mut report = CheckReport::default();
    let read = c.query_each(
        "SELECT s.name, r.shard_idx, r.counter, r.partition_key, r.data, r.checksum
         FROM records r JOIN streams s ON s.id = r.stream_id",
        params![],
        |row| {
            report.records_checked += 1;
            let (name, idx, counter): (String, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
            let pk: Result<String, _> = row.get(3);
            let data: Vec<u8> = row.get(4)?;
            let sum: Option<i64> = row.get(5)?;
            let ok = match (pk, sum) {
                (Ok(pk), Some(sum)) => record_checksum(counter as u64, &pk, &data) == sum as u64,
                (Ok(_), None) => true,
                (Err(_), _) => false,
            };
            if !ok {
                report.problems.push(format!(
                    "record {} of stream {name} fails its checksum",
                    sequence_number(idx as u64, counter as u64)
                ));
            }
            Ok(true)
        },
    );
    if let Err(e) = read {
        report.problems.push(format!("cannot read records: {e}"));
    }
    let shards: Vec<CounterRow> = c
        .query_map(
            "SELECT s.name, sh.idx, sh.next_counter, sh.closed_counter,
                (SELECT MAX(counter) FROM records r
                 WHERE r.stream_id = sh.stream_id AND r.shard_idx = sh.idx)
         FROM shards sh JOIN streams s ON s.id = sh.stream_id",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?
        .collect::<Result<_, _>>()?;
    for (name, idx, next, closed, max) in shards {
        if max.is_some_and(|m| m >= next) || closed.is_some_and(|cc| cc != next) {
            report.problems.push(format!(
                "shard {} of stream {name} has inconsistent counters (next {next}, closed {closed:?}, highest record {max:?})",
                shard_id(idx as u64)
            ));
        }
    }
    Ok(report)
}

fn create_in_tx(
    conn: &Tx<'_>,
    name: &str,
    options: &CreateStreamOptions,
) -> Result<(), StreamError> {
    let now = now_ms();
    let shard_count = options.shard_count.unwrap_or(DEFAULT_ON_DEMAND_SHARDS);
    // Ids are never reused: the log may still hold records of a deleted stream's id.
    let highest: i64 =
        conn.query_row("SELECT COALESCE(MAX(id), 0) FROM streams", params![], |r| {
            r.get(0)
        })?;
    let id = highest.max(last_stream_id(conn)?) + 1;
    remember_stream_id(conn, id)?;
    conn.execute(
        "INSERT INTO streams (id, name, created_ms, retention_hours, max_record_bytes,
                              next_shard_idx, on_demand)
         VALUES (?7, ?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            name,
            now,
            DEFAULT_RETENTION_HOURS,
            options.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES) as i64,
            i64::from(shard_count),
            options.shard_count.is_none(),
            id
        ],
    )?;
    for (i, (start, end)) in even_ranges(shard_count).into_iter().enumerate() {
        conn.execute(
            "INSERT INTO shards (stream_id, idx, start_hash, end_hash, start_counter,
                                 next_counter, last_arrival_ms, created_ms)
             VALUES (?1, ?2, ?3, ?4, 0, ?6, 0, ?5)",
            params![
                id,
                i as i64,
                start.to_string(),
                end.to_string(),
                now,
                FIRST_RECORD_COUNTER as i64
            ],
        )?;
    }
    for (k, v) in &options.tags {
        conn.execute(
            "INSERT INTO stream_tags (stream_id, key, value) VALUES (?1, ?2, ?3)",
            params![id, k, v],
        )?;
    }
    Ok(())
}

/// The highest stream id ever handed out (`stream_meta.last_stream_id`): an integer written
/// by an older sluice, or its decimal text.
fn last_stream_id(conn: &Tx<'_>) -> Result<i64, StreamError> {
    let v = conn.query_opt(
        "SELECT v FROM stream_meta WHERE k = 'last_stream_id'",
        params![],
        |r| {
            Ok(match r.get_ref(0)? {
                sluice_meta::ValueRef::Int(i) => Some(i),
                sluice_meta::ValueRef::Text(t) => t.parse().ok(),
                sluice_meta::ValueRef::Blob(b) => {
                    std::str::from_utf8(b).ok().and_then(|t| t.parse().ok())
                }
                _ => None,
            })
        },
    )?;
    match v {
        None => Ok(0),
        Some(Some(id)) => Ok(id),
        Some(None) => Err(StreamError::Backend(
            "stream_meta.last_stream_id is not a number".into(),
        )),
    }
}

/// Records that stream ids up to `id` were handed out (never lowers it).
fn remember_stream_id(conn: &Tx<'_>, id: i64) -> Result<(), StreamError> {
    if last_stream_id(conn)? >= id {
        return Ok(());
    }
    conn.execute(
        "INSERT INTO stream_meta (k, v) VALUES ('last_stream_id', ?1)
         ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        params![id.to_string().into_bytes()],
    )?;
    Ok(())
}

/// The setting holding a stream's UpdateShardCount times, and its capacity-mode switches
/// (milliseconds, comma-separated, within the last 24 hours).
const SCALINGS_KEY: &str = "sluice:scalings";
const MODE_CHANGES_KEY: &str = "sluice:mode-changes";
const DAY_MS: i64 = 24 * 3_600_000;

fn setting(c: &Tx<'_>, stream_id: i64, key: &str) -> Result<Option<String>, StreamError> {
    Ok(c.query_opt(
        "SELECT value FROM stream_settings WHERE stream_id = ?1 AND key = ?2",
        params![stream_id, key],
        |r| r.get(0),
    )?)
}

fn set_setting(
    c: &Tx<'_>,
    stream_id: i64,
    key: &str,
    value: Option<&str>,
) -> Result<(), StreamError> {
    match value {
        Some(v) => c.execute(
            "INSERT INTO stream_settings (stream_id, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (stream_id, key) DO UPDATE SET value = excluded.value",
            params![stream_id, key, v],
        )?,
        None => c.execute(
            "DELETE FROM stream_settings WHERE stream_id = ?1 AND key = ?2",
            params![stream_id, key],
        )?,
    };
    Ok(())
}

/// Records one more rate-limited change of the stream at `now` in the history under `key`,
/// or refuses it (`LimitExceeded`, nothing written) when `max` happened in the 24 hours
/// before. Times that have left the window are dropped as the history is written back.
fn count_change(
    c: &Tx<'_>,
    row: &StreamRow,
    key: &str,
    max: usize,
    now: i64,
    what: &str,
) -> Result<(), StreamError> {
    let mut recent: Vec<i64> = setting(c, row.id, key)?
        .unwrap_or_default()
        .split(',')
        .filter_map(|t| t.parse().ok())
        .filter(|&t: &i64| t > now - DAY_MS)
        .collect();
    if recent.len() >= max {
        return Err(StreamError::LimitExceeded(format!(
            "stream {} has had {max} {what} in the last 24 hours, the most it may have; the next is possible in {} minutes",
            row.name,
            (recent.iter().min().copied().unwrap_or(now) + DAY_MS - now + 59_999) / 60_000
        )));
    }
    recent.push(now);
    let joined: Vec<String> = recent.iter().map(i64::to_string).collect();
    set_setting(c, row.id, key, Some(&joined.join(",")))
}

fn check_shard_count(shard_count: u32) -> Result<(), StreamError> {
    if !(1..=MAX_SHARDS).contains(&shard_count) {
        return Err(StreamError::InvalidArgument(format!(
            "shard count must be between 1 and {MAX_SHARDS}, got {shard_count}"
        )));
    }
    Ok(())
}

fn check_create_options(options: &CreateStreamOptions) -> Result<(), StreamError> {
    if let Some(n) = options.shard_count {
        check_shard_count(n)?;
    }
    if let Some(b) = options.max_record_bytes {
        check_max_record_bytes(b)?;
    }
    check_tags(&options.tags)?;
    if options.tags.len() > MAX_TAGS {
        return Err(StreamError::LimitExceeded(format!(
            "a stream can carry at most {MAX_TAGS} tags, got {}",
            options.tags.len()
        )));
    }
    Ok(())
}

fn check_max_record_bytes(b: usize) -> Result<(), StreamError> {
    if !(DEFAULT_MAX_RECORD_BYTES..=MAX_MAX_RECORD_BYTES).contains(&b) {
        return Err(StreamError::InvalidArgument(format!(
            "max record size must be between {DEFAULT_MAX_RECORD_BYTES} and {MAX_MAX_RECORD_BYTES} bytes, got {b}"
        )));
    }
    Ok(())
}

fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), StreamError> {
    tags.iter().try_for_each(|(k, v)| check_tag(k, v))
}

/// Tags one call may add (to a stream or a consumer): 1 to [`MAX_TAGS`], each valid.
fn check_tags_to_add(tags: &BTreeMap<String, String>) -> Result<(), StreamError> {
    if tags.is_empty() || tags.len() > MAX_TAGS {
        return Err(StreamError::InvalidArgument(format!(
            "add 1 to {MAX_TAGS} tags at a time, got {}",
            tags.len()
        )));
    }
    check_tags(tags)
}

/// Tag keys one call may remove: 1 to [`MAX_TAGS`], each a valid key.
fn check_tag_keys_to_remove(keys: &[String]) -> Result<(), StreamError> {
    if keys.is_empty() || keys.len() > MAX_TAGS {
        return Err(StreamError::InvalidArgument(format!(
            "remove 1 to {MAX_TAGS} tags at a time, got {}",
            keys.len()
        )));
    }
    keys.iter().try_for_each(|k| check_tag(k, ""))
}

/// `LimitExceeded` if `owner`, carrying the tags `existing`, would pass [`MAX_TAGS`] with
/// `tags` added.
fn check_tag_limit(
    owner: &str,
    existing: &[String],
    tags: &BTreeMap<String, String>,
) -> Result<(), StreamError> {
    let total = existing.len() + tags.keys().filter(|k| !existing.contains(k)).count();
    if total > MAX_TAGS {
        return Err(StreamError::LimitExceeded(format!(
            "{owner} would carry {total} tags; the limit is {MAX_TAGS}"
        )));
    }
    Ok(())
}

fn shard_desc(s: &ShardRow) -> ShardDesc {
    ShardDesc {
        shard_id: shard_id(s.idx),
        parent_shard_id: s.parent.map(shard_id),
        adjacent_parent_shard_id: s.adjacent_parent.map(shard_id),
        starting_hash_key: s.start_hash,
        ending_hash_key: s.end_hash,
        starting_sequence_number: sequence_number(s.idx, s.start_counter),
        ending_sequence_number: s
            .closed_counter
            .map(|c| sequence_number(s.idx, c.saturating_sub(1))),
    }
}

fn parse_shard(shard: &str) -> Result<u64, StreamError> {
    parse_shard_id(shard)
        .ok_or_else(|| StreamError::InvalidArgument(format!("invalid shard id {shard:?}")))
}

/// The sealed content of a ListShards NextToken.
#[derive(Serialize, Deserialize)]
struct ListShardsToken {
    s: String,
    g: i64,
    /// Last shard index returned.
    a: u64,
    /// Filter: kind, shard index, timestamp.
    f: (u8, Option<u64>, Option<i64>),
    t: i64,
}

fn filter_to_token(f: &ShardFilter) -> Result<(u8, Option<u64>, Option<i64>), StreamError> {
    Ok(match f {
        ShardFilter::AfterShardId(id) => (0, Some(parse_shard(id)?), None),
        ShardFilter::AtTrimHorizon => (1, None, None),
        ShardFilter::FromTrimHorizon => (2, None, None),
        ShardFilter::AtLatest => (3, None, None),
        ShardFilter::AtTimestamp(t) => (4, None, Some(*t)),
        ShardFilter::FromTimestamp(t) => (5, None, Some(*t)),
    })
}

fn filter_from_token(f: (u8, Option<u64>, Option<i64>)) -> Option<ShardFilter> {
    Some(match f {
        (0, Some(idx), None) => ShardFilter::AfterShardId(shard_id(idx)),
        (1, None, None) => ShardFilter::AtTrimHorizon,
        (2, None, None) => ShardFilter::FromTrimHorizon,
        (3, None, None) => ShardFilter::AtLatest,
        (4, None, Some(t)) => ShardFilter::AtTimestamp(t),
        (5, None, Some(t)) => ShardFilter::FromTimestamp(t),
        _ => return None,
    })
}

#[derive(Serialize, Deserialize)]
struct ListStreamsToken {
    /// Last name returned.
    a: String,
}

#[async_trait]
impl Stream for EmbeddedStream {
    async fn create_stream(&self, name: &str, shard_count: u32) -> Result<(), StreamError> {
        check_shard_count(shard_count)?;
        self.create_stream_with(
            name,
            CreateStreamOptions {
                shard_count: Some(shard_count),
                ..CreateStreamOptions::default()
            },
        )
        .await
    }

    async fn ensure_stream(&self, name: &str, shard_count: u32) -> Result<(), StreamError> {
        validate_stored_stream_name(name)?;
        check_shard_count(shard_count)?;
        let name = name.to_owned();
        self.db
            .write(move |c| {
                let exists: bool = c.query_row(
                    "SELECT EXISTS(SELECT 1 FROM streams WHERE name = ?1)",
                    params![&name],
                    |r| r.get(0),
                )?;
                if exists {
                    Ok(())
                } else {
                    let options = CreateStreamOptions {
                        shard_count: Some(shard_count),
                        ..CreateStreamOptions::default()
                    };
                    create_in_tx(c, &name, &options)
                }
            })
            .await
    }

    async fn create_stream_with(
        &self,
        name: &str,
        options: CreateStreamOptions,
    ) -> Result<(), StreamError> {
        validate_stored_stream_name(name)?;
        check_create_options(&options)?;
        let name = name.to_owned();
        self.db
            .write(move |c| {
                let exists: bool = c.query_row(
                    "SELECT EXISTS(SELECT 1 FROM streams WHERE name = ?1)",
                    params![&name],
                    |r| r.get(0),
                )?;
                if exists {
                    return Err(StreamError::ResourceInUse(format!(
                        "stream {name} already exists"
                    )));
                }
                create_in_tx(c, &name, &options)
            })
            .await
    }

    async fn describe_stream(&self, name: &str) -> Result<StreamDesc, StreamError> {
        let name = name.to_owned();
        self.db
            .read(move |c| {
                let row = load_stream(c, &name)?;
                let shards = shard_rows(c, row.id)?.iter().map(shard_desc).collect();
                Ok(StreamDesc {
                    name: row.name,
                    status: "ACTIVE",
                    shards,
                    retention_hours: row.retention_hours,
                    created_ms: row.created_ms,
                })
            })
            .await
    }

    async fn describe_stream_summary(&self, name: &str) -> Result<StreamSummary, StreamError> {
        let name = name.to_owned();
        self.db
            .read(move |c| {
                let row = load_stream(c, &name)?;
                let open: i64 = c.query_row(
                    "SELECT COUNT(*) FROM shards WHERE stream_id = ?1 AND closed_counter IS NULL",
                    params![row.id],
                    |r| r.get(0),
                )?;
                Ok(StreamSummary {
                    name: row.name,
                    status: "ACTIVE",
                    mode: row.mode,
                    retention_hours: row.retention_hours,
                    created_ms: row.created_ms,
                    open_shard_count: open as u32,
                    max_record_bytes: row.max_record_bytes,
                    consumer_count: consumers::count(c, row.id)?,
                })
            })
            .await
    }

    async fn list_streams(&self) -> Result<Vec<String>, StreamError> {
        self.db
            .read(|c| {
                let names =
                    c.query_vec("SELECT name FROM streams ORDER BY name", params![], |r| {
                        r.get::<String>(0)
                    })?;
                Ok(names)
            })
            .await
    }

    async fn list_streams_page(
        &self,
        input: ListStreamsInput,
    ) -> Result<ListStreamsOutput, StreamError> {
        let limit = input.limit.unwrap_or(DEFAULT_LIST_STREAMS);
        if !(1..=MAX_LIST_STREAMS).contains(&limit) {
            return Err(StreamError::InvalidArgument(format!(
                "limit must be between 1 and {MAX_LIST_STREAMS}, got {limit}"
            )));
        }
        let after = match (input.exclusive_start_stream_name, input.next_token) {
            (Some(_), Some(_)) => {
                return Err(StreamError::InvalidArgument(
                    "give either an exclusive start stream name or a next token, not both".into(),
                ));
            }
            (Some(name), None) => name,
            (None, Some(token)) => {
                iterator::open::<ListStreamsToken>(
                    &self.iterator_key,
                    iterator::LIST_STREAMS_DOMAIN,
                    &token,
                )
                .ok_or_else(|| StreamError::InvalidArgument("invalid next token".into()))?
                .a
            }
            (None, None) => String::new(),
        };
        let key = self.iterator_key.clone();
        self.db
            .read(move |c| {
                let mut names = c.query_vec(
                    "SELECT name FROM streams WHERE name > ?1 ORDER BY name LIMIT ?2",
                    params![after, i64::from(limit) + 1],
                    |r| r.get::<String>(0),
                )?;
                let has_more = names.len() > limit as usize;
                names.truncate(limit as usize);
                let next_token = match (has_more, names.last()) {
                    (true, Some(last)) => Some(iterator::seal(
                        &key,
                        iterator::LIST_STREAMS_DOMAIN,
                        &ListStreamsToken { a: last.clone() },
                    )),
                    _ => None,
                };
                Ok(ListStreamsOutput {
                    names,
                    has_more,
                    next_token,
                })
            })
            .await
    }

    async fn list_shards(&self, input: ListShardsInput) -> Result<ListShardsOutput, StreamError> {
        let max = input.max_results.unwrap_or(DEFAULT_LIST_SHARDS);
        if !(1..=MAX_LIST_SHARDS).contains(&max) {
            return Err(StreamError::InvalidArgument(format!(
                "max results must be between 1 and {MAX_LIST_SHARDS}, got {max}"
            )));
        }
        let now = now_ms();
        let (name, generation, after, filter) = match (input.stream, input.next_token) {
            (Some(_), Some(_)) => {
                return Err(StreamError::InvalidArgument(
                    "give either a stream name or a next token, not both".into(),
                ));
            }
            (None, None) => {
                return Err(StreamError::InvalidArgument(
                    "a stream name or a next token is required".into(),
                ));
            }
            (Some(name), None) => {
                let after = input
                    .exclusive_start_shard_id
                    .as_deref()
                    .map(parse_shard)
                    .transpose()?;
                let filter = input.filter.unwrap_or(ShardFilter::FromTrimHorizon);
                let after = match &filter {
                    ShardFilter::AfterShardId(id) => Some(parse_shard(id)?.max(after.unwrap_or(0))),
                    _ => after,
                };
                (name, None, after, filter)
            }
            (None, Some(token)) => {
                if input.exclusive_start_shard_id.is_some() || input.filter.is_some() {
                    return Err(StreamError::InvalidArgument(
                        "a next token cannot be combined with an exclusive start shard id or a shard filter".into(),
                    ));
                }
                let t: ListShardsToken =
                    iterator::open(&self.iterator_key, iterator::LIST_SHARDS_DOMAIN, &token)
                        .ok_or_else(|| StreamError::InvalidArgument("invalid next token".into()))?;
                if now - t.t > NEXT_TOKEN_TTL_MS {
                    return Err(StreamError::InvalidArgument(format!(
                        "next token expired: issued {} ms ago, tokens are valid for {NEXT_TOKEN_TTL_MS} ms",
                        now - t.t
                    )));
                }
                let filter = filter_from_token(t.f)
                    .ok_or_else(|| StreamError::InvalidArgument("invalid next token".into()))?;
                (t.s, Some(t.g), Some(t.a), filter)
            }
        };
        let key = self.iterator_key.clone();
        self.db
            .read(move |c| {
                let row = load_stream(c, &name)?;
                if generation.is_some_and(|g| g != row.created_ms) {
                    return Err(StreamError::ResourceNotFound(format!(
                        "stream {name} was deleted since the next token was issued"
                    )));
                }
                let mut shards: Vec<ShardRow> = shard_rows(c, row.id)?
                    .into_iter()
                    .filter(|s| after.is_none_or(|a| s.idx > a))
                    .filter(|s| reshard::keep(s, &filter, &row, now))
                    .collect();
                let more = shards.len() > max as usize;
                shards.truncate(max as usize);
                let next_token = match (more, shards.last()) {
                    (true, Some(last)) => Some(iterator::seal(
                        &key,
                        iterator::LIST_SHARDS_DOMAIN,
                        &ListShardsToken {
                            s: row.name.clone(),
                            g: row.created_ms,
                            a: last.idx,
                            f: filter_to_token(&filter)?,
                            t: now,
                        },
                    )),
                    _ => None,
                };
                Ok(ListShardsOutput {
                    shards: shards.iter().map(shard_desc).collect(),
                    next_token,
                })
            })
            .await
    }

    async fn delete_stream(&self, name: &str) -> Result<(), StreamError> {
        // In the engine's fence: no append of this stream is in flight, and none after.
        self.fenced(name, |c, row, _| {
            remember_stream_id(c, row.id)?;
            c.execute("DELETE FROM records WHERE stream_id = ?1", params![row.id])?;
            c.execute("DELETE FROM shards WHERE stream_id = ?1", params![row.id])?;
            c.execute(
                "DELETE FROM stream_tags WHERE stream_id = ?1",
                params![row.id],
            )?;
            c.execute(
                "DELETE FROM stream_settings WHERE stream_id = ?1",
                params![row.id],
            )?;
            consumers::delete_all(c, row.id)?;
            c.execute("DELETE FROM streams WHERE id = ?1", params![row.id])?;
            Ok(((), FenceOutcome::Dropped))
        })
        .await
    }

    async fn put_record(&self, stream: &str, record: PutRecord) -> Result<PutResult, StreamError> {
        self.put_record_ordered(stream, record, None).await
    }

    async fn put_record_ordered(
        &self,
        stream: &str,
        record: PutRecord,
        sequence_number_for_ordering: Option<String>,
    ) -> Result<PutResult, StreamError> {
        self.append(stream, vec![(record, sequence_number_for_ordering)])
            .await?
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(StreamError::Backend("the append returned no result".into())))
    }

    async fn put_records(
        &self,
        stream: &str,
        records: Vec<PutRecord>,
    ) -> Result<Vec<Result<PutResult, StreamError>>, StreamError> {
        if records.is_empty() || records.len() > MAX_PUT_RECORDS {
            return Err(StreamError::InvalidArgument(format!(
                "a put_records call takes 1 to {MAX_PUT_RECORDS} records, got {}",
                records.len()
            )));
        }
        let total: usize = records
            .iter()
            .map(|r| r.partition_key.len() + r.data.len())
            .sum();
        if total > MAX_PUT_RECORDS_BYTES {
            // Over 5 MiB is allowed only for a single record within the stream's own limit.
            let name = stream.to_owned();
            let max = self
                .db
                .read(move |c| Ok::<_, StreamError>(load_stream(c, &name)?.max_record_bytes))
                .await?;
            if records.len() > 1 || total > max {
                // Kinesis' wording (MAX_PUT_RECORDS_BYTES is 5 MiB).
                return Err(StreamError::InvalidArgument(
                    "Records size exceeds 5 MB limit".into(),
                ));
            }
        }
        self.append(stream, records.into_iter().map(|r| (r, None)).collect())
            .await
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard: &str,
        spec: IteratorSpec,
    ) -> Result<String, StreamError> {
        let name = stream.to_owned();
        let idx = parse_shard(shard)?;
        let (stream, row) = self
            .db
            .read(move |c| {
                let stream = load_stream(c, &name)?;
                let row = shard_row(c, &stream, idx)?;
                Ok::<_, StreamError>((stream, row))
            })
            .await?;
        self.watch_stream(&stream.name, stream.id, false);
        let key = ShardKey::new(stream.id, idx);
        // LATEST starts after the last durable record (the engine shows no other).
        let latest = self.end_of(key, row.next_counter).await?;
        let seq_counter = |s: &str| -> Result<u64, StreamError> {
            match parse_sequence_number(s) {
                Some((sidx, counter)) if sidx == idx && counter < latest => Ok(counter),
                _ => Err(StreamError::InvalidArgument(format!(
                    "sequence number {s} is not a sequence number of shard {}",
                    shard_id(idx)
                ))),
            }
        };
        let p = match &spec {
            IteratorSpec::TrimHorizon => row.start_counter,
            IteratorSpec::Latest => latest,
            IteratorSpec::AtSequenceNumber(s) => seq_counter(s)?,
            IteratorSpec::AfterSequenceNumber(s) => seq_counter(s)? + 1,
            IteratorSpec::AtTimestamp(ts) => self
                .records
                .first_at_or_after(key, *ts)
                .await?
                .unwrap_or(latest)
                .max(row.start_counter),
        };
        Ok(iterator::encode(
            &self.iterator_key,
            &Position {
                s: stream.name,
                g: stream.created_ms,
                h: idx,
                p,
                t: now_ms(),
            },
        ))
    }

    async fn get_records(
        &self,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, StreamError> {
        if !(1..=MAX_GET_RECORDS).contains(&limit) {
            return Err(StreamError::InvalidArgument(format!(
                "limit must be between 1 and {MAX_GET_RECORDS}, got {limit}"
            )));
        }
        let pos = iterator::decode(&self.iterator_key, iterator, now_ms())?;
        let (stream, generation, shard) = (pos.s.clone(), pos.g, pos.h);
        let Some(throttle) = self.throttle.clone() else {
            let out = self.read_records(pos, limit).await?;
            count_read(&stream, &out);
            return Ok(out);
        };
        throttle.admit_read(&stream, generation, shard)?;
        let out = self.read_records(pos, limit).await?;
        count_read(&stream, &out);
        let bytes = out
            .records
            .iter()
            .map(|r| r.partition_key.len() + r.data.len())
            .sum();
        throttle.charge_read(&stream, generation, shard, bytes)?;
        Ok(out)
    }

    fn watch(&self, stream: &str) -> watch::Receiver<u64> {
        let rx = lock(&self.watchers)
            .entry(stream.to_owned())
            .or_insert_with(|| Watcher {
                tx: Arc::new(watch::channel(0).0),
                stream_id: None,
            })
            .tx
            .subscribe();
        // Subscribed with the engine now if the stream's id is known; else by the reader's
        // next iterator or read (or the next append), all before it waits.
        if let Some(m) = self.shared.cached_meta(stream) {
            self.watch_stream(stream, m.id, false);
        }
        rx
    }

    async fn split_shard(
        &self,
        stream: &str,
        shard: &str,
        new_starting_hash_key: u128,
    ) -> Result<(), StreamError> {
        let idx = parse_shard(shard)?;
        self.fenced(stream, move |c, mut row, _| {
            let parent = shard_row(c, &row, idx)?;
            reshard::split(c, &mut row, &parent, new_starting_hash_key, now_ms())?;
            Ok(((), FenceOutcome::Changed))
        })
        .await
    }

    async fn merge_shards(
        &self,
        stream: &str,
        shard: &str,
        adjacent_shard: &str,
    ) -> Result<(), StreamError> {
        let a = parse_shard(shard)?;
        let b = parse_shard(adjacent_shard)?;
        self.fenced(stream, move |c, mut row, _| {
            let a = shard_row(c, &row, a)?;
            let b = shard_row(c, &row, b)?;
            reshard::merge(c, &mut row, &a, &b, now_ms())?;
            Ok(((), FenceOutcome::Changed))
        })
        .await
    }

    async fn update_shard_count(
        &self,
        stream: &str,
        target: u32,
    ) -> Result<UpdateShardCountOutput, StreamError> {
        check_shard_count(target)?;
        let clock = self.clock.clone();
        self.fenced(stream, move |c, mut row, _| {
            if row.mode == StreamMode::OnDemand {
                return Err(StreamError::InvalidArgument(format!(
                    "UpdateShardCount is not supported for stream {} in ON_DEMAND mode",
                    row.name
                )));
            }
            count_change(
                c,
                &row,
                SCALINGS_KEY,
                crate::MAX_SCALINGS_PER_DAY,
                clock.now_ms(),
                "UpdateShardCount calls",
            )?;
            let current = reshard::uniform(c, &mut row, target, now_ms())?;
            Ok((
                UpdateShardCountOutput {
                    current_shard_count: current,
                    target_shard_count: target,
                },
                FenceOutcome::Changed,
            ))
        })
        .await
    }

    async fn increase_retention(&self, stream: &str, hours: u32) -> Result<(), StreamError> {
        self.set_retention(stream, hours, true).await
    }

    async fn decrease_retention(&self, stream: &str, hours: u32) -> Result<(), StreamError> {
        self.set_retention(stream, hours, false).await
    }

    async fn update_max_record_size(&self, stream: &str, kib: u32) -> Result<(), StreamError> {
        let bytes = kib as usize * 1024;
        check_max_record_bytes(bytes)?;
        self.fenced(stream, move |c, row, _| {
            c.execute(
                "UPDATE streams SET max_record_bytes = ?2 WHERE id = ?1",
                params![row.id, bytes as i64],
            )?;
            Ok(((), FenceOutcome::Changed))
        })
        .await
    }

    async fn update_stream_mode(&self, stream: &str, mode: StreamMode) -> Result<(), StreamError> {
        let clock = self.clock.clone();
        self.fenced(stream, move |c, row, _| {
            if row.mode == mode {
                return Err(StreamError::InvalidArgument(format!(
                    "stream {} is already in {} mode",
                    row.name,
                    mode.as_str()
                )));
            }
            count_change(
                c,
                &row,
                MODE_CHANGES_KEY,
                crate::MAX_MODE_CHANGES_PER_DAY,
                clock.now_ms(),
                "capacity-mode switches",
            )?;
            c.execute(
                "UPDATE streams SET on_demand = ?2 WHERE id = ?1",
                params![row.id, mode == StreamMode::OnDemand],
            )?;
            Ok(((), FenceOutcome::Changed))
        })
        .await
    }

    async fn stream_setting(&self, stream: &str, key: &str) -> Result<Option<String>, StreamError> {
        let (name, key) = (stream.to_owned(), key.to_owned());
        self.db
            .read(move |c| {
                let row = load_stream(c, &name)?;
                setting(c, row.id, &key)
            })
            .await
    }

    async fn set_stream_setting(
        &self,
        stream: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<(), StreamError> {
        let (name, key) = (stream.to_owned(), key.to_owned());
        self.db
            .write(move |c| {
                let row = load_stream(c, &name)?;
                set_setting(c, row.id, &key, value.as_deref())
            })
            .await
    }

    async fn add_tags(
        &self,
        stream: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(), StreamError> {
        check_tags_to_add(&tags)?;
        let name = stream.to_owned();
        self.db
            .write(move |c| {
                let row = load_stream(c, &name)?;
                let existing: Vec<String> = c
                    .query_map(
                        "SELECT key FROM stream_tags WHERE stream_id = ?1",
                        params![row.id],
                        |r| r.get(0),
                    )?
                    .collect::<Result<_, _>>()?;
                check_tag_limit(&format!("stream {name}"), &existing, &tags)?;
                for (k, v) in &tags {
                    c.execute(
                        "INSERT INTO stream_tags (stream_id, key, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT (stream_id, key) DO UPDATE SET value = excluded.value",
                        params![row.id, k, v],
                    )?;
                }
                Ok(())
            })
            .await
    }

    async fn remove_tags(&self, stream: &str, keys: Vec<String>) -> Result<(), StreamError> {
        check_tag_keys_to_remove(&keys)?;
        let name = stream.to_owned();
        self.db
            .write(move |c| {
                let row = load_stream(c, &name)?;
                for k in &keys {
                    c.execute(
                        "DELETE FROM stream_tags WHERE stream_id = ?1 AND key = ?2",
                        params![row.id, k],
                    )?;
                }
                Ok(())
            })
            .await
    }

    async fn list_tags(
        &self,
        stream: &str,
        exclusive_start_key: Option<String>,
        limit: Option<u32>,
    ) -> Result<TagsPage, StreamError> {
        let limit = limit.unwrap_or(MAX_TAGS as u32);
        if !(1..=MAX_TAGS as u32).contains(&limit) {
            return Err(StreamError::InvalidArgument(format!(
                "limit must be between 1 and {MAX_TAGS}, got {limit}"
            )));
        }
        let name = stream.to_owned();
        self.db
            .read(move |c| {
                let row = load_stream(c, &name)?;
                let mut tags: Vec<(String, String)> = c
                    .query_map(
                        "SELECT key, value FROM stream_tags WHERE stream_id = ?1 AND key > ?2
                         ORDER BY key LIMIT ?3",
                        params![
                            row.id,
                            exclusive_start_key.unwrap_or_default(),
                            i64::from(limit) + 1
                        ],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?
                    .collect::<Result<_, _>>()?;
                let has_more = tags.len() > limit as usize;
                tags.truncate(limit as usize);
                Ok(TagsPage { tags, has_more })
            })
            .await
    }

    async fn register_consumer_with_tags(
        &self,
        stream: &str,
        name: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<crate::Consumer, StreamError> {
        self.register_consumer_impl(stream, name, tags).await
    }

    async fn add_consumer_tags(
        &self,
        consumer: &crate::ConsumerRef,
        tags: BTreeMap<String, String>,
    ) -> Result<(), StreamError> {
        self.add_consumer_tags_impl(consumer, tags).await
    }

    async fn remove_consumer_tags(
        &self,
        consumer: &crate::ConsumerRef,
        keys: Vec<String>,
    ) -> Result<(), StreamError> {
        self.remove_consumer_tags_impl(consumer, keys).await
    }

    async fn consumer_tags(
        &self,
        consumer: &crate::ConsumerRef,
    ) -> Result<BTreeMap<String, String>, StreamError> {
        self.consumer_tags_impl(consumer).await
    }

    async fn describe_consumer(
        &self,
        consumer: &crate::ConsumerRef,
    ) -> Result<crate::Consumer, StreamError> {
        self.describe_consumer_impl(consumer).await
    }

    async fn list_consumers(
        &self,
        input: crate::ListConsumersInput,
    ) -> Result<crate::ListConsumersOutput, StreamError> {
        self.list_consumers_impl(input).await
    }

    async fn deregister_consumer(&self, consumer: &crate::ConsumerRef) -> Result<(), StreamError> {
        self.deregister_consumer_impl(consumer).await
    }

    fn continuation_sequence_number(&self, iterator: &str) -> Result<String, StreamError> {
        let pos = iterator::decode(&self.iterator_key, iterator, now_ms())?;
        Ok(sequence_number(pos.h, pos.p.saturating_sub(1)))
    }

    fn token_stream(&self, token: &str) -> Option<String> {
        iterator::token_stream(&self.iterator_key, token)
    }
}

impl EmbeddedStream {
    async fn set_retention(
        &self,
        stream: &str,
        hours: u32,
        increase: bool,
    ) -> Result<(), StreamError> {
        check_retention_hours(hours)?;
        let name = stream.to_owned();
        self.db
            .write(move |c| {
                let row: StreamRow = load_stream(c, &name)?;
                if increase && hours < row.retention_hours {
                    return Err(StreamError::InvalidArgument(format!(
                        "retention of {hours} hours is below the current {} hours; decrease it instead",
                        row.retention_hours
                    )));
                }
                if !increase && hours > row.retention_hours {
                    return Err(StreamError::InvalidArgument(format!(
                        "retention of {hours} hours is above the current {} hours; increase it instead",
                        row.retention_hours
                    )));
                }
                c.execute(
                    "UPDATE streams SET retention_hours = ?2 WHERE id = ?1",
                    params![row.id, hours],
                )?;
                Ok(())
            })
            .await
    }
}

impl EmbeddedStream {
    /// Where a shard ends for readers (and LATEST) given its row's `next_counter`: one
    /// past its last durable record, never below what the metadata stored.
    async fn end_of(&self, key: ShardKey, row_next: u64) -> Result<u64, StreamError> {
        Ok(self
            .records
            .end(key)
            .await?
            .map_or(row_next, |e| e.next.max(row_next)))
    }

    async fn read_records(
        &self,
        pos: Position,
        limit: usize,
    ) -> Result<GetRecordsOutput, StreamError> {
        let (name, generation, idx) = (pos.s.clone(), pos.g, pos.h);
        let (stream_id, row_next, closed, start) = self
            .db
            .read(move |c| {
                let stream_id: i64 = c
                    .query_opt(
                        "SELECT id FROM streams WHERE name = ?1 AND created_ms = ?2",
                        params![name, generation],
                        |r| r.get(0),
                    )?
                    .ok_or_else(|| not_found(&name))?;
                let (row_next, closed, start): (i64, Option<i64>, i64) = c
                    .query_opt(
                        "SELECT next_counter, closed_counter, start_counter FROM shards
                         WHERE stream_id = ?1 AND idx = ?2",
                        params![stream_id, idx as i64],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?
                    .ok_or_else(|| {
                        StreamError::ResourceNotFound(format!(
                            "shard {} of stream {} not found",
                            shard_id(idx),
                            name
                        ))
                    })?;
                Ok::<_, StreamError>((stream_id, row_next, closed, start))
            })
            .await?;
        self.watch_stream(&pos.s, stream_id, false);
        let key = ShardKey::new(stream_id, pos.h);
        // Only durable records are visible in the engine, so this is the visible end. Taken
        // before the read: a record appended after it is read by the next call.
        let end = self.end_of(key, row_next as u64).await?;
        // Below the stored start lies what was trimmed: gone for every iterator.
        let from = pos.p.max(start as u64);
        let found = match self.records.read(key, from, limit, MAX_GET_BYTES).await {
            Ok(found) => found,
            Err(RecordError::Damaged { position, .. }) => {
                let seq = sequence_number(pos.h, position);
                tracing::error!(stream = %pos.s, sequence_number = %seq, "record is damaged: the stream log is corrupt");
                return Err(StreamError::Backend(format!(
                    "record {seq} of stream {} is damaged (checksum mismatch): the stream log is corrupt; run `sluice doctor`",
                    pos.s
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let mut next = found.next;
        if found.records.is_empty() && next < end {
            // No record lies in [from, end): those counters are durable without a record (a
            // shard's first counter, or trimmed ones), so none will ever appear there. Moving
            // past them lets a closed shard that never held a record drain.
            next = end;
        }
        let records: Vec<Record> = found
            .records
            .into_iter()
            .map(|r| Record {
                sequence_number: sequence_number(pos.h, r.position),
                approximate_arrival_ms: r.arrival_ms,
                partition_key: r.partition_key,
                data: r.data,
            })
            .collect();
        let millis_behind_latest = if next < end {
            self.records
                .arrival_at_or_after(key, next)
                .await?
                .map(|a| (now_ms() - a).max(0))
                .unwrap_or(0)
        } else {
            0
        };
        let drained = closed.is_some_and(|cc| next as i64 >= cc);
        let child_shards = if drained {
            self.db.read(move |c| children(c, stream_id, idx)).await?
        } else {
            Vec::new()
        };
        let next_iterator = (!drained).then(|| {
            iterator::encode(
                &self.iterator_key,
                &Position {
                    p: next,
                    t: now_ms(),
                    ..pos
                },
            )
        });
        Ok(GetRecordsOutput {
            records,
            next_iterator,
            millis_behind_latest,
            child_shards,
        })
    }
}

fn children(c: &Tx<'_>, stream_id: i64, idx: u64) -> Result<Vec<ChildShard>, StreamError> {
    let rows: Vec<LineageRow> = c
        .query_map(
            "SELECT idx, parent, adjacent_parent, start_hash, end_hash FROM shards
         WHERE stream_id = ?1 AND (parent = ?2 OR adjacent_parent = ?2) ORDER BY idx",
            params![stream_id, idx as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(idx, parent, adjacent, start, end)| {
            Ok(ChildShard {
                shard_id: shard_id(idx as u64),
                parent_shards: parent
                    .into_iter()
                    .chain(adjacent)
                    .map(|p| shard_id(p as u64))
                    .collect(),
                starting_hash_key: schema::parse_u128(&start)?,
                ending_hash_key: schema::parse_u128(&end)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
