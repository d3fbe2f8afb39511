//! The embedded metadata engine: one SQLite file in WAL mode,
//! written by a single writer thread that **group-commits**, with the fsync of each commit
//! **pipelined** on a second thread.
//!
//! A write is a closure run inside a transaction. The writer takes every write that is
//! waiting, runs them one after the other in one transaction, then commits them together.
//! One failing write must not undo its neighbours: the group first runs without savepoints
//! and commits if every write was kept; if one failed, the transaction is rolled back and
//! the group runs again with each write in its own savepoint (see [`Isolation`]). The commit writes the group's WAL frames but
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
//! caller hides rows until [`Tx::on_durable`](crate::Tx::on_durable) callbacks report them durable (the stream does, so
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
//! checkpoint each time the WAL grew by [`SqliteOptions::checkpoint_pages`], concurrently with the
//! writer. PASSIVE checkpoints never reset the WAL while writes keep coming, so the writer
//! bounds it: once it holds [`SqliteOptions::wal_limit_pages`] pages, the writer runs a RESTART
//! checkpoint between two groups (the next commit then writes from the start of the file).

use std::cell::Cell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::value::RowSource;
use crate::{
    Caller, Careful, Conn, Engine, EngineKind, MetaError, MetaStats, Migration, ReadJob, Tx,
    ValueRef, Verdict, WriteJob, add_elapsed, run_job, sync_dir,
};

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
/// Prepared statements kept per connection (rusqlite's default is 16; the parts use far
/// more distinct statements than that on their hot paths).
const STATEMENT_CACHE: usize = 256;

/// Tuning of the SQLite engine ([`crate::Meta::open_sqlite_with`]); the default is what
/// [`crate::open`] uses.
///
/// Invariant: whatever the values, every commit is fsynced before its writes resolve (by
/// the syncer thread); these only move checkpoint and cache work around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
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

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            // 8 MiB and 64 MiB with the default 4 KiB pages.
            checkpoint_pages: 2048,
            wal_limit_pages: 16384,
            // 8 MiB (2,048 pages of 4 KiB): enough for the B-trees' upper levels and the
            // pages a group writes, and small on purpose. Each group's COMMIT truncates
            // the writer's page cache to the database's size, and whenever a B-tree page
            // split ran in the group (`balance_nonroot` keys a page by the lock-byte page
            // number, 262,145 with 4 KiB pages, while it reorders the split's pages) that
            // means scanning every slot of the cache's hash table, which is as large as the
            // cache: with 32 MiB this was 2-3 % of the server's CPU at 64 and 256
            // connections, with 8 MiB 1 % (docs/BENCHMARKS.md, session 25).
            writer_cache_kib: 8 * 1024,
            reader_cache_kib: 16 * 1024,
            reader_mmap_bytes: 1 << 30,
            // 4 KiB rather than 8: a commit writes each page it changed whole into the WAL
            // (copied, checksummed, written), and most of an upload's rows land on pages
            // of their own (objects by key, users' uploads): half the bytes per changed
            // page. Measured in docs/BENCHMARKS.md (session 23): about 6 % less server CPU
            // per upload at 64 connections.
            page_size: 4096,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    groups: AtomicU64,
    jobs: AtomicU64,
    commit_nanos: AtomicU64,
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
    /// Optimistic groups run again with savepoints (a write of theirs failed).
    redone: AtomicU64,
}

/// Lets tests hold the syncer between a commit and its fsync ([`Sqlite::hold_syncs`]).
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
/// ([`Sqlite::hold_syncs`]).
#[cfg(test)]
pub(crate) struct SyncsHeld(Arc<SyncHold>);

#[cfg(test)]
impl Drop for SyncsHeld {
    fn drop(&mut self) {
        if let Ok(mut held) = self.0.held.lock() {
            *held = held.saturating_sub(1);
            self.0.released.notify_all();
        }
    }
}

type Callback = Box<dyn FnOnce() + Send>;

/// The SQLite engine.
pub(crate) struct Sqlite {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    readers: Readers,
    /// Reads from async callers running at once: at most [`MAX_READERS`], the pool's size.
    /// Beyond it a read waits here (a task, not a thread) instead of taking a blocking
    /// thread of the runtime and opening a connection of its own: a flood of requests
    /// that each read once (1,000 concurrent sign-ups) otherwise held a hundred threads,
    /// each with a fresh connection (schema parsed, page cache filled).
    read_slots: Arc<tokio::sync::Semaphore>,
    /// Lets tests hold the syncer ([`Sqlite::hold_syncs`]).
    #[cfg_attr(not(test), allow(dead_code))]
    hold: Arc<SyncHold>,
    stats: Arc<Counters>,
}

