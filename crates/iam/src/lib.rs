//! IAM, as the seed's scripts use it: users, groups and roles, their inline and attached
//! policies, customer managed policies with versions, the AWS managed policies of
//! [`managed::CATALOG`], and users' access keys ([`Iam`], the registry).
//!
//! Every entity is a row of the metadata engine, so every process sharing the engine sees
//! the same IAM. Names are unique without regard to case, as IAM's are (`Alice` and `alice`
//! are one user), and keep the case they were created with.
//!
//! **One evaluator.** Policies are `sluice-policy` documents: a user's key is allowed what
//! the union of the user's inline, attached and groups' policies allows, decided by the same
//! evaluator as the scoped keys of `sluice keys` ([`Iam`] implements
//! [`sluice_identity::access_keys::UserDirectory`] for the edge). A change to a user's
//! permissions is seen by this process at once and by others within the key cache's few
//! seconds, as IAM's own changes take a moment to reach every server.
//!
//! **Users' keys** are the keys `sluice keys` manages, marked with their user and status
//! (`access_keys.user_name`, `status`).
//!
//! Roles are assumed through [`sts`] (AssumeRole: the trust policy decides; the session's
//! temporary key is an `access_keys` row with a token hash and an expiry). Not yet here:
//! functions running as their execution role.

pub mod guard;
pub mod managed;
pub mod sts;
mod validate;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sluice_identity::IdentityError;
use sluice_identity::access_keys::{AccessKey, AccessKeys, UserDirectory, UserGrant, UserKeyInfo};
use sluice_meta::{Meta, MetaError, Migration, Tx, now_ms, params};
use sluice_policy::Policy;

pub use validate::{validate_name, validate_path};

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "iam-0001",
    sql: "
CREATE TABLE iam_entities (
    kind TEXT NOT NULL,
    name_key TEXT NOT NULL,
    name TEXT NOT NULL,
    id TEXT NOT NULL,
    path TEXT NOT NULL,
    doc TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, name_key)
);
CREATE TABLE iam_inline (
    kind TEXT NOT NULL,
    owner_key TEXT NOT NULL,
    name_key TEXT NOT NULL,
    name TEXT NOT NULL,
    document TEXT NOT NULL,
    PRIMARY KEY (kind, owner_key, name_key)
);
CREATE TABLE iam_attached (
    kind TEXT NOT NULL,
    owner_key TEXT NOT NULL,
    policy_arn TEXT NOT NULL,
    PRIMARY KEY (kind, owner_key, policy_arn)
);
CREATE INDEX iam_attached_by_policy ON iam_attached (policy_arn);
CREATE TABLE iam_members (
    group_key TEXT NOT NULL,
    user_key TEXT NOT NULL,
    PRIMARY KEY (group_key, user_key)
);
CREATE INDEX iam_members_by_user ON iam_members (user_key);
CREATE TABLE iam_policies (
    arn TEXT PRIMARY KEY,
    name_key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    id TEXT NOT NULL,
    path TEXT NOT NULL,
    description TEXT,
    default_version TEXT NOT NULL,
    next_version INTEGER NOT NULL,
    tags TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE iam_policy_versions (
    arn TEXT NOT NULL,
    version_id TEXT NOT NULL,
    document TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (arn, version_id)
);
",
}];

/// IAM's limits, as its quotas page gives the defaults.
pub mod limits {
    /// Managed policies attached to one user, group or role.
    pub const ATTACHED_PER_ENTITY: u64 = 20;
    /// Versions of one customer managed policy.
    pub const VERSIONS_PER_POLICY: u64 = 5;
    /// Access keys of one user.
    pub const KEYS_PER_USER: u64 = 2;
    /// Tags on one user or role.
    pub const TAGS_PER_ENTITY: usize = 50;
    /// Groups one user may be in.
    pub const GROUPS_PER_USER: u64 = 10;
}

#[derive(Debug, thiserror::Error)]
pub enum IamError {
    /// `NoSuchEntity` (404).
    #[error("{0}")]
    NoSuchEntity(String),
    /// `EntityAlreadyExists` (409).
    #[error("{0}")]
    EntityAlreadyExists(String),
    /// `DeleteConflict` (409).
    #[error("{0}")]
    DeleteConflict(String),
    /// `LimitExceeded` (409).
    #[error("{0}")]
    LimitExceeded(String),
    /// `MalformedPolicyDocument` (400).
    #[error("{0}")]
    MalformedPolicyDocument(String),
    /// `InvalidInput` (400).
    #[error("{0}")]
    InvalidInput(String),
    /// `ValidationError` (400): a parameter fails its constraint.
    #[error("{0}")]
    Validation(String),
    /// `AccessDenied` (403): a role's trust policy does not let the caller assume it.
    #[error("{0}")]
    AccessDenied(String),
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error("access keys: {0}")]
    Keys(IdentityError),
}

impl From<IdentityError> for IamError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::LimitExceeded(m) => IamError::LimitExceeded(m),
            IdentityError::ResourceNotFound(m) => IamError::NoSuchEntity(m),
            IdentityError::Meta(m) => IamError::Meta(m),
            other => IamError::Keys(other),
        }
    }
}

impl IamError {
    /// The engine is down or full: 503.
    pub fn is_unavailable(&self) -> bool {
        match self {
            IamError::Meta(m) | IamError::Keys(IdentityError::Meta(m)) => {
                m.is_unavailable() || m.is_full()
            }
            _ => false,
        }
    }
}

/// Users, groups and roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Group,
    Role,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Group => "group",
            Kind::Role => "role",
        }
    }

    /// The prefix of the entity's unique id, as IAM's.
    fn id_prefix(self) -> &'static str {
        match self {
            Kind::User => "AIDA",
            Kind::Group => "AGPA",
            Kind::Role => "AROA",
        }
    }

    /// Longest name IAM allows.
    fn max_name(self) -> usize {
        match self {
            Kind::Group => 128,
            Kind::User | Kind::Role => 64,
        }
    }

    fn missing(self, name: &str) -> IamError {
        IamError::NoSuchEntity(format!(
            "The {} with name {name} cannot be found.",
            self.as_str()
        ))
    }
}

