//! The PostgreSQL engine: one writer thread that group-commits, and reader threads, each
//! with its own connection.
//!
//! - **Writes** go to the writer, which takes every write that is waiting (up to
//!   [`MAX_GROUP`]), runs them in one transaction and commits them together, as the SQLite
//!   writer does. So the writes of one process never race each other, and one WAL flush
//!   makes a whole group durable. One failing write must not undo its neighbours: as on
//!   SQLite, a group first runs without savepoints and commits if every write was kept; if
//!   one was not, the transaction is rolled back and the group runs again with each write
//!   in its own savepoint (and so do the next few groups: [`crate::Careful`]). A savepoint costs
//!   a round trip to the server per write (measured in docs/BENCHMARKS.md, session 27).
//! - The transaction runs at `SERIALIZABLE` isolation, so a closure written for the
//!   embedded engine (where one writer runs everything in turn) keeps its meaning when
//!   other processes write to the same database. A group that loses a race with another
//!   process (serialization failure, deadlock) is rolled back and run again, up to
//!   [`MAX_ATTEMPTS`] times with a growing, jittered pause; then each of its writes fails
//!   with [`MetaError::Conflict`].
//!
//!   Why one writer and not a pool of them: at `SERIALIZABLE`, transactions that insert
//!   next to each other in an index (time-ordered ids) or scan a small table conflict even
//!   when their rows differ (PostgreSQL's predicate locks cover index pages and whole small
//!   tables). Sixteen concurrent writers on one upload stream lost hundreds of races per
//!   second, and some writes gave up after their last attempt; writes that take turns in
//!   groups lose none within a process.
//! - **Durability** is PostgreSQL's: every connection sets `synchronous_commit = on`, so a
//!   commit returns once its WAL is flushed (and, with synchronous standbys configured,
//!   replicated). A server running with `fsync = off` is reported at open and by
//!   `sluice doctor`.
//! - **Reads** run statement by statement outside a transaction, as on SQLite.
//! - **Faults**: a connection that breaks is dropped and opened again for the next job; a
//!   job that finds the server unreachable fails at once with [`MetaError::Unavailable`]. A
//!   connection lost while `COMMIT` was in flight is [`MetaError::Unknown`]: the
//!   transaction may have committed.
//! - **Statements** are prepared once per connection (keyed by their text) after `?N`
//!   parameters are rewritten as `$N`. Parameters adapt to the type PostgreSQL inferred
//!   for them, within range; results convert `BIGINT`/`INTEGER`/`SMALLINT`/`BOOLEAN` to
//!   integers, `TEXT` to text, `BYTEA` to blobs, `DOUBLE PRECISION`/`REAL` to reals.
//! - **Migrations** run under an advisory lock, each in its own transaction, with the
//!   neutral DDL translated ([`translate_ddl`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, Config, NoTls, Statement};

use crate::value::RowSource;
use crate::{
    Caller, Careful, Conn, Engine, EngineKind, MetaError, MetaStats, Migration, ReadJob, Tx,
    ValueRef, Verdict, WriteJob, run_job,
};

/// Connections (and worker threads) when the URL does not say (`pool_size`): one writes,
/// the others (at least one) read.
const DEFAULT_POOL: usize = 16;
/// Attempts of a transaction that keeps losing serialization races.
const MAX_ATTEMPTS: u32 = 12;
/// Prepared statements kept per connection before the cache is emptied.
const STATEMENT_CACHE: usize = 512;
/// Key of the advisory lock migrations hold (any constant; "sluice" in ASCII).
const MIGRATION_LOCK: i64 = 0x0000_736c_7569_6365;

/// Writes a group takes at most. Each runs in a savepoint, a subtransaction; PostgreSQL
/// keeps up to 64 of a transaction's subtransaction ids in shared memory, and past that
/// every other session's snapshots must look them up on disk (the "subtransaction
/// overflow" slowdown).
const MAX_GROUP: usize = 64;

pub(crate) struct Pg {
    shown: String,
    writes: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    reads: Mutex<Option<mpsc::Sender<ReadJob>>>,
    stats: Arc<Counters>,
    config: Config,
}

#[derive(Default)]
struct Counters {
    groups: AtomicU64,
    jobs: AtomicU64,
    commit_nanos: AtomicU64,
    retries: AtomicU64,
}

/// The URL without its password, for logs.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_owned(),
    }
}

/// Splits sluice's own parameters (`pool_size`) off a URL; the rest goes to the driver.
fn own_params(url: &str) -> Result<(String, usize), MetaError> {
    let invalid = |message: String| MetaError::InvalidUrl {
        url: shown(url),
        message,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), DEFAULT_POOL));
    };
    let mut pool = DEFAULT_POOL;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("pool_size", v)) => {
                pool = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| invalid(format!("pool_size must be 1 to 1024, got {v:?}")))?;
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, pool))
}

