//! Cognito user pools' JSON 1.1 protocol (`AWSCognitoIdentityProviderService.*`).
//!
//! Operations that AWS only accepts with IAM credentials (pool and client management and
//! every `Admin*` operation, plus ListUsers) are refused to [`Caller::Anonymous`] callers
//! with `MissingAuthenticationTokenException`; the others are public, as in Cognito.
//!
//! This module dispatches to `auth` (sign-in and self-service operations) and `admin`
//! (pools, clients, `Admin*`); both use `common` (errors, request fields, attribute and
//! time shapes), which uses neither.

use axum::http::StatusCode;
use axum::response::Response;
use sluice_identity::Identity;

use crate::json11::{json_error, json_ok};

mod admin;
mod auth;
mod common;
mod domains;

pub use common::{CognitoError, error_response};

pub const SERVICE: &str = "AWSCognitoIdentityProviderService";

/// How the request was authenticated at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Signed with a valid access key (SigV4).
    Signed,
    /// No (valid) signature.
    Anonymous,
}

/// Operations that need IAM credentials on AWS.
const SIGNED_ONLY: &[&str] = &[
    "CreateUserPool",
    "DescribeUserPool",
    "ListUserPools",
    "UpdateUserPool",
    "DeleteUserPool",
    "CreateUserPoolClient",
    "DescribeUserPoolClient",
    "ListUserPoolClients",
    "UpdateUserPoolClient",
    "DeleteUserPoolClient",
    "AdminCreateUser",
    "AdminSetUserPassword",
    "AdminGetUser",
    "AdminDeleteUser",
    "AdminDisableUser",
    "AdminEnableUser",
    "AdminUpdateUserAttributes",
    "AdminConfirmSignUp",
    "AdminUserGlobalSignOut",
    "AdminInitiateAuth",
    "AdminRespondToAuthChallenge",
    "ListUsers",
    "CreateGroup",
    "GetGroup",
    "ListGroups",
    "UpdateGroup",
    "DeleteGroup",
    "AdminAddUserToGroup",
    "AdminRemoveUserFromGroup",
    "AdminListGroupsForUser",
    "ListUsersInGroup",
    "AdminSetUserMFAPreference",
    "SetUserPoolMfaConfig",
    "GetUserPoolMfaConfig",
    "AddCustomAttributes",
    "AdminDeleteUserAttributes",
    "AdminResetUserPassword",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
    "CreateUserPoolDomain",
    "DescribeUserPoolDomain",
    "UpdateUserPoolDomain",
    "DeleteUserPoolDomain",
    "CreateResourceServer",
    "DescribeResourceServer",
    "ListResourceServers",
    "UpdateResourceServer",
    "DeleteResourceServer",
    "CreateIdentityProvider",
    "DescribeIdentityProvider",
    "UpdateIdentityProvider",
    "DeleteIdentityProvider",
    "ListIdentityProviders",
    "GetIdentityProviderByIdentifier",
];

/// Whether AWS authorizes `op` with IAM (and so sluice with the signing key's policy).
pub fn needs_iam(op: &str) -> bool {
    SIGNED_ONLY.contains(&op)
}

