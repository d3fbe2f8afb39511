//! Named, sharded, durable streams with the semantics of Amazon Kinesis Data Streams.
//!
//! A stream is a set of shards whose hash-key ranges cover `0..=2^128-1`. A record's
//! partition key is hashed with MD5 to a 128-bit integer (or an explicit hash key is given),
//! and the record goes to the shard whose range holds it. Within a shard, records get
//! strictly increasing sequence numbers, written as decimal strings. Readers take a shard
//! iterator (TRIM_HORIZON, LATEST, AT/AFTER_SEQUENCE_NUMBER, AT_TIMESTAMP) and page through
//! with `get_records`.
//!
//! [`Stream`] is the boundary; [`embedded::EmbeddedStream`] implements it once, over the
//! metadata engine ([`sluice_meta::Meta`]) and a record engine ([`records::RecordLog`]:
//! the embedded stream log by default, chosen by URL with [`open_records`]).
//! This crate knows nothing about HTTP or AWS wire formats.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;

#[doc(hidden)]
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
mod iterator;
pub mod records;
#[cfg(feature = "conformance")]
pub mod test_nats;

pub use records::{RecordError, RecordLog, open_records, open_records_read_only};

/// Default retention (hours), as Kinesis.
pub const DEFAULT_RETENTION_HOURS: u32 = 24;
/// Largest record (partition key + data) by default, as Kinesis.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Most records one `get_records` call returns.
pub const MAX_GET_RECORDS: usize = 10_000;
/// Most bytes of data one `get_records` call returns.
pub const MAX_GET_BYTES: usize = 10 * 1024 * 1024;
/// Most records in one `put_records` call.
pub const MAX_PUT_RECORDS: usize = 500;
/// Shard iterators expire this long after they were issued.
pub const ITERATOR_TTL_MS: i64 = 5 * 60 * 1000;
/// Shortest and longest retention a stream may have (hours).
pub const MIN_RETENTION_HOURS: u32 = 24;
pub const MAX_RETENTION_HOURS: u32 = 8_760;
/// Largest record size a stream may be configured with (partition key + data).
pub const MAX_MAX_RECORD_BYTES: usize = 10 * 1024 * 1024;
/// Most bytes (partition keys + data) in one `put_records` call, unless the stream's record
/// size limit is larger: then one record of the maximum size still fits.
pub const MAX_PUT_RECORDS_BYTES: usize = 5 * 1024 * 1024;
/// Shards a stream created in on-demand mode starts with.
pub const DEFAULT_ON_DEMAND_SHARDS: u32 = 4;
/// Most shards, open or closed, a stream can hold.
pub const MAX_SHARDS: u32 = 10_000;
/// Most tags a stream can carry.
pub const MAX_TAGS: usize = 50;
/// Default and largest page of `list_shards`.
pub const DEFAULT_LIST_SHARDS: u32 = 1_000;
pub const MAX_LIST_SHARDS: u32 = 10_000;
/// Default and largest page of `list_streams_page`.
pub const DEFAULT_LIST_STREAMS: u32 = 100;
pub const MAX_LIST_STREAMS: u32 = 10_000;
/// Pagination tokens of `list_shards` expire this long after they were issued.
pub const NEXT_TOKEN_TTL_MS: i64 = 5 * 60 * 1000;

