//! User functions, as Lambda has them: `CreateFunction` … `DeleteFunction` ([`Functions`],
//! the registry) and `Invoke` ([`invoke::Invoker`], warm workers with a concurrency bound
//! per function, and the queue of asynchronous invocations).
//!
//! A function is a row in the metadata engine (`functions`: configuration, revision, the
//! code's SHA-256) and its code zip a blob held by that row (`sluice_store`'s held blobs),
//! so a function exists wherever the engines are shared. The code is unpacked on first use
//! into `<functions dir>/code/<sha256>/` (content-addressed: never changed once there,
//! shared by functions with the same code, re-created from the blob when missing), which
//! is the function's `LAMBDA_TASK_ROOT`.
//!
//! Every change bumps the function's `RevisionId` (a UUID); a change that names the
//! revision it was based on (`RevisionId` in Lambda's requests) fails with
//! `PreconditionFailed` if another change came first. Invocations read the function's row
//! each time and use the warm workers of that revision, so an update reaches the next
//! invocation, in this process or any other.
//!
//! **Credentials.** A function runs as its execution role (`Role`), as on Lambda: the role
//! must exist and trust `lambda.amazonaws.com` ([`ExecutionRoles::check`], Lambda's
//! `InvalidParameterValueException` "The role defined for the function cannot be assumed by
//! Lambda." otherwise), and each warm instance gets a session of the role (an STS role
//! session named after the function, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
//! `AWS_SESSION_TOKEN`, with `AWS_ENDPOINT_URL` = the edge, so SDK clients in the function
//! reach sluice unchanged), replaced before it expires. The function may do exactly what
//! the role's policies allow; a change to them reaches running functions within the edge's
//! key cache time (seconds). Creating a function or changing its role takes `iam:PassRole`
//! on the role from a caller whose permissions are policies (checked at the edge).

pub mod code;
pub mod invoke;
pub mod runtimes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use sluice_meta::{Meta, MetaError, Migration, Tx, now_ms, params};
use sluice_processor::mappings::{LambdaRuntime, valid_function_name};
use sluice_store::embedded::{EmbeddedStore, hold_blob_in_tx, release_blob_in_tx};
use sluice_store::{ByteStream, ObjectStore, StoreError};
use tokio::io::AsyncWriteExt;

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "functions-0001",
    sql: "
CREATE TABLE functions (
    name TEXT PRIMARY KEY,
    runtime TEXT NOT NULL,
    handler TEXT NOT NULL,
    role TEXT NOT NULL,
    description TEXT NOT NULL,
    timeout_secs INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    environment TEXT NOT NULL,
    tags TEXT NOT NULL,
    code_blob TEXT NOT NULL,
    code_sha256 TEXT NOT NULL,
    code_size INTEGER NOT NULL,
    reserved_concurrency INTEGER,
    policy TEXT,
    revision_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    modified_ms INTEGER NOT NULL
);
CREATE TABLE function_events (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX function_events_due ON function_events (due_ms);
",
}];

/// Lambda's default timeout (3 s) and memory (128 MB).
pub const DEFAULT_TIMEOUT_SECS: u64 = 3;
pub const DEFAULT_MEMORY_MB: u32 = 128;
/// Largest total size of a function's environment variables (Lambda: 4 KB).
pub const MAX_ENVIRONMENT_BYTES: usize = 4096;

/// Variables Lambda sets itself; a function's configuration cannot set them.
const RESERVED_VARIABLES: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    /// Lambda's `ResourceNotFoundException`.
    #[error("{0}")]
    NotFound(String),
    /// Lambda's `ResourceConflictException` (the name is taken, or an update is under way).
    #[error("{0}")]
    Conflict(String),
    /// Lambda's `InvalidParameterValueException`.
    #[error("{0}")]
    InvalidParameter(String),
    /// The `RevisionId` a request named is not the function's (`PreconditionFailedException`).
    #[error("{0}")]
    PreconditionFailed(String),
    /// A request or payload over a limit (`RequestTooLargeException`).
    #[error("{0}")]
    TooLarge(String),
    /// The function runs as many invocations as its concurrency allows
    /// (`TooManyRequestsException`, reason `ReservedFunctionConcurrentInvocationLimitExceeded`).
    #[error("Rate Exceeded.")]
    Throttled,
    /// An engine is down, or storage is full: try again later.
    #[error("{0}")]
    Unavailable(String),
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error("object store: {0}")]
    Store(#[from] StoreError),
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Internal(String),
}

