//! The data directory is private to the user sluice runs as (issue 13, item 6): it is
//! created 0700 and everything in it has no group or other permission; a directory others
//! can write is refused with the command that fixes it; one others can only read (an earlier
//! version's 0755) is made private.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every file and folder under `dir` (not following links).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                pending.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Entries under `dir` (links aside) with a group or other permission bit, with their modes.
fn not_private(dir: &Path) -> Vec<String> {
    walk(dir)
        .iter()
        .filter_map(|p| Some((p, std::fs::symlink_metadata(p).ok()?)))
        .filter(|(_, m)| !m.file_type().is_symlink() && m.permissions().mode() & 0o077 != 0)
        .map(|(p, m)| format!("{} {:04o}", p.display(), m.permissions().mode() & 0o777))
        .collect()
}

/// `sluice <args> --data-dir <dir>` run in `cwd`, its whole output.
fn run(cwd: &Path, dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .arg("--data-dir")
        .arg(dir)
        .current_dir(cwd)
        .output()
        .expect("run sluice")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Started on a data directory that does not exist yet and used (uploads big enough for a
/// blob file, processing, a second key), the data directory is 0700 and nothing under it
/// has a group or other permission bit — the database, its WAL, the stream log, blobs, keys.
#[test]
fn the_data_dir_and_everything_in_it_are_private() {
    let base = DataDir::new("perm-private");
    let data = base.0.join("nested").join("data");
    let server = Server::start_in(&base.0, &data, &base.0.join("stdout"));
    server.create_user("perm@example.com");
    let token = server.id_token("perm@example.com");
    let big = "x".repeat(100 * 1024);
    let resp = server.upload(&token, "big.txt", &big);
    assert_eq!(resp.status(), 200);
    let id = resp.json::<serde_json::Value>().expect("json")["uploadId"]
        .as_str()
        .expect("uploadId")
        .to_owned();
    assert_eq!(server.wait_final(&token, &id)["status"], "processed");
    server.cli(&["keys", "create", "--description", "perm test"]);

    assert_eq!(mode_of(&data), 0o700, "the data directory");
    assert_eq!(mode_of(&base.0.join("nested")), 0o700, "created with it");
    let entries = walk(&data);
    let names: Vec<String> = entries
        .iter()
        .filter_map(|p| p.strip_prefix(&data).ok())
        .map(|p| p.display().to_string())
        .collect();
    for expected in ["keys", "run.json", "serve.lock"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("keys/") && n.ends_with(".pem")),
        "{names:?}"
    );
    if meta_url_of(&base.0).starts_with("sqlite://") {
        for expected in ["sluice.db", "sluice.db-wal", "sluice.db-shm"] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        assert!(
            names.iter().any(|n| n.starts_with("sluice.db-stream-log/")),
            "{names:?}"
        );
    }
    if store_url_of(&base.0).starts_with("file://") {
        assert!(
            names.iter().filter(|n| n.starts_with("blobs/")).count() >= 2,
            "a blob folder and file: {names:?}"
        );
    }
    let open = not_private(&data);
    assert!(open.is_empty(), "group/other bits: {open:#?}");
    server.stop();
    let open = not_private(&data);
    assert!(open.is_empty(), "after a clean stop: {open:#?}");
}

/// A data directory others can write is refused, by `serve` and by a command that writes,
/// with exit status 1 and the command that fixes it; nothing is created in it. One owned by
/// another user likewise (checked when the tests run as root, who can hand it over).
#[test]
fn a_data_dir_others_can_write_is_refused_with_the_fix() {
    let base = DataDir::new("perm-refused");
    let data = base.0.join("shared data");
    std::fs::create_dir(&data).expect("mkdir");
    chmod(&data, 0o777);
    let fix = format!("chmod 700 '{}'", data.display());
    for args in [
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--edge-listen",
            "127.0.0.1:0",
        ][..],
        &["keys", "list"][..],
        &[
            "user",
            "create",
            "--email",
            "x@example.com",
            "--password",
            PASSWORD,
        ][..],
    ] {
        let out = run(&base.0, &data, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&fix), "{args:?}: {stderr}");
        assert!(stderr.contains("other users can write"), "{stderr}");
    }
    assert_eq!(mode_of(&data), 0o777, "left for its owner to decide");
    assert!(walk(&data).is_empty(), "nothing created: {:?}", walk(&data));
    // The fix it names works.
    let fixed = Command::new("sh").arg("-c").arg(&fix).status().expect("sh");
    assert!(fixed.success());
    let out = run(&base.0, &data, &["keys", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Owned by someone else (only root can arrange that).
    let other = base.0.join("theirs");
    std::fs::create_dir(&other).expect("mkdir");
    chmod(&other, 0o700);
    if std::os::unix::fs::chown(&other, Some(54_321), None).is_ok() {
        let out = run(&base.0, &other, &["keys", "list"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("belongs to uid 54321"), "{stderr}");
        let me = std::fs::metadata(&base.0).expect("stat").uid();
        assert!(
            stderr.contains(&format!("chown -R {me} {}", other.display())),
            "{stderr}"
        );
    }
}

/// A data directory an earlier version left readable by others (0755, files 0644) is made
/// private at the next start, and says so.
#[test]
fn a_data_dir_others_can_read_is_made_private() {
    let dir = DataDir::new("perm-upgrade");
    let server = Server::start(&dir.0);
    server.stop();
    // As an earlier version left it.
    chmod(&dir.0, 0o755);
    for p in walk(&dir.0) {
        let m = std::fs::symlink_metadata(&p).expect("stat");
        chmod(&p, if m.is_dir() { 0o755 } else { 0o644 });
    }
    let server = Server::start(&dir.0);
    assert_eq!(mode_of(&dir.0), 0o700);
    let open = not_private(&dir.0);
    assert!(open.is_empty(), "{open:#?}");
    let log = std::fs::read_to_string(dir.0.join("server.log")).expect("log");
    assert!(log.contains("made it 0700"), "{log}");
    server.stop();
}
