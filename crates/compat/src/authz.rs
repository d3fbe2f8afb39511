//! Authorization of signed requests: every edge operation is an IAM action on a resource
//! ARN, decided by the signing key's policy with the one evaluator sluice has
//! (`sluice-policy`). A key without a policy has full access.
//!
//! Actions and resources are the ones AWS's service authorization reference names, so a
//! policy written for AWS means the same here:
//!
//! - S3: `s3:GetObject` (GetObject, HeadObject), `s3:PutObject` (PutObject, CopyObject's
//!   destination, the multipart operations), `s3:DeleteObject` (DeleteObject, each key of a
//!   DeleteObjects), `s3:ListBucket` (ListObjects(V2), HeadBucket), … on
//!   `arn:aws:s3:::BUCKET/KEY` or `arn:aws:s3:::BUCKET`; ListBuckets is
//!   `s3:ListAllMyBuckets` on `*`. CopyObject and UploadPartCopy also need `s3:GetObject` on
//!   the source.
//! - Kinesis: `kinesis:<Operation>` on `arn:aws:kinesis:REGION:ACCOUNT:stream/NAME` (or the
//!   consumer's ARN for the consumer operations and SubscribeToShard); GetRecords is
//!   authorized on the stream its shard iterator reads; ListStreams and DescribeLimits on `*`.
//! - Cognito: `cognito-idp:<Operation>` on `arn:aws:cognito-idp:REGION:ACCOUNT:userpool/ID`
//!   for the operations that need IAM credentials (the public sign-in and sign-up operations
//!   are not IAM-authorized, as on AWS); CreateUserPool and ListUserPools on `*`.
//!
//! A request whose resource cannot be read (a missing or malformed name) is decided against
//! `*`, which only a policy allowing the action on every resource allows: unknown never means
//! allowed.

use std::borrow::Cow;
use std::sync::Arc;

use sluice_policy::resource::{Requester, ResourcePolicy};
use sluice_policy::{Context, Decision, Policy};

/// Who signed a request, and what they may do.
#[derive(Debug, Clone)]
pub struct Principal {
    pub access_key_id: String,
    /// `None`: full access.
    pub policy: Option<Arc<Policy>>,
    pub account_id: String,
    /// The IAM user the key belongs to; `None`: an account key (the root key or a key
    /// `sluice keys` made).
    pub user: Option<sluice_identity::access_keys::GrantUser>,
    /// The request's condition keys (see [`request_context`]); empty for a principal
    /// with full access, which no condition decides.
    pub context: Arc<Context>,
}

/// The condition keys sluice knows of a signed request, for policies' `Condition` blocks
/// and variables: `aws:SourceIp` (the connection's peer: sluice does not read
/// `X-Forwarded-For`, which a client could forge), `aws:CurrentTime`, `aws:EpochTime`,
/// `aws:SecureTransport` (`false`: the edge serves plain HTTP; a TLS proxy in front does
/// not change what sluice can vouch for), `aws:PrincipalAccount`, `aws:PrincipalArn`,
/// `aws:PrincipalType` (`User` or `Account`), and for IAM users `aws:username`,
/// `aws:userid` and `aws:PrincipalTag/<key>`. Keys sluice does not know are absent, which
/// IAM's rules make a test false (a negated one true) unless it is `…IfExists`.
pub fn request_context(
    account_id: &str,
    principal_arn: &str,
    user: Option<&sluice_identity::access_keys::GrantUser>,
    source: Option<std::net::IpAddr>,
) -> Context {
    let mut c = Context::new();
    let now = chrono::Utc::now();
    c.set(
        "aws:CurrentTime",
        now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
    .set("aws:EpochTime", now.timestamp().to_string())
    .set("aws:SecureTransport", "false")
    .set("aws:PrincipalAccount", account_id)
    .set("aws:PrincipalArn", principal_arn);
    if let Some(ip) = source {
        // An IPv4 client seen through an IPv6 socket is its IPv4 address.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        c.set("aws:SourceIp", ip.to_string());
    }
    match user {
        Some(u) if u.session.is_some() => {
            c.set("aws:PrincipalType", "AssumedRole")
                .set("aws:userid", u.user_id.clone());
            for (k, v) in &u.tags {
                c.set(&format!("aws:PrincipalTag/{k}"), v.clone());
            }
        }
        Some(u) => {
            c.set("aws:PrincipalType", "User")
                .set("aws:username", u.name.clone())
                .set("aws:userid", u.user_id.clone());
            for (k, v) in &u.tags {
                c.set(&format!("aws:PrincipalTag/{k}"), v.clone());
            }
        }
        None => {
            c.set("aws:PrincipalType", "Account");
        }
    }
    c
}

/// The condition keys of an unsigned request (a bucket policy open to everyone may
/// allow it): the time, `aws:SecureTransport`, `aws:SourceIp`, and `aws:PrincipalType`
/// `Anonymous`.
pub fn anonymous_context(source: Option<std::net::IpAddr>) -> Context {
    let mut c = request_context("", "", None, source);
    c.remove("aws:PrincipalAccount")
        .remove("aws:PrincipalArn")
        .set("aws:PrincipalType", "Anonymous");
    c
}

/// A request the principal's policy does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub explicit: bool,
    /// The explicit deny is in a resource-based policy (a bucket policy).
    pub in_resource_policy: bool,
}

