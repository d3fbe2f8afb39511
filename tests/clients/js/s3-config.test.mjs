// S3 beyond objects through the AWS SDK for JavaScript v3: tagging, object headers,
// conditional writes, bucket policies and bucket configurations.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  S3Client,
  CreateBucketCommand,
  DeleteBucketCorsCommand,
  DeleteBucketPolicyCommand,
  GetBucketCorsCommand,
  GetBucketEncryptionCommand,
  GetBucketLifecycleConfigurationCommand,
  GetBucketPolicyCommand,
  GetBucketPolicyStatusCommand,
  GetBucketTaggingCommand,
  GetBucketVersioningCommand,
  GetObjectCommand,
  GetObjectTaggingCommand,
  GetPublicAccessBlockCommand,
  HeadObjectCommand,
  PutBucketCorsCommand,
  PutBucketLifecycleConfigurationCommand,
  PutBucketPolicyCommand,
  PutBucketTaggingCommand,
  PutObjectCommand,
  PutObjectTaggingCommand,
} from "@aws-sdk/client-s3";
import { clientConfig, edge, removeBucket, unique } from "./lib.mjs";

const s3 = new S3Client(clientConfig({ forcePathStyle: true }));
const bucket = unique("js-config");
const rejectsWith = (p, name) => assert.rejects(p, (e) => (e.name === name || e.Code === name ? true : assert.fail(`${e.name}: ${e.message}`)));

before(async () => {
  await s3.send(new CreateBucketCommand({ Bucket: bucket }));
});

after(async () => {
  await removeBucket(s3, bucket);
  s3.destroy();
});

test("bucket and object tagging", async () => {
  await rejectsWith(s3.send(new GetBucketTaggingCommand({ Bucket: bucket })), "NoSuchTagSet");
  await s3.send(new PutBucketTaggingCommand({ Bucket: bucket, Tagging: { TagSet: [{ Key: "team", Value: "data" }] } }));
  assert.deepEqual((await s3.send(new GetBucketTaggingCommand({ Bucket: bucket }))).TagSet, [{ Key: "team", Value: "data" }]);
  await rejectsWith(
    s3.send(new PutBucketTaggingCommand({ Bucket: bucket, Tagging: { TagSet: [{ Key: "aws:x", Value: "1" }] } })),
    "InvalidTag",
  );

  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "t.txt", Body: "t", Tagging: "a=1&b=two%20words" }));
  const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: "t.txt" }));
  assert.equal(got.TagCount, 2);
  await got.Body.transformToString();
  assert.deepEqual((await s3.send(new GetObjectTaggingCommand({ Bucket: bucket, Key: "t.txt" }))).TagSet, [
    { Key: "a", Value: "1" },
    { Key: "b", Value: "two words" },
  ]);
  await s3.send(new PutObjectTaggingCommand({ Bucket: bucket, Key: "t.txt", Tagging: { TagSet: [{ Key: "c", Value: "3" }] } }));
  assert.deepEqual((await s3.send(new GetObjectTaggingCommand({ Bucket: bucket, Key: "t.txt" }))).TagSet, [{ Key: "c", Value: "3" }]);
});

test("standard headers and conditional writes", async () => {
  const put = await s3.send(
    new PutObjectCommand({
      Bucket: bucket,
      Key: "h.txt",
      Body: "h",
      CacheControl: "max-age=60",
      ContentDisposition: "inline",
      StorageClass: "STANDARD_IA",
      IfNoneMatch: "*",
    }),
  );
  const head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: "h.txt" }));
  assert.equal(head.CacheControl, "max-age=60");
  assert.equal(head.ContentDisposition, "inline");
  assert.equal(head.StorageClass, "STANDARD_IA");
  await rejectsWith(s3.send(new PutObjectCommand({ Bucket: bucket, Key: "h.txt", Body: "again", IfNoneMatch: "*" })), "PreconditionFailed");
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "h.txt", Body: "swap", IfMatch: put.ETag }));
  await rejectsWith(s3.send(new PutObjectCommand({ Bucket: bucket, Key: "h.txt", Body: "late", IfMatch: put.ETag })), "PreconditionFailed");
  await rejectsWith(s3.send(new PutObjectCommand({ Bucket: bucket, Key: "x.txt", Body: "x", StorageClass: "FROZEN" })), "InvalidStorageClass");
});

