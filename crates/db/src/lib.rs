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
//!
//! Checkpoints (copying the WAL back into the database file) run off the commit path: SQLite's
//! auto-checkpoint is off, a background thread with its own connection runs a PASSIVE
//! checkpoint each time the WAL grew by [`DbOptions::checkpoint_pages`], concurrently with the
//! writer. PASSIVE checkpoints never reset the WAL while writes keep coming, so the writer
//! bounds it: once it holds [`DbOptions::wal_limit_pages`] pages, the writer runs a RESTART
//! checkpoint between two groups (the next commit then writes from the start of the file).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::Duration;

pub use rusqlite;
use rusqlite::{Connection, OpenFlags};

/// The most writes committed together. Large enough that a commit's fsync is shared widely,
/// small enough that one group's latency stays bounded.
const MAX_GROUP: usize = 4096;
const READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the writer's RESTART checkpoint waits for readers still using the WAL before it
/// gives up and lets the writer go on (it tries again later).
const RESTART_WAIT: Duration = Duration::from_millis(100);

/// Tuning of [`Db::open_with`]. [`DbOptions::default`] is what [`Db::open`] uses.
///
/// Invariant: whatever the values, every commit is fsynced before its writes resolve
/// (`synchronous = FULL`); these only move checkpoint and cache work around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbOptions {
    /// The background checkpointer runs each time the WAL grew by this many pages.
    pub checkpoint_pages: u32,
    /// Bound on the WAL, in pages. Past it the writer resets the WAL itself (RESTART
    /// checkpoint between two groups) when the background checkpointer is idle; past twice
    /// this it waits for the background checkpointer to finish, then resets the WAL. So the
    /// WAL never holds much more than twice this plus one group, unless a reader keeps one
    /// snapshot open for longer than a reset waits (it is tried again every
    /// `checkpoint_pages`).
    pub wal_limit_pages: u32,
    /// Page cache of the writer connection, in KiB.
    pub writer_cache_kib: u32,
    /// Page cache of each pooled reader connection, in KiB.
    pub reader_cache_kib: u32,
    /// How much of the database file each pooled reader maps into memory (`mmap_size`):
    /// reads of mapped pages cost no system call and no copy. SQLite maps at most the
    /// file's current size and never shrinks the file under a reader; 0 turns mapping off.
    pub reader_mmap_bytes: u64,
    /// Page size of a database created by this open (a power of two, 512 to 65536). An
    /// existing database keeps the page size it was created with.
    pub page_size: u32,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            // 8 MiB and 64 MiB with the default 8 KiB pages.
            checkpoint_pages: 1024,
            wal_limit_pages: 8192,
            writer_cache_kib: 32 * 1024,
            reader_cache_kib: 16 * 1024,
            reader_mmap_bytes: 1 << 30,
            page_size: 8192,
        }
    }
}

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
    options: DbOptions,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    readers: Mutex<Vec<Connection>>,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies `migrations`.
    pub fn open(path: &Path, migrations: &[Migration]) -> Result<Db, DbError> {
        Db::open_with(path, migrations, DbOptions::default())
    }

    /// [`Db::open`] with explicit tuning.
    pub fn open_with(
        path: &Path,
        migrations: &[Migration],
        options: DbOptions,
    ) -> Result<Db, DbError> {
        let open_err = |source| DbError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        configure(&conn, &options).map_err(open_err)?;
        migrate(&conn, migrations)?;
        // When the WAL is reset, a file grown past twice its bound is cut back to that.
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        conn.pragma_update(
            None,
            "journal_size_limit",
            page_size * 2 * i64::from(options.wal_limit_pages),
        )?;

        let ckpt_conn = Connection::open(path).map_err(open_err)?;
        ckpt_conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        ckpt_conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(open_err)?;
        let checkpointer = Arc::new(Checkpointer::default());
        let ckpt = checkpointer.clone();
        thread::Builder::new()
            .name("sluice-db-ckpt".into())
            .spawn(move || ckpt.run(ckpt_conn))
            .map_err(|e| DbError::Commit(format!("cannot start checkpoint thread: {e}")))?;

        let (tx, rx) = mpsc::channel::<Job>();
        let writer = Writer {
            conn,
            options,
            checkpointer: checkpointer.clone(),
            last_signal: 0,
            next_restart: 0,
        };
        if let Err(e) = thread::Builder::new()
            .name("sluice-db-writer".into())
            .spawn(move || writer.run(rx))
        {
            checkpointer.stop();
            return Err(DbError::Commit(format!("cannot start writer thread: {e}")));
        }

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_reader(path, &options).map_err(open_err)?);
        }
        Ok(Db {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                options,
                jobs: Mutex::new(Some(tx)),
                readers: Mutex::new(readers),
            }),
        })
    }

    /// Opens an existing database for inspection only: no migrations, no writer, and its
    /// connections cannot write (tools such as `sluice doctor`). [`Db::write`] fails with
    /// [`DbError::WriterGone`]. Fails if the file does not exist.
    pub fn open_read_only(path: &Path) -> Result<Db, DbError> {
        let options = DbOptions::default();
        let reader = open_reader(path, &options).map_err(|source| DbError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Db {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                options,
                jobs: Mutex::new(None),
                readers: Mutex::new(vec![reader]),
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
            None => open_reader(&self.inner.path, &self.inner.options)
                .map_err(|e| E::from(DbError::from(e)))?,
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

fn configure(conn: &Connection, options: &DbOptions) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Only takes effect on a new, empty file (before WAL mode is set and the first table is
    // written); SQLite ignores it for an existing database.
    conn.pragma_update(None, "page_size", options.page_size)?;
    // WAL: readers never block the writer. FULL: every commit fsyncs the WAL, so a commit
    // that returned survives power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Checkpoints run on the checkpoint thread, never inside a commit (see the module docs).
    // The WAL hook replaces SQLite's auto-checkpoint and reports the WAL's size instead.
    conn.wal_hook(Some(record_wal_pages));
    // A group's pages stay in memory until its commit, and the savepoints' journals too.
    conn.pragma_update(None, "cache_size", -i64::from(options.writer_cache_kib))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

thread_local! {
    /// Pages in the WAL after the last commit on this thread's connection (the writer's).
    static WAL_PAGES: Cell<Option<u32>> = const { Cell::new(None) };
}

fn record_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(Some(u32::try_from(pages).unwrap_or(0))));
    Ok(())
}

fn open_reader(path: &Path, options: &DbOptions) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "cache_size", -i64::from(options.reader_cache_kib))?;
    conn.pragma_update(
        None,
        "mmap_size",
        i64::try_from(options.reader_mmap_bytes).unwrap_or(i64::MAX),
    )?;
    Ok(conn)
}

