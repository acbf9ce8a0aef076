// Scenarios that tests/test_browser_sdk.py runs in headless Chromium against a real relay.
// Each returns what it observed; the Python test asserts on it (and fails on any exception).

import { decode, encode } from '../msgpack.js';
import { connect, RelayError } from '../presence.js';
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

window.scenarios = { twoMembers, reconnects, refusals, vectors };
window.ready = true;
