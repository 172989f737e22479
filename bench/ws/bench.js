#!/usr/bin/env node
// bench/ws/bench.js - WebSocket chat benchmark, resil against Socket.io 4 +
// the Redis adapter (SPEC §11), both with the same number of workers, in the
// same run, one server after the other, loaded by the same client
// (bench/ws/client.js) over loopback:
//
//   idle        N idle connections, each joined to a room, over >= 4 client
//               processes: server RSS growth per connection (workers; redis
//               separately)
//   fanout      R receivers in one room over both workers, one sender, M
//               messages at r/s: delivery latency p50/p99/max, losses
//   throughput  10 rooms x 10 members, one sender per room that sends its
//               next message when the previous came back, D s: deliveries/s,
//               server CPU (utime+stime, all threads) per delivery
//   flood       the same rooms, senders that never wait, D s: worker deaths,
//               peak RSS, deliveries, errors and closes the clients saw
//
// Across hosts (--suite bus, SPEC §12): resil-bus is --hosts resild
// supervisors (--host-workers workers each, one SQLite file, one JWT secret)
// sharing chat delivery through RESIL_BUS and a redis-server of its own;
// socketio-bus is as many ref-server.js processes on one redis-server. Their
// fan-out receivers are split over the hosts (the sender on the first), a
// room's members alternate between them, and the report adds latency per
// host, CPU of every server process incl. redis per delivery, and the ratios
// SPEC §11 states its scale-out targets in. resil-base is a second resild
// (RESIL_BASE_BIN, e.g. a build without the feature) on one host.
//
// Prints a markdown table (stdout) and a JSON dump of everything; progress on
// stderr. Never fails on a figure: exits non-zero only when a server cannot be
// started or set up (or a required program is missing).
//
//   node bench/ws/bench.js [--only idle,fanout,throughput,flood]
//        [--servers resil,socketio] [--idle 10000] [--receivers 1000]
//        [--messages 200] [--rate 20] [--duration 10] [--workers 2]
//        [--suite bus] [--hosts 2] [--host-workers 1]
//
// Environment: RESIL_BIN (resild to run; resilctl is taken beside it, else
// from the repository root), RESIL_BASE_BIN (resil-base's), BENCH_KEEP_TMP=1 (keep the temp dir with the
// server logs), BENCH_START_TIMEOUT (s, default 30), BENCH_FANOUT_PROCS
// (fan-out receiver processes, default 2).
'use strict';

const { spawn, execFile } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '../..');
const CLIENT = path.join(__dirname, 'client.js');
const REF_SERVER = path.join(__dirname, 'ref-server.js');
const RESILD = process.env.RESIL_BIN ? path.resolve(process.env.RESIL_BIN) : path.join(ROOT, 'resild');
const RESILCTL = [path.join(path.dirname(RESILD), 'resilctl'), path.join(ROOT, 'resilctl')]
  .find((p) => fs.existsSync(p)) || path.join(ROOT, 'resilctl');
const START_TIMEOUT_MS = (parseFloat(process.env.BENCH_START_TIMEOUT || '30') || 30) * 1000;
const SCENARIOS = ['idle', 'fanout', 'throughput', 'flood'];
// resil-base: a resild from RESIL_BASE_BIN (say, a build without a feature);
// resil-bus and socketio-bus: --hosts hosts of --host-workers workers each,
// sharing chat delivery through one redis-server (RESIL_BUS / the adapter)
const SERVER_NAMES = ['resil', 'resil-base', 'resil-sio', 'resil-bus', 'socketio', 'socketio-bus'];
// --suite bus: the scale-out comparison of SPEC §11 (issue 17), in one run
const SUITES = {
  bus: { only: ['fanout', 'throughput'],
    servers: ['resil', ...(process.env.RESIL_BASE_BIN ? ['resil-base'] : []), 'resil-bus', 'socketio-bus'] },
};
const PER_IDLE_PROC = 2500; // idle connections per client process at most
const USERS = 100; // 10 rooms x 10 members; the first 10 also form the big room
const ROOM_SIZE = 10;
const NROOMS = 10;

// ------------------------------------------------------------- arguments

function usage(msg) {
  if (msg) process.stderr.write(`bench.js: ${msg}\n`);
  process.stderr.write('usage: node bench/ws/bench.js [--only idle,fanout,throughput,flood] ' +
    '[--servers resil,resil-base,resil-sio,resil-bus,socketio,socketio-bus] [--suite bus] [--idle N] ' +
    '[--receivers N] [--messages M] [--rate R] [--duration S] [--workers N] [--hosts N] [--host-workers N]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const a = { only: SCENARIOS, servers: ['resil', 'socketio'], idle: 10000, receivers: 1000, messages: 200, rate: 20,
    duration: 10, workers: 2, hosts: 2, hostWorkers: 1, suite: null };
  const given = new Set();
  for (let i = 0; i < argv.length; i++) {
    let k = argv[i];
    let v;
    if (k === '-h' || k === '--help') usage();
    const eq = k.indexOf('=');
    if (eq > 0) {
      v = k.slice(eq + 1);
      k = k.slice(0, eq);
    } else {
      v = argv[++i];
    }
    if (v === undefined) usage(`${k} needs a value`);
    const key = k.replace(/^--/, '').replace(/-(\w)/g, (_, c) => c.toUpperCase());
    given.add(key);
    if (key === 'suite') {
      if (!SUITES[v]) usage(`--suite: unknown ${v} (${Object.keys(SUITES).join(', ')})`);
      a.suite = v;
    } else if (key === 'only' || key === 'servers') {
      const allowed = key === 'only' ? SCENARIOS : SERVER_NAMES;
      const list = v.split(',').map((s) => s.trim()).filter(Boolean);
      for (const s of list) if (!allowed.includes(s)) usage(`--${key}: unknown ${s} (${allowed.join(', ')})`);
      a[key] = allowed.filter((s) => list.includes(s));
    } else if (['idle', 'receivers', 'messages', 'workers', 'hosts', 'hostWorkers'].includes(key)) {
      a[key] = parseInt(v, 10);
      if (!(a[key] >= (key === 'idle' ? 0 : 1))) usage(`${k} must be a positive integer`);
    } else if (['rate', 'duration'].includes(key)) {
      a[key] = parseFloat(v);
      if (!(a[key] > 0)) usage(`--${key} must be a positive number`);
    } else {
      usage(`unknown option ${k}`);
    }
  }
  // a suite chooses the scenarios and servers that were not given
  if (a.suite) for (const key of ['only', 'servers']) if (!given.has(key)) a[key] = SUITES[a.suite][key];
  if (a.servers.includes('resil-base') && !process.env.RESIL_BASE_BIN) usage('resil-base needs RESIL_BASE_BIN');
  return a;
}

const ARGS = parseArgs(process.argv.slice(2));

// ------------------------------------------------------------- utilities

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (msg) => process.stderr.write(`bench: ${new Date().toISOString().slice(11, 23)} ${msg}\n`);

class Fatal extends Error {}

let CLK_TCK = 100;
function clockTicks() {
  return new Promise((resolve) => {
    execFile('getconf', ['CLK_TCK'], { timeout: 5000 }, (err, out) => {
      const n = parseInt(out, 10);
      if (!err && n > 0) CLK_TCK = n;
      resolve();
    });
  });
}

function rssOf(pid) {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? parseInt(m[1], 10) * 1024 : 0;
  } catch (e) {
    return 0;
  }
}

// utime + stime of every thread of the process, seconds (fields 14 and 15)
function cpuOf(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (parseInt(f[11], 10) + parseInt(f[12], 10)) / CLK_TCK;
  } catch (e) {
    return NaN;
  }
}

function alive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch (e) {
    return false;
  }
}

function cmdlineOf(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch (e) {
    return '';
  }
}

// CPU seconds the whole machine spent busy (user, nice, system, steal; irq
// and softirq left out, that is where loopback TCP work lands) since boot.
function machineBusy() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return (f[0] + f[1] + f[2] + (f[7] || 0)) / CLK_TCK;
}

