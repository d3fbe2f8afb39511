//! The shard workers of a mapping, mirroring Lambda's Kinesis event-source mapping.
//!
//! Per shard: a reader pages through the shard with `get_records` and hands each record to
//! one of `parallelization_factor` lanes, chosen by the MD5 hash of its partition key (so a
//! key's records always share a lane and stay in order). A lane gathers a batch (up to
//! `batch_size` records or 6 MiB, waiting up to `maximum_batching_window_secs` for more),
//! invokes the function, and resolves every record of the batch:
//! - success → done;
//! - function error → with bisect, split in two and retry each half (splitting uses no
//!   retry); otherwise retry the batch until `max_attempts` invocations failed, then send
//!   it to the on-failure destination (condition `RetryAttemptsExhausted`) → done;
//! - partial batch response (or an object function that stopped at a record) → records
//!   before the lowest failed one are done; the rest are retried as a failed batch (when an
//!   object function's record exhausts its retries, only that record is given up and the
//!   records after it go on);
//! - records older than `maximum_record_age_secs` (or the stream's retention when -1) are
//!   not invoked again but sent to the destination (condition `RecordAgeExceeded`) → done.
//!
//! The shard's checkpoint is the highest sequence number up to which every record read is
//! done; it is saved after each advance. "Done" always means durable: the function returned
//! (its outputs written) or the failure record was written. Records read but not done when
//! the worker stops are read again at the next start: at-least-once, no gap.
//!
//! A lane hands resolved records (with their status updates) to the shard's committer and
//! goes on with the next batch; the committer marks them done and writes status and
//! checkpoint, in the order it got them — in one transaction when the observer's rows
//! live in the checkpoints' database, and batches that queued up meanwhile together. `Started` is written only for batches still running
//! after [`PROCESSING_AFTER`] (or retried), and never after the outcome.
//!
//! A shard with a parent (split) or two (merge) waits until its parents' workers finished
//! them — read to their end and every record done — then reads itself from its start.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_stream::{IteratorSpec, Record, ShardDesc, StreamError};
use tokio::sync::{mpsc, watch};

use crate::destination::{
    FailureDestination, KinesisBatchInfo, OnFailureRecord, RECORD_AGE_EXCEEDED,
    RETRY_ATTEMPTS_EXHAUSTED, RequestContext, ResponseContext,
};
use crate::event::{iso_ms, kinesis_event};
use crate::functions::{
    BatchFunction, BatchInput, BatchResponse, CallContext, FunctionError, OutputRef,
};
use crate::{
    MappingConfig, Observer, PROCESSING_AFTER, Processor, RecordRef, StartingPosition,
    StatusUpdate, output_key,
};

/// How long a worker at the tail waits for a wake-up before looking again anyway.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// How often the supervisor looks for new shards (after a split or merge).
const SHARD_DISCOVERY: Duration = Duration::from_secs(5);
/// Most records whose outcomes one status-and-checkpoint write takes.
const MAX_COMMIT_RECORDS: usize = 1_000;
/// Largest batch payload, as Lambda's synchronous invocation limit.
const MAX_BATCH_BYTES: usize = 6 * 1024 * 1024;
/// Longest pause between retries of a failing batch.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Resolved batches that may wait for the committer before a lane waits in turn.
const COMMITS_AHEAD: usize = 4;
/// Reads a lane may have waiting (each at most a batch): the reader stays ahead of the
/// function by this much.
const LANE_CHUNKS: usize = 2;

/// Shards whose records are all done (closed and drained), so their children may start.
#[derive(Default)]
struct Finished {
    shards: Mutex<HashMap<String, watch::Sender<bool>>>,
}

impl Finished {
    fn receiver(&self, shard: &str) -> watch::Receiver<bool> {
        match self.shards.lock() {
            Ok(mut m) => m
                .entry(shard.to_owned())
                .or_insert_with(|| watch::channel(false).0)
                .subscribe(),
            Err(_) => watch::channel(false).1,
        }
    }

    fn mark(&self, shard: &str) {
        if let Ok(mut m) = self.shards.lock() {
            m.entry(shard.to_owned())
                .or_insert_with(|| watch::channel(false).0)
                .send_replace(true);
        }
    }
}

pub(crate) struct Supervisor {
    pub(crate) p: Processor,
    pub(crate) mapping: Arc<MappingConfig>,
    pub(crate) function: Arc<dyn BatchFunction>,
    pub(crate) destination: Option<Arc<dyn FailureDestination>>,
    pub(crate) created_ms: i64,
}

fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow()
}

/// Waits until shutdown is requested (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

impl Supervisor {
    fn worker(
        &self,
        shard: ShardDesc,
        known: &HashSet<String>,
        retention_ms: i64,
        finished: &Arc<Finished>,
        wait_parents: bool,
    ) -> Arc<ShardWorker> {
        let m = &self.mapping;
        // A parent no longer in the stream (trimmed) has nothing left to read.
        let parents: Vec<String> = [
            shard.parent_shard_id.clone(),
            shard.adjacent_parent_shard_id.clone(),
        ]
        .into_iter()
        .flatten()
        .filter(|p| known.contains(p))
        .collect();
        let (commit_tx, commit_rx) = mpsc::channel(COMMITS_AHEAD);
        Arc::new(ShardWorker {
            p: self.p.clone(),
            mapping: m.clone(),
            function: self.function.clone(),
            destination: self.destination.clone(),
            stream_arn: self.p.aws.stream_arn(&m.stream),
            function_arn: self.p.aws.function_arn(self.function.name()),
            invoke_identity_arn: format!(
                "arn:aws:iam::{}:role/sluice-processor",
                self.p.aws.account_id
            ),
            shard,
            parents,
            wait_parents,
            created_ms: self.created_ms,
            max_age_ms: if m.maximum_record_age_secs >= 0 {
                m.maximum_record_age_secs * 1000
            } else {
                retention_ms
            },
            finished: finished.clone(),
            tracker: tokio::sync::Mutex::new(Tracker::default()),
            commits: commit_tx,
            commit_rx: Mutex::new(Some(commit_rx)),
        })
    }

    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        if let Some(leases) = self.p.leases.clone() {
            return self.run_leased(leases, shutdown).await;
        }
        let m = self.mapping.clone();
        let finished = Arc::new(Finished::default());
        let mut started: HashSet<String> = HashSet::new();
        let mut tasks = tokio::task::JoinSet::new();
        while !stopping(&shutdown) {
            match self.p.stream.describe_stream(&m.stream).await {
                Ok(desc) => {
                    let known: HashSet<String> =
                        desc.shards.iter().map(|s| s.shard_id.clone()).collect();
                    let retention_ms = i64::from(desc.retention_hours) * 3_600_000;
                    for shard in desc.shards {
                        if !started.insert(shard.shard_id.clone()) {
                            continue;
                        }
                        let w = self.worker(shard, &known, retention_ms, &finished, true);
                        tasks.spawn(w.run(shutdown.clone()));
                    }
                }
                Err(e) => {
                    tracing::warn!(mapping = %m.name, error = %e, "cannot describe the mapping's stream");
                }
            }
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                _ = tokio::time::sleep(SHARD_DISCOVERY) => {}
                _ = stopped(&mut shutdown) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
        self.p
            .update_stats(&m.name, |s| s.state = "Disabled".into());
    }

