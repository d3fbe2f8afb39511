//! Uploads over the embedded store and stream: one transaction per upload, group-committed
//! with every other write waiting at the same moment.
//!
//! The upload's stream record is committed in that transaction: the upload's row is its
//! outbox entry (the record is [`upload_record`] of the row's columns, delivered with the
//! ticket [`OWN_TICKETS_FROM`] + the row's number; a requeued upload's new record is a
//! `stream_outbox` entry, [`enqueue_in_tx`]). Once the transaction is durable the upload is
//! answered, and the record is delivered to the stream's record engine meanwhile; a second
//! transaction, shared with other deliveries, stores its sequence number and settles the
//! entry. An entry
//! whose delivery was cut short (a crash, an engine that was down, a deleted stream) is
//! delivered by [`EmbeddedUploads::deliver_pending`], at start and every few seconds while
//! serving ([`EmbeddedUploads::redeliver_every`]); the stream appends each entry exactly
//! once, whoever delivers it and however often.
//!
//! Why the answer does not wait for the delivery: the outbox entry *is* the stream record,
//! on disk, in the same commit as the object (DESIGN.md: one meta write per upload), so the
//! 200 promises nothing that a crash could take back. Waiting for the record engine's own
//! fsync as well put a second durable write, one after the other, on every upload's path.
//! What a reader sees: the upload's row and object at once; its record in the stream a few
//! milliseconds later (Kinesis, too, documents a delay before a put record is returned by
//! GetRecords); its `shardId` and `sequenceNumber` empty until then.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_meta::Tx;
use sluice_meta::params;
use sluice_meta::{Meta, Migration, now_ms};
use sluice_store::embedded::{EmbeddedStore, Prepared, complete_multipart_in_tx, put_in_tx};
use sluice_store::{ObjectInfo, PutOptions};
use sluice_stream::PutRecord;
use sluice_stream::embedded::{EmbeddedStream, OWN_TICKETS_FROM, enqueue_in_tx, settle_in_tx};

use crate::{
    ByteStream, CompletedMultipart, MultipartCompletion, NewUpload, Staged, StatusChange, Upload,
    UploadCursor, UploadError, UploadLedger, UploadMeta, UploadRecord, UploadSink, UploadStatus,
    iso8601_ms,
};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "uploads-0001",
        sql: "
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    user_sub TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    request_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    sequence_number TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    processed_bucket TEXT,
    processed_key TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    processed_ms INTEGER
);
CREATE INDEX uploads_user ON uploads (user_sub, created_ms);
",
    },
    // The stream outbox ticket of an upload whose record is not delivered yet (its
    // `shard_id` and `sequence_number` are empty until then).
    Migration {
        name: "uploads-0002",
        sql: "ALTER TABLE uploads ADD COLUMN outbox_ticket INTEGER;",
    },
    // A user's uploads by last change: the live view (`GET /uploads/events`) polls it.
    // Uploads by status and last change: the operators' view of failed uploads.
    Migration {
        name: "uploads-0003",
        sql: "CREATE INDEX uploads_user_updated ON uploads (user_sub, updated_ms);
CREATE INDEX uploads_status ON uploads (status, updated_ms);",
    },
    // Uploads whose record is not delivered yet, oldest ticket first: the periodic
    // delivery reads the oldest few without scanning the table.
    Migration {
        name: "uploads-0004",
        sql: "CREATE INDEX uploads_pending ON uploads (outbox_ticket) WHERE outbox_ticket IS NOT NULL;",
    },
    // Each row is its upload's own outbox entry (see `OwnTicket`): rebuilt with a row number
    // (`seq`, the `INTEGER PRIMARY KEY`: SQLite's rowid, an identity column on PostgreSQL;
    // never reused, as uploads rows are never deleted) and the record's partition key, so
    // that an upload's record is committed without an outbox row of its own. Existing rows
    // are numbered in the order they were created; the rebuild copies the table once, at
    // the first start of this version. Pending rows are found by row number.
    Migration {
        name: "uploads-0005",
        sql: "CREATE TABLE uploads_v5 (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    user_sub TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    request_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    sequence_number TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    processed_bucket TEXT,
    processed_key TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    processed_ms INTEGER,
    outbox_ticket INTEGER,
    partition_key TEXT NOT NULL DEFAULT ''
);
INSERT INTO uploads_v5 (id, user_sub, bucket, key, filename, size, sha256, content_type,
    request_id, stream, shard_id, sequence_number, status, attempts, error, processed_bucket,
    processed_key, created_ms, updated_ms, processed_ms, outbox_ticket)
SELECT id, user_sub, bucket, key, filename, size, sha256, content_type,
    request_id, stream, shard_id, sequence_number, status, attempts, error, processed_bucket,
    processed_key, created_ms, updated_ms, processed_ms, outbox_ticket
FROM uploads ORDER BY created_ms, id;
DROP TABLE uploads;
ALTER TABLE uploads_v5 RENAME TO uploads;
CREATE INDEX uploads_user ON uploads (user_sub, created_ms);
CREATE INDEX uploads_user_updated ON uploads (user_sub, updated_ms);
CREATE INDEX uploads_status ON uploads (status, updated_ms);
CREATE INDEX uploads_pending ON uploads (seq) WHERE outbox_ticket IS NOT NULL;",
    },
];

/// `outbox_ticket` of an upload whose record is pending in its own row: its ticket is
/// [`OWN_TICKETS_FROM`] + `seq`, and the record is rebuilt from the row
/// ([`upload_record`] of its columns: the same bytes as at the commit). Any other value
/// not NULL is a `stream_outbox` ticket (a requeued or redriven upload's new record);
/// NULL means delivered and settled.
const OWN_TICKET: i64 = 0;

/// The ticket an upload row's record is delivered with, if it is pending.
fn pending_ticket(outbox_ticket: Option<i64>, seq: i64) -> Option<i64> {
    match outbox_ticket {
        Some(OWN_TICKET) => Some(OWN_TICKETS_FROM + seq),
        other => other,
    }
}

/// How many uploads' records may be on their way to the stream after their answer. An
/// upload beyond it waits for a place before its commit: the record engine's pace, not
/// memory, bounds how far acknowledged uploads run ahead of their delivery.
pub const MAX_UNDELIVERED: usize = 1024;

/// How long an upload waits for a place among the undelivered before it is refused as
/// unavailable (503 with `Retry-After`).
const WAIT_FOR_PLACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How many pending entries one round of [`EmbeddedUploads::deliver_pending`] delivers at
/// once (concurrently, so that the record engine groups their appends), and settles in one
/// write.
const REDELIVERY_CHUNK: usize = 256;

/// How many uploads' records one delivery hands to the record engine at most.
const DELIVERY_BATCH: usize = 512;

#[derive(Clone)]
pub struct EmbeddedUploads {
    db: Meta,
    store: EmbeddedStore,
    stream: EmbeddedStream,
    settles: Arc<Settles>,
    deliveries: Arc<Deliveries>,
    /// Places for uploads whose record is on its way ([`MAX_UNDELIVERED`]).
    undelivered: Arc<tokio::sync::Semaphore>,
    failed_deliveries: Arc<FailureLog>,
}

/// Failed deliveries after the answer, logged as one line per [`FailureLog::EVERY_MS`] with
/// their count, not one per upload: while a record engine is down every upload fails its
/// delivery, thousands a second.
#[derive(Default)]
struct FailureLog {
    since_last: std::sync::atomic::AtomicU64,
    last_ms: std::sync::atomic::AtomicI64,
}

impl FailureLog {
    const EVERY_MS: i64 = 5_000;

    /// Counts one failure at `now_ms`; returns how many to report when a line is due.
    fn count(&self, now_ms: i64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        self.since_last.fetch_add(1, Relaxed);
        let last = self.last_ms.load(Relaxed);
        if now_ms.saturating_sub(last) < Self::EVERY_MS
            || self
                .last_ms
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_err()
        {
            return None;
        }
        Some(self.since_last.swap(0, Relaxed))
    }
}

/// Where delivered records landed, waiting to be written into their status rows (and their
/// outbox tickets settled): many at a time, in one write nobody waits for.
#[derive(Default)]
struct Settles {
    state: std::sync::Mutex<SettleState>,
}

#[derive(Default)]
struct SettleState {
    waiting: Vec<Settle>,
    /// A write is on its way: it takes whatever waits when it runs.
    in_flight: bool,
}

/// One delivered upload: its row number, the ticket it was delivered with, shard and
/// sequence number.
type Settle = (i64, i64, String, String);

/// Committed uploads whose records wait to be handed to the stream: many at a time, as
/// one [`EmbeddedStream::deliver_records`]. Uploads are committed in groups (one per
/// metadata write), and their records delivered one by one reached the stream log a few
/// at a time, each few with a write and an fsync of its own (1.7 records per fsync,
/// measured at 256 connections); delivered together, every record committed while one
/// delivery was on its way goes with the next.
#[derive(Default)]
struct Deliveries {
    state: std::sync::Mutex<DeliveryState>,
}

#[derive(Default)]
struct DeliveryState {
    waiting: Vec<Undelivered>,
    /// A delivery is on its way: it takes whatever waits when it is done.
    in_flight: bool,
}

