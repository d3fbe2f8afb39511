//! Mapping definitions as users manage them (`sluice mapping create|get|list|update|enable|
//! disable|delete`): a [`MappingConfig`], the function it runs, the function's settings and
//! whether it is enabled — what Lambda's `CreateEventSourceMapping` plus the function's
//! configuration hold. [`MappingStore`] is the boundary; [`crate::embedded::EmbeddedMappings`]
//! keeps them in the shared database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{MappingConfig, ProcessorError};

/// The language of a Lambda handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LambdaRuntime {
    /// `index.mjs` (or `.js`, `.cjs`) exporting `handler`; run with `node`.
    Nodejs,
    /// `handler.py` with `handler(event, context)`; run with `python3`.
    Python,
}

/// What a mapping runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FunctionSpec {
    /// `builtin:<name>`: see [`crate::functions::BUILTINS`].
    Builtin { name: String },
    /// `exec:<program> [args…]`: a program run per record, never through a shell.
    Exec { argv: Vec<String> },
    /// `lambda:nodejs:<dir>/<module>.<export>` or `lambda:python:<dir>/<module>.<function>`.
    Lambda {
        runtime: LambdaRuntime,
        /// The code directory (`LAMBDA_TASK_ROOT`).
        code_dir: PathBuf,
        /// `<module>.<function>`, as Lambda's `Handler` setting.
        handler: String,
    },
    /// `function:<name>`: a function created with Lambda's API (`aws lambda
    /// create-function`), run with its own code, configuration and key as they are at each
    /// invocation (see [`crate::functions::FunctionResolver`]).
    Function { name: String },
}

