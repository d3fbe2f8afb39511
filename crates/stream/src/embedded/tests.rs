use super::*;
use crate::ListShardsInput;

fn open() -> (EmbeddedStream, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let db = Meta::open_sqlite(&path, MIGRATIONS).expect("db");
    (
        EmbeddedStream::open(db, &log_dir_of(&path)).expect("stream"),
        dir,
    )
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
    // An invalid record fails the whole request (as on Kinesis), and nothing is written.
    assert!(matches!(
        s.put_records("s", vec![rec("a", "1"), rec("", "2"), rec("c", "3")])
            .await,
        Err(StreamError::InvalidArgument(_))
    ));
    assert_eq!(
        s.describe_stream("s")
            .await
            .expect("describe")
            .shards
            .iter()
            .filter(|sh| sh.ending_sequence_number.is_none())
            .count(),
        2
    );
    for sh in s.describe_stream("s").await.expect("describe").shards {
        assert!(
            crate::conformance::read_shard(&s, "s", &sh.shard_id)
                .await
                .is_empty()
        );
    }
}

#[tokio::test]
async fn sequence_numbers_survive_reopen_and_trimming() {
    let (s, dir) = open();
    s.create_stream("s", 1).await.expect("create");
    let first = s.put_record("s", rec("k", "a")).await.expect("put");
    s.db()
        .write(|c| {
            c.execute("DELETE FROM records", params![])?;
            Ok::<_, StreamError>(())
        })
        .await
        .expect("trim");
    s.db().close();
    let path = dir.path().join("s.db");
    let db = Meta::open_sqlite(&path, MIGRATIONS).expect("reopen");
    let s2 = EmbeddedStream::open(db, &log_dir_of(&path)).expect("stream");
    let second = s2.put_record("s", rec("k", "b")).await.expect("put");
    assert!(second.sequence_number > first.sequence_number);
}

const HOUR: i64 = 3_600_000;

#[tokio::test]
async fn retention_trims_records_and_expired_shards_and_honours_changes() {
    let (s, _d) = open();
    s.create_stream("r", 1).await.expect("create");
    let first = s.put_record("r", rec("k", "old")).await.expect("put");
    s.increase_retention("r", 48).await.expect("increase");
    let now = now_ms();
    assert_eq!(
        s.trim_expired(now + 25 * HOUR).await.expect("trim"),
        TrimReport::default(),
        "48 h retention keeps a record 25 h old"
    );
    s.decrease_retention("r", 24).await.expect("decrease");
    s.split_shard("r", &shard_id(0), 1 << 100)
        .await
        .expect("split");
    let report = s.trim_expired(now + 25 * HOUR).await.expect("trim");
    assert_eq!(
        report,
        TrimReport {
            records: 1,
            shards: 1
        }
    );
    // The closed parent is gone everywhere; TRIM_HORIZON of the children starts after it.
    assert!(matches!(
        s.get_shard_iterator("r", &shard_id(0), IteratorSpec::TrimHorizon)
            .await,
        Err(StreamError::ResourceNotFound(_))
    ));
    let listed = s
        .list_shards(ListShardsInput {
            stream: Some("r".into()),
            ..ListShardsInput::default()
        })
        .await
        .expect("list");
    let ids: Vec<_> = listed.shards.iter().map(|x| x.shard_id.clone()).collect();
    assert_eq!(ids, vec![shard_id(1), shard_id(2)]);
    let next = s.put_record("r", rec("k", "new")).await.expect("put");
    assert!(next.sequence_number > first.sequence_number);
    // A record trimmed from an open shard is gone for every iterator type.
    s.trim_expired(now_ms() + 25 * HOUR).await.expect("trim");
    for spec in [
        IteratorSpec::TrimHorizon,
        IteratorSpec::AtTimestamp(0),
        IteratorSpec::AtSequenceNumber(next.sequence_number.clone()),
    ] {
        let it = s
            .get_shard_iterator("r", &next.shard_id, spec)
            .await
            .expect("iterator");
        assert!(
            s.get_records(&it, 10)
                .await
                .expect("get")
                .records
                .is_empty()
        );
    }
}

