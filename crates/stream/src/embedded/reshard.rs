//! Resharding inside one transaction: split, merge, uniform scaling, and ListShards'
//! filters over shard lifetimes.

use sluice_meta::Tx;
use sluice_meta::params;

use super::schema::{ShardRow, StreamRow, open_shards};
use crate::{MAX_SHARDS, ShardFilter, StreamError, even_ranges, shard_id};

fn count_shards(conn: &Tx<'_>, stream: &StreamRow) -> Result<u64, StreamError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM shards WHERE stream_id = ?1",
        params![stream.id],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

fn check_room(conn: &Tx<'_>, stream: &StreamRow, new: u64) -> Result<(), StreamError> {
    let n = count_shards(conn, stream)?;
    if n + new > u64::from(MAX_SHARDS) {
        return Err(StreamError::LimitExceeded(format!(
            "stream {} would hold {} shards (open and closed within retention); the limit is {MAX_SHARDS}",
            stream.name,
            n + new
        )));
    }
    Ok(())
}

/// Closes `shard`: nothing more is appended to it, its ending sequence number is fixed.
fn close(conn: &Tx<'_>, stream: &StreamRow, shard: &ShardRow, now: i64) -> Result<(), StreamError> {
    // The shard closes at the latest of now, its last arrival and its creation.
    let changed = conn.execute(
        "UPDATE shards SET closed_counter = next_counter, closed_ms = CASE
                 WHEN ?3 >= last_arrival_ms AND ?3 >= created_ms THEN ?3
                 WHEN last_arrival_ms >= created_ms THEN last_arrival_ms
                 ELSE created_ms END
             WHERE stream_id = ?1 AND idx = ?2 AND closed_counter IS NULL",
        params![stream.id, shard.idx as i64, now],
    )?;
    if changed != 1 {
        return Err(StreamError::InvalidArgument(format!(
            "shard {} of stream {} is closed",
            shard_id(shard.idx),
            stream.name
        )));
    }
    Ok(())
}

fn insert_child(
    conn: &Tx<'_>,
    stream: &mut StreamRow,
    range: (u128, u128),
    parent: u64,
    adjacent_parent: Option<u64>,
    now: i64,
) -> Result<ShardRow, StreamError> {
    let idx = stream.next_shard_idx;
    stream.next_shard_idx += 1;
    conn.execute(
        "INSERT INTO shards (stream_id, idx, start_hash, end_hash, parent, adjacent_parent,
                             start_counter, next_counter, last_arrival_ms, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?8, 0, ?7)",
        params![
            stream.id,
            idx as i64,
            range.0.to_string(),
            range.1.to_string(),
            parent as i64,
            adjacent_parent.map(|v| v as i64),
            now,
            super::FIRST_RECORD_COUNTER as i64
        ],
    )?;
    conn.execute(
        "UPDATE streams SET next_shard_idx = ?2 WHERE id = ?1",
        params![stream.id, stream.next_shard_idx as i64],
    )?;
    Ok(ShardRow {
        idx,
        start_hash: range.0,
        end_hash: range.1,
        parent: Some(parent),
        adjacent_parent,
        start_counter: 0,
        next_counter: super::FIRST_RECORD_COUNTER,
        closed_counter: None,
        last_arrival_ms: 0,
        created_ms: now,
        closed_ms: None,
    })
}

/// Splits the open shard `parent` at `at`: children `start..=at-1` and `at..=end`.
pub(crate) fn split(
    conn: &Tx<'_>,
    stream: &mut StreamRow,
    parent: &ShardRow,
    at: u128,
    now: i64,
) -> Result<(ShardRow, ShardRow), StreamError> {
    if !parent.is_open() {
        return Err(StreamError::InvalidArgument(format!(
            "shard {} of stream {} is closed and cannot be split",
            shard_id(parent.idx),
            stream.name
        )));
    }
    if at <= parent.start_hash || at > parent.end_hash {
        return Err(StreamError::InvalidArgument(format!(
            "new starting hash key {at} must be greater than {} and at most {}, the hash-key range of shard {}",
            parent.start_hash,
            parent.end_hash,
            shard_id(parent.idx)
        )));
    }
    check_room(conn, stream, 2)?;
    close(conn, stream, parent, now)?;
    let left = insert_child(
        conn,
        stream,
        (parent.start_hash, at - 1),
        parent.idx,
        None,
        now,
    )?;
    let right = insert_child(conn, stream, (at, parent.end_hash), parent.idx, None, now)?;
    Ok((left, right))
}

