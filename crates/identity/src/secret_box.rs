//! Sealing secrets at rest: the SigV4 secret access keys are kept in the metadata engine
//! encrypted under a key that lives in a file of its own (mode 0600) in the data directory.
//!
//! *Threat model.* This protects secrets in the metadata engine against whoever can read the
//! database but not the key file: a copied `sluice.db` or WAL, a backup or dump of it, a
//! PostgreSQL server or role shared with others. It does not protect against someone who can
//! read the data directory itself (the key file sits there, as it must for a verifier that
//! recomputes HMACs from the secret); the directory's mode 0700 does that.
//!
//! *Format.* The key file holds 32 random bytes. A sealed secret is the text
//! `sealed1:<key fingerprint>:<base64 of nonce ‖ ciphertext ‖ tag>`, XChaCha20-Poly1305 with a
//! random 192-bit nonce (random nonces are safe at that size) and the access key's id as
//! associated data, so a sealed secret cannot be moved to another key's row. The fingerprint
//! (the first 8 bytes of SHA-256 of the key, hex) names the key file that sealed it, so that a
//! process with another key file (another data directory on the same PostgreSQL database)
//! says which file it lacks instead of "bad ciphertext". Secrets stored in clear by earlier
//! versions are 40 characters of `[A-Za-z0-9+/]`, never containing `:`, so nothing stored
//! in clear can be mistaken for a sealed value.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::IdentityError;

/// The prefix of a sealed value (version 1 of the format).
const PREFIX: &str = "sealed1:";
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

/// The key that seals secrets, loaded from its file.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    fingerprint: String,
    path: PathBuf,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox")
            .field("fingerprint", &self.fingerprint)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SecretBox {
    /// Loads the key file at `path`, creating it (32 random bytes, mode 0600, its folder mode
    /// 0700) if there is none. Two processes racing here end up with the same key: the new
    /// key is written whole and synced under a temporary name, then published with a hard
    /// link, which fails if another process published first; the loser reads the winner's.
    /// A key file that others can read is refused: it would unseal every secret.
    pub fn load_or_create(path: &Path) -> Result<SecretBox, IdentityError> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            IdentityError::Backend(format!("{what} {}: {e}", path.display()))
        };
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path)?,
            Err(e) => return Err(err("cannot read", &e)),
        }
        let meta = std::fs::metadata(path).map_err(|e| err("cannot read", &e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Backend(format!(
                "the key file {} can be read by other users (mode {mode:04o}); fix it with: chmod 600 {}",
                path.display(),
                path.display()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| err("cannot read", &e))?;
        Self::from_key(&bytes, path)
    }

    /// A box over raw key bytes (exactly 32).
    fn from_key(bytes: &[u8], path: &Path) -> Result<SecretBox, IdentityError> {
        if bytes.len() != KEY_BYTES {
            return Err(IdentityError::Backend(format!(
                "the key file {} is damaged: {} bytes, not {KEY_BYTES}",
                path.display(),
                bytes.len()
            )));
        }
        let cipher = XChaCha20Poly1305::new_from_slice(bytes)
            .map_err(|e| IdentityError::Backend(format!("invalid key: {e}")))?;
        Ok(SecretBox {
            cipher,
            fingerprint: hex::encode(&Sha256::digest(bytes)[..8]),
            path: path.to_owned(),
        })
    }

    /// The key's fingerprint, as sealed values name it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Where the key lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Seals `secret`, bound to `id` (the access key id).
    pub fn seal(&self, id: &str, secret: &str) -> Result<String, IdentityError> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: id.as_bytes(),
                },
            )
            .map_err(|e| IdentityError::Backend(format!("cannot seal a secret: {e}")))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!(
            "{PREFIX}{}:{}",
            self.fingerprint,
            STANDARD_NO_PAD.encode(out)
        ))
    }

    /// The secret of `id` from what is stored: a sealed value is opened; anything else is a
    /// secret an earlier version stored in clear (see [`is_sealed`]), returned as it is.
    pub fn open(&self, id: &str, stored: &str) -> Result<String, IdentityError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let damaged = || IdentityError::Backend(format!("the stored secret of {id} is damaged"));
        let (fingerprint, data) = rest.split_once(':').ok_or_else(damaged)?;
        if fingerprint != self.fingerprint {
            return Err(IdentityError::Backend(format!(
                "the secret of access key {id} was sealed with another key file (fingerprint {fingerprint}) than {} (fingerprint {}): servers sharing one metadata database need the same key file",
                self.path.display(),
                self.fingerprint
            )));
        }
        let data = STANDARD_NO_PAD.decode(data).map_err(|_| damaged())?;
        if data.len() < NONCE_BYTES {
            return Err(damaged());
        }
        let (nonce, sealed) = data.split_at(NONCE_BYTES);
        let nonce = XNonce::try_from(nonce).map_err(|_| damaged())?;
        let plain = self
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| damaged())?;
        String::from_utf8(plain).map_err(|_| damaged())
    }
}

