//! Function logs: what functions write to stdout and stderr, line by line, tagged with the
//! invocation's request id (as CloudWatch Logs keeps a Lambda function's output), plus the
//! `START` / `END` / `REPORT` platform lines Lambda writes around each invocation.
//!
//! [`EmbeddedLogs`] keeps them per mapping in the shared database, newest
//! [`EmbeddedLogs::DEFAULT_KEEP`] lines per mapping, and lets readers tail and follow them.
//! Ids grow strictly, so "everything after id N" is how a follower resumes.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use sluice_meta::Meta;
use sluice_meta::params;
use tokio::sync::watch;

use crate::ProcessorError;

/// One line of a function's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Position in the log; 0 until stored.
    pub id: i64,
    pub mapping: String,
    pub ts_ms: i64,
    pub request_id: String,
    /// `stdout`, `stderr` or `platform`.
    pub stream: String,
    pub line: String,
}

/// Where functions' log lines go. Appending never fails the invocation: a sink that cannot
/// store lines reports that itself.
#[async_trait]
pub trait LogSink: Send + Sync + 'static {
    async fn append(&self, lines: Vec<LogLine>);
}

/// Function logs in the shared embedded database (table `function_logs`, created by the
/// `processor-0002` migration).
#[derive(Clone)]
pub struct EmbeddedLogs {
    db: Meta,
    keep: i64,
    changed: std::sync::Arc<watch::Sender<u64>>,
}

impl EmbeddedLogs {
    /// Lines kept per mapping; older ones are dropped as new ones arrive.
    pub const DEFAULT_KEEP: i64 = 10_000;

    pub fn new(db: Meta) -> Self {
        EmbeddedLogs {
            db,
            keep: Self::DEFAULT_KEEP,
            changed: std::sync::Arc::new(watch::channel(0).0),
        }
    }

    pub fn with_keep(mut self, keep: i64) -> Self {
        self.keep = keep.max(1);
        self
    }

    /// Stores lines; returns them with their ids.
    pub async fn store(&self, lines: Vec<LogLine>) -> Result<Vec<LogLine>, ProcessorError> {
        let keep = self.keep;
        let stored = self
            .db
            .write(move |c| {
                let mut out = Vec::with_capacity(lines.len());
                let mut mappings = std::collections::BTreeSet::new();
                for l in &lines {
                    let mut l = l.clone();
                    l.id = c.insert_id(
                        "INSERT INTO function_logs (mapping, ts_ms, request_id, stream, line)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![l.mapping, l.ts_ms, l.request_id, l.stream, l.line],
                        "id",
                    )?;
                    mappings.insert(l.mapping.clone());
                    out.push(l);
                }
                for m in mappings {
                    c.execute(
                        "DELETE FROM function_logs WHERE mapping = ?1 AND id <=
                         (SELECT MAX(id) FROM function_logs WHERE mapping = ?1) - ?2",
                        params![m, keep],
                    )?;
                }
                Ok::<_, ProcessorError>(out)
            })
            .await?;
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        Ok(stored)
    }

    /// The last `n` lines of a mapping, oldest first.
    pub async fn tail(&self, mapping: &str, n: usize) -> Result<Vec<LogLine>, ProcessorError> {
        let m = mapping.to_owned();
        let mut lines = self
            .db
            .read(move |c| {
                let rows = c.query_vec(
                    "SELECT id, mapping, ts_ms, request_id, stream, line FROM function_logs
                     WHERE mapping = ?1 ORDER BY id DESC LIMIT ?2",
                    params![m, n as i64],
                    row_to_line,
                )?;
                Ok::<_, ProcessorError>(rows)
            })
            .await?;
        lines.reverse();
        Ok(lines)
    }

