//! The server side of functions created with Lambda's API (`aws lambda create-function`):
//! the registry over the shared engines, the invoker (warm workers, each function's own
//! key, logs in the function log) and the task that runs queued (`Event`) invocations.

use std::sync::Arc;

use anyhow::{Context, Result};
use sluice_functions::Functions;
use sluice_functions::invoke::Invoker;
use sluice_functions::runtimes::SdkCache;
use sluice_identity::access_keys::AccessKeys;
use sluice_meta::Meta;
use sluice_processor::lambda::LambdaEnvironment;
use sluice_processor::logs::LogSink;
use sluice_store::embedded::EmbeddedStore;
use tokio::sync::watch;

use crate::config::Settings;

/// The running function machinery.
pub(crate) struct FunctionsServer {
    pub(crate) invoker: Arc<Invoker>,
    events: tokio::task::JoinHandle<()>,
}

/// Where functions' code is unpacked.
pub(crate) fn functions_dir(settings: &Settings) -> std::path::PathBuf {
    settings.data_dir.join("functions")
}

pub(crate) async fn start(
    settings: &Settings,
    db: &Meta,
    store: &EmbeddedStore,
    keys: &AccessKeys,
    edge_url: &str,
    logs: Arc<dyn LogSink>,
    shutdown: watch::Receiver<bool>,
) -> Result<FunctionsServer> {
    let root = std::path::absolute(functions_dir(settings))
        .context("cannot resolve the functions directory")?;
    let functions = Functions::new(
        db.clone(),
        Arc::new(store.clone()),
        root,
        &settings.region,
        &settings.account_id,
    );
    match functions.sweep_code().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed unpacked code no function uses"),
        Err(e) => tracing::warn!(error = %e, "cannot sweep unpacked function code"),
    }
    let runtime_dir = std::path::absolute(settings.data_dir.join("runtime"))
        .context("cannot resolve the runtime directory")?;
    let mut env = LambdaEnvironment::new(runtime_dir);
    env.region = settings.region.clone();
    env.account_id = settings.account_id.clone();
    env.endpoint_url = Some(edge_url.to_owned());
    // Each function gets a key of its own (the invoker's keys); this one does not exist.
    env.access_key_id = String::new();
    env.secret_access_key = String::new();
    let sdk = Arc::new(SdkCache::new(
        settings.runtime_cache.clone(),
        &env.node,
        &env.python,
    ));
    let invoker = Arc::new(
        Invoker::new(functions, env, sdk)
            .with_keys(keys.clone())
            .with_logs(logs)
            .with_default_concurrency(settings.function_concurrency),
    );
    let events = tokio::spawn(invoker.clone().run_events(shutdown));
    Ok(FunctionsServer { invoker, events })
}

impl FunctionsServer {
    /// Waits until the queued invocations under way have ended.
    pub(crate) async fn finish(self) {
        let _ = self.events.await;
    }
}
