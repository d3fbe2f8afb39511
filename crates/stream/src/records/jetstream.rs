//! The NATS JetStream record engine (`nats://HOST:PORT?prefix=…`): the scale-out
//! [`RecordLog`], shared by every sluice process that names the same server and prefix.
//!
//! # Layout
//!
//! - **One JetStream stream per shard**, `{prefix}_{stream id}_{shard}`, capturing the one
//!   subject `{prefix}.{stream id}.{shard}`, one record per message. A record's position
//!   *is* its JetStream sequence number: the server hands them out, dense and strictly
//!   increasing, to every process at once, so no process has to coordinate with another
//!   to number records. A floor above the end ([`NewRecord::min_position`]) moves an
//!   empty shard's first sequence with a purge (`{"seq": floor}`), or, on a shard that
//!   still holds records, fills the gap with hole messages that reads skip; imports with
//!   gaps do the same. Retention is a purge up to the first kept position.
//! - A message's payload is the record: a version byte, a CRC-32 of the rest, the arrival
//!   time, the partition key and the data (no headers to escape). A hole is the one byte
//!   `0`.
//! - **Tickets**: a ticketed record is published with `Nats-Msg-Id: t{ticket}`, so a
//!   redelivery to the same shard within the stream's duplicate window is answered by the
//!   server with the first delivery's sequence. After the ack, a claim
//!   (`stream shard position`) is stored under `{prefix}.ticket.{ticket}` in
//!   `{prefix}_TICKETS` (one message per subject, kept 24 h); an append with a ticket
//!   reads its claim first, so a redelivery routed to another shard of the stream is
//!   answered too, and [`RecordLog::delivered`] answers from it (checking that the record
//!   is still there).
//! - **Fences across processes**: the fencing process closes its own gate (no append of
//!   its own runs), writes `fencing` (with a deadline) under `{prefix}.control.{id}` in
//!   `{prefix}_CONTROL`, then blocks every shard stream of the stream by setting its
//!   `max_msg_size` to 1, so the server refuses every other process's appends. Only then
//!   does it read the shards' ends and run the change. Shards the change closed
//!   ([`FenceOutcome::Resharded`]) are sealed — created sealed if they never held a record
//!   — so no stale route can ever append to them; the others are unblocked, and the
//!   control goes back to `open` (or `dropped`, after the stream's shard streams were
//!   deleted). A process whose append is refused because a shard is blocked waits for
//!   the fence to end; sealed, blocked or missing shards answer [`AppendOutcome::Stale`]
//!   and move this process's epoch, so the caller reads fresh metadata and routes again.
//!   A process that creates a shard stream reads the control afterwards, so a fence that
//!   started before the creation is waited for, and one that starts after it lists the new
//!   stream. A fencer that died mid-fence leaves a deadline behind: the first appender to
//!   find it passed unblocks the shards and answers stale.
//! - **Watch**: an append that succeeded publishes `{prefix}.bump.{id}` (core NATS, after
//!   the acks, so the records are stored); every process subscribes to
//!   `{prefix}.bump.*` and bumps its local watchers.
//!
//! # What JetStream does not give, and what sluice does instead
//!
//! - **Durability** is the server's: an acknowledged record is fsynced only with
//!   `sync_interval: always` (NATS 2.10 and later) or with R3 replicas (`?replicas=3`).
//!   NATS 2.9 cannot fsync on every write; see docs/DEPLOY.md.
//! - **Atomicity across shards**: JetStream has no multi-stream transaction, so an append
//!   to several shards that fails half-way (the server went away, another process fenced
//!   the stream) may have stored the records of some shards; it answers an error (a
//!   PutRecords the client retries delivers those records twice, as Kinesis may).
//! - **Consecutive positions of one append** hold against appends of this process only;
//!   records of another process's concurrent append to the same shard may interleave.
//!   Positions stay dense and ordered.
//! - **Arrival times** never decrease among one process's appends to a shard; across
//!   processes they follow the processes' clocks (within their skew).
//! - **Deduplication** beyond the duplicate window relies on the claim, written after the
//!   record: a process that dies between the two, and a redelivery that comes after the
//!   window *and* is routed to another shard (the stream was resharded meanwhile), would
//!   deliver the record twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    Append, AppendOutcome, Appended, FenceFn, FenceOutcome, Imported, LogStats, PersistFn, Problem,
    ReadOut, RecordError, RecordLog, ShardEnd, ShardKey, StoredRecord, TrimPlan, Verified,
};

/// How long a fence may hold a stream's shards blocked before any appender may take the
/// block away (the fencing process died).
const FENCE_LEASE: Duration = Duration::from_secs(30);
/// How long the claims of delivered tickets are kept.
const TICKET_AGE: Duration = Duration::from_secs(24 * 3600);
/// Gaps filled with hole messages at most (a floor or an import far past a shard's end
/// on a shard that still holds records).
const MAX_HOLES: u64 = 100_000;
/// Direct gets in flight per read.
const READ_WINDOW: u64 = 32;

const STREAM_NOT_FOUND: u64 = 10059;
const MESSAGE_TOO_BIG: u64 = 10054;
const STREAM_SEALED: u64 = 10109;
const STREAM_NAME_IN_USE: u64 = 10058;

