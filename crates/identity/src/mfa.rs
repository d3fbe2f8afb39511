//! Multi-factor authentication with a software token (TOTP, RFC 6238), as Cognito has it.
//!
//! - **Pool**: `MfaConfiguration` (`OFF`, `ON`, `OPTIONAL`) and whether the software token
//!   factor is enabled (`SoftwareTokenMfaConfiguration`), set by CreateUserPool,
//!   UpdateUserPool or SetUserPoolMfaConfig. sluice has no SMS or email factor yet, so a pool
//!   whose MFA is `ON` or `OPTIONAL` has the software token as its factor.
//! - **User** (`user_mfa` row): a secret associated but not verified yet
//!   (AssociateSoftwareToken), the verified secret (VerifySoftwareToken), whether the factor
//!   is enabled and preferred (SetUserMFAPreference), and the last time step a code was
//!   accepted for, so that a code works once.
//! - **Sign-in**: after a correct password, [`Identity::mfa_step`] decides. A user with a
//!   verified token answers `SOFTWARE_TOKEN_MFA` when the pool requires MFA or the user
//!   enabled it; a user without one, in a pool that requires MFA, gets `MFA_SETUP` (associate
//!   and verify a token with the challenge's session, then answer the challenge).
//!
//! Secrets are sealed with the deployment's key file, as access-key secrets are. Codes are
//! 6 digits, HMAC-SHA1, 30-second steps; one step either side of now is accepted (clock
//! drift), and only a step later than the last one accepted.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sluice_meta::{Tx, now_ms, params};

use crate::pools::{PoolSettings, pool_settings};
use crate::users::{MfaRow, find_user, mfa_row, user_factors, user_where};
use crate::{
    ClientRow, Identity, IdentityError, SESSION_TTL_MS, UserRow, random_token, token_hash,
    user_not_found,
};

pub(crate) const MIGRATION: &str = "
CREATE TABLE user_mfa (
    pool_id TEXT NOT NULL,
    sub TEXT NOT NULL,
    pending_secret TEXT,
    secret TEXT,
    friendly_name TEXT,
    enabled INTEGER NOT NULL DEFAULT 0,
    preferred INTEGER NOT NULL DEFAULT 0,
    last_step BIGINT NOT NULL DEFAULT 0,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (pool_id, sub)
);
";

pub use crate::users::{EMAIL_OTP, SMS_MFA, SOFTWARE_TOKEN_MFA};

/// SMS and email factors, per user, and the preferred factor by name.
pub(crate) const MIGRATION_CODES: &str = "
ALTER TABLE user_mfa ADD COLUMN sms_enabled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE user_mfa ADD COLUMN email_enabled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE user_mfa ADD COLUMN preferred_factor TEXT;
";

const STEP_SECS: u64 = 30;
const SECRET_BYTES: usize = 20;
/// Wrong codes one challenge session takes before it is dropped (the password must be
/// given again).
const MAX_SESSION_FAILURES: i64 = 5;

/// The RFC 4648 base32 alphabet, the encoding authenticator apps read secrets in.
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

pub(crate) fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

pub(crate) fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = BASE32.iter().position(|a| *a == c.to_ascii_uppercase())?;
        buffer = (buffer << 5) | v as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// The code of `secret` for time step `step` (RFC 4226's HOTP with SHA-1, 6 digits).
pub(crate) fn code_at(secret: &[u8], step: u64) -> u32 {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        // HMAC takes keys of any length; this branch cannot be taken.
        return u32::MAX;
    };
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    binary % 1_000_000
}

/// The time step `code` is right for, if any: one step either side of `now_secs`, and
/// later than `after` (a step whose code was already accepted).
pub(crate) fn matching_step(secret: &[u8], code: &str, now_secs: u64, after: u64) -> Option<u64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let given: u32 = code.parse().ok()?;
    let now = now_secs / STEP_SECS;
    [now.saturating_sub(1), now, now + 1]
        .into_iter()
        .find(|&step| step > after && code_at(secret, step) == given)
}

fn save_row(c: &Tx<'_>, pool: &str, sub: &str, m: &MfaRow) -> Result<(), IdentityError> {
    c.execute(
        "INSERT INTO user_mfa (pool_id, sub, pending_secret, secret, friendly_name, enabled,
             preferred, last_step, updated_ms, sms_enabled, email_enabled, preferred_factor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (pool_id, sub) DO UPDATE SET pending_secret = excluded.pending_secret,
             secret = excluded.secret, friendly_name = excluded.friendly_name,
             enabled = excluded.enabled, preferred = excluded.preferred,
             last_step = excluded.last_step, updated_ms = excluded.updated_ms,
             sms_enabled = excluded.sms_enabled, email_enabled = excluded.email_enabled,
             preferred_factor = excluded.preferred_factor",
        params![
            pool,
            sub,
            m.pending_secret,
            m.secret,
            m.friendly_name,
            m.enabled,
            m.preferred,
            m.last_step,
            now_ms(),
            m.sms_enabled,
            m.email_enabled,
            m.preferred_factor
        ],
    )?;
    Ok(())
}

/// What a correct password leads to, MFA-wise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MfaChallenge {
    /// Answer with a code of the user's software token.
    SoftwareToken { friendly_name: Option<String> },
    /// The pool requires MFA and the user has no token yet: associate and verify one.
    Setup,
    /// Answer with the code sent by SMS (to the outbox) to `destination` (masked).
    Sms { destination: String },
    /// Answer with the code sent by email to `destination` (masked).
    Email { destination: String },
    /// Pick one of these factors (`ANSWER`), whose challenge follows.
    Select { options: Vec<String> },
}

impl MfaChallenge {
    pub fn name(&self) -> &'static str {
        match self {
            MfaChallenge::SoftwareToken { .. } => SOFTWARE_TOKEN_MFA,
            MfaChallenge::Setup => "MFA_SETUP",
            MfaChallenge::Sms { .. } => SMS_MFA,
            MfaChallenge::Email { .. } => EMAIL_OTP,
            MfaChallenge::Select { .. } => "SELECT_MFA_TYPE",
        }
    }
}