/// A user, group or role.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub kind: Kind,
    pub name: String,
    pub id: String,
    pub path: String,
    pub arn: String,
    pub created_ms: i64,
    pub description: Option<String>,
    /// Roles: the trust policy (JSON).
    pub assume_role_policy: Option<String>,
    /// Roles: the longest session, in seconds.
    pub max_session_duration: Option<i64>,
    pub tags: Vec<(String, String)>,
}

/// What CreateUser / CreateGroup / CreateRole give.
#[derive(Debug, Clone, Default)]
pub struct NewEntity {
    pub name: String,
    pub path: Option<String>,
    pub description: Option<String>,
    pub assume_role_policy: Option<String>,
    pub max_session_duration: Option<i64>,
    pub tags: Vec<(String, String)>,
}

/// A managed policy: an AWS managed one of the catalog or a customer managed one.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedPolicy {
    pub arn: String,
    pub name: String,
    pub id: String,
    pub path: String,
    pub description: Option<String>,
    pub default_version: String,
    pub attachment_count: i64,
    pub created: String,
    pub updated: String,
    pub aws_managed: bool,
    pub tags: Vec<(String, String)>,
}

/// One version of a managed policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyVersion {
    pub version_id: String,
    pub document: String,
    pub is_default: bool,
    pub created: String,
}

/// ListPolicies' `Scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Aws,
    Local,
}

