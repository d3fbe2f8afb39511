//! The upload API refuses what it must: every authorizer failure is a 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"`, every bad input a 4xx with a JSON error,
//! and nothing refused leaves anything behind.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{DataDir, Server, rows};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{Value, json};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

struct Forge {
    pem: String,
    kid: String,
    issuer: String,
    client_id: String,
    sub: String,
}

impl Forge {
    fn claims(&self) -> Value {
        json!({
            "sub": self.sub, "iss": self.issuer, "aud": self.client_id, "token_use": "id",
            "email": "me@example.com", "cognito:username": self.sub,
            "iat": now(), "auth_time": now(), "exp": now() + 600, "jti": "j",
        })
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with(claims, &self.pem, &self.kid)
    }

    fn sign_with(&self, claims: &Value, pem: &str, kid: &str) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.to_owned());
        jsonwebtoken::encode(
            &h,
            claims,
            &EncodingKey::from_rsa_pem(pem.as_bytes()).expect("key"),
        )
        .expect("sign")
    }
}

fn assert_401(resp: reqwest::blocking::Response, case: &str) {
    assert_eq!(resp.status(), 401, "{case}");
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer error=\"invalid_token\""),
        "{case}"
    );
    assert!(resp.headers().get("x-request-id").is_some(), "{case}");
    let body: Value = resp.json().expect("json error body");
    assert_eq!(body["message"], "Unauthorized", "{case}");
}

