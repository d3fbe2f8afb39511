//! A pool's attribute schema (`Schema` of CreateUserPool, AddCustomAttributes) and its
//! enforcement on every attribute write.
//!
//! - Standard attributes may be listed to make them `Required` (only at creation, as in
//!   Cognito), immutable, or to constrain a string's length.
//! - Custom attributes are declared without their prefix (`tenant`) and stored as
//!   `custom:tenant`; a `DeveloperOnlyAttribute` as `dev:custom:tenant`, which only
//!   administrators (IAM callers) read and write, and which tokens do not carry.
//! - A value is checked against its type (`String`, `Number`: an integer, `Boolean`:
//!   `true`/`false`, `DateTime`) and constraints; an immutable attribute is refused on
//!   update; a required one must be there when the user is created and cannot be removed.
//!
//! Pools created before sluice enforced schemas have none stored (`schema: None`) and keep
//! accepting any `custom:*` attribute, as they did; every pool created since has one (maybe
//! empty), and Cognito's rule holds there: a custom attribute must be declared.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::IdentityError;

/// What attribute writes are checked against: the pool's declared schema (`None`: a pool
/// from before schemas were enforced) and the attributes its users sign in with. Built by
/// `PoolSettings::attribute_rules`, so that this module needs nothing of `pools`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules<'a> {
    pub(crate) schema: Option<&'a [SchemaAttribute]>,
    pub(crate) sign_in: &'a [String],
}

/// Cognito's limit of custom attributes per pool.
pub const MAX_CUSTOM_ATTRIBUTES: usize = 50;

/// `SchemaAttributeType`. Constraints are strings on the wire, as in Cognito's API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SchemaAttribute {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribute_data_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub developer_only_attribute: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number_attribute_constraints: Option<NumberConstraints>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string_attribute_constraints: Option<StringConstraints>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NumberConstraints {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StringConstraints {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_length: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<String>,
}

/// Standard attributes: name, type, mutable. `sub` is Cognito's and never written.
pub(crate) const STANDARD: &[(&str, &str, bool)] = &[
    ("sub", "String", false),
    ("name", "String", true),
    ("given_name", "String", true),
    ("family_name", "String", true),
    ("middle_name", "String", true),
    ("nickname", "String", true),
    ("preferred_username", "String", true),
    ("profile", "String", true),
    ("picture", "String", true),
    ("website", "String", true),
    ("email", "String", true),
    ("email_verified", "Boolean", true),
    ("gender", "String", true),
    ("birthdate", "String", true),
    ("zoneinfo", "String", true),
    ("locale", "String", true),
    ("phone_number", "String", true),
    ("phone_number_verified", "Boolean", true),
    ("address", "String", true),
    ("updated_at", "Number", true),
    ("identities", "String", true),
];

fn standard(name: &str) -> Option<&'static (&'static str, &'static str, bool)> {
    STANDARD.iter().find(|(n, _, _)| *n == name)
}

fn bad(m: String) -> IdentityError {
    IdentityError::InvalidParameter(m)
}

fn schema_error(attribute: &str, what: &str) -> IdentityError {
    bad(format!(
        "Attributes did not conform to the schema: {attribute}: {what}"
    ))
}

fn parse_bound(v: &Option<String>, what: &str, name: &str) -> Result<Option<i64>, IdentityError> {
    v.as_deref()
        .map(|s| {
            s.trim().parse::<i64>().map_err(|_| {
                bad(format!(
                    "Invalid {what} for schema attribute {name}: {s:?} is not an integer"
                ))
            })
        })
        .transpose()
}

impl SchemaAttribute {
    fn data_type(&self) -> &str {
        self.attribute_data_type.as_deref().unwrap_or("String")
    }

    fn developer_only(&self) -> bool {
        self.developer_only_attribute == Some(true)
    }

    /// The name a user's attribute has in the pool: `custom:x`, `dev:custom:x` or the
    /// standard name.
    pub fn stored_name(&self) -> String {
        if standard(&self.name).is_some() {
            self.name.clone()
        } else if self.developer_only() {
            format!("dev:custom:{}", self.name)
        } else {
            format!("custom:{}", self.name)
        }
    }

