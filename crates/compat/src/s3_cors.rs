//! S3's CORS, enforced by the bucket's configuration (PutBucketCors): the answer to a
//! browser's preflight (`OPTIONS` on a bucket or object path) and the `Access-Control-*`
//! headers of the actual request, as S3 gives them.
//!
//! Matching, as S3 documents it: the first rule whose `AllowedOrigin` matches the `Origin`
//! (the whole string; one `*` in a pattern stands for any run of characters), whose
//! `AllowedMethod` has the method (the preflight's `Access-Control-Request-Method`), and
//! whose `AllowedHeader`s match every header named in `Access-Control-Request-Headers`
//! (case-insensitively, `*` as above).
//!
//! A preflight that matches: 200 with `Access-Control-Allow-Origin` (the origin, or `*` when
//! the rule allows any origin — then without `Access-Control-Allow-Credentials`), the rule's
//! methods, the requested headers (lower-cased), `Max-Age` and `Expose-Headers` when the rule
//! has them, and `Vary`. One that does not: 403 `AccessForbidden` ("CORSResponse: …"), or
//! 400 `BadRequest` without an `Origin`. An actual request that matches gets the same headers
//! but `Allow-Headers`; one that does not is answered as usual, without them (the browser
//! then hides the answer from the page). Configurations are read through a short-lived cache
//! ([`CorsCache`]); a change through this process applies at once.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use s3s::dto::{CORSConfiguration, CORSRule};

use crate::Edge;
use crate::ttl_cache::TtlCache;

/// A bucket's CORS configuration as remembered: `Err(())` when the bucket does not exist.
type Cached = Result<Option<Arc<CORSConfiguration>>, ()>;

/// The buckets' CORS configurations, remembered for 5 seconds.
pub struct CorsCache(TtlCache<Cached>);

impl Default for CorsCache {
    fn default() -> Self {
        CorsCache(TtlCache::new(Duration::from_secs(5), 10_000))
    }
}

impl CorsCache {
    /// Forgets `bucket`'s configuration (it was put or deleted through this process).
    pub fn forget(&self, bucket: &str) {
        self.0.forget(bucket);
    }
}

/// Whether `value` matches `pattern`, in which one `*` stands for any run of characters.
fn wildcard(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((head, tail)) => {
            value.len() >= head.len() + tail.len()
                && value.starts_with(head)
                && value.ends_with(tail)
        }
    }
}

/// The first rule of `rules` that allows `origin`, `method` and every header of `headers`.
fn find_rule<'a>(
    rules: &'a [CORSRule],
    origin: &str,
    method: &str,
    headers: &[String],
) -> Option<&'a CORSRule> {
    rules.iter().find(|r| {
        r.allowed_origins.iter().any(|o| wildcard(o, origin))
            && r.allowed_methods.iter().any(|m| m == method)
            && headers.iter().all(|h| {
                r.allowed_headers
                    .iter()
                    .flatten()
                    .any(|a| wildcard(&a.to_ascii_lowercase(), h))
            })
    })
}

async fn configuration(edge: &Edge, bucket: &str) -> Cached {
    if let Some(c) = edge.s3.cors.0.get(bucket) {
        return c;
    }
    let c = match edge.s3.store.bucket_config(bucket, crate::s3::CORS).await {
        Ok(Some(doc)) => match serde_json::from_str::<CORSConfiguration>(&doc) {
            Ok(cfg) => Ok(Some(Arc::new(cfg))),
            Err(e) => {
                // A configuration that cannot be read allows nothing.
                tracing::error!(bucket, error = %e, "a stored CORS configuration cannot be read");
                Ok(None)
            }
        },
        Ok(None) => Ok(None),
        Err(sluice_store::StoreError::NoSuchBucket(_)) => Err(()),
        Err(e) => {
            // Not remembered: the next request reads again.
            tracing::warn!(bucket, error = %e, "cannot read a bucket's CORS configuration");
            return Ok(None);
        }
    };
    edge.s3.cors.0.put(bucket, c.clone());
    c
}

/// The requested headers of a preflight, lower-cased.
fn requested_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("access-control-request-headers")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
}

/// Adds a matching rule's headers to an answer.
fn allow(
    resp: &mut Response<Body>,
    rule: &CORSRule,
    origin: &str,
    allow_headers: Option<&[String]>,
) {
    let h = resp.headers_mut();
    let any = rule.allowed_origins.iter().any(|o| o == "*");
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(
        "access-control-allow-origin",
        if any { "*" } else { origin },
    );
    if !any {
        set("access-control-allow-credentials", "true");
    }
    set(
        "access-control-allow-methods",
        &rule.allowed_methods.join(", "),
    );
    if let Some(asked) = allow_headers.filter(|a| !a.is_empty()) {
        set("access-control-allow-headers", &asked.join(", "));
    }
    if let Some(age) = rule.max_age_seconds {
        set("access-control-max-age", &age.to_string());
    }
    if let Some(expose) = rule.expose_headers.as_ref().filter(|e| !e.is_empty()) {
        set("access-control-expose-headers", &expose.join(", "));
    }
    set(
        "vary",
        "Origin, Access-Control-Request-Headers, Access-Control-Request-Method",
    );
}

