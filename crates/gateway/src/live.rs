//! A user's uploads: the list (`GET /uploads`, newest first, in pages) and the live view
//! (`GET /uploads/events`, server-sent events), what the console's *My uploads* and
//! `sluice uploads list --watch` show.
//!
//! The live view polls the ledger for the user's rows changed since its last look (one
//! indexed read a second per open stream) rather than listening to this process's writes:
//! with many gateways and processors on one PostgreSQL database the change that matters was
//! most often made by another process. Each event is a whole row (`event: upload`, the JSON
//! of `GET /uploads/{id}`), so a client keeps one entry per `uploadId` and never has to
//! apply a diff; an event may repeat after a reconnect, never goes missing: its `id:` is
//! the change time it was read at, and a client that reconnects with `Last-Event-ID` (or
//! `?since=`) gets every row changed since then, [`OVERLAP_MS`] included for clocks of
//! several processes that differ a little.
//!
//! A stream checks its token again at every poll and ends (`event: unauthorized`) when it
//! expires or is revoked; a user may hold [`MAX_STREAMS_PER_USER`] streams at once (429
//! beyond).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sluice_meta::now_ms;
use sluice_uploads::{Upload, UploadCursor, UploadStatus};

use crate::{ApiQuery, Authenticated, Gateway, GatewayError, openapi, upload_view};

/// Default and largest page of `GET /uploads`.
pub const DEFAULT_PAGE: usize = 20;
pub const MAX_PAGE: usize = 100;

/// How often an open stream asks the ledger for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How far back each poll looks before its last change time, so that a change written by a
/// process whose clock is a little behind, or committed a moment after the poll read past
/// its time, is still seen (and sent once: the stream remembers what it sent in this span).
pub const OVERLAP_MS: i64 = 5_000;
/// Rows read per poll; a full page is followed by the next poll at once.
const POLL_ROWS: usize = 200;
/// Live streams one user may hold open at once.
pub const MAX_STREAMS_PER_USER: usize = 8;

#[derive(Deserialize)]
pub(crate) struct ListParams {
    limit: Option<String>,
    next: Option<String>,
}

pub(crate) async fn list_uploads(
    State(gw): State<Gateway>,
    auth: Authenticated,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, GatewayError> {
    let limit = match params.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                GatewayError::BadRequest(format!(
                    "limit must be a whole number from 1 to {MAX_PAGE}, got {v:?}"
                ))
            })?,
    };
    let after = match params.next.as_deref() {
        None => None,
        Some(t) => Some(UploadCursor::parse(t).ok_or_else(|| {
            GatewayError::BadRequest(format!(
                "next is not a token a previous page answered with: {t:?}"
            ))
        })?),
    };
    let page = gw.ledger.list(auth.sub(), after.as_ref(), limit).await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|u| UploadCursor::of(u).token()))
        .flatten();
    Ok(axum::Json(openapi::UploadPage {
        uploads: page.into_iter().map(upload_view).collect(),
        next,
    })
    .into_response())
}

#[derive(Deserialize)]
pub(crate) struct EventParams {
    since: Option<String>,
}

/// Counts the live streams each user holds.
#[derive(Default)]
pub struct LiveStreams {
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream of a user; closing it (dropping) frees its place.
struct StreamSlot {
    streams: Arc<LiveStreams>,
    sub: String,
}

impl LiveStreams {
    fn take(self: &Arc<Self>, sub: &str) -> Result<StreamSlot, GatewayError> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| GatewayError::Internal("live stream count poisoned".into()))?;
        let n = open.entry(sub.to_owned()).or_insert(0);
        if *n >= MAX_STREAMS_PER_USER {
            return Err(GatewayError::TooManyRequests {
                message: format!(
                    "at most {MAX_STREAMS_PER_USER} live upload streams per user are open at once; close one first"
                ),
                retry_after_secs: 5,
            });
        }
        *n += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            sub: sub.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.streams.open.lock()
            && let Some(n) = open.get_mut(&self.sub)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.sub);
            }
        }
    }
}

/// Where a stream starts: `Last-Event-ID` (a reconnect), else `?since=` (milliseconds
/// since the epoch), else now.
fn start_ms(headers: &HeaderMap, params: &EventParams) -> Result<i64, GatewayError> {
    let parse = |what: &str, v: &str| {
        v.trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                GatewayError::BadRequest(format!(
                    "{what} must be a time in milliseconds since the epoch, got {v:?}"
                ))
            })
    };
    if let Some(v) = headers.get("last-event-id") {
        let v = v
            .to_str()
            .map_err(|_| GatewayError::BadRequest("Last-Event-ID is not ASCII".into()))?;
        return parse("Last-Event-ID", v);
    }
    match params.since.as_deref() {
        Some(v) => parse("since", v),
        None => Ok(now_ms()),
    }
}

