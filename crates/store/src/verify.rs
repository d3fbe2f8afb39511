//! Integrity of bytes at rest: reads that check what they serve against the digest that
//! was written with it.
//!
//! *Decision: the digest is the one the store already keeps.* Every object row has carried
//! the SHA-256 of the object's bytes since the first store migration (`store-0001`,
//! `sha256 TEXT NOT NULL`), written in the same transaction as the row, for inline and blob
//! objects alike, and every part of a multipart upload carries the MD5 of its bytes (its
//! ETag). Reusing them means no migration, no backfill, and rows written by every earlier
//! version are verified like new ones. The cost is the hash: SHA-256 runs at ~1.7 GB/s on
//! one core with the SHA extensions (`openssl speed`, this project's 2-core machine), above
//! what a download over the network or a blob read from disk delivers; a CRC32C column would
//! be cheaper still but would cover only rows written after its migration.
//!
//! A digest covers a whole object, so it verifies reads of the whole object (a range that
//! happens to cover all of it counts as whole). Ranged reads are verified block by block:
//! every blob object written since migration `store-0005` also carries the CRC-32 of each
//! [`BLOCK`] of its bytes (4 bytes per MiB, computed as the blob is written, with the
//! SHA-256). A ranged read reads from the start of the first block it touches to the end of
//! the last, checks each block before any of its bytes leave, and yields only the bytes
//! asked for ([`verified_blocks`]): at most one block is held in memory. Inline objects are
//! in memory anyway and are checked whole whatever the range. Blob objects written before
//! `store-0005` have no block CRCs: their ranged reads are not verified (`sluice doctor
//! --deep` still checks them whole).
//!
//! A streamed read cannot take bytes back. [`verified`] therefore holds back the verdict
//! *and the chunk that completes the object*: it hashes every chunk as it passes and, when
//! the chunk that reaches the recorded size arrives, checks the digest before yielding it.
//! A mismatch (or a blob shorter or longer than its row says) ends the stream with an
//! error item ([`std::io::ErrorKind::InvalidData`] wrapping a [`Damage`]) instead of that
//! last chunk, and logs an error line naming the object and its blob. An HTTP server that
//! streams such a body aborts the response, so a client sees a failed, truncated transfer
//! — never a complete body of the declared length with bad bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::ByteStream;

/// The digest an object's (or a part's) bytes must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// SHA-256 (objects: `objects.sha256`).
    Sha256([u8; 32]),
    /// MD5 (parts of multipart uploads: `multipart_parts.etag`).
    Md5([u8; 16]),
}

impl Expected {
    /// The SHA-256 stored in hex, or `None` when the text is not a SHA-256 digest (no row
    /// written by any version of sluice has such a value; such a row is served unverified
    /// and `sluice doctor --deep` reports it).
    pub fn sha256_hex(hex_digest: &str) -> Option<Expected> {
        let v = hex::decode(hex_digest).ok()?;
        <[u8; 32]>::try_from(v).ok().map(Expected::Sha256)
    }

    /// An MD5 stored in hex (a part's ETag), or `None` when the text is not one.
    pub fn md5_hex(hex_digest: &str) -> Option<Expected> {
        let v = hex::decode(hex_digest.trim_matches('"')).ok()?;
        <[u8; 16]>::try_from(v).ok().map(Expected::Md5)
    }

    fn name(&self) -> &'static str {
        match self {
            Expected::Sha256(_) => "SHA-256",
            Expected::Md5(_) => "MD5",
        }
    }
}

/// Which stored bytes a verification is about: named in its log line and its error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub bucket: String,
    pub key: String,
    /// The multipart upload and part number, for a part.
    pub part: Option<(String, u32)>,
    /// The blob holding the bytes (`None`: inline in the row).
    pub blob: Option<String>,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.part {
            Some((upload, n)) => write!(
                f,
                "part {n} of upload {upload} ({}/{})",
                self.bucket, self.key
            )?,
            None => write!(f, "object {}/{}", self.bucket, self.key)?,
        }
        match &self.blob {
            Some(b) => write!(f, " (blob {b})"),
            None => write!(f, " (inline)"),
        }
    }
}

/// Stored bytes that do not match what was written: the digest differs, or there are
/// fewer or more bytes than recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{subject}: {detail}")]
pub struct Damage {
    pub subject: Subject,
    pub detail: String,
}

