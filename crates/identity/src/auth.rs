//! Sign-in flows (password, admin password, SRP, refresh), their challenges, and what an access token lets its bearer do (GetUser, ChangePassword,
//! UpdateUserAttributes, GlobalSignOut) — with revocation: an access token dies with the
//! refresh token of its sign-in (same `origin_jti`).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sluice_meta::now_ms;
use sluice_meta::params;

use crate::client_secret::check_secret_hash;
use crate::custom_auth::CustomStep;
use crate::mfa::{FactorSettings, Owner, TokenOwner, Verified};
use crate::pools::{PoolSettings, pool_settings};
use crate::tokens::{self, ADMIN_SCOPE, TokenError};
use crate::triggers::TriggerData;
use crate::users::{self, CodeDelivery, UserRecord, find_user, password_secrets, store_password};
use crate::{
    AuthOutcome, AuthTokens, ClientRow, Identity, IdentityError, SESSION_TTL_MS, UserRow,
    blocking_err, incorrect, password, random_token, srp, token_hash, user_not_found,
};

/// The PASSWORD_VERIFIER challenge of USER_SRP_AUTH.
#[derive(Debug, Clone)]
pub struct SrpChallenge {
    pub salt: String,
    pub srp_b: String,
    /// Base64; the client signs its decoded bytes and sends it back.
    pub secret_block: String,
    pub user_id_for_srp: String,
    pub username: String,
}

/// Who an access token speaks for.
#[derive(Debug, Clone)]
pub struct AccessSession {
    pub pool_id: String,
    pub sub: String,
    pub username: String,
    pub client_id: String,
}

/// What [`Identity::issue`] is asked for.
pub(crate) enum Issuance<'a> {
    /// A sign-in through the API (or, for a hosted client, the hosted UI's): the
    /// PostAuthentication trigger, then tokens and a refresh token (or a login session).
    SignIn,
    /// New ID and access tokens for a refresh token of the sign-in `origin_jti`, with the
    /// scopes of its grant (`None`: an API sign-in's).
    Refresh {
        origin_jti: String,
        auth_time: i64,
        grant: Option<&'a crate::oauth::Grant>,
    },
    /// Tokens for an authorization code or an implicit grant, after a hosted sign-in at
    /// `auth_time`.
    OAuth {
        grant: &'a crate::oauth::Grant,
        auth_time: i64,
        with_refresh: bool,
    },
}

fn flow_not_enabled(flow: &str) -> IdentityError {
    IdentityError::InvalidParameter(format!("{flow} flow not enabled for this client"))
}

fn invalid_session() -> IdentityError {
    IdentityError::NotAuthorized("Invalid session for the user.".into())
}

fn attempts_exceeded() -> IdentityError {
    IdentityError::NotAuthorized("Password attempts exceeded".into())
}

impl Identity {
    fn throttle_keys(pool: &str, user: Option<&UserRow>, given: &str) -> Vec<String> {
        let who = user.map_or_else(|| given.to_lowercase(), |u| u.sub.clone());
        vec![format!("user\0{pool}\0{who}")]
    }

    async fn settings_of(&self, pool: &str) -> Result<PoolSettings, IdentityError> {
        let p = pool.to_owned();
        self.db.read(move |c| pool_settings(c, &p)).await
    }

    async fn lookup(
        &self,
        pool: &str,
        given: &str,
    ) -> Result<(PoolSettings, Option<UserRow>), IdentityError> {
        let (p, g) = (pool.to_owned(), given.to_owned());
        self.db
            .read(move |c| {
                let s = pool_settings(c, &p)?;
                let u = find_user(c, &p, &s, &g)?;
                Ok((s, u))
            })
            .await
    }

    /// USER_PASSWORD_AUTH.
    pub async fn initiate_user_password(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
        secret_hash: Option<&str>,
    ) -> Result<AuthOutcome, IdentityError> {
        let client = self.client(client_id).await?;
        if !client.settings.allows("ALLOW_USER_PASSWORD_AUTH") {
            return Err(flow_not_enabled("USER_PASSWORD_AUTH"));
        }
        self.password_sign_in(&client, username, password, secret_hash)
            .await
    }

    /// AdminInitiateAuth with ADMIN_USER_PASSWORD_AUTH (or its alias ADMIN_NO_SRP_AUTH).
    pub async fn admin_initiate_user_password(
        &self,
        pool_id: &str,
        client_id: &str,
        username: &str,
        password: &str,
        secret_hash: Option<&str>,
    ) -> Result<AuthOutcome, IdentityError> {
        let client = self.client_of_pool(pool_id, client_id).await?;
        if !client.settings.allows("ALLOW_ADMIN_USER_PASSWORD_AUTH") {
            return Err(flow_not_enabled("ADMIN_USER_PASSWORD_AUTH"));
        }
        self.password_sign_in(&client, username, password, secret_hash)
            .await
    }

    /// The app client of a public operation, or of an `Admin*` one (`admin_pool`: the pool
    /// the client must belong to).
    async fn client_for(
        &self,
        admin_pool: Option<&str>,
        client_id: &str,
    ) -> Result<ClientRow, IdentityError> {
        match admin_pool {
            Some(pool) => self.client_of_pool(pool, client_id).await,
            None => self.client(client_id).await,
        }
    }

    pub(crate) async fn client_of_pool(
        &self,
        pool_id: &str,
        client_id: &str,
    ) -> Result<ClientRow, IdentityError> {
        self.settings_of(pool_id).await?;
        let client = self.client(client_id).await?;
        if client.pool_id != pool_id {
            return Err(IdentityError::ResourceNotFound(format!(
                "User pool client {client_id} does not exist."
            )));
        }
        Ok(client)
    }

