//! Appending: this layer routes each record to its shard (hash key → the open shard whose
//! range holds it), checks it against the stream's limits, SequenceNumberForOrdering and
//! the optional throughput limits, and hands the batch to the record engine
//! ([`crate::records::RecordLog::append`]), which numbers the records and answers once
//! they are durable.
//!
//! Routing needs each stream's open shards; they are loaded from the metadata (cached per
//! database) after reading the engine's epoch, and the append carries that epoch. A
//! reshard, delete or record-size change runs inside the engine's fence, so an append
//! routed with metadata read before the change is answered "stale" and routed again with
//! fresh metadata: no record ever lands in a closed shard.
//!
//! Appends that must commit together with other metadata rows (an upload's record with its
//! object and status rows) go through the **outbox**: [`enqueue_in_tx`] stores the record
//! in `stream_outbox` inside the caller's transaction; once that is durable the caller
//! [`EmbeddedStream::deliver`]s it to the record engine, then deletes the outbox row with
//! [`settle_in_tx`] in its own transaction holding the result. The engine remembers which
//! ticket each record delivered, so delivering again (after a crash between the two steps)
//! returns the first result instead of appending twice: exactly once.

use std::sync::Arc;

use sluice_meta::Tx;
use sluice_meta::now_ms;
use sluice_meta::params;

use super::EmbeddedStream;
use super::schema::{load_stream, open_shards};
use super::throttle::Throttle;
use crate::records::{Append, AppendOutcome, Appended, NewRecord, ShardKey};
use crate::{PutRecord, PutResult, StreamError, parse_sequence_number, sequence_number, shard_id};

/// The first ticket of the producers that number their records themselves: a ticket at or
/// above it is never an outbox entry's ([`enqueue_in_tx`] numbers those from 1, and no
/// outbox will ever hold 2^62 entries). The uploads ledger's rows are their own outbox
/// entries, ticket `OWN_TICKETS_FROM + row number`: the two kinds share the record engines'
/// one ticket space without meeting.
pub const OWN_TICKETS_FROM: i64 = 1 << 62;

/// How often an append is resubmitted after its stream's metadata changed under it.
const STALE_RETRIES: usize = 8;

/// Stream metadata the append path needs, loaded from the metadata engine and cached.
#[derive(Debug)]
pub(crate) struct StreamMeta {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) created_ms: i64,
    pub(crate) max_record_bytes: usize,
    /// Open shards in hash-key order.
    pub(crate) shards: Vec<MetaShard>,
    /// The record engine's epoch, read before the rows were: older than a change of this
    /// stream means stale.
    pub(crate) epoch: u64,
    /// Each open shard's `sluice_stream_appended_{records,bytes}_total` handles, by shard
    /// index: looked up in the recorder once per load of this metadata, not per append.
    pub(crate) appended: Vec<(u64, metrics::Counter, metrics::Counter)>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct MetaShard {
    pub(crate) idx: u64,
    pub(crate) start: u128,
    pub(crate) end: u128,
    /// The stored `next_counter` and `last_arrival_ms`: the floor of the shard's next record.
    pub(crate) next_counter: u64,
    pub(crate) last_arrival_ms: i64,
}

pub(crate) type Results = Vec<Result<PutResult, StreamError>>;

/// The result of an append as the Kinesis API reports it.
pub(crate) fn put_result(a: &Appended) -> PutResult {
    PutResult {
        shard_id: shard_id(a.shard),
        sequence_number: sequence_number(a.shard, a.position),
    }
}

impl EmbeddedStream {
    /// The append path's view of `stream`: cached, or read from the metadata.
    pub(crate) async fn meta(&self, stream: &str) -> Result<Arc<StreamMeta>, StreamError> {
        if let Some(m) = self.shared.cached_meta(stream) {
            return Ok(m);
        }
        let epoch = self.records.epoch();
        let name = stream.to_owned();
        let meta = self
            .db
            .read(move |c| {
                let row = load_stream(c, &name)?;
                let shards = open_shards(c, row.id)?
                    .into_iter()
                    .map(|s| MetaShard {
                        idx: s.idx,
                        start: s.start_hash,
                        end: s.end_hash,
                        next_counter: s.next_counter,
                        last_arrival_ms: s.last_arrival_ms,
                    })
                    .collect();
                Ok::<_, StreamError>(StreamMeta {
                    id: row.id,
                    name: row.name,
                    created_ms: row.created_ms,
                    max_record_bytes: row.max_record_bytes,
                    shards,
                    epoch,
                    appended: Vec::new(),
                })
            })
            .await?;
        let mut meta = meta;
        meta.appended = meta
            .shards
            .iter()
            .map(|s| {
                let (stream, shard) = (meta.name.clone(), shard_id(s.idx));
                (
                    s.idx,
                    metrics::counter!("sluice_stream_appended_records_total", "stream" => stream.clone(), "shard" => shard.clone()),
                    metrics::counter!("sluice_stream_appended_bytes_total", "stream" => stream, "shard" => shard),
                )
            })
            .collect();
        let meta = Arc::new(meta);
        // Tailing readers of this stream hear of its appends from the engine.
        self.watch_stream(&meta.name, meta.id, true);
        self.shared.cache_meta(meta.clone());
        Ok(meta)
    }

