//! S3 lifecycle rules, applied: a sweeper expires (deletes) current objects and aborts
//! incomplete multipart uploads as the buckets' lifecycle configurations say, and
//! PutBucketLifecycleConfiguration checks what S3 checks.
//!
//! When an action is due, as S3 documents it:
//!
//! - `Expiration.Days`: the object's last-modified time plus the days, rounded up to the
//!   next midnight UTC (an object written on 15 January at 10:30 with 3 days is due on
//!   19 January at 00:00);
//! - `Expiration.Date` (a midnight UTC): from that date on;
//! - `AbortIncompleteMultipartUpload.DaysAfterInitiation`: the upload's initiation plus the
//!   days, rounded up to midnight the same way.
//!
//! A rule applies to an object when it is `Enabled` and its filter matches: the prefix
//! (`Filter.Prefix`, `Filter.And.Prefix`, or the legacy top-level `Prefix`), every tag
//! (`Filter.Tag`, `Filter.And.Tags`) and the size bounds (`ObjectSizeGreaterThan`,
//! `ObjectSizeLessThan`, exclusive). An expiration deletes the current object as
//! DeleteObject does: in a bucket with versioning, a delete marker takes its place.
//!
//! On the versions of a bucket with versioning (see `sluice_store::versions`):
//!
//! - `NoncurrentVersionExpiration.NoncurrentDays`: a version is deleted for good once it
//!   has been noncurrent that long (from the time its successor was written, rounded up to
//!   midnight as above), except the `NewerNoncurrentVersions` newest noncurrent versions of
//!   its key, which are kept whatever their age;
//! - `Expiration.ExpiredObjectDeleteMarker`: a delete marker that is the latest version of
//!   its key and has no other version left is removed.
//!
//! A version object lock protects (retention or legal hold) is not deleted, as on S3.
//!
//! Transition actions (storage classes) are kept only: sluice has one storage class. The
//! sweep goes bucket by bucket in pages of [`PAGE`] objects (memory does not grow with a
//! bucket), at start and then every `lifecycle_interval`; running it from several processes
//! at once only deletes what one of them would.

use s3s::dto::{BucketLifecycleConfiguration, LifecycleRule};
use s3s::{S3Error, S3ErrorCode};
use sluice_store::{
    MultipartInfo, ObjectInfo, ObjectStore, StoreError, UploadMarker, VersionEntry, VersionMarker,
};

/// The bucket configuration kind lifecycle rules are kept under.
pub(crate) const LIFECYCLE: &str = "lifecycle";
const DAY_MS: i64 = 86_400_000;
/// Objects (or uploads) read per page of a sweep.
const PAGE: usize = 1000;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub expired_objects: u64,
    pub aborted_uploads: u64,
    /// Noncurrent versions and lone delete markers removed.
    pub expired_versions: u64,
}

fn invalid(code: S3ErrorCode, message: &str) -> S3Error {
    S3Error::with_message(code, message.to_owned())
}

use crate::s3::millis;

/// `t` rounded up to the next midnight UTC (a midnight stays).
fn next_midnight(t: i64) -> i64 {
    t.div_euclid(DAY_MS) * DAY_MS + if t.rem_euclid(DAY_MS) == 0 { 0 } else { DAY_MS }
}

