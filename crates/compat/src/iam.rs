//! IAM's and STS's Query protocol (SigV4 services `iam` and `sts`): `Action=…&Version=…`
//! parameters in a form-encoded body (or the query string), XML answers, and errors as
//! `<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>`.
//!
//! IAM: users, groups and roles with their inline and attached policies, tags, customer
//! managed policies and versions, the AWS managed policies of `sluice_iam::managed`,
//! users' access keys ([`sluice_iam::Iam`]), and SimulatePrincipalPolicy /
//! SimulateCustomPolicy (the edge's own evaluator, over the context entries given). STS: `GetCallerIdentity`. Every IAM operation
//! is authorized as `iam:<Action>` on the entity's ARN (the root key may do everything);
//! GetCallerIdentity needs no permission, as on AWS.
//!
//! Policy documents are answered URL-encoded, as IAM answers them (boto3 and the aws CLI
//! decode them). List operations page with `Marker` / `MaxItems` (default 100, at most
//! 1000); a marker is opaque.

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sluice_iam::{Entity, Iam, IamError, Kind, ManagedPolicy, NewEntity, PolicyVersion, Scope};

use crate::Edge;
use crate::authz::Principal;

/// What the IAM front end works with.
#[derive(Clone)]
pub struct IamApi {
    pub iam: Iam,
}

const IAM_NS: &str = "https://iam.amazonaws.com/doc/2010-05-08/";
const STS_NS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// Largest request: a policy document (IAM allows 10,240 characters for inline policies)
/// URL-encoded, with room for the rest.
const MAX_REQUEST: usize = 128 * 1024;

/// IAM's and STS's errors.
#[derive(Debug)]
pub struct QueryError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl QueryError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        QueryError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        QueryError::new(StatusCode::BAD_REQUEST, "InvalidInput", message)
    }

    fn missing(name: &str) -> Self {
        QueryError::new(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            format!(
                "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
                lower_first(name)
            ),
        )
    }

    fn render(&self, ns: &str, request_id: &str) -> Response {
        let kind = if self.status.is_server_error() {
            "Receiver"
        } else {
            "Sender"
        };
        let body = format!(
            "<ErrorResponse xmlns=\"{ns}\"><Error><Type>{kind}</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
            self.code,
            esc(&self.message)
        );
        (self.status, [("content-type", "text/xml")], body).into_response()
    }
}

impl From<IamError> for QueryError {
    fn from(e: IamError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "iam: engine unavailable");
            return QueryError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the service is unavailable (storage down or full); try again later",
            );
        }
        let m = e.to_string();
        match e {
            IamError::NoSuchEntity(_) => QueryError::new(StatusCode::NOT_FOUND, "NoSuchEntity", m),
            IamError::EntityAlreadyExists(_) => {
                QueryError::new(StatusCode::CONFLICT, "EntityAlreadyExists", m)
            }
            IamError::DeleteConflict(_) => {
                QueryError::new(StatusCode::CONFLICT, "DeleteConflict", m)
            }
            IamError::LimitExceeded(_) => QueryError::new(StatusCode::CONFLICT, "LimitExceeded", m),
            IamError::MalformedPolicyDocument(_) => {
                QueryError::new(StatusCode::BAD_REQUEST, "MalformedPolicyDocument", m)
            }
            IamError::InvalidInput(_) => QueryError::invalid(m),
            IamError::Validation(_) => {
                QueryError::new(StatusCode::BAD_REQUEST, "ValidationError", m)
            }
            IamError::AccessDenied(_) => QueryError::new(StatusCode::FORBIDDEN, "AccessDenied", m),
            other => {
                tracing::error!(error = %other, "iam operation failed");
                QueryError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ServiceFailure",
                    "internal failure",
                )
            }
        }
    }
}

/// Whether a request is signed for `iam` or `sts`.
pub fn service_of(headers: &axum::http::HeaderMap, query: Option<&str>) -> Option<&'static str> {
    if crate::lambda::signed_for(headers, query, "iam") {
        Some("iam")
    } else if crate::lambda::signed_for(headers, query, "sts") {
        Some("sts")
    } else {
        None
    }
}

/// Serves one IAM or STS request.
pub async fn handle(State(edge): State<Edge>, req: Request, service: &'static str) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let ns = if service == "sts" { STS_NS } else { IAM_NS };
    let mut resp = match serve(edge, req, service, &request_id).await {
        Ok(r) => r,
        Err(e) => e.render(ns, &request_id),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amzn-requestid", v);
    }
    resp
}

