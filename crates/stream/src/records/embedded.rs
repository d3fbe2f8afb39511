//! The embedded record engine, [`EmbeddedLog`]: the stream log, segment files that hold the
//! records, written by one group-committing thread.
//!
//! The metadata engine keeps what describes streams (streams, shards, tags, consumers);
//! the records themselves go to this log, because a record in SQLite cost its B-tree insert, its index
//! entry and its WAL frames on the append path — about 8 µs of CPU per record on a
//! machine whose two cores also run the runtime (docs/BENCHMARKS-stream.md, rounds 3–4).
//! Here an append is a copy into a buffer and a share of one `write` + `fdatasync`.
//!
//! Layout: one directory beside the database (`<db>-stream-log/`) holding segment files
//! named after the LSN of their first frame. A segment only grows; a new one starts when
//! the current one would pass the segment size ([`SEGMENT_BYTES`] unless configured), and
//! the old one is then cut to its last frame. Each record is one frame: a 72-byte header
//! (magic, CRC-32 of the rest of the frame, length, LSN, the first LSN of its batch,
//! stream id, shard, counter, arrival time, outbox ticket) then the partition key and the
//! data. The segment being written is kept [`PREALLOC_BYTES`] ahead in written zeros, so
//! that a batch's `fdatasync` flushes data only; zeros after the last frame of the last
//! segment are its normal end.
//!
//! One thread writes (started by [`EmbeddedLog::open`]). It takes every append waiting,
//! gives each record its counter (its position: see [`crate::records`]), writes the batch's
//! frames sorted by shard with one `write`, fsyncs, then adds the batch to the in-memory
//! index, bumps the subscribers of the streams it wrote to and answers. So:
//!
//! - **An acknowledged record is durable**, and a reader sees a record only after it is
//!   (the index is updated after the fsync): nothing a reader saw can be lost.
//! - **Counters are dense per shard** and only the writer thread assigns them; the caller
//!   stores each shard's end ([`RecordLog::trim`]'s `persist`, the metadata's
//!   `shards.next_counter`) before segments are deleted, and passes it back as the floor of
//!   the next append, so a shard's counter survives the loss of every record it held.
//! - **Frames are checksummed and LSNs consecutive.** On open every segment is scanned and
//!   the index rebuilt. A bad frame whose batch is the last one written is a torn tail (a
//!   crash mid-write: that batch was never acknowledged) and the segment is cut there. A
//!   bad frame anywhere else — in an older segment, or followed by a later batch — is
//!   corruption: it is reported (error log, `sluice doctor`), the scan resumes at the next
//!   good frame, and reads of the lost counters fail; nothing is skipped silently. (A
//!   later batch shows as a good frame or as a damaged frame whose header still reads.
//!   The limit: damage inside the last batch written, with nothing after it, is taken for
//!   a torn tail and cut even if that batch had been acknowledged: damage to the newest
//!   records, before any append followed them.) After a failed write or
//!   fsync the log refuses appends until restart: what reached the disk is then unknown.
//!   Except a write refused for want of space (`StorageFull`): the batch is cut off the
//!   file (truncated back to the last frame before it) and refused as `Unavailable`, and
//!   the log stays open for when space comes back; zeros ahead that find no room are
//!   simply tried again with the next batch.
//! - Metadata changes that the append path depends on (resharding, deletion, record size)
//!   run as jobs on the writer thread ([`RecordLog::fence`]), between batches: the epoch
//!   check of an append (is its metadata older than a change of its stream?) is done by
//!   the same thread that orders the appends, so it cannot race the change.
//!
//! The whole index is in memory (48 bytes per run of consecutive records of one shard in
//! one batch: one per record for a lone producer, far fewer under load) and is rebuilt by reading every segment at open: opening costs a
//! read of the retained records. Decision: simple and fast to append; per-segment index
//! files would bound the start-up read if retained data grows large.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::{
    Append, AppendOutcome, Appended, FenceFn, FenceOutcome, Imported, LogStats, PersistFn, Problem,
    ReadOut, RecordError, RecordLog, ShardEnd, ShardKey, StoredRecord, TrimPlan, Verified,
};

/// A segment is closed once it would grow past this (the default).
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// The segment being written is kept this far ahead of its end in zeros, written and
/// fsynced, so that an append's `fdatasync` has only data to flush: no new blocks, no new
/// file size (on this machine's disk that halves its cost, docs/BENCHMARKS-stream.md).
const PREALLOC_BYTES: u64 = 4 << 20;
/// Frame header bytes.
const HEADER: usize = 72;
const MAGIC: u32 = 0x534C_4731; // "SLG1"
/// Most records and bytes one batch takes from the queue.
const MAX_BATCH_RECORDS: usize = 8_192;
const MAX_BATCH_BYTES: usize = 32 << 20;

/// The log directory of the database at `db_path`.
pub fn dir_of(db_path: &Path) -> PathBuf {
    let name = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sluice.db".into());
    db_path.with_file_name(format!("{name}-stream-log"))
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHead {
    pub(crate) lsn: u64,
    pub(crate) batch_lsn: u64,
    pub(crate) stream_id: i64,
    pub(crate) shard: u64,
    pub(crate) counter: u64,
    pub(crate) arrival_ms: i64,
    /// The outbox ticket this record delivers (0: none).
    pub(crate) outbox: i64,
}

/// Appends one frame to `buf`.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, h: &FrameHead, pk: &[u8], data: &[u8]) {
    let start = buf.len();
    let len = HEADER + pk.len() + data.len();
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&[0; 4]); // checksum, filled below
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&(pk.len() as u32).to_le_bytes());
    for v in [h.lsn, h.batch_lsn] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.extend_from_slice(&h.stream_id.to_le_bytes());
    buf.extend_from_slice(&h.shard.to_le_bytes());
    buf.extend_from_slice(&h.counter.to_le_bytes());
    buf.extend_from_slice(&h.arrival_ms.to_le_bytes());
    buf.extend_from_slice(&h.outbox.to_le_bytes());
    buf.extend_from_slice(pk);
    buf.extend_from_slice(data);
    let sum = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
}

/// A frame read back: its header, partition key and data.
pub(crate) struct Frame<'a> {
    pub(crate) head: FrameHead,
    pub(crate) pk: &'a [u8],
    pub(crate) data: &'a [u8],
    pub(crate) len: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Decodes the frame at the start of `b`: `None` unless magic, length and checksum hold.
pub(crate) fn decode_frame(b: &[u8]) -> Option<Frame<'_>> {
    parse_frame(b).filter(|f| crc32fast::hash(&b[8..f.len]) == u32_at(b, 4))
}

/// What a frame's header says, checksum unchecked: only to name a damaged record.
fn parse_frame(b: &[u8]) -> Option<Frame<'_>> {
    if b.len() < HEADER || u32_at(b, 0) != MAGIC {
        return None;
    }
    let len = u32_at(b, 8) as usize;
    let pk_len = u32_at(b, 12) as usize;
    if len < HEADER || len > b.len() || pk_len > len - HEADER {
        return None;
    }
    Some(Frame {
        head: FrameHead {
            lsn: u64_at(b, 16),
            batch_lsn: u64_at(b, 24),
            stream_id: u64_at(b, 32) as i64,
            shard: u64_at(b, 40),
            counter: u64_at(b, 48),
            arrival_ms: u64_at(b, 56) as i64,
            outbox: u64_at(b, 64) as i64,
        },
        pk: &b[HEADER..HEADER + pk_len],
        data: &b[HEADER + pk_len..len],
        len,
    })
}

/// Consecutive records of one shard, stored back to back in one segment, that arrived in
/// one batch (so they share an arrival time).
#[derive(Debug, Clone, Copy)]
struct Run {
    first: u64,
    count: u64,
    seg: u64,
    offset: u64,
    bytes: u64,
    arrival_ms: i64,
}

