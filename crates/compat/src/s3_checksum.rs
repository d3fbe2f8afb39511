//! S3's flexible checksums on PutObject and CopyObject: `x-amz-checksum-crc32`, `-crc32c`,
//! `-crc64nvme`, `-sha1`, `-sha256`, given as a header or — as current SDKs send them — as
//! a trailer after an `aws-chunked` body (`x-amz-trailer`).
//!
//! The body is hashed as it streams to the store ([`hashing`]); once every byte is in and
//! before the object is committed, the store runs the [`sluice_store::BodyCheck`] made here,
//! which compares the client's value (read from the trailer at that moment) with the
//! computed one: a mismatch is `BadDigest` ("The CRC32 you specified did not match the
//! calculated checksum.") and nothing is kept. The checksum is kept with the object and
//! answered on PutObject, and on GetObject / HeadObject with `x-amz-checksum-mode: ENABLED`.
//! A write that names no algorithm gets a CRC64NVME checksum, as S3 computes for every new
//! object since 2025.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::StreamExt as _;
use s3s::{S3Error, S3ErrorCode};
use sluice_store::{BodyCheck, ByteStream, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algorithm {
    const ALL: [Algorithm; 5] = [
        Algorithm::Crc32,
        Algorithm::Crc32c,
        Algorithm::Crc64Nvme,
        Algorithm::Sha1,
        Algorithm::Sha256,
    ];

    /// S3's name (`ChecksumAlgorithm`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "CRC32",
            Algorithm::Crc32c => "CRC32C",
            Algorithm::Crc64Nvme => "CRC64NVME",
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
        }
    }

    /// The header (or trailer) carrying the value.
    pub fn header(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "x-amz-checksum-crc32",
            Algorithm::Crc32c => "x-amz-checksum-crc32c",
            Algorithm::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Algorithm::Sha1 => "x-amz-checksum-sha1",
            Algorithm::Sha256 => "x-amz-checksum-sha256",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    fn from_header(name: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.header().eq_ignore_ascii_case(name.trim()))
    }

    /// Bytes of the digest (what a valid base64 value decodes to).
    fn digest_len(self) -> usize {
        match self {
            Algorithm::Crc32 | Algorithm::Crc32c => 4,
            Algorithm::Crc64Nvme => 8,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
        }
    }
}

/// A running checksum.
pub enum Hasher {
    Crc(crc_fast::Digest, usize),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub fn new(a: Algorithm) -> Hasher {
        use crc_fast::CrcAlgorithm as C;
        match a {
            Algorithm::Crc32 => Hasher::Crc(crc_fast::Digest::new(C::Crc32IsoHdlc), 4),
            Algorithm::Crc32c => Hasher::Crc(crc_fast::Digest::new(C::Crc32Iscsi), 4),
            Algorithm::Crc64Nvme => Hasher::Crc(crc_fast::Digest::new(C::Crc64Nvme), 8),
            Algorithm::Sha1 => Hasher::Sha1(<sha1::Sha1 as sha1::Digest>::new()),
            Algorithm::Sha256 => Hasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc(d, _) => d.update(data),
            Hasher::Sha1(h) => sha1::Digest::update(h, data),
            Hasher::Sha256(h) => sha2::Digest::update(h, data),
        }
    }

    /// The value as S3 writes it: base64 of the big-endian digest.
    pub fn value(&self) -> String {
        match self {
            Hasher::Crc(d, width) => {
                let v = d.finalize().to_be_bytes();
                B64.encode(&v[8 - width..])
            }
            Hasher::Sha1(h) => B64.encode(sha1::Digest::finalize(h.clone())),
            Hasher::Sha256(h) => B64.encode(sha2::Digest::finalize(h.clone())),
        }
    }
}

impl Spec {
    /// A checksum computed with `algorithm` and compared with nothing (a copy's).
    pub fn computed(algorithm: Algorithm) -> Spec {
        Spec {
            algorithm,
            expected: Expected::Nothing,
            defaulted: false,
        }
    }

