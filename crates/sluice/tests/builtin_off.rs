//! `builtin_mapping = false` (`SLUICE_BUILTIN_MAPPING=false`): the built-in
//! upload-stream → `uppercase` mapping does not run, a user mapping on the upload stream
//! replaces it, and upload status follows the oldest enabled one. No wall-clock
//! thresholds: everything polls with a generous deadline.

mod common;

use std::time::{Duration, Instant};

use common::{DataDir, Server};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

fn upload_id(resp: reqwest::blocking::Response) -> String {
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().expect("upload json");
    v["uploadId"].as_str().expect("uploadId").to_owned()
}

fn server_log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

fn get(server: &Server, name: &str) -> Value {
    serde_json::from_str(&server.cli(&["mapping", "get", name])).expect("mapping get prints JSON")
}

fn wait_enabled(server: &Server, name: &str) {
    let deadline = Instant::now() + DEADLINE;
    while get(server, name)["state"] != "Enabled" {
        assert!(Instant::now() < deadline, "{name} never became Enabled");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn create(server: &Server, name: &str, function: &str, prefix: &str) {
    server.cli(&[
        "mapping",
        "create",
        "--name",
        name,
        "--function",
        function,
        "--starting-position",
        "TRIM_HORIZON",
        "--batch-size",
        "10",
        "--output-prefix",
        prefix,
    ]);
    wait_enabled(server, name);
}

#[test]
fn a_user_mapping_replaces_the_builtin_one_and_tracks_upload_status() {
    let dir = DataDir::new("builtin-off");
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_BUILTIN_MAPPING", "false")],
    );
    server.create_user("off@example.com");
    let token = server.id_token("off@example.com");

    // No mapping reads the upload stream yet: the upload waits, queued.
    let first = upload_id(server.upload(&token, "first.txt", "hello"));
    let (code, st) = server.status(&token, &first);
    assert_eq!(code, 200);
    assert_eq!(st["status"], "queued", "{st}");

    // The user mapping (a copy, not the built-in upper-casing) takes over, from the start
    // of the stream: status follows it, and its output is what the upload points at.
    create(&server, "copier", "builtin:copy", "copied/");
    let done = server.wait_final(&token, &first);
    assert_eq!(done["status"], "processed", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(
        done["processed"],
        serde_json::json!({"bucket": "sluice", "key": "copied/first.txt"})
    );
    let (code, bytes) = server.get_bytes(&token, &format!("/uploads/{first}/processed"));
    assert_eq!((code, bytes.as_slice()), (200, b"hello".as_slice()));

    // A newer mapping on the same stream processes too, but does not own upload status:
    // the oldest enabled mapping does.
    create(&server, "upper", "builtin:uppercase", "upper/");
    let second = upload_id(server.upload(&token, "second.txt", "world"));
    let done = server.wait_final(&token, &second);
    assert_eq!(done["processed"]["key"], "copied/second.txt", "{done}");

    // Disabling the owner hands the role to the next oldest.
    server.cli(&["mapping", "disable", "copier"]);
    let deadline = Instant::now() + DEADLINE;
    while !server_log(&dir.0)
        .lines()
        .any(|l| l.contains("it tracks upload status") && l.contains("upper"))
    {
        assert!(
            Instant::now() < deadline,
            "upper never took over upload status"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let third = upload_id(server.upload(&token, "third.txt", "again"));
    let done = server.wait_final(&token, &third);
    assert_eq!(done["processed"]["key"], "upper/third.txt", "{done}");
    let (code, bytes) = server.get_bytes(&token, &format!("/uploads/{third}/processed"));
    assert_eq!((code, bytes.as_slice()), (200, b"AGAIN".as_slice()));

    // The built-in mapping never ran: nothing under processed/, no statistics of it.
    let (code, bytes) = server.get_bytes(&token, &format!("/uploads/{first}/processed"));
    assert_eq!((code, bytes.as_slice()), (200, b"hello".as_slice()));
    let builtin = get(&server, "builtin-uppercase");
    assert!(
        builtin["stats"].is_null() || builtin["stats"]["recordsIn"].as_u64().unwrap_or(0) == 0,
        "{builtin}"
    );
    let log = server_log(&dir.0);
    assert!(log.contains("built-in mapping off"), "{log}");
    server.stop();
}
