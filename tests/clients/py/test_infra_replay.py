"""What infrastructure-as-code tools do, replayed with boto3: the calls Terraform's AWS
provider makes to create a resource, refresh it (read every attribute back), update it,
and destroy it. A tool stops at the first answer it does not expect, so every read the
provider makes is made here, and a read of something not configured must fail with the
documented not-found code (which the provider takes for "absent")."""

import botocore.exceptions
import pytest

from conftest import ACCOUNT_ID, error_code, eventually, unique


def optional(call, not_found, **kw):
    """A read that the provider takes for "absent" when it fails with one of `not_found`."""
    try:
        return call(**kw)
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] in not_found, (call, e.response)
        return None


def tagset(tags):
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


# --- an S3 bucket with versioning, tags, CORS and a lifecycle --------------------------------


def refresh_bucket(s3, name):
    """Every read the provider makes of an aws_s3_bucket and its configuration resources."""
    state = {}
    state["versioning"] = s3.get_bucket_versioning(Bucket=name).get("Status")
    tags = optional(s3.get_bucket_tagging, {"NoSuchTagSet"}, Bucket=name)
    state["tags"] = sorted((t["Key"], t["Value"]) for t in tags["TagSet"]) if tags else None
    cors = optional(s3.get_bucket_cors, {"NoSuchCORSConfiguration"}, Bucket=name)
    state["cors"] = cors["CORSRules"] if cors else None
    lifecycle = optional(s3.get_bucket_lifecycle_configuration, {"NoSuchLifecycleConfiguration"}, Bucket=name)
    state["lifecycle"] = lifecycle["Rules"] if lifecycle else None
    state["location"] = s3.get_bucket_location(Bucket=name).get("LocationConstraint")
    state["acl"] = s3.get_bucket_acl(Bucket=name)
    state["policy"] = optional(s3.get_bucket_policy, {"NoSuchBucketPolicy"}, Bucket=name)
    encryption = optional(s3.get_bucket_encryption, {"ServerSideEncryptionConfigurationNotFoundError"}, Bucket=name)
    state["encryption"] = encryption["ServerSideEncryptionConfiguration"]["Rules"] if encryption else None
    block = optional(s3.get_public_access_block, {"NoSuchPublicAccessBlockConfiguration"}, Bucket=name)
    state["public_access_block"] = block["PublicAccessBlockConfiguration"] if block else None
    state["website"] = optional(s3.get_bucket_website, {"NoSuchWebsiteConfiguration"}, Bucket=name)
    state["accelerate"] = s3.get_bucket_accelerate_configuration(Bucket=name).get("Status")
    state["payer"] = s3.get_bucket_request_payment(Bucket=name).get("Payer")
    state["logging"] = s3.get_bucket_logging(Bucket=name).get("LoggingEnabled")
    state["object_lock"] = optional(s3.get_object_lock_configuration, {"ObjectLockConfigurationNotFoundError"}, Bucket=name)
    state["replication"] = optional(s3.get_bucket_replication, {"ReplicationConfigurationNotFoundError"}, Bucket=name)
    return state


def assert_unconfigured_parts(state, region):
    """What the configuration below never sets reads as a new bucket's."""
    assert state["location"] == (None if region == "us-east-1" else region), state["location"]
    acl = state["acl"]
    assert acl["Owner"]["ID"]
    assert [(g["Grantee"].get("ID"), g["Permission"]) for g in acl["Grants"]] == [(acl["Owner"]["ID"], "FULL_CONTROL")]
    assert state["policy"] is None
    # Every bucket is encrypted with SSE-S3 unless configured otherwise (S3 since 2023).
    assert state["encryption"], "no default encryption"
    assert state["encryption"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = state["public_access_block"]
    if block is not None:
        assert set(block) == {"BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"}, block
    assert state["website"] is None
    assert state["accelerate"] is None
    assert state["payer"] == "BucketOwner"
    assert state["logging"] is None
    assert state["object_lock"] is None
    assert state["replication"] is None


def lifecycle_rules(days):
    return [{
        "ID": "expire-logs",
        "Status": "Enabled",
        "Filter": {"Prefix": "logs/"},
        "Expiration": {"Days": days},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 7},
    }]


