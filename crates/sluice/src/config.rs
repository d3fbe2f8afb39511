//! Settings, from four sources in order of precedence: command-line flags, `SLUICE_*`
//! environment variables, `sluice.toml`, defaults.
//!
//! Flags and environment variables are read by clap (each flag names its variable); the
//! file fills in whatever neither gave; defaults fill in the rest.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;
use sluice_processor::mappings::{MappingDefaults, MappingOptions, NewMapping};
use sluice_processor::{MappingDefinition, ProcessorError};

/// Bad input on the command line or in `sluice.toml`: the process exits with status 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// A processor error as the user should see it: invalid input is a usage error.
pub(crate) fn from_processor(e: ProcessorError) -> anyhow::Error {
    match e {
        ProcessorError::InvalidConfig(m) => usage(m),
        other => anyhow::Error::new(other),
    }
}

/// Settings every command takes (the client commands find the server's data through them).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct CommonArgs {
    /// Configuration file [default: ./sluice.toml if it exists]
    #[arg(long, env = "SLUICE_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
    /// Folder holding all of sluice's data [default: ./sluice-data]
    #[arg(long, env = "SLUICE_DATA_DIR", global = true)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address of the upload API [default: 127.0.0.1:8080]
    #[arg(long, env = "SLUICE_LISTEN", global = true)]
    pub(crate) listen: Option<SocketAddr>,
    /// Address of the AWS-compatible edge (Cognito, Kinesis, S3, JWKS) [default: 127.0.0.1:4566]
    #[arg(long, env = "SLUICE_EDGE_LISTEN", global = true)]
    pub(crate) edge_listen: Option<SocketAddr>,
    /// AWS region of the user pool and ARNs [default: us-east-2]
    #[arg(long, env = "SLUICE_REGION", global = true)]
    pub(crate) region: Option<String>,
    /// Metadata engine: sqlite://PATH or postgres://USER@HOST:PORT/DB[?pool_size=N]
    /// [default: sqlite://<data-dir>/sluice.db]
    #[arg(long, env = "SLUICE_META", global = true)]
    pub(crate) meta: Option<String>,
    /// Object bytes: file://DIR, or s3://BUCKET[/PREFIX]?endpoint=URL&region=R (credentials
    /// from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) [default: file://<data-dir>/blobs]
    #[arg(long, env = "SLUICE_STORE", global = true)]
    pub(crate) store: Option<String>,
    /// Stream records: embedded:// (the stream log in the data directory),
    /// embedded:///DIR, or NATS JetStream:
    /// nats://[USER:PASS@]HOST:PORT[,HOST:PORT…][?prefix=P&replicas=N&duplicate_window=SECS]
    /// [default: embedded://, i.e. <data-dir>/sluice.db-stream-log]
    #[arg(long, env = "SLUICE_RECORDS", global = true)]
    pub(crate) records: Option<String>,
    /// Also accept bearer tokens of this OpenID Connect issuer at the upload API (repeatable,
    /// or comma-separated in SLUICE_ISSUERS): its keys come from its discovery document and
    /// JWKS. Needs --audience
    #[arg(
        long = "issuer",
        env = "SLUICE_ISSUERS",
        value_delimiter = ',',
        global = true
    )]
    pub(crate) issuers: Vec<String>,
    /// A client id external issuers' tokens may carry (`aud`, or `client_id` without `aud`);
    /// repeatable, or comma-separated in SLUICE_AUDIENCES
    #[arg(
        long = "audience",
        env = "SLUICE_AUDIENCES",
        value_delimiter = ',',
        global = true
    )]
    pub(crate) audiences: Vec<String>,
    /// Log lines on stderr: `text` (for people) or `json` (one object per line, for log
    /// collectors). The level is set by SLUICE_LOG (default `info`; `debug` adds a line per
    /// request). A flag or variable only: logging starts before the configuration file is
    /// read, so that its errors are logged in the chosen format too.
    #[arg(long, env = "SLUICE_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

/// `sluice serve`'s own flags.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ServeArgs {
    /// What this process serves (repeatable, or comma-separated in SLUICE_ROLES):
    /// `gateway` (the upload API, console, operators' API and HTTP APIs on --listen),
    /// `edge` (the AWS-compatible edge on --edge-listen), `processor` (mappings and the
    /// background work: retention, lifecycle rules), or `all` [default: all]. Every
    /// process answers /healthz, /readyz and /metrics on --listen.
    #[arg(long = "role", env = "SLUICE_ROLES", value_delimiter = ',', value_enum)]
    pub(crate) roles: Vec<Role>,
    /// Seconds a processor's shard lease lasts without renewal before another processor
    /// takes the shard over (shared metadata engines only) [default: 10]
    #[arg(long, env = "SLUICE_LEASE_DURATION_SECS")]
    pub(crate) lease_duration_secs: Option<u64>,
}

/// A part of the pipeline one `sluice serve` process runs (`--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    All,
    Gateway,
    Edge,
    Processor,
}

