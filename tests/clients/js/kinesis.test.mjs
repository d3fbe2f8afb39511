// Kinesis through the AWS SDK for JavaScript v3, over HTTP/2: the Kinesis client's default
// request handler is NodeHttp2Handler, and against an http:// endpoint it speaks cleartext
// HTTP/2 with prior knowledge (h2c), which the edge serves.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http2 from "node:http2";
import {
  KinesisClient,
  CreateStreamCommand,
  DeleteStreamCommand,
  DescribeStreamSummaryCommand,
  GetRecordsCommand,
  GetShardIteratorCommand,
  ListShardsCommand,
  PutRecordCommand,
  PutRecordsCommand,
  waitUntilStreamExists,
} from "@aws-sdk/client-kinesis";
import { NodeHttp2Handler } from "@smithy/node-http-handler";
import { clientConfig, edge, unique } from "./lib.mjs";

// Every HTTP/2 session the process opens, with the URL it was opened for.
const sessions = [];
const connect = http2.connect;
http2.connect = function (authority, ...rest) {
  const session = connect.call(this, authority, ...rest);
  sessions.push({ authority: String(authority), session });
  return session;
};

const kinesis = new KinesisClient(clientConfig());
// Paging through a shard quickly goes past its 5 GetRecords calls a second, as on AWS: a
// reader retries ProvisionedThroughputExceededException with backoff, as the SDK does by
// default (the other clients of these tests never retry, so no error is hidden).
const reader = new KinesisClient(clientConfig({ maxAttempts: 10 }));
const stream = unique("js-stream");
const text = (bytes) => Buffer.from(bytes).toString("utf-8");

before(async () => {
  await kinesis.send(new CreateStreamCommand({ StreamName: stream, ShardCount: 2 }));
  await waitUntilStreamExists({ client: kinesis, maxWaitTime: 60, minDelay: 1 }, { StreamName: stream });
});

after(async () => {
  await kinesis.send(new DeleteStreamCommand({ StreamName: stream }));
  kinesis.destroy();
  reader.destroy();
  http2.connect = connect;
});

