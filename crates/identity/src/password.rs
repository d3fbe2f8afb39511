//! Passwords: Cognito's default policy, and argon2id hashes.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::IdentityError;

/// Characters Cognito counts as symbols.
const SYMBOLS: &str = "^$*.[]{}()?\"!@#%&/\\,><':;|_~`=+- ";

/// Cognito's default password policy: at least 8 characters (at most 256), with an upper
/// case letter, a lower case letter, a digit and a symbol. The message names every rule the
/// password breaks, as Cognito's `InvalidPasswordException` does.
pub fn check_policy(password: &str) -> Result<(), IdentityError> {
    let mut broken = Vec::new();
    let len = password.chars().count();
    if len < 8 {
        broken.push("Password not long enough");
    }
    if len > 256 {
        broken.push("Password too long");
    }
    if !password.chars().any(|c| c.is_lowercase()) {
        broken.push("Password must have lowercase characters");
    }
    if !password.chars().any(|c| c.is_uppercase()) {
        broken.push("Password must have uppercase characters");
    }
    if !password.chars().any(|c| c.is_ascii_digit()) {
        broken.push("Password must have numeric characters");
    }
    if !password.chars().any(|c| SYMBOLS.contains(c)) {
        broken.push("Password must have symbol characters");
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(IdentityError::InvalidPassword(format!(
            "Password does not conform to policy: {}",
            broken.join("; ")
        )))
    }
}

/// An argon2id hash in PHC string form (parameters and salt included).
pub fn hash(password: &str) -> Result<String, IdentityError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IdentityError::Backend(format!("cannot hash password: {e}")))
}

pub fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of nothing in particular, verified against when a user does not exist so that an
/// unknown user and a wrong password take the same time.
pub(crate) fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash("decoy-Passw0rd!").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        assert!(check_policy("Passw0rd!").is_ok());
        let e = check_policy("password").expect_err("weak").to_string();
        assert!(e.contains("uppercase") && e.contains("numeric") && e.contains("symbol"));
        assert!(check_policy("Pa0!").is_err());
        assert!(check_policy("PASSW0RD!").is_err());
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = hash("Passw0rd!").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("Passw0rd!", &h));
        assert!(!verify("Passw0rd?", &h));
        assert!(!verify("x", "not a hash"));
    }
}
