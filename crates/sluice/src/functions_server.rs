//! The server side of functions created with Lambda's API (`aws lambda create-function`):
//! the registry over the shared engines, the invoker (warm workers running as each
//! function's execution role, logs in the function log) and the task that runs queued
//! (`Event`) invocations.

use std::sync::Arc;

use anyhow::{Context, Result};
use sluice_functions::invoke::{Invoker, key_description};
use sluice_functions::runtimes::SdkCache;
use sluice_functions::{
    ExecutionRoles, Functions, FunctionsError, ROLE_NOT_ASSUMABLE, RoleSession,
};
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

/// The service that assumes functions' roles.
const LAMBDA_SERVICE: &str = "lambda.amazonaws.com";
/// How long a function's role session lasts (STS's default; the invoker replaces a warm
/// instance well before its session ends).
const SESSION_SECONDS: i64 = 3600;

/// Functions' execution roles are IAM's roles, assumed by `lambda.amazonaws.com`.
pub(crate) struct IamRoles(pub(crate) sluice_iam::Iam);

fn role_error(e: sluice_iam::IamError) -> FunctionsError {
    match e {
        e if e.is_unavailable() => FunctionsError::Unavailable(e.to_string()),
        sluice_iam::IamError::AccessDenied(_) | sluice_iam::IamError::Validation(_) => {
            FunctionsError::InvalidParameter(ROLE_NOT_ASSUMABLE.into())
        }
        other => FunctionsError::Internal(format!("cannot assume the function's role: {other}")),
    }
}

#[async_trait::async_trait]
impl ExecutionRoles for IamRoles {
    async fn check(&self, role_arn: &str) -> Result<(), FunctionsError> {
        self.0
            .service_may_assume(LAMBDA_SERVICE, role_arn)
            .await
            .map_err(role_error)
    }

    async fn assume(&self, role_arn: &str, function: &str) -> Result<RoleSession, FunctionsError> {
        let s = self
            .0
            .assume_for_service(LAMBDA_SERVICE, role_arn, function, SESSION_SECONDS)
            .await
            .map_err(role_error)?;
        Ok(RoleSession {
            access_key_id: s.credentials.access_key_id,
            secret_access_key: s.credentials.secret,
            session_token: s.credentials.session_token,
            expires_ms: s.credentials.expires_ms,
        })
    }
}

/// Where functions' code is unpacked.
pub(crate) fn functions_dir(settings: &Settings) -> std::path::PathBuf {
    settings.data_dir.join("functions")
}

pub(crate) async fn start(
    settings: &Settings,
    db: &Meta,
    store: &EmbeddedStore,
    iam: &sluice_iam::Iam,
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
    )
    .with_roles(Arc::new(IamRoles(iam.clone())));
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
    // Each function runs with a session of its role (the registry's roles); no key here.
    env.access_key_id = String::new();
    env.secret_access_key = String::new();
    let sdk = Arc::new(SdkCache::new(
        settings.runtime_cache.clone(),
        &env.node,
        &env.python,
    ));
    let invoker = Arc::new(
        Invoker::new(functions, env, sdk)
            .with_logs(logs)
            .with_default_concurrency(settings.function_concurrency),
    );
    let events = tokio::spawn(invoker.clone().run_events(shutdown));
    Ok(FunctionsServer { invoker, events })
}

/// Deletes the access keys earlier versions gave each function (`function NAME (managed)`,
/// before functions ran as their roles): nothing uses them, and they may do what their
/// creators could. (Mappings' keys, `function of mapping NAME (managed)`, stay.)
pub(crate) async fn retire_legacy_keys(keys: &AccessKeys) {
    let keys = keys.clone();
    let retired = tokio::task::spawn_blocking(move || {
        let all = keys.list()?;
        let mut n = 0;
        for k in all {
            let Some(name) = k
                .description
                .strip_prefix("function ")
                .and_then(|r| r.strip_suffix(" (managed)"))
            else {
                continue;
            };
            if !name.starts_with("of mapping ") && k.description == key_description(name) {
                n += keys.retire(&k.description)?;
            }
        }
        Ok::<_, sluice_identity::IdentityError>(n)
    })
    .await;
    match retired {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            tracing::info!(
                retired = n,
                "deleted the access keys functions had before they ran as their roles"
            )
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot delete functions' old access keys"),
        Err(e) => tracing::warn!(error = %e, "cannot delete functions' old access keys"),
    }
}

impl FunctionsServer {
    /// Waits until the queued invocations under way have ended.
    pub(crate) async fn finish(self) {
        let _ = self.events.await;
    }
}

/// Runs Cognito's Lambda triggers on the functions runtime (`sluice_identity::triggers`).
pub(crate) struct FunctionTriggers(pub(crate) Arc<Invoker>);

#[async_trait::async_trait]
impl sluice_identity::triggers::TriggerRunner for FunctionTriggers {
    async fn run(
        &self,
        arn: &str,
        event: serde_json::Value,
    ) -> Result<serde_json::Value, sluice_identity::triggers::TriggerFailure> {
        use sluice_identity::triggers::TriggerFailure;
        let name = self
            .0
            .functions()
            .resolve_name(arn)
            .map_err(|e| TriggerFailure::Unavailable(e.to_string()))?;
        let invocation = self
            .0
            .invoke(
                &name,
                event,
                sluice_functions::invoke::Admission::Wait,
                false,
                None,
            )
            .await
            .map_err(|e| TriggerFailure::Unavailable(e.to_string()))?;
        match invocation.result {
            Ok(v) => Ok(v),
            Err(f) if f.kind == sluice_processor::lambda::FailureKind::Timeout => {
                Err(TriggerFailure::Timeout)
            }
            Err(f) => Err(TriggerFailure::Failed(
                f.document["errorMessage"]
                    .as_str()
                    .map_or(f.message, str::to_owned),
            )),
        }
    }
}
