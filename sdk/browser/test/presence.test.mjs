// Unit tests of the browser SDK's session logic (sdk/browser/presence.js) against a scripted
// relay: a fake WebSocket the test answers frame by frame. Run:
// `node --test sdk/browser/test/presence.test.mjs`. The same features against the real relay
// in a real Chromium are in tests/test_browser_sdk.py; these cover what a real relay does not
// do on demand: a newer relay's extra elements and codes (docs/protocol.md, section 11), and
// the corners of resuming (stale records, handle collisions, duplicate joins).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { decode, encode } from '../msgpack.js';
import { Activity, PresenceClient } from '../presence.js';

const URL = 'ws://relay.test/ws';
const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

/** A WebSocket whose other end is the test: `sent` holds the decoded client frames. */
class FakeSocket {
  static all = [];

  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
    setTimeout(() => { this.readyState = 1; this.onopen?.(); }, 0);
  }

  send(bytes) { this.sent.push(decode(bytes)); }

  close(code = 1005, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.closedWith = code;
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }

  /** A frame from the relay. */
  deliver(frame) {
    const bytes = encode(frame);
    this.onmessage({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }

  /** The connection ends without the client asking (the relay's code, or 1006: gone). */
  drop(code = 1006, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  types() { return this.sent.map((f) => f[0]); }
}

const lastSocket = () => FakeSocket.all[FakeSocket.all.length - 1];

class MemoryStorage {
  constructor() { this.items = new Map(); }
  getItem(k) { return this.items.has(k) ? this.items.get(k) : null; }
  setItem(k, v) { this.items.set(k, String(v)); }
  removeItem(k) { this.items.delete(k); }
}

const SETTINGS = { batch_ms: 50, cursor_throttle_ms: 0, typing_debounce_ms: 500 };
const welcome = (settings = {}) => [32, 1, 'c-1', { id: 'ann' }, 1800000000000,
  { ...SETTINGS, ...settings }];
const member = (sid, userId, activity = Activity.VIEWING, rest = {}) => [sid, userId, userId,
  null, 'hsl(1, 70%, 50%)', activity, false, rest.focused ?? true, rest.cursor ?? null, null,
  null, 1, 1, ...(rest.extra ?? [])];

function client(options = {}) {
  return new PresenceClient(URL, { userId: 'ann', name: 'Ann', WebSocket: FakeSocket,
    backoffMs: 1, maxBackoffMs: 1, storage: new MemoryStorage(), ...options });
}

/** start() the client and WELCOME it; resolves with its socket. */
async function welcomed(c, settings = {}) {
  const started = c.start();
  await tick();
  const ws = lastSocket();
  ws.deliver(welcome(settings));
  await started;
  return ws;
}

async function joined(c, ws, docId, sid, members) {
  const pending = c.join(docId);
  const join = ws.sent.findLast((f) => f[0] === 2 && f[2] === docId);
  ws.deliver([33, join[1], docId, sid, members]);
  return pending;
}

function record(doc, types) {
  const seen = [];
  for (const type of types) {
    doc.addEventListener(type, (e) => seen.push([type, e.detail.sid ?? e.detail.member?.sid,
      e.detail.reason ?? e.detail.activity ?? e.detail.focused ?? null]));
  }
  return seen;
}

const EVERY_EVENT = ['joined', 'left', 'cursor', 'typing', 'viewport', 'activity', 'focus'];

test('a newer relay: unknown settings, elements, event codes and frame types are ignored', async () => {
  const c = client();
  const ws = await welcomed(c, { some_future_setting: { nested: true } });
  ws.deliver([...welcome(), 'a trailing element']); // a second WELCOME: not a message to act on
  const doc = c.join('doc-1');
  ws.deliver([33, 1, 'doc-1', 1, [member(1, 'ann', 1, { extra: [0, 'status'] }),
    member(2, 'bob', 1, { extra: [1, null, 'more'] })], [['u-9', 'Zoë', null, 'hsl', 1, 1]]]);
  const d = await doc;
  const seen = record(d, EVERY_EVENT);
  ws.deliver([34, 'doc-1', 1, [
    [99, 2, 'a future event'],
    [8, 2, 'a status text'],
    [1, 2, 3, 4, 5, 'extra'], // a cursor with a trailing element: no selection
    [6, 2, Activity.DISCONNECTED, 'extra'],
    [7, 2, false, 'extra'],
  ]]);
  ws.deliver([40, 'a future server frame']);
  ws.deliver([34, 'doc-1', 2, [[3, 2, 1, 'extra']]]);
  assert.deepEqual(seen, [['cursor', 2, null], ['activity', 2, 5], ['focus', 2, false],
    ['left', 2, 1]]);
  assert.equal(d.members.size, 1);
});

test('left carries the reason; a v1 relay sends none; activity 5 is disconnected', async () => {
  const c = client();
  const ws = await welcomed(c);
  const d = await joined(c, ws, 'doc-1', 1, [member(1, 'ann'), member(2, 'bob'),
    member(3, 'cy', Activity.DISCONNECTED)]);
  assert.equal(d.members.get(3).disconnected, true);
  const left = [];
  d.addEventListener('left', (e) => left.push([e.detail.sid, e.detail.reason]));
  ws.deliver([34, 'doc-1', 1, [[3, 2, 0], [3, 3]]]);
  assert.deepEqual(left, [[2, 0], [3, undefined]]);
});

test('a drop within the grace resumes: no JOIN, a diffed snapshot, only what is missing re-sent', async () => {
  const c = client();
  const ws = await welcomed(c, { resume_token: 'tok-1', reconnect_grace_ms: 30000, resumed: false });
  const d = await joined(c, ws, 'doc-1', 7, [member(7, 'ann'), member(8, 'bob'), member(9, 'cy')]);
  d.moveCursor(5, 5, 5);
  d.setViewport(0, 40, 12.5);
  const seen = record(d, EVERY_EVENT);
  const resynced = [];
  d.addEventListener('resynced', (e) => resynced.push(e.detail.resumed));
  const reconnected = [];
  c.addEventListener('reconnected', (e) => reconnected.push(e.detail.resumed));
  ws.drop();
  d.moveCursor(6, 6, 6); // lost: there is no connection
  await tick(10);
  const ws2 = lastSocket();
  assert.notEqual(ws2, ws);
  assert.equal(ws2.sent[0][3].resume, 'tok-1');
  ws2.deliver(welcome({ resume_token: 'tok-2', reconnect_grace_ms: 30000, resumed: true }));
  // The relay kept the viewport but never got the second cursor; bob dropped too, cy left,
  // dan came.
  ws2.deliver([33, d.handle, 'doc-1', 7, [
    [7, 'ann', 'ann', null, 'hsl(1, 70%, 50%)', 1, false, true, [5, 5, 5], null, [0, 40, 12.5], 1, 1],
    member(8, 'bob', Activity.DISCONNECTED), member(10, 'dan')]]);
  assert.deepEqual(reconnected, [true]);
  assert.deepEqual(resynced, [true]);
  assert.deepEqual(seen, [['activity', 8, 5], ['joined', 10, null], ['left', 9, null]]);
  assert.equal(d.sid, 7);
  assert.deepEqual(ws2.sent.slice(1), [[4, d.handle, 6, 6, 6]]); // no JOIN, no VIEWPORT
  assert.equal(c.session.token, 'tok-2');
});

test('no resume without a grace, after it, or when told not to', async () => {
  for (const [settings, options, wait] of [
    [{ resume_token: 't', reconnect_grace_ms: 0 }, {}, 0],
    [{ resume_token: 't', reconnect_grace_ms: 5 }, {}, 20],
    [{ resume_token: 't', reconnect_grace_ms: 30000 }, { resume: false }, 0],
    [{}, {}, 0], // a v1 relay: no token at all
  ]) {
    const c = client({ ...options, backoffMs: 10 + wait, maxBackoffMs: 10 + wait });
    const ws = await welcomed(c, settings);
    ws.drop();
    await tick(40 + 2 * wait);
    assert.equal('resume' in lastSocket().sent[0][3], false, JSON.stringify(settings));
    c.options.reconnect = false;
    lastSocket().drop();
  }
});

test('a reload claims what the old page had, leaves the rest, and JOINs nothing twice', async () => {
  const storage = new MemoryStorage();
  const key = 'presence-relay:resume:ws://relay.test/ws#ann';
  storage.setItem(key, JSON.stringify({ token: 'tok-old', graceMs: 30000, lostAt: Date.now(),
    unloadedAt: Date.now(), docs: [[1, 'doc-a'], [2, 'doc-b']] }));
  const c = client({ storage, claimWindowMs: 50 });
  const ws = await welcomed(c, { resume_token: 'tok-new', reconnect_grace_ms: 30000, resumed: true });
  assert.equal(ws.sent[0][3].resume, 'tok-old');
  const a = c.join('doc-a'); // before its JOINED: it must wait for it, not JOIN
  const fresh = c.join('doc-c'); // not the old page's: JOINed, on a handle the resume does not hold
  assert.deepEqual(ws.sent.slice(1), [[2, 3, 'doc-c']]);
  ws.deliver([33, 1, 'doc-a', 11, [member(11, 'ann')]]);
  ws.deliver([33, 2, 'doc-b', 12, [member(12, 'ann')]]);
  ws.deliver([33, 3, 'doc-c', 13, [member(13, 'ann')]]);
  const da = await a;
  assert.equal(da.handle, 1);
  assert.equal(da.sid, 11);
  assert.equal((await fresh).handle, 3);
  assert.equal(await c.join('doc-a'), da);
  await tick(80);
  assert.deepEqual(ws.sent.slice(2), [[3, 2]]); // doc-b, never asked for: left
  const stored = JSON.parse(storage.getItem(key));
  assert.equal(stored.token, 'tok-new');
  assert.equal(stored.unloadedAt, null);
  assert.deepEqual(stored.docs.sort(), [[1, 'doc-a'], [3, 'doc-c']]);
});

test('a record not marked by pagehide is another open page\'s: not resumed', async () => {
  const storage = new MemoryStorage();
  storage.setItem('presence-relay:resume:ws://relay.test/ws#ann', JSON.stringify({
    token: 'tok-dup', graceMs: 30000, lostAt: null, unloadedAt: null, docs: [] }));
  const c = client({ storage });
  const ws = await welcomed(c);
  assert.equal('resume' in ws.sent[0][3], false);
});

test('a stale record: a JOIN the resume made useless, and a handle collision', async () => {
  const storage = new MemoryStorage();
  storage.setItem('presence-relay:resume:ws://relay.test/ws#ann', JSON.stringify({
    token: 'tok-old', graceMs: 30000, lostAt: Date.now(), unloadedAt: Date.now(), docs: [] }));
  const c = client({ storage, claimWindowMs: 50 });
  const errors = [];
  c.addEventListener('error', (e) => errors.push(e.detail.code));
  const ws = await welcomed(c, { resume_token: 'tok-new', reconnect_grace_ms: 30000, resumed: true });
  const y = c.join('doc-y'); // handle 1, as far as this page knows
  const z = c.join('doc-z'); // handle 2
  assert.deepEqual(ws.sent.slice(1), [[2, 1, 'doc-y'], [2, 2, 'doc-z']]);
  // The old connection had doc-y on handle 5 and doc-w on handle 2.
  ws.deliver([33, 5, 'doc-y', 21, [member(21, 'ann')]]);
  ws.deliver([33, 2, 'doc-w', 22, [member(22, 'ann')]]);
  ws.deliver([35, 1, 8, 'document already joined']);
  ws.deliver([35, 2, 8, 'handle already in use']);
  const dy = await y;
  assert.equal(dy.handle, 5);
  assert.equal(dy.sid, 21);
  assert.deepEqual(ws.sent.slice(3), [[2, 3, 'doc-z']]); // again, on a free handle
  ws.deliver([33, 3, 'doc-z', 23, [member(23, 'ann')]]);
  assert.equal((await z).handle, 3);
  assert.deepEqual(errors, []);
});

test('4409: taken over by a newer connection, closed for good', async () => {
  const c = client();
  const ws = await welcomed(c, { resume_token: 't', reconnect_grace_ms: 30000 });
  const closed = new Promise((resolve) => c.addEventListener('closed', (e) => resolve(e.detail)));
  ws.drop(4409, 'resumed by a newer connection');
  assert.equal((await closed).code, 4409);
  await tick(10);
  assert.equal(lastSocket(), ws);
  assert.equal(c.closed, true);
});

test('close() LEAVEs every document, then closes with 1000, and forgets the token', async () => {
  const storage = new MemoryStorage();
  const c = client({ storage });
  const ws = await welcomed(c, { resume_token: 't', reconnect_grace_ms: 30000 });
  await joined(c, ws, 'doc-1', 1, [member(1, 'ann')]);
  await joined(c, ws, 'doc-2', 2, [member(2, 'ann')]);
  assert.equal(storage.items.size, 1);
  await c.close();
  assert.deepEqual(ws.sent.slice(-2), [[3, 1], [3, 2]]);
  assert.equal(ws.closedWith, 1000);
  assert.equal(storage.items.size, 0);
});

test('joins asked while disconnected go out after the next WELCOME', async () => {
  const c = client({ backoffMs: 5, maxBackoffMs: 5 });
  const ws = await welcomed(c);
  ws.drop();
  const later = c.join('doc-later');
  await tick(20);
  const ws2 = lastSocket();
  ws2.deliver(welcome());
  assert.deepEqual(ws2.sent.slice(1), [[2, 1, 'doc-later']]);
  ws2.deliver([33, 1, 'doc-later', 1, [member(1, 'ann')]]);
  assert.equal((await later).sid, 1);
});
