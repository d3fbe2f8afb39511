//! `exec`: a program run once per record, as an object function.
//!
//! The program is started from an argv (never through a shell), gets the object's bytes on
//! stdin and writes the output bytes to stdout. Both are streamed: the object is written to
//! stdin chunk by chunk while stdout is read (and stored) as the program writes it, so an
//! object of any size passes through in bounded memory (a chunk in each direction plus the
//! pipes' kernel buffers). The exit status is known only once stdout ends; a failure then
//! ends the output stream in an error, and nothing is stored. Metadata comes in environment variables
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
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sluice_store::{ByteStream, ObjectInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::functions::{CallContext, Function, FunctionError, failed_output};

/// Longest stderr line kept in the log, in bytes; longer lines are cut.
const MAX_LOG_LINE: usize = 8 * 1024;

/// Stderr kept per invocation: its last 1 MiB (the last line makes the error message).
const MAX_STDERR: usize = 1024 * 1024;

/// Bytes read from stdout at a time.
const READ_CHUNK: usize = 64 * 1024;

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

/// A task aborted when dropped: the stdin writer and the stderr reader of an invocation
/// whose output is no longer read.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes the object to the program's stdin, then closes it. A program that stops reading
/// (closes the pipe) is not an error; a failing input is (returned, and reported once the
/// program's output has ended).
async fn feed(stdin: Option<ChildStdin>, mut input: ByteStream) -> Result<(), std::io::Error> {
    let Some(mut stdin) = stdin else {
        return Ok(());
    };
    while let Some(chunk) = input.next().await {
        let chunk = chunk?;
        if stdin.write_all(&chunk).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads stderr to its end, keeping its last [`MAX_STDERR`] bytes.
async fn drain_stderr(stderr: Option<ChildStderr>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut s) = stderr else { return kept };
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * MAX_STDERR {
                    kept.drain(..kept.len() - MAX_STDERR);
                }
            }
        }
    }
}

/// One running invocation, read as a stream of stdout chunks.
struct Running {
    program: String,
    timeout: Duration,
    deadline: Instant,
    child: Child,
    stdout: Option<ChildStdout>,
    writer: Option<AbortOnDrop<Result<(), std::io::Error>>>,
    stderr: Option<AbortOnDrop<Vec<u8>>>,
    ctx: CallContext,
    done: bool,
}

impl Running {
    /// The next output chunk, `None` at a successful end, or the error that fails the
    /// record (the program failed or timed out, or the input could not be read).
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        let r = match tokio::time::timeout_at(self.deadline, self.step()).await {
            Ok(r) => r,
            Err(_) => {
                // Killed now; `kill_on_drop` covers the case where this fails.
                let _ = self.child.start_kill();
                let msg = format!(
                    "{} timed out after {:.2} seconds",
                    self.program,
                    self.timeout.as_secs_f64()
                );
                self.ctx.log_lines("platform", [msg.clone()]).await;
                Some(Err(failed_output(msg)))
            }
        };
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }

    async fn step(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if let Some(stdout) = self.stdout.as_mut() {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            match stdout.read_buf(&mut buf).await {
                Ok(0) => self.stdout = None,
                Ok(_) => return Some(Ok(buf.freeze())),
                Err(e) => {
                    return Some(Err(failed_output(format!(
                        "cannot read output of {}: {e}",
                        self.program
                    ))));
                }
            }
        }
        // Stdout ended: the input written, stderr read, the exit status decide.
        let fed = match self.writer.take() {
            Some(mut w) => (&mut w.0).await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        let err = match self.stderr.take() {
            Some(mut r) => (&mut r.0).await.unwrap_or_default(),
            None => Vec::new(),
        };
        let lines = log_lines(&err);
        let last_line = lines.last().cloned();
        self.ctx.log_lines("stderr", lines).await;
        let status = match self.child.wait().await {
            Ok(s) => s,
            Err(e) => {
                return Some(Err(failed_output(format!(
                    "cannot wait for {}: {e}",
                    self.program
                ))));
            }
        };
        if !status.success() {
            let why = match status.code() {
                Some(c) => format!("exited with status {c}"),
                None => "was killed by a signal".into(),
            };
            let program = &self.program;
            return Some(Err(failed_output(match last_line {
                Some(l) => format!("{program} {why}: {l}"),
                None => format!("{program} {why}"),
            })));
        }
        // The program succeeded on input that broke off: its output is not the object's.
        match fed {
            Ok(()) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

#[async_trait]
impl Function for Exec {
    fn name(&self) -> &str {
        "exec"
    }

    async fn run(
        &self,
        input: ByteStream,
        info: &ObjectInfo,
        ctx: &CallContext,
    ) -> Result<ByteStream, FunctionError> {
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
        let deadline = Instant::now() + self.timeout;
        let mut child = cmd
            .spawn()
            .map_err(|e| FunctionError::Failed(format!("cannot start {program}: {e}")))?;
        let writer = AbortOnDrop(tokio::spawn(feed(child.stdin.take(), input)));
        let stderr = AbortOnDrop(tokio::spawn(drain_stderr(child.stderr.take())));
        let running = Running {
            program: program.clone(),
            timeout: self.timeout,
            deadline,
            stdout: child.stdout.take(),
            child,
            writer: Some(writer),
            stderr: Some(stderr),
            ctx: ctx.clone(),
            done: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            running,
            |mut r| async move { r.next().await.map(|item| (item, r)) },
        )))
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

    #[tokio::test]
    async fn input_and_output_are_streamed() {
        use crate::functions::{collect_output, output_error};
        // 16 MiB through `cat` in 64 KiB chunks, read as it comes: more than the pipes
        // hold, so writing and reading must overlap.
        let chunk = Bytes::from(vec![b'z'; 64 * 1024]);
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            (0..256).map(|_| Ok(chunk.clone())).collect();
        let cat =
            Exec::new(argv(&["cat"]), BTreeMap::new(), Duration::from_secs(30)).expect("exec");
        let mut out = cat
            .run(
                Box::pin(futures_util::stream::iter(chunks)),
                &info(),
                &CallContext::new("m"),
            )
            .await
            .expect("start");
        let mut total = 0;
        while let Some(c) = out.next().await {
            let c = c.expect("chunk");
            assert!(c.len() <= READ_CHUNK);
            total += c.len();
        }
        assert_eq!(total, 16 * 1024 * 1024);

        // Input that breaks off fails the invocation even though the program succeeded.
        let broken: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(chunk.clone()), Err(std::io::Error::other("disk gone"))];
        let out = cat
            .run(
                Box::pin(futures_util::stream::iter(broken)),
                &info(),
                &CallContext::new("m"),
            )
            .await
            .expect("start");
        let e = collect_output(out, u64::MAX)
            .await
            .expect_err("input failed");
        assert_eq!(e.to_string(), "cannot read input: disk gone");

        // A program that fails after writing output: the stream ends in its error.
        let late = Exec::new(
            argv(&[
                "sh",
                "-c",
                "head -c 100000 /dev/zero; echo late >&2; exit 4",
            ]),
            BTreeMap::new(),
            Duration::from_secs(30),
        )
        .expect("exec");
        let mut out = late
            .run(
                crate::functions::once(Bytes::new()),
                &info(),
                &CallContext::new("m"),
            )
            .await
            .expect("start");
        let mut last = None;
        while let Some(c) = out.next().await {
            if let Err(e) = c {
                last = Some(output_error(&e).to_string());
            }
        }
        assert_eq!(last.as_deref(), Some("sh exited with status 4: late"));
    }
}
