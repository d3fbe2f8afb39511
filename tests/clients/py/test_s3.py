"""S3 through boto3 (path-style addressing): buckets, objects, listing, copy, multipart,
presigned URLs."""

import datetime
import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request

import boto3
import botocore.exceptions
import botocore.handlers
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from conftest import error_code, eventually, unique

MIB = 1024 * 1024


def md5(data):
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def bucket(s3):
    name = unique("py-bucket")
    s3.create_bucket(Bucket=name)
    yield name
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=name) for o in p.get("Contents", [])]
    if keys:
        s3.delete_objects(Bucket=name, Delete={"Objects": [{"Key": k} for k in keys]})
    s3.delete_bucket(Bucket=name)


def fails(code, fn, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fn(**kw)
    assert error_code(e) == code, e.value.response
    return e.value.response


# --- buckets -----------------------------------------------------------------------------


def test_bucket_lifecycle(s3):
    name = unique("py-life")
    s3.create_bucket(Bucket=name)
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert name in names and "sluice" in names
    created = next(b for b in s3.list_buckets()["Buckets"] if b["Name"] == name)["CreationDate"]
    assert isinstance(created, datetime.datetime)
    head = s3.head_bucket(Bucket=name)
    assert head["ResponseMetadata"]["HTTPStatusCode"] == 200
    fails("BucketAlreadyOwnedByYou", s3.create_bucket, Bucket=name)

    s3.put_object(Bucket=name, Key="k", Body=b"v")
    fails("BucketNotEmpty", s3.delete_bucket, Bucket=name)
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    # HEAD has no body: botocore reports the status code.
    fails("404", s3.head_bucket, Bucket=name)
    fails("NoSuchBucket", s3.list_objects_v2, Bucket=name)
    fails("NoSuchBucket", s3.put_object, Bucket=name, Key="k", Body=b"v")
    fails("NoSuchBucket", s3.delete_bucket, Bucket=name)


def test_bucket_waiters(s3):
    name = unique("py-wait")
    s3.create_bucket(Bucket=name)
    s3.get_waiter("bucket_exists").wait(Bucket=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    s3.delete_bucket(Bucket=name)
    s3.get_waiter("bucket_not_exists").wait(Bucket=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})


# --- objects -----------------------------------------------------------------------------


def test_put_get_head_with_metadata_and_content_type(s3, bucket):
    body = b"hello boto3\n" * 100
    put = s3.put_object(
        Bucket=bucket,
        Key="docs/hello.txt",
        Body=body,
        ContentType="text/plain; charset=utf-8",
        Metadata={"color": "blue", "Owner": "Team-A"},
    )
    assert put["ETag"] == f'"{md5(body)}"'

    got = s3.get_object(Bucket=bucket, Key="docs/hello.txt")
    assert got["Body"].read() == body
    assert got["ETag"] == put["ETag"]
    assert got["ContentType"] == "text/plain; charset=utf-8"
    assert got["ContentLength"] == len(body)
    # User metadata keys come back lower-cased, as S3 does.
    assert got["Metadata"] == {"color": "blue", "owner": "Team-A"}
    assert isinstance(got["LastModified"], datetime.datetime)

    head = s3.head_object(Bucket=bucket, Key="docs/hello.txt")
    assert head["ContentLength"] == len(body)
    assert head["ETag"] == put["ETag"]
    assert head["ContentType"] == "text/plain; charset=utf-8"
    assert head["Metadata"] == {"color": "blue", "owner": "Team-A"}
    assert head["AcceptRanges"] == "bytes"

    fails("NoSuchKey", s3.get_object, Bucket=bucket, Key="docs/missing.txt")
    fails("404", s3.head_object, Bucket=bucket, Key="docs/missing.txt")

    # Overwrite, then an empty object.
    s3.put_object(Bucket=bucket, Key="docs/hello.txt", Body=b"v2")
    assert s3.get_object(Bucket=bucket, Key="docs/hello.txt")["Body"].read() == b"v2"
    empty = s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert empty["ETag"] == f'"{md5(b"")}"'
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""

    # Binary content and keys that need encoding.
    blob = bytes(range(256)) * 300
    key = "odd keys/ü + ä = ß?&#.bin"
    s3.put_object(Bucket=bucket, Key=key, Body=blob)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == blob
    assert key in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="odd")["Contents"]]


def test_ranges(s3, bucket):
    body = bytes(range(100))
    s3.put_object(Bucket=bucket, Key="r", Body=body)
    got = s3.get_object(Bucket=bucket, Key="r", Range="bytes=10-19")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == "bytes 10-19/100"
    assert got["ContentLength"] == 10
    assert got["Body"].read() == body[10:20]
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=90-")["Body"].read() == body[90:]
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=-5")["Body"].read() == body[95:]
    fails("InvalidRange", s3.get_object, Bucket=bucket, Key="r", Range="bytes=200-300")


def test_head_object_with_a_range(s3, bucket):
    body = bytes(range(100))
    s3.put_object(Bucket=bucket, Key="r", Body=body)
    etag = s3.head_object(Bucket=bucket, Key="r")["ETag"]
    for header, first, last in [("bytes=10-19", 10, 19), ("bytes=90-", 90, 99), ("bytes=-5", 95, 99), ("bytes=50-500", 50, 99)]:
        head = s3.head_object(Bucket=bucket, Key="r", Range=header)
        assert head["ResponseMetadata"]["HTTPStatusCode"] == 206, header
        assert head["ContentLength"] == last - first + 1, header
        assert head["ContentRange"] == f"bytes {first}-{last}/100", header
        assert head["ETag"] == etag
    plain = s3.head_object(Bucket=bucket, Key="r")
    assert plain["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert plain["ContentLength"] == 100 and "ContentRange" not in plain
    # HEAD has no body: botocore reports the status code.
    fails("416", s3.head_object, Bucket=bucket, Key="r", Range="bytes=100-")
    fails("404", s3.head_object, Bucket=bucket, Key="missing", Range="bytes=0-1")
    # Conditions are evaluated before the range.
    fails("412", s3.head_object, Bucket=bucket, Key="r", Range="bytes=0-1", IfMatch='"nope"')


def test_conditional_requests(s3, bucket):
    put = s3.put_object(Bucket=bucket, Key="c", Body=b"conditional")
    etag = put["ETag"]
    modified = s3.head_object(Bucket=bucket, Key="c")["LastModified"]
    past = modified - datetime.timedelta(days=1)
    future = modified + datetime.timedelta(days=1)

    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"conditional"
    fails("PreconditionFailed", s3.get_object, Bucket=bucket, Key="c", IfMatch='"0123456789abcdef0123456789abcdef"')
    fails("304", s3.get_object, Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert s3.get_object(Bucket=bucket, Key="c", IfNoneMatch='"other"')["Body"].read() == b"conditional"
    fails("304", s3.get_object, Bucket=bucket, Key="c", IfModifiedSince=future)
    assert s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=past)["Body"].read() == b"conditional"
    fails("PreconditionFailed", s3.get_object, Bucket=bucket, Key="c", IfUnmodifiedSince=past)
    assert s3.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=future)["Body"].read() == b"conditional"
    # HEAD answers the same conditions, with bare status codes.
    fails("304", s3.head_object, Bucket=bucket, Key="c", IfNoneMatch=etag)
    fails("412", s3.head_object, Bucket=bucket, Key="c", IfMatch='"nope"')


def test_conditional_writes(s3, bucket):
    first = s3.put_object(Bucket=bucket, Key="w", Body=b"one", IfNoneMatch="*")
    fails("PreconditionFailed", s3.put_object, Bucket=bucket, Key="w", Body=b"two", IfNoneMatch="*")
    # If-Match: only over the version the writer read (compare-and-swap).
    second = s3.put_object(Bucket=bucket, Key="w", Body=b"two", IfMatch=first["ETag"])
    fails("PreconditionFailed", s3.put_object, Bucket=bucket, Key="w", Body=b"lost", IfMatch=first["ETag"])
    assert s3.get_object(Bucket=bucket, Key="w")["Body"].read() == b"two"
    s3.put_object(Bucket=bucket, Key="w", Body=b"three", IfMatch=second["ETag"])
    fails("NoSuchKey", s3.put_object, Bucket=bucket, Key="missing", Body=b"x", IfMatch=first["ETag"])
    assert s3.get_object(Bucket=bucket, Key="w")["Body"].read() == b"three"


def test_delete_object_and_delete_objects(s3, bucket):
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"d/{i}", Body=b"x")
    out = s3.delete_object(Bucket=bucket, Key="d/0")
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 204
    fails("NoSuchKey", s3.get_object, Bucket=bucket, Key="d/0")
    # Deleting a missing key succeeds, as in S3.
    s3.delete_object(Bucket=bucket, Key="d/never")

    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "d/1"}, {"Key": "d/2"}, {"Key": "d/none"}]})
    assert sorted(d["Key"] for d in out["Deleted"]) == ["d/1", "d/2", "d/none"]
    assert not out.get("Errors")
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "d/3"}], "Quiet": True})
    assert not quiet.get("Deleted") and not quiet.get("Errors")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["d/4"]


