//! What the client commands (`sluice login`, `upload`, `uploads …`, `status`, `stream tail`)
//! share: finding the server, the saved sign-in, and HTTP calls to the upload API and the
//! edge. They are clients like any other — over HTTP, with the same tokens and keys — so
//! they work against a server on another machine (`--server`) as well as the local one.
//!
//! *Which server.* `--server URL` (`SLUICE_SERVER`), the upload API's URL; otherwise the
//! server running on the data directory (its `run.json`). Neither: an error that says how to
//! start one; a client command never creates a data directory. What else a client needs
//! (the app client id, where the edge is) comes from the server's `/console/config.json`,
//! the document the web console starts from.
//!
//! *The saved sign-in.* `sluice login` keeps the tokens in
//! `$XDG_CONFIG_HOME/sluice/sessions.json` (default `~/.config/sluice/`), one entry per API
//! URL, mode 0600, written to a temporary file and renamed. The ID token is refreshed
//! (`REFRESH_TOKEN_AUTH`) when less than a minute of it is left.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use http_client as reqwest;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Settings;

/// Retries of a Kinesis call its shard's throughput refused (backoff from 100 ms, doubling,
/// at most 2 s: about 10 s in all).
const THROTTLED_RETRIES: usize = 8;

/// A server as a client sees it.
pub(crate) struct Server {
    pub(crate) http: reqwest::Client,
    /// The upload API, without a trailing slash.
    pub(crate) api: String,
    /// The edge (Cognito, Kinesis, S3), without a trailing slash.
    pub(crate) edge: String,
    pub(crate) client_id: String,
    pub(crate) region: String,
    pub(crate) stream: String,
}

/// The console's configuration document: what a client learns from the server.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Discovery {
    client_id: String,
    region: String,
    edge_url: Option<String>,
    edge_port: u16,
    stream: String,
}

