"""S3 Object Lock through boto3 (path-style addressing): buckets created with object lock,
the bucket's lock configuration and default retention, retention (GOVERNANCE and
COMPLIANCE) and legal holds on object versions, and the deletes they refuse.

Every test makes its own bucket and, at the end, turns every legal hold off, deletes every
version and delete marker (by VersionId, bypassing GOVERNANCE retention) and then the
bucket. A version under COMPLIANCE retention cannot be deleted by anyone before its date:
the clean-up leaves it, and its bucket, behind (the server under test is thrown away after
the run), so only one test locks a version in COMPLIANCE mode for longer than a few
seconds."""

import datetime
import time

import botocore.exceptions
import pytest

from conftest import error_code, fails, refused, status, unique, versioned_bucket

DAY = datetime.timedelta(days=1)


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def whole_seconds_from_now(delta):
    """A tz-aware UTC date `delta` from now, without its fraction of a second (so that what
    comes back can be compared to the second)."""
    return (now() + delta).replace(microsecond=0)


def same_second(got, expected):
    assert isinstance(got, datetime.datetime), got
    assert int(got.timestamp()) == int(expected.timestamp()), (got, expected)


def governance_rule(days=1):
    return {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": days}},
    }


def put_locked(s3, bucket, key, mode="GOVERNANCE", until=None, body=b"locked", **kw):
    """Writes one version under retention (`mode` until `until`, a day ahead unless given);
    answers (version id, retain-until date)."""
    until = until or whole_seconds_from_now(DAY)
    out = s3.put_object(
        Bucket=bucket, Key=key, Body=body, ObjectLockMode=mode, ObjectLockRetainUntilDate=until, **kw
    )
    assert out.get("VersionId") and out["VersionId"] != "null", out
    return out["VersionId"], until


def version_ids(s3, bucket, key):
    out = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [v["VersionId"] for v in out.get("Versions", []) if v["Key"] == key]


# --- the bucket's object lock configuration --------------------------------------------------


def test_a_bucket_created_with_object_lock_is_versioned(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        assert s3.get_bucket_versioning(Bucket=b)["Status"] == "Enabled"
        config = s3.get_object_lock_configuration(Bucket=b)["ObjectLockConfiguration"]
        assert config["ObjectLockEnabled"] == "Enabled", config
        assert "Rule" not in config, config

        # Versioning cannot be suspended once object lock is on.
        r = fails("InvalidBucketState", s3.put_bucket_versioning, Bucket=b,
                  VersioningConfiguration={"Status": "Suspended"})
        assert status(r) == 409
        assert s3.get_bucket_versioning(Bucket=b)["Status"] == "Enabled"
        # Enabled again is no change, and allowed.
        s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        assert s3.get_bucket_versioning(Bucket=b)["Status"] == "Enabled"


def test_a_bucket_without_object_lock_has_no_configuration(s3):
    with versioned_bucket(s3, prefix="py-lock") as b:
        r = fails("ObjectLockConfigurationNotFoundError", s3.get_object_lock_configuration, Bucket=b)
        assert status(r) == 404
    with versioned_bucket(s3, prefix="py-lock", versioning="Enabled") as b:
        r = fails("ObjectLockConfigurationNotFoundError", s3.get_object_lock_configuration, Bucket=b)
        assert status(r) == 404


def test_default_retention_rule(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        s3.put_object_lock_configuration(Bucket=b, ObjectLockConfiguration=governance_rule(1))
        config = s3.get_object_lock_configuration(Bucket=b)["ObjectLockConfiguration"]
        assert config == governance_rule(1), config

        # Days and Years together are refused, and change nothing.
        both = {
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1, "Years": 1}},
        }
        r = refused(s3.put_object_lock_configuration, Bucket=b, ObjectLockConfiguration=both)
        assert r["Error"]["Code"] in ("MalformedXML", "InvalidArgument"), r
        assert status(r) == 400, r
        assert s3.get_object_lock_configuration(Bucket=b)["ObjectLockConfiguration"] == governance_rule(1)

        # Years alone replaces the rule.
        years = {
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Years": 1}},
        }
        s3.put_object_lock_configuration(Bucket=b, ObjectLockConfiguration=years)
        assert s3.get_object_lock_configuration(Bucket=b)["ObjectLockConfiguration"] == years