/// A request's parameters.
struct Params(HashMap<String, String>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn required(&self, name: &str) -> Result<&str, QueryError> {
        self.get(name).ok_or_else(|| QueryError::missing(name))
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, QueryError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(QueryError::invalid(format!(
                "{name} must be true or false, not {v:?}"
            ))),
        }
    }

    fn int(&self, name: &str) -> Result<Option<i64>, QueryError> {
        self.get(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| QueryError::invalid(format!("{name} must be a number, not {v:?}")))
            })
            .transpose()
    }

    /// `Name.member.1`, `Name.member.2`, … in order.
    fn list(&self, name: &str) -> Vec<String> {
        (1..)
            .map_while(|i| self.get(&format!("{name}.member.{i}")).map(str::to_owned))
            .collect()
    }

    /// `Tags.member.N.Key` / `.Value`.
    fn tags(&self) -> Result<Vec<(String, String)>, QueryError> {
        let mut tags = Vec::new();
        for i in 1.. {
            let Some(k) = self.get(&format!("Tags.member.{i}.Key")) else {
                break;
            };
            let v = self.get(&format!("Tags.member.{i}.Value")).unwrap_or("");
            tags.push((k.to_owned(), v.to_owned()));
        }
        Ok(tags)
    }
}

async fn serve(
    edge: Edge,
    req: Request,
    service: &'static str,
    request_id: &str,
) -> Result<Response, QueryError> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_REQUEST).await.map_err(|_| {
        QueryError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("Request must be smaller than {MAX_REQUEST} bytes"),
        )
    })?;
    let principal = match crate::authenticate(
        &edge.keys,
        &edge.kinesis.account_id,
        &parts.method,
        &parts.uri,
        &parts.headers,
        &body,
        crate::peer_of(&parts.extensions),
    )
    .await
    {
        Ok(p) => p,
        Err(resp) => return Err(auth_error(resp).await),
    };
    let mut params = HashMap::new();
    let pairs = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
        .map_err(|e| QueryError::invalid(format!("the request body is not form-encoded: {e}")))?;
    let query =
        serde_urlencoded::from_str::<Vec<(String, String)>>(parts.uri.query().unwrap_or(""))
            .map_err(|e| QueryError::invalid(format!("the query string does not parse: {e}")))?;
    params.extend(query);
    params.extend(pairs);
    let params = Params(params);
    let action = params.required("Action")?.to_owned();
    if service == "sts" {
        let source = crate::peer_of(&parts.extensions);
        return sts(&edge, &principal, &params, &action, request_id, source).await;
    }
    let Some(api) = edge.iam.clone() else {
        return Err(QueryError::new(
            StatusCode::NOT_FOUND,
            "InvalidAction",
            "this server does not serve IAM",
        ));
    };
    let call = Call {
        iam: &api.iam,
        principal: &principal,
        params: &params,
        action: &action,
    };
    let result = call.run().await?;
    Ok(ok(IAM_NS, &action, result.as_deref(), request_id))
}

/// Turns the edge's JSON authentication error into IAM's XML one.
async fn auth_error(resp: Response) -> QueryError {
    let code = resp
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_end_matches(':')
        .to_owned();
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let (status, code) = match code.as_str() {
        "UnrecognizedClientException" => (StatusCode::FORBIDDEN, "InvalidClientTokenId"),
        "InvalidSignatureException" => (StatusCode::FORBIDDEN, "SignatureDoesNotMatch"),
        "IncompleteSignatureException" => (StatusCode::BAD_REQUEST, "IncompleteSignature"),
        "MissingAuthenticationTokenException" => {
            (StatusCode::FORBIDDEN, "MissingAuthenticationToken")
        }
        "ServiceUnavailable" => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure"),
    };
    let message = if code == "InvalidClientTokenId" {
        "The security token included in the request is invalid.".to_owned()
    } else {
        message
    };
    QueryError::new(status, code, message)
}

fn ok(ns: &str, action: &str, result: Option<&str>, request_id: &str) -> Response {
    // Operations without an answer still carry an empty result element: clients whose
    // model gives the operation an empty output shape (UpdateRole) look for it, and the
    // others ignore it.
    let result = format!("<{action}Result>{}</{action}Result>", result.unwrap_or(""));
    let body = format!(
        "<{action}Response xmlns=\"{ns}\">{result}<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>"
    );
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}