/// The IAM registry.
#[derive(Clone)]
pub struct Iam {
    db: Meta,
    account_id: String,
    keys: AccessKeys,
    /// Bumped by every change of permissions through this process: the role guards
    /// (`guard.rs`) re-read their policies when it moved.
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn key_of(name: &str) -> String {
    name.to_lowercase()
}

/// RFC 3339 with seconds, as IAM writes dates.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn unique_id(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::thread_rng();
    let tail: String = (0..17)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

fn tags_json(tags: &[(String, String)]) -> Value {
    Value::Array(tags.iter().map(|(k, v)| json!([k, v])).collect())
}

fn tags_from(v: Option<&Value>) -> Vec<(String, String)> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    Some((
                        t.get(0)?.as_str()?.to_owned(),
                        t.get(1)?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Merges `new` into `tags`: a key already there gets the new value.
fn merge_tags(tags: &mut Vec<(String, String)>, new: &[(String, String)]) -> Result<(), IamError> {
    for (k, v) in new {
        match tags.iter_mut().find(|(tk, _)| tk == k) {
            Some(t) => t.1 = v.clone(),
            None => tags.push((k.clone(), v.clone())),
        }
    }
    if tags.len() > limits::TAGS_PER_ENTITY {
        return Err(IamError::LimitExceeded(format!(
            "The number of tags has reached the maximum limit of {}.",
            limits::TAGS_PER_ENTITY
        )));
    }
    Ok(())
}

/// Parses an identity policy document as IAM validates it.
pub fn parse_identity_policy(document: &str) -> Result<Policy, IamError> {
    Policy::parse(document).map_err(|e| IamError::MalformedPolicyDocument(e.to_string()))
}

type EntityRow = (String, String, String, String, i64);

fn entity_from(kind: Kind, account_id: &str, row: EntityRow) -> Result<Entity, IamError> {
    let (name, id, path, doc, created_ms) = row;
    let d: Value = serde_json::from_str(&doc)
        .map_err(|e| IamError::Meta(MetaError::Type(format!("iam entity {name}: {e}"))))?;
    Ok(Entity {
        kind,
        arn: format!("arn:aws:iam::{account_id}:{}{path}{name}", kind.as_str()),
        name,
        id,
        path,
        created_ms,
        description: d
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        assume_role_policy: d
            .get("assumeRolePolicy")
            .and_then(Value::as_str)
            .map(str::to_owned),
        max_session_duration: d.get("maxSessionDuration").and_then(Value::as_i64),
        tags: tags_from(d.get("tags")),
    })
}

fn entity_doc(e: &Entity) -> String {
    let mut d = serde_json::Map::new();
    if let Some(v) = &e.description {
        d.insert("description".into(), json!(v));
    }
    if let Some(v) = &e.assume_role_policy {
        d.insert("assumeRolePolicy".into(), json!(v));
    }
    if let Some(v) = e.max_session_duration {
        d.insert("maxSessionDuration".into(), json!(v));
    }
    d.insert("tags".into(), tags_json(&e.tags));
    Value::Object(d).to_string()
}

fn read_entity(tx: &Tx<'_>, kind: Kind, name: &str, account_id: &str) -> Result<Entity, IamError> {
    let row: Option<EntityRow> = tx.query_opt(
        "SELECT name, id, path, doc, created_ms FROM iam_entities WHERE kind = ?1 AND name_key = ?2",
        params![kind.as_str(), key_of(name)],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?;
    match row {
        Some(row) => entity_from(kind, account_id, row),
        None => Err(kind.missing(name)),
    }
}

fn write_entity(tx: &Tx<'_>, e: &Entity) -> Result<(), IamError> {
    tx.execute(
        "UPDATE iam_entities SET doc = ?3 WHERE kind = ?1 AND name_key = ?2",
        params![e.kind.as_str(), key_of(&e.name), entity_doc(e)],
    )?;
    Ok(())
}

impl Iam {
    pub fn new(db: Meta, account_id: &str, keys: AccessKeys) -> Self {
        Iam {
            db,
            account_id: account_id.to_owned(),
            keys,
            generation: Default::default(),
        }
    }

    /// How many permission changes this process has made (see `guard.rs`).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// A user's permissions may have changed: keys are looked up afresh.
    fn permissions_changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.keys.forget_all();
    }

    // ---- users, groups, roles ----

    /// CreateUser / CreateGroup / CreateRole.
    pub async fn create(&self, kind: Kind, new: NewEntity) -> Result<Entity, IamError> {
        validate_name(
            &new.name,
            kind.max_name(),
            &format!("{}Name", kind.as_str()),
        )?;
        let path = new.path.clone().unwrap_or_else(|| "/".into());
        validate_path(&path)?;
        validate::tags(&new.tags)?;
        if let Some(d) = &new.description {
            validate::description(d)?;
        }
        let (assume, max_session) = match kind {
            Kind::Role => {
                let doc = new.assume_role_policy.clone().ok_or_else(|| {
                    IamError::Validation(
                        "1 validation error detected: Value null at 'assumeRolePolicyDocument' failed to satisfy constraint: Member must not be null".into(),
                    )
                })?;
                validate::trust_policy(&doc)?;
                let max = new.max_session_duration.unwrap_or(3600);
                validate::max_session(max)?;
                (Some(doc), Some(max))
            }
            _ => (None, None),
        };
        let e = Entity {
            kind,
            name: new.name.clone(),
            id: unique_id(kind.id_prefix()),
            arn: format!(
                "arn:aws:iam::{}:{}{path}{}",
                self.account_id,
                kind.as_str(),
                new.name
            ),
            path,
            created_ms: now_ms(),
            description: new.description.clone(),
            assume_role_policy: assume,
            max_session_duration: max_session,
            tags: new.tags.clone(),
        };
        let row = e.clone();
        self.db
            .write(move |tx| {
                let exists = tx.exists(
                    "SELECT 1 FROM iam_entities WHERE kind = ?1 AND name_key = ?2",
                    params![row.kind.as_str(), key_of(&row.name)],
                )?;
                if exists {
                    return Err(IamError::EntityAlreadyExists(format!(
                        "{} with name {} already exists.",
                        capitalized(row.kind.as_str()),
                        row.name
                    )));
                }
                tx.execute(
                    "INSERT INTO iam_entities (kind, name_key, name, id, path, doc, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        row.kind.as_str(),
                        key_of(&row.name),
                        &row.name,
                        &row.id,
                        &row.path,
                        entity_doc(&row),
                        row.created_ms
                    ],
                )?;
                Ok(())
            })
            .await?;
        Ok(e)
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Entity, IamError> {
        let (name, account) = (name.to_owned(), self.account_id.clone());
        self.db
            .read(move |c| read_entity(c, kind, &name, &account))
            .await
    }

    /// Every entity of a kind whose path starts with `path_prefix`, by name.
    pub async fn list(&self, kind: Kind, path_prefix: &str) -> Result<Vec<Entity>, IamError> {
        let account = self.account_id.clone();
        let prefix = path_prefix.to_owned();
        let rows: Vec<EntityRow> = self
            .db
            .read(move |c| {
                Ok::<_, IamError>(c.query_vec(
                    "SELECT name, id, path, doc, created_ms FROM iam_entities WHERE kind = ?1 ORDER BY name_key",
                    params![kind.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )?)
            })
            .await?;
        rows.into_iter()
            .filter(|r| r.2.starts_with(&prefix))
            .map(|r| entity_from(kind, &account, r))
            .collect()
    }

    /// UpdateRole (`Description`, `MaxSessionDuration`), UpdateUser / UpdateGroup
    /// (`NewPath`).
    pub async fn update(
        &self,
        kind: Kind,
        name: &str,
        description: Option<String>,
        max_session_duration: Option<i64>,
        new_path: Option<String>,
    ) -> Result<Entity, IamError> {
        if let Some(d) = &description {
            validate::description(d)?;
        }
        if let Some(m) = max_session_duration {
            validate::max_session(m)?;
        }
        if let Some(p) = &new_path {
            validate_path(p)?;
        }
        let (name, account) = (name.to_owned(), self.account_id.clone());
        self.db
            .write(move |tx| {
                let mut e = read_entity(tx, kind, &name, &account)?;
                if description.is_some() {
                    e.description = description.clone();
                }
                if max_session_duration.is_some() {
                    e.max_session_duration = max_session_duration;
                }
                if let Some(p) = new_path.clone() {
                    tx.execute(
                        "UPDATE iam_entities SET path = ?3 WHERE kind = ?1 AND name_key = ?2",
                        params![kind.as_str(), key_of(&e.name), &p],
                    )?;
                    e.arn = format!("arn:aws:iam::{account}:{}{p}{}", kind.as_str(), e.name);
                    e.path = p;
                }
                write_entity(tx, &e)?;
                Ok(e)
            })
            .await
    }

    /// UpdateAssumeRolePolicy.
    pub async fn update_trust(&self, role: &str, document: &str) -> Result<(), IamError> {
        validate::trust_policy(document)?;
        let (name, account, doc) = (
            role.to_owned(),
            self.account_id.clone(),
            document.to_owned(),
        );
        self.db
            .write(move |tx| {
                let mut e = read_entity(tx, Kind::Role, &name, &account)?;
                e.assume_role_policy = Some(doc.clone());
                write_entity(tx, &e)
            })
            .await
    }

    /// TagUser / TagRole.
    pub async fn tag(
        &self,
        kind: Kind,
        name: &str,
        tags: Vec<(String, String)>,
    ) -> Result<(), IamError> {
        validate::tags(&tags)?;
        let (name, account) = (name.to_owned(), self.account_id.clone());
        self.db
            .write(move |tx| {
                let mut e = read_entity(tx, kind, &name, &account)?;
                merge_tags(&mut e.tags, &tags)?;
                write_entity(tx, &e)
            })
            .await?;
        // Users' tags are `aws:PrincipalTag/…` in their policies' conditions.
        self.permissions_changed();
        Ok(())
    }

    /// UntagUser / UntagRole.
    pub async fn untag(&self, kind: Kind, name: &str, keys: Vec<String>) -> Result<(), IamError> {
        let (name, account) = (name.to_owned(), self.account_id.clone());
        self.db
            .write(move |tx| {
                let mut e = read_entity(tx, kind, &name, &account)?;
                e.tags.retain(|(k, _)| !keys.contains(k));
                write_entity(tx, &e)
            })
            .await?;
        self.permissions_changed();
        Ok(())
    }

    /// DeleteUser / DeleteGroup / DeleteRole: refused while the entity has policies, keys,
    /// members or groups, as IAM refuses it.
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<(), IamError> {
        let (name, account) = (name.to_owned(), self.account_id.clone());
        self.db
            .write(move |tx| {
                let e = read_entity(tx, kind, &name, &account)?;
                let k = key_of(&e.name);
                let conflict = |m: &str| Err(IamError::DeleteConflict(format!("Cannot delete entity, {m}.")));
                if kind == Kind::User
                    // The access keys of `sluice-identity`, in the same transaction.
                    && tx.exists("SELECT 1 FROM access_keys WHERE user_name = ?1", params![&e.name])?
                {
                    return conflict("must delete access keys first");
                }
                if tx.exists(
                    "SELECT 1 FROM iam_inline WHERE kind = ?1 AND owner_key = ?2",
                    params![kind.as_str(), &k],
                )? {
                    return conflict("must delete policies first");
                }
                if tx.exists(
                    "SELECT 1 FROM iam_attached WHERE kind = ?1 AND owner_key = ?2",
                    params![kind.as_str(), &k],
                )? {
                    return conflict("must detach all policies first");
                }
                let members = match kind {
                    Kind::User => tx.exists("SELECT 1 FROM iam_members WHERE user_key = ?1", params![&k])?,
                    Kind::Group => tx.exists("SELECT 1 FROM iam_members WHERE group_key = ?1", params![&k])?,
                    Kind::Role => false,
                };
                if members {
                    return conflict("must remove users from group first");
                }
                tx.execute(
                    "DELETE FROM iam_entities WHERE kind = ?1 AND name_key = ?2",
                    params![kind.as_str(), &k],
                )?;
                Ok(())
            })
            .await
    }

    // ---- inline policies ----

    /// PutUserPolicy / PutGroupPolicy / PutRolePolicy (creates or replaces).
    pub async fn put_inline(
        &self,
        kind: Kind,
        owner: &str,
        policy_name: &str,
        document: &str,
    ) -> Result<(), IamError> {
        validate_name(policy_name, 128, "policyName")?;
        parse_identity_policy(document)?;
        let (owner, name, doc, account) = (
            owner.to_owned(),
            policy_name.to_owned(),
            document.to_owned(),
            self.account_id.clone(),
        );
        self.db
            .write(move |tx| {
                let e = read_entity(tx, kind, &owner, &account)?;
                let k = key_of(&e.name);
                tx.execute(
                    "DELETE FROM iam_inline WHERE kind = ?1 AND owner_key = ?2 AND name_key = ?3",
                    params![kind.as_str(), &k, key_of(&name)],
                )?;
                tx.execute(
                    "INSERT INTO iam_inline (kind, owner_key, name_key, name, document) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![kind.as_str(), &k, key_of(&name), &name, &doc],
                )?;
                Ok::<_, IamError>(())
            })
            .await?;
        self.permissions_changed();
        Ok(())
    }

    /// GetUserPolicy / GetGroupPolicy / GetRolePolicy: the policy's name and document.
    pub async fn get_inline(
        &self,
        kind: Kind,
        owner: &str,
        policy_name: &str,
    ) -> Result<(String, String), IamError> {
        let (owner, name, account) = (
            owner.to_owned(),
            policy_name.to_owned(),
            self.account_id.clone(),
        );
        self.db
            .read(move |c| {
                let e = read_entity(c, kind, &owner, &account)?;
                c.query_opt(
                    "SELECT name, document FROM iam_inline WHERE kind = ?1 AND owner_key = ?2 AND name_key = ?3",
                    params![kind.as_str(), key_of(&e.name), key_of(&name)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .ok_or_else(|| {
                    IamError::NoSuchEntity(format!(
                        "The {} policy with name {name} cannot be found.",
                        kind.as_str()
                    ))
                })
            })
            .await
    }

    /// ListUserPolicies / ListGroupPolicies / ListRolePolicies: names, in order.
    pub async fn list_inline(&self, kind: Kind, owner: &str) -> Result<Vec<String>, IamError> {
        let (owner, account) = (owner.to_owned(), self.account_id.clone());
        self.db
            .read(move |c| {
                let e = read_entity(c, kind, &owner, &account)?;
                Ok(c.query_vec(
                    "SELECT name FROM iam_inline WHERE kind = ?1 AND owner_key = ?2 ORDER BY name_key",
                    params![kind.as_str(), key_of(&e.name)],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    /// DeleteUserPolicy / DeleteGroupPolicy / DeleteRolePolicy.
    pub async fn delete_inline(
        &self,
        kind: Kind,
        owner: &str,
        policy_name: &str,
    ) -> Result<(), IamError> {
        let (owner, name, account) = (
            owner.to_owned(),
            policy_name.to_owned(),
            self.account_id.clone(),
        );
        self.db
            .write(move |tx| {
                let e = read_entity(tx, kind, &owner, &account)?;
                let n = tx.execute(
                    "DELETE FROM iam_inline WHERE kind = ?1 AND owner_key = ?2 AND name_key = ?3",
                    params![kind.as_str(), key_of(&e.name), key_of(&name)],
                )?;
                if n == 0 {
                    return Err(IamError::NoSuchEntity(format!(
                        "The {} policy with name {name} cannot be found.",
                        kind.as_str()
                    )));
                }
                Ok(())
            })
            .await?;
        self.permissions_changed();
        Ok(())
    }

    // ---- attached managed policies ----

    /// AttachUserPolicy / AttachGroupPolicy / AttachRolePolicy (attaching twice is a no-op,
    /// as in IAM).
    pub async fn attach(&self, kind: Kind, owner: &str, policy_arn: &str) -> Result<(), IamError> {
        let (owner, arn, account) = (
            owner.to_owned(),
            policy_arn.to_owned(),
            self.account_id.clone(),
        );
        self.db
            .write(move |tx| {
                let e = read_entity(tx, kind, &owner, &account)?;
                if managed::by_arn(&arn).is_none()
                    && !tx.exists("SELECT 1 FROM iam_policies WHERE arn = ?1", params![&arn])?
                {
                    return Err(IamError::NoSuchEntity(format!(
                        "Policy {arn} does not exist or is not attachable."
                    )));
                }
                let k = key_of(&e.name);
                if tx.exists(
                    "SELECT 1 FROM iam_attached WHERE kind = ?1 AND owner_key = ?2 AND policy_arn = ?3",
                    params![kind.as_str(), &k, &arn],
                )? {
                    return Ok(());
                }
                let n: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM iam_attached WHERE kind = ?1 AND owner_key = ?2",
                    params![kind.as_str(), &k],
                    |r| r.get(0),
                )?;
                if n as u64 >= limits::ATTACHED_PER_ENTITY {
                    return Err(IamError::LimitExceeded(format!(
                        "Cannot exceed quota for PoliciesPer{}: {}",
                        capitalized(kind.as_str()),
                        limits::ATTACHED_PER_ENTITY
                    )));
                }
                tx.execute(
                    "INSERT INTO iam_attached (kind, owner_key, policy_arn) VALUES (?1, ?2, ?3)",
                    params![kind.as_str(), &k, &arn],
                )?;
                Ok(())
            })
            .await?;
        self.permissions_changed();
        Ok(())
    }

    /// DetachUserPolicy / DetachGroupPolicy / DetachRolePolicy.
    pub async fn detach(&self, kind: Kind, owner: &str, policy_arn: &str) -> Result<(), IamError> {
        let (owner, arn, account) = (
            owner.to_owned(),
            policy_arn.to_owned(),
            self.account_id.clone(),
        );
        self.db
            .write(move |tx| {
                let e = read_entity(tx, kind, &owner, &account)?;
                let n = tx.execute(
                    "DELETE FROM iam_attached WHERE kind = ?1 AND owner_key = ?2 AND policy_arn = ?3",
                    params![kind.as_str(), key_of(&e.name), &arn],
                )?;
                if n == 0 {
                    return Err(IamError::NoSuchEntity(format!(
                        "Policy {arn} was not found."
                    )));
                }
                Ok(())
            })
            .await?;
        self.permissions_changed();
        Ok(())
    }

    /// ListAttachedUserPolicies / …: `(name, arn)` of each, by ARN.
    pub async fn list_attached(
        &self,
        kind: Kind,
        owner: &str,
    ) -> Result<Vec<(String, String)>, IamError> {
        let (owner, account) = (owner.to_owned(), self.account_id.clone());
        let arns: Vec<String> = self
            .db
            .read(move |c| {
                let e = read_entity(c, kind, &owner, &account)?;
                Ok::<_, IamError>(c.query_vec(
                    "SELECT policy_arn FROM iam_attached WHERE kind = ?1 AND owner_key = ?2 ORDER BY policy_arn",
                    params![kind.as_str(), key_of(&e.name)],
                    |r| r.get(0),
                )?)
            })
            .await?;
        Ok(arns
            .into_iter()
            .map(|arn| {
                let name = arn.rsplit('/').next().unwrap_or(&arn).to_owned();
                (name, arn)
            })
            .collect())
    }

    // ---- groups ----

    /// AddUserToGroup (adding twice is a no-op).
    pub async fn add_to_group(&self, group: &str, user: &str) -> Result<(), IamError> {
        let (group, user, account) = (group.to_owned(), user.to_owned(), self.account_id.clone());
        self.db
            .write(move |tx| {
                let g = read_entity(tx, Kind::Group, &group, &account)?;
                let u = read_entity(tx, Kind::User, &user, &account)?;
                let (gk, uk) = (key_of(&g.name), key_of(&u.name));
                if tx.exists(
                    "SELECT 1 FROM iam_members WHERE group_key = ?1 AND user_key = ?2",
                    params![&gk, &uk],
                )? {
                    return Ok(());
                }
                let n: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM iam_members WHERE user_key = ?1",
                    params![&uk],
                    |r| r.get(0),
                )?;
                if n as u64 >= limits::GROUPS_PER_USER {
                    return Err(IamError::LimitExceeded(format!(
                        "Cannot exceed quota for GroupsPerUser: {}",
                        limits::GROUPS_PER_USER
                    )));
                }
                tx.execute(
                    "INSERT INTO iam_members (group_key, user_key) VALUES (?1, ?2)",
                    params![&gk, &uk],
                )?;
                Ok(())
            })
            .await?;
        self.permissions_changed();
        Ok(())
    }

    /// RemoveUserFromGroup.
    pub async fn remove_from_group(&self, group: &str, user: &str) -> Result<(), IamError> {
        let (group, user, account) = (group.to_owned(), user.to_owned(), self.account_id.clone());
        self.db
            .write(move |tx| {
                let g = read_entity(tx, Kind::Group, &group, &account)?;
                let u = read_entity(tx, Kind::User, &user, &account)?;
                let n = tx.execute(
                    "DELETE FROM iam_members WHERE group_key = ?1 AND user_key = ?2",
                    params![key_of(&g.name), key_of(&u.name)],
                )?;
                if n == 0 {
                    return Err(IamError::NoSuchEntity(format!(
                        "User {} is not in group {}.",
                        u.name, g.name
                    )));
                }
                Ok(())
            })
            .await?;
        self.permissions_changed();
        Ok(())
    }

    /// GetGroup: the group and its users, by name.
    pub async fn group_members(&self, group: &str) -> Result<(Entity, Vec<Entity>), IamError> {
        let (group, account) = (group.to_owned(), self.account_id.clone());
        self.db
            .read(move |c| {
                let g = read_entity(c, Kind::Group, &group, &account)?;
                let rows: Vec<EntityRow> = c.query_vec(
                    "SELECT e.name, e.id, e.path, e.doc, e.created_ms FROM iam_members m JOIN iam_entities e ON e.kind = 'user' AND e.name_key = m.user_key WHERE m.group_key = ?1 ORDER BY e.name_key",
                    params![key_of(&g.name)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )?;
                let users = rows
                    .into_iter()
                    .map(|r| entity_from(Kind::User, &account, r))
                    .collect::<Result<_, _>>()?;
                Ok((g, users))
            })
            .await
    }

    /// ListGroupsForUser.
    pub async fn groups_of(&self, user: &str) -> Result<Vec<Entity>, IamError> {
        let (user, account) = (user.to_owned(), self.account_id.clone());
        self.db
            .read(move |c| {
                let u = read_entity(c, Kind::User, &user, &account)?;
                let rows: Vec<EntityRow> = c.query_vec(
                    "SELECT e.name, e.id, e.path, e.doc, e.created_ms FROM iam_members m JOIN iam_entities e ON e.kind = 'group' AND e.name_key = m.group_key WHERE m.user_key = ?1 ORDER BY e.name_key",
                    params![key_of(&u.name)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )?;
                rows.into_iter()
                    .map(|r| entity_from(Kind::Group, &account, r))
                    .collect()
            })
            .await
    }

    // ---- managed policies ----

    /// CreatePolicy: version `v1`, the default.
    pub async fn create_policy(
        &self,
        name: &str,
        path: Option<&str>,
        document: &str,
        description: Option<&str>,
        tags: Vec<(String, String)>,
    ) -> Result<ManagedPolicy, IamError> {
        validate_name(name, 128, "policyName")?;
        let path = path.unwrap_or("/").to_owned();
        validate_path(&path)?;
        if let Some(d) = description {
            validate::description(d)?;
        }
        validate::tags(&tags)?;
        parse_identity_policy(document)?;
        let arn = format!("arn:aws:iam::{}:policy{path}{name}", self.account_id);
        let now = now_ms();
        let p = ManagedPolicy {
            arn: arn.clone(),
            name: name.to_owned(),
            id: unique_id("ANPA"),
            path,
            description: description.map(str::to_owned),
            default_version: "v1".into(),
            attachment_count: 0,
            created: iso(now),
            updated: iso(now),
            aws_managed: false,
            tags,
        };
        let (row, doc) = (p.clone(), document.to_owned());
        self.db
            .write(move |tx| {
                if tx.exists(
                    "SELECT 1 FROM iam_policies WHERE name_key = ?1 OR arn = ?2",
                    params![key_of(&row.name), &row.arn],
                )? {
                    return Err(IamError::EntityAlreadyExists(format!(
                        "A policy called {} already exists. Duplicate names are not allowed.",
                        row.name
                    )));
                }
                tx.execute(
                    "INSERT INTO iam_policies (arn, name_key, name, id, path, description, default_version, next_version, tags, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'v1', 2, ?7, ?8, ?8)",
                    params![
                        &row.arn,
                        key_of(&row.name),
                        &row.name,
                        &row.id,
                        &row.path,
                        &row.description,
                        tags_json(&row.tags).to_string(),
                        now
                    ],
                )?;
                tx.execute(
                    "INSERT INTO iam_policy_versions (arn, version_id, document, created_ms) VALUES (?1, 'v1', ?2, ?3)",
                    params![&row.arn, &doc, now],
                )?;
                Ok(())
            })
            .await?;
        Ok(p)
    }

    /// GetPolicy.
    pub async fn get_policy(&self, arn: &str) -> Result<ManagedPolicy, IamError> {
        let a = arn.to_owned();
        let (attached, stored) = self
            .db
            .read(move |c| {
                let n: i64 = c.query_row(
                    "SELECT COUNT(*) FROM iam_attached WHERE policy_arn = ?1",
                    params![&a],
                    |r| r.get(0),
                )?;
                let p = read_policy(c, &a)?;
                Ok::<_, IamError>((n, p))
            })
            .await?;
        if let Some(m) = managed::by_arn(arn) {
            return Ok(aws_policy(m, attached));
        }
        match stored {
            Some(mut p) => {
                p.attachment_count = attached;
                Ok(p)
            }
            None => Err(no_policy(arn)),
        }
    }

    /// ListPolicies, by name.
    pub async fn list_policies(
        &self,
        scope: Scope,
        only_attached: bool,
        path_prefix: &str,
    ) -> Result<Vec<ManagedPolicy>, IamError> {
        let (counts, local) = self
            .db
            .read(|c| {
                let counts: BTreeMap<String, i64> = c
                    .query_vec(
                        "SELECT policy_arn, COUNT(*) FROM iam_attached GROUP BY policy_arn",
                        params![],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?
                    .into_iter()
                    .collect();
                let arns: Vec<String> = c.query_vec(
                    "SELECT arn FROM iam_policies ORDER BY name_key",
                    params![],
                    |r| r.get(0),
                )?;
                let mut local = Vec::new();
                for arn in arns {
                    if let Some(p) = read_policy(c, &arn)? {
                        local.push(p);
                    }
                }
                Ok::<_, IamError>((counts, local))
            })
            .await?;
        let mut all = Vec::new();
        if scope != Scope::Local {
            all.extend(
                managed::CATALOG
                    .iter()
                    .map(|m| aws_policy(m, counts.get(&m.arn()).copied().unwrap_or(0))),
            );
        }
        if scope != Scope::Aws {
            all.extend(local.into_iter().map(|mut p| {
                p.attachment_count = counts.get(&p.arn).copied().unwrap_or(0);
                p
            }));
        }
        all.retain(|p| {
            p.path.starts_with(path_prefix) && (!only_attached || p.attachment_count > 0)
        });
        all.sort_by_key(|p| key_of(&p.name));
        Ok(all)
    }

    /// DeletePolicy: refused while attached or while versions other than the default remain.
    pub async fn delete_policy(&self, arn: &str) -> Result<(), IamError> {
        if managed::by_arn(arn).is_some() {
            return Err(IamError::InvalidInput(format!(
                "{arn} is an AWS managed policy: it cannot be deleted."
            )));
        }
        let a = arn.to_owned();
        self.db
            .write(move |tx| {
                let p = read_policy(tx, &a)?.ok_or_else(|| no_policy(&a))?;
                if tx.exists("SELECT 1 FROM iam_attached WHERE policy_arn = ?1", params![&a])? {
                    return Err(IamError::DeleteConflict(
                        "Cannot delete a policy attached to entities.".into(),
                    ));
                }
                if tx.exists(
                    "SELECT 1 FROM iam_policy_versions WHERE arn = ?1 AND version_id <> ?2",
                    params![&a, &p.default_version],
                )? {
                    return Err(IamError::DeleteConflict(
                        "This policy has more than one version. Before you delete a policy, you must delete the policy's versions. The default version is deleted with the policy.".into(),
                    ));
                }
                tx.execute("DELETE FROM iam_policy_versions WHERE arn = ?1", params![&a])?;
                tx.execute("DELETE FROM iam_policies WHERE arn = ?1", params![&a])?;
                Ok(())
            })
            .await
    }

    /// CreatePolicyVersion.
    pub async fn create_policy_version(
        &self,
        arn: &str,
        document: &str,
        set_as_default: bool,
    ) -> Result<PolicyVersion, IamError> {
        if managed::by_arn(arn).is_some() {
            return Err(IamError::InvalidInput(format!(
                "{arn} is an AWS managed policy: it cannot be changed."
            )));
        }
        parse_identity_policy(document)?;
        let (a, doc) = (arn.to_owned(), document.to_owned());
        let now = now_ms();
        let v = self
            .db
            .write(move |tx| {
                let p = read_policy(tx, &a)?.ok_or_else(|| no_policy(&a))?;
                let n: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM iam_policy_versions WHERE arn = ?1",
                    params![&a],
                    |r| r.get(0),
                )?;
                if n as u64 >= limits::VERSIONS_PER_POLICY {
                    return Err(IamError::LimitExceeded(format!(
                        "A managed policy can have up to {} versions. Before you create a new version, you must delete an existing version.",
                        limits::VERSIONS_PER_POLICY
                    )));
                }
                let next: i64 = tx.query_row(
                    "SELECT next_version FROM iam_policies WHERE arn = ?1",
                    params![&a],
                    |r| r.get(0),
                )?;
                let id = format!("v{next}");
                tx.execute(
                    "INSERT INTO iam_policy_versions (arn, version_id, document, created_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![&a, &id, &doc, now],
                )?;
                tx.execute(
                    "UPDATE iam_policies SET next_version = ?2, updated_ms = ?3 WHERE arn = ?1",
                    params![&a, next + 1, now],
                )?;
                if set_as_default {
                    tx.execute(
                        "UPDATE iam_policies SET default_version = ?2 WHERE arn = ?1",
                        params![&a, &id],
                    )?;
                }
                Ok::<_, IamError>(PolicyVersion {
                    is_default: set_as_default || p.default_version == id,
                    version_id: id,
                    document: doc.clone(),
                    created: iso(now),
                })
            })
            .await?;
        if set_as_default {
            self.permissions_changed();
        }
        Ok(v)
    }

    /// GetPolicyVersion.
    pub async fn get_policy_version(
        &self,
        arn: &str,
        version_id: &str,
    ) -> Result<PolicyVersion, IamError> {
        self.list_policy_versions(arn)
            .await?
            .into_iter()
            .find(|v| v.version_id == version_id)
            .ok_or_else(|| {
                IamError::NoSuchEntity(format!(
                    "Policy {arn} version {version_id} does not exist or is not attachable."
                ))
            })
    }

    /// ListPolicyVersions, newest first.
    pub async fn list_policy_versions(&self, arn: &str) -> Result<Vec<PolicyVersion>, IamError> {
        if let Some(m) = managed::by_arn(arn) {
            return Ok(vec![PolicyVersion {
                version_id: m.version.into(),
                document: m.document.into(),
                is_default: true,
                created: m.updated.into(),
            }]);
        }
        let a = arn.to_owned();
        self.db
            .read(move |c| {
                let p = read_policy(c, &a)?.ok_or_else(|| no_policy(&a))?;
                let mut versions: Vec<PolicyVersion> = c.query_vec(
                    "SELECT version_id, document, created_ms FROM iam_policy_versions WHERE arn = ?1",
                    params![&a],
                    |r| {
                        let id: String = r.get(0)?;
                        Ok(PolicyVersion {
                            is_default: id == p.default_version,
                            version_id: id,
                            document: r.get(1)?,
                            created: iso(r.get(2)?),
                        })
                    },
                )?;
                versions.sort_by_key(|v| std::cmp::Reverse(version_number(&v.version_id)));
                Ok(versions)
            })
            .await
    }

    /// SetDefaultPolicyVersion.
    pub async fn set_default_version(&self, arn: &str, version_id: &str) -> Result<(), IamError> {
        let (a, v) = (arn.to_owned(), version_id.to_owned());
        if managed::by_arn(arn).is_some() {
            return Err(IamError::InvalidInput(format!(
                "{arn} is an AWS managed policy: it cannot be changed."
            )));
        }
        self.db
            .write(move |tx| {
                read_policy(tx, &a)?.ok_or_else(|| no_policy(&a))?;
                if !tx.exists(
                    "SELECT 1 FROM iam_policy_versions WHERE arn = ?1 AND version_id = ?2",
                    params![&a, &v],
                )? {
                    return Err(IamError::NoSuchEntity(format!(
                        "Policy {a} version {v} does not exist."
                    )));
                }
                tx.execute(
                    "UPDATE iam_policies SET default_version = ?2, updated_ms = ?3 WHERE arn = ?1",
                    params![&a, &v, now_ms()],
                )?;
                Ok(())
            })
            .await?;
        self.permissions_changed();
        Ok(())
    }

    /// DeletePolicyVersion: never the default one.
    pub async fn delete_policy_version(&self, arn: &str, version_id: &str) -> Result<(), IamError> {
        let (a, v) = (arn.to_owned(), version_id.to_owned());
        self.db
            .write(move |tx| {
                let p = read_policy(tx, &a)?.ok_or_else(|| no_policy(&a))?;
                if p.default_version == v {
                    return Err(IamError::DeleteConflict(
                        "Cannot delete the default version of a policy.".into(),
                    ));
                }
                let n = tx.execute(
                    "DELETE FROM iam_policy_versions WHERE arn = ?1 AND version_id = ?2",
                    params![&a, &v],
                )?;
                if n == 0 {
                    return Err(IamError::NoSuchEntity(format!(
                        "Policy {a} version {v} does not exist."
                    )));
                }
                Ok(())
            })
            .await
    }

    // ---- access keys ----

    /// CreateAccessKey for a user (at most two).
    pub async fn create_access_key(&self, user: &str) -> Result<(Entity, AccessKey), IamError> {
        let u = self.get(Kind::User, user).await?;
        let key = self
            .keys
            .create_for_user(&u.name, limits::KEYS_PER_USER)
            .await?;
        Ok((u, key))
    }

    /// ListAccessKeys.
    pub async fn list_access_keys(
        &self,
        user: &str,
    ) -> Result<(Entity, Vec<UserKeyInfo>), IamError> {
        let u = self.get(Kind::User, user).await?;
        let keys = self.keys.list_for_user(&u.name).await?;
        Ok((u, keys))
    }

    /// UpdateAccessKey (`Active` / `Inactive`).
    pub async fn update_access_key(
        &self,
        user: &str,
        id: &str,
        active: bool,
    ) -> Result<(), IamError> {
        let u = self.get(Kind::User, user).await?;
        Ok(self.keys.set_active_for_user(id, &u.name, active).await?)
    }

    /// DeleteAccessKey.
    pub async fn delete_access_key(&self, user: &str, id: &str) -> Result<(), IamError> {
        let u = self.get(Kind::User, user).await?;
        Ok(self.keys.delete_for_user(id, &u.name).await?)
    }

    /// The user an access key belongs to (to answer for the caller when a request names no
    /// user), if any.
    pub async fn user_of_key(&self, id: &str) -> Result<Option<String>, IamError> {
        Ok(self.keys.user_of(id).await?)
    }

    /// The policy documents that apply to a user: its inline and attached policies and
    /// those of its groups.
    pub async fn documents_of_user(&self, user: &str) -> Result<(Entity, Vec<String>), IamError> {
        self.documents_of(Kind::User, user).await
    }

    /// The policy documents that apply to an entity: its inline and attached policies, and
    /// for a user those of its groups.
    pub async fn documents_of(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<(Entity, Vec<String>), IamError> {
        let (name, account) = (name.to_owned(), self.account_id.clone());
        let (e, inline, arns, versions) = self
            .db
            .read(move |c| {
                let e = read_entity(c, kind, &name, &account)?;
                let k = key_of(&e.name);
                let groups: Vec<String> = if kind == Kind::User {
                    c.query_vec(
                        "SELECT group_key FROM iam_members WHERE user_key = ?1",
                        params![&k],
                        |r| r.get(0),
                    )?
                } else {
                    Vec::new()
                };
                let mut owners = vec![(kind.as_str(), k)];
                owners.extend(groups.into_iter().map(|g| ("group", g)));
                let (mut inline, mut arns) = (Vec::new(), Vec::new());
                for (kind, owner) in &owners {
                    inline.extend(c.query_vec(
                        "SELECT document FROM iam_inline WHERE kind = ?1 AND owner_key = ?2",
                        params![*kind, owner],
                        |r| r.get::<String>(0),
                    )?);
                    arns.extend(c.query_vec(
                        "SELECT policy_arn FROM iam_attached WHERE kind = ?1 AND owner_key = ?2",
                        params![*kind, owner],
                        |r| r.get::<String>(0),
                    )?);
                }
                let mut versions = Vec::new();
                for arn in &arns {
                    if managed::by_arn(arn).is_none() {
                        versions.extend(c.query_vec(
                            "SELECT v.document FROM iam_policies p JOIN iam_policy_versions v ON v.arn = p.arn AND v.version_id = p.default_version WHERE p.arn = ?1",
                            params![arn],
                            |r| r.get::<String>(0),
                        )?);
                    }
                }
                Ok::<_, IamError>((e, inline, arns, versions))
            })
            .await?;
        let mut docs = inline;
        docs.extend(
            arns.iter()
                .filter_map(|a| managed::by_arn(a))
                .map(|m| m.document.to_owned()),
        );
        docs.extend(versions);
        Ok((e, docs))
    }
}

/// The entity an IAM ARN names (`arn:aws:iam::ACCOUNT:user/path/name`): its kind and name.
pub fn entity_of_arn(arn: &str) -> Option<(Kind, String)> {
    let resource = arn.strip_prefix("arn:aws:iam::")?.split_once(':')?.1;
    let (kind, rest) = resource.split_once('/')?;
    let kind = match kind {
        "user" => Kind::User,
        "group" => Kind::Group,
        "role" => Kind::Role,
        _ => return None,
    };
    let name = rest.rsplit('/').next()?;
    (!name.is_empty()).then(|| (kind, name.to_owned()))
}

fn identity_error(e: IamError) -> IdentityError {
    match e {
        IamError::NoSuchEntity(m) => IdentityError::ResourceNotFound(m),
        IamError::Meta(m) => IdentityError::Meta(m),
        IamError::Keys(k) => k,
        other => IdentityError::Backend(other.to_string()),
    }
}

impl Iam {
    /// An entity and the union of its policies (a stored document that does not parse
    /// allows nothing, and is logged).
    pub async fn policy_of(&self, kind: Kind, name: &str) -> Result<(Entity, Policy), IamError> {
        let (e, docs) = self.documents_of(kind, name).await?;
        let policies = docs.iter().map(|d| {
            Policy::parse(d).unwrap_or_else(|err| {
                tracing::error!(entity = %e.name, error = %err, "a stored IAM policy does not parse: it allows nothing");
                Policy::deny_all()
            })
        });
        let policy = Policy::union(policies.collect::<Vec<_>>());
        Ok((e, policy))
    }

    /// An entity's ARN, id, tags and the union of its policies.
    async fn grant(&self, kind: Kind, name: &str) -> Result<UserGrant, IdentityError> {
        let (e, policy) = self.policy_of(kind, name).await.map_err(identity_error)?;
        Ok(UserGrant {
            arn: e.arn.clone(),
            user_id: e.id.clone(),
            policy,
            tags: e.tags.clone(),
        })
    }
}

#[async_trait::async_trait]
impl UserDirectory for Iam {
    async fn grant_of(&self, user: &str) -> Result<UserGrant, IdentityError> {
        self.grant(Kind::User, user).await
    }

    async fn role_grant_of(&self, role: &str) -> Result<UserGrant, IdentityError> {
        self.grant(Kind::Role, role).await
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn version_number(v: &str) -> i64 {
    v.trim_start_matches('v').parse().unwrap_or(0)
}

fn no_policy(arn: &str) -> IamError {
    IamError::NoSuchEntity(format!("Policy {arn} does not exist or is not attachable."))
}

fn aws_policy(m: &managed::AwsManaged, attachment_count: i64) -> ManagedPolicy {
    ManagedPolicy {
        arn: m.arn(),
        name: m.name.into(),
        id: m.id.into(),
        path: m.path.into(),
        description: Some(m.description.into()),
        default_version: m.version.into(),
        attachment_count,
        created: m.created.into(),
        updated: m.updated.into(),
        aws_managed: true,
        tags: Vec::new(),
    }
}

fn read_policy(c: &Tx<'_>, arn: &str) -> Result<Option<ManagedPolicy>, IamError> {
    type Row = (
        String,
        String,
        String,
        Option<String>,
        String,
        String,
        i64,
        i64,
    );
    let row: Option<Row> = c.query_opt(
        "SELECT name, id, path, description, default_version, tags, created_ms, updated_ms FROM iam_policies WHERE arn = ?1",
        params![arn],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        },
    )?;
    Ok(row.map(
        |(name, id, path, description, default_version, tags, created, updated)| {
            let tags: Value = serde_json::from_str(&tags).unwrap_or(Value::Null);
            ManagedPolicy {
                arn: arn.to_owned(),
                name,
                id,
                path,
                description,
                default_version,
                attachment_count: 0,
                created: iso(created),
                updated: iso(updated),
                aws_managed: false,
                tags: tags_from(Some(&tags)),
            }
        },
    ))
}

#[cfg(test)]
mod tests;
