//! The Kinesis event Lambda passes to a function, built from a batch.
//!
//! ```json
//! {"Records":[{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":"1",
//!   "sequenceNumber":"4959…","data":"SGVsbG8=","approximateArrivalTimestamp":1545084650.987},
//!   "eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-000000000006:4959…",
//!   "eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::…:role/…",
//!   "awsRegion":"us-east-2","eventSourceARN":"arn:aws:kinesis:us-east-2:…:stream/…"}]}
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sluice_stream::Record;

use crate::functions::BatchInput;

/// The event for a whole batch.
pub fn kinesis_event(input: &BatchInput) -> Value {
    json!({
        "Records": input.records.iter().map(|r| kinesis_record(input, r)).collect::<Vec<_>>()
    })
}

/// One element of `Records`.
pub fn kinesis_record(input: &BatchInput, r: &Record) -> Value {
    json!({
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": r.partition_key,
            "sequenceNumber": r.sequence_number,
            "data": STANDARD.encode(&r.data),
            "approximateArrivalTimestamp": r.approximate_arrival_ms as f64 / 1000.0,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": format!("{}:{}", input.shard_id, r.sequence_number),
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": input.invoke_identity_arn,
        "awsRegion": input.region,
        "eventSourceARN": input.stream_arn,
    })
}

/// ISO 8601, UTC, milliseconds: how Lambda writes times in failure records.
pub fn iso_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn event_has_lambda_shape() {
        let input = BatchInput {
            stream: "s".into(),
            stream_arn: "arn:aws:kinesis:us-east-2:000000000000:stream/s".into(),
            shard_id: "shardId-000000000000".into(),
            region: "us-east-2".into(),
            invoke_identity_arn: "arn:aws:iam::000000000000:role/r".into(),
            records: vec![Record {
                sequence_number: "42".into(),
                partition_key: "pk".into(),
                data: Bytes::from_static(b"Hello"),
                approximate_arrival_ms: 1_545_084_650_987,
            }],
        };
        let e = kinesis_event(&input);
        let r = &e["Records"][0];
        assert_eq!(r["kinesis"]["data"], "SGVsbG8=");
        assert_eq!(r["kinesis"]["kinesisSchemaVersion"], "1.0");
        assert_eq!(
            r["kinesis"]["approximateArrivalTimestamp"],
            1_545_084_650.987
        );
        assert_eq!(r["eventID"], "shardId-000000000000:42");
        assert_eq!(r["eventName"], "aws:kinesis:record");
        assert_eq!(r["eventSource"], "aws:kinesis");
        assert_eq!(r["eventSourceARN"], input.stream_arn);
        assert_eq!(iso_ms(1_545_084_650_987), "2018-12-17T22:10:50.987Z");
    }
}
