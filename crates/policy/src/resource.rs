//! Resource policies (a bucket's policy): statements that name who they apply to with
//! `Principal` or `NotPrincipal`, decided with the same evaluator as identity policies.
//!
//! A statement applies to a request when its principal element names the requester and its
//! action, resource and conditions match (as in an identity policy). Who a principal
//! element names:
//!
//! - `"*"` or `{"AWS": "*"}`: everyone, also anonymous requests;
//! - an IAM user's ARN: that user; a role's ARN: every session of the role (matched by
//!   account and role name, as a session's ARN carries no path); a session's ARN
//!   (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`): that session;
//! - an account (`"123456789012"` or `arn:aws:iam::123456789012:root`): in an `Allow`, the
//!   account itself (its root), because AWS makes an account principal a delegation that
//!   the account's users and roles still need an identity policy for; in a `Deny`, every
//!   principal of the account;
//! - `{"Service": "…"}`: that service acting on its own.
//!
//! `NotPrincipal` applies to everyone it does not name.

use serde_json::Value;

use crate::{Context, Decision, Policy, PolicyError, malformed};

/// Who made a request, as a resource policy's principal element sees it.
#[derive(Debug, Clone, Default)]
pub struct Requester {
    /// The principal's ARN (a user's, a role session's, or the account root's); `None`:
    /// an anonymous request.
    pub arn: Option<String>,
    /// The principal's account; `None`: anonymous.
    pub account: Option<String>,
    /// For a role session: the role's name.
    pub role: Option<String>,
    /// A service acting on its own (`lambda.amazonaws.com`).
    pub service: Option<String>,
}

impl Requester {
    /// An unsigned request.
    pub fn anonymous() -> Requester {
        Requester::default()
    }

    fn is_root(&self) -> bool {
        match (&self.arn, &self.account) {
            (Some(arn), Some(account)) => *arn == format!("arn:aws:iam::{account}:root"),
            _ => false,
        }
    }
}

/// One name in a principal element.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    Everyone,
    Account(String),
    Arn(String),
    Service(String),
    /// A kind sluice has no principals of (`Federated`, `CanonicalUser`): it names no one.
    Nobody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Principals {
    Named(Vec<Name>),
    AllBut(Vec<Name>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    principals: Principals,
    deny: bool,
    /// The statement without its principal element, as an identity policy.
    body: Policy,
}

/// A parsed resource policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePolicy {
    statements: Vec<Statement>,
}

