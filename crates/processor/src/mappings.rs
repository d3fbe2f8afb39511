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
        } else if crate::functions::BUILTINS.contains(&s) {
            FunctionSpec::Builtin { name: s.to_owned() }
        } else {
            return Err(bad(format!(
                "function {s:?} must be builtin:<name>, exec:<program> or lambda:<runtime>:<dir>/<module>.<handler>"
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
}