fn sqlite_err(e: rusqlite::Error) -> MetaError {
    use rusqlite::ErrorCode as C;
    match e {
        rusqlite::Error::QueryReturnedNoRows => MetaError::NoRows,
        rusqlite::Error::SqliteFailure(f, msg) => {
            let text = msg.unwrap_or_else(|| f.to_string());
            match f.code {
                C::ConstraintViolation => MetaError::Constraint(text),
                C::DiskFull => MetaError::Full(text),
                C::CannotOpen | C::NotADatabase => MetaError::Unavailable(text),
                _ => MetaError::Engine(text),
            }
        }
        e @ (rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..)) => MetaError::Type(e.to_string()),
        other => MetaError::Engine(other.to_string()),
    }
}

fn open_err(path: &Path) -> impl Fn(rusqlite::Error) -> MetaError + '_ {
    move |e| MetaError::Open {
        url: format!("sqlite://{}", path.display()),
        message: e.to_string(),
    }
}

impl Sqlite {
    pub(crate) fn open(
        path: &Path,
        migrations: &[Migration],
        options: SqliteOptions,
    ) -> Result<Sqlite, MetaError> {
        let open_err = open_err(path);
        let conn = Connection::open(path).map_err(&open_err)?;
        configure(&conn, &options).map_err(&open_err)?;
        migrate(&conn, migrations)?;
        // When the WAL is reset, a file grown past twice its bound is cut back to that.
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(sqlite_err)?;
        conn.pragma_update(
            None,
            "journal_size_limit",
            page_size * 2 * i64::from(options.wal_limit_pages),
        )
        .map_err(sqlite_err)?;
        let wal = make_durable_at_open(path, &conn)?;

        let ckpt_conn = Connection::open(path).map_err(&open_err)?;
        ckpt_conn.busy_timeout(BUSY_TIMEOUT).map_err(&open_err)?;
        ckpt_conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(&open_err)?;
        let checkpointer = Arc::new(Checkpointer::default());
        let ckpt = checkpointer.clone();
        thread::Builder::new()
            .name("sluice-db-ckpt".into())
            .spawn(move || ckpt.run(ckpt_conn))
            .map_err(|e| MetaError::Commit(format!("cannot start checkpoint thread: {e}")))?;

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
                return Err(MetaError::Commit(format!("cannot start sync thread: {e}")));
            }
        };

        let (tx, rx) = mpsc::channel::<Box<dyn WriteJob>>();
        let writer = Writer {
            conn,
            options,
            checkpointer: checkpointer.clone(),
            last_signal: 0,
            next_restart: 0,
            careful: Careful::default(),
            syncer: Some((synced_tx, syncer)),
            failed,
            stats: stats.clone(),
        };
        if let Err(e) = thread::Builder::new()
            .name("sluice-db-writer".into())
            .spawn(move || writer.run(rx))
        {
            checkpointer.stop();
            return Err(MetaError::Commit(format!(
                "cannot start writer thread: {e}"
            )));
        }

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_reader(path, &options).map_err(&open_err)?);
        }
        Ok(Sqlite {
            path: path.to_owned(),
            jobs: Mutex::new(Some(tx)),
            readers: Readers::new(path, options, readers),
            read_slots: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
            hold,
            stats,
        })
    }

    /// Opens an existing database for inspection only: no migrations, no writer, and its
    /// connections cannot write (tools such as `sluice doctor`). Writes fail with
    /// [`MetaError::WriterGone`]. Fails if the file does not exist.
    pub(crate) fn open_read_only(path: &Path) -> Result<Sqlite, MetaError> {
        let options = SqliteOptions::default();
        let reader = open_reader(path, &options).map_err(open_err(path))?;
        Ok(Sqlite {
            path: path.to_owned(),
            jobs: Mutex::new(None),
            readers: Readers::new(path, options, vec![reader]),
            read_slots: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
            hold: Arc::default(),
            stats: Arc::default(),
        })
    }

    /// Holds every fsync until the returned guard is dropped: groups still commit (other
    /// connections can read them) but their writes do not resolve. For tests of what
    /// readers may see between a commit and its fsync.
    #[cfg(test)]
    pub(crate) fn hold_syncs(&self) -> SyncsHeld {
        if let Ok(mut held) = self.hold.held.lock() {
            *held += 1;
        }
        SyncsHeld(self.hold.clone())
    }
}

