//! Opening the embedded parts on a data directory, shared by `serve` and the client commands.

use anyhow::{Context, Result};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_identity::Identity;
use sluice_identity::access_keys::{AccessKey, AccessKeys};
use sluice_meta::{Meta, Migration};

use crate::config::Settings;

/// Every part's tables, in one database file.
fn migrations() -> Vec<Migration> {
    let mut all = Vec::new();
    for part in [
        sluice_identity::MIGRATIONS,
        sluice_identity::access_keys::MIGRATIONS,
        sluice_store::embedded::MIGRATIONS,
        sluice_stream::embedded::MIGRATIONS,
        sluice_uploads::embedded::MIGRATIONS,
        sluice_processor::embedded::MIGRATIONS,
        sluice_functions::MIGRATIONS,
        sluice_apis::MIGRATIONS,
        sluice_iam::MIGRATIONS,
    ] {
        all.extend_from_slice(part);
    }
    all
}

/// The metadata engine the settings name, migrated.
pub(crate) fn open_db(settings: &Settings) -> Result<Meta> {
    create_data_dir(settings)?;
    check_engines(settings)?;
    sluice_meta::open(&settings.meta, &migrations()).with_context(|| {
        format!(
            "cannot open the metadata engine {}",
            shown_url(&settings.meta)
        )
    })
}

/// The engines a data directory was first used with, in `<data-dir>/engines.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Engines {
    /// The metadata engine, without password or options: `sqlite:///abs/path` or
    /// `postgres://user@host:port/db`.
    meta: String,
}

