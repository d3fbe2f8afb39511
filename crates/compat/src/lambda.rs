//! Lambda's REST-JSON protocol (SigV4 service `lambda`): functions (`CreateFunction`,
//! `GetFunction`, `GetFunctionConfiguration`, `ListFunctions`, `UpdateFunctionCode`,
//! `UpdateFunctionConfiguration`, `DeleteFunction`, `Put`/`Get`/`DeleteFunctionConcurrency`),
//! `Invoke` (`RequestResponse`, `Event`, `DryRun`; `LogType: Tail`) and event-source
//! mappings for Kinesis streams (`Create`/`Get`/`List`/`Update`/`DeleteEventSourceMapping`:
//! the mappings `sluice mapping` manages, one store with two front ends).
//!
//! Requests reach this module when their signature's credential scope names the `lambda`
//! service (see [`crate::router`]): Lambda's paths (`/2015-03-31/functions/…`) are also
//! valid S3 paths, so the service a client signed for decides.
//!
//! Errors are Lambda's: the status, `x-amzn-ErrorType: <Code>` and a JSON body
//! `{"Type": "User"|"Service", "Message": …}`.
//!
//! Not supported, refused with `InvalidParameterValueException` rather than ignored:
//! container images (`PackageType: Image`), layers, VPC and file-system configuration,
//! dead-letter queues, architectures other than the machine's. Versions and aliases are
//! not kept: `Publish` is accepted and every function is only `$LATEST`; a qualifier other
//! than `$LATEST` is not found.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use sluice_functions::invoke::{Admission, Invoker};
use sluice_functions::{
    CodeSource, ConfigChange, FunctionConfig, FunctionsError, NewFunction, last_modified,
};
use sluice_processor::embedded::{EmbeddedStats, SavedStats};
use sluice_processor::mappings::{
    FunctionSpec, MappingDefaults, MappingDefinition, MappingOptions, MappingState, NewMapping,
    lambda_state,
};
use sluice_processor::{MappingStore, ProcessorError, StartingPosition};

use crate::Edge;
use crate::authz::Principal;

/// What the Lambda front end works with.
#[derive(Clone)]
pub struct LambdaApi {
    pub invoker: Arc<Invoker>,
    pub mappings: Arc<dyn MappingStore>,
    pub stats: EmbeddedStats,
    /// The server's mapping defaults (upload stream, output bucket).
    pub defaults: MappingDefaults,
    /// Bytes of request bodies read into memory at once, over all Lambda requests.
    pub body_budget: Arc<BodyBudget>,
}

/// A bound on the request bodies the Lambda front end holds in memory at once.
///
/// Lambda's requests are read whole (a `CreateFunction` is one JSON document with the zip
/// in base64, up to 70 MB): each request reserves its `Content-Length` (or, without one,
/// its operation's limit) before reading, waits up to [`BODY_BUDGET_WAIT`] for room, and is
/// refused with `TooManyRequestsException` after that. Memory then stays within the
/// budget however many clients upload code at once.
pub struct BodyBudget {
    kib: tokio::sync::Semaphore,
    total_kib: usize,
}

/// The default budget: two code uploads of the largest size and room for invocations.
pub const DEFAULT_BODY_BUDGET: usize = 160 * 1024 * 1024;

/// How long a request waits for room in the budget before it is refused.
const BODY_BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        let total_kib = bytes
            .div_ceil(1024)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        BodyBudget {
            kib: tokio::sync::Semaphore::new(total_kib),
            total_kib,
        }
    }

    /// Room for a body of `bytes`, released when the permit drops.
    async fn reserve(&self, bytes: usize) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        let kib = bytes.div_ceil(1024).clamp(1, self.total_kib);
        let kib = u32::try_from(kib).unwrap_or(u32::MAX);
        match tokio::time::timeout(BODY_BUDGET_WAIT, self.kib.acquire_many(kib)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                "too many large requests are being received at once; retry later",
            )),
        }
    }
}

impl Default for BodyBudget {
    fn default() -> Self {
        BodyBudget::new(DEFAULT_BODY_BUDGET)
    }
}

/// Largest `CreateFunction` / `UpdateFunctionCode` request: a 50 MB zip in base64, with
/// the JSON around it (Lambda: 70,167,211 bytes).
const MAX_CODE_REQUEST: usize = 70_167_211;
/// Largest synchronous invocation payload, request or response (Lambda: 6 MB).
pub const MAX_SYNC_PAYLOAD: usize = 6_291_456;
/// Largest asynchronous invocation payload (Lambda: 256 KB).
pub const MAX_ASYNC_PAYLOAD: usize = 262_144;
/// Largest request of any other operation.
const MAX_OTHER_REQUEST: usize = 1024 * 1024;

/// Lambda's error response.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let kind = if status.is_server_error() {
        "Service"
    } else {
        "User"
    };
    let mut body = json!({"Type": kind, "Message": message, "message": message});
    // A function's concurrency limit (Lambda's "Rate Exceeded."), not the body budget.
    if code == "TooManyRequestsException" && message == "Rate Exceeded." {
        body["Reason"] = json!("ReservedFunctionConcurrentInvocationLimitExceeded");
    }
    let mut resp = (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(code) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

/// An error answer, small enough to pass around in `Result`s.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.code, &self.message)
    }
}

fn invalid(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "InvalidParameterValueException",
        message,
    )
}

fn functions_error(e: FunctionsError) -> ApiError {
    if e.is_unavailable() {
        tracing::warn!(error = %e, "lambda: engine unavailable");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceException",
            "the service is unavailable (storage down or full); try again later",
        );
    }
    let m = e.to_string();
    match e {
        FunctionsError::NotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", &m)
        }
        FunctionsError::Conflict(_) => {
            ApiError::new(StatusCode::CONFLICT, "ResourceConflictException", &m)
        }
        FunctionsError::InvalidParameter(_) => invalid(&m),
        FunctionsError::PreconditionFailed(_) => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailedException",
            &m,
        ),
        FunctionsError::TooLarge(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            &m,
        ),
        FunctionsError::Throttled => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            "Rate Exceeded.",
        ),
        other => {
            tracing::error!(error = %other, "lambda operation failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "internal failure",
            )
        }
    }
}