impl Run {
    fn end(&self) -> u64 {
        self.first + self.count
    }
}

/// What the log holds of one shard.
#[derive(Debug, Default)]
struct ShardLog {
    runs: VecDeque<Run>,
    /// One past the last record's counter (0: never held a record here).
    next: u64,
    last_arrival_ms: i64,
    /// Counters lost to corruption, found at open: reads of them fail.
    damaged: Vec<(u64, u64)>,
}

impl ShardLog {
    fn push(&mut self, run: Run) {
        if let Some(last) = self.runs.back_mut()
            && last.seg == run.seg
            && last.offset + last.bytes == run.offset
            && last.end() == run.first
            && last.arrival_ms == run.arrival_ms
        {
            last.count += run.count;
            last.bytes += run.bytes;
        } else {
            self.runs.push_back(run);
        }
        self.next = run.first + run.count;
        self.last_arrival_ms = self.last_arrival_ms.max(run.arrival_ms);
    }
}

#[derive(Default)]
struct Index {
    shards: HashMap<(i64, u64), ShardLog>,
    /// Runs per segment; a segment nobody references (and not being written) is deleted.
    seg_runs: BTreeMap<u64, usize>,
    /// Outbox tickets delivered by a record still in the log: (stream id, shard, counter,
    /// arrival).
    delivered: HashMap<i64, (i64, u64, u64, i64)>,
}

impl Index {
    fn add_run(&mut self, key: (i64, u64), run: Run) {
        let sl = self.shards.entry(key).or_default();
        let before = sl.runs.len();
        sl.push(run);
        if sl.runs.len() > before {
            *self.seg_runs.entry(run.seg).or_default() += 1;
        }
    }

    fn drop_run(&mut self, run: &Run) {
        if let Some(n) = self.seg_runs.get_mut(&run.seg) {
            *n = n.saturating_sub(1);
        }
    }
}

struct AppendJob {
    append: Append,
    reply: oneshot::Sender<Result<AppendOutcome, RecordError>>,
}

type ControlFn = Box<dyn FnOnce(&mut Writer) + Send>;

enum Job {
    Append(AppendJob),
    /// Appends handed over together ([`RecordLog::append_all`]): always one batch.
    Appends(Vec<AppendJob>),
    Control(ControlFn),
}

/// State shared by the writer thread and readers.
struct Shared {
    dir: PathBuf,
    index: RwLock<Index>,
    files: RwLock<HashMap<u64, Arc<File>>>,
    /// Problems found when the log was opened (corruption), for `verify()`.
    problems: Mutex<Vec<Problem>>,
    /// Senders bumped after a batch wrote records of their stream ([`RecordLog::subscribe`]).
    subscribers: Mutex<HashMap<i64, Vec<Arc<watch::Sender<u64>>>>>,
    epoch: AtomicU64,
    /// Set once a write or fsync failed: no append is accepted until restart.
    failed: Mutex<Option<String>>,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    records: AtomicU64,
    write_nanos: AtomicU64,
    sync_nanos: AtomicU64,
}

