//! The suite every record engine must pass ([`run_all`]): the contract of
//! [`RecordLog`](super::RecordLog) (see [`crate::records`]), rule by rule.
//!
//! Each rule runs on an engine of its own. Nothing depends on wall-clock speed: arrival
//! times come from the appends' own clocks ([`Append::now_ms`]), and the only waits are
//! generous guards against hanging.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::{
    Append, AppendOutcome, Appended, FenceOutcome, Imported, NewRecord, RecordError, RecordLog,
    ShardEnd, ShardKey, StoredRecord, TrimPlan,
};
use crate::StreamError;

/// Opens the engine named `name`, fresh the first time; opening the same name again (after
/// every handle to it was dropped) reopens the same engine.
pub type Open<'a> = &'a (dyn Fn(&str) -> Arc<dyn RecordLog> + Sync);

/// Runs every rule, each on an engine of its own.
pub async fn run_all(open: Open<'_>) {
    append_and_read_round_trip(open("round-trip")).await;
    positions_are_dense_and_ordered(open("dense")).await;
    arrival_times_never_decrease(open("arrival")).await;
    dedup_by_ticket(open("dedup")).await;
    appends_handed_over_together(open("append-all")).await;
    tail_reads_are_empty_and_watchers_wake(open("watch")).await;
    timestamp_lookup(open("time")).await;
    read_limits(open("limits")).await;
    fence_refuses_stale_appends(open("fence")).await;
    a_fence_excludes_concurrent_appends(open("fence-race")).await;
    dropping_a_stream(open("drop")).await;
    import_skips_what_is_held(open("import")).await;
    trim_by_retention(open, "trim").await;
    reopen_keeps_what_was_acknowledged(open, "reopen").await;
}

const STREAM: i64 = 1;
const OTHER: i64 = 2;

fn key(shard: u64) -> ShardKey {
    ShardKey::new(STREAM, shard)
}

fn rec(shard: u64, data: impl Into<Bytes>) -> NewRecord {
    NewRecord {
        shard,
        min_position: 1,
        min_arrival_ms: 0,
        partition_key: format!("pk-{shard}"),
        data: data.into(),
    }
}

fn append(e: &dyn RecordLog, stream: i64, records: Vec<NewRecord>, now_ms: i64) -> Append {
    Append {
        stream,
        epoch: e.epoch(),
        ticket: None,
        now_ms,
        records,
    }
}

/// Appends and expects it done.
async fn put(e: &dyn RecordLog, a: Append) -> Vec<Appended> {
    match e.append(a).await.expect("append") {
        AppendOutcome::Done(done) => done,
        AppendOutcome::Stale(_) => panic!("an append with a current epoch was refused as stale"),
    }
}

async fn put1(e: &dyn RecordLog, stream: i64, r: NewRecord, now_ms: i64) -> Appended {
    let done = put(e, append(e, stream, vec![r], now_ms)).await;
    assert_eq!(done.len(), 1, "one result per record");
    done[0]
}

/// Every record of a shard, from position 0, page by page.
async fn read_all(e: &dyn RecordLog, k: ShardKey) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let page = e.read(k, from, 1000, 64 << 20).await.expect("read");
        if page.records.is_empty() {
            assert_eq!(page.next, from, "an empty read stays where it started");
            return out;
        }
        assert!(page.next > from, "a read that returns records moves on");
        from = page.next;
        out.extend(page.records);
    }
}

fn positions(records: &[StoredRecord]) -> Vec<u64> {
    records.iter().map(|r| r.position).collect()
}

