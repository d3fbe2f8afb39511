//! A multipart upload of the object store completed as an upload: object, end of the
//! multipart upload, stream record and status row, all committed together or not at all.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use sluice_meta::params;
use sluice_meta::{Meta, Migration};
use sluice_store::embedded::EmbeddedStore;
use sluice_store::{MIN_PART_BYTES, ObjectStore, PutOptions, StoreError};
use sluice_stream::embedded::EmbeddedStream;
use sluice_stream::{IteratorSpec, Stream};
use sluice_uploads::embedded::EmbeddedUploads;
use sluice_uploads::{
    MultipartCompletion, NewUpload, UploadError, UploadLedger, UploadRecord, UploadSink,
    UploadStatus,
};

struct Env {
    _dir: sluice_meta::conformance::TestEngines,
    db: Meta,
    store: EmbeddedStore,
    stream: EmbeddedStream,
    uploads: EmbeddedUploads,
}

fn open() -> Env {
    let engines = sluice_meta::conformance::TestEngines::new();
    let dir = engines.dir().to_owned();
    let migrations: Vec<Migration> = [
        sluice_store::embedded::MIGRATIONS,
        sluice_stream::embedded::MIGRATIONS,
        sluice_uploads::embedded::MIGRATIONS,
    ]
    .iter()
    .flat_map(|part| part.iter())
    .copied()
    .collect();
    let db = engines.meta("multipart", &migrations);
    let store = EmbeddedStore::new(
        db.clone(),
        sluice_blobs::conformance::test_blobs(&dir.join("blobs")),
    );
    let stream = EmbeddedStream::open(db.clone(), &dir.join("log")).expect("stream");
    let uploads = EmbeddedUploads::new(db.clone(), store.clone(), stream.clone());
    Env {
        _dir: engines,
        db,
        store,
        stream,
        uploads,
    }
}

/// How many blobs the store holds.
async fn blob_files(store: &EmbeddedStore) -> usize {
    sluice_blobs::conformance::count(store.blobs().as_ref()).await
}

async fn upload_rows(db: &Meta) -> i64 {
    db.read(|c| {
        c.query_row("SELECT count(*) FROM uploads", params![], |r| {
            r.get::<i64>(0)
        })
        .map_err(UploadError::from)
    })
    .await
    .expect("count")
}

