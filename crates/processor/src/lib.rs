//! Event-source mappings: read a stream shard by shard, hand batches of records to a
//! function, write what the function produced, then checkpoint — with the delivery
//! semantics of AWS Lambda's Kinesis event-source mapping.
//!
//! A record needs only `{"bucket","key"}` for the built-in object functions (any producer can
//! feed the pipeline); when it also carries an `uploadId`, the [`Observer`] is told how
//! processing went, which is how upload status follows the record. Batch functions (Lambda
//! handlers, [`BatchFunction`]) get the records themselves, as the Kinesis event Lambda sends.
//!
//! Invariants (see [`worker`] for how each is kept):
//! - Delivery is at-least-once and ordered per partition key (per shard when the
//!   parallelization factor is 1). A checkpoint is written only after every record up to it
//!   either succeeded (its outputs durable) or was handed, durably, to the on-failure
//!   destination (or bypassed when the mapping has none). After a restart, reading resumes
//!   right after the checkpoint: records of an interrupted batch are delivered again, none is
//!   skipped.
//! - A closed parent shard is read to its end before its children are read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sluice_store::ObjectStore;
use sluice_stream::{Stream, StreamError};
use tokio::sync::watch;

pub mod destination;
pub mod embedded;
pub mod event;
pub mod exec;
pub mod functions;
pub mod lambda;
pub mod leases;
pub mod logs;
pub mod mappings;
pub mod runner;
mod worker;

pub use destination::{DestinationSpec, FailureDestination, OnFailureRecord};
pub use functions::{
    BatchFunction, BatchInput, BatchResponse, CallContext, Function, FunctionError, ObjectFunction,
};
pub use mappings::{
    BUILTIN_MAPPING, FunctionSpec, MappingDefinition, MappingOptions, MappingState, MappingStore,
    NewMapping,
};
pub use sluice_meta::Meta;

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("checkpoint store failure: {0}")]
    Checkpoint(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("mapping {0} not found")]
    NotFound(String),
    #[error("mapping {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Function(String),
    /// The shard's lease passed to another processor: this one must stop its worker.
    #[error("{0}")]
    LeaseLost(String),
}

impl From<sluice_meta::MetaError> for ProcessorError {
    fn from(e: sluice_meta::MetaError) -> Self {
        ProcessorError::Checkpoint(e.to_string())
    }
}

/// Where a mapping starts reading a shard it has no checkpoint for (Lambda's
/// `StartingPosition`). A child shard of a closed parent is always read from its start
/// (TRIM_HORIZON) once the parent is done, whatever this says, so nothing between parent and
/// child is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StartingPosition {
    /// Records that arrive from the mapping's creation on. Pinned to the creation time, so a
    /// mapping that starts late (or restarts before its first checkpoint) still sees every
    /// record that arrived after it was created.
    Latest,
    /// The oldest record still retained.
    TrimHorizon,
    /// Records that arrived at or after a time (ms since the epoch).
    AtTimestamp(i64),
}

/// Lambda's only function response type: the function reports which records failed.
pub const REPORT_BATCH_ITEM_FAILURES: &str = "ReportBatchItemFailures";

/// One event-source mapping: a stream, a function, and how to deliver. Field names and
/// ranges follow Lambda's `CreateEventSourceMapping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappingConfig {
    pub name: String,
    pub stream: String,
    /// Records per function batch, 1–10,000 (`BatchSize`; Lambda's default is 100, the
    /// seed's mapping uses 10).
    pub batch_size: usize,
    pub starting_position: StartingPosition,
    /// Invocations of a failing batch before its records go to the on-failure destination:
    /// `MaximumRetryAttempts + 1`. `0` retries until the records expire (Lambda's `-1`, its
    /// default). See [`MappingConfig::maximum_retry_attempts`].
    pub max_attempts: u32,
    /// Bucket for the outputs of object functions; `None` writes beside the input.
    pub output_bucket: Option<String>,
    /// Output key: the input key with its `uploads/` prefix replaced by this (or this
    /// prefixed to the whole key when the input is not under `uploads/`).
    pub output_prefix: String,
    /// How long to gather records before invoking, 0–300 s
    /// (`MaximumBatchingWindowInSeconds`). With 0 a batch is invoked as soon as records
    /// are there.
    #[serde(default)]
    pub maximum_batching_window_secs: u32,
    /// Concurrent batches per shard, 1–10 (`ParallelizationFactor`). Records with the same
    /// partition key always go to the same batch lane, so their order is kept.
    #[serde(default = "one")]
    pub parallelization_factor: u32,
    /// Records older than this are not sent to the function but to the on-failure
    /// destination: `-1` (default) = until the stream's retention drops them, else 60–604,800
    /// (`MaximumRecordAgeInSeconds`).
    #[serde(default = "minus_one")]
    pub maximum_record_age_secs: i64,
    /// On a function error, split the batch in two and retry each half; splitting does not
    /// use up retries (`BisectBatchOnFunctionError`).
    #[serde(default)]
    pub bisect_batch_on_function_error: bool,
    /// `["ReportBatchItemFailures"]` to honour partial batch responses
    /// (`FunctionResponseTypes`).
    #[serde(default)]
    pub function_response_types: Vec<String>,
    /// Where records that could not be processed are described (`DestinationConfig.OnFailure`).
    #[serde(default)]
    pub on_failure: Option<DestinationSpec>,
}

