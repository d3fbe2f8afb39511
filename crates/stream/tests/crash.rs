//! Crash test: a child process appends from several producers at once and prints every
//! acknowledged sequence number; the parent kills it with SIGKILL mid-stream, reopens the
//! database and checks that every acknowledged record is there, byte for byte, in order, and
//! that sequence numbers never repeat or go backwards. 20 rounds on one database, or
//! `$SLUICE_STREAM_CRASH_ROUNDS` (`scripts/crash-stream [rounds]` runs many more), with
//! small segments so that kills also land while segments are sealed, created and zero-filled.
//!
//! The child is this same test binary, re-executed to run only `child_appender` with the
//! database path in its environment (without it, `child_appender` does nothing).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use sluice_meta::Meta;
use sluice_stream::embedded::{EmbeddedStream, MIGRATIONS, StreamOptions, log_dir_of};
use sluice_stream::{PutRecord, Stream};

const DB_ENV: &str = "SLUICE_STREAM_CRASH_DB";
const ROUND_ENV: &str = "SLUICE_STREAM_CRASH_ROUND";
const PRODUCERS: u32 = 8;
const ROUNDS_ENV: &str = "SLUICE_STREAM_CRASH_ROUNDS";
const DEFAULT_ROUNDS: u32 = 20;

/// 64 KiB segments: a round rolls over to new segments several times, so kills land
/// during segment changes and zero-filling too, not only mid-batch.
fn options() -> StreamOptions {
    StreamOptions {
        segment_bytes: 64 * 1024,
        ..StreamOptions::default()
    }
}

fn rounds() -> u32 {
    match std::env::var(ROUNDS_ENV) {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{ROUNDS_ENV} must be a positive number, got {v:?}")),
        Err(_) => DEFAULT_ROUNDS,
    }
}

/// The bytes producer `p` writes as its `i`-th record of `round`: unique and checkable.
fn payload(round: u32, p: u32, i: u64) -> Vec<u8> {
    let unit = format!("r{round}-p{p}-i{i};");
    let reps = 1 + (i as usize * 7 + p as usize) % 40;
    unit.repeat(reps).into_bytes()
}