    /// Routes one record, already checked for shape and size (its hash key `hash`), with
    /// `meta`: its shard. The same checks, in the same order, as Kinesis: hash key → open
    /// shard, SequenceNumberForOrdering, throughput.
    async fn route(
        &self,
        meta: &StreamMeta,
        hash: u128,
        record: &PutRecord,
        ordering: Option<&str>,
        throttle: Option<&Throttle>,
    ) -> Result<MetaShard, StreamError> {
        let pos = meta.shards.partition_point(|s| s.start <= hash);
        let shard = *pos
            .checked_sub(1)
            .and_then(|i| meta.shards.get(i))
            .filter(|s| hash <= s.end)
            .ok_or_else(|| {
                StreamError::Backend(format!(
                    "no open shard of {} covers hash key {hash}",
                    meta.name
                ))
            })?;
        if let Some(ordering) = ordering {
            // The record's counter will be at least the shard's end now (counters only
            // grow), so checking against that is checking against the counter it gets.
            let end = self
                .records
                .end(ShardKey::new(meta.id, shard.idx))
                .await?
                .map_or(0, |e| e.next)
                .max(shard.next_counter);
            check_ordering(ordering, &sequence_number(shard.idx, end))?;
        }
        if let Some(t) = throttle {
            t.admit_write(
                &meta.name,
                meta.created_ms,
                shard.idx,
                record.partition_key.len() + record.data.len(),
            )?;
        }
        Ok(shard)
    }

    /// Appends `records` to `stream` (delivering outbox ticket `outbox`, if given) and
    /// returns once they are durable: one result per record.
    pub(crate) async fn append_records(
        &self,
        stream: &str,
        mut records: Vec<(PutRecord, Option<String>)>,
        outbox: Option<i64>,
        throttle: Option<Arc<Throttle>>,
    ) -> Result<Results, StreamError> {
        for _ in 0..STALE_RETRIES {
            let meta = self.meta(stream).await?;
            // A record that breaks Kinesis' rules (its shape, its size) fails the whole
            // request, as on Kinesis: nothing is appended. Throughput and ordering refusals
            // below are per record.
            let hashes = records
                .iter()
                .enumerate()
                .map(|(i, (record, _))| {
                    crate::validate_record(record, meta.max_record_bytes).map_err(|e| match e {
                        StreamError::RecordTooLarge { size, max, .. } => {
                            StreamError::RecordTooLarge {
                                index: i,
                                size,
                                max,
                            }
                        }
                        other => other,
                    })
                })
                .collect::<Result<Vec<u128>, _>>()?;
            // Records refused here keep their place (index) for the answer; the others
            // move (partition key and data, no copy) into the engine's append and come
            // back if it is stale.
            let mut refused: Vec<(usize, StreamError)> = Vec::new();
            let mut batch = Vec::with_capacity(records.len());
            for (i, ((record, ordering), hash)) in records.iter_mut().zip(hashes).enumerate() {
                match self
                    .route(
                        &meta,
                        hash,
                        record,
                        ordering.as_deref(),
                        throttle.as_deref(),
                    )
                    .await
                {
                    Ok(shard) => batch.push(NewRecord {
                        shard: shard.idx,
                        min_position: shard.next_counter,
                        min_arrival_ms: shard.last_arrival_ms,
                        partition_key: std::mem::take(&mut record.partition_key),
                        data: std::mem::take(&mut record.data),
                    }),
                    Err(e) => refused.push((i, e)),
                }
            }
            // Records and bytes per shard, counted once the append is durable.
            let mut per_shard: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
            for r in &batch {
                let e = per_shard.entry(r.shard).or_default();
                e.0 += 1;
                e.1 += (r.partition_key.len() + r.data.len()) as u64;
            }
            let outcome = self
                .records
                .append(Append {
                    stream: meta.id,
                    epoch: meta.epoch,
                    ticket: outbox,
                    now_ms: self.clock.now_ms(),
                    records: batch,
                })
                .await?;
            match outcome {
                AppendOutcome::Done(done) => {
                    for (idx, (count, bytes)) in per_shard {
                        if let Some((_, records, size)) =
                            meta.appended.iter().find(|(i, _, _)| *i == idx)
                        {
                            records.increment(count);
                            size.increment(bytes);
                        }
                    }
                    return Ok(merge(done, refused, records.len()));
                }
                AppendOutcome::Stale(back) => {
                    self.shared.uncache_meta(&meta);
                    // Give the records back their partition keys and data.
                    let mut back = back.records.into_iter();
                    let mut refused = refused.iter().map(|r| r.0).peekable();
                    for (i, (record, _)) in records.iter_mut().enumerate() {
                        if refused.peek() == Some(&i) {
                            refused.next();
                            continue;
                        }
                        if let Some(r) = back.next() {
                            record.partition_key = r.partition_key;
                            record.data = r.data;
                        }
                    }
                }
            }
        }
        Err(StreamError::Backend(format!(
            "stream {stream} kept changing while appending; try again"
        )))
    }

