//! A stream's configuration beyond its shards: capacity mode (UpdateStreamMode), server-side
//! encryption (Start/StopStreamEncryption), enhanced monitoring (Enable/Disable), and
//! resource policies on streams and consumers (Put/Get/DeleteResourcePolicy), which every
//! request is then decided with (see [`authorize`]).
//!
//! Settings live with the stream (`Stream::stream_setting`, deleted with it):
//!
//! - `encryption`: the KMS key id of an encrypted stream. sluice has no KMS: the key id is
//!   checked for form, kept and reported (DescribeStream, PutRecord's `EncryptionType`),
//!   and the records are stored as every record is (the data directory's own protection);
//!   docs/COMPATIBILITY.md says so.
//! - `monitoring`: the enabled shard-level metrics, comma-separated. sluice's per-shard
//!   metrics are always on at `/metrics`; this is the setting's record.
//! - `policy` (the stream's) and `policy:consumer/NAME:SECS` (a consumer's, removed when the
//!   consumer is deregistered).
//!
//! Depends on `efo` (consumer ARNs) and `common`.

use std::sync::Arc;

use serde_json::{Value, json};
use sluice_policy::resource::ResourcePolicy;
use sluice_stream::{StreamError, StreamMode};

use super::common::{
    KinesisContext, KinesisError, OpResult, err, str_field, stream_name, stream_of_arn, validation,
};
use super::efo;
use crate::authz::Principal;

/// The shard-level metrics of enhanced monitoring, in Kinesis' order; `ALL` names them all.
const METRICS: [&str; 7] = [
    "IncomingBytes",
    "IncomingRecords",
    "OutgoingBytes",
    "OutgoingRecords",
    "WriteProvisionedThroughputExceeded",
    "ReadProvisionedThroughputExceeded",
    "IteratorAgeMilliseconds",
];
const ENCRYPTION: &str = "encryption";
const MONITORING: &str = "monitoring";
/// The largest resource policy document taken (AWS's limit for Kinesis is not documented;
/// this is IAM's and S3's).
const MAX_POLICY_BYTES: usize = 20 * 1024;

// --- capacity mode -----------------------------------------------------------------------

/// UpdateStreamMode: by `StreamARN` only (the operation has no `StreamName`). Switching to
/// the mode the stream already has changes nothing and succeeds (so a script that "ensures"
/// a mode can call it again); a switch keeps the shards, as on AWS.
pub(super) async fn update_stream_mode(ctx: &KinesisContext, req: &Value) -> OpResult {
    let arn = str_field(req, "StreamARN").ok_or_else(|| validation("streamARN"))?;
    let name = stream_of_arn(ctx, arn)?;
    let mode = match req
        .pointer("/StreamModeDetails/StreamMode")
        .and_then(Value::as_str)
    {
        Some("PROVISIONED") => StreamMode::Provisioned,
        Some("ON_DEMAND") => StreamMode::OnDemand,
        Some(other) => {
            return Err(enum_error(
                other,
                "streamModeDetails.streamMode",
                &["PROVISIONED", "ON_DEMAND"],
            ));
        }
        None => return Err(validation("streamModeDetails.streamMode")),
    };
    if ctx.stream.describe_stream_summary(&name).await?.mode == mode {
        return Ok(json!({}));
    }
    if mode == StreamMode::OnDemand {
        super::common::check_account_limits(ctx, 0, true).await?;
    }
    ctx.stream.update_stream_mode(&name, mode).await?;
    Ok(json!({}))
}

/// The ValidationException of a value outside an enumeration.
fn enum_error(value: &str, member: &str, allowed: &[&str]) -> KinesisError {
    err(
        "ValidationException",
        format!(
            "1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
            allowed.join(", ")
        ),
    )
}

// --- encryption --------------------------------------------------------------------------

/// Whether `key` has one of the forms KMS takes: a key id (a UUID), a key or alias ARN, or
/// an alias name (`alias/…`, including Kinesis' own `alias/aws/kinesis`).
fn kms_key_id_ok(key: &str) -> bool {
    let uuid = |s: &str| {
        s.len() == 36
            && s.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            })
    };
    let alias = |s: &str| {
        s.strip_prefix("alias/").is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
        })
    };
    if let Some(rest) = key.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        return match parts.as_slice() {
            [partition, "kms", region, account, resource] => {
                !partition.is_empty()
                    && !region.is_empty()
                    && account.len() == 12
                    && account.bytes().all(|b| b.is_ascii_digit())
                    && (resource.strip_prefix("key/").is_some_and(uuid) || alias(resource))
            }
            _ => false,
        };
    }
    uuid(key) || alias(key)
}

