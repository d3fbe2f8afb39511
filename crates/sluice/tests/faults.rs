//! Engines failing under a running server: a PostgreSQL of the test's own stopped (as a
//! crash would) and started again during uploads; a Garage of its own killed and started
//! again. While an engine is down clients get 503 with `Retry-After` (AWS's error format on
//! the edge), never a 200 for something not stored; nothing is half visible; and work
//! resumes by itself when the engine is back: every acknowledged upload is processed.
//!
//! The tests are named `fault_*`: `scripts/test` runs them once (they bring their own
//! engines, whatever the pass).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::engines::{OwnGarage, OwnPostgres};
use common::{DataDir, Server};
use serde_json::{Value, json};

fn upload_raw(
    server: &Server,
    token: &str,
    name: &str,
    body: Vec<u8>,
) -> reqwest::blocking::Response {
    server
        .http
        .post(format!("{}/uploads?filename={name}", server.api))
        .bearer_auth(token)
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .expect("upload request")
}

/// A PutObject signed with the development key, without the CLI's retries.
fn s3_put(server: &Server, key: &(String, String), object: &str, body: &Path) -> (bool, String) {
    let out = Command::new(common::aws_cli())
        .args([
            "--endpoint-url",
            &server.edge,
            "s3api",
            "put-object",
            "--bucket",
            "sluice",
        ])
        .args(["--key", object, "--body"])
        .arg(body)
        .env("AWS_ACCESS_KEY_ID", &key.0)
        .env("AWS_SECRET_ACCESS_KEY", &key.1)
        .env("AWS_DEFAULT_REGION", "us-east-2")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_RETRY_MODE", "standard")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("aws");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn access_key(server: &Server) -> (String, String) {
    let key: Value = serde_json::from_str(&server.cli(&["keys", "create"])).expect("key json");
    (
        key["accessKeyId"].as_str().expect("id").to_owned(),
        key["secretAccessKey"].as_str().expect("secret").to_owned(),
    )
}

fn upload_id(resp: reqwest::blocking::Response) -> String {
    resp.json::<Value>().expect("json")["uploadId"]
        .as_str()
        .expect("uploadId")
        .to_owned()
}

/// `GET /readyz`: its status and JSON body.
fn readyz(server: &Server) -> (u16, Value) {
    let r = server
        .http
        .get(format!("{}/readyz", server.api))
        .send()
        .expect("readyz");
    let code = r.status().as_u16();
    (code, r.json().expect("readyz json"))
}

#[test]
fn fault_postgres_down_answers_503_and_work_resumes_when_it_is_back() {
    let pg = OwnPostgres::start();
    let dir = DataDir::new("fault-pg");
    dir.write_config(&format!("[meta]\nurl = \"{}\"\n", pg.url()));
    let server = Server::start(&dir.0);
    server.create_user("f@example.com");
    let token = server.id_token("f@example.com");
    let key = access_key(&server);
    let client_id = server.info()["clientId"]
        .as_str()
        .expect("clientId")
        .to_owned();

    // A burst of uploads, then the engine crashes while they are being processed.
    let mut acknowledged = Vec::new();
    for i in 0..30 {
        let r = server.upload(&token, &format!("before-{i}.txt"), "before the crash");
        assert_eq!(r.status(), 200);
        acknowledged.push(upload_id(r));
    }
    pg.crash();

    // While it is down: 503 with Retry-After, in each protocol's format; nothing stored.
    let r = server.upload(&token, "during.txt", "during the outage");
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let body: Value = r.json().expect("json error");
    assert_eq!(body["error"], "service_unavailable", "{body}");
    let big = upload_raw(&server, &token, "during-big.bin", vec![7u8; 300_000]);
    assert_eq!(
        big.status(),
        503,
        "a large upload: blob written, row refused"
    );
    let file = dir.0.join("obj.txt");
    std::fs::write(&file, "s3 during the outage").expect("write");
    let (ok, err) = s3_put(&server, &key, "loose/during.txt", &file);
    assert!(!ok && err.contains("ServiceUnavailable"), "{err}");
    let (status, body) = server.cognito(
        "InitiateAuth",
        json!({
            "AuthFlow": "USER_PASSWORD_AUTH",
            "ClientId": client_id,
            "AuthParameters": {"USERNAME": "f@example.com", "PASSWORD": common::PASSWORD},
        }),
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["__type"], "ServiceUnavailable");
    let (code, ready) = readyz(&server);
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["checks"]["blobs"], "ok", "{ready}");
    assert_ne!(ready["checks"]["meta"], "ok", "{ready}");

    pg.start_again();
    // Back: new work is accepted, and everything acknowledged gets processed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let r = server.upload(&token, "after.txt", "after the restart");
        if r.status() == 200 {
            break upload_id(r);
        }
        assert!(
            Instant::now() < deadline,
            "uploads never resumed: {}",
            r.status()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    acknowledged.push(after);
    for id in &acknowledged {
        let s = server.wait_final(&token, id);
        assert_eq!(s["status"], "processed", "{s}");
    }
    // What was refused left nothing behind: no object, no upload, no blob.
    let (code, _) = server.get_bytes(&token, "/uploads/x");
    assert_eq!(code, 404);
    let objects = common::meta_read(&dir.0, |c| {
        c.query_row(
            "SELECT COUNT(*) FROM objects WHERE key LIKE '%during%'",
            sluice_meta::params![],
            |r| r.get::<i64>(0),
        )
    });
    // meta_read opens PostgreSQL afresh: it is back, so this answers.
    assert_eq!(objects.expect("count"), 0);
    let uploads = common::meta_read(&dir.0, |c| {
        c.query_row(
            "SELECT COUNT(*) FROM uploads",
            sluice_meta::params![],
            |r| r.get::<i64>(0),
        )
    })
    .expect("count");
    assert_eq!(uploads, 31, "only acknowledged uploads exist");
    let blobs = common::blob_count(&dir.0);
    assert_eq!(blobs, 0, "the refused large upload's blob was deleted");
    server.stop();
}

