//! The last hour of the pipeline's traffic, for the console's charts: every
//! [`SAMPLE_EVERY`] the process's own metrics (what `/metrics` would answer) are read for
//! records and bytes appended per stream and shard and the iterator age per mapping and
//! shard, and kept in a
//! ring of [`KEEP`] samples — memory bounded by the number of streams, shards and mappings, which
//! operators name, never by traffic.
//!
//! **Decision:** the samples come from the rendered Prometheus text rather than from counters
//! of our own, so the charts show exactly what a scraper sees, and no part grows a second
//! set of counters. They are this process's figures: with several processes, each shows its
//! own (Prometheus over every process is the whole picture; docs/METRICS.md).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// One hour of samples (and one more, for the first rate).
const KEEP: usize = 361;

#[derive(Debug, Clone, Default, PartialEq)]
struct Sample {
    t_ms: i64,
    /// Stream → (records, bytes) appended since the process started.
    streams: BTreeMap<String, (f64, f64)>,
    /// (stream, shard) → (records, bytes) appended since the process started.
    shards: BTreeMap<(String, String), (f64, f64)>,
    /// Mapping → the largest iterator age over its shards, seconds.
    ages: BTreeMap<String, f64>,
    /// (mapping, shard) → iterator age, seconds.
    shard_ages: BTreeMap<(String, String), f64>,
}

#[derive(Default)]
pub(crate) struct History {
    samples: Mutex<VecDeque<Sample>>,
    /// Metrics are off (`metrics = false`): nothing is sampled.
    off: bool,
}

