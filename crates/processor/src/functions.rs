//! Processing functions.
//!
//! Two interfaces:
//! - [`BatchFunction`]: what Lambda is. It receives a batch of stream records (one
//!   invocation per batch) and returns a value; with `ReportBatchItemFailures` the value can
//!   name the records that failed. Lambda handlers ([`crate::lambda`]) are batch functions.
//! - [`Function`]: an object function, bytes of the object a record points at in, bytes of
//!   the output out (the seed's `uppercase`, `copy`, `manifest`, [`crate::exec`]).
//!   [`ObjectFunction`] runs one over a batch: records concurrently (bounded), their
//!   outputs written durably, the first failure in sequence order reported — which the
//!   worker treats exactly like a partial batch response naming that record.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use sluice_store::{NewObject, Object, ObjectInfo, ObjectStore, PutOptions};
use sluice_stream::Record;

use crate::logs::{LogLine, LogSink};
use crate::{RecordRef, output_key};

#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error("{0}")]
    Failed(String),
    /// The storage the function reads or writes is down or full: not the function's (or
    /// the record's) failure. The batch is retried until the storage is back, and the
    /// attempt does not count against `maximum_retry_attempts`.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// What a function invocation knows about its surroundings.
#[derive(Clone)]
pub struct CallContext {
    pub mapping: String,
    /// Lambda's `awsRequestId`: one per invocation (per batch, or per record of an object
    /// function run over a batch).
    pub request_id: String,
    /// Where the function's log lines go.
    pub logs: Option<Arc<dyn LogSink>>,
}

impl CallContext {
    pub fn new(mapping: impl Into<String>) -> Self {
        CallContext {
            mapping: mapping.into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            logs: None,
        }
    }

    /// Appends lines of one output stream (`stdout`, `stderr`, `platform`) to the log.
    pub async fn log_lines(&self, stream: &str, lines: impl IntoIterator<Item = String>) {
        let Some(sink) = &self.logs else { return };
        let now = sluice_meta::now_ms();
        let lines: Vec<LogLine> = lines
            .into_iter()
            .map(|line| LogLine {
                id: 0,
                mapping: self.mapping.clone(),
                ts_ms: now,
                request_id: self.request_id.clone(),
                stream: stream.to_owned(),
                line,
            })
            .collect();
        if !lines.is_empty() {
            sink.append(lines).await;
        }
    }
}

/// An object function.
#[async_trait]
pub trait Function: Send + Sync + 'static {
    fn name(&self) -> &str;
    async fn call(&self, input: Bytes, info: &ObjectInfo) -> Result<Bytes, FunctionError>;

    /// [`Function::call`] with the invocation's context (request id, log). Functions that
    /// log override this.
    async fn call_in(
        &self,
        input: Bytes,
        info: &ObjectInfo,
        _ctx: &CallContext,
    ) -> Result<Bytes, FunctionError> {
        self.call(input, info).await
    }

    /// The output key, given the one the mapping derived from the input key.
    fn output_key(&self, key: &str) -> String {
        key.to_owned()
    }

    /// The output's content type; by default the input's.
    fn output_content_type(&self, input: &ObjectInfo) -> String {
        input.content_type.clone()
    }
}

/// One invocation's input: the records of a batch, all from one shard, in sequence order.
#[derive(Debug, Clone)]
pub struct BatchInput {
    pub stream: String,
    pub stream_arn: String,
    pub shard_id: String,
    pub region: String,
    /// The role the mapping invokes with (the event's `invokeIdentityArn`).
    pub invoke_identity_arn: String,
    pub records: Vec<Record>,
}

/// What a batch function returned.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchResponse {
    /// A handler's return value (`null` when it returned nothing). Read as a partial batch
    /// response (`{"batchItemFailures":[…]}`) only when the mapping enables
    /// `ReportBatchItemFailures`, as Lambda does; otherwise any return is success.
    Returned(serde_json::Value),
    /// Records processed in order: the first `outputs.len()` succeeded (with where their
    /// output went); when `failure` is set, the next record failed with that error and the
    /// rest were not tried. Always honoured.
    Items {
        outputs: Vec<OutputRef>,
        failure: Option<String>,
    },
}