/// Whether `name` is a Lambda function name (1 to 64 letters, digits, `-` and `_`).
pub fn valid_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl FunctionSpec {
    /// Parses the command line's function argument; `args` are the arguments after `--`
    /// (for `exec:` only).
    pub fn parse(s: &str, args: &[String]) -> Result<Self, ProcessorError> {
        let bad = |m: String| ProcessorError::InvalidConfig(m);
        let spec = if let Some(name) = s.strip_prefix("builtin:") {
            FunctionSpec::Builtin {
                name: name.to_owned(),
            }
        } else if let Some(program) = s.strip_prefix("exec:") {
            let mut argv = vec![program.to_owned()];
            argv.extend(args.iter().cloned());
            FunctionSpec::Exec { argv }
        } else if let Some(rest) = s.strip_prefix("lambda:") {
            let (runtime, path) = rest.split_once(':').ok_or_else(|| {
                bad(format!(
                    "lambda function {s:?} must be lambda:<nodejs|python>:<dir>/<module>.<handler>"
                ))
            })?;
            let runtime = match runtime {
                "nodejs" | "node" | "nodejs20.x" => LambdaRuntime::Nodejs,
                "python" | "python3" => LambdaRuntime::Python,
                other => {
                    return Err(bad(format!(
                        "unknown lambda runtime {other:?} (nodejs or python)"
                    )));
                }
            };
            let p = Path::new(path);
            let handler = p
                .file_name()
                .and_then(|f| f.to_str())
                .ok_or_else(|| bad(format!("lambda function {s:?} has no handler")))?
                .to_owned();
            let code_dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            };
            FunctionSpec::Lambda {
                runtime,
                code_dir,
                handler,
            }
        } else if let Some(name) = s.strip_prefix("function:") {
            FunctionSpec::Function {
                name: name.to_owned(),
            }
        } else if crate::functions::BUILTINS.contains(&s) {
            FunctionSpec::Builtin { name: s.to_owned() }
        } else {
            return Err(bad(format!(
                "function {s:?} must be builtin:<name>, exec:<program>, lambda:<runtime>:<dir>/<module>.<handler> or function:<name>"
            )));
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), ProcessorError> {
        let bad = |m: String| Err(ProcessorError::InvalidConfig(m));
        match self {
            FunctionSpec::Builtin { name } => {
                if !crate::functions::BUILTINS.contains(&name.as_str()) {
                    return bad(format!(
                        "unknown built-in function {name:?} (one of {})",
                        crate::functions::BUILTINS.join(", ")
                    ));
                }
            }
            FunctionSpec::Exec { argv } => {
                if argv.first().is_none_or(|p| p.is_empty()) {
                    return bad("exec function needs a program".into());
                }
            }
            FunctionSpec::Lambda { handler, .. } => {
                let ok = handler
                    .rsplit_once('.')
                    .is_some_and(|(m, f)| !m.is_empty() && !f.is_empty());
                if !ok {
                    return bad(format!(
                        "lambda handler {handler:?} must be <module>.<function>, e.g. index.handler"
                    ));
                }
            }
            FunctionSpec::Function { name } => {
                if !valid_function_name(name) {
                    return bad(format!(
                        "function name {name:?} must be 1 to 64 letters, digits, '-' or '_'"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Makes a relative code directory or program path absolute against `base` (the
    /// directory the user ran the command in).
    pub fn resolve_paths(&mut self, base: &Path) {
        match self {
            FunctionSpec::Lambda { code_dir, .. } if code_dir.is_relative() => {
                *code_dir = base.join(&*code_dir);
            }
            FunctionSpec::Exec { argv } => {
                if let Some(p) = argv.first_mut()
                    && (p.starts_with("./") || p.starts_with("../"))
                {
                    *p = base.join(&*p).to_string_lossy().into_owned();
                }
            }
            _ => {}
        }
    }
}

impl std::fmt::Display for FunctionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FunctionSpec::Builtin { name } => write!(f, "builtin:{name}"),
            FunctionSpec::Exec { argv } => write!(f, "exec:{}", argv.join(" ")),
            FunctionSpec::Lambda {
                runtime,
                code_dir,
                handler,
            } => {
                let rt = match runtime {
                    LambdaRuntime::Nodejs => "nodejs",
                    LambdaRuntime::Python => "python",
                };
                write!(f, "lambda:{rt}:{}/{handler}", code_dir.display())
            }
            FunctionSpec::Function { name } => write!(f, "function:{name}"),
        }
    }
}

/// Settings of the function itself (Lambda's function configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSettings {
    /// Environment variables given to `exec` and `lambda` functions.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Longest an invocation may run (Lambda's `Timeout`, 1–900 s).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Memory in MiB (Lambda's `MemorySize`, 128–10,240), given to handlers as
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` and enforced for Lambda runtimes: the V8 heap limit
    /// for Node.js, an address-space limit (plus interpreter headroom) for Python. `exec`
    /// programs are not limited.
    #[serde(default = "default_memory")]
    pub memory_mb: u32,
    /// The policy of the key a `lambda` function runs with (Lambda's execution role, as a
    /// policy document). `None`: what the mapping needs — read its stream, read `uploads/`
    /// of the upload bucket, write under its output prefix (see the server's function keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

fn default_timeout() -> u64 {
    60
}

fn default_memory() -> u32 {
    512
}

impl Default for FunctionSettings {
    fn default() -> Self {
        FunctionSettings {
            environment: BTreeMap::new(),
            timeout_secs: default_timeout(),
            memory_mb: default_memory(),
            policy: None,
        }
    }
}

impl FunctionSettings {
    pub fn validate(&self) -> Result<(), ProcessorError> {
        if !(1..=900).contains(&self.timeout_secs) {
            return Err(ProcessorError::InvalidConfig(format!(
                "function timeout must be between 1 and 900 seconds, got {}",
                self.timeout_secs
            )));
        }
        if !(128..=10_240).contains(&self.memory_mb) {
            return Err(ProcessorError::InvalidConfig(format!(
                "function memory must be between 128 and 10240 MiB, got {}",
                self.memory_mb
            )));
        }
        if let Some(doc) = &self.policy {
            sluice_policy::Policy::parse(doc).map_err(|e| {
                ProcessorError::InvalidConfig(format!("the function's policy is not usable: {e}"))
            })?;
        }
        for k in self.environment.keys() {
            let ok = !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !k.as_bytes()[0].is_ascii_digit();
            if !ok {
                return Err(ProcessorError::InvalidConfig(format!(
                    "environment variable name {k:?} must be letters, digits and '_', not starting with a digit"
                )));
            }
        }
        Ok(())
    }
}

/// Whether a mapping runs (Lambda's `State`, reduced to the two stable states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MappingState {
    Enabled,
    Disabled,
}

impl std::fmt::Display for MappingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MappingState::Enabled => "Enabled",
            MappingState::Disabled => "Disabled",
        })
    }
}

/// A persisted mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappingDefinition {
    /// Lambda's `UUID` of the mapping; set at creation, never changes.
    #[serde(default)]
    pub uuid: String,
    pub config: MappingConfig,
    pub function: FunctionSpec,
    #[serde(default)]
    pub settings: FunctionSettings,
    pub state: MappingState,
    #[serde(default)]
    pub created_ms: i64,
    #[serde(default)]
    pub updated_ms: i64,
}

impl MappingDefinition {
    /// An enabled mapping with Lambda's defaults.
    pub fn new(config: MappingConfig, function: FunctionSpec) -> Self {
        MappingDefinition {
            uuid: String::new(),
            config,
            function,
            settings: FunctionSettings::default(),
            state: MappingState::Enabled,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn validate(&self) -> Result<(), ProcessorError> {
        self.config.validate()?;
        sluice_stream::validate_stream_name(&self.config.stream)
            .map_err(|e| ProcessorError::InvalidConfig(e.to_string()))?;
        self.function.validate()?;
        self.settings.validate()
    }
}

/// Persisted mappings. Every method validates what it stores.
#[async_trait]
pub trait MappingStore: Send + Sync + 'static {
    /// Stores a new mapping (its uuid and times are set here). `AlreadyExists` if the name
    /// is taken.
    async fn create(&self, def: MappingDefinition) -> Result<MappingDefinition, ProcessorError>;
    async fn get(&self, name: &str) -> Result<MappingDefinition, ProcessorError>;
    /// All mappings, by name.
    async fn list(&self) -> Result<Vec<MappingDefinition>, ProcessorError>;
    /// Replaces a mapping's configuration, function, settings and state; keeps its uuid and
    /// creation time. The name and stream cannot change (checkpoints belong to them).
    async fn update(&self, def: MappingDefinition) -> Result<MappingDefinition, ProcessorError>;
    async fn set_state(
        &self,
        name: &str,
        state: MappingState,
    ) -> Result<MappingDefinition, ProcessorError>;
    /// Deletes a mapping with its checkpoints and logs. `NotFound` if absent.
    async fn delete(&self, name: &str) -> Result<(), ProcessorError>;

    async fn enable(&self, name: &str) -> Result<MappingDefinition, ProcessorError> {
        self.set_state(name, MappingState::Enabled).await
    }

    async fn disable(&self, name: &str) -> Result<MappingDefinition, ProcessorError> {
        self.set_state(name, MappingState::Disabled).await
    }
}

// --- what users ask for --------------------------------------------------------------------

/// Name of the built-in mapping `sluice serve` runs from the upload stream to
/// `builtin:uppercase` ([`builtin_config`]); no user mapping may take it.
pub const BUILTIN_MAPPING: &str = "builtin-uppercase";

/// The built-in mapping's configuration: the upload stream to `builtin:uppercase`, its
/// outputs under `processed/`.
pub fn builtin_config(
    stream: &str,
    batch_size: usize,
    max_attempts: u32,
    output_bucket: Option<String>,
) -> MappingConfig {
    MappingConfig {
        batch_size,
        starting_position: crate::StartingPosition::Latest,
        max_attempts,
        output_bucket,
        output_prefix: "processed/".into(),
        ..MappingConfig::new(BUILTIN_MAPPING, stream)
    }
}

fn invalid(m: impl Into<String>) -> ProcessorError {
    ProcessorError::InvalidConfig(m.into())
}

/// Refuses to change the built-in mapping as a user mapping.
pub fn refuse_builtin(name: &str) -> Result<(), ProcessorError> {
    if name == BUILTIN_MAPPING {
        return Err(invalid(format!(
            "{BUILTIN_MAPPING} is the built-in mapping: it is configured in sluice.toml (batch_size, max_attempts), not changed here"
        )));
    }
    Ok(())
}

/// Delivery and function options as Lambda's CreateEventSourceMapping names them (in snake
/// case), shared by `sluice mapping create|update` and `[[mapping]]`; `None` leaves a
/// value as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MappingOptions {
    pub batch_size: Option<usize>,
    pub maximum_batching_window_secs: Option<u32>,
    /// `LATEST`, `TRIM_HORIZON` or `AT_TIMESTAMP`.
    pub starting_position: Option<String>,
    /// With `AT_TIMESTAMP`: seconds since the epoch, or an RFC 3339 time.
    pub starting_position_timestamp: Option<String>,
    pub parallelization_factor: Option<u32>,
    pub maximum_retry_attempts: Option<i64>,
    pub maximum_record_age_secs: Option<i64>,
    pub bisect_batch_on_function_error: Option<bool>,
    /// An empty entry is ignored (so an empty list clears).
    pub function_response_types: Option<Vec<String>>,
    /// `stream:<name>` or `s3://<bucket>/<prefix>`; empty removes it.
    pub on_failure: Option<String>,
    /// Empty: the input's bucket.
    pub output_bucket: Option<String>,
    pub output_prefix: Option<String>,
    pub timeout_secs: Option<u64>,
    pub memory_mb: Option<u32>,
    /// The function key's policy document; empty: back to what the mapping needs.
    pub policy: Option<String>,
}

impl MappingOptions {
    /// Sets the options given on `def` (ranges are checked by
    /// [`MappingDefinition::validate`]).
    pub fn apply(&self, def: &mut MappingDefinition) -> Result<(), ProcessorError> {
        let o = self;
        let c = &mut def.config;
        if let Some(v) = o.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = o.maximum_batching_window_secs {
            c.maximum_batching_window_secs = v;
        }
        c.starting_position = starting_position(
            c.starting_position,
            o.starting_position.as_deref(),
            o.starting_position_timestamp.as_deref(),
        )?;
        if let Some(v) = o.parallelization_factor {
            c.parallelization_factor = v;
        }
        if let Some(v) = o.maximum_retry_attempts {
            c.set_maximum_retry_attempts(v)?;
        }
        if let Some(v) = o.maximum_record_age_secs {
            c.maximum_record_age_secs = v;
        }
        if let Some(v) = o.bisect_batch_on_function_error {
            c.bisect_batch_on_function_error = v;
        }
        if let Some(v) = &o.function_response_types {
            c.function_response_types = v.iter().filter(|t| !t.is_empty()).cloned().collect();
        }
        if let Some(v) = &o.on_failure {
            c.on_failure = if v.is_empty() {
                None
            } else {
                Some(crate::DestinationSpec::parse(v)?)
            };
        }
        if let Some(v) = &o.output_bucket {
            c.output_bucket = (!v.is_empty()).then(|| v.clone());
        }
        if let Some(v) = &o.output_prefix {
            c.output_prefix = v.clone();
        }
        if let Some(v) = o.timeout_secs {
            def.settings.timeout_secs = v;
        }
        if let Some(v) = o.memory_mb {
            def.settings.memory_mb = v;
        }
        if let Some(v) = &o.policy {
            def.settings.policy = (!v.trim().is_empty()).then(|| v.clone());
        }
        Ok(())
    }
}

/// The starting position a position name and timestamp ask for (`current` when neither is
/// given).
fn starting_position(
    current: crate::StartingPosition,
    position: Option<&str>,
    timestamp: Option<&str>,
) -> Result<crate::StartingPosition, ProcessorError> {
    use crate::StartingPosition as P;
    match (position, timestamp) {
        (None, None) => Ok(current),
        (Some("LATEST"), None) => Ok(P::Latest),
        (Some("TRIM_HORIZON"), None) => Ok(P::TrimHorizon),
        (Some("AT_TIMESTAMP") | None, Some(t)) => Ok(P::AtTimestamp(parse_timestamp(t)?)),
        (Some("AT_TIMESTAMP"), None) => Err(invalid(
            "starting position AT_TIMESTAMP needs a starting position timestamp",
        )),
        (Some(p @ ("LATEST" | "TRIM_HORIZON")), Some(_)) => Err(invalid(format!(
            "a starting position timestamp goes only with AT_TIMESTAMP, not {p}"
        ))),
        (Some(p), _) => Err(invalid(format!(
            "starting position must be LATEST, TRIM_HORIZON or AT_TIMESTAMP, got {p:?}"
        ))),
    }
}

/// Seconds since the epoch (fractions allowed) or RFC 3339 → ms since the epoch.
pub fn parse_timestamp(s: &str) -> Result<i64, ProcessorError> {
    if let Ok(secs) = s.trim().parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Ok((secs * 1000.0) as i64);
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            invalid(format!(
                "starting position timestamp must be seconds since the epoch or an RFC 3339 time, got {s:?}"
            ))
        })
}

/// `KEY=VALUE` pairs (a value may hold `=`).
pub fn parse_environment(pairs: &[String]) -> Result<Vec<(String, String)>, ProcessorError> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| invalid(format!("--env takes KEY=VALUE, got {p:?}")))
        })
        .collect()
}

