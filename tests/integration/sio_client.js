// sio_client.js PORT ROOM_ID TOKEN_A TOKEN_B USER_B_ID - the npm
// socket.io-client (resolved from the working directory, bench/ws) against
// resil's /socket.io/ endpoint with the websocket transport: two members
// join a room, A types and sends, B receives (and C, whose token goes in
// the CONNECT packet's auth object instead of the URL); an empty message
// gets an error event; a bad token gets connect_error. Then the Node app's
// client calls as it makes them: bare room ids, acknowledgement callbacks,
// send_message from a socket that never joined, and added_to_room on each
// of B's sockets when A adds B to a new room over REST. Prints one JSON
// line of what happened; exits non-zero on a timeout.
'use strict';

const path = require('node:path');
const { io } = require(path.join(process.cwd(), 'node_modules', 'socket.io-client'));

const [port, room, tokA, tokB, idB] = process.argv.slice(2);
const url = `http://127.0.0.1:${port}`;
const opts = (token) => ({ transports: ['websocket'], query: { token }, reconnection: false, timeout: 10000 });
const once = (sock, ev) => new Promise((resolve) => sock.once(ev, resolve));
const onceWhere = (sock, ev, pred) => new Promise((resolve) => {
  const on = (data) => {
    if (pred(data)) {
      sock.off(ev, on);
      resolve(data);
    }
  };
  sock.on(ev, on);
});
// socket.emit(event, arg, callback), the acknowledgement as a promise
const emitAck = (sock, ev, arg) => new Promise((resolve) => sock.emit(ev, arg, resolve));
const rest = async (method, p, token, body) => {
  const r = await fetch(`${url}${p}`, {
    method,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`${method} ${p}: ${r.status}`);
  return (await r.json()).data;
};

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

  // The Node app's client calls, verbatim.
  const n1 = io(url, { transports: ['websocket'], auth: { token: tokB }, reconnection: false, timeout: 10000 });
  const n2 = io(url, opts(tokB));
  await Promise.all([once(n1, 'connect'), once(n2, 'connect')]);
  res.join_ack = await emitAck(a, 'join_room', room);
  const typing2 = once(b, 'user_typing');
  a.emit('typing_start', room);
  res.typing_bare = await typing2;
  const stopped = once(b, 'user_stopped_typing');
  a.emit('typing_stop', room);
  res.stopped_bare = await stopped;
  const seen = onceWhere(a, 'new_message', (m) => m.content === 'sent without joining');
  res.send_ack = await emitAck(n1, 'send_message', { roomId: room, content: 'sent without joining' });
  res.send_without_join = await seen;
  const added = [once(n1, 'added_to_room'), once(n2, 'added_to_room')];
  res.room2 = (await rest('POST', '/api/rooms', tokA, { name: 'added later' })).id;
  await rest('POST', `/api/rooms/${res.room2}/members`, tokA, { userId: idB });
  res.added = await Promise.all(added);
  res.join2_ack = await emitAck(n2, 'join_room', res.room2);
  res.leave_ack = await emitAck(n2, 'leave_room', res.room2);
  const stranger = io(url, { transports: ['websocket'], auth: { token: tokA }, reconnection: false, timeout: 10000 });
  await once(stranger, 'connect');
  const own = (await rest('POST', '/api/rooms', tokB, { name: 'b only' })).id;
  res.denied_ack = await emitAck(stranger, 'join_room', own);
  stranger.close();
  n1.close();
  n2.close();
  a.close();
  b.close();
  c.close();
  process.stdout.write(JSON.stringify(res) + '\n');
})().catch((e) => {
  process.stderr.write(`sio_client: ${e.stack || e}\n`);
  process.exit(1);
});
