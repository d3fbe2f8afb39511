"""S3 object versioning through boto3 (path-style addressing): bucket versioning states,
object versions, delete markers, ListObjectVersions, and the operations that take a
VersionId (GET, HEAD, DELETE, DeleteObjects, CopyObject, tagging).

Every test makes its own bucket and, at the end, deletes every version and delete marker
in it (by VersionId) and then the bucket."""

import datetime
import hashlib

import botocore.exceptions
import pytest

from conftest import error_code, fails, refused, status, unique, versioned_bucket

MIB = 1024 * 1024


def md5(data):
    return hashlib.md5(data).hexdigest()


def listing(s3, bucket, **kw):
    """One ListObjectVersions call, as ([(key, version, is latest)], [(key, marker, is latest)], answer)."""
    out = s3.list_object_versions(Bucket=bucket, **kw)
    versions = [(v["Key"], v["VersionId"], v["IsLatest"]) for v in out.get("Versions", [])]
    markers = [(m["Key"], m["VersionId"], m["IsLatest"]) for m in out.get("DeleteMarkers", [])]
    return versions, markers, out


def body(s3, bucket, key, **kw):
    return s3.get_object(Bucket=bucket, Key=key, **kw)["Body"].read()


# --- the bucket's versioning state ----------------------------------------------------------


def test_bucket_versioning_states(s3):
    with versioned_bucket(s3) as b:
        # A bucket that was never versioned answers no status at all.
        got = s3.get_bucket_versioning(Bucket=b)
        assert "Status" not in got and "MFADelete" not in got, got

        s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        assert s3.get_bucket_versioning(Bucket=b)["Status"] == "Enabled"
        s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Suspended"})
        assert s3.get_bucket_versioning(Bucket=b)["Status"] == "Suspended"
        s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        assert s3.get_bucket_versioning(Bucket=b)["Status"] == "Enabled"

        # MFA delete needs the x-amz-mfa header of a root user's device: refused without it.
        refused(s3.put_bucket_versioning, Bucket=b,
                VersioningConfiguration={"Status": "Enabled", "MFADelete": "Enabled"})
        # botocore does not check enum values: an unknown status reaches the server (S3
        # answers 400 MalformedXML).
        r = refused(s3.put_bucket_versioning, Bucket=b, VersioningConfiguration={"Status": "Disabled"})
        assert status(r) == 400, r
        # A refused request changes nothing.
        got = s3.get_bucket_versioning(Bucket=b)
        assert got["Status"] == "Enabled" and got.get("MFADelete") != "Enabled", got

    missing = unique("py-missing")
    fails("NoSuchBucket", s3.get_bucket_versioning, Bucket=missing)
    fails("NoSuchBucket", s3.put_bucket_versioning, Bucket=missing, VersioningConfiguration={"Status": "Enabled"})
    fails("NoSuchBucket", s3.list_object_versions, Bucket=missing)


# --- versions of an object -------------------------------------------------------------------


def test_each_put_makes_a_new_version(s3):
    with versioned_bucket(s3, "Enabled") as b:
        first = s3.put_object(Bucket=b, Key="k", Body=b"first", Metadata={"n": "1"})
        second = s3.put_object(Bucket=b, Key="k", Body=b"second body", Metadata={"n": "2"})
        v1, v2 = first.get("VersionId"), second.get("VersionId")
        assert v1 and v2, (first, second)
        assert v1 != v2 and "null" not in (v1, v2)

        got = s3.get_object(Bucket=b, Key="k")
        assert got["Body"].read() == b"second body"
        assert got["VersionId"] == v2
        assert got["ETag"] == f'"{md5(b"second body")}"'

        old = s3.get_object(Bucket=b, Key="k", VersionId=v1)
        assert old["Body"].read() == b"first"
        assert old["VersionId"] == v1
        assert old["ETag"] == f'"{md5(b"first")}"'
        assert old["Metadata"] == {"n": "1"}
        assert s3.get_object(Bucket=b, Key="k", VersionId=v2)["Body"].read() == b"second body"
        assert body(s3, b, "k", VersionId=v1, Range="bytes=1-3") == b"irs"

        head = s3.head_object(Bucket=b, Key="k", VersionId=v1)
        assert head["ContentLength"] == len(b"first")
        assert head["VersionId"] == v1
        assert head["Metadata"] == {"n": "1"}
        current = s3.head_object(Bucket=b, Key="k")
        assert current["VersionId"] == v2 and current["ContentLength"] == len(b"second body")

        # The key is listed once, with its current version.
        listed = s3.list_objects_v2(Bucket=b)["Contents"]
        assert [(o["Key"], o["Size"]) for o in listed] == [("k", len(b"second body"))]


