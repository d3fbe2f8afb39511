//! `Condition` blocks and policy variables, as IAM evaluates them.
//!
//! A request's [`Context`] holds its condition keys (`aws:SourceIp`, `aws:username`,
//! `aws:PrincipalTag/team`, …; names without regard to case, as IAM's). A statement's
//! condition holds when every test holds (operators and keys are ANDed); a test holds when
//! the request's value matches any of the test's values (ORed), or for a negated operator
//! (`StringNotEquals`, `NotIpAddress`, `ArnNotLike`, …) matches none of them.
//!
//! A key the request does not have makes a test false, a negated one true; `…IfExists`
//! makes it true either way; `Null` tests whether the key is there. `ForAnyValue:` holds
//! when some value of a multi-valued key matches (false when the key is absent),
//! `ForAllValues:` when every value does (true when the key is absent or empty).
//!
//! Policy variables (`${aws:username}`, `${aws:PrincipalTag/team}`, with an optional
//! default `${aws:username, 'nobody'}`) are replaced in `Resource` / `NotResource` and in
//! condition values, in documents of version `2012-10-17` (in older documents `${…}` is
//! text, as in IAM). A variable the request has no value for makes its element match
//! nothing. The escapes `${*}`, `${?}` and `${$}` are refused at parse time.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

use crate::{PolicyError, malformed};

/// The condition keys of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    keys: BTreeMap<String, Vec<String>>,
}

impl Context {
    pub fn new() -> Context {
        Context::default()
    }

    /// Sets a single-valued key.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.keys
            .insert(key.to_ascii_lowercase(), vec![value.into()]);
        self
    }

    /// Sets a multi-valued key (`aws:TagKeys`, …).
    pub fn set_all(&mut self, key: &str, values: Vec<String>) -> &mut Self {
        self.keys.insert(key.to_ascii_lowercase(), values);
        self
    }

    /// Removes a key (the request has no value for it).
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.keys.remove(&key.to_ascii_lowercase());
        self
    }

    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.keys.get(&key.to_ascii_lowercase()).map(Vec::as_slice)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    NumericEquals,
    NumericNotEquals,
    NumericLessThan,
    NumericLessThanEquals,
    NumericGreaterThan,
    NumericGreaterThanEquals,
    DateEquals,
    DateNotEquals,
    DateLessThan,
    DateLessThanEquals,
    DateGreaterThan,
    DateGreaterThanEquals,
    Bool,
    BinaryEquals,
    IpAddress,
    NotIpAddress,
    ArnEquals,
    ArnLike,
    ArnNotEquals,
    ArnNotLike,
    Null,
}

const OPS: &[(&str, Op)] = &[
    ("StringEquals", Op::StringEquals),
    ("StringNotEquals", Op::StringNotEquals),
    ("StringEqualsIgnoreCase", Op::StringEqualsIgnoreCase),
    ("StringNotEqualsIgnoreCase", Op::StringNotEqualsIgnoreCase),
    ("StringLike", Op::StringLike),
    ("StringNotLike", Op::StringNotLike),
    ("NumericEquals", Op::NumericEquals),
    ("NumericNotEquals", Op::NumericNotEquals),
    ("NumericLessThan", Op::NumericLessThan),
    ("NumericLessThanEquals", Op::NumericLessThanEquals),
    ("NumericGreaterThan", Op::NumericGreaterThan),
    ("NumericGreaterThanEquals", Op::NumericGreaterThanEquals),
    ("DateEquals", Op::DateEquals),
    ("DateNotEquals", Op::DateNotEquals),
    ("DateLessThan", Op::DateLessThan),
    ("DateLessThanEquals", Op::DateLessThanEquals),
    ("DateGreaterThan", Op::DateGreaterThan),
    ("DateGreaterThanEquals", Op::DateGreaterThanEquals),
    ("Bool", Op::Bool),
    ("BinaryEquals", Op::BinaryEquals),
    ("IpAddress", Op::IpAddress),
    ("NotIpAddress", Op::NotIpAddress),
    ("ArnEquals", Op::ArnEquals),
    ("ArnLike", Op::ArnLike),
    ("ArnNotEquals", Op::ArnNotEquals),
    ("ArnNotLike", Op::ArnNotLike),
    ("Null", Op::Null),
];