def test_list_objects_v2(s3, bucket):
    keys = ["a.txt", "b/1.txt", "b/2.txt", "b/c/3.txt", "d/4.txt", "e.txt"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())

    everything = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in everything["Contents"]] == keys
    assert everything["KeyCount"] == 6 and everything["IsTruncated"] is False
    first = everything["Contents"][0]
    assert first["Size"] == len(b"a.txt") and first["ETag"] == f'"{md5(b"a.txt")}"'
    assert first["StorageClass"] == "STANDARD"

    prefixed = s3.list_objects_v2(Bucket=bucket, Prefix="b/")
    assert [o["Key"] for o in prefixed["Contents"]] == ["b/1.txt", "b/2.txt", "b/c/3.txt"]
    assert prefixed["Prefix"] == "b/"

    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["a.txt", "e.txt"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["b/", "d/"]
    nested = s3.list_objects_v2(Bucket=bucket, Prefix="b/", Delimiter="/")
    assert [o["Key"] for o in nested["Contents"]] == ["b/1.txt", "b/2.txt"]
    assert [p["Prefix"] for p in nested["CommonPrefixes"]] == ["b/c/"]

    # Continuation tokens, by hand and with the paginator.
    page = s3.list_objects_v2(Bucket=bucket, MaxKeys=2)
    assert page["IsTruncated"] is True and page["KeyCount"] == 2 and page["MaxKeys"] == 2
    seen = [o["Key"] for o in page["Contents"]]
    while page["IsTruncated"]:
        page = s3.list_objects_v2(Bucket=bucket, MaxKeys=2, ContinuationToken=page["NextContinuationToken"])
        seen.extend(o["Key"] for o in page["Contents"])
    assert seen == keys
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 1}))
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == ["a.txt", "e.txt"]
    assert [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])] == ["b/", "d/"]

    after = s3.list_objects_v2(Bucket=bucket, StartAfter="b/c/3.txt")
    assert [o["Key"] for o in after["Contents"]] == ["d/4.txt", "e.txt"]

    # ListObjects (v1) still works.
    v1 = s3.list_objects(Bucket=bucket, Prefix="b/", Delimiter="/")
    assert [o["Key"] for o in v1["Contents"]] == ["b/1.txt", "b/2.txt"]


def test_copy_object_metadata_directives(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"copy me", ContentType="text/plain", Metadata={"a": "1"})
    etag = f'"{md5(b"copy me")}"'

    out = s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "src"})
    assert out["CopyObjectResult"]["ETag"] == etag
    head = s3.head_object(Bucket=bucket, Key="copy")
    assert head["Metadata"] == {"a": "1"} and head["ContentType"] == "text/plain"

    s3.copy_object(
        Bucket=bucket,
        Key="replaced",
        CopySource=f"{bucket}/src",
        MetadataDirective="REPLACE",
        Metadata={"b": "2"},
        ContentType="application/json",
    )
    head = s3.head_object(Bucket=bucket, Key="replaced")
    assert head["Metadata"] == {"b": "2"} and head["ContentType"] == "application/json"
    assert s3.get_object(Bucket=bucket, Key="replaced")["Body"].read() == b"copy me"

    # Across buckets, and with source conditions.
    other = unique("py-copy")
    s3.create_bucket(Bucket=other)
    try:
        s3.copy_object(Bucket=other, Key="x", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfMatch=etag)
        assert s3.get_object(Bucket=other, Key="x")["Body"].read() == b"copy me"
        fails(
            "PreconditionFailed",
            s3.copy_object,
            Bucket=other,
            Key="y",
            CopySource={"Bucket": bucket, "Key": "src"},
            CopySourceIfNoneMatch=etag,
        )
        s3.delete_object(Bucket=other, Key="x")
    finally:
        s3.delete_bucket(Bucket=other)
    fails("NoSuchKey", s3.copy_object, Bucket=bucket, Key="z", CopySource={"Bucket": bucket, "Key": "missing"})


# --- multipart ---------------------------------------------------------------------------


def test_multipart_upload(s3, bucket):
    parts_data = [bytes([65 + i]) * (5 * MIB) for i in range(2)] + [b"tail"]
    mp = s3.create_multipart_upload(Bucket=bucket, Key="big.bin", ContentType="application/x-test", Metadata={"m": "p"})
    uid = mp["UploadId"]
    assert mp["Bucket"] == bucket and mp["Key"] == "big.bin"
    etags = []
    for n, data in enumerate(parts_data, start=1):
        out = s3.upload_part(Bucket=bucket, Key="big.bin", UploadId=uid, PartNumber=n, Body=data)
        assert out["ETag"] == f'"{md5(data)}"'
        etags.append(out["ETag"])

    listed = s3.list_parts(Bucket=bucket, Key="big.bin", UploadId=uid)
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed["Parts"]] == [
        (n, len(d), e) for n, (d, e) in enumerate(zip(parts_data, etags), start=1)
    ]
    assert listed["IsTruncated"] is False
    page = s3.list_parts(Bucket=bucket, Key="big.bin", UploadId=uid, MaxParts=2)
    assert page["IsTruncated"] is True and page["NextPartNumberMarker"] == 2
    rest = s3.list_parts(Bucket=bucket, Key="big.bin", UploadId=uid, PartNumberMarker=2)
    assert [p["PartNumber"] for p in rest["Parts"]] == [3]

    # Not visible before completion.
    fails("NoSuchKey", s3.get_object, Bucket=bucket, Key="big.bin")
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="big.bin",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]},
    )
    # The multipart ETag: MD5 of the parts' binary MD5s, then "-<parts>".
    expected = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in parts_data)).hexdigest() + "-3"
    assert done["ETag"] == f'"{expected}"'
    assert done["Bucket"] == bucket and done["Key"] == "big.bin"

    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["ETag"] == f'"{expected}"'
    assert head["ContentLength"] == sum(map(len, parts_data))
    assert head["ContentType"] == "application/x-test"
    assert head["Metadata"] == {"m": "p"}
    assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == b"".join(parts_data)
    ranged = s3.get_object(Bucket=bucket, Key="big.bin", Range=f"bytes={5 * MIB - 2}-{5 * MIB + 1}")
    assert ranged["Body"].read() == b"AABB"
    fails("NoSuchUpload", s3.list_parts, Bucket=bucket, Key="big.bin", UploadId=uid)


def test_get_and_head_by_part_number(s3, bucket):
    parts_data = [b"A" * (5 * MIB), b"tail"]
    uid = s3.create_multipart_upload(Bucket=bucket, Key="parts.bin")["UploadId"]
    etags = [
        s3.upload_part(Bucket=bucket, Key="parts.bin", UploadId=uid, PartNumber=n, Body=d)["ETag"]
        for n, d in enumerate(parts_data, start=1)
    ]
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="parts.bin",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]},
    )
    total = sum(map(len, parts_data))
    whole_etag = s3.head_object(Bucket=bucket, Key="parts.bin")["ETag"]
    # A part is a ranged read of that part's bytes, with the object's ETag and parts count.
    offset = 0
    for n, data in enumerate(parts_data, start=1):
        got = s3.get_object(Bucket=bucket, Key="parts.bin", PartNumber=n)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"] == f"bytes {offset}-{offset + len(data) - 1}/{total}"
        assert got["ContentLength"] == len(data) and got["PartsCount"] == 2
        assert got["ETag"] == whole_etag
        assert got["Body"].read() == data
        head = s3.head_object(Bucket=bucket, Key="parts.bin", PartNumber=n)
        assert head["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert head["ContentLength"] == len(data) and head["PartsCount"] == 2
        assert head["ContentRange"] == got["ContentRange"]
        offset += len(data)
    fails("InvalidPartNumber", s3.get_object, Bucket=bucket, Key="parts.bin", PartNumber=3)
    fails("416", s3.head_object, Bucket=bucket, Key="parts.bin", PartNumber=3)
    fails("InvalidRequest", s3.get_object, Bucket=bucket, Key="parts.bin", PartNumber=1, Range="bytes=0-1")
    fails("InvalidArgument", s3.get_object, Bucket=bucket, Key="parts.bin", PartNumber=10001)

    # An object not assembled from parts is its own part 1.
    s3.put_object(Bucket=bucket, Key="single", Body=b"one part")
    got = s3.get_object(Bucket=bucket, Key="single", PartNumber=1)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == "bytes 0-7/8" and "PartsCount" not in got
    assert got["Body"].read() == b"one part"
    fails("InvalidPartNumber", s3.get_object, Bucket=bucket, Key="single", PartNumber=2)


def test_multipart_abort_and_entity_too_small(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="aborted")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="aborted", UploadId=uid, PartNumber=1, Body=b"x" * 1024)
    out = s3.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=uid)
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 204
    fails("NoSuchUpload", s3.list_parts, Bucket=bucket, Key="aborted", UploadId=uid)
    fails("NoSuchUpload", s3.upload_part, Bucket=bucket, Key="aborted", UploadId=uid, PartNumber=2, Body=b"y")
    fails("NoSuchKey", s3.get_object, Bucket=bucket, Key="aborted")

    # Every part but the last must be at least 5 MiB.
    uid = s3.create_multipart_upload(Bucket=bucket, Key="small")["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="small", UploadId=uid, PartNumber=1, Body=b"a" * 1024)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="small", UploadId=uid, PartNumber=2, Body=b"b" * 1024)["ETag"]
    fails(
        "EntityTooSmall",
        s3.complete_multipart_upload,
        Bucket=bucket,
        Key="small",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
    )
    # A single small part is fine: it is the last one.
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="small", UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}]}
    )
    assert done["ETag"] == f'"{hashlib.md5(hashlib.md5(b"a" * 1024).digest()).hexdigest()}-1"'
    assert s3.get_object(Bucket=bucket, Key="small")["Body"].read() == b"a" * 1024

    # A wrong part ETag is refused.
    uid = s3.create_multipart_upload(Bucket=bucket, Key="wrong")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="wrong", UploadId=uid, PartNumber=1, Body=b"c")
    fails(
        "InvalidPart",
        s3.complete_multipart_upload,
        Bucket=bucket,
        Key="wrong",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]},
    )
    s3.abort_multipart_upload(Bucket=bucket, Key="wrong", UploadId=uid)