fn connect(config: &Config) -> Result<Client, MetaError> {
    config.connect(NoTls).map_err(|e| pg_err(&e))
}

/// Runs blocking driver work (the sync client drives its own small runtime) off any async
/// runtime the caller may be on.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

impl Pg {
    pub(crate) fn open(url: &str, migrations: &[Migration]) -> Result<Pg, MetaError> {
        off_runtime(|| Pg::open_here(url, migrations))
    }

    fn open_here(url: &str, migrations: &[Migration]) -> Result<Pg, MetaError> {
        let shown = shown(url);
        let (driver_url, pool) = own_params(url)?;
        let mut config: Config = driver_url.parse().map_err(|e| MetaError::InvalidUrl {
            url: shown.clone(),
            message: format!("{e}"),
        })?;
        config
            .application_name("sluice")
            .options("-c synchronous_commit=on -c client_min_messages=warning")
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true);
        let mut first = connect(&config).map_err(|e| MetaError::Open {
            url: shown.clone(),
            message: e.to_string(),
        })?;
        migrate(&mut first, migrations)?;
        for problem in settings_problems(&mut first)? {
            tracing::warn!(engine = %shown, "{problem}");
        }

        let stats = Arc::new(Counters::default());
        let generation = Arc::new(AtomicU64::new(0));
        let link = |client: Option<Client>| Link {
            generation: generation.clone(),
            seen: 0,
            config: config.clone(),
            client,
            statements: HashMap::new(),
        };
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map(|_| ())
                .map_err(|e| MetaError::Open {
                    url: shown.clone(),
                    message: format!("cannot start a worker thread: {e}"),
                })
        };
        // One writer, which group-commits; the other connections read.
        let (writes, write_rx) = mpsc::channel::<Box<dyn WriteJob>>();
        let writer = Writer {
            rx: write_rx,
            link: link(Some(first)),
            stats: stats.clone(),
            careful: Careful::default(),
        };
        spawn("sluice-pg-writer".into(), Box::new(move || writer.run()))?;
        let (reads, read_rx) = mpsc::channel::<ReadJob>();
        let read_rx = Arc::new(Mutex::new(read_rx));
        for i in 0..pool.saturating_sub(1).max(1) {
            let reader = Reader {
                rx: read_rx.clone(),
                link: link(None),
            };
            spawn(format!("sluice-pg-{i}"), Box::new(move || reader.run()))?;
        }
        Ok(Pg {
            shown,
            writes: Mutex::new(Some(writes)),
            reads: Mutex::new(Some(reads)),
            stats,
            config,
        })
    }
}

/// Sends `job` down `channel`; gives it back when the channel is closed.
fn send<J>(channel: &Mutex<Option<mpsc::Sender<J>>>, job: J) -> Result<(), J> {
    match channel.lock() {
        Ok(guard) => match guard.as_ref() {
            Some(sender) => sender.send(job).map_err(|mpsc::SendError(job)| job),
            None => Err(job),
        },
        Err(_) => Err(job),
    }
}

/// What the server's settings risk: acknowledged commits lost on power loss.
fn settings_problems(c: &mut Client) -> Result<Vec<String>, MetaError> {
    let mut problems = Vec::new();
    let fsync: String = c
        .query_one("SHOW fsync", &[])
        .and_then(|r| r.try_get(0))
        .map_err(|e| pg_err(&e))?;
    if fsync != "on" {
        problems.push(format!(
            "PostgreSQL runs with fsync = {fsync}: acknowledged writes can be lost on power loss; set fsync = on"
        ));
    }
    let sync: String = c
        .query_one("SHOW synchronous_commit", &[])
        .and_then(|r| r.try_get(0))
        .map_err(|e| pg_err(&e))?;
    if sync != "on" && sync != "remote_apply" && sync != "remote_write" {
        problems.push(format!(
            "synchronous_commit is {sync} on sluice's connections: commits may return before they are durable"
        ));
    }
    Ok(problems)
}

impl Engine for Pg {
    fn kind(&self) -> EngineKind {
        EngineKind::Postgres
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn write(&self, job: Box<dyn WriteJob>) {
        if let Err(job) = send(&self.writes, job) {
            job.finish(Some(MetaError::WriterGone));
        }
    }

    fn read(&self, job: ReadJob, _caller: Caller) {
        if let Err(job) = send(&self.reads, job) {
            job(Err(MetaError::WriterGone));
        }
    }

    fn stats(&self) -> MetaStats {
        let c = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetaStats {
            groups: get(&c.groups),
            jobs: get(&c.jobs),
            commit_nanos: get(&c.commit_nanos),
            syncs: 0,
            sync_nanos: 0,
            retries: get(&c.retries),
        }
    }

    /// Stops taking writes (what was sent is still written); reads go on.
    fn close(&self) {
        if let Ok(mut g) = self.writes.lock() {
            g.take();
        }
    }

    fn check(&self) -> Result<Vec<String>, MetaError> {
        off_runtime(|| {
            let mut c = connect(&self.config)?;
            settings_problems(&mut c)
        })
    }
}

/// A connection of a worker thread, opened again when it breaks.
struct Link {
    /// Bumped by a worker that finds its connection broken; shared by all.
    generation: Arc<AtomicU64>,
    /// The generation this worker last checked its connection at.
    seen: u64,
    config: Config,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
}

impl Link {
    /// A connection that broke is dropped, and every worker checks its own before its next
    /// job (the server may have restarted: all of them are stale).
    fn note_broken(&mut self) {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.forget();
        }
    }

