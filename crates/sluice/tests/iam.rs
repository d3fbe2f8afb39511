//! IAM with the aws CLI, black-box: a role with the seed's Part C1 policy, a user whose key
//! may do what that policy allows and nothing else, the answers and errors the CLI shows,
//! and every IAM row surviving `kill -9`.

mod common;

use common::{DataDir, Server, aws_as};
use serde_json::Value;

/// The seed's Part C1 policy for the upload function, verbatim but for the account id.
const SEED_C1_POLICY: &str = r#"{ "Version": "2012-10-17", "Statement": [ { "Sid": "PutToKinesis", "Effect": "Allow", "Action": ["kinesis:PutRecord", "kinesis:PutRecords"], "Resource": "arn:aws:kinesis:us-east-2:000000000000:stream/uploads-stream" } ]
}"#;

const LAMBDA_TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

fn aws(server: &Server, key: &(String, String), args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--endpoint-url", server.edge.as_str(), "--output", "json"];
    all.extend_from_slice(args);
    aws_as((&key.0, &key.1), &all)
}

fn ok(server: &Server, key: &(String, String), args: &[&str]) -> Value {
    let (ok, out, err) = aws(server, key, args);
    assert!(ok, "aws {args:?} failed: {err}");
    if out.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("aws {args:?}: {e}: {out}"))
    }
}

fn refused(server: &Server, key: &(String, String), args: &[&str], code: &str) -> String {
    let (ok, _, err) = aws(server, key, args);
    assert!(!ok, "aws {args:?} should have failed");
    assert!(
        err.contains(code),
        "aws {args:?}: expected {code}, got: {err}"
    );
    err
}

/// A new access key of IAM user `user` (`iam create-access-key`): (id, secret).
fn access_key(server: &Server, root: &(String, String), user: &str) -> (String, String) {
    let k = ok(
        server,
        root,
        &["iam", "create-access-key", "--user-name", user],
    );
    let field = |f: &str| k["AccessKey"][f].as_str().expect(f).to_owned();
    (field("AccessKeyId"), field("SecretAccessKey"))
}

fn file(dir: &DataDir, name: &str, text: &str) -> String {
    let path = dir.0.join(name);
    std::fs::write(&path, text).expect("write");
    format!("file://{}", path.display())
}