/// The roles a process runs, resolved (`all` is the three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Roles {
    pub(crate) gateway: bool,
    pub(crate) edge: bool,
    pub(crate) processor: bool,
}

impl Roles {
    pub(crate) const ALL: Roles = Roles {
        gateway: true,
        edge: true,
        processor: true,
    };

    pub(crate) fn from_list(list: &[Role]) -> Roles {
        if list.is_empty() || list.contains(&Role::All) {
            return Roles::ALL;
        }
        Roles {
            gateway: list.contains(&Role::Gateway),
            edge: list.contains(&Role::Edge),
            processor: list.contains(&Role::Processor),
        }
    }

    pub(crate) fn describe(&self) -> String {
        if *self == Roles::ALL {
            return "all".into();
        }
        let mut names = Vec::new();
        for (on, name) in [
            (self.gateway, "gateway"),
            (self.edge, "edge"),
            (self.processor, "processor"),
        ] {
            if on {
                names.push(name);
            }
        }
        names.join(", ")
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    #[default]
    Text,
    Json,
}

/// An engine's table in `sluice.toml` (`[meta]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EngineConfig {
    /// The engine's URL.
    pub(crate) url: Option<String>,
}

/// `sluice.toml`. Every key is optional; unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Folder holding all of sluice's data.
    pub(crate) data_dir: Option<PathBuf>,
    /// `[meta] url = "postgres://…"`: the metadata engine.
    pub(crate) meta: Option<EngineConfig>,
    /// `[store] url = "s3://…"`: where object bytes live.
    pub(crate) store: Option<EngineConfig>,
    /// `[records] url = "embedded://…"`: where stream records live.
    pub(crate) records: Option<EngineConfig>,
    /// Address of the upload API.
    pub(crate) listen: Option<SocketAddr>,
    /// Address of the AWS-compatible edge.
    pub(crate) edge_listen: Option<SocketAddr>,
    /// URL clients use to reach the edge; the token issuer is `<edge_url>/<pool id>`.
    /// Defaults to `http://<edge_listen>` (with 127.0.0.1 for an unspecified address).
    pub(crate) edge_url: Option<String>,
    /// URL clients use to reach the upload API (shown by `sluice info`).
    pub(crate) api_url: Option<String>,
    pub(crate) region: Option<String>,
    /// Account id in ARNs (`arn:aws:kinesis:<region>:<account>:stream/<name>`).
    pub(crate) account_id: Option<String>,
    /// Bucket uploads go to.
    pub(crate) bucket: Option<String>,
    /// Bucket processed output goes to (default: the upload bucket).
    pub(crate) processed_bucket: Option<String>,
    /// Stream upload records go to.
    pub(crate) stream: Option<String>,
    /// Shards of the upload stream when it is created.
    pub(crate) shards: Option<u32>,
    /// Enforce Kinesis' per-shard throughput limits on the Kinesis API (1 MiB/s or 1,000
    /// records/s in, 2 MiB/s and 5 GetRecords calls/s out) with
    /// ProvisionedThroughputExceeded; on by default, as on AWS. sluice's own upload path and
    /// processors are never limited.
    pub(crate) stream_throttle: Option<bool>,
    /// Seconds between two applications of the buckets' S3 lifecycle rules (expiration,
    /// aborting incomplete multipart uploads); default 3600.
    pub(crate) lifecycle_interval_secs: Option<u64>,
    /// Largest accepted JSON upload request body, in bytes.
    pub(crate) max_body_bytes: Option<usize>,
    /// Largest accepted raw-body or multipart upload (streamed to disk), in bytes.
    pub(crate) max_upload_bytes: Option<u64>,
    pub(crate) id_token_validity_secs: Option<i64>,
    pub(crate) access_token_validity_secs: Option<i64>,
    pub(crate) refresh_token_validity_secs: Option<i64>,
    /// Largest object one S3 PutObject or UploadPart may carry, in bytes (larger objects
    /// go in multipart uploads). Bodies are streamed, never held whole.
    pub(crate) s3_max_object_bytes: Option<u64>,
    /// Objects written through S3 into `<bucket>/uploads/` become uploads (a stream record,
    /// processed) like `POST /uploads`.
    pub(crate) s3_uploads_enqueue: Option<bool>,
    /// Base domain for virtual-host-style S3 addressing (`<bucket>.<domain>`).
    pub(crate) s3_base_domain: Option<String>,
    /// Records per batch of the built-in mapping (the seed uses 10).
    pub(crate) batch_size: Option<usize>,
    /// Attempts per record before the built-in mapping reports it failed.
    pub(crate) max_attempts: Option<u32>,
    /// Run the built-in upload-stream → `uppercase` mapping. Off: a user mapping on the
    /// upload stream replaces it (the oldest enabled one tracks upload status).
    pub(crate) builtin_mapping: Option<bool>,
    /// Where the SDKs functions import without bundling are installed (the AWS SDK for
    /// JavaScript v3, boto3): default `$XDG_CACHE_HOME/sluice/runtimes` or
    /// `~/.cache/sluice/runtimes` (see `sluice runtimes install`).
    pub(crate) runtime_cache: Option<PathBuf>,
    /// Concurrent invocations of one function without reserved concurrency (default 10).
    pub(crate) function_concurrency: Option<u32>,
    /// Export metrics (`/metrics`, the console's charts). Off: no recorder is installed, so
    /// counting costs nothing (measured in docs/BENCHMARKS.md, "Metrics overhead").
    pub(crate) metrics: Option<bool>,
    /// Also email outbox messages (confirmation, reset and verification codes, invitations)
    /// through this SMTP server: `smtp://[user:password@]host[:port]` (plain SMTP).
    pub(crate) smtp_url: Option<String>,
    /// The `From` address of those emails (required with `smtp_url`).
    pub(crate) smtp_from: Option<String>,
    /// Seconds a client has to send a complete request head (from connecting, for the first
    /// request; from the first byte, for later ones on a keep-alive connection).
    pub(crate) header_read_timeout_secs: Option<u64>,
    /// Seconds a keep-alive connection may stay open with no request in flight.
    pub(crate) idle_timeout_secs: Option<u64>,
    /// Minimum request-body rate, in bytes per second of waiting for the client; 0: none.
    pub(crate) min_body_bytes_per_sec: Option<u64>,
    /// Seconds over which the body rate is measured.
    pub(crate) body_rate_window_secs: Option<u64>,
    /// Open connections per listener; beyond, new connections wait in the accept backlog.
    pub(crate) max_connections: Option<usize>,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT before their
    /// connections are closed.
    pub(crate) shutdown_timeout_secs: Option<u64>,
    /// External OpenID Connect issuers whose tokens the upload API accepts (`--issuer`).
    pub(crate) issuers: Option<Vec<String>>,
    /// Client ids their tokens may carry (`--audience`).
    pub(crate) audiences: Option<Vec<String>>,
    /// Accept tokens of sluice's own user pool at the upload API (default true; false with
    /// external issuers leaves sign-in to them).
    pub(crate) pool_tokens: Option<bool>,
    /// `roles = ["gateway", "edge"]`: what `sluice serve` runs (`--role`).
    pub(crate) roles: Option<Vec<Role>>,
    /// Seconds a shard lease lasts without renewal (`--lease-duration-secs`).
    pub(crate) lease_duration_secs: Option<u64>,
    /// `[[mapping]]`: mappings `serve` creates at start (or updates when changed here).
    #[serde(default)]
    pub(crate) mapping: Vec<MappingEntry>,
    /// `[limits]`: request rates of the public operations.
    pub(crate) limits: Option<LimitsConfig>,
}