/// Parses a function argument (`args`: an `exec:` program's arguments) and makes its paths
/// absolute against `base`; a lambda's code directory must exist.
pub fn parse_function(
    s: &str,
    args: &[String],
    base: &Path,
) -> Result<FunctionSpec, ProcessorError> {
    if !args.is_empty() && !s.starts_with("exec:") {
        return Err(invalid(format!(
            "arguments after -- are only for exec: functions, not {s:?}"
        )));
    }
    let mut spec = FunctionSpec::parse(s, args)?;
    spec.resolve_paths(base);
    if let FunctionSpec::Lambda { code_dir, .. } = &mut spec {
        *code_dir = code_dir.canonicalize().map_err(|e| {
            invalid(format!(
                "lambda code directory {} cannot be used: {e}",
                code_dir.display()
            ))
        })?;
    }
    Ok(spec)
}

/// What a new mapping takes from the server's configuration when it does not say.
#[derive(Debug, Clone, Default)]
pub struct MappingDefaults {
    /// The upload stream.
    pub stream: String,
    /// Where object functions write (`None`: the input's bucket).
    pub output_bucket: Option<String>,
}

/// A mapping as a user asks for it (`sluice mapping create`, a `[[mapping]]` entry).
#[derive(Debug, Clone)]
pub struct NewMapping {
    pub name: String,
    /// `None`: the upload stream.
    pub stream: Option<String>,
    /// `builtin:…`, `exec:…` or `lambda:…` (see [`FunctionSpec::parse`]).
    pub function: String,
    /// Arguments of an `exec:` program.
    pub args: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// `false`: created disabled.
    pub enabled: bool,
    pub options: MappingOptions,
}

