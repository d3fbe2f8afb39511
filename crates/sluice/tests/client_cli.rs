//! The client commands against a running server, as a user at a terminal or a script would
//! run them: `sluice login`, `upload`, `uploads list|get|download`, `status`, `stream tail`,
//! `logout`, with `--output table` and `--output json`; and their errors when there is no
//! server or no sign-in.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{DataDir, Server};
use serde_json::Value;

/// Runs `sluice ARGS` in `dir` on its data directory, with the sign-ins kept under `dir`
/// (`XDG_CONFIG_HOME`) and `stdin` written to its standard input.
fn run(dir: &Path, args: &[&str], stdin: &str) -> Output {
    run_on(dir, dir, args, stdin)
}

/// [`run`] on the data directory `data_dir`.
fn run_on(dir: &Path, data_dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new(common::bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice");
    // A command that fails before reading its input (no server, say) closes the pipe
    // first: that is not the test's concern, its exit status and output are.
    if let Err(e) = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        panic!("write stdin: {e}");
    }
    child.wait_with_output().expect("wait")
}

fn ok(dir: &Path, args: &[&str], stdin: &str) -> String {
    let out = run(dir, args, stdin);
    assert!(
        out.status.success(),
        "sluice {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn fails(dir: &Path, args: &[&str], stdin: &str) -> String {
    let out = run(dir, args, stdin);
    assert!(!out.status.success(), "sluice {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_user_signs_in_uploads_and_downloads_from_the_command_line() {
    let dir = DataDir::new("client");
    let d = dir.0.as_path();

    // No server yet: every client command says how to start one (and creates nothing).
    let missing = d.join("nowhere");
    for args in [
        vec!["status"],
        vec!["uploads", "list"],
        vec!["login", "--email", "a@example.com", "--password-stdin"],
    ] {
        let out = run_on(d, &missing, &args, "x\n");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("start one with `sluice serve`"),
            "{args:?}: {err}"
        );
    }
    // Nor do the commands that only read the data directory.
    for args in [
        vec!["info"],
        vec!["doctor"],
        vec!["mapping", "list"],
        vec!["keys", "list"],
    ] {
        let out = run_on(d, &missing, &args, "");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no sluice data at"), "{args:?}: {err}");
    }
    assert!(
        !missing.exists(),
        "a client command created a data directory"
    );
    let err = fails(d, &["status"], "");
    assert!(err.contains("no server is running on"), "{err}");

    let server = Server::start(d);
    server.cli(&[
        "user",
        "create",
        "--email",
        "cli@example.com",
        "--password",
        "Temp0rary!",
        "--temporary",
    ]);

    let err = fails(d, &["uploads", "list"], "");
    assert!(err.contains("not signed in"), "{err}");
    // The operator commands take --output too.
    let info: Value =
        serde_json::from_str(&ok(d, &["info", "--output", "json"], "")).expect("info json");
    assert!(info["clientId"].is_string(), "{info}");
    let mappings: Value =
        serde_json::from_str(&ok(d, &["mapping", "list", "--output", "json"], ""))
            .expect("mapping json");
    assert_eq!(mappings[0]["name"], "builtin-uppercase");
    // A temporary password: the new one comes on the next line.
    let err = fails(
        d,
        &["login", "--email", "cli@example.com", "--password-stdin"],
        "Temp0rary!\n",
    );
    assert!(err.contains("must choose a new password"), "{err}");
    let err = fails(
        d,
        &["login", "--email", "cli@example.com", "--password-stdin"],
        "wrong\n",
    );
    assert!(err.contains("NotAuthorizedException"), "{err}");
    let said = ok(
        d,
        &["login", "--email", "cli@example.com", "--password-stdin"],
        "Temp0rary!\nChosen0ne!\n",
    );
    assert!(said.contains("signed in to"), "{said}");
    let mode = std::fs::metadata(d.join("config/sluice/sessions.json"))
        .expect("sessions file")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let status = ok(d, &["status"], "");
    assert!(
        status.contains("ready") && status.contains("cli@example.com"),
        "{status}"
    );
    let status: Value =
        serde_json::from_str(&ok(d, &["status", "--output", "json"], "")).expect("json");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["signedInAs"], "cli@example.com");

    // Upload two files and wait for both.
    std::fs::write(d.join("one.txt"), "first file\n").expect("write");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(d.join("two.txt"), &big).expect("write");
    let lines = ok(
        d,
        &["upload", "one.txt", "two.txt", "--wait", "--output", "json"],
        "",
    );
    let answers: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(answers.len(), 4, "two answers, two final states: {lines}");
    assert_eq!(answers[2]["status"], "processed", "{lines}");
    assert_eq!(answers[3]["status"], "processed", "{lines}");
    let id_two = answers[1]["uploadId"].as_str().expect("id").to_owned();

    let table = ok(d, &["uploads", "list"], "");
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("UPLOAD ID"), "{table}");
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[1].contains("two.txt") && rows[1].contains("processed"),
        "{table}"
    );
    let listed: Value = serde_json::from_str(&ok(
        d,
        &["uploads", "list", "--output", "json", "--limit", "1"],
        "",
    ))
    .expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["uploadId"], id_two.as_str());
    let one: Value =
        serde_json::from_str(&ok(d, &["uploads", "get", &id_two, "--output", "json"], ""))
            .expect("json");
    assert_eq!(one["size"], 3_000_000);

    // Downloads: original and result, byte for byte; an existing file is not replaced.
    ok(d, &["uploads", "download", &id_two, "--to", "back.txt"], "");
    assert_eq!(std::fs::read(d.join("back.txt")).expect("read"), big);
    let err = fails(d, &["uploads", "download", &id_two, "--to", "back.txt"], "");
    assert!(err.contains("--force"), "{err}");
    let err = fails(d, &["uploads", "download", &id_two, "--processed"], "");
    assert!(err.contains("two.txt exists"), "{err}");
    assert_eq!(
        std::fs::read(d.join("two.txt")).expect("read"),
        big,
        "the default name is the file's own: it exists, so nothing was written"
    );
    ok(
        d,
        &["uploads", "download", &id_two, "--processed", "--force"],
        "",
    );
    assert_eq!(
        std::fs::read(d.join("two.txt")).expect("read"),
        big.to_ascii_uppercase()
    );
    let to_stdout = run(d, &["uploads", "download", &id_two, "--to", "-"], "");
    assert!(to_stdout.status.success());
    assert_eq!(to_stdout.stdout, big);
    let err = fails(d, &["uploads", "get", "no-such-upload"], "");
    assert!(err.contains("404"), "{err}");

    // The stream's records: both uploads, from the start; stops once caught up.
    let tail = ok(
        d,
        &["stream", "tail", "--from-start", "--output", "json"],
        "",
    );
    let records: Vec<Value> = tail
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(records.len(), 2, "{tail}");
    let table = ok(d, &["stream", "tail", "uploads-stream", "--from-start"], "");
    assert!(table.contains("uploads/one.txt"), "{table}");

    // Watching: the list, then each change as it happens.
    let mut watch = Command::new(common::bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") {
            watch.env_remove(k);
        }
    }
    let mut watch = watch
        .args([
            "uploads",
            "list",
            "--watch",
            "--output",
            "json",
            "--data-dir",
        ])
        .arg(d)
        .env("XDG_CONFIG_HOME", d.join("config"))
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("watch");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        watch.stdout.take().expect("stdout"),
    ));
    for _ in 0..2 {
        let line = lines.next().expect("a listed upload").expect("read");
        assert!(line.contains("\"status\":\"processed\""), "{line}");
    }
    std::fs::write(d.join("three.txt"), "third\n").expect("write");
    let added: Value =
        serde_json::from_str(&ok(d, &["upload", "three.txt", "--output", "json"], ""))
            .expect("json");
    let id_three = added["uploadId"].as_str().expect("id").to_owned();
    loop {
        let line = lines.next().expect("a change").expect("read");
        let v: Value = serde_json::from_str(&line).expect("json line");
        assert_eq!(
            v["uploadId"],
            id_three.as_str(),
            "only the new upload changes: {line}"
        );
        if v["status"] == "processed" {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();

    // An operator's status shows the streams, mappings and uploads too.
    server.cli(&[
        "user",
        "add-to-group",
        "--email",
        "cli@example.com",
        "--group",
        "admin",
    ]);
    ok(
        d,
        &["login", "--email", "cli@example.com", "--password-stdin"],
        "Chosen0ne!\n",
    );
    let status = ok(d, &["status"], "");
    assert!(
        status.contains("Mapping:    builtin-uppercase Enabled")
            && status.contains("open shards")
            && status.contains("processed"),
        "{status}"
    );

    // Sign out: the tokens stop working on the server, and are forgotten here.
    ok(d, &["logout"], "");
    let err = fails(d, &["uploads", "list"], "");
    assert!(err.contains("not signed in"), "{err}");
    server.stop();
}

/// The saved sign-in is refreshed by itself when its ID token is about to expire: with
/// 62-second tokens, a command run a few seconds after `sluice login` finds less than a
/// minute left, refreshes (REFRESH_TOKEN_AUTH) and saves the new tokens, and works.
#[test]
fn the_saved_sign_in_refreshes_itself_before_it_expires() {
    let dir = DataDir::new("client-refresh");
    let d = dir.0.as_path();
    dir.write_config("id_token_validity_secs = 62\naccess_token_validity_secs = 62\n");
    let server = Server::start(d);
    server.create_user("fresh@example.com");
    ok(
        d,
        &["login", "--email", "fresh@example.com", "--password-stdin"],
        &format!("{}\n", common::PASSWORD),
    );
    let saved = || -> Value {
        let all: Value = serde_json::from_slice(
            &std::fs::read(d.join("config/sluice/sessions.json")).expect("sessions"),
        )
        .expect("json");
        all.as_object()
            .and_then(|m| m.values().next().cloned())
            .expect("one session")
    };
    let before = saved();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let listed = ok(d, &["uploads", "list", "--output", "json"], "");
    assert_eq!(listed.trim(), "[]");
    let after = saved();
    assert_ne!(
        before["idToken"], after["idToken"],
        "the ID token was not refreshed"
    );
    assert!(
        after["expiresAt"].as_i64() > before["expiresAt"].as_i64(),
        "{before} {after}"
    );
    assert_eq!(before["refreshToken"], after["refreshToken"]);
    server.stop();
}
