//! Shard leases: how several processor processes share a mapping's shards.
//!
//! The model is the Kinesis Client Library's lease table, kept in the metadata engine
//! (table `shard_leases`, one row per mapping and shard):
//!
//! - `owner`: the processor that holds the lease (its data directory's instance id, so a
//!   processor started again on its directory resumes its own leases at once), or none;
//! - `counter`: bumped by every renewal and every change of hands. A lease whose counter has
//!   not moved for the lease duration, **as this process saw it on its own clock**, is
//!   expired: no two machines' clocks are compared, so clock skew cannot make a live lease
//!   look dead;
//! - `epoch`: bumped at every change of hands. A checkpoint is saved only by the holder of
//!   the lease at the epoch its worker started with ([`ShardLeases::guard`], checked inside
//!   the checkpoint's own transaction), so a processor that lost a lease — it stalled past
//!   the duration, or missed a hand-over — can never move the new holder's checkpoint;
//! - `wanted_by`: a processor that holds fewer than its share asks for one lease of the
//!   busiest processor; the holder stops its worker (which writes its last checkpoint) and
//!   hands the lease over itself. So rebalancing is gap-free *and* never has two workers on
//!   one shard; only a takeover of an expired lease (the holder died or stalled) can
//!   overlap with a holder that is still running but no longer renewing;
//! - `finished`: the shard is closed and every record of it is done, so its children may be
//!   leased (a child is never leased before its parents are finished: per-key order holds
//!   across a split or merge, as in one process).
//!
//! Each tick (every third of the lease duration) a processor renews what it holds, notes
//! the counters it sees, and takes expired leases up to its fair share — the shards not yet
//! finished divided by the live owners (the owners of unexpired leases, itself included),
//! rounded up; if it still has less, it asks for one lease of the processor with the most.
//! A processor that stops gives its leases back ([`ShardLeases::release_all`]), so the
//! others take them at their next tick instead of after the duration.
//!
//! A new holder resumes after the shard's checkpoint: delivery stays at-least-once, no
//! record is skipped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_meta::{Meta, Migration, Tx, params};

use crate::ProcessorError;

pub const MIGRATION: Migration = Migration {
    name: "processor-0004",
    sql: "
CREATE TABLE shard_leases (
    mapping TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    owner TEXT,
    counter INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    wanted_by TEXT,
    finished INTEGER NOT NULL,
    PRIMARY KEY (mapping, shard_id)
);
",
};

/// The default lease duration: a processor that died is replaced after this long.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// A shard as the lease table needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    pub shard_id: String,
    /// Its parents still in the stream (a trimmed parent has nothing left to read).
    pub parents: Vec<String>,
}

/// What a processor does with a mapping's shards after a [`ShardLeases::tick`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The shards to run a worker for (held, not wanted by another processor).
    pub run: Vec<String>,
    /// Shards another processor asked for: stop their workers, then
    /// [`ShardLeases::hand_over`].
    pub hand_over: Vec<String>,
}

#[derive(Debug, Clone)]
struct Row {
    shard_id: String,
    owner: Option<String>,
    counter: i64,
    epoch: i64,
    wanted_by: Option<String>,
    finished: bool,
}

#[derive(Default)]
struct MappingState {
    /// Leases held, with the epoch each was taken at.
    held: HashMap<String, i64>,
    /// The counter each lease had when this process first saw it at that value.
    seen: HashMap<String, (i64, Instant)>,
    /// When this process last read the table.
    last_read: Option<Instant>,
}

/// The lease table as one processor process uses it.
pub struct ShardLeases {
    db: Meta,
    owner: String,
    duration: Duration,
    state: Mutex<HashMap<String, MappingState>>,
}