#[tokio::test]
async fn check_reports_a_clean_database() {
    let (s, _d) = open();
    s.create_stream("c", 2).await.expect("create");
    for i in 0..20 {
        s.put_record("c", rec(&format!("k{i}"), "v"))
            .await
            .expect("put");
    }
    let report = s.check().await.expect("check");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records_checked, 20);
}

#[test]
fn appends_work_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let db = Meta::open_sqlite(&path, MIGRATIONS).expect("db");
    let s = EmbeddedStream::open(db, &log_dir_of(&path)).expect("stream");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        s.create_stream("x", 1).await.expect("create");
        let a = s.put_record("x", rec("k", "a")).await.expect("put");
        let b = s.put_record("x", rec("k", "b")).await.expect("put");
        assert!(a.sequence_number < b.sequence_number);
    });
}

#[tokio::test]
async fn records_an_older_sluice_kept_in_sqlite_move_into_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    // A database as stream-0004 left it: records in the `records` table.
    let db = Meta::open_sqlite(&path, &MIGRATIONS[..4]).expect("old layout");
    let mut written = Vec::new();
    db.write_blocking(|c| {
        c.execute(
            "INSERT INTO streams (id, name, created_ms, retention_hours, max_record_bytes,
                                  next_shard_idx, on_demand)
             VALUES (1, 'm', ?1, 24, 1048576, 2, 0)",
            params![sluice_meta::now_ms()],
        )?;
        for (idx, (start, end)) in crate::even_ranges(2).into_iter().enumerate() {
            c.execute(
                "INSERT INTO shards (stream_id, idx, start_hash, end_hash, start_counter,
                                     next_counter, last_arrival_ms, created_ms)
                 VALUES (1, ?1, ?2, ?3, 0, 26, ?4, ?4)",
                params![
                    idx as i64,
                    start.to_string(),
                    end.to_string(),
                    sluice_meta::now_ms()
                ],
            )?;
        }
        Ok::<_, StreamError>(())
    })
    .expect("stream rows");
    for idx in 0..2u64 {
        for counter in 1..26u64 {
            let data = format!("data-{idx}-{counter}");
            written.push((crate::sequence_number(idx, counter), data.clone()));
            db.write_blocking(move |c| {
                c.execute(
                    "INSERT INTO records (stream_id, shard_idx, counter, arrival_ms,
                                          partition_key, data, checksum)
                     VALUES (1, ?1, ?2, ?3, 'k', ?4, ?5)",
                    params![
                        idx as i64,
                        counter as i64,
                        sluice_meta::now_ms(),
                        data.as_bytes(),
                        crate::record_checksum(counter, "k", data.as_bytes()) as i64
                    ],
                )?;
                Ok::<_, StreamError>(())
            })
            .expect("record row");
        }
    }
    db.close();
    drop(db);
    let db = Meta::open_sqlite(&path, MIGRATIONS).expect("migrate");
    let s = EmbeddedStream::open(db, &log_dir_of(&path)).expect("stream");
    let left: i64 = s
        .db()
        .read(|c| {
            Ok::<_, StreamError>(
                c.query_row("SELECT COUNT(*) FROM records", params![], |r| r.get(0))?,
            )
        })
        .await
        .expect("count");
    assert_eq!(left, 0, "the old rows are deleted once in the log");
    let mut got = Vec::new();
    for shard in [shard_id(0), shard_id(1)] {
        for r in crate::conformance::read_shard(&s, "m", &shard).await {
            got.push((
                r.sequence_number,
                String::from_utf8(r.data.to_vec()).expect("utf8"),
            ));
        }
    }
    got.sort();
    written.sort();
    assert_eq!(got, written);
    let report = s.check().await.expect("check");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records_checked, 50);
    let next = s.put_record("m", rec("k0", "after")).await.expect("put");
    let (idx, counter) = crate::parse_sequence_number(&next.sequence_number).expect("seq");
    assert!(
        idx < 2 && counter == 26,
        "continues after the moved records: {idx} {counter}"
    );
    s.db().close();
}

