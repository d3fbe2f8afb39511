//! Users: creation by an administrator or by sign-up, attributes, confirmation and reset
//! codes, listing with Cognito's filters, and the outbox of messages users would receive.
//!
//! Codes are 6 digits, stored only as a hash, valid 24 hours (sign-up) or 1 hour (password
//! reset), and die after 5 wrong guesses. The message carrying a code is written to the
//! `outbox` table, which an operator reads ([`Identity::outbox`]) and which is also emailed
//! when SMTP is configured (`mail.rs`); codes never go to logs.

use std::collections::BTreeMap;

use rand::Rng;
use sha2::{Digest, Sha256};
use sluice_meta::Tx;
use sluice_meta::now_ms;
use sluice_meta::params;

use crate::pools::{PoolSettings, encode_token, page_token, pool_settings};
use crate::schema::{Write, check_attributes, check_required};
use crate::triggers::TriggerData;
use crate::{Identity, IdentityError, User, UserRow, password, srp, user_not_found};

const SIGNUP_CODE_TTL_MS: i64 = 24 * 3600 * 1000;
const RESET_CODE_TTL_MS: i64 = 3600 * 1000;
const MAX_CODE_FAILURES: i64 = 5;

/// A user as the admin operations show it. `attributes` never holds `sub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub username: String,
    pub sub: String,
    pub status: String,
    pub enabled: bool,
    pub attributes: BTreeMap<String, String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// `UserMFASettingList`: the factors on for the user (filled by AdminGetUser and
    /// GetUser; empty in listings, as Cognito's ListUsers shows none).
    pub mfa_factors: Vec<String>,
    /// `PreferredMfaSetting`.
    pub preferred_mfa: Option<String>,
}

impl From<UserRow> for UserRecord {
    fn from(u: UserRow) -> Self {
        UserRecord {
            username: u.username,
            sub: u.sub,
            status: u.status,
            enabled: u.enabled,
            attributes: u.attributes,
            created_ms: u.created_ms,
            updated_ms: u.updated_ms,
            mfa_factors: Vec::new(),
            preferred_mfa: None,
        }
    }
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub pool_id: String,
    /// What the caller calls the user: the username, or the email / phone number in pools
    /// whose `UsernameAttributes` name them (the username is then the `sub`).
    pub username: String,
    pub attributes: BTreeMap<String, String>,
    /// `None`: generate a temporary password.
    pub password: Option<String>,
    /// FORCE_CHANGE_PASSWORD (admin-created with a temporary password).
    pub temporary: bool,
    /// Created by an administrator (may set `*_verified`).
    pub admin: bool,
}

/// PreSignUp's `autoVerifyEmail` / `autoVerifyPhone`: the attribute, when the user has it,
/// becomes verified.
fn auto_verify(attrs: &mut BTreeMap<String, String>, email: bool, phone: bool) {
    for (on, name) in [(email, "email"), (phone, "phone_number")] {
        if on && attrs.get(name).is_some_and(|v| !v.is_empty()) {
            attrs.insert(format!("{name}_verified"), "true".into());
        }
    }
}

/// Where a code went, masked as Cognito shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeDelivery {
    pub destination: String,
    /// `EMAIL` or `SMS`.
    pub medium: String,
    pub attribute: String,
}

/// A message the pool "sent": a confirmation or reset code, or an invitation carrying a
/// temporary password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub to: String,
    /// `signup`, `reset` or `invitation`.
    pub kind: String,
    pub code: String,
    pub created_ms: i64,
    /// Email delivery: `None` (not emailed), `sent` or `failed`.
    pub delivery: Option<String>,
    /// Why delivery failed (never holds the code).
    pub delivery_error: Option<String>,
    /// The text a CustomMessage trigger wrote (`None`: the default text).
    pub subject: Option<String>,
    pub body: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ListUsersPage {
    pub users: Vec<UserRecord>,
    pub next_token: Option<String>,
}

pub(crate) const USER_COLUMNS: &str = "sub, username, email, password_hash, srp_salt, srp_verifier,
    temp_expires_ms, status, enabled, attributes, created_ms, updated_ms";

pub(crate) fn user_from_row(r: &sluice_meta::Row<'_>) -> sluice_meta::MetaResult<UserRow> {
    let salt: Option<String> = r.get(4)?;
    let verifier: Option<String> = r.get(5)?;
    let attrs: String = r.get(9)?;
    Ok(UserRow {
        sub: r.get(0)?,
        username: r.get(1)?,
        email: r.get(2)?,
        hash: r.get(3)?,
        srp: salt.zip(verifier),
        temp_expires_ms: r.get(6)?,
        status: r.get(7)?,
        enabled: r.get(8)?,
        attributes: serde_json::from_str(&attrs).unwrap_or_default(),
        created_ms: r.get(10)?,
        updated_ms: r.get(11)?,
    })
}

pub(crate) fn user_where(
    c: &Tx<'_>,
    column: &str,
    pool: &str,
    value: &str,
) -> Result<Option<UserRow>, IdentityError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE pool_id = ?1 AND {column} = ?2");
    Ok(c.query_opt(&sql, params![pool, value], user_from_row)?)
}

pub(crate) fn username_key(settings: &PoolSettings, username: &str) -> String {
    if settings.username_configuration.case_sensitive {
        username.to_owned()
    } else {
        username.to_lowercase()
    }
}

/// The user `given` names: by username, then by email or phone number where those sign
/// in, then by `sub` in pools whose username is the `sub`.
pub(crate) fn find_user(
    c: &Tx<'_>,
    pool: &str,
    settings: &PoolSettings,
    given: &str,
) -> Result<Option<UserRow>, IdentityError> {
    if let Some(u) = user_where(c, "username_key", pool, &username_key(settings, given))? {
        return Ok(Some(u));
    }
    if settings.email_signs_in() && given.contains('@') {
        let by_email = user_where(c, "email", pool, &given.trim().to_lowercase())?;
        let alias_only = settings.username_attributes.is_empty();
        if let Some(u) = by_email
            && (!alias_only
                || u.attributes.get("email_verified").map(String::as_str) == Some("true"))
        {
            return Ok(Some(u));
        }
    }
    let phone_signs_in = settings
        .username_attributes
        .iter()
        .any(|a| a == "phone_number")
        || settings
            .alias_attributes
            .iter()
            .any(|a| a == "phone_number");
    if phone_signs_in && given.starts_with('+') {
        // Attributes are stored as JSON text; a phone number is `+` and digits, so the
        // pattern has no LIKE wildcard in it, and the match is checked on the parsed row.
        let pattern = format!("%\"phone_number\":{}%", serde_json::Value::from(given));
        let mut found = None;
        c.query_each(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE pool_id = ?1 AND attributes LIKE ?2"),
            params![pool, pattern],
            |r| {
                let u = user_from_row(r)?;
                if u.attributes.get("phone_number").map(String::as_str) == Some(given) {
                    found = Some(u);
                    return Ok(false);
                }
                Ok(true)
            },
        )?;
        if found.is_some() {
            return Ok(found);
        }
    }
    if !settings.username_attributes.is_empty() {
        return user_where(c, "sub", pool, given);
    }
    Ok(None)
}

fn valid_username(u: &str) -> bool {
    let n = u.chars().count();
    (1..=128).contains(&n) && !u.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub(crate) fn mask(value: &str) -> String {
    match value.split_once('@') {
        Some((local, domain)) => format!(
            "{}***@{}***",
            local.chars().next().unwrap_or('*'),
            domain.chars().next().unwrap_or('*')
        ),
        None => {
            let tail: String = value
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("+*******{tail}")
        }
    }
}

fn code_hash(pool: &str, sub: &str, purpose: &str, code: &str) -> String {
    hex::encode(Sha256::digest(
        format!("{pool}\0{sub}\0{purpose}\0{code}").as_bytes(),
    ))
}

/// Where a user's messages go: their email, else their phone number; with `verified`,
/// only a verified one.
fn destination(u: &UserRow, verified: bool) -> Option<(String, &'static str, &'static str)> {
    let attr = |k: &str| u.attributes.get(k).filter(|v| !v.is_empty());
    let ok = |k: &str| !verified || attr(k).map(String::as_str) == Some("true");
    if let Some(e) = attr("email")
        && ok("email_verified")
    {
        return Some((e.clone(), "EMAIL", "email"));
    }
    if let Some(p) = attr("phone_number")
        && ok("phone_number_verified")
    {
        return Some((p.clone(), "SMS", "phone_number"));
    }
    None
}

/// Puts a message for the user `sub` in the outbox. In a pool with a CustomMessage trigger
/// the message is held (`delivery = 'composing'`: neither emailed nor final) until
/// [`Identity::compose_messages`] has the trigger write it.
pub(crate) fn outbox_insert(
    c: &Tx<'_>,
    pool: &str,
    sub: &str,
    to: &str,
    kind: &str,
    code: &str,
) -> Result<(), IdentityError> {
    let held = pool_settings(c, pool)?
        .lambda_config
        .is_some_and(|l| l.custom_message.is_some());
    c.execute(
        "INSERT INTO outbox (pool_id, sub, destination, kind, code, created_ms, delivery)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            pool,
            sub,
            to,
            kind,
            code,
            now_ms(),
            held.then_some("composing")
        ],
    )?;
    Ok(())
}

/// The pool's recovery mechanisms in order (Cognito's default: verified email first).
fn recovery(settings: &PoolSettings) -> Vec<&str> {
    match &settings.account_recovery_setting {
        Some(r) => r.ordered(),
        None => vec!["verified_email", "verified_phone_number"],
    }
}