/// Records come back as appended: positions, partition keys, data, arrival times.
async fn append_and_read_round_trip(e: Arc<dyn RecordLog>) {
    let e = e.as_ref();
    let big = Bytes::from((0..1 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let done = put(
        e,
        append(
            e,
            STREAM,
            vec![
                rec(0, "a"),
                rec(1, "b"),
                rec(0, Bytes::new()),
                rec(0, big.clone()),
            ],
            1_000,
        ),
    )
    .await;
    let want = |shard, position| Appended {
        shard,
        position,
        arrival_ms: 1_000,
    };
    assert_eq!(done, vec![want(0, 1), want(1, 1), want(0, 2), want(0, 3)]);
    let got = read_all(e, key(0)).await;
    assert_eq!(positions(&got), vec![1, 2, 3]);
    assert_eq!(got[0].data, Bytes::from_static(b"a"));
    assert!(got[1].data.is_empty(), "empty data round-trips");
    assert!(got[2].data == big, "1 MiB of data round-trips");
    assert!(
        got.iter()
            .all(|r| r.partition_key == "pk-0" && r.arrival_ms == 1_000)
    );
    let other = read_all(e, key(1)).await;
    assert_eq!(positions(&other), vec![1]);
    assert_eq!(other[0].data, Bytes::from_static(b"b"));
    assert_eq!(
        e.end(key(0)).await.expect("end"),
        Some(ShardEnd {
            next: 4,
            last_arrival_ms: 1_000
        })
    );
    assert_eq!(
        e.end(key(9)).await.expect("end"),
        None,
        "a shard never written"
    );
    assert!(read_all(e, key(9)).await.is_empty());
    assert!(
        read_all(e, ShardKey::new(OTHER, 0)).await.is_empty(),
        "streams are apart"
    );
    let stats = e.stats();
    assert!(
        stats.records >= 4 && stats.batches >= 1,
        "stats count writes: {stats:?}"
    );
    assert_eq!(e.streams().await.expect("streams"), vec![STREAM]);
}

/// Positions of a shard are dense and strictly increasing under concurrent appends, in
/// the order reads return them; a floor starts a shard the engine holds nothing of.
async fn positions_are_dense_and_ordered(e: Arc<dyn RecordLog>) {
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..25u64 {
                let shard = (t + i) % 2;
                let data = format!("{t}/{i}");
                let a = put1(e.as_ref(), STREAM, rec(shard, data.clone()), 5).await;
                assert_eq!(a.shard, shard);
                got.push((a, data));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let e = e.as_ref();
    for shard in [0, 1] {
        let mut mine: Vec<&(Appended, String)> =
            all.iter().filter(|(a, _)| a.shard == shard).collect();
        mine.sort_by_key(|(a, _)| a.position);
        let want: Vec<u64> = (1..=mine.len() as u64).collect();
        assert_eq!(
            mine.iter().map(|(a, _)| a.position).collect::<Vec<_>>(),
            want,
            "dense positions from the floor, none twice"
        );
        let read = read_all(e, key(shard)).await;
        assert_eq!(positions(&read), want, "reads return position order");
        for (r, (_, data)) in read.iter().zip(&mine) {
            assert_eq!(
                r.data,
                Bytes::from(data.clone()),
                "the record at its position"
            );
        }
    }
    // Several records of one append to one shard: consecutive, in the append's order.
    let done = put(
        e,
        append(e, STREAM, vec![rec(0, "x"), rec(0, "y"), rec(0, "z")], 5),
    )
    .await;
    let p: Vec<u64> = done.iter().map(|a| a.position).collect();
    assert_eq!(p, vec![p[0], p[0] + 1, p[0] + 2]);
    // A floor starts a shard the engine holds nothing of; below the end it changes nothing.
    let mut floored = rec(7, "first");
    floored.min_position = 100;
    assert_eq!(put1(e, STREAM, floored.clone(), 5).await.position, 100);
    floored.min_position = 50;
    assert_eq!(put1(e, STREAM, floored, 5).await.position, 101);
}

/// Arrival times: the append's clock, never below the shard's last arrival or the floor.
async fn arrival_times_never_decrease(e: Arc<dyn RecordLog>) {
    let e = e.as_ref();
    assert_eq!(put1(e, STREAM, rec(0, "a"), 2_000).await.arrival_ms, 2_000);
    assert_eq!(
        put1(e, STREAM, rec(0, "b"), 1_000).await.arrival_ms,
        2_000,
        "a clock that went back does not move a shard's arrivals back"
    );
    assert_eq!(
        put1(e, STREAM, rec(1, "c"), 1_000).await.arrival_ms,
        1_000,
        "per shard"
    );
    let mut floored = rec(2, "d");
    floored.min_arrival_ms = 9_000;
    assert_eq!(put1(e, STREAM, floored, 1_000).await.arrival_ms, 9_000);
    let read = read_all(e, key(0)).await;
    assert_eq!(
        read.iter().map(|r| r.arrival_ms).collect::<Vec<_>>(),
        vec![2_000, 2_000]
    );
}

fn ticketed(e: &dyn RecordLog, ticket: i64, r: NewRecord) -> Append {
    Append {
        ticket: Some(ticket),
        ..append(e, STREAM, vec![r], 10)
    }
}

/// A ticket delivers one record: appending it again answers the first result and writes
/// nothing, even when the duplicates race.
async fn dedup_by_ticket(e: Arc<dyn RecordLog>) {
    let first = put(e.as_ref(), ticketed(e.as_ref(), 7, rec(0, "x"))).await;
    assert_eq!(first.len(), 1);
    let again = put(e.as_ref(), ticketed(e.as_ref(), 7, rec(1, "y"))).await;
    assert_eq!(again, first, "a delivered ticket answers its first result");
    assert!(
        read_all(e.as_ref(), key(1)).await.is_empty(),
        "and writes nothing"
    );
    assert_eq!(e.delivered(7).await.expect("delivered"), Some(first[0]));
    assert_eq!(e.delivered(8).await.expect("delivered"), None);
    // Racing duplicates (likely in one batch): one record.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            put(
                e.as_ref(),
                ticketed(e.as_ref(), 9, rec(2, format!("dup {i}"))),
            )
            .await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
    assert_eq!(
        read_all(e.as_ref(), key(2)).await.len(),
        1,
        "racing duplicates"
    );
    // A ticket belongs to an append of one record.
    let two = Append {
        ticket: Some(10),
        ..append(e.as_ref(), STREAM, vec![rec(0, "a"), rec(0, "b")], 10)
    };
    assert!(matches!(e.append(two).await, Err(RecordError::Invalid(_))));
    assert_eq!(e.delivered(10).await.expect("delivered"), None);
}

/// `append_all` answers each append as `append` would, answers in the order given: tickets
/// delivered before (or twice in the same call) answer their first result, a ticket on two
/// records is refused alone, and the others land, each ticket once.
async fn appends_handed_over_together(e: Arc<dyn RecordLog>) {
    let before = put(e.as_ref(), ticketed(e.as_ref(), 20, rec(0, "earlier"))).await;
    let two = Append {
        ticket: Some(25),
        ..append(e.as_ref(), STREAM, vec![rec(1, "a"), rec(1, "b")], 10)
    };
    let out = e
        .append_all(vec![
            ticketed(e.as_ref(), 21, rec(1, "one")),
            ticketed(e.as_ref(), 20, rec(1, "again")),
            ticketed(e.as_ref(), 22, rec(1, "two")),
            two,
            ticketed(e.as_ref(), 21, rec(1, "twice in one call")),
            append(e.as_ref(), STREAM, vec![rec(0, "plain")], 10),
        ])
        .await;
    assert_eq!(out.len(), 6, "one answer per append");
    let done = |i: usize| match &out[i] {
        Ok(AppendOutcome::Done(d)) => d.clone(),
        other => panic!("append {i}: {other:?}"),
    };
    assert_eq!(
        done(1),
        before,
        "a ticket delivered before answers its first result"
    );
    assert_eq!(done(4), done(0), "a ticket twice in one call lands once");
    assert_ne!(done(0)[0].position, done(2)[0].position);
    assert!(matches!(out[3], Err(RecordError::Invalid(_))));
    assert_eq!(done(5).len(), 1);
    // Which of two appends to one shard lands first is the engine's choice.
    let mut shard1: Vec<Bytes> = read_all(e.as_ref(), key(1))
        .await
        .into_iter()
        .map(|r| r.data)
        .collect();
    shard1.sort();
    assert_eq!(shard1, vec![Bytes::from("one"), Bytes::from("two")]);
    assert_eq!(e.delivered(25).await.expect("delivered"), None);
    assert_eq!(e.append_all(Vec::new()).await.len(), 0);
}

/// A read at the tail returns nothing and stays put; a subscribed sender is bumped by the
/// next append of its stream (not of another), and the record is then readable.
async fn tail_reads_are_empty_and_watchers_wake(e: Arc<dyn RecordLog>) {
    let a = put1(e.as_ref(), STREAM, rec(0, "one"), 1).await;
    let tail = e
        .read(key(0), a.position + 1, 10, 1 << 20)
        .await
        .expect("read at the tail");
    assert!(tail.records.is_empty());
    assert_eq!(tail.next, a.position + 1);
    let tx = Arc::new(watch::channel(0u64).0);
    let mut rx = tx.subscribe();
    e.subscribe(STREAM, tx.clone());
    e.subscribe(STREAM, tx.clone());
    let other = Arc::new(watch::channel(0u64).0);
    let other_rx = other.subscribe();
    e.subscribe(OTHER, other);
    rx.borrow_and_update();
    let writer = {
        let e = e.clone();
        tokio::spawn(async move { put1(e.as_ref(), STREAM, rec(0, "two"), 2).await })
    };
    tokio::time::timeout(Duration::from_secs(60), rx.changed())
        .await
        .expect("woken within a minute")
        .expect("sender alive");
    let b = writer.await.expect("writer");
    let got = e
        .read(key(0), a.position + 1, 10, 1 << 20)
        .await
        .expect("read");
    assert_eq!(
        positions(&got.records),
        vec![b.position],
        "the woken reader sees it"
    );
    assert!(
        !other_rx.has_changed().expect("sender alive"),
        "a subscriber of another stream is not bumped"
    );
}

/// The first record at or after a time, and the arrival of the first at or after a position.
async fn timestamp_lookup(e: Arc<dyn RecordLog>) {
    let e = e.as_ref();
    let p1 = put1(e, STREAM, rec(0, "a"), 1_000).await.position;
    let p2 = put1(e, STREAM, rec(0, "b"), 2_000).await.position;
    let p3 = put1(e, STREAM, rec(0, "c"), 3_000).await.position;
    let at = |ts| e.first_at_or_after(key(0), ts);
    assert_eq!(at(0).await.expect("lookup"), Some(p1));
    assert_eq!(at(1_000).await.expect("lookup"), Some(p1));
    assert_eq!(at(1_500).await.expect("lookup"), Some(p2));
    assert_eq!(at(3_000).await.expect("lookup"), Some(p3));
    assert_eq!(at(3_001).await.expect("lookup"), None);
    assert_eq!(e.first_at_or_after(key(5), 0).await.expect("lookup"), None);
    let arrival = |p| e.arrival_at_or_after(key(0), p);
    assert_eq!(arrival(0).await.expect("lookup"), Some(1_000));
    assert_eq!(arrival(p2).await.expect("lookup"), Some(2_000));
    assert_eq!(arrival(p3 + 1).await.expect("lookup"), None);
}

/// At most `max_records` records and `max_bytes` of data per read, but at least one.
async fn read_limits(e: Arc<dyn RecordLog>) {
    let e = e.as_ref();
    let records: Vec<NewRecord> = (0..20).map(|i| rec(0, vec![i as u8; 100])).collect();
    put(e, append(e, STREAM, records, 1)).await;
    let page = e.read(key(0), 0, 5, 1 << 20).await.expect("read");
    assert_eq!(positions(&page.records), vec![1, 2, 3, 4, 5]);
    assert_eq!(page.next, 6);
    let page = e.read(key(0), 6, 100, 250).await.expect("read");
    assert_eq!(
        positions(&page.records),
        vec![6, 7],
        "no more data than max_bytes"
    );
    assert_eq!(page.next, 8);
    let page = e.read(key(0), 8, 100, 50).await.expect("read");
    assert_eq!(positions(&page.records), vec![8], "but at least one record");
    let page = e.read(key(0), 19, 100, 1 << 20).await.expect("read");
    assert_eq!(positions(&page.records), vec![19, 20]);
    assert_eq!(page.records[1].data, Bytes::from(vec![19u8; 100]));
    assert_eq!(page.next, 21);
}

/// Appends routed with an epoch from before a change of their stream come back stale,
/// records intact; other streams, later epochs and unchanged or failed fences are not
/// affected. An empty append only checks the epoch.
async fn fence_refuses_stale_appends(e: Arc<dyn RecordLog>) {
    let e = e.as_ref();
    let before = e.epoch();
    let a = put1(e, STREAM, rec(0, "before"), 1).await;
    let seen: Arc<std::sync::Mutex<Vec<(u64, ShardEnd)>>> = Arc::default();
    let s = seen.clone();
    e.fence(
        STREAM,
        Box::new(move |ends| {
            *s.lock().expect("lock") = ends.to_vec();
            Ok(FenceOutcome::Changed)
        }),
    )
    .await
    .expect("fence");
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![(
            0,
            ShardEnd {
                next: a.position + 1,
                last_arrival_ms: 1
            }
        )],
        "the change sees the ends of the stream's shards"
    );
    let stale = Append {
        epoch: before,
        ..append(e, STREAM, vec![rec(0, "late"), rec(1, "late too")], 2)
    };
    match e.append(stale).await.expect("append") {
        AppendOutcome::Stale(back) => {
            assert_eq!(back.records.len(), 2, "records handed back");
            assert_eq!(back.records[1].data, Bytes::from_static(b"late too"));
        }
        AppendOutcome::Done(d) => panic!("an append older than a fence was accepted: {d:?}"),
    }
    let empty = Append {
        epoch: before,
        ..append(e, STREAM, Vec::new(), 2)
    };
    assert!(matches!(
        e.append(empty).await.expect("append"),
        AppendOutcome::Stale(_)
    ));
    assert!(
        read_all(e, key(1)).await.is_empty(),
        "a stale append writes nothing"
    );
    let other = Append {
        epoch: before,
        ..append(e, OTHER, vec![rec(0, "elsewhere")], 2)
    };
    assert!(
        matches!(
            e.append(other).await.expect("append"),
            AppendOutcome::Done(_)
        ),
        "a fence is per stream"
    );
    let current = e.epoch();
    assert!(current > before, "a change moves the epoch");
    put1(e, STREAM, rec(0, "after"), 2).await;
    assert_eq!(put(e, append(e, STREAM, Vec::new(), 2)).await, Vec::new());
    // Unchanged, or failed: appends routed before stay valid.
    e.fence(STREAM, Box::new(|_| Ok(FenceOutcome::Unchanged)))
        .await
        .expect("fence");
    let failed = e
        .fence(
            STREAM,
            Box::new(|_| Err(StreamError::InvalidArgument("change refused".into()))),
        )
        .await;
    match failed {
        Err(RecordError::Aborted(err)) => assert!(
            matches!(*err, StreamError::InvalidArgument(ref m) if m == "change refused"),
            "the change's own error comes back: {err:?}"
        ),
        other => panic!("a failed change must come back as Aborted, got {other:?}"),
    }
    let still = Append {
        epoch: current,
        ..append(e, STREAM, vec![rec(0, "still")], 3)
    };
    assert!(matches!(
        e.append(still).await.expect("append"),
        AppendOutcome::Done(_)
    ));
}

/// Appends racing a fence: those that became durable did so before the change saw the
/// ends (their positions are below them), and the others come back stale.
async fn a_fence_excludes_concurrent_appends(e: Arc<dyn RecordLog>) {
    put1(e.as_ref(), STREAM, rec(0, "first"), 1).await;
    let epoch = e.epoch();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let a = Append {
                epoch,
                ..append(e.as_ref(), STREAM, vec![rec(0, format!("r{i}"))], 1)
            };
            e.append(a).await.expect("append")
        }));
        if i == 50 {
            tokio::task::yield_now().await;
        }
    }
    let seen: Arc<std::sync::Mutex<Option<u64>>> = Arc::default();
    let s = seen.clone();
    e.fence(
        STREAM,
        Box::new(move |ends| {
            *s.lock().expect("lock") = ends.iter().find(|(sh, _)| *sh == 0).map(|(_, e)| e.next);
            Ok(FenceOutcome::Changed)
        }),
    )
    .await
    .expect("fence");
    let end = seen.lock().expect("lock").expect("shard 0 has records");
    let mut done = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            AppendOutcome::Done(d) => done.push(d[0].position),
            AppendOutcome::Stale(_) => {}
        }
    }
    done.sort_unstable();
    assert!(
        done.iter().all(|p| *p < end),
        "an append routed before the fence landed after it: {done:?} vs end {end}"
    );
    assert_eq!(
        positions(&read_all(e.as_ref(), key(0)).await),
        (1..end).collect::<Vec<_>>(),
        "what the fence saw is exactly what was written"
    );
}

