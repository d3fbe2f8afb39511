//! **meta**: every row sluice keeps (user pools, users, keys, object metadata, the upload
//! ledger, the stream outbox, mappings, checkpoints, stream metadata), behind one
//! engine-neutral handle, [`Meta`].
//!
//! A write is a closure run inside a transaction ([`Meta::write`]); it sees a [`Tx`], runs
//! statements through it, and may register [`Tx::on_durable`] callbacks. The future
//! resolves `Ok` only once the transaction is **durable** (fsynced, or acknowledged by an
//! engine configured to fsync). If the closure fails, its own changes are rolled back and
//! its error returned; nothing else is affected.
//!
//! Engines, chosen by URL ([`open`]):
//! - `sqlite://PATH` (the embedded default): one SQLite file in WAL mode, one
//!   group-committing writer thread and a syncer thread that fsyncs the WAL once for every
//!   group committed since its last fsync (`sqlite.rs`).
//! - `postgres://…`: a pool of connections, each transaction `SERIALIZABLE`, retried when
//!   PostgreSQL reports a serialization failure or a deadlock; `synchronous_commit = on`
//!   (`postgres.rs`).
//!
//! **Statements are written once, in the SQL both engines accept** (see `ARCHITECTURE.md`,
//! "The portable SQL of meta"): parameters `?1`, `?2`, … (the PostgreSQL engine rewrites
//! them as `$1`, …), upserts with `ON CONFLICT … DO`, `RETURNING` instead of
//! `last_insert_rowid`, `CASE` instead of SQLite's two-argument `max`/`min`, no JSON
//! functions. DDL in [`Migration`]s is written with the types `INTEGER`, `REAL`, `TEXT`,
//! `BLOB`; the PostgreSQL engine translates them (`BIGINT`, `DOUBLE PRECISION`,
//! `TEXT COLLATE "C"` so that text orders by bytes as in SQLite, `BYTEA`), and
//! `INTEGER PRIMARY KEY` columns become identity columns.
//!
//! Two rules a closure follows on every engine:
//! - **It may run more than once** (`FnMut`): the PostgreSQL engine retries a transaction
//!   that lost a serialization race. It must not have effects outside the transaction
//!   other than through [`Tx::on_durable`].
//! - **A failed statement ends the transaction**: PostgreSQL aborts a transaction after any
//!   error. A closure that catches an engine error and goes on to return `Ok` fails anyway
//!   (on both engines, so that the embedded tests catch it). Use `ON CONFLICT DO NOTHING`
//!   and look at the number of changed rows instead of catching constraint errors.
//!   [`MetaError::NoRows`] and conversion errors are not engine errors.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

mod value;
pub use value::{FromValue, Row, ToValue, ValueRef};

mod sqlite;
pub use sqlite::SqliteOptions;

#[cfg(feature = "postgres")]
mod postgres;

#[cfg(feature = "conformance")]
pub mod conformance;

/// A result whose error is a [`MetaError`].
pub type MetaResult<T> = Result<T, MetaError>;

/// Why a metadata operation failed. The kinds a client can act on are told apart, so that
/// each protocol maps them to its own status (a full disk or an engine that is down is not
/// an internal error).
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetaError {
    /// `query_row` found no row.
    #[error("no such row")]
    NoRows,
    /// A unique, primary-key, foreign-key or check constraint refused a change.
    #[error("constraint violated: {0}")]
    Constraint(String),
    /// The engine has no room left (disk full, quota).
    #[error("metadata storage is full: {0}")]
    Full(String),
    /// The engine cannot be reached or refuses connections: try again later.
    #[error("metadata engine unavailable: {0}")]
    Unavailable(String),
    /// The connection broke while a commit was in flight: the transaction may or may not
    /// have committed.
    #[error("metadata commit outcome unknown: {0}")]
    Unknown(String),
    /// The transaction kept losing races with concurrent ones.
    #[error("metadata transaction kept conflicting: {0}")]
    Conflict(String),
    /// A column's value does not convert to the requested type.
    #[error("metadata value: {0}")]
    Type(String),
    /// Anything else the engine reported.
    #[error("metadata engine error: {0}")]
    Engine(String),
    #[error("cannot open metadata engine {url}: {message}")]
    Open { url: String, message: String },
    /// The handle was closed, or is read-only.
    #[error("the metadata writer has stopped")]
    WriterGone,
    /// The transaction could not be committed or made durable.
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("background task failed: {0}")]
    Join(String),
    /// The URL names an engine this build does not include.
    #[error("metadata engine {0} is not built in (rebuild with its cargo feature)")]
    NotBuiltIn(String),
    #[error("invalid metadata URL {url}: {message}")]
    InvalidUrl { url: String, message: String },
}

