//! Appending: the per-transaction append context and the batching appender that coalesces
//! concurrent `put_record`/`put_records` calls into one database job.
//!
//! Why batch before the database: the shared writer already shares one fsync among every
//! job of a group, but each job still pays its own savepoint, stream lookup and shard-map
//! load. The batcher hands the writer one job per round holding every append that arrived
//! while the previous round was being committed, so those costs are paid once per round
//! and per stream, and each shard's counter row is written once per round.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use sluice_db::now_ms;
use sluice_db::rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::EmbeddedStream;
use super::schema::{load_stream, open_shards};
use super::throttle::Throttle;
use super::visibility::Visibility;
use crate::{
    PutRecord, PutResult, StreamError, parse_sequence_number, record_checksum, sequence_number,
    shard_id, validate_record,
};

/// An open shard as the append path sees it.
struct Target {
    idx: u64,
    start: u128,
    end: u128,
    /// The shard's next counter when loaded: everything below it was committed earlier.
    loaded_counter: u64,
    next_counter: u64,
    last_arrival_ms: i64,
    dirty: bool,
}

/// The state of one stream during one transaction: its open shards (in hash-key order) with
/// their counters held in memory and written back by [`AppendCtx::flush`].
///
/// Invariant: between `load` and `flush` nothing else writes the stream's shard rows — the
/// context lives inside one job on the single writer thread.
pub(crate) struct AppendCtx {
    stream_id: i64,
    stream: String,
    created_ms: i64,
    max_record_bytes: usize,
    shards: Vec<Target>,
}

impl AppendCtx {
    pub(crate) fn load(conn: &Connection, stream: &str) -> Result<Self, StreamError> {
        let row = load_stream(conn, stream)?;
        let shards = open_shards(conn, row.id)?
            .into_iter()
            .map(|s| Target {
                idx: s.idx,
                start: s.start_hash,
                end: s.end_hash,
                loaded_counter: s.next_counter,
                next_counter: s.next_counter,
                last_arrival_ms: s.last_arrival_ms,
                dirty: false,
            })
            .collect();
        Ok(AppendCtx {
            stream_id: row.id,
            stream: row.name,
            created_ms: row.created_ms,
            max_record_bytes: row.max_record_bytes,
            shards,
        })
    }

    /// Validates and inserts one record. Counters advance only once the insert succeeded;
    /// a validation error or a refusal by `throttle` writes nothing.
    pub(crate) fn append(
        &mut self,
        conn: &Connection,
        record: &PutRecord,
        ordering: Option<&str>,
        now: i64,
        throttle: Option<&Throttle>,
    ) -> Result<PutResult, StreamError> {
        let hash = validate_record(record, self.max_record_bytes)?;
        let pos = self.shards.partition_point(|s| s.start <= hash);
        let shard = pos
            .checked_sub(1)
            .and_then(|i| self.shards.get_mut(i))
            .filter(|s| hash <= s.end)
            .ok_or_else(|| {
                StreamError::Backend(format!(
                    "no open shard of {} covers hash key {hash}",
                    self.stream
                ))
            })?;
        let counter = shard.next_counter;
        let seq = sequence_number(shard.idx, counter);
        if let Some(ordering) = ordering {
            check_ordering(ordering, &seq)?;
        }
        if let Some(t) = throttle {
            t.admit_write(
                &self.stream,
                self.created_ms,
                shard.idx,
                record.partition_key.len() + record.data.len(),
            )?;
        }
        let arrival = shard.last_arrival_ms.max(now);
        let checksum = record_checksum(counter, &record.partition_key, &record.data);
        conn.prepare_cached(
            "INSERT INTO records
                 (stream_id, shard_idx, counter, arrival_ms, partition_key, data, checksum)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            self.stream_id,
            shard.idx as i64,
            counter as i64,
            arrival,
            record.partition_key,
            record.data.as_ref(),
            checksum as i64
        ])?;
        shard.next_counter = counter + 1;
        shard.last_arrival_ms = arrival;
        shard.dirty = true;
        Ok(PutResult {
            shard_id: shard_id(shard.idx),
            sequence_number: seq,
        })
    }

    /// Writes the counters of every shard appended to since `load`, and hides the new
    /// records from readers until the commit holding them is durable (see [`Visibility`]).
    /// Must be the job's last step that can fail: a job that fails after it leaves no
    /// callback behind (`sluice_db` drops them), but its horizons stay registered, which
    /// only hides nothing more than is already hidden.
    pub(crate) fn flush(
        &mut self,
        conn: &Connection,
        visible: &Arc<Visibility>,
    ) -> Result<(), StreamError> {
        let mut advanced = Vec::new();
        for s in self.shards.iter_mut().filter(|s| s.dirty) {
            visible.pending(self.stream_id, s.idx, s.loaded_counter);
            advanced.push((s.idx, s.next_counter));
            s.loaded_counter = s.next_counter;
            conn.prepare_cached(
                "UPDATE shards SET next_counter = ?3, last_arrival_ms = ?4
                 WHERE stream_id = ?1 AND idx = ?2",
            )?
            .execute(params![
                self.stream_id,
                s.idx as i64,
                s.next_counter as i64,
                s.last_arrival_ms
            ])?;
            s.dirty = false;
        }
        if !advanced.is_empty() {
            let (visible, stream_id) = (visible.clone(), self.stream_id);
            sluice_db::on_durable(move || {
                for (idx, next) in advanced {
                    visible.durable(stream_id, idx, next);
                }
            });
        }
        Ok(())
    }
}