fn add_elapsed(c: &AtomicU64, since: std::time::Instant) {
    c.fetch_add(
        u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

impl Shared {
    /// One past the last durable record of a shard, and its arrival time (None: the log
    /// holds nothing of it).
    fn shard_end(&self, stream_id: i64, shard: u64) -> Option<(u64, i64)> {
        lock_read(&self.index)
            .shards
            .get(&(stream_id, shard))
            .filter(|s| s.next > 0)
            .map(|s| (s.next, s.last_arrival_ms))
    }

    /// Where the record that delivered an outbox ticket is, if it is in the log.
    fn delivered(&self, ticket: i64) -> Option<Appended> {
        lock_read(&self.index)
            .delivered
            .get(&ticket)
            .map(|&(_, shard, position, arrival_ms)| Appended {
                shard,
                position,
                arrival_ms,
            })
    }
}

fn lock_read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn lock_write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> RecordError {
    RecordError::Backend(format!("stream log: cannot {what} {}: {e}", path.display()))
}

fn stopped() -> RecordError {
    RecordError::Unavailable("the stream log writer stopped".into())
}

/// The embedded record engine: one directory of segment files, one writer thread.
/// Open one per directory (a second writer would corrupt it): the Kinesis layer keeps one
/// per metadata handle.
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        lock(&self.jobs).take();
        if let Some(t) = lock(&self.thread).take() {
            // The last handle can go on the writer thread itself (a job held it): that thread
            // ends on its own once the queue is empty.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// What scanning the segments found.
struct Scan {
    index: Index,
    files: HashMap<u64, Arc<File>>,
    /// The segment to append to, where its frames end and its length with the zeros
    /// written ahead, if any.
    last: Option<(u64, u64, u64)>,
    next_lsn: u64,
    problems: Vec<Problem>,
    frames: u64,
}

/// Lists the segment ids of `dir`, in order.
fn segment_ids(dir: &Path) -> Result<Vec<u64>, RecordError> {
    let mut ids = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(io("list", dir, e)),
    };
    for e in entries {
        let e = e.map_err(|e| io("list", dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Reads every segment and rebuilds the index. `repair`: cut a torn tail off the last
/// segment (a read-only scan only reports it).
fn scan(dir: &Path, repair: bool) -> Result<Scan, RecordError> {
    let ids = segment_ids(dir)?;
    let mut out = Scan {
        index: Index::default(),
        files: HashMap::new(),
        last: None,
        next_lsn: ids.first().copied().unwrap_or(1).max(1),
        problems: Vec::new(),
        frames: 0,
    };
    let mut damaged = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let path = segment_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(repair)
            .open(&path)
            .map_err(|e| io("open", &path, e))?;
        let mut data = Vec::new();
        {
            use std::io::Read;
            (&file)
                .read_to_end(&mut data)
                .map_err(|e| io("read", &path, e))?;
        }
        if id < out.next_lsn {
            out.problems.push(Problem {
                record: None,
                detail: format!(
                    "segment {} starts at LSN {id}, below the {} its predecessor ended at",
                    path.display(),
                    out.next_lsn
                ),
            });
        }
        // Segments deleted in between leave a gap in LSNs: that is fine.
        let mut expected = id.max(out.next_lsn);
        let is_last = i + 1 == ids.len();
        let mut off = 0usize;
        let mut len = data.len() as u64;
        while off < data.len() {
            match decode_frame(&data[off..]) {
                Some(f) if f.head.lsn == expected => {
                    index_frame(&mut out.index, &mut out.problems, id, off as u64, &f);
                    out.frames += 1;
                    expected += 1;
                    off += f.len;
                }
                _ if is_last && data[off..].iter().all(|b| *b == 0) => {
                    // Zeros written ahead ([`PREALLOC_BYTES`]): the end of the frames.
                    len = off as u64;
                    break;
                }
                _ => {
                    let (resync, later_batch) = later_frames(&data, off, expected);
                    let corrupt = !is_last || later_batch;
                    if !corrupt {
                        if repair {
                            file.set_len(off as u64)
                                .and_then(|()| file.sync_all())
                                .map_err(|e| io("cut the torn tail of", &path, e))?;
                            tracing::warn!(
                                segment = %path.display(),
                                offset = off,
                                dropped_bytes = data.len() - off,
                                "stream log: cut a torn tail (a batch that was being written when the process stopped; it was never acknowledged)"
                            );
                        }
                        len = off as u64;
                        break;
                    }
                    // The damaged frame's header, if it still reads, names the record.
                    let victim = parse_frame(&data[off..])
                        .filter(|f| f.head.lsn == expected)
                        .map(|f| {
                            (
                                ShardKey::new(f.head.stream_id, f.head.shard),
                                f.head.counter,
                            )
                        });
                    let msg = match resync {
                        Some((p, lsn)) => format!(
                            "segment {} is damaged at byte {off} (expected LSN {expected}); \
                             the frames up to LSN {} are lost, scanning resumed at byte {p}",
                            path.display(),
                            lsn.saturating_sub(1)
                        ),
                        None => format!(
                            "segment {} is damaged at byte {off} (expected LSN {expected}); \
                             the rest of the segment ({} bytes) is unreadable",
                            path.display(),
                            data.len() - off
                        ),
                    };
                    tracing::error!(problem = %msg, record = ?victim, "stream log is corrupt");
                    out.problems.push(Problem {
                        record: victim,
                        detail: msg,
                    });
                    let end = resync.map_or(data.len(), |(p, _)| p);
                    damaged.extend(damaged_heads(&data[off..end]));
                    match resync {
                        Some((p, lsn)) => {
                            off = p;
                            expected = lsn;
                        }
                        None => break,
                    }
                }
            }
        }
        out.next_lsn = expected;
        out.files.insert(id, Arc::new(file));
        if is_last {
            let allocated = if len == data.len() as u64 || !repair {
                data.len() as u64
            } else {
                len
            };
            out.last = Some((id, len, allocated.max(len)));
        }
    }
    note_damaged(&mut out.index, &damaged);
    Ok(out)
}

/// After a bad frame at `from` (where LSN `expected` was due): the first good frame with
/// an LSN at or above it (position, LSN), if any, and whether anything after `from` belongs
/// to a batch that began after the bad frame's — a good frame, or the still readable
/// header of a damaged one. A torn write only ever leaves (parts of) the one batch being
/// written, so such a frame means the damage is not a torn tail.
fn later_frames(data: &[u8], from: usize, expected: u64) -> (Option<(usize, u64)>, bool) {
    let mut first = None;
    let mut later = false;
    let mut p = from + 1;
    while p < data.len() && !(later && first.is_some()) {
        if let Some(f) = decode_frame(&data[p..]).filter(|f| f.head.lsn >= expected) {
            first.get_or_insert((p, f.head.lsn));
            later |= f.head.batch_lsn > expected;
            p += f.len;
            continue;
        }
        if let Some(f) = parse_frame(&data[p..]) {
            later |= f.head.batch_lsn > expected && f.head.lsn > expected;
        }
        p += 1;
    }
    (first, later)
}

/// The still readable headers of damaged frames in `region`.
fn damaged_heads(region: &[u8]) -> Vec<FrameHead> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < region.len() {
        match parse_frame(&region[p..]) {
            Some(f) => {
                out.push(f.head);
                p += f.len.max(1);
            }
            None => p += 1,
        }
    }
    out
}

/// Applied once every segment is scanned: a damaged frame's counter that no good frame of
/// its shard went past is lost at the shard's end — reads of it fail, and it is never
/// handed out again. (Below a good frame, the gap was marked when that frame was indexed.)
fn note_damaged(index: &mut Index, heads: &[FrameHead]) {
    for h in heads {
        let sl = index.shards.entry((h.stream_id, h.shard)).or_default();
        if h.counter >= sl.next {
            let from = if sl.next == 0 { h.counter } else { sl.next };
            sl.damaged.push((from, h.counter + 1));
            sl.next = h.counter + 1;
        }
    }
}

fn index_frame(index: &mut Index, problems: &mut Vec<Problem>, seg: u64, off: u64, f: &Frame<'_>) {
    let key = (f.head.stream_id, f.head.shard);
    let sl = index.shards.entry(key).or_default();
    if sl.next != 0 && f.head.counter != sl.next {
        if f.head.counter < sl.next {
            let msg = format!(
                "frame LSN {} repeats counter {} of stream {} shard {} (next was {}): ignored",
                f.head.lsn, f.head.counter, f.head.stream_id, f.head.shard, sl.next
            );
            tracing::error!(problem = %msg, "stream log is corrupt");
            problems.push(Problem {
                record: None,
                detail: msg,
            });
            return;
        }
        sl.damaged.push((sl.next, f.head.counter));
    }
    index.add_run(
        key,
        Run {
            first: f.head.counter,
            count: 1,
            seg,
            offset: off,
            bytes: f.len as u64,
            arrival_ms: f.head.arrival_ms,
        },
    );
    if f.head.outbox != 0 {
        index.delivered.insert(
            f.head.outbox,
            (
                f.head.stream_id,
                f.head.shard,
                f.head.counter,
                f.head.arrival_ms,
            ),
        );
    }
}

/// Reads of at most this many bytes of frames run on the caller's thread (the index says
/// where they are, and recent frames are in the page cache); larger ones on the blocking
/// pool, so that a reader catching up never holds an async worker for long.
const INLINE_READ_BYTES: u64 = 256 << 10;

/// Where a read finds its frames.
struct ReadPlan {
    key: ShardKey,
    from: u64,
    max_records: usize,
    max_bytes: usize,
    /// (segment, offset, bytes) spans to read.
    spans: Vec<(u64, u64, u64)>,
    /// Where reading must stop (damage).
    stop_at: u64,
}

impl ReadPlan {
    fn bytes(&self) -> u64 {
        self.spans.iter().map(|s| s.2).sum()
    }
}

thread_local! {
    /// Each thread's read buffer, kept between reads ([`ReadBuffer`]).
    static READ_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Largest read buffer a thread keeps for its next read.
const KEPT_READ_BUFFER: usize = 1 << 20;

/// The calling thread's read buffer, given back when dropped (unless it grew past
/// [`KEPT_READ_BUFFER`]). A fresh buffer per read cost its allocation and its zero-filling:
/// half of a GetRecords' CPU in the session-6 profile (docs/BENCHMARKS.md). A read
/// overwrites every byte it then looks at, so what an earlier read left never shows.
struct ReadBuffer(Vec<u8>);

impl ReadBuffer {
    fn take() -> ReadBuffer {
        ReadBuffer(READ_BUFFER.try_with(|b| b.take()).unwrap_or_default())
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        if self.0.capacity() <= KEPT_READ_BUFFER {
            let kept = std::mem::take(&mut self.0);
            let _ = READ_BUFFER.try_with(|b| b.set(kept));
        }
    }
}

impl Shared {
    /// Finds the frames a read needs in the index.
    fn plan_read(
        &self,
        key: ShardKey,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadPlan, RecordError> {
        let mut plan = ReadPlan {
            key,
            from,
            max_records,
            max_bytes,
            spans: Vec::new(),
            stop_at: u64::MAX,
        };
        let idx = lock_read(&self.index);
        let Some(sl) = idx.shards.get(&(key.stream, key.shard)) else {
            return Ok(plan);
        };
        for &(a, b) in &sl.damaged {
            if from >= a && from < b {
                return Err(damaged(key, from));
            }
            if a > from {
                plan.stop_at = plan.stop_at.min(a);
            }
        }
        let mut i = sl.runs.partition_point(|r| r.end() <= from);
        let (mut n, mut bytes) = (0u64, 0u64);
        while let Some(r) = sl.runs.get(i) {
            if r.first >= plan.stop_at || n >= max_records as u64 || bytes > max_bytes as u64 {
                break;
            }
            n += r.end() - r.first.max(from);
            bytes += r.bytes;
            match plan.spans.last_mut() {
                Some(s) if s.0 == r.seg && s.1 + s.2 == r.offset => s.2 += r.bytes,
                _ => plan.spans.push((r.seg, r.offset, r.bytes)),
            }
            i += 1;
        }
        Ok(plan)
    }

    /// Reads the frames of `plan`, verifying each frame's checksum and position; a damaged
    /// record is an error naming it.
    fn run_read(&self, plan: ReadPlan) -> Result<ReadOut, RecordError> {
        let ReadPlan {
            key,
            from,
            max_records,
            max_bytes,
            spans,
            stop_at,
        } = plan;
        // The frames' data, back to back, then cut into one `Bytes` per record.
        let mut buf: Vec<u8> = Vec::new();
        let mut found: Vec<(u64, i64, String, std::ops::Range<usize>)> = Vec::new();
        let mut next = from;
        let mut chunk = ReadBuffer::take();
        let chunk = &mut chunk.0;
        'spans: for (seg, offset, bytes) in spans {
            // Deleted since the index was read: its records were trimmed meanwhile.
            let Some(file) = lock_read(&self.files).get(&seg).cloned() else {
                continue;
            };
            chunk.resize(bytes as usize, 0);
            file.read_exact_at(chunk, offset)
                .map_err(|e| io("read", &segment_path(&self.dir, seg), e))?;
            let mut p = 0usize;
            while p < chunk.len() {
                let expected = next.max(from);
                let f = decode_frame(&chunk[p..])
                    .filter(|f| f.head.stream_id == key.stream && f.head.shard == key.shard)
                    .ok_or_else(|| damaged(key, expected))?;
                p += f.len;
                if f.head.counter < from {
                    continue;
                }
                if f.head.counter >= stop_at {
                    break 'spans;
                }
                if !found.is_empty()
                    && (found.len() >= max_records || buf.len() + f.data.len() > max_bytes)
                {
                    break 'spans;
                }
                let pk = std::str::from_utf8(f.pk)
                    .map_err(|_| damaged(key, f.head.counter))?
                    .to_owned();
                let start = buf.len();
                buf.extend_from_slice(f.data);
                found.push((f.head.counter, f.head.arrival_ms, pk, start..buf.len()));
                next = f.head.counter + 1;
            }
        }
        let buf = Bytes::from(buf);
        Ok(ReadOut {
            records: found
                .into_iter()
                .map(|(position, arrival_ms, partition_key, data)| StoredRecord {
                    position,
                    arrival_ms,
                    partition_key,
                    data: buf.slice(data),
                })
                .collect(),
            next,
        })
    }
}

impl EmbeddedLog {
    /// Scans `dir` (read and write) and starts the writer thread; new segments are closed
    /// once they would pass `segment_bytes`.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<EmbeddedLog, RecordError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let s = scan(dir, true)?;
        Ok(EmbeddedLog::start(dir, s, Some(segment_bytes.max(1))))
    }

    /// Scans `dir` without changing it and starts no writer (`sluice doctor`): reads work,
    /// anything that writes fails.
    pub fn open_read_only(dir: &Path) -> Result<EmbeddedLog, RecordError> {
        let s = scan(dir, false)?;
        Ok(EmbeddedLog::start(dir, s, None))
    }

    /// The directory of the segments.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Checks every frame of the directory again (what `sluice doctor` reports).
    fn verify_blocking(shared: &Shared) -> Result<Verified, RecordError> {
        let s = scan(&shared.dir, false)?;
        let mut problems = lock(&shared.problems).clone();
        for p in s.problems {
            if !problems.contains(&p) {
                problems.push(p);
            }
        }
        Ok(Verified {
            records: s.frames,
            problems,
        })
    }

    fn start(dir: &Path, s: Scan, writer: Option<u64>) -> EmbeddedLog {
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            index: RwLock::new(s.index),
            files: RwLock::new(s.files),
            problems: Mutex::new(s.problems),
            subscribers: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(1),
            failed: Mutex::new(None),
            stats: Counters::default(),
        });
        let (jobs, thread) = if let Some(segment_bytes) = writer {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let w = Writer {
                shared: shared.clone(),
                current: s.last,
                zeros: Vec::new(),
                segment_bytes,
                next_lsn: s.next_lsn,
                changed: HashMap::new(),
                buf: Vec::new(),
            };
            let t = std::thread::Builder::new()
                .name("sluice-stream-log".into())
                .spawn(move || w.run(rx))
                .ok();
            (t.is_some().then_some(tx), t)
        } else {
            (None, None)
        };
        EmbeddedLog {
            shared,
            jobs: Mutex::new(jobs),
            thread: Mutex::new(thread),
        }
    }

    fn send(&self, job: Job) -> Result<(), RecordError> {
        let g = lock(&self.jobs);
        let tx = g.as_ref().ok_or_else(|| {
            RecordError::Unavailable("the stream log is not open for writing".into())
        })?;
        tx.send(job).map_err(|_| stopped())
    }

    /// Runs `f` on the writer thread between batches (every earlier append is durable and
    /// no other runs meanwhile).
    async fn control<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> R + Send + 'static,
    ) -> Result<R, RecordError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Control(Box::new(move |w| {
            let _ = tx.send(f(w));
        })))?;
        rx.await.map_err(|_| stopped())
    }

    /// [`EmbeddedLog::control`] for callers outside a runtime (tests).
    #[cfg(test)]
    fn control_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> R + Send + 'static,
    ) -> Result<R, RecordError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(Job::Control(Box::new(move |w| {
            let _ = tx.send(f(w));
        })))?;
        rx.recv().map_err(|_| stopped())
    }

    /// One past the last durable record of a shard, and its arrival time (None: the log
    /// holds nothing of it since it was opened, and nothing on disk).
    fn shard_end(&self, key: ShardKey) -> Option<ShardEnd> {
        self.shared
            .shard_end(key.stream, key.shard)
            .map(|(next, last_arrival_ms)| ShardEnd {
                next,
                last_arrival_ms,
            })
    }

    /// [`RecordLog::read`] on the calling thread.
    #[cfg(test)]
    fn read_blocking(
        &self,
        key: ShardKey,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadOut, RecordError> {
        let plan = self.shared.plan_read(key, from, max_records, max_bytes)?;
        self.shared.run_read(plan)
    }
}