/// The metadata URL as recorded: a SQLite path made absolute, a server URL without its
/// password and options.
fn recorded_meta(settings: &Settings) -> String {
    match settings.sqlite_path() {
        Some(path) => {
            let abs = std::path::absolute(&path).unwrap_or(path);
            format!("sqlite://{}", abs.display())
        }
        None => shown_url(&settings.meta)
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Refuses to open another metadata engine than the one the data directory was first used
/// with (say, a client command that forgot `--meta` beside a server on PostgreSQL would
/// otherwise create an empty SQLite database and work on that).
fn check_engines(settings: &Settings) -> Result<()> {
    let path = settings.data_dir.join("engines.json");
    let mine = Engines {
        meta: recorded_meta(settings),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let recorded: Engines = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid", path.display()))?;
            if recorded.meta != mine.meta {
                anyhow::bail!(
                    "the data directory {} keeps its metadata in {}, not {}: pass that with --meta (or SLUICE_META, or [meta] url in sluice.toml); to move to another engine, use a new data directory",
                    settings.data_dir.display(),
                    recorded.meta,
                    mine.meta
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&mine)?)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .with_context(|| format!("cannot write {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A URL without its secrets, for messages: the password of `scheme://user:password@host`,
/// and the values of secret parameters (`secret_access_key`, `session_token`, `password`).
/// The upload API's token check: sluice's own pool (`own`), and the external OpenID Connect
/// issuers of the settings, whose keys are loaded now (an issuer that cannot be reached is
/// logged; its tokens are refused until a refresh succeeds) and refreshed in the background.
pub(crate) async fn api_tokens(
    settings: &Settings,
    own: Arc<dyn sluice_gateway::Authorizer>,
    leeway_secs: i64,
) -> anyhow::Result<Arc<dyn sluice_gateway::Authorizer>> {
    use sluice_gateway::oidc::{ExternalIssuers, Fetch, OidcAuthorizer};
    if settings.external_issuers.is_empty() {
        return Ok(own);
    }
    /// Largest discovery document or key set read.
    const MAX_BODY: usize = 1 << 20;
    let http = http_client::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let fetch: Fetch = Arc::new(move |url: String| {
        let http = http.clone();
        Box::pin(async move {
            let mut resp = http
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("GET {url}: {}", resp.status()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(format!("GET {url}: more than {MAX_BODY} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })
    });
    let external = ExternalIssuers::new(settings.external_issuers.clone(), fetch, leeway_secs);
    external.load().await;
    external.spawn_refresher();
    for i in &settings.external_issuers {
        tracing::info!(issuer = %i.issuer, audiences = ?i.audiences, "the upload API accepts this issuer's tokens");
    }
    Ok(Arc::new(OidcAuthorizer {
        external,
        own: settings.pool_tokens.then_some(own),
    }))
}

pub(crate) fn shown_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) => {
                format!("{scheme}://{}@{host}", user.split(':').next().unwrap_or(""))
            }
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    let Some(query) = query else {
        return base;
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if matches!(k, "secret_access_key" | "session_token" | "password") => {
                format!("{k}=***")
            }
            _ => p.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// Creates the data directory (mode 0700) or checks an existing one (see `datadir`).
pub(crate) fn create_data_dir(settings: &Settings) -> Result<()> {
    crate::datadir::prepare(&settings.data_dir).map(drop)
}

/// The access keys, their secrets sealed under the data directory's key file (blocking).
pub(crate) fn open_access_keys(settings: &Settings, db: Meta) -> Result<AccessKeys> {
    let file = settings.access_key_file();
    AccessKeys::open(db, &file)
        .with_context(|| format!("cannot open the access keys (key file {})", file.display()))
}

/// Writes the development key's credentials to `<data-dir>/credentials` (mode 0600, the
/// AWS shared credentials file format, profile `default`), so that its secret need not be
/// printed: `AWS_SHARED_CREDENTIALS_FILE=<that file>` makes the AWS CLI and SDKs use it.
pub(crate) fn write_credentials(
    settings: &Settings,
    key: &AccessKey,
    edge_url: &str,
) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let path = settings.credentials_file();
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let text = format!(
        "# The development access key of this sluice data directory, created at its first start.\n\
         # Use: AWS_SHARED_CREDENTIALS_FILE={} aws --endpoint-url {edge_url} …\n\
         # `sluice keys delete {}` deletes the key and this file; `sluice keys create` makes others.\n\
         [default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        path.display(),
        key.id,
        key.id,
        key.secret
    );
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| sluice_meta::sync_dir(&settings.data_dir))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Removes `<data-dir>/credentials` if it holds the key `id` (which was just deleted).
pub(crate) fn forget_credentials(settings: &Settings, id: &str) -> Result<()> {
    let path = settings.credentials_file();
    let holds = std::fs::read_to_string(&path).is_ok_and(|text| {
        text.lines().any(|l| {
            l.split_once('=')
                .is_some_and(|(k, v)| k.trim() == "aws_access_key_id" && v.trim() == id)
        })
    });
    if holds {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// The identity part as a client command sees it (the issuer base comes from the running
/// server when there is one).
pub(crate) fn open_identity(settings: &Settings) -> Result<Identity> {
    let db = open_db(settings)?;
    let edge_url = running(settings)
        .map(|r| r.edge_url)
        .unwrap_or_else(|| settings.edge_url_for(settings.edge_listen));
    Ok(Identity::new(db, &settings.key_dir(), &edge_url))
}

/// What `sluice serve` writes to `<data>/run.json` once it is ready, and removes at exit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunInfo {
    pub(crate) pid: u32,
    pub(crate) api_url: String,
    pub(crate) edge_url: String,
}

/// The running server's addresses, if a live server wrote them.
pub(crate) fn running(settings: &Settings) -> Option<RunInfo> {
    let text = std::fs::read_to_string(settings.run_file()).ok()?;
    let info: RunInfo = serde_json::from_str(&text).ok()?;
    // A run file left behind by a killed server names a dead process.
    std::path::Path::new(&format!("/proc/{}", info.pid))
        .exists()
        .then_some(info)
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Info {
    pub(crate) pool_id: String,
    pub(crate) client_id: String,
    pub(crate) issuer: String,
    pub(crate) jwks_url: String,
    pub(crate) api_url: String,
    pub(crate) edge_url: String,
    pub(crate) region: String,
    pub(crate) bucket: String,
    pub(crate) stream: String,
    /// The roles the upload route and the built-in mapping act as (created at first start,
    /// `builtin_roles`).
    pub(crate) upload_route_role: String,
    pub(crate) builtin_mapping_role: String,
}

pub(crate) fn info(settings: &Settings) -> Result<Info> {
    let identity = open_identity(settings)?;
    let pool = identity.bootstrap(&settings.region, settings.lifetimes)?;
    let (api_url, edge_url) = match running(settings) {
        Some(r) => (r.api_url, r.edge_url),
        None => (
            settings.api_url_for(settings.listen),
            settings.edge_url_for(settings.edge_listen),
        ),
    };
    Ok(make_info(settings, &identity, pool, api_url, edge_url))
}

pub(crate) fn make_info(
    settings: &Settings,
    identity: &Identity,
    pool: sluice_identity::PoolInfo,
    api_url: String,
    edge_url: String,
) -> Info {
    let issuer = identity.issuer(&pool.pool_id);
    Info {
        jwks_url: format!("{issuer}/.well-known/jwks.json"),
        issuer,
        pool_id: pool.pool_id,
        client_id: pool.client_id,
        api_url,
        edge_url,
        region: settings.region.clone(),
        bucket: settings.bucket.clone(),
        stream: settings.stream.clone(),
        upload_route_role: crate::builtin_roles::role_arn(
            settings,
            crate::builtin_roles::UPLOAD_ROUTE_ROLE,
        ),
        builtin_mapping_role: crate::builtin_roles::role_arn(
            settings,
            crate::builtin_roles::BUILTIN_MAPPING_ROLE,
        ),
    }
}

pub(crate) fn describe(i: &Info) -> String {
    format!(
        "API URL:       {}\nEdge URL:      {}\nRegion:        {}\nUser pool id:  {}\nApp client id: {}\nIssuer:        {}\nJWKS URL:      {}\nBucket:        {}\nStream:        {}\nRoles:         {} (upload route), {} (built-in mapping)",
        i.api_url,
        i.edge_url,
        i.region,
        i.pool_id,
        i.client_id,
        i.issuer,
        i.jwks_url,
        i.bucket,
        i.stream,
        i.upload_route_role,
        i.builtin_mapping_role
    )
}

/// This data directory's instance id (`<data-dir>/instance-id`, made at first use): who
/// holds a shard lease. Stable across restarts, so that a processor started again on its
/// data directory (the lock proves the previous one is gone) resumes its own leases at
/// once instead of waiting for them to expire; unique across machines, being random.
pub(crate) fn instance_id(settings: &Settings) -> Result<String> {
    let path = settings.data_dir.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let id = format!("{host}/{}", &sluice_blobs::new_id()[..12]);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| sluice_meta::sync_dir(&settings.data_dir))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// Federation's HTTP (identity makes no request itself): discovery documents and key sets
/// of external identity providers, and their token endpoints. Bodies are bounded; requests
/// time out after 10 s.
pub(crate) struct FederationClient {
    http: http_client::Client,
}

impl FederationClient {
    /// Largest answer read from a provider.
    const MAX_BODY: usize = 1 << 20;

    pub(crate) fn new() -> anyhow::Result<FederationClient> {
        Ok(FederationClient {
            http: http_client::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
        })
    }

    async fn body(mut resp: http_client::Response, what: &str) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{what}: {e}"))? {
            if body.len() + chunk.len() > Self::MAX_BODY {
                return Err(format!("{what}: more than {} bytes", Self::MAX_BODY));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[async_trait::async_trait]
impl sluice_identity::federation::FederationHttp for FederationClient {
    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let what = format!("GET {url}");
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{what}: {}", resp.status()));
        }
        Self::body(resp, &what).await
    }

    async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<(u16, Vec<u8>), String> {
        use sluice_identity::federation::form_encode;
        let what = format!("POST {url}");
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let resp = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let status = resp.status().as_u16();
        Ok((status, Self::body(resp, &what).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::shown_url;

    #[test]
    fn shown_urls_hide_secrets() {
        assert_eq!(
            shown_url("postgres://sluice:pw@db:5432/sluice?pool_size=4"),
            "postgres://sluice@db:5432/sluice?pool_size=4"
        );
        assert_eq!(
            shown_url("s3://b/p?endpoint=http://h:3900&access_key_id=GK&secret_access_key=s%2F"),
            "s3://b/p?endpoint=http://h:3900&access_key_id=GK&secret_access_key=***"
        );
        assert_eq!(shown_url("/plain/path"), "/plain/path");
    }
}
