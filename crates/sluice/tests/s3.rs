//! The S3 endpoint on the edge, driven by the aws CLI (s3 and s3api commands).

mod common;

use std::time::Duration;

use common::{DataDir, Server, aws_as, wait_for};
use serde_json::Value;

struct Cli<'a> {
    edge: &'a str,
    key: (String, String),
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut all = vec!["--endpoint-url", self.edge];
        all.extend_from_slice(args);
        aws_as((self.key.0.as_str(), self.key.1.as_str()), &all)
    }

    /// Waits until the processor wrote `processed/<name>`, then downloads it to `out`.
    fn download_when_processed(&self, name: &str, out: &std::path::Path, within: Duration) {
        let src = format!("s3://sluice/processed/{name}");
        let dst = out.to_str().expect("path");
        wait_for(&format!("{src} (never processed)"), within, || {
            let (ok, _, _) = self.run(&["s3", "cp", "--only-show-errors", &src, dst]);
            ok.then_some(())
        });
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "aws {args:?} failed: {err}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("aws output is JSON")
    }
}

#[test]
fn aws_cli_s3_session() {
    let dir = DataDir::new("s3");
    let server = Server::start(&dir.0);
    let cli = Cli {
        edge: &server.edge,
        key: server.new_key(),
    };
    let work = dir.0.join("files");
    std::fs::create_dir_all(&work).expect("mkdir");
    let small = work.join("small.txt");
    std::fs::write(&small, b"hello s3").expect("write");
    // Large enough for the CLI to use a multipart upload (its threshold is 8 MiB).
    let big = work.join("big.bin");
    let big_bytes: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, &big_bytes).expect("write");

    cli.ok(&["s3", "mb", "s3://bucket-one"]);
    let (ok, _, err) = cli.run(&["s3", "mb", "s3://bucket-one"]);
    assert!(!ok && err.contains("BucketAlreadyOwnedByYou"), "{err}");
    let buckets = cli.json(&["s3api", "list-buckets"]);
    let names: Vec<&str> = buckets["Buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .filter_map(|b| b["Name"].as_str())
        .collect();
    assert!(
        names.contains(&"bucket-one") && names.contains(&"sluice"),
        "{names:?}"
    );

    let q = ["--only-show-errors"];
    cli.ok(&[
        &[
            "s3",
            "cp",
            small.to_str().expect("path"),
            "s3://bucket-one/dir/small.txt",
        ][..],
        &q,
    ]
    .concat());
    cli.ok(&[
        &[
            "s3",
            "cp",
            big.to_str().expect("path"),
            "s3://bucket-one/big.bin",
        ][..],
        &q,
    ]
    .concat());
    let head = cli.json(&[
        "s3api",
        "head-object",
        "--bucket",
        "bucket-one",
        "--key",
        "big.bin",
    ]);
    assert_eq!(head["ContentLength"], 20_000_000);
    assert!(
        head["ETag"].as_str().is_some_and(|e| e.ends_with("-3\"")),
        "a multipart ETag: {head}"
    );
    // A copy of an object above the CLI's multipart threshold is a multipart copy
    // (UploadPartCopy with ranges of 8 MiB): same parts, so the same multipart ETag.
    cli.ok(&[
        &[
            "s3",
            "cp",
            "s3://bucket-one/big.bin",
            "s3://bucket-one/big-copy.bin",
        ][..],
        &q,
    ]
    .concat());
    let copy = cli.json(&[
        "s3api",
        "head-object",
        "--bucket",
        "bucket-one",
        "--key",
        "big-copy.bin",
    ]);
    assert_eq!(copy["ContentLength"], 20_000_000);
    assert_eq!(copy["ETag"], head["ETag"], "{copy}");
    // HEAD with a range describes the range.
    let ranged = cli.json(&[
        "s3api",
        "head-object",
        "--bucket",
        "bucket-one",
        "--key",
        "big-copy.bin",
        "--range",
        "bytes=19999990-",
    ]);
    assert_eq!(ranged["ContentLength"], 10);
    assert_eq!(ranged["ContentRange"], "bytes 19999990-19999999/20000000");
    // Multipart uploads in progress are listed until they end.
    let created = cli.json(&[
        "s3api",
        "create-multipart-upload",
        "--bucket",
        "bucket-one",
        "--key",
        "pending.bin",
    ]);
    let upload_id = created["UploadId"].as_str().expect("upload id");
    let part = cli.json(&[
        "s3api",
        "upload-part-copy",
        "--bucket",
        "bucket-one",
        "--key",
        "pending.bin",
        "--upload-id",
        upload_id,
        "--part-number",
        "1",
        "--copy-source",
        "bucket-one/big.bin",
        "--copy-source-range",
        "bytes=0-9",
    ]);
    // A copied part's ETag is the MD5 of its bytes: that of an object of the same bytes.
    let ten = work.join("ten.bin");
    std::fs::write(&ten, &big_bytes[..10]).expect("write");
    let same = cli.json(&[
        "s3api",
        "put-object",
        "--bucket",
        "bucket-one",
        "--key",
        "ten.bin",
        "--body",
        ten.to_str().expect("path"),
    ]);
    assert_eq!(part["CopyPartResult"]["ETag"], same["ETag"], "{part}");
    let listed = cli.json(&["s3api", "list-multipart-uploads", "--bucket", "bucket-one"]);
    assert_eq!(listed["Uploads"][0]["Key"], "pending.bin", "{listed}");
    assert_eq!(listed["Uploads"][0]["UploadId"], upload_id);
    cli.ok(&[
        "s3api",
        "abort-multipart-upload",
        "--bucket",
        "bucket-one",
        "--key",
        "pending.bin",
        "--upload-id",
        upload_id,
    ]);
    let listed = cli.json(&["s3api", "list-multipart-uploads", "--bucket", "bucket-one"]);
    assert!(listed.get("Uploads").is_none(), "{listed}");
    for key in ["big-copy.bin", "ten.bin"] {
        cli.ok(&[
            "s3api",
            "delete-object",
            "--bucket",
            "bucket-one",
            "--key",
            key,
        ]);
    }

    let back = work.join("back.bin");
    cli.ok(&[
        &[
            "s3",
            "cp",
            "s3://bucket-one/big.bin",
            back.to_str().expect("path"),
        ][..],
        &q,
    ]
    .concat());
    assert!(
        std::fs::read(&back).expect("read") == big_bytes,
        "round trip"
    );

    // Listing with a delimiter folds keys into common prefixes.
    let listed = cli.json(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "bucket-one",
        "--delimiter",
        "/",
    ]);
    assert_eq!(listed["Contents"][0]["Key"], "big.bin");
    assert_eq!(listed["CommonPrefixes"][0]["Prefix"], "dir/");
    // Paging.
    for i in 0..5 {
        cli.ok(&[
            &[
                "s3",
                "cp",
                small.to_str().expect("path"),
                &format!("s3://bucket-one/page/{i}"),
            ][..],
            &q,
        ]
        .concat());
    }
    let page = cli.json(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "bucket-one",
        "--prefix",
        "page/",
        "--max-keys",
        "2",
        "--no-paginate",
    ]);
    assert_eq!(page["KeyCount"], 2);
    assert_eq!(page["IsTruncated"], true);
    let token = page["NextContinuationToken"].as_str().expect("token");
    let rest = cli.json(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "bucket-one",
        "--prefix",
        "page/",
        "--continuation-token",
        token,
        "--no-paginate",
    ]);
    assert_eq!(rest["KeyCount"], 3);
    assert_eq!(rest["Contents"][0]["Key"], "page/2");

    // Range and conditional reads, metadata, copy.
    let part = work.join("part.bin");
    let got = cli.json(&[
        "s3api",
        "get-object",
        "--bucket",
        "bucket-one",
        "--key",
        "dir/small.txt",
        "--range",
        "bytes=0-4",
        part.to_str().expect("path"),
    ]);
    assert_eq!(got["ContentRange"], "bytes 0-4/8");
    assert_eq!(std::fs::read(&part).expect("read"), b"hello");
    let (ok, _, err) = cli.run(&[
        "s3api",
        "get-object",
        "--bucket",
        "bucket-one",
        "--key",
        "dir/small.txt",
        "--if-match",
        "\"nope\"",
        part.to_str().expect("path"),
    ]);
    assert!(!ok && err.contains("PreconditionFailed"), "{err}");
    cli.ok(&[
        "s3api",
        "put-object",
        "--bucket",
        "bucket-one",
        "--key",
        "meta.txt",
        "--body",
        small.to_str().expect("path"),
        "--content-type",
        "text/plain",
        "--metadata",
        "color=blue",
    ]);
    cli.ok(&[
        "s3api",
        "copy-object",
        "--bucket",
        "bucket-one",
        "--key",
        "copy.txt",
        "--copy-source",
        "bucket-one/meta.txt",
    ]);
    let head = cli.json(&[
        "s3api",
        "head-object",
        "--bucket",
        "bucket-one",
        "--key",
        "copy.txt",
    ]);
    assert_eq!(head["Metadata"]["color"], "blue");
    assert_eq!(head["ContentType"], "text/plain");

    // A presigned URL works without credentials; a plain anonymous GET does not.
    let url = cli.ok(&[
        "s3",
        "presign",
        "s3://bucket-one/meta.txt",
        "--expires-in",
        "300",
    ]);
    let resp = server.http.get(url.trim()).send().expect("presigned get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().expect("body").as_ref(), b"hello s3");
    let anon = server
        .http
        .get(format!("{}/bucket-one/meta.txt", server.edge))
        .send()
        .expect("anonymous get");
    assert_eq!(anon.status(), 403);
    assert!(anon.text().expect("body").contains("AccessDenied"));

    // Errors in S3's shape.
    let (ok, _, err) = cli.run(&["s3api", "head-bucket", "--bucket", "no-such-bucket"]);
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, _, err) = cli.run(&[
        "s3api",
        "get-object",
        "--bucket",
        "bucket-one",
        "--key",
        "missing",
        part.to_str().expect("path"),
    ]);
    assert!(!ok && err.contains("NoSuchKey"), "{err}");
    let (ok, _, err) = cli.run(&["s3", "rb", "s3://bucket-one"]);
    assert!(!ok && err.contains("BucketNotEmpty"), "{err}");
    let bad = Cli {
        edge: &server.edge,
        key: (cli.key.0.clone(), "wrong-secret".into()),
    };
    let (ok, _, err) = bad.run(&["s3", "ls"]);
    assert!(!ok && err.contains("SignatureDoesNotMatch"), "{err}");

    cli.ok(&[
        "s3",
        "rm",
        "--recursive",
        "--only-show-errors",
        "s3://bucket-one",
    ]);
    cli.ok(&["s3", "rb", "s3://bucket-one"]);
    server.stop();
}

