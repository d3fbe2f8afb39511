//! The suite every metadata engine must pass ([`run_all`]), and what tests need to run
//! a part against each engine ([`TestEngines`]).
//!
//! Each rule is a behaviour some part relies on: a failing write leaves its neighbours
//! alone, concurrent read-modify-write transactions behave as if run one at a time, text
//! orders by bytes, `RETURNING` hands out increasing ids, a swallowed engine error fails
//! the write, callbacks run only for durable writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Meta, MetaError, Migration, ToValue, params};

/// The tables the rules use.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "conformance-0001",
        sql: "
CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE vals (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB);
",
    },
    Migration {
        name: "conformance-0002",
        sql: "ALTER TABLE kv ADD COLUMN extra INTEGER NOT NULL DEFAULT 0;",
    },
];

/// Opens a fresh engine (with [`MIGRATIONS`]) under `name`; opening the same name again
/// reopens the same database.
pub type Open<'a> = &'a (dyn Fn(&str) -> Meta + Sync);

/// Runs every rule, each on a database of its own.
pub async fn run_all(open: Open<'_>) {
    types_round_trip(open("types")).await;
    text_orders_by_bytes(open("order")).await;
    failing_writes_are_isolated(open("isolated")).await;
    mixed_groups_commit_exactly_their_kept_writes(open("mixed")).await;
    read_modify_write_is_serializable(open("serial")).await;
    writers_of_two_handles_do_not_lose_updates(open).await;
    durability_callbacks_run_only_for_committed_writes(open("callbacks")).await;
    a_swallowed_engine_error_fails_the_write(open("swallowed")).await;
    upserts_and_returning(open("upsert")).await;
    statements_run_once_act_as_cached_ones(open("once")).await;
    missing_rows_and_existence(open("rows")).await;
    blocking_calls_work_inside_a_runtime(open("blocking")).await;
    migrations_apply_once(open);
}