// CPU of the server's processes, the load clients and this script over a
// measured window, and what the rest of the machine used meanwhile.
function cpuSnapshot(pids, extras, clients) {
  const self = process.cpuUsage();
  return {
    at: Date.now(), machine: machineBusy(), self: (self.user + self.system) / 1e6,
    workers: pids.map(cpuOf), extras: Object.fromEntries(Object.entries(extras).map(([k, p]) => [k, cpuOf(p)])),
    // a client that has already exited: the CPU it reported in its result
    clients: clients.map((c) => {
      const v = cpuOf(c.child.pid);
      return Number.isFinite(v) ? v : c.finalCpuS;
    }),
  };
}

function cpuDelta(a, b) {
  const d = (x, y) => (Number.isFinite(x) && Number.isFinite(y) ? y - x : 0);
  const wall = (b.at - a.at) / 1000;
  const workers = a.workers.map((x, i) => d(x, b.workers[i]));
  const extras = Object.fromEntries(Object.keys(a.extras).map((k) => [k, d(a.extras[k], b.extras[k])]));
  const clients = sum(a.clients.map((x, i) => d(x, b.clients[i])));
  const own = sum(workers) + sum(Object.values(extras)) + clients + (b.self - a.self);
  const other = Math.max(0, (b.machine - a.machine) - own);
  return { wall, workers, worker: sum(workers), extras, clients, otherLoadPct: wall > 0 ? (100 * other) / (os.cpus().length * wall) : 0 };
}

const sum = (xs) => xs.reduce((x, y) => x + y, 0);
const mib = (b) => b / 1048576;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([promise, new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${Math.round(ms / 1000)} s`)), ms);
  })]).finally(() => clearTimeout(timer));
}

// --------------------------------------------------------- process registry
//
// Every process this script starts is tracked by pid; cleanup() stops exactly
// those (SIGTERM, SIGKILL after a grace period), then any server worker we
// learned about that outlived its master.

const tracked = new Map(); // pid -> {name, child}
const workerPids = new Set(); // server workers seen (resild, node cluster workers)
let TMP = null;

function track(child, name) {
  if (!child.pid) return child;
  tracked.set(child.pid, { name, child });
  child.on('exit', () => tracked.delete(child.pid));
  return child;
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null;
}

async function stopChild(child, graceMs = 10000) {
  if (!child || !child.pid || exited(child)) return;
  const gone = new Promise((r) => child.once('exit', r));
  try {
    child.kill('SIGTERM');
  } catch (e) { /* gone */ }
  await Promise.race([gone, sleep(graceMs)]);
  if (!exited(child)) {
    try {
      child.kill('SIGKILL');
    } catch (e) { /* gone */ }
    await Promise.race([gone, sleep(2000)]);
  }
}

function killStrayWorkers() {
  for (const pid of workerPids) {
    const cmd = cmdlineOf(pid);
    if (alive(pid) && (cmd.includes('resild') || cmd.includes('ref-server.js'))) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch (e) { /* gone */ }
    }
  }
}

let cleaning = null;
function cleanup() {
  if (!cleaning) {
    cleaning = (async () => {
      await Promise.all([...tracked.values()].map(({ child }) => stopChild(child, 8000)));
      killStrayWorkers();
      if (TMP && !process.env.BENCH_KEEP_TMP) fs.rmSync(TMP, { recursive: true, force: true });
      else if (TMP) log(`kept ${TMP}`);
    })();
  }
  return cleaning;
}

process.on('exit', () => { // last resort, synchronous
  for (const { child } of tracked.values()) {
    try {
      child.kill('SIGKILL');
    } catch (e) { /* gone */ }
  }
  killStrayWorkers();
});
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    log(`${sig}: stopping everything`);
    cleanup().finally(() => process.exit(130));
  });
}

// Lines of a child's stdout, as a queue that can be waited on.
function lineQueue(stream) {
  const lines = [];
  const waiters = [];
  let ended = false;
  readline.createInterface({ input: stream }).on('line', (l) => {
    lines.push(l);
    for (const w of waiters.splice(0)) w();
  }).on('close', () => {
    ended = true;
    for (const w of waiters.splice(0)) w();
  });
  // next line whose JSON satisfies pred (consumed), or throws on end/timeout
  async function next(pred, ms, what) {
    const deadline = Date.now() + ms;
    for (;;) {
      for (let i = 0; i < lines.length; i++) {
        let obj;
        try {
          obj = JSON.parse(lines[i]);
        } catch (e) {
          continue;
        }
        if (pred(obj)) {
          lines.splice(i, 1);
          return obj;
        }
      }
      if (ended) throw new Error(`${what}: output ended`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${what}: timed out after ${Math.round(ms / 1000)} s`);
      await new Promise((r) => {
        const t = setTimeout(r, left);
        waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }
  return { lines, next };
}

// Spawn with the open-file limit raised (the hard limit here is 20,000 per
// process; 2,500 connections per client need more than the usual 1,024).
function spawnRaised(name, argv, opts) {
  const sh = 'ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"';
  return track(spawn('/bin/sh', ['-c', sh, 'sh', ...argv], opts), name);
}

// ------------------------------------------------------------ load clients

let clientSeq = 0;
function startClient(proto, port, mode, opts) {
  const argv = [process.execPath, CLIENT, '--proto', proto, '--port', String(port), '--mode', mode];
  for (const [k, v] of Object.entries(opts)) {
    if (v === true) argv.push(`--${k}`);
    else if (v !== undefined && v !== false) argv.push(`--${k}`, String(v));
  }
  const name = `client-${mode}-${++clientSeq}`;
  const child = spawnRaised(name, argv, { stdio: ['pipe', 'pipe', 'pipe'], env: process.env });
  const c = { name, child, out: lineQueue(child.stdout), err: '' };
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    c.err = (c.err + d).slice(-4000);
  });
  child.stdin.on('error', () => {}); // EPIPE when it has gone
  c.write = (line) => {
    if (!exited(child) && child.stdin.writable) child.stdin.write(`${line}\n`);
  };
  c.endInput = () => {
    if (child.stdin.writable) child.stdin.end();
  };
  c.ready = (ms) => c.out.next((o) => o.type === 'ready' || o.type === 'result', ms, `${name} ready`)
    .then((o) => {
      if (o.type === 'result') {
        c.out.lines.unshift(JSON.stringify(o)); // still there for c.result()
        throw new Error(`${name}: gave up before ready: ${JSON.stringify(o).slice(0, 300)}`);
      }
      return o;
    });
  c.result = (ms) => c.out.next((o) => o.type === 'result', ms, `${name} result`).then((o) => {
    if (Number.isFinite(o.cpuMs)) c.finalCpuS = o.cpuMs / 1000;
    return o;
  });
  return c;
}

async function clientResults(clients, ms, whenIn) {
  const res = await Promise.all(clients.map((c) => c.result(ms).catch((e) => {
    log(`${c.name}: ${e.message}${c.err ? `; stderr: ${c.err.trim().slice(-500)}` : ''}`);
    return null;
  })));
  if (whenIn) whenIn();
  await Promise.all(clients.map((c) => stopChild(c.child, 3000)));
  return res;
}

async function stopClients(clients) {
  await Promise.all(clients.map((c) => stopChild(c.child, 3000)));
}

function split(n, parts) {
  return Array.from({ length: parts }, (_, i) => Math.floor(n / parts) + (i < n % parts ? 1 : 0)).filter((x) => x > 0);
}

function writeJson(name, obj) {
  const file = path.join(TMP, name);
  fs.writeFileSync(file, JSON.stringify(obj));
  return file;
}

// ----------------------------------------------------------------- servers

