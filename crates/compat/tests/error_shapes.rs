//! Snapshots of each protocol's error responses, byte for byte: what a client's error
//! parser sees. The edge runs in-process on the embedded parts in a temporary directory.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response};
use sluice_compat::{Edge, KinesisContext, s3::S3Adapter};
use sluice_identity::access_keys::AccessKeys;
use sluice_identity::{Identity, Lifetimes};
use tower::ServiceExt;

struct Fixture {
    router: axum::Router,
    key: (String, String),
    client_id: String,
    _dir: sluice_meta::conformance::TestEngines,
}

fn fixture() -> Fixture {
    let engines = sluice_meta::conformance::TestEngines::new();
    let dir = engines.dir().to_owned();
    let mut migrations = Vec::new();
    for part in [
        sluice_identity::MIGRATIONS,
        sluice_identity::access_keys::MIGRATIONS,
        sluice_store::embedded::MIGRATIONS,
        sluice_stream::embedded::MIGRATIONS,
    ] {
        migrations.extend_from_slice(part);
    }
    let db = engines.meta("shapes", &migrations);
    let identity = Identity::new(db.clone(), &dir.join("keys"), "http://edge.test");
    let pool = identity
        .bootstrap("us-east-2", Lifetimes::default())
        .expect("bootstrap");
    identity
        .create_user(&pool.pool_id, "me@example.com", "Passw0rd!", false)
        .expect("user");
    let keys = AccessKeys::open(db.clone(), &dir.join("keys").join("access-keys.key"))
        .expect("access keys");
    let key = keys.create("test").expect("key");
    let store = sluice_store::embedded::EmbeddedStore::new(
        db.clone(),
        sluice_blobs::conformance::test_blobs(&dir.join("blobs")),
    );
    let stream =
        sluice_stream::embedded::EmbeddedStream::open(db, &dir.join("log")).expect("stream");
    let router = sluice_compat::router(Edge {
        identity,
        keys,
        kinesis: KinesisContext {
            stream: Arc::new(stream),
            region: "us-east-2".into(),
            account_id: "000000000000".into(),
            subscriptions: Default::default(),
            settings: Default::default(),
            foreign_region: None,
        },
        s3: S3Adapter {
            store: Arc::new(store),
            region: "us-east-2".into(),
            max_object_bytes: 1 << 20,
            uploads: None,
            notifications: None,
            policies: None,
            cors: Default::default(),
            regions: Default::default(),
            locks: Default::default(),
            encryptions: Default::default(),
        },
        s3_base_domain: None,
        sign_in_sources: Arc::default(),
        address_rates: Arc::default(),
        lambda: None,
        apigw: None,
        iam: None,
    })
    .expect("router");
    Fixture {
        router,
        key: (key.id, key.secret),
        client_id: pool.client_id,
        _dir: engines,
    }
}

