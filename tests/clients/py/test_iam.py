"""IAM and STS through boto3: roles, users, groups, inline / attached / customer managed
policies with versions, users' access keys, and what a user's key may do on S3 and
Kinesis as its policies say."""

import json

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from conftest import ACCOUNT_ID, client, error_code, unique

LAMBDA_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}
BASIC = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"


@pytest.fixture(scope="module")
def iam(edge, region):
    return client("iam", edge, region)


@pytest.fixture(scope="module")
def sts(edge, region):
    return client("sts", edge, region)


def fails(code, fn, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fn(**kw)
    assert error_code(e) == code, e.value.response
    return e.value.response


def test_caller_identity_of_the_root_key(sts):
    me = sts.get_caller_identity()
    assert me["Account"] == ACCOUNT_ID
    assert me["Arn"] == f"arn:aws:iam::{ACCOUNT_ID}:root"


def test_role_with_inline_and_attached_policies(iam, region):
    name = unique("upload-fn-role")
    created = iam.create_role(
        RoleName=name,
        AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST),
        Description="the upload function",
        Tags=[{"Key": "team", "Value": "ingest"}],
    )["Role"]
    assert created["Arn"] == f"arn:aws:iam::{ACCOUNT_ID}:role/{name}"
    assert created["RoleId"].startswith("AROA")
    role = iam.get_role(RoleName=name)["Role"]
    # boto3 decodes the URL-encoded document IAM answers with.
    assert role["AssumeRolePolicyDocument"] == LAMBDA_TRUST
    assert role["MaxSessionDuration"] == 3600
    assert role["Tags"] == [{"Key": "team", "Value": "ingest"}]
    assert name in [r["RoleName"] for r in iam.get_paginator("list_roles").paginate().build_full_result()["Roles"]]
    fails("EntityAlreadyExists", iam.create_role, RoleName=name.upper(), AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST))
    fails("MalformedPolicyDocument", iam.create_role, RoleName=unique("r"), AssumeRolePolicyDocument='{"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole"}]}')
    fails("ValidationError", iam.create_role, RoleName="has spaces", AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST))

    # The seed's Part C1 policy for the upload function's role.
    put_record = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["kinesis:PutRecord"],
                "Resource": f"arn:aws:kinesis:{region}:{ACCOUNT_ID}:stream/UploadsStream",
            }
        ],
    }
    iam.put_role_policy(RoleName=name, PolicyName="kinesis-put", PolicyDocument=json.dumps(put_record))
    assert iam.list_role_policies(RoleName=name)["PolicyNames"] == ["kinesis-put"]
    got = iam.get_role_policy(RoleName=name, PolicyName="kinesis-put")
    assert got["PolicyDocument"] == put_record and got["RoleName"] == name
    fails("MalformedPolicyDocument", iam.put_role_policy, RoleName=name, PolicyName="bad", PolicyDocument='{"Statement": {"Effect": "Allow"}}')
    fails("NoSuchEntity", iam.get_role_policy, RoleName=name, PolicyName="missing")

    iam.attach_role_policy(RoleName=name, PolicyArn=BASIC)
    attached = iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
    assert attached == [{"PolicyName": "AWSLambdaBasicExecutionRole", "PolicyArn": BASIC}]
    fails("NoSuchEntity", iam.attach_role_policy, RoleName=name, PolicyArn="arn:aws:iam::aws:policy/NotAPolicy")
    basic = iam.get_policy(PolicyArn=BASIC)["Policy"]
    assert basic["Path"] == "/service-role/" and basic["AttachmentCount"] >= 1
    doc = iam.get_policy_version(PolicyArn=BASIC, VersionId=basic["DefaultVersionId"])["PolicyVersion"]["Document"]
    assert "logs:PutLogEvents" in doc["Statement"][0]["Action"]

    iam.update_role(RoleName=name, Description="renamed", MaxSessionDuration=7200)
    assert iam.get_role(RoleName=name)["Role"]["MaxSessionDuration"] == 7200
    fails("ValidationError", iam.update_role, RoleName=name, MaxSessionDuration=43201)
    iam.untag_role(RoleName=name, TagKeys=["team"])
    assert iam.list_role_tags(RoleName=name)["Tags"] == []

    # As IAM does, a role with policies cannot be deleted.
    fails("DeleteConflict", iam.delete_role, RoleName=name)
    iam.delete_role_policy(RoleName=name, PolicyName="kinesis-put")
    fails("DeleteConflict", iam.delete_role, RoleName=name)
    iam.detach_role_policy(RoleName=name, PolicyArn=BASIC)
    iam.delete_role(RoleName=name)
    fails("NoSuchEntity", iam.get_role, RoleName=name)


