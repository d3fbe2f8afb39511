//! CBOR 1.1 for the JSON 1.1 protocols (what the AWS SDK for Java v2 and the KCL send to
//! Kinesis by default), by translation to and from the JSON value model:
//! blobs (`Data`) are CBOR byte strings where JSON has base64 text, and timestamps are
//! CBOR tag 1 (epoch seconds) where JSON has numbers.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ciborium::value::Value as Cbor;
use serde_json::{Map, Number, Value};

/// Members that are blobs in the Kinesis model.
const BLOB_MEMBERS: &[&str] = &["Data"];
/// Members that are timestamps in the Kinesis model.
const TIMESTAMP_MEMBERS: &[&str] = &[
    "ApproximateArrivalTimestamp",
    "StreamCreationTimestamp",
    "Timestamp",
];

/// Decodes a CBOR request into the JSON model (`None` if it is not CBOR).
pub(crate) fn decode(body: &[u8]) -> Option<Value> {
    let v: Cbor = ciborium::de::from_reader(body).ok()?;
    to_json(v)
}

fn to_json(v: Cbor) -> Option<Value> {
    Some(match v {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(b),
        Cbor::Integer(i) => {
            let i: i128 = i.into();
            Value::Number(Number::from_i128(i)?)
        }
        Cbor::Float(f) => Value::Number(Number::from_f64(f)?),
        Cbor::Text(t) => Value::String(t),
        Cbor::Bytes(b) => Value::String(B64.encode(b)),
        Cbor::Tag(_, inner) => to_json(*inner)?,
        Cbor::Array(a) => Value::Array(a.into_iter().map(to_json).collect::<Option<_>>()?),
        Cbor::Map(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let Cbor::Text(k) = k else { return None };
                out.insert(k, to_json(v)?);
            }
            Value::Object(out)
        }
        _ => return None,
    })
}

fn from_json(key: Option<&str>, v: &Value) -> Cbor {
    match v {
        Value::Null => Cbor::Null,
        Value::Bool(b) => Cbor::Bool(*b),
        Value::Number(n) => {
            if key.is_some_and(|k| TIMESTAMP_MEMBERS.contains(&k)) {
                return Cbor::Tag(1, Box::new(Cbor::Float(n.as_f64().unwrap_or(0.0))));
            }
            match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Cbor::Integer(i.into()),
                (None, Some(u)) => Cbor::Integer(u.into()),
                _ => Cbor::Float(n.as_f64().unwrap_or(0.0)),
            }
        }
        Value::String(s) => match key {
            Some(k) if BLOB_MEMBERS.contains(&k) => match B64.decode(s) {
                Ok(b) => Cbor::Bytes(b),
                Err(_) => Cbor::Text(s.clone()),
            },
            _ => Cbor::Text(s.clone()),
        },
        Value::Array(a) => Cbor::Array(a.iter().map(|x| from_json(key, x)).collect()),
        Value::Object(m) => Cbor::Map(
            m.iter()
                .map(|(k, v)| (Cbor::Text(k.clone()), from_json(Some(k), v)))
                .collect(),
        ),
    }
}

pub(crate) fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = ciborium::ser::into_writer(&from_json(None, v), &mut out);
    out
}

/// A response in CBOR 1.1; errors carry `x-amzn-ErrorType` as in JSON 1.1.
pub(crate) fn response(status: StatusCode, v: &Value) -> Response {
    let mut resp = (
        status,
        [("content-type", "application/x-amz-cbor-1.1")],
        encode(v),
    )
        .into_response();
    if !status.is_success()
        && let Some(kind) = v.get("__type").and_then(Value::as_str)
        && let Ok(h) = HeaderValue::from_str(&format!("{kind}:"))
    {
        resp.headers_mut().insert("x-amzn-errortype", h);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blobs_and_timestamps_are_native_cbor() {
        let v = json!({"Records": [{"Data": "aGVsbG8=", "ApproximateArrivalTimestamp": 1.5,
                                    "SequenceNumber": "1", "PartitionKey": "k"}]});
        let bytes = encode(&v);
        let raw: Cbor = ciborium::de::from_reader(bytes.as_slice()).expect("cbor");
        let rec = match raw {
            Cbor::Map(m) => match &m[0].1 {
                Cbor::Array(a) => a[0].clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let Cbor::Map(fields) = rec else {
            panic!("record is a map")
        };
        let get = |k: &str| {
            fields
                .iter()
                .find(|(kk, _)| kk == &Cbor::Text(k.into()))
                .map(|(_, v)| v.clone())
                .expect("field")
        };
        assert_eq!(get("Data"), Cbor::Bytes(b"hello".to_vec()));
        assert!(matches!(
            get("ApproximateArrivalTimestamp"),
            Cbor::Tag(1, _)
        ));
        // And back: a CBOR request decodes into the JSON model.
        assert_eq!(decode(&bytes), Some(v));
    }
}