/// Where an object function wrote a record's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRef {
    pub bucket: String,
    pub key: String,
}

/// A batch function.
#[async_trait]
pub trait BatchFunction: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Returns only once the function's outputs are durable: the worker checkpoints right
    /// after. An `Err` is a function error (the whole batch failed).
    async fn invoke(
        &self,
        input: &BatchInput,
        ctx: &CallContext,
    ) -> Result<BatchResponse, FunctionError>;
}

/// Records of a batch an [`ObjectFunction`] works on at the same time.
pub const OBJECT_CONCURRENCY: usize = 16;

/// Runs an object function over a batch: for each record, read the object it points at,
/// call the function, write the output durably (`<output_bucket or the input
/// bucket>/<output_key(key, prefix)>`). Up to [`OBJECT_CONCURRENCY`] records are worked on
/// at once, so that their outputs share group commits instead of waiting for one commit
/// each. The result is reported in sequence order: the records before the first that
/// failed succeeded, and that failure is the batch's partial failure. Records after it
/// may have been processed too; they are delivered again and their outputs rewritten
/// identically (outputs are idempotent). No record is started after a failure was seen.
pub struct ObjectFunction {
    inner: Arc<ObjectInner>,
}

struct ObjectInner {
    function: Arc<dyn Function>,
    store: Arc<dyn ObjectStore>,
    output_bucket: Option<String>,
    output_prefix: String,
}

impl ObjectFunction {
    pub fn new(
        function: Arc<dyn Function>,
        store: Arc<dyn ObjectStore>,
        output_bucket: Option<String>,
        output_prefix: String,
    ) -> Self {
        ObjectFunction {
            inner: Arc::new(ObjectInner {
                function,
                store,
                output_bucket,
                output_prefix,
            }),
        }
    }
}

/// Why one record of an object function failed.
#[derive(Debug, Clone)]
enum RecordFailure {
    /// The record's own failure (bad input, the function's error).
    Record(String),
    /// The store is down or full: retried, not counted.
    Storage(String),
}

impl RecordFailure {
    fn store(what: &str, e: sluice_store::StoreError) -> RecordFailure {
        if e.is_unavailable() || e.is_full() {
            RecordFailure::Storage(format!("{what}: {e}"))
        } else {
            RecordFailure::Record(format!("{what}: {e}"))
        }
    }
}

/// A record's output, computed and not stored yet.
struct Computed {
    bucket: String,
    key: String,
    body: Bytes,
    content_type: String,
}

/// The object reference a record carries.
fn record_ref(record: &Record) -> Result<RecordRef, RecordFailure> {
    serde_json::from_slice(&record.data).map_err(|e| {
        RecordFailure::Record(format!(
            "record is not an object reference ({{\"bucket\",\"key\"}}): {e}"
        ))
    })
}

impl ObjectInner {
    /// Reads the objects of up to [`OBJECT_CONCURRENCY`] records in one go.
    async fn fetch(&self, records: &[Record]) -> Vec<Result<(RecordRef, Object), RecordFailure>> {
        let refs: Vec<Result<RecordRef, RecordFailure>> = records.iter().map(record_ref).collect();
        let keys: Vec<(String, String)> = refs
            .iter()
            .flatten()
            .map(|r| (r.bucket.clone(), r.key.clone()))
            .collect();
        let mut objects = match self.store.get_many(keys).await {
            Ok(objects) => objects.into_iter(),
            Err(e) => {
                let f = RecordFailure::store("cannot read input", e);
                return refs.iter().map(|_| Err(f.clone())).collect();
            }
        };
        refs.into_iter()
            .map(|r| {
                let r = r?;
                match objects.next() {
                    Some(Ok(obj)) => Ok((r, obj)),
                    Some(Err(e)) => Err(RecordFailure::store("cannot read input", e)),
                    None => Err(RecordFailure::Record("no object was read".into())),
                }
            })
            .collect()
    }