/// A password reset code, sent by the pool's first recovery mechanism the user has.
fn reset_code(
    c: &Tx<'_>,
    pool: &str,
    settings: &PoolSettings,
    u: &UserRow,
) -> Result<CodeDelivery, IdentityError> {
    let verified = |k: &str| {
        u.attributes
            .get(&format!("{k}_verified"))
            .map(String::as_str)
            == Some("true")
            && u.attributes.get(k).is_some_and(|v| !v.is_empty())
    };
    for m in recovery(settings) {
        let to = match m {
            "verified_email" if verified("email") => {
                (u.attributes["email"].clone(), "EMAIL", "email")
            }
            "verified_phone_number" if verified("phone_number") => {
                (u.attributes["phone_number"].clone(), "SMS", "phone_number")
            }
            _ => continue,
        };
        return issue_code_to(c, pool, u, "reset", to);
    }
    // admin_only pools reset by an administrator still mail the code to a verified
    // address, as Cognito does.
    match destination(u, true) {
        Some(to) => issue_code_to(c, pool, u, "reset", to),
        None => Err(IdentityError::InvalidParameter(
            "Cannot reset password for the user as there is no registered/verified email or phone_number"
                .into(),
        )),
    }
}

/// Issues a fresh code for `purpose` (replacing any earlier one) and puts the message in
/// the outbox. `None` when the user has no (verified, if asked) destination.
fn issue_code(
    c: &Tx<'_>,
    pool: &str,
    u: &UserRow,
    purpose: &str,
    verified_only: bool,
) -> Result<Option<CodeDelivery>, IdentityError> {
    let Some(to) = destination(u, verified_only) else {
        return Ok(None);
    };
    issue_code_to(c, pool, u, purpose, to).map(Some)
}

/// Issues a fresh code for `purpose` to `(address, medium, attribute)`.
fn issue_code_to(
    c: &Tx<'_>,
    pool: &str,
    u: &UserRow,
    purpose: &str,
    (to, medium, attribute): (String, &'static str, &'static str),
) -> Result<CodeDelivery, IdentityError> {
    let code = format!("{:06}", rand::thread_rng().gen_range(0..1_000_000u32));
    let ttl = if purpose == "reset" {
        RESET_CODE_TTL_MS
    } else {
        SIGNUP_CODE_TTL_MS
    };
    c.execute(
        "INSERT INTO codes (pool_id, sub, purpose, code_hash, expires_ms, failures)
         VALUES (?1, ?2, ?3, ?4, ?5, 0)
         ON CONFLICT (pool_id, sub, purpose) DO UPDATE SET code_hash = excluded.code_hash,
             expires_ms = excluded.expires_ms, failures = 0",
        params![
            pool,
            u.sub,
            purpose,
            code_hash(pool, &u.sub, purpose, &code),
            now_ms() + ttl
        ],
    )?;
    outbox_insert(c, pool, &u.sub, &to, purpose, &code)?;
    Ok(CodeDelivery {
        destination: mask(&to),
        medium: medium.into(),
        attribute: attribute.into(),
    })
}

/// The attributes a user can verify with a code: name, medium, code purpose.
fn verifiable(
    attribute: &str,
) -> Result<(&'static str, &'static str, &'static str), IdentityError> {
    match attribute {
        "email" => Ok(("email", "EMAIL", "verify_email")),
        "phone_number" => Ok(("phone_number", "SMS", "verify_phone_number")),
        other => Err(IdentityError::InvalidParameter(format!(
            "Invalid attribute name: {other} cannot be verified"
        ))),
    }
}

/// Checks a code. `Ok(Err(e))` is a refusal whose bookkeeping (a counted failure) must be
/// committed; `Ok(Ok(()))` consumed the code.
fn check_code(
    c: &Tx<'_>,
    pool: &str,
    sub: &str,
    purpose: &str,
    code: &str,
) -> Result<Result<(), IdentityError>, IdentityError> {
    let row: Option<(String, i64, i64)> = c.query_opt(
        "SELECT code_hash, expires_ms, failures FROM codes
             WHERE pool_id = ?1 AND sub = ?2 AND purpose = ?3",
        params![pool, sub, purpose],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let expired =
        || IdentityError::ExpiredCode("Invalid code provided, please request a code again.".into());
    let Some((hash, expires, failures)) = row else {
        return Ok(Err(expired()));
    };
    if failures >= MAX_CODE_FAILURES {
        return Ok(Err(IdentityError::LimitExceeded(
            "Attempt limit exceeded, please try after some time.".into(),
        )));
    }
    if expires < now_ms() {
        return Ok(Err(expired()));
    }
    if hash != code_hash(pool, sub, purpose, code) {
        c.execute(
            "UPDATE codes SET failures = failures + 1
             WHERE pool_id = ?1 AND sub = ?2 AND purpose = ?3",
            params![pool, sub, purpose],
        )?;
        return Ok(Err(IdentityError::CodeMismatch(
            "Invalid verification code provided, please try again.".into(),
        )));
    }
    c.execute(
        "DELETE FROM codes WHERE pool_id = ?1 AND sub = ?2 AND purpose = ?3",
        params![pool, sub, purpose],
    )?;
    Ok(Ok(()))
}

/// A password's argon2id hash and SRP verifier, computed off the async threads.
pub(crate) struct PasswordSecrets {
    pub(crate) hash: String,
    pub(crate) salt: String,
    pub(crate) verifier: String,
}

pub(crate) async fn password_secrets(
    pool: &str,
    username: &str,
    password: &str,
) -> Result<PasswordSecrets, IdentityError> {
    let (p, u, pw) = (pool.to_owned(), username.to_owned(), password.to_owned());
    crate::hashing::pool()
        .run(move |s| password_secrets_with(&p, &u, &pw, s))
        .await?
}

/// [`password_secrets`] on the calling thread, for commands (not the server).
pub(crate) fn password_secrets_blocking(
    pool: &str,
    username: &str,
    password: &str,
) -> Result<PasswordSecrets, IdentityError> {
    password_secrets_with(
        pool,
        username,
        password,
        &mut crate::hashing::Scratch::new(),
    )
}

fn password_secrets_with(
    pool: &str,
    username: &str,
    password: &str,
    scratch: &mut crate::hashing::Scratch,
) -> Result<PasswordSecrets, IdentityError> {
    let hash = crate::hashing::hash(password, scratch)?;
    let (salt, verifier) = srp::make_verifier(pool, username, password);
    Ok(PasswordSecrets {
        hash,
        salt,
        verifier,
    })
}

/// Stores a new password of a user and its status.
pub(crate) fn store_password(
    c: &Tx<'_>,
    pool: &str,
    sub: &str,
    s: &PasswordSecrets,
    status: &str,
    temp_expires_ms: Option<i64>,
) -> Result<(), IdentityError> {
    c.execute(
        "UPDATE users SET password_hash = ?3, srp_salt = ?4, srp_verifier = ?5, status = ?6,
             temp_expires_ms = ?7, updated_ms = ?8
         WHERE pool_id = ?1 AND sub = ?2",
        params![
            pool,
            sub,
            s.hash,
            s.salt,
            s.verifier,
            status,
            temp_expires_ms,
            now_ms()
        ],
    )?;
    Ok(())
}

fn save_attributes(c: &Tx<'_>, pool: &str, u: &UserRow) -> Result<(), IdentityError> {
    c.execute(
        "UPDATE users SET attributes = ?3, email = ?4, updated_ms = ?5
         WHERE pool_id = ?1 AND sub = ?2",
        params![
            pool,
            u.sub,
            serde_json::to_string(&u.attributes)?,
            u.attributes.get("email").map(|e| e.to_lowercase()),
            now_ms()
        ],
    )?;
    Ok(())
}

/// Refuses an email that another user of the pool signs in with.
fn check_email_free(
    c: &Tx<'_>,
    pool: &str,
    settings: &PoolSettings,
    email: Option<&String>,
    sub: &str,
) -> Result<(), IdentityError> {
    let Some(email) = email else { return Ok(()) };
    if !settings.email_signs_in() {
        return Ok(());
    }
    if let Some(other) = user_where(c, "email", pool, &email.to_lowercase())?
        && other.sub != sub
    {
        return Err(IdentityError::UsernameExists(
            "An account with the given email already exists.".into(),
        ));
    }
    Ok(())
}

/// Signs the user out everywhere (GlobalSignOut, AdminUserGlobalSignOut, AdminDisableUser): every refresh
/// token of the user is revoked, and so, at the upload API, is every sign-in they belong to
/// (by `origin_jti`, which each sign-in's ID, access and refresh tokens share). Revoking
/// sign-ins rather than "everything issued up to now" leaves a sign-in made right after —
/// in the same second, which `iat` cannot tell apart — working.
pub(crate) fn sign_out_everywhere(c: &Tx<'_>, pool: &str, sub: &str) -> Result<(), IdentityError> {
    // Sign-ins whose refresh token expired up to a day ago may still have ID and access
    // tokens alive (Cognito's longest lifetime for those is a day); revoked ones are
    // revoked already.
    let origins: Vec<String> = c.query_vec(
        "SELECT DISTINCT origin_jti FROM refresh_tokens
         WHERE pool_id = ?1 AND sub = ?2 AND revoked = 0 AND expires_ms > ?3",
        params![pool, sub, sluice_meta::now_ms() - 24 * 3600 * 1000],
        |r| r.get(0),
    )?;
    for origin in &origins {
        crate::revocations::revoke_origin_in(c, origin)?;
    }
    c.execute(
        "UPDATE refresh_tokens SET revoked = 1 WHERE pool_id = ?1 AND sub = ?2",
        params![pool, sub],
    )?;
    // And the hosted UI's sign-ins, with the codes not yet redeemed.
    for t in ["login_sessions", "oauth_codes"] {
        c.execute(
            &format!("DELETE FROM {t} WHERE pool_id = ?1 AND sub = ?2"),
            params![pool, sub],
        )?;
    }
    Ok(())
}

fn read_user(
    c: &Tx<'_>,
    pool: &str,
    username: &str,
) -> Result<(PoolSettings, UserRow), IdentityError> {
    let settings = pool_settings(c, pool)?;
    let u = find_user(c, pool, &settings, username)?.ok_or_else(user_not_found)?;
    Ok((settings, u))
}

/// The second factors (see `mfa.rs`): a software token, a code by SMS, a code by email.
pub const SOFTWARE_TOKEN_MFA: &str = "SOFTWARE_TOKEN_MFA";
pub const SMS_MFA: &str = "SMS_MFA";
pub const EMAIL_OTP: &str = "EMAIL_OTP";

/// A user's software token as stored (secrets still sealed).
#[derive(Debug, Clone, Default)]
pub(crate) struct MfaRow {
    pub(crate) pending_secret: Option<String>,
    pub(crate) secret: Option<String>,
    pub(crate) friendly_name: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) preferred: bool,
    pub(crate) last_step: i64,
    pub(crate) sms_enabled: bool,
    pub(crate) email_enabled: bool,
    /// The preferred factor by name (`preferred` is the software token's, from before
    /// other factors existed).
    pub(crate) preferred_factor: Option<String>,
}

