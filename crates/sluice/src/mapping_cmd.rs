//! `sluice mapping create|list|get|update|enable|disable|delete` and `sluice logs`: argument
//! parsing and printing; what a mapping may be and which state it is in is the processor's
//! (`sluice_processor::mappings`).
//!
//! The commands write mapping definitions straight into the shared database (the same way
//! `sluice user create` and `sluice keys` work); a running server notices within
//! `mapping_server::SYNC_EVERY` and starts, restarts or stops the mapping. What a
//! mapping did (state as the server sees it, last result, iterator age, counters) is what
//! the server last saved in the `mapping_stats` table. See ARCHITECTURE.md, "Mappings in the
//! binary", for why.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sluice_processor::embedded::{EmbeddedMappings, EmbeddedStats, SavedStats};
use sluice_processor::logs::EmbeddedLogs;
use sluice_processor::mappings::{
    BUILTIN_MAPPING, MappingOptions, NewMapping, builtin_state, lambda_state, parse_environment,
    parse_function, refuse_builtin,
};
use sluice_processor::{MappingDefinition, MappingStore, StartingPosition};

use crate::config::{Settings, from_processor, usage};
use crate::wiring;

#[derive(Subcommand)]
pub(crate) enum MappingCommand {
    /// Create an event-source mapping (stream → function); a running server starts it
    /// within a second.
    Create(Box<CreateArgs>),
    /// List mappings with their state and statistics.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// `json` (the same as --json) or `table`
        #[arg(long, value_enum, value_name = "FORMAT")]
        output: Option<crate::client_cmd::Output>,
    },
    /// Show a mapping's configuration, state and statistics (JSON).
    Get { name: String },
    /// Change a mapping (only the options given); the stream cannot change.
    Update(Box<UpdateArgs>),
    /// Start a disabled mapping again; it resumes after its checkpoint.
    Enable { name: String },
    /// Stop a mapping; its checkpoint is kept.
    Disable { name: String },
    /// Delete a mapping with its checkpoints, statistics and logs.
    Delete { name: String },
}

impl MappingCommand {
    /// `list` and `get` only read.
    pub(crate) fn only_reads(&self) -> bool {
        matches!(
            self,
            MappingCommand::List { .. } | MappingCommand::Get { .. }
        )
    }
}

/// Delivery and function options shared by `create` and `update` (`[[mapping]]` has the same
/// keys); names as Lambda's CreateEventSourceMapping, in snake case.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct DeliveryOptions {
    /// Records per invocation, 1–10000 [create default: 100]
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Seconds to gather records before invoking, 0–300 [create default: 0]
    #[arg(long)]
    pub(crate) maximum_batching_window_secs: Option<u32>,
    /// LATEST, TRIM_HORIZON or AT_TIMESTAMP [create default: LATEST]
    #[arg(long)]
    pub(crate) starting_position: Option<String>,
    /// With AT_TIMESTAMP: seconds since the epoch, or an RFC 3339 time
    #[arg(long)]
    pub(crate) starting_position_timestamp: Option<String>,
    /// Concurrent batches per shard, 1–10 [create default: 1]
    #[arg(long)]
    pub(crate) parallelization_factor: Option<u32>,
    /// Retries of a failing batch, -1 (until the records expire) or 0–10000 [create default: -1]
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) maximum_retry_attempts: Option<i64>,
    /// Records older than this go to the on-failure destination, -1 or 60–604800 [create default: -1]
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) maximum_record_age_secs: Option<i64>,
    /// Split a failing batch in two and retry each half [create default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub(crate) bisect_batch_on_function_error: Option<bool>,
    /// ReportBatchItemFailures to honour partial batch responses (comma-separated; an empty
    /// value clears)
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    pub(crate) function_response_types: Option<Vec<String>>,
    /// Where records given up on are described: stream:<name> or s3://<bucket>/<prefix>
    /// (an empty value removes it)
    #[arg(long)]
    pub(crate) on_failure: Option<String>,
    /// Bucket for the outputs of object functions [default: the input's bucket]
    #[arg(long)]
    pub(crate) output_bucket: Option<String>,
    /// Output key prefix of object functions, replacing `uploads/` [default: processed/]
    #[arg(long)]
    pub(crate) output_prefix: Option<String>,
    /// Longest an invocation may run, 1–900 s [create default: 60]
    #[arg(long)]
    pub(crate) timeout_secs: Option<u64>,
    /// Memory of lambda functions, 128–10240 MiB [create default: 512]
    #[arg(long)]
    pub(crate) memory_mb: Option<u32>,
    /// Policy document (JSON file) of the access key a lambda function runs with, like
    /// Lambda's execution role [default: read the mapping's stream, read uploads/ of the
    /// upload bucket, write under the output prefix]; an empty value restores the default
    #[arg(long, value_name = "FILE", value_parser = read_policy_file)]
    pub(crate) policy: Option<String>,
}

