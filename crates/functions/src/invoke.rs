//! Invoking functions: Lambda's `Invoke` (synchronous, `RequestResponse`; queued, `Event`),
//! and the functions event-source mappings run (`function:<name>`).
//!
//! Each function has warm workers per revision (the processor's [`LambdaFunction`]: one
//! process per concurrent invocation, reused, killed and replaced after a timeout or a
//! crash) and a concurrency bound: its reserved concurrency (`PutFunctionConcurrency`) or
//! the server's default ([`DEFAULT_CONCURRENCY`]). A synchronous invocation over the bound
//! is throttled at once (`TooManyRequestsException`, as Lambda does); a mapping's batch and
//! a queued invocation wait for a slot. Right after an update, the old revision's
//! invocations finish on their workers while the new revision's start: for that moment
//! a function may run up to twice its bound.
//!
//! Queued invocations are rows (`function_events`), written durably before `Invoke`
//! answers 202, and run at least once by [`Invoker::run_events`]: claimed with a lease
//! (the function's timeout plus [`LEASE_MARGIN`]; a process that dies mid-invocation leaves
//! the event to be run again once the lease ends), retried twice after a function error
//! (after 1 and then 2 minutes, Lambda's policy for asynchronous invocations), dropped
//! after the third failure or once [`MAX_EVENT_AGE`] old, with a line in the function's
//! log either way. A throttled or engine-less attempt is not counted.
//!
//! Every invocation's lines go to the function's log, `/aws/lambda/<name>` (`sluice logs
//! --function <name>`), framed as Lambda frames them (`START`, `END`, `REPORT`), and the
//! last 4 KB of one invocation's lines are what `LogType: Tail` returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use sluice_meta::{now_ms, params};
use sluice_processor::event::kinesis_event;
use sluice_processor::functions::{
    BatchFunction, BatchInput, BatchResponse, CallContext, FunctionError, FunctionResolver,
};
use sluice_processor::lambda::{Failure, LambdaEnvironment, LambdaFunction};
use sluice_processor::logs::{LogLine, LogSink};
use sluice_processor::mappings::{FunctionSettings, LambdaRuntime};
use tokio::sync::{Notify, Semaphore, watch};

use crate::runtimes::SdkCache;
use crate::{FunctionConfig, Functions, FunctionsError};

/// Concurrent invocations of one function without reserved concurrency.
pub const DEFAULT_CONCURRENCY: u32 = 10;
/// Bytes of an invocation's log `LogType: Tail` returns.
pub const TAIL_BYTES: usize = 4096;
/// Retries of a queued invocation after a function error (Lambda: 2).
pub const ASYNC_RETRIES: i64 = 2;
/// A queued invocation older than this is dropped (Lambda's default maximum event age).
pub const MAX_EVENT_AGE: Duration = Duration::from_secs(6 * 3600);
/// Added to a function's timeout for the lease on a queued invocation.
pub const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Queued invocations one process runs at once.
const EVENT_CONCURRENCY: usize = 32;

/// The log a function's lines go to.
pub fn log_key(function: &str) -> String {
    format!("/aws/lambda/{function}")
}

/// Description of the managed access key earlier versions gave each function (before
/// functions ran as their roles); such keys are deleted at start.
pub fn key_description(function: &str) -> String {
    format!("function {function} (managed)")
}

/// A warm instance is replaced once its role session has less than the function's
/// timeout and this margin left, so no invocation runs with expired credentials.
const SESSION_MARGIN_MS: i64 = 5 * 60 * 1000;

/// Whether a warm instance's role session (ending at `expires_ms`) still covers an
/// invocation that starts at `now` and runs for the whole `timeout_secs`, with
/// [`SESSION_MARGIN_MS`] to spare; `None`: credentials that do not expire.
fn session_fresh(expires_ms: Option<i64>, timeout_secs: u64, now: i64) -> bool {
    expires_ms.is_none_or(|t| {
        let margin = (timeout_secs.min(900) as i64) * 1000 + SESSION_MARGIN_MS;
        now + margin < t
    })
}

/// What happens when the function is at its concurrency bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Fail at once with [`FunctionsError::Throttled`] (synchronous `Invoke`).
    Throttle,
    /// Wait for a slot (mappings, queued invocations).
    Wait,
}