    /// The supervisor of a processor that shares the mapping's shards with others: it runs
    /// a worker only for the shards whose leases it holds (see [`crate::leases`]). Workers
    /// are stopped without waiting for them (a function may take long to return): the
    /// supervisor goes on renewing its other leases, and hands a lease over, or marks a
    /// drained shard finished, once its worker has ended.
    async fn run_leased(
        self,
        leases: Arc<crate::leases::ShardLeases>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let m = self.mapping.clone();
        let finished = Arc::new(Finished::default());
        let mut workers: HashMap<String, LeasedWorker> = HashMap::new();
        let mut winding_down: HashMap<String, (LeasedWorker, AfterStop)> = HashMap::new();
        let mut last_tick = Instant::now();
        while !stopping(&shutdown) {
            // A worker that ended on its own drained its closed shard (or is started again
            // below while this process still holds the shard); one told to stop has ended.
            let ended: Vec<String> = workers
                .iter()
                .filter(|(_, w)| w.task.is_finished())
                .map(|(k, _)| k.clone())
                .collect();
            for shard in ended {
                if let Some(w) = workers.remove(&shard) {
                    w.ended(&leases, &m.name, &shard, AfterStop::Nothing).await;
                }
            }
            let done: Vec<String> = winding_down
                .iter()
                .filter(|(_, (w, _))| w.task.is_finished())
                .map(|(k, _)| k.clone())
                .collect();
            for shard in done {
                if let Some((w, after)) = winding_down.remove(&shard) {
                    w.ended(&leases, &m.name, &shard, after).await;
                }
            }
            let planned = match self.p.stream.describe_stream(&m.stream).await {
                Ok(desc) => {
                    let specs: Vec<crate::leases::ShardSpec> = desc
                        .shards
                        .iter()
                        .map(|s| crate::leases::ShardSpec {
                            shard_id: s.shard_id.clone(),
                            parents: [&s.parent_shard_id, &s.adjacent_parent_shard_id]
                                .into_iter()
                                .flatten()
                                .cloned()
                                .collect(),
                        })
                        .collect();
                    match leases.tick(&m.name, &specs).await {
                        Ok(plan) => Some((desc, plan)),
                        Err(e) => {
                            tracing::warn!(mapping = %m.name, error = %e, "cannot renew or take shard leases");
                            None
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(mapping = %m.name, error = %e, "cannot describe the mapping's stream");
                    None
                }
            };
            match planned {
                Some((desc, plan)) => {
                    last_tick = Instant::now();
                    let keep: HashSet<&String> = plan.run.iter().collect();
                    let wanted: HashSet<&String> = plan.hand_over.iter().collect();
                    let gone: Vec<String> = workers
                        .keys()
                        .filter(|k| !keep.contains(k))
                        .cloned()
                        .collect();
                    for shard in gone {
                        if let Some(w) = workers.remove(&shard) {
                            w.stop.send_replace(true);
                            let after = if wanted.contains(&shard) {
                                AfterStop::HandOver
                            } else {
                                AfterStop::Nothing
                            };
                            winding_down.insert(shard, (w, after));
                        }
                    }
                    // Asked for, with no worker running: hand it over now.
                    for shard in &plan.hand_over {
                        if !winding_down.contains_key(shard)
                            && let Err(e) = leases.hand_over(&m.name, shard).await
                        {
                            tracing::warn!(mapping = %m.name, shard = %shard, error = %e, "cannot hand a shard lease over");
                        }
                    }
                    let known: HashSet<String> =
                        desc.shards.iter().map(|s| s.shard_id.clone()).collect();
                    let retention_ms = i64::from(desc.retention_hours) * 3_600_000;
                    for shard in desc.shards {
                        let id = shard.shard_id.clone();
                        // A shard whose previous worker is still stopping waits for it.
                        if !keep.contains(&id)
                            || workers.contains_key(&id)
                            || winding_down.contains_key(&id)
                        {
                            continue;
                        }
                        let (stop, rx) = watch::channel(false);
                        let w = self.worker(shard, &known, retention_ms, &finished, false);
                        tracing::info!(mapping = %m.name, shard = %id, "started a shard worker");
                        workers.insert(
                            id,
                            LeasedWorker {
                                stop,
                                task: tokio::spawn(w.run(rx)),
                            },
                        );
                    }
                }
                None if last_tick.elapsed() >= leases.duration() => {
                    // Leases not renewed for their duration may be another's by now.
                    for (shard, w) in workers.drain() {
                        w.stop.send_replace(true);
                        winding_down.insert(shard, (w, AfterStop::Nothing));
                    }
                }
                None => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(leases.tick_every()) => {}
                _ = stopped(&mut shutdown) => {}
            }
        }
        for w in workers.values() {
            w.stop.send_replace(true);
        }
        for (shard, w) in workers.drain() {
            w.ended(&leases, &m.name, &shard, AfterStop::Nothing).await;
        }
        // Leaving: a lease being handed over is given back like the others (the processor
        // that asked may have left too; an unowned lease is taken at anyone's next tick).
        for (shard, (w, _)) in winding_down.drain() {
            w.ended(&leases, &m.name, &shard, AfterStop::Nothing).await;
        }
        if let Err(e) = leases.release_all(&m.name).await {
            tracing::warn!(mapping = %m.name, error = %e, "cannot give the shard leases back; others take them once they expire");
        }
        self.p
            .update_stats(&m.name, |s| s.state = "Disabled".into());
    }
}

/// What a leased supervisor does once a stopped worker has ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    Nothing,
    /// Another processor asked for the shard.
    HandOver,
}

/// A shard worker of a leased supervisor.
struct LeasedWorker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<bool>,
}