/// Checks a lifecycle configuration as PutBucketLifecycleConfiguration does.
pub fn validate(cfg: &BucketLifecycleConfiguration) -> Result<(), S3Error> {
    if cfg.rules.is_empty() || cfg.rules.len() > 1000 {
        return Err(invalid(
            S3ErrorCode::MalformedXML,
            "a lifecycle configuration has 1 to 1000 rules",
        ));
    }
    let mut ids = std::collections::HashSet::new();
    for rule in &cfg.rules {
        if !matches!(rule.status.as_str(), "Enabled" | "Disabled") {
            return Err(invalid(
                S3ErrorCode::MalformedXML,
                "Status must be Enabled or Disabled",
            ));
        }
        if let Some(id) = &rule.id {
            if id.chars().count() > 255 {
                return Err(invalid(
                    S3ErrorCode::InvalidArgument,
                    "ID length should not exceed allowed limit of 255",
                ));
            }
            if !ids.insert(id.clone()) {
                return Err(invalid(
                    S3ErrorCode::InvalidArgument,
                    "Rule ID must be unique. Found same ID for more than one rule",
                ));
            }
        }
        if let Some(e) = &rule.expiration {
            if e.expired_object_delete_marker.is_some() && (e.days.is_some() || e.date.is_some()) {
                return Err(invalid(
                    S3ErrorCode::MalformedXML,
                    "ExpiredObjectDeleteMarker cannot be specified with Days or Date in a Lifecycle Expiration Policy.",
                ));
            }
            if e.days.is_some() && e.date.is_some() {
                return Err(invalid(
                    S3ErrorCode::MalformedXML,
                    "Expiration may have Days or Date, not both",
                ));
            }
            if e.days.is_some_and(|d| d <= 0) {
                return Err(invalid(
                    S3ErrorCode::InvalidArgument,
                    "'Days' for Expiration action must be a positive integer",
                ));
            }
            if let Some(date) = &e.date
                && millis(date).is_none_or(|ms| ms.rem_euclid(DAY_MS) != 0)
            {
                return Err(invalid(
                    S3ErrorCode::InvalidArgument,
                    "'Date' must be at midnight GMT",
                ));
            }
        }
        if let Some(n) = &rule.noncurrent_version_expiration {
            if n.noncurrent_days.is_none_or(|d| d <= 0) {
                return Err(invalid(
                    S3ErrorCode::InvalidArgument,
                    "'NoncurrentDays' for NoncurrentVersionExpiration action must be a positive integer",
                ));
            }
            if n.newer_noncurrent_versions
                .is_some_and(|v| !(1..=100).contains(&v))
            {
                return Err(invalid(
                    S3ErrorCode::InvalidArgument,
                    "NewerNoncurrentVersions must be between 1 and 100",
                ));
            }
        }
        if let Some(a) = &rule.abort_incomplete_multipart_upload {
            if a.days_after_initiation.is_none_or(|d| d <= 0) {
                return Err(invalid(
                    S3ErrorCode::InvalidArgument,
                    "'DaysAfterInitiation' for AbortIncompleteMultipartUpload action must be a positive integer",
                ));
            }
            if !tags_of(rule).is_empty() {
                return Err(invalid(
                    S3ErrorCode::InvalidRequest,
                    "AbortIncompleteMultipartUpload cannot be specified with Tags.",
                ));
            }
        }
    }
    Ok(())
}

/// The key prefix a rule applies to.
fn prefix_of(rule: &LifecycleRule) -> &str {
    let f = rule.filter.as_ref();
    f.and_then(|f| f.prefix.as_deref())
        .or_else(|| f.and_then(|f| f.and.as_ref()?.prefix.as_deref()))
        .or(rule.prefix.as_deref())
        .unwrap_or("")
}

