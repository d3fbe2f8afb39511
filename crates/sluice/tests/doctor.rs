//! `sluice doctor` against a real data directory: a healthy one passes, one with a flipped
//! byte inside a stream record fails loudly and names the record; one with a flipped byte
//! inside an object's blob is refused by every read (API and S3) and named by
//! `doctor --deep`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{DataDir, Server, aws_as, bin, meta_read, store_url_of};

fn doctor(data_dir: &Path) -> Output {
    doctor_with(data_dir, &[])
}

fn doctor_with(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("doctor")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("SLUICE_CONFIG")
        .env_remove("SLUICE_STORE")
        .current_dir(data_dir)
        .output()
        .expect("run sluice doctor")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn doctor_passes_a_healthy_data_dir_and_fails_on_a_flipped_record_byte() {
    let dir = DataDir::new("doctor");
    let server = Server::start(&dir.0);
    server.create_user("doc@example.com");
    let token = server.id_token("doc@example.com");
    for i in 0..5 {
        let resp = server.upload(&token, &format!("doctor-{i}.txt"), "checked content");
        assert_eq!(resp.status(), 200, "upload {i}");
    }

    // While the server runs: read-only, so it neither blocks nor disturbs the server.
    let out = doctor(&dir.0);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "healthy data dir: {stdout}{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("meta check: ok"), "{stdout}");
    assert!(stdout.contains("stream check: ok"), "{stdout}");
    // The blob engine the server uses, described without secrets, and checked.
    let store = store_url_of(&dir.0);
    let shown = stdout
        .lines()
        .find_map(|l| l.strip_prefix("blobs: "))
        .unwrap_or_else(|| panic!("the blob engine is described: {stdout}"));
    if store.starts_with("file://") {
        assert_eq!(shown, store);
    } else {
        let location = store.split('?').next().unwrap_or_default();
        assert!(shown.starts_with(location), "{shown} describes {store}");
        assert!(!shown.contains("secret"), "no secret is shown: {shown}");
    }
    assert!(stdout.contains("blobs check: ok"), "{stdout}");
    assert!(stdout.contains("no problems found"), "{stdout}");
    server.stop();

    let out = doctor(&dir.0);
    assert!(out.status.success(), "still healthy after a clean stop");
    if common::records_on_nats() {
        // No log files here: the JetStream engine's damage checks are the stream crate's
        // (`records::jetstream` unit tests).
        return;
    }
    // One byte of every stream record's JSON flipped, in the stream log's segments.
    let log = dir.0.join("sluice.db-stream-log");
    let mut hits = 0;
    for e in std::fs::read_dir(&log).expect("stream log") {
        let path = e.expect("entry").path();
        let mut bytes = std::fs::read(&path).expect("read segment");
        let marker = b"\"uploadedAt\":\"";
        let at: Vec<usize> = bytes
            .windows(marker.len())
            .enumerate()
            .filter(|(_, w)| *w == marker)
            .map(|(i, _)| i)
            .collect();
        for i in &at {
            bytes[i + marker.len() + 2] ^= 0x01;
        }
        hits += at.len();
        std::fs::write(&path, &bytes).expect("write segment");
    }
    assert!(hits >= 5, "stream records are in the log ({hits})");

    let out = doctor(&dir.0);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a damaged record must fail: {stdout}"
    );
    assert!(
        stdout.contains("problem: record") && stdout.contains("fails its checksum"),
        "the damaged record is named: {stdout}"
    );
    assert!(stderr.contains("error:"), "{stderr}");
}

#[test]
fn doctor_fails_without_a_database() {
    let dir = DataDir::new("doctor-empty");
    // An embedded data directory that was never used (on PostgreSQL the database exists).
    let _ = std::fs::remove_file(dir.0.join("sluice.toml"));
    let out = doctor(&dir.0);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no database at"),
        "{}",
        text(&out.stderr)
    );
}