def test_customer_managed_policy_versions(iam):
    name = unique("stream-readers")
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesis:Get*", "Resource": "*"}]}
    policy = iam.create_policy(PolicyName=name, Path="/app/", PolicyDocument=json.dumps(doc))["Policy"]
    arn = policy["Arn"]
    assert arn == f"arn:aws:iam::{ACCOUNT_ID}:policy/app/{name}"
    assert policy["DefaultVersionId"] == "v1"
    fails("EntityAlreadyExists", iam.create_policy, PolicyName=name, PolicyDocument=json.dumps(doc))
    v2 = iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(doc), SetAsDefault=True)["PolicyVersion"]
    assert v2["VersionId"] == "v2" and v2["IsDefaultVersion"]
    for _ in range(3):
        iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(doc))
    fails("LimitExceeded", iam.create_policy_version, PolicyArn=arn, PolicyDocument=json.dumps(doc))
    versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
    assert [v["VersionId"] for v in versions] == ["v5", "v4", "v3", "v2", "v1"]
    fails("DeleteConflict", iam.delete_policy_version, PolicyArn=arn, VersionId="v2")
    local = [p["Arn"] for p in iam.list_policies(Scope="Local")["Policies"]]
    assert arn in local
    assert BASIC not in local
    assert BASIC in [p["Arn"] for p in iam.get_paginator("list_policies").paginate(Scope="AWS").build_full_result()["Policies"]]
    fails("DeleteConflict", iam.delete_policy, PolicyArn=arn)
    for v in ["v1", "v3", "v4", "v5"]:
        iam.delete_policy_version(PolicyArn=arn, VersionId=v)
    iam.delete_policy(PolicyArn=arn)
    fails("NoSuchEntity", iam.get_policy, PolicyArn=arn)