/// SequenceNumberForOrdering: the new number must exceed the given one. Numbers of one
/// stream compare as integers, and a partition key only ever moves to shards with higher
/// indexes (children of its old shard), so a number this stream returned earlier for the
/// same key is always exceeded; anything else that is not is refused.
fn check_ordering(ordering: &str, seq: &str) -> Result<(), StreamError> {
    if parse_sequence_number(ordering).is_none() {
        return Err(StreamError::InvalidArgument(format!(
            "sequence number for ordering {ordering:?} is not a sequence number of this stream"
        )));
    }
    // Same width (37 digits) for every valid number: string order is numeric order.
    if seq <= ordering {
        return Err(StreamError::InvalidArgument(format!(
            "sequence number for ordering {ordering} is not below the next sequence number \
             of the record's shard; pass a sequence number returned for the same partition key"
        )));
    }
    Ok(())
}

/// Appends one record inside a write job of the shared database. Used by callers that
/// must commit a record together with other rows (the upload path); `visible` is
/// [`EmbeddedStream::visibility`]. The record stays invisible to readers until the job's
/// group is durable. The caller must call [`EmbeddedStream::notify`] after the write
/// resolved.
pub fn append_in_tx(
    conn: &Connection,
    visible: &Arc<Visibility>,
    stream: &str,
    record: &PutRecord,
    now: i64,
) -> Result<PutResult, StreamError> {
    let mut ctx = AppendCtx::load(conn, stream)?;
    let res = ctx.append(conn, record, None, now, None)?;
    ctx.flush(conn, visible)?;
    Ok(res)
}

type Outcome = Result<Vec<Result<PutResult, StreamError>>, StreamError>;

/// One caller's appends: a `put_record` (one record) or a `put_records` call.
struct Work {
    stream: String,
    records: Vec<(PutRecord, Option<String>)>,
}

struct Pending {
    work: Work,
    bytes: usize,
    reply: oneshot::Sender<Outcome>,
}

/// Most records and bytes handed to the writer in one job.
const MAX_BATCH_RECORDS: usize = 4_096;
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Batches in the database at once: one being fsynced, one committed and waiting to join
/// the next fsync, one being written (the database pipelines commits and fsyncs); no more,
/// so the next batch keeps growing while all three are busy. Measured against 2 and 6 at
/// 64 producers (docs/BENCHMARKS-stream.md): 3 was ahead in every round.
const MAX_IN_FLIGHT: usize = 3;

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    /// Batches handed to the database whose results have not come back.
    in_flight: usize,
    /// True while a task is about to cut a batch (it yields first, see [`cut_soon`]).
    cutting: bool,
}

