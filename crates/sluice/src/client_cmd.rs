//! The client commands: `sluice login`, `logout`, `upload`, `uploads list|get|download`,
//! `status` and `stream tail` (see [`crate::client`] for how they find the server and keep
//! the sign-in). Each prints a table for people or, with `--output json`, JSON for scripts:
//! one document for a command that answers once, one JSON object per line for one that
//! follows (`--watch`, `--follow`, `upload --wait`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use futures_util::StreamExt as _;
use http_client as reqwest;
use serde_json::{Value, json};

use crate::client::{AccessKey, Server, Session, api_error};
use crate::config::Settings;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Columns for people
    #[default]
    Table,
    /// JSON for scripts
    Json,
}

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClientArgs {
    /// The server's upload API URL [default: the server running on the data directory]
    #[arg(long, env = "SLUICE_SERVER", value_name = "URL")]
    pub(crate) server: Option<String>,
    /// How to print the answer
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

#[derive(Subcommand)]
pub(crate) enum UploadsCommand {
    /// List your uploads, newest first.
    List {
        /// How many (the newest); 0 for all
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Then keep printing each change of your uploads as it happens
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one upload: status, keys, shard and sequence number, error.
    Get {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Save an upload's bytes (or, with --processed, its result).
    Download {
        id: String,
        /// The processed result instead of the original
        #[arg(long)]
        processed: bool,
        /// Where to write it; `-` for standard output [default: the file's name, in the
        /// current directory]
        #[arg(long, value_name = "PATH")]
        to: Option<PathBuf>,
        /// Replace a file that exists
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum StreamCommand {
    /// Print the stream's records as they arrive (all shards).
    Tail {
        /// The stream [default: the upload stream]
        stream: Option<String>,
        /// Start at the oldest record kept instead of the newest
        #[arg(long)]
        from_start: bool,
        /// Keep waiting for new records (otherwise stop once caught up)
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn out(line: &str) -> Result<()> {
    writeln!(std::io::stdout().lock(), "{line}")?;
    Ok(())
}

/// A single-threaded runtime for one command.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `sluice login`: signs in with the user pool and keeps the tokens.
pub(crate) fn login(
    settings: &Settings,
    client: &ClientArgs,
    email: &str,
    password_stdin: bool,
) -> Result<()> {
    runtime()?.block_on(async {
        let server = Server::find(settings, client.server.as_deref()).await?;
        let mut lines = PasswordSource::new(password_stdin);
        let password = lines.read("Password: ")?;
        let r = server
            .cognito(
                "InitiateAuth",
                json!({
                    "AuthFlow": "USER_PASSWORD_AUTH",
                    "ClientId": server.client_id,
                    "AuthParameters": {"USERNAME": email, "PASSWORD": password},
                }),
            )
            .await?;
        let result = if r["ChallengeName"] == "NEW_PASSWORD_REQUIRED" {
            let new = lines.read_new()?;
            server
                .cognito(
                    "RespondToAuthChallenge",
                    json!({
                        "ChallengeName": "NEW_PASSWORD_REQUIRED",
                        "ClientId": server.client_id,
                        "Session": r["Session"],
                        "ChallengeResponses": {"USERNAME": email, "NEW_PASSWORD": new},
                    }),
                )
                .await?
        } else if let Some(name) = r["ChallengeName"].as_str() {
            bail!("signing in needs the {name} step, which `sluice login` does not offer");
        } else {
            r
        };
        let session =
            Session::from_result(&server.api, email, &result["AuthenticationResult"], None)?;
        session.save()?;
        match client.output {
            Output::Json => out(
                &json!({"email": email, "server": server.api, "expiresAt": session.expires_at})
                    .to_string(),
            ),
            Output::Table => out(&format!("signed in to {} as {email}", server.api)),
        }
    })
}

/// Where passwords come from: standard input (one per line), or a prompt on the terminal.
struct PasswordSource {
    stdin: bool,
}

impl PasswordSource {
    fn new(stdin: bool) -> Self {
        PasswordSource { stdin }
    }

    fn read(&mut self, prompt: &str) -> Result<String> {
        use std::io::IsTerminal as _;
        let line = if self.stdin {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line
        } else if std::io::stdin().is_terminal() {
            prompt_hidden(prompt)?
        } else {
            bail!(
                "no password: pass --password-stdin and write it to standard input, or run on a terminal"
            );
        };
        let p = line.trim_end_matches(['\r', '\n']).to_owned();
        if p.is_empty() {
            bail!("the password is empty");
        }
        Ok(p)
    }

    /// The new password a NEW_PASSWORD_REQUIRED challenge asks for: the next line of
    /// standard input, or asked twice on the terminal.
    fn read_new(&mut self) -> Result<String> {
        if self.stdin {
            return self.read("").map_err(|_| {
                anyhow!("this user must choose a new password: write it on the line after the current one")
            });
        }
        let a = self.read("This user must choose a new password.\nNew password: ")?;
        let b = self.read("New password, again: ")?;
        if a != b {
            bail!("the two passwords differ");
        }
        Ok(a)
    }
}

/// Reads a line from the terminal with echo off.
fn prompt_hidden(prompt: &str) -> Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    eprint!("{prompt}");
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        let _ = tcsetattr(&stdin, OptionalActions::Now, &quiet);
    }
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, OptionalActions::Now, t);
    }
    eprintln!();
    read?;
    Ok(line)
}

/// `sluice logout`: ends the sign-in on the server (every token of it) and forgets it.
pub(crate) fn logout(settings: &Settings, client: &ClientArgs) -> Result<()> {
    runtime()?.block_on(async {
        let server = Server::find(settings, client.server.as_deref()).await?;
        let session = match Session::load(&server) {
            Ok(s) => s,
            Err(_) => return out(&format!("not signed in to {}", server.api)),
        };
        if let Err(e) = server
            .cognito(
                "GlobalSignOut",
                json!({"AccessToken": session.access_token}),
            )
            .await
        {
            // An expired access token cannot sign out; forgetting it is what is left.
            eprintln!("note: the server did not end the sign-in ({e}); it is forgotten here");
        }
        Session::forget(&server.api)?;
        out(&format!("signed out of {}", server.api))
    })
}

/// `sluice upload FILE…`: each file streamed to the upload API as a raw body.
pub(crate) fn upload(
    settings: &Settings,
    client: &ClientArgs,
    files: &[PathBuf],
    name: Option<&str>,
    wait: bool,
) -> Result<()> {
    if name.is_some() && files.len() > 1 {
        bail!("--name names one file; {} were given", files.len());
    }
    runtime()?.block_on(async {
        let server = Server::find(settings, client.server.as_deref()).await?;
        let mut session = Session::load(&server)?;
        let mut ids = Vec::new();
        let (started, mut total) = (std::time::Instant::now(), 0u64);
        if client.output == Output::Table {
            out(&format!("{:<36}  {:>10}  FILE", "UPLOAD ID", "SIZE"))?;
        }
        for file in files {
            let filename = match name {
                Some(n) => n.to_owned(),
                None => file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| {
                        anyhow!("{} has no usable file name; pass --name", file.display())
                    })?
                    .to_owned(),
            };
            let size = tokio::fs::metadata(file)
                .await
                .with_context(|| format!("cannot read {}", file.display()))?
                .len();
            let bar = indicatif::ProgressBar::new(size).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(filename.clone());
            let resp = server
                .api(&mut session, |http, api| {
                    let body = match std::fs::File::open(file) {
                        Ok(f) => reqwest::Body::wrap_stream(counted(
                            file_chunks(tokio::fs::File::from_std(f)),
                            bar.clone(),
                        )),
                        Err(e) => {
                            reqwest::Body::wrap_stream(futures_util::stream::once(async move {
                                Err::<bytes::Bytes, std::io::Error>(e)
                            }))
                        }
                    };
                    http.post(format!("{api}/uploads"))
                        .query(&[("filename", &filename)])
                        .header("Content-Type", "application/octet-stream")
                        .header("Content-Length", size)
                        .body(body)
                })
                .await
                .with_context(|| format!("cannot upload {}", file.display()))?;
            if !resp.status().is_success() {
                bar.abandon();
                return Err(api_error(resp).await)
                    .with_context(|| format!("{} was not uploaded", file.display()));
            }
            bar.finish_and_clear();
            total += size;
            let v: Value = serde_json::from_slice(&resp.bytes().await?)?;
            let id = v["uploadId"].as_str().unwrap_or_default().to_owned();
            match client.output {
                Output::Json => out(&v.to_string())?,
                Output::Table => out(&format!("{id:<36}  {:>10}  {filename}", human_size(size)))?,
            }
            ids.push(id);
        }
        if client.output == Output::Table {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "{} file{}, {} in {secs:.1} s ({}/s)",
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                human_size(total),
                human_size((total as f64 / secs) as u64)
            );
        }
        if !wait {
            return Ok(());
        }
        // Until each is processed or failed.
        let mut failed = 0;
        for id in &ids {
            let v = loop {
                let resp = server
                    .api(&mut session, |http, api| {
                        http.get(format!("{api}/uploads/{id}"))
                    })
                    .await?;
                if !resp.status().is_success() {
                    return Err(api_error(resp).await);
                }
                let v: Value = serde_json::from_slice(&resp.bytes().await?)?;
                if v["status"] == "processed" || v["status"] == "failed" {
                    break v;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            if v["status"] == "failed" {
                failed += 1;
            }
            match client.output {
                Output::Json => out(&v.to_string())?,
                Output::Table => out(&format!(
                    "{id}  {}{}",
                    v["status"].as_str().unwrap_or(""),
                    v["error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ))?,
            }
        }
        if failed > 0 {
            bail!("{failed} of {} uploads failed", ids.len());
        }
        Ok(())
    })
}

/// `chunks`, advancing `bar` by each chunk's size as it is sent.
fn counted(
    chunks: impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    bar: indicatif::ProgressBar,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    chunks.inspect(move |c| {
        if let Ok(b) = c {
            bar.inc(b.len() as u64);
        }
    })
}

/// A file as a stream of chunks, read as the request is sent.
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt as _;
        let mut f = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

pub(crate) fn human_size(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB"] {
        v /= 1024.0;
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
    }
    format!("{v:.1} PiB")
}

fn row(v: &Value) -> String {
    format!(
        "{:<36}  {:<10}  {:>10}  {:<24}  {}",
        v["uploadId"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or(""),
        human_size(v["size"].as_u64().unwrap_or(0)),
        v["createdAt"].as_str().unwrap_or(""),
        v["filename"].as_str().unwrap_or(""),
    )
}

const ROW_HEAD: &str =
    "UPLOAD ID                             STATUS            SIZE  CREATED                   FILE";

pub(crate) fn uploads(settings: &Settings, cmd: UploadsCommand) -> Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            UploadsCommand::List {
                limit,
                watch,
                client,
            } => list(settings, &client, limit, watch).await,
            UploadsCommand::Get { id, client } => {
                let server = Server::find(settings, client.server.as_deref()).await?;
                let mut session = Session::load(&server)?;
                let resp = server
                    .api(&mut session, |http, api| {
                        http.get(format!("{api}/uploads/{}", encode(&id)))
                    })
                    .await?;
                if !resp.status().is_success() {
                    return Err(api_error(resp).await);
                }
                let v: Value = serde_json::from_slice(&resp.bytes().await?)?;
                match client.output {
                    Output::Json => out(&serde_json::to_string_pretty(&v)?),
                    Output::Table => {
                        if let Some(map) = v.as_object() {
                            for (k, val) in map {
                                let shown = match val {
                                    Value::String(s) => s.clone(),
                                    Value::Null => "-".into(),
                                    Value::Object(o) => format!(
                                        "{}/{}",
                                        o.get("bucket").and_then(Value::as_str).unwrap_or(""),
                                        o.get("key").and_then(Value::as_str).unwrap_or("")
                                    ),
                                    other => other.to_string(),
                                };
                                out(&format!("{k:<16} {shown}"))?;
                            }
                        }
                        Ok(())
                    }
                }
            }
            UploadsCommand::Download {
                id,
                processed,
                to,
                force,
                client,
            } => download(settings, &client, &id, processed, to, force).await,
        }
    })
}

fn encode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(char::from(b));
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

async fn list(settings: &Settings, client: &ClientArgs, limit: usize, watch: bool) -> Result<()> {
    let server = Server::find(settings, client.server.as_deref()).await?;
    let mut session = Session::load(&server)?;
    let started = sluice_meta::now_ms();
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = if limit == 0 {
            100
        } else {
            (limit - all.len()).min(100)
        };
        let next_q = next.clone();
        let resp = server
            .api(&mut session, |http, api| {
                let mut q = vec![("limit", page.to_string())];
                if let Some(n) = &next_q {
                    q.push(("next", n.clone()));
                }
                http.get(format!("{api}/uploads")).query(&q)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        let v: Value = serde_json::from_slice(&resp.bytes().await?)?;
        all.extend(v["uploads"].as_array().cloned().unwrap_or_default());
        next = v["next"].as_str().map(str::to_owned);
        if next.is_none() || (limit != 0 && all.len() >= limit) {
            break;
        }
    }
    match (client.output, watch) {
        (Output::Json, false) => out(&serde_json::to_string_pretty(&all)?)?,
        (Output::Json, true) => {
            for u in &all {
                out(&u.to_string())?;
            }
        }
        (Output::Table, _) => {
            out(ROW_HEAD)?;
            for u in &all {
                out(&row(u))?;
            }
        }
    }
    if !watch {
        return Ok(());
    }
    // Events may repeat a state already shown (the live view re-reads a few seconds around
    // each reconnect): only a change is printed.
    let state = |u: &Value| (u["updatedAt"].to_string(), u["status"].to_string());
    let mut shown: std::collections::HashMap<String, (String, String)> = all
        .iter()
        .map(|u| (u["uploadId"].as_str().unwrap_or("").to_owned(), state(u)))
        .collect();
    follow_events(&server, &mut session, started, |u| {
        let id = u["uploadId"].as_str().unwrap_or("").to_owned();
        if shown.get(&id) == Some(&state(u)) {
            return Ok(());
        }
        shown.insert(id, state(u));
        match client.output {
            Output::Json => out(&u.to_string()),
            Output::Table => out(&row(u)),
        }
    })
    .await
}

/// Prints every change of the user's uploads from `since` on, reconnecting (with
/// `Last-Event-ID`) whenever the stream ends, until interrupted.
async fn follow_events(
    server: &Server,
    session: &mut Session,
    since: i64,
    mut print: impl FnMut(&Value) -> Result<()>,
) -> Result<()> {
    let mut last_id = since.to_string();
    loop {
        let id = last_id.clone();
        let resp = server
            .api(session, |http, api| {
                http.get(format!("{api}/uploads/events"))
                    .header("Last-Event-ID", &id)
            })
            .await;
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                // Refreshed at the next call when it expired; otherwise it is over.
                if session.expires_at - sluice_meta::now_ms() > 60_000 {
                    return Err(api_error(r).await);
                }
                continue;
            }
            Ok(r) => return Err(api_error(r).await),
            Err(e) => {
                eprintln!("note: {e:#}; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let (mut event, mut data, mut id) = (String::new(), String::new(), None::<String>);
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    if let Some(i) = id.take() {
                        last_id = i;
                    }
                    if event == "upload"
                        && let Ok(v) = serde_json::from_str::<Value>(&data)
                    {
                        print(&v)?;
                    }
                    event.clear();
                    data.clear();
                    continue;
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event = value.to_owned(),
                    "data" => data.push_str(value),
                    "id" => id = Some(value.to_owned()),
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn download(
    settings: &Settings,
    client: &ClientArgs,
    id: &str,
    processed: bool,
    to: Option<PathBuf>,
    force: bool,
) -> Result<()> {
    let server = Server::find(settings, client.server.as_deref()).await?;
    let mut session = Session::load(&server)?;
    let which = if processed { "processed" } else { "content" };
    let resp = server
        .api(&mut session, |http, api| {
            http.get(format!("{api}/uploads/{}/{which}", encode(id)))
        })
        .await?;
    if !resp.status().is_success() {
        return Err(api_error(resp).await);
    }
    let name = resp
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .and_then(disposition_name)
        .unwrap_or_else(|| format!("{id}-{which}"));
    let mut body = resp.bytes_stream();
    if to.as_deref() == Some(Path::new("-")) {
        let mut stdout = std::io::stdout().lock();
        while let Some(chunk) = body.next().await {
            stdout.write_all(&chunk.context("the download broke off")?)?;
        }
        stdout.flush()?;
        return Ok(());
    }
    let path = to.unwrap_or_else(|| PathBuf::from(&name));
    if path.exists() && !force {
        bail!(
            "{} exists; pass --force to replace it, or --to another path",
            path.display()
        );
    }
    // Written beside the target and renamed once complete and on disk: an interrupted
    // download never leaves a truncated file under the real name.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{name}.sluice-download.{}", std::process::id()));
    let result = async {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the download broke off")?;
            size += chunk.len() as u64;
            f.write_all(&chunk)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok::<_, anyhow::Error>(size)
    }
    .await;
    let size = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    match client.output {
        Output::Json => out(&json!({"path": path, "bytes": size}).to_string()),
        Output::Table => out(&format!("saved {} ({})", path.display(), human_size(size))),
    }
}

/// The file name of a `Content-Disposition: attachment` answer: the UTF-8 one when there
/// is one; only its last path component, never `.`/`..` or a hidden name.
fn disposition_name(v: &str) -> Option<String> {
    let star = v
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("filename*=UTF-8''"))
        .map(percent_decode);
    let plain = v
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("filename="))
        .map(|p| p.trim_matches('"').to_owned());
    let name = star.or(plain)?;
    let name = name.rsplit(['/', '\\']).next().unwrap_or("").to_owned();
    (!name.is_empty() && !name.starts_with('.')).then_some(name)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `sluice status`: is the server up and ready, and who is signed in.
pub(crate) fn status(settings: &Settings, client: &ClientArgs) -> Result<()> {
    runtime()?.block_on(async {
        let server = Server::find(settings, client.server.as_deref()).await?;
        let ready = server
            .http
            .get(format!("{}/readyz", server.api))
            .send()
            .await;
        let (ready, detail) = match ready {
            Ok(r) => {
                let ok = r.status().is_success();
                let v: Value = serde_json::from_slice(&r.bytes().await.unwrap_or_default())
                    .unwrap_or(Value::Null);
                (ok, v)
            }
            Err(e) => (false, json!({"error": e.to_string()})),
        };
        let edge_up = server
            .http
            .get(format!("{}/", server.edge))
            .send()
            .await
            .is_ok();
        let mut session = Session::load(&server).ok();
        // An operator also sees the streams and mappings (`/admin/overview`); for anyone
        // else that part is left out.
        let mut overview = Value::Null;
        if let Some(s) = session.as_mut()
            && let Ok(r) = server
                .api(s, |http, api| http.get(format!("{api}/admin/overview")))
                .await
            && r.status().is_success()
        {
            overview =
                serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or(Value::Null);
        }
        let v = json!({
            "streams": overview["streams"],
            "mappings": overview["mappings"],
            "uploads": overview["uploads"],
            "api": server.api,
            "edge": server.edge,
            "edgeReachable": edge_up,
            "ready": ready,
            "readiness": detail,
            "stream": server.stream,
            "signedInAs": session.as_ref().map(|s| s.email.clone()),
            "tokenExpiresAt": session.as_ref().map(|s| s.expires_at),
        });
        match client.output {
            Output::Json => out(&serde_json::to_string_pretty(&v)?)?,
            Output::Table => {
                out(&format!(
                    "API:        {} ({})",
                    server.api,
                    if ready { "ready" } else { "NOT READY" }
                ))?;
                if !ready {
                    out(&format!("            {detail}"))?;
                }
                out(&format!(
                    "Edge:       {} ({})",
                    server.edge,
                    if edge_up { "reachable" } else { "UNREACHABLE" }
                ))?;
                out(&format!("Stream:     {}", server.stream))?;
                out(&format!(
                    "Signed in:  {}",
                    session
                        .as_ref()
                        .map_or("no (sluice login)".to_owned(), |s| s.email.clone())
                ))?;
                for st in overview["streams"].as_array().into_iter().flatten() {
                    out(&format!(
                        "Stream:     {} ({}, {} open shards, {} h retention)",
                        st["name"].as_str().unwrap_or(""),
                        st["status"].as_str().unwrap_or(""),
                        st["openShards"],
                        st["retentionHours"]
                    ))?;
                }
                for m in overview["mappings"].as_array().into_iter().flatten() {
                    out(&format!(
                        "Mapping:    {} {} ({}; last result {}; {} ms behind)",
                        m["name"].as_str().unwrap_or(""),
                        m["state"].as_str().unwrap_or(""),
                        m["function"].as_str().unwrap_or(""),
                        m["lastProcessingResult"]
                            .as_str()
                            .filter(|r| !r.is_empty())
                            .unwrap_or("-"),
                        m["stats"]["millisBehindLatest"]
                    ))?;
                }
                if let Some(counts) = overview["uploads"].as_object() {
                    let shown: Vec<String> =
                        counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
                    out(&format!("Uploads:    {}", shown.join(", ")))?;
                }
            }
        }
        if !ready || !edge_up {
            bail!("the server is not ready");
        }
        Ok(())
    })
}

/// `sluice stream tail`: the stream's records through the edge's Kinesis API.
pub(crate) fn stream(settings: &Settings, cmd: StreamCommand) -> Result<()> {
    let StreamCommand::Tail {
        stream,
        from_start,
        follow,
        client,
    } = cmd;
    let key = AccessKey::find(settings)?;
    runtime()?.block_on(async move {
        let server = Server::find(settings, client.server.as_deref()).await?;
        let stream = stream.unwrap_or_else(|| server.stream.clone());
        let kind = if from_start { "TRIM_HORIZON" } else { "LATEST" };
        // shard id -> iterator
        let mut iterators: std::collections::BTreeMap<String, String> = Default::default();
        let mut known: std::collections::BTreeSet<String> = Default::default();
        let mut first = true;
        let mut listed_at = std::time::Instant::now();
        if client.output == Output::Table {
            out(&format!(
                "{:<20}  {:<56}  {:<24}  DATA",
                "SHARD", "SEQUENCE NUMBER", "ARRIVED"
            ))?;
        }
        loop {
            if first || listed_at.elapsed() > Duration::from_secs(10) {
                let shards = server
                    .kinesis(&key, "ListShards", json!({"StreamName": stream}))
                    .await?;
                for s in shards["Shards"].as_array().cloned().unwrap_or_default() {
                    let id = s["ShardId"].as_str().unwrap_or_default().to_owned();
                    if !known.insert(id.clone()) {
                        continue;
                    }
                    // Shards that appear later (a split or merge) are read from their start.
                    let kind = if first { kind } else { "TRIM_HORIZON" };
                    let it = server
                        .kinesis(
                            &key,
                            "GetShardIterator",
                            json!({"StreamName": stream, "ShardId": id, "ShardIteratorType": kind}),
                        )
                        .await?;
                    if let Some(i) = it["ShardIterator"].as_str() {
                        iterators.insert(id, i.to_owned());
                    }
                }
                first = false;
                listed_at = std::time::Instant::now();
            }
            let mut caught_up = true;
            let shards: Vec<String> = iterators.keys().cloned().collect();
            for shard in shards {
                let Some(it) = iterators.get(&shard).cloned() else {
                    continue;
                };
                let r = server
                    .kinesis(
                        &key,
                        "GetRecords",
                        json!({"ShardIterator": it, "Limit": 1000}),
                    )
                    .await?;
                for rec in r["Records"].as_array().cloned().unwrap_or_default() {
                    print_record(client.output, &shard, &rec)?;
                }
                if r["MillisBehindLatest"].as_i64().unwrap_or(0) > 0
                    || r["Records"].as_array().is_some_and(|a| !a.is_empty())
                {
                    caught_up = false;
                }
                match r["NextShardIterator"].as_str() {
                    Some(n) => {
                        iterators.insert(shard, n.to_owned());
                    }
                    None => {
                        // A closed shard, read to its end.
                        iterators.remove(&shard);
                    }
                }
            }
            if caught_up {
                if !follow {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    })
}

fn print_record(output: Output, shard: &str, rec: &Value) -> Result<()> {
    use base64::Engine as _;
    let data = rec["Data"].as_str().unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap_or_default();
    let arrived = rec["ApproximateArrivalTimestamp"]
        .as_f64()
        .map(|t| {
            chrono::DateTime::from_timestamp_millis((t * 1000.0) as i64)
                .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    match output {
        Output::Json => out(&json!({
            "shardId": shard,
            "sequenceNumber": rec["SequenceNumber"],
            "partitionKey": rec["PartitionKey"],
            "arrived": arrived,
            "data": data,
        })
        .to_string()),
        Output::Table => {
            let shown = match std::str::from_utf8(&bytes) {
                Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
                    s.replace('\n', "\\n")
                }
                _ => format!("base64:{data}"),
            };
            out(&format!(
                "{:<20}  {:<56}  {:<24}  {shown}",
                shard,
                rec["SequenceNumber"].as_str().unwrap_or(""),
                arrived
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_are_one_safe_component() {
        assert_eq!(
            disposition_name(
                "attachment; filename=\"_t_.txt\"; filename*=UTF-8''%C3%A9t%C3%A9.txt"
            )
            .as_deref(),
            Some("\u{e9}t\u{e9}.txt")
        );
        assert_eq!(
            disposition_name("attachment; filename=\"a.txt\"").as_deref(),
            Some("a.txt")
        );
        assert_eq!(
            disposition_name("attachment; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd").as_deref(),
            Some("passwd")
        );
        assert_eq!(disposition_name("attachment; filename=\"..\""), None);
        assert_eq!(disposition_name("attachment; filename=\".bashrc\""), None);
        assert_eq!(disposition_name("attachment"), None);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