    /// Whether the request named an algorithm or sent a value.
    pub fn named(&self) -> bool {
        !self.defaulted
    }
}

/// Where the client's value is.
enum Expected {
    /// None was sent: the checksum is computed and kept, nothing compared.
    Nothing,
    Header(String),
    /// In the trailer of an `aws-chunked` body, readable once the body is read.
    Trailer(s3s::TrailingHeaders),
}

/// A write's checksum: the algorithm and where the client's value is.
pub struct Spec {
    algorithm: Algorithm,
    expected: Expected,
    /// The request named no algorithm (CRC64NVME was chosen for it).
    defaulted: bool,
}

fn invalid(header: &str) -> S3Error {
    S3Error::with_message(
        S3ErrorCode::InvalidRequest,
        format!("Value for {header} header is invalid."),
    )
}

/// The checksum a write asks for, from its headers: a value header (at most one), an
/// `x-amz-trailer` naming one, or only `x-amz-checksum-algorithm` /
/// `x-amz-sdk-checksum-algorithm`; with none of them, CRC64NVME.
pub fn spec(
    headers: &http::HeaderMap,
    trailers: Option<&s3s::TrailingHeaders>,
) -> Result<Spec, S3Error> {
    // A checksum of an algorithm sluice does not compute (SHA512, XXHASH…, newer than
    // this code) is refused rather than silently not verified.
    if let Some(other) = headers.keys().map(|k| k.as_str()).find(|k| {
        k.starts_with("x-amz-checksum-")
            && !matches!(
                *k,
                "x-amz-checksum-mode" | "x-amz-checksum-algorithm" | "x-amz-checksum-type"
            )
            && Algorithm::from_header(k).is_none()
    }) {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            format!("Checksum algorithm provided is unsupported: {other}"),
        ));
    }
    let mut given = Algorithm::ALL
        .into_iter()
        .filter_map(|a| headers.get(a.header()).map(|v| (a, v)));
    if let Some((algorithm, value)) = given.next() {
        if given.next().is_some() {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
            ));
        }
        let value = value
            .to_str()
            .ok()
            .filter(|v| {
                B64.decode(v)
                    .is_ok_and(|d| d.len() == algorithm.digest_len())
            })
            .ok_or_else(|| invalid(algorithm.header()))?;
        return Ok(Spec {
            algorithm,
            expected: Expected::Header(value.to_owned()),
            defaulted: false,
        });
    }
    if let Some(name) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
        let algorithm = Algorithm::from_header(name).ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                format!("The value specified in the x-amz-trailer header is not supported: {name}"),
            )
        })?;
        let Some(t) = trailers else {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "x-amz-trailer needs a body sent with Content-Encoding: aws-chunked",
            ));
        };
        return Ok(Spec {
            algorithm,
            expected: Expected::Trailer(t.clone()),
            defaulted: false,
        });
    }
    let named = ["x-amz-checksum-algorithm", "x-amz-sdk-checksum-algorithm"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()));
    let algorithm = match named {
        Some(n) => Algorithm::from_name(n).ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                format!("Checksum algorithm provided is unsupported: {n}"),
            )
        })?,
        None => Algorithm::Crc64Nvme,
    };
    Ok(Spec {
        algorithm,
        expected: Expected::Nothing,
        defaulted: named.is_none(),
    })
}