/// [`Tx::execute_once`] changes what [`Tx::execute`] would, statement after statement of
/// new texts (each prepared for its run and let go), and an engine error it meets fails the
/// write even when the closure swallows it.
async fn statements_run_once_act_as_cached_ones(m: Meta) {
    m.write(|tx| {
        for i in 0..40 {
            tx.execute(
                "INSERT INTO kv (k, v) VALUES (?1, 'old')",
                params![format!("k{i}")],
            )?;
        }
        Ok::<_, MetaError>(())
    })
    .await
    .expect("seed");
    // Lists of 1 to 20 keys, one of them missing each time: a new statement text each run.
    let changed = m
        .write(|tx| {
            let mut changed = Vec::new();
            for n in 1..=20usize {
                let keys: Vec<String> = (0..n)
                    .map(|j| format!("k{}", n + j))
                    .chain(["missing".to_owned()])
                    .collect();
                let marks: Vec<String> = (0..keys.len()).map(|j| format!("?{}", j + 2)).collect();
                let sql = format!("UPDATE kv SET v = ?1 WHERE k IN ({})", marks.join(", "));
                let value = format!("run{n}");
                let mut params: Vec<&dyn ToValue> = vec![&value];
                params.extend(keys.iter().map(|k| k as &dyn ToValue));
                changed.push(tx.execute_once(&sql, &params)?);
            }
            Ok::<_, MetaError>(changed)
        })
        .await
        .expect("updates");
    assert_eq!(
        changed,
        (1..=20u64).collect::<Vec<_>>(),
        "rows changed per run"
    );
    let got: Vec<(String, String)> = m
        .read(|tx| {
            tx.query_vec(
                "SELECT k, v FROM kv WHERE k IN ('k1', 'k2', 'k20', 'k39', 'k0') ORDER BY k",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
        .expect("read");
    // k_i was last written by the run n = max{n : n <= i <= 2n-1}, i.e. n = i.
    let want: Vec<(String, String)> = [
        ("k0", "old"),
        ("k1", "run1"),
        ("k2", "run2"),
        ("k20", "run20"),
        ("k39", "run20"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(got, want);
    let swallowed = m
        .write(|tx| {
            let _ = tx.execute_once("INSERT INTO kv (k, v) VALUES ('k0', 'dup')", params![]);
            tx.execute_once("UPDATE kv SET v = 'lost' WHERE k = 'k1'", params![])?;
            Ok::<_, MetaError>(())
        })
        .await;
    assert!(swallowed.is_err(), "a swallowed error fails the write");
    let k1: String = m
        .read(|tx| tx.query_row("SELECT v FROM kv WHERE k = 'k1'", params![], |r| r.get(0)))
        .await
        .expect("k1");
    assert_eq!(k1, "run1", "nothing of the failed write stays");
}

async fn types_round_trip(m: Meta) {
    let blob: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    let b = blob.clone();
    m.write(move |tx| {
        tx.execute(
            "INSERT INTO vals (id, i, r, t, b) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![1i64, i64::MIN, 0.25f64, "žluťoučký kůň \u{1F600}", b],
        )?;
        tx.execute(
            "INSERT INTO vals (id, i, r, t, b) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![2i64, i64::MAX, -1.5f64, "", Vec::<u8>::new()],
        )?;
        tx.execute(
            "INSERT INTO vals (id, i, r, t, b) VALUES (?, ?, ?, ?, ?)",
            params![
                3i64,
                None::<i64>,
                None::<f64>,
                None::<String>,
                None::<Vec<u8>>
            ],
        )?;
        tx.execute(
            "INSERT INTO vals (id, i) VALUES (?1, ?2)",
            params![4i64, true],
        )?;
        Ok::<_, MetaError>(())
    })
    .await
    .expect("insert");
    type Vals = (
        i64,
        Option<i64>,
        Option<f64>,
        Option<String>,
        Option<Vec<u8>>,
    );
    let rows: Vec<Vals> = m
        .read(|tx| {
            tx.query_vec(
                "SELECT id, i, r, t, b FROM vals ORDER BY id",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
        })
        .await
        .expect("read");
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].1, Some(i64::MIN));
    assert_eq!(rows[0].2, Some(0.25));
    assert_eq!(rows[0].3.as_deref(), Some("žluťoučký kůň \u{1F600}"));
    assert!(
        rows[0].4.as_deref() == Some(&blob[..]),
        "1 MiB blob differs"
    );
    assert_eq!(rows[1].1, Some(i64::MAX));
    assert_eq!(rows[1].3.as_deref(), Some(""));
    assert_eq!(rows[1].4.as_deref(), Some(&[][..]));
    assert_eq!(rows[2], (3, None, None, None, None));
    assert_eq!(rows[3].1, Some(1));
    // Aggregates read as integers (PostgreSQL's SUM of BIGINT is NUMERIC: cast it).
    let (n, sum): (i64, i64) = m
        .read(|tx| {
            tx.query_row(
                "SELECT COUNT(*), CAST(COALESCE(SUM(id), 0) AS BIGINT) FROM vals",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
        .expect("aggregate");
    assert_eq!((n, sum), (4, 10));
    // A conversion that does not fit is an error, not a wrapped value.
    let bad = m
        .read(|tx| {
            tx.query_row("SELECT i FROM vals WHERE id = 1", params![], |r| {
                r.get::<u32>(0)
            })
        })
        .await;
    assert!(matches!(bad, Err(MetaError::Type(_))), "{bad:?}");
    m.close();
}

async fn text_orders_by_bytes(m: Meta) {
    let keys = [
        "b",
        "B",
        "a",
        "_",
        "é",
        "Z",
        "a/b",
        "a-b",
        "a0",
        "~",
        "\u{10000}",
    ];
    m.write(move |tx| {
        for k in keys {
            tx.execute("INSERT INTO kv (k, v) VALUES (?1, 'x')", params![k])?;
        }
        Ok::<_, MetaError>(())
    })
    .await
    .expect("insert");
    let got: Vec<String> = m
        .read(|tx| tx.query_vec("SELECT k FROM kv ORDER BY k", params![], |r| r.get(0)))
        .await
        .expect("read");
    let mut want: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "text must order by bytes");
    let after: Vec<String> = m
        .read(|tx| {
            tx.query_vec(
                "SELECT k FROM kv WHERE k > ?1 ORDER BY k LIMIT ?2",
                params!["a", 3i64],
                |r| r.get(0),
            )
        })
        .await
        .expect("range");
    assert_eq!(after, vec!["a-b", "a/b", "a0"]);
    m.close();
}

async fn failing_writes_are_isolated(m: Meta) {
    let mut tasks = Vec::new();
    for i in 0..200i64 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            m.write(move |tx| {
                tx.execute(
                    "INSERT INTO kv (k, v) VALUES (?1, 'x')",
                    params![format!("k{}", i % 150)],
                )?;
                Ok::<_, MetaError>(())
            })
            .await
        }));
    }
    let (mut ok, mut constraint) = (0, 0);
    for t in tasks {
        match t.await.expect("join") {
            Ok(()) => ok += 1,
            Err(MetaError::Constraint(_)) => constraint += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    // 50 keys collide: those writes fail alone (as constraint errors), the rest commit.
    assert_eq!((ok, constraint), (150, 50));
    let n: i64 = m
        .read(|tx| tx.query_row("SELECT COUNT(*) FROM kv", params![], |r| r.get(0)))
        .await
        .expect("count");
    assert_eq!(n, 150);
    m.close();
}

/// Many writes at once, so that engines which group writes into one transaction mix
/// kept ones with ones that fail (an error of their own after a statement, a duplicate
/// key, a swallowed engine error, a panic): exactly the kept writes commit, and only their
/// durability callbacks run. Engines that first run a group without savepoints and redo it
/// with them when a write is not kept go through both paths here.
async fn mixed_groups_commit_exactly_their_kept_writes(m: Meta) {
    m.write(|tx| {
        tx.execute("INSERT INTO kv (k, v) VALUES ('taken', 'x')", params![])?;
        Ok::<_, MetaError>(())
    })
    .await
    .expect("seed");
    let callbacks = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..400usize {
        let m = m.clone();
        let callbacks = callbacks.clone();
        tasks.push(tokio::spawn(async move {
            let r = m
                .write(move |tx| {
                    tx.execute(
                        "INSERT INTO kv (k, v) VALUES (?1, 'x')",
                        params![format!("m{i}")],
                    )?;
                    let callbacks = callbacks.clone();
                    tx.on_durable(move || {
                        callbacks.fetch_add(1, Ordering::SeqCst);
                    });
                    match i % 10 {
                        1 => Err(MetaError::Engine("this write fails".into())),
                        3 => {
                            tx.execute("INSERT INTO kv (k, v) VALUES ('taken', 'y')", params![])?;
                            Ok(())
                        }
                        5 => {
                            let _ = tx
                                .execute("INSERT INTO kv (k, v) VALUES ('taken', 'y')", params![]);
                            Ok(())
                        }
                        7 if i % 20 == 7 => panic!("this write panics (a test)"),
                        _ => Ok(()),
                    }
                })
                .await;
            (i, r.is_ok())
        }));
    }
    let mut kept = Vec::new();
    for t in tasks {
        // A panicking write's task may see its write dropped; the others answer.
        if let Ok((i, ok)) = t.await {
            assert_eq!(
                ok,
                !matches!(i % 10, 1 | 3 | 5) && i % 20 != 7,
                "write {i} answered {ok}"
            );
            if ok {
                kept.push(i);
            }
        }
    }
    assert_eq!(kept.len(), 400 - 40 * 3 - 20);
    let rows: i64 = m
        .read(|tx| {
            tx.query_row(
                "SELECT COUNT(*) FROM kv WHERE k LIKE 'm%'",
                params![],
                |r| r.get(0),
            )
        })
        .await
        .expect("count");
    assert_eq!(
        rows,
        kept.len() as i64,
        "exactly the kept writes' rows are there"
    );
    assert_eq!(
        callbacks.load(Ordering::SeqCst),
        kept.len(),
        "callbacks of kept writes only"
    );
    m.close();
}

/// Reads counter `c` and writes it back plus one, in one transaction: a lost update shows.
async fn increment(m: &Meta) -> Result<(), MetaError> {
    m.write(|tx| {
        let n: i64 = tx.query_row("SELECT n FROM counters WHERE name = 'c'", params![], |r| {
            r.get(0)
        })?;
        tx.execute(
            "UPDATE counters SET n = ?1 WHERE name = 'c'",
            params![n + 1],
        )?;
        Ok::<_, MetaError>(())
    })
    .await
}

async fn counter(m: &Meta) -> i64 {
    m.read(|tx| {
        tx.query_row("SELECT n FROM counters WHERE name = 'c'", params![], |r| {
            r.get(0)
        })
    })
    .await
    .expect("read")
}

async fn read_modify_write_is_serializable(m: Meta) {
    m.write(|tx| {
        tx.execute("INSERT INTO counters (name, n) VALUES ('c', 0)", params![])?;
        Ok::<_, MetaError>(())
    })
    .await
    .expect("seed");
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move { increment(&m).await }));
    }
    for t in tasks {
        t.await.expect("join").expect("increment");
    }
    let n = counter(&m).await;
    assert_eq!(
        n, 64,
        "concurrent read-modify-write transactions lost updates"
    );
    m.close();
}

/// Two handles on one database (two processes sharing PostgreSQL; on SQLite, two writers
/// of one file): each handle's writes take turns, but the two writers race, and the engine
/// must keep read-modify-write transactions from losing updates.
async fn writers_of_two_handles_do_not_lose_updates(open: Open<'_>) {
    let a = open("two-writers");
    let b = open("two-writers");
    a.write(|tx| {
        tx.execute("INSERT INTO counters (name, n) VALUES ('c', 0)", params![])?;
        Ok::<_, MetaError>(())
    })
    .await
    .expect("seed");
    let mut tasks = Vec::new();
    for i in 0..64 {
        let m = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { increment(&m).await }));
    }
    for t in tasks {
        t.await.expect("join").expect("increment");
    }
    let n = counter(&b).await;
    assert_eq!(n, 64, "two writers lost updates");
    a.close();
    b.close();
}