/// The answer to a preflight `OPTIONS` for `bucket`.
async fn preflight(edge: &Edge, headers: &HeaderMap, bucket: &str, object: bool) -> Response<Body> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return crate::s3_guard::xml_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Insufficient information. Origin request header needed.",
            "",
        );
    };
    let method = headers
        .get("access-control-request-method")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("OPTIONS");
    let method_xml = crate::iam::esc(method);
    let forbidden = |message: &str, resource: &str| {
        crate::s3_guard::xml_error(
            StatusCode::FORBIDDEN,
            "AccessForbidden",
            message,
            &format!("<Method>{method_xml}</Method><ResourceType>{resource}</ResourceType>"),
        )
    };
    let config = match configuration(edge, bucket).await {
        Err(()) => return forbidden("CORSResponse: Bucket not found", "BUCKET"),
        Ok(None) => {
            return forbidden(
                "CORSResponse: CORS is not enabled for this bucket.",
                "BUCKET",
            );
        }
        Ok(Some(c)) => c,
    };
    let asked = requested_headers(headers);
    match find_rule(&config.cors_rules, origin, method, &asked) {
        Some(rule) => {
            let mut resp = Response::new(Body::empty());
            allow(&mut resp, rule, origin, Some(&asked));
            resp
        }
        None => forbidden(
            "CORSResponse: This CORS request is not allowed. This is usually because the evalution of Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.",
            if object { "OBJECT" } else { "BUCKET" },
        ),
    }
}

/// The middleware on the S3 routes: answers preflights, and adds the headers of a matching
/// rule to answers of requests that carry an `Origin`. Requests for the JSON protocols
/// (`POST /` with `X-Amz-Target`, their own CORS) and without a bucket pass untouched.
pub async fn layer(
    State(edge): State<Edge>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if req.headers().contains_key("x-amz-target") {
        return next.run(req).await;
    }
    let Some((bucket, object)) = crate::s3_guard::bucket_of(&edge, req.headers(), req.uri().path())
    else {
        return next.run(req).await;
    };
    if req.method() == Method::OPTIONS {
        return preflight(&edge, req.headers(), &bucket, object).await;
    }
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned)
    else {
        return next.run(req).await;
    };
    let method = req
        .headers()
        .get("access-control-request-method")
        .and_then(|m| m.to_str().ok())
        .map_or_else(|| req.method().as_str().to_owned(), str::to_owned);
    let asked = requested_headers(req.headers());
    let mut resp = next.run(req).await;
    if let Ok(Some(config)) = configuration(&edge, &bucket).await
        && let Some(rule) = find_rule(&config.cors_rules, &origin, &method, &asked)
    {
        allow(&mut resp, rule, &origin, None);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(origins: &[&str], methods: &[&str], headers: &[&str]) -> CORSRule {
        CORSRule {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allowed_methods: methods.iter().map(|s| s.to_string()).collect(),
            allowed_headers: (!headers.is_empty())
                .then(|| headers.iter().map(|s| s.to_string()).collect()),
            expose_headers: None,
            id: None,
            max_age_seconds: None,
        }
    }

    #[test]
    fn origins_methods_and_headers_match_as_s3_matches_them() {
        assert!(wildcard("http://*.example.com", "http://a.example.com"));
        assert!(!wildcard("http://*.example.com", "http://a.example.com/"));
        assert!(!wildcard("http://*.example.com", "https://a.example.com"));
        assert!(wildcard("*", "anything"));
        assert!(wildcard("x-amz-*", "x-amz-date"));
        assert!(!wildcard("ab*ba", "aba"), "head and tail may not overlap");

        let rules = vec![
            rule(&["http://a.test"], &["GET"], &[]),
            rule(
                &["http://*.test"],
                &["PUT", "POST"],
                &["Content-Type", "x-amz-*"],
            ),
        ];
        let none: Vec<String> = Vec::new();
        assert!(std::ptr::eq(
            find_rule(&rules, "http://a.test", "GET", &none).expect("first"),
            &rules[0]
        ));
        assert!(find_rule(&rules, "http://b.test", "GET", &none).is_none());
        let asked = vec!["content-type".to_owned(), "x-amz-meta-a".to_owned()];
        assert!(find_rule(&rules, "http://b.test", "PUT", &asked).is_some());
        let too_many = vec!["authorization".to_owned()];
        assert!(find_rule(&rules, "http://b.test", "PUT", &too_many).is_none());
        assert!(
            find_rule(&rules, "http://a.test", "GET", &too_many).is_none(),
            "a rule without AllowedHeaders allows no requested header"
        );
    }
}