/// The `EncryptionType` and `KeyId` of a Start/StopStreamEncryption request, checked.
fn encryption_fields(req: &Value) -> Result<String, KinesisError> {
    match str_field(req, "EncryptionType") {
        Some("KMS") => {}
        Some("NONE") => {
            return Err(err(
                "InvalidArgumentException",
                "KMS is the only valid EncryptionType for this request",
            ));
        }
        Some(other) => return Err(enum_error(other, "encryptionType", &["NONE", "KMS"])),
        None => return Err(validation("encryptionType")),
    }
    let key = str_field(req, "KeyId").ok_or_else(|| validation("keyId"))?;
    if !(1..=2048).contains(&key.len()) {
        return Err(err(
            "ValidationException",
            "1 validation error detected: Value at 'keyId' failed to satisfy constraint: Member must have length between 1 and 2048",
        ));
    }
    if !kms_key_id_ok(key) {
        return Err(err(
            "InvalidArgumentException",
            format!(
                "KeyId {key:?} is not a KMS key id, key ARN, alias ARN or alias name (alias/…)"
            ),
        ));
    }
    Ok(key.to_owned())
}

pub(super) async fn start_encryption(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    let key = encryption_fields(req)?;
    ctx.stream
        .set_stream_setting(&name, ENCRYPTION, Some(key))
        .await?;
    ctx.settings.encryption.forget(&name);
    Ok(json!({}))
}

/// StopStreamEncryption: the request names the key as Kinesis requires; a stream that is
/// not encrypted stays so (the call succeeds).
pub(super) async fn stop_encryption(ctx: &KinesisContext, req: &Value) -> OpResult {
    let name = stream_name(ctx, req)?;
    encryption_fields(req)?;
    ctx.stream
        .set_stream_setting(&name, ENCRYPTION, None)
        .await?;
    ctx.settings.encryption.forget(&name);
    Ok(json!({}))
}

/// The stream's KMS key id, read now (DescribeStream).
pub(super) async fn encryption_key(
    ctx: &KinesisContext,
    name: &str,
) -> Result<Option<String>, KinesisError> {
    Ok(ctx.stream.stream_setting(name, ENCRYPTION).await?)
}

/// `EncryptionType` as PutRecord(s) report it, through the short-lived cache.
pub(super) async fn encryption_type(ctx: &KinesisContext, name: &str) -> &'static str {
    let key = match ctx.settings.encryption.get(name) {
        Some(k) => k,
        None => match ctx.stream.stream_setting(name, ENCRYPTION).await {
            Ok(k) => {
                ctx.settings.encryption.put(name, k.clone());
                k
            }
            // The records are written; only the report of their encryption is missing.
            Err(_) => None,
        },
    };
    if key.is_some() { "KMS" } else { "NONE" }
}

/// The stream's `EncryptionType` / `KeyId` fields of DescribeStream(Summary), added to `v`.
pub(super) async fn describe_encryption(
    ctx: &KinesisContext,
    name: &str,
    v: &mut Value,
) -> Result<(), KinesisError> {
    match encryption_key(ctx, name).await? {
        Some(key) => {
            v["EncryptionType"] = json!("KMS");
            v["KeyId"] = json!(key);
        }
        None => v["EncryptionType"] = json!("NONE"),
    }
    Ok(())
}

// --- enhanced monitoring -----------------------------------------------------------------

/// The enabled shard-level metrics, in [`METRICS`] order.
pub(super) async fn monitoring(
    ctx: &KinesisContext,
    name: &str,
) -> Result<Vec<&'static str>, KinesisError> {
    let stored = ctx.stream.stream_setting(name, MONITORING).await?;
    let on: Vec<&str> = stored.as_deref().unwrap_or("").split(',').collect();
    Ok(METRICS.into_iter().filter(|m| on.contains(m)).collect())
}

/// Enable/DisableEnhancedMonitoring: `ALL` stands for every metric; the answer has the
/// metrics before (`Current…`) and after (`Desired…`) the call.
pub(super) async fn enhanced_monitoring(
    ctx: &KinesisContext,
    req: &Value,
    enable: bool,
) -> OpResult {
    let name = stream_name(ctx, req)?;
    let asked = req
        .get("ShardLevelMetrics")
        .and_then(Value::as_array)
        .ok_or_else(|| validation("shardLevelMetrics"))?;
    if asked.is_empty() || asked.len() > 7 {
        return Err(err(
            "ValidationException",
            "1 validation error detected: Value at 'shardLevelMetrics' failed to satisfy constraint: Member must have length between 1 and 7",
        ));
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, m) in asked.iter().enumerate() {
        match m.as_str() {
            Some("ALL") => names.extend(METRICS),
            Some(m) if METRICS.contains(&m) => names.push(m),
            other => {
                let mut allowed = METRICS.to_vec();
                allowed.push("ALL");
                return Err(enum_error(
                    other.unwrap_or("null"),
                    &format!("shardLevelMetrics.{}.member", i + 1),
                    &allowed,
                ));
            }
        }
    }
    let current = monitoring(ctx, &name).await?;
    let desired: Vec<&str> = METRICS
        .into_iter()
        .filter(|m| {
            if enable {
                current.contains(m) || names.contains(m)
            } else {
                current.contains(m) && !names.contains(m)
            }
        })
        .collect();
    let stored = (!desired.is_empty()).then(|| desired.join(","));
    ctx.stream
        .set_stream_setting(&name, MONITORING, stored)
        .await?;
    Ok(json!({
        "StreamName": ctx.shown(&name),
        "StreamARN": ctx.arn(&name),
        "CurrentShardLevelMetrics": current,
        "DesiredShardLevelMetrics": desired,
    }))
}