def test_a_users_key_may_do_what_its_policies_allow(iam, edge, region, s3, kinesis):
    bucket = unique("py-iam")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="uploads/a.txt", Body=b"a")
    s3.put_object(Bucket=bucket, Key="private/b.txt", Body=b"b")
    user = unique("reader")
    group = unique("readers")
    created = iam.create_user(UserName=user)["User"]
    assert created["Arn"] == f"arn:aws:iam::{ACCOUNT_ID}:user/{user}" and created["UserId"].startswith("AIDA")
    key = iam.create_access_key(UserName=user)["AccessKey"]
    assert key["Status"] == "Active" and len(key["SecretAccessKey"]) == 40

    def as_user(service, **config):
        return boto3.session.Session().client(
            service,
            endpoint_url=edge,
            region_name=region,
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            config=Config(retries={"max_attempts": 1}, **config),
        )

    user_s3 = as_user("s3", s3={"addressing_style": "path"})
    me = as_user("sts").get_caller_identity()
    assert me["Arn"] == created["Arn"] and me["UserId"] == created["UserId"]
    # A new user may do nothing.
    fails("AccessDenied", user_s3.get_object, Bucket=bucket, Key="uploads/a.txt")

    # Only s3:GetObject on BUCKET/uploads/*, through a group's managed policy.
    read_uploads = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/uploads/*"}],
    }
    policy = iam.create_policy(PolicyName=unique("read-uploads"), PolicyDocument=json.dumps(read_uploads))["Policy"]
    iam.create_group(GroupName=group)
    iam.attach_group_policy(GroupName=group, PolicyArn=policy["Arn"])
    iam.add_user_to_group(GroupName=group, UserName=user)
    assert [g["GroupName"] for g in iam.list_groups_for_user(UserName=user)["Groups"]] == [group]
    assert [u["UserName"] for u in iam.get_group(GroupName=group)["Users"]] == [user]
    assert user_s3.get_object(Bucket=bucket, Key="uploads/a.txt")["Body"].read() == b"a"
    denied = fails("AccessDenied", user_s3.get_object, Bucket=bucket, Key="private/b.txt")
    assert f"User: {created['Arn']} is not authorized to perform: s3:GetObject" in denied["Error"]["Message"]
    fails("AccessDenied", user_s3.put_object, Bucket=bucket, Key="uploads/new.txt", Body=b"x")
    fails("AccessDenied", user_s3.delete_object, Bucket=bucket, Key="uploads/a.txt")
    stream = unique("py-iam-stream")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        as_user("kinesis").put_record(StreamName=stream, Data=b"x", PartitionKey="p")
    assert error_code(e) == "AccessDeniedException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        as_user("cognito-idp").admin_create_user(UserPoolId=f"{region}_nothere", Username="x")
    assert error_code(e) == "AccessDeniedException"

    # An explicit Deny of the user's own beats the group's Allow.
    deny = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Action": "s3:*", "Resource": f"arn:aws:s3:::{bucket}/uploads/a.txt"}],
    }
    iam.put_user_policy(UserName=user, PolicyName="deny-a", PolicyDocument=json.dumps(deny))
    denied = fails("AccessDenied", user_s3.get_object, Bucket=bucket, Key="uploads/a.txt")
    assert "explicit deny" in denied["Error"]["Message"]
    iam.delete_user_policy(UserName=user, PolicyName="deny-a")
    assert user_s3.get_object(Bucket=bucket, Key="uploads/a.txt")["Body"].read() == b"a"

    # The user may not manage IAM; its key, once inactive, is refused.
    fails("AccessDenied", as_user("iam").create_user, UserName=unique("other"))
    iam.update_access_key(UserName=user, AccessKeyId=key["AccessKeyId"], Status="Inactive")
    listed = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    assert [(k["AccessKeyId"], k["Status"]) for k in listed] == [(key["AccessKeyId"], "Inactive")]
    fails("InvalidAccessKeyId", user_s3.get_object, Bucket=bucket, Key="uploads/a.txt")
    fails("InvalidClientTokenId", as_user("sts").get_caller_identity)

    # A user with keys, groups or policies cannot be deleted.
    fails("DeleteConflict", iam.delete_user, UserName=user)
    iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
    fails("NoSuchEntity", iam.delete_access_key, UserName=user, AccessKeyId=key["AccessKeyId"])
    fails("DeleteConflict", iam.delete_user, UserName=user)
    iam.remove_user_from_group(GroupName=group, UserName=user)
    iam.delete_user(UserName=user)
    fails("DeleteConflict", iam.delete_group, GroupName=group)
    iam.detach_group_policy(GroupName=group, PolicyArn=policy["Arn"])
    iam.delete_group(GroupName=group)
    iam.delete_policy(PolicyArn=policy["Arn"])
    kinesis.delete_stream(StreamName=stream)
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "uploads/a.txt"}, {"Key": "private/b.txt"}]})
    s3.delete_bucket(Bucket=bucket)


def test_unknown_actions_and_pagination(iam):
    names = [unique("pager") for _ in range(3)]
    for n in names:
        iam.create_user(UserName=n, Path="/pager/")
    page = iam.list_users(PathPrefix="/pager/", MaxItems=2)
    assert page["IsTruncated"] and len(page["Users"]) == 2
    rest = iam.list_users(PathPrefix="/pager/", MaxItems=2, Marker=page["Marker"])
    assert not rest["IsTruncated"]
    assert sorted(u["UserName"] for u in page["Users"] + rest["Users"]) == sorted(names)
    for n in names:
        iam.delete_user(UserName=n)
    fails("NoSuchEntity", iam.get_user, UserName=names[0])


def test_conditions_and_policy_variables(iam, edge, region, s3):
    bucket = unique("py-iam-cond")
    s3.create_bucket(Bucket=bucket)
    user = unique("cond")
    iam.create_user(UserName=user, Tags=[{"Key": "team", "Value": "ingest"}])
    s3.put_object(Bucket=bucket, Key=f"home/{user}/a.txt", Body=b"mine")
    s3.put_object(Bucket=bucket, Key="home/someone-else/a.txt", Body=b"theirs")
    s3.put_object(Bucket=bucket, Key="teams/ingest/a.txt", Body=b"team")
    key = iam.create_access_key(UserName=user)["AccessKey"]
    user_s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=edge,
        region_name=region,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )

    def policy(statement):
        iam.put_user_policy(
            UserName=user,
            PolicyName="p",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
        )

    # The edge sees the test's connection from 127.0.0.1.
    policy({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
            "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}})
    fails("AccessDenied", user_s3.get_object, Bucket=bucket, Key="teams/ingest/a.txt")
    policy({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
            "Condition": {"IpAddress": {"aws:SourceIp": ["127.0.0.0/8", "::1/128"]}}})
    assert user_s3.get_object(Bucket=bucket, Key="teams/ingest/a.txt")["Body"].read() == b"team"

    # ${aws:username} in a resource: each user reads their own home.
    policy({"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/home/${{aws:username}}/*"})
    assert user_s3.get_object(Bucket=bucket, Key=f"home/{user}/a.txt")["Body"].read() == b"mine"
    fails("AccessDenied", user_s3.get_object, Bucket=bucket, Key="home/someone-else/a.txt")

    # The user's tags: ${aws:PrincipalTag/team} and a StringEquals on it.
    policy({"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/teams/${{aws:PrincipalTag/team}}/*",
            "Condition": {"StringEquals": {"aws:PrincipalTag/team": "ingest"}, "Bool": {"aws:SecureTransport": "false"}}})
    assert user_s3.get_object(Bucket=bucket, Key="teams/ingest/a.txt")["Body"].read() == b"team"
    iam.tag_user(UserName=user, Tags=[{"Key": "team", "Value": "web"}])
    fails("AccessDenied", user_s3.get_object, Bucket=bucket, Key="teams/ingest/a.txt")

    # s3:prefix on listings: each user lists only their own home.
    policy({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}",
            "Condition": {"StringLike": {"s3:prefix": ["home/${aws:username}/*"]}}})
    listed = user_s3.list_objects_v2(Bucket=bucket, Prefix=f"home/{user}/")
    assert [o["Key"] for o in listed["Contents"]] == [f"home/{user}/a.txt"]
    fails("AccessDenied", user_s3.list_objects_v2, Bucket=bucket, Prefix="home/someone-else/")
    fails("AccessDenied", user_s3.list_objects_v2, Bucket=bucket)

    # A malformed condition is refused with IAM's code, never ignored.
    fails("MalformedPolicyDocument", iam.put_user_policy, UserName=user, PolicyName="bad",
          PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*",
                                     "Condition": {"IpAddress": {"aws:SourceIp": "not-an-ip"}}}]}))

    iam.delete_user_policy(UserName=user, PolicyName="p")
    iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
    iam.delete_user(UserName=user)
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"home/{user}/a.txt"}, {"Key": "home/someone-else/a.txt"}, {"Key": "teams/ingest/a.txt"}]})
    s3.delete_bucket(Bucket=bucket)


def test_simulate_principal_and_custom_policies(iam):
    user = unique("sim")
    arn = iam.create_user(UserName=user)["User"]["Arn"]
    iam.put_user_policy(
        UserName=user,
        PolicyName="p",
        PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/uploads/*"},
                {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/uploads/secret*"},
            ],
        }),
    )
    result = iam.simulate_principal_policy(
        PolicySourceArn=arn,
        ActionNames=["s3:GetObject", "s3:PutObject"],
        ResourceArns=["arn:aws:s3:::b/uploads/a.txt", "arn:aws:s3:::b/uploads/secret.txt"],
    )["EvaluationResults"]
    decisions = {(r["EvalActionName"], r["EvalResourceName"]): r["EvalDecision"] for r in result}
    assert decisions == {
        ("s3:GetObject", "arn:aws:s3:::b/uploads/a.txt"): "allowed",
        ("s3:GetObject", "arn:aws:s3:::b/uploads/secret.txt"): "explicitDeny",
        ("s3:PutObject", "arn:aws:s3:::b/uploads/a.txt"): "implicitDeny",
        ("s3:PutObject", "arn:aws:s3:::b/uploads/secret.txt"): "implicitDeny",
    }
    by_ip = json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
                       "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}],
    })

    def decision(ip):
        r = iam.simulate_custom_policy(
            PolicyInputList=[by_ip],
            ActionNames=["s3:GetObject"],
            ContextEntries=[{"ContextKeyName": "aws:SourceIp", "ContextKeyValues": [ip], "ContextKeyType": "ip"}],
        )
        return r["EvaluationResults"][0]["EvalDecision"]

    assert decision("10.1.2.3") == "allowed"
    assert decision("192.0.2.1") == "implicitDeny"
    fails("NoSuchEntity", iam.simulate_principal_policy, PolicySourceArn=f"arn:aws:iam::{ACCOUNT_ID}:user/nobody-{user}", ActionNames=["s3:GetObject"])
    iam.delete_user_policy(UserName=user, PolicyName="p")
    iam.delete_user(UserName=user)


def test_assume_role_and_sign_with_the_session(iam, sts, edge, region, s3):
    role = unique("reader-role")
    trust = {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": "xyz"}},
        }],
    }
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
    iam.attach_role_policy(RoleName=role, PolicyArn="arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess")
    arn = f"arn:aws:iam::{ACCOUNT_ID}:role/{role}"
    fails("AccessDenied", sts.assume_role, RoleArn=arn, RoleSessionName="no-external-id")
    fails("AccessDenied", sts.assume_role, RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/missing-{role}", RoleSessionName="s1")
    fails("ValidationError", sts.assume_role, RoleArn=arn, RoleSessionName="s1", ExternalId="xyz", DurationSeconds=7200)
    assumed = sts.assume_role(RoleArn=arn, RoleSessionName="s1", ExternalId="xyz", DurationSeconds=900)
    creds = assumed["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA") and creds["SessionToken"]
    assert assumed["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{role}/s1"

    def session(token):
        return boto3.session.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=token,
        )

    good = session(creds["SessionToken"])
    me = good.client("sts", endpoint_url=edge, region_name=region).get_caller_identity()
    assert me["Arn"] == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{role}/s1"
    assert me["UserId"].startswith("AROA") and me["UserId"].endswith(":s1")

    bucket = unique("py-iam-role")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a")
    role_s3 = good.client("s3", endpoint_url=edge, region_name=region, config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))
    assert role_s3.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == b"a"
    denied = fails("AccessDenied", role_s3.put_object, Bucket=bucket, Key="b.txt", Body=b"b")
    assert f"assumed-role/{role}/s1 is not authorized to perform: s3:PutObject" in denied["Error"]["Message"]

    # The session's key without its token, or with another one, is refused.
    for token in [None, "not-the-token"]:
        bad = session(token)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            bad.client("sts", endpoint_url=edge, region_name=region, config=Config(retries={"max_attempts": 1})).get_caller_identity()
        assert error_code(e) == "InvalidClientTokenId"
        with pytest.raises(botocore.exceptions.ClientError) as e:
            bad.client("s3", endpoint_url=edge, region_name=region, config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"})).get_object(Bucket=bucket, Key="a.txt")
        assert error_code(e) in ("InvalidToken", "InvalidAccessKeyId")

    iam.detach_role_policy(RoleName=role, PolicyArn="arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess")
    iam.delete_role(RoleName=role)
    s3.delete_object(Bucket=bucket, Key="a.txt")
    s3.delete_bucket(Bucket=bucket)


LIST_BUCKETS = """
import boto3, botocore

def handler(event, context):
    try:
        boto3.client("s3").list_buckets()
        return "allowed"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
"""


def test_a_function_does_what_its_role_allows(iam, edge, region, awslambda):
    import io
    import zipfile

    from conftest import LAMBDA_TRUST

    role = unique("fn-role")
    role_arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=LAMBDA_TRUST)["Role"]["Arn"]
    user = unique("fn-maker")
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="functions",
        PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "lambda:*", "Resource": "*"}],
        }),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    user_lambda = boto3.session.Session().client(
        "lambda",
        endpoint_url=edge,
        region_name=region,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        config=Config(retries={"max_attempts": 1}, read_timeout=300),
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.py", LIST_BUCKETS)
    name = unique("py-iam-fn")
    create = dict(
        FunctionName=name,
        Runtime="python3.12",
        Role=role_arn,
        Handler="app.handler",
        Code={"ZipFile": buf.getvalue()},
        Timeout=60,
    )
    # The user may create functions but not pass the role to one.
    denied = fails("AccessDeniedException", user_lambda.create_function, **create)
    assert f"is not authorized to perform: iam:PassRole on resource: {role_arn}" in denied["Error"]["Message"]
    iam.put_user_policy(
        UserName=user,
        PolicyName="pass",
        PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "iam:PassRole", "Resource": role_arn}],
        }),
    )
    user_lambda.create_function(**create)
    try:
        # The role has no policy: the function may not list buckets.
        out = user_lambda.invoke(FunctionName=name, Payload=b"{}")
        assert json.loads(out["Payload"].read()) == "AccessDenied", out
        iam.attach_role_policy(RoleName=role, PolicyArn="arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess")
        out = user_lambda.invoke(FunctionName=name, Payload=b"{}")
        assert json.loads(out["Payload"].read()) == "allowed", out
    finally:
        awslambda.delete_function(FunctionName=name)
        iam.detach_role_policy(RoleName=role, PolicyArn="arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess")
        iam.delete_role(RoleName=role)
        for p in ("functions", "pass"):
            iam.delete_user_policy(UserName=user, PolicyName=p)
        iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
        iam.delete_user(UserName=user)


def test_bucket_policy_grants_a_roles_sessions_and_opens_a_prefix(iam, sts, edge, region, s3):
    role = unique("bp-role")
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": ACCOUNT_ID}, "Action": "sts:AssumeRole"}],
    }
    iam.create_role(RoleName=role, Path="/apps/", AssumeRolePolicyDocument=json.dumps(trust))
    bucket = unique("py-bucket-policy")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="private/a.txt", Body=b"a")
    s3.put_object(Bucket=bucket, Key="public/p.txt", Body=b"p")
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/apps/{role}", RoleSessionName="s1")["Credentials"]
    role_s3 = boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    ).client("s3", endpoint_url=edge, region_name=region, config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))
    unsigned = boto3.session.Session().client(
        "s3", endpoint_url=edge, region_name=region,
        config=Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    # The role has no policy of its own, and the bucket none yet.
    fails("AccessDenied", role_s3.get_object, Bucket=bucket, Key="private/a.txt")
    fails("AccessDenied", unsigned.get_object, Bucket=bucket, Key="public/p.txt")
    fails("NoSuchBucketPolicy", s3.get_bucket_policy, Bucket=bucket)

    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "RoleReads", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:role/apps/{role}"},
             "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]},
            {"Sid": "Public", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/public/*"},
        ],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == policy
    assert s3.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"]["IsPublic"] is True
    assert role_s3.get_object(Bucket=bucket, Key="private/a.txt")["Body"].read() == b"a"
    keys = [o["Key"] for o in role_s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["private/a.txt", "public/p.txt"]
    denied = fails("AccessDenied", role_s3.put_object, Bucket=bucket, Key="b.txt", Body=b"b")
    assert f"assumed-role/{role}/s1 is not authorized to perform: s3:PutObject" in denied["Error"]["Message"]
    assert unsigned.get_object(Bucket=bucket, Key="public/p.txt")["Body"].read() == b"p"
    fails("AccessDenied", unsigned.get_object, Bucket=bucket, Key="private/a.txt")
    fails("AccessDenied", unsigned.put_object, Bucket=bucket, Key="public/x.txt", Body=b"x")

    # A Deny binds even the account's keys: DeleteObjects answers per key, and a copy out of
    # the bucket reads its source under the source bucket's policy.
    deny = dict(policy, Statement=policy["Statement"] + [
        {"Sid": "KeepPrivate", "Effect": "Deny", "Principal": "*", "Action": ["s3:DeleteObject", "s3:GetObject"],
         "Resource": f"arn:aws:s3:::{bucket}/private/*"},
    ])
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(deny))
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "private/a.txt"}, {"Key": "public/none.txt"}]})
    assert [e["Key"] for e in out.get("Errors", [])] == ["private/a.txt"] and out["Errors"][0]["Code"] == "AccessDenied"
    assert [d["Key"] for d in out.get("Deleted", [])] == ["public/none.txt"]
    other = unique("py-copy-target")
    s3.create_bucket(Bucket=other)
    try:
        fails("AccessDenied", s3.copy_object, Bucket=other, Key="c.txt", CopySource={"Bucket": bucket, "Key": "private/a.txt"})
        s3.copy_object(Bucket=other, Key="p.txt", CopySource={"Bucket": bucket, "Key": "public/p.txt"})
        s3.delete_object(Bucket=other, Key="p.txt")
    finally:
        s3.delete_bucket(Bucket=other)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    bad = dict(policy, Statement=[dict(policy["Statement"][1], Resource="arn:aws:s3:::elsewhere/*")])
    fails("MalformedPolicy", s3.put_bucket_policy, Bucket=bucket, Policy=json.dumps(bad))

    s3.delete_bucket_policy(Bucket=bucket)
    fails("AccessDenied", unsigned.get_object, Bucket=bucket, Key="public/p.txt")
    for key in ["private/a.txt", "public/p.txt"]:
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)
    iam.delete_role(RoleName=role)