    pub(crate) async fn password_sign_in(
        &self,
        client: &ClientRow,
        username: &str,
        password: &str,
        secret_hash: Option<&str>,
    ) -> Result<AuthOutcome, IdentityError> {
        self.admit(&client.pool_id, crate::rates::Category::SignIn)?;
        let (_, user) = self.lookup(&client.pool_id, username).await?;
        let mut names = vec![username];
        if let Some(u) = &user {
            names.push(&u.username);
        }
        check_secret_hash(client, &names, secret_hash)?;
        let keys = Self::throttle_keys(&client.pool_id, user.as_ref(), username);
        if self.throttle.locked(&keys) {
            return Err(attempts_exceeded());
        }
        if user.is_none()
            && let Some(migrated) = self
                .migrate_user(
                    &client.pool_id,
                    &client.id,
                    username,
                    Some(password),
                    &TriggerData::default(),
                )
                .await?
        {
            // The trigger vouched for the password: the user now holds it.
            self.throttle.success(&keys[0]);
            return self.after_password(client, migrated).await;
        }
        let pw = password.to_owned();
        let hash = user
            .as_ref()
            .map(|u| u.hash.clone())
            .unwrap_or_else(|| password::decoy_hash().to_owned());
        let ok = crate::hashing::pool()
            .run(move |s| crate::hashing::verify(&pw, &hash, s))
            .await?;
        let Some(user) = user else {
            self.throttle.failure(&keys);
            return Err(if client.prevent_user_existence_errors {
                incorrect()
            } else {
                user_not_found()
            });
        };
        if !ok {
            self.throttle.failure(&keys);
            return Err(incorrect());
        }
        self.throttle.success(&keys[0]);
        if user.srp.is_none() {
            // Users from before SRP get their verifier at their next password sign-in.
            let secrets = password_secrets(&client.pool_id, &user.username, password).await?;
            let (p, sub, status, exp) = (
                client.pool_id.clone(),
                user.sub.clone(),
                user.status.clone(),
                user.temp_expires_ms,
            );
            self.db
                .write(move |c| store_password(c, &p, &sub, &secrets, &status, exp))
                .await?;
        }
        self.after_password(client, user).await
    }

    /// What follows a correct password: refusals by user state, the new-password
    /// challenge, or tokens.
    async fn after_password(
        &self,
        client: &ClientRow,
        user: UserRow,
    ) -> Result<AuthOutcome, IdentityError> {
        self.notify_trigger(
            &client.pool_id,
            &client.id,
            &user.username,
            |l| l.pre_authentication.clone().map(|a| (a, "1")),
            "PreAuthentication",
            "PreAuthentication_Authentication",
            serde_json::json!({
                "userAttributes": crate::triggers::with_status(&user.sub, &user.attributes, &user.status),
                "userNotFound": false,
                "validationData": {},
            }),
        )
        .await?;
        if !user.enabled {
            return Err(IdentityError::NotAuthorized("User is disabled.".into()));
        }
        match user.status.as_str() {
            "UNCONFIRMED" => {
                return Err(IdentityError::UserNotConfirmed(
                    "User is not confirmed.".into(),
                ));
            }
            "RESET_REQUIRED" => {
                return Err(IdentityError::PasswordResetRequired(
                    "Password reset required for the user".into(),
                ));
            }
            "FORCE_CHANGE_PASSWORD" => {
                if user.temp_expires_ms.is_some_and(|t| t < now_ms()) {
                    return Err(IdentityError::NotAuthorized(
                        "Temporary password has expired and must be reset by an administrator."
                            .into(),
                    ));
                }
                let session = random_token();
                let (h, pool, cid, sub) = (
                    token_hash(&session),
                    client.pool_id.clone(),
                    client.id.clone(),
                    user.sub.clone(),
                );
                let ttl = client.session_ttl_ms();
                self.db
                    .write(move |c| {
                        c.execute(
                            "INSERT INTO auth_sessions (hash, pool_id, client_id, sub, challenge, expires_ms)
                             VALUES (?1, ?2, ?3, ?4, 'NEW_PASSWORD_REQUIRED', ?5)",
                            params![h, pool, cid, sub, now_ms() + ttl],
                        )?;
                        Ok::<_, IdentityError>(())
                    })
                    .await?;
                return Ok(AuthOutcome::NewPasswordRequired {
                    session,
                    username: user.username,
                    attributes: user.attributes,
                });
            }
            _ => {}
        }
        self.second_factor_or_tokens(client, user).await
    }

    /// The MFA challenge the user owes, or tokens.
    async fn second_factor_or_tokens(
        &self,
        client: &ClientRow,
        user: UserRow,
    ) -> Result<AuthOutcome, IdentityError> {
        if let Some((challenge, session)) = self.mfa_step(client, &user).await? {
            return Ok(AuthOutcome::Mfa {
                challenge,
                session,
                username: user.username,
            });
        }
        let tokens = self.issue(client, &user, Issuance::SignIn).await?;
        Ok(AuthOutcome::Tokens(tokens))
    }

    /// InitiateAuth / AdminInitiateAuth (`admin_pool`) with CUSTOM_AUTH.
    pub async fn initiate_custom_auth(
        &self,
        admin_pool: Option<&str>,
        client_id: &str,
        username: &str,
        secret_hash: Option<&str>,
        data: &TriggerData,
    ) -> Result<AuthOutcome, IdentityError> {
        let client = self.client_for(admin_pool, client_id).await?;
        let step = self
            .start_custom_auth(&client, username, secret_hash, data)
            .await?;
        self.after_custom_step(&client, step).await
    }

    /// RespondToAuthChallenge / AdminRespondToAuthChallenge for CUSTOM_CHALLENGE.
    #[allow(clippy::too_many_arguments)]
    pub async fn respond_custom_challenge(
        &self,
        admin_pool: Option<&str>,
        client_id: &str,
        session: &str,
        username: &str,
        answer: &str,
        secret_hash: Option<&str>,
        data: &TriggerData,
    ) -> Result<AuthOutcome, IdentityError> {
        let client = self.client_for(admin_pool, client_id).await?;
        let step = self
            .answer_custom_challenge(&client, session, username, answer, secret_hash, data)
            .await?;
        self.after_custom_step(&client, step).await
    }

    async fn after_custom_step(
        &self,
        client: &ClientRow,
        step: CustomStep,
    ) -> Result<AuthOutcome, IdentityError> {
        match step {
            CustomStep::Challenge {
                session,
                username,
                parameters,
            } => Ok(AuthOutcome::Custom {
                session,
                username,
                parameters,
            }),
            CustomStep::Done(user) => self.second_factor_or_tokens(client, user).await,
        }
    }

    /// RespondToAuthChallenge for SOFTWARE_TOKEN_MFA (`admin_pool`: AdminRespondToAuthChallenge,
    /// whose client must belong to that pool).
    pub async fn respond_software_token(
        &self,
        admin_pool: Option<&str>,
        client_id: &str,
        session: &str,
        username: &str,
        code: &str,
        secret_hash: Option<&str>,
    ) -> Result<AuthTokens, IdentityError> {
        let client = self.client_for(admin_pool, client_id).await?;
        let user = self
            .answer_software_token(&client, session, username, code)
            .await?;
        check_secret_hash(&client, &[username, &user.username], secret_hash)?;
        self.issue(&client, &user, Issuance::SignIn).await
    }