function httpJson(port, method, urlPath, body, token) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  return fetch(`http://127.0.0.1:${port}${urlPath}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(30000),
  }).then(async (r) => {
    const text = await r.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch (e) { /* not JSON */ }
    return { status: r.status, json, text };
  });
}

async function pool(n, concurrency, fn) {
  const out = new Array(n);
  let next = 0;
  const lane = async () => {
    while (next < n) {
      const i = next++;
      out[i] = await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, lane));
  return out;
}

async function waitFor(what, child, ms, probe) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (exited(child)) throw new Fatal(`${what} exited during start-up (status ${child.exitCode ?? child.signalCode})`);
    try {
      if (await probe()) return;
    } catch (e) { /* not yet */ }
    await sleep(100);
  }
  throw new Fatal(`${what} did not start within ${ms / 1000} s`);
}

function tail(file, n = 15) {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-n).join('\n');
  } catch (e) {
    return '';
  }
}

// resil with its own /ws protocol, or (resil-sio) with the same npm
// socket.io-client the reference gets, through its /socket.io/ endpoint.
// opts: bin (another resild, e.g. a build without a feature: resilctl is
// taken beside it), hosts (that many supervisors on their own ports and
// control sockets, one shared SQLite file and JWT secret, as hosts behind a
// load balancer would be) and bus (a redis-server of its own and RESIL_BUS
// pointing every host at it).
class ResilServer {
  constructor(name = 'resil', proto = 'resil', opts = {}) {
    this.name = name;
    this.proto = proto;
    this.bin = opts.bin ? path.resolve(opts.bin) : RESILD;
    this.ctlBin = opts.bin ? path.join(path.dirname(this.bin), 'resilctl') : RESILCTL;
    this.nhosts = opts.hosts || 1;
    this.bus = !!opts.bus;
  }

  async start(workers) {
    if (!fs.existsSync(this.bin)) {
      // the lead may be relinking it: give it a moment
      for (let i = 0; i < 30 && !fs.existsSync(this.bin); i++) await sleep(2000);
      if (!fs.existsSync(this.bin)) throw new Fatal(`${this.bin} not found: build it (make) or set RESIL_BIN`);
    }
    if (!fs.existsSync(this.ctlBin)) throw new Fatal(`${this.ctlBin} not found (resilctl beside ${this.bin})`);
    this.dir = fs.mkdtempSync(path.join(TMP, `${this.name}-`));
    this.secret = crypto.randomBytes(32).toString('hex');
    if (this.bus) this.redis = await startRedis(this.dir);
    this.hosts = [];
    // one after the other: the first creates the database, the next opens it
    for (let h = 0; h < this.nhosts; h++) this.hosts.push(await this.startHost(h, workers));
    this.port = this.hosts[0].port; // the set-up and the senders go to the first host
    this.ports = this.hosts.map((x) => x.port);
    this.child = this.hosts[0].child;
  }

  async startHost(h, workers) {
    const dir = this.nhosts > 1 ? fs.mkdtempSync(path.join(this.dir, `host${h}-`)) : this.dir;
    const host = { index: h, dir, port: await freePort(), ctl: path.join(dir, 'ctl.sock'),
      logFile: path.join(dir, 'stderr.log') };
    const env = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('RESIL_')) env[k] = v;
    Object.assign(env, {
      RESIL_LISTEN: `127.0.0.1:${host.port}`, RESIL_WORKERS: String(workers),
      RESIL_DB: `sqlite:${this.dir}/bench.db`, RESIL_CONTROL: host.ctl, RESIL_LOG_LEVEL: 'warn',
      RESIL_RATE_LIMIT: '1000000/1s', RESIL_MAX_CONNECTIONS: '20000', RESIL_WS_MESSAGE_RATE: '1000000',
      RESIL_JWT_SECRET: this.secret,
    });
    if (this.bus) env.RESIL_BUS = `redis://127.0.0.1:${this.redis.port}`;
    // BENCH_RESIL_ENV="RESIL_IO_URING=off ...": settings for every resild of the run
    for (const kv of (process.env.BENCH_RESIL_ENV || '').split(/\s+/).filter(Boolean)) {
      const eq = kv.indexOf('=');
      if (eq > 0 && kv.startsWith('RESIL_')) env[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
    const fd = fs.openSync(host.logFile, 'a');
    host.child = spawnRaised('resild', [this.bin, '--foreground'], { cwd: dir, env, stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    try {
      await waitFor('resild', host.child, START_TIMEOUT_MS,
        async () => (await httpJson(host.port, 'GET', '/health/live')).status === 200);
    } catch (e) {
      throw new Fatal(`${e.message}\n${tail(host.logFile)}`);
    }
    const st = await this.status(h, host);
    host.supervisorPid = st.supervisor && st.supervisor.pid;
    log(`${this.name}: host ${h}: resild pid ${host.child.pid} (supervisor ${host.supervisorPid}) on ` +
      `127.0.0.1:${host.port}, workers ${st.workers.map((w) => w.pid).join(', ')}` +
      `${this.bus ? `; RESIL_BUS=redis://127.0.0.1:${this.redis.port}` : ''}`);
    return host;
  }

  status(h = 0, host = this.hosts[h]) {
    return new Promise((resolve, reject) => {
      execFile(this.ctlBin, ['-s', host.ctl, 'status', '--json'], { timeout: 10000 }, (err, out) => {
        if (err) return reject(new Error(`resilctl status: ${err.message}`));
        try {
          const st = JSON.parse(out);
          for (const w of st.workers || []) workerPids.add(w.pid);
          return resolve(st);
        } catch (e) {
          return reject(new Error(`resilctl status: ${e.message}`));
        }
      });
    });
  }

  statuses() {
    return Promise.all(this.hosts.map((_, h) => this.status(h)));
  }

  async workers() {
    return (await this.statuses()).flatMap((st) => st.workers.map((w) => w.pid));
  }

  // websockets per worker, as resilctl counts them
  async socketCounts() {
    return (await this.statuses()).flatMap((st, h) => st.workers.map((w) => ({ pid: w.pid, sockets: w.websockets,
      host: h })));
  }

  // {name: pid} of the processes around the workers
  extras() {
    if (this.nhosts === 1 && !this.redis) return { supervisor: this.hosts[0].supervisorPid };
    const out = Object.fromEntries(this.hosts.map((x) => [`supervisor h${x.index}`, x.supervisorPid]));
    if (this.redis) out.redis = this.redis.child.pid;
    return out;
  }

  down() {
    return this.hosts.some((x) => exited(x.child));
  }

  async setup() {
    const tag = crypto.randomBytes(2).toString('hex');
    const t0 = Date.now();
    const users = await pool(USERS, 8, async (i) => {
      const name = `wsb${i}_${tag}`;
      const r = await httpJson(this.port, 'POST', '/api/auth/register',
        { username: name, email: `${name}@bench.example`, password: 'bench-password-1' });
      if (r.status !== 201 || !r.json || !r.json.data) {
        throw new Fatal(`resil: POST /api/auth/register answered ${r.status}: ${r.text.slice(0, 300)}`);
      }
      return { id: r.json.data.user.id, token: r.json.data.token };
    });
    log(`resil: ${USERS} users registered in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const makeRoom = async (name, owner, members) => {
      const r = await httpJson(this.port, 'POST', '/api/rooms', { name }, owner.token);
      if (r.status !== 201) throw new Fatal(`resil: POST /api/rooms answered ${r.status}: ${r.text.slice(0, 300)}`);
      const id = r.json.data.id;
      await pool(members.length, 4, async (i) => {
        const m = await httpJson(this.port, 'POST', `/api/rooms/${id}/members`, { userId: members[i].id }, owner.token);
        if (m.status < 200 || m.status > 299) {
          throw new Fatal(`resil: POST /api/rooms/${id}/members answered ${m.status}: ${m.text.slice(0, 300)}`);
        }
      });
      return id;
    };
    this.bigRoom = await makeRoom('bench big room', users[0], users.slice(1, ROOM_SIZE));
    this.bigTokens = users.slice(0, ROOM_SIZE).map((u) => u.token);
    this.rooms = [];
    for (let r = 0; r < NROOMS; r++) {
      const members = users.slice(r * ROOM_SIZE, (r + 1) * ROOM_SIZE);
      const id = await makeRoom(`bench room ${r}`, members[0], members.slice(1));
      this.rooms.push({ roomId: id, tokens: members.map((u) => u.token) });
    }
  }

  async aliveAfter(pidsBefore) {
    let now = null;
    try {
      now = await this.statuses();
    } catch (e) {
      return { ok: false, note: e.message };
    }
    const pids = now.flatMap((st) => st.workers.map((w) => w.pid));
    const died = pidsBefore.filter((p) => !pids.includes(p));
    return { ok: died.length === 0 && !this.down(), died, workers: pids,
      restarts: now.flatMap((st) => st.workers.map((w) => w.restarts)) };
  }

  async stop() {
    await Promise.all((this.hosts || []).map((x) => stopChild(x.child, 15000)));
    if (this.redis) {
      redisStats(this.redis.port, this.name || 'server');
      await stopChild(this.redis.child, 10000);
    }
    killStrayWorkers();
  }

  // warn/error lines resild logged during the run, by message (and host)
  logSummary() {
    const out = {};
    for (const host of this.hosts || []) {
      let text = '';
      try {
        text = fs.readFileSync(host.logFile, 'utf8');
      } catch (e) {
        continue;
      }
      const where = this.nhosts > 1 ? `host ${host.index}: ` : '';
      for (const line of text.split('\n')) {
        if (!line.trim()) continue;
        let key = line.slice(0, 160);
        try {
          const j = JSON.parse(line);
          key = `${j.level || '?'}: ${j.msg || j.message || line.slice(0, 120)}`;
        } catch (e) { /* not JSON */ }
        key = where + key;
        if (!out[key]) out[key] = { count: 0, first: where + line.slice(0, 600) };
        out[key].count++;
      }
    }
    return out;
  }

  async version() {
    const v = await new Promise((resolve) => execFile(this.bin, ['--version'], { timeout: 5000 },
      (err, out, errOut) => resolve(String(out || errOut || '?').trim().split('\n')[0])));
    const hosts = this.nhosts > 1 ? `, ${this.nhosts} hosts (shared SQLite file)` : '';
    return `${v} (${this.bin})${hosts}${this.bus ? `, RESIL_BUS + redis-server ${await redisVersion()}` : ''}`;
  }
}

// A redis-server of the run's own on a free loopback port, no persistence,
// in dir: {child, port, log}. Stopped by pid with the rest.
async function startRedis(dir) {
  const port = await freePort();
  const logFile = path.join(dir, 'redis.log');
  const fd = fs.openSync(logFile, 'a');
  const child = track(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1',
    '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--dir', dir],
  { cwd: dir, stdio: ['ignore', fd, fd] }), 'redis-server');
  fs.closeSync(fd);
  child.on('error', () => {});
  await waitFor('redis-server', child, START_TIMEOUT_MS, () => redisPing(port)).catch((e) => {
    throw new Fatal(`${e.message}\n${tail(logFile)}`);
  });
  return { child, port, log: logFile };
}

// BENCH_REDIS_STATS=1: redis-server's per-command counts and time
// (INFO commandstats) on stderr before it is stopped.
function redisStats(port, name) {
  if (!process.env.BENCH_REDIS_STATS) return;
  try {
    const out = require('node:child_process').execFileSync('redis-cli', ['-p', String(port), 'info', 'commandstats'],
      { timeout: 5000, encoding: 'utf8' });
    process.stderr.write(`bench: ${name}: redis commandstats\n${out}`);
  } catch (e) {
    process.stderr.write(`bench: ${name}: redis commandstats: ${e.message}\n`);
  }
}

function redisVersion() {
  return new Promise((resolve) => execFile('redis-server', ['--version'], { timeout: 5000 },
    (err, out) => resolve((/v=(\S+)/.exec(String(out)) || [])[1] || '?')));
}

// A token {sub, email, role, iat, exp} signed HS256 with node:crypto.
function mintToken(secret, user) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const iat = Math.floor(Date.now() / 1000);
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user.id, email: user.email, role: 'user', iat,
    exp: iat + 7 * 86400 })}`;
  return `${head}.${crypto.createHmac('sha256', secret).update(head).digest('base64url')}`;
}

function redisPing(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = '';
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(2000, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => {
      buf += d;
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'));
    });
  });
}

// The reference: ref-server.js (node cluster, N workers) on redis-server; with
// hosts > 1, that many ref-server.js processes on their own ports, all on the
// one redis, as Socket.io hosts behind a load balancer would be.
class SocketioServer {
  constructor(name = 'socketio', hosts = 1) {
    this.name = name;
    this.proto = 'socketio';
    this.nhosts = hosts;
    this.exits = [];
  }

  async start(workers) {
    if (!fs.existsSync(path.join(__dirname, 'node_modules', 'socket.io'))) {
      throw new Fatal(`${path.join(__dirname, 'node_modules')} is missing: run npm install in bench/ws (bench/ws.sh does)`);
    }
    this.dir = fs.mkdtempSync(path.join(TMP, `${this.name}-`));
    this.secret = crypto.randomBytes(32).toString('hex');
    this.redis = await startRedis(this.dir);
    // users and rooms: the same shape as on resil
    const users = Array.from({ length: USERS }, (_, i) => ({
      id: crypto.randomBytes(12).toString('hex'), username: `wsb${i}`, email: `wsb${i}@bench.example`,
    }));
    const byId = Object.fromEntries(users.map((u) => [u.id, u.username]));
    const roomsJson = {};
    const newRoom = (name, members) => {
      const id = crypto.randomBytes(12).toString('hex');
      roomsJson[id] = { name, members: members.map((u) => u.id) };
      return id;
    };
    const tokenOf = (u) => mintToken(this.secret, u);
    this.bigRoom = newRoom('bench big room', users.slice(0, ROOM_SIZE));
    this.bigTokens = users.slice(0, ROOM_SIZE).map(tokenOf);
    this.rooms = [];
    for (let r = 0; r < NROOMS; r++) {
      const members = users.slice(r * ROOM_SIZE, (r + 1) * ROOM_SIZE);
      this.rooms.push({ roomId: newRoom(`bench room ${r}`, members), tokens: members.map(tokenOf) });
    }
    const files = { rooms: writeJson(`ref-rooms-${this.name}.json`, roomsJson),
      users: writeJson(`ref-users-${this.name}.json`, byId) };
    this.hosts = [];
    for (let h = 0; h < this.nhosts; h++) this.hosts.push(await this.startHost(h, workers, files));
    this.port = this.hosts[0].port;
    this.ports = this.hosts.map((x) => x.port);
    this.child = this.hosts[0].child;
  }

  async startHost(h, workers, files) {
    const host = { index: h, port: await freePort(),
      logFile: path.join(this.dir, this.nhosts > 1 ? `ref-server-h${h}.log` : 'ref-server.log') };
    const fd = fs.openSync(host.logFile, 'a');
    const env = Object.assign({}, process.env, {
      PORT: String(host.port), REDIS_PORT: String(this.redis.port), BENCH_WORKERS: String(workers),
      BENCH_JWT_SECRET: this.secret, BENCH_ROOMS_FILE: files.rooms, BENCH_USERS_FILE: files.users,
      NODE_ENV: 'production',
    });
    host.child = spawnRaised('ref-server', [process.execPath, REF_SERVER],
      { cwd: __dirname, env, stdio: ['ignore', 'pipe', fd] });
    fs.closeSync(fd);
    host.out = lineQueue(host.child.stdout);
    // worker exits are collected as they come
    host.watch = setInterval(() => {
      for (let i = host.out.lines.length - 1; i >= 0; i--) {
        let o;
        try {
          o = JSON.parse(host.out.lines[i]);
        } catch (e) {
          continue;
        }
        if (o.event === 'exit') {
          host.out.lines.splice(i, 1);
          this.exits.push(o);
          host.pids = (host.pids || []).filter((p) => p !== o.pid).concat(o.replacement);
          workerPids.add(o.replacement);
          log(`${this.name}: worker ${o.pid} exited (${o.signal || o.code}), replaced by ${o.replacement}`);
        }
      }
    }, 100);
    host.watch.unref();
    let ready;
    try {
      ready = await host.out.next((o) => o.event === 'ready', START_TIMEOUT_MS, 'ref-server.js ready');
    } catch (e) {
      throw new Fatal(`${this.name}: ${e.message}\n${tail(host.logFile)}`);
    }
    host.pids = ready.workers;
    for (const p of host.pids) workerPids.add(p);
    log(`${this.name}: host ${h}: ref-server.js pid ${host.child.pid} on 127.0.0.1:${host.port}, workers ` +
      `${host.pids.join(', ')}; redis-server pid ${this.redis.child.pid} on ${this.redis.port}`);
    return host;
  }

  async setup() { /* done in start(): users, rooms and tokens are files */ }

  async workers() {
    return this.hosts.flatMap((x) => x.pids);
  }

  async socketCounts() {
    const per = await Promise.all(this.hosts.map(async (x) => {
      process.kill(x.child.pid, 'SIGUSR2');
      const o = await x.out.next((y) => y.event === 'counts', 10000, 'ref-server.js counts');
      return o.workers.map((w) => Object.assign(w, { host: x.index }));
    }));
    return per.flat();
  }

  extras() {
    if (this.nhosts === 1) return { primary: this.hosts[0].child.pid, redis: this.redis.child.pid };
    const out = Object.fromEntries(this.hosts.map((x) => [`primary h${x.index}`, x.child.pid]));
    out.redis = this.redis.child.pid;
    return out;
  }

  down() {
    return this.hosts.some((x) => exited(x.child));
  }

  async aliveAfter(pidsBefore, exitsBefore) {
    await sleep(300); // let the exit watcher catch up
    const exits = this.exits.slice(exitsBefore);
    return { ok: exits.length === 0 && !this.down(), died: exits.map((e) => e.pid),
      exits, workers: await this.workers() };
  }

  async stop() {
    for (const x of this.hosts || []) clearInterval(x.watch);
    await Promise.all((this.hosts || []).map((x) => stopChild(x.child, 10000)));
    if (this.redis) {
      redisStats(this.redis.port, this.name || 'server');
      await stopChild(this.redis.child, 10000);
    }
    killStrayWorkers();
  }

  logSummary() {
    const out = {};
    for (const x of this.hosts || []) {
      const where = this.nhosts > 1 ? `host ${x.index}: ` : '';
      for (const line of tail(x.logFile, 200).split('\n')) {
        if (!line.trim()) continue;
        const key = where + line.replace(/\d+/g, 'N').slice(0, 160);
        if (!out[key]) out[key] = { count: 0, first: where + line.slice(0, 600) };
        out[key].count++;
      }
    }
    return out;
  }

  async version() {
    const v = (m) => {
      try {
        return require(path.join(__dirname, 'node_modules', m, 'package.json')).version;
      } catch (e) {
        return '?';
      }
    };
    const hosts = this.nhosts > 1 ? `, ${this.nhosts} hosts (ref-server.js processes) on one redis-server` : '';
    return `node ${process.version} + socket.io ${v('socket.io')} + @socket.io/redis-adapter ` +
      `${v('@socket.io/redis-adapter')} + redis ${v('redis')} (node-redis) + redis-server ${await redisVersion()}${hosts}`;
  }
}

// --------------------------------------------------------------- scenarios

async function scenarioIdle(srv, n) {
  const pids = await srv.workers();
  await sleep(1000);
  const before = pids.map(rssOf);
  const redisBefore = srv.redis ? rssOf(srv.redis.child.pid) : 0;
  const procs = Math.max(4, Math.ceil(n / PER_IDLE_PROC));
  const tokens = writeJson(`tokens-big-${srv.name}.json`, srv.bigTokens);
  const clients = split(n, procs).map((k) => startClient(srv.proto, srv.port, 'idle',
    { n: k, room: srv.bigRoom, tokens, timeout: 900 }));
  try {
    const t0 = Date.now();
    const ready = await Promise.all(clients.map((c) => c.ready(300000)));
    const joined = sum(ready.map((r) => r.joined));
    const failed = sum(ready.map((r) => r.failed));
    log(`${srv.name}: idle: ${joined} joined (${failed} failed) in ${((Date.now() - t0) / 1000).toFixed(1)} s; settling 5 s`);
    await sleep(5000);
    const after = pids.map(rssOf);
    const redisAfter = srv.redis ? rssOf(srv.redis.child.pid) : 0;
    let counts = null;
    try {
      counts = await srv.socketCounts();
    } catch (e) {
      log(`${srv.name}: socket counts: ${e.message}`);
    }
    for (const c of clients) c.endInput();
    const res = await clientResults(clients, 60000);
    const failures = {};
    const closes = {};
    for (const r of ready) for (const [k, v] of Object.entries(r.failures || {})) failures[k] = (failures[k] || 0) + v;
    for (const r of res.filter(Boolean)) {
      for (const [k, v] of Object.entries(r.closesWhileHeld || {})) closes[k] = (closes[k] || 0) + v;
    }
    const growth = sum(after) - sum(before);
    return {
      connections: joined, failed, failures, closesWhileHeld: closes, clientProcesses: clients.length,
      socketsPerWorker: counts, rssBeforeBytes: before, rssAfterBytes: after, rssGrowthBytes: growth,
      bytesPerConnection: joined ? growth / joined : null,
      redisRssGrowthBytes: srv.redis ? redisAfter - redisBefore : undefined,
      clientCpuMs: sum(res.filter(Boolean).map((r) => r.cpuMs || 0)),
    };
  } finally {
    await stopClients(clients);
  }
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}

async function scenarioFanout(srv, receivers, messages, rate) {
  // Two receiver processes: one per core here. The clients spend ~3x the
  // server's CPU on a fan-out, so a process more only adds scheduling delay to
  // the latencies (p99 ~25 ms with 2, ~40 ms with 4 on resil, same run).
  // Across hosts, receiver process i connects to host i mod hosts (the sender
  // to the first): with 2 processes and 2 hosts, half the receivers each.
  const ports = srv.ports || [srv.port];
  const procs = Math.max(parseInt(process.env.BENCH_FANOUT_PROCS || '', 10) || 2, ports.length);
  const tokens = writeJson(`tokens-big-${srv.name}.json`, srv.bigTokens);
  const sendSeconds = messages / rate;
  const clients = split(receivers, procs).map((k, i) => startClient(srv.proto, ports[i % ports.length], 'fanout-recv',
    { n: k, room: srv.bigRoom, tokens, messages, quiet: 3, timeout: Math.ceil(sendSeconds + 240) }));
  let sender = null;
  let cpu1 = null;
  try {
    const ready = await Promise.all(clients.map((c) => c.ready(180000)));
    const joined = sum(ready.map((r) => r.joined));
    let counts = null;
    try {
      counts = await srv.socketCounts();
    } catch (e) {
      log(`${srv.name}: socket counts: ${e.message}`);
    }
    log(`${srv.name}: fanout: ${joined} receivers joined; sending ${messages} at ${rate}/s`);
    const pids = await srv.workers();
    const extras = srv.extras();
    sender = startClient(srv.proto, srv.port, 'fanout-send',
      { room: srv.bigRoom, tokens, messages, rate, timeout: Math.ceil(sendSeconds + 60) });
    await sender.ready(60000).catch(() => null);
    const cpu0 = cpuSnapshot(pids, extras, clients.concat(sender));
    const sent = await sender.result((sendSeconds + 90) * 1000).catch((e) => {
      log(`${srv.name}: fanout sender: ${e.message} ${sender.err.trim().slice(-300)}`);
      return { sent: null };
    });
    for (const c of clients) c.write('done');
    // the window ends when the receivers have it all (or give up)
    const all = await clientResults(clients, 120000, () => {
      cpu1 = cpuSnapshot(pids, extras, clients.concat(sender));
    });
    const res = all.filter(Boolean);
    const cpu = cpuDelta(cpu0, cpu1 || cpuSnapshot(pids, extras, clients.concat(sender)));
    // latencies by the host the receivers were on (host 0 has the sender)
    const perHost = ports.length < 2 ? undefined : ports.map((_, h) => {
      const mine = all.filter((r, i) => r && i % ports.length === h);
      const hl = mine.flatMap((r) => r.lat).sort((a, b) => a - b);
      return { host: h, receivers: sum(mine.map((r) => r.joined)), delivered: sum(mine.map((r) => r.received)),
        p50Ms: percentile(hl, 0.5), p99Ms: percentile(hl, 0.99), maxMs: hl.length ? hl[hl.length - 1] : null };
    });
    const serverCpu = cpu.worker + sum(Object.values(cpu.extras).filter(Number.isFinite));
    const lat = [];
    for (const r of res) for (const x of r.lat) lat.push(x);
    lat.sort((a, b) => a - b);
    const received = sum(res.map((r) => r.received));
    const closes = {};
    const events = {};
    for (const r of res) {
      for (const [k, v] of Object.entries(r.closes || {})) closes[k] = (closes[k] || 0) + v;
      for (const [k, v] of Object.entries(r.events || {})) events[k] = (events[k] || 0) + v;
    }
    const expected = joined * (sent.sent == null ? messages : sent.sent);
    return {
      receivers: joined, failed: sum(ready.map((r) => r.failed)), socketsPerWorker: counts,
      sent: sent.sent, senderEchoed: sent.echoed, senderMaxLagMs: sent.maxLagMs, senderEvents: sent.events, expected,
      delivered: received,
      lost: expected - received, minPerReceiver: res.length ? Math.min(...res.map((r) => r.minPerConn)) : null,
      maxPerReceiver: res.length ? Math.max(...res.map((r) => r.maxPerConn)) : null,
      p50Ms: percentile(lat, 0.5), p99Ms: percentile(lat, 0.99), maxMs: lat.length ? lat[lat.length - 1] : null,
      closes, events, clientResults: res.length, clientProcesses: clients.length,
      endedBy: res.map((r) => r.ended), cpu, workerUsPerDelivery: received ? (cpu.worker * 1e6) / received : null,
      // workers + supervisor(s) or cluster primaries + redis-server, when there is one
      serverUsPerDelivery: received ? (serverCpu * 1e6) / received : null,
      extraUsPerDelivery: Object.fromEntries(Object.entries(cpu.extras).map(([k, v]) => [k,
        received && Number.isFinite(v) ? (v * 1e6) / received : null])),
      perHost, receiversOpenMs: ready.map((r) => r.openMs),
    };
  } finally {
    await stopClients(clients.concat(sender ? [sender] : []));
  }
}

async function scenarioRooms(srv, duration, flood) {
  const procs = 2;
  // across hosts, the members of a room alternate between them (sender on the first)
  const ports = srv.ports || [srv.port];
  const rooms = ports.length < 2 ? srv.rooms
    : srv.rooms.map((r) => Object.assign({}, r, { ports: r.tokens.map((_, i) => ports[i % ports.length]) }));
  const groups = Array.from({ length: procs }, (_, i) => rooms.filter((_, r) => r % procs === i));
  const clients = groups.map((g, i) => startClient(srv.proto, srv.port, 'rooms', {
    rooms: writeJson(`rooms-${srv.name}-${i}.json`, g), duration, flood, timeout: Math.ceil(duration + 240),
  }));
  try {
    const ready = await Promise.all(clients.map((c) => c.ready(120000)));
    const pids = await srv.workers();
    const exitsBefore = srv.exits ? srv.exits.length : 0;
    const extras = srv.extras();
    let counts = null;
    try {
      counts = await srv.socketCounts();
    } catch (e) {
      log(`${srv.name}: socket counts: ${e.message}`);
    }
    const rssStart = pids.map(rssOf);
    const peak = rssStart.slice();
    const sampler = setInterval(() => {
      pids.forEach((p, i) => {
        peak[i] = Math.max(peak[i], rssOf(p));
      });
    }, 250);
    const cpu0 = cpuSnapshot(pids, extras, clients);
    for (const c of clients) c.write('go');
    await sleep(duration * 1000);
    const cpu = cpuDelta(cpu0, cpuSnapshot(pids, extras, clients));
    const wall = cpu.wall;
    const rssEnd = pids.map(rssOf);
    const res = (await clientResults(clients, (duration + 60) * 1000)).filter(Boolean);
    clearInterval(sampler);
    // a few seconds later: does memory come back down?
    await sleep(3000);
    const rssAfter = pids.map(rssOf);
    const aliveInfo = await srv.aliveAfter(pids, exitsBefore);
    const delivered = sum(res.map((r) => r.delivered));
    const errors = {};
    const closes = {};
    for (const r of res) {
      for (const [k, v] of Object.entries(r.errors || {})) errors[k] = (errors[k] || 0) + v;
      for (const [k, v] of Object.entries(r.closes || {})) closes[k] = (closes[k] || 0) + v;
    }
    const workerCpu = cpu.worker;
    const extraCpu = cpu.extras;
    const perDel = (s) => (delivered && Number.isFinite(s) ? (s * 1e6) / delivered : null);
    const totalCpu = workerCpu + sum(Object.values(extraCpu).filter(Number.isFinite));
    return {
      rooms: srv.rooms.length, members: sum(ready.map((r) => r.joined)), failed: sum(ready.map((r) => r.failed)),
      socketsPerWorker: counts, seconds: wall, sent: sum(res.map((r) => r.sent)), delivered,
      deliveredPerS: delivered / wall, lateDeliveries: sum(res.map((r) => r.late)),
      stalls: sum(res.map((r) => r.stalls || 0)), senderPausedTurns: sum(res.map((r) => r.pausedTurns || 0)),
      errors, errorCount: sum(Object.values(errors)), closes, closeCount: sum(Object.values(closes)),
      openAtEnd: sum(res.map((r) => r.openAtEnd || 0)),
      echoed: sum(res.map((r) => r.echoed || 0)), echoedLate: sum(res.map((r) => r.echoedLate || 0)),
      workerCpuS: workerCpu, workerCpuPerWorker: cpu.workers, clientCpuS: cpu.clients, otherLoadPct: cpu.otherLoadPct,
      workerUsPerDelivery: perDel(workerCpu),
      extraCpuS: extraCpu, extraUsPerDelivery: Object.fromEntries(Object.entries(extraCpu).map(([k, v]) => [k, perDel(v)])),
      totalUsPerDelivery: perDel(totalCpu),
      workers: pids, rssStartBytes: rssStart, rssPeakBytes: peak, rssEndBytes: rssEnd, rssAfter3sBytes: rssAfter,
      redisRssBytes: srv.redis ? rssOf(srv.redis.child.pid) : undefined,
      workersAlive: aliveInfo, clientResults: res.length, membersOpenMs: ready.map((r) => r.openMs),
    };
  } finally {
    await stopClients(clients);
  }
}

// ------------------------------------------------------------------ report

const fmt = {
  n: (x, d = 0) => (x == null || !Number.isFinite(x) ? 'n/a'
    : x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d })),
  map: (m) => {
    const e = Object.entries(m || {});
    return e.length ? e.map(([k, v]) => `${k} ×${v}`).join(', ') : 'none';
  },
};

function rows(results) {
  const get = (s, sc) => results[s] && results[s][sc];
  const cell = (s, sc, f) => {
    const r = get(s, sc);
    if (!r) return '—';
    if (r.error) return `error: ${r.error}`;
    try {
      return f(r, s);
    } catch (e) {
      return 'n/a';
    }
  };
  const table = [];
  const add = (scenario, figure, f, target = '') => table.push([scenario, figure,
    ...SERVER_NAMES.filter((s) => ARGS.servers.includes(s)).map((s) => cell(s, scenario, f)), target]);
  const perWorker = (r) => (r.socketsPerWorker ? r.socketsPerWorker.map((w) => fmt.n(w.sockets)).join(' / ') : 'n/a');
  add('idle', 'connections joined (failed)', (r) => `${fmt.n(r.connections)} (${fmt.n(r.failed)})`, fmt.n(ARGS.idle));
  add('idle', 'sockets per worker', perWorker);
  add('idle', 'worker RSS growth', (r) => `${fmt.n(mib(r.rssGrowthBytes), 1)} MiB`);
  const invalid = (r) => (r.workersSurvived && !r.workersSurvived.ok ? ' (INVALID: a worker died)' : '');
  add('idle', 'server memory per connection', (r) => `${fmt.n(r.bytesPerConnection / 1024, 2)} KiB${invalid(r)}` +
    (r.redisRssGrowthBytes !== undefined ? ` (+ redis ${fmt.n(r.redisRssGrowthBytes / Math.max(1, r.connections), 0)} B)` : ''),
  '≤ 6 KiB');
  const survived = (r) => (!r.workersSurvived ? 'n/a' : r.workersSurvived.ok ? 'yes'
    : `NO: ${(r.workersSurvived.died || []).join(', ') || r.workersSurvived.note || '?'} died`);
  add('idle', 'closed while held', (r) => fmt.map(r.closesWhileHeld));
  add('idle', 'workers survived (start to teardown)', survived);
  add('fanout', 'receivers (per worker)', (r) => `${fmt.n(r.receivers)} (${perWorker(r)})`, fmt.n(ARGS.receivers));
  add('fanout', 'delivery p50 / p99 / max', (r) => `${fmt.n(r.p50Ms, 1)} / ${fmt.n(r.p99Ms, 1)} / ${fmt.n(r.maxMs, 1)} ms`,
    'p99 ≤ 20 ms');
  add('fanout', 'delivered / expected (lost)', (r) => `${fmt.n(r.delivered)} / ${fmt.n(r.expected)} (${fmt.n(r.lost)})`,
    'nothing lost');
  if (ARGS.servers.some((s) => s.endsWith('-bus'))) {
    add('fanout', 'delivery p50 / p99 per host (sender on host 0)', (r) => (!r.perHost ? 'one host'
      : r.perHost.map((h) => `h${h.host}: ${fmt.n(h.p50Ms, 1)} / ${fmt.n(h.p99Ms, 1)}`).join('; ') + ' ms'));
  }
  add('fanout', 'worker CPU per delivery', (r) => `${fmt.n(r.workerUsPerDelivery, 2)} µs`);
  add('fanout', 'supervisor / primary, redis CPU per delivery', (r) => Object.entries(r.extraUsPerDelivery || {})
    .map(([k, v]) => `${k} ${fmt.n(v, 2)} µs`).join(', '));
  add('fanout', 'server total CPU per delivery', (r) => `${fmt.n(r.serverUsPerDelivery, 2)} µs`);
  add('fanout', 'other load on the machine', (r) => `${fmt.n(r.cpu.otherLoadPct, 1)} %`);
  add('fanout', 'workers survived (start to teardown)', survived, 'no worker dies');
  add('fanout', 'errors, closes', (r) => `${fmt.map(Object.fromEntries(Object.entries(r.events || {})
    .filter(([k]) => k === 'error' || k.startsWith('error')).concat(Object.entries(r.senderEvents || {})
      .filter(([k]) => k.startsWith('error')))))}; ${fmt.map(r.closes)}`);
  for (const sc of ['throughput', 'flood']) {
    add(sc, 'delivered messages/s', (r) => fmt.n(r.deliveredPerS));
    add(sc, 'worker CPU per delivery', (r) => `${fmt.n(r.workerUsPerDelivery, 2)} µs`, sc === 'throughput' ? '≤ 4 µs' : '');
    add(sc, 'supervisor / primary, redis CPU per delivery', (r) => Object.entries(r.extraUsPerDelivery)
      .map(([k, v]) => `${k} ${fmt.n(v, 2)} µs`).join(', '));
    add(sc, 'server total CPU per delivery', (r) => `${fmt.n(r.totalUsPerDelivery, 2)} µs`);
    add(sc, 'messages sent / came back to their sender (+ in the 2 s after)', (r) =>
      `${fmt.n(r.sent)} / ${fmt.n(r.echoed)} (+${fmt.n(r.echoedLate)})`);
    add(sc, 'deliveries (+ in the 2 s after)', (r) => `${fmt.n(r.delivered)} (+${fmt.n(r.lateDeliveries)})`);
    add(sc, 'errors received', (r) => `${fmt.n(r.errorCount)}${r.errorCount ? `: ${fmt.map(r.errors)}` : ''}`);
    add(sc, 'closes / disconnects', (r) => `${fmt.n(r.closeCount)}${r.closeCount ? `: ${fmt.map(r.closes)}` : ''}`);
    add(sc, 'other load on the machine', (r) => `${fmt.n(r.otherLoadPct, 1)} % (clients ${fmt.n(r.clientCpuS, 1)} s CPU)`);
    add(sc, 'workers alive (run; start to teardown)', (r) => `${r.workersAlive.ok ? 'yes'
      : `NO: died ${r.workersAlive.died.join(', ') || '?'}`}; ${survived(r)}`, sc === 'flood' ? 'no worker dies' : '');
    add(sc, 'RSS per worker: start → peak → 3 s after', (r) => r.workers.map((p, i) =>
      `${fmt.n(mib(r.rssStartBytes[i]), 1)} → ${fmt.n(mib(r.rssPeakBytes[i]), 1)} → ${fmt.n(mib(r.rssAfter3sBytes[i]), 1)}`)
      .join('; ') + ' MiB', sc === 'flood' ? 'bounded' : '');
  }
  return table.filter((row) => ARGS.only.includes(row[0]));
}

function columnName(s) {
  return {
    resil: 'resil', 'resil-base': 'resil (RESIL_BASE_BIN)', 'resil-sio': 'resil (socket.io-client)',
    'resil-bus': `resil, ${ARGS.hosts} hosts + bus`, socketio: 'socket.io+redis',
    'socketio-bus': `socket.io+redis, ${ARGS.hosts} hosts`,
  }[s];
}

// The ratios SPEC §11 states its scale-out targets in, from this run's
// figures (reported, never judged).
function ratios(results) {
  const f = (s) => results[s] && results[s].fanout && !results[s].fanout.error ? results[s].fanout : null;
  const t = (s) => results[s] && results[s].throughput && !results[s].throughput.error ? results[s].throughput : null;
  const div = (a, b) => (a != null && b != null && Number.isFinite(a) && Number.isFinite(b) && b > 0 ? a / b : null);
  const x = (v) => (v == null ? 'n/a' : `${fmt.n(v, 2)}×`);
  const out = [];
  const bus = f('resil-bus');
  // the worst p99 of the hosts without the sender (null when one had nothing)
  const crossP99 = (r) => {
    const v = r && r.perHost ? r.perHost.filter((h) => h.host > 0).map((h) => h.p99Ms) : [];
    return v.length && v.every((y) => y != null) ? Math.max(...v) : null;
  };
  const cross = crossP99(bus);
  if (bus && bus.lost) {
    out.push(`* resil-bus lost ${fmt.n(bus.lost)} of ${fmt.n(bus.expected)} fan-out deliveries: the hosts did not ` +
      'share them (no bus in this build, or it was down), so its cross-host figures are missing or partial');
  }
  if (bus && f('resil')) {
    out.push(`* fan-out p99 on the other host(s), resil with the bus ÷ single-host resil: ${fmt.n(cross, 1)} / ` +
      `${fmt.n(f('resil').p99Ms, 1)} ms = ${x(div(cross, f('resil').p99Ms))} (target ≤ 2×); all receivers: ` +
      `${x(div(bus.p99Ms, f('resil').p99Ms))}`);
  }
  if (bus && f('socketio-bus')) {
    const sio = f('socketio-bus');
    const sioCross = crossP99(sio);
    out.push(`* fan-out p99, resil ÷ Socket.io, both across hosts: other host ${fmt.n(cross, 1)} / ` +
      `${fmt.n(sioCross, 1)} ms = ${x(div(cross, sioCross))}; all receivers ${x(div(bus.p99Ms, sio.p99Ms))} ` +
      '(target ≤ 0.25×)');
    out.push(`* server CPU per delivery (workers, supervisors / primaries, redis-server), resil ÷ Socket.io across ` +
      `hosts: fan-out ${fmt.n(bus.serverUsPerDelivery, 2)} / ${fmt.n(sio.serverUsPerDelivery, 2)} µs = ` +
      `${x(div(bus.serverUsPerDelivery, sio.serverUsPerDelivery))}` + (t('resil-bus') && t('socketio-bus')
      ? `; throughput ${fmt.n(t('resil-bus').totalUsPerDelivery, 2)} / ${fmt.n(t('socketio-bus').totalUsPerDelivery, 2)} µs = ` +
        `${x(div(t('resil-bus').totalUsPerDelivery, t('socketio-bus').totalUsPerDelivery))}` : '') + ' (target ≤ 0.33×)');
  }
  if (f('resil') && f('resil-base')) {
    out.push(`* single host, this build (bus unset) ÷ RESIL_BASE_BIN: fan-out p99 ` +
      `${x(div(f('resil').p99Ms, f('resil-base').p99Ms))}, fan-out server CPU per delivery ` +
      `${x(div(f('resil').serverUsPerDelivery, f('resil-base').serverUsPerDelivery))}` + (t('resil') && t('resil-base')
      ? `, throughput deliveries/s ${x(div(t('resil').deliveredPerS, t('resil-base').deliveredPerS))}, CPU per delivery ` +
        `${x(div(t('resil').totalUsPerDelivery, t('resil-base').totalUsPerDelivery))}` : '') + ' (target: unchanged)');
  }
  return out.length ? ['', ...out] : [];
}

function markdown(results, meta) {
  const servers = SERVER_NAMES.filter((s) => ARGS.servers.includes(s));
  const head = ['scenario', 'figure', ...servers.map(columnName), 'target'];
  const esc = (s) => String(s).replace(/\|/g, '\\|');
  const multi = servers.some((s) => s.endsWith('-bus'));
  const lines = [
    `### WebSocket chat${multi ? ' across hosts' : ''}: resil vs Socket.io 4 + Redis adapter (${meta.date})`,
    '',
    `\`${meta.command}\` — ${meta.cpu}, ${meta.nproc} cores; ${meta.workers} workers each` +
      (multi ? ` on one host; the -bus servers: ${ARGS.hosts} hosts of ${ARGS.hostWorkers} worker(s) each on one ` +
        'redis-server, members split over the hosts' : '') + '; ' + [
      ARGS.only.includes('idle') && `idle ${fmt.n(ARGS.idle)}`,
      ARGS.only.includes('fanout') && `fan-out ${fmt.n(ARGS.receivers)} × ${ARGS.messages} at ${ARGS.rate}/s`,
      (ARGS.only.includes('throughput') || ARGS.only.includes('flood')) &&
        `rooms ${NROOMS} × ${ROOM_SIZE} for ${ARGS.duration} s`,
    ].filter(Boolean).join(', ') + '.',
    '',
    ...servers.map((s) => `* ${s}: ${meta.versions[s] || '?'}`),
    '',
    `| ${head.join(' | ')} |`,
    `|${head.map(() => '---').join('|')}|`,
    ...rows(results).map((r) => `| ${r.map(esc).join(' | ')} |`),
    '',
    ...servers.map((s) => {
      const lines = Object.values((results[s] && results[s].serverLog) || {});
      return `* ${s.startsWith('resil') ? `${s}: resild's stderr (warn and above)` : "ref-server.js's stderr"}: ` +
        (lines.length ? lines.map((l) => `\`${l.first.slice(0, 300)}\` ×${l.count}`).join('; ') : 'nothing');
    }),
    ...ratios(results),
    '',
    'The reference stores nothing (messages live in per-worker memory); resil stores every message in SQLite ' +
      'before broadcasting it. CPU is utime+stime from /proc of the processes named, all threads, over the ' +
      'measured window.',
  ];
  return lines.join('\n');
}

// -------------------------------------------------------------------- main

async function runServer(srv) {
  const out = {};
  await srv.start(srv.name.endsWith('-bus') ? ARGS.hostWorkers : ARGS.workers);
  await srv.setup();
  for (const sc of ARGS.only) {
    const t0 = Date.now();
    log(`${srv.name}: ${sc} ...`);
    let pidsBefore = null;
    const exitsBefore = srv.exits ? srv.exits.length : 0;
    try {
      pidsBefore = await srv.workers();
    } catch (e) {
      log(`${srv.name}: worker pids: ${e.message}`);
    }
    try {
      if (sc === 'idle') out.idle = await withTimeout(scenarioIdle(srv, ARGS.idle), 900000, 'idle');
      if (sc === 'fanout') {
        out.fanout = await withTimeout(scenarioFanout(srv, ARGS.receivers, ARGS.messages, ARGS.rate),
          (ARGS.messages / ARGS.rate + 600) * 1000, 'fanout');
      }
      if (sc === 'throughput') out.throughput = await withTimeout(scenarioRooms(srv, ARGS.duration, false),
        (ARGS.duration + 400) * 1000, 'throughput');
      if (sc === 'flood') out.flood = await withTimeout(scenarioRooms(srv, ARGS.duration, true),
        (ARGS.duration + 400) * 1000, 'flood');
    } catch (e) {
      if (e instanceof Fatal) throw e;
      log(`${srv.name}: ${sc}: ${e.message}`);
      out[sc] = { error: e.message };
    }
    // did every worker survive the scenario (set-up and tear-down included)?
    if (pidsBefore && out[sc]) {
      const survived = await srv.aliveAfter(pidsBefore, exitsBefore).catch((e) => ({ ok: false, note: e.message }));
      out[sc].workersSurvived = survived;
      if (!survived.ok) log(`${srv.name}: ${sc}: WORKER DIED: ${JSON.stringify(survived)}`);
    }
    const r = out[sc];
    log(`${srv.name}: ${sc} done in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${summary(sc, r)}`);
    if (!srv.down()) await sleep(1000);
    else {
      log(`${srv.name}: the server exited during ${sc}`);
      out[sc] = Object.assign(out[sc] || {}, { serverExited: true });
      break;
    }
  }
  out.serverLog = srv.logSummary();
  return out;
}

function summary(sc, r) {
  if (!r || r.error) return r ? `error: ${r.error}` : 'no result';
  if (sc === 'idle') {
    return `${r.connections} joined, ${fmt.n(r.bytesPerConnection / 1024, 2)} KiB per connection, ` +
      `sockets per worker ${r.socketsPerWorker ? r.socketsPerWorker.map((w) => w.sockets).join('/') : 'n/a'}`;
  }
  if (sc === 'fanout') {
    return `p50 ${fmt.n(r.p50Ms, 1)} ms, p99 ${fmt.n(r.p99Ms, 1)} ms, max ${fmt.n(r.maxMs, 1)} ms, ` +
      `${r.delivered}/${r.expected} delivered`;
  }
  return `${fmt.n(r.deliveredPerS)} deliveries/s, worker ${fmt.n(r.workerUsPerDelivery, 2)} µs/delivery, ` +
    `sent ${r.sent}, errors ${r.errorCount}, closes ${r.closeCount}, workers alive ${r.workersAlive.ok}`;
}

async function main() {
  await clockTicks();
  TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'resil-wsbench-'));
  const results = {};
  const versions = {};
  const make = {
    resil: () => new ResilServer(),
    'resil-base': () => new ResilServer('resil-base', 'resil', { bin: process.env.RESIL_BASE_BIN }),
    'resil-sio': () => new ResilServer('resil-sio', 'socketio'),
    'resil-bus': () => new ResilServer('resil-bus', 'resil', { hosts: ARGS.hosts, bus: true }),
    socketio: () => new SocketioServer(),
    'socketio-bus': () => new SocketioServer('socketio-bus', ARGS.hosts),
  };
  const servers = ARGS.servers.map((s) => make[s]());
  for (const srv of servers) {
    log(`=== ${srv.name}`);
    try {
      versions[srv.name] = await srv.version();
      results[srv.name] = await runServer(srv);
    } finally {
      await srv.stop();
    }
  }
  const meta = {
    date: new Date().toISOString().replace(/:\d\d\.\d+Z$/, ' UTC').replace('T', ' '),
    command: `node bench/ws/bench.js ${process.argv.slice(2).join(' ')}`.trim(),
    cpu: (/^model name\s*:\s*(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8')) || [])[1] || '?',
    nproc: os.cpus().length, uname: `${os.type()} ${os.release()} ${os.arch()}`, workers: ARGS.workers,
    args: ARGS, versions, clkTck: CLK_TCK,
  };
  process.stdout.write(`${markdown(results, meta)}\n\n`);
  process.stdout.write('```json\n');
  process.stdout.write(`${JSON.stringify({ meta, results }, null, 1)}\n`);
  process.stdout.write('```\n');
}

main().then(() => cleanup(), async (e) => {
  log(e instanceof Fatal ? e.message : (e.stack || String(e)));
  await cleanup();
  process.exit(1);
});