#[test]
fn an_object_written_into_uploads_is_processed() {
    let dir = DataDir::new("s3-upload");
    let server = Server::start(&dir.0);
    let cli = Cli {
        edge: &server.edge,
        key: server.new_key(),
    };
    let f = dir.0.join("note.txt");
    std::fs::write(&f, "written through s3").expect("write");
    cli.ok(&[
        "s3",
        "cp",
        "--only-show-errors",
        f.to_str().expect("path"),
        "s3://sluice/uploads/note.txt",
    ]);
    let out = dir.0.join("out.txt");
    cli.download_when_processed("note.txt", &out, Duration::from_secs(30));
    assert_eq!(
        std::fs::read_to_string(&out).expect("read"),
        "WRITTEN THROUGH S3"
    );
    server.stop();
}

/// Every record on the upload stream, decoded (Kinesis through the aws CLI).
fn upload_records(cli: &Cli<'_>) -> Vec<Value> {
    use base64::Engine;
    let shards = cli.json(&["kinesis", "list-shards", "--stream-name", "uploads-stream"]);
    let mut records = Vec::new();
    for shard in shards["Shards"].as_array().expect("shards") {
        let it = cli.json(&[
            "kinesis",
            "get-shard-iterator",
            "--stream-name",
            "uploads-stream",
            "--shard-id",
            shard["ShardId"].as_str().expect("shard id"),
            "--shard-iterator-type",
            "TRIM_HORIZON",
        ]);
        let got = cli.json(&[
            "kinesis",
            "get-records",
            "--shard-iterator",
            it["ShardIterator"].as_str().expect("iterator"),
        ]);
        for r in got["Records"].as_array().expect("records") {
            let data = base64::engine::general_purpose::STANDARD
                .decode(r["Data"].as_str().expect("data"))
                .expect("base64");
            records.push(serde_json::from_slice(&data).expect("record is JSON"));
        }
    }
    records
}

