// sio_client.js PORT ROOM_ID TOKEN_A TOKEN_B - the npm socket.io-client
// (resolved from the working directory, bench/ws) against resil's
// /socket.io/ endpoint with the websocket transport: two members join a
// room, A types and sends, B receives (and C, whose token goes in the
// CONNECT packet's auth object instead of the URL); an empty message gets
// an error event; a bad token gets connect_error. Prints one JSON line of what
// happened; exits non-zero on a timeout.
'use strict';

const path = require('node:path');
const { io } = require(path.join(process.cwd(), 'node_modules', 'socket.io-client'));

const [port, room, tokA, tokB] = process.argv.slice(2);
const url = `http://127.0.0.1:${port}`;
const opts = (token) => ({ transports: ['websocket'], query: { token }, reconnection: false, timeout: 10000 });
const once = (sock, ev) => new Promise((resolve) => sock.once(ev, resolve));

setTimeout(() => {
  process.stderr.write('sio_client: timed out\n');
  process.exit(2);
}, 30000).unref();

(async () => {
  const a = io(url, opts(tokA));
  const b = io(url, opts(tokB));
  const c = io(url, { transports: ['websocket'], auth: { token: tokB }, reconnection: false, timeout: 10000 });
  await Promise.all([once(a, 'connect'), once(b, 'connect'), once(c, 'connect')]);
  const joined = [once(a, 'recent_messages'), once(b, 'recent_messages'), once(c, 'recent_messages')];
  a.emit('join_room', { roomId: room });
  b.emit('join_room', { roomId: room });
  c.emit('join_room', { roomId: room });
  await Promise.all(joined);
  const typing = once(b, 'user_typing');
  const received = once(b, 'new_message');
  const receivedC = once(c, 'new_message');
  const error = once(a, 'error');
  a.emit('typing_start', { roomId: room });
  a.emit('send_message', { roomId: room, content: 'hello from socket.io-client' });
  a.emit('send_message', { roomId: room, content: '' });
  const res = { typing: await typing, received: await received, error: await error, auth_object: await receivedC };
  const bad = io(url, opts('not-a-token'));
  res.bad_token = await Promise.race([once(bad, 'connect_error').then(() => 'connect_error'),
    once(bad, 'connect').then(() => 'connected')]);
  bad.close();
  a.close();
  b.close();
  c.close();
  process.stdout.write(JSON.stringify(res) + '\n');
})().catch((e) => {
  process.stderr.write(`sio_client: ${e.stack || e}\n`);
  process.exit(1);
});
