//! The embedded stream backend: streams, shards, tags and consumers in the shared SQLite
//! database ([`sluice_meta::Meta`]); records in the stream log beside it (`embedded/log.rs`),
//! appended by its group-committing writer thread.
//!
//! Invariants:
//! - Each shard's counters are dense and only the log's writer assigns them; the log is
//!   their truth while it holds records of the shard, and `shards.next_counter` is written
//!   back before the records that prove a counter are deleted (and when the shard closes),
//!   so sequence numbers never repeat or go backwards — not after a crash, not after every
//!   record has been trimmed. Shard indexes come from the stream's `next_shard_idx`,
//!   which only grows, so a shard id is never reused; stream ids are never reused either.
//! - Arrival timestamps are non-decreasing per shard, so AT_TIMESTAMP positions and
//!   retention trimming agree with sequence order (trimming removes a prefix).
//! - A closed shard never receives another record; its children have higher indexes, so
//!   their sequence numbers are higher than any of the parent's.
//! - Every record's frame carries a CRC-32 that every read verifies: a damaged record is
//!   reported as an error, never skipped or returned.
//! - An append is acknowledged, and visible to readers, only after its batch was fsynced.
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
mod log;
mod reshard;
mod schema;
mod throttle;

pub use append::{enqueue_in_tx, settle_in_tx};
pub use log::LogStats;
pub use schema::MIGRATIONS;
pub use throttle::{
    READ_BYTES_PER_SEC, READ_CALLS_PER_SEC, WRITE_BYTES_PER_SEC, WRITE_RECORDS_PER_SEC,
};

use crate::iterator::{self, Position};
use crate::{
    ChildShard, CreateStreamOptions, DEFAULT_LIST_SHARDS, DEFAULT_LIST_STREAMS,
    DEFAULT_MAX_RECORD_BYTES, DEFAULT_ON_DEMAND_SHARDS, DEFAULT_RETENTION_HOURS, GetRecordsOutput,
    IteratorSpec, ListShardsInput, ListShardsOutput, ListStreamsInput, ListStreamsOutput,
    MAX_GET_BYTES, MAX_GET_RECORDS, MAX_LIST_SHARDS, MAX_LIST_STREAMS, MAX_MAX_RECORD_BYTES,
    MAX_PUT_RECORDS, MAX_PUT_RECORDS_BYTES, MAX_SHARDS, MAX_TAGS, NEXT_TOKEN_TTL_MS, PutRecord,
    PutResult, Record, ShardDesc, ShardFilter, Stream, StreamDesc, StreamError, StreamSummary,
    TagsPage, UpdateShardCountOutput, check_retention_hours, check_tag, even_ranges,
    parse_sequence_number, parse_shard_id, record_checksum, sequence_number, shard_id,
    validate_stream_name,
};
use schema::{ShardRow, StreamRow, load_stream, not_found, shard_row, shard_rows};

/// The counter of a new shard's first record. Counter 0 stays unused, so the shard's
/// starting sequence number (its `start_counter`, 0) is below every record's: resuming
/// AFTER_SEQUENCE_NUMBER at it (what a SubscribeToShard continuation at the very start of a
/// shard says) reads the first record. Shards created before this rule (by an older
/// sluice) began at 0 and keep doing so.
const FIRST_RECORD_COUNTER: u64 = 1;

/// Streams stored in the shared embedded database.
#[derive(Clone)]
pub struct EmbeddedStream {
    db: Meta,
    iterator_key: Arc<Vec<u8>>,
    watchers: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    /// The records: one log per database (held in `Meta::shared`).
    log: Arc<log::Log>,
    throttle: Option<Arc<throttle::Throttle>>,
    /// Stamps consumers and decides when a `Creating` consumer is `Active`.
    clock: Arc<dyn crate::Clock>,
    consumer_activation_ms: i64,
}

/// Where a database keeps its one [`log::Log`] (`Meta::shared`).
#[derive(Default)]
struct LogSlot(Mutex<Option<Arc<log::Log>>>);

