//! The server side of user-managed mappings: `[[mapping]]` entries of `sluice.toml` are
//! created (or brought up to date) at start, a [`MappingRunner`] keeps the running mappings
//! in line with the definitions in the shared database (polled every [`SYNC_EVERY`], which is
//! how `sluice mapping …` from another process takes effect), and the processor's statistics
//! are saved to the database every [`SAVE_STATS_EVERY`] while they change, for
//! `sluice mapping get|list`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_identity::access_keys::AccessKeys;
use sluice_meta::Meta;
use sluice_processor::embedded::{EmbeddedMappings, EmbeddedStats};
use sluice_processor::lambda::LambdaEnvironment;
use sluice_processor::logs::BufferedLogs;
use sluice_processor::mappings::MappingDefinition;
use sluice_processor::mappings::{Reconcile, reconcile};
use sluice_processor::runner::{FunctionKeys, MappingRunner};
use sluice_processor::{MappingStore, NoObserver, Processor, ProcessorError};
use tokio::sync::watch;

use crate::config::Settings;

/// How often the server re-reads the mapping definitions.
pub(crate) const SYNC_EVERY: Duration = Duration::from_millis(250);
/// How often changed statistics are saved.
pub(crate) const SAVE_STATS_EVERY: Duration = Duration::from_millis(250);
/// Description of the one full-access key earlier versions gave every lambda function;
/// deleted at start (each function now has a key of its own, [`ScopedFunctionKeys`]).
pub(crate) const LAMBDA_KEY_DESCRIPTION: &str = "lambda functions of sluice serve (managed)";

/// Description of the key of mapping `name`'s function (its secret is never printed).
pub(crate) fn function_key_description(name: &str) -> String {
    format!("function of mapping {name} (managed)")
}

/// Each lambda function's own access key, limited to what its mapping needs (or to the
/// policy the mapping names, `--policy`), as a Lambda function runs with its execution
/// role: a function cannot read, write or delete what its mapping does not concern.
pub(crate) struct ScopedFunctionKeys {
    pub(crate) keys: AccessKeys,
    pub(crate) region: String,
    pub(crate) account_id: String,
    /// The bucket whose `uploads/` the functions read.
    pub(crate) upload_bucket: String,
}

