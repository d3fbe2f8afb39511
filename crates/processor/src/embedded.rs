//! Checkpoints in the shared embedded database.

use async_trait::async_trait;
use sluice_db::rusqlite::{OptionalExtension, params};
use sluice_db::{Db, Migration, now_ms};

use crate::{Checkpoints, ProcessorError};

pub const MIGRATIONS: &[Migration] = &[Migration {
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
}];

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
