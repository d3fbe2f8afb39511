//! The conformance suite every [`Stream`] backend must pass: the Kinesis rules sluice
//! promises at the trait level, independent of storage.
//!
//! [`run_all`] takes a constructor of fresh, empty backends and runs every case on its own
//! backend. A case panics (with the rule it checks) on the first violation, so the suite is
//! meant to be called from a test. Nothing here depends on wall-clock speed: the only waits
//! are short sleeps that separate timestamps, and a generous guard against hanging.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{
    ConsumerRef, ConsumerStatus, CreateStreamOptions, DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_ON_DEMAND_SHARDS, IteratorSpec, ListConsumersInput, ListShardsInput, ListStreamsInput,
    MAX_CONSUMERS, MAX_PUT_RECORDS, PutRecord, Record, ShardFilter, Stream, StreamError,
    StreamMode, even_ranges, partition_hash, shard_id,
};

/// A backend under test.
pub type Backend = Arc<dyn Stream>;

macro_rules! assert_err {
    ($e:expr, $variant:ident, $rule:expr) => {
        match $e {
            Err(StreamError::$variant(_)) => {}
            other => panic!(
                "{}: expected {}, got {:?}",
                $rule,
                stringify!($variant),
                other.map(|_| "Ok")
            ),
        }
    };
}

/// Runs every case, each on a fresh backend from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Backend>,
{
    streams_lifecycle(make().await).await;
    list_streams_pagination(make().await).await;
    tags(make().await).await;
    retention(make().await).await;
    max_record_size(make().await).await;
    shard_ranges_cover_key_space(make().await).await;
    put_routing_and_validation(make().await).await;
    put_records_limits_and_partial_failure(make().await).await;
    sequence_number_for_ordering(make().await).await;
    iterators(make().await).await;
    get_records_limits(make().await).await;
    split(make().await).await;
    merge(make().await).await;
    update_shard_count(make().await).await;
    scaling_limits_and_stream_modes(make().await).await;
    stream_settings(make().await).await;
    list_shards(make().await).await;
    tailing_reader_is_woken(make().await).await;
    consumers(make().await).await;
    consumer_limits_and_pagination(make().await).await;
    consumer_tags(make().await).await;
    continuation_sequence_numbers(make().await).await;
}

fn rec(pk: &str, data: impl Into<Bytes>) -> PutRecord {
    PutRecord {
        partition_key: pk.to_owned(),
        explicit_hash_key: None,
        data: data.into(),
    }
}

fn rec_at(hash: u128, data: &str) -> PutRecord {
    PutRecord {
        partition_key: "k".into(),
        explicit_hash_key: Some(hash.to_string()),
        data: Bytes::from(data.to_owned()),
    }
}

/// Every record of a shard from TRIM_HORIZON, following next iterators until the shard is
/// drained (closed) or a page comes back empty (open).
pub async fn read_shard(s: &dyn Stream, stream: &str, shard: &str) -> Vec<Record> {
    let mut it = s
        .get_shard_iterator(stream, shard, IteratorSpec::TrimHorizon)
        .await
        .expect("trim horizon iterator");
    let mut out = Vec::new();
    loop {
        let page = s.get_records(&it, 10_000).await.expect("get_records");
        let empty = page.records.is_empty();
        out.extend(page.records);
        match page.next_iterator {
            Some(next) if !empty => it = next,
            _ => return out,
        }
    }
}

async fn open_shard_ids(s: &dyn Stream, stream: &str) -> Vec<String> {
    let page = s
        .list_shards(ListShardsInput {
            stream: Some(stream.into()),
            filter: Some(ShardFilter::AtLatest),
            ..ListShardsInput::default()
        })
        .await
        .expect("list open shards");
    page.shards.into_iter().map(|s| s.shard_id).collect()
}

/// Create, describe, summarize, on-demand mode, delete.
pub async fn streams_lifecycle(s: Backend) {
    let rule = "stream lifecycle";
    s.create_stream("a", 3).await.expect("create");
    assert_err!(s.create_stream("a", 3).await, ResourceInUse, rule);
    assert_err!(s.create_stream("bad name", 1).await, InvalidArgument, rule);
    assert_err!(s.create_stream("", 1).await, InvalidArgument, rule);
    assert_err!(s.create_stream("z", 0).await, InvalidArgument, rule);
    s.ensure_stream("a", 7).await.expect("ensure existing");
    let d = s.describe_stream("a").await.expect("describe");
    assert_eq!(
        d.shards.len(),
        3,
        "{rule}: ensure_stream keeps the existing stream"
    );
    assert_eq!(d.retention_hours, 24, "{rule}: default retention");
    assert_eq!(d.status, "ACTIVE");
    let sum = s.describe_stream_summary("a").await.expect("summary");
    assert_eq!(sum.open_shard_count, 3);
    assert_eq!(sum.retention_hours, 24);
    assert_eq!(sum.mode, StreamMode::Provisioned);
    assert_eq!(sum.max_record_bytes, DEFAULT_MAX_RECORD_BYTES);
    assert_eq!(sum.created_ms, d.created_ms);
    s.create_stream_with("od", CreateStreamOptions::default())
        .await
        .expect("on-demand");
    let od = s.describe_stream_summary("od").await.expect("summary");
    assert_eq!(od.mode, StreamMode::OnDemand, "{rule}: on-demand mode");
    assert_eq!(od.open_shard_count, DEFAULT_ON_DEMAND_SHARDS);
    assert_eq!(s.list_streams().await.expect("list"), vec!["a", "od"]);
    s.put_record("a", rec("k", "x")).await.expect("put");
    s.delete_stream("a").await.expect("delete");
    assert_err!(s.describe_stream("a").await, ResourceNotFound, rule);
    assert_err!(s.describe_stream_summary("a").await, ResourceNotFound, rule);
    assert_err!(s.delete_stream("a").await, ResourceNotFound, rule);
    assert_err!(
        s.put_record("a", rec("k", "x")).await,
        ResourceNotFound,
        rule
    );
    s.create_stream("a", 1)
        .await
        .expect("re-create after delete");
    let all = read_shard(s.as_ref(), "a", &shard_id(0)).await;
    assert!(all.is_empty(), "{rule}: a re-created stream starts empty");
}

/// ListStreams pages in name order with a limit, an exclusive start name or a token.
pub async fn list_streams_pagination(s: Backend) {
    let rule = "list streams pagination";
    for n in ["e", "b", "d", "a", "c"] {
        s.create_stream(n, 1).await.expect("create");
    }
    let p1 = s
        .list_streams_page(ListStreamsInput {
            limit: Some(2),
            ..ListStreamsInput::default()
        })
        .await
        .expect("page 1");
    assert_eq!(p1.names, vec!["a", "b"], "{rule}");
    assert!(
        p1.has_more && p1.next_token.is_some(),
        "{rule}: more follow"
    );
    let p2 = s
        .list_streams_page(ListStreamsInput {
            limit: Some(2),
            next_token: p1.next_token.clone(),
            ..ListStreamsInput::default()
        })
        .await
        .expect("page 2");
    assert_eq!(p2.names, vec!["c", "d"], "{rule}");
    let p3 = s
        .list_streams_page(ListStreamsInput {
            exclusive_start_stream_name: Some("d".into()),
            ..ListStreamsInput::default()
        })
        .await
        .expect("page 3");
    assert_eq!(p3.names, vec!["e"], "{rule}");
    assert!(!p3.has_more && p3.next_token.is_none(), "{rule}: last page");
    assert_err!(
        s.list_streams_page(ListStreamsInput {
            limit: Some(0),
            ..ListStreamsInput::default()
        })
        .await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.list_streams_page(ListStreamsInput {
            exclusive_start_stream_name: Some("a".into()),
            next_token: p1.next_token,
            ..ListStreamsInput::default()
        })
        .await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.list_streams_page(ListStreamsInput {
            next_token: Some("forged".into()),
            ..ListStreamsInput::default()
        })
        .await,
        InvalidArgument,
        rule
    );
}

