//! The data directory's permissions: private to the user sluice runs as.
//!
//! The data directory holds secrets (signing keys, the key that seals access-key secrets,
//! the development credentials, and data users uploaded), so:
//!
//! - *Every file sluice creates is private.* [`restrict_umask`] sets the process umask to
//!   `0o077` before any command runs, so every file and directory created afterwards — by
//!   sluice or by a library: SQLite's database, WAL and shared-memory files, stream log
//!   segments, blob files, temporary files, the function runtime — is at most 0600 / 0700.
//!   *Decision: a umask rather than a mode at every `open`*, because files created by
//!   libraries (SQLite chooses its own modes) cannot be reached otherwise, and one rule for
//!   the process cannot be forgotten by the next file someone adds. Files holding secrets
//!   also get their mode explicitly (the key files, the credentials file), as does the
//!   directory itself, so they stay private in a library used without this binary's umask.
//! - *The directory is created 0700 in one step* ([`prepare`]: `DirBuilder` with
//!   `mode(0o700)`, recursive), never created open and narrowed afterwards.
//! - *A directory others could tamper with is refused* ([`prepare`]): owned by another user,
//!   or writable by group or others. Those could replace sluice's files (a key, the
//!   database) under it; sluice says so and prints the command that fixes it, and exits with
//!   status 1 (the command line is right, the directory is not; like another server holding
//!   the directory).
//! - *A directory that others can merely read is made private* ([`prepare`]): earlier
//!   versions created it 0755 with files 0644. *Decision: fix, not refuse*, because nobody but
//!   the owner is hurt by removing others' read access, and an upgrade should not stop
//!   working: the directory is set to 0700 first (which closes it at once), then the group
//!   and other bits are removed from every file and folder under it that this user owns
//!   (symbolic links are not followed). That walk runs only when the directory itself was
//!   open, so a start pays one `stat`.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Makes every file and directory the process creates from now on private to its user
/// (umask `0o077`). Called first thing in `main`, before any thread starts.
pub(crate) fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// What was wrong with a data directory's permissions, and what [`prepare`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Prepared {
    /// The directory did not exist and was created (mode 0700).
    pub(crate) created: bool,
    /// The directory was readable by group or others: its mode before it was set to 0700.
    pub(crate) opened_mode: Option<u32>,
    /// Files and folders under it whose group and other bits were removed.
    pub(crate) fixed: usize,
    /// Entries under it owned by another user, left as they are.
    pub(crate) foreign: usize,
}

/// Creates the data directory (mode 0700) or checks an existing one: refuses one owned by
/// another user or writable by group or others, and makes private one that group or others
/// can read (see the module's documentation).
pub(crate) fn prepare(dir: &Path) -> Result<Prepared> {
    let mut done = Prepared::default();
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        done.created = true;
    }
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the data directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("the data directory {} is not a directory", dir.display());
    }
    if let Some(refusal) = refusal(dir, &meta) {
        bail!(refusal);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & !0o077))
            .with_context(|| format!("cannot make the data directory {} private", dir.display()))?;
        done.opened_mode = Some(mode);
        make_private(dir, meta.uid(), &mut done)?;
        tracing::warn!(
            dir = %dir.display(),
            was = format!("{:04o}", mode & 0o777),
            fixed = done.fixed,
            left_foreign = done.foreign,
            "the data directory could be read by other users (earlier versions created it so); made it 0700 and its files private"
        );
        if done.foreign > 0 {
            tracing::warn!(
                dir = %dir.display(),
                entries = done.foreign,
                "entries under the data directory belong to another user and were left as they are"
            );
        }
    }
    Ok(done)
}

/// Why a data directory must not be used, with the command that fixes it; `None` when it may.
pub(crate) fn refusal(dir: &Path, meta: &std::fs::Metadata) -> Option<String> {
    let me = rustix::process::geteuid().as_raw();
    let shown = shell_quote(dir);
    if meta.uid() != me {
        return Some(format!(
            "refusing to use the data directory {}: it belongs to uid {}, not to this user (uid {me}), so its owner could read and replace sluice's keys and data. Run sluice as its owner, or take the directory over with: chown -R {me} {shown}",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "refusing to use the data directory {}: other users can write to it (mode {:04o}), so they could replace sluice's keys and data. Fix it with: chmod 700 {shown}",
            dir.display(),
            mode & 0o777
        ));
    }
    None
}