/// A dropped stream's records, tickets and subscribers go; other streams stay.
async fn dropping_a_stream(e: Arc<dyn RecordLog>) {
    let e = e.as_ref();
    put1(e, STREAM, rec(0, "a"), 1).await;
    put(e, ticketed(e, 42, rec(1, "ticketed"))).await;
    put1(e, OTHER, rec(0, "b"), 1).await;
    put1(e, 3, rec(0, "c"), 1).await;
    assert_eq!(e.streams().await.expect("streams"), vec![STREAM, OTHER, 3]);
    e.drop_stream(STREAM).await.expect("drop");
    assert!(read_all(e, key(0)).await.is_empty());
    assert_eq!(e.end(key(0)).await.expect("end"), None);
    assert_eq!(
        e.delivered(42).await.expect("delivered"),
        None,
        "its tickets go too"
    );
    assert_eq!(e.streams().await.expect("streams"), vec![OTHER, 3]);
    assert_eq!(
        read_all(e, ShardKey::new(OTHER, 0)).await.len(),
        1,
        "others stay"
    );
    // Dropped in a fence: appends routed before are stale.
    let before = e.epoch();
    e.fence(OTHER, Box::new(|_| Ok(FenceOutcome::Dropped)))
        .await
        .expect("fence");
    assert!(read_all(e, ShardKey::new(OTHER, 0)).await.is_empty());
    let late = Append {
        epoch: before,
        ..append(e, OTHER, vec![rec(0, "late")], 2)
    };
    assert!(matches!(
        e.append(late).await.expect("append"),
        AppendOutcome::Stale(_)
    ));
    assert_eq!(e.streams().await.expect("streams"), vec![3]);
}