def test_s3_bucket_create_refresh_update_destroy(s3, region):
    name = unique("py-tf-bucket")
    cors = [{"AllowedHeaders": ["*"], "AllowedMethods": ["GET", "PUT"], "AllowedOrigins": ["https://app.example.com"],
             "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 3000}]
    located = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}

    # Create: aws_s3_bucket, then its versioning, tagging, CORS and lifecycle resources.
    s3.create_bucket(Bucket=name, **located)
    destroyed = False
    try:
        s3.get_waiter("bucket_exists").wait(Bucket=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tagset({"env": "prod", "team": "data"})})
        s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": cors})
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": lifecycle_rules(30)})

        # Refresh.
        state = refresh_bucket(s3, name)
        assert state["versioning"] == "Enabled"
        assert state["tags"] == [("env", "prod"), ("team", "data")]
        assert state["cors"] == cors
        [rule] = state["lifecycle"]
        assert rule["ID"] == "expire-logs" and rule["Status"] == "Enabled"
        assert rule["Filter"] == {"Prefix": "logs/"}
        assert rule["Expiration"] == {"Days": 30}
        assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 7}
        assert_unconfigured_parts(state, region)

        # The application writes: two versions of one key, and a key deleted (a marker).
        s3.put_object(Bucket=name, Key="data/a.txt", Body=b"a1")
        s3.put_object(Bucket=name, Key="data/a.txt", Body=b"a2")
        s3.put_object(Bucket=name, Key="data/b.txt", Body=b"b1")
        assert s3.delete_object(Bucket=name, Key="data/b.txt")["DeleteMarker"] is True

        # Update: other tags, a longer expiration, versioning suspended.
        s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tagset({"env": "staging", "owner": "platform"})})
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": lifecycle_rules(90)})
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Suspended"})
        state = refresh_bucket(s3, name)
        assert state["versioning"] == "Suspended"
        assert state["tags"] == [("env", "staging"), ("owner", "platform")]
        assert state["cors"] == cors, "untouched"
        [rule] = state["lifecycle"]
        assert rule["Expiration"] == {"Days": 90}
        assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 7}
        assert_unconfigured_parts(state, region)
        s3.put_object(Bucket=name, Key="data/a.txt", Body=b"a3")  # the null version

        # Destroy: the configuration resources, then the bucket with force_destroy (every
        # version and delete marker removed with DeleteObjects, a page at a time).
        s3.delete_bucket_lifecycle(Bucket=name)
        s3.delete_bucket_cors(Bucket=name)
        s3.delete_bucket_tagging(Bucket=name)
        state = refresh_bucket(s3, name)
        assert state["lifecycle"] is None and state["cors"] is None and state["tags"] is None
        assert state["versioning"] == "Suspended", "a bucket once versioned never goes back to unversioned"

        entries = []
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
            entries += [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", [])]
            entries += [{"Key": m["Key"], "VersionId": m["VersionId"]} for m in page.get("DeleteMarkers", [])]
        assert sorted(e["Key"] for e in entries) == ["data/a.txt"] * 3 + ["data/b.txt"] * 2, entries
        assert "null" in [e["VersionId"] for e in entries if e["Key"] == "data/a.txt"]
        out = s3.delete_objects(Bucket=name, Delete={"Objects": entries, "Quiet": False})
        assert not out.get("Errors"), out
        assert sorted((d["Key"], d["VersionId"]) for d in out["Deleted"]) == sorted((e["Key"], e["VersionId"]) for e in entries)
        listed = s3.list_object_versions(Bucket=name)
        assert not listed.get("Versions") and not listed.get("DeleteMarkers"), listed

        s3.delete_bucket(Bucket=name)
        destroyed = True
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.head_bucket(Bucket=name)
        assert error_code(e) == "404"
        s3.get_waiter("bucket_not_exists").wait(Bucket=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    finally:
        if not destroyed:
            try:
                for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
                    for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                        s3.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])
                s3.delete_bucket(Bucket=name)
            except botocore.exceptions.ClientError:
                pass  # the test has already failed; that failure is the one to see


# --- a Kinesis stream with tags and encryption -----------------------------------------------


def active_summary(kinesis, name):
    """Polls DescribeStreamSummary until the stream is ACTIVE, as the provider waits after
    each change."""
    def poll():
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        return summary if summary["StreamStatus"] == "ACTIVE" else None

    return eventually(poll, f"{name} to be ACTIVE", interval=0.1)


def test_kinesis_stream_create_refresh_update_destroy(kinesis):
    name = unique("py-tf-stream")
    kinesis.create_stream(StreamName=name, ShardCount=1)
    deleted = False
    try:
        # Create: the stream, then its tags and encryption.
        active_summary(kinesis, name)
        kinesis.add_tags_to_stream(StreamName=name, Tags={"env": "test", "team": "data"})
        kinesis.start_stream_encryption(StreamName=name, EncryptionType="KMS", KeyId="alias/aws/kinesis")

        # Refresh.
        summary = active_summary(kinesis, name)
        assert summary["StreamName"] == name
        assert summary["EncryptionType"] == "KMS"
        assert summary["KeyId"] == "alias/aws/kinesis"
        assert summary["OpenShardCount"] == 1
        assert summary["RetentionPeriodHours"] == 24
        assert summary["StreamModeDetails"] == {"StreamMode": "PROVISIONED"}
        assert kinesis.list_tags_for_stream(StreamName=name)["Tags"] == tagset({"env": "test", "team": "data"})

        # Update: a longer retention, a tag removed, encryption off.
        kinesis.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=48)
        assert active_summary(kinesis, name)["RetentionPeriodHours"] == 48
        kinesis.remove_tags_from_stream(StreamName=name, TagKeys=["team"])
        assert kinesis.list_tags_for_stream(StreamName=name)["Tags"] == tagset({"env": "test"})
        kinesis.stop_stream_encryption(StreamName=name, EncryptionType="KMS", KeyId="alias/aws/kinesis")
        summary = active_summary(kinesis, name)
        assert summary["EncryptionType"] == "NONE" and "KeyId" not in summary
        assert summary["RetentionPeriodHours"] == 48 and summary["OpenShardCount"] == 1

        # Destroy.
        kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
        deleted = True

        def gone():
            try:
                kinesis.describe_stream_summary(StreamName=name)
            except botocore.exceptions.ClientError as e:
                assert e.response["Error"]["Code"] == "ResourceNotFoundException", e.response
                return True
            return False

        eventually(gone, f"{name} to be deleted", interval=0.1)
    finally:
        if not deleted:
            try:
                kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
            except botocore.exceptions.ClientError:
                pass


