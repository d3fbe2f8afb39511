//! The seed's Part E, end to end against the real binary: create a user, sign in over the
//! Cognito protocol (the aws CLI as the seed runs it, and a plain HTTP client), upload,
//! watch the upload get processed, restart, and check that nothing was lost or processed
//! twice.

mod common;

use std::collections::{HashMap, HashSet};

use common::{DataDir, PASSWORD, Server, aws};
use serde_json::{Value, json};

#[test]
fn seed_walkthrough_survives_restart() {
    let dir = DataDir::new("e2e");
    let server = Server::start(&dir.0);
    server.create_user("me@example.com");
    let info = server.info();
    for k in [
        "poolId", "clientId", "issuer", "apiUrl", "edgeUrl", "region", "bucket", "stream",
    ] {
        assert!(info.get(k).is_some(), "info lacks {k}: {info}");
    }
    assert_eq!(
        info["apiUrl"],
        server.api.as_str(),
        "info reports the running server"
    );
    let client_id = info["clientId"].as_str().expect("clientId");
    assert_eq!(info["region"], "us-east-2");
    assert!(
        info["poolId"]
            .as_str()
            .is_some_and(|p| p.starts_with("us-east-2_") && p.len() == 19),
        "{info}"
    );

    // A4, as the seed runs it, with only the endpoint added.
    let (ok, stdout, stderr) = aws(&[
        "cognito-idp",
        "initiate-auth",
        "--endpoint-url",
        &server.edge,
        "--region",
        "us-east-2",
        "--auth-flow",
        "USER_PASSWORD_AUTH",
        "--client-id",
        client_id,
        "--auth-parameters",
        &format!("USERNAME=me@example.com,PASSWORD={PASSWORD}"),
    ]);
    assert!(ok, "aws cognito-idp initiate-auth failed: {stderr}");
    let auth: Value = serde_json::from_str(&stdout).expect("aws output is JSON");
    let result = &auth["AuthenticationResult"];
    assert_eq!(result["TokenType"], "Bearer");
    assert_eq!(result["ExpiresIn"], 3600);
    assert!(result["RefreshToken"].is_string());
    let token = result["IdToken"].as_str().expect("IdToken").to_owned();

    // The CLI shows Cognito's error for a wrong password.
    let (ok, _, stderr) = aws(&[
        "cognito-idp",
        "initiate-auth",
        "--endpoint-url",
        &server.edge,
        "--region",
        "us-east-2",
        "--auth-flow",
        "USER_PASSWORD_AUTH",
        "--client-id",
        client_id,
        "--auth-parameters",
        "USERNAME=me@example.com,PASSWORD=Wrong-passw0rd",
    ]);
    assert!(!ok);
    assert!(stderr.contains("NotAuthorizedException"), "{stderr}");

    // The seed's upload.
    let resp = server.upload(&token, "demo.txt", "hello kinesis");
    assert_eq!(resp.status(), 200);
    let header_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();
    let body: Value = resp.json().expect("json");
    assert_eq!(body["message"], "Uploaded and queued for processing");
    assert_eq!(
        body["s3"],
        json!({"bucket": "sluice", "key": "uploads/demo.txt"})
    );
    assert_eq!(body["requestId"], header_id.as_str());
    let id = body["uploadId"].as_str().expect("uploadId").to_owned();

    let done = server.wait_final(&token, &id);
    assert_eq!(done["status"], "processed", "{done}");
    assert_eq!(
        done["requestId"],
        header_id.as_str(),
        "record carries the request id"
    );
    assert_eq!(
        done["processed"],
        json!({"bucket": "sluice", "key": "processed/demo.txt"})
    );
    assert_eq!(done["attempts"], 1);
    let (code, bytes) = server.get_bytes(&token, &format!("/uploads/{id}/processed"));
    assert_eq!((code, bytes.as_slice()), (200, b"HELLO KINESIS".as_slice()));
    let (code, bytes) = server.get_bytes(&token, &format!("/uploads/{id}/content"));
    assert_eq!((code, bytes.as_slice()), (200, b"hello kinesis".as_slice()));

    // Refresh works over the same protocol.
    let (status, refreshed) = server.cognito(
        "InitiateAuth",
        json!({
            "AuthFlow": "REFRESH_TOKEN_AUTH",
            "ClientId": client_id,
            "AuthParameters": {"REFRESH_TOKEN": result["RefreshToken"]},
        }),
    );
    assert_eq!(status, 200, "{refreshed}");
    assert!(refreshed["AuthenticationResult"]["RefreshToken"].is_null());

    // Restart (clean stop), same ports: everything is still there, nothing reprocessed.
    let (api, edge) = (server.api.clone(), server.edge.clone());
    server.stop();
    let server = Server::restart(&dir.0, &api, &edge);
    let again = server.wait_final(&token, &id);
    assert_eq!(again["status"], "processed");
    assert_eq!(again["processedAt"], done["processedAt"]);
    assert_eq!(again["attempts"], 1);
    let (_, bytes) = server.get_bytes(&token, &format!("/uploads/{id}/processed"));
    assert_eq!(bytes, b"HELLO KINESIS");

    // Put new records on every shard and wait until they are processed: shards are
    // processed in order, so had the old record been delivered again it would have been
    // before these.
    let shards = again["shardId"].as_str().map(str::to_owned);
    let mut covered: HashSet<String> = HashSet::new();
    let mut fresh: HashMap<String, String> = HashMap::new();
    let mut n = 0;
    while covered.len() < 4 {
        n += 1;
        assert!(n < 400, "random partition keys never reached every shard");
        let r = server.upload(&token, &format!("after-{n}.txt"), "x");
        assert_eq!(r.status(), 200);
        let id2 = r.json::<Value>().expect("json")["uploadId"]
            .as_str()
            .expect("id")
            .to_owned();
        // The record reaches its shard just after the answer (the outbox entry is the
        // durable record; its delivery follows).
        let shard = common::wait_for(
            "the upload's record in its shard",
            std::time::Duration::from_secs(10),
            || {
                let (_, st) = server.status(&token, &id2);
                let shard = st["shardId"].as_str().expect("shardId").to_owned();
                (!shard.is_empty()).then_some(shard)
            },
        );
        if covered.insert(shard.clone()) {
            fresh.insert(shard, id2);
        }
    }
    for id2 in fresh.values() {
        assert_eq!(server.wait_final(&token, id2)["status"], "processed");
    }
    let last = server.wait_final(&token, &id);
    assert_eq!(last["attempts"], 1, "processed twice: {last}");
    assert!(shards.is_some());
    server.stop();
}