/// `--policy FILE`: the file's text (an empty path: no policy of its own).
fn read_policy_file(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Ok(String::new());
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

#[derive(Debug, Clone, Args)]
pub(crate) struct CreateArgs {
    /// Name of the mapping (also the function's name, AWS_LAMBDA_FUNCTION_NAME)
    #[arg(long)]
    pub(crate) name: String,
    /// Stream to read [default: the upload stream]
    #[arg(long)]
    pub(crate) stream: Option<String>,
    /// builtin:<uppercase|copy|manifest|noop>, exec:<program> (arguments after --),
    /// lambda:nodejs:<dir>/<module>.<export>, lambda:python:<dir>/<module>.<function> or
    /// function:<name> (a function created with `aws lambda create-function`); relative
    /// paths are resolved against the current directory
    #[arg(long)]
    pub(crate) function: String,
    /// Environment variable of the function, KEY=VALUE (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// Create the mapping disabled
    #[arg(long)]
    pub(crate) disabled: bool,
    #[command(flatten)]
    pub(crate) options: DeliveryOptions,
    /// Arguments of an exec: program
    #[arg(last = true)]
    pub(crate) args: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct UpdateArgs {
    pub(crate) name: String,
    /// A new function (same forms as create)
    #[arg(long)]
    pub(crate) function: Option<String>,
    /// Set an environment variable, KEY=VALUE (repeatable; others are kept)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// Remove an environment variable (repeatable)
    #[arg(long = "unset-env", value_name = "KEY")]
    pub(crate) unset_env: Vec<String>,
    #[command(flatten)]
    pub(crate) options: DeliveryOptions,
    /// Arguments of an exec: program (with --function)
    #[arg(last = true)]
    pub(crate) args: Vec<String>,
}

impl DeliveryOptions {
    /// The options as the processor takes them.
    pub(crate) fn options(&self) -> MappingOptions {
        MappingOptions {
            batch_size: self.batch_size,
            maximum_batching_window_secs: self.maximum_batching_window_secs,
            starting_position: self.starting_position.clone(),
            starting_position_timestamp: self.starting_position_timestamp.clone(),
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
            policy: self.policy.clone(),
        }
    }
}

/// The definition `sluice mapping create` stores.
pub(crate) fn create_definition(
    settings: &Settings,
    args: &CreateArgs,
    cwd: &Path,
) -> Result<MappingDefinition> {
    let asked = NewMapping {
        name: args.name.clone(),
        stream: args.stream.clone(),
        function: args.function.clone(),
        args: args.args.clone(),
        environment: parse_environment(&args.env)
            .map_err(from_processor)?
            .into_iter()
            .collect(),
        enabled: !args.disabled,
        options: args.options.options(),
    };
    asked
        .definition(&settings.mapping_defaults(), cwd)
        .map_err(from_processor)
}

/// Runs a `sluice mapping` command.
pub(crate) fn run(settings: &Settings, cmd: MappingCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(settings, cmd))
}

async fn run_async(settings: &Settings, cmd: MappingCommand) -> Result<()> {
    let db = wiring::open_db(settings)?;
    let store = EmbeddedMappings::new(db.clone());
    let stats = EmbeddedStats::new(db.clone());
    let print = |v: Value| -> Result<()> {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        Ok(())
    };
    match cmd {
        MappingCommand::Create(args) => {
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            let def = create_definition(settings, &args, &cwd)?;
            let def = store.create(def).await.map_err(from_processor)?;
            let saved = stats.load_all().await?;
            print(view(settings, &def, saved.get(def.name())))
        }
        MappingCommand::Update(args) => {
            refuse_builtin(&args.name).map_err(from_processor)?;
            let mut def = store.get(&args.name).await.map_err(from_processor)?;
            if let Some(f) = &args.function {
                let cwd = std::env::current_dir().context("cannot read the current directory")?;
                def.function = parse_function(f, &args.args, &cwd).map_err(from_processor)?;
            } else if !args.args.is_empty() {
                return Err(usage("arguments after -- need --function exec:<program>"));
            }
            def.settings
                .environment
                .extend(parse_environment(&args.env).map_err(from_processor)?);
            for k in &args.unset_env {
                def.settings.environment.remove(k);
            }
            args.options
                .options()
                .apply(&mut def)
                .map_err(from_processor)?;
            let def = store.update(def).await.map_err(from_processor)?;
            let saved = stats.load_all().await?;
            print(view(settings, &def, saved.get(def.name())))
        }
        MappingCommand::Enable { name } => {
            refuse_builtin(&name).map_err(from_processor)?;
            let def = store.enable(&name).await.map_err(from_processor)?;
            let saved = stats.load_all().await?;
            print(view(settings, &def, saved.get(&name)))
        }
        MappingCommand::Disable { name } => {
            refuse_builtin(&name).map_err(from_processor)?;
            let def = store.disable(&name).await.map_err(from_processor)?;
            let saved = stats.load_all().await?;
            print(view(settings, &def, saved.get(&name)))
        }
        MappingCommand::Delete { name } => {
            refuse_builtin(&name).map_err(from_processor)?;
            store.delete(&name).await.map_err(from_processor)?;
            // Its function's key goes with it (a running server also deletes it when it
            // stops the mapping).
            let keys = wiring::open_access_keys(settings, db)?;
            let description = crate::mapping_server::function_key_description(&name);
            tokio::task::spawn_blocking(move || keys.retire(&description)).await??;
            outln!("deleted mapping {name}");
            Ok(())
        }
        MappingCommand::Get { name } => {
            let saved = stats.load_all().await?;
            let v = if name == BUILTIN_MAPPING && settings.builtin_mapping {
                builtin_view(settings, saved.get(BUILTIN_MAPPING))
            } else {
                let def = store.get(&name).await.map_err(from_processor)?;
                view(settings, &def, saved.get(&name))
            };
            print(v)
        }
        MappingCommand::List { json, output } => {
            let json = json || output == Some(crate::client_cmd::Output::Json);
            let saved = stats.load_all().await?;
            // The built-in mapping is listed only where it runs (`builtin_mapping`).
            let mut all = Vec::new();
            if settings.builtin_mapping {
                all.push(builtin_view(settings, saved.get(BUILTIN_MAPPING)));
            }
            for def in store.list().await? {
                all.push(view(settings, &def, saved.get(def.name())));
            }
            if json {
                print(Value::Array(all))
            } else {
                outln!("{}", table(&all));
                Ok(())
            }
        }
    }
}

/// The state as Lambda names it, from the definition and what the running server saved.
fn state(settings: &Settings, def: &MappingDefinition, s: Option<&SavedStats>) -> &'static str {
    lambda_state(
        def.state,
        def.updated_ms,
        s.map(|s| &s.stats),
        wiring::running(settings).is_some(),
    )
}