    /// Checks a declaration (of CreateUserPool's `Schema` or AddCustomAttributes).
    fn validate(&self, adding_custom: bool) -> Result<(), IdentityError> {
        let name = self.name.as_str();
        let n = name.chars().count();
        if n == 0 || n > 20 || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!(
                "1 validation error detected: Value '{name}' at 'schema.member.name' failed to satisfy constraint: Member must have length less than or equal to 20 and no white space"
            )));
        }
        if !["String", "Number", "DateTime", "Boolean"].contains(&self.data_type()) {
            return Err(bad(format!(
                "1 validation error detected: Value '{}' at 'schema.member.attributeDataType' failed to satisfy constraint: Member must satisfy enum value set: [Boolean, Number, String, DateTime]",
                self.data_type()
            )));
        }
        let is_standard = standard(name).is_some();
        if adding_custom && is_standard {
            return Err(bad(format!("Existing attribute already has name {name}.")));
        }
        if let Some((_, kind, _)) = standard(name) {
            if *kind != self.data_type() {
                return Err(bad(format!(
                    "Invalid AttributeDataType input, consider using the provided AttributeDataType enum: {name} is a {kind}"
                )));
            }
            if name == "sub" {
                return Err(bad("The attribute sub cannot be declared.".into()));
            }
            if self.developer_only() {
                return Err(bad(format!(
                    "Standard attribute {name} cannot be a developer-only attribute."
                )));
            }
        } else if self.required == Some(true) {
            return Err(bad(
                "Required custom attributes are not supported currently.".into(),
            ));
        }
        let (min, max) = match &self.string_attribute_constraints {
            Some(c) => (
                parse_bound(&c.min_length, "MinLength", name)?,
                parse_bound(&c.max_length, "MaxLength", name)?,
            ),
            None => (None, None),
        };
        if min.is_some_and(|m| m < 0)
            || max.is_some_and(|m| m > 2048)
            || min.zip(max).is_some_and(|(a, b)| a > b)
        {
            return Err(bad(format!(
                "Invalid StringAttributeConstraints for {name}: lengths must be within 0 to 2048, MinLength not above MaxLength"
            )));
        }
        if let Some(c) = &self.number_attribute_constraints {
            let (lo, hi) = (
                parse_bound(&c.min_value, "MinValue", name)?,
                parse_bound(&c.max_value, "MaxValue", name)?,
            );
            if lo.zip(hi).is_some_and(|(a, b)| a > b) {
                return Err(bad(format!(
                    "Invalid NumberAttributeConstraints for {name}: MinValue is above MaxValue"
                )));
            }
        }
        Ok(())
    }

    /// Checks one value of this attribute.
    fn check_value(&self, stored: &str, value: &str) -> Result<(), IdentityError> {
        match self.data_type() {
            "Number" => {
                let n: i64 = value
                    .trim()
                    .parse()
                    .map_err(|_| schema_error(stored, "Number must be an integer"))?;
                if let Some(c) = &self.number_attribute_constraints {
                    if let Ok(Some(lo)) = parse_bound(&c.min_value, "MinValue", stored)
                        && n < lo
                    {
                        return Err(schema_error(
                            stored,
                            &format!("Number must be no less than {lo}"),
                        ));
                    }
                    if let Ok(Some(hi)) = parse_bound(&c.max_value, "MaxValue", stored)
                        && n > hi
                    {
                        return Err(schema_error(
                            stored,
                            &format!("Number must be no greater than {hi}"),
                        ));
                    }
                }
            }
            "Boolean" if value != "true" && value != "false" => {
                return Err(schema_error(stored, "Boolean must be true or false"));
            }
            _ => {
                if let Some(c) = &self.string_attribute_constraints {
                    let len = i64::try_from(value.chars().count()).unwrap_or(i64::MAX);
                    if let Ok(Some(lo)) = parse_bound(&c.min_length, "MinLength", stored)
                        && len < lo
                    {
                        return Err(schema_error(
                            stored,
                            &format!("String must be no shorter than {lo} characters"),
                        ));
                    }
                    if let Ok(Some(hi)) = parse_bound(&c.max_length, "MaxLength", stored)
                        && len > hi
                    {
                        return Err(schema_error(
                            stored,
                            &format!("String must be no longer than {hi} characters"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks a CreateUserPool `Schema` (declared names unique, custom ones within the limit).
pub(crate) fn validate_schema(schema: &[SchemaAttribute]) -> Result<(), IdentityError> {
    let mut seen = std::collections::HashSet::new();
    for a in schema {
        a.validate(false)?;
        if !seen.insert(a.stored_name()) {
            return Err(bad(format!("Duplicate schema attribute {}.", a.name)));
        }
    }
    let custom = schema
        .iter()
        .filter(|a| standard(&a.name).is_none())
        .count();
    if custom > MAX_CUSTOM_ATTRIBUTES {
        return Err(IdentityError::LimitExceeded(format!(
            "A user pool can have at most {MAX_CUSTOM_ATTRIBUTES} custom attributes."
        )));
    }
    Ok(())
}

/// AddCustomAttributes on a pool's schema: new custom attributes appended, existing names
/// refused.
pub(crate) fn add_custom(
    declared: &mut Option<Vec<SchemaAttribute>>,
    added: Vec<SchemaAttribute>,
) -> Result<(), IdentityError> {
    if added.is_empty() {
        return Err(bad(
            "1 validation error detected: Value at 'customAttributes' failed to satisfy constraint: Member must have length greater than or equal to 1".into(),
        ));
    }
    let mut schema = declared.clone().unwrap_or_default();
    for mut a in added {
        // Callers may give the prefixed name back; the declared name is the bare one.
        if let Some(bare) = a.name.strip_prefix("custom:") {
            a.name = bare.to_owned();
        }
        a.validate(true)?;
        let stored = a.stored_name();
        let bare = a.name.clone();
        if schema
            .iter()
            .any(|s| s.name == bare && standard(&s.name).is_none())
        {
            return Err(bad(format!(
                "Existing attribute already has name {stored}."
            )));
        }
        schema.push(a);
    }
    validate_schema(&schema)?;
    *declared = Some(schema);
    Ok(())
}

/// How an attribute write comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// The user is being created (SignUp, AdminCreateUser): immutable attributes may be set.
    Create,
    /// Attributes of an existing user change.
    Update,
}

/// The declared attribute a stored name belongs to.
fn declared<'a>(rules: &Rules<'a>, stored: &str) -> Option<&'a SchemaAttribute> {
    rules.schema?.iter().find(|a| a.stored_name() == stored)
}

/// Checks attribute names and values against the pool. `admin`: an IAM caller (may set
/// `*_verified` and developer-only attributes). An empty value removes the attribute.
pub(crate) fn check_attributes(
    rules: &Rules<'_>,
    attrs: &BTreeMap<String, String>,
    admin: bool,
    write: Write,
) -> Result<(), IdentityError> {
    for (k, v) in attrs {
        let decl = declared(rules, k);
        let known = match standard(k) {
            Some(_) => k != "sub" && k != "identities",
            None if k.starts_with("dev:custom:") => admin && decl.is_some(),
            None if k.starts_with("custom:") => {
                decl.is_some() || (rules.schema.is_none() && k.len() > 7 && k.len() <= 32)
            }
            None => false,
        };
        if !known {
            if k == "sub" {
                return Err(schema_error(k, "Attribute cannot be updated."));
            }
            return Err(schema_error(k, "Attribute does not exist in the schema."));
        }
        if v.chars().count() > 2048 {
            return Err(schema_error(
                k,
                "String must be no longer than 2048 characters",
            ));
        }
        if k.ends_with("_verified") {
            if !admin {
                return Err(IdentityError::NotAuthorized(format!(
                    "A client attempted to write unauthorized attribute {k}"
                )));
            }
            if v != "true" && v != "false" {
                return Err(schema_error(k, "must be true or false"));
            }
        }
        if let Some(d) = decl {
            if write == Write::Update && d.mutable == Some(false) {
                return Err(schema_error(
                    k,
                    "Attribute cannot be updated. (changing an immutable attribute)",
                ));
            }
            if v.is_empty() {
                if d.required == Some(true) {
                    return Err(schema_error(k, "The attribute is required"));
                }
            } else {
                d.check_value(k, v)?;
            }
        }
        if v.is_empty() {
            if write == Write::Update && rules.sign_in.iter().any(|a| a == k) {
                return Err(schema_error(
                    k,
                    "Attribute cannot be deleted: users of this pool sign in with it",
                ));
            }
            continue;
        }
        if k == "email" {
            crate::normalize_email(v)?;
        }
        if k == "phone_number"
            && !(v.starts_with('+')
                && (5..=16).contains(&v.len())
                && v[1..].bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad("Invalid phone number format.".into()));
        }
    }
    Ok(())
}

/// Checks that a new user has every required attribute.
pub(crate) fn check_required(
    rules: &Rules<'_>,
    attrs: &BTreeMap<String, String>,
) -> Result<(), IdentityError> {
    for a in rules.schema.unwrap_or_default() {
        let stored = a.stored_name();
        if a.required == Some(true) && attrs.get(&stored).is_none_or(|v| v.is_empty()) {
            return Err(schema_error(&stored, "The attribute is required"));
        }
    }
    Ok(())
}

/// The pool's `SchemaAttributes` as DescribeUserPool shows them: every standard attribute
/// (with what the pool declared about it), then the custom ones.
pub fn described(declared: Option<&[SchemaAttribute]>) -> Vec<SchemaAttribute> {
    let schema = declared.unwrap_or_default();
    let mut out: Vec<SchemaAttribute> = STANDARD
        .iter()
        .filter(|(n, _, _)| *n != "identities")
        .map(|(name, kind, mutable)| {
            let declared = schema.iter().find(|a| a.name == *name);
            let string = (*kind == "String").then(|| StringConstraints {
                min_length: Some("0".into()),
                max_length: Some("2048".into()),
            });
            SchemaAttribute {
                name: (*name).to_owned(),
                attribute_data_type: Some((*kind).to_owned()),
                developer_only_attribute: Some(false),
                mutable: Some(declared.and_then(|d| d.mutable).unwrap_or(*mutable)),
                required: Some(*name == "sub" || declared.and_then(|d| d.required) == Some(true)),
                number_attribute_constraints: (*kind == "Number").then(|| NumberConstraints {
                    min_value: Some("0".into()),
                    max_value: None,
                }),
                string_attribute_constraints: declared
                    .and_then(|d| d.string_attribute_constraints.clone())
                    .or(string),
            }
        })
        .collect();
    out.extend(
        schema
            .iter()
            .filter(|a| standard(&a.name).is_none())
            .map(|a| SchemaAttribute {
                name: a.stored_name(),
                attribute_data_type: Some(a.data_type().to_owned()),
                developer_only_attribute: Some(a.developer_only()),
                mutable: Some(a.mutable != Some(false)),
                required: Some(false),
                ..a.clone()
            }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(name: &str, kind: &str) -> SchemaAttribute {
        SchemaAttribute {
            name: name.into(),
            attribute_data_type: Some(kind.into()),
            ..SchemaAttribute::default()
        }
    }

    fn pool(schema: Vec<SchemaAttribute>) -> Option<Vec<SchemaAttribute>> {
        validate_schema(&schema).expect("valid schema");
        Some(schema)
    }

    fn rules(schema: &Option<Vec<SchemaAttribute>>) -> Rules<'_> {
        Rules {
            schema: schema.as_deref(),
            sign_in: &[],
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn message(r: Result<(), IdentityError>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(()) => panic!("expected an error"),
        }
    }

    #[test]
    fn declarations_are_checked() {
        let mut required_custom = attr("tenant", "String");
        required_custom.required = Some(true);
        assert!(validate_schema(&[required_custom]).is_err());
        assert!(validate_schema(&[attr("email", "Number")]).is_err());
        assert!(validate_schema(&[attr("a name", "String")]).is_err());
        assert!(validate_schema(&[attr("x", "Float")]).is_err());
        assert!(validate_schema(&[attr("x", "String"), attr("x", "String")]).is_err());
        let mut s = attr("s", "String");
        s.string_attribute_constraints = Some(StringConstraints {
            min_length: Some("5".into()),
            max_length: Some("2".into()),
        });
        assert!(validate_schema(&[s]).is_err());
        let many: Vec<_> = (0..51).map(|i| attr(&format!("c{i}"), "String")).collect();
        assert!(matches!(
            validate_schema(&many),
            Err(IdentityError::LimitExceeded(_))
        ));
    }

    #[test]
    fn values_follow_types_constraints_mutability_and_requirement() {
        let mut tier = attr("tier", "Number");
        tier.number_attribute_constraints = Some(NumberConstraints {
            min_value: Some("1".into()),
            max_value: Some("3".into()),
        });
        let mut code = attr("code", "String");
        code.string_attribute_constraints = Some(StringConstraints {
            min_length: Some("2".into()),
            max_length: Some("4".into()),
        });
        code.mutable = Some(false);
        let mut secret = attr("secret", "String");
        secret.developer_only_attribute = Some(true);
        let mut name = attr("name", "String");
        name.required = Some(true);
        let s = pool(vec![tier, code, secret, attr("vip", "Boolean"), name]);

        let ok = |pairs: &[(&str, &str)], admin, write| {
            check_attributes(&rules(&s), &map(pairs), admin, write)
        };
        ok(
            &[
                ("custom:tier", "2"),
                ("custom:code", "ab"),
                ("custom:vip", "true"),
            ],
            false,
            Write::Create,
        )
        .expect("valid");
        assert!(
            message(ok(&[("custom:tier", "4")], false, Write::Create))
                .contains("no greater than 3")
        );
        assert!(message(ok(&[("custom:tier", "x")], false, Write::Create)).contains("integer"));
        assert!(
            message(ok(&[("custom:code", "abcde")], false, Write::Create))
                .contains("no longer than 4")
        );
        assert!(message(ok(&[("custom:vip", "yes")], false, Write::Create)).contains("Boolean"));
        assert!(
            message(ok(&[("custom:nope", "1")], false, Write::Create)).contains("does not exist")
        );
        assert!(message(ok(&[("custom:code", "ab")], true, Write::Update)).contains("immutable"));
        assert!(message(ok(&[("name", "")], true, Write::Update)).contains("required"));
        // Developer-only: administrators only, under its dev: name.
        ok(&[("dev:custom:secret", "s3")], true, Write::Update).expect("admin");
        assert!(
            message(ok(&[("dev:custom:secret", "s3")], false, Write::Update))
                .contains("does not exist")
        );
        assert!(
            message(ok(&[("custom:secret", "s3")], true, Write::Update)).contains("does not exist")
        );

        assert!(
            message(check_required(&rules(&s), &map(&[("email", "a@b.c")])))
                .contains("name: The attribute is required")
        );
        check_required(&rules(&s), &map(&[("name", "Ann")])).expect("present");
    }

    #[test]
    fn pools_without_a_stored_schema_keep_accepting_any_custom_attribute() {
        let legacy = None;
        check_attributes(
            &rules(&legacy),
            &map(&[("custom:anything", "x")]),
            false,
            Write::Create,
        )
        .expect("as before");
        let strict = pool(Vec::new());
        assert!(
            check_attributes(
                &rules(&strict),
                &map(&[("custom:anything", "x")]),
                false,
                Write::Create
            )
            .is_err()
        );
    }

    #[test]
    fn adding_custom_attributes() {
        let mut s = pool(vec![attr("tenant", "String")]);
        assert!(
            message(add_custom(&mut s, vec![attr("tenant", "String")])).contains("custom:tenant")
        );
        assert!(add_custom(&mut s, vec![attr("email", "String")]).is_err());
        add_custom(&mut s, vec![attr("custom:plan", "String")]).expect("added");
        let names: Vec<_> = described(s.as_deref())
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert!(
            names.contains(&"custom:plan".to_owned())
                && names.contains(&"custom:tenant".to_owned())
        );
        assert!(names.contains(&"sub".to_owned()) && names.contains(&"email".to_owned()));
    }
}
