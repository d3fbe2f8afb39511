//! The embedded database every embedded backend shares: one SQLite file in WAL mode,
//! written by a single writer thread that **group-commits**, with the fsync of each commit
//! **pipelined** on a second thread.
//!
//! A write is a closure run inside a transaction. The writer takes every write that is
//! waiting, runs each inside its own savepoint (so one failing write does not undo its
//! neighbours), then commits them together. The commit writes the group's WAL frames but
//! does not fsync them (`synchronous = NORMAL`); the group is handed to the **syncer**
//! thread, which `fdatasync`s the WAL file once for every group committed since its last
//! sync and only then resolves their futures. So `Ok` still means durable, and meanwhile the
//! writer already runs the next group: SQL work and fsync overlap instead of taking turns.
//! Under load, writes queue up while a group is being written or synced and the next group
//! is larger: throughput grows with concurrency while each caller still gets durability.
//!
//! Why this is as durable as `synchronous = FULL`: a WAL commit is its frames with the
//! commit marker, written in order to one file; `fdatasync` of that file after the commit
//! returned makes the frames (and the file's size) durable, which is all SQLite's recovery
//! reads. `NORMAL` still syncs the WAL before every checkpoint copies it into the database
//! and the database after, so a WAL reset never overwrites frames that are only in the
//! database file's page cache. At open, the WAL is fsynced once, so what a killed process
//! left in the page cache is durable before anything is served.
//!
//! The price: another connection can **read a group after its commit and before its
//! fsync** (SQLite publishes a commit to readers at once). A power loss in that window loses
//! a group nobody was told is durable, but a reader may have seen it. Where that matters the
//! caller hides rows until [`on_durable`] callbacks report them durable (the stream does, so
//! a consumer never checkpoints a sequence number that a power loss could hand out again).
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

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::Duration;

pub use rusqlite;
use rusqlite::{Connection, OpenFlags};

/// The most writes committed together. Large enough that a commit's fsync is shared widely,
/// small enough that one group's latency stays bounded.
const MAX_GROUP: usize = 4096;
/// Read connections opened at start. More are opened when more reads run at once, and kept
/// up to [`MAX_READERS`]: opening one parses the whole schema, far more than a read costs.
const READERS: usize = 4;
const MAX_READERS: usize = 32;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the writer's RESTART checkpoint waits for readers still using the WAL before it
/// gives up and lets the writer go on (it tries again later).
const RESTART_WAIT: Duration = Duration::from_millis(100);

/// Tuning of [`Db::open_with`]. [`DbOptions::default`] is what [`Db::open`] uses.
///
/// Invariant: whatever the values, every commit is fsynced before its writes resolve (by
/// the syncer thread); these only move checkpoint and cache work around.
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
type Callback = Box<dyn FnOnce() + Send>;

thread_local! {
    /// Whether this thread is running a write job (only ever true on the writer thread).
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
    /// Callbacks registered by the current group's jobs with [`on_durable`].
    static ON_DURABLE: RefCell<Vec<Callback>> = const { RefCell::new(Vec::new()) };
}

/// Registers `f` to run once the write job calling this is durable: after the fsync that
/// covers its group, before any write of that group resolves, in commit order, on the
/// syncer thread (so `f` must be quick and must not block). If the job fails (its savepoint
/// is rolled back) or its group's commit fails, `f` never runs. Called outside a write job
/// (there is nothing to wait for), `f` runs at once.
///
/// This is how a part hides what another connection could already read but a power loss
/// could still take back (see the module docs).
pub fn on_durable(f: impl FnOnce() + Send + 'static) {
    if IN_JOB.with(Cell::get) {
        ON_DURABLE.with(|v| v.borrow_mut().push(Box::new(f)));
    } else {
        f();
    }
}

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
    /// State that parts attach to this database, one value per type ([`Db::shared`]).
    shared: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    hold: Arc<SyncHold>,
    stats: Arc<Counters>,
}

/// What the writer and the syncer did since the database was opened ([`Db::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbStats {
    /// Transactions committed (each holds one or more jobs).
    pub groups: u64,
    /// Write jobs run.
    pub jobs: u64,
    /// Time the writer spent running and committing groups.
    pub commit_nanos: u64,
    /// WAL fsyncs (each covers every group committed since the previous one).
    pub syncs: u64,
    /// Time the syncer spent in fsync.
    pub sync_nanos: u64,
}

#[derive(Debug, Default)]
struct Counters {
    groups: AtomicU64,
    jobs: AtomicU64,
    commit_nanos: AtomicU64,
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
}

fn add_elapsed(counter: &AtomicU64, since: std::time::Instant) {
    let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(ns, Ordering::Relaxed);
}

