//! User pool domains, resource servers and identity providers: what the hosted UI and the
//! OAuth 2.0 endpoints (`crate::hosted`) serve under, the custom scopes they grant, and the
//! providers they federate with.

use serde::Deserialize;
use serde_json::json;
use sluice_identity::Identity;
use sluice_identity::federation::IdentityProvider;
use sluice_identity::oauth::{ResourceScope, ResourceServer};
use std::collections::BTreeMap;

use super::common::{OpResult, epoch, invalid, parse, required};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DomainRequest {
    domain: Option<String>,
    user_pool_id: Option<String>,
    custom_domain_config: Option<serde_json::Value>,
    managed_login_version: Option<i64>,
}

/// The hosted UI is served by the edge itself (`<edge>/<pool id>/…`), not by a
/// CloudFront distribution: the "CloudFront domain" Cognito answers is the edge's host.
fn served_at(identity: &Identity, pool_id: &str) -> String {
    let issuer = identity.issuer(pool_id);
    let host = issuer
        .split_once("://")
        .map_or(issuer.as_str(), |(_, rest)| rest);
    host.split('/').next().unwrap_or(host).to_owned()
}

/// sluice's hosted pages are the classic hosted UI's (version 1); managed login
/// (version 2, with its branding) is refused rather than accepted and not honoured.
fn check_version(v: Option<i64>) -> Result<i64, super::CognitoError> {
    match v.unwrap_or(1) {
        1 => Ok(1),
        2 => Err(invalid(
            "ManagedLoginVersion 2 (managed login with branding) is not supported by sluice; its hosted UI is version 1's",
        )),
        v => Err(invalid(&format!(
            "1 validation error detected: Value '{v}' at 'managedLoginVersion' failed to satisfy constraint: Member must have value between 1 and 2"
        ))),
    }
}

pub(super) async fn create_user_pool_domain(identity: &Identity, body: &[u8]) -> OpResult {
    let req: DomainRequest = parse(body)?;
    let domain = required(&req.domain, "domain")?;
    let pool = required(&req.user_pool_id, "userPoolId")?;
    if req.custom_domain_config.is_some() {
        return Err(invalid(
            "Custom domains are not supported by sluice: use a prefix domain; the hosted UI is served at the edge's address under the pool's path",
        ));
    }
    let version = check_version(req.managed_login_version)?;
    identity.create_domain(pool, domain).await?;
    Ok(json!({
        "CloudFrontDomain": served_at(identity, pool),
        "ManagedLoginVersion": version,
    }))
}

pub(super) async fn describe_user_pool_domain(
    identity: &Identity,
    body: &[u8],
    account_id: &str,
) -> OpResult {
    let req: DomainRequest = parse(body)?;
    let domain = required(&req.domain, "domain")?;
    // Cognito answers an empty description for a domain nobody has.
    let Some(d) = identity.describe_domain(domain).await? else {
        return Ok(json!({"DomainDescription": {}}));
    };
    Ok(json!({"DomainDescription": {
        "UserPoolId": d.pool_id,
        "AWSAccountId": account_id,
        "Domain": d.domain,
        "CloudFrontDistribution": served_at(identity, &d.pool_id),
        "Version": d.created_ms.to_string(),
        "Status": "ACTIVE",
        "ManagedLoginVersion": 1,
    }}))
}

pub(super) async fn update_user_pool_domain(identity: &Identity, body: &[u8]) -> OpResult {
    let req: DomainRequest = parse(body)?;
    let domain = required(&req.domain, "domain")?;
    let pool = required(&req.user_pool_id, "userPoolId")?;
    if req.custom_domain_config.is_some() {
        return Err(invalid(
            "Custom domains are not supported by sluice: use a prefix domain",
        ));
    }
    let version = check_version(req.managed_login_version)?;
    match identity.describe_domain(domain).await? {
        Some(d) if d.pool_id == pool => {}
        _ => return Err(invalid("No such domain or user pool exists.")),
    }
    Ok(json!({
        "CloudFrontDomain": served_at(identity, pool),
        "ManagedLoginVersion": version,
    }))
}

pub(super) async fn delete_user_pool_domain(identity: &Identity, body: &[u8]) -> OpResult {
    let req: DomainRequest = parse(body)?;
    identity
        .delete_domain(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.domain, "domain")?,
        )
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ResourceServerRequest {
    user_pool_id: Option<String>,
    identifier: Option<String>,
    name: Option<String>,
    #[serde(default)]
    scopes: Vec<ResourceScope>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

fn server_json(r: &ResourceServer) -> serde_json::Value {
    json!({
        "UserPoolId": r.pool_id,
        "Identifier": r.identifier,
        "Name": r.name,
        "Scopes": r.scopes,
    })
}

pub(super) async fn create_resource_server(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ResourceServerRequest = parse(body)?;
    let r = identity
        .create_resource_server(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.identifier, "identifier")?,
            required(&req.name, "name")?,
            req.scopes,
        )
        .await?;
    Ok(json!({"ResourceServer": server_json(&r)}))
}