# --- delete markers --------------------------------------------------------------------------


def test_delete_without_a_version_id_adds_a_delete_marker(s3):
    with versioned_bucket(s3, "Enabled") as b:
        v1 = s3.put_object(Bucket=b, Key="k", Body=b"one")["VersionId"]
        out = s3.delete_object(Bucket=b, Key="k")
        assert status(out) == 204
        assert out["DeleteMarker"] is True
        marker = out["VersionId"]
        assert marker and marker not in (v1, "null")

        # The key is gone for reads and listings that do not name a version.
        r = fails("NoSuchKey", s3.get_object, Bucket=b, Key="k")
        assert status(r) == 404
        assert r["ResponseMetadata"]["HTTPHeaders"].get("x-amz-delete-marker") == "true", r
        assert status(refused(s3.head_object, Bucket=b, Key="k")) == 404
        assert s3.list_objects_v2(Bucket=b).get("KeyCount", 0) == 0
        assert "Contents" not in s3.list_objects_v2(Bucket=b)

        # The older version is still there.
        old = s3.get_object(Bucket=b, Key="k", VersionId=v1)
        assert old["Body"].read() == b"one" and old["VersionId"] == v1

        # A delete marker has no data: naming it is 405 Method Not Allowed.
        r = refused(s3.get_object, Bucket=b, Key="k", VersionId=marker)
        assert status(r) == 405, r
        assert r["Error"]["Code"] == "MethodNotAllowed", r
        r = refused(s3.head_object, Bucket=b, Key="k", VersionId=marker)
        assert status(r) == 405, r

        # Another simple DELETE adds another marker.
        again = s3.delete_object(Bucket=b, Key="k")
        assert again["DeleteMarker"] is True
        assert again["VersionId"] not in (marker, v1)
        versions, markers, _ = listing(s3, b)
        assert versions == [("k", v1, False)]
        assert markers == [("k", again["VersionId"], True), ("k", marker, False)]


def test_deleting_the_delete_marker_brings_the_object_back(s3):
    with versioned_bucket(s3, "Enabled") as b:
        s3.put_object(Bucket=b, Key="k", Body=b"one")
        v2 = s3.put_object(Bucket=b, Key="k", Body=b"two")["VersionId"]
        marker = s3.delete_object(Bucket=b, Key="k")["VersionId"]
        fails("NoSuchKey", s3.get_object, Bucket=b, Key="k")

        out = s3.delete_object(Bucket=b, Key="k", VersionId=marker)
        assert out["VersionId"] == marker
        assert out.get("DeleteMarker") is True, "what was deleted was a delete marker"

        got = s3.get_object(Bucket=b, Key="k")
        assert got["Body"].read() == b"two" and got["VersionId"] == v2
        assert [o["Key"] for o in s3.list_objects_v2(Bucket=b)["Contents"]] == ["k"]
        versions, markers, _ = listing(s3, b)
        assert markers == []
        assert [(k, latest) for k, _, latest in versions] == [("k", True), ("k", False)]
        assert versions[0][1] == v2


def test_deleting_the_current_version_makes_the_previous_one_current(s3):
    with versioned_bucket(s3, "Enabled") as b:
        v1 = s3.put_object(Bucket=b, Key="k", Body=b"one")["VersionId"]
        v2 = s3.put_object(Bucket=b, Key="k", Body=b"two")["VersionId"]

        out = s3.delete_object(Bucket=b, Key="k", VersionId=v2)
        assert status(out) == 204
        assert out["VersionId"] == v2
        assert not out.get("DeleteMarker"), "a permanent delete adds no marker"

        got = s3.get_object(Bucket=b, Key="k")
        assert got["Body"].read() == b"one" and got["VersionId"] == v1
        assert s3.head_object(Bucket=b, Key="k")["VersionId"] == v1
        versions, markers, _ = listing(s3, b)
        assert versions == [("k", v1, True)] and markers == []
        r = fails("NoSuchVersion", s3.get_object, Bucket=b, Key="k", VersionId=v2)
        assert status(r) == 404

        # Deleting a noncurrent version leaves the current one alone.
        v3 = s3.put_object(Bucket=b, Key="k", Body=b"three")["VersionId"]
        s3.delete_object(Bucket=b, Key="k", VersionId=v1)
        got = s3.get_object(Bucket=b, Key="k")
        assert got["Body"].read() == b"three" and got["VersionId"] == v3
        versions, _, _ = listing(s3, b)
        assert versions == [("k", v3, True)]


