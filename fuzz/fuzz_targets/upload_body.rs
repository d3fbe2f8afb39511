//! `POST /uploads` through the upload API's router (`sluice_gateway::router`) with a valid
//! bearer token: the media type, `?filename=`, and the body — the seed's JSON
//! `{"filename","content"}`, a raw body, or a multipart form (multer, streamed to staging as
//! it arrives, in chunks of the size the input asks for).
//!
//! Input: line 1 the `Content-Type` (empty: none), line 2 the query string, line 3 the size
//! of the chunks the body arrives in (empty or 0: one chunk), then the body.
//!
//! Invariants: nothing panics; no answer is a 5xx; what reaches the sink is under
//! `uploads/<name>` with a name the file-name rule accepts unchanged, at most the limit in
//! size (checked in the sink); a 200 names that key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{send, split_line};

fuzz_target!(|data: &[u8]| {
    let Some((content_type, rest)) = split_line(data) else {
        return;
    };
    let Some((query, rest)) = split_line(rest) else {
        return;
    };
    let Some((chunk, body)) = split_line(rest) else {
        return;
    };
    let chunk: usize = chunk.trim().parse().unwrap_or(0);
    let api = sluice_fuzz::api::api();
    let uri = if query.is_empty() {
        "/uploads".to_owned()
    } else {
        format!("/uploads?{query}")
    };
    let Ok(uri) = uri.parse::<http::Uri>() else {
        return;
    };
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = if chunk == 0 || chunk >= body.len() {
        vec![Ok(bytes::Bytes::copy_from_slice(body))]
    } else {
        body.chunks(chunk)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect()
    };
    let mut req = http::Request::post(uri).header("authorization", &api.bearer);
    if !content_type.is_empty() {
        let Ok(v) = http::HeaderValue::from_str(content_type) else {
            return;
        };
        req = req.header("content-type", v);
    }
    let Ok(req) = req.body(axum::body::Body::from_stream(futures_util::stream::iter(
        chunks,
    ))) else {
        return;
    };
    let (status, _, answer) = send(&api.router, req);
    sluice_fuzz::show(content_type, status, &answer);
    assert!(
        !status.is_server_error(),
        "{status} {}",
        String::from_utf8_lossy(&answer)
    );
    if status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&answer).expect("answer is JSON");
        let key = v["s3"]["key"].as_str().expect("s3.key");
        assert!(key.starts_with("uploads/"), "{key}");
    }
});