impl Engine for Sqlite {
    fn kind(&self) -> EngineKind {
        EngineKind::Sqlite
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    fn write(&self, job: Box<dyn WriteJob>) {
        let job = match self.jobs.lock() {
            Ok(guard) => match guard.as_ref() {
                Some(sender) => match sender.send(job) {
                    Ok(()) => return,
                    Err(mpsc::SendError(job)) => job,
                },
                None => job,
            },
            // A poisoned lock: the writer cannot be reached through it.
            Err(_) => return,
        };
        job.finish(Some(MetaError::WriterGone));
    }

    fn read(&self, job: ReadJob, caller: Caller) {
        match (caller, tokio::runtime::Handle::try_current()) {
            (Caller::Async, Ok(rt)) => {
                let readers = self.readers.clone();
                match self.read_slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        rt.spawn_blocking(move || {
                            readers.run(job);
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        // Every slot taken: wait for one without holding a thread.
                        let slots = self.read_slots.clone();
                        let blocking = rt.clone();
                        rt.spawn(async move {
                            match slots.acquire_owned().await {
                                Ok(slot) => {
                                    blocking.spawn_blocking(move || {
                                        readers.run(job);
                                        drop(slot);
                                    });
                                }
                                // Never closed; answered rather than dropped all the same.
                                Err(_) => job(Err(MetaError::Unavailable(
                                    "the database's readers are closed".into(),
                                ))),
                            }
                        });
                    }
                }
            }
            _ => self.readers.run(job),
        }
    }

    fn stats(&self) -> MetaStats {
        let c = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetaStats {
            groups: get(&c.groups),
            jobs: get(&c.jobs),
            commit_nanos: get(&c.commit_nanos),
            syncs: get(&c.syncs),
            sync_nanos: get(&c.sync_nanos),
            retries: get(&c.redone),
        }
    }

    fn close(&self) {
        if let Ok(mut g) = self.jobs.lock() {
            g.take();
        }
    }

    fn check(&self) -> Result<Vec<String>, MetaError> {
        let (tx, rx) = mpsc::channel();
        self.readers.run(Box::new(move |t| {
            let r =
                t.and_then(|t| t.query_vec("PRAGMA integrity_check", &[], |r| r.get::<String>(0)));
            let _ = tx.send(r);
        }));
        let lines = rx
            .recv()
            .map_err(|_| MetaError::Join("the check was dropped".into()))??;
        Ok(lines.into_iter().filter(|l| l != "ok").collect())
    }
}

/// The pool of read-only connections; reads run on whichever thread calls [`Readers::run`].
#[derive(Clone)]
struct Readers(Arc<ReadersInner>);

struct ReadersInner {
    path: PathBuf,
    options: SqliteOptions,
    pool: Mutex<Vec<Connection>>,
}

impl Readers {
    fn new(path: &Path, options: SqliteOptions, conns: Vec<Connection>) -> Readers {
        Readers(Arc::new(ReadersInner {
            path: path.to_owned(),
            options,
            pool: Mutex::new(conns),
        }))
    }

    fn run(&self, job: ReadJob) {
        let pooled = self.0.pool.lock().ok().and_then(|mut p| p.pop());
        let conn = match pooled {
            Some(c) => c,
            None => match open_reader(&self.0.path, &self.0.options) {
                Ok(c) => c,
                Err(e) => return job(Err(sqlite_err(e))),
            },
        };
        let sconn = SqliteConn(&conn);
        let tx = Tx::new(&sconn);
        job(Ok(&tx));
        for cb in tx.take_callbacks() {
            cb();
        }
        drop(tx);
        if let Ok(mut pool) = self.0.pool.lock()
            && pool.len() < MAX_READERS
        {
            pool.push(conn);
        }
    }
}

/// A connection as a [`Tx`] sees it.
struct SqliteConn<'a>(&'a Connection);

