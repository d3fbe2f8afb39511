"""Kinesis enhanced fan-out through boto3: stream consumers and SubscribeToShard.

botocore reads SubscribeToShard's `application/vnd.amazon.eventstream` body over HTTP/1.1
as it arrives: the first message must be the `initial-response` event, then each event is a
dict like {"SubscribeToShardEvent": {...}}.
"""

import time

import botocore.exceptions
import pytest

from conftest import ACCOUNT_ID, error_code, unique

# A generous guard against a hung subscription; never a speed threshold.
GUARD_SECONDS = 120


def stream_arn(region, name):
    return f"arn:aws:kinesis:{region}:{ACCOUNT_ID}:stream/{name}"


@pytest.fixture
def efo_stream(kinesis, region):
    """A fresh one-shard stream and its ARN, deleted (with its consumers) afterwards."""
    name = unique("py-efo")
    kinesis.create_stream(StreamName=name, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    yield name, stream_arn(region, name)
    try:
        kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
    except botocore.exceptions.ClientError:
        pass


def register_active(kinesis, arn, name):
    consumer = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName=name)["Consumer"]
    deadline = time.monotonic() + GUARD_SECONDS
    while True:
        d = kinesis.describe_stream_consumer(ConsumerARN=consumer["ConsumerARN"])["ConsumerDescription"]
        if d["ConsumerStatus"] == "ACTIVE":
            return consumer
        assert time.monotonic() < deadline, "the consumer never became ACTIVE"
        time.sleep(0.05)


def test_consumer_lifecycle(kinesis, region, efo_stream):
    name, arn = efo_stream
    consumer = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="app-1")["Consumer"]
    assert consumer["ConsumerName"] == "app-1"
    assert consumer["ConsumerStatus"] in ("CREATING", "ACTIVE")
    assert consumer["ConsumerARN"].startswith(f"{arn}/consumer/app-1:")
    created = consumer["ConsumerCreationTimestamp"]
    assert consumer["ConsumerARN"].endswith(f":{int(created.timestamp())}")

    by_arn = kinesis.describe_stream_consumer(ConsumerARN=consumer["ConsumerARN"])["ConsumerDescription"]
    by_name = kinesis.describe_stream_consumer(StreamARN=arn, ConsumerName="app-1")["ConsumerDescription"]
    assert by_arn == by_name
    assert by_arn["StreamARN"] == arn
    assert by_arn["ConsumerARN"] == consumer["ConsumerARN"]

    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="app-1")
    assert error_code(e) == "ResourceInUseException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="no/slashes")
    assert error_code(e) == "InvalidArgumentException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.register_stream_consumer(StreamARN=stream_arn(region, unique("missing")), ConsumerName="x")
    assert error_code(e) == "ResourceNotFoundException"

    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["ConsumerCount"] == 1

    # Twenty consumers at most; ListStreamConsumers pages through all of them.
    for i in range(2, 21):
        register_active(kinesis, arn, f"app-{i}")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="app-21")
    assert error_code(e) == "LimitExceededException"
    first = kinesis.list_stream_consumers(StreamARN=arn, MaxResults=7)
    assert len(first["Consumers"]) == 7 and "NextToken" in first
    pages = kinesis.get_paginator("list_stream_consumers").paginate(
        StreamARN=arn, PaginationConfig={"PageSize": 6}
    )
    listed = [c["ConsumerName"] for page in pages for c in page["Consumers"]]
    assert sorted(listed) == sorted(f"app-{i}" for i in range(1, 21))
    assert len(listed) == 20

    # DeleteStream refuses while consumers are registered, unless told to remove them.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.delete_stream(StreamName=name)
    assert error_code(e) == "ResourceInUseException"

    kinesis.deregister_stream_consumer(ConsumerARN=consumer["ConsumerARN"])
    kinesis.deregister_stream_consumer(StreamARN=arn, ConsumerName="app-2")
    for kw in ({"ConsumerARN": consumer["ConsumerARN"]}, {"StreamARN": arn, "ConsumerName": "app-2"}):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kinesis.describe_stream_consumer(**kw)
        assert error_code(e) == "ResourceNotFoundException"
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kinesis.deregister_stream_consumer(**kw)
        assert error_code(e) == "ResourceNotFoundException"
    remaining = kinesis.list_stream_consumers(StreamARN=arn)["Consumers"]
    assert len(remaining) == 18