#[test]
fn child_appender() {
    let Ok(path) = std::env::var(DB_ENV) else {
        return;
    };
    let round: u32 = std::env::var(ROUND_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .expect("round number");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let db = Meta::open_sqlite(Path::new(&path), MIGRATIONS).expect("open db");
        let s = Arc::new(
            EmbeddedStream::open_with(db, &log_dir_of(Path::new(&path)), options())
                .expect("open stream"),
        );
        s.ensure_stream("c", 4).await.expect("ensure stream");
        let mut tasks = Vec::new();
        for p in 0..PRODUCERS {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let pk = format!("producer-{p}");
                let mut i = 0u64;
                loop {
                    if p == PRODUCERS - 1 {
                        // One producer uses put_records, ten at a time.
                        let batch: Vec<PutRecord> = (i..i + 10)
                            .map(|j| PutRecord {
                                partition_key: pk.clone(),
                                explicit_hash_key: None,
                                data: Bytes::from(payload(round, p, j)),
                            })
                            .collect();
                        let results = s.put_records("c", batch).await.expect("put_records");
                        for (j, r) in results.into_iter().enumerate() {
                            let r = r.expect("record appended");
                            ack(round, p, i + j as u64, &r.sequence_number);
                        }
                        i += 10;
                    } else {
                        let r = s
                            .put_record(
                                "c",
                                PutRecord {
                                    partition_key: pk.clone(),
                                    explicit_hash_key: None,
                                    data: Bytes::from(payload(round, p, i)),
                                },
                            )
                            .await
                            .expect("put_record");
                        ack(round, p, i, &r.sequence_number);
                        i += 1;
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn ack(round: u32, p: u32, i: u64, seq: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // One write per line: a line is either whole in the pipe or absent.
    let _ = out.write_all(format!("ack {round} {p} {i} {seq}\n").as_bytes());
    let _ = out.flush();
}

#[derive(Debug, Clone)]
struct Ack {
    round: u32,
    p: u32,
    i: u64,
    seq: String,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let line = line.strip_suffix('\n')?;
    let mut f = line.strip_prefix("ack ")?.split(' ');
    let a = Ack {
        round: f.next()?.parse().ok()?,
        p: f.next()?.parse().ok()?,
        i: f.next()?.parse().ok()?,
        seq: f.next()?.to_owned(),
    };
    f.next().is_none().then_some(a)
}

#[test]
fn kill_9_during_concurrent_appends_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crash.db");
    let exe = std::env::current_exe().expect("test binary");
    let mut acked: Vec<Ack> = Vec::new();
    // Highest sequence number present per shard after the previous round.
    let mut high: HashMap<String, String> = HashMap::new();
    let rounds = rounds();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_appender",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(DB_ENV, &path)
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut reader = BufReader::new(stdout);
        let kill_after = 20 + (round as usize * 53) % 400;
        let mut this_round = Vec::new();
        let mut line = String::new();
        while this_round.len() < kill_after {
            line.clear();
            let n = reader.read_line(&mut line).expect("read child output");
            assert!(n > 0, "child exited before being killed (round {round})");
            if let Some(a) = parse_ack(&line) {
                this_round.push(a);
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap child");
        // Lines written before the kill are acknowledgements too.
        loop {
            line.clear();
            if reader.read_line(&mut line).expect("drain output") == 0 {
                break;
            }
            if let Some(a) = parse_ack(&line) {
                this_round.push(a);
            }
        }
        for a in &this_round {
            let shard_of = a.seq.clone();
            let (idx, _) = sluice_stream::parse_sequence_number(&shard_of).expect("valid number");
            if let Some(h) = high.get(&sluice_stream::shard_id(idx)) {
                assert!(
                    a.seq > *h,
                    "round {round}: sequence number {} is not above {h}, already present before the round",
                    a.seq
                );
            }
        }
        acked.extend(this_round);
        high = verify(&path, &acked);
    }
    assert!(acked.len() >= rounds as usize * 20);
    eprintln!(
        "{} acknowledged records checked over {rounds} kill -9 rounds",
        acked.len()
    );
}

/// Reopens the database and checks every acknowledged record. Returns the highest number
/// present per shard.
fn verify(path: &Path, acked: &[Ack]) -> HashMap<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let db = Meta::open_sqlite(path, MIGRATIONS).expect("reopen after kill");
        let s = EmbeddedStream::open_with(db, &log_dir_of(path), options()).expect("open stream");
        let report = s.check().await.expect("check");
        assert!(
            report.is_ok(),
            "database damaged by a crash: {:?}",
            report.problems
        );
        let d = s.describe_stream("c").await.expect("describe");
        let mut present: HashMap<String, (String, Vec<u8>)> = HashMap::new();
        let mut high = HashMap::new();
        for sh in &d.shards {
            let records = sluice_stream::conformance::read_shard(&s, "c", &sh.shard_id).await;
            let seqs: Vec<&String> = records.iter().map(|r| &r.sequence_number).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "shard order");
            if let Some(last) = records.last() {
                high.insert(sh.shard_id.clone(), last.sequence_number.clone());
            }
            for r in records {
                present.insert(r.sequence_number, (r.partition_key, r.data.to_vec()));
            }
        }
        let mut seen = HashSet::new();
        let mut per_producer: BTreeMap<(u32, u32), Vec<(u64, String)>> = BTreeMap::new();
        for a in acked {
            assert!(
                seen.insert(a.seq.clone()),
                "sequence number {} acknowledged twice",
                a.seq
            );
            let (pk, data) = present.get(&a.seq).unwrap_or_else(|| {
                panic!(
                    "acknowledged record {} (round {} producer {} #{}) is lost",
                    a.seq, a.round, a.p, a.i
                )
            });
            assert_eq!(
                pk,
                &format!("producer-{}", a.p),
                "partition key of {}",
                a.seq
            );
            assert!(
                data == &payload(a.round, a.p, a.i),
                "data of {} differs",
                a.seq
            );
            per_producer
                .entry((a.round, a.p))
                .or_default()
                .push((a.i, a.seq.clone()));
        }
        for (key, mut v) in per_producer {
            v.sort();
            assert!(
                v.windows(2).all(|w| w[0].1 < w[1].1),
                "producer {key:?}: later records must get higher numbers"
            );
        }
        s.db().close();
        high
    })
}