/// Tags: add (overwrites), list in key order with paging, remove, at most 50.
pub async fn tags(s: Backend) {
    let rule = "tags";
    let mut initial = BTreeMap::new();
    initial.insert("team".to_owned(), "ingest".to_owned());
    s.create_stream_with(
        "t",
        CreateStreamOptions {
            shard_count: Some(1),
            tags: initial,
            ..CreateStreamOptions::default()
        },
    )
    .await
    .expect("create with tags");
    let mut more = BTreeMap::new();
    more.insert("env".to_owned(), "prod".to_owned());
    more.insert("team".to_owned(), "pipeline".to_owned());
    more.insert("empty".to_owned(), String::new());
    s.add_tags("t", more).await.expect("add");
    let page = s.list_tags("t", None, None).await.expect("list");
    assert_eq!(
        page.tags,
        vec![
            ("empty".to_owned(), String::new()),
            ("env".to_owned(), "prod".to_owned()),
            ("team".to_owned(), "pipeline".to_owned()),
        ],
        "{rule}: key order, overwritten value"
    );
    assert!(!page.has_more);
    let first = s.list_tags("t", None, Some(2)).await.expect("page");
    assert!(first.has_more && first.tags.len() == 2, "{rule}: limit");
    let rest = s
        .list_tags("t", Some("env".into()), Some(2))
        .await
        .expect("page");
    assert_eq!(rest.tags.len(), 1, "{rule}: exclusive start key");
    s.remove_tags("t", vec!["env".into(), "absent".into()])
        .await
        .expect("remove");
    assert_eq!(
        s.list_tags("t", None, None).await.expect("list").tags.len(),
        2
    );
    let mut bad = BTreeMap::new();
    bad.insert(String::new(), "v".to_owned());
    assert_err!(s.add_tags("t", bad).await, InvalidArgument, rule);
    let mut long = BTreeMap::new();
    long.insert("k".to_owned(), "v".repeat(257));
    assert_err!(s.add_tags("t", long).await, InvalidArgument, rule);
    let many: BTreeMap<String, String> =
        (0..49).map(|i| (format!("k{i:02}"), "v".into())).collect();
    assert_err!(s.add_tags("t", many.clone()).await, LimitExceeded, rule);
    assert_eq!(
        s.list_tags("t", None, None).await.expect("list").tags.len(),
        2,
        "{rule}: a refused add changes nothing"
    );
    let fits: BTreeMap<String, String> = many.into_iter().take(48).collect();
    s.add_tags("t", fits).await.expect("exactly 50 tags");
    assert_eq!(
        s.list_tags("t", None, None).await.expect("list").tags.len(),
        50
    );
    assert_err!(
        s.list_tags("t", None, Some(51)).await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.list_tags("nope", None, None).await,
        ResourceNotFound,
        rule
    );
}

/// Retention: 24 h default, 24–8760 h, increase only up, decrease only down.
pub async fn retention(s: Backend) {
    let rule = "retention";
    s.create_stream("r", 1).await.expect("create");
    s.increase_retention("r", 48).await.expect("increase");
    assert_eq!(s.describe_stream("r").await.expect("d").retention_hours, 48);
    assert_err!(s.increase_retention("r", 36).await, InvalidArgument, rule);
    assert_err!(s.decrease_retention("r", 72).await, InvalidArgument, rule);
    assert_err!(
        s.increase_retention("r", 8_761).await,
        InvalidArgument,
        rule
    );
    assert_err!(s.decrease_retention("r", 23).await, InvalidArgument, rule);
    s.increase_retention("r", 8_760)
        .await
        .expect("to the maximum");
    s.decrease_retention("r", 24).await.expect("to the minimum");
    let sum = s.describe_stream_summary("r").await.expect("summary");
    assert_eq!(sum.retention_hours, 24, "{rule}");
    assert_err!(
        s.increase_retention("nope", 48).await,
        ResourceNotFound,
        rule
    );
}

/// Records are at most the stream's max record size (partition key + data), 1–10 MiB.
pub async fn max_record_size(s: Backend) {
    let rule = "max record size";
    s.create_stream("m", 1).await.expect("create");
    let big = vec![7u8; DEFAULT_MAX_RECORD_BYTES];
    assert!(
        matches!(
            s.put_record("m", rec("k", big.clone())).await,
            Err(StreamError::RecordTooLarge { index: 0, .. })
        ),
        "{rule}: a record over the limit is refused"
    );
    s.put_record("m", rec("k", vec![7u8; DEFAULT_MAX_RECORD_BYTES - 1]))
        .await
        .expect("exactly 1 MiB with the key");
    assert_err!(
        s.update_max_record_size("m", 1_023).await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.update_max_record_size("m", 10_241).await,
        InvalidArgument,
        rule
    );
    s.update_max_record_size("m", 2_048).await.expect("2 MiB");
    assert_eq!(
        s.describe_stream_summary("m")
            .await
            .expect("s")
            .max_record_bytes,
        2 * 1024 * 1024
    );
    let r = s
        .put_record("m", rec("k", big.clone()))
        .await
        .expect("now fits");
    let all = read_shard(s.as_ref(), "m", &r.shard_id).await;
    assert_eq!(all.last().map(|r| r.data.len()), Some(big.len()), "{rule}");
    assert_err!(
        s.create_stream_with(
            "m2",
            CreateStreamOptions {
                max_record_bytes: Some(11 * 1024 * 1024),
                ..CreateStreamOptions::default()
            }
        )
        .await,
        InvalidArgument,
        rule
    );
}

/// Shard hash-key ranges are contiguous and cover 0..=2^128-1.
pub async fn shard_ranges_cover_key_space(s: Backend) {
    for n in [1u32, 3, 4, 7] {
        let name = format!("cover{n}");
        s.create_stream(&name, n).await.expect("create");
        let d = s.describe_stream(&name).await.expect("describe");
        let ranges: Vec<(u128, u128)> = d
            .shards
            .iter()
            .map(|s| (s.starting_hash_key, s.ending_hash_key))
            .collect();
        assert_eq!(
            ranges,
            even_ranges(n),
            "shards of {n} cover the key space evenly"
        );
        for sh in &d.shards {
            assert!(sh.parent_shard_id.is_none() && sh.ending_sequence_number.is_none());
        }
    }
}