/// `[limits]` of `sluice.toml`: requests per second (a burst of two seconds' worth is
/// allowed; 0 turns a limit off). Each also has a `SLUICE_…` variable of its name in capitals.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsConfig {
    /// SignUp, ResendConfirmationCode, ForgotPassword, ConfirmForgotPassword per user pool
    /// [default: 50, Cognito's UserCreation quota].
    pub(crate) sign_ups_per_second_per_pool: Option<f64>,
    /// InitiateAuth and AdminInitiateAuth per user pool [default: 120, Cognito's
    /// UserAuthentication quota].
    pub(crate) sign_ins_per_second_per_pool: Option<f64>,
    /// The sign-up operations per client address (unsigned requests) [default: 10].
    pub(crate) sign_ups_per_second_per_address: Option<f64>,
    /// The sign-in operations (InitiateAuth, RespondToAuthChallenge) per client address
    /// (unsigned requests) [default: 40].
    pub(crate) sign_ins_per_second_per_address: Option<f64>,
    /// Failed sign-ins from one client address within 5 minutes before its sign-ins are
    /// refused for the rest of the window [default: 200; the per-user lockout after 5
    /// failures is separate, so users behind one NAT are not locked out together].
    pub(crate) failed_sign_ins_per_address: Option<u32>,
    /// Uploads per minute per user through the upload API [default: 0, no limit].
    pub(crate) uploads_per_minute_per_user: Option<u32>,
    /// Bytes a user may upload through the upload API per 24 hours [default: 0, no limit].
    pub(crate) upload_bytes_per_day_per_user: Option<u64>,
    /// Bytes a user may store (the objects the user's uploads wrote); an upload that would
    /// pass it is refused with 507 [default: 0, no limit].
    pub(crate) stored_bytes_per_user: Option<u64>,
}

