//! The data directory is private to the user sluice runs as, and secrets are not readable
//! from it by accident (issue 13, item 6): the directory is created 0700 and everything in it
//! has no group or other permission; a directory others can write is refused with the command
//! that fixes it; one others can only read (an earlier version's 0755) is made private; the
//! SigV4 secrets are sealed in the database; the development key's secret is never printed to
//! a log, and is kept in a 0600 credentials file; existing keys keep working across restarts
//! and across the upgrade that seals them.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

/// The `secret` column of every access key, read from the metadata of a server run in
/// `cwd` (its `sluice.toml`) on the data directory `data`.
fn stored_secrets(cwd: &Path, data: &Path) -> Vec<String> {
    let configured = meta_url_of(cwd);
    let db = if configured.starts_with("sqlite://") {
        sluice_meta::Meta::open_sqlite_read_only(&data.join("sluice.db")).expect("open")
    } else {
        sluice_meta::open(&configured, &[]).expect("open")
    };
    let stored = db
        .read_blocking(|c| {
            c.query_vec(
                "SELECT secret FROM access_keys",
                sluice_meta::params![],
                |r| r.get(0),
            )
        })
        .expect("stored");
    db.close();
    stored
}

/// `sluice <args> --data-dir <dir>` run in `cwd`, its whole output; killed (and the test
/// failed) if it is still running after 30 s — a `serve` that was not refused.
fn run(cwd: &Path, dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("sluice {args:?} is still running: {}", text(&out.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The key id and secret of an AWS shared credentials file.
fn read_credentials(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).expect("credentials file");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    (value("aws_access_key_id"), value("aws_secret_access_key"))
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .filter(|p| {
            std::fs::read(p)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

/// A signed S3 request with this key succeeds.
fn authenticates(server: &Server, key: (&str, &str)) -> bool {
    let (ok, out, err) = aws_as(
        key,
        &["--endpoint-url", &server.edge, "s3api", "list-buckets"],
    );
    assert!(
        ok || err.contains("InvalidAccessKeyId") || err.contains("Signature"),
        "{out}{err}"
    );
    ok && out.contains("\"Buckets\"")
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
    for expected in ["keys", "run.json", "credentials", "serve.lock"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n == "keys/access-keys.key"),
        "{names:?}"
    );
    if meta_url_of(&base.0).starts_with("sqlite://") {
        for expected in ["sluice.db", "sluice.db-wal", "sluice.db-shm"] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        if !common::records_on_nats() {
            assert!(
                names.iter().any(|n| n.starts_with("sluice.db-stream-log/")),
                "{names:?}"
            );
        }
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

/// The development key: its secret is never printed where a log keeps it (standard output
/// here is a file), but kept in a 0600 credentials file the first start points to; it is not
/// in clear in the database or its WAL (nor is a key made with `sluice keys create`); the
/// second start prints no secret; both keys still authenticate after the restart.
#[test]
fn secrets_are_sealed_and_never_printed_again() {
    let base = DataDir::new("perm-secrets");
    let data = base.0.join("data");
    let first_out = base.0.join("first.out");
    let server = Server::start_in(&base.0, &data, &first_out);
    let credentials = data.join("credentials");
    assert_eq!(mode_of(&credentials), 0o600);
    let (dev_id, dev_secret) = read_credentials(&credentials);
    assert!(dev_id.starts_with("AKIA") && dev_secret.len() == 40);
    let made: serde_json::Value =
        serde_json::from_str(&server.cli(&["keys", "create"])).expect("json");
    let (ci_id, ci_secret) = (
        made["accessKeyId"].as_str().expect("id").to_owned(),
        made["secretAccessKey"].as_str().expect("secret").to_owned(),
    );
    assert!(authenticates(&server, (&dev_id, &dev_secret)));
    assert!(authenticates(&server, (&ci_id, &ci_secret)));
    assert!(!authenticates(
        &server,
        (&dev_id, "not-the-secret-at-all-0000000000000000")
    ));

    let printed = std::fs::read_to_string(&first_out).expect("stdout");
    assert!(printed.contains(&dev_id), "{printed}");
    assert!(
        printed.contains(&credentials.display().to_string()),
        "points to the file: {printed}"
    );
    let log = std::fs::read_to_string(base.0.join("server.log")).expect("log");
    for secret in [&dev_secret, &ci_secret] {
        assert!(
            !printed.contains(secret.as_str()),
            "not printed to a file: {printed}"
        );
        assert!(!log.contains(secret.as_str()), "not logged");
        // In clear only in the credentials file, while the WAL exists and after the stop.
        let found = files_containing(&data, secret);
        let allowed: Vec<PathBuf> = if *secret == dev_secret {
            vec![credentials.clone()]
        } else {
            Vec::new()
        };
        assert_eq!(found, allowed, "files holding the secret in clear");
    }
    if meta_url_of(&base.0).starts_with("sqlite://") {
        assert!(data.join("sluice.db-wal").exists(), "the WAL was searched");
    }
    let stored = stored_secrets(&base.0, &data);
    assert!(stored.len() >= 2, "{stored:?}");
    assert!(
        stored.iter().all(|s| s.starts_with("sealed1:")),
        "{stored:?}"
    );
    server.stop();
    for secret in [&dev_secret, &ci_secret] {
        let found = files_containing(&data, secret);
        assert!(found.iter().all(|p| *p == credentials), "{found:?}");
    }

    let second_out = base.0.join("second.out");
    let server = Server::start_in(&base.0, &data, &second_out);
    let printed = std::fs::read_to_string(&second_out).expect("stdout");
    assert!(printed.contains("sluice is ready"), "{printed}");
    assert!(
        printed.contains(&credentials.display().to_string()),
        "points to the file again: {printed}"
    );
    assert!(
        !printed.contains(&dev_secret) && !printed.contains(&ci_secret),
        "{printed}"
    );
    assert!(
        authenticates(&server, (&dev_id, &dev_secret)),
        "after restart"
    );
    assert!(
        authenticates(&server, (&ci_id, &ci_secret)),
        "after restart"
    );

    // Deleting the development key deletes its credentials file too.
    server.cli(&["keys", "delete", &dev_id]);
    assert!(!credentials.exists());
    server.stop();
}

/// A data directory of a version that stored secrets in clear (and had no key file): at the
/// next start its keys are sealed under a new key file and keep authenticating.
#[test]
fn secrets_stored_in_clear_by_an_earlier_version_are_sealed_and_keep_working() {
    let dir = DataDir::new("perm-migrate");
    let server = Server::start(&dir.0);
    let (id, secret) = read_credentials(&dir.0.join("credentials"));
    server.stop();
    // What an earlier version left: every secret in clear (unsealed here with the key file
    // the test then removes), no key file.
    let key_file = dir.0.join("keys").join("access-keys.key");
    let sealer = sluice_identity::secret_box::SecretBox::load_or_create(&key_file).expect("key");
    let url = meta_url_of(&dir.0);
    let db = sluice_meta::open(&url, &[]).expect("open the metadata");
    let rows: Vec<(String, String)> = db
        .read_blocking(|c| {
            c.query_vec(
                "SELECT id, secret FROM access_keys",
                sluice_meta::params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .expect("rows");
    // The development key (functions' keys are made only for lambda mappings).
    assert!(!rows.is_empty(), "the development key: {rows:?}");
    let clear: Vec<(String, String)> = rows
        .into_iter()
        .map(|(id, stored)| {
            let secret = sealer.open(&id, &stored).expect("unseal");
            (id, secret)
        })
        .collect();
    assert!(clear.contains(&(id.clone(), secret.clone())));
    db.write_blocking(move |c| {
        for (id, secret) in &clear {
            c.execute(
                "UPDATE access_keys SET secret = ?1 WHERE id = ?2",
                sluice_meta::params![secret, id],
            )?;
        }
        Ok::<_, sluice_meta::MetaError>(())
    })
    .expect("update");
    db.close();
    std::fs::remove_file(&key_file).expect("remove key file");

    let server = Server::start(&dir.0);
    assert_eq!(mode_of(&dir.0.join("keys").join("access-keys.key")), 0o600);
    let stored: String = meta_read(&dir.0, move |c| {
        c.query_row(
            "SELECT secret FROM access_keys WHERE id = ?1",
            sluice_meta::params![id.clone()],
            |r| r.get(0),
        )
    })
    .expect("stored");
    assert!(
        stored.starts_with("sealed1:") && !stored.contains(&secret),
        "{stored}"
    );
    let (id, secret) = read_credentials(&dir.0.join("credentials"));
    assert!(authenticates(&server, (&id, &secret)));
    server.stop();
}
