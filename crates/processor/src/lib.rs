//! Event-source mappings: read a stream shard by shard, hand each record's object to a
//! processing function, write the function's output, then checkpoint.
//!
//! A record needs only `{"bucket","key"}` (any producer can feed the pipeline); when it also
//! carries an `uploadId`, the [`Observer`] is told how processing went, which is how upload
//! status follows the record.
//!
//! Delivery is at-least-once and ordered per shard: a shard's records are processed one
//! after the other, and a checkpoint is written only after the outputs of every record
//! before it are durable. After a restart, reading resumes right after the checkpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_store::{ObjectStore, PutOptions};
use sluice_stream::{IteratorSpec, Stream, StreamError};
use tokio::sync::watch;

pub mod embedded;
pub mod functions;

pub use functions::{Function, FunctionError};

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("checkpoint store failure: {0}")]
    Checkpoint(String),
    #[error("{0}")]
    InvalidConfig(String),
}

impl From<sluice_db::DbError> for ProcessorError {
    fn from(e: sluice_db::DbError) -> Self {
        ProcessorError::Checkpoint(e.to_string())
    }
}

impl From<sluice_db::rusqlite::Error> for ProcessorError {
    fn from(e: sluice_db::rusqlite::Error) -> Self {
        ProcessorError::Checkpoint(e.to_string())
    }
}

/// Where a mapping starts reading a shard it has no checkpoint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StartingPosition {
    /// Records that arrive from the mapping's creation on.
    Latest,
    /// The oldest record still retained.
    TrimHorizon,
    /// Records that arrived at or after a time (ms since the epoch).
    AtTimestamp(i64),
}

/// One event-source mapping: a stream, a function, and how to deliver.
#[derive(Debug, Clone)]
pub struct MappingConfig {
    pub name: String,
    pub stream: String,
    /// Records per function batch (the seed's mapping uses 10).
    pub batch_size: usize,
    pub starting_position: StartingPosition,
    /// Attempts per record before it is reported failed and the shard moves on.
    pub max_attempts: u32,
    /// Bucket for outputs; `None` writes beside the input.
    pub output_bucket: Option<String>,
    /// Output key: the input key with its `uploads/` prefix replaced by this (or this
    /// prefixed to the whole key when the input is not under `uploads/`).
    pub output_prefix: String,
}

impl MappingConfig {
    pub fn validate(&self) -> Result<(), ProcessorError> {
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(ProcessorError::InvalidConfig(format!(
                "batch size must be between 1 and 10000, got {}",
                self.batch_size
            )));
        }
        if self.max_attempts == 0 {
            return Err(ProcessorError::InvalidConfig(
                "max attempts must be at least 1".into(),
            ));
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
    async fn load(&self, mapping: &str, shard_id: &str) -> Result<Option<String>, ProcessorError>;
    async fn save(
        &self,
        mapping: &str,
        shard_id: &str,
        sequence_number: &str,
    ) -> Result<(), ProcessorError>;
}

/// The fields of a record a processor uses. Everything else is passed through untouched.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordRef {
    pub bucket: String,
    pub key: String,
    #[serde(default)]
    pub upload_id: Option<String>,
}

/// Told what happens to records that carry an upload id.
#[async_trait]
pub trait Observer: Send + Sync + 'static {
    async fn started(&self, upload_id: &str);
    async fn succeeded(&self, upload_id: &str, bucket: &str, key: &str);
    async fn failed(&self, upload_id: &str, error: &str);
}

/// An observer that ignores everything.
pub struct NoObserver;

#[async_trait]
impl Observer for NoObserver {
    async fn started(&self, _: &str) {}
    async fn succeeded(&self, _: &str, _: &str, _: &str) {}
    async fn failed(&self, _: &str, _: &str) {}
}

/// Counters of a mapping.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MappingStats {
    pub records_in: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub batches: u64,
    pub last_batch_ms: u64,
    pub millis_behind_latest: i64,
    pub last_error: Option<String>,
}