/// Problems of an existing data directory's permissions, for `sluice doctor` (which changes
/// nothing): the refusal, or that group or others can read it.
pub(crate) fn inspect(dir: &Path) -> Result<Vec<String>> {
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the data directory {}", dir.display()))?;
    if let Some(r) = refusal(dir, &meta) {
        return Ok(vec![r]);
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Ok(vec![format!(
            "other users can read the data directory (mode {mode:04o}); the next command that writes makes it private, or: chmod 700 {}",
            shell_quote(dir)
        )]);
    }
    Ok(Vec::new())
}

/// Removes the group and other bits of every entry under `dir` owned by `owner`, without
/// following symbolic links.
fn make_private(dir: &Path, owner: u32, done: &mut Prepared) -> Result<()> {
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", d.display()))?;
            let path = entry.path();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Removed meanwhile (a temporary file): nothing to protect.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read {}", path.display()));
                }
            };
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.uid() != owner {
                done.foreign += 1;
                continue;
            }
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !0o077))
                    .with_context(|| format!("cannot make {} private", path.display()))?;
                done.fixed += 1;
            }
            if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(())
}

/// A path as a POSIX shell word, for commands printed to be pasted.
fn shell_quote(path: &Path) -> String {
    let s = path.display().to_string();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if plain {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_new_directory_is_created_private_with_its_parents() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("a").join("data");
        let done = prepare(&dir).expect("prepare");
        assert!(done.created);
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&base.path().join("a")), 0o700);
        assert_eq!(prepare(&dir).expect("again"), Prepared::default());
    }

    #[test]
    fn a_writable_directory_is_refused_with_the_fix() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("data dir");
        std::fs::create_dir(&dir).expect("mkdir");
        for mode in [0o777, 0o770, 0o702] {
            chmod(&dir, mode);
            let e = prepare(&dir).expect_err("refused").to_string();
            assert!(
                e.contains(&format!("chmod 700 '{}'", dir.display())),
                "{mode:o}: {e}"
            );
            assert_eq!(mode_of(&dir), mode, "left as it was");
        }
    }

    #[test]
    fn a_readable_directory_and_its_files_are_made_private() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("data");
        std::fs::create_dir_all(dir.join("blobs").join("ab")).expect("mkdir");
        std::fs::write(dir.join("sluice.db"), b"x").expect("write");
        std::fs::write(dir.join("blobs").join("ab").join("blob"), b"x").expect("write");
        std::os::unix::fs::symlink("/etc/hostname", dir.join("link")).expect("symlink");
        chmod(&dir.join("sluice.db"), 0o644);
        chmod(&dir.join("blobs").join("ab").join("blob"), 0o664);
        chmod(&dir.join("blobs"), 0o755);
        chmod(&dir.join("blobs").join("ab"), 0o750);
        chmod(&dir, 0o755);
        let before_target = mode_of(Path::new("/etc/hostname"));
        let done = prepare(&dir).expect("prepare");
        assert_eq!(done.opened_mode, Some(0o755));
        assert_eq!(done.fixed, 4);
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&dir.join("sluice.db")), 0o600);
        assert_eq!(mode_of(&dir.join("blobs")), 0o700);
        assert_eq!(mode_of(&dir.join("blobs").join("ab")), 0o700);
        assert_eq!(mode_of(&dir.join("blobs").join("ab").join("blob")), 0o600);
        assert_eq!(
            mode_of(Path::new("/etc/hostname")),
            before_target,
            "links are not followed"
        );
        assert!(inspect(&dir).expect("inspect").is_empty());
    }

    #[test]
    fn doctor_reports_without_changing() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("data");
        std::fs::create_dir(&dir).expect("mkdir");
        chmod(&dir, 0o750);
        let found = inspect(&dir).expect("inspect");
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("chmod 700"), "{found:?}");
        assert_eq!(mode_of(&dir), 0o750);
    }

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(
            shell_quote(Path::new("/srv/sluice-data")),
            "/srv/sluice-data"
        );
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