def test_unknown_version_ids(s3):
    with versioned_bucket(s3, "Enabled") as b:
        v1 = s3.put_object(Bucket=b, Key="k", Body=b"one")["VersionId"]
        v2 = s3.put_object(Bucket=b, Key="k", Body=b"two")["VersionId"]
        s3.delete_object(Bucket=b, Key="k", VersionId=v1)
        s3.put_object(Bucket=b, Key="other", Body=b"other")

        # A version id of the right shape that no longer exists.
        r = fails("NoSuchVersion", s3.get_object, Bucket=b, Key="k", VersionId=v1)
        assert status(r) == 404
        assert status(refused(s3.head_object, Bucket=b, Key="k", VersionId=v1)) == 404
        # A version of another key is not a version of this one.
        r = fails("NoSuchVersion", s3.get_object, Bucket=b, Key="other", VersionId=v2)
        assert status(r) == 404
        # A made-up id: S3 answers InvalidArgument (400) when it cannot be one of its ids.
        r = refused(s3.get_object, Bucket=b, Key="k", VersionId="does-not-exist-123")
        assert r["Error"]["Code"] in {"NoSuchVersion", "InvalidArgument"}, r
        assert status(r) in (400, 404)
        # Nothing was changed by asking.
        assert body(s3, b, "k") == b"two"


# --- ListObjectVersions ----------------------------------------------------------------------


