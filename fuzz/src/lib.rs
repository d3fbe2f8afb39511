//! What the fuzz targets share: one Tokio runtime, scratch directories, the embedded parts
//! an edge and the upload API run on (the same constructors `sluice serve` uses, on a
//! SQLite file and blob directory of this process), a fixed RSA signing key, SigV4 signing
//! of fuzzed requests, and the input conventions of the seed corpora.
//!
//! Inputs are text where they can be, so that the corpora under `fuzz/corpus/` read like
//! the requests they stand for: most targets take a first line (an operation, a header) and
//! a body. Values the fuzzer cannot know in advance (the pool's client id, a live shard
//! iterator, a multipart upload id) are written as `@name@` placeholders that the target
//! substitutes before the request is made.

pub mod api;
pub mod kinesis;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use sluice_identity::access_keys::AccessKeys;
use sluice_identity::{Identity, Lifetimes, PoolInfo, SigningKey};
use sluice_store::embedded::EmbeddedStore;
use sluice_stream::embedded::EmbeddedStream;

pub const REGION: &str = "us-east-2";
pub const ACCOUNT: &str = "000000000000";
/// The host every request names (as the edge's tests do).
pub const HOST: &str = "edge.test";
/// The stream and bucket the fixtures create.
pub const STREAM: &str = "fuzz";
pub const BUCKET: &str = "fuzz";

/// The runtime every target runs its async calls on (one worker: the fuzzing loop is one
/// thread, and the engines run their own threads).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A fresh directory for this process: `$SLUICE_FUZZ_TMP/sluice-fuzz-<name>-<pid>` (or under
/// the system's temporary directory). `scripts/fuzz` points `SLUICE_FUZZ_TMP` at a
/// directory it removes after each target (a tmpfs when there is one: the engines fsync).
pub fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("SLUICE_FUZZ_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("sluice-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// `data` split at its first `\n`: the first line as text (without a trailing `\r`) and the
/// rest. `None` when the first line is not UTF-8.
pub fn split_line(data: &[u8]) -> Option<(&str, &[u8])> {
    let (line, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    let line = std::str::from_utf8(line).ok()?;
    Some((line.strip_suffix('\r').unwrap_or(line), rest))
}

/// `data` with every `@name@` of `values` replaced by its value.
pub fn substitute(data: &[u8], values: &[(&str, &str)]) -> Vec<u8> {
    let mut out = data.to_vec();
    if !data.contains(&b'@') {
        return out;
    }
    for (name, value) in values {
        let needle = format!("@{name}@");
        let needle = needle.as_bytes();
        let mut next = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(needle) {
                next.extend_from_slice(value.as_bytes());
                i += needle.len();
            } else {
                next.push(out[i]);
                i += 1;
            }
        }
        out = next;
    }
    out
}

/// The engines of an edge, as `sluice serve` wires them, on a scratch directory.
pub struct Parts {
    pub dir: PathBuf,
    pub db: sluice_meta::Meta,
    pub identity: Identity,
    pub pool: PoolInfo,
    pub keys: AccessKeys,
    /// A full-access SigV4 key: (id, secret).
    pub key: (String, String),
    pub store: EmbeddedStore,
    pub stream: EmbeddedStream,
}

/// Opens the embedded parts on a fresh scratch directory `name`: metadata (SQLite) with the
/// migrations of identity, access keys, store, stream and uploads; the default pool; a
/// full-access key; the store and the stream.
pub fn parts(name: &str) -> Parts {
    log_errors();
    let dir = scratch(name);
    let _rt = runtime().enter();
    let mut migrations = Vec::new();
    for part in [
        sluice_identity::MIGRATIONS,
        sluice_identity::access_keys::MIGRATIONS,
        sluice_store::embedded::MIGRATIONS,
        sluice_stream::embedded::MIGRATIONS,
        sluice_uploads::embedded::MIGRATIONS,
    ] {
        migrations.extend_from_slice(part);
    }
    let db = sluice_meta::open(
        &format!("sqlite://{}", dir.join("sluice.db").display()),
        &migrations,
    )
    .expect("metadata");
    let identity = Identity::new(db.clone(), &dir.join("keys"), &format!("http://{HOST}"));
    let pool = identity
        .bootstrap(REGION, Lifetimes::default())
        .expect("bootstrap");
    let keys = AccessKeys::open(db.clone(), &dir.join("keys").join("access-keys.key"))
        .expect("access keys");
    let key = keys.create("fuzz").expect("access key");
    let store = EmbeddedStore::open(db.clone(), &dir.join("blobs")).expect("store");
    let stream = EmbeddedStream::open(db.clone(), &dir.join("log")).expect("stream");
    Parts {
        dir,
        db,
        identity,
        pool,
        keys,
        key: (key.id, key.secret),
        store,
        stream,
    }
}

impl Parts {
    /// The Kinesis context of the edge over this stream.
    pub fn kinesis(&self) -> sluice_compat::KinesisContext {
        sluice_compat::KinesisContext {
            stream: Arc::new(self.stream.clone()),
            region: REGION.into(),
            account_id: ACCOUNT.into(),
            subscriptions: Default::default(),
            settings: Default::default(),
            foreign_region: None,
        }
    }

    /// The whole edge (`sluice_compat::router`): S3 writes into `fuzz/uploads/` go through
    /// the upload sink, as with `s3_uploads_enqueue`.
    pub fn edge(&self) -> axum::Router {
        let uploads = sluice_uploads::embedded::EmbeddedUploads::new(
            self.db.clone(),
            self.store.clone(),
            self.stream.clone(),
        );
        sluice_compat::router(sluice_compat::Edge {
            identity: self.identity.clone(),
            keys: self.keys.clone(),
            kinesis: self.kinesis(),
            s3: sluice_compat::s3::S3Adapter {
                store: Arc::new(self.store.clone()),
                region: REGION.into(),
                max_object_bytes: 1 << 20,
                uploads: Some(sluice_compat::s3::UploadHook {
                    sink: Arc::new(uploads),
                    bucket: BUCKET.into(),
                    stream: STREAM.into(),
                }),
                notifications: None,
                policies: Some(Arc::new(sluice_compat::s3_policy::BucketPolicies::new(
                    Arc::new(self.store.clone()),
                ))),
                cors: Default::default(),
                regions: Default::default(),
                locks: Default::default(),
                encryptions: Default::default(),
            },
            s3_base_domain: None,
            sign_in_sources: Arc::default(),
            address_rates: Arc::default(),
            lambda: None,
            apigw: None,
            iam: None,
        })
        .expect("edge router")
    }
}

/// What the parts log as errors goes to stderr (libFuzzer's log): a 5xx's cause is there.
pub fn log_errors() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::ERROR)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Whether `SLUICE_FUZZ_VERBOSE` is set: the request targets then print each answer's
/// status (and the start of its body) to stderr, to see what the seeds reach
/// (`SLUICE_FUZZ_VERBOSE=1 <target binary> fuzz/corpus/<target>/*`).
pub fn verbose() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| std::env::var_os("SLUICE_FUZZ_VERBOSE").is_some())
}

