//! The suite every blob engine must pass ([`run_all`]).

use bytes::Bytes;

use crate::{BlobError, Blobs, ByteStream, collect, new_id, once};

/// A body of `n` bytes in chunks of `chunk`, each byte its offset mod 251.
fn body(n: usize, chunk: usize) -> (ByteStream, Vec<u8>) {
    let all: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<Bytes, std::io::Error>> = all
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    (Box::pin(futures_util::stream::iter(chunks)), all)
}

async fn read(b: &dyn Blobs, id: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>, BlobError> {
    Ok(collect(b.get_range(id, range).await?, 1 << 30)
        .await?
        .to_vec())
}

/// Runs every rule against `b` (a fresh, empty engine).
pub async fn run_all(b: &dyn Blobs) {
    b.check().await.expect("a usable engine passes its check");
    round_trips_and_ranges(b).await;
    a_failed_body_leaves_no_blob(b).await;
    missing_blobs_and_idempotent_deletes(b).await;
    listing_pages_in_id_order(b).await;
}

async fn round_trips_and_ranges(b: &dyn Blobs) {
    for (n, chunk) in [
        (0usize, 1usize),
        (1, 1),
        (100_000, 7_000),
        (9 << 20, 1 << 20),
    ] {
        let id = new_id();
        let (stream, want) = body(n, chunk);
        assert_eq!(b.put_stream(&id, stream).await.expect("put"), n as u64);
        assert!(
            read(b, &id, None).await.expect("get") == want,
            "{n} bytes differ"
        );
        if n > 10 {
            let got = read(b, &id, Some((3, 9))).await.expect("range");
            assert_eq!(got, want[3..=9]);
            let tail = read(b, &id, Some((n as u64 - 2, n as u64 + 100)))
                .await
                .expect("range past the end");
            assert_eq!(
                tail,
                want[n - 2..],
                "a range past the end is cut at the end"
            );
            // Reads that open with the whole-object check (`sluice-store`'s verified
            // reads) ask for "to the end" as `u64::MAX`.
            let all = read(b, &id, Some((0, u64::MAX)))
                .await
                .expect("a range to u64::MAX");
            assert!(all == want, "a range to u64::MAX is the whole blob");
            let rest = read(b, &id, Some((5, u64::MAX))).await.expect("rest");
            assert!(rest == want[5..], "a range from 5 to u64::MAX is the rest");
        }
        b.delete(&id).await.expect("delete");
    }
    let id = new_id();
    b.put_stream(&id, once(Bytes::from_static(b"hello")))
        .await
        .expect("put");
    assert_eq!(read(b, &id, Some((1, 3))).await.expect("range"), b"ell");
    b.delete(&id).await.expect("delete");
}

async fn a_failed_body_leaves_no_blob(b: &dyn Blobs) {
    let id = new_id();
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(vec![1u8; 3 << 20])),
        Ok(Bytes::from(vec![2u8; 3 << 20])),
        Err(std::io::Error::other("client went away")),
    ];
    let r = b
        .put_stream(&id, Box::pin(futures_util::stream::iter(chunks)))
        .await;
    assert!(matches!(r, Err(BlobError::Body(_))), "{r:?}");
    assert!(
        matches!(read(b, &id, None).await, Err(BlobError::NotFound(_))),
        "a failed put left a blob"
    );
    // A put whose caller goes away midway leaves none either.
    let id2 = new_id();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let stream: ByteStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let put = b.put_stream(&id2, stream);
    let feed = async {
        let _ = tx.send(Ok(Bytes::from(vec![3u8; 1 << 20]))).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    tokio::select! {
        _ = put => panic!("the put finished without its body's end"),
        () = feed => {}
    }
    drop(tx);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        matches!(read(b, &id2, None).await, Err(BlobError::NotFound(_))),
        "an abandoned put left a blob"
    );
    assert!(
        b.list(None, 1000).await.expect("list").is_empty(),
        "failed puts are not listed"
    );
}

async fn missing_blobs_and_idempotent_deletes(b: &dyn Blobs) {
    let id = new_id();
    assert!(matches!(
        b.get_range(&id, None).await,
        Err(BlobError::NotFound(_))
    ));
    b.delete(&id).await.expect("deleting a missing blob is Ok");
}

async fn listing_pages_in_id_order(b: &dyn Blobs) {
    let mut ids: Vec<String> = (0..7).map(|_| new_id()).collect();
    for id in &ids {
        b.put_stream(id, once(Bytes::from_static(b"x")))
            .await
            .expect("put");
    }
    ids.sort();
    let first = b.list(None, 4).await.expect("list");
    assert_eq!(first.len(), 4);
    let rest = b.list(Some(&first[3].id), 100).await.expect("list after");
    let listed: Vec<String> = first.iter().chain(&rest).map(|e| e.id.clone()).collect();
    assert_eq!(listed, ids);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    assert!(first.iter().all(|e| (now - e.modified_ms).abs() < 600_000));
    for id in &ids {
        b.delete(id).await.expect("delete");
    }
    assert!(b.list(None, 100).await.expect("list").is_empty());
}

/// The blob engine part suites run on: with `SLUICE_TEST_STORE=s3`, a fresh prefix of the
/// bucket `SLUICE_TEST_S3` names (`scripts/test` starts Garage and runs the part and
/// black-box suites once more that way); otherwise files under `dir`.
pub fn test_blobs(dir: &std::path::Path) -> std::sync::Arc<dyn Blobs> {
    let url = if std::env::var("SLUICE_TEST_STORE").ok().as_deref() == Some("s3") {
        let base = std::env::var("SLUICE_TEST_S3").unwrap_or_else(|_| {
            panic!("SLUICE_TEST_STORE=s3 needs SLUICE_TEST_S3=s3://BUCKET?endpoint=… (scripts/test sets both)")
        });
        let (location, query) = base.split_once('?').unwrap_or((&base, ""));
        format!(
            "{}/t-{}?{query}",
            location.trim_end_matches('/'),
            crate::new_id()
        )
    } else {
        format!("file://{}", dir.display())
    };
    match crate::open(&url) {
        Ok(b) => b,
        Err(e) => panic!("cannot open test blobs {url}: {e}"),
    }
}

/// How many blobs `b` holds.
pub async fn count(b: &dyn Blobs) -> usize {
    let mut n = 0;
    let mut after: Option<String> = None;
    loop {
        let page = match b.list(after.as_deref(), 1000).await {
            Ok(p) => p,
            Err(e) => panic!("cannot list blobs: {e}"),
        };
        let Some(last) = page.last() else {
            return n;
        };
        after = Some(last.id.clone());
        n += page.len();
    }
}
