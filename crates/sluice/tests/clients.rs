//! Real AWS clients against the real binary: the boto3 suite (`tests/clients/py`, pytest)
//! and the AWS SDK for JavaScript v3 suite (`tests/clients/js`, `node --test`, including
//! the seed's two Lambda handlers). Each test starts its own server, creates an access key
//! and a user of the default pool, and runs one suite against it with the server's URLs
//! and credentials in the environment.
//!
//! The clients are installed by `scripts/test`; when they are missing these tests fail and
//! say so (they never skip).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{DataDir, PASSWORD, Server};
use serde_json::Value;

/// The longest a whole suite may take before it is considered hung (a hang guard, not a
/// performance threshold: the suites take seconds).
const SUITE_DEADLINE: Duration = Duration::from_secs(900);

const USER_EMAIL: &str = "clients@example.com";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME (or SLUICE_CACHE_DIR) must be set");
    PathBuf::from(home).join(".cache/sluice")
}

/// The virtualenv's python, checked to import the suite's packages.
fn python() -> PathBuf {
    let venv = cache_dir().join("py-clients");
    let py = venv.join("bin/python");
    let ready = Command::new(&py)
        .args(["-c", "import boto3, botocore, pytest"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ready,
        "the boto3/pytest virtualenv is missing or incomplete at {}: run scripts/test \
         (it creates it with `pip install -r tests/clients/py/requirements.txt`)",
        venv.display()
    );
    py
}

/// `node`, checked to be there, with the suite's packages installed.
fn node() -> PathBuf {
    let node = PathBuf::from(std::env::var_os("SLUICE_NODE").unwrap_or_else(|| "node".into()));
    let version = Command::new(&node)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let Some(version) = version else {
        panic!(
            "node (20 or later) is needed for the JavaScript client suite: install Node.js, \
             then run scripts/test (or set SLUICE_NODE)"
        );
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "node {version} is too old: 20 or later is needed"
    );
    let modules = repo_root().join("tests/clients/js/node_modules");
    for pkg in [
        "@aws-sdk/client-kinesis",
        "@aws-sdk/client-s3",
        "@aws-sdk/client-cognito-identity-provider",
        "openid-client",
    ] {
        assert!(
            modules.join(pkg).join("package.json").is_file(),
            "{pkg} is not installed in {}: run scripts/test (it runs `npm ci --prefix tests/clients/js`)",
            modules.display()
        );
    }
    node
}

/// A server with an access key and a confirmed user, and the environment the suites read.
struct Target {
    server: Server,
    env: Vec<(&'static str, String)>,
}

fn target(dir: &DataDir) -> Target {
    // Lifecycle rules are applied every second, so that the suites see them act.
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_LIFECYCLE_INTERVAL_SECS", "1")],
    );
    let key: Value =
        serde_json::from_str(&server.cli(&["keys", "create", "--description", "client suites"]))
            .expect("keys create prints JSON");
    server.create_user(USER_EMAIL);
    let info = server.info();
    let field = |v: &Value, k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {v}"))
            .to_owned()
    };
    let env = vec![
        ("SLUICE_TEST_EDGE_URL", server.edge.clone()),
        ("SLUICE_TEST_API_URL", server.api.clone()),
        ("SLUICE_TEST_POOL_ID", field(&info, "poolId")),
        ("SLUICE_TEST_CLIENT_ID", field(&info, "clientId")),
        ("SLUICE_TEST_BUCKET", field(&info, "bucket")),
        ("SLUICE_TEST_STREAM", field(&info, "stream")),
        ("SLUICE_TEST_USER_EMAIL", USER_EMAIL.to_owned()),
        ("SLUICE_TEST_USER_PASSWORD", PASSWORD.to_owned()),
        ("AWS_ACCESS_KEY_ID", field(&key, "accessKeyId")),
        ("AWS_SECRET_ACCESS_KEY", field(&key, "secretAccessKey")),
        ("AWS_REGION", field(&info, "region")),
        ("AWS_DEFAULT_REGION", field(&info, "region")),
        ("AWS_ENDPOINT_URL", server.edge.clone()),
    ];
    Target { server, env }
}