impl Op {
    fn negated(self) -> bool {
        matches!(
            self,
            Op::StringNotEquals
                | Op::StringNotEqualsIgnoreCase
                | Op::StringNotLike
                | Op::NumericNotEquals
                | Op::DateNotEquals
                | Op::NotIpAddress
                | Op::ArnNotEquals
                | Op::ArnNotLike
        )
    }

    /// Whether request value `v` matches policy value `p` (for a negated operator: its
    /// positive form).
    fn matches(self, p: &str, v: &str) -> bool {
        use std::cmp::Ordering::*;
        let num = || {
            let (p, v) = (p.trim().parse::<f64>().ok()?, v.trim().parse::<f64>().ok()?);
            p.partial_cmp(&v)
        };
        let date = || Some(date_of(v)?.cmp(&date_of(p)?));
        match self {
            Op::StringEquals | Op::StringNotEquals => v == p,
            Op::StringEqualsIgnoreCase | Op::StringNotEqualsIgnoreCase => {
                v.to_lowercase() == p.to_lowercase()
            }
            Op::StringLike | Op::StringNotLike => crate::glob(p, v),
            Op::NumericEquals | Op::NumericNotEquals => num() == Some(Equal),
            // `num()` compares the policy's value with the request's: the request's is less
            // when the policy's is greater.
            Op::NumericLessThan => num() == Some(Greater),
            Op::NumericLessThanEquals => matches!(num(), Some(Greater | Equal)),
            Op::NumericGreaterThan => num() == Some(Less),
            Op::NumericGreaterThanEquals => matches!(num(), Some(Less | Equal)),
            Op::DateEquals | Op::DateNotEquals => date() == Some(Equal),
            Op::DateLessThan => date() == Some(Less),
            Op::DateLessThanEquals => matches!(date(), Some(Less | Equal)),
            Op::DateGreaterThan => date() == Some(Greater),
            Op::DateGreaterThanEquals => matches!(date(), Some(Greater | Equal)),
            Op::Bool => v.eq_ignore_ascii_case(p),
            Op::BinaryEquals => v == p,
            Op::IpAddress | Op::NotIpAddress => cidr_contains(p, v),
            Op::ArnEquals | Op::ArnLike | Op::ArnNotEquals | Op::ArnNotLike => {
                crate::resource_matches(p, v)
            }
            Op::Null => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    Single,
    AnyValue,
    AllValues,
}

/// One test of a `Condition` block: an operator, one key, its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Test {
    op: Op,
    set: Set,
    if_exists: bool,
    key: String,
    values: Vec<String>,
}

/// Parses a statement's `Condition` block.
pub(crate) fn parse(v: &Value, variables: bool) -> Result<Vec<Test>, PolicyError> {
    let Value::Object(block) = v else {
        return Err(malformed("Condition must be an object of operators"));
    };
    let mut tests = Vec::new();
    for (name, keys) in block {
        let (set, rest) = if let Some(r) = name.strip_prefix("ForAnyValue:") {
            (Set::AnyValue, r)
        } else if let Some(r) = name.strip_prefix("ForAllValues:") {
            (Set::AllValues, r)
        } else {
            (Set::Single, name.as_str())
        };
        let (base, if_exists) = match rest.strip_suffix("IfExists") {
            Some(b) => (b, true),
            None => (rest, false),
        };
        let op = OPS
            .iter()
            .find(|(n, _)| *n == base)
            .map(|(_, o)| *o)
            .ok_or_else(|| malformed(format!("Invalid Condition type : {name}")))?;
        if op == Op::Null && (if_exists || set != Set::Single) {
            return Err(malformed(format!("Invalid Condition type : {name}")));
        }
        let Value::Object(keys) = keys else {
            return Err(malformed(format!(
                "{name} must map condition keys to values"
            )));
        };
        if keys.is_empty() {
            return Err(malformed(format!("{name} has no condition key")));
        }
        for (key, values) in keys {
            if !key.contains(':') {
                return Err(malformed(format!(
                    "Condition key {key:?} must be service:name (aws:SourceIp, s3:prefix, …)"
                )));
            }
            let values = scalars(values).ok_or_else(|| {
                malformed(format!(
                    "the values of {name} {key} must be strings, numbers or booleans"
                ))
            })?;
            if values.is_empty() {
                return Err(malformed(format!("{name} {key} has no value")));
            }
            for value in &values {
                check_value(op, name, value, variables)?;
            }
            tests.push(Test {
                op,
                set,
                if_exists,
                key: key.to_ascii_lowercase(),
                values,
            });
        }
    }
    Ok(tests)
}

fn scalars(v: &Value) -> Option<Vec<String>> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        Value::Array(a) => a.iter().map(one).collect(),
        other => one(other).map(|s| vec![s]),
    }
}