/// Imported records keep their positions; those at or below what a shard holds are skipped.
async fn import_skips_what_is_held(e: Arc<dyn RecordLog>) {
    let e = e.as_ref();
    let imported = |position: u64, data: &'static str| Imported {
        shard: key(0),
        position,
        arrival_ms: 7,
        partition_key: "old".into(),
        data: Bytes::from_static(data.as_bytes()),
    };
    e.import(vec![imported(3, "three"), imported(4, "four")])
        .await
        .expect("import");
    e.import(vec![imported(4, "four again"), imported(6, "six")])
        .await
        .expect("import");
    let got = read_all(e, key(0)).await;
    assert_eq!(positions(&got), vec![3, 4, 6]);
    assert_eq!(got[1].data, Bytes::from_static(b"four"));
    assert_eq!(put1(e, STREAM, rec(0, "next"), 8).await.position, 7);
}

/// Retention drops a prefix of each listed shard by arrival time; the plan handed to
/// `persist` names the new starts and every end; a failing `persist` comes back as
/// `Aborted`; after a reopen, the persisted starts and ends put the engine back where it
/// was (trimmed records stay gone, positions go on).
async fn trim_by_retention(open: Open<'_>, name: &str) {
    let e = open(name);
    let p: Vec<u64> = {
        let e = e.as_ref();
        let mut p = Vec::new();
        for (t, now) in [(1, 1_000), (2, 1_000), (3, 2_000), (4, 3_000)] {
            let r = Append {
                ticket: Some(t),
                ..append(e, STREAM, vec![rec(0, format!("at {now}"))], now)
            };
            p.push(put(e, r).await[0].position);
        }
        put1(e, OTHER, rec(0, "other"), 1_000).await;
        p
    };
    let failed = e
        .trim(
            vec![(STREAM, 1_500)],
            Box::new(|_| Err(StreamError::Backend("cannot persist".into()))),
        )
        .await;
    assert!(
        matches!(&failed, Err(RecordError::Aborted(err)) if err.to_string().contains("cannot persist")),
        "{failed:?}"
    );
    let plan: Arc<std::sync::Mutex<TrimPlan>> = Arc::default();
    let keep = plan.clone();
    let trimmed = e
        .trim(
            vec![(STREAM, 2_500)],
            Box::new(move |p| {
                *keep.lock().expect("lock") = p.clone();
                Ok(())
            }),
        )
        .await
        .expect("trim");
    let plan = plan.lock().expect("lock").clone();
    assert!(
        trimmed <= 3,
        "at most the three records before the horizon go: {trimmed}"
    );
    assert_eq!(
        plan.starts,
        vec![(key(0), p[3])],
        "the shard starts at the first kept"
    );
    assert!(
        plan.ends.contains(&(
            key(0),
            ShardEnd {
                next: p[3] + 1,
                last_arrival_ms: 3_000
            }
        )) && plan.ends.iter().any(|(k, _)| k.stream == OTHER),
        "every shard's end is handed over: {:?}",
        plan.ends
    );
    assert_eq!(positions(&read_all(e.as_ref(), key(0)).await), vec![p[3]]);
    assert_eq!(
        e.first_at_or_after(key(0), 0).await.expect("lookup"),
        Some(p[3])
    );
    assert_eq!(
        e.delivered(1).await.expect("delivered"),
        None,
        "trimmed tickets go"
    );
    assert!(e.delivered(4).await.expect("delivered").is_some());
    assert_eq!(read_all(e.as_ref(), ShardKey::new(OTHER, 0)).await.len(), 1);
    // Everything goes; positions go on after it, after a reopen too (from the floor).
    e.trim(vec![(STREAM, 10_000)], Box::new(|_| Ok(())))
        .await
        .expect("trim all");
    assert!(read_all(e.as_ref(), key(0)).await.is_empty());
    drop(e);
    let e = open(name);
    for (k, start) in &plan.starts {
        e.drop_before(*k, *start).await.expect("drop before");
    }
    e.drop_before(key(0), p[3] + 1).await.expect("drop before");
    assert!(
        read_all(e.as_ref(), key(0)).await.is_empty(),
        "trimmed records stay gone"
    );
    let mut next = rec(0, "after");
    next.min_position = p[3] + 1;
    assert_eq!(
        put1(e.as_ref(), STREAM, next, 4_000).await.position,
        p[3] + 1,
        "positions go on, never reused"
    );
}

