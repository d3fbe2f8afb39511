//! Black-box harness: starts the real `sluice` binary on free ports with a temporary data
//! directory and talks to it over HTTP, as a user would.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod engines;

pub const PASSWORD: &str = "Passw0rd!";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// A temporary data directory, removed on drop, and the engines a server on it uses: the
/// embedded ones, or — with `SLUICE_TEST_META=postgres` (`scripts/test` runs the black-box
/// suites once more that way) — a fresh PostgreSQL database, named in the directory's
/// `sluice.toml` (servers and client commands run in the directory, so both find it).
pub struct DataDir(pub PathBuf, sluice_meta::conformance::TestEngines);

impl DataDir {
    pub fn new(tag: &str) -> DataDir {
        let p = std::env::temp_dir().join(format!(
            "sluice-it-{tag}-{}-{}",
            std::process::id(),
            uuid_like()
        ));
        // Private, as sluice wants a data directory (it would make it so, with a warning).
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&p)
            .expect("create data dir");
        let engines = sluice_meta::conformance::TestEngines::new();
        let dir = DataDir(p, engines);
        dir.write_config("");
        dir
    }

    /// The engines' part of `sluice.toml`.
    fn engine_config(&self) -> String {
        let mut out = String::new();
        if sluice_meta::conformance::test_engine_is_postgres() {
            out += &format!("[meta]\nurl = \"{}\"\n", self.1.postgres_url("blackbox"));
        }
        if let Some(url) = test_s3_url(&format!("it-{}", uuid_like())) {
            out += &format!("[store]\nurl = \"{url}\"\n");
        }
        if let Some(url) = test_nats_url(&self.0) {
            out += &format!("[records]\nurl = \"{url}\"\n");
        }
        out
    }

    /// Writes `sluice.toml`: `extra`, then the engines' tables (after `extra`, so that its
    /// top-level keys stay top-level; TOML puts keys after a `[table]` header into it).
    pub fn write_config(&self, extra: &str) {
        let sep = if extra.is_empty() || extra.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        let text = format!("{extra}{sep}{}", self.engine_config());
        let path = self.0.join("sluice.toml");
        if text.is_empty() {
            let _ = std::fs::remove_file(path);
        } else {
            std::fs::write(path, text).expect("write sluice.toml");
        }
    }

    /// The metadata engine's URL (`sqlite://…/sluice.db` or the PostgreSQL database).
    pub fn meta_url(&self) -> String {
        meta_url_of(&self.0)
    }
}

/// With `SLUICE_TEST_RECORDS=nats`, stream records on the JetStream server `SLUICE_TEST_NATS`
/// names (`scripts/test` starts one), under a prefix of the data directory's own (the same
/// each time the configuration is written).
pub fn test_nats_url(data_dir: &Path) -> Option<String> {
    if std::env::var("SLUICE_TEST_RECORDS").ok().as_deref() != Some("nats") {
        return None;
    }
    let base = std::env::var("SLUICE_TEST_NATS").expect(
        "SLUICE_TEST_RECORDS=nats needs SLUICE_TEST_NATS=nats://HOST:PORT (scripts/test sets both)",
    );
    let tag = {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        data_dir.hash(&mut h);
        h.finish()
    };
    Some(format!("{base}?prefix=it{tag:016x}"))
}

/// Whether the black-box suites run with their records on JetStream (no stream log files).
pub fn records_on_nats() -> bool {
    std::env::var("SLUICE_TEST_RECORDS").ok().as_deref() == Some("nats")
}

/// With `SLUICE_TEST_STORE=s3`, the S3 store the black-box suites put object bytes in:
/// `SLUICE_TEST_S3` (a bucket on the S3 server `scripts/test` starts), under `prefix`.
pub fn test_s3_url(prefix: &str) -> Option<String> {
    if std::env::var("SLUICE_TEST_STORE").ok().as_deref() != Some("s3") {
        return None;
    }
    let base = std::env::var("SLUICE_TEST_S3")
        .expect("SLUICE_TEST_STORE=s3 needs SLUICE_TEST_S3=s3://BUCKET?endpoint=…&… (scripts/test sets both)");
    let (location, query) = base.split_once('?').unwrap_or((&base, ""));
    Some(format!(
        "{}/{prefix}?{query}",
        location.trim_end_matches('/')
    ))
}