/// What a stream carries between polls.
///
/// A poll that starts at wall time `P` reads every row changed since `basis - OVERLAP_MS`,
/// where `basis` is the start of the previous poll (or where the stream started): a change
/// is visible to readers within `OVERLAP_MS` of its `updated_ms` (commit latency, another
/// process's clock), so whatever the previous poll could not see yet falls in this one's
/// window. The window is a few seconds of wall time whatever the history, and a window with
/// more than [`POLL_ROWS`] rows is read in pages by `(updated_ms, id)`. Every event of a
/// poll carries `basis` as its id: a client that reconnects with it reads the same window
/// again (events may repeat; none is missed).
struct Cursor {
    gw: Gateway,
    auth: Authenticated,
    basis: i64,
    /// What was sent of rows changed inside the current window.
    sent: HashMap<String, (i64, UploadStatus)>,
    /// Events read but not sent yet.
    queue: std::collections::VecDeque<Event>,
    first: bool,
    done: bool,
    _slot: StreamSlot,
}

impl Cursor {
    /// One poll: the rows of the window that were not sent as they are now, queued as events.
    async fn poll(&mut self) -> Result<(), GatewayError> {
        let started = now_ms();
        let from = self.basis.saturating_sub(OVERLAP_MS);
        let mut after: Option<(i64, String)> = None;
        loop {
            let rows = match &after {
                None => {
                    self.gw
                        .ledger
                        .changed_since(self.auth.sub(), from, None, POLL_ROWS)
                        .await?
                }
                Some((ms, id)) => {
                    self.gw
                        .ledger
                        .changed_since(self.auth.sub(), *ms, Some(id), POLL_ROWS)
                        .await?
                }
            };
            let full = rows.len() == POLL_ROWS;
            after = rows.last().map(|u| (u.updated_ms, u.id.clone()));
            for u in rows {
                let state = (u.updated_ms, u.status);
                if self.sent.get(&u.id) == Some(&state) {
                    continue;
                }
                self.sent.insert(u.id.clone(), state);
                self.queue.push_back(upload_event(u, self.basis)?);
            }
            if !full {
                break;
            }
        }
        self.sent.retain(|_, (ms, _)| *ms >= from);
        self.basis = started.max(self.basis);
        Ok(())
    }
}

fn upload_event(u: Upload, basis: i64) -> Result<Event, GatewayError> {
    Event::default()
        .event("upload")
        .id(basis.to_string())
        .json_data(upload_view(u))
        .map_err(|e| GatewayError::Internal(format!("cannot encode an upload event: {e}")))
}

fn message_event(name: &str, message: String) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::json!({ "message": message }).to_string())
}

pub(crate) async fn upload_events(
    State(gw): State<Gateway>,
    auth: Authenticated,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Response, GatewayError> {
    let since = start_ms(&headers, &params)?;
    let slot = gw.quota.live.take(auth.sub())?;
    let mut cursor = Cursor {
        gw,
        auth,
        basis: since,
        sent: HashMap::new(),
        queue: Default::default(),
        first: true,
        done: false,
        _slot: slot,
    };
    // The first poll runs before the answer starts, so that a broken engine is a 503, not
    // a stream that ends at once.
    cursor.poll().await?;
    let stream = futures_util::stream::unfold(cursor, move |mut c| async move {
        loop {
            if c.first {
                // Tells the client the stream is live before any change.
                c.first = false;
                let ev = Event::default()
                    .event("ready")
                    .id(since.to_string())
                    .data("{}");
                return Some((Ok::<_, std::convert::Infallible>(ev), c));
            }
            if let Some(ev) = c.queue.pop_front() {
                return Some((Ok(ev), c));
            }
            if c.done || *c.gw.shutdown.borrow() {
                return None;
            }
            let mut shutdown = c.gw.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                // The server is shutting down: the stream ends (the client reconnects to
                // whichever server is up, with Last-Event-ID).
                Ok(_) = shutdown.wait_for(|s| *s) => return None,
            }
            if let Err(e) = c.gw.authorizer.authorize(c.auth.token()) {
                c.done = true;
                return Some((Ok(message_event("unauthorized", e.to_string())), c));
            }
            if let Err(e) = c.poll().await {
                // The engine failed: say so and end; the client reconnects with
                // Last-Event-ID and misses nothing.
                tracing::warn!(error = %e, "live upload stream ends");
                c.done = true;
                return Some((Ok(message_event("error", e.to_string())), c));
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
