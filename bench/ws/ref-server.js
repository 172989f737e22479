// Reference WebSocket chat for bench/ws.sh: Socket.io 4 with the Redis adapter
// (@socket.io/redis-adapter 8 over node-redis 4) in node cluster mode with
// BENCH_WORKERS workers, the stack a Node.js team reaches for when a chat has
// to span several processes. It speaks resil's chat (SPEC §7) as socket.io
// events, so bench/ws/client.js can load both servers the same way:
//
//   connect            HS256 JWT from handshake.auth.token (or ?token=), checked
//                      with node:crypto (alg, signature, exp, sub), and the user
//                      looked up in this worker's in-memory Map; refused with a
//                      connect_error otherwise (resil: 401 before the upgrade)
//   join_room {roomId} membership from the in-memory room map -> room_joined
//                      {roomId, roomName} then recent_messages [last 50, oldest
//                      first]; `error` {message: "access denied to room"}
//   send_message {roomId, content}
//                      joined sockets only, content 1-2000 characters, then
//                      io.to(roomId).emit('new_message', {id, roomId, content,
//                      sender: {id, username}, createdAt}) - to every member socket
//                      of every worker through Redis pub/sub
//   typing_start / typing_stop {roomId}
//                      user_typing {userId, username} / user_stopped_typing
//                      {userId} to the others in the room
//   leave_room {roomId}
//   anything else      an `error` event {message}
//
// Fairness: there is NO database here. A message lives only in the history
// array of the worker that received it (last 50 per room, per worker) and is
// broadcast at once; resil stores every message in SQLite before it
// broadcasts it. Every figure of this server is therefore a lower bound for
// a real Socket.io deployment with persistence. Nothing limits how fast a
// socket may send (resil runs the benchmark with RESIL_WS_MESSAGE_RATE set
// out of reach too).
//
// Transports: websocket only (no long-polling), so no sticky sessions are
// needed behind cluster's round-robin accept; no per-message deflate (the
// socket.io 4 default; resil has none either); maxHttpBufferSize 64 KiB like
// resil's frame limit.
//
// Environment:
//   PORT               port on 127.0.0.1 (required)
//   REDIS_PORT         redis-server on 127.0.0.1 (required)
//   BENCH_WORKERS      cluster workers (default 2)
//   BENCH_JWT_SECRET   HS256 key, the string's bytes (required, >= 32 bytes)
//   BENCH_ROOMS_FILE   JSON {roomId: [userId, ...]} or {roomId: {name, members}}
//   BENCH_USERS_FILE   JSON {userId: username}; tokens whose sub is not in it
//                      are refused (optional: without it any valid token is
//                      accepted and the username is the email's local part)
//
// The primary reports on stdout, one JSON object per line, for bench.js:
//   {"event":"ready","workers":[pid,...]}       all workers listen
//   {"event":"exit","pid":P,"code":C,"signal":S,"replacement":pid}
//                                               a worker died (also on stderr);
//                                               it is forked again and counted
//   {"event":"counts","workers":[{pid,sockets}]} answer to SIGUSR2
'use strict';

const cluster = require('node:cluster');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');

const WORKERS = Math.max(1, parseInt(process.env.BENCH_WORKERS || '2', 10) || 2);
const PORT = parseInt(process.env.PORT || '', 10);
const REDIS_PORT = parseInt(process.env.REDIS_PORT || '', 10);
const SECRET = process.env.BENCH_JWT_SECRET || '';
const HISTORY = 50;
const CONTENT_MAX = 2000;

function fail(message) {
  process.stderr.write(`ref-server.js: ${message}\n`);
  process.exit(1);
}
if (!(PORT > 0 && PORT < 65536)) fail('PORT must be set to a TCP port');
if (!(REDIS_PORT > 0 && REDIS_PORT < 65536)) fail('REDIS_PORT must be set to the redis-server port');
if (Buffer.byteLength(SECRET) < 32) fail('BENCH_JWT_SECRET must be at least 32 bytes');

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// ------------------------------------------------------------------ primary