pub(crate) fn mfa_row(c: &Tx<'_>, pool: &str, sub: &str) -> Result<MfaRow, IdentityError> {
    Ok(c.query_opt(
        "SELECT pending_secret, secret, friendly_name, enabled, preferred, last_step,
             sms_enabled, email_enabled, preferred_factor
             FROM user_mfa WHERE pool_id = ?1 AND sub = ?2",
        params![pool, sub],
        |r| {
            Ok(MfaRow {
                pending_secret: r.get(0)?,
                secret: r.get(1)?,
                friendly_name: r.get(2)?,
                enabled: r.get(3)?,
                preferred: r.get(4)?,
                last_step: r.get(5)?,
                sms_enabled: r.get(6)?,
                email_enabled: r.get(7)?,
                preferred_factor: r.get(8)?,
            })
        },
    )?
    .unwrap_or_default())
}

/// The factors a user has on (`UserMFASettingList`, in this order: software token, SMS,
/// email) and the preferred one, in a pool with these settings. A factor counts when the
/// pool offers it, the user can receive it (a verified token, a phone number, an email) and
/// the user enabled it — or the pool requires MFA.
pub(crate) fn user_factors(
    settings: &PoolSettings,
    m: &MfaRow,
    attrs: &BTreeMap<String, String>,
) -> (Vec<String>, Option<String>) {
    let required = settings.mfa_configuration == "ON";
    let has = |k: &str| attrs.get(k).is_some_and(|v| !v.is_empty());
    let mut on = Vec::new();
    if m.secret.is_some() && settings.software_token_mfa_enabled() && (m.enabled || required) {
        on.push(SOFTWARE_TOKEN_MFA.to_owned());
    }
    if settings.sms_mfa_enabled() && has("phone_number") && (m.sms_enabled || required) {
        on.push(SMS_MFA.to_owned());
    }
    if settings.email_mfa_enabled() && has("email") && (m.email_enabled || required) {
        on.push(EMAIL_OTP.to_owned());
    }
    let preferred = match &m.preferred_factor {
        Some(f) if on.contains(f) => Some(f.clone()),
        _ if m.preferred && on.iter().any(|f| f == SOFTWARE_TOKEN_MFA) => {
            Some(SOFTWARE_TOKEN_MFA.to_owned())
        }
        _ if required && on.len() == 1 => on.first().cloned(),
        _ => None,
    };
    (on, preferred)
}

impl Identity {
    /// The factors on for a user and the preferred one (GetUser, AdminGetUser).
    pub(crate) fn factors_in(
        c: &Tx<'_>,
        pool: &str,
        settings: &PoolSettings,
        user: &UserRow,
    ) -> Result<(Vec<String>, Option<String>), IdentityError> {
        Ok(user_factors(
            settings,
            &mfa_row(c, pool, &user.sub)?,
            &user.attributes,
        ))
    }

    /// The user of `pool` with this email address, if any.
    pub fn get_user(&self, pool: &str, email: &str) -> Result<Option<User>, IdentityError> {
        let (p, e) = (pool.to_owned(), crate::normalize_email(email)?);
        let row = self
            .db
            .read_blocking(move |c| user_where(c, "email", &p, &e))?;
        Ok(row.map(|u| User {
            sub: u.sub,
            email: u.email.unwrap_or_default(),
            status: u.status,
            enabled: u.enabled,
        }))
    }

    /// Creates a user; see [`NewUser`]. Used by `create_user` and AdminCreateUser.
    pub(crate) fn insert_user_blocking(&self, new: NewUser) -> Result<UserRecord, IdentityError> {
        let settings = {
            let p = new.pool_id.clone();
            self.db.read_blocking(move |c| pool_settings(c, &p))?
        };
        let (prepared, password) = prepare_user(&settings, new)?;
        let secrets = password_secrets_blocking(&prepared.pool_id, &prepared.username, &password)?;
        self.db
            .write_blocking(move |c| insert_prepared(c, &prepared, &secrets))
    }

    /// After an operation put messages in the outbox: in a pool with a CustomMessage
    /// trigger, the trigger writes each held message of the user `given` names (its
    /// `{####}` replaced by the code, `{username}` by the username); a failing trigger
    /// marks the message failed and fails the operation. Then the mail task is woken.
    pub(crate) async fn compose_messages(
        &self,
        pool_id: &str,
        client_id: &str,
        given: &str,
        source: &'static str,
    ) -> Result<(), IdentityError> {
        let result = self.compose_held(pool_id, client_id, given, source).await;
        self.outbox_changed();
        result
    }