/// One `[[mapping]]` of `sluice.toml`. Relative paths in `function` are resolved against
/// the directory of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MappingEntry {
    pub(crate) name: String,
    pub(crate) stream: Option<String>,
    pub(crate) function: String,
    /// Arguments of an `exec:` program.
    #[serde(default)]
    pub(crate) args: Vec<String>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    /// `false` creates the mapping disabled (the state of an existing mapping is left as
    /// `sluice mapping enable|disable` set it).
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    pub(crate) batch_size: Option<usize>,
    pub(crate) maximum_batching_window_secs: Option<u32>,
    pub(crate) starting_position: Option<String>,
    pub(crate) starting_position_timestamp: Option<toml::Value>,
    pub(crate) parallelization_factor: Option<u32>,
    pub(crate) maximum_retry_attempts: Option<i64>,
    pub(crate) maximum_record_age_secs: Option<i64>,
    pub(crate) bisect_batch_on_function_error: Option<bool>,
    pub(crate) function_response_types: Option<Vec<String>>,
    pub(crate) on_failure: Option<String>,
    pub(crate) output_bucket: Option<String>,
    pub(crate) output_prefix: Option<String>,
    pub(crate) timeout_secs: Option<u64>,
    pub(crate) memory_mb: Option<u32>,
    /// Policy document (JSON file, relative to this file's directory) of the key a lambda
    /// function runs with.
    pub(crate) policy_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

impl MappingEntry {
    /// The definition this entry describes (paths resolved against the configuration
    /// file's directory).
    pub(crate) fn definition(&self, settings: &Settings) -> Result<MappingDefinition> {
        let timestamp = match &self.starting_position_timestamp {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(toml::Value::Integer(i)) => Some(i.to_string()),
            Some(toml::Value::Float(f)) => Some(f.to_string()),
            Some(toml::Value::Datetime(d)) => Some(d.to_string()),
            Some(other) => {
                return Err(usage(format!(
                    "starting_position_timestamp must be seconds since the epoch or an RFC 3339 time, got {other}"
                )));
            }
        };
        let asked = NewMapping {
            name: self.name.clone(),
            stream: self.stream.clone(),
            function: self.function.clone(),
            args: self.args.clone(),
            environment: self.env.clone(),
            enabled: self.enabled,
            options: MappingOptions {
                batch_size: self.batch_size,
                maximum_batching_window_secs: self.maximum_batching_window_secs,
                starting_position: self.starting_position.clone(),
                starting_position_timestamp: timestamp,
                parallelization_factor: self.parallelization_factor,
                maximum_retry_attempts: self.maximum_retry_attempts,
                maximum_record_age_secs: self.maximum_record_age_secs,
                bisect_batch_on_function_error: self.bisect_batch_on_function_error,
                function_response_types: self.function_response_types.clone(),
                on_failure: self.on_failure.clone(),
                output_bucket: self.output_bucket.clone(),
                output_prefix: self.output_prefix.clone(),
                timeout_secs: self.timeout_secs,
                memory_mb: self.memory_mb,
                policy: match &self.policy_file {
                    None => Some(String::new()),
                    Some(f) => {
                        let path = settings.config_dir.join(f);
                        Some(std::fs::read_to_string(&path).map_err(|e| {
                            usage(format!(
                                "cannot read the policy file {}: {e}",
                                path.display()
                            ))
                        })?)
                    }
                },
            },
        };
        asked
            .definition(&settings.mapping_defaults(), &settings.config_dir)
            .map_err(from_processor)
    }
}

