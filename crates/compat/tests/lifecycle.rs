//! The lifecycle sweep on the embedded store, with the clock moved forward: `Days`
//! expirations and `DaysAfterInitiation` aborts become due at the midnight S3 rounds to,
//! not before, and only for what the rules' filters match.

use bytes::Bytes;
use sluice_compat::s3_lifecycle::{Swept, sweep};
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
            expired_objects: 0,
            aborted_uploads: 1
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
            aborted_uploads: 0
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
