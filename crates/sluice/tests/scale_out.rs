//! Scale-out with real processes on real engines: two gateway processes and three processor
//! processes (separate `sluice serve --role …`, each with a data directory of its own) on
//! a PostgreSQL, a JetStream server and a Garage of the test's own. Uploads are spread over
//! both gateways while one processor is killed with -9, another joins, JetStream is killed
//! and started again, and PostgreSQL is crashed and started again. Afterwards every
//! acknowledged upload exists and was processed into the right content, and per shard the
//! uploads were processed in stream order.
//!
//! Named `fault_*`: `scripts/test` runs it once (it brings its own engines). The number of
//! uploads is `SLUICE_SCALE_UPLOADS` (default 5,000).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use common::engines::{OwnGarage, OwnNats, OwnPostgres};

/// A private data directory (removed at the end unless the test failed).
fn data_dir(root: &Path, name: &str) -> PathBuf {
    let p = root.join(name);
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&p)
        .expect("create data dir");
    p
}

/// The key file every process of a deployment shares (`keys/access-keys.key`), copied
/// from the first process's data directory, as the deployment recipe says.
fn share_key_file(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let keys = to.join("keys");
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&keys)
        .expect("keys dir");
    let dest = keys.join("access-keys.key");
    std::fs::copy(from.join("keys").join("access-keys.key"), &dest).expect("copy key file");
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The `sluice.toml` every process of one deployment shares: the edges' URL (the token
/// issuer) and the three engines, objects and records under `name`.
fn shared_config(
    edge_port: u16,
    meta: &str,
    garage: &OwnGarage,
    nats: &OwnNats,
    name: &str,
) -> String {
    let (location, query) = garage.url.split_once('?').expect("s3 url");
    format!(
        "edge_url = \"http://127.0.0.1:{edge_port}\"\n\
         [meta]\nurl = \"{meta}\"\n[store]\nurl = \"{}/{name}?{query}\"\n\
         [records]\nurl = \"{}?prefix={}\"\n",
        location.trim_end_matches('/'),
        nats.url(),
        name.to_uppercase()
    )
}