# --- a Cognito user pool with an app client --------------------------------------------------


def test_cognito_user_pool_and_client_create_refresh_update_destroy(idp):
    name = unique("py-tf-pool")
    policy = {
        "MinimumLength": 10,
        "RequireUppercase": True,
        "RequireLowercase": True,
        "RequireNumbers": True,
        "RequireSymbols": False,
        "TemporaryPasswordValidityDays": 3,
    }
    flows = ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]

    # Create: the pool, then its client.
    pool = idp.create_user_pool(
        PoolName=name,
        Policies={"PasswordPolicy": policy},
        AutoVerifiedAttributes=["email"],
        UsernameAttributes=["email"],
    )["UserPool"]
    pool_id = pool["Id"]
    deleted = False
    try:
        assert pool["Name"] == name
        client = idp.create_user_pool_client(
            UserPoolId=pool_id, ClientName="web", ExplicitAuthFlows=flows, GenerateSecret=False,
        )["UserPoolClient"]
        client_id = client["ClientId"]
        assert client["ClientName"] == "web" and "ClientSecret" not in client

        # Refresh.
        described = idp.describe_user_pool(UserPoolId=pool_id)["UserPool"]
        assert described["Id"] == pool_id and described["Name"] == name
        assert described["Arn"] == f"arn:aws:cognito-idp:{pool_id.split('_')[0]}:{ACCOUNT_ID}:userpool/{pool_id}"
        got = described["Policies"]["PasswordPolicy"]
        assert {k: got.get(k) for k in policy} == policy, got
        assert described["AutoVerifiedAttributes"] == ["email"]
        assert described["UsernameAttributes"] == ["email"]
        app = idp.describe_user_pool_client(UserPoolId=pool_id, ClientId=client_id)["UserPoolClient"]
        assert app["ClientName"] == "web" and app["UserPoolId"] == pool_id
        assert sorted(app["ExplicitAuthFlows"]) == sorted(flows)
        listed = idp.list_user_pool_clients(UserPoolId=pool_id, MaxResults=60)["UserPoolClients"]
        assert [(c["ClientId"], c["ClientName"]) for c in listed] == [(client_id, "web")]

        # Update: the provider sends every argument, changed or not (Cognito resets what
        # an update leaves out).
        stricter = dict(policy, MinimumLength=12)
        idp.update_user_pool(UserPoolId=pool_id, Policies={"PasswordPolicy": stricter}, AutoVerifiedAttributes=["email"])
        described = idp.describe_user_pool(UserPoolId=pool_id)["UserPool"]
        got = described["Policies"]["PasswordPolicy"]
        assert {k: got.get(k) for k in stricter} == stricter, got
        assert described["Name"] == name and described["AutoVerifiedAttributes"] == ["email"]

        renamed = idp.update_user_pool_client(
            UserPoolId=pool_id, ClientId=client_id, ClientName="web-renamed", ExplicitAuthFlows=flows,
        )["UserPoolClient"]
        assert renamed["ClientName"] == "web-renamed" and renamed["ClientId"] == client_id
        app = idp.describe_user_pool_client(UserPoolId=pool_id, ClientId=client_id)["UserPoolClient"]
        assert app["ClientName"] == "web-renamed"
        assert sorted(app["ExplicitAuthFlows"]) == sorted(flows)

        # Destroy: the client, then the pool.
        idp.delete_user_pool_client(UserPoolId=pool_id, ClientId=client_id)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            idp.describe_user_pool_client(UserPoolId=pool_id, ClientId=client_id)
        assert error_code(e) == "ResourceNotFoundException"
        idp.delete_user_pool(UserPoolId=pool_id)
        deleted = True
        with pytest.raises(botocore.exceptions.ClientError) as e:
            idp.describe_user_pool(UserPoolId=pool_id)
        assert error_code(e) == "ResourceNotFoundException"
    finally:
        if not deleted:
            try:
                idp.delete_user_pool(UserPoolId=pool_id)
            except botocore.exceptions.ClientError:
                pass
