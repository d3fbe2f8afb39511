//! Checkpoints, mapping definitions and function logs in the shared embedded database.

use std::collections::HashMap;

use async_trait::async_trait;
use sluice_meta::Tx;
use sluice_meta::params;
use sluice_meta::{Meta, Migration, now_ms};

use crate::mappings::{MappingDefinition, MappingState, MappingStore};
use crate::{Checkpoints, MappingStats, ProcessorError};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "processor-0001",
        sql: "
CREATE TABLE mappings (
    name TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE checkpoints (
    mapping TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    sequence_number TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (mapping, shard_id)
) WITHOUT ROWID;
",
    },
    Migration {
        name: "processor-0002",
        sql: "
CREATE TABLE mapping_definitions (
    name TEXT PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    definition TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE function_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mapping TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX function_logs_by_mapping ON function_logs (mapping, id);
",
    },
    Migration {
        name: "processor-0003",
        sql: "
CREATE TABLE mapping_stats (
    name TEXT PRIMARY KEY,
    stats TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
",
    },
    crate::leases::MIGRATION,
];

#[derive(Clone)]
pub struct EmbeddedCheckpoints {
    db: Meta,
    /// With shard leases, a checkpoint is saved only under the lease its shard is held
    /// by (checked in the checkpoint's own transaction).
    leases: Option<std::sync::Arc<crate::leases::ShardLeases>>,
}

impl EmbeddedCheckpoints {
    pub fn new(db: Meta) -> Self {
        EmbeddedCheckpoints { db, leases: None }
    }

    /// Checkpoints saved only by the holder of their shard's lease.
    pub fn with_leases(mut self, leases: std::sync::Arc<crate::leases::ShardLeases>) -> Self {
        self.leases = Some(leases);
        self
    }

    /// The mappings that have run on `stream`, oldest first (the first is the one that
    /// tracks upload status, unless it was disabled since).
    pub async fn registered(&self, stream: &str) -> Result<Vec<String>, ProcessorError> {
        let s = stream.to_owned();
        self.db
            .read(move |c| {
                Ok(c.query_vec(
                    "SELECT name FROM mappings WHERE stream = ?1 ORDER BY created_ms, name",
                    params![s],
                    |r| r.get(0),
                )?)
            })
            .await
    }
}

#[async_trait]
impl Checkpoints for EmbeddedCheckpoints {
    async fn register(&self, mapping: &str, stream: &str) -> Result<i64, ProcessorError> {
        self.register_at(mapping, stream, now_ms()).await
    }

    async fn register_at(
        &self,
        mapping: &str,
        stream: &str,
        created_ms: i64,
    ) -> Result<i64, ProcessorError> {
        let (m, s) = (mapping.to_owned(), stream.to_owned());
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO mappings (name, stream, created_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                    params![m, s, created_ms],
                )?;
                Ok(c.query_row(
                    "SELECT created_ms FROM mappings WHERE name = ?1",
                    params![&m],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    async fn load(&self, mapping: &str, shard_id: &str) -> Result<Option<String>, ProcessorError> {
        let (m, s) = (mapping.to_owned(), shard_id.to_owned());
        self.db
            .read(move |c| {
                Ok(c.query_opt(
                    "SELECT sequence_number FROM checkpoints WHERE mapping = ?1 AND shard_id = ?2",
                    params![m, s],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    async fn save(&self, mapping: &str, shard_id: &str, seq: &str) -> Result<(), ProcessorError> {
        self.save_with(mapping, shard_id, Some(seq), Box::new(|_| Ok(())))
            .await
    }

    fn db(&self) -> Option<&Meta> {
        Some(&self.db)
    }

    async fn save_with(
        &self,
        mapping: &str,
        shard_id: &str,
        seq: Option<&str>,
        mut extra: crate::TxWrite,
    ) -> Result<(), ProcessorError> {
        let (m, s, q) = (
            mapping.to_owned(),
            shard_id.to_owned(),
            seq.map(str::to_owned),
        );
        // With leases: `None` inside when this process does not hold the shard.
        let guard = self.leases.as_ref().map(|l| l.guard(mapping, shard_id));
        self.db
            .write(move |c| {
                if let Some(g) = &guard {
                    crate::leases::check_in_tx(c, &m, &s, g.as_ref())?;
                }
                extra(c)?;
                match &q {
                    Some(q) => save_in_tx(c, &m, &s, q),
                    None => Ok(()),
                }
            })
            .await
    }
}

fn save_in_tx(c: &Tx<'_>, m: &str, s: &str, q: &str) -> Result<(), ProcessorError> {
    // Only for a registered mapping: a worker of a mapping deleted a moment ago (still
    // running until the runner stops it) must not leave a checkpoint a new mapping of the
    // same name would resume from.
    c.execute(
        "INSERT INTO checkpoints (mapping, shard_id, sequence_number, updated_ms)
         SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), CAST(?3 AS TEXT), CAST(?4 AS BIGINT)
         WHERE EXISTS (SELECT 1 FROM mappings WHERE name = ?1)
         ON CONFLICT (mapping, shard_id) DO UPDATE
         SET sequence_number = excluded.sequence_number, updated_ms = excluded.updated_ms",
        params![m, s, q, now_ms()],
    )?;
    Ok(())
}

/// Mapping definitions in the shared embedded database (table `mapping_definitions`, the
/// definition kept as JSON).
#[derive(Clone)]
pub struct EmbeddedMappings {
    db: Meta,
}

impl EmbeddedMappings {
    pub fn new(db: Meta) -> Self {
        EmbeddedMappings { db }
    }
}

fn load_def(c: &Tx<'_>, name: &str) -> Result<Option<MappingDefinition>, ProcessorError> {
    let json: Option<String> = c.query_opt(
        "SELECT definition FROM mapping_definitions WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )?;
    json.map(|j| decode_def(&j)).transpose()
}

fn decode_def(json: &str) -> Result<MappingDefinition, ProcessorError> {
    serde_json::from_str(json)
        .map_err(|e| ProcessorError::Checkpoint(format!("stored mapping is unreadable: {e}")))
}

fn store_def(c: &Tx<'_>, def: &MappingDefinition) -> Result<(), ProcessorError> {
    let json = serde_json::to_string(def)
        .map_err(|e| ProcessorError::Checkpoint(format!("cannot encode mapping: {e}")))?;
    c.execute(
        "INSERT INTO mapping_definitions (name, uuid, definition, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (name) DO UPDATE SET definition = excluded.definition,
             updated_ms = excluded.updated_ms",
        params![
            def.config.name,
            def.uuid,
            json,
            def.created_ms,
            def.updated_ms
        ],
    )?;
    Ok(())
}

#[async_trait]
impl MappingStore for EmbeddedMappings {
    async fn create(
        &self,
        mut def: MappingDefinition,
    ) -> Result<MappingDefinition, ProcessorError> {
        def.validate()?;
        def.uuid = uuid::Uuid::new_v4().to_string();
        def.created_ms = now_ms();
        def.updated_ms = def.created_ms;
        self.db
            .write(move |c| {
                if load_def(c, def.name())?.is_some() {
                    return Err(ProcessorError::AlreadyExists(def.config.name.clone()));
                }
                store_def(c, &def)?;
                Ok(def.clone())
            })
            .await
    }

    async fn get(&self, name: &str) -> Result<MappingDefinition, ProcessorError> {
        let n = name.to_owned();
        self.db
            .read(move |c| load_def(c, &n)?.ok_or(ProcessorError::NotFound(n)))
            .await
    }

    async fn list(&self) -> Result<Vec<MappingDefinition>, ProcessorError> {
        self.db
            .read(|c| {
                let rows = c.query_vec(
                    "SELECT definition FROM mapping_definitions ORDER BY name",
                    params![],
                    |r| r.get::<String>(0),
                )?;
                rows.iter().map(|j| decode_def(j)).collect()
            })
            .await
    }

    async fn update(
        &self,
        mut def: MappingDefinition,
    ) -> Result<MappingDefinition, ProcessorError> {
        def.validate()?;
        self.db
            .write(move |c| {
                let old = load_def(c, def.name())?
                    .ok_or_else(|| ProcessorError::NotFound(def.config.name.clone()))?;
                if old.config.stream != def.config.stream {
                    return Err(ProcessorError::InvalidConfig(format!(
                        "the stream of mapping {} cannot change (it is {}); delete and create it again",
                        old.config.name, old.config.stream
                    )));
                }
                def.uuid = old.uuid;
                def.created_ms = old.created_ms;
                def.updated_ms = now_ms();
                store_def(c, &def)?;
                Ok(def.clone())
            })
            .await
    }

    async fn set_state(
        &self,
        name: &str,
        state: MappingState,
    ) -> Result<MappingDefinition, ProcessorError> {
        let n = name.to_owned();
        self.db
            .write(move |c| {
                let mut def =
                    load_def(c, &n)?.ok_or_else(|| ProcessorError::NotFound(n.clone()))?;
                def.state = state;
                def.updated_ms = now_ms();
                store_def(c, &def)?;
                Ok(def)
            })
            .await
    }

    async fn delete(&self, name: &str) -> Result<(), ProcessorError> {
        let n = name.to_owned();
        self.db
            .write(move |c| {
                let gone = c.execute(
                    "DELETE FROM mapping_definitions WHERE name = ?1",
                    params![&n],
                )?;
                if gone == 0 {
                    return Err(ProcessorError::NotFound(n.clone()));
                }
                c.execute("DELETE FROM checkpoints WHERE mapping = ?1", params![&n])?;
                // A new mapping of the same name starts with no lease finished.
                c.execute("DELETE FROM shard_leases WHERE mapping = ?1", params![&n])?;
                c.execute("DELETE FROM mappings WHERE name = ?1", params![&n])?;
                c.execute("DELETE FROM function_logs WHERE mapping = ?1", params![&n])?;
                c.execute("DELETE FROM mapping_stats WHERE name = ?1", params![&n])?;
                Ok(())
            })
            .await
    }
}

/// Statistics of the running mappings ([`crate::MappingStats`]), as the server last saved
/// them, for the command-line tools (table `mapping_stats`). The server saves them with
/// [`EmbeddedStats::save`] a few times a second while they change.
#[derive(Clone)]
pub struct EmbeddedStats {
    db: Meta,
}

/// A mapping's statistics and when they were saved (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedStats {
    pub stats: MappingStats,
    pub saved_ms: i64,
}

impl EmbeddedStats {
    pub fn new(db: Meta) -> Self {
        EmbeddedStats { db }
    }

    /// Saves statistics, for registered mappings only (a mapping deleted meanwhile keeps
    /// none).
    pub async fn save(&self, stats: Vec<(String, MappingStats)>) -> Result<(), ProcessorError> {
        let rows = stats
            .into_iter()
            .map(|(n, s)| {
                serde_json::to_string(&s)
                    .map(|j| (n, j))
                    .map_err(|e| ProcessorError::Checkpoint(format!("cannot encode stats: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            return Ok(());
        }
        self.db
            .write(move |c| {
                let now = now_ms();
                for (n, j) in &rows {
                    c.execute("INSERT INTO mapping_stats (name, stats, updated_ms)
                     SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), CAST(?3 AS BIGINT) WHERE EXISTS (SELECT 1 FROM mappings WHERE name = ?1)
                         OR EXISTS (SELECT 1 FROM mapping_definitions WHERE name = ?1)
                     ON CONFLICT (name) DO UPDATE
                     SET stats = excluded.stats, updated_ms = excluded.updated_ms", params![n, j, now])?;
                }
                Ok(())
            })
            .await
    }

    /// Marks every saved mapping as not running (the server does this as it stops).
    pub async fn mark_all_stopped(&self) -> Result<(), ProcessorError> {
        let all = self.load_all().await?;
        let stopped = all
            .into_iter()
            .map(|(n, mut s)| {
                s.stats.state = "Disabled".into();
                (n, s.stats)
            })
            .collect();
        self.save(stopped).await
    }

    /// Every mapping's saved statistics, by name.
    pub async fn load_all(
        &self,
    ) -> Result<std::collections::BTreeMap<String, SavedStats>, ProcessorError> {
        self.db
            .read(|c| {
                let rows = c.query_vec(
                    "SELECT name, stats, updated_ms FROM mapping_stats",
                    params![],
                    |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?, r.get::<i64>(2)?)),
                )?;
                rows.into_iter()
                    .map(|(n, j, t)| {
                        let stats = serde_json::from_str(&j).map_err(|e| {
                            ProcessorError::Checkpoint(format!("stored stats are unreadable: {e}"))
                        })?;
                        Ok((n, SavedStats { stats, saved_ms: t }))
                    })
                    .collect()
            })
            .await
    }

    /// Saves `processor`'s statistics every `every` while they change, until `shutdown`.
    /// A failed save is logged and tried again at the next turn.
    pub async fn save_until(
        &self,
        processor: &crate::Processor,
        every: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut saved: HashMap<String, MappingStats> = HashMap::new();
        loop {
            self.save_changed(processor, &mut saved).await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Once every mapping of `processor` has stopped: saves the final figures, then marks
    /// every mapping stopped.
    pub async fn save_final(&self, processor: &crate::Processor) {
        self.save_changed(processor, &mut HashMap::new()).await;
        if let Err(e) = self.mark_all_stopped().await {
            tracing::warn!(error = %e, "cannot save mapping statistics");
        }
    }

    /// Saves the statistics that differ from `saved`, and remembers them once saved.
    async fn save_changed(
        &self,
        processor: &crate::Processor,
        saved: &mut HashMap<String, MappingStats>,
    ) {
        let now = processor.stats();
        let changed: Vec<(String, MappingStats)> = now
            .iter()
            .filter(|(n, s)| saved.get(*n) != Some(*s))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        if changed.is_empty() {
            return;
        }
        match self.save(changed).await {
            Ok(()) => *saved = now,
            Err(e) => tracing::warn!(error = %e, "cannot save mapping statistics"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mappings::FunctionSpec;
    use crate::{Checkpoints, MappingConfig, MappingStats};

    #[tokio::test]
    async fn mapping_lifecycle() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("mappings", MIGRATIONS);
        let store = EmbeddedMappings::new(db.clone());
        let mut cfg = MappingConfig::new("seed-processor", "uploads-stream");
        cfg.batch_size = 10;
        let mut def = MappingDefinition::new(
            cfg,
            FunctionSpec::parse("lambda:nodejs:/code/index.handler", &[]).expect("spec"),
        );
        def.settings
            .environment
            .insert("PROCESSED_BUCKET".into(), "sluice".into());
        let created = store.create(def.clone()).await.expect("create");
        assert!(!created.uuid.is_empty());
        assert!(matches!(
            store.create(def.clone()).await,
            Err(ProcessorError::AlreadyExists(_))
        ));
        let got = store.get("seed-processor").await.expect("get");
        assert_eq!(got, created);
        assert_eq!(got.config.batch_size, 10);

        let mut changed = got.clone();
        changed.config.batch_size = 500;
        let updated = store.update(changed.clone()).await.expect("update");
        assert_eq!(
            (updated.uuid.as_str(), updated.config.batch_size),
            (created.uuid.as_str(), 500)
        );
        changed.config.stream = "other".into();
        assert!(store.update(changed).await.is_err(), "stream cannot change");
        let mut bad = updated.clone();
        bad.config.batch_size = 0;
        assert!(matches!(
            store.update(bad).await,
            Err(ProcessorError::InvalidConfig(_))
        ));

        assert_eq!(
            store
                .disable("seed-processor")
                .await
                .expect("disable")
                .state,
            MappingState::Disabled
        );
        assert_eq!(
            store.enable("seed-processor").await.expect("enable").state,
            MappingState::Enabled
        );
        assert_eq!(store.list().await.expect("list").len(), 1);

        let cps = EmbeddedCheckpoints::new(db.clone());
        cps.register("seed-processor", "uploads-stream")
            .await
            .expect("register");
        cps.save("seed-processor", "shardId-000000000000", "1")
            .await
            .expect("save");
        let stats = EmbeddedStats::new(db.clone());
        let s = MappingStats {
            state: "Enabled".into(),
            records_in: 7,
            ..Default::default()
        };
        stats
            .save(vec![
                ("seed-processor".into(), s.clone()),
                ("never-registered".into(), s.clone()),
            ])
            .await
            .expect("save stats");
        let saved = stats.load_all().await.expect("load stats");
        assert_eq!(saved.len(), 1, "only known mappings keep stats");
        assert_eq!(saved["seed-processor"].stats, s);
        stats.mark_all_stopped().await.expect("mark");
        assert_eq!(
            stats.load_all().await.expect("load")["seed-processor"]
                .stats
                .state,
            "Disabled"
        );
        store.delete("seed-processor").await.expect("delete");
        assert!(stats.load_all().await.expect("load").is_empty());
        cps.save("seed-processor", "shardId-000000000000", "2")
            .await
            .expect("a late save is ignored");
        assert_eq!(
            cps.load("seed-processor", "shardId-000000000000")
                .await
                .expect("load"),
            None,
            "no checkpoint is left for a deleted mapping"
        );
        assert!(matches!(
            store.get("seed-processor").await,
            Err(ProcessorError::NotFound(_))
        ));
        assert_eq!(
            cps.load("seed-processor", "shardId-000000000000")
                .await
                .expect("load"),
            None
        );
        assert!(matches!(
            store.delete("seed-processor").await,
            Err(ProcessorError::NotFound(_))
        ));
    }
}
