//! IAM-style policies: parsing a policy document and deciding whether it allows an action on
//! a resource. One evaluator for every part that authorizes by policy (scoped access keys on
//! the edge; IAM roles and users later), so that a policy means the same thing everywhere.
//!
//! What is evaluated, as AWS's identity-based policy logic does:
//!
//! - a statement applies when its `Action` (or `NotAction`) and its `Resource` (or
//!   `NotResource`) match the request;
//! - an applicable `Deny` wins over everything ([`Decision::ExplicitDeny`]); otherwise an
//!   applicable `Allow` allows; otherwise the request is denied implicitly
//!   ([`Decision::ImplicitDeny`]);
//! - actions (`service:Operation`) match case-insensitively, with `*` and `?` wildcards;
//!   resources (ARNs) match case-sensitively, segment by segment (partition, service,
//!   region, account, resource), with `*` and `?` wildcards in each; `*` alone matches any
//!   resource.
//!
//! - a statement's `Condition` block must hold for the request's [`Context`] (see
//!   [`condition`]: every operator of IAM's grammar, `…IfExists`, `Null`, `ForAnyValue:` /
//!   `ForAllValues:`); policy variables (`${aws:username}`, …) are replaced in resources
//!   and condition values of `2012-10-17` documents.
//!
//! Not supported, and refused when a document is parsed (never silently ignored, which
//! could allow more than its author meant): `Principal` / `NotPrincipal` in an identity
//! policy (they belong to resource policies: [`resource::ResourcePolicy`]), and the variable
//! escapes `${*}`, `${?}`, `${$}`.

pub mod condition;
pub mod resource;

use serde_json::Value;

pub use condition::Context;

/// A policy document that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// IAM's `MalformedPolicyDocument`: the message says what is wrong.
    #[error("{0}")]
    Malformed(String),
}

fn malformed(m: impl Into<String>) -> PolicyError {
    PolicyError::Malformed(m.into())
}

/// The answer to "may this request proceed?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A statement with `Effect: Deny` applies.
    ExplicitDeny,
    /// No statement allows it.
    ImplicitDeny,
}

impl Decision {
    pub fn allowed(self) -> bool {
        self == Decision::Allow
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

/// A list of patterns, or its complement (`NotAction`, `NotResource`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Patterns {
    Any(Vec<String>),
    NoneOf(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    effect: Effect,
    actions: Patterns,
    resources: Patterns,
    conditions: Vec<condition::Test>,
    /// Whether `${…}` are policy variables (documents of version `2012-10-17`).
    variables: bool,
}

/// A parsed policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    statements: Vec<Statement>,
}

/// Largest policy document accepted, in bytes (IAM's limit for a managed policy is 6,144
/// characters; inline policies allow 10,240 per role).
pub const MAX_DOCUMENT_BYTES: usize = 10_240;

impl Policy {
    /// A policy with no statement: it allows nothing.
    pub fn deny_all() -> Policy {
        Policy {
            statements: Vec::new(),
        }
    }

    /// Parses an IAM policy document (JSON).
    pub fn parse(document: &str) -> Result<Policy, PolicyError> {
        if document.len() > MAX_DOCUMENT_BYTES {
            return Err(malformed(format!(
                "the policy document is {} bytes; at most {MAX_DOCUMENT_BYTES} are allowed",
                document.len()
            )));
        }
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
        let variables = doc.get("Version").and_then(Value::as_str) == Some("2012-10-17");
        match doc.get("Version").map(|v| v.as_str()) {
            None | Some(Some("2012-10-17")) | Some(Some("2008-10-17")) => {}
            Some(_) => {
                return Err(malformed(
                    "Version must be \"2012-10-17\" (or \"2008-10-17\")",
                ));
            }
        }
        let statements = match doc.get("Statement") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|s| statement(s, variables))
                .collect::<Result<_, _>>()?,
            Some(one @ Value::Object(_)) => vec![statement(one, variables)?],
            Some(_) => return Err(malformed("Statement must be an object or an array")),
            None => return Err(malformed("the policy document has no Statement")),
        };
        Ok(Policy { statements })
    }

    /// One policy deciding as `policies` do together (a principal's inline, attached and
    /// group policies): [`decide`] over their statements.
    pub fn union(policies: impl IntoIterator<Item = Policy>) -> Policy {
        Policy {
            statements: policies.into_iter().flat_map(|p| p.statements).collect(),
        }
    }

    /// This policy's decision on `action` (`service:Operation`) on `resource` (an ARN), for
    /// a request with no condition keys.
    pub fn decide(&self, action: &str, resource: &str) -> Decision {
        decide(std::slice::from_ref(self), action, resource)
    }

    /// This policy's decision for a request whose condition keys are `ctx`.
    pub fn decide_in(&self, action: &str, resource: &str, ctx: &Context) -> Decision {
        decide_in(std::slice::from_ref(self), action, resource, ctx)
    }
}