impl LogSlot {
    fn get_or_open(
        &self,
        open: impl FnOnce() -> Result<log::Log, StreamError>,
    ) -> Result<(Arc<log::Log>, bool), StreamError> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = g.as_ref() {
            return Ok((l.clone(), false));
        }
        let l = Arc::new(open()?);
        *g = Some(l.clone());
        Ok((l, true))
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
    /// Size past which the stream log starts a new segment file ([`SEGMENT_BYTES`], 64 MiB,
    /// by default). Retention deletes whole segments. Only the first handle opened on a
    /// database sets it.
    pub segment_bytes: u64,
}

pub use log::SEGMENT_BYTES;

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
    log::dir_of(db_path)
}

impl EmbeddedStream {
    /// Opens the backend on metadata already migrated with [`MIGRATIONS`], with the
    /// records' log in `log_dir` (created if needed; see [`log_dir_of`]).
    pub fn open(db: Meta, log_dir: &Path) -> Result<Self, StreamError> {
        EmbeddedStream::open_with(db, log_dir, StreamOptions::default())
    }

    /// [`EmbeddedStream::open`] with options.
    pub fn open_with(
        db: Meta,
        log_dir: &Path,
        options: StreamOptions,
    ) -> Result<Self, StreamError> {
        use rand::RngCore;
        let mut fresh = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut fresh);
        let key: Vec<u8> = db.write_blocking(move |c| {
            c.execute(
                "INSERT INTO stream_meta (k, v) VALUES ('iterator_key', ?1) ON CONFLICT DO NOTHING",
                params![&fresh],
            )?;
            let k: Vec<u8> = c.query_row(
                "SELECT v FROM stream_meta WHERE k = 'iterator_key'",
                params![],
                |r| r.get(0),
            )?;
            Ok::<_, StreamError>(k)
        })?;
        let (log, opened) = db
            .shared::<LogSlot>()
            .get_or_open(|| log::Log::open(log_dir, options.segment_bytes))?;
        if opened {
            prepare_log(&db, &log)?;
        }
        Ok(EmbeddedStream {
            log,
            db,
            iterator_key: Arc::new(key),
            watchers: Arc::new(Mutex::new(HashMap::new())),
            throttle: options
                .throttle
                .then(|| Arc::new(throttle::Throttle::new(options.clock.clone()))),
            clock: options.clock,
            consumer_activation_ms: options.consumer_activation_ms.max(0),
        })
    }

    /// Opens the backend to inspect a database opened with [`Meta::open_read_only`]
    /// (`sluice doctor`): writes nothing. [`EmbeddedStream::check`] and the other reads
    /// work; anything that writes fails. The database is not migrated, so it may be of an
    /// older layout; [`EmbeddedStream::check`] reads every layout.
    pub fn open_read_only(db: Meta, log_dir: &Path) -> Result<Self, StreamError> {
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
        let (log, _) = db
            .shared::<LogSlot>()
            .get_or_open(|| log::Log::open_read_only(log_dir))?;
        Ok(EmbeddedStream {
            log,
            db,
            iterator_key: Arc::new(key),
            watchers: Arc::new(Mutex::new(HashMap::new())),
            throttle: None,
            clock: Arc::new(crate::SystemClock),
            consumer_activation_ms: 0,
        })
    }

    pub fn db(&self) -> &Meta {
        &self.db
    }

    /// What the stream log's writer did since the log was opened.
    pub fn log_stats(&self) -> LogStats {
        self.log.stats()
    }

    /// Tells tailing readers of `stream` that records were appended.
    /// Called after every append (no allocation): a stream nobody has watched yet has no
    /// channel, and a reader that starts watching later reads what is there first.
    pub fn notify(&self, stream: &str) {
        if let Ok(w) = self.watchers.lock()
            && let Some(tx) = w.get(stream)
        {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
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
    /// of each trimmed shard is stored (`shards.start_counter`) before any segment holding
    /// the trimmed records is deleted.
    pub async fn trim_expired(&self, now: i64) -> Result<TrimReport, StreamError> {
        let db = self.db.clone();
        let horizons: HashMap<i64, i64> = self
            .db
            .read(move |c| {
                c.query_map("SELECT id, retention_hours FROM streams", params![], |r| {
                    Ok((r.get::<i64>(0)?, now - r.get::<i64>(1)? * 3_600_000))
                })?
                .collect::<Result<_, _>>()
                .map_err(StreamError::from)
            })
            .await?;
        let list: Vec<(i64, i64)> = horizons.iter().map(|(k, v)| (*k, *v)).collect();
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
            .log
            .control(move |w| {
                let cut = w.trim(&horizons);
                store_log_state(&db, w, cut.starts)?;
                let dead = w.unreferenced_segments();
                if !dead.is_empty() {
                    w.delete_segments(&dead)?;
                }
                Ok::<_, StreamError>(cut.records)
            })
            .await??;
        Ok(TrimReport { records, shards })
    }

    /// Checks the database: SQLite's `PRAGMA integrity_check` (page structure, indexes),
    /// then every record against its checksum and every shard's counters. Problems are
    /// returned (and logged as errors), never repaired or skipped silently.
    pub async fn check(&self) -> Result<CheckReport, StreamError> {
        let mut report = self.db.read(check_db).await?;
        let log = self.log.clone();
        let verified = tokio::task::spawn_blocking(move || log.verify())
            .await
            .map_err(|e| StreamError::Backend(format!("log check stopped: {e}")))??;
        report.records_checked += verified.frames;
        report.problems.extend(verified.problems);
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
            if let Some((next, _)) = self.log.shard_end(id, idx)
                && next > end
            {
                report.problems.push(format!(
                    "closed shard {} of stream {name} holds records past its end (counter {end}, log has up to {})",
                    shard_id(idx),
                    next - 1
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

/// Writes the log's counters (and, for trimmed shards, their new start) back to SQLite, in
/// one durable transaction: afterwards the records proving them may be deleted.
fn store_log_state(
    db: &Meta,
    w: &log::Writer,
    starts: Vec<log::ShardStart>,
) -> Result<(), StreamError> {
    let ends = w.shard_ends();
    db.write_blocking(move |c| {
        write_back_counters(c, &ends)?;
        for &((sid, idx), start) in &starts {
            c.execute(
                "UPDATE shards SET start_counter = ?3
                 WHERE stream_id = ?1 AND idx = ?2 AND start_counter < ?3",
                params![sid, idx as i64, start as i64],
            )?;
        }
        Ok::<_, StreamError>(())
    })
}

/// Raises each shard's stored `next_counter` and `last_arrival_ms` to the log's
/// ([`log::Writer::shard_ends`]). Closed shards are left alone: theirs were stored when they
/// closed, and no record has been appended to them since.
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

/// Brings a freshly opened log in line with the database: forgets records of streams that
/// no longer exist, drops records below each shard's stored start (trimmed before a
/// restart), and moves records an older sluice kept in SQLite into the log.
fn prepare_log(db: &Meta, log: &Arc<log::Log>) -> Result<(), StreamError> {
    let (ids, starts): (Vec<i64>, Vec<log::ShardStart>) = db.read_blocking(|c| {
        let ids = c.query_vec("SELECT id FROM streams", params![], |r| r.get(0))?;
        let starts = c.query_vec(
            "SELECT stream_id, idx, start_counter FROM shards WHERE start_counter > 0",
            params![],
            |r| {
                Ok((
                    (r.get::<i64>(0)?, r.get::<i64>(1)? as u64),
                    r.get::<i64>(2)? as u64,
                ))
            },
        )?;
        Ok::<_, StreamError>((ids, starts))
    })?;
    log.control_blocking(move |w| {
        w.forget_streams_except(&ids);
        for (key, start) in starts {
            w.cut_before(key, start);
        }
    })?;
    // Records of an older layout: copied in chunks, in counter order, then deleted.
    loop {
        let chunk: Vec<log::ImportRecord> = db.read_blocking(|c| {
            c.query_vec(
                "SELECT stream_id, shard_idx, counter, arrival_ms, partition_key, data
                 FROM records ORDER BY stream_id, shard_idx, counter LIMIT 10000",
                params![],
                |r| {
                    Ok((
                        r.get::<i64>(0)?,
                        r.get::<i64>(1)? as u64,
                        r.get::<i64>(2)? as u64,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .map_err(StreamError::from)
        })?;
        let Some(last) = chunk.last().map(|r| (r.0, r.1, r.2)) else {
            break;
        };
        let n = chunk.len();
        log.control_blocking(move |w| w.import(chunk))??;
        db.write_blocking(move |c| {
            c.execute(
                "DELETE FROM records WHERE stream_id < ?1
                    OR (stream_id = ?1 AND shard_idx < ?2)
                    OR (stream_id = ?1 AND shard_idx = ?2 AND counter <= ?3)",
                params![last.0, last.1 as i64, last.2 as i64],
            )?;
            Ok::<_, StreamError>(())
        })?;
        tracing::info!(
            records = n,
            "moved records of an older layout into the stream log"
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
        validate_stream_name(name)?;
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
        validate_stream_name(name)?;
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
        let name = name.to_owned();
        let db = self.db.clone();
        // On the log's writer: no append of this stream is in flight, and none after.
        self.log
            .control(move |w| {
                let id = db.write_blocking(move |c| {
                    let row = load_stream(c, &name)?;
                    remember_stream_id(c, row.id)?;
                    c.execute("DELETE FROM records WHERE stream_id = ?1", params![row.id])?;
                    c.execute("DELETE FROM shards WHERE stream_id = ?1", params![row.id])?;
                    c.execute(
                        "DELETE FROM stream_tags WHERE stream_id = ?1",
                        params![row.id],
                    )?;
                    consumers::delete_all(c, row.id)?;
                    c.execute("DELETE FROM streams WHERE id = ?1", params![row.id])?;
                    Ok::<_, StreamError>(row.id)
                })?;
                w.forget_stream(id);
                Ok(())
            })
            .await?
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
                return Err(StreamError::InvalidArgument(format!(
                    "a put_records call carries at most {MAX_PUT_RECORDS_BYTES} bytes, got {total}"
                )));
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
        let shard = shard.to_owned();
        let key = self.iterator_key.clone();
        let log = self.log.clone();
        self.db
            .read(move |c| {
                let idx = parse_shard(&shard)?;
                let stream = load_stream(c, &name)?;
                let row = shard_row(c, &stream, idx)?;
                // LATEST starts after the last durable record (the log shows no other).
                let latest = log.end_of(stream.id, idx, row.next_counter);
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
                    IteratorSpec::AtTimestamp(ts) => log
                        .first_at_or_after(stream.id, idx, *ts)
                        .unwrap_or(latest)
                        .max(row.start_counter),
                };
                Ok(iterator::encode(
                    &key,
                    &Position {
                        s: name.clone(),
                        g: stream.created_ms,
                        h: idx,
                        p,
                        t: now_ms(),
                    },
                ))
            })
            .await
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
        let key = self.iterator_key.clone();
        let log = self.log.clone();
        let Some(throttle) = self.throttle.clone() else {
            return self
                .db
                .read(move |c| read_records(c, &key, &log, pos, limit))
                .await;
        };
        let (stream, generation, shard) = (pos.s.clone(), pos.g, pos.h);
        throttle.admit_read(&stream, generation, shard)?;
        let out = self
            .db
            .read(move |c| read_records(c, &key, &log, pos, limit))
            .await?;
        let bytes = out
            .records
            .iter()
            .map(|r| r.partition_key.len() + r.data.len())
            .sum();
        throttle.charge_read(&stream, generation, shard, bytes)?;
        Ok(out)
    }

    fn watch(&self, stream: &str) -> watch::Receiver<u64> {
        match self.watchers.lock() {
            Ok(mut w) => w
                .entry(stream.to_owned())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe(),
            // A poisoned map only loses wake-ups; readers still poll on their timeout.
            Err(_) => watch::channel(0).1,
        }
    }

    async fn split_shard(
        &self,
        stream: &str,
        shard: &str,
        new_starting_hash_key: u128,
    ) -> Result<(), StreamError> {
        let name = stream.to_owned();
        let idx = parse_shard(shard)?;
        self.reshard(move |c| {
            let mut row = load_stream(c, &name)?;
            let parent = shard_row(c, &row, idx)?;
            reshard::split(c, &mut row, &parent, new_starting_hash_key, now_ms())?;
            Ok((row.id, ()))
        })
        .await
    }

    async fn merge_shards(
        &self,
        stream: &str,
        shard: &str,
        adjacent_shard: &str,
    ) -> Result<(), StreamError> {
        let name = stream.to_owned();
        let a = parse_shard(shard)?;
        let b = parse_shard(adjacent_shard)?;
        self.reshard(move |c| {
            let mut row = load_stream(c, &name)?;
            let a = shard_row(c, &row, a)?;
            let b = shard_row(c, &row, b)?;
            reshard::merge(c, &mut row, &a, &b, now_ms())?;
            Ok((row.id, ()))
        })
        .await
    }

    async fn update_shard_count(
        &self,
        stream: &str,
        target: u32,
    ) -> Result<UpdateShardCountOutput, StreamError> {
        check_shard_count(target)?;
        let name = stream.to_owned();
        self.reshard(move |c| {
            let mut row = load_stream(c, &name)?;
            let current = reshard::uniform(c, &mut row, target, now_ms())?;
            Ok((
                row.id,
                UpdateShardCountOutput {
                    current_shard_count: current,
                    target_shard_count: target,
                },
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
        let name = stream.to_owned();
        self.reshard(move |c| {
            let row = load_stream(c, &name)?;
            c.execute(
                "UPDATE streams SET max_record_bytes = ?2 WHERE id = ?1",
                params![row.id, bytes as i64],
            )?;
            Ok((row.id, ()))
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
}

impl EmbeddedStream {
    /// Runs `job` — a change of a stream's shards or limits that returns the stream's id —
    /// on the log's writer thread: every append before it is durable and none runs during
    /// it. First the log's counters go to `shards`, so `job` closes shards at their true
    /// end; afterwards appends holding the old metadata are sent back to reload it.
    async fn reshard<T: Send + 'static>(
        &self,
        mut job: impl FnMut(&Tx<'_>) -> Result<(i64, T), StreamError> + Send + 'static,
    ) -> Result<T, StreamError> {
        let db = self.db.clone();
        self.log
            .control(move |w| {
                let ends = w.shard_ends();
                let (id, out) = db.write_blocking(move |c| {
                    write_back_counters(c, &ends)?;
                    job(c)
                })?;
                w.changed(id);
                Ok(out)
            })
            .await?
    }

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

fn read_records(
    c: &Tx<'_>,
    key: &[u8],
    log: &log::Log,
    pos: Position,
    limit: usize,
) -> Result<GetRecordsOutput, StreamError> {
    let stream_id: i64 = c
        .query_opt(
            "SELECT id FROM streams WHERE name = ?1 AND created_ms = ?2",
            params![pos.s, pos.g],
            |r| r.get(0),
        )?
        .ok_or_else(|| not_found(&pos.s))?;
    let (row_next, closed, start): (i64, Option<i64>, i64) = c
        .query_opt(
            "SELECT next_counter, closed_counter, start_counter FROM shards
             WHERE stream_id = ?1 AND idx = ?2",
            params![stream_id, pos.h as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?
        .ok_or_else(|| {
            StreamError::ResourceNotFound(format!(
                "shard {} of stream {} not found",
                shard_id(pos.h),
                pos.s
            ))
        })?;
    // Only durable records are in the log's index, so this is the visible end.
    let end = log.end_of(stream_id, pos.h, row_next as u64);
    // Below the stored start lies what was trimmed: gone for every iterator.
    let from = pos.p.max(start as u64);
    let found = log.read(&pos.s, stream_id, pos.h, from, limit, MAX_GET_BYTES)?;
    let mut next = found.next;
    if found.records.is_empty() && next < end {
        // No record lies in [from, end): those counters are durable without a record (a
        // shard's first counter, or trimmed ones), so none will ever appear there. Moving
        // past them lets a closed shard that never held a record drain.
        next = end;
    }
    let buf = Bytes::from(found.buf);
    let records: Vec<Record> = found
        .records
        .into_iter()
        .map(|r| Record {
            sequence_number: sequence_number(pos.h, r.counter),
            approximate_arrival_ms: r.arrival_ms,
            partition_key: r.partition_key,
            data: buf.slice(r.data),
        })
        .collect();
    let millis_behind_latest = if next < end {
        log.arrival_at_or_after(stream_id, pos.h, next)
            .map(|a| (now_ms() - a).max(0))
            .unwrap_or(0)
    } else {
        0
    };
    let drained = closed.is_some_and(|cc| next as i64 >= cc);
    let child_shards = if drained {
        children(c, stream_id, pos.h)?
    } else {
        Vec::new()
    };
    let next_iterator = (!drained).then(|| {
        iterator::encode(
            key,
            &Position {
                p: next,
                t: now_ms(),
                ..pos.clone()
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