/// Most consumers (enhanced fan-out) registered with one stream, as Kinesis.
pub const MAX_CONSUMERS: usize = 20;
/// Most consumers in `Creating` status at once per stream, as Kinesis.
pub const MAX_CREATING_CONSUMERS: usize = 5;
/// Default page of `list_consumers`; larger requests are capped to it, as Kinesis does.
pub const DEFAULT_LIST_CONSUMERS: u32 = 100;
/// Largest `max_results` `list_consumers` accepts (answers still hold at most 100).
pub const MAX_LIST_CONSUMERS: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{0}")]
    ResourceInUse(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ExpiredIterator(String),
    #[error("{0}")]
    LimitExceeded(String),
    /// The optional per-shard throughput limits were exceeded; retry later.
    #[error("{0}")]
    ProvisionedThroughputExceeded(String),
    /// Record `index` of a put (0 for a single record) is larger than the stream takes
    /// (partition key + data over `max` bytes): the whole put is refused, nothing written.
    #[error(
        "record {index} of {size} bytes (partition key and data) exceeds the limit of {max} bytes"
    )]
    RecordTooLarge {
        index: usize,
        size: usize,
        max: usize,
    },
    #[error("stream backend failure: {0}")]
    Backend(String),
    /// The record engine cannot be reached (a JetStream server down or restarting): try
    /// again later. Nothing was acknowledged.
    #[error("the stream's record engine is unavailable: {0}")]
    Unavailable(String),
    /// The metadata engine failed (full, unavailable, …: see [`sluice_meta::MetaError`]).
    #[error("{0}")]
    Meta(sluice_meta::MetaError),
}

impl From<sluice_meta::MetaError> for StreamError {
    fn from(e: sluice_meta::MetaError) -> Self {
        StreamError::Meta(e)
    }
}

/// One record to append.
#[derive(Debug, Clone)]
pub struct PutRecord {
    pub partition_key: String,
    /// Decimal 128-bit hash key that overrides the partition key's hash.
    pub explicit_hash_key: Option<String>,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub shard_id: String,
    pub sequence_number: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub sequence_number: String,
    pub partition_key: String,
    pub data: Bytes,
    /// Milliseconds since the Unix epoch at which the record was committed.
    pub approximate_arrival_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IteratorSpec {
    TrimHorizon,
    Latest,
    AtSequenceNumber(String),
    AfterSequenceNumber(String),
    /// Milliseconds since the Unix epoch.
    AtTimestamp(i64),
}

#[derive(Debug, Clone)]
pub struct GetRecordsOutput {
    pub records: Vec<Record>,
    /// `None` once a closed shard has been read to its end.
    pub next_iterator: Option<String>,
    pub millis_behind_latest: i64,
    /// The shards that took over a closed shard's hash-key range; filled exactly when
    /// `next_iterator` is `None` (the closed shard is drained), empty otherwise.
    pub child_shards: Vec<ChildShard>,
}

/// A shard that continues (part of) the hash-key range of a closed parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildShard {
    pub shard_id: String,
    /// One parent for a split, two (parent, adjacent parent) for a merge.
    pub parent_shards: Vec<String>,
    pub starting_hash_key: u128,
    pub ending_hash_key: u128,
}

/// How a stream's capacity is managed. Both modes behave the same in sluice; on-demand only
/// chooses the initial shard count ([`DEFAULT_ON_DEMAND_SHARDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    Provisioned,
    OnDemand,
}

impl StreamMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamMode::Provisioned => "PROVISIONED",
            StreamMode::OnDemand => "ON_DEMAND",
        }
    }
}

/// Options of [`Stream::create_stream_with`].
#[derive(Debug, Clone, Default)]
pub struct CreateStreamOptions {
    /// `None` creates the stream in on-demand mode with [`DEFAULT_ON_DEMAND_SHARDS`] shards.
    pub shard_count: Option<u32>,
    /// Largest record (partition key + data), 1 MiB to 10 MiB; `None` is 1 MiB.
    pub max_record_bytes: Option<usize>,
    /// Tags set at creation, under the same rules as [`Stream::add_tags`].
    pub tags: BTreeMap<String, String>,
}

/// What DescribeStreamSummary reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    pub name: String,
    pub status: &'static str,
    pub mode: StreamMode,
    pub retention_hours: u32,
    pub created_ms: i64,
    pub open_shard_count: u32,
    pub max_record_bytes: usize,
    pub consumer_count: u32,
}

/// Which shards `list_shards` returns (Kinesis' ShardFilter). Timestamps are milliseconds
/// since the Unix epoch; one earlier than the trim horizon is read as the trim horizon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardFilter {
    /// Shards whose id follows this one.
    AfterShardId(String),
    /// Shards that were open at the trim horizon.
    AtTrimHorizon,
    /// Every shard within the retention period (the default).
    FromTrimHorizon,
    /// Only the open shards.
    AtLatest,
    /// Shards open at the instant: created at or before it, closed at or after it or open.
    AtTimestamp(i64),
    /// Shards closed at or after the instant, and every open shard.
    FromTimestamp(i64),
}

