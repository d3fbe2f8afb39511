//! The `application/vnd.amazon.eventstream` binary framing that AWS uses for streamed
//! responses (SubscribeToShard): each message is
//!
//! ```text
//! total length (u32 BE) | headers length (u32 BE) | prelude CRC32 (of the 8 bytes before)
//! headers | payload | message CRC32 (of every byte before it)
//! ```
//!
//! and each header is `name length (u8) | name | value type (u8) | value`. Only string values
//! (type 7: `u16 BE length | UTF-8`) are written here; the decoder reads them too, for tests.
//! CRC32 is the IEEE / gzip one (reflected polynomial 0xEDB88320).

use bytes::Bytes;

/// Bytes around headers and payload: prelude (8), prelude CRC (4), message CRC (4).
const OVERHEAD: usize = 16;
const STRING: u8 = 7;

/// CRC-32 (IEEE 802.3, as gzip and zlib).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Continues a CRC-32 over more bytes (`crc32_update(crc32(a), b) == crc32(a ++ b)`).
pub fn crc32_update(crc: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(crc);
    h.update(bytes);
    h.finalize()
}

/// Why a message cannot be framed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("header name {0:?} is longer than 255 bytes")]
    NameTooLong(String),
    #[error("header value of {0:?} is longer than 65535 bytes")]
    ValueTooLong(String),
    #[error("message of {0} bytes does not fit a 32-bit length")]
    TooLarge(usize),
}

