//! Abuse and isolation, against the real binary (issue 13): a sign-up flood keeps memory
//! bounded, sign-ups beyond a client address's rate are throttled, an upload id never
//! resolves to another user's bytes, and user content is served as a download.

mod common;

use std::time::Duration;

use common::{DataDir, PASSWORD, Server};
use serde_json::{Value, json};

fn client_id(server: &Server) -> String {
    server.info()["clientId"]
        .as_str()
        .expect("clientId")
        .to_owned()
}

/// Uploads `content` as `name` (200 expected) and returns the upload's id.
fn uploaded(server: &Server, token: &str, name: &str, content: &str) -> String {
    let up = server.upload(token, name, content);
    assert_eq!(up.status(), 200);
    up.json::<Value>().expect("json")["uploadId"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// A field of `/proc/<pid>/status` in KiB (VmRSS, VmHWM).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("field")
}

#[test]
fn an_upload_id_never_resolves_to_another_users_bytes() {
    let dir = DataDir::new("sec-gone");
    let server = Server::start(&dir.0);
    server.create_user("a@example.com");
    server.create_user("b@example.com");
    let (ta, tb) = (
        server.id_token("a@example.com"),
        server.id_token("b@example.com"),
    );
    let up = server.upload(&ta, "same.txt", "alice's secret");
    assert_eq!(up.status(), 200);
    let a: Value = up.json().expect("json");
    let a_id = a["uploadId"].as_str().expect("id").to_owned();
    assert_eq!(server.wait_final(&ta, &a_id)["status"], "processed");
    let (code, bytes) = server.get_bytes(&ta, &format!("/uploads/{a_id}/content"));
    assert_eq!((code, bytes.as_slice()), (200, &b"alice's secret"[..]));

    // Both objects are deleted through S3, and B uploads a file of the same name.
    let k = server.new_key();
    for object in ["uploads/same.txt", "processed/same.txt"] {
        let (ok, _, err) = common::aws_as(
            (&k.0, &k.1),
            &[
                "--endpoint-url",
                &server.edge,
                "s3api",
                "delete-object",
                "--bucket",
                "sluice",
                "--key",
                object,
            ],
        );
        assert!(ok, "delete {object}: {err}");
    }
    for path in ["content", "processed"] {
        let (code, _) = server.get_bytes(&ta, &format!("/uploads/{a_id}/{path}"));
        assert_eq!(code, 410, "{path} of a deleted object");
    }
    let up = server.upload(&tb, "same.txt", "bob's bytes");
    assert_eq!(up.status(), 200, "B may use the name now");
    let b: Value = up.json().expect("json");
    let b_id = b["uploadId"].as_str().expect("id").to_owned();
    assert_eq!(server.wait_final(&tb, &b_id)["status"], "processed");

    for path in ["content", "processed"] {
        let resp = server
            .http
            .get(format!("{}/uploads/{a_id}/{path}", server.api))
            .bearer_auth(&ta)
            .send()
            .expect("get");
        assert_eq!(resp.status().as_u16(), 410, "A's {path} is gone");
        let body: Value = resp.json().expect("json error");
        assert_eq!(body["error"], "gone");
        let text = body.to_string();
        assert!(!text.contains("bob"), "{text}");
    }
    let (code, bytes) = server.get_bytes(&tb, &format!("/uploads/{b_id}/content"));
    assert_eq!((code, bytes.as_slice()), (200, &b"bob's bytes"[..]));
    let (code, bytes) = server.get_bytes(&tb, &format!("/uploads/{b_id}/processed"));
    assert_eq!((code, bytes.as_slice()), (200, &b"BOB'S BYTES"[..]));
}

/// A processed output names the upload it came from (`x-amz-meta-sluice-upload-id`): an
/// output written again for the same upload (as a record delivered again after a takeover
/// or a restart writes it, before its status row says so a second time) is still that
/// upload's; one naming another upload, or none and newer than the upload's processing, is
/// not (410).
#[test]
fn a_processed_output_is_known_by_the_upload_it_names() {
    let dir = DataDir::new("sec-output-id");
    let server = Server::start(&dir.0);
    server.create_user("a@example.com");
    let t = server.id_token("a@example.com");
    let id = uploaded(&server, &t, "named.txt", "first run");
    assert_eq!(server.wait_final(&t, &id)["status"], "processed");
    let k = server.new_key();
    let s3 = |args: &[&str]| {
        let mut all = vec!["--endpoint-url", server.edge.as_str(), "s3api"];
        all.extend_from_slice(args);
        let (ok, out, err) = common::aws_as((&k.0, &k.1), &all);
        assert!(ok, "aws s3api {args:?}: {err}");
        out
    };
    let head: Value = serde_json::from_str(&s3(&[
        "head-object",
        "--bucket",
        "sluice",
        "--key",
        "processed/named.txt",
    ]))
    .expect("head-object json");
    assert_eq!(head["Metadata"]["sluice-upload-id"], id.as_str(), "{head}");

    let body = dir.0.join("rerun.txt");
    std::fs::write(&body, "SECOND RUN").expect("write");
    let body = body.display().to_string();
    // Written again after the upload was marked processed, naming the same upload.
    std::thread::sleep(Duration::from_millis(5));
    s3(&[
        "put-object",
        "--bucket",
        "sluice",
        "--key",
        "processed/named.txt",
        "--body",
        &body,
        "--metadata",
        &format!("sluice-upload-id={id}"),
    ]);
    let path = format!("/uploads/{id}/processed");
    let (code, bytes) = server.get_bytes(&t, &path);
    assert_eq!((code, bytes.as_slice()), (200, &b"SECOND RUN"[..]));
    // Naming another upload, or nothing (and newer than the processing): not this one's.
    for metadata in [Some("sluice-upload-id=someone-else"), None] {
        let mut args = vec![
            "put-object",
            "--bucket",
            "sluice",
            "--key",
            "processed/named.txt",
            "--body",
            &body,
        ];
        if let Some(m) = metadata {
            args.extend(["--metadata", m]);
        }
        s3(&args);
        let (code, _) = server.get_bytes(&t, &path);
        assert_eq!(code, 410, "an output with metadata {metadata:?}");
    }
}

#[test]
fn user_content_is_served_as_a_download() {
    let dir = DataDir::new("sec-download");
    let server = Server::start(&dir.0);
    server.create_user("a@example.com");
    let t = server.id_token("a@example.com");
    let id = uploaded(&server, &t, "page \"1\".html", "<script>alert(1)</script>");
    server.wait_final(&t, &id);
    for path in ["content", "processed"] {
        let resp = server
            .http
            .get(format!("{}/uploads/{id}/{path}", server.api))
            .bearer_auth(&t)
            .send()
            .expect("get");
        assert_eq!(resp.status().as_u16(), 200);
        let h = resp.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let disposition = h["content-disposition"].to_str().expect("ascii");
        assert!(disposition.starts_with("attachment; "), "{disposition}");
        assert!(
            disposition.contains("filename*=UTF-8''page%20%221%22.html"),
            "{disposition}"
        );
    }
}

#[test]
fn sign_ups_beyond_an_address_rate_are_throttled() {
    let dir = DataDir::new("sec-rate");
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_SIGN_UPS_PER_SECOND_PER_ADDRESS", "2")],
    );
    let client = client_id(&server);
    let mut throttled = 0;
    for i in 0..12 {
        let resp = server
            .http
            .post(format!("{}/", server.edge))
            .header("X-Amz-Target", "AWSCognitoIdentityProviderService.SignUp")
            .header("Content-Type", "application/x-amz-json-1.1")
            .body(
                json!({"ClientId": client, "Username": format!("u{i}@example.com"), "Password": PASSWORD})
                    .to_string(),
            )
            .send()
            .expect("sign-up");
        if resp.status().as_u16() == 400
            && resp.headers()["x-amzn-errortype"]
                .to_str()
                .is_ok_and(|t| t.starts_with("TooManyRequestsException"))
        {
            assert_eq!(resp.headers()["retry-after"], "1");
            throttled += 1;
        } else {
            assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text());
        }
    }
    // A burst of 4 (two seconds at 2/s) and about 2 more per second after it.
    assert!(throttled >= 4, "only {throttled} of 12 throttled");
    std::thread::sleep(Duration::from_millis(1100));
    let (code, body) = server.cognito(
        "SignUp",
        json!({"ClientId": client, "Username": "later@example.com", "Password": PASSWORD}),
    );
    assert_eq!(code, 200, "the rate refills: {body}");
}

