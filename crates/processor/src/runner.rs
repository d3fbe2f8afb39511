//! Keeps the running mappings in line with the persisted ones: what makes
//! `sluice mapping create|update|enable|disable|delete` take effect in a running server.
//!
//! [`MappingRunner::sync`] compares the [`MappingStore`] with what runs: a mapping deleted,
//! disabled or changed is stopped (its workers finish or abandon their batch; nothing past
//! the checkpoint is lost), an enabled one that does not run (or changed) is started.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::lambda::LambdaEnvironment;
use crate::mappings::{MappingDefinition, MappingState, MappingStore};
use crate::{Processor, ProcessorError};

struct Running {
    def: MappingDefinition,
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

pub struct MappingRunner {
    processor: Processor,
    store: Arc<dyn MappingStore>,
    lambda_env: LambdaEnvironment,
    running: tokio::sync::Mutex<HashMap<String, Running>>,
}

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
            running: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Names of the mappings running now.
    pub async fn running(&self) -> Vec<String> {
        let mut names: Vec<String> = self.running.lock().await.keys().cloned().collect();
        names.sort();
        names
    }

    pub async fn sync(&self) -> Result<SyncReport, ProcessorError> {
        let wanted: HashMap<String, MappingDefinition> = self
            .store
            .list()
            .await?
            .into_iter()
            .filter(|d| d.state == MappingState::Enabled)
            .map(|d| (d.config.name.clone(), d))
            .collect();
        let mut running = self.running.lock().await;
        let mut report = SyncReport::default();
        let stale: Vec<String> = running
            .iter()
            .filter(|(name, r)| wanted.get(*name) != Some(&r.def))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(r) = running.remove(&name) {
                stop(r).await;
                report.stopped.push(name);
            }
        }
        for (name, def) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            let (tx, rx) = watch::channel(false);
            match self
                .processor
                .start_definition(&def, &self.lambda_env, rx)
                .await
            {
                Ok(handles) => {
                    running.insert(
                        name.clone(),
                        Running {
                            def,
                            stop: tx,
                            handles,
                        },
                    );
                    report.started.push(name);
                }
                Err(e) => {
                    tracing::warn!(mapping = %name, error = %e, "cannot start mapping");
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

async fn stop(r: Running) {
    r.stop.send_replace(true);
    for h in r.handles {
        let _ = h.await;
    }
}