/// A data directory remembers its metadata engine: a command that would open another one
/// (a forgotten `--meta` beside a server on PostgreSQL) is refused, naming the right one.
#[test]
fn a_data_dir_refuses_another_metadata_engine_than_its_own() {
    let dir = DataDir::new("engines");
    let _ = std::fs::remove_file(dir.0.join("sluice.toml"));
    let keys = |extra: &[&str]| {
        Command::new(bin())
            .args(["keys", "list", "--data-dir"])
            .arg(&dir.0)
            .args(extra)
            .env_remove("SLUICE_CONFIG")
            .env_remove("SLUICE_META")
            .current_dir(&dir.0)
            .output()
            .expect("run sluice keys")
    };
    let first = keys(&[]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let other = keys(&["--meta", "postgres://postgres@127.0.0.1:1/elsewhere"]);
    assert!(!other.status.success());
    let err = text(&other.stderr);
    assert!(
        err.contains("keeps its metadata in sqlite://") && err.contains("--meta"),
        "{err}"
    );
    assert!(
        keys(&[]).status.success(),
        "the recorded engine still opens"
    );
}

/// A blob engine that cannot be used fails the check with a clear message and a non-zero
/// exit: a blob directory that is gone, an S3 endpoint nobody answers (its secret never
/// shown).
#[test]
fn doctor_fails_when_the_blob_engine_is_unusable() {
    let dir = DataDir::new("doctor-blobs");
    let server = Server::start(&dir.0);
    server.stop();

    let missing = dir.0.join("no-such-blobs");
    let url = format!("file://{}", missing.display());
    let out = doctor_with(&dir.0, &["--store", &url]);
    let stdout = text(&out.stdout);
    assert!(
        !out.status.success(),
        "a missing blob directory fails: {stdout}"
    );
    assert!(stdout.contains("meta check: ok"), "{stdout}");
    assert!(stdout.contains(&format!("blobs: {url}")), "{stdout}");
    assert!(
        stdout.contains("blobs check: failed") && stdout.contains("does not exist"),
        "{stdout}"
    );
    assert!(!missing.exists(), "the doctor creates nothing");
    assert!(
        text(&out.stderr).contains("1 problem (") && text(&out.stderr).contains("blobs file://"),
        "{}",
        text(&out.stderr)
    );

    // A port nothing listens on (the S3 client retries for a few seconds, then gives up).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!(
        "s3://doctor-bucket?endpoint=http://127.0.0.1:{port}&region=garage&access_key_id=GKDOCTOR&secret_access_key=TOPSECRET"
    );
    let out = doctor_with(&dir.0, &["--store", &url]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "an unreachable S3 store fails: {stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "blobs: s3://doctor-bucket at http://127.0.0.1:{port}"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("blobs check: failed"), "{stdout}");
    assert!(
        !stdout.contains("TOPSECRET") && !stderr.contains("TOPSECRET"),
        "the secret stays hidden: {stdout}{stderr}"
    );
}

/// The record engine is chosen by URL (`SLUICE_RECORDS` / `--records`): a log in a directory
/// of its own is where `serve` appends and processing reads, and what `doctor` checks; a
/// scheme sluice does not know is invalid, and a JetStream server that cannot be reached is
/// named (without the URL's password).
#[test]
fn the_record_engine_is_chosen_by_url() {
    let dir = DataDir::new("records-url");
    let elsewhere = dir.0.join("elsewhere-log");
    let url = format!("embedded://{}", elsewhere.display());
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_RECORDS", &url)],
    );
    server.create_user("records@example.com");
    let token = server.id_token("records@example.com");
    let resp = server.upload(&token, "elsewhere.txt", "kept elsewhere");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().expect("json");
    let id = body["uploadId"].as_str().expect("uploadId").to_owned();
    assert_eq!(server.wait_final(&token, &id)["status"], "processed");
    server.stop();
    let segments = |d: &Path| {
        std::fs::read_dir(d)
            .map(|r| r.filter(|e| e.is_ok()).count())
            .unwrap_or(0)
    };
    assert!(segments(&elsewhere) > 0, "the log is where its URL says");
    assert_eq!(
        segments(&dir.0.join("sluice.db-stream-log")),
        0,
        "nothing in the default place"
    );

    let with = |records: &str| {
        Command::new(bin())
            .arg("doctor")
            .arg("--data-dir")
            .arg(&dir.0)
            .arg("--records")
            .arg(records)
            .env_remove("SLUICE_CONFIG")
            .current_dir(&dir.0)
            .output()
            .expect("run sluice doctor")
    };
    let out = with(&url);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&format!("records: {url}")), "{stdout}");
    assert!(stdout.contains("stream check: ok (1 records"), "{stdout}");

    let out = with("kafka://broker:9092");
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("invalid record engine URL kafka://broker:9092"),
        "{}",
        text(&out.stdout)
    );
    // Nothing listens on this port: the JetStream engine cannot be reached, and says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let out = with(&format!("nats://user:secret@127.0.0.1:{closed}"));
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("cannot connect to nats://127.0.0.1:{closed}")),
        "{stdout}"
    );
    assert!(
        !stdout.contains("secret"),
        "no secrets in the output: {stdout}"
    );
}

