// The relay's demo page: one shared text, and everyone on it. Built on the browser SDK alone
// (served by the relay at /sdk/), no framework, nothing from another host.
//
// The URL's fragment picks the document (`/#design-notes`) and, on a relay with a JWT secret,
// carries the token: `/#design-notes&token=<JWT>`. Without a fragment the page opens the
// document this browser last opened, or a new random one: so `/` in two windows is one
// document, and its link (in the address bar) brings someone else in. Without a token the
// page joins as an anonymous user whose id and name are kept in localStorage, so every tab of
// one browser is one user (with a session per tab). The name is editable in the header.
//
// `window.demo` exposes the client, the document and the textarea binding (the browser tests
// read them); `window.ready` turns true once the document is joined.

import { connect, ConnectionClosedError } from './sdk/presence.js';
import { bindTextarea } from './sdk/adapters/textarea.js';
import { AvatarStack, TypingIndicator, usersOf } from './sdk/ui.js';

const IDENTITY_KEY = 'presence-relay-demo:identity';
const LAST_DOC_KEY = 'presence-relay-demo:last-doc';
const NAMES = ['Ann', 'Bob', 'Chen', 'Dara', 'Eli', 'Fatima', 'Goran', 'Hana', 'Ines', 'Jun',
  'Kofi', 'Lena', 'Mateo', 'Nia', 'Omar', 'Priya', 'Quinn', 'Rosa', 'Sami', 'Tariq'];
// Why someone left, when it was not a plain leave (LeaveReason codes, docs/protocol.md §11).
const REASONS = { 1: 'connection lost', 2: 'server went down', 3: 'disconnected by the relay',
  4: 'expired' };
const SAMPLE = `presence-relay demo
===================

Everyone who opens this document sees everyone else:

  * a caret in their color, with their name (the name fades after
    a few seconds without a move, and comes back when they move);
  * what they select, highlighted in their color;
  * one avatar per person on the right, with a badge for a person
    who has several tabs open, and what they are doing: Editing,
    Viewing, Selecting, Idle, Away, or Disconnected while their
    connection is down (their place is kept for a while, so a
    reload or a short outage never looks like a leave);
  * "Ann is typing…" below the text while someone types;
  * where they are looking: a mark beside the text for each
    person's visible lines.

Try it: open this address in a second window and move the caret,
select a few words, type, scroll, switch to another tab for a
minute (you turn Away), close the window (you leave at once).

Cursor moves are batched every 50 ms per document, so a caret
crosses from one window to another in a frame or two.

The relay carries presence, not content: what you type stays in
your tab. Put a CRDT (Yjs, Automerge) next to it for the text.

--- more lines, so that there is something to scroll ---

01  The quick brown fox jumps over the lazy dog.
02  Pack my box with five dozen liquor jugs.
03  How vexingly quick daft zebras jump!
04  The five boxing wizards jump quickly.
05  Sphinx of black quartz, judge my vow.
06  Jackdaws love my big sphinx of quartz.
07  The quick brown fox jumps over the lazy dog.
08  Pack my box with five dozen liquor jugs.
09  How vexingly quick daft zebras jump!
10  The five boxing wizards jump quickly.
11  Sphinx of black quartz, judge my vow.
12  Jackdaws love my big sphinx of quartz.

(end)
`;

const $ = (id) => document.getElementById(id);