/// Coalesces concurrent appends. At most [`MAX_IN_FLIGHT`] batches are in the database at
/// a time; appends that arrive meanwhile queue up and form the next batch, so batches grow
/// with load. Results go straight from the database's syncer thread to the callers.
#[derive(Default)]
pub(crate) struct Batcher {
    state: Mutex<State>,
}

impl Batcher {
    /// Queues `records` for `stream` and returns their results once they are durable (or
    /// failed). Dropping the returned future does not withdraw the records.
    pub(crate) async fn append(
        &self,
        owner: &EmbeddedStream,
        stream: &str,
        records: Vec<(PutRecord, Option<String>)>,
    ) -> Outcome {
        let work = Work {
            stream: stream.to_owned(),
            records,
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime to cut batches on: write directly.
            let throttle = owner.throttle.clone();
            let visible = owner.visibility();
            let results = owner
                .db
                .write(move |c| {
                    Ok::<_, StreamError>(run_batch(
                        c,
                        std::slice::from_ref(&work),
                        throttle.as_deref(),
                        &visible,
                    ))
                })
                .await?;
            let out = results.into_iter().next().unwrap_or_else(|| {
                Err(StreamError::Backend("the batch returned no result".into()))
            });
            owner.notify(stream);
            return out;
        };
        let bytes = work
            .records
            .iter()
            .map(|(r, _)| r.data.len() + r.partition_key.len())
            .sum();
        let (tx, rx) = oneshot::channel();
        let cut = {
            let mut st = self
                .state
                .lock()
                .map_err(|_| StreamError::Backend("the append queue is poisoned".into()))?;
            st.queue.push_back(Pending {
                work,
                bytes,
                reply: tx,
            });
            let cut = st.in_flight < MAX_IN_FLIGHT && !st.cutting;
            st.cutting |= cut;
            cut
        };
        if cut {
            let owner = owner.clone();
            handle.spawn(cut_soon(owner));
        }
        rx.await
            .map_err(|_| StreamError::Backend("the appender stopped before replying".into()))?
    }

    /// Takes the next batch off the queue and counts it in flight; `None` if the queue is
    /// empty or enough batches are in flight already.
    fn take_batch(st: &mut State) -> Option<Vec<Pending>> {
        if st.queue.is_empty() || st.in_flight >= MAX_IN_FLIGHT {
            return None;
        }
        let mut batch = Vec::new();
        let (mut n, mut bytes) = (0usize, 0usize);
        while let Some(p) = st.queue.front() {
            let k = p.work.records.len();
            if !batch.is_empty() && (n + k > MAX_BATCH_RECORDS || bytes + p.bytes > MAX_BATCH_BYTES)
            {
                break;
            }
            n += k;
            bytes += p.bytes;
            batch.extend(st.queue.pop_front());
        }
        st.in_flight += 1;
        Some(batch)
    }
}

/// Cuts a batch once the tasks that are runnable right now had their turn: those woken
/// together with this append (by the last results) usually append again at once, and
/// joining this batch saves them a commit of their own.
async fn cut_soon(owner: EmbeddedStream) {
    tokio::task::yield_now().await;
    let batch = match owner.batcher.state.lock() {
        Ok(mut st) => {
            st.cutting = false;
            Batcher::take_batch(&mut st)
        }
        Err(_) => None,
    };
    if let Some(batch) = batch {
        submit(owner, batch);
    }
}