/// Partition keys route by MD5, explicit hash keys override, keys are 1–256 chars.
pub async fn put_routing_and_validation(s: Backend) {
    let rule = "put routing";
    s.create_stream("p", 4).await.expect("create");
    let d = s.describe_stream("p").await.expect("describe");
    let owner = |h: u128| {
        d.shards
            .iter()
            .find(|sh| (sh.starting_hash_key..=sh.ending_hash_key).contains(&h))
            .map(|sh| sh.shard_id.clone())
            .expect("covering shard")
    };
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..64 {
        let pk = format!("key-{i}");
        let r = s
            .put_record("p", rec(&pk, format!("{i}")))
            .await
            .expect("put");
        assert_eq!(
            r.shard_id,
            owner(partition_hash(&pk)),
            "{rule}: md5 routing"
        );
        if let Some(prev) = last.insert(r.shard_id.clone(), r.sequence_number.clone()) {
            assert!(
                prev < r.sequence_number,
                "{rule}: increasing within a shard"
            );
        }
    }
    for h in [0u128, u128::MAX, u128::MAX / 2] {
        let r = s.put_record("p", rec_at(h, "x")).await.expect("explicit");
        assert_eq!(r.shard_id, owner(h), "{rule}: explicit hash key");
    }
    assert_err!(s.put_record("p", rec("", "x")).await, InvalidArgument, rule);
    assert_err!(
        s.put_record("p", rec(&"k".repeat(257), "x")).await,
        InvalidArgument,
        rule
    );
    s.put_record("p", rec(&"é".repeat(256), "x"))
        .await
        .expect("256 characters");
    let mut bad = rec_at(0, "x");
    bad.explicit_hash_key = Some("340282366920938463463374607431768211456".into());
    assert_err!(s.put_record("p", bad).await, InvalidArgument, rule);
    s.put_record("p", rec("k", Bytes::new()))
        .await
        .expect("empty data");
}

/// PutRecords: 1–500 records, ≤ 5 MiB, per-record results in order, partial failure.
pub async fn put_records_limits_and_partial_failure(s: Backend) {
    let rule = "put records";
    s.create_stream("pr", 2).await.expect("create");
    assert_err!(s.put_records("pr", vec![]).await, InvalidArgument, rule);
    let too_many: Vec<PutRecord> = (0..=MAX_PUT_RECORDS)
        .map(|i| rec(&i.to_string(), "x"))
        .collect();
    assert_err!(s.put_records("pr", too_many).await, InvalidArgument, rule);
    let heavy: Vec<PutRecord> = (0..6)
        .map(|i| rec(&i.to_string(), vec![0u8; 1_000_000]))
        .collect();
    assert_err!(s.put_records("pr", heavy).await, InvalidArgument, rule);
    assert_err!(
        s.put_records("nope", vec![rec("a", "1")]).await,
        ResourceNotFound,
        rule
    );
    // A record that breaks a rule fails the whole request and nothing is written, as on
    // Kinesis (per-record failures are the backend's: throughput, ordering).
    let with_bad: Vec<PutRecord> = (0..MAX_PUT_RECORDS)
        .map(|i| {
            if i % 100 == 7 {
                rec("", "bad")
            } else {
                rec(&format!("k{i}"), format!("v{i}"))
            }
        })
        .collect();
    assert_err!(s.put_records("pr", with_bad).await, InvalidArgument, rule);
    let mut too_large: Vec<PutRecord> = (0..3).map(|i| rec(&i.to_string(), "x")).collect();
    too_large.push(rec("big", vec![0u8; DEFAULT_MAX_RECORD_BYTES]));
    match s.put_records("pr", too_large).await {
        Err(StreamError::RecordTooLarge { index: 3, max, .. }) => {
            assert_eq!(max, DEFAULT_MAX_RECORD_BYTES, "{rule}: the stream's limit")
        }
        other => panic!(
            "{rule}: a record over the limit fails the request with its index, got {:?}",
            other.map(|_| "Ok")
        ),
    }
    for sh in s.describe_stream("pr").await.expect("describe").shards {
        assert!(
            read_shard(s.as_ref(), "pr", &sh.shard_id).await.is_empty(),
            "{rule}: a refused request writes nothing"
        );
    }
    let batch: Vec<PutRecord> = (0..MAX_PUT_RECORDS)
        .map(|i| rec(&format!("k{i}"), format!("v{i}")))
        .collect();
    let results = s.put_records("pr", batch).await.expect("put_records");
    assert_eq!(
        results.len(),
        MAX_PUT_RECORDS,
        "{rule}: one result per record"
    );
    let mut seen = HashSet::new();
    for r in &results {
        let ok = r.as_ref().expect("good record succeeds");
        assert!(
            seen.insert(ok.sequence_number.clone()),
            "{rule}: unique numbers"
        );
    }
    // Read back: every successful record, in order of its results within each shard.
    let d = s.describe_stream("pr").await.expect("describe");
    let mut total = 0;
    for sh in d.shards {
        let got = read_shard(s.as_ref(), "pr", &sh.shard_id).await;
        let expected: Vec<&String> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|r| r.shard_id == sh.shard_id)
            .map(|r| &r.sequence_number)
            .collect();
        let got_seqs: Vec<&String> = got.iter().map(|r| &r.sequence_number).collect();
        assert_eq!(got_seqs, expected, "{rule}: order within a shard");
        total += got.len();
    }
    assert_eq!(total, MAX_PUT_RECORDS);
}

/// SequenceNumberForOrdering: the result exceeds the given number; junk is refused.
pub async fn sequence_number_for_ordering(s: Backend) {
    let rule = "sequence number for ordering";
    s.create_stream("o", 2).await.expect("create");
    let mut prev: Option<String> = None;
    for i in 0..20 {
        let r = s
            .put_record_ordered("o", rec("same-key", format!("{i}")), prev.clone())
            .await
            .expect("ordered put");
        if let Some(p) = &prev {
            assert!(r.sequence_number > *p, "{rule}: strictly increasing");
        }
        prev = Some(r.sequence_number);
        if i == 10 {
            let open = open_shard_ids(s.as_ref(), "o").await;
            s.update_shard_count("o", 4).await.expect("reshard mid-way");
            assert_ne!(open, open_shard_ids(s.as_ref(), "o").await);
        }
    }
    assert_err!(
        s.put_record_ordered("o", rec("k", "x"), Some("12".into()))
            .await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.put_record_ordered(
            "o",
            rec("k", "x"),
            Some(crate::sequence_number(9_999, u64::MAX >> 1))
        )
        .await,
        InvalidArgument,
        rule
    );
}

