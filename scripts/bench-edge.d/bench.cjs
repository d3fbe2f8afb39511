// The client side of scripts/bench-edge: the AWS SDK for JavaScript v3, with N concurrent
// promises over one keep-alive HTTP/1.1 agent, against every target given in the config.
// Targets are measured interleaved (for each operation and concurrency, one after another),
// so each figure stands beside the others taken a few seconds apart.
//
//   node bench.cjs CONFIG.json RESULTS.json
//
// Prints progress to stderr and writes every measurement to RESULTS.json.
'use strict';
const path = require('node:path');
const fs = require('node:fs');
const http = require('node:http');
const crypto = require('node:crypto');
const { performance } = require('node:perf_hooks');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const nm = require('node:module').createRequire(path.join(cfg.nodeDir, 'noop.js'));
const K = nm('@aws-sdk/client-kinesis');
const C = nm('@aws-sdk/client-cognito-identity-provider');
const S3 = nm('@aws-sdk/client-s3');
const { NodeHttpHandler } = nm('@smithy/node-http-handler');

const SECONDS = cfg.seconds;
const WARMUP = cfg.warmupSeconds;
const LEVELS = cfg.levels;
const RECORD = crypto.randomBytes(cfg.recordBytes);
const OBJECT = crypto.randomBytes(cfg.objectBytes);
const GET_LIMIT = cfg.getLimits[0];
const STREAM = 'bench-edge';
const READ_STREAM = 'bench-edge-read';
const SHARDS = cfg.shards;
const BUCKET = 'bench-edge';