/// Prints an answer when [`verbose`].
pub fn show(what: &str, status: http::StatusCode, body: &[u8]) {
    if verbose() {
        let body = String::from_utf8_lossy(&body[..body.len().min(160)]);
        eprintln!("{what}: {status} {body}");
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A request as the fuzz targets describe one:
///
/// ```text
/// METHOD /path?query
/// name: value          (headers, up to an empty line)
///
/// body
/// ```
pub struct RawRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// `None` when the head is not text or the request line has no method and target.
    pub fn parse(data: &[u8]) -> Option<RawRequest> {
        let (line, mut rest) = split_line(data)?;
        let (method, target) = line.split_once(' ')?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers = Vec::new();
        loop {
            if rest.is_empty() {
                break;
            }
            let (h, after) = split_line(rest)?;
            rest = after;
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':')?;
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        Some(RawRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
            body: rest.to_vec(),
        })
    }

    /// The request signed with `key` as an AWS SDK signs one (every header; `host`,
    /// `x-amz-date` and, for a body, `content-length` added; S3's `x-amz-content-sha256`
    /// when `service` is `s3`), as an HTTP
    /// request. `None` when a method, header or URI is not valid HTTP (the server never
    /// sees such a request).
    pub fn signed(
        &self,
        key: &(String, String),
        service: &str,
    ) -> Option<http::Request<axum::body::Body>> {
        use sha2::Digest;
        let date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let payload_hash = hex::encode(sha2::Sha256::digest(&self.body));
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "host" | "x-amz-date" | "authorization"))
            .filter(|(n, _)| !(service == "s3" && n == "x-amz-content-sha256"))
            .cloned()
            .collect();
        headers.push(("host".into(), HOST.into()));
        headers.push(("x-amz-date".into(), date));
        // As every client sends it (s3s refuses a write without one), unless the input
        // gives one of its own.
        if !self.headers.iter().any(|(n, _)| n == "content-length")
            && (!self.body.is_empty() || matches!(self.method.as_str(), "PUT" | "POST"))
        {
            headers.push(("content-length".into(), self.body.len().to_string()));
        }
        if service == "s3" {
            headers.push(("x-amz-content-sha256".into(), payload_hash.clone()));
        }
        for (n, v) in &headers {
            http::HeaderName::from_bytes(n.as_bytes()).ok()?;
            http::HeaderValue::from_str(v).ok()?;
        }
        let auth = sluice_compat::sigv4::authorization_header(
            &sluice_compat::sigv4::SignedRequest {
                method: &self.method,
                path: &self.path,
                query: &self.query,
                headers: &headers,
                payload_hash: &payload_hash,
            },
            &key.0,
            &key.1,
            REGION,
            service,
        )
        .ok()?;
        let uri = if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        };
        let method = http::Method::from_bytes(self.method.as_bytes()).ok()?;
        let uri: http::Uri = uri.parse().ok()?;
        let mut b = http::Request::builder().method(method).uri(uri);
        for (n, v) in &headers {
            b = b.header(n, v);
        }
        b.header("authorization", auth)
            .body(axum::body::Body::from(self.body.clone()))
            .ok()
    }
}

