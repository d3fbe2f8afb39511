//! The fault loop: kill -9 at random points while uploads (small and large) are written and
//! processed, round after round; and a server under a hard memory limit given large objects.
//! After each: every acknowledged upload is there, processed, with exactly one stream record
//! and one output, and the counts are printed (`-- --nocapture`).
//!
//! Sizes are small by default so that `scripts/test` stays quick; `SLUICE_FAULT_ROUNDS`,
//! `SLUICE_FAULT_SEED` (to replay a run) and `SLUICE_FAULT_BYTES` (the large object of the
//! memory-limited run) make them larger. The memory-limited run puts the server in a cgroup
//! (v1 `memory` controller, or v2) of its own and needs root; it fails with that reason
//! without it.
//!
//! Delivery to functions is at least once (Kinesis and Lambda's semantics: a batch cut short
//! by a kill is delivered again); what is exactly once is the outcome — one record, one final
//! status, one output per acknowledged upload.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DataDir, Server, aws_as};
use serde_json::Value;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: enough randomness for kill points, replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// One acknowledged upload: its id and content.
type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn writer(
    api: String,
    token: String,
    stop: Arc<AtomicBool>,
    acked: Acked,
    tag: String,
    large: bool,
) {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let name = format!("{tag}-{i}");
        let resp = if large {
            // Past the inline threshold: the bytes go to a blob of their own.
            let content: Vec<u8> = format!("{name} ")
                .bytes()
                .cycle()
                .take(64 * 1024 + (i as usize * 7919) % (192 * 1024))
                .collect();
            http.post(format!("{api}/uploads?filename={name}.bin"))
                .bearer_auth(&token)
                .header("Content-Type", "application/octet-stream")
                .body(content.clone())
                .send()
                .map(|r| (r, content))
        } else {
            let content = format!("{name} small").into_bytes();
            http.post(format!("{api}/uploads"))
                .bearer_auth(&token)
                .header("Content-Type", "application/json")
                .body(
                    serde_json::json!({
                        "filename": format!("{name}.txt"),
                        "content": String::from_utf8_lossy(&content),
                    })
                    .to_string(),
                )
                .send()
                .map(|r| (r, content))
        };
        match resp {
            Ok((r, content)) if r.status() == 200 => {
                if let Ok(v) = r.json::<Value>()
                    && let Some(id) = v["uploadId"].as_str()
                {
                    acked.lock().expect("lock").push((id.to_owned(), content));
                }
            }
            // The server died under us: what was not acknowledged may be lost.
            _ => break,
        }
    }
}

/// Every record of `stream`, read from the start of every shard with the aws CLI: the
/// `uploadId`s in them.
fn upload_ids_in_stream(server: &Server, key: &(String, String), stream: &str) -> Vec<String> {
    let k = (key.0.as_str(), key.1.as_str());
    let run = |args: &[&str]| -> Value {
        let mut all = vec!["--endpoint-url", server.edge.as_str(), "kinesis"];
        all.extend_from_slice(args);
        let (ok, out, err) = aws_as(k, &all);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str(&out).expect("json")
    };
    let shards = run(&["list-shards", "--stream-name", stream]);
    let mut ids = Vec::new();
    for shard in shards["Shards"].as_array().expect("shards") {
        let shard_id = shard["ShardId"].as_str().expect("id");
        let it = run(&[
            "get-shard-iterator",
            "--stream-name",
            stream,
            "--shard-id",
            shard_id,
            "--shard-iterator-type",
            "TRIM_HORIZON",
        ]);
        let mut iterator = it["ShardIterator"].as_str().expect("iterator").to_owned();
        loop {
            let page = run(&[
                "get-records",
                "--shard-iterator",
                &iterator,
                "--limit",
                "10000",
            ]);
            let records = page["Records"].as_array().expect("records");
            for r in records {
                use base64::Engine as _;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(r["Data"].as_str().expect("data"))
                    .expect("base64");
                let v: Value = serde_json::from_slice(&data).expect("record json");
                if let Some(id) = v["uploadId"].as_str() {
                    ids.push(id.to_owned());
                }
            }
            match page["NextShardIterator"].as_str() {
                Some(next) if !records.is_empty() || page["MillisBehindLatest"] != 0 => {
                    iterator = next.to_owned();
                }
                _ => break,
            }
        }
    }
    ids
}

