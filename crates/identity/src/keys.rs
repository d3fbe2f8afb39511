//! Signing keys: one RSA-2048 key per user pool, kept as PKCS#8 PEM sealed in the metadata
//! engine (`signing_keys`, under the deployment's key file), and its public half as a JWK.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use sluice_meta::params;

use crate::IdentityError;
use crate::secret_box::SecretBox;

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

/// A key of someone else's published JWK set, as given (any field may be missing).
#[derive(serde::Deserialize)]
struct PublishedJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

#[derive(serde::Deserialize)]
struct PublishedJwks {
    keys: Vec<PublishedJwk>,
}

impl Jwks {
    /// The RS256 signing keys of a JWK set another issuer publishes (an external OIDC
    /// issuer's, a federated provider's): keys of other types, algorithms or uses, and
    /// keys missing their modulus or exponent, are left out.
    pub fn from_published(body: &[u8]) -> Result<Jwks, String> {
        let raw: PublishedJwks =
            serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
        Ok(Jwks {
            keys: raw
                .keys
                .into_iter()
                .filter(|k| {
                    k.kty == "RSA"
                        && k.alg.as_deref().is_none_or(|a| a == "RS256")
                        && k.use_.as_deref().is_none_or(|u| u == "sig")
                })
                .filter_map(|k| {
                    Some(Jwk {
                        kid: k.kid.unwrap_or_default(),
                        alg: "RS256".into(),
                        kty: k.kty,
                        use_: "sig".into(),
                        n: k.n?,
                        e: k.e?,
                    })
                })
                .collect(),
        })
    }
}

impl SigningKey {
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

/// A new key, as PKCS#8 PEM.
fn new_pem() -> Result<String, IdentityError> {
    let key = new_key()
        .map_err(|e| IdentityError::Backend(format!("cannot generate a signing key: {e}")))?;
    Ok(key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| IdentityError::Backend(format!("cannot encode a signing key: {e}")))?
        .to_string())
}

/// The associated data a pool's sealed signing key is bound to.
fn sealed_as(pool_id: &str) -> String {
    format!("signing-key:{pool_id}")
}

/// The pool's signing key from the metadata engine, generating (and storing) it first if
/// there is none. Blocking. A key an earlier version kept in `legacy` (a PEM file in the
/// key folder) is moved into the engine instead of generating a new one, so tokens issued
/// before the upgrade stay valid. Processes racing here end up with the same key: the row
/// is inserted only if absent, and everyone uses the row that won.
pub(crate) fn load_or_generate(
    db: &sluice_meta::Meta,
    sealer: &SecretBox,
    pool_id: &str,
    legacy: &Path,
) -> Result<SigningKey, IdentityError> {
    const SELECT: &str = "SELECT sealed_pem FROM signing_keys WHERE pool_id = ?1";
    let p = pool_id.to_owned();
    let stored = db.read_blocking(move |c| -> Result<Option<String>, IdentityError> {
        Ok(c.query_opt(SELECT, params![p], |r| r.get::<String>(0))?)
    })?;
    let sealed = match stored {
        Some(sealed) => sealed,
        None => {
            let pem = match std::fs::read_to_string(legacy) {
                Ok(pem) => pem,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_pem()?,
                Err(e) => {
                    return Err(IdentityError::Backend(format!(
                        "cannot read {}: {e}",
                        legacy.display()
                    )));
                }
            };
            // A damaged file of an earlier version is refused here, not stored.
            SigningKey::from_pem(&pem)?;
            let sealed = sealer.seal(&sealed_as(pool_id), &pem)?;
            // Inserted only if absent; the row that won is the key, whoever wrote it.
            let p = pool_id.to_owned();
            db.write_blocking(move |c| -> Result<String, IdentityError> {
                c.execute(
                    "INSERT INTO signing_keys (pool_id, sealed_pem, created_ms)
                     VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    params![p, sealed, sluice_meta::now_ms()],
                )?;
                Ok(c.query_row(SELECT, params![p], |r| r.get::<String>(0))?)
            })?
        }
    };
    if !crate::secret_box::is_sealed(&sealed) {
        return Err(IdentityError::Backend(format!(
            "the signing key of {pool_id} is not sealed"
        )));
    }
    SigningKey::from_pem(&sealer.open(&sealed_as(pool_id), &sealed)?)
}

/// The pools' signing keys, sealed under the deployment's key file (see `secret_box`).
pub(crate) const MIGRATION: &str = "
CREATE TABLE signing_keys (
    pool_id TEXT PRIMARY KEY,
    sealed_pem TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_sealed_in_the_engine_stable_and_shared() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("keys", crate::MIGRATIONS);
        let sealer =
            SecretBox::load_or_create(&engines.dir().join("keys").join("k.key")).expect("box");
        let legacy = engines.dir().join("keys").join("none.pem");
        let a = load_or_generate(&db, &sealer, "us-east-2_AAAAAAAAA", &legacy).expect("new");
        let b = load_or_generate(&db, &sealer, "us-east-2_AAAAAAAAA", &legacy).expect("load");
        assert_eq!(a.kid, b.kid);
        assert_eq!(a.jwk(), b.jwk());
        assert_eq!(a.jwk().e, "AQAB");
        let stored: String = db
            .read_blocking(|c| {
                c.query_row("SELECT sealed_pem FROM signing_keys", params![], |r| {
                    r.get::<String>(0)
                })
            })
            .expect("row");
        assert!(!stored.contains("PRIVATE KEY"), "kept sealed: {stored}");
        // A process with another key file cannot use it, and says why.
        let other =
            SecretBox::load_or_create(&engines.dir().join("other").join("k.key")).expect("box");
        let err = load_or_generate(&db, &other, "us-east-2_AAAAAAAAA", &legacy)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("key file"), "{err}");
    }

    #[test]
    fn a_key_file_of_an_earlier_version_is_kept() {
        let engines = sluice_meta::conformance::TestEngines::new();
        let db = engines.meta("keys", crate::MIGRATIONS);
        let sealer =
            SecretBox::load_or_create(&engines.dir().join("keys").join("k.key")).expect("box");
        let legacy = engines.dir().join("keys").join("us-east-2_BBBBBBBBB.pem");
        std::fs::write(&legacy, new_pem().expect("pem")).expect("write");
        let from_file =
            SigningKey::from_pem(&std::fs::read_to_string(&legacy).expect("read")).expect("pem");
        let k = load_or_generate(&db, &sealer, "us-east-2_BBBBBBBBB", &legacy).expect("moved");
        assert_eq!(k.kid, from_file.kid);
    }
}