fn one() -> u32 {
    1
}

fn minus_one() -> i64 {
    -1
}

impl MappingConfig {
    /// A mapping with Lambda's defaults: batch size 100, LATEST, no batching window,
    /// parallelization 1, retries and record age unlimited (-1), no bisect, no partial batch
    /// responses, no destination; object outputs under `processed/` beside the input.
    pub fn new(name: impl Into<String>, stream: impl Into<String>) -> Self {
        MappingConfig {
            name: name.into(),
            stream: stream.into(),
            batch_size: 100,
            starting_position: StartingPosition::Latest,
            max_attempts: 0,
            output_bucket: None,
            output_prefix: "processed/".into(),
            maximum_batching_window_secs: 0,
            parallelization_factor: 1,
            maximum_record_age_secs: -1,
            bisect_batch_on_function_error: false,
            function_response_types: Vec::new(),
            on_failure: None,
        }
    }

    /// Lambda's `MaximumRetryAttempts`: -1 for unlimited, else 0–10,000.
    pub fn maximum_retry_attempts(&self) -> i64 {
        if self.max_attempts == 0 {
            -1
        } else {
            i64::from(self.max_attempts) - 1
        }
    }

    /// Sets [`MappingConfig::max_attempts`] from Lambda's `MaximumRetryAttempts`.
    pub fn set_maximum_retry_attempts(&mut self, retries: i64) -> Result<(), ProcessorError> {
        if retries == -1 {
            self.max_attempts = 0;
            return Ok(());
        }
        if !(0..=10_000).contains(&retries) {
            return Err(ProcessorError::InvalidConfig(format!(
                "maximum retry attempts must be -1 or between 0 and 10000, got {retries}"
            )));
        }
        self.max_attempts = retries as u32 + 1;
        Ok(())
    }

    pub fn reports_batch_item_failures(&self) -> bool {
        self.function_response_types
            .iter()
            .any(|t| t == REPORT_BATCH_ITEM_FAILURES)
    }