impl FunctionsError {
    /// The fault is the engines' (down, full), not the request's: 503 at the edge.
    pub fn is_unavailable(&self) -> bool {
        match self {
            FunctionsError::Unavailable(_) => true,
            FunctionsError::Meta(m) => matches!(
                m,
                MetaError::Unavailable(_)
                    | MetaError::Unknown(_)
                    | MetaError::Full(_)
                    | MetaError::Conflict(_)
            ),
            FunctionsError::Store(s) => s.is_unavailable() || s.is_full(),
            FunctionsError::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

/// A function's code as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRef {
    pub blob: String,
    /// SHA-256 of the zip, lowercase hex.
    pub sha256: String,
    pub size: u64,
}

impl CodeRef {
    /// Lambda's `CodeSha256`: the digest in base64.
    pub fn sha256_base64(&self) -> String {
        let raw = hex::decode(&self.sha256).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(raw)
    }
}

/// A function's configuration, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionConfig {
    pub name: String,
    /// Lambda's runtime identifier (`nodejs20.x`, `python3.12`, …).
    pub runtime: String,
    pub handler: String,
    pub role: String,
    pub description: String,
    pub timeout_secs: u64,
    pub memory_mb: u32,
    pub environment: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub code: CodeRef,
    /// `PutFunctionConcurrency`; `None`: the server's default bound.
    pub reserved_concurrency: Option<u32>,
    pub revision_id: String,
    pub created_ms: i64,
    pub modified_ms: i64,
}

impl FunctionConfig {
    pub fn language(&self) -> LambdaRuntime {
        runtimes::language(&self.runtime).unwrap_or(LambdaRuntime::Nodejs)
    }
}

/// What CreateFunction asks for.
#[derive(Debug, Clone, Default)]
pub struct NewFunction {
    pub name: String,
    pub runtime: String,
    pub handler: String,
    pub role: String,
    pub description: Option<String>,
    pub timeout_secs: Option<u64>,
    pub memory_mb: Option<u32>,
    pub environment: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

/// What UpdateFunctionConfiguration may change; `None` keeps a value.
#[derive(Debug, Clone, Default)]
pub struct ConfigChange {
    pub runtime: Option<String>,
    pub handler: Option<String>,
    pub role: Option<String>,
    pub description: Option<String>,
    pub timeout_secs: Option<u64>,
    pub memory_mb: Option<u32>,
    pub environment: Option<BTreeMap<String, String>>,
}

/// Where new code comes from.
pub enum CodeSource {
    /// The zip itself (`ZipFile`).
    Zip(Bytes),
    /// An object of the store (`S3Bucket`, `S3Key`).
    Object { bucket: String, key: String },
}

fn invalid(m: impl Into<String>) -> FunctionsError {
    FunctionsError::InvalidParameter(m.into())
}

/// Lambda's checks of what a function's configuration holds.
fn validate(c: &FunctionConfig) -> Result<(), FunctionsError> {
    if !valid_function_name(&c.name) {
        return Err(invalid(format!(
            "Function name {:?} must be 1 to 64 letters, digits, hyphens or underscores",
            c.name
        )));
    }
    if runtimes::language(&c.runtime).is_none() {
        return Err(invalid(format!(
            "The runtime parameter of {} is not supported: sluice runs {}",
            c.runtime,
            runtimes::RUNTIMES.join(", ")
        )));
    }
    if c.handler.is_empty() || c.handler.len() > 128 || c.handler.contains(char::is_whitespace) {
        return Err(invalid(format!(
            "Handler {:?} must be 1 to 128 characters without spaces",
            c.handler
        )));
    }
    let role_ok = c.role.starts_with("arn:aws:iam::")
        && c.role
            .split(':')
            .nth(4)
            .is_some_and(|acct| acct.len() == 12 && acct.bytes().all(|b| b.is_ascii_digit()))
        && c.role.split(':').nth(5).is_some_and(|r| {
            r.strip_prefix("role/")
                .is_some_and(|n| !n.is_empty() && !n.contains(char::is_whitespace))
        });
    if !role_ok {
        return Err(invalid(format!(
            "The role defined for the function cannot be assumed: {:?} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)",
            c.role
        )));
    }
    if c.description.chars().count() > 256 {
        return Err(invalid("Description must be at most 256 characters"));
    }
    if !(1..=900).contains(&c.timeout_secs) {
        return Err(invalid(format!(
            "Timeout must be between 1 and 900 seconds, got {}",
            c.timeout_secs
        )));
    }
    if !(128..=10_240).contains(&c.memory_mb) {
        return Err(invalid(format!(
            "MemorySize must be between 128 and 10240 MB, got {}",
            c.memory_mb
        )));
    }
    let reserved: Vec<&str> = c
        .environment
        .keys()
        .map(String::as_str)
        .filter(|k| RESERVED_VARIABLES.contains(k))
        .collect();
    if !reserved.is_empty() {
        return Err(invalid(format!(
            "Lambda was unable to configure your environment variables because the environment variables you have provided contains reserved keys that are currently not supported for modification. Reserved keys used in this request: {}",
            reserved.join(", ")
        )));
    }
    let mut size = 0;
    for (k, v) in &c.environment {
        let ok = k.len() >= 2
            && k.as_bytes()[0].is_ascii_alphabetic()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(invalid(format!(
                "Environment variable name {k:?} must start with a letter and hold only letters, digits and underscores (at least 2 characters)"
            )));
        }
        size += k.len() + v.len();
    }
    if size > MAX_ENVIRONMENT_BYTES {
        return Err(invalid(format!(
            "Lambda was unable to configure your environment variables because the environment variables you have provided exceeded the 4KB limit. String measured: {size} bytes"
        )));
    }
    if c.tags.len() > 50 {
        return Err(invalid("A function has at most 50 tags"));
    }
    Ok(())
}

/// The functions of one metadata engine, with their code.
#[derive(Clone)]
pub struct Functions {
    db: Meta,
    store: Arc<EmbeddedStore>,
    /// `<data dir>/functions`: unpacked code, staged uploads.
    root: PathBuf,
    region: String,
    account_id: String,
    /// At most this many code uploads are staged at once (each holds its zip in memory
    /// while the request is parsed).
    uploads: Arc<tokio::sync::Semaphore>,
    /// The execution roles functions run as; `None` (a registry without IAM, in part
    /// tests): roles are only checked for their form, and functions run with the invoker's
    /// credentials.
    roles: Option<Arc<dyn ExecutionRoles>>,
}

/// Lambda's message when a function's role does not exist or does not trust Lambda.
pub const ROLE_NOT_ASSUMABLE: &str =
    "The role defined for the function cannot be assumed by Lambda.";

/// Temporary credentials of a function's execution role (an STS role session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSession {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// When the credentials stop working (ms since the epoch).
    pub expires_ms: i64,
}

