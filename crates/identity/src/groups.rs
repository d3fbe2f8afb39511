//! User pool groups, as Cognito has them: CreateGroup, GetGroup, ListGroups, UpdateGroup,
//! DeleteGroup, AdminAddUserToGroup, AdminRemoveUserFromGroup, AdminListGroupsForUser and
//! ListUsersInGroup, and what a user's groups put in the tokens (`cognito:groups`, and
//! `cognito:roles` / `cognito:preferred_role` when groups have roles).
//!
//! Group names are case-sensitive and unique in a pool. A user's groups are ordered by
//! precedence (lower first; a group without one after those with one), then by name: the
//! order of `cognito:groups`, and `cognito:preferred_role` is the role of the first group
//! that has one — unless several groups share that lowest precedence with different roles,
//! when Cognito leaves the claim out, and so does sluice.

use sluice_meta::{Tx, now_ms, params};

use crate::pools::{encode_token, page_token, pool_settings};
use crate::users::{USER_COLUMNS, find_user, user_from_row};
use crate::{Identity, IdentityError, UserRecord, user_not_found};

pub(crate) const MIGRATION: &str = "
CREATE TABLE user_pool_groups (
    pool_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    role_arn TEXT,
    precedence BIGINT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (pool_id, name)
);
CREATE TABLE user_pool_group_members (
    pool_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    sub TEXT NOT NULL,
    PRIMARY KEY (pool_id, group_name, sub)
);
CREATE INDEX user_pool_group_members_user ON user_pool_group_members (pool_id, sub);
";

/// A group of a user pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub pool_id: String,
    pub name: String,
    pub description: Option<String>,
    pub role_arn: Option<String>,
    pub precedence: Option<i64>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// What CreateGroup and UpdateGroup take.
#[derive(Debug, Clone, Default)]
pub struct GroupSpec {
    pub description: Option<String>,
    pub role_arn: Option<String>,
    pub precedence: Option<i64>,
}

/// The group claims of a user's tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupClaims {
    /// `cognito:groups`, in precedence order.
    pub groups: Vec<String>,
    /// `cognito:roles`: the roles of those groups, in the same order, each once.
    pub roles: Vec<String>,
    /// `cognito:preferred_role`.
    pub preferred_role: Option<String>,
}

const GROUP_COLUMNS: &str =
    "pool_id, name, description, role_arn, precedence, created_ms, updated_ms";

fn group_row(r: &sluice_meta::Row<'_>) -> Result<Group, sluice_meta::MetaError> {
    Ok(Group {
        pool_id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        role_arn: r.get(3)?,
        precedence: r.get(4)?,
        created_ms: r.get(5)?,
        updated_ms: r.get(6)?,
    })
}

fn invalid(m: String) -> IdentityError {
    IdentityError::InvalidParameter(m)
}

fn group_not_found() -> IdentityError {
    IdentityError::ResourceNotFound("Group not found.".into())
}

/// Cognito's constraints on a group name: 1 to 128 characters of letters, marks, symbols,
/// numbers and punctuation (no spaces or control characters).
fn check_name(name: &str, field: &str) -> Result<(), IdentityError> {
    let n = name.chars().count();
    let ok = (1..=128).contains(&n)
        && name
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '\u{FEFF}');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "1 validation error detected: Value '{name}' at '{field}' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\p{{L}}\\p{{M}}\\p{{S}}\\p{{N}}\\p{{P}}]+"
        )))
    }
}

fn check_spec(spec: &GroupSpec) -> Result<(), IdentityError> {
    if let Some(d) = &spec.description
        && d.chars().count() > 2048
    {
        return Err(invalid(
            "1 validation error detected: Value at 'description' failed to satisfy constraint: Member must have length less than or equal to 2048".into(),
        ));
    }
    if let Some(p) = spec.precedence
        && !(0..=i64::from(i32::MAX)).contains(&p)
    {
        return Err(invalid(format!(
            "1 validation error detected: Value '{p}' at 'precedence' failed to satisfy constraint: Member must have value greater than or equal to 0"
        )));
    }
    if let Some(arn) = &spec.role_arn {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let ok = (20..=2048).contains(&arn.len())
            && parts.len() == 6
            && parts[0] == "arn"
            && !parts[1].is_empty()
            && parts[2] == "iam"
            && parts[5].starts_with("role/");
        if !ok {
            return Err(invalid(format!(
                "1 validation error detected: Value '{arn}' at 'roleArn' failed to satisfy constraint: Member must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
            )));
        }
    }
    Ok(())
}

fn check_limit(limit: Option<i64>) -> Result<i64, IdentityError> {
    match limit {
        None => Ok(60),
        Some(l) if (1..=60).contains(&l) => Ok(l),
        Some(l) => Err(invalid(format!(
            "1 validation error detected: Value '{l}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 60"
        ))),
    }
}