#[test]
fn fault_kill_9_at_random_points_loses_nothing_and_each_outcome_is_once() {
    let rounds: usize = env_or("SLUICE_FAULT_ROUNDS", 5);
    let seed: u64 = env_or(
        "SLUICE_FAULT_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1,
    );
    println!("fault loop: {rounds} rounds, SLUICE_FAULT_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = DataDir::new("fault-loop");
    let mut server = Server::start(&dir.0);
    server.create_user("loop@example.com");
    let token = server.id_token("loop@example.com");
    let (api, edge) = (server.api.clone(), server.edge.clone());
    let acked: Acked = Arc::new(Mutex::new(Vec::new()));

    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (api, token, stop, acked) =
                    (api.clone(), token.clone(), stop.clone(), acked.clone());
                let tag = format!("r{round}w{w}");
                std::thread::spawn(move || writer(api, token, stop, acked, tag, w % 2 == 1))
            })
            .collect();
        // A random point: while uploads commit, records are read, outputs written,
        // statuses and checkpoints saved.
        let after = Duration::from_millis(rng.between(50, 2_500));
        std::thread::sleep(after);
        let before = acked.lock().expect("lock").len();
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            let _ = w.join();
        }
        println!(
            "round {round}: killed after {} ms, {} acknowledged so far",
            after.as_millis(),
            before
        );
        server = Server::restart(&dir.0, &api, &edge);
    }

    let acked = acked.lock().expect("lock").clone();
    assert!(!acked.is_empty(), "nothing was acknowledged");
    let deadline = Instant::now() + Duration::from_secs(300);
    for (id, content) in &acked {
        let status = server.wait_final(&token, id);
        assert_eq!(status["status"], "processed", "{status}");
        let (_, body) = server.get_bytes(&token, &format!("/uploads/{id}/content"));
        assert!(body == *content, "upload {id}: its bytes changed");
        let (_, out) = server.get_bytes(&token, &format!("/uploads/{id}/processed"));
        assert!(
            out == content.to_ascii_uppercase(),
            "upload {id}: its output is not its content upper-cased"
        );
        assert!(Instant::now() < deadline, "processing took too long");
    }
    // One record per upload: a kill between the commit and the outbox's delivery must not
    // send a second one.
    let key = server.new_key();
    let ids = upload_ids_in_stream(&server, &key, "uploads-stream");
    let mut per_upload: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *per_upload.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = per_upload.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "uploads with more than one record: {twice:?}"
    );
    for (id, _) in &acked {
        assert_eq!(
            per_upload.get(id.as_str()),
            Some(&1),
            "upload {id} has no record"
        );
    }
    let rows = common::rows(&dir.0, "SELECT COUNT(*) FROM uploads");
    let processed = common::rows(
        &dir.0,
        "SELECT COUNT(*) FROM uploads WHERE status = 'processed'",
    );
    println!(
        "fault loop: {rounds} kills, {} acknowledged, {rows} upload rows ({} committed but not acknowledged before a kill), {} stream records, {processed} processed, 0 lost, 0 duplicated",
        acked.len(),
        rows as usize - acked.len(),
        ids.len()
    );
    assert_eq!(rows as usize, ids.len(), "one record per stored upload");
    assert_eq!(processed, rows, "every stored upload processed");
    server.stop();
}