    /// Drops the connection (its state is unknown) and tells the other workers to check
    /// theirs.
    fn forget(&mut self) {
        self.client = None;
        self.statements.clear();
        self.seen = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
    }

    /// Opens the worker's connection again if it broke, or if another worker saw one break
    /// since this one last looked and this one no longer answers.
    fn connect_if_needed(&mut self) -> Result<(), MetaError> {
        let generation = self.generation.load(Ordering::Acquire);
        if generation != self.seen {
            self.seen = generation;
            if let Some(c) = self.client.as_mut()
                && c.is_valid(Duration::from_secs(2)).is_err()
            {
                self.client = None;
            }
        }
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.statements.clear();
            self.client = Some(connect(&self.config)?);
        }
        Ok(())
    }
}

/// A reading thread: reads run statement by statement, outside a transaction.
struct Reader {
    rx: Arc<Mutex<mpsc::Receiver<ReadJob>>>,
    link: Link,
}

impl Reader {
    fn run(mut self) {
        loop {
            let job = {
                let Ok(rx) = self.rx.lock() else {
                    return;
                };
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
            if let Err(e) = self.link.connect_if_needed() {
                job(Err(e));
                continue;
            }
            // A panicking job must not take the reader down with it: its caller sees the job
            // dropped, and the connection (whose state is unknown now) is opened afresh.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read(job)));
            if ran.is_err() {
                tracing::error!("a metadata read panicked");
                self.link.forget();
            }
        }
    }

    fn read(&mut self, job: ReadJob) {
        let link = &mut self.link;
        let Some(client) = link.client.as_mut() else {
            return job(Err(MetaError::Unavailable("no connection".into())));
        };
        {
            let conn = PgConn::new(client, &mut link.statements);
            let tx = Tx::new(&conn);
            job(Ok(&tx));
            for cb in tx.take_callbacks() {
                cb();
            }
        }
        link.note_broken();
    }
}

/// The writing thread: it takes every write that is waiting (up to [`MAX_GROUP`]), runs
/// them in one `SERIALIZABLE` transaction (without savepoints first, see
/// [`Writer::attempt`]), and commits them together.
/// The writes of one process never race each other (they run in turn, as on SQLite), and
/// one WAL flush makes a whole group durable.
struct Writer {
    rx: mpsc::Receiver<Box<dyn WriteJob>>,
    link: Link,
    stats: Arc<Counters>,
    /// Whether the next group may run without savepoints.
    careful: Careful,
}

/// What became of one attempt at a group.
enum Group {
    /// Committed: each job's own error (`Some` when its statements failed and its
    /// savepoint was undone), and the callbacks of the jobs that were kept.
    Committed(Vec<Option<MetaError>>, Vec<crate::Callback>),
    /// Lost a race with another process's transaction: nothing committed; run it again.
    Retry,
    /// The connection broke before `COMMIT` was sent: nothing committed.
    Broken,
    /// An optimistic attempt met a write that was not kept: nothing committed; run the
    /// group again with a savepoint per write.
    Redo,
    /// Every job of the group fails with this error (nothing committed, or, for
    /// [`MetaError::Unknown`], perhaps everything did).
    Failed(MetaError),
}

impl Writer {
    fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match self.rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            self.write(group);
        }
    }

    /// Writes a group, again after a lost race (up to [`MAX_ATTEMPTS`] times, with a
    /// growing pause) and once more on a new connection when the connection broke before
    /// its `COMMIT`; then resolves every job.
    fn write(&mut self, mut group: Vec<Box<dyn WriteJob>>) {
        let stats = self.stats.clone();
        stats.jobs.fetch_add(group.len() as u64, Ordering::Relaxed);
        let started = Instant::now();
        let (mut attempt, mut reconnected) = (0, false);
        let mut optimistic = self.careful.optimistic();
        let outcome = loop {
            attempt += 1;
            if let Err(e) = self.link.connect_if_needed() {
                break Err(e);
            }
            match self.attempt(&mut group, optimistic) {
                Group::Redo => {
                    attempt -= 1;
                    optimistic = false;
                    self.careful.redone();
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("sluice_meta_retries_total", "engine" => "postgres")
                        .increment(1);
                }
                Group::Retry if attempt < MAX_ATTEMPTS => {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("sluice_meta_retries_total", "engine" => "postgres")
                        .increment(1);
                    std::thread::sleep(backoff(attempt));
                }
                Group::Retry => {
                    break Err(MetaError::Conflict(format!(
                        "gave up after {attempt} attempts"
                    )));
                }
                Group::Broken if !reconnected => {
                    self.link.note_broken();
                    reconnected = true;
                }
                Group::Broken => {
                    self.link.note_broken();
                    break Err(MetaError::Unavailable(
                        "the connection to PostgreSQL broke".into(),
                    ));
                }
                Group::Committed(own, callbacks) => break Ok((own, callbacks)),
                Group::Failed(e) => break Err(e),
            }
        };
        crate::add_elapsed(&stats.commit_nanos, started);
        match outcome {
            Ok((own, callbacks)) => {
                stats.groups.fetch_add(1, Ordering::Relaxed);
                for cb in callbacks {
                    cb();
                }
                for (job, own) in group.into_iter().zip(own) {
                    job.finish(own);
                }
            }
            Err(e) => {
                for job in group {
                    job.finish(Some(e.clone()));
                }
            }
        }
    }

    /// One attempt: `BEGIN`, each job in a savepoint, `COMMIT`. A job that panics is
    /// dropped from the group (its caller sees the write dropped) and its savepoint undone.
    ///
    /// The bookkeeping costs one round trip per job: the savepoint is set with `BEGIN`, a
    /// kept job's is released together with setting the next one's, an undone job's
    /// (`ROLLBACK TO`) stays set for the next job, and `COMMIT` releases the last.
    ///
    /// `optimistic`: the jobs run one after the other in the bare transaction, without
    /// that round trip, and the group commits only if every job was kept; a job that is
    /// not (it failed, rolled back, or panicked; a statement error inside it makes it
    /// fail, see [`run_job`]) rolls the whole transaction back and the group is redone with
    /// savepoints ([`Group::Redo`]). The outcome is the same as with savepoints from the
    /// start: what a job that is not kept did never commits, its neighbours do.
    fn attempt(&mut self, group: &mut Vec<Box<dyn WriteJob>>, optimistic: bool) -> Group {
        let link = &mut self.link;
        let Some(client) = link.client.as_mut() else {
            return Group::Broken;
        };
        if optimistic {
            return attempt_optimistic(client, &mut link.statements, group);
        }
        if let Err(e) = client.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SAVEPOINT job") {
            return abandon(client, &e);
        }
        let mut own = Vec::with_capacity(group.len());
        let mut callbacks = Vec::new();
        let mut i = 0;
        while i < group.len() {
            let last = i + 1 == group.len();
            let ran = run_one(client, &mut link.statements, &mut *group[i]);
            if client.is_closed() {
                return Group::Broken;
            }
            let undone = match ran {
                Ok(Verdict::Commit(cbs)) => {
                    if !last && let Err(e) = client.batch_execute("RELEASE job; SAVEPOINT job") {
                        return abandon(client, &e);
                    }
                    callbacks.extend(cbs);
                    own.push(None);
                    i += 1;
                    continue;
                }
                Ok(Verdict::RollBack) => None,
                Ok(Verdict::Fail(e)) => Some(e),
                Ok(Verdict::Retry) => {
                    rollback(client);
                    return Group::Retry;
                }
                Err(_) => {
                    tracing::error!("a metadata write panicked; it was rolled back");
                    if let Err(e) = client.batch_execute("ROLLBACK TO job") {
                        return abandon(client, &e);
                    }
                    drop(group.remove(i));
                    continue;
                }
            };
            if let Err(e) = client.batch_execute("ROLLBACK TO job") {
                return abandon(client, &e);
            }
            own.push(undone);
            i += 1;
        }
        commit_group(client, own, callbacks)
    }
}

