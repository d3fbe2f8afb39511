//! The record-engine conformance suite on NATS JetStream, against a `nats-server -js` this
//! test starts on a free port with its own store directory; and what only an engine
//! shared by several processes must do: two engines on one server (two connections, as
//! two `sluice` processes would hold) numbering one shard's records together and fencing
//! each other's appends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_stream::RecordLog;
use sluice_stream::records::jetstream::{JetStreamLog, Options};
use sluice_stream::records::{Append, AppendOutcome, FenceOutcome, NewRecord, ShardKey};
use sluice_stream::test_nats::NatsServer;

fn start_server() -> NatsServer {
    NatsServer::start()
}

fn open(url: &str, prefix: &str) -> Arc<JetStreamLog> {
    let opts = Options {
        prefix: prefix.to_owned(),
        ..Options::default()
    };
    let log = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(JetStreamLog::open(url, opts))
    })
    .expect("open the JetStream engine");
    Arc::new(log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_passes_the_records_suite() {
    let server = start_server();
    let url = server.url();
    let open = move |name: &str| open(&url, &format!("T_{name}")) as Arc<dyn RecordLog>;
    sluice_stream::records::conformance::run_all(&open).await;
    // By URL too.
    let by_url = sluice_stream::open_records(
        &format!(
            "{}?prefix=URL&replicas=1&duplicate_window=60s",
            server.url()
        ),
        std::path::Path::new("/nonexistent"),
    )
    .await
    .expect("open by URL");
    assert!(
        by_url.describe().contains("JetStream"),
        "{}",
        by_url.describe()
    );
}

fn rec(shard: u64, data: String) -> NewRecord {
    NewRecord {
        shard,
        min_position: 1,
        min_arrival_ms: 0,
        partition_key: "pk".into(),
        data: Bytes::from(data),
    }
}

async fn append(e: &JetStreamLog, epoch: u64, r: NewRecord) -> AppendOutcome {
    e.append(Append {
        stream: 1,
        epoch,
        ticket: None,
        now_ms: 1,
        records: vec![r],
    })
    .await
    .expect("append")
}

/// Two processes number one shard together, and a reshard fenced by one closes the shard
/// to the other: its appends from before the change either landed below the end the change
/// saw, or come back stale; none lands in the closed shard after it, ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_shards_and_fences() {
    let server = start_server();
    let a = open(&server.url(), "SHARED");
    let b = open(&server.url(), "SHARED");
    // Dense positions from both.
    let mut tasks = Vec::new();
    for (n, e) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..25 {
                match append(&e, e.epoch(), rec(0, format!("{n}/{i}"))).await {
                    AppendOutcome::Done(d) => got.push(d[0].position),
                    AppendOutcome::Stale(_) => panic!("stale without a fence"),
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=100).collect::<Vec<u64>>(),
        "dense across processes"
    );

    // `a` appends to shards 0 and 1 while `b` reshards shard 0 away.
    let epoch = a.epoch();
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut landed = Vec::new();
            let mut stale = 0;
            // Until the fence has sent a few appends back (a fixed count finished before
            // the fence on a quiet machine), or a bound the fence never takes this long for.
            for i in 0..100_000 {
                if stale >= 5 {
                    break;
                }
                let shard = i % 2;
                match append(&a, epoch, rec(shard, format!("w{i}"))).await {
                    AppendOutcome::Done(d) => landed.push((shard, d[0].position)),
                    AppendOutcome::Stale(_) => stale += 1,
                }
            }
            (landed, stale)
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let seen: Arc<std::sync::Mutex<Option<u64>>> = Arc::default();
    let s = seen.clone();
    b.fence(
        1,
        Box::new(move |ends| {
            *s.lock().expect("lock") = ends.iter().find(|(k, _)| *k == 0).map(|(_, e)| e.next);
            Ok(FenceOutcome::Resharded { closed: vec![0] })
        }),
    )
    .await
    .expect("fence");
    let end = seen.lock().expect("lock").expect("shard 0 has records");
    let (landed, stale) = writer.await.expect("writer");
    assert!(
        stale > 0,
        "appends routed before the change came back stale"
    );
    for (shard, p) in &landed {
        if *shard == 0 {
            assert!(
                *p < end,
                "an append landed in the closed shard at {p}, end {end}"
            );
        }
    }
    let e = a
        .end(ShardKey::new(1, 0))
        .await
        .expect("end")
        .expect("shard 0");
    assert_eq!(
        e.next, end,
        "nothing was written to the closed shard after the fence"
    );
    // With fresh metadata `a` routes elsewhere; the closed shard refuses even a new epoch.
    match append(&a, a.epoch(), rec(0, "late".into())).await {
        AppendOutcome::Stale(_) => {}
        AppendOutcome::Done(d) => panic!("a sealed shard took a record: {d:?}"),
    }
    match append(&a, a.epoch(), rec(1, "open".into())).await {
        AppendOutcome::Done(_) => {}
        AppendOutcome::Stale(_) => panic!("an open shard refused a current append"),
    }
    // A shard closed before it held anything is sealed too.
    b.fence(
        1,
        Box::new(|_| Ok(FenceOutcome::Resharded { closed: vec![5] })),
    )
    .await
    .expect("fence");
    match append(&a, a.epoch(), rec(5, "never".into())).await {
        AppendOutcome::Stale(_) => {}
        AppendOutcome::Done(d) => panic!("a shard closed while empty took a record: {d:?}"),
    }
    // A stream dropped by one process is gone for the other.
    b.fence(1, Box::new(|_| Ok(FenceOutcome::Dropped)))
        .await
        .expect("drop");
    match append(&a, a.epoch(), rec(1, "after drop".into())).await {
        AppendOutcome::Stale(_) => {}
        AppendOutcome::Done(d) => panic!("a dropped stream took a record: {d:?}"),
    }
    assert!(a.streams().await.expect("streams").is_empty());
}

