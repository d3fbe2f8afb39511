//! The Kinesis endpoint on the edge, driven by the aws CLI (SigV4-signed JSON 1.1).

mod common;

use base64::Engine as _;
use common::{DataDir, Server, aws_as};
use serde_json::Value;

/// The aws CLI against a server's edge, signing with an access key made for the test.
struct EdgeCli {
    endpoint: String,
    id: String,
    secret: String,
}

impl EdgeCli {
    fn new(server: &Server) -> Self {
        let v: Value =
            serde_json::from_str(&server.cli(&["keys", "create", "--description", "test"]))
                .expect("keys create prints JSON");
        EdgeCli {
            endpoint: server.edge.clone(),
            id: v["accessKeyId"].as_str().expect("id").to_owned(),
            secret: v["secretAccessKey"].as_str().expect("secret").to_owned(),
        }
    }

    /// Runs `aws --endpoint-url <edge> <args>`: (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut all = vec!["--endpoint-url", self.endpoint.as_str()];
        all.extend_from_slice(args);
        aws_as((&self.id, &self.secret), &all)
    }
}

#[test]
fn aws_cli_round_trip_and_errors() {
    let dir = DataDir::new("kinesis");
    let server = Server::start(&dir.0);
    let cli = EdgeCli::new(&server);
    let run = |args: &[&str]| cli.run(args);

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
        (cli.id.as_str(), "not-the-secret"),
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

    // Resharding, retention, tags, record size.
    let (ok, out, err) = run(&["kinesis", "list-shards", "--stream-name", "cli"]);
    assert!(ok, "{err}");
    let shards: Value = serde_json::from_str(&out).expect("json");
    let first = shards["Shards"][0].clone();
    let start: u128 = first["HashKeyRange"]["StartingHashKey"]
        .as_str()
        .expect("start")
        .parse()
        .expect("u128");
    let end: u128 = first["HashKeyRange"]["EndingHashKey"]
        .as_str()
        .expect("end")
        .parse()
        .expect("u128");
    let mid = (start + (end - start) / 2).to_string();
    let first_id = first["ShardId"].as_str().expect("id").to_owned();
    let (ok, _, err) = run(&[
        "kinesis",
        "split-shard",
        "--stream-name",
        "cli",
        "--shard-to-split",
        &first_id,
        "--new-starting-hash-key",
        &mid,
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&[
        "kinesis",
        "list-shards",
        "--stream-name",
        "cli",
        "--shard-filter",
        "Type=AT_LATEST",
    ]);
    assert!(ok, "{err}");
    let open: Value = serde_json::from_str(&out).expect("json");
    let open = open["Shards"].as_array().expect("shards").clone();
    assert_eq!(open.len(), 4, "the parent closed, two children opened");
    let children: Vec<&Value> = open
        .iter()
        .filter(|s| s["ParentShardId"] == first_id.as_str())
        .collect();
    assert_eq!(children.len(), 2);
    let (a, b) = (
        children[0]["ShardId"].as_str().expect("id"),
        children[1]["ShardId"].as_str().expect("id"),
    );
    let (ok, _, err) = run(&[
        "kinesis",
        "merge-shards",
        "--stream-name",
        "cli",
        "--shard-to-merge",
        a,
        "--adjacent-shard-to-merge",
        b,
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&["kinesis", "describe-stream-summary", "--stream-name", "cli"]);
    assert!(ok, "{err}");
    let summary: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(summary["StreamDescriptionSummary"]["OpenShardCount"], 3);
    let (ok, _, err) = run(&[
        "kinesis",
        "increase-stream-retention-period",
        "--stream-name",
        "cli",
        "--retention-period-hours",
        "48",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&[
        "kinesis",
        "decrease-stream-retention-period",
        "--stream-name",
        "cli",
        "--retention-period-hours",
        "12",
    ]);
    assert!(
        !ok && err.contains("InvalidArgumentException"),
        "below 24 h: {err}"
    );
    let (ok, _, err) = run(&[
        "kinesis",
        "add-tags-to-stream",
        "--stream-name",
        "cli",
        "--tags",
        "team=data,env=test",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&["kinesis", "list-tags-for-stream", "--stream-name", "cli"]);
    assert!(ok, "{err}");
    let tags: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(tags["Tags"].as_array().map(Vec::len), Some(2));
    let (ok, _, err) = run(&[
        "kinesis",
        "remove-tags-from-stream",
        "--stream-name",
        "cli",
        "--tag-keys",
        "env",
    ]);
    assert!(ok, "{err}");

    let (ok, _, err) = run(&["kinesis", "delete-stream", "--stream-name", "cli"]);
    assert!(ok, "{err}");
    server.stop();
}

/// Puts 500 records of 3 KiB (1.5 MiB, more than a shard's 1 MiB/s budget holds, whatever
/// the clock does) into a new one-shard stream `t` with the aws CLI: the per-record error
/// codes of those refused.
fn put_over_a_shards_budget(server: &Server, dir: &DataDir) -> Vec<String> {
    let cli = EdgeCli::new(server);
    let run = |args: &[&str]| cli.run(args);
    let (ok, _, err) = run(&[
        "kinesis",
        "create-stream",
        "--stream-name",
        "t",
        "--shard-count",
        "1",
    ]);
    assert!(ok, "{err}");
    let data = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 3 * 1024]);
    let records: Vec<Value> = (0..500)
        .map(|i| serde_json::json!({"Data": data, "PartitionKey": format!("k{i}")}))
        .collect();
    let input = dir.0.join("put-records.json");
    std::fs::write(
        &input,
        serde_json::json!({"StreamName": "t", "Records": records}).to_string(),
    )
    .expect("write input");
    let (ok, out, err) = run(&[
        "kinesis",
        "put-records",
        "--cli-input-json",
        &format!("file://{}", input.display()),
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let codes: Vec<String> = v["Records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["ErrorCode"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(v["FailedRecordCount"].as_u64(), Some(codes.len() as u64));
    codes
}

/// Kinesis' per-shard limits hold by default, as on AWS: some records of a request over a
/// shard's budget go in, the rest are refused per record; `SLUICE_STREAM_THROTTLE=false`
/// (for bulk loads) takes them all.
#[test]
fn throttling_is_on_by_default_and_off_when_asked() {
    let dir = DataDir::new("kinesis-throttle");
    let server = Server::start(&dir.0);
    let codes = put_over_a_shards_budget(&server, &dir);
    assert!(
        !codes.is_empty() && codes.len() < 500,
        "{} of 500 refused",
        codes.len()
    );
    assert!(
        codes
            .iter()
            .all(|c| c == "ProvisionedThroughputExceededException"),
        "{codes:?}"
    );
    server.stop();

    let dir = DataDir::new("kinesis-no-throttle");
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_STREAM_THROTTLE", "false")],
    );
    assert_eq!(
        put_over_a_shards_budget(&server, &dir),
        Vec::<String>::new()
    );
    server.stop();
}

/// Tags on streams and consumers through TagResource / UntagResource / ListTagsForResource,
/// and RegisterStreamConsumer's `--tags`, with the aws CLI.
#[test]
fn resource_tags_for_streams_and_consumers() {
    let dir = DataDir::new("kinesis-tags");
    let server = Server::start(&dir.0);
    let cli = EdgeCli::new(&server);
    let run = |args: &[&str]| cli.run(args);
    let tags_of = |arn: &str| -> Vec<(String, String)> {
        let (ok, out, err) = run(&["kinesis", "list-tags-for-resource", "--resource-arn", arn]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).expect("json");
        v["Tags"]
            .as_array()
            .expect("Tags")
            .iter()
            .map(|t| {
                (
                    t["Key"].as_str().expect("key").to_owned(),
                    t["Value"].as_str().expect("value").to_owned(),
                )
            })
            .collect()
    };
    let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    let (ok, _, err) = run(&[
        "kinesis",
        "create-stream",
        "--stream-name",
        "tagged",
        "--shard-count",
        "1",
    ]);
    assert!(ok, "{err}");
    let stream_arn = "arn:aws:kinesis:us-east-2:000000000000:stream/tagged";
    let (ok, _, err) = run(&[
        "kinesis",
        "tag-resource",
        "--resource-arn",
        stream_arn,
        "--tags",
        "team=a,env=dev",
    ]);
    assert!(ok, "{err}");
    assert_eq!(tags_of(stream_arn), pairs(&[("env", "dev"), ("team", "a")]));
    // The same tags as the stream-specific call sees them.
    let (ok, out, err) = run(&["kinesis", "list-tags-for-stream", "--stream-name", "tagged"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"team\""), "{out}");

    let (ok, out, err) = run(&[
        "kinesis",
        "register-stream-consumer",
        "--stream-arn",
        stream_arn,
        "--consumer-name",
        "app",
        "--tags",
        "owner=me",
    ]);
    assert!(ok, "{err}");
    let consumer: Value = serde_json::from_str(&out).expect("json");
    let consumer_arn = consumer["Consumer"]["ConsumerARN"]
        .as_str()
        .expect("ConsumerARN")
        .to_owned();
    assert_eq!(tags_of(&consumer_arn), pairs(&[("owner", "me")]));
    let (ok, _, err) = run(&[
        "kinesis",
        "tag-resource",
        "--resource-arn",
        &consumer_arn,
        "--tags",
        "cost=7",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&[
        "kinesis",
        "untag-resource",
        "--resource-arn",
        &consumer_arn,
        "--tag-keys",
        "owner",
    ]);
    assert!(ok, "{err}");
    assert_eq!(tags_of(&consumer_arn), pairs(&[("cost", "7")]));
    // The stream's tags are its own.
    assert_eq!(tags_of(stream_arn), pairs(&[("env", "dev"), ("team", "a")]));

    // Errors in Kinesis' shapes.
    let (ok, _, err) = run(&[
        "kinesis",
        "list-tags-for-resource",
        "--resource-arn",
        "arn:aws:kinesis:us-east-2:000000000000:stream/tagged/consumer/nobody:1",
    ]);
    assert!(!ok && err.contains("ResourceNotFoundException"), "{err}");
    let (ok, _, err) = run(&[
        "kinesis",
        "list-tags-for-resource",
        "--resource-arn",
        "not-an-arn",
    ]);
    assert!(!ok && err.contains("ValidationException"), "{err}");
    server.stop();
}
