// Load client for bench/ws/bench.js: one process opens many chat connections
// to resil (--proto resil: raw WebSocket with `ws`, JSON text frames
// {"event", "data"} of SPEC §7) or to the Socket.io reference (--proto
// socketio: socket.io-client, websocket transport only) and runs one mode:
//
//   idle         --n N --room R: open N connections (tokens round-robin), each
//                joins R; prints {"type":"ready",...}; holds them until stdin
//                closes (or a "stop" line, SIGTERM, --timeout), then closes them
//   fanout-recv  --n N --room R --messages M: like idle, then records for each
//                new_message now - the send time carried in its content (ms);
//                ends when every connection has M, or --quiet seconds after a
//                "done" line on stdin without a new message, or --timeout
//   fanout-send  --room R --messages M --rate r: one connection sends M
//                messages at r/s, each content the wall-clock send time in ms
//                (performance.timeOrigin + performance.now(), µs precision),
//                scheduled against the start so timer lag does not accumulate;
//                closes once its own M copies came back (at most 15 s later)
//   rooms        --rooms FILE [--flood] --duration D: FILE is
//                [{roomId, tokens: [...], ports: [...]}]; every token connects
//                (to its port in ports, when given, else --port: a room can
//                span several hosts) and joins its room, the first one of each
//                room is its sender. After a "go"
//                line on stdin, for D seconds: flow-controlled, a sender sends
//                its next message when its previous one came back to it as
//                new_message; --flood, senders never wait (batches per
//                event-loop turn while the socket's outgoing buffer is below a
//                bound, so this process stays small). Then 2 s of drain.
//
// Common: --proto resil|socketio --port P --tokens FILE (JSON array)
// [--concurrency C] [--timeout S]. Output on stdout, one JSON object per line:
// a "ready" line, then one "result" line; diagnostics on stderr.
'use strict';

const fs = require('node:fs');
const { performance } = require('node:perf_hooks');

// ------------------------------------------------------------- arguments

function parseArgs(argv) {
  const a = { concurrency: 100, quiet: 3, timeout: 600, duration: 10, rate: 20, messages: 0, n: 0 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    if (!k.startsWith('--')) throw new Error(`unexpected argument ${k}`);
    const key = k.slice(2);
    if (key === 'flood') {
      a.flood = true;
      continue;
    }
    if (i + 1 >= argv.length) throw new Error(`${k} needs a value`);
    const v = argv[++i];
    a[key] = ['port', 'n', 'messages', 'concurrency'].includes(key) ? parseInt(v, 10)
      : ['rate', 'duration', 'quiet', 'timeout'].includes(key) ? parseFloat(v) : v;
  }
  if (!['resil', 'socketio'].includes(a.proto)) throw new Error('--proto must be resil or socketio');
  if (!(a.port > 0)) throw new Error('--port is required');
  return a;
}

const A = parseArgs(process.argv.slice(2));
const now = () => performance.timeOrigin + performance.now(); // wall clock, ms, µs precision
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}
function tally(map, key) {
  map[key] = (map[key] || 0) + 1;
}

// ------------------------------------------------------ protocol adapters
//
// open(token, h) resolves to {send(event, data), close(), buffered(), open()}.
// h.newMessage(getData, conn) for every new_message (getData() parses it),
// h.event(name, data, conn) for every other event, h.closed(why, conn) once.

const NEW_MESSAGE_PREFIX = Buffer.from('{"event":"new_message"');

