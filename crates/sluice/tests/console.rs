//! The web console and what it stands on: the list of a user's uploads (`GET /uploads`),
//! the live view (`GET /uploads/events`, server-sent events), CORS on the edge's JSON
//! protocols, and the console itself in a real browser (Debian's chromium, driven by
//! playwright-core from `tests/console/`; scripts/test installs both).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{DataDir, Server, signed, wait_for};
use serde_json::{Value, json};

/// One server-sent event: its name, data and id.
#[derive(Debug)]
struct Sse {
    event: String,
    data: String,
    id: Option<String>,
}

/// A reader of `GET /uploads/events`.
struct Events {
    lines: BufReader<reqwest::blocking::Response>,
}

impl Events {
    fn open(server: &Server, token: &str, last_event_id: Option<&str>) -> Events {
        let resp = Self::request(server, token, last_event_id, "");
        assert_eq!(resp.status(), 200, "events: {:?}", resp.text());
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .expect("type")
                .starts_with("text/event-stream")
        );
        Events {
            lines: BufReader::new(resp),
        }
    }

    fn request(
        server: &Server,
        token: &str,
        last_event_id: Option<&str>,
        query: &str,
    ) -> reqwest::blocking::Response {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let mut req = client
            .get(format!("{}/uploads/events{query}", server.api))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        req.send().expect("events request")
    }

    /// The next event (comments skipped).
    fn next(&mut self) -> Sse {
        let mut ev = Sse {
            event: "message".into(),
            data: String::new(),
            id: None,
        };
        let mut any = false;
        loop {
            let mut line = String::new();
            let n = self.lines.read_line(&mut line).expect("read event stream");
            assert!(n > 0, "the event stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if any {
                    return ev;
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            any = true;
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => ev.event = value.to_owned(),
                "data" => ev.data += value,
                "id" => ev.id = Some(value.to_owned()),
                _ => {}
            }
        }
    }

    /// Reads `upload` events until `done` says the uploads seen so far (latest state of
    /// each) are what was waited for; returns them and the last event id.
    fn until(
        &mut self,
        mut done: impl FnMut(&std::collections::BTreeMap<String, Value>) -> bool,
    ) -> (std::collections::BTreeMap<String, Value>, Option<String>) {
        let mut seen = std::collections::BTreeMap::new();
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&seen) {
            assert!(
                Instant::now() < deadline,
                "events never showed it: {seen:?}"
            );
            let ev = self.next();
            if ev.event == "upload" {
                let v: Value = serde_json::from_str(&ev.data).expect("upload json");
                seen.insert(v["uploadId"].as_str().expect("id").to_owned(), v);
                last = ev.id;
            }
        }
        (seen, last)
    }
}

fn all_processed(ids: &[String]) -> impl FnMut(&std::collections::BTreeMap<String, Value>) -> bool {
    let ids = ids.to_vec();
    move |seen| {
        ids.iter()
            .all(|id| seen.get(id).is_some_and(|v| v["status"] == "processed"))
    }
}

