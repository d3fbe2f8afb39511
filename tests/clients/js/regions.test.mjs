// Regional resources through the AWS SDK for JavaScript v3: a Kinesis stream and a Cognito
// user pool created in another region than the suite's are seen only from their region,
// with ARNs (and pool ids) of that region.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  KinesisClient,
  CreateStreamCommand,
  DeleteStreamCommand,
  DescribeStreamSummaryCommand,
  ListStreamsCommand,
} from "@aws-sdk/client-kinesis";
import {
  CognitoIdentityProviderClient,
  CreateUserPoolCommand,
  DeleteUserPoolCommand,
  DescribeUserPoolCommand,
  ListUserPoolsCommand,
} from "@aws-sdk/client-cognito-identity-provider";
import { clientConfig, region, unique } from "./lib.mjs";

const other = region() === "us-west-2" ? "eu-west-1" : "us-west-2";

const rejectsWith = (p, name) =>
  assert.rejects(p, (e) => (e.name === name ? true : assert.fail(`${e.name}: ${e.message}`)));

test("a stream of another region is seen only from that region", async () => {
  const home = new KinesisClient(clientConfig());
  const west = new KinesisClient(clientConfig({ region: other }));
  const StreamName = unique("js-regional");
  await west.send(new CreateStreamCommand({ StreamName, ShardCount: 1 }));
  try {
    const { StreamDescriptionSummary: s } = await west.send(new DescribeStreamSummaryCommand({ StreamName }));
    assert.match(s.StreamARN, new RegExp(`^arn:aws:kinesis:${other}:\\d{12}:stream/${StreamName}$`));
    assert.ok((await west.send(new ListStreamsCommand({}))).StreamNames.includes(StreamName));
    await rejectsWith(home.send(new DescribeStreamSummaryCommand({ StreamName })), "ResourceNotFoundException");
    await rejectsWith(
      home.send(new DescribeStreamSummaryCommand({ StreamARN: s.StreamARN })),
      "ResourceNotFoundException",
    );
  } finally {
    await west.send(new DeleteStreamCommand({ StreamName }));
  }
});

test("a user pool of another region is seen only from that region", async () => {
  const home = new CognitoIdentityProviderClient(clientConfig());
  const west = new CognitoIdentityProviderClient(clientConfig({ region: other }));
  const { UserPool: pool } = await west.send(new CreateUserPoolCommand({ PoolName: unique("js-regional") }));
  try {
    assert.ok(pool.Id.startsWith(`${other}_`), pool.Id);
    assert.ok(pool.Arn.startsWith(`arn:aws:cognito-idp:${other}:`), pool.Arn);
    await rejectsWith(home.send(new DescribeUserPoolCommand({ UserPoolId: pool.Id })), "ResourceNotFoundException");
    const homePools = (await home.send(new ListUserPoolsCommand({ MaxResults: 60 }))).UserPools.map((p) => p.Id);
    assert.ok(!homePools.includes(pool.Id));
    const westPools = (await west.send(new ListUserPoolsCommand({ MaxResults: 60 }))).UserPools.map((p) => p.Id);
    assert.ok(westPools.includes(pool.Id));
  } finally {
    await west.send(new DeleteUserPoolCommand({ UserPoolId: pool.Id }));
  }
});