impl Denied {
    /// IAM's wording, as AWS services put it in `AccessDenied(Exception)` messages.
    pub fn message(&self) -> String {
        let why = if self.explicit && self.in_resource_policy {
            "with an explicit deny in a resource-based policy".to_owned()
        } else if self.explicit {
            "with an explicit deny in an identity-based policy".to_owned()
        } else {
            format!(
                "because no identity-based policy allows the {} action",
                self.action
            )
        };
        format!(
            "User: {} is not authorized to perform: {} on resource: {} {why}",
            self.principal, self.action, self.resource
        )
    }
}

/// S3's own condition keys of a request: `s3:signatureversion` (`AWS4-HMAC-SHA256`),
/// `s3:authType` (`REST-HEADER` or `REST-QUERY-STRING` for a presigned URL), and for the
/// listings `s3:prefix` (empty when the request names none, as S3 sets it), `s3:delimiter`
/// and `s3:max-keys` when given.
pub fn s3_condition_keys(ctx: &mut Context, op: &str, query: Option<&str>, signed_header: bool) {
    ctx.set("s3:signatureversion", "AWS4-HMAC-SHA256").set(
        "s3:authType",
        if signed_header {
            "REST-HEADER"
        } else {
            "REST-QUERY-STRING"
        },
    );
    if !matches!(
        op,
        "ListObjects" | "ListObjectsV2" | "ListObjectVersions" | "ListMultipartUploads"
    ) {
        return;
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    ctx.set("s3:prefix", get("prefix").unwrap_or_default());
    if let Some(d) = get("delimiter") {
        ctx.set("s3:delimiter", d);
    }
    if let Some(m) = get("max-keys").or_else(|| get("max-uploads")) {
        ctx.set("s3:max-keys", m);
    }
}

/// Whether a request carries its key's session token, when the key is a role session's
/// (`X-Amz-Security-Token`, as a header or a presigned URL's query parameter). Other keys
/// need none.
pub fn session_token_ok(
    grant: &sluice_identity::access_keys::KeyGrant,
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
) -> bool {
    let Some(want) = &grant.session_token_hash else {
        return true;
    };
    let sent = headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            query?.split('&').find_map(|pair| {
                pair.strip_prefix("X-Amz-Security-Token=")
                    .map(crate::sigv4::percent_decode)
            })
        });
    sent.is_some_and(|t| sluice_identity::access_keys::token_hash(&t) == *want)
}

impl Principal {
    /// The principal of a verified signature, with its request's condition keys.
    pub fn new(
        access_key_id: String,
        grant: sluice_identity::access_keys::KeyGrant,
        account_id: &str,
        source: Option<std::net::IpAddr>,
    ) -> Principal {
        let mut p = Principal {
            access_key_id,
            policy: grant.policy,
            account_id: account_id.to_owned(),
            user: grant.user,
            context: Arc::default(),
        };
        // Only a principal with a policy is decided by conditions: a key with full access
        // (the common case on the hot path) skips building them.
        if p.policy.is_some() {
            p.context = Arc::new(request_context(
                account_id,
                &p.arn(),
                p.user.as_ref(),
                source,
            ));
        }
        p
    }