/// A committed upload's record on its way, and its place among the undelivered (given
/// back once the delivery was tried).
struct Undelivered {
    upload: String,
    outbox: Outboxed,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl EmbeddedUploads {
    /// `store` and `stream` must live in the same database as `db`.
    pub fn new(db: Meta, store: EmbeddedStore, stream: EmbeddedStream) -> Self {
        EmbeddedUploads {
            db,
            store,
            stream,
            settles: Arc::default(),
            deliveries: Arc::default(),
            undelivered: Arc::new(tokio::sync::Semaphore::new(MAX_UNDELIVERED)),
            failed_deliveries: Arc::default(),
        }
    }

    /// Waits (at most `timeout`) until the records of every upload answered so far have
    /// been handed to their stream (delivered, or left in the outbox after a failure); for
    /// a clean stop.
    pub async fn flush_deliveries(&self, timeout: std::time::Duration) -> bool {
        let all = MAX_UNDELIVERED as u32;
        tokio::time::timeout(timeout, self.undelivered.acquire_many(all))
            .await
            .is_ok_and(|p| p.is_ok())
    }

    /// Queues a committed upload's record for delivery, and starts a delivery unless one
    /// is on its way (which takes it when it is done).
    fn deliver_later(&self, u: Undelivered) {
        let start = match self.deliveries.state.lock() {
            Ok(mut st) => {
                st.waiting.push(u);
                !std::mem::replace(&mut st.in_flight, true)
            }
            // Poisoned: nothing can be queued; the record stays pending in its row and the
            // next redelivery round delivers it.
            Err(_) => false,
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.run_deliveries().await });
        }
    }

    /// Delivers what waits, [`DELIVERY_BATCH`] records at a time, until nothing does.
    async fn run_deliveries(&self) {
        loop {
            let batch: Vec<Undelivered> = match self.deliveries.state.lock() {
                Ok(mut st) => {
                    if st.waiting.is_empty() {
                        st.in_flight = false;
                        return;
                    }
                    let n = st.waiting.len().min(DELIVERY_BATCH);
                    st.waiting.drain(..n).collect()
                }
                Err(_) => return,
            };
            let items = batch
                .iter()
                .map(|u| {
                    (
                        u.outbox.ticket,
                        u.outbox.stream.clone(),
                        u.outbox.record.clone(),
                    )
                })
                .collect();
            let results = self.stream.deliver_records(items).await;
            for (u, result) in batch.into_iter().zip(results) {
                match result {
                    Ok(put) => self.settle_later((
                        u.outbox.row,
                        u.outbox.ticket,
                        put.shard_id,
                        put.sequence_number,
                    )),
                    Err(e) => {
                        if let Some(n) = self.failed_deliveries.count(now_ms()) {
                            tracing::warn!(uploads = n, last = %u.upload, error = %e, "cannot deliver uploads' stream records now; they stay in the outbox and are delivered once the stream takes them again");
                        }
                    }
                }
                // `u` (its place among the undelivered) goes here.
            }
        }
    }

    /// Queues `s` for the next settling write, and starts one unless one is on its way.
    fn settle_later(&self, s: Settle) {
        let start = match self.settles.state.lock() {
            Ok(mut st) => {
                st.waiting.push(s);
                !std::mem::replace(&mut st.in_flight, true)
            }
            Err(_) => false,
        };
        if start {
            self.start_settling();
        }
    }

    /// One write that settles every upload waiting when it runs; when it is done, another
    /// starts if more arrived meanwhile. A failed write leaves its uploads unsettled in the
    /// database: reads ask the log meanwhile, and `deliver_pending` settles them (at the
    /// next start, or on its next round while serving).
    fn start_settling(&self) {
        let settles = self.settles.clone();
        let mut batch: Option<Vec<Settle>> = None;
        let this = self.clone();
        self.db.write_with(
            move |c| {
                // Taken once; a retried transaction settles the same uploads.
                let rows = batch.get_or_insert_with(|| {
                    settles
                        .state
                        .lock()
                        .map(|mut st| std::mem::take(&mut st.waiting))
                        .unwrap_or_default()
                });
                settle_all_in(c, rows)?;
                Ok::<_, UploadError>(rows.len())
            },
            move |r: Result<usize, UploadError>| {
                let wrote = match r {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not store uploads' sequence numbers; they are stored at the next start");
                        false
                    }
                };
                // Another write follows only a successful one. After a failure the uploads
                // still waiting go with the next `settle_later`: a writer that has stopped
                // fails each write at once, inside this very call, so starting another here
                // would recurse until the stack ran out.
                let again = match this.settles.state.lock() {
                    Ok(mut st) => {
                        st.in_flight = wrote && !st.waiting.is_empty();
                        st.in_flight
                    }
                    Err(_) => false,
                };
                if again {
                    this.start_settling();
                }
            },
        );
    }

    /// Delivers the records of uploads whose delivery was cut short (a crash, an engine that
    /// was down, a stream deleted meanwhile), and stores where they landed: at start, before
    /// serving, every entry (`older_than_ms` = `None`); while serving
    /// ([`Self::redeliver_every`]) those whose row last changed more than `older_than_ms`
    /// ago, so that the deliveries still on their way are left to their uploads. Returns how
    /// many were delivered. An entry that cannot be delivered is logged and stays pending;
    /// it does not keep the server from starting. Several processes may run this at once:
    /// the record engine appends each ticket once and answers a repeat with its first
    /// result.
    pub async fn deliver_pending(&self, older_than_ms: Option<i64>) -> Result<usize, UploadError> {
        let mut after = 0i64;
        let mut delivered = 0;
        loop {
            let from = after;
            let pending: Vec<Pending> = self
                .db
                .read(move |c| {
                    c.query_vec(
                        "SELECT seq, outbox_ticket, updated_ms, id, user_sub, bucket, key, size,
                             sha256, content_type, request_id, stream, created_ms, partition_key
                         FROM uploads
                         WHERE outbox_ticket IS NOT NULL AND seq > ?1
                         ORDER BY seq LIMIT ?2",
                        params![from, REDELIVERY_CHUNK as i64],
                        Pending::row,
                    )
                    .map_err(UploadError::from)
                })
                .await?;
            let Some(last) = pending.last() else {
                return Ok(delivered);
            };
            after = last.seq;
            let full = pending.len() == REDELIVERY_CHUNK;
            let cutoff = older_than_ms.map(|age| now_ms().saturating_sub(age));
            let mut round = tokio::task::JoinSet::new();
            for p in pending {
                if cutoff.is_some_and(|c| p.updated_ms > c) {
                    continue;
                }
                let stream = self.stream.clone();
                round.spawn(async move {
                    let ticket = pending_ticket(Some(p.outbox_ticket), p.seq).unwrap_or_default();
                    let put = match p.own_record() {
                        // The row is the outbox entry: its record is rebuilt from it.
                        Some(record) => match record {
                            Ok(record) => stream.deliver_record(ticket, &p.stream, record).await,
                            Err(e) => return Err((p.id, e)),
                        },
                        None => stream.deliver(ticket).await,
                    };
                    match put {
                        Ok(put) => Ok((p.seq, ticket, put.shard_id, put.sequence_number)),
                        Err(e) => Err((p.id, UploadError::from(e))),
                    }
                });
            }
            let mut settles = Vec::new();
            let (mut failed, mut first_failure) = (0usize, None);
            while let Some(done) = round.join_next().await {
                match done {
                    Ok(Ok(s)) => settles.push(s),
                    Ok(Err(f)) => {
                        failed += 1;
                        first_failure.get_or_insert(f);
                    }
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(error = %e, "a delivery task failed");
                    }
                }
            }
            // One line per round, not one per entry: a deleted stream's entries fail on
            // every round.
            if let Some((id, e)) = first_failure {
                tracing::warn!(uploads = failed, first = %id, error = %e, "cannot deliver the stream records of earlier uploads; they stay pending");
            }
            if !settles.is_empty() {
                delivered += settles.len();
                self.db.write(move |c| settle_all_in(c, &settles)).await?;
            }
            if !full {
                return Ok(delivered);
            }
        }
    }

    /// Runs [`Self::deliver_pending`] every `every` for the entries older than `every`,
    /// for as long as the runtime runs: an upload answered although its delivery failed is
    /// delivered once its stream engine is back, without waiting for a restart.
    pub fn redeliver_every(&self, every: std::time::Duration) {
        let this = self.clone();
        let age = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match this.deliver_pending(Some(age)).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        uploads = n,
                        "delivered the stream records of earlier uploads"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot deliver pending stream records now; trying again later")
                    }
                }
            }
        });
    }

    /// Puts an unfinished upload's record into its stream again (a new record, the same
    /// upload id), for an upload whose outcome was lost: the mapping that tracks its status
    /// checkpointed past its record without recording a result. Returns where the new
    /// record landed. An upload that is finished meanwhile is left alone (`None`).
    pub async fn requeue(&self, id: &str) -> Result<Option<(String, String)>, UploadError> {
        self.enqueue_again(id, "('queued', 'processing')").await
    }

    /// Redrive: puts a failed upload's record into its stream again (a new record, the same
    /// upload id), its status back to `queued` and its error cleared, so that the processor
    /// tries it once more. An upload that is not failed is left alone (`None`).
    pub async fn redrive(&self, id: &str) -> Result<Option<(String, String)>, UploadError> {
        self.enqueue_again(id, "('failed')").await
    }

    /// [`Self::requeue`] and [`Self::redrive`]: `statuses` is an SQL list of the statuses
    /// the upload may be in.
    async fn enqueue_again(
        &self,
        id: &str,
        statuses: &'static str,
    ) -> Result<Option<(String, String)>, UploadError> {
        let id_owned = id.to_owned();
        let outbox = self
            .db
            .write(move |c| {
                let Some((u, _, row)) = c.query_opt(
                    &format!(
                        "SELECT {UPLOAD_COLUMNS} FROM uploads
                         WHERE id = ?1 AND status IN {statuses}"
                    ),
                    params![&id_owned],
                    upload_row_numbered,
                )?
                else {
                    return Ok(None);
                };
                let partition_key = uuid::Uuid::new_v4().to_string();
                let e = Enqueue {
                    user_sub: &u.user_sub,
                    filename: &u.filename,
                    request_id: &u.request_id,
                    stream: &u.stream,
                    partition_key: &partition_key,
                };
                let record = upload_record(
                    &e,
                    &u.id,
                    &u.bucket,
                    &u.key,
                    u.size,
                    &u.sha256,
                    &u.content_type,
                    u.created_ms,
                )?;
                // A new record with a new ticket: the old ticket's record is in the log
                // already, and delivering it again would answer its first result.
                let ticket = enqueue_in_tx(c, &u.stream, &record)?;
                c.execute(
                    "UPDATE uploads SET status = 'queued', error = NULL, shard_id = '',
                         sequence_number = '', outbox_ticket = ?2, updated_ms = ?3,
                         partition_key = ?4
                     WHERE seq = ?1",
                    params![row, ticket, now_ms(), &partition_key],
                )?;
                Ok::<_, UploadError>(Some(Outboxed {
                    row,
                    ticket,
                    stream: u.stream.clone(),
                    record,
                }))
            })
            .await?;
        match outbox {
            Some(o) => Ok(Some(self.deliver(o).await?)),
            None => Ok(None),
        }
    }

    /// Finds acknowledged uploads created before `created_before_ms` that are unfinished
    /// although `passed(upload)` says the mapping tracking their status has checkpointed
    /// past their record, and requeues them ([`EmbeddedUploads::requeue`]). Returns how
    /// many were requeued.
    pub async fn requeue_lost<F, Fut>(
        &self,
        created_before_ms: i64,
        passed: F,
    ) -> Result<usize, UploadError>
    where
        F: Fn(Upload) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let (_, candidates) = unfinished(&self.db, created_before_ms, 1000).await?;
        let mut requeued = 0;
        for u in candidates {
            if u.sequence_number.is_empty() {
                continue;
            }
            let id = u.id.clone();
            if passed(u).await
                && let Some((shard, seq)) = self.requeue(&id).await?
            {
                tracing::warn!(upload = %id, shard = %shard, sequence_number = %seq,
                    "the outcome of an acknowledged upload was lost; its record was put into the stream again");
                requeued += 1;
            }
        }
        Ok(requeued)
    }

    /// Every user's uploads in `status`, most recently changed first (at most `limit`): what
    /// an operator looks at.
    pub async fn by_status(
        &self,
        status: UploadStatus,
        limit: usize,
    ) -> Result<Vec<Upload>, UploadError> {
        let limit = limit.min(1000) as i64;
        let rows = self
            .db
            .read(move |c| {
                c.query_vec(
                    &format!(
                        "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE status = ?1
                         ORDER BY updated_ms DESC, id LIMIT ?2"
                    ),
                    params![status.as_str(), limit],
                    upload_row,
                )
            })
            .await?;
        self.with_delivered(rows).await
    }

    /// How many uploads are in each status (counted on the `uploads_status` index).
    pub async fn status_counts(&self) -> Result<Vec<(String, u64)>, UploadError> {
        Ok(self
            .db
            .read(|c| {
                c.query_vec(
                    "SELECT status, COUNT(*) FROM uploads GROUP BY status ORDER BY status",
                    params![],
                    |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?.max(0) as u64)),
                )
            })
            .await?)
    }

    /// Rows as [`UploadLedger`] answers them: a record delivered but not settled into its
    /// row yet takes its shard and sequence number from the log.
    async fn with_delivered(
        &self,
        rows: Vec<(Upload, Option<i64>)>,
    ) -> Result<Vec<Upload>, UploadError> {
        let mut out = Vec::with_capacity(rows.len());
        for (mut upload, ticket) in rows {
            if let Some(t) = ticket
                && let Some(put) = self.stream.delivered(t).await
            {
                upload.shard_id = put.shard_id;
                upload.sequence_number = put.sequence_number;
            }
            out.push(upload);
        }
        Ok(out)
    }

    /// Delivers an upload's record and returns where it landed once that is durable. The
    /// status row learns it in a transaction nobody waits for: until that commits, or if
    /// it is lost in a crash, the record engine still knows the result
    /// ([`UploadLedger::get`] asks it) and [`EmbeddedUploads::deliver_pending`] stores it.
    async fn deliver(&self, outbox: Outboxed) -> Result<(String, String), UploadError> {
        let put = self
            .stream
            .deliver_record(outbox.ticket, &outbox.stream, outbox.record)
            .await?;
        self.settle_later((
            outbox.row,
            outbox.ticket,
            put.shard_id.clone(),
            put.sequence_number.clone(),
        ));
        Ok((put.shard_id, put.sequence_number))
    }
}