#[test]
fn a_multipart_upload_into_uploads_is_processed() {
    use sha2::Digest;
    let dir = DataDir::new("s3-mp-upload");
    let server = Server::start(&dir.0);
    let key = server.new_key();
    let cli = Cli {
        edge: &server.edge,
        key: key.clone(),
    };
    // Above the CLI's multipart threshold (8 MiB): two parts.
    let line = "a multipart upload through s3\n";
    let text = line.repeat(9 * 1024 * 1024 / line.len() + 1);
    let f = dir.0.join("big.txt");
    std::fs::write(&f, &text).expect("write");
    cli.ok(&[
        "s3",
        "cp",
        "--only-show-errors",
        f.to_str().expect("path"),
        "s3://sluice/uploads/big.txt",
    ]);
    let head = cli.json(&[
        "s3api",
        "head-object",
        "--bucket",
        "sluice",
        "--key",
        "uploads/big.txt",
    ]);
    let etag = head["ETag"].as_str().expect("etag");
    assert!(etag.ends_with("-2\""), "not a multipart ETag: {etag}");
    // The completion ended the multipart upload.
    let open = cli.json(&["s3api", "list-multipart-uploads", "--bucket", "sluice"]);
    assert!(open.get("Uploads").is_none(), "{open}");

    // Its record was on the stream before the completion was answered.
    let records = upload_records(&cli);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["bucket"], "sluice");
    assert_eq!(r["key"], "uploads/big.txt");
    assert_eq!(r["userSub"], format!("aws:{}", key.0));
    assert_eq!(r["size"], text.len() as u64);
    assert_eq!(
        r["sha256"].as_str(),
        Some(hex::encode(sha2::Sha256::digest(text.as_bytes())).as_str())
    );
    assert!(r["requestId"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(r["uploadId"].as_str().is_some_and(|s| !s.is_empty()));

    // And the built-in mapping processes it.
    let out = dir.0.join("out.txt");
    cli.download_when_processed("big.txt", &out, Duration::from_secs(60));
    assert!(
        std::fs::read_to_string(&out).expect("read") == text.to_uppercase(),
        "processed output is not the uppercased upload"
    );
    server.stop();
}

#[test]
fn with_s3_uploads_enqueue_off_a_multipart_upload_is_a_plain_object() {
    let dir = DataDir::new("s3-mp-plain");
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_S3_UPLOADS_ENQUEUE", "false")],
    );
    let cli = Cli {
        edge: &server.edge,
        key: server.new_key(),
    };
    let created = cli.json(&[
        "s3api",
        "create-multipart-upload",
        "--bucket",
        "sluice",
        "--key",
        "uploads/one.txt",
    ]);
    let id = created["UploadId"].as_str().expect("upload id");
    let part = dir.0.join("part.txt");
    std::fs::write(&part, "one part").expect("write");
    let up = cli.json(&[
        "s3api",
        "upload-part",
        "--bucket",
        "sluice",
        "--key",
        "uploads/one.txt",
        "--upload-id",
        id,
        "--part-number",
        "1",
        "--body",
        part.to_str().expect("path"),
    ]);
    let parts = serde_json::json!({
        "Parts": [{"PartNumber": 1, "ETag": up["ETag"]}]
    })
    .to_string();
    let done = cli.json(&[
        "s3api",
        "complete-multipart-upload",
        "--bucket",
        "sluice",
        "--key",
        "uploads/one.txt",
        "--upload-id",
        id,
        "--multipart-upload",
        &parts,
    ]);
    assert!(
        done["ETag"].as_str().is_some_and(|e| e.ends_with("-1\"")),
        "{done}"
    );
    assert!(upload_records(&cli).is_empty());
    server.stop();
}
