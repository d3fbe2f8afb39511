//! The S3 request values sluice reads itself, and the XML request bodies s3s parses for it.
//!
//! Input: the first line is a header or query value, given to every value parser
//! (`x-amz-copy-source-range`, `Content-MD5`, a list continuation token, `Range`,
//! `x-amz-copy-source`, `partNumber`); split at tabs it is a key, a prefix and a delimiter
//! for the folding of listings into common prefixes. The rest is an XML body, parsed as
//! s3s parses CompleteMultipartUpload and DeleteObjects bodies (the first then read into
//! the part list the store checks).
//!
//! Invariants: nothing panics; a parsed copy range formatted again parses to itself;
//! continuation tokens round-trip; a satisfiable range or part lies within the object; a
//! common prefix is the key's, starts with the prefix and ends with the delimiter; part
//! numbers are 1–10,000; a part list's numbers are those of the body. (Whether s3s writes
//! back what it parsed is s3s's business, not checked here: it writes control characters
//! raw, and an ETag holding quotes does not parse again.)
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use s3s::dto::{CompletedMultipartUpload, CopySource, Delete, Range};
use s3s::xml::{Deserialize, Deserializer};
use sluice_compat::fuzzing::s3 as f;
use sluice_fuzz::split_line;

fuzz_target!(|data: &[u8]| {
    let Some((value, xml)) = split_line(data) else {
        return;
    };
    values(value, data);
    if let Some(body) = parse_xml::<CompletedMultipartUpload>(xml) {
        let given: Vec<Option<i32>> = body.parts.iter().flatten().map(|p| p.part_number).collect();
        if let Ok(parts) = f::completion_parts(Some(body)) {
            let read: Vec<Option<i32>> = parts
                .iter()
                .map(|(n, _)| Some(i32::try_from(*n).expect("a part number from an i32")))
                .collect();
            assert_eq!(read, given);
        }
    }
    let _ = parse_xml::<Delete>(xml);
});

fn values(value: &str, data: &[u8]) {
    if let Ok(r) = f::parse_copy_range(value) {
        let again = format!("bytes={}-{}", r.first, r.last);
        assert_eq!(f::parse_copy_range(&again).ok(), Some(r), "{value:?}");
    }
    if let Ok(Some(md5)) = f::content_md5(Some(value)) {
        let again = base64::engine::general_purpose::STANDARD.encode(md5);
        assert_eq!(f::content_md5(Some(&again)).ok(), Some(Some(md5)));
    }
    assert_eq!(
        f::decode_token(&f::encode_token(value)).ok().as_deref(),
        Some(value)
    );
    let _ = f::decode_token(value);
    // Sizes and parts from the input's last bytes.
    let n = |i: usize| u64::from(*data.get(data.len().wrapping_sub(i + 1)).unwrap_or(&0));
    let parts = [(1u32, n(0) * 7), (2, n(1)), (4, n(2) * 300)];
    let total: u64 = parts.iter().map(|p| p.1).sum();
    if let Ok(range) = Range::parse(value) {
        for size in [0, 1, n(3), total, u64::MAX / 2] {
            match f::select(size, Some(&range), None, &[]) {
                Ok((Some(r), None)) => assert!(r.start < r.end && r.end <= size, "{r:?} of {size}"),
                // A range that selects nothing of an empty object: the whole object.
                Ok((None, None)) => assert_eq!(size, 0),
                Ok(other) => panic!("a range selected {other:?}"),
                Err(_) => {}
            }
        }
    }
    if let Ok(number) = value.trim().parse::<i32>() {
        if let Ok(p) = f::part_number(number) {
            assert!((1..=10_000).contains(&p));
        }
        for (size, parts) in [(total, &parts[..]), (n(3), &[][..])] {
            if let Ok((Some(r), _)) = f::select(size, None, Some(number), parts) {
                assert!(r.start < r.end && r.end <= size, "{r:?} of {size}");
            }
        }
    }
    if let Ok(source) = CopySource::parse(value) {
        let _ = f::copy_source(&source);
    }
    let mut pieces = value.splitn(3, '\t');
    if let (Some(key), Some(prefix), Some(delimiter)) =
        (pieces.next(), pieces.next(), pieces.next())
        && !delimiter.is_empty()
        && let Some(common) = f::fold(key, prefix, delimiter)
    {
        assert!(
            key.starts_with(common) && common.starts_with(prefix) && common.ends_with(delimiter)
        );
        assert!(!common[prefix.len()..common.len() - delimiter.len()].contains(delimiter));
    }
    let _ = f::upload_filename(value);
}

/// As s3s reads a request's XML body.
fn parse_xml<T: for<'x> Deserialize<'x>>(xml: &[u8]) -> Option<T> {
    let mut d = Deserializer::new(xml);
    let v = T::deserialize(&mut d).ok()?;
    d.expect_eof().ok()?;
    Some(v)
}
