'use strict';
/*
 * app.js - the Node app's Mongoose models, driven from resil's tests.
 *
 * The models are those of the Express + Mongoose + Socket.io backend that resil
 * replaces (SPEC, drop-in): User (bcryptjs pre-save hook, cost 12, the hash
 * stored in `password`; timestamps), Post (author ref), Room (owner, members
 * refs), Message (room, sender, content). tests/integration/test_mongoose.py
 * runs it against tests/mongo_double; later tests point resild at the same
 * database, so every mode prints one JSON line on stdout and nothing else.
 *
 *   node app.js URI write              create the fixture set, read it back with
 *                                      find/findById/populate/countDocuments,
 *                                      update it; print the ids and the checks
 *   node app.js URI read-user EMAIL    print that user's stored document (lean,
 *                                      `password` and `__v` included) or null
 *   node app.js URI check-password EMAIL PASSWORD
 *                                      print {"match": bool} as the Node app's
 *                                      login would decide (bcryptjs.compare)
 *   node app.js URI retry-write CONTROL
 *                                      with tests/mongo_double started with
 *                                      --replset: have the double lose the reply
 *                                      to one insert (control line "drop-reply 1"
 *                                      on its control socket CONTROL, "@name" for
 *                                      the abstract namespace), let the driver
 *                                      retry it; print {"copies": N} (1 when the
 *                                      retry was recognised by its txnNumber)
 *   node app.js sign-token SECRET USERID EMAIL [EXPIRES_IN]
 *                                      print {"token"} as the Node app issues it
 *                                      (jsonwebtoken, HS256, {userId, email})
 *
 * Exit status 0 on success, 1 with a message on stderr otherwise. The passwords
 * are test fixtures, printed so that the caller can log in with them.
 */
const net = require('net');
const mongoose = require('mongoose');
const bcrypt = require('bcryptjs');
const jwt = require('jsonwebtoken');

const { Schema } = mongoose;
const BCRYPT_COST = 12;

const userSchema = new Schema(
  {
    username: { type: String, required: true, unique: true, trim: true, minlength: 3, maxlength: 20 },
    email: { type: String, required: true, unique: true, lowercase: true, trim: true },
    password: { type: String, required: true, minlength: 8 },
    role: { type: String, enum: ['user', 'clinician', 'admin'], default: 'user' },
    isActive: { type: Boolean, default: true },
  },
  { timestamps: true, toJSON: { virtuals: true } },
);

userSchema.pre('save', async function hashPassword(next) {
  if (!this.isModified('password')) return next();
  try {
    this.password = await bcrypt.hash(this.password, BCRYPT_COST);
    return next();
  } catch (err) {
    return next(err);
  }
});

userSchema.methods.comparePassword = function comparePassword(candidate) {
  return bcrypt.compare(candidate, this.password);
};

const postSchema = new Schema(
  {
    title: { type: String, required: true, maxlength: 200 },
    content: { type: String, required: true },
    category: { type: String, maxlength: 50 },
    author: { type: Schema.Types.ObjectId, ref: 'User', required: true },
  },
  { timestamps: true, toJSON: { virtuals: true } },
);
postSchema.index({ createdAt: -1 });

const roomSchema = new Schema(
  {
    name: { type: String, required: true, maxlength: 100 },
    owner: { type: Schema.Types.ObjectId, ref: 'User', required: true },
    members: [{ type: Schema.Types.ObjectId, ref: 'User' }],
  },
  { timestamps: true, toJSON: { virtuals: true } },
);

const messageSchema = new Schema(
  {
    room: { type: Schema.Types.ObjectId, ref: 'Room', required: true },
    sender: { type: Schema.Types.ObjectId, ref: 'User', required: true },
    content: { type: String, required: true, maxlength: 2000 },
  },
  { timestamps: true, toJSON: { virtuals: true } },
);
messageSchema.index({ room: 1, createdAt: -1 });

const User = mongoose.model('User', userSchema);
const Post = mongoose.model('Post', postSchema);
const Room = mongoose.model('Room', roomSchema);
const Message = mongoose.model('Message', messageSchema);

const FIXTURE_USERS = [
  { username: 'alice_node', email: 'Alice.Node@Example.com', password: 'alice-secret-1', role: 'admin' },
  { username: 'bob_node', email: 'bob.node@example.com', password: 'bob-secret-22' },
  { username: 'carol_node', email: 'carol.node@example.com', password: 'carol-secret-333', role: 'clinician' },
];

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

function idOf(doc) {
  return doc._id.toString();
}

async function connect(uri) {
  await mongoose.connect(uri, { serverSelectionTimeoutMS: 5000, heartbeatFrequencyMS: 500 });
  // autoIndex/autoCreate: wait for createCollection + createIndexes of every model.
  await Promise.all([User.init(), Post.init(), Room.init(), Message.init()]);
}