/// ListShards' request. Exactly one of `stream` and `next_token` is given; a token carries
/// the stream, the filter and the position, so it is not combined with them.
#[derive(Debug, Clone, Default)]
pub struct ListShardsInput {
    pub stream: Option<String>,
    pub next_token: Option<String>,
    pub exclusive_start_shard_id: Option<String>,
    /// 1 to [`MAX_LIST_SHARDS`]; `None` is [`DEFAULT_LIST_SHARDS`].
    pub max_results: Option<u32>,
    pub filter: Option<ShardFilter>,
}

#[derive(Debug, Clone)]
pub struct ListShardsOutput {
    pub shards: Vec<ShardDesc>,
    /// Set when more shards follow; valid for [`NEXT_TOKEN_TTL_MS`].
    pub next_token: Option<String>,
}

/// ListStreams' request: streams are listed in name order, after
/// `exclusive_start_stream_name` or where `next_token` left off (not both).
#[derive(Debug, Clone, Default)]
pub struct ListStreamsInput {
    pub exclusive_start_stream_name: Option<String>,
    pub next_token: Option<String>,
    /// 1 to [`MAX_LIST_STREAMS`]; `None` is [`DEFAULT_LIST_STREAMS`].
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListStreamsOutput {
    pub names: Vec<String>,
    pub has_more: bool,
    /// Set exactly when `has_more`.
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagsPage {
    /// In key order.
    pub tags: Vec<(String, String)>,
    pub has_more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateShardCountOutput {
    pub current_shard_count: u32,
    pub target_shard_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardDesc {
    pub shard_id: String,
    pub parent_shard_id: Option<String>,
    pub adjacent_parent_shard_id: Option<String>,
    pub starting_hash_key: u128,
    pub ending_hash_key: u128,
    pub starting_sequence_number: String,
    /// Set once the shard is closed (split or merged).
    pub ending_sequence_number: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StreamDesc {
    pub name: String,
    pub status: &'static str,
    pub shards: Vec<ShardDesc>,
    pub retention_hours: u32,
    pub created_ms: i64,
}

/// The life cycle of a registered consumer (enhanced fan-out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerStatus {
    Creating,
    Active,
    Deleting,
}

impl ConsumerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerStatus::Creating => "CREATING",
            ConsumerStatus::Active => "ACTIVE",
            ConsumerStatus::Deleting => "DELETING",
        }
    }
}

/// A consumer registered with a stream, to read it with its own subscription per shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub stream: String,
    /// Creation time (ms) of the stream it is registered with.
    pub stream_created_ms: i64,
    pub name: String,
    pub status: ConsumerStatus,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// Which consumer an operation is about: a stream and a consumer name, optionally pinned to
/// the consumer's creation second (what a Kinesis consumer ARN carries), so that a
/// reference to a deregistered consumer does not reach a newer one of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRef {
    pub stream: String,
    pub name: String,
    /// `created_ms / 1000` of the consumer meant, when known.
    pub created_secs: Option<i64>,
}

impl ConsumerRef {
    pub fn by_name(stream: &str, name: &str) -> Self {
        ConsumerRef {
            stream: stream.to_owned(),
            name: name.to_owned(),
            created_secs: None,
        }
    }
}

/// ListStreamConsumers' request. `stream_created_ms` picks the stream generation (a stream
/// deleted and created again is another stream); it cannot be combined with `next_token`,
/// which carries it.
#[derive(Debug, Clone, Default)]
pub struct ListConsumersInput {
    pub stream: String,
    pub stream_created_ms: Option<i64>,
    pub next_token: Option<String>,
    /// 1 to [`MAX_LIST_CONSUMERS`]; `None` is [`DEFAULT_LIST_CONSUMERS`]; pages hold at
    /// most [`DEFAULT_LIST_CONSUMERS`].
    pub max_results: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListConsumersOutput {
    /// In name order.
    pub consumers: Vec<Consumer>,
    /// Set when more consumers follow; valid for [`NEXT_TOKEN_TTL_MS`].
    pub next_token: Option<String>,
}

/// Consumer names as Kinesis allows them: 1–128 of `[a-zA-Z0-9_.-]`.
pub fn validate_consumer_name(name: &str) -> Result<(), StreamError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StreamError::InvalidArgument(format!(
            "consumer name {name:?} must be 1 to 128 characters of a-z, A-Z, 0-9, '_', '.', '-'"
        )))
    }
}