def test_lock_configuration_needs_versioning_enabled(s3):
    with versioned_bucket(s3, prefix="py-lock") as b:
        r = fails("InvalidBucketState", s3.put_object_lock_configuration, Bucket=b,
                  ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})
        assert status(r) == 409
        fails("ObjectLockConfigurationNotFoundError", s3.get_object_lock_configuration, Bucket=b)

    with versioned_bucket(s3, prefix="py-lock", versioning="Suspended") as b:
        r = fails("InvalidBucketState", s3.put_object_lock_configuration, Bucket=b,
                  ObjectLockConfiguration=governance_rule(1))
        assert status(r) == 409
        fails("ObjectLockConfigurationNotFoundError", s3.get_object_lock_configuration, Bucket=b)


def test_object_lock_can_be_enabled_on_a_versioned_bucket(s3):
    with versioned_bucket(s3, prefix="py-lock", versioning="Enabled") as b:
        s3.put_object_lock_configuration(Bucket=b, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})
        config = s3.get_object_lock_configuration(Bucket=b)["ObjectLockConfiguration"]
        assert config["ObjectLockEnabled"] == "Enabled", config

        # From then on the bucket is a lock-enabled one: versions can be locked...
        v, until = put_locked(s3, b, "k")
        head = s3.head_object(Bucket=b, Key="k", VersionId=v)
        assert head["ObjectLockMode"] == "GOVERNANCE", head
        same_second(head["ObjectLockRetainUntilDate"], until)
        # ...and versioning stays on.
        fails("InvalidBucketState", s3.put_bucket_versioning, Bucket=b,
              VersioningConfiguration={"Status": "Suspended"})


# --- retention written with the object -------------------------------------------------------


