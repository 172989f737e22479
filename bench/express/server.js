// Reference Express 4 server for bench/run.sh: the stack an enterprise Node.js
// team runs in front of its API (request id, JSON access log, helmet, cors,
// rate limit on /api/, compression, JSON + urlencoded body parsing, JSON error
// envelope), in node cluster mode with BENCH_WORKERS workers, so resil's
// routes are measured against the same middleware chain (SPEC §5, §6, §11).
//
// Routes: GET /health, /health/live; and for `run.sh --suite api`:
//   GET  /api/users/me  jsonwebtoken HS256 verify (with a KeyObject made once,
//                       see JWT_KEY), then the user is looked up
//                       in this worker's in-memory Map (in the auth middleware
//                       and again in the handler, as resil looks it up twice)
//   POST /api/posts     auth, then hand-written validation with resil's 400
//                       VALIDATION_ERROR envelope and messages; a valid post is
//                       added to this worker's in-memory array (no database)
//   GET  /api/posts     public list with pagination, serialised per request
//                       from the in-memory array (no database, no cache)
//
// Environment:
//   PORT               port on 127.0.0.1 (required, except with --print-token)
//   BENCH_WORKERS      cluster workers (default 2)
//   BENCH_HEALTH_BODY  JSON body resil's /health returned; its shape is reused
//                      (uptime/timestamp refreshed per request) so body sizes match
//   BENCH_RATE_LIMIT   N/WINDOW for /api/ like RESIL_RATE_LIMIT (default 1000000/1s)
//   BENCH_JWT_SECRET   HS256 key (run.sh passes resil's RESIL_JWT_SECRET); the
//                      key is the string's bytes, as resil uses it
//   BENCH_USER_FILE    JSON user object (resil's registered user) to serve;
//                      default: a fixed admin user `benchuser`
//   BENCH_POSTS_FILE   JSON array of posts, newest first (resil's list);
//                      default: 30 generated posts by that user
// `node server.js --print-token` prints a 7-day HS256 token {sub, email, role,
// iat, exp} for that user and exits.
// Access log lines go to stdout, one JSON object per request; run.sh points
// stdout at /dev/null so the formatting and write(2) are paid but not kept.
'use strict';

const cluster = require('node:cluster');
const crypto = require('node:crypto');

const fs = require('node:fs');

const WORKERS = Math.max(1, parseInt(process.env.BENCH_WORKERS || '2', 10) || 2);
const PORT = parseInt(process.env.PORT || '', 10);
const JWT_SECRET = process.env.BENCH_JWT_SECRET || 'resil-bench-express-secret-0123456789abcdef';

// The user /api/users/me serves, and the 30 posts GET /api/posts lists.
function loadJson(envName, fallback) {
  const file = process.env[envName];
  if (!file) return fallback();
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    process.stderr.write(`server.js: ${envName}=${file}: ${e.message}\n`);
    process.exit(1);
  }
  return null;
}
const BENCH_USER = loadJson('BENCH_USER_FILE', () => ({
  id: '6b0000000000000000000001', username: 'benchuser', email: 'bench@example.com',
  role: 'admin', isActive: true, createdAt: '2026-01-01T00:00:00.000Z',
  updatedAt: '2026-01-01T00:00:00.000Z',
}));

if (process.argv[2] === '--print-token') {
  const jwt = require('jsonwebtoken');
  process.stdout.write(jwt.sign({ sub: BENCH_USER.id, email: BENCH_USER.email, role: BENCH_USER.role },
    JWT_SECRET, { algorithm: 'HS256', expiresIn: '7d' }) + '\n');
  process.exit(0);
}
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
const jwt = require('jsonwebtoken');
const VERSION = require('./package.json').version;

const WORKER_ID = parseInt(process.env.BENCH_WORKER_ID || '0', 10);
const REQUEST_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;

function parseWindow(text) {
  const m = /^(\d+)\/(\d+)(ms|s|m|h|d)?$/.exec(text);
  if (!m) return null;
  const unit = { ms: 1, s: 1000, m: 60000, h: 3600000, d: 86400000 }[m[3] || 's'];
  return { limit: parseInt(m[1], 10), windowMs: parseInt(m[2], 10) * unit };
}
const rate = parseWindow(process.env.BENCH_RATE_LIMIT || '1000000/1s') ||
  { limit: 1000000, windowMs: 1000 };

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

// ---- the API's data: one user in a Map, posts in an array, per worker

const users = new Map([[BENCH_USER.id, BENCH_USER]]);
const POST_CONTENT = 'This post was created by bench/run.sh to give GET /api/posts a realistic page ' +
  'of content: a few sentences of plain text, long enough that serialising the list costs ' +
  'something, short enough to stay a typical blog teaser. ';
const posts = loadJson('BENCH_POSTS_FILE', () => {
  const out = [];
  for (let i = 30; i >= 1; i--) {
    const at = new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString();
    out.push({
      id: (0x6b0000000000000000000100n + BigInt(i)).toString(16).padStart(24, '0'),
      title: `Benchmark post ${i}`, content: POST_CONTENT + i, category: 'bench',
      author: { id: BENCH_USER.id, username: BENCH_USER.username, email: BENCH_USER.email },
      createdAt: at, updatedAt: at,
    });
  }
  return out;
});

