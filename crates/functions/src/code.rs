//! A function's code: a zip archive, checked and unpacked as Lambda does it.
//!
//! Limits are Lambda's: a zip sent in the request (`ZipFile`) is at most [`MAX_ZIPPED`]
//! bytes, one taken from a bucket (`S3Bucket`/`S3Key`) at most [`MAX_UNZIPPED`]; unpacked,
//! every function is at most [`MAX_UNZIPPED`] bytes. The unpacked size is counted as bytes
//! are written, not taken from the archive's directory (which a zip bomb lies in), and an
//! archive of more than [`MAX_ENTRIES`] entries is refused before anything is written.
//! Entries whose names leave the archive's root (`../x`, `/etc/x`) are refused; symbolic
//! links are skipped (a link is a way out of the function's directory), with a warning.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::FunctionsError;
use sluice_processor::mappings::LambdaRuntime;

/// Largest zip sent in a request (Lambda's 50 MB limit for a direct upload).
pub const MAX_ZIPPED: u64 = 50 * 1024 * 1024;
/// Largest unpacked function, and largest zip read from a bucket (Lambda's 250 MB).
pub const MAX_UNZIPPED: u64 = 262_144_000;
/// Most entries an archive may have.
pub const MAX_ENTRIES: usize = 100_000;

/// What unpacking wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub bytes: u64,
    pub files: usize,
}

fn invalid(m: impl Into<String>) -> FunctionsError {
    FunctionsError::InvalidParameter(m.into())
}

fn unzip_error(e: impl std::fmt::Display) -> FunctionsError {
    invalid(format!(
        "Could not unzip uploaded file. Please check your file, then try to upload again. ({e})"
    ))
}

fn too_big() -> FunctionsError {
    invalid(format!(
        "Unzipped size must be smaller than {MAX_UNZIPPED} bytes"
    ))
}

/// Unpacks the archive `zip` into `dest`, a directory that must not exist yet (it is
/// created; on error it is removed again). Blocking: run it on a blocking thread.
pub fn unpack(zip: &Path, dest: &Path) -> Result<Unpacked, FunctionsError> {
    let r = unpack_into(zip, dest);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    r
}

fn unpack_into(zip: &Path, dest: &Path) -> Result<Unpacked, FunctionsError> {
    let file = std::fs::File::open(zip).map_err(FunctionsError::Io)?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(unzip_error)?;
    if archive.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "the archive has {} entries; at most {MAX_ENTRIES} are accepted",
            archive.len()
        )));
    }
    // What the archive's directory declares: a quick refusal of the honest large archive
    // (the bytes written are counted below, for the dishonest one).
    let mut declared = 0u64;
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(unzip_error)?;
        declared = declared.saturating_add(entry.size());
    }
    if declared > MAX_UNZIPPED {
        return Err(too_big());
    }
    std::fs::create_dir_all(dest).map_err(FunctionsError::Io)?;
    let mut written = 0u64;
    let mut files = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(unzip_error)?;
        let Some(relative) = entry.enclosed_name() else {
            return Err(invalid(format!(
                "the archive's entry {:?} is outside the archive's root",
                entry.name()
            )));
        };
        let path = dest.join(&relative);
        if entry.is_symlink() {
            tracing::warn!(entry = %relative.display(), "skipping a symbolic link in a function's archive");
            continue;
        }
        if entry.is_dir() {
            std::fs::create_dir_all(&path).map_err(FunctionsError::Io)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(FunctionsError::Io)?;
        }
        let mut out = std::fs::File::create(&path).map_err(FunctionsError::Io)?;
        loop {
            let n = entry.read(&mut buf).map_err(unzip_error)?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > MAX_UNZIPPED {
                return Err(too_big());
            }
            out.write_all(&buf[..n]).map_err(FunctionsError::Io)?;
        }
        let executable = entry.unix_mode().is_some_and(|m| m & 0o111 != 0);
        set_mode(&path, if executable { 0o755 } else { 0o644 })?;
        files += 1;
    }
    Ok(Unpacked {
        bytes: written,
        files,
    })
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), FunctionsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(FunctionsError::Io)
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), FunctionsError> {
    Ok(())
}