async fn sts(
    edge: &Edge,
    principal: &Principal,
    p: &Params,
    action: &str,
    request_id: &str,
    source: Option<std::net::IpAddr>,
) -> Result<Response, QueryError> {
    match action {
        "AssumeRole" => {
            let Some(api) = edge.iam.as_ref() else {
                return Err(QueryError::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidAction",
                    "this server does not serve IAM roles",
                ));
            };
            for unsupported in [
                "Policy",
                "PolicyArns.member.1.arn",
                "Tags.member.1.Key",
                "SerialNumber",
                "SourceIdentity",
                "ProvidedContexts.member.1.ProviderArn",
            ] {
                if p.get(unsupported).is_some() {
                    let name = unsupported.split('.').next().unwrap_or(unsupported);
                    return Err(QueryError::new(
                        StatusCode::BAD_REQUEST,
                        "ValidationError",
                        format!("{name} is not supported by sluice's AssumeRole"),
                    ));
                }
            }
            let role_arn = p.required("RoleArn")?;
            let session = p.required("RoleSessionName")?;
            principal
                .check("sts:AssumeRole", role_arn)
                .map_err(|d| QueryError::new(StatusCode::FORBIDDEN, "AccessDenied", d.message()))?;
            let caller_arn = principal.arn();
            let role_of_session = match principal.user.as_ref() {
                Some(u) if u.session.is_some() => api
                    .iam
                    .get(sluice_iam::Kind::Role, &u.name)
                    .await
                    .ok()
                    .map(|r| r.arn),
                _ => None,
            };
            let caller = sluice_iam::sts::Caller {
                arn: &caller_arn,
                account: &principal.account_id,
                role_arn: role_of_session.as_deref(),
                service: None,
            };
            let mut ctx = principal.full_context(source);
            if let Some(id) = p.get("ExternalId") {
                ctx.set("sts:ExternalId", id);
            }
            let assumed = api
                .iam
                .assume_role(caller, role_arn, session, p.int("DurationSeconds")?, &ctx)
                .await?;
            let c = &assumed.credentials;
            let result = format!(
                "<Credentials><AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey><SessionToken>{}</SessionToken><Expiration>{}</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>{}</AssumedRoleId><Arn>{}</Arn></AssumedRoleUser><PackedPolicySize>0</PackedPolicySize>",
                esc(&c.access_key_id),
                esc(&c.secret),
                esc(&c.session_token),
                sluice_iam::iso(c.expires_ms),
                esc(&assumed.assumed_role_id),
                esc(&assumed.arn)
            );
            Ok(ok(STS_NS, action, Some(&result), request_id))
        }
        "GetCallerIdentity" => {
            let account = &edge.kinesis.account_id;
            let user_id = match (&principal.user, &principal.policy) {
                (Some(u), _) => u.user_id.clone(),
                (None, Some(_)) => principal.access_key_id.clone(),
                (None, None) => account.clone(),
            };
            let result = format!(
                "<Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account>",
                esc(&principal.arn()),
                esc(&user_id),
                esc(account)
            );
            Ok(ok(STS_NS, action, Some(&result), request_id))
        }
        other => Err(QueryError::new(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!(
                "Could not find operation {other} for version 2011-06-15 (sluice's STS answers GetCallerIdentity and AssumeRole)"
            ),
        )),
    }
}

/// One IAM call.
struct Call<'a> {
    iam: &'a Iam,
    principal: &'a Principal,
    params: &'a Params,
    action: &'a str,
}

/// The kind of entity an operation's name is about.
fn kind_of(action: &str) -> Option<Kind> {
    if action.contains("Role") {
        Some(Kind::Role)
    } else if action.contains("Group") {
        Some(Kind::Group)
    } else if action.contains("User") || action.contains("AccessKey") {
        Some(Kind::User)
    } else {
        None
    }
}

fn noun(kind: Kind) -> &'static str {
    match kind {
        Kind::User => "User",
        Kind::Group => "Group",
        Kind::Role => "Role",
    }
}