struct Param<'a>(ValueRef<'a>);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as V};
        Ok(ToSqlOutput::Borrowed(match self.0 {
            ValueRef::Null => V::Null,
            ValueRef::Int(i) => V::Integer(i),
            ValueRef::Real(f) => V::Real(f),
            ValueRef::Text(s) => V::Text(s.as_bytes()),
            ValueRef::Blob(b) => V::Blob(b),
        }))
    }
}

struct SqliteRow<'a, 'b>(&'a rusqlite::Row<'b>);

impl RowSource for SqliteRow<'_, '_> {
    fn value(&self, idx: usize) -> Result<ValueRef<'_>, MetaError> {
        use rusqlite::types::ValueRef as V;
        Ok(match self.0.get_ref(idx).map_err(sqlite_err)? {
            V::Null => ValueRef::Null,
            V::Integer(i) => ValueRef::Int(i),
            V::Real(f) => ValueRef::Real(f),
            V::Text(t) => ValueRef::Text(
                std::str::from_utf8(t)
                    .map_err(|e| MetaError::Type(format!("column {idx}: {e}")))?,
            ),
            V::Blob(b) => ValueRef::Blob(b),
        })
    }
}

/// Runs a prepared statement with `params`; returns the number of rows it changed.
fn run(st: &mut rusqlite::Statement<'_>, params: &[ValueRef<'_>]) -> Result<u64, MetaError> {
    let n = st
        .execute(rusqlite::params_from_iter(params.iter().map(|v| Param(*v))))
        .map_err(sqlite_err)?;
    Ok(n as u64)
}

impl Conn for SqliteConn<'_> {
    fn execute(&self, sql: &str, params: &[ValueRef<'_>]) -> Result<u64, MetaError> {
        let mut st = self.0.prepare_cached(sql).map_err(sqlite_err)?;
        run(&mut st, params)
    }

    fn insert_id(
        &self,
        sql: &str,
        params: &[ValueRef<'_>],
        _id_column: &str,
    ) -> Result<i64, MetaError> {
        // The `INTEGER PRIMARY KEY` is the rowid.
        self.execute(sql, params)?;
        Ok(self.0.last_insert_rowid())
    }

    fn query(
        &self,
        sql: &str,
        params: &[ValueRef<'_>],
        each: &mut dyn FnMut(&dyn RowSource) -> Result<bool, MetaError>,
    ) -> Result<(), MetaError> {
        let mut st = self.0.prepare_cached(sql).map_err(sqlite_err)?;
        let mut rows = st
            .query(rusqlite::params_from_iter(params.iter().map(|v| Param(*v))))
            .map_err(sqlite_err)?;
        while let Some(row) = rows.next().map_err(sqlite_err)? {
            if !each(&SqliteRow(row))? {
                break;
            }
        }
        Ok(())
    }

    fn execute_once(&self, sql: &str, params: &[ValueRef<'_>]) -> Result<u64, MetaError> {
        run(&mut self.0.prepare(sql).map_err(sqlite_err)?, params)
    }

    fn is_remote(&self) -> bool {
        false
    }
}

/// What became of one job of a group.
enum Ran {
    /// Its changes stay; these callbacks run once the group is durable.
    Kept(Vec<Callback>),
    /// Its changes were undone: it failed on its own (`None`, its error is in the job) or
    /// its statements met an engine error (`Some`).
    Undone(Option<MetaError>),
}

/// Runs a job in its own savepoint of the open transaction; a job that is not kept has its
/// changes undone, and the group goes on.
fn run_in_savepoint(conn: &Connection, job: &mut dyn WriteJob) -> Ran {
    // Cached statements: a job's bookkeeping must cost far less than the job.
    let exec = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut st| st.execute([]))
            .map(|_| ())
    };
    if let Err(e) = exec("SAVEPOINT job") {
        return Ran::Undone(Some(sqlite_err(e)));
    }
    let sconn = SqliteConn(conn);
    let tx = Tx::new(&sconn);
    let undone = match run_job(job, &tx) {
        Verdict::Commit(callbacks) => match exec("RELEASE job") {
            Ok(()) => return Ran::Kept(callbacks),
            Err(e) => Some(sqlite_err(e)),
        },
        Verdict::RollBack => None,
        Verdict::Fail(e) => Some(e),
        // One writer: a SQLite transaction never loses a race.
        Verdict::Retry => Some(MetaError::Engine("unexpected retry".into())),
    };
    let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
    Ran::Undone(undone)
}

/// A group that committed and waits for the fsync that makes it durable.
struct Committed {
    /// Each job, with the error it failed with on its own account (if any).
    jobs: Vec<(Box<dyn WriteJob>, Option<MetaError>)>,
    callbacks: Vec<Callback>,
}

impl Committed {
    /// Resolves the group's writes: callbacks first (only on success), then the jobs.
    fn finish(self, err: Option<&MetaError>) {
        if err.is_none() {
            for cb in self.callbacks {
                cb();
            }
        }
        for (job, own) in self.jobs {
            job.finish(own.or_else(|| err.cloned()));
        }
    }
}

fn fsync_failed() -> MetaError {
    MetaError::Commit(
        "an earlier fsync of the database failed; writes are refused until sluice restarts".into(),
    )
}

/// Fails every job of a group that cannot be committed (none of them ran).
fn fail_group(group: &mut Vec<Box<dyn WriteJob>>, err: &MetaError) {
    for job in group.drain(..) {
        job.finish(Some(err.clone()));
    }
}

/// How a group's writes are kept apart from each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// Every write runs in its own savepoint: one that fails is undone alone.
    Savepoints,
    /// The writes run one after the other in the bare transaction, and the group commits
    /// only if every one of them was kept; otherwise the whole transaction is rolled back
    /// and the group runs again with [`Isolation::Savepoints`]. Saves a savepoint's
    /// statements and its sub-journal (every page a write touches first, copied) per
    /// write, which is most of what bookkeeping costs when writes are small.
    Optimistic,
}

