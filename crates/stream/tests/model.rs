//! Model-based property test: random put / split / merge / read / reopen sequences on the
//! embedded backend give the same results as a plain in-memory model of a Kinesis stream.

use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;
use sluice_meta::Meta;
use sluice_stream::embedded::{EmbeddedStream, MIGRATIONS, log_dir_of};
use sluice_stream::{
    IteratorSpec, PutRecord, Stream, StreamError, even_ranges, partition_hash, sequence_number,
    shard_id,
};

#[derive(Debug, Clone)]
enum Op {
    /// Put with a partition key (routed by MD5) or an explicit hash key.
    Put {
        key: Result<u8, u128>,
        data: Vec<u8>,
    },
    Split {
        pick: usize,
        at: u128,
    },
    Merge {
        pick: usize,
    },
    Read {
        pick: usize,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop_oneof![(0u8..8).prop_map(Ok), any::<u128>().prop_map(Err)],
              proptest::collection::vec(any::<u8>(), 0..48))
            .prop_map(|(key, data)| Op::Put { key, data }),
        1 => (any::<usize>(), any::<u128>()).prop_map(|(pick, at)| Op::Split { pick, at }),
        1 => any::<usize>().prop_map(|pick| Op::Merge { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Read { pick }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone)]
struct MShard {
    idx: u64,
    start: u128,
    end: u128,
    parents: Vec<u64>,
    open: bool,
    /// (sequence number, partition key, data)
    records: Vec<(String, String, Vec<u8>)>,
}

struct Model {
    shards: Vec<MShard>,
}

impl Model {
    fn new(n: u32) -> Self {
        let shards = even_ranges(n)
            .into_iter()
            .enumerate()
            .map(|(i, (start, end))| MShard {
                idx: i as u64,
                start,
                end,
                parents: vec![],
                open: true,
                records: vec![],
            })
            .collect();
        Model { shards }
    }

    fn open_sorted(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.shards.len())
            .filter(|&i| self.shards[i].open)
            .collect();
        v.sort_by_key(|&i| self.shards[i].start);
        v
    }

    fn next_idx(&self) -> u64 {
        self.shards.len() as u64
    }

    fn add_child(&mut self, start: u128, end: u128, parents: Vec<u64>) {
        let idx = self.next_idx();
        self.shards.push(MShard {
            idx,
            start,
            end,
            parents,
            open: true,
            records: vec![],
        });
    }

    fn children(&self, idx: u64) -> Vec<String> {
        self.shards
            .iter()
            .filter(|s| s.parents.contains(&idx))
            .map(|s| shard_id(s.idx))
            .collect()
    }
}

/// Opens the backend with 4 KiB segments, so that the random runs cross segment
/// boundaries (and restarts rescan many segments); conformance runs the default size too.
async fn open_backend(path: &Path) -> EmbeddedStream {
    let db = Meta::open_sqlite(path, MIGRATIONS).expect("open db");
    let options = sluice_stream::embedded::StreamOptions {
        segment_bytes: 4 * 1024,
        ..Default::default()
    };
    EmbeddedStream::open_with(db, &log_dir_of(path), options).expect("open stream")
}

