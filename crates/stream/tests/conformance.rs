//! The embedded backend against the shared conformance suite, with its metadata on every
//! metadata engine.

use std::sync::Arc;

use sluice_meta::conformance::TestEngines;
use sluice_stream::Stream;
use sluice_stream::embedded::{EmbeddedStream, MIGRATIONS, StreamOptions};

/// Runs the suite on fresh metadata and a fresh log per case, opened with `options`;
/// `meta_url` names case `n`'s metadata database.
async fn run_embedded(
    engines: &TestEngines,
    meta_url: impl Fn(u32) -> String,
    options: impl Fn() -> StreamOptions,
) {
    let counter = std::sync::atomic::AtomicU32::new(0);
    sluice_stream::conformance::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = meta_url(n);
        let log = engines.dir().join(format!("case-{n}-log"));
        let options = options();
        async move {
            let db = sluice_meta::open(&url, MIGRATIONS).expect("open metadata");
            Arc::new(EmbeddedStream::open_with(db, &log, options).expect("open stream"))
                as Arc<dyn Stream>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_passes_the_conformance_suite() {
    let e = TestEngines::new();
    run_embedded(
        &e,
        |n| e.sqlite_url(&format!("case-{n}")),
        StreamOptions::default,
    )
    .await;
}

/// The same with 2 KiB segments: nearly every batch starts a segment, so reads, iterators,
/// reshards and trims all cross segment boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_with_tiny_segments_passes_the_conformance_suite() {
    let e = TestEngines::new();
    run_embedded(
        &e,
        |n| e.sqlite_url(&format!("case-{n}")),
        || StreamOptions {
            segment_bytes: 2 * 1024,
            ..StreamOptions::default()
        },
    )
    .await;
}

/// Stream metadata on PostgreSQL, records in the embedded log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log_with_postgres_metadata_passes_the_conformance_suite() {
    let e = TestEngines::new();
    run_embedded(
        &e,
        |n| e.postgres_url(&format!("case{n}")),
        StreamOptions::default,
    )
    .await;
}