/// `sluice doctor | head -1`: when the reader of its output has gone, the command stops
/// quietly (exit status 141, as a program stopped by SIGPIPE) instead of panicking.
#[test]
fn doctor_stops_quietly_on_a_closed_pipe() {
    let dir = DataDir::new("doctor-pipe");
    let server = Server::start(&dir.0);
    server.stop();

    let mut child = Command::new(bin())
        .arg("doctor")
        .arg("--data-dir")
        .arg(&dir.0)
        .env_remove("SLUICE_CONFIG")
        .env_remove("SLUICE_STORE")
        .current_dir(&dir.0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sluice doctor");
    // Close the reading end before the first line is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for sluice doctor");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(stderr.is_empty(), "nothing said on a closed pipe: {stderr}");
}

/// An acknowledged upload whose outcome was lost (its status back to `queued` an hour
/// ago, the checkpoint past its record) is reported with where its record is; a bound
/// longer than its age lets doctor pass.
#[test]
fn doctor_lists_acknowledged_uploads_left_unfinished() {
    let dir = DataDir::new("doctor-unfinished");
    let server = Server::start(&dir.0);
    server.create_user("u@example.com");
    let token = server.id_token("u@example.com");
    let mut ids = Vec::new();
    for i in 0..2 {
        let resp = server.upload(&token, &format!("u{i}.txt"), "x");
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().expect("json");
        let id = v["uploadId"].as_str().expect("id").to_owned();
        server.wait_final(&token, &id);
        ids.push(id);
    }
    server.stop();

    let out = doctor(&dir.0);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("uploads: none acknowledged and unfinished"));

    let url = common::meta_url_of(&dir.0);
    let db = sluice_meta::open(&url, &[]).expect("open meta");
    let lost = ids[0].clone();
    db.write_blocking(move |c| {
        c.execute(
            "UPDATE uploads SET status = 'queued', created_ms = created_ms - 3600000
             WHERE id = ?1",
            sluice_meta::params![lost],
        )
    })
    .expect("lose an outcome");
    db.close();

    let out = doctor(&dir.0);
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("uploads: 1 acknowledged and unfinished for more than 900 s"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.contains(&ids[0]))
        .unwrap_or_else(|| panic!("the upload is named: {stdout}"));
    assert!(line.contains("queued"), "{line}");
    assert!(line.contains("checkpointed past it"), "{line}");
    assert!(!stdout.contains(&ids[1]), "{stdout}");

    let out = doctor_with(&dir.0, &["--stuck-after", "7200"]);
    assert!(out.status.success(), "{}", text(&out.stdout));

    // A running server puts the lost upload into the stream again, and it is processed.
    let server = Server::start(&dir.0);
    let token = server.id_token("u@example.com");
    let v = server.wait_final(&token, &ids[0]);
    assert_eq!(v["status"], "processed", "{v}");
    server.stop();
    let out = doctor(&dir.0);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// A byte of an object's blob file flipped while the server is stopped (the file engine, as
/// a rotting disk would): the object is never served whole — the API's download and S3's
/// GetObject fail instead of answering a clean 200 with the bad bytes (a 500 when the
/// damage is found before anything was sent), and the server logs the damaged object — and
/// `doctor --deep` names it and fails, while plain `doctor` stays fast and `--deep` passes
/// an undamaged data directory.
#[test]
fn a_flipped_blob_byte_is_never_served_and_doctor_deep_names_it() {
    let dir = DataDir::new("doctor-deep");
    if !store_url_of(&dir.0).starts_with("file://") {
        eprintln!("skipped: this test damages blob files of the file engine");
        return;
    }
    let server = Server::start(&dir.0);
    server.create_user("deep@example.com");
    let token = server.id_token("deep@example.com");
    let access: serde_json::Value =
        serde_json::from_str(&server.cli(&["keys", "create"])).expect("keys create");
    let access = (
        access["accessKeyId"].as_str().expect("id").to_owned(),
        access["secretAccessKey"]
            .as_str()
            .expect("secret")
            .to_owned(),
    );
    let out_file = dir.0.join("got.bin");
    let s3_get = |edge: &str, bucket: &str, key: &str| {
        let _ = std::fs::remove_file(&out_file);
        let (ok, _, err) = aws_as(
            (&access.0, &access.1),
            &[
                "--endpoint-url",
                edge,
                "s3api",
                "get-object",
                "--bucket",
                bucket,
                "--key",
                key,
                out_file.to_str().expect("path"),
            ],
        );
        (ok, std::fs::read(&out_file).unwrap_or_default(), err)
    };

    // Two uploads: 1 MiB (several chunks of a blob read) and 100 kB (one chunk).
    struct Stored {
        id: String,
        bucket: String,
        key: String,
        content: Vec<u8>,
        blob: String,
    }
    let mut stored = Vec::new();
    for (name, size) in [("deep.bin", 1usize << 20), ("one-chunk.bin", 100_000)] {
        let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let resp = server
            .http
            .post(format!("{}/uploads?filename={name}", server.api))
            .bearer_auth(&token)
            .header("Content-Type", "application/octet-stream")
            .body(content.clone())
            .send()
            .expect("raw upload");
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().expect("json");
        let id = v["uploadId"].as_str().expect("uploadId").to_owned();
        let status = server.wait_final(&token, &id);
        let bucket = status["s3"]["bucket"].as_str().expect("bucket").to_owned();
        let key = status["s3"]["key"].as_str().expect("key").to_owned();
        let (code, got) = server.get_bytes(&token, &format!("/uploads/{id}/content"));
        assert!(code == 200 && got == content, "intact before the damage");
        let (ok, got, err) = s3_get(&server.edge, &bucket, &key);
        assert!(
            ok && got == content,
            "S3 GetObject of the intact object: {err}"
        );
        let (b, k) = (bucket.clone(), key.clone());
        let blob: String = meta_read(&dir.0, move |c| {
            c.query_row(
                "SELECT blob FROM objects WHERE bucket = ?1 AND key = ?2",
                sluice_meta::params![b, k],
                |r| r.get(0),
            )
        })
        .expect("the object's blob");
        stored.push(Stored {
            id,
            bucket,
            key,
            content,
            blob,
        });
    }

    // Healthy, read deeply while the server runs (read-only).
    let out = doctor_with(&dir.0, &["--deep"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("deep check: ok ("), "{stdout}");
    let (api, edge) = (server.api.clone(), server.edge.clone());
    server.stop();

    // One byte of each upload's blob file flipped.
    for s in &stored {
        let path = dir.0.join("blobs").join(&s.blob[..2]).join(&s.blob);
        let mut bytes = std::fs::read(&path).expect("read the blob file");
        assert!(bytes == s.content, "the blob file holds the object's bytes");
        let at = bytes.len() / 3;
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write the blob file");
    }

    // Plain doctor does not read objects; --deep does and names each damaged one.
    let out = doctor(&dir.0);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("deep check: not run"));
    let out = doctor_with(&dir.0, &["--deep"]);
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "a damaged blob must fail: {stdout}");
    for s in &stored {
        assert!(
            stdout.contains(&format!(
                "problem: object {}/{} (blob {}): its SHA-256 does not match",
                s.bucket, s.key, s.blob
            )),
            "the damaged object is named: {stdout}"
        );
    }
    assert!(stdout.contains("deep check: 2 problems"), "{stdout}");
    assert!(
        text(&out.stderr).contains("2 problems ("),
        "{}",
        text(&out.stderr)
    );

    // Served by neither edge: the transfer fails (or never starts) instead of a clean 200.
    let server = Server::restart(&dir.0, &api, &edge);
    for s in &stored {
        let resp = server
            .http
            .get(format!("{}/uploads/{}/content", server.api, s.id))
            .bearer_auth(&token)
            .send();
        match resp {
            // Damage found before the answer started (the one-chunk object): a 500.
            Ok(resp) if resp.status() != 200 => {
                assert_eq!(resp.status(), 500, "{}", s.key);
            }
            // Found after: the body is cut short, never complete.
            Ok(resp) => {
                let body = resp.bytes();
                assert!(body.is_err(), "{}: a clean 200 with damaged bytes", s.key);
            }
            // Or the connection closed before the head left the server's buffer.
            Err(e) => assert!(s.content.len() > 256 * 1024, "{}: {e}", s.key),
        }
        let (ok, got, _) = s3_get(&server.edge, &s.bucket, &s.key);
        assert!(!ok, "S3 GetObject of damaged {} must fail", s.key);
        assert!(
            got.len() < s.content.len(),
            "no damaged copy was handed out whole"
        );
    }
    let (code, _) = server.get_bytes(&token, &format!("/uploads/{}/content", stored[1].id));
    assert_eq!(code, 500, "one chunk: refused before anything was sent");
    let log = std::fs::read_to_string(dir.0.join("server.log")).expect("server log");
    for s in &stored {
        assert!(
            log.contains("stored bytes are damaged") && log.contains(&s.blob),
            "the server logs the damaged object and its blob"
        );
    }
    server.stop();
}