def test_upload_part_copy(s3, bucket):
    src = bytes(i % 251 for i in range(6 * MIB + 123))
    s3.put_object(Bucket=bucket, Key="src.bin", Body=src)
    s3.put_object(Bucket=bucket, Key="small.txt", Body=b"small source")
    src_etag = s3.head_object(Bucket=bucket, Key="src.bin")["ETag"]
    uid = s3.create_multipart_upload(Bucket=bucket, Key="assembled.bin")["UploadId"]

    # A range of the large object (exactly 5 MiB), then the whole small object.
    p1 = s3.upload_part_copy(
        Bucket=bucket,
        Key="assembled.bin",
        UploadId=uid,
        PartNumber=1,
        CopySource={"Bucket": bucket, "Key": "src.bin"},
        CopySourceRange=f"bytes=0-{5 * MIB - 1}",
        CopySourceIfMatch=src_etag,
    )["CopyPartResult"]
    # The ETag of a copied part is the MD5 of the bytes copied, as for UploadPart.
    assert p1["ETag"] == f'"{md5(src[: 5 * MIB])}"'
    assert isinstance(p1["LastModified"], datetime.datetime)
    p2 = s3.upload_part_copy(
        Bucket=bucket, Key="assembled.bin", UploadId=uid, PartNumber=2, CopySource=f"{bucket}/small.txt"
    )["CopyPartResult"]
    assert p2["ETag"] == f'"{md5(b"small source")}"'
    # A range in the middle, from another bucket, as part 3.
    other = unique("py-upc")
    s3.create_bucket(Bucket=other)
    try:
        s3.put_object(Bucket=other, Key="o", Body=b"0123456789")
        p3 = s3.upload_part_copy(
            Bucket=bucket,
            Key="assembled.bin",
            UploadId=uid,
            PartNumber=3,
            CopySource={"Bucket": other, "Key": "o"},
            CopySourceRange="bytes=3-5",
        )["CopyPartResult"]
        assert p3["ETag"] == f'"{md5(b"345")}"'
        s3.delete_object(Bucket=other, Key="o")
    finally:
        s3.delete_bucket(Bucket=other)

    listed = s3.list_parts(Bucket=bucket, Key="assembled.bin", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed] == [
        (1, 5 * MIB, p1["ETag"]),
        (2, len(b"small source"), p2["ETag"]),
        (3, 3, p3["ETag"]),
    ]
    # Part 2 is less than 5 MiB, so only parts 1 and 3 can be assembled... and part 2 replaced.
    p2 = s3.upload_part_copy(
        Bucket=bucket,
        Key="assembled.bin",
        UploadId=uid,
        PartNumber=2,
        CopySource={"Bucket": bucket, "Key": "src.bin"},
        CopySourceRange=f"bytes={MIB}-{6 * MIB - 1}",
    )["CopyPartResult"]
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="assembled.bin",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": p["ETag"]} for n, p in [(1, p1), (2, p2), (3, p3)]]},
    )
    pieces = [src[: 5 * MIB], src[MIB : 6 * MIB], b"345"]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in pieces)).hexdigest() + "-3"
    assert done["ETag"] == f'"{expected}"'
    assert s3.get_object(Bucket=bucket, Key="assembled.bin")["Body"].read() == b"".join(pieces)


def test_upload_part_copy_errors(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"0123456789")
    etag = s3.head_object(Bucket=bucket, Key="src")["ETag"]
    uid = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]

    def copy(**kw):
        args = {"Bucket": bucket, "Key": "dst", "UploadId": uid, "PartNumber": 1, "CopySource": {"Bucket": bucket, "Key": "src"}}
        args.update(kw)
        return s3.upload_part_copy(**args)

    for bad in ["bytes=0-", "bytes=-5", "0-5", "bytes=a-b", "bytes=0-1,3-4", "bytes=1"]:
        out = fails("InvalidArgument", copy, CopySourceRange=bad)
        assert "bytes=first-last" in out["Error"]["Message"], bad
    for outside in ["bytes=0-10", "bytes=10-10", "bytes=5-4"]:
        out = fails("InvalidArgument", copy, CopySourceRange=outside)
        assert out["Error"]["Message"] == "Range specified is not valid for source object of size: 10", outside
    fails("NoSuchKey", copy, CopySource={"Bucket": bucket, "Key": "missing"})
    fails("NoSuchBucket", copy, CopySource={"Bucket": unique("py-none"), "Key": "src"})
    fails("NoSuchUpload", copy, UploadId="0" * 32)
    fails("NoSuchUpload", copy, Key="not-the-upload-key")
    fails("InvalidArgument", copy, PartNumber=10001)

    # Source conditions, as CopyObject: every failure is a 412.
    fails("PreconditionFailed", copy, CopySourceIfMatch='"00000000000000000000000000000000"')
    fails("PreconditionFailed", copy, CopySourceIfNoneMatch=etag)
    modified = s3.head_object(Bucket=bucket, Key="src")["LastModified"]
    fails("PreconditionFailed", copy, CopySourceIfUnmodifiedSince=modified - datetime.timedelta(days=1))
    fails("PreconditionFailed", copy, CopySourceIfModifiedSince=modified + datetime.timedelta(days=1))
    assert s3.list_parts(Bucket=bucket, Key="dst", UploadId=uid).get("Parts", []) == []
    ok = copy(CopySourceIfMatch=etag, CopySourceIfModifiedSince=modified - datetime.timedelta(days=1))
    assert ok["CopyPartResult"]["ETag"] == etag
    s3.abort_multipart_upload(Bucket=bucket, Key="dst", UploadId=uid)
    fails("NoSuchUpload", copy)


def test_list_multipart_uploads(s3, bucket):
    # Two uploads of "a": listed by key, then in the order they were created.
    created = [(k, s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"]) for k in ["b/1", "a", "c", "b/2", "a", "b/sub/3"]]
    ordered = sorted(created, key=lambda u: u[0])  # stable: creation order within a key

    def ids(out):
        return [(u["Key"], u["UploadId"]) for u in out.get("Uploads", [])]

    everything = s3.list_multipart_uploads(Bucket=bucket)
    assert ids(everything) == ordered
    assert everything["IsTruncated"] is False and everything["MaxUploads"] == 1000
    first = everything["Uploads"][0]
    assert first["StorageClass"] == "STANDARD" and isinstance(first["Initiated"], datetime.datetime)
    assert first["Owner"]["ID"] and first["Initiator"]["ID"]

    assert ids(s3.list_multipart_uploads(Bucket=bucket, Prefix="b/")) == [u for u in ordered if u[0].startswith("b/")]
    top = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/")
    assert ids(top) == [u for u in ordered if "/" not in u[0]]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["b/"]
    nested = s3.list_multipart_uploads(Bucket=bucket, Prefix="b/", Delimiter="/")
    assert [u[0] for u in ids(nested)] == ["b/1", "b/2"]
    assert [p["Prefix"] for p in nested["CommonPrefixes"]] == ["b/sub/"]

    # Markers: after a key, after an upload of a key.
    assert ids(s3.list_multipart_uploads(Bucket=bucket, KeyMarker="a")) == ordered[2:]
    assert ids(s3.list_multipart_uploads(Bucket=bucket, KeyMarker="a", UploadIdMarker=ordered[0][1])) == ordered[1:]
    # Without a key marker the upload-id marker is ignored.
    assert ids(s3.list_multipart_uploads(Bucket=bucket, UploadIdMarker=ordered[0][1])) == ordered

    # Pages, by hand and with the paginator.
    page = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=2)
    assert ids(page) == ordered[:2] and page["IsTruncated"] is True and page["MaxUploads"] == 2
    assert (page["NextKeyMarker"], page["NextUploadIdMarker"]) == ordered[1]
    seen = ids(page)
    while page["IsTruncated"]:
        page = s3.list_multipart_uploads(
            Bucket=bucket, MaxUploads=2, KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"]
        )
        seen.extend(ids(page))
    assert seen == ordered
    pages = list(s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 1}))
    assert [u for p in pages for u in ids(p)] == [u for u in ordered if "/" not in u[0]]
    assert [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])] == ["b/"]

    # Completed and aborted uploads are no longer listed.
    for key, uid in created:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=uid)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket) or s3.list_multipart_uploads(Bucket=bucket)["Uploads"] == []
    fails("NoSuchBucket", s3.list_multipart_uploads, Bucket=unique("py-none"))


def test_upload_fileobj_uses_multipart(s3, bucket, tmp_path):
    """boto3's transfer manager: concurrent parts above the threshold."""
    data = bytes(i % 251 for i in range(12 * MIB))
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=3)
    s3.upload_file(str(path), bucket, "transfer.bin", Config=config)
    assert s3.head_object(Bucket=bucket, Key="transfer.bin")["ETag"].endswith('-3"')
    back = tmp_path / "back.bin"
    s3.download_file(bucket, "transfer.bin", str(back), Config=config)
    assert back.read_bytes() == data


# --- presigned URLs ----------------------------------------------------------------------


def test_presigned_get_and_put(s3, bucket):
    s3.put_object(Bucket=bucket, Key="shared.txt", Body=b"presigned body", ContentType="text/plain")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared.txt"}, ExpiresIn=300)
    assert "X-Amz-Signature=" in url
    with urllib.request.urlopen(url) as resp:
        assert resp.status == 200
        assert resp.read() == b"presigned body"
        assert resp.headers["Content-Type"] == "text/plain"

    # A tampered signature and an anonymous request are refused.
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(tampered)
    assert e.value.code == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in e.value.read()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url.split("?")[0])
    assert e.value.code == 403

    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "uploaded.txt"}, ExpiresIn=300)
    req = urllib.request.Request(put_url, data=b"sent with a presigned PUT", method="PUT")
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 200
        assert resp.headers["ETag"] == f'"{md5(b"sent with a presigned PUT")}"'
    assert s3.get_object(Bucket=bucket, Key="uploaded.txt")["Body"].read() == b"sent with a presigned PUT"

    # A presigned PUT is for that key only.
    other = put_url.replace("uploaded.txt", "other.txt")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(other, data=b"x", method="PUT"))
    assert e.value.code == 403