/** `#doc-id` or `#doc-id&token=...` -> {docId, token}. */
export function parseFragment(hash) {
  const [first, ...rest] = hash.replace(/^#/, '').split('&');
  const params = new URLSearchParams(rest.join('&'));
  let docId = '';
  try { docId = decodeURIComponent(first); } catch { docId = ''; }
  return { docId, token: params.get('token') };
}

function randomId(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(4));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function storedIdentity() {
  try {
    const saved = JSON.parse(localStorage.getItem(IDENTITY_KEY));
    if (saved && typeof saved.userId === 'string' && typeof saved.name === 'string') return saved;
  } catch { /* storage off or unreadable: a fresh identity, not kept */ }
  const identity = { userId: randomId('guest-'), name: NAMES[Math.floor(Math.random() * NAMES.length)] };
  saveIdentity(identity);
  return identity;
}

function saveIdentity(identity) {
  try { localStorage.setItem(IDENTITY_KEY, JSON.stringify(identity)); } catch { /* see above */ }
}

/** The document this browser opened last, or null. */
function lastDocument() {
  try { return localStorage.getItem(LAST_DOC_KEY); } catch { return null; }
}

function rememberDocument(docId) {
  try { localStorage.setItem(LAST_DOC_KEY, docId); } catch { /* storage off: a random one */ }
}

function relayUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

function ago(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return 'just now';
  const m = Math.round(s / 60);
  return m < 60 ? `${m} min ago` : `${Math.round(m / 60)} h ago`;
}

function showProblem(message) {
  const box = $('problem');
  box.textContent = message;
  box.classList.toggle('hidden', !message);
}

function setStatus(text, state) {
  const el = $('status');
  el.textContent = text;
  el.className = `status ${state}`;
}

/** Everything on the page that follows the document; `render()` redraws it all. */
class Room {
  constructor(client, doc, identity) {
    this.client = client;
    this.doc = doc;
    this.identity = identity;
    this.avatars = new AvatarStack($('avatars'), { me: identity.userId, max: 12 });
    this.typing = new TypingIndicator($('typing'));
    this.binding = bindTextarea(doc, $('text'));
    this.onEvent = () => this.render();
    for (const type of ['joined', 'left', 'userjoined', 'userleft', 'cursor', 'typing', 'viewport',
      'activity', 'focus', 'status', 'resynced']) {
      doc.addEventListener(type, this.onEvent);
    }
    this.clock = setInterval(() => this.renderRecent(), 15000);
    this.render();
  }

  render() {
    const users = usersOf(this.doc.members.values());
    this.avatars.render(users);
    this.typing.typingUsers.clear();
    for (const user of users) {
      if (user.typing && user.userId !== this.identity.userId) {
        this.typing.typingUsers.set(user.userId, { name: user.name, startedAt: Date.now() });
      }
    }
    this.typing.render();
    this.renderRail();
    this.renderRecent();
    const n = users.length;
    setStatus(`connected · ${n} ${n === 1 ? 'person' : 'people'} here`, 'live');
  }

  /** A mark per member beside the text: the share of the text their visible lines cover. */
  renderRail() {
    const lines = Math.max(1, $('text').value.split('\n').length);
    const marks = [];
    for (const member of this.doc.members.values()) {
      if (!member.viewport) continue;
      const mark = document.createElement('div');
      const mine = member.sid === this.doc.sid;
      mark.className = mine ? 'viewport-marker mine' : 'viewport-marker';
      mark.dataset.sid = String(member.sid);
      const top = Math.min(member.viewport.top, lines - 1);
      const bottom = Math.min(Math.max(member.viewport.bottom, top), lines - 1);
      mark.style.top = `${(top / lines) * 100}%`;
      mark.style.height = `${((bottom - top + 1) / lines) * 100}%`;
      if (!mine) mark.style.backgroundColor = member.disconnected ? '#9e9e9e' : member.color;
      mark.title = mine ? 'you' : member.name;
      marks.push(mark);
    }
    $('rail').replaceChildren(...marks);
  }

  /** The relay's list (JOINED's `recent`, kept current by the SDK): users whose last session
   * left lately, newest first, with how long ago and, when it was not a plain leave, why. */
  renderRecent() {
    const items = this.doc.recent.map((r) => {
      const li = document.createElement('li');
      const dot = document.createElement('span');
      dot.className = 'dot';
      dot.style.backgroundColor = r.color;
      const why = REASONS[r.reason] ? ` (${REASONS[r.reason]})` : '';
      li.append(dot, `${r.name}, ${ago(Date.now() - r.leftAtMs)}${why}`);
      return li;
    });
    if (items.length === 0) {
      const none = document.createElement('li');
      none.className = 'none';
      none.textContent = 'nobody yet';
      items.push(none);
    }
    $('recent').replaceChildren(...items);
  }

  async close() {
    clearInterval(this.clock);
    this.binding.destroy();
    await this.client.close();
  }
}

async function enter(docId, token, identity) {
  setStatus('connecting…', '');
  const options = token ? { token } : { userId: identity.userId, name: identity.name };
  let client;
  try {
    client = await connect(relayUrl(), options);
  } catch (err) {
    if (err instanceof ConnectionClosedError && err.code === 4401) {
      showProblem(token
        ? `The relay refused the token in this page's address (${err.reason}).`
        : 'This relay requires a token: open /#' + docId + '&token=<a JWT signed with its secret>.');
    } else {
      showProblem(`Cannot reach the relay at ${relayUrl()}: is it running? (make run)`);
    }
    setStatus('not connected', 'down');
    throw err;
  }
  client.addEventListener('disconnected', () => setStatus('connection lost, reconnecting…', 'down'));
  client.addEventListener('reconnected', () => setStatus('connected', 'live'));
  client.addEventListener('error', (e) => showProblem(`relay: ${e.detail.message ?? e.detail.code}`));
  let doc;
  try {
    doc = await client.join(docId);
  } catch (err) {
    showProblem(`The relay refused to open ${docId}: ${err.message}`);
    setStatus('not joined', 'down');
    await client.close();
    throw err;
  }
  showProblem('');
  return new Room(client, doc, identity);
}

async function main() {
  let { docId, token } = parseFragment(location.hash);
  if (!docId) {
    docId = lastDocument() || randomId('doc-');
    history.replaceState(null, '', `#${encodeURIComponent(docId)}`);
  }
  if (!token) rememberDocument(docId); // a token's link is for one document: not a default
  const identity = storedIdentity();
  $('doc-id').textContent = docId;
  $('text').value = SAMPLE;
  $('bot-command').textContent = `python -m presence_client.bot --url ${relayUrl()} --doc ${docId}`;
  const nameInput = $('name');
  nameInput.value = identity.name;
  nameInput.disabled = Boolean(token); // with a token, the name is the token's
  let room = await enter(docId, token, identity);
  window.demo = room;
  window.ready = true;

  // A new name is a new HELLO: leave, then come back as the same user with the new name.
  nameInput.addEventListener('change', async () => {
    const name = nameInput.value.trim().slice(0, 40);
    if (!name || name === identity.name) { nameInput.value = identity.name; return; }
    identity.name = name;
    saveIdentity(identity);
    window.ready = false;
    await room.close();
    room = await enter(docId, token, identity);
    if (statusInput.value) room.doc.setStatus(statusInput.value);
    window.demo = room;
    window.ready = true;
  });
  // A status next to your name ("presenting", "thinking"): STATUS, at most 64 characters.
  const statusInput = $('my-status');
  statusInput.addEventListener('change', () => {
    const text = [...statusInput.value.trim()].slice(0, 64).join('');
    statusInput.value = text;
    room.doc.setStatus(text || null);
  });
  $('share').addEventListener('click', () => {
    const url = `${location.origin}/#${encodeURIComponent(docId)}`; // never the token
    navigator.clipboard?.writeText(url).then(
      () => { $('share').textContent = 'Copied'; },
      () => { showProblem(`Copy this address: ${url}`); });
  });
  $('new-doc').addEventListener('click', () => {
    location.hash = randomId('doc-');
  });
  window.addEventListener('hashchange', () => location.reload());
}

main().catch((err) => { console.error(err); window.failed = String(err); });
