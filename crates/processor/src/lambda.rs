//! `lambda`: handlers written for AWS Lambda — Node.js (`index.mjs` exporting `handler`) or
//! Python (`handler.py` with `handler(event, context)`) — run unchanged.
//!
//! sluice ships a small runtime shim per language (`runtime/bootstrap.mjs`,
//! `runtime/bootstrap.py`, compiled into the binary and written to the runtime directory at
//! start). A shim is a warm worker process: it loads the handler once and then serves
//! invocations one at a time over a line-delimited JSON protocol on stdin/stdout. Workers
//! are pooled and reused between batches; a second worker starts only when invocations
//! overlap (several shards, or a parallelization factor above 1). A worker that timed out,
//! crashed or broke the protocol is killed and never reused.
//!
//! Each invocation gets the Kinesis event Lambda sends ([`crate::event`]) and a context
//! object (`awsRequestId`, `functionName`, `getRemainingTimeInMillis()` /
//! `get_remaining_time_in_millis()`, …), in the environment Lambda gives a function:
//! `AWS_REGION`, `AWS_DEFAULT_REGION`, `AWS_LAMBDA_FUNCTION_NAME`,
//! `AWS_LAMBDA_FUNCTION_VERSION`, `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, `LAMBDA_TASK_ROOT`,
//! `_HANDLER`, credentials, `AWS_ENDPOINT_URL`, plus the mapping's environment. What the
//! handler prints goes to the function log under the invocation's request id. A thrown
//! error, a timeout (`Task timed out after N seconds`) or a crash is a function error; the
//! handler's return value is passed on, so `{"batchItemFailures":[…]}` works as on AWS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;

use crate::event::kinesis_event;
use crate::exec::log_lines;
use crate::functions::{BatchFunction, BatchInput, BatchResponse, CallContext, FunctionError};
use crate::mappings::{FunctionSettings, LambdaRuntime};

const NODE_SHIM: &str = include_str!("../runtime/bootstrap.mjs");
const PYTHON_SHIM: &str = include_str!("../runtime/bootstrap.py");

/// Idle workers kept per function; more are stopped when they come back.
const MAX_IDLE: usize = 10;
/// How long to wait, after a response, for the rest of the invocation's log lines.
const LOG_DRAIN: Duration = Duration::from_secs(2);
/// Marks a log line the handler wrote to stdout.
const STDOUT_MARK: char = '\u{1f}';
/// Starts the end-of-invocation marker line on stderr.
const END_MARK: &str = "\u{1e}END ";

/// What sluice gives every Lambda function: where it runs and how it reaches AWS (i.e.
/// sluice's edge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaEnvironment {
    pub region: String,
    pub account_id: String,
    /// `AWS_ENDPOINT_URL`: the edge, so unmodified SDK clients talk to sluice.
    pub endpoint_url: Option<String>,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where the runtime shims are written (e.g. `<data dir>/runtime`).
    pub runtime_dir: PathBuf,
    pub node: String,
    pub python: String,
    /// A directory of Python packages every Python handler can import (boto3, as Lambda's
    /// managed runtimes offer it), after the handler's own code: `PYTHONPATH`.
    pub python_path: Option<PathBuf>,
}

impl LambdaEnvironment {
    pub fn new(runtime_dir: impl Into<PathBuf>) -> Self {
        LambdaEnvironment {
            region: "us-east-2".into(),
            account_id: "000000000000".into(),
            endpoint_url: None,
            access_key_id: "sluice".into(),
            secret_access_key: "sluice".into(),
            session_token: None,
            runtime_dir: runtime_dir.into(),
            node: "node".into(),
            python: "python3".into(),
            python_path: None,
        }
    }
}

/// A Lambda handler with its pool of warm workers.
pub struct LambdaFunction {
    name: String,
    runtime: LambdaRuntime,
    code_dir: PathBuf,
    handler: String,
    settings: FunctionSettings,
    env: LambdaEnvironment,
    shim: PathBuf,
    idle: Mutex<Vec<Worker>>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: mpsc::UnboundedReceiver<String>,
}