/// UpdateShardCount calls a stream takes in a rolling 24 hours (Kinesis' default limit).
pub const MAX_SCALINGS_PER_DAY: usize = 10;
/// Capacity-mode switches a stream takes in a rolling 24 hours (Kinesis' limit).
pub const MAX_MODE_CHANGES_PER_DAY: usize = 2;

/// A durable stream engine.
///
/// Every method that appends returns only after the record is durable in the backend.
#[async_trait]
pub trait Stream: Send + Sync + 'static {
    /// Creates a stream with `shard_count` shards. `ResourceInUse` if it exists.
    async fn create_stream(&self, name: &str, shard_count: u32) -> Result<(), StreamError>;
    /// Creates the stream unless it exists already (whatever its shard count).
    async fn ensure_stream(&self, name: &str, shard_count: u32) -> Result<(), StreamError>;
    async fn describe_stream(&self, name: &str) -> Result<StreamDesc, StreamError>;
    async fn list_streams(&self) -> Result<Vec<String>, StreamError>;
    /// Deletes a stream and its records. `ResourceNotFound` if absent.
    async fn delete_stream(&self, name: &str) -> Result<(), StreamError>;
    async fn put_record(&self, stream: &str, record: PutRecord) -> Result<PutResult, StreamError>;
    /// Appends up to [`MAX_PUT_RECORDS`] records; each gets its own result (a record can
    /// fail while its neighbours succeed).
    async fn put_records(
        &self,
        stream: &str,
        records: Vec<PutRecord>,
    ) -> Result<Vec<Result<PutResult, StreamError>>, StreamError>;
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        spec: IteratorSpec,
    ) -> Result<String, StreamError>;
    async fn get_records(
        &self,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, StreamError>;
    /// A counter that changes after every commit that appended to `stream`: a reader at the
    /// tail waits on it instead of polling.
    fn watch(&self, stream: &str) -> tokio::sync::watch::Receiver<u64>;

    /// Creates a stream with options (mode, record size limit, tags). `ResourceInUse` if it
    /// exists.
    async fn create_stream_with(
        &self,
        name: &str,
        options: CreateStreamOptions,
    ) -> Result<(), StreamError>;
    async fn describe_stream_summary(&self, name: &str) -> Result<StreamSummary, StreamError>;
    /// One page of stream names in name order.
    async fn list_streams_page(
        &self,
        input: ListStreamsInput,
    ) -> Result<ListStreamsOutput, StreamError>;
    /// Shards in shard-id order, filtered and paginated as Kinesis' ListShards.
    async fn list_shards(&self, input: ListShardsInput) -> Result<ListShardsOutput, StreamError>;
    /// [`Stream::put_record`] with SequenceNumberForOrdering: the record's sequence number is
    /// strictly greater than `sequence_number_for_ordering` (a sequence number this stream
    /// returned earlier for the same partition key), or the put fails with `InvalidArgument`.
    async fn put_record_ordered(
        &self,
        stream: &str,
        record: PutRecord,
        sequence_number_for_ordering: Option<String>,
    ) -> Result<PutResult, StreamError>;
    /// Closes the open shard `shard` and creates two children covering
    /// `start..new_starting_hash_key` and `new_starting_hash_key..=end` (parent = `shard`).
    async fn split_shard(
        &self,
        stream: &str,
        shard: &str,
        new_starting_hash_key: u128,
    ) -> Result<(), StreamError>;
    /// Closes two open shards with adjacent hash-key ranges and creates one child covering
    /// both (parent = `shard`, adjacent parent = `adjacent_shard`).
    async fn merge_shards(
        &self,
        stream: &str,
        shard: &str,
        adjacent_shard: &str,
    ) -> Result<(), StreamError>;
    /// Reshards to `target` open shards with even hash-key ranges (UNIFORM_SCALING) by
    /// splits and merges, so every new shard has proper lineage. The target is limited to
    /// between half and double the current open shard count; an on-demand stream is
    /// refused (`InvalidArgument`), and so is the call past [`MAX_SCALINGS_PER_DAY`] in a
    /// rolling 24 hours (`LimitExceeded`), as Kinesis does.
    async fn update_shard_count(
        &self,
        stream: &str,
        target: u32,
    ) -> Result<UpdateShardCountOutput, StreamError>;
    /// Raises retention to `hours` (at most [`MAX_RETENTION_HOURS`], at least the current).
    async fn increase_retention(&self, stream: &str, hours: u32) -> Result<(), StreamError>;
    /// Lowers retention to `hours` (at least [`MIN_RETENTION_HOURS`], at most the current).
    async fn decrease_retention(&self, stream: &str, hours: u32) -> Result<(), StreamError>;
    /// Sets the largest record (partition key + data) to `kib` KiB, 1024 to 10240.
    async fn update_max_record_size(&self, stream: &str, kib: u32) -> Result<(), StreamError>;
    /// Switches the stream between provisioned and on-demand capacity (UpdateStreamMode).
    /// The shards stay as they are (sluice does not scale an on-demand stream by itself).
    /// At most [`MAX_MODE_CHANGES_PER_DAY`] switches in a rolling 24 hours, as Kinesis
    /// allows; more is `LimitExceeded`. Switching to the mode the stream has is
    /// `InvalidArgument`.
    async fn update_stream_mode(&self, stream: &str, mode: StreamMode) -> Result<(), StreamError>;
    /// A setting the service edge keeps with a stream (its encryption, enhanced monitoring,
    /// resource policies): text under `key`, deleted with the stream. Keys starting with
    /// `sluice:` are the backend's own.
    async fn stream_setting(&self, stream: &str, key: &str) -> Result<Option<String>, StreamError>;
    /// Sets (`Some`) or removes (`None`) a setting of an existing stream.
    async fn set_stream_setting(
        &self,
        stream: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<(), StreamError>;
    /// Adds or overwrites tags (key 1–128 chars, value 0–256 chars); a stream holds at most
    /// [`MAX_TAGS`] tags, more is `LimitExceeded` and changes nothing.
    async fn add_tags(
        &self,
        stream: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(), StreamError>;
    /// Removes tags by key; absent keys are ignored.
    async fn remove_tags(&self, stream: &str, keys: Vec<String>) -> Result<(), StreamError>;
    /// Tags in key order, after `exclusive_start_key`, at most `limit` (default and max 50).
    async fn list_tags(
        &self,
        stream: &str,
        exclusive_start_key: Option<String>,
        limit: Option<u32>,
    ) -> Result<TagsPage, StreamError>;

    /// Registers a consumer (enhanced fan-out) with a stream: `InvalidArgument` for a bad
    /// name, `ResourceNotFound` without the stream, `ResourceInUse` if the stream already has
    /// a consumer of that name, `LimitExceeded` past [`MAX_CONSUMERS`] consumers (or
    /// [`MAX_CREATING_CONSUMERS`] still `Creating`). The consumer starts `Creating` and
    /// becomes `Active` (a backend may make it `Active` at once).
    async fn register_consumer(&self, stream: &str, name: &str) -> Result<Consumer, StreamError> {
        self.register_consumer_with_tags(stream, name, BTreeMap::new())
            .await
    }
    /// [`Stream::register_consumer`] with tags for the new consumer (checked like a
    /// stream's: at most 50, keys 1–128 and values 0–256 characters).
    async fn register_consumer_with_tags(
        &self,
        stream: &str,
        name: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<Consumer, StreamError>;
    /// Adds or overwrites a consumer's tags (`LimitExceeded` past 50); `ResourceNotFound`
    /// as [`Stream::describe_consumer`].
    async fn add_consumer_tags(
        &self,
        consumer: &ConsumerRef,
        tags: BTreeMap<String, String>,
    ) -> Result<(), StreamError>;
    /// Removes a consumer's tags by key; absent keys are ignored.
    async fn remove_consumer_tags(
        &self,
        consumer: &ConsumerRef,
        keys: Vec<String>,
    ) -> Result<(), StreamError>;
    /// A consumer's tags.
    async fn consumer_tags(
        &self,
        consumer: &ConsumerRef,
    ) -> Result<BTreeMap<String, String>, StreamError>;
    /// The consumer, or `ResourceNotFound` (also when `created_secs` names an older or newer
    /// consumer of the same name).
    async fn describe_consumer(&self, consumer: &ConsumerRef) -> Result<Consumer, StreamError>;
    /// A stream's consumers in name order, paginated.
    async fn list_consumers(
        &self,
        input: ListConsumersInput,
    ) -> Result<ListConsumersOutput, StreamError>;
    /// Removes a consumer; `ResourceNotFound` as [`Stream::describe_consumer`]. Deleting a
    /// stream removes its consumers too.
    async fn deregister_consumer(&self, consumer: &ConsumerRef) -> Result<(), StreamError>;
    /// The sequence number a reader passes as AFTER_SEQUENCE_NUMBER to continue exactly
    /// where `iterator` stands: the sequence number of the shard position just before it.
    /// At the very first position of a shard (nothing ever preceded it) there is none, and
    /// this is the shard's starting sequence number. No I/O: the iterator says it all.
    fn continuation_sequence_number(&self, iterator: &str) -> Result<String, StreamError>;
    /// The stream a shard iterator or a `NextToken` (of ListShards or ListStreamConsumers)
    /// was issued for, expired or not; `None` if this stream did not issue it. What a
    /// request carrying only a token is authorized against. No I/O.
    fn token_stream(&self, token: &str) -> Option<String>;
}

/// A 64-bit checksum of a record's identity and content, stored with every record and
/// verified on every read. Not cryptographic: it detects bit flips and misplaced data, fast
/// enough (8 bytes per step) not to slow reads down.
pub fn record_checksum(counter: u64, partition_key: &str, data: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ counter.wrapping_mul(K);
    let mut mix = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(tail) ^ (bytes.len() as u64).rotate_left(56))
            .wrapping_mul(K)
            .rotate_left(29);
    };
    mix(partition_key.as_bytes());
    mix(data);
    h ^= h >> 32;
    h = h.wrapping_mul(K);
    h ^ (h >> 29)
}

/// Checks a retention period against Kinesis' range.
pub fn check_retention_hours(hours: u32) -> Result<(), StreamError> {
    if !(MIN_RETENTION_HOURS..=MAX_RETENTION_HOURS).contains(&hours) {
        return Err(StreamError::InvalidArgument(format!(
            "retention must be between {MIN_RETENTION_HOURS} and {MAX_RETENTION_HOURS} hours, got {hours}"
        )));
    }
    Ok(())
}

/// Checks a tag against Kinesis' rules.
pub fn check_tag(key: &str, value: &str) -> Result<(), StreamError> {
    let k = key.chars().count();
    if !(1..=128).contains(&k) {
        return Err(StreamError::InvalidArgument(format!(
            "tag key must be 1 to 128 characters long, got {k}"
        )));
    }
    let v = value.chars().count();
    if v > 256 {
        return Err(StreamError::InvalidArgument(format!(
            "tag value must be at most 256 characters long, got {v}"
        )));
    }
    Ok(())
}

/// A source of time in milliseconds since the Unix epoch. Injectable so that time-dependent
/// behaviour (throughput limits) can be tested without waiting on the wall clock.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        sluice_meta::now_ms()
    }
}

