//! Tables of the embedded stream backend and the rows read from them.

use sluice_meta::{Migration, Row, Tx, params};

use crate::{StreamError, StreamMode};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
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
    },
    // Resharding (shard indexes are never reused: `next_shard_idx`), shard lifetimes for
    // ShardFilter and expiry, on-demand mode, tags, and a checksum on every record
    // (NULL on records written before this step; those are not verified).
    Migration {
        name: "stream-0002",
        sql: "
ALTER TABLE streams ADD COLUMN next_shard_idx INTEGER NOT NULL DEFAULT 0;
ALTER TABLE streams ADD COLUMN on_demand INTEGER NOT NULL DEFAULT 0;
UPDATE streams SET next_shard_idx =
    (SELECT COALESCE(MAX(idx) + 1, 0) FROM shards WHERE shards.stream_id = streams.id);
ALTER TABLE shards ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE shards ADD COLUMN closed_ms INTEGER;
UPDATE shards SET created_ms =
    (SELECT s.created_ms FROM streams s WHERE s.id = shards.stream_id);
UPDATE shards SET closed_ms =
    CASE WHEN created_ms > last_arrival_ms THEN created_ms ELSE last_arrival_ms END
    WHERE closed_counter IS NOT NULL;
ALTER TABLE records ADD COLUMN checksum INTEGER;
CREATE TABLE stream_tags (
    stream_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (stream_id, key)
) WITHOUT ROWID;
",
    },
    // Records move to a rowid table with a separate index on their position. In the
    // `WITHOUT ROWID` table of stream-0001 a 1 KiB record did not fit in its B-tree cell
    // (cells of such tables hold at most about a quarter of a page) and spilled into an
    // overflow page of its own, and appends to every shard but the last landed in the middle
    // of the tree, splitting half-full pages. Here rows are appended at the end of the table
    // (rowids only grow), about four 1 KiB records share a page, and only the small index
    // entries go to one place per shard. The arrival-time index is gone: arrival times are
    // non-decreasing along a shard's counters, so a binary search over the position index
    // ([`first_counter_at_or_after`]) finds a time without an index to maintain on every
    // append.
    Migration {
        name: "stream-0003",
        sql: "
CREATE TABLE records_v3 (
    id INTEGER PRIMARY KEY,
    stream_id INTEGER NOT NULL,
    shard_idx INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    arrival_ms INTEGER NOT NULL,
    partition_key TEXT NOT NULL,
    data BLOB NOT NULL,
    checksum INTEGER
);
INSERT INTO records_v3 (stream_id, shard_idx, counter, arrival_ms, partition_key, data, checksum)
    SELECT stream_id, shard_idx, counter, arrival_ms, partition_key, data, checksum
    FROM records ORDER BY stream_id, shard_idx, counter;
DROP INDEX records_arrival;
DROP TABLE records;
ALTER TABLE records_v3 RENAME TO records;
CREATE UNIQUE INDEX records_position ON records (stream_id, shard_idx, counter);
",
    },
    // Consumers registered for enhanced fan-out (`embedded/consumers.rs`). A consumer's
    // status is not stored: it is `Creating` until `created_ms` plus the backend's
    // activation delay, then `Active`; deregistering deletes the row.
    Migration {
        name: "stream-0004",
        sql: "
CREATE TABLE stream_consumers (
    stream_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (stream_id, name)
) WITHOUT ROWID;
",
    },
    // Records move to the stream log (`embedded/log.rs`); rows left in `records` by an
    // older sluice are copied there when the backend opens and then deleted. The outbox
    // holds records that other transactions commit (uploads) until they are delivered to
    // the log; AUTOINCREMENT because the log remembers delivered tickets, so a number must
    // never be handed out twice. Stream ids are never reused either (records of a deleted
    // stream stay in the log until their segment goes): `stream_meta.last_stream_id`, set
    // when a stream is created or deleted (this step once also copied the highest id there;
    // creation takes the highest of both, so the copy is not needed, and it could not be
    // written in SQL that PostgreSQL accepts for a BLOB column).
    Migration {
        name: "stream-0005",
        sql: "
CREATE TABLE stream_outbox (
    ticket INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    partition_key TEXT NOT NULL,
    explicit_hash_key TEXT,
    data BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
",
    },
    // Tags of consumers (RegisterStreamConsumer's `Tags`, TagResource on a consumer ARN);
    // they go with their consumer.
    Migration {
        name: "stream-0006",
        sql: "
CREATE TABLE stream_consumer_tags (
    stream_id INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (stream_id, consumer, key)
) WITHOUT ROWID;
",
    },
    // Settings kept with a stream (`Stream::stream_setting`): the Kinesis edge's
    // encryption, enhanced monitoring and resource policies, and the backend's own history
    // of rate-limited changes (keys `sluice:…`). They go with their stream.
    Migration {
        name: "stream-0007",
        sql: "
CREATE TABLE stream_settings (
    stream_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (stream_id, key)
) WITHOUT ROWID;
",
    },
];

/// A row of `streams`.
#[derive(Debug, Clone)]
pub(crate) struct StreamRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) created_ms: i64,
    pub(crate) retention_hours: u32,
    pub(crate) max_record_bytes: usize,
    /// Index the next new shard gets; only grows, so shard ids are never reused.
    pub(crate) next_shard_idx: u64,
    pub(crate) mode: StreamMode,
}