/// Hashes `body` as it streams: the stream to hand on, and the check the store runs once
/// it has been read.
pub fn hashing(body: ByteStream, spec: Spec) -> (ByteStream, BodyCheck) {
    let hasher = Arc::new(Mutex::new(Hasher::new(spec.algorithm)));
    let h = hasher.clone();
    let body = body
        .map(move |chunk| {
            if let (Ok(bytes), Ok(mut h)) = (&chunk, h.lock()) {
                h.update(bytes);
            }
            chunk
        })
        .boxed();
    let Spec {
        algorithm,
        expected,
        ..
    } = spec;
    let check = BodyCheck(Arc::new(move || {
        let computed = hasher
            .lock()
            .map_err(|_| StoreError::Backend("a checksum's state is poisoned".into()))?
            .value();
        let want = match &expected {
            Expected::Nothing => None,
            Expected::Header(v) => Some(v.clone()),
            Expected::Trailer(t) => {
                let v = t
                    .read(|h| {
                        h.get(algorithm.header())
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    })
                    .flatten();
                match v {
                    Some(v) => Some(v),
                    None => {
                        return Err(StoreError::BadChecksum(format!(
                            "The {} trailer the request announced was not sent.",
                            algorithm.header()
                        )));
                    }
                }
            }
        };
        if let Some(want) = want
            && want.trim() != computed
        {
            return Err(StoreError::BadChecksum(format!(
                "The {} you specified did not match the calculated checksum.",
                algorithm.name()
            )));
        }
        Ok(Some((algorithm.name().to_owned(), computed)))
    }));
    (body, check)
}

/// The checksum a CreateMultipartUpload asks for (`x-amz-checksum-algorithm`,
/// `x-amz-checksum-type`), as (algorithm, `FULL_OBJECT` | `COMPOSITE`): the type defaults to
/// FULL_OBJECT for CRC64NVME and COMPOSITE otherwise; FULL_OBJECT takes CRCs only and
/// CRC64NVME is always FULL_OBJECT, as on S3.
pub fn multipart_request(
    algorithm: Option<&str>,
    kind: Option<&str>,
) -> Result<Option<(String, String)>, S3Error> {
    let refuse = |m: String| S3Error::with_message(S3ErrorCode::InvalidRequest, m);
    let Some(name) = algorithm else {
        if kind.is_some() {
            return Err(refuse(
                "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header.".into(),
            ));
        }
        return Ok(None);
    };
    let a = Algorithm::from_name(name).ok_or_else(|| {
        S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("Value for x-amz-checksum-algorithm header is invalid: {name}"),
        )
    })?;
    let crc = !matches!(a, Algorithm::Sha1 | Algorithm::Sha256);
    let kind = match kind {
        None if a == Algorithm::Crc64Nvme => "FULL_OBJECT",
        None => "COMPOSITE",
        Some(k) if k.eq_ignore_ascii_case("FULL_OBJECT") && crc => "FULL_OBJECT",
        Some(k) if k.eq_ignore_ascii_case("COMPOSITE") && a != Algorithm::Crc64Nvme => "COMPOSITE",
        Some(k) => {
            return Err(refuse(format!(
                "The {k} checksum type cannot be used with the {} checksum algorithm.",
                a.name().to_lowercase()
            )));
        }
    };
    Ok(Some((a.name().to_owned(), kind.to_owned())))
}

/// The checksum of a completed multipart object, from its parts' (algorithm, base64 value,
/// size) in order: for `full_object` (CRCs only; CRC64NVME always) the CRC of the whole
/// object, combined from the parts'; otherwise S3's composite, the checksum of the
/// concatenated part checksums with `-N` appended. `None` when a part has no checksum or
/// the parts' algorithms differ.
pub fn multipart_checksum(
    parts: &[(Option<&(String, String)>, u64)],
    full_object: bool,
) -> Option<(String, String)> {
    let first = parts.first()?.0?;
    let algorithm = Algorithm::from_name(&first.0)?;
    let mut raw = Vec::with_capacity(parts.len());
    for (sum, size) in parts {
        let (name, value) = (*sum)?;
        if Algorithm::from_name(name) != Some(algorithm) {
            return None;
        }
        raw.push((B64.decode(value).ok()?, *size));
    }
    let crc = match algorithm {
        Algorithm::Crc32 => Some(crc_fast::CrcAlgorithm::Crc32IsoHdlc),
        Algorithm::Crc32c => Some(crc_fast::CrcAlgorithm::Crc32Iscsi),
        Algorithm::Crc64Nvme => Some(crc_fast::CrcAlgorithm::Crc64Nvme),
        Algorithm::Sha1 | Algorithm::Sha256 => None,
    };
    if let Some(crc) = crc.filter(|_| full_object || algorithm == Algorithm::Crc64Nvme) {
        let width = algorithm.digest_len();
        let value = |d: &[u8]| d.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let mut iter = raw.iter();
        let (d, _) = iter.next()?;
        let mut whole = value(d);
        for (d, size) in iter {
            whole = crc_fast::checksum_combine(crc, whole, value(d), *size);
        }
        let bytes = whole.to_be_bytes();
        return Some((algorithm.name().to_owned(), B64.encode(&bytes[8 - width..])));
    }
    let mut h = Hasher::new(algorithm);
    for (d, _) in &raw {
        h.update(d);
    }
    Some((
        algorithm.name().to_owned(),
        format!("{}-{}", h.value(), raw.len()),
    ))
}

