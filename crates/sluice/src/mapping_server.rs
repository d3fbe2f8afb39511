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
use sluice_processor::mappings::{Reconcile, reconcile};
use sluice_processor::runner::MappingRunner;
use sluice_processor::{MappingStore, NoObserver, Processor, ProcessorError};
use tokio::sync::watch;

use crate::config::Settings;

/// How often the server re-reads the mapping definitions.
pub(crate) const SYNC_EVERY: Duration = Duration::from_millis(250);
/// How often changed statistics are saved.
pub(crate) const SAVE_STATS_EVERY: Duration = Duration::from_millis(250);
/// Description of the access key lambda functions get (one per data directory, created
/// at the first start that needs it; its secret is never printed).
pub(crate) const LAMBDA_KEY_DESCRIPTION: &str = "lambda functions of sluice serve (managed)";

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
    let key = {
        let k = keys.clone();
        tokio::task::spawn_blocking(move || k.find_or_create(LAMBDA_KEY_DESCRIPTION)).await??
    };
    // Absolute: handlers run with their code directory as the current directory.
    let runtime_dir = std::path::absolute(settings.data_dir.join("runtime"))
        .context("cannot resolve the runtime directory")?;
    let mut env = LambdaEnvironment::new(runtime_dir);
    env.region = settings.region.clone();
    env.account_id = settings.account_id.clone();
    env.endpoint_url = Some(edge_url.to_owned());
    env.access_key_id = key.id;
    env.secret_access_key = key.secret;
    let runner = Arc::new(MappingRunner::new(
        processor.clone().with_observer(Arc::new(NoObserver)),
        Arc::new(store),
        env,
    ));
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