/// Runs a group in one transaction and commits it (without fsync). Returns the committed
/// group for the syncer, or `None` when the group failed (its writes are resolved here),
/// and whether an optimistic run had to be redone with savepoints.
///
/// Invariant: whatever the isolation, the outcome is the one of running each write in its
/// own savepoint: a write that fails (or panics) leaves nothing behind, its neighbours
/// commit. Writes are runnable more than once ([`WriteJob`]); an optimistic run that is
/// rolled back resolves nothing.
fn commit_group(
    conn: &Connection,
    group: &mut Vec<Box<dyn WriteJob>>,
    isolation: Isolation,
) -> (Option<Committed>, bool) {
    if isolation == Isolation::Optimistic {
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            fail_group(group, &classify_commit(e, "cannot begin"));
            return (None, false);
        }
        let mut callbacks = Vec::new();
        let mut all_kept = true;
        for job in group.iter_mut() {
            let sconn = SqliteConn(conn);
            let tx = Tx::new(&sconn);
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_job(&mut **job, &tx)
            })) {
                Ok(Verdict::Commit(cbs)) => callbacks.extend(cbs),
                _ => {
                    all_kept = false;
                    break;
                }
            }
        }
        if all_kept {
            let jobs = group.drain(..).map(|j| (j, None)).collect();
            return (commit(conn, jobs, callbacks), false);
        }
        drop(callbacks);
        // Nothing of the optimistic run stays; the savepoint run below decides each write.
        let _ = conn.execute_batch("ROLLBACK");
        return (commit_group_in_savepoints(conn, group), true);
    }
    (commit_group_in_savepoints(conn, group), false)
}

/// [`commit_group`] with every write in its own savepoint.
fn commit_group_in_savepoints(
    conn: &Connection,
    group: &mut Vec<Box<dyn WriteJob>>,
) -> Option<Committed> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        fail_group(group, &classify_commit(e, "cannot begin"));
        return None;
    }
    let mut jobs = Vec::with_capacity(group.len());
    let mut callbacks = Vec::new();
    for mut job in group.drain(..) {
        // A panicking job must not take the writer down with it: its caller sees
        // `WriterGone` (the job is dropped unfinished) and its savepoint is undone.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_in_savepoint(conn, &mut *job)
        })) {
            Ok(Ran::Kept(cbs)) => {
                callbacks.extend(cbs);
                jobs.push((job, None));
            }
            Ok(Ran::Undone(err)) => jobs.push((job, err)),
            Err(_) => {
                tracing::error!("a database write panicked; it was rolled back");
                let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            }
        }
    }
    commit(conn, jobs, callbacks)
}

