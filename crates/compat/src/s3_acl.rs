//! S3 access control lists as sluice keeps them: canned ACLs only, stored and answered.
//!
//! A bucket's object ownership decides (PutBucketOwnershipControls; `BucketOwnerEnforced`,
//! S3's default, when none is set): with `BucketOwnerEnforced` ACLs are disabled — only
//! `private` and `bucket-owner-full-control` are taken (and change nothing), anything else
//! is `AccessControlListNotSupported`, and every ACL reads as the owner's full control.
//! With `BucketOwnerPreferred` or `ObjectWriter`, a canned ACL (`x-amz-acl` on a write,
//! PutBucketAcl, PutObjectAcl) is kept — the bucket's as its configuration [`ACL`], an
//! object version's in its headers — and GetBucketAcl / GetObjectAcl answer its grants.
//! A public ACL is refused while the bucket's public access block has `BlockPublicAcls`.
//! Explicit grants (`x-amz-grant-*`, an `AccessControlPolicy` document) are not
//! supported. ACL grants are **not enforced**: who may do what is decided by IAM policies
//! and bucket policies only (docs/COMPATIBILITY.md).

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Result};

/// The bucket configuration kind a bucket's canned ACL is kept under.
pub(crate) const ACL: &str = "acl";

const BUCKET_ACLS: [&str; 6] = [
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "log-delivery-write",
];
const OBJECT_ACLS: [&str; 7] = [
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];

/// Whether ACLs are disabled by the bucket's object ownership.
pub(crate) fn disabled(ownership: &str) -> bool {
    ownership == ObjectOwnership::BUCKET_OWNER_ENFORCED
}

/// What a request's ACL makes of the ACL kept: `Ok(None)` keeps none (private, or ACLs
/// disabled), `Ok(Some(acl))` keeps `acl`.
pub(crate) fn decide(
    ownership: &str,
    acl: Option<&str>,
    grants: bool,
    block_public_acls: bool,
    for_bucket: bool,
) -> S3Result<Option<String>> {
    if disabled(ownership) {
        return match acl {
            _ if grants => Err(not_supported()),
            None | Some("private") => Ok(None),
            Some("bucket-owner-full-control") if !for_bucket => Ok(None),
            Some(_) => Err(not_supported()),
        };
    }
    if grants {
        return Err(S3Error::with_message(
            S3ErrorCode::NotImplemented,
            "Explicit grants are not supported: use a canned ACL (x-amz-acl)",
        ));
    }
    let Some(acl) = acl else {
        return Ok(None);
    };
    let known: &[&str] = if for_bucket {
        &BUCKET_ACLS
    } else {
        &OBJECT_ACLS
    };
    if !known.contains(&acl) {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("{acl} is not a canned ACL S3 takes here"),
        ));
    }
    if block_public_acls && is_public(acl) {
        return Err(S3Error::with_message(
            S3ErrorCode::AccessDenied,
            "Access Denied: the bucket's public access block (BlockPublicAcls) refuses public ACLs",
        ));
    }
    Ok((acl != "private").then(|| acl.to_owned()))
}

fn is_public(acl: &str) -> bool {
    matches!(
        acl,
        "public-read" | "public-read-write" | "authenticated-read"
    )
}

pub(crate) fn not_supported() -> S3Error {
    S3Error::with_message(
        S3ErrorCode::AccessControlListNotSupported,
        "The bucket does not allow ACLs",
    )
}

fn grant(grantee: Grantee, permission: &'static str) -> Grant {
    Grant {
        grantee: Some(grantee),
        permission: Some(Permission::from_static(permission)),
    }
}

fn owner_grantee() -> Grantee {
    Grantee {
        display_name: Some("sluice".into()),
        email_address: None,
        id: Some("sluice".into()),
        type_: Type::from_static(Type::CANONICAL_USER),
        uri: None,
    }
}

fn group(uri: &str) -> Grantee {
    Grantee {
        display_name: None,
        email_address: None,
        id: None,
        type_: Type::from_static(Type::GROUP),
        uri: Some(uri.to_owned()),
    }
}

/// The grants of a canned ACL (`None`: private), as S3 expands them.
pub(crate) fn grants(acl: Option<&str>) -> Grants {
    const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
    const AUTHENTICATED: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";
    const LOG_DELIVERY: &str = "http://acs.amazonaws.com/groups/s3/LogDelivery";
    let mut out = vec![grant(owner_grantee(), Permission::FULL_CONTROL)];
    match acl {
        Some("public-read") => out.push(grant(group(ALL_USERS), Permission::READ)),
        Some("public-read-write") => {
            out.push(grant(group(ALL_USERS), Permission::READ));
            out.push(grant(group(ALL_USERS), Permission::WRITE));
        }
        Some("authenticated-read") => out.push(grant(group(AUTHENTICATED), Permission::READ)),
        Some("log-delivery-write") => {
            out.push(grant(group(LOG_DELIVERY), Permission::WRITE));
            out.push(grant(group(LOG_DELIVERY), Permission::READ_ACP));
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_decides_what_is_kept() {
        let enforced = ObjectOwnership::BUCKET_OWNER_ENFORCED;
        assert_eq!(
            decide(enforced, Some("private"), false, false, true).expect("ok"),
            None
        );
        assert!(decide(enforced, Some("public-read"), false, false, false).is_err());
        let writer = ObjectOwnership::OBJECT_WRITER;
        assert_eq!(
            decide(writer, Some("public-read"), false, false, false).expect("kept"),
            Some("public-read".to_owned())
        );
        assert!(
            decide(writer, Some("public-read"), false, true, false).is_err(),
            "blocked"
        );
        assert!(decide(writer, Some("bucket-owner-read"), false, false, true).is_err());
        assert!(
            decide(writer, None, true, false, false).is_err(),
            "explicit grants"
        );
        assert_eq!(grants(Some("public-read-write")).len(), 3);
    }
}