pub async fn handle(
    identity: &Identity,
    op: &str,
    body: &[u8],
    caller: Caller,
    account_id: &str,
    region: Option<&str>,
) -> Response {
    if caller == Caller::Anonymous && SIGNED_ONLY.contains(&op) {
        return json_error(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationTokenException",
            "Request is missing Authentication Token",
        );
    }
    // Pools are regional: a signed request sees the pools of the region it is signed for
    // (a pool id starts with its region).
    let region = region.filter(|_| caller == Caller::Signed);
    if let Some(r) = region
        && let Some(pool) = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("UserPoolId")?.as_str().map(str::to_owned))
        && pool.split_once('_').is_some_and(|(pr, _)| pr != r)
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "ResourceNotFoundException",
            &format!("User pool {pool} does not exist."),
        );
    }
    let result = match op {
        "InitiateAuth" => auth::initiate_auth(identity, body).await,
        "RespondToAuthChallenge" => auth::respond_to_auth_challenge(identity, body).await,
        "AdminInitiateAuth" => auth::admin_initiate_auth(identity, body).await,
        "AdminRespondToAuthChallenge" => {
            auth::admin_respond_to_auth_challenge(identity, body).await
        }
        "SignUp" => auth::sign_up(identity, body).await,
        "ConfirmSignUp" => auth::confirm_sign_up(identity, body).await,
        "ResendConfirmationCode" => auth::resend_confirmation_code(identity, body).await,
        "ForgotPassword" => auth::forgot_password(identity, body).await,
        "ConfirmForgotPassword" => auth::confirm_forgot_password(identity, body).await,
        "ChangePassword" => auth::change_password(identity, body).await,
        "GetUser" => auth::get_user(identity, body).await,
        "UpdateUserAttributes" => auth::update_user_attributes(identity, body).await,
        "GetUserAttributeVerificationCode" => {
            auth::get_user_attribute_verification_code(identity, body).await
        }
        "VerifyUserAttribute" => auth::verify_user_attribute(identity, body).await,
        "GlobalSignOut" => auth::global_sign_out(identity, body).await,
        "RevokeToken" => auth::revoke_token(identity, body).await,
        "CreateUserPool" => admin::create_user_pool(identity, body, account_id, region).await,
        "DescribeUserPool" => admin::describe_user_pool(identity, body, account_id).await,
        "ListUserPools" => admin::list_user_pools(identity, body, region).await,
        "UpdateUserPool" => admin::update_user_pool(identity, body).await,
        "DeleteUserPool" => admin::delete_user_pool(identity, body).await,
        "CreateUserPoolClient" => admin::create_user_pool_client(identity, body).await,
        "DescribeUserPoolClient" => admin::describe_user_pool_client(identity, body).await,
        "ListUserPoolClients" => admin::list_user_pool_clients(identity, body).await,
        "UpdateUserPoolClient" => admin::update_user_pool_client(identity, body).await,
        "DeleteUserPoolClient" => admin::delete_user_pool_client(identity, body).await,
        "AdminCreateUser" => admin::admin_create_user(identity, body).await,
        "AdminSetUserPassword" => admin::admin_set_user_password(identity, body).await,
        "AdminGetUser" => admin::admin_get_user(identity, body).await,
        "AdminDeleteUser" => admin::admin_delete_user(identity, body).await,
        "AdminDisableUser" => admin::admin_set_enabled(identity, body, false).await,
        "AdminEnableUser" => admin::admin_set_enabled(identity, body, true).await,
        "AdminUpdateUserAttributes" => admin::admin_update_user_attributes(identity, body).await,
        "AdminConfirmSignUp" => admin::admin_confirm_sign_up(identity, body).await,
        "AdminUserGlobalSignOut" => admin::admin_user_global_sign_out(identity, body).await,
        "ListUsers" => admin::list_users(identity, body).await,
        "CreateGroup" => admin::create_group(identity, body).await,
        "GetGroup" => admin::get_group(identity, body).await,
        "ListGroups" => admin::list_groups(identity, body).await,
        "UpdateGroup" => admin::update_group(identity, body).await,
        "DeleteGroup" => admin::delete_group(identity, body).await,
        "AdminAddUserToGroup" => admin::admin_add_user_to_group(identity, body).await,
        "AdminRemoveUserFromGroup" => admin::admin_remove_user_from_group(identity, body).await,
        "AdminListGroupsForUser" => admin::admin_list_groups_for_user(identity, body).await,
        "ListUsersInGroup" => admin::list_users_in_group(identity, body).await,
        "AssociateSoftwareToken" => auth::associate_software_token(identity, body).await,
        "VerifySoftwareToken" => auth::verify_software_token(identity, body).await,
        "SetUserMFAPreference" => auth::set_user_mfa_preference(identity, body).await,
        "AdminSetUserMFAPreference" => auth::admin_set_user_mfa_preference(identity, body).await,
        "SetUserPoolMfaConfig" => admin::set_user_pool_mfa_config(identity, body).await,
        "GetUserPoolMfaConfig" => admin::get_user_pool_mfa_config(identity, body).await,
        "AddCustomAttributes" => admin::add_custom_attributes(identity, body).await,
        "AdminDeleteUserAttributes" => admin::admin_delete_user_attributes(identity, body).await,
        "AdminResetUserPassword" => admin::admin_reset_user_password(identity, body).await,
        "DeleteUserAttributes" => auth::delete_user_attributes(identity, body).await,
        "DeleteUser" => auth::delete_user(identity, body).await,
        "TagResource" => admin::tag_resource(identity, body).await,
        "UntagResource" => admin::untag_resource(identity, body).await,
        "ListTagsForResource" => admin::list_tags_for_resource(identity, body).await,
        "CreateUserPoolDomain" => domains::create_user_pool_domain(identity, body).await,
        "DescribeUserPoolDomain" => {
            domains::describe_user_pool_domain(identity, body, account_id).await
        }
        "UpdateUserPoolDomain" => domains::update_user_pool_domain(identity, body).await,
        "DeleteUserPoolDomain" => domains::delete_user_pool_domain(identity, body).await,
        "CreateResourceServer" => domains::create_resource_server(identity, body).await,
        "DescribeResourceServer" => domains::describe_resource_server(identity, body).await,
        "ListResourceServers" => domains::list_resource_servers(identity, body).await,
        "UpdateResourceServer" => domains::update_resource_server(identity, body).await,
        "DeleteResourceServer" => domains::delete_resource_server(identity, body).await,
        "CreateIdentityProvider" => domains::create_identity_provider(identity, body).await,
        "DescribeIdentityProvider" => domains::describe_identity_provider(identity, body).await,
        "UpdateIdentityProvider" => domains::update_identity_provider(identity, body).await,
        "DeleteIdentityProvider" => domains::delete_identity_provider(identity, body).await,
        "ListIdentityProviders" => domains::list_identity_providers(identity, body).await,
        "GetIdentityProviderByIdentifier" => {
            domains::get_identity_provider_by_identifier(identity, body).await
        }
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                &format!("operation {op} is not supported by sluice's Cognito endpoint"),
            );
        }
    };
    match result {
        Ok(v) => json_ok(v),
        Err(e) => json_error(e.status, e.kind, &e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_operations_need_a_signature() {
        for (op, signed_only) in [
            ("AdminGetUser", true),
            ("ListUsers", true),
            ("SignUp", false),
        ] {
            assert_eq!(SIGNED_ONLY.contains(&op), signed_only, "{op}");
        }
    }
}
