// A processor that tries more than its mapping allows (crates/sluice/tests/clients.rs,
// `a_function_may_do_only_what_its_mapping_needs`): it reads its upload and writes its
// output, as it may, then tries to read, write and delete elsewhere, and writes down what
// each attempt got.
import {
  S3Client,
  GetObjectCommand,
  PutObjectCommand,
  DeleteObjectCommand,
} from "@aws-sdk/client-s3";
import { KinesisClient, PutRecordCommand } from "@aws-sdk/client-kinesis";

const s3 = new S3Client({ forcePathStyle: true });
const kinesis = new KinesisClient({});

const attempt = async (f) => {
  try {
    await f();
    return "ok";
  } catch (e) {
    return e.name;
  }
};

export const handler = async (event) => {
  for (const r of event.Records) {
    const { bucket, key } = JSON.parse(Buffer.from(r.kinesis.data, "base64").toString("utf-8"));
    const verdict = {
      readOwnUpload: await attempt(async () => {
        const o = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
        await o.Body.transformToString();
      }),
      readElsewhere: await attempt(() =>
        s3.send(new GetObjectCommand({ Bucket: bucket, Key: "other/victim.txt" }))),
      deleteElsewhere: await attempt(() =>
        s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: "other/victim.txt" }))),
      deleteOwnUpload: await attempt(() =>
        s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }))),
      writeElsewhere: await attempt(() =>
        s3.send(new PutObjectCommand({ Bucket: bucket, Key: "other/planted.txt", Body: "x" }))),
      putRecord: await attempt(() =>
        kinesis.send(new PutRecordCommand({
          StreamName: "uploads-stream",
          PartitionKey: "p",
          Data: Buffer.from("x"),
        }))),
    };
    await s3.send(new PutObjectCommand({
      Bucket: bucket,
      Key: key.replace("uploads/", "processed/") + ".verdict.json",
      Body: JSON.stringify(verdict),
    }));
  }
  return { ok: true };
};