const log = (...a) => console.error(`[${new Date().toISOString().slice(11, 19)}]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function handler() {
  // The Kinesis client defaults to an HTTP/2 handler (for SubscribeToShard); kinesalite
  // speaks HTTP/1.1 only, so every client gets the same HTTP/1.1 keep-alive agent.
  return new NodeHttpHandler({
    httpAgent: new http.Agent({ keepAlive: true, maxSockets: 1024 }),
    connectionTimeout: 5000,
    requestTimeout: 30000,
  });
}

function common(t) {
  return {
    endpoint: t.endpoint,
    region: t.region,
    credentials: { accessKeyId: t.accessKeyId, secretAccessKey: t.secretAccessKey },
    requestHandler: handler(),
    maxAttempts: 1, // errors are counted, not hidden by retries
  };
}

function pct(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

// Runs `op(worker)` in `level` concurrent loops for `seconds`. `op` resolves to
// { items, ms } (ms: the timed part) or to a number of items (then the whole call is timed).
async function drive(level, seconds, op, record) {
  const lat = [];
  let ok = 0, items = 0, errors = 0;
  const errorKinds = {};
  const start = performance.now();
  const end = start + seconds * 1000;
  await Promise.all(Array.from({ length: level }, async (_, w) => {
    while (performance.now() < end) {
      const t0 = performance.now();
      try {
        const r = await op(w);
        const ms = typeof r === 'object' ? r.ms : performance.now() - t0;
        const n = typeof r === 'object' ? r.items : r;
        if (record) { lat.push(ms); ok++; items += n; }
      } catch (e) {
        if (record) {
          errors++;
          const k = e.name || String(e);
          errorKinds[k] = (errorKinds[k] || 0) + 1;
          if (errorKinds[k] === 1) log(`  error: ${k}: ${e.message}`);
        } else {
          await sleep(10);
        }
      }
    }
  }));
  const elapsed = (performance.now() - start) / 1000;
  lat.sort((a, b) => a - b);
  return {
    ops: ok, perSec: ok / elapsed, itemsPerSec: items / elapsed, errors, errorKinds,
    p50: pct(lat, 50), p99: pct(lat, 99), seconds: elapsed,
  };
}

// CPU time (ms) a process has used so far, all threads (utime + stime from /proc).
function cpuMs(pid) {
  if (!pid) return null;
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / cfg.clockTicks;
  } catch {
    return null;
  }
}

async function measure(results, what, target, level, makeOp, pid) {
  const op = await makeOp(level);
  if (WARMUP > 0) await drive(level, WARMUP, op, false);
  const s0 = cpuMs(pid);
  const c0 = process.cpuUsage();
  const r = await drive(level, SECONDS, op, true);
  const c1 = process.cpuUsage(c0);
  const s1 = cpuMs(pid);
  r.clientCpuUsPerOp = r.ops ? (c1.user + c1.system) / r.ops : null;
  r.serverCpuUsPerOp = r.ops && s0 != null && s1 != null ? ((s1 - s0) * 1000) / r.ops : null;
  r.serverCores = s0 != null && s1 != null ? (s1 - s0) / 1000 / r.seconds : null;
  r.clientCores = (c1.user + c1.system) / 1e6 / r.seconds;
  r.what = what; r.target = target; r.level = level;
  results.push(r);
  log(`${what} ${target} c=${level}: ${r.perSec.toFixed(0)}/s` +
    (what === 'GetRecords' ? ` (${r.itemsPerSec.toFixed(0)} records/s)` : '') +
    ` p50 ${r.p50?.toFixed(2)} ms p99 ${r.p99?.toFixed(2)} ms errors ${r.errors}` +
    ` cpu/op server ${r.serverCpuUsPerOp?.toFixed(0)} us client ${r.clientCpuUsPerOp?.toFixed(0)} us`);
}

async function waitActive(client, name) {
  for (let i = 0; i < 600; i++) {
    try {
      const d = await client.send(new K.DescribeStreamSummaryCommand({ StreamName: name }));
      if (d.StreamDescriptionSummary.StreamStatus === 'ACTIVE') return;
    } catch (e) {
      if (e.name !== 'ResourceNotFoundException') throw e;
    }
    await sleep(50);
  }
  throw new Error(`stream ${name} never became ACTIVE`);
}

async function shardIds(client, name) {
  const r = await client.send(new K.ListShardsCommand({ StreamName: name }));
  return r.Shards.map((s) => s.ShardId);
}

// Creates both streams and fills the read stream with `cfg.readRecords` records.
async function setupKinesis(t) {
  const client = new K.KinesisClient(common(t));
  for (const name of [STREAM, READ_STREAM]) {
    await client.send(new K.CreateStreamCommand({ StreamName: name, ShardCount: SHARDS }));
  }
  await waitActive(client, STREAM);
  await waitActive(client, READ_STREAM);
  let n = 0;
  while (n < cfg.readRecords) {
    const count = Math.min(500, cfg.readRecords - n);
    const Records = Array.from({ length: count }, (_, i) => ({
      Data: RECORD, PartitionKey: `p-${n + i}`,
    }));
    const r = await client.send(new K.PutRecordsCommand({ StreamName: READ_STREAM, Records }));
    if (r.FailedRecordCount) throw new Error(`${t.name}: ${r.FailedRecordCount} records failed`);
    n += count;
  }
  return { client, shards: await shardIds(client, READ_STREAM) };
}

function putRecordOp(client) {
  return () => client.send(new K.PutRecordCommand({
    StreamName: STREAM, Data: RECORD, PartitionKey: crypto.randomUUID(),
  })).then(() => 1);
}

// Each worker reads one shard from TRIM_HORIZON to its end, GET_LIMIT records a call, and
// starts over; only the GetRecords calls are timed.
function getRecordsOp(client, shards, level) {
  const state = Array.from({ length: level }, () => ({ it: null }));
  return async (w) => {
    const st = state[w];
    if (!st.it) {
      const r = await client.send(new K.GetShardIteratorCommand({
        StreamName: READ_STREAM, ShardId: shards[w % shards.length], ShardIteratorType: 'TRIM_HORIZON',
      }));
      st.it = r.ShardIterator;
    }
    const t0 = performance.now();
    const r = await client.send(new K.GetRecordsCommand({ ShardIterator: st.it, Limit: GET_LIMIT }));
    const ms = performance.now() - t0;
    st.it = r.Records.length < GET_LIMIT ? null : r.NextShardIterator;
    return { items: r.Records.length, ms };
  };
}

async function main() {
  const results = [];
  const kin = cfg.kinesis; // [{name, endpoint, region, accessKeyId, secretAccessKey, null?}]
  const setups = {};
  for (const t of kin) {
    const t0 = performance.now();
    if (t.null) {
      setups[t.name] = { client: new K.KinesisClient(common(t)), shards: ['shardId-000000000000'] };
    } else {
      setups[t.name] = await setupKinesis(t);
    }
    log(`${t.name}: streams ready (${((performance.now() - t0) / 1000).toFixed(1)} s, ` +
      `${cfg.readRecords} records preloaded)`);
  }
  for (const level of LEVELS) {
    for (const t of kin) {
      await measure(results, 'PutRecord', t.name, level, async () => putRecordOp(setups[t.name].client), t.pid);
    }
  }
  for (const level of LEVELS) {
    for (const t of kin) {
      const s = setups[t.name];
      await measure(results, 'GetRecords', t.name, level, async (l) => getRecordsOp(s.client, s.shards, l), t.pid);
    }
  }

  for (const t of cfg.cognito) {
    const client = new C.CognitoIdentityProviderClient(common(t));
    const op = () => client.send(new C.InitiateAuthCommand({
      AuthFlow: 'USER_PASSWORD_AUTH', ClientId: t.clientId,
      AuthParameters: { USERNAME: t.username, PASSWORD: t.password },
    })).then((r) => {
      if (!r.AuthenticationResult?.IdToken) throw new Error('no IdToken');
      return 1;
    });
    for (const level of cfg.authLevels) {
      await measure(results, 'InitiateAuth', t.name, level, async () => op, t.pid);
    }
  }

  for (const t of cfg.s3) {
    const client = new S3.S3Client({ ...common(t), forcePathStyle: true });
    if (!t.null) {
      await client.send(new S3.CreateBucketCommand({ Bucket: BUCKET }));
      for (let i = 0; i < cfg.getObjects; i++) {
        await client.send(new S3.PutObjectCommand({ Bucket: BUCKET, Key: `g/${i}`, Body: OBJECT }));
      }
    }
    let n = 0;
    const put = () => client.send(new S3.PutObjectCommand({
      Bucket: BUCKET, Key: `p/${n++}`, Body: OBJECT,
    })).then(() => 1);
    const get = async () => {
      const r = await client.send(new S3.GetObjectCommand({
        Bucket: BUCKET, Key: `g/${Math.floor(Math.random() * cfg.getObjects)}`,
      }));
      const body = await r.Body.transformToByteArray();
      if (body.length !== OBJECT.length) throw new Error(`short object: ${body.length}`);
      return 1;
    };
    for (const level of LEVELS) {
      await measure(results, 'S3 PutObject', t.name, level, async () => put, t.pid);
      await measure(results, 'S3 GetObject', t.name, level, async () => get, t.pid);
    }
  }
  fs.writeFileSync(process.argv[3], JSON.stringify(results, null, 1));
}

main().then(() => process.exit(0), (e) => {
  log('FAILED:', e);
  process.exit(1);
});