    async fn compose_held(
        &self,
        pool_id: &str,
        client_id: &str,
        given: &str,
        source: &'static str,
    ) -> Result<(), IdentityError> {
        let Some((arn, _)) = self
            .trigger_of(pool_id, |l| l.custom_message.clone().map(|a| (a, "1")))
            .await?
        else {
            return Ok(());
        };
        let (p, n) = (pool_id.to_owned(), given.to_owned());
        let found = self
            .db
            .read(move |c| {
                let settings = pool_settings(c, &p)?;
                let Some(u) = find_user(c, &p, &settings, &n)? else {
                    return Ok::<_, IdentityError>(None);
                };
                let held: Vec<(i64, String, String, String)> = c.query_vec(
                    "SELECT id, destination, kind, code FROM outbox
                     WHERE pool_id = ?1 AND sub = ?2 AND delivery = 'composing' ORDER BY id",
                    params![p, u.sub],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?;
                Ok(Some((u, held)))
            })
            .await?;
        let Some((user, held)) = found else {
            return Ok(());
        };
        for (id, to, kind, code) in held {
            // Claimed once, whoever composes it.
            let claimed = self
                .db
                .write(move |c| {
                    Ok::<_, IdentityError>(
                        c.execute(
                            "UPDATE outbox SET delivery = 'composing-claimed'
                         WHERE id = ?1 AND delivery = 'composing'",
                            params![id],
                        )? == 1,
                    )
                })
                .await?;
            if !claimed {
                continue;
            }
            let mut request = serde_json::json!({
                "userAttributes": crate::triggers::with_status(&user.sub, &user.attributes, &user.status),
                "codeParameter": "{####}",
                "linkParameter": "{##Click Here##}",
                "clientMetadata": {},
            });
            if kind == "invitation" {
                request["usernameParameter"] = serde_json::json!("{username}");
            }
            let composed = self
                .run_trigger(
                    &arn,
                    crate::triggers::Call {
                        trigger: "CustomMessage",
                        source,
                        version: "1",
                        pool_id,
                        client_id,
                        username: &user.username,
                        request,
                        response: serde_json::json!({
                            "smsMessage": null,
                            "emailMessage": null,
                            "emailSubject": null,
                        }),
                    },
                )
                .await
                .and_then(|r| {
                    crate::triggers::custom_message(&r, &to, &kind, &code, &user.username)
                });
            let done = composed.as_ref().map_err(ToString::to_string).cloned();
            self.db
                .write(move |c| {
                    match &done {
                        Ok((subject, body)) => c.execute(
                            "UPDATE outbox SET subject = ?2, body = ?3, delivery = NULL WHERE id = ?1",
                            params![id, subject, body],
                        )?,
                        Err(e) => c.execute(
                            "UPDATE outbox SET delivery = 'failed', delivery_error = ?2, delivery_ms = ?3
                             WHERE id = ?1",
                            params![id, e, now_ms()],
                        )?,
                    };
                    Ok::<_, IdentityError>(())
                })
                .await?;
            composed?;
        }
        Ok(())
    }

    /// The UserMigration trigger, for a user the pool does not know: with `password`
    /// (`UserMigration_Authentication`) the user is created with that password, without
    /// (`UserMigration_ForgotPassword`) with an unusable one and RESET_REQUIRED. `None` when
    /// the pool has no such trigger. The function's `userAttributes` become the user's
    /// (an administrator's write: `*_verified` allowed), its `finalUserStatus`
    /// (`CONFIRMED`, `RESET_REQUIRED`) the user's status.
    pub(crate) async fn migrate_user(
        &self,
        pool_id: &str,
        client_id: &str,
        username: &str,
        password: Option<&str>,
        data: &TriggerData,
    ) -> Result<Option<UserRow>, IdentityError> {
        let Some((arn, _)) = self
            .trigger_of(pool_id, |l| l.user_migration.clone().map(|a| (a, "1")))
            .await?
        else {
            return Ok(None);
        };
        let mut request = serde_json::json!({
            "validationData": data.validation_data,
            "clientMetadata": data.client_metadata,
        });
        if let Some(p) = password {
            request["password"] = serde_json::json!(p);
        }
        let r = self
            .run_trigger(
                &arn,
                crate::triggers::Call {
                    trigger: "UserMigration",
                    source: if password.is_some() {
                        "UserMigration_Authentication"
                    } else {
                        "UserMigration_ForgotPassword"
                    },
                    version: "1",
                    pool_id,
                    client_id,
                    username,
                    request,
                    response: serde_json::json!({
                        "userAttributes": {},
                        "finalUserStatus": null,
                        "messageAction": null,
                        "desiredDeliveryMediums": null,
                        "forceAliasCreation": null,
                    }),
                },
            )
            .await?;
        let bad = |what: &str| {
            IdentityError::InvalidLambdaResponse(format!("Invalid UserMigration response: {what}"))
        };
        let mut attributes = BTreeMap::new();
        match r.get("userAttributes") {
            Some(serde_json::Value::Object(m)) => {
                for (k, v) in m {
                    let v = v
                        .as_str()
                        .ok_or_else(|| bad("userAttributes holds a non-string"))?;
                    if k != "username" && k != "sub" {
                        attributes.insert(k.clone(), v.to_owned());
                    }
                }
            }
            None | Some(serde_json::Value::Null) => {}
            Some(_) => return Err(bad("userAttributes is not an object")),
        }
        let status = match (
            r.get("finalUserStatus").and_then(serde_json::Value::as_str),
            password,
        ) {
            (Some("RESET_REQUIRED"), _) | (_, None) => "RESET_REQUIRED",
            (None | Some("CONFIRMED"), Some(_)) => "CONFIRMED",
            (Some(other), _) => {
                return Err(bad(&format!(
                    "finalUserStatus {other} is not CONFIRMED or RESET_REQUIRED"
                )));
            }
        };
        let settings = {
            let p = pool_id.to_owned();
            self.db.read(move |c| pool_settings(c, &p)).await?
        };
        let password = match password {
            Some(p) => p.to_owned(),
            None => password::generate_temporary(&settings.policies.password_policy),
        };
        let (mut prepared, _) = prepare_user(
            &settings,
            NewUser {
                pool_id: pool_id.to_owned(),
                username: username.to_owned(),
                attributes,
                password: Some(password.clone()),
                temporary: false,
                admin: true,
            },
        )?;
        prepared.status = status.into();
        let secrets = password_secrets(pool_id, &prepared.username, &password).await?;
        let user = self
            .db
            .write(move |c| {
                let rec = insert_prepared(c, &prepared, &secrets)?;
                user_where(c, "sub", &prepared.pool_id, &rec.sub)?.ok_or_else(user_not_found)
            })
            .await?;
        tracing::info!(pool = %pool_id, sub = %user.sub, "migrated a user with the UserMigration trigger");
        Ok(Some(user))
    }

    /// A user of an external identity provider, at its first federated sign-in: status
    /// `EXTERNAL_PROVIDER`, a random password nobody knows (it signs in through its
    /// provider only), the provider's mapped attributes as given (the pool's schema
    /// checks what it can: the provider's claims are not the user's input).
    pub(crate) async fn insert_external_user(
        &self,
        pool_id: &str,
        username: &str,
        mut attributes: BTreeMap<String, String>,
    ) -> Result<UserRecord, IdentityError> {
        let settings = {
            let p = pool_id.to_owned();
            self.db.read(move |c| pool_settings(c, &p)).await?
        };
        if let Some(e) = attributes.get_mut("email") {
            *e = e.to_lowercase();
        }
        attributes.retain(|_, v| !v.is_empty());
        let password = crate::random_token();
        let prepared = PreparedUser {
            pool_id: pool_id.to_owned(),
            sub: uuid::Uuid::new_v4().to_string(),
            username: username.to_owned(),
            username_key: username_key(&settings, username),
            attributes,
            status: "EXTERNAL_PROVIDER".into(),
            temp_expires_ms: None,
            settings,
        };
        let secrets = password_secrets(pool_id, username, &password).await?;
        self.db
            .write(move |c| insert_prepared(c, &prepared, &secrets))
            .await
    }

    /// AdminCreateUser. Without a password a temporary one is generated; unless
    /// `suppress`, an invitation with the temporary password goes to the outbox. With
    /// `resend`, an existing FORCE_CHANGE_PASSWORD user gets a new temporary password and
    /// invitation.
    pub async fn admin_create_user(
        &self,
        new: NewUser,
        suppress: bool,
        resend: bool,
    ) -> Result<UserRecord, IdentityError> {
        self.admin_create_user_with(new, suppress, resend, TriggerData::default())
            .await
    }

    /// [`Identity::admin_create_user`] with what the caller gives the pool's triggers.
    pub async fn admin_create_user_with(
        &self,
        new: NewUser,
        suppress: bool,
        resend: bool,
        data: TriggerData,
    ) -> Result<UserRecord, IdentityError> {
        let pool = new.pool_id.clone();
        let given = new.username.clone();
        let settings = {
            let p = pool.clone();
            self.db.read(move |c| pool_settings(c, &p)).await?
        };
        if resend {
            let (p, name) = (pool.clone(), new.username.clone());
            let (_, u) = self.db.read(move |c| read_user(c, &p, &name)).await?;
            if u.status != "FORCE_CHANGE_PASSWORD" {
                return Err(IdentityError::UnsupportedUserState(format!(
                    "Resend not possible. {} status is not FORCE_CHANGE_PASSWORD",
                    u.username
                )));
            }
            let policy = &settings.policies.password_policy;
            let password = match new.password {
                Some(p) => {
                    password::check_policy(&p, policy)?;
                    p
                }
                None => password::generate_temporary(policy),
            };
            let secrets = password_secrets(&pool, &u.username, &password).await?;
            let expires = temp_expiry(&settings);
            let p = pool.clone();
            let out = self
                .db
                .write(move |c| {
                    store_password(
                        c,
                        &p,
                        &u.sub,
                        &secrets,
                        "FORCE_CHANGE_PASSWORD",
                        Some(expires),
                    )?;
                    if !suppress && let Some((to, _, _)) = destination(&u, false) {
                        outbox_insert(c, &p, &u.sub, &to, "invitation", &password)?;
                    }
                    let u = user_where(c, "sub", &p, &u.sub)?.ok_or_else(user_not_found)?;
                    Ok::<_, IdentityError>(u.into())
                })
                .await?;
            self.compose_messages(
                &pool,
                crate::triggers::NO_CLIENT,
                &given,
                "CustomMessage_AdminCreateUser",
            )
            .await?;
            return Ok(out);
        }
        let (mut prepared, password) = prepare_user(&settings, new)?;
        let (_, verify_email, verify_phone) = self
            .pre_sign_up(
                &pool,
                crate::triggers::NO_CLIENT,
                &prepared.username,
                true,
                &prepared.attributes,
                &data,
            )
            .await?;
        auto_verify(&mut prepared.attributes, verify_email, verify_phone);
        let secrets = password_secrets(&pool, &prepared.username, &password).await?;
        let out = self
            .db
            .write(move |c| {
                let rec = insert_prepared(c, &prepared, &secrets)?;
                if !suppress
                    && let Some(to) = rec
                        .attributes
                        .get("email")
                        .or_else(|| rec.attributes.get("phone_number"))
                {
                    outbox_insert(c, &prepared.pool_id, &rec.sub, to, "invitation", &password)?;
                }
                Ok::<_, IdentityError>(rec)
            })
            .await?;
        self.compose_messages(
            &pool,
            crate::triggers::NO_CLIENT,
            &given,
            "CustomMessage_AdminCreateUser",
        )
        .await?;
        Ok(out)
    }

    pub async fn admin_get_user(
        &self,
        pool_id: &str,
        username: &str,
    ) -> Result<UserRecord, IdentityError> {
        let (p, n) = (pool_id.to_owned(), username.to_owned());
        let (u, (factors, preferred)) = self
            .db
            .read(move |c| {
                let (settings, u) = read_user(c, &p, &n)?;
                let factors = Identity::factors_in(c, &p, &settings, &u)?;
                Ok::<_, IdentityError>((u, factors))
            })
            .await?;
        let mut record = UserRecord::from(u);
        record.mfa_factors = factors;
        record.preferred_mfa = preferred;
        Ok(record)
    }

    /// AdminSetUserPassword: permanent → CONFIRMED; otherwise FORCE_CHANGE_PASSWORD.
    pub async fn admin_set_password(
        &self,
        pool_id: &str,
        username: &str,
        new_password: &str,
        permanent: bool,
    ) -> Result<(), IdentityError> {
        let (p, n) = (pool_id.to_owned(), username.to_owned());
        let (settings, u) = self.db.read(move |c| read_user(c, &p, &n)).await?;
        password::check_policy(new_password, &settings.policies.password_policy)?;
        let secrets = password_secrets(pool_id, &u.username, new_password).await?;
        let (status, expires) = if permanent {
            ("CONFIRMED", None)
        } else {
            ("FORCE_CHANGE_PASSWORD", Some(temp_expiry(&settings)))
        };
        let p = pool_id.to_owned();
        self.db
            .write(move |c| store_password(c, &p, &u.sub, &secrets, status, expires))
            .await
    }

    /// AdminDeleteUser: the user, its tokens and codes.
    pub async fn admin_delete_user(
        &self,
        pool_id: &str,
        username: &str,
    ) -> Result<(), IdentityError> {
        let (p, n) = (pool_id.to_owned(), username.to_owned());
        self.db
            .write(move |c| {
                let (_, u) = read_user(c, &p, &n)?;
                for t in [
                    "refresh_tokens",
                    "auth_sessions",
                    "codes",
                    "user_mfa",
                    "login_sessions",
                    "oauth_codes",
                ] {
                    c.execute(
                        &format!("DELETE FROM {t} WHERE pool_id = ?1 AND sub = ?2"),
                        params![p, u.sub],
                    )?;
                }
                crate::groups::forget_user(c, &p, &u.sub)?;
                c.execute(
                    "DELETE FROM users WHERE pool_id = ?1 AND sub = ?2",
                    params![p, u.sub],
                )?;
                crate::revocations::revoke_user_in(c, &u.sub)
            })
            .await
    }

    /// AdminDisableUser / AdminEnableUser. Disabling revokes the user's tokens.
    pub async fn admin_set_enabled(
        &self,
        pool_id: &str,
        username: &str,
        enabled: bool,
    ) -> Result<(), IdentityError> {
        let (p, n) = (pool_id.to_owned(), username.to_owned());
        self.db
            .write(move |c| {
                let (_, u) = read_user(c, &p, &n)?;
                c.execute(
                    "UPDATE users SET enabled = ?3, updated_ms = ?4 WHERE pool_id = ?1 AND sub = ?2",
                    params![p, u.sub, enabled, now_ms()],
                )?;
                if !enabled {
                    // By sign-in, as GlobalSignOut: every token issued before is refused,
                    // and a sign-in right after re-enabling (even in the same second) works.
                    sign_out_everywhere(c, &p, &u.sub)?;
                }
                Ok(())
            })
            .await
    }

    /// AdminUpdateUserAttributes / UpdateUserAttributes. A changed email becomes
    /// unverified unless an administrator sets `email_verified` in the same call; when the
    /// pool verifies emails, a verification code is sent (and returned as delivered).
    pub(crate) async fn update_attributes(
        &self,
        pool_id: &str,
        username: &str,
        attrs: BTreeMap<String, String>,
        admin: bool,
    ) -> Result<Vec<CodeDelivery>, IdentityError> {
        let (p, n) = (pool_id.to_owned(), username.to_owned());
        let out = self
            .db
            .write(move |c| {
                let (settings, mut u) = read_user(c, &p, &n)?;
                check_attributes(&settings.attribute_rules(), &attrs, admin, Write::Update)?;
                let old_email = u.attributes.get("email").cloned();
                for (k, v) in &attrs {
                    let v = if k == "email" {
                        v.to_lowercase()
                    } else {
                        v.clone()
                    };
                    if v.is_empty() {
                        u.attributes.remove(k);
                    } else {
                        u.attributes.insert(k.clone(), v);
                    }
                }
                let new_email = u.attributes.get("email").cloned();
                if new_email.is_none() {
                    u.attributes.remove("email_verified");
                }
                if !u.attributes.contains_key("phone_number") {
                    u.attributes.remove("phone_number_verified");
                }
                check_email_free(c, &p, &settings, new_email.as_ref(), &u.sub)?;
                let mut deliveries = Vec::new();
                if new_email.is_some()
                    && new_email != old_email
                    && !attrs.contains_key("email_verified")
                {
                    u.attributes.insert("email_verified".into(), "false".into());
                }
                if new_email != old_email {
                    c.execute(
                        "DELETE FROM codes
                         WHERE pool_id = ?1 AND sub = ?2 AND purpose = 'verify_email'",
                        params![p, u.sub],
                    )?;
                }
                save_attributes(c, &p, &u)?;
                if new_email != old_email
                    && new_email.is_some()
                    && u.attributes.get("email_verified").map(String::as_str) != Some("true")
                    && settings
                        .auto_verified_attributes
                        .iter()
                        .any(|a| a == "email")
                    && let Some(d) = issue_code(c, &p, &u, "verify_email", false)?
                {
                    deliveries.push(d);
                }
                Ok::<_, IdentityError>(deliveries)
            })
            .await?;
        self.compose_messages(
            pool_id,
            crate::triggers::NO_CLIENT,
            username,
            "CustomMessage_UpdateUserAttribute",
        )
        .await?;
        Ok(out)
    }

    /// GetUserAttributeVerificationCode: a code to verify the user's `email` or
    /// `phone_number` (replacing any earlier one), sent to that attribute's value.
    pub(crate) async fn attribute_verification_code(
        &self,
        pool_id: &str,
        username: &str,
        attribute: &str,
    ) -> Result<CodeDelivery, IdentityError> {
        let (name, medium, purpose) = verifiable(attribute)?;
        let (p, n) = (pool_id.to_owned(), username.to_owned());
        let out = self
            .db
            .write(move |c| {
                let (_, u) = read_user(c, &p, &n)?;
                let Some(to) = u.attributes.get(name).filter(|v| !v.is_empty()).cloned() else {
                    return Err(IdentityError::InvalidParameter(format!(
                        "User does not have a {name} to verify."
                    )));
                };
                issue_code_to(c, &p, &u, purpose, (to, medium, name))
            })
            .await?;
        self.compose_messages(
            pool_id,
            crate::triggers::NO_CLIENT,
            username,
            "CustomMessage_VerifyUserAttribute",
        )
        .await?;
        Ok(out)
    }

    /// VerifyUserAttribute: checks the code sent for `attribute`; `<attribute>_verified`
    /// becomes `true`.
    pub(crate) async fn verify_attribute(
        &self,
        pool_id: &str,
        username: &str,
        attribute: &str,
        code: &str,
    ) -> Result<(), IdentityError> {
        let (name, _, purpose) = verifiable(attribute)?;
        let (p, n, code) = (pool_id.to_owned(), username.to_owned(), code.to_owned());
        self.db
            .write(
                move |c| -> Result<Result<(), IdentityError>, IdentityError> {
                    let (_, mut u) = read_user(c, &p, &n)?;
                    if let Err(e) = check_code(c, &p, &u.sub, purpose, &code)? {
                        return Ok(Err(e));
                    }
                    u.attributes
                        .insert(format!("{name}_verified"), "true".into());
                    save_attributes(c, &p, &u)?;
                    Ok(Ok(()))
                },
            )
            .await?
    }

    /// AdminResetUserPassword: the password stops working (RESET_REQUIRED: sign-in answers
    /// PasswordResetRequiredException) and a reset code goes out, which ConfirmForgotPassword
    /// takes with a new password.
    pub async fn admin_reset_password(
        &self,
        pool_id: &str,
        username: &str,
    ) -> Result<(), IdentityError> {
        let (p, n) = (pool_id.to_owned(), username.to_owned());
        self.db
            .write(move |c| {
                let (settings, u) = read_user(c, &p, &n)?;
                if !matches!(u.status.as_str(), "CONFIRMED" | "RESET_REQUIRED") {
                    return Err(IdentityError::NotAuthorized(format!(
                        "User password cannot be reset in the current state ({}).",
                        u.status
                    )));
                }
                reset_code(c, &p, &settings, &u)?;
                c.execute(
                    "UPDATE users SET status = 'RESET_REQUIRED', updated_ms = ?3
                     WHERE pool_id = ?1 AND sub = ?2",
                    params![p, u.sub, now_ms()],
                )?;
                // As a password change: sessions of the old password end.
                sign_out_everywhere(c, &p, &u.sub)
            })
            .await?;
        self.compose_messages(
            pool_id,
            crate::triggers::NO_CLIENT,
            username,
            "CustomMessage_ForgotPassword",
        )
        .await
    }

    /// AdminDeleteUserAttributes / DeleteUserAttributes: the named attributes removed
    /// (refused for required and immutable ones, as any update of them).
    pub(crate) async fn delete_attributes(
        &self,
        pool_id: &str,
        username: &str,
        names: Vec<String>,
        admin: bool,
    ) -> Result<(), IdentityError> {
        if names.is_empty() {
            return Err(IdentityError::InvalidParameter(
                "1 validation error detected: Value at 'userAttributeNames' failed to satisfy constraint: Member must not be null".into(),
            ));
        }
        let attrs = names.into_iter().map(|n| (n, String::new())).collect();
        self.update_attributes(pool_id, username, attrs, admin)
            .await
            .map(|_| ())
    }

    pub async fn admin_delete_attributes(
        &self,
        pool_id: &str,
        username: &str,
        names: Vec<String>,
    ) -> Result<(), IdentityError> {
        self.delete_attributes(pool_id, username, names, true).await
    }

    pub async fn admin_update_attributes(
        &self,
        pool_id: &str,
        username: &str,
        attrs: BTreeMap<String, String>,
    ) -> Result<(), IdentityError> {
        self.update_attributes(pool_id, username, attrs, true)
            .await
            .map(|_| ())
    }

    /// ListUsers: users by username, filtered by `attribute = "value"` or
    /// `attribute ^= "value"`, `limit` (1–60, default 60) at a time.
    pub async fn list_users(
        &self,
        pool_id: &str,
        filter: Option<&str>,
        limit: Option<i64>,
        token: Option<&str>,
    ) -> Result<ListUsersPage, IdentityError> {
        let limit = limit.unwrap_or(60);
        if !(1..=60).contains(&limit) {
            return Err(IdentityError::InvalidParameter(format!(
                "1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 60"
            )));
        }
        let filter = match filter.map(str::trim).filter(|f| !f.is_empty()) {
            Some(f) => Some(parse_filter(f)?),
            None => None,
        };
        let after = page_token(token)?;
        let p = pool_id.to_owned();
        self.db
            .read(move |c| {
                pool_settings(c, &p)?;
                // Columns are filtered in SQL; attributes (stored as JSON text) on the
                // parsed rows, in key order, until a page and one more are found.
                let column = filter.as_ref().and_then(|f| match f.attribute.as_str() {
                    "username" => Some("username"),
                    "sub" => Some("sub"),
                    "cognito:user_status" => Some("status"),
                    "status" => Some("CASE enabled WHEN 1 THEN 'Enabled' ELSE 'Disabled' END"),
                    _ => None,
                });
                let attribute = filter.as_ref().filter(|_| column.is_none());
                let cond = match (&filter, column) {
                    (Some(f), Some(column)) if f.prefix => {
                        format!("AND substr({column}, 1, length(?3)) = ?3")
                    }
                    (Some(_), Some(column)) => format!("AND {column} = ?3"),
                    _ => String::new(),
                };
                let sql = format!(
                    "SELECT {USER_COLUMNS}, username_key FROM users
                     WHERE pool_id = ?1 AND username_key > ?2 {cond}
                     ORDER BY username_key"
                );
                let value = filter.as_ref().map(|f| f.value.clone()).unwrap_or_default();
                let mut ps: Vec<&dyn sluice_meta::ToValue> = vec![&p, &after];
                if column.is_some() {
                    ps.push(&value);
                }
                let mut rows = Vec::new();
                c.query_each(&sql, &ps, |r| {
                    let u = user_from_row(r)?;
                    let keep = attribute.is_none_or(|f| {
                        u.attributes.get(&f.attribute).is_some_and(|v| {
                            if f.prefix {
                                v.starts_with(&f.value)
                            } else {
                                *v == f.value
                            }
                        })
                    });
                    if keep {
                        rows.push((u, r.get::<String>(12)?));
                    }
                    Ok(rows.len() as i64 <= limit)
                })?;
                let more = rows.len() as i64 > limit;
                let next_token = if more {
                    rows.get(limit as usize - 1).map(|(_, k)| encode_token(k))
                } else {
                    None
                };
                let users = rows
                    .into_iter()
                    .take(limit as usize)
                    .map(|(u, _)| u.into())
                    .collect();
                Ok(ListUsersPage { users, next_token })
            })
            .await
    }

    /// SignUp: an UNCONFIRMED user; a confirmation code goes out when the pool verifies
    /// the user's email or phone number. Returns the user and where the code went.
    pub async fn sign_up(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
        attributes: BTreeMap<String, String>,
        secret_hash: Option<&str>,
    ) -> Result<(UserRecord, Option<CodeDelivery>), IdentityError> {
        self.sign_up_with(
            client_id,
            username,
            password,
            attributes,
            secret_hash,
            TriggerData::default(),
        )
        .await
    }

    /// [`Identity::sign_up`] with what the caller gives the pool's triggers.
    pub async fn sign_up_with(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
        attributes: BTreeMap<String, String>,
        secret_hash: Option<&str>,
        data: TriggerData,
    ) -> Result<(UserRecord, Option<CodeDelivery>), IdentityError> {
        let client = self.client(client_id).await?;
        crate::client_secret::check_secret_hash(&client, &[username], secret_hash)?;
        self.admit(&client.pool_id, crate::rates::Category::SignUp)?;
        let pool = client.pool_id.clone();
        let settings = {
            let p = pool.clone();
            self.db.read(move |c| pool_settings(c, &p)).await?
        };
        if settings
            .admin_create_user_config
            .allow_admin_create_user_only
        {
            return Err(IdentityError::NotAuthorized(
                "SignUp is not permitted for this user pool".into(),
            ));
        }
        let (mut prepared, _) = prepare_user(
            &settings,
            NewUser {
                pool_id: pool.clone(),
                username: username.to_owned(),
                attributes,
                password: Some(password.to_owned()),
                temporary: false,
                admin: false,
            },
        )?;
        let (auto_confirm, verify_email, verify_phone) = self
            .pre_sign_up(
                &pool,
                client_id,
                &prepared.username,
                false,
                &prepared.attributes,
                &data,
            )
            .await?;
        auto_verify(&mut prepared.attributes, verify_email, verify_phone);
        prepared.status = if auto_confirm {
            "CONFIRMED"
        } else {
            "UNCONFIRMED"
        }
        .into();
        let secrets = password_secrets(&pool, &prepared.username, password).await?;
        // An auto-confirmed user needs no confirmation code.
        let verify = if auto_confirm {
            Vec::new()
        } else {
            settings.auto_verified_attributes.clone()
        };
        let out = self
            .db
            .write(move |c| {
                let rec = insert_prepared(c, &prepared, &secrets).map_err(|e| match e {
                    IdentityError::UsernameExists(m) if m.starts_with("User account") => {
                        IdentityError::UsernameExists("User already exists".into())
                    }
                    e => e,
                })?;
                let row = user_where(c, "sub", &prepared.pool_id, &rec.sub)?
                    .ok_or_else(user_not_found)?;
                let delivery = if verify.is_empty() {
                    None
                } else {
                    issue_code(c, &prepared.pool_id, &row, "signup", false)?
                };
                Ok::<_, IdentityError>((rec, delivery))
            })
            .await?;
        self.compose_messages(
            &client.pool_id,
            &client.id,
            username,
            "CustomMessage_SignUp",
        )
        .await?;
        Ok(out)
    }

    /// ConfirmSignUp: checks the code, confirms the user and verifies the attribute the
    /// code went to.
    pub async fn confirm_sign_up(
        &self,
        client_id: &str,
        username: &str,
        code: &str,
        secret_hash: Option<&str>,
    ) -> Result<(), IdentityError> {
        let client = self.client(client_id).await?;
        crate::client_secret::check_secret_hash(&client, &[username], secret_hash)?;
        let (p, n, code) = (client.pool_id.clone(), username.to_owned(), code.to_owned());
        let prevent = client.prevent_user_existence_errors;
        self.db
            .write(
                move |c| -> Result<Result<(), IdentityError>, IdentityError> {
                    let settings = pool_settings(c, &p)?;
                    let Some(mut u) = find_user(c, &p, &settings, &n)? else {
                        return Ok(Err(if prevent {
                            IdentityError::CodeMismatch(
                                "Invalid verification code provided, please try again.".into(),
                            )
                        } else {
                            user_not_found()
                        }));
                    };
                    if u.status != "UNCONFIRMED" {
                        return Ok(Err(IdentityError::NotAuthorized(format!(
                            "User cannot be confirmed. Current status is {}",
                            u.status
                        ))));
                    }
                    if let Err(e) = check_code(c, &p, &u.sub, "signup", &code)? {
                        return Ok(Err(e));
                    }
                    c.execute(
                        "UPDATE users SET status = 'CONFIRMED', updated_ms = ?3
                     WHERE pool_id = ?1 AND sub = ?2",
                        params![p, u.sub, now_ms()],
                    )?;
                    if let Some((_, _, attr)) = destination(&u, false) {
                        u.attributes
                            .insert(format!("{attr}_verified"), "true".into());
                        save_attributes(c, &p, &u)?;
                    }
                    Ok(Ok(()))
                },
            )
            .await??;
        self.post_confirmation(
            &client.pool_id,
            &client.id,
            username,
            "PostConfirmation_ConfirmSignUp",
        )
        .await
    }

    /// Runs the pool's PostConfirmation trigger for a user just confirmed (or whose
    /// password reset was just confirmed).
    async fn post_confirmation(
        &self,
        pool_id: &str,
        client_id: &str,
        username: &str,
        source: &'static str,
    ) -> Result<(), IdentityError> {
        if self
            .trigger_of(pool_id, |l| l.post_confirmation.clone().map(|a| (a, "1")))
            .await?
            .is_none()
        {
            return Ok(());
        }
        let (p, n) = (pool_id.to_owned(), username.to_owned());
        let (_, u) = self.db.read(move |c| read_user(c, &p, &n)).await?;
        self.notify_trigger(
            pool_id,
            client_id,
            &u.username,
            |l| l.post_confirmation.clone().map(|a| (a, "1")),
            "PostConfirmation",
            source,
            serde_json::json!({
                "userAttributes": crate::triggers::with_status(&u.sub, &u.attributes, &u.status),
                "clientMetadata": {},
            }),
        )
        .await
    }

    /// AdminConfirmSignUp: UNCONFIRMED → CONFIRMED, without a code.
    pub async fn admin_confirm_sign_up(
        &self,
        pool_id: &str,
        username: &str,
    ) -> Result<(), IdentityError> {
        let (p, n) = (pool_id.to_owned(), username.to_owned());
        self.db
            .write(move |c| {
                let (_, u) = read_user(c, &p, &n)?;
                if u.status != "UNCONFIRMED" {
                    return Err(IdentityError::NotAuthorized(format!(
                        "User cannot be confirmed. Current status is {}",
                        u.status
                    )));
                }
                c.execute(
                    "UPDATE users SET status = 'CONFIRMED', updated_ms = ?3
                     WHERE pool_id = ?1 AND sub = ?2",
                    params![p, u.sub, now_ms()],
                )?;
                c.execute(
                    "DELETE FROM codes WHERE pool_id = ?1 AND sub = ?2 AND purpose = 'signup'",
                    params![p, u.sub],
                )?;
                Ok(())
            })
            .await?;
        self.post_confirmation(
            pool_id,
            crate::triggers::NO_CLIENT,
            username,
            "PostConfirmation_ConfirmSignUp",
        )
        .await
    }

    /// ResendConfirmationCode: a new sign-up code for an UNCONFIRMED user.
    pub async fn resend_confirmation_code(
        &self,
        client_id: &str,
        username: &str,
        secret_hash: Option<&str>,
    ) -> Result<CodeDelivery, IdentityError> {
        let client = self.client(client_id).await?;
        crate::client_secret::check_secret_hash(&client, &[username], secret_hash)?;
        self.admit(&client.pool_id, crate::rates::Category::SignUp)?;
        let (p, n) = (client.pool_id.clone(), username.to_owned());
        let prevent = client.prevent_user_existence_errors;
        let out = self
            .db
            .write(move |c| {
                let settings = pool_settings(c, &p)?;
                let Some(u) = find_user(c, &p, &settings, &n)? else {
                    return if prevent {
                        Ok(simulated_delivery(&n))
                    } else {
                        Err(user_not_found())
                    };
                };
                if u.status != "UNCONFIRMED" {
                    return Err(IdentityError::InvalidParameter(
                        "User is already confirmed.".into(),
                    ));
                }
                issue_code(c, &p, &u, "signup", false)?.ok_or_else(|| {
                    IdentityError::InvalidParameter(
                        "Cannot resend codes. Auto verification not turned on.".into(),
                    )
                })
            })
            .await?;
        self.compose_messages(
            &client.pool_id,
            &client.id,
            username,
            "CustomMessage_ResendCode",
        )
        .await?;
        Ok(out)
    }

    /// ForgotPassword: a reset code to the user's verified email or phone number.
    pub async fn forgot_password(
        &self,
        client_id: &str,
        username: &str,
        secret_hash: Option<&str>,
    ) -> Result<CodeDelivery, IdentityError> {
        let client = self.client(client_id).await?;
        crate::client_secret::check_secret_hash(&client, &[username], secret_hash)?;
        self.admit(&client.pool_id, crate::rates::Category::SignUp)?;
        let (p, n) = (client.pool_id.clone(), username.to_owned());
        let known = self
            .db
            .read(move |c| {
                let settings = pool_settings(c, &p)?;
                Ok::<_, IdentityError>(find_user(c, &p, &settings, &n)?.is_some())
            })
            .await?;
        if !known {
            self.migrate_user(
                &client.pool_id,
                &client.id,
                username,
                None,
                &TriggerData::default(),
            )
            .await?;
        }
        let (p, n) = (client.pool_id.clone(), username.to_owned());
        let prevent = client.prevent_user_existence_errors;
        let out = self
            .db
            .write(move |c| {
                let settings = pool_settings(c, &p)?;
                let Some(u) = find_user(c, &p, &settings, &n)? else {
                    return if prevent {
                        Ok(simulated_delivery(&n))
                    } else {
                        Err(user_not_found())
                    };
                };
                if !u.enabled {
                    return Err(IdentityError::NotAuthorized("User is disabled.".into()));
                }
                if recovery(&settings) == ["admin_only"] {
                    return Err(IdentityError::NotAuthorized(
                        "Password reset is restricted to administrators in this user pool (AccountRecoverySetting admin_only): ask for AdminResetUserPassword or AdminSetUserPassword".into(),
                    ));
                }
                reset_code(c, &p, &settings, &u)
            })
            .await?;
        self.compose_messages(
            &client.pool_id,
            &client.id,
            username,
            "CustomMessage_ForgotPassword",
        )
        .await?;
        Ok(out)
    }

    /// ConfirmForgotPassword: checks the reset code and sets the new password (the user
    /// becomes CONFIRMED if it had to reset or change its password).
    pub async fn confirm_forgot_password(
        &self,
        client_id: &str,
        username: &str,
        code: &str,
        new_password: &str,
        secret_hash: Option<&str>,
    ) -> Result<(), IdentityError> {
        let client = self.client(client_id).await?;
        crate::client_secret::check_secret_hash(&client, &[username], secret_hash)?;
        self.admit(&client.pool_id, crate::rates::Category::SignUp)?;
        let (p, n) = (client.pool_id.clone(), username.to_owned());
        let found = self
            .db
            .read(move |c| {
                let settings = pool_settings(c, &p)?;
                Ok::<_, IdentityError>((find_user(c, &p, &settings, &n)?, settings))
            })
            .await?;
        let (Some(u), settings) = found else {
            return Err(if client.prevent_user_existence_errors {
                IdentityError::CodeMismatch(
                    "Invalid verification code provided, please try again.".into(),
                )
            } else {
                user_not_found()
            });
        };
        password::check_policy(new_password, &settings.policies.password_policy)?;
        let secrets = password_secrets(&client.pool_id, &u.username, new_password).await?;
        let (p, code) = (client.pool_id.clone(), code.to_owned());
        self.db
            .write(
                move |c| -> Result<Result<(), IdentityError>, IdentityError> {
                    if let Err(e) = check_code(c, &p, &u.sub, "reset", &code)? {
                        return Ok(Err(e));
                    }
                    let status = match u.status.as_str() {
                        "RESET_REQUIRED" | "FORCE_CHANGE_PASSWORD" => "CONFIRMED",
                        s => s,
                    };
                    store_password(c, &p, &u.sub, &secrets, status, None)?;
                    Ok(Ok(()))
                },
            )
            .await??;
        self.post_confirmation(
            &client.pool_id,
            &client.id,
            username,
            "PostConfirmation_ConfirmForgotPassword",
        )
        .await
    }

    /// The latest `limit` messages of a pool, newest first: what an operator reads to
    /// hand users their codes.
    pub fn outbox(&self, pool_id: &str, limit: usize) -> Result<Vec<OutboxMessage>, IdentityError> {
        let p = pool_id.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db.read_blocking(move |c| {
            let rows = c.query_vec(
                "SELECT destination, kind, code, created_ms, delivery, delivery_error, subject, body
                 FROM outbox WHERE pool_id = ?1 ORDER BY id DESC LIMIT ?2",
                params![p, limit],
                |r| {
                    Ok(OutboxMessage {
                        to: r.get(0)?,
                        kind: r.get(1)?,
                        code: r.get(2)?,
                        created_ms: r.get(3)?,
                        delivery: r.get(4)?,
                        delivery_error: r.get(5)?,
                        subject: r.get(6)?,
                        body: r.get(7)?,
                    })
                },
            )?;
            Ok(rows)
        })
    }
}

/// What PreventUserExistenceErrors answers for an unknown user: a plausible delivery.
fn simulated_delivery(username: &str) -> CodeDelivery {
    let email = username.contains('@');
    CodeDelivery {
        destination: mask(if email { username } else { "x@x" }),
        medium: "EMAIL".into(),
        attribute: "email".into(),
    }
}

fn temp_expiry(settings: &PoolSettings) -> i64 {
    now_ms()
        + i64::from(
            settings
                .policies
                .password_policy
                .temporary_password_validity_days,
        ) * 86_400_000
}

/// A user ready to insert (everything but its password's secrets).
struct PreparedUser {
    pool_id: String,
    sub: String,
    username: String,
    username_key: String,
    attributes: BTreeMap<String, String>,
    status: String,
    temp_expires_ms: Option<i64>,
    settings: PoolSettings,
}

/// Validates a new user against its pool and returns it with the password to set.
fn prepare_user(
    settings: &PoolSettings,
    new: NewUser,
) -> Result<(PreparedUser, String), IdentityError> {
    let mut attributes = new.attributes;
    check_attributes(
        &settings.attribute_rules(),
        &attributes,
        new.admin,
        Write::Create,
    )?;
    let sub = uuid::Uuid::new_v4().to_string();
    let username = if settings.username_attributes.is_empty() {
        if !valid_username(&new.username) {
            return Err(IdentityError::InvalidParameter(format!(
                "1 validation error detected: Value at 'username' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\p{{L}}\\p{{M}}\\p{{S}}\\p{{N}}\\p{{P}}]+ ({:?})",
                new.username
            )));
        }
        new.username.clone()
    } else {
        let given = new.username.trim();
        if given.contains('@') && settings.username_attributes.iter().any(|a| a == "email") {
            let email = crate::normalize_email(given)?;
            attributes.insert("email".into(), email);
        } else if given.starts_with('+')
            && settings
                .username_attributes
                .iter()
                .any(|a| a == "phone_number")
        {
            attributes.insert("phone_number".into(), given.to_owned());
            check_attributes(
                &settings.attribute_rules(),
                &attributes,
                true,
                Write::Create,
            )?;
        } else {
            let what = if settings.username_attributes.iter().any(|a| a == "email") {
                "email"
            } else {
                "phone number"
            };
            return Err(IdentityError::InvalidParameter(format!(
                "Username should be either an {what}."
            )));
        };
        sub.clone()
    };
    if let Some(e) = attributes.get_mut("email") {
        *e = e.to_lowercase();
    }
    attributes.retain(|_, v| !v.is_empty());
    check_required(&settings.attribute_rules(), &attributes)?;
    let policy = &settings.policies.password_policy;
    let password = match new.password {
        Some(p) => {
            password::check_policy(&p, policy)?;
            p
        }
        None => password::generate_temporary(policy),
    };
    let (status, temp_expires_ms) = if new.temporary {
        ("FORCE_CHANGE_PASSWORD", Some(temp_expiry(settings)))
    } else {
        ("CONFIRMED", None)
    };
    Ok((
        PreparedUser {
            pool_id: new.pool_id,
            username_key: username_key(settings, &username),
            sub,
            username,
            attributes,
            status: status.into(),
            temp_expires_ms,
            settings: settings.clone(),
        },
        password,
    ))
}

fn insert_prepared(
    c: &Tx<'_>,
    u: &PreparedUser,
    s: &PasswordSecrets,
) -> Result<UserRecord, IdentityError> {
    // Re-read inside the write: the pool may have gone since the settings were read.
    pool_settings(c, &u.pool_id)?;
    check_email_free(
        c,
        &u.pool_id,
        &u.settings,
        u.attributes.get("email"),
        &u.sub,
    )?;
    let now = now_ms();
    let inserted = c.execute(
        "INSERT INTO users (pool_id, sub, username, username_key, email, password_hash,
             srp_salt, srp_verifier, temp_expires_ms, status, enabled, attributes, created_ms,
             updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 1, ?11, ?12, ?12)
         ON CONFLICT DO NOTHING",
        params![
            u.pool_id,
            u.sub,
            u.username,
            u.username_key,
            u.attributes.get("email"),
            s.hash,
            s.salt,
            s.verifier,
            u.temp_expires_ms,
            u.status,
            serde_json::to_string(&u.attributes)?,
            now
        ],
    )?;
    if inserted == 0 {
        return Err(IdentityError::UsernameExists(
            "User account already exists".into(),
        ));
    }
    Ok(UserRecord {
        username: u.username.clone(),
        sub: u.sub.clone(),
        status: u.status.clone(),
        enabled: true,
        attributes: u.attributes.clone(),
        created_ms: now,
        updated_ms: now,
        mfa_factors: Vec::new(),
        preferred_mfa: None,
    })
}

