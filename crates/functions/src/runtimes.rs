//! Lambda's runtime identifiers, and the SDKs sluice's runtimes offer every function.
//!
//! `nodejs18.x`, `nodejs20.x` and `nodejs22.x` run on the installed `node`; `python3.9` to
//! `python3.13` on the installed `python3` (whatever their versions: sluice does not
//! install interpreters). As Lambda's managed runtimes do, a function's archive needs only
//! its own code: the AWS SDK for JavaScript v3 (the clients of `runtime/node/package.json`)
//! and boto3 (`runtime/python/requirements.txt`) are importable without bundling.
//!
//! **Where and how.** They are installed once per machine into the runtime cache
//! (`--runtime-cache`, default `$XDG_CACHE_HOME/sluice/runtimes`, else
//! `~/.cache/sluice/runtimes`): `node-<hash>/node_modules` with `npm ci` from the lockfile
//! compiled into the binary, `python-<hash>/site` with `pip install --target` from pinned
//! requirements (pip from a throwaway virtualenv). `<hash>` is that of the lockfile or
//! requirements, so a new sluice with other pins installs beside the old. An install
//! writes into a temporary directory and renames it into place, so several processes may
//! race and none sees half an SDK. The server installs a language's SDK the first time a
//! function of that language is invoked (the invocation waits for it); `sluice runtimes
//! install` does it ahead, e.g. while building a machine image. Without network access the
//! install fails, is logged, and functions run without the SDK (an import of it fails).
//!
//! How a function finds them: Node.js resolves a bare import by looking for `node_modules`
//! in every parent directory of the importing file, so the functions' code directories
//! (`<functions>/code/<sha256>/`) have a `node_modules` link next to them
//! (`<functions>/code/node_modules`), to the cache; a `node_modules` in the function's own
//! archive comes first. Python gets `PYTHONPATH`, after the function's own directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sluice_processor::mappings::LambdaRuntime;
use tokio::sync::OnceCell;

const NODE_PACKAGE: &str = include_str!("../runtime/node/package.json");
const NODE_LOCK: &str = include_str!("../runtime/node/package-lock.json");
const PYTHON_REQUIREMENTS: &str = include_str!("../runtime/python/requirements.txt");

/// Longest an SDK install may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// The runtime identifiers CreateFunction accepts.
pub const RUNTIMES: &[&str] = &[
    "nodejs18.x",
    "nodejs20.x",
    "nodejs22.x",
    "python3.9",
    "python3.10",
    "python3.11",
    "python3.12",
    "python3.13",
];

/// The language of a runtime identifier, if sluice runs it.
pub fn language(runtime: &str) -> Option<LambdaRuntime> {
    if !RUNTIMES.contains(&runtime) {
        return None;
    }
    Some(if runtime.starts_with("nodejs") {
        LambdaRuntime::Nodejs
    } else {
        LambdaRuntime::Python
    })
}

/// The default runtime cache: `$XDG_CACHE_HOME/sluice/runtimes`, else
/// `~/.cache/sluice/runtimes`, else `<data dir>/runtime-cache` (`fallback`).
pub fn default_cache_dir(fallback: &Path) -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("sluice/runtimes");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache/sluice/runtimes");
    }
    fallback.to_path_buf()
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..6])
}

/// The SDK cache of one machine.
pub struct SdkCache {
    dir: PathBuf,
    node_bin: String,
    python_bin: String,
    node: OnceCell<Option<PathBuf>>,
    python: OnceCell<Option<PathBuf>>,
}

