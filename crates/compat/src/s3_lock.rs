//! S3 Object Lock: a bucket's object lock configuration (kept as the bucket configuration
//! [`OBJECT_LOCK`]), the retention and legal hold of each version (kept in its
//! [`ObjectHeaders`], enforced by the store when a version is deleted:
//! [`ObjectHeaders::deletion_refused`]), and what S3 checks when they are set.
//!
//! A bucket gets object lock when it is created with `x-amz-bucket-object-lock-enabled`
//! (versioning is enabled with it) or, when its versioning is `Enabled`, by
//! PutObjectLockConfiguration; its versioning cannot be suspended afterwards. Locks protect
//! versions, not keys: a DeleteObject without a version id still adds a delete marker.

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Result};
use std::sync::Arc;
use std::time::Duration;

use sluice_store::{HeadersUpdate, ObjectHeaders, ObjectStore, StoreError};

use crate::ttl_cache::TtlCache;

/// The bucket configuration kind an object lock configuration is kept under.
pub(crate) const OBJECT_LOCK: &str = "object-lock";

const DAY_MS: i64 = 86_400_000;
const GOVERNANCE: &str = "GOVERNANCE";
const COMPLIANCE: &str = "COMPLIANCE";

/// The buckets' object lock configurations, remembered for 5 seconds (read by every write,
/// for the default retention); `None`: the bucket has none (or does not exist).
pub struct BucketLocks(TtlCache<Option<Arc<ObjectLockConfiguration>>>);

impl Default for BucketLocks {
    fn default() -> Self {
        BucketLocks(TtlCache::new(Duration::from_secs(5), 10_000))
    }
}

impl BucketLocks {
    pub async fn get(
        &self,
        store: &Arc<dyn ObjectStore>,
        bucket: &str,
    ) -> Result<Option<Arc<ObjectLockConfiguration>>, StoreError> {
        if let Some(c) = self.0.get(bucket) {
            return Ok(c);
        }
        let cfg = match store.bucket_config(bucket, OBJECT_LOCK).await {
            Ok(Some(doc)) => match serde_json::from_str(&doc) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    return Err(StoreError::Backend(format!(
                        "the object lock configuration of {bucket} cannot be read: {e}"
                    )));
                }
            },
            Ok(None) | Err(StoreError::NoSuchBucket(_)) => None,
            Err(e) => return Err(e),
        };
        self.0.put(bucket, cfg.clone());
        Ok(cfg)
    }

    pub fn forget(&self, bucket: &str) {
        self.0.forget(bucket);
    }
}

fn invalid(code: S3ErrorCode, message: &str) -> S3Error {
    S3Error::with_message(code, message.to_owned())
}

use crate::s3::millis;

fn mode_of(mode: &str) -> S3Result<&'static str> {
    match mode {
        GOVERNANCE => Ok(GOVERNANCE),
        COMPLIANCE => Ok(COMPLIANCE),
        _ => Err(invalid(
            S3ErrorCode::MalformedXML,
            "The retention mode must be GOVERNANCE or COMPLIANCE",
        )),
    }
}

/// A retain-until date, which must be after `now`.
fn future(t: &Timestamp, now: i64) -> S3Result<i64> {
    let until = millis(t).ok_or_else(|| {
        invalid(
            S3ErrorCode::InvalidArgument,
            "The retain until date is not valid",
        )
    })?;
    if until <= now {
        return Err(invalid(
            S3ErrorCode::InvalidArgument,
            "The retain until date must be in the future!",
        ));
    }
    Ok(until)
}