/// Hands a batch to the database. Its results are sent from the database's syncer thread;
/// then, if appends queued up meanwhile, the next batch is handed over from there too.
fn submit(owner: EmbeddedStream, batch: Vec<Pending>) {
    let (works, replies): (Vec<Work>, Vec<oneshot::Sender<Outcome>>) =
        batch.into_iter().map(|p| (p.work, p.reply)).unzip();
    let names: Vec<String> = works.iter().map(|w| w.stream.clone()).collect();
    let throttle = owner.throttle.clone();
    let visible = owner.visibility();
    let db = owner.db.clone();
    let slot = InFlight(owner);
    let done = move |res: Result<Vec<Outcome>, StreamError>| {
        match res {
            Ok(outcomes) => {
                let mut touched: Vec<&str> = Vec::new();
                for ((reply, outcome), name) in replies.into_iter().zip(outcomes).zip(&names) {
                    if matches!(&outcome, Ok(rs) if rs.iter().any(|r| r.is_ok())) {
                        touched.push(name);
                    }
                    let _ = reply.send(outcome);
                }
                touched.sort_unstable();
                touched.dedup();
                for name in touched {
                    slot.0.notify(name);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "a batch of appends failed");
                for reply in replies {
                    let _ = reply.send(Err(StreamError::Backend(e.to_string())));
                }
            }
        }
        drop(slot);
    };
    // If the database refuses the job (it is closed), `done` is dropped unrun: the callers
    // see the appender stop, and the slot is given back.
    let _ = db.write_with(
        move |c| Ok::<_, StreamError>(run_batch(c, &works, throttle.as_deref(), &visible)),
        done,
    );
}

/// A batch's place among those in flight, given back when its results were delivered or
/// when they never will be (the job was dropped): then the next batch, if any, goes out.
struct InFlight(EmbeddedStream);

impl Drop for InFlight {
    fn drop(&mut self) {
        let next = match self.0.batcher.state.lock() {
            Ok(mut st) => {
                st.in_flight = st.in_flight.saturating_sub(1);
                Batcher::take_batch(&mut st)
            }
            Err(_) => None,
        };
        if let Some(batch) = next {
            submit(self.0.clone(), batch);
        }
    }
}

/// Runs a batch inside one job. A database error undoes the whole batch: it is returned for
/// every caller (the closure fails, so the job's savepoint is rolled back).
fn run_batch(
    conn: &Connection,
    works: &[Work],
    throttle: Option<&Throttle>,
    visible: &Arc<Visibility>,
) -> Vec<Outcome> {
    match try_batch(conn, works, throttle, visible) {
        Ok(v) => v,
        Err(e) => {
            let msg = e.to_string();
            // Undo whatever the batch wrote; the savepoint of the job is released empty.
            let _ = conn.execute_batch("ROLLBACK TO batch; RELEASE batch");
            works
                .iter()
                .map(|_| Err(StreamError::Backend(msg.clone())))
                .collect()
        }
    }
}

fn try_batch(
    conn: &Connection,
    works: &[Work],
    throttle: Option<&Throttle>,
    visible: &Arc<Visibility>,
) -> Result<Vec<Outcome>, StreamError> {
    conn.execute_batch("SAVEPOINT batch")?;
    let now = now_ms();
    let mut ctxs: HashMap<&str, Option<AppendCtx>> = HashMap::new();
    let mut out = Vec::with_capacity(works.len());
    for w in works {
        let ctx = match ctxs.get_mut(w.stream.as_str()) {
            Some(c) => c,
            None => {
                let loaded = match AppendCtx::load(conn, &w.stream) {
                    Ok(c) => Some(c),
                    Err(StreamError::ResourceNotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                ctxs.entry(w.stream.as_str()).or_insert(loaded)
            }
        };
        let Some(ctx) = ctx.as_mut() else {
            out.push(Err(super::schema::not_found(&w.stream)));
            continue;
        };
        let mut results = Vec::with_capacity(w.records.len());
        for (record, ordering) in &w.records {
            match ctx.append(conn, record, ordering.as_deref(), now, throttle) {
                Err(StreamError::Backend(e)) => return Err(StreamError::Backend(e)),
                r => results.push(r),
            }
        }
        out.push(Ok(results));
    }
    for ctx in ctxs.values_mut().flatten() {
        ctx.flush(conn, visible)?;
    }
    conn.execute_batch("RELEASE batch")?;
    Ok(out)
}

/// Shares one `Batcher` between clones of an [`EmbeddedStream`].
pub(crate) type SharedBatcher = Arc<Batcher>;