fn read_group(c: &Tx<'_>, pool: &str, name: &str) -> Result<Group, IdentityError> {
    c.query_opt(
        &format!("SELECT {GROUP_COLUMNS} FROM user_pool_groups WHERE pool_id = ?1 AND name = ?2"),
        params![pool, name],
        group_row,
    )?
    .ok_or_else(group_not_found)
}

/// The groups of user `sub`, in token order.
pub(crate) fn user_groups(c: &Tx<'_>, pool: &str, sub: &str) -> Result<Vec<Group>, IdentityError> {
    let mut groups = c.query_vec(
        "SELECT g.pool_id, g.name, g.description, g.role_arn, g.precedence, g.created_ms,
                g.updated_ms
         FROM user_pool_group_members m JOIN user_pool_groups g
           ON g.pool_id = m.pool_id AND g.name = m.group_name
         WHERE m.pool_id = ?1 AND m.sub = ?2",
        params![pool, sub],
        group_row,
    )?;
    sort_for_tokens(&mut groups);
    Ok(groups)
}

fn sort_for_tokens(groups: &mut [Group]) {
    groups.sort_by(|a, b| {
        (a.precedence.is_none(), a.precedence, &a.name).cmp(&(
            b.precedence.is_none(),
            b.precedence,
            &b.name,
        ))
    });
}

/// The claims `groups` (in token order) give.
pub fn claims_of(groups: &[Group]) -> GroupClaims {
    let mut roles: Vec<String> = Vec::new();
    for g in groups {
        if let Some(r) = &g.role_arn
            && !roles.contains(r)
        {
            roles.push(r.clone());
        }
    }
    // The role of the highest-precedence group that has one; none when groups tied at that
    // precedence name different roles.
    let with_role: Vec<&Group> = groups.iter().filter(|g| g.role_arn.is_some()).collect();
    let preferred = with_role.first().and_then(|first| {
        let tied: Vec<&&Group> = with_role
            .iter()
            .filter(|g| g.precedence == first.precedence)
            .collect();
        let same = tied.iter().all(|g| g.role_arn == first.role_arn);
        same.then(|| first.role_arn.clone()).flatten()
    });
    GroupClaims {
        groups: groups.iter().map(|g| g.name.clone()).collect(),
        roles,
        preferred_role: preferred,
    }
}

impl Identity {
    pub async fn create_group(
        &self,
        pool_id: &str,
        name: &str,
        spec: GroupSpec,
    ) -> Result<Group, IdentityError> {
        check_name(name, "groupName")?;
        check_spec(&spec)?;
        let (p, n) = (pool_id.to_owned(), name.to_owned());
        self.db
            .write(move |c| {
                pool_settings(c, &p)?;
                let exists = c.exists(
                    "SELECT 1 FROM user_pool_groups WHERE pool_id = ?1 AND name = ?2",
                    params![&p, &n],
                )?;
                if exists {
                    return Err(IdentityError::GroupExists(format!(
                        "A group with the name {n} already exists."
                    )));
                }
                let now = now_ms();
                c.execute(
                    "INSERT INTO user_pool_groups (pool_id, name, description, role_arn,
                         precedence, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    params![
                        &p,
                        &n,
                        spec.description,
                        spec.role_arn,
                        spec.precedence,
                        now
                    ],
                )?;
                read_group(c, &p, &n)
            })
            .await
    }

    pub async fn get_group(&self, pool_id: &str, name: &str) -> Result<Group, IdentityError> {
        let (p, n) = (pool_id.to_owned(), name.to_owned());
        self.db
            .read(move |c| {
                pool_settings(c, &p)?;
                read_group(c, &p, &n)
            })
            .await
    }

    /// UpdateGroup: the fields given replace the group's; those not given are cleared, as
    /// Cognito does.
    pub async fn update_group(
        &self,
        pool_id: &str,
        name: &str,
        spec: GroupSpec,
    ) -> Result<Group, IdentityError> {
        check_spec(&spec)?;
        let (p, n) = (pool_id.to_owned(), name.to_owned());
        self.db
            .write(move |c| {
                pool_settings(c, &p)?;
                read_group(c, &p, &n)?;
                c.execute(
                    "UPDATE user_pool_groups SET description = ?3, role_arn = ?4,
                         precedence = ?5, updated_ms = ?6
                     WHERE pool_id = ?1 AND name = ?2",
                    params![
                        &p,
                        &n,
                        spec.description,
                        spec.role_arn,
                        spec.precedence,
                        now_ms()
                    ],
                )?;
                read_group(c, &p, &n)
            })
            .await
    }