    /// Runs the function on a record's object.
    async fn compute(
        &self,
        rec: RecordRef,
        obj: Object,
        ctx: &CallContext,
    ) -> Result<Computed, RecordFailure> {
        let content_type = self.function.output_content_type(&obj.info);
        let body = self
            .function
            .call_in(obj.body, &obj.info, ctx)
            .await
            .map_err(|e| match e {
                FunctionError::Unavailable(m) => RecordFailure::Storage(m),
                other => RecordFailure::Record(other.to_string()),
            })?;
        let bucket = self
            .output_bucket
            .clone()
            .unwrap_or_else(|| rec.bucket.clone());
        let key = self
            .function
            .output_key(&output_key(&rec.key, &self.output_prefix));
        Ok(Computed {
            bucket,
            key,
            body,
            content_type,
        })
    }

    /// Stores computed outputs durably, all in one metadata write; when that write is
    /// refused for another reason than the storage being down (a key the store rejects),
    /// one by one, so that the failure is the record's own.
    async fn store_outputs(
        &self,
        computed: Vec<Computed>,
    ) -> Vec<Result<OutputRef, RecordFailure>> {
        let objects: Vec<NewObject> = computed
            .iter()
            .map(|c| NewObject {
                bucket: c.bucket.clone(),
                key: c.key.clone(),
                body: c.body.clone(),
                opts: PutOptions {
                    content_type: Some(c.content_type.clone()),
                    ..Default::default()
                },
            })
            .collect();
        match self.store.put_many(objects).await {
            Ok(_) => computed
                .into_iter()
                .map(|c| {
                    Ok(OutputRef {
                        bucket: c.bucket,
                        key: c.key,
                    })
                })
                .collect(),
            Err(e) if e.is_unavailable() || e.is_full() => {
                let f = RecordFailure::store("cannot write output", e);
                computed.iter().map(|_| Err(f.clone())).collect()
            }
            Err(_) => {
                let mut out = Vec::with_capacity(computed.len());
                for c in computed {
                    let put = self
                        .store
                        .put(
                            &c.bucket,
                            &c.key,
                            c.body,
                            PutOptions {
                                content_type: Some(c.content_type),
                                ..Default::default()
                            },
                        )
                        .await;
                    out.push(match put {
                        Ok(_) => Ok(OutputRef {
                            bucket: c.bucket,
                            key: c.key,
                        }),
                        Err(e) => Err(RecordFailure::store("cannot write output", e)),
                    });
                }
                out
            }
        }
    }
}

#[async_trait]
impl BatchFunction for ObjectFunction {
    fn name(&self) -> &str {
        self.inner.function.name()
    }

