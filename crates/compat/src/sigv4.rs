//! AWS Signature Version 4, verified on the server side: rebuild the canonical request from
//! what arrived, derive the signing key from the caller's secret, compare signatures.
//!
//! Only the `Authorization: AWS4-HMAC-SHA256 …` header form is handled here (what the
//! JSON 1.1 protocols' clients send); presigned S3 URLs are S3's business.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Requests whose `X-Amz-Date` is further than this from the server's clock are refused,
/// as AWS does (15 minutes).
pub const MAX_SKEW_SECS: i64 = 15 * 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("missing authentication token")]
    Missing,
    #[error("{0}")]
    Malformed(String),
    #[error("the security token included in the request is invalid")]
    UnknownKey,
    #[error("signature expired: {0}")]
    Expired(String),
    #[error(
        "the request signature we calculated does not match the signature you provided; check your AWS secret access key and signing method"
    )]
    Mismatch,
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

pub fn parse_authorization(value: &str) -> Result<Authorization, SigError> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(|| SigError::Malformed("only AWS4-HMAC-SHA256 is supported".into()))?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(SigError::Malformed(
            "authorization header lacks Credential, SignedHeaders or Signature".into(),
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" {
        return Err(SigError::Malformed(format!(
            "credential scope {credential:?} is not <key>/<date>/<region>/<service>/aws4_request"
        )));
    }
    Ok(Authorization {
        access_key_id: scope[0].to_owned(),
        date: scope[1].to_owned(),
        region: scope[2].to_owned(),
        service: scope[3].to_owned(),
        signed_headers: signed.split(';').map(str::to_owned).collect(),
        signature: signature.to_owned(),
    })
}

/// What a request is signed over.
#[derive(Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path as sent (already URI-encoded by the client).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    /// `(lower-case name, value)` pairs as received.
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the body (or the `x-amz-content-sha256` value, for S3).
    pub payload_hash: &'a str,
}

/// Verifies `auth` over `req` with `secret`. `now` is the server's time, seconds since the
/// epoch.
pub fn verify(
    auth: &Authorization,
    req: &SignedRequest<'_>,
    secret: &str,
    now: i64,
) -> Result<(), SigError> {
    let amz_date = header(req.headers, "x-amz-date")
        .ok_or_else(|| SigError::Malformed("missing X-Amz-Date header".into()))?;
    let when = parse_amz_date(amz_date)
        .ok_or_else(|| SigError::Malformed(format!("invalid X-Amz-Date {amz_date:?}")))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(SigError::Malformed(
            "credential scope date does not match X-Amz-Date".into(),
        ));
    }
    if (now - when).abs() > MAX_SKEW_SECS {
        return Err(SigError::Expired(format!(
            "{amz_date} is more than {MAX_SKEW_SECS} seconds from the server time"
        )));
    }
    // Over HTTP/2 some SDKs (the JavaScript v3 one) sign the `:authority` pseudo-header
    // in place of `host`; either names the host.
    if !auth
        .signed_headers
        .iter()
        .any(|h| h == "host" || h == ":authority")
    {
        return Err(SigError::Malformed("the host header must be signed".into()));
    }
    let canonical = canonical_request_for(&auth.service, req, &auth.signed_headers);
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
    let expected = hex::encode(hmac(&key, to_sign.as_bytes()));
    if constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        Ok(())
    } else {
        Err(SigError::Mismatch)
    }
}

/// Signs a request as an AWS client would: returns the `Authorization` header value for
/// `req` (whose headers must include `host` and `x-amz-date`), signing every header given.
/// Used by tests and tools that talk to the edge without an AWS SDK.
pub fn authorization_header(
    req: &SignedRequest<'_>,
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
) -> Result<String, SigError> {
    let amz_date = header(req.headers, "x-amz-date")
        .ok_or_else(|| SigError::Malformed("missing X-Amz-Date header".into()))?;
    let date = amz_date.get(..8).unwrap_or(amz_date);
    let mut names: Vec<String> = req.headers.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    names.dedup();
    let canonical = canonical_request_for(service, req, &names);
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let signature = hex::encode(hmac(
        &signing_key(secret, date, region, service),
        to_sign.as_bytes(),
    ));
    Ok(format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={signature}",
        names.join(";")
    ))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `YYYYMMDD'T'HHMMSS'Z'` → seconds since the epoch.
pub(crate) fn parse_amz_date(s: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|d| d.and_utc().timestamp())
}

/// The canonical request of a request signed for `service`: S3 encodes the path once,
/// every other service twice (the encoded path is encoded again; Lambda's paths hold
/// function ARNs whose colons are sent as `%3A` and signed as `%253A`).
pub(crate) fn canonical_request_for(
    service: &str,
    req: &SignedRequest<'_>,
    signed_headers: &[String],
) -> String {
    if service == "s3" {
        return canonical_request(req, signed_headers);
    }
    let twice: String = canonical_path(req.path)
        .split('/')
        .map(|seg| uri_encode(seg, true))
        .collect::<Vec<_>>()
        .join("/");
    canonical_request(
        &SignedRequest {
            path: &twice,
            ..*req
        },
        signed_headers,
    )
}