impl MetaError {
    /// The engine is down or out of reach, or the transaction kept losing races with
    /// concurrent ones until the engine gave up: the operation may succeed later (clients
    /// get 503 with `Retry-After`, not 500).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            MetaError::Unavailable(_) | MetaError::Unknown(_) | MetaError::Conflict(_)
        )
    }

    /// The engine is out of space.
    pub fn is_full(&self) -> bool {
        matches!(self, MetaError::Full(_))
    }

    /// Whether this error is the engine refusing a statement (the transaction cannot go on),
    /// as opposed to a missing row or a conversion error found by the caller.
    fn ends_transaction(&self) -> bool {
        !matches!(self, MetaError::NoRows | MetaError::Type(_))
    }
}

/// A migration step: tables one part needs, in neutral DDL (see the crate docs). Steps run
/// in order at open, each once per database; applied steps are recorded by `name`. On
/// SQLite every pending step of an open runs in one transaction (all or nothing); on
/// PostgreSQL each step is its own transaction, under an advisory lock.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

/// Which engine a handle runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Sqlite,
    Postgres,
}

/// What the engine did since it was opened ([`Meta::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetaStats {
    /// Transactions committed (on SQLite each holds one or more write jobs).
    pub groups: u64,
    /// Write jobs run (retries not counted).
    pub jobs: u64,
    /// Time spent running and committing transactions.
    pub commit_nanos: u64,
    /// Fsyncs sluice made itself (SQLite's WAL); 0 where the engine syncs.
    pub syncs: u64,
    /// Time spent in those fsyncs.
    pub sync_nanos: u64,
    /// Transactions run again: after a serialization failure or deadlock (PostgreSQL), or
    /// a group run without savepoints in which a write was not kept, run again with them
    /// (both engines).
    pub retries: u64,
}

type Callback = Box<dyn FnOnce() + Send>;

