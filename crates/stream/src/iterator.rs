//! Shard iterators: opaque to clients, tamper-evident (HMAC-SHA256 under a key kept with the
//! stream data, so iterators survive a restart), and expiring after five minutes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{ITERATOR_TTL_MS, StreamError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Position {
    /// Stream name.
    pub(crate) s: String,
    /// Stream creation time: an iterator of a deleted and re-created stream is refused.
    pub(crate) g: i64,
    /// Shard index.
    pub(crate) h: u64,
    /// Next counter to read.
    pub(crate) p: u64,
    /// Issued at (ms).
    pub(crate) t: i64,
}

pub(crate) fn encode(key: &[u8], pos: &Position) -> String {
    seal(key, ITERATOR_DOMAIN, pos)
}

pub(crate) fn decode(key: &[u8], iterator: &str, now_ms: i64) -> Result<Position, StreamError> {
    let invalid = || StreamError::InvalidArgument("invalid shard iterator".into());
    if iterator.len() > 512 {
        return Err(invalid());
    }
    let pos: Position = open(key, ITERATOR_DOMAIN, iterator).ok_or_else(invalid)?;
    if now_ms - pos.t > ITERATOR_TTL_MS {
        return Err(StreamError::ExpiredIterator(format!(
            "iterator expired: issued {} ms ago, iterators are valid for {} ms",
            now_ms - pos.t,
            ITERATOR_TTL_MS
        )));
    }
    Ok(pos)
}

/// The stream named in a shard iterator or a list token sealed under `key`: every such
/// token carries it as `s`.
pub(crate) fn token_stream(key: &[u8], token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        s: String,
    }
    [ITERATOR_DOMAIN, LIST_SHARDS_DOMAIN, LIST_CONSUMERS_DOMAIN]
        .iter()
        .find_map(|domain| open::<Named>(key, domain, token))
        .map(|n| n.s)
}

const ITERATOR_DOMAIN: &[u8] = b"sluice-shard-iterator\0";
pub(crate) const LIST_SHARDS_DOMAIN: &[u8] = b"sluice-list-shards\0";
pub(crate) const LIST_STREAMS_DOMAIN: &[u8] = b"sluice-list-streams\0";
pub(crate) const LIST_CONSUMERS_DOMAIN: &[u8] = b"sluice-list-consumers\0";

/// Serializes `value` and appends an HMAC over `domain` and the payload. The domain keeps a
/// token of one kind from being accepted as another.
pub(crate) fn seal<T: Serialize>(key: &[u8], domain: &[u8], value: &T) -> String {
    let payload = serde_json::to_vec(value).unwrap_or_default();
    let tag = mac(key, domain, &payload);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// The value sealed in `token`, or `None` if the token is malformed or was not sealed by
/// [`seal`] under the same key and domain.
pub(crate) fn open<T: DeserializeOwned>(key: &[u8], domain: &[u8], token: &str) -> Option<T> {
    if token.is_empty() || token.len() > 1024 {
        return None;
    }
    let (payload_b64, tag_b64) = token.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(payload_b64).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(tag_b64).ok()?;
    let mut m = new_mac(key);
    m.update(domain);
    m.update(&payload);
    m.verify_slice(&tag).ok()?;
    serde_json::from_slice(&payload).ok()
}

fn new_mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

fn mac(key: &[u8], domain: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = new_mac(key);
    m.update(domain);
    m.update(payload);
    m.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos() -> Position {
        Position {
            s: "s".into(),
            g: 1,
            h: 2,
            p: 3,
            t: 1_000,
        }
    }

    #[test]
    fn round_trip() {
        let it = encode(b"k", &pos());
        assert_eq!(decode(b"k", &it, 1_000).ok(), Some(pos()));
    }

    #[test]
    fn tampering_is_detected() {
        let it = encode(b"k", &pos());
        let mut other = pos();
        other.p = 0;
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).expect("json")),
            it.split_once('.').expect("dot").1
        );
        assert!(matches!(
            decode(b"k", &forged, 1_000),
            Err(StreamError::InvalidArgument(_))
        ));
        assert!(decode(b"other-key", &it, 1_000).is_err());
        assert!(decode(b"k", "garbage", 1_000).is_err());
        let other_kind = seal(b"k", LIST_SHARDS_DOMAIN, &pos());
        assert!(
            decode(b"k", &other_kind, 1_000).is_err(),
            "domains are separate"
        );
    }

    #[test]
    fn expires_after_five_minutes() {
        let it = encode(b"k", &pos());
        assert!(decode(b"k", &it, 1_000 + ITERATOR_TTL_MS).is_ok());
        assert!(matches!(
            decode(b"k", &it, 1_001 + ITERATOR_TTL_MS),
            Err(StreamError::ExpiredIterator(_))
        ));
    }
}