    /// The largest record `stream` takes (partition key and data bytes), from the
    /// append path's cached metadata; [`crate::StreamError::ResourceNotFound`] when the stream does
    /// not exist. For a producer that keeps its records in its own rows: it checks each
    /// record with [`crate::validate_record`] before committing it and delivers it with
    /// [`EmbeddedStream::deliver_record`] and a ticket of its own ([`OWN_TICKETS_FROM`]).
    pub async fn max_record_bytes(&self, stream: &str) -> Result<usize, StreamError> {
        Ok(self.meta(stream).await?.max_record_bytes)
    }

    /// Appends the record of outbox ticket `ticket` ([`enqueue_in_tx`]) once: if the
    /// record engine already holds it, returns the result it got then. Reads the record
    /// from the outbox (after a restart); [`EmbeddedStream::deliver_record`] when the
    /// caller has it.
    pub async fn deliver(&self, ticket: i64) -> Result<PutResult, StreamError> {
        if let Some(r) = self.records.delivered(ticket).await? {
            return Ok(put_result(&r));
        }
        let row = self
            .db
            .read(move |c| {
                c.query_opt(
                    "SELECT stream, partition_key, explicit_hash_key, data
                     FROM stream_outbox WHERE ticket = ?1",
                    params![ticket],
                    |r| {
                        Ok((
                            r.get::<String>(0)?,
                            PutRecord {
                                partition_key: r.get(1)?,
                                explicit_hash_key: r.get(2)?,
                                data: r.get::<Vec<u8>>(3)?.into(),
                            },
                        ))
                    },
                )
                .map_err(StreamError::from)
            })
            .await?;
        let (stream, record) = row.ok_or_else(|| {
            StreamError::Backend(format!("outbox ticket {ticket} is unknown or settled"))
        })?;
        self.deliver_record(ticket, &stream, record).await
    }