fn processor_error(e: ProcessorError) -> ApiError {
    match e {
        ProcessorError::InvalidConfig(m) => invalid(&m),
        ProcessorError::NotFound(m) => ApiError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!("The resource you requested does not exist. ({m})"),
        ),
        ProcessorError::AlreadyExists(m) => {
            ApiError::new(StatusCode::CONFLICT, "ResourceConflictException", &m)
        }
        other => {
            tracing::error!(error = %other, "event-source mapping operation failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceException",
                "the service is unavailable; try again later",
            )
        }
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The operation a request names, from its method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    CreateFunction,
    ListFunctions,
    GetFunction(String),
    DeleteFunction(String),
    GetConfiguration(String),
    UpdateConfiguration(String),
    UpdateCode(String),
    Invoke(String),
    PutConcurrency(String),
    DeleteConcurrency(String),
    GetConcurrency(String),
    CreateMapping,
    ListMappings,
    GetMapping(String),
    UpdateMapping(String),
    DeleteMapping(String),
}

impl Op {
    fn parse(method: &Method, path: &str) -> Option<Op> {
        let segs: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(crate::sigv4::percent_decode)
            .collect();
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        let m = method.clone();
        Some(match (m, s.as_slice()) {
            (Method::POST, ["2015-03-31", "functions"]) => Op::CreateFunction,
            (Method::GET, ["2015-03-31", "functions"]) => Op::ListFunctions,
            (Method::GET, ["2015-03-31", "functions", f]) => Op::GetFunction(f.to_string()),
            (Method::DELETE, ["2015-03-31", "functions", f]) => Op::DeleteFunction(f.to_string()),
            (Method::GET, ["2015-03-31", "functions", f, "configuration"]) => {
                Op::GetConfiguration(f.to_string())
            }
            (Method::PUT, ["2015-03-31", "functions", f, "configuration"]) => {
                Op::UpdateConfiguration(f.to_string())
            }
            (Method::PUT, ["2015-03-31", "functions", f, "code"]) => Op::UpdateCode(f.to_string()),
            (Method::POST, ["2015-03-31", "functions", f, "invocations"]) => {
                Op::Invoke(f.to_string())
            }
            (Method::PUT, ["2017-10-31", "functions", f, "concurrency"]) => {
                Op::PutConcurrency(f.to_string())
            }
            (Method::DELETE, ["2017-10-31", "functions", f, "concurrency"]) => {
                Op::DeleteConcurrency(f.to_string())
            }
            (Method::GET, ["2019-09-30", "functions", f, "concurrency"]) => {
                Op::GetConcurrency(f.to_string())
            }
            (Method::POST, ["2015-03-31", "event-source-mappings"]) => Op::CreateMapping,
            (Method::GET, ["2015-03-31", "event-source-mappings"]) => Op::ListMappings,
            (Method::GET, ["2015-03-31", "event-source-mappings", u]) => {
                Op::GetMapping(u.to_string())
            }
            (Method::PUT, ["2015-03-31", "event-source-mappings", u]) => {
                Op::UpdateMapping(u.to_string())
            }
            (Method::DELETE, ["2015-03-31", "event-source-mappings", u]) => {
                Op::DeleteMapping(u.to_string())
            }
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Op::CreateFunction => "CreateFunction",
            Op::ListFunctions => "ListFunctions",
            Op::GetFunction(_) => "GetFunction",
            Op::DeleteFunction(_) => "DeleteFunction",
            Op::GetConfiguration(_) => "GetFunctionConfiguration",
            Op::UpdateConfiguration(_) => "UpdateFunctionConfiguration",
            Op::UpdateCode(_) => "UpdateFunctionCode",
            Op::Invoke(_) => "InvokeFunction",
            Op::PutConcurrency(_) => "PutFunctionConcurrency",
            Op::DeleteConcurrency(_) => "DeleteFunctionConcurrency",
            Op::GetConcurrency(_) => "GetFunctionConcurrency",
            Op::CreateMapping => "CreateEventSourceMapping",
            Op::ListMappings => "ListEventSourceMappings",
            Op::GetMapping(_) => "GetEventSourceMapping",
            Op::UpdateMapping(_) => "UpdateEventSourceMapping",
            Op::DeleteMapping(_) => "DeleteEventSourceMapping",
        }
    }

    fn body_limit(&self) -> usize {
        match self {
            Op::CreateFunction | Op::UpdateCode(_) => MAX_CODE_REQUEST,
            Op::Invoke(_) => MAX_SYNC_PAYLOAD,
            _ => MAX_OTHER_REQUEST,
        }
    }
}

/// Whether a request is signed for `service` (in its `Authorization` header's credential
/// scope, or a presigned URL's `X-Amz-Credential`).
pub fn signed_for(headers: &HeaderMap, query: Option<&str>, service: &str) -> bool {
    let scope_service = |credential: &str| -> bool {
        // AKID/DATE/REGION/SERVICE/aws4_request
        credential.split('/').nth(3) == Some(service)
    };
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok())
        && let Some(rest) = auth.split("Credential=").nth(1)
    {
        let credential = rest.split([',', ' ']).next().unwrap_or("");
        return scope_service(credential);
    }
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("X-Amz-Credential=") {
                return scope_service(&crate::sigv4::percent_decode(v));
            }
        }
    }
    false
}

fn too_large(op: &Op) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestTooLargeException",
        &format!(
            "Request must be smaller than {} bytes for the {} operation",
            op.body_limit(),
            op.name()
        ),
    )
}

/// Serves one Lambda request.
pub async fn handle(State(edge): State<Edge>, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut resp = serve(edge, req).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().entry("x-amzn-requestid").or_insert(v);
    }
    resp
}