def test_wrong_secret_is_refused(edge, region):
    bad = boto3.session.Session().client(
        "s3",
        endpoint_url=edge,
        region_name=region,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key="not-the-secret",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    fails("SignatureDoesNotMatch", bad.list_buckets)


# --- integrity and conditional writes --------------------------------------------------


def test_content_md5_is_checked(s3, bucket):
    import base64

    good = base64.b64encode(hashlib.md5(b"payload").digest()).decode()
    s3.put_object(Bucket=bucket, Key="md5", Body=b"payload", ContentMD5=good)
    bad = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    fails("BadDigest", s3.put_object, Bucket=bucket, Key="md5", Body=b"payload", ContentMD5=bad)
    assert s3.get_object(Bucket=bucket, Key="md5")["Body"].read() == b"payload"


def test_put_if_none_match_star_refuses_an_existing_key(s3, bucket):
    s3.put_object(Bucket=bucket, Key="once", Body=b"first", IfNoneMatch="*")
    fails("PreconditionFailed", s3.put_object, Bucket=bucket, Key="once", Body=b"second", IfNoneMatch="*")
    assert s3.get_object(Bucket=bucket, Key="once")["Body"].read() == b"first"


def test_a_conditional_write_that_loses_a_race_is_a_conflict(s3, bucket):
    """An If-None-Match: * write whose key is written by another request while its body is
    still arriving answers 409 ConditionalRequestConflict (retryable), as S3 does; one that
    starts after the key exists answers 412."""
    import http.client
    import time
    import urllib.parse

    body = b"r" * 100_000
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "raced", "IfNoneMatch": "*"})
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    conn.putrequest("PUT", f"{parsed.path}?{parsed.query}")
    conn.putheader("If-None-Match", "*")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[:1000])
    time.sleep(0.1)
    s3.put_object(Bucket=bucket, Key="raced", Body=b"winner")
    conn.send(body[1000:])
    resp = conn.getresponse()
    answer = resp.read()
    assert resp.status == 409, answer
    assert b"<Code>ConditionalRequestConflict</Code>" in answer, answer
    assert s3.get_object(Bucket=bucket, Key="raced")["Body"].read() == b"winner"
    fails("PreconditionFailed", s3.put_object, Bucket=bucket, Key="raced", Body=b"late", IfNoneMatch="*")


def test_objects_report_their_encryption(s3):
    """Each object reports the encryption its write asked for, or its bucket's default
    (SSE-S3 unless configured otherwise), as S3 does."""
    name = unique("py-sse")
    s3.create_bucket(Bucket=name)
    try:
        put = s3.put_object(Bucket=name, Key="default", Body=b"d")
        assert put["ServerSideEncryption"] == "AES256"
        assert s3.head_object(Bucket=name, Key="default")["ServerSideEncryption"] == "AES256"
        asked = s3.put_object(Bucket=name, Key="kms", Body=b"k", ServerSideEncryption="aws:kms",
                              SSEKMSKeyId="alias/app")
        assert (asked["ServerSideEncryption"], asked["SSEKMSKeyId"]) == ("aws:kms", "alias/app")
        got = s3.get_object(Bucket=name, Key="kms")
        assert (got["ServerSideEncryption"], got["SSEKMSKeyId"]) == ("aws:kms", "alias/app")
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/bucket"}}]})
        later = s3.put_object(Bucket=name, Key="later", Body=b"l")
        assert (later["ServerSideEncryption"], later["SSEKMSKeyId"]) == ("aws:kms", "alias/bucket")
        assert s3.head_object(Bucket=name, Key="default")["ServerSideEncryption"] == "AES256", "kept per version"
        copied = s3.copy_object(Bucket=name, Key="copy", CopySource={"Bucket": name, "Key": "kms"})
        assert copied["ServerSideEncryption"] == "aws:kms" and copied["SSEKMSKeyId"] == "alias/bucket"
        fails("InvalidArgument", s3.put_object, Bucket=name, Key="bad", Body=b"b", SSEKMSKeyId="alias/x")
        # Customer-provided keys cannot be honoured: refused, nothing stored.
        fails("NotImplemented", s3.put_object, Bucket=name, Key="ssec", Body=b"c",
              SSECustomerAlgorithm="AES256", SSECustomerKey="k" * 32)
    finally:
        for k in ("default", "kms", "later", "copy"):
            s3.delete_object(Bucket=name, Key=k)
        s3.delete_bucket(Bucket=name)


def test_canned_acls_follow_object_ownership(s3):
    """ACLs are disabled under BucketOwnerEnforced (the default); with ObjectWriter a canned
    ACL is kept and answered as S3 expands it, unless the public access block refuses it."""
    all_users = "http://acs.amazonaws.com/groups/global/AllUsers"

    def grants(acl):
        return sorted((g["Grantee"].get("URI", g["Grantee"].get("ID")), g["Permission"]) for g in acl["Grants"])

    name = unique("py-acl")
    fails("InvalidBucketAclWithObjectOwnership", s3.create_bucket, Bucket=name, ACL="public-read")
    s3.create_bucket(Bucket=name)
    try:
        fails("AccessControlListNotSupported", s3.put_bucket_acl, Bucket=name, ACL="public-read")
        fails("AccessControlListNotSupported", s3.put_object, Bucket=name, Key="o", Body=b"x", ACL="public-read")
        assert grants(s3.get_bucket_acl(Bucket=name)) == [("sluice", "FULL_CONTROL")]

        s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": "ObjectWriter"}]})
        s3.put_bucket_acl(Bucket=name, ACL="public-read")
        assert grants(s3.get_bucket_acl(Bucket=name)) == [(all_users, "READ"), ("sluice", "FULL_CONTROL")]
        s3.put_object(Bucket=name, Key="o", Body=b"x", ACL="public-read")
        assert grants(s3.get_object_acl(Bucket=name, Key="o")) == [(all_users, "READ"), ("sluice", "FULL_CONTROL")]
        s3.put_object_acl(Bucket=name, Key="o", ACL="private")
        assert grants(s3.get_object_acl(Bucket=name, Key="o")) == [("sluice", "FULL_CONTROL")]
        fails("NotImplemented", s3.put_object_acl, Bucket=name, Key="o", GrantRead=f'uri="{all_users}"')

        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": False, "BlockPublicPolicy": False,
            "RestrictPublicBuckets": False})
        fails("AccessDenied", s3.put_object, Bucket=name, Key="p", Body=b"x", ACL="public-read")
        fails("AccessDenied", s3.put_object_acl, Bucket=name, Key="o", ACL="public-read-write")

        # Back to BucketOwnerEnforced: ACLs are disabled again and read as the owner's.
        s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
        assert grants(s3.get_bucket_acl(Bucket=name)) == [("sluice", "FULL_CONTROL")]
    finally:
        s3.delete_object(Bucket=name, Key="o")
        s3.delete_bucket(Bucket=name)

    writer = unique("py-acl-writer")
    s3.create_bucket(Bucket=writer, ObjectOwnership="ObjectWriter", ACL="public-read")
    try:
        assert grants(s3.get_bucket_acl(Bucket=writer)) == [(all_users, "READ"), ("sluice", "FULL_CONTROL")]
    finally:
        s3.delete_bucket(Bucket=writer)


def test_copy_onto_itself_needs_replace(s3, bucket):
    s3.put_object(Bucket=bucket, Key="self", Body=b"x", Metadata={"a": "1"})
    fails("InvalidRequest", s3.copy_object, Bucket=bucket, Key="self", CopySource={"Bucket": bucket, "Key": "self"})
    s3.copy_object(
        Bucket=bucket,
        Key="self",
        CopySource={"Bucket": bucket, "Key": "self"},
        MetadataDirective="REPLACE",
        Metadata={"a": "2"},
    )
    assert s3.head_object(Bucket=bucket, Key="self")["Metadata"] == {"a": "2"}



def test_multipart_upload_into_uploads_is_processed(s3, bucket):
    # A part uploaded and a part copied from another object, completed into the upload
    # bucket's uploads/ prefix: an upload like a PutObject there, so it is processed.
    upload_bucket = os.environ.get("SLUICE_TEST_BUCKET", "sluice")
    name = unique("mp") + ".txt"
    key = f"uploads/{name}"
    first = b"multipart into uploads\n" * (5 * MIB // 23 + 1)
    tail = b"and a copied tail\n"
    s3.put_object(Bucket=bucket, Key="tail.txt", Body=tail)
    uid = s3.create_multipart_upload(Bucket=upload_bucket, Key=key, ContentType="text/plain")["UploadId"]
    e1 = s3.upload_part(Bucket=upload_bucket, Key=key, UploadId=uid, PartNumber=1, Body=first)["ETag"]
    e2 = s3.upload_part_copy(
        Bucket=upload_bucket, Key=key, UploadId=uid, PartNumber=2, CopySource={"Bucket": bucket, "Key": "tail.txt"}
    )["CopyPartResult"]["ETag"]
    done = s3.complete_multipart_upload(
        Bucket=upload_bucket,
        Key=key,
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
    )
    expected = hashlib.md5(hashlib.md5(first).digest() + hashlib.md5(tail).digest()).hexdigest() + "-2"
    assert done["ETag"] == f'"{expected}"'
    fails("NoSuchUpload", s3.list_parts, Bucket=upload_bucket, Key=key, UploadId=uid)

    def processed():
        try:
            return s3.get_object(Bucket=upload_bucket, Key=f"processed/{name}")["Body"].read()
        except botocore.exceptions.ClientError as e:
            if e.response["Error"]["Code"] == "NoSuchKey":
                return None
            raise

    out = eventually(processed, "the multipart upload to be processed")
    assert out == (first + tail).upper()
    for k in (key, f"processed/{name}"):
        s3.delete_object(Bucket=upload_bucket, Key=k)


# --- tagging -----------------------------------------------------------------------------


def tagset(pairs):
    return [{"Key": k, "Value": v} for k, v in pairs]


def test_bucket_tagging(s3, bucket):
    fails("NoSuchTagSet", s3.get_bucket_tagging, Bucket=bucket)
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tagset([("team", "data"), ("env", "dev")])})
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == tagset([("team", "data"), ("env", "dev")])
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tagset([("env", "prod")])})
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == tagset([("env", "prod")])
    for bad, message in [
        (tagset([("aws:owner", "x")]), "cannot be prefixed with aws:"),
        (tagset([("k", "1"), ("k", "2")]), "multiple Tags with the same key"),
        (tagset([("k" * 129, "v")]), "too long, max 128"),
        (tagset([("k", "v" * 257)]), "too long, max 256"),
        (tagset([(f"k{i}", "v") for i in range(51)]), "cannot be greater than 50"),
        (tagset([("bad#key", "v")]), "TagKey you have provided is invalid"),
    ]:
        r = fails("InvalidTag", s3.put_bucket_tagging, Bucket=bucket, Tagging={"TagSet": bad})
        assert message in r["Error"]["Message"], r
    s3.delete_bucket_tagging(Bucket=bucket)
    fails("NoSuchTagSet", s3.get_bucket_tagging, Bucket=bucket)
    fails("NoSuchBucket", s3.get_bucket_tagging, Bucket=unique("py-missing"))