/// Runs mappings.
#[derive(Clone)]
pub struct Processor {
    stream: Arc<dyn Stream>,
    store: Arc<dyn ObjectStore>,
    checkpoints: Arc<dyn Checkpoints>,
    observer: Arc<dyn Observer>,
    stats: Arc<Mutex<HashMap<String, MappingStats>>>,
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
        }
    }

    pub fn stats(&self) -> HashMap<String, MappingStats> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Starts one worker per shard of the mapping's stream and returns; workers stop when
    /// `shutdown` turns true.
    pub async fn start(
        &self,
        mapping: MappingConfig,
        function: Arc<dyn Function>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, ProcessorError> {
        mapping.validate()?;
        let created_ms = self
            .checkpoints
            .register(&mapping.name, &mapping.stream)
            .await?;
        let desc = self.stream.describe_stream(&mapping.stream).await?;
        let mapping = Arc::new(mapping);
        let mut handles = Vec::new();
        for shard in desc.shards {
            let worker = ShardWorker {
                p: self.clone(),
                mapping: mapping.clone(),
                function: function.clone(),
                shard_id: shard.shard_id,
                created_ms,
            };
            let sd = shutdown.clone();
            handles.push(tokio::spawn(async move { worker.run(sd).await }));
        }
        Ok(handles)
    }

    fn update_stats(&self, mapping: &str, f: impl FnOnce(&mut MappingStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(s.entry(mapping.to_owned()).or_default());
        }
    }
}

struct ShardWorker {
    p: Processor,
    mapping: Arc<MappingConfig>,
    function: Arc<dyn Function>,
    shard_id: String,
    created_ms: i64,
}

/// How long a worker at the tail waits for a wake-up before looking again anyway.
const IDLE_WAIT: Duration = Duration::from_secs(1);

