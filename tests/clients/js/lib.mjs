// Shared by the tests: the server's URLs and key come from the environment that
// crates/sluice/tests/clients.rs sets (see README.md beside this file).
import crypto from "node:crypto";
import { DeleteBucketCommand, DeleteObjectCommand, paginateListObjectsV2 } from "@aws-sdk/client-s3";

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
