//! Damaged files, and what the embedded backend does with them.
//!
//! Records live in the stream log (segment files beside the database), so "corruption"
//! means:
//! - a torn tail (a crash while a batch was being written, or garbage after the last
//!   frame): the scan at open cuts the last segment back to the last complete frame; every
//!   acknowledged record remains, nothing half-written appears;
//! - a flipped byte inside a record: its frame's CRC no longer matches; opening reports it
//!   (naming the record), reads reach the records before it and then fail with an error
//!   naming it, `check()` reports it — never silently returned or skipped;
//! - garbage over several frames: the same, for every record lost;
//! - a truncated database file (the metadata): `check()` (SQLite's integrity check)
//!   reports problems or opening fails.
//!
//! Each test works on a crash image: copies of the database, its WAL and the log taken
//! while the writer was idle after acknowledged appends, as a power cut would leave them.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use sluice_meta::Meta;
use sluice_stream::embedded::{EmbeddedStream, MIGRATIONS, log_dir_of};
use sluice_stream::{IteratorSpec, PutRecord, PutResult, Stream, StreamError, shard_id};

fn rec(pk: &str, data: String) -> PutRecord {
    PutRecord {
        partition_key: pk.to_owned(),
        explicit_hash_key: None,
        data: Bytes::from(data),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn open(path: &Path) -> EmbeddedStream {
    EmbeddedStream::open(
        Meta::open_sqlite(path, MIGRATIONS).expect("open db"),
        &log_dir_of(path),
    )
    .expect("open stream")
}

fn log_of(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-stream-log", db.display()))
}

/// Copies the database, its WAL and its stream log into `to` (a crash image of the idle
/// database).
fn image(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).expect("mkdir");
    let db = to.join("s.db");
    std::fs::copy(from, &db).expect("copy db");
    let wal = PathBuf::from(format!("{}-wal", from.display()));
    if wal.exists() {
        std::fs::copy(&wal, format!("{}-wal", db.display())).expect("copy wal");
    }
    std::fs::create_dir_all(log_of(&db)).expect("mkdir log");
    for e in std::fs::read_dir(log_of(from)).expect("list log") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), log_of(&db).join(e.file_name())).expect("copy segment");
    }
    db
}