/// What was acknowledged is there after the engine is closed and opened again: records,
/// ends, delivered tickets; appends go on after them; verify finds nothing wrong.
async fn reopen_keeps_what_was_acknowledged(open: Open<'_>, name: &str) {
    let (written, ticket) = {
        let e = open(name);
        let e = e.as_ref();
        let mut written = Vec::new();
        for i in 0..30u64 {
            let r = NewRecord {
                partition_key: format!("key {i}"),
                ..rec(i % 3, format!("record {i}"))
            };
            written.push(put1(e, STREAM, r, 100 + i as i64).await);
        }
        let ticket = put(e, ticketed(e, 77, rec(0, "ticketed"))).await[0];
        (written, ticket)
    };
    let e = open(name);
    let e = e.as_ref();
    for shard in 0..3u64 {
        let got = read_all(e, key(shard)).await;
        let want: Vec<&Appended> = written.iter().filter(|a| a.shard == shard).collect();
        let extra = usize::from(shard == 0);
        assert_eq!(got.len(), want.len() + extra, "shard {shard} after reopen");
        for (r, a) in got.iter().zip(&want) {
            assert_eq!((r.position, r.arrival_ms), (a.position, a.arrival_ms));
            let i = written.iter().position(|w| w == *a).expect("written");
            assert_eq!(r.data, Bytes::from(format!("record {i}")));
            assert_eq!(r.partition_key, format!("key {i}"));
        }
    }
    assert_eq!(e.delivered(77).await.expect("delivered"), Some(ticket));
    assert_eq!(
        e.end(key(0)).await.expect("end").map(|x| x.next),
        Some(ticket.position + 1)
    );
    let next = put1(e, STREAM, rec(0, "after reopen"), 1).await;
    assert_eq!(
        next.position,
        ticket.position + 1,
        "no position handed out twice"
    );
    assert!(next.arrival_ms >= ticket.arrival_ms);
    let again = put(e, ticketed(e, 77, rec(1, "again"))).await;
    assert_eq!(again, vec![ticket], "tickets survive a reopen");
    let v = e.verify().await.expect("verify");
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert!(v.records >= 32, "{} records checked", v.records);
}