#[test]
fn fault_s3_store_down_answers_503_and_work_resumes_when_it_is_back() {
    let garage = OwnGarage::start();
    let dir = DataDir::new("fault-s3");
    let (location, query) = garage.url.split_once('?').expect("query");
    dir.write_config(&format!("[store]\nurl = \"{location}/fault?{query}\"\n"));
    let server = Server::start(&dir.0);
    server.create_user("g@example.com");
    let token = server.id_token("g@example.com");
    let key = access_key(&server);
    // Large bodies live on the store (small ones stay inline in the metadata).
    let big = |n: u8| vec![b'a' + n % 26; 200_000];

    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let r = upload_raw(&server, &token, &format!("before-{i}.txt"), big(i));
        assert_eq!(r.status(), 200);
        acknowledged.push(upload_id(r));
    }
    garage.kill9();

    let r = upload_raw(&server, &token, "during.bin", big(9));
    assert_eq!(r.status(), 503, "{:?}", r.text());
    let file = dir.0.join("big.bin");
    std::fs::write(&file, big(10)).expect("write");
    let (ok, err) = s3_put(&server, &key, "loose/during.bin", &file);
    assert!(!ok && err.contains("ServiceUnavailable"), "{err}");
    // Small uploads do not need the store.
    let r = server.upload(&token, "small.txt", "inline");
    assert_eq!(r.status(), 200);
    acknowledged.push(upload_id(r));
    let (code, ready) = readyz(&server);
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["checks"]["meta"], "ok", "{ready}");
    assert_ne!(ready["checks"]["blobs"], "ok", "{ready}");

    garage.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = upload_raw(&server, &token, "after.bin", big(11));
        if r.status() == 200 {
            acknowledged.push(upload_id(r));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "uploads never resumed: {}",
            r.status()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(readyz(&server).0, 200, "ready again once the store is back");
    for id in &acknowledged {
        let s = server.wait_final(&token, id);
        assert_eq!(s["status"], "processed", "{s}");
        let (code, body) = server.get_bytes(&token, &format!("/uploads/{id}/processed"));
        assert_eq!(code, 200);
        assert!(
            body.iter()
                .all(|b| b.is_ascii_uppercase() || !b.is_ascii_alphabetic())
        );
    }
    let refused = common::meta_read(&dir.0, |c| {
        c.query_row(
            "SELECT COUNT(*) FROM objects WHERE key LIKE '%during%'",
            sluice_meta::params![],
            |r| r.get::<i64>(0),
        )
    })
    .expect("count");
    assert_eq!(refused, 0, "nothing of a refused write is visible");
    server.stop();
}
