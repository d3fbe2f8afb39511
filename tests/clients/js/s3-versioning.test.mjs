// S3 object versioning through the AWS SDK for JavaScript v3: versions, delete markers,
// ListObjectVersions, and reads and deletes by VersionId.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  S3Client,
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  GetBucketVersioningCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectVersionsCommand,
  ListObjectsV2Command,
  PutBucketVersioningCommand,
  PutObjectCommand,
} from "@aws-sdk/client-s3";
import { clientConfig, removeVersionedBucket, unique } from "./lib.mjs";

const s3 = new S3Client(clientConfig({ forcePathStyle: true }));
const bucket = unique("js-versions");

const text = async (out) => await out.Body.transformToString();
const read = async (input) => await text(await s3.send(new GetObjectCommand({ Bucket: bucket, ...input })));
/** The versions and markers of one key, newest first, as [id, IsLatest] pairs. */
async function versionsOf(Key) {
  const out = await s3.send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: Key }));
  return {
    versions: (out.Versions ?? []).filter((v) => v.Key === Key).map((v) => [v.VersionId, v.IsLatest]),
    markers: (out.DeleteMarkers ?? []).filter((m) => m.Key === Key).map((m) => [m.VersionId, m.IsLatest]),
  };
}

before(async () => {
  await s3.send(new CreateBucketCommand({ Bucket: bucket }));
});

after(async () => {
  try {
    await removeVersionedBucket(s3, bucket);
  } finally {
    s3.destroy();
  }
});

test("versioning is off, then enabled", async () => {
  assert.equal((await s3.send(new GetBucketVersioningCommand({ Bucket: bucket }))).Status, undefined);
  await s3.send(new PutBucketVersioningCommand({ Bucket: bucket, VersioningConfiguration: { Status: "Enabled" } }));
  assert.equal((await s3.send(new GetBucketVersioningCommand({ Bucket: bucket }))).Status, "Enabled");
});

test("two puts make two versions; each is read by its VersionId", async () => {
  await s3.send(new PutBucketVersioningCommand({ Bucket: bucket, VersioningConfiguration: { Status: "Enabled" } }));
  const first = await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "two.txt", Body: "first" }));
  const second = await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "two.txt", Body: "second" }));
  assert.ok(first.VersionId && second.VersionId, "each put answers its version");
  assert.notEqual(first.VersionId, second.VersionId);
  assert.ok(![first.VersionId, second.VersionId].includes("null"));

  const current = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: "two.txt" }));
  assert.equal(await text(current), "second");
  assert.equal(current.VersionId, second.VersionId);
  const old = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: "two.txt", VersionId: first.VersionId }));
  assert.equal(await text(old), "first");
  assert.equal(old.VersionId, first.VersionId);
  const head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: "two.txt", VersionId: first.VersionId }));
  assert.equal(head.ContentLength, "first".length);
  assert.equal(head.VersionId, first.VersionId);

  assert.deepEqual((await versionsOf("two.txt")).versions, [
    [second.VersionId, true],
    [first.VersionId, false],
  ]);
});

test("DeleteObject adds a delete marker; deleting the marker by VersionId brings the object back", async () => {
  await s3.send(new PutBucketVersioningCommand({ Bucket: bucket, VersioningConfiguration: { Status: "Enabled" } }));
  const v1 = (await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "gone.txt", Body: "one" }))).VersionId;
  const v2 = (await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "gone.txt", Body: "two" }))).VersionId;

  const del = await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: "gone.txt" }));
  assert.equal(del.DeleteMarker, true);
  assert.ok(del.VersionId && ![v1, v2, "null"].includes(del.VersionId), "the marker has a version of its own");

  await assert.rejects(
    s3.send(new GetObjectCommand({ Bucket: bucket, Key: "gone.txt" })),
    (e) => e.name === "NoSuchKey" && e.$metadata.httpStatusCode === 404,
  );
  // A delete marker has no data: naming it is 405 Method Not Allowed.
  await assert.rejects(
    s3.send(new GetObjectCommand({ Bucket: bucket, Key: "gone.txt", VersionId: del.VersionId })),
    (e) => e.$metadata.httpStatusCode === 405,
  );
  const listed = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: "gone.txt" }));
  assert.equal(listed.Contents, undefined);
  assert.equal(await read({ Key: "gone.txt", VersionId: v1 }), "one");

  const { versions, markers } = await versionsOf("gone.txt");
  assert.deepEqual(versions, [
    [v2, false],
    [v1, false],
  ]);
  assert.deepEqual(markers, [[del.VersionId, true]]);
  const raw = await s3.send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: "gone.txt" }));
  for (const v of raw.Versions) {
    assert.equal(v.Size, 3);
    assert.ok(v.ETag && v.LastModified instanceof Date);
  }

  const undone = await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: "gone.txt", VersionId: del.VersionId }));
  assert.equal(undone.VersionId, del.VersionId);
  assert.equal(undone.DeleteMarker, true, "what was deleted was a delete marker");
  const back = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: "gone.txt" }));
  assert.equal(await text(back), "two");
  assert.equal(back.VersionId, v2);
  assert.deepEqual((await versionsOf("gone.txt")).markers, []);

  // Deleting the current version for good makes the previous one current.
  const permanent = await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: "gone.txt", VersionId: v2 }));
  assert.equal(permanent.VersionId, v2);
  assert.ok(!permanent.DeleteMarker);
  const previous = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: "gone.txt" }));
  assert.equal(await text(previous), "one");
  assert.equal(previous.VersionId, v1);
  assert.deepEqual((await versionsOf("gone.txt")).versions, [[v1, true]]);
});

test("a version that does not exist is NoSuchVersion", async () => {
  await s3.send(new PutBucketVersioningCommand({ Bucket: bucket, VersioningConfiguration: { Status: "Enabled" } }));
  const v1 = (await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "missing.txt", Body: "one" }))).VersionId;
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "missing.txt", Body: "two" }));
  await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: "missing.txt", VersionId: v1 }));
  await assert.rejects(
    s3.send(new GetObjectCommand({ Bucket: bucket, Key: "missing.txt", VersionId: v1 })),
    (e) => (e.name === "NoSuchVersion" && e.$metadata.httpStatusCode === 404) || assert.fail(`${e.name}: ${e.message}`),
  );
  // A made-up id may be refused as malformed (InvalidArgument) before it is looked up.
  await assert.rejects(
    s3.send(new GetObjectCommand({ Bucket: bucket, Key: "missing.txt", VersionId: "does-not-exist-123" })),
    (e) => ["NoSuchVersion", "InvalidArgument"].includes(e.name) || assert.fail(`${e.name}: ${e.message}`),
  );
  assert.equal(await read({ Key: "missing.txt" }), "two");
});