def test_list_object_versions(s3):
    with versioned_bucket(s3, "Enabled") as b:
        a1v1 = s3.put_object(Bucket=b, Key="a/1", Body=b"a1-first")["VersionId"]
        a1v2 = s3.put_object(Bucket=b, Key="a/1", Body=b"a1-second!")["VersionId"]
        a2v1 = s3.put_object(Bucket=b, Key="a/2", Body=b"a2")["VersionId"]
        bv1 = s3.put_object(Bucket=b, Key="b", Body=b"bee")["VersionId"]
        bm = s3.delete_object(Bucket=b, Key="b")["VersionId"]
        sizes = {a1v1: len(b"a1-first"), a1v2: len(b"a1-second!"), a2v1: 2, bv1: 3}
        etags = {a1v1: md5(b"a1-first"), a1v2: md5(b"a1-second!"), a2v1: md5(b"a2"), bv1: md5(b"bee")}

        versions, markers, out = listing(s3, b)
        # By key, newest first within a key; one latest entry per key.
        assert versions == [
            ("a/1", a1v2, True),
            ("a/1", a1v1, False),
            ("a/2", a2v1, True),
            ("b", bv1, False),
        ]
        assert markers == [("b", bm, True)]
        assert out["IsTruncated"] is False
        assert out["Name"] == b
        for v in out["Versions"]:
            assert v["Size"] == sizes[v["VersionId"]], v
            assert v["ETag"] == f'"{etags[v["VersionId"]]}"', v
            assert v["StorageClass"] == "STANDARD", v
            assert isinstance(v["LastModified"], datetime.datetime)
        assert isinstance(out["DeleteMarkers"][0]["LastModified"], datetime.datetime)

        # Prefix.
        versions, markers, out = listing(s3, b, Prefix="a/")
        assert [(k, v) for k, v, _ in versions] == [("a/1", a1v2), ("a/1", a1v1), ("a/2", a2v1)]
        assert markers == []
        assert out["Prefix"] == "a/"

        # Delimiter: a/ is folded into a common prefix; b's version and marker stay.
        versions, markers, out = listing(s3, b, Delimiter="/")
        assert out["CommonPrefixes"] == [{"Prefix": "a/"}]
        assert versions == [("b", bv1, False)]
        assert markers == [("b", bm, True)]

        # KeyMarker alone: the keys after it.
        versions, markers, _ = listing(s3, b, KeyMarker="a/1")
        assert [(k, v) for k, v, _ in versions] == [("a/2", a2v1), ("b", bv1)]
        assert [(k, v) for k, v, _ in markers] == [("b", bm)]

        # One entry a page, by hand: versions and markers together, in the listing's order.
        expected = [("a/1", a1v2), ("a/1", a1v1), ("a/2", a2v1), ("b", bm), ("b", bv1)]
        seen = []
        markers_kw = {}
        for _ in range(2 * len(expected)):
            page = s3.list_object_versions(Bucket=b, MaxKeys=1, **markers_kw)
            entries = [(e["Key"], e["VersionId"]) for e in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            assert len(entries) <= 1, page
            seen.extend(entries)
            if not page["IsTruncated"]:
                break
            assert page["MaxKeys"] == 1
            markers_kw = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}
        else:
            raise AssertionError(f"the listing never ended: {seen}")
        assert seen == expected

        # boto3's paginator follows NextKeyMarker / NextVersionIdMarker by itself.
        paged = []
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=b, PaginationConfig={"PageSize": 2}):
            entries = [(e["Key"], e["VersionId"]) for e in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            assert len(entries) <= 2, page
            paged.extend(entries)
        assert sorted(paged) == sorted(expected)
        assert len(paged) == len(set(paged)), "an entry listed twice"


def test_an_unversioned_bucket_lists_null_versions(s3):
    with versioned_bucket(s3) as b:
        put = s3.put_object(Bucket=b, Key="k", Body=b"plain")
        assert "VersionId" not in put, put

        versions, markers, out = listing(s3, b)
        assert versions == [("k", "null", True)]
        assert markers == []
        assert out["Versions"][0]["Size"] == len(b"plain")
        assert out["Versions"][0]["ETag"] == f'"{md5(b"plain")}"'

        assert body(s3, b, "k", VersionId="null") == b"plain"
        assert s3.head_object(Bucket=b, Key="k", VersionId="null")["ContentLength"] == len(b"plain")

        # A simple DELETE in a bucket that was never versioned removes the object: no marker.
        out = s3.delete_object(Bucket=b, Key="k")
        assert not out.get("DeleteMarker"), out
        versions, markers, _ = listing(s3, b)
        assert versions == [] and markers == []


def test_objects_written_before_versioning_keep_the_null_version(s3):
    with versioned_bucket(s3) as b:
        s3.put_object(Bucket=b, Key="k", Body=b"before")
        s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        v = s3.put_object(Bucket=b, Key="k", Body=b"after")["VersionId"]
        assert v and v != "null"

        versions, _, _ = listing(s3, b)
        assert versions == [("k", v, True), ("k", "null", False)]
        assert body(s3, b, "k") == b"after"
        assert body(s3, b, "k", VersionId="null") == b"before"

        s3.delete_object(Bucket=b, Key="k", VersionId="null")
        versions, _, _ = listing(s3, b)
        assert versions == [("k", v, True)]


def test_a_suspended_bucket_writes_the_null_version(s3):
    with versioned_bucket(s3, "Enabled") as b:
        v1 = s3.put_object(Bucket=b, Key="k", Body=b"v1")["VersionId"]
        s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Suspended"})

        # Both writes are the null version: the second replaces the first.
        s3.put_object(Bucket=b, Key="k", Body=b"null-a")
        s3.put_object(Bucket=b, Key="k", Body=b"null-b")
        versions, markers, _ = listing(s3, b)
        assert versions == [("k", "null", True), ("k", v1, False)]
        assert markers == []
        assert body(s3, b, "k") == b"null-b"
        assert body(s3, b, "k", VersionId="null") == b"null-b"
        assert body(s3, b, "k", VersionId=v1) == b"v1"

        # A simple DELETE removes the null version and puts a null delete marker in its place.
        out = s3.delete_object(Bucket=b, Key="k")
        assert out["DeleteMarker"] is True
        assert out.get("VersionId", "null") == "null", out
        versions, markers, _ = listing(s3, b)
        assert versions == [("k", v1, False)]
        assert markers == [("k", "null", True)]
        fails("NoSuchKey", s3.get_object, Bucket=b, Key="k")
        assert body(s3, b, "k", VersionId=v1) == b"v1"

        # Deleting that marker by its id makes v1 current again.
        s3.delete_object(Bucket=b, Key="k", VersionId="null")
        got = s3.get_object(Bucket=b, Key="k")
        assert got["Body"].read() == b"v1" and got["VersionId"] == v1


# --- other operations that take a version ----------------------------------------------------


def test_copy_object_from_an_old_version(s3):
    with versioned_bucket(s3, "Enabled") as b:
        v1 = s3.put_object(Bucket=b, Key="k", Body=b"old bytes")["VersionId"]
        v2 = s3.put_object(Bucket=b, Key="k", Body=b"new bytes")["VersionId"]

        out = s3.copy_object(Bucket=b, Key="copy", CopySource={"Bucket": b, "Key": "k", "VersionId": v1})
        assert out["CopySourceVersionId"] == v1
        assert out["VersionId"] and out["VersionId"] not in (v1, v2, "null")
        assert out["CopyObjectResult"]["ETag"] == f'"{md5(b"old bytes")}"'
        got = s3.get_object(Bucket=b, Key="copy")
        assert got["Body"].read() == b"old bytes" and got["VersionId"] == out["VersionId"]

        # Without a VersionId the copy is of the current version.
        out = s3.copy_object(Bucket=b, Key="copy2", CopySource={"Bucket": b, "Key": "k"})
        assert out["CopySourceVersionId"] == v2
        assert body(s3, b, "copy2") == b"new bytes"

        # Copying an old version over its own key restores it as a new, current version.
        restored = s3.copy_object(Bucket=b, Key="k", CopySource={"Bucket": b, "Key": "k", "VersionId": v1})
        v3 = restored["VersionId"]
        assert v3 not in (v1, v2)
        got = s3.get_object(Bucket=b, Key="k")
        assert got["Body"].read() == b"old bytes" and got["VersionId"] == v3
        versions, _, _ = listing(s3, b, Prefix="k")
        assert versions == [("k", v3, True), ("k", v2, False), ("k", v1, False)]

        # A source whose current version is a delete marker is not found.
        s3.delete_object(Bucket=b, Key="copy")
        fails("NoSuchKey", s3.copy_object, Bucket=b, Key="copy3", CopySource={"Bucket": b, "Key": "copy"})


def test_delete_objects_with_and_without_version_ids(s3):
    with versioned_bucket(s3, "Enabled") as b:
        k1 = s3.put_object(Bucket=b, Key="k", Body=b"k one")["VersionId"]
        k2 = s3.put_object(Bucket=b, Key="k", Body=b"k two")["VersionId"]
        s3.put_object(Bucket=b, Key="m", Body=b"m")

        # A named version is deleted for good.
        out = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "k", "VersionId": k1}]})
        assert not out.get("Errors"), out
        [deleted] = out["Deleted"]
        assert deleted["Key"] == "k" and deleted["VersionId"] == k1
        assert not deleted.get("DeleteMarker"), deleted
        versions, _, _ = listing(s3, b, Prefix="k")
        assert versions == [("k", k2, True)]

        # Keys without a version get delete markers.
        out = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "k"}, {"Key": "m"}]})
        assert not out.get("Errors"), out
        deleted = sorted(out["Deleted"], key=lambda d: d["Key"])
        assert [d["Key"] for d in deleted] == ["k", "m"]
        for d in deleted:
            assert d["DeleteMarker"] is True, d
            assert d["DeleteMarkerVersionId"] and d["DeleteMarkerVersionId"] != "null", d
        marker_k = deleted[0]["DeleteMarkerVersionId"]
        assert "Contents" not in s3.list_objects_v2(Bucket=b)
        _, markers, _ = listing(s3, b)
        assert sorted((k, v) for k, v, _ in markers) == sorted((d["Key"], d["DeleteMarkerVersionId"]) for d in deleted)

        # Deleting a marker by its version id through DeleteObjects.
        out = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "k", "VersionId": marker_k}]})
        [deleted] = out["Deleted"]
        assert deleted["VersionId"] == marker_k
        assert deleted.get("DeleteMarker") is True, deleted
        assert deleted.get("DeleteMarkerVersionId", marker_k) == marker_k, deleted
        got = s3.get_object(Bucket=b, Key="k")
        assert got["Body"].read() == b"k two" and got["VersionId"] == k2