/// Three floods of 1,000 concurrent sign-ups, with the rate limits off so that every one
/// reaches password hashing: the server's RSS stays under 256 MiB through all three
/// (hashing has a fixed pool and a short queue; the rest are told to retry). (Decision: the
/// bound holds across repeated floods rather than RSS returning to idle after one: the
/// allocator keeps what a flood touched — 115 to 175 MiB right after one, creeping up by a
/// few MiB a flood and levelling off, measured over six — while a leak would cross the
/// bound as floods repeat.)
///
/// Named `fault_*`: it loads the machine (1,000 client threads), so `scripts/test` runs it
/// once, on the embedded engines; the bound is the hashing pool's, whatever the engine.
#[test]
fn fault_a_sign_up_flood_keeps_memory_bounded() {
    let dir = DataDir::new("sec-flood");
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[
            ("SLUICE_SIGN_UPS_PER_SECOND_PER_ADDRESS", "0"),
            ("SLUICE_SIGN_UPS_PER_SECOND_PER_POOL", "0"),
        ],
    );
    let pid = server.pid();
    let client = client_id(&server);
    let idle_kib = proc_kib(pid, "VmRSS");
    let url = format!("{}/", server.edge);
    let flood = |round: u32| {
        let threads: Vec<_> = (0..1000)
            .map(|i| {
                let (url, client) = (url.clone(), client.clone());
                std::thread::spawn(move || {
                    let http = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(120))
                        .build()
                        .expect("client");
                    let resp = http
                        .post(url)
                        .header("X-Amz-Target", "AWSCognitoIdentityProviderService.SignUp")
                        .header("Content-Type", "application/x-amz-json-1.1")
                        .body(
                            json!({"ClientId": client, "Username": format!("f{round}-{i}@example.com"), "Password": PASSWORD})
                                .to_string(),
                        )
                        .send();
                    match resp {
                        Ok(r) => {
                            let kind = r
                                .headers()
                                .get("x-amzn-errortype")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            (r.status().as_u16(), kind)
                        }
                        Err(e) => panic!("sign-up request failed: {e}"),
                    }
                })
            })
            .collect();
        let mut ok = 0;
        let mut throttled = 0;
        for t in threads {
            let (code, kind) = t.join().expect("thread");
            match code {
                200 => ok += 1,
                400 if kind.starts_with("TooManyRequestsException") => throttled += 1,
                // The metadata engine overwhelmed (e.g. serialization conflicts under this
                // load): also "retry later", never a 500.
                503 if kind.starts_with("ServiceUnavailable") => throttled += 1,
                other => panic!("unexpected answer {other} {kind}"),
            }
        }
        assert!(ok > 0 && throttled > 0, "{ok} ok, {throttled} throttled");
        eprintln!(
            "sign-up flood {round}: {ok} signed up, {throttled} told to retry; RSS idle {} MiB, now {} MiB, peak so far {} MiB",
            idle_kib / 1024,
            proc_kib(pid, "VmRSS") / 1024,
            proc_kib(pid, "VmHWM") / 1024
        );
    };
    for round in 1..=3 {
        flood(round);
    }
    let peak_kib = proc_kib(pid, "VmHWM");
    assert!(
        peak_kib <= 256 * 1024,
        "peak RSS {} MiB over three floods (idle {} MiB)",
        peak_kib / 1024,
        idle_kib / 1024
    );
}