#[tokio::test]
async fn an_outbox_record_is_delivered_exactly_once_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let s = EmbeddedStream::open(
        Meta::open_sqlite(&path, MIGRATIONS).expect("db"),
        &log_dir_of(&path),
    )
    .expect("stream");
    s.create_stream("o", 2).await.expect("create");
    // Refused inside the caller's transaction: unknown stream, invalid record.
    let err = s
        .db()
        .write(|c| enqueue_in_tx(c, "nope", &rec("k", "x")))
        .await
        .expect_err("unknown stream");
    assert!(matches!(err, StreamError::ResourceNotFound(_)), "{err:?}");
    let err = s
        .db()
        .write(|c| enqueue_in_tx(c, "o", &rec("", "x")))
        .await
        .expect_err("empty partition key");
    assert!(matches!(err, StreamError::InvalidArgument(_)), "{err:?}");

    let ticket = s
        .db()
        .write(|c| enqueue_in_tx(c, "o", &rec("k", "outboxed")))
        .await
        .expect("enqueue");
    assert_eq!(s.pending_tickets().await.expect("pending"), vec![ticket]);
    let first = s.deliver(ticket).await.expect("deliver");
    let again = s.deliver(ticket).await.expect("deliver again");
    assert_eq!(first, again, "a second delivery returns the first result");
    // A crash before the owner settled the ticket: after reopening, delivering it again
    // still appends nothing new.
    s.db().close();
    drop(s);
    let s = EmbeddedStream::open(
        Meta::open_sqlite(&path, MIGRATIONS).expect("db"),
        &log_dir_of(&path),
    )
    .expect("stream");
    assert_eq!(s.pending_tickets().await.expect("pending"), vec![ticket]);
    assert_eq!(s.deliver(ticket).await.expect("after restart"), first);
    s.db()
        .write(move |c| settle_in_tx(c, ticket))
        .await
        .expect("settle");
    assert!(s.pending_tickets().await.expect("pending").is_empty());
    let mut all = Vec::new();
    for shard in [shard_id(0), shard_id(1)] {
        all.extend(crate::conformance::read_shard(&s, "o", &shard).await);
    }
    assert_eq!(all.len(), 1, "exactly one record");
    assert_eq!(all[0].sequence_number, first.sequence_number);
    assert_eq!(all[0].data, Bytes::from("outboxed"));
    // A new ticket is never one handed out before (the log remembers delivered ones).
    let next = s
        .db()
        .write(|c| enqueue_in_tx(c, "o", &rec("k", "second")))
        .await
        .expect("enqueue");
    assert!(next > ticket);
    assert_ne!(s.deliver(next).await.expect("deliver"), first);
    s.db().close();
}

