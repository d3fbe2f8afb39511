//! Per-user upload limits: uploads per minute (429 beyond it), bytes uploaded per day
//! (429 beyond it) and bytes stored (507 beyond it), all off unless configured (`[limits]`
//! in sluice.toml).
//!
//! Bytes stored are the sizes of the objects the user owns (the store's `owner`, which an
//! upload sets to the uploader), read with one indexed query per upload while the limit is
//! on. An upload that replaces one of the user's own objects is counted in full against
//! what is stored now (the object it replaces still counts until it is replaced): the
//! check errs towards refusing, never towards storing past the limit by more than the
//! uploads racing it.
//!
//! Uploads per minute are token buckets in memory (per process: N gateways admit up to N
//! times the rate). Bytes per day are the sum of the user's uploads of the last 24 hours in
//! the ledger — durable and shared by every process, at the price of one indexed read per
//! upload while the limit is on. The check runs before the body is read when the request
//! says its length, and again once the size is known (a streamed body is then discarded).

use std::sync::Arc;

use sluice_identity::rates::{Buckets, Rate};
use sluice_meta::now_ms;
use sluice_store::ObjectStore;
use sluice_uploads::UploadLedger;

use crate::GatewayError;

/// What a user may upload (0: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    pub uploads_per_minute: u32,
    pub bytes_per_day: u64,
    pub stored_bytes: u64,
}

/// [`UserLimits`] and the buckets that count against them.
#[derive(Default)]
pub struct Quota {
    limits: UserLimits,
    per_minute: Buckets<String>,
    /// The live upload streams each user holds open (`GET /uploads/events`).
    pub(crate) live: Arc<crate::live::LiveStreams>,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

impl Quota {
    pub fn new(limits: UserLimits) -> Arc<Quota> {
        Arc::new(Quota {
            limits,
            per_minute: Buckets::default(),
            live: Arc::default(),
        })
    }

    /// Counts one upload of `sub` against its rate.
    pub fn admit(&self, sub: &str) -> Result<(), GatewayError> {
        let n = self.limits.uploads_per_minute;
        if n == 0 {
            return Ok(());
        }
        let rate = Rate {
            per_second: f64::from(n) / 60.0,
            burst: f64::from(n),
        };
        if self.per_minute.admit(&sub.to_owned(), rate) {
            Ok(())
        } else {
            Err(GatewayError::TooManyRequests {
                message: format!("at most {n} uploads per minute; try again later"),
                retry_after_secs: (60 / u64::from(n)).max(1),
            })
        }
    }

    /// Refuses `adding` more bytes when the user's uploads of the last 24 hours and they
    /// would pass the daily limit.
    pub async fn check_bytes(
        &self,
        ledger: &dyn UploadLedger,
        sub: &str,
        adding: u64,
    ) -> Result<(), GatewayError> {
        let limit = self.limits.bytes_per_day;
        if limit == 0 {
            return Ok(());
        }
        let used = ledger.bytes_since(sub, now_ms() - DAY_MS).await?;
        if used.saturating_add(adding) > limit {
            return Err(GatewayError::TooManyRequests {
                message: format!(
                    "this upload of {adding} bytes would pass the limit of {limit} bytes per day ({used} uploaded in the last 24 hours)"
                ),
                retry_after_secs: 3600,
            });
        }
        Ok(())
    }

    /// Refuses (507) `adding` more bytes when what the user stores and they would pass the
    /// storage limit.
    pub async fn check_stored(
        &self,
        store: &dyn ObjectStore,
        sub: &str,
        adding: u64,
    ) -> Result<(), GatewayError> {
        let limit = self.limits.stored_bytes;
        if limit == 0 {
            return Ok(());
        }
        let stored = store.owned_bytes(sub).await?;
        if stored.saturating_add(adding) > limit {
            return Err(GatewayError::QuotaExceeded(format!(
                "this upload of {adding} bytes would pass your storage limit of {limit} bytes ({stored} stored)"
            )));
        }
        Ok(())
    }

    /// Both byte limits on an upload of `adding` bytes.
    pub async fn check_upload(
        &self,
        ledger: &dyn UploadLedger,
        store: &dyn ObjectStore,
        sub: &str,
        adding: u64,
    ) -> Result<(), GatewayError> {
        self.check_bytes(ledger, sub, adding).await?;
        self.check_stored(store, sub, adding).await
    }
}