/// The tags an object must have for a rule to apply.
fn tags_of(rule: &LifecycleRule) -> Vec<(String, String)> {
    let Some(f) = &rule.filter else {
        return Vec::new();
    };
    let one = f.tag.iter();
    let and = f.and.iter().flat_map(|a| a.tags.iter().flatten());
    one.chain(and)
        .map(|t| {
            (
                t.key.clone().unwrap_or_default(),
                t.value.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Whether a rule's filter matches an object.
fn applies(rule: &LifecycleRule, o: &ObjectInfo) -> bool {
    let f = rule.filter.as_ref();
    let bound = |get: fn(&s3s::dto::LifecycleRuleFilter) -> Option<i64>,
                 get_and: fn(&s3s::dto::LifecycleRuleAndOperator) -> Option<i64>| {
        f.and_then(get)
            .or_else(|| f.and_then(|f| f.and.as_ref().and_then(get_and)))
    };
    let size = i64::try_from(o.size).unwrap_or(i64::MAX);
    o.key.starts_with(prefix_of(rule))
        && tags_of(rule).iter().all(|t| o.tags.contains(t))
        && bound(
            |f| f.object_size_greater_than,
            |a| a.object_size_greater_than,
        )
        .is_none_or(|gt| size > gt)
        && bound(|f| f.object_size_less_than, |a| a.object_size_less_than)
            .is_none_or(|lt| size < lt)
}

/// Whether an enabled rule expires `o` at `now`.
fn expires(rule: &LifecycleRule, o: &ObjectInfo, now: i64) -> bool {
    let Some(e) = &rule.expiration else {
        return false;
    };
    let due = match (e.days, e.date.as_ref().and_then(millis)) {
        (Some(days), _) => next_midnight(o.last_modified_ms + i64::from(days) * DAY_MS),
        (None, Some(date)) => date,
        (None, None) => return false,
    };
    now >= due && applies(rule, o)
}

/// Whether an enabled rule deletes the noncurrent version `v` at `now`, `newer` being how
/// many noncurrent versions of its key are newer than it.
fn expires_noncurrent(rule: &LifecycleRule, v: &VersionEntry, newer: usize, now: i64) -> bool {
    let Some(n) = &rule.noncurrent_version_expiration else {
        return false;
    };
    let (Some(days), Some(since)) = (n.noncurrent_days, v.noncurrent_since_ms) else {
        return false;
    };
    let keep = n.newer_noncurrent_versions.unwrap_or(0).max(0) as usize;
    newer >= keep
        && now >= next_midnight(since + i64::from(days) * DAY_MS)
        && applies(rule, &v.info)
}

/// Whether an enabled rule removes lone delete markers of the key.
fn removes_lone_marker(rule: &LifecycleRule, key: &str) -> bool {
    rule.expiration
        .as_ref()
        .is_some_and(|e| e.expired_object_delete_marker == Some(true))
        && key.starts_with(prefix_of(rule))
        && tags_of(rule).is_empty()
}

/// Whether an enabled rule aborts upload `u` at `now`.
fn aborts(rule: &LifecycleRule, u: &MultipartInfo, now: i64) -> bool {
    let Some(days) = rule
        .abort_incomplete_multipart_upload
        .as_ref()
        .and_then(|a| a.days_after_initiation)
    else {
        return false;
    };
    u.key.starts_with(prefix_of(rule))
        && now >= next_midnight(u.created_ms + i64::from(days) * DAY_MS)
}

/// Applies every bucket's lifecycle rules once, as of `now` (milliseconds since the epoch).
/// A bucket whose configuration cannot be read is skipped (and logged); a bucket deleted
/// meanwhile is no error.
pub async fn sweep(store: &dyn ObjectStore, now: i64) -> Result<Swept, StoreError> {
    let mut swept = Swept::default();
    for bucket in store.list_buckets().await? {
        let doc = match store.bucket_config(&bucket.name, LIFECYCLE).await {
            Ok(Some(doc)) => doc,
            Ok(None) | Err(StoreError::NoSuchBucket(_)) => continue,
            Err(e) => return Err(e),
        };
        let cfg: BucketLifecycleConfiguration = match serde_json::from_str(&doc) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(bucket = %bucket.name, error = %e, "a stored lifecycle configuration cannot be read; its rules are not applied");
                continue;
            }
        };
        let rules: Vec<&LifecycleRule> = cfg
            .rules
            .iter()
            .filter(|r| r.status.as_str() == "Enabled")
            .collect();
        match sweep_bucket(store, &bucket.name, &rules, now, &mut swept).await {
            Ok(()) | Err(StoreError::NoSuchBucket(_)) => {}
            Err(e) => return Err(e),
        }
    }
    metrics::counter!("sluice_lifecycle_expired_objects_total").increment(swept.expired_objects);
    metrics::counter!("sluice_lifecycle_aborted_uploads_total").increment(swept.aborted_uploads);
    metrics::counter!("sluice_lifecycle_expired_versions_total").increment(swept.expired_versions);
    Ok(swept)
}

async fn sweep_bucket(
    store: &dyn ObjectStore,
    bucket: &str,
    rules: &[&LifecycleRule],
    now: i64,
    swept: &mut Swept,
) -> Result<(), StoreError> {
    if rules.iter().any(|r| r.expiration.is_some()) {
        let mut after: Option<String> = None;
        loop {
            let page = store.list(bucket, "", after.as_deref(), PAGE).await?;
            for o in &page {
                if rules.iter().any(|r| expires(r, o, now)) {
                    store.delete(bucket, &o.key).await?;
                    swept.expired_objects += 1;
                    tracing::info!(bucket, key = %o.key, "lifecycle expiration");
                }
            }
            if page.len() < PAGE {
                break;
            }
            after = page.last().map(|o| o.key.clone());
        }
    }
    if rules.iter().any(|r| {
        r.noncurrent_version_expiration.is_some()
            || r.expiration
                .as_ref()
                .is_some_and(|e| e.expired_object_delete_marker == Some(true))
    }) {
        sweep_versions(store, bucket, rules, now, swept).await?;
    }
    if rules
        .iter()
        .any(|r| r.abort_incomplete_multipart_upload.is_some())
    {
        let mut after: Option<UploadMarker> = None;
        loop {
            let page = store
                .list_multipart_uploads(bucket, "", after.take(), PAGE)
                .await?;
            for u in &page {
                if rules.iter().any(|r| aborts(r, u, now)) {
                    match store.abort_multipart(&u.upload_id).await {
                        Ok(()) | Err(StoreError::NoSuchUpload(_)) => {}
                        Err(e) => return Err(e),
                    }
                    swept.aborted_uploads += 1;
                    tracing::info!(bucket, key = %u.key, upload = %u.upload_id, "lifecycle abort of an incomplete multipart upload");
                }
            }
            if page.len() < PAGE {
                break;
            }
            after = page.last().map(|u| UploadMarker {
                key: u.key.clone(),
                upload_id: Some(u.upload_id.clone()),
            });
        }
    }
    Ok(())
}

/// The version actions over every version of a bucket, key by key, newest first. A page
/// resumes at the position of the last entry read, so the deletions behind it do not move
/// it.
async fn sweep_versions(
    store: &dyn ObjectStore,
    bucket: &str,
    rules: &[&LifecycleRule],
    now: i64,
    swept: &mut Swept,
) -> Result<(), StoreError> {
    let mut after: Option<VersionMarker> = None;
    // The key being read, how many of its noncurrent versions were seen (newest first), and
    // its latest entry when that is a delete marker that may be alone.
    let mut key = String::new();
    let mut newer = 0usize;
    let mut lone_marker: Option<VersionEntry> = None;
    loop {
        let page = store.list_versions(bucket, "", after.take(), PAGE).await?;
        for v in &page {
            if v.info.key != key {
                remove_lone_marker(store, bucket, lone_marker.take(), swept).await?;
                key = v.info.key.clone();
                newer = 0;
            }
            if v.is_latest {
                if v.delete_marker && rules.iter().any(|r| removes_lone_marker(r, &key)) {
                    lone_marker = Some(v.clone());
                }
                continue;
            }
            // Any other version: the marker is not alone.
            lone_marker = None;
            if rules.iter().any(|r| expires_noncurrent(r, v, newer, now)) {
                let id = v.info.version_id.as_deref().unwrap_or("null");
                match store.delete_version(bucket, &key, Some(id), false).await {
                    Ok(_) => {
                        swept.expired_versions += 1;
                        tracing::info!(bucket, key = %key, version = id, "lifecycle expiration of a noncurrent version");
                    }
                    // Object lock keeps it (as on S3); it stays one of the newer ones.
                    Err(StoreError::ObjectLocked(_)) => newer += 1,
                    Err(e) => return Err(e),
                }
            } else {
                newer += 1;
            }
        }
        let Some(last) = page.last() else {
            break;
        };
        after = Some(VersionMarker {
            key: last.info.key.clone(),
            version_id: None,
            position: Some(last.position),
        });
        if page.len() < PAGE {
            break;
        }
    }
    remove_lone_marker(store, bucket, lone_marker, swept).await
}

async fn remove_lone_marker(
    store: &dyn ObjectStore,
    bucket: &str,
    marker: Option<VersionEntry>,
    swept: &mut Swept,
) -> Result<(), StoreError> {
    let Some(m) = marker else {
        return Ok(());
    };
    let id = m.info.version_id.as_deref().unwrap_or("null");
    store
        .delete_version(bucket, &m.info.key, Some(id), false)
        .await?;
    swept.expired_versions += 1;
    tracing::info!(bucket, key = %m.info.key, version = id, "lifecycle removal of a lone delete marker");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_round_up_to_midnight_utc() {
        // 2014-01-15T10:30Z + 3 days → 2014-01-19T00:00Z, as S3's documentation says.
        let created = chrono::DateTime::parse_from_rfc3339("2014-01-15T10:30:00Z")
            .expect("date")
            .timestamp_millis();
        let due = chrono::DateTime::parse_from_rfc3339("2014-01-19T00:00:00Z")
            .expect("date")
            .timestamp_millis();
        assert_eq!(next_midnight(created + 3 * DAY_MS), due);
        assert_eq!(next_midnight(due), due, "a midnight stays");
    }
}
