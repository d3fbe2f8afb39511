use super::*;
use crate::ListShardsInput;

fn open() -> (EmbeddedStream, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("s.db"), MIGRATIONS).expect("db");
    (EmbeddedStream::open(db).expect("stream"), dir)
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
    let db = Db::open(&dir.path().join("s.db"), MIGRATIONS).expect("reopen");
    let s2 = EmbeddedStream::open(db).expect("stream");
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
    let db = Db::open(&dir.path().join("s.db"), MIGRATIONS).expect("db");
    let s = EmbeddedStream::open(db).expect("stream");
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
async fn records_written_before_stream_0003_survive_the_migration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    // A database as stream-0002 left it, with records in the WITHOUT ROWID table.
    let db = Db::open(&path, &MIGRATIONS[..2]).expect("old layout");
    let s = EmbeddedStream::open(db).expect("stream");
    s.create_stream("m", 2).await.expect("create");
    let mut written = Vec::new();
    for i in 0..50 {
        let r = s
            .put_record("m", rec(&format!("k{i}"), &format!("data-{i}")))
            .await
            .expect("put");
        written.push((r.sequence_number, format!("data-{i}")));
    }
    s.db().close();
    drop(s);
    let db = Db::open(&path, MIGRATIONS).expect("migrate");
    let s = EmbeddedStream::open(db).expect("stream");
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
    assert!(
        written
            .iter()
            .filter(|(seq, _)| crate::parse_sequence_number(seq).map(|x| x.0)
                == crate::parse_sequence_number(&next.sequence_number).map(|x| x.0))
            .all(|(seq, _)| *seq < next.sequence_number)
    );
    s.db().close();
}

#[test]
fn the_timestamp_search_agrees_with_a_scan_despite_gaps_and_ties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("t.db"), MIGRATIONS).expect("db");
    // Counters 10..200 with every third one missing (a trimmed prefix below 10, and gaps the
    // search must step over), arrival times non-decreasing with many ties.
    let rows: Vec<(u64, i64)> = (10u64..200)
        .filter(|c| c % 3 != 0)
        .map(|c| (c, 1_000 + (c as i64 / 4) * 7))
        .collect();
    let next_counter = 200u64;
    let inserted = rows.clone();
    db.write_blocking(move |c| {
        for (counter, arrival) in &inserted {
            c.execute(
                "INSERT INTO records (stream_id, shard_idx, counter, arrival_ms, partition_key,
                                      data, checksum)
                 VALUES (1, 3, ?1, ?2, 'k', x'00', NULL)",
                params![*counter as i64, arrival],
            )?;
        }
        Ok::<_, StreamError>(())
    })
    .expect("insert");
    db.read_blocking(|c| {
        for ts in 900..1_400 {
            let expected = rows
                .iter()
                .find(|(_, a)| *a >= ts)
                .map(|(c, _)| *c)
                .unwrap_or(next_counter);
            let found = schema::first_counter_at_or_after(c, 1, 3, next_counter, ts)?;
            // The search may answer a counter in a gap: reading from it starts at the same
            // record, so what must agree is the first stored record at or after it.
            let first_at_or_after = rows
                .iter()
                .map(|(c, _)| *c)
                .find(|c| *c >= found)
                .unwrap_or(next_counter);
            assert_eq!(first_at_or_after, expected, "timestamp {ts}");
            assert!(
                rows.iter()
                    .filter(|(c, _)| *c < found)
                    .all(|(_, a)| *a < ts),
                "nothing before {found} arrived at or after {ts}"
            );
        }
        Ok::<_, StreamError>(())
    })
    .expect("search");
    db.close();
}

/// Waits (polling, bounded) until the shard's records table holds `n` rows: the group that
/// holds them has committed, whatever its fsync is doing.
async fn committed_rows(s: &EmbeddedStream, n: i64) {
    for _ in 0..2_000 {
        let rows: i64 = s
            .db()
            .read(|c| {
                Ok::<_, StreamError>(c.query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))?)
            })
            .await
            .expect("count");
        if rows >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the records never committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_stay_hidden_until_their_commit_is_durable() {
    let (s, _d) = open();
    s.create_stream("s", 1).await.expect("create");
    let first = s.put_record("s", rec("k", "durable")).await.expect("put");
    let horizon = s
        .get_shard_iterator("s", &first.shard_id, IteratorSpec::TrimHorizon)
        .await
        .expect("iterator");

    // Committed but not fsynced: another connection could read the row, the stream must not.
    let held = s.db().hold_syncs();
    let pending = tokio::spawn({
        let s = s.clone();
        async move { s.put_record("s", rec("k", "in flight")).await }
    });
    committed_rows(&s, 2).await;
    let latest = s
        .get_shard_iterator("s", &first.shard_id, IteratorSpec::Latest)
        .await
        .expect("latest");
    let out = s.get_records(&horizon, 100).await.expect("get");
    assert_eq!(out.records.len(), 1, "a record not yet durable was visible");
    assert_eq!(out.records[0].data, Bytes::from("durable"));
    assert!(!pending.is_finished(), "acknowledged before its fsync");

    drop(held);
    let second = pending.await.expect("join").expect("put");
    let out = s.get_records(&horizon, 100).await.expect("get");
    let seqs: Vec<_> = out
        .records
        .iter()
        .map(|r| r.sequence_number.clone())
        .collect();
    assert_eq!(
        seqs,
        [first.sequence_number, second.sequence_number.clone()]
    );
    // LATEST taken while the record was in flight starts before it: it is not skipped.
    let out = s.get_records(&latest, 100).await.expect("get latest");
    assert_eq!(out.records.len(), 1);
    assert_eq!(out.records[0].sequence_number, second.sequence_number);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_visibility_is_shared_by_every_handle_of_the_database() {
    let (s, _d) = open();
    s.create_stream("s", 1).await.expect("create");
    let other = EmbeddedStream::open(s.db().clone()).expect("second handle");
    let held = s.db().hold_syncs();
    let pending = tokio::spawn({
        let s = s.clone();
        async move { s.put_record("s", rec("k", "in flight")).await }
    });
    committed_rows(&s, 1).await;
    let it = other
        .get_shard_iterator("s", &shard_id(0), IteratorSpec::TrimHorizon)
        .await
        .expect("iterator");
    let out = other.get_records(&it, 100).await.expect("get");
    assert!(
        out.records.is_empty(),
        "the other handle saw a record not yet durable"
    );
    drop(held);
    pending.await.expect("join").expect("put");
    let out = other.get_records(&it, 100).await.expect("get");
    assert_eq!(out.records.len(), 1);
}