/// How an invocation ended, before logging.
enum Raw {
    Ok(Value),
    Err(Failure),
}

/// Why an invocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The handler threw (or could not be loaded): its error document is the result.
    Handler,
    /// The invocation ran past the function's timeout; the worker was killed.
    Timeout,
    /// The runtime died, broke the protocol or could not start.
    Runtime,
}

/// A failed invocation, with the error document Lambda returns for it
/// (`{"errorType", "errorMessage", "trace"|"stackTrace"}`).
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    /// What a mapping's statistics and logs say: `TypeError: boom`, `Task timed out after
    /// 3.00 seconds`, `Runtime exited with error: exit status 1`.
    pub message: String,
    /// Lambda's error payload.
    pub document: Value,
}

impl Failure {
    fn runtime(request_id: &str, message: String, error_type: &str) -> Self {
        Failure {
            kind: FailureKind::Runtime,
            document: json!({
                "errorType": error_type,
                "errorMessage": format!("RequestId: {request_id} Error: {message}"),
            }),
            message,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl LambdaFunction {
    /// Prepares a function: checks the code directory and writes the runtime shim (only if
    /// its content changed, atomically). No process starts before the first invocation.
    pub fn new(
        name: impl Into<String>,
        runtime: LambdaRuntime,
        code_dir: impl Into<PathBuf>,
        handler: impl Into<String>,
        settings: FunctionSettings,
        env: LambdaEnvironment,
    ) -> Result<Self, FunctionError> {
        let code_dir: PathBuf = code_dir.into();
        let code_dir = code_dir.canonicalize().map_err(|e| {
            FunctionError::Failed(format!("lambda code directory {}: {e}", code_dir.display()))
        })?;
        let (file, text) = match runtime {
            LambdaRuntime::Nodejs => ("bootstrap.mjs", NODE_SHIM),
            LambdaRuntime::Python => ("bootstrap.py", PYTHON_SHIM),
        };
        let shim = env.runtime_dir.join(file);
        write_if_changed(&shim, text).map_err(|e| {
            FunctionError::Failed(format!(
                "cannot write the runtime shim {}: {e}",
                shim.display()
            ))
        })?;
        Ok(LambdaFunction {
            name: name.into(),
            runtime,
            code_dir,
            handler: handler.into(),
            settings,
            env,
            shim,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn function_arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{}",
            self.env.region, self.env.account_id, self.name
        )
    }

    /// The process environment, as Lambda sets it: the mapping's variables first, then the
    /// reserved ones (which a mapping cannot override), `AWS_ENDPOINT_URL` only if the
    /// mapping did not set its own.
    fn environment(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for k in ["PATH", "HOME", "LANG", "SYSTEMROOT"] {
            if let Some(v) = std::env::var_os(k) {
                env.insert(k.to_owned(), v.to_string_lossy().into_owned());
            }
        }
        env.insert("TZ".into(), ":UTC".into());
        env.extend(self.settings.environment.clone());
        let root = self.code_dir.to_string_lossy().into_owned();
        let runtime_dir = self.env.runtime_dir.to_string_lossy().into_owned();
        let exec_env = match self.runtime {
            LambdaRuntime::Nodejs => "AWS_Lambda_nodejs",
            LambdaRuntime::Python => "AWS_Lambda_python",
        };
        let e = &self.env;
        let reserved = [
            ("AWS_REGION", e.region.clone()),
            ("AWS_DEFAULT_REGION", e.region.clone()),
            ("AWS_LAMBDA_FUNCTION_NAME", self.name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                self.settings.memory_mb.to_string(),
            ),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", self.name),
            ),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                format!("sluice/{}", std::process::id()),
            ),
            ("AWS_EXECUTION_ENV", exec_env.into()),
            ("LAMBDA_TASK_ROOT", root),
            ("LAMBDA_RUNTIME_DIR", runtime_dir),
            ("_HANDLER", self.handler.clone()),
            ("AWS_ACCESS_KEY_ID", e.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", e.secret_access_key.clone()),
            ("SLUICE_LIMIT_MEMORY", "1".into()),
        ];
        for (k, v) in reserved {
            env.insert(k.into(), v);
        }
        match &e.session_token {
            Some(t) => env.insert("AWS_SESSION_TOKEN".into(), t.clone()),
            None => env.remove("AWS_SESSION_TOKEN"),
        };
        if let Some(url) = &e.endpoint_url {
            env.entry("AWS_ENDPOINT_URL".into()).or_insert(url.clone());
        }
        if let (LambdaRuntime::Python, Some(path)) = (self.runtime, &e.python_path) {
            env.insert("PYTHONPATH".into(), path.to_string_lossy().into_owned());
        }
        env
    }

    fn spawn(&self) -> Result<Worker, String> {
        let (program, args): (&str, Vec<String>) = match self.runtime {
            LambdaRuntime::Nodejs => (
                &self.env.node,
                vec![
                    format!("--max-old-space-size={}", self.settings.memory_mb),
                    self.shim.to_string_lossy().into_owned(),
                ],
            ),
            LambdaRuntime::Python => (
                &self.env.python,
                vec!["-u".into(), self.shim.to_string_lossy().into_owned()],
            ),
        };
        let mut child = tokio::process::Command::new(program)
            .args(&args)
            .current_dir(&self.code_dir)
            .env_clear()
            .envs(self.environment())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the {program} runtime: {e}"))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("runtime started without its pipes".into());
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            stderr: rx,
        })
    }

    fn take_idle(&self) -> Option<Worker> {
        self.idle.lock().ok()?.pop()
    }

    fn give_back(&self, w: Worker) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(w);
        }
        // Otherwise dropped: kill_on_drop stops the process.
    }

    /// Number of warm workers waiting for an invocation.
    pub fn idle_workers(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    /// Invokes the handler with any event; returns its result or its error.
    pub async fn invoke_json(
        &self,
        event: Value,
        ctx: &CallContext,
    ) -> Result<Value, FunctionError> {
        self.call(event, ctx)
            .await
            .map_err(|f| FunctionError::Failed(f.message))
    }

    /// Invokes the handler with any event; returns its result, or how it failed with the
    /// error document Lambda's Invoke returns.
    pub async fn call(&self, event: Value, ctx: &CallContext) -> Result<Value, Failure> {
        let mut w = match self.take_idle() {
            Some(w) => w,
            None => {
                metrics::counter!("sluice_function_cold_starts_total", "mapping" => ctx.mapping.clone())
                    .increment(1);
                self.spawn()
                    .map_err(|e| Failure::runtime(&ctx.request_id, e, "Runtime.Unknown"))?
            }
        };
        let timeout = Duration::from_secs(self.settings.timeout_secs);
        let deadline_ms = sluice_meta::now_ms() + timeout.as_millis() as i64;
        let request = json!({
            "requestId": ctx.request_id,
            "deadlineMs": deadline_ms,
            "invokedFunctionArn": self.function_arn(),
            "event": event,
        });
        let (raw, reusable) = self.exchange(&mut w, &request, timeout, ctx).await;
        if reusable {
            self.give_back(w);
        } else {
            let _ = w.child.start_kill();
        }
        match raw {
            Raw::Ok(v) => Ok(v),
            Raw::Err(e) => Err(e),
        }
    }

    /// One request/response on a worker, with its log lines. Returns whether the worker can
    /// serve again.
    async fn exchange(
        &self,
        w: &mut Worker,
        request: &Value,
        timeout: Duration,
        ctx: &CallContext,
    ) -> (Raw, bool) {
        let mut line = request.to_string();
        line.push('\n');
        let sent = async {
            w.stdin.write_all(line.as_bytes()).await?;
            w.stdin.flush().await
        };
        if let Err(e) = sent.await {
            self.drain_logs(w, ctx, None).await;
            let f = Failure::runtime(
                &ctx.request_id,
                format!("the runtime is gone: {e}"),
                "Runtime.ExitError",
            );
            return (Raw::Err(f), false);
        }
        let response = tokio::time::timeout(timeout, w.stdout.next_line()).await;
        let (raw, reusable) = match response {
            Err(_) => {
                let _ = w.child.start_kill();
                self.drain_logs(w, ctx, None).await;
                let msg = format!("Task timed out after {:.2} seconds", timeout.as_secs_f64());
                ctx.log_lines("platform", [msg.clone()]).await;
                let f = Failure {
                    kind: FailureKind::Timeout,
                    document: json!({
                        "errorType": "Sandbox.Timedout",
                        "errorMessage": format!("RequestId: {} Error: {msg}", ctx.request_id),
                    }),
                    message: msg,
                };
                return (Raw::Err(f), false);
            }
            Ok(Err(e)) => (
                Raw::Err(Failure::runtime(
                    &ctx.request_id,
                    format!("cannot read the runtime's response: {e}"),
                    "Runtime.Unknown",
                )),
                false,
            ),
            Ok(Ok(None)) => {
                let status = w.child.wait().await.ok();
                let why = match status.and_then(|s| s.code()) {
                    Some(c) => format!("Runtime exited with error: exit status {c}"),
                    None => "Runtime exited with error: signal".to_owned(),
                };
                self.drain_logs(w, ctx, None).await;
                ctx.log_lines("platform", [why.clone()]).await;
                let f = Failure::runtime(&ctx.request_id, why, "Runtime.ExitError");
                return (Raw::Err(f), false);
            }
            Ok(Ok(Some(text))) => parse_response(&text, &ctx.request_id, self.runtime),
        };
        let complete = self.drain_logs(w, ctx, Some(&ctx.request_id)).await;
        (raw, reusable && complete)
    }

    /// Moves the worker's pending stderr lines to the log, up to the end marker of
    /// `request_id` when given. Returns whether the marker was seen.
    async fn drain_logs(
        &self,
        w: &mut Worker,
        ctx: &CallContext,
        request_id: Option<&str>,
    ) -> bool {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut found = false;
        let deadline = tokio::time::Instant::now() + LOG_DRAIN;
        loop {
            // Without a marker to wait for (the worker is gone or killed), the channel
            // closes once the process' stderr is closed; the deadline bounds both cases.
            let next = tokio::time::timeout_at(deadline, w.stderr.recv())
                .await
                .ok()
                .flatten();
            let Some(line) = next else { break };
            if let Some(id) = line.strip_prefix(END_MARK) {
                if request_id == Some(id) {
                    found = true;
                    break;
                }
                continue;
            }
            match line.strip_prefix(STDOUT_MARK) {
                Some(rest) => match rest.strip_prefix('O') {
                    Some(l) => stdout.push(l.to_owned()),
                    None => stderr.push(rest.to_owned()),
                },
                None => stderr.push(line),
            }
        }
        ctx.log_lines(
            "stdout",
            stdout.iter().flat_map(|l| log_lines(l.as_bytes())),
        )
        .await;
        ctx.log_lines(
            "stderr",
            stderr.iter().flat_map(|l| log_lines(l.as_bytes())),
        )
        .await;
        found
    }
}