async function write() {
  const users = [];
  for (const u of FIXTURE_USERS) users.push(await new User(u).save());
  const [alice, bob, carol] = users;

  // A duplicate email is refused by the unique index, as on a real server.
  let dup = null;
  try {
    await new User({ username: 'alice_again', email: 'alice.node@example.com', password: 'whatever-123' }).save();
  } catch (err) {
    dup = err.code;
  }
  check(dup === 11000, `duplicate email gives E11000 (got ${dup})`);

  const posts = await Post.create([
    { title: 'First post', content: 'Hello from mongoose', category: 'news', author: alice._id },
    { title: 'Second post', content: 'More words', author: alice._id },
    { title: 'Bob writes', content: 'Bob was here', category: 'misc', author: bob._id },
  ]);
  const room = await new Room({ name: 'node-room', owner: alice._id, members: [alice._id, bob._id] }).save();
  const messages = [];
  for (const [sender, content] of [[alice, 'hi bob'], [bob, 'hi alice'], [alice, 'how are you?']]) {
    messages.push(await new Message({ room: room._id, sender: sender._id, content }).save());
  }

  // Read back the way the Node app's routes do.
  const found = await User.findOne({ email: 'alice.node@example.com' }).select('+password');
  check(found && idOf(found) === idOf(alice), 'findOne by email');
  check(/^\$2[aby]\$12\$/.test(found.password), 'password stored as a bcrypt hash of cost 12');
  check(await found.comparePassword('alice-secret-1'), 'bcryptjs.compare accepts the password');
  check(!(await found.comparePassword('wrong-password')), 'bcryptjs.compare refuses a wrong one');
  const byId = await User.findById(bob._id);
  check(byId && byId.username === 'bob_node' && byId.role === 'user', 'findById');
  check(byId.createdAt instanceof Date && byId.updatedAt instanceof Date, 'timestamps');

  const alicePosts = await Post.find({ author: alice._id })
    .sort({ createdAt: -1, _id: -1 })
    .populate('author', 'username email')
    .lean();
  check(alicePosts.length === 2, `find by author (${alicePosts.length})`);
  check(alicePosts[0].title === 'Second post', 'sort by createdAt desc');
  check(alicePosts.every((p) => p.author.username === 'alice_node' && p.author.password === undefined),
    'populate author with a projection');
  const page = await Post.find().sort({ createdAt: 1, _id: 1 }).skip(1).limit(1).select('title').lean();
  check(page.length === 1 && page[0].title === 'Second post' && page[0].content === undefined,
    'skip/limit/projection');
  check((await Post.countDocuments({ category: { $exists: true } })) === 2, 'countDocuments with a filter');
  check((await Message.countDocuments({ room: room._id })) === 3, 'countDocuments messages');

  const roomsOfBob = await Room.find({ members: bob._id }).populate('members', 'username').populate('owner', 'username');
  check(roomsOfBob.length === 1 && roomsOfBob[0].owner.username === 'alice_node', 'rooms of a member');
  check(roomsOfBob[0].members.map((m) => m.username).join(',') === 'alice_node,bob_node', 'populate members');
  const history = await Message.find({ room: room._id }).sort({ createdAt: 1, _id: 1 }).populate('sender', 'username');
  check(history.map((m) => `${m.sender.username}:${m.content}`).join('|') ===
    'alice_node:hi bob|bob_node:hi alice|alice_node:how are you?', 'message history with senders');

  // A cursor that needs getMore: more documents than the first batch.
  const bulk = [];
  for (let i = 0; i < 150; i++) bulk.push({ room: room._id, sender: carol._id, content: `bulk ${i}` });
  await Message.insertMany(bulk);
  let seen = 0;
  for await (const m of Message.find({ sender: carol._id }).batchSize(40).cursor()) {
    check(m.content.startsWith('bulk '), 'cursor document');
    seen++;
  }
  check(seen === 150, `cursor iterated ${seen} documents`);
  check((await Message.deleteMany({ sender: carol._id })).deletedCount === 150, 'deleteMany');

  // Updates: the ways the Node app's routes change documents.
  const renamed = await Room.findOneAndUpdate({ _id: room._id }, { $set: { name: 'node-room-2' } }, { new: true });
  check(renamed && renamed.name === 'node-room-2', 'findOneAndUpdate with new: true');
  await Room.updateOne({ _id: room._id }, { $addToSet: { members: carol._id } });
  await Room.updateOne({ _id: room._id }, { $addToSet: { members: carol._id } });
  const grown = await Room.findById(room._id);
  check(grown.members.length === 3, 'addToSet adds once');
  grown.members.push(carol._id);
  grown.members.pull(carol._id);
  await grown.save();
  const post = await Post.findById(posts[2]._id);
  post.content = 'Bob edited this';
  await post.save();
  await Post.updateOne({ _id: posts[2]._id }, { $inc: { __v: 1 } });
  const edited = await Post.findById(posts[2]._id).lean();
  check(edited.content === 'Bob edited this' && edited.__v === 1, 'save() of a changed document and $inc');
  check(edited.updatedAt > edited.createdAt || edited.updatedAt.getTime() === edited.createdAt.getTime(),
    'updatedAt kept');
  await User.updateOne({ _id: bob._id }, { $set: { role: 'user' } });
  const deleted = await Post.deleteOne({ title: 'nope' });
  check(deleted.deletedCount === 0, 'deleteOne of nothing');

  return {
    users: users.map((u, i) => ({
      id: idOf(u),
      username: u.username,
      email: u.email,
      role: u.role,
      password: FIXTURE_USERS[i].password,
    })),
    posts: posts.map((p) => ({ id: idOf(p), title: p.title, author: p.author.toString() })),
    rooms: [{ id: idOf(room), name: 'node-room-2', owner: idOf(alice), members: [alice, bob, carol].map(idOf) }],
    messages: messages.map((m) => ({ id: idOf(m), room: idOf(room), sender: m.sender.toString(), content: m.content })),
    counts: {
      users: await User.countDocuments(),
      posts: await Post.countDocuments(),
      rooms: await Room.countDocuments(),
      messages: await Message.countDocuments(),
    },
  };
}