/// Iterator types, tamper evidence, stale streams, pagination.
pub async fn iterators(s: Backend) {
    let rule = "iterators";
    s.create_stream("i", 1).await.expect("create");
    let shard = shard_id(0);
    let latest = s
        .get_shard_iterator("i", &shard, IteratorSpec::Latest)
        .await
        .expect("latest");
    let before = crate::embedded_now_ms();
    tokio::time::sleep(Duration::from_millis(3)).await;
    let mut seqs = Vec::new();
    for i in 0..10 {
        seqs.push(
            s.put_record("i", rec("k", format!("r{i}")))
                .await
                .expect("put")
                .sequence_number,
        );
    }
    let got = s.get_records(&latest, 100).await.expect("latest read");
    assert_eq!(got.records.len(), 10, "{rule}: LATEST sees later records");
    assert!(
        got.child_shards.is_empty(),
        "{rule}: open shard has no children"
    );
    let page = s.get_records(&latest, 3).await.expect("limit");
    assert_eq!(page.records.len(), 3, "{rule}: limit");
    let next = page.next_iterator.expect("open shard continues");
    let page2 = s.get_records(&next, 100).await.expect("next page");
    assert_eq!(
        page2.records[0].sequence_number, seqs[3],
        "{rule}: continuation"
    );
    assert!(page.millis_behind_latest >= 0);
    let at = s
        .get_shard_iterator("i", &shard, IteratorSpec::AtSequenceNumber(seqs[5].clone()))
        .await
        .expect("at");
    assert_eq!(
        s.get_records(&at, 1).await.expect("get").records[0].sequence_number,
        seqs[5]
    );
    let after = s
        .get_shard_iterator(
            "i",
            &shard,
            IteratorSpec::AfterSequenceNumber(seqs[5].clone()),
        )
        .await
        .expect("after");
    assert_eq!(
        s.get_records(&after, 1).await.expect("get").records[0].sequence_number,
        seqs[6]
    );
    let ts = s
        .get_shard_iterator("i", &shard, IteratorSpec::AtTimestamp(before))
        .await
        .expect("at timestamp");
    assert_eq!(
        s.get_records(&ts, 100).await.expect("get").records.len(),
        10
    );
    let future = s
        .get_shard_iterator("i", &shard, IteratorSpec::AtTimestamp(i64::MAX / 2))
        .await
        .expect("future timestamp");
    assert!(
        s.get_records(&future, 100)
            .await
            .expect("get")
            .records
            .is_empty()
    );
    let trim = s
        .get_shard_iterator("i", &shard, IteratorSpec::TrimHorizon)
        .await
        .expect("trim horizon");
    let all = s.get_records(&trim, 100).await.expect("get");
    let got: Vec<&str> = all
        .records
        .iter()
        .map(|r| r.sequence_number.as_str())
        .collect();
    assert_eq!(
        got,
        seqs.iter().map(String::as_str).collect::<Vec<_>>(),
        "{rule}"
    );
    assert_eq!(all.records[4].data, Bytes::from("r4"));
    assert_eq!(all.records[4].partition_key, "k");
    // Errors.
    assert_err!(s.get_records(&trim, 0).await, InvalidArgument, rule);
    assert_err!(s.get_records(&trim, 10_001).await, InvalidArgument, rule);
    assert_err!(s.get_records("garbage", 1).await, InvalidArgument, rule);
    let mut forged = trim.clone().into_bytes();
    let mid = forged.len() / 3;
    forged[mid] = if forged[mid] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    assert_err!(s.get_records(&forged, 1).await, InvalidArgument, rule);
    assert_err!(
        s.get_shard_iterator("i", "shardId-000000000009", IteratorSpec::TrimHorizon)
            .await,
        ResourceNotFound,
        rule
    );
    assert_err!(
        s.get_shard_iterator("i", "not-a-shard", IteratorSpec::TrimHorizon)
            .await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.get_shard_iterator("nope", &shard, IteratorSpec::TrimHorizon)
            .await,
        ResourceNotFound,
        rule
    );
    assert_err!(
        s.get_shard_iterator(
            "i",
            &shard,
            IteratorSpec::AtSequenceNumber(crate::sequence_number(0, 1_000))
        )
        .await,
        InvalidArgument,
        rule
    );
    // An iterator of a deleted and re-created stream does not read the new stream.
    s.delete_stream("i").await.expect("delete");
    tokio::time::sleep(Duration::from_millis(3)).await;
    s.create_stream("i", 1).await.expect("re-create");
    assert_err!(s.get_records(&trim, 10).await, ResourceNotFound, rule);
}

/// GetRecords returns at most 10 MiB of data (but always at least one record).
pub async fn get_records_limits(s: Backend) {
    let rule = "get records size limit";
    s.create_stream_with(
        "g",
        CreateStreamOptions {
            shard_count: Some(1),
            max_record_bytes: Some(10 * 1024 * 1024),
            ..CreateStreamOptions::default()
        },
    )
    .await
    .expect("create");
    for i in 0..3u8 {
        s.put_record("g", rec("k", vec![i; 4 * 1024 * 1024]))
            .await
            .expect("put");
    }
    let it = s
        .get_shard_iterator("g", &shard_id(0), IteratorSpec::TrimHorizon)
        .await
        .expect("it");
    let first = s.get_records(&it, 100).await.expect("get");
    assert_eq!(first.records.len(), 2, "{rule}: 8 MiB fit, 12 MiB do not");
    let rest = s
        .get_records(&first.next_iterator.expect("next"), 100)
        .await
        .expect("get");
    assert_eq!(rest.records.len(), 1);
    assert_eq!(rest.records[0].data[0], 2);
}

/// SplitShard: parent closed with an ending sequence number, two children with new ids and
/// lineage, the parent's reader ends with next_iterator None and the children listed.
pub async fn split(s: Backend) {
    let rule = "split";
    s.create_stream("s", 2).await.expect("create");
    let d = s.describe_stream("s").await.expect("describe");
    let parent = d.shards[0].clone();
    let mid = parent.ending_hash_key / 2;
    let before = s.put_record("s", rec_at(mid, "before")).await.expect("put");
    assert_eq!(before.shard_id, parent.shard_id);
    let reader = s
        .get_shard_iterator("s", &parent.shard_id, IteratorSpec::Latest)
        .await
        .expect("reader");
    s.put_record("s", rec_at(mid, "before-2"))
        .await
        .expect("put");
    assert_err!(
        s.split_shard("s", &parent.shard_id, 0).await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.split_shard("s", &parent.shard_id, parent.ending_hash_key + 1)
            .await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.split_shard("s", "shardId-000000000077", mid).await,
        ResourceNotFound,
        rule
    );
    assert_err!(
        s.split_shard("nope", &parent.shard_id, mid).await,
        ResourceNotFound,
        rule
    );
    s.split_shard("s", &parent.shard_id, mid)
        .await
        .expect("split");
    assert_err!(
        s.split_shard("s", &parent.shard_id, mid).await,
        InvalidArgument,
        rule
    );
    let d = s.describe_stream("s").await.expect("describe");
    assert_eq!(d.shards.len(), 4, "{rule}: parent kept, two children added");
    let closed = &d.shards[0];
    let ending = closed
        .ending_sequence_number
        .clone()
        .expect("parent closed");
    assert!(
        ending >= closed.starting_sequence_number,
        "{rule}: ending ≥ starting"
    );
    let children: Vec<_> = d
        .shards
        .iter()
        .filter(|c| c.parent_shard_id.as_deref() == Some(parent.shard_id.as_str()))
        .collect();
    assert_eq!(children.len(), 2, "{rule}: two children");
    assert_eq!(children[0].shard_id, shard_id(2), "{rule}: new shard ids");
    assert_eq!(children[1].shard_id, shard_id(3));
    assert_eq!(
        (children[0].starting_hash_key, children[0].ending_hash_key),
        (parent.starting_hash_key, mid - 1)
    );
    assert_eq!(
        (children[1].starting_hash_key, children[1].ending_hash_key),
        (mid, parent.ending_hash_key)
    );
    assert!(
        children
            .iter()
            .all(|c| c.adjacent_parent_shard_id.is_none())
    );
    let after = s.put_record("s", rec_at(mid, "after")).await.expect("put");
    assert_eq!(
        after.shard_id, children[1].shard_id,
        "{rule}: children take new records"
    );
    assert!(
        after.sequence_number > ending,
        "{rule}: children's numbers are higher"
    );
    let low = s.put_record("s", rec_at(0, "low")).await.expect("put");
    assert_eq!(low.shard_id, children[0].shard_id);
    // The old reader drains the parent, then learns of the children.
    let out = s.get_records(&reader, 100).await.expect("drain");
    assert_eq!(
        out.records.len(),
        1,
        "{rule}: records before the split stay readable"
    );
    assert!(
        out.next_iterator.is_none(),
        "{rule}: drained closed shard ends"
    );
    let ids: Vec<&str> = out
        .child_shards
        .iter()
        .map(|c| c.shard_id.as_str())
        .collect();
    assert_eq!(ids, vec![shard_id(2), shard_id(3)], "{rule}: child shards");
    assert!(
        out.child_shards
            .iter()
            .all(|c| c.parent_shards == vec![parent.shard_id.clone()])
    );
    let all = read_shard(s.as_ref(), "s", &parent.shard_id).await;
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[1].sequence_number, ending,
        "{rule}: ending = last record"
    );
    let latest = s
        .get_shard_iterator("s", &parent.shard_id, IteratorSpec::Latest)
        .await
        .expect("latest on closed");
    let out = s.get_records(&latest, 10).await.expect("get");
    assert!(out.records.is_empty() && out.next_iterator.is_none() && out.child_shards.len() == 2);
}