fn stats_json(s: Option<&SavedStats>) -> Value {
    match s {
        Some(s) => {
            let mut v = serde_json::to_value(&s.stats).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.remove("state");
                o.remove("definitionUpdatedMs");
                o.insert("savedMs".into(), json!(s.saved_ms));
            }
            v
        }
        None => Value::Null,
    }
}

/// What `get` shows (and `list --json` lists).
pub(crate) fn view(settings: &Settings, def: &MappingDefinition, s: Option<&SavedStats>) -> Value {
    let c = &def.config;
    let (position, timestamp) = match c.starting_position {
        StartingPosition::Latest => ("LATEST", None),
        StartingPosition::TrimHorizon => ("TRIM_HORIZON", None),
        StartingPosition::AtTimestamp(t) => ("AT_TIMESTAMP", Some(t as f64 / 1000.0)),
    };
    let problem = s
        .map(|s| s.stats.last_processing_result.clone())
        .filter(|r| r.starts_with("PROBLEM"));
    json!({
        "name": c.name,
        "uuid": def.uuid,
        "state": state(settings, def, s),
        "stateTransitionReason": if problem.is_some() { "Server" } else { "User action" },
        "lastProcessingResult": s.map(|s| s.stats.last_processing_result.clone()).unwrap_or_default(),
        "stream": c.stream,
        "eventSourceArn": format!("arn:aws:kinesis:{}:{}:stream/{}", settings.region, settings.account_id, c.stream),
        "function": def.function.to_string(),
        "functionArn": format!("arn:aws:lambda:{}:{}:function:{}", settings.region, settings.account_id, c.name),
        "environment": def.settings.environment,
        "timeoutSecs": def.settings.timeout_secs,
        "policy": def.settings.policy.as_deref().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok()),
        "memoryMb": def.settings.memory_mb,
        "batchSize": c.batch_size,
        "maximumBatchingWindowInSeconds": c.maximum_batching_window_secs,
        "startingPosition": position,
        "startingPositionTimestamp": timestamp,
        "parallelizationFactor": c.parallelization_factor,
        "maximumRetryAttempts": c.maximum_retry_attempts(),
        "maximumRecordAgeInSeconds": c.maximum_record_age_secs,
        "bisectBatchOnFunctionError": c.bisect_batch_on_function_error,
        "functionResponseTypes": c.function_response_types,
        "onFailure": c.on_failure.as_ref().map(|d| d.to_string()),
        "outputBucket": c.output_bucket,
        "outputPrefix": c.output_prefix,
        "createdMs": def.created_ms,
        "lastModifiedMs": def.updated_ms,
        "builtIn": false,
        "stats": stats_json(s),
    })
}