async fn durability_callbacks_run_only_for_committed_writes(m: Meta) {
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    m.write(move |tx| {
        tx.execute("INSERT INTO kv (k, v) VALUES ('a', 'x')", params![])?;
        let r = r.clone();
        tx.on_durable(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        Ok::<_, MetaError>(())
    })
    .await
    .expect("write");
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the callback ran before the write resolved"
    );
    let r = ran.clone();
    let failed = m
        .write(move |tx| {
            tx.execute("INSERT INTO kv (k, v) VALUES ('b', 'x')", params![])?;
            let r = r.clone();
            tx.on_durable(move || {
                r.fetch_add(100, Ordering::SeqCst);
            });
            Err::<(), _>(MetaError::Engine("this write fails".into()))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "a failed write's callback ran"
    );
    let rows: i64 = m
        .read(|tx| tx.query_row("SELECT COUNT(*) FROM kv", params![], |r| r.get(0)))
        .await
        .expect("count");
    assert_eq!(rows, 1, "a failed write's row stayed");
    // write_with reports through its callback.
    let (tx, rx) = tokio::sync::oneshot::channel();
    m.write_with(
        |t| {
            t.execute("INSERT INTO kv (k, v) VALUES ('c', 'x')", params![])?;
            Ok::<_, MetaError>(7)
        },
        move |r| {
            let _ = tx.send(r);
        },
    );
    assert_eq!(rx.await.expect("reply").expect("write_with"), 7);
    m.close();
}

async fn a_swallowed_engine_error_fails_the_write(m: Meta) {
    m.write(|tx| {
        tx.execute("INSERT INTO kv (k, v) VALUES ('dup', 'x')", params![])?;
        Ok::<_, MetaError>(())
    })
    .await
    .expect("seed");
    let r = m
        .write(|tx| {
            tx.execute("INSERT INTO kv (k, v) VALUES ('other', 'x')", params![])?;
            // A closure that ignores a failed statement cannot commit: PostgreSQL would
            // have aborted the transaction.
            let _ = tx.execute("INSERT INTO kv (k, v) VALUES ('dup', 'y')", params![]);
            Ok::<_, MetaError>(())
        })
        .await;
    assert!(
        r.is_err(),
        "a write that swallowed an engine error committed"
    );
    let n: i64 = m
        .read(|tx| tx.query_row("SELECT COUNT(*) FROM kv", params![], |r| r.get(0)))
        .await
        .expect("count");
    assert_eq!(n, 1);
    // A missing row is not an engine error: the write goes on.
    m.write(|tx| {
        let missing = tx.query_row("SELECT v FROM kv WHERE k = 'nope'", params![], |r| {
            r.get::<String>(0)
        });
        assert!(matches!(missing, Err(MetaError::NoRows)));
        tx.execute("INSERT INTO kv (k, v) VALUES ('after', 'x')", params![])?;
        Ok::<_, MetaError>(())
    })
    .await
    .expect("a missing row does not end the transaction");
    m.close();
}

async fn upserts_and_returning(m: Meta) {
    let ids: Vec<i64> = m
        .write(|tx| {
            let mut ids = Vec::new();
            for t in ["a", "b", "c"] {
                ids.push(tx.query_row(
                    "INSERT INTO vals (t) VALUES (?1) RETURNING id",
                    params![t],
                    |r| r.get(0),
                )?);
            }
            Ok::<_, MetaError>(ids)
        })
        .await
        .expect("returning");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids {ids:?}");
    let next: i64 = m
        .write(|tx| tx.insert_id("INSERT INTO vals (t) VALUES (?1)", params!["d"], "id"))
        .await
        .expect("insert_id");
    assert!(next > ids[2], "insert_id {next} after {ids:?}");
    let t: String = m
        .read(move |tx| {
            tx.query_row("SELECT t FROM vals WHERE id = ?1", params![next], |r| {
                r.get(0)
            })
        })
        .await
        .expect("inserted row");
    assert_eq!(t, "d");
    for v in ["one", "two"] {
        m.write(move |tx| {
            tx.execute(
                "INSERT INTO kv (k, v) VALUES ('u', ?1)
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v, extra = kv.extra + 1",
                params![v],
            )?;
            Ok::<_, MetaError>(())
        })
        .await
        .expect("upsert");
    }
    let (v, extra): (String, i64) = m
        .read(|tx| {
            tx.query_row("SELECT v, extra FROM kv WHERE k = 'u'", params![], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
        })
        .await
        .expect("read");
    assert_eq!((v.as_str(), extra), ("two", 1));
    let changed = m
        .write(|tx| {
            tx.execute(
                "INSERT INTO kv (k, v) VALUES ('u', 'three') ON CONFLICT DO NOTHING",
                params![],
            )
        })
        .await
        .expect("do nothing");
    assert_eq!(changed, 0);
    m.close();
}

async fn missing_rows_and_existence(m: Meta) {
    m.write(|tx| {
        tx.execute("INSERT INTO kv (k, v) VALUES ('here', 'x')", params![])?;
        Ok::<_, MetaError>(())
    })
    .await
    .expect("seed");
    let (yes, no, flag, opt) = m
        .read(|tx| {
            let yes = tx.exists("SELECT 1 FROM kv WHERE k = ?1", params!["here"])?;
            let no = tx.exists("SELECT 1 FROM kv WHERE k = ?1", params!["gone"])?;
            // EXISTS is a boolean on PostgreSQL and an integer on SQLite: both read as bool.
            let flag: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM kv WHERE k = ?1)",
                params!["here"],
                |r| r.get(0),
            )?;
            let opt: Option<String> =
                tx.query_opt("SELECT v FROM kv WHERE k = ?1", params!["gone"], |r| {
                    r.get(0)
                })?;
            Ok::<_, MetaError>((yes, no, flag, opt))
        })
        .await
        .expect("read");
    assert!(yes && !no && flag && opt.is_none());
    m.close();
}

