//! `sluice`: one binary for the whole pipeline. This crate parses configuration and wires
//! the parts together; the parts live in their own crates.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// `println!` for command output. A closed pipe (`sluice doctor | head -1`) becomes an error
/// that `main` turns into a quiet exit, where `println!` would panic. (`unsafe` is forbidden
/// here, so SIGPIPE keeps Rust's default of being ignored.)
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// mimalloc rather than glibc's malloc: an upload allocates and frees many small buffers
/// across the runtime's threads, and glibc's arenas spent a seventh of the server's CPU on
/// that (docs/BENCHMARKS.md, session 22).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin_api;
mod builtin_roles;
mod client;
mod client_cmd;
mod config;
mod datadir;
mod doctor;
mod functions_server;
mod history;
mod http_server;
mod mapping_cmd;
mod mapping_server;
mod serve;
mod telemetry;
mod wiring;

use std::path::PathBuf;

use config::{CommonArgs, Settings, usage};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A self-hosted event-driven upload pipeline: sign-in, upload API, storage, stream and processors in one binary"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline: sign-in, upload API, storage, stream and processors (or
    /// the parts `--role` names).
    Serve(config::ServeArgs),
    /// Manage users of the default user pool.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage the access keys AWS clients sign requests with (SigV4).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show the confirmation and password-reset codes Cognito operations sent (newest
    /// first), with their email delivery (`sent`, `failed: …`, or `-` when not emailed).
    Outbox {
        /// User pool [default: the default pool]
        #[arg(long)]
        pool: Option<String>,
        /// Messages to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
        /// `json` (the same as --json) or `table`
        #[arg(long, value_enum, value_name = "FORMAT")]
        output: Option<client_cmd::Output>,
    },
    /// Manage event-source mappings (stream → function) of the running server.
    #[command(subcommand)]
    Mapping(mapping_cmd::MappingCommand),
    /// Show a mapping's function logs (stdout/stderr lines with request ids), or a
    /// function's (`--function`, functions created with `aws lambda create-function`).
    Logs {
        /// The mapping
        #[arg(required_unless_present = "function", conflicts_with = "function")]
        mapping: Option<String>,
        /// Show this function's log (`/aws/lambda/<name>`) instead
        #[arg(long, value_name = "NAME")]
        function: Option<String>,
        /// Keep printing new lines as they arrive
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines to show first
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// Print one JSON object per line
        #[arg(long)]
        json: bool,
        /// `json` (the same as --json) or `table`
        #[arg(long, value_enum, value_name = "FORMAT")]
        output: Option<client_cmd::Output>,
    },
    /// Sign in to a server as a user of its pool; later client commands use the sign-in.
    Login {
        /// The user's email address
        #[arg(long)]
        email: String,
        /// Read the password from standard input (one line; a new password the user must
        /// choose, NEW_PASSWORD_REQUIRED, on the next line) instead of prompting
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        client: client_cmd::ClientArgs,
    },
    /// Sign out: end the sign-in on the server and forget it here.
    Logout {
        #[command(flatten)]
        client: client_cmd::ClientArgs,
    },
    /// Upload files (each streamed to the upload API, as raw bytes).
    Upload {
        /// The files
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The name to store one file under [default: its file name]
        #[arg(long)]
        name: Option<String>,
        /// Wait until each is processed or failed (exit 1 if any failed)
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: client_cmd::ClientArgs,
    },
    /// Your uploads: list (and watch), show one, download one.
    #[command(subcommand)]
    Uploads(client_cmd::UploadsCommand),
    /// Is the server up and ready, and who is signed in.
    Status {
        #[command(flatten)]
        client: client_cmd::ClientArgs,
    },
    /// Read a stream (through the edge's Kinesis API, signed with an access key).
    #[command(subcommand)]
    Stream(client_cmd::StreamCommand),
    /// Show the pool id, app client id, issuer and URLs clients need.
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// `json` (the same as --json) or `table`
        #[arg(long, value_enum, value_name = "FORMAT")]
        output: Option<client_cmd::Output>,
    },
    /// Print a shell completion script: `sluice completions bash > /etc/bash_completion.d/sluice`,
    /// `sluice completions zsh > "${fpath[1]}/_sluice"`,
    /// `sluice completions fish > ~/.config/fish/completions/sluice.fish`.
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// The SDKs functions import without bundling, as on Lambda's managed runtimes.
    #[command(subcommand)]
    Runtimes(RuntimesCommand),
    /// Check the data (read-only): the metadata engine, every stream record's checksum,
    /// that the blob engine can be used, and that no acknowledged upload is left unfinished.
    Doctor {
        /// An acknowledged upload still queued or processing this long after it was made is
        /// reported (the processor is down or behind, or its outcome was lost).
        #[arg(long, default_value_t = 900, value_name = "SECS")]
        stuck_after: u64,
        /// Also read every object's bytes (and every stored part of multipart uploads in
        /// progress) and check them against the checksum written with them; reports damaged
        /// and missing blobs. Reads all the data once, so it takes as long as that.
        #[arg(long)]
        deep: bool,
    },
}