if (cluster.isPrimary) {
  let stopping = false;
  let exits = 0;
  const pending = new Map(); // worker id -> not yet listening
  const announce = () => {
    if (pending.size === 0) out({ event: 'ready', workers: Object.values(cluster.workers).map((w) => w.process.pid) });
  };
  const spawn = () => {
    const w = cluster.fork();
    pending.set(w.id, true);
    w.on('listening', () => {
      if (pending.delete(w.id)) announce();
    });
    w.on('message', (m) => {
      if (m && m.type === 'count') onCount(w, m);
    });
    return w;
  };
  for (let i = 0; i < WORKERS; i++) spawn();

  cluster.on('exit', (worker, code, signal) => {
    pending.delete(worker.id);
    if (stopping) {
      if (Object.keys(cluster.workers).length === 0) process.exit(0);
      return;
    }
    exits++;
    const next = spawn();
    process.stderr.write(`ref-server.js: worker ${worker.process.pid} exited (${signal || code}); ` +
      `forked ${next.process.pid} (exit #${exits})\n`);
    out({ event: 'exit', pid: worker.process.pid, code, signal, replacement: next.process.pid });
  });

  // SIGUSR2: ask every worker for its connected socket count, print them.
  let counting = null;
  function onCount(w, m) {
    if (!counting) return;
    counting.got.set(w.process.pid, m.sockets);
    if (counting.got.size >= counting.want) finishCount();
  }
  function finishCount() {
    if (!counting) return;
    clearTimeout(counting.timer);
    out({ event: 'counts', workers: [...counting.got].map(([pid, sockets]) => ({ pid, sockets })) });
    counting = null;
  }
  process.on('SIGUSR2', () => {
    if (counting) return;
    const live = Object.values(cluster.workers);
    counting = { want: live.length, got: new Map(), timer: setTimeout(finishCount, 3000) };
    for (const w of live) w.send({ type: 'count' });
  });

  const stop = () => {
    if (stopping) return;
    stopping = true;
    const live = Object.values(cluster.workers);
    if (live.length === 0) process.exit(0);
    for (const w of live) w.process.kill('SIGTERM');
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  return;
}

// ------------------------------------------------------------------- worker

const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

function readJson(envName) {
  const file = process.env[envName];
  if (!file) return null;
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    return fail(`${envName}=${file}: ${e.message}`);
  }
}

// roomId -> {name, members: Set of user ids}
const rooms = new Map();
for (const [id, v] of Object.entries(readJson('BENCH_ROOMS_FILE') || {})) {
  const members = Array.isArray(v) ? v : (v && v.members) || [];
  const name = (v && !Array.isArray(v) && typeof v.name === 'string') ? v.name : `room ${id}`;
  rooms.set(id, { name, members: new Set(members.map(String)) });
}
const usersJson = readJson('BENCH_USERS_FILE');
const users = usersJson ? new Map(Object.entries(usersJson)) : null;
const history = new Map(); // roomId -> last HISTORY messages of this worker

// ---- HS256 JWT with node:crypto

const KEY = crypto.createSecretKey(Buffer.from(SECRET, 'utf8'));

function b64json(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

// The claims of a valid token, or null: three base64url parts, header alg
// HS256, signature HMAC-SHA256 over "header.payload" (constant-time compare),
// exp in the future, sub a string.
function verifyToken(token) {
  if (typeof token !== 'string' || token.length > 8192) return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const header = b64json(parts[0]);
    if (!header || header.alg !== 'HS256') return null;
    const want = crypto.createHmac('sha256', KEY).update(`${parts[0]}.${parts[1]}`).digest();
    const got = Buffer.from(parts[2], 'base64url');
    if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) return null;
    const claims = b64json(parts[1]);
    if (!claims || typeof claims.sub !== 'string') return null;
    if (typeof claims.exp !== 'number' || claims.exp * 1000 <= Date.now()) return null;
    return claims;
  } catch (e) {
    return null;
  }
}

