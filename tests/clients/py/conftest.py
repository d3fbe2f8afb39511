"""boto3 against a running sluice server.

crates/sluice/tests/clients.rs starts the server, creates an access key and a user of the
default pool, and runs this suite with:

    SLUICE_TEST_EDGE_URL, SLUICE_TEST_API_URL        the AWS edge and the upload API
    SLUICE_TEST_POOL_ID, SLUICE_TEST_CLIENT_ID       the default user pool and its app client
    SLUICE_TEST_USER_EMAIL, SLUICE_TEST_USER_PASSWORD a CONFIRMED user of that pool
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY an access key of the server
    AWS_REGION                              the server's region

Every test makes its own streams, buckets and users with unique names.
"""

import contextlib
import json
import os
import time
import uuid

import boto3
import botocore
import botocore.exceptions
import pytest
from botocore.config import Config

ACCOUNT_ID = "000000000000"


def env(name):
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run this suite through crates/sluice/tests/clients.rs", 2)
    return value


@pytest.fixture(scope="session")
def edge():
    return env("SLUICE_TEST_EDGE_URL")


@pytest.fixture(scope="session")
def api():
    return env("SLUICE_TEST_API_URL")


@pytest.fixture(scope="session")
def region():
    return os.environ.get("AWS_REGION", "us-east-2")


def client(service, edge, region, **config):
    return boto3.session.Session().client(
        service,
        endpoint_url=edge,
        region_name=region,
        aws_access_key_id=env("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env("AWS_SECRET_ACCESS_KEY"),
        config=Config(retries={"max_attempts": 1}, **config),
    )


def retry_throttled(response=None, attempts=0, **_):
    """Retries what a shard's throughput refused (5 GetRecords calls a second, as on AWS),
    as the SDKs' default retry modes do; nothing else is retried (the clients here make one
    attempt, so that no other error is hidden)."""
    if response is None:
        return None
    code = response[1].get("Error", {}).get("Code")
    if code == "ProvisionedThroughputExceededException" and attempts < 25:
        return 0.2
    return None


@pytest.fixture(scope="session")
def kinesis(edge, region):
    c = client("kinesis", edge, region)
    c.meta.events.register("needs-retry.kinesis", retry_throttled)
    return c


@pytest.fixture(scope="session")
def s3(edge, region):
    return client("s3", edge, region, s3={"addressing_style": "path"})


@pytest.fixture(scope="session")
def awslambda(edge, region):
    return client("lambda", edge, region)


LAMBDA_TRUST = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{
        "Effect": "Allow",
        "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }],
})
KINESIS_EXECUTION = "arn:aws:iam::aws:policy/service-role/AWSLambdaKinesisExecutionRole"


@pytest.fixture(scope="session")
def lambda_role(edge, region):
    """An execution role for the suite's functions: Lambda may assume it, and it may read
    streams (AWS's managed AWSLambdaKinesisExecutionRole), as event-source mappings need."""
    iam = client("iam", edge, region)
    name = unique("py-clients")
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=LAMBDA_TRUST)["Role"]["Arn"]
    iam.attach_role_policy(RoleName=name, PolicyArn=KINESIS_EXECUTION)
    yield arn
    iam.detach_role_policy(RoleName=name, PolicyArn=KINESIS_EXECUTION)
    iam.delete_role(RoleName=name)


@pytest.fixture(scope="session")
def idp(edge, region):
    return client("cognito-idp", edge, region)


@pytest.fixture(scope="session")
def anonymous_idp(edge, region):
    return client("cognito-idp", edge, region, signature_version=botocore.UNSIGNED)


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def eventually(fn, what, timeout=60.0, interval=0.05):
    """Polls fn until it returns a truthy value; fails after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def fails(code, fn, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fn(**kw)
    assert error_code(e) == code, e.value.response
    return e.value.response


def refused(fn, **kw):
    """The error answer of a call that must fail, whatever its code."""
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fn(**kw)
    return e.value.response


def status(response):
    return response["ResponseMetadata"]["HTTPStatusCode"]


def all_entries(s3, bucket):
    """Every (key, version id, is a delete marker) of a bucket."""
    found = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        found += [(v["Key"], v["VersionId"], False) for v in page.get("Versions", [])]
        found += [(m["Key"], m["VersionId"], True) for m in page.get("DeleteMarkers", [])]
    return found


def remove_versioned_bucket(s3, bucket):
    """Turns every legal hold of a test's bucket off, deletes every version and delete
    marker with BypassGovernanceRetention, aborts its unfinished uploads, then deletes the
    bucket (a bucket already gone is fine). A version S3 still refuses to delete (COMPLIANCE
    retention, AccessDenied) is left, and so is the bucket that holds it."""
    try:
        s3.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as e:
        if e.response["Error"]["Code"] in ("404", "NoSuchBucket"):
            return
        raise
    # Listed first, changed afterwards: no listing runs over entries being deleted.
    entries = all_entries(s3, bucket)
    for key, version, marker in entries:
        if marker:
            continue
        head = s3.head_object(Bucket=bucket, Key=key, VersionId=version)
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            s3.put_object_legal_hold(Bucket=bucket, Key=key, VersionId=version, LegalHold={"Status": "OFF"})
    kept = []
    for key, version, _ in entries:
        try:
            s3.delete_object(Bucket=bucket, Key=key, VersionId=version, BypassGovernanceRetention=True)
        except botocore.exceptions.ClientError as e:
            if e.response["Error"]["Code"] != "AccessDenied":
                raise
            kept.append((key, version))
    for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    if kept:
        # COMPLIANCE-locked versions outlive the test: their bucket stays until the
        # throwaway server is removed.
        return
    s3.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def versioned_bucket(s3, versioning=None, prefix="py-ver", lock=False):
    """A bucket of its own for one test (created with object lock, or with versioning set,
    when asked), emptied and deleted at the end. When the test itself failed, a failing
    clean-up does not hide that failure (the server under test is thrown away afterwards
    anyway)."""
    name = unique(prefix)
    if lock:
        s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    else:
        s3.create_bucket(Bucket=name)
    passed = False
    try:
        if versioning:
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": versioning})
        yield name
        passed = True
    finally:
        try:
            remove_versioned_bucket(s3, name)
        except Exception:
            if passed:
                raise
