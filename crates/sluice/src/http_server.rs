//! Serving a router on a TCP listener with bounds on what a client can hold: a connection
//! cap per listener, a deadline for each request head, an idle keep-alive timeout, a
//! minimum request-body rate, and a bounded graceful shutdown.
//!
//! *Why our own accept loop rather than `axum::serve`:* `axum::serve` sets none of these
//! bounds and exposes no hyper builder to set them on, and its graceful shutdown waits for
//! every connection without limit (one slow client held SIGTERM for over 45 s). The HTTP
//! work itself stays hyper's (`hyper_util::server::conn::auto`, HTTP/1.1 and HTTP/2, as
//! `axum::serve` uses); this module only decides when a connection is accepted and when it
//! is dropped.
//!
//! *Why one watchdog per connection instead of hyper's `header_read_timeout`:* hyper's
//! HTTP/1 timer starts as soon as a keep-alive connection goes idle, so it cannot tell an
//! idle connection (allowed `idle_timeout`) from one trickling a request head (allowed
//! `header_read_timeout`), and it covers neither HTTP/2 nor the protocol detection that
//! reads the first bytes of a connection. The watchdog (`ConnState::deadline`) does all
//! three from what the connection's socket and service see:
//!
//! - a new connection must deliver its first complete request head within
//!   `header_read_timeout` of being accepted;
//! - after a response has been sent in full and nothing else is in flight, the connection
//!   may stay idle for `idle_timeout`; once the first byte of the next request arrives, its
//!   head must be complete within `header_read_timeout` of that byte (on HTTP/2 any
//!   frame on an idle connection, a PING included, starts that clock: a connection
//!   that only pings is closed after `header_read_timeout`);
//! - while a request is in flight (head received, response not yet sent to its end) the
//!   watchdog never fires: long uploads, long polls and downloads to a slow reader are
//!   governed by the body rate (for the request body) and by the shutdown bound.
//!
//! *Connection cap: backpressure, not refusal.* Each listener holds a semaphore of
//! `max_connections` permits; the loop takes a permit *before* calling `accept`, so beyond
//! the cap new connections wait in the kernel's accept backlog (their handshake is done, so
//! a client sees a slow answer, not an error) until a connection ends, and past the backlog
//! the kernel drops their SYNs and clients retry. Connections already accepted keep being
//! served, and as held sockets go (closed by their clients, or by the timeouts above) the
//! waiting ones are accepted in order: the server recovers by itself when the load goes.
//! Closing excess connections at once would instead turn a burst into errors for
//! legitimate clients while doing nothing against an attacker who reconnects.
//!
//! *Shutdown:* when `shutdown` turns true the listener is closed (new connections are
//! refused), every connection is asked to finish gracefully (an idle one closes at once; one
//! with requests in flight finishes them and then closes; HTTP/2 sends GOAWAY), and after
//! `shutdown_timeout` the connections still open are dropped. A dropped request was never
//! answered, so it was never acknowledged: an upload is answered 200 only once durable, and
//! a request cut before its answer leaves what a client disconnect leaves (nothing visible,
//! or a committed upload whose stream record the outbox delivers).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

/// Default `header_read_timeout`: a request head is a few hundred bytes, sent in one
/// packet by every real client; 10 s leaves room for a congested mobile link.
pub(crate) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `idle_timeout`: AWS load balancers' default idle timeout, which AWS SDKs'
/// connection pools are built to live with.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default minimum request-body rate, in bytes per second of waiting for the client.
pub(crate) const DEFAULT_MIN_BODY_RATE: u64 = 4096;
/// Default window over which the body rate is measured.
pub(crate) const DEFAULT_BODY_RATE_WINDOW: Duration = Duration::from_secs(30);
/// Default connection cap per listener.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default bound on graceful shutdown: under Kubernetes' 30 s termination grace period,
/// leaving time for the processors and the databases to close after the connections
/// (Docker's default stop timeout is 10 s: set it lower there).
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// The bounds one listener enforces (see the module documentation for their meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// `None`: request bodies may arrive at any rate.
    pub(crate) min_body_rate: Option<BodyRate>,
    pub(crate) max_connections: usize,
    pub(crate) shutdown_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            min_body_rate: Some(BodyRate {
                bytes_per_sec: DEFAULT_MIN_BODY_RATE,
                window: DEFAULT_BODY_RATE_WINDOW,
            }),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// A minimum request-body rate: at least `bytes_per_sec × window` bytes in every `window`
