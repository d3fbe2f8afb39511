//! Cognito user-pool operations against the real binary: over plain HTTP (JSON 1.1), and
//! with independent clients — boto3 for the wire shapes and pycognito for USER_SRP_AUTH —
//! installed into a virtualenv under `$HOME/.cache/sluice/pyenv` on first use.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{DataDir, Server, access_key, bin, signed};
use serde_json::{Value, json};

#[test]
fn admin_operations_need_a_signature_and_default_pool_keeps_working() {
    let dir = DataDir::new("cognito-http");
    let server = Server::start(&dir.0);
    let info = server.info();
    let pool = info["poolId"].as_str().expect("poolId").to_owned();
    let client = info["clientId"].as_str().expect("clientId").to_owned();

    let (status, body) = server.cognito(
        "AdminGetUser",
        json!({"UserPoolId": pool, "Username": "x@example.com"}),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["__type"], "MissingAuthenticationTokenException");

    // The default pool, as before: users by email, sign-in by password.
    server.create_user("me@example.com");
    let tokens = server.sign_in("me@example.com", common::PASSWORD);
    let access = tokens["AuthenticationResult"]["AccessToken"]
        .as_str()
        .expect("AccessToken");
    let (status, me) = server.cognito("GetUser", json!({"AccessToken": access}));
    assert_eq!(status, 200, "{me}");
    assert!(
        me["UserAttributes"]
            .as_array()
            .expect("attributes")
            .iter()
            .any(|a| a["Name"] == "email" && a["Value"] == "me@example.com")
    );
    let (status, got) = signed(
        &server,
        "AdminGetUser",
        json!({"UserPoolId": pool, "Username": "ME@example.com"}),
    );
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["UserStatus"], "CONFIRMED");
    assert_eq!(got["Username"], me["Username"]);

    // Self-service sign-up with the code from the outbox table.
    let (status, up) = server.cognito(
        "SignUp",
        json!({"ClientId": client, "Username": "new@example.com", "Password": "Passw0rd!"}),
    );
    assert_eq!(status, 200, "{up}");
    assert_eq!(up["UserConfirmed"], false);
    assert_eq!(up["CodeDeliveryDetails"]["DeliveryMedium"], "EMAIL");
    let (status, err) = server.cognito(
        "InitiateAuth",
        json!({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": client,
               "AuthParameters": {"USERNAME": "new@example.com", "PASSWORD": "Passw0rd!"}}),
    );
    assert_eq!(status, 400);
    assert_eq!(err["__type"], "UserNotConfirmedException");
    let (status, err) = server.cognito(
        "ConfirmSignUp",
        json!({"ClientId": client, "Username": "new@example.com", "ConfirmationCode": "not-it"}),
    );
    assert_eq!(status, 400);
    assert_eq!(err["__type"], "CodeMismatchException", "{err}");
    // The operator reads the code with `sluice outbox`, and the user confirms with it.
    let outbox = server.cli(&["outbox", "--json"]);
    let message: Value = outbox
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|m| m["to"] == "new@example.com" && m["kind"] == "signup")
        .expect("a sign-up code in the outbox");
    let (status, confirmed) = server.cognito(
        "ConfirmSignUp",
        json!({"ClientId": client, "Username": "new@example.com",
               "ConfirmationCode": message["code"]}),
    );
    assert_eq!(status, 200, "{confirmed}");
    server.sign_in("new@example.com", "Passw0rd!");

    // An app client created while the server runs is accepted by the upload API's
    // authorizer without a restart.
    let (status, created) = signed(
        &server,
        "CreateUserPoolClient",
        json!({"UserPoolId": pool, "ClientName": "late",
               "ExplicitAuthFlows": ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]}),
    );
    assert_eq!(status, 200, "{created}");
    let late = created["UserPoolClient"]["ClientId"]
        .as_str()
        .expect("ClientId");
    let (status, auth) = server.cognito(
        "InitiateAuth",
        json!({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": late,
               "AuthParameters": {"USERNAME": "new@example.com", "PASSWORD": "Passw0rd!"}}),
    );
    assert_eq!(status, 200, "{auth}");
    let token = auth["AuthenticationResult"]["IdToken"]
        .as_str()
        .expect("IdToken");
    // The verifier reloads the pool's clients at most every two seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = server.upload(token, "late.txt", "x").status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 401);
        assert!(
            std::time::Instant::now() < deadline,
            "new client never accepted"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }

    let (status, _) = server.cognito("GlobalSignOut", json!({"AccessToken": access}));
    assert_eq!(status, 200);
    let (status, err) = server.cognito("GetUser", json!({"AccessToken": access}));
    assert_eq!(status, 400);
    assert_eq!(err["__type"], "NotAuthorizedException");
    assert_eq!(err["message"], "Access Token has been revoked");

    let (status, err) = server.cognito("AdminTeleportUser", json!({}));
    assert_eq!(status, 400);
    assert_eq!(err["__type"], "UnknownOperationException");
}

