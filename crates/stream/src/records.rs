//! The record engine: where a stream's records live, behind [`RecordLog`].
//!
//! The Kinesis layer ([`crate::embedded::EmbeddedStream`]) keeps what describes streams
//! (streams, shards, lineage, tags, consumers, counters written back) in the metadata
//! engine and the records themselves in a record engine. A record engine knows nothing
//! of Kinesis: no hash keys, no sequence-number encoding, no iterators, no shard lineage.
//! It keeps, per shard — a [`ShardKey`]: the stream's id (never reused) and the shard's
//! index (never reused within a stream) — a log of records at dense, strictly increasing
//! **positions** (the Kinesis layer's counters), each with the partition key, the data and
//! an arrival time.
//!
//! Engines: [`embedded::EmbeddedLog`] (segment files written by one group-committing
//! thread; the default, `embedded://`) and, with the `nats` feature,
//! `jetstream::JetStreamLog` (`nats://…`, shared by many processes). [`open_records`]
//! picks one by URL.
//!
//! # The contract every engine honours
//!
//! - **Durable before acknowledged.** [`RecordLog::append`] answers
//!   [`AppendOutcome::Done`] only once every record of the append is durable (fsynced, or
//!   stored the way the engine promises to survive a crash); an append that fails leaves
//!   none of its records readable.
//! - **Readers never see a record before it is durable.** [`RecordLog::read`],
//!   [`RecordLog::end`] and the timestamp lookups show durable records only, so nothing a
//!   reader saw (and checkpointed) can be taken back by a crash.
//! - **Dense, strictly increasing positions per shard.** A record gets the larger of its
//!   shard's end (one past the last position handed out) and the caller's floor
//!   ([`NewRecord::min_position`]): the first record of a shard the engine holds nothing
//!   of gets the floor, and as long as floors do not pass the end (the caller's floors are
//!   ends it stored) every later one gets the next position after the previous one; the
//!   records of one append to one shard get consecutive positions in the append's order.
//!   Positions are never handed out twice, across restarts included, as long as the caller
//!   stores what [`RecordLog::trim`] asks it to persist and passes it back as the floor
//!   (that brings a shard back where it was after every record proving its end was
//!   deleted). Reads return records in position order; positions without a record (below
//!   a floor, trimmed, imported with gaps) are skipped.
//! - **Arrival times never decrease along a shard**: a record's arrival is the latest of
//!   the append's clock ([`Append::now_ms`]), the shard's last arrival and the caller's
//!   floor ([`NewRecord::min_arrival_ms`]). So "the first record at or after a time" is a
//!   prefix boundary, and trimming by age removes a prefix of each shard.
//! - **Dedup by ticket.** An append carrying an outbox ticket ([`Append::ticket`]) whose
//!   record the engine holds already — delivered before, or earlier in the same batch —
//!   appends nothing and answers the first result. The engine remembers a ticket as long
//!   as it keeps the record that delivered it (until trimmed or its stream dropped);
//!   callers settle tickets long before that.
//! - **Epochs fence metadata changes.** The caller routes records to shards with metadata
//!   it read after [`RecordLog::epoch`]; it passes that epoch with the append. A change of
//!   a stream's shards or limits runs inside [`RecordLog::fence`]: no append of that stream
//!   becomes durable while it runs, and once it committed every append of the stream that
//!   carries an older epoch is answered [`AppendOutcome::Stale`] (its records handed back
//!   to be routed again). So no record ever lands in a shard closed by a reshard.
//! - **Watch, not sleep.** Senders registered with [`RecordLog::subscribe`] are bumped
//!   after records of their stream became durable and readable, so a reader at the tail
//!   waits for a change instead of polling.
//! - **Errors are typed** ([`RecordError`]): a damaged record is reported
//!   ([`RecordError::Damaged`]) and never skipped; an engine that cannot tell whether a
//!   write reached its disk stops accepting appends rather than guess.
//!
//! # What a scale-out engine (NATS JetStream) must honour
//!
//! A sluice stream maps to a JetStream stream and a shard to a subject; the outbox ticket
//! becomes `Nats-Msg-Id` (server-side dedup within the duplicate window, which must be
//! longer than the time an unsettled outbox entry can wait), positions are the layer's
//! counters (kept dense by publishing with the expected last subject sequence, or carried
//! in a header) and reads and [`RecordLog::subscribe`] go through consumers. Acknowledge
//! only after the server's ack with `sync_interval: always` or R3. [`RecordLog::fence`]
//! must exclude appends of every process, not only its own.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use crate::StreamError;