async fn blocking_calls_work_inside_a_runtime(m: Meta) {
    let m2 = m.clone();
    let n = tokio::task::spawn_blocking(move || {
        m2.write_blocking(|tx| {
            tx.execute("INSERT INTO kv (k, v) VALUES ('blk', 'x')", params![])?;
            Ok::<_, MetaError>(())
        })?;
        m2.read_blocking(|tx| {
            tx.query_row("SELECT COUNT(*) FROM kv", params![], |r| r.get::<i64>(0))
        })
    })
    .await
    .expect("join")
    .expect("blocking calls");
    assert_eq!(n, 1);
    m.close();
}

fn migrations_apply_once(open: Open<'_>) {
    let first = open("migrations");
    first.close();
    drop(first);
    let again = open("migrations");
    let n: i64 = again
        .read_blocking(|tx| {
            tx.query_row(
                "SELECT COUNT(*) FROM _migrations WHERE name LIKE 'conformance-%'",
                params![],
                |r| r.get(0),
            )
        })
        .expect("count");
    assert_eq!(n, 2);
    again.close();
}

/// Engines for tests: a temporary directory for SQLite files and, for PostgreSQL, fresh
/// databases on the server `SLUICE_TEST_POSTGRES` names (default
/// `postgres://postgres@127.0.0.1:5432/postgres`, trust authentication), each dropped when
/// this value is dropped. A test that asks for PostgreSQL fails when the server cannot be
/// reached: `scripts/test` starts it.
pub struct TestEngines {
    dir: std::path::PathBuf,
    prefix: String,
    created: std::sync::Mutex<Vec<String>>,
}