/// Lets tests hold the syncer between a commit and its fsync ([`Db::hold_syncs`]).
#[derive(Default)]
struct SyncHold {
    held: Mutex<u32>,
    released: Condvar,
}

impl SyncHold {
    fn wait(&self) {
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        while *held > 0 {
            held = match self.released.wait(held) {
                Ok(g) => g,
                Err(_) => return,
            };
        }
    }
}

/// While alive, groups commit but are not fsynced, so their writes do not resolve
/// ([`Db::hold_syncs`]).
pub struct SyncsHeld(Arc<SyncHold>);

impl Drop for SyncsHeld {
    fn drop(&mut self) {
        if let Ok(mut held) = self.0.held.lock() {
            *held = held.saturating_sub(1);
            self.0.released.notify_all();
        }
    }
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
        let wal = make_durable_at_open(path, &conn)?;

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

        let failed = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(SyncHold::default());
        let stats = Arc::new(Counters::default());
        let (synced_tx, synced_rx) = mpsc::channel::<Committed>();
        let syncer = Syncer {
            wal,
            failed: failed.clone(),
            hold: hold.clone(),
            stats: stats.clone(),
        };
        let syncer = match thread::Builder::new()
            .name("sluice-db-sync".into())
            .spawn(move || syncer.run(synced_rx))
        {
            Ok(h) => h,
            Err(e) => {
                checkpointer.stop();
                return Err(DbError::Commit(format!("cannot start sync thread: {e}")));
            }
        };

        let (tx, rx) = mpsc::channel::<Job>();
        let writer = Writer {
            conn,
            options,
            checkpointer: checkpointer.clone(),
            last_signal: 0,
            next_restart: 0,
            syncer: Some((synced_tx, syncer)),
            failed,
            stats: stats.clone(),
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
                shared: Mutex::new(HashMap::new()),
                hold,
                stats,
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
                shared: Mutex::new(HashMap::new()),
                hold: Arc::default(),
                stats: Arc::default(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Counters of the writer and the syncer since open: how many jobs share a commit and
    /// how many commits share an fsync (benchmarks report them).
    pub fn stats(&self) -> DbStats {
        let c = &self.inner.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DbStats {
            groups: get(&c.groups),
            jobs: get(&c.jobs),
            commit_nanos: get(&c.commit_nanos),
            syncs: get(&c.syncs),
            sync_nanos: get(&c.sync_nanos),
        }
    }

    /// Holds every fsync until the returned guard is dropped: groups still commit (other
    /// connections can read them) but their writes do not resolve. For tests of what
    /// readers may see between a commit and its fsync; nothing else should call it.
    pub fn hold_syncs(&self) -> SyncsHeld {
        if let Ok(mut held) = self.inner.hold.held.lock() {
            *held += 1;
        }
        SyncsHeld(self.inner.hold.clone())
    }

    /// The value of type `T` shared by every handle of this database (created with
    /// `T::default()` on first use). Parts keep state here that must be one per database
    /// file rather than one per handle, such as what is durable ([`on_durable`]).
    pub fn shared<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut map = match self.inner.shared.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let entry = map
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()) as Arc<dyn Any + Send + Sync>)
            .clone();
        drop(map);
        match entry.downcast::<T>() {
            Ok(v) => v,
            // Unreachable: the map's key is the value's type.
            Err(_) => Arc::new(T::default()),
        }
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

    /// [`Db::write`] without a future: `done` gets the result once the group is durable (or
    /// failed). `done` runs on the database's syncer thread, so it must be quick and must not
    /// block; it suits callers that fan results out to many waiters themselves.
    pub fn write_with<T, E, F>(
        &self,
        f: F,
        done: impl FnOnce(Result<T, E>) + Send + 'static,
    ) -> Result<(), E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        self.submit(f, done)
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
            && pool.len() < MAX_READERS
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
    let registered = ON_DURABLE.with(|v| v.borrow().len());
    IN_JOB.with(|j| j.set(true));
    let outcome = f(conn);
    IN_JOB.with(|j| j.set(false));
    let released = match outcome {
        Ok(v) => exec("RELEASE job").map(|()| v),
        Err(e) => Err(e),
    };
    if released.is_err() {
        // Undo only this job's changes (and forget its callbacks); the group goes on.
        let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
        ON_DURABLE.with(|v| v.borrow_mut().truncate(registered));
    }
    released
}

