//! The operators' API (`/admin/…` on the API listener): only users in the `admin` group get
//! in; they see streams, mappings and uploads by status, read failed uploads with their
//! errors and redrive them, read a mapping's logs, and disable and enable users.

mod common;

use std::time::Duration;

use common::{DataDir, Server, wait_for};
use serde_json::{Value, json};

fn call(server: &Server, method: &str, token: &str, path: &str) -> (u16, Value) {
    call_with(server, method, token, path, None)
}

fn call_with(
    server: &Server,
    method: &str,
    token: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", server.api);
    let req = match method {
        "POST" => server.http.post(url),
        "PUT" => server.http.put(url),
        "DELETE" => server.http.delete(url),
        _ => server.http.get(url),
    };
    let req = match body {
        Some(b) => req
            .header("Content-Type", "application/json")
            .body(b.to_string()),
        None => req,
    };
    let resp = req.bearer_auth(token).send().expect("request");
    let code = resp.status().as_u16();
    (code, resp.json().unwrap_or(Value::Null))
}

#[test]
fn operators_see_the_pipeline_and_redrive_failed_uploads() {
    let dir = DataDir::new("operators");
    let mark = dir.0.join("fail-while-this-exists");
    // No built-in mapping: an exec function that fails while the marker file exists tracks
    // the uploads' status, so that an upload can fail and then succeed when redriven.
    dir.write_config("builtin_mapping = false\n");
    let server = Server::start(&dir.0);
    let env_mark = format!("MARK={}", mark.display());
    // Global flags first: whatever follows `--` belongs to the exec: program.
    let created = std::process::Command::new(common::bin())
        .arg("--data-dir")
        .arg(&dir.0)
        .args([
            "mapping",
            "create",
            "--name",
            "picky",
            "--function",
            "exec:/bin/sh",
            "--env",
            &env_mark,
            "--maximum-retry-attempts",
            "0",
            "--starting-position",
            "TRIM_HORIZON",
            "--",
            "-c",
            "if [ -e \"$MARK\" ]; then echo 'refusing: marker present' >&2; exit 3; fi; tr a-z A-Z",
        ])
        .env_remove("SLUICE_CONFIG")
        .current_dir(&dir.0)
        .output()
        .expect("mapping create");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    wait_for("the mapping to start", Duration::from_secs(60), || {
        let v: Value = serde_json::from_str(&server.cli(&["mapping", "get", "picky"])).ok()?;
        (v["state"] == "Enabled").then_some(())
    });
    server.create_user("ops@example.com");
    server.create_user("user@example.com");
    let said = server.cli(&[
        "user",
        "add-to-group",
        "--email",
        "ops@example.com",
        "--group",
        "admin",
    ]);
    assert!(said.contains("is in group admin"), "{said}");
    let ops = server.id_token("ops@example.com");
    let user = server.id_token("user@example.com");

    // Not an operator: 403; no token: 401.
    let (code, body) = call(&server, "GET", &user, "/admin/overview");
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    let code = server
        .http
        .get(format!("{}/admin/overview", server.api))
        .send()
        .expect("no token")
        .status()
        .as_u16();
    assert_eq!(code, 401);

    // An upload that fails.
    std::fs::write(&mark, "").expect("marker");
    let r = server.upload(&user, "doomed.txt", "make me loud");
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().expect("json")["uploadId"]
        .as_str()
        .expect("id")
        .to_owned();
    let v = server.wait_final(&user, &id);
    assert_eq!(v["status"], "failed", "{v}");

    let (code, overview) = call(&server, "GET", &ops, "/admin/overview");
    assert_eq!(code, 200, "{overview}");
    assert_eq!(overview["uploads"]["failed"], 1, "{overview}");
    let stream = &overview["streams"][0];
    assert_eq!(stream["name"], "uploads-stream", "{overview}");
    assert!(stream["openShards"].as_u64().is_some_and(|n| n >= 1));
    let mapping = overview["mappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .find(|m| m["name"] == "picky")
        .expect("the picky mapping");
    assert!(mapping["state"].is_string(), "{mapping}");

    let (code, failed) = call(&server, "GET", &ops, "/admin/failed");
    assert_eq!(code, 200, "{failed}");
    assert_eq!(failed["uploads"][0]["uploadId"], id.as_str());
    assert!(
        failed["uploads"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    let (code, logs) = call(&server, "GET", &ops, "/admin/mappings/picky/logs?lines=50");
    assert_eq!(code, 200, "{logs}");
    assert!(
        logs["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .any(|l| l["line"]
                .as_str()
                .is_some_and(|t| t.contains("refusing: marker present"))),
        "{logs}"
    );

    // Redrive once the cause is gone: processed.
    std::fs::remove_file(&mark).expect("remove marker");
    let (code, body) = call(
        &server,
        "POST",
        &ops,
        &format!("/admin/uploads/{id}/redrive"),
    );
    assert_eq!(code, 200, "{body}");
    let v = server.wait_final(&user, &id);
    assert_eq!(v["status"], "processed", "{v}");
    assert!(v["error"].is_null(), "{v}");
    let (code, out) = server.get_bytes(&user, &format!("/uploads/{id}/processed"));
    assert_eq!(code, 200);
    assert_eq!(out, b"MAKE ME LOUD");
    // A processed upload is not redriven; an unknown one is 404; users may not redrive.
    let (code, body) = call(
        &server,
        "POST",
        &ops,
        &format!("/admin/uploads/{id}/redrive"),
    );
    assert_eq!(code, 409, "{body}");
    let (code, _) = call(&server, "POST", &ops, "/admin/uploads/nope/redrive");
    assert_eq!(code, 404);
    let (code, _) = call(
        &server,
        "POST",
        &user,
        &format!("/admin/uploads/{id}/redrive"),
    );
    assert_eq!(code, 403);

    // Users: listed with their groups; disabled (their token stops working), enabled.
    let (code, users) = call(&server, "GET", &ops, "/admin/users");
    assert_eq!(code, 200, "{users}");
    let listed = users["users"].as_array().expect("users");
    assert_eq!(listed.len(), 2, "{users}");
    let ops_row = listed
        .iter()
        .find(|u| u["email"] == "ops@example.com")
        .expect("ops listed");
    assert_eq!(ops_row["groups"], json!(["admin"]));
    let user_row = listed
        .iter()
        .find(|u| u["email"] == "user@example.com")
        .expect("user listed");
    let username = user_row["username"].as_str().expect("username").to_owned();
    let (code, body) = call(
        &server,
        "POST",
        &ops,
        &format!("/admin/users/{username}/disable"),
    );
    assert_eq!(code, 200, "{body}");
    wait_for(
        "the disabled user's token to be refused",
        Duration::from_secs(10),
        || (server.status(&user, &id).0 == 401).then_some(()),
    );
    let (code, _) = call(
        &server,
        "POST",
        &ops,
        &format!("/admin/users/{username}/enable"),
    );
    assert_eq!(code, 200);
    let fresh = server.id_token("user@example.com");
    assert_eq!(server.status(&fresh, &id).0, 200);
    let ops_username = ops_row["username"].as_str().expect("username");
    let (code, body) = call(
        &server,
        "POST",
        &ops,
        &format!("/admin/users/{ops_username}/disable"),
    );
    assert_eq!(code, 409, "an operator cannot lock themselves out: {body}");

    // Users created by an operator choose their password at the first sign-in; a reset
    // makes them choose again.
    let (code, made) = call_with(
        &server,
        "POST",
        &ops,
        "/admin/users",
        Some(json!({"email": "new@example.com", "temporaryPassword": "Temp0rary!"})),
    );
    assert_eq!(code, 201, "{made}");
    assert_eq!(made["status"], "FORCE_CHANGE_PASSWORD");
    let (code, again) = call_with(
        &server,
        "POST",
        &ops,
        "/admin/users",
        Some(json!({"email": "new@example.com", "temporaryPassword": "Temp0rary!"})),
    );
    assert_eq!(code, 409, "{again}");
    let (code, bad) = call_with(
        &server,
        "POST",
        &ops,
        "/admin/users",
        Some(json!({"email": "x@example.com"})),
    );
    assert_eq!(code, 400, "{bad}");
    let client = server.info()["clientId"]
        .as_str()
        .expect("client")
        .to_owned();
    let challenge = |password: &str| {
        server
            .cognito(
                "InitiateAuth",
                json!({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": client,
                       "AuthParameters": {"USERNAME": "new@example.com", "PASSWORD": password}}),
            )
            .1["ChallengeName"]
            .clone()
    };
    assert_eq!(challenge("Temp0rary!"), "NEW_PASSWORD_REQUIRED");
    let new_sub = made["sub"].as_str().expect("sub").to_owned();
    let (code, body) = call_with(
        &server,
        "POST",
        &ops,
        &format!("/admin/users/{new_sub}/password"),
        Some(json!({"temporaryPassword": "Another0ne!"})),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(challenge("Another0ne!"), "NEW_PASSWORD_REQUIRED");

    // Groups: added (the group made on the way), removed; an operator keeps their own admin.
    let (code, body) = call(
        &server,
        "PUT",
        &ops,
        &format!("/admin/users/{new_sub}/groups/auditors"),
    );
    assert_eq!(code, 200, "{body}");
    let (_, users) = call(&server, "GET", &ops, "/admin/users");
    let row = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["email"] == "new@example.com")
        .cloned()
        .expect("new user listed");
    assert_eq!(row["groups"], json!(["auditors"]));
    let (code, _) = call(
        &server,
        "DELETE",
        &ops,
        &format!("/admin/users/{new_sub}/groups/auditors"),
    );
    assert_eq!(code, 200);
    let (code, body) = call(
        &server,
        "DELETE",
        &ops,
        &format!("/admin/users/{ops_username}/groups/admin"),
    );
    assert_eq!(code, 409, "{body}");

    // Access keys: made (its secret shown once), listed without secrets, used, deleted.
    let (code, key) = call_with(
        &server,
        "POST",
        &ops,
        "/admin/keys",
        Some(json!({"description": "from the console",
                    "policy": {"Version": "2012-10-17", "Statement": [
                        {"Effect": "Allow", "Action": "kinesis:ListStreams", "Resource": "*"}]}})),
    );
    assert_eq!(code, 201, "{key}");
    let key_id = key["accessKeyId"].as_str().expect("id").to_owned();
    assert!(
        key["secretAccessKey"]
            .as_str()
            .is_some_and(|s| s.len() >= 20)
    );
    let (code, keys) = call(&server, "GET", &ops, "/admin/keys");
    assert_eq!(code, 200);
    let listed = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["accessKeyId"] == key_id.as_str())
        .cloned()
        .expect("listed");
    assert!(listed.get("secretAccessKey").is_none(), "{listed}");
    assert_eq!(
        listed["policy"]["Statement"][0]["Action"],
        "kinesis:ListStreams"
    );
    let (code, bad) = call_with(
        &server,
        "POST",
        &ops,
        "/admin/keys",
        Some(json!({"policy": {"Statement": "nonsense"}})),
    );
    assert_eq!(code, 400, "{bad}");
    let (code, _) = call(&server, "DELETE", &ops, &format!("/admin/keys/{key_id}"));
    assert_eq!(code, 200);
    let (code, _) = call(&server, "DELETE", &ops, &format!("/admin/keys/{key_id}"));
    assert_eq!(code, 404);
    assert_eq!(
        call(&server, "GET", &user_token_for_keys(&server), "/admin/keys").0,
        403
    );

    // The last hour, one point every 10 s: the uploads show as records/s on their stream.
    let point = wait_for("a traffic sample", Duration::from_secs(30), || {
        let (code, v) = call(&server, "GET", &ops, "/admin/history");
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["intervalSecs"], 10);
        v["streams"]["uploads-stream"]
            .as_array()?
            .iter()
            .find(|p| p["recordsPerSec"].as_f64().is_some_and(|r| r > 0.0))
            .cloned()
    });
    assert!(
        point["bytesPerSec"].as_f64().is_some_and(|b| b > 0.0),
        "{point}"
    );

    // Leaving the group takes effect with the next token.
    server.cli(&[
        "user",
        "remove-from-group",
        "--email",
        "ops@example.com",
        "--group",
        "admin",
    ]);
    let again = server.id_token("ops@example.com");
    assert_eq!(call(&server, "GET", &again, "/admin/overview").0, 403);
    server.stop();
}

/// A fresh token of the plain user (the one from the start may have been revoked by the
/// disable above).
fn user_token_for_keys(server: &Server) -> String {
    server.id_token("user@example.com")
}
