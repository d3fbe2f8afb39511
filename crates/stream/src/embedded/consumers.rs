//! Consumers registered for enhanced fan-out, in the `stream_consumers` table.
//!
//! Invariants:
//! - A consumer row belongs to exactly one stream row; deleting the stream deletes it
//!   ([`delete_all`], in the same transaction).
//! - A consumer's status is derived, not stored: `Creating` until `created_ms` plus the
//!   backend's activation delay (0 by default: `Active` at once), then `Active`.
//!   Deregistering deletes the row at once, so `Deleting` is never observed here.
//! - Registration checks the name, the limits and the uniqueness in the writer's
//!   transaction, so concurrent registrations cannot exceed [`MAX_CONSUMERS`].
//! - A consumer's tags (`stream_consumer_tags`) are written and deleted with it: a new
//!   consumer of an old name starts without tags.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_meta::Tx;
use sluice_meta::params;

use super::EmbeddedStream;
use super::schema::{StreamRow, load_stream};
use crate::iterator;
use crate::{
    Consumer, ConsumerRef, ConsumerStatus, DEFAULT_LIST_CONSUMERS, ListConsumersInput,
    ListConsumersOutput, MAX_CONSUMERS, MAX_CREATING_CONSUMERS, MAX_LIST_CONSUMERS,
    NEXT_TOKEN_TTL_MS, StreamError, validate_consumer_name, validate_stored_stream_name,
};

/// The sealed content of a ListStreamConsumers NextToken.
#[derive(Serialize, Deserialize)]
struct ListConsumersToken {
    /// Stream name and generation (creation time).
    s: String,
    g: i64,
    /// Last consumer name returned.
    a: String,
    /// Issued at (ms).
    t: i64,
}

pub(super) fn delete_all(c: &Tx<'_>, stream_id: i64) -> Result<(), StreamError> {
    c.execute(
        "DELETE FROM stream_consumers WHERE stream_id = ?1",
        params![stream_id],
    )?;
    c.execute(
        "DELETE FROM stream_consumer_tags WHERE stream_id = ?1",
        params![stream_id],
    )?;
    Ok(())
}