impl NewMapping {
    /// The definition to store: Lambda's defaults, then what was asked for (relative paths
    /// resolved against `base`), validated.
    pub fn definition(
        &self,
        defaults: &MappingDefaults,
        base: &Path,
    ) -> Result<MappingDefinition, ProcessorError> {
        if self.name == BUILTIN_MAPPING {
            return Err(invalid(format!(
                "{BUILTIN_MAPPING} is the name of the built-in mapping; choose another name"
            )));
        }
        let stream = self.stream.as_deref().unwrap_or(&defaults.stream);
        let function = parse_function(&self.function, &self.args, base)?;
        let mut def = MappingDefinition::new(MappingConfig::new(&self.name, stream), function);
        def.config.output_bucket = defaults.output_bucket.clone();
        def.settings.environment = self.environment.clone();
        if !self.enabled {
            def.state = MappingState::Disabled;
        }
        self.options.apply(&mut def)?;
        def.validate()?;
        Ok(def)
    }
}

/// What to do with a definition from the configuration file, given the stored one.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconcile {
    /// Not stored yet.
    Create(MappingDefinition),
    /// Stored with another configuration, function or settings: the configured ones, with
    /// the stored state (set from the command line).
    Update(MappingDefinition),
    /// Stored as configured.
    Unchanged,
}

