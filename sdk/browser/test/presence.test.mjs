// Unit tests of the browser SDK's session logic (sdk/browser/presence.js) against a scripted
// relay: a fake WebSocket the test answers frame by frame. Run:
// `node --test sdk/browser/test/presence.test.mjs`. The same features against the real relay
// in a real Chromium are in tests/test_browser_sdk.py; these cover what a real relay does not
// do on demand: a newer relay's extra elements and codes (docs/protocol.md, section 11), and
// the corners of resuming (stale records, handle collisions, duplicate joins).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { decode, encode } from '../msgpack.js';
import { Activity, Keepalive, PresenceClient } from '../presence.js';

const URL = 'ws://relay.test/ws';
const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

/** Until `check()` holds, polling every few ms (real timers: generous, a CI may be busy). */
async function until(check, what, timeoutMs = 3000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await tick(2);
  }
}

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

// No keepalive unless a test asks for one: its timer would outlive the test.
function client(options = {}) {
  return new PresenceClient(URL, { userId: 'ann', name: 'Ann', WebSocket: FakeSocket,
    backoffMs: 1, maxBackoffMs: 1, storage: new MemoryStorage(), keepaliveMs: 0, ...options });
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
  await until(() => lastSocket() !== ws && lastSocket().sent.length > 0, 'the reconnect HELLO');
  const ws2 = lastSocket();
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

// ---------------------------------------------------------------- keepalive

/** A clock and timers the test moves by hand; `advance` fires what falls due, in order. */
class FakeTime {
  constructor() {
    this.now = 0;
    this.pending = [];
    this.ids = 0;
    this.clock = () => this.now;
    this.timers = {
      set: (fn, ms) => { this.ids += 1; this.pending.push({ id: this.ids, at: this.now + ms, fn }); return this.ids; },
      clear: (id) => { this.pending = this.pending.filter((t) => t.id !== id); },
    };
  }

  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      const next = this.pending.filter((t) => t.at <= end).sort((a, b) => a.at - b.at)[0];
      if (next === undefined) break;
      this.pending = this.pending.filter((t) => t !== next);
      this.now = next.at;
      next.fn();
    }
    this.now = end;
  }

  /** A throttled tab: the clock moves `ms` and no timer fires; `fire()` runs the overdue ones late. */
  stall(ms) { this.now += ms; }

  fire() {
    const due = this.pending.filter((t) => t.at <= this.now);
    this.pending = this.pending.filter((t) => t.at > this.now);
    for (const t of due) t.fn();
  }
}

function keepalive(intervalMs = 10000) {
  const time = new FakeTime();
  const calls = [];
  const k = new Keepalive(intervalMs, {
    ping: () => calls.push(['ping', time.now]),
    lost: () => calls.push(['lost', time.now]),
  }, time.clock, time.timers);
  k.start();
  return { k, time, calls };
}

test('keepalive: silence pings, an unanswered PING is a lost connection', () => {
  const { time, calls } = keepalive();
  time.advance(9999);
  assert.deepEqual(calls, []);
  time.advance(1);
  assert.deepEqual(calls, [['ping', 10000]]);
  time.advance(9999);
  assert.deepEqual(calls, [['ping', 10000]]);
  time.advance(1);
  assert.deepEqual(calls, [['ping', 10000], ['lost', 20000]]);
  time.advance(60000); // lost once, then nothing
  assert.equal(calls.length, 2);
  assert.equal(time.pending.length, 0);
});

test('keepalive: frames flowing are never pinged; any frame answers a PING', () => {
  const { k, time, calls } = keepalive();
  for (let i = 0; i < 100; i += 1) { time.advance(3000); k.received(); }
  assert.deepEqual(calls, []);
  assert.equal(time.pending.length, 1); // one timer, re-armed, never one per frame
  const quietFrom = time.now;
  time.advance(10000);
  assert.deepEqual(calls, [['ping', quietFrom + 10000]]);
  time.advance(4000);
  k.received(); // the PONG (or a BATCH: any frame)
  time.advance(9999);
  assert.equal(calls.length, 1); // the silence restarted at the PONG
  time.advance(1);
  assert.deepEqual(calls.slice(1), [['ping', quietFrom + 24000]]);
  time.advance(10000);
  assert.deepEqual(calls.slice(2), [['lost', quietFrom + 34000]]);
});

test('keepalive: a late timer looks at when the last frame came, not at how many fired', () => {
  // The PING went; the tab is throttled and its check comes 50 s late, but the PONG came.
  const a = keepalive();
  a.time.advance(10000);
  a.time.stall(200);
  a.k.received();
  a.time.stall(50000);
  a.time.fire();
  assert.deepEqual(a.calls, [['ping', 10000], ['ping', 60200]]); // silent again since: a PING
  a.time.advance(300);
  a.k.received();
  a.time.advance(60000);
  assert.deepEqual(a.calls.slice(2), [['ping', 70500], ['lost', 80500]]);

  // Silence then a late check with nothing received: one more short look (frames a frozen page
  // has not read yet), then lost; a frame read in that moment saves it.
  for (const frameInTime of [false, true]) {
    const b = keepalive();
    b.time.advance(10000);
    b.time.stall(40000);
    b.time.fire();
    assert.deepEqual(b.calls, [['ping', 10000]]);
    b.time.advance(500);
    if (frameInTime) b.k.received();
    b.time.advance(500);
    assert.deepEqual(b.calls, frameInTime ? [['ping', 10000]] : [['ping', 10000], ['lost', 51000]]);
    if (frameInTime) { // the silence runs from that frame
      b.time.advance(9500);
      assert.deepEqual(b.calls, [['ping', 10000], ['ping', 60500]]);
    }
  }
});