async fn serve(edge: Edge, req: Request) -> Response {
    let Some(api) = edge.lambda.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "this server does not run functions",
        );
    };
    let (parts, body) = req.into_parts();
    let Some(op) = Op::parse(&parts.method, parts.uri.path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            &format!(
                "Lambda has no operation {} {} (or sluice does not support it)",
                parts.method,
                parts.uri.path()
            ),
        );
    };
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > op.body_limit()) {
        return too_large(&op);
    }
    let _room = match api
        .body_budget
        .reserve(declared.unwrap_or(op.body_limit()))
        .await
    {
        Ok(permit) => permit,
        Err(e) => return e.into_response(),
    };
    let body = match axum::body::to_bytes(body, op.body_limit()).await {
        Ok(b) => b,
        Err(_) => return too_large(&op),
    };
    let principal = match crate::authenticate(
        &edge.keys,
        &edge.kinesis.account_id,
        &parts.method,
        &parts.uri,
        &parts.headers,
        &body,
        crate::peer_of(&parts.extensions),
    )
    .await
    {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (
                        crate::sigv4::percent_decode(k),
                        crate::sigv4::percent_decode(&v.replace('+', " ")),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let ctx = Ctx {
        edge: &edge,
        api: &api,
        principal: &principal,
        headers: &parts.headers,
        query: &query,
    };
    metrics::counter!("sluice_lambda_requests_total", "operation" => op.name()).increment(1);
    match op {
        Op::CreateFunction => ctx.create_function(&body).await,
        Op::ListFunctions => ctx.list_functions().await,
        Op::GetFunction(f) => ctx.get_function(&f, true).await,
        Op::GetConfiguration(f) => ctx.get_function(&f, false).await,
        Op::DeleteFunction(f) => ctx.delete_function(&f).await,
        Op::UpdateConfiguration(f) => ctx.update_configuration(&f, &body).await,
        Op::UpdateCode(f) => ctx.update_code(&f, &body).await,
        Op::Invoke(f) => ctx.invoke(&f, body).await,
        Op::PutConcurrency(f) => {
            ctx.concurrency(&f, Some(&body), "PutFunctionConcurrency")
                .await
        }
        Op::DeleteConcurrency(f) => ctx.concurrency(&f, None, "DeleteFunctionConcurrency").await,
        Op::GetConcurrency(f) => ctx.get_concurrency(&f).await,
        Op::CreateMapping => ctx.create_mapping(&body).await,
        Op::ListMappings => ctx.list_mappings().await,
        Op::GetMapping(u) => ctx.get_mapping(&u).await,
        Op::UpdateMapping(u) => ctx.update_mapping(&u, &body).await,
        Op::DeleteMapping(u) => ctx.delete_mapping(&u).await,
    }
}

struct Ctx<'a> {
    edge: &'a Edge,
    api: &'a LambdaApi,
    principal: &'a Principal,
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
}

/// The request's JSON object; `{}` for an empty body.
fn parse_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(invalid("the request body must be a JSON object")),
        Err(e) => Err(invalid(&format!("the request body is not JSON: {e}"))),
    }
}

fn opt_str(m: &serde_json::Map<String, Value>, k: &str) -> Result<Option<String>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(&format!("{k} must be a string"))),
    }
}

fn opt_u64(m: &serde_json::Map<String, Value>, k: &str) -> Result<Option<u64>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(&format!("{k} must be a non-negative integer"))),
    }
}

fn opt_i64(m: &serde_json::Map<String, Value>, k: &str) -> Result<Option<i64>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(&format!("{k} must be an integer"))),
    }
}

fn opt_bool(m: &serde_json::Map<String, Value>, k: &str) -> Result<Option<bool>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(&format!("{k} must be a boolean"))),
    }
}

fn string_map(v: Option<&Value>, what: &str) -> Result<BTreeMap<String, String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(invalid(&format!("{what} values must be strings"))),
            })
            .collect(),
        Some(_) => Err(invalid(&format!("{what} must be an object of strings"))),
    }
}

/// `Environment.Variables`, if given.
fn environment(
    m: &serde_json::Map<String, Value>,
) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    match m.get("Environment") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(e)) => Ok(Some(string_map(
            e.get("Variables"),
            "Environment.Variables",
        )?)),
        Some(_) => Err(invalid("Environment must be an object")),
    }
}

/// Refuses settings sluice does not have, rather than ignoring them.
fn refuse_unsupported(m: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    let non_empty = |k: &str| match m.get(k) {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => o.values().any(|v| match v {
            Value::Array(a) => !a.is_empty(),
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            _ => true,
        }),
        Some(_) => true,
    };
    for (k, what) in [
        ("Layers", "Layers are"),
        ("VpcConfig", "VPC configuration is"),
        ("FileSystemConfigs", "File systems are"),
        ("DeadLetterConfig", "Dead-letter queues are"),
        ("ImageConfig", "Container images are"),
        ("CodeSigningConfigArn", "Code signing is"),
    ] {
        if non_empty(k) {
            return Err(invalid(&format!("{what} not supported by sluice ({k})")));
        }
    }
    if let Some(p) = m.get("PackageType").and_then(Value::as_str)
        && p != "Zip"
    {
        return Err(invalid(&format!(
            "PackageType {p} is not supported by sluice: functions are zip archives"
        )));
    }
    if let Some(Value::Array(a)) = m.get("Architectures") {
        let here = machine_architecture();
        if a.iter().any(|v| v.as_str() != Some(here)) {
            return Err(invalid(&format!(
                "Architectures: this machine runs {here} functions only"
            )));
        }
    }
    Ok(())
}

fn machine_architecture() -> &'static str {
    if std::env::consts::ARCH == "aarch64" {
        "arm64"
    } else {
        "x86_64"
    }
}

fn code_source(code: Option<&Value>) -> Result<CodeSource, ApiError> {
    let Some(Value::Object(c)) = code else {
        return Err(invalid("Code is required: ZipFile, or S3Bucket and S3Key"));
    };
    if c.get("ImageUri").is_some_and(|v| !v.is_null()) {
        return Err(invalid(
            "Container images are not supported by sluice: give ZipFile, or S3Bucket and S3Key",
        ));
    }
    match (
        c.get("ZipFile").and_then(Value::as_str),
        c.get("S3Bucket").and_then(Value::as_str),
        c.get("S3Key").and_then(Value::as_str),
    ) {
        (Some(z), None, None) => base64::engine::general_purpose::STANDARD
            .decode(z)
            .map(|b| CodeSource::Zip(Bytes::from(b)))
            .map_err(|_| invalid("ZipFile must be the zip archive in base64")),
        (None, Some(bucket), Some(key)) => {
            if c.get("S3ObjectVersion").is_some_and(|v| !v.is_null()) {
                return Err(invalid(
                    "S3ObjectVersion is not supported: sluice's buckets keep one version",
                ));
            }
            Ok(CodeSource::Object {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            })
        }
        _ => Err(invalid(
            "Please provide a source for function code: ZipFile, or S3Bucket and S3Key (one of them)",
        )),
    }
}

