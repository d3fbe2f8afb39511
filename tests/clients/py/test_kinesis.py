"""Kinesis Data Streams through boto3: every operation sluice's edge serves."""

import concurrent.futures
import datetime
import json

import botocore.exceptions
import pytest

from conftest import ACCOUNT_ID, error_code, unique

MAX_HASH_KEY = 2**128 - 1


def arn(region, name):
    return f"arn:aws:kinesis:{region}:{ACCOUNT_ID}:stream/{name}"


@pytest.fixture
def stream(kinesis):
    """A fresh two-shard stream, deleted afterwards."""
    name = unique("py-stream")
    kinesis.create_stream(StreamName=name, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    yield name
    try:
        kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
    except botocore.exceptions.ClientError:
        pass


def wait_active(kinesis, name):
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})


def shards(kinesis, name, **kw):
    return kinesis.list_shards(StreamName=name, **kw)["Shards"]


def hash_range(shard):
    r = shard["HashKeyRange"]
    return int(r["StartingHashKey"]), int(r["EndingHashKey"])


def read_all(kinesis, name, shard_id, kind="TRIM_HORIZON", **kw):
    it = kinesis.get_shard_iterator(StreamName=name, ShardId=shard_id, ShardIteratorType=kind, **kw)["ShardIterator"]
    out = kinesis.get_records(ShardIterator=it)
    return out


# --- streams -----------------------------------------------------------------------------


