//! The blob conformance suite on every engine.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_passes_the_suite() {
    let dir = std::env::temp_dir().join(format!("sluice-blobs-{}", sluice_blobs::new_id()));
    let b = sluice_blobs::open(&format!("file://{}", dir.display())).expect("open");
    sluice_blobs::conformance::run_all(b.as_ref()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Inspecting a blob directory creates nothing; its check says what is wrong with it.
#[tokio::test]
async fn fs_check_reports_an_unusable_directory() {
    let dir = std::env::temp_dir().join(format!("sluice-blobs-{}", sluice_blobs::new_id()));
    let url = format!("file://{}", dir.display());
    let b = sluice_blobs::inspect(&url).expect("inspect");
    assert_eq!(b.describe(), url);
    let e = b.check().await.expect_err("missing");
    assert!(e.is_unavailable(), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(!dir.exists(), "inspecting creates nothing");

    std::fs::write(&dir, b"a file").expect("file");
    let e = b.check().await.expect_err("a file");
    assert!(e.to_string().contains("not a directory"), "{e}");
    std::fs::remove_file(&dir).expect("remove");

    std::fs::create_dir_all(&dir).expect("dir");
    b.check().await.expect("usable");
    assert_eq!(
        std::fs::read_dir(&dir).expect("read").count(),
        0,
        "the probe is gone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