    pub fn validate(&self) -> Result<(), ProcessorError> {
        let bad = |m: String| Err(ProcessorError::InvalidConfig(m));
        if self.name.is_empty() || self.name.len() > 140 {
            return bad(format!(
                "mapping name must be 1 to 140 characters, got {:?}",
                self.name
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return bad(format!(
                "batch size must be between 1 and 10000, got {}",
                self.batch_size
            ));
        }
        if self.max_attempts > 10_001 {
            return bad(format!(
                "max attempts must be at most 10001 (10000 retries), got {}",
                self.max_attempts
            ));
        }
        if self.maximum_batching_window_secs > 300 {
            return bad(format!(
                "maximum batching window must be between 0 and 300 seconds, got {}",
                self.maximum_batching_window_secs
            ));
        }
        if !(1..=10).contains(&self.parallelization_factor) {
            return bad(format!(
                "parallelization factor must be between 1 and 10, got {}",
                self.parallelization_factor
            ));
        }
        let age = self.maximum_record_age_secs;
        if age != -1 && !(60..=604_800).contains(&age) {
            return bad(format!(
                "maximum record age must be -1 or between 60 and 604800 seconds, got {age}"
            ));
        }
        for t in &self.function_response_types {
            if t != REPORT_BATCH_ITEM_FAILURES {
                return bad(format!(
                    "unknown function response type {t:?} (only {REPORT_BATCH_ITEM_FAILURES} exists)"
                ));
            }
        }
        if let Some(d) = &self.on_failure {
            d.validate()?;
        }
        Ok(())
    }
}

/// A checkpoint: the last sequence number of a shard whose processing is durable.
#[async_trait]
pub trait Checkpoints: Send + Sync + 'static {
    /// Registers the mapping on first run and returns its creation time (ms); later runs
    /// get the time of the first.
    async fn register(&self, mapping: &str, stream: &str) -> Result<i64, ProcessorError>;
    /// [`Checkpoints::register`] with the creation time to record on first run (a persisted
    /// mapping's `created_ms`, so that LATEST means "since the user created it", even when
    /// the server started it later). Stores that keep no time ignore it.
    async fn register_at(
        &self,
        mapping: &str,
        stream: &str,
        _created_ms: i64,
    ) -> Result<i64, ProcessorError> {
        self.register(mapping, stream).await
    }
    async fn load(&self, mapping: &str, shard_id: &str) -> Result<Option<String>, ProcessorError>;
    async fn save(
        &self,
        mapping: &str,
        shard_id: &str,
        sequence_number: &str,
    ) -> Result<(), ProcessorError>;

    /// The embedded database the checkpoints live in, when they do: an [`Observer`] that
    /// keeps its rows in the same database can then have its writes committed together
    /// with the checkpoint ([`Checkpoints::save_with`]).
    fn db(&self) -> Option<&sluice_meta::Meta> {
        None
    }

    /// Runs `extra` and saves the checkpoint (when `sequence_number` is given) in one
    /// transaction: both or neither. Only for stores with a [`Checkpoints::db`]; others
    /// refuse.
    async fn save_with(
        &self,
        mapping: &str,
        _shard_id: &str,
        _sequence_number: Option<&str>,
        _extra: TxWrite,
    ) -> Result<(), ProcessorError> {
        Err(ProcessorError::Checkpoint(format!(
            "the checkpoint store of mapping {mapping} cannot join other writes"
        )))
    }
}

/// A write run inside another part's transaction of the embedded database.
pub type TxWrite =
    Box<dyn FnMut(&sluice_meta::Tx<'_>) -> Result<(), sluice_meta::MetaError> + Send>;

/// The fields of a record a processor uses. Everything else is passed through untouched.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordRef {
    pub bucket: String,
    pub key: String,
    #[serde(default)]
    pub upload_id: Option<String>,
}

/// What happened to a record that carries an upload id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusUpdate {
    /// The record's batch is still running [`PROCESSING_AFTER`] after it started (fast
    /// batches go straight to `Succeeded`/`Failed`).
    Started { upload_id: String },
    /// Processed; the output is at `bucket/key`. `new_delivery`: no `Started` was reported
    /// for this delivery, so this update is the first of it.
    Succeeded {
        upload_id: String,
        bucket: String,
        key: String,
        new_delivery: bool,
    },
    /// Given up on (after retries, or too old). `new_delivery` as for `Succeeded`.
    Failed {
        upload_id: String,
        error: String,
        new_delivery: bool,
    },
}

/// How long a batch runs before its records are reported [`StatusUpdate::Started`]: a
/// batch that finishes sooner reports only its outcome, one durable write instead of two.
pub const PROCESSING_AFTER: std::time::Duration = std::time::Duration::from_millis(5);

/// Told what happens to records that carry an upload id. The worker reports a batch's
/// updates with [`Observer::report`], or — when the observer keeps its rows in the
/// checkpoints' database ([`Observer::write_with`]) — in the same transaction as the
/// checkpoint. Updates of a record always arrive in order (`Started` is durable before
/// the outcome is written).
#[async_trait]
pub trait Observer: Send + Sync + 'static {
    async fn started(&self, upload_id: &str);
    async fn succeeded(&self, upload_id: &str, bucket: &str, key: &str);
    async fn failed(&self, upload_id: &str, error: &str);

    /// The updates of a batch; returns once they are written. By default, one by one
    /// through the methods above.
    async fn report(&self, updates: Vec<StatusUpdate>) {
        for u in updates {
            match u {
                StatusUpdate::Started { upload_id } => self.started(&upload_id).await,
                StatusUpdate::Succeeded {
                    upload_id,
                    bucket,
                    key,
                    ..
                } => self.succeeded(&upload_id, &bucket, &key).await,
                StatusUpdate::Failed {
                    upload_id, error, ..
                } => self.failed(&upload_id, &error).await,
            }
        }
    }

    /// The updates as a write inside a transaction of `db`, if this observer keeps its
    /// rows in that database; the worker then commits them together with the checkpoint.
    /// `None` (the default): the worker calls [`Observer::report`] before the checkpoint.
    fn write_with(&self, _db: &sluice_meta::Meta, _updates: &[StatusUpdate]) -> Option<TxWrite> {
        None
    }

    /// Called once a [`Observer::write_with`] write has committed.
    fn written(&self, _updates: &[StatusUpdate]) {}
}