def test_create_describe_summary_and_delete(kinesis, region):
    name = unique("py-lifecycle")
    kinesis.create_stream(StreamName=name, ShardCount=3)
    wait_active(kinesis, name)

    d = kinesis.describe_stream(StreamName=name)["StreamDescription"]
    assert d["StreamName"] == name
    assert d["StreamARN"] == arn(region, name)
    assert d["StreamStatus"] == "ACTIVE"
    assert d["RetentionPeriodHours"] == 24
    assert d["HasMoreShards"] is False
    assert isinstance(d["StreamCreationTimestamp"], datetime.datetime)
    assert [s["ShardId"] for s in d["Shards"]] == [
        "shardId-000000000000",
        "shardId-000000000001",
        "shardId-000000000002",
    ]
    # The shards cover the whole hash key space, without gaps or overlaps.
    ranges = [hash_range(s) for s in d["Shards"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == MAX_HASH_KEY
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        assert start == end + 1
    for s in d["Shards"]:
        assert "EndingSequenceNumber" not in s["SequenceNumberRange"]

    # Paging the shards of DescribeStream.
    page = kinesis.describe_stream(StreamName=name, Limit=2)["StreamDescription"]
    assert len(page["Shards"]) == 2 and page["HasMoreShards"] is True
    rest = kinesis.describe_stream(StreamName=name, ExclusiveStartShardId=page["Shards"][-1]["ShardId"])
    assert [s["ShardId"] for s in rest["StreamDescription"]["Shards"]] == ["shardId-000000000002"]

    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 3
    assert summary["StreamARN"] == arn(region, name)
    assert summary["StreamModeDetails"]["StreamMode"] == "PROVISIONED"
    assert summary["RetentionPeriodHours"] == 24
    assert summary["EncryptionType"] == "NONE"
    assert summary["ConsumerCount"] == 0

    # By ARN, as well as by name.
    by_arn = kinesis.describe_stream_summary(StreamARN=arn(region, name))["StreamDescriptionSummary"]
    assert by_arn["StreamName"] == name
    by_arn = kinesis.describe_stream(StreamARN=arn(region, name))["StreamDescription"]
    assert len(by_arn["Shards"]) == 3

    kinesis.delete_stream(StreamARN=arn(region, name))
    kinesis.get_waiter("stream_not_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.describe_stream(StreamName=name)
    assert error_code(e) == "ResourceNotFoundException"


def test_on_demand_stream(kinesis):
    name = unique("py-on-demand")
    kinesis.create_stream(StreamName=name, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    try:
        wait_active(kinesis, name)
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        assert summary["StreamModeDetails"]["StreamMode"] == "ON_DEMAND"
        assert summary["OpenShardCount"] >= 1
        put = kinesis.put_record(StreamName=name, Data=b"on demand", PartitionKey="k")
        got = read_all(kinesis, name, put["ShardId"])
        assert [r["Data"] for r in got["Records"]] == [b"on demand"]
    finally:
        kinesis.delete_stream(StreamName=name)


def test_list_streams_pages(kinesis):
    prefix = unique("py-list")
    names = [f"{prefix}-{i}" for i in range(3)]
    for n in names:
        kinesis.create_stream(StreamName=n, ShardCount=1)
    for n in names:
        wait_active(kinesis, n)
    try:
        # NextToken paging, one stream a page.
        seen = []
        page = kinesis.list_streams(Limit=1)
        while True:
            assert len(page["StreamNames"]) <= 1
            assert len(page["StreamSummaries"]) == len(page["StreamNames"])
            seen.extend(page["StreamNames"])
            if not page["HasMoreStreams"]:
                break
            page = kinesis.list_streams(Limit=1, NextToken=page["NextToken"])
        assert set(names) <= set(seen)
        assert len(seen) == len(set(seen)), "a stream listed twice"

        # ExclusiveStartStreamName paging.
        after = kinesis.list_streams(ExclusiveStartStreamName=names[0])["StreamNames"]
        assert names[0] not in after and names[1] in after and names[2] in after

        # The paginator follows the tokens by itself.
        everything = []
        for p in kinesis.get_paginator("list_streams").paginate(PaginationConfig={"PageSize": 2}):
            everything.extend(p["StreamNames"])
        assert set(names) <= set(everything)

        summary = next(
            s for s in kinesis.list_streams()["StreamSummaries"] if s["StreamName"] == names[0]
        )
        assert summary["StreamStatus"] == "ACTIVE"
        assert summary["StreamARN"].endswith(f":stream/{names[0]}")
    finally:
        for n in names:
            kinesis.delete_stream(StreamName=n)


def test_errors(kinesis, stream, region):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.describe_stream(StreamName=unique("py-missing"))
    assert error_code(e) == "ResourceNotFoundException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.put_record(StreamName=unique("py-missing"), Data=b"x", PartitionKey="k")
    assert error_code(e) == "ResourceNotFoundException"

    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.create_stream(StreamName=stream, ShardCount=1)
    assert error_code(e) == "ResourceInUseException"

    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.get_shard_iterator(StreamName=stream, ShardId="shardId-000000000099", ShardIteratorType="LATEST")
    assert error_code(e) == "ResourceNotFoundException"

    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.put_record(StreamName=stream, Data=b"x", PartitionKey="k", ExplicitHashKey="not-a-number")
    assert error_code(e) == "InvalidArgumentException"

    # AT_SEQUENCE_NUMBER needs a sequence number.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.get_shard_iterator(StreamName=stream, ShardId="shardId-000000000000", ShardIteratorType="AT_SEQUENCE_NUMBER")
    assert error_code(e) == "InvalidArgumentException"

    # A stream ARN of another account is not found.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.describe_stream_summary(StreamARN=f"arn:aws:kinesis:{region}:123456789012:stream/{stream}")
    assert error_code(e) == "ResourceNotFoundException"

    # ExpiredIteratorException needs a 5-minute wait; a tampered iterator is refused at once.
    it = kinesis.get_shard_iterator(StreamName=stream, ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    i = len(it) // 3
    tampered = it[:i] + ("A" if it[i] != "A" else "B") + it[i + 1 :]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.get_records(ShardIterator=tampered)
    assert error_code(e) == "InvalidArgumentException"


# --- shards ------------------------------------------------------------------------------


def test_list_shards_filters_and_paging(kinesis, region):
    name = unique("py-shards")
    kinesis.create_stream(StreamName=name, ShardCount=3)
    wait_active(kinesis, name)
    try:
        assert [s["ShardId"] for s in shards(kinesis, name)] == [
            "shardId-000000000000",
            "shardId-000000000001",
            "shardId-000000000002",
        ]
        # MaxResults and NextToken; the token alone names the stream.
        first = kinesis.list_shards(StreamName=name, MaxResults=2)
        assert len(first["Shards"]) == 2 and "NextToken" in first
        second = kinesis.list_shards(NextToken=first["NextToken"], MaxResults=2)
        assert [s["ShardId"] for s in second["Shards"]] == ["shardId-000000000002"]
        assert "NextToken" not in second
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kinesis.list_shards(StreamName=name, NextToken=first["NextToken"])
        assert error_code(e) == "InvalidArgumentException"

        # ExclusiveStartShardId and the AFTER_SHARD_ID filter.
        after = kinesis.list_shards(StreamName=name, ExclusiveStartShardId="shardId-000000000000")["Shards"]
        assert [s["ShardId"] for s in after] == ["shardId-000000000001", "shardId-000000000002"]
        after = shards(kinesis, name, ShardFilter={"Type": "AFTER_SHARD_ID", "ShardId": "shardId-000000000001"})
        assert [s["ShardId"] for s in after] == ["shardId-000000000002"]

        # After a split, AT_LATEST lists the open shards, AT_TRIM_HORIZON the oldest
        # shards still readable, FROM_TRIM_HORIZON every shard.
        s0 = shards(kinesis, name)[0]
        lo, hi = hash_range(s0)
        kinesis.split_shard(StreamName=name, ShardToSplit=s0["ShardId"], NewStartingHashKey=str((lo + hi) // 2))
        wait_active(kinesis, name)
        latest = {s["ShardId"] for s in shards(kinesis, name, ShardFilter={"Type": "AT_LATEST"})}
        assert len(latest) == 4 and s0["ShardId"] not in latest
        horizon = {s["ShardId"] for s in shards(kinesis, name, ShardFilter={"Type": "AT_TRIM_HORIZON"})}
        assert s0["ShardId"] in horizon
        everything = {s["ShardId"] for s in shards(kinesis, name, ShardFilter={"Type": "FROM_TRIM_HORIZON"})}
        assert everything == latest | {s0["ShardId"]}
        now = datetime.datetime.now(datetime.timezone.utc)
        at_ts = {s["ShardId"] for s in shards(kinesis, name, ShardFilter={"Type": "AT_TIMESTAMP", "Timestamp": now})}
        assert at_ts == latest
        from_ts = {s["ShardId"] for s in shards(kinesis, name, ShardFilter={"Type": "FROM_TIMESTAMP", "Timestamp": now})}
        assert latest <= from_ts

        by_arn = kinesis.list_shards(StreamARN=arn(region, name))["Shards"]
        assert len(by_arn) == 5
    finally:
        kinesis.delete_stream(StreamName=name)


# --- records -----------------------------------------------------------------------------


def test_put_record_and_read_it_back(kinesis, stream):
    data = bytes(range(256))
    put = kinesis.put_record(StreamName=stream, Data=data, PartitionKey="pk-1")
    assert put["ShardId"].startswith("shardId-")
    assert put["SequenceNumber"].isdigit()
    assert put["EncryptionType"] == "NONE"
    got = read_all(kinesis, stream, put["ShardId"])
    assert [r["SequenceNumber"] for r in got["Records"]] == [put["SequenceNumber"]]
    r = got["Records"][0]
    assert r["Data"] == data
    assert r["PartitionKey"] == "pk-1"
    assert isinstance(r["ApproximateArrivalTimestamp"], datetime.datetime)
    assert got["MillisBehindLatest"] == 0
    assert "NextShardIterator" in got


def test_explicit_hash_key_chooses_the_shard(kinesis, stream):
    for s in shards(kinesis, stream):
        lo, hi = hash_range(s)
        for key in (lo, hi):
            put = kinesis.put_record(StreamName=stream, Data=b"x", PartitionKey="same", ExplicitHashKey=str(key))
            assert put["ShardId"] == s["ShardId"]


def test_sequence_number_for_ordering(kinesis, stream):
    first = kinesis.put_record(StreamName=stream, Data=b"1", PartitionKey="order", ExplicitHashKey="0")
    second = kinesis.put_record(
        StreamName=stream,
        Data=b"2",
        PartitionKey="order",
        ExplicitHashKey="0",
        SequenceNumberForOrdering=first["SequenceNumber"],
    )
    assert second["ShardId"] == first["ShardId"]
    assert int(second["SequenceNumber"]) > int(first["SequenceNumber"])


def test_put_records_result_shape(kinesis, stream):
    records = [{"Data": f"r{i}".encode(), "PartitionKey": f"pk-{i}"} for i in range(20)]
    records.append({"Data": b"explicit", "PartitionKey": "pk", "ExplicitHashKey": str(MAX_HASH_KEY)})
    out = kinesis.put_records(StreamName=stream, Records=records)
    assert out["FailedRecordCount"] == 0
    assert out["EncryptionType"] == "NONE"
    assert len(out["Records"]) == len(records)
    for r in out["Records"]:
        # A successful entry has a sequence number and a shard, never an error.
        assert set(r) == {"SequenceNumber", "ShardId"}, r
    assert out["Records"][-1]["ShardId"] == "shardId-000000000001"
    # Entries come back in request order: each record is where its entry says.
    by_shard = {}
    for rec, res in zip(records, out["Records"]):
        by_shard.setdefault(res["ShardId"], {})[res["SequenceNumber"]] = rec["Data"]
    for shard_id, expected in by_shard.items():
        got = read_all(kinesis, stream, shard_id)["Records"]
        assert {r["SequenceNumber"]: r["Data"] for r in got} == expected

    # A request over the limits fails as a whole.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.put_records(StreamName=stream, Records=[{"Data": b"x", "PartitionKey": "k"}] * 501)
    assert error_code(e) == "ValidationException"


def test_get_shard_iterator_types_and_get_records(kinesis, stream):
    shard = "shardId-000000000000"
    puts = [
        kinesis.put_record(StreamName=stream, Data=f"m{i}".encode(), PartitionKey="p", ExplicitHashKey="1")
        for i in range(5)
    ]
    seqs = [p["SequenceNumber"] for p in puts]
    assert all(p["ShardId"] == shard for p in puts)
    assert seqs == sorted(seqs, key=int)

    def data(kind, **kw):
        return [r["Data"] for r in read_all(kinesis, stream, shard, kind, **kw)["Records"]]

    assert data("TRIM_HORIZON") == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert data("AT_SEQUENCE_NUMBER", StartingSequenceNumber=seqs[2]) == [b"m2", b"m3", b"m4"]
    assert data("AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=seqs[2]) == [b"m3", b"m4"]
    first = read_all(kinesis, stream, shard)["Records"][0]
    assert data("AT_TIMESTAMP", Timestamp=first["ApproximateArrivalTimestamp"] - datetime.timedelta(seconds=1)) == [
        b"m0",
        b"m1",
        b"m2",
        b"m3",
        b"m4",
    ]
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    assert data("AT_TIMESTAMP", Timestamp=future) == []

    # LATEST sees only what arrives after it was taken.
    latest = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]
    assert kinesis.get_records(ShardIterator=latest)["Records"] == []
    kinesis.put_record(StreamName=stream, Data=b"after", PartitionKey="p", ExplicitHashKey="1")
    assert [r["Data"] for r in kinesis.get_records(ShardIterator=latest)["Records"]] == [b"after"]

    # Limit, NextShardIterator and MillisBehindLatest.
    it = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    got = []
    pages = 0
    while True:
        out = kinesis.get_records(ShardIterator=it, Limit=2)
        assert len(out["Records"]) <= 2
        assert isinstance(out["MillisBehindLatest"], int) and out["MillisBehindLatest"] >= 0
        got.extend(r["Data"] for r in out["Records"])
        pages += 1
        it = out["NextShardIterator"]
        if not out["Records"]:
            break
    assert got == [b"m0", b"m1", b"m2", b"m3", b"m4", b"after"]
    assert pages == 4
    assert out["MillisBehindLatest"] == 0

    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.get_records(ShardIterator=it, Limit=10001)
    assert error_code(e) in ("ValidationException", "InvalidArgumentException")


def test_operations_by_arn(kinesis, stream, region):
    a = arn(region, stream)
    put = kinesis.put_record(StreamARN=a, Data=b"by-arn", PartitionKey="k")
    many = kinesis.put_records(StreamARN=a, Records=[{"Data": b"also", "PartitionKey": "k"}])
    assert many["FailedRecordCount"] == 0
    it = kinesis.get_shard_iterator(
        StreamARN=a, ShardId=put["ShardId"], ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=put["SequenceNumber"]
    )["ShardIterator"]
    out = kinesis.get_records(StreamARN=a, ShardIterator=it)
    assert [r["Data"] for r in out["Records"]] == [b"by-arn", b"also"]
    kinesis.add_tags_to_stream(StreamARN=a, Tags={"via": "arn"})
    assert kinesis.list_tags_for_stream(StreamARN=a)["Tags"] == [{"Key": "via", "Value": "arn"}]
    kinesis.remove_tags_from_stream(StreamARN=a, TagKeys=["via"])
    kinesis.increase_stream_retention_period(StreamARN=a, RetentionPeriodHours=25)
    kinesis.decrease_stream_retention_period(StreamARN=a, RetentionPeriodHours=24)
    assert len(kinesis.list_shards(StreamARN=a)["Shards"]) == 2


# --- resharding --------------------------------------------------------------------------


def test_split_merge_and_child_shards(kinesis):
    name = unique("py-reshard")
    kinesis.create_stream(StreamName=name, ShardCount=1)
    wait_active(kinesis, name)
    try:
        parent = shards(kinesis, name)[0]
        parent_id = parent["ShardId"]
        before = kinesis.put_record(StreamName=name, Data=b"before split", PartitionKey="k")
        lo, hi = hash_range(parent)
        mid = (lo + hi) // 2
        kinesis.split_shard(StreamName=name, ShardToSplit=parent_id, NewStartingHashKey=str(mid))
        wait_active(kinesis, name)

        d = kinesis.describe_stream(StreamName=name)["StreamDescription"]["Shards"]
        closed = next(s for s in d if s["ShardId"] == parent_id)
        assert "EndingSequenceNumber" in closed["SequenceNumberRange"]
        children = [s for s in d if s.get("ParentShardId") == parent_id]
        assert len(children) == 2
        children.sort(key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]))
        assert hash_range(children[0]) == (lo, mid - 1)
        assert hash_range(children[1]) == (mid, hi)

        # Writes now go to the children.
        put = kinesis.put_record(StreamName=name, Data=b"after split", PartitionKey="k", ExplicitHashKey=str(mid))
        assert put["ShardId"] == children[1]["ShardId"]

        # Reading the closed parent to its end yields its records, then ChildShards and
        # no next iterator.
        it = kinesis.get_shard_iterator(StreamName=name, ShardId=parent_id, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        records = []
        out = None
        for _ in range(100):
            out = kinesis.get_records(ShardIterator=it)
            records.extend(out["Records"])
            if out.get("ChildShards") or not out.get("NextShardIterator"):
                break
            it = out["NextShardIterator"]
        assert [r["SequenceNumber"] for r in records] == [before["SequenceNumber"]]
        assert out.get("NextShardIterator") is None
        child_ids = sorted(c["ShardId"] for c in out["ChildShards"])
        assert child_ids == sorted(c["ShardId"] for c in children)
        for c in out["ChildShards"]:
            assert c["ParentShards"] == [parent_id]
            assert "StartingHashKey" in c["HashKeyRange"]

        # Merge the children back into one shard.
        a, b = children[0]["ShardId"], children[1]["ShardId"]
        kinesis.merge_shards(StreamName=name, ShardToMerge=a, AdjacentShardToMerge=b)
        wait_active(kinesis, name)
        open_shards = shards(kinesis, name, ShardFilter={"Type": "AT_LATEST"})
        assert len(open_shards) == 1
        merged = open_shards[0]
        assert {merged["ParentShardId"], merged["AdjacentParentShardId"]} == {a, b}
        assert hash_range(merged) == (lo, hi)
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        assert summary["OpenShardCount"] == 1

        # A drained child points at the merged shard.
        it = kinesis.get_shard_iterator(StreamName=name, ShardId=b, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        for _ in range(100):
            out = kinesis.get_records(ShardIterator=it)
            if out.get("ChildShards") or not out.get("NextShardIterator"):
                break
            it = out["NextShardIterator"]
        assert [c["ShardId"] for c in out["ChildShards"]] == [merged["ShardId"]]
        assert sorted(out["ChildShards"][0]["ParentShards"]) == sorted([a, b])

        # Merging shards that are not adjacent, or closed, is refused.
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kinesis.merge_shards(StreamName=name, ShardToMerge=a, AdjacentShardToMerge=b)
        assert error_code(e) in ("ResourceInUseException", "InvalidArgumentException", "ResourceNotFoundException")
    finally:
        kinesis.delete_stream(StreamName=name)


def test_update_shard_count(kinesis, stream):
    out = kinesis.update_shard_count(StreamName=stream, TargetShardCount=4, ScalingType="UNIFORM_SCALING")
    assert out["StreamName"] == stream
    assert out["CurrentShardCount"] == 2
    assert out["TargetShardCount"] == 4
    wait_active(kinesis, stream)
    open_shards = shards(kinesis, stream, ShardFilter={"Type": "AT_LATEST"})
    assert len(open_shards) == 4
    ranges = sorted(hash_range(s) for s in open_shards)
    assert ranges[0][0] == 0 and ranges[-1][1] == MAX_HASH_KEY
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        assert start == end + 1
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 4

    # As in AWS, one call scales at most to double or down to half the open shards.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.update_shard_count(StreamName=stream, TargetShardCount=1, ScalingType="UNIFORM_SCALING")
    assert error_code(e) == "LimitExceededException"
    out = kinesis.update_shard_count(StreamName=stream, TargetShardCount=2, ScalingType="UNIFORM_SCALING")
    assert out["CurrentShardCount"] == 4 and out["TargetShardCount"] == 2
    wait_active(kinesis, stream)
    assert len(shards(kinesis, stream, ShardFilter={"Type": "AT_LATEST"})) == 2


# --- settings ----------------------------------------------------------------------------


def test_retention_period(kinesis, stream):
    kinesis.increase_stream_retention_period(StreamName=stream, RetentionPeriodHours=48)
    assert kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["RetentionPeriodHours"] == 48
    # Increasing to less than the current period, or decreasing to more, is refused.
    for op, hours in (
        (kinesis.increase_stream_retention_period, 36),
        (kinesis.decrease_stream_retention_period, 72),
        (kinesis.decrease_stream_retention_period, 12),
        (kinesis.increase_stream_retention_period, 8761),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            op(StreamName=stream, RetentionPeriodHours=hours)
        assert error_code(e) == "InvalidArgumentException", (op, hours)
    kinesis.decrease_stream_retention_period(StreamName=stream, RetentionPeriodHours=24)
    assert kinesis.describe_stream(StreamName=stream)["StreamDescription"]["RetentionPeriodHours"] == 24


def test_tags(kinesis, stream):
    kinesis.add_tags_to_stream(StreamName=stream, Tags={"team": "data", "env": "test", "cost": "1"})
    tags = kinesis.list_tags_for_stream(StreamName=stream)
    assert tags["Tags"] == [
        {"Key": "cost", "Value": "1"},
        {"Key": "env", "Value": "test"},
        {"Key": "team", "Value": "data"},
    ]
    assert tags["HasMoreTags"] is False
    page = kinesis.list_tags_for_stream(StreamName=stream, Limit=2)
    assert len(page["Tags"]) == 2 and page["HasMoreTags"] is True
    rest = kinesis.list_tags_for_stream(StreamName=stream, ExclusiveStartTagKey=page["Tags"][-1]["Key"])
    assert rest["Tags"] == [{"Key": "team", "Value": "data"}] and rest["HasMoreTags"] is False
    # Adding an existing key overwrites its value.
    kinesis.add_tags_to_stream(StreamName=stream, Tags={"env": "prod"})
    kinesis.remove_tags_from_stream(StreamName=stream, TagKeys=["cost", "team"])
    assert kinesis.list_tags_for_stream(StreamName=stream)["Tags"] == [{"Key": "env", "Value": "prod"}]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.list_tags_for_stream(StreamName=unique("py-missing"))
    assert error_code(e) == "ResourceNotFoundException"


def test_tags_are_validated(kinesis, stream):
    kinesis.add_tags_to_stream(StreamName=stream, Tags={"owner": "test@company.com", "app:tier": "a b/c=d+e-f_g.h%"})
    for tags, code in [
        ({"k" * 129: "v"}, "ValidationException"),
        ({"k": "v" * 257}, "ValidationException"),
        ({"bad#key": "v"}, "InvalidArgumentException"),
        ({"k": "bad*value"}, "InvalidArgumentException"),
        ({"aws:owner": "me"}, "InvalidArgumentException"),
    ]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kinesis.add_tags_to_stream(StreamName=stream, Tags=tags)
        assert error_code(e) == code, (tags, e.value.response)
    keys = [t["Key"] for t in kinesis.list_tags_for_stream(StreamName=stream)["Tags"]]
    assert keys == ["app:tier", "owner"], "a refused request adds nothing"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.add_tags_to_stream(StreamName=stream, Tags={f"k{i}": "v" for i in range(49)})
    assert error_code(e) == "LimitExceededException"


def test_tags_at_creation(kinesis):
    name = unique("py-tagged")
    kinesis.create_stream(StreamName=name, ShardCount=1, Tags={"born": "tagged"})
    try:
        wait_active(kinesis, name)
        assert kinesis.list_tags_for_stream(StreamName=name)["Tags"] == [{"Key": "born", "Value": "tagged"}]
    finally:
        kinesis.delete_stream(StreamName=name)


def test_describe_limits(kinesis):
    limits = kinesis.describe_limits()
    for field in ("ShardLimit", "OpenShardCount", "OnDemandStreamCount", "OnDemandStreamCountLimit"):
        assert isinstance(limits[field], int), (field, limits)
    assert limits["ShardLimit"] > 0


def test_update_max_record_size(kinesis, stream, region):
    big = b"z" * (1024 * 1024 + 1)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.put_record(StreamName=stream, Data=big, PartitionKey="k")
    assert error_code(e) == "ValidationException"

    kinesis.update_max_record_size(StreamARN=arn(region, stream), MaxRecordSizeInKiB=2048)
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    assert summary["MaxRecordSizeInKiB"] == 2048
    put = kinesis.put_record(StreamName=stream, Data=big, PartitionKey="k")
    got = read_all(kinesis, stream, put["ShardId"], "AT_SEQUENCE_NUMBER", StartingSequenceNumber=put["SequenceNumber"])
    assert got["Records"][0]["Data"] == big


def test_json_payloads_round_trip(kinesis, stream):
    """The seed's record: JSON text, as the upload handler writes it."""
    record = {"bucket": "b", "key": "uploads/x.txt", "uploadedAt": "2026-01-01T00:00:00Z"}
    put = kinesis.put_record(StreamName=stream, Data=json.dumps(record).encode(), PartitionKey="k")
    got = read_all(kinesis, stream, put["ShardId"], "AT_SEQUENCE_NUMBER", StartingSequenceNumber=put["SequenceNumber"])
    assert json.loads(got["Records"][0]["Data"]) == record


# --- capacity mode, encryption, monitoring, resource policies, limits ---------------------


def test_stream_mode_switches_keep_shards_and_are_limited(kinesis, stream, region):
    stream_arn = arn(region, stream)
    kinesis.update_stream_mode(StreamARN=stream_arn, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    assert summary["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}
    assert summary["OpenShardCount"] == 2
    # Asking for the mode it has changes nothing.
    kinesis.update_stream_mode(StreamARN=stream_arn, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    # An on-demand stream is not scaled by hand.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.update_shard_count(StreamName=stream, TargetShardCount=4, ScalingType="UNIFORM_SCALING")
    assert error_code(e) == "ValidationException"
    assert "On-Demand mode" in e.value.response["Error"]["Message"]
    assert kinesis.put_record(StreamName=stream, Data=b"x", PartitionKey="k")["SequenceNumber"]
    kinesis.update_stream_mode(StreamARN=stream_arn, StreamModeDetails={"StreamMode": "PROVISIONED"})
    # Two switches in 24 hours, as AWS allows.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.update_stream_mode(StreamARN=stream_arn, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    assert error_code(e) == "LimitExceededException"
    assert kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamModeDetails"] == {
        "StreamMode": "PROVISIONED"
    }
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.update_stream_mode(StreamARN=stream_arn, StreamModeDetails={"StreamMode": "SOMETIMES"})
    assert error_code(e) == "ValidationException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.update_stream_mode(
            StreamARN=arn(region, unique("py-missing")), StreamModeDetails={"StreamMode": "ON_DEMAND"}
        )
    assert error_code(e) == "ResourceNotFoundException"


def test_update_shard_count_ten_times_a_day(kinesis):
    name = unique("py-scale")
    kinesis.create_stream(StreamName=name, ShardCount=1)
    wait_active(kinesis, name)
    try:
        for i in range(10):
            kinesis.update_shard_count(StreamName=name, TargetShardCount=2 if i % 2 == 0 else 1, ScalingType="UNIFORM_SCALING")
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kinesis.update_shard_count(StreamName=name, TargetShardCount=2, ScalingType="UNIFORM_SCALING")
        assert error_code(e) == "LimitExceededException"
        assert "24 hours" in e.value.response["Error"]["Message"]
        assert len(shards(kinesis, name, ShardFilter={"Type": "AT_LATEST"})) == 1
    finally:
        kinesis.delete_stream(StreamName=name)


def test_stream_encryption_is_kept_and_reported(kinesis, stream, region):
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    assert summary["EncryptionType"] == "NONE" and "KeyId" not in summary
    kinesis.start_stream_encryption(StreamName=stream, EncryptionType="KMS", KeyId="alias/aws/kinesis")
    for described in (
        kinesis.describe_stream(StreamName=stream)["StreamDescription"],
        kinesis.describe_stream_summary(StreamARN=arn(region, stream))["StreamDescriptionSummary"],
    ):
        assert described["EncryptionType"] == "KMS"
        assert described["KeyId"] == "alias/aws/kinesis"
    assert kinesis.put_record(StreamName=stream, Data=b"x", PartitionKey="k")["EncryptionType"] == "KMS"
    assert kinesis.put_records(StreamName=stream, Records=[{"Data": b"y", "PartitionKey": "k"}])["EncryptionType"] == "KMS"
    key_arn = f"arn:aws:kms:{region}:{ACCOUNT_ID}:key/12345678-1234-1234-1234-123456789012"
    kinesis.start_stream_encryption(StreamName=stream, EncryptionType="KMS", KeyId=key_arn)
    assert kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["KeyId"] == key_arn

    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.start_stream_encryption(StreamName=stream, EncryptionType="NONE", KeyId="alias/aws/kinesis")
    assert error_code(e) == "InvalidArgumentException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.start_stream_encryption(StreamName=stream, EncryptionType="KMS", KeyId="not a key")
    assert error_code(e) == "InvalidArgumentException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.start_stream_encryption(StreamName=unique("py-missing"), EncryptionType="KMS", KeyId="alias/aws/kinesis")
    assert error_code(e) == "ResourceNotFoundException"

    kinesis.stop_stream_encryption(StreamName=stream, EncryptionType="KMS", KeyId=key_arn)
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    assert summary["EncryptionType"] == "NONE" and "KeyId" not in summary
    assert kinesis.put_record(StreamName=stream, Data=b"x", PartitionKey="k")["EncryptionType"] == "NONE"


def test_enhanced_monitoring(kinesis, stream):
    out = kinesis.enable_enhanced_monitoring(StreamName=stream, ShardLevelMetrics=["IncomingBytes"])
    assert out["StreamName"] == stream and out["StreamARN"].endswith(f":stream/{stream}")
    assert out["CurrentShardLevelMetrics"] == [] and out["DesiredShardLevelMetrics"] == ["IncomingBytes"]
    out = kinesis.enable_enhanced_monitoring(StreamName=stream, ShardLevelMetrics=["ALL"])
    assert out["CurrentShardLevelMetrics"] == ["IncomingBytes"]
    assert len(out["DesiredShardLevelMetrics"]) == 7
    described = kinesis.describe_stream(StreamName=stream)["StreamDescription"]["EnhancedMonitoring"]
    assert described == [{"ShardLevelMetrics": out["DesiredShardLevelMetrics"]}]
    out = kinesis.disable_enhanced_monitoring(StreamName=stream, ShardLevelMetrics=["IncomingBytes", "IteratorAgeMilliseconds"])
    assert len(out["DesiredShardLevelMetrics"]) == 5
    assert "IncomingBytes" not in out["DesiredShardLevelMetrics"]
    out = kinesis.disable_enhanced_monitoring(StreamName=stream, ShardLevelMetrics=["ALL"])
    assert out["DesiredShardLevelMetrics"] == []
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    assert summary["EnhancedMonitoring"] == [{"ShardLevelMetrics": []}]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.enable_enhanced_monitoring(StreamName=stream, ShardLevelMetrics=["IncomingBites"])
    assert error_code(e) == "ValidationException"


def test_resource_policies(kinesis, stream, region):
    stream_arn = arn(region, stream)
    assert kinesis.get_resource_policy(ResourceARN=stream_arn)["Policy"] == "{}"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.delete_resource_policy(ResourceARN=stream_arn)
    assert error_code(e) == "ResourceNotFoundException"

    def policy(effect, action, resource=stream_arn):
        return json.dumps({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": effect,
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
                "Action": action,
                "Resource": resource,
            }],
        })

    for bad in (
        policy("Allow", "s3:GetObject"),
        policy("Allow", "kinesis:GetRecords", arn(region, "another-stream")),
        "{not json",
        json.dumps({"Statement": [{"Effect": "Allow", "Action": "kinesis:*", "Resource": stream_arn}]}),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kinesis.put_resource_policy(ResourceARN=stream_arn, Policy=bad)
        assert error_code(e) == "InvalidArgumentException", bad

    # A Deny binds even the account's key; the policy itself stays within its reach.
    deny = policy("Deny", ["kinesis:PutRecord", "kinesis:PutRecords"])
    kinesis.put_resource_policy(ResourceARN=stream_arn, Policy=deny)
    assert json.loads(kinesis.get_resource_policy(ResourceARN=stream_arn)["Policy"]) == json.loads(deny)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.put_record(StreamName=stream, Data=b"x", PartitionKey="k")
    assert error_code(e) == "AccessDeniedException"
    assert "explicit deny in a resource-based policy" in e.value.response["Error"]["Message"]
    assert kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamName"] == stream
    kinesis.delete_resource_policy(ResourceARN=stream_arn)
    assert kinesis.put_record(StreamName=stream, Data=b"x", PartitionKey="k")["SequenceNumber"]

    # A consumer has its own policy, which goes with it.
    consumer = kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="c")["Consumer"]["ConsumerARN"]
    kinesis.put_resource_policy(ResourceARN=consumer, Policy=policy("Allow", "kinesis:SubscribeToShard", consumer))
    assert "SubscribeToShard" in kinesis.get_resource_policy(ResourceARN=consumer)["Policy"]
    kinesis.deregister_stream_consumer(ConsumerARN=consumer)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.put_resource_policy(ResourceARN=consumer, Policy=policy("Allow", "kinesis:SubscribeToShard", consumer))
    assert error_code(e) == "ResourceNotFoundException"


def test_put_records_over_the_limits_fails_the_request(kinesis, stream):
    records = [{"Data": b"small", "PartitionKey": f"k{i}"} for i in range(3)]
    records.append({"Data": b"z" * (1024 * 1024), "PartitionKey": "big"})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.put_records(StreamName=stream, Records=records)
    assert error_code(e) == "ValidationException"
    assert "'records.4.member.data'" in e.value.response["Error"]["Message"]
    for s in shards(kinesis, stream):
        assert read_all(kinesis, stream, s["ShardId"])["Records"] == [], "nothing was written"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.put_record(StreamName=stream, Data=b"z" * (1024 * 1024), PartitionKey="big")
    assert error_code(e) == "ValidationException"
    assert "'data'" in e.value.response["Error"]["Message"]
    heavy = [{"Data": b"z" * 1_000_000, "PartitionKey": f"k{i}"} for i in range(6)]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.put_records(StreamName=stream, Records=heavy)
    assert error_code(e) == "InvalidArgumentException"
    assert e.value.response["Error"]["Message"] == "Records size exceeds 5 MB limit"


def test_on_demand_streams_take_no_shard_count(kinesis):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.create_stream(StreamName=unique("py-od"), ShardCount=2, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    assert error_code(e) == "InvalidArgumentException"


def test_get_records_past_a_shards_budget_is_throttled(kinesis, stream, edge, region):
    """5 GetRecords calls a second per shard, as on AWS (on by default)."""
    from conftest import client

    it = kinesis.get_shard_iterator(StreamName=stream, ShardId="shardId-000000000000",
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    plain = client("kinesis", edge, region)  # one attempt, no retry of throttling

    def read(_):
        try:
            plain.get_records(ShardIterator=it)
            return None
        except botocore.exceptions.ClientError as e:
            return e.response["Error"]["Code"]

    # 20 calls at once: more than a second's budget, however fast the machine is.
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        codes = [c for c in pool.map(read, range(20)) if c]
    assert codes and set(codes) == {"ProvisionedThroughputExceededException"}, codes
    # Retried with backoff (as the SDKs do by default), every call gets through.
    for _ in range(12):
        kinesis.get_records(ShardIterator=it)


def test_account_limits_on_shards_and_on_demand_streams(kinesis):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.create_stream(StreamName=unique("py-huge"), ShardCount=10_001)
    assert error_code(e) == "LimitExceededException"
    assert "would exceed the shard limit for the account" in e.value.response["Error"]["Message"]
    limits = kinesis.describe_limits()
    made = []
    try:
        for _ in range(limits["OnDemandStreamCountLimit"] - limits["OnDemandStreamCount"]):
            name = unique("py-od-limit")
            kinesis.create_stream(StreamName=name, StreamModeDetails={"StreamMode": "ON_DEMAND"})
            made.append(name)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kinesis.create_stream(StreamName=unique("py-od-limit"), StreamModeDetails={"StreamMode": "ON_DEMAND"})
        assert error_code(e) == "LimitExceededException"
        assert "limit on the number of On-Demand streams" in e.value.response["Error"]["Message"]
        assert kinesis.describe_limits()["OnDemandStreamCount"] == limits["OnDemandStreamCountLimit"]
    finally:
        for name in made:
            kinesis.delete_stream(StreamName=name)


def test_streams_are_regional(kinesis, edge, region):
    """A stream created in one region is seen only from it, with ARNs of that region; the
    same name may be another stream in another region."""
    from conftest import client, retry_throttled

    other = "us-west-2" if region != "us-west-2" else "eu-west-1"
    west = client("kinesis", edge, other)
    west.meta.events.register("needs-retry.kinesis", retry_throttled)
    name = unique("py-regional")
    west.create_stream(StreamName=name, ShardCount=1)
    try:
        summary = west.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        assert summary["StreamName"] == name
        assert summary["StreamARN"] == f"arn:aws:kinesis:{other}:{ACCOUNT_ID}:stream/{name}"
        assert name in west.list_streams()["StreamNames"]
        # Not there from the server's region, by name, by ARN, or in its listing.
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kinesis.describe_stream_summary(StreamName=name)
        assert error_code(e) == "ResourceNotFoundException"
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kinesis.describe_stream_summary(StreamARN=summary["StreamARN"])
        assert error_code(e) == "ResourceNotFoundException"
        names = []
        for page in kinesis.get_paginator("list_streams").paginate():
            names += page["StreamNames"]
        assert name not in names
        # The same name in the server's region is another stream.
        kinesis.create_stream(StreamName=name, ShardCount=2)
        try:
            home = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
            assert home["OpenShardCount"] == 2 and f":{region}:" in home["StreamARN"]
            assert west.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["OpenShardCount"] == 1
            # Records go to the stream of the request's region.
            put = west.put_record(StreamName=name, Data=b"west", PartitionKey="k")
            it = west.get_shard_iterator(StreamName=name, ShardId=put["ShardId"],
                                         ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            assert [r["Data"] for r in west.get_records(ShardIterator=it)["Records"]] == [b"west"]
            consumer = west.register_stream_consumer(StreamARN=summary["StreamARN"], ConsumerName="c")["Consumer"]
            assert consumer["ConsumerARN"].startswith(summary["StreamARN"] + "/consumer/c:")
        finally:
            kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
    finally:
        west.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