impl ShardWorker {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let m = &self.mapping;
        let mut changes = self.p.stream.watch(&m.stream);
        let mut iterator: Option<String> = None;
        let mut failures = 0u32;
        while !*shutdown.borrow() {
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.fresh_iterator().await {
                    Ok(it) => it,
                    Err(e) => {
                        failures += 1;
                        self.pause_after_error(
                            "cannot get a shard iterator",
                            &e,
                            failures,
                            &mut shutdown,
                        )
                        .await;
                        continue;
                    }
                },
            };
            // Mark before reading: a commit between this read and the wait below still wakes us.
            changes.borrow_and_update();
            let out = match self.p.stream.get_records(&it, m.batch_size).await {
                Ok(out) => out,
                Err(StreamError::ExpiredIterator(_)) => continue,
                Err(e) => {
                    failures += 1;
                    self.pause_after_error("cannot read records", &e, failures, &mut shutdown)
                        .await;
                    continue;
                }
            };
            failures = 0;
            self.p.update_stats(&m.name, |s| {
                s.millis_behind_latest = out.millis_behind_latest;
            });
            if out.records.is_empty() {
                let Some(next) = out.next_iterator else {
                    tracing::info!(mapping = %m.name, shard = %self.shard_id, "shard closed and drained");
                    return;
                };
                iterator = Some(next);
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(IDLE_WAIT) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let started = std::time::Instant::now();
            let last_seq = out
                .records
                .last()
                .map(|r| r.sequence_number.clone())
                .unwrap_or_default();
            for record in &out.records {
                if *shutdown.borrow() {
                    // Stop before the batch is done: nothing after the checkpoint is
                    // lost, the rest is delivered again at next start.
                    return;
                }
                self.process(&record.data, &record.sequence_number).await;
            }
            if let Err(e) = self
                .p
                .checkpoints
                .save(&m.name, &self.shard_id, &last_seq)
                .await
            {
                // Without the checkpoint the batch will be delivered again; that is the
                // at-least-once contract, so carry on from a fresh iterator.
                tracing::warn!(mapping = %m.name, shard = %self.shard_id, error = %e, "checkpoint failed");
                continue;
            }
            let n = out.records.len() as u64;
            self.p.update_stats(&m.name, |s| {
                s.batches += 1;
                s.records_in += n;
                s.last_batch_ms = started.elapsed().as_millis() as u64;
            });
            iterator = out.next_iterator;
            if iterator.is_none() {
                tracing::info!(mapping = %m.name, shard = %self.shard_id, "shard closed and drained");
                return;
            }
        }
    }

    async fn fresh_iterator(&self) -> Result<String, ProcessorError> {
        let m = &self.mapping;
        let spec = match self.p.checkpoints.load(&m.name, &self.shard_id).await? {
            Some(seq) => IteratorSpec::AfterSequenceNumber(seq),
            None => match m.starting_position {
                StartingPosition::Latest => IteratorSpec::AtTimestamp(self.created_ms),
                StartingPosition::TrimHorizon => IteratorSpec::TrimHorizon,
                StartingPosition::AtTimestamp(t) => IteratorSpec::AtTimestamp(t),
            },
        };
        Ok(self
            .p
            .stream
            .get_shard_iterator(&m.stream, &self.shard_id, spec)
            .await?)
    }

    async fn pause_after_error(
        &self,
        what: &str,
        e: &(dyn std::fmt::Display + Sync),
        failures: u32,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        tracing::warn!(mapping = %self.mapping.name, shard = %self.shard_id, error = %e, "{what}");
        let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }

    /// Processes one record, retrying up to the mapping's attempts. Never fails: a record
    /// that cannot be processed is reported and skipped, so it cannot block its shard.
    async fn process(&self, data: &Bytes, seq: &str) {
        let m = &self.mapping;
        let rec: RecordRef = match serde_json::from_slice(data) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(mapping = %m.name, shard = %self.shard_id, sequence = seq, error = %e,
                    "record is not an object reference ({{\"bucket\",\"key\"}}); skipped");
                self.p.update_stats(&m.name, |s| {
                    s.failed += 1;
                    s.last_error = Some(format!("record {seq}: {e}"));
                });
                return;
            }
        };
        if let Some(id) = &rec.upload_id {
            self.p.observer.started(id).await;
        }
        let out_bucket = m
            .output_bucket
            .clone()
            .unwrap_or_else(|| rec.bucket.clone());
        let out_key = output_key(&rec.key, &m.output_prefix);
        let mut last_err = String::new();
        for attempt in 1..=m.max_attempts {
            match self.attempt(&rec, &out_bucket, &out_key).await {
                Ok(()) => {
                    if let Some(id) = &rec.upload_id {
                        self.p.observer.succeeded(id, &out_bucket, &out_key).await;
                    }
                    self.p.update_stats(&m.name, |s| s.succeeded += 1);
                    return;
                }
                Err(e) => {
                    last_err = e;
                    tracing::warn!(mapping = %m.name, key = %rec.key, attempt, error = %last_err,
                        "processing failed");
                    if attempt < m.max_attempts {
                        tokio::time::sleep(Duration::from_millis(50 * 2u64.pow(attempt))).await;
                    }
                }
            }
        }
        if let Some(id) = &rec.upload_id {
            self.p.observer.failed(id, &last_err).await;
        }
        self.p.update_stats(&m.name, |s| {
            s.failed += 1;
            s.last_error = Some(last_err.clone());
        });
    }

    async fn attempt(
        &self,
        rec: &RecordRef,
        out_bucket: &str,
        out_key: &str,
    ) -> Result<(), String> {
        let obj = self
            .p
            .store
            .get(&rec.bucket, &rec.key)
            .await
            .map_err(|e| format!("cannot read input: {e}"))?;
        let output = self
            .function
            .call(obj.body, &obj.info)
            .await
            .map_err(|e| e.to_string())?;
        self.p
            .store
            .put(
                out_bucket,
                out_key,
                output,
                PutOptions {
                    content_type: Some(obj.info.content_type.clone()),
                    owner: None,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("cannot write output: {e}"))?;
        Ok(())
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
}