/// The file a handler setting names in unpacked code, if it is there: for Node.js
/// `src/app.handler` is `src/app.mjs`, `.js` or `.cjs`; for Python `pkg.app.handler` (or
/// `pkg/app.handler`) is `pkg/app.py`.
pub fn handler_file(root: &Path, runtime: LambdaRuntime, handler: &str) -> Option<PathBuf> {
    let (module, function) = handler.rsplit_once('.')?;
    if module.is_empty() || function.is_empty() || module.split('/').any(|p| p == "..") {
        return None;
    }
    match runtime {
        LambdaRuntime::Nodejs => ["mjs", "js", "cjs"]
            .iter()
            .map(|ext| root.join(format!("{module}.{ext}")))
            .find(|p| p.is_file()),
        LambdaRuntime::Python => {
            let p = root.join(format!("{}.py", module.replace('.', "/")));
            p.is_file().then_some(p)
        }
    }
}

/// Refuses a handler setting whose file is not in the code, with the message Lambda's
/// runtimes would fail the first invocation with.
pub fn check_handler(
    root: &Path,
    runtime: LambdaRuntime,
    handler: &str,
) -> Result<(), FunctionsError> {
    if handler_file(root, runtime, handler).is_some() {
        return Ok(());
    }
    let module = handler.rsplit_once('.').map_or(handler, |(m, _)| m);
    let expected = match runtime {
        LambdaRuntime::Nodejs => format!("{module}.mjs, {module}.js or {module}.cjs"),
        LambdaRuntime::Python => format!("{}.py", module.replace('.', "/")),
    };
    Err(invalid(format!(
        "The handler {handler:?} names a file the code does not have: expected {expected} at the root of the archive"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_of(dir: &Path, entries: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("code.zip");
        let file = std::fs::File::create(&path).expect("create");
        let mut z = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o644);
        for (name, data) in entries {
            z.start_file(*name, opts).expect("start");
            z.write_all(data).expect("write");
        }
        z.finish().expect("finish");
        path
    }

    #[test]
    fn unpacks_and_finds_handlers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let zip = zip_of(
            dir.path(),
            &[
                ("index.mjs", b"export const handler = async () => 1;"),
                ("lib/app.py", b"def handler(e, c): return 1"),
            ],
        );
        let dest = dir.path().join("out");
        let u = unpack(&zip, &dest).expect("unpack");
        assert_eq!(u.files, 2);
        assert!(check_handler(&dest, LambdaRuntime::Nodejs, "index.handler").is_ok());
        assert!(check_handler(&dest, LambdaRuntime::Python, "lib.app.handler").is_ok());
        assert!(check_handler(&dest, LambdaRuntime::Python, "lib/app.handler").is_ok());
        let e = check_handler(&dest, LambdaRuntime::Nodejs, "main.handler").expect_err("missing");
        assert!(e.to_string().contains("main.mjs"), "{e}");
        assert!(check_handler(&dest, LambdaRuntime::Nodejs, "index").is_err());
        assert!(check_handler(&dest, LambdaRuntime::Nodejs, "../x/index.handler").is_err());
    }

    #[test]
    fn refuses_what_is_not_a_zip_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.zip");
        std::fs::write(&path, b"not a zip at all").expect("write");
        let dest = dir.path().join("out");
        let e = unpack(&path, &dest).expect_err("not a zip");
        assert!(e.to_string().starts_with("Could not unzip"), "{e}");
        assert!(!dest.exists());
    }

    #[test]
    fn refuses_paths_out_of_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let zip = zip_of(dir.path(), &[("../evil.sh", b"x")]);
        let dest = dir.path().join("out");
        let e = unpack(&zip, &dest).expect_err("traversal");
        assert!(e.to_string().contains("outside"), "{e}");
        assert!(!dir.path().join("evil.sh").exists());
        assert!(!dest.exists());
    }

    #[test]
    fn a_zip_bomb_stops_at_the_limit() {
        // 300 MB of zeros compresses to about 300 KB: the directory tells the truth here,
        // so the declared size refuses it before anything is written.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bomb.zip");
        let file = std::fs::File::create(&path).expect("create");
        let mut z = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        z.start_file("zeros", opts).expect("start");
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..300 {
            z.write_all(&chunk).expect("write");
        }
        z.finish().expect("finish");
        assert!(std::fs::metadata(&path).expect("meta").len() < 2 * 1024 * 1024);
        let dest = dir.path().join("out");
        let e = unpack(&path, &dest).expect_err("bomb");
        assert!(e.to_string().contains("Unzipped size"), "{e}");
        assert!(!dest.exists());
    }
}
