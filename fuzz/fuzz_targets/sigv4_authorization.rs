//! SigV4 as the edge verifies it (`sluice_compat::sigv4`): the `Authorization` header, the
//! canonical request rebuilt from what arrived, `X-Amz-Date`, and the URI encoding.
//!
//! Input: the first line is an `Authorization` value; the rest is a request
//! (`METHOD /path?query`, headers, an empty line, the body).
//!
//! Invariants: nothing panics; a parsed header formatted again parses to the same value;
//! canonical paths and queries are fixed points of their canonicalisation; decoding undoes
//! encoding; a request signed as a client signs it verifies, and with one signature
//! character changed it does not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_compat::fuzzing::sigv4 as f;
use sluice_compat::sigv4::{SigError, SignedRequest};
use sluice_fuzz::{RawRequest, split_line};

fuzz_target!(|data: &[u8]| {
    let Some((authorization, rest)) = split_line(data) else {
        return;
    };
    authorization_round_trip(authorization);
    if let Some(req) = RawRequest::parse(rest) {
        canonical_forms(&req);
        sign_then_verify(&req);
    }
});

fn authorization_round_trip(value: &str) {
    let Ok(a) = sluice_compat::sigv4::parse_authorization(value) else {
        return;
    };
    let again = format!(
        "AWS4-HMAC-SHA256 Credential={}/{}/{}/{}/aws4_request, SignedHeaders={}, Signature={}",
        a.access_key_id,
        a.date,
        a.region,
        a.service,
        a.signed_headers.join(";"),
        a.signature
    );
    assert_eq!(
        sluice_compat::sigv4::parse_authorization(&again).as_ref(),
        Ok(&a),
        "{value:?} → {again:?}"
    );
}

fn canonical_forms(req: &RawRequest) {
    let path = f::canonical_path(&req.path);
    assert_eq!(f::canonical_path(&path), path, "path {:?}", req.path);
    let query = f::canonical_query(&req.query);
    assert_eq!(f::canonical_query(&query), query, "query {:?}", req.query);
    for s in [&req.path, &req.query] {
        assert_eq!(&f::percent_decode(&f::uri_encode(s, true)), s);
        assert_eq!(&f::percent_decode(&f::uri_encode(s, false)), s);
    }
    let names: Vec<String> = req.headers.iter().map(|(n, _)| n.clone()).collect();
    let _ = f::canonical_request(
        &SignedRequest {
            method: &req.method,
            path: &req.path,
            query: &req.query,
            headers: &req.headers,
            payload_hash: "UNSIGNED-PAYLOAD",
        },
        &names,
    );
}

/// Signs as `authorization_header` (what tests and tools send) and verifies as the edge.
/// Headers are kept only when HTTP could carry them (a token name, a value without control
/// characters): the edge never sees others.
fn sign_then_verify(req: &RawRequest) {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(n, v)| {
            http::HeaderName::from_bytes(n.as_bytes()).is_ok()
                && http::HeaderValue::from_str(v).is_ok()
        })
        .cloned()
        .collect();
    if !headers.iter().any(|(n, _)| n == "host") {
        headers.push(("host".into(), "edge.test".into()));
    }
    let date = headers
        .iter()
        .find(|(n, _)| n == "x-amz-date")
        .map(|(_, v)| v.clone());
    let date = match date {
        Some(d) => d,
        None => {
            headers.push(("x-amz-date".into(), "20261124T010000Z".into()));
            "20261124T010000Z".into()
        }
    };
    let Some(now) = f::parse_amz_date(&date) else {
        return;
    };
    let signed = SignedRequest {
        method: &req.method,
        path: &req.path,
        query: &req.query,
        headers: &headers,
        payload_hash: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    };
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    let value =
        sluice_compat::sigv4::authorization_header(&signed, "AKID", secret, "us-east-2", "s3")
            .expect("headers include x-amz-date");
    let auth = sluice_compat::sigv4::parse_authorization(&value).expect("our own header parses");
    assert_eq!(
        sluice_compat::sigv4::verify(&auth, &signed, secret, now),
        Ok(()),
        "{value}"
    );
    let mut tampered = auth.clone();
    let flipped = match tampered.signature.pop() {
        Some('0') => '1',
        _ => '0',
    };
    tampered.signature.push(flipped);
    assert_eq!(
        sluice_compat::sigv4::verify(&tampered, &signed, secret, now),
        Err(SigError::Mismatch)
    );
}