impl Call<'_> {
    fn account(&self) -> &str {
        self.iam.account_id()
    }

    /// `iam:<Action>` on `resource`, unless the principal may do everything.
    fn authorize(&self, resource: &str) -> Result<(), QueryError> {
        self.principal
            .check(&format!("iam:{}", self.action), resource)
            .map_err(|d| QueryError::new(StatusCode::FORBIDDEN, "AccessDenied", d.message()))
    }

    /// The ARN an operation on the entity `name` is authorized on: the entity's own (with
    /// its path) when it exists.
    async fn entity_arn(&self, kind: Kind, name: &str) -> Result<String, QueryError> {
        match self.iam.get(kind, name).await {
            Ok(e) => Ok(e.arn),
            Err(IamError::NoSuchEntity(_)) => Ok(format!(
                "arn:aws:iam::{}:{}/{name}",
                self.account(),
                noun(kind).to_lowercase()
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// The user an operation is about: `UserName`, or the caller's own user.
    async fn user_name(&self) -> Result<String, QueryError> {
        if let Some(u) = self.params.get("UserName") {
            return Ok(u.to_owned());
        }
        match &self.principal.user {
            Some(u) if u.session.is_none() => Ok(u.name.clone()),
            _ => Err(QueryError::missing("UserName")),
        }
    }

    fn max_items(&self) -> Result<usize, QueryError> {
        match self.params.int("MaxItems")? {
            None => Ok(100),
            Some(n) if (1..=1000).contains(&n) => Ok(n as usize),
            Some(n) => Err(QueryError::new(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                format!(
                    "1 validation error detected: Value '{n}' at 'maxItems' failed to satisfy constraint: Member must have value between 1 and 1000"
                ),
            )),
        }
    }

    /// One page of `items`, each rendered by `f`, in `<Name><member>…</member></Name>`,
    /// with `IsTruncated` and `Marker`.
    fn page<T>(
        &self,
        name: &str,
        items: &[T],
        f: impl Fn(&T) -> String,
    ) -> Result<String, QueryError> {
        let start = match self.params.get("Marker") {
            None => 0,
            Some(m) => m
                .parse::<usize>()
                .ok()
                .filter(|s| *s <= items.len())
                .ok_or_else(|| QueryError::invalid("Invalid Marker"))?,
        };
        let max = self.max_items()?;
        let end = (start + max).min(items.len());
        let mut out = format!("<{name}>");
        for item in &items[start..end] {
            out.push_str("<member>");
            out.push_str(&f(item));
            out.push_str("</member>");
        }
        out.push_str(&format!("</{name}>"));
        if end < items.len() {
            out.push_str(&format!(
                "<IsTruncated>true</IsTruncated><Marker>{end}</Marker>"
            ));
        } else {
            out.push_str("<IsTruncated>false</IsTruncated>");
        }
        Ok(out)
    }

    async fn run(&self) -> Result<Option<String>, QueryError> {
        let p = self.params;
        let action = self.action;
        let account = self.account().to_owned();
        let all = "*";
        match action {
            "CreateUser" | "CreateGroup" | "CreateRole" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let name = p.required(&format!("{}Name", noun(kind)))?;
                let path = p.get("Path").unwrap_or("/");
                self.authorize(&format!(
                    "arn:aws:iam::{account}:{}{path}{name}",
                    noun(kind).to_lowercase()
                ))?;
                let new = NewEntity {
                    name: name.to_owned(),
                    path: p.get("Path").map(str::to_owned),
                    description: p.get("Description").map(str::to_owned),
                    assume_role_policy: p.get("AssumeRolePolicyDocument").map(str::to_owned),
                    max_session_duration: p.int("MaxSessionDuration")?,
                    tags: p.tags()?,
                };
                if kind == Kind::Role && new.assume_role_policy.is_none() {
                    return Err(QueryError::missing("AssumeRolePolicyDocument"));
                }
                if p.get("PermissionsBoundary").is_some() {
                    return Err(QueryError::invalid(
                        "PermissionsBoundary is not supported by sluice",
                    ));
                }
                let e = self.iam.create(kind, new).await?;
                Ok(Some(entity_xml(&e, true)))
            }
            "GetUser" | "GetRole" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let name = if kind == Kind::User {
                    match (p.get("UserName"), &self.principal.user) {
                        (Some(n), _) => n.to_owned(),
                        (None, Some(u)) if u.session.is_none() => u.name.clone(),
                        (None, Some(_)) => return Err(QueryError::missing("UserName")),
                        (None, None) => {
                            // The root key asks about itself.
                            self.authorize(&format!("arn:aws:iam::{account}:root"))?;
                            return Ok(Some(format!(
                                "<User><Path>/</Path><UserId>{account}</UserId><Arn>arn:aws:iam::{account}:root</Arn><CreateDate>{}</CreateDate></User>",
                                sluice_iam::iso(0)
                            )));
                        }
                    }
                } else {
                    p.required("RoleName")?.to_owned()
                };
                self.authorize(&self.entity_arn(kind, &name).await?)?;
                let e = self.iam.get(kind, &name).await?;
                Ok(Some(entity_xml(&e, true)))
            }
            "GetGroup" => {
                let name = p.required("GroupName")?;
                self.authorize(&self.entity_arn(Kind::Group, name).await?)?;
                let (g, users) = self.iam.group_members(name).await?;
                let page = self.page("Users", &users, |u| entity_fields(u, false))?;
                Ok(Some(format!(
                    "<Group>{}</Group>{page}",
                    entity_fields(&g, false)
                )))
            }
            "ListUsers" | "ListGroups" | "ListRoles" => {
                self.authorize(all)?;
                let kind = kind_of(action).unwrap_or(Kind::User);
                let items = self
                    .iam
                    .list(kind, p.get("PathPrefix").unwrap_or("/"))
                    .await?;
                let page = self.page(&format!("{}s", noun(kind)), &items, |e| {
                    entity_fields(e, false)
                })?;
                Ok(Some(page))
            }
            "UpdateRole" | "UpdateRoleDescription" | "UpdateUser" | "UpdateGroup" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let name = p.required(&format!("{}Name", noun(kind)))?;
                self.authorize(&self.entity_arn(kind, name).await?)?;
                if p.get(&format!("New{}Name", noun(kind))).is_some() {
                    return Err(QueryError::invalid(format!(
                        "renaming a {} is not supported by sluice",
                        noun(kind).to_lowercase()
                    )));
                }
                let e = self
                    .iam
                    .update(
                        kind,
                        name,
                        p.get("Description").map(str::to_owned),
                        p.int("MaxSessionDuration")?,
                        p.get("NewPath").map(str::to_owned),
                    )
                    .await?;
                Ok((action == "UpdateRoleDescription")
                    .then(|| format!("<Role>{}</Role>", entity_fields(&e, true))))
            }
            "UpdateAssumeRolePolicy" => {
                let name = p.required("RoleName")?;
                self.authorize(&self.entity_arn(Kind::Role, name).await?)?;
                self.iam
                    .update_trust(name, p.required("PolicyDocument")?)
                    .await?;
                Ok(None)
            }
            "DeleteUser" | "DeleteGroup" | "DeleteRole" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let name = p.required(&format!("{}Name", noun(kind)))?;
                self.authorize(&self.entity_arn(kind, name).await?)?;
                self.iam.delete(kind, name).await?;
                Ok(None)
            }
            "TagUser" | "TagRole" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let name = p.required(&format!("{}Name", noun(kind)))?;
                self.authorize(&self.entity_arn(kind, name).await?)?;
                let tags = p.tags()?;
                if tags.is_empty() {
                    return Err(QueryError::missing("Tags"));
                }
                self.iam.tag(kind, name, tags).await?;
                Ok(None)
            }
            "UntagUser" | "UntagRole" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let name = p.required(&format!("{}Name", noun(kind)))?;
                self.authorize(&self.entity_arn(kind, name).await?)?;
                self.iam.untag(kind, name, p.list("TagKeys")).await?;
                Ok(None)
            }
            "ListUserTags" | "ListRoleTags" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let name = p.required(&format!("{}Name", noun(kind)))?;
                self.authorize(&self.entity_arn(kind, name).await?)?;
                let e = self.iam.get(kind, name).await?;
                Ok(Some(self.page("Tags", &e.tags, |(k, v)| {
                    format!("<Key>{}</Key><Value>{}</Value>", esc(k), esc(v))
                })?))
            }
            "PutUserPolicy" | "PutGroupPolicy" | "PutRolePolicy" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let owner = p.required(&format!("{}Name", noun(kind)))?;
                self.authorize(&self.entity_arn(kind, owner).await?)?;
                self.iam
                    .put_inline(
                        kind,
                        owner,
                        p.required("PolicyName")?,
                        p.required("PolicyDocument")?,
                    )
                    .await?;
                Ok(None)
            }
            "GetUserPolicy" | "GetGroupPolicy" | "GetRolePolicy" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let field = format!("{}Name", noun(kind));
                let owner = p.required(&field)?;
                self.authorize(&self.entity_arn(kind, owner).await?)?;
                let e = self.iam.get(kind, owner).await?;
                let (name, doc) = self
                    .iam
                    .get_inline(kind, owner, p.required("PolicyName")?)
                    .await?;
                Ok(Some(format!(
                    "<{field}>{}</{field}><PolicyName>{}</PolicyName><PolicyDocument>{}</PolicyDocument>",
                    esc(&e.name),
                    esc(&name),
                    esc(&encode_document(&doc))
                )))
            }
            "ListUserPolicies" | "ListGroupPolicies" | "ListRolePolicies" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let owner = p.required(&format!("{}Name", noun(kind)))?;
                self.authorize(&self.entity_arn(kind, owner).await?)?;
                let names = self.iam.list_inline(kind, owner).await?;
                Ok(Some(self.page("PolicyNames", &names, |n| esc(n))?))
            }
            "DeleteUserPolicy" | "DeleteGroupPolicy" | "DeleteRolePolicy" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let owner = p.required(&format!("{}Name", noun(kind)))?;
                self.authorize(&self.entity_arn(kind, owner).await?)?;
                self.iam
                    .delete_inline(kind, owner, p.required("PolicyName")?)
                    .await?;
                Ok(None)
            }
            "AttachUserPolicy" | "AttachGroupPolicy" | "AttachRolePolicy" | "DetachUserPolicy"
            | "DetachGroupPolicy" | "DetachRolePolicy" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let owner = p.required(&format!("{}Name", noun(kind)))?;
                self.authorize(&self.entity_arn(kind, owner).await?)?;
                let arn = p.required("PolicyArn")?;
                valid_policy_arn(arn)?;
                if action.starts_with("Attach") {
                    self.iam.attach(kind, owner, arn).await?;
                } else {
                    self.iam.detach(kind, owner, arn).await?;
                }
                Ok(None)
            }
            "ListAttachedUserPolicies"
            | "ListAttachedGroupPolicies"
            | "ListAttachedRolePolicies" => {
                let kind = kind_of(action).unwrap_or(Kind::User);
                let owner = p.required(&format!("{}Name", noun(kind)))?;
                self.authorize(&self.entity_arn(kind, owner).await?)?;
                let attached = self.iam.list_attached(kind, owner).await?;
                Ok(Some(self.page(
                    "AttachedPolicies",
                    &attached,
                    |(n, a)| {
                        format!(
                            "<PolicyName>{}</PolicyName><PolicyArn>{}</PolicyArn>",
                            esc(n),
                            esc(a)
                        )
                    },
                )?))
            }
            "AddUserToGroup" | "RemoveUserFromGroup" => {
                let group = p.required("GroupName")?;
                self.authorize(&self.entity_arn(Kind::Group, group).await?)?;
                let user = p.required("UserName")?;
                if action == "AddUserToGroup" {
                    self.iam.add_to_group(group, user).await?;
                } else {
                    self.iam.remove_from_group(group, user).await?;
                }
                Ok(None)
            }
            "ListGroupsForUser" => {
                let user = p.required("UserName")?;
                self.authorize(&self.entity_arn(Kind::User, user).await?)?;
                let groups = self.iam.groups_of(user).await?;
                Ok(Some(
                    self.page("Groups", &groups, |g| entity_fields(g, false))?,
                ))
            }
            "CreatePolicy" => {
                let name = p.required("PolicyName")?;
                let path = p.get("Path");
                self.authorize(&format!(
                    "arn:aws:iam::{account}:policy{}{name}",
                    path.unwrap_or("/")
                ))?;
                let policy = self
                    .iam
                    .create_policy(
                        name,
                        path,
                        p.required("PolicyDocument")?,
                        p.get("Description"),
                        p.tags()?,
                    )
                    .await?;
                Ok(Some(format!(
                    "<Policy>{}</Policy>",
                    policy_fields(&policy, false)
                )))
            }
            "GetPolicy" => {
                let arn = p.required("PolicyArn")?;
                valid_policy_arn(arn)?;
                self.authorize(arn)?;
                let policy = self.iam.get_policy(arn).await?;
                Ok(Some(format!(
                    "<Policy>{}</Policy>",
                    policy_fields(&policy, true)
                )))
            }
            "ListPolicies" => {
                self.authorize(all)?;
                let scope = match p.get("Scope").unwrap_or("All") {
                    "All" => Scope::All,
                    "AWS" => Scope::Aws,
                    "Local" => Scope::Local,
                    other => {
                        return Err(QueryError::new(
                            StatusCode::BAD_REQUEST,
                            "ValidationError",
                            format!(
                                "1 validation error detected: Value '{other}' at 'scope' failed to satisfy constraint: Member must satisfy enum value set: [All, AWS, Local]"
                            ),
                        ));
                    }
                };
                if p.get("PolicyUsageFilter").is_some() {
                    return Err(QueryError::invalid(
                        "PolicyUsageFilter is not supported by sluice",
                    ));
                }
                let policies = self
                    .iam
                    .list_policies(
                        scope,
                        p.bool("OnlyAttached")?.unwrap_or(false),
                        p.get("PathPrefix").unwrap_or("/"),
                    )
                    .await?;
                Ok(Some(self.page("Policies", &policies, |x| {
                    policy_fields(x, false)
                })?))
            }
            "DeletePolicy" => {
                let arn = p.required("PolicyArn")?;
                valid_policy_arn(arn)?;
                self.authorize(arn)?;
                self.iam.delete_policy(arn).await?;
                Ok(None)
            }
            "CreatePolicyVersion" => {
                let arn = p.required("PolicyArn")?;
                valid_policy_arn(arn)?;
                self.authorize(arn)?;
                let v = self
                    .iam
                    .create_policy_version(
                        arn,
                        p.required("PolicyDocument")?,
                        p.bool("SetAsDefault")?.unwrap_or(false),
                    )
                    .await?;
                Ok(Some(format!(
                    "<PolicyVersion>{}</PolicyVersion>",
                    version_fields(&v, false)
                )))
            }
            "GetPolicyVersion" => {
                let arn = p.required("PolicyArn")?;
                valid_policy_arn(arn)?;
                self.authorize(arn)?;
                let v = self
                    .iam
                    .get_policy_version(arn, p.required("VersionId")?)
                    .await?;
                Ok(Some(format!(
                    "<PolicyVersion>{}</PolicyVersion>",
                    version_fields(&v, true)
                )))
            }
            "ListPolicyVersions" => {
                let arn = p.required("PolicyArn")?;
                valid_policy_arn(arn)?;
                self.authorize(arn)?;
                let versions = self.iam.list_policy_versions(arn).await?;
                Ok(Some(self.page("Versions", &versions, |v| {
                    version_fields(v, false)
                })?))
            }
            "SetDefaultPolicyVersion" | "DeletePolicyVersion" => {
                let arn = p.required("PolicyArn")?;
                valid_policy_arn(arn)?;
                self.authorize(arn)?;
                let v = p.required("VersionId")?;
                if action == "SetDefaultPolicyVersion" {
                    self.iam.set_default_version(arn, v).await?;
                } else {
                    self.iam.delete_policy_version(arn, v).await?;
                }
                Ok(None)
            }
            "CreateAccessKey" => {
                let user = self.user_name().await?;
                self.authorize(&self.entity_arn(Kind::User, &user).await?)?;
                let (u, key) = self.iam.create_access_key(&user).await?;
                Ok(Some(format!(
                    "<AccessKey><UserName>{}</UserName><AccessKeyId>{}</AccessKeyId><Status>Active</Status><SecretAccessKey>{}</SecretAccessKey><CreateDate>{}</CreateDate></AccessKey>",
                    esc(&u.name),
                    esc(&key.id),
                    esc(&key.secret),
                    sluice_iam::iso(key.created_ms)
                )))
            }
            "ListAccessKeys" => {
                let user = self.user_name().await?;
                self.authorize(&self.entity_arn(Kind::User, &user).await?)?;
                let (u, keys) = self.iam.list_access_keys(&user).await?;
                let page = self.page("AccessKeyMetadata", &keys, |k| {
                    format!(
                        "<UserName>{}</UserName><AccessKeyId>{}</AccessKeyId><Status>{}</Status><CreateDate>{}</CreateDate>",
                        esc(&u.name),
                        esc(&k.id),
                        if k.active { "Active" } else { "Inactive" },
                        sluice_iam::iso(k.created_ms)
                    )
                })?;
                Ok(Some(format!("<UserName>{}</UserName>{page}", esc(&u.name))))
            }
            "UpdateAccessKey" | "DeleteAccessKey" => {
                let user = self.user_name().await?;
                self.authorize(&self.entity_arn(Kind::User, &user).await?)?;
                let id = p.required("AccessKeyId")?;
                if action == "UpdateAccessKey" {
                    let active = match p.required("Status")? {
                        "Active" => true,
                        "Inactive" => false,
                        other => {
                            return Err(QueryError::new(
                                StatusCode::BAD_REQUEST,
                                "ValidationError",
                                format!(
                                    "1 validation error detected: Value '{other}' at 'status' failed to satisfy constraint: Member must satisfy enum value set: [Active, Inactive]"
                                ),
                            ));
                        }
                    };
                    self.iam.update_access_key(&user, id, active).await?;
                } else {
                    self.iam.delete_access_key(&user, id).await?;
                }
                Ok(None)
            }
            "SimulatePrincipalPolicy" | "SimulateCustomPolicy" => {
                let mut docs = Vec::new();
                if action == "SimulatePrincipalPolicy" {
                    let source = p.required("PolicySourceArn")?;
                    self.authorize(source)?;
                    let (kind, name) = sluice_iam::entity_of_arn(source).ok_or_else(|| {
                        QueryError::invalid(format!(
                            "PolicySourceArn {source} is not the ARN of a user, group or role"
                        ))
                    })?;
                    docs = self.iam.documents_of(kind, &name).await?.1;
                } else {
                    self.authorize(all)?;
                    if p.list("PolicyInputList").is_empty() {
                        return Err(QueryError::missing("PolicyInputList"));
                    }
                }
                docs.extend(p.list("PolicyInputList"));
                let policies = docs
                    .iter()
                    .map(|d| sluice_iam::parse_identity_policy(d))
                    .collect::<Result<Vec<_>, _>>()?;
                let actions = p.list("ActionNames");
                if actions.is_empty() {
                    return Err(QueryError::missing("ActionNames"));
                }
                let mut resources = p.list("ResourceArns");
                if resources.is_empty() {
                    resources.push("*".into());
                }
                let context = simulation_context(p)?;
                let mut results = Vec::new();
                for a in &actions {
                    for r in &resources {
                        let d = sluice_policy::decide_in(&policies, a, r, &context);
                        results.push((a.clone(), r.clone(), d));
                    }
                }
                Ok(Some(self.page("EvaluationResults", &results, |(a, r, d)| {
                    let decision = match d {
                        sluice_policy::Decision::Allow => "allowed",
                        sluice_policy::Decision::ExplicitDeny => "explicitDeny",
                        sluice_policy::Decision::ImplicitDeny => "implicitDeny",
                    };
                    format!(
                        "<EvalActionName>{}</EvalActionName><EvalResourceName>{}</EvalResourceName><EvalDecision>{decision}</EvalDecision><MatchedStatements></MatchedStatements><MissingContextValues></MissingContextValues>",
                        esc(a),
                        esc(r)
                    )
                })?))
            }
            other => Err(QueryError::new(
                StatusCode::BAD_REQUEST,
                "InvalidAction",
                format!(
                    "Could not find operation {other} for version 2010-05-08 (or sluice does not support it)"
                ),
            )),
        }
    }
}