fn parse_response(text: &str, request_id: &str, runtime: LambdaRuntime) -> (Raw, bool) {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let f = Failure::runtime(
                request_id,
                format!("the runtime broke the protocol: {e}"),
                "Runtime.Unknown",
            );
            return (Raw::Err(f), false);
        }
    };
    if v.get("requestId").and_then(Value::as_str) != Some(request_id) {
        let f = Failure::runtime(
            request_id,
            "the runtime answered another request".into(),
            "Runtime.Unknown",
        );
        return (Raw::Err(f), false);
    }
    if let Some(err) = v.get("error") {
        let ty = err
            .get("errorType")
            .and_then(Value::as_str)
            .unwrap_or("Error");
        let msg = err
            .get("errorMessage")
            .and_then(Value::as_str)
            .unwrap_or("");
        let stack = err.get("stackTrace").cloned().unwrap_or(json!([]));
        // Lambda's Node.js runtimes call the stack `trace`; its Python runtimes
        // `stackTrace`, next to the request id.
        let document = match runtime {
            LambdaRuntime::Nodejs => {
                json!({"errorType": ty, "errorMessage": msg, "trace": stack})
            }
            LambdaRuntime::Python => json!({
                "errorMessage": msg,
                "errorType": ty,
                "requestId": request_id,
                "stackTrace": stack,
            }),
        };
        let f = Failure {
            kind: FailureKind::Handler,
            message: format!("{ty}: {msg}"),
            document,
        };
        return (Raw::Err(f), true);
    }
    (
        Raw::Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        true,
    )
}

fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[async_trait]
impl BatchFunction for LambdaFunction {
    fn name(&self) -> &str {
        &self.name
    }

    async fn invoke(
        &self,
        input: &BatchInput,
        ctx: &CallContext,
    ) -> Result<BatchResponse, FunctionError> {
        let v = self.invoke_json(kinesis_event(input), ctx).await?;
        Ok(BatchResponse::Returned(v))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    use crate::logs::MemoryLogs as Lines;

    fn ctx(sink: &Arc<Lines>) -> CallContext {
        CallContext {
            logs: Some(sink.clone()),
            ..CallContext::new("m")
        }
    }

    fn setup(
        dir: &Path,
        runtime: LambdaRuntime,
        file: &str,
        code: &str,
        timeout_secs: u64,
    ) -> LambdaFunction {
        let code_dir = dir.join("code");
        std::fs::create_dir_all(&code_dir).expect("mkdir");
        std::fs::write(code_dir.join(file), code).expect("write handler");
        let handler = match runtime {
            LambdaRuntime::Nodejs => "index.handler",
            LambdaRuntime::Python => "handler.handler",
        };
        let mut env = LambdaEnvironment::new(dir.join("runtime"));
        env.endpoint_url = Some("http://127.0.0.1:4566".into());
        let settings = FunctionSettings {
            environment: BTreeMap::from([("PROCESSED_BUCKET".into(), "sluice".into())]),
            timeout_secs,
            memory_mb: 256,
            policy: None,
        };
        LambdaFunction::new("fn", runtime, code_dir, handler, settings, env).expect("function")
    }

    fn batch() -> BatchInput {
        BatchInput {
            stream: "s".into(),
            stream_arn: "arn:aws:kinesis:us-east-2:000000000000:stream/s".into(),
            shard_id: "shardId-000000000000".into(),
            region: "us-east-2".into(),
            invoke_identity_arn: "arn:aws:iam::000000000000:role/r".into(),
            records: ["hello", "bad"]
                .iter()
                .enumerate()
                .map(|(i, d)| sluice_stream::Record {
                    sequence_number: format!("{}", 100 + i),
                    partition_key: "pk".into(),
                    data: bytes::Bytes::from(d.to_string()),
                    approximate_arrival_ms: 1_700_000_000_000,
                })
                .collect(),
        }
    }

    const NODE_HANDLER: &str = r#"
let invocations = 0;
export const handler = async (event, context) => {
  invocations += 1;
  console.log('processing', event.Records.length, 'records');
  process.stderr.write('to stderr\n');
  const failures = [];
  for (const r of event.Records) {
    const text = Buffer.from(r.kinesis.data, 'base64').toString();
    if (text === 'bad') failures.push({ itemIdentifier: r.kinesis.sequenceNumber });
  }
  if (event.fail) throw new TypeError('asked to fail');
  if (event.sleep) await new Promise((r) => setTimeout(r, event.sleep));
  return {
    batchItemFailures: failures,
    invocations,
    pid: process.pid,
    requestId: context.awsRequestId,
    functionName: context.functionName,
    remaining: context.getRemainingTimeInMillis(),
    eventID: event.Records[0].eventID,
    env: {
      bucket: process.env.PROCESSED_BUCKET,
      region: process.env.AWS_REGION,
      defaultRegion: process.env.AWS_DEFAULT_REGION,
      name: process.env.AWS_LAMBDA_FUNCTION_NAME,
      version: process.env.AWS_LAMBDA_FUNCTION_VERSION,
      memory: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
      root: process.env.LAMBDA_TASK_ROOT,
      endpoint: process.env.AWS_ENDPOINT_URL,
      key: process.env.AWS_ACCESS_KEY_ID,
    },
  };
};
"#;

    #[tokio::test]
    async fn nodejs_handler_runs_warm_with_lambda_event_context_and_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = setup(
            dir.path(),
            LambdaRuntime::Nodejs,
            "index.mjs",
            NODE_HANDLER,
            30,
        );
        let sink = Arc::new(Lines::default());
        let c1 = ctx(&sink);
        let BatchResponse::Returned(v) = f.invoke(&batch(), &c1).await.expect("invoke") else {
            panic!("a lambda returns a value");
        };
        assert_eq!(v["batchItemFailures"], json!([{"itemIdentifier": "101"}]));
        assert_eq!(v["requestId"], c1.request_id.as_str());
        assert_eq!(v["functionName"], "fn");
        assert!(
            v["remaining"]
                .as_i64()
                .is_some_and(|r| r > 0 && r <= 30_000)
        );
        assert_eq!(v["eventID"], "shardId-000000000000:100");
        assert_eq!(v["env"]["bucket"], "sluice");
        assert_eq!(v["env"]["region"], "us-east-2");
        assert_eq!(v["env"]["defaultRegion"], "us-east-2");
        assert_eq!(v["env"]["version"], "$LATEST");
        assert_eq!(v["env"]["memory"], "256");
        assert_eq!(v["env"]["endpoint"], "http://127.0.0.1:4566");
        assert_eq!(v["env"]["key"], "sluice");
        assert!(
            v["env"]["root"]
                .as_str()
                .is_some_and(|r| r.ends_with("code"))
        );
        let logs = sink.0.lock().expect("lock").clone();
        let out: Vec<_> = logs.iter().filter(|l| l.stream == "stdout").collect();
        assert_eq!(out.len(), 1, "{logs:?}");
        assert!(
            out[0].line.ends_with("\tINFO\tprocessing 2 records"),
            "{:?}",
            out[0]
        );
        assert!(out[0].line.contains(&c1.request_id));
        assert!(
            logs.iter()
                .any(|l| l.stream == "stderr" && l.line == "to stderr")
        );
        assert!(logs.iter().all(|l| l.request_id == c1.request_id));

        // Warm: the second invocation reuses the process.
        let c2 = ctx(&sink);
        let BatchResponse::Returned(v2) = f.invoke(&batch(), &c2).await.expect("invoke") else {
            panic!("a lambda returns a value");
        };
        assert_eq!(v2["invocations"], 2);
        assert_eq!(v2["pid"], v["pid"]);
        assert_eq!(f.idle_workers(), 1);

        // A thrown error is a function error; the worker stays usable.
        let err = f
            .invoke_json(
                json!({"fail": true, "Records": batch_records()}),
                &ctx(&sink),
            )
            .await
            .expect_err("throws");
        assert_eq!(err.to_string(), "TypeError: asked to fail");
        assert_eq!(f.idle_workers(), 1);
    }

