//! S3 event notifications to functions (`PutBucketNotificationConfiguration` with
//! `LambdaFunctionConfigurations`): a bucket's configuration, and the events its object
//! writes and deletions produce.
//!
//! An event is recorded **in the transaction that writes or deletes the object** (see
//! [`crate::embedded::put_in_tx`]): a committed object always has its events, an object that
//! did not commit never does. Events wait in the `object_notifications` outbox until the
//! functions' queue takes them ([`take_in_tx`], in the transaction that queues their
//! asynchronous invocations), so each is delivered at least once. A bucket without a
//! configuration costs a write one indexed read.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_meta::{MetaError, Tx, params};

/// One `LambdaFunctionConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionTarget {
    pub id: String,
    pub function_arn: String,
    /// `s3:ObjectCreated:*`, `s3:ObjectCreated:Put`, `s3:ObjectRemoved:*`, …
    pub events: Vec<String>,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub suffix: String,
}

/// A bucket's notification configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationConfig {
    /// The region named in the events.
    pub region: String,
    pub functions: Vec<FunctionTarget>,
}

/// The event types S3 sends to functions that sluice produces.
pub const EVENT_TYPES: &[&str] = &[
    "s3:ObjectCreated:*",
    "s3:ObjectCreated:Put",
    "s3:ObjectCreated:Post",
    "s3:ObjectCreated:Copy",
    "s3:ObjectCreated:CompleteMultipartUpload",
    "s3:ObjectRemoved:*",
    "s3:ObjectRemoved:Delete",
];

impl FunctionTarget {
    /// Whether an event named `name` (`ObjectCreated:Put`) of `key` goes to this target.
    pub fn matches(&self, name: &str, key: &str) -> bool {
        let family = name.split(':').next().unwrap_or("");
        let wanted = self
            .events
            .iter()
            .any(|e| e == &format!("s3:{name}") || e == &format!("s3:{family}:*"));
        wanted && key.starts_with(&self.prefix) && key.ends_with(&self.suffix)
    }
}

pub(crate) fn load(tx: &Tx<'_>, bucket: &str) -> Result<Option<NotificationConfig>, MetaError> {
    let text: Option<String> = tx.query_opt(
        "SELECT config FROM bucket_notifications WHERE bucket = ?1",
        params![bucket],
        |r| r.get(0),
    )?;
    Ok(parse(text.as_deref()))
}

/// A bucket's notification configuration as stored (`None`: none, or unreadable).
pub(crate) fn parse(text: Option<&str>) -> Option<NotificationConfig> {
    text.and_then(|t| serde_json::from_str(t).ok())
}

pub(crate) fn store(
    tx: &Tx<'_>,
    bucket: &str,
    config: &NotificationConfig,
) -> Result<(), MetaError> {
    if config.functions.is_empty() {
        tx.execute(
            "DELETE FROM bucket_notifications WHERE bucket = ?1",
            params![bucket],
        )?;
        return Ok(());
    }
    let text = serde_json::to_string(config).map_err(|e| MetaError::Type(e.to_string()))?;
    tx.execute(
        "INSERT INTO bucket_notifications (bucket, config) VALUES (?1, ?2)
         ON CONFLICT (bucket) DO UPDATE SET config = excluded.config",
        params![bucket, &text],
    )?;
    Ok(())
}

/// S3's encoding of a key in an event: form encoding (a space is `+`).
fn event_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' | b'/' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Records the events of an object write or deletion, in its transaction, by the bucket's
/// notification configuration `config` (read in the same transaction: with [`load`], or
/// together with the bucket's other state). `version_id`: the version written or deleted,
/// in a bucket with versioning (S3's `versionId`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_in_tx(
    tx: &Tx<'_>,
    config: Option<&NotificationConfig>,
    bucket: &str,
    key: &str,
    name: &str,
    size: u64,
    etag: &str,
    version_id: Option<&str>,
    now: i64,
) -> Result<(), MetaError> {
    let Some(config) = config else {
        return Ok(());
    };
    let time = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for target in config.functions.iter().filter(|t| t.matches(name, key)) {
        let mut object = json!({"key": event_key(key), "sequencer": format!("{:016X}", now)});
        if name.starts_with("ObjectCreated") {
            object["size"] = json!(size);
            object["eTag"] = json!(etag.trim_matches('"'));
        }
        if let Some(v) = version_id {
            object["versionId"] = json!(v);
        }
        let event = json!({"Records": [{
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": config.region,
            "eventTime": time,
            "eventName": name,
            "userIdentity": {"principalId": "sluice"},
            "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {
                "x-amz-request-id": uuid::Uuid::new_v4().simple().to_string(),
                "x-amz-id-2": "sluice",
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": target.id,
                "bucket": {
                    "name": bucket,
                    "ownerIdentity": {"principalId": "sluice"},
                    "arn": format!("arn:aws:s3:::{bucket}"),
                },
                "object": object,
            },
        }]});
        tx.execute(
            "INSERT INTO object_notifications (target, event, created_ms) VALUES (?1, ?2, ?3)",
            params![&target.function_arn, event.to_string(), now],
        )?;
    }
    Ok(())
}

/// Takes (and deletes) up to `limit` recorded events, oldest first: (function ARN, event
/// document). Run it in the transaction that queues their invocations.
pub fn take_in_tx(tx: &Tx<'_>, limit: usize) -> Result<Vec<(String, String)>, MetaError> {
    let rows: Vec<(i64, String, String)> = tx.query_vec(
        "SELECT id, target, event FROM object_notifications ORDER BY id LIMIT ?1",
        params![limit as i64],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    for (id, _, _) in &rows {
        tx.execute(
            "DELETE FROM object_notifications WHERE id = ?1",
            params![*id],
        )?;
    }
    Ok(rows.into_iter().map(|(_, t, e)| (t, e)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_events_and_keys() {
        let t = FunctionTarget {
            id: "a".into(),
            function_arn: "arn".into(),
            events: vec!["s3:ObjectCreated:*".into()],
            prefix: "uploads/".into(),
            suffix: ".txt".into(),
        };
        assert!(t.matches("ObjectCreated:Put", "uploads/a.txt"));
        assert!(t.matches("ObjectCreated:CompleteMultipartUpload", "uploads/b.txt"));
        assert!(!t.matches("ObjectRemoved:Delete", "uploads/a.txt"));
        assert!(!t.matches("ObjectCreated:Put", "other/a.txt"));
        assert!(!t.matches("ObjectCreated:Put", "uploads/a.png"));
        let d = FunctionTarget {
            events: vec!["s3:ObjectRemoved:Delete".into()],
            prefix: String::new(),
            suffix: String::new(),
            ..t
        };
        assert!(d.matches("ObjectRemoved:Delete", "x"));
        assert!(!d.matches("ObjectCreated:Put", "x"));
    }

    #[test]
    fn keys_are_form_encoded() {
        assert_eq!(
            event_key("uploads/my file (1).txt"),
            "uploads/my+file+%281%29.txt"
        );
    }
}