impl SdkCache {
    pub fn new(dir: impl Into<PathBuf>, node_bin: &str, python_bin: &str) -> Self {
        SdkCache {
            dir: dir.into(),
            node_bin: node_bin.to_owned(),
            python_bin: python_bin.to_owned(),
            node: OnceCell::new(),
            python: OnceCell::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the Node.js SDK is (its `node_modules`), installed or not.
    pub fn node_modules(&self) -> PathBuf {
        self.dir
            .join(format!("node-{}", short_hash(&[NODE_PACKAGE, NODE_LOCK])))
            .join("node_modules")
    }

    /// Where boto3 is (a directory for `PYTHONPATH`), installed or not.
    pub fn python_site(&self) -> PathBuf {
        self.dir
            .join(format!("python-{}", short_hash(&[PYTHON_REQUIREMENTS])))
            .join("site")
    }

    fn target(&self, language: LambdaRuntime) -> PathBuf {
        match language {
            LambdaRuntime::Nodejs => self.node_modules(),
            LambdaRuntime::Python => self.python_site(),
        }
    }

    /// The SDK directory of `language`, installing it first if needed (once per process;
    /// later calls wait for the first). `None` when it cannot be installed (logged).
    pub async fn ensure(&self, language: LambdaRuntime) -> Option<PathBuf> {
        let cell = match language {
            LambdaRuntime::Nodejs => &self.node,
            LambdaRuntime::Python => &self.python,
        };
        cell.get_or_init(|| async {
            match self.install(language).await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, cache = %self.dir.display(),
                        "cannot install the SDK functions import without bundling; they run without it");
                    None
                }
            }
        })
        .await
        .clone()
    }

    /// Installs `language`'s SDK unless it is there; returns its directory.
    pub async fn install(&self, language: LambdaRuntime) -> Result<PathBuf, String> {
        let target = self.target(language);
        if target.is_dir() {
            return Ok(target);
        }
        // `<dir>/node-<hash>` or `<dir>/python-<hash>`: what is renamed into place.
        let Some(home) = target.parent().map(Path::to_path_buf) else {
            return Err("the SDK directory has no parent".into());
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let tmp = self
            .dir
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        tracing::info!(cache = %self.dir.display(), ?language, "installing the SDK functions import without bundling");
        let r = match language {
            LambdaRuntime::Nodejs => self.install_node(&tmp).await,
            LambdaRuntime::Python => self.install_python(&tmp).await,
        };
        if let Err(e) = r {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            return Err(e);
        }
        match tokio::fs::rename(&tmp, &home).await {
            Ok(()) => {}
            // Another process finished first: its copy is as good.
            Err(_) if target.is_dir() => {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
                return Err(format!("cannot move the SDK into {}: {e}", home.display()));
            }
        }
        tracing::info!(path = %target.display(), "installed the SDK");
        Ok(target)
    }

    async fn install_node(&self, tmp: &Path) -> Result<(), String> {
        let write = |name: &str, text: &str| {
            std::fs::write(tmp.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))
        };
        write("package.json", NODE_PACKAGE)?;
        write("package-lock.json", NODE_LOCK)?;
        let npm = Path::new(&self.node_bin)
            .parent()
            .map(|d| d.join("npm"))
            .filter(|p| p.is_file())
            .map_or_else(|| "npm".to_owned(), |p| p.to_string_lossy().into_owned());
        run(
            tokio::process::Command::new(npm)
                .args([
                    "ci",
                    "--omit=dev",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                ])
                .current_dir(tmp),
            "npm ci",
        )
        .await
    }

    async fn install_python(&self, tmp: &Path) -> Result<(), String> {
        std::fs::write(tmp.join("requirements.txt"), PYTHON_REQUIREMENTS)
            .map_err(|e| format!("cannot write requirements.txt: {e}"))?;
        let venv = tmp.join("venv");
        run(
            tokio::process::Command::new(&self.python_bin)
                .args(["-m", "venv"])
                .arg(&venv),
            "python3 -m venv",
        )
        .await?;
        run(
            tokio::process::Command::new(venv.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--target",
                ])
                .arg(tmp.join("site"))
                .arg("-r")
                .arg(tmp.join("requirements.txt")),
            "pip install",
        )
        .await?;
        let _ = tokio::fs::remove_dir_all(&venv).await;
        Ok(())
    }
}

async fn run(cmd: &mut tokio::process::Command, what: &str) -> Result<(), String> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(INSTALL_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("{what} took longer than {INSTALL_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: String = err
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" | ");
    Err(format!("{what} failed ({}): {tail}", out.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_map_to_languages() {
        assert_eq!(language("nodejs20.x"), Some(LambdaRuntime::Nodejs));
        assert_eq!(language("nodejs22.x"), Some(LambdaRuntime::Nodejs));
        assert_eq!(language("python3.9"), Some(LambdaRuntime::Python));
        assert_eq!(language("python3.13"), Some(LambdaRuntime::Python));
        assert_eq!(language("python3.14"), None);
        assert_eq!(language("java21"), None);
        assert_eq!(language("nodejs"), None);
    }

    #[test]
    fn sdk_directories_follow_the_pins() {
        let c = SdkCache::new("/cache", "node", "python3");
        let n = c.node_modules();
        assert!(n.starts_with("/cache") && n.ends_with("node_modules"));
        assert!(c.python_site().ends_with("site"));
        assert_ne!(n.parent(), c.python_site().parent());
    }
}