/// MergeShards: adjacent only; the child has parent and adjacent parent.
pub async fn merge(s: Backend) {
    let rule = "merge";
    s.create_stream("m", 3).await.expect("create");
    let (a, b, c) = (shard_id(0), shard_id(1), shard_id(2));
    s.put_record("m", rec_at(0, "in-a")).await.expect("put");
    assert_err!(s.merge_shards("m", &a, &c).await, InvalidArgument, rule);
    assert_err!(s.merge_shards("m", &a, &a).await, InvalidArgument, rule);
    assert_err!(
        s.merge_shards("m", &a, "shardId-000000000050").await,
        ResourceNotFound,
        rule
    );
    s.merge_shards("m", &b, &a).await.expect("merge b with a");
    assert_err!(s.merge_shards("m", &b, &c).await, InvalidArgument, rule);
    let d = s.describe_stream("m").await.expect("describe");
    let child = d
        .shards
        .iter()
        .find(|x| x.shard_id == shard_id(3))
        .expect("child");
    assert_eq!(
        child.parent_shard_id.as_deref(),
        Some(b.as_str()),
        "{rule}: parent"
    );
    assert_eq!(child.adjacent_parent_shard_id.as_deref(), Some(a.as_str()));
    assert_eq!(child.starting_hash_key, 0);
    assert_eq!(child.ending_hash_key, d.shards[1].ending_hash_key);
    for p in [&a, &b] {
        let sh = d.shards.iter().find(|x| &x.shard_id == p).expect("parent");
        assert!(
            sh.ending_sequence_number.is_some(),
            "{rule}: parents closed"
        );
        let it = s
            .get_shard_iterator("m", p, IteratorSpec::TrimHorizon)
            .await
            .expect("it");
        let mut out = s.get_records(&it, 100).await.expect("get");
        while let Some(next) = out.next_iterator.clone() {
            out = s.get_records(&next, 100).await.expect("get");
        }
        assert_eq!(out.child_shards.len(), 1, "{rule}: one child");
        assert_eq!(out.child_shards[0].shard_id, shard_id(3));
        assert_eq!(
            out.child_shards[0].parent_shards,
            vec![b.clone(), a.clone()]
        );
    }
    let r = s.put_record("m", rec_at(0, "merged")).await.expect("put");
    assert_eq!(r.shard_id, shard_id(3), "{rule}: child takes records");
    assert_eq!(open_shard_ids(s.as_ref(), "m").await, vec![c, shard_id(3)]);
}

/// Kinesis' rolling-24-hour limits on UpdateShardCount and capacity-mode switches; an
/// on-demand stream is not scaled by hand; a mode switch keeps the shards.
pub async fn scaling_limits_and_stream_modes(s: Backend) {
    let rule = "scaling limits and stream modes";
    s.create_stream("l", 1).await.expect("create");
    for i in 0..crate::MAX_SCALINGS_PER_DAY {
        let target = if i % 2 == 0 { 2 } else { 1 };
        s.update_shard_count("l", target)
            .await
            .unwrap_or_else(|e| panic!("{rule}: scaling {i} refused: {e}"));
    }
    assert_err!(s.update_shard_count("l", 2).await, LimitExceeded, rule);
    assert_eq!(
        s.describe_stream_summary("l")
            .await
            .expect("summary")
            .open_shard_count,
        1,
        "{rule}: a refused scaling changes nothing"
    );
    s.create_stream("m", 3).await.expect("create");
    assert_err!(
        s.update_stream_mode("m", StreamMode::Provisioned).await,
        InvalidArgument,
        rule
    );
    s.update_stream_mode("m", StreamMode::OnDemand)
        .await
        .expect("to on-demand");
    let sum = s.describe_stream_summary("m").await.expect("summary");
    assert_eq!(sum.mode, StreamMode::OnDemand, "{rule}: switched");
    assert_eq!(sum.open_shard_count, 3, "{rule}: shards kept");
    assert_err!(s.update_shard_count("m", 4).await, InvalidArgument, rule);
    s.put_record("m", rec("k", "x"))
        .await
        .expect("records flow after a switch");
    s.update_stream_mode("m", StreamMode::Provisioned)
        .await
        .expect("back to provisioned");
    assert_err!(
        s.update_stream_mode("m", StreamMode::OnDemand).await,
        LimitExceeded,
        rule
    );
    assert_eq!(
        s.describe_stream_summary("m").await.expect("summary").mode,
        StreamMode::Provisioned,
        "{rule}: a refused switch changes nothing"
    );
    assert_err!(
        s.update_stream_mode("nope", StreamMode::OnDemand).await,
        ResourceNotFound,
        rule
    );
}

/// Settings are kept per stream, replaced, removed, and deleted with their stream.
pub async fn stream_settings(s: Backend) {
    let rule = "stream settings";
    s.create_stream("a", 1).await.expect("create");
    s.create_stream("b", 1).await.expect("create");
    assert_eq!(s.stream_setting("a", "k").await.expect("read"), None);
    s.set_stream_setting("a", "k", Some("one".into()))
        .await
        .expect("set");
    s.set_stream_setting("a", "k", Some("two".into()))
        .await
        .expect("replace");
    assert_eq!(
        s.stream_setting("a", "k").await.expect("read").as_deref(),
        Some("two"),
        "{rule}: replaced"
    );
    assert_eq!(
        s.stream_setting("b", "k").await.expect("read"),
        None,
        "{rule}: per stream"
    );
    s.set_stream_setting("a", "k", None).await.expect("remove");
    assert_eq!(s.stream_setting("a", "k").await.expect("read"), None);
    assert_err!(s.stream_setting("nope", "k").await, ResourceNotFound, rule);
    assert_err!(
        s.set_stream_setting("nope", "k", Some("v".into())).await,
        ResourceNotFound,
        rule
    );
    s.set_stream_setting("b", "k", Some("v".into()))
        .await
        .expect("set");
    s.delete_stream("b").await.expect("delete");
    s.create_stream("b", 1).await.expect("re-create");
    assert_eq!(
        s.stream_setting("b", "k").await.expect("read"),
        None,
        "{rule}: deleted with the stream"
    );
}

