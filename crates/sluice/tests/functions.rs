//! Functions created with Lambda's API, driven with the aws CLI against the real binary:
//! the seed's two handlers (their code unchanged) as functions wired with `aws lambda`
//! only, invocation semantics (errors, timeouts, tails, queued and dry runs, concurrency),
//! updates, and bad input refused with Lambda's errors, leaving nothing behind. Uses `node`
//! and `python3` from the machine; the functions import the AWS SDK / boto3 from the
//! runtime cache without bundling it. No wall-clock thresholds: everything polls with a
//! generous deadline.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::{DataDir, Server, wait_for};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(180);
const ROLE: &str = "arn:aws:iam::000000000000:role/sluice-test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// A zip archive of `files` (name, content), written to `dir/name`.
fn zip_file(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join(name);
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).expect("create zip"));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (n, data) in files {
        z.start_file(*n, opts).expect("start file");
        z.write_all(data).expect("write file");
    }
    z.finish().expect("finish zip");
    path
}

struct Cli<'a> {
    server: &'a Server,
    key: (String, String),
}

impl Cli<'_> {
    /// Runs `aws <args> --endpoint-url <edge>`; (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--endpoint-url", &self.server.edge, "--output", "json"]);
        common::aws_as((&self.key.0, &self.key.1), &all)
    }

    /// Runs and parses stdout as JSON, panicking with stderr on failure.
    fn json(&self, args: &[&str]) -> Value {
        let (ok, out, err) = self.run(args);
        assert!(ok, "aws {args:?} failed: {err}");
        if out.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("aws {args:?}: {e}: {out}"))
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(!ok, "aws {args:?} should fail: {out}");
        err
    }

    fn create(
        &self,
        name: &str,
        runtime: &str,
        handler: &str,
        zip: &Path,
        extra: &[&str],
    ) -> Value {
        self.create_as(name, runtime, handler, zip, ROLE, extra)
    }

    /// Creates a function that runs as `role`.
    fn create_as(
        &self,
        name: &str,
        runtime: &str,
        handler: &str,
        zip: &Path,
        role: &str,
        extra: &[&str],
    ) -> Value {
        let zip_arg = format!("fileb://{}", zip.display());
        let mut args = vec![
            "lambda",
            "create-function",
            "--function-name",
            name,
            "--runtime",
            runtime,
            "--handler",
            handler,
            "--role",
            role,
            "--zip-file",
            &zip_arg,
        ];
        args.extend(extra);
        self.json(&args)
    }

    /// Invokes; returns (the CLI's answer, the payload written to the outfile).
    fn invoke(&self, name: &str, payload: &Value, extra: &[&str]) -> (Value, String) {
        let out = self
            .server
            .data_dir
            .join(format!("out-{}.json", rand_tag()));
        let p = payload.to_string();
        let out_s = out.display().to_string();
        let mut args = vec!["lambda", "invoke", "--function-name", name, "--payload", &p];
        args.extend(extra);
        args.push(&out_s);
        let v = self.json(&args);
        let body = std::fs::read_to_string(&out).unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        (v, body)
    }
}

