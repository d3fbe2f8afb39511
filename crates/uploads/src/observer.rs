//! Upload status that follows a processor: [`LedgerObserver`] is the processor's
//! [`Observer`] over an [`UploadLedger`].
//!
//! It lives here rather than in the processor because the dependency points this way: the
//! processor knows records (`{bucket,key}`, optionally an `uploadId`) and reports what
//! happened to them through its `Observer` trait; the uploads part owns the status rows and
//! adapts itself to that trait. The processor never needs the uploads crate.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_meta::Meta;
use sluice_processor::{Observer, StatusUpdate, TxWrite};

use crate::{StatusChange, UploadLedger};

/// Upload status follows the records the processor handles. With the embedded ledger in
/// the checkpoints' database, a batch's status rows are committed together with its
/// checkpoint (one write per batch).
pub struct LedgerObserver(pub Arc<dyn UploadLedger>);

impl From<&StatusUpdate> for StatusChange {
    /// The ledger's change for a processor's status update.
    fn from(u: &StatusUpdate) -> StatusChange {
        match u.clone() {
            StatusUpdate::Started { upload_id } => StatusChange::Processing { id: upload_id },
            StatusUpdate::Succeeded {
                upload_id,
                bucket,
                key,
                new_delivery,
            } => StatusChange::Processed {
                id: upload_id,
                bucket,
                key,
                new_attempt: new_delivery,
            },
            StatusUpdate::Failed {
                upload_id,
                error,
                new_delivery,
            } => StatusChange::Failed {
                id: upload_id,
                error,
                new_attempt: new_delivery,
            },
        }
    }
}

/// The ledger's changes for a batch's status updates.
pub fn status_changes(updates: &[StatusUpdate]) -> Vec<StatusChange> {
    updates.iter().map(StatusChange::from).collect()
}

/// The write that applies `updates` inside a transaction of `db`, when `ledger` keeps its
/// rows there (`None` otherwise: the caller reports them on their own).
pub fn write_in(ledger: &dyn UploadLedger, db: &Meta, updates: &[StatusUpdate]) -> Option<TxWrite> {
    if !ledger.db()?.same(db) {
        return None;
    }
    let changes = status_changes(updates);
    Some(Box::new(move |c| {
        crate::embedded::apply_in_tx(c, &changes)?;
        Ok(())
    }))
}

#[async_trait]
impl Observer for LedgerObserver {
    async fn started(&self, upload_id: &str) {
        if let Err(e) = self.0.mark_processing(upload_id).await {
            tracing::warn!(upload = upload_id, error = %e, "cannot record upload status");
        }
    }
    async fn succeeded(&self, upload_id: &str, bucket: &str, key: &str) {
        if let Err(e) = self.0.mark_processed(upload_id, bucket, key).await {
            tracing::warn!(upload = upload_id, error = %e, "cannot record upload status");
        }
    }
    async fn failed(&self, upload_id: &str, error: &str) {
        if let Err(e) = self.0.mark_failed(upload_id, error).await {
            tracing::warn!(upload = upload_id, error = %e, "cannot record upload status");
        }
    }
    async fn report(&self, updates: Vec<StatusUpdate>) {
        let n = updates.len();
        if let Err(e) = self.0.apply(status_changes(&updates)).await {
            tracing::warn!(uploads = n, error = %e, "cannot record upload status");
        }
    }
    fn write_with(&self, db: &Meta, updates: &[StatusUpdate]) -> Option<TxWrite> {
        write_in(self.0.as_ref(), db, updates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_become_ledger_changes() {
        let updates = [
            StatusUpdate::Started {
                upload_id: "a".into(),
            },
            StatusUpdate::Succeeded {
                upload_id: "b".into(),
                bucket: "bkt".into(),
                key: "processed/b".into(),
                new_delivery: true,
            },
            StatusUpdate::Failed {
                upload_id: "c".into(),
                error: "boom".into(),
                new_delivery: false,
            },
        ];
        assert_eq!(
            status_changes(&updates),
            vec![
                StatusChange::Processing { id: "a".into() },
                StatusChange::Processed {
                    id: "b".into(),
                    bucket: "bkt".into(),
                    key: "processed/b".into(),
                    new_attempt: true,
                },
                StatusChange::Failed {
                    id: "c".into(),
                    error: "boom".into(),
                    new_attempt: false,
                },
            ]
        );
    }
}
