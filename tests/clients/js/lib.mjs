// Shared by the tests: the server's URLs and key come from the environment that
// crates/sluice/tests/clients.rs sets (see README.md beside this file).
import crypto from "node:crypto";
import zlib from "node:zlib";
import {
  DeleteBucketCommand,
  DeleteObjectCommand,
  HeadObjectCommand,
  ListObjectVersionsCommand,
  PutObjectLegalHoldCommand,
  paginateListObjectsV2,
} from "@aws-sdk/client-s3";

export function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through crates/sluice/tests/clients.rs`);
  }
  return value;
}

export const edge = () => env("SLUICE_TEST_EDGE_URL");
export const region = () => process.env.AWS_REGION || "us-east-2";

/** Client options with the endpoint given in code (the seed's handlers use none). */
export const clientConfig = (extra = {}) => ({
  endpoint: edge(),
  region: region(),
  credentials: {
    accessKeyId: env("AWS_ACCESS_KEY_ID"),
    secretAccessKey: env("AWS_SECRET_ACCESS_KEY"),
  },
  maxAttempts: 1,
  ...extra,
});

export const unique = (prefix) => `${prefix}-${crypto.randomUUID().slice(0, 12)}`;

/** Polls fn until it returns a truthy value; fails after a generous deadline. */
export async function eventually(fn, what, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Deletes a test's bucket with every object in it. */
export async function removeBucket(s3, bucket) {
  for await (const page of paginateListObjectsV2({ client: s3 }, { Bucket: bucket })) {
    for (const o of page.Contents ?? []) await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: o.Key }));
  }
  await s3.send(new DeleteBucketCommand({ Bucket: bucket }));
}

/** Every object version and delete marker of a bucket, as [{ Key, VersionId, marker }]. */
export async function allVersions(s3, Bucket) {
  const found = [];
  let markers = {};
  for (;;) {
    const page = await s3.send(new ListObjectVersionsCommand({ Bucket, ...markers }));
    for (const v of page.Versions ?? []) found.push({ Key: v.Key, VersionId: v.VersionId, marker: false });
    for (const m of page.DeleteMarkers ?? []) found.push({ Key: m.Key, VersionId: m.VersionId, marker: true });
    if (!page.IsTruncated) return found;
    markers = { KeyMarker: page.NextKeyMarker, VersionIdMarker: page.NextVersionIdMarker };
  }
}

/** Deletes a versioned test bucket: turns every legal hold off, deletes every version and
 *  delete marker (bypassing GOVERNANCE retention), then the bucket. */
export async function removeVersionedBucket(s3, Bucket) {
  const entries = await allVersions(s3, Bucket);
  for (const { Key, VersionId, marker } of entries) {
    if (marker) continue;
    const head = await s3.send(new HeadObjectCommand({ Bucket, Key, VersionId }));
    if (head.ObjectLockLegalHoldStatus === "ON") {
      await s3.send(new PutObjectLegalHoldCommand({ Bucket, Key, VersionId, LegalHold: { Status: "OFF" } }));
    }
  }
  for (const { Key, VersionId } of entries) {
    await s3.send(new DeleteObjectCommand({ Bucket, Key, VersionId, BypassGovernanceRetention: true }));
  }
  await s3.send(new DeleteBucketCommand({ Bucket }));
}

/** A zip archive of stored (uncompressed) files: enough for a handler. */
export function zip(files) {
  const locals = [];
  const centrals = [];
  let offset = 0;
  for (const [fileName, text] of Object.entries(files)) {
    const nameBytes = Buffer.from(fileName);
    const data = Buffer.from(text);
    const crc = zlib.crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(nameBytes.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(data.length, 20);
    central.writeUInt32LE(data.length, 24);
    central.writeUInt16LE(nameBytes.length, 28);
    central.writeUInt32LE(offset, 42);
    locals.push(local, nameBytes, data);
    centrals.push(central, nameBytes);
    offset += local.length + nameBytes.length + data.length;
  }
  const dir = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(Object.keys(files).length, 8);
  end.writeUInt16LE(Object.keys(files).length, 10);
  end.writeUInt32LE(dir.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, dir, end]);
}
