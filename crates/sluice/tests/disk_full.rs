//! A full disk under a running server (issue 13): the metadata (database, stream log) on one
//! size-limited tmpfs and the object bytes on another, each filled up in turn during uploads
//! and processing.
//!
//! While the disk is full, writes answer 507 on the API and 503 on the S3 edge — never 500,
//! never a 200 for something not stored. When space comes back, every acknowledged upload
//! is processed, with no restart, and new uploads succeed. The counts are printed.
//!
//! Mounting needs root (`mount -t tmpfs`); the tests fail with that reason without it. They
//! are named `fault_*`: `scripts/test` runs them once.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{DataDir, Server};
use serde_json::Value;

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(tag: &str, mib: u32) -> SmallDisk {
        let dir =
            std::env::temp_dir().join(format!("sluice-full-{tag}-{}", sluice_blobs::new_id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a size-limited tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    /// Fills the disk with a file until the file system refuses more; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            if f.write_all(&chunk).and_then(|_| f.sync_data()).is_err() {
                break;
            }
        }
        // Small remainders too, so that not even a page is left.
        let byte = [0u8; 512];
        while f.write_all(&byte).and_then(|_| f.sync_data()).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A body of `len` bytes, distinct per `i` and larger than an inline object when `len` is.
fn body(i: usize, len: usize) -> String {
    let line = format!("upload {i} of the disk-full test\n");
    line.repeat(len / line.len() + 1)[..len].to_owned()
}

/// Runs the scenario with the meta data dir and the blob dir as given; `full` is the
/// disk that is filled.
fn scenario(what: &str, data_dir: &Path, store_dir: &Path, full: &SmallDisk) {
    let server = Server::start_on(
        data_dir,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_STORE", &format!("file://{}", store_dir.display()))],
    );
    server.create_user("full@example.com");
    let token = server.id_token("full@example.com");
    let k = server.new_key();
    let mut acknowledged = BTreeSet::new();

    // Before: uploads work, large enough to need blob files.
    for i in 0..5 {
        let resp = server.upload(&token, &format!("before-{i}.txt"), &body(i, 100_000));
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().expect("json");
        acknowledged.insert(v["uploadId"].as_str().expect("id").to_owned());
    }

    // Full: every answer is a 200 (stored) or a 507 (nothing stored), never anything else.
    // The disk is filled, then a little space is given back a few times: uploads take it
    // until they are refused again, and their processing meets a full disk.
    let filler = full.fill();
    let (mut stored, mut refused) = (0, 0);
    let mut i = 100;
    for round in 0..4 {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .expect("filler");
        let len = f.metadata().expect("len").len();
        f.set_len(len.saturating_sub(384 * 1024))
            .expect("give space back");
        drop(f);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "uploads never ran out of space ({what}, round {round})"
            );
            let resp = server.upload(&token, &format!("during-{i}.txt"), &body(i, 100_000));
            i += 1;
            match resp.status().as_u16() {
                200 => {
                    stored += 1;
                    let v: Value = resp.json().expect("json");
                    acknowledged.insert(v["uploadId"].as_str().expect("id").to_owned());
                }
                507 => {
                    refused += 1;
                    let v: Value = resp.json().expect("json error");
                    assert_eq!(v["error"], "insufficient_storage", "{v}");
                    break;
                }
                other => panic!(
                    "upload on a full disk ({what}) answered {other}: {:?}",
                    resp.text()
                ),
            }
        }
    }
    assert!(
        stored > 0,
        "no upload was acknowledged while the disk was nearly full"
    );
    // The S3 edge: 503 in AWS's format (the CLI's own retries off).
    let object = std::env::temp_dir().join(format!("sluice-full-{}.bin", sluice_blobs::new_id()));
    std::fs::write(&object, body(7, 100_000)).expect("object file");
    let out = Command::new(common::aws_cli())
        .args(["--endpoint-url", &server.edge, "s3api", "put-object"])
        .args([
            "--bucket",
            "sluice",
            "--key",
            "other/while-full.bin",
            "--body",
        ])
        .arg(&object)
        .env("AWS_ACCESS_KEY_ID", &k.0)
        .env("AWS_SECRET_ACCESS_KEY", &k.1)
        .env("AWS_DEFAULT_REGION", "us-east-2")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_RETRY_MODE", "standard")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("aws");
    let _ = std::fs::remove_file(&object);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(
            err.contains("(503)") || err.contains("SlowDown") || err.contains("ServiceUnavailable"),
            "PutObject on a full disk ({what}): {err}\nserver log:\n{}",
            std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default()
        );
        assert!(
            !err.contains("(500)") && !err.contains("InternalError"),
            "{err}"
        );
    }

    // Processing meets the full disk too; give it time to fail and retry.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::remove_file(&filler).expect("free the disk");

    // Space is back: everything acknowledged is processed, with no restart.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending = acknowledged.clone();
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged uploads never processed after space came back ({what}): {:?}",
            pending.len(),
            acknowledged.len(),
            pending
                .iter()
                .map(|id| server.status(&token, id).1)
                .collect::<Vec<_>>()
        );
        pending.retain(|id| {
            let (code, v) = server.status(&token, id);
            assert_eq!(code, 200, "{v}");
            assert_ne!(v["status"], "failed", "upload {id} failed: {v}");
            v["status"] != "processed"
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in &acknowledged {
        let (code, bytes) = server.get_bytes(&token, &format!("/uploads/{id}/processed"));
        assert_eq!(code, 200, "processed output of {id}");
        assert!(bytes.starts_with(b"UPLOAD "), "{id}");
    }
    let resp = server.upload(&token, "after.txt", &body(1, 100_000));
    assert_eq!(resp.status(), 200, "uploads work again ({what})");
    eprintln!(
        "disk full ({what}): {} acknowledged ({stored} while filling), {refused} refused with 507, all processed after space came back",
        acknowledged.len()
    );
    server.stop();
}

#[test]
fn fault_disk_full_on_the_metadata_disk() {
    let meta = SmallDisk::mount("meta", 64);
    let blobs = DataDir::new("full-meta-blobs");
    let data = meta.dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    scenario("metadata disk", &data, &blobs.0.join("blobs"), &meta);
}

#[test]
fn fault_disk_full_on_the_blob_disk() {
    let blobs = SmallDisk::mount("blobs", 16);
    let data = DataDir::new("full-blob-meta");
    scenario("blob disk", &data.0, &blobs.dir.join("blobs"), &blobs);
}
