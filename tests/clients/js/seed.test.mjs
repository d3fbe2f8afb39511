// The seed's two Lambda handlers (seed/upload.mjs, seed/processor.mjs), unchanged in
// style, against sluice. Their SDK clients are created with `{}`: the endpoint comes only
// from AWS_ENDPOINT_URL, with the region and credentials from the environment, as in a
// Lambda whose environment points at sluice.
//
// 1. the upload handler gets an API Gateway HTTP API (payload 2.0) event with a JWT
//    authorizer's claims, puts uploads/<name> to S3 and a record to Kinesis;
// 2. the test reads that record with GetRecords and builds the event Lambda's Kinesis
//    event-source mapping would deliver;
// 3. the processor handler reads the object and writes processed/<name> upper-cased.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { readFileSync } from "node:fs";
import {
  S3Client,
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
} from "@aws-sdk/client-s3";
import {
  KinesisClient,
  GetRecordsCommand,
  GetShardIteratorCommand,
  ListShardsCommand,
} from "@aws-sdk/client-kinesis";
import { CognitoIdentityProviderClient, InitiateAuthCommand } from "@aws-sdk/client-cognito-identity-provider";
import { clientConfig, edge, env, eventually, region, unique } from "./lib.mjs";

const ACCOUNT_ID = "000000000000";
const UPLOAD_BUCKET = process.env.SLUICE_TEST_BUCKET || "sluice";
const STREAM_NAME = process.env.SLUICE_TEST_STREAM || "uploads-stream";
const PROCESSED_BUCKET = unique("js-processed");

const s3 = new S3Client(clientConfig({ forcePathStyle: true }));
const kinesis = new KinesisClient(clientConfig());
// The seed's KinesisClient({}) talks HTTP/2 (h2c) and signs `:authority`, as against AWS.

let upload;
let processor;

before(async () => {
  assert.equal(process.env.AWS_ENDPOINT_URL, edge(), "the handlers find sluice through AWS_ENDPOINT_URL only");
  for (const f of ["seed/upload.mjs", "seed/processor.mjs"]) {
    const src = readFileSync(new URL(f, import.meta.url), "utf-8");
    assert.doesNotMatch(src, /endpoint\s*:/i, `${f} sets no endpoint in code`);
    assert.match(src, /new S3Client\(\{\}\)/);
  }
  process.env.UPLOAD_BUCKET = UPLOAD_BUCKET;
  process.env.STREAM_NAME = STREAM_NAME;
  process.env.PROCESSED_BUCKET = PROCESSED_BUCKET;
  await s3.send(new CreateBucketCommand({ Bucket: PROCESSED_BUCKET }));
  // Imported only now: the handlers read their configuration at load, as in Lambda.
  upload = (await import("./seed/upload.mjs")).handler;
  processor = (await import("./seed/processor.mjs")).handler;
});

after(async () => {
  await s3.send(new DeleteObjectCommand({ Bucket: PROCESSED_BUCKET, Key: processedKey })).catch(() => {});
  await s3.send(new DeleteBucketCommand({ Bucket: PROCESSED_BUCKET })).catch(() => {});
  s3.destroy();
  kinesis.destroy();
});

const filename = `${unique("seed")}.txt`;
const content = "hello kinesis, from the seed's handlers";
const processedKey = `processed/${filename}`;

/** Signs in like the seed's A4, with the JavaScript SDK, for the claims an authorizer passes on. */
async function signIn() {
  const idp = new CognitoIdentityProviderClient(clientConfig());
  try {
    const out = await idp.send(
      new InitiateAuthCommand({
        AuthFlow: "USER_PASSWORD_AUTH",
        ClientId: env("SLUICE_TEST_CLIENT_ID"),
        AuthParameters: { USERNAME: env("SLUICE_TEST_USER_EMAIL"), PASSWORD: env("SLUICE_TEST_USER_PASSWORD") },
      }),
    );
    const token = out.AuthenticationResult.IdToken;
    return JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString("utf-8"));
  } finally {
    idp.destroy();
  }
}

/** An API Gateway HTTP API (payload format 2.0) event for POST /uploads. */
function httpApiEvent(claims, body, requestId) {
  const now = new Date();
  return {
    version: "2.0",
    routeKey: "POST /uploads",
    rawPath: "/uploads",
    rawQueryString: "",
    headers: { "content-type": "application/json", authorization: "Bearer <IdToken>" },
    requestContext: {
      accountId: ACCOUNT_ID,
      apiId: "sluice",
      authorizer: { jwt: { claims, scopes: null } },
      domainName: "sluice.local",
      domainPrefix: "sluice",
      http: { method: "POST", path: "/uploads", protocol: "HTTP/1.1", sourceIp: "127.0.0.1", userAgent: "node" },
      requestId,
      routeKey: "POST /uploads",
      stage: "$default",
      time: now.toUTCString(),
      timeEpoch: now.getTime(),
    },
    body: JSON.stringify(body),
    isBase64Encoded: false,
  };
}

