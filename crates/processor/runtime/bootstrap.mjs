// sluice's Node.js runtime shim: runs a Lambda handler (`_HANDLER`, e.g. `index.handler`,
// from LAMBDA_TASK_ROOT) in a warm process.
//
// Protocol, one JSON document per line:
//   stdin  <- {"requestId","deadlineMs","invokedFunctionArn","event"}
//   stdout -> {"requestId","result"} | {"requestId","error":{"errorType","errorMessage","stackTrace"}}
// stdout carries only the protocol: everything the handler prints goes to stderr, lines
// from console.* / process.stdout prefixed with "\x1fO" so sluice can tell them apart.
// After each invocation a marker line "\x1eEND <requestId>" is written to stderr, before
// the response, so sluice knows it has every log line of the invocation.
import { createInterface } from 'node:readline';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { format } from 'node:util';

const writeProtocol = process.stdout.write.bind(process.stdout);
const writeErr = process.stderr.write.bind(process.stderr);
let currentRequestId = '';
let pending = '';

function emitStdout(text) {
  pending += text;
  let i;
  while ((i = pending.indexOf('\n')) >= 0) {
    writeErr('\x1fO' + pending.slice(0, i) + '\n');
    pending = pending.slice(i + 1);
  }
}
function flushStdout() {
  if (pending) {
    writeErr('\x1fO' + pending + '\n');
    pending = '';
  }
}
process.stdout.write = (chunk, encoding, cb) => {
  emitStdout(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString(encoding || 'utf8'));
  if (typeof encoding === 'function') encoding();
  else if (typeof cb === 'function') cb();
  return true;
};
function logLine(level, args) {
  // Lambda's format: <time>\t<request id>\t<LEVEL>\t<message>
  emitStdout(`${new Date().toISOString()}\t${currentRequestId}\t${level}\t${format(...args)}\n`);
}
console.log = (...a) => logLine('INFO', a);
console.info = (...a) => logLine('INFO', a);
console.warn = (...a) => logLine('WARN', a);
console.error = (...a) => logLine('ERROR', a);
console.debug = (...a) => logLine('DEBUG', a);
console.trace = (...a) => logLine('TRACE', a);

function errorDoc(e, fallbackType) {
  if (e instanceof Error) {
    return {
      errorType: e.name || fallbackType,
      errorMessage: e.message,
      stackTrace: (e.stack || '').split('\n').slice(1).map((l) => l.trim()),
    };
  }
  return { errorType: fallbackType, errorMessage: typeof e === 'string' ? e : JSON.stringify(e) ?? String(e), stackTrace: [] };
}

let handlerFn = null;
let loadError = null;
async function loadHandler() {
  const spec = process.env._HANDLER || '';
  const root = process.env.LAMBDA_TASK_ROOT || process.cwd();
  const slash = spec.lastIndexOf('/');
  const dot = spec.indexOf('.', slash + 1);
  if (dot < 0) throw Object.assign(new Error(`bad handler ${spec}: expected <module>.<function>`), { name: 'Runtime.MalformedHandlerName' });
  const modulePath = spec.slice(0, dot);
  const path = ['.mjs', '.js', '.cjs'].map((ext) => join(root, modulePath + ext)).find((p) => existsSync(p));
  if (!path) throw Object.assign(new Error(`Cannot find module '${modulePath}' in ${root}`), { name: 'Runtime.ImportModuleError' });
  const mod = await import(pathToFileURL(path).href);
  let fn = mod;
  for (const part of spec.slice(dot + 1).split('.')) {
    fn = fn?.[part] ?? fn?.default?.[part];
  }
  if (typeof fn !== 'function') throw Object.assign(new Error(`${spec} is undefined or not exported`), { name: 'Runtime.HandlerNotFound' });
  return fn;
}

function callHandler(fn, event, context) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = (err, value) => {
      if (settled) return;
      settled = true;
      if (err !== null && err !== undefined) reject(err);
      else resolve(value);
    };
    context.done = done;
    context.succeed = (v) => done(null, v);
    context.fail = (e) => done(e ?? new Error('handled'));
    try {
      const r = fn(event, context, done);
      if (r && typeof r.then === 'function') r.then((v) => done(null, v), (e) => done(e));
      else if (fn.length < 3) done(null, r);
    } catch (e) {
      done(e);
    }
  });
}

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
  if (!line.trim()) continue;
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    writeErr(`sluice runtime: unreadable request: ${e}\n`);
    continue;
  }
  currentRequestId = req.requestId;
  const memory = process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || '128';
  const context = {
    awsRequestId: req.requestId,
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION || '$LATEST',
    invokedFunctionArn: req.invokedFunctionArn,
    memoryLimitInMB: memory,
    logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, req.deadlineMs - Date.now()),
  };
  let response;
  try {
    if (!handlerFn && !loadError) {
      try {
        handlerFn = await loadHandler();
      } catch (e) {
        loadError = e;
      }
    }
    if (loadError) throw loadError;
    const result = await callHandler(handlerFn, req.event, context);
    response = { requestId: req.requestId, result: result === undefined ? null : result };
  } catch (e) {
    response = { requestId: req.requestId, error: errorDoc(e, 'Error') };
  }
  let text;
  try {
    text = JSON.stringify(response);
  } catch (e) {
    text = JSON.stringify({ requestId: req.requestId, error: errorDoc(e, 'Runtime.ResponseSerializationError') });
  }
  flushStdout();
  writeErr(`\x1eEND ${req.requestId}\n`);
  writeProtocol(text + '\n');
}