/// Brings a stored definition (if any) in line with a configured one.
pub fn reconcile(stored: Option<&MappingDefinition>, configured: MappingDefinition) -> Reconcile {
    match stored {
        None => Reconcile::Create(configured),
        Some(old)
            if old.config != configured.config
                || old.function != configured.function
                || old.settings != configured.settings =>
        {
            Reconcile::Update(MappingDefinition {
                state: old.state,
                ..configured
            })
        }
        Some(_) => Reconcile::Unchanged,
    }
}

/// A mapping's state as Lambda names it (`Enabling`, `Enabled`, `Updating`, `Disabling`,
/// `Disabled`), from the stored definition (`wanted`, last changed at `updated_ms`) and what
/// the running server last saved (`saved`); without a running server, the stored state.
pub fn lambda_state(
    wanted: MappingState,
    updated_ms: i64,
    saved: Option<&crate::MappingStats>,
    server_running: bool,
) -> &'static str {
    let running = saved.is_some_and(|s| s.state == "Enabled");
    if !server_running {
        return match wanted {
            MappingState::Enabled => "Enabled",
            MappingState::Disabled => "Disabled",
        };
    }
    match wanted {
        MappingState::Enabled if !running => "Enabling",
        MappingState::Enabled => match saved {
            Some(s) if s.definition_updated_ms == updated_ms => "Enabled",
            _ => "Updating",
        },
        MappingState::Disabled if running => "Disabling",
        MappingState::Disabled => "Disabled",
    }
}