/// Settings from the URL's query.
#[derive(Debug, Clone)]
pub struct Options {
    /// Names every stream and subject of this deployment (`[A-Za-z0-9_-]`, ≤ 32).
    pub prefix: String,
    /// JetStream replicas of every stream (1, 3 or 5).
    pub replicas: usize,
    /// The server's deduplication window for ticketed records.
    pub duplicate_window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: "SLUICE".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// The JetStream record engine. See the module documentation.
pub struct JetStreamLog {
    client: async_nats::Client,
    js: jetstream::Context,
    shown: String,
    opts: Options,
    epoch: AtomicU64,
    streams: Mutex<HashMap<i64, Arc<StreamState>>>,
    watchers: Arc<Watchers>,
    batches: AtomicU64,
    records: AtomicU64,
    write_nanos: AtomicU64,
    bumps: tokio::task::JoinHandle<()>,
    max_payload: usize,
}

impl Drop for JetStreamLog {
    fn drop(&mut self) {
        self.bumps.abort();
    }
}

#[derive(Default)]
struct StreamState {
    /// Appends of this process hold it shared; a fence holds it exclusively.
    gate: tokio::sync::RwLock<()>,
    /// Appends routed with an epoch below this are stale.
    stale_before: AtomicU64,
    shards: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Cursor>>>>,
    dropped: AtomicBool,
}

/// What this process knows of a shard stream, held while it sends to it.
#[derive(Default)]
struct Cursor {
    ready: bool,
    last_seq: u64,
    messages: u64,
    last_arrival: i64,
}

/// A shard stream's state as the server reports it.
#[derive(Debug, Clone, Copy)]
struct State {
    first: u64,
    last: u64,
    messages: u64,
}

/// A message read back.
enum Decoded {
    Hole,
    Record {
        arrival_ms: i64,
        partition_key: String,
        data: Bytes,
    },
}

/// Why an append could not go on as routed.
enum Refused {
    /// Sealed, blocked by a fence, missing or dropped: route again with fresh metadata.
    Stale,
    Failed(RecordError),
}

impl From<RecordError> for Refused {
    fn from(e: RecordError) -> Self {
        Refused::Failed(e)
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> RecordError {
    RecordError::Unavailable(format!("NATS JetStream: {what}: {e}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn encode(arrival_ms: i64, partition_key: &str, data: &[u8]) -> Result<Bytes, RecordError> {
    let key_len = u16::try_from(partition_key.len())
        .map_err(|_| RecordError::Invalid("partition key longer than 65535 bytes".into()))?;
    let mut body = BytesMut::with_capacity(15 + partition_key.len() + data.len());
    body.put_u8(1);
    body.put_u32(0);
    body.put_i64(arrival_ms);
    body.put_u16(key_len);
    body.put_slice(partition_key.as_bytes());
    body.put_slice(data);
    let crc = crc32fast::hash(&body[5..]);
    body[1..5].copy_from_slice(&crc.to_be_bytes());
    Ok(body.freeze())
}

fn decode(payload: &Bytes) -> Option<Decoded> {
    match payload.first()? {
        0 if payload.len() == 1 => Some(Decoded::Hole),
        1 if payload.len() >= 15 => {
            let crc = u32::from_be_bytes(payload[1..5].try_into().ok()?);
            if crc32fast::hash(&payload[5..]) != crc {
                return None;
            }
            let arrival_ms = i64::from_be_bytes(payload[5..13].try_into().ok()?);
            let key_len = u16::from_be_bytes(payload[13..15].try_into().ok()?) as usize;
            let key = payload.get(15..15 + key_len)?;
            Some(Decoded::Record {
                arrival_ms,
                partition_key: String::from_utf8(key.to_vec()).ok()?,
                data: payload.slice(15 + key_len..),
            })
        }
        _ => None,
    }
}

/// The error code of a JetStream API answer, if it is an error.
fn api_error(v: &Value) -> Option<(u64, String)> {
    let e = v.get("error")?;
    Some((
        e.get("err_code").and_then(Value::as_u64).unwrap_or(0),
        e.get("description")
            .and_then(Value::as_str)
            .unwrap_or("unknown error")
            .to_owned(),
    ))
}

fn publish_code(e: &jetstream::context::PublishError) -> Option<u64> {
    let source = std::error::Error::source(e)?;
    let js = source.downcast_ref::<jetstream::Error>()?;
    Some(js.error_code().0)
}

impl JetStreamLog {
    /// Connects to the server(s) `servers` names (`nats://[user:pass@]host:port[,…]`),
    /// checks that JetStream is enabled and creates the deployment's control and ticket
    /// streams if they are missing.
    pub async fn open(servers: &str, opts: Options) -> Result<JetStreamLog, RecordError> {
        // Without credentials: `nats://user:pass@host` shows as `nats://host`.
        let (scheme, rest) = servers.split_once("://").unwrap_or(("nats", servers));
        let shown = format!(
            "{scheme}://{} (JetStream, prefix {})",
            rest.rsplit('@').next().unwrap_or(rest),
            opts.prefix
        );
        let client = async_nats::ConnectOptions::new()
            .name("sluice")
            .connection_timeout(Duration::from_secs(5))
            .connect(servers)
            .await
            .map_err(|e| unavailable(&format!("cannot connect to {shown}"), e))?;
        let js = jetstream::new(client.clone());
        let info = client.server_info();
        let max_payload = info.max_payload;
        let log = {
            let bumps = {
                let mut sub = client
                    .subscribe(format!("{}.bump.*", opts.prefix))
                    .await
                    .map_err(|e| unavailable("cannot subscribe", e))?;
                let watchers: Arc<Watchers> = Arc::default();
                let w = watchers.clone();
                let handle = tokio::spawn(async move {
                    while let Some(m) = sub.next().await {
                        if let Some(id) = m
                            .subject
                            .rsplit('.')
                            .next()
                            .and_then(|s| s.parse::<i64>().ok())
                        {
                            bump(&w, id);
                        }
                    }
                });
                (handle, watchers)
            };
            JetStreamLog {
                client,
                js,
                shown,
                opts,
                epoch: AtomicU64::new(1),
                streams: Mutex::default(),
                watchers: bumps.1,
                batches: AtomicU64::new(0),
                records: AtomicU64::new(0),
                write_nanos: AtomicU64::new(0),
                bumps: bumps.0,
                max_payload,
            }
        };
        let account = log.api("INFO".into(), Value::Null).await?;
        if let Some((code, message)) = api_error(&account) {
            return Err(RecordError::Unavailable(format!(
                "{}: JetStream is not usable ({code}): {message}; start the server with -js",
                log.shown
            )));
        }
        if max_payload < (1 << 20) + 4096 {
            tracing::warn!(
                server = %log.shown,
                max_payload,
                "the NATS server's max_payload is below 1 MiB + 4 KiB: records near Kinesis' \
                 1 MiB limit will be refused; set max_payload: 2MB (docs/DEPLOY.md)"
            );
        }
        let version = info.version.clone();
        if version.starts_with("2.9.") || version.starts_with("2.8.") || version.starts_with("2.7.")
        {
            tracing::warn!(
                server = %log.shown,
                %version,
                "this NATS server cannot fsync every write (sync_interval: always needs 2.10); \
                 an acknowledged record can be lost on power loss unless streams are replicated \
                 (?replicas=3); see docs/DEPLOY.md"
            );
        } else {
            tracing::info!(
                server = %log.shown,
                %version,
                "records on NATS JetStream: run the server with sync_interval: always (or R3) \
                 so that an acknowledged record survives power loss (docs/DEPLOY.md)"
            );
        }
        let p = &log.opts.prefix;
        log.ensure_stream(
            &format!("{p}_CONTROL"),
            json!({"subjects": [format!("{p}.control.*")], "max_msgs_per_subject": 1}),
        )
        .await?;
        log.ensure_stream(
            &format!("{p}_TICKETS"),
            json!({
                "subjects": [format!("{p}.ticket.*")],
                "max_msgs_per_subject": 1,
                "max_age": TICKET_AGE.as_nanos() as u64,
            }),
        )
        .await?;
        Ok(log)
    }

    fn name(&self, shard: ShardKey) -> String {
        format!("{}_{}_{}", self.opts.prefix, shard.stream, shard.shard)
    }

    fn subject(&self, shard: ShardKey) -> String {
        format!("{}.{}.{}", self.opts.prefix, shard.stream, shard.shard)
    }

    /// Parses a shard stream's name back (None: not a shard stream of this prefix).
    fn parse_name(&self, name: &str) -> Option<ShardKey> {
        let rest = name.strip_prefix(&self.opts.prefix)?.strip_prefix('_')?;
        let (id, shard) = rest.split_once('_')?;
        Some(ShardKey::new(id.parse().ok()?, shard.parse().ok()?))
    }

    /// A JetStream API request (`$JS.API.{what}`), answered as JSON (errors included).
    async fn api(&self, what: String, body: Value) -> Result<Value, RecordError> {
        let payload = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(serde_json::to_vec(&body).map_err(|e| RecordError::Backend(e.to_string()))?)
        };
        let answer = self
            .client
            .request(format!("$JS.API.{what}"), payload)
            .await
            .map_err(|e| unavailable(&format!("{what} on {}", self.shown), e))?;
        serde_json::from_slice(&answer.payload)
            .map_err(|e| RecordError::Backend(format!("NATS JetStream: {what}: bad answer: {e}")))
    }

    /// Creates a stream if it does not exist yet (same settings otherwise).
    async fn ensure_stream(&self, name: &str, extra: Value) -> Result<(), RecordError> {
        let mut config = json!({
            "name": name,
            "storage": "file",
            "retention": "limits",
            "discard": "old",
            "num_replicas": self.opts.replicas,
            "allow_direct": true,
            "duplicate_window": self.opts.duplicate_window.as_nanos() as u64,
        });
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        let v = self.api(format!("STREAM.CREATE.{name}"), config).await?;
        match api_error(&v) {
            None => Ok(()),
            Some((STREAM_NAME_IN_USE, _)) => Ok(()),
            Some((code, m)) => Err(RecordError::Backend(format!(
                "NATS JetStream: cannot create stream {name} ({code}): {m}"
            ))),
        }
    }

    async fn delete_stream(&self, name: &str) -> Result<(), RecordError> {
        let v = self
            .api(format!("STREAM.DELETE.{name}"), Value::Null)
            .await?;
        match api_error(&v) {
            None | Some((STREAM_NOT_FOUND, _)) => Ok(()),
            Some((code, m)) => Err(RecordError::Backend(format!(
                "NATS JetStream: cannot delete stream {name} ({code}): {m}"
            ))),
        }
    }

    /// A stream's state and config (None: it does not exist).
    async fn info(&self, name: &str) -> Result<Option<(State, Value)>, RecordError> {
        let v = self.api(format!("STREAM.INFO.{name}"), Value::Null).await?;
        if let Some((code, m)) = api_error(&v) {
            if code == STREAM_NOT_FOUND {
                return Ok(None);
            }
            return Err(RecordError::Backend(format!(
                "NATS JetStream: stream {name} ({code}): {m}"
            )));
        }
        let s = &v["state"];
        let n = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(Some((
            State {
                first: n("first_seq"),
                last: n("last_seq"),
                messages: n("messages"),
            },
            v["config"].clone(),
        )))
    }

    async fn update(&self, name: &str, config: Value) -> Result<(), RecordError> {
        let v = self.api(format!("STREAM.UPDATE.{name}"), config).await?;
        match api_error(&v) {
            None | Some((STREAM_NOT_FOUND, _)) => Ok(()),
            Some((code, m)) => Err(RecordError::Backend(format!(
                "NATS JetStream: cannot update stream {name} ({code}): {m}"
            ))),
        }
    }

    /// Purges a stream below `seq` (moving an empty stream's next sequence to `seq`).
    async fn purge(&self, name: &str, seq: u64) -> Result<u64, RecordError> {
        let v = self
            .api(format!("STREAM.PURGE.{name}"), json!({ "seq": seq }))
            .await?;
        match api_error(&v) {
            None => Ok(v.get("purged").and_then(Value::as_u64).unwrap_or(0)),
            Some((STREAM_NOT_FOUND, _)) => Ok(0),
            Some((code, m)) => Err(RecordError::Backend(format!(
                "NATS JetStream: cannot purge stream {name} ({code}): {m}"
            ))),
        }
    }

    /// A message by direct get (`{"seq": n}` or `{"last_by_subj": s}`); None: not found.
    async fn get(
        &self,
        name: &str,
        query: Value,
    ) -> Result<Option<async_nats::Message>, RecordError> {
        let payload = Bytes::from(query.to_string());
        match self
            .client
            .request(format!("$JS.API.DIRECT.GET.{name}"), payload)
            .await
        {
            Ok(m) if m.status.is_some_and(|s| s.as_u16() == 404) => Ok(None),
            Ok(m) if m.status.is_some_and(|s| s.as_u16() >= 300) => {
                Err(RecordError::Backend(format!(
                    "NATS JetStream: direct get from {name}: {}",
                    m.description.unwrap_or_default()
                )))
            }
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(None),
            Err(e) => Err(unavailable(&format!("direct get from {name}"), e)),
        }
    }

    /// The message at `seq` of a shard, decoded (None: not there).
    async fn fetch(&self, shard: ShardKey, seq: u64) -> Result<Option<Decoded>, RecordError> {
        match self.get(&self.name(shard), json!({ "seq": seq })).await? {
            None => Ok(None),
            Some(m) => decode(&m.payload).map(Some).ok_or(RecordError::Damaged {
                shard,
                position: seq,
            }),
        }
    }

    /// The first record at or after `seq` (below `last`): its position and arrival.
    async fn record_from(
        &self,
        shard: ShardKey,
        mut seq: u64,
        last: u64,
    ) -> Result<Option<(u64, i64)>, RecordError> {
        while seq <= last {
            if let Some(Decoded::Record { arrival_ms, .. }) = self.fetch(shard, seq).await? {
                return Ok(Some((seq, arrival_ms)));
            }
            seq += 1;
        }
        Ok(None)
    }

    /// The last record's arrival at or below `last` (0 if none is left).
    async fn last_arrival(&self, shard: ShardKey, st: State) -> Result<i64, RecordError> {
        let mut seq = st.last;
        while seq >= st.first.max(1) && st.messages > 0 {
            if let Some(Decoded::Record { arrival_ms, .. }) = self.fetch(shard, seq).await? {
                return Ok(arrival_ms);
            }
            seq -= 1;
        }
        Ok(0)
    }

    fn stream_state(&self, stream: i64) -> Arc<StreamState> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.entry(stream).or_default().clone()
    }

    fn cursor(&self, st: &StreamState, shard: u64) -> Arc<tokio::sync::Mutex<Cursor>> {
        let mut shards = st.shards.lock().unwrap_or_else(|p| p.into_inner());
        shards.entry(shard).or_default().clone()
    }

    /// This process learned that a stream changed under it: appends routed before are
    /// stale.
    fn go_stale(&self, st: &StreamState) {
        let e = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        st.stale_before.fetch_max(e, Ordering::SeqCst);
        st.shards.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The stream's control state: `open`, `fencing` (with its deadline) or `dropped`.
    async fn control(&self, stream: i64) -> Result<(String, i64), RecordError> {
        let p = &self.opts.prefix;
        let Some(m) = self
            .get(
                &format!("{p}_CONTROL"),
                json!({ "last_by_subj": format!("{p}.control.{stream}") }),
            )
            .await?
        else {
            return Ok(("open".into(), 0));
        };
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        Ok((
            v["state"].as_str().unwrap_or("open").to_owned(),
            v["until"].as_i64().unwrap_or(0),
        ))
    }

    async fn set_control(&self, stream: i64, state: &str, until: i64) -> Result<(), RecordError> {
        let p = &self.opts.prefix;
        let body = Bytes::from(json!({"state": state, "until": until}).to_string());
        self.js
            .publish(format!("{p}.control.{stream}"), body)
            .await
            .map_err(|e| unavailable("control", e))?
            .await
            .map_err(|e| unavailable("control", e))?;
        Ok(())
    }

    /// The shard streams of `stream` (every stream with `None`), by key.
    async fn shard_streams(&self, stream: Option<i64>) -> Result<Vec<ShardKey>, RecordError> {
        let p = &self.opts.prefix;
        let subject = match stream {
            Some(id) => format!("{p}.{id}.*"),
            None => format!("{p}.*.*"),
        };
        let mut out = BTreeSet::new();
        let mut offset = 0u64;
        loop {
            let v = self
                .api(
                    "STREAM.NAMES".into(),
                    json!({"subject": subject, "offset": offset}),
                )
                .await?;
            if let Some((code, m)) = api_error(&v) {
                return Err(RecordError::Backend(format!(
                    "NATS JetStream: cannot list streams ({code}): {m}"
                )));
            }
            let names: Vec<String> = v["streams"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let got = names.len() as u64;
            out.extend(
                names
                    .iter()
                    .filter_map(|n| self.parse_name(n))
                    .filter(|k| stream.is_none_or(|id| k.stream == id)),
            );
            offset += got;
            let total = v["total"].as_u64().unwrap_or(0);
            if got == 0 || offset >= total {
                break;
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Waits until another process's fence of `stream` is over (taking over a block whose
    /// deadline passed), then makes this process's routes of the stream stale.
    async fn wait_fence(&self, stream: i64, st: &StreamState) -> Result<(), RecordError> {
        let started = Instant::now();
        loop {
            let (state, until) = self.control(stream).await?;
            match state.as_str() {
                "fencing" if now_ms() < until => {}
                "fencing" => {
                    tracing::warn!(
                        stream,
                        "a fence of this stream outlived its deadline (its process died?): \
                         unblocking its shards"
                    );
                    for k in self.shard_streams(Some(stream)).await? {
                        self.unblock(&self.name(k)).await?;
                    }
                    self.set_control(stream, "open", 0).await?;
                    break;
                }
                "dropped" => {
                    st.dropped.store(true, Ordering::SeqCst);
                    break;
                }
                // Open: the fence is over.
                _ => break,
            }
            if started.elapsed() > FENCE_LEASE * 2 {
                return Err(RecordError::Unavailable(format!(
                    "stream id {stream} is being changed by another process; try again"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.go_stale(st);
        Ok(())
    }

    /// Makes a shard stream accept appends again (unless sealed).
    async fn unblock(&self, name: &str) -> Result<(), RecordError> {
        if let Some((_, mut config)) = self.info(name).await?
            && config["max_msg_size"].as_i64() == Some(1)
            && config["sealed"].as_bool() != Some(true)
        {
            config["max_msg_size"] = json!(-1);
            self.update(name, config).await?;
        }
        Ok(())
    }

    /// Gets a shard ready for appends: its stream exists (created if not, then the control
    /// is checked) and the cursor knows its end.
    async fn ready(
        &self,
        stream: i64,
        st: &StreamState,
        k: ShardKey,
        c: &mut Cursor,
    ) -> Result<(), Refused> {
        if c.ready {
            return Ok(());
        }
        let name = self.name(k);
        let found = match self.info(&name).await? {
            Some(found) => found,
            None => {
                // Checked before (no stream is created for a dropped one) and after (a
                // fence that began meanwhile may not have listed the new stream).
                if self.control(stream).await?.0 != "open" {
                    self.wait_fence(stream, st).await?;
                    return Err(Refused::Stale);
                }
                self.ensure_stream(&name, json!({"subjects": [self.subject(k)]}))
                    .await?;
                let (state, _) = self.control(stream).await?;
                if state != "open" {
                    if state == "dropped" {
                        self.delete_stream(&name).await?;
                    }
                    self.wait_fence(stream, st).await?;
                    return Err(Refused::Stale);
                }
                self.info(&name).await?.ok_or_else(|| {
                    Refused::Failed(RecordError::Backend(format!(
                        "NATS JetStream: stream {name} vanished right after it was created"
                    )))
                })?
            }
        };
        let (state, config) = found;
        if config["sealed"].as_bool() == Some(true) {
            self.go_stale(st);
            return Err(Refused::Stale);
        }
        c.last_seq = state.last;
        c.messages = state.messages;
        c.last_arrival = c.last_arrival.max(self.last_arrival(k, state).await?);
        c.ready = true;
        Ok(())
    }

    /// Moves a shard so that its next record gets `floor` at least: an empty shard by a
    /// purge, one that holds records by hole messages.
    async fn advance(&self, k: ShardKey, c: &mut Cursor, floor: u64) -> Result<(), RecordError> {
        if floor <= c.last_seq + 1 {
            return Ok(());
        }
        let name = self.name(k);
        if let Some((state, _)) = self.info(&name).await? {
            c.last_seq = c.last_seq.max(state.last);
            c.messages = state.messages;
        }
        if floor <= c.last_seq + 1 {
            return Ok(());
        }
        if c.messages == 0 {
            self.purge(&name, floor).await?;
            c.last_seq = floor - 1;
            return Ok(());
        }
        let gap = floor - c.last_seq - 1;
        if gap > MAX_HOLES {
            return Err(RecordError::Invalid(format!(
                "shard {} of stream id {} would need {gap} hole records to reach position \
                 {floor}; at most {MAX_HOLES}",
                k.shard, k.stream
            )));
        }
        let mut acks = Vec::new();
        for _ in 0..gap {
            acks.push(
                self.js
                    .send_publish(
                        self.subject(k),
                        PublishMessage::build().payload(Bytes::from_static(&[0])),
                    )
                    .await
                    .map_err(|e| unavailable("hole", e))?,
            );
        }
        for a in acks {
            let ack = a.await.map_err(|e| unavailable("hole", e))?;
            c.last_seq = c.last_seq.max(ack.sequence);
        }
        Ok(())
    }

    /// The claim of a delivered ticket, if its record is still there.
    async fn claimed(&self, ticket: i64) -> Result<Option<Appended>, RecordError> {
        let p = &self.opts.prefix;
        let Some(m) = self
            .get(
                &format!("{p}_TICKETS"),
                json!({ "last_by_subj": format!("{p}.ticket.{ticket}") }),
            )
            .await?
        else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&m.payload);
        let mut parts = text.split(' ').map(str::parse::<i64>);
        let (Some(Ok(stream)), Some(Ok(shard)), Some(Ok(position))) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Ok(None);
        };
        let k = ShardKey::new(stream, shard as u64);
        // A direct get from a deleted stream is not answered at all (it times out), so
        // the stream is looked up first.
        if self.info(&self.name(k)).await?.is_none() {
            return Ok(None);
        }
        let Some(found) = self.get(&self.name(k), json!({ "seq": position })).await? else {
            return Ok(None);
        };
        let theirs = found
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned());
        if theirs.as_deref() != Some(format!("t{ticket}").as_str()) {
            return Ok(None);
        }
        match decode(&found.payload) {
            Some(Decoded::Record { arrival_ms, .. }) => Ok(Some(Appended {
                shard: shard as u64,
                position: position as u64,
                arrival_ms,
            })),
            _ => Ok(None),
        }
    }

    async fn claim(&self, ticket: i64, stream: i64, a: Appended) -> Result<(), RecordError> {
        let p = &self.opts.prefix;
        let body = Bytes::from(format!("{stream} {} {}", a.shard, a.position));
        self.js
            .publish(format!("{p}.ticket.{ticket}"), body)
            .await
            .map_err(|e| unavailable("ticket claim", e))?
            .await
            .map_err(|e| unavailable("ticket claim", e))?;
        Ok(())
    }

    /// The append itself, inside the stream's gate.
    async fn append_in(&self, append: &Append, st: &StreamState) -> Result<Vec<Appended>, Refused> {
        if let Some(t) = append.ticket
            && let Some(first) = self.claimed(t).await?
        {
            return Ok(vec![first]);
        }
        // Records by shard, in the append's order.
        let mut by_shard: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, r) in append.records.iter().enumerate() {
            by_shard.entry(r.shard).or_default().push(i);
        }
        // Every record fits the server's messages, or nothing is sent.
        for r in &append.records {
            if 15 + r.partition_key.len() + r.data.len() + 64 > self.max_payload {
                return Err(Refused::Failed(RecordError::Backend(format!(
                    "a record of {} bytes does not fit the NATS server's max_payload of {} \
                     bytes; raise max_payload (docs/DEPLOY.md)",
                    r.data.len(),
                    self.max_payload
                ))));
            }
        }
        // Every shard ready (and its floor reached) before anything is sent, so an append
        // refused as stale has written nothing. Cursors are locked in shard order.
        let mut cursors = Vec::with_capacity(by_shard.len());
        for (shard, idx) in &by_shard {
            let k = ShardKey::new(append.stream, *shard);
            let mut c = self.cursor(st, *shard).lock_owned().await;
            self.ready(append.stream, st, k, &mut c).await?;
            let floor = idx
                .iter()
                .map(|i| append.records[*i].min_position)
                .max()
                .unwrap_or(0);
            self.advance(k, &mut c, floor).await?;
            cursors.push((k, idx, c));
        }
        let started = Instant::now();
        let mut pending = Vec::with_capacity(append.records.len());
        for (k, idx, c) in &mut cursors {
            for i in idx.iter() {
                let r = &append.records[*i];
                let arrival = append.now_ms.max(c.last_arrival).max(r.min_arrival_ms);
                let mut msg =
                    PublishMessage::build().payload(encode(arrival, &r.partition_key, &r.data)?);
                if let Some(t) = append.ticket {
                    msg = msg.message_id(format!("t{t}"));
                }
                let ack = self
                    .js
                    .send_publish(self.subject(*k), msg)
                    .await
                    .map_err(|e| unavailable("publish", e))?;
                c.last_arrival = arrival;
                c.last_seq += 1;
                pending.push((*i, k.shard, arrival, ack));
            }
        }
        drop(cursors);
        let mut out = vec![None; append.records.len()];
        let mut refused = None;
        let mut stored = 0usize;
        for (i, shard, arrival, ack) in pending {
            match ack.await {
                Ok(ack) => {
                    stored += 1;
                    let arrival_ms = if ack.duplicate {
                        match self
                            .fetch(ShardKey::new(append.stream, shard), ack.sequence)
                            .await?
                        {
                            Some(Decoded::Record { arrival_ms, .. }) => arrival_ms,
                            _ => arrival,
                        }
                    } else {
                        arrival
                    };
                    out[i] = Some(Appended {
                        shard,
                        position: ack.sequence,
                        arrival_ms,
                    });
                }
                Err(e) => {
                    let code = publish_code(&e);
                    let fenced = e.kind() == PublishErrorKind::StreamNotFound
                        || code == Some(STREAM_NOT_FOUND)
                        || code == Some(MESSAGE_TOO_BIG)
                        || code == Some(STREAM_SEALED);
                    if refused.is_none() {
                        refused = Some(if fenced {
                            Refused::Stale
                        } else {
                            Refused::Failed(unavailable("publish", e))
                        });
                    }
                }
            }
        }
        let took = started.elapsed();
        self.write_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        metrics::histogram!("sluice_records_ack_duration_seconds", "engine" => "nats")
            .record(took.as_secs_f64());
        if let Some(r) = refused {
            if matches!(r, Refused::Stale) {
                self.wait_fence(append.stream, st).await?;
                if stored > 0 {
                    return Err(Refused::Failed(RecordError::Unavailable(format!(
                        "stream id {} was changed by another process during a multi-shard \
                         append: {stored} of its {} records were stored; try again",
                        append.stream,
                        append.records.len()
                    ))));
                }
            } else {
                st.shards.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
            return Err(r);
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records
            .fetch_add(append.records.len() as u64, Ordering::Relaxed);
        let done: Vec<Appended> = out.into_iter().flatten().collect();
        if let (Some(t), Some(first)) = (append.ticket, done.first()) {
            self.claim(t, append.stream, *first).await?;
        }
        bump(&self.watchers, append.stream);
        let _ = self
            .client
            .publish(
                format!("{}.bump.{}", self.opts.prefix, append.stream),
                Bytes::new(),
            )
            .await;
        Ok(done)
    }

    async fn ends_of(&self, keys: &[ShardKey]) -> Result<Vec<(ShardKey, ShardEnd)>, RecordError> {
        let mut out = Vec::new();
        for k in keys {
            if let Some(end) = self.end(*k).await? {
                out.push((*k, end));
            }
        }
        Ok(out)
    }

    /// The first position at or after which every record arrived at `ts_ms` or later.
    async fn first_kept(&self, k: ShardKey, st: State, ts_ms: i64) -> Result<u64, RecordError> {
        let (mut lo, mut hi) = (st.first.max(1), st.last + 1);
        // Invariant: records below `lo` arrived before `ts_ms`; from `hi` on, at or after.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.record_from(k, mid, st.last).await? {
                Some((pos, arrival)) if arrival >= ts_ms => hi = mid.min(pos),
                Some((pos, _)) => lo = pos + 1,
                None => hi = mid,
            }
        }
        Ok(lo)
    }
}

/// The senders subscribed per stream id.
type Watchers = Mutex<HashMap<i64, Vec<Arc<watch::Sender<u64>>>>>;

fn bump(watchers: &Watchers, stream: i64) {
    let w = watchers.lock().unwrap_or_else(|p| p.into_inner());
    for tx in w.get(&stream).into_iter().flatten() {
        tx.send_modify(|v| *v = v.wrapping_add(1));
    }
}

#[async_trait]
impl RecordLog for JetStreamLog {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Concurrently: each append waits for its own acknowledgements, and the shards'
    /// cursors order the ones that meet.
    async fn append_all(&self, appends: Vec<Append>) -> Vec<Result<AppendOutcome, RecordError>> {
        futures_util::future::join_all(appends.into_iter().map(|a| self.append(a))).await
    }

    async fn append(&self, append: Append) -> Result<AppendOutcome, RecordError> {
        if append.ticket.is_some() && append.records.len() != 1 {
            return Err(RecordError::Invalid(
                "an append with a ticket holds exactly one record".into(),
            ));
        }
        let st = self.stream_state(append.stream);
        for _ in 0..64 {
            let gate = st.gate.read().await;
            if append.epoch < st.stale_before.load(Ordering::SeqCst)
                || st.dropped.load(Ordering::SeqCst)
            {
                return Ok(AppendOutcome::Stale(append));
            }
            if append.records.is_empty() {
                return Ok(AppendOutcome::Done(Vec::new()));
            }
            match self.append_in(&append, &st).await {
                Ok(done) => return Ok(AppendOutcome::Done(done)),
                Err(Refused::Failed(e)) => return Err(e),
                Err(Refused::Stale) => {
                    drop(gate);
                    // Normally the next round answers stale at once (the epoch moved);
                    // a pause only when another fence began meanwhile.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        Err(RecordError::Unavailable(format!(
            "stream id {} keeps changing under this append; try again",
            append.stream
        )))
    }

    async fn delivered(&self, ticket: i64) -> Result<Option<Appended>, RecordError> {
        self.claimed(ticket).await
    }

    async fn read(
        &self,
        shard: ShardKey,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadOut, RecordError> {
        let empty = ReadOut {
            records: Vec::new(),
            next: from,
        };
        let Some((st, _)) = self.info(&self.name(shard)).await? else {
            return Ok(empty);
        };
        let mut seq = from.max(st.first).max(1);
        if st.messages == 0 || seq > st.last || max_records == 0 {
            return Ok(empty);
        }
        let mut out: Vec<StoredRecord> = Vec::new();
        let mut bytes = 0usize;
        let mut next = from;
        'outer: while seq <= st.last && out.len() < max_records {
            let n = READ_WINDOW
                .min(st.last - seq + 1)
                .min((max_records - out.len()) as u64);
            let gets = (seq..seq + n).map(|s| self.fetch(shard, s));
            let got = futures_util::future::join_all(gets).await;
            for (s, m) in (seq..seq + n).zip(got) {
                match m {
                    Err(RecordError::Damaged { .. }) if !out.is_empty() => break 'outer,
                    Err(e) => return Err(e),
                    Ok(None) | Ok(Some(Decoded::Hole)) => {}
                    Ok(Some(Decoded::Record {
                        arrival_ms,
                        partition_key,
                        data,
                    })) => {
                        if !out.is_empty() && bytes + data.len() > max_bytes {
                            break 'outer;
                        }
                        bytes += data.len();
                        out.push(StoredRecord {
                            position: s,
                            arrival_ms,
                            partition_key,
                            data,
                        });
                        next = s + 1;
                        if out.len() >= max_records || bytes >= max_bytes {
                            break 'outer;
                        }
                    }
                }
            }
            seq += n;
        }
        Ok(ReadOut { records: out, next })
    }

    async fn end(&self, shard: ShardKey) -> Result<Option<ShardEnd>, RecordError> {
        let Some((st, _)) = self.info(&self.name(shard)).await? else {
            return Ok(None);
        };
        if st.last == 0 {
            return Ok(None);
        }
        Ok(Some(ShardEnd {
            next: st.last + 1,
            last_arrival_ms: self.last_arrival(shard, st).await?,
        }))
    }

    async fn first_at_or_after(
        &self,
        shard: ShardKey,
        ts_ms: i64,
    ) -> Result<Option<u64>, RecordError> {
        let Some((st, _)) = self.info(&self.name(shard)).await? else {
            return Ok(None);
        };
        if st.messages == 0 {
            return Ok(None);
        }
        let p = self.first_kept(shard, st, ts_ms).await?;
        Ok(self.record_from(shard, p, st.last).await?.map(|(p, _)| p))
    }

    async fn arrival_at_or_after(
        &self,
        shard: ShardKey,
        position: u64,
    ) -> Result<Option<i64>, RecordError> {
        let Some((st, _)) = self.info(&self.name(shard)).await? else {
            return Ok(None);
        };
        if st.messages == 0 {
            return Ok(None);
        }
        Ok(self
            .record_from(shard, position.max(st.first).max(1), st.last)
            .await?
            .map(|(_, a)| a))
    }

    fn subscribe(&self, stream: i64, to: Arc<watch::Sender<u64>>) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let list = w.entry(stream).or_default();
        if !list.iter().any(|t| Arc::ptr_eq(t, &to)) {
            list.push(to);
        }
    }

    async fn fence(&self, stream: i64, change: FenceFn) -> Result<(), RecordError> {
        let st = self.stream_state(stream);
        let _gate = st.gate.write().await;
        self.set_control(stream, "fencing", now_ms() + FENCE_LEASE.as_millis() as i64)
            .await?;
        let keys = self.shard_streams(Some(stream)).await?;
        let mut blocked = Vec::new();
        for k in &keys {
            let name = self.name(*k);
            if let Some((_, mut config)) = self.info(&name).await?
                && config["sealed"].as_bool() != Some(true)
            {
                config["max_msg_size"] = json!(1);
                self.update(&name, config).await?;
                blocked.push(*k);
            }
        }
        let ends: Vec<(u64, ShardEnd)> = self
            .ends_of(&keys)
            .await?
            .into_iter()
            .map(|(k, e)| (k.shard, e))
            .collect();
        let outcome = tokio::task::spawn_blocking(move || change(&ends))
            .await
            .map_err(|e| RecordError::Backend(format!("the fenced change panicked: {e}")))?;
        let reopen = |keys: Vec<ShardKey>| async move {
            for k in keys {
                self.unblock(&self.name(k)).await?;
            }
            Ok::<_, RecordError>(())
        };
        match outcome {
            Err(e) => {
                reopen(blocked).await?;
                self.set_control(stream, "open", 0).await?;
                Err(RecordError::Aborted(Box::new(e)))
            }
            Ok(FenceOutcome::Unchanged) => {
                reopen(blocked).await?;
                self.set_control(stream, "open", 0).await
            }
            Ok(FenceOutcome::Changed) => {
                self.go_stale(&st);
                reopen(blocked).await?;
                self.set_control(stream, "open", 0).await
            }
            Ok(FenceOutcome::Resharded { closed }) => {
                self.go_stale(&st);
                for shard in &closed {
                    let k = ShardKey::new(stream, *shard);
                    let name = self.name(k);
                    self.ensure_stream(&name, json!({"subjects": [self.subject(k)]}))
                        .await?;
                    if let Some((_, mut config)) = self.info(&name).await? {
                        config["max_msg_size"] = json!(-1);
                        config["sealed"] = json!(true);
                        self.update(&name, config).await?;
                    }
                }
                reopen(
                    blocked
                        .into_iter()
                        .filter(|k| !closed.contains(&k.shard))
                        .collect(),
                )
                .await?;
                self.set_control(stream, "open", 0).await
            }
            Ok(FenceOutcome::Dropped) => {
                self.go_stale(&st);
                self.drop_stream(stream).await
            }
        }
    }

    async fn trim(
        &self,
        horizons: Vec<(i64, i64)>,
        persist: PersistFn,
    ) -> Result<u64, RecordError> {
        let all = self.shard_streams(None).await?;
        let mut plan = TrimPlan {
            ends: self.ends_of(&all).await?,
            starts: Vec::new(),
        };
        for (stream, horizon) in &horizons {
            for k in all.iter().filter(|k| k.stream == *stream) {
                let Some((st, _)) = self.info(&self.name(*k)).await? else {
                    continue;
                };
                if st.messages == 0 {
                    continue;
                }
                // Usually nothing is old enough: one look at the first record says so.
                if let Some((_, arrival)) = self.record_from(*k, st.first.max(1), st.last).await?
                    && arrival >= *horizon
                {
                    continue;
                }
                let start = self.first_kept(*k, st, *horizon).await?;
                if start > st.first {
                    plan.starts.push((*k, start));
                }
            }
        }
        let to_persist = plan.clone();
        tokio::task::spawn_blocking(move || persist(&to_persist))
            .await
            .map_err(|e| RecordError::Backend(format!("persisting a trim panicked: {e}")))?
            .map_err(|e| RecordError::Aborted(Box::new(e)))?;
        let mut trimmed = 0;
        for (k, start) in &plan.starts {
            trimmed += self.purge(&self.name(*k), *start).await?;
        }
        Ok(trimmed)
    }

    async fn drop_before(&self, shard: ShardKey, position: u64) -> Result<u64, RecordError> {
        match self.info(&self.name(shard)).await? {
            Some((st, _)) if st.messages > 0 && position > st.first => {
                self.purge(&self.name(shard), position.min(st.last + 1))
                    .await
            }
            _ => Ok(0),
        }
    }

    async fn drop_stream(&self, stream: i64) -> Result<(), RecordError> {
        // The control first: a process that creates a shard stream from now on sees it
        // and deletes what it created.
        self.set_control(stream, "dropped", 0).await?;
        for k in self.shard_streams(Some(stream)).await? {
            self.delete_stream(&self.name(k)).await?;
        }
        if let Some(st) = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&stream)
        {
            st.dropped.store(true, Ordering::SeqCst);
            st.shards.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&stream);
        Ok(())
    }

    async fn streams(&self) -> Result<Vec<i64>, RecordError> {
        let ids: BTreeSet<i64> = self
            .shard_streams(None)
            .await?
            .into_iter()
            .map(|k| k.stream)
            .collect();
        Ok(ids.into_iter().collect())
    }

    async fn import(&self, records: Vec<Imported>) -> Result<(), RecordError> {
        let mut by_shard: BTreeMap<ShardKey, Vec<Imported>> = BTreeMap::new();
        for r in records {
            by_shard.entry(r.shard).or_default().push(r);
        }
        for (k, mut list) in by_shard {
            list.sort_by_key(|r| r.position);
            let st = self.stream_state(k.stream);
            let cursor = self.cursor(&st, k.shard);
            let mut c = cursor.lock().await;
            match self.ready(k.stream, &st, k, &mut c).await {
                Ok(()) => {}
                Err(Refused::Failed(e)) => return Err(e),
                Err(Refused::Stale) => {
                    return Err(RecordError::Unavailable(format!(
                        "stream id {} is closed or changing; cannot import into it",
                        k.stream
                    )));
                }
            }
            for r in list {
                if r.position <= c.last_seq {
                    continue;
                }
                self.advance(k, &mut c, r.position).await?;
                let payload = encode(r.arrival_ms, &r.partition_key, &r.data)?;
                let ack = self
                    .js
                    .send_publish(self.subject(k), PublishMessage::build().payload(payload))
                    .await
                    .map_err(|e| unavailable("import", e))?
                    .await
                    .map_err(|e| unavailable("import", e))?;
                if ack.sequence != r.position {
                    c.ready = false;
                    return Err(RecordError::Backend(format!(
                        "an imported record meant for position {} of stream id {} shard {} \
                         landed at {} (another process wrote to the shard)",
                        r.position, k.stream, k.shard, ack.sequence
                    )));
                }
                c.last_seq = ack.sequence;
                c.messages += 1;
                c.last_arrival = c.last_arrival.max(r.arrival_ms);
            }
        }
        Ok(())
    }

    async fn verify(&self) -> Result<Verified, RecordError> {
        let mut out = Verified::default();
        for k in self.shard_streams(None).await? {
            let Some((st, _)) = self.info(&self.name(k)).await? else {
                continue;
            };
            if st.messages == 0 {
                continue;
            }
            for seq in st.first.max(1)..=st.last {
                match self.fetch(k, seq).await {
                    Ok(Some(Decoded::Record { .. })) => out.records += 1,
                    Ok(_) => {}
                    Err(RecordError::Damaged { .. }) => out.problems.push(Problem {
                        record: Some((k, seq)),
                        detail: format!(
                            "message {seq} of {} fails its checksum or framing",
                            self.name(k)
                        ),
                    }),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    fn stats(&self) -> LogStats {
        LogStats {
            batches: self.batches.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            write_nanos: self.write_nanos.load(Ordering::Relaxed),
            sync_nanos: 0,
        }
    }
}

/// Parses `nats://…?prefix=…&replicas=…&duplicate_window=…` into the servers to connect
/// to and the options.
pub fn parse_url(url: &str) -> Result<(String, Options), RecordError> {
    let invalid = |message: String| RecordError::InvalidUrl {
        url: url.to_owned(),
        message,
    };
    let (servers, query) = match url.split_once('?') {
        Some((s, q)) => (s, q),
        None => (url, ""),
    };
    let mut opts = Options::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| invalid(format!("{pair:?} is not key=value")))?;
        match k {
            "prefix" => {
                if v.is_empty()
                    || v.len() > 32
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(invalid(format!(
                        "prefix {v:?} must be 1-32 characters of A-Z, a-z, 0-9, _ and -"
                    )));
                }
                opts.prefix = v.to_owned();
            }
            "replicas" => {
                opts.replicas = match v.parse::<usize>() {
                    Ok(n @ 1..=5) => n,
                    _ => return Err(invalid(format!("replicas must be 1 to 5, got {v:?}"))),
                }
            }
            "duplicate_window" => {
                let secs = v
                    .strip_suffix('s')
                    .unwrap_or(v)
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| {
                        invalid(format!(
                            "duplicate_window must be a number of seconds, got {v:?}"
                        ))
                    })?;
                opts.duplicate_window = Duration::from_secs(secs);
            }
            _ => return Err(invalid(format!("unknown parameter {k:?}"))),
        }
    }
    Ok((servers.to_owned(), opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_their_framing() {
        let b = encode(42, "pk", b"data").expect("encode");
        match decode(&b) {
            Some(Decoded::Record {
                arrival_ms,
                partition_key,
                data,
            }) => {
                assert_eq!((arrival_ms, partition_key.as_str()), (42, "pk"));
                assert_eq!(&data[..], b"data");
            }
            _ => panic!("decoded wrong"),
        }
        let mut bad = b.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(
            decode(&Bytes::from(bad)).is_none(),
            "a flipped bit is caught"
        );
        assert!(matches!(
            decode(&Bytes::from_static(&[0])),
            Some(Decoded::Hole)
        ));
        assert!(decode(&Bytes::new()).is_none());
    }

    #[test]
    fn urls_carry_the_options() {
        let (s, o) = parse_url("nats://a:4222,b:4222?prefix=P_1&replicas=3&duplicate_window=600s")
            .expect("parse");
        assert_eq!(s, "nats://a:4222,b:4222");
        assert_eq!((o.prefix.as_str(), o.replicas), ("P_1", 3));
        assert_eq!(o.duplicate_window, Duration::from_secs(600));
        for bad in [
            "nats://h?prefix=a.b",
            "nats://h?replicas=0",
            "nats://h?duplicate_window=x",
            "nats://h?nope=1",
        ] {
            assert!(
                matches!(parse_url(bad), Err(RecordError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}