impl ScopedFunctionKeys {
    /// The policy a mapping's function gets unless the mapping names its own: read its
    /// stream, read `uploads/` of the upload bucket, write under the mapping's output prefix
    /// (in its output bucket, or in any bucket when it names none: the seed's handler
    /// writes to a bucket its environment names).
    pub(crate) fn default_policy(&self, def: &MappingDefinition) -> String {
        let stream = format!(
            "arn:aws:kinesis:{}:{}:stream/{}",
            self.region, self.account_id, def.config.stream
        );
        let out_bucket = def.config.output_bucket.as_deref().unwrap_or("*");
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                crate::builtin_roles::read_stream_statement("ReadItsStream", &stream),
                {
                    "Sid": "ReadUploads",
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": format!("arn:aws:s3:::{}/uploads/*", self.upload_bucket)
                },
                {
                    "Sid": "WriteOutputs",
                    "Effect": "Allow",
                    "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                    "Resource": format!("arn:aws:s3:::{out_bucket}/{}*", def.config.output_prefix)
                }
            ]
        })
        .to_string()
    }
}

#[async_trait::async_trait]
impl FunctionKeys for ScopedFunctionKeys {
    async fn key_for(&self, def: &MappingDefinition) -> Result<(String, String), ProcessorError> {
        let policy = def
            .settings
            .policy
            .clone()
            .unwrap_or_else(|| self.default_policy(def));
        let keys = self.keys.clone();
        let description = function_key_description(def.name());
        let key = tokio::task::spawn_blocking(move || {
            keys.find_or_create_scoped(&description, Some(&policy))
        })
        .await
        .map_err(|e| ProcessorError::Function(format!("cannot issue the function's key: {e}")))?
        .map_err(|e| ProcessorError::Function(format!("cannot issue the function's key: {e}")))?;
        Ok((key.id, key.secret))
    }

    async fn retire(&self, mapping: &str) -> Result<(), ProcessorError> {
        let keys = self.keys.clone();
        let description = function_key_description(mapping);
        tokio::task::spawn_blocking(move || keys.retire(&description))
            .await
            .map_err(|e| ProcessorError::Function(e.to_string()))?
            .map_err(|e| ProcessorError::Function(e.to_string()))?;
        Ok(())
    }
}

/// The running mapping machinery; [`Mappings::finish`] waits for it after shutdown.
pub(crate) struct Mappings {
    task: tokio::task::JoinHandle<()>,
    logs: BufferedLogs,
}

/// Applies the `[[mapping]]` entries of the configuration: creates those that do not exist,
/// updates the configuration of those that changed (keeping their enabled/disabled state).
pub(crate) async fn apply_config(settings: &Settings, store: &EmbeddedMappings) -> Result<()> {
    for entry in &settings.mappings {
        let def = entry.definition(settings)?;
        let stored = match store.get(&entry.name).await {
            Ok(old) => Some(old),
            Err(ProcessorError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        match reconcile(stored.as_ref(), def) {
            Reconcile::Create(def) => {
                store.create(def).await.with_context(|| {
                    format!(
                        "cannot create mapping {} from the configuration",
                        entry.name
                    )
                })?;
                tracing::info!(mapping = %entry.name, "created mapping from the configuration");
            }
            Reconcile::Update(def) => {
                store.update(def).await.with_context(|| {
                    format!(
                        "cannot update mapping {} from the configuration",
                        entry.name
                    )
                })?;
                tracing::info!(mapping = %entry.name, "updated mapping from the configuration");
            }
            Reconcile::Unchanged => {}
        }
    }
    Ok(())
}

/// Starts user mappings on `processor` (which carries the logs, identity and statistics the
/// built-in mapping uses too; user mappings do not drive upload status).
pub(crate) async fn start(
    settings: &Settings,
    db: &Meta,
    processor: &Processor,
    logs: BufferedLogs,
    keys: &AccessKeys,
    edge_url: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<Mappings> {
    let store = EmbeddedMappings::new(db.clone());
    apply_config(settings, &store).await?;
    {
        let k = keys.clone();
        let retired =
            tokio::task::spawn_blocking(move || k.retire(LAMBDA_KEY_DESCRIPTION)).await??;
        if retired > 0 {
            tracing::info!(
                keys = retired,
                "deleted the full-access key functions shared before each got its own"
            );
        }
    }
    // Absolute: handlers run with their code directory as the current directory.
    let runtime_dir = std::path::absolute(settings.data_dir.join("runtime"))
        .context("cannot resolve the runtime directory")?;
    let mut env = LambdaEnvironment::new(runtime_dir);
    env.region = settings.region.clone();
    env.account_id = settings.account_id.clone();
    env.endpoint_url = Some(edge_url.to_owned());
    // Every lambda function gets a key of its own (ScopedFunctionKeys); this one is a key
    // that does not exist.
    env.access_key_id = String::new();
    env.secret_access_key = String::new();
    let function_keys = ScopedFunctionKeys {
        keys: keys.clone(),
        region: settings.region.clone(),
        account_id: settings.account_id.clone(),
        upload_bucket: settings.bucket.clone(),
    };
    let runner = Arc::new(
        MappingRunner::new(
            processor.clone().with_observer(Arc::new(NoObserver)),
            Arc::new(store),
            env,
        )
        .with_function_keys(Arc::new(function_keys)),
    );
    let stats = EmbeddedStats::new(db.clone());
    let processor = processor.clone();
    let task = tokio::spawn(async move {
        let runner_task = tokio::spawn(runner.run(SYNC_EVERY, shutdown.clone()));
        stats
            .save_until(&processor, SAVE_STATS_EVERY, shutdown)
            .await;
        let _ = runner_task.await;
        // Every mapping has stopped: save the final figures, then say so.
        stats.save_final(&processor).await;
    });
    Ok(Mappings { task, logs })
}

impl Mappings {
    /// Waits until every user mapping stopped, their statistics and logs are saved.
    pub(crate) async fn finish(self) {
        let _ = self.task.await;
        self.logs.flush().await;
    }
}