test("bucket policy and configurations", async () => {
  await rejectsWith(s3.send(new GetBucketPolicyCommand({ Bucket: bucket })), "NoSuchBucketPolicy");
  const policy = JSON.stringify({
    Version: "2012-10-17",
    Statement: [{ Effect: "Allow", Principal: "*", Action: "s3:GetObject", Resource: `arn:aws:s3:::${bucket}/public/*` }],
  });
  await s3.send(new PutBucketPolicyCommand({ Bucket: bucket, Policy: policy }));
  assert.equal((await s3.send(new GetBucketPolicyCommand({ Bucket: bucket }))).Policy, policy);
  assert.equal((await s3.send(new GetBucketPolicyStatusCommand({ Bucket: bucket }))).PolicyStatus.IsPublic, true);
  await rejectsWith(
    s3.send(new PutBucketPolicyCommand({ Bucket: bucket, Policy: policy.replace(`:::${bucket}/`, ":::elsewhere/") })),
    "MalformedPolicy",
  );
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "public/p.txt", Body: "public" }));
  // An unsigned GET of the public prefix.
  const base = edge().replace(/\/$/, "");
  const open = await fetch(`${base}/${bucket}/public/p.txt`);
  assert.equal(open.status, 200);
  assert.equal(await open.text(), "public");
  const closed = await fetch(`${base}/${bucket}/h.txt`);
  assert.equal(closed.status, 403);
  await s3.send(new DeleteBucketPolicyCommand({ Bucket: bucket }));

  const enc = await s3.send(new GetBucketEncryptionCommand({ Bucket: bucket }));
  assert.equal(enc.ServerSideEncryptionConfiguration.Rules[0].ApplyServerSideEncryptionByDefault.SSEAlgorithm, "AES256");
  assert.equal((await s3.send(new GetBucketVersioningCommand({ Bucket: bucket }))).Status, undefined);
  await rejectsWith(s3.send(new GetPublicAccessBlockCommand({ Bucket: bucket })), "NoSuchPublicAccessBlockConfiguration");
  await rejectsWith(s3.send(new GetBucketCorsCommand({ Bucket: bucket })), "NoSuchCORSConfiguration");
  const rules = [{ AllowedOrigins: ["https://app.example.com"], AllowedMethods: ["PUT"], AllowedHeaders: ["*"], MaxAgeSeconds: 600 }];
  await s3.send(new PutBucketCorsCommand({ Bucket: bucket, CORSConfiguration: { CORSRules: rules } }));
  assert.deepEqual((await s3.send(new GetBucketCorsCommand({ Bucket: bucket }))).CORSRules, rules);
  await s3.send(new DeleteBucketCorsCommand({ Bucket: bucket }));
  await s3.send(
    new PutBucketLifecycleConfigurationCommand({
      Bucket: bucket,
      LifecycleConfiguration: { Rules: [{ ID: "tmp", Status: "Enabled", Filter: { Prefix: "tmp/" }, Expiration: { Days: 1 } }] },
    }),
  );
  const lc = await s3.send(new GetBucketLifecycleConfigurationCommand({ Bucket: bucket }));
  assert.equal(lc.Rules[0].ID, "tmp");
  assert.deepEqual(lc.Rules[0].Expiration, { Days: 1 });
});

test("flexible checksums: the SDK's CRC32C is verified, kept, returned and checked on read", async () => {
  const body = Buffer.from("hello world".repeat(1000));
  const put = await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "sums/k", Body: body, ChecksumAlgorithm: "CRC32C" }));
  assert.ok(put.ChecksumCRC32C, "the answer carries the checksum");
  const head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: "sums/k", ChecksumMode: "ENABLED" }));
  assert.equal(head.ChecksumCRC32C, put.ChecksumCRC32C);
  const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: "sums/k", ChecksumMode: "ENABLED" }));
  assert.equal(Buffer.from(await got.Body.transformToByteArray()).toString(), body.toString());
  await rejectsWith(s3.send(new PutObjectCommand({ Bucket: bucket, Key: "sums/bad", Body: body, ChecksumCRC32: "AAAAAA==" })), "BadDigest");
});
