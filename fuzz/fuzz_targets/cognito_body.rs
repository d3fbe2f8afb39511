//! Cognito user pools' JSON 1.1 request bodies through `sluice_compat::cognito::handle`
//! (what the edge calls for `AWSCognitoIdentityProviderService.*`) on a real identity
//! service: the default pool and client, and a signed-in user.
//!
//! Input: the first line is the operation (`InitiateAuth`), optionally followed by
//! ` anonymous` (no valid signature: admin operations are refused); the rest is the body.
//! Placeholders: `@pool@`, `@client@`, `@user@` (the signed-in user's name), `@access@`,
//! `@refresh@` (that user's tokens).
//!
//! Invariants: nothing panics; no answer is a 5xx; every answer is JSON; the IAM resource
//! the edge derives from the body (`authz::cognito_resource`) is a pool ARN or `*`.
#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sluice_compat::cognito::Caller;
use sluice_fuzz::{ACCOUNT, Parts, REGION, runtime, split_line, substitute};
use sluice_identity::AuthOutcome;

struct Fixture {
    parts: Parts,
    user: Mutex<User>,
}

/// The signed-in user placeholders stand for; made again when the fuzzer signed it out,
/// changed its password, disabled or deleted it.
struct User {
    pool: sluice_identity::PoolInfo,
    n: u32,
    name: String,
    access: String,
    refresh: String,
    signed_in: Instant,
}

const PASSWORD: &str = "Passw0rd!";

/// Operations after which the fixture's user may no longer sign in or its tokens work.
const DESTRUCTIVE: &[&str] = &[
    "ChangePassword",
    "GlobalSignOut",
    "RevokeToken",
    "AdminSetUserPassword",
    "AdminDeleteUser",
    "AdminDisableUser",
    "AdminUserGlobalSignOut",
    "AdminUpdateUserAttributes",
    "UpdateUserAttributes",
    "ConfirmForgotPassword",
    "DeleteUserPool",
    "DeleteUserPoolClient",
    "UpdateUserPool",
    "UpdateUserPoolClient",
    "SetUserPoolMfaConfig",
    "SetUserMFAPreference",
    "AdminSetUserMFAPreference",
    "VerifySoftwareToken",
    "AdminResetUserPassword",
    "DeleteUser",
    "DeleteUserAttributes",
    "AdminDeleteUserAttributes",
];

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let parts = sluice_fuzz::parts("cognito");
        let user = sign_in(&parts, parts.pool.clone(), 0).expect("fixture user");
        Fixture {
            parts,
            user: Mutex::new(user),
        }
    })
}

/// Creates user `n` and signs it in. (Errors are returned: the fuzzer's panic hook aborts
/// on any panic.)
fn sign_in(parts: &Parts, pool: sluice_identity::PoolInfo, n: u32) -> Result<User, String> {
    let name = format!("fuzz-{n}@example.com");
    let _rt = runtime().enter();
    parts
        .identity
        .create_user(&pool.pool_id, &name, PASSWORD, false)
        .map_err(|e| e.to_string())?;
    let outcome = runtime()
        .block_on(
            parts
                .identity
                .initiate_user_password(&pool.client_id, &name, PASSWORD, None),
        )
        .map_err(|e| e.to_string())?;
    let AuthOutcome::Tokens(t) = outcome else {
        return Err("the fixture user has a temporary password".into());
    };
    Ok(User {
        pool,
        n,
        name,
        access: t.access_token,
        refresh: t.refresh_token.unwrap_or_default(),
        signed_in: Instant::now(),
    })
}

/// A new user, signed in: the pool may be gone (DeleteUserPool), so the default pool is
/// bootstrapped again first.
fn renew(f: &Fixture, user: &mut User) {
    let _rt = runtime().enter();
    let pool = f
        .parts
        .identity
        .bootstrap(REGION, sluice_identity::Lifetimes::default())
        .unwrap_or_else(|_| user.pool.clone());
    // The fuzzer may have turned on MFA or Lambda triggers, which the fixture's plain
    // password sign-in cannot pass: back to the pool's defaults first.
    let reset = runtime().block_on(
        f.parts
            .identity
            .update_pool(&pool.pool_id, sluice_identity::PoolUpdate::default()),
    );
    if let Err(e) = reset {
        panic!("cannot reset the fixture pool's settings: {e}");
    }
    for n in user.n + 1..user.n + 100 {
        if let Ok(u) = sign_in(&f.parts, pool.clone(), n) {
            *user = u;
            return;
        }
    }
    panic!("cannot sign a fixture user in again");
}

fuzz_target!(|data: &[u8]| {
    let Some((line, body)) = split_line(data) else {
        return;
    };
    let (op, caller) = match line.strip_suffix(" anonymous") {
        Some(op) => (op, Caller::Anonymous),
        None => (line, Caller::Signed),
    };
    let f = fixture();
    let body = {
        let mut user = f.user.lock().expect("fixture");
        if user.signed_in.elapsed() > Duration::from_secs(40 * 60) {
            renew(f, &mut user);
        }
        substitute(
            body,
            &[
                ("pool", &user.pool.pool_id),
                ("client", &user.pool.client_id),
                ("user", &user.name),
                ("access", &user.access),
                ("refresh", &user.refresh),
            ],
        )
    };
    let resource = sluice_compat::authz::cognito_resource(REGION, ACCOUNT, &body);
    assert!(
        resource == "*"
            || resource.starts_with(&format!("arn:aws:cognito-idp:{REGION}:{ACCOUNT}:userpool/")),
        "{resource}"
    );
    let (status, answer) = runtime().block_on(async {
        let resp = sluice_compat::cognito::handle(
            &f.parts.identity,
            op,
            &body,
            caller,
            "000000000000",
            None,
        )
        .await;
        let status = resp.status();
        let answer = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .expect("answer body");
        (status, answer)
    });
    sluice_fuzz::show(op, status, &answer);
    assert!(
        !status.is_server_error(),
        "{op}: {status} {}\nrequest: {:?}",
        String::from_utf8_lossy(&answer),
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice::<serde_json::Value>(&answer).expect("answer is JSON");
    if status.is_success() && DESTRUCTIVE.contains(&op) {
        let mut user = f.user.lock().expect("fixture");
        renew(f, &mut user);
    }
});