#[async_trait]
impl RecordLog for EmbeddedLog {
    fn describe(&self) -> String {
        format!("embedded://{}", self.shared.dir.display())
    }

    fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::SeqCst)
    }

    async fn append(&self, append: Append) -> Result<AppendOutcome, RecordError> {
        if append.ticket.is_some() && append.records.len() > 1 {
            return Err(one_record_per_ticket(append.records.len()));
        }
        let (reply, answer) = oneshot::channel();
        self.send(Job::Append(AppendJob { append, reply }))?;
        answer.await.map_err(|_| stopped())?
    }

    async fn append_all(&self, appends: Vec<Append>) -> Vec<Result<AppendOutcome, RecordError>> {
        let mut jobs = Vec::with_capacity(appends.len());
        let mut answers = Vec::with_capacity(appends.len());
        for append in appends {
            let (reply, answer) = oneshot::channel();
            if append.ticket.is_some() && append.records.len() > 1 {
                let _ = reply.send(Err(one_record_per_ticket(append.records.len())));
            } else {
                jobs.push(AppendJob { append, reply });
            }
            answers.push(answer);
        }
        let sent = if jobs.is_empty() {
            Ok(())
        } else {
            self.send(Job::Appends(jobs))
        };
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(match (&sent, answer.await) {
                (_, Ok(r)) => r,
                // Not sent: the log is closed or its writer stopped (both `Unavailable`).
                (Err(e), Err(_)) => Err(RecordError::Unavailable(e.to_string())),
                (Ok(()), Err(_)) => Err(stopped()),
            });
        }
        out
    }

    async fn delivered(&self, ticket: i64) -> Result<Option<Appended>, RecordError> {
        Ok(self.shared.delivered(ticket))
    }

    async fn read(
        &self,
        shard: ShardKey,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadOut, RecordError> {
        let plan = self.shared.plan_read(shard, from, max_records, max_bytes)?;
        if plan.bytes() <= INLINE_READ_BYTES || tokio::runtime::Handle::try_current().is_err() {
            return self.shared.run_read(plan);
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.run_read(plan))
            .await
            .map_err(|e| RecordError::Backend(format!("stream log read stopped: {e}")))?
    }

    async fn end(&self, shard: ShardKey) -> Result<Option<ShardEnd>, RecordError> {
        Ok(self.shard_end(shard))
    }

    async fn first_at_or_after(
        &self,
        shard: ShardKey,
        ts_ms: i64,
    ) -> Result<Option<u64>, RecordError> {
        let idx = lock_read(&self.shared.index);
        Ok(idx.shards.get(&(shard.stream, shard.shard)).and_then(|sl| {
            let i = sl.runs.partition_point(|r| r.arrival_ms < ts_ms);
            sl.runs.get(i).map(|r| r.first)
        }))
    }

    async fn arrival_at_or_after(
        &self,
        shard: ShardKey,
        position: u64,
    ) -> Result<Option<i64>, RecordError> {
        let idx = lock_read(&self.shared.index);
        Ok(idx.shards.get(&(shard.stream, shard.shard)).and_then(|sl| {
            let i = sl.runs.partition_point(|r| r.end() <= position);
            sl.runs.get(i).map(|r| r.arrival_ms)
        }))
    }

    fn subscribe(&self, stream: i64, to: Arc<watch::Sender<u64>>) {
        let mut subs = lock(&self.shared.subscribers);
        let list = subs.entry(stream).or_default();
        if !list.iter().any(|s| Arc::ptr_eq(s, &to)) {
            list.push(to);
        }
    }

    async fn fence(&self, stream: i64, change: FenceFn) -> Result<(), RecordError> {
        self.control(move |w| {
            let ends = w.stream_ends(stream);
            match change(&ends) {
                Ok(FenceOutcome::Unchanged) => Ok(()),
                Ok(FenceOutcome::Changed | FenceOutcome::Resharded { .. }) => {
                    w.changed(stream);
                    Ok(())
                }
                Ok(FenceOutcome::Dropped) => {
                    w.forget_stream(stream);
                    Ok(())
                }
                Err(e) => Err(RecordError::Aborted(Box::new(e))),
            }
        })
        .await?
    }

    async fn trim(
        &self,
        horizons: Vec<(i64, i64)>,
        persist: PersistFn,
    ) -> Result<u64, RecordError> {
        let horizons: HashMap<i64, i64> = horizons.into_iter().collect();
        self.control(move |w| {
            let cut = w.trim(&horizons);
            let plan = TrimPlan {
                ends: w
                    .shard_ends()
                    .into_iter()
                    .map(|((stream, shard), next, last_arrival_ms)| {
                        (
                            ShardKey::new(stream, shard),
                            ShardEnd {
                                next,
                                last_arrival_ms,
                            },
                        )
                    })
                    .collect(),
                starts: cut
                    .starts
                    .iter()
                    .map(|&((stream, shard), start)| (ShardKey::new(stream, shard), start))
                    .collect(),
            };
            persist(&plan).map_err(|e| RecordError::Aborted(Box::new(e)))?;
            let dead = w.unreferenced_segments();
            if !dead.is_empty() {
                w.delete_segments(&dead)?;
            }
            Ok(cut.records)
        })
        .await?
    }

    async fn drop_before(&self, shard: ShardKey, position: u64) -> Result<u64, RecordError> {
        self.control(move |w| w.cut_before((shard.stream, shard.shard), position))
            .await
    }

    async fn drop_stream(&self, stream: i64) -> Result<(), RecordError> {
        self.control(move |w| w.forget_stream(stream)).await
    }

    async fn streams(&self) -> Result<Vec<i64>, RecordError> {
        let idx = lock_read(&self.shared.index);
        let ids: std::collections::BTreeSet<i64> = idx.shards.keys().map(|k| k.0).collect();
        Ok(ids.into_iter().collect())
    }

    async fn import(&self, records: Vec<Imported>) -> Result<(), RecordError> {
        self.control(move |w| w.import(records)).await?
    }

    async fn verify(&self) -> Result<Verified, RecordError> {
        let shared = self.shared.clone();
        if tokio::runtime::Handle::try_current().is_err() {
            return EmbeddedLog::verify_blocking(&shared);
        }
        tokio::task::spawn_blocking(move || EmbeddedLog::verify_blocking(&shared))
            .await
            .map_err(|e| RecordError::Backend(format!("log check stopped: {e}")))?
    }

    fn stats(&self) -> LogStats {
        let c = &self.shared.stats;
        LogStats {
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            write_nanos: c.write_nanos.load(Ordering::Relaxed),
            sync_nanos: c.sync_nanos.load(Ordering::Relaxed),
        }
    }
}

