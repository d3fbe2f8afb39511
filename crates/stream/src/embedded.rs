//! The embedded stream backend: records in the shared SQLite database ([`sluice_db::Db`]),
//! appended through its group-commit writer.
//!
//! Each shard keeps its own `next_counter`, advanced in the same transaction as the insert,
//! so sequence numbers never repeat or go backwards — not after a crash, not after every
//! record has been trimmed. Arrival timestamps are kept non-decreasing per shard so that
//! AT_TIMESTAMP positions and retention trimming agree with sequence order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sluice_db::rusqlite::{Connection, OptionalExtension, params};
use sluice_db::{Db, Migration, now_ms};
use tokio::sync::watch;

use crate::iterator::{self, Position};
use crate::{
    DEFAULT_MAX_RECORD_BYTES, DEFAULT_RETENTION_HOURS, GetRecordsOutput, IteratorSpec,
    MAX_GET_BYTES, MAX_GET_RECORDS, MAX_PUT_RECORDS, PutRecord, PutResult, Record, ShardDesc,
    Stream, StreamDesc, StreamError, even_ranges, parse_sequence_number, parse_shard_id,
    sequence_number, shard_id, validate_record, validate_stream_name,
};

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "stream-0001",
    sql: "
CREATE TABLE stream_meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE streams (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    retention_hours INTEGER NOT NULL,
    max_record_bytes INTEGER NOT NULL
);
CREATE TABLE shards (
    stream_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    start_hash TEXT NOT NULL,
    end_hash TEXT NOT NULL,
    parent INTEGER,
    adjacent_parent INTEGER,
    start_counter INTEGER NOT NULL,
    next_counter INTEGER NOT NULL,
    closed_counter INTEGER,
    last_arrival_ms INTEGER NOT NULL,
    PRIMARY KEY (stream_id, idx)
) WITHOUT ROWID;
CREATE TABLE records (
    stream_id INTEGER NOT NULL,
    shard_idx INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    arrival_ms INTEGER NOT NULL,
    partition_key TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (stream_id, shard_idx, counter)
) WITHOUT ROWID;
CREATE INDEX records_arrival ON records (stream_id, shard_idx, arrival_ms);
",
}];

/// Streams stored in the shared embedded database.
#[derive(Clone)]
pub struct EmbeddedStream {
    db: Db,
    iterator_key: Arc<Vec<u8>>,
    watchers: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl EmbeddedStream {
    /// Opens the backend on a database already migrated with [`MIGRATIONS`].
    pub fn open(db: Db) -> Result<Self, StreamError> {
        use rand::RngCore;
        let mut fresh = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut fresh);
        let key: Vec<u8> = db.write_blocking(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO stream_meta (k, v) VALUES ('iterator_key', ?1)",
                [&fresh],
            )?;
            let k: Vec<u8> = c.query_row(
                "SELECT v FROM stream_meta WHERE k = 'iterator_key'",
                [],
                |r| r.get(0),
            )?;
            Ok::<_, StreamError>(k)
        })?;
        Ok(EmbeddedStream {
            db,
            iterator_key: Arc::new(key),
            watchers: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Tells tailing readers of `stream` that records were committed. Callers that append
    /// with [`append_in_tx`] call it after their commit.
    pub fn notify(&self, stream: &str) {
        if let Ok(mut w) = self.watchers.lock() {
            w.entry(stream.to_owned())
                .or_insert_with(|| watch::channel(0).0)
                .send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Deletes records older than each stream's retention period, every `every`.
    pub fn spawn_retention(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let db = self.db.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let res = db
                    .write(|c| {
                        let n = c.execute(
                            "DELETE FROM records WHERE EXISTS (
                                 SELECT 1 FROM streams s WHERE s.id = records.stream_id
                                 AND records.arrival_ms < ?1 - s.retention_hours * 3600000)",
                            [now_ms()],
                        )?;
                        Ok::<_, StreamError>(n)
                    })
                    .await;
                match res {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(records = n, "trimmed records past retention"),
                    Err(e) => tracing::warn!(error = %e, "retention trimming failed"),
                }
            }
        })
    }
}