def test_a_bucket_created_again_has_no_tags(s3):
    name = unique("py-retag")
    s3.create_bucket(Bucket=name)
    s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tagset([("a", "1")])})
    s3.delete_bucket(Bucket=name)
    s3.create_bucket(Bucket=name)
    fails("NoSuchTagSet", s3.get_bucket_tagging, Bucket=name)
    s3.delete_bucket(Bucket=name)


def test_object_tagging(s3, bucket):
    s3.put_object(Bucket=bucket, Key="t.txt", Body=b"t", Tagging="project=sluice&stage=raw%20data")
    got = s3.get_object(Bucket=bucket, Key="t.txt")
    assert got["TagCount"] == 2
    assert s3.get_object_tagging(Bucket=bucket, Key="t.txt")["TagSet"] == tagset([("project", "sluice"), ("stage", "raw data")])
    s3.put_object_tagging(Bucket=bucket, Key="t.txt", Tagging={"TagSet": tagset([("stage", "done")])})
    assert s3.get_object_tagging(Bucket=bucket, Key="t.txt")["TagSet"] == tagset([("stage", "done")])

    # A copy takes the source's tags, or the request's with REPLACE.
    s3.copy_object(Bucket=bucket, Key="copy.txt", CopySource={"Bucket": bucket, "Key": "t.txt"})
    assert s3.get_object_tagging(Bucket=bucket, Key="copy.txt")["TagSet"] == tagset([("stage", "done")])
    s3.copy_object(Bucket=bucket, Key="copy2.txt", CopySource={"Bucket": bucket, "Key": "t.txt"},
                   TaggingDirective="REPLACE", Tagging="fresh=1")
    assert s3.get_object_tagging(Bucket=bucket, Key="copy2.txt")["TagSet"] == tagset([("fresh", "1")])

    # A multipart upload's tags are the object's.
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp.bin", Tagging="kind=multipart")
    part = s3.upload_part(Bucket=bucket, Key="mp.bin", UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 100)
    s3.complete_multipart_upload(Bucket=bucket, Key="mp.bin", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="mp.bin")["TagSet"] == tagset([("kind", "multipart")])

    # Overwriting an object replaces its tags; deleting them leaves none.
    s3.put_object(Bucket=bucket, Key="t.txt", Body=b"again")
    assert s3.get_object_tagging(Bucket=bucket, Key="t.txt")["TagSet"] == []
    assert "TagCount" not in s3.get_object(Bucket=bucket, Key="t.txt")
    s3.delete_object_tagging(Bucket=bucket, Key="copy.txt")
    assert s3.get_object_tagging(Bucket=bucket, Key="copy.txt")["TagSet"] == []

    r = fails("InvalidTag", s3.put_object, Bucket=bucket, Key="many.txt", Body=b"m",
              Tagging="&".join(f"k{i}=v" for i in range(11)))
    assert "cannot be greater than 10" in r["Error"]["Message"]
    fails("InvalidTag", s3.put_object_tagging, Bucket=bucket, Key="copy.txt",
          Tagging={"TagSet": tagset([("aws:x", "1")])})
    fails("NoSuchKey", s3.get_object_tagging, Bucket=bucket, Key="missing.txt")
    fails("NoSuchKey", s3.put_object_tagging, Bucket=bucket, Key="missing.txt", Tagging={"TagSet": []})


# --- standard headers --------------------------------------------------------------------


