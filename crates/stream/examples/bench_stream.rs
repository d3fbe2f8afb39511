//! Benchmark of the embedded stream backend on this machine's disk.
//!
//! Measures, in one run and on one directory: the raw fsync rate (write 4 KiB + fdatasync
//! in a loop), durable 1 KiB appends/s at 1, 8, 64 and 256 concurrent producers
//! (`put_record`, each acknowledged only after the stream log's batch holding it was
//! fsynced), single-producer append latency p50/p99, read throughput from TRIM_HORIZON, and
//! commit-to-visible latency for a reader waiting at the tail. The SQLite options
//! (`--page-size`, `--wal-limit-pages`, `--checkpoint-pages`) tune the database that holds
//! the streams' metadata; records are in the stream log.
//!
//! Usage: `cargo run --release -p sluice-stream --example bench_stream -- [--dir DIR] [--seconds N]
//! [--producers 1,8,64,256] [--trials N] [--page-size B] [--wal-limit-pages N]
//! [--checkpoint-pages N] [--skip-read] [--skip-tail]` (the last three to profile one phase).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_meta::{Meta, SqliteOptions};
use sluice_stream::embedded::{EmbeddedStream, MIGRATIONS};
use sluice_stream::{IteratorSpec, PutRecord, Stream, shard_id};

const RECORD: usize = 1024;
const SHARDS: u32 = 4;

