// S3 objects' ACLs, encryption and listings' encoding through the AWS SDK for JavaScript
// v3: canned ACLs by the bucket's ownership controls, the encryption each object reports,
// `encoding-type=url` (which this SDK does not decode), and a multipart upload's checksum
// type remembered from its creation.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  S3Client,
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  GetObjectAclCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutBucketEncryptionCommand,
  PutBucketOwnershipControlsCommand,
  PutObjectAclCommand,
  PutObjectCommand,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { clientConfig, removeBucket, unique } from "./lib.mjs";

const s3 = new S3Client(clientConfig({ forcePathStyle: true }));
const bucket = unique("js-acl");
const rejectsWith = (p, name) =>
  assert.rejects(p, (e) => (e.name === name || e.Code === name ? true : assert.fail(`${e.name}: ${e.message}`)));
const ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers";

before(async () => {
  await s3.send(new CreateBucketCommand({ Bucket: bucket }));
});

after(async () => {
  await removeBucket(s3, bucket);
  s3.destroy();
});

test("canned ACLs are refused while ACLs are disabled, then kept and answered", async () => {
  await rejectsWith(
    s3.send(new PutObjectCommand({ Bucket: bucket, Key: "acl.txt", Body: "a", ACL: "public-read" })),
    "AccessControlListNotSupported",
  );
  await s3.send(
    new PutBucketOwnershipControlsCommand({
      Bucket: bucket,
      OwnershipControls: { Rules: [{ ObjectOwnership: "ObjectWriter" }] },
    }),
  );
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "acl.txt", Body: "a", ACL: "public-read" }));
  const public_ = await s3.send(new GetObjectAclCommand({ Bucket: bucket, Key: "acl.txt" }));
  assert.ok(public_.Grants.some((g) => g.Grantee.URI === ALL_USERS && g.Permission === "READ"));
  await s3.send(new PutObjectAclCommand({ Bucket: bucket, Key: "acl.txt", ACL: "private" }));
  const private_ = await s3.send(new GetObjectAclCommand({ Bucket: bucket, Key: "acl.txt" }));
  assert.deepEqual(private_.Grants.map((g) => g.Permission), ["FULL_CONTROL"]);
});

test("objects report the encryption they were written with", async () => {
  const put = await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "sse.txt", Body: "s" }));
  assert.equal(put.ServerSideEncryption, "AES256");
  await s3.send(
    new PutBucketEncryptionCommand({
      Bucket: bucket,
      ServerSideEncryptionConfiguration: {
        Rules: [{ ApplyServerSideEncryptionByDefault: { SSEAlgorithm: "aws:kms", KMSMasterKeyID: "alias/js" } }],
      },
    }),
  );
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "kms.txt", Body: "k" }));
  const head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: "kms.txt" }));
  assert.equal(head.ServerSideEncryption, "aws:kms");
  assert.equal(head.SSEKMSKeyId, "alias/js");
  assert.equal((await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: "sse.txt" }))).ServerSideEncryption, "AES256");
});

test("listings asked for encoding-type=url answer keys percent-encoded", async () => {
  const Key = "enc/a b+c&d.txt";
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key, Body: "e" }));
  const out = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: "enc/", EncodingType: "url" }));
  assert.equal(out.EncodingType, "url");
  assert.deepEqual(out.Contents.map((o) => o.Key), ["enc/a%20b%2Bc%26d.txt"]);
  assert.equal(decodeURIComponent(out.Contents[0].Key), Key);
  const raw = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: "enc/" }));
  assert.deepEqual(raw.Contents.map((o) => o.Key), [Key]);
});

test("a multipart upload remembers the checksum type it was created for", async () => {
  const created = await s3.send(
    new CreateMultipartUploadCommand({
      Bucket: bucket,
      Key: "mp.bin",
      ChecksumAlgorithm: "CRC32",
      ChecksumType: "FULL_OBJECT",
    }),
  );
  assert.equal(created.ChecksumType, "FULL_OBJECT");
  const part = await s3.send(
    new UploadPartCommand({
      Bucket: bucket,
      Key: "mp.bin",
      UploadId: created.UploadId,
      PartNumber: 1,
      Body: "only part",
      ChecksumAlgorithm: "CRC32",
    }),
  );
  const done = await s3.send(
    new CompleteMultipartUploadCommand({
      Bucket: bucket,
      Key: "mp.bin",
      UploadId: created.UploadId,
      MultipartUpload: { Parts: [{ PartNumber: 1, ETag: part.ETag, ChecksumCRC32: part.ChecksumCRC32 }] },
    }),
  );
  // Full object: the CRC32 of the whole (here the part's), without a part count.
  assert.equal(done.ChecksumCRC32, part.ChecksumCRC32);
});