pub(super) async fn describe_resource_server(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ResourceServerRequest = parse(body)?;
    let r = identity
        .describe_resource_server(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.identifier, "identifier")?,
        )
        .await?;
    Ok(json!({"ResourceServer": server_json(&r)}))
}

pub(super) async fn list_resource_servers(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ResourceServerRequest = parse(body)?;
    let max = req.max_results.ok_or_else(|| {
        invalid("1 validation error detected: Value null at 'maxResults' failed to satisfy constraint: Member must not be null")
    })?;
    let (servers, next) = identity
        .list_resource_servers(
            required(&req.user_pool_id, "userPoolId")?,
            max,
            req.next_token.as_deref(),
        )
        .await?;
    let mut out = json!({"ResourceServers": servers.iter().map(server_json).collect::<Vec<_>>()});
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    Ok(out)
}

pub(super) async fn update_resource_server(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ResourceServerRequest = parse(body)?;
    let r = identity
        .update_resource_server(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.identifier, "identifier")?,
            required(&req.name, "name")?,
            req.scopes,
        )
        .await?;
    Ok(json!({"ResourceServer": server_json(&r)}))
}

pub(super) async fn delete_resource_server(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ResourceServerRequest = parse(body)?;
    identity
        .delete_resource_server(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.identifier, "identifier")?,
        )
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProviderRequest {
    user_pool_id: Option<String>,
    provider_name: Option<String>,
    provider_type: Option<String>,
    provider_details: Option<BTreeMap<String, String>>,
    attribute_mapping: Option<BTreeMap<String, String>>,
    idp_identifiers: Option<Vec<String>>,
    idp_identifier: Option<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

fn provider_json(p: &IdentityProvider) -> serde_json::Value {
    json!({
        "UserPoolId": p.pool_id,
        "ProviderName": p.name,
        "ProviderType": p.kind,
        "ProviderDetails": p.details,
        "AttributeMapping": p.mapping,
        "IdpIdentifiers": p.identifiers,
        "LastModifiedDate": epoch(p.updated_ms),
        "CreationDate": epoch(p.created_ms),
    })
}

pub(super) async fn create_identity_provider(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ProviderRequest = parse(body)?;
    let p = identity
        .create_identity_provider(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.provider_name, "providerName")?,
            required(&req.provider_type, "providerType")?,
            req.provider_details.unwrap_or_default(),
            req.attribute_mapping.unwrap_or_default(),
            req.idp_identifiers.unwrap_or_default(),
        )
        .await?;
    Ok(json!({"IdentityProvider": provider_json(&p)}))
}

pub(super) async fn describe_identity_provider(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ProviderRequest = parse(body)?;
    let p = identity
        .describe_identity_provider(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.provider_name, "providerName")?,
        )
        .await?;
    Ok(json!({"IdentityProvider": provider_json(&p)}))
}

pub(super) async fn get_identity_provider_by_identifier(
    identity: &Identity,
    body: &[u8],
) -> OpResult {
    let req: ProviderRequest = parse(body)?;
    let p = identity
        .identity_provider_by_identifier(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.idp_identifier, "idpIdentifier")?,
        )
        .await?;
    Ok(json!({"IdentityProvider": provider_json(&p)}))
}

pub(super) async fn list_identity_providers(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ProviderRequest = parse(body)?;
    let (providers, next) = identity
        .list_identity_providers(
            required(&req.user_pool_id, "userPoolId")?,
            req.max_results.unwrap_or(60),
            req.next_token.as_deref(),
        )
        .await?;
    let list: Vec<_> = providers
        .iter()
        .map(|p| {
            json!({
                "ProviderName": p.name,
                "ProviderType": p.kind,
                "LastModifiedDate": epoch(p.updated_ms),
                "CreationDate": epoch(p.created_ms),
            })
        })
        .collect();
    let mut out = json!({"Providers": list});
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    Ok(out)
}

pub(super) async fn update_identity_provider(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ProviderRequest = parse(body)?;
    let p = identity
        .update_identity_provider(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.provider_name, "providerName")?,
            req.provider_details,
            req.attribute_mapping,
            req.idp_identifiers,
        )
        .await?;
    Ok(json!({"IdentityProvider": provider_json(&p)}))
}

pub(super) async fn delete_identity_provider(identity: &Identity, body: &[u8]) -> OpResult {
    let req: ProviderRequest = parse(body)?;
    identity
        .delete_identity_provider(
            required(&req.user_pool_id, "userPoolId")?,
            required(&req.provider_name, "providerName")?,
        )
        .await?;
    Ok(json!({}))
}