/// Runs `req` through `router` and reads the whole answer (so that streamed and
/// long-running answers run to the end): status, headers and body.
pub fn send(
    router: &axum::Router,
    req: http::Request<axum::body::Body>,
) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    use tower::ServiceExt;
    runtime().block_on(async {
        let resp = router
            .clone()
            .oneshot(req)
            .await
            .expect("infallible router");
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(body, 64 << 20)
            .await
            .unwrap_or_default();
        (parts.status, parts.headers, body)
    })
}

/// The RSA key the token targets sign with: generated once per process from a fixed seed,
/// so the same key (and `kid`) in every run. 1,024 bits: the verifier's code is the same
/// for any RSA size, and signing a fuzzed token is the token targets' cost per input.
pub fn signing_key() -> &'static (SigningKey, rsa::pkcs1v15::SigningKey<sha2::Sha256>) {
    static KEY: OnceLock<(SigningKey, rsa::pkcs1v15::SigningKey<sha2::Sha256>)> = OnceLock::new();
    KEY.get_or_init(|| {
        use rand::SeedableRng;
        use rsa::pkcs8::EncodePrivateKey;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5_1c1ce);
        let private = rsa::RsaPrivateKey::new(&mut rng, 1024).expect("rsa key");
        let pem = private
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .expect("pem")
            .to_string();
        (
            SigningKey::from_pem(&pem).expect("signing key"),
            rsa::pkcs1v15::SigningKey::new(private),
        )
    })
}

/// The issuer and app client of the tokens the token targets verify.
pub const ISSUER: &str = "http://edge.test/us-east-2_fuzzpool0";
pub const CLIENT_ID: &str = "fuzzclient0000000000000000";
/// The verifier's leeway (what `sluice serve` gives API Gateway's authorizer).
pub const LEEWAY_SECS: i64 = 30;

/// A verifier of [`signing_key`]'s tokens for [`ISSUER`] and [`CLIENT_ID`].
pub fn verifier() -> sluice_identity::Verifier {
    let jwks = sluice_identity::Jwks {
        keys: vec![signing_key().0.jwk()],
    };
    sluice_identity::Verifier::new(ISSUER, &jwks, [CLIENT_ID.to_owned()], LEEWAY_SECS)
        .expect("verifier")
}

/// The upload API's authorizer as `sluice serve` builds it — revocations outside a cache of
/// verified tokens outside the verifier — with one revoked user: `revoked_sub`, signed out
/// everywhere (so tokens it was issued before now are refused).
pub struct Authorizer {
    pub chain: Arc<dyn sluice_gateway::Authorizer>,
    pub revoked_sub: String,
}

pub fn authorizer() -> &'static Authorizer {
    static A: OnceLock<Authorizer> = OnceLock::new();
    A.get_or_init(|| {
        log_errors();
        let dir = scratch("authorizer");
        let rt = runtime();
        let _rt = rt.enter();
        let db = sluice_meta::open(
            &format!("sqlite://{}", dir.join("sluice.db").display()),
            sluice_identity::MIGRATIONS,
        )
        .expect("metadata");
        let identity = Identity::new(db.clone(), &dir.join("keys"), &format!("http://{HOST}"));
        let pool = identity
            .bootstrap(REGION, Lifetimes::default())
            .expect("bootstrap");
        let user = identity
            .create_user(&pool.pool_id, "revoked@example.com", "Passw0rd!", false)
            .expect("user");
        let revocations = sluice_identity::revocations::Revocations::new(db);
        rt.block_on(async {
            identity
                .admin_global_sign_out(&pool.pool_id, "revoked@example.com")
                .await
                .expect("sign out");
            revocations.refresh().await.expect("revocations");
        });
        let chain = sluice_gateway::RevokingAuthorizer::new(
            Arc::new(sluice_gateway::CachingAuthorizer::new(
                Arc::new(verifier()),
                LEEWAY_SECS,
            )),
            revocations,
        );
        Authorizer {
            chain: Arc::new(chain),
            revoked_sub: user.sub,
        }
    })
}

/// `header.payload.signature`: `header` and `payload` (any bytes) signed RS256 with
/// [`signing_key`].
pub fn sign_jwt(header: &[u8], payload: &[u8]) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rsa::signature::{SignatureEncoding, Signer};
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = signing_key().1.sign(message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}