/// The background checkpoint thread and its wake-up signal.
#[derive(Default)]
struct Checkpointer {
    state: Mutex<CkptState>,
    wake: Condvar,
    /// Held while a checkpoint runs, by this thread (PASSIVE) or the writer (RESTART), so the
    /// writer knows whether a RESTART would have to wait.
    running: Mutex<()>,
}

#[derive(Default)]
struct CkptState {
    pending: bool,
    stopped: bool,
}

impl Checkpointer {
    fn signal(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.pending = true;
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.stopped = true;
            self.wake.notify_one();
        }
    }

    fn run(&self, conn: Connection) {
        loop {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            while !st.pending && !st.stopped {
                st = match self.wake.wait(st) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
            if !st.pending {
                break;
            }
            st.pending = false;
            drop(st);
            let Ok(_running) = self.running.lock() else {
                return;
            };
            if let Err(e) = checkpoint(&conn, "PASSIVE") {
                tracing::warn!(error = %e, "background wal checkpoint failed");
            }
        }
        tracing::debug!("database checkpointer stopped");
    }
}

/// Runs `PRAGMA wal_checkpoint(mode)`; returns (busy, pages in the WAL, pages checkpointed).
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
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

/// The writer thread: group commits, and the WAL's bound.
struct Writer {
    conn: Connection,
    options: DbOptions,
    checkpointer: Arc<Checkpointer>,
    /// WAL size (pages) when the checkpointer was last woken.
    last_signal: u32,
    /// WAL size (pages) from which the writer tries a RESTART again after one gave up.
    next_restart: u32,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
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
            commit_group(&self.conn, &mut group);
            if let Some(pages) = WAL_PAGES.with(|p| p.take()) {
                self.after_commit(pages);
            }
        }
        self.checkpointer.stop();
        tracing::debug!("database writer stopped");
    }

    /// Wakes the checkpointer every `checkpoint_pages`, and resets a WAL that outgrew its
    /// bound. Runs between groups: no transaction is open on the writer's connection.
    fn after_commit(&mut self, pages: u32) {
        let o = self.options;
        if pages < self.last_signal {
            // The WAL was reset; count from its new start.
            self.last_signal = 0;
            self.next_restart = 0;
        }
        if pages >= o.wal_limit_pages.max(1) && pages >= self.next_restart {
            let must = pages >= o.wal_limit_pages.saturating_mul(2);
            let guard = if must {
                self.checkpointer.running.lock().ok()
            } else {
                self.checkpointer.running.try_lock().ok()
            };
            if let Some(_running) = guard {
                match self.restart() {
                    Ok(true) => {
                        self.last_signal = 0;
                        self.next_restart = 0;
                        return;
                    }
                    Ok(false) => {
                        // A reader still uses the WAL; try again after it grew some more.
                        self.next_restart = pages.saturating_add(o.checkpoint_pages.max(1));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "wal restart checkpoint failed");
                        self.next_restart = pages.saturating_add(o.checkpoint_pages.max(1));
                    }
                }
            }
        }
        if pages >= self.last_signal.saturating_add(o.checkpoint_pages.max(1)) {
            self.last_signal = pages;
            self.checkpointer.signal();
        }
    }

    /// A RESTART checkpoint: copies what is left of the WAL into the database and waits (at
    /// most [`RESTART_WAIT`]) until no reader uses the WAL, so the next commit starts it
    /// over. `Ok(false)` if readers kept it busy.
    fn restart(&self) -> rusqlite::Result<bool> {
        self.conn.busy_timeout(RESTART_WAIT)?;
        let outcome = checkpoint(&self.conn, "RESTART");
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        let (busy, _, _) = outcome?;
        Ok(busy == 0)
    }
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
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
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
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_wal_stays_bounded_and_checkpoints_leave_every_row_intact() {
        let dir = tempfile_dir();
        let path = dir.join("w.db");
        let options = DbOptions {
            checkpoint_pages: 8,
            wal_limit_pages: 64,
            page_size: 4096,
            ..DbOptions::default()
        };
        let db = Db::open_with(&path, M, options).expect("open");
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let mut largest = 0u64;
        for k in 0..1500i64 {
            // About one page per commit, so the WAL would reach some 1,500 pages unbounded.
            db.write_blocking(move |c| {
                c.execute(
                    "INSERT INTO t (k, v) VALUES (?1, ?2)",
                    rusqlite::params![k, "x".repeat(3000)],
                )?;
                Ok::<_, DbError>(())
            })
            .expect("write");
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
        // Twice the bound (the writer waits for the checkpointer there) plus one commit.
        let frame = 4096 + 24;
        assert!(
            largest <= 32 + (2 * 64 + 4) * frame,
            "the wal grew to {largest} bytes"
        );
        let (n, sum): (i64, i64) = db
            .read_blocking(|c| {
                Ok::<_, DbError>(c.query_row("SELECT COUNT(*), SUM(k) FROM t", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?)
            })
            .expect("count");
        assert_eq!((n, sum), (1500, 1499 * 1500 / 2));
        db.close();
        drop(db);
        // Everything is in the database file once the WAL is set aside.
        let c = Connection::open(&path).expect("reopen");
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity");
        assert_eq!(ok, "ok");
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 1500);
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn read_only_handles_read_and_refuse_writes() {
        let dir = tempfile_dir();
        let path = dir.join("r.db");
        let db = Db::open(&path, M).expect("open");
        db.write_blocking(|c| {
            c.execute("INSERT INTO t (k, v) VALUES (1, 'a')", [])?;
            Ok::<_, DbError>(())
        })
        .expect("write");
        let ro = Db::open_read_only(&path).expect("read-only open");
        let n: i64 = ro
            .read_blocking(|c| {
                Ok::<_, DbError>(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?)
            })
            .expect("read");
        assert_eq!(n, 1);
        assert!(matches!(
            ro.write_blocking(|_| Ok::<_, DbError>(())),
            Err(DbError::WriterGone)
        ));
        assert!(
            Db::open_read_only(&dir.join("absent.db")).is_err(),
            "a missing file is not created"
        );
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
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
