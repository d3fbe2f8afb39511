// S3 Object Lock through the AWS SDK for JavaScript v3: a bucket created with object lock,
// GOVERNANCE retention and legal holds on versions, and the deletes by VersionId they refuse.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  S3Client,
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  GetBucketVersioningCommand,
  GetObjectCommand,
  GetObjectLegalHoldCommand,
  GetObjectLockConfigurationCommand,
  GetObjectRetentionCommand,
  HeadObjectCommand,
  ListObjectVersionsCommand,
  PutObjectCommand,
  PutObjectLegalHoldCommand,
} from "@aws-sdk/client-s3";
import { clientConfig, removeVersionedBucket, unique } from "./lib.mjs";

const s3 = new S3Client(clientConfig({ forcePathStyle: true }));
const bucket = unique("js-lock");

const rejectsWith = (p, name, httpStatus) =>
  assert.rejects(p, (e) =>
    (e.name === name || e.Code === name) && e.$metadata?.httpStatusCode === httpStatus
      ? true
      : assert.fail(`${e.name} (${e.$metadata?.httpStatusCode}): ${e.message}`),
  );

/** A date a day from now, in whole seconds (what comes back is compared to the second). */
function aDayFromNow() {
  const d = new Date(Date.now() + 24 * 3600 * 1000);
  d.setUTCMilliseconds(0);
  return d;
}
const seconds = (d) => Math.floor(d.getTime() / 1000);

async function versionIdsOf(Key) {
  const out = await s3.send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: Key }));
  return (out.Versions ?? []).filter((v) => v.Key === Key).map((v) => v.VersionId);
}

before(async () => {
  await s3.send(new CreateBucketCommand({ Bucket: bucket, ObjectLockEnabledForBucket: true }));
});

after(async () => {
  try {
    await removeVersionedBucket(s3, bucket);
  } finally {
    s3.destroy();
  }
});

test("a bucket created with ObjectLockEnabledForBucket is versioned and lock-enabled", async () => {
  assert.equal((await s3.send(new GetBucketVersioningCommand({ Bucket: bucket }))).Status, "Enabled");
  const config = (await s3.send(new GetObjectLockConfigurationCommand({ Bucket: bucket }))).ObjectLockConfiguration;
  assert.equal(config.ObjectLockEnabled, "Enabled");
  assert.equal(config.Rule, undefined);
});

test("a version under GOVERNANCE retention is deleted only with BypassGovernanceRetention", async () => {
  const until = aDayFromNow();
  const put = await s3.send(
    new PutObjectCommand({
      Bucket: bucket,
      Key: "governed.txt",
      Body: "governed",
      ObjectLockMode: "GOVERNANCE",
      ObjectLockRetainUntilDate: until,
    }),
  );
  const VersionId = put.VersionId;
  assert.ok(VersionId && VersionId !== "null", "the put answers its version");

  const head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: "governed.txt", VersionId }));
  assert.equal(head.ObjectLockMode, "GOVERNANCE");
  assert.ok(head.ObjectLockRetainUntilDate instanceof Date);
  assert.equal(seconds(head.ObjectLockRetainUntilDate), seconds(until));
  const { Retention } = await s3.send(new GetObjectRetentionCommand({ Bucket: bucket, Key: "governed.txt", VersionId }));
  assert.equal(Retention.Mode, "GOVERNANCE");
  assert.equal(seconds(Retention.RetainUntilDate), seconds(until));

  await rejectsWith(s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: "governed.txt", VersionId })), "AccessDenied", 403);
  const still = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: "governed.txt", VersionId }));
  assert.equal(await still.Body.transformToString(), "governed");

  const del = await s3.send(
    new DeleteObjectCommand({ Bucket: bucket, Key: "governed.txt", VersionId, BypassGovernanceRetention: true }),
  );
  assert.equal(del.$metadata.httpStatusCode, 204);
  assert.equal(del.VersionId, VersionId);
  assert.deepEqual(await versionIdsOf("governed.txt"), []);
});

test("a legal hold refuses deleting the version until it is turned OFF", async () => {
  const Key = "held.txt";
  const { VersionId } = await s3.send(new PutObjectCommand({ Bucket: bucket, Key, Body: "held" }));
  assert.ok(VersionId && VersionId !== "null");

  await s3.send(new PutObjectLegalHoldCommand({ Bucket: bucket, Key, VersionId, LegalHold: { Status: "ON" } }));
  const hold = await s3.send(new GetObjectLegalHoldCommand({ Bucket: bucket, Key, VersionId }));
  assert.equal(hold.LegalHold.Status, "ON");
  assert.equal((await s3.send(new HeadObjectCommand({ Bucket: bucket, Key, VersionId }))).ObjectLockLegalHoldStatus, "ON");

  // A legal hold is not retention: the bypass does not lift it.
  await rejectsWith(s3.send(new DeleteObjectCommand({ Bucket: bucket, Key, VersionId })), "AccessDenied", 403);
  await rejectsWith(
    s3.send(new DeleteObjectCommand({ Bucket: bucket, Key, VersionId, BypassGovernanceRetention: true })),
    "AccessDenied",
    403,
  );
  assert.deepEqual(await versionIdsOf(Key), [VersionId]);

  await s3.send(new PutObjectLegalHoldCommand({ Bucket: bucket, Key, VersionId, LegalHold: { Status: "OFF" } }));
  const del = await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key, VersionId }));
  assert.equal(del.$metadata.httpStatusCode, 204);
  assert.deepEqual(await versionIdsOf(Key), []);
});