/// The Kinesis layer's conformance suite with records on JetStream: metadata on SQLite and
/// on PostgreSQL, each case with a prefix of its own on one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_records_pass_the_stream_suite() {
    use sluice_stream::Stream;
    use sluice_stream::embedded::{EmbeddedStream, MIGRATIONS, StreamOptions};
    let server = start_server();
    let e = sluice_meta::conformance::TestEngines::new();
    for postgres in [false, true] {
        let counter = std::sync::atomic::AtomicU32::new(0);
        sluice_stream::conformance::run_all(|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (url, prefix) = if postgres {
                (e.postgres_url(&format!("case{n}")), format!("PG{n}"))
            } else {
                (e.sqlite_url(&format!("case-{n}")), format!("LITE{n}"))
            };
            let records = open(&server.url(), &prefix) as Arc<dyn RecordLog>;
            async move {
                let db = sluice_meta::open(&url, MIGRATIONS).expect("open metadata");
                Arc::new(
                    EmbeddedStream::open_on(db, records, StreamOptions::default())
                        .await
                        .expect("open stream"),
                ) as Arc<dyn Stream>
            }
        })
        .await;
    }
}

/// The server killed with -9 while appends go on, then started again on the same port and
/// store: an append while it is down fails as unavailable (never done), appends succeed
/// again by themselves once it is back (the client reconnects), every acknowledged record
/// is still there, and positions go on after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_nothing_acknowledged() {
    let mut server = start_server();
    let e = open(&server.url(), "RESTART");
    let mut acked = Vec::new();
    for i in 0..50 {
        match append(&e, e.epoch(), rec(0, format!("before {i}"))).await {
            AppendOutcome::Done(d) => acked.push(d[0].position),
            AppendOutcome::Stale(_) => panic!("stale without a fence"),
        }
    }
    server.kill9();
    let down = e
        .append(Append {
            stream: 1,
            epoch: e.epoch(),
            ticket: None,
            now_ms: 1,
            records: vec![rec(0, "while down".into())],
        })
        .await;
    assert!(
        matches!(down, Err(sluice_stream::RecordError::Unavailable(_))),
        "an append to a server that is down is unavailable: {down:?}"
    );
    server.start_again();
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        match e
            .append(Append {
                stream: 1,
                epoch: e.epoch(),
                ticket: None,
                now_ms: 1,
                records: vec![rec(0, "after".into())],
            })
            .await
        {
            Ok(AppendOutcome::Done(d)) => break d[0].position,
            Ok(AppendOutcome::Stale(_)) => panic!("stale without a fence"),
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "no append succeeded after the restart: {err}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let mut held = Vec::new();
    let mut from = 0;
    loop {
        let page = e
            .read(ShardKey::new(1, 0), from, 1000, 1 << 20)
            .await
            .expect("read");
        if page.records.is_empty() {
            break;
        }
        from = page.next;
        held.extend(page.records.iter().map(|r| r.position));
    }
    for p in &acked {
        assert!(held.contains(p), "acknowledged record {p} lost: {held:?}");
    }
    assert!(after > *acked.last().expect("acked"), "positions go on");
}