#[test]
fn temporary_password_requires_a_new_one() {
    let dir = DataDir::new("temp");
    let server = Server::start(&dir.0);
    server.cli(&[
        "user",
        "create",
        "--email",
        "new@example.com",
        "--password",
        "Temp-Passw0rd",
        "--temporary",
    ]);
    let client_id = server.info()["clientId"].as_str().expect("id").to_owned();
    let (status, challenge) = server.cognito(
        "InitiateAuth",
        json!({
            "AuthFlow": "USER_PASSWORD_AUTH",
            "ClientId": client_id,
            "AuthParameters": {"USERNAME": "new@example.com", "PASSWORD": "Temp-Passw0rd"},
        }),
    );
    assert_eq!(status, 200, "{challenge}");
    assert_eq!(challenge["ChallengeName"], "NEW_PASSWORD_REQUIRED");
    assert!(challenge.get("AuthenticationResult").is_none());
    let session = challenge["Session"].as_str().expect("Session");

    let (status, err) = server.cognito(
        "RespondToAuthChallenge",
        json!({
            "ChallengeName": "NEW_PASSWORD_REQUIRED",
            "ClientId": client_id,
            "Session": session,
            "ChallengeResponses": {"USERNAME": "new@example.com", "NEW_PASSWORD": "weak"},
        }),
    );
    assert_eq!(status, 400);
    assert_eq!(err["__type"], "InvalidPasswordException");

    let (status, done) = server.cognito(
        "RespondToAuthChallenge",
        json!({
            "ChallengeName": "NEW_PASSWORD_REQUIRED",
            "ClientId": client_id,
            "Session": session,
            "ChallengeResponses": {"USERNAME": "new@example.com", "NEW_PASSWORD": "Chosen-Passw0rd"},
        }),
    );
    assert_eq!(status, 200, "{done}");
    let token = done["AuthenticationResult"]["IdToken"]
        .as_str()
        .expect("IdToken");
    assert_eq!(server.upload(token, "a.txt", "a").status(), 200);
    server.sign_in("new@example.com", "Chosen-Passw0rd");
    server.stop();
}

