//! The metadata conformance suite on every engine.

use sluice_meta::conformance::{MIGRATIONS, TestEngines, run_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_suite() {
    let engines = TestEngines::new();
    run_all(&|name| sluice_meta::open(&engines.sqlite_url(name), MIGRATIONS).expect("open sqlite"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_suite() {
    let engines = TestEngines::new();
    run_all(&|name| {
        sluice_meta::open(&engines.postgres_url(name), MIGRATIONS).expect("open postgres")
    })
    .await;
}