/// Milliseconds since the Unix epoch, by the clock the embedded backend stamps records with.
pub fn embedded_now_ms() -> i64 {
    sluice_meta::now_ms()
}

/// The 128-bit hash of a partition key: its MD5 digest read as a big-endian integer.
pub fn partition_hash(partition_key: &str) -> u128 {
    use md5::{Digest, Md5};
    let digest = Md5::digest(partition_key.as_bytes());
    u128::from_be_bytes(digest.into())
}

/// Hash-key ranges of `n` shards that split the key space evenly, as Kinesis does.
pub fn even_ranges(n: u32) -> Vec<(u128, u128)> {
    let n = n.max(1) as u128;
    if n == 1 {
        return vec![(0, u128::MAX)];
    }
    // floor(2^128 / n), computed without overflowing u128.
    let step = u128::MAX / n + u128::from(u128::MAX % n == n - 1);
    (0..n)
        .map(|i| {
            let start = i * step;
            let end = if i == n - 1 {
                u128::MAX
            } else {
                (i + 1) * step - 1
            };
            (start, end)
        })
        .collect()
}

/// Kinesis' shard id for the shard with index `idx`.
pub fn shard_id(idx: u64) -> String {
    format!("shardId-{idx:012}")
}

/// Parses `shardId-000000000003` (or the bare `3`, as Kinesis also accepts) into 3.
pub fn parse_shard_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("shardId-").unwrap_or(id);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Sequence numbers: `2^120 | shard << 64 | counter`, as a 37-digit decimal. The high bit
/// keeps every number the same width, so comparing the strings compares the numbers, and
/// the shard index makes numbers unique across a stream.
pub fn sequence_number(shard_idx: u64, counter: u64) -> String {
    let v = (1u128 << 120) | (u128::from(shard_idx) << 64) | u128::from(counter);
    v.to_string()
}