    fn batch_records() -> Value {
        kinesis_event(&batch())["Records"].clone()
    }

    #[tokio::test]
    async fn timeouts_kill_the_worker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = setup(
            dir.path(),
            LambdaRuntime::Nodejs,
            "index.mjs",
            NODE_HANDLER,
            1,
        );
        let sink = Arc::new(Lines::default());
        let err = f
            .invoke_json(
                json!({"sleep": 60000, "Records": batch_records()}),
                &ctx(&sink),
            )
            .await
            .expect_err("times out");
        assert_eq!(err.to_string(), "Task timed out after 1.00 seconds");
        assert_eq!(f.idle_workers(), 0, "a timed-out worker is not reused");
        let ok = f
            .invoke_json(json!({"Records": batch_records()}), &ctx(&sink))
            .await
            .expect("a fresh worker serves the next invocation");
        assert_eq!(ok["invocations"], 1);
    }

    const PY_HANDLER: &str = r#"
import base64, json, logging, os

calls = 0

def handler(event, context):
    global calls
    calls += 1
    print("got", len(event["Records"]), "records")
    logging.info("via logging")
    if event.get("fail"):
        raise ValueError("asked to fail")
    failures = [
        {"itemIdentifier": r["kinesis"]["sequenceNumber"]}
        for r in event["Records"]
        if base64.b64decode(r["kinesis"]["data"]) == b"bad"
    ]
    return {
        "batchItemFailures": failures,
        "calls": calls,
        "pid": os.getpid(),
        "requestId": context.aws_request_id,
        "remaining": context.get_remaining_time_in_millis(),
        "bucket": os.environ["PROCESSED_BUCKET"],
        "region": os.environ["AWS_REGION"],
        "name": os.environ["AWS_LAMBDA_FUNCTION_NAME"],
    }