#[test]
fn iam_with_the_aws_cli_and_a_users_key_limited_by_the_seeds_policy() {
    let dir = DataDir::new("iam-cli");
    let server = Server::start(&dir.0);
    let root = server.new_key();
    let trust = file(&dir, "trust.json", LAMBDA_TRUST);
    let c1 = file(&dir, "c1.json", SEED_C1_POLICY);

    let me = ok(&server, &root, &["sts", "get-caller-identity"]);
    assert_eq!(me["Arn"], "arn:aws:iam::000000000000:root");

    // The seed's role, as teams script it before `aws lambda create-function`.
    let role = ok(
        &server,
        &root,
        &[
            "iam",
            "create-role",
            "--role-name",
            "upload-fn-role",
            "--assume-role-policy-document",
            &trust,
        ],
    );
    assert!(
        role["Role"]["RoleId"]
            .as_str()
            .is_some_and(|id| id.starts_with("AROA"))
    );
    ok(
        &server,
        &root,
        &[
            "iam",
            "put-role-policy",
            "--role-name",
            "upload-fn-role",
            "--policy-name",
            "PutToKinesis",
            "--policy-document",
            &c1,
        ],
    );
    ok(
        &server,
        &root,
        &[
            "iam",
            "attach-role-policy",
            "--role-name",
            "upload-fn-role",
            "--policy-arn",
            "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        ],
    );
    let got = ok(
        &server,
        &root,
        &[
            "iam",
            "get-role-policy",
            "--role-name",
            "upload-fn-role",
            "--policy-name",
            "PutToKinesis",
        ],
    );
    let want: Value = serde_json::from_str(SEED_C1_POLICY).expect("policy");
    assert_eq!(
        got["PolicyDocument"], want,
        "the CLI decodes IAM's URL-encoded document"
    );
    let got = ok(
        &server,
        &root,
        &["iam", "get-role", "--role-name", "upload-fn-role"],
    );
    assert_eq!(
        got["Role"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"],
        "lambda.amazonaws.com"
    );
    let aws_policies = ok(
        &server,
        &root,
        &[
            "iam",
            "list-policies",
            "--scope",
            "AWS",
            "--query",
            "Policies[].PolicyName",
        ],
    );
    assert!(
        aws_policies.as_array().is_some_and(|a| a.len() == 8),
        "{aws_policies}"
    );
    refused(
        &server,
        &root,
        &["iam", "get-role", "--role-name", "missing"],
        "NoSuchEntity",
    );
    refused(
        &server,
        &root,
        &["iam", "delete-role", "--role-name", "upload-fn-role"],
        "DeleteConflict",
    );
    let bad = file(
        &dir,
        "bad.json",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kinesis:PutRecord","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":"not-an-address"}}}]}"#,
    );
    refused(
        &server,
        &root,
        &[
            "iam",
            "put-role-policy",
            "--role-name",
            "upload-fn-role",
            "--policy-name",
            "c",
            "--policy-document",
            &bad,
        ],
        "MalformedPolicyDocument",
    );

    // A user with the same policy: its key may put records on uploads-stream, nothing else.
    ok(
        &server,
        &root,
        &["iam", "create-user", "--user-name", "uploader"],
    );
    ok(
        &server,
        &root,
        &[
            "iam",
            "put-user-policy",
            "--user-name",
            "uploader",
            "--policy-name",
            "PutToKinesis",
            "--policy-document",
            &c1,
        ],
    );
    let user = access_key(&server, &root, "uploader");
    let who = ok(&server, &user, &["sts", "get-caller-identity"]);
    assert_eq!(who["Arn"], "arn:aws:iam::000000000000:user/uploader");
    let put = [
        "kinesis",
        "put-record",
        "--stream-name",
        "uploads-stream",
        "--partition-key",
        "p",
        "--data",
        "aGVsbG8=",
    ];
    ok(&server, &user, &put);
    ok(
        &server,
        &root,
        &[
            "kinesis",
            "create-stream",
            "--stream-name",
            "other",
            "--shard-count",
            "1",
        ],
    );
    let err = refused(
        &server,
        &user,
        &[
            "kinesis",
            "put-record",
            "--stream-name",
            "other",
            "--partition-key",
            "p",
            "--data",
            "aGVsbG8=",
        ],
        "AccessDeniedException",
    );
    assert!(
        err.contains("User: arn:aws:iam::000000000000:user/uploader is not authorized to perform: kinesis:PutRecord on resource: arn:aws:kinesis:us-east-2:000000000000:stream/other"),
        "{err}"
    );
    refused(&server, &user, &["s3", "ls", "s3://sluice"], "AccessDenied");
    refused(&server, &user, &["iam", "list-users"], "AccessDenied");

    // Every row is durable: after kill -9 the role, the user, its key and its policy are there.
    let (api, edge) = (server.api.clone(), server.edge.clone());
    server.kill9();
    let server = Server::restart(&dir.0, &api, &edge);
    ok(&server, &user, &put);
    refused(
        &server,
        &user,
        &[
            "kinesis",
            "put-record",
            "--stream-name",
            "other",
            "--partition-key",
            "p",
            "--data",
            "aGVsbG8=",
        ],
        "AccessDeniedException",
    );
    let attached = ok(
        &server,
        &root,
        &[
            "iam",
            "list-attached-role-policies",
            "--role-name",
            "upload-fn-role",
            "--query",
            "AttachedPolicies[].PolicyName",
        ],
    );
    assert_eq!(attached, serde_json::json!(["AWSLambdaBasicExecutionRole"]));

    // Deleting the key takes effect at once through this server.
    ok(
        &server,
        &root,
        &[
            "iam",
            "delete-access-key",
            "--user-name",
            "uploader",
            "--access-key-id",
            &user.0,
        ],
    );
    refused(
        &server,
        &user,
        &["sts", "get-caller-identity"],
        "InvalidClientTokenId",
    );
    server.stop();
}

/// The upload route and the built-in mapping act as roles of their own, created at first
/// start with exactly what they need and named by `sluice info`: taking a permission away
/// stops the part as a Lambda function's missing permission would, and giving it back
/// restores it.
#[test]
fn the_built_in_parts_act_as_least_privilege_roles() {
    let dir = DataDir::new("iam-builtin");
    dir.write_config("max_attempts = 1\n");
    let server = Server::start(&dir.0);
    let root = server.new_key();
    let info = server.info();
    assert_eq!(
        info["uploadRouteRole"],
        "arn:aws:iam::000000000000:role/sluice-upload-route"
    );
    assert_eq!(
        info["builtinMappingRole"],
        "arn:aws:iam::000000000000:role/sluice-builtin-mapping"
    );
    let route = ok(
        &server,
        &root,
        &[
            "iam",
            "get-role-policy",
            "--role-name",
            "sluice-upload-route",
            "--policy-name",
            "least-privilege",
        ],
    );
    let route_policy = route["PolicyDocument"].clone();
    let actions: Vec<String> = route_policy["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .flat_map(|s| match &s["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        actions,
        ["s3:PutObject", "kinesis:PutRecord", "kinesis:PutRecords"]
    );

    server.create_user("roles@example.com");
    let token = server.id_token("roles@example.com");
    let resp = server.upload(&token, "one.txt", "first");
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().expect("json");
    let done = server.wait_final(&token, v["uploadId"].as_str().expect("id"));
    assert_eq!(done["status"], "processed", "{done}");

    // Without its policy the route may not store uploads: 403 naming the action, and
    // nothing stored.
    ok(
        &server,
        &root,
        &[
            "iam",
            "delete-role-policy",
            "--role-name",
            "sluice-upload-route",
            "--policy-name",
            "least-privilege",
        ],
    );
    let resp = server.upload(&token, "two.txt", "second");
    assert_eq!(resp.status().as_u16(), 403);
    let body = resp.text().expect("body");
    assert!(
        body.contains("sluice-upload-route is not authorized to perform: s3:PutObject on resource: arn:aws:s3:::sluice/uploads/two.txt"),
        "{body}"
    );
    let (found, _, _) = aws(
        &server,
        &root,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "sluice",
            "--key",
            "uploads/two.txt",
        ],
    );
    assert!(!found, "a refused upload stores nothing");

    // Restored, and the mapping's policy taken away instead: the upload is stored, its
    // processing fails with the denial.
    let doc = file(&dir, "route.json", &route_policy.to_string());
    ok(
        &server,
        &root,
        &[
            "iam",
            "put-role-policy",
            "--role-name",
            "sluice-upload-route",
            "--policy-name",
            "least-privilege",
            "--policy-document",
            &doc,
        ],
    );
    ok(
        &server,
        &root,
        &[
            "iam",
            "delete-role-policy",
            "--role-name",
            "sluice-builtin-mapping",
            "--policy-name",
            "least-privilege",
        ],
    );
    let resp = server.upload(&token, "three.txt", "third");
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().expect("json");
    let done = server.wait_final(&token, v["uploadId"].as_str().expect("id"));
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done.to_string()
            .contains("sluice-builtin-mapping is not authorized to perform: kinesis:GetRecords"),
        "{done}"
    );
}

