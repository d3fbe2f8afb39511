//! The crate-private parsers the network reaches, for the fuzz targets in `fuzz/` (a crate
//! of its own, outside the workspace). Each function here calls the parser the edge uses,
//! unchanged; none has a behaviour of its own. Not an API: nothing else may use it.

/// SigV4: what `authenticate` rebuilds from a request before comparing signatures.
pub mod sigv4 {
    pub use crate::sigv4::{Authorization, SigError, SignedRequest};

    pub fn canonical_request(req: &SignedRequest<'_>, signed_headers: &[String]) -> String {
        crate::sigv4::canonical_request(req, signed_headers)
    }

    pub fn canonical_path(path: &str) -> String {
        crate::sigv4::canonical_path(path)
    }

    pub fn canonical_query(query: &str) -> String {
        crate::sigv4::canonical_query(query)
    }

    pub fn uri_encode(s: &str, encode_slash: bool) -> String {
        crate::sigv4::uri_encode(s, encode_slash)
    }

    pub fn percent_decode(s: &str) -> String {
        crate::sigv4::percent_decode(s)
    }

    pub fn parse_amz_date(s: &str) -> Option<i64> {
        crate::sigv4::parse_amz_date(s)
    }
}

/// CBOR 1.1 bodies of the Kinesis protocol, to and from the JSON model.
pub mod cbor {
    pub fn decode(body: &[u8]) -> Option<serde_json::Value> {
        crate::cbor::decode(body)
    }

    pub fn encode(v: &serde_json::Value) -> Vec<u8> {
        crate::cbor::encode(v)
    }
}

/// S3 request values that sluice reads itself (s3s parses the rest).
pub mod s3 {
    use s3s::S3Result;
    use s3s::dto::{CopySource, Range};
    use sluice_store::ByteRange;

    pub fn content_md5(given: Option<&str>) -> S3Result<Option<[u8; 16]>> {
        crate::s3::content_md5(given)
    }

    pub fn copy_source(source: &CopySource) -> S3Result<(String, String, Option<String>)> {
        crate::s3::copy_source(source)
    }

    pub fn parse_copy_range(value: &str) -> S3Result<ByteRange> {
        crate::s3::parse_copy_range(value)
    }

    pub fn part_number(n: i32) -> S3Result<u32> {
        crate::s3::part_number(n)
    }

    pub type Selection = (Option<std::ops::Range<u64>>, Option<i32>);

    pub fn select(
        size: u64,
        range: Option<&Range>,
        part: Option<i32>,
        parts: &[(u32, u64)],
    ) -> S3Result<Selection> {
        crate::s3::select(size, range, part, parts)
    }

    pub fn fold<'k>(key: &'k str, prefix: &str, delimiter: &str) -> Option<&'k str> {
        crate::s3::fold(key, prefix, delimiter)
    }

    pub fn completion_parts(
        body: Option<s3s::dto::CompletedMultipartUpload>,
    ) -> S3Result<Vec<(u32, String)>> {
        crate::s3::completion_parts(body)
    }

    pub fn upload_filename(key: &str) -> String {
        crate::s3::upload_filename(key)
    }

    pub fn encode_token(after: &str) -> String {
        crate::s3::encode_token(after)
    }

    pub fn decode_token(t: &str) -> S3Result<String> {
        crate::s3::decode_token(t)
    }
}