impl Damage {
    /// The damage an error item of a [`verified`] stream carries, if it is one.
    pub fn of(e: &std::io::Error) -> Option<&Damage> {
        e.get_ref()?.downcast_ref::<Damage>()
    }

    /// As the error item of a stream (what [`verified`] yields).
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }
}

/// What a deep check ([`crate::embedded::EmbeddedStore::scrub`]) found wrong with one
/// object or part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The bytes are there but do not match their digest or size.
    #[error("{0}")]
    Damaged(Damage),
    /// The row names a blob the engine does not have.
    #[error("{0}: its blob is missing")]
    Missing(Subject),
    /// The blob could not be read (an i/o error of the engine).
    #[error("{0}: cannot be read: {1}")]
    Unreadable(Subject, String),
    /// The row holds no digest its bytes could be checked against (no version of sluice
    /// writes such a row; one found was changed by hand or damaged).
    #[error("{0}: has no checksum to verify (recorded: {1:?})")]
    NoChecksum(Subject, String),
}

/// The outcome of a deep check: what was read and what was wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Objects whose bytes were read and checked.
    pub objects: u64,
    /// Parts of multipart uploads in progress, read and checked.
    pub parts: u64,
    /// Bytes read.
    pub bytes: u64,
    pub problems: Vec<Problem>,
}

enum Hasher {
    Sha256(Box<Sha256>),
    Md5(Md5),
}

/// A running check of bytes against their recorded size and digest.
struct Check {
    hasher: Hasher,
    expected: Expected,
    size: u64,
    seen: u64,
}

impl Check {
    fn new(expected: Expected, size: u64) -> Check {
        let hasher = match expected {
            Expected::Sha256(_) => Hasher::Sha256(Box::default()),
            Expected::Md5(_) => Hasher::Md5(Md5::default()),
        };
        Check {
            hasher,
            expected,
            size,
            seen: 0,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.seen += bytes.len() as u64;
        match &mut self.hasher {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Md5(h) => h.update(bytes),
        }
    }

    /// The verdict, once every byte went through [`update`](Self::update): `Err` with what
    /// is wrong.
    fn finish(self) -> Result<(), String> {
        if self.seen != self.size {
            return Err(format!(
                "holds {} bytes where {} were written",
                self.seen, self.size
            ));
        }
        let ok = match (self.hasher, self.expected) {
            (Hasher::Sha256(h), Expected::Sha256(want)) => want[..] == h.finalize()[..],
            (Hasher::Md5(h), Expected::Md5(want)) => want[..] == h.finalize()[..],
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "its {} does not match the one written with it",
                self.expected.name()
            ))
        }
    }
}

/// Logs the damage (one error line naming the object and its blob) and returns it.
fn reported(subject: &Subject, detail: String) -> Damage {
    let damage = Damage {
        subject: subject.clone(),
        detail,
    };
    tracing::error!(
        bucket = %damage.subject.bucket,
        key = %damage.subject.key,
        blob = damage.subject.blob.as_deref().unwrap_or("inline"),
        "stored bytes are damaged, refusing to serve them: {damage}"
    );
    damage
}

/// Checks bytes held in memory (an inline object, a part) against their digest; logs and
/// returns the damage when they do not match.
pub fn verify_bytes(
    bytes: &[u8],
    expected: Expected,
    size: u64,
    subject: &Subject,
) -> Result<(), Box<Damage>> {
    let mut check = Check::new(expected, size);
    check.update(bytes);
    check.finish().map_err(|d| Box::new(reported(subject, d)))
}

/// `body` (the whole of the bytes `subject` names), checked against `size` and `expected`
/// as it streams: see the module's documentation. Holds no more than the chunk in hand.
pub fn verified(body: ByteStream, expected: Expected, size: u64, subject: Subject) -> ByteStream {
    Box::pin(Verified {
        inner: body,
        check: Some(Check::new(expected, size)),
        subject,
        done: false,
    })
}

struct Verified {
    inner: ByteStream,
    /// `None` once the verdict is in (passed).
    check: Option<Check>,
    subject: Subject,
    /// The stream ended, or failed (nothing more is read after an error).
    done: bool,
}

impl Verified {
    fn fail(&mut self, detail: String) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.done = true;
        self.check = None;
        Poll::Ready(Some(Err(reported(&self.subject, detail).into_io())))
    }
}