/// The execution roles functions run as: IAM's roles, wired by the binary (this crate does
/// not know IAM). A function's role must exist and trust `lambda.amazonaws.com` when the
/// function is created or its role changed, and each warm instance of the function runs
/// with a session of the role, replaced before it expires.
#[async_trait::async_trait]
pub trait ExecutionRoles: Send + Sync + 'static {
    /// `Ok` if Lambda may assume `role_arn`; [`FunctionsError::InvalidParameter`] with
    /// [`ROLE_NOT_ASSUMABLE`] if the role does not exist or does not trust Lambda.
    async fn check(&self, role_arn: &str) -> Result<(), FunctionsError>;
    /// A session of `role_arn` for `function` (the session's name), as Lambda assumes it.
    async fn assume(&self, role_arn: &str, function: &str) -> Result<RoleSession, FunctionsError>;
}

/// Code uploads staged at once.
const CONCURRENT_UPLOADS: usize = 2;

const COLUMNS: &str = "name, runtime, handler, role, description, timeout_secs, memory_mb, \
    environment, tags, code_blob, code_sha256, code_size, reserved_concurrency, policy, \
    revision_id, created_ms, modified_ms";

fn from_row(r: &sluice_meta::Row<'_>) -> Result<FunctionConfig, MetaError> {
    let env: String = r.get(7)?;
    let tags: String = r.get(8)?;
    let timeout: i64 = r.get(5)?;
    let memory: i64 = r.get(6)?;
    let size: i64 = r.get(11)?;
    let reserved: Option<i64> = r.get(12)?;
    Ok(FunctionConfig {
        name: r.get(0)?,
        runtime: r.get(1)?,
        handler: r.get(2)?,
        role: r.get(3)?,
        description: r.get(4)?,
        timeout_secs: timeout.max(1) as u64,
        memory_mb: memory.clamp(128, 10_240) as u32,
        environment: serde_json::from_str(&env).map_err(|e| MetaError::Type(e.to_string()))?,
        tags: serde_json::from_str(&tags).map_err(|e| MetaError::Type(e.to_string()))?,
        code: CodeRef {
            blob: r.get(9)?,
            sha256: r.get(10)?,
            size: size.max(0) as u64,
        },
        reserved_concurrency: reserved.map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
        revision_id: r.get(14)?,
        created_ms: r.get(15)?,
        modified_ms: r.get(16)?,
    })
}