/// One finished invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub request_id: String,
    /// The handler's result, or how it failed (with Lambda's error document).
    pub result: Result<Value, Failure>,
    /// The last [`TAIL_BYTES`] of the invocation's log, when asked for.
    pub log_tail: Option<String>,
    pub duration: Duration,
}

struct Instance {
    revision: String,
    /// When its role session expires (ms since the epoch); `None`: credentials that do not.
    expires_ms: Option<i64>,
    lambda: LambdaFunction,
    permits: Arc<Semaphore>,
    limit: u32,
}

/// Invokes functions.
pub struct Invoker {
    functions: Functions,
    env: LambdaEnvironment,
    sdk: Arc<SdkCache>,
    logs: Option<Arc<dyn LogSink>>,
    default_concurrency: u32,
    instances: Mutex<HashMap<String, Arc<Instance>>>,
    events: Notify,
    /// Pause before the first and second retry of a queued invocation (Lambda: 1 and 2
    /// minutes); the second is twice the first.
    retry_delay: Duration,
}

impl Invoker {
    /// `env`: region, account, the edge's URL and the interpreters functions run with (its
    /// credentials are replaced by a session of each function's role when the registry has
    /// [`crate::ExecutionRoles`]).
    pub fn new(functions: Functions, env: LambdaEnvironment, sdk: Arc<SdkCache>) -> Self {
        Invoker {
            functions,
            env,
            sdk,
            logs: None,
            default_concurrency: DEFAULT_CONCURRENCY,
            instances: Mutex::new(HashMap::new()),
            events: Notify::new(),
            retry_delay: Duration::from_secs(60),
        }
    }

    pub fn with_logs(mut self, logs: Arc<dyn LogSink>) -> Self {
        self.logs = Some(logs);
        self
    }

    pub fn with_default_concurrency(mut self, n: u32) -> Self {
        self.default_concurrency = n.max(1);
        self
    }

    pub fn with_retry_delay(mut self, d: Duration) -> Self {
        self.retry_delay = d;
        self
    }

    pub fn functions(&self) -> &Functions {
        &self.functions
    }

    /// The concurrency bound a function runs with.
    pub fn concurrency_of(&self, cfg: &FunctionConfig) -> u32 {
        cfg.reserved_concurrency.unwrap_or(self.default_concurrency)
    }

    /// The warm instance of `name`'s current revision (built on first use).
    async fn instance(
        &self,
        name: &str,
    ) -> Result<(FunctionConfig, Arc<Instance>), FunctionsError> {
        let cfg = self.functions.get(name).await?;
        let cached = self
            .instances
            .lock()
            .ok()
            .and_then(|m| m.get(name).cloned())
            .filter(|i| {
                i.revision == cfg.revision_id
                    && session_fresh(i.expires_ms, cfg.timeout_secs, now_ms())
            });
        if let Some(i) = cached {
            return Ok((cfg, i));
        }
        let dir = self.functions.code_dir(&cfg).await?;
        let language = cfg.language();
        let sdk = self.sdk.ensure(language).await;
        let mut env = self.env.clone();
        match (language, sdk) {
            (LambdaRuntime::Nodejs, Some(p)) => {
                if let Err(e) = self.functions.link_node_modules(&p) {
                    tracing::warn!(error = %e, "cannot link the Node.js SDK next to the functions' code");
                }
            }
            (LambdaRuntime::Python, Some(p)) => env.python_path = Some(p),
            _ => {}
        }
        let mut expires_ms = None;
        if let Some(roles) = self.functions.roles() {
            let session = roles.assume(&cfg.role, name).await?;
            env.access_key_id = session.access_key_id;
            env.secret_access_key = session.secret_access_key;
            env.session_token = Some(session.session_token);
            expires_ms = Some(session.expires_ms);
        }
        let settings = FunctionSettings {
            environment: cfg.environment.clone(),
            timeout_secs: cfg.timeout_secs,
            memory_mb: cfg.memory_mb,
            policy: None,
        };
        let lambda = LambdaFunction::new(name, language, dir, cfg.handler.clone(), settings, env)
            .map_err(|e| FunctionsError::Internal(e.to_string()))?;
        let limit = self.concurrency_of(&cfg);
        let inst = Arc::new(Instance {
            revision: cfg.revision_id.clone(),
            expires_ms,
            lambda,
            permits: Arc::new(Semaphore::new(limit as usize)),
            limit,
        });
        if let Ok(mut m) = self.instances.lock() {
            m.insert(name.to_owned(), inst.clone());
        }
        Ok((cfg, inst))
    }