/// Commits the open transaction holding `jobs` (without fsync).
fn commit(
    conn: &Connection,
    jobs: Vec<(Box<dyn WriteJob>, Option<MetaError>)>,
    callbacks: Vec<Callback>,
) -> Option<Committed> {
    match conn.execute_batch("COMMIT") {
        Ok(()) => Some(Committed { jobs, callbacks }),
        Err(e) => {
            tracing::error!(error = %e, "group commit failed; every write of the group is reported failed");
            let _ = conn.execute_batch("ROLLBACK");
            let err = classify_commit(e, "commit failed");
            drop(callbacks);
            for (job, own) in jobs {
                job.finish(Some(own.unwrap_or_else(|| err.clone())));
            }
            None
        }
    }
}

/// A failed BEGIN or COMMIT: a full disk keeps its kind, anything else is a commit error.
fn classify_commit(e: rusqlite::Error, what: &str) -> MetaError {
    match sqlite_err(e) {
        MetaError::Full(m) => MetaError::Full(m),
        other => MetaError::Commit(format!("{what}: {other}")),
    }
}

fn configure(conn: &Connection, options: &SqliteOptions) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
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

fn open_reader(path: &Path, options: &SqliteOptions) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
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

fn migrate(conn: &Connection, migrations: &[Migration]) -> Result<(), MetaError> {
    migrate_inner(conn, migrations).map_err(sqlite_err)
}

