//! The blob conformance suite on every engine.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_passes_the_suite() {
    let dir = std::env::temp_dir().join(format!("sluice-blobs-{}", sluice_blobs::new_id()));
    let b = sluice_blobs::open(&format!("file://{}", dir.display())).expect("open");
    sluice_blobs::conformance::run_all(b.as_ref()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