/// Appends one record inside a transaction of the shared database. Used by the stream
/// itself and by callers that must commit a record together with other rows (the upload
/// path). The caller must call [`EmbeddedStream::notify`] after the commit.
pub fn append_in_tx(
    conn: &Connection,
    stream: &str,
    record: &PutRecord,
    now: i64,
) -> Result<PutResult, StreamError> {
    let (stream_id, max_bytes) = stream_row(conn, stream)?;
    let hash = validate_record(record, max_bytes)?;
    let mut shards = conn.prepare_cached(
        "SELECT idx, start_hash, end_hash FROM shards
         WHERE stream_id = ?1 AND closed_counter IS NULL",
    )?;
    let mut target = None;
    let mut rows = shards.query([stream_id])?;
    while let Some(r) = rows.next()? {
        let start = parse_u128(&r.get::<_, String>(1)?);
        let end = parse_u128(&r.get::<_, String>(2)?);
        if (start..=end).contains(&hash) {
            target = Some(r.get::<_, i64>(0)?);
            break;
        }
    }
    drop(rows);
    let idx = target.ok_or_else(|| {
        StreamError::Backend(format!("no open shard of {stream} covers hash key {hash}"))
    })?;
    let (counter, arrival): (i64, i64) = conn
        .prepare_cached(
            "UPDATE shards SET next_counter = next_counter + 1,
                 last_arrival_ms = max(last_arrival_ms, ?3)
             WHERE stream_id = ?1 AND idx = ?2
             RETURNING next_counter - 1, last_arrival_ms",
        )?
        .query_row(params![stream_id, idx, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    conn.prepare_cached(
        "INSERT INTO records (stream_id, shard_idx, counter, arrival_ms, partition_key, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        stream_id,
        idx,
        counter,
        arrival,
        record.partition_key,
        record.data.as_ref()
    ])?;
    Ok(PutResult {
        shard_id: shard_id(idx as u64),
        sequence_number: sequence_number(idx as u64, counter as u64),
    })
}

fn parse_u128(s: &str) -> u128 {
    s.parse().unwrap_or(0)
}

fn stream_row(conn: &Connection, stream: &str) -> Result<(i64, usize), StreamError> {
    conn.prepare_cached("SELECT id, max_record_bytes FROM streams WHERE name = ?1")?
        .query_row([stream], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .optional()?
        .map(|(id, max)| (id, max as usize))
        .ok_or_else(|| not_found(stream))
}

fn not_found(stream: &str) -> StreamError {
    StreamError::ResourceNotFound(format!("stream {stream} not found"))
}

struct ShardRow {
    idx: u64,
    start_hash: u128,
    end_hash: u128,
    parent: Option<u64>,
    adjacent_parent: Option<u64>,
    start_counter: u64,
    next_counter: u64,
    closed_counter: Option<u64>,
}

fn shard_rows(conn: &Connection, stream_id: i64) -> Result<Vec<ShardRow>, StreamError> {
    let mut st = conn.prepare_cached(
        "SELECT idx, start_hash, end_hash, parent, adjacent_parent, start_counter,
                next_counter, closed_counter
         FROM shards WHERE stream_id = ?1 ORDER BY idx",
    )?;
    let rows = st.query_map([stream_id], |r| {
        Ok(ShardRow {
            idx: r.get::<_, i64>(0)? as u64,
            start_hash: parse_u128(&r.get::<_, String>(1)?),
            end_hash: parse_u128(&r.get::<_, String>(2)?),
            parent: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
            adjacent_parent: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
            start_counter: r.get::<_, i64>(5)? as u64,
            next_counter: r.get::<_, i64>(6)? as u64,
            closed_counter: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn create_in_tx(conn: &Connection, name: &str, shard_count: u32) -> Result<(), StreamError> {
    let now = now_ms();
    conn.execute(
        "INSERT INTO streams (name, created_ms, retention_hours, max_record_bytes)
         VALUES (?1, ?2, ?3, ?4)",
        params![
            name,
            now,
            DEFAULT_RETENTION_HOURS,
            DEFAULT_MAX_RECORD_BYTES as i64
        ],
    )?;
    let id = conn.last_insert_rowid();
    for (i, (start, end)) in even_ranges(shard_count).into_iter().enumerate() {
        conn.execute(
            "INSERT INTO shards (stream_id, idx, start_hash, end_hash, start_counter,
                                 next_counter, last_arrival_ms)
             VALUES (?1, ?2, ?3, ?4, 0, 0, 0)",
            params![id, i as i64, start.to_string(), end.to_string()],
        )?;
    }
    Ok(())
}

fn check_shard_count(shard_count: u32) -> Result<(), StreamError> {
    if !(1..=10_000).contains(&shard_count) {
        return Err(StreamError::InvalidArgument(format!(
            "shard count must be between 1 and 10000, got {shard_count}"
        )));
    }
    Ok(())
}

#[async_trait]
impl Stream for EmbeddedStream {
    async fn create_stream(&self, name: &str, shard_count: u32) -> Result<(), StreamError> {
        validate_stream_name(name)?;
        check_shard_count(shard_count)?;
        let name = name.to_owned();
        self.db
            .write(move |c| {
                let exists: bool = c.query_row(
                    "SELECT EXISTS(SELECT 1 FROM streams WHERE name = ?1)",
                    [&name],
                    |r| r.get(0),
                )?;
                if exists {
                    return Err(StreamError::ResourceInUse(format!(
                        "stream {name} already exists"
                    )));
                }
                create_in_tx(c, &name, shard_count)
            })
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
                    [&name],
                    |r| r.get(0),
                )?;
                if exists {
                    Ok(())
                } else {
                    create_in_tx(c, &name, shard_count)
                }
            })
            .await
    }

    async fn describe_stream(&self, name: &str) -> Result<StreamDesc, StreamError> {
        let name = name.to_owned();
        self.db
            .read(move |c| {
                let (id, created_ms, retention): (i64, i64, i64) = c
                    .query_row(
                        "SELECT id, created_ms, retention_hours FROM streams WHERE name = ?1",
                        [&name],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?
                    .ok_or_else(|| not_found(&name))?;
                let shards = shard_rows(c, id)?
                    .into_iter()
                    .map(|s| ShardDesc {
                        shard_id: shard_id(s.idx),
                        parent_shard_id: s.parent.map(shard_id),
                        adjacent_parent_shard_id: s.adjacent_parent.map(shard_id),
                        starting_hash_key: s.start_hash,
                        ending_hash_key: s.end_hash,
                        starting_sequence_number: sequence_number(s.idx, s.start_counter),
                        ending_sequence_number: s
                            .closed_counter
                            .map(|c| sequence_number(s.idx, c.saturating_sub(1))),
                    })
                    .collect();
                Ok(StreamDesc {
                    name: name.clone(),
                    status: "ACTIVE",
                    shards,
                    retention_hours: retention as u32,
                    created_ms,
                })
            })
            .await
    }

    async fn list_streams(&self) -> Result<Vec<String>, StreamError> {
        self.db
            .read(|c| {
                let mut st = c.prepare_cached("SELECT name FROM streams ORDER BY name")?;
                let names = st
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(names)
            })
            .await
    }

    async fn delete_stream(&self, name: &str) -> Result<(), StreamError> {
        let name = name.to_owned();
        self.db
            .write(move |c| {
                let (id, _) = stream_row(c, &name)?;
                c.execute("DELETE FROM records WHERE stream_id = ?1", [id])?;
                c.execute("DELETE FROM shards WHERE stream_id = ?1", [id])?;
                c.execute("DELETE FROM streams WHERE id = ?1", [id])?;
                Ok(())
            })
            .await
    }

    async fn put_record(&self, stream: &str, record: PutRecord) -> Result<PutResult, StreamError> {
        let name = stream.to_owned();
        let res = self
            .db
            .write(move |c| append_in_tx(c, &name, &record, now_ms()))
            .await?;
        self.notify(stream);
        Ok(res)
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
        let name = stream.to_owned();
        let results = self
            .db
            .write(move |c| {
                stream_row(c, &name)?;
                let now = now_ms();
                let mut out = Vec::with_capacity(records.len());
                for r in &records {
                    // Each record in its own savepoint: one bad record fails alone.
                    c.execute_batch("SAVEPOINT rec")?;
                    let res = append_in_tx(c, &name, r, now);
                    if res.is_ok() {
                        c.execute_batch("RELEASE rec")?;
                    } else {
                        c.execute_batch("ROLLBACK TO rec; RELEASE rec")?;
                    }
                    out.push(res);
                }
                Ok::<_, StreamError>(out)
            })
            .await?;
        if results.iter().any(|r| r.is_ok()) {
            self.notify(stream);
        }
        Ok(results)
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
        self.db
            .read(move |c| {
                let idx = parse_shard_id(&shard).ok_or_else(|| {
                    StreamError::InvalidArgument(format!("invalid shard id {shard:?}"))
                })?;
                let (stream_id, created_ms): (i64, i64) = c
                    .query_row(
                        "SELECT id, created_ms FROM streams WHERE name = ?1",
                        [&name],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?
                    .ok_or_else(|| not_found(&name))?;
                let row = shard_rows(c, stream_id)?
                    .into_iter()
                    .find(|s| s.idx == idx)
                    .ok_or_else(|| {
                        StreamError::ResourceNotFound(format!(
                            "shard {} in stream {name} not found",
                            shard_id(idx)
                        ))
                    })?;
                let seq_counter = |s: &str| -> Result<u64, StreamError> {
                    match parse_sequence_number(s) {
                        Some((sidx, counter)) if sidx == idx && counter < row.next_counter => {
                            Ok(counter)
                        }
                        _ => Err(StreamError::InvalidArgument(format!(
                            "sequence number {s} is not a sequence number of shard {}",
                            shard_id(idx)
                        ))),
                    }
                };
                let p = match &spec {
                    IteratorSpec::TrimHorizon => row.start_counter,
                    IteratorSpec::Latest => row.next_counter,
                    IteratorSpec::AtSequenceNumber(s) => seq_counter(s)?,
                    IteratorSpec::AfterSequenceNumber(s) => seq_counter(s)? + 1,
                    IteratorSpec::AtTimestamp(ts) => c
                        .query_row(
                            "SELECT counter FROM records
                             WHERE stream_id = ?1 AND shard_idx = ?2 AND arrival_ms >= ?3
                             ORDER BY counter LIMIT 1",
                            params![stream_id, idx as i64, ts],
                            |r| r.get::<_, i64>(0),
                        )
                        .optional()?
                        .map(|v| v as u64)
                        .unwrap_or(row.next_counter),
                };
                Ok(iterator::encode(
                    &key,
                    &Position {
                        s: name.clone(),
                        g: created_ms,
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
        self.db
            .read(move |c| {
                let stream_id: i64 = c
                    .query_row(
                        "SELECT id FROM streams WHERE name = ?1 AND created_ms = ?2",
                        params![pos.s, pos.g],
                        |r| r.get(0),
                    )
                    .optional()?
                    .ok_or_else(|| not_found(&pos.s))?;
                let (next_counter, closed): (i64, Option<i64>) = c
                    .query_row(
                        "SELECT next_counter, closed_counter FROM shards
                         WHERE stream_id = ?1 AND idx = ?2",
                        params![stream_id, pos.h as i64],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?
                    .ok_or_else(|| {
                        StreamError::ResourceNotFound(format!(
                            "shard {} of stream {} not found",
                            shard_id(pos.h),
                            pos.s
                        ))
                    })?;
                let mut st = c.prepare_cached(
                    "SELECT counter, arrival_ms, partition_key, data FROM records
                     WHERE stream_id = ?1 AND shard_idx = ?2 AND counter >= ?3
                     ORDER BY counter LIMIT ?4",
                )?;
                let mut rows =
                    st.query(params![stream_id, pos.h as i64, pos.p as i64, limit as i64])?;
                let mut records = Vec::new();
                let mut bytes = 0usize;
                let mut next = pos.p;
                while let Some(r) = rows.next()? {
                    let data: Vec<u8> = r.get(3)?;
                    if !records.is_empty() && bytes + data.len() > MAX_GET_BYTES {
                        break;
                    }
                    bytes += data.len();
                    let counter = r.get::<_, i64>(0)? as u64;
                    records.push(Record {
                        sequence_number: sequence_number(pos.h, counter),
                        approximate_arrival_ms: r.get(1)?,
                        partition_key: r.get(2)?,
                        data: Bytes::from(data),
                    });
                    next = counter + 1;
                }
                drop(rows);
                let millis_behind_latest = if (next as i64) < next_counter {
                    c.query_row(
                        "SELECT arrival_ms FROM records
                         WHERE stream_id = ?1 AND shard_idx = ?2 AND counter >= ?3
                         ORDER BY counter LIMIT 1",
                        params![stream_id, pos.h as i64, next as i64],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()?
                    .map(|a| (now_ms() - a).max(0))
                    .unwrap_or(0)
                } else {
                    0
                };
                let drained = closed.is_some_and(|cc| next as i64 >= cc);
                let next_iterator = (!drained).then(|| {
                    iterator::encode(
                        &key,
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
                })
            })
            .await
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (EmbeddedStream, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "sluice-stream-{}-{}",
            std::process::id(),
            uuid_like()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let db = Db::open(&dir.join("s.db"), MIGRATIONS).expect("db");
        (EmbeddedStream::open(db).expect("stream"), dir)
    }

    fn uuid_like() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::Instant::now())
    }

    fn rec(pk: &str, data: &str) -> PutRecord {
        PutRecord {
            partition_key: pk.into(),
            explicit_hash_key: None,
            data: Bytes::from(data.to_owned()),
        }
    }

    #[tokio::test]
    async fn records_land_on_the_shard_of_their_hash_and_read_back_in_order() {
        let (s, _d) = open();
        s.create_stream("s", 4).await.expect("create");
        let desc = s.describe_stream("s").await.expect("describe");
        let mut per_shard: HashMap<String, Vec<String>> = HashMap::new();
        for i in 0..40 {
            let pk = format!("key-{i}");
            let r = s
                .put_record("s", rec(&pk, &i.to_string()))
                .await
                .expect("put");
            let h = crate::partition_hash(&pk);
            let owner = desc
                .shards
                .iter()
                .find(|sh| (sh.starting_hash_key..=sh.ending_hash_key).contains(&h))
                .expect("covering shard");
            assert_eq!(r.shard_id, owner.shard_id);
            per_shard
                .entry(r.shard_id)
                .or_default()
                .push(r.sequence_number);
        }
        for (shard, seqs) in per_shard {
            let it = s
                .get_shard_iterator("s", &shard, IteratorSpec::TrimHorizon)
                .await
                .expect("iterator");
            let out = s.get_records(&it, 1000).await.expect("get");
            let got: Vec<_> = out
                .records
                .iter()
                .map(|r| r.sequence_number.clone())
                .collect();
            assert_eq!(got, seqs);
            assert!(got.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(out.millis_behind_latest, 0);
        }
    }

    #[tokio::test]
    async fn iterator_types() {
        let (s, _d) = open();
        s.create_stream("s", 1).await.expect("create");
        let shard = shard_id(0);
        let latest = s
            .get_shard_iterator("s", &shard, IteratorSpec::Latest)
            .await
            .expect("latest");
        let mut seqs = Vec::new();
        for i in 0..5 {
            seqs.push(
                s.put_record("s", rec("k", &format!("r{i}")))
                    .await
                    .expect("put")
                    .sequence_number,
            );
        }
        let from_latest = s.get_records(&latest, 100).await.expect("get");
        assert_eq!(
            from_latest.records.len(),
            5,
            "LATEST sees records put after it"
        );
        let at = s
            .get_shard_iterator("s", &shard, IteratorSpec::AtSequenceNumber(seqs[2].clone()))
            .await
            .expect("at");
        let got = s.get_records(&at, 2).await.expect("get");
        assert_eq!(got.records[0].sequence_number, seqs[2]);
        assert_eq!(got.records.len(), 2);
        assert!(got.millis_behind_latest >= 0);
        let next = got.next_iterator.expect("open shard has a next iterator");
        let rest = s.get_records(&next, 100).await.expect("get");
        assert_eq!(rest.records[0].sequence_number, seqs[4]);
        let after = s
            .get_shard_iterator(
                "s",
                &shard,
                IteratorSpec::AfterSequenceNumber(seqs[4].clone()),
            )
            .await
            .expect("after");
        assert!(
            s.get_records(&after, 10)
                .await
                .expect("get")
                .records
                .is_empty()
        );
        let ts = s
            .get_shard_iterator("s", &shard, IteratorSpec::AtTimestamp(0))
            .await
            .expect("ts");
        assert_eq!(s.get_records(&ts, 10).await.expect("get").records.len(), 5);
        let bad = s
            .get_shard_iterator(
                "s",
                &shard,
                IteratorSpec::AtSequenceNumber(sequence_number(0, 99)),
            )
            .await;
        assert!(matches!(bad, Err(StreamError::InvalidArgument(_))));
    }

    #[tokio::test]
    async fn errors() {
        let (s, _d) = open();
        assert!(matches!(
            s.put_record("nope", rec("k", "x")).await,
            Err(StreamError::ResourceNotFound(_))
        ));
        s.create_stream("s", 2).await.expect("create");
        assert!(matches!(
            s.create_stream("s", 2).await,
            Err(StreamError::ResourceInUse(_))
        ));
        assert!(matches!(
            s.create_stream("bad name", 2).await,
            Err(StreamError::InvalidArgument(_))
        ));
        assert!(matches!(
            s.get_records("forged.iterator", 10).await,
            Err(StreamError::InvalidArgument(_))
        ));
        let results = s
            .put_records("s", vec![rec("a", "1"), rec("", "2"), rec("c", "3")])
            .await
            .expect("put_records");
        assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok());
    }

    #[tokio::test]
    async fn sequence_numbers_survive_reopen_and_trimming() {
        let (s, dir) = open();
        s.create_stream("s", 1).await.expect("create");
        let first = s.put_record("s", rec("k", "a")).await.expect("put");
        s.db()
            .write(|c| {
                c.execute("DELETE FROM records", [])?;
                Ok::<_, StreamError>(())
            })
            .await
            .expect("trim");
        s.db().close();
        let db = Db::open(&dir.join("s.db"), MIGRATIONS).expect("reopen");
        let s2 = EmbeddedStream::open(db).expect("stream");
        let second = s2.put_record("s", rec("k", "b")).await.expect("put");
        assert!(second.sequence_number > first.sequence_number);
    }
}