def test_standard_headers_are_kept_and_returned(s3, bucket):
    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    s3.put_object(
        Bucket=bucket, Key="h.txt", Body=b"hello",
        CacheControl="max-age=60", ContentDisposition='attachment; filename="h.txt"',
        ContentEncoding="identity", ContentLanguage="en-GB", Expires=expires,
        StorageClass="STANDARD_IA", WebsiteRedirectLocation="/elsewhere.html",
    )
    for got in [s3.get_object(Bucket=bucket, Key="h.txt"), s3.head_object(Bucket=bucket, Key="h.txt")]:
        assert got["CacheControl"] == "max-age=60"
        assert got["ContentDisposition"] == 'attachment; filename="h.txt"'
        assert got["ContentEncoding"] == "identity"
        assert got["ContentLanguage"] == "en-GB"
        assert got["Expires"] == expires
        assert got["StorageClass"] == "STANDARD_IA"
        assert got["WebsiteRedirectLocation"] == "/elsewhere.html"

    # GET's response-* parameters override what is stored.
    got = s3.get_object(Bucket=bucket, Key="h.txt", ResponseCacheControl="no-store",
                        ResponseContentDisposition="inline", ResponseContentType="text/x-other")
    assert got["CacheControl"] == "no-store" and got["ContentDisposition"] == "inline"
    assert got["ContentType"] == "text/x-other"

    # STANDARD is not answered; an unknown class is refused.
    s3.put_object(Bucket=bucket, Key="std.txt", Body=b"s", StorageClass="STANDARD")
    assert "StorageClass" not in s3.head_object(Bucket=bucket, Key="std.txt")
    r = fails("InvalidStorageClass", s3.put_object, Bucket=bucket, Key="x.txt", Body=b"x", StorageClass="FROZEN")
    assert "storage class you specified is not valid" in r["Error"]["Message"]

    # A copy keeps the content headers (COPY) or takes the request's (REPLACE); the storage
    # class is the request's, STANDARD by default; changing it alone makes a copy onto
    # itself legal.
    s3.copy_object(Bucket=bucket, Key="c1.txt", CopySource={"Bucket": bucket, "Key": "h.txt"})
    c1 = s3.head_object(Bucket=bucket, Key="c1.txt")
    assert c1["CacheControl"] == "max-age=60" and "StorageClass" not in c1
    s3.copy_object(Bucket=bucket, Key="c2.txt", CopySource={"Bucket": bucket, "Key": "h.txt"},
                   MetadataDirective="REPLACE", CacheControl="no-cache", StorageClass="GLACIER")
    c2 = s3.head_object(Bucket=bucket, Key="c2.txt")
    assert c2["CacheControl"] == "no-cache" and "ContentLanguage" not in c2 and c2["StorageClass"] == "GLACIER"
    s3.copy_object(Bucket=bucket, Key="c1.txt", CopySource={"Bucket": bucket, "Key": "c1.txt"}, StorageClass="ONEZONE_IA")
    assert s3.head_object(Bucket=bucket, Key="c1.txt")["StorageClass"] == "ONEZONE_IA"

    # A multipart upload's headers are the object's.
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp.txt", CacheControl="private", StorageClass="GLACIER_IR")
    part = s3.upload_part(Bucket=bucket, Key="mp.txt", UploadId=up["UploadId"], PartNumber=1, Body=b"m" * 10)
    s3.complete_multipart_upload(Bucket=bucket, Key="mp.txt", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    mp = s3.head_object(Bucket=bucket, Key="mp.txt")
    assert mp["CacheControl"] == "private" and mp["StorageClass"] == "GLACIER_IR"
    listed = {o["Key"]: o["StorageClass"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed["mp.txt"] == "GLACIER_IR" and listed["std.txt"] == "STANDARD"

    # Overwriting replaces them.
    s3.put_object(Bucket=bucket, Key="h.txt", Body=b"plain")
    plain = s3.head_object(Bucket=bucket, Key="h.txt")
    assert "CacheControl" not in plain and "StorageClass" not in plain


# --- listings ----------------------------------------------------------------------------


ODD_KEYS = ["odd/a+b c.txt", "odd/100%25 sure.txt", "odd/ü & <x>.txt", "odd/q?x=1#y.txt"]


@pytest.mark.parametrize("encoding", ["url", None])
def test_listings_round_trip_every_character(s3, bucket, encoding):
    for k in ODD_KEYS:
        s3.put_object(Bucket=bucket, Key=k, Body=b"o")
    raw = s3
    kw = {"EncodingType": encoding} if encoding else {}
    if encoding is None:
        # botocore asks for url encoding by default (and decodes it); turn that off.
        raw.meta.events.unregister("before-parameter-build.s3.ListObjectsV2", botocore.handlers.set_list_objects_encoding_type_url)
        raw.meta.events.unregister("before-parameter-build.s3.ListObjects", botocore.handlers.set_list_objects_encoding_type_url)
    try:
        # botocore decodes only the encoding it asked for itself: asked by the caller, the
        # keys come back as S3 encodes them.
        want = sorted(urllib.parse.quote(k, safe="/") if encoding else k for k in ODD_KEYS)
        v2 = s3.list_objects_v2(Bucket=bucket, Prefix="odd/", **kw)
        assert sorted(o["Key"] for o in v2["Contents"]) == want
        v1 = s3.list_objects(Bucket=bucket, Prefix="odd/", **kw)
        assert sorted(o["Key"] for o in v1["Contents"]) == want
        folded = s3.list_objects_v2(Bucket=bucket, Prefix="", Delimiter="/", **kw)
        assert [p["Prefix"] for p in folded["CommonPrefixes"]] == ["odd/"]
    finally:
        if encoding is None:
            raw.meta.events.register("before-parameter-build.s3.ListObjectsV2", botocore.handlers.set_list_objects_encoding_type_url)
            raw.meta.events.register("before-parameter-build.s3.ListObjects", botocore.handlers.set_list_objects_encoding_type_url)


def test_url_encoding_and_keys_xml_cannot_carry(s3, bucket):
    """Listings asked for `encoding-type=url` (as botocore always asks, and decodes) carry
    keys percent-encoded; a key XML 1.0 cannot carry at all is refused when written."""
    key = "enc/a b+c&<d>%é.txt"
    s3.put_object(Bucket=bucket, Key=key, Body=b"c")
    versions = s3.list_object_versions(Bucket=bucket, Prefix="enc/")
    assert [v["Key"] for v in versions["Versions"]] == [key]
    # botocore does not decode ListMultipartUploads: the answer shows the encoding.
    up = s3.create_multipart_upload(Bucket=bucket, Key=key)
    try:
        uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix="enc/", EncodingType="url")
        assert uploads["EncodingType"] == "url"
        assert [u["Key"] for u in uploads["Uploads"]] == [urllib.parse.quote(key, safe="/")]
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.list_objects_v2(Bucket=bucket, EncodingType="base64")
    assert error_code(e) == "InvalidArgument"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="ctl/\x01bell", Body=b"c")
    assert error_code(e) == "InvalidArgument"


def post_form(url, fields, filename, content):
    """POSTs a browser-style multipart/form-data upload; the file field goes last, as S3
    requires. Returns (status, body)."""
    boundary = "----sluice" + os.urandom(8).hex()
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(url, data=b"".join(parts), method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_presigned_post_policy_uploads(s3, bucket):
    """Browser uploads: a POST policy signed by generate_presigned_post, its conditions and
    expiry enforced."""
    post = s3.generate_presigned_post(
        Bucket=bucket, Key="posted/hello.txt",
        Fields={"success_action_status": "201"},
        Conditions=[{"success_action_status": "201"}, ["starts-with", "$key", "posted/"],
                    ["content-length-range", 1, 100]],
        ExpiresIn=300)
    status, body = post_form(post["url"], post["fields"], "hello.txt", b"posted bytes")
    assert status == 201, body
    assert b"<Key>posted/hello.txt</Key>" in body, body
    got = s3.get_object(Bucket=bucket, Key="posted/hello.txt")
    assert got["Body"].read() == b"posted bytes"

    # Over the content-length range: refused, nothing written.
    status, body = post_form(post["url"], post["fields"], "big.txt", b"x" * 101)
    assert status == 400, body
    assert s3.get_object(Bucket=bucket, Key="posted/hello.txt")["Body"].read() == b"posted bytes"

    # A field the policy does not cover, a tampered signature, an expired policy.
    status, body = post_form(post["url"], dict(post["fields"], **{"x-amz-meta-extra": "1"}), "a.txt", b"a")
    assert status in (400, 403), body
    sig_field = "x-amz-signature" if "x-amz-signature" in post["fields"] else "signature"
    tampered = dict(post["fields"])
    tampered[sig_field] = ("0" if tampered[sig_field][0] != "0" else "1") + tampered[sig_field][1:]
    status, body = post_form(post["url"], tampered, "b.txt", b"b")
    assert status == 403, body
    expired = s3.generate_presigned_post(Bucket=bucket, Key="posted/late.txt", ExpiresIn=-10)
    status, body = post_form(expired["url"], expired["fields"], "late.txt", b"late")
    assert status == 403, body


# --- bucket configurations -----------------------------------------------------------------


def test_bucket_configurations_as_infrastructure_tools_read_them(s3):
    """What an infrastructure tool does with a bucket: create it, set its configurations,
    read every one back, change them, and delete them (a Terraform aws_s3_bucket reads all
    of these, and stops at the first NotImplemented)."""
    name = unique("py-config")
    s3.create_bucket(Bucket=name)
    try:
        # The answers of a new bucket.
        enc = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]
        assert enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        assert s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
        assert "Status" not in s3.get_bucket_versioning(Bucket=name)
        assert "LoggingEnabled" not in s3.get_bucket_logging(Bucket=name)
        assert "Status" not in s3.get_bucket_accelerate_configuration(Bucket=name)
        assert s3.get_bucket_request_payment(Bucket=name)["Payer"] == "BucketOwner"
        acl = s3.get_bucket_acl(Bucket=name)
        assert acl["Grants"][0]["Permission"] == "FULL_CONTROL"
        for call, code in [
            (s3.get_bucket_cors, "NoSuchCORSConfiguration"),
            (s3.get_bucket_lifecycle_configuration, "NoSuchLifecycleConfiguration"),
            (s3.get_bucket_website, "NoSuchWebsiteConfiguration"),
            (s3.get_public_access_block, "NoSuchPublicAccessBlockConfiguration"),
            (s3.get_object_lock_configuration, "ObjectLockConfigurationNotFoundError"),
            (s3.get_bucket_replication, "ReplicationConfigurationNotFoundError"),
            (s3.get_bucket_policy, "NoSuchBucketPolicy"),
            (s3.get_bucket_tagging, "NoSuchTagSet"),
        ]:
            fails(code, call, Bucket=name)

        # Set each, read it back.
        cors = {"CORSRules": [{"AllowedOrigins": ["https://app.example.com"], "AllowedMethods": ["GET", "PUT"],
                               "AllowedHeaders": ["*"], "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 3000}]}
        s3.put_bucket_cors(Bucket=name, CORSConfiguration=cors)
        assert s3.get_bucket_cors(Bucket=name)["CORSRules"] == cors["CORSRules"]
        r = fails("InvalidRequest", s3.put_bucket_cors, Bucket=name,
                  CORSConfiguration={"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["PATCH"]}]})
        assert "Unsupported method is PATCH" in r["Error"]["Message"]

        lifecycle = {"Rules": [{"ID": "expire-tmp", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
                                "Expiration": {"Days": 7},
                                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]}
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration=lifecycle)
        rules = s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
        assert rules[0]["ID"] == "expire-tmp" and rules[0]["Expiration"] == {"Days": 7}
        assert rules[0]["Filter"] == {"Prefix": "tmp/"}

        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/data"},
             "BucketKeyEnabled": True}]})
        rule = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"][0]
        assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/data"}
        fails("InvalidArgument", s3.put_bucket_encryption, Bucket=name, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "ROT13"}}]})

        block = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": False, "RestrictPublicBuckets": False}
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=block)
        assert s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"] == block

        s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerPreferred"}]})
        assert s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerPreferred"}]

        s3.put_bucket_website(Bucket=name, WebsiteConfiguration={"IndexDocument": {"Suffix": "index.html"}, "ErrorDocument": {"Key": "404.html"}})
        site = s3.get_bucket_website(Bucket=name)
        assert site["IndexDocument"] == {"Suffix": "index.html"} and site["ErrorDocument"] == {"Key": "404.html"}

        s3.put_bucket_logging(Bucket=name, BucketLoggingStatus={"LoggingEnabled": {"TargetBucket": name, "TargetPrefix": "logs/"}})
        assert s3.get_bucket_logging(Bucket=name)["LoggingEnabled"] == {"TargetBucket": name, "TargetPrefix": "logs/"}
        fails("InvalidTargetBucketForLogging", s3.put_bucket_logging, Bucket=name,
              BucketLoggingStatus={"LoggingEnabled": {"TargetBucket": unique("py-none"), "TargetPrefix": "x/"}})

        s3.put_bucket_accelerate_configuration(Bucket=name, AccelerateConfiguration={"Status": "Suspended"})
        assert s3.get_bucket_accelerate_configuration(Bucket=name)["Status"] == "Suspended"
        s3.put_bucket_request_payment(Bucket=name, RequestPaymentConfiguration={"Payer": "Requester"})
        assert s3.get_bucket_request_payment(Bucket=name)["Payer"] == "Requester"

        # ACLs are enabled (BucketOwnerPreferred), and the public access block above
        # refuses public ones.
        s3.put_bucket_acl(Bucket=name, ACL="private")
        fails("AccessDenied", s3.put_bucket_acl, Bucket=name, ACL="public-read")

        # Delete what can be deleted; the answers are a new bucket's again.
        s3.delete_bucket_cors(Bucket=name)
        s3.delete_bucket_lifecycle(Bucket=name)
        s3.delete_bucket_website(Bucket=name)
        s3.delete_public_access_block(Bucket=name)
        s3.delete_bucket_encryption(Bucket=name)
        s3.delete_bucket_ownership_controls(Bucket=name)
        fails("NoSuchCORSConfiguration", s3.get_bucket_cors, Bucket=name)
        fails("NoSuchLifecycleConfiguration", s3.get_bucket_lifecycle_configuration, Bucket=name)
        fails("NoSuchWebsiteConfiguration", s3.get_bucket_website, Bucket=name)
        fails("NoSuchPublicAccessBlockConfiguration", s3.get_public_access_block, Bucket=name)
        enc = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]
        assert enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"

        # A bucket created again starts without the old one's configurations.
        s3.put_bucket_cors(Bucket=name, CORSConfiguration=cors)
    finally:
        s3.delete_bucket(Bucket=name)
    s3.create_bucket(Bucket=name)
    fails("NoSuchCORSConfiguration", s3.get_bucket_cors, Bucket=name)
    s3.delete_bucket(Bucket=name)
    fails("NoSuchBucket", s3.get_bucket_cors, Bucket=name)


# --- CORS, enforced ----------------------------------------------------------------------