/// [`settle_in`] for each of `rows`; where statements are round trips
/// ([`Tx::is_remote`]), rows that are their own outbox entries are settled
/// [`SETTLE_MANY`] at a time, each group by one statement ([`settle_many_in`]).
fn settle_all_in(c: &Tx<'_>, rows: &[Settle]) -> Result<(), UploadError> {
    let one = |s: &Settle| settle_in(c, s.0, s.1, &s.2, &s.3);
    if !c.is_remote() {
        return rows.iter().try_for_each(one);
    }
    let (own, other): (Vec<&Settle>, Vec<&Settle>) =
        rows.iter().partition(|s| s.1 >= OWN_TICKETS_FROM);
    for chunk in own.chunks(SETTLE_MANY) {
        if chunk.len() >= SETTLE_MANY_FROM {
            settle_many_in(c, chunk)?;
        } else {
            chunk.iter().copied().try_for_each(one)?;
        }
    }
    other.into_iter().try_for_each(one)
}

/// Rows settled by one statement at most ([`settle_many_in`]).
const SETTLE_MANY: usize = 64;
/// Fewer rows than this are settled one statement each: a statement for many rows costs
/// two round trips ([`Tx::execute_once`]).
const SETTLE_MANY_FROM: usize = 3;

/// [`settle_in`] of uploads whose rows are their own outbox entries, by one statement:
/// each row is changed only while it still waits for its own record (`outbox_ticket` =
/// [`OWN_TICKET`]), as `settle_in` does. Run with [`Tx::execute_once`]: a plan cached for
/// one list of keys and reused for the next may scan the table (docs/BENCHMARKS.md,
/// session 27). A row listed twice takes its first settle, as two `settle_in`s in a row
/// would leave it.
fn settle_many_in(c: &Tx<'_>, rows: &[&Settle]) -> Result<(), UploadError> {
    use std::fmt::Write as _;
    // ?1: the own ticket; then per row: ?k its seq, ?k+1 its shard, ?k+2 its sequence number.
    let (mut shards, mut seqs, mut keys) = (String::new(), String::new(), String::new());
    for i in 0..rows.len() {
        let k = 2 + 3 * i;
        let _ = write!(shards, " WHEN ?{k} THEN ?{}", k + 1);
        let _ = write!(seqs, " WHEN ?{k} THEN ?{}", k + 2);
        let _ = write!(keys, "{}?{k}", if i == 0 { "" } else { ", " });
    }
    let sql = format!(
        "UPDATE uploads SET shard_id = CASE seq{shards} END,
             sequence_number = CASE seq{seqs} END, outbox_ticket = NULL
         WHERE outbox_ticket = ?1 AND seq IN ({keys})"
    );
    let mut params: Vec<&dyn sluice_meta::ToValue> = Vec::with_capacity(1 + 3 * rows.len());
    params.push(&OWN_TICKET);
    for (row, _, shard, seq) in rows.iter().copied() {
        params.push(row);
        params.push(shard);
        params.push(seq);
    }
    c.execute_once(&sql, &params)?;
    Ok(())
}

/// Stores where an upload's record landed and settles its ticket, inside the caller's
/// transaction. The row is changed only while it still waits for that very ticket: a
/// requeue committed meanwhile gave it a new record to wait for.
fn settle_in(c: &Tx<'_>, row: i64, ticket: i64, shard: &str, seq: &str) -> Result<(), UploadError> {
    let own = ticket >= OWN_TICKETS_FROM;
    let stored = if own { OWN_TICKET } else { ticket };
    c.execute(
        "UPDATE uploads SET shard_id = ?2, sequence_number = ?3, outbox_ticket = NULL
         WHERE seq = ?1 AND outbox_ticket = ?4",
        params![row, shard, seq, stored],
    )?;
    if !own {
        settle_in_tx(c, ticket)?;
    }
    Ok(())
}

