"""Cognito's Lambda triggers through boto3: a pool whose LambdaConfig names a function created
with Lambda's API, run at sign-up, confirmation, sign-in and token generation, with Cognito's
events and errors."""

import base64
import io
import json
import zipfile

import botocore
import pytest

from conftest import unique

PASSWORD = "Passw0rd-Trig!"

HANDLER = """
import time

def handler(event, context):
    src = event["triggerSource"]
    attrs = event["request"].get("userAttributes", {})
    name = attrs.get("name", "")
    if src.startswith("PreSignUp"):
        if "blocked" in name:
            raise Exception("no blocked users")
        if event["request"].get("validationData", {}).get("auto") == "yes":
            event["response"]["autoConfirmUser"] = True
            event["response"]["autoVerifyEmail"] = True
    elif src.startswith("PostConfirmation"):
        if name == "pcfail":
            raise Exception("post confirmation says no")
    elif src == "PreAuthentication_Authentication":
        if name == "Locked":
            raise Exception("locked out")
        if name == "Slow":
            time.sleep(8)
    elif src.startswith("TokenGeneration"):
        if event["version"] == "1":
            event["response"]["claimsOverrideDetails"] = {
                "claimsToAddOrOverride": {
                    "trigger": src,
                    "client": event["callerContext"]["clientId"],
                    "pool": event["userPoolId"],
                },
                "claimsToSuppress": ["name"],
                "groupOverrideDetails": {"groupsToOverride": ["from-trigger"]},
            }
        else:
            event["response"]["claimsAndScopeOverrideDetails"] = {
                "idTokenGeneration": {"claimsToAddOrOverride": {"trigger": src}},
                "accessTokenGeneration": {
                    "claimsToAddOrOverride": {"plan": "pro"},
                    "scopesToAdd": ["api/read"],
                },
            }
    return event
"""