/// Checks an object lock configuration as PutObjectLockConfiguration does.
pub(crate) fn validate(cfg: &ObjectLockConfiguration) -> S3Result<()> {
    if cfg
        .object_lock_enabled
        .as_ref()
        .is_none_or(|e| e.as_str() != ObjectLockEnabled::ENABLED)
    {
        return Err(invalid(
            S3ErrorCode::MalformedXML,
            "ObjectLockEnabled must be Enabled",
        ));
    }
    if let Some(rule) = &cfg.rule {
        let Some(d) = &rule.default_retention else {
            return Err(invalid(
                S3ErrorCode::MalformedXML,
                "A Rule must have a DefaultRetention",
            ));
        };
        match &d.mode {
            Some(m) => {
                mode_of(m.as_str())?;
            }
            None => {
                return Err(invalid(
                    S3ErrorCode::MalformedXML,
                    "DefaultRetention must have a Mode",
                ));
            }
        }
        match (d.days, d.years) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    S3ErrorCode::MalformedXML,
                    "DefaultRetention must have either Days or Years, not both",
                ));
            }
            (Some(n), None) | (None, Some(n)) if n <= 0 => {
                return Err(invalid(
                    S3ErrorCode::InvalidArgument,
                    "Default retention period must be a positive integer value",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The bucket's default retention at `now`, as (mode, until).
fn default_retention(cfg: &ObjectLockConfiguration, now: i64) -> Option<(String, i64)> {
    let d = cfg.rule.as_ref()?.default_retention.as_ref()?;
    let mode = d.mode.as_ref()?.as_str().to_owned();
    let days = match (d.days, d.years) {
        (Some(days), _) => i64::from(days),
        (None, Some(years)) => i64::from(years) * 365,
        (None, None) => return None,
    };
    Some((mode, now + days * DAY_MS))
}

/// The lock a write gives its new version: the request's `x-amz-object-lock-*` headers, or
/// the bucket's default retention. Lock headers on a bucket without object lock are
/// `InvalidRequest`; a mode without a date (or a date without a mode) and a date in the
/// past are `InvalidArgument`, as on S3.
pub(crate) fn for_write(
    bucket_cfg: Option<&ObjectLockConfiguration>,
    mode: Option<&ObjectLockMode>,
    until: Option<&Timestamp>,
    hold: Option<&ObjectLockLegalHoldStatus>,
    now: i64,
) -> S3Result<(Option<(String, i64)>, bool)> {
    let asked = mode.is_some() || until.is_some() || hold.is_some();
    let Some(cfg) = bucket_cfg else {
        if asked {
            return Err(invalid(
                S3ErrorCode::InvalidRequest,
                "Bucket is missing Object Lock Configuration",
            ));
        }
        return Ok((None, false));
    };
    let hold = hold.is_some_and(|h| h.as_str() == ObjectLockLegalHoldStatus::ON);
    let lock = match (mode, until) {
        (Some(m), Some(t)) => Some((mode_of(m.as_str())?.to_owned(), future(t, now)?)),
        (None, None) => default_retention(cfg, now),
        _ => {
            return Err(invalid(
                S3ErrorCode::InvalidArgument,
                "x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must both be supplied",
            ));
        }
    };
    Ok((lock, hold))
}

/// The change PutObjectRetention makes: a retention may always be extended; a COMPLIANCE
/// retention still running cannot be shortened, removed or turned into GOVERNANCE; a
/// GOVERNANCE one only with `x-amz-bypass-governance-retention`.
pub(crate) fn retention_update(
    retention: Option<ObjectLockRetention>,
    bypass_governance: bool,
    now: i64,
) -> S3Result<HeadersUpdate> {
    let wanted = match retention {
        None => None,
        Some(ObjectLockRetention {
            mode: None,
            retain_until_date: None,
        }) => None,
        Some(ObjectLockRetention {
            mode: Some(m),
            retain_until_date: Some(t),
        }) => Some((mode_of(m.as_str())?.to_owned(), future(&t, now)?)),
        Some(_) => {
            return Err(invalid(
                S3ErrorCode::MalformedXML,
                "A Retention must have both Mode and RetainUntilDate",
            ));
        }
    };
    Ok(Box::new(move |h: &mut ObjectHeaders| {
        if let Some((mode, until)) = &h.lock
            && *until > now
        {
            let weaker = match &wanted {
                None => true,
                Some((m, u)) => m != mode || u < until,
            };
            let refused = weaker && (mode == COMPLIANCE || !bypass_governance);
            if refused {
                return Err(StoreError::ObjectLocked(format!(
                    "the version's {mode} retention may only be extended"
                )));
            }
        }
        h.lock = wanted.clone();
        Ok(())
    }))
}

/// The change PutObjectLegalHold makes.
pub(crate) fn legal_hold_update(hold: Option<ObjectLockLegalHold>) -> S3Result<HeadersUpdate> {
    let on = match hold.and_then(|h| h.status) {
        Some(s) if s.as_str() == ObjectLockLegalHoldStatus::ON => true,
        Some(s) if s.as_str() == ObjectLockLegalHoldStatus::OFF => false,
        _ => {
            return Err(invalid(
                S3ErrorCode::MalformedXML,
                "The legal hold status must be ON or OFF",
            ));
        }
    };
    Ok(Box::new(move |h: &mut ObjectHeaders| {
        h.legal_hold = on;
        Ok(())
    }))
}

/// The lock headers of a version, as GetObject and HeadObject answer them.
pub(crate) fn answer(
    h: &ObjectHeaders,
) -> (
    Option<ObjectLockMode>,
    Option<Timestamp>,
    Option<ObjectLockLegalHoldStatus>,
) {
    let (mode, until) = match &h.lock {
        Some((m, u)) => (
            Some(ObjectLockMode::from(m.clone())),
            Some(crate::s3::timestamp(*u)),
        ),
        None => (None, None),
    };
    let hold = h
        .legal_hold
        .then(|| ObjectLockLegalHoldStatus::from_static(ObjectLockLegalHoldStatus::ON));
    (mode, until, hold)
}

/// S3's answer when a version has no retention or no legal hold.
pub(crate) fn not_configured() -> S3Error {
    invalid(
        S3ErrorCode::NoSuchObjectLockConfiguration,
        "The specified object does not have a ObjectLock configuration",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ms: i64) -> Timestamp {
        crate::s3::timestamp(ms)
    }

    #[test]
    fn retention_can_be_extended_but_not_weakened() {
        let now = 1_000 * DAY_MS;
        let mut h = ObjectHeaders {
            lock: Some((COMPLIANCE.into(), now + DAY_MS)),
            ..Default::default()
        };
        let shorter = ObjectLockRetention {
            mode: Some(ObjectLockRetentionMode::from_static(COMPLIANCE)),
            retain_until_date: Some(ts(now + 1000)),
        };
        let update = retention_update(Some(shorter.clone()), true, now).expect("valid");
        assert!(update(&mut h).is_err(), "COMPLIANCE cannot be shortened");
        let longer = ObjectLockRetention {
            mode: Some(ObjectLockRetentionMode::from_static(COMPLIANCE)),
            retain_until_date: Some(ts(now + 2 * DAY_MS)),
        };
        retention_update(Some(longer), false, now).expect("valid")(&mut h).expect("extended");
        assert_eq!(h.lock, Some((COMPLIANCE.into(), now + 2 * DAY_MS)));
        let mut g = ObjectHeaders {
            lock: Some((GOVERNANCE.into(), now + DAY_MS)),
            ..Default::default()
        };
        let governance_shorter = ObjectLockRetention {
            mode: Some(ObjectLockRetentionMode::from_static(GOVERNANCE)),
            retain_until_date: Some(ts(now + 1000)),
        };
        assert!(
            retention_update(Some(governance_shorter.clone()), false, now).expect("valid")(&mut g)
                .is_err()
        );
        retention_update(Some(governance_shorter), true, now).expect("valid")(&mut g)
            .expect("bypassed");
        assert_eq!(g.lock, Some((GOVERNANCE.into(), now + 1000)));
        assert!(
            retention_update(Some(shorter), false, now + 2 * DAY_MS).is_err(),
            "past"
        );
    }

    #[test]
    fn writes_take_the_request_or_the_default() {
        let now = 10 * DAY_MS;
        let cfg = ObjectLockConfiguration {
            object_lock_enabled: Some(ObjectLockEnabled::from_static(ObjectLockEnabled::ENABLED)),
            rule: Some(ObjectLockRule {
                default_retention: Some(DefaultRetention {
                    days: Some(2),
                    mode: Some(ObjectLockRetentionMode::from_static(GOVERNANCE)),
                    years: None,
                }),
            }),
        };
        validate(&cfg).expect("valid");
        assert_eq!(
            for_write(Some(&cfg), None, None, None, now).expect("default"),
            (Some((GOVERNANCE.into(), now + 2 * DAY_MS)), false)
        );
        let mode = ObjectLockMode::from_static(COMPLIANCE);
        assert!(for_write(Some(&cfg), Some(&mode), None, None, now).is_err());
        assert!(for_write(None, Some(&mode), Some(&ts(now + 5)), None, now).is_err());
        assert!(for_write(Some(&cfg), Some(&mode), Some(&ts(now - 5)), None, now).is_err());
        let hold = ObjectLockLegalHoldStatus::from_static(ObjectLockLegalHoldStatus::ON);
        assert_eq!(
            for_write(
                Some(&cfg),
                Some(&mode),
                Some(&ts(now + 5)),
                Some(&hold),
                now
            )
            .expect("given"),
            (Some((COMPLIANCE.into(), now + 5)), true)
        );
    }
}