/// A multipart upload of `b/uploads/big.txt` with two parts (a blob part and an inline
/// one); returns its id, its parts and the whole body.
async fn two_parts(e: &Env) -> (String, Vec<(u32, String)>, Vec<u8>) {
    e.store.ensure_bucket("bkt").await.expect("bucket");
    let id = e
        .store
        .create_multipart(
            "bkt",
            "uploads/big.txt",
            PutOptions {
                content_type: Some("text/plain".into()),
                metadata: [("k".to_owned(), "v".to_owned())].into(),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    let p1 = vec![b'a'; MIN_PART_BYTES as usize];
    let p2 = b"the end".to_vec();
    let e1 = e
        .store
        .upload_part(&id, 1, Bytes::from(p1.clone()))
        .await
        .expect("part 1");
    let e2 = e
        .store
        .upload_part(&id, 2, Bytes::from(p2.clone()))
        .await
        .expect("part 2");
    let whole = [p1, p2].concat();
    (id, vec![(1, e1), (2, format!("\"{e2}\""))], whole)
}

fn completion(id: &str, parts: &[(u32, String)], user: &str) -> MultipartCompletion {
    MultipartCompletion {
        multipart_id: id.to_owned(),
        parts: parts.to_vec(),
        user_sub: user.to_owned(),
        filename: "big.txt".into(),
        request_id: "req-1".into(),
        stream: "uploads".into(),
        partition_key: "pk".into(),
    }
}

#[tokio::test]
async fn a_completion_whose_record_cannot_be_appended_commits_nothing() {
    let e = open();
    let (id, parts, whole) = two_parts(&e).await;
    let files = blob_files(&e.store).await;

    // No stream yet: the record cannot be appended.
    let err = e
        .uploads
        .complete_multipart(completion(&id, &parts, "aws:AKID"))
        .await
        .expect_err("no stream");
    assert!(matches!(err, UploadError::Stream(_)), "{err:?}");
    assert!(matches!(
        e.store.head("bkt", "uploads/big.txt").await,
        Err(StoreError::NoSuchKey { .. })
    ));
    assert_eq!(upload_rows(&e.db).await, 0);
    // The multipart upload is untouched, and the assembled object's file is gone.
    assert_eq!(e.store.list_parts(&id).await.expect("parts").len(), 2);
    assert_eq!(blob_files(&e.store).await, files);

    // So the same completion succeeds once the stream exists.
    e.stream.create_stream("uploads", 1).await.expect("stream");
    let done = e
        .uploads
        .complete_multipart(completion(&id, &parts, "aws:AKID"))
        .await
        .expect("complete");
    assert!(done.etag.ends_with("-2"), "{}", done.etag);
    let sha = hex::encode(Sha256::digest(&whole));
    let u = &done.upload;
    assert_eq!(
        (u.bucket.as_str(), u.key.as_str(), u.filename.as_str()),
        ("bkt", "uploads/big.txt", "big.txt")
    );
    assert_eq!(
        (u.size, u.sha256.as_str()),
        (whole.len() as u64, sha.as_str())
    );
    assert_eq!(u.content_type, "text/plain");
    assert_eq!(u.user_sub, "aws:AKID");

    let obj = e.store.get("bkt", "uploads/big.txt").await.expect("object");
    assert_eq!(obj.body.as_ref(), whole.as_slice());
    assert_eq!(obj.info.etag, done.etag);
    assert_eq!(obj.info.owner.as_deref(), Some("aws:AKID"));
    assert_eq!(obj.info.metadata.get("k").map(String::as_str), Some("v"));
    assert!(matches!(
        e.store.multipart(&id).await,
        Err(StoreError::NoSuchUpload(_))
    ));
    // The parts' files are gone; only the object's remains.
    assert_eq!(blob_files(&e.store).await, 1);

    // Answered before its record's delivery: the row learns the position once that is done.
    assert!(u.sequence_number.is_empty(), "no position in the answer");
    assert!(
        e.uploads
            .flush_deliveries(std::time::Duration::from_secs(10))
            .await
    );
    let row = e.uploads.get(&u.id).await.expect("status row");
    assert_eq!(row.status, UploadStatus::Queued);
    let it = e
        .stream
        .get_shard_iterator("uploads", &row.shard_id, IteratorSpec::TrimHorizon)
        .await
        .expect("iterator");
    let got = e.stream.get_records(&it, 10).await.expect("records");
    assert_eq!(got.records.len(), 1);
    assert_eq!(got.records[0].sequence_number, row.sequence_number);
    let record: UploadRecord = serde_json::from_slice(&got.records[0].data).expect("record");
    assert_eq!(
        record,
        UploadRecord {
            bucket: "bkt".into(),
            key: "uploads/big.txt".into(),
            uploaded_at: record.uploaded_at.clone(),
            request_id: "req-1".into(),
            user_sub: "aws:AKID".into(),
            upload_id: u.id.clone(),
            size: whole.len() as u64,
            sha256: sha,
            content_type: "text/plain".into(),
        }
    );

    // Completing twice: the upload is gone.
    assert!(matches!(
        e.uploads
            .complete_multipart(completion(&id, &parts, "aws:AKID"))
            .await,
        Err(UploadError::Store(StoreError::NoSuchUpload(_)))
    ));
    assert_eq!(upload_rows(&e.db).await, 1);
}

#[tokio::test]
async fn a_completion_over_another_users_upload_is_refused_and_stays_completable() {
    let e = open();
    e.stream.create_stream("uploads", 1).await.expect("stream");
    let (id, parts, _) = two_parts(&e).await;
    e.uploads
        .commit(NewUpload {
            user_sub: "someone".into(),
            bucket: "bkt".into(),
            key: "uploads/big.txt".into(),
            filename: "big.txt".into(),
            body: Bytes::from_static(b"theirs"),
            content_type: "text/plain".into(),
            metadata: Default::default(),
            tags: Vec::new(),
            headers: Default::default(),
            request_id: "r0".into(),
            stream: "uploads".into(),
            partition_key: "pk".into(),
        })
        .await
        .expect("their upload");
    let files = blob_files(&e.store).await;
    let err = e
        .uploads
        .complete_multipart(completion(&id, &parts, "aws:AKID"))
        .await
        .expect_err("owned by another");
    assert!(matches!(err, UploadError::Conflict { .. }), "{err:?}");
    assert_eq!(upload_rows(&e.db).await, 1);
    assert_eq!(
        e.store
            .get("bkt", "uploads/big.txt")
            .await
            .expect("theirs")
            .body
            .as_ref(),
        b"theirs"
    );
    assert_eq!(blob_files(&e.store).await, files);
    // Still completable by its owner... or abortable.
    assert_eq!(e.store.list_parts(&id).await.expect("parts").len(), 2);
    e.store.abort_multipart(&id).await.expect("abort");
}

#[tokio::test]
async fn a_part_replaced_after_assembly_is_not_committed() {
    // The check in `complete_multipart_in_tx`: assemble, replace a part, then commit.
    let e = open();
    e.stream.create_stream("uploads", 1).await.expect("stream");
    let (id, parts, _) = two_parts(&e).await;
    let assembled = e
        .store
        .assemble_multipart(&id, parts.clone())
        .await
        .expect("assemble");
    e.store
        .upload_part(&id, 2, Bytes::from_static(b"another end"))
        .await
        .expect("replace part 2");
    let r =
        e.db.write(move |c| {
            sluice_store::embedded::complete_multipart_in_tx(c, &assembled, None, 0).map(|_| ())
        })
        .await;
    assert!(matches!(r, Err(StoreError::InvalidPart(_))), "{r:?}");
    assert_eq!(e.store.list_parts(&id).await.expect("parts").len(), 2);
}
