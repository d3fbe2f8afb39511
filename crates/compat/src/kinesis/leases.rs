//! One subscription per consumer and shard: the leases SubscribeToShard takes. A second
//! subscription within [`TAKEOVER_AFTER`] of the first is refused; a later one takes over,
//! and the earlier one learns it ([`Lease::taken_over`]). Knows nothing of Kinesis' wire
//! format: refusals are [`LeaseError`]s, which `efo` words as AWS does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long a subscription lasts, as AWS.
pub const SUBSCRIPTION_DURATION: Duration = Duration::from_secs(300);
/// The longest a subscription goes without an event, as AWS (about every 5 s).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a subscription holds its consumer and shard against a new SubscribeToShard.
pub const TAKEOVER_AFTER: Duration = Duration::from_secs(5);

/// The timings of subscriptions; [`Default`] is AWS'. Tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeOptions {
    pub duration: Duration,
    pub heartbeat: Duration,
    pub takeover_after: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            duration: SUBSCRIPTION_DURATION,
            heartbeat: HEARTBEAT,
            takeover_after: TAKEOVER_AFTER,
        }
    }
}

/// (stream, consumer, consumer creation ms, shard id).
pub(crate) type LeaseKey = (String, String, i64, String);

struct Holder {
    id: u64,
    started: Instant,
    /// Set when a newer subscription takes over.
    taken: watch::Sender<bool>,
}

/// The subscriptions running on this edge, one per consumer and shard.
#[derive(Clone, Default)]
pub struct Subscriptions {
    options: SubscribeOptions,
    active: Arc<Mutex<HashMap<LeaseKey, Holder>>>,
    next_id: Arc<AtomicU64>,
}

impl Subscriptions {
    pub fn new(options: SubscribeOptions) -> Self {
        Subscriptions {
            options,
            ..Subscriptions::default()
        }
    }

    pub fn options(&self) -> SubscribeOptions {
        self.options
    }

    pub(crate) fn acquire(&self, key: LeaseKey) -> Result<Lease, LeaseError> {
        let mut active = self.active.lock().map_err(|_| LeaseError::Poisoned)?;
        if let Some(h) = active.get(&key) {
            let held_for = h.started.elapsed();
            if held_for < self.options.takeover_after {
                return Err(LeaseError::InUse {
                    held_for,
                    takeover_after: self.options.takeover_after,
                });
            }
            h.taken.send_replace(true);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (taken, taken_rx) = watch::channel(false);
        active.insert(
            key.clone(),
            Holder {
                id,
                started: Instant::now(),
                taken,
            },
        );
        Ok(Lease {
            subs: self.clone(),
            key,
            id,
            taken: taken_rx,
        })
    }
}

/// A running subscription's hold on its consumer and shard; released when dropped.
pub(crate) struct Lease {
    subs: Subscriptions,
    key: LeaseKey,
    id: u64,
    taken: watch::Receiver<bool>,
}

impl Lease {
    /// Resolves once a newer subscription has taken over.
    pub(crate) async fn taken_over(&mut self) {
        // A dropped sender means the holder was replaced: taken over too.
        let _ = self.taken.wait_for(|t| *t).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut active) = self.subs.active.lock()
            && active.get(&self.key).is_some_and(|h| h.id == self.id)
        {
            active.remove(&self.key);
        }
    }
}

/// Why a lease was refused.
#[derive(Debug)]
pub(crate) enum LeaseError {
    /// Another subscription holds the consumer and shard, since `held_for`; it can be taken
    /// over once it held them for `takeover_after`.
    InUse {
        held_for: Duration,
        takeover_after: Duration,
    },
    /// The registry's lock was poisoned by a panic.
    Poisoned,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_subscription_is_refused_then_takes_over() {
        let subs = Subscriptions::new(SubscribeOptions {
            takeover_after: Duration::from_secs(3600),
            ..SubscribeOptions::default()
        });
        let key = (
            "s".to_owned(),
            "c".to_owned(),
            1,
            "shardId-000000000000".to_owned(),
        );
        let first = subs.acquire(key.clone()).expect("first");
        let e = subs.acquire(key.clone()).err().expect("refused");
        assert!(matches!(e, LeaseError::InUse { .. }), "{e:?}");
        let other_shard = (
            "s".to_owned(),
            "c".to_owned(),
            1,
            "shardId-000000000001".to_owned(),
        );
        let _other = subs.acquire(other_shard).expect("another shard is free");
        drop(first);
        let _again = subs.acquire(key.clone()).expect("free once released");

        let eager = Subscriptions::new(SubscribeOptions {
            takeover_after: Duration::ZERO,
            ..SubscribeOptions::default()
        });
        let mut old = eager.acquire(key.clone()).expect("first");
        let new = eager.acquire(key.clone()).expect("takes over");
        tokio::time::timeout(Duration::from_secs(60), old.taken_over())
            .await
            .expect("the old subscription learns it was taken over");
        drop(old);
        assert!(
            eager.active.lock().expect("lock").get(&key).map(|h| h.id) == Some(new.id),
            "dropping the old lease leaves the new one in place"
        );
    }
}
