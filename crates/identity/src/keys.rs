//! Signing keys: one RSA-2048 key per user pool, kept as a PKCS#8 PEM file with mode 0600,
//! and its public half as a JWK.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::IdentityError;

/// A pool's signing key.
pub struct SigningKey {
    pub kid: String,
    pub encoding: jsonwebtoken::EncodingKey,
    pub public: RsaPublicKey,
}

/// One key of a JSON Web Key Set (RFC 7517), as Cognito publishes them.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Jwk {
    pub kid: String,
    pub alg: String,
    pub kty: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub n: String,
    pub e: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

impl SigningKey {
    /// Loads the key at `path`, generating it first if there is none. Two processes racing
    /// here end up with the same key: the new key is published with a hard link, which
    /// fails if another process published first, and the loser reads the winner's key.
    pub fn load_or_generate(path: &Path) -> Result<SigningKey, IdentityError> {
        if !path.exists() {
            generate(path)?;
        }
        let pem = std::fs::read_to_string(path)
            .map_err(|e| IdentityError::Backend(format!("cannot read {}: {e}", path.display())))?;
        Self::from_pem(&pem)
    }

    pub fn from_pem(pem: &str) -> Result<SigningKey, IdentityError> {
        let private = RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|e| IdentityError::Backend(format!("invalid signing key: {e}")))?;
        let public = private.to_public_key();
        let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| IdentityError::Backend(format!("invalid signing key: {e}")))?;
        Ok(SigningKey {
            kid: kid_of(&public)?,
            encoding,
            public,
        })
    }

    pub fn jwk(&self) -> Jwk {
        Jwk {
            kid: self.kid.clone(),
            alg: "RS256".into(),
            kty: "RSA".into(),
            use_: "sig".into(),
            n: URL_SAFE_NO_PAD.encode(self.public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(self.public.e().to_bytes_be()),
        }
    }
}

/// A stable key id: the SHA-256 of the public key's PKCS#1 DER, base64url.
fn kid_of(public: &RsaPublicKey) -> Result<String, IdentityError> {
    let der = public
        .to_pkcs1_der()
        .map_err(|e| IdentityError::Backend(format!("cannot encode public key: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_bytes())))
}

/// A new 2048-bit key. In a fuzzing build (cargo-fuzz compiles with `--cfg fuzzing`) every
/// call after the first returns the first key: with coverage instrumentation a key takes
/// seconds to generate, which left the Cognito target (whose CreateUserPool generates one)
/// time for little else.
fn new_key() -> Result<RsaPrivateKey, rsa::Error> {
    #[cfg(fuzzing)]
    {
        static KEY: std::sync::OnceLock<RsaPrivateKey> = std::sync::OnceLock::new();
        if let Some(k) = KEY.get() {
            return Ok(k.clone());
        }
        let k = RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
        return Ok(KEY.get_or_init(|| k).clone());
    }
    #[cfg(not(fuzzing))]
    RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
}

fn generate(path: &Path) -> Result<(), IdentityError> {
    let backend = |what: &str, e: &dyn std::fmt::Display| {
        IdentityError::Backend(format!("{what} {}: {e}", path.display()))
    };
    let dir = path
        .parent()
        .ok_or_else(|| IdentityError::Backend("key path has no parent".into()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| backend("cannot create the folder of", &e))?;
    let key = new_key().map_err(|e| backend("cannot generate", &e))?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| backend("cannot encode", &e))?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| backend("cannot create", &e))?;
    f.write_all(pem.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| backend("cannot write", &e))?;
    let published = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match published {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(backend("cannot publish", &e)),
    }
    sluice_meta::sync_dir(dir).map_err(|e| backend("cannot sync the folder of", &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_key_is_private_and_stable() {
        let dir = std::env::temp_dir().join(format!("sluice-keys-{}", uuid::Uuid::new_v4()));
        let path = dir.join("k.pem");
        let a = SigningKey::load_or_generate(&path).expect("generate");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = SigningKey::load_or_generate(&path).expect("load");
        assert_eq!(a.kid, b.kid);
        assert_eq!(a.jwk(), b.jwk());
        assert_eq!(a.jwk().e, "AQAB");
        let _ = std::fs::remove_dir_all(dir);
    }
}
