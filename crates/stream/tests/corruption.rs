//! Damaged files, and what the embedded backend does with them.
//!
//! SQLite is the log here, so "corruption" means:
//! - a torn WAL tail (a crash while a commit was being written, or garbage after the last
//!   frame): SQLite's frame checksums stop recovery at the last complete commit; every
//!   commit before it (every acknowledged record) remains, nothing half-written appears;
//! - a flipped byte inside a record: the record's own checksum no longer matches; reads of
//!   it fail with an error naming it, `check()` reports it — never silently returned or
//!   skipped;
//! - damaged pages or a truncated database file: `check()` (SQLite's integrity check)
//!   reports problems and reads fail loudly.
//!
//! Each test works on a crash image: copies of the database and its WAL taken while the
//! writer was idle after acknowledged commits, as a power cut would leave them.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use sluice_db::Db;
use sluice_db::rusqlite::Connection;
use sluice_stream::embedded::{EmbeddedStream, MIGRATIONS};
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
    EmbeddedStream::open(Db::open(path, MIGRATIONS).expect("open db")).expect("open stream")
}

/// Copies the database and its WAL into `to` (a crash image of the idle database).
fn image(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).expect("mkdir");
    let db = to.join("s.db");
    std::fs::copy(from, &db).expect("copy db");
    let wal = PathBuf::from(format!("{}-wal", from.display()));
    if wal.exists() {
        std::fs::copy(&wal, format!("{}-wal", db.display())).expect("copy wal");
    }
    db
}

fn wal_of(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", db.display()))
}

/// Moves everything from the WAL into the database file, as a clean shutdown does.
fn checkpoint(db: &Path) {
    let c = Connection::open(db).expect("open image");
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

#[test]
fn a_torn_wal_tail_keeps_every_earlier_commit_and_no_partial_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live.db");
    runtime().block_on(async {
        let s = open(&live);
        s.create_stream("s", 2).await.expect("create");
        let a = put_n(&s, 0, 40).await;
        let wal_after_a = std::fs::metadata(wal_of(&live)).expect("wal").len();
        let b = put_n(&s, 40, 40).await;
        let img = image(&live, &dir.path().join("torn"));
        let full = std::fs::metadata(wal_of(&img)).expect("wal").len();
        assert!(full > wal_after_a, "commits of b are in the wal");
        // Cut the WAL in the middle of b's frames, not on a frame boundary.
        let cut = wal_after_a + (full - wal_after_a) / 2 + 17;
        std::fs::OpenOptions::new()
            .write(true)
            .open(wal_of(&img))
            .expect("open wal")
            .set_len(cut)
            .expect("truncate");
        let s2 = open(&img);
        let got = all_records(&s2).await.expect("readable");
        let expected_a: Vec<String> = a.iter().map(|(_, r)| r.sequence_number.clone()).collect();
        for seq in &expected_a {
            assert!(
                got.iter().any(|(g, _)| g == seq),
                "commit {seq} before the tear is kept"
            );
        }
        // What survives of b is a prefix of b's commits, each whole.
        let survivors: Vec<&(usize, PutResult)> = b
            .iter()
            .filter(|(_, r)| got.iter().any(|(g, _)| *g == r.sequence_number))
            .collect();
        assert!(
            survivors.len() < b.len(),
            "the tear removed the last commits"
        );
        for (k, (i, r)) in survivors.iter().enumerate() {
            assert_eq!(*i, 40 + k, "surviving commits are a prefix");
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
        assert!(s2.check().await.expect("check").is_ok());
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

        // Garbage after the last frame (a torn next commit) loses nothing.
        let img = image(&live, &dir.path().join("garbage"));
        let mut wal = std::fs::read(wal_of(&img)).expect("read wal");
        wal.extend(std::iter::repeat_n(0xA5u8, 10_000));
        std::fs::write(wal_of(&img), wal).expect("write wal");
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
        checkpoint(&img);
        let mut bytes = std::fs::read(&img).expect("read db");
        let marker = b"MARK-00042-";
        let at = bytes
            .windows(marker.len())
            .position(|w| w == marker)
            .expect("record in the file");
        bytes[at + marker.len() + 50] ^= 0x01;
        std::fs::write(&img, bytes).expect("write db");

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
        // Reading the victim's shard fails loudly; the other shard still reads.
        let it = s2
            .get_shard_iterator("s", &victim.shard_id, IteratorSpec::TrimHorizon)
            .await
            .expect("iterator");
        match s2.get_records(&it, 10_000).await {
            Err(StreamError::Backend(m)) => assert!(m.contains("checksum"), "{m}"),
            other => panic!(
                "a damaged record must fail the read, got {:?}",
                other.map(|o| o.records.len())
            ),
        }
        let other = if victim.shard_id == shard_id(0) {
            shard_id(1)
        } else {
            shard_id(0)
        };
        let it = s2
            .get_shard_iterator("s", &other, IteratorSpec::TrimHorizon)
            .await
            .expect("iterator");
        let expected = written.iter().filter(|(_, r)| r.shard_id == other).count();
        assert_eq!(
            s2.get_records(&it, 10_000)
                .await
                .expect("read")
                .records
                .len(),
            expected
        );
        s2.db().close();
        s.db().close();
    });
}

#[test]
fn damaged_pages_and_a_truncated_file_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live.db");
    runtime().block_on(async {
        let s = open(&live);
        s.create_stream("s", 1).await.expect("create");
        put_n(&s, 0, 300).await;

        // Garbage over a page of the records table.
        let img = image(&live, &dir.path().join("page"));
        checkpoint(&img);
        let (root, page_size): (i64, i64) = {
            let c = Connection::open(&img).expect("open");
            let root = c
                .query_row(
                    "SELECT rootpage FROM sqlite_master WHERE name = 'records'",
                    [],
                    |r| r.get(0),
                )
                .expect("root page");
            let ps = c
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .expect("page size");
            (root, ps)
        };
        let mut bytes = std::fs::read(&img).expect("read");
        let off = ((root - 1) * page_size) as usize;
        for b in &mut bytes[off..off + 64] {
            *b = 0xFF;
        }
        std::fs::write(&img, &bytes).expect("write");
        let s2 = open(&img);
        let report = s2.check().await.expect("check runs");
        assert!(!report.is_ok(), "a damaged page must be reported");
        assert!(
            all_records(&s2).await.is_err(),
            "reads of damaged pages fail"
        );
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
        let outcome = match Db::open(&img, MIGRATIONS) {
            Err(e) => Err(e.to_string()),
            Ok(db) => {
                let s3 = EmbeddedStream::open(db).expect("stream");
                let report = s3.check().await.expect("check runs");
                let read = all_records(&s3).await;
                s3.db().close();
                Ok((report, read.is_err()))
            }
        };
        match outcome {
            Err(open_error) => assert!(!open_error.is_empty()),
            Ok((report, read_failed)) => {
                assert!(
                    !report.is_ok() || read_failed,
                    "a truncated file must not pass silently"
                );
                assert!(
                    !report.is_ok(),
                    "check() reports the truncation: {:?}",
                    report
                );
            }
        }
        s.db().close();
    });
}