/// The seed's Part C1 policy for the upload function, verbatim but for the account id.
const SEED_C1_POLICY: &str = r#"{ "Version": "2012-10-17", "Statement": [ { "Sid": "PutToKinesis", "Effect": "Allow", "Action": ["kinesis:PutRecord", "kinesis:PutRecords"], "Resource": "arn:aws:kinesis:us-east-2:000000000000:stream/uploads-stream" } ]
}"#;
/// The upload function's "existing S3 permissions" (seed, Part C1): write `uploads/`.
const UPLOAD_S3_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::sluice/uploads/*"}]}"#;
/// The processor's S3 permissions (seed, Part D): read `uploads/`, write `processed/`.
const PROCESSOR_S3_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::sluice/uploads/*"},{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::sluice/processed/*"}]}"#;
/// The AWS managed policy the seed's processor role gets for reading its stream.
const KINESIS_EXECUTION: &str =
    "arn:aws:iam::aws:policy/service-role/AWSLambdaKinesisExecutionRole";

/// The seed's two roles: the upload function's (C1, with its S3 permissions and, when
/// `with_c1`, the Part C1 policy) and the processor's (Part D: the managed Kinesis
/// execution policy and its S3 permissions); returns their ARNs.
fn seed_roles(cli: &Cli, with_c1: bool) -> (String, String) {
    let mut upload = vec![("s3-uploads", UPLOAD_S3_POLICY)];
    if with_c1 {
        upload.push(("put-to-kinesis", SEED_C1_POLICY));
    }
    let up = make_role(cli, "upload-lambda-role", &upload);
    let processor = make_role(
        cli,
        "kinesis-processor-role",
        &[("s3-processing", PROCESSOR_S3_POLICY)],
    );
    if with_c1 {
        attach_kinesis_execution(cli);
    }
    (up, processor)
}

fn attach_kinesis_execution(cli: &Cli) {
    cli.json(&[
        "iam",
        "attach-role-policy",
        "--role-name",
        "kinesis-processor-role",
        "--policy-arn",
        KINESIS_EXECUTION,
    ]);
}

/// Lambda's trust policy: `lambda.amazonaws.com` may assume the role.
const LAMBDA_TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

/// Creates the execution role `name` (trusting Lambda) with the inline policies `inline`
/// (name, document); returns its ARN.
fn make_role(cli: &Cli, name: &str, inline: &[(&str, &str)]) -> String {
    let role = cli.json(&[
        "iam",
        "create-role",
        "--role-name",
        name,
        "--assume-role-policy-document",
        LAMBDA_TRUST,
    ]);
    for (policy, doc) in inline {
        cli.json(&[
            "iam",
            "put-role-policy",
            "--role-name",
            name,
            "--policy-name",
            policy,
            "--policy-document",
            doc,
        ]);
    }
    role["Role"]["Arn"].as_str().expect("role ARN").to_owned()
}

fn rand_tag() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

fn start(tag: &str, config: &str) -> (DataDir, Server) {
    let dir = DataDir::new(tag);
    dir.write_config(config);
    let server = Server::start(&dir.0);
    (dir, server)
}

/// The seed end to end with the aws CLI: the upload handler and the processor handler
/// (tests/clients/js/seed, the seed's code) created as functions, a mapping from the stream
/// to the processor created with `aws lambda create-event-source-mapping`, the upload
/// handler invoked with API Gateway's event → `uploads/demo.txt`, a stream record with the
/// request's ids, and `processed/demo.txt` = `HELLO KINESIS`.
#[test]
fn the_seed_handlers_run_as_functions_wired_with_the_aws_cli() {
    // The built-in mapping would write processed/ itself, and an S3 write into uploads/
    // would put a record of its own: both off, so only the seed's handlers do either.
    let (dir, server) = start(
        "fn-seed",
        "builtin_mapping = false\ns3_uploads_enqueue = false\n",
    );
    let cli = Cli {
        server: &server,
        key: server.new_key(),
    };
    let seed = repo_root().join("tests/clients/js/seed");
    let upload = std::fs::read(seed.join("upload.mjs")).expect("upload handler");
    let processor = std::fs::read(seed.join("processor.mjs")).expect("processor handler");
    let zip = zip_file(
        &dir.0,
        "seed.zip",
        &[("upload.mjs", &upload), ("processor.mjs", &processor)],
    );
    // A role that does not exist, or one Lambda may not assume, is refused.
    let zip_arg = format!("fileb://{}", zip.display());
    let refused = |role: &str| {
        cli.fails(&[
            "lambda",
            "create-function",
            "--function-name",
            "upload-handler",
            "--runtime",
            "nodejs20.x",
            "--handler",
            "upload.handler",
            "--role",
            role,
            "--zip-file",
            &zip_arg,
        ])
    };
    let err = refused("arn:aws:iam::000000000000:role/no-such-role");
    assert!(
        err.contains("InvalidParameterValueException")
            && err.contains("The role defined for the function cannot be assumed by Lambda."),
        "{err}"
    );
    cli.json(&[
        "iam",
        "create-role",
        "--role-name",
        "ec2-role",
        "--assume-role-policy-document",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
    ]);
    let err = refused("arn:aws:iam::000000000000:role/ec2-role");
    assert!(
        err.contains("The role defined for the function cannot be assumed by Lambda."),
        "{err}"
    );

    // The seed's roles, the upload role without Part C1's policy yet.
    let (up_role, processor_role) = seed_roles(&cli, false);
    let up = cli.create_as(
        "upload-handler",
        "nodejs20.x",
        "upload.handler",
        &zip,
        &up_role,
        &[
            "--environment",
            "Variables={UPLOAD_BUCKET=sluice,STREAM_NAME=uploads-stream}",
            "--timeout",
            "30",
        ],
    );
    assert_eq!(up["State"], "Active");
    assert_eq!(
        up["FunctionArn"],
        "arn:aws:lambda:us-east-2:000000000000:function:upload-handler"
    );
    cli.create_as(
        "processor-handler",
        "nodejs20.x",
        "processor.handler",
        &zip,
        &processor_role,
        &[
            "--environment",
            "Variables={PROCESSED_BUCKET=sluice}",
            "--timeout",
            "30",
        ],
    );
    // The processor's role cannot read the stream yet: Lambda refuses the mapping.
    let esm_args = [
        "lambda",
        "create-event-source-mapping",
        "--function-name",
        "processor-handler",
        "--event-source-arn",
        "arn:aws:kinesis:us-east-2:000000000000:stream/uploads-stream",
        "--batch-size",
        "10",
        "--starting-position",
        "LATEST",
    ];
    let err = cli.fails(&esm_args);
    assert!(
        err.contains("InvalidParameterValueException")
            && err.contains(
                "Cannot access stream arn:aws:kinesis:us-east-2:000000000000:stream/uploads-stream"
            ),
        "{err}"
    );
    attach_kinesis_execution(&cli);
    let esm = cli.json(&[
        "lambda",
        "create-event-source-mapping",
        "--function-name",
        "processor-handler",
        "--event-source-arn",
        "arn:aws:kinesis:us-east-2:000000000000:stream/uploads-stream",
        "--batch-size",
        "10",
        "--starting-position",
        "LATEST",
    ]);
    let uuid = esm["UUID"].as_str().expect("UUID").to_owned();
    assert_eq!(esm["State"], "Creating");
    assert_eq!(esm["BatchSize"], 10);
    wait_for("the mapping to be Enabled", DEADLINE, || {
        let v = cli.json(&["lambda", "get-event-source-mapping", "--uuid", &uuid]);
        (v["State"] == "Enabled").then_some(())
    });
    // The same mapping, seen from the command line's front end.
    let listed = server.cli(&["mapping", "list", "--json"]);
    assert!(listed.contains("function:processor-handler"), "{listed}");

    let event = json!({
        "version": "2.0",
        "routeKey": "POST /uploads",
        "rawPath": "/uploads",
        "body": json!({"filename": "demo.txt", "content": "hello kinesis"}).to_string(),
        "isBase64Encoded": false,
        "requestContext": {
            "requestId": "req-seed-1",
            "authorizer": {"jwt": {"claims": {"sub": "user-sub-1"}, "scopes": null}},
        },
    });
    // Without Part C1's policy the handler's PutRecord is denied, as the seed's "Common
    // issues" describe: the SDK's AccessDeniedException, thrown out of the handler.
    let (answer, payload) = cli.invoke("upload-handler", &event, &[]);
    assert_eq!(answer["FunctionError"], "Unhandled", "{answer} {payload}");
    let error: Value = serde_json::from_str(&payload).expect("error document");
    assert_eq!(error["errorType"], "AccessDeniedException", "{payload}");
    let message = error["errorMessage"].as_str().expect("errorMessage");
    assert!(
        message.contains(
            "assumed-role/upload-lambda-role/upload-handler is not authorized to perform: kinesis:PutRecord on resource: arn:aws:kinesis:us-east-2:000000000000:stream/uploads-stream"
        ),
        "{message}"
    );
    // Part C1: the policy added with put-role-policy; the same function now works.
    cli.json(&[
        "iam",
        "put-role-policy",
        "--role-name",
        "upload-lambda-role",
        "--policy-name",
        "put-to-kinesis",
        "--policy-document",
        SEED_C1_POLICY,
    ]);
    let (answer, payload) = cli.invoke("upload-handler", &event, &[]);
    assert_eq!(answer["StatusCode"], 200);
    assert!(answer.get("FunctionError").is_none(), "{answer} {payload}");
    let reply: Value = serde_json::from_str(&payload).expect("handler reply");
    assert_eq!(reply["statusCode"], 200);
    let body: Value = serde_json::from_str(reply["body"].as_str().expect("body")).expect("body");
    assert_eq!(body["message"], "Uploaded and queued for processing");
    assert_eq!(body["s3"]["key"], "uploads/demo.txt");

    let get = |key: &str| -> Option<String> {
        let out = dir.0.join("got.txt");
        let (ok, _, _) = cli.run(&[
            "s3api",
            "get-object",
            "--bucket",
            "sluice",
            "--key",
            key,
            &out.display().to_string(),
        ]);
        ok.then(|| std::fs::read_to_string(&out).expect("read object"))
    };
    assert_eq!(get("uploads/demo.txt").as_deref(), Some("hello kinesis"));
    let processed = wait_for("processed/demo.txt", DEADLINE, || get("processed/demo.txt"));
    assert_eq!(processed, "HELLO KINESIS");

    // The record the handler put has the request's ids.
    let shards = cli.json(&["kinesis", "list-shards", "--stream-name", "uploads-stream"]);
    let mut found = None;
    for s in shards["Shards"].as_array().expect("shards") {
        let it = cli.json(&[
            "kinesis",
            "get-shard-iterator",
            "--stream-name",
            "uploads-stream",
            "--shard-id",
            s["ShardId"].as_str().expect("id"),
            "--shard-iterator-type",
            "TRIM_HORIZON",
        ]);
        let recs = cli.json(&[
            "kinesis",
            "get-records",
            "--shard-iterator",
            it["ShardIterator"].as_str().expect("iterator"),
        ]);
        for r in recs["Records"].as_array().expect("records") {
            let data = base64::engine::general_purpose::STANDARD
                .decode(r["Data"].as_str().expect("data"))
                .expect("base64");
            let v: Value = serde_json::from_slice(&data).expect("record json");
            if v["key"] == "uploads/demo.txt" {
                assert!(found.is_none(), "one record for the upload");
                found = Some(v);
            }
        }
    }
    let record = found.expect("the upload handler's stream record");
    assert_eq!(record["bucket"], "sluice");
    assert_eq!(record["requestId"], "req-seed-1");
    assert_eq!(record["userSub"], "user-sub-1");

    // The functions' logs, framed as Lambda frames them.
    let logs = server.cli(&["logs", "--function", "processor-handler", "-n", "1000"]);
    assert!(logs.contains("START RequestId: "), "{logs}");
    assert!(logs.contains("REPORT RequestId: "), "{logs}");
    let state = cli.json(&["lambda", "get-event-source-mapping", "--uuid", &uuid]);
    assert_eq!(state["LastProcessingResult"], "OK", "{state}");

    let deleted = cli.json(&["lambda", "delete-event-source-mapping", "--uuid", &uuid]);
    assert_eq!(deleted["State"], "Deleting");
    let err = cli.fails(&["lambda", "get-event-source-mapping", "--uuid", &uuid]);
    assert!(err.contains("ResourceNotFoundException"), "{err}");
}

const NODE_FN: &str = r#"
let calls = 0;
export const handler = async (event, context) => {
  calls += 1;
  console.log("node got", JSON.stringify(event));
  if (event.fail) throw new TypeError("asked to fail");
  if (event.sleep) await new Promise((r) => setTimeout(r, event.sleep));
  if (event.bare) return "just a string";
  return { calls, pid: process.pid, greeting: process.env.GREETING ?? null, name: context.functionName };
};
"#;

const NODE_FN_V2: &str = r#"
export const handler = async () => ({ version: 2, greeting: process.env.GREETING ?? null });
"#;

const PY_FN: &str = r#"
import os

def handler(event, context):
    print("python got", event)
    if event.get("fail"):
        raise ValueError("python failed")
    return {"greeting": os.environ.get("GREETING"), "remaining": context.get_remaining_time_in_millis() > 0}
"#;

/// Invoke as Lambda answers it: results, thrown errors (`FunctionError: Unhandled` with
/// the error document), timeouts (the worker replaced), bare values, log tails, queued and
/// dry runs; updates of code and configuration; revision checks; concurrency; deletion.
#[test]
fn invocations_updates_and_limits_follow_lambda() {
    let (dir, server) = start("fn-invoke", "");
    let cli = Cli {
        server: &server,
        key: server.new_key(),
    };
    make_role(&cli, "sluice-test", &[]);
    let zip = zip_file(&dir.0, "node.zip", &[("index.mjs", NODE_FN.as_bytes())]);
    let created = cli.create(
        "node-fn",
        "nodejs22.x",
        "index.handler",
        &zip,
        &[
            "--timeout",
            "2",
            "--environment",
            "Variables={GREETING=hello}",
        ],
    );
    assert_eq!(created["Timeout"], 2);
    assert_eq!(created["MemorySize"], 128);
    assert_eq!(created["Environment"]["Variables"]["GREETING"], "hello");

    let (a, p) = cli.invoke("node-fn", &json!({"x": 1}), &["--log-type", "Tail"]);
    assert_eq!(a["StatusCode"], 200);
    assert_eq!(a["ExecutedVersion"], "$LATEST");
    let v: Value = serde_json::from_str(&p).expect("payload");
    assert_eq!(
        (v["calls"].as_i64(), v["greeting"].as_str()),
        (Some(1), Some("hello"))
    );
    assert_eq!(v["name"], "node-fn");
    let tail = base64::engine::general_purpose::STANDARD
        .decode(a["LogResult"].as_str().expect("LogResult"))
        .expect("base64");
    let tail = String::from_utf8(tail).expect("utf-8");
    assert!(tail.starts_with("START RequestId: "), "{tail}");
    assert!(tail.contains("INFO\tnode got {\"x\":1}"), "{tail}");
    assert!(
        tail.contains("END RequestId: ") && tail.contains("REPORT RequestId: "),
        "{tail}"
    );

    // Warm: the same process serves the next invocation.
    let (_, p2) = cli.invoke("node-fn", &json!({}), &[]);
    let v2: Value = serde_json::from_str(&p2).expect("payload");
    assert_eq!((v2["calls"].as_i64(), &v2["pid"]), (Some(2), &v["pid"]));

    // A thrown error: 200, FunctionError Unhandled, Lambda's error document.
    let (a, p) = cli.invoke("node-fn", &json!({"fail": true}), &[]);
    assert_eq!(
        (a["StatusCode"].as_i64(), a["FunctionError"].as_str()),
        (Some(200), Some("Unhandled"))
    );
    let e: Value = serde_json::from_str(&p).expect("error payload");
    assert_eq!(
        (e["errorType"].as_str(), e["errorMessage"].as_str()),
        (Some("TypeError"), Some("asked to fail"))
    );
    assert!(e["trace"].is_array(), "{e}");

    // Past its timeout: the worker is killed and replaced.
    let (a, p) = cli.invoke("node-fn", &json!({"sleep": 30000}), &[]);
    assert_eq!(a["FunctionError"], "Unhandled");
    let e: Value = serde_json::from_str(&p).expect("timeout payload");
    assert_eq!(e["errorType"], "Sandbox.Timedout");
    assert!(
        e["errorMessage"]
            .as_str()
            .is_some_and(|m| m.ends_with("Task timed out after 2.00 seconds")),
        "{e}"
    );
    let (_, p) = cli.invoke("node-fn", &json!({}), &[]);
    let after: Value = serde_json::from_str(&p).expect("payload");
    assert_ne!(after["pid"], v["pid"], "a new worker after the timeout");
    assert_eq!(after["calls"], 1);

    // Any JSON value is a result.
    let (_, p) = cli.invoke("node-fn", &json!({"bare": true}), &[]);
    assert_eq!(p, "\"just a string\"");

    // Queued: 202 at once, run soon after (its line reaches the function's log).
    let (a, _) = cli.invoke(
        "node-fn",
        &json!({"queued": "yes"}),
        &["--invocation-type", "Event"],
    );
    assert_eq!(a["StatusCode"], 202);
    wait_for("the queued invocation to run", DEADLINE, || {
        let logs = server.cli(&["logs", "--function", "node-fn", "-n", "1000"]);
        logs.contains("node got {\"queued\":\"yes\"}").then_some(())
    });
    // Dry run: 204, nothing runs.
    let (a, _) = cli.invoke(
        "node-fn",
        &json!({"dry": 1}),
        &["--invocation-type", "DryRun"],
    );
    assert_eq!(a["StatusCode"], 204);

    // Configuration and code updates reach the next invocation; revisions are checked.
    let cfg = cli.json(&[
        "lambda",
        "update-function-configuration",
        "--function-name",
        "node-fn",
        "--environment",
        "Variables={GREETING=changed}",
    ]);
    let (_, p) = cli.invoke("node-fn", &json!({}), &[]);
    assert_eq!(
        serde_json::from_str::<Value>(&p).expect("payload")["greeting"],
        "changed"
    );
    let zip2 = zip_file(&dir.0, "node2.zip", &[("index.mjs", NODE_FN_V2.as_bytes())]);
    let err = cli.fails(&[
        "lambda",
        "update-function-code",
        "--function-name",
        "node-fn",
        "--zip-file",
        &format!("fileb://{}", zip2.display()),
        "--revision-id",
        "not-the-revision",
    ]);
    assert!(err.contains("PreconditionFailedException"), "{err}");
    let updated = cli.json(&[
        "lambda",
        "update-function-code",
        "--function-name",
        "node-fn",
        "--zip-file",
        &format!("fileb://{}", zip2.display()),
        "--revision-id",
        cfg["RevisionId"].as_str().expect("RevisionId"),
    ]);
    assert_ne!(updated["CodeSha256"], created["CodeSha256"]);
    let (_, p) = cli.invoke("node-fn", &json!({}), &[]);
    assert_eq!(
        serde_json::from_str::<Value>(&p).expect("payload"),
        json!({"version": 2, "greeting": "changed"})
    );

    // Reserved concurrency 0: every synchronous invocation is throttled.
    cli.json(&[
        "lambda",
        "put-function-concurrency",
        "--function-name",
        "node-fn",
        "--reserved-concurrent-executions",
        "0",
    ]);
    let err = cli.fails(&[
        "lambda",
        "invoke",
        "--function-name",
        "node-fn",
        &dir.0.join("throttled.json").display().to_string(),
    ]);
    assert!(err.contains("TooManyRequestsException"), "{err}");
    cli.run(&[
        "lambda",
        "delete-function-concurrency",
        "--function-name",
        "node-fn",
    ]);

    // A Python function, by ARN.
    let py = zip_file(&dir.0, "py.zip", &[("app.py", PY_FN.as_bytes())]);
    cli.create(
        "py-fn",
        "python3.12",
        "app.handler",
        &py,
        &["--environment", "Variables={GREETING=hola}"],
    );
    let arn = "arn:aws:lambda:us-east-2:000000000000:function:py-fn";
    let (_, p) = cli.invoke(arn, &json!({"a": 1}), &[]);
    assert_eq!(
        serde_json::from_str::<Value>(&p).expect("payload"),
        json!({"greeting": "hola", "remaining": true})
    );
    let (a, p) = cli.invoke(arn, &json!({"fail": true}), &[]);
    assert_eq!(a["FunctionError"], "Unhandled");
    let e: Value = serde_json::from_str(&p).expect("error payload");
    assert_eq!(
        (e["errorType"].as_str(), e["errorMessage"].as_str()),
        (Some("ValueError"), Some("python failed"))
    );

    let names = cli.json(&[
        "lambda",
        "list-functions",
        "--query",
        "Functions[].FunctionName",
    ]);
    assert_eq!(names, json!(["node-fn", "py-fn"]));
    let got = cli.json(&["lambda", "get-function", "--function-name", "py-fn"]);
    assert_eq!(got["Configuration"]["Runtime"], "python3.12");
    assert_eq!(got["Configuration"]["Handler"], "app.handler");

    cli.json(&["lambda", "delete-function", "--function-name", "py-fn"]);
    let err = cli.fails(&["lambda", "get-function", "--function-name", "py-fn"]);
    assert!(err.contains("ResourceNotFoundException"), "{err}");
    let names = cli.json(&[
        "lambda",
        "list-functions",
        "--query",
        "Functions[].FunctionName",
    ]);
    assert_eq!(names, json!(["node-fn"]));
}

/// Bad input is refused with Lambda's errors and leaves nothing: no function, no blob.
#[test]
fn bad_functions_are_refused_and_leave_nothing() {
    let (dir, server) = start("fn-bad", "");
    let cli = Cli {
        server: &server,
        key: server.new_key(),
    };
    make_role(&cli, "sluice-test", &[]);
    let blobs_before = common::blob_count(&dir.0);
    let good = zip_file(&dir.0, "good.zip", &[("index.mjs", NODE_FN.as_bytes())]);
    let create = |name: &str, runtime: &str, handler: &str, zip: &Path, extra: &[&str]| -> String {
        let zip_arg = format!("fileb://{}", zip.display());
        let mut args = vec![
            "lambda",
            "create-function",
            "--function-name",
            name,
            "--runtime",
            runtime,
            "--handler",
            handler,
            "--role",
            ROLE,
            "--zip-file",
            &zip_arg,
        ];
        args.extend(extra);
        cli.fails(&args)
    };
    // The handler's file is not in the archive.
    let err = create("f", "nodejs20.x", "main.handler", &good, &[]);
    assert!(
        err.contains("InvalidParameterValueException") && err.contains("main.mjs"),
        "{err}"
    );
    // A damaged zip (its directory is whole, so the aws CLI sends it; its data is not).
    let not_zip = dir.0.join("damaged.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&not_zip).expect("create"));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("index.mjs", opts).expect("start");
        z.write_all(&[b'x'; 4096]).expect("write");
        z.finish().expect("finish");
    }
    let mut bytes = std::fs::read(&not_zip).expect("read");
    bytes[100..200].fill(b'y');
    std::fs::write(&not_zip, bytes).expect("damage");
    let err = create("f", "nodejs20.x", "index.handler", &not_zip, &[]);
    assert!(
        err.contains("InvalidParameterValueException") && err.contains("Could not unzip"),
        "{err}"
    );
    // A zip bomb: 300 MB of zeros in a few hundred KB.
    let bomb = dir.0.join("bomb.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&bomb).expect("create"));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        z.start_file("index.mjs", opts).expect("start");
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..300 {
            z.write_all(&chunk).expect("write");
        }
        z.finish().expect("finish");
    }
    let err = create("f", "nodejs20.x", "index.handler", &bomb, &[]);
    assert!(
        err.contains("InvalidParameterValueException") && err.contains("Unzipped size"),
        "{err}"
    );
    // An unknown runtime, a role that is not a role, a reserved variable.
    let err = create("f", "ruby3.3", "index.handler", &good, &[]);
    assert!(
        err.contains("InvalidParameterValueException") && err.contains("ruby3.3"),
        "{err}"
    );
    let (ok, _, err) = cli.run(&[
        "lambda",
        "create-function",
        "--function-name",
        "f",
        "--runtime",
        "nodejs20.x",
        "--handler",
        "index.handler",
        "--role",
        "not-a-role",
        "--zip-file",
        &format!("fileb://{}", good.display()),
    ]);
    assert!(
        !ok && err.contains("InvalidParameterValueException"),
        "{err}"
    );
    let err = create(
        "f",
        "nodejs20.x",
        "index.handler",
        &good,
        &["--environment", "Variables={AWS_REGION=x}"],
    );
    assert!(
        err.contains("reserved keys") && err.contains("AWS_REGION"),
        "{err}"
    );

    // Nothing was created.
    let names = cli.json(&[
        "lambda",
        "list-functions",
        "--query",
        "Functions[].FunctionName",
    ]);
    assert_eq!(names, json!([]));
    assert_eq!(
        common::blob_count(&dir.0),
        blobs_before,
        "no code blob left behind"
    );

    // A mapping to a missing function, or from something that is not a stream.
    let err = cli.fails(&[
        "lambda",
        "create-event-source-mapping",
        "--function-name",
        "missing",
        "--event-source-arn",
        "arn:aws:kinesis:us-east-2:000000000000:stream/uploads-stream",
        "--starting-position",
        "LATEST",
    ]);
    assert!(err.contains("ResourceNotFoundException"), "{err}");
    cli.create("f", "nodejs20.x", "index.handler", &good, &[]);
    let err = cli.fails(&[
        "lambda",
        "create-event-source-mapping",
        "--function-name",
        "f",
        "--event-source-arn",
        "arn:aws:sqs:us-east-2:000000000000:queue",
    ]);
    assert!(err.contains("InvalidParameterValueException"), "{err}");
    let err = cli.fails(&[
        "lambda",
        "create-event-source-mapping",
        "--function-name",
        "f",
        "--event-source-arn",
        "arn:aws:kinesis:us-east-2:000000000000:stream/no-such-stream",
        "--starting-position",
        "LATEST",
    ]);
    assert!(
        err.contains("InvalidParameterValueException") && err.contains("Stream not found"),
        "{err}"
    );
    let listed = cli.json(&["lambda", "list-event-source-mappings"]);
    assert_eq!(listed["EventSourceMappings"], json!([]));

    // Invoking with a payload that is not JSON.
    let bad = dir.0.join("payload.txt");
    std::fs::write(&bad, "not json").expect("write");
    let err = cli.fails(&[
        "lambda",
        "invoke",
        "--function-name",
        "f",
        "--payload",
        &format!("fileb://{}", bad.display()),
        &dir.0.join("o.json").display().to_string(),
    ]);
    assert!(err.contains("InvalidRequestContentException"), "{err}");

    // Keys of a policy of their own, and the creation they try.
    let key_with = |statements: Value| -> Cli<'_> {
        let path = dir.0.join(format!("policy-{}.json", rand_tag()));
        std::fs::write(
            &path,
            json!({"Version": "2012-10-17", "Statement": statements}).to_string(),
        )
        .expect("write policy");
        let v: Value = serde_json::from_str(&server.cli(&[
            "keys",
            "create",
            "--policy",
            &path.display().to_string(),
        ]))
        .expect("key json");
        Cli {
            server: &server,
            key: (
                v["accessKeyId"].as_str().expect("id").to_owned(),
                v["secretAccessKey"].as_str().expect("secret").to_owned(),
            ),
        }
    };
    let create_g = |c: &Cli<'_>| {
        c.run(&[
            "lambda",
            "create-function",
            "--function-name",
            "g",
            "--runtime",
            "nodejs20.x",
            "--handler",
            "index.handler",
            "--role",
            ROLE,
            "--zip-file",
            &format!("fileb://{}", good.display()),
        ])
    };
    // A key that may not create functions cannot.
    let limited = key_with(json!([
        {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": "*"}
    ]));
    let (ok, _, err) = create_g(&limited);
    assert!(!ok);
    assert!(err.contains("AccessDeniedException"), "{err}");
    let (a, _) = limited.invoke("f", &json!({}), &[]);
    assert_eq!(a["StatusCode"], 200);

    // A key that may create functions but not pass the role: refused, as on AWS, so a
    // function never gets more than its creator may hand out.
    let no_pass = key_with(json!([{"Effect": "Allow", "Action": "lambda:*", "Resource": "*"}]));
    let (ok, _, err) = create_g(&no_pass);
    assert!(!ok);
    assert!(
        err.contains("AccessDeniedException")
            && err.contains(&format!(
                "is not authorized to perform: iam:PassRole on resource: {ROLE}"
            )),
        "{err}"
    );
    let may_pass = key_with(json!([
        {"Effect": "Allow", "Action": "lambda:*", "Resource": "*"},
        {"Effect": "Allow", "Action": "iam:PassRole", "Resource": ROLE}
    ]));
    let (ok, _, err) = create_g(&may_pass);
    assert!(ok, "{err}");
}

// --- HTTP APIs (aws apigatewayv2) ------------------------------------------------------

/// `curl -s -i -X <method> <url> [headers…] [-d body]`: (status, headers, body).
fn curl(method: &str, url: &str, headers: &[&str], body: Option<&str>) -> (u16, String, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-i", "-X", method, url]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        cmd.args(["-d", b]);
    }
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(|v| v.trim().to_owned())
}

struct Api<'a> {
    cli: &'a Cli<'a>,
    id: String,
    endpoint: String,
}

impl<'a> Api<'a> {
    fn create(cli: &'a Cli<'a>, name: &str) -> Api<'a> {
        let v = cli.json(&[
            "apigatewayv2",
            "create-api",
            "--name",
            name,
            "--protocol-type",
            "HTTP",
        ]);
        Api {
            cli,
            id: v["ApiId"].as_str().expect("ApiId").to_owned(),
            endpoint: v["ApiEndpoint"].as_str().expect("ApiEndpoint").to_owned(),
        }
    }

    fn run(&self, op: &str, args: &[&str]) -> Value {
        let mut all = vec!["apigatewayv2", op, "--api-id", &self.id];
        all.extend(args);
        self.cli.json(&all)
    }

    fn integration(&self, function: &str, version: &str) -> String {
        let arn = format!("arn:aws:lambda:us-east-2:000000000000:function:{function}");
        let v = self.run(
            "create-integration",
            &[
                "--integration-type",
                "AWS_PROXY",
                "--integration-uri",
                &arn,
                "--payload-format-version",
                version,
            ],
        );
        v["IntegrationId"]
            .as_str()
            .expect("IntegrationId")
            .to_owned()
    }

    fn route(&self, key: &str, integration: &str, extra: &[&str]) -> Value {
        let target = format!("integrations/{integration}");
        let mut args = vec!["--route-key", key, "--target", &target];
        args.extend(extra);
        self.run("create-route", &args)
    }
}

/// The seed with an HTTP API, as its Part C wires it — every step with the aws CLI, the
/// upload with the seed's curl: a JWT authorizer with the pool's issuer and client, an
/// `AWS_PROXY` integration to the seed's upload handler (format 2.0), `POST /uploads`,
/// the `$default` stage; then the IdToken's upload reaches the handler (200 with its own
/// body), the stream record carries the token's `sub` and the request's id, and the
/// processor writes `processed/demo.txt`. Without a token: 401 before the function runs.
#[test]
fn the_seed_behind_an_http_api_wired_with_the_aws_cli() {
    let (dir, server) = start(
        "api-seed",
        "builtin_mapping = false\ns3_uploads_enqueue = false\n",
    );
    let cli = Cli {
        server: &server,
        key: server.new_key(),
    };
    let (up_role, processor_role) = seed_roles(&cli, true);
    let info = server.info();
    let (issuer, client_id) = (
        info["issuer"].as_str().expect("issuer").to_owned(),
        info["clientId"].as_str().expect("clientId").to_owned(),
    );
    server.create_user("seed@example.com");
    let token = server.id_token("seed@example.com");
    let seed = repo_root().join("tests/clients/js/seed");
    let zip = zip_file(
        &dir.0,
        "seed.zip",
        &[
            (
                "upload.mjs",
                &std::fs::read(seed.join("upload.mjs")).expect("upload"),
            ),
            (
                "processor.mjs",
                &std::fs::read(seed.join("processor.mjs")).expect("processor"),
            ),
        ],
    );
    cli.create_as(
        "upload-handler",
        "nodejs20.x",
        "upload.handler",
        &zip,
        &up_role,
        &[
            "--environment",
            "Variables={UPLOAD_BUCKET=sluice,STREAM_NAME=uploads-stream}",
            "--timeout",
            "30",
        ],
    );
    cli.create_as(
        "processor-handler",
        "nodejs20.x",
        "processor.handler",
        &zip,
        &processor_role,
        &[
            "--environment",
            "Variables={PROCESSED_BUCKET=sluice}",
            "--timeout",
            "30",
        ],
    );
    let api = Api::create(&cli, "seed-api");
    let auth = api.run(
        "create-authorizer",
        &[
            "--authorizer-type",
            "JWT",
            "--name",
            "cognito",
            "--identity-source",
            "$request.header.Authorization",
            "--jwt-configuration",
            &format!("Audience={client_id},Issuer={issuer}"),
        ],
    );
    let auth_id = auth["AuthorizerId"]
        .as_str()
        .expect("AuthorizerId")
        .to_owned();
    let integration = api.integration("upload-handler", "2.0");
    let route = api.route(
        "POST /uploads",
        &integration,
        &["--authorization-type", "JWT", "--authorizer-id", &auth_id],
    );
    assert_eq!(route["AuthorizationType"], "JWT");
    let stage = api.run(
        "create-stage",
        &["--stage-name", "$default", "--auto-deploy"],
    );
    assert_eq!(stage["AutoDeploy"], true);
    let uuid = cli.json(&[
        "lambda",
        "create-event-source-mapping",
        "--function-name",
        "processor-handler",
        "--event-source-arn",
        "arn:aws:kinesis:us-east-2:000000000000:stream/uploads-stream",
        "--batch-size",
        "10",
        "--starting-position",
        "LATEST",
    ])["UUID"]
        .as_str()
        .expect("UUID")
        .to_owned();
    wait_for("the mapping to be Enabled", DEADLINE, || {
        let v = cli.json(&["lambda", "get-event-source-mapping", "--uuid", &uuid]);
        (v["State"] == "Enabled").then_some(())
    });

    // Without a token: 401 with WWW-Authenticate, and the handler never ran.
    let url = format!("{}/uploads", api.endpoint);
    let (status, head, body) = curl(
        "POST",
        &url,
        &["Content-Type: application/json"],
        Some(r#"{"filename":"x.txt","content":"x"}"#),
    );
    assert_eq!(status, 401, "{head}{body}");
    assert!(
        header_value(&head, "www-authenticate").is_some_and(|v| v.starts_with("bearer")),
        "{head}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["message"],
        "Unauthorized"
    );
    let logs = server.cli(&["logs", "--function", "upload-handler", "-n", "1000"]);
    assert!(
        !logs.contains("START RequestId"),
        "the handler ran without a token: {logs}"
    );

    // The seed's curl.
    let (status, head, body) = curl(
        "POST",
        &url,
        &[
            &format!("Authorization: Bearer {token}"),
            "Content-Type: application/json",
        ],
        Some(r#"{"filename":"demo.txt","content":"hello kinesis"}"#),
    );
    assert_eq!(status, 200, "{head}{body}");
    let reply: Value = serde_json::from_str(&body).expect("the handler's body");
    assert_eq!(reply["message"], "Uploaded and queued for processing");
    assert_eq!(
        reply["s3"],
        json!({"bucket": "sluice", "key": "uploads/demo.txt"})
    );
    let request_id = header_value(&head, "apigw-requestid").expect("apigw-requestid");

    let get = |key: &str| -> Option<String> {
        let out = dir.0.join("got.txt");
        let (ok, _, _) = cli.run(&[
            "s3api",
            "get-object",
            "--bucket",
            "sluice",
            "--key",
            key,
            &out.display().to_string(),
        ]);
        ok.then(|| std::fs::read_to_string(&out).expect("read object"))
    };
    assert_eq!(get("uploads/demo.txt").as_deref(), Some("hello kinesis"));
    assert_eq!(
        wait_for("processed/demo.txt", DEADLINE, || get("processed/demo.txt")),
        "HELLO KINESIS"
    );

    // The stream record: the token's sub, the request's id.
    let sub = {
        let payload = token.split('.').nth(1).expect("payload");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("b64");
        serde_json::from_slice::<Value>(&raw).expect("claims")["sub"]
            .as_str()
            .expect("sub")
            .to_owned()
    };
    let shards = cli.json(&["kinesis", "list-shards", "--stream-name", "uploads-stream"]);
    let mut record = None;
    for s in shards["Shards"].as_array().expect("shards") {
        let it = cli.json(&[
            "kinesis",
            "get-shard-iterator",
            "--stream-name",
            "uploads-stream",
            "--shard-id",
            s["ShardId"].as_str().expect("id"),
            "--shard-iterator-type",
            "TRIM_HORIZON",
        ]);
        let recs = cli.json(&[
            "kinesis",
            "get-records",
            "--shard-iterator",
            it["ShardIterator"].as_str().expect("it"),
        ]);
        for r in recs["Records"].as_array().expect("records") {
            let data = base64::engine::general_purpose::STANDARD
                .decode(r["Data"].as_str().expect("data"))
                .expect("b64");
            let v: Value = serde_json::from_slice(&data).expect("json");
            if v["key"] == "uploads/demo.txt" {
                assert!(record.is_none(), "one record for the upload");
                record = Some(v);
            }
        }
    }
    let record = record.expect("the handler's record");
    assert_eq!(record["userSub"], sub.as_str());
    assert_eq!(record["requestId"], request_id.as_str());

    // The API as the CLI lists it.
    let routes = api.run("get-routes", &[]);
    assert_eq!(routes["Items"][0]["RouteKey"], "POST /uploads");
    let got = cli.json(&["apigatewayv2", "get-api", "--api-id", &api.id]);
    assert_eq!(got["ApiEndpoint"], api.endpoint.as_str());
}

const PY_API_FN: &str = r#"
import json

def handler(event, context):
    return {
        "statusCode": 201,
        "headers": {"x-format": event["version"]},
        "body": json.dumps({
            "method": event["httpMethod"],
            "path": event["path"],
            "resource": event["resource"],
            "proxy": (event["pathParameters"] or {}).get("proxy"),
            "x": (event["queryStringParameters"] or {}).get("x"),
            "stage": event["requestContext"]["stage"],
            "body": event["body"],
        }),
    }
"#;

const NODE_API_FN: &str = r#"
export const handler = async (event) => {
  const path = event.rawPath;
  if (path.endsWith("/throw")) throw new Error("boom");
  if (path.endsWith("/sleep")) await new Promise((r) => setTimeout(r, 30000));
  if (path.endsWith("/bare")) return "hello";
  return { route: event.routeKey, claims: event.requestContext.authorizer?.jwt?.claims ?? null, pid: process.pid };
};
"#;

/// Format 1.0 from Python on a named stage, format 2.0 failures as API Gateway answers
/// them (a throw 502, a timeout 503 with the worker replaced, a bare value 200), no route
/// 404, a missing scope 403; and bad definitions refused with nothing half-made.
#[test]
fn http_apis_answer_as_api_gateway_does() {
    let (dir, server) = start("api-rules", "");
    let cli = Cli {
        server: &server,
        key: server.new_key(),
    };
    make_role(&cli, "sluice-test", &[]);
    let info = server.info();
    server.create_user("rules@example.com");
    let token = server.id_token("rules@example.com");
    let py = zip_file(&dir.0, "py.zip", &[("app.py", PY_API_FN.as_bytes())]);
    cli.create("py-api", "python3.11", "app.handler", &py, &[]);
    // The first invocation of a runtime on a fresh machine installs its SDK into the
    // runtime cache (a minute or more), longer than an integration's 30 s: done here, by
    // Lambda's API, which waits.
    let _ = cli.run(&[
        "lambda",
        "invoke",
        "--function-name",
        "py-api",
        "--payload",
        "{}",
        &dir.0.join("warm.json").display().to_string(),
    ]);
    let node = zip_file(&dir.0, "node.zip", &[("index.mjs", NODE_API_FN.as_bytes())]);
    cli.create(
        "node-api",
        "nodejs20.x",
        "index.handler",
        &node,
        &["--timeout", "1"],
    );
    let api = Api::create(&cli, "rules");
    let py_int = api.integration("py-api", "1.0");
    let node_int = api.integration("node-api", "2.0");
    api.route("ANY /py/{proxy+}", &py_int, &[]);
    for key in ["GET /throw", "GET /sleep", "GET /bare"] {
        api.route(key, &node_int, &[]);
    }
    let auth = api.run(
        "create-authorizer",
        &[
            "--authorizer-type",
            "JWT",
            "--name",
            "pool",
            "--identity-source",
            "$request.header.Authorization",
            "--jwt-configuration",
            &format!(
                "Audience={},Issuer={}",
                info["clientId"].as_str().expect("client"),
                info["issuer"].as_str().expect("issuer")
            ),
        ],
    );
    let auth_id = auth["AuthorizerId"].as_str().expect("id").to_owned();
    api.route(
        "GET /claims",
        &node_int,
        &["--authorization-type", "JWT", "--authorizer-id", &auth_id],
    );
    api.route(
        "GET /scoped",
        &node_int,
        &[
            "--authorization-type",
            "JWT",
            "--authorizer-id",
            &auth_id,
            "--authorization-scopes",
            "uploads/write",
        ],
    );
    api.run("create-stage", &["--stage-name", "prod"]);
    api.run("create-stage", &["--stage-name", "$default"]);

    // Format 1.0, a named stage, a greedy path variable, a query string.
    let (status, head, body) = curl(
        "PUT",
        &format!("{}/prod/py/a/b?x=1", api.endpoint),
        &["Content-Type: text/plain"],
        Some("raw text"),
    );
    assert_eq!(status, 201, "{head}{body}");
    assert_eq!(header_value(&head, "x-format").as_deref(), Some("1.0"));
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v,
        json!({
            "method": "PUT", "path": "/prod/py/a/b", "resource": "/py/{proxy+}", "proxy": "a/b",
            "x": "1", "stage": "prod", "body": "raw text",
        })
    );

    // Format 2.0: a throw, a timeout (the worker replaced), a bare value.
    let (status, _, body) = curl("GET", &format!("{}/throw", api.endpoint), &[], None);
    assert_eq!(
        (status, body.as_str()),
        (502, r#"{"message":"Internal Server Error"}"#)
    );
    let (status, _, body) = curl("GET", &format!("{}/sleep", api.endpoint), &[], None);
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"message":"Service Unavailable"}"#)
    );
    let (status, head, body) = curl("GET", &format!("{}/bare", api.endpoint), &[], None);
    assert_eq!((status, body.as_str()), (200, "hello"), "{head}");
    assert_eq!(
        header_value(&head, "content-type").as_deref(),
        Some("application/json")
    );

    // The authorizer's claims reach the function; a missing scope is 403; no route is 404.
    let (status, _, body) = curl(
        "GET",
        &format!("{}/claims", api.endpoint),
        &[&format!("Authorization: Bearer {token}")],
        None,
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["route"], "GET /claims");
    assert_eq!(v["claims"]["email"], "rules@example.com");
    assert_eq!(v["claims"]["token_use"], "id");
    let (status, _, _) = curl(
        "GET",
        &format!("{}/claims", api.endpoint),
        &["Authorization: Bearer not.a.token"],
        None,
    );
    assert_eq!(status, 401);
    let (status, _, _) = curl(
        "GET",
        &format!("{}/scoped", api.endpoint),
        &[&format!("Authorization: Bearer {token}")],
        None,
    );
    assert_eq!(status, 403);
    let (status, _, body) = curl("GET", &format!("{}/nowhere", api.endpoint), &[], None);
    assert_eq!((status, body.as_str()), (404, r#"{"message":"Not Found"}"#));

    // Bad definitions: API Gateway's errors, nothing created.
    let routes_before = api.run("get-routes", &[])["Items"]
        .as_array()
        .map_or(0, Vec::len);
    let err = cli.fails(&[
        "apigatewayv2",
        "create-route",
        "--api-id",
        &api.id,
        "--route-key",
        "FETCH uploads",
    ]);
    assert!(err.contains("BadRequestException"), "{err}");
    let err = cli.fails(&[
        "apigatewayv2",
        "create-integration",
        "--api-id",
        &api.id,
        "--integration-type",
        "AWS_PROXY",
        "--integration-uri",
        "arn:aws:lambda:us-east-2:000000000000:function:missing",
        "--payload-format-version",
        "2.0",
    ]);
    assert!(err.contains("NotFoundException"), "{err}");
    let err = cli.fails(&[
        "apigatewayv2",
        "create-authorizer",
        "--api-id",
        &api.id,
        "--authorizer-type",
        "JWT",
        "--name",
        "foreign",
        "--identity-source",
        "$request.header.Authorization",
        "--jwt-configuration",
        "Audience=x,Issuer=https://cognito-idp.us-east-1.amazonaws.com/us-east-1_abc",
    ]);
    assert!(err.contains("BadRequestException"), "{err}");
    let err = cli.fails(&[
        "apigatewayv2",
        "create-route",
        "--api-id",
        &api.id,
        "--route-key",
        "GET /x",
        "--target",
        "integrations/nope",
    ]);
    assert!(err.contains("NotFoundException"), "{err}");
    assert_eq!(
        api.run("get-routes", &[])["Items"]
            .as_array()
            .map_or(0, Vec::len),
        routes_before
    );
    let err = cli.fails(&["apigatewayv2", "get-api", "--api-id", "nosuchapi"]);
    assert!(err.contains("NotFoundException"), "{err}");

    cli.json(&["apigatewayv2", "delete-api", "--api-id", &api.id]);
    let (status, _, _) = curl("GET", &format!("{}/bare", api.endpoint), &[], None);
    assert_eq!(status, 404);
}

// --- S3 event notifications ------------------------------------------------------------

const NOTIFY_FN: &str = r#"
export const handler = async (event) => {
  for (const r of event.Records) {
    console.log("event", r.eventSource, r.eventName, r.s3.bucket.name, decodeURIComponent(r.s3.object.key.replace(/\+/g, " ")), r.s3.configurationId);
  }
};
"#;

/// Bucket notifications to a function: every way an object is created (PutObject, a
/// multipart upload, a copy, `POST /uploads`) and deletions, filtered by prefix, each
/// delivered as S3's event; other destinations and missing functions refused.
#[test]
fn bucket_notifications_invoke_functions() {
    let (dir, server) = start("fn-notify", "");
    let cli = Cli {
        server: &server,
        key: server.new_key(),
    };
    make_role(&cli, "sluice-test", &[]);
    let zip = zip_file(&dir.0, "notify.zip", &[("index.mjs", NOTIFY_FN.as_bytes())]);
    cli.create("notify", "nodejs20.x", "index.handler", &zip, &[]);
    let arn = "arn:aws:lambda:us-east-2:000000000000:function:notify";
    let config = json!({"LambdaFunctionConfigurations": [
        {"Id": "created-in", "LambdaFunctionArn": arn, "Events": ["s3:ObjectCreated:*"],
         "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "in/"}]}}},
        {"Id": "created-uploads", "LambdaFunctionArn": arn, "Events": ["s3:ObjectCreated:*"],
         "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "uploads/"}]}}},
        {"Id": "removed", "LambdaFunctionArn": arn, "Events": ["s3:ObjectRemoved:*"]},
    ]});
    cli.json(&[
        "s3api",
        "put-bucket-notification-configuration",
        "--bucket",
        "sluice",
        "--notification-configuration",
        &config.to_string(),
    ]);
    let got = cli.json(&[
        "s3api",
        "get-bucket-notification-configuration",
        "--bucket",
        "sluice",
    ]);
    let ids: Vec<&str> = got["LambdaFunctionConfigurations"]
        .as_array()
        .expect("configurations")
        .iter()
        .filter_map(|c| c["Id"].as_str())
        .collect();
    assert_eq!(ids, ["created-in", "created-uploads", "removed"]);

    let small = dir.0.join("small.txt");
    std::fs::write(&small, "hi").expect("write");
    let big = dir.0.join("big.bin");
    std::fs::write(&big, vec![7u8; 9 * 1024 * 1024]).expect("write");
    let put = |key: &str, file: &Path| {
        cli.json(&[
            "s3api",
            "put-object",
            "--bucket",
            "sluice",
            "--key",
            key,
            "--body",
            &file.display().to_string(),
        ]);
    };
    put("in/a b.txt", &small);
    put("elsewhere/x.txt", &small);
    // `aws s3 cp` uploads a 9 MB file in parts.
    let (ok, _, err) = cli.run(&[
        "s3",
        "cp",
        &big.display().to_string(),
        "s3://sluice/in/big.bin",
    ]);
    assert!(ok, "{err}");
    cli.json(&[
        "s3api",
        "copy-object",
        "--bucket",
        "sluice",
        "--key",
        "in/copy.txt",
        "--copy-source",
        "sluice/in/a b.txt",
    ]);
    server.create_user("notify@example.com");
    let token = server.id_token("notify@example.com");
    let resp = server.upload(&token, "note.txt", "from the API");
    assert_eq!(resp.status(), 200);
    cli.json(&[
        "s3api",
        "delete-object",
        "--bucket",
        "sluice",
        "--key",
        "in/a b.txt",
    ]);

    let expected = [
        "event aws:s3 ObjectCreated:Put sluice in/a b.txt created-in",
        "event aws:s3 ObjectCreated:CompleteMultipartUpload sluice in/big.bin created-in",
        "event aws:s3 ObjectCreated:Copy sluice in/copy.txt created-in",
        "event aws:s3 ObjectCreated:Put sluice uploads/note.txt created-uploads",
        "event aws:s3 ObjectRemoved:Delete sluice in/a b.txt removed",
    ];
    let logs = wait_for("every notification", DEADLINE, || {
        let logs = server.cli(&["logs", "--function", "notify", "-n", "10000"]);
        expected.iter().all(|e| logs.contains(e)).then_some(logs)
    });
    assert!(
        !logs.contains("elsewhere/x.txt"),
        "a key outside every filter was sent: {logs}"
    );
    for e in expected {
        assert_eq!(logs.matches(e).count(), 1, "{e} once: {logs}");
    }

    // Destinations sluice does not have, and functions that do not exist, are refused.
    let err = cli.fails(&[
        "s3api", "put-bucket-notification-configuration", "--bucket", "sluice",
        "--notification-configuration",
        r#"{"QueueConfigurations":[{"QueueArn":"arn:aws:sqs:us-east-2:000000000000:q","Events":["s3:ObjectCreated:*"]}]}"#,
    ]);
    assert!(err.contains("InvalidArgument"), "{err}");
    let err = cli.fails(&[
        "s3api", "put-bucket-notification-configuration", "--bucket", "sluice",
        "--notification-configuration",
        &json!({"LambdaFunctionConfigurations": [{"LambdaFunctionArn": "arn:aws:lambda:us-east-2:000000000000:function:missing", "Events": ["s3:ObjectCreated:*"]}]}).to_string(),
    ]);
    assert!(err.contains("InvalidArgument"), "{err}");
    // The configuration in place is unchanged by the refusals; an empty one removes it.
    let got = cli.json(&[
        "s3api",
        "get-bucket-notification-configuration",
        "--bucket",
        "sluice",
    ]);
    assert_eq!(
        got["LambdaFunctionConfigurations"].as_array().map(Vec::len),
        Some(3)
    );
    cli.json(&[
        "s3api",
        "put-bucket-notification-configuration",
        "--bucket",
        "sluice",
        "--notification-configuration",
        "{}",
    ]);
    let got = cli.json(&[
        "s3api",
        "get-bucket-notification-configuration",
        "--bucket",
        "sluice",
    ]);
    assert!(got.get("LambdaFunctionConfigurations").is_none(), "{got}");
}
