//! The embedded backend against the shared conformance suite.

use std::sync::Arc;

use sluice_db::Db;
use sluice_stream::Stream;
use sluice_stream::embedded::{EmbeddedStream, MIGRATIONS, StreamOptions};

/// Runs the suite on a fresh database per case, opened with `options`.
async fn run_embedded(options: impl Fn() -> StreamOptions) {
    let root = tempfile::tempdir().expect("tempdir");
    let counter = std::sync::atomic::AtomicU32::new(0);
    sluice_stream::conformance::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = root.path().join(format!("case-{n}.db"));
        let options = options();
        async move {
            let db = Db::open(&path, MIGRATIONS).expect("open db");
            Arc::new(EmbeddedStream::open_with(db, options).expect("open stream"))
                as Arc<dyn Stream>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_passes_the_conformance_suite() {
    run_embedded(StreamOptions::default).await;
}

/// The same with 2 KiB segments: nearly every batch starts a segment, so reads, iterators,
/// reshards and trims all cross segment boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_with_tiny_segments_passes_the_conformance_suite() {
    run_embedded(|| StreamOptions {
        segment_bytes: 2 * 1024,
        ..StreamOptions::default()
    })
    .await;
}
