//! IAM's input constraints, with the messages IAM answers them with.

use serde_json::Value;

use crate::IamError;

fn constraint(value: &str, field: &str, what: &str) -> IamError {
    IamError::Validation(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {what}"
    ))
}

/// A user, group, role or policy name: 1 to `max` characters of `[\w+=,.@-]`.
pub fn validate_name(name: &str, max: usize, field: &str) -> Result<(), IamError> {
    if name.is_empty() || name.chars().count() > max {
        return Err(constraint(
            name,
            field,
            &format!("Member must have length between 1 and {max}"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
    {
        return Err(constraint(
            name,
            field,
            "Member must satisfy regular expression pattern: [\\w+=,.@-]+",
        ));
    }
    Ok(())
}

/// A path: `/`, or `/` + printable ASCII + `/`, at most 512 characters.
pub fn validate_path(path: &str) -> Result<(), IamError> {
    let ok = path.len() <= 512
        && (path == "/"
            || (path.len() >= 3
                && path.starts_with('/')
                && path.ends_with('/')
                && path.bytes().all(|b| (0x21..=0x7e).contains(&b))));
    if !ok {
        return Err(constraint(
            path,
            "path",
            "Member must satisfy regular expression pattern: (\\u002F)|(\\u002F[\\u0021-\\u007E]+\\u002F)",
        ));
    }
    Ok(())
}

/// A description: at most 1000 characters.
pub(crate) fn description(d: &str) -> Result<(), IamError> {
    if d.chars().count() > 1000 {
        return Err(constraint(
            d,
            "description",
            "Member must have length less than or equal to 1000",
        ));
    }
    Ok(())
}

/// A role's maximum session: one to twelve hours.
pub(crate) fn max_session(seconds: i64) -> Result<(), IamError> {
    if !(3600..=43200).contains(&seconds) {
        return Err(constraint(
            &seconds.to_string(),
            "maxSessionDuration",
            "Member must have value greater than or equal to 3600 and less than or equal to 43200",
        ));
    }
    Ok(())
}

/// Tags: keys of 1 to 128 characters, values of at most 256, no key twice, at most 50.
pub(crate) fn tags(tags: &[(String, String)]) -> Result<(), IamError> {
    if tags.len() > crate::limits::TAGS_PER_ENTITY {
        return Err(IamError::LimitExceeded(format!(
            "The number of tags has reached the maximum limit of {}.",
            crate::limits::TAGS_PER_ENTITY
        )));
    }
    for (i, (k, v)) in tags.iter().enumerate() {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(constraint(
                k,
                &format!("tags.{}.member.key", i + 1),
                "Member must have length between 1 and 128",
            ));
        }
        if v.chars().count() > 256 {
            return Err(constraint(
                v,
                &format!("tags.{}.member.value", i + 1),
                "Member must have length less than or equal to 256",
            ));
        }
        if tags[..i].iter().any(|(other, _)| other == k) {
            return Err(IamError::InvalidInput(format!(
                "Duplicate tag keys found. Please note that Tag keys are case insensitive: {k}"
            )));
        }
    }
    Ok(())
}

fn malformed(m: impl Into<String>) -> IamError {
    IamError::MalformedPolicyDocument(m.into())
}

/// A role's trust policy: a resource policy whose statements name a `Principal` and
/// `sts:` actions. Checked for shape here; what it grants is decided when a role is assumed.
pub(crate) fn trust_policy(document: &str) -> Result<(), IamError> {
    if document.len() > 2048 {
        return Err(IamError::LimitExceeded(
            "Cannot exceed quota for ACLSizePerRole: 2048".into(),
        ));
    }
    let v: Value = serde_json::from_str(document)
        .map_err(|e| malformed(format!("This policy contains invalid Json: {e}")))?;
    let Value::Object(doc) = v else {
        return Err(malformed("This policy contains invalid Json"));
    };
    if let Some(k) = doc
        .keys()
        .find(|k| !matches!(k.as_str(), "Version" | "Id" | "Statement"))
    {
        return Err(malformed(format!(
            "Syntax errors in policy: unknown element {k}"
        )));
    }
    let statements: Vec<&Value> = match doc.get("Statement") {
        Some(Value::Array(a)) if !a.is_empty() => a.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        _ => return Err(malformed("Syntax errors in policy: missing Statement")),
    };
    for s in statements {
        let Value::Object(s) = s else {
            return Err(malformed(
                "Syntax errors in policy: a statement is not an object",
            ));
        };
        if !matches!(
            s.get("Effect").and_then(Value::as_str),
            Some("Allow") | Some("Deny")
        ) {
            return Err(malformed("Invalid effect: Effect must be Allow or Deny"));
        }
        match s.get("Principal") {
            Some(Value::String(star)) if star == "*" => {}
            Some(Value::Object(p)) if !p.is_empty() => {
                for (kind, ids) in p {
                    if !matches!(
                        kind.as_str(),
                        "AWS" | "Service" | "Federated" | "CanonicalUser"
                    ) {
                        return Err(malformed(format!("Invalid principal in policy: {kind}")));
                    }
                    let ok = match ids {
                        Value::String(_) => true,
                        Value::Array(a) => !a.is_empty() && a.iter().all(Value::is_string),
                        _ => false,
                    };
                    if !ok {
                        return Err(malformed(format!("Invalid principal in policy: {kind}")));
                    }
                }
            }
            _ if s.contains_key("NotPrincipal") => {
                return Err(malformed(
                    "NotPrincipal is not allowed in a role's trust policy",
                ));
            }
            _ => return Err(malformed("Missing required field Principal")),
        }
        let actions: Vec<&str> = match s.get("Action") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(malformed("Missing required field Action")),
        };
        if actions.is_empty() {
            return Err(malformed("Missing required field Action"));
        }
        if let Some(a) = actions
            .iter()
            .find(|a| **a != "*" && !a.to_ascii_lowercase().starts_with("sts:"))
        {
            return Err(malformed(format!(
                "AssumeRolepolicy contained an invalid action: {a}"
            )));
        }
        if s.contains_key("Resource") || s.contains_key("NotResource") {
            return Err(malformed("Has prohibited field Resource"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        validate_name("upload-fn_role+1=a,b.c@d", 64, "roleName").expect("valid");
        assert!(validate_name("", 64, "roleName").is_err());
        assert!(validate_name("has space", 64, "roleName").is_err());
        assert!(validate_name(&"a".repeat(65), 64, "roleName").is_err());
        validate_path("/").expect("root");
        validate_path("/service-role/").expect("nested");
        assert!(validate_path("service-role/").is_err());
        assert!(validate_path("/a b/").is_err());
        assert!(validate_path("//").is_err());
    }

    #[test]
    fn trust_policies() {
        trust_policy(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#).expect("the seed's");
        for bad in [
            "not json",
            r#"{"Statement":[]}"#,
            r#"{"Statement":[{"Effect":"Allow","Action":"sts:AssumeRole"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"s3:GetObject"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Maybe","Principal":"*","Action":"sts:AssumeRole"}]}"#,
        ] {
            assert!(
                matches!(trust_policy(bad), Err(IamError::MalformedPolicyDocument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn tag_rules() {
        tags(&[("team".into(), "ingest".into())]).expect("valid");
        assert!(tags(&[("".into(), "x".into())]).is_err());
        assert!(tags(&[("a".into(), "1".into()), ("a".into(), "2".into())]).is_err());
        let many: Vec<(String, String)> =
            (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(matches!(tags(&many), Err(IamError::LimitExceeded(_))));
    }
}