/// A value the operator could never compare is refused, as IAM refuses it.
fn check_value(op: Op, name: &str, value: &str, variables: bool) -> Result<(), PolicyError> {
    if variables {
        check_variables(value)?;
    }
    if variables && value.contains("${") {
        return Ok(());
    }
    let ok = match op {
        Op::NumericEquals
        | Op::NumericNotEquals
        | Op::NumericLessThan
        | Op::NumericLessThanEquals
        | Op::NumericGreaterThan
        | Op::NumericGreaterThanEquals => value.trim().parse::<f64>().is_ok(),
        Op::DateEquals
        | Op::DateNotEquals
        | Op::DateLessThan
        | Op::DateLessThanEquals
        | Op::DateGreaterThan
        | Op::DateGreaterThanEquals => date_of(value).is_some(),
        Op::Bool | Op::Null => {
            value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")
        }
        Op::IpAddress | Op::NotIpAddress => parse_cidr(value).is_some(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(malformed(format!("{name} cannot use the value {value:?}")))
    }
}

/// Refuses the variable escapes sluice does not evaluate.
pub(crate) fn check_variables(text: &str) -> Result<(), PolicyError> {
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(malformed(format!(
                "unterminated policy variable in {text:?}"
            )));
        };
        let inner = after[..end].trim();
        if matches!(inner, "*" | "?" | "$") {
            return Err(malformed(format!(
                "the policy variable ${{{inner}}} is not supported by sluice's policy evaluator"
            )));
        }
        let key = inner.split(',').next().unwrap_or("").trim();
        if !key.contains(':') {
            return Err(malformed(format!("invalid policy variable ${{{inner}}}")));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

/// `text` with its policy variables replaced by the request's values; `None` when one has
/// no value (and no default).
pub(crate) fn expand(text: &str, ctx: &Context) -> Option<String> {
    if !text.contains("${") {
        return Some(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}')?;
        let inner = &after[..end];
        let (key, default) = match inner.split_once(',') {
            Some((k, d)) => (k.trim(), Some(d.trim().trim_matches('\'').to_owned())),
            None => (inner.trim(), None),
        };
        match ctx.get(key).and_then(|v| v.first()) {
            Some(v) => out.push_str(v),
            None => out.push_str(&default?),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

impl Test {
    pub(crate) fn holds(&self, ctx: &Context, variables: bool) -> bool {
        let present = ctx.get(&self.key);
        if self.op == Op::Null {
            let absent = present.is_none_or(|v| v.is_empty());
            return self
                .values
                .iter()
                .any(|p| p.eq_ignore_ascii_case("true") == absent);
        }
        let values: Vec<String> = if variables {
            self.values.iter().filter_map(|p| expand(p, ctx)).collect()
        } else {
            self.values.clone()
        };
        // Whether one request value passes: matches some value, or for a negated
        // operator matches none.
        let passes = |v: &String| {
            let any = values.iter().any(|p| self.op.matches(p, v));
            if self.op.negated() { !any } else { any }
        };
        match (self.set, present) {
            (Set::AllValues, None) => true,
            (Set::AllValues, Some(vs)) => vs.iter().all(passes),
            (_, None) => self.if_exists || (self.set == Set::Single && self.op.negated()),
            (Set::AnyValue, Some(vs)) => vs.iter().any(passes),
            (Set::Single, Some(vs)) => {
                if self.op.negated() {
                    vs.iter().all(passes)
                } else {
                    vs.iter().any(passes)
                }
            }
        }
    }
}

/// A date as IAM reads one: RFC 3339 / ISO 8601, a date alone, or epoch seconds.
fn date_of(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp());
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S") {
        return Some(t.and_utc().timestamp());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp())
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = match s.trim().split_once('/') {
        Some((ip, bits)) => (ip.parse::<IpAddr>().ok()?, Some(bits.parse::<u8>().ok()?)),
        None => (s.trim().parse::<IpAddr>().ok()?, None),
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(max);
    (bits <= max).then_some((ip, bits))
}

fn cidr_contains(cidr: &str, ip: &str) -> bool {
    let (Some((net, bits)), Ok(ip)) = (parse_cidr(cidr), ip.trim().parse::<IpAddr>()) else {
        return false;
    };
    // An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) is the IPv4 address.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn ctx(pairs: &[(&str, &str)]) -> Context {
        let mut c = Context::new();
        for (k, v) in pairs {
            c.set(k, *v);
        }
        c
    }

    fn allows(doc: &str, c: &Context) -> bool {
        Policy::parse(doc)
            .expect("policy")
            .decide_in("s3:GetObject", "arn:aws:s3:::b/k", c)
            .allowed()
    }

    fn with(condition: &str) -> String {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"s3:GetObject","Resource":"*","Condition":{condition}}}]}}"#
        )
    }

    #[test]
    fn source_ip_ranges() {
        let doc = with(r#"{"IpAddress":{"aws:SourceIp":["10.0.0.0/8","192.0.2.7"]}}"#);
        assert!(allows(&doc, &ctx(&[("aws:SourceIp", "10.1.2.3")])));
        assert!(allows(&doc, &ctx(&[("aws:sourceip", "192.0.2.7")])));
        assert!(allows(&doc, &ctx(&[("aws:SourceIp", "::ffff:10.9.9.9")])));
        assert!(!allows(&doc, &ctx(&[("aws:SourceIp", "11.0.0.1")])));
        assert!(!allows(&doc, &Context::new()), "absent key: false");
        let not = with(r#"{"NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}}"#);
        assert!(allows(&not, &ctx(&[("aws:SourceIp", "11.0.0.1")])));
        assert!(!allows(&not, &ctx(&[("aws:SourceIp", "10.0.0.1")])));
        assert!(
            allows(&not, &Context::new()),
            "absent key: a negated test holds"
        );
        let v6 = with(r#"{"IpAddress":{"aws:SourceIp":"2001:db8::/32"}}"#);
        assert!(allows(&v6, &ctx(&[("aws:SourceIp", "2001:db8::1")])));
        assert!(!allows(&v6, &ctx(&[("aws:SourceIp", "2001:db9::1")])));
    }

    #[test]
    fn strings_numbers_dates_bools() {
        let doc = with(
            r#"{"StringLike":{"s3:prefix":["home/*","public/?"]},"Bool":{"aws:SecureTransport":"false"}}"#,
        );
        assert!(allows(
            &doc,
            &ctx(&[("s3:prefix", "home/a/b"), ("aws:SecureTransport", "false")])
        ));
        assert!(
            !allows(
                &doc,
                &ctx(&[("s3:prefix", "home/a/b"), ("aws:SecureTransport", "true")])
            ),
            "operators AND"
        );
        assert!(!allows(
            &doc,
            &ctx(&[("s3:prefix", "public/ab"), ("aws:SecureTransport", "false")])
        ));
        let n = with(r#"{"NumericLessThanEquals":{"s3:max-keys":"10"}}"#);
        assert!(allows(&n, &ctx(&[("s3:max-keys", "10")])));
        assert!(!allows(&n, &ctx(&[("s3:max-keys", "11")])));
        let d = with(
            r#"{"DateLessThan":{"aws:CurrentTime":"2030-01-01T00:00:00Z"},"DateGreaterThan":{"aws:CurrentTime":"2020-01-01"}}"#,
        );
        assert!(allows(
            &d,
            &ctx(&[("aws:CurrentTime", "2026-12-04T10:00:00Z")])
        ));
        assert!(!allows(
            &d,
            &ctx(&[("aws:CurrentTime", "2031-01-01T00:00:00Z")])
        ));
        let e = with(r#"{"StringEqualsIgnoreCase":{"aws:username":"Alice"}}"#);
        assert!(allows(&e, &ctx(&[("aws:username", "alice")])));
        let ne = with(r#"{"StringNotEquals":{"aws:username":["bob","carol"]}}"#);
        assert!(allows(&ne, &ctx(&[("aws:username", "alice")])));
        assert!(
            !allows(&ne, &ctx(&[("aws:username", "bob")])),
            "NOR over the values"
        );
    }

    #[test]
    fn if_exists_null_and_sets() {
        let ie = with(r#"{"StringEqualsIfExists":{"aws:PrincipalTag/team":"ingest"}}"#);
        assert!(allows(&ie, &Context::new()));
        assert!(allows(&ie, &ctx(&[("aws:PrincipalTag/team", "ingest")])));
        assert!(!allows(&ie, &ctx(&[("aws:PrincipalTag/team", "web")])));
        let null = with(r#"{"Null":{"aws:PrincipalTag/team":"true"}}"#);
        assert!(allows(&null, &Context::new()));
        assert!(!allows(&null, &ctx(&[("aws:PrincipalTag/team", "x")])));
        let mut tags = Context::new();
        tags.set_all("aws:TagKeys", vec!["team".into(), "env".into()]);
        let all = with(r#"{"ForAllValues:StringEquals":{"aws:TagKeys":["team","env","cost"]}}"#);
        assert!(allows(&all, &tags));
        assert!(
            allows(&all, &Context::new()),
            "ForAllValues over nothing holds"
        );
        let any = with(r#"{"ForAnyValue:StringEquals":{"aws:TagKeys":["env"]}}"#);
        assert!(allows(&any, &tags));
        assert!(!allows(&any, &Context::new()));
        let only = with(r#"{"ForAllValues:StringEquals":{"aws:TagKeys":["team"]}}"#);
        assert!(!allows(&only, &tags));
    }

    #[test]
    fn variables_in_resources_and_values() {
        let doc = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/home/${aws:username}/*"}]}"#;
        let p = Policy::parse(doc).expect("policy");
        let alice = ctx(&[("aws:username", "alice")]);
        assert!(
            p.decide_in("s3:GetObject", "arn:aws:s3:::b/home/alice/x", &alice)
                .allowed()
        );
        assert!(
            !p.decide_in("s3:GetObject", "arn:aws:s3:::b/home/bob/x", &alice)
                .allowed()
        );
        assert!(
            !p.decide_in("s3:GetObject", "arn:aws:s3:::b/home//x", &Context::new())
                .allowed()
        );
        let old = r#"{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/${aws:username}"}]}"#;
        let p = Policy::parse(old).expect("an old document takes ${…} as text");
        assert!(
            p.decide_in("s3:GetObject", "arn:aws:s3:::b/${aws:username}", &alice)
                .allowed()
        );
        let default =
            with(r#"{"StringEquals":{"aws:PrincipalTag/team":"${aws:username, 'nobody'}"}}"#);
        assert!(allows(
            &default,
            &ctx(&[("aws:PrincipalTag/team", "nobody")])
        ));
        assert!(allows(
            &default,
            &ctx(&[
                ("aws:PrincipalTag/team", "alice"),
                ("aws:username", "alice")
            ])
        ));
    }

    #[test]
    fn malformed_conditions_are_refused() {
        for c in [
            r#"{"StringEqualz":{"aws:username":"a"}}"#,
            r#"{"NumericLessThan":{"s3:max-keys":"ten"}}"#,
            r#"{"IpAddress":{"aws:SourceIp":"10.0.0.0/33"}}"#,
            r#"{"DateLessThan":{"aws:CurrentTime":"yesterday"}}"#,
            r#"{"Bool":{"aws:SecureTransport":"yes"}}"#,
            r#"{"NullIfExists":{"aws:username":"true"}}"#,
            r#"{"StringEquals":{"username":"a"}}"#,
            r#"{"StringEquals":{}}"#,
            r#"{"StringEquals":{"aws:username":[]}}"#,
            r#"{"StringEquals":{"aws:username":{"a":1}}}"#,
            r#"{"StringEquals":{"aws:username":"${*}"}}"#,
            r#"[]"#,
        ] {
            assert!(Policy::parse(&with(c)).is_err(), "{c}");
        }
    }
}