    /// DeleteGroup: the group and its memberships.
    pub async fn delete_group(&self, pool_id: &str, name: &str) -> Result<(), IdentityError> {
        let (p, n) = (pool_id.to_owned(), name.to_owned());
        self.db
            .write(move |c| {
                pool_settings(c, &p)?;
                read_group(c, &p, &n)?;
                c.execute(
                    "DELETE FROM user_pool_group_members WHERE pool_id = ?1 AND group_name = ?2",
                    params![&p, &n],
                )?;
                c.execute(
                    "DELETE FROM user_pool_groups WHERE pool_id = ?1 AND name = ?2",
                    params![&p, &n],
                )?;
                Ok(())
            })
            .await
    }

    /// ListGroups: by name, `limit` (1–60, default 60) a page.
    pub async fn list_groups(
        &self,
        pool_id: &str,
        limit: Option<i64>,
        next: Option<&str>,
    ) -> Result<(Vec<Group>, Option<String>), IdentityError> {
        let limit = check_limit(limit)?;
        let after = page_token(next)?;
        let p = pool_id.to_owned();
        let mut rows = self
            .db
            .read(move |c| {
                pool_settings(c, &p)?;
                Ok::<_, IdentityError>(c.query_vec(
                    &format!(
                        "SELECT {GROUP_COLUMNS} FROM user_pool_groups
                         WHERE pool_id = ?1 AND name > ?2 ORDER BY name LIMIT ?3"
                    ),
                    params![&p, &after, limit + 1],
                    group_row,
                )?)
            })
            .await?;
        Ok(page(&mut rows, limit, |g| g.name.clone()))
    }

    /// AdminAddUserToGroup (adding a member twice is no error).
    pub async fn add_user_to_group(
        &self,
        pool_id: &str,
        username: &str,
        group: &str,
    ) -> Result<(), IdentityError> {
        self.membership(pool_id, username, group, true).await
    }

    /// Adds a user to a group, creating the group (no description, role or precedence) when
    /// the pool has none of that name: what an operator means by "make them an operator".
    pub async fn add_user_to_group_creating_it(
        &self,
        pool_id: &str,
        username: &str,
        group: &str,
    ) -> Result<(), IdentityError> {
        match self
            .create_group(pool_id, group, GroupSpec::default())
            .await
        {
            Ok(_) | Err(IdentityError::GroupExists(_)) => {}
            Err(e) => return Err(e),
        }
        self.add_user_to_group(pool_id, username, group).await
    }

    /// AdminRemoveUserFromGroup (removing a non-member is no error).
    pub async fn remove_user_from_group(
        &self,
        pool_id: &str,
        username: &str,
        group: &str,
    ) -> Result<(), IdentityError> {
        self.membership(pool_id, username, group, false).await
    }

    async fn membership(
        &self,
        pool_id: &str,
        username: &str,
        group: &str,
        add: bool,
    ) -> Result<(), IdentityError> {
        let (p, u, g) = (pool_id.to_owned(), username.to_owned(), group.to_owned());
        self.db
            .write(move |c| {
                let settings = pool_settings(c, &p)?;
                read_group(c, &p, &g)?;
                let user = find_user(c, &p, &settings, &u)?.ok_or_else(user_not_found)?;
                if add {
                    let member = c.exists(
                        "SELECT 1 FROM user_pool_group_members
                         WHERE pool_id = ?1 AND group_name = ?2 AND sub = ?3",
                        params![&p, &g, &user.sub],
                    )?;
                    if !member {
                        c.execute(
                            "INSERT INTO user_pool_group_members (pool_id, group_name, sub)
                             VALUES (?1, ?2, ?3)",
                            params![&p, &g, &user.sub],
                        )?;
                    }
                } else {
                    c.execute(
                        "DELETE FROM user_pool_group_members
                         WHERE pool_id = ?1 AND group_name = ?2 AND sub = ?3",
                        params![&p, &g, &user.sub],
                    )?;
                }
                Ok(())
            })
            .await
    }

    /// AdminListGroupsForUser: the user's groups by name, in pages.
    pub async fn list_groups_for_user(
        &self,
        pool_id: &str,
        username: &str,
        limit: Option<i64>,
        next: Option<&str>,
    ) -> Result<(Vec<Group>, Option<String>), IdentityError> {
        let limit = check_limit(limit)?;
        let after = page_token(next)?;
        let (p, u) = (pool_id.to_owned(), username.to_owned());
        let mut rows = self
            .db
            .read(move |c| {
                let settings = pool_settings(c, &p)?;
                let user = find_user(c, &p, &settings, &u)?.ok_or_else(user_not_found)?;
                Ok::<_, IdentityError>(c.query_vec(
                    "SELECT g.pool_id, g.name, g.description, g.role_arn, g.precedence,
                            g.created_ms, g.updated_ms
                     FROM user_pool_group_members m JOIN user_pool_groups g
                       ON g.pool_id = m.pool_id AND g.name = m.group_name
                     WHERE m.pool_id = ?1 AND m.sub = ?2 AND g.name > ?3
                     ORDER BY g.name LIMIT ?4",
                    params![&p, &user.sub, &after, limit + 1],
                    group_row,
                )?)
            })
            .await?;
        Ok(page(&mut rows, limit, |g| g.name.clone()))
    }

