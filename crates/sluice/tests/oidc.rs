//! Tokens of an external OpenID Connect issuer at the upload API (`--issuer`, `--audience`):
//! a second sluice plays the issuer (its pool's discovery document and JWKS on its edge),
//! as a real Cognito pool, Keycloak or Auth0 would.

mod common;

use common::{DataDir, Server};

#[test]
fn the_api_accepts_tokens_of_an_external_issuer() {
    let idp_dir = DataDir::new("oidc-idp");
    let idp = Server::start(&idp_dir.0);
    idp.create_user("outside@example.com");
    let info = idp.info();
    let issuer = info["issuer"].as_str().expect("issuer").to_owned();
    let client = info["clientId"].as_str().expect("clientId").to_owned();
    let token = idp.id_token("outside@example.com");

    // The API trusts the issuer alone: its own pool's tokens are off.
    let dir = DataDir::new("oidc-api");
    let api = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[
            ("SLUICE_ISSUERS", &issuer),
            ("SLUICE_AUDIENCES", &client),
            ("SLUICE_POOL_TOKENS", "false"),
        ],
    );
    let resp = api.upload(&token, "outside.txt", "from another issuer");
    assert_eq!(resp.status(), 200, "{:?}", resp.text());
    let body: serde_json::Value = resp.json().expect("json");
    let id = body["uploadId"].as_str().expect("uploadId").to_owned();
    assert_eq!(api.wait_final(&token, &id)["status"], "processed");
    api.create_user("inside@example.com");
    let own = api.id_token("inside@example.com");
    assert_eq!(
        api.upload(&own, "inside.txt", "own pool").status(),
        401,
        "the own pool's tokens are refused when switched off"
    );
    let mut forged: Vec<String> = token.split('.').map(str::to_owned).collect();
    forged[2] = forged[2].chars().rev().collect();
    assert_eq!(
        api.upload(&forged.join("."), "forged.txt", "x").status(),
        401,
        "a signature that is not the issuer's"
    );
    api.stop();

    // Another audience: the issuer's tokens for this client are not for this API. With the
    // own pool on again, its tokens work beside the issuer's.
    let api = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[
            ("SLUICE_ISSUERS", &issuer),
            ("SLUICE_AUDIENCES", "some-other-client"),
        ],
    );
    assert_eq!(api.upload(&token, "aud.txt", "x").status(), 401);
    let own = api.id_token("inside@example.com");
    assert_eq!(api.upload(&own, "inside.txt", "own pool").status(), 200);
    api.stop();
    idp.stop();
}

/// An issuer that does not answer is named at start and its tokens are refused; sluice's
/// own tokens keep working. `pool_tokens = false` without an issuer is refused at start.
#[test]
fn an_unreachable_issuer_is_refused_not_trusted() {
    let dir = DataDir::new("oidc-down");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let api = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[
            ("SLUICE_ISSUERS", &format!("http://127.0.0.1:{closed}/pool")),
            ("SLUICE_AUDIENCES", "app"),
        ],
    );
    api.create_user("me@example.com");
    let own = api.id_token("me@example.com");
    assert_eq!(api.upload(&own, "mine.txt", "x").status(), 200);
    api.stop();
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--data-dir"])
        .arg(&dir.0)
        .env("SLUICE_POOL_TOKENS", "false")
        .env_remove("SLUICE_ISSUERS")
        .env_remove("SLUICE_CONFIG")
        .current_dir(&dir.0)
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool_tokens = false needs"), "{err}");
}
