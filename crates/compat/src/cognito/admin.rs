//! Operations that need IAM credentials: pools, app clients and `Admin*` user operations.

use serde::Deserialize;
use serde_json::json;
use sluice_identity::{
    Client, ClientSpec, Identity, NewUser, Pool, PoolSettings, PoolUpdate, UserRecord,
};

use super::common::{
    AttributeType, OpResult, add_mfa_fields, attribute_list, attribute_map, epoch, invalid, parse,
    required,
};

/// The region new pools are created in: the default pool's.
fn region(identity: &Identity) -> String {
    identity
        .default_pool()
        .ok()
        .flatten()
        .and_then(|p| p.pool_id.split_once('_').map(|(r, _)| r.to_owned()))
        .unwrap_or_else(|| "us-east-2".into())
}

/// A pool as DescribeUserPool answers it; its ARN carries the configured account id.
fn pool_json(p: &Pool, account_id: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(&p.settings).unwrap_or_else(|_| json!({}));
    // Not a field of Cognito's pool: GetUserPoolMfaConfig shows it.
    if let Some(o) = v.as_object_mut() {
        o.remove("SoftwareTokenMfaConfiguration");
        o.remove("SmsMfaConfiguration");
        o.remove("EmailMfaConfiguration");
        o.remove("Schema");
    }
    v["SchemaAttributes"] = json!(sluice_identity::schema::described(
        p.settings.schema.as_deref()
    ));
    let region = p.id.split_once('_').map_or("us-east-2", |(r, _)| r);
    v["Id"] = json!(p.id);
    v["Name"] = json!(p.name);
    v["Arn"] = json!(format!(
        "arn:aws:cognito-idp:{region}:{account_id}:userpool/{}",
        p.id
    ));
    v["CreationDate"] = epoch(p.created_ms);
    v["LastModifiedDate"] = epoch(p.updated_ms);
    v["EstimatedNumberOfUsers"] = json!(p.estimated_users);
    if v.get("LambdaConfig").is_none() {
        v["LambdaConfig"] = json!({});
    }
    v
}

fn client_json(c: &Client) -> serde_json::Value {
    let (access, access_unit) = c.validity("access");
    let (id, id_unit) = c.validity("id");
    let (refresh, refresh_unit) = c.validity("refresh");
    let mut v = json!({
        "UserPoolId": c.pool_id,
        "ClientName": c.name,
        "ClientId": c.id,
        "CreationDate": epoch(c.created_ms),
        "LastModifiedDate": epoch(c.updated_ms),
        "RefreshTokenValidity": refresh,
        "AccessTokenValidity": access,
        "IdTokenValidity": id,
        "TokenValidityUnits": {
            "AccessToken": access_unit,
            "IdToken": id_unit,
            "RefreshToken": refresh_unit,
        },
        "ExplicitAuthFlows": c.settings.explicit_auth_flows,
        "PreventUserExistenceErrors": c.prevent_user_existence_errors,
        "EnableTokenRevocation": c.settings.enable_token_revocation,
        "AuthSessionValidity": c.settings.auth_session_validity,
    });
    if let (Some(o), Ok(serde_json::Value::Object(fields))) =
        (v.as_object_mut(), serde_json::to_value(&c.settings.oauth))
    {
        o.extend(fields);
    }
    if let Some(s) = &c.secret {
        v["ClientSecret"] = json!(s);
    }
    if !c.settings.read_attributes.is_empty() {
        v["ReadAttributes"] = json!(c.settings.read_attributes);
    }
    if !c.settings.write_attributes.is_empty() {
        v["WriteAttributes"] = json!(c.settings.write_attributes);
    }
    v
}