/// The condition keys a simulation is given (`ContextEntries`): only those, as IAM's
/// simulator uses only the values it is given.
fn simulation_context(p: &Params) -> Result<sluice_policy::Context, QueryError> {
    let mut ctx = sluice_policy::Context::new();
    for i in 1.. {
        let Some(key) = p.get(&format!("ContextEntries.member.{i}.ContextKeyName")) else {
            break;
        };
        let values = p.list(&format!("ContextEntries.member.{i}.ContextKeyValues"));
        if values.is_empty() {
            return Err(QueryError::invalid(format!(
                "the context entry {key} has no value"
            )));
        }
        ctx.set_all(key, values);
    }
    Ok(ctx)
}

fn valid_policy_arn(arn: &str) -> Result<(), QueryError> {
    let ok = arn.starts_with("arn:aws:iam::")
        && arn
            .split(':')
            .nth(5)
            .is_some_and(|r| r.starts_with("policy/"))
        && arn.len() <= 2048;
    if ok {
        Ok(())
    } else {
        Err(QueryError::invalid(format!("ARN {arn} is not valid.")))
    }
}

fn entity_fields(e: &Entity, full: bool) -> String {
    let noun = noun(e.kind);
    let mut out = format!(
        "<Path>{}</Path><{noun}Name>{}</{noun}Name><{noun}Id>{}</{noun}Id><Arn>{}</Arn><CreateDate>{}</CreateDate>",
        esc(&e.path),
        esc(&e.name),
        esc(&e.id),
        esc(&e.arn),
        sluice_iam::iso(e.created_ms)
    );
    if let Some(doc) = &e.assume_role_policy {
        out.push_str(&format!(
            "<AssumeRolePolicyDocument>{}</AssumeRolePolicyDocument>",
            esc(&encode_document(doc))
        ));
    }
    if let Some(d) = &e.description {
        out.push_str(&format!("<Description>{}</Description>", esc(d)));
    }
    if let Some(m) = e.max_session_duration {
        out.push_str(&format!("<MaxSessionDuration>{m}</MaxSessionDuration>"));
    }
    if full && !e.tags.is_empty() {
        out.push_str(&tags_xml(&e.tags));
    }
    out
}