/// [`Writer::attempt`] without savepoints.
fn attempt_optimistic(
    client: &mut Client,
    statements: &mut HashMap<String, Statement>,
    group: &mut [Box<dyn WriteJob>],
) -> Group {
    if let Err(e) = client.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE") {
        return abandon(client, &e);
    }
    let mut callbacks = Vec::new();
    for job in group.iter_mut() {
        let ran = run_one(client, statements, &mut **job);
        if client.is_closed() {
            return Group::Broken;
        }
        match ran {
            Ok(Verdict::Commit(cbs)) => callbacks.extend(cbs),
            Ok(Verdict::Retry) => {
                rollback(client);
                return Group::Retry;
            }
            Ok(Verdict::RollBack | Verdict::Fail(_)) | Err(_) => {
                rollback(client);
                return Group::Redo;
            }
        }
    }
    commit_group(client, vec![None; group.len()], callbacks)
}

/// Runs one job of a group on the writer's connection; `Err` if it panicked.
fn run_one(
    client: &mut Client,
    statements: &mut HashMap<String, Statement>,
    job: &mut dyn WriteJob,
) -> std::thread::Result<Verdict> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let conn = PgConn::new(client, statements);
        let tx = Tx::new(&conn);
        run_job(job, &tx)
    }))
}

