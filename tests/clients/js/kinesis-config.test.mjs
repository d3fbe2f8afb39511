// A Kinesis stream's configuration through the AWS SDK for JavaScript v3: capacity mode,
// encryption, enhanced monitoring, resource policies, and the request-level limits of
// PutRecords — each with valid input and with its documented errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  KinesisClient,
  CreateStreamCommand,
  DeleteStreamCommand,
  DescribeStreamSummaryCommand,
  DisableEnhancedMonitoringCommand,
  EnableEnhancedMonitoringCommand,
  GetResourcePolicyCommand,
  DeleteResourcePolicyCommand,
  PutRecordCommand,
  PutRecordsCommand,
  PutResourcePolicyCommand,
  StartStreamEncryptionCommand,
  StopStreamEncryptionCommand,
  UpdateShardCountCommand,
  UpdateStreamModeCommand,
  waitUntilStreamExists,
} from "@aws-sdk/client-kinesis";
import { clientConfig, unique } from "./lib.mjs";

const kinesis = new KinesisClient(clientConfig());
const stream = unique("js-config");
let streamArn;

const summary = async () =>
  (await kinesis.send(new DescribeStreamSummaryCommand({ StreamName: stream }))).StreamDescriptionSummary;

async function refused(command, name) {
  await assert.rejects(kinesis.send(command), (e) => {
    assert.equal(e.name, name, e.message);
    return true;
  });
}

before(async () => {
  await kinesis.send(new CreateStreamCommand({ StreamName: stream, ShardCount: 1 }));
  await waitUntilStreamExists({ client: kinesis, maxWaitTime: 60, minDelay: 1 }, { StreamName: stream });
  streamArn = (await summary()).StreamARN;
});

after(async () => {
  await kinesis.send(new DeleteStreamCommand({ StreamName: stream }));
  kinesis.destroy();
});

test("capacity mode: switched by ARN, shards kept, no manual scaling on demand, two a day", async () => {
  await kinesis.send(new UpdateStreamModeCommand({ StreamARN: streamArn, StreamModeDetails: { StreamMode: "ON_DEMAND" } }));
  const s = await summary();
  assert.equal(s.StreamModeDetails.StreamMode, "ON_DEMAND");
  assert.equal(s.OpenShardCount, 1);
  await refused(
    new UpdateShardCountCommand({ StreamName: stream, TargetShardCount: 2, ScalingType: "UNIFORM_SCALING" }),
    "ValidationException",
  );
  await kinesis.send(new UpdateStreamModeCommand({ StreamARN: streamArn, StreamModeDetails: { StreamMode: "PROVISIONED" } }));
  await refused(
    new UpdateStreamModeCommand({ StreamARN: streamArn, StreamModeDetails: { StreamMode: "ON_DEMAND" } }),
    "LimitExceededException",
  );
  await refused(
    new UpdateStreamModeCommand({ StreamARN: streamArn, StreamModeDetails: { StreamMode: "NEVER" } }),
    "ValidationException",
  );
});

test("encryption: the key is kept and reported, NONE and malformed keys refused", async () => {
  await kinesis.send(new StartStreamEncryptionCommand({ StreamName: stream, EncryptionType: "KMS", KeyId: "alias/aws/kinesis" }));
  const s = await summary();
  assert.equal(s.EncryptionType, "KMS");
  assert.equal(s.KeyId, "alias/aws/kinesis");
  const put = await kinesis.send(new PutRecordCommand({ StreamName: stream, Data: Buffer.from("x"), PartitionKey: "k" }));
  assert.equal(put.EncryptionType, "KMS");
  await refused(
    new StartStreamEncryptionCommand({ StreamName: stream, EncryptionType: "NONE", KeyId: "alias/aws/kinesis" }),
    "InvalidArgumentException",
  );
  await refused(
    new StartStreamEncryptionCommand({ StreamName: stream, EncryptionType: "KMS", KeyId: "no such form" }),
    "InvalidArgumentException",
  );
  await kinesis.send(new StopStreamEncryptionCommand({ StreamName: stream, EncryptionType: "KMS", KeyId: "alias/aws/kinesis" }));
  const after = await summary();
  assert.equal(after.EncryptionType, "NONE");
  assert.equal(after.KeyId, undefined);
});

