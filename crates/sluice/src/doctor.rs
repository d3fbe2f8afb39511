//! `sluice doctor`: checks the data directory's database without changing it.
//!
//! Opens `<data-dir>/sluice.db` read-only (no migrations, no writer; a running server may
//! keep serving meanwhile), runs SQLite's `quick_check`, then the stream backend's own
//! check (SQLite's integrity check, every record against its checksum, every shard's
//! counters). Prints what it found; fails (non-zero exit) if anything is wrong.

use anyhow::{Context, Result, bail};
use sluice_db::{Db, DbError};
use sluice_stream::embedded::EmbeddedStream;

use crate::config::Settings;

pub(crate) fn run(settings: &Settings) -> Result<()> {
    let path = settings.db_path();
    if !path.is_file() {
        bail!("no database at {}", path.display());
    }
    println!("database: {}", path.display());
    let db = Db::open_read_only(&path)
        .with_context(|| format!("cannot open {} read-only", path.display()))?;
    let mut problems = 0usize;

    let quick = db.read_blocking(|c| {
        let mut st = c.prepare("PRAGMA quick_check")?;
        let lines = st
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, DbError>(lines)
    });
    match quick {
        Ok(lines) if lines.iter().all(|l| l == "ok") => println!("sqlite quick_check: ok"),
        Ok(lines) => {
            println!("sqlite quick_check: {} problems", lines.len());
            for l in &lines {
                println!("  problem: {l}");
            }
            problems += lines.len();
        }
        Err(e) => {
            println!("sqlite quick_check: failed to run: {e}");
            problems += 1;
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let checked = EmbeddedStream::open_read_only(db.clone())
        .map_err(anyhow::Error::from)
        .and_then(|stream| rt.block_on(stream.check()).map_err(anyhow::Error::from));
    match checked {
        Ok(report) if report.is_ok() => println!(
            "stream check: ok ({} records checked against their checksums)",
            report.records_checked
        ),
        Ok(report) => {
            println!(
                "stream check: {} problems ({} records checked)",
                report.problems.len(),
                report.records_checked
            );
            for p in &report.problems {
                println!("  problem: {p}");
            }
            problems += report.problems.len();
        }
        Err(e) => {
            println!("stream check: failed to run: {e:#}");
            problems += 1;
        }
    }
    if problems > 0 {
        bail!(
            "the database {} has {problems} problem{}",
            path.display(),
            if problems == 1 { "" } else { "s" }
        );
    }
    println!("no problems found");
    Ok(())
}
