//! The upload API's harness: `sluice_gateway::router` with the authorizer `sluice serve`
//! builds ([`crate::authorizer`]) and the embedded store's staging, and an upload
//! sink that checks what it is asked to commit instead of committing it (so that a run
//! does not grow a database, and every input meets the same state).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use sluice_store::embedded::EmbeddedStore;
use sluice_uploads::{
    CompletedMultipart, MultipartCompletion, NewUpload, Staged, Upload, UploadError, UploadLedger,
    UploadMeta, UploadSink, UploadStatus,
};

use crate::{BUCKET, CLIENT_ID, ISSUER, STREAM, runtime, scratch, signing_key};

/// Largest body the fuzzed API takes (JSON or streamed): every staged body stays inline.
pub const MAX_BODY: usize = sluice_store::embedded::INLINE_MAX;

pub struct Api {
    pub router: axum::Router,
    /// `Authorization` value of a valid IdToken of the fixture's user.
    pub bearer: String,
}

pub fn api() -> &'static Api {
    static A: OnceLock<Api> = OnceLock::new();
    A.get_or_init(|| {
        crate::log_errors();
        let dir = scratch("api");
        let _rt = runtime().enter();
        let db = sluice_meta::open(
            &format!("sqlite://{}", dir.join("sluice.db").display()),
            sluice_store::embedded::MIGRATIONS,
        )
        .expect("metadata");
        let store = EmbeddedStore::open(db, &dir.join("blobs")).expect("store");
        let gw: sluice_gateway::Gateway = sluice_gateway::GatewayConfig {
            authorizer: crate::authorizer().chain.clone(),
            sink: Arc::new(CheckingSink {
                store: store.clone(),
            }),
            ledger: Arc::new(NoLedger),
            store: Arc::new(store),
            bucket: BUCKET.into(),
            stream: STREAM.into(),
            max_body_bytes: MAX_BODY,
            max_upload_bytes: MAX_BODY as u64,
            quota: sluice_gateway::quota::Quota::new(Default::default()),
            shutdown: tokio::sync::watch::channel(false).1,
        }
        .into();
        Api {
            router: sluice_gateway::router(gw),
            bearer: format!("Bearer {}", id_token()),
        }
    })
}

/// An IdToken for `fuzz-user`, valid for ten years.
fn id_token() -> String {
    let attributes =
        std::collections::BTreeMap::from([("email".to_owned(), "fuzz@example.com".to_owned())]);
    let subject = sluice_identity::tokens::Subject {
        sub: "fuzz-user",
        username: "fuzz-user",
        attributes: &attributes,
        client_id: CLIENT_ID,
        issuer: ISSUER,
        auth_time: crate::now_secs(),
        origin_jti: "fuzz",
        groups: &Default::default(),
        overrides: None,
        oauth: None,
    };
    let ten_years = 10 * 365 * 24 * 3600;
    sluice_identity::tokens::issue_pair(
        &signing_key().0,
        &subject,
        crate::now_secs(),
        ten_years,
        ten_years,
    )
    .expect("token")
    .0
}

/// Stages bodies as the embedded sink does (the store's `prepare_stream`), and checks each
/// upload it is handed: a key `uploads/<file name>` whose name the API's own rule accepts
/// unchanged (it was validated and normalised before).
struct CheckingSink {
    store: EmbeddedStore,
}

fn check(meta: &UploadMeta, size: u64) -> Upload {
    assert_eq!(
        sluice_gateway::validate_filename(&meta.filename)
            .ok()
            .as_deref(),
        Some(meta.filename.as_str()),
        "an upload was committed under a file name the API refuses or changes"
    );
    assert_eq!(meta.key, format!("uploads/{}", meta.filename));
    assert_eq!(meta.user_sub, "fuzz-user");
    assert!(size <= MAX_BODY as u64, "{size} bytes passed the limit");
    Upload {
        id: "fuzz-upload".into(),
        user_sub: meta.user_sub.clone(),
        bucket: meta.bucket.clone(),
        key: meta.key.clone(),
        filename: meta.filename.clone(),
        size,
        sha256: String::new(),
        content_type: meta.content_type.clone(),
        request_id: meta.request_id.clone(),
        stream: meta.stream.clone(),
        shard_id: String::new(),
        sequence_number: String::new(),
        status: UploadStatus::Queued,
        attempts: 0,
        error: None,
        processed_bucket: None,
        processed_key: None,
        created_ms: 0,
        updated_ms: 0,
        processed_ms: None,
    }
}

#[async_trait]
impl UploadSink for CheckingSink {
    async fn commit(&self, upload: NewUpload) -> Result<Upload, UploadError> {
        let (meta, body) = upload.split();
        Ok(check(&meta, body.len() as u64))
    }

    async fn stage(&self, body: sluice_store::ByteStream) -> Result<Staged, UploadError> {
        let prepared = self.store.prepare_stream(body).await?;
        assert!(
            prepared.blob_name().is_none(),
            "a body larger than the limit was staged"
        );
        Ok(Staged::new(prepared, |_| {}))
    }

    async fn commit_staged(&self, upload: UploadMeta, body: Staged) -> Result<Upload, UploadError> {
        Ok(check(&upload, body.size()))
    }

    async fn complete_multipart(
        &self,
        _: MultipartCompletion,
    ) -> Result<CompletedMultipart, UploadError> {
        Err(UploadError::Backend("not reached by the upload API".into()))
    }
}

/// The upload API reads the ledger only for the per-user daily limit, which is off here.
struct NoLedger;

#[async_trait]
impl UploadLedger for NoLedger {
    async fn get(&self, id: &str) -> Result<Upload, UploadError> {
        Err(UploadError::NotFound(id.to_owned()))
    }
    async fn mark_processing(&self, id: &str) -> Result<(), UploadError> {
        Err(UploadError::NotFound(id.to_owned()))
    }
    async fn mark_processed(&self, id: &str, _: &str, _: &str) -> Result<(), UploadError> {
        Err(UploadError::NotFound(id.to_owned()))
    }
    async fn mark_failed(&self, id: &str, _: &str) -> Result<(), UploadError> {
        Err(UploadError::NotFound(id.to_owned()))
    }
    async fn bytes_since(&self, _: &str, _: i64) -> Result<u64, UploadError> {
        Ok(0)
    }
    async fn list(
        &self,
        _: &str,
        _: Option<&sluice_uploads::UploadCursor>,
        _: usize,
    ) -> Result<Vec<Upload>, UploadError> {
        Ok(Vec::new())
    }
    async fn changed_since(
        &self,
        _: &str,
        _: i64,
        _: Option<&str>,
        _: usize,
    ) -> Result<Vec<Upload>, UploadError> {
        Ok(Vec::new())
    }
}