/// Whether a stored value is sealed (rather than a secret stored in clear by an earlier
/// version).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// The fingerprint of the key that sealed a stored value, if it is sealed.
pub fn sealed_with(stored: &str) -> Option<&str> {
    stored.strip_prefix(PREFIX)?.split(':').next()
}

fn create(path: &Path) -> Result<(), IdentityError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        IdentityError::Backend(format!("{what} {}: {e}", path.display()))
    };
    let dir = path
        .parent()
        .ok_or_else(|| IdentityError::Backend("the key file path has no folder".into()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err("cannot create the folder of", &e))?;
    let mut key = [0u8; KEY_BYTES];
    rand::thread_rng().fill_bytes(&mut key);
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err("cannot write", &e));
    }
    let published = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match published {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err("cannot publish", &e)),
    }
    sluice_meta::sync_dir(dir).map_err(|e| err("cannot sync the folder of", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("sluice-box-{}", uuid::Uuid::new_v4().simple()))
    }

    #[test]
    fn key_file_is_private_and_stable() {
        let dir = temp_dir();
        let path = dir.join("keys").join("access-keys.key");
        let a = SecretBox::load_or_create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("parent"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(std::fs::read(&path).expect("read").len(), KEY_BYTES);
        let b = SecretBox::load_or_create(&path).expect("load");
        assert_eq!(a.fingerprint(), b.fingerprint());
        let sealed = a.seal("AKIA1", "s3cr3t").expect("seal");
        assert_eq!(b.open("AKIA1", &sealed).expect("open"), "s3cr3t");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn racing_creators_share_one_key() {
        let dir = temp_dir();
        let path = dir.join("k.key");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || SecretBox::load_or_create(&p).map(|b| b.fingerprint))
            })
            .collect();
        let prints: Vec<String> = handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("load"))
            .collect();
        assert!(prints.windows(2).all(|w| w[0] == w[1]), "{prints:?}");
        let leftovers = std::fs::read_dir(&dir).expect("list").count();
        assert_eq!(leftovers, 1, "no temporary files left");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn sealed_values_hide_the_secret_and_bind_the_id() {
        let dir = temp_dir();
        let b = SecretBox::load_or_create(&dir.join("k.key")).expect("create");
        let secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY12";
        let sealed = b.seal("AKIAONE", secret).expect("seal");
        assert!(is_sealed(&sealed));
        assert_eq!(sealed_with(&sealed), Some(b.fingerprint()));
        assert!(!sealed.contains(secret));
        assert_ne!(
            sealed,
            b.seal("AKIAONE", secret).expect("seal"),
            "fresh nonce"
        );
        assert_eq!(b.open("AKIAONE", &sealed).expect("open"), secret);
        assert!(b.open("AKIATWO", &sealed).is_err(), "bound to its key id");
        // Flipping a byte of the ciphertext is detected.
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("utf-8");
        assert!(b.open("AKIAONE", &tampered).is_err());
        // A secret an earlier version stored in clear reads as it is.
        assert!(!is_sealed(secret));
        assert_eq!(b.open("AKIAONE", secret).expect("clear"), secret);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn another_key_file_is_named_not_misread() {
        let dir = temp_dir();
        let a = SecretBox::load_or_create(&dir.join("a.key")).expect("a");
        let b = SecretBox::load_or_create(&dir.join("b.key")).expect("b");
        let sealed = a.seal("AKIAX", "secret").expect("seal");
        let e = b.open("AKIAX", &sealed).expect_err("other key").to_string();
        assert!(e.contains(a.fingerprint()) && e.contains("b.key"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn readable_or_damaged_key_files_are_refused() {
        let dir = temp_dir();
        let path = dir.join("k.key");
        SecretBox::load_or_create(&path).expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = SecretBox::load_or_create(&path)
            .expect_err("0644")
            .to_string();
        assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, b"short").expect("write");
        let e = SecretBox::load_or_create(&path)
            .expect_err("short")
            .to_string();
        assert!(e.contains("damaged"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
