// Reference Express 4 server for bench/run.sh: the stack an enterprise Node.js
// team runs in front of its API (request id, JSON access log, helmet, cors,
// rate limit on /api/, compression, JSON + urlencoded body parsing, JSON error
// envelope), in node cluster mode with BENCH_WORKERS workers, so resil's
// GET /health is measured against the same middleware chain (SPEC §5, §11).
//
// Environment:
//   PORT               port on 127.0.0.1 (required)
//   BENCH_WORKERS      cluster workers (default 2)
//   BENCH_HEALTH_BODY  JSON body resil's /health returned; its shape is reused
//                      (uptime/timestamp refreshed per request) so body sizes match
//   BENCH_RATE_LIMIT   N/WINDOW for /api/ like RESIL_RATE_LIMIT (default 100000000/15m)
// Access log lines go to stdout, one JSON object per request; run.sh points
// stdout at /dev/null so the formatting and write(2) are paid but not kept.
'use strict';

const cluster = require('node:cluster');
const crypto = require('node:crypto');

const WORKERS = Math.max(1, parseInt(process.env.BENCH_WORKERS || '2', 10) || 2);
const PORT = parseInt(process.env.PORT || '', 10);
if (!(PORT > 0 && PORT < 65536)) {
  process.stderr.write('server.js: PORT must be set to a TCP port\n');
  process.exit(1);
}

if (cluster.isPrimary) {
  const slots = new Map(); // cluster worker id -> slot number for the logs
  const spawn = (slot) => slots.set(cluster.fork({ BENCH_WORKER_ID: String(slot) }).id, slot);
  for (let i = 0; i < WORKERS; i++) spawn(i);
  let stopping = false;
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) {
      if (Object.keys(cluster.workers).length === 0) process.exit(0);
      return;
    }
    process.stderr.write(`worker ${worker.process.pid} died (${signal || code}), forking a new one\n`);
    const slot = slots.get(worker.id) || 0;
    slots.delete(worker.id);
    spawn(slot);
  });
  const stop = () => {
    if (stopping) return;
    stopping = true;
    const live = Object.values(cluster.workers);
    if (live.length === 0) process.exit(0);
    for (const w of live) w.process.kill('SIGTERM');
    setTimeout(() => process.exit(0), 3000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  return;
}

const express = require('express');
const helmet = require('helmet');
const cors = require('cors');
const compression = require('compression');
const { rateLimit } = require('express-rate-limit');
const VERSION = require('./package.json').version;

const WORKER_ID = parseInt(process.env.BENCH_WORKER_ID || '0', 10);
const REQUEST_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;

function parseWindow(text) {
  const m = /^(\d+)\/(\d+)(ms|s|m|h|d)?$/.exec(text);
  if (!m) return null;
  const unit = { ms: 1, s: 1000, m: 60000, h: 3600000, d: 86400000 }[m[3] || 's'];
  return { limit: parseInt(m[1], 10), windowMs: parseInt(m[2], 10) * unit };
}
const rate = parseWindow(process.env.BENCH_RATE_LIMIT || '100000000/15m') ||
  { limit: 100000000, windowMs: 15 * 60000 };

// The /health body: same shape as resil's, with live uptime and timestamp.
let healthTemplate = null;
try {
  healthTemplate = JSON.parse(process.env.BENCH_HEALTH_BODY || 'null');
} catch (e) {
  healthTemplate = null;
}
if (!healthTemplate || typeof healthTemplate !== 'object') {
  healthTemplate = {
    status: 'healthy', uptime: 0, timestamp: '', version: VERSION,
    checks: { database: 'connected', workers: { total: WORKERS, ready: WORKERS }, circuits: {} },
  };
}
function refreshed(obj) {
  const out = Object.assign({}, obj);
  if ('uptime' in out) out.uptime = Number.isInteger(obj.uptime) ? Math.floor(process.uptime()) : process.uptime();
  if ('timestamp' in out) out.timestamp = new Date().toISOString();
  if (out.data && typeof out.data === 'object' && !Array.isArray(out.data)) out.data = refreshed(out.data);
  return out;
}

function log(level, message, fields) {
  const line = Object.assign({ timestamp: new Date().toISOString(), level, message,
    pid: process.pid, worker: WORKER_ID }, fields);
  process.stdout.write(JSON.stringify(line) + '\n');
}

function sendError(req, res, status, code, error) {
  res.status(status).json({ success: false, error, code, requestId: req.id });
}

const app = express();
app.disable('x-powered-by');
app.set('trust proxy', false);

// request id
app.use((req, res, next) => {
  const given = req.get('x-request-id');
  req.id = given && REQUEST_ID_RE.test(given) ? given : crypto.randomUUID();
  res.setHeader('X-Request-ID', req.id);
  next();
});

// access log: one JSON line per request, written when the response finishes
app.use((req, res, next) => {
  const start = process.hrtime.bigint();
  res.on('finish', () => {
    log('info', 'request', {
      requestId: req.id,
      method: req.method,
      path: req.originalUrl,
      status: res.statusCode,
      durationMs: Number(process.hrtime.bigint() - start) / 1e6,
      bytes: parseInt(res.getHeader('content-length') || '0', 10),
      ip: req.socket.remoteAddress,
      userAgent: req.get('user-agent') || '',
    });
  });
  next();
});

app.use(helmet());
app.use(cors({ origin: ['http://localhost:3000'], credentials: true }));
app.use('/api/', rateLimit({
  windowMs: rate.windowMs,
  limit: rate.limit,
  standardHeaders: 'draft-6',
  legacyHeaders: false,
  handler: (req, res) => sendError(req, res, 429, 'RATE_LIMITED', 'too many requests'),
}));
app.use(compression({ threshold: 1024 }));
app.use(express.json({ limit: '10mb' }));
app.use(express.urlencoded({ extended: false, limit: '10mb' }));

app.get('/health', (req, res) => {
  res.json(refreshed(healthTemplate));
});
app.get('/health/live', (req, res) => {
  res.json({ success: true, data: { status: 'alive' } });
});

app.use((req, res) => sendError(req, res, 404, 'NOT_FOUND', 'route not found'));

// error handler: body-parser errors map to the SPEC codes, everything else is 500
// eslint-disable-next-line no-unused-vars
app.use((err, req, res, next) => {
  if (err.type === 'entity.parse.failed') return sendError(req, res, 400, 'INVALID_JSON', 'invalid json body');
  if (err.type === 'entity.too.large') return sendError(req, res, 413, 'PAYLOAD_TOO_LARGE', 'payload too large');
  log('error', 'unhandled error', { requestId: req.id, error: String(err && err.message) });
  return sendError(req, res, 500, 'INTERNAL', 'internal server error');
});

const server = app.listen(PORT, '127.0.0.1');
server.keepAliveTimeout = 65000;
process.on('SIGTERM', () => server.close(() => process.exit(0)));