test("the Kinesis client talks HTTP/2 (h2c) to the edge by default", async () => {
  assert.ok(kinesis.config.requestHandler instanceof NodeHttp2Handler, "default handler is NodeHttp2Handler");
  assert.match(edge(), /^http:\/\//);
  const before = sessions.length;
  const out = await kinesis.send(new DescribeStreamSummaryCommand({ StreamName: stream }));
  assert.equal(out.StreamDescriptionSummary.OpenShardCount, 2);
  assert.equal(out.$metadata.httpStatusCode, 200);
  const opened = sessions.slice(before);
  assert.ok(opened.length >= 1, "the request went through an HTTP/2 session");
  for (const { authority, session } of opened) {
    assert.equal(new URL(authority).origin, new URL(edge()).origin);
    assert.equal(session.alpnProtocol, "h2c", "cleartext HTTP/2 with prior knowledge");
  }
});

test("PutRecord, ListShards, GetShardIterator and GetRecords", async () => {
  const { Shards } = await kinesis.send(new ListShardsCommand({ StreamName: stream }));
  assert.deepEqual(
    Shards.map((s) => s.ShardId),
    ["shardId-000000000000", "shardId-000000000001"],
  );
  const last = Shards[1];
  const put = await kinesis.send(
    new PutRecordCommand({
      StreamName: stream,
      PartitionKey: "pk",
      ExplicitHashKey: last.HashKeyRange.StartingHashKey,
      Data: Buffer.from("hello over h2"),
    }),
  );
  assert.equal(put.ShardId, last.ShardId);
  assert.match(put.SequenceNumber, /^\d+$/);

  const { ShardIterator } = await kinesis.send(
    new GetShardIteratorCommand({
      StreamName: stream,
      ShardId: put.ShardId,
      ShardIteratorType: "AT_SEQUENCE_NUMBER",
      StartingSequenceNumber: put.SequenceNumber,
    }),
  );
  const got = await kinesis.send(new GetRecordsCommand({ ShardIterator, Limit: 10 }));
  assert.equal(got.Records.length, 1);
  const [r] = got.Records;
  assert.equal(text(r.Data), "hello over h2");
  assert.equal(r.PartitionKey, "pk");
  assert.equal(r.SequenceNumber, put.SequenceNumber);
  assert.ok(r.ApproximateArrivalTimestamp instanceof Date);
  assert.equal(got.MillisBehindLatest, 0);
  assert.ok(got.NextShardIterator);

  // LATEST: only what arrives afterwards.
  const latest = await kinesis.send(
    new GetShardIteratorCommand({ StreamName: stream, ShardId: put.ShardId, ShardIteratorType: "LATEST" }),
  );
  const empty = await kinesis.send(new GetRecordsCommand({ ShardIterator: latest.ShardIterator }));
  assert.deepEqual(empty.Records, []);
  await kinesis.send(
    new PutRecordCommand({
      StreamName: stream,
      PartitionKey: "pk",
      ExplicitHashKey: last.HashKeyRange.EndingHashKey,
      Data: Buffer.from("later"),
    }),
  );
  const later = await kinesis.send(new GetRecordsCommand({ ShardIterator: empty.NextShardIterator }));
  assert.deepEqual(later.Records.map((x) => text(x.Data)), ["later"]);
});

test("PutRecords answers one entry per record, in order", async () => {
  const records = Array.from({ length: 50 }, (_, i) => ({
    PartitionKey: `key-${i}`,
    Data: Buffer.from(JSON.stringify({ i })),
  }));
  const out = await kinesis.send(new PutRecordsCommand({ StreamName: stream, Records: records }));
  assert.equal(out.FailedRecordCount, 0);
  assert.equal(out.Records.length, 50);
  for (const r of out.Records) {
    assert.match(r.SequenceNumber, /^\d+$/);
    assert.match(r.ShardId, /^shardId-00000000000[01]$/);
    assert.equal(r.ErrorCode, undefined);
  }
  // Read both shards from the start and find each record where its entry says.
  const found = new Map();
  for (const shard of ["shardId-000000000000", "shardId-000000000001"]) {
    let { ShardIterator } = await kinesis.send(
      new GetShardIteratorCommand({ StreamName: stream, ShardId: shard, ShardIteratorType: "TRIM_HORIZON" }),
    );
    for (;;) {
      const page = await reader.send(new GetRecordsCommand({ ShardIterator, Limit: 7 }));
      for (const r of page.Records) found.set(r.SequenceNumber, { shard, data: text(r.Data) });
      if (page.Records.length === 0) break;
      ShardIterator = page.NextShardIterator;
    }
  }
  out.Records.forEach((r, i) => {
    assert.deepEqual(found.get(r.SequenceNumber), { shard: r.ShardId, data: JSON.stringify({ i }) });
  });
});

test("errors come back as typed exceptions", async () => {
  await assert.rejects(
    kinesis.send(new DescribeStreamSummaryCommand({ StreamName: unique("js-missing") })),
    (e) => e.name === "ResourceNotFoundException" && e.$metadata.httpStatusCode === 400,
  );
  await assert.rejects(
    kinesis.send(new GetRecordsCommand({ ShardIterator: "not.an-iterator" })),
    (e) => e.name === "InvalidArgumentException",
  );
});

test("an explicitly configured NodeHttp2Handler works the same", async () => {
  const explicit = new KinesisClient(clientConfig({ requestHandler: new NodeHttp2Handler() }));
  try {
    const shards = await explicit.send(new ListShardsCommand({ StreamName: stream, MaxResults: 1 }));
    assert.equal(shards.Shards.length, 1);
    assert.ok(shards.NextToken);
    const rest = await explicit.send(new ListShardsCommand({ NextToken: shards.NextToken }));
    assert.deepEqual(rest.Shards.map((s) => s.ShardId), ["shardId-000000000001"]);
  } finally {
    explicit.destroy();
  }
});
