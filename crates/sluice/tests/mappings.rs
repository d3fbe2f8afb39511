//! User-managed event-source mappings, through the real binary: `sluice mapping …` and
//! `sluice logs` against a running `sluice serve`, `[[mapping]]` in `sluice.toml`, exec,
//! built-in and Lambda (Python and Node.js) functions. Uses `python3` and `node` from the
//! machine. No wall-clock thresholds: everything polls with a generous deadline.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{DataDir, Server, bin, wait_for};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

/// Runs the CLI in the data directory; returns (exit code, stdout, stderr).
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    // Global flags first: whatever follows `--` belongs to an exec: program.
    let out = Command::new(bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("SLUICE_CONFIG")
        .current_dir(dir)
        .output()
        .expect("run sluice");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn get(server: &Server, name: &str) -> Value {
    serde_json::from_str(&server.cli(&["mapping", "get", name])).expect("mapping get prints JSON")
}

/// Polls until `f` returns Some, or panics with `what` after the deadline.
fn wait_state(server: &Server, name: &str, state: &str) -> Value {
    wait_for(&format!("{name} to be {state}"), DEADLINE, || {
        let v = get(server, name);
        (v["state"] == state).then_some(v)
    })
}

fn logs(server: &Server, name: &str) -> String {
    server.cli(&["logs", name, "-n", "10000"])
}

fn count_lines_ending(text: &str, suffix: &str) -> usize {
    text.lines().filter(|l| l.ends_with(suffix)).count()
}

fn upload_id(resp: reqwest::blocking::Response) -> String {
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().expect("upload json");
    v["uploadId"].as_str().expect("uploadId").to_owned()
}

fn server_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

#[test]
fn exec_mapping_created_disabled_enabled_and_deleted_from_the_cli() {
    let dir = DataDir::new("map-exec");
    let server = Server::start(&dir.0);
    server.create_user("exec@example.com");
    let token = server.id_token("exec@example.com");
    let out = dir.0.join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let seen = out.join("seen.txt");
    let read_seen = || std::fs::read_to_string(&seen).unwrap_or_default();

    let env_out = format!("OUT={}", out.display());
    let (code, created, err) = run(
        &dir.0,
        &[
            "mapping",
            "create",
            "--name",
            "exec-upper",
            "--function",
            "exec:/bin/sh",
            "--env",
            &env_out,
            "--batch-size",
            "10",
            "--output-prefix",
            "exec-out/",
            "--",
            "-c",
            "tr a-z A-Z | tee -a \"$OUT/seen.txt\"",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(&created).expect("create prints JSON");
    assert_eq!(
        created["function"],
        "exec:/bin/sh -c tr a-z A-Z | tee -a \"$OUT/seen.txt\""
    );
    assert_eq!(created["batchSize"], 10);
    let running = wait_state(&server, "exec-upper", "Enabled");
    assert!(!running["uuid"].as_str().unwrap_or_default().is_empty());

    // Processed by the new mapping, and still by the built-in one (upload status).
    let id = upload_id(server.upload(&token, "alpha.txt", "alpha\n"));
    wait_for("the exec function to see alpha", DEADLINE, || {
        read_seen().contains("ALPHA").then_some(())
    });
    let status = server.wait_final(&token, &id);
    assert_eq!(status["status"], "processed", "{status}");
    let v = wait_for("stats of exec-upper", DEADLINE, || {
        let v = get(&server, "exec-upper");
        (v["stats"]["succeeded"].as_u64() >= Some(1)).then_some(v)
    });
    assert_eq!(v["lastProcessingResult"], "OK", "{v}");
    assert!(v["stats"]["recordsIn"].as_u64() >= Some(1), "{v}");
    assert!(v["stats"]["lastBatchMs"].is_u64(), "{v}");
    assert!(v["stats"]["millisBehindLatest"].is_i64(), "{v}");
    let list = server.cli(&["mapping", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("exec-upper") && l.contains("Enabled")),
        "{list}"
    );
    assert!(
        list.lines().any(|l| l.starts_with("builtin-uppercase")),
        "{list}"
    );
    let l = logs(&server, "exec-upper");
    assert!(l.contains("START RequestId: "), "{l}");
    assert!(l.contains("Result: ok"), "{l}");

    // Disabled: the server stops it; a record that arrives meanwhile waits.
    server.cli(&["mapping", "disable", "exec-upper"]);
    wait_state(&server, "exec-upper", "Disabled");
    let id = upload_id(server.upload(&token, "bravo.txt", "bravo\n"));
    assert_eq!(server.wait_final(&token, &id)["status"], "processed");
    assert!(!read_seen().contains("BRAVO"), "a disabled mapping ran");

    // Enabled again: it resumes after its checkpoint.
    server.cli(&["mapping", "enable", "exec-upper"]);
    wait_for(
        "the exec function to see bravo after enable",
        DEADLINE,
        || read_seen().contains("BRAVO").then_some(()),
    );
    wait_state(&server, "exec-upper", "Enabled");

    // Updated: the server restarts it with the new configuration.
    let updated: Value = serde_json::from_str(&server.cli(&[
        "mapping",
        "update",
        "exec-upper",
        "--batch-size",
        "3",
    ]))
    .expect("update prints JSON");
    assert_eq!(updated["batchSize"], 3);
    wait_state(&server, "exec-upper", "Enabled");

    // Deleted: stopped in the server, gone from the CLI, its logs with it.
    server.cli(&["mapping", "delete", "exec-upper"]);
    wait_for("the server to stop the deleted mapping", DEADLINE, || {
        (server_log(&dir.0)
            .matches("stopped mapping mapping=exec-upper")
            .count()
            >= 3)
            .then_some(())
    });
    let id = upload_id(server.upload(&token, "charlie.txt", "charlie\n"));
    assert_eq!(server.wait_final(&token, &id)["status"], "processed");
    assert!(!read_seen().contains("CHARLIE"), "a deleted mapping ran");
    let (code, _, err) = run(&dir.0, &["mapping", "get", "exec-upper"]);
    assert_eq!(code, 1);
    assert!(err.contains("mapping exec-upper not found"), "{err}");
    let (code, _, _) = run(&dir.0, &["logs", "exec-upper"]);
    assert_eq!(code, 1);
}

#[test]
fn mappings_from_sluice_toml_are_created_at_start() {
    let dir = DataDir::new("map-toml");
    let fns = dir.0.join("fns");
    std::fs::create_dir_all(&fns).expect("mkdir");
    std::fs::write(
        fns.join("mark.sh"),
        "#!/bin/sh\nwhile read -r line; do echo \"$line\" >> \"$OUT/marked.txt\"; done\necho done\n",
    )
    .expect("write script");
    let mut perms = std::fs::metadata(fns.join("mark.sh"))
        .expect("stat")
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(fns.join("mark.sh"), perms).expect("chmod");
    dir.write_config(&format!(
        r#"
[[mapping]]
name = "copier"
function = "builtin:copy"
output_prefix = "copies/"
batch_size = 5
maximum_retry_attempts = 2

[[mapping]]
name = "marker"
stream = "uploads-stream"
function = "exec:./fns/mark.sh"
output_prefix = "marked/"
starting_position = "TRIM_HORIZON"
env = {{ OUT = "{}" }}
"#,
        dir.0.display()
    ));
    let server = Server::start(&dir.0);
    let copier = wait_state(&server, "copier", "Enabled");
    assert_eq!(copier["batchSize"], 5);
    assert_eq!(copier["maximumRetryAttempts"], 2);
    let marker = wait_state(&server, "marker", "Enabled");
    assert_eq!(
        marker["function"],
        format!("exec:{}/./fns/mark.sh", dir.0.display()),
        "relative paths resolve against the configuration file's directory"
    );

    server.create_user("toml@example.com");
    let token = server.id_token("toml@example.com");
    let id = upload_id(server.upload(&token, "doc.txt", "hello toml\n"));
    assert_eq!(server.wait_final(&token, &id)["status"], "processed");
    wait_for("marker to run", DEADLINE, || {
        std::fs::read_to_string(dir.0.join("marked.txt"))
            .is_ok_and(|t| t.contains("hello toml"))
            .then_some(())
    });
    let copied = wait_for("the copy under copies/", DEADLINE, || {
        common::meta_read(&dir.0, |c| {
            c.query_row(
                "SELECT inline FROM objects WHERE bucket = 'sluice' AND key = 'copies/doc.txt'",
                sluice_meta::params![],
                |r| r.get::<Vec<u8>>(0),
            )
        })
        .ok()
    });
    assert_eq!(copied, b"hello toml\n");

    // A restart with the same file keeps the mappings (and their state) as they are.
    server.cli(&["mapping", "disable", "marker"]);
    wait_state(&server, "marker", "Disabled");
    let (api, edge) = (server.api.clone(), server.edge.clone());
    server.stop();
    let server = Server::restart(&dir.0, &api, &edge);
    wait_state(&server, "copier", "Enabled");
    let marker = get(&server, "marker");
    assert_eq!(marker["state"], "Disabled", "{marker}");
}

const PY_HANDLER: &str = r#"
import base64, json, os

def handler(event, context):
    print("endpoint", os.environ.get("AWS_ENDPOINT_URL"), "key", os.environ.get("AWS_ACCESS_KEY_ID"))
    failures = []
    for r in event["Records"]:
        rec = json.loads(base64.b64decode(r["kinesis"]["data"]))
        print("saw", rec["key"])
        if "bad" in rec["key"]:
            failures.append({"itemIdentifier": r["kinesis"]["sequenceNumber"]})
    return {"batchItemFailures": failures}
"#;

const NODE_HANDLER: &str = r#"
export const handler = async (event, context) => {
  for (const r of event.Records) {
    const rec = JSON.parse(Buffer.from(r.kinesis.data, 'base64').toString());
    console.log('node saw', rec.key, 'bucket', process.env.PROCESSED_BUCKET, context.functionName);
  }
};
"#;

#[test]
fn lambda_mappings_report_batch_item_failures_and_log() {
    let dir = DataDir::new("map-lambda");
    // One shard, so that the records keep the order they were uploaded in.
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_SHARDS", "1")],
    );
    std::fs::create_dir_all(dir.0.join("fn")).expect("mkdir");
    std::fs::write(dir.0.join("fn/handler.py"), PY_HANDLER).expect("write handler");
    std::fs::create_dir_all(dir.0.join("processor")).expect("mkdir");
    std::fs::write(dir.0.join("processor/index.mjs"), NODE_HANDLER).expect("write handler");

    // Relative handler paths resolve against the CLI's directory (the data dir here).
    let py: Value = serde_json::from_str(&server.cli(&[
        "mapping",
        "create",
        "--name",
        "py-items",
        "--stream",
        "uploads-stream",
        "--function",
        "lambda:python:./fn/handler.handler",
        "--batch-size",
        "10",
        "--maximum-batching-window-secs",
        "1",
        "--function-response-types",
        "ReportBatchItemFailures",
        "--maximum-retry-attempts",
        "1",
    ]))
    .expect("create prints JSON");
    let code_dir = dir.0.canonicalize().expect("canonical");
    assert_eq!(
        py["function"],
        format!("lambda:python:{}/fn/handler.handler", code_dir.display())
    );
    // The exact spelling of the issue.
    server.cli(&[
        "mapping",
        "create",
        "--name",
        "seed-processor",
        "--stream",
        "uploads-stream",
        "--function",
        "lambda:nodejs:./processor/index.handler",
        "--env",
        "PROCESSED_BUCKET=sluice",
        "--batch-size",
        "10",
        "--starting-position",
        "LATEST",
    ]);
    wait_state(&server, "py-items", "Enabled");
    wait_state(&server, "seed-processor", "Enabled");

    server.create_user("lambda@example.com");
    let token = server.id_token("lambda@example.com");
    for name in ["good1.txt", "good2.txt", "bad.txt"] {
        let id = upload_id(server.upload(&token, name, "x"));
        assert_eq!(server.wait_final(&token, &id)["status"], "processed");
    }

    // bad.txt is reported failed twice (one retry), then given up; the records before it,
    // reported as processed, are never delivered again (however the batches fell).
    let v = wait_for("py-items to give up on bad.txt", DEADLINE, || {
        let v = get(&server, "py-items");
        let done = v["stats"]["failed"] == 1 && v["stats"]["succeeded"] == 2;
        done.then_some(v)
    });
    let l = logs(&server, "py-items");
    assert_eq!(count_lines_ending(&l, "saw uploads/bad.txt"), 2, "{l}");
    assert_eq!(count_lines_ending(&l, "saw uploads/good1.txt"), 1, "{l}");
    assert_eq!(count_lines_ending(&l, "saw uploads/good2.txt"), 1, "{l}");
    assert!(v["stats"]["functionErrors"].as_u64() >= Some(2), "{v}");
    assert!(l.contains("\tstdout\tsaw uploads/good1.txt"), "{l}");

    // The function reaches the edge with a key the server accepts; the secret is not
    // logged anywhere.
    assert!(
        l.contains(&format!("endpoint {} key AKIA", server.edge)),
        "{l}"
    );
    let key_id = l
        .split(" key ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("key id in the log")
        .to_owned();
    let keys = server.cli(&["keys", "list"]);
    assert!(keys.contains(&key_id), "{keys}");

    let node = wait_for("the node handler's lines", DEADLINE, || {
        let l = logs(&server, "seed-processor");
        (l.matches("node saw uploads/").count() >= 3).then_some(l)
    });
    assert!(
        node.contains("node saw uploads/bad.txt bucket sluice seed-processor"),
        "{node}"
    );

    // Follow: `logs -f` prints lines as they arrive.
    let mut follower = Command::new(bin())
        .args(["logs", "seed-processor", "-f", "-n", "0", "--data-dir"])
        .arg(&dir.0)
        .current_dir(&dir.0)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("logs -f");
    let id = upload_id(server.upload(&token, "late.txt", "x"));
    assert_eq!(server.wait_final(&token, &id)["status"], "processed");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = wait_for("logs -f to print the new line", DEADLINE, || {
        rx.try_recv()
            .ok()
            .filter(|l| l.contains("node saw uploads/late.txt"))
    });
    assert!(line.contains("\tstdout\t"), "{line}");
    let _ = follower.kill();
    let _ = follower.wait();

    let server_log = server_log(&dir.0);
    let secrets = server.cli(&["keys", "list"]);
    assert!(!secrets.is_empty());
    for line in server_log.lines() {
        assert!(!line.contains("secret"), "{line}");
    }
}

#[test]
fn bad_mapping_input_exits_with_status_2() {
    let dir = DataDir::new("map-bad");
    for (args, why) in [
        (
            vec!["--name", "m", "--function", "ftp:thing"],
            "must be builtin:",
        ),
        (
            vec!["--name", "m", "--function", "builtin:nope"],
            "unknown built-in function",
        ),
        (
            vec![
                "--name",
                "m",
                "--function",
                "builtin:copy",
                "--batch-size",
                "0",
            ],
            "batch size must be between 1 and 10000",
        ),
        (
            vec![
                "--name",
                "m",
                "--function",
                "builtin:copy",
                "--batch-size",
                "10001",
            ],
            "batch size must be between 1 and 10000",
        ),
        (
            vec![
                "--name",
                "m",
                "--function",
                "builtin:copy",
                "--parallelization-factor",
                "11",
            ],
            "parallelization factor",
        ),
        (
            vec![
                "--name",
                "m",
                "--function",
                "builtin:copy",
                "--maximum-retry-attempts",
                "-2",
            ],
            "maximum retry attempts",
        ),
        (
            vec!["--name", "m", "--function", "lambda:ruby:./x/a.b"],
            "unknown lambda runtime",
        ),
        (
            vec![
                "--name",
                "m",
                "--function",
                "lambda:python:./missing/h.handler",
            ],
            "code directory",
        ),
        (
            vec![
                "--name",
                "m",
                "--function",
                "builtin:copy",
                "--on-failure",
                "ftp://x",
            ],
            "destination",
        ),
        (
            vec![
                "--name",
                "m",
                "--function",
                "builtin:copy",
                "--batch-size",
                "ten",
            ],
            "invalid value",
        ),
    ] {
        let mut all = vec!["mapping", "create"];
        all.extend(args.iter().copied());
        let (code, _, err) = run(&dir.0, &all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: "), "{err}");
        assert!(!first.ends_with('.'), "{err}");
    }
    let (code, _, err) = run(&dir.0, &["mapping", "disable", "builtin-uppercase"]);
    assert_eq!(code, 2, "{err}");
    // Created while no server runs: stored, and listed.
    let (code, out, err) = run(
        &dir.0,
        &[
            "mapping",
            "create",
            "--name",
            "later",
            "--function",
            "builtin:noop",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"state\": \"Enabled\""), "{out}");
    let (code, _, err) = run(
        &dir.0,
        &[
            "mapping",
            "create",
            "--name",
            "later",
            "--function",
            "builtin:noop",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("mapping later already exists"), "{err}");
}
