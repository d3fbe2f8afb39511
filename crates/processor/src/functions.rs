//! Processing functions.
//!
//! Two interfaces:
//! - [`BatchFunction`]: what Lambda is. It receives a batch of stream records (one
//!   invocation per batch) and returns a value; with `ReportBatchItemFailures` the value can
//!   name the records that failed. Lambda handlers ([`crate::lambda`]) are batch functions.
//! - [`Function`]: an object function, bytes of the object a record points at in, bytes of
//!   the output out (the seed's `uppercase`, `copy`, `manifest`, [`crate::exec`]). Both
//!   are streams: `uppercase`, `copy` and `exec` work chunk by chunk, so an object of any
//!   size passes through in bounded memory. A function that needs the whole input at once
//!   (`manifest`) reads it into memory through [`read_whole`], which refuses an object
//!   larger than [`IN_MEMORY_LIMIT`] (the record fails with that error, the server does
//!   not) and shares one budget, [`IN_MEMORY_BUDGET`], with every other such call.
//!   [`ObjectFunction`] runs one over a batch: records concurrently (bounded), their
//!   outputs written durably, the first failure in sequence order reported — which the
//!   worker treats exactly like a partial batch response naming that record.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use sluice_store::{ByteStream, NewObject, ObjectInfo, ObjectStore, ObjectStream, PutOptions};
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

/// Functions created with Lambda's API (`aws lambda create-function`), which a mapping may
/// run (`function:<name>`); implemented by the `sluice-functions` crate.
pub trait FunctionResolver: Send + Sync + 'static {
    /// A batch function that invokes `name` with the code and configuration it has at each
    /// invocation (a function that does not exist fails the invocation, not the mapping).
    fn resolve(&self, name: &str) -> Arc<dyn BatchFunction>;
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

/// Largest object a function that holds its input in memory ([`read_whole`]: the built-in
/// `manifest`) accepts: 32 MiB. A larger object fails its record with an error that says
/// so; streaming functions (`uppercase`, `copy`, `exec`) have no such limit.
pub const IN_MEMORY_LIMIT: u64 = 32 * 1024 * 1024;

/// Bytes that all in-memory function inputs of the process may hold at once: 64 MiB. A call
/// waits for its share before it reads (records run concurrently, [`OBJECT_CONCURRENCY`]
/// per batch and several batches at once: without a shared budget they could hold many
/// times [`IN_MEMORY_LIMIT`]). Twice the limit, so that one largest input never waits
/// for more than the budget holds.
pub const IN_MEMORY_BUDGET: u64 = 2 * IN_MEMORY_LIMIT;

/// The budget of [`IN_MEMORY_BUDGET`], in KiB permits (a semaphore counts in `u32`).
fn in_memory_budget() -> &'static tokio::sync::Semaphore {
    static BUDGET: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    BUDGET.get_or_init(|| tokio::sync::Semaphore::new((IN_MEMORY_BUDGET / 1024) as usize))
}

/// An object's bytes read whole into memory, for a function that cannot work on a stream.
/// Holds its share of [`IN_MEMORY_BUDGET`] until dropped.
pub struct WholeInput {
    pub bytes: Bytes,
    _budget: tokio::sync::SemaphorePermit<'static>,
}