/// An observer that ignores everything.
pub struct NoObserver;

#[async_trait]
impl Observer for NoObserver {
    async fn started(&self, _: &str) {}
    async fn succeeded(&self, _: &str, _: &str, _: &str) {}
    async fn failed(&self, _: &str, _: &str) {}
}

/// What a mapping is doing and how it went, as Lambda's `GetEventSourceMapping`
/// (`State`, `LastProcessingResult`) and its CloudWatch metrics (`IteratorAge`, …) report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct MappingStats {
    /// `Enabled` while workers run, `Disabled` once they stopped.
    pub state: String,
    /// `OK`, `PROBLEM: Function call failed`, or empty before the first batch.
    pub last_processing_result: String,
    /// Records read from the stream.
    pub records_in: u64,
    /// Records the function processed successfully.
    pub succeeded: u64,
    /// Records given up on (sent to the on-failure destination or bypassed).
    pub failed: u64,
    /// Function invocations.
    pub batches: u64,
    /// Invocations that failed (each retry counts).
    pub function_errors: u64,
    /// Duration of the last invocation.
    pub last_batch_ms: u64,
    /// Iterator age (`MillisBehindLatest`) of the last read, the largest over shards.
    pub millis_behind_latest: i64,
    /// Iterator age of each shard's last read.
    pub millis_behind_latest_by_shard: std::collections::BTreeMap<String, i64>,
    pub last_error: Option<String>,
    /// `updated_ms` of the persisted definition the workers run (0 for a mapping not
    /// started from a definition): tells a reader whether a change was applied yet.
    pub definition_updated_ms: i64,
}

/// Account and region used to build the ARNs in events and failure records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsIdentity {
    pub region: String,
    pub account_id: String,
}

impl Default for AwsIdentity {
    fn default() -> Self {
        AwsIdentity {
            region: "us-east-2".into(),
            account_id: "000000000000".into(),
        }
    }
}

impl AwsIdentity {
    pub fn stream_arn(&self, stream: &str) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:stream/{stream}",
            self.region, self.account_id
        )
    }

    pub fn function_arn(&self, function: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{function}",
            self.region, self.account_id
        )
    }
}

/// Runs mappings.
#[derive(Clone)]
pub struct Processor {
    pub(crate) stream: Arc<dyn Stream>,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) checkpoints: Arc<dyn Checkpoints>,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) stats: Arc<Mutex<HashMap<String, MappingStats>>>,
    pub(crate) aws: AwsIdentity,
    pub(crate) logs: Option<Arc<dyn logs::LogSink>>,
    /// A stream whose status-tracking mapping (see [`Processor::with_status_tracking`])
    /// tells this observer, whatever [`Processor::with_observer`] set.
    pub(crate) status_tracking: Option<(String, Arc<dyn Observer>)>,
    /// Functions created with Lambda's API, for mappings that name one (`function:<name>`).
    pub(crate) functions: Option<Arc<dyn functions::FunctionResolver>>,
    /// Shard leases shared with other processor processes; `None`: this process runs
    /// every shard of its mappings.
    pub(crate) leases: Option<Arc<leases::ShardLeases>>,
}

impl Processor {
    pub fn new(
        stream: Arc<dyn Stream>,
        store: Arc<dyn ObjectStore>,
        checkpoints: Arc<dyn Checkpoints>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Processor {
            stream,
            store,
            checkpoints,
            observer,
            stats: Arc::new(Mutex::new(HashMap::new())),
            aws: AwsIdentity::default(),
            logs: None,
            status_tracking: None,
            functions: None,
            leases: None,
        }
    }

    /// Shares the shards of every mapping with other processes through `leases` (the
    /// checkpoints must be guarded by the same leases:
    /// [`embedded::EmbeddedCheckpoints::with_leases`]).
    pub fn with_leases(mut self, leases: Arc<leases::ShardLeases>) -> Self {
        self.leases = Some(leases);
        self
    }