    /// The request's condition keys, built now for a principal with full access (whose
    /// `context` is empty), for decisions other than its own permissions (a role's trust
    /// policy).
    pub fn full_context(&self, source: Option<std::net::IpAddr>) -> Context {
        if self.policy.is_some() {
            (*self.context).clone()
        } else {
            request_context(&self.account_id, &self.arn(), self.user.as_ref(), source)
        }
    }

    /// The principal's ARN: its IAM user's, or for an account key with a policy the key as
    /// a user of the account, or for a key with full access the account's root.
    pub fn arn(&self) -> String {
        match (&self.user, &self.policy) {
            (Some(u), _) => u.arn.clone(),
            (None, Some(_)) => format!(
                "arn:aws:iam::{}:user/{}",
                self.account_id, self.access_key_id
            ),
            (None, None) => format!("arn:aws:iam::{}:root", self.account_id),
        }
    }

    /// Whether the principal may perform `action` on `resource`.
    pub fn check(&self, action: &str, resource: &str) -> Result<(), Denied> {
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        match policy.decide_in(action, resource, &self.context) {
            Decision::Allow => Ok(()),
            d => Err(Denied {
                principal: self.arn(),
                action: action.to_owned(),
                resource: resource.to_owned(),
                explicit: d == Decision::ExplicitDeny,
                in_resource_policy: false,
            }),
        }
    }

    /// Whether the key has full access (no policy to evaluate).
    pub fn unrestricted(&self) -> bool {
        self.policy.is_none()
    }

    /// Who the principal is, as a resource policy's principal element sees it.
    pub fn requester(&self) -> Requester {
        Requester {
            arn: Some(self.arn()),
            account: Some(self.account_id.clone()),
            role: self
                .user
                .as_ref()
                .filter(|u| u.session.is_some())
                .map(|u| u.name.clone()),
            service: None,
        }
    }
}

/// A request's decision by the caller's identity policies together with the resource's
/// policy (a bucket's, a stream's), on the one evaluator. sluice is one account, so every
/// signed caller is in the resource's account:
///
/// - an explicit `Deny` in either policy wins, also against keys with full access, except
///   on the operations that read or change the resource policy itself (`policy_op`), which
///   full-access keys may always perform — AWS's way back for an account that locked
///   itself out;
/// - otherwise the request is allowed when the identity policies or the resource policy
///   allow it (an `Allow` naming an IAM user or role grants them access on its own, as
///   within one AWS account);
/// - an unsigned request (`principal` `None`) is allowed only by a resource policy
///   statement that names everyone.
///
/// `Err(None)`: an unsigned request refused; `Err(Some(denied))`: a signed one.
pub fn decide_with_resource_policy(
    principal: Option<&Principal>,
    policy: Option<&ResourcePolicy>,
    context: impl FnOnce() -> Context,
    action: &str,
    resource: &str,
    policy_op: bool,
) -> Result<(), Option<Denied>> {
    let identity = match principal {
        None => Decision::ImplicitDeny,
        Some(p) => match p.check(action, resource) {
            Ok(()) => Decision::Allow,
            Err(d) if d.explicit => Decision::ExplicitDeny,
            Err(_) => Decision::ImplicitDeny,
        },
    };
    let in_resource = match policy {
        Some(rp) => {
            let who = principal.map_or_else(Requester::anonymous, Principal::requester);
            rp.decide_in(&who, action, resource, &context())
        }
        None => Decision::ImplicitDeny,
    };
    let account_key = principal.is_some_and(Principal::unrestricted);
    let denied = |explicit: bool, in_resource_policy: bool| {
        principal.map(|p| Denied {
            principal: p.arn(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            explicit,
            in_resource_policy,
        })
    };
    if in_resource == Decision::ExplicitDeny && !(account_key && policy_op) {
        return Err(denied(true, true));
    }
    match (identity, in_resource) {
        (Decision::ExplicitDeny, _) => Err(denied(true, false)),
        (Decision::Allow, _) | (_, Decision::Allow) => Ok(()),
        _ => Err(denied(false, false)),
    }
}

/// The IAM action of an S3 operation on one version of an object (a `versionId` in the
/// query), where S3 names it apart from the operation on the current version.
pub fn s3_version_action(op: &str, query: Option<&str>) -> Option<&'static str> {
    let versioned = query.is_some_and(|q| {
        q.split('&')
            .any(|p| p == "versionId" || p.starts_with("versionId="))
    });
    if !versioned {
        return None;
    }
    Some(match op {
        "GetObject" | "HeadObject" => "s3:GetObjectVersion",
        "GetObjectAttributes" => "s3:GetObjectVersionAttributes",
        "DeleteObject" => "s3:DeleteObjectVersion",
        "GetObjectTagging" => "s3:GetObjectVersionTagging",
        "PutObjectTagging" => "s3:PutObjectVersionTagging",
        "DeleteObjectTagging" => "s3:DeleteObjectVersionTagging",
        _ => return None,
    })
}

