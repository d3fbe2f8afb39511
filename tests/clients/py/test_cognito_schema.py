"""A pool's attribute schema and the user operations around it, through boto3's cognito-idp
client, on pools of the tests' own: custom attributes (declared, added, typed, constrained,
immutable, developer-only), required attributes, deleting attributes, AdminResetUserPassword,
account recovery, DeleteUser and pool tags."""

import json
import base64

import pytest

from conftest import unique

PASSWORD = "Passw0rd-Schema!"


def claims(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture()
def schema_pool(idp):
    pool = idp.create_user_pool(
        PoolName=unique("schema"),
        Schema=[
            {"Name": "name", "AttributeDataType": "String", "Required": True, "Mutable": True},
            {"Name": "tenant", "AttributeDataType": "String", "Mutable": False,
             "StringAttributeConstraints": {"MinLength": "2", "MaxLength": "8"}},
            {"Name": "tier", "AttributeDataType": "Number",
             "NumberAttributeConstraints": {"MinValue": "1", "MaxValue": "3"}},
            {"Name": "notes", "AttributeDataType": "String", "DeveloperOnlyAttribute": True},
        ],
        AccountRecoverySetting={"RecoveryMechanisms": [{"Priority": 1, "Name": "admin_only"}]},
    )["UserPool"]
    client = idp.create_user_pool_client(
        UserPoolId=pool["Id"], ClientName="app",
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]["ClientId"]
    yield pool, client
    idp.delete_user_pool(UserPoolId=pool["Id"])


def attrs(pairs):
    return [{"Name": k, "Value": v} for k, v in pairs.items()]


def sign_in(anonymous_idp, client, name, password=PASSWORD):
    return anonymous_idp.initiate_auth(
        ClientId=client, AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": name, "PASSWORD": password})


def test_schema_is_described_and_enforced(idp, anonymous_idp, schema_pool):
    pool, client = schema_pool
    pid = pool["Id"]
    described = {a["Name"]: a for a in pool["SchemaAttributes"]}
    assert described["custom:tenant"]["Mutable"] is False
    assert described["custom:tenant"]["StringAttributeConstraints"]["MaxLength"] == "8"
    assert described["custom:tier"]["AttributeDataType"] == "Number"
    assert described["dev:custom:notes"]["DeveloperOnlyAttribute"] is True
    assert described["name"]["Required"] is True
    assert described["sub"]["Mutable"] is False
    assert idp.describe_user_pool(UserPoolId=pid)["UserPool"]["AccountRecoverySetting"] == {
        "RecoveryMechanisms": [{"Priority": 1, "Name": "admin_only"}]}

    # Required at creation.
    with pytest.raises(anonymous_idp.exceptions.InvalidParameterException) as e:
        anonymous_idp.sign_up(ClientId=client, Username="nameless", Password=PASSWORD)
    assert "name: The attribute is required" in str(e.value)
    # Types, constraints and undeclared names.
    for bad in ({"custom:tier": "7"}, {"custom:tier": "two"}, {"custom:tenant": "x"},
                {"custom:undeclared": "1"}, {"dev:custom:notes": "mine"}):
        with pytest.raises(anonymous_idp.exceptions.InvalidParameterException):
            anonymous_idp.sign_up(ClientId=client, Username=unique("u"), Password=PASSWORD,
                                  UserAttributes=attrs({"name": "N", **bad}))

    idp.admin_create_user(
        UserPoolId=pid, Username="carol", MessageAction="SUPPRESS",
        UserAttributes=attrs({"name": "Carol", "custom:tenant": "acme", "custom:tier": "2",
                              "dev:custom:notes": "vip", "email": "carol@example.com",
                              "email_verified": "true"}))
    idp.admin_set_user_password(UserPoolId=pid, Username="carol", Password=PASSWORD,
                                Permanent=True)
    tokens = sign_in(anonymous_idp, client, "carol")["AuthenticationResult"]
    id_claims = claims(tokens["IdToken"])
    assert id_claims["custom:tenant"] == "acme" and id_claims["custom:tier"] == "2"
    assert "dev:custom:notes" not in id_claims
    me = {a["Name"]: a["Value"] for a in
          anonymous_idp.get_user(AccessToken=tokens["AccessToken"])["UserAttributes"]}
    assert me["custom:tenant"] == "acme" and "dev:custom:notes" not in me
    admin_view = {a["Name"]: a["Value"] for a in
                  idp.admin_get_user(UserPoolId=pid, Username="carol")["UserAttributes"]}
    assert admin_view["dev:custom:notes"] == "vip"

    # Immutable, required and developer-only attributes on update.
    with pytest.raises(anonymous_idp.exceptions.InvalidParameterException) as e:
        anonymous_idp.update_user_attributes(
            AccessToken=tokens["AccessToken"], UserAttributes=attrs({"custom:tenant": "other"}))
    assert "immutable" in str(e.value)
    with pytest.raises(anonymous_idp.exceptions.InvalidParameterException):
        anonymous_idp.delete_user_attributes(
            AccessToken=tokens["AccessToken"], UserAttributeNames=["name"])
    anonymous_idp.update_user_attributes(
        AccessToken=tokens["AccessToken"], UserAttributes=attrs({"custom:tier": "3"}))
    idp.admin_update_user_attributes(UserPoolId=pid, Username="carol",
                                     UserAttributes=attrs({"dev:custom:notes": "gold"}))

    # Deleting attributes (the user's own, and an administrator's).
    anonymous_idp.delete_user_attributes(
        AccessToken=tokens["AccessToken"], UserAttributeNames=["custom:tier"])
    idp.admin_delete_user_attributes(UserPoolId=pid, Username="carol",
                                     UserAttributeNames=["dev:custom:notes", "email"])
    left = {a["Name"] for a in
            idp.admin_get_user(UserPoolId=pid, Username="carol")["UserAttributes"]}
    assert "custom:tier" not in left and "dev:custom:notes" not in left
    assert "email" not in left and "email_verified" not in left
    assert {"name", "custom:tenant", "sub"} <= left

    # Custom attributes added later.
    with pytest.raises(idp.exceptions.InvalidParameterException):
        idp.add_custom_attributes(UserPoolId=pid, CustomAttributes=[
            {"Name": "tenant", "AttributeDataType": "String"}])
    idp.add_custom_attributes(UserPoolId=pid, CustomAttributes=[
        {"Name": "plan", "AttributeDataType": "String"}])
    idp.admin_update_user_attributes(UserPoolId=pid, Username="carol",
                                     UserAttributes=attrs({"custom:plan": "pro"}))
    names = {a["Name"] for a in
             idp.describe_user_pool(UserPoolId=pid)["UserPool"]["SchemaAttributes"]}
    assert "custom:plan" in names


def test_admin_reset_recovery_and_delete_user(idp, anonymous_idp, schema_pool):
    pool, client = schema_pool
    pid = pool["Id"]
    idp.admin_create_user(
        UserPoolId=pid, Username="dave", MessageAction="SUPPRESS",
        UserAttributes=attrs({"name": "Dave", "email": "dave@example.com",
                              "email_verified": "true"}))
    idp.admin_set_user_password(UserPoolId=pid, Username="dave", Password=PASSWORD,
                                Permanent=True)
    sign_in(anonymous_idp, client, "dave")

    # admin_only recovery: users cannot start a reset themselves.
    with pytest.raises(anonymous_idp.exceptions.NotAuthorizedException):
        anonymous_idp.forgot_password(ClientId=client, Username="dave")

    idp.admin_reset_user_password(UserPoolId=pid, Username="dave")
    assert idp.admin_get_user(UserPoolId=pid, Username="dave")["UserStatus"] == "RESET_REQUIRED"
    with pytest.raises(anonymous_idp.exceptions.PasswordResetRequiredException):
        sign_in(anonymous_idp, client, "dave")
    idp.admin_set_user_password(UserPoolId=pid, Username="dave", Password=PASSWORD + "2",
                                Permanent=True)
    tokens = sign_in(anonymous_idp, client, "dave", PASSWORD + "2")["AuthenticationResult"]

    with pytest.raises(idp.exceptions.UserNotFoundException):
        idp.admin_reset_user_password(UserPoolId=pid, Username="nobody")

    anonymous_idp.delete_user(AccessToken=tokens["AccessToken"])
    with pytest.raises(idp.exceptions.UserNotFoundException):
        idp.admin_get_user(UserPoolId=pid, Username="dave")
    with pytest.raises(anonymous_idp.exceptions.UserNotFoundException):
        anonymous_idp.get_user(AccessToken=tokens["AccessToken"])


def test_pool_tags(idp, schema_pool):
    pool, _ = schema_pool
    arn = pool["Arn"]
    idp.tag_resource(ResourceArn=arn, Tags={"team": "data", "env": "test"})
    assert idp.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"team": "data", "env": "test"}
    idp.untag_resource(ResourceArn=arn, TagKeys=["env"])
    assert idp.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"team": "data"}
    assert idp.describe_user_pool(UserPoolId=pool["Id"])["UserPool"]["UserPoolTags"] == {
        "team": "data"}
    with pytest.raises(idp.exceptions.InvalidParameterException):
        idp.tag_resource(ResourceArn=arn, Tags={"aws:reserved": "x"})
    with pytest.raises(idp.exceptions.InvalidParameterException):
        idp.list_tags_for_resource(ResourceArn="arn:aws:s3:::some-bucket-of-ours")