def next_event(events):
    event = next(events)
    assert set(event) == {"SubscribeToShardEvent"}, event
    return event["SubscribeToShardEvent"]


def test_subscribe_to_shard_pushes_records(kinesis, efo_stream):
    name, arn = efo_stream
    shard = kinesis.list_shards(StreamName=name)["Shards"][0]["ShardId"]
    before = kinesis.put_record(StreamName=name, PartitionKey="pk", Data=b"before")["SequenceNumber"]
    consumer = register_active(kinesis, arn, "reader")

    out = kinesis.subscribe_to_shard(
        ConsumerARN=consumer["ConsumerARN"],
        ShardId=shard,
        StartingPosition={"Type": "TRIM_HORIZON"},
    )
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert out["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/vnd.amazon.eventstream"
    stream = out["EventStream"]
    events = iter(stream)
    try:
        first = next_event(events)
        assert [r["Data"] for r in first["Records"]] == [b"before"]
        record = first["Records"][0]
        assert record["PartitionKey"] == "pk"
        assert record["SequenceNumber"] == before
        assert record["ApproximateArrivalTimestamp"].year >= 2024
        assert first["ContinuationSequenceNumber"] == before
        assert first["MillisBehindLatest"] >= 0

        # A second subscription of the same consumer to the same shard is refused.
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kinesis.subscribe_to_shard(
                ConsumerARN=consumer["ConsumerARN"], ShardId=shard, StartingPosition={"Type": "LATEST"}
            )
        assert error_code(e) == "ResourceInUseException"

        # Records put during the subscription are pushed in later events.
        sent = [f"during-{i}".encode() for i in range(3)]
        seqs = [kinesis.put_record(StreamName=name, PartitionKey="pk", Data=d)["SequenceNumber"] for d in sent]
        got = []
        deadline = time.monotonic() + GUARD_SECONDS
        while len(got) < len(sent):
            assert time.monotonic() < deadline, f"only {got} arrived"
            event = next_event(events)
            got.extend(r["Data"] for r in event["Records"])
            if event["Records"]:
                assert event["ContinuationSequenceNumber"] == event["Records"][-1]["SequenceNumber"]
        assert got == sent
        assert event["ContinuationSequenceNumber"] == seqs[-1]
    finally:
        stream.close()


def test_subscribe_to_shard_refusals(kinesis, region, efo_stream):
    name, arn = efo_stream
    shard = kinesis.list_shards(StreamName=name)["Shards"][0]["ShardId"]
    consumer = register_active(kinesis, arn, "refused")
    cases = [
        (
            {"ConsumerARN": f"{arn}/consumer/nobody:1", "ShardId": shard, "StartingPosition": {"Type": "LATEST"}},
            "ResourceNotFoundException",
        ),
        (
            {
                "ConsumerARN": consumer["ConsumerARN"],
                "ShardId": "shardId-000000000042",
                "StartingPosition": {"Type": "LATEST"},
            },
            "ResourceNotFoundException",
        ),
        (
            {
                "ConsumerARN": consumer["ConsumerARN"],
                "ShardId": shard,
                "StartingPosition": {"Type": "AFTER_SEQUENCE_NUMBER"},
            },
            "InvalidArgumentException",
        ),
    ]
    for kwargs, code in cases:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kinesis.subscribe_to_shard(**kwargs)
        assert error_code(e) == code, kwargs

    # A deregistered consumer cannot subscribe any more.
    kinesis.deregister_stream_consumer(ConsumerARN=consumer["ConsumerARN"])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.subscribe_to_shard(
            ConsumerARN=consumer["ConsumerARN"], ShardId=shard, StartingPosition={"Type": "LATEST"}
        )
    assert error_code(e) == "ResourceNotFoundException"
