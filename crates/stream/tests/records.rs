//! The record-engine conformance suite on every record engine (today: the embedded log).

use std::sync::Arc;

use sluice_stream::RecordLog;
use sluice_stream::records::embedded::{EmbeddedLog, SEGMENT_BYTES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log_passes_the_records_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |name: &str| {
        Arc::new(EmbeddedLog::open(&dir.path().join(name), SEGMENT_BYTES).expect("open log"))
            as Arc<dyn RecordLog>
    };
    sluice_stream::records::conformance::run_all(&open).await;
}

/// The same with 2 KiB segments, opened by URL: nearly every batch starts a segment, and
/// trimming deletes segments, so reads, trims and reopens cross segment boundaries and a
/// reopened log has lost every trimmed record's frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log_with_tiny_segments_passes_the_records_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |name: &str| {
        let url = format!(
            "embedded://{}?segment_bytes=2048",
            dir.path().join(name).display()
        );
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(sluice_stream::open_records(&url, dir.path()))
        })
        .expect("open log")
    };
    sluice_stream::records::conformance::run_all(&open).await;
}