impl ShardLeases {
    /// `owner` must be unique among the live processes (sluice uses its data directory's
    /// instance id: a process started again on the same directory resumes its leases).
    pub fn new(db: Meta, owner: impl Into<String>, duration: Duration) -> Arc<Self> {
        Arc::new(ShardLeases {
            db,
            owner: owner.into(),
            duration,
            state: Mutex::new(HashMap::new()),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// How often a processor should [`ShardLeases::tick`].
    pub fn tick_every(&self) -> Duration {
        self.duration / 3
    }

    /// The owner and epoch a checkpoint of `shard` must be saved under, if this process
    /// holds its lease.
    pub fn guard(&self, mapping: &str, shard: &str) -> Option<(String, i64)> {
        let state = self.state.lock().ok()?;
        let epoch = *state.get(mapping)?.held.get(shard)?;
        Some((self.owner.clone(), epoch))
    }

    /// Renews this process's leases of `mapping`, takes or asks for its share of `shards`,
    /// and says which shards to run.
    pub async fn tick(&self, mapping: &str, shards: &[ShardSpec]) -> Result<Plan, ProcessorError> {
        let held: Vec<(String, i64)> = self
            .with_state(mapping, |s| {
                s.held.iter().map(|(k, v)| (k.clone(), *v)).collect()
            })
            .unwrap_or_default();
        let (m, owner) = (mapping.to_owned(), self.owner.clone());
        // Rows are created for shards this process has not seen in the table yet (the
        // insert is a no-op for a row another process created).
        let ids: Vec<String> = self
            .with_state(mapping, |s| {
                shards
                    .iter()
                    .filter(|sh| !s.seen.contains_key(&sh.shard_id))
                    .map(|sh| sh.shard_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        let rows = self
            .db
            .write(move |c| -> Result<Vec<Row>, ProcessorError> {
                for id in &ids {
                    c.execute(
                        "INSERT INTO shard_leases (mapping, shard_id, owner, counter, epoch, wanted_by, finished)
                         VALUES (?1, ?2, NULL, 0, 0, NULL, 0) ON CONFLICT DO NOTHING",
                        params![m, id],
                    )?;
                }
                for (shard, epoch) in &held {
                    c.execute(
                        "UPDATE shard_leases SET counter = counter + 1
                         WHERE mapping = ?1 AND shard_id = ?2 AND owner = ?3 AND epoch = ?4",
                        params![m, shard, owner, epoch],
                    )?;
                }
                read_rows(c, &m)
            })
            .await?;
        let now = Instant::now();
        let present: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
        let by_id: HashMap<&str, &Row> = rows.iter().map(|r| (r.shard_id.as_str(), r)).collect();
        let Some((mine, expired, live_owners, wants_pending)) = self.with_state(mapping, |s| {
            // What this process holds is what the table says it holds.
            s.held = rows
                .iter()
                .filter(|r| r.owner.as_deref() == Some(&self.owner) && !r.finished)
                .map(|r| (r.shard_id.clone(), r.epoch))
                .collect();
            // After a gap longer than the lease duration in this process's own
            // observations (the metadata engine was down, or this process stalled), a
            // counter that did not move says nothing about its owner: everyone's renewals
            // failed alike. Observation starts again from now, so an outage does not make
            // every lease look expired at once.
            if s.last_read
                .is_some_and(|t| now.duration_since(t) > self.duration)
            {
                s.seen.clear();
            }
            s.last_read = Some(now);
            let mut expired = Vec::new();
            let mut live: HashMap<String, usize> = HashMap::new();
            for r in &rows {
                let first_seen = match s.seen.get(&r.shard_id) {
                    Some((c, at)) if *c == r.counter => *at,
                    _ => {
                        s.seen.insert(r.shard_id.clone(), (r.counter, now));
                        now
                    }
                };
                if r.finished || !present.contains(r.shard_id.as_str()) {
                    continue;
                }
                match &r.owner {
                    None => expired.push(r.clone()),
                    Some(o) if *o == self.owner => {}
                    Some(_) if now.duration_since(first_seen) >= self.duration => {
                        expired.push(r.clone())
                    }
                    Some(o) => *live.entry(o.clone()).or_default() += 1,
                }
            }
            s.seen.retain(|k, _| by_id.contains_key(k.as_str()));
            let wants = rows
                .iter()
                .any(|r| r.wanted_by.as_deref() == Some(&self.owner));
            (s.held.clone(), expired, live, wants)
        }) else {
            return Ok(Plan::default());
        };

        // Eligible: present, not finished, every parent still in the table finished.
        let eligible = |id: &str| -> bool {
            let Some(spec) = shards.iter().find(|s| s.shard_id == id) else {
                return false;
            };
            by_id.get(id).is_some_and(|r| !r.finished)
                && spec
                    .parents
                    .iter()
                    .all(|p| by_id.get(p.as_str()).is_none_or(|r| r.finished))
        };
        let eligible_count = shards.iter().filter(|s| eligible(&s.shard_id)).count();
        let owners = live_owners.len() + 1;
        let target = eligible_count.div_ceil(owners);
        let mut plan = Plan::default();
        let mut holding = 0usize;
        for shard in mine.keys() {
            let row = by_id.get(shard.as_str());
            if row
                .and_then(|r| r.wanted_by.as_deref())
                .is_some_and(|w| w != self.owner)
            {
                plan.hand_over.push(shard.clone());
            } else if eligible(shard) {
                plan.run.push(shard.clone());
                holding += 1;
            }
        }

        let mut taken = Vec::new();
        if holding < target {
            let candidates: Vec<Row> = expired
                .into_iter()
                .filter(|r| eligible(&r.shard_id))
                .take(target - holding)
                .collect();
            if !candidates.is_empty() {
                let (m, owner) = (mapping.to_owned(), self.owner.clone());
                taken = self
                    .db
                    .write(move |c| -> Result<Vec<(String, i64)>, ProcessorError> {
                        let mut got = Vec::new();
                        for r in &candidates {
                            let n = c.execute(
                                "UPDATE shard_leases SET owner = ?3, counter = counter + 1,
                                     epoch = epoch + 1, wanted_by = NULL
                                 WHERE mapping = ?1 AND shard_id = ?2 AND counter = ?4
                                   AND finished = 0",
                                params![m, r.shard_id, owner, r.counter],
                            )?;
                            if n == 1 {
                                got.push((r.shard_id.clone(), r.epoch + 1));
                            }
                        }
                        Ok(got)
                    })
                    .await?;
            } else if !wants_pending {
                // Nothing free: ask the busiest live owner for one of its leases.
                if let Some((busiest, n)) = live_owners
                    .iter()
                    .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                    && *n > target.max(holding + 1)
                {
                    let pick = rows.iter().find(|r| {
                        r.owner.as_deref() == Some(busiest.as_str())
                            && r.wanted_by.is_none()
                            && eligible(&r.shard_id)
                    });
                    if let Some(r) = pick {
                        let (m, owner, shard, from) = (
                            mapping.to_owned(),
                            self.owner.clone(),
                            r.shard_id.clone(),
                            busiest.clone(),
                        );
                        self.db
                            .write(move |c| -> Result<u64, ProcessorError> {
                                Ok(c.execute(
                                    "UPDATE shard_leases SET wanted_by = ?3
                                     WHERE mapping = ?1 AND shard_id = ?2 AND owner = ?4
                                       AND wanted_by IS NULL",
                                    params![m, shard, owner, from],
                                )?)
                            })
                            .await?;
                        tracing::info!(mapping, shard = %r.shard_id, from = %busiest, "asked for a shard lease to balance the load");
                    }
                }
            }
        }
        if !taken.is_empty() {
            self.with_state(mapping, |s| {
                for (shard, epoch) in &taken {
                    s.held.insert(shard.clone(), *epoch);
                }
            });
            for (shard, _) in taken {
                tracing::info!(mapping, shard = %shard, "took a shard lease");
                plan.run.push(shard);
            }
        }
        plan.run.sort();
        plan.hand_over.sort();
        Ok(plan)
    }

    /// Gives `shard`'s lease to the processor that asked for it (its worker has stopped
    /// and written its last checkpoint).
    pub async fn hand_over(&self, mapping: &str, shard: &str) -> Result<(), ProcessorError> {
        self.let_go(mapping, shard, "owner = wanted_by").await?;
        tracing::info!(mapping, shard, "handed a shard lease over");
        Ok(())
    }

    /// `shard` is closed and every record of it done: its children may be leased.
    pub async fn finish(&self, mapping: &str, shard: &str) -> Result<(), ProcessorError> {
        self.let_go(mapping, shard, "finished = 1, owner = NULL")
            .await
    }

    /// Lets go of a held lease, setting `set` (a fixed SQL assignment list) as it changes
    /// hands.
    async fn let_go(
        &self,
        mapping: &str,
        shard: &str,
        set: &'static str,
    ) -> Result<(), ProcessorError> {
        let Some(epoch) = self.take_held(mapping, shard) else {
            return Ok(());
        };
        let (m, s, owner) = (mapping.to_owned(), shard.to_owned(), self.owner.clone());
        let sql = format!(
            "UPDATE shard_leases SET {set}, wanted_by = NULL,
                 counter = counter + 1, epoch = epoch + 1
             WHERE mapping = ?1 AND shard_id = ?2 AND owner = ?3 AND epoch = ?4"
        );
        self.db
            .write(move |c| -> Result<u64, ProcessorError> {
                Ok(c.execute(&sql, params![m, s, owner, epoch])?)
            })
            .await?;
        Ok(())
    }

    /// Gives back every lease of `mapping` this process holds (its workers have stopped),
    /// and withdraws its requests for others' leases.
    pub async fn release_all(&self, mapping: &str) -> Result<(), ProcessorError> {
        self.with_state(mapping, |s| s.held.clear());
        let (m, owner) = (mapping.to_owned(), self.owner.clone());
        let n = self
            .db
            .write(move |c| -> Result<u64, ProcessorError> {
                c.execute(
                    "UPDATE shard_leases SET wanted_by = NULL WHERE mapping = ?1 AND wanted_by = ?2",
                    params![m, owner],
                )?;
                Ok(c.execute(
                    "UPDATE shard_leases SET owner = NULL, wanted_by = NULL,
                         counter = counter + 1, epoch = epoch + 1
                     WHERE mapping = ?1 AND owner = ?2",
                    params![m, owner],
                )?)
            })
            .await?;
        if n > 0 {
            tracing::info!(mapping, leases = n, "gave shard leases back");
        }
        Ok(())
    }

    /// Whether `shard` of `mapping` is finished (closed and done), as the table says.
    pub async fn is_finished(&self, mapping: &str, shard: &str) -> Result<bool, ProcessorError> {
        let (m, s) = (mapping.to_owned(), shard.to_owned());
        self.db
            .read(move |c| -> Result<bool, ProcessorError> {
                Ok(c.exists(
                    "SELECT 1 FROM shard_leases WHERE mapping = ?1 AND shard_id = ?2 AND finished = 1",
                    params![m, s],
                )?)
            })
            .await
    }

    fn take_held(&self, mapping: &str, shard: &str) -> Option<i64> {
        self.with_state(mapping, |s| s.held.remove(shard)).flatten()
    }

    fn with_state<T>(&self, mapping: &str, f: impl FnOnce(&mut MappingState) -> T) -> Option<T> {
        let mut state = self.state.lock().ok()?;
        Some(f(state.entry(mapping.to_owned()).or_default()))
    }
}

/// Checks, inside a checkpoint's transaction, that `owner` still holds `shard`'s lease at
/// `epoch`; the transaction fails otherwise.
pub(crate) fn check_in_tx(
    c: &Tx<'_>,
    mapping: &str,
    shard: &str,
    guard: Option<&(String, i64)>,
) -> Result<(), ProcessorError> {
    let Some((owner, epoch)) = guard else {
        return Err(ProcessorError::LeaseLost(format!(
            "this processor does not hold the lease of shard {shard} of mapping {mapping}"
        )));
    };
    let held = c.exists(
        "SELECT 1 FROM shard_leases
         WHERE mapping = ?1 AND shard_id = ?2 AND owner = ?3 AND epoch = ?4",
        params![mapping, shard, owner, epoch],
    )?;
    if held {
        Ok(())
    } else {
        Err(ProcessorError::LeaseLost(format!(
            "the lease of shard {shard} of mapping {mapping} passed to another processor"
        )))
    }
}

fn read_rows(c: &Tx<'_>, mapping: &str) -> Result<Vec<Row>, ProcessorError> {
    Ok(c.query_vec(
        "SELECT shard_id, owner, counter, epoch, wanted_by, finished FROM shard_leases
         WHERE mapping = ?1 ORDER BY shard_id",
        params![mapping],
        |r| {
            Ok(Row {
                shard_id: r.get(0)?,
                owner: r.get(1)?,
                counter: r.get(2)?,
                epoch: r.get(3)?,
                wanted_by: r.get(4)?,
                finished: r.get::<i64>(5)? != 0,
            })
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(ids: &[&str]) -> Vec<ShardSpec> {
        ids.iter()
            .map(|id| ShardSpec {
                shard_id: (*id).into(),
                parents: Vec::new(),
            })
            .collect()
    }

    const D: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn processors_share_shards_and_take_over_from_one_that_stops_renewing() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("leases", crate::embedded::MIGRATIONS);
        let a = ShardLeases::new(db.clone(), "a", D);
        let b = ShardLeases::new(db.clone(), "b", D);
        let shards = specs(&["s0", "s1", "s2", "s3"]);
        // Alone, a takes everything.
        let plan = a.tick("m", &shards).await.expect("tick");
        assert_eq!(plan.run, vec!["s0", "s1", "s2", "s3"]);
        assert_eq!(a.guard("m", "s0"), Some(("a".into(), 1)));
        // b joins: nothing is free, so it asks a for one lease at a time; a hands each over.
        for _ in 0..4 {
            let pb = b.tick("m", &shards).await.expect("tick b");
            let pa = a.tick("m", &shards).await.expect("tick a");
            for s in &pa.hand_over {
                assert!(!pa.run.contains(s), "a shard handed over is not run");
                a.hand_over("m", s).await.expect("hand over");
            }
            let _ = pb;
        }
        let pa = a.tick("m", &shards).await.expect("tick a");
        let pb = b.tick("m", &shards).await.expect("tick b");
        assert_eq!(pa.run.len(), 2, "{pa:?} {pb:?}");
        assert_eq!(pb.run.len(), 2, "{pa:?} {pb:?}");
        assert!(pa.run.iter().all(|s| !pb.run.contains(s)));
        // The epoch moved with the hand-over: a's old epoch no longer guards b's shard.
        let moved = &pb.run[0];
        assert_eq!(a.guard("m", moved), None);
        let (_, epoch) = b.guard("m", moved).expect("b holds it");
        db.write(move |c| -> Result<(), ProcessorError> {
            check_in_tx(c, "m", "s_unknown", Some(&("b".into(), 1))).expect_err("not held");
            Ok(())
        })
        .await
        .expect("write");
        let (m2, e2) = (moved.clone(), epoch);
        db.write(move |c| check_in_tx(c, "m", &m2, Some(&("b".into(), e2))))
            .await
            .expect("b's guard holds");
        let m3 = moved.clone();
        let err = db
            .write(move |c| check_in_tx(c, "m", &m3, Some(&("a".into(), e2 - 1))))
            .await
            .expect_err("a's stale guard fails");
        assert!(matches!(err, ProcessorError::LeaseLost(_)), "{err}");

        // a stops renewing (it died): b, ticking as usual, sees a's counters stand still
        // for the duration and takes a's shards.
        let started = Instant::now();
        let mut pb = b.tick("m", &shards).await.expect("tick");
        while started.elapsed() < D + Duration::from_millis(150) {
            tokio::time::sleep(D / 6).await;
            pb = b.tick("m", &shards).await.expect("tick");
        }
        assert_eq!(pb.run, vec!["s0", "s1", "s2", "s3"]);
        // a comes back: its renewals fail, it holds nothing and runs nothing.
        let pa = a.tick("m", &shards).await.expect("tick");
        assert!(pa.run.is_empty(), "{pa:?}");
        assert_eq!(a.guard("m", "s0"), None);
        // a2 stops observing for longer than the lease duration (as when the metadata
        // engine was down for everyone): a's leases do not look expired to it at once afterwards.
        let a2 = ShardLeases::new(db.clone(), "a2", D);
        a2.tick("m", &shards).await.expect("tick");
        tokio::time::sleep(D + Duration::from_millis(50)).await;
        let p = a2.tick("m", &shards).await.expect("tick");
        assert!(p.run.is_empty(), "no takeover right after a gap: {p:?}");
        // b leaves cleanly: a takes everything at its next tick, no wait.
        b.release_all("m").await.expect("release");
        let pa = a.tick("m", &shards).await.expect("tick");
        assert_eq!(pa.run, vec!["s0", "s1", "s2", "s3"]);
    }

    #[tokio::test]
    async fn a_child_is_leased_only_once_its_parents_are_finished() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("leases", crate::embedded::MIGRATIONS);
        let a = ShardLeases::new(db.clone(), "a", D);
        let mut shards = specs(&["p"]);
        shards.push(ShardSpec {
            shard_id: "c1".into(),
            parents: vec!["p".into()],
        });
        shards.push(ShardSpec {
            shard_id: "c2".into(),
            parents: vec!["p".into()],
        });
        let plan = a.tick("m", &shards).await.expect("tick");
        assert_eq!(plan.run, vec!["p"]);
        assert!(!a.is_finished("m", "p").await.expect("read"));
        a.finish("m", "p").await.expect("finish");
        assert!(a.is_finished("m", "p").await.expect("read"));
        let plan = a.tick("m", &shards).await.expect("tick");
        assert_eq!(plan.run, vec!["c1", "c2"]);
        // Mappings do not share leases.
        let plan = a.tick("other", &shards).await.expect("tick");
        assert_eq!(plan.run, vec!["p"]);
    }
}
