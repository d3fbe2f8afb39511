//! A user pool's hosted UI and OAuth 2.0 / OpenID Connect endpoints, served by the edge
//! under the pool's issuer path (`<edge>/<pool id>/…`) once the pool has a domain
//! (CreateUserPoolDomain), as Cognito serves them under the domain:
//!
//! | path | |
//! |---|---|
//! | `GET oauth2/authorize` | checks the request (`Identity::check_authorize`), answers a signed-in browser at once, else sends it to `login` |
//! | `GET/POST login` | the sign-in page; then `login/challenge` for a new password or a second factor |
//! | `GET/POST signup`, `POST confirm` | sign-up and its confirmation code |
//! | `GET/POST forgotPassword`, `POST confirmForgotPassword` | password reset |
//! | `POST oauth2/token` | authorization_code (PKCE), refresh_token, client_credentials |
//! | `GET/POST oauth2/userInfo` | the attributes an access token's scopes show |
//! | `POST oauth2/revoke` | revokes a refresh token |
//! | `GET logout` | ends the browser's sign-in, then to a registered logout URL or the sign-in page |
//! | `GET oauth2/idpresponse` | an external OIDC provider's answer (`Identity::federation_finish`) |
//!
//! A pool id (`<region>_<id>`) is never a valid bucket name, so these paths never shadow an
//! S3 object: this layer passes every other request on.
//!
//! Pages are plain HTML (no script) and every value in them is escaped. Forms are
//! protected from cross-site posts by a double-submit token (`XSRF-TOKEN` cookie and
//! `_csrf` field, as Cognito's pages). The browser's sign-in is the `sluice-login` cookie
//! (HttpOnly, SameSite=Lax, scoped to the pool's path) naming a server-side login session.

use std::collections::{BTreeMap, HashMap};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use sluice_identity::mfa::MfaChallenge;
use sluice_identity::oauth::{
    AuthorizeAnswer, AuthorizeRefusal, AuthorizeRequest, Authorized, HostedAnswer, HostedStep,
    OAuthTokens, TokenRequest,
};
use sluice_identity::{CodeDelivery, IdentityError, valid_pool_id};

use crate::Edge;

const LOGIN_COOKIE: &str = "sluice-login";
const CSRF_COOKIE: &str = "XSRF-TOKEN";
/// Largest form or token request read.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The hosted paths, after `<pool id>/`.
const PATHS: &[&str] = &[
    "oauth2/authorize",
    "oauth2/token",
    "oauth2/userInfo",
    "oauth2/revoke",
    "oauth2/idpresponse",
    "login",
    "login/challenge",
    "signup",
    "confirm",
    "forgotPassword",
    "confirmForgotPassword",
    "logout",
];

/// The authorization request's parameters, carried through the pages as hidden fields.
const CARRIED: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "scope",
    "code_challenge",
    "code_challenge_method",
    "nonce",
];

/// Serves the hosted paths of pools; passes every other request on.
pub async fn layer(
    State(edge): State<Edge>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().trim_start_matches('/');
    let Some((pool, rest)) = path.split_once('/') else {
        return next.run(req).await;
    };
    if !valid_pool_id(pool) || !PATHS.contains(&rest) {
        return next.run(req).await;
    }
    let (pool, rest) = (pool.to_owned(), rest.to_owned());
    let api = matches!(
        rest.as_str(),
        "oauth2/token" | "oauth2/userInfo" | "oauth2/revoke"
    );
    if api && req.method() == Method::OPTIONS {
        return cors(StatusCode::NO_CONTENT.into_response());
    }
    match edge.identity.hosted_enabled(&pool).await {
        Ok(true) => {}
        Ok(false) => {
            let m = format!(
                "User pool {pool} has no domain: its hosted UI and OAuth 2.0 endpoints are off (CreateUserPoolDomain turns them on)."
            );
            return if api {
                oauth_json(StatusCode::NOT_FOUND, "invalid_request", &m)
            } else {
                page(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    &format!("<p>{}</p>", esc(&m)),
                )
            };
        }
        Err(e) => return failure(e, api),
    }
    let h = Hosted {
        edge,
        pool,
        source: req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip()),
    };
    let method = req.method().clone();
    let query: HashMap<String, String> =
        serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    let headers = req.headers().clone();
    let form: HashMap<String, String> = if method == Method::POST {
        match axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES).await {
            Ok(b) => match serde_urlencoded::from_bytes(&b) {
                Ok(f) => f,
                Err(_) if api => {
                    return cors(oauth_json(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "the body must be application/x-www-form-urlencoded",
                    ));
                }
                Err(_) => return bad_page("The form could not be read."),
            },
            Err(_) => {
                return if api {
                    cors(oauth_json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "invalid_request",
                        "request body too large",
                    ))
                } else {
                    bad_page("The form is too large.")
                };
            }
        }
    } else {
        HashMap::new()
    };
    let resp = match (method, rest.as_str()) {
        (Method::GET, "oauth2/authorize") => h.authorize(&query, &headers).await,
        (Method::GET, "login") => h.login_page(&query, &headers, None).await,
        (Method::POST, "login") => h.login(&form, &headers).await,
        (Method::POST, "login/challenge") => h.challenge(&form, &headers).await,
        (Method::GET, "signup") => h.signup_page(&query, &headers, None).await,
        (Method::POST, "signup") => h.signup(&form, &headers).await,
        (Method::POST, "confirm") => h.confirm(&form, &headers).await,
        (Method::GET, "forgotPassword") => h.forgot_page(&query, &headers, None).await,
        (Method::POST, "forgotPassword") => h.forgot(&form, &headers).await,
        (Method::POST, "confirmForgotPassword") => h.confirm_forgot(&form, &headers).await,
        (Method::GET, "logout") => h.logout(&query, &headers).await,
        (Method::GET, "oauth2/idpresponse") => h.idp_response(&query).await,
        (Method::POST, "oauth2/token") => cors(h.token(&form, &headers).await),
        (Method::GET | Method::POST, "oauth2/userInfo") => cors(h.user_info(&headers).await),
        (Method::POST, "oauth2/revoke") => cors(h.revoke(&form, &headers).await),
        _ => {
            let mut r = (StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response();
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static(if api { "POST" } else { "GET, POST" }),
            );
            r
        }
    };
    no_store(resp)
}

