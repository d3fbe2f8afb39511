//! Appending: callers hand records to the stream log's writer thread ([`super::log`]),
//! which batches every append waiting into one write and one fsync.
//!
//! The writer needs each stream's open shards; callers load them from SQLite (cached per
//! database) and send them with the records. A reshard, delete or record-size change runs
//! on the writer thread and marks the stream changed, so an append carrying metadata read
//! before the change is answered "stale" and resubmitted with fresh metadata: no record
//! ever lands in a closed shard.
//!
//! Appends that must commit together with other SQLite rows (an upload's record with its
//! object and status rows) go through the **outbox**: [`enqueue_in_tx`] stores the record
//! in `stream_outbox` inside the caller's transaction; once that is durable the caller
//! [`EmbeddedStream::deliver`]s it to the log, then deletes the outbox row with
//! [`settle_in_tx`] in its own transaction holding the result. The log remembers which
//! ticket each record delivered, so delivering again (after a crash between the two steps)
//! returns the first result instead of appending twice: exactly once.

use std::sync::Arc;

use sluice_meta::Tx;
use sluice_meta::now_ms;
use sluice_meta::params;
use tokio::sync::oneshot;

use super::EmbeddedStream;
use super::log::{Answer, AppendJob, MetaShard, Results, StreamMeta};
use super::schema::{load_stream, open_shards};
use super::throttle::Throttle;
use crate::{PutRecord, PutResult, StreamError};

/// How often an append is resubmitted after its stream's metadata changed under it.
const STALE_RETRIES: usize = 8;

impl EmbeddedStream {
    /// The append path's view of `stream`: cached, or read from SQLite.
    async fn meta(&self, stream: &str) -> Result<Arc<StreamMeta>, StreamError> {
        if let Some(m) = self.log.cached_meta(stream) {
            return Ok(m);
        }
        let epoch = self.log.epoch();
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
                })
            })
            .await?;
        let meta = Arc::new(meta);
        self.log.cache_meta(meta.clone());
        Ok(meta)
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
            let (reply, answer) = oneshot::channel();
            self.log.append(AppendJob {
                meta: meta.clone(),
                records,
                outbox,
                throttle: throttle.clone(),
                now: self.clock.now_ms(),
                reply,
            })?;
            let answer = answer
                .await
                .map_err(|_| StreamError::Backend("the stream log writer stopped".into()))??;
            match answer {
                Answer::Done(results) => {
                    if results.iter().any(|r| r.is_ok()) {
                        self.notify(stream);
                    }
                    return Ok(results);
                }
                Answer::Stale(back) => {
                    self.log.uncache_meta(&meta);
                    records = back;
                }
            }
        }
        Err(StreamError::Backend(format!(
            "stream {stream} kept changing while appending; try again"
        )))
    }

    /// Appends the record of outbox ticket `ticket` ([`enqueue_in_tx`]) once: if the log
    /// already holds it, returns the result it got then. Reads the record from the outbox
    /// (after a restart); [`EmbeddedStream::deliver_record`] when the caller has it.
    pub async fn deliver(&self, ticket: i64) -> Result<PutResult, StreamError> {
        if let Some(r) = self.log.delivered(ticket) {
            return Ok(r);
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
        // A ticket delivered before is answered by the writer with its first result.
        // Not throttled: the caller's transaction already committed the record.
        self.append_records(stream, vec![(record, None)], Some(ticket), None)
            .await?
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(StreamError::Backend("the append returned no result".into())))
    }

    /// Where the record of outbox ticket `ticket` landed, if it was delivered and its
    /// segment is still there.
    pub fn delivered(&self, ticket: i64) -> Option<PutResult> {
        self.log.delivered(ticket)
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