function openResil(token, h, port = A.port) {
  const WebSocket = require('ws');
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?token=${encodeURIComponent(token)}`,
      { perMessageDeflate: false, handshakeTimeout: 30000 });
    let opened = false;
    const conn = {
      send: (event, data) => ws.send(JSON.stringify({ event, data })),
      close: () => ws.close(1000),
      buffered: () => ws.bufferedAmount,
      open: () => ws.readyState === WebSocket.OPEN,
    };
    ws.on('unexpected-response', (req, res) => {
      reject(new Error(`HTTP ${res.statusCode}`));
      res.resume();
      ws.terminate();
    });
    ws.on('error', (e) => {
      if (!opened) reject(e);
    });
    ws.on('open', () => {
      opened = true;
      resolve(conn);
    });
    ws.on('close', (code) => {
      if (opened) h.closed(`close ${code}`, conn);
    });
    ws.on('message', (buf, isBinary) => {
      if (!isBinary && buf.length > NEW_MESSAGE_PREFIX.length &&
          buf.compare(NEW_MESSAGE_PREFIX, 0, NEW_MESSAGE_PREFIX.length, 0, NEW_MESSAGE_PREFIX.length) === 0) {
        h.newMessage(() => JSON.parse(buf).data, conn);
        return;
      }
      let msg;
      try {
        msg = JSON.parse(buf);
      } catch (e) {
        h.event('unparsable', String(buf).slice(0, 80), conn);
        return;
      }
      if (msg.event === 'new_message') h.newMessage(() => msg.data, conn);
      else h.event(msg.event, msg.data, conn);
    });
  });
}

function openSocketio(token, h, port = A.port) {
  const { io } = require('socket.io-client');
  return new Promise((resolve, reject) => {
    // forceNew: each connection its own Manager and WebSocket (socket.io-client
    // would otherwise multiplex every io() to the same URL on one connection)
    const s = io(`http://127.0.0.1:${port}`, {
      transports: ['websocket'], auth: { token }, query: { token }, forceNew: true, reconnection: false, timeout: 30000,
    });
    let opened = false;
    const conn = {
      send: (event, data) => s.emit(event, data),
      close: () => s.close(),
      buffered: () => {
        const e = s.io.engine;
        if (!e) return 0;
        const ws = e.transport && e.transport.ws;
        return (ws ? ws.bufferedAmount : 0) + e.writeBuffer.length * 128;
      },
      open: () => s.connected,
    };
    s.on('connect', () => {
      opened = true;
      resolve(conn);
    });
    s.on('connect_error', (e) => {
      if (!opened) reject(e);
      s.close();
    });
    s.on('disconnect', (reason) => {
      if (opened) h.closed(reason, conn);
    });
    s.onAny((event, data) => {
      if (event === 'new_message') h.newMessage(() => data, conn);
      else h.event(event, data, conn);
    });
  });
}

const openConn = A.proto === 'resil' ? openResil : openSocketio;

// Open one connection per token, at most `concurrency` in flight; each joins
// its room and waits for recent_messages (or an error). Resolves to
// {conns: [{conn, room, ...}], failed, failures}.
async function openAll(specs, h) {
  const conns = new Array(specs.length);
  const failures = {};
  let failed = 0;
  let next = 0;
  async function one(i) {
    const spec = specs[i];
    const state = { room: spec.room, index: i, joined: null };
    const joined = new Promise((resolve) => {
      state.joined = resolve;
    });
    let conn;
    try {
      conn = await openConn(spec.token, {
        newMessage: (get, c) => h.newMessage(get, c, state),
        event: (name, data, c) => {
          if (state.joined && (name === 'recent_messages' || name === 'error')) {
            const done = state.joined;
            state.joined = null;
            done(name === 'error' ? `error: ${data && data.message}` : null);
            if (name === 'recent_messages') return;
          }
          h.event(name, data, c, state);
        },
        closed: (why, c) => {
          if (state.closing) return; // we closed it
          if (state.joined) {
            const done = state.joined;
            state.joined = null;
            done(why);
          }
          h.closed(why, c, state);
        },
      }, spec.port);
    } catch (e) {
      failed++;
      tally(failures, `connect: ${e.message}`);
      return;
    }
    state.conn = conn;
    conn.send('join_room', { roomId: spec.room });
    const err = await Promise.race([joined, sleep(30000).then(() => 'join timed out')]);
    if (err) {
      failed++;
      tally(failures, `join: ${err}`);
      conn.close();
      return;
    }
    conns[i] = state;
  }
  async function lane() {
    while (next < specs.length) await one(next++);
  }
  const t0 = Date.now();
  await Promise.all(Array.from({ length: Math.min(A.concurrency, specs.length) }, lane));
  return { conns: conns.filter(Boolean), failed, failures, openMs: Date.now() - t0 };
}

// Close every connection, wait up to 3 s for them to go.
async function closeAll(states) {
  for (const s of states) {
    s.closing = true;
    try {
      s.conn.close();
    } catch (e) { /* already gone */ }
  }
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline && states.some((s) => s.conn.open())) await sleep(50);
}

// ------------------------------------------------------------------ stdin

let stdinEnded = false;
const stdinWaiters = [];
const stdinLines = [];
function onStdin(line) {
  stdinLines.push(line);
  for (const w of stdinWaiters.splice(0)) w();
}
{
  let buf = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      onStdin(buf.slice(0, i).trim());
      buf = buf.slice(i + 1);
    }
  });
  process.stdin.on('end', () => {
    stdinEnded = true;
    for (const w of stdinWaiters.splice(0)) w();
  });
}
let terminated = false;
process.on('SIGTERM', () => {
  terminated = true;
  for (const w of stdinWaiters.splice(0)) w();
});

// Resolves when `line` arrives on stdin, stdin closes, SIGTERM, or ms pass;
// to what happened.
function waitStdin(line, ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => finish('timeout'), ms);
    function finish(why) {
      clearTimeout(timer);
      resolve(why);
    }
    function check() {
      if (stdinLines.includes(line)) return finish('line');
      if (stdinEnded) return finish('eof');
      if (terminated) return finish('sigterm');
      stdinWaiters.push(check);
      return undefined;
    }
    check();
  });
}