/// A pending upload row as [`EmbeddedUploads::deliver_pending`] reads it: enough to
/// rebuild its record when the row is its own outbox entry.
struct Pending {
    seq: i64,
    outbox_ticket: i64,
    updated_ms: i64,
    id: String,
    user_sub: String,
    bucket: String,
    key: String,
    size: u64,
    sha256: String,
    content_type: String,
    request_id: String,
    stream: String,
    created_ms: i64,
    partition_key: String,
}

impl Pending {
    fn row(r: &sluice_meta::Row<'_>) -> Result<Self, sluice_meta::MetaError> {
        Ok(Pending {
            seq: r.get(0)?,
            outbox_ticket: r.get(1)?,
            updated_ms: r.get(2)?,
            id: r.get(3)?,
            user_sub: r.get(4)?,
            bucket: r.get(5)?,
            key: r.get(6)?,
            size: r.get::<i64>(7)?.max(0) as u64,
            sha256: r.get(8)?,
            content_type: r.get(9)?,
            request_id: r.get(10)?,
            stream: r.get(11)?,
            created_ms: r.get(12)?,
            partition_key: r.get(13)?,
        })
    }

    /// The record committed in this row, when the row is its own outbox entry (`None`:
    /// the record waits in `stream_outbox`).
    fn own_record(&self) -> Option<Result<PutRecord, UploadError>> {
        (self.outbox_ticket == OWN_TICKET).then(|| {
            let e = Enqueue {
                user_sub: &self.user_sub,
                filename: "",
                request_id: &self.request_id,
                stream: &self.stream,
                partition_key: &self.partition_key,
            };
            upload_record(
                &e,
                &self.id,
                &self.bucket,
                &self.key,
                self.size,
                &self.sha256,
                &self.content_type,
                self.created_ms,
            )
        })
    }
}

#[async_trait]
impl UploadSink for EmbeddedUploads {
    async fn commit(&self, u: NewUpload) -> Result<Upload, UploadError> {
        let (meta, body) = u.split();
        let prepared = self.store.prepare(body).await?;
        self.commit_prepared(meta, prepared).await
    }

    async fn stage(&self, body: ByteStream) -> Result<Staged, UploadError> {
        let prepared = self.store.prepare_stream(body).await?;
        let store = self.store.clone();
        Ok(Staged::new(prepared, move |p| {
            // Dropped uncommitted: its blob goes, in the background (or with the sweep, when
            // no runtime is left to run the deletion).
            let ids: Vec<String> = p.blob_name().into_iter().map(str::to_owned).collect();
            if !ids.is_empty()
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                rt.spawn(async move { store.discard_blobs(ids).await });
            }
        }))
    }

    async fn commit_staged(&self, u: UploadMeta, body: Staged) -> Result<Upload, UploadError> {
        self.commit_prepared(u, body.into_prepared()).await
    }

    async fn complete_multipart(
        &self,
        m: MultipartCompletion,
    ) -> Result<CompletedMultipart, UploadError> {
        // Assembled and fsynced outside the writer; the writer only commits rows.
        let assembled = self
            .store
            .assemble_multipart(&m.multipart_id, m.parts.clone())
            .await?;
        let blob = assembled.prepared().blob_name().map(str::to_owned);
        let id = crate::new_upload_id();
        let max_record_bytes = match self.stream.max_record_bytes(&m.stream).await {
            Ok(max) => max,
            Err(e) => {
                self.store.discard_blobs(blob.into_iter().collect()).await;
                return Err(e.into());
            }
        };
        self.commit_upload(blob, move |c| {
            let now = now_ms();
            let (info, garbage) = complete_multipart_in_tx(c, &assembled, Some(&m.user_sub), now)
                .map_err(conflict)?;
            let etag = info.etag.clone();
            let e = Enqueue {
                user_sub: &m.user_sub,
                filename: &m.filename,
                request_id: &m.request_id,
                stream: &m.stream,
                partition_key: &m.partition_key,
            };
            let record = object_record(&e, &id, &info, now)?;
            sluice_stream::validate_record(&record, max_record_bytes)?;
            let (upload, outbox) = enqueue_upload_in_tx(c, &e, id.clone(), info, now, record)?;
            Ok((CompletedMultipart { upload, etag }, garbage, outbox))
        })
        .await
    }
}

impl EmbeddedUploads {
    /// The one transaction: object row (referencing `prepared`'s blob file, if any),
    /// stream record, status row. On failure the blob file is deleted.
    async fn commit_prepared(
        &self,
        u: UploadMeta,
        prepared: Prepared,
    ) -> Result<Upload, UploadError> {
        let blob = prepared.blob_name().map(str::to_owned);
        let id = crate::new_upload_id();
        let now = now_ms();
        let record = upload_record(
            &Enqueue::of(&u),
            &id,
            &u.bucket,
            &u.key,
            prepared.size(),
            prepared.sha256(),
            &u.content_type,
            now,
        )?;
        // Checked before the transaction, against the stream's cached metadata: the
        // writer only inserts rows. (A stream deleted between this check and the delivery
        // leaves the upload pending, as a stream deleted after its commit always did.)
        let checked = match self.stream.max_record_bytes(&u.stream).await {
            Ok(max) => sluice_stream::validate_record(&record, max).map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            self.store.discard_blobs(blob.into_iter().collect()).await;
            return Err(e.into());
        }
        let opts = PutOptions {
            content_type: Some(u.content_type.clone()),
            owner: Some(u.user_sub.clone()),
            metadata: u.metadata.clone(),
            if_absent: false,
            content_md5: None,
            created_event: None,
            tags: u.tags.clone(),
            headers: u.headers.clone(),
            if_match: None,
            body_check: None,
            started_ms: None,
        };
        self.commit_upload(blob, move |c| {
            let (info, replaced) =
                put_in_tx(c, &u.bucket, &u.key, &prepared, &opts, now).map_err(conflict)?;
            let (upload, outbox) =
                enqueue_upload_in_tx(c, &Enqueue::of(&u), id.clone(), info, now, record.clone())?;
            Ok((upload, replaced.into_iter().collect(), outbox))
        })
        .await
    }

    /// Runs `job`, one upload's transaction, which returns its result and the blob files it
    /// made garbage. Committed: the upload's record is delivered in the background (see the
    /// module docs) and the garbage is deleted. Failed: nothing was committed, so `blob` (the new object's file, if any) is
    /// referenced by no row and is deleted now rather than at the next start.
    async fn commit_upload<T: HasUpload + Send + 'static>(
        &self,
        blob: Option<String>,
        job: impl FnMut(&Tx<'_>) -> Result<(T, Vec<String>, Outboxed), UploadError> + Send + 'static,
    ) -> Result<T, UploadError> {
        // A place among the undelivered first: a full queue holds the upload back before
        // anything is committed.
        let place = match tokio::time::timeout(
            WAIT_FOR_PLACE,
            self.undelivered.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(place)) => place,
            Ok(Err(_)) => return Err(UploadError::Backend("uploads are shutting down".into())),
            // The record engine is down or far behind: refused, nothing stored.
            Err(_) => {
                return Err(UploadError::Stream(
                    sluice_stream::StreamError::Unavailable(format!(
                        "{MAX_UNDELIVERED} uploads' records are waiting for the stream; try again later"
                    )),
                ));
            }
        };
        match self.db.write(job).await {
            Ok((mut done, garbage, outbox)) => {
                self.deliver_later(Undelivered {
                    upload: done.upload_mut().id.clone(),
                    outbox,
                    _place: place,
                });
                self.store.discard_blobs(garbage).await;
                Ok(done)
            }
            Err(e) => {
                self.store.discard_blobs(blob.into_iter().collect()).await;
                Err(e)
            }
        }
    }
}

/// An upload's stream record, committed (in its row or in the stream's outbox) and not
/// delivered yet.
struct Outboxed {
    /// The upload's row number (`seq`).
    row: i64,
    ticket: i64,
    stream: String,
    record: PutRecord,
}

/// A transaction's result holding the upload it committed (its record not delivered yet).
trait HasUpload {
    fn upload_mut(&mut self) -> &mut Upload;
}

impl HasUpload for Upload {
    fn upload_mut(&mut self) -> &mut Upload {
        self
    }
}

impl HasUpload for CompletedMultipart {
    fn upload_mut(&mut self) -> &mut Upload {
        &mut self.upload
    }
}

/// What an upload's record and status row carry besides its object's info.
struct Enqueue<'a> {
    user_sub: &'a str,
    filename: &'a str,
    request_id: &'a str,
    stream: &'a str,
    partition_key: &'a str,
}

impl<'a> Enqueue<'a> {
    fn of(u: &'a UploadMeta) -> Self {
        Enqueue {
            user_sub: &u.user_sub,
            filename: &u.filename,
            request_id: &u.request_id,
            stream: &u.stream,
            partition_key: &u.partition_key,
        }
    }
}