impl Stream for Verified {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(chunk))) => {
                let Some(check) = self.check.as_mut() else {
                    // Verified already: only empty chunks may follow.
                    if chunk.is_empty() {
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    return self.fail("holds more bytes than were written".into());
                };
                check.update(&chunk);
                if check.seen < check.size {
                    return Poll::Ready(Some(Ok(chunk)));
                }
                // This chunk completes the object (or overruns it): the verdict before it
                // leaves.
                let Some(check) = self.check.take() else {
                    return self.fail("lost its check".into());
                };
                match check.finish() {
                    Ok(()) => Poll::Ready(Some(Ok(chunk))),
                    Err(detail) => self.fail(detail),
                }
            }
            Poll::Ready(None) => {
                self.done = true;
                match self.check.take() {
                    None => Poll::Ready(None),
                    // Ends before the recorded size (or an empty object: checked here).
                    Some(check) => match check.finish() {
                        Ok(()) => Poll::Ready(None),
                        Err(detail) => {
                            Poll::Ready(Some(Err(reported(&self.subject, detail).into_io())))
                        }
                    },
                }
            }
        }
    }
}

/// Size of the blocks whose CRC-32 ranged reads are checked against.
pub const BLOCK: u64 = 1 << 20;

/// The CRC-32 of each [`BLOCK`] of bytes written in order: what a blob object's row keeps.
#[derive(Default)]
pub struct BlockCrcs {
    current: crc32fast::Hasher,
    in_block: u64,
    crcs: Vec<u8>,
}

impl BlockCrcs {
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = (BLOCK - self.in_block) as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.current.update(now);
            self.in_block += now.len() as u64;
            if self.in_block == BLOCK {
                let done = std::mem::take(&mut self.current);
                self.crcs.extend(done.finalize().to_be_bytes());
                self.in_block = 0;
            }
            bytes = rest;
        }
    }

    /// The CRCs, 4 bytes (big-endian) per block, the last block possibly short.
    pub fn finish(mut self) -> Vec<u8> {
        if self.in_block > 0 {
            self.crcs
                .extend(std::mem::take(&mut self.current).finalize().to_be_bytes());
        }
        self.crcs
    }
}

/// The span a ranged read of `first..=last` reads so that every block it touches can be
/// checked: from the first block's start to the last block's end (or the object's).
pub fn block_span(first: u64, last: u64, size: u64) -> (u64, u64) {
    let start = first / BLOCK * BLOCK;
    let end = (last / BLOCK + 1)
        .saturating_mul(BLOCK)
        .min(size)
        .saturating_sub(1);
    (start, end)
}

/// `body` — the bytes of [`block_span`]`(first, last, size)` of an object — checked block by
/// block against `crcs`, yielding only `first..=last`. A block that does not match (or a
/// body that ends early or runs long) ends the stream with an error item, as [`verified`]
/// does, before any byte of that block leaves.
pub fn verified_blocks(
    body: ByteStream,
    crcs: Vec<u8>,
    size: u64,
    first: u64,
    last: u64,
    subject: Subject,
) -> ByteStream {
    let (start, end) = block_span(first, last, size);
    Box::pin(VerifiedBlocks {
        inner: body,
        crcs,
        size,
        first,
        last,
        end,
        block_start: start,
        buf: bytes::BytesMut::new(),
        subject,
        done: false,
    })
}

struct VerifiedBlocks {
    inner: ByteStream,
    crcs: Vec<u8>,
    size: u64,
    first: u64,
    last: u64,
    /// Last byte of the span read.
    end: u64,
    /// Offset in the object of the block being gathered.
    block_start: u64,
    buf: bytes::BytesMut,
    subject: Subject,
    done: bool,
}

impl VerifiedBlocks {
    fn fail(&mut self, detail: String) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.done = true;
        self.buf.clear();
        Poll::Ready(Some(Err(reported(&self.subject, detail).into_io())))
    }

    fn block_len(&self) -> u64 {
        BLOCK.min(self.size - self.block_start)
    }

    /// Checks the gathered block; the part of it that was asked for.
    fn check_block(&mut self) -> Result<Bytes, String> {
        let index = (self.block_start / BLOCK) as usize;
        let want = self
            .crcs
            .get(index * 4..index * 4 + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| format!("has no CRC for block {index}"))?;
        let len = self.block_len() as usize;
        let block = self.buf.split_to(len).freeze();
        if crc32fast::hash(&block) != want {
            return Err(format!(
                "block {index} (bytes {}-{}) does not match the CRC-32 written with it",
                self.block_start,
                self.block_start + len as u64 - 1
            ));
        }
        let from = self.first.saturating_sub(self.block_start) as usize;
        let to = (self.last + 1 - self.block_start).min(len as u64) as usize;
        self.block_start += len as u64;
        Ok(block.slice(from.min(to)..to))
    }
}