// Length in code points, as resil counts characters.
function codePoints(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0xdc00 || c > 0xdfff) n++;
  }
  return n;
}

function roomIdOf(data) {
  return data && typeof data === 'object' && typeof data.roomId === 'string' && data.roomId.length <= 64
    ? data.roomId : null;
}

async function main() {
  const pub = createClient({ url: `redis://127.0.0.1:${REDIS_PORT}` });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on('error', (e) => process.stderr.write(`ref-server.js: redis: ${e.message}\n`));
  await Promise.all([pub.connect(), sub.connect()]);

  const httpServer = http.createServer((req, res) => {
    res.writeHead(404, { 'Content-Type': 'application/json' });
    res.end('{"success":false,"error":"route not found","code":"NOT_FOUND"}');
  });
  const io = new Server(httpServer, {
    adapter: createAdapter(pub, sub),
    transports: ['websocket'],
    maxHttpBufferSize: 64 * 1024,
    serveClient: false,
  });

  io.use((socket, next) => {
    const hs = socket.handshake;
    const token = (hs.auth && hs.auth.token) || hs.query.token;
    const claims = verifyToken(token);
    if (!claims) return next(new Error('invalid or expired token'));
    let username;
    if (users) {
      username = users.get(claims.sub);
      if (username === undefined) return next(new Error('user no longer exists or is inactive'));
    } else {
      username = String(claims.email || claims.sub).split('@')[0];
    }
    socket.data.user = { id: claims.sub, username };
    return next();
  });

  io.on('connection', (socket) => {
    const user = socket.data.user;
    const error = (message) => socket.emit('error', { message });

    socket.on('join_room', (data) => {
      const roomId = roomIdOf(data);
      const room = roomId && rooms.get(roomId);
      if (!room || !room.members.has(user.id)) return error('access denied to room');
      socket.join(roomId);
      socket.emit('room_joined', { roomId, roomName: room.name });
      return socket.emit('recent_messages', history.get(roomId) || []);
    });

    socket.on('leave_room', (data) => {
      const roomId = roomIdOf(data);
      if (!roomId) return error('roomId is required');
      return socket.leave(roomId);
    });

    socket.on('send_message', (data) => {
      const roomId = roomIdOf(data);
      if (!roomId) return error('roomId is required');
      if (!socket.rooms.has(roomId)) return error('join the room first');
      const content = data.content;
      if (typeof content !== 'string' || content.length === 0 || codePoints(content) > CONTENT_MAX) {
        return error(`content must be 1-${CONTENT_MAX} characters`);
      }
      const msg = {
        id: crypto.randomBytes(12).toString('hex'),
        roomId,
        content,
        sender: { id: user.id, username: user.username },
        createdAt: new Date().toISOString(),
      };
      let h = history.get(roomId);
      if (!h) history.set(roomId, (h = []));
      h.push(msg);
      if (h.length > HISTORY) h.shift();
      return io.to(roomId).emit('new_message', msg);
    });

    const typing = (start) => (data) => {
      const roomId = roomIdOf(data);
      if (!roomId) return error('roomId is required');
      if (!socket.rooms.has(roomId)) return error('join the room first');
      return socket.to(roomId).emit(start ? 'user_typing' : 'user_stopped_typing',
        start ? { userId: user.id, username: user.username } : { userId: user.id });
    };
    socket.on('typing_start', typing(true));
    socket.on('typing_stop', typing(false));

    const known = new Set(['join_room', 'leave_room', 'send_message', 'typing_start', 'typing_stop']);
    socket.onAny((event) => {
      if (!known.has(event)) error('unknown event');
    });
  });

  process.on('message', (m) => {
    if (m && m.type === 'count') process.send({ type: 'count', sockets: io.engine.clientsCount });
  });
  process.on('SIGTERM', () => {
    io.close();
    setTimeout(() => process.exit(0), 2000).unref();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
  });
  httpServer.listen(PORT, '127.0.0.1');
}

main().catch((e) => fail(`worker ${process.pid}: ${e.stack || e}`));