#[test]
fn users_list_their_uploads_and_follow_them_live() {
    let dir = DataDir::new("live");
    let server = Server::start(&dir.0);
    server.create_user("live@example.com");
    server.create_user("other@example.com");
    let token = server.id_token("live@example.com");
    let other = server.id_token("other@example.com");
    let get = |token: &str, path: &str| {
        let r = server
            .http
            .get(format!("{}{path}", server.api))
            .bearer_auth(token)
            .send()
            .expect("get");
        let code = r.status().as_u16();
        (code, r.json::<Value>().unwrap_or(Value::Null))
    };

    let (code, page) = get(&token, "/uploads");
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["uploads"], Value::Array(vec![]));
    assert!(page.get("next").is_none(), "{page}");

    // The live view starts before the uploads: it must show each of them.
    let mut events = Events::open(&server, &token, None);
    let ready = events.next();
    assert_eq!(ready.event, "ready", "{ready:?}");

    let mut ids = Vec::new();
    for i in 0..3 {
        let r = server.upload(&token, &format!("live-{i}.txt"), "some text");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().expect("json");
        ids.push(v["uploadId"].as_str().expect("id").to_owned());
    }
    let (seen, last_id) = events.until(all_processed(&ids));
    assert_eq!(seen.len(), 3, "only this user's uploads: {seen:?}");
    for id in &ids {
        assert_eq!(
            seen[id]["processed"]["key"],
            format!("processed/{}", seen[id]["filename"].as_str().expect("name"))
        );
    }
    let last_id = last_id.expect("events carry ids");
    assert!(last_id.parse::<i64>().is_ok(), "{last_id}");
    drop(events);

    // Pages, newest first, with a token for the next one.
    let (code, first) = get(&token, "/uploads?limit=2");
    assert_eq!(code, 200, "{first}");
    let names: Vec<&str> = first["uploads"]
        .as_array()
        .expect("uploads")
        .iter()
        .map(|u| u["filename"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["live-2.txt", "live-1.txt"]);
    let next = first["next"].as_str().expect("next token");
    let (code, second) = get(&token, &format!("/uploads?limit=2&next={next}"));
    assert_eq!(code, 200, "{second}");
    assert_eq!(second["uploads"][0]["filename"], "live-0.txt");
    assert_eq!(second["uploads"].as_array().map(Vec::len), Some(1));
    assert!(second.get("next").is_none(), "{second}");
    // Another user sees none of them, in the list or live.
    let (_, theirs) = get(&other, "/uploads");
    assert_eq!(theirs["uploads"], Value::Array(vec![]));

    // A reconnect from the start (Last-Event-ID) gets every change since, again.
    let mut again = Events::open(&server, &token, Some("0"));
    let (seen, _) = again.until(all_processed(&ids));
    assert_eq!(seen.len(), 3);
    drop(again);
    let mut theirs = Events::open(&server, &other, Some("0"));
    assert_eq!(theirs.next().event, "ready");
    drop(theirs);

    // Bad input: 400 with the API's error body; no token: 401.
    for path in [
        "/uploads?limit=0",
        "/uploads?limit=101",
        "/uploads?limit=ten",
        "/uploads?next=not-a-token",
        "/uploads/events?since=-5",
        "/uploads/events?since=yesterday",
    ] {
        let (code, body) = get(&token, path);
        assert_eq!(code, 400, "{path}: {body}");
        assert_eq!(body["error"], "bad_request", "{path}: {body}");
    }
    let r = server
        .http
        .get(format!("{}/uploads/events", server.api))
        .send()
        .expect("no token");
    assert_eq!(r.status(), 401);

    // At most 8 live streams per user; a closed one frees its place.
    let mut open: Vec<Events> = (0..8)
        .map(|_| Events::open(&server, &token, None))
        .collect();
    let over = Events::request(&server, &token, None, "");
    assert_eq!(over.status(), 429, "{:?}", over.text());
    // Another user is not affected.
    drop(Events::open(&server, &other, None));
    drop(open.pop());
    wait_for(
        "a closed stream frees its place",
        Duration::from_secs(40),
        || {
            let r = Events::request(&server, &token, None, "");
            (r.status() == 200).then_some(())
        },
    );
    drop(open);
    server.stop();
}

