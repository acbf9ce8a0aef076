// Scenarios that tests/test_browser_sdk.py runs in headless Chromium against a real relay.
// Each returns what it observed; the Python test asserts on it (and fails on any exception).

import { decode, encode } from '../msgpack.js';
import { connect, PresenceClient, RelayError } from '../presence.js';
import { CursorRenderer, TypingIndicator, bindPresence } from '../ui.js';

const CHAR_W = 8, LINE_H = 16;

function until(check, what, timeoutMs = 5000) {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const poll = () => {
      let value;
      try { value = check(); } catch (err) { reject(err); return; }
      if (value) { resolve(value); return; }
      if (performance.now() - started > timeoutMs) { reject(new Error(`timed out: ${what}`)); return; }
      setTimeout(poll, 10);
    };
    poll();
  });
}

function editor() {
  const container = document.getElementById('editor');
  container.replaceChildren();
  return {
    container,
    lineHeight: LINE_H,
    getCoordinates: ({ line, column }) => ({ x: column * CHAR_W, y: line * LINE_H }),
  };
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function unhex(s) {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i += 1) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function countSends(client) {
  const counter = { frames: [] };
  const send = client.send.bind(client);
  client.send = (frame) => { counter.frames.push(frame); send(frame); };
  return counter;
}

async function twoMembers(url) {
  const seen = {};
  const a = await connect(url, { userId: 'ann', name: 'Ann' });
  const b = await connect(url, { userId: 'bob', name: 'Bob' });
  seen.welcomeSettings = a.settings;
  const da = await a.join('doc-e2e');
  const db = await b.join('doc-e2e');
  const ed = editor();
  const renderer = new CursorRenderer(ed);
  const typingLine = document.getElementById('typing');
  const indicator = new TypingIndicator(typingLine);
  const unbind = bindPresence(db, { renderer, typing: indicator });
  seen.bobSeesAnn = [...db.others().values()].map((m) => m.name);
  await until(() => [...da.others().values()].some((m) => m.name === 'Bob'), 'ann sees bob');
  seen.annSeesBob = [...da.others().values()].map((m) => m.name);
  seen.annSid = da.sid;

  // A cursor: bob's view of ann, and the caret drawn for it.
  da.moveCursor(3, 5, 40);
  await until(() => db.members.get(da.sid)?.cursor?.col === 5, 'cursor at 3:5');
  const caret = () => ed.container.querySelector('.remote-cursor');
  seen.caret = { count: ed.container.querySelectorAll('.remote-cursor').length,
    left: caret().style.left, top: caret().style.top,
    label: caret().querySelector('.cursor-label').textContent,
    color: caret().style.backgroundColor, memberColor: db.members.get(da.sid).color };

  // A selection, anchored at 3:2, head at 3:9 (forward).
  await new Promise((r) => setTimeout(r, 60)); // past the cursor throttle: sent at once
  da.moveCursor(3, 9, 44, { line: 3, col: 2, off: 37, backward: false });
  await until(() => ed.container.querySelector('.remote-selection'), 'selection drawn');
  const sel = ed.container.querySelector('.remote-selection');
  seen.selection = { left: sel.style.left, width: sel.style.width, top: sel.style.top,
    member: db.members.get(da.sid).selection };

  // Throttle: a burst of 50 moves inside one interval is two frames (the first, and the
  // last one on the trailing edge), and the last position is the one bob ends up with.
  await new Promise((r) => setTimeout(r, 60));
  const sent = countSends(a);
  for (let i = 0; i < 50; i += 1) da.moveCursor(4, i, 100 + i);
  await until(() => db.members.get(da.sid)?.cursor?.col === 49, 'last of the burst');
  seen.burstFrames = sent.frames.filter((f) => f[0] === 4).map((f) => f[3]);

  // Typing: the indicator says so, then the relay's debounce stops it.
  const typingEvents = [];
  db.addEventListener('typing', (e) => typingEvents.push(e.detail.typing));
  da.typed();
  await until(() => typingLine.textContent === 'Ann is typing...', 'typing shown');
  seen.typingShown = { text: typingLine.textContent, hidden: typingLine.classList.contains('hidden') };
  await until(() => typingEvents.includes(false), 'typing stopped by the debounce', 3000);
  seen.typingAfter = { text: typingLine.textContent, hidden: typingLine.classList.contains('hidden'),
    events: typingEvents };

  // Ping.
  seen.rttMs = await a.ping();

  // Ann leaves: her caret goes.
  await da.leave();
  await until(() => !db.members.has(seen.annSid), 'ann left');
  seen.caretsAfterLeave = ed.container.querySelectorAll('.remote-cursor').length;
  unbind();
  await a.close();
  await b.close();
  seen.closed = [a.closed, b.closed];
  return seen;
}

async function reconnects(url) {
  const seen = {};
  const a = await connect(url, { userId: 'ann', name: 'Ann', backoffMs: 50 });
  const b = await connect(url, { userId: 'bob', name: 'Bob' });
  const da = await a.join('doc-drop');
  const db = await b.join('doc-drop');
  const firstSid = da.sid;
  const events = [];
  a.addEventListener('disconnected', (e) => events.push(`disconnected ${e.detail.code}`));
  a.addEventListener('reconnected', () => events.push('reconnected'));
  da.addEventListener('resynced', () => events.push('resynced'));
  const bobSaw = [];
  db.addEventListener('left', (e) => bobSaw.push(['left', e.detail.sid]));
  db.addEventListener('joined', (e) => bobSaw.push(['joined', e.detail.member.sid]));
  a.ws.close(4000, 'simulated drop'); // the socket goes away without client.close()
  await until(() => events.includes('resynced'), 'rejoined after the drop');
  await until(() => bobSaw.some(([k, sid]) => k === 'joined' && sid === da.sid), 'bob sees the rejoin');
  seen.events = events;
  seen.sids = [firstSid, da.sid];
  seen.bobSaw = bobSaw;
  da.moveCursor(7, 7, 7);
  await until(() => db.members.get(da.sid)?.cursor?.line === 7, 'cursor after the rejoin');
  seen.cursorAfter = db.members.get(da.sid).cursor;
  await a.close();
  await b.close();
  return seen;
}

async function refusals(url) {
  const seen = {};
  const a = await connect(url, { userId: 'ann', name: 'Ann' });
  await a.join('one');
  try {
    await a.join('two'); // past max_documents = 1
    seen.second = 'joined';
  } catch (err) {
    seen.second = { name: err.name, code: err.code, isRelayError: err instanceof RelayError };
  }
  try {
    await connect(url, { userId: '', name: 'Nobody' }); // anonymous HELLO needs a user_id
    seen.badHello = 'connected';
  } catch (err) {
    seen.badHello = { name: err.name, code: err.code };
  }
  await a.close();
  return seen;
}

// An HS256 JWT minted in the page (WebCrypto; 127.0.0.1 is a secure context), the way the
// relay's tokens are: a test stand-in for the application's token endpoint.
function base64url(bytes) {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_')
    .replace(/=+$/, '');
}

async function mintToken(secret, claims) {
  const utf8 = (s) => new TextEncoder().encode(s);
  const input = `${base64url(utf8(JSON.stringify({ alg: 'HS256', typ: 'JWT' })))}.`
    + base64url(utf8(JSON.stringify(claims)));
  const key = await crypto.subtle.importKey('raw', utf8(secret), { name: 'HMAC', hash: 'SHA-256' },
    false, ['sign']);
  const signature = new Uint8Array(await crypto.subtle.sign('HMAC', key, utf8(input)));
  return `${input}.${base64url(signature)}`;
}

async function tokenRenewal({ url, secret, ttlMs }) {
  // Ann's provider mints a token that lives ttlMs at every call: the relay closes her
  // connection at its exp (4401 "token expired"), and the client must come back at once with
  // a fresh one. Cy's provider gives a bad token (another secret) on its second call: that
  // refused HELLO is fatal, and the provider is not asked again. Both expire in the same
  // window, so the scenario takes one ttl.
  const claims = (sub, lifeMs) => ({ sub, name: sub[0].toUpperCase() + sub.slice(1), ws: 'acme',
    docs: ['*'], exp: (Date.now() + lifeMs) / 1000 });
  const annCalls = [], cyCalls = [];
  const annToken = () => {
    const c = claims('ann', ttlMs);
    annCalls.push({ at: Date.now(), exp: c.exp * 1000 });
    return mintToken(secret, c); // a Promise of the token
  };
  const cyToken = () => {
    cyCalls.push(Date.now());
    return cyCalls.length === 1 ? mintToken(secret, claims('cy', ttlMs))
      : mintToken(`not-${secret}`, claims('cy', 600000));
  };
  // A backoff of 30 s: the reconnect after an expiry must not wait for it.
  const a = await connect(url, { token: annToken, backoffMs: 30000, maxBackoffMs: 30000 });
  const b = await connect(url, { token: await mintToken(secret, claims('bob', 600000)) });
  const c = await connect(url, { token: cyToken, backoffMs: 50 });
  const da = await a.join('doc-tokens');
  const db = await b.join('doc-tokens');
  await c.join('doc-tokens');
  const firstConnection = a.welcome.connectionId;
  const events = [];
  a.addEventListener('disconnected', (e) => events.push(`disconnected ${e.detail.code} ${e.detail.reason}`));
  a.addEventListener('reconnected', () => events.push('reconnected'));
  da.addEventListener('resynced', () => events.push('resynced'));
  const cyClosed = new Promise((resolve) => c.addEventListener('closed', (e) => resolve(e.detail)));
  await until(() => events.includes('resynced'), 'ann rejoined with a fresh token', 15000);
  const seen = {
    events: events.slice(0, 3),
    annCalls: annCalls.length,
    // How long after the first token's exp the client asked for the second one.
    renewedAfterMs: annCalls[1].at - annCalls[0].exp,
    newConnection: a.welcome.connectionId !== firstConnection,
    user: a.welcome.user.id,
  };
  // The rejoined document works: bob sees a cursor moved now.
  da.moveCursor(7, 8, 9);
  await until(() => [...db.members.values()].some((m) => m.userId === 'ann' && m.cursor?.line === 7),
    'bob sees ann after the renewal', 10000);
  seen.bobSeesCursor = [...db.members.values()].find((m) => m.userId === 'ann').cursor;
  seen.cyClosed = await Promise.race([cyClosed,
    new Promise((resolve) => setTimeout(() => resolve('not closed'), 10000))]);
  await new Promise((r) => setTimeout(r, 300)); // no loop: cy's provider is not asked again
  seen.cyCalls = cyCalls.length;
  seen.cyClosedFlag = c.closed;
  try {
    await connect(url, { token: () => { throw new Error('token service down'); } });
    seen.brokenProvider = 'connected';
  } catch (err) {
    seen.brokenProvider = { name: err.name, message: err.message, cause: err.cause?.message };
  }
  await a.close();
  await b.close();
  return seen;
}

async function vectors(base) {
  // The golden vectors, decoded (and re-encoded) by this browser's copy of the codec.
  const doc = await (await fetch(`${base}/tests/vectors/protocol_v1.json`)).json();
  const out = { decoded: [], mismatches: [], notReencoded: [] };
  for (const v of doc.vectors) {
    if (!('value' in v)) continue;
    const got = decode(unhex(v.hex));
    out.decoded.push(v.name);
    if (JSON.stringify(got) !== JSON.stringify(v.value)) out.mismatches.push(v.name);
    if (hex(encode(v.value)) !== v.hex) out.notReencoded.push(v.name);
  }
  return out;
}

// ---------------------------------------------------------------- v1.1 sessions, page by page
// The tests of resuming, hiding and leaving drive one role per page (ann acts, bob watches),
// one call at a time, with DevTools doing to the page what a person or a network would
// (offline, reload, hide) in between. What each role saw is kept in its log.

const roles = {};

const memberView = (m) => ({ sid: m.sid, userId: m.userId, color: m.color, activity: m.activity,
  disconnected: m.disconnected, focused: m.focused, cursor: m.cursor });

function caretView() {
  const caret = document.querySelector('.remote-cursor');
  if (caret === null) return null;
  return { label: caret.querySelector('.cursor-label').textContent,
    disconnected: caret.classList.contains('disconnected'), color: caret.style.backgroundColor };
}

function watch(doc, note) {
  for (const type of ['joined', 'left', 'activity', 'focus', 'cursor', 'resynced']) {
    doc.addEventListener(type, (e) => {
      const d = e.detail;
      note({ type, doc: doc.docId, sid: d.sid ?? d.member?.sid ?? null, reason: d.reason,
        activity: d.activity, focused: d.focused, cursor: d.cursor, resumed: d.resumed,
        caret: type === 'activity' ? caretView() : undefined });
    });
  }
}

async function sessionOpen({ url, role, userId, name, docs, options = {}, ui = false }) {
  const r = { log: [], sent: [], docs: {} };
  roles[role] = r;
  const note = (entry) => r.log.push({ at: Date.now(), ...entry });
  const client = new PresenceClient(url, { userId, name, ...options });
  r.client = client;
  const send = client.send.bind(client);
  client.send = (frame) => { r.sent.push(frame); send(frame); };
  client.addEventListener('disconnected', (e) => note({ type: 'disconnected', code: e.detail.code }));
  client.addEventListener('reconnected', (e) => note({ type: 'reconnected', resumed: e.detail.resumed }));
  client.addEventListener('closed', (e) => note({ type: 'closed', code: e.detail.code }));
  await client.start();
  for (const id of docs) {
    const doc = await client.join(id);
    r.docs[id] = doc;
    if (ui && id === docs[0]) bindPresence(doc, { renderer: new CursorRenderer(editor()) });
    watch(doc, note);
  }
  return sessionState(role);
}

function sessionState(role) {
  const r = roles[role];
  const docs = {};
  for (const [id, doc] of Object.entries(r.docs)) {
    docs[id] = { sid: doc.sid, handle: doc.handle, open: doc.open,
      members: [...doc.others().values()].map(memberView) };
  }
  return { resumed: r.client.welcome?.resumed ?? null, connected: r.client.connected,
    closed: r.client.closed, docs, log: r.log, visibility: document.visibilityState,
    focusFrames: r.sent.filter((f) => f[0] === 7).map((f) => f[2]),
    joins: r.sent.filter((f) => f[0] === 2).map((f) => f[2]) };
}

function sessionMove({ role, doc, line, col, off }) {
  roles[role].docs[doc].moveCursor(line, col, off);
  return true;
}

async function sessionClose(role) {
  await roles[role].client.close();
  return { state: sessionState(role), stored: Object.keys(sessionStorage) };
}

// Another client of the same user and page takes the session over: the stored record is
// marked as a reload's (pagehide) while its connection is still open, so the newcomer resumes
// it and the relay closes the first connection with 4409, which must stay closed.
async function takeover(url) {
  const first = await connect(url, { userId: 'ann', name: 'Ann', backoffMs: 50 });
  const doc = await first.join('doc-takeover');
  const firstClosed = new Promise((resolve) => first.addEventListener('closed', (e) => resolve(e.detail)));
  const key = Object.keys(sessionStorage).find((k) => k.endsWith('#ann'));
  const record = JSON.parse(sessionStorage.getItem(key));
  sessionStorage.setItem(key, JSON.stringify({ ...record, unloadedAt: Date.now(), lostAt: Date.now() }));
  const second = new PresenceClient(url, { userId: 'ann', name: 'Ann' });
  const sent = countSends(second);
  await second.start();
  const doc2 = await second.join('doc-takeover');
  const seen = { firstClosed: await firstClosed, resumed: second.welcome.resumed,
    sids: [doc.sid, doc2.sid], handles: [doc.handle, doc2.handle],
    joinsSent: sent.frames.filter((f) => f[0] === 2).length };
  await new Promise((r) => setTimeout(r, 300)); // no reconnect of the first one
  seen.firstReconnected = first.connected;
  await second.close();
  return seen;
}

window.scenarios = {
  twoMembers, reconnects, refusals, tokenRenewal, vectors,
  sessionOpen, sessionState, sessionMove, sessionClose, takeover,
};
window.ready = true;