fn entity_xml(e: &Entity, full: bool) -> String {
    let noun = noun(e.kind);
    format!("<{noun}>{}</{noun}>", entity_fields(e, full))
}

fn tags_xml(tags: &[(String, String)]) -> String {
    let mut out = String::from("<Tags>");
    for (k, v) in tags {
        out.push_str(&format!(
            "<member><Key>{}</Key><Value>{}</Value></member>",
            esc(k),
            esc(v)
        ));
    }
    out.push_str("</Tags>");
    out
}

fn policy_fields(p: &ManagedPolicy, full: bool) -> String {
    let mut out = format!(
        "<PolicyName>{}</PolicyName><PolicyId>{}</PolicyId><Arn>{}</Arn><Path>{}</Path><DefaultVersionId>{}</DefaultVersionId><AttachmentCount>{}</AttachmentCount><PermissionsBoundaryUsageCount>0</PermissionsBoundaryUsageCount><IsAttachable>true</IsAttachable><CreateDate>{}</CreateDate><UpdateDate>{}</UpdateDate>",
        esc(&p.name),
        esc(&p.id),
        esc(&p.arn),
        esc(&p.path),
        esc(&p.default_version),
        p.attachment_count,
        esc(&p.created),
        esc(&p.updated)
    );
    if full && let Some(d) = &p.description {
        out.push_str(&format!("<Description>{}</Description>", esc(d)));
    }
    if !p.tags.is_empty() {
        out.push_str(&tags_xml(&p.tags));
    }
    out
}