fn upload(server: &Server, token: &str, name: &str, body: &str) -> Result<String, String> {
    let resp = server
        .http
        .post(format!("{}/uploads?filename={name}", server.api))
        .bearer_auth(token)
        .header("Content-Type", "application/octet-stream")
        .body(body.to_owned())
        .send()
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    if status != 200 {
        return Err(format!("{status} {text}"));
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    v["uploadId"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no id in {text}"))
}

/// Orders Kinesis sequence numbers (decimal strings) as numbers.
fn seq_key(s: &str) -> (usize, String) {
    (s.len(), s.to_owned())
}

#[test]
fn fault_two_gateways_and_three_processors_share_one_deployment() {
    let total: usize = std::env::var("SLUICE_SCALE_UPLOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let pg = OwnPostgres::start();
    let mut nats = OwnNats::start();
    let garage = OwnGarage::start();
    let root = tempfile::tempdir().expect("tempdir");
    let edge_port = common::engines::free_port();
    let config = format!(
        "shards = 4\n{}",
        shared_config(edge_port, &pg.url(), &garage, &nats, "scale")
    );
    let dirs: Vec<PathBuf> = ["gw1", "gw2", "p1", "p2", "p3"]
        .iter()
        .map(|n| {
            let d = data_dir(root.path(), n);
            std::fs::write(d.join("sluice.toml"), &config).expect("sluice.toml");
            d
        })
        .collect();
    let (gw_roles, proc_roles) = (
        [("SLUICE_ROLES", "gateway,edge")],
        [("SLUICE_ROLES", "processor")],
    );
    let gw1 = Server::start_on(
        &dirs[0],
        "127.0.0.1:0",
        &format!("127.0.0.1:{edge_port}"),
        &gw_roles,
    );
    for d in &dirs[1..] {
        share_key_file(&dirs[0], d);
    }
    let gw2 = Server::start_on(&dirs[1], "127.0.0.1:0", "127.0.0.1:0", &gw_roles);
    let p1 = Server::start_on(&dirs[2], "127.0.0.1:0", "127.0.0.1:0", &proc_roles);
    let p2 = Server::start_on(&dirs[3], "127.0.0.1:0", "127.0.0.1:0", &proc_roles);
    // A processor has no edge and no upload API: only health, readiness and metrics.
    let probe = p1
        .http
        .post(format!("{}/uploads", p1.api))
        .body("x")
        .send()
        .expect("probe");
    assert_eq!(probe.status(), 404, "a processor serves no uploads");

    gw1.create_user("scale@example.com");
    // Signed in at one gateway's edge; the token is good at both gateways (one signing key
    // in the shared metadata engine, one issuer).
    let token = gw1.id_token("scale@example.com");
    let gateways = Arc::new([gw1, gw2]);

    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let refused = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (gateways, next, acked, refused, token) = (
                gateways.clone(),
                next.clone(),
                acked.clone(),
                refused.clone(),
                token.clone(),
            );
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return;
                    }
                    let body = format!("upload {i} of the scale-out test, {}", i * 7919);
                    let name = format!("f{i}.txt");
                    // Refused (an engine is down) or cut: tried again, on the other gateway.
                    let deadline = Instant::now() + Duration::from_secs(120);
                    let mut attempt = i;
                    loop {
                        match upload(&gateways[attempt % 2], &token, &name, &body) {
                            Ok(id) => {
                                acked.lock().expect("acked").push((id, body));
                                break;
                            }
                            Err(e) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                assert!(
                                    Instant::now() < deadline,
                                    "upload {i} refused for 2 minutes: {e}"
                                );
                                assert!(
                                    e.starts_with("503") || !e.starts_with(char::is_numeric),
                                    "an engine fault is a 503 (or a cut connection), got {e}"
                                );
                                attempt += 1;
                                std::thread::sleep(Duration::from_millis(200));
                            }
                        }
                    }
                }
            })
        })
        .collect();

    let acked_count = || acked.lock().expect("acked").len();
    let wait_acked = |n: usize| {
        while acked_count() < n && workers.iter().any(|w| !w.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_acked(total / 5);
    p1.kill9();
    eprintln!("killed processor 1 with -9 at {} uploads", acked_count());
    wait_acked(total * 7 / 20);
    let p3 = Server::start_on(&dirs[4], "127.0.0.1:0", "127.0.0.1:0", &proc_roles);
    eprintln!("started processor 3 at {} uploads", acked_count());
    wait_acked(total / 2);
    nats.kill9();
    eprintln!("killed JetStream with -9 at {} uploads", acked_count());
    std::thread::sleep(Duration::from_secs(2));
    nats.start_again();
    wait_acked(total * 7 / 10);
    pg.crash();
    eprintln!("crashed PostgreSQL at {} uploads", acked_count());
    std::thread::sleep(Duration::from_secs(2));
    pg.start_again();
    for w in workers {
        w.join().expect("upload worker");
    }
    let load_secs = started.elapsed().as_secs_f64();
    let acked = std::mem::take(&mut *acked.lock().expect("acked"));
    assert_eq!(acked.len(), total, "every upload acknowledged in the end");

    // Every acknowledged upload is processed.
    let probe_dir = dirs[0].clone();
    let processed = || -> i64 {
        common::meta_read(&probe_dir, |c| {
            c.query_row(
                "SELECT COUNT(*) FROM uploads WHERE status = 'processed'",
                sluice_meta::params![],
                |r| r.get(0),
            )
        })
        .unwrap_or(-1)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while processed() < total as i64 {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} uploads processed after 5 minutes",
            processed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let all_secs = started.elapsed().as_secs_f64();

    // With the right content, read back through either gateway. A record processed again
    // after a takeover (at least once) rewrites its output before its status row: the
    // output names its upload, so it is never taken for another's (410; it was before
    // outputs named their upload, session 26). A run slower than a moment shows the upload
    // `processing` meanwhile (404, no processed output yet): that is asked again for a
    // while.
    for (n, (id, body)) in acked.iter().enumerate() {
        let path = format!("/uploads/{id}/processed");
        let rerun_deadline = Instant::now() + Duration::from_secs(60);
        let (status, bytes) = loop {
            let (status, bytes) = gateways[n % 2].get_bytes(&token, &path);
            if status != 404 || Instant::now() >= rerun_deadline {
                break (status, bytes);
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        assert_eq!(status, 200, "processed output of {id}");
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            body.to_uppercase(),
            "output of {id}"
        );
    }

    // Per shard, uploads were processed in stream order (a new holder of a shard starts
    // after its checkpoint, never before records an earlier holder finished).
    // A record delivered again after a takeover (at least once) shows `processing` for a
    // moment: the snapshot is one where every upload shows `processed`.
    //
    // There may be more uploads than acknowledged ones: an attempt answered with an error
    // may still have committed (PostgreSQL crashed after its COMMIT and before the answer),
    // and the client's retry is a second upload of the same file; there can be at most one
    // per refused attempt. Its record is delivered by a gateway's next redelivery pass
    // (`redeliver_every`, every 5 s): it may still be queued.
    let acked_ids: std::collections::HashSet<&str> =
        acked.iter().map(|(id, _)| id.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let stored: Vec<(String, String, String, i64)> = loop {
        let snapshot: Vec<(String, String, String, String, Option<i64>)> =
            common::meta_read(&dirs[0], |c| {
                c.query_vec(
                    "SELECT id, status, shard_id, sequence_number, processed_ms FROM uploads",
                    sluice_meta::params![],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
            })
            .expect("rows");
        let processed = snapshot.iter().filter(|r| r.1 == "processed").count();
        let acked_processed = snapshot
            .iter()
            .filter(|r| r.1 == "processed" && acked_ids.contains(r.0.as_str()))
            .count();
        if acked_processed == total {
            let extra = snapshot.len() - total;
            assert!(
                extra <= refused.load(Ordering::Relaxed),
                "{extra} uploads nobody was told about, more than the {} refused attempts",
                refused.load(Ordering::Relaxed)
            );
            break snapshot
                .into_iter()
                .filter(|r| r.1 == "processed")
                .map(|(id, _, shard, seq, at)| (id, shard, seq, at.expect("processed_ms")))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{processed} of {} uploads processed, {acked_processed} of the {total} acknowledged",
            snapshot.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // A row whose record's position was not stored yet (its settling write met the
    // PostgreSQL crash; the next start of its gateway stores it) is answered from the
    // stream by the API.
    let mut unsettled = 0;
    let rows: Vec<(String, String, i64)> = stored
        .into_iter()
        .map(|(id, shard, seq, at)| {
            if !seq.is_empty() {
                return (shard, seq, at);
            }
            unsettled += 1;
            let (code, st) = gateways[0].status(&token, &id);
            assert_eq!(code, 200, "{st}");
            (
                st["shardId"].as_str().expect("shardId").to_owned(),
                st["sequenceNumber"]
                    .as_str()
                    .expect("sequenceNumber")
                    .to_owned(),
                at,
            )
        })
        .collect();
    let mut by_shard: std::collections::BTreeMap<String, Vec<(String, i64)>> = Default::default();
    for (shard, seq, at) in rows.iter().cloned() {
        by_shard.entry(shard).or_default().push((seq, at));
    }
    for (shard, list) in &mut by_shard {
        list.sort_by_key(|(seq, _)| seq_key(seq));
        for pair in list.windows(2) {
            assert!(
                pair[0].1 <= pair[1].1,
                "shard {shard}: {} processed at {} after {} at {}",
                pair[0].0,
                pair[0].1,
                pair[1].0,
                pair[1].1
            );
        }
    }
    let leases: Vec<(String, Option<String>, i64)> = common::meta_read(&dirs[0], |c| {
        c.query_vec(
            "SELECT shard_id, owner, epoch FROM shard_leases ORDER BY shard_id",
            sluice_meta::params![],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    })
    .expect("leases");
    eprintln!(
        "scale-out: {total} uploads acknowledged over 2 gateways in {load_secs:.1} s ({} refused and retried), \
         all processed after {all_secs:.1} s ({unsettled} positions read from the stream); per shard {:?}; leases {leases:?}",
        refused.load(Ordering::Relaxed),
        by_shard
            .iter()
            .map(|(s, l)| (s.clone(), l.len()))
            .collect::<Vec<_>>()
    );
    assert!(
        leases.iter().all(|(_, owner, _)| owner.is_some()),
        "the live processors hold every shard: {leases:?}"
    );

    // Leaving processors give their leases back.
    p2.stop();
    p3.stop();
    let owned: Vec<(String, String, i64)> = common::meta_read(&dirs[0], |c| {
        c.query_vec(
            "SELECT shard_id, owner, epoch FROM shard_leases WHERE owner IS NOT NULL",
            sluice_meta::params![],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    })
    .expect("owned");
    let ids: Vec<String> = dirs
        .iter()
        .map(|d| std::fs::read_to_string(d.join("instance-id")).unwrap_or_default())
        .collect();
    assert_eq!(
        owned.len(),
        0,
        "stopped processors hold no lease: {owned:?} (instance ids gw1, gw2, p1, p2, p3: {ids:?})"
    );
}

/// The seed's Part E against a gateway process and a processor process that share nothing
/// but the engines (PostgreSQL, JetStream, S3): sign in with the aws CLI at the gateway's
/// edge, upload, and the processor processes it; with the processor stopped, uploads
/// wait in the stream and are processed once one is back.
#[test]
fn fault_seed_part_e_across_a_gateway_process_and_a_processor_process() {
    let engines = sluice_meta::conformance::TestEngines::new();
    let nats = OwnNats::start();
    let garage = OwnGarage::start();
    let root = tempfile::tempdir().expect("tempdir");
    let edge_port = common::engines::free_port();
    let config = shared_config(
        edge_port,
        &engines.postgres_url("parte"),
        &garage,
        &nats,
        "parte",
    );
    let (gw_dir, proc_dir) = (
        data_dir(root.path(), "gateway"),
        data_dir(root.path(), "processor"),
    );
    for d in [&gw_dir, &proc_dir] {
        std::fs::write(d.join("sluice.toml"), &config).expect("sluice.toml");
    }
    let gw = Server::start_on(
        &gw_dir,
        "127.0.0.1:0",
        &format!("127.0.0.1:{edge_port}"),
        &[("SLUICE_ROLES", "gateway,edge")],
    );
    share_key_file(&gw_dir, &proc_dir);
    let processor = Server::start_on(
        &proc_dir,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_ROLES", "processor")],
    );
    gw.create_user("me@example.com");
    let client_id = gw.info()["clientId"].as_str().expect("clientId").to_owned();
    // A4, as the seed runs it, with only the endpoint added.
    let (ok, stdout, stderr) = common::aws(&[
        "cognito-idp",
        "initiate-auth",
        "--endpoint-url",
        &gw.edge,
        "--region",
        "us-east-2",
        "--auth-flow",
        "USER_PASSWORD_AUTH",
        "--client-id",
        &client_id,
        "--auth-parameters",
        &format!("USERNAME=me@example.com,PASSWORD={}", common::PASSWORD),
    ]);
    assert!(ok, "aws cognito-idp initiate-auth failed: {stderr}");
    let auth: serde_json::Value = serde_json::from_str(&stdout).expect("aws output is JSON");
    let token = auth["AuthenticationResult"]["IdToken"]
        .as_str()
        .expect("IdToken")
        .to_owned();

    // E1–E3: the seed's upload, processed by the other process.
    let resp = gw.upload(&token, "demo.txt", "hello kinesis");
    assert_eq!(resp.status(), 200);
    let id = resp.json::<serde_json::Value>().expect("json")["uploadId"]
        .as_str()
        .expect("uploadId")
        .to_owned();
    let done = gw.wait_final(&token, &id);
    assert_eq!(done["status"], "processed", "{done}");
    let (code, bytes) = gw.get_bytes(&token, &format!("/uploads/{id}/processed"));
    assert_eq!((code, bytes.as_slice()), (200, b"HELLO KINESIS".as_slice()));

    // Without a processor, uploads are taken and wait; a processor that starts later
    // processes them.
    processor.stop();
    let resp = gw.upload(&token, "later.txt", "processed later");
    assert_eq!(resp.status(), 200);
    let later = resp.json::<serde_json::Value>().expect("json")["uploadId"]
        .as_str()
        .expect("uploadId")
        .to_owned();
    std::thread::sleep(Duration::from_secs(1));
    let (_, waiting) = gw.status(&token, &later);
    assert_eq!(waiting["status"], "queued", "{waiting}");
    let _processor = Server::start_on(
        &proc_dir,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_ROLES", "processor")],
    );
    assert_eq!(gw.wait_final(&token, &later)["status"], "processed");
    let (_, bytes) = gw.get_bytes(&token, &format!("/uploads/{later}/processed"));
    assert_eq!(bytes, b"PROCESSED LATER");
    // The first upload was not processed again by the new processor.
    assert_eq!(gw.wait_final(&token, &id)["attempts"], 1);
}