#[test]
fn the_edge_answers_cors_for_cognito_and_the_console_is_served() {
    let dir = DataDir::new("cors");
    let server = Server::start(&dir.0);
    let preflight = server
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/", server.edge))
        .header("Origin", "http://127.0.0.1:9999")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "content-type,x-amz-target",
        )
        .send()
        .expect("preflight");
    assert_eq!(preflight.status(), 200);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(
        h["access-control-allow-headers"],
        "content-type,x-amz-target"
    );
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .expect("methods")
            .contains("POST")
    );
    let info = server.info();
    let resp = server
        .http
        .post(format!("{}/", server.edge))
        .header("Origin", "http://127.0.0.1:9999")
        .header(
            "X-Amz-Target",
            "AWSCognitoIdentityProviderService.InitiateAuth",
        )
        .header("Content-Type", "application/x-amz-json-1.1")
        .body(
            serde_json::json!({
                "AuthFlow": "USER_PASSWORD_AUTH",
                "ClientId": info["clientId"],
                "AuthParameters": {"USERNAME": "nobody@example.com", "PASSWORD": "x"},
            })
            .to_string(),
        )
        .send()
        .expect("sign-in");
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(
        resp.headers()["access-control-expose-headers"]
            .to_str()
            .expect("expose")
            .contains("x-amzn-ErrorType")
    );

    let no_redirects = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let root = no_redirects
        .get(format!("{}/", server.api))
        .send()
        .expect("root");
    assert_eq!(root.status(), 303);
    assert_eq!(root.headers()["location"], "/console/");
    let page = server
        .http
        .get(format!("{}/console/", server.api))
        .send()
        .expect("console");
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .expect("csp")
            .contains("script-src 'self'")
    );
    assert!(
        page.text()
            .expect("html")
            .contains("<title>sluice console</title>")
    );
    let config: Value = server
        .http
        .get(format!("{}/console/config.json", server.api))
        .send()
        .expect("config")
        .json()
        .expect("json");
    assert_eq!(config["clientId"], info["clientId"]);
    assert_eq!(config["userPoolId"], info["poolId"]);
    server.stop();
}

fn console_suite() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/console")
}

/// Signs in (through NEW_PASSWORD_REQUIRED), uploads two files, watches both reach
/// `processed`, downloads a result and an original and compares their bytes, opens the
/// operations page (the user is in `admin`), checks the keyboard and a phone-sized screen,
/// signs out; screenshots under
/// `$CARGO_TARGET_TMPDIR/console-<pid>/`.
#[test]
fn the_console_works_in_a_real_browser() {
    let suite = console_suite();
    assert!(
        suite.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run scripts/test (it runs `npm ci --prefix tests/console`)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/test (it installs Debian's chromium)"
    );
    let dir = DataDir::new("console");
    let server = Server::start(&dir.0);
    let email = "browser@example.com";
    server.cli(&[
        "user",
        "create",
        "--email",
        email,
        "--password",
        "Temp0rary!",
        "--temporary",
    ]);
    // An operator: the operations page is shown too.
    server.cli(&["user", "add-to-group", "--email", email, "--group", "admin"]);
    // A second user who signs in with a software token (TOTP): the pool's MFA is optional,
    // the user associates a token here; the browser test verifies and enables it, then
    // signs in through the console's code step.
    let pool = server.info()["poolId"].as_str().expect("pool").to_owned();
    let (code, v) = signed(
        &server,
        "SetUserPoolMfaConfig",
        json!({"UserPoolId": pool, "MfaConfiguration": "OPTIONAL",
               "SoftwareTokenMfaConfiguration": {"Enabled": true}}),
    );
    assert_eq!(code, 200, "{v}");
    let mfa_email = "totp@example.com";
    server.create_user(mfa_email);
    let access = server.sign_in(mfa_email, common::PASSWORD)["AuthenticationResult"]["AccessToken"]
        .as_str()
        .expect("access token")
        .to_owned();
    let (code, v) = server.cognito("AssociateSoftwareToken", json!({"AccessToken": access}));
    assert_eq!(code, 200, "{v}");
    let secret = v["SecretCode"].as_str().expect("secret").to_owned();
    let out =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("console-{}", std::process::id()));
    let run = Command::new("node")
        .arg(suite.join("console.mjs"))
        .env("SLUICE_API", &server.api)
        .env("SLUICE_EMAIL", email)
        .env("SLUICE_TEMP_PASSWORD", "Temp0rary!")
        .env("SLUICE_NEW_PASSWORD", "Chosen0ne!")
        .env("SLUICE_EDGE", &server.edge)
        .env("SLUICE_MFA_EMAIL", mfa_email)
        .env("SLUICE_MFA_PASSWORD", common::PASSWORD)
        .env("SLUICE_MFA_ACCESS_TOKEN", &access)
        .env("SLUICE_MFA_SECRET", &secret)
        .env("SLUICE_OUT", &out)
        .env("CHROMIUM", &chromium)
        .current_dir(&suite)
        .output()
        .expect("run node");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success(),
        "the console test failed (screenshots in {}):\n{report}",
        out.display()
    );
    for shot in [
        "01-sign-in.png",
        "02-signed-in.png",
        "03-processed.png",
        "04-phone.png",
        "05-signed-out.png",
        "06-operations.png",
        "07-mfa-code.png",
    ] {
        let meta = std::fs::metadata(out.join(shot)).expect("screenshot");
        assert!(meta.len() > 1000, "{shot} is empty");
    }
    // The uploads went through the real pipeline.
    let token = server.sign_in(email, "Chosen0ne!")["AuthenticationResult"]["IdToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let page: Value = server
        .http
        .get(format!("{}/uploads", server.api))
        .bearer_auth(&token)
        .send()
        .expect("list")
        .json()
        .expect("json");
    assert_eq!(page["uploads"].as_array().map(Vec::len), Some(2), "{page}");
    server.stop();
}