/// UpdateShardCount (uniform): even ranges afterwards, proper lineage, half..double.
pub async fn update_shard_count(s: Backend) {
    let rule = "update shard count";
    s.create_stream("u", 2).await.expect("create");
    assert_err!(s.update_shard_count("u", 5).await, LimitExceeded, rule);
    assert_err!(s.update_shard_count("u", 0).await, InvalidArgument, rule);
    for target in [3u32, 6, 4, 2, 1] {
        let out = s.update_shard_count("u", target).await.expect("update");
        assert_eq!(out.target_shard_count, target);
        let d = s.describe_stream("u").await.expect("describe");
        let mut open: Vec<_> = d
            .shards
            .iter()
            .filter(|x| x.ending_sequence_number.is_none())
            .collect();
        open.sort_by_key(|x| x.starting_hash_key);
        let ranges: Vec<(u128, u128)> = open
            .iter()
            .map(|x| (x.starting_hash_key, x.ending_hash_key))
            .collect();
        assert_eq!(
            ranges,
            even_ranges(target),
            "{rule}: uniform after scaling to {target}"
        );
        let ids: HashSet<&str> = d.shards.iter().map(|x| x.shard_id.as_str()).collect();
        for sh in &d.shards {
            for p in sh
                .parent_shard_id
                .iter()
                .chain(&sh.adjacent_parent_shard_id)
            {
                assert!(ids.contains(p.as_str()), "{rule}: parents exist");
                let parent = d.shards.iter().find(|x| &x.shard_id == p).expect("parent");
                assert!(
                    parent.ending_sequence_number.is_some(),
                    "{rule}: parents closed"
                );
                assert!(
                    parent.starting_hash_key <= sh.ending_hash_key
                        && sh.starting_hash_key <= parent.ending_hash_key,
                    "{rule}: a child overlaps its parents"
                );
            }
        }
        let sum = s.describe_stream_summary("u").await.expect("summary");
        assert_eq!(sum.open_shard_count, target);
        s.put_record("u", rec("k", "x"))
            .await
            .expect("records still flow");
    }
}

/// ListShards: pagination, ExclusiveStartShardId, every ShardFilter type.
pub async fn list_shards(s: Backend) {
    let rule = "list shards";
    s.create_stream("l", 2).await.expect("create");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t_before = crate::embedded_now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mid = even_ranges(2)[0].1 / 2;
    s.split_shard("l", &shard_id(0), mid).await.expect("split");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t_after = crate::embedded_now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let ids = |shards: &[crate::ShardDesc]| -> Vec<String> {
        shards.iter().map(|x| x.shard_id.clone()).collect()
    };
    let list = |filter: Option<ShardFilter>| {
        let s = s.clone();
        async move {
            s.list_shards(ListShardsInput {
                stream: Some("l".into()),
                filter,
                ..ListShardsInput::default()
            })
            .await
            .expect("list shards")
        }
    };
    let all: Vec<String> = (0..4).map(shard_id).collect();
    assert_eq!(
        ids(&list(None).await.shards),
        all,
        "{rule}: default lists all"
    );
    assert_eq!(
        ids(&list(Some(ShardFilter::FromTrimHorizon)).await.shards),
        all
    );
    assert_eq!(
        ids(&list(Some(ShardFilter::AtLatest)).await.shards),
        vec![shard_id(1), shard_id(2), shard_id(3)],
        "{rule}: AT_LATEST"
    );
    assert_eq!(
        ids(&list(Some(ShardFilter::AtTrimHorizon)).await.shards),
        vec![shard_id(0), shard_id(1)],
        "{rule}: AT_TRIM_HORIZON"
    );
    assert_eq!(
        ids(&list(Some(ShardFilter::AfterShardId(shard_id(1))))
            .await
            .shards),
        vec![shard_id(2), shard_id(3)],
        "{rule}: AFTER_SHARD_ID"
    );
    assert_eq!(
        ids(&list(Some(ShardFilter::AtTimestamp(t_before))).await.shards),
        vec![shard_id(0), shard_id(1)],
        "{rule}: AT_TIMESTAMP before the split"
    );
    assert_eq!(
        ids(&list(Some(ShardFilter::AtTimestamp(t_after))).await.shards),
        vec![shard_id(1), shard_id(2), shard_id(3)],
        "{rule}: AT_TIMESTAMP after the split"
    );
    assert_eq!(
        ids(&list(Some(ShardFilter::FromTimestamp(t_before)))
            .await
            .shards),
        all,
        "{rule}: FROM_TIMESTAMP before the split"
    );
    assert_eq!(
        ids(&list(Some(ShardFilter::FromTimestamp(t_after))).await.shards),
        vec![shard_id(1), shard_id(2), shard_id(3)],
        "{rule}: FROM_TIMESTAMP after the split"
    );
    // Pagination.
    let mut got = Vec::new();
    let mut page = s
        .list_shards(ListShardsInput {
            stream: Some("l".into()),
            max_results: Some(1),
            ..ListShardsInput::default()
        })
        .await
        .expect("page");
    loop {
        assert!(page.shards.len() <= 1, "{rule}: max results");
        got.extend(ids(&page.shards));
        let Some(token) = page.next_token.take() else {
            break;
        };
        page = s
            .list_shards(ListShardsInput {
                next_token: Some(token),
                max_results: Some(1),
                ..ListShardsInput::default()
            })
            .await
            .expect("next page");
    }
    assert_eq!(got, all, "{rule}: pages join up");
    let filtered = s
        .list_shards(ListShardsInput {
            stream: Some("l".into()),
            max_results: Some(2),
            filter: Some(ShardFilter::AtLatest),
            ..ListShardsInput::default()
        })
        .await
        .expect("page");
    assert_eq!(ids(&filtered.shards), vec![shard_id(1), shard_id(2)]);
    let rest = s
        .list_shards(ListShardsInput {
            next_token: filtered.next_token.clone(),
            ..ListShardsInput::default()
        })
        .await
        .expect("page");
    assert_eq!(
        ids(&rest.shards),
        vec![shard_id(3)],
        "{rule}: the token keeps the filter"
    );
    assert!(rest.next_token.is_none());
    let start = s
        .list_shards(ListShardsInput {
            stream: Some("l".into()),
            exclusive_start_shard_id: Some(shard_id(2)),
            ..ListShardsInput::default()
        })
        .await
        .expect("exclusive start");
    assert_eq!(
        ids(&start.shards),
        vec![shard_id(3)],
        "{rule}: exclusive start shard id"
    );
    // Errors.
    assert_err!(
        s.list_shards(ListShardsInput::default()).await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.list_shards(ListShardsInput {
            stream: Some("l".into()),
            next_token: filtered.next_token.clone(),
            ..ListShardsInput::default()
        })
        .await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.list_shards(ListShardsInput {
            next_token: filtered.next_token,
            filter: Some(ShardFilter::AtLatest),
            ..ListShardsInput::default()
        })
        .await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.list_shards(ListShardsInput {
            next_token: Some("forged.token".into()),
            ..ListShardsInput::default()
        })
        .await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.list_shards(ListShardsInput {
            stream: Some("l".into()),
            max_results: Some(0),
            ..ListShardsInput::default()
        })
        .await,
        InvalidArgument,
        rule
    );
    assert_err!(
        s.list_shards(ListShardsInput {
            stream: Some("nope".into()),
            ..ListShardsInput::default()
        })
        .await,
        ResourceNotFound,
        rule
    );
}