impl Server {
    /// The server `--server` names, or the one running on the data directory.
    pub(crate) async fn find(settings: &Settings, server: Option<&str>) -> Result<Server> {
        let api = match server {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => match crate::wiring::running(settings) {
                Some(run) => run.api_url,
                None => bail!(no_server(settings)),
            },
        };
        let url = reqwest::Url::parse(&api).with_context(|| {
            format!("--server {api:?} is not a URL (e.g. http://127.0.0.1:8080)")
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("--server {api:?}: the scheme must be http or https");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .context("cannot build an HTTP client")?;
        let config = format!("{api}/console/config.json");
        let resp = http
            .get(&config)
            .send()
            .await
            .map_err(|e| anyhow!("no sluice server answers at {api} ({e}) — start it with `sluice serve`, or pass --server URL"))?;
        if !resp.status().is_success() {
            bail!(
                "{api} answered {} to {config}: is it a sluice server?",
                resp.status()
            );
        }
        let d: Discovery = serde_json::from_slice(&resp.bytes().await?)
            .with_context(|| format!("{config} is not the document a sluice server serves"))?;
        let edge = match d.edge_url {
            Some(e) => e.trim_end_matches('/').to_owned(),
            None => format!(
                "{}://{}:{}",
                url.scheme(),
                url.host_str().unwrap_or("127.0.0.1"),
                d.edge_port
            ),
        };
        Ok(Server {
            http,
            api,
            edge,
            client_id: d.client_id,
            region: d.region,
            stream: d.stream,
        })
    }

    /// A Cognito operation on the edge (JSON 1.1); its error as Cognito's type and message.
    pub(crate) async fn cognito(&self, op: &str, body: Value) -> Result<Value> {
        let resp = self
            .http
            .post(format!("{}/", self.edge))
            .header(
                "X-Amz-Target",
                format!("AWSCognitoIdentityProviderService.{op}"),
            )
            .header("Content-Type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("cannot reach the sign-in service at {}", self.edge))?;
        let ok = resp.status().is_success();
        let v: Value = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
        if !ok {
            let kind = v["__type"].as_str().unwrap_or("Error");
            let kind = kind.rsplit('#').next().unwrap_or(kind);
            bail!(
                "{kind}: {}",
                v["message"]
                    .as_str()
                    .unwrap_or("the sign-in service refused")
            );
        }
        Ok(v)
    }

    /// A Kinesis operation on the edge, signed with `key` (SigV4, service `kinesis`). A
    /// refusal for a shard's throughput (`ProvisionedThroughputExceededException`: a shard
    /// takes 5 GetRecords calls a second) is retried with backoff, as the AWS SDKs do.
    pub(crate) async fn kinesis(&self, key: &AccessKey, op: &str, body: Value) -> Result<Value> {
        let mut delay = Duration::from_millis(100);
        for _ in 0..THROTTLED_RETRIES {
            match self.kinesis_once(key, op, &body).await? {
                Ok(v) => return Ok(v),
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        match self.kinesis_once(key, op, &body).await? {
            Ok(v) => Ok(v),
            Err(message) => {
                bail!("kinesis {op}: ProvisionedThroughputExceededException: {message}")
            }
        }
    }

    /// One attempt of [`Self::kinesis`]: `Ok(Err(message))` when the shard's throughput
    /// refused it.
    async fn kinesis_once(
        &self,
        key: &AccessKey,
        op: &str,
        body: &Value,
    ) -> Result<std::result::Result<Value, String>> {
        let url = reqwest::Url::parse(&format!("{}/", self.edge))?;
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_owned(),
        };
        let payload = body.to_string();
        let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let target = format!("Kinesis_20131202.{op}");
        let headers = vec![
            (
                "content-type".to_owned(),
                "application/x-amz-json-1.1".to_owned(),
            ),
            ("host".to_owned(), host),
            ("x-amz-date".to_owned(), amz_date.clone()),
            ("x-amz-target".to_owned(), target.clone()),
        ];
        let hash = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(payload.as_bytes()))
        };
        let auth = sluice_compat::sigv4::authorization_header(
            &sluice_compat::sigv4::SignedRequest {
                method: "POST",
                path: "/",
                query: "",
                headers: &headers,
                payload_hash: &hash,
            },
            &key.id,
            &key.secret,
            &self.region,
            "kinesis",
        )
        .map_err(|e| anyhow!("cannot sign the request: {e}"))?;
        let resp = self
            .http
            .post(url)
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("X-Amz-Date", amz_date)
            .header("X-Amz-Target", target)
            .header("Authorization", auth)
            .body(payload)
            .send()
            .await
            .with_context(|| format!("cannot reach the edge at {}", self.edge))?;
        let ok = resp.status().is_success();
        let v: Value = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
        if !ok {
            let kind = v["__type"].as_str().unwrap_or("Error");
            if kind == "ProvisionedThroughputExceededException" {
                return Ok(Err(v["message"].as_str().unwrap_or_default().to_owned()));
            }
            bail!(
                "kinesis {op}: {kind}: {}",
                v["message"].as_str().unwrap_or("refused")
            );
        }
        Ok(Ok(v))
    }

    /// An upload API request with the saved sign-in's ID token.
    pub(crate) async fn api(
        &self,
        session: &mut Session,
        req: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let token = session.id_token(self).await?;
        let resp = req(&self.http, &self.api)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot reach the upload API at {}", self.api))?;
        Ok(resp)
    }
}

/// The answer of a failed upload API call, as an error with the API's message.
pub(crate) async fn api_error(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let body: Value = resp
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    match body["message"].as_str() {
        Some(m) if status == reqwest::StatusCode::UNAUTHORIZED => anyhow!(
            "{status}: {m} ({}) — sign in again with `sluice login`",
            body["error_description"].as_str().unwrap_or("")
        ),
        Some(m) => anyhow!("{status}: {m}"),
        None => anyhow!("{status}"),
    }
}

fn no_server(settings: &Settings) -> String {
    if settings.data_dir.exists() {
        format!(
            "no server is running on {} — start it with `sluice serve`, or pass --server URL",
            settings.data_dir.display()
        )
    } else {
        format!(
            "no server at {} (there is no such data directory) — start one with `sluice serve`, or pass --server URL",
            settings.data_dir.display()
        )
    }
}

/// Tokens of one sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Session {
    pub(crate) email: String,
    pub(crate) id_token: String,
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
    /// Milliseconds since the epoch.
    pub(crate) expires_at: i64,
    /// The API URL it belongs to (the key it is saved under).
    #[serde(skip)]
    api: String,
}

impl Session {
    /// A session from an `AuthenticationResult`.
    pub(crate) fn from_result(
        api: &str,
        email: &str,
        r: &Value,
        refresh: Option<&str>,
    ) -> Result<Session> {
        let field = |name: &str| {
            r[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("the sign-in answer has no {name}"))
        };
        Ok(Session {
            email: email.to_owned(),
            id_token: field("IdToken")?,
            access_token: field("AccessToken")?,
            refresh_token: match refresh {
                Some(t) => t.to_owned(),
                None => field("RefreshToken")?,
            },
            expires_at: sluice_meta::now_ms() + r["ExpiresIn"].as_i64().unwrap_or(3600) * 1000,
            api: api.to_owned(),
        })
    }