#[doc(hidden)]
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
#[cfg(feature = "nats")]
pub mod jetstream;

/// A shard's log: the stream's id and the shard's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardKey {
    pub stream: i64,
    pub shard: u64,
}

impl ShardKey {
    pub fn new(stream: i64, shard: u64) -> Self {
        ShardKey { stream, shard }
    }
}

/// One record to append, already routed to its shard by the caller.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// The shard (of [`Append::stream`]) it goes to.
    pub shard: u64,
    /// The position this record gets at least (it gets the larger of this and the
    /// shard's end): where the caller's metadata says the shard had got to (a new shard's
    /// first position; after the engine lost every record of a shard, the end the caller
    /// persisted).
    pub min_position: u64,
    /// The arrival time the shard's next record gets at least (ms).
    pub min_arrival_ms: i64,
    pub partition_key: String,
    pub data: Bytes,
}

/// An append: records of one stream, durable together.
#[derive(Debug)]
pub struct Append {
    pub stream: i64,
    /// [`RecordLog::epoch`] as read before the metadata the records were routed with.
    pub epoch: u64,
    /// The outbox ticket this append delivers: then it holds exactly one record.
    pub ticket: Option<i64>,
    /// The caller's clock (ms): the records' arrival time, raised to the shard's last.
    pub now_ms: i64,
    /// No records: the append only checks the epoch (answers `Done` with nothing, or
    /// `Stale`), so a caller whose records all failed its own checks learns whether the
    /// metadata it checked them with was current.
    pub records: Vec<NewRecord>,
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub shard: u64,
    pub position: u64,
    pub arrival_ms: i64,
}

/// How an append was answered.
#[derive(Debug)]
pub enum AppendOutcome {
    /// Durable: one result per record, in the append's order. For a ticket delivered
    /// before: the first delivery's result (possibly in another shard, or stream).
    Done(Vec<Appended>),
    /// The stream's metadata changed after [`Append::epoch`]: nothing was written; the
    /// append comes back to be routed again with fresh metadata.
    Stale(Append),
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub position: u64,
    pub arrival_ms: i64,
    pub partition_key: String,
    pub data: Bytes,
}

/// What [`RecordLog::read`] found.
#[derive(Debug, Default)]
pub struct ReadOut {
    pub records: Vec<StoredRecord>,
    /// The position after the last record returned, or the read's `from` if none.
    pub next: u64,
}

/// Where a shard's durable records end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardEnd {
    /// One past the last position handed out.
    pub next: u64,
    /// The last record's arrival time (ms).
    pub last_arrival_ms: i64,
}

/// What a fenced change did ([`RecordLog::fence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceOutcome {
    /// Nothing changed: appends with older epochs stay valid.
    Unchanged,
    /// The stream's metadata changed: appends routed before are stale.
    Changed,
    /// As `Changed`, and these shards were closed: no append may ever land in them again
    /// (an engine shared by several processes seals them, so that a process still routing
    /// with older metadata is refused even before it learns of the change).
    Resharded { closed: Vec<u64> },
    /// The stream is gone: its records are dropped, and appends routed before are stale.
    Dropped,
}

/// A change of a stream's metadata, run by [`RecordLog::fence`] with the ends of the
/// stream's shards (those the engine holds records of). It may block (it runs off the
/// async runtime on some engines) and must not call back into the engine.
pub type FenceFn = Box<dyn FnOnce(&[(u64, ShardEnd)]) -> Result<FenceOutcome, StreamError> + Send>;

/// What a retention pass is about to release ([`RecordLog::trim`]).
#[derive(Debug, Clone, Default)]
pub struct TrimPlan {
    /// Every shard the engine holds records of, and its end.
    pub ends: Vec<(ShardKey, ShardEnd)>,
    /// Each trimmed shard and the position it now starts at.
    pub starts: Vec<(ShardKey, u64)>,
}

/// Stores a [`TrimPlan`] durably (the caller's metadata) before the engine releases the
/// trimmed records' storage. May block; must not call back into the engine.
pub type PersistFn = Box<dyn FnOnce(&TrimPlan) -> Result<(), StreamError> + Send>;