impl Command {
    /// Whether the command only reads the data directory (so it must exist already).
    fn only_reads(&self) -> bool {
        match self {
            Command::Outbox { .. }
            | Command::Logs { .. }
            | Command::Info { .. }
            | Command::Doctor { .. }
            | Command::Keys(KeysCommand::List) => true,
            Command::Mapping(m) => m.only_reads(),
            _ => false,
        }
    }
}

#[derive(Subcommand)]
enum RuntimesCommand {
    /// Install the AWS SDK for JavaScript v3 (nodejs* functions, with npm) and boto3
    /// (python* functions, with pip) into the runtime cache now, rather than at the first
    /// invocation; prints where. Needs the npm and PyPI registries.
    Install {
        /// Only the Node.js SDK
        #[arg(long, conflicts_with = "python")]
        node: bool,
        /// Only boto3
        #[arg(long)]
        python: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an access key; its secret is printed once. Without --policy or --allow the
    /// key has full access.
    Create {
        /// What the key is for.
        #[arg(long, default_value = "")]
        description: String,
        /// IAM policy document (JSON file) limiting what the key may do on the edge
        #[arg(long, value_name = "FILE", conflicts_with = "allow")]
        policy: Option<PathBuf>,
        /// Allow one action on one resource, ACTION:RESOURCE (repeatable), e.g.
        /// s3:GetObject:arn:aws:s3:::sluice/uploads/* or kinesis:PutRecord:* ; wildcards as in
        /// IAM policies
        #[arg(long, value_name = "ACTION:RESOURCE")]
        allow: Vec<String>,
    },
    /// List access keys, one per line: id, description, and `full-access`, the key's
    /// policy, or `iam user NAME` / `iam role-session ROLE/SESSION` for keys whose IAM user
    /// or role decides (not their secrets; the development key's secret is in
    /// `<data-dir>/credentials`, mode 0600).
    List,
    /// Delete an access key (and `<data-dir>/credentials` if it holds that key).
    Delete { id: String },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user that signs in with its email address.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
        /// The password is temporary: the first sign-in must choose a new one
        /// (NEW_PASSWORD_REQUIRED), as with Cognito's AdminCreateUser.
        #[arg(long)]
        temporary: bool,
    },
    /// Add a user of the default pool to a group, creating the group when it does not exist
    /// (`--group admin` makes the user an operator of the console). Takes effect with the
    /// user's next sign-in.
    AddToGroup {
        #[arg(long)]
        email: String,
        #[arg(long)]
        group: String,
    },
    /// Remove a user of the default pool from a group.
    RemoveFromGroup {
        #[arg(long)]
        email: String,
        #[arg(long)]
        group: String,
    },
}