impl LeasedWorker {
    /// Waits for the worker (told to stop, or ended), then marks the shard finished when
    /// the worker drained it, or hands its lease over when asked to.
    async fn ended(
        self,
        leases: &crate::leases::ShardLeases,
        mapping: &str,
        shard: &str,
        after: AfterStop,
    ) {
        let drained = matches!(self.task.await, Ok(true));
        let done = if drained {
            leases.finish(mapping, shard).await
        } else if after == AfterStop::HandOver {
            leases.hand_over(mapping, shard).await
        } else {
            Ok(())
        };
        if let Err(e) = done {
            tracing::warn!(mapping, shard, error = %e, "cannot update the shard's lease; it is taken over once it expires");
        }
    }
}

/// Orders sequence numbers as numbers (Kinesis' are decimal strings of varying width).
type SeqKey = (usize, String);

fn seq_key(s: &str) -> SeqKey {
    (s.len(), s.to_owned())
}

/// Records read and not yet done, in sequence order; the checkpoint is the last done
/// record before the first pending one.
#[derive(Default)]
struct Tracker {
    pending: BTreeMap<SeqKey, bool>,
    unsaved: Option<String>,
    /// A commit was abandoned (stopping, storage down): the checkpoint must not move past
    /// its records any more, so it never moves again in this worker's life.
    held: bool,
}

impl Tracker {
    fn add(&mut self, seq: &str) {
        self.pending.insert(seq_key(seq), false);
    }

    fn done<'a>(&mut self, seqs: impl IntoIterator<Item = &'a str>) {
        if self.held {
            return;
        }
        for s in seqs {
            if let Some(v) = self.pending.get_mut(&seq_key(s)) {
                *v = true;
            }
        }
        while let Some(e) = self.pending.first_entry() {
            if !*e.get() {
                break;
            }
            let ((_, seq), _) = e.remove_entry();
            self.unsaved = Some(seq);
        }
    }
}

/// Why a lane stopped before resolving its batch.
struct Stopped;

/// How one invocation went.
enum Outcome {
    Success(Vec<Option<OutputRef>>),
    /// The first `ok` records succeeded; the rest failed.
    Partial {
        ok: usize,
        outputs: Vec<Option<OutputRef>>,
        error: String,
        /// The error is the record at `ok`'s own (an object function's), not the batch's.
        per_record: bool,
    },
    Failed(String),
    /// The storage the function needs is down or full: retried, not counted.
    Unavailable(String),
}

/// A piece of a lane batch still to resolve.
struct Pending {
    records: Vec<Record>,
    /// Failed invocations of exactly these records (bisecting starts a piece afresh only
    /// in size: the count carries over, as splitting uses no retry).
    failures: u32,
    /// Invocations that included these records.
    invocations: u64,
    /// Invocations in a row that found the storage unavailable (for the pause only).
    unavailable: u32,
    last_error: String,
    last_request_id: String,
}

struct ShardWorker {
    p: Processor,
    mapping: Arc<MappingConfig>,
    function: Arc<dyn BatchFunction>,
    destination: Option<Arc<dyn FailureDestination>>,
    stream_arn: String,
    function_arn: String,
    invoke_identity_arn: String,
    shard: ShardDesc,
    parents: Vec<String>,
    /// Waits for the parents' workers of this process (without leases); with leases, a
    /// child is leased only once its parents are finished.
    wait_parents: bool,
    created_ms: i64,
    max_age_ms: i64,
    finished: Arc<Finished>,
    tracker: tokio::sync::Mutex<Tracker>,
    /// Resolved records on their way to the committer (see [`ShardWorker::committer`]).
    commits: mpsc::Sender<Commit>,
    commit_rx: Mutex<Option<mpsc::Receiver<Commit>>>,
}