/// `COMMIT` of an attempt whose jobs ran: `own` is each job's own error.
fn commit_group(
    client: &mut Client,
    own: Vec<Option<MetaError>>,
    callbacks: Vec<crate::Callback>,
) -> Group {
    match timed_commit(client, own.len()) {
        Ok(()) => Group::Committed(own, callbacks),
        Err(e) if retryable(&e) => Group::Retry,
        Err(e) if client.is_closed() => Group::Failed(MetaError::Unknown(format!(
            "the connection broke during COMMIT: {}",
            describe_err(&e)
        ))),
        Err(e) => Group::Failed(pg_err(&e)),
    }
}

/// A statement of the group's own bookkeeping failed: the group is rolled back, and run
/// again if it lost a race or its connection broke.
fn abandon(client: &mut Client, e: &postgres::Error) -> Group {
    if client.is_closed() {
        return Group::Broken;
    }
    rollback(client);
    if retryable(e) {
        Group::Retry
    } else {
        Group::Failed(pg_err(e))
    }
}

/// `COMMIT`, whose time is PostgreSQL's WAL flush (`synchronous_commit = on`): the
/// engine's counterpart of the SQLite syncer's fsync in `sluice_meta_fsync_duration_seconds`.
fn timed_commit(client: &mut Client, jobs: usize) -> Result<(), postgres::Error> {
    let started = Instant::now();
    let r = client.batch_execute("COMMIT");
    metrics::histogram!("sluice_meta_fsync_duration_seconds", "engine" => "postgres")
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!("sluice_meta_commit_batch_size", "engine" => "postgres")
        .record(jobs as f64);
    r
}

fn rollback(client: &mut Client) {
    if let Err(e) = client.batch_execute("ROLLBACK") {
        tracing::debug!(error = %describe_err(&e), "rollback failed");
    }
}

/// A pause before the next attempt: 1, 2, 4 … ms (at most 128), times a random factor in
/// [0.5, 1.5) so that transactions that collided do not collide again.
fn backoff(attempt: u32) -> Duration {
    let base = 1u64 << attempt.min(7);
    let nanos = Instant::now().elapsed().subsec_nanos() as u64
        ^ (std::process::id() as u64).rotate_left(17)
        ^ attempt as u64;
    let jitter = (nanos % 1000) as f64 / 1000.0 + 0.5;
    Duration::from_micros((base as f64 * 1000.0 * jitter) as u64)
}

fn retryable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

fn describe_err(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match e.source() {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

/// Classifies a driver error into the kinds callers act on.
fn pg_err(e: &postgres::Error) -> MetaError {
    let text = describe_err(e);
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection failed or broke.
        return MetaError::Unavailable(text);
    };
    let class = &code.code()[..2];
    if retryable(e) {
        MetaError::Conflict(text)
    } else if class == "23" {
        MetaError::Constraint(text)
    } else if *code == SqlState::DISK_FULL || *code == SqlState::INSUFFICIENT_RESOURCES {
        MetaError::Full(text)
    } else if class == "08"
        || class == "57"
        || *code == SqlState::TOO_MANY_CONNECTIONS
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
    {
        MetaError::Unavailable(text)
    } else {
        MetaError::Engine(text)
    }
}

/// A connection as a [`Tx`] sees it.
struct PgConn<'a> {
    client: RefCell<&'a mut Client>,
    statements: RefCell<&'a mut HashMap<String, Statement>>,
}

impl<'a> PgConn<'a> {
    fn new(client: &'a mut Client, statements: &'a mut HashMap<String, Statement>) -> Self {
        PgConn {
            client: RefCell::new(client),
            statements: RefCell::new(statements),
        }
    }

    fn statement(&self, sql: &str) -> Result<Statement, MetaError> {
        let mut cache = self.statements.borrow_mut();
        if let Some(st) = cache.get(sql) {
            return Ok(st.clone());
        }
        let st = self
            .client
            .borrow_mut()
            .prepare(&translate_params(sql))
            .map_err(|e| pg_err(&e))?;
        if cache.len() >= STATEMENT_CACHE {
            cache.clear();
        }
        cache.insert(sql.to_owned(), st.clone());
        Ok(st)
    }
}