/// The rate limits of `[limits]` and their variables over the defaults.
fn rate_limits(file: &LimitsConfig) -> Result<sluice_identity::rates::RateLimits> {
    use sluice_identity::rates::Rate;
    let defaults = sluice_identity::rates::RateLimits::default();
    let one = |var: &str, name: &str, file: Option<f64>, default: Rate| -> Result<Rate> {
        match env_parse::<f64>(var)?.or(file) {
            None => Ok(default),
            Some(v) if !v.is_finite() || v < 0.0 => Err(usage(format!(
                "{name} must be a number of requests per second, 0 or more (0: no limit), got {v}"
            ))),
            Some(0.0) => Ok(Rate::unlimited()),
            Some(v) => Ok(Rate::per_second(v)),
        }
    };
    Ok(sluice_identity::rates::RateLimits {
        sign_up_per_pool: one(
            "SLUICE_SIGN_UPS_PER_SECOND_PER_POOL",
            "sign_ups_per_second_per_pool",
            file.sign_ups_per_second_per_pool,
            defaults.sign_up_per_pool,
        )?,
        sign_in_per_pool: one(
            "SLUICE_SIGN_INS_PER_SECOND_PER_POOL",
            "sign_ins_per_second_per_pool",
            file.sign_ins_per_second_per_pool,
            defaults.sign_in_per_pool,
        )?,
        sign_up_per_address: one(
            "SLUICE_SIGN_UPS_PER_SECOND_PER_ADDRESS",
            "sign_ups_per_second_per_address",
            file.sign_ups_per_second_per_address,
            defaults.sign_up_per_address,
        )?,
        sign_in_per_address: one(
            "SLUICE_SIGN_INS_PER_SECOND_PER_ADDRESS",
            "sign_ins_per_second_per_address",
            file.sign_ins_per_second_per_address,
            defaults.sign_in_per_address,
        )?,
    })
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) data_dir: PathBuf,
    /// URL of the metadata engine (`sqlite://…` or `postgres://…`).
    pub(crate) meta: String,
    /// URL of the blob engine (`file://…` or `s3://…`).
    pub(crate) store: String,
    /// URL of the record engine (`embedded://…` or `nats://…`).
    pub(crate) records: String,
    pub(crate) listen: SocketAddr,
    pub(crate) edge_listen: SocketAddr,
    pub(crate) edge_url: Option<String>,
    pub(crate) api_url: Option<String>,
    pub(crate) region: String,
    pub(crate) account_id: String,
    pub(crate) bucket: String,
    pub(crate) processed_bucket: Option<String>,
    pub(crate) stream: String,
    pub(crate) shards: u32,
    pub(crate) stream_throttle: bool,
    pub(crate) lifecycle_interval_secs: u64,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_upload_bytes: u64,
    pub(crate) s3_max_object_bytes: u64,
    pub(crate) s3_uploads_enqueue: bool,
    pub(crate) s3_base_domain: Option<String>,
    pub(crate) lifetimes: sluice_identity::Lifetimes,
    pub(crate) batch_size: usize,
    pub(crate) max_attempts: u32,
    pub(crate) builtin_mapping: bool,
    pub(crate) runtime_cache: PathBuf,
    pub(crate) function_concurrency: u32,
    pub(crate) metrics: bool,
    pub(crate) smtp_url: Option<String>,
    pub(crate) smtp_from: Option<String>,
    /// Request rates of sign-up and sign-in (`[limits]`).
    pub(crate) rate_limits: sluice_identity::rates::RateLimits,
    /// Failed sign-ins per client address per window (`[limits]`).
    pub(crate) failed_sign_ins_per_address: u32,
    /// Per-user upload limits (`[limits]`).
    pub(crate) user_limits: sluice_gateway::quota::UserLimits,
    /// Bounds on what a client can hold on either listener (`http_server`).
    pub(crate) conn_limits: crate::http_server::ConnLimits,
    /// External OpenID Connect issuers the upload API accepts tokens of.
    pub(crate) external_issuers: Vec<sluice_gateway::oidc::IssuerConfig>,
    /// Whether the upload API accepts tokens of sluice's own user pool.
    pub(crate) pool_tokens: bool,
    /// What `sluice serve` runs (`--role`; every part by default).
    pub(crate) roles: Roles,
    /// How long a shard lease lasts without renewal (shared metadata engines).
    pub(crate) lease_duration: std::time::Duration,
    /// The `[[mapping]]` entries of the configuration file.
    pub(crate) mappings: Vec<MappingEntry>,
    /// Directory of the configuration file (the current directory without one): relative
    /// paths of `[[mapping]]` functions are resolved against it.
    pub(crate) config_dir: PathBuf,
}

