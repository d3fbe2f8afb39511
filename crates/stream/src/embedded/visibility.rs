//! What readers may see of each shard: records become visible only once durable.
//!
//! The shared database commits a group before it fsyncs it, and SQLite shows a commit to
//! other connections at once (see `sluice_db`'s module docs). A record read in that window
//! could be lost by a power loss before the fsync, and its sequence number handed to a
//! different record after restart: a consumer that checkpointed it would then skip that
//! record. So the read path stops every shard at its **durable horizon**: the first counter
//! not yet known durable.
//!
//! Invariant: a shard with appends in flight has an entry, inserted by the append job on
//! the writer thread *before* its group commits (so no reader can see the records without
//! the entry) and raised by a [`sluice_db::on_durable`] callback after the fsync. A shard
//! without an entry has had no append since this database was opened, and everything the
//! database held at open was fsynced then: it is read to its end.

use std::collections::HashMap;
use std::sync::Mutex;

/// Durable horizons of the shards appended to since the database was opened, keyed by
/// (stream row id, shard index). One per database ([`sluice_db::Db::shared`]).
#[derive(Debug, Default)]
pub struct Visibility {
    horizons: Mutex<HashMap<(i64, u64), u64>>,
}

impl Visibility {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<(i64, u64), u64>) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update of a plain map.
        let mut g = match self.horizons.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// The first counter of the shard readers must not see yet, if the shard has appends
    /// in flight or had some since open.
    pub(crate) fn horizon(&self, stream_id: i64, shard: u64) -> Option<u64> {
        self.with(|m| m.get(&(stream_id, shard)).copied())
    }

    /// Where readers must stop in a shard whose committed `next_counter` is given: at its
    /// durable horizon if it has one below that.
    pub(crate) fn visible_end(&self, stream_id: i64, shard: u64, next_counter: u64) -> u64 {
        self.horizon(stream_id, shard)
            .map_or(next_counter, |h| h.min(next_counter))
    }

    /// Called by an append job before its commit: records from `durable_next` on are not
    /// durable yet. Keeps an existing (lower or equal) horizon.
    pub(crate) fn pending(&self, stream_id: i64, shard: u64, durable_next: u64) {
        self.with(|m| {
            m.entry((stream_id, shard)).or_insert(durable_next);
        });
    }

    /// Called once the group holding records up to `next - 1` is durable.
    pub(crate) fn durable(&self, stream_id: i64, shard: u64, next: u64) {
        self.with(|m| {
            let h = m.entry((stream_id, shard)).or_insert(next);
            *h = (*h).max(next);
        });
    }

    /// Drops a deleted stream's horizons (row ids can be reused by a new stream).
    pub(crate) fn forget_stream(&self, stream_id: i64) {
        self.with(|m| m.retain(|(s, _), _| *s != stream_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keeps_the_lowest_and_durable_only_raises() {
        let v = Visibility::default();
        assert_eq!(v.horizon(1, 0), None);
        v.pending(1, 0, 10);
        v.pending(1, 0, 12); // a second group in flight: the horizon stays at the first
        assert_eq!(v.horizon(1, 0), Some(10));
        v.durable(1, 0, 12);
        v.durable(1, 0, 11); // late, out of order: never lowers
        assert_eq!(v.horizon(1, 0), Some(12));
        v.forget_stream(1);
        assert_eq!(v.horizon(1, 0), None);
    }
}