/// Polls until an upload with `token` gets `code`; fails after 10 s.
fn upload_until(server: &Server, token: &str, code: u16, what: &str) {
    common::wait_for(what, Duration::from_secs(10), || {
        let status = server.upload(token, "r.txt", "r").status().as_u16();
        (status == code).then_some(())
    });
}

#[test]
fn revoked_sign_ins_are_refused_by_the_api_within_seconds() {
    let dir = DataDir::new("sec-revoke");
    let server = Server::start(&dir.0);
    let info = server.info();
    let pool = info["poolId"].as_str().expect("pool").to_owned();
    let client = client_id(&server);
    server.create_user("a@example.com");
    server.create_user("b@example.com");

    // GlobalSignOut: the ID token of that sign-in is refused at the API.
    let signed = server.sign_in("a@example.com", PASSWORD);
    let id = signed["AuthenticationResult"]["IdToken"]
        .as_str()
        .expect("id")
        .to_owned();
    let access = signed["AuthenticationResult"]["AccessToken"]
        .as_str()
        .expect("access")
        .to_owned();
    assert_eq!(server.upload(&id, "a.txt", "a").status(), 200);
    let (code, body) = server.cognito("GlobalSignOut", json!({"AccessToken": access}));
    assert_eq!(code, 200, "{body}");
    // Signing in again at once — most often in the same second as the sign-out, which a
    // token's `iat` cannot tell apart — gives tokens that work: sign-out revokes sign-ins,
    // not "everything issued up to this second".
    let id2 = server.id_token("a@example.com");
    upload_until(&server, &id, 401, "the signed-out token refused");
    let resp = server.upload(&id, "a.txt", "a");
    let err: Value = resp.json().expect("json");
    assert!(
        err["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("revoked")),
        "{err}"
    );
    assert_eq!(server.upload(&id2, "a2.txt", "a").status(), 200);

    // AdminDisableUser: every token issued before is refused.
    let k = server.new_key();
    let (ok, _, err) = common::aws_as(
        (&k.0, &k.1),
        &[
            "--endpoint-url",
            &server.edge,
            "cognito-idp",
            "admin-disable-user",
            "--user-pool-id",
            &pool,
            "--username",
            "a@example.com",
        ],
    );
    assert!(ok, "{err}");
    upload_until(&server, &id2, 401, "the disabled user's token refused");

    // RevokeToken: the tokens of that one sign-in are refused, another sign-in's are not.
    let first = server.sign_in("b@example.com", PASSWORD);
    let second_id = server.id_token("b@example.com");
    let first_id = first["AuthenticationResult"]["IdToken"]
        .as_str()
        .expect("id")
        .to_owned();
    let refresh = first["AuthenticationResult"]["RefreshToken"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_eq!(server.upload(&first_id, "b.txt", "b").status(), 200);
    let (code, body) = server.cognito("RevokeToken", json!({"ClientId": client, "Token": refresh}));
    assert_eq!(code, 200, "{body}");
    upload_until(
        &server,
        &first_id,
        401,
        "the revoked sign-in's token refused",
    );
    assert_eq!(
        server.upload(&second_id, "b2.txt", "b").status(),
        200,
        "another sign-in of the same user is not affected"
    );
}

#[test]
fn a_user_over_their_storage_limit_gets_507_and_stores_nothing() {
    let dir = DataDir::new("sec-stored");
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_STORED_BYTES_PER_USER", "1000")],
    );
    server.create_user("a@example.com");
    server.create_user("b@example.com");
    let (ta, tb) = (
        server.id_token("a@example.com"),
        server.id_token("b@example.com"),
    );
    let six = "s".repeat(600);
    assert_eq!(server.upload(&ta, "a1.txt", &six).status(), 200);
    assert_eq!(server.upload(&ta, "a2.txt", &"t".repeat(300)).status(), 200);
    // 900 stored: 200 more would pass 1,000.
    let resp = server.upload(&ta, "a3.txt", &"u".repeat(200));
    assert_eq!(resp.status(), 507);
    let body: Value = resp.json().expect("json");
    assert_eq!(body["error"], "storage_limit_exceeded", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("storage limit of 1000 bytes (900 stored)")),
        "{body}"
    );
    // Refused before the body is read when its length is declared, and after a streamed
    // one is measured.
    let raw = server
        .http
        .post(format!("{}/uploads?filename=raw.bin", server.api))
        .bearer_auth(&ta)
        .header("Content-Type", "application/octet-stream")
        .body("v".repeat(200))
        .send()
        .expect("raw upload");
    assert_eq!(raw.status(), 507);
    assert_eq!(
        common::rows(
            &dir.0,
            "SELECT COUNT(*) FROM uploads WHERE filename IN ('a3.txt', 'raw.bin')"
        ),
        0,
        "refused uploads stored nothing"
    );
    // What fits still fits, and another user has a limit of their own.
    assert_eq!(server.upload(&ta, "a4.txt", &"w".repeat(100)).status(), 200);
    assert_eq!(server.upload(&tb, "b1.txt", &six).status(), 200);
    server.stop();
}