/// A record that already has its position (moving records in from another store).
#[derive(Debug, Clone)]
pub struct Imported {
    pub shard: ShardKey,
    pub position: u64,
    pub arrival_ms: i64,
    pub partition_key: String,
    pub data: Bytes,
}

/// A problem [`RecordLog::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The damaged record, when its header still names it: shard and position.
    pub record: Option<(ShardKey, u64)>,
    pub detail: String,
}

/// What [`RecordLog::verify`] found.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// Records read and checked.
    pub records: u64,
    pub problems: Vec<Problem>,
}

/// What an engine's writer did since it was opened (benchmarks, `sluice doctor`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Batches written (on the embedded engine each one `write` + one `fdatasync`).
    pub batches: u64,
    /// Records written.
    pub records: u64,
    /// Time spent writing (encoding excluded).
    pub write_nanos: u64,
    /// Time spent making writes durable (`fdatasync`).
    pub sync_nanos: u64,
}

/// Why a record engine failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A stored record fails its checks (checksum, position): the engine is corrupt there.
    #[error("record at position {position} of stream id {} shard {} is damaged", shard.stream, shard.shard)]
    Damaged { shard: ShardKey, position: u64 },
    /// The engine cannot be reached, or stopped accepting writes: try again later (or
    /// restart, as the message says).
    #[error("{0}")]
    Unavailable(String),
    /// The caller broke the trait's contract (e.g. a ticket on an append of several
    /// records).
    #[error("{0}")]
    Invalid(String),
    /// The caller's change ([`FenceFn`], [`PersistFn`]) failed; the engine changed
    /// nothing for it. Carries the caller's error unchanged.
    #[error("{0}")]
    Aborted(Box<StreamError>),
    /// Storage failed (I/O).
    #[error("{0}")]
    Backend(String),
    #[error("record engine {0} is not built in")]
    NotBuiltIn(String),
    #[error("invalid record engine URL {url}: {message}")]
    InvalidUrl { url: String, message: String },
}

impl From<RecordError> for StreamError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Aborted(e) => *e,
            RecordError::Invalid(m) => StreamError::InvalidArgument(m),
            RecordError::Unavailable(m) => StreamError::Unavailable(m),
            other => StreamError::Backend(other.to_string()),
        }
    }
}