    /// Mappings may run functions created with Lambda's API (`function:<name>`).
    pub fn with_functions(mut self, functions: Arc<dyn functions::FunctionResolver>) -> Self {
        self.functions = Some(functions);
        self
    }

    /// Sends functions' log lines (and Lambda's START/END/REPORT lines) to `logs`.
    pub fn with_logs(mut self, logs: Arc<dyn logs::LogSink>) -> Self {
        self.logs = Some(logs);
        self
    }

    /// Sets the region and account used in ARNs (default `us-east-2`, `000000000000`).
    pub fn with_aws_identity(mut self, aws: AwsIdentity) -> Self {
        self.aws = aws;
        self
    }

    pub fn aws_identity(&self) -> &AwsIdentity {
        &self.aws
    }

    pub fn stats(&self) -> HashMap<String, MappingStats> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Drops a mapping's statistics (after it was deleted, so that a new mapping of the same
    /// name starts from zero).
    pub fn forget_stats(&self, mapping: &str) {
        if let Ok(mut s) = self.stats.lock() {
            s.remove(mapping);
        }
    }

    /// The same processor (same stream, store, checkpoints, logs and statistics) telling
    /// another observer how records went: e.g. upload status follows only the built-in
    /// mapping, not every mapping that reads the upload stream.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Lets one persisted mapping on `stream` tell `observer` (upload status) when no
    /// built-in mapping does: the [`runner::MappingRunner`] gives it to the **oldest
    /// enabled mapping on that stream** (earliest `created_ms`, then name) and restarts
    /// mappings when that role moves. Kept by [`Processor::with_observer`].
    pub fn with_status_tracking(
        mut self,
        stream: impl Into<String>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        self.status_tracking = Some((stream.into(), observer));
        self
    }

    /// The stream of [`Processor::with_status_tracking`], if set.
    pub fn status_tracking_stream(&self) -> Option<&str> {
        self.status_tracking.as_ref().map(|(s, _)| s.as_str())
    }

    /// This processor telling the status-tracking observer, if one was set.
    pub(crate) fn tracking_status(&self) -> Option<Processor> {
        let (_, o) = self.status_tracking.as_ref()?;
        Some(self.clone().with_observer(o.clone()))
    }

    /// Builds the destination a spec names, on this processor's stream and store.
    pub fn destination(&self, spec: &DestinationSpec) -> Arc<dyn FailureDestination> {
        spec.build(self.stream.clone(), self.store.clone())
    }

