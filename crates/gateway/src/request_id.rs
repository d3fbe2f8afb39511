//! Gives every request of the upload API an id ([`RequestId`]), returns it in `x-request-id`,
//! and writes the request's log line when its answer is ready.
//!
//! A tower layer written by hand rather than `axum::middleware::from_fn`, which clones and
//! boxes the inner service and boxes a future per request (docs/BENCHMARKS.md, session 26).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderValue, Method, Uri};
use axum::response::Response;

use crate::RequestId;

/// The layer; [`crate::router`] puts it around every route.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RequestIds;

impl<S> tower::Layer<S> for RequestIds {
    type Service = WithRequestId<S>;

    fn layer(&self, inner: S) -> WithRequestId<S> {
        WithRequestId { inner }
    }
}

/// The service of the [`RequestIds`] layer.
#[derive(Clone, Debug)]
pub(crate) struct WithRequestId<S> {
    inner: S,
}

impl<S> tower::Service<Request> for WithRequestId<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let id = uuid::Uuid::new_v4().to_string();
        // The header value is made now, while the id is at hand: a UUID's text is always a
        // valid header value.
        let header = HeaderValue::from_str(&id).ok();
        let method = req.method().clone();
        // A clone of the URI shares its bytes (no copy of the path per request).
        let uri = req.uri().clone();
        req.extensions_mut().insert(RequestId(id));
        RequestIdFuture {
            inner: self.inner.call(req),
            header,
            method,
            uri,
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a request given an id by [`WithRequestId`].
    pub(crate) struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        header: Option<HeaderValue>,
        method: Method,
        uri: Uri,
        started: Instant,
    }
}

impl<F, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.inner.poll(cx))?;
        let id = this.header.take();
        let request_id = id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-");
        let status = resp.status();
        let micros = this.started.elapsed().as_micros() as u64;
        let (method, path) = (&*this.method, this.uri.path());
        if status.is_server_error() {
            tracing::warn!(%request_id, %method, %path, status = status.as_u16(), micros, "request failed");
        } else {
            tracing::debug!(%request_id, %method, %path, status = status.as_u16(), micros, "request");
        }
        if let Some(v) = id {
            resp.headers_mut().insert("x-request-id", v);
        }
        Poll::Ready(Ok(resp))
    }
}