/// Per-shard record logs: the engine under the Kinesis layer. See the module
/// documentation for the contract; each method's own rules follow.
#[async_trait]
pub trait RecordLog: Send + Sync + 'static {
    /// The engine and where it keeps its data, without secrets (logs, `sluice doctor`).
    fn describe(&self) -> String;

    /// The current epoch: read it *before* reading the metadata records are routed with,
    /// and pass it as [`Append::epoch`]. Cheap (no I/O).
    fn epoch(&self) -> u64;

    /// Appends `append`'s records, each after the last record of its shard, and answers
    /// once all of them are durable ([`AppendOutcome::Done`]: positions in the append's
    /// order), or `Stale` if the stream was changed by a [`RecordLog::fence`] after
    /// `append.epoch` (nothing written). A ticket already held answers its first result
    /// and writes nothing. Engines batch concurrent appends (one durable write for many).
    async fn append(&self, append: Append) -> Result<AppendOutcome, RecordError>;

    /// Several appends at once, each exactly as [`RecordLog::append`] would take it, answered
    /// in order: for a producer holding many independent appends (an outbox delivering one
    /// ticket per record), which an engine can then make durable together instead of
    /// batching only those that happen to arrive together. This default runs them one
    /// after another; both engines override it.
    async fn append_all(&self, appends: Vec<Append>) -> Vec<Result<AppendOutcome, RecordError>> {
        let mut out = Vec::with_capacity(appends.len());
        for a in appends {
            out.push(self.append(a).await);
        }
        out
    }

    /// Where the record that delivered `ticket` is, if the engine still holds it.
    async fn delivered(&self, ticket: i64) -> Result<Option<Appended>, RecordError>;

    /// Durable records of `shard` at positions `from` and above, in position order: at
    /// most `max_records`, and data of at most `max_bytes` (but at least one record when
    /// there is one). Reading stops before a damaged record; a read that starts at one
    /// fails with [`RecordError::Damaged`]. At the tail: no records, `next == from`.
    async fn read(
        &self,
        shard: ShardKey,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadOut, RecordError>;

    /// Where the shard's durable records end (None: the engine holds nothing of it).
    async fn end(&self, shard: ShardKey) -> Result<Option<ShardEnd>, RecordError>;

    /// The position of the first retained record of `shard` that arrived at or after
    /// `ts_ms` (None: none did).
    async fn first_at_or_after(
        &self,
        shard: ShardKey,
        ts_ms: i64,
    ) -> Result<Option<u64>, RecordError>;

    /// The arrival time of the first retained record of `shard` at or after `position`.
    async fn arrival_at_or_after(
        &self,
        shard: ShardKey,
        position: u64,
    ) -> Result<Option<i64>, RecordError>;

    /// Registers `to`, bumped (`send_modify`) after every append that made records of
    /// `stream` durable — appends of other processes too, on engines shared by several.
    /// Registering the same sender again does nothing. Dropped with the stream.
    fn subscribe(&self, stream: i64, to: Arc<watch::Sender<u64>>);

    /// Runs `change` — a change of `stream`'s metadata — with the ends of the stream's
    /// shards, once every append of the stream accepted before is durable and while none
    /// becomes durable. If it answers `Changed` or `Dropped`, every later append of the
    /// stream that carries an epoch from before is `Stale`; `Dropped` also drops the
    /// stream's records (as [`RecordLog::drop_stream`]). If it fails, nothing changes and
    /// its error comes back as [`RecordError::Aborted`].
    async fn fence(&self, stream: i64, change: FenceFn) -> Result<(), RecordError>;

    /// A retention pass: drops every record of each listed stream that arrived before its
    /// horizon (`(stream, horizon_ms)`; a prefix of each shard), hands `persist` the new
    /// starts and every shard's end, and releases the records' storage only after
    /// `persist` succeeded. Returns how many records went. If `persist` fails, the storage
    /// is kept and its error comes back as [`RecordError::Aborted`] (the records may stay
    /// unreadable until a reopen; a later pass trims them again). The starts persisted are
    /// the trim's durable record: after a reopen an engine may show records below them
    /// again (whose storage it had not released yet) until the caller re-applies them with
    /// [`RecordLog::drop_before`].
    async fn trim(&self, horizons: Vec<(i64, i64)>, persist: PersistFn)
    -> Result<u64, RecordError>;

    /// Drops the records of `shard` below `position` (what the caller trimmed before a
    /// restart); their storage goes at the next [`RecordLog::trim`]. Returns how many.
    async fn drop_before(&self, shard: ShardKey, position: u64) -> Result<u64, RecordError>;

    /// Drops every record of `stream` (deleted), its delivered tickets and subscribers.
    async fn drop_stream(&self, stream: i64) -> Result<(), RecordError>;

    /// The streams the engine holds anything of (records, or the end of a shard whose
    /// records were trimmed).
    async fn streams(&self) -> Result<Vec<i64>, RecordError>;

    /// Writes records that already have their positions (moving records in from another
    /// store); those at or below a position the engine holds for their shard are skipped.
    /// Durable on return.
    async fn import(&self, records: Vec<Imported>) -> Result<(), RecordError>;

    /// Reads every stored record again and reports what is damaged (`sluice doctor`).
    async fn verify(&self) -> Result<Verified, RecordError>;

    /// What the engine's writer did since it was opened.
    fn stats(&self) -> LogStats;
}

/// Opens the record engine a URL names. `embedded://` (the default) keeps the log in
/// `default_dir`; `embedded:///PATH` (or a plain path) in `PATH`; `?segment_bytes=N` sets
/// the embedded log's segment size. `nats://HOST:PORT[,HOST:PORT…][?prefix=…&replicas=…&
/// duplicate_window=…]` is NATS JetStream (when built with the `nats` feature).
pub async fn open_records(
    url: &str,
    default_dir: &std::path::Path,
) -> Result<Arc<dyn RecordLog>, RecordError> {
    match parse_url(url, default_dir)? {
        Engine::Embedded(dir, segment_bytes) => Ok(Arc::new(embedded::EmbeddedLog::open(
            &dir,
            segment_bytes.unwrap_or(embedded::SEGMENT_BYTES),
        )?)),
        Engine::Nats(url) => open_nats(&url).await,
    }
}

