//! The web console: a few static files compiled into the binary (`assets/`), served on the
//! upload API's port under `/console/`, and `/` redirecting there.
//!
//! No framework and no build step: one HTML page, one stylesheet and one ES module that talk
//! to the same public interfaces every other client uses — Cognito's JSON protocol on the
//! edge for sign-in (the edge answers CORS for it, as AWS does) and the upload API with the
//! ID token. The page learns where those are from `/console/config.json`. So the console
//! holds no privilege of its own: what it shows a user, that user's token can fetch.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles from this
//! origin only, no inline code, no framing) and a strong `ETag` (the SHA-256 of the file),
//! so that a browser revalidates with one small request and never runs a stale script
//! after an upgrade.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// What the page needs to know about this deployment.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleConfig {
    /// The AWS region the pool lives in.
    pub region: String,
    /// The default user pool and its app client (public values: every client app has them).
    pub user_pool_id: String,
    pub client_id: String,
    /// The edge (Cognito endpoint) when it was configured (`--edge-url`); otherwise the
    /// page uses its own host name with [`ConsoleConfig::edge_port`], so that a console
    /// opened from another machine reaches the edge of the machine that served it.
    pub edge_url: Option<String>,
    pub edge_port: u16,
    /// The bucket and stream uploads go to (shown to the user).
    pub bucket: String,
    pub stream: String,
    pub version: String,
}

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/console/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../assets/index.html"),
    },
    Asset {
        path: "/console/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/app.js"),
    },
    Asset {
        path: "/console/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/app.css"),
    },
    Asset {
        path: "/console/icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../assets/icon.svg"),
    },
];

/// The policy of every console answer. `connect-src` allows any http(s) origin: the edge
/// is another origin (another port), whose address the page learns at run time.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
     connect-src 'self' http: https:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

struct Served {
    body: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
}

#[derive(Clone)]
struct Console {
    files: Arc<Vec<(&'static str, Served)>>,
    config: Arc<Served>,
}

fn etag_of(bytes: &[u8]) -> HeaderValue {
    let digest = hex::encode(Sha256::digest(bytes));
    HeaderValue::from_str(&format!("\"{}\"", &digest[..32]))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The console's routes: `/` (a redirect), `/console` and the files under `/console/`.
pub fn router(config: ConsoleConfig) -> Router {
    let files = ASSETS
        .iter()
        .map(|a| {
            (
                a.path,
                Served {
                    body: a.body,
                    content_type: a.content_type,
                    etag: etag_of(a.body),
                },
            )
        })
        .collect();
    let json = serde_json::to_vec(&config).unwrap_or_else(|_| b"{}".to_vec());
    let config = Served {
        etag: etag_of(&json),
        // Built once per process: leaking it gives the `'static` the other files have.
        body: Box::leak(json.into_boxed_slice()),
        content_type: "application/json",
    };
    let state = Console {
        files: Arc::new(files),
        config: Arc::new(config),
    };
    let mut router = Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/config.json", get(config_json));
    for a in ASSETS {
        router = router.route(a.path, get(file));
    }
    router.with_state(state)
}

async fn config_json(State(c): State<Console>, headers: HeaderMap) -> Response {
    answer(&c.config, &headers)
}

async fn file(State(c): State<Console>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    match c.files.iter().find(|(p, _)| *p == uri.path()) {
        Some((_, served)) => answer(served, &headers),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn answer(s: &Served, req: &HeaderMap) -> Response {
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == s.etag.as_bytes());
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = s.body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(s.content_type),
        );
        r
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, s.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn config() -> ConsoleConfig {
        ConsoleConfig {
            region: "us-east-1".into(),
            user_pool_id: "us-east-1_abc".into(),
            client_id: "client".into(),
            edge_url: None,
            edge_port: 4566,
            bucket: "b".into(),
            stream: "s".into(),
            version: "0".into(),
        }
    }

    async fn get(path: &str, etag: Option<&str>) -> Response {
        let mut req = axum::http::Request::get(path);
        if let Some(e) = etag {
            req = req.header(header::IF_NONE_MATCH, e);
        }
        router(config())
            .oneshot(req.body(axum::body::Body::empty()).expect("request"))
            .await
            .expect("answer")
    }

    #[tokio::test]
    async fn files_are_served_with_their_type_policy_and_etag() {
        for a in ASSETS {
            let r = get(a.path, None).await;
            assert_eq!(r.status(), StatusCode::OK, "{}", a.path);
            assert_eq!(r.headers()[header::CONTENT_TYPE], a.content_type);
            assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
            let etag = r.headers()[header::ETAG].to_str().expect("etag").to_owned();
            let body = r.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(&body[..], a.body);
            // Revalidation: 304 with no body.
            let again = get(a.path, Some(&etag)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{}", a.path);
        }
        let r = get("/", None).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/console/");
        let r = get("/console/config.json", None).await;
        let body = r.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["clientId"], "client");
        assert_eq!(v["edgePort"], 4566);
    }

    /// The page loads nothing from elsewhere and runs no inline code (the CSP would block it).
    #[test]
    fn the_page_is_self_contained() {
        let html = std::str::from_utf8(include_bytes!("../assets/index.html")).expect("utf-8");
        for needle in ["http://", "https://", "<script>", " style=", " onclick="] {
            assert!(!html.contains(needle), "index.html contains {needle:?}");
        }
        let js = std::str::from_utf8(include_bytes!("../assets/app.js")).expect("utf-8");
        assert!(
            !js.contains("https://"),
            "app.js loads nothing from the internet"
        );
        assert!(
            !js.contains("innerHTML"),
            "app.js builds DOM nodes, not HTML strings"
        );
    }
}