/// Applies the pending migrations, all in one transaction: on a new database every step is
/// pending, and one commit writes the schema's pages to the WAL once instead of once per
/// step (this was most of a first start's time). All or nothing: a failing step leaves the
/// database as it was, and the next start tries every pending step again.
fn migrate_inner(conn: &Connection, migrations: &[Migration]) -> rusqlite::Result<()> {
    // IMMEDIATE: a second process opening the same file at the same time waits here
    // instead of applying the same step twice.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let applied = (|| {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_ms INTEGER NOT NULL)",
        )?;
        for m in migrations {
            let done: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM _migrations WHERE name = ?1)",
                [m.name],
                |r| r.get(0),
            )?;
            if !done {
                conn.execute_batch(m.sql)?;
                conn.execute(
                    "INSERT INTO _migrations (name, applied_ms) VALUES (?1, ?2)",
                    rusqlite::params![m.name, crate::now_ms()],
                )?;
            }
        }
        Ok(())
    })();
    match applied {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The writer thread: group commits, and the WAL's bound.
struct Writer {
    conn: Connection,
    options: SqliteOptions,
    checkpointer: Arc<Checkpointer>,
    /// WAL size (pages) when the checkpointer was last woken.
    last_signal: u32,
    /// WAL size (pages) from which the writer tries a RESTART again after one gave up.
    next_restart: u32,
    /// Whether the next group may run without savepoints.
    careful: Careful,
    /// Where committed groups go to be fsynced, and the syncer thread (joined at the end, so
    /// the connection outlives every pending fsync).
    syncer: Option<(mpsc::Sender<Committed>, thread::JoinHandle<()>)>,
    /// Set by the syncer when an fsync failed: nothing written since can be trusted to be
    /// durable, so every later write fails until the process restarts.
    failed: Arc<AtomicBool>,
    stats: Arc<Counters>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Box<dyn WriteJob>>) {
        let mut group: Vec<Box<dyn WriteJob>> = Vec::new();
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
            metrics::histogram!("sluice_meta_commit_batch_size", "engine" => "sqlite")
                .record(group.len() as f64);
            let committed = if self.failed.load(Ordering::Acquire) {
                fail_group(&mut group, &fsync_failed());
                None
            } else {
                let isolation = if self.careful.optimistic() {
                    Isolation::Optimistic
                } else {
                    Isolation::Savepoints
                };
                let (committed, redone) = commit_group(&self.conn, &mut group, isolation);
                if redone {
                    self.careful.redone();
                    self.stats.redone.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("sluice_meta_retries_total", "engine" => "sqlite")
                        .increment(1);
                }
                committed
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
            c.finish(Some(&MetaError::Commit(
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
        metrics::histogram!("sluice_meta_fsync_duration_seconds", "engine" => "sqlite")
            .record(started.elapsed().as_secs_f64());
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
                Some(MetaError::Commit(format!(
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
fn make_durable_at_open(path: &Path, conn: &Connection) -> Result<File, MetaError> {
    let io = |what: &str, e: std::io::Error| MetaError::Commit(format!("{what}: {e}"));
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(sqlite_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(MetaError::Commit(format!(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Meta, params};

    const M: &[Migration] = &[Migration {
        name: "t1",
        sql: "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    }];

    #[test]
    fn pending_migrations_apply_all_or_nothing() {
        let dir = tempfile_dir();
        let path = dir.join("m.db");
        let broken = [
            Migration {
                name: "a",
                sql: "CREATE TABLE a (k INTEGER PRIMARY KEY)",
            },
            Migration {
                name: "b",
                sql: "CREATE TABLE b (k INTEGER PRIMARY KEY); NOT SQL AT ALL",
            },
        ];
        assert!(Sqlite::open(&path, &broken, SqliteOptions::default()).is_err());
        let conn = Connection::open(&path).expect("inspect");
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('a', 'b', '_migrations')",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(tables, 0, "a failed step leaves nothing of any step");
        drop(conn);
        let fixed = [
            broken[0],
            Migration {
                name: "b",
                sql: "CREATE TABLE b (k INTEGER PRIMARY KEY)",
            },
        ];
        let engine = Sqlite::open(&path, &fixed, SqliteOptions::default()).expect("open");
        let db = Meta::from_engine(Box::new(engine));
        let names: Vec<String> = db
            .read_blocking(|c| {
                c.query_vec(
                    "SELECT name FROM _migrations ORDER BY name",
                    params![],
                    |r| r.get::<String>(0),
                )
            })
            .expect("names");
        assert_eq!(names, vec!["a".to_owned(), "b".to_owned()]);
        db.close();
    }

    /// Many reads at once from async callers: at most `MAX_READERS` run at a time (the
    /// rest wait without a thread), no connection is opened beyond the pool's, and every
    /// read is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_async_reads_are_bounded_by_the_pool() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile_dir();
        let engine = Sqlite::open(&dir.join("r.db"), M, SqliteOptions::default()).expect("open");
        let readers = engine.readers.clone();
        let db = Meta::from_engine(Box::new(engine));
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..(MAX_READERS * 6) {
            let (db, running, most) = (db.clone(), running.clone(), most.clone());
            reads.spawn(async move {
                db.read(move |c| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    let n: i64 = c.query_row("SELECT COUNT(*) FROM t", params![], |r| r.get(0))?;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, MetaError>(n)
                })
                .await
            });
        }
        let mut answered = 0;
        while let Some(r) = reads.join_next().await {
            assert_eq!(r.expect("task").expect("read"), 0);
            answered += 1;
        }
        assert_eq!(answered, MAX_READERS * 6);
        let most = most.load(Ordering::SeqCst);
        assert!(most <= MAX_READERS, "{most} reads ran at once");
        let pooled = readers.0.pool.lock().expect("pool").len();
        assert!(pooled <= MAX_READERS, "{pooled} connections kept");
        db.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_resolve_after_their_fsync_and_durability_callbacks_run_first() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile_dir();
        let engine = Sqlite::open(&dir.join("d.db"), M, SqliteOptions::default()).expect("open");
        let held = engine.hold_syncs();
        let db = Meta::from_engine(Box::new(engine));
        let ran = Arc::new(AtomicUsize::new(0));
        let ok = tokio::spawn({
            let (db, ran) = (db.clone(), ran.clone());
            async move {
                db.write(move |c| {
                    c.execute("INSERT INTO t (k, v) VALUES (1, 'a')", params![])?;
                    let ran = ran.clone();
                    c.on_durable(move || {
                        ran.fetch_add(1, Ordering::SeqCst);
                    });
                    Ok::<_, MetaError>(())
                })
                .await
            }
        });
        // The committed row is readable while its fsync is held; nothing has resolved.
        let mut seen = false;
        for _ in 0..2_000 {
            let n: i64 = db
                .read(|c| c.query_row("SELECT COUNT(*) FROM t", params![], |r| r.get(0)))
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
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shared_state_is_one_per_handle() {
        let dir = tempfile_dir();
        let db = Meta::open_sqlite(&dir.join("s.db"), M).expect("open");
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
    fn the_wal_stays_bounded_and_checkpoints_leave_every_row_intact() {
        let dir = tempfile_dir();
        let path = dir.join("w.db");
        let options = SqliteOptions {
            checkpoint_pages: 8,
            wal_limit_pages: 64,
            page_size: 4096,
            ..SqliteOptions::default()
        };
        let db = Meta::open_sqlite_with(&path, M, options).expect("open");
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let mut largest = 0u64;
        for k in 0..1500i64 {
            // About one page per commit, so the WAL would reach some 1,500 pages unbounded.
            let v = "x".repeat(3000);
            db.write_blocking(move |c| {
                c.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", params![k, v])?;
                Ok::<_, MetaError>(())
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
                c.query_row("SELECT COUNT(*), SUM(k) FROM t", params![], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
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
        let db = Meta::open_sqlite(&path, M).expect("open");
        db.write_blocking(|c| {
            c.execute("INSERT INTO t (k, v) VALUES (1, 'a')", params![])?;
            Ok::<_, MetaError>(())
        })
        .expect("write");
        let ro = Meta::open_sqlite_read_only(&path).expect("read-only open");
        let n: i64 = ro
            .read_blocking(|c| c.query_row("SELECT COUNT(*) FROM t", params![], |r| r.get(0)))
            .expect("read");
        assert_eq!(n, 1);
        assert!(matches!(
            ro.write_blocking(|_| Ok::<_, MetaError>(())),
            Err(MetaError::WriterGone)
        ));
        assert!(ro.check().expect("check").is_empty());
        assert!(
            Meta::open_sqlite_read_only(&dir.join("absent.db")).is_err(),
            "a missing file is not created"
        );
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A group run without savepoints commits as one when every write is kept, and is run
    /// again with savepoints when one fails or panics: the outcome is each write's own
    /// either way, and no callback of a write that did not stay runs.
    #[test]
    fn optimistic_groups_fall_back_to_savepoints() {
        use std::sync::mpsc::channel;
        let dir = tempfile_dir();
        let conn = Connection::open(dir.join("o.db")).expect("open");
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .expect("schema");
        let (said, heard) = channel::<(i64, Result<(), MetaError>)>();
        let durable = Arc::new(AtomicU64::new(0));
        let insert = |k: i64, fail: bool, panic: bool| {
            let said = said.clone();
            let durable = durable.clone();
            crate::write_job(
                move |tx: &Tx<'_>| {
                    tx.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", params![k])?;
                    let durable = durable.clone();
                    tx.on_durable(move || {
                        durable.fetch_add(1, Ordering::SeqCst);
                    });
                    assert!(!panic, "this write panics");
                    if fail {
                        return Err(MetaError::Engine("this write fails".into()));
                    }
                    Ok(())
                },
                move |r| {
                    let _ = said.send((k, r));
                },
            )
        };
        let rows = |conn: &Connection| -> Vec<i64> {
            let mut st = conn.prepare("SELECT k FROM t ORDER BY k").expect("prepare");
            st.query_map([], |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        };

        // Every write kept: one transaction, no second run.
        let mut group = vec![insert(1, false, false), insert(2, false, false)];
        let (committed, redone) = commit_group(&conn, &mut group, Isolation::Optimistic);
        assert!(!redone);
        committed.expect("committed").finish(None);
        assert_eq!(rows(&conn), vec![1, 2]);

        // A failing write, a duplicate key and a panicking one among kept ones.
        let mut group = vec![
            insert(3, false, false),
            insert(4, true, false),
            insert(1, false, false),
            insert(5, false, true),
            insert(6, false, false),
        ];
        let (committed, redone) = commit_group(&conn, &mut group, Isolation::Optimistic);
        assert!(redone, "a failed write sends the group to savepoints");
        committed.expect("committed").finish(None);
        assert_eq!(rows(&conn), vec![1, 2, 3, 6]);
        drop(said);
        let mut outcomes: Vec<(i64, bool)> = heard.iter().map(|(k, r)| (k, r.is_ok())).collect();
        outcomes.sort();
        // The panicking write is dropped unresolved (its caller sees the writer gone).
        assert_eq!(
            outcomes,
            vec![
                (1, false),
                (1, true),
                (2, true),
                (3, true),
                (4, false),
                (6, true)
            ]
        );
        assert_eq!(
            durable.load(Ordering::SeqCst),
            4,
            "callbacks of kept writes only"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_disk_is_its_own_error() {
        let e = sqlite_err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        ));
        assert!(e.is_full(), "{e:?}");
    }

    fn tempfile_dir() -> PathBuf {
        use std::hash::{BuildHasher, RandomState};
        let p = std::env::temp_dir().join(format!(
            "sluice-db-test-{}-{}",
            std::process::id(),
            RandomState::new().hash_one(std::time::Instant::now())
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }
}