fn user_json(u: &UserRecord, attributes_key: &str) -> serde_json::Value {
    json!({
        "Username": u.username,
        attributes_key: attribute_list(&u.sub, &u.attributes),
        "UserCreateDate": epoch(u.created_ms),
        "UserLastModifiedDate": epoch(u.updated_ms),
        "Enabled": u.enabled,
        "UserStatus": u.status,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreatePoolRequest {
    pool_name: Option<String>,
    #[serde(flatten)]
    settings: PoolSettings,
}

/// A pool is created in the region the request is signed for (`region`), else in the
/// default pool's.
pub(super) async fn create_user_pool(
    identity: &Identity,
    body: &[u8],
    account_id: &str,
    region: Option<&str>,
) -> OpResult {
    let req: CreatePoolRequest = parse(body)?;
    let name = required(&req.pool_name, "poolName")?;
    let home = match region {
        Some(r) => r.to_owned(),
        None => self::region(identity),
    };
    let pool = identity.create_pool(&home, name, req.settings).await?;
    Ok(json!({"UserPool": pool_json(&pool, account_id)}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PoolRequest {
    user_pool_id: Option<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
}

pub(super) async fn describe_user_pool(
    identity: &Identity,
    body: &[u8],
    account_id: &str,
) -> OpResult {
    let req: PoolRequest = parse(body)?;
    let pool = identity
        .describe_pool(required(&req.user_pool_id, "userPoolId")?)
        .await?;
    let mut v = pool_json(&pool, account_id);
    if let Some(d) = identity.pool_domain(&pool.id).await? {
        v["Domain"] = json!(d);
    }
    Ok(json!({"UserPool": v}))
}

/// The pools of the request's region (all of them for an unsigned caller, which has
/// none); a page may hold fewer than `MaxResults` pools.
pub(super) async fn list_user_pools(
    identity: &Identity,
    body: &[u8],
    region: Option<&str>,
) -> OpResult {
    let req: PoolRequest = parse(body)?;
    let max = req.max_results.ok_or_else(|| {
        invalid("1 validation error detected: Value null at 'maxResults' failed to satisfy constraint: Member must not be null")
    })?;
    let (pools, next) = identity.list_pools(max, req.next_token.as_deref()).await?;
    let list: Vec<_> = pools
        .iter()
        .filter(|p| region.is_none_or(|r| p.id.split_once('_').is_some_and(|(pr, _)| pr == r)))
        .map(|p| {
            json!({
                "Id": p.id,
                "Name": p.name,
                "LambdaConfig": {},
                "CreationDate": epoch(p.created_ms),
                "LastModifiedDate": epoch(p.updated_ms),
            })
        })
        .collect();
    let mut out = json!({"UserPools": list});
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdatePoolRequest {
    user_pool_id: Option<String>,
    #[serde(flatten)]
    update: PoolUpdate,
}

pub(super) async fn update_user_pool(identity: &Identity, body: &[u8]) -> OpResult {
    let req: UpdatePoolRequest = parse(body)?;
    identity
        .update_pool(required(&req.user_pool_id, "userPoolId")?, req.update)
        .await?;
    Ok(json!({}))
}

pub(super) async fn delete_user_pool(identity: &Identity, body: &[u8]) -> OpResult {
    let req: PoolRequest = parse(body)?;
    identity
        .delete_pool(required(&req.user_pool_id, "userPoolId")?)
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ClientRequest {
    user_pool_id: Option<String>,
    client_id: Option<String>,
    #[serde(flatten)]
    spec: ClientSpec,
}

pub(super) async fn create_user_pool_client(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ClientRequest = parse(body)?;
    required(&req.spec.client_name, "clientName")?;
    let c = identity
        .create_client(required(&req.user_pool_id, "userPoolId")?, req.spec)
        .await?;
    Ok(json!({"UserPoolClient": client_json(&c)}))
}

pub(super) async fn describe_user_pool_client(identity: &Identity, body: &[u8]) -> OpResult {
    let req: PoolRequest = parse(body)?;
    let c = identity
        .describe_client(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.client_id, "clientId")?,
        )
        .await?;
    Ok(json!({"UserPoolClient": client_json(&c)}))
}

pub(super) async fn list_user_pool_clients(identity: &Identity, body: &[u8]) -> OpResult {
    let req: PoolRequest = parse(body)?;
    let (clients, next) = identity
        .list_clients(
            required(&req.user_pool_id, "userPoolId")?,
            req.max_results.unwrap_or(60),
            req.next_token.as_deref(),
        )
        .await?;
    let list: Vec<_> = clients
        .iter()
        .map(|c| json!({"ClientId": c.id, "UserPoolId": c.pool_id, "ClientName": c.name}))
        .collect();
    let mut out = json!({"UserPoolClients": list});
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    Ok(out)
}

pub(super) async fn update_user_pool_client(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ClientRequest = parse(body)?;
    if req.spec.generate_secret {
        return Err(invalid(
            "GenerateSecret cannot be changed by UpdateUserPoolClient",
        ));
    }
    let c = identity
        .update_client(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.client_id, "clientId")?,
            req.spec,
        )
        .await?;
    Ok(json!({"UserPoolClient": client_json(&c)}))
}

pub(super) async fn delete_user_pool_client(identity: &Identity, body: &[u8]) -> OpResult {
    let req: PoolRequest = parse(body)?;
    identity
        .delete_client(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.client_id, "clientId")?,
        )
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AdminUserRequest {
    user_pool_id: Option<String>,
    username: Option<String>,
    temporary_password: Option<String>,
    password: Option<String>,
    #[serde(default)]
    permanent: bool,
    message_action: Option<String>,
    #[serde(default)]
    user_attributes: Vec<AttributeType>,
    #[serde(default)]
    validation_data: Vec<AttributeType>,
    #[serde(default)]
    client_metadata: std::collections::BTreeMap<String, String>,
}

pub(super) async fn admin_create_user(identity: &Identity, body: &[u8]) -> OpResult {
    let req: AdminUserRequest = parse(body)?;
    let (suppress, resend) = match req.message_action.as_deref() {
        None => (false, false),
        Some("SUPPRESS") => (true, false),
        Some("RESEND") => (false, true),
        Some(other) => {
            return Err(invalid(&format!(
                "1 validation error detected: Value '{other}' at 'messageAction' failed to satisfy constraint: Member must satisfy enum value set: [RESEND, SUPPRESS]"
            )));
        }
    };
    let rec = identity
        .admin_create_user_with(
            NewUser {
                pool_id: required(&req.user_pool_id, "userPoolId")?.to_owned(),
                username: required(&req.username, "username")?.to_owned(),
                attributes: attribute_map(req.user_attributes),
                password: req.temporary_password.filter(|p| !p.is_empty()),
                temporary: true,
                admin: true,
            },
            suppress,
            resend,
            sluice_identity::TriggerData {
                client_metadata: req.client_metadata,
                validation_data: attribute_map(req.validation_data),
            },
        )
        .await?;
    Ok(json!({"User": user_json(&rec, "Attributes")}))
}

pub(super) async fn admin_set_user_password(identity: &Identity, body: &[u8]) -> OpResult {
    let req: AdminUserRequest = parse(body)?;
    identity
        .admin_set_password(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
            required(&req.password, "password")?,
            req.permanent,
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn admin_get_user(identity: &Identity, body: &[u8]) -> OpResult {
    let req: PoolRequest = parse(body)?;
    let u = identity
        .admin_get_user(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
        )
        .await?;
    let mut v = user_json(&u, "UserAttributes");
    add_mfa_fields(&mut v, &u);
    Ok(v)
}

pub(super) async fn admin_delete_user(identity: &Identity, body: &[u8]) -> OpResult {
    let req: PoolRequest = parse(body)?;
    identity
        .admin_delete_user(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn admin_set_enabled(identity: &Identity, body: &[u8], enabled: bool) -> OpResult {
    let req: PoolRequest = parse(body)?;
    identity
        .admin_set_enabled(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
            enabled,
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn admin_update_user_attributes(identity: &Identity, body: &[u8]) -> OpResult {
    let req: AdminUserRequest = parse(body)?;
    identity
        .admin_update_attributes(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
            attribute_map(req.user_attributes),
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn admin_confirm_sign_up(identity: &Identity, body: &[u8]) -> OpResult {
    let req: PoolRequest = parse(body)?;
    identity
        .admin_confirm_sign_up(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn admin_user_global_sign_out(identity: &Identity, body: &[u8]) -> OpResult {
    let req: PoolRequest = parse(body)?;
    identity
        .admin_global_sign_out(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
        )
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListUsersRequest {
    user_pool_id: Option<String>,
    filter: Option<String>,
    limit: Option<i64>,
    pagination_token: Option<String>,
    attributes_to_get: Option<Vec<String>>,
}

pub(super) async fn list_users(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ListUsersRequest = parse(body)?;
    let page = identity
        .list_users(
            required(&req.user_pool_id, "userPoolId")?,
            req.filter.as_deref(),
            req.limit,
            req.pagination_token.as_deref(),
        )
        .await?;
    let users: Vec<_> = page
        .users
        .iter()
        .map(|u| {
            let mut v = user_json(u, "Attributes");
            if let Some(wanted) = &req.attributes_to_get
                && let Some(list) = v["Attributes"].as_array_mut()
            {
                list.retain(|a| {
                    a["Name"]
                        .as_str()
                        .is_some_and(|n| wanted.iter().any(|w| w == n))
                });
            }
            v
        })
        .collect();
    let mut out = json!({"Users": users});
    if let Some(t) = page.next_token {
        out["PaginationToken"] = json!(t);
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GroupRequest {
    user_pool_id: Option<String>,
    group_name: Option<String>,
    username: Option<String>,
    description: Option<String>,
    role_arn: Option<String>,
    precedence: Option<i64>,
    limit: Option<i64>,
    next_token: Option<String>,
}

impl GroupRequest {
    fn spec(&self) -> sluice_identity::groups::GroupSpec {
        sluice_identity::groups::GroupSpec {
            description: self.description.clone(),
            role_arn: self.role_arn.clone(),
            precedence: self.precedence,
        }
    }
}

fn group_json(g: &sluice_identity::groups::Group) -> serde_json::Value {
    let mut v = json!({
        "GroupName": g.name,
        "UserPoolId": g.pool_id,
        "CreationDate": epoch(g.created_ms),
        "LastModifiedDate": epoch(g.updated_ms),
    });
    if let Some(d) = &g.description {
        v["Description"] = json!(d);
    }
    if let Some(r) = &g.role_arn {
        v["RoleArn"] = json!(r);
    }
    if let Some(p) = g.precedence {
        v["Precedence"] = json!(p);
    }
    v
}

fn groups_page(
    (groups, next): (Vec<sluice_identity::groups::Group>, Option<String>),
) -> serde_json::Value {
    let mut v = json!({"Groups": groups.iter().map(group_json).collect::<Vec<_>>()});
    if let Some(t) = next {
        v["NextToken"] = json!(t);
    }
    v
}

pub(super) async fn create_group(identity: &Identity, body: &[u8]) -> OpResult {
    let req: GroupRequest = parse(body)?;
    let g = identity
        .create_group(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.group_name, "groupName")?,
            req.spec(),
        )
        .await?;
    Ok(json!({"Group": group_json(&g)}))
}

pub(super) async fn get_group(identity: &Identity, body: &[u8]) -> OpResult {
    let req: GroupRequest = parse(body)?;
    let g = identity
        .get_group(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.group_name, "groupName")?,
        )
        .await?;
    Ok(json!({"Group": group_json(&g)}))
}

pub(super) async fn update_group(identity: &Identity, body: &[u8]) -> OpResult {
    let req: GroupRequest = parse(body)?;
    let g = identity
        .update_group(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.group_name, "groupName")?,
            req.spec(),
        )
        .await?;
    Ok(json!({"Group": group_json(&g)}))
}

pub(super) async fn delete_group(identity: &Identity, body: &[u8]) -> OpResult {
    let req: GroupRequest = parse(body)?;
    identity
        .delete_group(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.group_name, "groupName")?,
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn list_groups(identity: &Identity, body: &[u8]) -> OpResult {
    let req: GroupRequest = parse(body)?;
    let page = identity
        .list_groups(
            required(&req.user_pool_id, "userPoolId")?,
            req.limit,
            req.next_token.as_deref(),
        )
        .await?;
    Ok(groups_page(page))
}

pub(super) async fn admin_add_user_to_group(identity: &Identity, body: &[u8]) -> OpResult {
    let req: GroupRequest = parse(body)?;
    identity
        .add_user_to_group(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
            required(&req.group_name, "groupName")?,
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn admin_remove_user_from_group(identity: &Identity, body: &[u8]) -> OpResult {
    let req: GroupRequest = parse(body)?;
    identity
        .remove_user_from_group(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
            required(&req.group_name, "groupName")?,
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn admin_list_groups_for_user(identity: &Identity, body: &[u8]) -> OpResult {
    let req: GroupRequest = parse(body)?;
    let page = identity
        .list_groups_for_user(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
            req.limit,
            req.next_token.as_deref(),
        )
        .await?;
    Ok(groups_page(page))
}

pub(super) async fn list_users_in_group(identity: &Identity, body: &[u8]) -> OpResult {
    let req: GroupRequest = parse(body)?;
    let (users, next) = identity
        .list_users_in_group(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.group_name, "groupName")?,
            req.limit,
            req.next_token.as_deref(),
        )
        .await?;
    let mut v =
        json!({"Users": users.iter().map(|u| user_json(u, "Attributes")).collect::<Vec<_>>()});
    if let Some(t) = next {
        v["NextToken"] = json!(t);
    }
    Ok(v)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MfaConfigRequest {
    user_pool_id: Option<String>,
    mfa_configuration: Option<String>,
    software_token_mfa_configuration: Option<sluice_identity::SoftwareTokenMfaConfiguration>,
    sms_mfa_configuration: Option<serde_json::Value>,
    email_mfa_configuration: Option<serde_json::Value>,
    web_authn_configuration: Option<serde_json::Value>,
}

fn mfa_config_json(c: &sluice_identity::mfa::PoolMfaConfig) -> serde_json::Value {
    let mut v = json!({
        "MfaConfiguration": c.mfa_configuration,
        "SoftwareTokenMfaConfiguration": {"Enabled": c.software_token_enabled},
    });
    if let Some(sms) = &c.sms {
        v["SmsMfaConfiguration"] = sms.clone();
    }
    if let Some(email) = &c.email {
        v["EmailMfaConfiguration"] = email.clone();
    }
    v
}

pub(super) async fn get_user_pool_mfa_config(identity: &Identity, body: &[u8]) -> OpResult {
    let req: MfaConfigRequest = parse(body)?;
    let c = identity
        .pool_mfa_config(required(&req.user_pool_id, "userPoolId")?)
        .await?;
    Ok(mfa_config_json(&c))
}

/// SetUserPoolMfaConfig. A WebAuthn configuration is refused (no passkeys yet); SMS and
/// email codes go to the outbox.
pub(super) async fn set_user_pool_mfa_config(identity: &Identity, body: &[u8]) -> OpResult {
    let req: MfaConfigRequest = parse(body)?;
    let pool = required(&req.user_pool_id, "userPoolId")?;
    if req
        .web_authn_configuration
        .as_ref()
        .is_some_and(|v| !v.is_null())
    {
        return Err(invalid(
            "WebAuthnConfiguration is not supported by sluice: passkeys are not offered",
        ));
    }
    let object = |v: &Option<serde_json::Value>, name: &str| match v {
        Some(v) if !v.is_object() => Err(invalid(&format!("{name} must be an object"))),
        v => Ok(v.clone()),
    };
    let c = identity
        .set_pool_mfa_config(
            pool,
            sluice_identity::mfa::PoolMfaChange {
                mfa_configuration: req.mfa_configuration.clone(),
                software_token_enabled: req.software_token_mfa_configuration.map(|c| c.enabled),
                sms: object(&req.sms_mfa_configuration, "SmsMfaConfiguration")?,
                email: object(&req.email_mfa_configuration, "EmailMfaConfiguration")?,
            },
        )
        .await?;
    Ok(mfa_config_json(&c))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AddCustomAttributesRequest {
    user_pool_id: Option<String>,
    #[serde(default)]
    custom_attributes: Vec<sluice_identity::schema::SchemaAttribute>,
}

pub(super) async fn add_custom_attributes(identity: &Identity, body: &[u8]) -> OpResult {
    let req: AddCustomAttributesRequest = parse(body)?;
    identity
        .add_custom_attributes(
            required(&req.user_pool_id, "userPoolId")?,
            req.custom_attributes,
        )
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UserAttributesRequest {
    user_pool_id: Option<String>,
    username: Option<String>,
    #[serde(default)]
    user_attribute_names: Vec<String>,
}

pub(super) async fn admin_delete_user_attributes(identity: &Identity, body: &[u8]) -> OpResult {
    let req: UserAttributesRequest = parse(body)?;
    identity
        .admin_delete_attributes(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
            req.user_attribute_names,
        )
        .await?;
    Ok(json!({}))
}

pub(super) async fn admin_reset_user_password(identity: &Identity, body: &[u8]) -> OpResult {
    let req: UserAttributesRequest = parse(body)?;
    identity
        .admin_reset_password(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.username, "username")?,
        )
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagsRequest {
    resource_arn: Option<String>,
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    tag_keys: Vec<String>,
}

/// The pool a `ResourceArn` names (`arn:aws:cognito-idp:<region>:<account>:userpool/<id>`).
fn pool_of_arn(arn: &str) -> Result<&str, super::common::CognitoError> {
    arn.strip_prefix("arn:aws:cognito-idp:")
        .and_then(|rest| rest.split_once(":userpool/"))
        .map(|(_, id)| id)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| invalid(&format!("Invalid ARN {arn}: not a user pool ARN")))
}

pub(super) async fn tag_resource(identity: &Identity, body: &[u8]) -> OpResult {
    let req: TagsRequest = parse(body)?;
    let pool = pool_of_arn(required(&req.resource_arn, "resourceArn")?)?;
    identity.tag_pool(pool, req.tags, Vec::new()).await?;
    Ok(json!({}))
}

pub(super) async fn untag_resource(identity: &Identity, body: &[u8]) -> OpResult {
    let req: TagsRequest = parse(body)?;
    let pool = pool_of_arn(required(&req.resource_arn, "resourceArn")?)?;
    identity
        .tag_pool(pool, Default::default(), req.tag_keys)
        .await?;
    Ok(json!({}))
}

pub(super) async fn list_tags_for_resource(identity: &Identity, body: &[u8]) -> OpResult {
    let req: TagsRequest = parse(body)?;
    let pool = pool_of_arn(required(&req.resource_arn, "resourceArn")?)?;
    let p = identity.describe_pool(pool).await?;
    Ok(json!({"Tags": p.settings.user_pool_tags}))
}