/// of time spent waiting for the client (see [`MinRateBody`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyRate {
    pub(crate) bytes_per_sec: u64,
    pub(crate) window: Duration,
}

impl BodyRate {
    /// Bytes a window must bring.
    fn bytes_per_window(&self) -> u64 {
        let bytes = u128::from(self.bytes_per_sec) * self.window.as_millis() / 1000;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

/// Errors of a connection that the handlers see in a request body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    /// The client sent the request body slower than the configured minimum.
    #[error(
        "request body too slow: {got} bytes in {window:?} of waiting, at least {need} required"
    )]
    BodyTooSlow {
        got: u64,
        need: u64,
        window: Duration,
    },
}

/// What [`serve`] did, for the shutdown log line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Served {
    /// Connections still open when the shutdown bound passed, dropped.
    pub(crate) cut_at_shutdown: usize,
}

/// Serves `router` on `listener` until `shutdown` turns true, then shuts down within
/// `limits.shutdown_timeout` (module documentation). `name` tags log lines; `nodelay` sets
/// `TCP_NODELAY` on accepted sockets. Every request carries `ConnectInfo<SocketAddr>`.
pub(crate) async fn serve(
    listener: TcpListener,
    name: &'static str,
    router: Router,
    limits: ConnLimits,
    nodelay: bool,
    mut shutdown: watch::Receiver<bool>,
) -> Served {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // HTTP/1.1 and HTTP/2 as `axum::serve` offers them; no hyper timer, so hyper's own
    // header timeout stays off and the watchdog alone decides (module documentation).
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut conns = JoinSet::new();
    let mut at_cap_logged = false;
    loop {
        // Reap finished connection tasks so the set does not grow with the server's age.
        while conns.try_join_next().is_some() {}
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => {
                at_cap_logged = false;
                p
            }
            Err(_) => {
                if !at_cap_logged {
                    tracing::warn!(
                        listener = name,
                        max_connections = limits.max_connections,
                        "connection cap reached; new connections wait in the accept backlog"
                    );
                    at_cap_logged = true;
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_error(name, &e).await;
                continue;
            }
        };
        if nodelay && let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let conn = Connection {
            builder: builder.clone(),
            router: router.clone(),
            limits,
            peer,
            shutdown: shutdown.clone(),
        };
        conns.spawn(async move {
            conn.run(tcp).await;
            drop(permit);
        });
    }
    // Closing the listener refuses new connections (and those waiting in its backlog)
    // while the accepted ones finish.
    drop(listener);
    while conns.try_join_next().is_some() {}
    let open = conns.len();
    if open > 0 {
        tracing::info!(
            listener = name,
            connections = open,
            bound = ?limits.shutdown_timeout,
            "waiting for open connections to finish"
        );
    }
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    let mut served = Served::default();
    if drained.is_err() {
        served.cut_at_shutdown = conns.len();
        tracing::warn!(
            listener = name,
            connections = served.cut_at_shutdown,
            "shutdown bound passed; closing the connections still open"
        );
        conns.shutdown().await;
    }
    served
}

/// An accept that failed. A connection reset before it was accepted concerns that client
/// only; anything else (out of file descriptors, most often) would fail again at once, so
/// the loop pauses briefly instead of spinning.
async fn accept_error(name: &str, e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(listener = name, error = %e, "accept failed; retrying in 250 ms");
    tokio::time::sleep(Duration::from_millis(250)).await;
}