    /// [`EmbeddedStream::deliver`] with the record the caller enqueued (`stream` and
    /// `record` exactly as given to [`enqueue_in_tx`] for `ticket`).
    pub async fn deliver_record(
        &self,
        ticket: i64,
        stream: &str,
        record: PutRecord,
    ) -> Result<PutResult, StreamError> {
        // A ticket delivered before is answered by the engine with its first result.
        // Not throttled: the caller's transaction already committed the record.
        self.append_records(stream, vec![(record, None)], Some(ticket), None)
            .await?
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(StreamError::Backend("the append returned no result".into())))
    }

    /// [`EmbeddedStream::deliver_record`] for many tickets at once (`(ticket, stream,
    /// record)`), answered in order. The record engine takes them as one
    /// [`crate::records::RecordLog::append_all`]: on the embedded log one write and one
    /// fsync for all of them, where tickets delivered one by one would each take whatever
    /// batch they happened to meet. A ticket whose append comes back stale (its stream
    /// changed meanwhile) is delivered again on its own with fresh metadata.
    pub async fn deliver_records(
        &self,
        items: Vec<(i64, String, PutRecord)>,
    ) -> Vec<Result<PutResult, StreamError>> {
        let mut out: Vec<Option<Result<PutResult, StreamError>>> =
            items.iter().map(|_| None).collect();
        let mut appends = Vec::with_capacity(items.len());
        // Per append: the item it carries, the metadata it was routed with, its shard and
        // its size (for the appended counters).
        let mut sent: Vec<(usize, Arc<StreamMeta>, u64, u64)> = Vec::with_capacity(items.len());
        for (i, (ticket, stream, record)) in items.iter().enumerate() {
            let routed = async {
                let meta = self.meta(stream).await?;
                let hash = crate::validate_record(record, meta.max_record_bytes)?;
                let shard = self.route(&meta, hash, record, None, None).await?;
                Ok::<_, StreamError>((meta, shard))
            }
            .await;
            let (meta, shard) = match routed {
                Ok(r) => r,
                Err(e) => {
                    out[i] = Some(Err(e));
                    continue;
                }
            };
            let size = (record.partition_key.len() + record.data.len()) as u64;
            appends.push(Append {
                stream: meta.id,
                epoch: meta.epoch,
                ticket: Some(*ticket),
                now_ms: self.clock.now_ms(),
                records: vec![NewRecord {
                    shard: shard.idx,
                    min_position: shard.next_counter,
                    min_arrival_ms: shard.last_arrival_ms,
                    partition_key: record.partition_key.clone(),
                    data: record.data.clone(),
                }],
            });
            sent.push((i, meta, shard.idx, size));
        }
        let outcomes = self.records.append_all(appends).await;
        for ((i, meta, shard, size), outcome) in sent.into_iter().zip(outcomes) {
            out[i] = Some(match outcome {
                Ok(AppendOutcome::Done(done)) => {
                    if let Some((_, records, bytes)) =
                        meta.appended.iter().find(|(idx, _, _)| *idx == shard)
                    {
                        records.increment(1);
                        bytes.increment(size);
                    }
                    done.first()
                        .map(put_result)
                        .ok_or_else(|| StreamError::Backend("the append returned no result".into()))
                }
                Ok(AppendOutcome::Stale(_)) => {
                    self.shared.uncache_meta(&meta);
                    let (ticket, stream, record) = &items[i];
                    self.deliver_record(*ticket, stream, record.clone()).await
                }
                Err(e) => Err(e.into()),
            });
        }
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(StreamError::Backend("the append returned no result".into()))
                })
            })
            .collect()
    }

    /// Where the record of outbox ticket `ticket` landed, if it was delivered and the
    /// record engine still holds it (an engine failure is logged and answers `None`).
    pub async fn delivered(&self, ticket: i64) -> Option<PutResult> {
        match self.records.delivered(ticket).await {
            Ok(found) => found.as_ref().map(put_result),
            Err(e) => {
                tracing::warn!(ticket, error = %e, "cannot ask the record engine about a ticket");
                None
            }
        }
    }

    /// Outbox tickets not settled yet (after a crash: deliver them, then settle).
    pub async fn pending_tickets(&self) -> Result<Vec<i64>, StreamError> {
        self.db
            .read(|c| {
                c.query_vec(
                    "SELECT ticket FROM stream_outbox ORDER BY ticket",
                    params![],
                    |r| r.get(0),
                )
                .map_err(StreamError::from)
            })
            .await
    }
}

/// Stores `record` for `stream` in the outbox inside the caller's transaction and returns
/// its ticket. The stream must exist and the record be valid (checked here, so that
/// delivery can only fail for reasons outside the caller's control). Nothing is appended
/// until the caller, after its commit, calls [`EmbeddedStream::deliver`].
pub fn enqueue_in_tx(conn: &Tx<'_>, stream: &str, record: &PutRecord) -> Result<i64, StreamError> {
    let row = load_stream(conn, stream)?;
    crate::validate_record(record, row.max_record_bytes)?;
    let ticket = conn.insert_id(
        "INSERT INTO stream_outbox (stream, partition_key, explicit_hash_key, data, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            stream,
            record.partition_key,
            record.explicit_hash_key,
            record.data.as_ref(),
            now_ms()
        ],
        "ticket",
    )?;
    Ok(ticket)
}

/// Deletes a delivered outbox ticket inside the caller's transaction (the one that records
/// the delivery's result).
pub fn settle_in_tx(conn: &Tx<'_>, ticket: i64) -> Result<(), StreamError> {
    conn.execute(
        "DELETE FROM stream_outbox WHERE ticket = ?1",
        params![ticket],
    )?;
    Ok(())
}

/// The answer to an append of `n` records: the engine's results in order, with the errors
/// of the records refused before (at their indexes) in between.
fn merge(done: Vec<Appended>, refused: Vec<(usize, StreamError)>, n: usize) -> Results {
    let mut done = done.iter();
    let mut refused = refused.into_iter().peekable();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        match refused.next_if(|r| r.0 == i) {
            Some((_, e)) => out.push(Err(e)),
            None => out.push(done.next().map(put_result).ok_or_else(|| {
                StreamError::Backend("the record engine returned too few results".into())
            })),
        }
    }
    out
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