    /// ListUsersInGroup: the members, by `sub`, in pages.
    pub async fn list_users_in_group(
        &self,
        pool_id: &str,
        group: &str,
        limit: Option<i64>,
        next: Option<&str>,
    ) -> Result<(Vec<UserRecord>, Option<String>), IdentityError> {
        let limit = check_limit(limit)?;
        let after = page_token(next)?;
        let (p, g) = (pool_id.to_owned(), group.to_owned());
        let mut rows = self
            .db
            .read(move |c| {
                pool_settings(c, &p)?;
                read_group(c, &p, &g)?;
                let cols = USER_COLUMNS
                    .split(',')
                    .map(|col| format!("u.{}", col.trim()))
                    .collect::<Vec<_>>()
                    .join(", ");
                Ok::<_, IdentityError>(c.query_vec(
                    &format!(
                        "SELECT {cols} FROM user_pool_group_members m JOIN users u
                           ON u.pool_id = m.pool_id AND u.sub = m.sub
                         WHERE m.pool_id = ?1 AND m.group_name = ?2 AND m.sub > ?3
                         ORDER BY m.sub LIMIT ?4"
                    ),
                    params![&p, &g, &after, limit + 1],
                    user_from_row,
                )?)
            })
            .await?;
        let (users, next) = page(&mut rows, limit, |u| u.sub.clone());
        Ok((users.into_iter().map(UserRecord::from).collect(), next))
    }
}

/// The first `limit` of `rows` (which holds up to one more) and the token of the next page.
fn page<T>(rows: &mut Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|r| encode_token(&key(r)))
    } else {
        None
    };
    (std::mem::take(rows), next)
}

/// Deletes every membership of user `sub` (the user is being deleted).
pub(crate) fn forget_user(c: &Tx<'_>, pool: &str, sub: &str) -> Result<(), IdentityError> {
    c.execute(
        "DELETE FROM user_pool_group_members WHERE pool_id = ?1 AND sub = ?2",
        params![pool, sub],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str, precedence: Option<i64>, role: Option<&str>) -> Group {
        Group {
            pool_id: "p".into(),
            name: name.into(),
            description: None,
            role_arn: role.map(str::to_owned),
            precedence,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    #[test]
    fn token_claims_follow_precedence() {
        let mut groups = vec![
            g("zeta", None, Some("arn:aws:iam::1:role/z")),
            g("beta", Some(5), Some("arn:aws:iam::1:role/b")),
            g("alpha", Some(1), None),
            g("gamma", Some(5), None),
        ];
        sort_for_tokens(&mut groups);
        let c = claims_of(&groups);
        assert_eq!(c.groups, ["alpha", "beta", "gamma", "zeta"]);
        assert_eq!(c.roles, ["arn:aws:iam::1:role/b", "arn:aws:iam::1:role/z"]);
        assert_eq!(c.preferred_role.as_deref(), Some("arn:aws:iam::1:role/b"));

        // Two groups at the top precedence with different roles: no preferred role.
        let mut tied = vec![
            g("a", Some(0), Some("arn:aws:iam::1:role/a")),
            g("b", Some(0), Some("arn:aws:iam::1:role/b")),
        ];
        sort_for_tokens(&mut tied);
        assert_eq!(claims_of(&tied).preferred_role, None);
        assert_eq!(claims_of(&[]), GroupClaims::default());
    }

    #[test]
    fn names_and_fields_are_checked_as_cognito_does() {
        assert!(check_name("admin", "groupName").is_ok());
        assert!(check_name("équipe-1_ß", "groupName").is_ok());
        for bad in ["", "has space", "tab\there", &"x".repeat(129)] {
            assert!(check_name(bad, "groupName").is_err(), "{bad:?}");
        }
        let spec = |p: Option<i64>, r: Option<&str>| GroupSpec {
            description: None,
            role_arn: r.map(str::to_owned),
            precedence: p,
        };
        assert!(
            check_spec(&spec(
                Some(0),
                Some("arn:aws:iam::123456789012:role/admins")
            ))
            .is_ok()
        );
        assert!(check_spec(&spec(Some(-1), None)).is_err());
        assert!(check_spec(&spec(None, Some("not-an-arn"))).is_err());
        assert!(check_spec(&spec(None, Some("arn:aws:s3:::bucket/role/x"))).is_err());
    }
}
