//! The embedded database every embedded backend shares: one SQLite file in WAL mode with
//! `synchronous = FULL`, written by a single writer thread that **group-commits**.
//!
//! A write is a closure run inside a transaction. The writer takes every write that is
//! waiting, runs each inside its own savepoint (so one failing write does not undo its
//! neighbours), then commits them together: one fsync for the whole group. A write's future
//! resolves only after that commit returned, so `Ok` means durable. Under load, writes queue
//! up while the previous group is being fsynced and the next group is larger: throughput
//! grows with concurrency while each caller still gets durability.
//!
//! Several parts (store, stream, uploads, identity, checkpoints) put their tables in the
//! same file; that is what lets the upload path commit an object, its stream record and its
//! upload row in one transaction.
//!
//! Reads run on a small pool of read-only connections on the blocking thread pool; in WAL
//! mode they never block the writer and see only committed data.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

pub use rusqlite;
use rusqlite::{Connection, OpenFlags};

/// The most writes committed together. Large enough that a commit's fsync is shared widely,
/// small enough that one group's latency stays bounded.
const MAX_GROUP: usize = 4096;
const READERS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("background task failed: {0}")]
    Join(String),
}

/// A migration step: the tables one part needs. Steps run in order at open, each once;
/// applied steps are recorded by `name`.
pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