/// Merges two open shards with adjacent ranges into one child (parent `a`, adjacent `b`).
pub(crate) fn merge(
    conn: &Tx<'_>,
    stream: &mut StreamRow,
    a: &ShardRow,
    b: &ShardRow,
    now: i64,
) -> Result<ShardRow, StreamError> {
    if a.idx == b.idx {
        return Err(StreamError::InvalidArgument(format!(
            "cannot merge shard {} with itself",
            shard_id(a.idx)
        )));
    }
    for s in [a, b] {
        if !s.is_open() {
            return Err(StreamError::InvalidArgument(format!(
                "shard {} of stream {} is closed and cannot be merged",
                shard_id(s.idx),
                stream.name
            )));
        }
    }
    let adjacent = a.end_hash.checked_add(1) == Some(b.start_hash)
        || b.end_hash.checked_add(1) == Some(a.start_hash);
    if !adjacent {
        return Err(StreamError::InvalidArgument(format!(
            "shards {} and {} are not adjacent: their hash-key ranges do not touch",
            shard_id(a.idx),
            shard_id(b.idx)
        )));
    }
    check_room(conn, stream, 1)?;
    close(conn, stream, a, now)?;
    close(conn, stream, b, now)?;
    let range = (a.start_hash.min(b.start_hash), a.end_hash.max(b.end_hash));
    insert_child(conn, stream, range, a.idx, Some(b.idx), now)
}

/// UNIFORM_SCALING: splits every open shard at the even boundaries of `target` shards that
/// fall inside it, then merges the pieces of each target range left to right. Every new
/// shard therefore has one parent (split) or two adjacent parents (merge).
pub(crate) fn uniform(
    conn: &Tx<'_>,
    stream: &mut StreamRow,
    target: u32,
    now: i64,
) -> Result<u32, StreamError> {
    let open = open_shards(conn, stream.id)?;
    let current = open.len() as u32;
    if target > current.saturating_mul(2) || target.saturating_mul(2) < current {
        return Err(StreamError::LimitExceeded(format!(
            "target shard count {target} must be between half and double the current {current}"
        )));
    }
    let ranges = even_ranges(target);
    let boundaries: Vec<u128> = ranges.iter().skip(1).map(|r| r.0).collect();
    let mut pieces: Vec<ShardRow> = Vec::new();
    for shard in open {
        let mut cur = shard;
        for &b in boundaries
            .iter()
            .filter(|&&b| b > cur.start_hash && b <= cur.end_hash)
            .collect::<Vec<_>>()
        {
            let (left, right) = split(conn, stream, &cur, b, now)?;
            pieces.push(left);
            cur = right;
        }
        pieces.push(cur);
    }
    pieces.sort_by_key(|p| p.start_hash);
    let mut it = pieces.into_iter().peekable();
    for (start, end) in ranges {
        let Some(mut acc) = it.next() else { break };
        debug_assert_eq!(acc.start_hash, start);
        while acc.end_hash < end {
            let Some(next) = it.next() else { break };
            acc = merge(conn, stream, &acc, &next, now)?;
        }
    }
    Ok(current)
}

/// What ListShards' filter keeps. `now` and the stream's retention give the trim horizon,
/// never earlier than the stream's creation. Expired shards (closed before the trim
/// horizon) are never listed.
pub(crate) fn keep(shard: &ShardRow, filter: &ShardFilter, stream: &StreamRow, now: i64) -> bool {
    let raw_horizon = now - stream.retention_ms();
    let closed_ms = shard.closed_ms.unwrap_or(shard.created_ms);
    let open = shard.is_open();
    if !open && closed_ms < raw_horizon {
        return false;
    }
    let horizon = raw_horizon.max(stream.created_ms);
    let open_at = |t: i64| shard.created_ms <= t && (open || closed_ms >= t);
    match filter {
        ShardFilter::FromTrimHorizon | ShardFilter::AfterShardId(_) => true,
        ShardFilter::AtLatest => open,
        ShardFilter::AtTrimHorizon => open_at(horizon),
        ShardFilter::AtTimestamp(t) => open_at((*t).max(horizon)),
        ShardFilter::FromTimestamp(t) => open || closed_ms >= (*t).max(horizon),
    }
}