def zipped(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def claims(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture(scope="module")
def trigger_fn(awslambda, lambda_role):
    name = unique("py-trigger")
    arn = awslambda.create_function(
        FunctionName=name, Runtime="python3.12", Role=lambda_role, Handler="app.handler",
        Code={"ZipFile": zipped({"app.py": HANDLER})}, Timeout=10,
    )["FunctionArn"]
    yield arn
    try:
        awslambda.delete_function(FunctionName=name)
    except botocore.exceptions.ClientError:
        pass


def all_triggers(arn):
    return {"PreSignUp": arn, "PostConfirmation": arn, "PreAuthentication": arn,
            "PostAuthentication": arn, "PreTokenGeneration": arn}


@pytest.fixture()
def trigger_pool(idp, trigger_fn):
    pool = idp.create_user_pool(PoolName=unique("triggers"),
                                LambdaConfig=all_triggers(trigger_fn))["UserPool"]
    client = idp.create_user_pool_client(
        UserPoolId=pool["Id"], ClientName="app",
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]["ClientId"]
    yield pool, client
    idp.delete_user_pool(UserPoolId=pool["Id"])


def sign_up(anonymous_idp, client, username, name, auto=False):
    return anonymous_idp.sign_up(
        ClientId=client, Username=username, Password=PASSWORD,
        UserAttributes=[{"Name": "name", "Value": name},
                        {"Name": "email", "Value": f"{username}@example.com"}],
        ValidationData=[{"Name": "auto", "Value": "yes" if auto else "no"}])


def sign_in(anonymous_idp, client, username):
    return anonymous_idp.initiate_auth(
        ClientId=client, AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": username, "PASSWORD": PASSWORD})


def test_triggers_shape_sign_up_sign_in_and_tokens(idp, anonymous_idp, trigger_pool, trigger_fn):
    pool, client = trigger_pool
    pid = pool["Id"]
    assert pool["LambdaConfig"]["PreSignUp"] == trigger_fn

    # PreSignUp: auto-confirmed and verified by the function; or refused by it.
    out = sign_up(anonymous_idp, client, "ann", "Ann", auto=True)
    assert out["UserConfirmed"] is True
    assert "CodeDeliveryDetails" not in out
    user = idp.admin_get_user(UserPoolId=pid, Username="ann")
    assert user["UserStatus"] == "CONFIRMED"
    assert {"Name": "email_verified", "Value": "true"} in user["UserAttributes"]
    with pytest.raises(anonymous_idp.exceptions.UserLambdaValidationException) as e:
        sign_up(anonymous_idp, client, "bob", "blocked bob")
    assert "PreSignUp failed with error no blocked users." in str(e.value)
    with pytest.raises(idp.exceptions.UserNotFoundException):
        idp.admin_get_user(UserPoolId=pid, Username="bob")

    # PreTokenGeneration (version 1): claims added and suppressed, groups overridden.
    tokens = sign_in(anonymous_idp, client, "ann")["AuthenticationResult"]
    id_claims = claims(tokens["IdToken"])
    assert id_claims["trigger"] == "TokenGeneration_Authentication"
    assert id_claims["client"] == client and id_claims["pool"] == pid
    assert "name" not in id_claims
    assert id_claims["cognito:groups"] == ["from-trigger"]
    assert claims(tokens["AccessToken"])["cognito:groups"] == ["from-trigger"]
    refreshed = anonymous_idp.initiate_auth(
        ClientId=client, AuthFlow="REFRESH_TOKEN_AUTH",
        AuthParameters={"REFRESH_TOKEN": tokens["RefreshToken"]})["AuthenticationResult"]
    assert claims(refreshed["IdToken"])["trigger"] == "TokenGeneration_RefreshTokens"

    # PostConfirmation runs after the confirmation is stored; its error is the answer.
    sign_up(anonymous_idp, client, "carl", "pcfail")
    with pytest.raises(idp.exceptions.UserLambdaValidationException) as e:
        idp.admin_confirm_sign_up(UserPoolId=pid, Username="carl")
    assert "PostConfirmation failed with error post confirmation says no." in str(e.value)

    # PreAuthentication refuses a sign-in.
    idp.admin_create_user(UserPoolId=pid, Username="dora", MessageAction="SUPPRESS",
                          UserAttributes=[{"Name": "name", "Value": "Locked"}])
    idp.admin_set_user_password(UserPoolId=pid, Username="dora", Password=PASSWORD,
                                Permanent=True)
    with pytest.raises(anonymous_idp.exceptions.UserLambdaValidationException) as e:
        sign_in(anonymous_idp, client, "dora")
    assert "PreAuthentication failed with error locked out." in str(e.value)

    # PreTokenGeneration version 2: access token claims and scopes.
    idp.update_user_pool(UserPoolId=pid, LambdaConfig={
        "PreTokenGenerationConfig": {"LambdaVersion": "V2_0", "LambdaArn": trigger_fn}})
    tokens = sign_in(anonymous_idp, client, "ann")["AuthenticationResult"]
    access = claims(tokens["AccessToken"])
    assert access["plan"] == "pro"
    assert access["scope"].split(" ") == ["aws.cognito.signin.user.admin", "api/read"]
    assert claims(tokens["IdToken"])["trigger"] == "TokenGeneration_Authentication"


def test_a_slow_trigger_times_out(idp, anonymous_idp, trigger_pool):
    pool, client = trigger_pool
    pid = pool["Id"]
    idp.admin_create_user(UserPoolId=pid, Username="slow", MessageAction="SUPPRESS",
                          UserAttributes=[{"Name": "name", "Value": "Slow"}])
    idp.admin_set_user_password(UserPoolId=pid, Username="slow", Password=PASSWORD,
                                Permanent=True)
    with pytest.raises(anonymous_idp.exceptions.UserLambdaValidationException) as e:
        sign_in(anonymous_idp, client, "slow")
    assert "timed out" in str(e.value)


def test_trigger_configuration_errors(idp, anonymous_idp, trigger_fn):
    with pytest.raises(idp.exceptions.InvalidParameterException):
        idp.create_user_pool(PoolName=unique("triggers"), LambdaConfig={
            "CustomSMSSender": {"LambdaVersion": "V1_0", "LambdaArn": trigger_fn}})
    missing = trigger_fn.rsplit(":", 1)[0] + ":" + unique("no-such-function")
    pool = idp.create_user_pool(PoolName=unique("triggers"),
                                LambdaConfig={"PreSignUp": missing})["UserPool"]["Id"]
    try:
        client = idp.create_user_pool_client(
            UserPoolId=pool, ClientName="app")["UserPoolClient"]["ClientId"]
        with pytest.raises(anonymous_idp.exceptions.UnexpectedLambdaException):
            anonymous_idp.sign_up(ClientId=client, Username="eve", Password=PASSWORD)
    finally:
        idp.delete_user_pool(UserPoolId=pool)


CUSTOM_HANDLER = """
def handler(event, context):
    src = event["triggerSource"]
    req, resp = event["request"], event["response"]
    if src == "DefineAuthChallenge_Authentication":
        history = req["session"]
        if history and history[-1]["challengeResult"]:
            resp["issueTokens"] = True
        elif len(history) >= 3:
            resp["failAuthentication"] = True
        else:
            resp["challengeName"] = "CUSTOM_CHALLENGE"
    elif src == "CreateAuthChallenge_Authentication":
        resp["publicChallengeParameters"] = {"question": "2+2?", "round": str(len(req["session"]))}
        resp["privateChallengeParameters"] = {"answer": "4"}
        resp["challengeMetadata"] = "ARITHMETIC"
    elif src == "VerifyAuthChallengeResponse_Authentication":
        resp["answerCorrect"] = req["challengeAnswer"] == req["privateChallengeParameters"]["answer"]
    return event
"""


def test_custom_auth_with_the_challenge_triggers(idp, anonymous_idp, awslambda, lambda_role):
    name = unique("py-custom-auth")
    arn = awslambda.create_function(
        FunctionName=name, Runtime="python3.12", Role=lambda_role, Handler="app.handler",
        Code={"ZipFile": zipped({"app.py": CUSTOM_HANDLER})}, Timeout=10,
    )["FunctionArn"]
    pool = idp.create_user_pool(PoolName=unique("custom-auth"), LambdaConfig={
        "DefineAuthChallenge": arn, "CreateAuthChallenge": arn,
        "VerifyAuthChallengeResponse": arn})["UserPool"]["Id"]
    try:
        client = idp.create_user_pool_client(
            UserPoolId=pool, ClientName="app",
            ExplicitAuthFlows=["ALLOW_CUSTOM_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        )["UserPoolClient"]["ClientId"]
        idp.admin_create_user(UserPoolId=pool, Username="quinn", MessageAction="SUPPRESS")
        idp.admin_set_user_password(UserPoolId=pool, Username="quinn", Password=PASSWORD,
                                    Permanent=True)

        def start():
            return anonymous_idp.initiate_auth(ClientId=client, AuthFlow="CUSTOM_AUTH",
                                               AuthParameters={"USERNAME": "quinn"})

        def answer(session, text):
            return anonymous_idp.respond_to_auth_challenge(
                ClientId=client, ChallengeName="CUSTOM_CHALLENGE", Session=session,
                ChallengeResponses={"USERNAME": "quinn", "ANSWER": text})

        out = start()
        assert out["ChallengeName"] == "CUSTOM_CHALLENGE"
        assert out["ChallengeParameters"] == {"question": "2+2?", "round": "0",
                                              "USERNAME": "quinn"}
        wrong = answer(out["Session"], "5")
        assert wrong["ChallengeName"] == "CUSTOM_CHALLENGE"
        assert wrong["ChallengeParameters"]["round"] == "1"
        with pytest.raises(anonymous_idp.exceptions.NotAuthorizedException):
            answer(out["Session"], "4")  # a session answers once
        done = answer(wrong["Session"], "4")
        tokens = done["AuthenticationResult"]
        assert claims(tokens["IdToken"])["cognito:username"] == "quinn"

        # Three wrong answers: DefineAuthChallenge fails the sign-in.
        s = start()["Session"]
        for _ in range(2):
            s = answer(s, "nope")["Session"]
        with pytest.raises(anonymous_idp.exceptions.NotAuthorizedException):
            answer(s, "nope")

        # The same through the admin operations.
        out = idp.admin_initiate_auth(UserPoolId=pool, ClientId=client, AuthFlow="CUSTOM_AUTH",
                                      AuthParameters={"USERNAME": "quinn"})
        done = idp.admin_respond_to_auth_challenge(
            UserPoolId=pool, ClientId=client, ChallengeName="CUSTOM_CHALLENGE",
            Session=out["Session"], ChallengeResponses={"USERNAME": "quinn", "ANSWER": "4"})
        assert done["AuthenticationResult"]["AccessToken"]
    finally:
        idp.delete_user_pool(UserPoolId=pool)
        awslambda.delete_function(FunctionName=name)


def test_custom_auth_needs_its_triggers_and_the_flow(idp, anonymous_idp):
    pool = idp.create_user_pool(PoolName=unique("custom-auth"))["UserPool"]["Id"]
    try:
        client = idp.create_user_pool_client(
            UserPoolId=pool, ClientName="app",
            ExplicitAuthFlows=["ALLOW_CUSTOM_AUTH"])["UserPoolClient"]["ClientId"]
        no_custom = idp.create_user_pool_client(
            UserPoolId=pool, ClientName="app2",
            ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH"])["UserPoolClient"]["ClientId"]
        with pytest.raises(anonymous_idp.exceptions.InvalidParameterException) as e:
            anonymous_idp.initiate_auth(ClientId=client, AuthFlow="CUSTOM_AUTH",
                                        AuthParameters={"USERNAME": "x"})
        assert "not configured" in str(e.value)
        with pytest.raises(anonymous_idp.exceptions.InvalidParameterException):
            anonymous_idp.initiate_auth(ClientId=no_custom, AuthFlow="CUSTOM_AUTH",
                                        AuthParameters={"USERNAME": "x"})
    finally:
        idp.delete_user_pool(UserPoolId=pool)


MIGRATION_HANDLER = """
LEGACY = {"lee": ("Legacy-Passw0rd!", "lee@example.com"), "old": (None, "old@example.com")}

def handler(event, context):
    known = LEGACY.get(event["userName"])
    if known is None:
        raise Exception("unknown in the old system")
    password, email = known
    if event["triggerSource"] == "UserMigration_Authentication":
        if event["request"]["password"] != password:
            raise Exception("bad password")
        event["response"]["finalUserStatus"] = "CONFIRMED"
    event["response"]["userAttributes"] = {"email": email, "email_verified": "true",
                                           "name": event["userName"].title()}
    event["response"]["messageAction"] = "SUPPRESS"
    return event
"""


def test_user_migration_at_sign_in_and_forgot_password(idp, anonymous_idp, awslambda,
                                                      lambda_role):
    name = unique("py-migration")
    arn = awslambda.create_function(
        FunctionName=name, Runtime="python3.12", Role=lambda_role, Handler="app.handler",
        Code={"ZipFile": zipped({"app.py": MIGRATION_HANDLER})}, Timeout=10,
    )["FunctionArn"]
    pool = idp.create_user_pool(PoolName=unique("migration"),
                                LambdaConfig={"UserMigration": arn})["UserPool"]["Id"]
    try:
        client = idp.create_user_pool_client(
            UserPoolId=pool, ClientName="app",
            ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        )["UserPoolClient"]["ClientId"]

        def password_sign_in(user, password):
            return anonymous_idp.initiate_auth(
                ClientId=client, AuthFlow="USER_PASSWORD_AUTH",
                AuthParameters={"USERNAME": user, "PASSWORD": password})

        with pytest.raises(anonymous_idp.exceptions.UserLambdaValidationException) as e:
            password_sign_in("lee", "wrong-Passw0rd!")
        assert "UserMigration failed with error bad password." in str(e.value)
        with pytest.raises(idp.exceptions.UserNotFoundException):
            idp.admin_get_user(UserPoolId=pool, Username="lee")

        tokens = password_sign_in("lee", "Legacy-Passw0rd!")["AuthenticationResult"]
        assert claims(tokens["IdToken"])["email"] == "lee@example.com"
        user = idp.admin_get_user(UserPoolId=pool, Username="lee")
        assert user["UserStatus"] == "CONFIRMED"
        # Migrated once: the next sign-in is the pool's own.
        assert password_sign_in("lee", "Legacy-Passw0rd!")["AuthenticationResult"]

        sent = anonymous_idp.forgot_password(ClientId=client, Username="old")
        assert sent["CodeDeliveryDetails"]["DeliveryMedium"] == "EMAIL"
        assert idp.admin_get_user(UserPoolId=pool, Username="old")["UserStatus"] == \
            "RESET_REQUIRED"
    finally:
        idp.delete_user_pool(UserPoolId=pool)
        awslambda.delete_function(FunctionName=name)