/// One accepted connection, before it runs.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    limits: ConnLimits,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, tcp: TcpStream) {
        let state = Arc::new(ConnState::new(Instant::now()));
        let io = TokioIo::new(Watched {
            inner: tcp,
            state: state.clone(),
        });
        let service = ConnService {
            router: self.router.clone(),
            state: state.clone(),
            peer: self.peer,
            body_rate: self.limits.min_body_rate,
        };
        let conn = self.builder.serve_connection(io, service);
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                reason = state.expired(&self.limits) => {
                    tracing::debug!(peer = %self.peer, reason, "closing connection");
                    return;
                }
                _ = self.shutdown.wait_for(|s| *s), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

/// What the watchdog of one connection knows. Times are nanoseconds since `accepted`.
struct ConnState {
    accepted: Instant,
    /// Requests whose head was received and whose response is not yet sent to its end.
    in_flight: AtomicUsize,
    /// Requests begun on this connection.
    begun: AtomicU64,
    /// When the connection last became idle (no request in flight).
    idle_since: AtomicU64,
    /// When the first byte arrived since it became idle, plus one; 0: none yet.
    head_started: AtomicU64,
    /// Woken when the deadline may have moved (a request ended, a head started).
    changed: Notify,
}

impl ConnState {
    fn new(accepted: Instant) -> ConnState {
        ConnState {
            accepted,
            in_flight: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn since_accept(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.accepted).as_nanos()).unwrap_or(u64::MAX)
    }

