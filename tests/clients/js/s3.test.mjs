// S3 through the AWS SDK for JavaScript v3 with path-style addressing.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import {
  S3Client,
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  paginateListObjectsV2,
} from "@aws-sdk/client-s3";
import { clientConfig, removeBucket, unique } from "./lib.mjs";

const s3 = new S3Client(clientConfig({ forcePathStyle: true }));
const bucket = unique("js-bucket");
const md5 = (s) => crypto.createHash("md5").update(s).digest("hex");

before(async () => {
  await s3.send(new CreateBucketCommand({ Bucket: bucket }));
});

after(async () => {
  await removeBucket(s3, bucket);
  s3.destroy();
});

test("PutObject and GetObject, with metadata and content type", async () => {
  const body = "hello from the JavaScript SDK\n".repeat(10);
  const put = await s3.send(
    new PutObjectCommand({
      Bucket: bucket,
      Key: "docs/a.txt",
      Body: body,
      ContentType: "text/plain",
      Metadata: { origin: "js" },
    }),
  );
  assert.equal(put.ETag, `"${md5(body)}"`);
  const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: "docs/a.txt" }));
  assert.equal(await got.Body.transformToString(), body);
  assert.equal(got.ContentType, "text/plain");
  assert.equal(got.ContentLength, body.length);
  assert.deepEqual(got.Metadata, { origin: "js" });
  assert.equal(got.ETag, put.ETag);

  const bytes = crypto.randomBytes(100_000);
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "bin/random", Body: bytes }));
  const back = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: "bin/random", Range: "bytes=1000-1999" }));
  assert.equal(back.ContentRange, "bytes 1000-1999/100000");
  assert.deepEqual(Buffer.from(await back.Body.transformToByteArray()), bytes.subarray(1000, 2000));

  await assert.rejects(
    s3.send(new GetObjectCommand({ Bucket: bucket, Key: "docs/missing.txt" })),
    (e) => e.name === "NoSuchKey" && e.$metadata.httpStatusCode === 404,
  );
});

test("ListObjectsV2 with prefix, delimiter and continuation", async () => {
  const keys = ["list/a", "list/b", "list/sub/c", "list/sub/d", "list/z"];
  for (const k of keys) await s3.send(new PutObjectCommand({ Bucket: bucket, Key: k, Body: k }));

  const all = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: "list/" }));
  assert.deepEqual(all.Contents.map((o) => o.Key), keys);
  assert.equal(all.KeyCount, 5);
  assert.equal(all.Contents[0].Size, "list/a".length);

  const folded = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: "list/", Delimiter: "/" }));
  assert.deepEqual(folded.Contents.map((o) => o.Key), ["list/a", "list/b", "list/z"]);
  assert.deepEqual(folded.CommonPrefixes.map((p) => p.Prefix), ["list/sub/"]);

  const seen = [];
  let pages = 0;
  for await (const page of paginateListObjectsV2({ client: s3, pageSize: 2 }, { Bucket: bucket, Prefix: "list/" })) {
    pages += 1;
    seen.push(...(page.Contents ?? []).map((o) => o.Key));
  }
  assert.deepEqual(seen, keys);
  assert.equal(pages, 3);
});

test("DeleteObject", async () => {
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "gone", Body: "x" }));
  const out = await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: "gone" }));
  assert.equal(out.$metadata.httpStatusCode, 204);
  await assert.rejects(
    s3.send(new HeadObjectCommand({ Bucket: bucket, Key: "gone" })),
    (e) => e.name === "NotFound" && e.$metadata.httpStatusCode === 404,
  );
  const listed = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: "gone" }));
  assert.equal(listed.KeyCount, 0);
});