fn version_fields(v: &PolicyVersion, with_document: bool) -> String {
    let doc = if with_document {
        format!(
            "<Document>{}</Document>",
            esc(&encode_document(&v.document))
        )
    } else {
        String::new()
    };
    format!(
        "{doc}<VersionId>{}</VersionId><IsDefaultVersion>{}</IsDefaultVersion><CreateDate>{}</CreateDate>",
        esc(&v.version_id),
        v.is_default,
        esc(&v.created)
    )
}

/// A policy document as IAM answers it: percent-encoded (RFC 3986 unreserved characters
/// kept).
fn encode_document(doc: &str) -> String {
    crate::sigv4::uri_encode(doc, true)
}

/// XML text escaping.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_percent_encoded_as_iam_answers_them() {
        assert_eq!(
            encode_document(r#"{"Effect": "Allow"}"#),
            "%7B%22Effect%22%3A%20%22Allow%22%7D"
        );
    }

    #[test]
    fn kinds_from_action_names() {
        assert_eq!(kind_of("CreateRole"), Some(Kind::Role));
        assert_eq!(kind_of("ListAttachedGroupPolicies"), Some(Kind::Group));
        assert_eq!(kind_of("ListGroupsForUser"), Some(Kind::Group));
        assert_eq!(kind_of("CreateAccessKey"), Some(Kind::User));
        assert_eq!(kind_of("CreatePolicy"), None);
    }

    #[test]
    fn lists_of_members_and_tags() {
        let p = Params(
            [
                ("TagKeys.member.1", "a"),
                ("TagKeys.member.2", "b"),
                ("TagKeys.member.4", "skipped"),
                ("Tags.member.1.Key", "team"),
                ("Tags.member.1.Value", "ingest"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        assert_eq!(p.list("TagKeys"), vec!["a", "b"]);
        assert_eq!(
            p.tags().expect("tags"),
            vec![("team".to_owned(), "ingest".to_owned())]
        );
    }
}