// ---- auth and validation, with resil's status codes, codes and messages

const BEARER_RE = /^\s*bearer\s+(\S+)\s*$/i;
// The key as a KeyObject, made once: given the secret string, jsonwebtoken 9
// first tries createPublicKey() on it and falls back in a catch on every
// verify, which costs hundreds of µs per call on Node 18/20 (known upstream:
// auth0/node-jsonwebtoken#966, #1046). Express gets the fast path here.
const JWT_KEY = crypto.createSecretKey(Buffer.from(JWT_SECRET, 'utf8'));

function auth(req, res, next) {
  const header = req.get('authorization');
  if (!header) return sendError(req, res, 401, 'UNAUTHORIZED', 'access token required');
  const m = BEARER_RE.exec(header);
  if (!m) {
    if (/^\s*bearer\s+\S/i.test(header)) return sendError(req, res, 403, 'FORBIDDEN', 'invalid or expired token');
    return sendError(req, res, 401, 'UNAUTHORIZED', 'access token required');
  }
  let claims;
  try {
    claims = jwt.verify(m[1], JWT_KEY, { algorithms: ['HS256'] });
  } catch (e) {
    return sendError(req, res, 403, 'FORBIDDEN', 'invalid or expired token');
  }
  const user = typeof claims.sub === 'string' ? users.get(claims.sub) : undefined;
  if (!user || user.isActive === false) {
    return sendError(req, res, 401, 'UNAUTHORIZED', 'user no longer exists or is inactive');
  }
  req.user = user;
  return next();
}

function codePoints(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0xdc00 || c > 0xdfff) n++; // a surrogate pair counts once
  }
  return n;
}

// V_STRING of resil's validator: absent/null, type, NUL, length in code points.
function checkString(obj, field, required, min, max, errors) {
  const v = obj[field];
  if (v === undefined || v === null) {
    if (required) errors.push({ field, message: `${field} is required` });
    return;
  }
  if (typeof v !== 'string') {
    errors.push({ field, message: `${field} must be a string` });
    return;
  }
  if (v.includes('\0')) {
    errors.push({ field, message: `${field} must not contain null characters` });
    return;
  }
  const n = codePoints(v);
  if (n < min || n > max) errors.push({ field, message: `${field} must be between ${min} and ${max} characters` });
}

// V_INT with V_FROM_STRING: a query value must be a decimal integer in range.
function checkInt(obj, field, min, max, errors) {
  const v = obj[field];
  if (v === undefined) return undefined;
  const ok = typeof v === 'string' && /^-?\d{1,12}$/.test(v) && +v >= min && +v <= max;
  if (!ok) errors.push({ field, message: `${field} must be an integer between ${min} and ${max}` });
  return ok ? +v : undefined;
}

function sendValidation(req, res, details) {
  res.status(400).json({ success: false, error: 'validation failed', code: 'VALIDATION_ERROR', details,
    requestId: req.id });
}

function validatePost(req, res, next) {
  const body = req.body;
  if (!body || typeof body !== 'object' || Array.isArray(body)) {
    return sendValidation(req, res, [{ field: 'body', message: 'body must be an object' }]);
  }
  const errors = [];
  checkString(body, 'title', true, 1, 200, errors);
  checkString(body, 'content', true, 1, 50000, errors);
  checkString(body, 'category', false, 1, 50, errors);
  if (errors.length) return sendValidation(req, res, errors);
  return next();
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


app.get('/api/users/me', auth, (req, res) => {
  const user = users.get(req.user.id);
  if (!user) return sendError(req, res, 404, 'NOT_FOUND', 'not found');
  return res.json({ success: true, data: user });
});

app.get('/api/posts', (req, res) => {
  const errors = [];
  const page = checkInt(req.query, 'page', 1, 1000000000, errors) || 1;
  const limit = checkInt(req.query, 'limit', 1, 100, errors) || 25;
  checkString(req.query, 'category', false, 0, 50, errors);
  if (errors.length) return sendValidation(req, res, errors);
  const category = req.query.category;
  const all = category ? posts.filter((p) => p.category === category) : posts;
  return res.json({
    success: true,
    data: all.slice((page - 1) * limit, page * limit),
    pagination: { page, limit, total: all.length, pages: Math.ceil(all.length / limit) },
  });
});

app.post('/api/posts', auth, validatePost, (req, res) => {
  const now = new Date().toISOString();
  const post = { id: crypto.randomBytes(12).toString('hex'), title: req.body.title, content: req.body.content };
  if (typeof req.body.category === 'string') post.category = req.body.category;
  post.author = { id: req.user.id, username: req.user.username, email: req.user.email };
  post.createdAt = now;
  post.updatedAt = now;
  posts.unshift(post);
  res.status(201).json({ success: true, data: post });
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