    /// RespondToAuthChallenge for SMS_MFA / EMAIL_OTP (`factor`).
    #[allow(clippy::too_many_arguments)]
    pub async fn respond_code(
        &self,
        admin_pool: Option<&str>,
        client_id: &str,
        session: &str,
        username: &str,
        factor: &'static str,
        code: &str,
        secret_hash: Option<&str>,
    ) -> Result<AuthTokens, IdentityError> {
        let client = self.client_for(admin_pool, client_id).await?;
        let user = self
            .answer_code(&client, session, username, factor, code)
            .await?;
        check_secret_hash(&client, &[username, &user.username], secret_hash)?;
        self.issue(&client, &user, Issuance::SignIn).await
    }

    /// RespondToAuthChallenge for SELECT_MFA_TYPE: the chosen factor's challenge.
    pub async fn respond_select_mfa(
        &self,
        admin_pool: Option<&str>,
        client_id: &str,
        session: &str,
        username: &str,
        answer: &str,
    ) -> Result<AuthOutcome, IdentityError> {
        let client = self.client_for(admin_pool, client_id).await?;
        let (challenge, session) = self
            .answer_select(&client, session, username, answer)
            .await?;
        Ok(AuthOutcome::Mfa {
            challenge,
            session,
            username: username.to_owned(),
        })
    }

    /// RespondToAuthChallenge for MFA_SETUP, after the session's token was verified.
    pub async fn respond_mfa_setup(
        &self,
        admin_pool: Option<&str>,
        client_id: &str,
        session: &str,
        username: &str,
        secret_hash: Option<&str>,
    ) -> Result<AuthTokens, IdentityError> {
        let client = self.client_for(admin_pool, client_id).await?;
        check_secret_hash(&client, &[username], secret_hash)?;
        let user = self.answer_mfa_setup(&client, session, username).await?;
        self.issue(&client, &user, Issuance::SignIn).await
    }

    /// RespondToAuthChallenge for NEW_PASSWORD_REQUIRED; `attributes` are the
    /// `userAttributes.*` responses.
    pub async fn respond_new_password(
        &self,
        client_id: &str,
        session: &str,
        username: &str,
        new_password: &str,
        attributes: BTreeMap<String, String>,
        secret_hash: Option<&str>,
    ) -> Result<AuthOutcome, IdentityError> {
        let client = self.client(client_id).await?;
        self.new_password(
            &client,
            session,
            username,
            new_password,
            attributes,
            secret_hash,
        )
        .await
    }

    /// AdminRespondToAuthChallenge for NEW_PASSWORD_REQUIRED.
    #[allow(clippy::too_many_arguments)]
    pub async fn admin_respond_new_password(
        &self,
        pool_id: &str,
        client_id: &str,
        session: &str,
        username: &str,
        new_password: &str,
        attributes: BTreeMap<String, String>,
        secret_hash: Option<&str>,
    ) -> Result<AuthOutcome, IdentityError> {
        let client = self.client_of_pool(pool_id, client_id).await?;
        self.new_password(
            &client,
            session,
            username,
            new_password,
            attributes,
            secret_hash,
        )
        .await
    }

