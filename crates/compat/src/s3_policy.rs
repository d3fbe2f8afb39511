//! Bucket policies: `PutBucketPolicy` validates a document as S3 does and the store keeps
//! it with its bucket; every S3 request on the bucket is then decided by the caller's
//! identity policies together with the bucket's policy (see [`decide`]).
//!
//! Decisions: [`crate::authz::decide_with_resource_policy`] (Deny wins, also against the
//! account's keys except on the bucket-policy operations; then an Allow in either policy;
//! unsigned requests only by a statement naming everyone: a public bucket).

use std::sync::Arc;
use std::time::Duration;

use s3s::{S3Error, S3ErrorCode};
use serde_json::Value;
use sluice_policy::Context;
use sluice_policy::resource::ResourcePolicy;
use sluice_store::StoreError;
use sluice_store::embedded::EmbeddedStore;

use crate::authz::Principal;
use crate::ttl_cache::TtlCache;

/// How long a bucket's policy is remembered: a policy put through another process takes
/// effect here within this time (through this process, at once).
const TTL: Duration = Duration::from_secs(5);
/// Buckets whose policies are remembered at most; past this the memory is cleared.
const MAX_CACHED: usize = 10_000;
/// S3's limit on a bucket policy document.
pub const MAX_POLICY_BYTES: usize = 20 * 1024;

/// The buckets' policies, read through a short-lived cache.
pub struct BucketPolicies {
    store: Arc<EmbeddedStore>,
    cache: TtlCache<Option<Arc<ResourcePolicy>>>,
}

impl BucketPolicies {
    pub fn new(store: Arc<EmbeddedStore>) -> BucketPolicies {
        BucketPolicies {
            store,
            cache: TtlCache::new(TTL, MAX_CACHED),
        }
    }

    /// The policy of `bucket` (`None`: it has none, or the bucket does not exist).
    pub async fn get(&self, bucket: &str) -> Result<Option<Arc<ResourcePolicy>>, StoreError> {
        if let Some(policy) = self.cache.get(bucket) {
            return Ok(policy);
        }
        let document = match self.store.bucket_policy(bucket).await {
            Ok(d) => d,
            Err(StoreError::NoSuchBucket(_)) => None,
            Err(e) => return Err(e),
        };
        let policy = document.map(|d| stored_policy(&format!("bucket {bucket}"), &d));
        self.cache.put(bucket, policy.clone());
        Ok(policy)
    }

    pub async fn document(&self, bucket: &str) -> Result<Option<String>, StoreError> {
        self.store.bucket_policy(bucket).await
    }

    /// Sets or removes a bucket's policy; it applies at once in this process.
    pub async fn set(&self, bucket: &str, document: Option<String>) -> Result<(), StoreError> {
        let r = self.store.set_bucket_policy(bucket, document).await;
        self.forget(bucket);
        r
    }

    /// Forgets what is remembered of `bucket`'s policy (it was deleted with its bucket).
    /// Another process forgets within [`TTL`].
    pub fn forget(&self, bucket: &str) {
        self.cache.forget(bucket);
    }
}

/// A resource policy read back from storage. It was validated when it was stored: only a
/// damaged row fails here, and a policy sluice cannot read must not open the resource, so
/// it stands for a policy that denies everything (until it is replaced).
pub fn stored_policy(resource: &str, document: &str) -> Arc<ResourcePolicy> {
    Arc::new(ResourcePolicy::parse(document).unwrap_or_else(|e| {
        tracing::error!(resource, error = %e, "a resource policy cannot be read; the resource refuses every request until it is replaced");
        ResourcePolicy::deny_everyone()
    }))
}

fn malformed(message: &str) -> S3Error {
    S3Error::with_message(S3ErrorCode::MalformedPolicy, message.to_owned())
}

/// Checks a bucket policy document as S3's `PutBucketPolicy` does: JSON within 20 KB,
/// every statement with a principal, S3 actions only, and resources in this bucket.
pub fn validate(document: &str, bucket: &str) -> Result<ResourcePolicy, S3Error> {
    if document.len() > MAX_POLICY_BYTES {
        return Err(malformed("Policies must be less than 20 KB"));
    }
    if !document.trim_start().starts_with('{') {
        return Err(malformed(
            "Policies must be valid JSON and the first byte must be '{'",
        ));
    }
    let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(document) else {
        return Err(malformed("This policy contains invalid Json"));
    };
    let statements: Vec<&Value> = match doc.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(one) => vec![one],
        None => return Err(malformed("Missing required field Statement")),
    };
    let strings = sluice_policy::resource::string_or_list;
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    for s in statements {
        let Value::Object(s) = s else {
            return Err(malformed("This policy contains invalid Json"));
        };
        let mut actions = strings(s.get("Action"));
        actions.extend(strings(s.get("NotAction")));
        if actions
            .iter()
            .any(|a| a != "*" && !a.to_ascii_lowercase().starts_with("s3:"))
        {
            return Err(malformed("Policy has invalid action"));
        }
        let mut resources = strings(s.get("Resource"));
        resources.extend(strings(s.get("NotResource")));
        if resources.iter().any(|r| {
            *r != bucket_arn
                && !r
                    .strip_prefix(&bucket_arn)
                    .is_some_and(|rest| rest.starts_with('/'))
        }) {
            return Err(malformed("Policy has invalid resource"));
        }
    }
    ResourcePolicy::parse(document).map_err(|e| match e {
        sluice_policy::PolicyError::Malformed(m) => malformed(&m),
    })
}

/// A request that passed signature checks (or carries none), as the decisions on it need
/// it: carried from `check` to the per-operation hooks.
#[derive(Clone)]
pub(crate) struct Caller {
    /// `None`: an unsigned request.
    pub(crate) principal: Option<Principal>,
    pub(crate) source: Option<std::net::IpAddr>,
    pub(crate) op: String,
    pub(crate) query: Option<String>,
    pub(crate) signed_header: bool,
}

impl Caller {
    /// The request's condition keys for a bucket policy (built only when a bucket has
    /// one: a key with full access needs none otherwise).
    fn context(&self) -> Context {
        let mut c = match &self.principal {
            Some(p) => p.full_context(self.source),
            None => crate::authz::anonymous_context(self.source),
        };
        crate::authz::s3_condition_keys(
            &mut c,
            &self.op,
            self.query.as_deref(),
            self.signed_header,
        );
        c
    }

    /// Whether the caller may perform `action` on `resource`, whose bucket has `policy`
    /// ([`crate::authz::decide_with_resource_policy`]).
    pub(crate) fn decide(
        &self,
        policy: Option<&ResourcePolicy>,
        action: &str,
        resource: &str,
    ) -> Result<(), S3Error> {
        let policy_op = matches!(
            action,
            "s3:PutBucketPolicy" | "s3:GetBucketPolicy" | "s3:DeleteBucketPolicy"
        );
        crate::authz::decide_with_resource_policy(
            self.principal.as_ref(),
            policy,
            || self.context(),
            action,
            resource,
            policy_op,
        )
        .map_err(|denied| {
            let message = denied.map_or_else(|| "Access Denied".to_owned(), |d| d.message());
            S3Error::with_message(S3ErrorCode::AccessDenied, message)
        })
    }
}