impl Settings {
    pub(crate) fn resolve(args: &CommonArgs) -> Result<Settings> {
        let (file, config_dir) = load_file(args.config.as_deref())?;
        let defaults = sluice_identity::Lifetimes::default();
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("sluice-data"));
        let runtime_cache = env_or(
            "SLUICE_RUNTIME_CACHE",
            file.runtime_cache
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
        )
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            sluice_functions::runtimes::default_cache_dir(&data_dir.join("runtime-cache"))
        });
        let limits = file.limits.unwrap_or_default();
        let s = Settings {
            meta: args
                .meta
                .clone()
                .filter(|m| !m.is_empty())
                .or(file.meta.and_then(|m| m.url))
                .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("sluice.db").display())),
            store: args
                .store
                .clone()
                .filter(|m| !m.is_empty())
                .or(file.store.and_then(|m| m.url))
                .unwrap_or_else(|| format!("file://{}", data_dir.join("blobs").display())),
            records: args
                .records
                .clone()
                .filter(|m| !m.is_empty())
                .or(file.records.and_then(|m| m.url))
                .unwrap_or_else(|| "embedded://".into()),
            data_dir,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            edge_listen: args
                .edge_listen
                .or(file.edge_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4566))),
            edge_url: env_or("SLUICE_EDGE_URL", file.edge_url),
            api_url: env_or("SLUICE_API_URL", file.api_url),
            region: args
                .region
                .clone()
                .or(file.region)
                .unwrap_or_else(|| "us-east-2".into()),
            account_id: env_or("SLUICE_ACCOUNT_ID", file.account_id)
                .unwrap_or_else(|| "000000000000".into()),
            bucket: env_or("SLUICE_BUCKET", file.bucket).unwrap_or_else(|| "sluice".into()),
            processed_bucket: env_or("SLUICE_PROCESSED_BUCKET", file.processed_bucket),
            stream: env_or("SLUICE_STREAM", file.stream).unwrap_or_else(|| "uploads-stream".into()),
            shards: env_parse("SLUICE_SHARDS")?.or(file.shards).unwrap_or(4),
            lifecycle_interval_secs: env_parse("SLUICE_LIFECYCLE_INTERVAL_SECS")?
                .or(file.lifecycle_interval_secs)
                .unwrap_or(3600),
            stream_throttle: env_parse("SLUICE_STREAM_THROTTLE")?
                .or(file.stream_throttle)
                .unwrap_or(true),
            max_body_bytes: env_parse("SLUICE_MAX_BODY_BYTES")?
                .or(file.max_body_bytes)
                .unwrap_or(sluice_gateway::DEFAULT_MAX_BODY_BYTES),
            max_upload_bytes: env_parse("SLUICE_MAX_UPLOAD_BYTES")?
                .or(file.max_upload_bytes)
                .unwrap_or(sluice_gateway::DEFAULT_MAX_UPLOAD_BYTES),
            s3_max_object_bytes: env_parse("SLUICE_S3_MAX_OBJECT_BYTES")?
                .or(file.s3_max_object_bytes)
                .unwrap_or(5 * 1024 * 1024 * 1024),
            s3_uploads_enqueue: env_parse("SLUICE_S3_UPLOADS_ENQUEUE")?
                .or(file.s3_uploads_enqueue)
                .unwrap_or(true),
            s3_base_domain: env_or("SLUICE_S3_BASE_DOMAIN", file.s3_base_domain),
            lifetimes: sluice_identity::Lifetimes {
                id_secs: env_parse("SLUICE_ID_TOKEN_VALIDITY_SECS")?
                    .or(file.id_token_validity_secs)
                    .unwrap_or(defaults.id_secs),
                access_secs: env_parse("SLUICE_ACCESS_TOKEN_VALIDITY_SECS")?
                    .or(file.access_token_validity_secs)
                    .unwrap_or(defaults.access_secs),
                refresh_secs: env_parse("SLUICE_REFRESH_TOKEN_VALIDITY_SECS")?
                    .or(file.refresh_token_validity_secs)
                    .unwrap_or(defaults.refresh_secs),
            },
            batch_size: env_parse("SLUICE_BATCH_SIZE")?
                .or(file.batch_size)
                .unwrap_or(10),
            max_attempts: env_parse("SLUICE_MAX_ATTEMPTS")?
                .or(file.max_attempts)
                .unwrap_or(3),
            builtin_mapping: env_parse("SLUICE_BUILTIN_MAPPING")?
                .or(file.builtin_mapping)
                .unwrap_or(true),
            runtime_cache,
            function_concurrency: env_parse("SLUICE_FUNCTION_CONCURRENCY")?
                .or(file.function_concurrency)
                .unwrap_or(sluice_functions::invoke::DEFAULT_CONCURRENCY),
            metrics: env_parse("SLUICE_METRICS")?
                .or(file.metrics)
                .unwrap_or(true),
            smtp_url: env_or("SLUICE_SMTP_URL", file.smtp_url),
            smtp_from: env_or("SLUICE_SMTP_FROM", file.smtp_from),
            rate_limits: rate_limits(&limits)?,
            failed_sign_ins_per_address: env_parse("SLUICE_FAILED_SIGN_INS_PER_ADDRESS")?
                .or(limits.failed_sign_ins_per_address)
                .unwrap_or(sluice_compat::source_throttle::FREE_FAILURES),
            user_limits: sluice_gateway::quota::UserLimits {
                uploads_per_minute: env_parse("SLUICE_UPLOADS_PER_MINUTE_PER_USER")?
                    .or(limits.uploads_per_minute_per_user)
                    .unwrap_or(0),
                bytes_per_day: env_parse("SLUICE_UPLOAD_BYTES_PER_DAY_PER_USER")?
                    .or(limits.upload_bytes_per_day_per_user)
                    .unwrap_or(0),
                stored_bytes: env_parse("SLUICE_STORED_BYTES_PER_USER")?
                    .or(limits.stored_bytes_per_user)
                    .unwrap_or(0),
            },
            conn_limits: conn_limits(
                env_parse("SLUICE_HEADER_READ_TIMEOUT_SECS")?.or(file.header_read_timeout_secs),
                env_parse("SLUICE_IDLE_TIMEOUT_SECS")?.or(file.idle_timeout_secs),
                env_parse("SLUICE_MIN_BODY_BYTES_PER_SEC")?.or(file.min_body_bytes_per_sec),
                env_parse("SLUICE_BODY_RATE_WINDOW_SECS")?.or(file.body_rate_window_secs),
                env_parse("SLUICE_MAX_CONNECTIONS")?.or(file.max_connections),
                env_parse("SLUICE_SHUTDOWN_TIMEOUT_SECS")?.or(file.shutdown_timeout_secs),
            )?,
            external_issuers: {
                let issuers = if args.issuers.is_empty() {
                    file.issuers.unwrap_or_default()
                } else {
                    args.issuers.clone()
                };
                let audiences = if args.audiences.is_empty() {
                    file.audiences.unwrap_or_default()
                } else {
                    args.audiences.clone()
                };
                sluice_gateway::oidc::configs(&issuers, &audiences).map_err(usage)?
            },
            pool_tokens: env_parse("SLUICE_POOL_TOKENS")?
                .or(file.pool_tokens)
                .unwrap_or(true),
            roles: Roles::from_list(&file.roles.unwrap_or_default()),
            lease_duration: file
                .lease_duration_secs
                .map(std::time::Duration::from_secs)
                .unwrap_or(sluice_processor::leases::DEFAULT_DURATION),
            mappings: file.mapping,
            config_dir,
        };
        s.validate()?;
        Ok(s)
    }

    /// Applies `sluice serve`'s own flags (they win over the file).
    pub(crate) fn apply_serve(&mut self, args: &ServeArgs) -> Result<()> {
        if !args.roles.is_empty() {
            self.roles = Roles::from_list(&args.roles);
        }
        if let Some(secs) = args.lease_duration_secs {
            self.lease_duration = std::time::Duration::from_secs(secs);
        }
        let secs = self.lease_duration.as_secs();
        if !(3..=3_600).contains(&secs) {
            bail!("lease_duration_secs must be between 3 and 3600, got {secs}");
        }
        Ok(())
    }

    /// Whether several processes may share this deployment's engines: the metadata
    /// engine is not the embedded SQLite file (which one process holds). Processors then
    /// share shards through leases.
    pub(crate) fn shared_engines(&self) -> bool {
        !self.meta.starts_with("sqlite://")
    }

    fn validate(&self) -> Result<()> {
        if !self.pool_tokens && self.external_issuers.is_empty() {
            bail!(
                "pool_tokens = false needs at least one external issuer (--issuer), or no token could sign in"
            );
        }
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            bail!("account_id must be 12 digits, got {:?}", self.account_id);
        }
        if !(1..=86_400).contains(&self.lifecycle_interval_secs) {
            bail!(
                "lifecycle_interval_secs must be between 1 and 86400, got {}",
                self.lifecycle_interval_secs
            );
        }
        if !(1..=500).contains(&self.shards) {
            bail!("shards must be between 1 and 500, got {}", self.shards);
        }
        if self.max_body_bytes == 0 {
            bail!("max_body_bytes must be positive");
        }
        if self.max_upload_bytes == 0 {
            bail!("max_upload_bytes must be positive");
        }
        if self.smtp_url.is_some() && self.smtp_from.is_none() {
            bail!("smtp_url needs smtp_from (the From address of the emails)");
        }
        let mut names = std::collections::HashSet::new();
        for m in &self.mappings {
            if !names.insert(m.name.as_str()) {
                bail!("mapping {} appears twice in the configuration", m.name);
            }
        }
        for (name, v) in [
            ("id_token_validity_secs", self.lifetimes.id_secs),
            ("access_token_validity_secs", self.lifetimes.access_secs),
            ("refresh_token_validity_secs", self.lifetimes.refresh_secs),
        ] {
            if v <= 0 {
                bail!("{name} must be positive, got {v}");
            }
        }
        Ok(())
    }

    /// What a new mapping takes from the configuration when it does not say.
    pub(crate) fn mapping_defaults(&self) -> MappingDefaults {
        MappingDefaults {
            stream: self.stream.clone(),
            output_bucket: self.processed_bucket.clone(),
        }
    }

    /// The SQLite file of the metadata, when the metadata engine is SQLite.
    pub(crate) fn sqlite_path(&self) -> Option<PathBuf> {
        let url = self.meta.as_str();
        match url.split_once("://") {
            Some(("sqlite", path)) => Some(PathBuf::from(path)),
            Some(_) => None,
            None => Some(PathBuf::from(url)),
        }
    }

    /// Where the embedded record engine keeps the stream log unless its URL names a
    /// directory (`embedded://`).
    pub(crate) fn stream_log_dir(&self) -> PathBuf {
        self.data_dir.join("sluice.db-stream-log")
    }

    pub(crate) fn key_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    /// The key that seals access-key secrets in the metadata engine (32 bytes, mode 0600);
    /// in the data directory whatever the metadata engine.
    pub(crate) fn access_key_file(&self) -> PathBuf {
        self.key_dir().join("access-keys.key")
    }

    /// The development key's credentials, written at first start (mode 0600, the AWS shared
    /// credentials file format).
    pub(crate) fn credentials_file(&self) -> PathBuf {
        self.data_dir.join("credentials")
    }

    pub(crate) fn run_file(&self) -> PathBuf {
        self.data_dir.join("run.json")
    }

    /// The edge URL for a listener bound to `addr`.
    pub(crate) fn edge_url_for(&self, addr: SocketAddr) -> String {
        self.edge_url
            .clone()
            .unwrap_or_else(|| url_for(addr))
            .trim_end_matches('/')
            .to_owned()
    }

    pub(crate) fn api_url_for(&self, addr: SocketAddr) -> String {
        self.api_url
            .clone()
            .unwrap_or_else(|| url_for(addr))
            .trim_end_matches('/')
            .to_owned()
    }
}