impl Ctx<'_> {
    fn check(&self, action: &str, resource: &str) -> Result<(), ApiError> {
        self.principal
            .check(action, resource)
            .map_err(|d| ApiError::new(StatusCode::FORBIDDEN, "AccessDeniedException", d.message()))
    }

    fn functions(&self) -> &sluice_functions::Functions {
        self.api.invoker.functions()
    }

    /// The function a path names (a name or an ARN), authorized for `action`.
    fn function(&self, given: &str, action: &str) -> Result<String, ApiError> {
        let name = self
            .functions()
            .resolve_name(given)
            .map_err(functions_error)?;
        self.check(action, &self.functions().arn(&name))?;
        if let Some(q) = self.query.get("Qualifier")
            && q != "$LATEST"
        {
            return Err(functions_error(FunctionsError::NotFound(format!(
                "Function not found: {}:{q} (sluice keeps only $LATEST)",
                self.functions().arn(&name)
            ))));
        }
        Ok(name)
    }

    fn configuration(&self, f: &FunctionConfig) -> Value {
        let mut v = json!({
            "FunctionName": f.name,
            "FunctionArn": self.functions().arn(&f.name),
            "Runtime": f.runtime,
            "Role": f.role,
            "Handler": f.handler,
            "CodeSize": f.code.size,
            "Description": f.description,
            "Timeout": f.timeout_secs,
            "MemorySize": f.memory_mb,
            "LastModified": last_modified(f.modified_ms),
            "CodeSha256": f.code.sha256_base64(),
            "Version": "$LATEST",
            "TracingConfig": {"Mode": "PassThrough"},
            "RevisionId": f.revision_id,
            "State": "Active",
            "LastUpdateStatus": "Successful",
            "PackageType": "Zip",
            "Architectures": [machine_architecture()],
            "EphemeralStorage": {"Size": 512},
            "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"},
            "LoggingConfig": {
                "LogFormat": "Text",
                "LogGroup": sluice_functions::invoke::log_key(&f.name),
            },
        });
        if !f.environment.is_empty() {
            v["Environment"] = json!({"Variables": f.environment});
        }
        v
    }

    /// `iam:PassRole` on the role a function is to run as: a caller whose permissions are
    /// policies may give a function only a role it may pass (as on AWS), so creating a
    /// function never grants more than the caller's policies allow.
    fn check_pass_role(&self, role: &str) -> Result<(), ApiError> {
        self.check("iam:PassRole", role)
    }

    async fn create_function(&self, body: &[u8]) -> Response {
        let m = match parse_body(body) {
            Ok(m) => m,
            Err(r) => return r.into_response(),
        };
        let r = async {
            refuse_unsupported(&m)?;
            let name =
                opt_str(&m, "FunctionName")?.ok_or_else(|| invalid("FunctionName is required"))?;
            self.check("lambda:CreateFunction", &self.functions().arn(&name))?;
            let new = NewFunction {
                name,
                runtime: opt_str(&m, "Runtime")?
                    .ok_or_else(|| invalid("Runtime is required for a zip archive"))?,
                handler: opt_str(&m, "Handler")?
                    .ok_or_else(|| invalid("Handler is required for a zip archive"))?,
                role: opt_str(&m, "Role")?.ok_or_else(|| invalid("Role is required"))?,
                description: opt_str(&m, "Description")?,
                timeout_secs: opt_u64(&m, "Timeout")?,
                memory_mb: opt_u64(&m, "MemorySize")?.map(|v| v.min(u64::from(u32::MAX)) as u32),
                environment: environment(&m)?.unwrap_or_default(),
                tags: string_map(m.get("Tags"), "Tags")?,
            };
            self.check_pass_role(&new.role)?;
            let code = code_source(m.get("Code"))?;
            let f = self
                .functions()
                .create(new, code)
                .await
                .map_err(functions_error)?;
            Ok::<_, ApiError>(json_response(StatusCode::CREATED, &self.configuration(&f)))
        };
        r.await.unwrap_or_else(IntoResponse::into_response)
    }

    async fn list_functions(&self) -> Response {
        if let Err(r) = self.check("lambda:ListFunctions", "*") {
            return r.into_response();
        }
        let limit = match self.query.get("MaxItems").map(|v| v.parse::<usize>()) {
            None => 50,
            Some(Ok(n)) if (1..=10_000).contains(&n) => n,
            Some(_) => return invalid("MaxItems must be between 1 and 10000").into_response(),
        };
        let marker = self.query.get("Marker").map(String::as_str);
        match self.functions().list(marker, limit).await {
            Ok((rows, more)) => {
                let mut v = json!({
                    "Functions": rows.iter().map(|f| self.configuration(f)).collect::<Vec<_>>(),
                });
                if more && let Some(last) = rows.last() {
                    v["NextMarker"] = json!(last.name);
                }
                json_response(StatusCode::OK, &v)
            }
            Err(e) => functions_error(e).into_response(),
        }
    }

    async fn get_function(&self, given: &str, whole: bool) -> Response {
        let action = if whole {
            "lambda:GetFunction"
        } else {
            "lambda:GetFunctionConfiguration"
        };
        let name = match self.function(given, action) {
            Ok(n) => n,
            Err(r) => return r.into_response(),
        };
        let f = match self.functions().get(&name).await {
            Ok(f) => f,
            Err(e) => return functions_error(e).into_response(),
        };
        if !whole {
            return json_response(StatusCode::OK, &self.configuration(&f));
        }
        let mut v = json!({
            "Configuration": self.configuration(&f),
            "Code": {"RepositoryType": "S3"},
            "Tags": f.tags,
        });
        if let Some(n) = f.reserved_concurrency {
            v["Concurrency"] = json!({"ReservedConcurrentExecutions": n});
        }
        json_response(StatusCode::OK, &v)
    }

    async fn delete_function(&self, given: &str) -> Response {
        let name = match self.function(given, "lambda:DeleteFunction") {
            Ok(n) => n,
            Err(r) => return r.into_response(),
        };
        match self.functions().delete(&name).await {
            Ok(_) => {
                self.api.invoker.forget(&name).await;
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => functions_error(e).into_response(),
        }
    }

    async fn update_configuration(&self, given: &str, body: &[u8]) -> Response {
        let r = async {
            let name = self.function(given, "lambda:UpdateFunctionConfiguration")?;
            let m = parse_body(body)?;
            refuse_unsupported(&m)?;
            let change = ConfigChange {
                runtime: opt_str(&m, "Runtime")?,
                handler: opt_str(&m, "Handler")?,
                role: opt_str(&m, "Role")?,
                description: opt_str(&m, "Description")?,
                timeout_secs: opt_u64(&m, "Timeout")?,
                memory_mb: opt_u64(&m, "MemorySize")?.map(|v| v.min(u64::from(u32::MAX)) as u32),
                environment: environment(&m)?,
            };
            if let Some(role) = &change.role {
                self.check_pass_role(role)?;
            }
            let revision = opt_str(&m, "RevisionId")?;
            let f = self
                .functions()
                .update_config(&name, change, revision.as_deref())
                .await
                .map_err(functions_error)?;
            Ok::<_, ApiError>(json_response(StatusCode::OK, &self.configuration(&f)))
        };
        r.await.unwrap_or_else(IntoResponse::into_response)
    }

    async fn update_code(&self, given: &str, body: &[u8]) -> Response {
        let r = async {
            let name = self.function(given, "lambda:UpdateFunctionCode")?;
            let m = parse_body(body)?;
            if let Some(Value::Array(a)) = m.get("Architectures") {
                refuse_unsupported(&serde_json::Map::from_iter([(
                    "Architectures".to_owned(),
                    Value::Array(a.clone()),
                )]))?;
            }
            let mut code = serde_json::Map::new();
            for k in [
                "ZipFile",
                "S3Bucket",
                "S3Key",
                "S3ObjectVersion",
                "ImageUri",
            ] {
                if let Some(v) = m.get(k) {
                    code.insert(k.to_owned(), v.clone());
                }
            }
            let source = code_source(Some(&Value::Object(code)))?;
            let revision = opt_str(&m, "RevisionId")?;
            if opt_bool(&m, "DryRun")? == Some(true) {
                let f = self.functions().get(&name).await.map_err(functions_error)?;
                return Ok(json_response(StatusCode::OK, &self.configuration(&f)));
            }
            let f = self
                .functions()
                .update_code(&name, source, revision.as_deref())
                .await
                .map_err(functions_error)?;
            Ok::<_, ApiError>(json_response(StatusCode::OK, &self.configuration(&f)))
        };
        r.await.unwrap_or_else(IntoResponse::into_response)
    }

    async fn concurrency(&self, given: &str, body: Option<&[u8]>, op: &str) -> Response {
        let r = async {
            let name = self.function(given, &format!("lambda:{op}"))?;
            let reserved = match body {
                None => None,
                Some(b) => {
                    let m = parse_body(b)?;
                    let n = opt_u64(&m, "ReservedConcurrentExecutions")?
                        .ok_or_else(|| invalid("ReservedConcurrentExecutions is required"))?;
                    if n > 1000 {
                        return Err(invalid(
                            "ReservedConcurrentExecutions must be between 0 and 1000",
                        ));
                    }
                    Some(n as u32)
                }
            };
            self.functions()
                .set_concurrency(&name, reserved)
                .await
                .map_err(functions_error)?;
            Ok::<_, ApiError>(match reserved {
                Some(n) => {
                    json_response(StatusCode::OK, &json!({"ReservedConcurrentExecutions": n}))
                }
                None => StatusCode::NO_CONTENT.into_response(),
            })
        };
        r.await.unwrap_or_else(IntoResponse::into_response)
    }

    async fn get_concurrency(&self, given: &str) -> Response {
        let name = match self.function(given, "lambda:GetFunctionConcurrency") {
            Ok(n) => n,
            Err(r) => return r.into_response(),
        };
        match self.functions().get(&name).await {
            Ok(f) => json_response(
                StatusCode::OK,
                &match f.reserved_concurrency {
                    Some(n) => json!({"ReservedConcurrentExecutions": n}),
                    None => json!({}),
                },
            ),
            Err(e) => functions_error(e).into_response(),
        }
    }

    async fn invoke(&self, given: &str, body: Bytes) -> Response {
        let name = match self.function(given, "lambda:InvokeFunction") {
            Ok(n) => n,
            Err(r) => return r.into_response(),
        };
        let header = |k: &str| self.headers.get(k).and_then(|v| v.to_str().ok());
        let kind = header("x-amz-invocation-type").unwrap_or("RequestResponse");
        let tail = match header("x-amz-log-type") {
            None | Some("None") => false,
            Some("Tail") => true,
            Some(other) => {
                return invalid(&format!("LogType must be None or Tail, got {other}"))
                    .into_response();
            }
        };
        let event: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "InvalidRequestContentException",
                        &format!("Could not parse request body into json: {e}"),
                    );
                }
            }
        };
        match kind {
            "DryRun" => match self.functions().get(&name).await {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => functions_error(e).into_response(),
            },
            "Event" => {
                if body.len() > MAX_ASYNC_PAYLOAD {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestTooLargeException",
                        &format!(
                            "Request must be smaller than {MAX_ASYNC_PAYLOAD} bytes for an asynchronous InvokeFunction"
                        ),
                    );
                }
                if let Err(e) = self.functions().get(&name).await {
                    return functions_error(e).into_response();
                }
                let payload = Bytes::from(event.to_string());
                match self.api.invoker.enqueue(&name, payload).await {
                    Ok(id) => {
                        let mut r = StatusCode::ACCEPTED.into_response();
                        if let Ok(v) = HeaderValue::from_str(&id) {
                            r.headers_mut().insert("x-amzn-requestid", v);
                        }
                        r
                    }
                    Err(e) => functions_error(e).into_response(),
                }
            }
            "RequestResponse" => {
                let inv = match self
                    .api
                    .invoker
                    .invoke(&name, event, Admission::Throttle, tail, None)
                    .await
                {
                    Ok(i) => i,
                    Err(e) => return functions_error(e).into_response(),
                };
                let (payload, function_error) = match &inv.result {
                    Ok(v) => {
                        let bytes = serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec());
                        if bytes.len() > MAX_SYNC_PAYLOAD {
                            let doc = json!({
                                "errorType": "Function.ResponseSizeTooLarge",
                                "errorMessage": format!(
                                    "Response payload size exceeded maximum allowed payload size ({MAX_SYNC_PAYLOAD} bytes)."
                                ),
                            });
                            (doc.to_string().into_bytes(), true)
                        } else {
                            (bytes, false)
                        }
                    }
                    Err(f) => (f.document.to_string().into_bytes(), true),
                };
                let mut resp = Response::new(Body::from(payload));
                let h = resp.headers_mut();
                h.insert("content-type", HeaderValue::from_static("application/json"));
                h.insert(
                    "x-amz-executed-version",
                    HeaderValue::from_static("$LATEST"),
                );
                if let Ok(v) = HeaderValue::from_str(&inv.request_id) {
                    h.insert("x-amzn-requestid", v);
                }
                if function_error {
                    h.insert(
                        "x-amz-function-error",
                        HeaderValue::from_static("Unhandled"),
                    );
                }
                if let Some(t) = &inv.log_tail {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(t);
                    if let Ok(v) = HeaderValue::from_str(&b64) {
                        h.insert("x-amz-log-result", v);
                    }
                }
                resp
            }
            other => invalid(&format!(
                "InvocationType must be RequestResponse, Event or DryRun, got {other}"
            ))
            .into_response(),
        }
    }

    // --- event-source mappings ---------------------------------------------------------

    fn mapping_arn(&self, uuid: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:event-source-mapping:{uuid}",
            self.functions().region(),
            self.functions().account_id()
        )
    }

    fn stream_arn(&self, stream: &str) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:stream/{stream}",
            self.functions().region(),
            self.functions().account_id()
        )
    }

    /// The stream a Kinesis stream ARN names (of this region and account).
    fn stream_of(&self, arn: &str) -> Result<String, ApiError> {
        let prefix = format!(
            "arn:aws:kinesis:{}:{}:stream/",
            self.functions().region(),
            self.functions().account_id()
        );
        arn.strip_prefix(&prefix)
            .filter(|s| !s.is_empty() && !s.contains('/'))
            .map(str::to_owned)
            .ok_or_else(|| {
                invalid(&format!(
                    "Unsupported event source {arn}: sluice maps Kinesis streams of this region and account ({prefix}<name>)"
                ))
            })
    }

    fn mapping_view(
        &self,
        def: &MappingDefinition,
        s: Option<&SavedStats>,
        state: Option<&str>,
    ) -> Value {
        let c = &def.config;
        let function = match &def.function {
            FunctionSpec::Function { name } => name.clone(),
            _ => c.name.clone(),
        };
        let state = state
            .unwrap_or_else(|| lambda_state(def.state, def.updated_ms, s.map(|s| &s.stats), true));
        let result = s
            .map(|s| s.stats.last_processing_result.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "No records processed".into());
        let mut v = json!({
            "UUID": def.uuid,
            "BatchSize": c.batch_size,
            "MaximumBatchingWindowInSeconds": c.maximum_batching_window_secs,
            "ParallelizationFactor": c.parallelization_factor,
            "EventSourceArn": self.stream_arn(&c.stream),
            "FunctionArn": self.functions().arn(&function),
            "LastModified": def.updated_ms as f64 / 1000.0,
            "LastProcessingResult": result,
            "State": state,
            "StateTransitionReason": if result.starts_with("PROBLEM") { "Server" } else { "User action" },
            "MaximumRecordAgeInSeconds": c.maximum_record_age_secs,
            "BisectBatchOnFunctionError": c.bisect_batch_on_function_error,
            "MaximumRetryAttempts": c.maximum_retry_attempts(),
            "TumblingWindowInSeconds": 0,
            "FunctionResponseTypes": c.function_response_types,
            "EventSourceMappingArn": self.mapping_arn(&def.uuid),
        });
        match c.starting_position {
            StartingPosition::Latest => v["StartingPosition"] = json!("LATEST"),
            StartingPosition::TrimHorizon => v["StartingPosition"] = json!("TRIM_HORIZON"),
            StartingPosition::AtTimestamp(ms) => {
                v["StartingPosition"] = json!("AT_TIMESTAMP");
                v["StartingPositionTimestamp"] = json!(ms as f64 / 1000.0);
            }
        }
        let destination = c.on_failure.as_ref().map(|d| match d {
            sluice_processor::destination::DestinationSpec::Stream { stream } => {
                self.stream_arn(stream)
            }
            sluice_processor::destination::DestinationSpec::Bucket { bucket, .. } => {
                format!("arn:aws:s3:::{bucket}")
            }
        });
        v["DestinationConfig"] = match destination {
            Some(d) => json!({"OnFailure": {"Destination": d}}),
            None => json!({"OnFailure": {}}),
        };
        v
    }

    /// The options of a Create/UpdateEventSourceMapping request.
    fn mapping_options(
        &self,
        m: &serde_json::Map<String, Value>,
    ) -> Result<MappingOptions, ApiError> {
        if opt_u64(m, "TumblingWindowInSeconds")?.is_some_and(|t| t > 0) {
            return Err(invalid(
                "TumblingWindowInSeconds is not supported by sluice",
            ));
        }
        for k in [
            "FilterCriteria",
            "ScalingConfig",
            "DocumentDBEventSourceConfig",
            "SourceAccessConfigurations",
            "Queues",
            "Topics",
        ] {
            if m.get(k).is_some_and(|v| !v.is_null()) {
                return Err(invalid(&format!(
                    "{k} is not supported for Kinesis streams by sluice"
                )));
            }
        }
        let on_failure = match m.get("DestinationConfig") {
            None | Some(Value::Null) => None,
            Some(d) => match d.pointer("/OnFailure/Destination").and_then(Value::as_str) {
                None | Some("") => Some(String::new()),
                Some(arn) => {
                    if let Some(bucket) = arn.strip_prefix("arn:aws:s3:::") {
                        Some(format!("s3://{bucket}/"))
                    } else if arn.starts_with("arn:aws:kinesis:") {
                        Some(format!("stream:{}", self.stream_of(arn)?))
                    } else {
                        return Err(invalid(&format!(
                            "Unsupported on-failure destination {arn}: sluice sends failed batches to a Kinesis stream or an S3 bucket"
                        )));
                    }
                }
            },
        };
        let timestamp = match m.get("StartingPositionTimestamp") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let secs = v
                    .as_f64()
                    .ok_or_else(|| invalid("StartingPositionTimestamp must be a time"))?;
                let t =
                    chrono::DateTime::<chrono::Utc>::from_timestamp_millis((secs * 1000.0) as i64)
                        .ok_or_else(|| invalid("StartingPositionTimestamp is out of range"))?;
                Some(t.to_rfc3339())
            }
        };
        let response_types = match m.get("FunctionResponseTypes") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| invalid("FunctionResponseTypes must be strings"))?,
            ),
            Some(_) => return Err(invalid("FunctionResponseTypes must be a list")),
        };
        Ok(MappingOptions {
            batch_size: opt_u64(m, "BatchSize")?.map(|v| v as usize),
            maximum_batching_window_secs: opt_u64(m, "MaximumBatchingWindowInSeconds")?
                .map(|v| v.min(u64::from(u32::MAX)) as u32),
            starting_position: opt_str(m, "StartingPosition")?,
            starting_position_timestamp: timestamp,
            parallelization_factor: opt_u64(m, "ParallelizationFactor")?
                .map(|v| v.min(u64::from(u32::MAX)) as u32),
            maximum_retry_attempts: opt_i64(m, "MaximumRetryAttempts")?,
            maximum_record_age_secs: opt_i64(m, "MaximumRecordAgeInSeconds")?,
            bisect_batch_on_function_error: opt_bool(m, "BisectBatchOnFunctionError")?,
            function_response_types: response_types,
            on_failure,
            ..MappingOptions::default()
        })
    }

    /// A registered function's name, from `FunctionName` (name or ARN); it must exist.
    async fn mapped_function(&self, given: &str) -> Result<String, ApiError> {
        let name = self
            .functions()
            .resolve_name(given)
            .map_err(functions_error)?;
        match self.functions().get(&name).await {
            Ok(_) => Ok(name),
            Err(FunctionsError::NotFound(_)) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                format!("Function does not exist: {}", self.functions().arn(&name)),
            )),
            Err(e) => Err(functions_error(e)),
        }
    }

    /// Lambda's check before it maps a stream to a function: the function's role may read
    /// the stream (`kinesis:GetRecords`, `GetShardIterator` and `DescribeStream` on its
    /// ARN), else `InvalidParameterValueException` with Lambda's message.
    async fn check_role_reads(&self, function: &str, stream: &str) -> Result<(), ApiError> {
        let Some(iam) = self.edge.iam.as_ref() else {
            return Ok(());
        };
        let f = self
            .functions()
            .get(function)
            .await
            .map_err(functions_error)?;
        let Some((sluice_iam::Kind::Role, role)) = sluice_iam::entity_of_arn(&f.role) else {
            return Err(invalid(sluice_functions::ROLE_NOT_ASSUMABLE));
        };
        let arn = self.stream_arn(stream);
        // The role's policies, read once; decided without a request (a condition on a
        // request's keys does not hold).
        let policy = match iam.iam.policy_of(sluice_iam::Kind::Role, &role).await {
            Ok((_, p)) => p,
            Err(sluice_iam::IamError::NoSuchEntity(_)) => {
                return Err(invalid(sluice_functions::ROLE_NOT_ASSUMABLE));
            }
            Err(e) if e.is_unavailable() => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceException",
                    "the service is unavailable (storage down or full); try again later",
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read a function role's policies");
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ServiceException",
                    "internal failure",
                ));
            }
        };
        let ctx = sluice_policy::Context::new();
        let readable = [
            "kinesis:GetRecords",
            "kinesis:GetShardIterator",
            "kinesis:DescribeStream",
        ]
        .iter()
        .all(|action| policy.decide_in(action, &arn, &ctx).allowed());
        if !readable {
            return Err(invalid(&format!(
                "Cannot access stream {arn}. Please ensure the role can perform the GetRecords, GetShardIterator, DescribeStream, and ListStreams Actions on your stream in IAM."
            )));
        }
        Ok(())
    }

    async fn find_mapping(&self, uuid: &str) -> Result<MappingDefinition, ApiError> {
        let all = self.api.mappings.list().await.map_err(processor_error)?;
        all.into_iter().find(|d| d.uuid == uuid).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                format!("The resource you requested does not exist. (Event source mapping {uuid})"),
            )
        })
    }

    async fn saved(&self, name: &str) -> Option<SavedStats> {
        self.api.stats.load_all().await.ok()?.remove(name)
    }

    async fn create_mapping(&self, body: &[u8]) -> Response {
        let r = async {
            self.check("lambda:CreateEventSourceMapping", "*")?;
            let m = parse_body(body)?;
            let given =
                opt_str(&m, "FunctionName")?.ok_or_else(|| invalid("FunctionName is required"))?;
            let function = self.mapped_function(&given).await?;
            let source = opt_str(&m, "EventSourceArn")?
                .ok_or_else(|| invalid("EventSourceArn is required"))?;
            let stream = self.stream_of(&source)?;
            if self
                .edge
                .kinesis
                .stream
                .describe_stream(&stream)
                .await
                .is_err()
            {
                return Err(invalid(&format!("Stream not found: {source}")));
            }
            self.check_role_reads(&function, &stream).await?;
            let options = self.mapping_options(&m)?;
            if options.starting_position.is_none() {
                return Err(invalid(
                    "StartingPosition is required for a Kinesis stream: LATEST, TRIM_HORIZON or AT_TIMESTAMP",
                ));
            }
            let name = format!("esm-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            let asked = NewMapping {
                name,
                stream: Some(stream),
                function: format!("function:{function}"),
                args: Vec::new(),
                environment: BTreeMap::new(),
                enabled: opt_bool(&m, "Enabled")?.unwrap_or(true),
                options,
            };
            let def = asked
                .definition(&self.api.defaults, std::path::Path::new("/"))
                .map_err(processor_error)?;
            let def = self
                .api
                .mappings
                .create(def)
                .await
                .map_err(processor_error)?;
            let state = match def.state {
                MappingState::Enabled => "Creating",
                MappingState::Disabled => "Disabled",
            };
            Ok::<_, ApiError>(json_response(
                StatusCode::ACCEPTED,
                &self.mapping_view(&def, None, Some(state)),
            ))
        };
        r.await.unwrap_or_else(IntoResponse::into_response)
    }

    async fn list_mappings(&self) -> Response {
        let r = async {
            self.check("lambda:ListEventSourceMappings", "*")?;
            let function = match self.query.get("FunctionName") {
                Some(f) => Some(self.functions().resolve_name(f).map_err(functions_error)?),
                None => None,
            };
            let stream = match self.query.get("EventSourceArn") {
                Some(a) => Some(self.stream_of(a)?),
                None => None,
            };
            let limit = match self.query.get("MaxItems").map(|v| v.parse::<usize>()) {
                None => 100,
                Some(Ok(n)) if (1..=10_000).contains(&n) => n,
                Some(_) => return Err(invalid("MaxItems must be between 1 and 10000")),
            };
            let marker = self.query.get("Marker").cloned().unwrap_or_default();
            let mut all = self.api.mappings.list().await.map_err(processor_error)?;
            all.retain(|d| {
                function.as_ref().is_none_or(
                    |f| matches!(&d.function, FunctionSpec::Function { name } if name == f),
                ) && stream.as_ref().is_none_or(|s| &d.config.stream == s)
            });
            all.sort_by(|a, b| a.uuid.cmp(&b.uuid));
            let start = all
                .iter()
                .position(|d| d.uuid > marker)
                .unwrap_or(all.len());
            let page: Vec<&MappingDefinition> = all[start..].iter().take(limit).collect();
            let more = start + page.len() < all.len();
            let stats = self.api.stats.load_all().await.unwrap_or_default();
            let mut v = json!({
                "EventSourceMappings": page
                    .iter()
                    .map(|d| self.mapping_view(d, stats.get(d.name()), None))
                    .collect::<Vec<_>>(),
            });
            if more && let Some(last) = page.last() {
                v["NextMarker"] = json!(last.uuid);
            }
            Ok::<_, ApiError>(json_response(StatusCode::OK, &v))
        };
        r.await.unwrap_or_else(IntoResponse::into_response)
    }

    async fn get_mapping(&self, uuid: &str) -> Response {
        let r = async {
            self.check("lambda:GetEventSourceMapping", &self.mapping_arn(uuid))?;
            let def = self.find_mapping(uuid).await?;
            let saved = self.saved(def.name()).await;
            Ok::<_, ApiError>(json_response(
                StatusCode::OK,
                &self.mapping_view(&def, saved.as_ref(), None),
            ))
        };
        r.await.unwrap_or_else(IntoResponse::into_response)
    }

    async fn update_mapping(&self, uuid: &str, body: &[u8]) -> Response {
        let r = async {
            self.check("lambda:UpdateEventSourceMapping", &self.mapping_arn(uuid))?;
            let m = parse_body(body)?;
            let mut def = self.find_mapping(uuid).await?;
            if m.contains_key("StartingPosition") || m.contains_key("StartingPositionTimestamp") {
                return Err(invalid(
                    "StartingPosition cannot be changed: delete the mapping and create another",
                ));
            }
            if let Some(given) = opt_str(&m, "FunctionName")? {
                let function = self.mapped_function(&given).await?;
                self.check_role_reads(&function, &def.config.stream).await?;
                def.function = FunctionSpec::Function { name: function };
            }
            let options = self.mapping_options(&m)?;
            options.apply(&mut def).map_err(processor_error)?;
            if let Some(enabled) = opt_bool(&m, "Enabled")? {
                def.state = if enabled {
                    MappingState::Enabled
                } else {
                    MappingState::Disabled
                };
            }
            let state = match def.state {
                MappingState::Enabled => "Updating",
                MappingState::Disabled => "Disabling",
            };
            let def = self
                .api
                .mappings
                .update(def)
                .await
                .map_err(processor_error)?;
            let saved = self.saved(def.name()).await;
            Ok::<_, ApiError>(json_response(
                StatusCode::ACCEPTED,
                &self.mapping_view(&def, saved.as_ref(), Some(state)),
            ))
        };
        r.await.unwrap_or_else(IntoResponse::into_response)
    }

    async fn delete_mapping(&self, uuid: &str) -> Response {
        let r = async {
            self.check("lambda:DeleteEventSourceMapping", &self.mapping_arn(uuid))?;
            let def = self.find_mapping(uuid).await?;
            let saved = self.saved(def.name()).await;
            self.api
                .mappings
                .delete(def.name())
                .await
                .map_err(processor_error)?;
            Ok::<_, ApiError>(json_response(
                StatusCode::ACCEPTED,
                &self.mapping_view(&def, saved.as_ref(), Some("Deleting")),
            ))
        };
        r.await.unwrap_or_else(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_body_budget_bounds_what_is_held_and_refuses_after_waiting() {
        let budget = BodyBudget::new(10 * 1024);
        let a = budget.reserve(6 * 1024).await.expect("room");
        // More than the whole budget is capped at the budget: it waits for everything.
        let b = budget.reserve(6 * 1024).await;
        let e = b.expect_err("no room within the wait");
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code, "TooManyRequestsException");
        let c = budget.reserve(4 * 1024).await.expect("the rest fits");
        drop(a);
        drop(c);
        let _whole = budget
            .reserve(usize::MAX)
            .await
            .expect("capped at the budget");
    }

    #[test]
    fn operations_from_paths() {
        assert_eq!(
            Op::parse(&Method::POST, "/2015-03-31/functions"),
            Some(Op::CreateFunction)
        );
        assert_eq!(
            Op::parse(&Method::GET, "/2015-03-31/functions/"),
            Some(Op::ListFunctions)
        );
        assert_eq!(
            Op::parse(
                &Method::POST,
                "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-2%3A000000000000%3Afunction%3Af/invocations"
            ),
            Some(Op::Invoke(
                "arn:aws:lambda:us-east-2:000000000000:function:f".into()
            ))
        );
        assert_eq!(
            Op::parse(&Method::PUT, "/2015-03-31/event-source-mappings/abc"),
            Some(Op::UpdateMapping("abc".into()))
        );
        assert_eq!(Op::parse(&Method::PATCH, "/2015-03-31/functions/f"), None);
        assert_eq!(Op::parse(&Method::GET, "/2015-03-31/other"), None);
    }

    #[test]
    fn the_signing_service_is_read_from_the_scope() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKID/20261204/us-east-2/lambda/aws4_request, SignedHeaders=host, Signature=x",
            ),
        );
        assert!(signed_for(&h, None, "lambda"));
        assert!(!signed_for(&h, None, "s3"));
        assert!(signed_for(
            &HeaderMap::new(),
            Some("X-Amz-Credential=AKID%2F20261204%2Fus-east-2%2Flambda%2Faws4_request&x=1"),
            "lambda"
        ));
        assert!(!signed_for(&HeaderMap::new(), None, "lambda"));
    }
}