impl StreamRow {
    pub(crate) fn retention_ms(&self) -> i64 {
        i64::from(self.retention_hours) * 3_600_000
    }
}

pub(crate) fn load_stream(conn: &Tx<'_>, name: &str) -> Result<StreamRow, StreamError> {
    conn.query_opt(
        "SELECT id, name, created_ms, retention_hours, max_record_bytes, next_shard_idx,
                on_demand
         FROM streams WHERE name = ?1",
        params![name],
        |r| {
            Ok(StreamRow {
                id: r.get(0)?,
                name: r.get(1)?,
                created_ms: r.get(2)?,
                retention_hours: r.get::<i64>(3)? as u32,
                max_record_bytes: r.get::<i64>(4)? as usize,
                next_shard_idx: r.get::<i64>(5)? as u64,
                mode: if r.get::<i64>(6)? != 0 {
                    StreamMode::OnDemand
                } else {
                    StreamMode::Provisioned
                },
            })
        },
    )?
    .ok_or_else(|| not_found(name))
}

pub(crate) fn not_found(stream: &str) -> StreamError {
    StreamError::ResourceNotFound(format!("stream {stream} not found"))
}

/// A row of `shards`.
///
/// Invariants: records of the shard have counters in `start_counter..next_counter` (not
/// every counter there need have a record: a new shard begins at 1, trimming removes); a
/// closed shard has `closed_counter == next_counter` (nothing is appended after closing)
/// and `closed_ms >= created_ms`.
#[derive(Debug, Clone)]
pub(crate) struct ShardRow {
    pub(crate) idx: u64,
    pub(crate) start_hash: u128,
    pub(crate) end_hash: u128,
    pub(crate) parent: Option<u64>,
    pub(crate) adjacent_parent: Option<u64>,
    pub(crate) start_counter: u64,
    pub(crate) next_counter: u64,
    pub(crate) closed_counter: Option<u64>,
    pub(crate) last_arrival_ms: i64,
    pub(crate) created_ms: i64,
    pub(crate) closed_ms: Option<i64>,
}

impl ShardRow {
    pub(crate) fn is_open(&self) -> bool {
        self.closed_counter.is_none()
    }
}

pub(crate) fn parse_u128(s: &str) -> Result<u128, StreamError> {
    s.parse().map_err(|_| {
        StreamError::Backend(format!("stored hash key {s:?} is not a 128-bit integer"))
    })
}

const SHARD_COLUMNS: &str = "idx, start_hash, end_hash, parent, adjacent_parent, start_counter,
     next_counter, closed_counter, last_arrival_ms, created_ms, closed_ms";

fn shard_from_row(r: &Row<'_>) -> sluice_meta::MetaResult<(ShardRow, String, String)> {
    Ok((
        ShardRow {
            idx: r.get::<i64>(0)? as u64,
            start_hash: 0,
            end_hash: 0,
            parent: r.get::<Option<i64>>(3)?.map(|v| v as u64),
            adjacent_parent: r.get::<Option<i64>>(4)?.map(|v| v as u64),
            start_counter: r.get::<i64>(5)? as u64,
            next_counter: r.get::<i64>(6)? as u64,
            closed_counter: r.get::<Option<i64>>(7)?.map(|v| v as u64),
            last_arrival_ms: r.get(8)?,
            created_ms: r.get(9)?,
            closed_ms: r.get(10)?,
        },
        r.get(1)?,
        r.get(2)?,
    ))
}

fn finish(rows: Vec<(ShardRow, String, String)>) -> Result<Vec<ShardRow>, StreamError> {
    rows.into_iter()
        .map(|(mut s, start, end)| {
            s.start_hash = parse_u128(&start)?;
            s.end_hash = parse_u128(&end)?;
            Ok(s)
        })
        .collect()
}

/// Every shard of a stream, in index order.
pub(crate) fn shard_rows(conn: &Tx<'_>, stream_id: i64) -> Result<Vec<ShardRow>, StreamError> {
    let rows = conn.query_vec(
        &format!("SELECT {SHARD_COLUMNS} FROM shards WHERE stream_id = ?1 ORDER BY idx"),
        params![stream_id],
        shard_from_row,
    )?;
    finish(rows)
}

/// The open shards of a stream, in hash-key order.
pub(crate) fn open_shards(conn: &Tx<'_>, stream_id: i64) -> Result<Vec<ShardRow>, StreamError> {
    let rows = conn.query_vec(
        &format!(
            "SELECT {SHARD_COLUMNS} FROM shards WHERE stream_id = ?1 AND closed_counter IS NULL"
        ),
        params![stream_id],
        shard_from_row,
    )?;
    let mut shards = finish(rows)?;
    shards.sort_by_key(|s| s.start_hash);
    Ok(shards)
}

pub(crate) fn shard_row(
    conn: &Tx<'_>,
    stream: &StreamRow,
    idx: u64,
) -> Result<ShardRow, StreamError> {
    let row = conn
        .query_opt(
            &format!("SELECT {SHARD_COLUMNS} FROM shards WHERE stream_id = ?1 AND idx = ?2"),
            params![stream.id, idx as i64],
            shard_from_row,
        )?
        .ok_or_else(|| {
            StreamError::ResourceNotFound(format!(
                "shard {} in stream {} not found",
                crate::shard_id(idx),
                stream.name
            ))
        })?;
    Ok(finish(vec![row])?.remove(0))
}