/// A pool's hosted sign-in page in a real browser: the authorization request shows it, a
/// wrong password is refused on it, the right one goes back to the app with a code (which
/// the app redeems with its PKCE verifier), the browser's sign-in cookie answers the next
/// authorization at once, and logout ends it — with no script or Content-Security-Policy
/// error. Screenshots under `$CARGO_TARGET_TMPDIR/hosted-<pid>/`.
#[test]
fn the_hosted_ui_works_in_a_real_browser() {
    let suite = console_suite();
    assert!(
        suite.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run scripts/test (it runs `npm ci --prefix tests/console`)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/test (it installs Debian's chromium)"
    );
    let dir = DataDir::new("hosted");
    let server = Server::start(&dir.0);
    let pool = server.info()["poolId"].as_str().expect("pool").to_owned();
    let (code, v) = signed(
        &server,
        "CreateUserPoolDomain",
        json!({"UserPoolId": pool, "Domain": format!("browser-{}", std::process::id())}),
    );
    assert_eq!(code, 200, "{v}");
    // The app's pages: served by the browser script on a free port of this machine.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let callback = format!("http://127.0.0.1:{port}/app/callback");
    let logout = format!("http://127.0.0.1:{port}/app/signed-out");
    let (code, v) = signed(
        &server,
        "CreateUserPoolClient",
        json!({"UserPoolId": pool, "ClientName": "spa",
               "AllowedOAuthFlowsUserPoolClient": true, "AllowedOAuthFlows": ["code"],
               "AllowedOAuthScopes": ["openid", "email"],
               "CallbackURLs": [callback], "LogoutURLs": [logout]}),
    );
    assert_eq!(code, 200, "{v}");
    let client = v["UserPoolClient"]["ClientId"]
        .as_str()
        .expect("client")
        .to_owned();
    let email = "hosted@example.com";
    server.create_user(email);
    let out =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("hosted-{}", std::process::id()));
    let run = Command::new("node")
        .arg(suite.join("hosted.mjs"))
        .env("SLUICE_ISSUER", format!("{}/{pool}", server.edge))
        .env("SLUICE_CLIENT_ID", &client)
        .env("SLUICE_CALLBACK", &callback)
        .env("SLUICE_LOGOUT", &logout)
        .env("SLUICE_EMAIL", email)
        .env("SLUICE_PASSWORD", common::PASSWORD)
        .env("SLUICE_OUT", &out)
        .env("CHROMIUM", &chromium)
        .current_dir(&suite)
        .output()
        .expect("run node");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success(),
        "the hosted UI test failed (screenshots in {}):\n{report}",
        out.display()
    );
    let meta = std::fs::metadata(out.join("hosted-01-sign-in.png")).expect("screenshot");
    assert!(meta.len() > 1000, "the screenshot is empty");
    server.stop();
}
