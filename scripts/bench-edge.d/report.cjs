// Turns bench.cjs's RESULTS.json into the Markdown tables of docs/BENCHMARKS-edge.md.
//
//   node report.cjs RESULTS.json
'use strict';
const fs = require('node:fs');

const results = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const CEILING = 'client ceiling';
const find = (what, target, level) =>
  results.find((r) => r.what === what && r.target === target && r.level === level);
const levels = (what) => [...new Set(results.filter((r) => r.what === what).map((r) => r.level))];
const targets = (what) => [...new Set(results.filter((r) => r.what === what).map((r) => r.target))];
const int = (x) => (x == null ? '—' : Math.round(x).toLocaleString('en-US'));
const ms = (x) => (x == null ? '—' : x < 10 ? x.toFixed(2) : x.toFixed(1));
const errs = (r) => (r.errors ? ` **${r.errors} errors** (${Object.keys(r.errorKinds).join(', ')})` : '');

function cell(r, rate) {
  if (!r) return 'not run';
  if (r.ops === 0) return `0${errs(r)}`;
  return `${int(rate(r))} (${ms(r.p50)} / ${ms(r.p99)})${errs(r)}`;
}

function ratio(a, b, rate) {
  if (!a || !b || !a.ops || !b.ops) return '—';
  return `${(rate(a) / rate(b)).toFixed(1)}×`;
}

function kinesisTable(what, unit, rate) {
  const ts = targets(what);
  const ours = ts.filter((t) => t.startsWith('sluice'));
  const others = ts.filter((t) => t !== CEILING && !t.startsWith('sluice'));
  const pairs = ours.flatMap((s) => others.map((o) => [s, o]));
  const out = [];
  out.push(`| concurrency | ${ts.map((t) => `${t}: ${unit} (p50 / p99 ms)`).join(' | ')} | ${pairs.map(([s, o]) => `${s} / ${o}`).join(' | ')} |`);
  out.push(`|---:|${ts.map(() => '---:').join('|')}|${pairs.map(() => '---:').join('|')}|`);
  for (const l of levels(what)) {
    const row = ts.map((t) => cell(find(what, t, l), rate));
    const ratios = pairs.map(([s, o]) => ratio(find(what, s, l), find(what, o, l), rate));
    out.push(`| ${l} | ${row.join(' | ')} | ${ratios.join(' | ')} |`);
  }
  return out.join('\n');
}

function sluiceTable(whats) {
  const out = [];
  out.push('| operation | concurrency | client ceiling req/s | sluice req/s | p50 ms | p99 ms | errors | sluice / ceiling |');
  out.push('|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const what of whats) {
    for (const l of levels(what)) {
      const s = find(what, 'sluice', l);
      const c = find(what, CEILING, l);
      if (!s) continue;
      out.push(`| ${what} | ${l} | ${c ? int(c.perSec) : '—'} | ${int(s.perSec)} | ${ms(s.p50)} | ${ms(s.p99)} | ${s.errors} | ${c ? (s.perSec / c.perSec).toFixed(2) : '—'} |`);
    }
  }
  return out.join('\n');
}

const perSec = (r) => r.perSec;
const itemsPerSec = (r) => r.itemsPerSec;
console.log('### Kinesis PutRecord (1 record a call)\n');
console.log(kinesisTable('PutRecord', 'req/s', perSec));
console.log('\n### Kinesis GetRecords (records/s; one call returns up to the limit)\n');
console.log(kinesisTable('GetRecords', 'records/s', itemsPerSec));
console.log('\n### Kinesis GetRecords (calls/s)\n');
console.log(kinesisTable('GetRecords', 'calls/s', perSec));
const moreLimits = [...new Set(results.map((r) => r.what))].filter((w) => w.startsWith('GetRecords, Limit'));
for (const what of moreLimits) {
  console.log(`\n### Kinesis ${what} (records/s)\n`);
  console.log(kinesisTable(what, 'records/s', itemsPerSec));
}
console.log('\n### Cognito InitiateAuth and S3 (sluice only)\n');
console.log(sluiceTable(['InitiateAuth', 'S3 PutObject', 'S3 GetObject']));

// CPU cost per call: where the time goes on a 2-core machine shared by client and server.
function cpuTable(whats) {
  const out = [];
  out.push('| operation | concurrency | target | server CPU µs/call | server cores busy | client CPU µs/call | client cores busy |');
  out.push('|---|---:|---|---:|---:|---:|---:|');
  for (const what of whats) {
    for (const l of levels(what)) {
      for (const t of targets(what)) {
        const r = find(what, t, l);
        if (!r) continue;
        const f = (x, d) => (x == null ? '—' : x.toFixed(d));
        out.push(`| ${what} | ${l} | ${t} | ${f(r.serverCpuUsPerOp, 0)} | ${f(r.serverCores, 2)} | ${f(r.clientCpuUsPerOp, 0)} | ${f(r.clientCores, 2)} |`);
      }
    }
  }
  return out.join('\n');
}
console.log('\n### CPU per call (from /proc; the client ceiling\'s "server" is the null server)\n');
console.log(cpuTable(['PutRecord', 'GetRecords', ...moreLimits, 'InitiateAuth', 'S3 PutObject', 'S3 GetObject']));
