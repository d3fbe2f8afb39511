//! Roles that sluice's own parts act as: the upload route and the built-in mapping run
//! in-process (no access key, no edge), so instead of signing requests they ask a
//! [`RoleGuard`] whether their role's policies allow each action before they take it. The
//! roles are ordinary IAM roles ([`Iam::ensure_role`] creates them at start when missing,
//! with a least-privilege inline policy), so `aws iam get-role-policy` shows what a part may
//! do and `put-role-policy` / `delete-role-policy` change it, as for a function's role.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_policy::{Context, Policy};

use crate::{Entity, Iam, IamError, Kind, NewEntity};

/// How long a guard reuses its role's policies (the edge's key cache time: a change in
/// IAM reaches every process within it; this process's own changes at once).
const REFRESH: Duration = Duration::from_secs(5);

/// The policies a guard read, when, and at which of `Iam::generation`.
type Cached = Option<(Instant, u64, Arc<Policy>)>;

/// Decides a role's actions with its current policies (re-read every few seconds).
#[derive(Clone)]
pub struct RoleGuard {
    iam: Iam,
    role: String,
    arn: String,
    cached: Arc<Mutex<Cached>>,
}

impl RoleGuard {
    pub fn new(iam: Iam, role: &str) -> Self {
        let arn = format!("arn:aws:iam::{}:role/{role}", iam.account_id());
        RoleGuard {
            iam,
            role: role.to_owned(),
            arn,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    pub fn role_arn(&self) -> &str {
        &self.arn
    }

    async fn policy(&self) -> Result<Arc<Policy>, IamError> {
        let generation = self.iam.generation();
        if let Ok(c) = self.cached.lock()
            && let Some((at, g, p)) = c.as_ref()
            && at.elapsed() < REFRESH
            && *g == generation
        {
            return Ok(p.clone());
        }
        let policy = match self.iam.policy_of(Kind::Role, &self.role).await {
            Ok((_, p)) => p,
            // A deleted role allows nothing.
            Err(IamError::NoSuchEntity(_)) => Policy::deny_all(),
            Err(e) => return Err(e),
        };
        let policy = Arc::new(policy);
        if let Ok(mut c) = self.cached.lock() {
            *c = Some((Instant::now(), generation, policy.clone()));
        }
        Ok(policy)
    }

    /// `Ok(())` if the role may take `action` on `resource`; `AccessDenied` with AWS's
    /// message shape (naming the role) otherwise.
    pub async fn check(&self, action: &str, resource: &str) -> Result<(), IamError> {
        let policy = self.policy().await?;
        if policy
            .decide_in(action, resource, &Context::new())
            .allowed()
        {
            Ok(())
        } else {
            Err(IamError::AccessDenied(format!(
                "{} is not authorized to perform: {action} on resource: {resource} (sluice's role {}: see `aws iam list-role-policies --role-name {}`)",
                self.arn, self.role, self.role
            )))
        }
    }
}

impl Iam {
    /// Creates role `name` (trusting `service`) with the inline policy `policy_name` =
    /// `document` if the role does not exist; an existing role is left as it is (an
    /// operator's changes to it stand). Returns the role and whether it was created.
    pub async fn ensure_role(
        &self,
        name: &str,
        description: &str,
        service: &str,
        policy_name: &str,
        document: &str,
    ) -> Result<(Entity, bool), IamError> {
        match self.get(Kind::Role, name).await {
            Ok(e) => return Ok((e, false)),
            Err(IamError::NoSuchEntity(_)) => {}
            Err(e) => return Err(e),
        }
        let trust = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Service": service},
                "Action": "sts:AssumeRole"
            }]
        })
        .to_string();
        let created = self
            .create(
                Kind::Role,
                NewEntity {
                    name: name.to_owned(),
                    description: Some(description.to_owned()),
                    assume_role_policy: Some(trust),
                    ..NewEntity::default()
                },
            )
            .await;
        let role = match created {
            Ok(e) => e,
            // Another process sharing the engines made it first.
            Err(IamError::EntityAlreadyExists(_)) => {
                return Ok((self.get(Kind::Role, name).await?, false));
            }
            Err(e) => return Err(e),
        };
        self.put_inline(Kind::Role, name, policy_name, document)
            .await?;
        Ok((role, true))
    }
}
