//! STS's AssumeRole over IAM's roles: who may assume a role is what the role's trust
//! policy says (its `Principal`, `Action` and `Condition`, evaluated with the one
//! evaluator), and the session may do what the role's policies allow.
//!
//! The session's credentials are an `ASIA…` key, a secret and a session token
//! (`sluice_identity::access_keys::AccessKeys::create_session`); a request signed with them
//! must carry the token, and they stop working at their expiry.
//!
//! One difference from AWS: AWS refuses AssumeRole to an account's root user; sluice lets
//! its account keys (the development key, `sluice keys create`) assume any role whose trust
//! policy names the account (`arn:aws:iam::ACCOUNT:root` or the account id), since they are
//! the keys scripts run with here.

use serde_json::{Value, json};
use sluice_identity::access_keys::SessionCredentials;
use sluice_policy::{Context, Policy};

use crate::{Iam, IamError, Kind, validate_name};

/// Who asks to assume a role.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The caller's ARN: a user's, an assumed role's session, or `arn:aws:iam::ACCOUNT:root`.
    pub arn: &'a str,
    pub account: &'a str,
    /// For a role session: its role's ARN (a trust policy may name the role).
    pub role_arn: Option<&'a str>,
    /// A service sluice assumes the role for (`lambda.amazonaws.com`).
    pub service: Option<&'a str>,
}

/// AssumeRole's answer.
#[derive(Debug, Clone)]
pub struct AssumedRole {
    pub credentials: SessionCredentials,
    /// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`.
    pub arn: String,
    /// `AROA…:SESSION`.
    pub assumed_role_id: String,
}

impl Iam {
    /// Assumes the role `role_arn` for `caller`, for `duration_s` seconds (default one hour,
    /// at least 15 minutes, at most the role's `MaxSessionDuration`), if the role's trust
    /// policy allows it for the request's condition keys `ctx`.
    pub async fn assume_role(
        &self,
        caller: Caller<'_>,
        role_arn: &str,
        session_name: &str,
        duration_s: Option<i64>,
        ctx: &Context,
    ) -> Result<AssumedRole, IamError> {
        validate_session_name(session_name)?;
        let mut ctx = ctx.clone();
        ctx.set("sts:RoleSessionName", session_name);
        let role = self.trusted_role(caller, role_arn, &ctx).await?;
        let max = role.max_session_duration.unwrap_or(3600);
        let duration = duration_s.unwrap_or(3600.min(max));
        if duration < 900 {
            return Err(IamError::Validation(format!(
                "1 validation error detected: Value '{duration}' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900"
            )));
        }
        if duration > max {
            return Err(IamError::Validation(
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
                    .into(),
            ));
        }
        let expires_ms = sluice_meta::now_ms() + duration * 1000;
        let credentials = self
            .keys
            .create_session(&role.name, session_name, expires_ms)
            .await?;
        Ok(AssumedRole {
            credentials,
            arn: format!(
                "arn:aws:sts::{}:assumed-role/{}/{session_name}",
                self.account_id, role.name
            ),
            assumed_role_id: format!("{}:{session_name}", role.id),
        })
    }

    /// The role `role_arn` names, if it exists and its trust policy lets `caller` assume it
    /// (for the request's condition keys `ctx`); `AccessDenied` otherwise, as STS answers
    /// both (it does not tell a missing role from one that does not trust the caller).
    pub async fn trusted_role(
        &self,
        caller: Caller<'_>,
        role_arn: &str,
        ctx: &Context,
    ) -> Result<crate::Entity, IamError> {
        let denied = || {
            IamError::AccessDenied(format!(
                "User: {} is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
                caller.arn
            ))
        };
        let Some((Kind::Role, name)) = crate::entity_of_arn(role_arn) else {
            return Err(IamError::Validation(format!(
                "1 validation error detected: Value '{role_arn}' at 'roleArn' failed to satisfy constraint: the ARN of a role"
            )));
        };
        let role = match self.get(Kind::Role, &name).await {
            Ok(r) if r.arn == role_arn => r,
            Ok(_) | Err(IamError::NoSuchEntity(_)) => return Err(denied()),
            Err(e) => return Err(e),
        };
        let trust = role.assume_role_policy.as_deref().unwrap_or("{}");
        if !trusts(trust, caller, role_arn, ctx) {
            return Err(denied());
        }
        Ok(role)
    }
}

impl Iam {
    /// `service` (`lambda.amazonaws.com`) as the caller of AssumeRole, in this account.
    fn service_caller<'a>(&'a self, service: &'a str) -> Caller<'a> {
        Caller {
            arn: service,
            account: &self.account_id,
            role_arn: None,
            service: Some(service),
        }
    }

    /// Whether `service` may assume `role_arn`: the role exists and its trust policy names
    /// the service (`AccessDenied` otherwise).
    pub async fn service_may_assume(&self, service: &str, role_arn: &str) -> Result<(), IamError> {
        self.trusted_role(self.service_caller(service), role_arn, &Context::new())
            .await
            .map(|_| ())
    }

