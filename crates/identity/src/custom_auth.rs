//! CUSTOM_AUTH: sign-in decided by the pool's three challenge triggers, as Cognito runs them.
//!
//! InitiateAuth (or AdminInitiateAuth) with `CUSTOM_AUTH` asks **DefineAuthChallenge** what
//! comes next, given the challenges answered so far (`request.session`): tokens
//! (`issueTokens`), a refusal (`failAuthentication`), or a `CUSTOM_CHALLENGE`, which
//! **CreateAuthChallenge** makes (public parameters for the client, private ones kept in the
//! session row, never shown). RespondToAuthChallenge's `ANSWER` goes to
//! **VerifyAuthChallengeResponse** with the private parameters; its `answerCorrect` is
//! added to the session list and DefineAuthChallenge is asked again. Each round trip hands
//! the client a new session (the old one stops working); a sign-in takes at most
//! [`MAX_ROUNDS`] challenges. When the triggers issue tokens, the ordinary path follows: a
//! pool's MFA still applies (decision: custom challenges do not bypass a required second
//! factor), then PostAuthentication and PreTokenGeneration.
//!
//! Only `CUSTOM_CHALLENGE` may be asked for: a DefineAuthChallenge that asks for
//! `PASSWORD_VERIFIER` / `SRP_A` (password first, then custom challenges) is
//! `InvalidLambdaResponseException` here.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sluice_meta::{Tx, now_ms, params};

use crate::client_secret::check_secret_hash;
use crate::pools::pool_settings;
use crate::triggers::{Call, LambdaConfig, TriggerData, event_attributes};
use crate::users::{find_user, user_where};
use crate::{
    ClientRow, Identity, IdentityError, UserRow, random_token, token_hash, user_not_found,
};

/// How many custom challenges one sign-in may go through.
pub const MAX_ROUNDS: usize = 8;

/// What the client is asked next, or that it is done.
#[derive(Debug, Clone)]
pub(crate) enum CustomStep {
    Challenge {
        session: String,
        username: String,
        /// CreateAuthChallenge's `publicChallengeParameters`.
        parameters: BTreeMap<String, String>,
    },
    Done(UserRow),
}

fn invalid_session() -> IdentityError {
    IdentityError::NotAuthorized("Invalid session for the user.".into())
}

fn bad(what: &str) -> IdentityError {
    IdentityError::InvalidLambdaResponse(format!("Invalid lambda response: {what}"))
}

fn arns(l: &LambdaConfig) -> Option<(String, String, String)> {
    Some((
        l.define_auth_challenge.clone()?,
        l.create_auth_challenge.clone()?,
        l.verify_auth_challenge_response.clone()?,
    ))
}

/// The session row of a custom challenge.
struct Round {
    sub: String,
    client: String,
    pool: String,
    /// `request.session`: the challenges answered so far.
    history: Vec<Value>,
    private: Value,
    metadata: Value,
}

