//! Scoped access keys, black-box: `sluice keys create --allow …|--policy FILE` and the aws CLI
//! against the edge. A key with a policy may do what its policy allows and nothing else, on
//! S3, Kinesis and Cognito alike, with AWS's error codes and IAM's message.

mod common;

use std::process::Command;

use common::{DataDir, Server, aws_as, bin};
use serde_json::Value;

fn key_of(json: &str) -> (String, String) {
    let v: Value = serde_json::from_str(json).expect("key json");
    (
        v["accessKeyId"].as_str().expect("id").to_owned(),
        v["secretAccessKey"].as_str().expect("secret").to_owned(),
    )
}

/// Runs the aws CLI against the server's edge with `key`.
fn aws(server: &Server, key: &(String, String), args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--endpoint-url", server.edge.as_str()];
    all.extend_from_slice(args);
    aws_as((&key.0, &key.1), &all)
}

fn put(server: &Server, key: &(String, String), object: &str, body: &str) {
    let file = std::env::temp_dir().join(format!("sluice-scoped-{}", std::process::id()));
    std::fs::write(&file, body).expect("write");
    let (ok, _, err) = aws(
        server,
        key,
        &[
            "s3api",
            "put-object",
            "--bucket",
            "sluice",
            "--key",
            object,
            "--body",
            file.to_str().expect("utf-8"),
        ],
    );
    assert!(ok, "put {object}: {err}");
}

fn get(server: &Server, key: &(String, String), object: &str) -> (bool, String, String) {
    aws(
        server,
        key,
        &["s3", "cp", &format!("s3://sluice/{object}"), "-"],
    )
}