/// The segment files of a database's log, in order.
fn segments(db: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(log_of(db))
        .expect("list log")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// Where the data of record `i` (as `put_n` wrote it) lies in the log.
fn offset_of(db: &Path, i: usize) -> (PathBuf, usize) {
    let marker = format!("MARK-{i:05}-");
    for seg in segments(db) {
        let bytes = std::fs::read(&seg).expect("read segment");
        if let Some(at) = bytes
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
        {
            return (seg, at);
        }
    }
    panic!("record {i} is not in the log");
}

/// Moves everything from the WAL into the database file, as a clean shutdown does.
fn checkpoint(db: &Path) {
    let c = rusqlite::Connection::open(db).expect("open image");
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    drop(c);
}

async fn put_n(s: &EmbeddedStream, from: usize, n: usize) -> Vec<(usize, PutResult)> {
    let mut out = Vec::new();
    for i in from..from + n {
        let r = s
            .put_record(
                "s",
                rec(
                    &format!("k{}", i % 5),
                    format!("MARK-{i:05}-{}", "x".repeat(200)),
                ),
            )
            .await
            .expect("put");
        out.push((i, r));
    }
    out
}

async fn all_records(s: &EmbeddedStream) -> Result<Vec<(String, Bytes)>, StreamError> {
    let d = s.describe_stream("s").await?;
    let mut out = Vec::new();
    for sh in d.shards {
        let it = s
            .get_shard_iterator("s", &sh.shard_id, IteratorSpec::TrimHorizon)
            .await?;
        let page = s.get_records(&it, 10_000).await?;
        out.extend(
            page.records
                .into_iter()
                .map(|r| (r.sequence_number, r.data)),
        );
    }
    out.sort();
    Ok(out)
}

/// Reads a shard from TRIM_HORIZON until it ends or a read fails: the records read, and
/// the error that stopped it.
async fn read_until_error(
    s: &EmbeddedStream,
    shard: &str,
) -> (Vec<(String, Bytes)>, Option<StreamError>) {
    let mut it = s
        .get_shard_iterator("s", shard, IteratorSpec::TrimHorizon)
        .await
        .expect("iterator");
    let mut got = Vec::new();
    loop {
        match s.get_records(&it, 10_000).await {
            Ok(page) => {
                let empty = page.records.is_empty();
                got.extend(
                    page.records
                        .into_iter()
                        .map(|r| (r.sequence_number, r.data)),
                );
                match page.next_iterator {
                    Some(n) if !empty => it = n,
                    _ => return (got, None),
                }
            }
            Err(e) => return (got, Some(e)),
        }
    }
}

#[test]
fn a_torn_tail_keeps_every_acknowledged_record_and_no_partial_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live.db");
    runtime().block_on(async {
        let s = open(&live);
        s.create_stream("s", 2).await.expect("create");
        let a = put_n(&s, 0, 40).await;
        let b = put_n(&s, 40, 40).await;
        let img = image(&live, &dir.path().join("torn"));
        assert_eq!(segments(&img).len(), 1);
        // Cut the log in the middle of b's frames, not on a frame boundary: as if the
        // power went while b was being written, before its fsync.
        let (seg, at) = offset_of(&img, 60);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open segment")
            .set_len(at as u64 + 17)
            .expect("truncate");
        let s2 = open(&img);
        let got = all_records(&s2).await.expect("readable");
        for (_, r) in &a {
            assert!(
                got.iter().any(|(g, _)| *g == r.sequence_number),
                "record {} before the tear is kept",
                r.sequence_number
            );
        }
        // What survives of b is a prefix of b, each record whole.
        let survivors: Vec<&(usize, PutResult)> = b
            .iter()
            .filter(|(_, r)| got.iter().any(|(g, _)| *g == r.sequence_number))
            .collect();
        assert!(
            survivors.len() < b.len(),
            "the tear removed the last records"
        );
        for (k, (i, r)) in survivors.iter().enumerate() {
            assert_eq!(*i, 40 + k, "surviving records are a prefix");
            let data = &got
                .iter()
                .find(|(g, _)| *g == r.sequence_number)
                .expect("present")
                .1;
            assert!(data.starts_with(format!("MARK-{i:05}-").as_bytes()));
            assert_eq!(data.len(), 11 + 200);
        }
        assert_eq!(
            got.len(),
            a.len() + survivors.len(),
            "nothing half-written appears"
        );
        let report = s2.check().await.expect("check");
        assert!(
            report.is_ok(),
            "a torn tail is not corruption: {:?}",
            report.problems
        );
        // Appending continues above the last surviving record of its shard.
        let next = s2
            .put_record("s", rec("k0", "after".into()))
            .await
            .expect("append");
        let shard_of = |seq: &str| sluice_stream::parse_sequence_number(seq).map(|x| x.0);
        for (g, _) in got
            .iter()
            .filter(|(g, _)| shard_of(g) == shard_of(&next.sequence_number))
        {
            assert!(
                *g < next.sequence_number,
                "numbers keep growing after recovery"
            );
        }
        s2.db().close();
        drop(s2);
        // The cut tail stays cut: reopening finds the same records plus the new one.
        let s2 = open(&img);
        assert_eq!(
            all_records(&s2).await.expect("readable").len(),
            got.len() + 1
        );
        s2.db().close();

        // Garbage after the last frame (a torn next batch) loses nothing.
        let img = image(&live, &dir.path().join("garbage"));
        let seg = segments(&img)[0].clone();
        let mut bytes = std::fs::read(&seg).expect("read segment");
        bytes.extend(std::iter::repeat_n(0xA5u8, 10_000));
        std::fs::write(&seg, bytes).expect("write segment");
        let s3 = open(&img);
        assert_eq!(all_records(&s3).await.expect("readable").len(), 80);
        assert!(s3.check().await.expect("check").is_ok());
        s3.db().close();
        s.db().close();
    });
}