fn load(c: &Tx<'_>, hash: &str) -> Result<Option<Round>, IdentityError> {
    let row: Option<(String, String, String, i64, Option<String>)> = c.query_opt(
        "DELETE FROM auth_sessions WHERE hash = ?1 AND challenge = 'CUSTOM_CHALLENGE'
         RETURNING pool_id, client_id, sub, expires_ms, data",
        params![hash],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?;
    let Some((pool, client, sub, expires, data)) = row else {
        return Ok(None);
    };
    if expires < now_ms() {
        return Ok(None);
    }
    let data: Value = serde_json::from_str(data.as_deref().unwrap_or("{}"))?;
    Ok(Some(Round {
        sub,
        client,
        pool,
        history: data["history"].as_array().cloned().unwrap_or_default(),
        private: data["private"].clone(),
        metadata: data["metadata"].clone(),
    }))
}

impl Identity {
    /// InitiateAuth / AdminInitiateAuth with CUSTOM_AUTH.
    pub(crate) async fn start_custom_auth(
        &self,
        client: &ClientRow,
        username: &str,
        secret_hash: Option<&str>,
        data: &TriggerData,
    ) -> Result<CustomStep, IdentityError> {
        if !client.settings.allows("ALLOW_CUSTOM_AUTH") {
            return Err(IdentityError::InvalidParameter(
                "CUSTOM_AUTH flow not enabled for this client".into(),
            ));
        }
        self.admit(&client.pool_id, crate::rates::Category::SignIn)?;
        let (p, given) = (client.pool_id.clone(), username.to_owned());
        let (settings, user) = self
            .db
            .read(move |c| {
                let s = pool_settings(c, &p)?;
                let u = find_user(c, &p, &s, &given)?;
                Ok::<_, IdentityError>((s, u))
            })
            .await?;
        let Some(arns) = settings.lambda_config.as_ref().and_then(arns) else {
            return Err(IdentityError::InvalidParameter(
                "Custom auth lambda trigger is not configured for the user pool.".into(),
            ));
        };
        let mut names = vec![username];
        if let Some(u) = &user {
            names.push(&u.username);
        }
        check_secret_hash(client, &names, secret_hash)?;
        let Some(user) = user else {
            return Err(if client.prevent_user_existence_errors {
                crate::incorrect()
            } else {
                user_not_found()
            });
        };
        if !user.enabled {
            return Err(IdentityError::NotAuthorized("User is disabled.".into()));
        }
        self.next_round(client, &user, &arns, Vec::new(), data)
            .await
    }

    /// RespondToAuthChallenge for CUSTOM_CHALLENGE.
    pub(crate) async fn answer_custom_challenge(
        &self,
        client: &ClientRow,
        session: &str,
        username: &str,
        answer: &str,
        secret_hash: Option<&str>,
        data: &TriggerData,
    ) -> Result<CustomStep, IdentityError> {
        let h = token_hash(session);
        let round = self
            .db
            .write(move |c| load(c, &h))
            .await?
            .ok_or_else(invalid_session)?;
        if round.client != client.id || round.pool != client.pool_id {
            return Err(invalid_session());
        }
        let (p, s, given) = (round.pool.clone(), round.sub.clone(), username.to_owned());
        let (settings, user) = self
            .db
            .read(move |c| {
                let settings = pool_settings(c, &p)?;
                let u = user_where(c, "sub", &p, &s)?;
                let named = find_user(c, &p, &settings, &given)?;
                Ok::<_, IdentityError>((
                    settings,
                    u.filter(|u| named.is_some_and(|n| n.sub == u.sub)),
                ))
            })
            .await?;
        let user = user.ok_or_else(invalid_session)?;
        check_secret_hash(client, &[username, &user.username], secret_hash)?;
        let arns = settings
            .lambda_config
            .as_ref()
            .and_then(arns)
            .ok_or_else(invalid_session)?;
        let verified = self
            .run_trigger(
                &arns.2,
                Call {
                    trigger: "VerifyAuthChallengeResponse",
                    source: "VerifyAuthChallengeResponse_Authentication",
                    version: "1",
                    pool_id: &client.pool_id,
                    client_id: &client.id,
                    username: &user.username,
                    request: json!({
                        "userAttributes": event_attributes(&user.sub, &user.attributes),
                        "privateChallengeParameters": round.private,
                        "challengeAnswer": answer,
                        "clientMetadata": data.client_metadata,
                        "userNotFound": false,
                    }),
                    response: json!({"answerCorrect": false}),
                },
            )
            .await?;
        let correct = match verified.get("answerCorrect") {
            Some(Value::Bool(b)) => *b,
            None | Some(Value::Null) => false,
            Some(_) => return Err(bad("answerCorrect is not a boolean")),
        };
        let mut history = round.history;
        history.push(json!({
            "challengeName": "CUSTOM_CHALLENGE",
            "challengeResult": correct,
            "challengeMetadata": round.metadata,
        }));
        self.next_round(client, &user, &arns, history, data).await
    }

    /// Asks DefineAuthChallenge what follows `history`, and makes the next challenge.
    async fn next_round(
        &self,
        client: &ClientRow,
        user: &UserRow,
        (define, create, _): &(String, String, String),
        history: Vec<Value>,
        data: &TriggerData,
    ) -> Result<CustomStep, IdentityError> {
        let attributes = event_attributes(&user.sub, &user.attributes);
        let call = |trigger, source, request, response| Call {
            trigger,
            source,
            version: "1",
            pool_id: &client.pool_id,
            client_id: &client.id,
            username: &user.username,
            request,
            response,
        };
        let decided = self
            .run_trigger(
                define,
                call(
                    "DefineAuthChallenge",
                    "DefineAuthChallenge_Authentication",
                    json!({
                        "userAttributes": attributes,
                        "session": history,
                        "clientMetadata": data.client_metadata,
                        "userNotFound": false,
                    }),
                    json!({"challengeName": null, "issueTokens": false, "failAuthentication": false}),
                ),
            )
            .await?;
        let flag = |k: &str| decided.get(k).and_then(Value::as_bool).unwrap_or(false);
        if flag("failAuthentication") {
            return Err(crate::incorrect());
        }
        if flag("issueTokens") {
            return Ok(CustomStep::Done(user.clone()));
        }
        match decided.get("challengeName").and_then(Value::as_str) {
            Some("CUSTOM_CHALLENGE") => {}
            Some(other) => {
                return Err(bad(&format!(
                    "challengeName {other} is not supported by sluice (CUSTOM_CHALLENGE is)"
                )));
            }
            None => return Err(bad("challengeName is missing")),
        }
        if history.len() >= MAX_ROUNDS {
            return Err(IdentityError::NotAuthorized(format!(
                "Too many challenges: a sign-in takes at most {MAX_ROUNDS}"
            )));
        }
        let created = self
            .run_trigger(
                create,
                call(
                    "CreateAuthChallenge",
                    "CreateAuthChallenge_Authentication",
                    json!({
                        "userAttributes": attributes,
                        "challengeName": "CUSTOM_CHALLENGE",
                        "session": history,
                        "clientMetadata": data.client_metadata,
                        "userNotFound": false,
                    }),
                    json!({
                        "publicChallengeParameters": {},
                        "privateChallengeParameters": {},
                        "challengeMetadata": null,
                    }),
                ),
            )
            .await?;
        let mut parameters = BTreeMap::new();
        match created.get("publicChallengeParameters") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let v = v
                        .as_str()
                        .ok_or_else(|| bad("publicChallengeParameters holds a non-string"))?;
                    parameters.insert(k.clone(), v.to_owned());
                }
            }
            Some(_) => return Err(bad("publicChallengeParameters is not an object")),
        }
        let stored = json!({
            "history": history,
            "private": created.get("privateChallengeParameters").cloned().unwrap_or(Value::Null),
            "metadata": created.get("challengeMetadata").cloned().unwrap_or(Value::Null),
        })
        .to_string();
        let session = random_token();
        let ttl = client.session_ttl_ms();
        let (h, pool, cid, sub) = (
            token_hash(&session),
            client.pool_id.clone(),
            client.id.clone(),
            user.sub.clone(),
        );
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO auth_sessions (hash, pool_id, client_id, sub, challenge,
                         expires_ms, data) VALUES (?1, ?2, ?3, ?4, 'CUSTOM_CHALLENGE', ?5, ?6)",
                    params![h, pool, cid, sub, now_ms() + ttl, stored],
                )?;
                Ok::<_, IdentityError>(())
            })
            .await?;
        parameters.insert("USERNAME".into(), user.username.clone());
        Ok(CustomStep::Challenge {
            session,
            username: user.username.clone(),
            parameters,
        })
    }
}