function tokens() {
  const list = JSON.parse(fs.readFileSync(A.tokens, 'utf8'));
  if (!Array.isArray(list) || list.length === 0) throw new Error('--tokens: a non-empty JSON array is needed');
  return list;
}

function cpuMs() {
  const u = process.cpuUsage();
  return Math.round((u.user + u.system) / 1000);
}

// ------------------------------------------------------------------ modes

async function idle() {
  const list = tokens();
  const closes = {};
  const events = {};
  const specs = Array.from({ length: A.n }, (_, i) => ({ token: list[i % list.length], room: A.room }));
  const { conns, failed, failures, openMs } = await openAll(specs, {
    newMessage: () => {},
    event: (name) => tally(events, name),
    closed: (why) => tally(closes, why),
  });
  emit({ type: 'ready', joined: conns.length, failed, failures, openMs });
  const why = await waitStdin('stop', A.timeout * 1000);
  await closeAll(conns);
  emit({ type: 'result', joined: conns.length, failed, failures, closesWhileHeld: closes, events,
    ended: why, cpuMs: cpuMs() });
}

async function fanoutRecv() {
  const list = tokens();
  const M = A.messages;
  const closes = {};
  const events = {};
  const lat = [];
  let lastAt = 0;
  let complete = 0;
  let total = Infinity; // connections joined, known once openAll is done
  let wake = null;
  const specs = Array.from({ length: A.n }, (_, i) => ({ token: list[i % list.length], room: A.room }));
  const { conns, failed, failures, openMs } = await openAll(specs, {
    newMessage: (get, c, st) => {
      const t = now();
      const sent = parseFloat(get().content);
      if (Number.isFinite(sent)) lat.push(Math.round((t - sent) * 1000) / 1000);
      lastAt = Date.now();
      st.count = (st.count || 0) + 1;
      if (st.count === M && ++complete >= total && wake) wake();
    },
    event: (name) => tally(events, name),
    closed: (why) => tally(closes, why),
  });
  total = conns.length;
  emit({ type: 'ready', joined: conns.length, failed, failures, openMs });
  const hardEnd = Date.now() + A.timeout * 1000;
  let ended = 'complete';
  const allIn = new Promise((r) => {
    wake = r;
  });
  if (conns.length === 0 || complete === conns.length) wake();
  // wait for the full count; after "done" (or EOF) only while messages still arrive
  const poll = (async () => {
    const why = await waitStdin('done', A.timeout * 1000);
    if (why !== 'line') {
      ended = why;
      return;
    }
    lastAt = Math.max(lastAt, Date.now());
    while (Date.now() - lastAt < A.quiet * 1000 && Date.now() < hardEnd && !terminated) await sleep(100);
    ended = 'quiet';
  })();
  await Promise.race([allIn, poll]);
  if (complete === conns.length) ended = 'complete';
  const counts = conns.map((s) => s.count || 0);
  await closeAll(conns);
  emit({ type: 'result', joined: conns.length, failed, failures, expected: conns.length * M,
    received: counts.reduce((x, y) => x + y, 0), minPerConn: counts.length ? Math.min(...counts) : 0,
    maxPerConn: counts.length ? Math.max(...counts) : 0, closes, events, ended, cpuMs: cpuMs(), lat });
}

async function fanoutSend() {
  const list = tokens();
  const events = {};
  const closes = {};
  let echoed = 0; // its own messages back (it is a member of the room)
  const { conns, failed, failures } = await openAll([{ token: list[0], room: A.room }], {
    newMessage: () => {
      echoed++;
    },
    event: (name, data) => tally(events, name === 'error' ? `error: ${data && data.message}` : name),
    closed: (why) => tally(closes, why),
  });
  if (!conns.length) {
    emit({ type: 'result', sent: 0, failed, failures });
    return;
  }
  emit({ type: 'ready', joined: 1 });
  const c = conns[0].conn;
  const t0 = performance.now();
  const step = 1000 / A.rate;
  let sent = 0;
  let maxLag = 0;
  for (let i = 0; i < A.messages && c.open() && !terminated && !stdinEnded; i++) {
    const wait = t0 + i * step - performance.now();
    if (wait > 1) await sleep(wait);
    maxLag = Math.max(maxLag, performance.now() - (t0 + i * step));
    c.send('send_message', { roomId: A.room, content: now().toFixed(3) });
    sent++;
  }
  const elapsed = performance.now() - t0;
  // close only once the server has broadcast all of them (its copies are back),
  // or after 15 s: a close with messages still unread would lose them
  const until = Date.now() + 15000;
  while (echoed < sent && c.open() && Date.now() < until && !terminated) await sleep(50);
  await closeAll(conns);
  emit({ type: 'result', sent, echoed, elapsedMs: Math.round(elapsed), maxLagMs: Math.round(maxLag * 1000) / 1000,
    events, closes, cpuMs: cpuMs() });
}