/// An object written by another part as its own upload's object.
fn conflict(e: sluice_store::StoreError) -> UploadError {
    match e {
        sluice_store::StoreError::OwnedByOther { bucket, key } => {
            UploadError::Conflict { bucket, key }
        }
        other => UploadError::Store(other),
    }
}

/// The stream record of an upload (built before its transaction when the object's
/// metadata is known then: the transaction then runs no JSON encoding).
#[allow(clippy::too_many_arguments)]
fn upload_record(
    e: &Enqueue<'_>,
    id: &str,
    bucket: &str,
    key: &str,
    size: u64,
    sha256: &str,
    content_type: &str,
    now: i64,
) -> Result<PutRecord, UploadError> {
    let record = UploadRecord {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        uploaded_at: iso8601_ms(now),
        request_id: e.request_id.to_owned(),
        user_sub: e.user_sub.to_owned(),
        upload_id: id.to_owned(),
        size,
        sha256: sha256.to_owned(),
        content_type: content_type.to_owned(),
    };
    let data = serde_json::to_vec(&record)
        .map_err(|e| UploadError::Backend(format!("cannot encode record: {e}")))?;
    Ok(PutRecord {
        partition_key: e.partition_key.to_owned(),
        explicit_hash_key: None,
        data: data.into(),
    })
}

/// [`upload_record`] of an object already written in the upload's transaction.
fn object_record(
    e: &Enqueue<'_>,
    id: &str,
    info: &ObjectInfo,
    now: i64,
) -> Result<PutRecord, UploadError> {
    upload_record(
        e,
        id,
        &info.bucket,
        &info.key,
        info.size,
        &info.sha256,
        &info.content_type,
        now,
    )
}

/// Inserts the status row of an upload whose object `info` was written in the same
/// transaction; the row is the upload's outbox entry (its record, already checked with
/// [`sluice_stream::validate_record`], is `record`: what [`upload_record`] makes of the
/// row's columns). Returns the upload (its shard and sequence number empty until
/// delivered) and the record to deliver.
fn enqueue_upload_in_tx(
    c: &Tx<'_>,
    e: &Enqueue<'_>,
    id: String,
    info: ObjectInfo,
    now: i64,
    record: PutRecord,
) -> Result<(Upload, Outboxed), UploadError> {
    let row = c.insert_id(
        "INSERT INTO uploads (id, user_sub, bucket, key, filename, size, sha256,
             content_type, request_id, stream, shard_id, sequence_number, status,
             created_ms, updated_ms, outbox_ticket, partition_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, '', '', 'queued', ?11, ?11, ?12, ?13)",
        params![
            id,
            e.user_sub,
            info.bucket,
            info.key,
            e.filename,
            info.size as i64,
            info.sha256,
            info.content_type,
            e.request_id,
            e.stream,
            now,
            OWN_TICKET,
            e.partition_key
        ],
        "seq",
    )?;
    let upload = Upload {
        id,
        user_sub: e.user_sub.to_owned(),
        bucket: info.bucket,
        key: info.key,
        filename: e.filename.to_owned(),
        size: info.size,
        sha256: info.sha256,
        content_type: info.content_type,
        request_id: e.request_id.to_owned(),
        stream: e.stream.to_owned(),
        shard_id: String::new(),
        sequence_number: String::new(),
        status: UploadStatus::Queued,
        attempts: 0,
        error: None,
        processed_bucket: None,
        processed_key: None,
        created_ms: now,
        updated_ms: now,
        processed_ms: None,
    };
    let outbox = Outboxed {
        row,
        ticket: OWN_TICKETS_FROM + row,
        stream: e.stream.to_owned(),
        record,
    };
    Ok((upload, outbox))
}

/// The columns [`upload_row`] reads, in its order.
const UPLOAD_COLUMNS: &str = "id, user_sub, bucket, key, filename, size, sha256, content_type,
    request_id, stream, shard_id, sequence_number, status, attempts, error, processed_bucket,
    processed_key, created_ms, updated_ms, processed_ms, outbox_ticket, seq";

/// An upload row of [`UPLOAD_COLUMNS`] and the ticket of its undelivered record.
fn upload_row(r: &sluice_meta::Row<'_>) -> Result<(Upload, Option<i64>), sluice_meta::MetaError> {
    upload_row_numbered(r).map(|(u, ticket, _)| (u, ticket))
}

/// [`upload_row`] and the row's number.
fn upload_row_numbered(
    r: &sluice_meta::Row<'_>,
) -> Result<(Upload, Option<i64>, i64), sluice_meta::MetaError> {
    let upload = Upload {
        id: r.get(0)?,
        user_sub: r.get(1)?,
        bucket: r.get(2)?,
        key: r.get(3)?,
        filename: r.get(4)?,
        size: r.get::<i64>(5)? as u64,
        sha256: r.get(6)?,
        content_type: r.get(7)?,
        request_id: r.get(8)?,
        stream: r.get(9)?,
        shard_id: r.get(10)?,
        sequence_number: r.get(11)?,
        status: UploadStatus::parse(&r.get::<String>(12)?),
        attempts: r.get::<i64>(13)? as u32,
        error: r.get(14)?,
        processed_bucket: r.get(15)?,
        processed_key: r.get(16)?,
        created_ms: r.get(17)?,
        updated_ms: r.get(18)?,
        processed_ms: r.get(19)?,
    };
    let seq = r.get::<i64>(21)?;
    Ok((upload, pending_ticket(r.get::<Option<i64>>(20)?, seq), seq))
}

/// Acknowledged uploads that are not finished (queued or processing) and were created
/// before `created_before_ms`: how many there are, and the oldest `limit` of them. For
/// `sluice doctor`.
pub async fn unfinished(
    db: &Meta,
    created_before_ms: i64,
    limit: usize,
) -> Result<(u64, Vec<Upload>), UploadError> {
    db.read(move |c| {
        let n: i64 = c.query_row(
            "SELECT COUNT(*) FROM uploads
             WHERE status IN ('queued', 'processing') AND created_ms < ?1",
            params![created_before_ms],
            |r| r.get(0),
        )?;
        let rows = c.query_vec(
            &format!(
                "SELECT {UPLOAD_COLUMNS} FROM uploads
                 WHERE status IN ('queued', 'processing') AND created_ms < ?1
                 ORDER BY created_ms, id LIMIT ?2"
            ),
            params![created_before_ms, limit as i64],
            upload_row,
        )?;
        Ok((n.max(0) as u64, rows.into_iter().map(|(u, _)| u).collect()))
    })
    .await
}

/// Whether the mapping that tracks `u`'s status has checkpointed past its record: the
/// oldest mapping registered on its stream (the tracking one unless disabled since) and
/// whether its checkpoint for the record's shard is at or past the record. `None` when no
/// mapping has run on the stream (or the record is not delivered yet).
pub async fn tracking_checkpoint(
    checkpoints: &sluice_processor::embedded::EmbeddedCheckpoints,
    u: &Upload,
) -> Result<Option<(String, bool)>, UploadError> {
    use sluice_processor::Checkpoints as _;
    if u.sequence_number.is_empty() {
        return Ok(None);
    }
    let backend = |e: sluice_processor::ProcessorError| UploadError::Backend(e.to_string());
    let Some(mapping) = checkpoints
        .registered(&u.stream)
        .await
        .map_err(backend)?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let at = checkpoints
        .load(&mapping, &u.shard_id)
        .await
        .map_err(backend)?;
    let passed = at
        .and_then(|c| {
            Some(
                sluice_stream::parse_sequence_number(&c)?
                    >= sluice_stream::parse_sequence_number(&u.sequence_number)?,
            )
        })
        .unwrap_or(false);
    Ok(Some((mapping, passed)))
}