/// Records resolved (outputs durable, or failure handed over) with their status updates,
/// for the committer; or, with `flushed`, a request to say when everything before it is
/// written.
struct Commit {
    seqs: Vec<String>,
    updates: Vec<StatusUpdate>,
    flushed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ShardWorker {
    fn id(&self) -> &str {
        &self.shard.shard_id
    }

    /// Runs the shard until `shutdown`; true when it drained its closed shard.
    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) -> bool {
        let m = self.mapping.clone();
        for parent in self.parents.iter().filter(|_| self.wait_parents) {
            let mut rx = self.finished.receiver(parent);
            tracing::debug!(mapping = %m.name, shard = self.id(), parent, "waiting for parent shard");
            loop {
                if *rx.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return false },
                    _ = stopped(&mut shutdown) => return false,
                }
            }
        }
        let committer = match self.commit_rx.lock().ok().and_then(|mut r| r.take()) {
            Some(rx) => {
                let w = self.clone();
                let sd = shutdown.clone();
                Some(tokio::spawn(async move { w.committer(rx, sd).await }))
            }
            None => None,
        };
        let lanes = m.parallelization_factor.max(1) as usize;
        let mut senders = Vec::with_capacity(lanes);
        let mut lane_tasks = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            // Chunks of one read each (at most `batch_size` records): a lane sees a read's
            // records all at once, so its batches are not cut short by the race between the
            // reader handing records over one by one and the lane taking them.
            let (tx, rx) = mpsc::channel::<Vec<Record>>(LANE_CHUNKS);
            senders.push(tx);
            let w = self.clone();
            let sd = shutdown.clone();
            lane_tasks.push(tokio::spawn(async move { w.lane(rx, sd).await }));
        }
        let drained = self.read(&senders, &mut shutdown).await;
        drop(senders);
        for t in lane_tasks {
            let _ = t.await;
        }
        if let Some(c) = committer {
            // What the lanes resolved is written before the worker ends.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let flush = Commit {
                seqs: Vec::new(),
                updates: Vec::new(),
                flushed: Some(tx),
            };
            if self.commits.send(flush).await.is_ok() {
                let _ = rx.await;
            }
            c.abort();
        }
        let mut t = self.tracker.lock().await;
        self.save_checkpoint(&mut t).await;
        if drained && t.pending.is_empty() && t.unsaved.is_none() {
            tracing::info!(mapping = %m.name, shard = self.id(), "shard closed and drained");
            self.finished.mark(self.id());
            return true;
        }
        false
    }

    /// Reads the shard into the lanes. Returns true once a closed shard was read to its end.
    async fn read(
        &self,
        lanes: &[mpsc::Sender<Vec<Record>>],
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let m = &self.mapping;
        let mut changes = self.p.stream.watch(&m.stream);
        let mut iterator: Option<String> = None;
        let mut failures = 0u32;
        // After an expired iterator, resume after the last record handed to a lane.
        let mut last_read: Option<String> = None;
        while !stopping(shutdown) {
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.fresh_iterator(last_read.as_deref()).await {
                    Ok(it) => it,
                    Err(e) => {
                        failures += 1;
                        self.pause("cannot get a shard iterator", &e, failures, shutdown)
                            .await;
                        continue;
                    }
                },
            };
            // Mark before reading: a commit between this read and the wait below still wakes us.
            changes.borrow_and_update();
            let out = match self.p.stream.get_records(&it, m.batch_size).await {
                Ok(out) => out,
                Err(StreamError::ExpiredIterator(_)) => continue,
                Err(e) => {
                    failures += 1;
                    self.pause("cannot read records", &e, failures, shutdown)
                        .await;
                    continue;
                }
            };
            failures = 0;
            let n = out.records.len() as u64;
            let shard = self.id().to_owned();
            // Kinesis's IteratorAgeMilliseconds: how far behind the shard's newest record
            // this mapping reads (0 at the tail).
            metrics::gauge!("sluice_mapping_iterator_age_seconds", "mapping" => m.name.clone(), "shard" => shard.clone())
                .set(out.millis_behind_latest.max(0) as f64 / 1000.0);
            self.p.update_stats(&m.name, |s| {
                s.records_in += n;
                s.millis_behind_latest_by_shard
                    .insert(shard, out.millis_behind_latest);
                s.millis_behind_latest = s
                    .millis_behind_latest_by_shard
                    .values()
                    .copied()
                    .max()
                    .unwrap_or(0);
            });
            let empty = out.records.is_empty();
            let mut chunks: Vec<Vec<Record>> = vec![Vec::new(); lanes.len()];
            {
                let mut tracker = self.tracker.lock().await;
                for record in out.records {
                    tracker.add(&record.sequence_number);
                    last_read = Some(record.sequence_number.clone());
                    let lane = if lanes.len() == 1 {
                        0
                    } else {
                        (sluice_stream::partition_hash(&record.partition_key) % lanes.len() as u128)
                            as usize
                    };
                    chunks[lane].push(record);
                }
            }
            for (lane, chunk) in chunks.into_iter().enumerate() {
                if chunk.is_empty() {
                    continue;
                }
                tokio::select! {
                    r = lanes[lane].send(chunk) => if r.is_err() { return false },
                    _ = stopped(shutdown) => return false,
                }
            }
            let Some(next) = out.next_iterator else {
                return true;
            };
            iterator = Some(next);
            if empty {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(IDLE_WAIT) => {}
                    _ = stopped(shutdown) => {}
                }
            }
        }
        false
    }

    async fn fresh_iterator(
        &self,
        last_read: Option<&str>,
    ) -> Result<String, crate::ProcessorError> {
        let m = &self.mapping;
        let spec = match last_read {
            Some(seq) => IteratorSpec::AfterSequenceNumber(seq.to_owned()),
            None => match self.p.checkpoints.load(&m.name, self.id()).await? {
                Some(seq) => IteratorSpec::AfterSequenceNumber(seq),
                None if !self.parents.is_empty() => IteratorSpec::TrimHorizon,
                None => match m.starting_position {
                    StartingPosition::Latest => IteratorSpec::AtTimestamp(self.created_ms),
                    StartingPosition::TrimHorizon => IteratorSpec::TrimHorizon,
                    StartingPosition::AtTimestamp(t) => IteratorSpec::AtTimestamp(t),
                },
            },
        };
        Ok(self
            .p
            .stream
            .get_shard_iterator(&m.stream, self.id(), spec)
            .await?)
    }

    async fn pause(
        &self,
        what: &str,
        e: &(dyn std::fmt::Display + Sync),
        failures: u32,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        tracing::warn!(mapping = %self.mapping.name, shard = self.id(), error = %e, "{what}");
        let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(shutdown) => {}
        }
    }

    /// One lane: gathers batches from its channel and resolves them, in order.
    async fn lane(&self, mut rx: mpsc::Receiver<Vec<Record>>, mut shutdown: watch::Receiver<bool>) {
        let m = &self.mapping;
        let window = Duration::from_secs(u64::from(m.maximum_batching_window_secs));
        // Records handed over and not yet in a batch, in order.
        let mut buf: VecDeque<Record> = VecDeque::new();
        loop {
            let first = match buf.pop_front() {
                Some(r) => r,
                None => {
                    let chunk = tokio::select! {
                        r = rx.recv() => match r { Some(c) => c, None => return },
                        _ = stopped(&mut shutdown) => return,
                    };
                    buf.extend(chunk);
                    continue;
                }
            };
            let mut bytes = first.data.len();
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + window;
            while batch.len() < m.batch_size && bytes < MAX_BATCH_BYTES {
                let Some(r) = buf.pop_front() else {
                    let next = match rx.try_recv() {
                        Ok(c) => Some(c),
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                        Err(mpsc::error::TryRecvError::Empty) if window.is_zero() => None,
                        Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                            r = rx.recv() => r,
                            _ = tokio::time::sleep_until(deadline) => None,
                            _ = stopped(&mut shutdown) => return,
                        },
                    };
                    match next {
                        Some(c) => {
                            buf.extend(c);
                            continue;
                        }
                        None => break,
                    }
                };
                if bytes + r.data.len() > MAX_BATCH_BYTES {
                    // Too big to join: it starts the next batch.
                    buf.push_front(r);
                    break;
                }
                bytes += r.data.len();
                batch.push(r);
            }
            if self.resolve(batch, &mut shutdown).await.is_err() {
                return;
            }
        }
    }

    /// Resolves every record of a batch (success, or given up on durably), retrying and
    /// bisecting as configured. `Err` only when asked to stop first.
    async fn resolve(
        &self,
        batch: Vec<Record>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Stopped> {
        let m = &self.mapping;
        let refs: HashMap<String, RecordRef> = batch
            .iter()
            .filter_map(|r| {
                serde_json::from_slice::<RecordRef>(&r.data)
                    .ok()
                    .map(|rr| (r.sequence_number.clone(), rr))
            })
            .collect();
        // `processing` only for a batch still running after a moment: a fast batch writes
        // its outcome directly (one durable write per batch instead of two).
        let mut started = StartedReport::spawn(
            self.p.observer.clone(),
            refs.values()
                .filter_map(|rr| rr.upload_id.clone())
                .collect(),
        );
        let mut queue = VecDeque::from([Pending {
            records: batch,
            failures: 0,
            invocations: 0,
            last_error: String::new(),
            last_request_id: String::new(),
            unavailable: 0,
        }]);
        while let Some(mut piece) = queue.pop_front() {
            if stopping(shutdown) {
                return Err(Stopped);
            }
            // Records too old are not invoked (again): they go to the destination.
            let cutoff = sluice_meta::now_ms() - self.max_age_ms;
            let (expired, fresh): (Vec<Record>, Vec<Record>) = piece
                .records
                .into_iter()
                .partition(|r| r.approximate_arrival_ms < cutoff);
            if !expired.is_empty() {
                let error = if piece.last_error.is_empty() {
                    format!(
                        "record older than the maximum record age ({} s)",
                        self.max_age_ms / 1000
                    )
                } else {
                    piece.last_error.clone()
                };
                self.give_up(
                    &expired,
                    RECORD_AGE_EXCEEDED,
                    piece.invocations,
                    &error,
                    &piece.last_request_id,
                    &refs,
                    &mut started,
                    shutdown,
                )
                .await?;
            }
            if fresh.is_empty() {
                continue;
            }
            piece.records = fresh;
            // Stopping abandons an invocation in flight: nothing of it is checkpointed, so
            // its records are delivered again at the next start.
            let (request_id, outcome) = tokio::select! {
                r = self.invoke(&piece.records) => r,
                _ = stopped(shutdown) => return Err(Stopped),
            };
            piece.invocations += 1;
            piece.last_request_id = request_id;
            let (failed, error, per_record) = match outcome {
                Outcome::Success(outputs) => {
                    self.succeed(&piece.records, &outputs, &refs, &mut started)
                        .await;
                    self.set_result("OK", None);
                    continue;
                }
                Outcome::Partial {
                    ok,
                    outputs,
                    error,
                    per_record,
                } => {
                    let rest = piece.records.split_off(ok.min(piece.records.len()));
                    self.succeed(&piece.records, &outputs, &refs, &mut started)
                        .await;
                    (rest, error, per_record)
                }
                Outcome::Failed(error) => (std::mem::take(&mut piece.records), error, false),
                Outcome::Unavailable(error) => {
                    // Not the function's failure: the same piece again once the storage is
                    // back, after a pause that grows to MAX_BACKOFF; no attempt is counted.
                    self.p.update_stats(&m.name, |s| {
                        s.last_processing_result = "PROBLEM: Storage unavailable".into();
                        s.last_error = Some(error.clone());
                    });
                    piece.unavailable = piece.unavailable.saturating_add(1);
                    tracing::warn!(mapping = %m.name, shard = self.id(), error = %error,
                        "storage unavailable; the batch is retried");
                    started.now(upload_ids(&piece.records, &refs)).await;
                    let backoff =
                        Duration::from_millis(200u64.saturating_mul(1 << piece.unavailable.min(8)))
                            .min(MAX_BACKOFF);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(shutdown) => return Err(Stopped),
                    }
                    queue.push_front(piece);
                    continue;
                }
            };
            if failed.is_empty() {
                continue;
            }
            self.set_result("PROBLEM: Function call failed", Some(&error));
            let mut piece = Pending {
                records: failed,
                last_error: error,
                ..piece
            };
            if m.bisect_batch_on_function_error && piece.records.len() > 1 {
                let right = piece.records.split_off(piece.records.len() / 2);
                queue.push_front(Pending {
                    records: right,
                    failures: piece.failures,
                    invocations: piece.invocations,
                    last_error: piece.last_error.clone(),
                    last_request_id: piece.last_request_id.clone(),
                    unavailable: 0,
                });
                queue.push_front(piece);
                continue;
            }
            piece.failures += 1;
            if m.max_attempts > 0 && piece.failures >= m.max_attempts {
                // An object function's failure is its record's: only that record is given
                // up; the records after it (never failed themselves) go on, with their own
                // retries. A batch function's failure is the whole piece's.
                let rest = if per_record {
                    piece.records.split_off(1)
                } else {
                    Vec::new()
                };
                self.give_up(
                    &piece.records,
                    RETRY_ATTEMPTS_EXHAUSTED,
                    piece.invocations,
                    &piece.last_error,
                    &piece.last_request_id,
                    &refs,
                    &mut started,
                    shutdown,
                )
                .await?;
                if !rest.is_empty() {
                    queue.push_front(Pending {
                        records: rest,
                        failures: 0,
                        invocations: piece.invocations,
                        last_error: String::new(),
                        last_request_id: String::new(),
                        unavailable: 0,
                    });
                }
                continue;
            }
            // A retry makes the batch slow: its records show `processing` meanwhile.
            started.now(upload_ids(&piece.records, &refs)).await;
            let backoff = Duration::from_millis(100u64.saturating_mul(1 << piece.failures.min(10)))
                .min(MAX_BACKOFF);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(shutdown) => return Err(Stopped),
            }
            queue.push_front(piece);
        }
        Ok(())
    }

    fn set_result(&self, result: &str, error: Option<&str>) {
        self.p.update_stats(&self.mapping.name, |s| {
            s.last_processing_result = result.to_owned();
            if let Some(e) = error {
                s.function_errors += 1;
                s.last_error = Some(e.to_owned());
            }
        });
    }

    /// Invokes the function once; logs Lambda's START / END / REPORT platform lines.
    async fn invoke(&self, records: &[Record]) -> (String, Outcome) {
        let m = &self.mapping;
        let ctx = CallContext {
            mapping: m.name.clone(),
            request_id: uuid::Uuid::new_v4().to_string(),
            logs: self.p.logs.clone(),
        };
        let input = BatchInput {
            stream: m.stream.clone(),
            stream_arn: self.stream_arn.clone(),
            shard_id: self.id().to_owned(),
            region: self.p.aws.region.clone(),
            invoke_identity_arn: self.invoke_identity_arn.clone(),
            records: records.to_vec(),
        };
        let rid = ctx.request_id.clone();
        ctx.log_lines(
            "platform",
            [format!("START RequestId: {rid} Version: $LATEST")],
        )
        .await;
        let started = Instant::now();
        let res = self.function.invoke(&input, &ctx).await;
        let elapsed = started.elapsed();
        let ms = elapsed.as_millis() as u64;
        let outcome = match res {
            Err(FunctionError::Unavailable(e)) => Outcome::Unavailable(e),
            Err(e) => Outcome::Failed(e.to_string()),
            Ok(BatchResponse::Items { outputs, failure }) => {
                let outputs: Vec<Option<OutputRef>> = outputs.into_iter().map(Some).collect();
                match failure {
                    None if outputs.len() >= records.len() => Outcome::Success(outputs),
                    None => Outcome::Partial {
                        ok: outputs.len(),
                        outputs,
                        error: "function stopped before the end of the batch".into(),
                        per_record: false,
                    },
                    Some(error) => Outcome::Partial {
                        ok: outputs.len(),
                        outputs,
                        error,
                        per_record: true,
                    },
                }
            }
            Ok(BatchResponse::Returned(v)) if m.reports_batch_item_failures() => {
                match lowest_failed_item(&v, records) {
                    Ok(None) => Outcome::Success(Vec::new()),
                    Ok(Some(ok)) => Outcome::Partial {
                        ok,
                        per_record: false,
                        outputs: Vec::new(),
                        error: format!(
                            "function reported record {} as failed",
                            records[ok].sequence_number
                        ),
                    },
                    Err(e) => Outcome::Failed(e),
                }
            }
            Ok(BatchResponse::Returned(_)) => Outcome::Success(Vec::new()),
        };
        let mut lines = vec![format!("END RequestId: {rid}")];
        let status = match &outcome {
            Outcome::Success(_) => "ok".to_owned(),
            Outcome::Partial { ok, .. } => format!("partial ({ok} of {} ok)", records.len()),
            Outcome::Failed(e) => format!("error: {e}"),
            Outcome::Unavailable(e) => format!("storage unavailable: {e}"),
        };
        lines.push(format!(
            "REPORT RequestId: {rid}\tDuration: {ms} ms\tRecords: {}\tResult: {status}",
            records.len()
        ));
        ctx.log_lines("platform", lines).await;
        let result = match &outcome {
            Outcome::Success(_) => "ok",
            Outcome::Partial { .. } => "partial",
            Outcome::Failed(_) => "error",
            Outcome::Unavailable(_) => "unavailable",
        };
        metrics::counter!("sluice_mapping_invocations_total", "mapping" => m.name.clone(), "result" => result)
            .increment(1);
        metrics::counter!("sluice_mapping_invocation_records_total", "mapping" => m.name.clone())
            .increment(records.len() as u64);
        if !matches!(outcome, Outcome::Success(_)) {
            metrics::counter!("sluice_mapping_errors_total", "mapping" => m.name.clone(), "result" => result)
                .increment(1);
        }
        metrics::histogram!("sluice_mapping_invocation_duration_seconds", "mapping" => m.name.clone())
            .record(elapsed.as_secs_f64());
        self.p.update_stats(&m.name, |s| {
            s.batches += 1;
            s.last_batch_ms = ms;
        });
        (rid, outcome)
    }

    async fn succeed(
        &self,
        records: &[Record],
        outputs: &[Option<OutputRef>],
        refs: &HashMap<String, RecordRef>,
        started: &mut StartedReport,
    ) {
        if records.is_empty() {
            return;
        }
        started.settle().await;
        let m = &self.mapping;
        let mut updates = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let Some(rr) = refs.get(&r.sequence_number) else {
                continue;
            };
            let Some(id) = rr.upload_id.clone() else {
                continue;
            };
            let (bucket, key) = match outputs.get(i).cloned().flatten() {
                Some(o) => (o.bucket, o.key),
                None => (
                    m.output_bucket.clone().unwrap_or_else(|| rr.bucket.clone()),
                    output_key(&rr.key, &m.output_prefix),
                ),
            };
            updates.push(StatusUpdate::Succeeded {
                new_delivery: !started.reported(&id),
                upload_id: id,
                bucket,
                key,
            });
        }
        let n = records.len() as u64;
        self.p.update_stats(&m.name, |s| s.succeeded += n);
        self.done(records, updates).await;
    }

    /// Gives up on records: describes them to the destination (retrying until it took the
    /// description, so the checkpoint never passes a record whose failure is not durable),
    /// then marks them done.
    #[allow(clippy::too_many_arguments)]
    async fn give_up(
        &self,
        records: &[Record],
        condition: &str,
        invocations: u64,
        error: &str,
        request_id: &str,
        refs: &HashMap<String, RecordRef>,
        started: &mut StartedReport,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Stopped> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(());
        };
        started.settle().await;
        let m = &self.mapping;
        tracing::warn!(mapping = %m.name, shard = self.id(), condition,
            first = %first.sequence_number, last = %last.sequence_number, error,
            "giving up on records");
        if let Some(dest) = &self.destination {
            let input = BatchInput {
                stream: m.stream.clone(),
                stream_arn: self.stream_arn.clone(),
                shard_id: self.id().to_owned(),
                region: self.p.aws.region.clone(),
                invoke_identity_arn: self.invoke_identity_arn.clone(),
                records: records.to_vec(),
            };
            let record = OnFailureRecord {
                request_context: RequestContext {
                    request_id: if request_id.is_empty() {
                        uuid::Uuid::new_v4().to_string()
                    } else {
                        request_id.to_owned()
                    },
                    function_arn: self.function_arn.clone(),
                    condition: condition.to_owned(),
                    approximate_invoke_count: invocations,
                },
                response_context: ResponseContext {
                    status_code: if invocations > 0 { 200 } else { 0 },
                    executed_version: if invocations > 0 {
                        "$LATEST".into()
                    } else {
                        String::new()
                    },
                    function_error: if invocations > 0 {
                        "Unhandled".into()
                    } else {
                        String::new()
                    },
                    error_message: (!error.is_empty()).then(|| error.to_owned()),
                },
                version: "1.0".into(),
                timestamp: iso_ms(sluice_meta::now_ms()),
                kinesis_batch_info: KinesisBatchInfo {
                    shard_id: self.id().to_owned(),
                    start_sequence_number: first.sequence_number.clone(),
                    end_sequence_number: last.sequence_number.clone(),
                    approximate_arrival_of_first_record: iso_ms(first.approximate_arrival_ms),
                    approximate_arrival_of_last_record: iso_ms(last.approximate_arrival_ms),
                    batch_size: records.len(),
                    stream_arn: self.stream_arn.clone(),
                },
                payload: Some(kinesis_event(&input)),
            };
            let mut tries = 0u32;
            loop {
                match dest.send(&m.name, &record).await {
                    Ok(()) => break,
                    Err(e) => {
                        tries += 1;
                        tracing::warn!(mapping = %m.name, shard = self.id(), destination = %dest.describe(),
                            error = %e, "cannot send to the on-failure destination; retrying");
                        let wait = Duration::from_millis(100u64 << tries.min(7)).min(MAX_BACKOFF);
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = stopped(shutdown) => return Err(Stopped),
                        }
                    }
                }
            }
        }
        let updates = upload_ids(records, refs)
            .into_iter()
            .map(|id| StatusUpdate::Failed {
                new_delivery: !started.reported(&id),
                upload_id: id,
                error: error.to_owned(),
            })
            .collect();
        let n = records.len() as u64;
        self.p.update_stats(&m.name, |s| s.failed += n);
        self.done(records, updates).await;
        Ok(())
    }

    /// Hands resolved records to the committer, so that the lane can invoke the next batch
    /// while their status and checkpoint are written. The committer takes them in order,
    /// so completions are reported in the order the lanes resolved them (per shard, or per
    /// key with several lanes).
    async fn done(&self, records: &[Record], updates: Vec<StatusUpdate>) {
        let seqs: Vec<String> = records.iter().map(|r| r.sequence_number.clone()).collect();
        let commit = Commit {
            seqs,
            updates,
            flushed: None,
        };
        if let Err(mpsc::error::SendError(c)) = self.commits.send(commit).await {
            // No committer (the worker is ending): write here, once.
            self.commit(&c.seqs, c.updates, &watch::channel(true).1)
                .await;
        }
    }

    /// Writes resolved records' status and checkpoint, in the order they were resolved.
    /// Batches that queued up while a write was under way are written together (in
    /// order, up to [`MAX_COMMIT_RECORDS`] records): under load one write, and one fsync,
    /// covers the outcomes of many batches.
    async fn committer(&self, mut rx: mpsc::Receiver<Commit>, shutdown: watch::Receiver<bool>) {
        while let Some(first) = rx.recv().await {
            let mut seqs = first.seqs;
            let mut updates = first.updates;
            let mut flushed: Vec<_> = first.flushed.into_iter().collect();
            // A flush request ends the group: it is answered once everything before it
            // is written.
            while flushed.is_empty() && seqs.len() < MAX_COMMIT_RECORDS {
                let Ok(c) = rx.try_recv() else { break };
                seqs.extend(c.seqs);
                updates.extend(c.updates);
                flushed.extend(c.flushed);
            }
            if !seqs.is_empty() || !updates.is_empty() {
                self.commit(&seqs, updates, &shutdown).await;
            }
            for f in flushed {
                let _ = f.send(());
            }
        }
    }

    /// Marks records done and reports their status updates. When the observer keeps its
    /// rows in the checkpoints' database, the updates and the checkpoint (if it advanced)
    /// are one write, retried (with a growing pause) until it commits: the records after
    /// them wait, and a checkpoint never passes a record whose outcome is not durable. Once
    /// the worker is stopping, a failed write is given up: nothing is checkpointed, so the
    /// records are delivered again at the next start. Otherwise the updates are written
    /// first, then the checkpoint.
    async fn commit(
        &self,
        seqs: &[String],
        updates: Vec<StatusUpdate>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let m = &self.mapping;
        let joined = if updates.is_empty() {
            None
        } else {
            self.p
                .checkpoints
                .db()
                .and_then(|db| self.p.observer.write_with(db, &updates))
        };
        let Some(write) = joined else {
            if !updates.is_empty() {
                self.p.observer.report(updates).await;
            }
            let mut t = self.tracker.lock().await;
            t.done(seqs.iter().map(String::as_str));
            self.save_checkpoint(&mut t).await;
            return;
        };
        let mut t = self.tracker.lock().await;
        t.done(seqs.iter().map(String::as_str));
        let seq = t.unsaved.clone();
        let mut write = Some(write);
        let mut tries = 0u32;
        loop {
            let attempt = match write.take() {
                Some(w) => Some(w),
                None => self
                    .p
                    .checkpoints
                    .db()
                    .and_then(|db| self.p.observer.write_with(db, &updates)),
            };
            let Some(attempt) = attempt else { return };
            match self
                .p
                .checkpoints
                .save_with(&m.name, self.id(), seq.as_deref(), attempt)
                .await
            {
                Ok(()) => {
                    t.unsaved = None;
                    drop(t);
                    self.p.observer.written(&updates);
                    return;
                }
                Err(e) if stopping(shutdown) => {
                    tracing::warn!(mapping = %m.name, shard = self.id(), error = %e,
                        "status and checkpoint not written before stopping; the records are delivered again");
                    // The checkpoint stays where it was, and moves no more.
                    t.unsaved = None;
                    t.held = true;
                    return;
                }
                Err(e) => {
                    tries = tries.saturating_add(1);
                    tracing::warn!(mapping = %m.name, shard = self.id(), error = %e,
                        "status and checkpoint not written; retrying");
                    let pause = Duration::from_millis(100u64.saturating_mul(1 << tries.min(6)))
                        .min(MAX_BACKOFF);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Saves the checkpoint if it advanced. A failed save is retried at the next advance
    /// (or when the worker stops); meanwhile the records stay re-deliverable.
    async fn save_checkpoint(&self, t: &mut Tracker) {
        let Some(seq) = t.unsaved.clone() else { return };
        match self
            .p
            .checkpoints
            .save(&self.mapping.name, self.id(), &seq)
            .await
        {
            Ok(()) => t.unsaved = None,
            Err(e) => {
                tracing::warn!(mapping = %self.mapping.name, shard = self.id(), error = %e, "checkpoint failed")
            }
        }
    }
}

/// The upload ids of records, in order.
fn upload_ids(records: &[Record], refs: &HashMap<String, RecordRef>) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| refs.get(&r.sequence_number)?.upload_id.clone())
        .collect()
}

/// The `Started` report of one batch: written by a task if the batch is still running
/// after [`PROCESSING_AFTER`], or right away when it is retried. Settled (cancelled, or
/// waited for) before the batch writes any outcome, so that `Started` is never written
/// after the outcome of the same record.
struct StartedReport {
    observer: Arc<dyn Observer>,
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Vec<String>>>,
    /// Upload ids whose `Started` was written for this delivery.
    done: HashSet<String>,
}

impl StartedReport {
    fn spawn(observer: Arc<dyn Observer>, ids: Vec<String>) -> Self {
        let mut r = StartedReport {
            observer: observer.clone(),
            cancel: None,
            task: None,
            done: HashSet::new(),
        };
        if ids.is_empty() {
            return r;
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        r.cancel = Some(tx);
        r.task = Some(tokio::spawn(async move {
            tokio::select! {
                biased;
                _ = rx => Vec::new(),
                _ = tokio::time::sleep(PROCESSING_AFTER) => {
                    let updates = ids
                        .iter()
                        .map(|id| StatusUpdate::Started { upload_id: id.clone() })
                        .collect();
                    observer.report(updates).await;
                    ids
                }
            }
        }));
        r
    }

    /// Cancels the delayed report if it has not started, else waits until it is written.
    async fn settle(&mut self) {
        if let Some(tx) = self.cancel.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take()
            && let Ok(ids) = task.await
        {
            self.done.extend(ids);
        }
    }

    /// Reports `Started` now for those of `ids` not reported yet.
    async fn now(&mut self, ids: Vec<String>) {
        self.settle().await;
        let fresh: Vec<String> = ids
            .into_iter()
            .filter(|id| !self.done.contains(id))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let updates = fresh
            .iter()
            .map(|id| StatusUpdate::Started {
                upload_id: id.clone(),
            })
            .collect();
        self.observer.report(updates).await;
        self.done.extend(fresh);
    }

    fn reported(&self, id: &str) -> bool {
        self.done.contains(id)
    }
}

/// Reads a partial batch response: `Ok(None)` = whole batch succeeded (null, no or null
/// `batchItemFailures`, empty list, or not an object), `Ok(Some(i))` = the lowest failed
/// record is `records[i]`, `Err` = malformed (missing, empty or unknown `itemIdentifier`, or
/// `batchItemFailures` not a list), which Lambda treats as the whole batch failing.
pub(crate) fn lowest_failed_item(
    v: &serde_json::Value,
    records: &[Record],
) -> Result<Option<usize>, String> {
    use serde_json::Value;
    let Value::Object(o) = v else { return Ok(None) };
    let items = match o.get("batchItemFailures") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err("malformed partial batch response: batchItemFailures is not a list".into());
        }
    };
    let mut lowest: Option<usize> = None;
    for item in items {
        let id = match item.get("itemIdentifier") {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => {
                return Err(format!(
                    "malformed partial batch response: item {item} has no itemIdentifier"
                ));
            }
        };
        let idx = records
            .iter()
            .position(|r| &r.sequence_number == id)
            .ok_or_else(|| {
                format!(
                    "malformed partial batch response: itemIdentifier {id} is not a sequence number of the batch"
                )
            })?;
        lowest = Some(lowest.map_or(idx, |l| l.min(idx)));
    }
    Ok(lowest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    fn recs(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                sequence_number: format!("{}", 100 + i),
                partition_key: "k".into(),
                data: Bytes::new(),
                approximate_arrival_ms: 0,
            })
            .collect()
    }

    #[test]
    fn partial_batch_responses() {
        let r = recs(3);
        assert_eq!(lowest_failed_item(&json!(null), &r), Ok(None));
        assert_eq!(lowest_failed_item(&json!({}), &r), Ok(None));
        assert_eq!(
            lowest_failed_item(&json!({"batchItemFailures": []}), &r),
            Ok(None)
        );
        assert_eq!(
            lowest_failed_item(&json!({"batchItemFailures": null}), &r),
            Ok(None)
        );
        assert_eq!(
            lowest_failed_item(
                &json!({"batchItemFailures": [{"itemIdentifier": "102"}, {"itemIdentifier": "101"}]}),
                &r
            ),
            Ok(Some(1))
        );
        for bad in [
            json!({"batchItemFailures": [{"itemIdentifier": ""}]}),
            json!({"batchItemFailures": [{"itemIdentifier": null}]}),
            json!({"batchItemFailures": [{"itemId": "101"}]}),
            json!({"batchItemFailures": [{"itemIdentifier": "999"}]}),
            json!({"batchItemFailures": "101"}),
        ] {
            assert!(lowest_failed_item(&bad, &r).is_err(), "{bad} is malformed");
        }
    }

    #[test]
    fn tracker_checkpoints_the_contiguous_done_prefix() {
        let mut t = Tracker::default();
        for s in ["9", "10", "11", "12"] {
            t.add(s);
        }
        t.done(["10"]);
        assert_eq!(t.unsaved, None, "9 is not done yet");
        t.done(["9", "12"]);
        assert_eq!(
            t.unsaved.as_deref(),
            Some("10"),
            "numeric order, stops before 11"
        );
        t.done(["11"]);
        assert_eq!(t.unsaved.as_deref(), Some("12"));
        assert!(t.pending.is_empty());
    }
}
