// Unit tests of the browser SDK's session logic (sdk/browser/presence.js) against a scripted
// relay: a fake WebSocket the test answers frame by frame. Run:
// `node --test sdk/browser/test/presence.test.mjs`. The same features against the real relay
// in a real Chromium are in tests/test_browser_sdk.py; these cover what a real relay does not
// do on demand: a newer relay's extra elements and codes (docs/protocol.md, section 11), and
// the corners of resuming (stale records, handle collisions, duplicate joins).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { decode, encode } from '../msgpack.js';
import { Activity, Keepalive, Kind, LeaveReason, MAX_STATUS_CHARS, PresenceClient } from '../presence.js';

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

// `recent` (v1.1) is left out unless given: a v1 relay's 5-element JOINED.
async function joined(c, ws, docId, sid, members, recent) {
  const pending = c.join(docId);
  const join = ws.sent.findLast((f) => f[0] === 2 && f[2] === docId);
  ws.deliver([33, join[1], docId, sid, members, ...(recent === undefined ? [] : [recent])]);
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
    [98, 2, 'another one'],
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

// ---------------------------------------------------------------- v1.1: status, kind, users

// A v1.1 MEMBER: the 13 elements of `member`, then kind and status.
const member11 = (sid, userId, kind = Kind.PERSON, status = null, rest = {}) => [
  ...member(sid, userId, Activity.VIEWING, rest), kind, status];
const recentEntry = (userId, leftAtMs, reason = LeaveReason.LOST) => [userId, userId.toUpperCase(),
  null, 'hsl(2, 70%, 50%)', leftAtMs, reason];

/** Every event a document dispatches, as [type, detail]. */
function everything(doc) {
  const seen = [];
  for (const type of [...EVERY_EVENT, 'status', 'userjoined', 'userleft', 'resynced']) {
    doc.addEventListener(type, (e) => seen.push([type, e.detail]));
  }
  return seen;
}

/** `seen` in short: [type, sid (the member's for user events), what it is about]. */
const brief = (seen) => seen.map(([type, d]) => {
  if (type === 'userjoined') return [type, d.member.sid, d.user.userId];
  if (type === 'userleft') return [type, d.member.sid, d.user.userId, d.reason];
  if (type === 'status') return [type, d.sid, d.status];
  if (type === 'left') return [type, d.sid, d.reason];
  if (type === 'joined') return [type, d.member.sid];
  if (type === 'resynced') return [type, d.resumed];
  return [type, d.sid];
});

const sessions = (doc) => [...doc.users()].map(([userId, u]) => [userId, u.sessions.map((m) => m.sid)]);

test('a v1 relay: 13-element members are persons without a status, a 5-element JOINED has no recent', async () => {
  const c = client();
  const ws = await welcomed(c);
  const d = await joined(c, ws, 'doc-1', 1, [member(1, 'ann'), member(2, 'bob')]);
  for (const m of d.members.values()) {
    assert.deepEqual([m.kind, m.agent, m.status], [Kind.PERSON, false, null]);
  }
  assert.deepEqual(d.recent, []);
  const seen = everything(d);
  ws.deliver([34, 'doc-1', 5000, [[2, member(3, 'cy')], [3, 2]]]); // a v1 left: no reason
  assert.deepEqual(brief(seen), [['joined', 3], ['userjoined', 3, 'cy'], ['left', 2, undefined],
    ['userleft', 2, 'bob', undefined]]);
  assert.deepEqual(d.recent, [{ userId: 'bob', name: 'bob', avatar: null, color: 'hsl(1, 70%, 50%)',
    leftAtMs: 5000, reason: null }]);
  assert.equal(d.users().get('cy').kind, Kind.PERSON);
});

test('v1.1 members: kind and status; event 8 sets the status, dispatched for the others only', async () => {
  const c = client();
  const ws = await welcomed(c);
  const d = await joined(c, ws, 'doc-1', 1, [member11(1, 'ann'),
    member11(2, 'review-bot', Kind.AGENT, 'reading section 2'), member11(3, 'bob', 7, '')]);
  const bot = d.members.get(2);
  assert.deepEqual([bot.kind, bot.agent, bot.status], [1, true, 'reading section 2']);
  const bob = d.members.get(3);
  assert.deepEqual([bob.kind, bob.agent, bob.status], [7, false, null]); // a newer kind; '' is none
  assert.equal(d.users().get('review-bot').agent, true);
  const seen = everything(d);
  ws.deliver([34, 'doc-1', 1, [[8, 3, 'presenting'], [8, 2, null], [8, 1, 'mine'],
    [8, 99, 'unknown sid'], [8, 3, 'thinking', 'a newer element']]]);
  assert.deepEqual(brief(seen), [['status', 3, 'presenting'], ['status', 2, null],
    ['status', 3, 'thinking']]);
  assert.equal(d.members.get(3).status, 'thinking');
  assert.equal(d.members.get(2).status, null);
  assert.equal(d.me.status, 'mine'); // applied to doc.me, not dispatched
});

test('setStatus sends [9, h, text]; null, undefined and "" clear; past 64 characters it throws', async () => {
  const c = client();
  const ws = await welcomed(c);
  const d = await joined(c, ws, 'doc-1', 1, [member11(1, 'ann')]);
  const before = ws.sent.length;
  d.setStatus('presenting');
  d.setStatus(null);
  d.setStatus(undefined);
  d.setStatus('');
  const emoji = '\u{1F600}'.repeat(MAX_STATUS_CHARS); // 64 code points, 128 UTF-16 units
  d.setStatus(emoji);
  d.setStatus('ë'.repeat(64));
  assert.deepEqual(ws.sent.slice(before), [[9, d.handle, 'presenting'], [9, d.handle, null],
    [9, d.handle, null], [9, d.handle, null], [9, d.handle, emoji], [9, d.handle, 'ë'.repeat(64)]]);
  assert.throws(() => d.setStatus('s'.repeat(65)), RangeError);
  assert.throws(() => d.setStatus(`${emoji}!`), RangeError);
  assert.throws(() => d.setStatus(42), TypeError);
  assert.throws(() => d.setStatus({ text: 'x' }), TypeError);
  assert.equal(ws.sent.length, before + 6); // a refused status sends nothing
  assert.equal(d.mine.status, 'ë'.repeat(64)); // ... and keeps the last one
});

test('recent: from JOINED (users here now left out, at most 20), then kept current', async () => {
  const c = client();
  const ws = await welcomed(c);
  const many = Array.from({ length: 25 }, (_, i) => recentEntry(`u-${i}`, 1000 - i));
  const d = await joined(c, ws, 'doc-1', 1, [member11(1, 'ann'), member11(2, 'bob'),
    member11(3, 'cy')], [recentEntry('zoe', 4000, LeaveReason.LEFT), 'not an entry',
    recentEntry('bob', 3000), ...many]);
  assert.equal(d.recent.length, 20);
  assert.deepEqual(d.recent[0], { userId: 'zoe', name: 'ZOE', avatar: null,
    color: 'hsl(2, 70%, 50%)', leftAtMs: 4000, reason: LeaveReason.LEFT });
  assert.deepEqual(d.recent.slice(1, 3).map((r) => r.userId), ['u-0', 'u-1']);
  ws.deliver([34, 'doc-1', 5000, [[3, 3, LeaveReason.LOST]]]);
  assert.deepEqual(d.recent.slice(0, 2).map((r) => [r.userId, r.leftAtMs, r.reason]),
    [['cy', 5000, LeaveReason.LOST], ['zoe', 4000, LeaveReason.LEFT]]);
  assert.equal(d.recent.length, 20);
  // Zoë comes back: no longer recent; and leaves again: first, once.
  ws.deliver([34, 'doc-1', 6000, [[2, member11(4, 'zoe')]]]);
  assert.equal(d.recent.some((r) => r.userId === 'zoe'), false);
  ws.deliver([34, 'doc-1', 7000, [[3, 4, LeaveReason.EVICTED]]]);
  assert.deepEqual(d.recent.slice(0, 2).map((r) => [r.userId, r.leftAtMs]),
    [['zoe', 7000], ['cy', 5000]]);
  assert.equal(d.recent.filter((r) => r.userId === 'zoe').length, 1);
  // A user with another session is still here: not recent.
  ws.deliver([34, 'doc-1', 8000, [[2, member11(5, 'bob')], [3, 2, LeaveReason.LEFT]]]);
  assert.equal(d.recent.some((r) => r.userId === 'bob'), false);
});

test('users(): one entry per user; userjoined and userleft at its first and last session', async () => {
  const c = client();
  const ws = await welcomed(c);
  const d = await joined(c, ws, 'doc-1', 1, [member11(1, 'ann'), member11(2, 'bob'),
    member11(3, 'cy'), member11(4, 'bob')]);
  assert.deepEqual(sessions(d), [['ann', [1]], ['bob', [2, 4]], ['cy', [3]]]);
  const bob = d.users().get('bob');
  assert.deepEqual({ ...bob, sessions: bob.sessions.length }, { userId: 'bob', name: 'bob',
    avatar: null, color: 'hsl(1, 70%, 50%)', kind: Kind.PERSON, agent: false, sessions: 2 });
  const seen = everything(d);
  ws.deliver([34, 'doc-1', 100, [
    [2, member11(5, 'dan')], // a new user
    [2, member11(6, 'dan')], // ... and its second tab: a session, not a user
    [2, member11(5, 'dan', Kind.PERSON, null, { cursor: [1, 1, 1] })], // a known sid: replaced
    [3, 2, LeaveReason.LEFT], // bob's first tab: bob is still here
    [2, member11(7, 'ann')], // the document's own user, in another tab
  ]]);
  assert.deepEqual(brief(seen), [['joined', 5], ['userjoined', 5, 'dan'], ['joined', 6],
    ['joined', 5], ['left', 2, 0], ['joined', 7]]);
  const [, joinedDan] = seen[1];
  assert.deepEqual(joinedDan.user.sessions.map((m) => m.sid), [5]);
  assert.equal(joinedDan.member.sid, 5);
  assert.deepEqual(sessions(d), [['ann', [1, 7]], ['cy', [3]], ['bob', [4]], ['dan', [5, 6]]]);
  seen.length = 0;
  ws.deliver([34, 'doc-1', 200, [[3, 4, LeaveReason.LOST], [3, 7, LeaveReason.LEFT],
    [3, 5, LeaveReason.LEFT], [3, 6, LeaveReason.EXPIRED]]]);
  assert.deepEqual(brief(seen), [['left', 4, 1], ['userleft', 4, 'bob', 1], ['left', 7, 0],
    ['left', 5, 0], ['left', 6, 4], ['userleft', 6, 'dan', 4]]);
  const [, leftBob] = seen[1];
  assert.deepEqual(leftBob.user, { userId: 'bob', name: 'bob', avatar: null,
    color: 'hsl(1, 70%, 50%)', kind: Kind.PERSON, agent: false, sessions: [] });
  assert.equal(leftBob.member.sid, 4);
  assert.deepEqual(sessions(d), [['ann', [1]], ['cy', [3]]]);
  assert.deepEqual(d.recent.map((r) => r.userId), ['dan', 'bob']); // not ann: still here
});

test('an agent: a user with an agent session is an agent', async () => {
  const c = client();
  const ws = await welcomed(c);
  const d = await joined(c, ws, 'doc-1', 1, [member11(1, 'ann'), member11(2, 'svc'),
    member11(3, 'svc', Kind.AGENT)]);
  const svc = d.users().get('svc');
  assert.deepEqual([svc.kind, svc.agent], [Kind.AGENT, true]);
  const seen = everything(d);
  ws.deliver([34, 'doc-1', 1, [[2, member11(4, 'review-bot', Kind.AGENT, 'reviewing')]]]);
  const [, arrived] = seen.find(([type]) => type === 'userjoined');
  assert.deepEqual([arrived.user.agent, arrived.member.status], [true, 'reviewing']);
});

/** Drop `ws`, reconnect, resume, and answer with a JOINED of `members` (and `recent`). */
async function resumeWith(c, ws, d, members, recent) {
  ws.drop();
  await until(() => lastSocket() !== ws && lastSocket().sent.length > 0, 'the reconnect HELLO');
  const ws2 = lastSocket();
  ws2.deliver(welcome({ resume_token: 'tok-2', reconnect_grace_ms: 30000, resumed: true }));
  ws2.deliver([33, d.handle, d.docId, d.sid, members, ...(recent === undefined ? [] : [recent])]);
  return ws2;
}

test('a resume: users who came and went in the gap are events, a second tab is not; status re-sent', async () => {
  const c = client();
  const ws = await welcomed(c, { resume_token: 'tok-1', reconnect_grace_ms: 30000 });
  const d = await joined(c, ws, 'doc-1', 7, [member11(7, 'ann'), member11(8, 'bob'),
    member11(9, 'cy'), member11(10, 'bob'), member11(11, 'dan'), member11(12, 'dan')],
  [recentEntry('old', 10)]);
  d.setStatus('presenting');
  const seen = everything(d);
  // In the gap: bob closed a tab, opened another and set a status; cy left; both of dan's
  // tabs went; eve came with two tabs. The relay never got ann's status.
  const ws2 = await resumeWith(c, ws, d, [member11(7, 'ann'),
    member11(8, 'bob', Kind.PERSON, 'thinking'), member11(13, 'eve'), member11(14, 'bob'),
    member11(15, 'eve')], [recentEntry('dan', 90), recentEntry('cy', 80)]);
  assert.deepEqual(brief(seen), [
    ['status', 8, 'thinking'], ['joined', 13], ['userjoined', 13, 'eve'], ['joined', 14],
    ['joined', 15], ['left', 9, undefined], ['left', 10, undefined], ['left', 11, undefined],
    ['left', 12, undefined], ['userleft', 9, 'cy', undefined], ['userleft', 12, 'dan', undefined],
    ['resynced', true]]);
  const [, eve] = seen[2];
  assert.deepEqual(eve.user.sessions.map((m) => m.sid), [13, 15]);
  assert.deepEqual(seen[10][1].user.sessions, []);
  assert.deepEqual(d.recent.map((r) => r.userId), ['dan', 'cy']); // the snapshot's
  assert.deepEqual(ws2.sent.slice(1), [[9, d.handle, 'presenting']]);

  // Once more; this time the snapshot has it (and no recent: a v1-shaped JOINED): nothing
  // is sent, nothing is dispatched but resynced.
  seen.length = 0;
  const ws3 = await resumeWith(c, ws2, d, [member11(7, 'ann', Kind.PERSON, 'presenting'),
    member11(8, 'bob', Kind.PERSON, 'thinking'), member11(13, 'eve'), member11(14, 'bob'),
    member11(15, 'eve')]);
  assert.deepEqual(brief(seen), [['resynced', true]]);
  assert.deepEqual(ws3.sent.slice(1), []);
  assert.deepEqual(d.recent, []);
  // A cleared status is sent again as a clear when the relay still shows the old one.
  d.setStatus(null);
  const ws4 = await resumeWith(c, ws3, d, [member11(7, 'ann', Kind.PERSON, 'presenting')]);
  assert.deepEqual(ws4.sent.slice(1), [[9, d.handle, null]]);
  c.options.reconnect = false;
  ws4.drop();
});

test('a rejoin (no resume) sends the status again: the new session has none', async () => {
  const c = client();
  const ws = await welcomed(c); // a relay without resume
  const d = await joined(c, ws, 'doc-1', 1, [member11(1, 'ann')]);
  d.setStatus('presenting');
  ws.drop();
  await until(() => lastSocket() !== ws && lastSocket().sent.length > 0, 'the reconnect HELLO');
  const ws2 = lastSocket();
  ws2.deliver(welcome());
  assert.deepEqual(ws2.sent.slice(1), [[2, d.handle, 'doc-1']]);
  ws2.deliver([33, d.handle, 'doc-1', 2, [member11(2, 'ann')], [recentEntry('x', 1)]]);
  assert.deepEqual(ws2.sent.slice(2), [[9, d.handle, 'presenting']]);
  assert.deepEqual(d.recent.map((r) => r.userId), ['x']);
  c.options.reconnect = false;
  ws2.drop();
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

// ---------------------------------------------------------------- ui.js: users and avatars

/** Just enough of a DOM element for AvatarStack. */
class FakeElement {
  constructor(tag) {
    this.tag = tag;
    this.className = '';
    this.children = [];
    this.dataset = {};
    this.style = {};
    this.textContent = '';
    this.title = '';
    const el = this;
    this.classList = {
      toggle(name, on) {
        const names = new Set(el.className.split(' ').filter(Boolean));
        if (on) names.add(name); else names.delete(name);
        el.className = [...names].join(' ');
      },
    };
  }

  appendChild(child) { this.children.push(child); return child; }
  append(...children) { this.children.push(...children); }
  replaceChildren(...children) { this.children = children; }
  find(cls) {
    for (const c of this.children) {
      if (c.className.split(' ').includes(cls)) return c;
      const deeper = c.find(cls);
      if (deeper) return deeper;
    }
    return null;
  }
}

test('usersOf and AvatarStack: agents are marked, a status is shown, the rest stays', async () => {
  const { AvatarStack, usersOf } = await import('../ui.js');
  const { memberFromWire } = await import('../presence.js');
  const m = (sid, userId, kind, status) => memberFromWire([...member(sid, userId), kind, status]);
  const users = usersOf([m(1, 'ann', 0, null), m(2, 'bot', 1, 'reviewing'), m(3, 'ann', 0, 'presenting'),
    memberFromWire(member(4, 'cy')), m(5, 'ann', 0, 'ignored: not the first')]);
  assert.deepEqual(users.map((u) => [u.userId, u.kind, u.agent, u.status, u.sessions.length]),
    [['ann', 0, false, 'presenting', 3], ['bot', 1, true, 'reviewing', 1], ['cy', 0, false, null, 1]]);
  globalThis.document = { createElement: (tag) => new FakeElement(tag) };
  try {
    const container = new FakeElement('div');
    new AvatarStack(container, { me: 'ann' }).render(users);
    const [ann, bot, cy] = container.children;
    assert.deepEqual([ann.className, bot.className, cy.className],
      ['pr-avatar', 'pr-avatar pr-avatar-agent', 'pr-avatar']);
    assert.equal(bot.dataset.user, 'bot');
    assert.equal(ann.find('pr-avatar-name').textContent, 'ann (you)');
    assert.equal(ann.find('pr-avatar-activity').textContent, 'Viewing');
    assert.equal(ann.find('pr-avatar-badge').textContent, '3');
    assert.equal(ann.find('pr-avatar-status').textContent, 'presenting');
    assert.equal(bot.find('pr-avatar-status').textContent, 'reviewing');
    assert.equal(cy.find('pr-avatar-status'), null);
  } finally {
    delete globalThis.document;
  }
});