/// The connection bounds from their settings (each `None` takes its default). Timeouts and
/// the cap must be positive: a zero would close every connection or accept none. A zero
/// body rate turns the rate off; a zero shutdown bound closes open connections at once.
fn conn_limits(
    header_read_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    min_body_bytes_per_sec: Option<u64>,
    body_rate_window_secs: Option<u64>,
    max_connections: Option<usize>,
    shutdown_timeout_secs: Option<u64>,
) -> Result<crate::http_server::ConnLimits> {
    use crate::http_server::{self as h, BodyRate, ConnLimits};
    use std::time::Duration;
    let positive_secs = |name: &str, v: Option<u64>, default: Duration| match v {
        Some(0) => Err(usage(format!("{name} must be positive"))),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(default),
    };
    let window = positive_secs(
        "body_rate_window_secs",
        body_rate_window_secs,
        h::DEFAULT_BODY_RATE_WINDOW,
    )?;
    let max_connections = max_connections.unwrap_or(h::DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(usage("max_connections must be positive"));
    }
    Ok(ConnLimits {
        header_read_timeout: positive_secs(
            "header_read_timeout_secs",
            header_read_timeout_secs,
            h::DEFAULT_HEADER_READ_TIMEOUT,
        )?,
        idle_timeout: positive_secs(
            "idle_timeout_secs",
            idle_timeout_secs,
            h::DEFAULT_IDLE_TIMEOUT,
        )?,
        min_body_rate: match min_body_bytes_per_sec.unwrap_or(h::DEFAULT_MIN_BODY_RATE) {
            0 => None,
            bytes_per_sec => Some(BodyRate {
                bytes_per_sec,
                window,
            }),
        },
        max_connections,
        shutdown_timeout: shutdown_timeout_secs
            .map_or(h::DEFAULT_SHUTDOWN_TIMEOUT, Duration::from_secs),
    })
}