/// One message with string headers, framed.
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Result<Bytes, FrameError> {
    let mut head = Vec::new();
    for (name, value) in headers {
        let n = u8::try_from(name.len()).map_err(|_| FrameError::NameTooLong((*name).into()))?;
        let v = u16::try_from(value.len()).map_err(|_| FrameError::ValueTooLong((*name).into()))?;
        head.push(n);
        head.extend_from_slice(name.as_bytes());
        head.push(STRING);
        head.extend_from_slice(&v.to_be_bytes());
        head.extend_from_slice(value.as_bytes());
    }
    let total = OVERHEAD + head.len() + payload.len();
    let total32 = u32::try_from(total).map_err(|_| FrameError::TooLarge(total))?;
    let head32 = u32::try_from(head.len()).map_err(|_| FrameError::TooLarge(total))?;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&total32.to_be_bytes());
    out.extend_from_slice(&head32.to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let message_crc = crc32(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    Ok(Bytes::from(out))
}

/// An event of a modeled event stream: `:message-type: event`.
pub fn event(event_type: &str, content_type: &str, payload: &[u8]) -> Result<Bytes, FrameError> {
    encode(
        &[
            (":event-type", event_type),
            (":content-type", content_type),
            (":message-type", "event"),
        ],
        payload,
    )
}

/// A modeled exception of an event stream: `:message-type: exception`.
pub fn exception(
    exception_type: &str,
    content_type: &str,
    payload: &[u8],
) -> Result<Bytes, FrameError> {
    encode(
        &[
            (":exception-type", exception_type),
            (":content-type", content_type),
            (":message-type", "exception"),
        ],
        payload,
    )
}

/// A decoded message (string headers only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes the first message of `buf`: `Ok(None)` if `buf` does not hold a whole message
/// yet, otherwise the message and the bytes it took. Checks both CRCs.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, String> {
    if buf.len() < 12 {
        return Ok(None);
    }
    let word = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let (total, head_len) = (word(0) as usize, word(4) as usize);
    if crc32(&buf[..8]) != word(8) {
        return Err("prelude CRC mismatch".into());
    }
    if total < OVERHEAD + head_len {
        return Err(format!(
            "total length {total} too small for {head_len} bytes of headers"
        ));
    }
    if buf.len() < total {
        return Ok(None);
    }
    if crc32(&buf[..total - 4]) != word(total - 4) {
        return Err("message CRC mismatch".into());
    }
    let mut headers = Vec::new();
    let mut h = &buf[12..12 + head_len];
    while !h.is_empty() {
        let n = h[0] as usize;
        let name = h.get(1..1 + n).ok_or("truncated header name")?;
        let rest = &h[1 + n..];
        if rest.first() != Some(&STRING) || rest.len() < 3 {
            return Err("only string headers are supported".into());
        }
        let v = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        let value = rest.get(3..3 + v).ok_or("truncated header value")?;
        headers.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        h = &rest[3 + v..];
    }
    Ok(Some((
        Message {
            headers,
            payload: buf[12 + head_len..total - 4].to_vec(),
        },
        total,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC (gzip, zlib, PNG).
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32_update(crc32(b"1234"), b"56789"), crc32(b"123456789"));
    }

    #[test]
    fn empty_message_vector() {
        // No headers, no payload: 16 bytes, both CRCs over the prelude only.
        let m = encode(&[], b"").expect("frame");
        assert_eq!(
            m.as_ref(),
            &[
                0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x05, 0xc2, 0x48, 0xeb, 0x7d, 0x98,
                0xc8, 0xff
            ]
        );
    }

    #[test]
    fn payload_only_vector() {
        // `{"foo": "bar"}` without headers, a published example of the framing.
        let m = encode(&[], br#"{"foo": "bar"}"#).expect("frame");
        let mut expected = vec![0, 0, 0, 30, 0, 0, 0, 0, 186, 242, 246, 138];
        expected.extend_from_slice(br#"{"foo": "bar"}"#);
        expected.extend_from_slice(&[174, 114, 88, 228]);
        assert_eq!(m.as_ref(), expected.as_slice());
    }

    #[test]
    fn string_header_vector() {
        // The same payload with `content-type: application/json`.
        let m = encode(
            &[("content-type", "application/json")],
            br#"{"foo": "bar"}"#,
        )
        .expect("frame");
        let mut expected = vec![0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70, 12];
        expected.extend_from_slice(b"content-type");
        expected.extend_from_slice(&[7, 0, 16]);
        expected.extend_from_slice(b"application/json");
        expected.extend_from_slice(br#"{"foo": "bar"}"#);
        expected.extend_from_slice(&[111, 162, 191, 59]);
        assert_eq!(m.as_ref(), expected.as_slice());
    }

    #[test]
    fn round_trip_and_corruption() {
        let m = event("SubscribeToShardEvent", "application/json", b"{\"a\":1}").expect("frame");
        let (msg, used) = decode(&m).expect("valid").expect("whole");
        assert_eq!(used, m.len());
        assert_eq!(msg.header(":event-type"), Some("SubscribeToShardEvent"));
        assert_eq!(msg.header(":message-type"), Some("event"));
        assert_eq!(msg.header(":content-type"), Some("application/json"));
        assert_eq!(msg.payload, b"{\"a\":1}");
        assert_eq!(decode(&m[..m.len() - 1]), Ok(None), "incomplete");
        let mut bad = m.to_vec();
        let last = bad.len() - 6;
        bad[last] ^= 1;
        assert!(decode(&bad).is_err(), "a flipped payload bit fails the CRC");
        let x = exception("ResourceInUseException", "application/json", b"{}").expect("frame");
        let (msg, _) = decode(&x).expect("valid").expect("whole");
        assert_eq!(msg.header(":message-type"), Some("exception"));
        assert_eq!(
            msg.header(":exception-type"),
            Some("ResourceInUseException")
        );
    }

    #[test]
    fn oversized_headers_are_refused() {
        let long = "n".repeat(256);
        assert!(matches!(
            encode(&[(long.as_str(), "v")], b""),
            Err(FrameError::NameTooLong(_))
        ));
        let value = "v".repeat(65_536);
        assert!(matches!(
            encode(&[("n", value.as_str())], b""),
            Err(FrameError::ValueTooLong(_))
        ));
    }
}