/// The connection a [`Tx`] runs statements on, as an engine provides it.
pub(crate) trait Conn {
    fn execute(&self, sql: &str, params: &[ValueRef<'_>]) -> Result<u64, MetaError>;
    /// Runs an `INSERT` of one row and returns the value of its `id_column` (the table's
    /// `INTEGER PRIMARY KEY`).
    fn insert_id(
        &self,
        sql: &str,
        params: &[ValueRef<'_>],
        id_column: &str,
    ) -> Result<i64, MetaError>;
    /// Runs a query, calling `each` for every row until it returns `false`.
    fn query(
        &self,
        sql: &str,
        params: &[ValueRef<'_>],
        each: &mut dyn FnMut(&dyn value::RowSource) -> Result<bool, MetaError>,
    ) -> Result<(), MetaError>;
    /// [`Tx::execute_once`].
    fn execute_once(&self, sql: &str, params: &[ValueRef<'_>]) -> Result<u64, MetaError>;
    /// [`Tx::is_remote`].
    fn is_remote(&self) -> bool;
}

/// A transaction (or, for [`Meta::read`], a read-only connection) handed to a closure.
pub struct Tx<'c> {
    conn: &'c dyn Conn,
    callbacks: RefCell<Vec<Callback>>,
    /// The first engine error a statement of this transaction met.
    failed: RefCell<Option<MetaError>>,
    /// Whether that error was a serialization failure or deadlock (worth a retry).
    retryable: Cell<bool>,
}

impl<'c> Tx<'c> {
    pub(crate) fn new(conn: &'c dyn Conn) -> Self {
        Tx {
            conn,
            callbacks: RefCell::new(Vec::new()),
            failed: RefCell::new(None),
            retryable: Cell::new(false),
        }
    }

    fn note<T>(&self, r: Result<T, MetaError>) -> Result<T, MetaError> {
        if let Err(e) = &r
            && e.ends_transaction()
        {
            // Lost a race with a concurrent transaction: the engine runs it again.
            if matches!(e, MetaError::Conflict(_)) {
                self.retryable.set(true);
            }
            let mut failed = self.failed.borrow_mut();
            if failed.is_none() {
                *failed = Some(e.clone());
            }
        }
        r
    }

    pub(crate) fn failure(&self) -> Option<MetaError> {
        self.failed.borrow().clone()
    }

    pub(crate) fn is_retryable(&self) -> bool {
        self.retryable.get()
    }

    pub(crate) fn take_callbacks(&self) -> Vec<Callback> {
        std::mem::take(&mut *self.callbacks.borrow_mut())
    }

    /// Runs a statement; returns the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<u64, MetaError> {
        let values = to_values(params);
        self.note(self.conn.execute(sql, &values))
    }

    /// Runs a statement planned for these very parameters and not kept for another run:
    /// for a statement whose text is made for the rows at hand (one `UPDATE` for many
    /// keys, `WHERE key IN (?1, ?2, …)`), whose best plan depends on its values. On
    /// PostgreSQL a cached statement would, after a few runs, be given a generic plan
    /// chosen for no values in particular, and keep it as the table grows (a sequential
    /// scan planned while the table was small: docs/BENCHMARKS.md, session 27); a statement
    /// prepared for one run is planned for its values, at the price of a second round
    /// trip. SQLite prepares it without putting it in the connection's statement cache.
    pub fn execute_once(&self, sql: &str, params: &[&dyn ToValue]) -> Result<u64, MetaError> {
        let values = to_values(params);
        self.note(self.conn.execute_once(sql, &values))
    }

    /// Whether each statement is a round trip to a server (PostgreSQL), rather than a call
    /// into the process (SQLite): where it is, one statement for many rows saves a round
    /// trip per row; where it is not, a cached one-row statement per row costs less than
    /// preparing a many-row one.
    pub fn is_remote(&self) -> bool {
        self.conn.is_remote()
    }

    /// Runs an `INSERT` of one row (written without `RETURNING`) and returns its
    /// `id_column`, which must be the table's `INTEGER PRIMARY KEY`. Cheaper than
    /// `RETURNING` on SQLite (which stages returned rows in a temporary table).
    pub fn insert_id(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        id_column: &str,
    ) -> Result<i64, MetaError> {
        let values = to_values(params);
        self.note(self.conn.insert_id(sql, &values, id_column))
    }

    /// The first row of a query, converted by `f`; [`MetaError::NoRows`] if there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnOnce(&Row<'_>) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        self.query_opt(sql, params, f)?.ok_or(MetaError::NoRows)
    }

    /// The first row of a query, converted by `f`, if there is one.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnOnce(&Row<'_>) -> Result<T, MetaError>,
    ) -> Result<Option<T>, MetaError> {
        let values = to_values(params);
        let mut f = Some(f);
        let mut out = None;
        let r = self.conn.query(sql, &values, &mut |src| {
            if let Some(f) = f.take() {
                out = Some(f(&Row { src })?);
            }
            Ok(false)
        });
        self.note(r)?;
        Ok(out)
    }

    /// Every row of a query, converted by `f`.
    pub fn query_vec<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        mut f: impl FnMut(&Row<'_>) -> Result<T, MetaError>,
    ) -> Result<Vec<T>, MetaError> {
        let values = to_values(params);
        let mut out = Vec::new();
        let r = self.conn.query(sql, &values, &mut |src| {
            out.push(f(&Row { src })?);
            Ok(true)
        });
        self.note(r)?;
        Ok(out)
    }

    /// Every row of a query, each converted by `f`, as an iterator of results (collect it
    /// into a `Result<Vec<_>, _>`, a map, …). A conversion error does not stop the query.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        mut f: impl FnMut(&Row<'_>) -> Result<T, MetaError>,
    ) -> Result<std::vec::IntoIter<Result<T, MetaError>>, MetaError> {
        let values = to_values(params);
        let mut out = Vec::new();
        let r = self.conn.query(sql, &values, &mut |src| {
            out.push(f(&Row { src }));
            Ok(true)
        });
        self.note(r)?;
        Ok(out.into_iter())
    }

    /// Calls `f` for each row of a query until it returns `false`.
    pub fn query_each(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        mut f: impl FnMut(&Row<'_>) -> Result<bool, MetaError>,
    ) -> Result<(), MetaError> {
        let values = to_values(params);
        let r = self.conn.query(sql, &values, &mut |src| f(&Row { src }));
        self.note(r)
    }

    /// Whether a query returns at least one row.
    pub fn exists(&self, sql: &str, params: &[&dyn ToValue]) -> Result<bool, MetaError> {
        Ok(self.query_opt(sql, params, |_| Ok(()))?.is_some())
    }

    /// Registers `f` to run once this transaction is durable: after the commit (and fsync)
    /// that covers it, before its write resolves, on an engine thread (so `f` must be quick
    /// and must not block). If the transaction fails or is rolled back, `f` never runs; if
    /// it is retried, only the callbacks of the attempt that committed run. In a read,
    /// `f` runs when the read ends.
    pub fn on_durable(&self, f: impl FnOnce() + Send + 'static) {
        self.callbacks.borrow_mut().push(Box::new(f));
    }
}

/// Statement parameters as values: on the stack for the usual handful (a statement costs
/// no allocation for them), in a vector past that. The size difference is the point: the
/// value lives on one stack frame for one statement.
#[allow(clippy::large_enum_variant)]
enum Values<'a> {
    Few([ValueRef<'a>; 16], usize),
    Many(Vec<ValueRef<'a>>),
}

impl<'a> std::ops::Deref for Values<'a> {
    type Target = [ValueRef<'a>];

    fn deref(&self) -> &[ValueRef<'a>] {
        match self {
            Values::Few(a, n) => &a[..*n],
            Values::Many(v) => v,
        }
    }
}

fn to_values<'a>(params: &'a [&'a dyn ToValue]) -> Values<'a> {
    if params.len() > 16 {
        return Values::Many(params.iter().map(|p| p.to_value()).collect());
    }
    let mut a = [ValueRef::Null; 16];
    for (slot, p) in a.iter_mut().zip(params) {
        *slot = p.to_value();
    }
    Values::Few(a, params.len())
}

/// A write as the engines run it: type-erased, runnable more than once, finished once.
pub(crate) trait WriteJob: Send {
    /// Runs the closure in `tx`; `true` if it returned `Ok`.
    fn run(&mut self, tx: &Tx<'_>) -> bool;
    /// Resolves the write: `None` when the transaction is durable (or the closure failed:
    /// its own error is reported), `Some(e)` when the commit or its fsync failed.
    fn finish(self: Box<Self>, commit: Option<MetaError>);
}

/// The job of a write running `f` and telling `reply` its outcome.
pub(crate) fn write_job<T, E, F>(
    f: F,
    reply: impl FnOnce(Result<T, E>) + Send + 'static,
) -> Box<dyn WriteJob>
where
    F: FnMut(&Tx<'_>) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<MetaError> + Send + 'static,
{
    Box::new(TypedJob {
        f,
        out: None,
        reply,
    })
}

struct TypedJob<F, T, E, R> {
    f: F,
    out: Option<Result<T, E>>,
    reply: R,
}

impl<F, T, E, R> WriteJob for TypedJob<F, T, E, R>
where
    F: FnMut(&Tx<'_>) -> Result<T, E> + Send,
    T: Send,
    E: From<MetaError> + Send,
    R: FnOnce(Result<T, E>) + Send,
{
    fn run(&mut self, tx: &Tx<'_>) -> bool {
        let r = (self.f)(tx);
        let ok = r.is_ok();
        self.out = Some(r);
        ok
    }

    fn finish(self: Box<Self>, commit: Option<MetaError>) {
        let result = match (self.out, commit) {
            (Some(Err(e)), _) => Err(e),
            (_, Some(e)) => Err(E::from(e)),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(E::from(MetaError::WriterGone)),
        };
        (self.reply)(result);
    }
}

/// A read as the engines run it.
pub(crate) type ReadJob = Box<dyn FnOnce(Result<&Tx<'_>, MetaError>) + Send>;

/// Whether the caller of a read waits in a thread of its own or in async code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    Blocking,
    Async,
}

/// What an engine provides. Object-safe; [`Meta`] adds the typed API.
pub(crate) trait Engine: Send + Sync + 'static {
    fn kind(&self) -> EngineKind;
    /// The engine's URL with any password left out.
    fn describe(&self) -> String;
    /// Runs a write; `job.finish` is called exactly once, on an engine thread.
    fn write(&self, job: Box<dyn WriteJob>);
    /// Runs a read. For [`Caller::Blocking`] the engine may run it on the calling thread;
    /// for [`Caller::Async`] it must not block the caller.
    fn read(&self, job: ReadJob, caller: Caller);
    fn stats(&self) -> MetaStats;
    /// Stops accepting writes; what was submitted finishes.
    fn close(&self);
    /// Checks the engine's own consistency (SQLite's integrity check, PostgreSQL's
    /// reachability and settings); each string is a problem found.
    fn check(&self) -> Result<Vec<String>, MetaError>;
}

/// Handle to the metadata engine. Cheap to clone.
#[derive(Clone)]
pub struct Meta {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Box<dyn Engine>,
    /// State that parts attach to this engine, one value per type ([`Meta::shared`]).
    shared: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

/// Opens the engine a URL names and applies `migrations`:
/// - `sqlite://PATH` or a plain path: the embedded engine (the file is created if needed);
/// - `postgres://USER@HOST:PORT/DB?…` or `postgresql://…`: PostgreSQL (the database must
///   exist). Besides the libpq-style parameters, `pool_size=N` sets the number of
///   connections (default 16).
pub fn open(url: &str, migrations: &[Migration]) -> Result<Meta, MetaError> {
    match scheme(url) {
        Some("sqlite") | None => {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            Meta::open_sqlite(std::path::Path::new(path), migrations)
        }
        Some("postgres") | Some("postgresql") => open_postgres(url, migrations),
        Some(other) => Err(MetaError::InvalidUrl {
            url: url.to_owned(),
            message: format!("unknown engine {other:?}; use sqlite:// or postgres://"),
        }),
    }
}

#[cfg(feature = "postgres")]
fn open_postgres(url: &str, migrations: &[Migration]) -> Result<Meta, MetaError> {
    Ok(Meta::from_engine(Box::new(postgres::Pg::open(
        url, migrations,
    )?)))
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(url: &str, _migrations: &[Migration]) -> Result<Meta, MetaError> {
    Err(MetaError::NotBuiltIn(format!(
        "postgres ({})",
        url.split('@').next_back().unwrap_or("")
    )))
}

/// The scheme of a URL (`sqlite` of `sqlite://…`), if it has one.
fn scheme(url: &str) -> Option<&str> {
    let (s, _) = url.split_once("://")?;
    (!s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+')).then_some(s)
}

impl Meta {
    pub(crate) fn from_engine(engine: Box<dyn Engine>) -> Meta {
        Meta {
            inner: Arc::new(Inner {
                engine,
                shared: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The embedded engine on the SQLite file at `path` (created if needed).
    pub fn open_sqlite(
        path: &std::path::Path,
        migrations: &[Migration],
    ) -> Result<Meta, MetaError> {
        Meta::open_sqlite_with(path, migrations, SqliteOptions::default())
    }

    /// [`Meta::open_sqlite`] with explicit tuning.
    pub fn open_sqlite_with(
        path: &std::path::Path,
        migrations: &[Migration],
        options: SqliteOptions,
    ) -> Result<Meta, MetaError> {
        Ok(Meta::from_engine(Box::new(sqlite::Sqlite::open(
            path, migrations, options,
        )?)))
    }

    /// An existing SQLite file opened for inspection only: no migrations, no writer
    /// (writes fail with [`MetaError::WriterGone`]). Fails if the file does not exist.
    pub fn open_sqlite_read_only(path: &std::path::Path) -> Result<Meta, MetaError> {
        Ok(Meta::from_engine(Box::new(sqlite::Sqlite::open_read_only(
            path,
        )?)))
    }

    pub fn kind(&self) -> EngineKind {
        self.inner.engine.kind()
    }

    /// The engine's URL, without a password (for logs and `sluice doctor`).
    pub fn describe(&self) -> String {
        self.inner.engine.describe()
    }

    /// Whether two handles are the same engine (so one transaction can hold both's rows).
    pub fn same(&self, other: &Meta) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Counters since open.
    pub fn stats(&self) -> MetaStats {
        self.inner.engine.stats()
    }

    /// The engine's own consistency check; each string is a problem.
    pub fn check(&self) -> Result<Vec<String>, MetaError> {
        self.inner.engine.check()
    }

    /// The value of type `T` shared by every clone of this handle (created with
    /// `T::default()` on first use): state one per engine rather than one per part.
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

    /// Runs `f` in a transaction and returns its result once the transaction is durable.
    /// If `f` fails, its changes are rolled back and its error returned; if the commit
    /// fails, the write fails with that error. `f` may run more than once (see the crate
    /// docs).
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnMut(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<MetaError> + Send + 'static,
    {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.write_with(f, move |r| {
            let _ = done_tx.send(r);
        });
        done_rx.await.map_err(|_| E::from(MetaError::WriterGone))?
    }

    /// [`Meta::write`] without a future: `done` gets the result once the transaction is
    /// durable (or failed). `done` runs on an engine thread, so it must be quick and must
    /// not block; it suits callers that fan results out to many waiters themselves.
    pub fn write_with<T, E, F>(&self, f: F, done: impl FnOnce(Result<T, E>) + Send + 'static)
    where
        F: FnMut(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<MetaError> + Send + 'static,
    {
        self.inner.engine.write(write_job(f, done));
    }

    /// [`Meta::write`] for callers outside an async runtime (the command-line tools).
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnMut(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<MetaError> + Send + 'static,
    {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.write_with(f, move |r| {
            let _ = done_tx.send(r);
        });
        done_rx.recv().map_err(|_| E::from(MetaError::WriterGone))?
    }

    /// Runs a read. Each statement sees committed data (on both engines a read is not one
    /// snapshot across statements: use [`Meta::write`] for a consistent multi-statement
    /// view).
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<MetaError> + Send + 'static,
    {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.inner.engine.read(
            Box::new(move |tx| {
                let _ = done_tx.send(match tx {
                    Ok(tx) => f(tx),
                    Err(e) => Err(E::from(e)),
                });
            }),
            Caller::Async,
        );
        done_rx
            .await
            .map_err(|_| E::from(MetaError::Join("the read was dropped".into())))?
    }

    /// [`Meta::read`] for callers outside an async runtime, or already on a blocking thread.
    pub fn read_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<MetaError> + Send + 'static,
    {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.inner.engine.read(
            Box::new(move |tx| {
                let _ = done_tx.send(match tx {
                    Ok(tx) => f(tx),
                    Err(e) => Err(E::from(e)),
                });
            }),
            Caller::Blocking,
        );
        done_rx
            .recv()
            .map_err(|_| E::from(MetaError::Join("the read was dropped".into())))?
    }

    /// Stops accepting writes; what was submitted finishes.
    pub fn close(&self) {
        self.inner.engine.close();
    }
}

/// Runs a write job in a transaction an engine opened: the closure, then the verdict.
/// Returns what the engine must do next.
pub(crate) enum Verdict {
    /// Commit; these callbacks run once the commit is durable.
    Commit(Vec<Callback>),
    /// Roll back; the job failed on its own (its error is in the job).
    RollBack,
    /// Roll back; the job's statements met this engine error (the closure went on as if
    /// nothing happened, or failed because of it) — fail the job with it.
    Fail(MetaError),
    /// Roll back and run the job again (serialization failure or deadlock).
    Retry,
}

/// Whether a write group may run without a savepoint per write, on either engine: it may,
/// unless a group was redone with savepoints lately. Writes that fail tend to come in
/// runs, and each failure in an optimistic group costs the group's work twice, so after a
/// redo the next [`Careful::GROUPS`] groups run with savepoints straight away.
#[derive(Debug, Default)]
pub(crate) struct Careful {
    left: u32,
}

impl Careful {
    const GROUPS: u32 = 8;

    /// Whether the next group may run optimistically (counts off a careful group if not).
    pub(crate) fn optimistic(&mut self) -> bool {
        if self.left == 0 {
            return true;
        }
        self.left -= 1;
        false
    }

    /// An optimistic group had to run again with savepoints.
    pub(crate) fn redone(&mut self) {
        self.left = Self::GROUPS;
    }
}

pub(crate) fn run_job(job: &mut dyn WriteJob, tx: &Tx<'_>) -> Verdict {
    let ok = job.run(tx);
    if tx.is_retryable() {
        return Verdict::Retry;
    }
    match (ok, tx.failure()) {
        (true, None) => Verdict::Commit(tx.take_callbacks()),
        (true, Some(e)) => Verdict::Fail(MetaError::Engine(format!(
            "a statement failed inside the transaction and the write went on: {e}"
        ))),
        (false, _) => Verdict::RollBack,
    }
}

pub(crate) fn add_elapsed(counter: &std::sync::atomic::AtomicU64, since: std::time::Instant) {
    let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Fsyncs a directory so that a file created or renamed in it survives power loss.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_engines() {
        assert_eq!(scheme("sqlite:///tmp/x.db"), Some("sqlite"));
        assert_eq!(scheme("/tmp/x.db"), None);
        assert_eq!(scheme("postgres://u@h/db"), Some("postgres"));
        assert!(matches!(
            open("mysql://h/db", &[]),
            Err(MetaError::InvalidUrl { .. })
        ));
    }
}
