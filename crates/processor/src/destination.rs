//! On-failure destinations (Lambda's `DestinationConfig.OnFailure` for stream sources).
//!
//! When a batch's records are given up on — retries exhausted, or records older than
//! `maximum_record_age_secs` — the worker sends one [`OnFailureRecord`] describing them, in
//! the shape Lambda sends to an SQS/SNS/S3 destination, then moves the shard on. The
//! checkpoint passes those records only after [`FailureDestination::send`] returned `Ok`,
//! i.e. once the failure record is durable.
//!
//! Two destinations: another stream ([`StreamDestination`], like Lambda's SQS/SNS targets:
//! metadata only) and a bucket prefix ([`BucketDestination`], like Lambda's S3 target: the
//! metadata plus the invocation payload).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_store::{ObjectStore, PutOptions};
use sluice_stream::{PutRecord, Stream};

use crate::ProcessorError;

/// Which destination a mapping uses. Parsed from `stream:<name>` (or a Kinesis stream ARN)
/// and `s3://<bucket>/<prefix>` (or `bucket:<bucket>/<prefix>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum DestinationSpec {
    Stream { stream: String },
    Bucket { bucket: String, prefix: String },
}

impl DestinationSpec {
    pub fn parse(s: &str) -> Result<Self, ProcessorError> {
        let bad = || {
            ProcessorError::InvalidConfig(format!(
                "on-failure destination {s:?} must be stream:<name> or s3://<bucket>/<prefix>"
            ))
        };
        let spec = if let Some(name) = s.strip_prefix("stream:") {
            DestinationSpec::Stream {
                stream: name.to_owned(),
            }
        } else if s.starts_with("arn:aws:kinesis:") {
            let name = s.rsplit_once(":stream/").map(|(_, n)| n).ok_or_else(bad)?;
            DestinationSpec::Stream {
                stream: name.to_owned(),
            }
        } else if let Some(rest) = s
            .strip_prefix("s3://")
            .or_else(|| s.strip_prefix("bucket:"))
            .or_else(|| s.strip_prefix("arn:aws:s3:::"))
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            DestinationSpec::Bucket {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            }
        } else {
            return Err(bad());
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), ProcessorError> {
        match self {
            DestinationSpec::Stream { stream } => sluice_stream::validate_stream_name(stream)
                .map_err(|e| ProcessorError::InvalidConfig(format!("on-failure stream: {e}"))),
            DestinationSpec::Bucket { bucket, .. } => sluice_store::validate_bucket_name(bucket)
                .map_err(|e| ProcessorError::InvalidConfig(format!("on-failure bucket: {e}"))),
        }
    }

    pub(crate) fn build(
        &self,
        stream: Arc<dyn Stream>,
        store: Arc<dyn ObjectStore>,
    ) -> Arc<dyn FailureDestination> {
        match self {
            DestinationSpec::Stream { stream: name } => Arc::new(StreamDestination {
                stream,
                name: name.clone(),
            }),
            DestinationSpec::Bucket { bucket, prefix } => Arc::new(BucketDestination {
                store,
                bucket: bucket.clone(),
                prefix: prefix.clone(),
            }),
        }
    }
}

impl std::fmt::Display for DestinationSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DestinationSpec::Stream { stream } => write!(f, "stream:{stream}"),
            DestinationSpec::Bucket { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// Why records were given up on (`requestContext.condition`).
pub const RETRY_ATTEMPTS_EXHAUSTED: &str = "RetryAttemptsExhausted";
pub const RECORD_AGE_EXCEEDED: &str = "RecordAgeExceeded";

/// The document Lambda sends to an on-failure destination for a Kinesis batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnFailureRecord {
    #[serde(rename = "requestContext")]
    pub request_context: RequestContext,
    #[serde(rename = "responseContext")]
    pub response_context: ResponseContext,
    pub version: String,
    /// ISO 8601 with milliseconds, UTC.
    pub timestamp: String,
    #[serde(rename = "KinesisBatchInfo")]
    pub kinesis_batch_info: KinesisBatchInfo,
    /// The invocation event (the Kinesis event of the failed records); sent to bucket
    /// destinations only, as Lambda does for S3 destinations.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payload: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestContext {
    pub request_id: String,
    pub function_arn: String,
    pub condition: String,
    pub approximate_invoke_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseContext {
    /// 200 once the function was invoked (its error is in `functionError`), 0 if never.
    pub status_code: u16,
    pub executed_version: String,
    /// `Unhandled` for a function error; empty when the records were never invoked.
    pub function_error: String,
    /// sluice's addition: the error the last invocation reported.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KinesisBatchInfo {
    pub shard_id: String,
    pub start_sequence_number: String,
    pub end_sequence_number: String,
    pub approximate_arrival_of_first_record: String,
    pub approximate_arrival_of_last_record: String,
    pub batch_size: usize,
    pub stream_arn: String,
}

/// Receives descriptions of records given up on. `Ok` means durable.
#[async_trait]
pub trait FailureDestination: Send + Sync + 'static {
    fn describe(&self) -> String;
    async fn send(&self, mapping: &str, record: &OnFailureRecord) -> Result<(), String>;
}