"#;

    #[tokio::test]
    async fn python_handler_runs_warm_with_lambda_event_and_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = setup(
            dir.path(),
            LambdaRuntime::Python,
            "handler.py",
            PY_HANDLER,
            30,
        );
        let sink = Arc::new(Lines::default());
        let c1 = ctx(&sink);
        let BatchResponse::Returned(v) = f.invoke(&batch(), &c1).await.expect("invoke") else {
            panic!("a lambda returns a value");
        };
        assert_eq!(v["batchItemFailures"], json!([{"itemIdentifier": "101"}]));
        assert_eq!(v["requestId"], c1.request_id.as_str());
        assert_eq!(
            (v["bucket"].as_str(), v["region"].as_str()),
            (Some("sluice"), Some("us-east-2"))
        );
        assert_eq!(v["name"], "fn");
        assert!(
            v["remaining"]
                .as_i64()
                .is_some_and(|r| r > 0 && r <= 30_000)
        );
        let logs = sink.0.lock().expect("lock").clone();
        assert!(
            logs.iter()
                .any(|l| l.stream == "stdout" && l.line == "got 2 records"),
            "{logs:?}"
        );
        assert!(
            logs.iter().any(|l| l.line.starts_with("[INFO]")
                && l.line.contains(&c1.request_id)
                && l.line.ends_with("via logging")),
            "{logs:?}"
        );
        let BatchResponse::Returned(v2) = f.invoke(&batch(), &ctx(&sink)).await.expect("invoke")
        else {
            panic!("a lambda returns a value");
        };
        assert_eq!(
            (v2["calls"].as_i64(), &v2["pid"]),
            (Some(2), &v["pid"]),
            "warm worker reused"
        );
        let err = f
            .invoke_json(json!({"fail": true, "Records": []}), &ctx(&sink))
            .await
            .expect_err("raises");
        assert_eq!(err.to_string(), "ValueError: asked to fail");
    }

    #[tokio::test]
    async fn missing_handler_is_reported_as_lambda_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = setup(dir.path(), LambdaRuntime::Python, "other.py", "x = 1\n", 30);
        let sink = Arc::new(Lines::default());
        let err = f
            .invoke_json(json!({}), &ctx(&sink))
            .await
            .expect_err("no handler.py");
        assert!(
            err.to_string().starts_with("Runtime.ImportModuleError"),
            "{err}"
        );
    }
}