fn configure(conn: &Connection, options: &DbOptions) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Only takes effect on a new, empty file (before WAL mode is set and the first table is
    // written); SQLite ignores it for an existing database.
    conn.pragma_update(None, "page_size", options.page_size)?;
    // WAL: readers never block the writer. NORMAL: a commit writes the WAL without fsync;
    // the syncer thread fsyncs it before anyone is told (see the module docs). NORMAL still
    // fsyncs around checkpoints.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
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
    /// Where committed groups go to be fsynced, and the syncer thread (joined at the end, so
    /// the connection outlives every pending fsync).
    syncer: Option<(mpsc::Sender<Committed>, thread::JoinHandle<()>)>,
    /// Set by the syncer when an fsync failed: nothing written since can be trusted to be
    /// durable, so every later write fails until the process restarts.
    failed: Arc<AtomicBool>,
    stats: Arc<Counters>,
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
            let started = std::time::Instant::now();
            self.stats.groups.fetch_add(1, Ordering::Relaxed);
            self.stats
                .jobs
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            let committed = if self.failed.load(Ordering::Acquire) {
                fail_group(&self.conn, &mut group, &fsync_failed());
                None
            } else {
                commit_group(&self.conn, &mut group)
            };
            add_elapsed(&self.stats.commit_nanos, started);
            if let Some(committed) = committed {
                self.hand_to_syncer(committed);
            }
            if let Some(pages) = WAL_PAGES.with(|p| p.take()) {
                self.after_commit(pages);
            }
        }
        if let Some((tx, handle)) = self.syncer.take() {
            drop(tx);
            let _ = handle.join();
        }
        self.checkpointer.stop();
        tracing::debug!("database writer stopped");
    }

    fn hand_to_syncer(&mut self, committed: Committed) {
        let Some((tx, _)) = &self.syncer else {
            return;
        };
        if let Err(mpsc::SendError(c)) = tx.send(committed) {
            // The syncer is gone (it only stops when this sender is dropped, or panicked):
            // nobody can vouch for durability.
            self.failed.store(true, Ordering::Release);
            c.finish(Some(&DbError::Commit(
                "the database sync thread stopped".into(),
            )));
        }
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

/// A group that committed and waits for the fsync that makes it durable.
struct Committed {
    completions: Vec<Completion>,
    callbacks: Vec<Callback>,
}

impl Committed {
    /// Resolves the group's writes: callbacks first (only on success), then completions.
    fn finish(self, err: Option<&DbError>) {
        if err.is_none() {
            for cb in self.callbacks {
                cb();
            }
        }
        for c in self.completions {
            c(err);
        }
    }
}

fn fsync_failed() -> DbError {
    DbError::Commit(
        "an earlier fsync of the database failed; writes are refused until sluice restarts".into(),
    )
}

/// Fails every job of a group that cannot be committed (none of them runs to completion).
fn fail_group(conn: &Connection, group: &mut Vec<Job>, err: &DbError) {
    for job in group.drain(..) {
        // The job never ran; tell its caller the group failed.
        let completion = job_failed(job, conn);
        // Its writes were rolled back: so are its durability callbacks.
        ON_DURABLE.with(|v| v.borrow_mut().clear());
        completion(Some(err));
    }
}

/// Runs a group in one transaction and commits it (without fsync). Returns the committed
/// group for the syncer, or `None` when the group failed (its writes are resolved here).
fn commit_group(conn: &Connection, group: &mut Vec<Job>) -> Option<Committed> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        fail_group(conn, group, &DbError::Commit(format!("cannot begin: {e}")));
        return None;
    }
    let completions: Vec<Completion> = group
        .drain(..)
        .filter_map(|job| {
            // A panicking job must not take the writer down with it: its caller sees
            // `WriterGone` (its completion is dropped) and its savepoint is undone.
            let registered = ON_DURABLE.with(|v| v.borrow().len());
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn))) {
                Ok(c) => Some(c),
                Err(_) => {
                    tracing::error!("a database write panicked; it was rolled back");
                    IN_JOB.with(|j| j.set(false));
                    ON_DURABLE.with(|v| v.borrow_mut().truncate(registered));
                    let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                    None
                }
            }
        })
        .collect();
    let callbacks = ON_DURABLE.with(|v| std::mem::take(&mut *v.borrow_mut()));
    match conn.execute_batch("COMMIT") {
        Ok(()) => Some(Committed {
            completions,
            callbacks,
        }),
        Err(e) => {
            tracing::error!(error = %e, "group commit failed; every write of the group is reported failed");
            let _ = conn.execute_batch("ROLLBACK");
            let err = DbError::Commit(e.to_string());
            drop(callbacks);
            for c in completions {
                c(Some(&err));
            }
            None
        }
    }
}

/// The syncer thread: fsyncs the WAL once for every group committed since its last fsync,
/// then resolves those groups in commit order.
struct Syncer {
    wal: File,
    failed: Arc<AtomicBool>,
    hold: Arc<SyncHold>,
    stats: Arc<Counters>,
}