/// The decision of several policies together (a principal's attached and inline policies):
/// a Deny in any of them wins; otherwise an Allow in any of them allows.
pub fn decide(policies: &[Policy], action: &str, resource: &str) -> Decision {
    decide_in(policies, action, resource, &Context::default())
}

/// [`decide`] for a request whose condition keys are `ctx`.
pub fn decide_in(policies: &[Policy], action: &str, resource: &str, ctx: &Context) -> Decision {
    let mut allowed = false;
    for s in policies.iter().flat_map(|p| &p.statements) {
        if !applies(&s.actions, action, action_matches)
            || !resources_apply(&s.resources, resource, s.variables, ctx)
            || !s.conditions.iter().all(|t| t.holds(ctx, s.variables))
        {
            continue;
        }
        match s.effect {
            Effect::Deny => return Decision::ExplicitDeny,
            Effect::Allow => allowed = true,
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

fn applies(p: &Patterns, value: &str, matches: fn(&str, &str) -> bool) -> bool {
    match p {
        Patterns::Any(list) => list.iter().any(|pat| matches(pat, value)),
        Patterns::NoneOf(list) => !list.iter().any(|pat| matches(pat, value)),
    }
}

/// Whether a statement's resources cover `resource`, its policy variables replaced by the
/// request's values (a pattern whose variable has no value matches nothing).
fn resources_apply(p: &Patterns, resource: &str, variables: bool, ctx: &Context) -> bool {
    let matches = |pat: &String| {
        if variables && pat.contains("${") {
            condition::expand(pat, ctx).is_some_and(|p| resource_matches(&p, resource))
        } else {
            resource_matches(pat, resource)
        }
    };
    match p {
        Patterns::Any(list) => list.iter().any(matches),
        Patterns::NoneOf(list) => !list.iter().any(matches),
    }
}

fn statement(v: &Value, variables: bool) -> Result<Statement, PolicyError> {
    let Value::Object(s) = v else {
        return Err(malformed("each Statement must be an object"));
    };
    for key in s.keys() {
        match key.as_str() {
            "Sid" | "Effect" | "Action" | "NotAction" | "Resource" | "NotResource"
            | "Condition" => {}
            "Principal" | "NotPrincipal" => {
                return Err(malformed(format!(
                    "{key} belongs in resource policies, not in an identity policy"
                )));
            }
            other => return Err(malformed(format!("unknown statement element {other:?}"))),
        }
    }
    let effect = match s.get("Effect").and_then(Value::as_str) {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        _ => return Err(malformed("Effect must be \"Allow\" or \"Deny\"")),
    };
    let actions = patterns(s.get("Action"), s.get("NotAction"), "Action")?;
    for a in match &actions {
        Patterns::Any(l) | Patterns::NoneOf(l) => l,
    } {
        if a != "*" && !a.contains(':') {
            return Err(malformed(format!(
                "action {a:?} must be \"*\" or \"service:Operation\""
            )));
        }
    }
    let resources = patterns(s.get("Resource"), s.get("NotResource"), "Resource")?;
    if variables {
        for r in match &resources {
            Patterns::Any(l) | Patterns::NoneOf(l) => l,
        } {
            condition::check_variables(r)?;
        }
    }
    let conditions = match s.get("Condition") {
        Some(c) => condition::parse(c, variables)?,
        None => Vec::new(),
    };
    for r in match &resources {
        Patterns::Any(l) | Patterns::NoneOf(l) => l,
    } {
        if r != "*" && !r.starts_with("arn:") {
            return Err(malformed(format!("resource {r:?} must be \"*\" or an ARN")));
        }
    }
    Ok(Statement {
        effect,
        actions,
        resources,
        conditions,
        variables,
    })
}

/// `Action` xor `NotAction` (likewise for resources): a string or an array of strings.
fn patterns(yes: Option<&Value>, no: Option<&Value>, name: &str) -> Result<Patterns, PolicyError> {
    let list = |v: &Value| -> Result<Vec<String>, PolicyError> {
        let items: Vec<String> = match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| malformed(format!("every {name} must be a string")))
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(malformed(format!("{name} must be a string or an array"))),
        };
        if items.is_empty() {
            return Err(malformed(format!("{name} must not be empty")));
        }
        Ok(items)
    };
    match (yes, no) {
        (Some(v), None) => Ok(Patterns::Any(list(v)?)),
        (None, Some(v)) => Ok(Patterns::NoneOf(list(v)?)),
        (Some(_), Some(_)) => Err(malformed(format!(
            "a statement has both {name} and Not{name}"
        ))),
        (None, None) => Err(malformed(format!("a statement needs {name} or Not{name}"))),
    }
}

/// An action pattern against an action, case-insensitively (ASCII, as IAM compares them).
fn action_matches(pattern: &str, action: &str) -> bool {
    glob_by(pattern, action, |p, t| p.eq_ignore_ascii_case(&t))
}

/// A resource pattern against an ARN: `*` matches everything; otherwise the first five
/// segments (partition, service, region, account) and the resource part are matched each on
/// its own, case-sensitively.
fn resource_matches(pattern: &str, arn: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    // Six segments each (`splitn(6, ':')` yields six exactly when there are five colons or
    // more), compared pairwise; anything else is matched whole.
    let six = |s: &str| s.bytes().filter(|b| *b == b':').nth(4).is_some();
    if !six(pattern) || !six(arn) {
        return glob(pattern, arn);
    }
    pattern
        .splitn(6, ':')
        .zip(arn.splitn(6, ':'))
        .all(|(p, a)| glob(p, a))
}

/// `*` (any run, also empty) and `?` (one character) wildcards; iterative, linear in
/// practice, no recursion a long pattern could exhaust.
fn glob(pattern: &str, text: &str) -> bool {
    glob_by(pattern, text, |p, t| p == t)
}

/// [`glob`] with `same` deciding whether a pattern character matches a text character.
/// Works on characters (so that `?` is one character of a UTF-8 text) by byte offsets into
/// both strings: the policy evaluator runs on every request, and allocates nothing here.
fn glob_by(pattern: &str, text: &str, same: impl Fn(char, char) -> bool) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where the last `*` was in the pattern, and where in the text its run ends for now.
    let mut star: Option<(usize, usize)> = None;
    while let Some(tc) = text[ti..].chars().next() {
        let pc = pattern[pi..].chars().next();
        match pc {
            // A `*` in the pattern is a wildcard even where the text has a `*` too.
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(pc) if pc == '?' || same(pc, tc) => {
                pi += pc.len_utf8();
                ti += tc.len_utf8();
            }
            _ => match star {
                // The star's run takes one more character of the text.
                Some((sp, st)) => {
                    let grown = st + text[st..].chars().next().map_or(1, char::len_utf8);
                    pi = sp + 1;
                    ti = grown;
                    star = Some((sp, grown));
                }
                None => return false,
            },
        }
    }
    pattern[pi..].bytes().all(|b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key with `*` or `?` in it is matched by a wildcard like any other: a Deny on
    /// `uploads/*` must cover `uploads/*secret` (found by schemathesis through the upload
    /// route's role).
    #[test]
    fn wildcards_match_texts_that_contain_wildcard_characters() {
        assert!(glob("uploads/*", "uploads/*ý"));
        assert!(glob("uploads/*", "uploads/*"));
        assert!(glob("a*b", "a*xb"));
        assert!(glob("a?c", "a*c"));
        assert!(!glob("a*b", "a*c"));
        let deny = Policy::parse(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"},{"Effect":"Deny","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/private/*"}]}"#,
        )
        .expect("valid");
        assert_eq!(
            deny.decide("s3:GetObject", "arn:aws:s3:::b/private/*secret"),
            Decision::ExplicitDeny
        );
    }

    fn policy(s: &str) -> Policy {
        Policy::parse(s).expect("valid policy")
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*/uploads/*", "x/uploads/y/z"));
        assert!(!glob("uploads/*", "processed/x"));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(glob("é?", "éü"));
    }

    /// The evaluator's allocation-free matcher against the obvious one over characters
    /// (what it replaced), on every pattern and text of up to three characters of a small
    /// alphabet with wildcards, multi-byte and mixed-case characters.
    #[test]
    fn glob_matches_the_plain_algorithm() {
        fn plain(p: &str, t: &str, fold: bool) -> bool {
            let low = |s: &str| {
                if fold {
                    s.to_ascii_lowercase()
                } else {
                    s.to_owned()
                }
            };
            let p: Vec<char> = low(p).chars().collect();
            let t: Vec<char> = low(t).chars().collect();
            let (mut pi, mut ti, mut star) = (0, 0, None);
            while ti < t.len() {
                if pi < p.len() && p[pi] == '*' {
                    star = Some((pi, ti));
                    pi += 1;
                } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
                    pi += 1;
                    ti += 1;
                } else if let Some((sp, st)) = star {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                } else {
                    return false;
                }
            }
            p[pi..].iter().all(|c| *c == '*')
        }
        let alphabet = ['a', 'A', 'é', '*', '?', ':'];
        let mut words = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = words
                .iter()
                .filter(|w| w.chars().count() == words.last().map_or(0, |l| l.chars().count()))
                .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                .collect();
            words.extend(longer);
        }
        for p in &words {
            for t in &words {
                assert_eq!(glob(p, t), plain(p, t, false), "glob({p:?}, {t:?})");
                assert_eq!(
                    action_matches(p, t),
                    plain(p, t, true),
                    "action_matches({p:?}, {t:?})"
                );
            }
        }
    }

    #[test]
    fn the_seed_processor_policy() {
        // The seed's Part D: read the stream, read uploads/, write processed/.
        let p = policy(
            r#"{"Version":"2012-10-17","Statement":[
              {"Effect":"Allow","Action":["kinesis:GetRecords","kinesis:GetShardIterator","kinesis:DescribeStream*","kinesis:ListShards"],
               "Resource":"arn:aws:kinesis:us-east-2:000000000000:stream/uploads-stream"},
              {"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::sluice/uploads/*"},
              {"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::sluice/processed/*"}]}"#,
        );
        let stream = "arn:aws:kinesis:us-east-2:000000000000:stream/uploads-stream";
        assert!(p.decide("kinesis:GetRecords", stream).allowed());
        assert!(
            p.decide("Kinesis:getrecords", stream).allowed(),
            "actions ignore case"
        );
        assert!(p.decide("kinesis:DescribeStreamSummary", stream).allowed());
        assert_eq!(
            p.decide("kinesis:PutRecord", stream),
            Decision::ImplicitDeny
        );
        assert_eq!(
            p.decide(
                "kinesis:GetRecords",
                "arn:aws:kinesis:us-east-2:000000000000:stream/other"
            ),
            Decision::ImplicitDeny
        );
        assert!(
            p.decide("s3:GetObject", "arn:aws:s3:::sluice/uploads/a.txt")
                .allowed()
        );
        assert!(
            !p.decide("s3:GetObject", "arn:aws:s3:::sluice/processed/a.txt")
                .allowed()
        );
        assert!(
            p.decide("s3:PutObject", "arn:aws:s3:::sluice/processed/a.txt")
                .allowed()
        );
        assert!(
            !p.decide("s3:DeleteObject", "arn:aws:s3:::sluice/uploads/a.txt")
                .allowed()
        );
        assert!(
            !p.decide("s3:GetObject", "arn:aws:s3:::Sluice/uploads/a.txt")
                .allowed(),
            "resources are case-sensitive"
        );
    }

    #[test]
    fn an_explicit_deny_wins_across_policies() {
        let all = policy(r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}"#);
        let no_delete = policy(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"s3:Delete*","Resource":"arn:aws:s3:::sluice/*"}]}"#,
        );
        let both = [all.clone(), no_delete];
        assert_eq!(
            decide(&both, "s3:DeleteObject", "arn:aws:s3:::sluice/x"),
            Decision::ExplicitDeny
        );
        assert!(decide(&both, "s3:DeleteObject", "arn:aws:s3:::other/x").allowed());
        assert!(decide(&both, "s3:GetObject", "arn:aws:s3:::sluice/x").allowed());
        assert_eq!(
            decide(&[], "s3:GetObject", "arn:aws:s3:::sluice/x"),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn not_action_and_not_resource() {
        let p = policy(
            r#"{"Statement":[{"Effect":"Allow","NotAction":"iam:*","Resource":"*"},
                {"Effect":"Deny","Action":"s3:*","NotResource":["arn:aws:s3:::public","arn:aws:s3:::public/*"]}]}"#,
        );
        assert!(
            p.decide("kinesis:PutRecord", "arn:aws:kinesis:us-east-2:1:stream/s")
                .allowed()
        );
        assert_eq!(p.decide("iam:CreateRole", "*"), Decision::ImplicitDeny);
        assert!(p.decide("s3:GetObject", "arn:aws:s3:::public/a").allowed());
        assert_eq!(
            p.decide("s3:GetObject", "arn:aws:s3:::private/a"),
            Decision::ExplicitDeny
        );
    }

    #[test]
    fn arn_segments_match_on_their_own() {
        let p = policy(
            r#"{"Statement":{"Effect":"Allow","Action":"kinesis:*","Resource":"arn:aws:kinesis:*:*:stream/up*"}}"#,
        );
        assert!(
            p.decide(
                "kinesis:PutRecord",
                "arn:aws:kinesis:eu-west-1:123:stream/uploads"
            )
            .allowed()
        );
        assert!(
            !p.decide(
                "kinesis:PutRecord",
                "arn:aws:kinesis:eu-west-1:123:stream/other"
            )
            .allowed()
        );
        assert!(
            !p.decide("kinesis:PutRecord", "arn:aws:s3:::stream/uploads")
                .allowed()
        );
    }

    #[test]
    fn what_cannot_be_evaluated_is_refused() {
        for (doc, says) in [
            ("[]", "JSON object"),
            ("{", "not valid JSON"),
            (r#"{"Statement":[]}"#, ""),
            (r#"{"Version":"2020-01-01","Statement":[]}"#, "Version"),
            (
                r#"{"Statement":{"Effect":"allow","Action":"*","Resource":"*"}}"#,
                "Effect",
            ),
            (
                r#"{"Statement":{"Effect":"Allow","Resource":"*"}}"#,
                "needs Action",
            ),
            (
                r#"{"Statement":{"Effect":"Allow","Action":"*","NotAction":"s3:*","Resource":"*"}}"#,
                "both Action",
            ),
            (
                r#"{"Statement":{"Effect":"Allow","Action":"GetObject","Resource":"*"}}"#,
                "service:Operation",
            ),
            (
                r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"bucket/*"}}"#,
                "an ARN",
            ),
            (
                r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":[]}}"#,
                "Condition must be an object",
            ),
            (
                r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}}"#,
                "resource policies",
            ),
            (
                r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"arn:aws:s3:::${*}/*"}}"#,
                "not supported",
            ),
            (
                r#"{"Statement":{"Effect":"Allow","Action":[],"Resource":"*"}}"#,
                "empty",
            ),
            (
                r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Extra":1}}"#,
                "unknown",
            ),
        ] {
            match Policy::parse(doc) {
                Err(PolicyError::Malformed(m)) => assert!(m.contains(says), "{doc}: {m}"),
                Ok(_) if says.is_empty() => {}
                Ok(_) => panic!("{doc} was accepted"),
            }
        }
        let big = format!(
            r#"{{"Statement":{{"Effect":"Allow","Action":"*","Resource":"arn:aws:s3:::{}"}}}}"#,
            "x".repeat(MAX_DOCUMENT_BYTES)
        );
        assert!(Policy::parse(&big).is_err());
    }
}
