//! Bearer tokens as the upload API checks them: `sluice_identity::Verifier` (API Gateway's
//! JWT authorizer, against a real key set) and the chain `sluice serve` puts around it (a
//! cache of verified tokens, then revocations).
//!
//! Input, either:
//! - a token (any text): checked as it is;
//! - `signed` on the first line, then a JOSE header line and a claims line (any bytes):
//!   signed RS256 with the key set's key, then checked — so that everything after the
//!   signature (issuer, audience, times, token_use, the claims' shapes, the cache, the
//!   revocations) is reached. `@kid@` stands for the key's id, `@revoked-sub@` for the
//!   `sub` of a user signed out everywhere.
//!
//! Invariants: nothing panics; a token the verifier accepts is for our issuer and client,
//! not expired beyond the leeway, an `id` or `access` token whose `sub` is its payload's, and
//! with its signature changed it is refused; the serving chain answers as the verifier does
//! (or refuses a revoked sign-in), the same way twice (the second answer from its cache).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{
    CLIENT_ID, ISSUER, LEEWAY_SECS, authorizer, now_secs, sign_jwt, signing_key, split_line,
    substitute,
};
use sluice_identity::{TokenError, Verifier};

/// The verifier's clock for the direct checks: a fixed time, so that a crash replays.
const NOW: i64 = 1_800_000_000;

fn verifier() -> &'static Verifier {
    static V: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    V.get_or_init(sluice_fuzz::verifier)
}

fuzz_target!(|data: &[u8]| {
    let chain = authorizer();
    let token = match data.strip_prefix(b"signed\n") {
        Some(rest) => {
            let rest = substitute(
                rest,
                &[
                    ("kid", &signing_key().0.kid),
                    ("revoked-sub", &chain.revoked_sub),
                ],
            );
            let Some((header, claims)) = split_line(&rest) else {
                return;
            };
            sign_jwt(header.as_bytes(), claims)
        }
        None => match std::str::from_utf8(data) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        },
    };
    if let Ok(claims) = verifier().verify(&token, NOW) {
        accepted(&token, &claims);
    }
    // The serving chain, on the real clock.
    let now = now_secs();
    let direct = verifier().verify(&token, now);
    let first = chain.chain.authorize(&token);
    let second = chain.chain.authorize(&token);
    assert_eq!(first, second, "the cached answer differs");
    match (&direct, &first) {
        (Ok(d), Ok(c)) => assert_eq!(d, c),
        (Ok(d), Err(TokenError::Revoked)) => assert_eq!(d.sub, chain.revoked_sub),
        (Err(d), Err(c)) => assert_eq!(d, c),
        _ => panic!("the verifier said {direct:?}, the serving chain {first:?}"),
    }
});

fn accepted(token: &str, claims: &sluice_identity::VerifiedClaims) {
    assert_eq!(claims.issuer, ISSUER);
    assert_eq!(claims.client_id, CLIENT_ID);
    assert!(
        NOW <= claims.exp.saturating_add(LEEWAY_SECS),
        "expired: {claims:?}"
    );
    assert!(claims.token_use == "id" || claims.token_use == "access");
    // (`None` when the payload is not UTF-8 throughout: the verifier's claims parser skips
    // unknown claims unread, `unverified_payload` reads them all. Only a token signed with
    // the pool's key gets here, and sluice signs none such.)
    if let Some(payload) = sluice_identity::tokens::unverified_payload(token) {
        assert_eq!(
            payload.get("sub").and_then(|s| s.as_str()),
            Some(claims.sub.as_str())
        );
    }
    // The same token with the first character of its signature changed (the last one of
    // a base64url signature carries padding bits).
    let (message, signature) = token.rsplit_once('.').expect("three parts");
    let first = signature.chars().next().unwrap_or('A');
    let changed = if first == 'A' { 'B' } else { 'A' };
    let tampered = format!("{message}.{changed}{}", &signature[first.len_utf8()..]);
    assert!(
        matches!(
            verifier().verify(&tampered, NOW),
            Err(TokenError::Signature | TokenError::Malformed)
        ),
        "a changed signature was accepted"
    );
}