impl Syncer {
    fn timed_sync(&self) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let r = self.wal.sync_data();
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        add_elapsed(&self.stats.sync_nanos, started);
        r
    }

    fn run(self, rx: mpsc::Receiver<Committed>) {
        let mut groups: Vec<Committed> = Vec::new();
        while let Ok(first) = rx.recv() {
            groups.push(first);
            self.hold.wait();
            while let Ok(more) = rx.try_recv() {
                groups.push(more);
            }
            let err = if self.failed.load(Ordering::Acquire) {
                Some(fsync_failed())
            } else if let Err(e) = self.timed_sync() {
                // The kernel may have dropped the dirty pages it could not write: retrying
                // the fsync could report success for data that is gone (PostgreSQL's
                // "fsyncgate"). Refuse every later write instead.
                tracing::error!(error = %e, "fsync of the database WAL failed; refusing further writes");
                self.failed.store(true, Ordering::Release);
                Some(DbError::Commit(format!(
                    "fsync of the database WAL failed: {e}"
                )))
            } else {
                None
            };
            for g in groups.drain(..) {
                g.finish(err.as_ref());
            }
        }
    }
}

/// Makes what the files hold durable before anything is served (a killed process can leave
/// committed but never fsynced groups in the page cache), and opens the WAL for the syncer.
fn make_durable_at_open(path: &Path, conn: &Connection) -> Result<File, DbError> {
    let io = |what: &str, e: std::io::Error| DbError::Commit(format!("{what}: {e}"));
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::Commit(format!(
            "{} is in journal mode {mode}, not WAL",
            path.display()
        )));
    }
    let mut wal_path = path.as_os_str().to_owned();
    wal_path.push("-wal");
    let wal_path = PathBuf::from(wal_path);
    // In WAL mode the connection keeps the WAL file open (and created) while it is open.
    let wal =
        File::open(&wal_path).map_err(|e| io(&format!("cannot open {}", wal_path.display()), e))?;
    // The WAL is all that needs syncing: a checkpoint advances its "backfilled" mark only
    // after it synced the database file, so whatever a killed process copied into the
    // database file without syncing is still in the WAL, which recovery replays.
    //
    // Never open (and so never close) a file descriptor of the database file itself here:
    // closing any descriptor of a file drops every POSIX lock this process holds on it,
    // SQLite's shared lock included, and another process could then take the database for
    // unused and reset its WAL under this one's commits. SQLite takes no locks on the WAL.
    wal.sync_all()
        .map_err(|e| io(&format!("cannot fsync {}", wal_path.display()), e))?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        sync_dir(dir).map_err(|e| io(&format!("cannot fsync {}", dir.display()), e))?;
    }
    Ok(wal)
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_resolve_after_their_fsync_and_durability_callbacks_run_first() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile_dir();
        let db = Db::open(&dir.join("d.db"), M).expect("open");
        let ran = Arc::new(AtomicUsize::new(0));
        let held = db.hold_syncs();
        let ok = tokio::spawn({
            let (db, ran) = (db.clone(), ran.clone());
            async move {
                db.write(move |c| {
                    c.execute("INSERT INTO t (k, v) VALUES (1, 'a')", [])?;
                    on_durable(move || {
                        ran.fetch_add(1, Ordering::SeqCst);
                    });
                    Ok::<_, DbError>(())
                })
                .await
            }
        });
        let failed = tokio::spawn({
            let (db, ran) = (db.clone(), ran.clone());
            async move {
                db.write(move |c| {
                    c.execute("INSERT INTO t (k, v) VALUES (2, 'b')", [])?;
                    on_durable(move || {
                        ran.fetch_add(100, Ordering::SeqCst);
                    });
                    Err::<(), _>(DbError::Commit("this job fails".into()))
                })
                .await
            }
        });
        // The committed row is readable while its fsync is held; nothing has resolved.
        let mut seen = false;
        for _ in 0..2_000 {
            let n: i64 = db
                .read(|c| {
                    Ok::<_, DbError>(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?)
                })
                .await
                .expect("count");
            if n == 1 {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(seen, "the group never committed");
        assert!(!ok.is_finished(), "a write resolved before its fsync");
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        drop(held);
        ok.await.expect("join").expect("write");
        assert!(failed.await.expect("join").is_err());
        // The failed job's callback was dropped with its savepoint.
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        // Outside a job a callback runs at once.
        on_durable({
            let ran = ran.clone();
            move || {
                ran.fetch_add(10, Ordering::SeqCst);
            }
        });
        assert_eq!(ran.load(Ordering::SeqCst), 11);
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shared_state_is_one_per_database() {
        let dir = tempfile_dir();
        let db = Db::open(&dir.join("s.db"), M).expect("open");
        let a = db.clone().shared::<Mutex<Vec<u8>>>();
        a.lock().expect("lock").push(7);
        assert_eq!(
            *db.shared::<Mutex<Vec<u8>>>().lock().expect("lock"),
            vec![7]
        );
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