    /// Runs an object function (bytes of the object in, bytes of the output out) for every
    /// record of the mapping; see [`ObjectFunction`] for how outputs and failures map onto
    /// the batch semantics. Returns the mapping's supervisor task: it starts a worker per
    /// shard (and for shards that appear later), and ends once `shutdown` turned true and
    /// every worker stopped.
    pub async fn start(
        &self,
        mapping: MappingConfig,
        function: Arc<dyn Function>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, ProcessorError> {
        let f = ObjectFunction::new(
            function,
            self.store.clone(),
            mapping.output_bucket.clone(),
            mapping.output_prefix.clone(),
        );
        self.start_batch(mapping, Arc::new(f), shutdown).await
    }

    /// Runs a batch function (it receives the records of a batch, as a Lambda function
    /// receives a Kinesis event) for the mapping.
    pub async fn start_batch(
        &self,
        mapping: MappingConfig,
        function: Arc<dyn BatchFunction>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, ProcessorError> {
        self.start_batch_created(mapping, function, shutdown, None)
            .await
    }

    async fn start_batch_created(
        &self,
        mapping: MappingConfig,
        function: Arc<dyn BatchFunction>,
        shutdown: watch::Receiver<bool>,
        created_ms: Option<i64>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, ProcessorError> {
        mapping.validate()?;
        let created_ms = match created_ms {
            Some(t) => {
                self.checkpoints
                    .register_at(&mapping.name, &mapping.stream, t)
                    .await?
            }
            None => {
                self.checkpoints
                    .register(&mapping.name, &mapping.stream)
                    .await?
            }
        };
        // Fail early on a missing stream instead of inside the workers.
        self.stream.describe_stream(&mapping.stream).await?;
        let destination = mapping.on_failure.as_ref().map(|d| self.destination(d));
        self.update_stats(&mapping.name, |s| s.state = "Enabled".into());
        let sup = worker::Supervisor {
            p: self.clone(),
            mapping: Arc::new(mapping),
            function,
            destination,
            created_ms,
        };
        Ok(vec![tokio::spawn(sup.run(shutdown))])
    }

    /// Starts a persisted mapping: builds its function from the definition (built-ins and
    /// `exec` run as object functions, `lambda` as a batch function with warm workers) and
    /// runs it as [`Processor::start_batch`] does. A disabled mapping is refused.
    pub async fn start_definition(
        &self,
        def: &MappingDefinition,
        lambda_env: &lambda::LambdaEnvironment,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, ProcessorError> {
        def.validate()?;
        if def.state != MappingState::Enabled {
            return Err(ProcessorError::InvalidConfig(format!(
                "mapping {} is disabled",
                def.name()
            )));
        }
        let function = self.build_function(def, lambda_env)?;
        let created = (def.created_ms > 0).then_some(def.created_ms);
        self.start_batch_created(def.config.clone(), function, shutdown, created)
            .await
    }

    /// The function a definition names.
    pub fn build_function(
        &self,
        def: &MappingDefinition,
        lambda_env: &lambda::LambdaEnvironment,
    ) -> Result<Arc<dyn BatchFunction>, ProcessorError> {
        let object = |f: Arc<dyn Function>| -> Arc<dyn BatchFunction> {
            Arc::new(ObjectFunction::new(
                f,
                self.store.clone(),
                def.config.output_bucket.clone(),
                def.config.output_prefix.clone(),
            ))
        };
        let failed = |e: FunctionError| ProcessorError::Function(e.to_string());
        Ok(match &def.function {
            FunctionSpec::Builtin { name } if name == functions::NOOP => Arc::new(functions::Noop),
            FunctionSpec::Builtin { name } => {
                object(functions::builtin(name).ok_or_else(|| {
                    ProcessorError::InvalidConfig(format!("unknown built-in function {name:?}"))
                })?)
            }
            FunctionSpec::Exec { argv } => object(Arc::new(
                exec::Exec::new(
                    argv.clone(),
                    def.settings.environment.clone(),
                    std::time::Duration::from_secs(def.settings.timeout_secs),
                )
                .map_err(failed)?,
            )),
            FunctionSpec::Lambda {
                runtime,
                code_dir,
                handler,
            } => Arc::new(
                lambda::LambdaFunction::new(
                    def.name(),
                    *runtime,
                    code_dir,
                    handler.clone(),
                    def.settings.clone(),
                    lambda_env.clone(),
                )
                .map_err(failed)?,
            ),
            FunctionSpec::Function { name } => self
                .functions
                .as_ref()
                .ok_or_else(|| {
                    ProcessorError::InvalidConfig(format!(
                        "function {name:?}: this processor runs no functions created with Lambda's API"
                    ))
                })?
                .resolve(name),
        })
    }

    pub(crate) fn update_stats(&self, mapping: &str, f: impl FnOnce(&mut MappingStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(s.entry(mapping.to_owned()).or_default());
        }
    }
}

/// `uploads/a/b.txt` → `processed/a/b.txt`; `other/x` → `processed/other/x`.
pub fn output_key(input: &str, prefix: &str) -> String {
    match input.strip_prefix("uploads/") {
        Some(rest) => format!("{prefix}{rest}"),
        None => format!("{prefix}{input}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keys() {
        assert_eq!(
            output_key("uploads/demo.txt", "processed/"),
            "processed/demo.txt"
        );
        assert_eq!(
            output_key("x/demo.txt", "processed/"),
            "processed/x/demo.txt"
        );
    }

    #[test]
    fn config_validation_follows_lambda_ranges() {
        let ok = MappingConfig::new("m", "s");
        assert!(ok.validate().is_ok());
        assert_eq!(ok.maximum_retry_attempts(), -1);
        let mut c = ok.clone();
        c.batch_size = 10_001;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.parallelization_factor = 11;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.maximum_record_age_secs = 59;
        assert!(c.validate().is_err());
        c.maximum_record_age_secs = 60;
        assert!(c.validate().is_ok());
        let mut c = ok.clone();
        c.maximum_batching_window_secs = 301;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.function_response_types = vec!["Other".into()];
        assert!(c.validate().is_err());
        let mut c = ok;
        c.set_maximum_retry_attempts(2).expect("in range");
        assert_eq!((c.max_attempts, c.maximum_retry_attempts()), (3, 2));
        assert!(c.set_maximum_retry_attempts(-2).is_err());
    }
}