/// Bucket policies with the aws CLI: S3's validation, a user allowed by the bucket's policy
/// alone, a Deny that even the root key meets (but for the policy itself), a public prefix
/// for unsigned requests, and a bucket created again without its old policy.
#[test]
fn bucket_policies_allow_deny_and_open_a_prefix_to_everyone() {
    let dir = DataDir::new("iam-bucket-policy");
    let server = Server::start(&dir.0);
    let root = server.new_key();
    let body = file(&dir, "body.txt", "shared bytes");
    let body = body.trim_start_matches("file://").to_owned();
    ok(
        &server,
        &root,
        &["s3api", "create-bucket", "--bucket", "shared"],
    );
    for key in ["a.txt", "public/p.txt"] {
        ok(
            &server,
            &root,
            &[
                "s3api",
                "put-object",
                "--bucket",
                "shared",
                "--key",
                key,
                "--body",
                &body,
            ],
        );
    }
    ok(
        &server,
        &root,
        &["iam", "create-user", "--user-name", "bob"],
    );
    let bob = access_key(&server, &root, "bob");
    let out = dir.0.join("out.txt");
    let out = out.to_str().expect("path");
    let get_a = [
        "s3api",
        "get-object",
        "--bucket",
        "shared",
        "--key",
        "a.txt",
        out,
    ];
    // No policy of bob's allows anything.
    refused(&server, &bob, &get_a, "AccessDenied");
    refused(
        &server,
        &root,
        &["s3api", "get-bucket-policy", "--bucket", "shared"],
        "NoSuchBucketPolicy",
    );

    // S3's validation.
    for (policy, message) in [
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::other/*"}]}"#,
            "Policy has invalid resource",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::shared/*"}]}"#,
            "Missing required field Principal",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"bob"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::shared/*"}]}"#,
            "Invalid principal in policy",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kinesis:PutRecord","Resource":"arn:aws:s3:::shared/*"}]}"#,
            "Policy has invalid action",
        ),
        (
            "[1]",
            "Policies must be valid JSON and the first byte must be '{'",
        ),
    ] {
        let err = refused(
            &server,
            &root,
            &[
                "s3api",
                "put-bucket-policy",
                "--bucket",
                "shared",
                "--policy",
                policy,
            ],
            "MalformedPolicy",
        );
        assert!(err.contains(message), "{policy}: {err}");
    }

    // The bucket's policy alone lets bob read, and only read.
    let allow_bob = r#"{"Version":"2012-10-17","Statement":[{"Sid":"BobReads","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::000000000000:user/bob"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::shared/*"}]}"#;
    ok(
        &server,
        &root,
        &[
            "s3api",
            "put-bucket-policy",
            "--bucket",
            "shared",
            "--policy",
            allow_bob,
        ],
    );
    ok(&server, &bob, &get_a);
    assert_eq!(std::fs::read_to_string(out).expect("read"), "shared bytes");
    refused(
        &server,
        &bob,
        &[
            "s3api",
            "put-object",
            "--bucket",
            "shared",
            "--key",
            "b.txt",
            "--body",
            &body,
        ],
        "AccessDenied",
    );
    let got = ok(
        &server,
        &root,
        &["s3api", "get-bucket-policy", "--bucket", "shared"],
    );
    assert_eq!(got["Policy"], allow_bob);

    // A Deny wins, even over the root key; the root key still manages the policy.
    let deny_deletes = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"s3:DeleteObject","Resource":"arn:aws:s3:::shared/*"},{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::shared/public/*"}]}"#;
    ok(
        &server,
        &root,
        &[
            "s3api",
            "put-bucket-policy",
            "--bucket",
            "shared",
            "--policy",
            deny_deletes,
        ],
    );
    let err = refused(
        &server,
        &root,
        &[
            "s3api",
            "delete-object",
            "--bucket",
            "shared",
            "--key",
            "a.txt",
        ],
        "AccessDenied",
    );
    assert!(
        err.contains("explicit deny in a resource-based policy"),
        "{err}"
    );
    let status = ok(
        &server,
        &root,
        &["s3api", "get-bucket-policy-status", "--bucket", "shared"],
    );
    assert_eq!(status["PolicyStatus"]["IsPublic"], true);

    // Unsigned requests: the public prefix only.
    let anonymous = |key: &str| {
        aws(
            &server,
            &root,
            &[
                "s3api",
                "get-object",
                "--no-sign-request",
                "--bucket",
                "shared",
                "--key",
                key,
                out,
            ],
        )
    };
    let (public, _, err) = anonymous("public/p.txt");
    assert!(public, "an unsigned read of the public prefix: {err}");
    let (private, _, err) = anonymous("a.txt");
    assert!(!private && err.contains("AccessDenied"), "{err}");

    ok(
        &server,
        &root,
        &["s3api", "delete-bucket-policy", "--bucket", "shared"],
    );
    ok(
        &server,
        &root,
        &[
            "s3api",
            "delete-object",
            "--bucket",
            "shared",
            "--key",
            "a.txt",
        ],
    );
    let (public, _, _) = anonymous("public/p.txt");
    assert!(!public, "the bucket is private again");

    // A bucket created again under the name does not inherit the old bucket's policy.
    ok(
        &server,
        &root,
        &[
            "s3api",
            "put-bucket-policy",
            "--bucket",
            "shared",
            "--policy",
            allow_bob,
        ],
    );
    ok(
        &server,
        &root,
        &[
            "s3api",
            "delete-object",
            "--bucket",
            "shared",
            "--key",
            "public/p.txt",
        ],
    );
    ok(
        &server,
        &root,
        &["s3api", "delete-bucket", "--bucket", "shared"],
    );
    ok(
        &server,
        &root,
        &["s3api", "create-bucket", "--bucket", "shared"],
    );
    refused(
        &server,
        &root,
        &["s3api", "get-bucket-policy", "--bucket", "shared"],
        "NoSuchBucketPolicy",
    );
}