type Completion = Box<dyn FnOnce(Option<&DbError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Completion + Send>;

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    readers: Mutex<Vec<Connection>>,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies `migrations`.
    pub fn open(path: &Path, migrations: &[Migration]) -> Result<Db, DbError> {
        let open_err = |source| DbError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        configure(&conn).map_err(open_err)?;
        migrate(&conn, migrations)?;

        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("sluice-db-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| DbError::Commit(format!("cannot start writer thread: {e}")))?;

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_reader(path).map_err(open_err)?);
        }
        Ok(Db {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                jobs: Mutex::new(Some(tx)),
                readers: Mutex::new(readers),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` inside the next group commit and returns its result once the group is
    /// durable. If `f` fails, its own changes are rolled back and its error returned; if the
    /// commit fails, every write of the group fails with [`DbError::Commit`].
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.submit(f, move |r| {
            let _ = done_tx.send(r);
        })?;
        done_rx.await.map_err(|_| E::from(DbError::WriterGone))?
    }

    /// [`Db::write`] for callers outside an async runtime (the command-line tools).
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (done_tx, done_rx) = mpsc::channel();
        self.submit(f, move |r| {
            let _ = done_tx.send(r);
        })?;
        done_rx.recv().map_err(|_| E::from(DbError::WriterGone))?
    }

    fn submit<T, E, F>(
        &self,
        f: F,
        reply: impl FnOnce(Result<T, E>) + Send + 'static,
    ) -> Result<(), E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let job: Job = Box::new(move |conn: &Connection| {
            let outcome = run_in_savepoint(conn, f);
            Box::new(move |commit_err: Option<&DbError>| {
                let result = match (outcome, commit_err) {
                    (Ok(v), None) => Ok(v),
                    (Ok(_), Some(e)) => Err(E::from(DbError::Commit(e.to_string()))),
                    (Err(e), _) => Err(e),
                };
                reply(result);
            }) as Completion
        });
        let guard = self
            .inner
            .jobs
            .lock()
            .map_err(|_| E::from(DbError::WriterGone))?;
        match guard.as_ref() {
            Some(sender) => sender.send(job).map_err(|_| E::from(DbError::WriterGone)),
            None => Err(E::from(DbError::WriterGone)),
        }
    }

    /// Runs a read on a pooled read-only connection, on the blocking thread pool.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_blocking(f))
            .await
            .map_err(|e| E::from(DbError::Join(e.to_string())))?
    }

    /// [`Db::read`] for callers outside an async runtime, or already on a blocking thread.
    pub fn read_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E>,
        E: From<DbError>,
    {
        let pooled = self
            .inner
            .readers
            .lock()
            .map_err(|_| E::from(DbError::WriterGone))?
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_reader(&self.inner.path).map_err(|e| E::from(DbError::from(e)))?,
        };
        let result = f(&conn);
        if let Ok(mut pool) = self.inner.readers.lock()
            && pool.len() < READERS
        {
            pool.push(conn);
        }
        result
    }

    /// Stops accepting writes; the writer thread finishes what it has and exits.
    pub fn close(&self) {
        if let Ok(mut g) = self.inner.jobs.lock() {
            g.take();
        }
    }
}

fn run_in_savepoint<T, E, F>(conn: &Connection, f: F) -> Result<T, E>
where
    F: FnOnce(&Connection) -> Result<T, E>,
    E: From<DbError>,
{
    // Cached statements: a job's bookkeeping must cost far less than the job.
    let exec = |sql: &str| -> Result<(), E> {
        conn.prepare_cached(sql)
            .and_then(|mut st| st.execute([]))
            .map(|_| ())
            .map_err(|e| E::from(DbError::from(e)))
    };
    exec("SAVEPOINT job")?;
    match f(conn) {
        Ok(v) => {
            exec("RELEASE job")?;
            Ok(v)
        }
        Err(e) => {
            // Undo only this job's changes; the group's transaction goes on.
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL: readers never block the writer. FULL: every commit fsyncs the WAL, so a commit
    // that returned survives power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

fn migrate(conn: &Connection, migrations: &[Migration]) -> Result<(), DbError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_ms INTEGER NOT NULL)",
    )?;
    for m in migrations {
        // IMMEDIATE: a second process opening the same file at the same time waits here
        // instead of applying the same step twice.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let done: bool = conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM _migrations WHERE name = ?1)",
                [m.name],
                |r| r.get(0),
            )
            .inspect_err(|_| {
                let _ = conn.execute_batch("ROLLBACK");
            })?;
        if !done {
            let applied = conn.execute_batch(m.sql).and_then(|_| {
                conn.execute(
                    "INSERT INTO _migrations (name, applied_ms) VALUES (?1, ?2)",
                    rusqlite::params![m.name, now_ms()],
                )
            });
            if let Err(e) = applied {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
        }
        conn.execute_batch("COMMIT")?;
    }
    Ok(())
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>) {
    let mut group: Vec<Job> = Vec::new();
    // Blocks for the first job of a group, then takes whatever else is already waiting.
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(&conn, &mut group);
    }
    tracing::debug!("database writer stopped");
}

fn commit_group(conn: &Connection, group: &mut Vec<Job>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = DbError::Commit(format!("cannot begin: {e}"));
        for job in group.drain(..) {
            // The job never ran; tell its caller the group failed.
            let completion = job_failed(job, conn);
            completion(Some(&err));
        }
        return;
    }
    let completions: Vec<Completion> = group
        .drain(..)
        .filter_map(|job| {
            // A panicking job must not take the writer down with it: its caller sees
            // `WriterGone` (its completion is dropped) and its savepoint is undone.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn))) {
                Ok(c) => Some(c),
                Err(_) => {
                    tracing::error!("a database write panicked; it was rolled back");
                    let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                    None
                }
            }
        })
        .collect();
    let commit = conn.execute_batch("COMMIT");
    let err = match commit {
        Ok(()) => None,
        Err(e) => {
            tracing::error!(error = %e, "group commit failed; every write of the group is reported failed");
            let _ = conn.execute_batch("ROLLBACK");
            Some(DbError::Commit(e.to_string()))
        }
    };
    for c in completions {
        c(err.as_ref());
    }
}

/// Runs a job whose transaction could not begin. Its work happens outside any transaction
/// and is then rolled back by reporting failure; to keep that impossible we run it inside
/// a savepoint that is rolled back right away.
fn job_failed(job: Job, conn: &Connection) -> Completion {
    let _ = conn.execute_batch("SAVEPOINT failed");
    let c = job(conn);
    let _ = conn.execute_batch("ROLLBACK TO failed; RELEASE failed");
    c
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Fsyncs a directory so that a file created or renamed in it survives power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &[Migration] = &[Migration {
        name: "t1",
        sql: "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    }];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_commit_and_failures_are_isolated() {
        let dir = tempfile_dir();
        let db = Db::open(&dir.join("t.db"), M).expect("open");
        let mut tasks = Vec::new();
        for i in 0..200i64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.write(move |c| {
                    c.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", [i % 150])?;
                    Ok::<_, DbError>(())
                })
                .await
            }));
        }
        let mut ok = 0;
        let mut failed = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok(()) => ok += 1,
                Err(_) => failed += 1,
            }
        }
        // 50 keys collide: those writes fail alone, the rest commit.
        assert_eq!((ok, failed), (150, 50));
        let n: i64 = db
            .read(|c| Ok::<_, DbError>(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?))
            .await
            .expect("count");
        assert_eq!(n, 150);
    }

    #[test]
    fn migrations_apply_once() {
        let dir = tempfile_dir();
        let path = dir.join("m.db");
        drop(Db::open(&path, M).expect("first"));
        let db = Db::open(&path, M).expect("second open must not re-run the step");
        let n: i64 = db
            .read_blocking(|c| {
                Ok::<_, DbError>(c.query_row("SELECT COUNT(*) FROM _migrations", [], |r| r.get(0))?)
            })
            .expect("count");
        assert_eq!(n, 1);
    }

    fn tempfile_dir() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "sluice-db-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::Instant::now())
    }
}