    /// The saved sign-in for `server`, or an error that says to sign in.
    pub(crate) fn load(server: &Server) -> Result<Session> {
        let all = read_sessions()?;
        let mut s = all.get(&server.api).cloned().ok_or_else(|| {
            anyhow!(
                "not signed in to {} — run `sluice login --email you@example.com`",
                server.api
            )
        })?;
        s.api = server.api.clone();
        Ok(s)
    }

    pub(crate) fn save(&self) -> Result<()> {
        let mut all = read_sessions()?;
        all.insert(self.api.clone(), self.clone());
        write_sessions(&all)
    }

    pub(crate) fn forget(api: &str) -> Result<bool> {
        let mut all = read_sessions()?;
        let had = all.remove(api).is_some();
        if had {
            write_sessions(&all)?;
        }
        Ok(had)
    }

    /// The ID token, refreshed first when less than a minute of it is left.
    pub(crate) async fn id_token(&mut self, server: &Server) -> Result<String> {
        if self.expires_at - sluice_meta::now_ms() < 60_000 {
            let r = server
                .cognito(
                    "InitiateAuth",
                    json!({
                        "AuthFlow": "REFRESH_TOKEN_AUTH",
                        "ClientId": server.client_id,
                        "AuthParameters": {"REFRESH_TOKEN": self.refresh_token},
                    }),
                )
                .await
                .map_err(|e| anyhow!("your sign-in has ended ({e}) — run `sluice login` again"))?;
            let refreshed = Session::from_result(
                &self.api,
                &self.email,
                &r["AuthenticationResult"],
                Some(&self.refresh_token),
            )?;
            *self = refreshed;
            self.save()?;
        }
        Ok(self.id_token.clone())
    }
}

fn sessions_file() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| {
            anyhow!("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the sign-in")
        })?;
    Ok(base.join("sluice").join("sessions.json"))
}

fn read_sessions() -> Result<BTreeMap<String, Session>> {
    let path = sessions_file()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is damaged; delete it and sign in again", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_sessions(all: &BTreeMap<String, Session>) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = sessions_file()?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let text = serde_json::to_vec_pretty(all)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// An access key to sign edge requests with.
pub(crate) struct AccessKey {
    pub(crate) id: String,
    pub(crate) secret: String,
}

impl AccessKey {
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, else the data directory's development
    /// key (`<data-dir>/credentials`).
    pub(crate) fn find(settings: &Settings) -> Result<AccessKey> {
        if let (Ok(id), Ok(secret)) = (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) && !id.is_empty()
            && !secret.is_empty()
        {
            return Ok(AccessKey { id, secret });
        }
        let path = settings.credentials_file();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow!(
                "no access key: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (`sluice keys create` makes one), or run on the server's data directory ({}: {e})",
                path.display()
            )
        })?;
        let value = |name: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_owned())
        };
        match (value("aws_access_key_id"), value("aws_secret_access_key")) {
            (Some(id), Some(secret)) => Ok(AccessKey { id, secret }),
            _ => bail!("{} holds no access key", path.display()),
        }
    }
}
