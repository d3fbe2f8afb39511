//! Email delivery of outbox messages over SMTP (optional).
//!
//! The outbox stays the record of every message; when SMTP is configured, a background
//! task also sends each new message whose destination is an email address, and writes the
//! outcome on its row (`delivery`: `sent` or `failed`, `delivery_error`, `delivery_ms`).
//! Cognito operations never wait for it: they wake the task after their write committed.
//! Messages already in the outbox when delivery starts are not sent (they may be old), and
//! each message gets one attempt. Codes are never logged; an error recorded or logged has
//! any occurrence of the code masked.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sluice_meta::{Meta, now_ms, params};
use tokio::sync::Notify;

use crate::IdentityError;

/// Where and as whom to send email.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// `smtp://host[:port]` or `smtp://user:password@host[:port]` (plain SMTP, AUTH PLAIN).
    pub url: String,
    /// The `From` address, e.g. `no-reply@example.com` or `Sluice <no-reply@example.com>`.
    pub from: String,
}

/// How long one delivery (connect, dialogue, data) may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the task looks for undelivered messages without being woken.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// Subject and body of a message, like Cognito's default messages.
pub(crate) fn compose(kind: &str, code: &str) -> (&'static str, String) {
    match kind {
        "reset" => (
            "Your password reset code",
            format!("Your password reset code is {code}."),
        ),
        "invitation" => (
            "Your temporary password",
            format!("Your temporary password is {code}."),
        ),
        _ => (
            "Your verification code",
            format!("Your verification code is {code}."),
        ),
    }
}

pub(crate) struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub(crate) fn new(settings: &SmtpSettings) -> Result<Mailer, IdentityError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            IdentityError::InvalidParameter(format!("{what}: {e}"))
        };
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| bad("smtp_from is not an email address", &e))?;
        let url = parse_url(&settings.url).ok_or_else(|| {
            IdentityError::InvalidParameter(
                "smtp_url is not smtp://[user:password@]host[:port]".into(),
            )
        })?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(url.host)
            .port(url.port)
            .timeout(Some(SEND_TIMEOUT));
        if let Some((user, password)) = url.credentials {
            builder = builder
                .credentials(Credentials::new(user, password))
                .authentication(vec![Mechanism::Plain]);
        }
        let transport = builder.build();
        Ok(Mailer { transport, from })
    }

    async fn send(&self, m: &Pending) -> Result<(), String> {
        let (to, code) = (m.to.as_str(), m.code.as_str());
        let to: Mailbox = to.parse().map_err(|e| format!("bad destination: {e}"))?;
        // A CustomMessage trigger's text, else Cognito's default.
        let (default_subject, default_body) = compose(&m.kind, code);
        let subject = m.subject.as_deref().unwrap_or(default_subject);
        let body = m.body.clone().unwrap_or(default_body);
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| format!("cannot build message: {e}"))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string().replace(code, "******"))
    }
}