/// The second factor a user owes at sign-in, if any: the preferred (or only) factor on, a
/// choice between several, or setting up a token in a pool that requires MFA.
fn mfa_challenge(
    settings: &PoolSettings,
    m: &MfaRow,
    user: &UserRow,
) -> Result<Option<MfaChallenge>, IdentityError> {
    if settings.mfa_configuration == "OFF" {
        return Ok(None);
    }
    let (factors, preferred) = user_factors(settings, m, &user.attributes);
    let chosen = match (&preferred, factors.as_slice()) {
        (Some(p), _) => p.clone(),
        (None, [only]) => only.clone(),
        (None, []) if settings.mfa_configuration != "ON" => return Ok(None),
        (None, []) if settings.software_token_mfa_enabled() => {
            return Ok(Some(MfaChallenge::Setup));
        }
        (None, []) => {
            return Err(IdentityError::NotAuthorized(
                "MFA is required in this user pool, but the user has no factor it offers (a phone number for SMS_MFA, an email for EMAIL_OTP)".into(),
            ));
        }
        (None, _) => return Ok(Some(MfaChallenge::Select { options: factors })),
    };
    Ok(Some(factor_challenge(&chosen, m, user)))
}

/// The challenge of one factor (codes are sent when its session is stored).
fn factor_challenge(factor: &str, m: &MfaRow, user: &UserRow) -> MfaChallenge {
    let masked = |k: &str| crate::users::mask(user.attributes.get(k).map_or("", String::as_str));
    match factor {
        SMS_MFA => MfaChallenge::Sms {
            destination: masked("phone_number"),
        },
        EMAIL_OTP => MfaChallenge::Email {
            destination: masked("email"),
        },
        _ => MfaChallenge::SoftwareToken {
            friendly_name: m.friendly_name.clone(),
        },
    }
}

/// A one-time code of SMS_MFA / EMAIL_OTP, as kept in the challenge's session.
fn otp_hash(session_hash: &str, code: &str) -> String {
    token_hash(&format!("{session_hash}\0{code}"))
}

/// Stores the session of `challenge` for `user`; for SMS_MFA and EMAIL_OTP also a fresh
/// code (hashed in the session) and its message in the outbox.
fn store_challenge(
    c: &Tx<'_>,
    client: (&str, &str),
    user: &UserRow,
    challenge: &MfaChallenge,
    ttl: i64,
) -> Result<String, IdentityError> {
    let (pool, client_id) = client;
    let session = random_token();
    let h = token_hash(&session);
    let data = match challenge {
        MfaChallenge::Sms { .. } | MfaChallenge::Email { .. } => {
            let code = format!(
                "{:06}",
                rand::Rng::gen_range(&mut rand::thread_rng(), 0..1_000_000u32)
            );
            let attr = if matches!(challenge, MfaChallenge::Sms { .. }) {
                "phone_number"
            } else {
                "email"
            };
            let to = user.attributes.get(attr).cloned().unwrap_or_default();
            crate::users::outbox_insert(c, pool, &user.sub, &to, "mfa", &code)?;
            serde_json::json!({"code": otp_hash(&h, &code)})
        }
        MfaChallenge::Select { options } => serde_json::json!({"options": options}),
        _ => serde_json::json!({}),
    };
    c.execute(
        "INSERT INTO auth_sessions (hash, pool_id, client_id, sub, challenge, expires_ms, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            h,
            pool,
            client_id,
            user.sub,
            challenge.name(),
            now_ms() + ttl,
            data.to_string()
        ],
    )?;
    Ok(session)
}

fn invalid_session() -> IdentityError {
    IdentityError::NotAuthorized("Invalid session for the user.".into())
}

fn code_mismatch() -> IdentityError {
    IdentityError::CodeMismatch("Invalid code or auth state for the user.".into())
}

/// A challenge session of an MFA step, as stored in `auth_sessions`.
struct MfaSession {
    pool: String,
    client: String,
    sub: String,
    challenge: String,
    data: serde_json::Value,
}

fn load_session(c: &Tx<'_>, hash: &str) -> Result<Option<MfaSession>, IdentityError> {
    let row: Option<(String, String, String, String, i64, Option<String>)> = c.query_opt(
        "SELECT pool_id, client_id, sub, challenge, expires_ms, data FROM auth_sessions
         WHERE hash = ?1
           AND challenge IN ('SOFTWARE_TOKEN_MFA', 'MFA_SETUP', 'SMS_MFA', 'EMAIL_OTP', 'SELECT_MFA_TYPE')",
        params![hash],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        },
    )?;
    let Some((pool, client, sub, challenge, expires, data)) = row else {
        return Ok(None);
    };
    if expires < now_ms() {
        c.execute("DELETE FROM auth_sessions WHERE hash = ?1", params![hash])?;
        return Ok(None);
    }
    let data = serde_json::from_str(data.as_deref().unwrap_or("{}"))?;
    Ok(Some(MfaSession {
        pool,
        client,
        sub,
        challenge,
        data,
    }))
}

/// The live session `hash` of `challenge` made for `client` (`(client id, pool id)`), and
/// its user, whom `given` must name; `None` for anything else.
fn session_and_user(
    c: &Tx<'_>,
    hash: &str,
    (cid, pool): (&str, &str),
    challenge: &str,
    given: &str,
) -> Result<Option<(MfaSession, UserRow)>, IdentityError> {
    let Some(s) = load_session(c, hash)? else {
        return Ok(None);
    };
    if s.client != cid || s.pool != pool || s.challenge != challenge {
        return Ok(None);
    }
    let settings = pool_settings(c, pool)?;
    Ok(find_user(c, pool, &settings, given)?
        .filter(|u| u.sub == s.sub)
        .map(|u| (s, u)))
}

/// Counts a wrong code on a session; the fifth ends it.
fn count_failure(c: &Tx<'_>, hash: &str, s: &MfaSession) -> Result<(), IdentityError> {
    let failures = s.data["failures"].as_i64().unwrap_or(0) + 1;
    if failures >= MAX_SESSION_FAILURES {
        c.execute("DELETE FROM auth_sessions WHERE hash = ?1", params![hash])?;
    } else {
        let mut data = s.data.clone();
        data["failures"] = serde_json::json!(failures);
        c.execute(
            "UPDATE auth_sessions SET data = ?2 WHERE hash = ?1",
            params![hash, data.to_string()],
        )?;
    }
    Ok(())
}