#[test]
fn a_scoped_key_may_do_only_what_its_policy_allows() {
    let dir = DataDir::new("scoped-keys");
    let server = Server::start(&dir.0);
    let admin = server.new_key();
    put(&server, &admin, "public/a.txt", "alpha");
    put(&server, &admin, "private/b.txt", "bravo");
    put(&server, &admin, "tmp/x.txt", "xray");

    let reader = key_of(&server.cli(&[
        "keys",
        "create",
        "--description",
        "reader",
        "--allow",
        "s3:GetObject:arn:aws:s3:::sluice/public/*",
        "--allow",
        "s3:ListBucket:arn:aws:s3:::sluice",
        "--allow",
        "s3:DeleteObject:arn:aws:s3:::sluice/tmp/*",
        "--allow",
        "kinesis:Describe*:arn:aws:kinesis:*:*:stream/uploads-stream",
    ]));

    // Allowed.
    let (ok, out, err) = get(&server, &reader, "public/a.txt");
    assert!(ok && out == "alpha", "{err}");
    let (ok, out, err) = aws(
        &server,
        &reader,
        &["s3api", "list-objects-v2", "--bucket", "sluice"],
    );
    assert!(ok && out.contains("private/b.txt"), "{err}");
    let (ok, _, err) = aws(
        &server,
        &reader,
        &[
            "kinesis",
            "describe-stream-summary",
            "--stream-name",
            "uploads-stream",
        ],
    );
    assert!(ok, "{err}");

    // Not allowed: AccessDenied with IAM's message, and nothing changes.
    let (ok, _, err) = aws(
        &server,
        &reader,
        &[
            "s3api",
            "get-object",
            "--bucket",
            "sluice",
            "--key",
            "private/b.txt",
            "/dev/null",
        ],
    );
    assert!(!ok, "read outside its prefix");
    assert!(
        err.contains("(AccessDenied)")
            && err.contains("is not authorized to perform: s3:GetObject on resource: arn:aws:s3:::sluice/private/b.txt because no identity-based policy allows the s3:GetObject action"),
        "{err}"
    );
    let (ok, _, err) = aws(
        &server,
        &reader,
        &[
            "s3api",
            "delete-object",
            "--bucket",
            "sluice",
            "--key",
            "public/a.txt",
        ],
    );
    assert!(!ok && err.contains("(AccessDenied)"), "{err}");
    assert_eq!(
        get(&server, &admin, "public/a.txt").1,
        "alpha",
        "still there"
    );
    let (ok, _, err) = aws(&server, &reader, &["s3api", "list-buckets"]);
    assert!(!ok && err.contains("s3:ListAllMyBuckets"), "{err}");
    let file = dir.0.join("c.txt");
    std::fs::write(&file, "charlie").expect("write");
    let (ok, _, err) = aws(
        &server,
        &reader,
        &[
            "s3",
            "cp",
            file.to_str().expect("utf-8"),
            "s3://sluice/public/c.txt",
        ],
    );
    assert!(!ok && err.contains("AccessDenied"), "{err}");

    // DeleteObjects is decided key by key, as S3 does: the allowed key goes, the other is
    // an AccessDenied error in the answer.
    let (ok, out, err) = aws(
        &server,
        &reader,
        &[
            "s3api",
            "delete-objects",
            "--bucket",
            "sluice",
            "--delete",
            r#"{"Objects":[{"Key":"tmp/x.txt"},{"Key":"private/b.txt"}]}"#,
        ],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["Deleted"][0]["Key"], "tmp/x.txt", "{v}");
    assert_eq!(v["Errors"][0]["Key"], "private/b.txt", "{v}");
    assert_eq!(v["Errors"][0]["Code"], "AccessDenied", "{v}");
    assert_eq!(get(&server, &admin, "private/b.txt").1, "bravo", "kept");
    assert!(!get(&server, &admin, "tmp/x.txt").0, "deleted");

    // A copy needs GetObject on its source, not only PutObject on its destination.
    let copier = key_of(&server.cli(&[
        "keys",
        "create",
        "--allow",
        "s3:PutObject:arn:aws:s3:::sluice/public/*",
        "--allow",
        "s3:GetObject:arn:aws:s3:::sluice/public/*",
    ]));
    let (ok, _, err) = aws(
        &server,
        &copier,
        &[
            "s3api",
            "copy-object",
            "--bucket",
            "sluice",
            "--key",
            "public/leak.txt",
            "--copy-source",
            "sluice/private/b.txt",
        ],
    );
    assert!(
        !ok && err.contains("s3:GetObject on resource: arn:aws:s3:::sluice/private/b.txt"),
        "{err}"
    );
    let (ok, _, err) = aws(
        &server,
        &copier,
        &[
            "s3api",
            "copy-object",
            "--bucket",
            "sluice",
            "--key",
            "public/a-copy.txt",
            "--copy-source",
            "sluice/public/a.txt",
        ],
    );
    assert!(ok, "{err}");

    // Kinesis: AccessDeniedException with the stream's ARN; GetRecords is decided on the
    // stream its shard iterator reads.
    let (ok, _, err) = aws(
        &server,
        &reader,
        &[
            "kinesis",
            "put-record",
            "--stream-name",
            "uploads-stream",
            "--partition-key",
            "k",
            "--data",
            "aGk=",
        ],
    );
    assert!(!ok, "put-record allowed");
    assert!(
        err.contains("(AccessDeniedException)")
            && err.contains("kinesis:PutRecord on resource: arn:aws:kinesis:us-east-2:")
            && err.contains(":stream/uploads-stream"),
        "{err}"
    );
    let (ok, out, err) = aws(
        &server,
        &admin,
        &[
            "kinesis",
            "get-shard-iterator",
            "--stream-name",
            "uploads-stream",
            "--shard-id",
            "shardId-000000000000",
            "--shard-iterator-type",
            "TRIM_HORIZON",
        ],
    );
    assert!(ok, "{err}");
    let iterator = serde_json::from_str::<Value>(&out).expect("json")["ShardIterator"]
        .as_str()
        .expect("iterator")
        .to_owned();
    let (ok, _, err) = aws(
        &server,
        &reader,
        &["kinesis", "get-records", "--shard-iterator", &iterator],
    );
    assert!(
        !ok && err.contains("kinesis:GetRecords on resource: arn:aws:kinesis:")
            && err.contains(":stream/uploads-stream"),
        "{err}"
    );
    let (ok, _, err) = aws(
        &server,
        &admin,
        &["kinesis", "get-records", "--shard-iterator", &iterator],
    );
    assert!(ok, "{err}");

    // Cognito's IAM-authorized operations too.
    let (ok, _, err) = aws(
        &server,
        &reader,
        &["cognito-idp", "list-user-pools", "--max-results", "5"],
    );
    assert!(
        !ok && err.contains("(AccessDeniedException)") && err.contains("cognito-idp:ListUserPools"),
        "{err}"
    );
    let (ok, _, err) = aws(
        &server,
        &admin,
        &["cognito-idp", "list-user-pools", "--max-results", "5"],
    );
    assert!(ok, "{err}");

    // An explicit Deny wins over an Allow.
    let policy = dir.0.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"s3:*","Resource":"*"},
            {"Effect":"Deny","Action":"s3:Delete*","Resource":"arn:aws:s3:::sluice/private/*"}]}"#,
    )
    .expect("write");
    let most = key_of(&server.cli(&[
        "keys",
        "create",
        "--policy",
        policy.to_str().expect("utf-8"),
    ]));
    let (ok, _, err) = aws(
        &server,
        &most,
        &[
            "s3api",
            "delete-object",
            "--bucket",
            "sluice",
            "--key",
            "private/b.txt",
        ],
    );
    assert!(
        !ok && err.contains("with an explicit deny in an identity-based policy"),
        "{err}"
    );
    assert!(get(&server, &most, "private/b.txt").0, "reads are allowed");

    // `keys list` shows each key's scope.
    let list = server.cli(&["keys", "list"]);
    let line = |id: &str| {
        list.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} in {list}"))
            .to_owned()
    };
    assert!(line(&admin.0).ends_with("\tfull-access"), "{list}");
    assert!(line(&reader.0).contains("s3:GetObject"), "{list}");

    server.stop();
}

#[test]
fn an_unusable_policy_is_refused_with_its_reason() {
    let dir = DataDir::new("scoped-bad");
    let policy = dir.0.join("bad.json");
    for (doc, why) in [
        (
            r#"{"Statement":{"Effect":"Maybe","Action":"s3:*","Resource":"*"}}"#,
            "Effect",
        ),
        ("not json", "not valid JSON"),
        (
            r#"{"Statement":{"Effect":"Allow","Action":"s3:*","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":"not-an-address"}}}}"#,
            "IpAddress",
        ),
    ] {
        std::fs::write(&policy, doc).expect("write");
        let out = Command::new(bin())
            .args(["keys", "create", "--policy"])
            .arg(&policy)
            .arg("--data-dir")
            .arg(&dir.0)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{doc}: {stderr}");
        assert!(stderr.contains(why), "{doc}: {stderr}");
    }
    let out = Command::new(bin())
        .args(["keys", "create", "--allow", "s3:GetObject"])
        .arg("--data-dir")
        .arg(&dir.0)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ACTION:RESOURCE"));
}