/// The IAM action of an S3 operation (as s3s names operations).
pub fn s3_action(op: &str) -> Cow<'static, str> {
    let action = match op {
        "GetObject" | "HeadObject" | "GetObjectAttributes" | "SelectObjectContent" => {
            "s3:GetObject"
        }
        "PutObject"
        | "PostObject"
        | "CopyObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload" => "s3:PutObject",
        "DeleteObject" | "DeleteObjects" => "s3:DeleteObject",
        "AbortMultipartUpload" => "s3:AbortMultipartUpload",
        "ListParts" => "s3:ListMultipartUploadParts",
        "ListObjects" | "ListObjectsV2" | "HeadBucket" => "s3:ListBucket",
        "ListObjectVersions" => "s3:ListBucketVersions",
        "ListMultipartUploads" => "s3:ListBucketMultipartUploads",
        "ListBuckets" => "s3:ListAllMyBuckets",
        "DeleteBucketTagging" => "s3:PutBucketTagging",
        "DeleteObjectTagging" => "s3:DeleteObjectTagging",
        "GetBucketLocation" => "s3:GetBucketLocation",
        "PutBucketNotificationConfiguration" => "s3:PutBucketNotification",
        "GetBucketNotificationConfiguration" => "s3:GetBucketNotification",
        // The configuration operations whose IAM actions are not named after them.
        "GetBucketEncryption" => "s3:GetEncryptionConfiguration",
        "PutBucketEncryption" | "DeleteBucketEncryption" => "s3:PutEncryptionConfiguration",
        "GetBucketLifecycleConfiguration" => "s3:GetLifecycleConfiguration",
        "PutBucketLifecycleConfiguration" | "DeleteBucketLifecycle" => {
            "s3:PutLifecycleConfiguration"
        }
        "GetPublicAccessBlock" => "s3:GetBucketPublicAccessBlock",
        "PutPublicAccessBlock" | "DeletePublicAccessBlock" => "s3:PutBucketPublicAccessBlock",
        "GetBucketCors" => "s3:GetBucketCORS",
        "PutBucketCors" | "DeleteBucketCors" => "s3:PutBucketCORS",
        "DeleteBucketOwnershipControls" => "s3:PutBucketOwnershipControls",
        "GetBucketAccelerateConfiguration" => "s3:GetAccelerateConfiguration",
        "PutBucketAccelerateConfiguration" => "s3:PutAccelerateConfiguration",
        "GetObjectLockConfiguration" => "s3:GetBucketObjectLockConfiguration",
        "PutObjectLockConfiguration" => "s3:PutBucketObjectLockConfiguration",
        "GetBucketReplication" => "s3:GetReplicationConfiguration",
        other => return Cow::Owned(format!("s3:{other}")),
    };
    Cow::Borrowed(action)
}

/// `arn:aws:s3:::BUCKET/KEY`, `arn:aws:s3:::BUCKET`, or `*` for requests on no bucket.
pub fn s3_resource(bucket: Option<&str>, key: Option<&str>) -> String {
    match (bucket, key) {
        (Some(b), Some(k)) => format!("arn:aws:s3:::{b}/{k}"),
        (Some(b), None) => format!("arn:aws:s3:::{b}"),
        _ => "*".to_owned(),
    }
}