def raw(edge, method, path, headers=None):
    """An unsigned request as a browser sends it: (status, headers, body)."""
    req = urllib.request.Request(edge + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def xml_field(body, name):
    text = body.decode()
    start = text.index(f"<{name}>") + len(name) + 2
    return text[start:text.index(f"</{name}>")]


def test_cors_preflights_and_response_headers_follow_the_buckets_rules(s3, edge, bucket):
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a")
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "PUT"}

    status, _, body = raw(edge, "OPTIONS", f"/{bucket}/a.txt", preflight)
    assert status == 403 and xml_field(body, "Code") == "AccessForbidden"
    assert xml_field(body, "Message") == "CORSResponse: CORS is not enabled for this bucket."
    status, _, body = raw(edge, "OPTIONS", f"/{bucket}/a.txt", {"Access-Control-Request-Method": "PUT"})
    assert status == 400 and xml_field(body, "Code") == "BadRequest"
    assert xml_field(body, "Message") == "Insufficient information. Origin request header needed."
    status, _, body = raw(edge, "OPTIONS", f"/{unique('py-missing')}/a.txt", preflight)
    assert status == 403 and xml_field(body, "Message") == "CORSResponse: Bucket not found"

    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [
        {"AllowedOrigins": ["https://*.example"], "AllowedMethods": ["PUT", "GET"],
         "AllowedHeaders": ["Content-Type", "x-amz-*"], "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 600},
        {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]},
    ]})
    status, h, body = raw(edge, "OPTIONS", f"/{bucket}/a.txt",
                          {**preflight, "Access-Control-Request-Headers": "content-type, X-Amz-Date"})
    assert status == 200, body
    assert h["Access-Control-Allow-Origin"] == "https://app.example"
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert h["Access-Control-Allow-Methods"] == "PUT, GET"
    assert h["Access-Control-Allow-Headers"] == "content-type, x-amz-date"
    assert h["Access-Control-Max-Age"] == "600"
    assert h["Access-Control-Expose-Headers"] == "ETag"
    assert "Origin" in h["Vary"]
    # The any-origin rule: `*`, without credentials.
    status, h, _ = raw(edge, "OPTIONS", f"/{bucket}/a.txt",
                       {"Origin": "https://elsewhere.test", "Access-Control-Request-Method": "GET"})
    assert status == 200 and h["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in h
    # No rule allows this origin to PUT, nor a header outside AllowedHeaders.
    for headers in (
        {"Origin": "https://elsewhere.test", "Access-Control-Request-Method": "PUT"},
        {**preflight, "Access-Control-Request-Headers": "authorization"},
        {"Origin": "https://app.example/", "Access-Control-Request-Method": "PUT"},
    ):
        status, _, body = raw(edge, "OPTIONS", f"/{bucket}/a.txt", headers)
        assert status == 403, headers
        assert xml_field(body, "Message").startswith("CORSResponse: This CORS request is not allowed.")
        assert xml_field(body, "ResourceType") == "OBJECT"

    # The actual request carries the matching rule's headers; without a match, none.
    origin = {"Origin": "https://app.example"}
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "a.txt"})
    path = url[len(edge):]
    status, h, body = raw(edge, "GET", path, origin)
    assert status == 200 and body == b"a"
    assert h["Access-Control-Allow-Origin"] == "https://app.example"
    assert h["Access-Control-Expose-Headers"] == "ETag"
    status, h, _ = raw(edge, "GET", path, {"Origin": "https://elsewhere.test"})
    assert status == 200 and h["Access-Control-Allow-Origin"] == "*"
    status, h, _ = raw(edge, "GET", path)
    assert status == 200 and "Access-Control-Allow-Origin" not in h
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "b.txt"})
    status, h, _ = raw(edge, "PUT", put_url[len(edge):], {"Origin": "https://elsewhere.test"})
    assert status == 200 and "Access-Control-Allow-Origin" not in h

    fails("InvalidRequest", s3.put_bucket_cors, Bucket=bucket, CORSConfiguration={"CORSRules": [
        {"AllowedOrigins": ["https://*.*.example"], "AllowedMethods": ["GET"]}]})
    s3.delete_bucket_cors(Bucket=bucket)
    status, _, body = raw(edge, "OPTIONS", f"/{bucket}/a.txt", preflight)
    assert status == 403 and xml_field(body, "Message") == "CORSResponse: CORS is not enabled for this bucket."


# --- lifecycle rules, applied ------------------------------------------------------------


def test_lifecycle_rules_expire_objects_and_abort_uploads(s3, bucket):
    """The server under test applies lifecycle rules every second (clients.rs)."""
    yesterday = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0)
    for key, tagging in (("logs/old.txt", "keep=no"), ("logs/kept.txt", "keep=yes"), ("data/x.txt", "keep=no")):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x", Tagging=tagging)
    s3.put_object(Bucket=bucket, Key="big/large.bin", Body=b"x" * 2048)
    s3.put_object(Bucket=bucket, Key="big/small.bin", Body=b"x")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="tmp/part.bin")["UploadId"]

    # S3's checks first.
    def lifecycle(*rules):
        return {"Rules": list(rules)}

    date_rule = {"ID": "old-logs", "Status": "Enabled", "Expiration": {"Date": yesterday},
                 "Filter": {"And": {"Prefix": "logs/", "Tags": [{"Key": "keep", "Value": "no"}]}}}
    fails("InvalidArgument", s3.put_bucket_lifecycle_configuration, Bucket=bucket, LifecycleConfiguration=lifecycle(
        {"ID": "a", "Status": "Enabled", "Expiration": {"Days": 0}, "Filter": {"Prefix": ""}}))
    fails("InvalidArgument", s3.put_bucket_lifecycle_configuration, Bucket=bucket, LifecycleConfiguration=lifecycle(
        date_rule, {**date_rule, "Filter": {"Prefix": "other/"}}))
    fails("InvalidArgument", s3.put_bucket_lifecycle_configuration, Bucket=bucket, LifecycleConfiguration=lifecycle(
        {"ID": "noon", "Status": "Enabled", "Expiration": {"Date": yesterday + datetime.timedelta(hours=12)},
         "Filter": {"Prefix": ""}}))
    fails("InvalidRequest", s3.put_bucket_lifecycle_configuration, Bucket=bucket, LifecycleConfiguration=lifecycle(
        {"ID": "t", "Status": "Enabled", "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
         "Filter": {"Tag": {"Key": "keep", "Value": "no"}}}))

    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=lifecycle(
        date_rule,
        {"ID": "large", "Status": "Enabled", "Expiration": {"Date": yesterday},
         "Filter": {"And": {"Prefix": "big/", "ObjectSizeGreaterThan": 1024}}},
        {"ID": "disabled", "Status": "Disabled", "Expiration": {"Date": yesterday}, "Filter": {"Prefix": "data/"}},
        # Days count from now: nothing is due for a day (the sweep must not touch it).
        {"ID": "uploads", "Status": "Enabled", "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
         "Filter": {"Prefix": "tmp/"}},
    ))

    def keys():
        return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))

    eventually(lambda: keys() == ["big/small.bin", "data/x.txt", "logs/kept.txt"], "the expired objects to go",
               timeout=30)
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [upload], "not due for a day"
    s3.abort_multipart_upload(Bucket=bucket, Key="tmp/part.bin", UploadId=upload)


# --- flexible checksums ------------------------------------------------------------------


def test_flexible_checksums_are_verified_kept_and_returned(s3, bucket):
    import base64
    import zlib

    body = b"hello world" * 1000
    sha256 = base64.b64encode(hashlib.sha256(body).digest()).decode()
    crc32 = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()

    out = s3.put_object(Bucket=bucket, Key="sha.txt", Body=body, ChecksumAlgorithm="SHA256")
    assert out["ChecksumSHA256"] == sha256
    head = s3.head_object(Bucket=bucket, Key="sha.txt", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == sha256
    assert "ChecksumSHA256" not in s3.head_object(Bucket=bucket, Key="sha.txt")
    # boto3 checks the body it reads against the checksum the answer carries.
    got = s3.get_object(Bucket=bucket, Key="sha.txt", ChecksumMode="ENABLED")
    assert got["ChecksumSHA256"] == sha256 and got["Body"].read() == body

    out = s3.put_object(Bucket=bucket, Key="crc.txt", Body=body, ChecksumCRC32=crc32)
    assert out["ChecksumCRC32"] == crc32
    # A value that does not match the bytes: nothing is written.
    r = fails("BadDigest", s3.put_object, Bucket=bucket, Key="bad.txt", Body=body, ChecksumCRC32="AAAAAA==")
    assert r["Error"]["Message"] == "The CRC32 you specified did not match the calculated checksum."
    fails("404", s3.head_object, Bucket=bucket, Key="bad.txt")
    fails("InvalidRequest", s3.put_object, Bucket=bucket, Key="bad.txt", Body=body, ChecksumCRC32="not-base64!")

    # No algorithm named: whatever the SDK sends by default, or CRC64NVME as S3 computes.
    s3.put_object(Bucket=bucket, Key="plain.txt", Body=body)
    head = s3.head_object(Bucket=bucket, Key="plain.txt", ChecksumMode="ENABLED")
    assert any(k in head for k in ("ChecksumCRC32", "ChecksumCRC64NVME")), head

    # A copy keeps the source's algorithm, computed again over the copied bytes.
    s3.copy_object(Bucket=bucket, Key="copy.txt", CopySource={"Bucket": bucket, "Key": "sha.txt"})
    assert s3.head_object(Bucket=bucket, Key="copy.txt", ChecksumMode="ENABLED")["ChecksumSHA256"] == sha256


def test_operations_sluice_does_not_implement_change_nothing(s3, bucket):
    """s3s would take these for PutObject / DeleteObject / DeleteBucket; they are refused."""
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"kept")
    fails("NotImplemented", s3.rename_object, Bucket=bucket, Key="b.txt", RenameSource=f"{bucket}/a.txt")
    fails("NotImplemented", s3.put_object_annotation, Bucket=bucket, Key="a.txt", AnnotationName="n",
          AnnotationPayload=b"overwritten?")
    fails("NotImplemented", s3.delete_object_annotation, Bucket=bucket, Key="a.txt", AnnotationName="n")
    fails("NotImplemented", s3.update_object_encryption, Bucket=bucket, Key="a.txt",
          ObjectEncryption={"SSEKMS": {"KMSKeyArn": "arn:aws:kms:us-east-2:000000000000:key/k"}})
    assert s3.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == b"kept"
    fails("404", s3.head_object, Bucket=bucket, Key="b.txt")
    empty = unique("py-empty")
    s3.create_bucket(Bucket=empty)
    fails("NotImplemented", s3.delete_bucket_metadata_configuration, Bucket=empty)
    s3.head_bucket(Bucket=empty)
    s3.delete_bucket(Bucket=empty)
    # A checksum of an algorithm sluice does not compute is refused, not ignored.
    fails("InvalidRequest", s3.put_object, Bucket=bucket, Key="c.txt", Body=b"x", ChecksumSHA512="A" * 88)