fn segment_files(db: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(log_dir_of(db))
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn records_span_segments_and_retention_deletes_whole_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("seg.db");
    let options = || StreamOptions {
        segment_bytes: 8 * 1024,
        ..StreamOptions::default()
    };
    let s = EmbeddedStream::open_with(
        Meta::open_sqlite(&path, MIGRATIONS).expect("db"),
        &log_dir_of(&path),
        options(),
    )
    .expect("stream");
    s.create_stream("g", 2).await.expect("create");
    let t0 = 1_000_000i64;
    let mut written = Vec::new();
    for i in 0..120 {
        let r = s
            .put_records(
                "g",
                vec![rec(
                    &format!("k{}", i % 7),
                    &format!("{i:04}-{}", "z".repeat(300)),
                )],
            )
            .await
            .expect("put")
            .remove(0)
            .expect("record");
        written.push(r);
    }
    let files = segment_files(&path);
    assert!(files.len() >= 4, "several segments: {files:?}");
    // Sealed segments hold frames only (no zeros written ahead).
    for f in &files[..files.len() - 1] {
        assert!(
            std::fs::metadata(f).expect("meta").len() <= 8 * 1024,
            "{f:?}"
        );
    }
    let read_all = |s: EmbeddedStream| async move {
        let mut all = Vec::new();
        for shard in [shard_id(0), shard_id(1)] {
            all.extend(
                crate::conformance::read_shard(&s, "g", &shard)
                    .await
                    .into_iter()
                    .map(|r| r.sequence_number),
            );
        }
        all.sort();
        all
    };
    let mut expected: Vec<String> = written.iter().map(|r| r.sequence_number.clone()).collect();
    expected.sort();
    assert_eq!(read_all(s.clone()).await, expected);
    let report = s.check().await.expect("check");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records_checked, 120);
    s.db().close();
    drop(s);

    // Reopened: the same records, read across the same segments.
    let s = EmbeddedStream::open_with(
        Meta::open_sqlite(&path, MIGRATIONS).expect("db"),
        &log_dir_of(&path),
        options(),
    )
    .expect("stream");
    assert_eq!(read_all(s.clone()).await, expected);
    // Everything expires: every segment but the one being written goes, and the trimmed
    // records stay gone after a restart; numbering goes on.
    let report = s
        .trim_expired(sluice_meta::now_ms() + 25 * 3_600_000 + t0)
        .await
        .expect("trim");
    assert_eq!(report.records, 120);
    assert!(read_all(s.clone()).await.is_empty());
    assert_eq!(segment_files(&path).len(), 1, "{:?}", segment_files(&path));
    s.db().close();
    drop(s);
    let s = EmbeddedStream::open_with(
        Meta::open_sqlite(&path, MIGRATIONS).expect("db"),
        &log_dir_of(&path),
        options(),
    )
    .expect("stream");
    assert!(
        read_all(s.clone()).await.is_empty(),
        "trimmed records came back"
    );
    let next = s.put_record("g", rec("k0", "after")).await.expect("put");
    let (idx, counter) = crate::parse_sequence_number(&next.sequence_number).expect("seq");
    let before = written
        .iter()
        .filter_map(|r| crate::parse_sequence_number(&r.sequence_number))
        .filter(|(i, _)| *i == idx)
        .map(|(_, c)| c)
        .max()
        .expect("records of that shard");
    assert!(
        counter > before,
        "numbers go on after trimming: {counter} vs {before}"
    );
    s.db().close();
}

#[tokio::test]
async fn an_append_holding_metadata_from_before_a_split_is_redone_on_the_children() {
    let (s, _d) = open();
    s.create_stream("x", 1).await.expect("create");
    s.put_record("x", rec("k", "before")).await.expect("put");
    let old = s
        .shared
        .cached_meta("x")
        .expect("metadata cached by the append");
    s.split_shard("x", &shard_id(0), u128::MAX / 2 + 1)
        .await
        .expect("split");
    // A loader that read the shards before the split put its result in the cache after it.
    s.shared.cache_meta(old);
    let r = s.put_record("x", rec("k", "after")).await.expect("put");
    assert_ne!(
        r.shard_id,
        shard_id(0),
        "nothing lands in the closed parent"
    );
    let parent = crate::conformance::read_shard(&s, "x", &shard_id(0)).await;
    assert_eq!(parent.len(), 1);
}

/// `open` prepares the log by waiting on futures from inside whatever task calls it; many
/// opens in one task (a benchmark opening a database per trial) must not exhaust the
/// task's cooperative budget and spin.
#[test]
fn opening_many_streams_inside_one_task_finishes() {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            for i in 0..100 {
                let path = root.join(format!("{i}.db"));
                let db = Meta::open_sqlite(&path, MIGRATIONS).expect("db");
                drop(EmbeddedStream::open(db, &log_dir_of(&path)).expect("stream"));
            }
        });
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("100 opens in one task finished");
}
