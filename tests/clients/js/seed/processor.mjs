// The seed's processor handler (Part D3), as written there: the SDK client takes its
// endpoint from AWS_ENDPOINT_URL, set by the environment, never from this code.
import { S3Client, GetObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";

const s3 = new S3Client({});
const PROCESSED_BUCKET = process.env.PROCESSED_BUCKET;

const streamToString = async (readable) => {
  const chunks = [];
  for await (const chunk of readable) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf-8");
};

export const handler = async (event) => {
  for (const r of event.Records) {
    const payload = JSON.parse(Buffer.from(r.kinesis.data, "base64").toString("utf-8"));
    const { bucket, key } = payload;

    // Read uploaded object
    const obj = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    const content = await streamToString(obj.Body);

    // "Process" (simple example)
    const processed = content.toUpperCase();

    // Write processed object
    const outKey = key.replace("uploads/", "processed/");
    await s3.send(new PutObjectCommand({
      Bucket: PROCESSED_BUCKET,
      Key: outKey,
      Body: processed,
      ContentType: "text/plain"
    }));
  }

  return { ok: true };
};