/// A memory cgroup of its own for one process: v1's `memory` controller when mounted
/// (`memory.limit_in_bytes`), else v2 (`memory.max`). Removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
    v1: bool,
}

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let name = format!("sluice-test-{}", std::process::id());
        let (base, v1) =
            if std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
                (PathBuf::from("/sys/fs/cgroup/memory"), true)
            } else {
                (PathBuf::from("/sys/fs/cgroup"), false)
            };
        let dir = base.join(name);
        if let Err(e) = std::fs::create_dir(&dir) {
            panic!(
                "this test runs the server in a memory cgroup of its own and needs root and a \
                 writable cgroup memory controller ({}): {e}",
                dir.display()
            );
        }
        let file = if v1 {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        };
        std::fs::write(dir.join(file), limit.to_string()).expect("set the memory limit");
        if v1 {
            // No swap to fall back on: the limit is the limit.
            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), limit.to_string());
        }
        MemoryCgroup { dir, v1 }
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .expect("move into the cgroup");
    }

    fn read(&self, v1: &str, v2: &str) -> u64 {
        let f = if self.v1 { v1 } else { v2 };
        std::fs::read_to_string(self.dir.join(f))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Peak memory charged to the group (page cache included).
    fn peak(&self) -> u64 {
        self.read("memory.max_usage_in_bytes", "memory.peak")
    }

    /// Times the kernel killed a process of the group for memory.
    fn oom_kills(&self) -> u64 {
        if self.v1 {
            std::fs::read_to_string(self.dir.join("memory.oom_control"))
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        l.strip_prefix("oom_kill ")
                            .and_then(|n| n.trim().parse().ok())
                    })
                })
                .unwrap_or(0)
        } else {
            std::fs::read_to_string(self.dir.join("memory.events"))
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        l.strip_prefix("oom_kill ")
                            .and_then(|n| n.trim().parse().ok())
                    })
                })
                .unwrap_or(0)
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Processes still inside (a server that outlived a failed test) go back to the root.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            let root = self.dir.parent().map(|p| p.join("cgroup.procs"));
            for pid in procs.lines() {
                if let Some(root) = &root {
                    let _ = std::fs::write(root, pid);
                }
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn fault_a_server_under_a_hard_memory_limit_handles_large_objects() {
    const LIMIT: u64 = 128 * 1024 * 1024;
    let bytes: u64 = env_or("SLUICE_FAULT_BYTES", 512 * 1024 * 1024);
    let group = MemoryCgroup::new(LIMIT);
    let dir = DataDir::new("fault-memory");
    let server = Server::start(&dir.0);
    group.add(server.pid());
    server.create_user("big@example.com");
    let token = server.id_token("big@example.com");

    // Up through the API (streamed), processed by the built-in mapping, down twice.
    let file = dir.0.join("big.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).expect("create"));
        let line = b"the quick brown fox jumps over the lazy dog\n";
        let mut written = 0u64;
        while written < bytes {
            f.write_all(line).expect("write");
            written += line.len() as u64;
        }
        f.flush().expect("flush");
    }
    let size = std::fs::metadata(&file).expect("metadata").len();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client");
    let resp = http
        .post(format!("{}/uploads?filename=big.bin", server.api))
        .bearer_auth(&token)
        .header("Content-Type", "application/octet-stream")
        .body(std::fs::File::open(&file).expect("open"))
        .send()
        .expect("upload");
    assert_eq!(resp.status(), 200, "{:?}", resp.text());
    let id = resp.json::<Value>().expect("json")["uploadId"]
        .as_str()
        .expect("id")
        .to_owned();
    let status = server.wait_final(&token, &id);
    assert_eq!(status["status"], "processed", "{status}");
    for path in [
        format!("/uploads/{id}/content"),
        format!("/uploads/{id}/processed"),
    ] {
        let mut resp = http
            .get(format!("{}{path}", server.api))
            .bearer_auth(&token)
            .send()
            .expect("download");
        assert_eq!(resp.status(), 200);
        let n = std::io::copy(&mut resp, &mut std::io::sink()).expect("read the body");
        assert_eq!(n, size, "{path}: the whole object");
    }
    // And over the S3 edge: a multipart upload of the same file, read back.
    let key = server.new_key();
    let k = (key.0.as_str(), key.1.as_str());
    let (ok, _, err) = aws_as(
        k,
        &[
            "--endpoint-url",
            &server.edge,
            "s3",
            "cp",
            file.to_str().expect("utf-8"),
            "s3://sluice/loose/big.bin",
        ],
    );
    assert!(ok, "{err}");
    let back = dir.0.join("back.bin");
    let (ok, _, err) = aws_as(
        k,
        &[
            "--endpoint-url",
            &server.edge,
            "s3",
            "cp",
            "s3://sluice/loose/big.bin",
            back.to_str().expect("utf-8"),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(std::fs::metadata(&back).expect("metadata").len(), size);
    let _ = std::fs::remove_file(&back);
    let _ = std::fs::remove_file(&file);

    let oom = group.oom_kills();
    println!(
        "memory-limited run: a {} MiB object up, processed and down twice through the API, and up and down through the S3 edge, under a {} MiB limit (page cache included): peak {} MiB charged, {oom} OOM kills",
        size >> 20,
        LIMIT >> 20,
        group.peak() >> 20
    );
    assert_eq!(oom, 0, "the server was killed for memory");
    server.stop();
}
