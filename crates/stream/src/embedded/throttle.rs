//! Optional per-shard throughput limits, as Kinesis enforces them on provisioned shards:
//! writes of 1 MiB/s and 1,000 records/s, reads of 2 MiB/s and 5 GetRecords calls/s.
//!
//! Each limit is a token bucket kept in memory (limits restart full after a reopen, as
//! they would on a new Kinesis shard), refilled continuously at its rate up to one second's
//! worth, read from an injectable [`Clock`] so tests are deterministic.
//!
//! Invariants:
//! - a record refused for throughput writes nothing and takes no sequence number;
//! - a record larger than one second's write budget is admitted into a full bucket and
//!   leaves it in debt (so large records are written at the shard's rate, not never);
//! - a GetRecords call is refused while the shard's read-bytes bucket is empty or in debt:
//!   a call may return more than the bucket holds (up to 10 MiB, as on Kinesis), and the
//!   debt then holds back the following calls until the refill has paid it off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{Clock, StreamError, shard_id};

/// Kinesis' per-shard write limits, per second.
pub const WRITE_BYTES_PER_SEC: i64 = 1024 * 1024;
pub const WRITE_RECORDS_PER_SEC: i64 = 1000;
/// Kinesis' per-shard read limits, per second.
pub const READ_BYTES_PER_SEC: i64 = 2 * 1024 * 1024;
pub const READ_CALLS_PER_SEC: i64 = 5;

/// A token bucket holding at most one second of its rate, in exact integer arithmetic:
/// `milli` counts thousandths of a token, so a rate of `r` tokens per second accrues exactly
/// `r` thousandths per millisecond. It may be negative (a debt).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: i64,
    at_ms: i64,
}

impl Bucket {
    fn full(rate: i64, now: i64) -> Self {
        Bucket {
            milli: rate * 1000,
            at_ms: now,
        }
    }

    /// Adds what accrued since the last refill. A clock that goes backwards adds nothing.
    fn refill(&mut self, rate: i64, now: i64) {
        if now > self.at_ms {
            let accrued = rate.saturating_mul(now - self.at_ms);
            self.milli = self.milli.saturating_add(accrued).min(rate * 1000);
            self.at_ms = now;
        }
    }

    fn holds(&self, tokens: i64) -> bool {
        self.milli >= tokens.saturating_mul(1000)
    }

    fn take(&mut self, tokens: i64) {
        self.milli = self.milli.saturating_sub(tokens.saturating_mul(1000));
    }
}

#[derive(Debug, Clone, Copy)]
struct ShardBuckets {
    write_bytes: Bucket,
    write_records: Bucket,
    read_bytes: Bucket,
    read_calls: Bucket,
}

impl ShardBuckets {
    fn new(now: i64) -> Self {
        ShardBuckets {
            write_bytes: Bucket::full(WRITE_BYTES_PER_SEC, now),
            write_records: Bucket::full(WRITE_RECORDS_PER_SEC, now),
            read_bytes: Bucket::full(READ_BYTES_PER_SEC, now),
            read_calls: Bucket::full(READ_CALLS_PER_SEC, now),
        }
    }
}

/// Identifies a shard across streams; the creation time tells a re-created stream from the
/// deleted one of the same name.
type ShardKey = (String, i64, u64);

/// The buckets of every shard that was written or read since the backend was opened.
pub(crate) struct Throttle {
    clock: Arc<dyn Clock>,
    shards: Mutex<HashMap<ShardKey, ShardBuckets>>,
}

impl Throttle {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        Throttle {
            clock,
            shards: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(
        &self,
        stream: &str,
        created_ms: i64,
        shard: u64,
        f: impl FnOnce(&mut ShardBuckets, i64) -> T,
    ) -> Result<T, StreamError> {
        let now = self.clock.now_ms();
        let mut shards = self
            .shards
            .lock()
            .map_err(|_| StreamError::Backend("the throughput limits are poisoned".into()))?;
        let b = shards
            .entry((stream.to_owned(), created_ms, shard))
            .or_insert_with(|| ShardBuckets::new(now));
        Ok(f(b, now))
    }