    async fn invoke(
        &self,
        input: &BatchInput,
        ctx: &CallContext,
    ) -> Result<BatchResponse, FunctionError> {
        let n = input.records.len();
        let mut results: Vec<Option<Result<Computed, RecordFailure>>> =
            (0..n).map(|_| None).collect();
        // Windows of up to OBJECT_CONCURRENCY records: their objects read in one go, then
        // the function run on all of them at once. No window starts after a failure.
        let mut start = 0;
        while start < n {
            let end = (start + OBJECT_CONCURRENCY).min(n);
            let fetched = self.inner.fetch(&input.records[start..end]).await;
            let mut running = tokio::task::JoinSet::new();
            for (offset, f) in fetched.into_iter().enumerate() {
                let i = start + offset;
                match f {
                    Ok((rec, obj)) => {
                        let (inner, ctx) = (self.inner.clone(), ctx.clone());
                        running.spawn(async move { (i, inner.compute(rec, obj, &ctx).await) });
                    }
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
            while let Some(joined) = running.join_next().await {
                let (i, r) = joined
                    .map_err(|e| FunctionError::Failed(format!("record task failed: {e}")))?;
                results[i] = Some(r);
            }
            if results[start..end]
                .iter()
                .any(|r| matches!(r, Some(Err(_))))
            {
                break;
            }
            start = end;
        }
        // The outputs of the records before the first failure, stored together (one
        // metadata write for the batch's outputs rather than one per record).
        let mut computed = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Some(Ok(c)) if failure.is_none() => computed.push(c),
                Some(Err(e)) if failure.is_none() => failure = Some(e),
                _ => break,
            }
        }
        let stored = self.inner.store_outputs(computed).await;
        let failure = stored
            .iter()
            .position(Result::is_err)
            .map_or(failure, |i| stored[i].clone().err());
        let outputs: Vec<OutputRef> = stored.into_iter().map_while(Result::ok).collect();
        match failure {
            None => Ok(BatchResponse::Items {
                outputs,
                failure: None,
            }),
            // The first failure in sequence order decides: storage that is down fails the
            // invocation as unavailable (retried, not counted).
            Some(RecordFailure::Storage(e)) => {
                let record = &input.records[outputs.len()];
                ctx.log_lines(
                    "stderr",
                    [format!(
                        "record {} not processed, storage unavailable: {e}",
                        record.sequence_number
                    )],
                )
                .await;
                Err(FunctionError::Unavailable(e))
            }
            Some(RecordFailure::Record(e)) => {
                let record = &input.records[outputs.len()];
                ctx.log_lines(
                    "stderr",
                    [format!("record {} failed: {e}", record.sequence_number)],
                )
                .await;
                Ok(BatchResponse::Items {
                    outputs,
                    failure: Some(e),
                })
            }
        }
    }
}

/// The seed's processing: UTF-8 text upper-cased with Unicode's full case mapping
/// (`ß` → `SS`). Input that is not UTF-8 fails.
pub struct Uppercase;

#[async_trait]
impl Function for Uppercase {
    fn name(&self) -> &str {
        "uppercase"
    }

    async fn call(&self, input: Bytes, _info: &ObjectInfo) -> Result<Bytes, FunctionError> {
        let text = std::str::from_utf8(&input).map_err(|e| {
            FunctionError::Failed(format!(
                "content is not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ))
        })?;
        Ok(Bytes::from(text.to_uppercase()))
    }
}

/// Copies the object unchanged.
pub struct Copy;

#[async_trait]
impl Function for Copy {
    fn name(&self) -> &str {
        "copy"
    }

    async fn call(&self, input: Bytes, _info: &ObjectInfo) -> Result<Bytes, FunctionError> {
        Ok(input)
    }
}

/// Writes `<output key>.manifest.json`: the object's bucket, key, size, SHA-256 (computed
/// from the bytes read, not trusted from metadata), ETag, declared content type and the
/// content type detected from the bytes.
pub struct Manifest;

#[async_trait]
impl Function for Manifest {
    fn name(&self) -> &str {
        "manifest"
    }

    async fn call(&self, input: Bytes, info: &ObjectInfo) -> Result<Bytes, FunctionError> {
        let sha256 = hex::encode(Sha256::digest(&input));
        let manifest = serde_json::json!({
            "bucket": info.bucket,
            "key": info.key,
            "size": input.len(),
            "sha256": sha256,
            "etag": info.etag,
            "declaredContentType": info.content_type,
            "contentType": detect_content_type(&input),
            "lastModified": chrono::DateTime::from_timestamp_millis(info.last_modified_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        });
        serde_json::to_vec_pretty(&manifest)
            .map(Bytes::from)
            .map_err(|e| FunctionError::Failed(format!("cannot encode manifest: {e}")))
    }

    fn output_key(&self, key: &str) -> String {
        format!("{key}.manifest.json")
    }

    fn output_content_type(&self, _input: &ObjectInfo) -> String {
        "application/json".into()
    }
}

/// Content type from the first bytes (magic numbers), then UTF-8 text / JSON, else
/// `application/octet-stream`.
pub fn detect_content_type(b: &[u8]) -> &'static str {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"%PDF-", "application/pdf"),
        (b"PK\x03\x04", "application/zip"),
        (b"\x1f\x8b", "application/gzip"),
        (b"BZh", "application/x-bzip2"),
        (b"\xfd7zXZ\x00", "application/x-xz"),
        (b"\x28\xb5\x2f\xfd", "application/zstd"),
        (b"\x7fELF", "application/x-elf"),
        (b"OggS", "audio/ogg"),
        (b"ID3", "audio/mpeg"),
        (b"\x00asm", "application/wasm"),
    ];
    for (magic, ct) in MAGIC {
        if b.starts_with(magic) {
            return ct;
        }
    }
    if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        return "image/webp";
    }
    if b.len() >= 12 && &b[4..8] == b"ftyp" {
        return "video/mp4";
    }
    match std::str::from_utf8(b) {
        Ok(text) => {
            let t = text.trim_start();
            if (t.starts_with('{') || t.starts_with('['))
                && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
            {
                "application/json"
            } else if t.starts_with("<!DOCTYPE html") || t.starts_with("<html") {
                "text/html"
            } else if t.starts_with("<?xml") {
                "application/xml"
            } else {
                "text/plain; charset=utf-8"
            }
        }
        Err(_) => "application/octet-stream",
    }
}