/// Replaces a session by a fresh one holding `data` (each step of MFA_SETUP hands the
/// client a new session, as Cognito does; the old one stops working).
fn rotate_session(
    c: &Tx<'_>,
    old_hash: &str,
    s: &MfaSession,
    ttl_ms: i64,
) -> Result<String, IdentityError> {
    c.execute(
        "DELETE FROM auth_sessions WHERE hash = ?1",
        params![old_hash],
    )?;
    let session = random_token();
    c.execute(
        "INSERT INTO auth_sessions (hash, pool_id, client_id, sub, challenge, expires_ms, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            token_hash(&session),
            s.pool,
            s.client,
            s.sub,
            s.challenge,
            now_ms() + ttl_ms,
            s.data.to_string()
        ],
    )?;
    Ok(session)
}

/// Whose token an AssociateSoftwareToken / VerifySoftwareToken call is about.
pub enum TokenOwner<'a> {
    /// The bearer of an access token.
    AccessToken(&'a str),
    /// The user of an `MFA_SETUP` challenge session.
    Session(&'a str),
}

/// [`TokenOwner`] with an access token already resolved to its user.
pub(crate) enum Owner {
    User { pool: String, sub: String },
    Session(String),
}

/// What VerifySoftwareToken answers.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The next session, when the call was made with one.
    pub session: Option<String>,
}

/// `SoftwareTokenMfaSettings`, `SMSMfaSettings` or `EmailMfaSettings` of
/// SetUserMFAPreference.
#[derive(Debug, Clone, Copy, Default)]
pub struct FactorSetting {
    pub enabled: Option<bool>,
    pub preferred: Option<bool>,
}

/// The three factors' settings of one SetUserMFAPreference call (absent: unchanged).
#[derive(Debug, Clone, Copy, Default)]
pub struct FactorSettings {
    pub software: Option<FactorSetting>,
    pub sms: Option<FactorSetting>,
    pub email: Option<FactorSetting>,
}

/// A pool's MFA configuration as SetUserPoolMfaConfig / GetUserPoolMfaConfig show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolMfaConfig {
    pub mfa_configuration: String,
    pub software_token_enabled: bool,
    /// `SmsMfaConfiguration` / `EmailMfaConfiguration` as set (`None`: off).
    pub sms: Option<serde_json::Value>,
    pub email: Option<serde_json::Value>,
}

impl PoolMfaConfig {
    fn of(s: &PoolSettings) -> PoolMfaConfig {
        PoolMfaConfig {
            mfa_configuration: s.mfa_configuration.clone(),
            software_token_enabled: s.software_token_mfa_enabled(),
            sms: s.sms_mfa_configuration.clone().filter(|v| !v.is_null()),
            email: s.email_mfa_configuration.clone().filter(|v| !v.is_null()),
        }
    }
}

impl Identity {
    /// After a correct password (and every other check): the MFA challenge the user must
    /// answer, with its session, or `None` to issue tokens.
    pub(crate) async fn mfa_step(
        &self,
        client: &ClientRow,
        user: &UserRow,
    ) -> Result<Option<(MfaChallenge, String)>, IdentityError> {
        // A read decides (most sign-ins owe no second factor); only a challenge is written.
        let (p, u) = (client.pool_id.clone(), user.clone());
        let challenge = self
            .db
            .read(move |c| {
                let settings = pool_settings(c, &p)?;
                mfa_challenge(&settings, &mfa_row(c, &p, &u.sub)?, &u)
            })
            .await?;
        let Some(challenge) = challenge else {
            return Ok(None);
        };
        let session = self.store_challenge_of(client, user, &challenge).await?;
        Ok(Some((challenge, session)))
    }

    async fn store_challenge_of(
        &self,
        client: &ClientRow,
        user: &UserRow,
        challenge: &MfaChallenge,
    ) -> Result<String, IdentityError> {
        let (pool, cid, u, ch, ttl) = (
            client.pool_id.clone(),
            client.id.clone(),
            user.clone(),
            challenge.clone(),
            client.session_ttl_ms(),
        );
        let session = self
            .db
            .write(move |c| store_challenge(c, (&pool, &cid), &u, &ch, ttl))
            .await?;
        if matches!(
            challenge,
            MfaChallenge::Sms { .. } | MfaChallenge::Email { .. }
        ) {
            self.compose_messages(
                &client.pool_id,
                &client.id,
                &user.username,
                "CustomMessage_Authentication",
            )
            .await?;
        }
        Ok(session)
    }

    /// RespondToAuthChallenge for SMS_MFA / EMAIL_OTP (`factor`): the code sent for the
    /// session. A wrong code keeps the session for another try (up to 5).
    pub(crate) async fn answer_code(
        &self,
        client: &ClientRow,
        session: &str,
        username: &str,
        factor: &'static str,
        code: &str,
    ) -> Result<UserRow, IdentityError> {
        let (h, cid, pool, given, code) = (
            token_hash(session),
            client.id.clone(),
            client.pool_id.clone(),
            username.to_owned(),
            code.to_owned(),
        );
        let outcome: Result<UserRow, IdentityError> = self
            .db
            .write(move |c| {
                let Some((s, user)) = session_and_user(c, &h, (&cid, &pool), factor, &given)?
                else {
                    return Ok::<_, IdentityError>(Err(invalid_session()));
                };
                if s.data["code"].as_str() == Some(otp_hash(&h, code.trim()).as_str()) {
                    c.execute("DELETE FROM auth_sessions WHERE hash = ?1", params![&h])?;
                    return Ok(Ok(user));
                }
                count_failure(c, &h, &s)?;
                Ok(Err(code_mismatch()))
            })
            .await?;
        outcome
    }

