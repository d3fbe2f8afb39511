//! Signed requests through the whole edge (`sluice_compat::router`): s3s parses and checks
//! them (SigV4, headers, query, XML bodies such as CompleteMultipartUpload and
//! DeleteObjects), then sluice's S3 adapter serves them from the embedded store — or, for
//! `POST /` with an `X-Amz-Target`, the Kinesis and Cognito dispatch.
//!
//! Input: a request (`METHOD /path?query`, headers, an empty line, the body); the target
//! signs it with a full-access key as an SDK would (the service is `s3`, or `kinesis` /
//! `cognito-idp` by the target header). The fixture holds bucket `fuzz` with
//! `hello.txt`, and a multipart upload of `fuzz/big` with one part (each made again when an
//! input removed it). Placeholders:
//! `@upload@` (that upload's id, made again once completed or aborted), `@etag1@` (its
//! part's ETag).
//!
//! Invariants: nothing panics and no answer is a 500 (a request's fault is a 4xx).
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{BUCKET, Parts, RawRequest, STREAM, runtime, send, substitute};
use sluice_store::{ObjectStore, PutOptions};
use sluice_stream::Stream;

struct Fixture {
    parts: Parts,
    router: axum::Router,
    upload: Mutex<(String, String)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let parts = sluice_fuzz::parts("s3");
        let router = parts.edge();
        let upload = runtime()
            .block_on(async {
                restore(&parts).await?;
                multipart(&parts.store).await.map_err(|e| e.to_string())
            })
            .expect("fixture");
        Fixture {
            parts,
            router,
            upload: Mutex::new(upload),
        }
    })
}

/// What the placeholders and seeds count on, made again when an input removed it: bucket
/// `fuzz`, its `hello.txt`, and the uploads stream (`sluice serve` makes sure of it at
/// start; a Kinesis DeleteStream through the edge may have removed it, and writes into
/// `uploads/` then fail, as they would on a server whose stream an operator deleted).
async fn restore(parts: &Parts) -> Result<(), String> {
    let store = &parts.store;
    if store.head(BUCKET, "hello.txt").await.is_err() {
        store
            .ensure_bucket(BUCKET)
            .await
            .map_err(|e| e.to_string())?;
        store
            .put(
                BUCKET,
                "hello.txt",
                bytes::Bytes::from_static(b"hello, world\n"),
                PutOptions::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    if parts.stream.describe_stream_summary(STREAM).await.is_err() {
        parts
            .stream
            .ensure_stream(STREAM, 1)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A multipart upload of `fuzz/big` with part 1: (upload id, part 1's ETag).
async fn multipart(
    store: &sluice_store::embedded::EmbeddedStore,
) -> Result<(String, String), sluice_store::StoreError> {
    let id = store
        .create_multipart(BUCKET, "big", PutOptions::default())
        .await?;
    let etag = store
        .upload_part(&id, 1, bytes::Bytes::from(vec![b'x'; 1024]))
        .await?;
    Ok((id, etag))
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let rt = runtime();
    if let Err(e) = rt.block_on(restore(&f.parts)) {
        panic!("cannot restore the fixture: {e}");
    }
    let data = {
        let mut upload = f.upload.lock().expect("fixture");
        if rt.block_on(f.parts.store.multipart(&upload.0)).is_err() {
            match rt.block_on(multipart(&f.parts.store)) {
                Ok(u) => *upload = u,
                Err(e) => panic!("cannot start the fixture's multipart upload again: {e}"),
            }
        }
        substitute(data, &[("upload", &upload.0), ("etag1", &upload.1)])
    };
    let Some(raw) = RawRequest::parse(&data) else {
        return;
    };
    let target = raw
        .headers
        .iter()
        .find(|(n, _)| n == "x-amz-target")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let service = if target.starts_with("Kinesis") {
        "kinesis"
    } else if target.starts_with("AWSCognito") {
        "cognito-idp"
    } else {
        "s3"
    };
    let Some(req) = raw.signed(&f.parts.key, service) else {
        return;
    };
    let (status, _, body) = send(&f.router, req);
    sluice_fuzz::show(&format!("{} {}", raw.method, raw.path), status, &body);
    assert!(
        status != http::StatusCode::INTERNAL_SERVER_ERROR,
        "{} {}?{}: {status} {}",
        raw.method,
        raw.path,
        raw.query,
        String::from_utf8_lossy(&body)
    );
});
