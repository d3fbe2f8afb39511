// Kinesis enhanced fan-out through the AWS SDK for JavaScript v3, over HTTP/2 (h2c): the
// Kinesis client's default handler, NodeHttp2Handler, reads SubscribeToShard's event stream
// as it arrives. The SDK consumes the `initial-response` event itself; the async iterable
// yields {SubscribeToShardEvent: {...}} events.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  KinesisClient,
  CreateStreamCommand,
  DeleteStreamCommand,
  DescribeStreamConsumerCommand,
  DeregisterStreamConsumerCommand,
  ListShardsCommand,
  ListStreamConsumersCommand,
  PutRecordCommand,
  RegisterStreamConsumerCommand,
  SubscribeToShardCommand,
  waitUntilStreamExists,
} from "@aws-sdk/client-kinesis";
import { NodeHttp2Handler } from "@smithy/node-http-handler";
import { clientConfig, eventually, region, unique } from "./lib.mjs";

const kinesis = new KinesisClient(clientConfig());
const stream = unique("js-efo");
const streamArn = () => `arn:aws:kinesis:${region()}:000000000000:stream/${stream}`;
const text = (bytes) => Buffer.from(bytes).toString("utf-8");
// A guard against a hung subscription, not a speed threshold.
const GUARD_MS = 120_000;

before(async () => {
  await kinesis.send(new CreateStreamCommand({ StreamName: stream, ShardCount: 1 }));
  await waitUntilStreamExists({ client: kinesis, maxWaitTime: 60, minDelay: 1 }, { StreamName: stream });
});

after(async () => {
  await kinesis.send(new DeleteStreamCommand({ StreamName: stream, EnforceConsumerDeletion: true }));
  kinesis.destroy();
});

async function registerActive(name) {
  const { Consumer } = await kinesis.send(
    new RegisterStreamConsumerCommand({ StreamARN: streamArn(), ConsumerName: name }),
  );
  await eventually(async () => {
    const d = await kinesis.send(new DescribeStreamConsumerCommand({ ConsumerARN: Consumer.ConsumerARN }));
    return d.ConsumerDescription.ConsumerStatus === "ACTIVE";
  }, `consumer ${name} ACTIVE`);
  return Consumer;
}

test("consumers: register, describe, list, deregister", async () => {
  const consumer = await registerActive("js-app");
  assert.ok(consumer.ConsumerARN.startsWith(`${streamArn()}/consumer/js-app:`));
  assert.ok(consumer.ConsumerCreationTimestamp instanceof Date);
  const list = await kinesis.send(new ListStreamConsumersCommand({ StreamARN: streamArn() }));
  assert.ok(list.Consumers.some((c) => c.ConsumerARN === consumer.ConsumerARN));
  await assert.rejects(
    kinesis.send(new RegisterStreamConsumerCommand({ StreamARN: streamArn(), ConsumerName: "js-app" })),
    (e) => e.name === "ResourceInUseException",
  );
  await kinesis.send(new DeregisterStreamConsumerCommand({ ConsumerARN: consumer.ConsumerARN }));
  await assert.rejects(
    kinesis.send(new DescribeStreamConsumerCommand({ ConsumerARN: consumer.ConsumerARN })),
    (e) => e.name === "ResourceNotFoundException",
  );
});

test("SubscribeToShard pushes records over HTTP/2 as they are put", async () => {
  assert.ok(kinesis.config.requestHandler instanceof NodeHttp2Handler, "default handler is NodeHttp2Handler");
  const { Shards } = await kinesis.send(new ListShardsCommand({ StreamName: stream }));
  const shardId = Shards[0].ShardId;
  const consumer = await registerActive("js-reader");
  const put = async (data) =>
    (await kinesis.send(new PutRecordCommand({ StreamName: stream, PartitionKey: "pk", Data: Buffer.from(data) })))
      .SequenceNumber;
  const first = await put("before");

  const abort = new AbortController();
  const guard = setTimeout(() => abort.abort(), GUARD_MS);
  try {
    const out = await kinesis.send(
      new SubscribeToShardCommand({
        ConsumerARN: consumer.ConsumerARN,
        ShardId: shardId,
        StartingPosition: { Type: "AFTER_SEQUENCE_NUMBER", SequenceNumber: first },
      }),
      { abortSignal: abort.signal },
    );
    assert.equal(out.$metadata.httpStatusCode, 200);

    // The same consumer and shard are busy while this subscription runs.
    await assert.rejects(
      kinesis.send(
        new SubscribeToShardCommand({
          ConsumerARN: consumer.ConsumerARN,
          ShardId: shardId,
          StartingPosition: { Type: "LATEST" },
        }),
      ),
      (e) => e.name === "ResourceInUseException",
    );

    const sent = ["one", "two", "three"];
    let putDone = null;
    const got = [];
    let continuation = null;
    for await (const event of out.EventStream) {
      assert.deepEqual(Object.keys(event), ["SubscribeToShardEvent"]);
      const e = event.SubscribeToShardEvent;
      assert.ok(typeof e.MillisBehindLatest === "number");
      continuation = e.ContinuationSequenceNumber;
      // The first event (nothing after `before` yet): now put records during the subscription.
      if (putDone === null) {
        assert.equal(e.Records.length, 0);
        assert.equal(continuation, first);
        putDone = Promise.all(sent.map((d) => put(d)));
        continue;
      }
      for (const r of e.Records) {
        assert.equal(r.PartitionKey, "pk");
        assert.ok(r.ApproximateArrivalTimestamp instanceof Date);
        got.push(text(r.Data));
      }
      if (got.length >= sent.length) break;
    }
    const seqs = await putDone;
    assert.deepEqual([...got].sort(), [...sent].sort());
    assert.ok(seqs.includes(continuation), "the continuation is the last record delivered");
  } finally {
    clearTimeout(guard);
    abort.abort();
  }
});