/// The resource of a signed Cognito operation: the pool its `UserPoolId` names, or `*`.
pub fn cognito_resource(region: &str, account_id: &str, body: &[u8]) -> String {
    let pool = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("UserPoolId")
                .and_then(|p| p.as_str())
                .map(str::to_owned)
        });
    match pool {
        Some(id) if !id.is_empty() => {
            format!("arn:aws:cognito-idp:{region}:{account_id}:userpool/{id}")
        }
        _ => "*".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_listing_condition_keys() {
        let mut ctx = Context::new();
        s3_condition_keys(
            &mut ctx,
            "ListObjectsV2",
            Some("list-type=2&prefix=home%2Falice%2F&max-keys=10"),
            true,
        );
        assert_eq!(ctx.get("s3:prefix"), Some(&["home/alice/".to_owned()][..]));
        assert_eq!(ctx.get("s3:max-keys"), Some(&["10".to_owned()][..]));
        assert_eq!(
            ctx.get("s3:authType"),
            Some(&["REST-HEADER".to_owned()][..])
        );
        let mut none = Context::new();
        s3_condition_keys(&mut none, "ListObjects", None, false);
        assert_eq!(
            none.get("s3:prefix"),
            Some(&[String::new()][..]),
            "no prefix: empty"
        );
        assert!(none.get("s3:delimiter").is_none());
        let mut get = Context::new();
        s3_condition_keys(&mut get, "GetObject", Some("prefix=x"), true);
        assert!(
            get.get("s3:prefix").is_none(),
            "only listings have s3:prefix"
        );
    }

    fn principal(doc: Option<&str>) -> Principal {
        Principal {
            access_key_id: "AKIATEST".into(),
            policy: doc.map(|d| Arc::new(Policy::parse(d).expect("policy"))),
            account_id: "000000000000".into(),
            user: None,
            context: Arc::default(),
        }
    }

    #[test]
    fn a_key_without_policy_may_do_anything() {
        assert!(principal(None).check("s3:DeleteObject", "*").is_ok());
    }

    #[test]
    fn denials_say_who_what_where_and_why() {
        let p = principal(Some(
            r#"{"Version":"2012-10-17","Statement":[
                {"Effect":"Allow","Action":"s3:*","Resource":"arn:aws:s3:::b/uploads/*"},
                {"Effect":"Deny","Action":"s3:DeleteObject","Resource":"*"}]}"#,
        ));
        assert!(p.check("s3:GetObject", "arn:aws:s3:::b/uploads/x").is_ok());
        let d = p
            .check("s3:GetObject", "arn:aws:s3:::b/processed/x")
            .expect_err("other prefix");
        assert_eq!(
            d.message(),
            "User: arn:aws:iam::000000000000:user/AKIATEST is not authorized to perform: \
             s3:GetObject on resource: arn:aws:s3:::b/processed/x because no identity-based \
             policy allows the s3:GetObject action"
        );
        let d = p
            .check("s3:DeleteObject", "arn:aws:s3:::b/uploads/x")
            .expect_err("denied");
        assert!(
            d.explicit
                && d.message()
                    .ends_with("with an explicit deny in an identity-based policy")
        );
    }

    #[test]
    fn s3_operations_are_iam_actions() {
        assert_eq!(s3_action("HeadObject"), "s3:GetObject");
        assert_eq!(
            s3_version_action("GetObject", Some("versionId=abc&partNumber=1")),
            Some("s3:GetObjectVersion")
        );
        assert_eq!(
            s3_version_action("DeleteObject", Some("versionId=null")),
            Some("s3:DeleteObjectVersion")
        );
        assert_eq!(s3_version_action("GetObject", Some("partNumber=1")), None);
        assert_eq!(s3_version_action("PutObject", Some("versionId=x")), None);
        assert_eq!(s3_action("UploadPart"), "s3:PutObject");
        assert_eq!(s3_action("ListObjectsV2"), "s3:ListBucket");
        assert_eq!(s3_action("ListBuckets"), "s3:ListAllMyBuckets");
        assert_eq!(s3_action("PutBucketTagging"), "s3:PutBucketTagging");
        assert_eq!(s3_resource(Some("b"), Some("k/x")), "arn:aws:s3:::b/k/x");
        assert_eq!(s3_resource(Some("b"), None), "arn:aws:s3:::b");
        assert_eq!(s3_resource(None, None), "*");
    }

    #[test]
    fn cognito_resources_are_pools() {
        assert_eq!(
            cognito_resource("us-east-2", "1", br#"{"UserPoolId":"us-east-2_X"}"#),
            "arn:aws:cognito-idp:us-east-2:1:userpool/us-east-2_X"
        );
        assert_eq!(cognito_resource("r", "1", b"{}"), "*");
        assert_eq!(cognito_resource("r", "1", b"not json"), "*");
    }
}