/// Splits a sequence number into (shard index, counter).
pub fn parse_sequence_number(s: &str) -> Option<(u64, u64)> {
    if s.is_empty() || s.len() > 40 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u128 = s.parse().ok()?;
    if v >> 120 != 1 {
        return None;
    }
    let shard = ((v >> 64) & ((1u128 << 56) - 1)) as u64;
    let counter = (v & u128::from(u64::MAX)) as u64;
    Some((shard, counter))
}

/// Checks a record against Kinesis' rules before it is appended.
pub fn validate_record(record: &PutRecord, max_record_bytes: usize) -> Result<u128, StreamError> {
    let chars = record.partition_key.chars().count();
    if !(1..=256).contains(&chars) {
        return Err(StreamError::InvalidArgument(format!(
            "partition key must be 1 to 256 characters long, got {chars}"
        )));
    }
    let size = record.partition_key.len() + record.data.len();
    if size > max_record_bytes {
        return Err(StreamError::RecordTooLarge {
            index: 0,
            size,
            max: max_record_bytes,
        });
    }
    match &record.explicit_hash_key {
        Some(k) => parse_hash_key(k),
        None => Ok(partition_hash(&record.partition_key)),
    }
}

/// Parses a decimal 128-bit hash key.
pub fn parse_hash_key(k: &str) -> Result<u128, StreamError> {
    if k.is_empty() || k.len() > 39 || !k.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StreamError::InvalidArgument(format!(
            "explicit hash key {k:?} is not a decimal integer in 0..=2^128-1"
        )));
    }
    k.parse::<u128>().map_err(|_| {
        StreamError::InvalidArgument(format!(
            "explicit hash key {k:?} is not a decimal integer in 0..=2^128-1"
        ))
    })
}