#[async_trait]
impl UploadLedger for EmbeddedUploads {
    async fn bytes_since(&self, user_sub: &str, since_ms: i64) -> Result<u64, UploadError> {
        let sub = user_sub.to_owned();
        let n: i64 = self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM uploads
                     WHERE user_sub = ?1 AND created_ms >= ?2",
                    params![sub, since_ms],
                    |r| r.get(0),
                )
            })
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn list(
        &self,
        user_sub: &str,
        after: Option<&UploadCursor>,
        limit: usize,
    ) -> Result<Vec<Upload>, UploadError> {
        let sub = user_sub.to_owned();
        let after = after.cloned();
        let limit = limit.min(1000) as i64;
        let rows = self
            .db
            .read(move |c| match &after {
                None => c.query_vec(
                    &format!(
                        "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE user_sub = ?1
                         ORDER BY created_ms DESC, id DESC LIMIT ?2"
                    ),
                    params![sub, limit],
                    upload_row,
                ),
                Some(a) => c.query_vec(
                    &format!(
                        "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE user_sub = ?1
                           AND (created_ms < ?2 OR (created_ms = ?2 AND id < ?3))
                         ORDER BY created_ms DESC, id DESC LIMIT ?4"
                    ),
                    params![sub, a.created_ms, a.id, limit],
                    upload_row,
                ),
            })
            .await?;
        self.with_delivered(rows).await
    }

    async fn changed_since(
        &self,
        user_sub: &str,
        since_ms: i64,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Upload>, UploadError> {
        let sub = user_sub.to_owned();
        let after_id = after_id.map(str::to_owned);
        let limit = limit.min(1000) as i64;
        let rows = self
            .db
            .read(move |c| match &after_id {
                None => c.query_vec(
                    &format!(
                        "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE user_sub = ?1
                           AND updated_ms >= ?2
                         ORDER BY updated_ms, id LIMIT ?3"
                    ),
                    params![sub, since_ms, limit],
                    upload_row,
                ),
                Some(after) => c.query_vec(
                    &format!(
                        "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE user_sub = ?1
                           AND (updated_ms > ?2 OR (updated_ms = ?2 AND id > ?3))
                         ORDER BY updated_ms, id LIMIT ?4"
                    ),
                    params![sub, since_ms, after, limit],
                    upload_row,
                ),
            })
            .await?;
        self.with_delivered(rows).await
    }

    async fn get(&self, id: &str) -> Result<Upload, UploadError> {
        let id = id.to_owned();
        let (mut upload, ticket) = self
            .db
            .read(move |c| {
                c.query_opt(
                    &format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?1"),
                    params![&id],
                    upload_row,
                )?
                .ok_or(UploadError::NotFound(id.clone()))
            })
            .await?;
        // Delivered, but the row not updated yet: the log knows where the record is.
        if let Some(t) = ticket
            && let Some(put) = self.stream.delivered(t).await
        {
            upload.shard_id = put.shard_id;
            upload.sequence_number = put.sequence_number;
        }
        Ok(upload)
    }

    async fn mark_processing(&self, id: &str) -> Result<(), UploadError> {
        self.apply(vec![StatusChange::Processing { id: id.to_owned() }])
            .await
    }

    async fn mark_processed(&self, id: &str, bucket: &str, key: &str) -> Result<(), UploadError> {
        self.apply(vec![StatusChange::Processed {
            id: id.to_owned(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            new_attempt: false,
        }])
        .await
    }

    async fn mark_failed(&self, id: &str, error: &str) -> Result<(), UploadError> {
        self.apply(vec![StatusChange::Failed {
            id: id.to_owned(),
            error: error.to_owned(),
            new_attempt: false,
        }])
        .await
    }

    async fn apply(&self, changes: Vec<StatusChange>) -> Result<(), UploadError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.db
            .write(move |c| Ok::<_, UploadError>(apply_in_tx(c, &changes)?))
            .await
    }

    fn db(&self) -> Option<&Meta> {
        Some(&self.db)
    }
}