/// The canonical request with the path as S3 signs it (encoded once); see
/// [`canonical_request_for`].
pub(crate) fn canonical_request(req: &SignedRequest<'_>, signed_headers: &[String]) -> String {
    use std::fmt::Write as _;
    let path = canonical_path(req.path);
    let query = canonical_query(req.query);
    let mut out = String::with_capacity(
        256 + path.len()
            + query.len()
            + req
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 2)
                .sum::<usize>(),
    );
    let _ = write!(out, "{}\n{path}\n{query}\n", req.method);
    for name in signed_headers {
        // Several headers of one name are joined with commas, values trimmed and inner
        // runs of spaces folded to one.
        out.push_str(name);
        out.push(':');
        let mut first_value = true;
        for (_, v) in req.headers.iter().filter(|(n, _)| n == name) {
            if !first_value {
                out.push(',');
            }
            first_value = false;
            for (i, word) in v.split_whitespace().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(word);
            }
        }
        out.push('\n');
    }
    out.push('\n');
    for (i, name) in signed_headers.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(name);
    }
    out.push('\n');
    out.push_str(req.payload_hash);
    out
}

/// The path with each segment normalised to AWS's encoding (clients send it encoded once;
/// decoding and re-encoding makes `%2a` and `*` compare equal to what the client signed).
pub(crate) fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.split('/')
        .map(|seg| uri_encode(&percent_decode(seg), true))
        .collect::<Vec<_>>()
        .join("/")
}

pub(crate) fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), true),
                uri_encode(&percent_decode(v), true),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters as they are, everything else
/// `%XX` upper-case.
pub(crate) fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; construction cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

pub(crate) fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented example: IAM ListUsers, 2015-08-30.
    fn example() -> (Vec<(String, String)>, Authorization) {
        let headers = vec![
            (
                "content-type".to_owned(),
                "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
            ),
            ("host".to_owned(), "iam.amazonaws.com".to_owned()),
            ("x-amz-date".to_owned(), "20150830T123600Z".to_owned()),
        ];
        let auth = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        )
        .expect("parse");
        (headers, auth)
    }

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    #[test]
    fn aws_documented_example_verifies() {
        let (headers, auth) = example();
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let canonical = canonical_request(&req, &auth.signed_headers);
        assert_eq!(
            hex::encode(Sha256::digest(canonical.as_bytes())),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let now = parse_amz_date("20150830T123600Z").expect("date");
        assert_eq!(verify(&auth, &req, SECRET, now), Ok(()));
        assert_eq!(
            verify(&auth, &req, "wrong-secret", now),
            Err(SigError::Mismatch)
        );
        assert!(matches!(
            verify(&auth, &req, SECRET, now + MAX_SKEW_SECS + 1),
            Err(SigError::Expired(_))
        ));
        let tampered = SignedRequest {
            query: "Action=DeleteUser&Version=2010-05-08",
            ..req
        };
        assert_eq!(
            verify(&auth, &tampered, SECRET, now),
            Err(SigError::Mismatch)
        );
    }

    #[test]
    fn what_we_sign_we_verify() {
        let headers = vec![
            ("host".to_owned(), "127.0.0.1:4566".to_owned()),
            ("x-amz-date".to_owned(), "20261124T010000Z".to_owned()),
            (
                "x-amz-target".to_owned(),
                "Kinesis_20131202.ListStreams".to_owned(),
            ),
        ];
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let value =
            authorization_header(&req, "AKID", SECRET, "us-east-2", "kinesis").expect("sign");
        let auth = parse_authorization(&value).expect("parse");
        let now = parse_amz_date("20261124T010000Z").expect("date");
        assert_eq!(verify(&auth, &req, SECRET, now), Ok(()));
    }

    #[test]
    fn malformed_headers() {
        assert!(parse_authorization("Bearer x").is_err());
        assert!(
            parse_authorization("AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=host, Signature=x")
                .is_err()
        );
    }

    #[test]
    fn decoding_never_splits_a_character() {
        assert_eq!(percent_decode("%aé"), "%aé");
        assert_eq!(percent_decode("a%2Fb%"), "a/b%");
        assert_eq!(percent_decode("%é"), "%é");
    }

    #[test]
    fn encoding() {
        assert_eq!(uri_encode("a b/c~", true), "a%20b%2Fc~");
        assert_eq!(canonical_query("b=2&a=1&a=0"), "a=0&a=1&b=2");
        assert_eq!(canonical_path("/my%20bucket/a*b"), "/my%20bucket/a%2Ab");
    }
}
