//! The embedded backend against the shared conformance suite.

use std::sync::Arc;

use sluice_db::Db;
use sluice_stream::Stream;
use sluice_stream::embedded::{EmbeddedStream, MIGRATIONS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_passes_the_conformance_suite() {
    let root = tempfile::tempdir().expect("tempdir");
    let counter = std::sync::atomic::AtomicU32::new(0);
    sluice_stream::conformance::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = root.path().join(format!("case-{n}.db"));
        async move {
            let db = Db::open(&path, MIGRATIONS).expect("open db");
            Arc::new(EmbeddedStream::open(db).expect("open stream")) as Arc<dyn Stream>
        }
    })
    .await;
}
