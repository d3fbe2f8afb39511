//! The blob engine conformance suite against real S3 servers: sluice's own edge (a running
//! `sluice serve` is an S3 endpoint like any other).

mod common;

use common::{DataDir, Server};
use serde_json::Value;

/// A bucket on `server`'s S3 edge and an `s3://` URL for it with a fresh access key.
fn s3_bucket(server: &Server, bucket: &str) -> String {
    let key: Value = serde_json::from_str(&server.cli(&["keys", "create"])).expect("key json");
    let (id, secret) = (
        key["accessKeyId"].as_str().expect("id").to_owned(),
        key["secretAccessKey"].as_str().expect("secret").to_owned(),
    );
    let (ok, _, err) = common::aws_as(
        (&id, &secret),
        &[
            "--endpoint-url",
            &server.edge,
            "s3",
            "mb",
            &format!("s3://{bucket}"),
        ],
    );
    assert!(ok, "{err}");
    let enc = |s: &str| {
        s.replace('%', "%25")
            .replace('/', "%2F")
            .replace('+', "%2B")
    };
    format!(
        "s3://{bucket}/blobs?endpoint={}&region=us-east-2&access_key_id={}&secret_access_key={}",
        server.edge,
        enc(&id),
        enc(&secret)
    )
}

#[test]
fn blobs_on_sluices_own_s3_edge_pass_the_conformance_suite() {
    let dir = DataDir::new("s3-blobs");
    let server = Server::start(&dir.0);
    let url = s3_bucket(&server, "blob-engine");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let blobs = sluice_blobs::open(&url).expect("open s3 blobs");
        assert!(
            blobs
                .describe()
                .starts_with("s3://blob-engine/blobs at http://")
        );
        sluice_blobs::conformance::run_all(blobs.as_ref()).await;
    });
}

/// The same suite on Garage, the S3 server `scripts/test` starts (`SLUICE_TEST_S3`).
#[test]
fn blobs_on_garage_pass_the_conformance_suite() {
    let base = std::env::var("SLUICE_TEST_S3").expect(
        "SLUICE_TEST_S3 names the S3 server to test against (scripts/test starts Garage and sets it)",
    );
    let (location, query) = base.split_once('?').unwrap_or((&base, ""));
    let url = format!(
        "{}/conformance-{}?{query}",
        location.trim_end_matches('/'),
        sluice_blobs::new_id()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let blobs = sluice_blobs::open(&url).expect("open s3 blobs");
        sluice_blobs::conformance::run_all(blobs.as_ref()).await;
    });
}