#[test]
fn authorizer_refuses_every_bad_token() {
    let dir = DataDir::new("authz");
    let server = Server::start(&dir.0);
    server.create_user("me@example.com");
    let info = server.info();
    let pool = info["poolId"].as_str().expect("pool");
    let good = server.id_token("me@example.com");
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(good.split('.').nth(1).expect("payload"))
            .expect("b64"),
    )
    .expect("json");
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(good.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    let forge = Forge {
        pem: common::pool_signing_key_pem(&dir.0, pool),
        kid: header["kid"].as_str().expect("kid").to_owned(),
        issuer: info["issuer"].as_str().expect("issuer").to_owned(),
        client_id: info["clientId"].as_str().expect("client").to_owned(),
        sub: payload["sub"].as_str().expect("sub").to_owned(),
    };

    // Control: a token forged with the real key and right claims is accepted, so the
    // refusals below are for the reason each case names.
    let control = forge.sign(&forge.claims());
    assert_eq!(server.upload(&control, "control.txt", "x").status(), 200);

    let other_key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa");
    let other_pem = other_key
        .to_pkcs8_pem(LineEnding::LF)
        .expect("pem")
        .to_string();
    let public_pem = rsa::RsaPrivateKey::from_pkcs8_pem(&forge.pem)
        .expect("parse")
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public pem");

    let mut cases: Vec<(&str, Option<String>)> = vec![("no header", None)];
    cases.push(("not a JWT", Some("abc.def".into())));
    cases.push((
        "bad signature",
        Some(forge.sign_with(&forge.claims(), &other_pem, &forge.kid)),
    ));
    let none_header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, forge.kid));
    let body = URL_SAFE_NO_PAD.encode(forge.claims().to_string());
    cases.push(("alg none", Some(format!("{none_header}.{body}."))));
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(forge.kid.clone());
    cases.push((
        "HS256 signed with the public key",
        Some(
            jsonwebtoken::encode(
                &hs,
                &forge.claims(),
                &EncodingKey::from_secret(public_pem.as_bytes()),
            )
            .expect("hs256"),
        ),
    ));
    cases.push((
        "unknown kid",
        Some(forge.sign_with(&forge.claims(), &forge.pem, "no-such-kid")),
    ));
    let mut expired = forge.claims();
    expired["exp"] = json!(now() - 120);
    expired["iat"] = json!(now() - 7200);
    cases.push(("expired", Some(forge.sign(&expired))));
    let mut wrong_iss = forge.claims();
    wrong_iss["iss"] = json!("https://cognito-idp.us-east-2.amazonaws.com/us-east-2_AAAAAAAAA");
    cases.push(("wrong issuer", Some(forge.sign(&wrong_iss))));
    let mut wrong_aud = forge.claims();
    wrong_aud["aud"] = json!("someoneelsesclient");
    cases.push(("wrong audience", Some(forge.sign(&wrong_aud))));
    let mut access = forge.claims();
    access.as_object_mut().expect("object").remove("aud");
    access["token_use"] = json!("access");
    access["client_id"] = json!("unknownclient");
    cases.push((
        "access token of an unknown client",
        Some(forge.sign(&access)),
    ));
    let mut future = forge.claims();
    future["nbf"] = json!(now() + 3600);
    cases.push(("not valid yet", Some(forge.sign(&future))));
    // Correctly signed by the pool's key, but with a critical extension sluice does not
    // understand (RFC 7515 §4.1.11).
    let crit_header = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"alg":"RS256","kid":"{}","crit":["x-sluice-test"],"x-sluice-test":true}}"#,
        forge.kid
    ));
    let signing_input = format!("{crit_header}.{body}");
    let crit_sig = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_rsa_pem(forge.pem.as_bytes()).expect("key"),
        Algorithm::RS256,
    )
    .expect("sign");
    cases.push((
        "critical header extension",
        Some(format!("{signing_input}.{crit_sig}")),
    ));

    let uploads_before = rows(&dir.0, "SELECT COUNT(*) FROM uploads");
    for (case, token) in &cases {
        let mut req = server
            .http
            .post(format!("{}/uploads", server.api))
            .header("Content-Type", "application/json")
            .body(r#"{"filename":"x.txt","content":"x"}"#);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_401(req.send().expect("send"), case);
        // Reading needs the same proof.
        let mut get = server.http.get(format!("{}/uploads/anything", server.api));
        if let Some(t) = token {
            get = get.bearer_auth(t);
        }
        assert_401(get.send().expect("send"), case);
    }
    let basic = server
        .http
        .post(format!("{}/uploads", server.api))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .send()
        .expect("send");
    assert_401(basic, "basic auth");
    // Two Authorization headers, one of them valid: neither is used.
    let twice = server
        .http
        .post(format!("{}/uploads", server.api))
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Bearer {control}"))
        .header("Authorization", "Bearer someone-else")
        .body(r#"{"filename":"x.txt","content":"x"}"#)
        .send()
        .expect("send");
    assert_eq!(twice.status(), 400, "duplicate Authorization");
    assert_eq!(
        rows(&dir.0, "SELECT COUNT(*) FROM uploads"),
        uploads_before,
        "refused requests stored nothing"
    );

    // An AccessToken of the real client is accepted, as API Gateway's authorizer does.
    let signed_in = server.sign_in("me@example.com", common::PASSWORD);
    let access_token = signed_in["AuthenticationResult"]["AccessToken"]
        .as_str()
        .expect("access token");
    assert_eq!(
        server.upload(access_token, "via-access.txt", "x").status(),
        200
    );
    server.stop();
}

#[test]
fn bad_input_is_refused_and_stores_nothing() {
    let dir = DataDir::new("input");
    let server = Server::start(&dir.0);
    server.create_user("me@example.com");
    server.create_user("other@example.com");
    let token = server.id_token("me@example.com");
    let other = server.id_token("other@example.com");
    // A refused request that announced its body with `Expect: 100-continue` closes the
    // connection: the client may or may not send the body, and the next request on the
    // connection could not be told from it.
    {
        use std::io::{Read as _, Write as _};
        let addr = server
            .api
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
        conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .expect("timeout");
        write!(
            conn,
            "POST /uploads HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 20\r\nExpect: 100-continue\r\n\r\n"
        )
        .expect("send head");
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(answer.starts_with("http/1.1 401"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
    }
    let post = |ct: Option<&str>, body: Vec<u8>| {
        let mut r = server
            .http
            .post(format!("{}/uploads", server.api))
            .bearer_auth(&token)
            .body(body);
        if let Some(ct) = ct {
            r = r.header("Content-Type", ct);
        }
        r.send().expect("send")
    };
    let objects_before = rows(&dir.0, "SELECT COUNT(*) FROM objects");
    // An upload row is committed with its stream record (the outbox), so no row means no record.
    let uploads_before = rows(&dir.0, "SELECT COUNT(*) FROM uploads");

    let json_ct = Some("application/json");
    let mut cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        ("malformed JSON", json_ct, b"{\"filename\":".to_vec(), 400),
        ("not an object", json_ct, b"[1,2]".to_vec(), 400),
        (
            "wrong field type",
            json_ct,
            br#"{"filename":5}"#.to_vec(),
            400,
        ),
        ("text/plain", Some("text/plain"), b"{}".to_vec(), 415),
        ("no content type", None, b"{}".to_vec(), 415),
    ];
    for (name, bad) in [
        ("empty filename", ""),
        ("slash", "a/b.txt"),
        ("backslash", "a\\b.txt"),
        ("dot dot", "..evil"),
        ("NUL", "a\u{0}b"),
        ("control", "a\u{7}b"),
    ] {
        cases.push((
            name,
            json_ct,
            json!({"filename": bad, "content": "x"})
                .to_string()
                .into_bytes(),
            400,
        ));
    }
    let long = "a".repeat(256);
    cases.push((
        "filename over 255 bytes",
        json_ct,
        json!({"filename": long, "content": "x"})
            .to_string()
            .into_bytes(),
        400,
    ));
    let big = "x".repeat(10 * 1024 * 1024 + 1);
    cases.push((
        "body over 10 MiB",
        json_ct,
        json!({"filename": "big.txt", "content": big})
            .to_string()
            .into_bytes(),
        413,
    ));
    for (name, ct, body, code) in cases {
        let resp = post(ct, body);
        assert_eq!(resp.status().as_u16(), code, "{name}");
        assert!(resp.headers().get("x-request-id").is_some(), "{name}");
        let err: Value = resp.json().expect("json error");
        assert!(err["message"].is_string(), "{name}: {err}");
    }
    assert_eq!(rows(&dir.0, "SELECT COUNT(*) FROM objects"), objects_before);
    assert_eq!(rows(&dir.0, "SELECT COUNT(*) FROM uploads"), uploads_before);

    // Defaults of the seed: a generated file name and "empty" content.
    let resp = post(json_ct, b"{}".to_vec());
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().expect("json");
    let key = v["s3"]["key"].as_str().expect("key");
    assert!(
        key.starts_with("uploads/file-") && key.ends_with(".txt"),
        "{key}"
    );
    let id = v["uploadId"].as_str().expect("id");
    let (_, bytes) = server.get_bytes(&token, &format!("/uploads/{id}/content"));
    assert_eq!(bytes, b"empty");

    // A key owned by someone else cannot be overwritten; the owner may overwrite.
    assert_eq!(server.upload(&token, "mine.txt", "v1").status(), 200);
    let theirs = server.upload(&other, "mine.txt", "stolen");
    assert_eq!(theirs.status(), 409);
    let r = server.upload(&token, "mine.txt", "v2");
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().expect("json")["uploadId"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, bytes) = server.get_bytes(&token, &format!("/uploads/{id}/content"));
    assert_eq!(bytes, b"v2");

    // Another user's upload is not found, not forbidden.
    let (code, _) = server.status(&other, &id);
    assert_eq!(code, 404);
    let (code, _) = server.get_bytes(&other, &format!("/uploads/{id}/content"));
    assert_eq!(code, 404);
    let (code, _) = server.status(&token, "no-such-upload");
    assert_eq!(code, 404);
    let (code, _) = server.get_bytes(&token, "/no/such/route");
    assert_eq!(code, 404);
    server.stop();
}

#[test]
fn content_that_cannot_be_processed_fails_without_blocking_its_shard() {
    let dir = DataDir::new("poison");
    // One shard, so the good upload's record comes after the poison one on the same shard.
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_SHARDS", "1")],
    );
    server.create_user("me@example.com");
    let token = server.id_token("me@example.com");
    // JSON strings are always UTF-8, so raw bytes go in as application/octet-stream.
    let resp = server
        .http
        .post(format!("{}/uploads?filename=bad.bin", server.api))
        .bearer_auth(&token)
        .header("Content-Type", "application/octet-stream")
        .body(vec![0x68u8, 0x69, 0xff, 0xfe])
        .send()
        .expect("send");
    assert_eq!(resp.status(), 200);
    let bad = resp.json::<Value>().expect("json")["uploadId"]
        .as_str()
        .expect("id")
        .to_owned();
    let ok = server.upload(&token, "fine.txt", "fine");
    let good = ok.json::<Value>().expect("json")["uploadId"]
        .as_str()
        .expect("id")
        .to_owned();
    let failed = server.wait_final(&token, &bad);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(
        failed["attempts"], 1,
        "one delivery, retried inside it: {failed}"
    );
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("UTF-8")),
        "{failed}"
    );
    let (code, _) = server.get_bytes(&token, &format!("/uploads/{bad}/processed"));
    assert_eq!(code, 404);
    let (_, raw) = server.get_bytes(&token, &format!("/uploads/{bad}/content"));
    assert_eq!(raw, vec![0x68u8, 0x69, 0xff, 0xfe]);
    assert_eq!(server.wait_final(&token, &good)["status"], "processed");
    server.stop();
}