/// Token responses and pages are never cached (RFC 6749 §5.1).
fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// The API endpoints answer browsers of any origin (single-page apps redeem codes with
/// PKCE from the browser); they use no cookie.
fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    r
}

/// HTML-escapes text for element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{t}</title><style>\
body{{font-family:system-ui,sans-serif;max-width:24rem;margin:3rem auto;padding:0 1rem;color:#222}}\
label{{display:block;margin:.8rem 0 .2rem}}input[type=text],input[type=password],input[type=email]{{width:100%;padding:.5rem;box-sizing:border-box}}\
button{{margin-top:1rem;padding:.5rem 1rem}}.error{{color:#a00}}.note{{color:#555}}a{{color:#05a}}\
</style></head><body><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    );
    let mut r = (status, html).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Nothing on these pages may be framed (click-jacking) or load anything else. No
    // `form-action`: a sign-in's post redirects to the app's callback, whose scheme may be
    // an app's own (`myapp://`), which no source list can name.
    r.headers_mut()
        .insert("x-frame-options", HeaderValue::from_static("DENY"));
    r.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    r
}

fn bad_page(message: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Something went wrong",
        &format!("<p class=\"error\">{}</p>", esc(message)),
    )
}

fn oauth_json(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        let v = format!("Bearer error=\"{error}\"");
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    r
}

/// An identity failure the OAuth endpoints or pages answer: OAuth errors by their code,
/// engine faults as 503 (retry later), anything else as a server error.
fn failure(e: IdentityError, api: bool) -> Response {
    let (status, error, description) = match &e {
        IdentityError::OAuth { error, description } => {
            let status = match *error {
                "invalid_client" | "invalid_token" => StatusCode::UNAUTHORIZED,
                "insufficient_scope" => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, *error, description.clone())
        }
        IdentityError::TooManyRequests(m) => {
            (StatusCode::TOO_MANY_REQUESTS, "slow_down", m.clone())
        }
        IdentityError::Meta(m) if crate::json11::unavailable(m).is_some() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            crate::json11::unavailable(m).unwrap_or_default(),
        ),
        _ => {
            tracing::error!(error = %e, "hosted UI request failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error".to_owned(),
            )
        }
    };
    let mut r = if api {
        oauth_json(status, error, &description)
    } else {
        page(
            status,
            "Something went wrong",
            &format!("<p class=\"error\">{}</p>", esc(&description)),
        )
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn cookies(headers: &HeaderMap) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(';') {
            if let Some((k, val)) = part.trim().split_once('=') {
                out.insert(k.to_owned(), val.to_owned());
            }
        }
    }
    out
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `uri` with `params` added to its query (or, for implicit answers, as its fragment).
fn with_params(uri: &str, params: &[(&str, &str)], fragment: bool) -> String {
    let encoded = serde_urlencoded::to_string(params).unwrap_or_default();
    let sep = if fragment {
        '#'
    } else if uri.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{uri}{sep}{encoded}")
}

fn carried(from: &HashMap<String, String>) -> Vec<(&'static str, String)> {
    CARRIED
        .iter()
        .filter_map(|k| {
            from.get(*k)
                .filter(|v| !v.is_empty())
                .map(|v| (*k, v.clone()))
        })
        .collect()
}

/// The authorization parameters of a form, with the username to show again.
fn again(form: &HashMap<String, String>, username: Option<String>) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = carried(form)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    if let Some(u) = username {
        out.insert("username".into(), u);
    }
    out
}

/// The hidden fields and the note of a page asking for a code sent to the user (sign-up
/// confirmation, password reset).
fn code_step(
    form: &HashMap<String, String>,
    username: &str,
    delivery: Option<&CodeDelivery>,
) -> (String, String) {
    let mut fields = carried(form);
    fields.push(("username", username.to_owned()));
    let note = delivery
        .map(|d| format!("We sent a code to {}.", d.destination))
        .unwrap_or_else(|| "Enter the code we sent you.".to_owned());
    (hidden(&fields), note)
}

/// A page's error line (empty without one) and the status it is answered with.
fn alert(error: Option<&str>) -> (String, StatusCode) {
    match error {
        Some(e) if !e.is_empty() => (
            format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)),
            StatusCode::BAD_REQUEST,
        ),
        _ => (String::new(), StatusCode::OK),
    }
}

fn authorize_request(from: &HashMap<String, String>) -> AuthorizeRequest {
    let get = |k: &str| from.get(k).cloned();
    AuthorizeRequest {
        response_type: get("response_type"),
        client_id: get("client_id"),
        redirect_uri: get("redirect_uri"),
        state: get("state"),
        scope: get("scope"),
        code_challenge: get("code_challenge"),
        code_challenge_method: get("code_challenge_method"),
        nonce: get("nonce"),
        identity_provider: get("identity_provider"),
        idp_identifier: get("idp_identifier"),
        prompt: get("prompt"),
    }
}

fn hidden(fields: &[(&str, String)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                esc(k),
                esc(v)
            )
        })
        .collect()
}