// --- resource policies -------------------------------------------------------------------

/// What a resource ARN names: its stream and the setting its policy is kept under.
fn policy_home(ctx: &KinesisContext, arn: &str) -> Result<(String, String), KinesisError> {
    if arn.contains("/consumer/") {
        let c = efo::parse_consumer_arn(ctx, arn)?;
        let secs = c.created_secs.unwrap_or_default();
        return Ok((c.stream, efo::consumer_policy_key(&c.name, secs)));
    }
    Ok((stream_of_arn(ctx, arn)?, "policy".to_owned()))
}

fn resource_arn(req: &Value) -> Result<&str, KinesisError> {
    let arn = str_field(req, "ResourceARN").ok_or_else(|| validation("resourceARN"))?;
    if !(1..=2048).contains(&arn.len()) {
        return Err(err(
            "ValidationException",
            "1 validation error detected: Value at 'resourceARN' failed to satisfy constraint: Member must have length between 1 and 2048",
        ));
    }
    Ok(arn)
}

/// Checks a resource policy for `arn`: JSON within [`MAX_POLICY_BYTES`], every statement
/// with a principal, Kinesis actions only, resources that are `arn` or under it.
fn validate_policy(document: &str, arn: &str) -> Result<ResourcePolicy, KinesisError> {
    let invalid = |m: String| err("InvalidArgumentException", m);
    if document.len() > MAX_POLICY_BYTES {
        return Err(invalid(format!(
            "the policy is {} bytes, more than the {MAX_POLICY_BYTES} a resource policy may have",
            document.len()
        )));
    }
    let doc: Value = serde_json::from_str(document)
        .map_err(|e| invalid(format!("the policy is not valid JSON: {e}")))?;
    let statements: Vec<&Value> = match doc.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(one) => vec![one],
        None => return Err(invalid("the policy has no Statement".into())),
    };
    let strings = sluice_policy::resource::string_or_list;
    for s in statements {
        let mut actions = strings(s.get("Action"));
        actions.extend(strings(s.get("NotAction")));
        if let Some(a) = actions
            .iter()
            .find(|a| *a != "*" && !a.to_ascii_lowercase().starts_with("kinesis:"))
        {
            return Err(invalid(format!(
                "the policy names action {a:?}: a Kinesis resource policy may name only kinesis: actions"
            )));
        }
        let mut resources = strings(s.get("Resource"));
        resources.extend(strings(s.get("NotResource")));
        if let Some(r) = resources
            .iter()
            .find(|r| *r != arn && !r.strip_prefix(arn).is_some_and(|x| x.starts_with('/')))
        {
            return Err(invalid(format!(
                "the policy names resource {r:?}: a resource policy may name only the resource it is attached to ({arn})"
            )));
        }
    }
    ResourcePolicy::parse(document).map_err(|e| invalid(e.to_string()))
}

pub(super) async fn put_resource_policy(ctx: &KinesisContext, req: &Value) -> OpResult {
    let arn = resource_arn(req)?;
    let document = str_field(req, "Policy").ok_or_else(|| validation("policy"))?;
    let (stream, key) = policy_home(ctx, arn)?;
    if arn.contains("/consumer/") {
        // The consumer must exist (and be the one of that ARN).
        ctx.stream
            .describe_consumer(&efo::parse_consumer_arn(ctx, arn)?)
            .await?;
    }
    validate_policy(document, arn)?;
    ctx.stream
        .set_stream_setting(&stream, &key, Some(document.to_owned()))
        .await?;
    ctx.settings.policies.forget(arn);
    Ok(json!({}))
}

/// GetResourcePolicy: the document, or `{}` when there is none (the answer's `Policy` is
/// required in Kinesis' model).
pub(super) async fn get_resource_policy(ctx: &KinesisContext, req: &Value) -> OpResult {
    let arn = resource_arn(req)?;
    let (stream, key) = policy_home(ctx, arn)?;
    let policy = ctx.stream.stream_setting(&stream, &key).await?;
    Ok(json!({"Policy": policy.unwrap_or_else(|| "{}".to_owned())}))
}

