//! Checkpoints, mapping definitions and function logs in the shared embedded database.

use async_trait::async_trait;
use sluice_db::rusqlite::{Connection, OptionalExtension, params};
use sluice_db::{Db, Migration, now_ms};

use crate::mappings::{MappingDefinition, MappingState, MappingStore};
use crate::{Checkpoints, ProcessorError};

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
];

#[derive(Clone)]
pub struct EmbeddedCheckpoints {
    db: Db,
}

impl EmbeddedCheckpoints {
    pub fn new(db: Db) -> Self {
        EmbeddedCheckpoints { db }
    }
}

#[async_trait]
impl Checkpoints for EmbeddedCheckpoints {
    async fn register(&self, mapping: &str, stream: &str) -> Result<i64, ProcessorError> {
        let (m, s) = (mapping.to_owned(), stream.to_owned());
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT OR IGNORE INTO mappings (name, stream, created_ms) VALUES (?1, ?2, ?3)",
                    params![m, s, now_ms()],
                )?;
                Ok(c.query_row(
                    "SELECT created_ms FROM mappings WHERE name = ?1",
                    [&m],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    async fn load(&self, mapping: &str, shard_id: &str) -> Result<Option<String>, ProcessorError> {
        let (m, s) = (mapping.to_owned(), shard_id.to_owned());
        self.db
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT sequence_number FROM checkpoints WHERE mapping = ?1 AND shard_id = ?2",
                    params![m, s],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await
    }

    async fn save(&self, mapping: &str, shard_id: &str, seq: &str) -> Result<(), ProcessorError> {
        let (m, s, q) = (mapping.to_owned(), shard_id.to_owned(), seq.to_owned());
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO checkpoints (mapping, shard_id, sequence_number, updated_ms)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (mapping, shard_id) DO UPDATE
                     SET sequence_number = excluded.sequence_number, updated_ms = excluded.updated_ms",
                    params![m, s, q, now_ms()],
                )?;
                Ok(())
            })
            .await
    }
}

/// Mapping definitions in the shared embedded database (table `mapping_definitions`, the
/// definition kept as JSON).
#[derive(Clone)]
pub struct EmbeddedMappings {
    db: Db,
}

impl EmbeddedMappings {
    pub fn new(db: Db) -> Self {
        EmbeddedMappings { db }
    }
}

fn load_def(c: &Connection, name: &str) -> Result<Option<MappingDefinition>, ProcessorError> {
    let json: Option<String> = c
        .query_row(
            "SELECT definition FROM mapping_definitions WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    json.map(|j| decode_def(&j)).transpose()
}

fn decode_def(json: &str) -> Result<MappingDefinition, ProcessorError> {
    serde_json::from_str(json)
        .map_err(|e| ProcessorError::Checkpoint(format!("stored mapping is unreadable: {e}")))
}

fn store_def(c: &Connection, def: &MappingDefinition) -> Result<(), ProcessorError> {
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
                Ok(def)
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
                let mut st =
                    c.prepare_cached("SELECT definition FROM mapping_definitions ORDER BY name")?;
                let rows = st
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
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
                Ok(def)
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
                let mut def = load_def(c, &n)?.ok_or(ProcessorError::NotFound(n))?;
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
                let gone = c.execute("DELETE FROM mapping_definitions WHERE name = ?1", [&n])?;
                if gone == 0 {
                    return Err(ProcessorError::NotFound(n));
                }
                c.execute("DELETE FROM checkpoints WHERE mapping = ?1", [&n])?;
                c.execute("DELETE FROM mappings WHERE name = ?1", [&n])?;
                c.execute("DELETE FROM function_logs WHERE mapping = ?1", [&n])?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mappings::FunctionSpec;
    use crate::{Checkpoints, MappingConfig};

    #[tokio::test]
    async fn mapping_lifecycle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("m.db"), MIGRATIONS).expect("db");
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
        store.delete("seed-processor").await.expect("delete");
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