struct Hosted {
    edge: Edge,
    pool: String,
    source: Option<std::net::IpAddr>,
}

/// A page answer with the cookies it sets.
struct Page {
    resp: Response,
}

impl Page {
    fn cookie(mut self, c: String) -> Page {
        if let Ok(v) = HeaderValue::from_str(&c) {
            self.resp.headers_mut().append(header::SET_COOKIE, v);
        }
        self
    }
}

impl Hosted {
    fn secure(&self) -> bool {
        self.edge
            .identity
            .issuer(&self.pool)
            .starts_with("https://")
    }

    fn cookie(&self, name: &str, value: &str, max_age: i64) -> String {
        format!(
            "{name}={value}; Path=/{}; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            self.pool,
            if self.secure() { "; Secure" } else { "" }
        )
    }

    /// The form's anti-forgery token: the cookie's, or a new one (set with the page).
    fn csrf(&self, headers: &HeaderMap) -> (String, Option<String>) {
        match cookies(headers).get(CSRF_COOKIE) {
            Some(t) if t.len() >= 32 => (t.clone(), None),
            _ => {
                let t = uuid::Uuid::new_v4().simple().to_string()
                    + &uuid::Uuid::new_v4().simple().to_string();
                let c = self.cookie(CSRF_COOKIE, &t, 3600);
                (t, Some(c))
            }
        }
    }

    fn csrf_ok(&self, form: &HashMap<String, String>, headers: &HeaderMap) -> bool {
        match (cookies(headers).get(CSRF_COOKIE), form.get("_csrf")) {
            (Some(c), Some(f)) => c.len() >= 32 && c == f,
            _ => false,
        }
    }

    fn form_page(
        &self,
        headers: &HeaderMap,
        status: StatusCode,
        title: &str,
        body: impl FnOnce(&str) -> String,
    ) -> Response {
        let (token, set) = self.csrf(headers);
        let p = Page {
            resp: page(status, title, &body(&hidden(&[("_csrf", token)]))),
        };
        match set {
            Some(c) => p.cookie(c).resp,
            None => p.resp,
        }
    }