impl ResourcePolicy {
    /// Parses a resource policy document: every statement needs `Principal` or
    /// `NotPrincipal`; the rest is checked as in an identity policy.
    pub fn parse(document: &str) -> Result<ResourcePolicy, PolicyError> {
        let v: Value = serde_json::from_str(document)
            .map_err(|e| malformed(format!("the policy document is not valid JSON: {e}")))?;
        let Value::Object(doc) = v else {
            return Err(malformed("the policy document must be a JSON object"));
        };
        for key in doc.keys() {
            if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
                return Err(malformed(format!("unknown policy element {key:?}")));
            }
        }
        let items: Vec<&Value> = match doc.get("Statement") {
            Some(Value::Array(a)) if !a.is_empty() => a.iter().collect(),
            Some(one @ Value::Object(_)) => vec![one],
            Some(_) => return Err(malformed("Statement must be an object or an array")),
            None => return Err(malformed("the policy document has no Statement")),
        };
        let mut statements = Vec::with_capacity(items.len());
        for item in items {
            let Value::Object(s) = item else {
                return Err(malformed("each Statement must be an object"));
            };
            let principals = match (s.get("Principal"), s.get("NotPrincipal")) {
                (Some(p), None) => Principals::Named(names(p)?),
                (None, Some(p)) => Principals::AllBut(names(p)?),
                (Some(_), Some(_)) => {
                    return Err(malformed("a statement has both Principal and NotPrincipal"));
                }
                (None, None) => return Err(malformed("Missing required field Principal")),
            };
            let mut body = s.clone();
            body.remove("Principal");
            body.remove("NotPrincipal");
            let mut identity = serde_json::Map::new();
            if let Some(v) = doc.get("Version") {
                identity.insert("Version".into(), v.clone());
            }
            identity.insert("Statement".into(), Value::Object(body));
            let body = Policy::parse(&Value::Object(identity).to_string())?;
            let deny = s.get("Effect").and_then(Value::as_str) == Some("Deny");
            statements.push(Statement {
                principals,
                deny,
                body,
            });
        }
        Ok(ResourcePolicy { statements })
    }

    /// A policy that denies everything to everyone (what a stored policy that can no
    /// longer be read stands for).
    pub fn deny_everyone() -> ResourcePolicy {
        ResourcePolicy {
            statements: vec![Statement {
                principals: Principals::Named(vec![Name::Everyone]),
                deny: true,
                body: Policy {
                    statements: vec![crate::Statement {
                        effect: crate::Effect::Deny,
                        actions: crate::Patterns::Any(vec!["*".into()]),
                        resources: crate::Patterns::Any(vec!["*".into()]),
                        conditions: Vec::new(),
                        variables: false,
                    }],
                },
            }],
        }
    }

    /// The policy's decision on `action` on `resource` for `who`, with the request's
    /// condition keys `ctx`: a `Deny` that applies wins; otherwise an `Allow` that applies
    /// allows; otherwise [`Decision::ImplicitDeny`] (the identity policies decide).
    pub fn decide_in(
        &self,
        who: &Requester,
        action: &str,
        resource: &str,
        ctx: &Context,
    ) -> Decision {
        let mut allowed = false;
        for s in &self.statements {
            let named = match &s.principals {
                Principals::Named(list) => list.iter().any(|n| names_requester(n, who, s.deny)),
                Principals::AllBut(list) => !list.iter().any(|n| names_requester(n, who, s.deny)),
            };
            if !named {
                continue;
            }
            match s.body.decide_in(action, resource, ctx) {
                Decision::ExplicitDeny => return Decision::ExplicitDeny,
                Decision::Allow => allowed = true,
                Decision::ImplicitDeny => {}
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        }
    }

    /// Whether some `Allow` statement names everyone (`"*"`) without a condition: what S3
    /// calls a public policy (a condition may narrow it; sluice does not judge which do).
    pub fn is_public(&self) -> bool {
        self.statements.iter().any(|s| {
            !s.deny
                && matches!(&s.principals, Principals::Named(l) if l.contains(&Name::Everyone))
                && s.body.statements.iter().all(|st| st.conditions.is_empty())
        })
    }
}

/// A policy element that is a string or a list of strings (`Action`, `Resource`, …), as
/// its strings (other values are left out): for a service's own checks of a resource
/// policy before it is parsed (which actions, which resources).
pub fn string_or_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The names of a `Principal` / `NotPrincipal` element.
fn names(v: &Value) -> Result<Vec<Name>, PolicyError> {
    let invalid = || malformed("Invalid principal in policy");
    match v {
        Value::String(s) if s == "*" => Ok(vec![Name::Everyone]),
        Value::Object(m) if !m.is_empty() => {
            let mut out = Vec::new();
            for (kind, ids) in m {
                let ids: Vec<&str> = match ids {
                    Value::String(s) => vec![s.as_str()],
                    Value::Array(a) if !a.is_empty() => a
                        .iter()
                        .map(|x| x.as_str().ok_or_else(invalid))
                        .collect::<Result<_, _>>()?,
                    _ => return Err(invalid()),
                };
                for id in ids {
                    out.push(match kind.as_str() {
                        "AWS" => aws_name(id).ok_or_else(invalid)?,
                        "Service" if !id.is_empty() => Name::Service(id.to_owned()),
                        "Federated" | "CanonicalUser" if !id.is_empty() => Name::Nobody,
                        _ => return Err(invalid()),
                    });
                }
            }
            Ok(out)
        }
        _ => Err(invalid()),
    }
}

