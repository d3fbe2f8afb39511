// A trivial AWS-shaped endpoint for measuring the benchmark client's own ceiling: it answers
// every request at once with a canned, valid response (Kinesis JSON 1.1, Cognito JSON 1.1,
// S3 PUT/GET) without parsing, verifying or storing anything.
//
//   node null-server.cjs PORT_FILE      (listens on 127.0.0.1:0, writes the port to PORT_FILE)
'use strict';
const http = require('node:http');
const fs = require('node:fs');

const RECORD_BYTES = Number(process.env.BENCH_RECORD_BYTES || 1024);
const GET_LIMIT = Number(process.env.BENCH_GET_LIMIT || 100);
const OBJECT_BYTES = Number(process.env.BENCH_OBJECT_BYTES || 4096);

const data = Buffer.alloc(RECORD_BYTES, 7).toString('base64');
const seq = '49' + '0'.repeat(54);
// GetRecords answers as many records as the request's Limit (default GET_LIMIT), built
// once per limit.
const getRecordsBodies = new Map();
function getRecords(limit) {
  let body = getRecordsBodies.get(limit);
  if (!body) {
    const records = [];
    for (let i = 0; i < limit; i++) {
      records.push({
        SequenceNumber: seq, ApproximateArrivalTimestamp: 1.7e9, Data: data,
        PartitionKey: 'k' + i,
      });
    }
    body = JSON.stringify({ Records: records, NextShardIterator: 'AAAA', MillisBehindLatest: 0 });
    getRecordsBodies.set(limit, body);
  }
  return body;
}
const canned = {
  PutRecord: JSON.stringify({ ShardId: 'shardId-000000000000', SequenceNumber: seq }),
  GetShardIterator: JSON.stringify({ ShardIterator: 'AAAA' }),
  InitiateAuth: JSON.stringify({
    AuthenticationResult: {
      AccessToken: 'a'.repeat(1000), IdToken: 'i'.repeat(1000), RefreshToken: 'r'.repeat(500),
      ExpiresIn: 3600, TokenType: 'Bearer',
    },
    ChallengeParameters: {},
  }),
};
const object = Buffer.alloc(OBJECT_BYTES, 7);

const server = http.createServer((req, res) => {
  const chunks = [];
  const target = req.headers['x-amz-target'];
  const keep = target && target.endsWith('.GetRecords');
  req.on('data', (c) => { if (keep) chunks.push(c); });
  req.on('end', () => {
    if (target) {
      const op = target.split('.')[1];
      let body = canned[op] || '{}';
      if (op === 'GetRecords') {
        let limit = GET_LIMIT;
        try { limit = JSON.parse(Buffer.concat(chunks).toString()).Limit || GET_LIMIT; } catch (_) { /* default */ }
        body = getRecords(Math.min(10000, Math.max(1, limit)));
      }
      res.writeHead(200, { 'content-type': 'application/x-amz-json-1.1', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    } else if (req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': object.length, etag: '"0"' });
      res.end(object);
    } else {
      res.writeHead(200, { etag: '"0"', 'content-length': 0 });
      res.end();
    }
  });
});
server.keepAliveTimeout = 60000;
server.listen(0, '127.0.0.1', () => {
  fs.writeFileSync(process.argv[2], String(server.address().port));
});
process.on('SIGTERM', () => process.exit(0));