fn python() -> PathBuf {
    let home = std::env::var("HOME").expect("HOME is needed to find $HOME/.cache/sluice");
    let env = PathBuf::from(home).join(".cache/sluice/pyenv");
    let py = env.join("bin/python");
    let ready = |py: &PathBuf| {
        Command::new(py)
            .args(["-c", "import boto3, pycognito"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready(&py) {
        if !py.exists() {
            let out = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&env)
                .output()
                .expect("python3 is needed for the boto3/pycognito tests");
            assert!(
                out.status.success(),
                "cannot create a virtualenv at {}: {}",
                env.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = Command::new(env.join("bin/pip"))
            .args(["install", "-q", "boto3", "pycognito"])
            .output()
            .expect("run pip");
        assert!(
            out.status.success(),
            "cannot install boto3 and pycognito into {}: {}",
            env.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(ready(&py), "boto3 / pycognito still not importable");
    }
    py
}

const SCRIPT: &str = r#"
import base64, hashlib, hmac, json, os, subprocess, sys
import boto3, botocore
from botocore.config import Config
from pycognito.aws_srp import AWSSRP

edge, data_dir = os.environ["EDGE"], os.environ["DATA_DIR"]
kw = dict(endpoint_url=edge, region_name="us-east-2",
          aws_access_key_id=os.environ["KEY_ID"], aws_secret_access_key=os.environ["KEY_SECRET"])
idp = boto3.client("cognito-idp", **kw)
anon = boto3.client("cognito-idp", config=Config(signature_version=botocore.UNSIGNED), **kw)

def code(kind):
    # `sluice outbox` lists the newest message first, whatever the metadata engine.
    out = subprocess.run([os.environ["SLUICE"], "outbox", "--pool", pid, "--json", "--limit", "50",
                          "--data-dir", data_dir], cwd=data_dir, check=True,
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = json.loads(line)
        if m["kind"] == kind:
            return m["code"]
    raise AssertionError(f"no {kind} message in the outbox")

def fails(exc, fn, **args):
    try:
        fn(**args)
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == exc, f"{fn.__name__}: expected {exc}, got {got}: {e}"
        return e.response["Error"]["Message"]
    raise AssertionError(f"{fn.__name__} should fail with {exc}")

def secret_hash(username, client_id, secret):
    mac = hmac.new(secret.encode(), (username + client_id).encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()

# Pools and clients.
pool = idp.create_user_pool(
    PoolName="people",
    Policies={"PasswordPolicy": {"MinimumLength": 10, "RequireUppercase": True,
              "RequireLowercase": True, "RequireNumbers": True, "RequireSymbols": False}},
    AutoVerifiedAttributes=["email"],
    UsernameConfiguration={"CaseSensitive": False},
)["UserPool"]
pid = pool["Id"]
assert pid.startswith("us-east-2_") and pool["Policies"]["PasswordPolicy"]["MinimumLength"] == 10
assert idp.describe_user_pool(UserPoolId=pid)["UserPool"]["Name"] == "people"
ids = [p["Id"] for p in idp.list_user_pools(MaxResults=60)["UserPools"]]
assert pid in ids and len(ids) == 2, ids
fails("MissingAuthenticationTokenException", anon.describe_user_pool, UserPoolId=pid)
fails("ResourceNotFoundException", idp.describe_user_pool, UserPoolId="us-east-2_nothere00")

cl = idp.create_user_pool_client(
    UserPoolId=pid, ClientName="web", GenerateSecret=True,
    ExplicitAuthFlows=["ALLOW_USER_SRP_AUTH", "ALLOW_USER_PASSWORD_AUTH",
                       "ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    AccessTokenValidity=15, IdTokenValidity=15,
    TokenValidityUnits={"AccessToken": "minutes", "IdToken": "minutes", "RefreshToken": "days"},
    PreventUserExistenceErrors="ENABLED",
)["UserPoolClient"]
cid, secret = cl["ClientId"], cl["ClientSecret"]
d = idp.describe_user_pool_client(UserPoolId=pid, ClientId=cid)["UserPoolClient"]
assert d["AccessTokenValidity"] == 15 and d["TokenValidityUnits"]["AccessToken"] == "minutes", d
assert d["ClientSecret"] == secret
plain = idp.create_user_pool_client(UserPoolId=pid, ClientName="cli")["UserPoolClient"]["ClientId"]
assert {c["ClientId"] for c in idp.list_user_pool_clients(UserPoolId=pid)["UserPoolClients"]} == {cid, plain}
fails("InvalidParameterException", idp.initiate_auth, AuthFlow="USER_PASSWORD_AUTH", ClientId=plain,
      AuthParameters={"USERNAME": "x", "PASSWORD": "y"})

# Admin-created user: temporary password, new-password challenge.
u = idp.admin_create_user(UserPoolId=pid, Username="Alice", TemporaryPassword="Temp0rary-pw",
                          MessageAction="SUPPRESS",
                          UserAttributes=[{"Name": "email", "Value": "alice@example.com"},
                                          {"Name": "email_verified", "Value": "true"}])["User"]
assert u["UserStatus"] == "FORCE_CHANGE_PASSWORD" and u["Username"] == "Alice", u
fails("UsernameExistsException", idp.admin_create_user, UserPoolId=pid, Username="alice",
      MessageAction="SUPPRESS")
fails("NotAuthorizedException", idp.initiate_auth, AuthFlow="USER_PASSWORD_AUTH", ClientId=cid,
      AuthParameters={"USERNAME": "alice", "PASSWORD": "Temp0rary-pw"})
r = idp.admin_initiate_auth(UserPoolId=pid, ClientId=cid, AuthFlow="ADMIN_USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": "alice", "PASSWORD": "Temp0rary-pw",
                        "SECRET_HASH": secret_hash("alice", cid, secret)})
assert r["ChallengeName"] == "NEW_PASSWORD_REQUIRED", r
fails("InvalidPasswordException", idp.admin_respond_to_auth_challenge, UserPoolId=pid, ClientId=cid,
      ChallengeName="NEW_PASSWORD_REQUIRED", Session=r["Session"],
      ChallengeResponses={"USERNAME": "alice", "NEW_PASSWORD": "short",
                          "SECRET_HASH": secret_hash("alice", cid, secret)})
r = idp.initiate_auth(AuthFlow="USER_PASSWORD_AUTH", ClientId=cid,
        AuthParameters={"USERNAME": "alice", "PASSWORD": "Temp0rary-pw",
                        "SECRET_HASH": secret_hash("alice", cid, secret)})
t = idp.respond_to_auth_challenge(ClientId=cid, ChallengeName="NEW_PASSWORD_REQUIRED",
        Session=r["Session"],
        ChallengeResponses={"USERNAME": "alice", "NEW_PASSWORD": "Alice-Passw0rd",
                            "SECRET_HASH": secret_hash("alice", cid, secret)})["AuthenticationResult"]
assert idp.admin_get_user(UserPoolId=pid, Username="ALICE")["UserStatus"] == "CONFIRMED"

# USER_SRP_AUTH with pycognito, an independent implementation of Cognito's SRP.
srp = AWSSRP(username="alice", password="Alice-Passw0rd", pool_id=pid, client_id=cid,
             client_secret=secret, client=idp)
tokens = srp.authenticate_user()["AuthenticationResult"]
assert tokens["TokenType"] == "Bearer" and "RefreshToken" in tokens
bad = AWSSRP(username="alice", password="Wrong-Passw0rd", pool_id=pid, client_id=cid,
             client_secret=secret, client=idp)
try:
    bad.authenticate_user()
    raise AssertionError("SRP with a wrong password must fail")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "NotAuthorizedException", e

# Access-token operations and revocation.
me = idp.get_user(AccessToken=tokens["AccessToken"])
assert me["Username"] == "Alice"
idp.update_user_attributes(AccessToken=tokens["AccessToken"],
                           UserAttributes=[{"Name": "name", "Value": "Alice A."}])
idp.change_password(AccessToken=tokens["AccessToken"], PreviousPassword="Alice-Passw0rd",
                    ProposedPassword="Alice-Passw0rd2")
fails("NotAuthorizedException", idp.change_password, AccessToken=tokens["AccessToken"],
      PreviousPassword="nope-nope-1A", ProposedPassword="Alice-Passw0rd3")
idp.revoke_token(Token=tokens["RefreshToken"], ClientId=cid, ClientSecret=secret)
msg = fails("NotAuthorizedException", idp.get_user, AccessToken=tokens["AccessToken"])
assert msg == "Access Token has been revoked", msg
fails("NotAuthorizedException", idp.initiate_auth, AuthFlow="REFRESH_TOKEN_AUTH", ClientId=cid,
      AuthParameters={"REFRESH_TOKEN": tokens["RefreshToken"],
                      "SECRET_HASH": secret_hash("Alice", cid, secret)})

# Sign-up, confirmation and password reset by code.
idp.sign_up(ClientId=plain, Username="bob", Password="Bob-Passw0rd",
            UserAttributes=[{"Name": "email", "Value": "bob@example.com"}])
fails("UserNotConfirmedException", idp.initiate_auth, AuthFlow="USER_PASSWORD_AUTH", ClientId=cid,
      AuthParameters={"USERNAME": "bob", "PASSWORD": "Bob-Passw0rd",
                      "SECRET_HASH": secret_hash("bob", cid, secret)})
fails("CodeMismatchException", idp.confirm_sign_up, ClientId=plain, Username="bob",
      ConfirmationCode="000000" if code("signup") != "000000" else "111111")
idp.confirm_sign_up(ClientId=plain, Username="bob", ConfirmationCode=code("signup"))
attrs = {a["Name"]: a["Value"] for a in idp.admin_get_user(UserPoolId=pid, Username="bob")["UserAttributes"]}
assert attrs["email_verified"] == "true", attrs
delivery = idp.forgot_password(ClientId=plain, Username="bob")["CodeDeliveryDetails"]
assert delivery["DeliveryMedium"] == "EMAIL" and delivery["Destination"] == "b***@e***", delivery
idp.confirm_forgot_password(ClientId=plain, Username="bob", ConfirmationCode=code("reset"),
                            Password="Bob-Passw0rd2")
srp = AWSSRP(username="bob", password="Bob-Passw0rd2", pool_id=pid, client_id=plain, client=idp)
assert "IdToken" in srp.authenticate_user()["AuthenticationResult"]

# Listing, disabling, deleting.
found = idp.list_users(UserPoolId=pid, Filter='email ^= "bob"')["Users"]
assert [x["Username"] for x in found] == ["bob"], found
page = idp.list_users(UserPoolId=pid, Limit=1)
assert len(page["Users"]) == 1 and "PaginationToken" in page
rest = idp.list_users(UserPoolId=pid, Limit=1, PaginationToken=page["PaginationToken"])
assert rest["Users"][0]["Username"] != page["Users"][0]["Username"]
idp.admin_disable_user(UserPoolId=pid, Username="bob")
disabled = AWSSRP(username="bob", password="Bob-Passw0rd2", pool_id=pid, client_id=plain, client=idp)
try:
    disabled.authenticate_user()
    raise AssertionError("a disabled user must not sign in")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "NotAuthorizedException", e
    assert e.response["Error"]["Message"] == "User is disabled.", e
idp.admin_enable_user(UserPoolId=pid, Username="bob")
idp.admin_set_user_password(UserPoolId=pid, Username="bob", Password="Bob-Passw0rd3", Permanent=True)
idp.admin_delete_user(UserPoolId=pid, Username="bob")
fails("UserNotFoundException", idp.admin_get_user, UserPoolId=pid, Username="bob")

# Failed sign-ins lock the user out.
for _ in range(5):
    fails("NotAuthorizedException", idp.admin_initiate_auth, UserPoolId=pid, ClientId=cid,
          AuthFlow="ADMIN_NO_SRP_AUTH",
          AuthParameters={"USERNAME": "alice", "PASSWORD": "Wrong-Passw0rd",
                          "SECRET_HASH": secret_hash("alice", cid, secret)})
msg = fails("NotAuthorizedException", idp.admin_initiate_auth, UserPoolId=pid, ClientId=cid,
            AuthFlow="ADMIN_NO_SRP_AUTH",
            AuthParameters={"USERNAME": "alice", "PASSWORD": "Alice-Passw0rd2",
                            "SECRET_HASH": secret_hash("alice", cid, secret)})
assert msg == "Password attempts exceeded", msg

idp.delete_user_pool_client(UserPoolId=pid, ClientId=plain)
idp.delete_user_pool(UserPoolId=pid)
fails("ResourceNotFoundException", idp.describe_user_pool, UserPoolId=pid)
print("ok")
"#;

#[test]
fn boto3_and_pycognito_drive_pools_users_and_srp() {
    let py = python();
    let dir = DataDir::new("cognito-py");
    let server = Server::start(&dir.0);
    let script = dir.0.join("cognito_test.py");
    std::fs::write(&script, SCRIPT).expect("write script");
    let out = Command::new(py)
        .arg(&script)
        .env("EDGE", &server.edge)
        .env("KEY_ID", access_key(&server).0)
        .env("KEY_SECRET", access_key(&server).1)
        .env("DATA_DIR", &dir.0)
        .env("SLUICE", bin())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python client test failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// The claims of a JWT's payload (no verification: the server's own token).
fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64"),
    )
    .expect("json")
}

/// Groups as Cognito has them: created, listed in pages, updated, members added and
/// removed, errors in Cognito's types; and `cognito:groups` / `cognito:roles` /
/// `cognito:preferred_role` in the tokens of a member, ordered by precedence.
#[test]
fn groups_and_their_claims() {
    let dir = DataDir::new("groups");
    let server = Server::start(&dir.0);
    server.create_user("member@example.com");
    let pool = server.info()["poolId"].as_str().expect("pool").to_owned();
    let ok = |op: &str, body: Value| {
        let (code, v) = signed(&server, op, body);
        assert_eq!(code, 200, "{op}: {v}");
        v
    };
    let err = |op: &str, body: Value| {
        let (code, v) = signed(&server, op, body);
        assert_eq!(code, 400, "{op}: {v}");
        v["__type"].as_str().expect("type").to_owned()
    };

    let g = ok(
        "CreateGroup",
        json!({"UserPoolId": pool, "GroupName": "admin", "Description": "operators",
               "Precedence": 1, "RoleArn": "arn:aws:iam::000000000000:role/admins"}),
    );
    assert_eq!(g["Group"]["GroupName"], "admin");
    assert_eq!(g["Group"]["Precedence"], 1);
    assert!(g["Group"]["CreationDate"].is_number());
    ok(
        "CreateGroup",
        json!({"UserPoolId": pool, "GroupName": "readers", "Precedence": 5,
               "RoleArn": "arn:aws:iam::000000000000:role/readers"}),
    );
    ok(
        "CreateGroup",
        json!({"UserPoolId": pool, "GroupName": "zz-no-precedence"}),
    );
    assert_eq!(
        err(
            "CreateGroup",
            json!({"UserPoolId": pool, "GroupName": "admin"})
        ),
        "GroupExistsException"
    );
    assert_eq!(
        err(
            "CreateGroup",
            json!({"UserPoolId": pool, "GroupName": "has space"})
        ),
        "InvalidParameterException"
    );
    assert_eq!(
        err(
            "CreateGroup",
            json!({"UserPoolId": pool, "GroupName": "x", "Precedence": -1})
        ),
        "InvalidParameterException"
    );
    assert_eq!(
        err("GetGroup", json!({"UserPoolId": pool, "GroupName": "nope"})),
        "ResourceNotFoundException"
    );
    assert_eq!(
        err(
            "CreateGroup",
            json!({"UserPoolId": "us-east-2_nopool", "GroupName": "g"})
        ),
        "ResourceNotFoundException"
    );
    // Anonymous callers are refused, as on AWS.
    let (code, v) = server.cognito("ListGroups", json!({"UserPoolId": pool}));
    assert_eq!(code, 403, "{v}");

    // Pages of two.
    let first = ok("ListGroups", json!({"UserPoolId": pool, "Limit": 2}));
    assert_eq!(first["Groups"].as_array().map(Vec::len), Some(2));
    let next = first["NextToken"].as_str().expect("next token");
    let second = ok(
        "ListGroups",
        json!({"UserPoolId": pool, "Limit": 2, "NextToken": next}),
    );
    assert_eq!(second["Groups"][0]["GroupName"], "zz-no-precedence");
    assert!(second.get("NextToken").is_none(), "{second}");
    assert_eq!(
        err("ListGroups", json!({"UserPoolId": pool, "Limit": 61})),
        "InvalidParameterException"
    );

    for g in ["readers", "admin", "zz-no-precedence", "admin"] {
        ok(
            "AdminAddUserToGroup",
            json!({"UserPoolId": pool, "Username": "member@example.com", "GroupName": g}),
        );
    }
    assert_eq!(
        err(
            "AdminAddUserToGroup",
            json!({"UserPoolId": pool, "Username": "nobody@example.com", "GroupName": "admin"})
        ),
        "UserNotFoundException"
    );
    let mine = ok(
        "AdminListGroupsForUser",
        json!({"UserPoolId": pool, "Username": "member@example.com"}),
    );
    assert_eq!(mine["Groups"].as_array().map(Vec::len), Some(3), "{mine}");
    let members = ok(
        "ListUsersInGroup",
        json!({"UserPoolId": pool, "GroupName": "admin"}),
    );
    assert_eq!(
        members["Users"].as_array().map(Vec::len),
        Some(1),
        "{members}"
    );
    assert_eq!(members["Users"][0]["UserStatus"], "CONFIRMED");

    // The tokens: groups by precedence, the roles, the preferred role.
    let signed_in = server.sign_in("member@example.com", common::PASSWORD);
    let id = jwt_claims(
        signed_in["AuthenticationResult"]["IdToken"]
            .as_str()
            .expect("id"),
    );
    assert_eq!(
        id["cognito:groups"],
        json!(["admin", "readers", "zz-no-precedence"])
    );
    assert_eq!(
        id["cognito:roles"],
        json!([
            "arn:aws:iam::000000000000:role/admins",
            "arn:aws:iam::000000000000:role/readers"
        ])
    );
    assert_eq!(
        id["cognito:preferred_role"],
        "arn:aws:iam::000000000000:role/admins"
    );
    let access = jwt_claims(
        signed_in["AuthenticationResult"]["AccessToken"]
            .as_str()
            .expect("access"),
    );
    assert_eq!(access["cognito:groups"][0], "admin");

    // Update (fields not given are cleared), remove, delete.
    let g = ok(
        "UpdateGroup",
        json!({"UserPoolId": pool, "GroupName": "readers", "Precedence": 0}),
    );
    assert_eq!(g["Group"]["Precedence"], 0);
    assert!(g["Group"].get("RoleArn").is_none(), "{g}");
    ok(
        "AdminRemoveUserFromGroup",
        json!({"UserPoolId": pool, "Username": "member@example.com", "GroupName": "zz-no-precedence"}),
    );
    ok(
        "DeleteGroup",
        json!({"UserPoolId": pool, "GroupName": "admin"}),
    );
    let signed_in = server.sign_in("member@example.com", common::PASSWORD);
    let id = jwt_claims(
        signed_in["AuthenticationResult"]["IdToken"]
            .as_str()
            .expect("id"),
    );
    assert_eq!(id["cognito:groups"], json!(["readers"]));
    assert!(id.get("cognito:preferred_role").is_none(), "{id}");

    // A user that leaves every group has no group claims at all.
    ok(
        "AdminRemoveUserFromGroup",
        json!({"UserPoolId": pool, "Username": "member@example.com", "GroupName": "readers"}),
    );
    let signed_in = server.sign_in("member@example.com", common::PASSWORD);
    let id = jwt_claims(
        signed_in["AuthenticationResult"]["IdToken"]
            .as_str()
            .expect("id"),
    );
    assert!(id.get("cognito:groups").is_none(), "{id}");
    server.stop();
}