fn damaged(shard: ShardKey, position: u64) -> RecordError {
    tracing::error!(
        stream_id = shard.stream,
        shard = shard.shard,
        position,
        "record is damaged: the stream log is corrupt"
    );
    RecordError::Damaged { shard, position }
}

/// A shard (stream id, index) and the counter it starts at.
type ShardStart = ((i64, u64), u64);

/// What a retention pass removed ([`Writer::trim`]).
#[derive(Default)]
struct Cut {
    records: u64,
    /// (stream id, shard) and the counter it now starts at.
    starts: Vec<ShardStart>,
}

/// The writer thread's state; [`EmbeddedLog::control`] jobs get it.
struct Writer {
    shared: Arc<Shared>,
    /// The segment being appended to, where its frames end, and its length with the zeros
    /// written ahead ([`PREALLOC_BYTES`]).
    current: Option<(u64, u64, u64)>,
    zeros: Vec<u8>,
    segment_bytes: u64,
    next_lsn: u64,
    /// Epoch of each stream's last metadata change.
    changed: HashMap<i64, u64>,
    buf: Vec<u8>,
}

/// One record placed in a batch.
struct Placed {
    job: usize,
    rec: usize,
    stream_id: i64,
    shard: u64,
    counter: u64,
    arrival_ms: i64,
    outbox: i64,
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Job>) {
        let mut held: Option<Job> = None;
        loop {
            let job = match held.take() {
                Some(j) => j,
                None => match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            let first = match job {
                Job::Control(f) => {
                    f(&mut self);
                    continue;
                }
                Job::Append(first) => vec![first],
                Job::Appends(first) => first,
            };
            let data =
                |a: &AppendJob| -> usize { a.append.records.iter().map(|r| r.data.len()).sum() };
            let mut n: usize = first.iter().map(|a| a.append.records.len()).sum();
            let mut bytes: usize = first.iter().map(data).sum();
            let mut batch = first;
            while n < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(Job::Append(a)) => {
                        n += a.append.records.len();
                        bytes += data(&a);
                        batch.push(a);
                    }
                    Ok(Job::Appends(more)) => {
                        n += more.iter().map(|a| a.append.records.len()).sum::<usize>();
                        bytes += more.iter().map(&data).sum::<usize>();
                        batch.extend(more);
                    }
                    Ok(other) => {
                        held = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// Marks a stream's metadata changed: appends holding older metadata are refused as
    /// stale (their callers reload it).
    fn changed(&mut self, stream_id: i64) {
        let e = self.shared.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.changed.insert(stream_id, e);
    }

    /// Next counter and last arrival of a shard, from the log (None if it holds nothing).
    fn shard_end(&self, stream_id: i64, shard: u64) -> Option<(u64, i64)> {
        self.shared.shard_end(stream_id, shard)
    }

    /// The shards of one stream the log holds records of, with their ends.
    fn stream_ends(&self, stream_id: i64) -> Vec<(u64, ShardEnd)> {
        let mut ends: Vec<(u64, ShardEnd)> = lock_read(&self.shared.index)
            .shards
            .iter()
            .filter(|((s, _), sl)| *s == stream_id && sl.next > 0)
            .map(|((_, shard), sl)| {
                (
                    *shard,
                    ShardEnd {
                        next: sl.next,
                        last_arrival_ms: sl.last_arrival_ms,
                    },
                )
            })
            .collect();
        ends.sort_unstable_by_key(|e| e.0);
        ends
    }

    /// Every shard the log holds records of: ((stream id, shard), next counter, arrival).
    fn shard_ends(&self) -> Vec<((i64, u64), u64, i64)> {
        lock_read(&self.shared.index)
            .shards
            .iter()
            .filter(|(_, s)| s.next > 0)
            .map(|(k, s)| (*k, s.next, s.last_arrival_ms))
            .collect()
    }

    /// Forgets a deleted stream's records (their segments go once nothing else is in them),
    /// its delivered tickets and its subscribers.
    fn forget_stream(&mut self, stream_id: i64) {
        let mut idx = lock_write(&self.shared.index);
        let keys: Vec<(i64, u64)> = idx
            .shards
            .keys()
            .filter(|(s, _)| *s == stream_id)
            .copied()
            .collect();
        for k in keys {
            if let Some(sl) = idx.shards.remove(&k) {
                for r in &sl.runs {
                    idx.drop_run(r);
                }
            }
        }
        idx.delivered.retain(|_, (s, _, _, _)| *s != stream_id);
        drop(idx);
        lock(&self.shared.subscribers).remove(&stream_id);
        self.changed(stream_id);
    }

    /// Drops the runs of a shard that end at or before `before` (records below a stored
    /// trim point). Returns how many records went.
    fn cut_before(&mut self, key: (i64, u64), before: u64) -> u64 {
        let mut idx = lock_write(&self.shared.index);
        let mut gone = Vec::new();
        if let Some(sl) = idx.shards.get_mut(&key) {
            while sl.runs.front().is_some_and(|r| r.end() <= before) {
                gone.extend(sl.runs.pop_front());
            }
            sl.damaged.retain(|&(_, b)| b > before);
        }
        for r in &gone {
            idx.drop_run(r);
        }
        if !gone.is_empty() {
            // Tickets delivered by trimmed records are settled long since.
            idx.delivered
                .retain(|_, (s, sh, c, _)| (*s, *sh) != key || *c >= before);
        }
        gone.iter().map(|r| r.count).sum()
    }

    /// Drops the records of each listed stream that arrived before its horizon (ms): a
    /// prefix of each shard. Returns how many went and each trimmed shard's new start.
    fn trim(&mut self, horizons: &HashMap<i64, i64>) -> Cut {
        let mut cut = Cut::default();
        let plan: Vec<ShardStart> = {
            let idx = lock_read(&self.shared.index);
            idx.shards
                .iter()
                .filter_map(|(key, sl)| {
                    let h = *horizons.get(&key.0)?;
                    let first = sl.runs.front()?;
                    (first.arrival_ms < h).then(|| {
                        let i = sl.runs.partition_point(|r| r.arrival_ms < h);
                        (*key, sl.runs.get(i).map_or(sl.next, |r| r.first))
                    })
                })
                .collect()
        };
        for (key, start) in plan {
            cut.records += self.cut_before(key, start);
            cut.starts.push((key, start));
        }
        cut
    }

    /// Segments no record refers to any more, except the one being written.
    fn unreferenced_segments(&self) -> Vec<u64> {
        let idx = lock_read(&self.shared.index);
        let files = lock_read(&self.shared.files);
        let current = self.current.map(|c| c.0);
        files
            .keys()
            .filter(|id| Some(**id) != current && idx.seg_runs.get(id).copied().unwrap_or(0) == 0)
            .copied()
            .collect()
    }

    /// Deletes segments (callers first make the counters they held durable elsewhere).
    fn delete_segments(&mut self, ids: &[u64]) -> Result<(), RecordError> {
        let mut idx = lock_write(&self.shared.index);
        let mut files = lock_write(&self.shared.files);
        for id in ids {
            let path = segment_path(&self.shared.dir, *id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("delete", &path, e)),
            }
            files.remove(id);
            idx.seg_runs.remove(id);
        }
        drop((idx, files));
        sluice_meta::sync_dir(&self.shared.dir).map_err(|e| io("sync", &self.shared.dir, e))
    }

    /// Writes already numbered records (importing records kept elsewhere before); those
    /// at or below a counter the log holds are skipped. Durable on return.
    fn import(&mut self, records: Vec<Imported>) -> Result<(), RecordError> {
        if let Some(why) = self.failed() {
            return Err(refused(&why));
        }
        let mut placed = Vec::new();
        let mut nexts: HashMap<(i64, u64), u64> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            let key = (r.shard.stream, r.shard.shard);
            let next = *nexts
                .entry(key)
                .or_insert_with(|| self.shard_end(key.0, key.1).map_or(0, |e| e.0));
            if r.position < next {
                continue;
            }
            nexts.insert(key, r.position + 1);
            placed.push(Placed {
                job: 0,
                rec: i,
                stream_id: key.0,
                shard: key.1,
                counter: r.position,
                arrival_ms: r.arrival_ms,
                outbox: 0,
            });
        }
        self.write_placed(&placed, |p| {
            let r = &records[p.rec];
            (r.partition_key.as_bytes(), r.data.as_ref())
        })
    }

    fn failed(&self) -> Option<String> {
        lock(&self.shared.failed).clone()
    }

    /// Numbers, writes and fsyncs a batch, then indexes it, bumps the subscribers of the
    /// streams it wrote to and answers.
    fn commit(&mut self, jobs: Vec<AppendJob>) {
        if let Some(why) = self.failed() {
            for j in jobs {
                let _ = j.reply.send(Err(refused(&why)));
            }
            return;
        }
        let mut placed: Vec<Placed> = Vec::new();
        // Per job: its results, or None when its metadata is stale.
        let mut answers: Vec<Option<Vec<Appended>>> = Vec::with_capacity(jobs.len());
        // Next counter and last arrival per shard as this batch advances them.
        let mut heads: HashMap<(i64, u64), (u64, i64)> = HashMap::new();
        let mut delivered_now: HashMap<i64, Appended> = HashMap::new();
        for (ji, job) in jobs.iter().enumerate() {
            let a = &job.append;
            if self.changed.get(&a.stream).is_some_and(|&e| e > a.epoch) {
                answers.push(None);
                continue;
            }
            // A ticket delivered before (or earlier in this batch) gets its first result.
            if let Some(t) = a.ticket
                && let Some(r) = delivered_now
                    .get(&t)
                    .copied()
                    .or_else(|| self.shared.delivered(t))
            {
                answers.push(Some(vec![r]));
                continue;
            }
            let mut results = Vec::with_capacity(a.records.len());
            for (ri, record) in a.records.iter().enumerate() {
                let key = (a.stream, record.shard);
                let (counter, last_arrival) = match heads.get(&key) {
                    Some(h) => *h,
                    None => {
                        let (n, at) = self.shard_end(key.0, key.1).unwrap_or((0, i64::MIN));
                        (n.max(record.min_position), at.max(record.min_arrival_ms))
                    }
                };
                let arrival_ms = last_arrival.max(a.now_ms);
                heads.insert(key, (counter + 1, arrival_ms));
                let res = Appended {
                    shard: record.shard,
                    position: counter,
                    arrival_ms,
                };
                if let Some(t) = a.ticket {
                    delivered_now.insert(t, res);
                }
                placed.push(Placed {
                    job: ji,
                    rec: ri,
                    stream_id: a.stream,
                    shard: record.shard,
                    counter,
                    arrival_ms,
                    outbox: a.ticket.unwrap_or(0),
                });
                results.push(res);
            }
            answers.push(Some(results));
        }
        let written = self.write_placed(&placed, |p| {
            let r = &jobs[p.job].append.records[p.rec];
            (r.partition_key.as_bytes(), r.data.as_ref())
        });
        if written.is_ok() && !placed.is_empty() {
            self.notify(&placed);
        }
        for (job, answer) in jobs.into_iter().zip(answers) {
            let a = match (&written, answer) {
                (_, None) => Ok(AppendOutcome::Stale(job.append)),
                (Err(RecordError::Unavailable(m)), Some(rs)) if !rs.is_empty() => {
                    Err(RecordError::Unavailable(m.clone()))
                }
                (Err(e), Some(rs)) if !rs.is_empty() => Err(RecordError::Backend(e.to_string())),
                (_, Some(rs)) => Ok(AppendOutcome::Done(rs)),
            };
            let _ = job.reply.send(a);
        }
    }

    /// Bumps the subscribers of every stream `placed` (a durable, indexed batch) wrote to.
    fn notify(&self, placed: &[Placed]) {
        let subs = lock(&self.shared.subscribers);
        if subs.is_empty() {
            return;
        }
        let mut last = None;
        for p in placed {
            // Records of one append are placed together: skip repeats cheaply.
            if last == Some(p.stream_id) {
                continue;
            }
            last = Some(p.stream_id);
            for tx in subs.get(&p.stream_id).into_iter().flatten() {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// Writes `placed` (sorted here by stream, shard and counter) as one batch, fsyncs, and
    /// indexes it. A failed write or fsync stops the log (see [`Shared::failed`]), except a
    /// write refused for want of space: that batch fails alone (`Unavailable`).
    fn write_placed<'a>(
        &mut self,
        placed: &[Placed],
        body: impl Fn(&Placed) -> (&'a [u8], &'a [u8]),
    ) -> Result<(), RecordError> {
        if placed.is_empty() {
            return Ok(());
        }
        metrics::histogram!("sluice_records_append_batch_size", "engine" => "embedded")
            .record(placed.len() as f64);
        let mut order: Vec<&Placed> = placed.iter().collect();
        order.sort_by_key(|p| (p.stream_id, p.shard, p.counter));
        let batch_lsn = self.next_lsn;
        self.buf.clear();
        let mut offsets = Vec::with_capacity(order.len());
        for (i, p) in order.iter().enumerate() {
            let (pk, data) = body(p);
            offsets.push(self.buf.len() as u64);
            encode_frame(
                &mut self.buf,
                &FrameHead {
                    lsn: batch_lsn + i as u64,
                    batch_lsn,
                    stream_id: p.stream_id,
                    shard: p.shard,
                    counter: p.counter,
                    arrival_ms: p.arrival_ms,
                    outbox: p.outbox,
                },
                pk,
                data,
            );
        }
        let result = self.write_buf(batch_lsn);
        let (seg, base) = match result {
            Ok(v) => v,
            // A full disk: this batch is refused, the log stays open.
            Err(e @ RecordError::Unavailable(_)) => {
                tracing::warn!(error = %e, "stream log write refused");
                return Err(e);
            }
            Err(e) => {
                tracing::error!(error = %e, "stream log write failed: no more appends until restart");
                *lock(&self.shared.failed) = Some(e.to_string());
                return Err(e);
            }
        };
        self.next_lsn = batch_lsn + order.len() as u64;
        self.shared
            .stats
            .records
            .fetch_add(order.len() as u64, Ordering::Relaxed);
        let total = self.buf.len() as u64;
        let mut idx = lock_write(&self.shared.index);
        for (i, p) in order.iter().enumerate() {
            let end = offsets.get(i + 1).copied().unwrap_or(total);
            idx.add_run(
                (p.stream_id, p.shard),
                Run {
                    first: p.counter,
                    count: 1,
                    seg,
                    offset: base + offsets[i],
                    bytes: end - offsets[i],
                    arrival_ms: p.arrival_ms,
                },
            );
            if p.outbox != 0 {
                idx.delivered
                    .insert(p.outbox, (p.stream_id, p.shard, p.counter, p.arrival_ms));
            }
        }
        Ok(())
    }

    /// Appends `self.buf` to the current segment (starting a new one if it would grow past
    /// the segment size) and fsyncs it: (segment, offset written at).
    fn write_buf(&mut self, batch_lsn: u64) -> Result<(u64, u64), RecordError> {
        let len = self.buf.len() as u64;
        let need_new = match self.current {
            None => true,
            Some((_, size, _)) => size > 0 && size + len > self.segment_bytes,
        };
        if need_new {
            if let Some((seg, size, _)) = self.current {
                // Sealed: cut to its frames (no zeros left), so that in a segment other than
                // the last anything but a frame is damage.
                let path = segment_path(&self.shared.dir, seg);
                if let Some(file) = lock_read(&self.shared.files).get(&seg).cloned() {
                    file.set_len(size)
                        .and_then(|()| file.sync_all())
                        .map_err(|e| io("seal", &path, e))?;
                }
            }
            let path = segment_path(&self.shared.dir, batch_lsn);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| io("create", &path, e))?;
            sluice_meta::sync_dir(&self.shared.dir).map_err(|e| io("sync", &self.shared.dir, e))?;
            lock_write(&self.shared.files).insert(batch_lsn, Arc::new(file));
            self.current = Some((batch_lsn, 0, 0));
        }
        let (seg, size, allocated) = self
            .current
            .ok_or_else(|| RecordError::Backend("stream log: no segment".into()))?;
        let file = lock_read(&self.shared.files)
            .get(&seg)
            .cloned()
            .ok_or_else(|| RecordError::Backend(format!("stream log: segment {seg} is missing")))?;
        let path = segment_path(&self.shared.dir, seg);
        let stats = &self.shared.stats;
        let t = std::time::Instant::now();
        if let Err(e) = file.write_all_at(&self.buf, size) {
            if e.kind() != std::io::ErrorKind::StorageFull {
                return Err(io("write", &path, e));
            }
            // No room past the zeros written ahead. Nothing of this batch counts: whatever
            // part of it reached the file is cut off (so that no frame of it can be read
            // back after a restart), and the log stays open for when space comes back.
            file.set_len(size).map_err(|e| io("truncate", &path, e))?;
            self.current = Some((seg, size, size));
            return Err(RecordError::Unavailable(format!(
                "stream log: the disk holding {} is full",
                path.display()
            )));
        }
        let mut allocated = allocated.max(size + len);
        let prealloc = PREALLOC_BYTES.min(self.segment_bytes);
        if allocated < size + len + prealloc / 2 && allocated < self.segment_bytes {
            // Running out of zeros ahead: write more, fsynced with this batch. Without room
            // for them the batch stands (its frames are written) and the next one tries
            // again; zeros that did get written are what the log expects past its end.
            let upto = (size + len + prealloc).min(self.segment_bytes.max(size + len));
            self.zeros.resize((upto - allocated) as usize, 0);
            match file.write_all_at(&self.zeros, allocated) {
                Ok(()) => allocated = upto,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                    tracing::debug!(path = %path.display(), "no room to write zeros ahead in the stream log");
                }
                Err(e) => return Err(io("preallocate", &path, e)),
            }
        }
        add_elapsed(&stats.write_nanos, t);
        let t = std::time::Instant::now();
        file.sync_data().map_err(|e| io("fsync", &path, e))?;
        metrics::histogram!("sluice_records_fsync_duration_seconds", "engine" => "embedded")
            .record(t.elapsed().as_secs_f64());
        add_elapsed(&stats.sync_nanos, t);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        self.current = Some((seg, size + len, allocated));
        Ok((seg, size))
    }
}

/// An append delivering an outbox ticket with more than one record.
fn one_record_per_ticket(n: usize) -> RecordError {
    RecordError::Invalid(format!(
        "an append delivering an outbox ticket holds one record, not {n}"
    ))
}

/// Why an append is refused after a failed write.
fn refused(why: &str) -> RecordError {
    RecordError::Unavailable(format!(
        "the stream log stopped accepting appends after a failed write ({why}); restart the server"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lsn: u64) -> FrameHead {
        FrameHead {
            lsn,
            batch_lsn: lsn,
            stream_id: 7,
            shard: 2,
            counter: lsn + 10,
            arrival_ms: 1_700_000_000_000,
            outbox: 0,
        }
    }

    #[test]
    fn frames_round_trip_and_any_flipped_byte_is_caught() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, &head(5), b"key", b"data bytes");
        let f = decode_frame(&buf).expect("decodes");
        assert_eq!(f.head, head(5));
        assert_eq!(
            (f.pk, f.data, f.len),
            (&b"key"[..], &b"data bytes"[..], buf.len())
        );
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(
                decode_frame(&bad).is_none(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert!(
            decode_frame(&buf[..buf.len() - 1]).is_none(),
            "a cut frame decodes"
        );
    }

    fn write_segment(dir: &Path, id: u64, frames: &[FrameHead]) -> Vec<u64> {
        let mut buf = Vec::new();
        let mut offs = Vec::new();
        for h in frames {
            offs.push(buf.len() as u64);
            encode_frame(&mut buf, h, b"pk", &[0xAB; 100]);
        }
        std::fs::write(segment_path(dir, id), &buf).expect("write");
        offs
    }

    fn batch(first: u64, n: u64, counter: u64) -> Vec<FrameHead> {
        (0..n)
            .map(|i| FrameHead {
                lsn: first + i,
                batch_lsn: first,
                stream_id: 1,
                shard: 0,
                counter: counter + i,
                arrival_ms: 1,
                outbox: 0,
            })
            .collect()
    }

    /// Two batches of three frames in segment 1, with one bit flipped `at` bytes into frame
    /// `frame`: the segment's path, the frames' offsets and its bytes.
    fn two_batches_with_a_flip(
        dir: &Path,
        frame: usize,
        at: usize,
    ) -> (PathBuf, Vec<u64>, Vec<u8>) {
        let mut frames = batch(1, 3, 1);
        frames.extend(batch(4, 3, 4));
        let offs = write_segment(dir, 1, &frames);
        let path = segment_path(dir, 1);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[offs[frame] as usize + at] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        (path, offs, bytes)
    }

    #[test]
    fn a_damaged_last_batch_is_a_torn_tail_and_is_cut() {
        let dir = tempfile::tempdir().expect("dir");
        // Damage the second frame of the last batch: the batch was being written.
        let (path, offs, _) = two_batches_with_a_flip(dir.path(), 4, 80);
        let s = scan(dir.path(), true).expect("scan");
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.frames, 4);
        assert_eq!(s.index.shards[&(1, 0)].next, 5);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), offs[4]);
        assert_eq!(s.next_lsn, 5);
    }

    #[test]
    fn damage_followed_by_a_later_batch_is_corruption_and_the_record_reads_as_damaged() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, _, bytes) = two_batches_with_a_flip(dir.path(), 1, 90);
        let log = EmbeddedLog::open(dir.path(), SEGMENT_BYTES).expect("open");
        let problems = EmbeddedLog::verify_blocking(&log.shared)
            .expect("verify")
            .problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].record, Some((ShardKey::new(1, 0), 2)));
        let key = ShardKey::new(1, 0);
        assert_eq!(
            log.shard_end(key),
            Some(ShardEnd {
                next: 7,
                last_arrival_ms: 1
            })
        );
        let ok = log
            .read_blocking(key, 1, 10, 1 << 20)
            .expect("first record reads");
        assert_eq!(ok.records.len(), 1);
        assert_eq!(ok.next, 2);
        let err = log.read_blocking(key, 2, 10, 1 << 20).expect_err("damaged");
        assert!(
            matches!(err, RecordError::Damaged { shard, position: 2 } if shard == key),
            "{err}"
        );
        let after = log
            .read_blocking(key, 3, 10, 1 << 20)
            .expect("after the damage");
        assert_eq!(
            after.records.iter().map(|r| r.position).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
        // The file is left as it was: corruption is reported, not repaired.
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
    }

    #[test]
    fn damage_in_an_older_segment_is_corruption_even_at_its_end() {
        let dir = tempfile::tempdir().expect("dir");
        let offs = write_segment(dir.path(), 1, &batch(1, 3, 1));
        write_segment(dir.path(), 4, &batch(4, 2, 4));
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[offs[2] as usize + 80] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let s = scan(dir.path(), true).expect("scan");
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert_eq!(std::fs::read(&path).expect("read"), bytes, "left as it was");
        let sl = &s.index.shards[&(1, 0)];
        assert_eq!(sl.damaged, vec![(3, 4)]);
        assert_eq!(sl.next, 6);
    }

    fn import_n(log: &EmbeddedLog, from: u64, n: u64) {
        let recs: Vec<Imported> = (from..from + n)
            .map(|c| Imported {
                shard: ShardKey::new(1, 0),
                position: c,
                arrival_ms: 5,
                partition_key: "pk".to_owned(),
                data: Bytes::from(vec![7u8; 200]),
            })
            .collect();
        log.control_blocking(move |w| w.import(recs))
            .expect("writer")
            .expect("import");
    }

    #[test]
    fn zeros_written_ahead_end_the_frames_and_a_torn_batch_before_them_is_cut() {
        let dir = tempfile::tempdir().expect("dir");
        let log = EmbeddedLog::open(dir.path(), SEGMENT_BYTES).expect("open");
        import_n(&log, 1, 3);
        drop(log);
        let path = segment_path(dir.path(), 1);
        let frames_end = 3 * (HEADER as u64 + 2 + 200);
        let len = std::fs::metadata(&path).expect("meta").len();
        assert!(len >= frames_end + PREALLOC_BYTES / 2, "zeros ahead: {len}");
        // Reopened: the zeros are the normal end, kept; appends go on after the frames.
        let log = EmbeddedLog::open(dir.path(), SEGMENT_BYTES).expect("reopen");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), len);
        let end = |next| {
            Some(ShardEnd {
                next,
                last_arrival_ms: 5,
            })
        };
        assert_eq!(log.shard_end(ShardKey::new(1, 0)), end(4));
        import_n(&log, 4, 1);
        drop(log);
        // A torn batch: half a frame where the zeros were.
        let mut bytes = std::fs::read(&path).expect("read");
        let end = (frames_end + HEADER as u64 + 202) as usize;
        let mut torn = Vec::new();
        encode_frame(
            &mut torn,
            &FrameHead {
                lsn: 5,
                batch_lsn: 5,
                stream_id: 1,
                shard: 0,
                counter: 5,
                arrival_ms: 5,
                outbox: 0,
            },
            b"pk",
            &[1; 200],
        );
        bytes[end..end + 100].copy_from_slice(&torn[..100]);
        std::fs::write(&path, &bytes).expect("write");
        let log = EmbeddedLog::open(dir.path(), SEGMENT_BYTES).expect("reopen torn");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), end as u64);
        assert_eq!(
            log.shard_end(ShardKey::new(1, 0)),
            Some(ShardEnd {
                next: 5,
                last_arrival_ms: 5
            })
        );
        assert!(
            EmbeddedLog::verify_blocking(&log.shared)
                .expect("verify")
                .problems
                .is_empty()
        );
    }
}