/// A parsed ListUsers filter.
#[derive(Debug, PartialEq, Eq)]
struct Filter {
    attribute: String,
    prefix: bool,
    value: String,
}

/// `name = "value"` or `name ^= "value"`; `\"` escapes a quote in the value.
fn parse_filter(f: &str) -> Result<Filter, IdentityError> {
    const FILTERABLE: &[&str] = &[
        "username",
        "email",
        "phone_number",
        "name",
        "given_name",
        "family_name",
        "preferred_username",
        "cognito:user_status",
        "status",
        "sub",
    ];
    let bad = || IdentityError::InvalidParameter("Error while parsing filter.".into());
    let (attribute, rest, prefix) = if let Some((a, r)) = f.split_once("^=") {
        (a.trim(), r.trim(), true)
    } else if let Some((a, r)) = f.split_once('=') {
        (a.trim(), r.trim(), false)
    } else {
        return Err(bad());
    };
    if !FILTERABLE.contains(&attribute) {
        return Err(IdentityError::InvalidParameter(format!(
            "Invalid search attribute: {attribute}"
        )));
    }
    let inner = rest
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .ok_or_else(bad)?;
    let value = inner.replace("\\\"", "\"");
    let value = if attribute == "email" {
        value.to_lowercase()
    } else {
        value
    };
    Ok(Filter {
        attribute: attribute.to_owned(),
        prefix,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::identity;

    #[test]
    fn filters_parse() {
        assert_eq!(
            parse_filter(r#"email = "A@x.com""#).expect("eq"),
            Filter {
                attribute: "email".into(),
                prefix: false,
                value: "a@x.com".into()
            }
        );
        assert!(
            parse_filter(r#"given_name ^= "Jo""#)
                .expect("prefix")
                .prefix
        );
        assert_eq!(
            parse_filter(r#"name = "say \"hi\"""#)
                .expect("escaped")
                .value,
            "say \"hi\""
        );
        assert!(parse_filter("email").is_err());
        assert!(parse_filter(r#"custom:x = "1""#).is_err());
        assert!(parse_filter(r#"email = x"#).is_err());
    }

    #[test]
    fn masks_like_cognito() {
        assert_eq!(mask("me@example.com"), "m***@e***");
        assert_eq!(mask("+15551234567"), "+*******4567");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sign_up_confirm_list_and_reset() {
        let (id, info, _engines) = identity();
        let (rec, delivery) = id
            .sign_up(
                &info.client_id,
                "New@Example.com",
                "Passw0rd!",
                BTreeMap::from([("name".to_string(), "New".to_string())]),
                None,
            )
            .await
            .expect("sign up");
        assert_eq!(rec.status, "UNCONFIRMED");
        assert_eq!(rec.username, rec.sub, "email pools name users by sub");
        let delivery = delivery.expect("code sent");
        assert_eq!(delivery.destination, "n***@e***");
        let out = id.outbox(&info.pool_id, 10).expect("outbox");
        assert_eq!(out[0].to, "new@example.com");
        assert_eq!(out[0].kind, "signup");
        let code = out[0].code.clone();
        assert_eq!(code.len(), 6);
        let wrong = if code == "000000" { "111111" } else { "000000" };
        assert!(matches!(
            id.confirm_sign_up(&info.client_id, "new@example.com", wrong, None)
                .await,
            Err(IdentityError::CodeMismatch(_))
        ));
        id.confirm_sign_up(&info.client_id, "new@example.com", &code, None)
            .await
            .expect("confirm");
        let u = id
            .admin_get_user(&info.pool_id, "new@example.com")
            .await
            .expect("get");
        assert_eq!(u.status, "CONFIRMED");
        assert_eq!(u.attributes["email_verified"], "true");
        assert!(matches!(
            id.confirm_sign_up(&info.client_id, "new@example.com", &code, None)
                .await,
            Err(IdentityError::NotAuthorized(_))
        ));
        assert!(matches!(
            id.sign_up(
                &info.client_id,
                "new@example.com",
                "Passw0rd!",
                BTreeMap::new(),
                None
            )
            .await,
            Err(IdentityError::UsernameExists(_))
        ));

        for i in 0..3 {
            id.create_user(
                &info.pool_id,
                &format!("list{i}@example.com"),
                "Passw0rd!",
                false,
            )
            .expect("create");
        }
        let page = id
            .list_users(&info.pool_id, Some(r#"email ^= "list""#), Some(2), None)
            .await
            .expect("list");
        assert_eq!(page.users.len(), 2);
        let rest = id
            .list_users(
                &info.pool_id,
                Some(r#"email ^= "list""#),
                Some(2),
                page.next_token.as_deref(),
            )
            .await
            .expect("list 2");
        assert_eq!(rest.users.len(), 1);
        assert!(rest.next_token.is_none());
        let exact = id
            .list_users(
                &info.pool_id,
                Some(r#"email = "list1@example.com""#),
                None,
                None,
            )
            .await
            .expect("exact");
        assert_eq!(exact.users.len(), 1);

        id.forgot_password(&info.client_id, "list1@example.com", None)
            .await
            .expect("forgot");
        let reset = id.outbox(&info.pool_id, 1).expect("outbox")[0].clone();
        assert_eq!(reset.kind, "reset");
        assert!(matches!(
            id.confirm_forgot_password(
                &info.client_id,
                "list1@example.com",
                &reset.code,
                "weak",
                None
            )
            .await,
            Err(IdentityError::InvalidPassword(_))
        ));
        id.confirm_forgot_password(
            &info.client_id,
            "list1@example.com",
            &reset.code,
            "N3w-Passw0rd",
            None,
        )
        .await
        .expect("reset");
        assert!(
            matches!(
                id.confirm_forgot_password(
                    &info.client_id,
                    "list1@example.com",
                    &reset.code,
                    "N3w-Passw0rd",
                    None
                )
                .await,
                Err(IdentityError::ExpiredCode(_))
            ),
            "a code is used once"
        );
    }

    #[tokio::test]
    async fn attribute_codes_verify_only_the_current_value() {
        let (id, info, _engines) = identity();
        id.sign_up(
            &info.client_id,
            "v@example.com",
            "Passw0rd!",
            BTreeMap::new(),
            None,
        )
        .await
        .expect("sign up");
        let p = &info.pool_id;
        let user = id.admin_get_user(p, "v@example.com").await.expect("user");
        let d = id
            .attribute_verification_code(p, &user.username, "email")
            .await
            .expect("code");
        assert_eq!(
            (d.medium.as_str(), d.attribute.as_str()),
            ("EMAIL", "email")
        );
        let stale = id.outbox(p, 1).expect("outbox")[0].code.clone();
        let attrs = BTreeMap::from([("email".to_owned(), "w@example.com".to_owned())]);
        id.update_attributes(p, &user.username, attrs, false)
            .await
            .expect("update");
        let fresh = id.outbox(p, 1).expect("outbox")[0].clone();
        assert_eq!(fresh.to, "w@example.com");
        if stale != fresh.code {
            assert!(matches!(
                id.verify_attribute(p, &user.username, "email", &stale)
                    .await,
                Err(IdentityError::CodeMismatch(_))
            ));
        }
        id.verify_attribute(p, &user.username, "email", &fresh.code)
            .await
            .expect("verify");
        let user = id.admin_get_user(p, &user.username).await.expect("user");
        assert_eq!(user.attributes["email_verified"], "true");
        assert!(matches!(
            id.attribute_verification_code(p, &user.username, "phone_number")
                .await,
            Err(IdentityError::InvalidParameter(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn code_guesses_are_limited() {
        let (id, info, _engines) = identity();
        id.sign_up(
            &info.client_id,
            "g@example.com",
            "Passw0rd!",
            BTreeMap::new(),
            None,
        )
        .await
        .expect("sign up");
        let code = id.outbox(&info.pool_id, 1).expect("outbox")[0].code.clone();
        let wrong = if code == "000000" { "111111" } else { "000000" };
        for _ in 0..MAX_CODE_FAILURES {
            assert!(matches!(
                id.confirm_sign_up(&info.client_id, "g@example.com", wrong, None)
                    .await,
                Err(IdentityError::CodeMismatch(_))
            ));
        }
        assert!(matches!(
            id.confirm_sign_up(&info.client_id, "g@example.com", &code, None)
                .await,
            Err(IdentityError::LimitExceeded(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_reset_sends_a_code_by_the_first_recovery_mechanism() {
        let (id, info, _engines) = identity();
        let pool = info.pool_id.as_str();
        id.create_user(pool, "reset@example.com", "Passw0rd!", false)
            .expect("create");
        id.admin_update_attributes(
            pool,
            "reset@example.com",
            BTreeMap::from([
                ("phone_number".to_string(), "+15550100".to_string()),
                ("phone_number_verified".to_string(), "true".to_string()),
                ("email_verified".to_string(), "true".to_string()),
            ]),
        )
        .await
        .expect("phone");
        id.update_pool(
            pool,
            crate::pools::PoolUpdate {
                account_recovery_setting: Some(crate::pools::AccountRecoverySetting {
                    recovery_mechanisms: vec![
                        crate::pools::RecoveryOption {
                            priority: 2,
                            name: "verified_email".into(),
                        },
                        crate::pools::RecoveryOption {
                            priority: 1,
                            name: "verified_phone_number".into(),
                        },
                    ],
                }),
                ..Default::default()
            },
        )
        .await
        .expect("recovery setting");

        id.admin_reset_password(pool, "reset@example.com")
            .await
            .expect("reset");
        let u = id
            .admin_get_user(pool, "reset@example.com")
            .await
            .expect("user");
        assert_eq!(u.status, "RESET_REQUIRED");
        assert!(matches!(
            id.initiate_user_password(&info.client_id, "reset@example.com", "Passw0rd!", None)
                .await,
            Err(IdentityError::PasswordResetRequired(_))
        ));
        let sent = id.outbox(pool, 1).expect("outbox");
        assert_eq!(
            (sent[0].kind.as_str(), sent[0].to.as_str()),
            ("reset", "+15550100")
        );
        id.confirm_forgot_password(
            &info.client_id,
            "reset@example.com",
            &sent[0].code,
            "N3w-Passw0rd!",
            None,
        )
        .await
        .expect("confirm");
        assert!(matches!(
            id.initiate_user_password(&info.client_id, "reset@example.com", "N3w-Passw0rd!", None)
                .await,
            Ok(crate::AuthOutcome::Tokens(_))
        ));

        // admin_only: ForgotPassword is refused; an administrator's reset still works.
        id.update_pool(
            pool,
            crate::pools::PoolUpdate {
                account_recovery_setting: Some(crate::pools::AccountRecoverySetting {
                    recovery_mechanisms: vec![crate::pools::RecoveryOption {
                        priority: 1,
                        name: "admin_only".into(),
                    }],
                }),
                ..Default::default()
            },
        )
        .await
        .expect("admin only");
        assert!(matches!(
            id.forgot_password(&info.client_id, "reset@example.com", None)
                .await,
            Err(IdentityError::NotAuthorized(_))
        ));
        id.admin_reset_password(pool, "reset@example.com")
            .await
            .expect("admin reset");
        assert!(
            id.update_pool(
                pool,
                crate::pools::PoolUpdate {
                    account_recovery_setting: Some(crate::pools::AccountRecoverySetting {
                        recovery_mechanisms: vec![crate::pools::RecoveryOption {
                            priority: 1,
                            name: "carrier_pigeon".into(),
                        }],
                    }),
                    ..Default::default()
                },
            )
            .await
            .is_err()
        );
    }
}
