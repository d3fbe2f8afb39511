//! App client secrets: Cognito's `SECRET_HASH`, which every call naming a user through a
//! client with a secret must carry (sign-in flows in `auth.rs`, self-service user
//! operations in `users.rs`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{ClientRow, IdentityError};

/// The MAC of a username through a client, not yet finalised.
fn mac(secret: &str, username: &str, client_id: &str) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(username.as_bytes());
    mac.update(client_id.as_bytes());
    Some(mac)
}

/// `Base64(HMAC-SHA256(key = client secret, msg = username + client id))`.
pub fn secret_hash(secret: &str, username: &str, client_id: &str) -> String {
    mac(secret, username, client_id)
        .map(|m| STANDARD.encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Whether a client secret given to an OAuth endpoint is the client's, in time that does
/// not depend on where they differ.
pub(crate) fn same(secret: &str, given: &str) -> bool {
    use sha2::Digest as _;
    // Comparing digests makes the comparison's length fixed.
    let (a, b) = (
        Sha256::digest(secret.as_bytes()),
        Sha256::digest(given.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A client with a secret requires SECRET_HASH computed over one of `usernames`.
pub(crate) fn check_secret_hash(
    client: &ClientRow,
    usernames: &[&str],
    provided: Option<&str>,
) -> Result<(), IdentityError> {
    let Some(secret) = &client.secret else {
        return Ok(());
    };
    let Some(provided) = provided.filter(|p| !p.is_empty()) else {
        return Err(IdentityError::NotAuthorized(format!(
            "Client {} is configured with secret but SECRET_HASH was not received",
            client.id
        )));
    };
    let Ok(provided_bytes) = STANDARD.decode(provided) else {
        return Err(bad_secret(&client.id));
    };
    let matches = |u: &&str| {
        mac(secret, u, &client.id).is_some_and(|m| m.verify_slice(&provided_bytes).is_ok())
    };
    if usernames.iter().any(matches) {
        return Ok(());
    }
    Err(bad_secret(&client.id))
}

fn bad_secret(client_id: &str) -> IdentityError {
    IdentityError::NotAuthorized(format!(
        "Unable to verify secret hash for client {client_id}"
    ))
}