/* Fields a serializer must never send: set on every document of every
 * collection with the driver itself (Mongoose's strict mode would drop
 * them). */
async function addSecrets(marker) {
  const out = {};
  for (const name of ['users', 'posts', 'rooms', 'messages']) {
    const r = await mongoose.connection.db.collection(name).updateMany({}, {
      $set: { resetToken: `${marker}-reset`, internalNote: `${marker}-note`, passwordHash: `${marker}-hash` },
    });
    out[name] = r.modifiedCount;
  }
  return out;
}

async function readUser(email) {
  const u = await User.findOne({ email: String(email).toLowerCase() }).lean();
  if (!u) return null;
  // Plain JSON: ObjectIds as hex strings, dates as ISO strings.
  return JSON.parse(JSON.stringify(u));
}

async function checkPassword(email, password) {
  const u = await User.findOne({ email: String(email).toLowerCase() });
  return { match: Boolean(u) && (await u.comparePassword(password)) };
}

/* One control line to tests/mongo_double; resolves with its reply line. */
function doubleControl(path, line) {
  const address = path.startsWith('@') ? `\0${path.slice(1)}` : path;
  return new Promise((resolve, reject) => {
    const sock = net.connect(address);
    let data = '';
    sock.setTimeout(5000, () => sock.destroy(new Error('control socket timed out')));
    sock.on('connect', () => sock.write(`${line}\n`));
    sock.on('data', (chunk) => {
      data += chunk;
      if (data.includes('\n')) {
        sock.end();
        resolve(data.trim());
      }
    });
    sock.on('error', reject);
  });
}

async function retryWrite(control) {
  const owner = new mongoose.Types.ObjectId();
  const name = `retry-${owner}`;
  const reply = await doubleControl(control, 'drop-reply 1');
  check(reply.startsWith('ok'), `control drop-reply: ${reply}`);
  await Room.create({ name, owner, members: [owner] });
  return { copies: await Room.countDocuments({ name }) };
}

async function main(argv) {
  if (argv[0] === 'sign-token') {
    const [, secret, userId, email, expiresIn] = argv;
    if (!secret || !userId || !email) throw new Error('usage: sign-token SECRET USERID EMAIL [EXPIRES_IN]');
    return { token: jwt.sign({ userId, email }, secret, { expiresIn: expiresIn || '7d' }) };
  }
  const [uri, mode, ...rest] = argv;
  if (!uri || !mode) {
    throw new Error('usage: app.js URI write|read-user EMAIL|check-password EMAIL PASSWORD|retry-write CONTROL');
  }
  await connect(uri);
  try {
    if (mode === 'write') return await write();
    if (mode === 'read-user' && rest.length === 1) return await readUser(rest[0]);
    if (mode === 'check-password' && rest.length === 2) return await checkPassword(rest[0], rest[1]);
    if (mode === 'retry-write' && rest.length === 1) return await retryWrite(rest[0]);
    if (mode === 'add-secrets' && rest.length === 1) return await addSecrets(rest[0]);
    throw new Error(`unknown mode or arguments: ${mode}`);
  } finally {
    await mongoose.disconnect();
  }
}

main(process.argv.slice(2)).then(
  (out) => {
    process.stdout.write(`${JSON.stringify(out)}\n`);
  },
  (err) => {
    process.stderr.write(`app.js: ${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 1;
  },
);