/// Runs a prepared statement with `params`; returns the number of rows it changed.
fn run(client: &mut Client, st: &Statement, params: &[ValueRef<'_>]) -> Result<u64, MetaError> {
    let params: Vec<PgParam<'_>> = params.iter().map(|v| PgParam(*v)).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    client.execute(st, &refs).map_err(|e| pg_err(&e))
}

impl Conn for PgConn<'_> {
    fn execute(&self, sql: &str, params: &[ValueRef<'_>]) -> Result<u64, MetaError> {
        let st = self.statement(sql)?;
        run(&mut self.client.borrow_mut(), &st, params)
    }

    fn insert_id(
        &self,
        sql: &str,
        params: &[ValueRef<'_>],
        id_column: &str,
    ) -> Result<i64, MetaError> {
        let sql = format!("{sql} RETURNING {id_column}");
        let mut id = None;
        self.query(&sql, params, &mut |row| {
            id = Some(crate::FromValue::from_value(row.value(0)?)?);
            Ok(false)
        })?;
        id.ok_or(MetaError::NoRows)
    }

    fn query(
        &self,
        sql: &str,
        params: &[ValueRef<'_>],
        each: &mut dyn FnMut(&dyn RowSource) -> Result<bool, MetaError>,
    ) -> Result<(), MetaError> {
        let st = self.statement(sql)?;
        let params: Vec<PgParam<'_>> = params.iter().map(|v| PgParam(*v)).collect();
        let mut client = self.client.borrow_mut();
        let mut rows = client
            .query_raw(&st, params.iter().map(|p| p as &(dyn ToSql + Sync)))
            .map_err(|e| pg_err(&e))?;
        while let Some(row) = rows.next().map_err(|e| pg_err(&e))? {
            if !each(&PgRow(&row))? {
                break;
            }
        }
        Ok(())
    }

    fn execute_once(&self, sql: &str, params: &[ValueRef<'_>]) -> Result<u64, MetaError> {
        // Prepared for this run only: PostgreSQL plans a statement's first runs for their
        // values (a custom plan), and the statement is closed when `st` is dropped (the
        // close goes out with the next request).
        let mut client = self.client.borrow_mut();
        let st = client
            .prepare(&translate_params(sql))
            .map_err(|e| pg_err(&e))?;
        run(&mut client, &st, params)
    }

    fn is_remote(&self) -> bool {
        true
    }
}

struct PgRow<'a>(&'a postgres::Row);

impl RowSource for PgRow<'_> {
    fn value(&self, idx: usize) -> Result<ValueRef<'_>, MetaError> {
        let row = self.0;
        let column = row
            .columns()
            .get(idx)
            .ok_or_else(|| MetaError::Type(format!("no column {idx}")))?;
        let ty = column.type_().clone();
        let conv = |e: postgres::Error| MetaError::Type(format!("column {idx}: {e}"));
        let v = if ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(idx)
                .map_err(conv)?
                .map(ValueRef::Int)
        } else if ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(idx)
                .map_err(conv)?
                .map(|i| ValueRef::Int(i.into()))
        } else if ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(idx)
                .map_err(conv)?
                .map(|i| ValueRef::Int(i.into()))
        } else if ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(idx)
                .map_err(conv)?
                .map(|b| ValueRef::Int(b.into()))
        } else if ty == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(idx)
                .map_err(conv)?
                .map(ValueRef::Real)
        } else if ty == Type::FLOAT4 {
            row.try_get::<_, Option<f32>>(idx)
                .map_err(conv)?
                .map(|f| ValueRef::Real(f.into()))
        } else if ty == Type::BYTEA {
            row.try_get::<_, Option<&[u8]>>(idx)
                .map_err(conv)?
                .map(ValueRef::Blob)
        } else if ty == Type::TEXT
            || ty == Type::VARCHAR
            || ty == Type::NAME
            || ty == Type::BPCHAR
            || ty == Type::UNKNOWN
        {
            row.try_get::<_, Option<&str>>(idx)
                .map_err(conv)?
                .map(ValueRef::Text)
        } else {
            return Err(MetaError::Type(format!(
                "column {idx} ({}) has type {ty}, which sluice does not read; CAST it to BIGINT, TEXT or BYTEA",
                column.name()
            )));
        };
        Ok(v.unwrap_or(ValueRef::Null))
    }
}

/// A parameter, encoded as the type PostgreSQL inferred for its place in the statement.
#[derive(Debug)]
struct PgParam<'a>(ValueRef<'a>);

type BoxError = Box<dyn StdError + Sync + Send>;