#[test]
fn per_user_upload_limits_answer_429_with_retry_after() {
    let dir = DataDir::new("sec-quota");
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[
            ("SLUICE_UPLOADS_PER_MINUTE_PER_USER", "3"),
            ("SLUICE_UPLOAD_BYTES_PER_DAY_PER_USER", "1000"),
        ],
    );
    server.create_user("a@example.com");
    server.create_user("b@example.com");
    let (ta, tb) = (
        server.id_token("a@example.com"),
        server.id_token("b@example.com"),
    );
    // Three uploads a minute: the fourth is refused, another user is not.
    for i in 0..3 {
        assert_eq!(server.upload(&ta, &format!("r{i}.txt"), "x").status(), 200);
    }
    let resp = server.upload(&ta, "r3.txt", "x");
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "20");
    let body: Value = resp.json().expect("json");
    assert_eq!(body["error"], "too_many_requests", "{body}");
    assert_eq!(server.upload(&tb, "b0.txt", "x").status(), 200);

    // 1,000 bytes a day: B has used 1; 600 more fit, then 600 more do not (raw body too).
    let big = "y".repeat(600);
    assert_eq!(server.upload(&tb, "b1.txt", &big).status(), 200);
    let resp = server.upload(&tb, "b2.txt", &big);
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().expect("json");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("per day")),
        "{body}"
    );
    let raw = server
        .http
        .post(format!("{}/uploads?filename=raw.bin", server.api))
        .bearer_auth(&tb)
        .header("Content-Type", "application/octet-stream")
        .body(big.clone())
        .send()
        .expect("raw upload");
    assert_eq!(raw.status(), 429);
    assert_eq!(
        common::rows(
            &dir.0,
            "SELECT COUNT(*) FROM uploads WHERE filename IN ('b2.txt', 'raw.bin')"
        ),
        0,
        "refused uploads stored nothing"
    );
}