#[test]
fn cognito_errors_have_cognitos_shape() {
    let dir = DataDir::new("cognito-errors");
    let server = Server::start(&dir.0);
    server.create_user("me@example.com");
    let client_id = server.info()["clientId"].as_str().expect("id").to_owned();
    let cases = [
        (
            json!({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": client_id,
                   "AuthParameters": {"USERNAME": "me@example.com", "PASSWORD": "Wrong-1a!"}}),
            "NotAuthorizedException",
        ),
        (
            json!({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": client_id,
                   "AuthParameters": {"USERNAME": "ghost@example.com", "PASSWORD": PASSWORD}}),
            "NotAuthorizedException",
        ),
        (
            json!({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": "nope",
                   "AuthParameters": {"USERNAME": "me@example.com", "PASSWORD": PASSWORD}}),
            "ResourceNotFoundException",
        ),
        (
            json!({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": client_id,
                   "AuthParameters": {"USERNAME": "me@example.com"}}),
            "InvalidParameterException",
        ),
        (
            json!({"AuthFlow": "NO_SUCH_FLOW", "ClientId": client_id}),
            "InvalidParameterException",
        ),
        (
            json!({"AuthFlow": "REFRESH_TOKEN_AUTH", "ClientId": client_id,
                   "AuthParameters": {"REFRESH_TOKEN": "forged"}}),
            "NotAuthorizedException",
        ),
    ];
    for (body, kind) in cases {
        let (status, err) = server.cognito("InitiateAuth", body.clone());
        assert_eq!(status, 400, "{body}");
        assert_eq!(err["__type"], kind, "{body} → {err}");
        assert!(err["message"].is_string());
    }
    // Not JSON, and an operation that does not exist.
    let resp = server
        .http
        .post(format!("{}/", server.edge))
        .header(
            "X-Amz-Target",
            "AWSCognitoIdentityProviderService.InitiateAuth",
        )
        .header("Content-Type", "application/x-amz-json-1.1")
        .body("{not json")
        .send()
        .expect("send");
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().expect("json")["__type"],
        "SerializationException"
    );
    let (status, err) = server.cognito("NoSuchOperation", json!({}));
    assert_eq!(status, 400);
    assert_eq!(err["__type"], "UnknownOperationException");

    // Discovery and JWKS under the issuer.
    let info = server.info();
    let issuer = info["issuer"].as_str().expect("issuer");
    let disco: Value = server
        .http
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .expect("discovery")
        .json()
        .expect("json");
    assert_eq!(disco["issuer"], issuer);
    assert_eq!(disco["jwks_uri"], info["jwksUrl"]);
    let jwks: Value = server
        .http
        .get(info["jwksUrl"].as_str().expect("jwks url"))
        .send()
        .expect("jwks")
        .json()
        .expect("json");
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    server.stop();
}

#[test]
fn failed_sign_ins_are_throttled_per_source() {
    let dir = DataDir::new("source-throttle");
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_FAILED_SIGN_INS_PER_ADDRESS", "20")],
    );
    server.create_user("me@example.com");
    let client_id = server.info()["clientId"].as_str().expect("id").to_owned();
    let attempt = |user: &str, password: &str| {
        server.cognito(
            "InitiateAuth",
            json!({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": client_id,
                   "AuthParameters": {"USERNAME": user, "PASSWORD": password}}),
        )
    };
    // Each guess names another user, so no single user is locked out; the source is.
    for i in 0..20 {
        let (status, err) = attempt(&format!("guess-{i}@example.com"), "Wrong-passw0rd");
        assert_eq!(status, 400);
        assert_eq!(err["message"], "Incorrect username or password.", "{err}");
    }
    let (status, err) = attempt("me@example.com", PASSWORD);
    assert_eq!(status, 400);
    assert_eq!(err["__type"], "NotAuthorizedException");
    assert_eq!(err["message"], "Password attempts exceeded");
    server.stop();
}

/// With the default limits, a neighbour behind the same address guessing other users'
/// passwords does not lock a user out: the per-address ceiling is far above the per-user
/// lockout.
#[test]
fn one_address_guessing_does_not_lock_out_its_neighbours() {
    let dir = DataDir::new("nat-neighbours");
    let server = Server::start(&dir.0);
    server.create_user("me@example.com");
    let client_id = server.info()["clientId"].as_str().expect("id").to_owned();
    for i in 0..30 {
        let (status, err) = server.cognito(
            "InitiateAuth",
            json!({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": client_id,
                   "AuthParameters": {"USERNAME": format!("guess-{i}@example.com"), "PASSWORD": "Wrong-passw0rd"}}),
        );
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["message"], "Incorrect username or password.", "{err}");
    }
    server.sign_in("me@example.com", PASSWORD);
    server.stop();
}