    fn at(&self, nanos: u64) -> Instant {
        self.accepted + Duration::from_nanos(nanos)
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.begun.load(Ordering::Acquire) > 0
            && self.head_started.load(Ordering::Acquire) == 0
        {
            let now = self.since_accept(Instant::now()).saturating_add(1);
            if self
                .head_started
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.changed.notify_one();
            }
        }
    }

    fn request_begun(&self) {
        self.begun.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since
                .store(self.since_accept(Instant::now()), Ordering::Release);
            self.head_started.store(0, Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// When the connection must be closed if nothing changes, and why; `None` while a
    /// request is in flight.
    fn deadline(&self, limits: &ConnLimits) -> Option<(Instant, &'static str)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.begun.load(Ordering::Acquire) == 0 {
            return Some((
                self.accepted + limits.header_read_timeout,
                "no request head within header_read_timeout of connecting",
            ));
        }
        match self.head_started.load(Ordering::Acquire) {
            0 => Some((
                self.at(self.idle_since.load(Ordering::Acquire)) + limits.idle_timeout,
                "idle for idle_timeout",
            )),
            started => Some((
                self.at(started - 1) + limits.header_read_timeout,
                "request head not complete within header_read_timeout",
            )),
        }
    }

    /// Resolves when the connection has passed its deadline; the reason, for the log.
    async fn expired(&self, limits: &ConnLimits) -> &'static str {
        loop {
            // Registered before the deadline is read, so that no change is missed.
            let changed = self.changed.notified();
            match self.deadline(limits) {
                None => changed.await,
                Some((when, reason)) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(when) => {
                            if self.deadline(limits).is_some_and(|(d, _)| d <= Instant::now()) {
                                return reason;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The socket of a connection, reporting reads to its [`ConnState`].
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The hyper service of one connection: the router, with the peer address, the body rate
/// on the request body and an in-flight mark held until the response is sent.
#[derive(Clone)]
struct ConnService {
    router: Router,
    state: Arc<ConnState>,
    peer: SocketAddr,
    body_rate: Option<BodyRate>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::begin(self.state.clone());
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        let body = match self.body_rate {
            Some(rate) => Body::new(MinRateBody::new(body, rate)),
            None => Body::new(body),
        };
        let router = self.router.clone();
        Box::pin(async move {
            let resp = router.oneshot(Request::from_parts(parts, body)).await?;
            Ok(resp.map(|inner| {
                Body::new(UntilSent {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A request in flight on its connection, from its head to the end of its response (or
/// until hyper drops it, when the connection ends first).
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn begin(state: Arc<ConnState>) -> InFlight {
        state.request_begun();
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that keeps its request in flight until hyper has sent it and dropped it.
struct UntilSent {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for UntilSent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails with [`ConnError::BodyTooSlow`] when, over a window of time
/// spent waiting for the client, fewer bytes than the rate asks for arrived.
///
/// Only time this body is polled and has nothing (`Pending`) counts: while a handler is
/// busy elsewhere (an fsync, a slow disk, a full write queue) the client cannot send and is
/// not blamed. So an upload at any reasonable speed is never cut, however large, and a
/// client that trickles its body is cut after one window. A window is judged whole: a
/// burst at its end counts as much as a steady pace.
///
/// The error reaches the handler as a body read error (the request fails); on HTTP/1.1
/// hyper then closes the connection, since the body was not read to its end. On HTTP/2
/// only the stream fails.
struct MinRateBody<B> {
    inner: B,
    need: u64,
    window: Duration,
    /// Bytes received in the current window.
    got: u64,
    /// Time waited in the current window before `waiting_since`.
    waited: Duration,
    /// Set while the last poll of `inner` was `Pending`.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    failed: bool,
}

impl<B> MinRateBody<B> {
    fn new(inner: B, rate: BodyRate) -> Self {
        MinRateBody {
            inner,
            need: rate.bytes_per_window(),
            window: rate.window,
            got: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
            failed: false,
        }
    }

    /// Time waited in the current window, up to `now`.
    fn waited(&self, now: Instant) -> Duration {
        self.waited
            + self
                .waiting_since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// Judges the window if it is over: an error if it brought too little, else a new window
    /// starts.
    fn judge(&mut self, now: Instant) -> Result<(), ConnError> {
        if self.waited(now) < self.window {
            return Ok(());
        }
        if self.got < self.need {
            self.failed = true;
            return Err(ConnError::BodyTooSlow {
                got: self.got,
                need: self.need,
                window: self.window,
            });
        }
        self.got = 0;
        self.waited = Duration::ZERO;
        self.waiting_since = self.waiting_since.map(|_| now);
        Ok(())
    }
}

impl<B> http_body::Body for MinRateBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let now = Instant::now();
                if let Some(since) = this.waiting_since.take() {
                    this.waited += now.saturating_duration_since(since);
                }
                if let Some(data) = frame.data_ref() {
                    this.got = this.got.saturating_add(data.len() as u64);
                }
                match this.judge(now) {
                    Ok(()) => Poll::Ready(Some(Ok(frame))),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                let now = Instant::now();
                this.waiting_since.get_or_insert(now);
                if let Err(e) = this.judge(now) {
                    return Poll::Ready(Some(Err(e.into())));
                }
                let end = now + this.window.saturating_sub(this.waited(now));
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(end)));
                if timer.deadline() != end {
                    timer.as_mut().reset(end);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // The window ended while waiting: judge it (above) and wait on.
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Makes room for the connection caps under the process's open-file limit: raises the soft
/// `RLIMIT_NOFILE` towards the hard one when both listeners at their caps, plus what the
/// engines keep open, would not fit, and warns when even the hard limit is too low (then
/// the caps cannot protect the process from running out of descriptors, which stops every
/// listener and the databases alike).
#[cfg(unix)]
pub(crate) fn fit_open_file_limit(connection_caps: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    /// Descriptors beside connections: databases, stream segments, blob files, pipes of
    /// function runtimes.
    const RESERVE: u64 = 512;
    let want = u64::try_from(connection_caps)
        .unwrap_or(u64::MAX)
        .saturating_add(RESERVE);
    let limit = getrlimit(Resource::Nofile);
    let Some(current) = limit.current else {
        return; // unlimited
    };
    if current >= want {
        return;
    }
    let raised = limit.maximum.map_or(want, |max| want.min(max));
    if raised > current
        && let Err(e) = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(raised),
                maximum: limit.maximum,
            },
        )
    {
        tracing::debug!(error = %e, "cannot raise the open-file limit");
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if now < want {
        tracing::warn!(
            open_file_limit = now,
            needed = want,
            "the open-file limit is below the connection caps plus a reserve; lower \
             max_connections or raise the limit (ulimit -n, LimitNOFILE=)"
        );
    } else if now > current {
        tracing::info!(from = current, to = now, "raised the open-file limit");
    }
}

#[cfg(not(unix))]
pub(crate) fn fit_open_file_limit(_connection_caps: usize) {}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    /// A request body fed through a channel, as a client would send it.
    struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl http_body::Body for ChanBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }

    fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, ChanBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        (tx, ChanBody(rx))
    }

    /// Real time (tokio's paused clock would need its `test-util` feature, which would
    /// rebuild every crate's tests against another tokio): windows long enough that a
    /// loaded machine's scheduling pauses (seen: over 400 ms with three builds on two cores)
    /// do not decide the outcome, and loose margins.
    const RATE: BodyRate = BodyRate {
        bytes_per_sec: 1_000,
        window: Duration::from_millis(1_500),
    };

    #[tokio::test]
    async fn a_body_at_the_rate_passes_whatever_its_length() {
        let (tx, body) = channel_body();
        let mut body = MinRateBody::new(body, RATE);
        tokio::spawn(async move {
            // Two windows at twenty times the minimum rate.
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tx.send(Bytes::from(vec![0; 1500])).await.is_err() {
                    return;
                }
            }
        });
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            total += frame.expect("not cut").into_data().map_or(0, |d| d.len());
        }
        assert_eq!(total, 60 * 1500);
    }

    #[tokio::test]
    async fn a_trickle_is_cut_after_one_window() {
        let (tx, body) = channel_body();
        let mut body = MinRateBody::new(body, RATE);
        let start = Instant::now();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let err = loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("the body ended without the rate being enforced"),
            }
        };
        assert!(err.to_string().contains("too slow"), "{err}");
        let took = start.elapsed();
        assert!(
            took >= RATE.window && took < RATE.window * 3,
            "cut after {took:?}"
        );
        assert!(body.frame().await.is_none(), "nothing after the error");
    }

    #[tokio::test]
    async fn silence_is_cut_after_one_window() {
        let (_tx, body) = channel_body();
        let mut body = MinRateBody::new(body, RATE);
        let start = Instant::now();
        assert!(matches!(body.frame().await, Some(Err(_))));
        let took = start.elapsed();
        assert!(
            took >= RATE.window && took < RATE.window * 3,
            "cut after {took:?}"
        );
    }

    #[tokio::test]
    async fn time_the_handler_spends_elsewhere_does_not_count() {
        let (tx, body) = channel_body();
        let mut body = MinRateBody::new(body, RATE);
        for _ in 0..3 {
            // Far less than a window's worth, but there at once.
            tx.send(Bytes::from_static(b"chunk")).await.expect("send");
            assert!(matches!(body.frame().await, Some(Ok(_))));
            // A slow disk: the handler does not read for longer than a window.
            tokio::time::sleep(RATE.window * 2).await;
        }
        drop(tx);
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn deadlines_follow_the_connection_phase() {
        let limits = ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ConnLimits::default()
        };
        let t0 = Instant::now();
        let s = ConnState::new(t0);
        let first = s.deadline(&limits).expect("deadline").0;
        assert_eq!(first, t0 + limits.header_read_timeout, "first head");
        s.on_read();
        assert_eq!(s.deadline(&limits).expect("deadline").0, first, "unchanged");
        s.request_begun();
        assert!(s.deadline(&limits).is_none(), "in flight: no deadline");
        s.request_ended();
        let idle = s.deadline(&limits).expect("deadline").0;
        assert!(idle >= t0 + limits.idle_timeout, "idle");
        s.on_read();
        let head = s.deadline(&limits).expect("deadline").0;
        assert!(head < idle, "a started head has the header bound");
    }

    #[test]
    fn bytes_per_window() {
        assert_eq!(RATE.bytes_per_window(), 1500);
        let odd = BodyRate {
            bytes_per_sec: 4096,
            window: Duration::from_millis(1500),
        };
        assert_eq!(odd.bytes_per_window(), 6144);
    }
}