fn main() -> std::process::ExitCode {
    // Before anything is created: every file of the process private (see `datadir`).
    datadir::restrict_umask();
    let cli = Cli::parse();
    init_tracing(cli.common.log_format);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if closed_pipe(&e) => {
            // The reader of our output went away: nothing to say, and nobody to say it to.
            // 141 = 128 + SIGPIPE, what a shell shows for a program a closed pipe stopped.
            std::process::ExitCode::from(141)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<config::UsageError>().is_some() {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// The error of writing to a pipe whose reader has closed it.
/// The policy `--allow ACTION:RESOURCE …` describes: one Allow statement per entry. The
/// action is the first two colon-separated parts (`service:Operation`), the resource the
/// rest (an ARN, or `*`).
fn allow_policy(entries: &[String]) -> Result<String> {
    let mut statements = Vec::new();
    for entry in entries {
        let mut parts = entry.splitn(3, ':');
        let (Some(service), Some(op), Some(resource)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(usage(format!(
                "--allow takes ACTION:RESOURCE, e.g. s3:GetObject:arn:aws:s3:::sluice/uploads/* or kinesis:*:*; got {entry:?}"
            )));
        };
        if service.is_empty() || op.is_empty() || resource.is_empty() {
            return Err(usage(format!(
                "--allow takes ACTION:RESOURCE with neither part empty; got {entry:?}"
            )));
        }
        statements.push(serde_json::json!({
            "Effect": "Allow",
            "Action": format!("{service}:{op}"),
            "Resource": resource,
        }));
    }
    Ok(serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string())
}

fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_tracing(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // A log line that cannot be written (stderr redirected to a full disk, a closed pipe)
    // is dropped. tracing-subscriber's default reports that with `eprintln!`, which panics
    // when stderr fails too: on a full disk, every request that logged would have lost its
    // connection task. The disk-full fault tests hold this.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        config::LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // One JSON object per line: timestamp, level, target, and the event's fields
        // (`message`, `request_id`, `status`, …) at the top level.
        config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Completions { shell } = cli.command {
        // Needs no settings and no data directory.
        let mut script = Vec::new();
        clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "sluice",
            &mut script,
        );
        use std::io::Write as _;
        std::io::stdout().lock().write_all(&script)?;
        return Ok(());
    }
    let settings = Settings::resolve(&cli.common)?;
    if cli.command.only_reads() && !settings.data_dir.exists() {
        // A command that only looks at data would otherwise create an empty data directory
        // (a mistyped --data-dir, a command run in the wrong directory) and report on it.
        anyhow::bail!(
            "no sluice data at {} — start the server there with `sluice serve` (it creates it), or pass --data-dir",
            settings.data_dir.display()
        );
    }
    match cli.command {
        Command::Login {
            email,
            password_stdin,
            client,
        } => client_cmd::login(&settings, &client, &email, password_stdin),
        Command::Logout { client } => client_cmd::logout(&settings, &client),
        Command::Upload {
            files,
            name,
            wait,
            client,
        } => client_cmd::upload(&settings, &client, &files, name.as_deref(), wait),
        Command::Uploads(cmd) => client_cmd::uploads(&settings, cmd),
        Command::Status { client } => client_cmd::status(&settings, &client),
        Command::Stream(cmd) => client_cmd::stream(&settings, cmd),
        Command::Serve(args) => {
            let mut settings = settings;
            settings.apply_serve(&args)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(serve::serve(settings))
        }
        Command::User(UserCommand::Create {
            email,
            password,
            temporary,
        }) => {
            let identity = wiring::open_identity(&settings)?;
            let pool = identity.bootstrap(&settings.region, settings.lifetimes)?;
            let user = identity.create_user(&pool.pool_id, &email, &password, temporary)?;
            outln!(
                "{}",
                serde_json::json!({
                    "sub": user.sub,
                    "email": user.email,
                    "status": user.status,
                    "poolId": pool.pool_id,
                })
            );
            Ok(())
        }
        Command::User(UserCommand::AddToGroup { email, group }) => {
            let identity = wiring::open_identity(&settings)?;
            let pool = identity.bootstrap(&settings.region, settings.lifetimes)?;
            client_cmd::runtime()?.block_on(identity.add_user_to_group_creating_it(
                &pool.pool_id,
                &email,
                &group,
            ))?;
            outln!("{email} is in group {group} (from their next sign-in)");
            Ok(())
        }
        Command::User(UserCommand::RemoveFromGroup { email, group }) => {
            let identity = wiring::open_identity(&settings)?;
            let pool = identity.bootstrap(&settings.region, settings.lifetimes)?;
            client_cmd::runtime()?.block_on(identity.remove_user_from_group(
                &pool.pool_id,
                &email,
                &group,
            ))?;
            outln!("{email} is no longer in group {group} (from their next sign-in)");
            Ok(())
        }
        Command::Keys(cmd) => {
            let keys = wiring::open_access_keys(&settings, wiring::open_db(&settings)?)?;
            match cmd {
                KeysCommand::Create {
                    description,
                    policy,
                    allow,
                } => {
                    let document = match (policy, allow.is_empty()) {
                        (Some(file), _) => Some(std::fs::read_to_string(&file).map_err(|e| {
                            usage(format!(
                                "cannot read the policy file {}: {e}",
                                file.display()
                            ))
                        })?),
                        (None, false) => Some(allow_policy(&allow)?),
                        (None, true) => None,
                    };
                    let k = keys
                        .create_with_policy(&description, document.as_deref())
                        .map_err(|e| match e {
                            sluice_identity::IdentityError::InvalidParameter(m) => usage(m),
                            e => e.into(),
                        })?;
                    outln!(
                        "{}",
                        serde_json::json!({"accessKeyId": k.id, "secretAccessKey": k.secret})
                    );
                }
                KeysCommand::List => {
                    for k in keys.list()? {
                        let scope = match (&k.owner, &k.policy) {
                            // What IAM's policies of the user or role allow.
                            (Some(owner), _) => format!("iam {owner}"),
                            (None, None) => "full-access".to_owned(),
                            // One line: the document as compact JSON.
                            (None, Some(doc)) => serde_json::from_str::<serde_json::Value>(doc)
                                .map(|v| v.to_string())
                                .unwrap_or_else(|_| doc.replace('\n', " ")),
                        };
                        outln!("{}\t{}\t{}", k.id, k.description, scope);
                    }
                }
                KeysCommand::Delete { id } => {
                    keys.delete(&id)?;
                    wiring::forget_credentials(&settings, &id)?;
                }
            }
            Ok(())
        }
        Command::Runtimes(RuntimesCommand::Install { node, python }) => {
            use sluice_processor::mappings::LambdaRuntime;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let cache = sluice_functions::runtimes::SdkCache::new(
                &settings.runtime_cache,
                "node",
                "python3",
            );
            let languages: Vec<LambdaRuntime> = match (node, python) {
                (true, _) => vec![LambdaRuntime::Nodejs],
                (_, true) => vec![LambdaRuntime::Python],
                _ => vec![LambdaRuntime::Nodejs, LambdaRuntime::Python],
            };
            for language in languages {
                let path = rt
                    .block_on(cache.install(language))
                    .map_err(anyhow::Error::msg)?;
                outln!("{}", path.display());
            }
            Ok(())
        }
        Command::Outbox {
            pool,
            limit,
            json,
            output,
        } => {
            let json = json || output == Some(client_cmd::Output::Json);
            let identity = wiring::open_identity(&settings)?;
            let pool = match pool {
                Some(p) => p,
                None => {
                    identity
                        .bootstrap(&settings.region, settings.lifetimes)?
                        .pool_id
                }
            };
            for m in identity.outbox(&pool, limit)? {
                if json {
                    let mut line = serde_json::json!({
                        "to": m.to, "kind": m.kind, "code": m.code,
                        "createdMs": m.created_ms, "delivery": m.delivery,
                        "deliveryError": m.delivery_error,
                    });
                    // The text a CustomMessage trigger wrote, when it wrote one.
                    if let Some(subject) = &m.subject {
                        line["subject"] = serde_json::json!(subject);
                    }
                    if let Some(body) = &m.body {
                        line["body"] = serde_json::json!(body);
                    }
                    outln!("{line}");
                } else {
                    let delivery = match (&m.delivery, &m.delivery_error) {
                        (Some(d), Some(e)) => format!("{d}: {e}"),
                        (Some(d), None) => d.clone(),
                        (None, _) => "-".into(),
                    };
                    outln!(
                        "{}\t{}\t{}\t{}\t{delivery}",
                        m.created_ms,
                        m.kind,
                        m.to,
                        m.code
                    );
                }
            }
            Ok(())
        }
        Command::Mapping(cmd) => mapping_cmd::run(&settings, cmd),
        Command::Logs {
            mapping,
            function,
            follow,
            lines,
            json,
            output,
        } => {
            let source = match (mapping, function) {
                (_, Some(f)) => mapping_cmd::LogSource::Function(f),
                (Some(m), None) => mapping_cmd::LogSource::Mapping(m),
                (None, None) => anyhow::bail!("name a mapping, or a function with --function"),
            };
            mapping_cmd::logs(
                &settings,
                &source,
                follow,
                lines,
                json || output == Some(client_cmd::Output::Json),
            )
        }
        Command::Doctor { stuck_after, deep } => doctor::run(&settings, stuck_after, deep),
        // Answered above, before any settings are read.
        Command::Completions { .. } => Ok(()),
        Command::Info { json, output } => {
            let json = json || output == Some(client_cmd::Output::Json);
            let info = wiring::info(&settings)?;
            if json {
                outln!("{}", serde_json::to_string(&info)?);
            } else {
                outln!("{}", wiring::describe(&info));
            }
            Ok(())
        }
    }
}