/// A reader at the tail waits on `watch` and is woken by a commit (no polling).
pub async fn tailing_reader_is_woken(s: Backend) {
    let rule = "tailing reader";
    s.create_stream("w", 1).await.expect("create");
    let mut changes = s.watch("w");
    let it = s
        .get_shard_iterator("w", &shard_id(0), IteratorSpec::Latest)
        .await
        .expect("latest");
    changes.borrow_and_update();
    let empty = s.get_records(&it, 10).await.expect("get");
    assert!(empty.records.is_empty());
    let next = empty.next_iterator.expect("open");
    let writer = {
        let s = s.clone();
        tokio::spawn(async move { s.put_record("w", rec("k", "wake")).await })
    };
    // Guard against hanging only; no assertion on how fast the wake-up is.
    tokio::time::timeout(Duration::from_secs(60), changes.changed())
        .await
        .expect("woken within a minute")
        .expect("watch open");
    writer.await.expect("join").expect("put");
    let out = s.get_records(&next, 10).await.expect("get");
    assert_eq!(
        out.records.len(),
        1,
        "{rule}: the woken reader sees the record"
    );
}

/// Waits (with a generous guard, no speed threshold) until a consumer is `Active`.
async fn wait_active(s: &dyn Stream, stream: &str, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = s
            .describe_consumer(&ConsumerRef::by_name(stream, name))
            .await
            .expect("describe consumer");
        match c.status {
            ConsumerStatus::Active => return,
            ConsumerStatus::Creating => {}
            ConsumerStatus::Deleting => panic!("consumer {name} is being deleted"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "consumer {name} never became ACTIVE"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn list_all_consumers(s: &dyn Stream, stream: &str, page: u32) -> Vec<String> {
    let mut names = Vec::new();
    let mut token = None;
    loop {
        let out = s
            .list_consumers(ListConsumersInput {
                stream: stream.into(),
                next_token: token.take(),
                max_results: Some(page),
                ..ListConsumersInput::default()
            })
            .await
            .expect("list consumers");
        assert!(
            out.consumers.len() <= page as usize,
            "a page holds at most max_results"
        );
        names.extend(out.consumers.into_iter().map(|c| c.name));
        match out.next_token {
            Some(t) => token = Some(t),
            None => return names,
        }
    }
}

/// Register, describe (by name, pinned to the creation second), deregister; names,
/// duplicates, unknown streams; deleting a stream removes its consumers.
/// A consumer's tags: given at registration or added later, checked like a stream's, at
/// most 50, removed by key, gone with the consumer (a new consumer of the same name starts
/// without any).
pub async fn consumer_tags(s: Backend) {
    let rule = "consumer tags";
    s.create_stream("t", 1).await.expect("create");
    let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_err!(
        s.register_consumer_with_tags("t", "bad", tags(&[("", "v")]))
            .await,
        InvalidArgument,
        rule
    );
    s.register_consumer_with_tags("t", "app", tags(&[("team", "a"), ("env", "dev")]))
        .await
        .expect("register with tags");
    let app = ConsumerRef::by_name("t", "app");
    assert_eq!(
        s.consumer_tags(&app).await.expect("tags"),
        tags(&[("env", "dev"), ("team", "a")]),
        "{rule}: registration's tags are kept"
    );
    s.add_consumer_tags(&app, tags(&[("env", "prod"), ("cost", "42")]))
        .await
        .expect("add");
    assert_eq!(
        s.consumer_tags(&app).await.expect("tags"),
        tags(&[("cost", "42"), ("env", "prod"), ("team", "a")]),
        "{rule}: adding overwrites values and keeps the rest"
    );
    s.remove_consumer_tags(&app, vec!["team".into(), "absent".into()])
        .await
        .expect("remove");
    assert_eq!(
        s.consumer_tags(&app).await.expect("tags"),
        tags(&[("cost", "42"), ("env", "prod")])
    );
    let many: BTreeMap<String, String> = (0..49).map(|i| (format!("k{i}"), "v".into())).collect();
    assert_err!(s.add_consumer_tags(&app, many).await, LimitExceeded, rule);
    assert_err!(
        s.add_consumer_tags(&app, BTreeMap::new()).await,
        InvalidArgument,
        rule
    );
    let missing = ConsumerRef::by_name("t", "nobody");
    assert_err!(s.consumer_tags(&missing).await, ResourceNotFound, rule);
    assert_err!(
        s.add_consumer_tags(&missing, tags(&[("k", "v")])).await,
        ResourceNotFound,
        rule
    );
    s.deregister_consumer(&app).await.expect("deregister");
    s.register_consumer("t", "app").await.expect("again");
    assert!(
        s.consumer_tags(&app).await.expect("tags").is_empty(),
        "{rule}: a new consumer of the same name has no tags"
    );
}

pub async fn consumers(s: Backend) {
    let rule = "consumers";
    s.create_stream("c", 1).await.expect("create");
    for bad in ["", "has space", "a/b", "x:y", &"n".repeat(129)] {
        assert_err!(s.register_consumer("c", bad).await, InvalidArgument, rule);
    }
    s.register_consumer("c", &"n".repeat(128))
        .await
        .expect("a 128-character name is allowed");
    assert_err!(
        s.register_consumer("missing", "app").await,
        ResourceNotFound,
        rule
    );
    let before = crate::embedded_now_ms();
    let c = s
        .register_consumer("c", "app.v1_A-z")
        .await
        .expect("register");
    assert_eq!(c.name, "app.v1_A-z");
    assert_eq!(c.stream, "c");
    assert!(
        matches!(c.status, ConsumerStatus::Creating | ConsumerStatus::Active),
        "{rule}: a new consumer is CREATING or ACTIVE, got {:?}",
        c.status
    );
    assert!(
        c.created_ms >= before - 60_000,
        "{rule}: creation time is now"
    );
    assert_err!(
        s.register_consumer("c", "app.v1_A-z").await,
        ResourceInUse,
        rule
    );
    wait_active(&*s, "c", "app.v1_A-z").await;
    let summary = s.describe_stream_summary("c").await.expect("summary");
    assert_eq!(
        summary.consumer_count, 2,
        "{rule}: summary counts consumers"
    );
    assert_eq!(c.stream_created_ms, summary.created_ms);

    let by_name = ConsumerRef::by_name("c", "app.v1_A-z");
    let d = s.describe_consumer(&by_name).await.expect("describe");
    assert_eq!(
        (d.name.as_str(), d.created_ms),
        ("app.v1_A-z", c.created_ms)
    );
    assert_eq!(d.status, ConsumerStatus::Active);
    let pinned = ConsumerRef {
        created_secs: Some(c.created_ms.div_euclid(1000)),
        ..by_name.clone()
    };
    assert_eq!(
        s.describe_consumer(&pinned).await.expect("pinned").name,
        d.name
    );
    let older = ConsumerRef {
        created_secs: Some(c.created_ms.div_euclid(1000) - 1),
        ..by_name.clone()
    };
    assert_err!(s.describe_consumer(&older).await, ResourceNotFound, rule);
    assert_err!(s.deregister_consumer(&older).await, ResourceNotFound, rule);
    assert_err!(
        s.describe_consumer(&ConsumerRef::by_name("c", "nobody"))
            .await,
        ResourceNotFound,
        rule
    );
    assert_err!(
        s.describe_consumer(&ConsumerRef::by_name("missing", "app.v1_A-z"))
            .await,
        ResourceNotFound,
        rule
    );

    // A consumer name is unique per stream, not across streams.
    s.create_stream("d", 1).await.expect("create d");
    s.register_consumer("d", "app.v1_A-z")
        .await
        .expect("same name on another stream");

    s.deregister_consumer(&pinned).await.expect("deregister");
    assert_err!(s.describe_consumer(&by_name).await, ResourceNotFound, rule);
    assert_err!(
        s.deregister_consumer(&by_name).await,
        ResourceNotFound,
        rule
    );
    assert_eq!(
        list_all_consumers(&*s, "c", 100).await,
        vec!["n".repeat(128)],
        "{rule}: a deregistered consumer is not listed"
    );
    s.register_consumer("c", "app.v1_A-z")
        .await
        .expect("a deregistered name can be registered again");

    // Deleting a stream removes its consumers; a new stream of the same name has none.
    s.delete_stream("c").await.expect("delete");
    s.create_stream("c", 1).await.expect("re-create");
    assert!(
        list_all_consumers(&*s, "c", 100).await.is_empty(),
        "{rule}: a deleted stream's consumers are gone"
    );
    assert_err!(s.describe_consumer(&by_name).await, ResourceNotFound, rule);
    assert_eq!(
        s.describe_stream_summary("c")
            .await
            .expect("summary")
            .consumer_count,
        0
    );
    assert_eq!(list_all_consumers(&*s, "d", 100).await, vec!["app.v1_A-z"]);
}

/// At most MAX_CONSUMERS per stream; pages in name order; tokens and their rules.
pub async fn consumer_limits_and_pagination(s: Backend) {
    let rule = "consumer limits";
    s.create_stream("l", 1).await.expect("create");
    let mut expected = Vec::new();
    for i in 0..MAX_CONSUMERS {
        let name = format!("c{i:02}");
        s.register_consumer("l", &name).await.expect("register");
        // Waiting keeps backends that limit consumers in CREATING within that limit.
        wait_active(&*s, "l", &name).await;
        expected.push(name);
    }
    assert_err!(
        s.register_consumer("l", "one-more").await,
        LimitExceeded,
        rule
    );
    assert_err!(s.register_consumer("l", "c00").await, ResourceInUse, rule);
    for page in [1, 3, 7, 20, 100, 10_000] {
        assert_eq!(
            list_all_consumers(&*s, "l", page).await,
            expected,
            "{rule}: pages of {page} list every consumer once, in name order"
        );
    }
    let first = s
        .list_consumers(ListConsumersInput {
            stream: "l".into(),
            max_results: Some(5),
            ..ListConsumersInput::default()
        })
        .await
        .expect("page");
    assert_eq!(first.consumers.len(), 5);
    assert!(first.consumers.iter().all(|c| c.stream == "l"));
    let token = first.next_token.expect("more follow");
    for bad in [0, 10_001] {
        assert_err!(
            s.list_consumers(ListConsumersInput {
                stream: "l".into(),
                max_results: Some(bad),
                ..ListConsumersInput::default()
            })
            .await,
            InvalidArgument,
            rule
        );
    }
    assert_err!(
        s.list_consumers(ListConsumersInput {
            stream: "l".into(),
            next_token: Some("garbage".into()),
            ..ListConsumersInput::default()
        })
        .await,
        InvalidArgument,
        rule
    );
    let created = s
        .describe_stream_summary("l")
        .await
        .expect("summary")
        .created_ms;
    assert_err!(
        s.list_consumers(ListConsumersInput {
            stream: "l".into(),
            next_token: Some(token.clone()),
            stream_created_ms: Some(created),
            ..ListConsumersInput::default()
        })
        .await,
        InvalidArgument,
        rule
    );
    let all = s
        .list_consumers(ListConsumersInput {
            stream: "l".into(),
            stream_created_ms: Some(created),
            ..ListConsumersInput::default()
        })
        .await
        .expect("by creation time");
    assert_eq!(all.consumers.len(), MAX_CONSUMERS);
    assert_err!(
        s.list_consumers(ListConsumersInput {
            stream: "l".into(),
            stream_created_ms: Some(created - 1),
            ..ListConsumersInput::default()
        })
        .await,
        ResourceNotFound,
        rule
    );
    assert_err!(
        s.list_consumers(ListConsumersInput {
            stream: "missing".into(),
            ..ListConsumersInput::default()
        })
        .await,
        ResourceNotFound,
        rule
    );
    // A token of one stream is refused for another.
    s.create_stream("m", 1).await.expect("create m");
    assert_err!(
        s.list_consumers(ListConsumersInput {
            stream: "m".into(),
            next_token: Some(token.clone()),
            ..ListConsumersInput::default()
        })
        .await,
        InvalidArgument,
        rule
    );
    // After deregistering one, there is room for one more.
    s.deregister_consumer(&ConsumerRef::by_name("l", "c07"))
        .await
        .expect("deregister");
    s.register_consumer("l", "one-more")
        .await
        .expect("room after a deregistration");
    // A token outlives neither its stream nor its generation.
    s.delete_stream("l").await.expect("delete");
    assert_err!(
        s.list_consumers(ListConsumersInput {
            stream: "l".into(),
            next_token: Some(token.clone()),
            ..ListConsumersInput::default()
        })
        .await,
        ResourceNotFound,
        rule
    );
    s.create_stream("l", 1).await.expect("re-create");
    assert_err!(
        s.list_consumers(ListConsumersInput {
            stream: "l".into(),
            next_token: Some(token),
            ..ListConsumersInput::default()
        })
        .await,
        ResourceNotFound,
        rule
    );
}

/// The continuation sequence number of an iterator resumes exactly where it stands.
pub async fn continuation_sequence_numbers(s: Backend) {
    let rule = "continuation sequence number";
    s.create_stream("k", 1).await.expect("create");
    let shard = shard_id(0);
    let desc = s.describe_stream("k").await.expect("describe");
    let start = s
        .get_shard_iterator("k", &shard, IteratorSpec::TrimHorizon)
        .await
        .expect("trim horizon");
    assert_eq!(
        s.continuation_sequence_number(&start)
            .expect("continuation"),
        desc.shards[0].starting_sequence_number,
        "{rule}: before any record, the shard's starting sequence number"
    );
    assert_err!(
        s.continuation_sequence_number("garbage"),
        InvalidArgument,
        rule
    );
    // What a request carrying only a token is authorized against.
    assert_eq!(s.token_stream(&start).as_deref(), Some("k"), "token stream");
    assert_eq!(s.token_stream("garbage"), None, "token stream of garbage");
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(
            s.put_record("k", rec("pk", format!("r{i}")))
                .await
                .expect("put")
                .sequence_number,
        );
    }
    let page = s.get_records(&start, 3).await.expect("get");
    assert_eq!(page.records.len(), 3);
    let next = page.next_iterator.expect("open shard");
    let cont = s.continuation_sequence_number(&next).expect("continuation");
    assert_eq!(cont, seqs[2], "{rule}: the last record read");
    let resumed = s
        .get_shard_iterator("k", &shard, IteratorSpec::AfterSequenceNumber(cont))
        .await
        .expect("after continuation");
    let rest = s.get_records(&resumed, 100).await.expect("rest");
    assert_eq!(
        rest.records
            .iter()
            .map(|r| r.sequence_number.clone())
            .collect::<Vec<_>>(),
        seqs[3..].to_vec(),
        "{rule}: resuming after it reads exactly the records not yet read"
    );
    let latest = s
        .get_shard_iterator("k", &shard, IteratorSpec::Latest)
        .await
        .expect("latest");
    assert_eq!(
        s.continuation_sequence_number(&latest).expect("latest"),
        seqs[4],
        "{rule}: at the tail, the newest record"
    );
    let at = s
        .get_shard_iterator("k", &shard, IteratorSpec::AtSequenceNumber(seqs[1].clone()))
        .await
        .expect("at");
    assert_eq!(
        s.continuation_sequence_number(&at).expect("at"),
        seqs[0],
        "{rule}: AT a record, the record before it"
    );
}