    /// Takes one record of `bytes` (partition key + data) from the shard's write buckets,
    /// or refuses it and takes nothing.
    pub(crate) fn admit_write(
        &self,
        stream: &str,
        created_ms: i64,
        shard: u64,
        bytes: usize,
    ) -> Result<(), StreamError> {
        let admitted = self.with(stream, created_ms, shard, |b, now| {
            b.write_bytes.refill(WRITE_BYTES_PER_SEC, now);
            b.write_records.refill(WRITE_RECORDS_PER_SEC, now);
            let size = i64::try_from(bytes).unwrap_or(i64::MAX);
            // A record larger than a second's budget (up to 10 MiB with a raised record size)
            // is admitted into a full bucket and leaves it in debt, which the refill pays
            // off before the next write: otherwise it could never be written.
            if b.write_records.holds(1) && b.write_bytes.holds(size.min(WRITE_BYTES_PER_SEC)) {
                b.write_records.take(1);
                b.write_bytes.take(size);
                true
            } else {
                false
            }
        })?;
        if admitted {
            Ok(())
        } else {
            Err(StreamError::ProvisionedThroughputExceeded(format!(
                "Rate exceeded for shard {} in stream {stream}: at most 1000 records and 1 MiB per second.",
                shard_id(shard)
            )))
        }
    }

    /// Takes one GetRecords call from the shard's read buckets, or refuses it.
    pub(crate) fn admit_read(
        &self,
        stream: &str,
        created_ms: i64,
        shard: u64,
    ) -> Result<(), StreamError> {
        let admitted = self.with(stream, created_ms, shard, |b, now| {
            b.read_calls.refill(READ_CALLS_PER_SEC, now);
            b.read_bytes.refill(READ_BYTES_PER_SEC, now);
            if b.read_calls.holds(1) && b.read_bytes.milli > 0 {
                b.read_calls.take(1);
                true
            } else {
                false
            }
        })?;
        if admitted {
            Ok(())
        } else {
            Err(StreamError::ProvisionedThroughputExceeded(format!(
                "Rate exceeded for shard {} in stream {stream}: at most 5 GetRecords calls and 2 MiB per second.",
                shard_id(shard)
            )))
        }
    }

    /// Charges the bytes an admitted GetRecords call returned (the bucket may go into debt).
    pub(crate) fn charge_read(
        &self,
        stream: &str,
        created_ms: i64,
        shard: u64,
        bytes: usize,
    ) -> Result<(), StreamError> {
        self.with(stream, created_ms, shard, |b, now| {
            b.read_bytes.refill(READ_BYTES_PER_SEC, now);
            b.read_bytes.take(i64::try_from(bytes).unwrap_or(i64::MAX));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_one_second() {
        let mut b = Bucket::full(1000, 0);
        b.take(1000);
        assert!(!b.holds(1));
        b.refill(1000, 250);
        assert!(b.holds(250) && !b.holds(251));
        b.refill(1000, 100);
        assert!(!b.holds(251), "a clock going backwards adds nothing");
        b.refill(1000, 60_000);
        assert!(
            b.holds(1000) && !b.holds(1001),
            "capped at one second's worth"
        );
        let mut r = Bucket::full(5, 0);
        r.take(5);
        r.refill(5, 199);
        assert!(!r.holds(1));
        r.refill(5, 200);
        assert!(r.holds(1), "5 per second is one per 200 ms, exactly");
    }

    #[test]
    fn a_record_over_a_seconds_budget_is_admitted_when_the_bucket_is_full() {
        struct Manual(std::sync::atomic::AtomicI64);
        impl Clock for Manual {
            fn now_ms(&self) -> i64 {
                self.0.load(std::sync::atomic::Ordering::SeqCst)
            }
        }
        impl Manual {
            fn advance(&self, ms: i64) {
                self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let clock = Arc::new(Manual(0.into()));
        let t = Throttle::new(clock.clone());
        let big = 3 * WRITE_BYTES_PER_SEC as usize;
        t.admit_write("s", 0, 0, big)
            .expect("a full bucket takes it");
        assert!(
            t.admit_write("s", 0, 0, 1).is_err(),
            "the debt holds back the next write"
        );
        // A second's budget was in the bucket; the other two seconds' are the debt.
        clock.advance(1_999);
        assert!(t.admit_write("s", 0, 0, 1).is_err(), "still in debt");
        clock.advance(2);
        t.admit_write("s", 0, 0, 1)
            .expect("paid off after two seconds");
    }
}