#[test]
fn a_flipped_byte_in_a_record_is_reported_never_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live.db");
    runtime().block_on(async {
        let s = open(&live);
        s.create_stream("s", 2).await.expect("create");
        let written = put_n(&s, 0, 60).await;
        let img = image(&live, &dir.path().join("flip"));
        let seg = segments(&img)[0].clone();
        let mut bytes = std::fs::read(&seg).expect("read segment");
        let marker = b"MARK-00042-";
        let at = bytes
            .windows(marker.len())
            .position(|w| w == marker)
            .expect("record in the log");
        bytes[at + marker.len() + 50] ^= 0x01;
        std::fs::write(&seg, &bytes).expect("write segment");

        let s2 = open(&img);
        let report = s2.check().await.expect("check runs");
        let victim = &written[42].1;
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(
            report.problems[0].contains(&victim.sequence_number)
                && report.problems[0].contains("checksum"),
            "{:?}",
            report.problems
        );
        // Reading the victim's shard returns the records before it, then fails loudly;
        // the victim is never returned, nor anything after it skipped over.
        let (got, err) = read_until_error(&s2, &victim.shard_id).await;
        match err {
            Some(StreamError::Backend(m)) => {
                assert!(
                    m.contains(&victim.sequence_number) && m.contains("checksum"),
                    "{m}"
                )
            }
            other => panic!("a damaged record must fail the read, got {other:?}"),
        }
        let before: Vec<String> = written
            .iter()
            .filter(|(i, r)| *i < 42 && r.shard_id == victim.shard_id)
            .map(|(_, r)| r.sequence_number.clone())
            .collect();
        assert_eq!(got.into_iter().map(|(g, _)| g).collect::<Vec<_>>(), before);
        // Past the damage (AFTER_SEQUENCE_NUMBER of the victim) the shard reads on.
        let it = s2
            .get_shard_iterator(
                "s",
                &victim.shard_id,
                IteratorSpec::AfterSequenceNumber(victim.sequence_number.clone()),
            )
            .await
            .expect("iterator after the damage");
        let after = s2.get_records(&it, 10_000).await.expect("read after");
        let expected_after = written
            .iter()
            .filter(|(i, r)| *i > 42 && r.shard_id == victim.shard_id)
            .count();
        assert_eq!(after.records.len(), expected_after);
        // The other shard reads whole.
        let other = if victim.shard_id == shard_id(0) {
            shard_id(1)
        } else {
            shard_id(0)
        };
        let (got, err) = read_until_error(&s2, &other).await;
        assert!(err.is_none(), "{err:?}");
        let expected = written.iter().filter(|(_, r)| r.shard_id == other).count();
        assert_eq!(got.len(), expected);
        // Corruption is reported, not repaired: the file is as it was.
        assert_eq!(std::fs::read(&seg).expect("read"), bytes);
        s2.db().close();
        s.db().close();
    });
}

#[test]
fn garbage_over_frames_and_a_truncated_database_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live.db");
    runtime().block_on(async {
        let s = open(&live);
        s.create_stream("s", 1).await.expect("create");
        put_n(&s, 0, 300).await;

        // Garbage over 2 KiB in the middle of the log: several records lost.
        let img = image(&live, &dir.path().join("garbage"));
        let (seg, mid) = offset_of(&img, 150);
        let mut bytes = std::fs::read(&seg).expect("read");
        for b in &mut bytes[mid..mid + 2048] {
            *b = 0xFF;
        }
        std::fs::write(&seg, &bytes).expect("write");
        let s2 = open(&img);
        let report = s2.check().await.expect("check runs");
        assert!(!report.is_ok(), "damaged frames must be reported");
        let (got, err) = read_until_error(&s2, &shard_id(0)).await;
        assert!(err.is_some(), "reads reaching the damage fail");
        assert!(!got.is_empty() && got.len() < 300);
        s2.db().close();

        // A database file cut in the middle.
        let img = image(&live, &dir.path().join("cut"));
        checkpoint(&img);
        let len = std::fs::metadata(&img).expect("meta").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .expect("open")
            .set_len(len / 2 + 100)
            .expect("truncate");
        let outcome = match Meta::open_sqlite(&img, MIGRATIONS) {
            Err(e) => Err(e.to_string()),
            Ok(db) => match EmbeddedStream::open(db.clone(), &log_dir_of(&img)) {
                Err(e) => {
                    db.close();
                    Err(e.to_string())
                }
                Ok(s3) => {
                    let report = s3.check().await.expect("check runs");
                    s3.db().close();
                    Ok(report)
                }
            },
        };
        match outcome {
            Err(open_error) => assert!(!open_error.is_empty()),
            Ok(report) => assert!(
                !report.is_ok(),
                "check() reports the truncation: {report:?}"
            ),
        }
        s.db().close();
    });
}
