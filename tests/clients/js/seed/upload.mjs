// The seed's upload handler (Part C2), as written there: the SDK clients take their
// endpoint from AWS_ENDPOINT_URL, set by the environment, never from this code.
import { S3Client, PutObjectCommand } from "@aws-sdk/client-s3";
import { KinesisClient, PutRecordCommand } from "@aws-sdk/client-kinesis";
import crypto from "crypto";

const s3 = new S3Client({});
const kinesis = new KinesisClient({});

const UPLOAD_BUCKET = process.env.UPLOAD_BUCKET;
const STREAM_NAME = process.env.STREAM_NAME;

export const handler = async (event) => {
  // For HTTP API, body is JSON string
  const body = event.body ? JSON.parse(event.body) : {};
  const filename = body.filename || `file-${Date.now()}.txt`;
  const content = body.content || "empty";

  const key = `uploads/${filename}`;

  // 1) Save to S3
  await s3.send(new PutObjectCommand({
    Bucket: UPLOAD_BUCKET,
    Key: key,
    Body: content,
    ContentType: "text/plain"
  }));

  // 2) Publish event to Kinesis
  const record = {
    bucket: UPLOAD_BUCKET,
    key,
    uploadedAt: new Date().toISOString(),
    requestId: event.requestContext?.requestId,
    userSub: event.requestContext?.authorizer?.jwt?.claims?.sub // HTTP API JWT authorizer
  };

  await kinesis.send(new PutRecordCommand({
    StreamName: STREAM_NAME,
    PartitionKey: crypto.randomUUID(),
    Data: Buffer.from(JSON.stringify(record))
  }));

  return {
    statusCode: 200,
    body: JSON.stringify({
      message: "Uploaded and queued for processing",
      s3: { bucket: UPLOAD_BUCKET, key }
    })
  };
};
