//! The Kinesis endpoint on the edge, driven by the aws CLI (SigV4-signed JSON 1.1).

mod common;

use base64::Engine as _;
use common::{DataDir, Server, aws_as};
use serde_json::Value;

fn key(server: &Server) -> (String, String) {
    let v: Value = serde_json::from_str(&server.cli(&["keys", "create", "--description", "test"]))
        .expect("keys create prints JSON");
    (
        v["accessKeyId"].as_str().expect("id").to_owned(),
        v["secretAccessKey"].as_str().expect("secret").to_owned(),
    )
}

#[test]
fn aws_cli_round_trip_and_errors() {
    let dir = DataDir::new("kinesis");
    let server = Server::start(&dir.0);
    let (id, secret) = key(&server);
    let k = (id.as_str(), secret.as_str());
    let e = ["--endpoint-url", server.edge.as_str()];
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = e.to_vec();
        all.extend_from_slice(args);
        aws_as(k, &all)
    };

    let (ok, _, err) = run(&[
        "kinesis",
        "create-stream",
        "--stream-name",
        "cli",
        "--shard-count",
        "3",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&["kinesis", "describe-stream", "--stream-name", "cli"]);
    assert!(ok, "{err}");
    let d: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        d["StreamDescription"]["Shards"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(
        d["StreamDescription"]["StreamARN"],
        "arn:aws:kinesis:us-east-2:000000000000:stream/cli"
    );

    // Put, then read back from the shard the record went to. The aws CLI v1 sends --data
    // as text, base64-encoded on the wire.
    let (ok, out, err) = run(&[
        "kinesis",
        "put-record",
        "--stream-name",
        "cli",
        "--partition-key",
        "pk-1",
        "--data",
        "hello",
    ]);
    assert!(ok, "{err}");
    let put: Value = serde_json::from_str(&out).expect("json");
    let shard = put["ShardId"].as_str().expect("shard");
    let seq = put["SequenceNumber"].as_str().expect("seq");
    let (ok, out, err) = run(&[
        "kinesis",
        "get-shard-iterator",
        "--stream-name",
        "cli",
        "--shard-id",
        shard,
        "--shard-iterator-type",
        "AT_SEQUENCE_NUMBER",
        "--starting-sequence-number",
        seq,
    ]);
    assert!(ok, "{err}");
    let it: Value = serde_json::from_str(&out).expect("json");
    let (ok, out, err) = run(&[
        "kinesis",
        "get-records",
        "--shard-iterator",
        it["ShardIterator"].as_str().expect("it"),
    ]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).expect("json");
    let rec = &got["Records"][0];
    assert_eq!(rec["SequenceNumber"], seq);
    assert_eq!(rec["PartitionKey"], "pk-1");
    let data = base64::engine::general_purpose::STANDARD
        .decode(rec["Data"].as_str().expect("data"))
        .expect("b64");
    assert_eq!(data, b"hello");
    assert!(got["NextShardIterator"].is_string());

    // PutRecords: every record gets a result.
    let (ok, out, err) = run(&[
        "kinesis",
        "put-records",
        "--stream-name",
        "cli",
        "--records",
        "Data=YQ==,PartitionKey=a",
        "Data=Yg==,PartitionKey=b",
        "Data=Yw==,PartitionKey=c",
    ]);
    assert!(ok, "{err}");
    let many: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(many["FailedRecordCount"], 0);
    assert_eq!(many["Records"].as_array().map(Vec::len), Some(3));

    // Errors in Kinesis' shape, as the CLI reports them.
    let (ok, _, err) = run(&["kinesis", "describe-stream", "--stream-name", "missing"]);
    assert!(!ok && err.contains("ResourceNotFoundException"), "{err}");
    let (ok, _, err) = run(&[
        "kinesis",
        "create-stream",
        "--stream-name",
        "cli",
        "--shard-count",
        "1",
    ]);
    assert!(!ok && err.contains("ResourceInUseException"), "{err}");
    let (ok, _, err) = run(&[
        "kinesis",
        "get-records",
        "--shard-iterator",
        "forged.iterator",
    ]);
    assert!(!ok && err.contains("InvalidArgumentException"), "{err}");

    // Signatures are checked.
    let (ok, _, err) = aws_as(
        (id.as_str(), "not-the-secret"),
        &["--endpoint-url", &server.edge, "kinesis", "list-streams"],
    );
    assert!(!ok && err.contains("InvalidSignatureException"), "{err}");
    let (ok, _, err) = aws_as(
        ("AKIAUNKNOWNUNKNOWN00", "x"),
        &["--endpoint-url", &server.edge, "kinesis", "list-streams"],
    );
    assert!(!ok && err.contains("UnrecognizedClientException"), "{err}");
    let resp = server
        .http
        .post(format!("{}/", server.edge))
        .header("X-Amz-Target", "Kinesis_20131202.ListStreams")
        .header("Content-Type", "application/x-amz-json-1.1")
        .body("{}")
        .send()
        .expect("send");
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().expect("json")["__type"],
        "MissingAuthenticationTokenException"
    );

    let (ok, _, err) = run(&["kinesis", "delete-stream", "--stream-name", "cli"]);
    assert!(ok, "{err}");
    server.stop();
}