test('keepalive: stop() ends it', () => {
  const { k, time, calls } = keepalive();
  k.stop();
  time.advance(100000);
  assert.deepEqual(calls, []);
});

// The same rule in the client, on real timers (short intervals) and the scripted relay.
const KEEPALIVE = 60;

test('keepalive: a silent connection is pinged, then let go and resumed', async () => {
  const c = client({ keepaliveMs: KEEPALIVE });
  const ws = await welcomed(c, { resume_token: 'tok-1', reconnect_grace_ms: 30000 });
  const d = await joined(c, ws, 'doc-1', 7, [member(7, 'ann'), member(8, 'bob')]);
  const seen = record(d, EVERY_EVENT);
  const disconnected = [];
  c.addEventListener('disconnected', (e) => disconnected.push(e.detail));
  const started = Date.now();
  await until(() => ws.types().includes(8), 'a PING after the silence');
  assert.ok(Date.now() - started >= KEEPALIVE - 5);
  const ping = ws.sent.find((f) => f[0] === 8);
  assert.equal(ping.length, 2);
  assert.equal(typeof ping[1], 'number');
  // No PONG, no frame: the socket is let go without waiting for its close to complete (this
  // fake never completes it: onclose is not called again once detached).
  await until(() => lastSocket() !== ws, 'a reconnect');
  assert.equal(ws.closedWith, 1005); // close() called, not with 1000 (a deliberate leave)
  assert.equal(ws.onclose, null);
  assert.equal(ws.onmessage, null);
  assert.deepEqual(disconnected, [{ code: 1006, reason: 'keepalive timeout' }]);
  assert.equal(c.connected, false);
  const ws2 = lastSocket();
  await until(() => ws2.sent.length > 0, 'a HELLO');
  assert.equal(ws2.sent[0][3].resume, 'tok-1');
  ws2.deliver(welcome({ resume_token: 'tok-2', reconnect_grace_ms: 30000, resumed: true }));
  ws2.deliver([33, d.handle, 'doc-1', 7, [member(7, 'ann'), member(8, 'bob')]]);
  assert.equal(d.sid, 7);
  assert.deepEqual(seen, []); // nothing changed: no left, no joined
  assert.equal(ws2.types().includes(2), false); // resumed, not joined again
  c.options.reconnect = false;
  ws2.drop();
});

test('keepalive: frames reset the silence; a PONG keeps the connection', async () => {
  const c = client({ keepaliveMs: 4 * KEEPALIVE });
  const ws = await welcomed(c);
  await joined(c, ws, 'doc-1', 1, [member(1, 'ann')]);
  const until_ = Date.now() + 6 * KEEPALIVE;
  while (Date.now() < until_) {
    ws.deliver([34, 'doc-1', 1, []]);
    await tick(KEEPALIVE / 6);
  }
  assert.equal(ws.types().includes(8), false); // frames flowing: never a PING
  await until(() => ws.types().includes(8), 'a PING once the frames stop');
  const ping = ws.sent.find((f) => f[0] === 8);
  ws.deliver([36, ping[1], 1800000000000]);
  await tick(3 * KEEPALIVE);
  assert.equal(lastSocket(), ws);
  assert.equal(c.connected, true);
  c.options.reconnect = false;
  ws.drop();
});

test('keepalive: keepaliveMs 0 turns it off', async () => {
  const c = client({ keepaliveMs: 0 });
  const ws = await welcomed(c);
  await tick(5 * KEEPALIVE);
  assert.deepEqual(ws.types(), [1]);
  assert.equal(lastSocket(), ws);
  assert.equal(c.connected, true);
  c.options.reconnect = false;
  ws.drop();
});

test('keepalive: close() on a dead network ends through the keepalive', async () => {
  const c = client({ keepaliveMs: KEEPALIVE });
  const ws = await welcomed(c);
  ws.close = function close(code) { this.closedWith = code; }; // the handshake never ends
  const closed = [];
  c.addEventListener('closed', (e) => closed.push(e.detail));
  await c.close();
  assert.deepEqual(closed, [{ code: 1006, reason: 'keepalive timeout' }]);
  assert.equal(c.closed, true);
  await tick(KEEPALIVE);
  assert.equal(lastSocket(), ws); // no reconnect after a close()
});

test('an option given as undefined keeps its default, as an option left out does', () => {
  const client = new PresenceClient(URL, {
    WebSocket: FakeSocket, storage: null, keepaliveMs: undefined, backoffMs: undefined,
    reconnect: undefined, resume: undefined, claimWindowMs: undefined,
  });
  const plain = new PresenceClient(URL, { WebSocket: FakeSocket, storage: null });
  for (const name of ['keepaliveMs', 'backoffMs', 'reconnect', 'resume', 'claimWindowMs']) {
    assert.equal(client.options[name], plain.options[name], name);
  }
  assert.equal(client.options.keepaliveMs, 10000);
  // null still means what it says: no storage.
  assert.equal(client.options.storage, null);
});