def test_a_completed_multipart_upload_is_a_new_version(s3):
    with versioned_bucket(s3, "Enabled") as b:
        small = s3.put_object(Bucket=b, Key="big.bin", Body=b"small")["VersionId"]
        parts = [b"A" * (5 * MIB), b"tail"]
        uid = s3.create_multipart_upload(Bucket=b, Key="big.bin")["UploadId"]
        etags = [
            s3.upload_part(Bucket=b, Key="big.bin", UploadId=uid, PartNumber=n, Body=data)["ETag"]
            for n, data in enumerate(parts, start=1)
        ]
        done = s3.complete_multipart_upload(
            Bucket=b, Key="big.bin", UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]},
        )
        version = done.get("VersionId")
        assert version and version not in (small, "null"), done

        versions, _, out = listing(s3, b)
        assert versions == [("big.bin", version, True), ("big.bin", small, False)]
        assert out["Versions"][0]["Size"] == sum(map(len, parts))
        assert out["Versions"][0]["ETag"] == done["ETag"]
        head = s3.head_object(Bucket=b, Key="big.bin", VersionId=version)
        assert head["ContentLength"] == sum(map(len, parts)) and head["VersionId"] == version
        assert body(s3, b, "big.bin", VersionId=small) == b"small"


def test_delete_bucket_needs_every_version_and_marker_gone(s3):
    with versioned_bucket(s3, "Enabled") as name:
        v1 = s3.put_object(Bucket=name, Key="k", Body=b"x")["VersionId"]
        marker = s3.delete_object(Bucket=name, Key="k")["VersionId"]
        assert "Contents" not in s3.list_objects_v2(Bucket=name)

        # A noncurrent version and a delete marker: not empty.
        r = fails("BucketNotEmpty", s3.delete_bucket, Bucket=name)
        assert status(r) == 409
        # Only a delete marker: still not empty.
        s3.delete_object(Bucket=name, Key="k", VersionId=v1)
        r = fails("BucketNotEmpty", s3.delete_bucket, Bucket=name)
        assert status(r) == 409

        s3.delete_object(Bucket=name, Key="k", VersionId=marker)
        s3.delete_bucket(Bucket=name)
        assert status(refused(s3.head_bucket, Bucket=name)) == 404


