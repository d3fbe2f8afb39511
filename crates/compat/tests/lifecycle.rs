//! The lifecycle sweep on the embedded store, with the clock moved forward: `Days`
//! expirations and `DaysAfterInitiation` aborts become due at the midnight S3 rounds to,
//! not before, and only for what the rules' filters match.

use bytes::Bytes;
use sluice_compat::s3_lifecycle::{Swept, sweep};
use sluice_store::embedded::EmbeddedStore;
use sluice_store::{ObjectStore, PutOptions};

const DAY_MS: i64 = 86_400_000;

#[tokio::test]
async fn days_and_uploads_expire_at_the_midnight_after_their_due_time() {
    let engines = sluice_meta::conformance::TestEngines::new();
    let dir = engines.dir().to_owned();
    let db = engines.meta("lifecycle", sluice_store::embedded::MIGRATIONS);
    let store = sluice_store::embedded::EmbeddedStore::new(
        db,
        sluice_blobs::conformance::test_blobs(&dir.join("blobs")),
    );
    store.create_bucket("bkt").await.expect("bucket");
    let put = |key: &'static str| {
        let store = &store;
        async move {
            store
                .put("bkt", key, Bytes::from_static(b"x"), PutOptions::default())
                .await
                .expect("put")
        }
    };
    let old = put("tmp/a").await;
    put("keep/b").await;
    let upload = store
        .create_multipart("bkt", "tmp/big", PutOptions::default())
        .await
        .expect("multipart");
    let config = serde_json::json!({"rules": [
        {"id": "tmp", "status": "Enabled", "filter": {"prefix": "tmp/"},
         "expiration": {"days": 2}, "abort_incomplete_multipart_upload": {"days_after_initiation": 1}},
    ]});
    // The document as the S3 edge stores it (s3s' types, serialised).
    let cfg: s3s::dto::BucketLifecycleConfiguration =
        serde_json::from_value(config).expect("a lifecycle configuration");
    sluice_compat::s3_lifecycle::validate(&cfg).expect("valid");
    store
        .set_bucket_config(
            "bkt",
            "lifecycle",
            Some(serde_json::to_string(&cfg).expect("json")),
        )
        .await
        .expect("config");

    let midnight_after = |t: i64| (t / DAY_MS + 1) * DAY_MS;
    let upload_due = midnight_after(old.last_modified_ms + DAY_MS);
    let object_due = midnight_after(old.last_modified_ms + 2 * DAY_MS);

    assert_eq!(
        sweep(&store, upload_due - 1).await.expect("sweep"),
        Swept::default()
    );
    assert_eq!(
        sweep(&store, upload_due).await.expect("sweep"),
        Swept {
            aborted_uploads: 1,
            ..Swept::default()
        }
    );
    assert!(store.multipart(&upload).await.is_err(), "aborted");
    assert_eq!(
        sweep(&store, object_due - 1).await.expect("sweep"),
        Swept::default()
    );
    assert_eq!(
        sweep(&store, object_due).await.expect("sweep"),
        Swept {
            expired_objects: 1,
            ..Swept::default()
        }
    );
    let left: Vec<String> = store
        .list("bkt", "", None, 10)
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(left, vec!["keep/b".to_owned()]);
}

/// (version, latest, marker) of every entry of `key`.
async fn versions(store: &EmbeddedStore, key: &str) -> Vec<(String, bool, bool)> {
    store
        .list_versions("ver", key, None, 100)
        .await
        .expect("list")
        .into_iter()
        .map(|e| {
            (
                e.info.version_id.unwrap_or_else(|| "null".into()),
                e.is_latest,
                e.delete_marker,
            )
        })
        .collect()
}

#[tokio::test]
async fn noncurrent_versions_and_lone_delete_markers_expire() {
    let engines = sluice_meta::conformance::TestEngines::new();
    let dir = engines.dir().to_owned();
    let db = engines.meta("lifecycle-versions", sluice_store::embedded::MIGRATIONS);
    let store = EmbeddedStore::new(
        db,
        sluice_blobs::conformance::test_blobs(&dir.join("blobs")),
    );
    store.create_bucket("ver").await.expect("bucket");
    store
        .set_bucket_config("ver", "versioning", Some("Enabled".into()))
        .await
        .expect("versioning");
    let put = |key: &'static str| {
        let store = &store;
        async move {
            store
                .put("ver", key, Bytes::from_static(b"x"), PutOptions::default())
                .await
                .expect("put")
                .version_id
                .expect("a version")
        }
    };
    // k: four versions, three of them noncurrent; gone: one version under a marker.
    let k1 = put("k").await;
    let k2 = put("k").await;
    let k3 = put("k").await;
    let k4 = put("k").await;
    let g1 = put("gone").await;
    store.delete("ver", "gone").await.expect("marker");
    let config = serde_json::json!({"rules": [
        {"id": "k", "status": "Enabled", "filter": {"prefix": "k"},
         "noncurrent_version_expiration": {"noncurrent_days": 1, "newer_noncurrent_versions": 1}},
        {"id": "gone", "status": "Enabled", "filter": {"prefix": "gone"},
         "noncurrent_version_expiration": {"noncurrent_days": 1},
         "expiration": {"expired_object_delete_marker": true}},
    ]});
    let cfg: s3s::dto::BucketLifecycleConfiguration =
        serde_json::from_value(config).expect("a lifecycle configuration");
    sluice_compat::s3_lifecycle::validate(&cfg).expect("valid");
    store
        .set_bucket_config(
            "ver",
            "lifecycle",
            Some(serde_json::to_string(&cfg).expect("json")),
        )
        .await
        .expect("config");
    let written = store.head("ver", "k").await.expect("head").last_modified_ms;
    let due = (written / DAY_MS + 2) * DAY_MS;
    assert_eq!(
        sweep(&store, due - DAY_MS - 1).await.expect("sweep"),
        Swept::default(),
        "nothing has been noncurrent for a day yet"
    );
    // Due: k keeps its current version and its newest noncurrent one; gone's only version
    // goes, and its marker is left alone for this sweep.
    assert_eq!(sweep(&store, due).await.expect("sweep").expired_versions, 3);
    assert_eq!(
        versions(&store, "k").await,
        vec![(k4, true, false), (k3, false, false)]
    );
    let _ = (k1, k2, g1);
    let left = versions(&store, "gone").await;
    assert_eq!(left.len(), 1);
    assert!(left[0].1 && left[0].2, "the marker alone: {left:?}");
    // The next sweep removes the lone marker.
    assert_eq!(sweep(&store, due).await.expect("sweep").expired_versions, 1);
    assert!(versions(&store, "gone").await.is_empty());

    // What S3 refuses.
    let refused = serde_json::json!({"rules": [
        {"id": "x", "status": "Enabled", "filter": {"prefix": ""},
         "expiration": {"days": 3, "expired_object_delete_marker": true}},
    ]});
    let cfg: s3s::dto::BucketLifecycleConfiguration =
        serde_json::from_value(refused).expect("a lifecycle configuration");
    assert!(sluice_compat::s3_lifecycle::validate(&cfg).is_err());
}