/// Looks a built-in function up by name: `uppercase`, `copy`, `manifest`.
pub fn builtin(name: &str) -> Option<Arc<dyn Function>> {
    match name {
        "uppercase" => Some(Arc::new(Uppercase)),
        "copy" => Some(Arc::new(Copy)),
        "manifest" => Some(Arc::new(Manifest)),
        _ => None,
    }
}

/// Names of the built-in functions: the object functions [`builtin`] returns, and
/// [`NOOP`].
pub const BUILTINS: &[&str] = &["uppercase", "copy", "manifest", NOOP];

/// The built-in batch function that does nothing: every record succeeds, nothing is read or
/// written. It measures the mapping machinery itself (reads, batching, checkpoints).
pub const NOOP: &str = "noop";

/// See [`NOOP`].
pub struct Noop;

#[async_trait]
impl BatchFunction for Noop {
    fn name(&self) -> &str {
        NOOP
    }

    async fn invoke(
        &self,
        _input: &BatchInput,
        _ctx: &CallContext,
    ) -> Result<BatchResponse, FunctionError> {
        Ok(BatchResponse::Returned(serde_json::Value::Null))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ObjectInfo {
        ObjectInfo {
            bucket: "b".into(),
            key: "k".into(),
            size: 0,
            etag: String::new(),
            sha256: String::new(),
            content_type: "text/plain".into(),
            last_modified_ms: 0,
            owner: None,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn uppercase_is_unicode_aware() {
        let out = Uppercase
            .call(Bytes::from("hello kinesis, straße é"), &info())
            .await
            .expect("utf-8");
        assert_eq!(out, Bytes::from("HELLO KINESIS, STRASSE É"));
        assert!(
            Uppercase
                .call(Bytes::from_static(&[0xff, 0xfe]), &info())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn copy_and_manifest() {
        let body = Bytes::from_static(b"\x89PNG\r\n\x1a\nrest");
        assert_eq!(Copy.call(body.clone(), &info()).await.expect("copy"), body);
        let out = Manifest
            .call(body.clone(), &info())
            .await
            .expect("manifest");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["size"], 12);
        assert_eq!(v["contentType"], "image/png");
        assert_eq!(v["sha256"], hex::encode(Sha256::digest(&body)));
        assert_eq!(
            Manifest.output_key("processed/a.png"),
            "processed/a.png.manifest.json"
        );
    }

    #[test]
    fn content_type_detection() {
        assert_eq!(detect_content_type(b"%PDF-1.7"), "application/pdf");
        assert_eq!(detect_content_type(b" {\"a\":1}"), "application/json");
        assert_eq!(
            detect_content_type(b"{not json"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(detect_content_type(b"hello"), "text/plain; charset=utf-8");
        assert_eq!(
            detect_content_type(&[0xff, 0x00, 0x01]),
            "application/octet-stream"
        );
        assert_eq!(detect_content_type(b"\x1f\x8b\x08"), "application/gzip");
    }
}
