//! A user pool's hosted UI and OAuth 2.0 endpoints (`sluice_compat::hosted`) through the
//! whole edge: `/oauth2/authorize`, the sign-in, sign-up and reset forms, `/oauth2/token`,
//! `/oauth2/userInfo`, `/oauth2/revoke`, `/logout` — unsigned, as browsers and OAuth
//! clients call them.
//!
//! Input: a request (`METHOD /path?query`, headers, an empty line, the body). The fixture
//! gives the default pool a domain, a resource server `api` (scope `read`), a web client
//! with a secret (code and implicit flows, callback `https://app.example/cb`), a machine
//! client (client credentials) and a user signed in through the hosted UI. Placeholders:
//! `@pool@`, `@client@` / `@secret@` (the web client), `@machine@` / `@machine_secret@`,
//! `@user@`, `@login@` (the browser's sign-in cookie), `@basic@` (the web client's HTTP
//! Basic credentials), `@code@` (an authorization code of that sign-in, made anew for each
//! input, with PKCE verifier `@verifier@`).
//!
//! Invariants: nothing panics; no answer is a 5xx; the token, userInfo and revoke endpoints
//! answer JSON (or nothing). Inputs whose path is not under the pool are skipped (S3's:
//! `s3_request` fuzzes those).
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{Parts, runtime, send, split_line, substitute};
use sluice_identity::OAuthSettings;
use sluice_identity::oauth::{AuthorizeAnswer, AuthorizeRequest, HostedStep};

struct Fixture {
    parts: Parts,
    router: axum::Router,
    client: (String, String),
    machine: (String, String),
    login: String,
}

const USER: &str = "hosted@example.com";
const PASSWORD: &str = "Passw0rd!";
const CALLBACK: &str = "https://app.example/cb";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let parts = sluice_fuzz::parts("hosted");
        let router = parts.edge();
        let id = parts.identity.clone();
        let pool = parts.pool.pool_id.clone();
        let _rt = runtime().enter();
        let (client, machine, login) = runtime()
            .block_on(async {
                id.create_domain(&pool, "fuzz-login").await?;
                id.create_resource_server(
                    &pool,
                    "api",
                    "api",
                    vec![sluice_identity::oauth::ResourceScope {
                        scope_name: "read".into(),
                        scope_description: "read".into(),
                    }],
                )
                .await?;
                let spec =
                    |name: &str, flows: &[&str], scopes: &[&str]| sluice_identity::ClientSpec {
                        client_name: Some(name.into()),
                        generate_secret: true,
                        oauth: OAuthSettings {
                            callback_urls: if flows.contains(&"code") {
                                vec![CALLBACK.into()]
                            } else {
                                vec![]
                            },
                            logout_urls: vec!["https://app.example/bye".into()],
                            allowed_oauth_flows: flows.iter().map(|s| s.to_string()).collect(),
                            allowed_oauth_scopes: scopes.iter().map(|s| s.to_string()).collect(),
                            allowed_oauth_flows_user_pool_client: true,
                            ..OAuthSettings::default()
                        },
                        ..Default::default()
                    };
                let web = id
                    .create_client(
                        &pool,
                        spec(
                            "web",
                            &["code", "implicit"],
                            &["openid", "email", "api/read"],
                        ),
                    )
                    .await?;
                let m = id
                    .create_client(
                        &pool,
                        spec("machine", &["client_credentials"], &["api/read"]),
                    )
                    .await?;
                id.create_user(&pool, USER, PASSWORD, false)?;
                let HostedStep::SignedIn(login) =
                    id.hosted_sign_in(&pool, &web.id, USER, PASSWORD).await?
                else {
                    return Err(sluice_identity::IdentityError::Backend(
                        "the fixture user did not sign in".into(),
                    ));
                };
                Ok::<_, sluice_identity::IdentityError>((
                    (web.id, web.secret.unwrap_or_default()),
                    (m.id, m.secret.unwrap_or_default()),
                    login,
                ))
            })
            .expect("fixture");
        Fixture {
            parts,
            router,
            client,
            machine,
            login,
        }
    })
}

/// A fresh code of the fixture's sign-in (empty when the input ended that sign-in: the
/// fixture's user was signed out by a logout).
fn code(f: &Fixture) -> String {
    let id = &f.parts.identity;
    let pool = &f.parts.pool.pool_id;
    runtime().block_on(async {
        let req = AuthorizeRequest {
            response_type: Some("code".into()),
            client_id: Some(f.client.0.clone()),
            redirect_uri: Some(CALLBACK.into()),
            code_challenge: Some(CHALLENGE.into()),
            code_challenge_method: Some("S256".into()),
            ..AuthorizeRequest::default()
        };
        let Ok(Ok(a)) = id.check_authorize(pool, &req).await else {
            return String::new();
        };
        match id.authorize_signed_in(pool, &f.login, &a).await {
            Ok(Some(AuthorizeAnswer::Code(c))) => c,
            _ => String::new(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((line, rest)) = split_line(data) else {
        return;
    };
    let f = fixture();
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", f.client.0, f.client.1));
    let code = if data.windows(6).any(|w| w == b"@code@") {
        code(f)
    } else {
        String::new()
    };
    let values = [
        ("pool", f.parts.pool.pool_id.as_str()),
        ("client", f.client.0.as_str()),
        ("secret", f.client.1.as_str()),
        ("machine", f.machine.0.as_str()),
        ("machine_secret", f.machine.1.as_str()),
        ("user", USER),
        ("login", f.login.as_str()),
        ("basic", basic.as_str()),
        ("code", code.as_str()),
        ("verifier", VERIFIER),
    ];
    let line = String::from_utf8_lossy(&substitute(line.as_bytes(), &values)).into_owned();
    let Some((method, target)) = line.split_once(' ') else {
        return;
    };
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let mut b = http::Request::builder().method(method).uri(target);
    let rest = substitute(rest, &values);
    let mut body = &rest[..];
    loop {
        let Some((h, after)) = split_line(body) else {
            break;
        };
        body = after;
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            b = b.header(k.trim(), v.trim());
        }
    }
    let Ok(req) = b.body(axum::body::Body::from(body.to_vec())) else {
        return;
    };
    let path = req.uri().path().to_owned();
    // Only the pool's paths: everything else is S3's, fuzzed by s3_request.
    let Some(rest) = path.strip_prefix(&format!("/{}/", f.parts.pool.pool_id)) else {
        return;
    };
    if rest.is_empty() {
        return;
    }
    let (status, headers, answer) = send(&f.router, req);
    sluice_fuzz::show(&path, status, &answer);
    assert!(
        !status.is_server_error(),
        "{path}: {status} {}",
        String::from_utf8_lossy(&answer)
    );
    let api = ["/oauth2/token", "/oauth2/userInfo", "/oauth2/revoke"]
        .iter()
        .any(|p| path.ends_with(p));
    if api && !answer.is_empty() {
        let json = headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if json {
            serde_json::from_slice::<serde_json::Value>(&answer).expect("answer is JSON");
        }
    }
});