/// The names streams are stored under: a Kinesis name ([`validate_stream_name`]), or one
/// followed by `@REGION` for a stream of another region than the server's (the Kinesis
/// edge's regions; 1–32 of `[a-z0-9-]`).
pub fn validate_stored_stream_name(name: &str) -> Result<(), StreamError> {
    match name.split_once('@') {
        None => validate_stream_name(name),
        Some((base, region)) => {
            validate_stream_name(base)?;
            let ok = (1..=32).contains(&region.len())
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if ok {
                Ok(())
            } else {
                Err(StreamError::InvalidArgument(format!(
                    "stream name {name:?}: {region:?} is not a region name"
                )))
            }
        }
    }
}

/// Stream names as Kinesis allows them: 1–128 of `[a-zA-Z0-9_.-]`.
pub fn validate_stream_name(name: &str) -> Result<(), StreamError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StreamError::InvalidArgument(format!(
            "stream name {name:?} must be 1 to 128 characters of a-z, A-Z, 0-9, '_', '.', '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_may_carry_a_region() {
        assert!(validate_stored_stream_name("orders").is_ok());
        assert!(validate_stored_stream_name("orders@us-west-2").is_ok());
        assert!(
            validate_stream_name("orders@us-west-2").is_err(),
            "not a Kinesis name"
        );
        assert!(validate_stored_stream_name("orders@US").is_err());
        assert!(validate_stored_stream_name("@us-west-2").is_err());
        assert!(validate_stored_stream_name("orders@").is_err());
    }

    #[test]
    fn even_ranges_match_kinesis() {
        let r = even_ranges(4);
        assert_eq!(r[0], (0, 85070591730234615865843651857942052863));
        assert_eq!(r[1].0, 85070591730234615865843651857942052864);
        assert_eq!(r[3].1, u128::MAX);
        let r3 = even_ranges(3);
        assert_eq!(r3[1].0, 113427455640312821154458202477256070485);
        assert_eq!(r3[0].1, 113427455640312821154458202477256070484);
        assert_eq!(even_ranges(1), vec![(0, u128::MAX)]);
        for n in 1..=20 {
            let r = even_ranges(n);
            assert_eq!(r.len(), n as usize);
            assert_eq!(r[0].0, 0);
            assert_eq!(r.last().map(|x| x.1), Some(u128::MAX));
            for w in r.windows(2) {
                assert_eq!(w[0].1 + 1, w[1].0, "ranges must be contiguous");
            }
        }
    }

    #[test]
    fn partition_hash_is_md5_big_endian() {
        // md5("a") = 0cc175b9c0f1b6a831c399e269772661
        assert_eq!(
            partition_hash("a"),
            u128::from_str_radix("0cc175b9c0f1b6a831c399e269772661", 16).expect("hex")
        );
    }

    #[test]
    fn sequence_numbers_round_trip_and_order_as_strings() {
        let a = sequence_number(0, 1);
        let b = sequence_number(0, 2);
        let c = sequence_number(3, 0);
        assert_eq!(a.len(), 37);
        assert_eq!(c.len(), 37);
        assert!(a < b && b < c);
        assert_eq!(parse_sequence_number(&b), Some((0, 2)));
        assert_eq!(parse_sequence_number(&c), Some((3, 0)));
        assert_eq!(
            parse_sequence_number(&sequence_number(7, u64::MAX)),
            Some((7, u64::MAX))
        );
        assert_eq!(parse_sequence_number("12"), None);
        assert_eq!(parse_sequence_number("abc"), None);
        assert_eq!(parse_sequence_number(""), None);
    }

    #[test]
    fn shard_ids() {
        assert_eq!(shard_id(3), "shardId-000000000003");
        assert_eq!(parse_shard_id("shardId-000000000003"), Some(3));
        assert_eq!(parse_shard_id("3"), Some(3));
        assert_eq!(parse_shard_id("shardId-x"), None);
    }

    #[test]
    fn record_validation() {
        let rec = |pk: &str, n: usize| PutRecord {
            partition_key: pk.into(),
            explicit_hash_key: None,
            data: Bytes::from(vec![0u8; n]),
        };
        assert!(validate_record(&rec("", 1), 100).is_err());
        assert!(validate_record(&rec(&"k".repeat(257), 1), 1000).is_err());
        assert!(validate_record(&rec(&"é".repeat(256), 1), 1000).is_ok());
        assert!(validate_record(&rec("k", 100), 100).is_err());
        assert!(validate_record(&rec("k", 99), 100).is_ok());
        let mut r = rec("k", 1);
        r.explicit_hash_key = Some("340282366920938463463374607431768211456".into());
        assert!(validate_record(&r, 100).is_err(), "2^128 is out of range");
        r.explicit_hash_key = Some("340282366920938463463374607431768211455".into());
        assert_eq!(validate_record(&r, 100).ok(), Some(u128::MAX));
    }
}