def test_put_object_with_governance_retention(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        v, until = put_locked(s3, b, "k", body=b"kept")

        head = s3.head_object(Bucket=b, Key="k")
        assert head["VersionId"] == v
        assert head["ObjectLockMode"] == "GOVERNANCE", head
        same_second(head["ObjectLockRetainUntilDate"], until)
        assert head.get("ObjectLockLegalHoldStatus", "OFF") == "OFF", head

        got = s3.get_object(Bucket=b, Key="k", VersionId=v)
        assert got["Body"].read() == b"kept"
        assert got["ObjectLockMode"] == "GOVERNANCE", got
        same_second(got["ObjectLockRetainUntilDate"], until)

        retention = s3.get_object_retention(Bucket=b, Key="k", VersionId=v)["Retention"]
        assert retention["Mode"] == "GOVERNANCE", retention
        same_second(retention["RetainUntilDate"], until)
        # Without a VersionId: the current version's.
        current = s3.get_object_retention(Bucket=b, Key="k")["Retention"]
        assert current["Mode"] == "GOVERNANCE"
        same_second(current["RetainUntilDate"], until)


def test_retention_headers_must_come_together_and_in_the_future(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        r = fails("InvalidArgument", s3.put_object, Bucket=b, Key="k", Body=b"x", ObjectLockMode="GOVERNANCE")
        assert status(r) == 400
        r = fails("InvalidArgument", s3.put_object, Bucket=b, Key="k", Body=b"x",
                  ObjectLockRetainUntilDate=whole_seconds_from_now(DAY))
        assert status(r) == 400
        r = fails("InvalidArgument", s3.put_object, Bucket=b, Key="k", Body=b"x",
                  ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=whole_seconds_from_now(-DAY))
        assert status(r) == 400
        # Nothing was written.
        assert version_ids(s3, b, "k") == []


def test_lock_headers_need_a_bucket_with_object_lock(s3):
    for versioning in (None, "Enabled"):
        with versioned_bucket(s3, prefix="py-lock", versioning=versioning) as b:
            r = fails("InvalidRequest", s3.put_object, Bucket=b, Key="k", Body=b"x",
                      ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=whole_seconds_from_now(DAY))
            assert status(r) == 400
            r = fails("InvalidRequest", s3.put_object, Bucket=b, Key="k", Body=b"x",
                      ObjectLockLegalHoldStatus="ON")
            assert status(r) == 400
            assert "Contents" not in s3.list_objects_v2(Bucket=b)


def test_default_retention_applies_to_new_versions(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        s3.put_object_lock_configuration(Bucket=b, ObjectLockConfiguration=governance_rule(1))
        before = now()
        v = s3.put_object(Bucket=b, Key="k", Body=b"default")["VersionId"]
        after = now()

        margin = datetime.timedelta(minutes=3)
        head = s3.head_object(Bucket=b, Key="k", VersionId=v)
        assert head["ObjectLockMode"] == "GOVERNANCE", head
        until = head["ObjectLockRetainUntilDate"]
        assert before + DAY - margin <= until <= after + DAY + margin, (before, until, after)
        retention = s3.get_object_retention(Bucket=b, Key="k", VersionId=v)["Retention"]
        assert retention["Mode"] == "GOVERNANCE"
        same_second(retention["RetainUntilDate"], until)

        # The default retention protects the version like one given with the object.
        r = fails("AccessDenied", s3.delete_object, Bucket=b, Key="k", VersionId=v)
        assert status(r) == 403

        # Headers given with the object win over the default.
        explicit, explicit_until = put_locked(s3, b, "k2", until=whole_seconds_from_now(2 * DAY))
        head = s3.head_object(Bucket=b, Key="k2", VersionId=explicit)
        assert head["ObjectLockMode"] == "GOVERNANCE"
        same_second(head["ObjectLockRetainUntilDate"], explicit_until)


# --- deletes under retention -----------------------------------------------------------------


def test_governance_retention_refuses_deleting_the_version(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        v, _ = put_locked(s3, b, "k", body=b"kept")

        r = fails("AccessDenied", s3.delete_object, Bucket=b, Key="k", VersionId=v)
        assert status(r) == 403
        assert s3.get_object(Bucket=b, Key="k", VersionId=v)["Body"].read() == b"kept"

        out = s3.delete_object(Bucket=b, Key="k", VersionId=v, BypassGovernanceRetention=True)
        assert status(out) == 204
        assert out["VersionId"] == v
        assert version_ids(s3, b, "k") == []
        assert status(refused(s3.head_object, Bucket=b, Key="k", VersionId=v)) == 404


def test_a_locked_key_can_still_get_a_delete_marker(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        v, _ = put_locked(s3, b, "k", body=b"kept")

        # Locks protect versions, not keys: a simple DELETE adds a delete marker.
        out = s3.delete_object(Bucket=b, Key="k")
        assert status(out) == 204
        assert out["DeleteMarker"] is True
        marker = out["VersionId"]
        assert marker and marker != v
        fails("NoSuchKey", s3.get_object, Bucket=b, Key="k")

        # The locked version is still there, and still locked.
        assert s3.get_object(Bucket=b, Key="k", VersionId=v)["Body"].read() == b"kept"
        fails("AccessDenied", s3.delete_object, Bucket=b, Key="k", VersionId=v)

        # The marker itself is not locked.
        s3.delete_object(Bucket=b, Key="k", VersionId=marker)
        assert s3.get_object(Bucket=b, Key="k")["VersionId"] == v


def test_delete_objects_reports_a_locked_version(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        locked, _ = put_locked(s3, b, "locked")
        free = s3.put_object(Bucket=b, Key="free", Body=b"free")["VersionId"]

        out = s3.delete_objects(Bucket=b, Delete={"Objects": [
            {"Key": "locked", "VersionId": locked},
            {"Key": "free", "VersionId": free},
        ]})
        assert status(out) == 200
        [error] = out.get("Errors", [])
        assert error["Code"] == "AccessDenied", error
        assert error["Key"] == "locked", error
        assert error.get("VersionId", locked) == locked, error
        assert [(d["Key"], d["VersionId"]) for d in out.get("Deleted", [])] == [("free", free)], out

        assert version_ids(s3, b, "locked") == [locked]
        assert version_ids(s3, b, "free") == []


def test_compliance_retention_cannot_be_bypassed_or_shortened(s3):
    # This version stays locked for a day: the clean-up leaves it, and this bucket, behind
    # (the server under test is thrown away after the run).
    with versioned_bucket(s3, lock=True, prefix="py-lock-compliance") as b:
        v, until = put_locked(s3, b, "k", mode="COMPLIANCE", body=b"compliant")
        head = s3.head_object(Bucket=b, Key="k", VersionId=v)
        assert head["ObjectLockMode"] == "COMPLIANCE", head
        same_second(head["ObjectLockRetainUntilDate"], until)

        r = fails("AccessDenied", s3.delete_object, Bucket=b, Key="k", VersionId=v)
        assert status(r) == 403
        r = fails("AccessDenied", s3.delete_object, Bucket=b, Key="k", VersionId=v, BypassGovernanceRetention=True)
        assert status(r) == 403

        # Shortening, even with the bypass, and switching to GOVERNANCE are refused.
        shorter = until - datetime.timedelta(hours=1)
        fails("AccessDenied", s3.put_object_retention, Bucket=b, Key="k", VersionId=v,
              Retention={"Mode": "COMPLIANCE", "RetainUntilDate": shorter})
        fails("AccessDenied", s3.put_object_retention, Bucket=b, Key="k", VersionId=v,
              Retention={"Mode": "COMPLIANCE", "RetainUntilDate": shorter}, BypassGovernanceRetention=True)
        fails("AccessDenied", s3.put_object_retention, Bucket=b, Key="k", VersionId=v,
              Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until}, BypassGovernanceRetention=True)
        retention = s3.get_object_retention(Bucket=b, Key="k", VersionId=v)["Retention"]
        assert retention["Mode"] == "COMPLIANCE"
        same_second(retention["RetainUntilDate"], until)

        # Extending is allowed.
        longer = until + datetime.timedelta(hours=1)
        s3.put_object_retention(Bucket=b, Key="k", VersionId=v,
                                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": longer})
        retention = s3.get_object_retention(Bucket=b, Key="k", VersionId=v)["Retention"]
        assert retention["Mode"] == "COMPLIANCE"
        same_second(retention["RetainUntilDate"], longer)
        same_second(s3.head_object(Bucket=b, Key="k", VersionId=v)["ObjectLockRetainUntilDate"], longer)

        assert s3.get_object(Bucket=b, Key="k", VersionId=v)["Body"].read() == b"compliant"
        assert version_ids(s3, b, "k") == [v]


def test_an_expired_retention_no_longer_protects_the_version(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        # A few seconds of COMPLIANCE retention: refused now, deletable once the date passed.
        until = whole_seconds_from_now(datetime.timedelta(seconds=5))
        v, _ = put_locked(s3, b, "k", mode="COMPLIANCE", until=until)
        fails("AccessDenied", s3.delete_object, Bucket=b, Key="k", VersionId=v)

        time.sleep(max(0.0, (until - now()).total_seconds()) + 1.5)
        out = s3.delete_object(Bucket=b, Key="k", VersionId=v)
        assert status(out) == 204
        assert version_ids(s3, b, "k") == []


# --- PutObjectRetention / GetObjectRetention -------------------------------------------------


def test_governance_retention_is_shortened_only_with_the_bypass(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        v, until = put_locked(s3, b, "k")

        shorter = until - datetime.timedelta(hours=1)
        r = fails("AccessDenied", s3.put_object_retention, Bucket=b, Key="k", VersionId=v,
                  Retention={"Mode": "GOVERNANCE", "RetainUntilDate": shorter})
        assert status(r) == 403
        same_second(s3.get_object_retention(Bucket=b, Key="k", VersionId=v)["Retention"]["RetainUntilDate"], until)

        s3.put_object_retention(Bucket=b, Key="k", VersionId=v, BypassGovernanceRetention=True,
                                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": shorter})
        retention = s3.get_object_retention(Bucket=b, Key="k", VersionId=v)["Retention"]
        assert retention["Mode"] == "GOVERNANCE"
        same_second(retention["RetainUntilDate"], shorter)

        # Extending needs no bypass.
        longer = until + datetime.timedelta(hours=1)
        s3.put_object_retention(Bucket=b, Key="k", VersionId=v,
                                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": longer})
        same_second(s3.get_object_retention(Bucket=b, Key="k", VersionId=v)["Retention"]["RetainUntilDate"], longer)
        same_second(s3.head_object(Bucket=b, Key="k", VersionId=v)["ObjectLockRetainUntilDate"], longer)


def test_retention_of_a_version_without_a_lock(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        v = s3.put_object(Bucket=b, Key="k", Body=b"plain")["VersionId"]
        head = s3.head_object(Bucket=b, Key="k", VersionId=v)
        assert "ObjectLockMode" not in head and "ObjectLockRetainUntilDate" not in head, head

        r = fails("NoSuchObjectLockConfiguration", s3.get_object_retention, Bucket=b, Key="k", VersionId=v)
        assert status(r) == 404

        # Retention can be put on an existing version.
        until = whole_seconds_from_now(DAY)
        s3.put_object_retention(Bucket=b, Key="k", VersionId=v,
                                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until})
        retention = s3.get_object_retention(Bucket=b, Key="k", VersionId=v)["Retention"]
        assert retention["Mode"] == "GOVERNANCE"
        same_second(retention["RetainUntilDate"], until)
        fails("AccessDenied", s3.delete_object, Bucket=b, Key="k", VersionId=v)


# --- legal holds -----------------------------------------------------------------------------


def test_a_legal_hold_refuses_deletes_until_it_is_off(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        v = s3.put_object(Bucket=b, Key="k", Body=b"held")["VersionId"]

        r = fails("NoSuchObjectLockConfiguration", s3.get_object_legal_hold, Bucket=b, Key="k", VersionId=v)
        assert status(r) == 404

        s3.put_object_legal_hold(Bucket=b, Key="k", VersionId=v, LegalHold={"Status": "ON"})
        assert s3.get_object_legal_hold(Bucket=b, Key="k", VersionId=v)["LegalHold"]["Status"] == "ON"
        assert s3.head_object(Bucket=b, Key="k", VersionId=v)["ObjectLockLegalHoldStatus"] == "ON"

        r = fails("AccessDenied", s3.delete_object, Bucket=b, Key="k", VersionId=v)
        assert status(r) == 403
        r = fails("AccessDenied", s3.delete_object, Bucket=b, Key="k", VersionId=v, BypassGovernanceRetention=True)
        assert status(r) == 403
        assert version_ids(s3, b, "k") == [v]

        s3.put_object_legal_hold(Bucket=b, Key="k", VersionId=v, LegalHold={"Status": "OFF"})
        assert s3.head_object(Bucket=b, Key="k", VersionId=v).get("ObjectLockLegalHoldStatus", "OFF") == "OFF"
        out = s3.delete_object(Bucket=b, Key="k", VersionId=v)
        assert status(out) == 204
        assert version_ids(s3, b, "k") == []


def test_a_legal_hold_written_with_the_object(s3):
    with versioned_bucket(s3, prefix="py-lock", lock=True) as b:
        v = s3.put_object(Bucket=b, Key="k", Body=b"held", ObjectLockLegalHoldStatus="ON")["VersionId"]
        head = s3.head_object(Bucket=b, Key="k", VersionId=v)
        assert head["ObjectLockLegalHoldStatus"] == "ON", head
        assert "ObjectLockMode" not in head, head
        assert s3.get_object(Bucket=b, Key="k", VersionId=v)["ObjectLockLegalHoldStatus"] == "ON"
        assert s3.get_object_legal_hold(Bucket=b, Key="k", VersionId=v)["LegalHold"]["Status"] == "ON"
        fails("AccessDenied", s3.delete_object, Bucket=b, Key="k", VersionId=v, BypassGovernanceRetention=True)

        # A hold and a retention together: the version stays until both allow it (the
        # clean-up turns the hold off and bypasses the retention).
        s3.put_object_retention(Bucket=b, Key="k", VersionId=v,
                                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": whole_seconds_from_now(DAY)})
        s3.put_object_legal_hold(Bucket=b, Key="k", VersionId=v, LegalHold={"Status": "OFF"})
        fails("AccessDenied", s3.delete_object, Bucket=b, Key="k", VersionId=v)