/// Reads an object whole for function `name`: an object larger than `limit` (capped at
/// [`IN_MEMORY_LIMIT`]) is refused before a byte is read — by its recorded size, and again
/// if more bytes than that arrive — with an error naming the sizes, which fails the record
/// (not the server). Waits for its share of [`IN_MEMORY_BUDGET`] first.
pub async fn read_whole(
    name: &str,
    mut input: ByteStream,
    info: &ObjectInfo,
    limit: u64,
) -> Result<WholeInput, FunctionError> {
    let limit = limit.min(IN_MEMORY_LIMIT);
    let too_large = |size: u64| {
        FunctionError::Failed(format!(
            "object is {size} bytes, more than the {limit} bytes the {name} function reads \
             into memory (use a streaming function for larger objects)"
        ))
    };
    if info.size > limit {
        return Err(too_large(info.size));
    }
    let kib = info.size.div_ceil(1024).max(1) as u32;
    let budget = in_memory_budget()
        .acquire_many(kib)
        .await
        .map_err(|_| FunctionError::Failed("in-memory budget closed".into()))?;
    let mut buf = bytes::BytesMut::with_capacity(info.size as usize);
    while let Some(chunk) = input.next().await {
        let chunk = chunk.map_err(|e| input_error(&e))?;
        // The object changed size under us (replaced since its row was read): the limit
        // still holds, and the budget is only ever exceeded by less than one chunk.
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(too_large((buf.len() + chunk.len()) as u64));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(WholeInput {
        bytes: buf.freeze(),
        _budget: budget,
    })
}

/// A function's own failure, carried inside the `std::io::Error` of an output stream's
/// item (streams speak `io::Error`): the record fails with `0`, and storage is not blamed.
#[derive(Debug)]
pub struct FailedOutput(pub String);

impl std::fmt::Display for FailedOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FailedOutput {}

/// An output stream's error item for a function failure `message`.
pub fn failed_output(message: impl Into<String>) -> std::io::Error {
    std::io::Error::other(FailedOutput(message.into()))
}

/// The [`FunctionError`] an error item of an output stream stands for: the function's
/// failure when it is a [`failed_output`], otherwise the input (the object being read)
/// failed.
pub fn output_error(e: &std::io::Error) -> FunctionError {
    match e.get_ref().and_then(|i| i.downcast_ref::<FailedOutput>()) {
        Some(FailedOutput(m)) => FunctionError::Failed(m.clone()),
        None => input_error(e),
    }
}

fn input_error(e: &std::io::Error) -> FunctionError {
    FunctionError::Failed(format!("cannot read input: {e}"))
}

/// A stream of one chunk.
pub fn once(bytes: Bytes) -> ByteStream {
    Box::pin(futures_util::stream::once(async move { Ok(bytes) }))
}

/// Reads a function's whole output into memory, refusing more than `max` bytes (for tests
/// and callers that want bytes).
pub async fn collect_output(mut out: ByteStream, max: u64) -> Result<Bytes, FunctionError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = out.next().await {
        let chunk = chunk.map_err(|e| output_error(&e))?;
        if (buf.len() + chunk.len()) as u64 > max {
            return Err(FunctionError::Failed(format!(
                "output is larger than {max} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// An object function.
///
/// [`Function::run`] gets the object as a stream and returns the output as a stream, which
/// the caller reads (and stores) as the function produces it: the function runs while its
/// output is read, and an error item in the output — [`failed_output`] for the function's
/// own failure — fails the record, with nothing stored. Input and output are never held
/// whole unless a function chooses to ([`read_whole`], within [`IN_MEMORY_LIMIT`]).
#[async_trait]
pub trait Function: Send + Sync + 'static {
    fn name(&self) -> &str;

    /// Starts the function on `input` (the object `info` describes). An `Err` here fails
    /// the record before any output.
    async fn run(
        &self,
        input: ByteStream,
        info: &ObjectInfo,
        ctx: &CallContext,
    ) -> Result<ByteStream, FunctionError>;

    /// [`Function::run`] on bytes in memory, the output collected (up to
    /// [`IN_MEMORY_LIMIT`] bytes): for tests and small inputs.
    async fn call(&self, input: Bytes, info: &ObjectInfo) -> Result<Bytes, FunctionError> {
        self.call_in(input, info, &CallContext::new("")).await
    }

    /// [`Function::call`] with the invocation's context (request id, log).
    async fn call_in(
        &self,
        input: Bytes,
        info: &ObjectInfo,
        ctx: &CallContext,
    ) -> Result<Bytes, FunctionError> {
        let out = self.run(once(input), info, ctx).await?;
        collect_output(out, IN_MEMORY_LIMIT).await
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

/// Output bytes of one record gathered in memory to be stored together with the batch's
/// other small outputs (one metadata write); an output that grows past this is streamed to
/// the store on its own instead. Bounds what a batch holds: [`OBJECT_CONCURRENCY`] × 1 MiB.
pub const BATCHED_OUTPUT_MAX: usize = 1024 * 1024;

/// User metadata naming the upload an output was computed from (`x-amz-meta-sluice-upload-id`
/// through S3), on the output of every record that carries an upload id. The gateway
/// serves `GET /uploads/{id}/processed` only from an output naming that upload, so an
/// output written again by a later run of the same upload (a record delivered again after
/// a takeover or a restart) stays served, and one another upload wrote to the same key is
/// not.
pub const UPLOAD_ID_METADATA: &str = "sluice-upload-id";

/// How an output is stored: its content type, and the upload it came from when the record
/// names one ([`UPLOAD_ID_METADATA`]).
fn output_options(content_type: String, upload_id: Option<&str>) -> PutOptions {
    let mut opts = PutOptions {
        content_type: Some(content_type),
        ..Default::default()
    };
    if let Some(id) = upload_id {
        opts.metadata
            .insert(UPLOAD_ID_METADATA.to_owned(), id.to_owned());
    }
    opts
}

/// A record's output: small and not stored yet, or large and already stored.
enum Computed {
    Small {
        bucket: String,
        key: String,
        body: Bytes,
        /// Boxed: the options are most of the size of a [`Computed`].
        opts: Box<PutOptions>,
    },
    Stored(OutputRef),
}

/// The object reference a record carries.
fn record_ref(record: &Record) -> Result<RecordRef, RecordFailure> {
    serde_json::from_slice(&record.data).map_err(|e| {
        RecordFailure::Record(format!(
            "record is not an object reference ({{\"bucket\",\"key\"}}): {e}"
        ))
    })
}

/// A function's failure as a record failure: storage that is down is retried.
fn function_failure(e: FunctionError) -> RecordFailure {
    match e {
        FunctionError::Unavailable(m) => RecordFailure::Storage(m),
        other => RecordFailure::Record(other.to_string()),
    }
}

impl ObjectInner {
    /// Opens the objects of up to [`OBJECT_CONCURRENCY`] records in one go (one metadata
    /// read; the bytes of large objects are read later, as the function consumes them).
    async fn fetch(
        &self,
        records: &[Record],
    ) -> Vec<Result<(RecordRef, ObjectStream), RecordFailure>> {
        let refs: Vec<Result<RecordRef, RecordFailure>> = records.iter().map(record_ref).collect();
        let keys: Vec<(String, String)> = refs
            .iter()
            .flatten()
            .map(|r| (r.bucket.clone(), r.key.clone()))
            .collect();
        let mut objects = match self.store.open_many(keys).await {
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

    /// Runs the function on a record's object. The output is read as the function
    /// produces it: up to [`BATCHED_OUTPUT_MAX`] bytes are kept to be stored with the
    /// batch; past that the output is streamed into the store right away (its bytes never
    /// held whole).
    async fn compute(
        &self,
        rec: RecordRef,
        obj: ObjectStream,
        ctx: &CallContext,
    ) -> Result<Computed, RecordFailure> {
        let opts = output_options(
            self.function.output_content_type(&obj.info),
            rec.upload_id.as_deref(),
        );
        let mut out = self
            .function
            .run(obj.body, &obj.info, ctx)
            .await
            .map_err(function_failure)?;
        let bucket = self
            .output_bucket
            .clone()
            .unwrap_or_else(|| rec.bucket.clone());
        let key = self
            .function
            .output_key(&output_key(&rec.key, &self.output_prefix));
        let mut head = bytes::BytesMut::new();
        let overflow = loop {
            match out.next().await {
                None => {
                    return Ok(Computed::Small {
                        bucket,
                        key,
                        body: head.freeze(),
                        opts: Box::new(opts),
                    });
                }
                Some(Err(e)) => return Err(function_failure(output_error(&e))),
                Some(Ok(chunk)) if head.len() + chunk.len() > BATCHED_OUTPUT_MAX => break chunk,
                Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            }
        };
        let whole: ByteStream =
            Box::pin(futures_util::stream::iter([Ok(head.freeze()), Ok(overflow)]).chain(out));
        match self.store.put_stream(&bucket, &key, whole, opts).await {
            Ok(_) => Ok(Computed::Stored(OutputRef { bucket, key })),
            // The output stream failed: the function's failure (or the input's), not the
            // store's; nothing was stored.
            Err(sluice_store::StoreError::Io(e)) => Err(function_failure(output_error(&e))),
            Err(e) => Err(RecordFailure::store("cannot write output", e)),
        }
    }

    /// Stores computed outputs durably, the small ones all in one metadata write; when
    /// that write is refused for another reason than the storage being down (a key the
    /// store rejects), one by one, so that the failure is the record's own.
    async fn store_outputs(
        &self,
        computed: Vec<Computed>,
    ) -> Vec<Result<OutputRef, RecordFailure>> {
        let objects: Vec<NewObject> = computed
            .iter()
            .filter_map(|c| match c {
                Computed::Small {
                    bucket,
                    key,
                    body,
                    opts,
                } => Some(NewObject {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    body: body.clone(),
                    opts: (**opts).clone(),
                }),
                Computed::Stored(_) => None,
            })
            .collect();
        let batch = if objects.is_empty() {
            Ok(Vec::new())
        } else {
            self.store.put_many(objects).await
        };
        match batch {
            Ok(_) => computed
                .into_iter()
                .map(|c| match c {
                    Computed::Small { bucket, key, .. } => Ok(OutputRef { bucket, key }),
                    Computed::Stored(r) => Ok(r),
                })
                .collect(),
            Err(e) if e.is_unavailable() || e.is_full() => {
                let f = RecordFailure::store("cannot write output", e);
                computed.iter().map(|_| Err(f.clone())).collect()
            }
            Err(_) => {
                let mut out = Vec::with_capacity(computed.len());
                for c in computed {
                    let (bucket, key, body, opts) = match c {
                        Computed::Stored(r) => {
                            out.push(Ok(r));
                            continue;
                        }
                        Computed::Small {
                            bucket,
                            key,
                            body,
                            opts,
                        } => (bucket, key, body, opts),
                    };
                    let put = self.store.put(&bucket, &key, body, *opts).await;
                    out.push(match put {
                        Ok(_) => Ok(OutputRef { bucket, key }),
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
///
/// Streams: each chunk is upper-cased as it arrives. Upper-casing maps every character on
/// its own (Unicode's upper-case mappings have no context conditions, unlike lower-casing's
/// final sigma), so the text can be cut anywhere between characters; a character whose
/// bytes are split across chunks is held back (at most 3 bytes, [`Upper`]) until its rest
/// arrives. Invalid UTF-8 fails the record with its offset in the whole object; as the
/// output stream then ends in an error, nothing is stored.
pub struct Uppercase;

#[async_trait]
impl Function for Uppercase {
    fn name(&self) -> &str {
        "uppercase"
    }

    async fn run(
        &self,
        input: ByteStream,
        _info: &ObjectInfo,
        _ctx: &CallContext,
    ) -> Result<ByteStream, FunctionError> {
        let state = (input, Upper::default(), false);
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |(mut input, mut upper, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match input.next().await {
                        Some(Ok(chunk)) => match upper.push(&chunk) {
                            Ok(out) if out.is_empty() => continue,
                            Ok(out) => return Some((Ok(Bytes::from(out)), (input, upper, false))),
                            Err(e) => return Some((Err(failed_output(e)), (input, upper, true))),
                        },
                        Some(Err(e)) => return Some((Err(e), (input, upper, true))),
                        None => {
                            return match upper.finish() {
                                Ok(()) => None,
                                Err(e) => Some((Err(failed_output(e)), (input, upper, true))),
                            };
                        }
                    }
                }
            },
        )))
    }
}

/// Streaming upper-casing of UTF-8 text (see [`Uppercase`]).
#[derive(Debug, Default)]
pub struct Upper {
    /// The first bytes of a character whose rest has not arrived yet (1 to 3 bytes).
    pending: Vec<u8>,
    /// Input bytes consumed before `pending`: offsets in errors are in the whole input.
    offset: u64,
}

impl Upper {
    fn invalid(&self, at: usize) -> String {
        format!(
            "content is not UTF-8 text (invalid byte at offset {})",
            self.offset + at as u64
        )
    }

    /// Upper-cases the next chunk; returns the output for every character completed so
    /// far, or the error for invalid UTF-8.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<String, String> {
        let mut out = String::new();
        if let Some(&lead) = self.pending.first() {
            // Complete the held-back character with as many bytes as it still needs.
            let width = match lead {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (width - self.pending.len()).min(chunk.len());
            self.pending.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            match std::str::from_utf8(&self.pending) {
                Ok(c) => {
                    out.push_str(&c.to_uppercase());
                    self.offset += self.pending.len() as u64;
                    self.pending.clear();
                }
                // Still incomplete: the chunk was too short to finish it.
                Err(e) if e.error_len().is_none() => return Ok(out),
                Err(e) => return Err(self.invalid(e.valid_up_to())),
            }
        }
        let (text, rest) = match std::str::from_utf8(chunk) {
            Ok(text) => (text, &[][..]),
            Err(e) => {
                let (valid, rest) = chunk.split_at(e.valid_up_to());
                if e.error_len().is_some() {
                    return Err(self.invalid(e.valid_up_to()));
                }
                // A character cut by the chunk's end: valid so far, finished by the next.
                // `valid_up_to` guarantees `valid` is UTF-8.
                (
                    std::str::from_utf8(valid).map_err(|_| self.invalid(0))?,
                    rest,
                )
            }
        };
        out.push_str(&text.to_uppercase());
        self.offset += text.len() as u64;
        self.pending.extend_from_slice(rest);
        Ok(out)
    }

    /// The input ended: a character still incomplete is invalid.
    pub fn finish(&self) -> Result<(), String> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(self.invalid(0))
        }
    }
}

/// Copies the object unchanged (streamed).
pub struct Copy;

#[async_trait]
impl Function for Copy {
    fn name(&self) -> &str {
        "copy"
    }

    async fn run(
        &self,
        input: ByteStream,
        _info: &ObjectInfo,
        _ctx: &CallContext,
    ) -> Result<ByteStream, FunctionError> {
        Ok(input)
    }
}

/// Writes `<output key>.manifest.json`: the object's bucket, key, size, SHA-256 (computed
/// from the bytes read, not trusted from metadata), ETag, declared content type and the
/// content type detected from the bytes.
///
/// Detecting JSON needs the whole text, so this function reads its input into memory
/// ([`read_whole`]): up to `limit` bytes (default and most [`IN_MEMORY_LIMIT`]); a larger
/// object fails its record.
pub struct Manifest {
    limit: u64,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            limit: IN_MEMORY_LIMIT,
        }
    }
}

impl Manifest {
    /// A manifest function that accepts objects of up to `limit` bytes (at most
    /// [`IN_MEMORY_LIMIT`]).
    pub fn with_limit(limit: u64) -> Self {
        Manifest {
            limit: limit.min(IN_MEMORY_LIMIT),
        }
    }
}

#[async_trait]
impl Function for Manifest {
    fn name(&self) -> &str {
        "manifest"
    }

    async fn run(
        &self,
        input: ByteStream,
        info: &ObjectInfo,
        _ctx: &CallContext,
    ) -> Result<ByteStream, FunctionError> {
        let whole = read_whole(self.name(), input, info, self.limit).await?;
        let input = &whole.bytes;
        let sha256 = hex::encode(Sha256::digest(input));
        let manifest = serde_json::json!({
            "bucket": info.bucket,
            "key": info.key,
            "size": input.len(),
            "sha256": sha256,
            "etag": info.etag,
            "declaredContentType": info.content_type,
            "contentType": detect_content_type(input),
            "lastModified": chrono::DateTime::from_timestamp_millis(info.last_modified_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        });
        serde_json::to_vec_pretty(&manifest)
            .map(|v| once(Bytes::from(v)))
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
        "manifest" => Some(Arc::new(Manifest::default())),
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

    /// Upper-cases `text` fed in chunks of `size` bytes through the streaming function.
    async fn upper_in_chunks(text: &[u8], size: usize) -> Result<Bytes, FunctionError> {
        let chunks: Vec<Result<Bytes, std::io::Error>> = text
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let input: ByteStream = Box::pin(futures_util::stream::iter(chunks));
        let out = Uppercase
            .run(input, &info(), &CallContext::new("m"))
            .await?;
        collect_output(out, u64::MAX).await
    }

    #[tokio::test]
    async fn uppercase_streams_across_chunk_boundaries() {
        // Every character width (1–4 bytes), cut at every possible place.
        let text = "aß é 日本 𝔘x ﬃ ǅ Σσς\n".repeat(3);
        let want = text.to_uppercase();
        for size in 1..=text.len() {
            let out = upper_in_chunks(text.as_bytes(), size).await.expect("utf-8");
            assert_eq!(out, want.as_bytes(), "chunks of {size}");
        }
        // Invalid bytes are reported at their offset in the whole input, whatever the
        // chunking: a stray continuation byte, a truncated character, a bad sequence.
        for (input, offset) in [
            (&b"abc\x80def"[..], 3),
            (&b"ab\xe6\x97"[..], 2),
            (&b"ab\xe6\x97A"[..], 2),
            (&b"\xc3\xa9\xc3"[..], 2),
            (&b"\xff"[..], 0),
        ] {
            for size in 1..=input.len() {
                let e = upper_in_chunks(input, size).await.expect_err("invalid");
                assert_eq!(
                    e.to_string(),
                    format!("content is not UTF-8 text (invalid byte at offset {offset})"),
                    "{input:?} in chunks of {size}"
                );
            }
        }
        // Nothing held back but the bytes of one split character.
        let mut upper = Upper::default();
        assert_eq!(upper.push("a日".as_bytes()[..2].as_ref()), Ok("A".into()));
        assert_eq!(upper.pending.len(), 1);
        assert_eq!(upper.push(&"日".as_bytes()[1..]), Ok("日".into()));
        assert!(upper.pending.is_empty());
        assert!(upper.finish().is_ok());
    }

    #[tokio::test]
    async fn in_memory_functions_refuse_objects_over_their_limit() {
        let small = Manifest::with_limit(16);
        let mut at_limit = info();
        at_limit.size = 16;
        let ok = small
            .run(
                once(Bytes::from(vec![b'a'; 16])),
                &at_limit,
                &CallContext::new("m"),
            )
            .await
            .expect("at the limit");
        assert!(collect_output(ok, 1 << 20).await.is_ok());
        let mut over = info();
        over.size = 17;
        let e = match small
            .run(
                once(Bytes::from(vec![b'a'; 17])),
                &over,
                &CallContext::new("m"),
            )
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("an object over the limit was accepted"),
        };
        assert_eq!(
            e.to_string(),
            "object is 17 bytes, more than the 16 bytes the manifest function reads into \
             memory (use a streaming function for larger objects)"
        );
        // A size the row understated is caught as the bytes arrive.
        let e = match small
            .run(
                once(Bytes::from(vec![b'a'; 40])),
                &at_limit,
                &CallContext::new("m"),
            )
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("bytes over the limit were accepted"),
        };
        assert!(e.to_string().contains("more than the 16 bytes"), "{e}");
        // The limit never exceeds the process-wide one.
        assert_eq!(Manifest::with_limit(u64::MAX).limit, IN_MEMORY_LIMIT);
    }

    #[tokio::test]
    async fn copy_and_manifest() {
        let body = Bytes::from_static(b"\x89PNG\r\n\x1a\nrest");
        assert_eq!(Copy.call(body.clone(), &info()).await.expect("copy"), body);
        let out = Manifest::default()
            .call(body.clone(), &info())
            .await
            .expect("manifest");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["size"], 12);
        assert_eq!(v["contentType"], "image/png");
        assert_eq!(v["sha256"], hex::encode(Sha256::digest(&body)));
        assert_eq!(
            Manifest::default().output_key("processed/a.png"),
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