    /// Drops a deleted function's warm workers (their role session expires on its own).
    pub async fn forget(&self, name: &str) {
        if let Ok(mut m) = self.instances.lock() {
            m.remove(name);
        }
    }

    /// Invokes `name` with `event` and waits for its result.
    pub async fn invoke(
        &self,
        name: &str,
        event: Value,
        admission: Admission,
        tail: bool,
        request_id: Option<String>,
    ) -> Result<Invocation, FunctionsError> {
        let (cfg, inst) = self.instance(name).await?;
        if inst.limit == 0 {
            return Err(FunctionsError::Throttled);
        }
        let _permit = match admission {
            Admission::Throttle => inst
                .permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| FunctionsError::Throttled)?,
            Admission::Wait => inst
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| FunctionsError::Throttled)?,
        };
        let request_id = request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let tee = Arc::new(Tee {
            inner: self.logs.clone(),
            kept: tail.then(|| Mutex::new(String::new())),
        });
        let ctx = CallContext {
            mapping: log_key(name),
            request_id: request_id.clone(),
            logs: Some(tee.clone()),
        };
        ctx.log_lines(
            "platform",
            [format!("START RequestId: {request_id} Version: $LATEST")],
        )
        .await;
        let started = Instant::now();
        let result = inst.lambda.call(event, &ctx).await;
        let duration = started.elapsed();
        let ms = duration.as_secs_f64() * 1000.0;
        ctx.log_lines(
            "platform",
            [
                format!("END RequestId: {request_id}"),
                format!(
                    "REPORT RequestId: {request_id}\tDuration: {ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB",
                    ms.ceil() as u64,
                    cfg.memory_mb
                ),
            ],
        )
        .await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(_) => "error",
        };
        metrics::counter!("sluice_function_invocations_total", "function" => name.to_owned(), "result" => outcome)
            .increment(1);
        metrics::histogram!("sluice_function_duration_seconds", "function" => name.to_owned())
            .record(duration.as_secs_f64());
        Ok(Invocation {
            request_id,
            result,
            log_tail: tee.tail(),
            duration,
        })
    }

    /// Queues an asynchronous invocation; durable when this returns.
    pub async fn enqueue(&self, name: &str, payload: Bytes) -> Result<String, FunctionsError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        self.functions.enqueue(name, &request_id, payload).await?;
        self.events.notify_one();
        Ok(request_id)
    }

    /// Runs queued invocations until `shutdown` turns true (then waits for those running).
    pub async fn run_events(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(EVENT_CONCURRENCY));
        let mut running = tokio::task::JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.queue_notifications().await {
                tracing::warn!(error = %e, "cannot queue bucket notifications");
            }
            let free = slots.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                match self.claim(free).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read queued invocations");
                        Vec::new()
                    }
                }
            };
            let busy = !claimed.is_empty();
            for ev in claimed {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let me = self.clone();
                running.spawn(async move {
                    me.run_event(ev).await;
                    drop(permit);
                });
            }
            while running.try_join_next().is_some() {}
            if busy {
                continue;
            }
            tokio::select! {
                _ = self.events.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        while running.join_next().await.is_some() {}
    }

    /// Turns the events object writes recorded for bucket notifications (the store's
    /// outbox) into queued invocations of their functions, in one transaction: each event
    /// is queued exactly once, and runs at least once. An event for a function that no
    /// longer exists is dropped.
    async fn queue_notifications(&self) -> Result<usize, FunctionsError> {
        let db = self.functions.db().clone();
        let pending = db
            .read(|c| {
                Ok::<_, FunctionsError>(c.exists("SELECT 1 FROM object_notifications", params![])?)
            })
            .await?;
        if !pending {
            return Ok(0);
        }
        let queued = db
            .write(|tx| {
                let events = sluice_store::notifications::take_in_tx(tx, 100)?;
                let now = now_ms();
                let mut n = 0;
                for (arn, event) in events {
                    let name = arn
                        .split(":function:")
                        .nth(1)
                        .and_then(|rest| rest.split(':').next())
                        .unwrap_or(arn.as_str())
                        .to_owned();
                    if !tx.exists("SELECT 1 FROM functions WHERE name = ?1", params![&name])? {
                        tracing::warn!(function = %name, "dropped a bucket notification: no such function");
                        continue;
                    }
                    n += tx.execute(
                        "INSERT INTO function_events (id, function, payload, attempts, due_ms, created_ms)
                         VALUES (?1, ?2, ?3, 0, ?4, ?4)",
                        params![uuid::Uuid::new_v4().to_string(), &name, event.into_bytes(), now],
                    )?;
                }
                Ok::<_, FunctionsError>(n)
            })
            .await?;
        Ok(queued as usize)
    }

    /// Claims up to `n` due queued invocations, each with a lease.
    async fn claim(&self, n: usize) -> Result<Vec<Event>, FunctionsError> {
        let now = now_ms();
        let margin = LEASE_MARGIN.as_millis() as i64;
        self.functions
            .db()
            .write(move |tx| {
                let due = tx.query_vec(
                    "SELECT e.id, e.function, e.payload, e.attempts, e.created_ms, e.due_ms, f.timeout_secs
                     FROM function_events e JOIN functions f ON f.name = e.function
                     WHERE e.due_ms <= ?1 ORDER BY e.due_ms LIMIT ?2",
                    params![now, n as i64],
                    |r| {
                        let timeout: i64 = r.get(6)?;
                        Ok((
                            Event {
                                id: r.get(0)?,
                                function: r.get(1)?,
                                payload: r.get(2)?,
                                attempts: r.get(3)?,
                                created_ms: r.get(4)?,
                            },
                            r.get::<i64>(5)?,
                            timeout,
                        ))
                    },
                )?;
                let mut out = Vec::new();
                for (ev, due_ms, timeout) in due {
                    let lease = now + timeout * 1000 + margin;
                    let n = tx.execute(
                        "UPDATE function_events SET due_ms = ?1 WHERE id = ?2 AND due_ms = ?3",
                        params![lease, &ev.id, due_ms],
                    )?;
                    if n == 1 {
                        out.push(ev);
                    }
                }
                Ok::<_, FunctionsError>(out)
            })
            .await
    }

    async fn run_event(&self, ev: Event) {
        let age = now_ms() - ev.created_ms;
        if age > MAX_EVENT_AGE.as_millis() as i64 {
            self.log_platform(
                &ev,
                format!(
                    "dropped asynchronous invocation {} of {}: older than the maximum event age",
                    ev.id, ev.function
                ),
            )
            .await;
            self.finish_event(&ev.id, None).await;
            return;
        }
        let event: Value = serde_json::from_slice(&ev.payload).unwrap_or(Value::Null);
        let r = self
            .invoke(
                &ev.function,
                event,
                Admission::Wait,
                false,
                Some(ev.id.clone()),
            )
            .await;
        match r {
            Ok(inv) if inv.result.is_ok() => self.finish_event(&ev.id, None).await,
            Ok(inv) => {
                let attempts = ev.attempts + 1;
                let why = inv.result.err().map(|f| f.message).unwrap_or_default();
                if attempts > ASYNC_RETRIES {
                    self.log_platform(&ev, format!(
                        "asynchronous invocation {} failed {attempts} times and is dropped: {why}",
                        ev.id
                    ))
                    .await;
                    self.finish_event(&ev.id, None).await;
                } else {
                    let delay = self.retry_delay * (attempts as u32);
                    self.finish_event(&ev.id, Some((attempts, delay))).await;
                }
            }
            Err(FunctionsError::NotFound(_)) => self.finish_event(&ev.id, None).await,
            // Throttled, or an engine down: not the function's failure, not counted.
            Err(e) => {
                tracing::debug!(error = %e, "queued invocation postponed");
                self.finish_event(&ev.id, Some((ev.attempts, Duration::from_secs(1))))
                    .await;
            }
        }
    }

    async fn log_platform(&self, ev: &Event, line: String) {
        tracing::warn!(function = %ev.function, "{line}");
        if let Some(logs) = &self.logs {
            logs.append(vec![LogLine {
                id: 0,
                mapping: log_key(&ev.function),
                ts_ms: now_ms(),
                request_id: ev.id.clone(),
                stream: "platform".into(),
                line,
            }])
            .await;
        }
    }

    /// Deletes a queued invocation (`None`) or schedules its next attempt.
    async fn finish_event(&self, id: &str, retry: Option<(i64, Duration)>) {
        let id = id.to_owned();
        let r = self
            .functions
            .db()
            .write(move |tx| {
                match retry {
                    None => {
                        tx.execute("DELETE FROM function_events WHERE id = ?1", params![&id])?
                    }
                    Some((attempts, delay)) => tx.execute(
                        "UPDATE function_events SET attempts = ?2, due_ms = ?3 WHERE id = ?1",
                        params![&id, attempts, now_ms() + delay.as_millis() as i64],
                    )?,
                };
                Ok::<_, FunctionsError>(())
            })
            .await;
        if let Err(e) = r {
            // The lease ends and the event runs again: at least once.
            tracing::warn!(error = %e, "cannot record a queued invocation's outcome");
        }
    }
}