async function rooms() {
  const spec = JSON.parse(fs.readFileSync(A.rooms, 'utf8'));
  const specs = [];
  for (const r of spec) {
    r.tokens.forEach((token, i) => specs.push({ token, room: r.roomId, sender: i === 0, port: r.ports && r.ports[i] }));
  }
  const FLOOD_BOUND = 256 * 1024; // bytes not yet handed to the kernel, per sender
  const FLOOD_BATCH = 20;
  const content = 'x'.repeat(64);
  let phase = 'setup'; // setup -> run -> drain -> done
  let delivered = 0;
  let late = 0;
  let echoed = 0; // a sender's own messages back to it (one per message broadcast)
  let echoedLate = 0;
  let sent = 0;
  let stalls = 0;
  let pausedTurns = 0;
  const closes = {};
  const errors = {};
  const events = {};
  const senders = [];
  const sendOne = (st) => {
    st.conn.send('send_message', { roomId: st.room, content });
    st.lastSend = Date.now();
    sent++;
  };
  const { conns, failed, failures, openMs } = await openAll(specs, {
    newMessage: (get, c, st) => {
      if (phase === 'run') delivered++;
      else if (phase === 'drain') late++;
      if (!st.sender) return;
      if (phase === 'run') echoed++;
      else if (phase === 'drain') echoedLate++;
      if (!A.flood && phase === 'run' && c.open()) sendOne(st);
    },
    event: (name, data) => {
      if (name === 'error') {
        if (phase === 'run' || phase === 'drain') tally(errors, String(data && data.message));
      } else tally(events, name);
    },
    closed: (why, c, st) => {
      if (phase !== 'done') tally(closes, why);
      st.gone = true;
    },
  });
  for (const st of conns) {
    if (specs[st.index].sender) {
      st.sender = true;
      senders.push(st);
    }
  }
  emit({ type: 'ready', joined: conns.length, failed, failures, openMs, senders: senders.length });
  const go = await waitStdin('go', A.timeout * 1000);
  if (go !== 'line') {
    await closeAll(conns);
    emit({ type: 'result', joined: conns.length, failed, failures, ended: go, sent, delivered });
    return;
  }
  phase = 'run';
  const t0 = Date.now();
  const end = t0 + A.duration * 1000;
  if (A.flood) {
    await new Promise((resolve) => {
      const turn = () => {
        if (Date.now() >= end || terminated || stdinEnded) return resolve();
        for (const st of senders) {
          if (st.gone || !st.conn.open()) continue;
          if (st.conn.buffered() >= FLOOD_BOUND) {
            pausedTurns++;
            continue;
          }
          for (let i = 0; i < FLOOD_BATCH; i++) sendOne(st);
        }
        return setImmediate(turn);
      };
      turn();
    });
  } else {
    for (const st of senders) sendOne(st);
    // a sender whose message never came back re-sends after 5 s (counted)
    const watchdog = setInterval(() => {
      for (const st of senders) {
        if (!st.gone && st.conn.open() && Date.now() - st.lastSend > 5000) {
          stalls++;
          sendOne(st);
        }
      }
    }, 500);
    while (Date.now() < end && !terminated && !stdinEnded) await sleep(Math.min(100, end - Date.now()));
    clearInterval(watchdog);
  }
  const ranMs = Date.now() - t0;
  phase = 'drain';
  await sleep(2000);
  phase = 'done';
  const open = conns.filter((s) => !s.gone && s.conn.open()).length;
  await closeAll(conns);
  emit({ type: 'result', joined: conns.length, failed, failures, senders: senders.length, sent, delivered,
    late, echoed, echoedLate, ranMs, stalls, pausedTurns, errors, closes, events, openAtEnd: open, cpuMs: cpuMs() });
}

const modes = { idle, 'fanout-recv': fanoutRecv, 'fanout-send': fanoutSend, rooms };
if (!modes[A.mode]) {
  process.stderr.write(`client.js: --mode must be one of ${Object.keys(modes).join(', ')}\n`);
  process.exit(2);
}
const hard = setTimeout(() => {
  process.stderr.write(`client.js: ${A.mode}: hard timeout (${A.timeout + 60} s)\n`);
  process.exit(3);
}, (A.timeout + 60) * 1000);
hard.unref();
// stdout is a pipe, written asynchronously: exit once the result has left
// (a fan-out result carries every latency, hundreds of KiB)
modes[A.mode]().then(() => process.stdout.write('', () => process.exit(0)), (e) => {
  process.stderr.write(`client.js: ${A.mode}: ${e.stack || e}\n`);
  process.exit(1);
});