def test_object_tagging_of_one_version(s3):
    with versioned_bucket(s3, "Enabled") as b:
        v1 = s3.put_object(Bucket=b, Key="k", Body=b"one")["VersionId"]
        v2 = s3.put_object(Bucket=b, Key="k", Body=b"two")["VersionId"]
        tags = [{"Key": "release", "Value": "1.0"}]

        out = s3.put_object_tagging(Bucket=b, Key="k", VersionId=v1, Tagging={"TagSet": tags})
        assert out.get("VersionId") == v1, out
        got = s3.get_object_tagging(Bucket=b, Key="k", VersionId=v1)
        assert got["TagSet"] == tags and got["VersionId"] == v1
        current = s3.get_object_tagging(Bucket=b, Key="k")
        assert current["TagSet"] == []
        assert current.get("VersionId", v2) == v2, current
        assert s3.get_object(Bucket=b, Key="k", VersionId=v1)["TagCount"] == 1
        assert "TagCount" not in s3.get_object(Bucket=b, Key="k")

        # Tags written with the object belong to that version alone.
        v3 = s3.put_object(Bucket=b, Key="k", Body=b"three", Tagging="stage=new")["VersionId"]
        assert s3.get_object_tagging(Bucket=b, Key="k")["TagSet"] == [{"Key": "stage", "Value": "new"}]
        assert s3.get_object_tagging(Bucket=b, Key="k", VersionId=v3)["TagSet"] == [{"Key": "stage", "Value": "new"}]
        assert s3.get_object_tagging(Bucket=b, Key="k", VersionId=v2)["TagSet"] == []
        assert s3.get_object_tagging(Bucket=b, Key="k", VersionId=v1)["TagSet"] == tags

        out = s3.delete_object_tagging(Bucket=b, Key="k", VersionId=v1)
        assert out.get("VersionId", v1) == v1, out
        assert s3.get_object_tagging(Bucket=b, Key="k", VersionId=v1)["TagSet"] == []
        assert s3.get_object_tagging(Bucket=b, Key="k")["TagSet"] == [{"Key": "stage", "Value": "new"}]