/// Runs a suite to completion with its output in files of the data directory; returns
/// (success, stdout + stderr).
fn run_suite(mut cmd: Command, target: &Target, dir: &DataDir, name: &str) -> (bool, String) {
    let out_path = dir.0.join(format!("{name}.out"));
    let err_path = dir.0.join(format!("{name}.err"));
    let out = std::fs::File::create(&out_path).expect("suite stdout file");
    let err = std::fs::File::create(&err_path).expect("suite stderr file");
    // A clean AWS environment: nothing from the user's profile or config files.
    let home = dir.0.join("home");
    std::fs::create_dir_all(&home).expect("home dir");
    for var in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_CA_BUNDLE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(target.env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("AWS_CONFIG_FILE", home.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {name} suite: {e}"));
    let deadline = Instant::now() + SUITE_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the suite") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    match status {
        Some(s) => (s.success(), output),
        None => (
            false,
            format!("the {name} suite hung and was killed\n{output}"),
        ),
    }
}

fn server_log(dir: &DataDir) -> String {
    std::fs::read_to_string(dir.0.join("server.log")).unwrap_or_default()
}

#[test]
fn boto3_suite() {
    let py = python();
    let dir = DataDir::new("clients-py");
    let target = target(&dir);
    let mut cmd = Command::new(py);
    // pytest's temporary files go into the data directory, removed with it.
    cmd.args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE"])
        .arg(format!("--basetemp={}", dir.0.join("pytest-tmp").display()))
        .arg("tests/clients/py")
        .current_dir(repo_root());
    // While working on one test: `SLUICE_TEST_PYTEST_K=bucket_policy cargo test … boto3_suite`.
    if let Ok(k) = std::env::var("SLUICE_TEST_PYTEST_K") {
        cmd.args(["-k", &k]);
    }
    let (ok, output) = run_suite(cmd, &target, &dir, "pytest");
    for line in output
        .lines()
        .filter(|l| l.contains(" passed") || l.contains(" failed"))
    {
        eprintln!("pytest: {line}");
    }
    assert!(
        ok,
        "the boto3 suite failed:\n{output}\n--- server log ---\n{}",
        server_log(&dir)
    );
    assert!(output.contains(" passed"), "pytest ran no test:\n{output}");
    target.server.stop();
}

#[test]
fn aws_sdk_js_v3_suite() {
    let node = node();
    let dir = DataDir::new("clients-js");
    let target = target(&dir);
    let mut cmd = Command::new(node);
    cmd.args(["--test", "--test-reporter=spec"])
        .current_dir(repo_root().join("tests/clients/js"));
    // While working on one file: `SLUICE_TEST_JS_FILE=cognito-oauth.test.mjs cargo test …`.
    if let Ok(f) = std::env::var("SLUICE_TEST_JS_FILE") {
        cmd.arg(f);
    }
    let (ok, output) = run_suite(cmd, &target, &dir, "node");
    assert!(
        ok,
        "the JavaScript suite failed:\n{output}\n--- server log ---\n{}",
        server_log(&dir)
    );
    let passed = output.lines().find_map(|l| {
        l.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
            .strip_prefix("pass ")
            .and_then(|n| n.trim().parse::<u32>().ok())
    });
    assert!(
        passed.is_some_and(|n| n > 0),
        "node --test ran no test:\n{output}"
    );
    eprintln!("node --test: {} passed", passed.unwrap_or(0));
    target.server.stop();
}

/// The seed's processor handler, unchanged (`tests/clients/js/seed/processor.mjs`, written
/// for Lambda with `@aws-sdk/client-s3`), run by sluice as a `lambda:nodejs` mapping created
/// with the spelling, in place of the built-in mapping: an upload through the API
/// ends up upper-cased in the handler's bucket, and the upload's status follows.
#[test]
fn seed_processor_runs_as_a_lambda_mapping() {
    // Node.js and the handler's @aws-sdk packages (tests/clients/js/node_modules).
    node();
    let dir = DataDir::new("seed-lambda");
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_BUILTIN_MAPPING", "false")],
    );
    let key: Value = serde_json::from_str(&server.cli(&["keys", "create"])).expect("key json");
    let k = (
        key["accessKeyId"].as_str().expect("id"),
        key["secretAccessKey"].as_str().expect("secret"),
    );
    let processed = "seed-processed";
    let (ok, _, err) = common::aws_as(
        k,
        &[
            "--endpoint-url",
            &server.edge,
            "s3",
            "mb",
            &format!("s3://{processed}"),
        ],
    );
    assert!(ok, "{err}");

    // The spelling, from the folder that holds the handler.
    let js = repo_root().join("tests/clients/js");
    let out = Command::new(common::bin())
        .args([
            "mapping",
            "create",
            "--name",
            "seed-processor",
            "--stream",
            "uploads-stream",
            "--function",
            "lambda:nodejs:./seed/processor.handler",
            "--env",
            &format!("PROCESSED_BUCKET={processed}"),
            "--batch-size",
            "10",
            "--starting-position",
            "LATEST",
        ])
        .arg("--data-dir")
        .arg(&dir.0)
        // The server's metadata engine (the run's sluice.toml is in the data directory).
        .env("SLUICE_META", dir.meta_url())
        .current_dir(&js)
        .output()
        .expect("sluice mapping create");
    assert!(
        out.status.success(),
        "mapping create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    server.create_user(USER_EMAIL);
    let token = server.id_token(USER_EMAIL);
    // The mapping starts within moments of its creation; LATEST counts from its creation,
    // so this upload is its to process even if the server has not noticed it yet.
    let resp = server.upload(&token, "demo.txt", "hello kinesis");
    assert_eq!(resp.status(), 200);
    let id = resp.json::<Value>().expect("json")["uploadId"]
        .as_str()
        .expect("uploadId")
        .to_owned();
    let status = server.wait_final(&token, &id);
    assert_eq!(
        status["status"],
        "processed",
        "{status}\n{}",
        server_log(&dir)
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (ok, out, _) = common::aws_as(
            k,
            &[
                "--endpoint-url",
                &server.edge,
                "s3",
                "cp",
                &format!("s3://{processed}/processed/demo.txt"),
                "-",
            ],
        );
        if ok {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "the handler never wrote its output"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(body, "HELLO KINESIS");
    let logs = server.cli(&["logs", "seed-processor"]);
    assert!(logs.contains("START RequestId"), "{logs}");
    server.stop();
}

/// Least privilege for functions: a lambda mapping's function runs with a key of its own,
/// limited to what the mapping needs (read its stream, read `uploads/`, write under its
/// output prefix). A handler that tries more (tests/clients/js/least-privilege) gets
/// AccessDenied for reading, writing and deleting elsewhere and for writing to the stream,
/// and what it may not touch is untouched. Deleting the mapping deletes its key.
#[test]
fn a_function_may_do_only_what_its_mapping_needs() {
    node();
    let dir = DataDir::new("fn-least-privilege");
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_BUILTIN_MAPPING", "false")],
    );
    let admin = server.new_key();
    let k = (admin.0.as_str(), admin.1.as_str());
    let victim = dir.0.join("victim.txt");
    std::fs::write(&victim, "do not touch").expect("write");
    let (ok, _, err) = common::aws_as(
        k,
        &[
            "--endpoint-url",
            &server.edge,
            "s3",
            "cp",
            victim.to_str().expect("utf-8"),
            "s3://sluice/other/victim.txt",
        ],
    );
    assert!(ok, "{err}");

    let js = repo_root().join("tests/clients/js");
    let out = Command::new(common::bin())
        .args([
            "mapping",
            "create",
            "--name",
            "least-privilege",
            "--stream",
            "uploads-stream",
            "--function",
            "lambda:nodejs:./least-privilege/handler.handler",
            "--starting-position",
            "LATEST",
        ])
        .arg("--data-dir")
        .arg(&dir.0)
        .env("SLUICE_META", dir.meta_url())
        .current_dir(&js)
        .output()
        .expect("sluice mapping create");
    assert!(
        out.status.success(),
        "mapping create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    server.create_user(USER_EMAIL);
    let token = server.id_token(USER_EMAIL);
    let resp = server.upload(&token, "demo.txt", "hello");
    assert_eq!(resp.status(), 200);
    let id = resp.json::<Value>().expect("json")["uploadId"]
        .as_str()
        .expect("uploadId")
        .to_owned();
    let status = server.wait_final(&token, &id);
    assert_eq!(
        status["status"],
        "processed",
        "{status}\n{}",
        server_log(&dir)
    );
    let get = |key: &str| {
        common::aws_as(
            k,
            &[
                "--endpoint-url",
                &server.edge,
                "s3",
                "cp",
                &format!("s3://sluice/{key}"),
                "-",
            ],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let verdict: Value = loop {
        let (ok, out, _) = get("processed/demo.txt.verdict.json");
        if ok {
            break serde_json::from_str(&out).expect("verdict json");
        }
        assert!(
            Instant::now() < deadline,
            "the handler never wrote its verdict\n{}",
            server.cli(&["logs", "least-privilege"])
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(verdict["readOwnUpload"], "ok", "{verdict}");
    for denied in [
        "readElsewhere",
        "deleteElsewhere",
        "deleteOwnUpload",
        "writeElsewhere",
    ] {
        assert_eq!(verdict[denied], "AccessDenied", "{denied}: {verdict}");
    }
    assert_eq!(verdict["putRecord"], "AccessDeniedException", "{verdict}");
    assert_eq!(get("other/victim.txt").1, "do not touch");
    assert!(!get("other/planted.txt").0, "nothing planted");
    assert!(get("uploads/demo.txt").0, "the upload is still there");

    // The function's key is its own, scoped, and goes with the mapping.
    let keys = server.cli(&["keys", "list"]);
    let line = keys
        .lines()
        .find(|l| l.contains("function of mapping least-privilege"))
        .unwrap_or_else(|| panic!("no function key in {keys}"))
        .to_owned();
    assert!(line.contains("arn:aws:s3:::sluice/uploads/*"), "{line}");
    server.cli(&["mapping", "delete", "least-privilege"]);
    let keys = server.cli(&["keys", "list"]);
    assert!(
        !keys.contains("function of mapping least-privilege"),
        "{keys}"
    );
    server.stop();
}
