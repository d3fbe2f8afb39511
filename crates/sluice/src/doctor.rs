//! `sluice doctor`: checks sluice's data without changing it.
//!
//! Opens the metadata engine — the SQLite file read-only (no migrations, no writer; a running
//! server may keep serving meanwhile), or PostgreSQL without applying migrations — the
//! record engine read-only, and the blob engine (creating nothing); runs the metadata
//! engine's own check (SQLite's integrity check; PostgreSQL's durability settings), the
//! stream's (every record of the log against its checksum, every shard's counters) and the
//! blob engine's (`Blobs::check`: an S3 bucket answers a listing; a blob directory exists and
//! takes a file), and the data directory's permissions (private to its owner, see
//! `datadir`). With `--deep`, it also reads every object's bytes, streamed, and checks them
//! against the checksum written with them (`EmbeddedStore::scrub`: SHA-256 of objects, MD5
//! of stored parts), naming each damaged or missing blob; without it, no object is read, so
//! the doctor stays fast whatever the store holds. Prints what it found; fails (non-zero
//! exit) if anything is wrong.

use anyhow::{Context, Result, bail};
use sluice_meta::Meta;
use sluice_stream::embedded::EmbeddedStream;

use crate::config::Settings;
use crate::wiring::shown_url;

pub(crate) fn run(settings: &Settings, stuck_after_secs: u64, deep: bool) -> Result<()> {
    let shown = shown_url(&settings.meta);
    let db = match settings.sqlite_path() {
        Some(path) => {
            if !path.is_file() {
                bail!("no database at {}", path.display());
            }
            Meta::open_sqlite_read_only(&path)
                .with_context(|| format!("cannot open {} read-only", path.display()))?
        }
        None => sluice_meta::open(&settings.meta, &[])
            .with_context(|| format!("cannot open the metadata engine {shown}"))?,
    };
    outln!("meta: {shown}");
    let blobs = sluice_blobs::inspect(&settings.store);
    let blobs_shown = match &blobs {
        Ok(b) => b.describe(),
        Err(_) => shown_url(&settings.store),
    };
    outln!("blobs: {blobs_shown}");
    let mut problems = 0usize;

    // Read-only here: a command that writes makes a merely readable directory private.
    match crate::datadir::inspect(&settings.data_dir) {
        Ok(found) if found.is_empty() => outln!("data dir check: ok (private to its owner)"),
        Ok(found) => {
            outln!("data dir check: {} problems", found.len());
            for l in &found {
                outln!("  problem: {l}");
            }
            problems += found.len();
        }
        Err(e) => {
            outln!("data dir check: failed to run: {e:#}");
            problems += 1;
        }
    }

    match db.check() {
        Ok(found) if found.is_empty() => outln!("meta check: ok"),
        Ok(found) => {
            outln!("meta check: {} problems", found.len());
            for l in &found {
                outln!("  problem: {l}");
            }
            problems += found.len();
        }
        Err(e) => {
            outln!("meta check: failed to run: {e}");
            problems += 1;
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut described = shown_url(&settings.records);
    let checked = rt
        .block_on(sluice_stream::open_records_read_only(
            &settings.records,
            &settings.stream_log_dir(),
        ))
        .map_err(anyhow::Error::from)
        .and_then(|records| {
            described = records.describe();
            outln!("records: {described}");
            EmbeddedStream::open_read_only_on(db.clone(), records).map_err(anyhow::Error::from)
        })
        .and_then(|stream| rt.block_on(stream.check()).map_err(anyhow::Error::from));
    match checked {
        Ok(report) if report.is_ok() => outln!(
            "stream check: ok ({} records checked against their checksums)",
            report.records_checked
        ),
        Ok(report) => {
            outln!(
                "stream check: {} problems ({} records checked)",
                report.problems.len(),
                report.records_checked
            );
            for p in &report.problems {
                outln!("  problem: {p}");
            }
            problems += report.problems.len();
        }
        Err(e) => {
            outln!("stream check: failed to run: {e:#}");
            problems += 1;
        }
    }

    match rt.block_on(unfinished(&db, stuck_after_secs)) {
        Ok(0) => {
            outln!("uploads: none acknowledged and unfinished for more than {stuck_after_secs} s")
        }
        Ok(n) => problems += n as usize,
        Err(e) => {
            outln!("uploads check: failed to run: {e:#}");
            problems += 1;
        }
    }

    let checked = match &blobs {
        Ok(b) => rt.block_on(b.check()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let blobs_usable = checked.is_ok();
    match checked {
        Ok(()) => outln!("blobs check: ok"),
        Err(e) => {
            outln!("blobs check: failed: {e}");
            problems += 1;
        }
    }

    match blobs {
        Ok(b) if deep && blobs_usable => {
            let store = sluice_store::embedded::EmbeddedStore::new(db.clone(), b);
            match rt.block_on(store.scrub()) {
                Ok(report) => {
                    let read = format!(
                        "{} objects and {} stored parts, {} bytes, read and checked against their checksums",
                        report.objects, report.parts, report.bytes
                    );
                    if report.problems.is_empty() {
                        outln!("deep check: ok ({read})");
                    } else {
                        outln!("deep check: {} problems ({read})", report.problems.len());
                        for p in &report.problems {
                            outln!("  problem: {p}");
                        }
                        problems += report.problems.len();
                    }
                }
                Err(e) => {
                    outln!("deep check: failed to run: {e}");
                    problems += 1;
                }
            }
        }
        _ if deep => outln!("deep check: not run (the blob engine cannot be used)"),
        _ => outln!("deep check: not run (sluice doctor --deep reads every object's bytes)"),
    }
    if problems > 0 {
        bail!(
            "sluice's data has {problems} problem{} (metadata {shown}, records {described}, blobs {blobs_shown})",
            if problems == 1 { "" } else { "s" },
        );
    }
    outln!("no problems found");
    Ok(())
}

/// Uploads acknowledged (a 200 was sent) and still queued or processing more than
/// `stuck_after_secs` after: prints how many and the oldest ones, each with where its
/// record is and whether the checkpoint of the mapping that tracks its status (the oldest
/// one registered on its stream) has passed it — passed means the outcome was lost; not
/// passed means the processor is down or behind. Returns how many there are.
///
/// Reads the whole uploads table (no index on status: the write path does not pay for one).
async fn unfinished(db: &Meta, stuck_after_secs: u64) -> Result<u64> {
    const SHOWN: usize = 20;
    let cutoff =
        sluice_meta::now_ms() - (stuck_after_secs.min(i64::MAX as u64 / 1000) as i64) * 1000;
    let (n, oldest) = sluice_uploads::embedded::unfinished(db, cutoff, SHOWN).await?;
    if n == 0 {
        return Ok(0);
    }
    outln!("uploads: {n} acknowledged and unfinished for more than {stuck_after_secs} s");
    let checkpoints = sluice_processor::embedded::EmbeddedCheckpoints::new(db.clone());
    for u in &oldest {
        let age = (sluice_meta::now_ms() - u.created_ms) / 1000;
        let place = match sluice_uploads::embedded::tracking_checkpoint(&checkpoints, u).await? {
            _ if u.sequence_number.is_empty() => {
                "record not delivered to the stream yet".to_owned()
            }
            None => format!(
                "{} {}: no mapping has run on stream {}",
                u.shard_id, u.sequence_number, u.stream
            ),
            Some((m, true)) => format!(
                "{} {}: mapping {m} checkpointed past it, its outcome was not recorded (a running server puts it into the stream again)",
                u.shard_id, u.sequence_number
            ),
            Some((m, false)) => format!(
                "{} {}: mapping {m} has not reached it (stopped or behind)",
                u.shard_id, u.sequence_number
            ),
        };
        outln!(
            "  problem: upload {} ({}/{}) {} for {age} s; {place}",
            u.id,
            u.bucket,
            u.key,
            u.status.as_str()
        );
    }
    if n > oldest.len() as u64 {
        outln!("  … and {} more", n - oldest.len() as u64);
    }
    Ok(n)
}