    pub(crate) async fn new_password(
        &self,
        client: &ClientRow,
        session: &str,
        username: &str,
        new_password: &str,
        attributes: BTreeMap<String, String>,
        secret_hash: Option<&str>,
    ) -> Result<AuthOutcome, IdentityError> {
        let (settings, user) = self.lookup(&client.pool_id, username).await?;
        let user = user.ok_or_else(invalid_session)?;
        check_secret_hash(client, &[username, &user.username], secret_hash)?;
        crate::schema::check_attributes(
            &settings.attribute_rules(),
            &attributes,
            false,
            crate::schema::Write::Update,
        )?;
        password::check_policy(new_password, &settings.policies.password_policy)?;
        let secrets = password_secrets(&client.pool_id, &user.username, new_password).await?;
        let (h, cid, pool, sub) = (
            token_hash(session),
            client.id.clone(),
            client.pool_id.clone(),
            user.sub.clone(),
        );
        self.db
            .write(move |c| {
                let row: Option<(String, String, String, i64)> = c
                    .query_opt(
                        "DELETE FROM auth_sessions WHERE hash = ?1 AND challenge = 'NEW_PASSWORD_REQUIRED'
                         RETURNING client_id, pool_id, sub, expires_ms", params![&h],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                let (s_client, s_pool, s_sub, expires) = row.ok_or_else(invalid_session)?;
                if s_client != cid || s_pool != pool || s_sub != sub || expires < now_ms() {
                    return Err(invalid_session());
                }
                store_password(c, &pool, &sub, &secrets, "CONFIRMED", None)?;
                if !attributes.is_empty() {
                    let mut u = users::user_where(c, "sub", &pool, &sub)?
                        .ok_or_else(user_not_found)?;
                    u.attributes.extend(attributes.clone());
                    c.execute(
                        "UPDATE users SET attributes = ?3 WHERE pool_id = ?1 AND sub = ?2",
                        params![pool, sub, serde_json::to_string(&u.attributes)?],
                    )?;
                }
                Ok(())
            })
            .await?;
        let (p, s) = (client.pool_id.clone(), user.sub.clone());
        let user = self
            .db
            .read(move |c| users::user_where(c, "sub", &p, &s))
            .await?
            .ok_or_else(user_not_found)?;
        self.second_factor_or_tokens(client, user).await
    }

    /// REFRESH_TOKEN_AUTH: new id and access tokens for a valid refresh token.
    pub async fn initiate_refresh(
        &self,
        client_id: &str,
        refresh_token: &str,
        secret_hash: Option<&str>,
    ) -> Result<AuthTokens, IdentityError> {
        let client = self.client(client_id).await?;
        if !client.settings.allows("ALLOW_REFRESH_TOKEN_AUTH") {
            return Err(flow_not_enabled("REFRESH_TOKEN"));
        }
        let (tokens, _) = self
            .refresh(&client, refresh_token, Some(secret_hash))
            .await?;
        Ok(tokens)
    }

    /// AdminInitiateAuth with REFRESH_TOKEN_AUTH.
    pub async fn admin_initiate_refresh(
        &self,
        pool_id: &str,
        client_id: &str,
        refresh_token: &str,
        secret_hash: Option<&str>,
    ) -> Result<AuthTokens, IdentityError> {
        let client = self.client_of_pool(pool_id, client_id).await?;
        if !client.settings.allows("ALLOW_REFRESH_TOKEN_AUTH") {
            return Err(flow_not_enabled("REFRESH_TOKEN"));
        }
        let (tokens, _) = self
            .refresh(&client, refresh_token, Some(secret_hash))
            .await?;
        Ok(tokens)
    }

    /// REFRESH_TOKEN_AUTH's refresh, with the client's SECRET_HASH (`Some`), or for a
    /// client the token endpoint authenticated with its secret already (`None`); with the
    /// grant the refresh token remembers (`None`: an API sign-in's).
    pub(crate) async fn refresh(
        &self,
        client: &ClientRow,
        refresh_token: &str,
        secret_hash: Option<Option<&str>>,
    ) -> Result<(AuthTokens, Option<crate::oauth::Grant>), IdentityError> {
        let h = token_hash(refresh_token);
        type RefreshRow = (String, String, String, i64, i64, bool, Option<String>);
        let row: Option<RefreshRow> = self
            .db
            .read(move |c| {
                Ok::<_, IdentityError>(c.query_opt(
                    "SELECT client_id, sub, origin_jti, auth_time, expires_ms, revoked, scopes
                         FROM refresh_tokens WHERE hash = ?1",
                    params![&h],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ))
                    },
                )?)
            })
            .await?;
        let invalid = || IdentityError::NotAuthorized("Invalid Refresh Token".into());
        let (rt_client, sub, origin_jti, auth_time, expires, revoked, scopes) =
            row.ok_or_else(invalid)?;
        if rt_client != client.id || expires < now_ms() {
            return Err(invalid());
        }
        if revoked {
            return Err(IdentityError::NotAuthorized(
                "Refresh Token has been revoked".into(),
            ));
        }
        let (p, s) = (client.pool_id.clone(), sub);
        let user = self
            .db
            .read(move |c| users::user_where(c, "sub", &p, &s))
            .await?
            .ok_or_else(invalid)?;
        let email = user.attributes.get("email").cloned().unwrap_or_default();
        if let Some(secret_hash) = secret_hash {
            check_secret_hash(client, &[&user.username, &user.sub, &email], secret_hash)?;
        }
        if !user.enabled {
            return Err(IdentityError::NotAuthorized("User is disabled.".into()));
        }
        let grant = scopes.map(|s| crate::oauth::Grant {
            scopes: crate::oauth::split_scopes(&s),
            nonce: None,
        });
        let tokens = self
            .issue(
                client,
                &user,
                Issuance::Refresh {
                    origin_jti,
                    auth_time,
                    grant: grant.as_ref(),
                },
            )
            .await?;
        Ok((tokens, grant))
    }

    /// USER_SRP_AUTH: the PASSWORD_VERIFIER challenge for a client's `A`.
    pub async fn initiate_srp(
        &self,
        client_id: &str,
        username: &str,
        srp_a: &str,
        secret_hash: Option<&str>,
    ) -> Result<SrpChallenge, IdentityError> {
        let client = self.client(client_id).await?;
        if !client.settings.allows("ALLOW_USER_SRP_AUTH") {
            return Err(flow_not_enabled("USER_SRP_AUTH"));
        }
        if !srp::valid_client_public(srp_a) {
            return Err(IdentityError::InvalidParameter("SRP_A is not valid".into()));
        }
        self.admit(&client.pool_id, crate::rates::Category::SignIn)?;
        let (_, user) = self.lookup(&client.pool_id, username).await?;
        let mut names = vec![username];
        if let Some(u) = &user {
            names.push(&u.username);
        }
        check_secret_hash(&client, &names, secret_hash)?;
        let keys = Self::throttle_keys(&client.pool_id, user.as_ref(), username);
        if self.throttle.locked(&keys) {
            return Err(attempts_exceeded());
        }
        let (sub, user_id, salt, verifier) = match &user {
            Some(u) => match &u.srp {
                Some((salt, v)) => (u.sub.clone(), u.username.clone(), salt.clone(), v.clone()),
                None => {
                    return Err(IdentityError::NotAuthorized(
                        "the user has no SRP verifier yet: sign in once with USER_PASSWORD_AUTH or set a new password"
                            .into(),
                    ));
                }
            },
            None if client.prevent_user_existence_errors => {
                // A challenge that can never be answered, indistinguishable from a real one.
                let (salt, v) = srp::make_verifier(&client.pool_id, username, &random_token());
                (String::new(), username.to_owned(), salt, v)
            }
            None => return Err(user_not_found()),
        };
        let eph = srp::server_ephemeral(&verifier)
            .ok_or_else(|| IdentityError::Backend("invalid stored srp verifier".into()))?;
        let mut block = [0u8; 64];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut block);
        let secret_block = STANDARD.encode(block);
        let data = serde_json::json!({
            "a": srp_a, "b": eph.b, "B": eph.big_b, "v": verifier, "user": user_id,
        })
        .to_string();
        let (h, pool, cid, s) = (
            token_hash(&secret_block),
            client.pool_id.clone(),
            client.id.clone(),
            sub,
        );
        let ttl = (client.settings.auth_session_validity * 60_000).max(SESSION_TTL_MS);
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO auth_sessions (hash, pool_id, client_id, sub, challenge, expires_ms, data)
                     VALUES (?1, ?2, ?3, ?4, 'PASSWORD_VERIFIER', ?5, ?6)",
                    params![h, pool, cid, s, now_ms() + ttl, data],
                )?;
                Ok::<_, IdentityError>(())
            })
            .await?;
        Ok(SrpChallenge {
            salt,
            srp_b: eph.big_b,
            secret_block,
            user_id_for_srp: user_id.clone(),
            username: user_id,
        })
    }

    /// RespondToAuthChallenge for PASSWORD_VERIFIER.
    pub async fn respond_password_verifier(
        &self,
        client_id: &str,
        username: &str,
        secret_block: &str,
        timestamp: &str,
        signature: &str,
        secret_hash: Option<&str>,
    ) -> Result<AuthOutcome, IdentityError> {
        let client = self.client(client_id).await?;
        let h = token_hash(secret_block);
        let row: Option<(String, String, String, i64, Option<String>)> = self
            .db
            .write(move |c| {
                Ok::<_, IdentityError>(c.query_opt(
                    "DELETE FROM auth_sessions WHERE hash = ?1 AND challenge = 'PASSWORD_VERIFIER'
                         RETURNING client_id, pool_id, sub, expires_ms, data",
                    params![&h],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )?)
            })
            .await?;
        let (s_client, pool, sub, expires, data) = row.ok_or_else(invalid_session)?;
        if s_client != client.id || expires < now_ms() {
            return Err(invalid_session());
        }
        let data: serde_json::Value = serde_json::from_str(data.as_deref().unwrap_or("{}"))?;
        let field = |k: &str| {
            data.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let user_id = field("user");
        let user = if sub.is_empty() {
            None
        } else {
            let (p, s) = (pool.clone(), sub.clone());
            self.db
                .read(move |c| users::user_where(c, "sub", &p, &s))
                .await?
        };
        let mut names = vec![username, user_id.as_str()];
        let email = user
            .as_ref()
            .and_then(|u| u.attributes.get("email").cloned())
            .unwrap_or_default();
        names.push(&email);
        check_secret_hash(&client, &names, secret_hash)?;
        let keys = Self::throttle_keys(&pool, user.as_ref(), username);
        if self.throttle.locked(&keys) {
            return Err(attempts_exceeded());
        }
        let named_right = user.as_ref().is_some_and(|u| {
            username == u.username
                || username == u.sub
                || u.email.as_deref() == Some(username.to_lowercase().as_str())
        });
        let claimed = STANDARD.decode(signature).unwrap_or_default();
        let block = STANDARD.decode(secret_block).unwrap_or_default();
        let (a, b, big_b, v) = (field("a"), field("b"), field("B"), field("v"));
        let good = srp::session_key(&srp::Exchange {
            pool_id: &pool,
            user_id: &user_id,
            verifier: &v,
            a: &a,
            b: &b,
            big_b: &big_b,
        })
        .is_some_and(|key| {
            srp::verify_signature(&key, &pool, &user_id, &block, timestamp, &claimed)
        });
        let Some(user) = user.filter(|_| good && named_right && !timestamp.is_empty()) else {
            self.throttle.failure(&keys);
            return Err(incorrect());
        };
        self.throttle.success(&keys[0]);
        self.after_password(&client, user).await
    }

    /// Tokens (or, for the hosted UI's sign-in, a login session) for `user`, as `how` says.
    pub(crate) async fn issue(
        &self,
        client: &ClientRow,
        user: &UserRow,
        how: Issuance<'_>,
    ) -> Result<AuthTokens, IdentityError> {
        let signed_in = matches!(how, Issuance::SignIn);
        if signed_in {
            self.notify_trigger(
                &client.pool_id,
                &client.id,
                &user.username,
                |l| l.post_authentication.clone().map(|a| (a, "1")),
                "PostAuthentication",
                "PostAuthentication_Authentication",
                serde_json::json!({
                    "userAttributes": crate::triggers::with_status(&user.sub, &user.attributes, &user.status),
                    "newDeviceUsed": false,
                    "clientMetadata": {},
                }),
            )
            .await?;
            if client.hosted {
                // The hosted UI signs the user in once; tokens come from its token
                // endpoint, for the scopes each authorization asks.
                let login = self.start_login_session(&client.pool_id, &user.sub).await?;
                return Ok(AuthTokens {
                    id_token: String::new(),
                    access_token: String::new(),
                    refresh_token: Some(login),
                    expires_in: 0,
                });
            }
        }
        let key = self.signing_key(&client.pool_id)?;
        let now = now_ms() / 1000;
        let (origin_jti, auth_time, grant, with_refresh, source) = match how {
            Issuance::SignIn => (
                uuid::Uuid::new_v4().to_string(),
                now,
                None,
                true,
                "TokenGeneration_Authentication",
            ),
            Issuance::Refresh {
                origin_jti,
                auth_time,
                grant,
            } => (
                origin_jti,
                auth_time,
                grant,
                false,
                "TokenGeneration_RefreshTokens",
            ),
            Issuance::OAuth {
                grant,
                auth_time,
                with_refresh,
            } => (
                uuid::Uuid::new_v4().to_string(),
                auth_time,
                Some(grant),
                with_refresh,
                "TokenGeneration_HostedAuth",
            ),
        };
        let issuer = self.issuer(&client.pool_id);
        let (pool, sub) = (client.pool_id.clone(), user.sub.clone());
        let groups = self
            .db
            .read(move |c| crate::groups::user_groups(c, &pool, &sub))
            .await?;
        let mut groups = crate::groups::claims_of(&groups);
        let admin_scope = [ADMIN_SCOPE.to_owned()];
        let scopes: &[String] = grant.map_or(&admin_scope, |g| &g.scopes);
        let overrides = self
            .pre_token_generation(
                &client.pool_id,
                &client.id,
                &user.username,
                &user.sub,
                &user.attributes,
                &groups,
                source,
                scopes,
            )
            .await?;
        if let Some(g) = &overrides.groups {
            groups.groups = g.clone();
        }
        if let Some(r) = &overrides.roles {
            groups.roles = r.clone();
        }
        if overrides.preferred_role.is_some() {
            groups.preferred_role = overrides.preferred_role.clone();
        }
        let (id_token, access_token) = tokens::issue_pair(
            &key,
            &tokens::Subject {
                sub: &user.sub,
                username: &user.username,
                attributes: &user.attributes,
                client_id: &client.id,
                issuer: &issuer,
                auth_time,
                origin_jti: &origin_jti,
                groups: &groups,
                overrides: Some(&overrides),
                oauth: grant.map(|g| tokens::OAuthClaims {
                    scopes: &g.scopes,
                    nonce: g.nonce.as_deref(),
                }),
            },
            now,
            client.lifetimes.id_secs,
            client.lifetimes.access_secs,
        )
        .map_err(|e| IdentityError::Backend(format!("cannot sign token: {e}")))?;
        let refresh_token = if with_refresh {
            let rt = random_token();
            let (h, pool, cid, sub, oj) = (
                token_hash(&rt),
                client.pool_id.clone(),
                client.id.clone(),
                user.sub.clone(),
                origin_jti.clone(),
            );
            let granted = grant.map(|g| g.scopes.join(" "));
            let expires = now_ms() + client.lifetimes.refresh_secs * 1000;
            self.db
                .write(move |c| {
                    c.execute(
                        "INSERT INTO refresh_tokens (hash, pool_id, client_id, sub, origin_jti,
                             auth_time, expires_ms, scopes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        params![h, pool, cid, sub, oj, auth_time, expires, granted],
                    )?;
                    Ok::<_, IdentityError>(())
                })
                .await?;
            Some(rt)
        } else {
            None
        };
        Ok(AuthTokens {
            id_token,
            access_token,
            refresh_token,
            expires_in: client.lifetimes.access_secs,
        })
    }

    /// Verifies an access token with its pool's keys and checks that its sign-in was not
    /// revoked and its user still exists and is enabled.
    pub async fn access_session(&self, token: &str) -> Result<AccessSession, IdentityError> {
        let scopes = tokens::unverified_payload(token)
            .and_then(|p| p.get("scope")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        let session = self.access_session_any_scope(token).await?;
        if !scopes.split(' ').any(|s| s == ADMIN_SCOPE) {
            return Err(IdentityError::NotAuthorized(
                "Access Token does not have required scopes".into(),
            ));
        }
        Ok(session)
    }

    /// [`Identity::access_session`] whatever the token's scopes (userInfo's check).
    pub(crate) async fn access_session_any_scope(
        &self,
        token: &str,
    ) -> Result<AccessSession, IdentityError> {
        let invalid = || IdentityError::NotAuthorized("Invalid Access Token".into());
        let payload = tokens::unverified_payload(token).ok_or_else(invalid)?;
        let iss = payload.get("iss").and_then(|v| v.as_str()).unwrap_or("");
        let pool = iss
            .strip_prefix(&format!("{}/", self.issuer_base))
            .filter(|p| crate::valid_pool_id(p))
            .ok_or_else(invalid)?
            .to_owned();
        let this = self.clone();
        let p = pool.clone();
        let verifier = tokio::task::spawn_blocking(move || {
            if this.pool_exists(&p)? {
                this.verifier(&p, 0).map(Some)
            } else {
                Ok(None)
            }
        })
        .await
        .map_err(blocking_err)??
        .ok_or_else(invalid)?;
        let claims = verifier
            .verify(token, now_ms() / 1000)
            .map_err(|e| match e {
                TokenError::Expired => {
                    IdentityError::NotAuthorized("Access Token has expired".into())
                }
                _ => invalid(),
            })?;
        if claims.token_use != "access" {
            return Err(invalid());
        }
        let origin = payload
            .get("origin_jti")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned();
        let (p, s) = (pool.clone(), claims.sub.clone());
        let (revoked, user) = self
            .db
            .read(move |c| {
                let revoked: bool = c.query_row(
                    "SELECT EXISTS(SELECT 1 FROM refresh_tokens WHERE origin_jti = ?1 AND revoked = 1)", params![&origin],
                    |r| r.get(0))?;
                Ok::<_, IdentityError>((revoked, users::user_where(c, "sub", &p, &s)?))
            })
            .await?;
        if revoked {
            return Err(IdentityError::NotAuthorized(
                "Access Token has been revoked".into(),
            ));
        }
        let user = user.ok_or_else(user_not_found)?;
        if !user.enabled {
            return Err(IdentityError::NotAuthorized("User is disabled.".into()));
        }
        Ok(AccessSession {
            pool_id: pool,
            sub: user.sub,
            username: user.username,
            client_id: claims.client_id,
        })
    }

    /// GetUser.
    pub async fn get_user_by_token(&self, access_token: &str) -> Result<UserRecord, IdentityError> {
        let s = self.access_session(access_token).await?;
        let mut u = self.admin_get_user(&s.pool_id, &s.username).await?;
        // Developer-only attributes are for administrators.
        u.attributes.retain(|k, _| !k.starts_with("dev:"));
        Ok(u)
    }

    /// UpdateUserAttributes.
    pub async fn update_attributes_by_token(
        &self,
        access_token: &str,
        attrs: BTreeMap<String, String>,
    ) -> Result<Vec<CodeDelivery>, IdentityError> {
        let s = self.access_session(access_token).await?;
        self.update_attributes(&s.pool_id, &s.username, attrs, false)
            .await
    }

    /// AssociateSoftwareToken (see [`crate::mfa`]).
    pub async fn associate_software_token(
        &self,
        owner: TokenOwner<'_>,
    ) -> Result<(String, Option<String>), IdentityError> {
        let owner = self.token_owner(owner).await?;
        self.associate_token(owner).await
    }

    /// VerifySoftwareToken.
    pub async fn verify_software_token(
        &self,
        owner: TokenOwner<'_>,
        code: &str,
        friendly_name: Option<&str>,
    ) -> Result<Verified, IdentityError> {
        let owner = self.token_owner(owner).await?;
        self.verify_token(owner, code, friendly_name).await
    }

    async fn token_owner(&self, owner: TokenOwner<'_>) -> Result<Owner, IdentityError> {
        Ok(match owner {
            TokenOwner::AccessToken(token) => {
                let s = self.access_session(token).await?;
                Owner::User {
                    pool: s.pool_id,
                    sub: s.sub,
                }
            }
            TokenOwner::Session(session) => Owner::Session(session.to_owned()),
        })
    }

    /// SetUserMFAPreference.
    pub async fn set_mfa_preference(
        &self,
        access_token: &str,
        settings: FactorSettings,
    ) -> Result<(), IdentityError> {
        let s = self.access_session(access_token).await?;
        self.store_mfa_preference(s.pool_id, s.sub, settings).await
    }

    /// DeleteUserAttributes.
    pub async fn delete_attributes_by_token(
        &self,
        access_token: &str,
        names: Vec<String>,
    ) -> Result<(), IdentityError> {
        let s = self.access_session(access_token).await?;
        self.delete_attributes(&s.pool_id, &s.username, names, false)
            .await
    }

    /// DeleteUser: the bearer deletes themselves.
    pub async fn delete_user_by_token(&self, access_token: &str) -> Result<(), IdentityError> {
        let s = self.access_session(access_token).await?;
        self.admin_delete_user(&s.pool_id, &s.username).await
    }

    /// GetUserAttributeVerificationCode.
    pub async fn attribute_verification_code_by_token(
        &self,
        access_token: &str,
        attribute: &str,
    ) -> Result<CodeDelivery, IdentityError> {
        let s = self.access_session(access_token).await?;
        self.attribute_verification_code(&s.pool_id, &s.username, attribute)
            .await
    }

    /// VerifyUserAttribute.
    pub async fn verify_attribute_by_token(
        &self,
        access_token: &str,
        attribute: &str,
        code: &str,
    ) -> Result<(), IdentityError> {
        let s = self.access_session(access_token).await?;
        self.verify_attribute(&s.pool_id, &s.username, attribute, code)
            .await
    }

    /// ChangePassword: the previous password must be right; failures count like sign-ins.
    pub async fn change_password(
        &self,
        access_token: &str,
        previous: &str,
        proposed: &str,
    ) -> Result<(), IdentityError> {
        let s = self.access_session(access_token).await?;
        let (settings, user) = self.lookup(&s.pool_id, &s.username).await?;
        let user = user.ok_or_else(user_not_found)?;
        let keys = Self::throttle_keys(&s.pool_id, Some(&user), &user.username);
        if self.throttle.locked(&keys) {
            return Err(attempts_exceeded());
        }
        let (pw, hash) = (previous.to_owned(), user.hash.clone());
        let ok = crate::hashing::pool()
            .run(move |s| crate::hashing::verify(&pw, &hash, s))
            .await?;
        if !ok {
            self.throttle.failure(&keys);
            return Err(incorrect());
        }
        password::check_policy(proposed, &settings.policies.password_policy)?;
        let secrets = password_secrets(&s.pool_id, &user.username, proposed).await?;
        let (p, sub, status) = (s.pool_id.clone(), user.sub.clone(), user.status.clone());
        self.db
            .write(move |c| store_password(c, &p, &sub, &secrets, &status, None))
            .await
    }

    /// GlobalSignOut: revokes every refresh token of the user, and with them every access
    /// token of those sign-ins.
    pub async fn global_sign_out(&self, access_token: &str) -> Result<(), IdentityError> {
        let s = self.access_session(access_token).await?;
        self.revoke_user(&s.pool_id, &s.sub).await
    }

    /// AdminUserGlobalSignOut.
    pub async fn admin_global_sign_out(
        &self,
        pool_id: &str,
        username: &str,
    ) -> Result<(), IdentityError> {
        let user = self.admin_get_user(pool_id, username).await?;
        self.revoke_user(pool_id, &user.sub).await
    }

    async fn revoke_user(&self, pool: &str, sub: &str) -> Result<(), IdentityError> {
        let (p, s) = (pool.to_owned(), sub.to_owned());
        self.db
            .write(move |c| users::sign_out_everywhere(c, &p, &s))
            .await
    }

    /// RevokeToken: revokes a refresh token (and the access tokens of its sign-in). An
    /// unknown token is not an error (RFC 7009); a token of another client is.
    pub async fn revoke_token(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        token: &str,
    ) -> Result<(), IdentityError> {
        let client = self.client(client_id).await?;
        if let Some(secret) = &client.secret
            && !client_secret.is_some_and(|g| crate::client_secret::same(secret, g))
        {
            return Err(IdentityError::Unauthorized("invalid_client".into()));
        }
        if !client.settings.enable_token_revocation {
            return Err(IdentityError::Unauthorized(
                "token revocation is not enabled for this client".into(),
            ));
        }
        if tokens::unverified_payload(token).is_some() {
            return Err(IdentityError::UnsupportedTokenType(
                "only refresh tokens can be revoked".into(),
            ));
        }
        let (h, cid) = (token_hash(token), client.id.clone());
        self.db
            .write(move |c| {
                let owner: Option<(String, String)> = c.query_opt(
                    "SELECT client_id, origin_jti FROM refresh_tokens WHERE hash = ?1",
                    params![&h],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                match owner {
                    None => Ok(()),
                    Some((o, _)) if o != cid => {
                        Err(IdentityError::Unauthorized("invalid_request".into()))
                    }
                    Some((_, origin)) => {
                        c.execute(
                            "UPDATE refresh_tokens SET revoked = 1 WHERE hash = ?1",
                            params![&h],
                        )?;
                        crate::revocations::revoke_origin_in(c, &origin)
                    }
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_secret::secret_hash;
    use crate::pools::{ClientSpec, PoolSettings};
    use crate::test_support::identity;
    use crate::users::NewUser;
    use num_bigint::BigUint;

    fn tokens(o: AuthOutcome) -> AuthTokens {
        match o {
            AuthOutcome::Tokens(t) => t,
            _ => panic!("expected tokens"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sign_in_refresh_and_new_password_challenge() {
        let (id, info, _engines) = identity();
        id.create_user(&info.pool_id, "Me@Example.com", "Passw0rd!", false)
            .expect("create");
        assert!(matches!(
            id.create_user(&info.pool_id, "me@example.com", "Passw0rd!", false),
            Err(IdentityError::UsernameExists(_))
        ));
        let t = tokens(
            id.initiate_user_password(&info.client_id, "me@example.com", "Passw0rd!", None)
                .await
                .expect("sign in"),
        );
        let v = id.verifier(&info.pool_id, 60).expect("verifier");
        let claims = v.verify(&t.id_token, now_ms() / 1000).expect("valid");
        assert_eq!(claims.email.as_deref(), Some("me@example.com"));
        assert!(matches!(
            id.initiate_user_password(&info.client_id, "me@example.com", "wrong", None)
                .await,
            Err(IdentityError::NotAuthorized(_))
        ));
        assert!(matches!(
            id.initiate_user_password(&info.client_id, "nobody@example.com", "Passw0rd!", None)
                .await,
            Err(IdentityError::NotAuthorized(_))
        ));
        let rt = t.refresh_token.expect("refresh token");
        let refreshed = id
            .initiate_refresh(&info.client_id, &rt, None)
            .await
            .expect("refresh");
        assert!(refreshed.refresh_token.is_none());
        assert!(
            id.initiate_refresh(&info.client_id, "bogus", None)
                .await
                .is_err()
        );

        id.create_user(&info.pool_id, "temp@example.com", "Temp0rary!", true)
            .expect("create temp");
        let AuthOutcome::NewPasswordRequired { session, .. } = id
            .initiate_user_password(&info.client_id, "temp@example.com", "Temp0rary!", None)
            .await
            .expect("challenge")
        else {
            panic!("expected challenge");
        };
        assert!(matches!(
            id.respond_new_password(
                &info.client_id,
                &session,
                "temp@example.com",
                "weak",
                BTreeMap::new(),
                None
            )
            .await,
            Err(IdentityError::InvalidPassword(_))
        ));
        id.respond_new_password(
            &info.client_id,
            &session,
            "temp@example.com",
            "N3w-Passw0rd",
            BTreeMap::new(),
            None,
        )
        .await
        .expect("new password");
        assert!(
            id.respond_new_password(
                &info.client_id,
                &session,
                "temp@example.com",
                "N3w-Passw0rd",
                BTreeMap::new(),
                None
            )
            .await
            .is_err(),
            "a session is used once"
        );
        assert!(matches!(
            id.initiate_user_password(&info.client_id, "temp@example.com", "N3w-Passw0rd", None)
                .await,
            Ok(AuthOutcome::Tokens(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_flows_revocation_and_throttling() {
        let (id, _, _engines) = identity();
        let pool = id
            .create_pool("us-east-2", "p", PoolSettings::default())
            .await
            .expect("pool");
        let client = id
            .create_client(
                &pool.id,
                ClientSpec {
                    client_name: Some("c".into()),
                    generate_secret: true,
                    explicit_auth_flows: Some(vec![
                        "ALLOW_ADMIN_USER_PASSWORD_AUTH".into(),
                        "ALLOW_REFRESH_TOKEN_AUTH".into(),
                    ]),
                    ..ClientSpec::default()
                },
            )
            .await
            .expect("client");
        let secret = client.secret.clone().expect("secret");
        id.admin_create_user(
            NewUser {
                pool_id: pool.id.clone(),
                username: "Alice".into(),
                attributes: BTreeMap::new(),
                password: Some("Passw0rd!".into()),
                temporary: false,
                admin: true,
            },
            true,
            false,
        )
        .await
        .expect("user");
        assert!(
            matches!(
                id.initiate_user_password(&client.id, "Alice", "Passw0rd!", None)
                    .await,
                Err(IdentityError::InvalidParameter(_))
            ),
            "flow not enabled"
        );
        assert!(matches!(
            id.admin_initiate_user_password(&pool.id, &client.id, "Alice", "Passw0rd!", None)
                .await,
            Err(IdentityError::NotAuthorized(m)) if m.contains("SECRET_HASH")
        ));
        assert!(
            matches!(
                id.admin_initiate_user_password(
                    &pool.id,
                    &client.id,
                    "alice",
                    "Passw0rd!",
                    Some(&secret_hash(&secret, "alice", &client.id))
                )
                .await,
                Err(IdentityError::UserNotFound(_))
            ),
            "case sensitive by default, LEGACY existence errors"
        );
        let hash = secret_hash(&secret, "Alice", &client.id);
        let t = tokens(
            id.admin_initiate_user_password(
                &pool.id,
                &client.id,
                "Alice",
                "Passw0rd!",
                Some(&hash),
            )
            .await
            .expect("sign in"),
        );
        let s = id.access_session(&t.access_token).await.expect("session");
        assert_eq!(s.username, "Alice");
        assert_eq!(s.pool_id, pool.id);
        id.global_sign_out(&t.access_token).await.expect("sign out");
        assert!(matches!(
            id.access_session(&t.access_token).await,
            Err(IdentityError::NotAuthorized(m)) if m == "Access Token has been revoked"
        ));
        let rt = t.refresh_token.expect("rt");
        assert!(
            id.initiate_refresh(&client.id, &rt, Some(&hash))
                .await
                .is_err()
        );

        for _ in 0..crate::throttle::FREE_FAILURES {
            assert!(matches!(
                id.admin_initiate_user_password(&pool.id, &client.id, "Alice", "Wr0ng!pw", Some(&hash)).await,
                Err(IdentityError::NotAuthorized(m)) if m == "Incorrect username or password."
            ));
        }
        assert!(matches!(
            id.admin_initiate_user_password(&pool.id, &client.id, "Alice", "Passw0rd!", Some(&hash)).await,
            Err(IdentityError::NotAuthorized(m)) if m == "Password attempts exceeded"
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn srp_sign_in_round_trip() {
        let (id, info, _engines) = identity();
        id.create_user(&info.pool_id, "srp@example.com", "Passw0rd!", false)
            .expect("create");
        let user = id
            .admin_get_user(&info.pool_id, "srp@example.com")
            .await
            .expect("user");
        let n = BigUint::parse_bytes(
            b"FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
            16,
        )
        .expect("N");
        let a = BigUint::from(0x1234_5678_9abc_def0u64);
        let big_a = BigUint::from(2u32).modpow(&a, &n);
        let ch = id
            .initiate_srp(
                &info.client_id,
                "srp@example.com",
                &big_a.to_str_radix(16),
                None,
            )
            .await
            .expect("challenge");
        assert_eq!(ch.user_id_for_srp, user.username);
        // The client's computation, as pycognito does it.
        use sha2::Digest;
        let pad = srp::pad;
        let h = |parts: &[&[u8]]| {
            let mut d = sha2::Sha256::new();
            for p in parts {
                d.update(p);
            }
            BigUint::from_bytes_be(&d.finalize())
        };
        let g = BigUint::from(2u32);
        let k = h(&[&pad(&n), &pad(&g)]);
        let big_b = BigUint::parse_bytes(ch.srp_b.as_bytes(), 16).expect("B");
        let salt = BigUint::parse_bytes(ch.salt.as_bytes(), 16).expect("salt");
        let u = h(&[&pad(&big_a), &pad(&big_b)]);
        let pool_name = srp::pool_name(&info.pool_id);
        let inner = sha2::Sha256::digest(format!("{pool_name}{}:Passw0rd!", ch.user_id_for_srp));
        let x = h(&[&pad(&salt), &inner]);
        let kgx = (&k * g.modpow(&x, &n)) % &n;
        let s = ((&big_b + &n) - kgx) % &n;
        let s = s.modpow(&(&a + &u * &x), &n);
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&pad(&u)), &pad(&s));
        let mut key = [0u8; 16];
        hk.expand(b"Caldera Derived Key", &mut key).expect("hkdf");
        let block = STANDARD.decode(&ch.secret_block).expect("b64");
        let ts = "Tue Jan 2 03:04:05 UTC 2024";
        let sig = STANDARD.encode(srp::signature(
            &key,
            &info.pool_id,
            &ch.user_id_for_srp,
            &block,
            ts,
        ));
        let t = id
            .respond_password_verifier(
                &info.client_id,
                &ch.username,
                &ch.secret_block,
                ts,
                &sig,
                None,
            )
            .await
            .expect("verified");
        assert!(matches!(t, AuthOutcome::Tokens(_)));
        assert!(
            id.respond_password_verifier(
                &info.client_id,
                &ch.username,
                &ch.secret_block,
                ts,
                &sig,
                None
            )
            .await
            .is_err(),
            "a challenge is answered once"
        );
    }
}