impl Stream for VerifiedBlocks {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if self.block_start > self.end {
                // Every block of the span is out: nothing more may come.
                if !self.buf.is_empty() {
                    return self.fail("holds more bytes than were written".into());
                }
                match self.inner.poll_next_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(chunk))) if chunk.is_empty() => continue,
                    Poll::Ready(Some(Ok(_))) => {
                        return self.fail("holds more bytes than were written".into());
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(None) => {
                        self.done = true;
                        return Poll::Ready(None);
                    }
                }
            }
            if self.buf.len() as u64 >= self.block_len() {
                match self.check_block() {
                    Ok(part) if part.is_empty() => continue,
                    Ok(part) => return Poll::Ready(Some(Ok(part))),
                    Err(detail) => return self.fail(detail),
                }
            }
            match self.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let (at, len) = (self.block_start, self.buf.len());
                    return self.fail(format!(
                        "ends {len} bytes into the block at {at}, short of the recorded size"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            bucket: "b".into(),
            key: "k".into(),
            part: None,
            blob: Some("0".repeat(32)),
        }
    }

    fn chunks(data: &[u8], n: usize) -> ByteStream {
        let items: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(n)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures_util::stream::iter(items))
    }

    fn sha(data: &[u8]) -> Expected {
        Expected::Sha256(Sha256::digest(data).into())
    }

    /// Every item of a stream: the bytes before the first error, and that error.
    async fn drain(mut s: ByteStream) -> (Vec<u8>, Option<std::io::Error>) {
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => {
                    assert!(s.next().await.is_none(), "nothing follows an error");
                    return (out, Some(e));
                }
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn intact_bytes_pass_whole() {
        let data: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
        for n in [1usize, 7_000, 100_000] {
            let (got, err) = drain(verified(
                chunks(&data, n),
                sha(&data),
                data.len() as u64,
                subject(),
            ))
            .await;
            assert!(err.is_none(), "{err:?}");
            assert_eq!(got, data);
        }
        let md5 = Expected::Md5(Md5::digest(&data).into());
        let (got, err) = drain(verified(chunks(&data, 999), md5, 100_000, subject())).await;
        assert!(err.is_none() && got == data);
        let (got, err) = drain(verified(chunks(&[], 1), sha(&[]), 0, subject())).await;
        assert!(err.is_none() && got.is_empty());
    }

    #[tokio::test]
    async fn a_flipped_byte_fails_before_the_last_chunk_leaves() {
        let data: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
        let mut bad = data.clone();
        bad[50_000] ^= 0x01;
        let (got, err) = drain(verified(
            chunks(&bad, 30_000),
            sha(&data),
            data.len() as u64,
            subject(),
        ))
        .await;
        let err = err.expect("a damaged blob fails");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let damage = Damage::of(&err).expect("carries the damage");
        assert_eq!(damage.subject, subject());
        assert!(damage.detail.contains("SHA-256"), "{damage}");
        assert_eq!(
            got.len(),
            90_000,
            "the chunk completing the object is held back"
        );
    }

    #[tokio::test]
    async fn short_and_long_blobs_fail() {
        let data = vec![9u8; 10_000];
        let (got, err) = drain(verified(
            chunks(&data[..9_000], 1_000),
            sha(&data),
            10_000,
            subject(),
        ))
        .await;
        assert!(Damage::of(&err.expect("short")).is_some());
        assert_eq!(got.len(), 9_000);
        let mut long = data.clone();
        long.push(1);
        let (got, err) = drain(verified(
            chunks(&long, 3_000),
            sha(&data),
            10_000,
            subject(),
        ))
        .await;
        assert!(Damage::of(&err.expect("long")).is_some());
        assert!(got.len() < 10_000, "{}", got.len());
        // An engine error passes through unchanged.
        let failing: ByteStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("disk")),
        ]));
        let (_, err) = drain(verified(failing, sha(b"abcd"), 4, subject())).await;
        let err = err.expect("engine error");
        assert!(Damage::of(&err).is_none() && err.to_string() == "disk");
    }

    #[test]
    fn bytes_in_memory_and_hex_digests() {
        let want = Expected::sha256_hex(&hex::encode(Sha256::digest(b"abc"))).expect("hex");
        assert!(verify_bytes(b"abc", want, 3, &subject()).is_ok());
        let d = verify_bytes(b"abd", want, 3, &subject()).expect_err("damaged");
        assert!(d.to_string().starts_with("object b/k (blob 000"), "{d}");
        assert!(verify_bytes(b"ab", want, 3, &subject()).is_err());
        assert_eq!(Expected::sha256_hex(""), None);
        assert_eq!(Expected::sha256_hex("zz"), None);
        let md5 = Expected::md5_hex(&format!("\"{}\"", hex::encode(Md5::digest(b"x"))));
        assert!(matches!(md5, Some(Expected::Md5(_))));
        assert_eq!(Expected::md5_hex("abc-2"), None);
    }

    fn chunked(bytes: &[u8], size: usize) -> ByteStream {
        let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures_util::stream::iter(chunks))
    }

    async fn collect_all(mut body: ByteStream) -> (Vec<u8>, Option<std::io::Error>) {
        let mut got = Vec::new();
        while let Some(item) = body.next().await {
            match item {
                Ok(c) => got.extend_from_slice(&c),
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    }

    #[test]
    fn block_crcs_are_per_block_whatever_the_chunking() {
        let data: Vec<u8> = (0..(2 * BLOCK + 12_345)).map(|i| (i % 241) as u8).collect();
        let mut crcs = BlockCrcs::default();
        for c in data.chunks(70_001) {
            crcs.update(c);
        }
        let want: Vec<u8> = data
            .chunks(BLOCK as usize)
            .flat_map(|b| crc32fast::hash(b).to_be_bytes())
            .collect();
        assert_eq!(crcs.finish(), want);
        assert!(BlockCrcs::default().finish().is_empty());
        assert_eq!(block_span(5, 10, 3 * BLOCK), (0, BLOCK - 1));
        assert_eq!(block_span(BLOCK, BLOCK, 3 * BLOCK), (BLOCK, 2 * BLOCK - 1));
        assert_eq!(
            block_span(BLOCK - 1, 2 * BLOCK + 3, 2 * BLOCK + 9),
            (0, 2 * BLOCK + 8)
        );
    }

    #[tokio::test]
    async fn verified_blocks_serve_the_range_and_refuse_what_does_not_match() {
        let size = 2 * BLOCK + 1000;
        let data: Vec<u8> = (0..size).map(|i| (i % 239) as u8).collect();
        let mut crcs = BlockCrcs::default();
        crcs.update(&data);
        let crcs = crcs.finish();
        let span = |first: u64, last: u64, bytes: &[u8]| {
            let (s, e) = block_span(first, last, size);
            chunked(&bytes[s as usize..=e as usize], 65_536)
        };
        let (got, err) = collect_all(verified_blocks(
            span(BLOCK - 10, BLOCK + 10, &data),
            crcs.clone(),
            size,
            BLOCK - 10,
            BLOCK + 10,
            subject(),
        ))
        .await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, data[(BLOCK - 10) as usize..=(BLOCK + 10) as usize]);

        // A flipped byte in the second block: the first block's part leaves, nothing of
        // the second.
        let mut bad = data.clone();
        bad[(BLOCK + 500) as usize] ^= 1;
        let (got, err) = collect_all(verified_blocks(
            span(BLOCK - 10, BLOCK + 10, &bad),
            crcs.clone(),
            size,
            BLOCK - 10,
            BLOCK + 10,
            subject(),
        ))
        .await;
        let err = err.expect("damage found");
        assert!(
            Damage::of(&err).is_some_and(|d| d.detail.contains("block 1")),
            "{err}"
        );
        assert_eq!(got.len(), 10, "only the intact block's bytes");

        // Short and long bodies are damage too.
        let (s, e) = block_span(0, 5, size);
        let short = chunked(&data[s as usize..(e as usize - 1)], 65_536);
        let (_, err) =
            collect_all(verified_blocks(short, crcs.clone(), size, 0, 5, subject())).await;
        assert!(err.is_some_and(|e| Damage::of(&e).is_some()));
        let long = chunked(&data[s as usize..=(e as usize + 1)], 65_536);
        let (_, err) = collect_all(verified_blocks(long, crcs, size, 0, 5, subject())).await;
        assert!(err.is_some_and(|e| Damage::of(&e).is_some()));
    }
}