    /// Lines of a mapping with an id greater than `after_id`, oldest first, at most `limit`.
    pub async fn after(
        &self,
        mapping: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<LogLine>, ProcessorError> {
        let m = mapping.to_owned();
        self.db
            .read(move |c| {
                let rows = c.query_vec(
                    "SELECT id, mapping, ts_ms, request_id, stream, line FROM function_logs
                     WHERE mapping = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                    params![m, after_id, limit as i64],
                    row_to_line,
                )?;
                Ok::<_, ProcessorError>(rows)
            })
            .await
    }

    /// Follows a log: waits up to `wait` for lines after `after_id` and returns them (empty
    /// when none came). Call again with the last id returned to keep following.
    pub async fn follow(
        &self,
        mapping: &str,
        after_id: i64,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<LogLine>, ProcessorError> {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            changes.borrow_and_update();
            let lines = self.after(mapping, after_id, limit).await?;
            if !lines.is_empty() {
                return Ok(lines);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }
}

fn row_to_line(r: &sluice_meta::Row<'_>) -> sluice_meta::MetaResult<LogLine> {
    Ok(LogLine {
        id: r.get(0)?,
        mapping: r.get(1)?,
        ts_ms: r.get(2)?,
        request_id: r.get(3)?,
        stream: r.get(4)?,
        line: r.get(5)?,
    })
}

#[async_trait]
impl LogSink for EmbeddedLogs {
    async fn append(&self, lines: Vec<LogLine>) {
        if let Err(e) = self.store(lines).await {
            tracing::warn!(error = %e, "cannot store function log lines");
        }
    }
}

/// A [`LogSink`] that never makes the function wait for the database: lines go through a
/// bounded queue to one task that stores everything queued in one write (one commit for
/// many invocations' lines). Order is kept. When the queue is full, appending waits (the
/// writer fell behind; nothing is dropped).
#[derive(Clone)]
pub struct BufferedLogs {
    tx: tokio::sync::mpsc::Sender<LogMessage>,
}

enum LogMessage {
    Lines(Vec<LogLine>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl BufferedLogs {
    /// Queued appends before appending waits.
    pub const QUEUE: usize = 4096;

    /// Starts the writer task (on the current tokio runtime).
    pub fn start(logs: EmbeddedLogs) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<LogMessage>(Self::QUEUE);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut lines = Vec::new();
                let mut flushes = Vec::new();
                let mut next = Some(first);
                while let Some(m) = next {
                    match m {
                        LogMessage::Lines(l) => lines.extend(l),
                        LogMessage::Flush(done) => flushes.push(done),
                    }
                    next = rx.try_recv().ok();
                }
                if !lines.is_empty() {
                    logs.append(lines).await;
                }
                for done in flushes {
                    let _ = done.send(());
                }
            }
        });
        BufferedLogs { tx }
    }

    /// Waits until every line appended before this call is stored.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(LogMessage::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

#[async_trait]
impl LogSink for BufferedLogs {
    async fn append(&self, lines: Vec<LogLine>) {
        if self.tx.send(LogMessage::Lines(lines)).await.is_err() {
            tracing::warn!("the function log writer has stopped; lines dropped");
        }
    }
}

/// A log sink that keeps lines in memory, for tests of functions.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct MemoryLogs(pub(crate) std::sync::Mutex<Vec<LogLine>>);

#[cfg(test)]
#[async_trait::async_trait]
impl LogSink for MemoryLogs {
    async fn append(&self, lines: Vec<LogLine>) {
        if let Ok(mut l) = self.0.lock() {
            l.extend(lines);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(m: &str, l: &str) -> LogLine {
        LogLine {
            id: 0,
            mapping: m.into(),
            ts_ms: 1,
            request_id: "r".into(),
            stream: "stdout".into(),
            line: l.into(),
        }
    }

    #[tokio::test]
    async fn tail_follow_and_trim() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("logs", crate::embedded::MIGRATIONS);
        let logs = EmbeddedLogs::new(db).with_keep(3);
        logs.store((0..5).map(|i| line("a", &format!("l{i}"))).collect())
            .await
            .expect("store");
        logs.store(vec![line("b", "other")]).await.expect("store");
        let tail = logs.tail("a", 10).await.expect("tail");
        let texts: Vec<_> = tail.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(
            texts,
            ["l2", "l3", "l4"],
            "only the newest 3 are kept, oldest first"
        );
        let last = tail.last().map(|l| l.id).unwrap_or_default();
        assert!(
            logs.follow("a", last, 10, Duration::from_millis(10))
                .await
                .expect("f")
                .is_empty()
        );
        let follower = {
            let logs = logs.clone();
            tokio::spawn(async move { logs.follow("a", last, 10, Duration::from_secs(30)).await })
        };
        logs.store(vec![line("a", "new")]).await.expect("store");
        let got = follower.await.expect("join").expect("follow");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].line, "new");

        let logs = logs.with_keep(EmbeddedLogs::DEFAULT_KEEP);
        let buffered = BufferedLogs::start(logs.clone());
        for i in 0..50 {
            buffered.append(vec![line("c", &format!("b{i}"))]).await;
        }
        buffered.flush().await;
        let all = logs.tail("c", 100).await.expect("tail");
        let texts: Vec<String> = all.into_iter().map(|l| l.line).collect();
        let want: Vec<String> = (0..50).map(|i| format!("b{i}")).collect();
        assert_eq!(texts, want, "buffered lines are all stored, in order");
    }
}