struct Args {
    dir: PathBuf,
    seconds: f64,
    producers: Vec<usize>,
    trials: usize,
    page_size: u32,
    wal_limit_pages: u32,
    checkpoint_pages: Option<u32>,
    read: bool,
    tail: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        dir: std::env::temp_dir(),
        seconds: 3.0,
        producers: vec![1, 8, 64, 256],
        trials: 3,
        page_size: SqliteOptions::default().page_size,
        wal_limit_pages: SqliteOptions::default().wal_limit_pages,
        checkpoint_pages: None,
        read: true,
        tail: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--skip-read" => {
                a.read = false;
                continue;
            }
            "--skip-tail" => {
                a.tail = false;
                continue;
            }
            _ => {}
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(value),
            "--producers" => {
                a.producers = value
                    .split(',')
                    .map(|p| p.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("--producers takes numbers like 1,64, got {value:?}"))?
            }
            "--page-size" => {
                a.page_size = value
                    .parse()
                    .map_err(|_| format!("--page-size takes a number, got {value:?}"))?
            }
            "--wal-limit-pages" => {
                a.wal_limit_pages = value
                    .parse()
                    .map_err(|_| format!("--wal-limit-pages takes a number, got {value:?}"))?
            }
            "--checkpoint-pages" => {
                a.checkpoint_pages = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--checkpoint-pages takes a number, got {value:?}"))?,
                )
            }
            "--trials" => {
                a.trials = value
                    .parse::<usize>()
                    .ok()
                    .filter(|t| *t > 0)
                    .ok_or_else(|| format!("--trials takes a positive number, got {value:?}"))?
            }
            "--seconds" => {
                a.seconds = value
                    .parse()
                    .map_err(|_| format!("--seconds takes a number, got {value:?}"))?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let work = tempfile::Builder::new()
        .prefix("bench-stream-")
        .tempdir_in(&args.dir)?;
    let phase = Duration::from_secs_f64(args.seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    PAGE_SIZE.store(args.page_size, Ordering::Relaxed);
    WAL_LIMIT.store(args.wal_limit_pages, Ordering::Relaxed);
    CHECKPOINT.store(args.checkpoint_pages.unwrap_or(0), Ordering::Relaxed);
    println!(
        "directory: {}, database page size {} bytes",
        args.dir.display(),
        args.page_size
    );
    let growing = raw_fsync_rate(work.path(), phase, false)?;
    println!(
        "raw fsync, appending 4 KiB + fdatasync (file grows): {growing:.0}/s ({:.3} ms each)",
        1000.0 / growing
    );
    let fsyncs = raw_fsync_rate(work.path(), phase, true)?;
    println!(
        "raw fsync, overwriting 4 KiB in place + fdatasync (as a reused WAL): {fsyncs:.0}/s ({:.3} ms each)",
        1000.0 / fsyncs
    );
    rt.block_on(async {
        println!(
            "\nEach row: {} trials; a trial measures, back to back, the in-place fsync rate (0.5 s),\n\
             a raw group-committing file appender (same producers, 1 KiB records, write + fdatasync\n\
             per group) and the stream, on a fresh database. Medians over the trials; the ratio is\n\
             the median of per-trial ratios stream / raw appender.\n",
            args.trials
        );
        println!(
            "| producers | stream appends/s (median; min–max) | raw group-commit appender/s | stream / raw | in-place fsync/s | stream CPU µs per append |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        let mut single = Vec::new();
        for (i, producers) in args.producers.iter().copied().enumerate() {
            let (mut rates, mut raws, mut ratios, mut syncs) = (vec![], vec![], vec![], vec![]);
            let mut cpu = vec![];
            for t in 0..args.trials {
                syncs.push(raw_fsync_rate(work.path(), Duration::from_millis(500), true)?);
                let raw = raw_group_commit(work.path(), producers, phase).await?;
                let path = work.path().join(format!("append-{i}-{t}.db"));
                let cpu_before = cpu_seconds();
                let (rate, lat, n) = appends(&path, producers, phase).await?;
                cpu.push((cpu_seconds() - cpu_before) * 1e6 / n.max(1) as f64);
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                rates.push(rate);
                raws.push(raw);
                ratios.push(rate / raw);
                if producers == 1 {
                    single.extend(lat);
                }
            }
            let (lo, hi) = (min(&rates), max(&rates));
            println!(
                "| {producers} | {:.0} ({lo:.0}–{hi:.0}) | {:.0} | {:.2} | {:.0} | {:.1} |",
                median(&mut rates),
                median(&mut raws),
                median(&mut ratios),
                median(&mut syncs),
                median(&mut cpu)
            );
        }
        single.sort_unstable();
        if !single.is_empty() {
            println!(
                "\nsingle-producer append latency: p50 {:.3} ms, p99 {:.3} ms ({} appends)",
                pct(&single, 0.50),
                pct(&single, 0.99),
                single.len()
            );
        }
        if args.read {
            let path = work.path().join("read.db");
            let (n, rate) = read_throughput(&path).await?;
            println!("read from TRIM_HORIZON: {rate:.0} records/s ({n} records of 1 KiB, 10,000 per get_records)");
        }
        if !args.tail {
            return Ok(());
        }
        let path = work.path().join("tail.db");
        let mut vis = commit_to_visible(&path).await?;
        vis.sort_unstable();
        println!(
            "commit-to-visible for a tailing reader (watch + get_records): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} records)",
            pct(&vis, 0.50),
            pct(&vis, 0.99),
            vis.last().copied().unwrap_or(0) as f64 / 1e6,
            vis.len()
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}

/// CPU time (user + system) this process has used so far, in seconds, from /proc/self/stat
/// (0 where that file does not exist). Clock ticks are 1/100 s.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

type Ack = tokio::sync::oneshot::Sender<()>;

/// The baseline a durable log is measured against: `producers` tasks each send one 1 KiB
/// record at a time to a thread that appends every record waiting to a file with one
/// `write`, calls `fdatasync`, then acknowledges them (a simple group-committing appender,
/// no index, no checksums, no reads). Returns appends/s.
async fn raw_group_commit(
    dir: &Path,
    producers: usize,
    phase: Duration,
) -> Result<f64, Box<dyn std::error::Error>> {
    let file_path = dir.join("raw-appender.log");
    let mut file = std::fs::File::create(&file_path)?;
    let (tx, rx) = std::sync::mpsc::channel::<(Vec<u8>, Ack)>();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut acks = Vec::new();
        while let Ok(first) = rx.recv() {
            buf.clear();
            buf.extend_from_slice(&first.0);
            acks.push(first.1);
            while let Ok((data, ack)) = rx.try_recv() {
                buf.extend_from_slice(&data);
                acks.push(ack);
            }
            file.write_all(&buf)?;
            file.sync_data()?;
            for a in acks.drain(..) {
                let _ = a.send(());
            }
        }
        Ok(())
    });
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let (tx, stop, count) = (tx.clone(), stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (ack, done) = tokio::sync::oneshot::channel();
                if tx.send((vec![0x5A; RECORD], ack)).is_err() || done.await.is_err() {
                    break;
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    drop(tx);
    let start = Instant::now();
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in tasks {
        t.await?;
    }
    writer
        .join()
        .map_err(|_| "the raw appender thread panicked")??;
    std::fs::remove_file(&file_path)?;
    Ok(n as f64 / elapsed)
}

/// Percentile of sorted nanosecond samples, in milliseconds.
fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

/// Single-threaded write + fdatasync loop; `in_place` rewrites one preallocated block
/// instead of growing the file (no metadata to flush).
fn raw_fsync_rate(dir: &Path, phase: Duration, in_place: bool) -> std::io::Result<f64> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::create(dir.join(format!("fsync-{in_place}.bin")))?;
    let block = vec![0x5Au8; 4096];
    if in_place {
        f.write_all(&block)?;
        f.sync_all()?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < phase {
        if in_place {
            f.seek(SeekFrom::Start(0))?;
        }
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Page size of the databases the bench creates (`--page-size`).
static PAGE_SIZE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// WAL bound of the databases the bench creates (`--wal-limit-pages`).
static WAL_LIMIT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// Checkpoint cadence of the databases the bench creates (`--checkpoint-pages`; 0: the
/// default, at most half the WAL bound).
static CHECKPOINT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn open(path: &Path) -> Result<EmbeddedStream, Box<dyn std::error::Error>> {
    let options = SqliteOptions {
        page_size: PAGE_SIZE.load(Ordering::Relaxed),
        wal_limit_pages: WAL_LIMIT.load(Ordering::Relaxed),
        checkpoint_pages: match CHECKPOINT.load(Ordering::Relaxed) {
            0 => SqliteOptions::default()
                .checkpoint_pages
                .min(WAL_LIMIT.load(Ordering::Relaxed) / 2)
                .max(1),
            n => n,
        },
        ..SqliteOptions::default()
    };
    Ok(EmbeddedStream::open(
        Meta::open_sqlite_with(path, MIGRATIONS, options)?,
        &sluice_stream::embedded::log_dir_of(path),
    )?)
}

fn record(i: u64) -> PutRecord {
    PutRecord {
        partition_key: format!("pk-{i}"),
        explicit_hash_key: None,
        data: Bytes::from(vec![(i % 251) as u8; RECORD]),
    }
}

/// Appends/s with `producers` tasks each awaiting one `put_record` at a time, the latency
/// of every append (ns), and how many appends were made in all.
async fn appends(
    path: &Path,
    producers: usize,
    phase: Duration,
) -> Result<(f64, Vec<u64>, usize), Box<dyn std::error::Error>> {
    let s = Arc::new(open(path)?);
    s.create_stream("b", SHARDS).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..producers {
        let (s, stop, count) = (s.clone(), stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = p as u64 * 1_000_000_000;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                s.put_record("b", record(i)).await?;
                lat.push(t.elapsed().as_nanos() as u64);
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<_, sluice_stream::StreamError>(lat)
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let st = s.log_stats();
    s.db().close();
    eprintln!(
        "  {producers} producers: {:.1} appends a batch (one write + one fdatasync); \
         write {:.0} µs, fdatasync {:.0} µs a batch; log writer busy {:.0} %",
        st.records as f64 / st.batches.max(1) as f64,
        st.write_nanos as f64 / 1e3 / st.batches.max(1) as f64,
        st.sync_nanos as f64 / 1e3 / st.batches.max(1) as f64,
        (st.write_nanos + st.sync_nanos) as f64 / 1e7 / elapsed,
    );
    let total = lat.len();
    Ok((n as f64 / elapsed, lat, total))
}

async fn read_throughput(path: &Path) -> Result<(usize, f64), Box<dyn std::error::Error>> {
    let s = open(path)?;
    s.create_stream("r", SHARDS).await?;
    let total = 200_000u64;
    for chunk in 0..total / 500 {
        let batch = (0..500).map(|i| record(chunk * 500 + i)).collect();
        for r in s.put_records("r", batch).await? {
            r?;
        }
    }
    let start = Instant::now();
    let mut n = 0usize;
    for shard in 0..u64::from(SHARDS) {
        let mut it = s
            .get_shard_iterator("r", &shard_id(shard), IteratorSpec::TrimHorizon)
            .await?;
        loop {
            let page = s.get_records(&it, 10_000).await?;
            if page.records.is_empty() {
                break;
            }
            n += page.records.len();
            match page.next_iterator {
                Some(next) => it = next,
                None => break,
            }
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    s.db().close();
    drop(s);
    // Opening scans every segment to rebuild the index: the start-up cost of retained data.
    let start = Instant::now();
    let s = open(path)?;
    let opened = start.elapsed();
    s.db().close();
    println!(
        "reopen (scan of {total} records, rebuilding the index): {:.0} ms",
        opened.as_secs_f64() * 1e3
    );
    Ok((n, rate))
}

/// A reader waits at the tail (watch + get_records); a writer appends one record at a time.
/// Returns, per record, the time from the writer's acknowledgement to the reader having it
/// (0 when the reader had it first).
async fn commit_to_visible(path: &Path) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let s = Arc::new(open(path)?);
    s.create_stream("t", 1).await?;
    let n = 2_000usize;
    let base = Instant::now();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let reader = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut changes = s.watch("t");
            let mut it = s
                .get_shard_iterator("t", &shard_id(0), IteratorSpec::Latest)
                .await?;
            let mut seen = vec![0u64; n];
            let mut got = 0usize;
            while got < n {
                changes.borrow_and_update();
                let page = s.get_records(&it, 10_000).await?;
                let now = base.elapsed().as_nanos() as u64;
                for r in &page.records {
                    let mut idx = [0u8; 8];
                    idx.copy_from_slice(&r.data[..8]);
                    seen[u64::from_le_bytes(idx) as usize] = now;
                    got += 1;
                }
                if let Some(next) = page.next_iterator {
                    it = next;
                }
                if page.records.is_empty() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
                }
            }
            Ok::<_, sluice_stream::StreamError>(seen)
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..n {
        let mut data = (i as u64).to_le_bytes().to_vec();
        data.resize(RECORD, 0);
        s.put_record(
            "t",
            PutRecord {
                partition_key: "tail".into(),
                explicit_hash_key: None,
                data: Bytes::from(data),
            },
        )
        .await?;
        acked[i].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let seen = reader.await??;
    s.db().close();
    Ok(seen
        .iter()
        .zip(acked.iter())
        .map(|(s, a)| s.saturating_sub(a.load(Ordering::Relaxed)))
        .collect())
}
