"""Cognito user pools through boto3's cognito-idp client, against sluice's default pool."""

import base64
import json
import os
import urllib.error
import urllib.request

import botocore.exceptions
import pytest

from conftest import error_code, unique


@pytest.fixture(scope="module")
def pool():
    return os.environ["SLUICE_TEST_POOL_ID"]


@pytest.fixture(scope="module")
def client_id():
    return os.environ["SLUICE_TEST_CLIENT_ID"]


@pytest.fixture(scope="module")
def user():
    return os.environ["SLUICE_TEST_USER_EMAIL"], os.environ["SLUICE_TEST_USER_PASSWORD"]


def claims(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def password_auth(idp, client_id, username, password):
    return idp.initiate_auth(
        AuthFlow="USER_PASSWORD_AUTH",
        ClientId=client_id,
        AuthParameters={"USERNAME": username, "PASSWORD": password},
    )


def test_user_password_auth_and_refresh(anonymous_idp, edge, pool, client_id, user):
    email, password = user
    # The seed's A4: an unsigned InitiateAuth.
    out = password_auth(anonymous_idp, client_id, email, password)
    assert "ChallengeName" not in out
    tokens = out["AuthenticationResult"]
    assert tokens["TokenType"] == "Bearer"
    assert tokens["ExpiresIn"] == 3600
    for field in ("IdToken", "AccessToken", "RefreshToken"):
        assert tokens[field]

    id_claims = claims(tokens["IdToken"])
    assert id_claims["iss"] == f"{edge}/{pool}"
    assert id_claims["aud"] == client_id
    assert id_claims["token_use"] == "id"
    assert id_claims["email"] == email
    access_claims = claims(tokens["AccessToken"])
    assert access_claims["client_id"] == client_id
    assert access_claims["token_use"] == "access"
    assert access_claims["sub"] == id_claims["sub"]

    refreshed = anonymous_idp.initiate_auth(
        AuthFlow="REFRESH_TOKEN_AUTH",
        ClientId=client_id,
        AuthParameters={"REFRESH_TOKEN": tokens["RefreshToken"]},
    )["AuthenticationResult"]
    assert refreshed["IdToken"] and refreshed["AccessToken"]
    assert "RefreshToken" not in refreshed
    assert claims(refreshed["IdToken"])["sub"] == id_claims["sub"]

    me = anonymous_idp.get_user(AccessToken=refreshed["AccessToken"])
    attributes = {a["Name"]: a["Value"] for a in me["UserAttributes"]}
    assert attributes["email"] == email and attributes["sub"] == id_claims["sub"]


def test_the_id_token_opens_the_upload_api(anonymous_idp, api, client_id, user):
    token = password_auth(anonymous_idp, client_id, *user)["AuthenticationResult"]["IdToken"]
    body = json.dumps({"filename": f"{unique('py')}.txt", "content": "from boto3"}).encode()
    req = urllib.request.Request(
        f"{api}/uploads",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as resp:
        out = json.loads(resp.read())
    assert out["message"] == "Uploaded and queued for processing"
    assert out["s3"]["key"].startswith("uploads/")
    # Anything but a token of the pool is refused before the body is read.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(
            urllib.request.Request(
                f"{api}/uploads",
                data=body,
                method="POST",
                headers={"Authorization": "Bearer not-a-token", "Content-Type": "application/json"},
            )
        )
    assert e.value.code == 401


def test_errors_are_cognito_shaped(anonymous_idp, idp, pool, client_id, user):
    email, _ = user
    with pytest.raises(botocore.exceptions.ClientError) as e:
        password_auth(anonymous_idp, client_id, email, "Wrong-passw0rd")
    assert error_code(e) == "NotAuthorizedException"
    assert e.value.response["Error"]["Message"] == "Incorrect username or password."
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # Unknown users look exactly like wrong passwords.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        password_auth(anonymous_idp, client_id, f"{unique('nobody')}@example.com", "Wrong-passw0rd")
    assert error_code(e) == "NotAuthorizedException"
    assert e.value.response["Error"]["Message"] == "Incorrect username or password."

    with pytest.raises(botocore.exceptions.ClientError) as e:
        anonymous_idp.initiate_auth(
            AuthFlow="REFRESH_TOKEN_AUTH", ClientId=client_id, AuthParameters={"REFRESH_TOKEN": "not-a-token"}
        )
    assert error_code(e) == "NotAuthorizedException"

    with pytest.raises(botocore.exceptions.ClientError) as e:
        anonymous_idp.get_user(AccessToken="not-a-token")
    assert error_code(e) == "NotAuthorizedException"

    with pytest.raises(botocore.exceptions.ClientError) as e:
        password_auth(anonymous_idp, "no-such-client", email, "x")
    assert error_code(e) == "ResourceNotFoundException"

    # Admin operations need a signature.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        anonymous_idp.admin_get_user(UserPoolId=pool, Username=email)
    assert error_code(e) == "MissingAuthenticationTokenException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        idp.admin_get_user(UserPoolId=pool, Username=f"{unique('nobody')}@example.com")
    assert error_code(e) == "UserNotFoundException"


def test_admin_create_user_new_password_challenge(idp, anonymous_idp, pool, client_id):
    email = f"{unique('admin-made')}@example.com"
    created = idp.admin_create_user(
        UserPoolId=pool,
        Username=email,
        TemporaryPassword="Temp0rary-Passw0rd",
        MessageAction="SUPPRESS",
        UserAttributes=[{"Name": "email", "Value": email}, {"Name": "email_verified", "Value": "true"}],
    )["User"]
    assert created["UserStatus"] == "FORCE_CHANGE_PASSWORD"
    assert created["Enabled"] is True
    try:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            idp.admin_create_user(UserPoolId=pool, Username=email, MessageAction="SUPPRESS")
        assert error_code(e) == "UsernameExistsException"

        challenge = password_auth(anonymous_idp, client_id, email, "Temp0rary-Passw0rd")
        assert challenge["ChallengeName"] == "NEW_PASSWORD_REQUIRED"
        assert challenge["Session"]
        assert "AuthenticationResult" not in challenge

        with pytest.raises(botocore.exceptions.ClientError) as e:
            anonymous_idp.respond_to_auth_challenge(
                ClientId=client_id,
                ChallengeName="NEW_PASSWORD_REQUIRED",
                Session="not-the-session-that-was-issued",
                ChallengeResponses={"USERNAME": email, "NEW_PASSWORD": "Final-Passw0rd"},
            )
        assert error_code(e) in ("NotAuthorizedException", "CodeMismatchException")

        tokens = anonymous_idp.respond_to_auth_challenge(
            ClientId=client_id,
            ChallengeName="NEW_PASSWORD_REQUIRED",
            Session=challenge["Session"],
            ChallengeResponses={"USERNAME": email, "NEW_PASSWORD": "Final-Passw0rd"},
        )["AuthenticationResult"]
        assert claims(tokens["IdToken"])["email"] == email

        got = idp.admin_get_user(UserPoolId=pool, Username=email)
        assert got["UserStatus"] == "CONFIRMED"
        assert {a["Name"]: a["Value"] for a in got["UserAttributes"]}["email"] == email
        # The temporary password is gone; the new one signs in directly.
        with pytest.raises(botocore.exceptions.ClientError) as e:
            password_auth(anonymous_idp, client_id, email, "Temp0rary-Passw0rd")
        assert error_code(e) == "NotAuthorizedException"
        assert "AuthenticationResult" in password_auth(anonymous_idp, client_id, email, "Final-Passw0rd")

        # Disabled users cannot sign in.
        idp.admin_disable_user(UserPoolId=pool, Username=email)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            password_auth(anonymous_idp, client_id, email, "Final-Passw0rd")
        assert error_code(e) == "NotAuthorizedException"
        idp.admin_enable_user(UserPoolId=pool, Username=email)
    finally:
        idp.admin_delete_user(UserPoolId=pool, Username=email)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        idp.admin_get_user(UserPoolId=pool, Username=email)
    assert error_code(e) == "UserNotFoundException"


def test_describe_the_default_pool_and_client(idp, pool, client_id):
    described = idp.describe_user_pool(UserPoolId=pool)["UserPool"]
    assert described["Id"] == pool
    app = idp.describe_user_pool_client(UserPoolId=pool, ClientId=client_id)["UserPoolClient"]
    assert app["ClientId"] == client_id
    assert "ALLOW_USER_PASSWORD_AUTH" in app["ExplicitAuthFlows"]
    assert client_id in [c["ClientId"] for c in idp.list_user_pool_clients(UserPoolId=pool, MaxResults=60)["UserPoolClients"]]


def test_user_pools_are_regional(idp, edge, region):
    """A pool created by a request signed for a region has that region in its id and ARN,
    and is seen only from that region."""
    from conftest import client

    other = "us-west-2" if region != "us-west-2" else "eu-west-1"
    west = client("cognito-idp", edge, other)
    pool = west.create_user_pool(PoolName=unique("py-regional"))["UserPool"]
    try:
        assert pool["Id"].startswith(f"{other}_")
        assert pool["Arn"].startswith(f"arn:aws:cognito-idp:{other}:")
        assert west.describe_user_pool(UserPoolId=pool["Id"])["UserPool"]["Id"] == pool["Id"]
        with pytest.raises(botocore.exceptions.ClientError) as e:
            idp.describe_user_pool(UserPoolId=pool["Id"])
        assert error_code(e) == "ResourceNotFoundException"
        with pytest.raises(botocore.exceptions.ClientError) as e:
            idp.create_user_pool_client(UserPoolId=pool["Id"], ClientName="c")
        assert error_code(e) == "ResourceNotFoundException"
        home = [p["Id"] for p in idp.list_user_pools(MaxResults=60)["UserPools"]]
        assert pool["Id"] not in home and all(p.startswith(f"{region}_") for p in home)
        assert pool["Id"] in [p["Id"] for p in west.list_user_pools(MaxResults=60)["UserPools"]]
    finally:
        west.delete_user_pool(UserPoolId=pool["Id"])