/// Adds (or overwrites) tags of a consumer, keeping it at [`MAX_TAGS`] at most.
fn put_tags(
    c: &Tx<'_>,
    stream_id: i64,
    consumer: &str,
    tags: &BTreeMap<String, String>,
) -> Result<(), StreamError> {
    let existing: Vec<String> = c
        .query_map(
            "SELECT key FROM stream_consumer_tags WHERE stream_id = ?1 AND consumer = ?2",
            params![stream_id, consumer],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    super::check_tag_limit(&format!("consumer {consumer}"), &existing, tags)?;
    for (k, v) in tags {
        c.execute(
            "INSERT INTO stream_consumer_tags (stream_id, consumer, key, value)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (stream_id, consumer, key) DO UPDATE SET value = excluded.value",
            params![stream_id, consumer, k, v],
        )?;
    }
    Ok(())
}

pub(super) fn count(c: &Tx<'_>, stream_id: i64) -> Result<u32, StreamError> {
    let n: i64 = c.query_row(
        "SELECT COUNT(*) FROM stream_consumers WHERE stream_id = ?1",
        params![stream_id],
        |r| r.get(0),
    )?;
    Ok(n as u32)
}

fn not_found(consumer: &ConsumerRef) -> StreamError {
    StreamError::ResourceNotFound(format!(
        "consumer {} of stream {} not found",
        consumer.name, consumer.stream
    ))
}

/// The creation time of a consumer, matching `consumer.created_secs` when that is given.
fn created_ms(c: &Tx<'_>, stream: &StreamRow, consumer: &ConsumerRef) -> Result<i64, StreamError> {
    c.query_opt(
        "SELECT created_ms FROM stream_consumers WHERE stream_id = ?1 AND name = ?2",
        params![stream.id, consumer.name],
        |r| r.get::<i64>(0),
    )?
    .filter(|ms| {
        consumer
            .created_secs
            .is_none_or(|secs| ms.div_euclid(1000) == secs)
    })
    .ok_or_else(|| not_found(consumer))
}

impl EmbeddedStream {
    fn consumer(&self, stream: &StreamRow, name: String, created_ms: i64, now: i64) -> Consumer {
        Consumer {
            stream: stream.name.clone(),
            stream_created_ms: stream.created_ms,
            name,
            status: self.consumer_status(created_ms, now),
            created_ms,
        }
    }

    fn consumer_status(&self, created_ms: i64, now: i64) -> ConsumerStatus {
        if now < created_ms.saturating_add(self.consumer_activation_ms) {
            ConsumerStatus::Creating
        } else {
            ConsumerStatus::Active
        }
    }

    pub(super) async fn register_consumer_impl(
        &self,
        stream: &str,
        name: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<Consumer, StreamError> {
        validate_stored_stream_name(stream)?;
        validate_consumer_name(name)?;
        super::check_tags(&tags)?;
        let (stream, name) = (stream.to_owned(), name.to_owned());
        let this = self.clone();
        self.db
            .write(move |c| {
                let row = load_stream(c, &stream)?;
                let now = this.clock.now_ms();
                let existing: Vec<(String, i64)> = c
                    .query_map("SELECT name, created_ms FROM stream_consumers WHERE stream_id = ?1", params![row.id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                if existing.iter().any(|(n, _)| *n == name) {
                    return Err(StreamError::ResourceInUse(format!(
                        "consumer {name} is already registered with stream {stream}"
                    )));
                }
                if existing.len() >= MAX_CONSUMERS {
                    return Err(StreamError::LimitExceeded(format!(
                        "stream {stream} has {} consumers; the limit is {MAX_CONSUMERS}",
                        existing.len()
                    )));
                }
                let creating = existing
                    .iter()
                    .filter(|(_, ms)| this.consumer_status(*ms, now) == ConsumerStatus::Creating)
                    .count();
                if creating >= MAX_CREATING_CONSUMERS {
                    return Err(StreamError::LimitExceeded(format!(
                        "stream {stream} has {creating} consumers being created; at most {MAX_CREATING_CONSUMERS} can be at once"
                    )));
                }
                c.execute("INSERT INTO stream_consumers (stream_id, name, created_ms) VALUES (?1, ?2, ?3)", params![row.id, name, now])?;
                put_tags(c, row.id, &name, &tags)?;
                Ok(this.consumer(&row, name.clone(), now, now))
            })
            .await
    }

    pub(super) async fn describe_consumer_impl(
        &self,
        consumer: &ConsumerRef,
    ) -> Result<Consumer, StreamError> {
        let consumer = consumer.clone();
        let this = self.clone();
        self.db
            .read(move |c| {
                let row = load_stream(c, &consumer.stream)?;
                let created = created_ms(c, &row, &consumer)?;
                Ok(this.consumer(&row, consumer.name, created, this.clock.now_ms()))
            })
            .await
    }

    pub(super) async fn deregister_consumer_impl(
        &self,
        consumer: &ConsumerRef,
    ) -> Result<(), StreamError> {
        let consumer = consumer.clone();
        self.db
            .write(move |c| {
                let row = load_stream(c, &consumer.stream)?;
                created_ms(c, &row, &consumer)?;
                c.execute(
                    "DELETE FROM stream_consumers WHERE stream_id = ?1 AND name = ?2",
                    params![row.id, consumer.name],
                )?;
                c.execute(
                    "DELETE FROM stream_consumer_tags WHERE stream_id = ?1 AND consumer = ?2",
                    params![row.id, consumer.name],
                )?;
                Ok(())
            })
            .await
    }

    pub(super) async fn add_consumer_tags_impl(
        &self,
        consumer: &ConsumerRef,
        tags: BTreeMap<String, String>,
    ) -> Result<(), StreamError> {
        super::check_tags_to_add(&tags)?;
        let consumer = consumer.clone();
        self.db
            .write(move |c| {
                let row = load_stream(c, &consumer.stream)?;
                created_ms(c, &row, &consumer)?;
                put_tags(c, row.id, &consumer.name, &tags)
            })
            .await
    }

    pub(super) async fn remove_consumer_tags_impl(
        &self,
        consumer: &ConsumerRef,
        keys: Vec<String>,
    ) -> Result<(), StreamError> {
        super::check_tag_keys_to_remove(&keys)?;
        let consumer = consumer.clone();
        self.db
            .write(move |c| {
                let row = load_stream(c, &consumer.stream)?;
                created_ms(c, &row, &consumer)?;
                for k in &keys {
                    c.execute(
                        "DELETE FROM stream_consumer_tags
                         WHERE stream_id = ?1 AND consumer = ?2 AND key = ?3",
                        params![row.id, consumer.name, k],
                    )?;
                }
                Ok(())
            })
            .await
    }

    pub(super) async fn consumer_tags_impl(
        &self,
        consumer: &ConsumerRef,
    ) -> Result<BTreeMap<String, String>, StreamError> {
        let consumer = consumer.clone();
        self.db
            .read(move |c| {
                let row = load_stream(c, &consumer.stream)?;
                created_ms(c, &row, &consumer)?;
                c.query_map(
                    "SELECT key, value FROM stream_consumer_tags
                     WHERE stream_id = ?1 AND consumer = ?2 ORDER BY key",
                    params![row.id, consumer.name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<Result<BTreeMap<String, String>, _>>()
                .map_err(StreamError::from)
            })
            .await
    }

    pub(super) async fn list_consumers_impl(
        &self,
        input: ListConsumersInput,
    ) -> Result<ListConsumersOutput, StreamError> {
        let requested = input.max_results.unwrap_or(DEFAULT_LIST_CONSUMERS);
        if !(1..=MAX_LIST_CONSUMERS).contains(&requested) {
            return Err(StreamError::InvalidArgument(format!(
                "max results must be between 1 and {MAX_LIST_CONSUMERS}, got {requested}"
            )));
        }
        let max = requested.min(DEFAULT_LIST_CONSUMERS) as usize;
        let now = self.clock.now_ms();
        let (generation, after) = match (&input.next_token, input.stream_created_ms) {
            (Some(_), Some(_)) => {
                return Err(StreamError::InvalidArgument(
                    "a next token cannot be combined with a stream creation timestamp".into(),
                ));
            }
            (None, g) => (g, String::new()),
            (Some(token), None) => {
                let t: ListConsumersToken =
                    iterator::open(&self.iterator_key, iterator::LIST_CONSUMERS_DOMAIN, token)
                        .ok_or_else(|| StreamError::InvalidArgument("invalid next token".into()))?;
                if t.s != input.stream {
                    return Err(StreamError::InvalidArgument(format!(
                        "the next token was issued for another stream than {}",
                        input.stream
                    )));
                }
                if now - t.t > NEXT_TOKEN_TTL_MS {
                    return Err(StreamError::InvalidArgument(format!(
                        "next token expired: issued {} ms ago, tokens are valid for {NEXT_TOKEN_TTL_MS} ms",
                        now - t.t
                    )));
                }
                (Some(t.g), t.a)
            }
        };
        let key = self.iterator_key.clone();
        let this = self.clone();
        let stream = input.stream;
        self.db
            .read(move |c| {
                let row = load_stream(c, &stream)?;
                if generation.is_some_and(|g| g != row.created_ms) {
                    return Err(StreamError::ResourceNotFound(format!(
                        "stream {stream} of that creation time not found (it was deleted and created again)"
                    )));
                }
                let mut found: Vec<(String, i64)> = c
                    .query_map("SELECT name, created_ms FROM stream_consumers
                         WHERE stream_id = ?1 AND name > ?2 ORDER BY name LIMIT ?3", params![row.id, after, max as i64 + 1], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<Result<_, _>>()?;
                let more = found.len() > max;
                found.truncate(max);
                let next_token = match (more, found.last()) {
                    (true, Some((last, _))) => Some(iterator::seal(
                        &key,
                        iterator::LIST_CONSUMERS_DOMAIN,
                        &ListConsumersToken {
                            s: row.name.clone(),
                            g: row.created_ms,
                            a: last.clone(),
                            t: now,
                        },
                    )),
                    _ => None,
                };
                let now = this.clock.now_ms();
                Ok(ListConsumersOutput {
                    consumers: found
                        .into_iter()
                        .map(|(name, created)| this.consumer(&row, name, created, now))
                        .collect(),
                    next_token,
                })
            })
            .await
    }
}
