//! Passwords: Cognito's default policy, and argon2id hashes.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::IdentityError;

/// A pool's password policy, in Cognito's `PasswordPolicyType` shape. Fields absent from a
/// request are `false` / their minimum, as in Cognito; a pool created without any policy
/// gets [`PasswordPolicy::cognito_default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PasswordPolicy {
    pub minimum_length: u32,
    pub require_uppercase: bool,
    pub require_lowercase: bool,
    pub require_numbers: bool,
    pub require_symbols: bool,
    pub temporary_password_validity_days: u32,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            minimum_length: 8,
            require_uppercase: false,
            require_lowercase: false,
            require_numbers: false,
            require_symbols: false,
            temporary_password_validity_days: 7,
        }
    }
}

impl PasswordPolicy {
    /// Cognito's default: 8 characters with upper case, lower case, digit and symbol; a
    /// temporary password is valid 7 days.
    pub fn cognito_default() -> Self {
        PasswordPolicy {
            minimum_length: 8,
            require_uppercase: true,
            require_lowercase: true,
            require_numbers: true,
            require_symbols: true,
            temporary_password_validity_days: 7,
        }
    }

    /// Cognito's bounds: length 6 to 99, temporary validity up to 365 days.
    pub fn validate(&self) -> Result<(), IdentityError> {
        if !(6..=99).contains(&self.minimum_length) {
            return Err(IdentityError::InvalidParameter(format!(
                "1 validation error detected: Value '{}' at 'policies.passwordPolicy.minimumLength' failed to satisfy constraint: Member must have value between 6 and 99",
                self.minimum_length
            )));
        }
        if self.temporary_password_validity_days > 365 {
            return Err(IdentityError::InvalidParameter(format!(
                "1 validation error detected: Value '{}' at 'policies.passwordPolicy.temporaryPasswordValidityDays' failed to satisfy constraint: Member must have value less than or equal to 365",
                self.temporary_password_validity_days
            )));
        }
        Ok(())
    }
}

/// Characters Cognito counts as symbols.
const SYMBOLS: &str = "^$*.[]{}()?\"!@#%&/\\,><':;|_~`=+- ";

/// Checks `password` against `policy` (never longer than 256 characters). The message names
/// every rule the password breaks, as Cognito's `InvalidPasswordException` does.
pub fn check_policy(password: &str, policy: &PasswordPolicy) -> Result<(), IdentityError> {
    let mut broken = Vec::new();
    let len = password.chars().count();
    if len < policy.minimum_length as usize {
        broken.push("Password not long enough");
    }
    if len > 256 {
        broken.push("Password too long");
    }
    if policy.require_lowercase && !password.chars().any(|c| c.is_lowercase()) {
        broken.push("Password must have lowercase characters");
    }
    if policy.require_uppercase && !password.chars().any(|c| c.is_uppercase()) {
        broken.push("Password must have uppercase characters");
    }
    if policy.require_numbers && !password.chars().any(|c| c.is_ascii_digit()) {
        broken.push("Password must have numeric characters");
    }
    if policy.require_symbols && !password.chars().any(|c| SYMBOLS.contains(c)) {
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

/// A random temporary password that satisfies any policy: at least `max(12, minimum)`
/// characters with every character class.
pub fn generate_temporary(policy: &PasswordPolicy) -> String {
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const DIGITS: &[u8] = b"23456789";
    const SYMS: &[u8] = b"!#%&*+-=?@^_";
    let mut rng = rand::thread_rng();
    let len = (policy.minimum_length as usize).max(12);
    let classes = [LOWER, UPPER, DIGITS, SYMS];
    let mut chars: Vec<u8> = classes
        .iter()
        .map(|c| c[rng.gen_range(0..c.len())])
        .collect();
    while chars.len() < len {
        let class = classes[rng.gen_range(0..classes.len())];
        chars.push(class[rng.gen_range(0..class.len())]);
    }
    for i in (1..chars.len()).rev() {
        chars.swap(i, rng.gen_range(0..=i));
    }
    chars.into_iter().map(char::from).collect()
}

/// An argon2id hash in PHC string form (parameters and salt included), on the calling
/// thread with working memory of its own: for commands, not for the server, whose hashing
/// goes through [`crate::hashing`]'s bounded pool.
pub fn hash(password: &str) -> Result<String, IdentityError> {
    crate::hashing::hash(password, &mut crate::hashing::Scratch::new())
}

/// Whether `password` matches the PHC string `phc`, on the calling thread (see [`hash`]).
pub fn verify(password: &str, phc: &str) -> bool {
    crate::hashing::verify(password, phc, &mut crate::hashing::Scratch::new())
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
        let p = PasswordPolicy::cognito_default();
        assert!(check_policy("Passw0rd!", &p).is_ok());
        let e = check_policy("password", &p).expect_err("weak").to_string();
        assert!(e.contains("uppercase") && e.contains("numeric") && e.contains("symbol"));
        assert!(check_policy("Pa0!", &p).is_err());
        assert!(check_policy("PASSW0RD!", &p).is_err());
        let lax = PasswordPolicy {
            minimum_length: 6,
            ..PasswordPolicy::default()
        };
        assert!(check_policy("simple", &lax).is_ok());
        assert!(check_policy("short", &lax).is_err());
        for _ in 0..20 {
            let t = generate_temporary(&p);
            assert!(check_policy(&t, &p).is_ok(), "{t}");
        }
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