async fn send(f: &Fixture, req: Request<Body>) -> (u16, Vec<(String, String)>, String) {
    let resp: Response<Body> = f.router.clone().oneshot(req).await.expect("response");
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str() == "x-amzn-errortype" || n.as_str() == "content-type")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn json_req(target: &str, body: &str) -> Request<Body> {
    Request::post("/")
        .header("host", "edge.test")
        .header("x-amz-target", target)
        .header("content-type", "application/x-amz-json-1.1")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

/// A request signed with `key`, as an SDK would.
fn signed(
    f: &Fixture,
    method: &str,
    path: &str,
    target: Option<&str>,
    body: &str,
    service: &str,
) -> Request<Body> {
    use sha2::Digest;
    let date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut headers = vec![
        ("host".to_owned(), "edge.test".to_owned()),
        ("x-amz-date".to_owned(), date.clone()),
    ];
    let payload_hash = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    if service == "s3" {
        headers.push(("x-amz-content-sha256".to_owned(), payload_hash.clone()));
    }
    if let Some(t) = target {
        headers.push(("x-amz-target".to_owned(), t.to_owned()));
    }
    let auth = sluice_compat::sigv4::authorization_header(
        &sluice_compat::sigv4::SignedRequest {
            method,
            path,
            query: "",
            headers: &headers,
            payload_hash: &payload_hash,
        },
        &f.key.0,
        &f.key.1,
        "us-east-2",
        service,
    )
    .expect("sign");
    let mut b = Request::builder().method(method).uri(path);
    for (n, v) in &headers {
        b = b.header(n, v);
    }
    b.header("authorization", auth)
        .header("content-type", "application/x-amz-json-1.1")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

const JSON11: &str = "application/x-amz-json-1.1";

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cognito_errors() {
    let f = fixture();
    let body = format!(
        r#"{{"AuthFlow":"USER_PASSWORD_AUTH","ClientId":"{}","AuthParameters":{{"USERNAME":"me@example.com","PASSWORD":"Wr0ng-password"}}}}"#,
        f.client_id
    );
    let got = send(
        &f,
        json_req("AWSCognitoIdentityProviderService.InitiateAuth", &body),
    )
    .await;
    assert_eq!(
        got,
        (
            400,
            h(&[
                ("content-type", JSON11),
                ("x-amzn-errortype", "NotAuthorizedException:")
            ]),
            r#"{"__type":"NotAuthorizedException","message":"Incorrect username or password."}"#
                .to_owned()
        )
    );
    let got = send(&f, json_req("AWSCognitoIdentityProviderService.Nope", "{}")).await;
    assert_eq!(got.0, 400);
    assert!(
        got.2
            .starts_with(r#"{"__type":"UnknownOperationException","message":"#),
        "{}",
        got.2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_errors() {
    let f = fixture();
    let got = send(&f, json_req("Kinesis_20131202.ListStreams", "{}")).await;
    assert_eq!(
        got,
        (
            400,
            h(&[("content-type", JSON11), ("x-amzn-errortype", "MissingAuthenticationTokenException:")]),
            r#"{"__type":"MissingAuthenticationTokenException","message":"missing authentication token"}"#.to_owned()
        )
    );
    let req = signed(
        &f,
        "POST",
        "/",
        Some("Kinesis_20131202.DescribeStream"),
        r#"{"StreamName":"nope"}"#,
        "kinesis",
    );
    let got = send(&f, req).await;
    assert_eq!(
        got,
        (
            400,
            h(&[
                ("content-type", JSON11),
                ("x-amzn-errortype", "ResourceNotFoundException:")
            ]),
            r#"{"__type":"ResourceNotFoundException","message":"stream nope not found"}"#
                .to_owned()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors() {
    let f = fixture();
    let req = signed(&f, "GET", "/no-such-bucket/key", None, "", "s3");
    let (status, _, body) = send(&f, req).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code><Message>bucket no-such-bucket does not exist</Message></Error>"#
    );
    let req = signed(&f, "GET", "/sluice-missing/key", None, "", "s3");
    let (status, _, _) = send(&f, req).await;
    assert_eq!(status, 404);
    let anon = Request::get("/sluice/key")
        .header("host", "edge.test")
        .body(Body::empty())
        .expect("request");
    let (status, _, body) = send(&f, anon).await;
    assert_eq!(status, 403);
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
}

/// An error answer to a request that announced its body with `Expect: 100-continue` closes
/// the connection: the client may still send the unread body, which would otherwise run
/// into the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_expect_continue_requests_close_the_connection() {
    let f = fixture();
    for (expect, closes) in [(true, true), (false, false)] {
        let mut req = signed(&f, "PUT", "/no-such-bucket/key", None, "y", "s3");
        if expect {
            req.headers_mut()
                .insert("expect", "100-continue".parse().expect("header"));
        }
        let resp: Response<Body> = f.router.clone().oneshot(req).await.expect("response");
        assert_eq!(resp.status().as_u16(), 404);
        assert_eq!(
            resp.headers()
                .get("connection")
                .is_some_and(|v| v == "close"),
            closes,
            "expect: {expect}"
        );
    }
}