fn load(c: &Tx<'_>, name: &str) -> Result<Option<FunctionConfig>, MetaError> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM functions WHERE name = ?1"),
        params![name],
        from_row,
    )
}

fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// A zip written to a staging file, hashed.
struct Staged {
    path: PathBuf,
    sha256: String,
    size: u64,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Functions {
    pub fn new(
        db: Meta,
        store: Arc<EmbeddedStore>,
        root: impl Into<PathBuf>,
        region: &str,
        account_id: &str,
    ) -> Self {
        Functions {
            db,
            store,
            root: root.into(),
            region: region.to_owned(),
            account_id: account_id.to_owned(),
            uploads: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_UPLOADS)),
            roles: None,
        }
    }

    /// Functions run as their execution roles, `roles`.
    pub fn with_roles(mut self, roles: Arc<dyn ExecutionRoles>) -> Self {
        self.roles = Some(roles);
        self
    }

    /// The execution roles, when IAM is wired.
    pub fn roles(&self) -> Option<&Arc<dyn ExecutionRoles>> {
        self.roles.as_ref()
    }

    pub fn db(&self) -> &Meta {
        &self.db
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// Where unpacked code lives: `<root>/code/<sha256>/`.
    pub fn code_root(&self) -> PathBuf {
        self.root.join("code")
    }

    pub fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{name}",
            self.region, self.account_id
        )
    }

    /// The function a `FunctionName` names: a name, a full ARN
    /// (`arn:aws:lambda:REGION:ACCOUNT:function:NAME`, optionally `:$LATEST`) or a partial
    /// one (`ACCOUNT:function:NAME`). Another account or region is not found.
    pub fn resolve_name(&self, given: &str) -> Result<String, FunctionsError> {
        let not_found = || FunctionsError::NotFound(format!("Function not found: {given}"));
        let parts: Vec<&str> = given.split(':').collect();
        let (name, qualifier) = match parts.as_slice() {
            [name] => (*name, None),
            [name, q] => (*name, Some(*q)),
            [
                "arn",
                "aws",
                "lambda",
                region,
                account,
                "function",
                name,
                rest @ ..,
            ] => {
                if *region != self.region || *account != self.account_id || rest.len() > 1 {
                    return Err(not_found());
                }
                (*name, rest.first().copied())
            }
            [account, "function", name, rest @ ..] => {
                if *account != self.account_id || rest.len() > 1 {
                    return Err(not_found());
                }
                (*name, rest.first().copied())
            }
            _ => return Err(not_found()),
        };
        if qualifier.is_some_and(|q| q != "$LATEST") {
            return Err(FunctionsError::NotFound(format!(
                "Function not found: {given} (sluice keeps only $LATEST: versions and aliases are not supported)"
            )));
        }
        if !valid_function_name(name) {
            return Err(invalid(format!(
                "1 validation error detected: Value '{given}' at 'functionName' failed to satisfy constraint: Member must satisfy regular expression pattern: (arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{{2}}(-gov)?-[a-z]+-\\d{{1}}:)?(\\d{{12}}:)?(function:)?([a-zA-Z0-9-_]+)(:(\\$LATEST|[a-zA-Z0-9-_]+))?"
            )));
        }
        Ok(name.to_owned())
    }

    fn not_found(&self, name: &str) -> FunctionsError {
        FunctionsError::NotFound(format!("Function not found: {}", self.arn(name)))
    }

    pub async fn get(&self, name: &str) -> Result<FunctionConfig, FunctionsError> {
        let n = name.to_owned();
        self.db
            .read(move |c| Ok::<_, FunctionsError>(load(c, &n)?))
            .await?
            .ok_or_else(|| self.not_found(name))
    }

    /// Functions by name after `marker`, `limit` of them, and whether more follow.
    pub async fn list(
        &self,
        marker: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<FunctionConfig>, bool), FunctionsError> {
        let marker = marker.unwrap_or("").to_owned();
        let take = limit.clamp(1, 10_000) as i64;
        let mut rows = self
            .db
            .read(move |c| {
                Ok::<_, FunctionsError>(c.query_vec(
                    &format!(
                        "SELECT {COLUMNS} FROM functions WHERE name > ?1 ORDER BY name LIMIT ?2"
                    ),
                    params![&marker, take + 1],
                    from_row,
                )?)
            })
            .await?;
        let more = rows.len() as i64 > take;
        rows.truncate(take as usize);
        Ok((rows, more))
    }

    /// Writes `code` to a staging file, hashing it; refuses more than the limit.
    async fn stage(&self, code: CodeSource) -> Result<Staged, FunctionsError> {
        let dir = self.root.join("staging");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(FunctionsError::Io)?;
        let mut staged = Staged {
            path: dir.join(format!("{}.zip", uuid::Uuid::new_v4().simple())),
            sha256: String::new(),
            size: 0,
        };
        let (mut body, max): (ByteStream, u64) = match code {
            CodeSource::Zip(bytes) => {
                if bytes.len() as u64 > code::MAX_ZIPPED {
                    return Err(FunctionsError::TooLarge(format!(
                        "Unzipped size must be smaller than {} bytes; a zip sent in the request at most {} bytes",
                        code::MAX_UNZIPPED,
                        code::MAX_ZIPPED
                    )));
                }
                (sluice_processor::functions::once(bytes), code::MAX_ZIPPED)
            }
            CodeSource::Object { bucket, key } => {
                let obj = self
                    .store
                    .get_stream(&bucket, &key, None)
                    .await
                    .map_err(|e| match e {
                        StoreError::NoSuchKey { .. } | StoreError::NoSuchBucket(_) => invalid(
                            format!("Error occurred while GetObject. S3 Error Code: NoSuchKey. S3 Error Message: The specified key does not exist. (s3://{bucket}/{key})"),
                        ),
                        other => other.into(),
                    })?;
                if obj.info.size > code::MAX_UNZIPPED {
                    return Err(invalid(format!(
                        "Unzipped size must be smaller than {} bytes",
                        code::MAX_UNZIPPED
                    )));
                }
                (obj.body, code::MAX_UNZIPPED)
            }
        };
        let mut file = tokio::fs::File::create(&staged.path)
            .await
            .map_err(FunctionsError::Io)?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(FunctionsError::Io)?;
            size += chunk.len() as u64;
            if size > max {
                return Err(FunctionsError::TooLarge(format!(
                    "the code is larger than {max} bytes"
                )));
            }
            hash.update(&chunk);
            file.write_all(&chunk).await.map_err(FunctionsError::Io)?;
        }
        file.flush().await.map_err(FunctionsError::Io)?;
        drop(file);
        staged.sha256 = hex::encode(hash.finalize());
        staged.size = size;
        Ok(staged)
    }

    /// Unpacks a staged zip into the code cache (unless that code is there already) and
    /// returns its directory.
    async fn unpack_staged(&self, staged: &Staged) -> Result<PathBuf, FunctionsError> {
        let dest = self.code_root().join(&staged.sha256);
        if dest.is_dir() {
            return Ok(dest);
        }
        let tmp = self
            .code_root()
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let zip = staged.path.clone();
        let (t, d) = (tmp.clone(), dest.clone());
        tokio::task::spawn_blocking(move || {
            code::unpack(&zip, &t)?;
            match std::fs::rename(&t, &d) {
                Ok(()) => Ok(()),
                Err(_) if d.is_dir() => {
                    let _ = std::fs::remove_dir_all(&t);
                    Ok(())
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&t);
                    Err(FunctionsError::Io(e))
                }
            }
        })
        .await
        .map_err(|e| FunctionsError::Internal(format!("unpacking stopped: {e}")))??;
        Ok(dest)
    }

    /// Stages, unpacks and checks code for `handler`, then stores the zip in a blob:
    /// what create and update-code share. The blob is not held yet.
    async fn accept_code(
        &self,
        code: CodeSource,
        language: LambdaRuntime,
        handler: &str,
    ) -> Result<(CodeRef, PathBuf), FunctionsError> {
        let _permit = self
            .uploads
            .acquire()
            .await
            .map_err(|_| FunctionsError::Internal("the upload limit is closed".into()))?;
        let staged = self.stage(code).await?;
        let dir = self.unpack_staged(&staged).await?;
        code::check_handler(&dir, language, handler)?;
        let stream = file_stream(&staged.path).await?;
        let blob = self.store.put_held_blob(stream, code::MAX_UNZIPPED).await?;
        if blob.sha256 != staged.sha256 {
            let _ = self.store.delete_held_blob(&blob.id).await;
            return Err(FunctionsError::Internal(
                "the code changed while it was stored".into(),
            ));
        }
        Ok((
            CodeRef {
                blob: blob.id,
                sha256: staged.sha256.clone(),
                size: staged.size,
            },
            dir,
        ))
    }

    /// CreateFunction.
    pub async fn create(
        &self,
        new: NewFunction,
        code: CodeSource,
    ) -> Result<FunctionConfig, FunctionsError> {
        let now = now_ms();
        let mut cfg = FunctionConfig {
            name: new.name,
            runtime: new.runtime,
            handler: new.handler,
            role: new.role,
            description: new.description.unwrap_or_default(),
            timeout_secs: new.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
            memory_mb: new.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
            environment: new.environment,
            tags: new.tags,
            code: CodeRef {
                blob: String::new(),
                sha256: String::new(),
                size: 0,
            },
            reserved_concurrency: None,
            revision_id: uuid::Uuid::new_v4().to_string(),
            created_ms: now,
            modified_ms: now,
        };
        validate(&cfg)?;
        if self.exists(&cfg.name).await? {
            return Err(self.exists_error(&cfg.name));
        }
        if let Some(roles) = &self.roles {
            roles.check(&cfg.role).await?;
        }
        let (code, _) = self.accept_code(code, cfg.language(), &cfg.handler).await?;
        cfg.code = code;
        let row = cfg.clone();
        let inserted = self
            .db
            .write(move |tx| {
                let n = tx.execute(
                    &format!(
                        "INSERT INTO functions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) ON CONFLICT (name) DO NOTHING"
                    ),
                    params![
                        &row.name,
                        &row.runtime,
                        &row.handler,
                        &row.role,
                        &row.description,
                        row.timeout_secs as i64,
                        i64::from(row.memory_mb),
                        json_text(&row.environment),
                        json_text(&row.tags),
                        &row.code.blob,
                        &row.code.sha256,
                        row.code.size as i64,
                        row.reserved_concurrency.map(i64::from),
                        // `policy`: the creator's policy earlier versions gave the function's key; unused.
                        None::<String>,
                        &row.revision_id,
                        row.created_ms,
                        row.modified_ms
                    ],
                )?;
                if n == 1 {
                    hold_blob_in_tx(tx, &row.code.blob, &format!("function:{}", row.name))?;
                }
                Ok::<_, FunctionsError>(n == 1)
            })
            .await;
        match inserted {
            Ok(true) => Ok(cfg),
            Ok(false) => {
                let _ = self.store.delete_held_blob(&cfg.code.blob).await;
                Err(self.exists_error(&cfg.name))
            }
            Err(e) => {
                let _ = self.store.delete_held_blob(&cfg.code.blob).await;
                Err(e)
            }
        }
    }

    async fn exists(&self, name: &str) -> Result<bool, FunctionsError> {
        exists(&self.db, name).await
    }

    fn exists_error(&self, name: &str) -> FunctionsError {
        FunctionsError::Conflict(format!("Function already exist: {name}"))
    }

    fn revision_check(cfg: &FunctionConfig, expected: Option<&str>) -> Result<(), FunctionsError> {
        match expected {
            Some(r) if r != cfg.revision_id => Err(FunctionsError::PreconditionFailed(
                "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Replaces the stored row `old` by `new` if nobody changed it meanwhile; the caller
    /// gives the blob to hold (new code) or `None` (same code).
    async fn replace(
        &self,
        old: &FunctionConfig,
        new: FunctionConfig,
    ) -> Result<FunctionConfig, FunctionsError> {
        let (o, row) = (old.clone(), new.clone());
        let replaced = self
            .db
            .write(move |tx| {
                let n = tx.execute(
                    "UPDATE functions SET runtime = ?2, handler = ?3, role = ?4, description = ?5,
                        timeout_secs = ?6, memory_mb = ?7, environment = ?8, tags = ?9,
                        code_blob = ?10, code_sha256 = ?11, code_size = ?12,
                        reserved_concurrency = ?13, revision_id = ?14, modified_ms = ?15
                     WHERE name = ?1 AND revision_id = ?16",
                    params![
                        &row.name,
                        &row.runtime,
                        &row.handler,
                        &row.role,
                        &row.description,
                        row.timeout_secs as i64,
                        i64::from(row.memory_mb),
                        json_text(&row.environment),
                        json_text(&row.tags),
                        &row.code.blob,
                        &row.code.sha256,
                        row.code.size as i64,
                        row.reserved_concurrency.map(i64::from),
                        &row.revision_id,
                        row.modified_ms,
                        &o.revision_id
                    ],
                )?;
                if n == 1 && row.code.blob != o.code.blob {
                    release_blob_in_tx(tx, &o.code.blob)?;
                    hold_blob_in_tx(tx, &row.code.blob, &format!("function:{}", row.name))?;
                }
                Ok::<_, FunctionsError>(n == 1)
            })
            .await?;
        if !replaced {
            return Err(FunctionsError::Conflict(format!(
                "The operation cannot be performed at this time. An update is in progress for resource: {}",
                self.arn(&old.name)
            )));
        }
        if new.code.blob != old.code.blob {
            let _ = self.store.delete_held_blob(&old.code.blob).await;
        }
        Ok(new)
    }

    /// UpdateFunctionCode.
    pub async fn update_code(
        &self,
        name: &str,
        code: CodeSource,
        revision_id: Option<&str>,
    ) -> Result<FunctionConfig, FunctionsError> {
        let old = self.get(name).await?;
        Self::revision_check(&old, revision_id)?;
        let (code, _) = self.accept_code(code, old.language(), &old.handler).await?;
        let blob = code.blob.clone();
        let new = FunctionConfig {
            code,
            revision_id: uuid::Uuid::new_v4().to_string(),
            modified_ms: now_ms(),
            ..old.clone()
        };
        let r = self.replace(&old, new).await;
        if r.is_err() {
            let _ = self.store.delete_held_blob(&blob).await;
        }
        r
    }

    /// UpdateFunctionConfiguration.
    pub async fn update_config(
        &self,
        name: &str,
        change: ConfigChange,
        revision_id: Option<&str>,
    ) -> Result<FunctionConfig, FunctionsError> {
        let old = self.get(name).await?;
        Self::revision_check(&old, revision_id)?;
        let mut new = old.clone();
        let c = change;
        if let Some(v) = c.runtime {
            new.runtime = v;
        }
        if let Some(v) = c.handler {
            new.handler = v;
        }
        if let Some(v) = c.role {
            new.role = v;
        }
        if let Some(v) = c.description {
            new.description = v;
        }
        if let Some(v) = c.timeout_secs {
            new.timeout_secs = v;
        }
        if let Some(v) = c.memory_mb {
            new.memory_mb = v;
        }
        if let Some(v) = c.environment {
            new.environment = v;
        }
        validate(&new)?;
        if new.role != old.role
            && let Some(roles) = &self.roles
        {
            roles.check(&new.role).await?;
        }
        if new.handler != old.handler || new.language() != old.language() {
            let dir = self.code_dir(&new).await?;
            code::check_handler(&dir, new.language(), &new.handler)?;
        }
        new.revision_id = uuid::Uuid::new_v4().to_string();
        new.modified_ms = now_ms();
        self.replace(&old, new).await
    }

    /// PutFunctionConcurrency / DeleteFunctionConcurrency (`None`).
    pub async fn set_concurrency(
        &self,
        name: &str,
        reserved: Option<u32>,
    ) -> Result<FunctionConfig, FunctionsError> {
        let old = self.get(name).await?;
        let new = FunctionConfig {
            reserved_concurrency: reserved,
            revision_id: uuid::Uuid::new_v4().to_string(),
            modified_ms: now_ms(),
            ..old.clone()
        };
        self.replace(&old, new).await
    }

    /// DeleteFunction: the row, its queued asynchronous invocations and (once that is
    /// durable) its code blob.
    pub async fn delete(&self, name: &str) -> Result<FunctionConfig, FunctionsError> {
        let old = self.get(name).await?;
        let o = old.clone();
        let deleted = self
            .db
            .write(move |tx| {
                let n = tx.execute("DELETE FROM functions WHERE name = ?1", params![&o.name])?;
                if n == 1 {
                    release_blob_in_tx(tx, &o.code.blob)?;
                    tx.execute(
                        "DELETE FROM function_events WHERE function = ?1",
                        params![&o.name],
                    )?;
                }
                Ok::<_, FunctionsError>(n == 1)
            })
            .await?;
        if !deleted {
            return Err(self.not_found(name));
        }
        let _ = self.store.delete_held_blob(&old.code.blob).await;
        Ok(old)
    }

    /// The unpacked code of `cfg` (`LAMBDA_TASK_ROOT`), unpacked from its blob if this
    /// machine does not have it yet.
    pub async fn code_dir(&self, cfg: &FunctionConfig) -> Result<PathBuf, FunctionsError> {
        let dest = self.code_root().join(&cfg.code.sha256);
        if dest.is_dir() {
            return Ok(dest);
        }
        let _permit = self
            .uploads
            .acquire()
            .await
            .map_err(|_| FunctionsError::Internal("the upload limit is closed".into()))?;
        let body = self.store.read_held_blob(&cfg.code.blob).await?;
        let dir = self.root.join("staging");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(FunctionsError::Io)?;
        let staged = Staged {
            path: dir.join(format!("{}.zip", uuid::Uuid::new_v4().simple())),
            sha256: cfg.code.sha256.clone(),
            size: cfg.code.size,
        };
        write_file(&staged.path, body, &cfg.code.sha256).await?;
        self.unpack_staged(&staged).await
    }

    /// Removes unpacked code no function uses any more, and staging leftovers (at start,
    /// before anything runs).
    pub async fn sweep_code(&self) -> Result<usize, FunctionsError> {
        let used: std::collections::HashSet<String> = self
            .db
            .read(|c| {
                Ok::<_, FunctionsError>(c.query_vec(
                    "SELECT DISTINCT code_sha256 FROM functions",
                    params![],
                    |r| r.get(0),
                )?)
            })
            .await?
            .into_iter()
            .collect();
        let _ = tokio::fs::remove_dir_all(self.root.join("staging")).await;
        let mut removed = 0;
        let Ok(mut entries) = tokio::fs::read_dir(self.code_root()).await else {
            return Ok(0);
        };
        while let Ok(Some(e)) = entries.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "node_modules" || used.contains(&name) {
                continue;
            }
            if tokio::fs::remove_dir_all(e.path()).await.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// A link `<code root>/node_modules` → the Node.js SDK, so that every function's code
    /// resolves it (see [`runtimes`]).
    pub fn link_node_modules(&self, sdk: &Path) -> std::io::Result<()> {
        let link = self.code_root().join("node_modules");
        std::fs::create_dir_all(self.code_root())?;
        if std::fs::read_link(&link).is_ok_and(|t| t == sdk) {
            return Ok(());
        }
        let tmp = self
            .code_root()
            .join(format!(".link-{}", uuid::Uuid::new_v4().simple()));
        #[cfg(unix)]
        std::os::unix::fs::symlink(sdk, &tmp)?;
        #[cfg(not(unix))]
        return Err(std::io::Error::other("symbolic links need unix"));
        #[cfg(unix)]
        std::fs::rename(&tmp, &link)
    }

    /// Queues an asynchronous invocation (Invoke with `Event`): durable when this returns.
    pub async fn enqueue(
        &self,
        name: &str,
        request_id: &str,
        payload: Bytes,
    ) -> Result<(), FunctionsError> {
        let (n, id) = (name.to_owned(), request_id.to_owned());
        let now = now_ms();
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO function_events (id, function, payload, attempts, due_ms, created_ms)
                     VALUES (?1, ?2, ?3, 0, ?4, ?4) ON CONFLICT (id) DO NOTHING",
                    params![&id, &n, payload.to_vec(), now],
                )?;
                Ok::<_, FunctionsError>(())
            })
            .await
    }
}

/// Whether function `name` exists (for tools that have only the metadata engine).
pub async fn exists(db: &Meta, name: &str) -> Result<bool, FunctionsError> {
    let n = name.to_owned();
    db.read(move |c| {
        Ok::<_, FunctionsError>(c.exists("SELECT 1 FROM functions WHERE name = ?1", params![&n])?)
    })
    .await
}

/// A file's bytes as a stream, 256 KiB at a time.
async fn file_stream(path: &Path) -> Result<ByteStream, FunctionsError> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(FunctionsError::Io)?;
    let s = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
        match file.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf.freeze()), Some(file))),
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(Box::pin(s))
}

/// Writes a stream to `path`, checking it against its SHA-256.
async fn write_file(path: &Path, mut body: ByteStream, sha256: &str) -> Result<(), FunctionsError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(FunctionsError::Io)?;
    let mut hash = Sha256::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(FunctionsError::Io)?;
        hash.update(&chunk);
        file.write_all(&chunk).await.map_err(FunctionsError::Io)?;
    }
    file.flush().await.map_err(FunctionsError::Io)?;
    if hex::encode(hash.finalize()) != sha256 {
        return Err(FunctionsError::Internal(
            "a function's stored code does not match its SHA-256".into(),
        ));
    }
    Ok(())
}

/// Lambda's `LastModified`: `2026-12-04T05:20:00.000+0000`.
pub fn last_modified(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
        .to_string()
}