/// Whether `SLUICE_TEST_META` asks the part suites to run on PostgreSQL.
pub fn test_engine_is_postgres() -> bool {
    std::env::var("SLUICE_TEST_META").is_ok_and(|v| v == "postgres")
}

/// The server tests create their databases on.
pub fn test_postgres_url() -> String {
    std::env::var("SLUICE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl Default for TestEngines {
    fn default() -> Self {
        TestEngines::new()
    }
}

impl TestEngines {
    pub fn new() -> TestEngines {
        use std::hash::{BuildHasher, RandomState};
        let tag = RandomState::new().hash_one(std::time::Instant::now()) % 1_000_000_000;
        let dir = std::env::temp_dir().join(format!("sluice-meta-{}-{tag}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        TestEngines {
            dir,
            prefix: format!("sluice_t{}_{tag}", std::process::id()),
            created: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A temporary directory removed with this value.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Metadata `name` on the engine the part suites run on: PostgreSQL when
    /// `SLUICE_TEST_META=postgres` (`scripts/test` runs the part and black-box suites once
    /// more that way), SQLite otherwise.
    pub fn meta(&self, name: &str, migrations: &[Migration]) -> Meta {
        let url = self.meta_url(name);
        match crate::open(&url, migrations) {
            Ok(m) => m,
            Err(e) => panic!("cannot open test metadata {url}: {e}"),
        }
    }

    /// The URL of metadata `name` on the engine the part suites run on (see [`Self::meta`]).
    pub fn meta_url(&self, name: &str) -> String {
        if test_engine_is_postgres() {
            self.postgres_url(name)
        } else {
            self.sqlite_url(name)
        }
    }

    /// The URL of a SQLite database `name` in the temporary directory.
    pub fn sqlite_url(&self, name: &str) -> String {
        format!("sqlite://{}", self.dir.join(format!("{name}.db")).display())
    }

    /// The URL of PostgreSQL database `name` of this value, created if needed.
    pub fn postgres_url(&self, name: &str) -> String {
        let db = format!(
            "{}_{}",
            self.prefix,
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let admin = test_postgres_url();
        let mut created = match self.created.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if !created.contains(&db) {
            let mut c = match postgres_admin(&admin) {
                Ok(c) => c,
                Err(e) => panic!(
                    "PostgreSQL at {admin} (SLUICE_TEST_POSTGRES) is needed by this test: {e}"
                ),
            };
            if let Err(e) = c.batch_execute(&format!("CREATE DATABASE {db}")) {
                panic!("cannot create database {db}: {e}");
            }
            created.push(db.clone());
        }
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        format!("{base}/{db}")
    }
}

#[cfg(feature = "postgres")]
struct Admin(String);

#[cfg(feature = "postgres")]
fn postgres_admin(url: &str) -> Result<Admin, String> {
    Ok(Admin(url.to_owned()))
}

#[cfg(feature = "postgres")]
impl Admin {
    fn batch_execute(&mut self, sql: &str) -> Result<(), String> {
        crate::postgres::off_runtime(|| {
            let mut c = ::postgres::Client::connect(&self.0, ::postgres::NoTls)
                .map_err(|e| e.to_string())?;
            c.batch_execute(sql).map_err(|e| e.to_string())
        })
    }
}

#[cfg(not(feature = "postgres"))]
fn postgres_admin(_url: &str) -> Result<NoPostgres, String> {
    Err("the postgres engine is not built in".into())
}

#[cfg(not(feature = "postgres"))]
struct NoPostgres;

#[cfg(not(feature = "postgres"))]
impl NoPostgres {
    fn batch_execute(&mut self, _: &str) -> Result<(), String> {
        Err("the postgres engine is not built in".into())
    }
}

impl Drop for TestEngines {
    fn drop(&mut self) {
        let created = match self.created.lock() {
            Ok(mut c) => std::mem::take(&mut *c),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        if !created.is_empty()
            && let Ok(mut c) = postgres_admin(&test_postgres_url())
        {
            for db in created {
                if let Err(e) =
                    c.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                {
                    eprintln!("cannot drop test database {db}: {e}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