#[cfg(feature = "nats")]
async fn open_nats(url: &str) -> Result<Arc<dyn RecordLog>, RecordError> {
    let (servers, opts) = jetstream::parse_url(url)?;
    Ok(Arc::new(
        jetstream::JetStreamLog::open(&servers, opts).await?,
    ))
}

#[cfg(not(feature = "nats"))]
async fn open_nats(url: &str) -> Result<Arc<dyn RecordLog>, RecordError> {
    Err(RecordError::NotBuiltIn(format!(
        "nats ({})",
        shown_host(url)
    )))
}

/// [`open_records`] for inspection (`sluice doctor`): writes nothing (a JetStream engine
/// creates its two bookkeeping streams if they are missing, nothing else).
pub async fn open_records_read_only(
    url: &str,
    default_dir: &std::path::Path,
) -> Result<Arc<dyn RecordLog>, RecordError> {
    match parse_url(url, default_dir)? {
        Engine::Embedded(dir, _) => Ok(Arc::new(embedded::EmbeddedLog::open_read_only(&dir)?)),
        Engine::Nats(url) => open_nats(&url).await,
    }
}

/// A URL's host part, without credentials or query (messages).
#[cfg_attr(feature = "nats", allow(dead_code))]
fn shown_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.rsplit('@')
        .next()
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("")
}

/// The engine a URL names.
#[derive(Debug, PartialEq, Eq)]
enum Engine {
    /// The embedded log's directory and segment size.
    Embedded(std::path::PathBuf, Option<u64>),
    /// NATS JetStream: the URL as given (`nats+tls://` and `tls://` as `tls://`).
    Nats(String),
}

/// The embedded log's directory and segment size a URL names.
fn parse_url(url: &str, default_dir: &std::path::Path) -> Result<Engine, RecordError> {
    let invalid = |message: String| RecordError::InvalidUrl {
        url: url.to_owned(),
        message,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        // A plain path: the embedded log in that directory.
        return Ok(Engine::Embedded(std::path::PathBuf::from(url), None));
    };
    match scheme {
        "embedded" => {}
        "nats" => return Ok(Engine::Nats(url.to_owned())),
        "nats+tls" | "tls" => return Ok(Engine::Nats(format!("tls://{rest}"))),
        other => {
            return Err(invalid(format!(
                "unknown engine {other:?}; use embedded:// or nats://"
            )));
        }
    }
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let dir = match path {
        "" => default_dir.to_owned(),
        p if p.starts_with('/') => std::path::PathBuf::from(p),
        p => {
            return Err(invalid(format!(
                "{p:?} is not an absolute path (embedded:///PATH, three slashes)"
            )));
        }
    };
    let mut segment_bytes = None;
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("segment_bytes", v)) => {
                let n: u64 = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    invalid(format!(
                        "segment_bytes must be a positive number, got {v:?}"
                    ))
                })?;
                segment_bytes = Some(n);
            }
            _ => return Err(invalid(format!("unknown parameter {pair:?}"))),
        }
    }
    Ok(Engine::Embedded(dir, segment_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_engine_and_its_directory() {
        let d = std::path::Path::new("/data/log");
        assert_eq!(
            parse_url("embedded://", d).expect("default"),
            Engine::Embedded(d.to_owned(), None)
        );
        assert_eq!(
            parse_url("embedded:///x/y?segment_bytes=4096", d).expect("path"),
            Engine::Embedded(std::path::PathBuf::from("/x/y"), Some(4096))
        );
        assert_eq!(
            parse_url("nats://user:secret@host:4222", d).expect("nats"),
            Engine::Nats("nats://user:secret@host:4222".into())
        );
        assert_eq!(
            shown_host("nats://user:secret@host:4222?prefix=x"),
            "host:4222"
        );
        assert_eq!(
            parse_url("/plain/dir", d).expect("a plain path"),
            Engine::Embedded(std::path::PathBuf::from("/plain/dir"), None)
        );
        for bad in [
            "kafka://x",
            "embedded://relative",
            "embedded://?segment_bytes=0",
            "embedded://?x=1",
        ] {
            assert!(
                matches!(parse_url(bad, d), Err(RecordError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}