/// Writes status changes inside the caller's transaction (of the database the `uploads`
/// table is in), in order.
pub fn apply_in_tx(c: &Tx<'_>, changes: &[StatusChange]) -> Result<(), sluice_meta::MetaError> {
    let now = now_ms();
    for change in changes {
        match change {
            StatusChange::Processing { id } => {
                c.execute(
                    "UPDATE uploads SET status = 'processing', attempts = attempts + 1,
                         updated_ms = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
            }
            StatusChange::Processed {
                id,
                bucket,
                key,
                new_attempt,
            } => {
                c.execute(
                    "UPDATE uploads SET status = 'processed', error = NULL, processed_bucket = ?2,
                         processed_key = ?3, processed_ms = ?4, updated_ms = ?4,
                         attempts = attempts + ?5 WHERE id = ?1",
                    params![id, bucket, key, now, i64::from(*new_attempt)],
                )?;
            }
            StatusChange::Failed {
                id,
                error,
                new_attempt,
            } => {
                c.execute(
                    "UPDATE uploads SET status = 'failed', error = ?2, updated_ms = ?3,
                         attempts = attempts + ?4 WHERE id = ?1",
                    params![id, error, now, i64::from(*new_attempt)],
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sluice_stream::{IteratorSpec, Stream};

    use super::*;

    fn open(
        engines: &sluice_meta::conformance::TestEngines,
    ) -> (EmbeddedStore, EmbeddedStream, EmbeddedUploads) {
        let dir = engines.dir();
        let migrations: Vec<Migration> = [
            sluice_store::embedded::MIGRATIONS,
            sluice_stream::embedded::MIGRATIONS,
            MIGRATIONS,
        ]
        .iter()
        .flat_map(|part| part.iter())
        .copied()
        .collect();
        let db = engines.meta("uploads", &migrations);
        let store = EmbeddedStore::new(
            db.clone(),
            sluice_blobs::conformance::test_blobs(&dir.join("blobs")),
        );
        let stream = EmbeddedStream::open(db.clone(), &dir.join("log")).expect("stream");
        let uploads = EmbeddedUploads::new(db, store.clone(), stream.clone());
        (store, stream, uploads)
    }

    /// [`open`], with the stream `u` and the bucket `bkt`.
    async fn ready(
        engines: &sluice_meta::conformance::TestEngines,
    ) -> (EmbeddedStore, EmbeddedStream, EmbeddedUploads) {
        let (store, stream, uploads) = open(engines);
        stream.create_stream("u", 1).await.expect("create");
        sluice_store::ObjectStore::ensure_bucket(&store, "bkt")
            .await
            .expect("bucket");
        (store, stream, uploads)
    }

    fn meta(name: &str) -> UploadMeta {
        UploadMeta {
            user_sub: "user".into(),
            bucket: "bkt".into(),
            key: format!("uploads/{name}"),
            filename: name.into(),
            content_type: "text/plain".into(),
            metadata: Default::default(),
            tags: Vec::new(),
            headers: Default::default(),
            request_id: format!("req-{name}"),
            stream: "u".into(),
            partition_key: name.into(),
        }
    }

    /// Runs an upload's first transaction only, as if the process died right after it.
    async fn commit_without_delivery(
        u: &EmbeddedUploads,
        store: &EmbeddedStore,
        name: &str,
    ) -> (String, Outboxed) {
        let m = meta(name);
        let prepared = store
            .prepare(bytes::Bytes::from("body"))
            .await
            .expect("prepare");
        let id = crate::new_upload_id();
        u.db.write(move |c| {
            let opts = PutOptions {
                content_type: Some(m.content_type.clone()),
                owner: Some(m.user_sub.clone()),
                metadata: m.metadata.clone(),
                if_absent: false,
                content_md5: None,
                created_event: None,
                tags: Vec::new(),
                headers: Default::default(),
                if_match: None,
                body_check: None,
                started_ms: None,
            };
            let now = now_ms();
            let (info, _) =
                put_in_tx(c, &m.bucket, &m.key, &prepared, &opts, now).map_err(conflict)?;
            let record = object_record(&Enqueue::of(&m), &id, &info, now)?;
            let (upload, outbox) =
                enqueue_upload_in_tx(c, &Enqueue::of(&m), id.clone(), info, now, record)?;
            Ok::<_, UploadError>((upload.id, outbox))
        })
        .await
        .expect("first transaction")
    }

    async fn records(stream: &EmbeddedStream) -> Vec<sluice_stream::Record> {
        let it = stream
            .get_shard_iterator("u", &sluice_stream::shard_id(0), IteratorSpec::TrimHorizon)
            .await
            .expect("iterator");
        stream.get_records(&it, 10_000).await.expect("read").records
    }

    #[tokio::test]
    async fn uploads_cut_off_before_or_after_delivery_get_exactly_one_record() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let (store, stream, uploads) = ready(&engines).await;
        // A: committed, never delivered. B: delivered, but its row never learned it.
        let (a, a_outbox) = commit_without_delivery(&uploads, &store, "a").await;
        let (b, outbox) = commit_without_delivery(&uploads, &store, "b").await;
        assert!(a_outbox.ticket >= OWN_TICKETS_FROM && outbox.ticket > a_outbox.ticket);
        let b_put = stream
            .deliver_record(outbox.ticket, &outbox.stream, outbox.record)
            .await
            .expect("deliver b");
        assert_eq!(records(&stream).await.len(), 1, "only b's record so far");
        // Meanwhile the row of b answers with what the log knows.
        assert_eq!(
            uploads.get(&b).await.expect("get b").sequence_number,
            b_put.sequence_number
        );
        assert_eq!(uploads.get(&a).await.expect("get a").sequence_number, "");
        stream.db().close();
        drop((store, stream, uploads));

        // The restart: pending uploads are delivered, each once.
        let (_store, stream, uploads) = open(&engines);
        assert_eq!(
            uploads
                .deliver_pending(None)
                .await
                .expect("deliver pending"),
            2
        );
        assert_eq!(
            uploads.deliver_pending(None).await.expect("nothing left"),
            0
        );
        let got = records(&stream).await;
        assert_eq!(got.len(), 2, "one record per upload");
        let ua = uploads.get(&a).await.expect("get a");
        let ub = uploads.get(&b).await.expect("get b");
        assert_eq!(
            ub.sequence_number, b_put.sequence_number,
            "b keeps its first delivery"
        );
        assert_eq!(got[0].sequence_number, ub.sequence_number);
        assert_eq!(got[1].sequence_number, ua.sequence_number);
        assert_eq!(
            got[1].data, a_outbox.record.data,
            "the record rebuilt from a's row is the one committed"
        );
        assert_eq!(got[1].partition_key, a_outbox.record.partition_key);
        let rec: UploadRecord = serde_json::from_slice(&got[1].data).expect("json");
        assert_eq!(
            (rec.upload_id.as_str(), rec.key.as_str()),
            (a.as_str(), "uploads/a")
        );
        assert!(stream.pending_tickets().await.expect("tickets").is_empty());

        // An upload committed for a stream that is deleted before its delivery: the start
        // goes on, the upload stays pending.
        let (c, _) = commit_without_delivery(&uploads, &_store, "c").await;
        stream.delete_stream("u").await.expect("delete");
        assert_eq!(
            uploads.deliver_pending(None).await.expect("start goes on"),
            0
        );
        assert_eq!(uploads.get(&c).await.expect("get c").sequence_number, "");
        stream.db().close();
    }

    /// An upload is answered once its commit is durable and its record follows: the answer
    /// has no position yet, the stream gets the record once, and the row learns where.
    /// Entries whose delivery never ran are left to their uploads while young, and the
    /// periodic pass delivers them (more than one chunk of them) once old, each once.
    #[tokio::test]
    async fn answered_uploads_are_delivered_after_the_answer_or_by_the_periodic_pass() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let (store, stream, uploads) = ready(&engines).await;
        let answered = uploads
            .commit(meta("now").with_body(bytes::Bytes::from("x")))
            .await
            .expect("commit");
        assert!(
            uploads
                .flush_deliveries(std::time::Duration::from_secs(10))
                .await
        );
        // Released: the places are all free again.
        assert_eq!(uploads.undelivered.available_permits(), MAX_UNDELIVERED);
        let got = records(&stream).await;
        assert_eq!(got.len(), 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let row = uploads.get(&answered.id).await.expect("get");
            assert_eq!(
                row.sequence_number, got[0].sequence_number,
                "from the log or the row"
            );
            let settled = uploads
                .db
                .read({
                    let id = answered.id.clone();
                    move |c| {
                        c.query_opt(
                            "SELECT 1 FROM uploads WHERE id = ?1 AND outbox_ticket IS NULL",
                            params![id],
                            |_| Ok(()),
                        )
                    }
                })
                .await
                .expect("read");
            if settled.is_some() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never settled");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }

        let n = REDELIVERY_CHUNK + 20;
        for i in 0..n {
            commit_without_delivery(&uploads, &store, &format!("late-{i}")).await;
        }
        assert_eq!(
            uploads.deliver_pending(Some(60_000)).await.expect("young"),
            0,
            "young entries are left to their uploads"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(uploads.deliver_pending(Some(1)).await.expect("old"), n);
        assert_eq!(uploads.deliver_pending(Some(1)).await.expect("again"), 0);
        assert_eq!(records(&stream).await.len(), n + 1, "each record once");
        assert!(stream.pending_tickets().await.expect("tickets").is_empty());
        stream.db().close();
    }

    /// Uploads committed together are delivered together: every record once, in far
    /// fewer stream log writes than uploads, and every row learns where its record landed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_uploads_are_delivered_in_batches_each_once() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let (_store, stream, uploads) = ready(&engines).await;
        let before = stream.log_stats();
        let n = 400;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let uploads = uploads.clone();
            tasks.spawn(async move {
                uploads
                    .commit(meta(&format!("c-{i}")).with_body(bytes::Bytes::from("x")))
                    .await
                    .expect("commit")
                    .id
            });
        }
        let mut ids = Vec::new();
        while let Some(id) = tasks.join_next().await {
            ids.push(id.expect("task"));
        }
        assert!(
            uploads
                .flush_deliveries(std::time::Duration::from_secs(30))
                .await
        );
        let got = records(&stream).await;
        let mut delivered: Vec<String> = got
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.data).expect("json");
                v["uploadId"].as_str().expect("uploadId").to_owned()
            })
            .collect();
        delivered.sort();
        ids.sort();
        assert_eq!(delivered, ids, "each upload's record, once");
        let batches = stream.log_stats().batches - before.batches;
        assert!(
            batches <= (n / 4) as u64,
            "{n} records in {batches} stream log writes"
        );
        // Every row settles (its shard and sequence number stored, its ticket cleared).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let pending: i64 = uploads
                .db
                .read(|c| {
                    c.query_row(
                        "SELECT COUNT(*) FROM uploads WHERE outbox_ticket IS NOT NULL",
                        params![],
                        |r| r.get(0),
                    )
                })
                .await
                .expect("count");
            if pending == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{pending} never settled"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for r in got.iter().take(20) {
            let v: serde_json::Value = serde_json::from_slice(&r.data).expect("json");
            let row = uploads
                .get(v["uploadId"].as_str().expect("uploadId"))
                .await
                .expect("get");
            assert_eq!(row.sequence_number, r.sequence_number);
        }
        stream.db().close();
    }

    /// A requeued upload waits for its new record: the settling of its first delivery,
    /// arriving after the requeue, leaves the row alone; the new record is a
    /// `stream_outbox` entry and settles both.
    #[tokio::test]
    async fn a_late_settle_does_not_undo_a_requeue() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let (store, stream, uploads) = ready(&engines).await;
        let (id, first) = commit_without_delivery(&uploads, &store, "r").await;
        let row = first.row;
        let put = stream
            .deliver_record(first.ticket, &first.stream, first.record)
            .await
            .expect("first delivery");
        let (_, seq) = uploads
            .requeue(&id)
            .await
            .expect("requeue")
            .expect("queued");
        assert_ne!(seq, put.sequence_number, "a new record");
        let first_seq = put.sequence_number.clone();
        let stale = (row, first.ticket, put.shard_id, put.sequence_number);
        uploads
            .db
            .write(move |c| settle_all_in(c, std::slice::from_ref(&stale)))
            .await
            .expect("late settle");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (seq_now, pending): (String, Option<i64>) = uploads
                .db
                .read({
                    let id = id.clone();
                    move |c| {
                        c.query_row(
                            "SELECT sequence_number, outbox_ticket FROM uploads WHERE id = ?1",
                            params![id],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                    }
                })
                .await
                .expect("row");
            assert_ne!(seq_now, first_seq, "the late settle changed nothing");
            if pending.is_none() {
                assert_eq!(seq_now, seq, "the row holds the new record's number");
                break;
            }
            assert!(
                pending.is_some_and(|t| t > 0),
                "still waits for the new record"
            );
            assert!(std::time::Instant::now() < deadline, "never settled");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(stream.pending_tickets().await.expect("tickets").is_empty());
        assert_eq!(records(&stream).await.len(), 2);
        stream.db().close();
    }

    /// One statement settling many rows (as on PostgreSQL) changes exactly what a
    /// `settle_in` per row would: rows waiting for their own record take their shard and
    /// number, a row listed twice its first, a requeued row and an unlisted one nothing.
    #[tokio::test]
    async fn many_settles_in_one_statement_change_exactly_the_rows_waiting_for_them() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let (store, stream, uploads) = ready(&engines).await;
        let mut rows = Vec::new();
        for i in 0..5 {
            let (_, outbox) = commit_without_delivery(&uploads, &store, &format!("m{i}")).await;
            rows.push((outbox.row, outbox.ticket));
        }
        // The last row was requeued meanwhile: it waits for another ticket.
        let requeued = rows[4].0;
        uploads
            .db
            .write(move |c| {
                c.execute(
                    "UPDATE uploads SET outbox_ticket = 7 WHERE seq = ?1",
                    params![requeued],
                )
            })
            .await
            .expect("requeue");
        let settle = |i: usize, tag: &str| -> Settle {
            (
                rows[i].0,
                rows[i].1,
                format!("shard-{tag}"),
                format!("seq-{tag}"),
            )
        };
        let batch = [
            settle(0, "0"),
            settle(1, "1"),
            settle(0, "0-again"),
            settle(2, "2"),
            settle(4, "4"),
        ];
        uploads
            .db
            .write(move |c| settle_many_in(c, &batch.iter().collect::<Vec<_>>()))
            .await
            .expect("settle");
        let got: Vec<(i64, String, String, Option<i64>)> = uploads
            .db
            .read(|c| {
                c.query_vec(
                    "SELECT seq, shard_id, sequence_number, outbox_ticket FROM uploads ORDER BY seq",
                    params![],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
            })
            .await
            .expect("rows");
        let want: Vec<(i64, String, String, Option<i64>)> = vec![
            (rows[0].0, "shard-0".into(), "seq-0".into(), None),
            (rows[1].0, "shard-1".into(), "seq-1".into(), None),
            (rows[2].0, "shard-2".into(), "seq-2".into(), None),
            (rows[3].0, String::new(), String::new(), Some(OWN_TICKET)),
            (rows[4].0, String::new(), String::new(), Some(7)),
        ];
        assert_eq!(got, want);
        stream.db().close();
    }

    /// A database written before uploads were their own outbox entries: the upgrade
    /// numbers the rows in creation order, keeps a pending `stream_outbox` entry pending
    /// (delivered once, then settled with its outbox row), and new uploads go on from the
    /// highest number.
    #[tokio::test]
    async fn rows_of_the_outbox_era_survive_the_upgrade() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let dir = engines.dir();
        let older: Vec<Migration> = [
            sluice_store::embedded::MIGRATIONS,
            sluice_stream::embedded::MIGRATIONS,
            &MIGRATIONS[..4],
        ]
        .iter()
        .flat_map(|part| part.iter())
        .copied()
        .collect();
        let db = engines.meta("uploads", &older);
        let stream = EmbeddedStream::open(db.clone(), &dir.join("log")).expect("stream");
        stream.create_stream("u", 1).await.expect("create");
        // Two uploads as the earlier version wrote them: `old-1` settled, `old-2` pending.
        for (i, name) in ["old-1", "old-2"].into_iter().enumerate() {
            let record = PutRecord {
                partition_key: name.into(),
                explicit_hash_key: None,
                data: bytes::Bytes::from(format!("{{\"upload\":\"{name}\"}}")),
            };
            db.write(move |c| {
                let ticket = enqueue_in_tx(c, "u", &record)?;
                let settled = i == 0;
                if settled {
                    settle_in_tx(c, ticket)?;
                }
                c.execute(
                    "INSERT INTO uploads (id, user_sub, bucket, key, filename, size, sha256,
                         content_type, request_id, stream, shard_id, sequence_number, status,
                         created_ms, updated_ms, outbox_ticket)
                     VALUES (?1, 'user', 'bkt', ?2, ?1, 4, 'h', 'text/plain', 'req', 'u',
                         ?3, ?4, 'queued', ?5, ?5, ?6)",
                    params![
                        name,
                        format!("uploads/{name}"),
                        if settled { "shardId-000000000000" } else { "" },
                        if settled { "1" } else { "" },
                        1_000 + i as i64,
                        if settled { None } else { Some(ticket) }
                    ],
                )?;
                Ok::<_, UploadError>(())
            })
            .await
            .expect("old row");
        }
        db.close();
        drop(stream);

        let (store, stream, uploads) = open(&engines);
        sluice_store::ObjectStore::ensure_bucket(&store, "bkt")
            .await
            .expect("bucket");
        let numbered: Vec<(String, i64, Option<i64>)> = uploads
            .db
            .read(|c| {
                c.query_vec(
                    "SELECT id, seq, outbox_ticket FROM uploads ORDER BY seq",
                    params![],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
            })
            .await
            .expect("rows");
        assert_eq!(numbered.len(), 2);
        assert_eq!(numbered[0].0, "old-1");
        assert_eq!(numbered[1].0, "old-2");
        assert!(numbered[0].1 < numbered[1].1);
        assert_eq!(numbered[0].2, None);
        let old_ticket = numbered[1].2.expect("old-2 still pending");
        assert!(old_ticket < OWN_TICKETS_FROM);

        let (new, outbox) = commit_without_delivery(&uploads, &store, "new").await;
        assert!(outbox.row > numbered[1].1, "numbers go on from the highest");
        assert_eq!(uploads.deliver_pending(None).await.expect("deliver"), 2);
        let got = records(&stream).await;
        assert_eq!(got.len(), 2, "old-2 and new, once each");
        // Delivered concurrently: in either order.
        let (old_rec, new_rec) = match got
            .iter()
            .position(|r| &r.data[..] == br#"{"upload":"old-2"}"#)
        {
            Some(0) => (&got[0], &got[1]),
            Some(_) => (&got[1], &got[0]),
            None => panic!("old-2's record was not delivered"),
        };
        assert_eq!(new_rec.data, outbox.record.data);
        assert_eq!(
            uploads.get("old-2").await.expect("get").sequence_number,
            old_rec.sequence_number
        );
        assert_eq!(
            uploads.get(&new).await.expect("get").sequence_number,
            new_rec.sequence_number
        );
        assert!(stream.pending_tickets().await.expect("tickets").is_empty());
        assert_eq!(uploads.deliver_pending(None).await.expect("again"), 0);
        stream.db().close();
    }

    /// Failed deliveries are reported once per interval with how many there were.
    #[test]
    fn failed_deliveries_are_logged_once_per_interval_with_their_count() {
        let log = FailureLog::default();
        assert_eq!(log.count(10_000), Some(1), "the first failure is reported");
        assert_eq!(log.count(10_001), None);
        assert_eq!(log.count(14_999), None);
        assert_eq!(log.count(15_000), Some(3), "the two held back and this one");
        assert_eq!(log.count(15_001), None);
        assert_eq!(log.count(30_000), Some(2));
    }

    /// A stopped writer fails each write at once, inside the call: settling must not start
    /// write after write in its callback (that recursed until the stack overflowed at
    /// shutdown under load).
    #[tokio::test]
    async fn settling_after_the_writer_stopped_gives_up_instead_of_recursing() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let (_store, _stream, uploads) = ready(&engines).await;
        uploads.db.close();
        for i in 0..1000 {
            uploads.settle_later((
                i,
                OWN_TICKETS_FROM + i,
                "shardId-000000000000".into(),
                "1".into(),
            ));
        }
        let st = uploads.settles.state.lock().expect("lock");
        assert!(!st.in_flight, "no write can be on its way");
        assert_eq!(
            st.waiting.len(),
            1000,
            "what waits is settled at the next start"
        );
    }

    /// A user's uploads page newest first without gaps or repeats (several uploads in the
    /// same millisecond included), other users' never appear, and a status change shows in
    /// `changed_since`.
    #[tokio::test]
    async fn users_uploads_list_in_pages_and_changes_show() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let (_store, _stream, uploads) = ready(&engines).await;
        let mut made = Vec::new();
        for i in 0..7 {
            let u = uploads
                .commit(meta(&format!("f{i}")).with_body(bytes::Bytes::from("x")))
                .await
                .expect("commit");
            made.push(u.id);
        }
        let mut other = meta("theirs");
        other.user_sub = "someone-else".into();
        other.key = "uploads/theirs".into();
        uploads
            .commit(other.with_body(bytes::Bytes::from("y")))
            .await
            .expect("commit other");

        let mut seen = Vec::new();
        let mut cursor: Option<UploadCursor> = None;
        loop {
            let page = uploads
                .list("user", cursor.as_ref(), 3)
                .await
                .expect("list");
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            let next = UploadCursor::parse(&UploadCursor::of(last).token()).expect("token");
            assert_eq!(next, UploadCursor::of(last));
            cursor = Some(next);
            seen.extend(page.into_iter().map(|u| (u.created_ms, u.id)));
        }
        assert_eq!(seen.len(), 7, "{seen:?}");
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, sorted, "newest first");
        let mut ids: Vec<String> = seen.into_iter().map(|(_, id)| id).collect();
        ids.sort();
        made.sort();
        assert_eq!(ids, made);

        let before = now_ms();
        let changed = uploads
            .changed_since("user", before + 1, None, 100)
            .await
            .expect("changed");
        assert!(changed.is_empty(), "{changed:?}");
        uploads
            .mark_failed(&made[2], "boom")
            .await
            .expect("mark failed");
        let changed = uploads
            .changed_since("user", before, None, 100)
            .await
            .expect("changed");
        assert_eq!(changed.len(), 1, "{changed:?}");
        // Paging by (change time, id): every upload once, in order.
        let mut paged = Vec::new();
        let (mut ms, mut after) = (0, None::<String>);
        loop {
            let page = uploads
                .changed_since("user", ms, after.as_deref(), 2)
                .await
                .expect("page");
            let Some(last) = page.last() else { break };
            (ms, after) = (last.updated_ms, Some(last.id.clone()));
            paged.extend(page.into_iter().map(|u| u.id));
        }
        paged.sort();
        assert_eq!(paged, made);
        assert_eq!(changed[0].id, made[2]);
        assert_eq!(changed[0].status, UploadStatus::Failed);
        assert!(
            uploads
                .changed_since("someone-else", before, None, 100)
                .await
                .expect("changed")
                .is_empty()
        );
        for bad in ["", "12", "x.abc", "12.", "12.a/b", "12.a b"] {
            assert!(UploadCursor::parse(bad).is_none(), "{bad:?}");
        }
    }

    /// The processor's observer joins status rows into a transaction of the ledger's own
    /// database (the checkpoint's), and declines any other database.
    #[tokio::test]
    async fn ledger_observer_writes_in_the_ledgers_own_transaction_only() {
        use sluice_processor::{Observer, StatusUpdate};
        let engines = sluice_meta::conformance::TestEngines::new();
        let (store, stream, uploads) = ready(&engines).await;
        let (id, _) = commit_without_delivery(&uploads, &store, "joined").await;
        let db = stream.db().clone();
        let observer = crate::observer::LedgerObserver(std::sync::Arc::new(uploads.clone()));
        let updates = [StatusUpdate::Succeeded {
            upload_id: id.clone(),
            bucket: "bkt".into(),
            key: "processed/joined".into(),
            new_delivery: true,
        }];
        let other = engines.meta("other", &[]);
        assert!(observer.write_with(&other, &updates).is_none());
        let mut write = observer.write_with(&db, &updates).expect("same database");
        db.write(move |c| write(c)).await.expect("joined write");
        let row = uploads.get(&id).await.expect("get");
        assert_eq!(row.status, UploadStatus::Processed);
        assert_eq!(row.attempts, 1, "a new delivery counts an attempt");
        other.close();
        db.close();
    }
}
