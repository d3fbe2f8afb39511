//! `encoding-type=url` in listings: the keys (and the request's prefix, delimiter and
//! markers echoed back) are percent-encoded in the answer, so that keys holding characters
//! XML 1.0 cannot carry still list. Which fields are encoded follows what the SDKs decode
//! (botocore's list of them for each operation; S3's documentation for
//! ListMultipartUploads). Everything but unreserved characters and `/` is encoded, a space
//! as `%20` (decoded alike by `unquote_plus` and `decodeURIComponent`).

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Result};

/// Whether the request asked for URL-encoded keys; another encoding is refused as S3 does.
pub(crate) fn url_wanted(e: Option<&EncodingType>) -> S3Result<bool> {
    match e.map(|e| e.as_str()) {
        None => Ok(false),
        Some(EncodingType::URL) => Ok(true),
        Some(_) => Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            "Invalid Encoding Method specified in Request",
        )),
    }
}

pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn field(v: &mut Option<String>) {
    if let Some(s) = v {
        *s = encode(s);
    }
}

fn prefixes(v: &mut Option<Vec<CommonPrefix>>) {
    for p in v.iter_mut().flatten() {
        field(&mut p.prefix);
    }
}

fn url() -> Option<EncodingType> {
    Some(EncodingType::from_static(EncodingType::URL))
}

pub(crate) fn objects_v2(out: &mut ListObjectsV2Output) {
    field(&mut out.delimiter);
    field(&mut out.prefix);
    field(&mut out.start_after);
    for o in out.contents.iter_mut().flatten() {
        field(&mut o.key);
    }
    prefixes(&mut out.common_prefixes);
    out.encoding_type = url();
}

pub(crate) fn objects_v1(out: &mut ListObjectsOutput) {
    field(&mut out.delimiter);
    field(&mut out.marker);
    field(&mut out.next_marker);
    for o in out.contents.iter_mut().flatten() {
        field(&mut o.key);
    }
    prefixes(&mut out.common_prefixes);
    out.encoding_type = url();
}

pub(crate) fn versions(out: &mut ListObjectVersionsOutput) {
    field(&mut out.delimiter);
    field(&mut out.prefix);
    field(&mut out.key_marker);
    field(&mut out.next_key_marker);
    for v in out.versions.iter_mut().flatten() {
        field(&mut v.key);
    }
    for m in out.delete_markers.iter_mut().flatten() {
        field(&mut m.key);
    }
    prefixes(&mut out.common_prefixes);
    out.encoding_type = url();
}

pub(crate) fn uploads(out: &mut ListMultipartUploadsOutput) {
    field(&mut out.delimiter);
    field(&mut out.prefix);
    field(&mut out.key_marker);
    field(&mut out.next_key_marker);
    for u in out.uploads.iter_mut().flatten() {
        field(&mut u.key);
    }
    prefixes(&mut out.common_prefixes);
    out.encoding_type = url();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_but_slashes_and_unreserved_stay() {
        assert_eq!(encode("a/b c+d&é\u{1}"), "a/b%20c%2Bd%26%C3%A9%01");
        assert_eq!(encode("plain-key_1.txt~"), "plain-key_1.txt~");
        assert!(url_wanted(Some(&EncodingType::from_static("base64"))).is_err());
        assert!(url_wanted(Some(&EncodingType::from_static(EncodingType::URL))).expect("url"));
    }
}