impl History {
    /// Starts sampling `handle` in the background (with none, metrics are off).
    pub(crate) fn start(handle: Option<PrometheusHandle>) -> Arc<History> {
        let Some(handle) = handle else {
            return Arc::new(History {
                off: true,
                ..History::default()
            });
        };
        let h = Arc::new(History::default());
        let this = h.clone();
        tokio::spawn(async move {
            loop {
                let s = parse(&handle.render(), sluice_meta::now_ms());
                this.push(s);
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
        h
    }

    fn push(&self, s: Sample) {
        if let Ok(mut q) = self.samples.lock() {
            if q.len() == KEEP {
                q.pop_front();
            }
            q.push_back(s);
        }
    }

    /// The series: per stream, records/s and bytes/s between consecutive samples; per
    /// mapping, the iterator age at each sample.
    pub(crate) fn series(&self) -> Value {
        let samples: Vec<Sample> = match self.samples.lock() {
            Ok(q) => q.iter().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let mut streams: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut shards: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for w in samples.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let secs = ((b.t_ms - a.t_ms) as f64 / 1000.0).max(0.001);
            // A counter that went down was reset (never happens in one process; safe).
            let rate = |now: f64, before: f64| ((now - before).max(0.0)) / secs;
            let point = |(rec, bytes): (f64, f64), (r0, b0): (f64, f64)| {
                json!({
                    "t": b.t_ms,
                    "recordsPerSec": rate(rec, r0),
                    "bytesPerSec": rate(bytes, b0),
                })
            };
            for (name, now) in &b.streams {
                let before = a.streams.get(name).copied().unwrap_or((0.0, 0.0));
                streams
                    .entry(name.clone())
                    .or_default()
                    .push(point(*now, before));
            }
            for (key, now) in &b.shards {
                let before = a.shards.get(key).copied().unwrap_or((0.0, 0.0));
                shards
                    .entry(format!("{} {}", key.0, key.1))
                    .or_default()
                    .push(point(*now, before));
            }
        }
        let mut mappings: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut mapping_shards: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for s in &samples {
            for (name, age) in &s.ages {
                mappings
                    .entry(name.clone())
                    .or_default()
                    .push(json!({"t": s.t_ms, "iteratorAgeSecs": age}));
            }
            for ((mapping, shard), age) in &s.shard_ages {
                mapping_shards
                    .entry(format!("{mapping} {shard}"))
                    .or_default()
                    .push(json!({"t": s.t_ms, "iteratorAgeSecs": age}));
            }
        }
        json!({
            "metricsOff": self.off,
            "intervalSecs": SAMPLE_EVERY.as_secs(),
            "streams": streams,
            "shards": shards,
            "mappings": mappings,
            "mappingShards": mapping_shards,
        })
    }
}

/// The sample in a Prometheus text exposition.
fn parse(text: &str, t_ms: i64) -> Sample {
    let mut s = Sample {
        t_ms,
        ..Sample::default()
    };
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, labels_of(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        match name {
            "sluice_stream_appended_records_total" | "sluice_stream_appended_bytes_total" => {
                if let Some(stream) = labels.get("stream") {
                    let records = name.ends_with("records_total");
                    let add = |e: &mut (f64, f64)| {
                        if records {
                            e.0 += value;
                        } else {
                            e.1 += value;
                        }
                    };
                    add(s.streams.entry(stream.clone()).or_default());
                    if let Some(shard) = labels.get("shard") {
                        add(s.shards.entry((stream.clone(), shard.clone())).or_default());
                    }
                }
            }
            "sluice_mapping_iterator_age_seconds" => {
                if let Some(mapping) = labels.get("mapping") {
                    let e = s.ages.entry(mapping.clone()).or_insert(0.0);
                    *e = e.max(value);
                    if let Some(shard) = labels.get("shard") {
                        s.shard_ages.insert((mapping.clone(), shard.clone()), value);
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// `a="x",b="y"` (values with `\"` and `\\` escapes).
fn labels_of(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_owned(), value);
        if chars.next() != Some(',') {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE sluice_stream_appended_records_total counter
sluice_stream_appended_records_total{stream=\"uploads-stream\",shard=\"shardId-000000000000\"} 20
sluice_stream_appended_records_total{stream=\"uploads-stream\",shard=\"shardId-000000000001\"} 10
sluice_stream_appended_bytes_total{stream=\"uploads-stream\",shard=\"shardId-000000000000\"} 3000
sluice_stream_appended_records_total{stream=\"other\",shard=\"shardId-000000000000\"} 5
sluice_mapping_iterator_age_seconds{mapping=\"m\",shard=\"shardId-000000000000\"} 2
sluice_mapping_iterator_age_seconds{mapping=\"m\",shard=\"shardId-000000000001\"} 7.5
sluice_http_requests_total{listener=\"api\",route=\"/uploads\",status=\"200\"} 9
";

    #[test]
    fn samples_are_read_from_the_exposition() {
        let s = parse(TEXT, 1000);
        assert_eq!(s.streams["uploads-stream"], (30.0, 3000.0));
        assert_eq!(s.streams["other"], (5.0, 0.0));
        assert_eq!(
            s.shards[&(
                "uploads-stream".to_owned(),
                "shardId-000000000001".to_owned()
            )],
            (10.0, 0.0)
        );
        assert_eq!(
            s.shard_ages[&("m".to_owned(), "shardId-000000000001".to_owned())],
            7.5
        );
        assert_eq!(s.ages["m"], 7.5);
        assert_eq!(
            labels_of(r#"a="x\"y",b="z""#),
            BTreeMap::from([("a".into(), "x\"y".into()), ("b".into(), "z".into())])
        );
    }

    #[test]
    fn rates_come_from_consecutive_samples_and_the_ring_is_bounded() {
        let h = History::default();
        h.push(parse(TEXT, 0));
        h.push(parse(
            &TEXT.replace("} 20", "} 120").replace("} 3000", "} 13000"),
            10_000,
        ));
        let v = h.series();
        let point = &v["streams"]["uploads-stream"][0];
        assert_eq!(point["recordsPerSec"], 10.0);
        assert_eq!(point["bytesPerSec"], 1000.0);
        assert_eq!(v["mappings"]["m"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            v["shards"]["uploads-stream shardId-000000000000"][0]["recordsPerSec"],
            10.0
        );
        assert_eq!(
            v["mappingShards"]["m shardId-000000000001"][0]["iteratorAgeSecs"],
            7.5
        );
        for i in 0..1000 {
            h.push(parse(TEXT, i));
        }
        assert_eq!(h.samples.lock().expect("lock").len(), KEEP);
    }
}
