//! `exec`: a program run once per record, as an object function.
//!
//! The program is started from an argv (never through a shell), gets the object's bytes on
//! stdin and writes the output bytes to stdout. Metadata comes in environment variables
//! (`SLUICE_BUCKET`, `SLUICE_KEY`, `SLUICE_SIZE`, `SLUICE_ETAG`, `SLUICE_SHA256`,
//! `SLUICE_CONTENT_TYPE`, `SLUICE_OWNER`, `SLUICE_REQUEST_ID`, `SLUICE_MAPPING`) on top of
//! the mapping's environment and the server's `PATH`; nothing else of the server's
//! environment is passed on. A non-zero exit status, a signal or the timeout is a failure
//! (the process is killed on timeout). Every stderr line goes to the function log under the
//! invocation's request id.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sluice_store::ObjectInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::functions::{CallContext, Function, FunctionError};

/// Longest stderr line kept in the log, in bytes; longer lines are cut.
const MAX_LOG_LINE: usize = 8 * 1024;

pub struct Exec {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    timeout: Duration,
}

impl Exec {
    pub fn new(
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Self, FunctionError> {
        if argv.first().is_none_or(|p| p.is_empty()) {
            return Err(FunctionError::Failed(
                "exec function needs a program".into(),
            ));
        }
        Ok(Exec { argv, env, timeout })
    }
}

/// Splits captured output into log lines (lossy UTF-8, long lines cut).
pub(crate) fn log_lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| {
            if l.len() > MAX_LOG_LINE {
                let mut end = MAX_LOG_LINE;
                while !l.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}…", &l[..end])
            } else {
                l.to_owned()
            }
        })
        .collect()
}

#[async_trait]
impl Function for Exec {
    fn name(&self) -> &str {
        "exec"
    }

    async fn call(&self, input: Bytes, info: &ObjectInfo) -> Result<Bytes, FunctionError> {
        self.call_in(input, info, &CallContext::new("")).await
    }

    async fn call_in(
        &self,
        input: Bytes,
        info: &ObjectInfo,
        ctx: &CallContext,
    ) -> Result<Bytes, FunctionError> {
        let program = &self.argv[0];
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&self.argv[1..])
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
            .envs(&self.env)
            .env("SLUICE_BUCKET", &info.bucket)
            .env("SLUICE_KEY", &info.key)
            .env("SLUICE_SIZE", info.size.to_string())
            .env("SLUICE_ETAG", &info.etag)
            .env("SLUICE_SHA256", &info.sha256)
            .env("SLUICE_CONTENT_TYPE", &info.content_type)
            .env("SLUICE_OWNER", info.owner.as_deref().unwrap_or(""))
            .env("SLUICE_REQUEST_ID", &ctx.request_id)
            .env("SLUICE_MAPPING", &ctx.mapping)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| FunctionError::Failed(format!("cannot start {program}: {e}")))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let run = async move {
            let write = async move {
                if let Some(mut s) = stdin {
                    // A program that does not read its input closes the pipe: not an error.
                    let _ = s.write_all(&input).await;
                }
            };
            let read_out = async move {
                let mut buf = Vec::new();
                if let Some(mut s) = stdout {
                    s.read_to_end(&mut buf).await?;
                }
                Ok::<_, std::io::Error>(buf)
            };
            let read_err = async move {
                let mut buf = Vec::new();
                if let Some(mut s) = stderr {
                    s.read_to_end(&mut buf).await?;
                }
                Ok::<_, std::io::Error>(buf)
            };
            let ((), out, err) = tokio::join!(write, read_out, read_err);
            let status = child.wait().await;
            (out, err, status)
        };
        let (out, err, status) = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                // Dropping the future dropped the child: it is killed.
                let msg = format!(
                    "{program} timed out after {:.2} seconds",
                    self.timeout.as_secs_f64()
                );
                ctx.log_lines("platform", [msg.clone()]).await;
                return Err(FunctionError::Failed(msg));
            }
        };
        let err = err.unwrap_or_default();
        let lines = log_lines(&err);
        let last_line = lines.last().cloned();
        ctx.log_lines("stderr", lines).await;
        let status =
            status.map_err(|e| FunctionError::Failed(format!("cannot wait for {program}: {e}")))?;
        if !status.success() {
            let why = match status.code() {
                Some(c) => format!("exited with status {c}"),
                None => "was killed by a signal".into(),
            };
            return Err(FunctionError::Failed(match last_line {
                Some(l) => format!("{program} {why}: {l}"),
                None => format!("{program} {why}"),
            }));
        }
        let out = out
            .map_err(|e| FunctionError::Failed(format!("cannot read output of {program}: {e}")))?;
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    use crate::logs::MemoryLogs as Lines;

    fn info() -> ObjectInfo {
        ObjectInfo {
            bucket: "sluice".into(),
            key: "uploads/a.txt".into(),
            size: 5,
            etag: "e".into(),
            sha256: "s".into(),
            content_type: "text/plain".into(),
            last_modified_ms: 0,
            owner: None,
            ..Default::default()
        }
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn stdin_to_stdout_with_metadata_env_and_stderr_logged() {
        let sink = Arc::new(Lines::default());
        let ctx = CallContext {
            logs: Some(sink.clone()),
            ..CallContext::new("m")
        };
        let up = Exec::new(
            argv(&["tr", "a-z", "A-Z"]),
            BTreeMap::new(),
            Duration::from_secs(30),
        )
        .expect("exec");
        let out = up
            .call_in(Bytes::from("hello"), &info(), &ctx)
            .await
            .expect("tr");
        assert_eq!(out, Bytes::from("HELLO"));

        let env = BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]);
        let script = Exec::new(
            argv(&[
                "sh",
                "-c",
                "echo to-log >&2; printf '%s:%s' \"$SLUICE_KEY\" \"$GREETING\"",
            ]),
            env,
            Duration::from_secs(30),
        )
        .expect("exec");
        let out = script
            .call_in(Bytes::new(), &info(), &ctx)
            .await
            .expect("sh");
        assert_eq!(out, Bytes::from("uploads/a.txt:hi"));
        let logged = sink.0.lock().expect("lock").clone();
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].line, "to-log");
        assert_eq!(logged[0].request_id, ctx.request_id);
        assert_eq!(logged[0].stream, "stderr");
    }

    #[tokio::test]
    async fn failures_and_timeouts() {
        let fail = Exec::new(
            argv(&["sh", "-c", "echo broken >&2; exit 3"]),
            BTreeMap::new(),
            Duration::from_secs(30),
        )
        .expect("exec");
        let e = fail.call(Bytes::new(), &info()).await.expect_err("fails");
        assert_eq!(e.to_string(), "sh exited with status 3: broken");
        let slow = Exec::new(
            argv(&["sleep", "30"]),
            BTreeMap::new(),
            Duration::from_secs(1),
        )
        .expect("exec");
        let e = slow
            .call(Bytes::new(), &info())
            .await
            .expect_err("times out");
        assert!(e.to_string().contains("timed out"), "{e}");
        let missing = Exec::new(
            argv(&["/nonexistent/program"]),
            BTreeMap::new(),
            Duration::from_secs(1),
        )
        .expect("exec");
        assert!(missing.call(Bytes::new(), &info()).await.is_err());
        assert!(Exec::new(Vec::new(), BTreeMap::new(), Duration::from_secs(1)).is_err());
    }
}