/// The built-in `uploads-stream → uppercase` mapping, configured by `sluice.toml`.
pub(crate) fn builtin_view(settings: &Settings, s: Option<&SavedStats>) -> Value {
    let state = builtin_state(s.map(|s| &s.stats), wiring::running(settings).is_some());
    json!({
        "name": BUILTIN_MAPPING,
        "state": state,
        "lastProcessingResult": s.map(|s| s.stats.last_processing_result.clone()).unwrap_or_default(),
        "stream": settings.stream,
        "eventSourceArn": format!("arn:aws:kinesis:{}:{}:stream/{}", settings.region, settings.account_id, settings.stream),
        "function": "builtin:uppercase",
        "batchSize": settings.batch_size,
        "startingPosition": "LATEST",
        "maxAttempts": settings.max_attempts,
        "outputBucket": settings.processed_bucket.clone().unwrap_or_else(|| settings.bucket.clone()),
        "outputPrefix": "processed/",
        "builtIn": true,
        "stats": stats_json(s),
    })
}

fn table(rows: &[Value]) -> String {
    let head = [
        "NAME",
        "STATE",
        "STREAM",
        "FUNCTION",
        "LAST RESULT",
        "IN",
        "OK",
        "FAILED",
        "AGE MS",
        "BATCH MS",
    ];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut cells: Vec<Vec<String>> = vec![head.iter().map(|h| (*h).to_owned()).collect()];
    for r in rows {
        let s = &r["stats"];
        let result = match text(&r["lastProcessingResult"]) {
            x if x.is_empty() => "-".to_owned(),
            x => x,
        };
        cells.push(vec![
            text(&r["name"]),
            text(&r["state"]),
            text(&r["stream"]),
            text(&r["function"]),
            result,
            text(&s["recordsIn"]),
            text(&s["succeeded"]),
            text(&s["failed"]),
            text(&s["millisBehindLatest"]),
            text(&s["lastBatchMs"]),
        ]);
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    cells
        .iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `sluice logs <mapping> [-f]`.
/// Whose log `sluice logs` shows.
pub(crate) enum LogSource {
    Mapping(String),
    /// A function created with Lambda's API: its log is `/aws/lambda/<name>`.
    Function(String),
}

pub(crate) fn logs(
    settings: &Settings,
    source: &LogSource,
    follow: bool,
    lines: usize,
    json_out: bool,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let db = wiring::open_db(settings)?;
        let key = match source {
            LogSource::Mapping(m) => {
                if m != BUILTIN_MAPPING {
                    EmbeddedMappings::new(db.clone())
                        .get(m)
                        .await
                        .map_err(from_processor)?;
                }
                m.clone()
            }
            LogSource::Function(f) => {
                let exists = sluice_functions::exists(&db, f).await?;
                if !exists {
                    anyhow::bail!("function {f} not found");
                }
                sluice_functions::invoke::log_key(f)
            }
        };
        let mapping = key.as_str();
        let logs = EmbeddedLogs::new(db);
        let mut last = 0;
        for l in logs.tail(mapping, lines).await? {
            last = l.id;
            print_line(&l, json_out)?;
        }
        if !follow {
            return Ok(());
        }
        loop {
            let new = logs.after(mapping, last, 1000).await?;
            if new.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = tokio::signal::ctrl_c() => break,
                }
                continue;
            }
            for l in new {
                last = l.id;
                print_line(&l, json_out)?;
            }
        }
        Ok(())
    })
}