fn url_for(addr: SocketAddr) -> String {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{a}")
}

fn env_or(var: &str, file: Option<String>) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty()).or(file)
}

fn env_parse<T: std::str::FromStr>(var: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{var}={v:?} is not valid: {e}")),
        _ => Ok(None),
    }
}

/// The configuration file's content and the directory it is in (absolute).
fn load_file(explicit: Option<&Path>) -> Result<(FileConfig, PathBuf)> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => {
            let p = PathBuf::from("sluice.toml");
            if !p.exists() {
                return Ok((FileConfig::default(), cwd));
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read configuration file {}", path.display()))?;
    let file = toml::from_str(&text)
        .with_context(|| format!("invalid configuration file {}", path.display()))?;
    let dir = cwd.join(path.parent().unwrap_or(Path::new("")));
    Ok((file, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = std::env::temp_dir().join(format!("sluice-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("sluice.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from-file\"\nlisten = \"127.0.0.1:9000\"\nshards = 2\n",
        )
        .expect("write");
        let args = CommonArgs {
            config: Some(file.clone()),
            listen: Some("127.0.0.1:9100".parse().expect("addr")),
            ..Default::default()
        };
        let s = Settings::resolve(&args).expect("resolve");
        assert_eq!(s.listen.port(), 9100, "flag wins over file");
        assert_eq!(
            s.data_dir,
            PathBuf::from("/from-file"),
            "file wins over default"
        );
        assert_eq!(s.shards, 2);
        assert_eq!(s.edge_listen.port(), 4566, "default");
        assert_eq!(s.region, "us-east-2");
        assert!(s.builtin_mapping, "on by default");

        std::fs::write(&file, "builtin_mapping = false\n").expect("write");
        assert!(!Settings::resolve(&args).expect("resolve").builtin_mapping);

        assert_eq!(
            s.records, "embedded://",
            "the stream log in the data directory"
        );
        std::fs::write(&file, "[records]\nurl = \"embedded:///srv/log\"\n").expect("write");
        assert_eq!(
            Settings::resolve(&args).expect("resolve").records,
            "embedded:///srv/log"
        );
        let flagged = CommonArgs {
            records: Some("embedded:///flag".into()),
            ..args.clone()
        };
        assert_eq!(
            Settings::resolve(&flagged).expect("resolve").records,
            "embedded:///flag",
            "flag wins over file"
        );

        std::fs::write(&file, "bogus_key = 1\n").expect("write");
        assert!(
            Settings::resolve(&args).is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn connection_limits_default_and_refuse_zeros() {
        use crate::http_server::ConnLimits;
        let d = conn_limits(None, None, None, None, None, None).expect("defaults");
        assert_eq!(d, ConnLimits::default());
        let set = conn_limits(Some(2), Some(3), Some(0), Some(4), Some(5), Some(0)).expect("set");
        assert_eq!(set.header_read_timeout, std::time::Duration::from_secs(2));
        assert_eq!(set.idle_timeout, std::time::Duration::from_secs(3));
        assert_eq!(set.min_body_rate, None, "0 turns the body rate off");
        assert_eq!(set.max_connections, 5);
        assert!(set.shutdown_timeout.is_zero());
        assert!(conn_limits(Some(0), None, None, None, None, None).is_err());
        assert!(conn_limits(None, Some(0), None, None, None, None).is_err());
        assert!(conn_limits(None, None, None, Some(0), None, None).is_err());
        assert!(conn_limits(None, None, None, None, Some(0), None).is_err());
    }

    #[test]
    fn unspecified_addresses_become_loopback_urls() {
        assert_eq!(
            url_for("0.0.0.0:4566".parse().expect("addr")),
            "http://127.0.0.1:4566"
        );
    }
}