/// The blob engine URL a server on data directory `dir` uses (from its `sluice.toml`).
pub fn store_url_of(dir: &Path) -> String {
    let configured = std::fs::read_to_string(dir.join("sluice.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("store")?.get("url")?.as_str().map(str::to_owned));
    configured.unwrap_or_else(|| format!("file://{}", dir.join("blobs").display()))
}

/// How many blobs the data directory's store holds (whatever its engine).
pub fn blob_count(dir: &Path) -> usize {
    let url = store_url_of(dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let blobs = sluice_blobs::open(&url).expect("open the store");
        let mut n = 0;
        let mut after: Option<String> = None;
        loop {
            let page = blobs
                .list(after.as_deref(), 1000)
                .await
                .expect("list blobs");
            let Some(last) = page.last() else {
                return n;
            };
            after = Some(last.id.clone());
            n += page.len();
        }
    })
}

/// The metadata URL a server on data directory `dir` uses (from its `sluice.toml`).
pub fn meta_url_of(dir: &Path) -> String {
    let configured = std::fs::read_to_string(dir.join("sluice.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("meta")?.get("url")?.as_str().map(str::to_owned));
    configured.unwrap_or_else(|| format!("sqlite://{}", dir.join("sluice.db").display()))
}

impl Drop for DataDir {
    fn drop(&mut self) {
        // A failing test shows what its server logged (the end of `server.log`).
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.0.join("server.log"))
        {
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(150)..];
            eprintln!(
                "--- the last {} lines of {}/server.log ---\n{}",
                tail.len(),
                self.0.display(),
                tail.join("\n")
            );
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uuid_like() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

pub struct Server {
    child: Child,
    pub data_dir: PathBuf,
    /// Where the server and its client commands run (its `sluice.toml`, `server.log`): the
    /// data directory, unless started with [`Server::start_in`].
    pub cwd: PathBuf,
    pub api: String,
    pub edge: String,
    pub http: reqwest::blocking::Client,
}

impl Server {
    /// Starts a server on fresh ports.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_on(data_dir, "127.0.0.1:0", "127.0.0.1:0", &[])
    }

    /// Starts a server again on the ports of a previous run, so that tokens (whose issuer
    /// is the edge URL) stay valid.
    pub fn restart(data_dir: &Path, api: &str, edge: &str) -> Server {
        let strip = |u: &str| u.trim_start_matches("http://").to_owned();
        Self::start_on(data_dir, &strip(api), &strip(edge), &[])
    }

    pub fn start_on(data_dir: &Path, listen: &str, edge: &str, env: &[(&str, &str)]) -> Server {
        Self::launch(data_dir, data_dir, listen, edge, env, Stdio::null())
    }

    /// Starts a server whose data directory `data_dir` is not its working directory `cwd`
    /// (which holds `sluice.toml` and `server.log`; the data directory need not exist yet),
    /// with its standard output appended to `stdout`.
    pub fn start_in(cwd: &Path, data_dir: &Path, stdout: &Path) -> Server {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stdout)
            .expect("stdout file");
        Self::launch(cwd, data_dir, "127.0.0.1:0", "127.0.0.1:0", &[], out.into())
    }

    fn launch(
        cwd: &Path,
        data_dir: &Path,
        listen: &str,
        edge: &str,
        env: &[(&str, &str)],
        stdout: Stdio,
    ) -> Server {
        let run_file = data_dir.join("run.json");
        let _ = std::fs::remove_file(&run_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cwd.join("server.log"))
            .expect("log file");
        let mut cmd = Command::new(bin());
        // The caller's SLUICE_* settings must not reconfigure a test server.
        for (k, _) in std::env::vars() {
            if k.starts_with("SLUICE_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen)
            .arg("--edge-listen")
            .arg(edge)
            .env("SLUICE_LOG", "info")
            .env_remove("SLUICE_CONFIG")
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start sluice serve");
        let deadline = Instant::now() + Duration::from_secs(60);
        let run: Value = loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "sluice serve exited early with {status}; log:\n{}",
                    std::fs::read_to_string(cwd.join("server.log")).unwrap_or_default()
                );
            }
            if let Ok(text) = std::fs::read_to_string(&run_file)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && v["pid"].as_u64() == Some(u64::from(child.id()))
            {
                break v;
            }
            assert!(Instant::now() < deadline, "server did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let server = Server {
            child,
            data_dir: data_dir.to_owned(),
            cwd: cwd.to_owned(),
            api: run["apiUrl"].as_str().expect("apiUrl").to_owned(),
            edge: run["edgeUrl"].as_str().expect("edgeUrl").to_owned(),
            http,
        };
        let health = server
            .http
            .get(format!("{}/healthz", server.api))
            .send()
            .expect("healthz");
        assert_eq!(health.status(), 200);
        server
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM without waiting for the server to exit.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits up to `within` for the server to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "sluice serve exited with {status}");
    }

    /// Runs a client command against this server's data directory.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_in(&self.cwd, &self.data_dir, args)
    }

    /// A new access key of this server (`sluice keys create`): (id, secret).
    pub fn new_key(&self) -> (String, String) {
        let v: Value = serde_json::from_str(&self.cli(&["keys", "create"])).expect("key json");
        (
            v["accessKeyId"].as_str().expect("id").to_owned(),
            v["secretAccessKey"].as_str().expect("secret").to_owned(),
        )
    }

    pub fn info(&self) -> Value {
        serde_json::from_str(&self.cli(&["info", "--json"])).expect("info json")
    }

    pub fn create_user(&self, email: &str) {
        self.cli(&["user", "create", "--email", email, "--password", PASSWORD]);
    }

    /// InitiateAuth over Cognito's JSON 1.1 protocol with a plain HTTP client.
    pub fn cognito(&self, op: &str, body: Value) -> (u16, Value) {
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
            .expect("cognito request");
        let status = resp.status().as_u16();
        (status, resp.json().expect("cognito json"))
    }

    pub fn sign_in(&self, email: &str, password: &str) -> Value {
        let client_id = self.info()["clientId"]
            .as_str()
            .expect("clientId")
            .to_owned();
        let (status, body) = self.cognito(
            "InitiateAuth",
            json!({
                "AuthFlow": "USER_PASSWORD_AUTH",
                "ClientId": client_id,
                "AuthParameters": {"USERNAME": email, "PASSWORD": password},
            }),
        );
        assert_eq!(status, 200, "sign-in failed: {body}");
        body
    }

    pub fn id_token(&self, email: &str) -> String {
        self.sign_in(email, PASSWORD)["AuthenticationResult"]["IdToken"]
            .as_str()
            .expect("IdToken")
            .to_owned()
    }

    pub fn upload(
        &self,
        token: &str,
        filename: &str,
        content: &str,
    ) -> reqwest::blocking::Response {
        self.http
            .post(format!("{}/uploads", self.api))
            .bearer_auth(token)
            .header("Content-Type", "application/json")
            .body(json!({"filename": filename, "content": content}).to_string())
            .send()
            .expect("upload request")
    }

    pub fn status(&self, token: &str, id: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}/uploads/{id}", self.api))
            .bearer_auth(token)
            .send()
            .expect("status request");
        let code = resp.status().as_u16();
        (code, resp.json().unwrap_or(Value::Null))
    }

    /// Polls an upload until its status is final (processed or failed).
    pub fn wait_final(&self, token: &str, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, v) = self.status(token, id);
            assert_eq!(code, 200, "status of {id}: {v}");
            if v["status"] == "processed" || v["status"] == "failed" {
                return v;
            }
            assert!(Instant::now() < deadline, "upload {id} never finished: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get_bytes(&self, token: &str, path: &str) -> (u16, Vec<u8>) {
        let resp = self
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(token)
            .send()
            .expect("get");
        let code = resp.status().as_u16();
        (code, resp.bytes().expect("body").to_vec())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 50 ms until it gives a value; fails the test after `within`. Tests wait
/// for the server with generous deadlines instead of timing anything.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The single integer `sql` answers, read straight from the data directory's database
/// (read-only, beside the running server).
pub fn rows(dir: &Path, sql: &str) -> i64 {
    let sql = sql.to_owned();
    meta_read(dir, move |c| {
        c.query_row(&sql, sluice_meta::params![], |r| r.get(0))
    })
    .expect("count")
}

/// A read of the data directory's metadata (read-only, beside the running server).
pub fn meta_read<T: Send + 'static>(
    dir: &Path,
    f: impl FnOnce(&sluice_meta::Tx<'_>) -> Result<T, sluice_meta::MetaError> + Send + 'static,
) -> Result<T, sluice_meta::MetaError> {
    let url = meta_url_of(dir);
    let db = match url.strip_prefix("sqlite://") {
        Some(path) => sluice_meta::Meta::open_sqlite_read_only(Path::new(path))?,
        None => sluice_meta::open(&url, &[])?,
    };
    let out = db.read_blocking(f);
    db.close();
    out
}

pub fn cli(data_dir: &Path, args: &[&str]) -> String {
    cli_in(data_dir, data_dir, args)
}

/// Runs a client command in `cwd` (where `sluice.toml` is) on the data directory `data_dir`.
pub fn cli_in(cwd: &Path, data_dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("SLUICE_CONFIG")
        .current_dir(cwd)
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "sluice {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The aws CLI: `$SLUICE_AWS_CLI`, or `aws` on PATH (`scripts/test` installs it).
pub fn aws_cli() -> String {
    if let Ok(p) = std::env::var("SLUICE_AWS_CLI") {
        return p;
    }
    let found = Command::new("aws")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the aws CLI is needed for this test: run scripts/test (it installs it) or set SLUICE_AWS_CLI"
    );
    "aws".into()
}

/// Runs the aws CLI with dummy credentials (enough for Cognito's unauthenticated
/// operations); returns (success, stdout, stderr).
pub fn aws(args: &[&str]) -> (bool, String, String) {
    aws_as(("sluice-test", "sluice-test"), args)
}

/// Runs the aws CLI signing with the given access key.
pub fn aws_as(key: (&str, &str), args: &[&str]) -> (bool, String, String) {
    let out = Command::new(aws_cli())
        .args(args)
        .env("AWS_ACCESS_KEY_ID", key.0)
        .env("AWS_SECRET_ACCESS_KEY", key.1)
        .env("AWS_DEFAULT_REGION", "us-east-2")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_PAGER", "")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .expect("run aws");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The PEM of a pool's signing key, as the server keeps it: sealed in the metadata engine
/// under the data directory's key file (for tests that forge tokens with the real key).
#[allow(dead_code)]
pub fn pool_signing_key_pem(dir: &Path, pool: &str) -> String {
    let url = meta_url_of(dir);
    let db = match url.strip_prefix("sqlite://") {
        Some(path) => sluice_meta::Meta::open_sqlite_read_only(Path::new(path)),
        None => sluice_meta::open(&url, &[]),
    }
    .expect("open the metadata engine");
    let p = pool.to_owned();
    let sealed: String = db
        .read_blocking(move |c| {
            c.query_row(
                "SELECT sealed_pem FROM signing_keys WHERE pool_id = ?1",
                sluice_meta::params![p],
                |r| r.get::<String>(0),
            )
        })
        .expect("the pool's signing key");
    let sealer = sluice_identity::secret_box::SecretBox::load_or_create(
        &dir.join("keys").join(sluice_identity::SEALING_KEY_FILE),
    )
    .expect("key file");
    sealer
        .open(&format!("signing-key:{pool}"), &sealed)
        .expect("unseal")
}

/// An access key of the server (created once per server through the CLI).
pub fn access_key(server: &Server) -> (String, String) {
    let path = server.data_dir.join("test-key.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(_) => {
            let t = server.cli(&["keys", "create", "--description", "cognito tests"]);
            std::fs::write(&path, &t).expect("remember key");
            t
        }
    };
    let v: Value = serde_json::from_str(&text).expect("key json");
    (
        v["accessKeyId"].as_str().expect("id").to_owned(),
        v["secretAccessKey"].as_str().expect("secret").to_owned(),
    )
}

/// A SigV4-signed Cognito request.
pub fn signed(server: &Server, op: &str, body: Value) -> (u16, Value) {
    let (id, secret) = access_key(server);
    let body = body.to_string();
    let host = server.edge.trim_start_matches("http://").to_owned();
    let date = chrono_like_now();
    let target = format!("AWSCognitoIdentityProviderService.{op}");
    let headers = vec![
        (
            "content-type".to_owned(),
            "application/x-amz-json-1.1".to_owned(),
        ),
        ("host".to_owned(), host),
        ("x-amz-date".to_owned(), date.clone()),
        ("x-amz-target".to_owned(), target.clone()),
    ];
    let payload_hash = sha256_hex(body.as_bytes());
    let auth = sluice_compat::sigv4::authorization_header(
        &sluice_compat::sigv4::SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            payload_hash: &payload_hash,
        },
        &id,
        &secret,
        "us-east-2",
        "cognito-idp",
    )
    .expect("sign");
    let resp = server
        .http
        .post(format!("{}/", server.edge))
        .header("X-Amz-Target", target)
        .header("Content-Type", "application/x-amz-json-1.1")
        .header("X-Amz-Date", date)
        .header("Authorization", auth)
        .body(body)
        .send()
        .expect("cognito request");
    let status = resp.status().as_u16();
    (status, resp.json().expect("cognito json"))
}

/// `YYYYMMDD'T'HHMMSS'Z'`, now, in UTC.
pub fn chrono_like_now() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