pub(super) async fn delete_resource_policy(ctx: &KinesisContext, req: &Value) -> OpResult {
    let arn = resource_arn(req)?;
    let (stream, key) = policy_home(ctx, arn)?;
    if ctx.stream.stream_setting(&stream, &key).await?.is_none() {
        return Err(err(
            "ResourceNotFoundException",
            format!("No resource policy found for resource ARN {arn}."),
        ));
    }
    ctx.stream.set_stream_setting(&stream, &key, None).await?;
    ctx.settings.policies.forget(arn);
    Ok(json!({}))
}

/// The policy attached to the stream or consumer `arn` names (`None`: none, or `arn` is not
/// one resource), through the short-lived cache.
async fn policy_of(
    ctx: &KinesisContext,
    arn: &str,
) -> Result<Option<Arc<ResourcePolicy>>, KinesisError> {
    if !arn.starts_with("arn:") || arn.ends_with(":*") {
        return Ok(None);
    }
    if let Some(p) = ctx.settings.policies.get(arn) {
        return Ok(p);
    }
    let Ok((stream, key)) = policy_home(ctx, arn) else {
        return Ok(None);
    };
    let policy = match ctx.stream.stream_setting(&stream, &key).await {
        Ok(d) => d.map(|d| crate::s3_policy::stored_policy(arn, &d)),
        Err(StreamError::ResourceNotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    ctx.settings.policies.put(arn, policy.clone());
    Ok(policy)
}

/// Whether `principal` may perform Kinesis operation `op` on `resource` (an ARN, or `*`):
/// its identity policies together with the resource's policy
/// ([`crate::authz::decide_with_resource_policy`]). A key with full access on a resource
/// without a policy costs one cache lookup.
pub(super) async fn authorize(
    ctx: &KinesisContext,
    principal: &Principal,
    op: &str,
    resource: &str,
) -> Result<(), KinesisError> {
    let policy = policy_of(ctx, resource).await?;
    if policy.is_none() && principal.unrestricted() {
        return Ok(());
    }
    let policy_op = matches!(
        op,
        "PutResourcePolicy" | "GetResourcePolicy" | "DeleteResourcePolicy"
    );
    crate::authz::decide_with_resource_policy(
        Some(principal),
        policy.as_deref(),
        || principal.full_context(None),
        &format!("kinesis:{op}"),
        resource,
        policy_op,
    )
    .map_err(|d| {
        err(
            "AccessDeniedException",
            d.map(|d| d.message()).unwrap_or_default(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_key_ids_in_every_form_kms_takes() {
        for ok in [
            "12345678-1234-1234-1234-123456789012",
            "alias/aws/kinesis",
            "alias/MyAliasName",
            "arn:aws:kms:us-east-1:123456789012:key/12345678-1234-1234-1234-123456789012",
            "arn:aws:kms:us-east-1:123456789012:alias/MyAliasName",
        ] {
            assert!(kms_key_id_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "my-key",
            "alias/",
            "1234567-1234-1234-1234-123456789012",
            "arn:aws:kms:us-east-1:1234:key/12345678-1234-1234-1234-123456789012",
            "arn:aws:s3:::bucket",
            "arn:aws:kms:us-east-1:123456789012:key/not-a-uuid",
        ] {
            assert!(!kms_key_id_ok(bad), "{bad}");
        }
    }

    #[test]
    fn policies_name_kinesis_actions_on_their_own_resource() {
        let arn = "arn:aws:kinesis:us-east-2:000000000000:stream/s";
        let doc = |action: &str, resource: &str| {
            json!({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::000000000000:user/u"},
                "Action": action,
                "Resource": resource,
            }]})
            .to_string()
        };
        assert!(validate_policy(&doc("kinesis:GetRecords", arn), arn).is_ok());
        assert!(validate_policy(&doc("kinesis:*", &format!("{arn}/consumer/*")), arn).is_ok());
        for (action, resource) in [
            ("s3:GetObject", arn),
            (
                "kinesis:GetRecords",
                "arn:aws:kinesis:us-east-2:000000000000:stream/other",
            ),
            (
                "kinesis:GetRecords",
                "arn:aws:kinesis:us-east-2:000000000000:stream/s2",
            ),
        ] {
            let e = validate_policy(&doc(action, resource), arn).expect_err("refused");
            assert_eq!(e.kind, "InvalidArgumentException", "{action} {resource}");
        }
        let no_principal =
            json!({"Statement": [{"Effect": "Allow", "Action": "kinesis:*", "Resource": arn}]});
        assert!(validate_policy(&no_principal.to_string(), arn).is_err());
        assert!(validate_policy("{not json", arn).is_err());
        let huge = doc(&format!("kinesis:{}", "A".repeat(MAX_POLICY_BYTES)), arn);
        assert!(validate_policy(&huge, arn).is_err());
    }
}