#[derive(Debug, PartialEq, Eq)]
struct SmtpUrl {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

/// `smtp://[user:password@]host[:port]` (port 25 by default; `%XX` escapes in the user
/// and password). `None` when malformed.
fn parse_url(url: &str) -> Option<SmtpUrl> {
    let rest = url.strip_prefix("smtp://")?.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let credentials = match userinfo {
        Some(u) => {
            let (user, password) = u.split_once(':')?;
            Some((percent_decode(user)?, percent_decode(password)?))
        }
        None => None,
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after {
            "" => 25,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (host, port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (hostport, 25),
        }
    };
    if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
        return None;
    }
    Some(SmtpUrl {
        host: host.to_owned(),
        port,
        credentials,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

struct Pending {
    id: i64,
    to: String,
    kind: String,
    code: String,
    subject: Option<String>,
    body: Option<String>,
}

/// Starts the delivery task; returns what wakes it. Call from inside a Tokio runtime.
pub(crate) async fn start(db: Meta, mailer: Mailer) -> Result<Arc<Notify>, IdentityError> {
    let after: i64 = db
        .read(|c| {
            Ok::<i64, IdentityError>(c.query_row(
                "SELECT COALESCE(MAX(id), 0) FROM outbox",
                params![],
                |r| r.get(0),
            )?)
        })
        .await?;
    let wake = Arc::new(Notify::new());
    tokio::spawn(run(db, mailer, wake.clone(), after));
    Ok(wake)
}

/// Delivers the outbox's undelivered email messages written after `start` (those already
/// there when the task started are not sent). A message held for a CustomMessage trigger
/// (`delivery = 'composing'`) waits until it is composed, whatever newer messages went
/// before it; `tried` keeps a message whose outcome could not be recorded from being sent
/// twice by this process.
async fn run(db: Meta, mailer: Mailer, wake: Arc<Notify>, start: i64) {
    let mut tried = std::collections::HashSet::new();
    loop {
        let skip: Vec<i64> = tried.iter().copied().collect();
        let pending = db
            .read(move |c| {
                let rows = c.query_vec(
                    "SELECT id, destination, kind, code, subject, body FROM outbox
                     WHERE id > ?1 AND delivery IS NULL AND destination LIKE '%@%'
                     ORDER BY id LIMIT 50",
                    params![start],
                    |r| {
                        Ok(Pending {
                            id: r.get(0)?,
                            to: r.get(1)?,
                            kind: r.get(2)?,
                            code: r.get(3)?,
                            subject: r.get(4)?,
                            body: r.get(5)?,
                        })
                    },
                )?;
                let rows: Vec<Pending> =
                    rows.into_iter().filter(|p| !skip.contains(&p.id)).collect();
                Ok::<_, IdentityError>(rows)
            })
            .await;
        let pending = match pending {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox for email delivery");
                Vec::new()
            }
        };
        if pending.is_empty() {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
            continue;
        }
        for m in pending {
            tried.insert(m.id);
            let outcome = mailer.send(&m).await;
            let (status, error) = match outcome {
                Ok(()) => {
                    tracing::info!(outbox_id = m.id, kind = %m.kind, "outbox message emailed");
                    ("sent", None)
                }
                Err(e) => {
                    tracing::warn!(outbox_id = m.id, kind = %m.kind, error = %e, "email delivery failed");
                    ("failed", Some(e))
                }
            };
            let id = m.id;
            let saved = db
                .write(move |c| {
                    c.execute(
                        "UPDATE outbox SET delivery = ?2, delivery_error = ?3, delivery_ms = ?4
                         WHERE id = ?1",
                        params![id, status, error, now_ms()],
                    )?;
                    Ok::<_, IdentityError>(())
                })
                .await;
            match saved {
                // Recorded: the query no longer returns it.
                Ok(()) => {
                    tried.remove(&id);
                }
                Err(e) => {
                    tracing::warn!(outbox_id = id, error = %e, "cannot record email delivery");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_like_cognito() {
        assert_eq!(
            compose("signup", "123456"),
            (
                "Your verification code",
                "Your verification code is 123456.".to_owned()
            )
        );
        assert_eq!(
            compose("reset", "123456").1,
            "Your password reset code is 123456."
        );
    }

    #[test]
    fn smtp_urls_parse() {
        assert_eq!(
            parse_url("smtp://mail.example.com"),
            Some(SmtpUrl {
                host: "mail.example.com".into(),
                port: 25,
                credentials: None
            })
        );
        assert_eq!(
            parse_url("smtp://me%40x.org:p%3Ass@127.0.0.1:2525/"),
            Some(SmtpUrl {
                host: "127.0.0.1".into(),
                port: 2525,
                credentials: Some(("me@x.org".into(), "p:ss".into()))
            })
        );
        assert_eq!(parse_url("smtp://[::1]:587").map(|u| u.port), Some(587));
        for bad in [
            "smtps://h",
            "smtp://",
            "smtp://h:port",
            "smtp://user@h",
            "smtp://h:99999",
        ] {
            assert_eq!(parse_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        for (url, from) in [
            ("http://host", "a@b.c"),
            ("smtp://host:25", "not an address"),
        ] {
            let s = SmtpSettings {
                url: url.into(),
                from: from.into(),
            };
            assert!(Mailer::new(&s).is_err(), "{url} {from}");
        }
    }
}