    /// A session of `role_arn` that `service` assumes for `session` (a function's name:
    /// Lambda names the session after the function), lasting `duration_s` seconds.
    pub async fn assume_for_service(
        &self,
        service: &str,
        role_arn: &str,
        session: &str,
        duration_s: i64,
    ) -> Result<AssumedRole, IamError> {
        // A session name has at least 2 characters; a function's name may have one.
        let session = if session.chars().count() < 2 {
            format!("{session}-")
        } else {
            session.to_owned()
        };
        self.assume_role(
            self.service_caller(service),
            role_arn,
            &session,
            Some(duration_s),
            &Context::new(),
        )
        .await
    }
}

/// A session name: 2 to 64 characters of `[\w+=,.@-]`.
fn validate_session_name(name: &str) -> Result<(), IamError> {
    if name.chars().count() < 2 {
        return Err(IamError::Validation(format!(
            "1 validation error detected: Value '{name}' at 'roleSessionName' failed to satisfy constraint: Member must have length greater than or equal to 2"
        )));
    }
    validate_name(name, 64, "roleSessionName")
}

/// Whether a trust policy lets `caller` assume the role: the statements whose `Principal`
/// names the caller, decided as an identity policy on `sts:AssumeRole` (a Deny wins).
pub fn trusts(document: &str, caller: Caller<'_>, role_arn: &str, ctx: &Context) -> bool {
    let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(document) else {
        return false;
    };
    let statements: Vec<&Value> = match doc.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        _ => return false,
    };
    let mut applicable = Vec::new();
    for s in statements {
        let Value::Object(s) = s else { continue };
        if !s.get("Principal").is_some_and(|p| names(p, caller)) {
            continue;
        }
        let mut st = serde_json::Map::new();
        for k in ["Effect", "Action", "NotAction", "Condition"] {
            if let Some(v) = s.get(k) {
                st.insert(k.into(), v.clone());
            }
        }
        st.insert("Resource".into(), json!("*"));
        applicable.push(Value::Object(st));
    }
    if applicable.is_empty() {
        return false;
    }
    let mut identity = serde_json::Map::new();
    if let Some(v) = doc.get("Version") {
        identity.insert("Version".into(), v.clone());
    }
    identity.insert("Statement".into(), Value::Array(applicable));
    match Policy::parse(&Value::Object(identity).to_string()) {
        Ok(p) => p.decide_in("sts:AssumeRole", role_arn, ctx).allowed(),
        Err(e) => {
            tracing::warn!(role = %role_arn, error = %e, "a role's trust policy cannot be evaluated: it trusts no one");
            false
        }
    }
}

/// Whether a trust statement's `Principal` names the caller.
fn names(principal: &Value, caller: Caller<'_>) -> bool {
    let list = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    match principal {
        Value::String(s) => s == "*",
        Value::Object(m) => m.iter().any(|(kind, ids)| {
            let ids = list(ids);
            match kind.as_str() {
                "AWS" => {
                    caller.service.is_none()
                        && ids.iter().any(|id| {
                            id == "*"
                                || id == caller.arn
                                || caller.role_arn == Some(id.as_str())
                                || id == caller.account
                                || *id == format!("arn:aws:iam::{}:root", caller.account)
                        })
                }
                "Service" => caller.service.is_some_and(|s| ids.iter().any(|id| id == s)),
                _ => false,
            }
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:iam::000000000000:role/r";

    fn user(arn: &str) -> Caller<'_> {
        Caller {
            arn,
            account: "000000000000",
            role_arn: None,
            service: None,
        }
    }

    #[test]
    fn trust_principals_actions_and_conditions() {
        let lambda = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        let service = Caller {
            service: Some("lambda.amazonaws.com"),
            ..user("lambda.amazonaws.com")
        };
        let ctx = Context::new();
        assert!(trusts(lambda, service, ARN, &ctx));
        assert!(!trusts(
            lambda,
            user("arn:aws:iam::000000000000:user/alice"),
            ARN,
            &ctx
        ));

        let account = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::000000000000:root"},"Action":"sts:AssumeRole","Condition":{"StringEquals":{"sts:ExternalId":"xyz"}}}]}"#;
        let alice = user("arn:aws:iam::000000000000:user/alice");
        assert!(
            !trusts(account, alice, ARN, &ctx),
            "the external id is missing"
        );
        let mut with_id = Context::new();
        with_id.set("sts:ExternalId", "xyz");
        assert!(trusts(account, alice, ARN, &with_id));

        let only_bob = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::000000000000:user/bob"]},"Action":"sts:AssumeRole"},{"Effect":"Deny","Principal":"*","Action":"sts:AssumeRole","Condition":{"StringEquals":{"aws:username":"mallory"}}}]}"#;
        assert!(trusts(
            only_bob,
            user("arn:aws:iam::000000000000:user/bob"),
            ARN,
            &ctx
        ));
        assert!(!trusts(only_bob, alice, ARN, &ctx));
        let mut mallory = Context::new();
        mallory.set("aws:username", "mallory");
        let wide = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"},{"Effect":"Deny","Principal":"*","Action":"sts:AssumeRole","Condition":{"StringEquals":{"aws:username":"mallory"}}}]}"#;
        assert!(trusts(wide, alice, ARN, &ctx));
        assert!(
            !trusts(
                wide,
                user("arn:aws:iam::000000000000:user/mallory"),
                ARN,
                &mallory
            ),
            "an explicit deny wins"
        );
        assert!(!trusts("not json", alice, ARN, &ctx));
    }
}
