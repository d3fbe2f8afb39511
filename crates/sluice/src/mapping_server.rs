//! The server side of user-managed mappings: `[[mapping]]` entries of `sluice.toml` are
//! created (or brought up to date) at start, a [`MappingRunner`] keeps the running mappings
//! in line with the definitions in the shared database (polled every [`SYNC_EVERY`], which is
//! how `sluice mapping …` from another process takes effect), and the processor's statistics
//! are saved to the database every [`SAVE_STATS_EVERY`] while they change, for
//! `sluice mapping get|list`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_identity::access_keys::AccessKeys;
use sluice_meta::Meta;
use sluice_processor::embedded::{EmbeddedMappings, EmbeddedStats};
use sluice_processor::lambda::LambdaEnvironment;
use sluice_processor::logs::BufferedLogs;
use sluice_processor::runner::MappingRunner;
use sluice_processor::{MappingStats, MappingStore, NoObserver, Processor, ProcessorError};
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
        let def = entry.definition(settings, &settings.config_dir)?;
        match store.get(&entry.name).await {
            Err(ProcessorError::NotFound(_)) => {
                store.create(def).await.with_context(|| {
                    format!(
                        "cannot create mapping {} from the configuration",
                        entry.name
                    )
                })?;
                tracing::info!(mapping = %entry.name, "created mapping from the configuration");
            }
            Ok(old) => {
                let changed = old.config != def.config
                    || old.function != def.function
                    || old.settings != def.settings;
                if changed {
                    let new = sluice_processor::MappingDefinition {
                        state: old.state,
                        ..def
                    };
                    store.update(new).await.with_context(|| {
                        format!(
                            "cannot update mapping {} from the configuration",
                            entry.name
                        )
                    })?;
                    tracing::info!(mapping = %entry.name, "updated mapping from the configuration");
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The access key lambda functions sign their AWS calls with: one dedicated key, created
/// once and reused.
fn lambda_key(keys: &AccessKeys) -> Result<(String, String)> {
    if let Some(k) = keys
        .list()?
        .into_iter()
        .find(|k| k.description == LAMBDA_KEY_DESCRIPTION)
    {
        return Ok((k.id, k.secret));
    }
    let k = keys.create(LAMBDA_KEY_DESCRIPTION)?;
    Ok((k.id, k.secret))
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
    let (key_id, secret) = {
        let k = keys.clone();
        tokio::task::spawn_blocking(move || lambda_key(&k)).await??
    };
    // Absolute: handlers run with their code directory as the current directory.
    let runtime_dir = std::path::absolute(settings.data_dir.join("runtime"))
        .context("cannot resolve the runtime directory")?;
    let mut env = LambdaEnvironment::new(runtime_dir);
    env.region = settings.region.clone();
    env.account_id = settings.account_id.clone();
    env.endpoint_url = Some(edge_url.to_owned());
    env.access_key_id = key_id;
    env.secret_access_key = secret;
    let runner = Arc::new(MappingRunner::new(
        processor.clone().with_observer(Arc::new(NoObserver)),
        Arc::new(store),
        env,
    ));
    let stats = EmbeddedStats::new(db.clone());
    let processor = processor.clone();
    let task = tokio::spawn(async move {
        let runner_task = tokio::spawn(runner.run(SYNC_EVERY, shutdown.clone()));
        save_stats_until(&processor, &stats, shutdown).await;
        let _ = runner_task.await;
        // Every mapping has stopped: save the final figures, then say so.
        save_changed(&processor, &stats, &mut HashMap::new()).await;
        if let Err(e) = stats.mark_all_stopped().await {
            tracing::warn!(error = %e, "cannot save mapping statistics");
        }
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

async fn save_stats_until(
    processor: &Processor,
    stats: &EmbeddedStats,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut saved: HashMap<String, MappingStats> = HashMap::new();
    loop {
        save_changed(processor, stats, &mut saved).await;
        tokio::select! {
            _ = tokio::time::sleep(SAVE_STATS_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn save_changed(
    processor: &Processor,
    stats: &EmbeddedStats,
    saved: &mut HashMap<String, MappingStats>,
) {
    let now = processor.stats();
    let changed: Vec<(String, MappingStats)> = now
        .iter()
        .filter(|(n, s)| saved.get(*n) != Some(*s))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    if changed.is_empty() {
        return;
    }
    match stats.save(changed).await {
        Ok(()) => *saved = now,
        Err(e) => tracing::warn!(error = %e, "cannot save mapping statistics"),
    }
}