    /// RespondToAuthChallenge for SELECT_MFA_TYPE: the chosen factor's challenge.
    pub(crate) async fn answer_select(
        &self,
        client: &ClientRow,
        session: &str,
        username: &str,
        answer: &str,
    ) -> Result<(MfaChallenge, String), IdentityError> {
        let (h, cid, pool, given) = (
            token_hash(session),
            client.id.clone(),
            client.pool_id.clone(),
            username.to_owned(),
        );
        let (user, m) = self
            .db
            .write(move |c| {
                let (s, user) = session_and_user(c, &h, (&cid, &pool), "SELECT_MFA_TYPE", &given)?
                    .ok_or_else(invalid_session)?;
                c.execute("DELETE FROM auth_sessions WHERE hash = ?1", params![&h])?;
                let options: Vec<String> = s.data["options"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok::<_, IdentityError>((user.clone(), (mfa_row(c, &pool, &user.sub)?, options)))
            })
            .await?;
        let (m, options) = m;
        if !options.iter().any(|o| o == answer) {
            return Err(IdentityError::InvalidParameter(format!(
                "ANSWER must be one of the factors offered: {}",
                options.join(", ")
            )));
        }
        let challenge = factor_challenge(answer, &m, &user);
        let session = self.store_challenge_of(client, &user, &challenge).await?;
        Ok((challenge, session))
    }

    /// RespondToAuthChallenge for SOFTWARE_TOKEN_MFA: the user's code, checked against the
    /// session's user. A wrong code keeps the session for another try (up to 5).
    pub(crate) async fn answer_software_token(
        &self,
        client: &ClientRow,
        session: &str,
        username: &str,
        code: &str,
    ) -> Result<UserRow, IdentityError> {
        let sealer = self.sealer()?;
        let (h, cid, pool, given, code) = (
            token_hash(session),
            client.id.clone(),
            client.pool_id.clone(),
            username.to_owned(),
            code.to_owned(),
        );
        let outcome: Result<UserRow, IdentityError> = self
            .db
            .write(move |c| {
                let Some((s, user)) =
                    session_and_user(c, &h, (&cid, &pool), SOFTWARE_TOKEN_MFA, &given)?
                else {
                    return Ok::<_, IdentityError>(Err(invalid_session()));
                };
                let mut m = mfa_row(c, &pool, &s.sub)?;
                let Some(sealed) = &m.secret else {
                    return Ok(Err(IdentityError::SoftwareTokenMfaNotFound(
                        "Software Token MFA does not exist for the user.".into(),
                    )));
                };
                let secret = base32_decode(&sealer.open(&mfa_seal_id(&pool, &s.sub), sealed)?)
                    .ok_or_else(|| IdentityError::Backend("stored TOTP secret".into()))?;
                let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
                let after = u64::try_from(m.last_step).unwrap_or(0);
                match matching_step(&secret, &code, now, after) {
                    Some(step) => {
                        c.execute("DELETE FROM auth_sessions WHERE hash = ?1", params![&h])?;
                        m.last_step = i64::try_from(step).unwrap_or(i64::MAX);
                        save_row(c, &pool, &s.sub, &m)?;
                        Ok(Ok(user))
                    }
                    None => {
                        count_failure(c, &h, &s)?;
                        Ok(Err(code_mismatch()))
                    }
                }
            })
            .await?;
        outcome
    }

    /// RespondToAuthChallenge for MFA_SETUP: the session's user has verified a token with
    /// this session (VerifySoftwareToken), so the sign-in completes.
    pub(crate) async fn answer_mfa_setup(
        &self,
        client: &ClientRow,
        session: &str,
        username: &str,
    ) -> Result<UserRow, IdentityError> {
        let (h, cid, pool, given) = (
            token_hash(session),
            client.id.clone(),
            client.pool_id.clone(),
            username.to_owned(),
        );
        self.db
            .write(move |c| {
                let (s, user) = session_and_user(c, &h, (&cid, &pool), "MFA_SETUP", &given)?
                    .ok_or_else(invalid_session)?;
                if s.data["verified"] != serde_json::Value::Bool(true) {
                    return Err(IdentityError::InvalidParameter(
                        "Software token MFA has not been verified for this session: call AssociateSoftwareToken and VerifySoftwareToken with it first".into(),
                    ));
                }
                c.execute("DELETE FROM auth_sessions WHERE hash = ?1", params![&h])?;
                Ok(user)
            })
            .await
    }

    /// AssociateSoftwareToken: a new secret for the user (base32, as authenticator apps
    /// take it), pending until verified. For an MFA_SETUP session
    /// ([`TokenOwner::Session`]), also the next session. An access token's user is resolved
    /// by the caller (`auth.rs`) and comes as [`TokenOwner::User`].
    pub(crate) async fn associate_token(
        &self,
        owner: Owner,
    ) -> Result<(String, Option<String>), IdentityError> {
        let sealer = self.sealer()?;
        let mut raw = [0u8; SECRET_BYTES];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
        let secret = base32_encode(&raw);
        match owner {
            Owner::User { pool, sub } => {
                let sealed = sealer.seal(&mfa_seal_id(&pool, &sub), &secret)?;
                self.db
                    .write(move |c| {
                        let mut m = mfa_row(c, &pool, &sub)?;
                        m.pending_secret = Some(sealed.clone());
                        save_row(c, &pool, &sub, &m)
                    })
                    .await?;
                Ok((secret, None))
            }
            Owner::Session(session) => {
                let h = token_hash(&session);
                let secret_for_seal = secret.clone();
                let next = self
                    .db
                    .write(move |c| {
                        let mut s = load_session(c, &h)?.ok_or_else(invalid_session)?;
                        if s.challenge != "MFA_SETUP" {
                            return Err(invalid_session());
                        }
                        let sealed =
                            sealer.seal(&mfa_seal_id(&s.pool, &s.sub), &secret_for_seal)?;
                        let mut m = mfa_row(c, &s.pool, &s.sub)?;
                        m.pending_secret = Some(sealed);
                        save_row(c, &s.pool, &s.sub, &m)?;
                        s.data = serde_json::json!({"associated": true});
                        rotate_session(c, &h, &s, SESSION_TTL_MS)
                    })
                    .await?;
                Ok((secret, Some(next)))
            }
        }
    }

    /// VerifySoftwareToken: the pending secret becomes the user's token when `code` is
    /// right for it. Completing MFA_SETUP (a session) also enables and prefers the factor.
    pub(crate) async fn verify_token(
        &self,
        owner: Owner,
        code: &str,
        friendly_name: Option<&str>,
    ) -> Result<Verified, IdentityError> {
        let sealer = self.sealer()?;
        let (pool, sub, session_hash) = match owner {
            Owner::User { pool, sub } => (pool, sub, None),
            Owner::Session(session) => {
                let h = token_hash(&session);
                let h2 = h.clone();
                let s = self
                    .db
                    .read(move |c| load_session(c, &h2))
                    .await?
                    .filter(|s| s.challenge == "MFA_SETUP")
                    .ok_or_else(invalid_session)?;
                (s.pool, s.sub, Some(h))
            }
        };
        let (code, name) = (code.to_owned(), friendly_name.map(str::to_owned));
        let outcome: Result<Verified, IdentityError> = self
            .db
            .write(move |c| {
                let mut m = mfa_row(c, &pool, &sub)?;
                let Some(sealed) = m.pending_secret.clone() else {
                    return Ok::<_, IdentityError>(Err(IdentityError::SoftwareTokenMfaNotFound(
                        "Software Token MFA does not exist for the user: call AssociateSoftwareToken first.".into(),
                    )));
                };
                let plain = sealer.open(&mfa_seal_id(&pool, &sub), &sealed)?;
                let secret = base32_decode(&plain)
                    .ok_or_else(|| IdentityError::Backend("stored TOTP secret".into()))?;
                let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
                let Some(step) = matching_step(&secret, &code, now, 0) else {
                    return Ok(Err(IdentityError::EnableSoftwareTokenMfa(
                        "Code mismatch and fail enable Software Token MFA".into(),
                    )));
                };
                m.secret = Some(sealed);
                m.pending_secret = None;
                m.friendly_name = name.clone();
                m.last_step = i64::try_from(step).unwrap_or(i64::MAX);
                let next = match &session_hash {
                    Some(h) => {
                        let mut s = load_session(c, h)?.ok_or_else(invalid_session)?;
                        if s.pool != pool || s.sub != sub {
                            return Err(invalid_session());
                        }
                        m.enabled = true;
                        m.preferred = true;
                        s.data = serde_json::json!({"verified": true});
                        Some(rotate_session(c, h, &s, SESSION_TTL_MS)?)
                    }
                    None => None,
                };
                save_row(c, &pool, &sub, &m)?;
                Ok(Ok(Verified { session: next }))
            })
            .await?;
        outcome
    }

    /// AdminSetUserMFAPreference.
    pub async fn admin_set_mfa_preference(
        &self,
        pool_id: &str,
        username: &str,
        settings: FactorSettings,
    ) -> Result<(), IdentityError> {
        let (p, n) = (pool_id.to_owned(), username.to_owned());
        let sub = self
            .db
            .read(move |c| {
                let settings = pool_settings(c, &p)?;
                Ok::<_, IdentityError>(find_user(c, &p, &settings, &n)?.map(|u| u.sub))
            })
            .await?
            .ok_or_else(user_not_found)?;
        self.store_mfa_preference(pool_id.to_owned(), sub, settings)
            .await
    }

    pub(crate) async fn store_mfa_preference(
        &self,
        pool: String,
        sub: String,
        settings: FactorSettings,
    ) -> Result<(), IdentityError> {
        self.db
            .write(move |c| {
                let user = user_where(c, "sub", &pool, &sub)?.ok_or_else(user_not_found)?;
                let pool_settings = pool_settings(c, &pool)?;
                let mut m = mfa_row(c, &pool, &sub)?;
                let has = |k: &str| user.attributes.get(k).is_some_and(|v| !v.is_empty());
                for (factor, f) in [
                    (SOFTWARE_TOKEN_MFA, settings.software),
                    (SMS_MFA, settings.sms),
                    (EMAIL_OTP, settings.email),
                ] {
                    let Some(f) = f else { continue };
                    if f.enabled == Some(true) || f.preferred == Some(true) {
                        let (deliverable, offered) = match factor {
                            SOFTWARE_TOKEN_MFA => {
                                (m.secret.is_some(), pool_settings.software_token_mfa_enabled())
                            }
                            SMS_MFA => (has("phone_number"), pool_settings.sms_mfa_enabled()),
                            _ => (has("email"), pool_settings.email_mfa_enabled()),
                        };
                        if !deliverable {
                            return Err(IdentityError::InvalidParameter(format!(
                                "User does not have delivery config set to turn on {factor}"
                            )));
                        }
                        if !offered {
                            return Err(IdentityError::InvalidParameter(format!(
                                "{factor} is not enabled for this user pool: set it with SetUserPoolMfaConfig"
                            )));
                        }
                    }
                    let enabled = match factor {
                        SOFTWARE_TOKEN_MFA => &mut m.enabled,
                        SMS_MFA => &mut m.sms_enabled,
                        _ => &mut m.email_enabled,
                    };
                    if let Some(e) = f.enabled {
                        *enabled = e;
                    }
                    if f.preferred == Some(true) {
                        *enabled = true;
                    }
                    let on = *enabled;
                    let was_preferred = m.preferred_factor.as_deref() == Some(factor)
                        || (factor == SOFTWARE_TOKEN_MFA && m.preferred);
                    if f.preferred == Some(true) {
                        m.preferred_factor = Some(factor.to_owned());
                    } else if was_preferred && (f.preferred == Some(false) || !on) {
                        m.preferred_factor = None;
                    }
                    if factor == SOFTWARE_TOKEN_MFA {
                        m.preferred = m.preferred_factor.as_deref() == Some(SOFTWARE_TOKEN_MFA);
                    }
                }
                if m.preferred_factor.as_deref() != Some(SOFTWARE_TOKEN_MFA) {
                    m.preferred = false;
                }
                save_row(c, &pool, &sub, &m)
            })
            .await
    }

    /// GetUserPoolMfaConfig.
    pub async fn pool_mfa_config(&self, pool_id: &str) -> Result<PoolMfaConfig, IdentityError> {
        let p = pool_id.to_owned();
        let s = self.db.read(move |c| pool_settings(c, &p)).await?;
        Ok(PoolMfaConfig::of(&s))
    }

    /// SetUserPoolMfaConfig. `mfa_configuration` absent keeps the pool's; the software
    /// token setting absent keeps it too.
    pub async fn set_pool_mfa_config(
        &self,
        pool_id: &str,
        change: PoolMfaChange,
    ) -> Result<PoolMfaConfig, IdentityError> {
        self.change_settings(pool_id, move |s| {
            let change = change.clone();
            if let Some(m) = &change.mfa_configuration {
                s.mfa_configuration = m.clone();
            }
            let configures_other = change.sms.is_some() || change.email.is_some();
            if change.software_token_enabled.is_none()
                && s.software_token_mfa_configuration.is_none()
                && configures_other
            {
                // Naming only other factors leaves the software token off.
                s.software_token_mfa_configuration =
                    Some(crate::pools::SoftwareTokenMfaConfiguration { enabled: false });
            }
            if let Some(e) = change.software_token_enabled {
                s.software_token_mfa_configuration =
                    Some(crate::pools::SoftwareTokenMfaConfiguration { enabled: e });
            }
            if let Some(v) = change.sms {
                s.sms_mfa_configuration = Some(v);
            }
            if let Some(v) = change.email {
                s.email_mfa_configuration = Some(v);
            }
            if s.mfa_configuration == "OFF"
                && (change.software_token_enabled == Some(true) || configures_other)
            {
                return Err(IdentityError::InvalidParameter(
                    "Invalid MFA configuration given, can't turn off MFA and configure an MFA together.".into(),
                ));
            }
            if s.mfa_configuration != "OFF"
                && !s.software_token_mfa_enabled()
                && !s.sms_mfa_enabled()
                && !s.email_mfa_enabled()
            {
                return Err(IdentityError::InvalidParameter(
                    "At least one MFA method must be enabled when MfaConfiguration is ON or OPTIONAL".into(),
                ));
            }
            Ok(PoolMfaConfig::of(s))
        })
        .await
    }
}

/// What SetUserPoolMfaConfig changes (absent: kept).
#[derive(Debug, Clone, Default)]
pub struct PoolMfaChange {
    pub mfa_configuration: Option<String>,
    pub software_token_enabled: Option<bool>,
    /// `SmsMfaConfiguration`; `Some(Value::Null)` turns the factor off.
    pub sms: Option<serde_json::Value>,
    /// `EmailMfaConfiguration`; `Some(Value::Null)` turns the factor off.
    pub email: Option<serde_json::Value>,
}

/// What a user's TOTP secret is sealed as (the id binds the sealed text to its user).
fn mfa_seal_id(pool: &str, sub: &str) -> String {
    format!("totp/{pool}/{sub}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trips_and_matches_rfc_4648() {
        // RFC 4648 section 10's test vectors (without padding).
        for (plain, encoded) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), encoded);
            assert_eq!(
                base32_decode(encoded).as_deref(),
                Some(plain.as_bytes()),
                "{encoded}"
            );
        }
        assert_eq!(base32_decode("mzxw6===").as_deref(), Some(&b"foo"[..]));
        assert!(base32_decode("M1").is_none(), "1 is not base32");
        assert_eq!(base32_encode(&[0u8; 20]).len(), 32);
    }

    #[test]
    fn codes_match_rfc_6238() {
        // RFC 6238 appendix B, SHA-1, with the last 6 of its 8 digits.
        let secret = b"12345678901234567890";
        for (time, code) in [
            (59u64, 287_082),
            (1_111_111_109, 81_804),
            (1_111_111_111, 50_471),
            (1_234_567_890, 5_924),
            (2_000_000_000, 279_037),
            (20_000_000_000, 353_130),
        ] {
            assert_eq!(code_at(secret, time / STEP_SECS), code, "at {time}");
        }
    }

    #[test]
    fn a_code_matches_one_step_either_side_and_only_after_the_last_used() {
        let secret = b"12345678901234567890";
        let now = 1_111_111_111u64;
        let step = now / STEP_SECS;
        let code = |s: u64| format!("{:06}", code_at(secret, s));
        assert_eq!(matching_step(secret, &code(step), now, 0), Some(step));
        assert_eq!(
            matching_step(secret, &code(step - 1), now, 0),
            Some(step - 1)
        );
        assert_eq!(
            matching_step(secret, &code(step + 1), now, 0),
            Some(step + 1)
        );
        assert_eq!(matching_step(secret, &code(step - 2), now, 0), None);
        assert_eq!(matching_step(secret, &code(step), now, step), None, "used");
        assert_eq!(matching_step(secret, "12345", now, 0), None);
        assert_eq!(matching_step(secret, "abcdef", now, 0), None);
    }

    fn sw(enabled: Option<bool>, preferred: Option<bool>) -> FactorSettings {
        FactorSettings {
            software: Some(FactorSetting { enabled, preferred }),
            ..FactorSettings::default()
        }
    }

    /// The code of a base32 secret `offset` steps from now.
    fn code_of(secret: &str, offset: i64) -> String {
        let raw = base32_decode(secret).expect("base32");
        let step = (now_ms() / 1000) as u64 / STEP_SECS;
        format!("{:06}", code_at(&raw, step.saturating_add_signed(offset)))
    }

    fn tokens(o: crate::AuthOutcome) -> crate::AuthTokens {
        match o {
            crate::AuthOutcome::Tokens(t) => t,
            _ => panic!("expected tokens"),
        }
    }

    fn challenge(o: crate::AuthOutcome) -> (MfaChallenge, String) {
        match o {
            crate::AuthOutcome::Mfa {
                challenge, session, ..
            } => (challenge, session),
            _ => panic!("expected an MFA challenge"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn optional_mfa_enrol_sign_in_with_a_code_and_refuse_replays() {
        let (id, info, _engines) = crate::test_support::identity();
        let (pool, client) = (info.pool_id.as_str(), info.client_id.as_str());
        id.create_user(pool, "totp@example.com", "Passw0rd!", false)
            .expect("create");
        let sign_in = || id.initiate_user_password(client, "totp@example.com", "Passw0rd!", None);

        // Off: nothing to enrol in.
        assert!(matches!(
            id.set_pool_mfa_config(pool, PoolMfaChange { mfa_configuration: Some("OFF".into()), software_token_enabled: Some(true), ..Default::default() }).await,
            Err(IdentityError::InvalidParameter(m)) if m.contains("can't turn off MFA")
        ));
        assert!(matches!(
            id.set_pool_mfa_config(
                pool,
                PoolMfaChange {
                    mfa_configuration: Some("ON".into()),
                    software_token_enabled: Some(false),
                    ..Default::default()
                }
            )
            .await,
            Err(IdentityError::InvalidParameter(_))
        ));
        let c = id
            .set_pool_mfa_config(
                pool,
                PoolMfaChange {
                    mfa_configuration: Some("OPTIONAL".into()),
                    software_token_enabled: Some(true),
                    ..Default::default()
                },
            )
            .await
            .expect("optional");
        assert!(c.software_token_enabled && c.mfa_configuration == "OPTIONAL");

        // Not enrolled yet: tokens at once.
        let t = tokens(sign_in().await.expect("sign in"));
        assert!(matches!(
            id.set_mfa_preference(&t.access_token, sw(Some(true), Some(true))).await,
            Err(IdentityError::InvalidParameter(m)) if m.contains("delivery config")
        ));
        assert!(matches!(
            id.verify_software_token(TokenOwner::AccessToken(&t.access_token), "123456", None)
                .await,
            Err(IdentityError::SoftwareTokenMfaNotFound(_))
        ));
        let (secret, session) = id
            .associate_software_token(TokenOwner::AccessToken(&t.access_token))
            .await
            .expect("associate");
        assert_eq!(secret.len(), 32);
        assert!(session.is_none());
        let wrong = format!(
            "{:06}",
            (code_of(&secret, 0).parse::<u32>().expect("n") + 1) % 1_000_000
        );
        assert!(matches!(
            id.verify_software_token(TokenOwner::AccessToken(&t.access_token), &wrong, None)
                .await,
            Err(IdentityError::EnableSoftwareTokenMfa(_))
        ));
        let first = code_of(&secret, 0);
        id.verify_software_token(
            TokenOwner::AccessToken(&t.access_token),
            &first,
            Some("phone"),
        )
        .await
        .expect("verify");
        // Verified but not enabled: an optional pool still signs in without a code.
        tokens(sign_in().await.expect("sign in"));
        let me = id
            .admin_get_user(pool, "totp@example.com")
            .await
            .expect("user");
        assert!(me.mfa_factors.is_empty());

        id.set_mfa_preference(&t.access_token, sw(Some(true), Some(true)))
            .await
            .expect("enable");
        let me = id
            .admin_get_user(pool, "totp@example.com")
            .await
            .expect("user");
        assert_eq!(me.mfa_factors, vec![SOFTWARE_TOKEN_MFA.to_owned()]);
        assert_eq!(me.preferred_mfa.as_deref(), Some(SOFTWARE_TOKEN_MFA));

        let (ch, session) = challenge(sign_in().await.expect("challenge"));
        assert_eq!(
            ch,
            MfaChallenge::SoftwareToken {
                friendly_name: Some("phone".into())
            }
        );
        assert!(matches!(
            id.respond_software_token(None, client, &session, "totp@example.com", &wrong, None)
                .await,
            Err(IdentityError::CodeMismatch(_))
        ));
        // The code verification used is spent; the next step's code works (one step of
        // drift is allowed), once.
        assert!(matches!(
            id.respond_software_token(None, client, &session, "totp@example.com", &first, None)
                .await,
            Err(IdentityError::CodeMismatch(_))
        ));
        let second = code_of(&secret, 1);
        let t = id
            .respond_software_token(None, client, &session, "totp@example.com", &second, None)
            .await
            .expect("tokens");
        assert!(t.refresh_token.is_some());
        assert!(
            matches!(
                id.respond_software_token(
                    None,
                    client,
                    &session,
                    "totp@example.com",
                    &second,
                    None
                )
                .await,
                Err(IdentityError::NotAuthorized(_))
            ),
            "a session answers once"
        );
        let (_, session) = challenge(sign_in().await.expect("challenge"));
        assert!(
            matches!(
                id.respond_software_token(
                    None,
                    client,
                    &session,
                    "totp@example.com",
                    &second,
                    None
                )
                .await,
                Err(IdentityError::CodeMismatch(_))
            ),
            "a code answers once"
        );

        // Five wrong codes end a session.
        let (_, session) = challenge(sign_in().await.expect("challenge"));
        for _ in 0..MAX_SESSION_FAILURES {
            assert!(matches!(
                id.respond_software_token(None, client, &session, "totp@example.com", &wrong, None)
                    .await,
                Err(IdentityError::CodeMismatch(_))
            ));
        }
        assert!(matches!(
            id.respond_software_token(
                None,
                client,
                &session,
                "totp@example.com",
                &code_of(&secret, 1),
                None
            )
            .await,
            Err(IdentityError::NotAuthorized(_))
        ));

        // Disabled again: no challenge.
        id.admin_set_mfa_preference(pool, "totp@example.com", sw(Some(false), None))
            .await
            .expect("disable");
        tokens(sign_in().await.expect("sign in"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn required_mfa_sets_up_a_token_during_sign_in() {
        let (id, info, _engines) = crate::test_support::identity();
        let (pool, client) = (info.pool_id.as_str(), info.client_id.as_str());
        id.set_pool_mfa_config(
            pool,
            PoolMfaChange {
                mfa_configuration: Some("ON".into()),
                software_token_enabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("on");
        // A temporary password first: the new password leads to MFA_SETUP.
        id.create_user(pool, "setup@example.com", "Temp0rary!", true)
            .expect("create");
        let crate::AuthOutcome::NewPasswordRequired { session, .. } = id
            .initiate_user_password(client, "setup@example.com", "Temp0rary!", None)
            .await
            .expect("challenge")
        else {
            panic!("expected NEW_PASSWORD_REQUIRED");
        };
        let (ch, session) = challenge(
            id.respond_new_password(
                client,
                &session,
                "setup@example.com",
                "N3w-Passw0rd",
                Default::default(),
                None,
            )
            .await
            .expect("new password"),
        );
        assert_eq!(ch, MfaChallenge::Setup);
        assert!(
            matches!(
                id.respond_mfa_setup(None, client, &session, "setup@example.com", None)
                    .await,
                Err(IdentityError::InvalidParameter(_))
            ),
            "not verified yet"
        );
        let (secret, next) = id
            .associate_software_token(TokenOwner::Session(&session))
            .await
            .expect("associate");
        let next = next.expect("next session");
        assert!(
            id.associate_software_token(TokenOwner::Session(&session))
                .await
                .is_err(),
            "the old session is gone"
        );
        let v = id
            .verify_software_token(TokenOwner::Session(&next), &code_of(&secret, 0), None)
            .await
            .expect("verify");
        let last = v.session.expect("session");
        let t = id
            .respond_mfa_setup(None, client, &last, "setup@example.com", None)
            .await
            .expect("tokens");
        assert!(!t.access_token.is_empty());
        let me = id
            .admin_get_user(pool, "setup@example.com")
            .await
            .expect("user");
        assert_eq!(me.mfa_factors, vec![SOFTWARE_TOKEN_MFA.to_owned()]);

        // From now on, a code at every sign-in, also through the admin flow.
        let (ch, session) = challenge(
            id.admin_initiate_user_password(
                pool,
                client,
                "setup@example.com",
                "N3w-Passw0rd",
                None,
            )
            .await
            .expect("challenge"),
        );
        assert!(matches!(ch, MfaChallenge::SoftwareToken { .. }));
        id.respond_software_token(
            Some(pool),
            client,
            &session,
            "setup@example.com",
            &code_of(&secret, 1),
            None,
        )
        .await
        .expect("tokens");
        // A pool without MFA any more signs in with the password alone.
        id.set_pool_mfa_config(
            pool,
            PoolMfaChange {
                mfa_configuration: Some("OFF".into()),
                software_token_enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .expect("off");
        tokens(
            id.initiate_user_password(client, "setup@example.com", "N3w-Passw0rd", None)
                .await
                .expect("sign in"),
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn codes_by_sms_and_email_and_a_choice_between_factors() {
        let (id, info, _engines) = crate::test_support::identity();
        let (pool, client) = (info.pool_id.as_str(), info.client_id.as_str());
        id.create_user(pool, "codes@example.com", "Passw0rd!", false)
            .expect("create");
        id.admin_update_attributes(
            pool,
            "codes@example.com",
            std::collections::BTreeMap::from([
                ("phone_number".to_string(), "+15550123".to_string()),
                ("phone_number_verified".to_string(), "true".to_string()),
            ]),
        )
        .await
        .expect("phone");
        let config = id
            .set_pool_mfa_config(
                pool,
                PoolMfaChange {
                    mfa_configuration: Some("OPTIONAL".into()),
                    sms: Some(serde_json::json!({"SmsAuthenticationMessage": "{####}"})),
                    email: Some(serde_json::json!({})),
                    ..Default::default()
                },
            )
            .await
            .expect("sms and email");
        assert!(!config.software_token_enabled, "only the factors named");
        let both = FactorSettings {
            sms: Some(FactorSetting {
                enabled: Some(true),
                preferred: None,
            }),
            email: Some(FactorSetting {
                enabled: Some(true),
                preferred: None,
            }),
            ..FactorSettings::default()
        };
        id.admin_set_mfa_preference(pool, "codes@example.com", both)
            .await
            .expect("enable both");
        let sign_in = || id.initiate_user_password(client, "codes@example.com", "Passw0rd!", None);
        let latest = || id.outbox(pool, 1).expect("outbox").remove(0);

        let (ch, session) = challenge(sign_in().await.expect("select"));
        assert_eq!(
            ch,
            MfaChallenge::Select {
                options: vec![SMS_MFA.to_owned(), EMAIL_OTP.to_owned()]
            }
        );
        let crate::AuthOutcome::Mfa {
            challenge: picked,
            session,
            ..
        } = id
            .respond_select_mfa(None, client, &session, "codes@example.com", EMAIL_OTP)
            .await
            .expect("picked")
        else {
            panic!("expected the email challenge");
        };
        assert_eq!(
            picked,
            MfaChallenge::Email {
                destination: "c***@e***".into()
            }
        );
        let sent = latest();
        assert_eq!(
            (sent.kind.as_str(), sent.to.as_str()),
            ("mfa", "codes@example.com")
        );
        let wrong = if sent.code == "000000" {
            "111111"
        } else {
            "000000"
        };
        assert!(matches!(
            id.respond_code(
                None,
                client,
                &session,
                "codes@example.com",
                EMAIL_OTP,
                wrong,
                None
            )
            .await,
            Err(IdentityError::CodeMismatch(_))
        ));
        assert!(
            matches!(
                id.respond_code(
                    None,
                    client,
                    &session,
                    "codes@example.com",
                    SMS_MFA,
                    &sent.code,
                    None
                )
                .await,
                Err(IdentityError::NotAuthorized(_))
            ),
            "a code answers its own factor only"
        );
        id.respond_code(
            None,
            client,
            &session,
            "codes@example.com",
            EMAIL_OTP,
            &sent.code,
            None,
        )
        .await
        .expect("tokens");

        // Preferring SMS skips the choice.
        id.admin_set_mfa_preference(
            pool,
            "codes@example.com",
            FactorSettings {
                sms: Some(FactorSetting {
                    enabled: Some(true),
                    preferred: Some(true),
                }),
                ..FactorSettings::default()
            },
        )
        .await
        .expect("prefer sms");
        let me = id
            .admin_get_user(pool, "codes@example.com")
            .await
            .expect("user");
        assert_eq!(
            me.mfa_factors,
            vec![SMS_MFA.to_owned(), EMAIL_OTP.to_owned()]
        );
        assert_eq!(me.preferred_mfa.as_deref(), Some(SMS_MFA));
        let (ch, session) = challenge(sign_in().await.expect("sms"));
        assert!(matches!(ch, MfaChallenge::Sms { .. }));
        let sent = latest();
        assert_eq!(sent.to, "+15550123");
        id.respond_code(
            None,
            client,
            &session,
            "codes@example.com",
            SMS_MFA,
            &sent.code,
            None,
        )
        .await
        .expect("tokens");
    }
}
