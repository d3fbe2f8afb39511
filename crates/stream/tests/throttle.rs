//! Optional per-shard throughput limits of the embedded backend (Kinesis' provisioned-shard
//! limits), driven by a manual clock: nothing here depends on how fast the machine is.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use sluice_meta::Meta;
use sluice_stream::embedded::{EmbeddedStream, MIGRATIONS, StreamOptions, log_dir_of};
use sluice_stream::{Clock, IteratorSpec, PutRecord, Stream, StreamError, shard_id};

/// A clock that moves only when told to.
struct ManualClock(AtomicI64);

impl ManualClock {
    fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Fixture {
    s: EmbeddedStream,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn open(throttle: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let db = Meta::open_sqlite(&path, MIGRATIONS).expect("db");
    let clock = Arc::new(ManualClock(AtomicI64::new(1_000_000)));
    let s = EmbeddedStream::open_with(
        db,
        &log_dir_of(&path),
        StreamOptions {
            throttle,
            clock: clock.clone(),
            ..StreamOptions::default()
        },
    )
    .expect("stream");
    Fixture {
        s,
        clock,
        _dir: dir,
    }
}

/// A record of `size` bytes in all (partition key `k` + data).
fn rec(size: usize) -> PutRecord {
    PutRecord {
        partition_key: "k".into(),
        explicit_hash_key: None,
        data: Bytes::from(vec![7u8; size - 1]),
    }
}

/// A record for the shard of the lower half of the key space (MD5 of "k" lies in the upper
/// half, so [`rec`] goes to the other shard of a two-shard stream).
fn rec_other() -> PutRecord {
    PutRecord {
        partition_key: "k".into(),
        explicit_hash_key: Some("0".into()),
        data: Bytes::from_static(b"x"),
    }
}

fn throttled<T: std::fmt::Debug>(r: &Result<T, StreamError>) -> bool {
    matches!(r, Err(StreamError::ProvisionedThroughputExceeded(m)) if m.contains("Rate exceeded"))
}

#[tokio::test]
async fn limits_are_off_by_default() {
    let f = open(false);
    f.s.create_stream("s", 1).await.expect("create");
    for _ in 0..3 {
        let batch = (0..500).map(|_| rec(100)).collect();
        for r in f.s.put_records("s", batch).await.expect("put_records") {
            r.expect("no limit");
        }
    }
    let it =
        f.s.get_shard_iterator("s", &shard_id(0), IteratorSpec::TrimHorizon)
            .await
            .expect("iterator");
    for _ in 0..20 {
        f.s.get_records(&it, 10).await.expect("no read limit");
    }
}

#[tokio::test]
async fn a_shard_takes_1000_records_per_second_and_refills_continuously() {
    let f = open(true);
    f.s.create_stream("s", 2).await.expect("create");
    let mut last = None;
    for _ in 0..2 {
        let batch = (0..500).map(|_| rec(10)).collect();
        for r in f.s.put_records("s", batch).await.expect("put_records") {
            last = Some(r.expect("within the limit"));
        }
    }
    let refused = f.s.put_record("s", rec(10)).await;
    assert!(
        throttled(&refused),
        "the 1001st record in a second: {refused:?}"
    );
    // Another shard has its own budget.
    f.s.put_record("s", rec_other())
        .await
        .expect("the other shard is not limited by this one");
    // 1 ms later one more record fits, and it takes the next sequence number: the refused
    // record took none.
    f.clock.advance(1);
    let next = f.s.put_record("s", rec(10)).await.expect("refilled");
    let (shard, counter) =
        sluice_stream::parse_sequence_number(&next.sequence_number).expect("number");
    let prev = last.expect("appended");
    assert_eq!(
        sluice_stream::parse_sequence_number(&prev.sequence_number),
        Some((shard, counter - 1))
    );
    assert!(throttled(&f.s.put_record("s", rec(10)).await));
    f.clock.advance(1_000);
    let batch = (0..500).map(|_| rec(10)).collect();
    for r in f.s.put_records("s", batch).await.expect("put_records") {
        r.expect("a full second refills the bucket");
    }
}

#[tokio::test]
async fn a_shard_takes_1_mib_per_second() {
    let f = open(true);
    f.s.create_stream("s", 1).await.expect("create");
    let size = 100 * 1024;
    for i in 0..10 {
        f.s.put_record("s", rec(size))
            .await
            .unwrap_or_else(|e| panic!("record {i} of 100 KiB is within 1 MiB: {e}"));
    }
    // 1000 KiB taken; 24 KiB left.
    assert!(throttled(&f.s.put_record("s", rec(size)).await));
    f.s.put_record("s", rec(24 * 1024))
        .await
        .expect("what is left of the second still fits");
    assert!(throttled(&f.s.put_record("s", rec(1)).await));
    // 100 KiB accrue in 100000 / 1048576 s, just under 98 ms.
    f.clock.advance(97);
    assert!(throttled(&f.s.put_record("s", rec(size)).await));
    f.clock.advance(1);
    f.s.put_record("s", rec(size)).await.expect("refilled");
}

#[tokio::test]
async fn put_records_reports_throttling_per_record() {
    let f = open(true);
    f.s.create_stream("s", 2).await.expect("create");
    for n in [500, 400] {
        let batch = (0..n).map(|_| rec(10)).collect();
        for r in f.s.put_records("s", batch).await.expect("put_records") {
            r.expect("within the limit");
        }
    }
    // 100 left on the shard of "k": of the 400 records for it in this call, the first 100
    // pass and the last 300 are refused; the 100 for the other shard in between all pass.
    let batch: Vec<PutRecord> = (0..500)
        .map(|i| if i % 5 == 0 { rec_other() } else { rec(10) })
        .collect();
    let results = f.s.put_records("s", batch).await.expect("put_records");
    let for_k: Vec<bool> = results
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 0)
        .map(|(_, r)| throttled(r))
        .collect();
    assert_eq!(for_k.len(), 400);
    assert!(for_k[..100].iter().all(|t| !*t), "the first 100 pass");
    assert!(for_k[100..].iter().all(|t| *t), "the last 300 are refused");
    assert!(
        results
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 5 == 0)
            .all(|(_, r)| r.is_ok()),
        "records for the other shard are not refused"
    );
}