/// The built-in mapping's state: always wanted, so `Enabling` until a running server says
/// it runs.
pub fn builtin_state(saved: Option<&crate::MappingStats>, server_running: bool) -> &'static str {
    match (server_running, saved.is_some_and(|s| s.state == "Enabled")) {
        (false, _) | (true, true) => "Enabled",
        (true, false) => "Enabling",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_function_specs() {
        assert_eq!(
            FunctionSpec::parse("lambda:nodejs:./processor/index.handler", &[]).expect("node"),
            FunctionSpec::Lambda {
                runtime: LambdaRuntime::Nodejs,
                code_dir: "./processor".into(),
                handler: "index.handler".into()
            }
        );
        assert_eq!(
            FunctionSpec::parse("lambda:python:handler.handler", &[]).expect("py"),
            FunctionSpec::Lambda {
                runtime: LambdaRuntime::Python,
                code_dir: ".".into(),
                handler: "handler.handler".into()
            }
        );
        assert_eq!(
            FunctionSpec::parse("exec:gzip", &["-c".into()]).expect("exec"),
            FunctionSpec::Exec {
                argv: vec!["gzip".into(), "-c".into()]
            }
        );
        assert!(FunctionSpec::parse("builtin:nope", &[]).is_err());
        assert!(FunctionSpec::parse("lambda:ruby:./x/a.b", &[]).is_err());
        assert!(FunctionSpec::parse("lambda:nodejs:./x/index", &[]).is_err());
        let mut s = FunctionSpec::parse("lambda:python:./d/h.h", &[]).expect("py");
        s.resolve_paths(Path::new("/base"));
        assert_eq!(s.to_string(), "lambda:python:/base/./d/h.h");
    }

    fn asked(name: &str, function: &str) -> NewMapping {
        NewMapping {
            name: name.into(),
            stream: None,
            function: function.into(),
            args: Vec::new(),
            environment: BTreeMap::new(),
            enabled: true,
            options: MappingOptions::default(),
        }
    }

    fn defaults() -> MappingDefaults {
        MappingDefaults {
            stream: "uploads-stream".into(),
            output_bucket: Some("out".into()),
        }
    }

    #[test]
    fn new_mappings_take_defaults_then_what_was_asked() {
        let mut a = asked("m", "exec:tr");
        a.args = vec!["a-z".into(), "A-Z".into()];
        a.environment.insert("A".into(), "b=c".into());
        a.enabled = false;
        a.options = MappingOptions {
            batch_size: Some(10),
            maximum_retry_attempts: Some(-1),
            bisect_batch_on_function_error: Some(true),
            function_response_types: Some(vec!["ReportBatchItemFailures".into(), "".into()]),
            starting_position_timestamp: Some("2024-01-01T00:00:00Z".into()),
            ..MappingOptions::default()
        };
        let d = a.definition(&defaults(), Path::new("/")).expect("valid");
        assert_eq!(d.config.stream, "uploads-stream");
        assert_eq!(d.config.output_bucket.as_deref(), Some("out"));
        assert_eq!(
            d.function,
            FunctionSpec::Exec {
                argv: vec!["tr".into(), "a-z".into(), "A-Z".into()]
            }
        );
        assert_eq!(d.state, MappingState::Disabled);
        assert_eq!(d.config.batch_size, 10);
        assert_eq!(d.config.maximum_retry_attempts(), -1);
        assert!(d.config.bisect_batch_on_function_error);
        assert_eq!(
            d.config.function_response_types,
            ["ReportBatchItemFailures"]
        );
        assert_eq!(
            d.config.starting_position,
            crate::StartingPosition::AtTimestamp(1_704_067_200_000)
        );
        assert_eq!(d.settings.environment["A"], "b=c");
        assert_eq!(parse_timestamp("1.5").expect("seconds"), 1500);
        assert_eq!(
            parse_environment(&["K=v=w".into()]).expect("pair"),
            [("K".to_owned(), "v=w".to_owned())]
        );
    }

    #[test]
    fn bad_requests_are_invalid_config() {
        let with = |f: &dyn Fn(&mut NewMapping)| {
            let mut a = asked("m", "builtin:copy");
            f(&mut a);
            a.definition(&defaults(), Path::new("/"))
        };
        for (result, why) in [
            (with(&|a| a.function = "ftp:x".into()), "must be builtin:"),
            (with(&|a| a.options.batch_size = Some(0)), "batch size"),
            (with(&|a| a.options.batch_size = Some(10_001)), "batch size"),
            (
                with(&|a| a.options.starting_position = Some("NOW".into())),
                "starting position",
            ),
            (
                with(&|a| a.options.starting_position = Some("AT_TIMESTAMP".into())),
                "needs a starting position timestamp",
            ),
            (
                with(&|a| {
                    a.options.starting_position = Some("LATEST".into());
                    a.options.starting_position_timestamp = Some("1".into());
                }),
                "goes only with AT_TIMESTAMP",
            ),
            (
                with(&|a| a.function = "lambda:python:/no/such/dir/h.handler".into()),
                "code directory",
            ),
            (with(&|a| a.name = BUILTIN_MAPPING.into()), "built-in"),
            (with(&|a| a.args = vec!["x".into()]), "only for exec"),
        ] {
            match result {
                Err(ProcessorError::InvalidConfig(m)) => assert!(m.contains(why), "{why}: {m}"),
                other => panic!("{why}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_environment(&["NOEQ".into()]),
            Err(ProcessorError::InvalidConfig(m)) if m.contains("KEY=VALUE")
        ));
        assert!(refuse_builtin(BUILTIN_MAPPING).is_err());
        assert!(refuse_builtin("mine").is_ok());
    }

    #[test]
    fn configured_definitions_are_reconciled_keeping_the_stored_state() {
        let configured = asked("m", "builtin:copy")
            .definition(&defaults(), Path::new("/"))
            .expect("valid");
        assert_eq!(
            reconcile(None, configured.clone()),
            Reconcile::Create(configured.clone())
        );
        let mut stored = configured.clone();
        stored.state = MappingState::Disabled;
        stored.uuid = "u".into();
        assert_eq!(
            reconcile(Some(&stored), configured.clone()),
            Reconcile::Unchanged
        );
        stored.config.batch_size = 7;
        match reconcile(Some(&stored), configured.clone()) {
            Reconcile::Update(d) => {
                assert_eq!(d.config.batch_size, configured.config.batch_size);
                assert_eq!(d.state, MappingState::Disabled, "the stored state stays");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn states_as_lambda_names_them() {
        use MappingState::{Disabled, Enabled};
        let saved = |state: &str, updated: i64| crate::MappingStats {
            state: state.into(),
            definition_updated_ms: updated,
            ..Default::default()
        };
        assert_eq!(lambda_state(Enabled, 5, None, false), "Enabled");
        assert_eq!(
            lambda_state(Disabled, 5, Some(&saved("Enabled", 5)), false),
            "Disabled"
        );
        assert_eq!(lambda_state(Enabled, 5, None, true), "Enabling");
        assert_eq!(
            lambda_state(Enabled, 5, Some(&saved("Enabled", 5)), true),
            "Enabled"
        );
        assert_eq!(
            lambda_state(Enabled, 6, Some(&saved("Enabled", 5)), true),
            "Updating"
        );
        assert_eq!(
            lambda_state(Disabled, 5, Some(&saved("Enabled", 5)), true),
            "Disabling"
        );
        assert_eq!(
            lambda_state(Disabled, 5, Some(&saved("Disabled", 5)), true),
            "Disabled"
        );
        assert_eq!(builtin_state(None, false), "Enabled");
        assert_eq!(builtin_state(None, true), "Enabling");
        assert_eq!(builtin_state(Some(&saved("Enabled", 0)), true), "Enabled");
    }
}