/// Appends the failure record (JSON, without payload) to another stream, partition key =
/// the failed records' shard id (failures of one shard stay in order).
pub struct StreamDestination {
    pub stream: Arc<dyn Stream>,
    pub name: String,
}

#[async_trait]
impl FailureDestination for StreamDestination {
    fn describe(&self) -> String {
        format!("stream:{}", self.name)
    }

    async fn send(&self, _mapping: &str, record: &OnFailureRecord) -> Result<(), String> {
        let mut r = record.clone();
        r.payload = None;
        let data = serde_json::to_vec(&r).map_err(|e| format!("cannot encode: {e}"))?;
        self.stream
            .put_record(
                &self.name,
                PutRecord {
                    partition_key: r.kinesis_batch_info.shard_id.clone(),
                    explicit_hash_key: None,
                    data: Bytes::from(data),
                },
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot append to on-failure stream {}: {e}", self.name))
    }
}

/// Writes the failure record (JSON, with payload) to
/// `<bucket>/<prefix><mapping>/<shard id>/<yyyy>/<mm>/<dd>/<start seq>-<end seq>.json`.
/// The key depends only on the failed records, so a re-delivered failure rewrites the same
/// object.
pub struct BucketDestination {
    pub store: Arc<dyn ObjectStore>,
    pub bucket: String,
    pub prefix: String,
}

impl BucketDestination {
    pub fn key(&self, mapping: &str, record: &OnFailureRecord) -> String {
        let info = &record.kinesis_batch_info;
        let day = info
            .approximate_arrival_of_first_record
            .get(..10)
            .unwrap_or("unknown")
            .replace('-', "/");
        format!(
            "{}{mapping}/{}/{day}/{}-{}.json",
            self.prefix, info.shard_id, info.start_sequence_number, info.end_sequence_number
        )
    }
}

#[async_trait]
impl FailureDestination for BucketDestination {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn send(&self, mapping: &str, record: &OnFailureRecord) -> Result<(), String> {
        let body = serde_json::to_vec_pretty(record).map_err(|e| format!("cannot encode: {e}"))?;
        self.store
            .ensure_bucket(&self.bucket)
            .await
            .map_err(|e| format!("on-failure bucket {}: {e}", self.bucket))?;
        let key = self.key(mapping, record);
        self.store
            .put(
                &self.bucket,
                &key,
                Bytes::from(body),
                PutOptions {
                    content_type: Some("application/json".into()),
                    owner: None,
                    ..Default::default()
                },
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot write {}/{key}: {e}", self.bucket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        assert_eq!(
            DestinationSpec::parse("stream:failures").expect("stream"),
            DestinationSpec::Stream {
                stream: "failures".into()
            }
        );
        assert_eq!(
            DestinationSpec::parse("arn:aws:kinesis:us-east-2:000000000000:stream/f").expect("arn"),
            DestinationSpec::Stream { stream: "f".into() }
        );
        assert_eq!(
            DestinationSpec::parse("s3://sluice/failed/").expect("s3"),
            DestinationSpec::Bucket {
                bucket: "sluice".into(),
                prefix: "failed/".into()
            }
        );
        assert!(DestinationSpec::parse("sqs:nope").is_err());
        assert!(DestinationSpec::parse("s3://UPPER/x").is_err());
    }
}