#[tokio::test]
async fn a_shard_serves_5_get_records_calls_per_second() {
    let f = open(true);
    f.s.create_stream("s", 2).await.expect("create");
    f.s.put_record("s", rec(10)).await.expect("put");
    let it =
        f.s.get_shard_iterator("s", &shard_id(1), IteratorSpec::TrimHorizon)
            .await
            .expect("iterator");
    for _ in 0..5 {
        f.s.get_records(&it, 10).await.expect("within 5 calls");
    }
    assert!(throttled(&f.s.get_records(&it, 10).await));
    let other =
        f.s.get_shard_iterator("s", &shard_id(0), IteratorSpec::TrimHorizon)
            .await
            .expect("iterator");
    f.s.get_records(&other, 10)
        .await
        .expect("the other shard has its own budget");
    f.clock.advance(199);
    assert!(throttled(&f.s.get_records(&it, 10).await));
    f.clock.advance(1);
    f.s.get_records(&it, 10).await.expect("one call per 200 ms");
}

#[tokio::test]
async fn reading_more_than_2_mib_holds_back_the_next_calls_until_paid_off() {
    let f = open(true);
    f.s.create_stream("s", 1).await.expect("create");
    // 3 MiB in the shard: 3 seconds of writes.
    for _ in 0..3 {
        for _ in 0..4 {
            f.s.put_record("s", rec(256 * 1024)).await.expect("put");
        }
        f.clock.advance(1_000);
    }
    let it =
        f.s.get_shard_iterator("s", &shard_id(0), IteratorSpec::TrimHorizon)
            .await
            .expect("iterator");
    let page =
        f.s.get_records(&it, 100)
            .await
            .expect("one call may return 3 MiB");
    assert_eq!(page.records.len(), 12);
    let next = page.next_iterator.expect("open shard");
    // 2 MiB budget - 3 MiB read = 1 MiB of debt: paid off after 0.5 s.
    assert!(throttled(&f.s.get_records(&next, 100).await));
    f.clock.advance(499);
    assert!(throttled(&f.s.get_records(&next, 100).await));
    f.clock.advance(2);
    f.s.get_records(&next, 100).await.expect("debt paid off");
}