    fn link(&self, path: &str, params: &[(&'static str, String)]) -> String {
        let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        with_params(&format!("/{}/{path}", self.pool), &p, false)
    }

    /// Checks the carried authorization request; a refusal is the answer.
    async fn checked(&self, from: &HashMap<String, String>) -> Result<Authorized, Response> {
        match self
            .edge
            .identity
            .check_authorize(&self.pool, &authorize_request(from))
            .await
        {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(refusal)) => Err(refused(refusal)),
            Err(e) => Err(failure(e, false)),
        }
    }

    /// GET /oauth2/authorize.
    async fn authorize(&self, query: &HashMap<String, String>, headers: &HeaderMap) -> Response {
        let a = match self.checked(query).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        if !a.force_login
            && let Some(login) = cookies(headers).get(LOGIN_COOKIE)
        {
            match self.answer(login, &a).await {
                Ok(Some(r)) => return r,
                Ok(None) => {}
                Err(r) => return r,
            }
        }
        if a.provider.is_some() {
            return self.to_provider(&a, query).await;
        }
        if a.no_prompt {
            return refused(AuthorizeRefusal::Redirect {
                redirect_uri: a.redirect_uri.clone(),
                fragment: a.response_type == "token",
                error: "login_required",
                description: "the user is not signed in".into(),
                state: a.state.clone(),
            });
        }
        redirect(&self.link("login", &carried(query)))
    }

    /// Where this pool's providers send their answers.
    fn idp_callback(&self) -> String {
        format!(
            "{}/oauth2/idpresponse",
            self.edge.identity.issuer(&self.pool)
        )
    }

    /// On to the external provider the authorization names.
    async fn to_provider(&self, a: &Authorized, from: &HashMap<String, String>) -> Response {
        let request: BTreeMap<String, String> = carried(from)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let provider = a.provider.as_deref().unwrap_or_default();
        match self
            .edge
            .identity
            .federation_start(&self.pool, provider, &request, &self.idp_callback())
            .await
        {
            Ok(start) => redirect(&start.url),
            Err(IdentityError::OAuth { error, description }) => {
                refused(AuthorizeRefusal::Redirect {
                    redirect_uri: a.redirect_uri.clone(),
                    fragment: a.response_type == "token",
                    error,
                    description,
                    state: a.state.clone(),
                })
            }
            Err(e) => failure(e, false),
        }
    }

    /// GET /oauth2/idpresponse: a provider's answer; then the authorization it started
    /// is answered as after a sign-in on the page.
    async fn idp_response(&self, query: &HashMap<String, String>) -> Response {
        let state = query.get("state").map(String::as_str).unwrap_or("");
        if let Some(error) = query.get("error") {
            // The provider refused (the user cancelled, …): the state names the app to tell.
            let description = query
                .get("error_description")
                .cloned()
                .unwrap_or_else(|| format!("the identity provider answered {error}"));
            return bad_page(&description);
        }
        let code = query.get("code").map(String::as_str).unwrap_or("");
        if state.is_empty() || code.is_empty() {
            return bad_page("The identity provider's answer lacks its code or state.");
        }
        match self
            .edge
            .identity
            .federation_finish(&self.pool, state, code, &self.idp_callback())
            .await
        {
            Ok(done) => {
                let request: HashMap<String, String> = done.request.into_iter().collect();
                self.signed_in(done.login, &request).await
            }
            Err(IdentityError::OAuth { description, .. }) => bad_page(&description),
            Err(e) => failure(e, false),
        }
    }

    /// The redirect that answers a signed-in authorization: a code, or implicit tokens.
    async fn answer(&self, login: &str, a: &Authorized) -> Result<Option<Response>, Response> {
        match self
            .edge
            .identity
            .authorize_signed_in(&self.pool, login, a)
            .await
        {
            Ok(None) => Ok(None),
            Ok(Some(AuthorizeAnswer::Code(code))) => {
                let mut p = vec![("code", code.as_str())];
                if let Some(s) = &a.state {
                    p.push(("state", s));
                }
                Ok(Some(redirect(&with_params(&a.redirect_uri, &p, false))))
            }
            Ok(Some(AuthorizeAnswer::Tokens(t))) => {
                let expires = t.expires_in.to_string();
                let mut p = vec![
                    ("access_token", t.access_token.as_str()),
                    ("token_type", "Bearer"),
                    ("expires_in", expires.as_str()),
                ];
                if let Some(id) = &t.id_token {
                    p.push(("id_token", id));
                }
                if let Some(s) = &a.state {
                    p.push(("state", s));
                }
                Ok(Some(redirect(&with_params(&a.redirect_uri, &p, true))))
            }
            Err(e) => Err(failure(e, false)),
        }
    }

    /// Signed in (`login`): the cookie, then the authorization's answer.
    async fn signed_in(&self, login: String, from: &HashMap<String, String>) -> Response {
        let cookie = self.cookie(
            LOGIN_COOKIE,
            &login,
            sluice_identity::oauth::LOGIN_TTL_MS / 1000,
        );
        let a = match self.checked(from).await {
            Ok(a) => a,
            Err(r) => return Page { resp: r }.cookie(cookie).resp,
        };
        let resp = match self.answer(&login, &a).await {
            Ok(Some(r)) => r,
            Ok(None) => bad_page("The sign-in ended before it could be used; sign in again."),
            Err(r) => r,
        };
        Page { resp }.cookie(cookie).resp
    }

    async fn login_page(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        error: Option<(StatusCode, &str)>,
    ) -> Response {
        if let Err(r) = self.checked(query).await {
            return r;
        }
        let carried = carried(query);
        let username = query.get("username").cloned().unwrap_or_default();
        let (status, error) = error.unwrap_or((StatusCode::OK, ""));
        let (error_html, _) = alert(Some(error));
        let signup = self.link("signup", &carried);
        let forgot = self.link("forgotPassword", &carried);
        let fields = hidden(&carried);
        let (own, providers) = match query.get("client_id") {
            Some(c) => self
                .edge
                .identity
                .sign_in_options(&self.pool, c)
                .await
                .unwrap_or((true, Vec::new())),
            None => (true, Vec::new()),
        };
        let buttons: String = providers
            .iter()
            .map(|p| {
                let mut params = carried.clone();
                params.push(("identity_provider", p.clone()));
                format!(
                    "<p><a class=\"provider\" href=\"{}\">Sign in with {}</a></p>",
                    esc(&self.link("oauth2/authorize", &params)),
                    esc(p)
                )
            })
            .collect();
        if !own {
            return self.form_page(headers, status, "Sign in", |_| {
                format!("{error_html}{buttons}")
            });
        }
        self.form_page(headers, status, "Sign in", |csrf| {
            format!(
                "{error_html}{buttons}<form method=\"post\" action=\"/{pool}/login\">{csrf}{fields}\
<label for=\"username\">Username</label><input type=\"text\" id=\"username\" name=\"username\" value=\"{u}\" autocomplete=\"username\" required autofocus>\
<label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\" name=\"signin\">Sign in</button></form>\
<p><a href=\"{forgot}\">Forgot your password?</a></p><p>Need an account? <a href=\"{signup}\">Sign up</a></p>",
                pool = esc(&self.pool),
                u = esc(&username),
                forgot = esc(&forgot),
                signup = esc(&signup),
            )
        })
    }

    fn admitted(&self, category: sluice_identity::rates::Category) -> Result<(), String> {
        let Some(ip) = self.source else {
            return Ok(());
        };
        let limits = self.edge.identity.rate_limits();
        let rate = match category {
            sluice_identity::rates::Category::SignUp => limits.sign_up_per_address,
            _ => limits.sign_in_per_address,
        };
        if !self.edge.address_rates.admit(&(ip, category), rate) {
            return Err("Too many attempts from this address; wait a little and try again.".into());
        }
        if category == sluice_identity::rates::Category::SignIn
            && self.edge.sign_in_sources.locked(ip, sluice_meta::now_ms())
        {
            return Err("Password attempts exceeded".into());
        }
        Ok(())
    }

    /// POST /login.
    async fn login(&self, form: &HashMap<String, String>, headers: &HeaderMap) -> Response {
        if !self.csrf_ok(form, headers) {
            return self.expired(form, headers).await;
        }
        let a = match self.checked(form).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let username = form.get("username").cloned().unwrap_or_default();
        let password = form.get("password").cloned().unwrap_or_default();
        let again = again(form, Some(username.clone()));
        if username.is_empty() || password.is_empty() {
            return self
                .login_page(
                    &again,
                    headers,
                    Some((StatusCode::BAD_REQUEST, "Enter your username and password.")),
                )
                .await;
        }
        if let Err(m) = self.admitted(sluice_identity::rates::Category::SignIn) {
            return self
                .login_page(&again, headers, Some((StatusCode::TOO_MANY_REQUESTS, &m)))
                .await;
        }
        let step = self
            .edge
            .identity
            .hosted_sign_in(&self.pool, &a.client_id, &username, &password)
            .await;
        self.after_step(step, form, headers, &again).await
    }

    async fn after_step(
        &self,
        step: Result<HostedStep, IdentityError>,
        form: &HashMap<String, String>,
        headers: &HeaderMap,
        again: &HashMap<String, String>,
    ) -> Response {
        match step {
            Ok(HostedStep::SignedIn(login)) => self.signed_in(login, form).await,
            Ok(HostedStep::NewPassword { session, username }) => self.challenge_page(
                form,
                headers,
                "NEW_PASSWORD_REQUIRED",
                &session,
                &username,
                None,
                None,
                StatusCode::OK,
            ),
            Ok(HostedStep::Mfa {
                challenge,
                session,
                username,
            }) => self.mfa_page(form, headers, &challenge, &session, &username, None),
            Err(e) => {
                if let (Some(ip), IdentityError::NotAuthorized(_)) = (self.source, &e) {
                    self.edge.sign_in_sources.failure(ip, sluice_meta::now_ms());
                }
                match user_message(&e) {
                    Some(m) => {
                        self.login_page(again, headers, Some((StatusCode::BAD_REQUEST, &m)))
                            .await
                    }
                    None => failure(e, false),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn challenge_page(
        &self,
        form: &HashMap<String, String>,
        headers: &HeaderMap,
        challenge: &str,
        session: &str,
        username: &str,
        note: Option<&str>,
        error: Option<&str>,
        status: StatusCode,
    ) -> Response {
        let note_html = note
            .map(|n| format!("<p class=\"note\">{}</p>", esc(n)))
            .unwrap_or_default();
        let mut fields = carried(form);
        fields.push(("session", session.to_owned()));
        fields.push(("username", username.to_owned()));
        fields.push(("challenge", challenge.to_owned()));
        let fields = hidden(&fields);
        let (error_html, _) = alert(error);
        let (title, inputs) = match challenge {
            "NEW_PASSWORD_REQUIRED" => (
                "Change your password",
                "<p class=\"note\">Your password is temporary: choose a new one.</p>\
<label for=\"new_password\">New password</label><input type=\"password\" id=\"new_password\" name=\"new_password\" autocomplete=\"new-password\" required autofocus>\
<label for=\"confirm_password\">Confirm the new password</label><input type=\"password\" id=\"confirm_password\" name=\"confirm_password\" autocomplete=\"new-password\" required>\
<button type=\"submit\">Change password</button>".to_owned(),
            ),
            _ => (
                "Enter your code",
                "<label for=\"code\">Code</label><input type=\"text\" id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required autofocus>\
<button type=\"submit\">Sign in</button>".to_owned(),
            ),
        };
        self.form_page(headers, status, title, |csrf| {
            format!(
                "{error_html}{note_html}<form method=\"post\" action=\"/{pool}/login/challenge\">{csrf}{fields}{inputs}</form>",
                pool = esc(&self.pool)
            )
        })
    }

    fn mfa_page(
        &self,
        form: &HashMap<String, String>,
        headers: &HeaderMap,
        challenge: &MfaChallenge,
        session: &str,
        username: &str,
        error: Option<&str>,
    ) -> Response {
        let (_, status) = alert(error);
        match challenge {
            MfaChallenge::Select { options } => {
                let mut fields = carried(form);
                fields.push(("session", session.to_owned()));
                fields.push(("username", username.to_owned()));
                fields.push(("challenge", "SELECT_MFA_TYPE".to_owned()));
                let fields = hidden(&fields);
                let buttons: String = options
                    .iter()
                    .map(|o| {
                        let label = match o.as_str() {
                            "SOFTWARE_TOKEN_MFA" => "Authenticator app",
                            "SMS_MFA" => "Text message",
                            "EMAIL_OTP" => "Email",
                            other => other,
                        };
                        format!(
                            "<button type=\"submit\" name=\"answer\" value=\"{}\">{}</button> ",
                            esc(o),
                            esc(label)
                        )
                    })
                    .collect();
                self.form_page(headers, status, "Choose how to verify", |csrf| {
                    format!(
                        "<form method=\"post\" action=\"/{pool}/login/challenge\">{csrf}{fields}{buttons}</form>",
                        pool = esc(&self.pool)
                    )
                })
            }
            MfaChallenge::Setup => page(
                StatusCode::BAD_REQUEST,
                "Set up multi-factor authentication",
                "<p class=\"error\">This user pool requires a second factor and this user has none yet. \
The hosted UI does not set up authenticator apps: set one up through the API \
(AssociateSoftwareToken and VerifySoftwareToken), then sign in here.</p>",
            ),
            other => {
                let note = match other {
                    MfaChallenge::Sms { destination } => {
                        format!("We sent a code by text message to {destination}.")
                    }
                    MfaChallenge::Email { destination } => {
                        format!("We sent a code by email to {destination}.")
                    }
                    _ => "Enter the code your authenticator app shows.".to_owned(),
                };
                self.challenge_page(
                    form,
                    headers,
                    other.name(),
                    session,
                    username,
                    Some(&note),
                    error,
                    status,
                )
            }
        }
    }

    /// POST /login/challenge: the answer to a new-password or second-factor step.
    async fn challenge(&self, form: &HashMap<String, String>, headers: &HeaderMap) -> Response {
        if !self.csrf_ok(form, headers) {
            return self.expired(form, headers).await;
        }
        let a = match self.checked(form).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let get = |k: &str| form.get(k).cloned().unwrap_or_default();
        let (session, username, challenge) = (get("session"), get("username"), get("challenge"));
        let answer = match challenge.as_str() {
            "NEW_PASSWORD_REQUIRED" => {
                let (pw, confirm) = (get("new_password"), get("confirm_password"));
                if pw.is_empty() || pw != confirm {
                    return self.challenge_page(
                        form,
                        headers,
                        &challenge,
                        &session,
                        &username,
                        None,
                        Some("The two passwords must match."),
                        StatusCode::BAD_REQUEST,
                    );
                }
                HostedAnswer::NewPassword(pw)
            }
            "SOFTWARE_TOKEN_MFA" | "SMS_MFA" | "EMAIL_OTP" => HostedAnswer::Code {
                factor: challenge.clone(),
                code: get("code").trim().to_owned(),
            },
            "SELECT_MFA_TYPE" => HostedAnswer::Select(get("answer")),
            _ => return bad_page("Unknown sign-in step."),
        };
        let step = self
            .edge
            .identity
            .hosted_respond(&self.pool, &a.client_id, &session, &username, answer)
            .await;
        match step {
            Err(IdentityError::CodeMismatch(m)) | Err(IdentityError::InvalidPassword(m))
                if challenge != "SELECT_MFA_TYPE" =>
            {
                // The same session stays good for another try.
                self.challenge_page(
                    form,
                    headers,
                    &challenge,
                    &session,
                    &username,
                    None,
                    Some(&m),
                    StatusCode::BAD_REQUEST,
                )
            }
            other => {
                let again = again(form, Some(username));
                self.after_step(other, form, headers, &again).await
            }
        }
    }

    /// A form posted without its anti-forgery token (or from another site): the page again.
    async fn expired(&self, form: &HashMap<String, String>, headers: &HeaderMap) -> Response {
        let again = again(form, form.get("username").cloned());
        self.login_page(
            &again,
            headers,
            Some((StatusCode::FORBIDDEN, "The form expired; please try again.")),
        )
        .await
    }

    async fn client_secret_hash(&self, client_id: &str, username: &str) -> Option<String> {
        let c = self
            .edge
            .identity
            .describe_client(&self.pool, client_id)
            .await
            .ok()?;
        c.secret
            .map(|s| sluice_identity::secret_hash(&s, username, client_id))
    }

    async fn signup_page(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        error: Option<(StatusCode, &str)>,
    ) -> Response {
        if let Err(r) = self.checked(query).await {
            return r;
        }
        let carried = carried(query);
        let fields = hidden(&carried);
        let (status, error) = error.unwrap_or((StatusCode::OK, ""));
        let (error_html, _) = alert(Some(error));
        let get = |k: &str| esc(query.get(k).map(String::as_str).unwrap_or(""));
        let login = self.link("login", &carried);
        self.form_page(headers, status, "Sign up", |csrf| {
            format!(
                "{error_html}<form method=\"post\" action=\"/{pool}/signup\">{csrf}{fields}\
<label for=\"username\">Username</label><input type=\"text\" id=\"username\" name=\"username\" value=\"{u}\" autocomplete=\"username\" required autofocus>\
<label for=\"email\">Email</label><input type=\"email\" id=\"email\" name=\"email\" value=\"{e}\" autocomplete=\"email\" required>\
<label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"new-password\" required>\
<button type=\"submit\">Sign up</button></form><p>Have an account? <a href=\"{login}\">Sign in</a></p>",
                pool = esc(&self.pool),
                u = get("username"),
                e = get("email"),
                login = esc(&login),
            )
        })
    }

    async fn signup(&self, form: &HashMap<String, String>, headers: &HeaderMap) -> Response {
        if !self.csrf_ok(form, headers) {
            return self.expired(form, headers).await;
        }
        let a = match self.checked(form).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let get = |k: &str| form.get(k).cloned().unwrap_or_default();
        let (username, email, password) = (get("username"), get("email"), get("password"));
        if let Err(m) = self.admitted(sluice_identity::rates::Category::SignUp) {
            return self
                .signup_page(form, headers, Some((StatusCode::TOO_MANY_REQUESTS, &m)))
                .await;
        }
        let mut attrs = BTreeMap::new();
        if !email.is_empty() {
            attrs.insert("email".to_owned(), email);
        }
        let hash = self.client_secret_hash(&a.client_id, &username).await;
        let r = self
            .edge
            .identity
            .sign_up(&a.client_id, &username, &password, attrs, hash.as_deref())
            .await;
        match r {
            Ok((user, delivery)) => {
                if user.status == "CONFIRMED" {
                    // A PreSignUp trigger confirmed the user: sign in.
                    let again = again(form, Some(username));
                    return self
                        .login_page(
                            &again,
                            headers,
                            Some((StatusCode::OK, "Your account is ready: sign in.")),
                        )
                        .await;
                }
                self.confirm_page(form, headers, &username, delivery.as_ref(), None)
            }
            Err(e) => match user_message(&e) {
                Some(m) => {
                    self.signup_page(form, headers, Some((StatusCode::BAD_REQUEST, &m)))
                        .await
                }
                None => failure(e, false),
            },
        }
    }

    fn confirm_page(
        &self,
        form: &HashMap<String, String>,
        headers: &HeaderMap,
        username: &str,
        delivery: Option<&CodeDelivery>,
        error: Option<&str>,
    ) -> Response {
        let (fields, note) = code_step(form, username, delivery);
        let (error_html, status) = alert(error);
        self.form_page(headers, status, "Confirm your account", |csrf| {
            format!(
                "{error_html}<p class=\"note\">{note}</p><form method=\"post\" action=\"/{pool}/confirm\">{csrf}{fields}\
<label for=\"code\">Confirmation code</label><input type=\"text\" id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required autofocus>\
<button type=\"submit\">Confirm</button></form>",
                note = esc(&note),
                pool = esc(&self.pool)
            )
        })
    }

    async fn confirm(&self, form: &HashMap<String, String>, headers: &HeaderMap) -> Response {
        if !self.csrf_ok(form, headers) {
            return self.expired(form, headers).await;
        }
        let a = match self.checked(form).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let username = form.get("username").cloned().unwrap_or_default();
        let code = form
            .get("code")
            .map(|c| c.trim().to_owned())
            .unwrap_or_default();
        let hash = self.client_secret_hash(&a.client_id, &username).await;
        match self
            .edge
            .identity
            .confirm_sign_up(&a.client_id, &username, &code, hash.as_deref())
            .await
        {
            Ok(()) => {
                let again = again(form, Some(username));
                self.login_page(
                    &again,
                    headers,
                    Some((StatusCode::OK, "Your account is confirmed: sign in.")),
                )
                .await
            }
            Err(e) => match user_message(&e) {
                Some(m) => self.confirm_page(form, headers, &username, None, Some(&m)),
                None => failure(e, false),
            },
        }
    }

    async fn forgot_page(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        error: Option<&str>,
    ) -> Response {
        if let Err(r) = self.checked(query).await {
            return r;
        }
        let fields = hidden(&carried(query));
        let (error_html, status) = alert(error);
        self.form_page(headers, status, "Reset your password", |csrf| {
            format!(
                "{error_html}<form method=\"post\" action=\"/{pool}/forgotPassword\">{csrf}{fields}\
<label for=\"username\">Username</label><input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>\
<button type=\"submit\">Send a code</button></form>",
                pool = esc(&self.pool)
            )
        })
    }

    async fn forgot(&self, form: &HashMap<String, String>, headers: &HeaderMap) -> Response {
        if !self.csrf_ok(form, headers) {
            return self.expired(form, headers).await;
        }
        let a = match self.checked(form).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let username = form.get("username").cloned().unwrap_or_default();
        if let Err(m) = self.admitted(sluice_identity::rates::Category::SignUp) {
            return self.forgot_page(form, headers, Some(&m)).await;
        }
        let hash = self.client_secret_hash(&a.client_id, &username).await;
        match self
            .edge
            .identity
            .forgot_password(&a.client_id, &username, hash.as_deref())
            .await
        {
            Ok(d) => self.reset_page(form, headers, &username, Some(&d), None),
            Err(e) => match user_message(&e) {
                Some(m) => self.forgot_page(form, headers, Some(&m)).await,
                None => failure(e, false),
            },
        }
    }

    fn reset_page(
        &self,
        form: &HashMap<String, String>,
        headers: &HeaderMap,
        username: &str,
        delivery: Option<&CodeDelivery>,
        error: Option<&str>,
    ) -> Response {
        let (fields, note) = code_step(form, username, delivery);
        let (error_html, status) = alert(error);
        self.form_page(headers, status, "Reset your password", |csrf| {
            format!(
                "{error_html}<p class=\"note\">{note}</p><form method=\"post\" action=\"/{pool}/confirmForgotPassword\">{csrf}{fields}\
<label for=\"code\">Code</label><input type=\"text\" id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required autofocus>\
<label for=\"password\">New password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"new-password\" required>\
<button type=\"submit\">Reset password</button></form>",
                note = esc(&note),
                pool = esc(&self.pool)
            )
        })
    }

    async fn confirm_forgot(
        &self,
        form: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Response {
        if !self.csrf_ok(form, headers) {
            return self.expired(form, headers).await;
        }
        let a = match self.checked(form).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let get = |k: &str| form.get(k).cloned().unwrap_or_default();
        let (username, code, password) = (get("username"), get("code"), get("password"));
        let hash = self.client_secret_hash(&a.client_id, &username).await;
        match self
            .edge
            .identity
            .confirm_forgot_password(
                &a.client_id,
                &username,
                code.trim(),
                &password,
                hash.as_deref(),
            )
            .await
        {
            Ok(()) => {
                let again = again(form, Some(username));
                self.login_page(
                    &again,
                    headers,
                    Some((StatusCode::OK, "Your password is changed: sign in.")),
                )
                .await
            }
            Err(e) => match user_message(&e) {
                Some(m) => self.reset_page(form, headers, &username, None, Some(&m)),
                None => failure(e, false),
            },
        }
    }

    /// GET /logout: `client_id` with `logout_uri` (one of its sign-out URLs), or with the
    /// authorization parameters (`redirect_uri`, `response_type`, …) to sign in again.
    async fn logout(&self, query: &HashMap<String, String>, headers: &HeaderMap) -> Response {
        let Some(client_id) = query.get("client_id").filter(|c| !c.is_empty()) else {
            return bad_page("client_id is missing.");
        };
        let target = if let Some(uri) = query.get("logout_uri").filter(|u| !u.is_empty()) {
            match self
                .edge
                .identity
                .check_logout(&self.pool, client_id, uri)
                .await
            {
                Ok(true) => uri.clone(),
                Ok(false) => {
                    return bad_page("logout_uri is not one of the client's sign-out URLs.");
                }
                Err(IdentityError::ResourceNotFound(_)) => {
                    return bad_page("No such client in this user pool.");
                }
                Err(e) => return failure(e, false),
            }
        } else {
            if let Err(r) = self.checked(query).await {
                return r;
            }
            self.link("login", &carried(query))
        };
        if let Some(login) = cookies(headers).get(LOGIN_COOKIE)
            && let Err(e) = self
                .edge
                .identity
                .end_login_session(&self.pool, login)
                .await
        {
            return failure(e, false);
        }
        Page {
            resp: redirect(&target),
        }
        .cookie(self.cookie(LOGIN_COOKIE, "", 0))
        .resp
    }

    /// The client's credentials: HTTP Basic (`client_secret_basic`) or the form
    /// (`client_secret_post`), never both.
    fn token_request(
        form: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Result<TokenRequest, Box<Response>> {
        let get = |k: &str| form.get(k).cloned();
        let mut req = TokenRequest {
            grant_type: get("grant_type"),
            code: get("code"),
            redirect_uri: get("redirect_uri"),
            code_verifier: get("code_verifier"),
            refresh_token: get("refresh_token"),
            scope: get("scope"),
            client_id: get("client_id"),
            client_secret: get("client_secret"),
        };
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            let bad = || {
                Box::new(oauth_json(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "the Authorization header must be Basic base64(client_id:client_secret)",
                ))
            };
            let v = auth.to_str().map_err(|_| bad())?;
            let b64 = v
                .strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
                .ok_or_else(bad)?;
            let decoded = STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(bad)?;
            let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
            // RFC 6749 §2.3.1: both parts are form-encoded.
            let dec = |s: &str| {
                serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}"))
                    .ok()
                    .and_then(|v| v.into_iter().next().map(|(_, v)| v))
                    .unwrap_or_else(|| s.to_owned())
            };
            if req.client_secret.is_some() {
                return Err(Box::new(oauth_json(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the client authenticated twice (Authorization header and client_secret)",
                )));
            }
            let (id, secret) = (dec(id), dec(secret));
            if req.client_id.as_deref().is_some_and(|c| c != id) {
                return Err(Box::new(oauth_json(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_id differs from the Authorization header's",
                )));
            }
            req.client_id = Some(id);
            req.client_secret = Some(secret);
        }
        Ok(req)
    }

    async fn token(&self, form: &HashMap<String, String>, headers: &HeaderMap) -> Response {
        let req = match Self::token_request(form, headers) {
            Ok(r) => r,
            Err(r) => return *r,
        };
        match self.edge.identity.oauth_token(&self.pool, &req).await {
            Ok(t) => tokens_json(&t),
            Err(e) => failure(e, true),
        }
    }

    async fn user_info(&self, headers: &HeaderMap) -> Response {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return oauth_json(
                StatusCode::UNAUTHORIZED,
                "invalid_request",
                "an access token is required (Authorization: Bearer …)",
            );
        };
        match self.edge.identity.user_info(token).await {
            Ok(attrs) => axum::Json(attrs).into_response(),
            Err(e) => failure(e, true),
        }
    }

    async fn revoke(&self, form: &HashMap<String, String>, headers: &HeaderMap) -> Response {
        let req = match Self::token_request(form, headers) {
            Ok(r) => r,
            Err(r) => return *r,
        };
        let Some(token) = form.get("token").filter(|t| !t.is_empty()) else {
            return oauth_json(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "token is missing",
            );
        };
        match self
            .edge
            .identity
            .oauth_revoke(&self.pool, &req, token)
            .await
        {
            Ok(()) => (StatusCode::OK, Body::empty()).into_response(),
            Err(e) => failure(e, true),
        }
    }
}

fn tokens_json(t: &OAuthTokens) -> Response {
    let mut v = json!({
        "access_token": t.access_token,
        "token_type": "Bearer",
        "expires_in": t.expires_in,
    });
    if let Some(id) = &t.id_token {
        v["id_token"] = json!(id);
    }
    if let Some(r) = &t.refresh_token {
        v["refresh_token"] = json!(r);
    }
    axum::Json(v).into_response()
}

fn refused(r: AuthorizeRefusal) -> Response {
    match r {
        AuthorizeRefusal::Page { error, description } => page(
            StatusCode::BAD_REQUEST,
            "Something went wrong",
            &format!(
                "<p class=\"error\">{}</p><p class=\"note\">error: {}</p>",
                esc(&description),
                esc(error)
            ),
        ),
        AuthorizeRefusal::Redirect {
            redirect_uri,
            fragment,
            error,
            description,
            state,
        } => {
            let mut p = vec![
                ("error", error),
                ("error_description", description.as_str()),
            ];
            if let Some(s) = &state {
                p.push(("state", s));
            }
            redirect(&with_params(&redirect_uri, &p, fragment))
        }
    }
}

/// What a page tells the user about a refused step (its message), or `None` for a fault
/// that is not theirs.
fn user_message(e: &IdentityError) -> Option<String> {
    match e {
        IdentityError::NotAuthorized(m)
        | IdentityError::UserNotFound(m)
        | IdentityError::UsernameExists(m)
        | IdentityError::InvalidPassword(m)
        | IdentityError::InvalidParameter(m)
        | IdentityError::CodeMismatch(m)
        | IdentityError::ExpiredCode(m)
        | IdentityError::UserNotConfirmed(m)
        | IdentityError::PasswordResetRequired(m)
        | IdentityError::LimitExceeded(m)
        | IdentityError::TooManyRequests(m)
        | IdentityError::UserLambdaValidation(m) => Some(m.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_needs() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn parameters_join_a_query_or_a_fragment() {
        assert_eq!(
            with_params("https://a/cb", &[("code", "x y"), ("state", "s&t")], false),
            "https://a/cb?code=x+y&state=s%26t"
        );
        assert_eq!(
            with_params("https://a/cb?k=1", &[("code", "c")], false),
            "https://a/cb?k=1&code=c"
        );
        assert_eq!(
            with_params("https://a/cb", &[("access_token", "t")], true),
            "https://a/cb#access_token=t"
        );
    }

    #[test]
    fn cookies_are_read_from_every_header() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        let c = cookies(&h);
        assert_eq!(c.get("b").map(String::as_str), Some("2"));
        assert_eq!(c.get("c").map(String::as_str), Some("3"));
    }
}
