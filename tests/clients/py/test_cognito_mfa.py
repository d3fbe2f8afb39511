"""TOTP multi-factor authentication through boto3's cognito-idp client, on pools of the
tests' own: the pool's MFA configuration, enrolment with an access token and during sign-in
(MFA_SETUP), the SOFTWARE_TOKEN_MFA challenge, and the errors Cognito answers."""

import base64
import hashlib
import hmac
import struct
import time

import pytest

from conftest import error_code, unique

PASSWORD = "Passw0rd-MFA!"


def totp(secret, offset=0):
    """RFC 6238 with Cognito's parameters (SHA-1, 6 digits, 30 s), written here so that the
    check does not share code with the server."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    step = int(time.time()) // 30 + offset
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset_byte = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset_byte:offset_byte + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


def wrong(code):
    return f"{(int(code) + 1) % 1_000_000:06d}"


@pytest.fixture()
def mfa_pool(idp):
    pool = idp.create_user_pool(PoolName=unique("mfa"))["UserPool"]["Id"]
    client = idp.create_user_pool_client(
        UserPoolId=pool,
        ClientName="app",
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_ADMIN_USER_PASSWORD_AUTH",
                           "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]["ClientId"]
    yield pool, client
    idp.delete_user_pool(UserPoolId=pool)


def make_user(idp, pool, name):
    idp.admin_create_user(UserPoolId=pool, Username=name, MessageAction="SUPPRESS")
    idp.admin_set_user_password(UserPoolId=pool, Username=name, Password=PASSWORD, Permanent=True)


def sign_in(anonymous_idp, client, name):
    return anonymous_idp.initiate_auth(
        ClientId=client, AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": name, "PASSWORD": PASSWORD})


def test_pool_mfa_configuration(idp, mfa_pool):
    pool, _ = mfa_pool
    got = idp.get_user_pool_mfa_config(UserPoolId=pool)
    assert got["MfaConfiguration"] == "OFF"
    assert got["SoftwareTokenMfaConfiguration"] == {"Enabled": False}

    with pytest.raises(idp.exceptions.InvalidParameterException):
        idp.set_user_pool_mfa_config(
            UserPoolId=pool, MfaConfiguration="OFF",
            SoftwareTokenMfaConfiguration={"Enabled": True})
    with pytest.raises(idp.exceptions.InvalidParameterException):
        idp.set_user_pool_mfa_config(
            UserPoolId=pool, MfaConfiguration="ON",
            SoftwareTokenMfaConfiguration={"Enabled": False})
    with pytest.raises(idp.exceptions.ResourceNotFoundException):
        idp.get_user_pool_mfa_config(UserPoolId=pool[:-1] + "Z")

    set_ = idp.set_user_pool_mfa_config(
        UserPoolId=pool, MfaConfiguration="OPTIONAL",
        SoftwareTokenMfaConfiguration={"Enabled": True})
    assert set_["MfaConfiguration"] == "OPTIONAL"
    assert set_["SoftwareTokenMfaConfiguration"] == {"Enabled": True}
    assert idp.describe_user_pool(UserPoolId=pool)["UserPool"]["MfaConfiguration"] == "OPTIONAL"


def test_optional_mfa_enrolment_and_the_software_token_challenge(idp, anonymous_idp, mfa_pool):
    pool, client = mfa_pool
    idp.set_user_pool_mfa_config(
        UserPoolId=pool, MfaConfiguration="OPTIONAL",
        SoftwareTokenMfaConfiguration={"Enabled": True})
    make_user(idp, pool, "alice")

    tokens = sign_in(anonymous_idp, client, "alice")["AuthenticationResult"]
    access = tokens["AccessToken"]
    with pytest.raises(anonymous_idp.exceptions.InvalidParameterException) as e:
        anonymous_idp.set_user_mfa_preference(
            AccessToken=access,
            SoftwareTokenMfaSettings={"Enabled": True, "PreferredMfa": True})
    assert "delivery config" in str(e.value)

    secret = anonymous_idp.associate_software_token(AccessToken=access)["SecretCode"]
    assert len(secret) == 32
    with pytest.raises(anonymous_idp.exceptions.EnableSoftwareTokenMFAException):
        anonymous_idp.verify_software_token(AccessToken=access, UserCode=wrong(totp(secret)))
    verified = anonymous_idp.verify_software_token(
        AccessToken=access, UserCode=totp(secret), FriendlyDeviceName="phone")
    assert verified["Status"] == "SUCCESS"
    anonymous_idp.set_user_mfa_preference(
        AccessToken=access, SoftwareTokenMfaSettings={"Enabled": True, "PreferredMfa": True})

    me = anonymous_idp.get_user(AccessToken=access)
    assert me["UserMFASettingList"] == ["SOFTWARE_TOKEN_MFA"]
    assert me["PreferredMfaSetting"] == "SOFTWARE_TOKEN_MFA"
    admin_view = idp.admin_get_user(UserPoolId=pool, Username="alice")
    assert admin_view["UserMFASettingList"] == ["SOFTWARE_TOKEN_MFA"]

    out = sign_in(anonymous_idp, client, "alice")
    assert out["ChallengeName"] == "SOFTWARE_TOKEN_MFA"
    assert "AuthenticationResult" not in out
    assert out["ChallengeParameters"]["FRIENDLY_DEVICE_NAME"] == "phone"
    session = out["Session"]
    with pytest.raises(anonymous_idp.exceptions.CodeMismatchException):
        anonymous_idp.respond_to_auth_challenge(
            ClientId=client, ChallengeName="SOFTWARE_TOKEN_MFA", Session=session,
            ChallengeResponses={"USERNAME": "alice", "SOFTWARE_TOKEN_MFA_CODE": wrong(totp(secret, 1))})
    # The next step's code is accepted (one step of drift), once.
    next_code = totp(secret, 1)
    done = anonymous_idp.respond_to_auth_challenge(
        ClientId=client, ChallengeName="SOFTWARE_TOKEN_MFA", Session=session,
        ChallengeResponses={"USERNAME": "alice", "SOFTWARE_TOKEN_MFA_CODE": next_code})
    result = done["AuthenticationResult"]
    assert result["AccessToken"] and result["IdToken"] and result["RefreshToken"]

    # The same code does not open a second sign-in.
    again = sign_in(anonymous_idp, client, "alice")
    with pytest.raises(anonymous_idp.exceptions.CodeMismatchException):
        anonymous_idp.respond_to_auth_challenge(
            ClientId=client, ChallengeName="SOFTWARE_TOKEN_MFA", Session=again["Session"],
            ChallengeResponses={"USERNAME": "alice", "SOFTWARE_TOKEN_MFA_CODE": next_code})

    # An administrator turns it off; the password alone signs in again.
    idp.admin_set_user_mfa_preference(
        UserPoolId=pool, Username="alice", SoftwareTokenMfaSettings={"Enabled": False})
    assert "AuthenticationResult" in sign_in(anonymous_idp, client, "alice")
    assert "UserMFASettingList" not in idp.admin_get_user(UserPoolId=pool, Username="alice")
    with pytest.raises(idp.exceptions.InvalidParameterException):
        idp.admin_set_user_mfa_preference(
            UserPoolId=pool, Username="alice", SMSMfaSettings={"Enabled": True})
    with pytest.raises(idp.exceptions.UserNotFoundException):
        idp.admin_set_user_mfa_preference(
            UserPoolId=pool, Username="nobody", SoftwareTokenMfaSettings={"Enabled": False})


def test_required_mfa_sets_up_a_token_during_admin_sign_in(idp, mfa_pool):
    pool, client = mfa_pool
    idp.set_user_pool_mfa_config(
        UserPoolId=pool, MfaConfiguration="ON",
        SoftwareTokenMfaConfiguration={"Enabled": True})
    make_user(idp, pool, "bob")

    def admin_sign_in():
        return idp.admin_initiate_auth(
            UserPoolId=pool, ClientId=client, AuthFlow="ADMIN_USER_PASSWORD_AUTH",
            AuthParameters={"USERNAME": "bob", "PASSWORD": PASSWORD})

    out = admin_sign_in()
    assert out["ChallengeName"] == "MFA_SETUP"
    assert out["ChallengeParameters"]["MFAS_CAN_SETUP"] == '["SOFTWARE_TOKEN_MFA"]'
    with pytest.raises(idp.exceptions.InvalidParameterException):
        idp.admin_respond_to_auth_challenge(
            UserPoolId=pool, ClientId=client, ChallengeName="MFA_SETUP", Session=out["Session"],
            ChallengeResponses={"USERNAME": "bob"})

    associated = idp.associate_software_token(Session=out["Session"])
    secret, session = associated["SecretCode"], associated["Session"]
    verified = idp.verify_software_token(Session=session, UserCode=totp(secret))
    assert verified["Status"] == "SUCCESS"
    done = idp.admin_respond_to_auth_challenge(
        UserPoolId=pool, ClientId=client, ChallengeName="MFA_SETUP", Session=verified["Session"],
        ChallengeResponses={"USERNAME": "bob"})
    assert done["AuthenticationResult"]["AccessToken"]

    out = admin_sign_in()
    assert out["ChallengeName"] == "SOFTWARE_TOKEN_MFA"
    done = idp.admin_respond_to_auth_challenge(
        UserPoolId=pool, ClientId=client, ChallengeName="SOFTWARE_TOKEN_MFA",
        Session=out["Session"],
        ChallengeResponses={"USERNAME": "bob", "SOFTWARE_TOKEN_MFA_CODE": totp(secret, 1)})
    assert done["AuthenticationResult"]["IdToken"]

    # A session that was never handed out is refused in Cognito's shape.
    with pytest.raises(idp.exceptions.NotAuthorizedException) as e:
        idp.admin_respond_to_auth_challenge(
            UserPoolId=pool, ClientId=client, ChallengeName="SOFTWARE_TOKEN_MFA",
            Session="not-a-session-" + "x" * 40,
            ChallengeResponses={"USERNAME": "bob", "SOFTWARE_TOKEN_MFA_CODE": totp(secret, 1)})
    assert error_code(e) == "NotAuthorizedException"


def test_sms_and_email_factors_and_the_choice_between_them(idp, anonymous_idp, mfa_pool):
    pool, client = mfa_pool
    set_ = idp.set_user_pool_mfa_config(
        UserPoolId=pool, MfaConfiguration="OPTIONAL",
        SmsMfaConfiguration={"SmsAuthenticationMessage": "Your code is {####}",
                             "SmsConfiguration": {"SnsCallerArn":
                                                  "arn:aws:iam::000000000000:role/sns"}},
        EmailMfaConfiguration={"Message": "Your code is {####}", "Subject": "Your code"})
    assert set_["SmsMfaConfiguration"]["SmsAuthenticationMessage"] == "Your code is {####}"
    assert set_["EmailMfaConfiguration"]["Subject"] == "Your code"
    assert set_["SoftwareTokenMfaConfiguration"] == {"Enabled": False}

    idp.admin_create_user(UserPoolId=pool, Username="cara", MessageAction="SUPPRESS",
                          UserAttributes=[
                              {"Name": "phone_number", "Value": "+15550100123"},
                              {"Name": "phone_number_verified", "Value": "true"},
                              {"Name": "email", "Value": "cara@example.com"},
                              {"Name": "email_verified", "Value": "true"}])
    idp.admin_set_user_password(UserPoolId=pool, Username="cara", Password=PASSWORD,
                                Permanent=True)
    idp.admin_set_user_mfa_preference(UserPoolId=pool, Username="cara",
                                      SMSMfaSettings={"Enabled": True},
                                      EmailMfaSettings={"Enabled": True})
    user = idp.admin_get_user(UserPoolId=pool, Username="cara")
    assert user["UserMFASettingList"] == ["SMS_MFA", "EMAIL_OTP"]

    out = sign_in(anonymous_idp, client, "cara")
    assert out["ChallengeName"] == "SELECT_MFA_TYPE"
    assert out["ChallengeParameters"]["MFAS_CAN_CHOOSE"] == '["SMS_MFA","EMAIL_OTP"]'
    picked = anonymous_idp.respond_to_auth_challenge(
        ClientId=client, ChallengeName="SELECT_MFA_TYPE", Session=out["Session"],
        ChallengeResponses={"USERNAME": "cara", "ANSWER": "SMS_MFA"})
    assert picked["ChallengeName"] == "SMS_MFA"
    assert picked["ChallengeParameters"]["CODE_DELIVERY_DELIVERY_MEDIUM"] == "SMS"
    assert picked["ChallengeParameters"]["CODE_DELIVERY_DESTINATION"].endswith("0123")
    with pytest.raises(anonymous_idp.exceptions.CodeMismatchException):
        anonymous_idp.respond_to_auth_challenge(
            ClientId=client, ChallengeName="SMS_MFA", Session=picked["Session"],
            ChallengeResponses={"USERNAME": "cara", "SMS_MFA_CODE": "12345x"})

    idp.admin_set_user_mfa_preference(UserPoolId=pool, Username="cara",
                                      EmailMfaSettings={"Enabled": True, "PreferredMfa": True})
    out = sign_in(anonymous_idp, client, "cara")
    assert out["ChallengeName"] == "EMAIL_OTP"
    assert out["ChallengeParameters"]["CODE_DELIVERY_DESTINATION"] == "c***@e***"