/// The value of `algorithm` a request's headers carry (`x-amz-checksum-…`), if any.
pub fn header_value(headers: &http::HeaderMap, algorithm: &str) -> Option<String> {
    let a = Algorithm::from_name(algorithm)?;
    headers
        .get(a.header())
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Sets the `checksum_<algorithm>` field of an output to `value`, by the stored name.
#[macro_export]
#[doc(hidden)]
macro_rules! checksum_out {
    ($out:expr, $sum:expr) => {
        if let Some((name, value)) = $sum {
            match name.as_str() {
                "CRC32" => $out.checksum_crc32 = Some(value.clone()),
                "CRC32C" => $out.checksum_crc32c = Some(value.clone()),
                "CRC64NVME" => $out.checksum_crc64nvme = Some(value.clone()),
                "SHA1" => $out.checksum_sha1 = Some(value.clone()),
                "SHA256" => $out.checksum_sha256 = Some(value.clone()),
                _ => {}
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of "hello world" as S3 and the AWS SDKs compute them.
    #[test]
    fn values_match_the_sdks() {
        let value = |a| {
            let mut h = Hasher::new(a);
            h.update(b"hello ");
            h.update(b"world");
            h.value()
        };
        assert_eq!(value(Algorithm::Crc32), "DUoRhQ==");
        assert_eq!(value(Algorithm::Crc32c), "yZRlqg==");
        assert_eq!(value(Algorithm::Crc64Nvme), "jSnVw/bqjr4=");
        assert_eq!(value(Algorithm::Sha1), "Kq5sNclPz7QV2+lfQIuc6R7oRu0=");
        assert_eq!(
            value(Algorithm::Sha256),
            "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="
        );
    }

    /// A full-object CRC combined from the parts' is the CRC of the whole; a composite is
    /// the checksum of the parts' checksums, with the part count.
    #[test]
    fn multipart_checksums_combine_the_parts() {
        let sum = |a, data: &[u8]| {
            let mut h = Hasher::new(a);
            h.update(data);
            (a.name().to_owned(), h.value())
        };
        let (one, two) = (b"first part ".as_slice(), b"and the second".as_slice());
        for a in [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64Nvme] {
            let (p1, p2) = (sum(a, one), sum(a, two));
            let whole = multipart_checksum(
                &[(Some(&p1), one.len() as u64), (Some(&p2), two.len() as u64)],
                true,
            );
            assert_eq!(whole, Some(sum(a, b"first part and the second")), "{a:?}");
        }
        let (p1, p2) = (sum(Algorithm::Sha256, one), sum(Algorithm::Sha256, two));
        let composite =
            multipart_checksum(&[(Some(&p1), 11), (Some(&p2), 14)], true).expect("composite");
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(&B64.decode(&p1.1).expect("b64"));
        h.update(&B64.decode(&p2.1).expect("b64"));
        assert_eq!(composite.1, format!("{}-2", h.value()));
        assert_eq!(
            multipart_checksum(&[(Some(&p1), 1), (None, 1)], false),
            None
        );
        let crc = sum(Algorithm::Crc32, one);
        assert_eq!(
            multipart_checksum(&[(Some(&p1), 1), (Some(&crc), 1)], false),
            None
        );
    }
}
