//! Keeps the running mappings in line with the persisted ones: what makes
//! `sluice mapping create|update|enable|disable|delete` take effect in a running server.
//!
//! [`MappingRunner::sync`] compares the [`MappingStore`] with what runs: a mapping deleted,
//! disabled or changed is stopped (its workers finish or abandon their batch; nothing past
//! the checkpoint is lost), an enabled one that does not run (or changed) is started.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::lambda::LambdaEnvironment;
use crate::mappings::{FunctionSpec, MappingDefinition, MappingState, MappingStore};
use crate::{Processor, ProcessorError};

struct Running {
    def: MappingDefinition,
    /// Whether it runs with the status-tracking observer.
    tracks: bool,
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

/// Issues each Lambda function the credentials it runs with (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`): a key of its own, limited to what its mapping needs, so that a
/// function cannot touch what its mapping does not concern.
#[async_trait::async_trait]
pub trait FunctionKeys: Send + Sync + 'static {
    /// The key id and secret for `def`'s function (created, or its policy brought up to
    /// date with the definition).
    async fn key_for(&self, def: &MappingDefinition) -> Result<(String, String), ProcessorError>;
    /// The mapping is gone: its function's key is no longer needed.
    async fn retire(&self, mapping: &str) -> Result<(), ProcessorError>;
}

pub struct MappingRunner {
    processor: Processor,
    store: Arc<dyn MappingStore>,
    lambda_env: LambdaEnvironment,
    /// `None`: every function runs with `lambda_env`'s key.
    keys: Option<Arc<dyn FunctionKeys>>,
    running: tokio::sync::Mutex<HashMap<String, Running>>,
    /// Definitions that could not start, with when to try again: a broken mapping (e.g. its
    /// stream does not exist yet) is retried every [`RETRY_FAILED`], or at once when its
    /// definition changes, not at every sync.
    failed: tokio::sync::Mutex<HashMap<String, (MappingDefinition, Instant)>>,
}

/// How long a mapping that could not start waits before the next attempt.
pub const RETRY_FAILED: Duration = Duration::from_secs(5);

/// What one [`MappingRunner::sync`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    /// Mappings that could not start, with why (they are tried again at the next sync).
    pub failed: Vec<(String, ProcessorError)>,
}

impl MappingRunner {
    pub fn new(
        processor: Processor,
        store: Arc<dyn MappingStore>,
        lambda_env: LambdaEnvironment,
    ) -> Self {
        MappingRunner {
            processor,
            store,
            lambda_env,
            keys: None,
            running: tokio::sync::Mutex::new(HashMap::new()),
            failed: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Functions get their keys from `keys` instead of sharing the environment's.
    pub fn with_function_keys(mut self, keys: Arc<dyn FunctionKeys>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The environment `def`'s function runs in: with its own key when keys are issued.
    async fn environment_for(
        &self,
        def: &MappingDefinition,
    ) -> Result<LambdaEnvironment, ProcessorError> {
        let mut env = self.lambda_env.clone();
        if let (Some(keys), FunctionSpec::Lambda { .. }) = (&self.keys, &def.function) {
            let (id, secret) = keys.key_for(def).await?;
            env.access_key_id = id;
            env.secret_access_key = secret;
        }
        Ok(env)
    }

    /// Syncs now, then every `every` until `shutdown` turns true; then stops every mapping.
    /// This is how changes made by another process (the command line writing the shared
    /// database) reach a running server.
    pub async fn run(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.sync().await {
                tracing::warn!(error = %e, "cannot read the mapping definitions");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        self.stop_all().await;
    }

    /// Names of the mappings running now.
    pub async fn running(&self) -> Vec<String> {
        let mut names: Vec<String> = self.running.lock().await.keys().cloned().collect();
        names.sort();
        names
    }

    pub async fn sync(&self) -> Result<SyncReport, ProcessorError> {
        let all = self.store.list().await?;
        let exists: std::collections::HashSet<String> =
            all.iter().map(|d| d.config.name.clone()).collect();
        let wanted: HashMap<String, MappingDefinition> = all
            .into_iter()
            .filter(|d| d.state == MappingState::Enabled)
            .map(|d| (d.config.name.clone(), d))
            .collect();
        let tracker = tracking_mapping(self.processor.status_tracking_stream(), &wanted);
        let mut running = self.running.lock().await;
        let mut failed = self.failed.lock().await;
        failed.retain(|name, (def, _)| wanted.get(name) == Some(&*def));
        let mut report = SyncReport::default();
        // Changed, or gained or lost the status-tracking role.
        let stale: Vec<String> = running
            .iter()
            .filter(|(name, r)| {
                wanted.get(*name) != Some(&r.def) || r.tracks != (tracker.as_ref() == Some(*name))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(r) = running.remove(&name) {
                stop(r).await;
                if !exists.contains(&name) {
                    self.processor.forget_stats(&name);
                    if let Some(keys) = &self.keys
                        && let Err(e) = keys.retire(&name).await
                    {
                        tracing::warn!(mapping = %name, error = %e, "cannot delete the function's access key");
                    }
                }
                tracing::info!(mapping = %name, "stopped mapping");
                report.stopped.push(name);
            }
        }
        for (name, def) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            if failed
                .get(&name)
                .is_some_and(|(_, at)| at.elapsed() < RETRY_FAILED)
            {
                continue;
            }
            let (tx, rx) = watch::channel(false);
            let tracks = tracker.as_ref() == Some(&name);
            let processor = match self.processor.tracking_status() {
                Some(p) if tracks => p,
                _ => self.processor.clone(),
            };
            let started = match self.environment_for(&def).await {
                Ok(env) => processor.start_definition(&def, &env, rx).await,
                Err(e) => Err(e),
            };
            match started {
                Ok(handles) => {
                    let updated = def.updated_ms;
                    self.processor
                        .update_stats(&name, |s| s.definition_updated_ms = updated);
                    running.insert(
                        name.clone(),
                        Running {
                            def,
                            tracks,
                            stop: tx,
                            handles,
                        },
                    );
                    failed.remove(&name);
                    if tracks {
                        tracing::info!(mapping = %name, "started mapping (it tracks upload status)");
                    } else {
                        tracing::info!(mapping = %name, "started mapping");
                    }
                    report.started.push(name);
                }
                Err(e) => {
                    tracing::warn!(mapping = %name, error = %e, "cannot start mapping");
                    self.processor.update_stats(&name, |s| {
                        s.state = "Disabled".into();
                        s.last_processing_result = format!("PROBLEM: {e}");
                        s.last_error = Some(e.to_string());
                    });
                    failed.insert(name.clone(), (def, Instant::now()));
                    report.failed.push((name, e));
                }
            }
        }
        Ok(report)
    }

    /// Stops every mapping and waits for their workers.
    pub async fn stop_all(&self) {
        let all: Vec<Running> = self.running.lock().await.drain().map(|(_, r)| r).collect();
        for r in all {
            stop(r).await;
        }
    }
}

/// The mapping that tracks status on `stream`: the oldest enabled one reading it (earliest
/// creation, then name).
fn tracking_mapping(
    stream: Option<&str>,
    wanted: &HashMap<String, MappingDefinition>,
) -> Option<String> {
    let stream = stream?;
    wanted
        .values()
        .filter(|d| d.config.stream == stream)
        .min_by(|a, b| (a.created_ms, &a.config.name).cmp(&(b.created_ms, &b.config.name)))
        .map(|d| d.config.name.clone())
}

async fn stop(r: Running) {
    r.stop.send_replace(true);
    for h in r.handles {
        let _ = h.await;
    }
}