async fn run(initial: u32, ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.db");
    let mut s = open_backend(&path).await;
    s.create_stream("m", initial).await.expect("create");
    let mut m = Model::new(initial);
    for op in ops {
        match op {
            Op::Put { key, data } => {
                let (pk, ehk, hash) = match key {
                    Ok(k) => {
                        let pk = format!("key-{k}");
                        let h = partition_hash(&pk);
                        (pk, None, h)
                    }
                    Err(h) => ("explicit".to_owned(), Some(h.to_string()), h),
                };
                let got = s
                    .put_record(
                        "m",
                        PutRecord {
                            partition_key: pk.clone(),
                            explicit_hash_key: ehk,
                            data: Bytes::from(data.clone()),
                        },
                    )
                    .await
                    .expect("put");
                let target = m
                    .shards
                    .iter_mut()
                    .find(|x| x.open && x.start <= hash && hash <= x.end)
                    .expect("model covers every key");
                // Counters of a new shard start at 1 (0 is the shard's starting sequence number).
                let seq = sequence_number(target.idx, target.records.len() as u64 + 1);
                assert_eq!(got.shard_id, shard_id(target.idx), "routing");
                assert_eq!(got.sequence_number, seq, "numbering");
                target.records.push((seq, pk, data));
            }
            Op::Split { pick, at } => {
                let open = m.open_sorted();
                let i = open[pick % open.len()];
                let (start, end, idx) = (m.shards[i].start, m.shards[i].end, m.shards[i].idx);
                let res = s.split_shard("m", &shard_id(idx), at).await;
                if at > start && at <= end {
                    res.expect("valid split");
                    m.shards[i].open = false;
                    m.add_child(start, at - 1, vec![idx]);
                    m.add_child(at, end, vec![idx]);
                } else {
                    assert!(
                        matches!(res, Err(StreamError::InvalidArgument(_))),
                        "bad split point"
                    );
                }
            }
            Op::Merge { pick } => {
                let open = m.open_sorted();
                if open.len() < 2 {
                    continue;
                }
                let k = pick % (open.len() - 1);
                let (a, b) = (open[k], open[k + 1]);
                let (ai, bi) = (m.shards[a].idx, m.shards[b].idx);
                s.merge_shards("m", &shard_id(ai), &shard_id(bi))
                    .await
                    .expect("merge neighbours");
                m.shards[a].open = false;
                m.shards[b].open = false;
                let (start, end) = (m.shards[a].start, m.shards[b].end);
                m.add_child(start, end, vec![ai, bi]);
            }
            Op::Read { pick } => {
                let sh = m.shards[pick % m.shards.len()].clone();
                let mut it = s
                    .get_shard_iterator("m", &shard_id(sh.idx), IteratorSpec::TrimHorizon)
                    .await
                    .expect("iterator");
                let mut got = Vec::new();
                let last = loop {
                    let mut page = s.get_records(&it, 7).await.expect("get");
                    let empty = page.records.is_empty();
                    got.extend(
                        std::mem::take(&mut page.records)
                            .into_iter()
                            .map(|r| (r.sequence_number, r.partition_key, r.data.to_vec())),
                    );
                    match page.next_iterator.clone() {
                        Some(next) if !empty => it = next,
                        _ => break page,
                    }
                };
                assert_eq!(got, sh.records, "records of {}", shard_id(sh.idx));
                if sh.open {
                    assert!(last.next_iterator.is_some() && last.child_shards.is_empty());
                } else {
                    assert!(last.next_iterator.is_none(), "closed shard ends");
                    let kids: Vec<String> = last
                        .child_shards
                        .iter()
                        .map(|c| c.shard_id.clone())
                        .collect();
                    assert_eq!(kids, m.children(sh.idx), "child shards");
                }
            }
            Op::Reopen => {
                s.db().close();
                drop(s);
                s = open_backend(&path).await;
            }
        }
    }
    let d = s.describe_stream("m").await.expect("describe");
    let got: Vec<(String, u128, u128, bool)> = d
        .shards
        .iter()
        .map(|x| {
            (
                x.shard_id.clone(),
                x.starting_hash_key,
                x.ending_hash_key,
                x.ending_sequence_number.is_none(),
            )
        })
        .collect();
    let want: Vec<(String, u128, u128, bool)> = m
        .shards
        .iter()
        .map(|x| (shard_id(x.idx), x.start, x.end, x.open))
        .collect();
    assert_eq!(got, want, "shard map");
    let report = s.check().await.expect("check");
    assert!(report.is_ok(), "{:?}", report.problems);
    s.db().close();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn embedded_backend_matches_the_model(initial in 1u32..4, ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run(initial, ops));
    }
}