/** The event Lambda's Kinesis event-source mapping delivers for these records of a shard. */
function kinesisEvent(shardId, records) {
  return {
    Records: records.map((r) => ({
      kinesis: {
        kinesisSchemaVersion: "1.0",
        partitionKey: r.PartitionKey,
        sequenceNumber: r.SequenceNumber,
        data: Buffer.from(r.Data).toString("base64"),
        approximateArrivalTimestamp: r.ApproximateArrivalTimestamp.getTime() / 1000,
      },
      eventSource: "aws:kinesis",
      eventVersion: "1.0",
      eventID: `${shardId}:${r.SequenceNumber}`,
      eventName: "aws:kinesis:record",
      invokeIdentityArn: `arn:aws:iam::${ACCOUNT_ID}:role/kinesis-processor-role`,
      awsRegion: region(),
      eventSourceARN: `arn:aws:kinesis:${region()}:${ACCOUNT_ID}:stream/${STREAM_NAME}`,
    })),
  };
}

test("the seed's upload and processor handlers run against sluice", async () => {
  const claims = await signIn();
  assert.match(claims.sub, /^[0-9a-f-]{36}$/);

  // Where the stream ends now (the seed's mapping starts at LATEST).
  const { Shards } = await kinesis.send(new ListShardsCommand({ StreamName: STREAM_NAME }));
  const iterators = new Map();
  for (const s of Shards) {
    const { ShardIterator } = await kinesis.send(
      new GetShardIteratorCommand({ StreamName: STREAM_NAME, ShardId: s.ShardId, ShardIteratorType: "LATEST" }),
    );
    iterators.set(s.ShardId, ShardIterator);
  }

  const requestId = crypto.randomUUID();
  const response = await upload(httpApiEvent(claims, { filename, content }, requestId));
  assert.equal(response.statusCode, 200);
  assert.deepEqual(JSON.parse(response.body), {
    message: "Uploaded and queued for processing",
    s3: { bucket: UPLOAD_BUCKET, key: `uploads/${filename}` },
  });

  const stored = await s3.send(new GetObjectCommand({ Bucket: UPLOAD_BUCKET, Key: `uploads/${filename}` }));
  assert.equal(await stored.Body.transformToString(), content);
  assert.equal(stored.ContentType, "text/plain");

  // The record the handler put. (sluice also enqueues S3 writes into uploads/ by itself:
  // that record has another requestId.)
  const [shardId, record] = await eventually(async () => {
    for (const [shard, it] of iterators) {
      const out = await kinesis.send(new GetRecordsCommand({ ShardIterator: it }));
      iterators.set(shard, out.NextShardIterator);
      for (const r of out.Records) {
        const payload = JSON.parse(Buffer.from(r.Data).toString("utf-8"));
        if (payload.requestId === requestId) return [shard, r];
      }
    }
    return null;
  }, "the upload handler's record");
  const payload = JSON.parse(Buffer.from(record.Data).toString("utf-8"));
  assert.equal(payload.bucket, UPLOAD_BUCKET);
  assert.equal(payload.key, `uploads/${filename}`);
  assert.equal(payload.userSub, claims.sub);
  assert.ok(!Number.isNaN(Date.parse(payload.uploadedAt)));
  assert.match(record.PartitionKey, /^[0-9a-f-]{36}$/);

  const result = await processor(kinesisEvent(shardId, [record]));
  assert.deepEqual(result, { ok: true });
  const processed = await s3.send(new GetObjectCommand({ Bucket: PROCESSED_BUCKET, Key: processedKey }));
  assert.equal(await processed.Body.transformToString(), content.toUpperCase());
  assert.equal(processed.ContentType, "text/plain");

  // A redelivery (at-least-once) rewrites the same output.
  assert.deepEqual(await processor(kinesisEvent(shardId, [record, record])), { ok: true });
  const again = await s3.send(new GetObjectCommand({ Bucket: PROCESSED_BUCKET, Key: processedKey }));
  assert.equal(await again.Body.transformToString(), content.toUpperCase());

  // sluice's built-in mapping consumes the same stream and writes the same result into
  // the upload bucket.
  const builtIn = await eventually(async () => {
    try {
      const o = await s3.send(new GetObjectCommand({ Bucket: UPLOAD_BUCKET, Key: processedKey }));
      return await o.Body.transformToString();
    } catch (e) {
      if (e.name === "NoSuchKey") return null;
      throw e;
    }
  }, "the built-in processor's output");
  assert.equal(builtIn, content.toUpperCase());
});