test("enhanced monitoring: ALL expands, current and desired metrics, unknown metrics refused", async () => {
  const on = await kinesis.send(new EnableEnhancedMonitoringCommand({ StreamName: stream, ShardLevelMetrics: ["ALL"] }));
  assert.deepEqual(on.CurrentShardLevelMetrics, []);
  assert.equal(on.DesiredShardLevelMetrics.length, 7);
  assert.deepEqual((await summary()).EnhancedMonitoring, [{ ShardLevelMetrics: on.DesiredShardLevelMetrics }]);
  const off = await kinesis.send(new DisableEnhancedMonitoringCommand({ StreamName: stream, ShardLevelMetrics: ["IncomingRecords"] }));
  assert.equal(off.CurrentShardLevelMetrics.length, 7);
  assert.ok(!off.DesiredShardLevelMetrics.includes("IncomingRecords"));
  await refused(new EnableEnhancedMonitoringCommand({ StreamName: stream, ShardLevelMetrics: ["Everything"] }), "ValidationException");
});

test("resource policies: validated, a Deny binds the account's key, the policy stays reachable", async () => {
  assert.equal((await kinesis.send(new GetResourcePolicyCommand({ ResourceARN: streamArn }))).Policy, "{}");
  await refused(new DeleteResourcePolicyCommand({ ResourceARN: streamArn }), "ResourceNotFoundException");
  const account = streamArn.split(":")[4];
  const policy = (effect, action) =>
    JSON.stringify({
      Version: "2012-10-17",
      Statement: [{ Effect: effect, Principal: { AWS: `arn:aws:iam::${account}:root` }, Action: action, Resource: streamArn }],
    });
  await refused(new PutResourcePolicyCommand({ ResourceARN: streamArn, Policy: policy("Allow", "sqs:SendMessage") }), "InvalidArgumentException");
  await kinesis.send(new PutResourcePolicyCommand({ ResourceARN: streamArn, Policy: policy("Deny", "kinesis:PutRecord") }));
  await refused(new PutRecordCommand({ StreamName: stream, Data: Buffer.from("x"), PartitionKey: "k" }), "AccessDeniedException");
  assert.match((await kinesis.send(new GetResourcePolicyCommand({ ResourceARN: streamArn }))).Policy, /kinesis:PutRecord/);
  await kinesis.send(new DeleteResourcePolicyCommand({ ResourceARN: streamArn }));
  await kinesis.send(new PutRecordCommand({ StreamName: stream, Data: Buffer.from("x"), PartitionKey: "k" }));
});

test("PutRecords: a record over the limit or a request over 5 MB fails as a whole", async () => {
  const records = [
    { Data: Buffer.from("a"), PartitionKey: "a" },
    { Data: Buffer.alloc(1024 * 1024), PartitionKey: "big" },
  ];
  await assert.rejects(kinesis.send(new PutRecordsCommand({ StreamName: stream, Records: records })), (e) => {
    assert.equal(e.name, "ValidationException");
    assert.match(e.message, /'records\.2\.member\.data'/);
    return true;
  });
  const heavy = Array.from({ length: 6 }, (_, i) => ({ Data: Buffer.alloc(1_000_000), PartitionKey: `k${i}` }));
  await assert.rejects(kinesis.send(new PutRecordsCommand({ StreamName: stream, Records: heavy })), (e) => {
    assert.equal(e.name, "InvalidArgumentException");
    assert.equal(e.message, "Records size exceeds 5 MB limit");
    return true;
  });
});