struct Event {
    id: String,
    function: String,
    payload: Vec<u8>,
    attempts: i64,
    created_ms: i64,
}

/// Passes log lines on and keeps the last [`TAIL_BYTES`] of them for `LogType: Tail`.
struct Tee {
    inner: Option<Arc<dyn LogSink>>,
    kept: Option<Mutex<String>>,
}

impl Tee {
    fn tail(&self) -> Option<String> {
        let kept = self.kept.as_ref()?.lock().ok()?.clone();
        Some(last_bytes(&kept, TAIL_BYTES).to_owned())
    }
}

/// The last `n` bytes of `s` at most, cut at a character boundary.
fn last_bytes(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[async_trait]
impl LogSink for Tee {
    async fn append(&self, lines: Vec<LogLine>) {
        if let Some(kept) = &self.kept
            && let Ok(mut k) = kept.lock()
        {
            for l in &lines {
                k.push_str(&l.line);
                k.push('\n');
            }
            // Bounded: only the tail is ever returned.
            if k.len() > 4 * TAIL_BYTES {
                let keep = last_bytes(&k, TAIL_BYTES).to_owned();
                *k = keep;
            }
        }
        if let Some(inner) = &self.inner {
            inner.append(lines).await;
        }
    }
}

/// Mappings that name a function (`function:<name>`) run it through the invoker.
pub struct Resolver(pub Arc<Invoker>);

impl FunctionResolver for Resolver {
    fn resolve(&self, name: &str) -> Arc<dyn BatchFunction> {
        Arc::new(Registered {
            invoker: self.0.clone(),
            name: name.to_owned(),
        })
    }
}

struct Registered {
    invoker: Arc<Invoker>,
    name: String,
}

#[async_trait]
impl BatchFunction for Registered {
    fn name(&self) -> &str {
        &self.name
    }

    async fn invoke(
        &self,
        input: &BatchInput,
        ctx: &CallContext,
    ) -> Result<BatchResponse, FunctionError> {
        let r = self
            .invoker
            .invoke(
                &self.name,
                kinesis_event(input),
                Admission::Wait,
                false,
                Some(ctx.request_id.clone()),
            )
            .await;
        match r {
            Ok(inv) => match inv.result {
                Ok(v) => Ok(BatchResponse::Returned(v)),
                Err(f) => Err(FunctionError::Failed(f.message)),
            },
            Err(e) if e.is_unavailable() => Err(FunctionError::Unavailable(e.to_string())),
            Err(e) => Err(FunctionError::Failed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn warm_instances_are_replaced_before_their_session_ends() {
        let hour = 3_600_000;
        // No session: never stale.
        assert!(super::session_fresh(None, 900, 0));
        // A fresh one-hour session, 3 s timeout: fresh.
        assert!(super::session_fresh(Some(hour), 3, 0));
        // 10 minutes left: a 3 s function still has its 5 minutes of margin; a 15 minute
        // one does not (it could outlive the session).
        let now = hour - 10 * 60_000;
        assert!(super::session_fresh(Some(hour), 3, now));
        assert!(!super::session_fresh(Some(hour), 900, now));
        // Within the margin, or past the end: replaced.
        assert!(!super::session_fresh(Some(hour), 3, hour - 4 * 60_000));
        assert!(!super::session_fresh(Some(hour), 3, hour + 1));
    }

    use super::*;

    #[test]
    fn tails_are_cut_at_character_boundaries() {
        assert_eq!(last_bytes("hello", 3), "llo");
        assert_eq!(last_bytes("hé", 1), "");
        assert_eq!(last_bytes("hé", 2), "é");
        assert_eq!(last_bytes("x", 10), "x");
    }
}