fn print_line(l: &sluice_processor::logs::LogLine, json_out: bool) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{}", serde_json::to_string(l)?)?;
    } else {
        let ts = chrono::DateTime::from_timestamp_millis(l.ts_ms)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_default();
        writeln!(out, "{ts}\t{}\t{}\t{}", l.request_id, l.stream, l.line)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UsageError;
    use clap::Parser;
    use sluice_processor::FunctionSpec;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: CreateArgs,
    }

    fn settings() -> Settings {
        Settings::resolve(&crate::config::CommonArgs {
            config: Some(std::env::temp_dir().join("sluice-no-such-config.toml")),
            ..Default::default()
        })
        .or_else(|_| Settings::resolve(&Default::default()))
        .expect("settings")
    }

    fn create(argv: &[&str]) -> Result<MappingDefinition> {
        let t = T::try_parse_from(std::iter::once("t").chain(argv.iter().copied()))
            .map_err(|e| usage(e.to_string()))?;
        create_definition(&settings(), &t.args, Path::new("/"))
    }

    #[test]
    fn create_arguments() {
        let d = create(&[
            "--name",
            "m",
            "--function",
            "exec:tr",
            "--batch-size",
            "10",
            "--maximum-retry-attempts",
            "-1",
            "--bisect-batch-on-function-error",
            "--function-response-types",
            "ReportBatchItemFailures",
            "--env",
            "A=b=c",
            "--",
            "a-z",
            "A-Z",
        ])
        .expect("valid");
        assert_eq!(
            d.function,
            FunctionSpec::Exec {
                argv: vec!["tr".into(), "a-z".into(), "A-Z".into()]
            }
        );
        assert_eq!(d.config.batch_size, 10);
        assert_eq!(d.config.maximum_retry_attempts(), -1);
        assert!(d.config.bisect_batch_on_function_error);
        assert!(d.config.reports_batch_item_failures());
        assert_eq!(d.settings.environment["A"], "b=c");
        let t = create(&[
            "--name",
            "t",
            "--function",
            "builtin:noop",
            "--starting-position",
            "AT_TIMESTAMP",
            "--starting-position-timestamp",
            "2024-01-01T00:00:00Z",
        ])
        .expect("valid");
        assert_eq!(
            t.config.starting_position,
            StartingPosition::AtTimestamp(1_704_067_200_000)
        );

        for (bad, why) in [
            (
                vec!["--name", "m", "--function", "ftp:x"],
                "must be builtin:",
            ),
            (
                vec![
                    "--name",
                    "m",
                    "--function",
                    "builtin:copy",
                    "--batch-size",
                    "0",
                ],
                "batch size",
            ),
            (
                vec![
                    "--name",
                    "m",
                    "--function",
                    "builtin:copy",
                    "--batch-size",
                    "10001",
                ],
                "batch size",
            ),
            (
                vec!["--name", "m", "--function", "builtin:copy", "--env", "NOEQ"],
                "KEY=VALUE",
            ),
            (
                vec![
                    "--name",
                    "m",
                    "--function",
                    "builtin:copy",
                    "--starting-position",
                    "NOW",
                ],
                "starting position",
            ),
            (
                vec![
                    "--name",
                    "m",
                    "--function",
                    "lambda:python:/no/such/dir/h.handler",
                ],
                "code directory",
            ),
            (
                vec!["--name", BUILTIN_MAPPING, "--function", "builtin:copy"],
                "built-in",
            ),
            (
                vec!["--name", "m", "--function", "builtin:copy", "--", "x"],
                "only for exec",
            ),
        ] {
            let e = create(&bad).expect_err(why);
            assert!(e.downcast_ref::<UsageError>().is_some(), "{bad:?}: {e}");
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
        }
    }
}