def test_acl_headers_and_version_ids_on_an_unversioned_bucket(s3, bucket):
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a", ACL="bucket-owner-full-control")
    r = fails("AccessControlListNotSupported", s3.put_object, Bucket=bucket, Key="b.txt", Body=b"b", ACL="public-read")
    assert r["Error"]["Message"] == "The bucket does not allow ACLs"
    fails("AccessControlListNotSupported", s3.create_multipart_upload, Bucket=bucket, Key="c", GrantRead="uri=x")
    fails("404", s3.head_object, Bucket=bucket, Key="b.txt")
    assert s3.get_object(Bucket=bucket, Key="a.txt", VersionId="null")["Body"].read() == b"a"
    fails("InvalidArgument", s3.get_object, Bucket=bucket, Key="a.txt", VersionId="3HL4kqtJlcpXroDTDmJ")


def test_get_object_attributes(s3, bucket):
    import base64

    body = b"attributes" * 100
    s3.put_object(Bucket=bucket, Key="one", Body=body, ChecksumAlgorithm="SHA256", StorageClass="STANDARD_IA")
    attrs = s3.get_object_attributes(Bucket=bucket, Key="one",
                                     ObjectAttributes=["ETag", "Checksum", "ObjectSize", "StorageClass", "ObjectParts"])
    # S3 answers this ETag without quotes; sluice's XML layer (s3s) always quotes ETags.
    assert attrs["ETag"].strip('"') == md5(body)
    assert attrs["ObjectSize"] == len(body)
    assert attrs["StorageClass"] == "STANDARD_IA"
    assert attrs["Checksum"]["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert "ObjectParts" not in attrs, "a single-part object has no parts"
    only = s3.get_object_attributes(Bucket=bucket, Key="one", ObjectAttributes=["ObjectSize"])
    assert "ETag" not in only and only["ObjectSize"] == len(body)

    part = 5 * 1024 * 1024
    up = s3.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="multi", UploadId=up, PartNumber=n, Body=b"p" * (part if n < 3 else 10))["ETag"]
             for n in (1, 2, 3)]
    s3.complete_multipart_upload(Bucket=bucket, Key="multi", UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2, 3), etags)]})
    parts = s3.get_object_attributes(Bucket=bucket, Key="multi", ObjectAttributes=["ObjectParts"], MaxParts=2)["ObjectParts"]
    assert parts["TotalPartsCount"] == 3 and parts["IsTruncated"] is True
    assert [(p["PartNumber"], p["Size"]) for p in parts["Parts"]] == [(1, part), (2, part)]
    rest = s3.get_object_attributes(Bucket=bucket, Key="multi", ObjectAttributes=["ObjectParts"],
                                    PartNumberMarker=parts["NextPartNumberMarker"])["ObjectParts"]
    assert [(p["PartNumber"], p["Size"]) for p in rest["Parts"]] == [(3, 10)] and rest["IsTruncated"] is False
    fails("NoSuchKey", s3.get_object_attributes, Bucket=bucket, Key="missing", ObjectAttributes=["ETag"])


def test_multipart_checksums_per_part_and_of_the_whole(s3, bucket):
    import base64
    import zlib

    part = 5 * 1024 * 1024
    chunks = [b"a" * part, b"b" * 1000]
    crc = lambda data: base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()  # noqa: E731

    # Composite (the default type): the CRC32 of the parts' CRC32s, with the part count.
    up = s3.create_multipart_upload(Bucket=bucket, Key="composite", ChecksumAlgorithm="CRC32")["UploadId"]
    done = []
    for n, data in enumerate(chunks, 1):
        out = s3.upload_part(Bucket=bucket, Key="composite", UploadId=up, PartNumber=n, Body=data,
                             ChecksumAlgorithm="CRC32")
        assert out["ChecksumCRC32"] == crc(data)
        done.append({"PartNumber": n, "ETag": out["ETag"], "ChecksumCRC32": out["ChecksumCRC32"]})
    listed = s3.list_parts(Bucket=bucket, Key="composite", UploadId=up)["Parts"]
    assert [p["ChecksumCRC32"] for p in listed] == [crc(c) for c in chunks]
    fails("BadDigest", s3.upload_part, Bucket=bucket, Key="composite", UploadId=up, PartNumber=3, Body=b"x",
          ChecksumCRC32="AAAAAA==")
    wrong = [dict(done[0], ChecksumCRC32=crc(b"other")), done[1]]
    fails("InvalidPart", s3.complete_multipart_upload, Bucket=bucket, Key="composite", UploadId=up,
          MultipartUpload={"Parts": wrong})
    out = s3.complete_multipart_upload(Bucket=bucket, Key="composite", UploadId=up, MultipartUpload={"Parts": done})
    raw = b"".join(base64.b64decode(crc(c)) for c in chunks)
    expected = f"{crc(raw)}-2"
    assert out["ChecksumCRC32"] == expected
    assert s3.head_object(Bucket=bucket, Key="composite", ChecksumMode="ENABLED")["ChecksumCRC32"] == expected

    # Full object: the parts' CRCs combined into the CRC of the whole, checked against the client's.
    up = s3.create_multipart_upload(Bucket=bucket, Key="full", ChecksumAlgorithm="CRC32",
                                    ChecksumType="FULL_OBJECT")["UploadId"]
    done = []
    for n, data in enumerate(chunks, 1):
        out = s3.upload_part(Bucket=bucket, Key="full", UploadId=up, PartNumber=n, Body=data, ChecksumAlgorithm="CRC32")
        done.append({"PartNumber": n, "ETag": out["ETag"]})
    whole = crc(b"".join(chunks))
    fails("BadDigest", s3.complete_multipart_upload, Bucket=bucket, Key="full", UploadId=up,
          MultipartUpload={"Parts": done}, ChecksumType="FULL_OBJECT", ChecksumCRC32=crc(b"nope"))
    out = s3.complete_multipart_upload(Bucket=bucket, Key="full", UploadId=up, MultipartUpload={"Parts": done},
                                       ChecksumType="FULL_OBJECT", ChecksumCRC32=whole)
    assert out["ChecksumCRC32"] == whole
    got = s3.get_object(Bucket=bucket, Key="full", ChecksumMode="ENABLED")
    assert got["ChecksumCRC32"] == whole and got["Body"].read() == b"".join(chunks)

    # The type is remembered from CreateMultipartUpload: a completion that does not repeat it
    # still makes a full-object checksum, and the creation answers what it was given.
    created = s3.create_multipart_upload(Bucket=bucket, Key="remembered", ChecksumAlgorithm="CRC32",
                                         ChecksumType="FULL_OBJECT")
    assert (created["ChecksumAlgorithm"], created["ChecksumType"]) == ("CRC32", "FULL_OBJECT")
    up = created["UploadId"]
    done = []
    for n, data in enumerate(chunks, 1):
        out = s3.upload_part(Bucket=bucket, Key="remembered", UploadId=up, PartNumber=n, Body=data,
                             ChecksumAlgorithm="CRC32")
        done.append({"PartNumber": n, "ETag": out["ETag"]})
    out = s3.complete_multipart_upload(Bucket=bucket, Key="remembered", UploadId=up, MultipartUpload={"Parts": done})
    assert out["ChecksumCRC32"] == whole

    # What S3 refuses: a type without an algorithm, FULL_OBJECT with a SHA, and parts
    # without the algorithm the upload was created for.
    fails("InvalidRequest", s3.create_multipart_upload, Bucket=bucket, Key="bad", ChecksumAlgorithm="SHA256",
          ChecksumType="FULL_OBJECT")
    up = s3.create_multipart_upload(Bucket=bucket, Key="mixed", ChecksumAlgorithm="CRC32C")["UploadId"]
    out = s3.upload_part(Bucket=bucket, Key="mixed", UploadId=up, PartNumber=1, Body=b"x", ChecksumAlgorithm="CRC32")
    fails("InvalidRequest", s3.complete_multipart_upload, Bucket=bucket, Key="mixed", UploadId=up,
          MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": out["ETag"]}]})
    s3.abort_multipart_upload(Bucket=bucket, Key="mixed", UploadId=up)


def test_buckets_in_regions(s3, edge, region):
    from conftest import client

    other = "us-west-2" if region != "us-west-2" else "eu-west-1"
    west = client("s3", edge, other, s3={"addressing_style": "path"})
    name = unique("py-region")
    r = fails("IllegalLocationConstraintException", west.create_bucket, Bucket=name,
              CreateBucketConfiguration={"LocationConstraint": "ap-south-1"})
    assert "location constraint is incompatible" in r["Error"]["Message"]
    west.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": other})
    try:
        assert west.get_bucket_location(Bucket=name)["LocationConstraint"] == other
        assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] == other, "answered from any region"
        head = west.head_bucket(Bucket=name)
        assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == other
        west.put_object(Bucket=name, Key="k", Body=b"v")
        # Asked in the wrong region: 301 PermanentRedirect naming the bucket's region, which
        # boto3 follows (it signs again for that region).
        raw = boto3.session.Session().client(
            "s3", endpoint_url=edge, region_name=region,
            aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))
        assert raw.get_object(Bucket=name, Key="k")["Body"].read() == b"v"
        url = s3.generate_presigned_url("get_object", Params={"Bucket": name, "Key": "k"})
        try:
            urllib.request.urlopen(urllib.request.Request(url))
            raise AssertionError("a URL signed for the wrong region was served")
        except urllib.error.HTTPError as e:
            assert e.code == 301 and e.headers["x-amz-bucket-region"] == other
    finally:
        west.delete_object(Bucket=name, Key="k")
        west.delete_bucket(Bucket=name)