/// An `AWS` principal: `*`, a 12-digit account, or an IAM user, role, root or STS session
/// ARN.
fn aws_name(id: &str) -> Option<Name> {
    if id == "*" {
        return Some(Name::Everyone);
    }
    let account_ok = |a: &str| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit());
    if account_ok(id) {
        return Some(Name::Account(id.to_owned()));
    }
    let parts: Vec<&str> = id.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts[..] else {
        return None;
    };
    if arn != "arn" || !partition.starts_with("aws") || !region.is_empty() || !account_ok(account) {
        return None;
    }
    let named = |prefix: &str| resource.strip_prefix(prefix).is_some_and(|r| !r.is_empty());
    match service {
        "iam" if resource == "root" => Some(Name::Account(account.to_owned())),
        "iam" if named("user/") || named("role/") => Some(Name::Arn(id.to_owned())),
        "sts" if named("assumed-role/") => Some(Name::Arn(id.to_owned())),
        _ => None,
    }
}

fn names_requester(name: &Name, who: &Requester, deny: bool) -> bool {
    match name {
        Name::Everyone => true,
        Name::Nobody => false,
        Name::Service(s) => who.service.as_deref() == Some(s.as_str()),
        // An account in an Allow is the account's root (a delegation to its identity
        // policies); in a Deny, everyone in it.
        Name::Account(a) => who.account.as_deref() == Some(a.as_str()) && (deny || who.is_root()),
        Name::Arn(arn) => {
            if who.arn.as_deref() == Some(arn.as_str()) {
                return true;
            }
            // A role's ARN names its sessions: the same account and role name (a
            // session's ARN has no path, so only the last segment is compared).
            let parts: Vec<&str> = arn.splitn(6, ':').collect();
            match (&who.role, &who.account, &parts[..]) {
                (Some(role), Some(account), [_, _, "iam", _, arn_account, resource]) => {
                    *arn_account == account.as_str()
                        && resource
                            .strip_prefix("role/")
                            .and_then(|r| r.rsplit('/').next())
                            == Some(role.as_str())
                }
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "000000000000";

    fn user(name: &str) -> Requester {
        Requester {
            arn: Some(format!("arn:aws:iam::{ACCOUNT}:user/{name}")),
            account: Some(ACCOUNT.into()),
            ..Requester::default()
        }
    }

    fn root() -> Requester {
        Requester {
            arn: Some(format!("arn:aws:iam::{ACCOUNT}:root")),
            account: Some(ACCOUNT.into()),
            ..Requester::default()
        }
    }

    fn session(role: &str) -> Requester {
        Requester {
            arn: Some(format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/s1")),
            account: Some(ACCOUNT.into()),
            role: Some(role.into()),
            ..Requester::default()
        }
    }

    fn decide(doc: &str, who: &Requester, action: &str, resource: &str) -> Decision {
        ResourcePolicy::parse(doc)
            .expect("valid")
            .decide_in(who, action, resource, &Context::new())
    }

    const OBJ: &str = "arn:aws:s3:::b/k";

    #[test]
    fn principals_name_users_roles_sessions_and_everyone() {
        let doc = |p: &str| {
            format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{p},"Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"}}]}}"#
            )
        };
        let bob = doc(r#"{"AWS":"arn:aws:iam::000000000000:user/bob"}"#);
        assert_eq!(
            decide(&bob, &user("bob"), "s3:GetObject", OBJ),
            Decision::Allow
        );
        assert_eq!(
            decide(&bob, &user("alice"), "s3:GetObject", OBJ),
            Decision::ImplicitDeny
        );
        assert_eq!(
            decide(&bob, &user("bob"), "s3:PutObject", OBJ),
            Decision::ImplicitDeny
        );
        let role = doc(r#"{"AWS":["arn:aws:iam::000000000000:role/app/reader"]}"#);
        assert_eq!(
            decide(&role, &session("reader"), "s3:GetObject", OBJ),
            Decision::Allow
        );
        assert_eq!(
            decide(&role, &session("writer"), "s3:GetObject", OBJ),
            Decision::ImplicitDeny
        );
        let one_session = doc(r#"{"AWS":"arn:aws:sts::000000000000:assumed-role/reader/s1"}"#);
        assert_eq!(
            decide(&one_session, &session("reader"), "s3:GetObject", OBJ),
            Decision::Allow
        );
        let everyone = doc(r#""*""#);
        assert_eq!(
            decide(&everyone, &Requester::anonymous(), "s3:GetObject", OBJ),
            Decision::Allow
        );
        assert!(ResourcePolicy::parse(&everyone).expect("valid").is_public());
        assert!(!ResourcePolicy::parse(&bob).expect("valid").is_public());
        assert_eq!(
            ResourcePolicy::deny_everyone().decide_in(
                &root(),
                "s3:GetObject",
                OBJ,
                &Context::new()
            ),
            Decision::ExplicitDeny
        );
        // An account in an Allow is its root only; users need their own policies.
        let account = doc(r#"{"AWS":"000000000000"}"#);
        assert_eq!(
            decide(&account, &root(), "s3:GetObject", OBJ),
            Decision::Allow
        );
        assert_eq!(
            decide(&account, &user("bob"), "s3:GetObject", OBJ),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn a_deny_wins_and_an_account_in_a_deny_is_everyone_in_it() {
        let doc = r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"arn:aws:s3:::b/*"},
            {"Effect":"Deny","Principal":{"AWS":"arn:aws:iam::000000000000:root"},"Action":"s3:DeleteObject","Resource":"arn:aws:s3:::b/*"}]}"#;
        assert_eq!(
            decide(doc, &user("bob"), "s3:GetObject", OBJ),
            Decision::Allow
        );
        assert_eq!(
            decide(doc, &user("bob"), "s3:DeleteObject", OBJ),
            Decision::ExplicitDeny
        );
        assert_eq!(
            decide(doc, &root(), "s3:DeleteObject", OBJ),
            Decision::ExplicitDeny
        );
        // Anonymous requests belong to no account.
        assert_eq!(
            decide(doc, &Requester::anonymous(), "s3:DeleteObject", OBJ),
            Decision::Allow
        );
        let not = r#"{"Statement":[{"Effect":"Deny","NotPrincipal":{"AWS":"arn:aws:iam::000000000000:user/admin"},"Action":"s3:*","Resource":"arn:aws:s3:::b/*"}]}"#;
        assert_eq!(
            decide(not, &user("bob"), "s3:GetObject", OBJ),
            Decision::ExplicitDeny
        );
        assert_eq!(
            decide(not, &user("admin"), "s3:GetObject", OBJ),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn conditions_decide_as_in_identity_policies() {
        let doc = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"s3:*","Resource":"arn:aws:s3:::b/*","Condition":{"NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}}}]}"#;
        let p = ResourcePolicy::parse(doc).expect("valid");
        let mut inside = Context::new();
        inside.set("aws:SourceIp", "10.1.2.3");
        let mut outside = Context::new();
        outside.set("aws:SourceIp", "192.168.1.1");
        assert_eq!(
            p.decide_in(&user("bob"), "s3:GetObject", OBJ, &inside),
            Decision::ImplicitDeny
        );
        assert_eq!(
            p.decide_in(&user("bob"), "s3:GetObject", OBJ, &outside),
            Decision::ExplicitDeny
        );
    }

    #[test]
    fn malformed_principals_are_refused() {
        for p in [
            r#""bob""#,
            r#"{}"#,
            r#"{"AWS":"bob"}"#,
            r#"{"AWS":"arn:aws:iam::12:user/bob"}"#,
            r#"{"AWS":"arn:aws:s3:::b"}"#,
            r#"{"AWS":[]}"#,
            r#"{"Martian":"x"}"#,
        ] {
            let doc = format!(
                r#"{{"Statement":[{{"Effect":"Allow","Principal":{p},"Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"}}]}}"#
            );
            assert_eq!(
                ResourcePolicy::parse(&doc),
                Err(PolicyError::Malformed("Invalid principal in policy".into())),
                "{p}"
            );
        }
        let none = r#"{"Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"}]}"#;
        assert_eq!(
            ResourcePolicy::parse(none),
            Err(PolicyError::Malformed(
                "Missing required field Principal".into()
            ))
        );
    }
}