impl ToSql for PgParam<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        let wrong = || -> BoxError {
            format!("a {} parameter cannot be sent as {ty}", kind(self.0)).into()
        };
        match self.0 {
            ValueRef::Null => Ok(IsNull::Yes),
            ValueRef::Int(i) => {
                if *ty == Type::INT8 {
                    i.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(i)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(i)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (i != 0).to_sql(ty, out)
                } else if *ty == Type::FLOAT8 {
                    (i as f64).to_sql(ty, out)
                } else if *ty == Type::FLOAT4 {
                    (i as f32).to_sql(ty, out)
                } else if is_text(ty) {
                    i.to_string().to_sql(ty, out)
                } else {
                    Err(wrong())
                }
            }
            ValueRef::Real(f) => {
                if *ty == Type::FLOAT8 {
                    f.to_sql(ty, out)
                } else if *ty == Type::FLOAT4 {
                    (f as f32).to_sql(ty, out)
                } else if is_text(ty) {
                    f.to_string().to_sql(ty, out)
                } else {
                    Err(wrong())
                }
            }
            ValueRef::Text(s) => {
                if is_text(ty) {
                    s.to_sql(ty, out)
                } else if *ty == Type::BYTEA {
                    s.as_bytes().to_sql(ty, out)
                } else {
                    Err(wrong())
                }
            }
            ValueRef::Blob(b) => {
                if *ty == Type::BYTEA {
                    b.to_sql(ty, out)
                } else {
                    Err(wrong())
                }
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn is_text(ty: &Type) -> bool {
    *ty == Type::TEXT
        || *ty == Type::VARCHAR
        || *ty == Type::NAME
        || *ty == Type::BPCHAR
        || *ty == Type::UNKNOWN
}

fn kind(v: ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Null => "null",
        ValueRef::Int(_) => "integer",
        ValueRef::Real(_) => "real",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "blob",
    }
}

/// Pieces of SQL text: words, quoted strings and everything else, in order.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Word(&'a str),
    Quoted(&'a str),
    Other(&'a str),
}

fn pieces(sql: &str) -> Vec<Piece<'_>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        if c == b'\'' || c == b'"' {
            i += 1;
            while i < b.len() {
                if b[i] == c {
                    // A doubled quote is an escaped quote inside the string.
                    if b.get(i + 1) == Some(&c) {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            out.push(Piece::Quoted(&sql[start..i]));
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            out.push(Piece::Other(&sql[start..i]));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Piece::Word(&sql[start..i]));
        } else {
            i += 1;
            // Multi-byte characters stay whole: continuation bytes are never ASCII.
            while i < b.len() && !b[i].is_ascii() {
                i += 1;
            }
            out.push(Piece::Other(&sql[start..i]));
        }
    }
    out
}

/// Rewrites SQLite-style parameters (`?1`, `?`) as PostgreSQL's (`$1`), outside quotes.
pub(crate) fn translate_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1;
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' || c == b'"' {
            let start = i;
            i += 1;
            while i < b.len() {
                if b[i] == c {
                    if b.get(i + 1) == Some(&c) {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            out.push_str(&sql[start..i]);
        } else if c == b'?' {
            i += 1;
            let digits = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push('$');
            if digits == i {
                out.push_str(&next.to_string());
                next += 1;
            } else {
                out.push_str(&sql[digits..i]);
            }
        } else {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'\'' && b[i] != b'"' && b[i] != b'?' {
                i += 1;
            }
            out.push_str(&sql[start..i]);
        }
    }
    out
}

/// Translates the neutral DDL of migrations into PostgreSQL's: `INTEGER PRIMARY KEY` →
/// an identity column; `INTEGER` → `BIGINT`; `REAL` → `DOUBLE PRECISION`; `BLOB` →
/// `BYTEA`; `TEXT` → `TEXT COLLATE "C"` (byte order, as SQLite compares text); `WITHOUT
/// ROWID` dropped.
pub(crate) fn translate_ddl(sql: &str) -> String {
    let p = pieces(sql);
    let word = |i: usize| match p.get(i) {
        Some(Piece::Word(w)) => Some(w.to_ascii_uppercase()),
        _ => None,
    };
    // The index of the next word after `i`, skipping whitespace.
    let next_word = |i: usize| {
        let mut j = i + 1;
        while let Some(Piece::Other(s)) = p.get(j) {
            if !s.trim().is_empty() {
                return None;
            }
            j += 1;
        }
        matches!(p.get(j), Some(Piece::Word(_))).then_some(j)
    };
    // The index of the previous piece that is not whitespace.
    let prev = |i: usize| {
        (0..i)
            .rev()
            .find(|&j| !matches!(&p[j], Piece::Other(s) if s.trim().is_empty()))
    };
    let is_other = |j: Option<usize>, text: &str| matches!(j.and_then(|j| p.get(j)), Some(Piece::Other(s)) if s.trim() == text);
    // A type name stands right after a column's name (itself after `(`, `,` or `COLUMN`), or
    // after `AS` in a cast; the same word elsewhere is a name (a column called `blob`).
    let in_type_position = |i: usize| {
        let Some(before) = prev(i) else {
            return false;
        };
        match (&p[before], word(before).as_deref()) {
            (_, Some("AS")) => true,
            (Piece::Word(_), _) => {
                let b2 = prev(before);
                is_other(b2, "(")
                    || is_other(b2, ",")
                    || b2.and_then(word).as_deref() == Some("COLUMN")
            }
            _ => false,
        }
    };
    let mut out = String::with_capacity(sql.len() + 64);
    let mut i = 0;
    while i < p.len() {
        let typed = in_type_position(i);
        match (&p[i], word(i).as_deref()) {
            (_, Some("INTEGER")) if typed => {
                let pk = next_word(i).filter(|&j| word(j).as_deref() == Some("PRIMARY"));
                let key = pk
                    .and_then(next_word)
                    .filter(|&j| word(j).as_deref() == Some("KEY"));
                if let Some(k) = key {
                    out.push_str("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY");
                    i = k + 1;
                    if let Some(a) =
                        next_word(k).filter(|&j| word(j).as_deref() == Some("AUTOINCREMENT"))
                    {
                        i = a + 1;
                    }
                    continue;
                }
                out.push_str("BIGINT");
            }
            (_, Some("REAL")) if typed => out.push_str("DOUBLE PRECISION"),
            (_, Some("BLOB")) if typed => out.push_str("BYTEA"),
            // No collation in a cast: `CAST(x AS TEXT)` is an expression, not a column.
            (_, Some("TEXT")) if typed && word(prev(i).unwrap_or(0)).as_deref() == Some("AS") => {
                out.push_str("TEXT")
            }
            (_, Some("TEXT")) if typed => out.push_str("TEXT COLLATE \"C\""),
            (_, Some("WITHOUT"))
                if next_word(i).is_some_and(|j| word(j).as_deref() == Some("ROWID")) =>
            {
                i = next_word(i).map_or(i + 1, |j| j + 1);
                continue;
            }
            (Piece::Word(s) | Piece::Quoted(s) | Piece::Other(s), _) => out.push_str(s),
        }
        i += 1;
    }
    out
}

fn migrate(c: &mut Client, migrations: &[Migration]) -> Result<(), MetaError> {
    let e = |e: postgres::Error| pg_err(&e);
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(e)?;
    let result = (|| {
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
        )
        .map_err(e)?;
        for m in migrations {
            let done = c
                .query_opt("SELECT 1 FROM _migrations WHERE name = $1", &[&m.name])
                .map_err(e)?
                .is_some();
            if done {
                continue;
            }
            let mut t = c.transaction().map_err(e)?;
            t.batch_execute(&translate_ddl(m.sql)).map_err(|err| {
                MetaError::Engine(format!("migration {}: {}", m.name, describe_err(&err)))
            })?;
            t.execute(
                "INSERT INTO _migrations (name, applied_ms) VALUES ($1, $2)",
                &[&m.name, &crate::now_ms()],
            )
            .map_err(e)?;
            t.commit().map_err(e)?;
        }
        Ok(())
    })();
    let unlocked = c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result?;
    unlocked.map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_rewritten_outside_quotes() {
        assert_eq!(
            translate_params("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12"
        );
        assert_eq!(translate_params("VALUES (?, ?)"), "VALUES ($1, $2)");
        assert_eq!(
            translate_params("SELECT 'it''s ?' , \"q?\" , ?3"),
            "SELECT 'it''s ?' , \"q?\" , $3"
        );
    }

    #[test]
    fn ddl_is_translated() {
        assert_eq!(
            translate_ddl(
                "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT NOT NULL DEFAULT 'TEXT', b BLOB, r REAL) WITHOUT ROWID;"
            ),
            "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v TEXT COLLATE \"C\" NOT NULL DEFAULT 'TEXT', b BYTEA, r DOUBLE PRECISION) ;"
        );
        assert_eq!(
            translate_ddl("CREATE TABLE u (a INTEGER NOT NULL, PRIMARY KEY (a))"),
            "CREATE TABLE u (a BIGINT NOT NULL, PRIMARY KEY (a))"
        );
        // Names that are also type names stay names.
        assert_eq!(
            translate_ddl(
                "CREATE TABLE o (inline BLOB, blob TEXT, text TEXT);
                 CREATE INDEX o_blob ON o (blob) WHERE blob IS NOT NULL;
                 ALTER TABLE o ADD COLUMN real REAL;
                 UPDATE o SET text = CAST(real AS TEXT), blob = 'TEXT';"
            ),
            "CREATE TABLE o (inline BYTEA, blob TEXT COLLATE \"C\", text TEXT COLLATE \"C\");
                 CREATE INDEX o_blob ON o (blob) WHERE blob IS NOT NULL;
                 ALTER TABLE o ADD COLUMN real DOUBLE PRECISION;
                 UPDATE o SET text = CAST(real AS TEXT), blob = 'TEXT';"
        );
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            shown("postgres://u:secret@h:5432/db?pool_size=3"),
            "postgres://u@h:5432/db?pool_size=3"
        );
        let (url, pool) =
            own_params("postgres://u@h/db?pool_size=3&sslmode=disable").expect("parse");
        assert_eq!(
            (url.as_str(), pool),
            ("postgres://u@h/db?sslmode=disable", 3)
        );
        assert!(own_params("postgres://u@h/db?pool_size=0").is_err());
    }
}
