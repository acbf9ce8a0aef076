// presence-relay browser SDK: one WebSocket connection (subprotocol presence.v1), binary
// MessagePack frames, the documents it has open, their members, and the throttles the
// protocol asks of an SDK (docs/protocol.md). Plain ES module, no build step, no dependency.
//
//   import { connect } from './presence.js';
//   const client = await connect('ws://127.0.0.1:8765/ws', { userId: 'ann', name: 'Ann' });
//   const doc = await client.join('design-doc');
//   doc.addEventListener('cursor', (e) => console.log(e.detail));
//   doc.moveCursor(12, 4, 318);            // throttled to cursor_throttle_ms, last one always sent
//
// Events (CustomEvent, payload in `detail`) on a PresenceDocument: joined {member},
// left {sid, member, reason} (a LeaveReason; undefined from a v1 relay, or for a member found
// gone in a resume's snapshot), cursor {sid, cursor, selection}, typing {sid, typing},
// viewport {sid, viewport}, activity {sid, activity, disconnected}, focus {sid, focused},
// status {sid, status} (v1.1), resynced {members, resumed} (after a reconnect), error {code,
// message}. Events of the document's own sid update `doc.me` but are not dispatched. On the
// client: disconnected {code, reason}, reconnected {resumed}, error {code, message}, closed
// {code, reason}.
//
// One roster per user (v1.1): a user with the document open in two tabs is two members (two
// sids, two carets) and one user. `doc.users()` groups the members by userId; userjoined
// {user, member} comes (after `joined`) when a user's first session appears, userleft {user,
// member, reason} (after `left`) when its last session goes: a second tab coming and going
// is a `joined` and a `left`, not a user arriving and leaving. Neither is dispatched for the
// document's own user (the userId of `doc.me`): its other tabs are sessions of a user that
// never leaves while this one is here. `doc.recent` lists the users who left a little while
// ago (JOINED's `recent`, then kept current from the batches).
//
// Against a relay with a JWT secret pass `token`: a string, or a token provider, a function
// returning a token or a Promise of one, called before every HELLO so that reconnects use a
// fresh token: `connect(url, { token: () => fetch('/presence-token').then((r) => r.text()) })`.
//
// v1.1 sessions (docs/protocol.md, section 11): a dropped connection, and a page reload,
// resume the relay's session within `reconnect_grace_ms` (same handles, same sids: the others
// see the member DISCONNECTED, then back, never left and joined); a hidden or blurred page
// sends FOCUS false (the member turns Away, not gone); `close()` leaves at once.
//
// Keepalive (`keepaliveMs`, default 10000; 0 turns it off): the browser answers the relay's
// WebSocket pings by itself, so a page learns that its socket is dead only when its TCP does,
// which after a network cut may take many minutes, while the relay has long shown the member
// DISCONNECTED and then left (LOST). So the client watches silence: when nothing at all has
// been received for `keepaliveMs` it sends a PING; when still nothing has been received
// `keepaliveMs` after that PING, the connection counts as lost: the socket is let go (its
// handlers detached, close() called, its closing handshake not waited for: on a dead network
// it never ends) and the client reconnects and resumes as after any drop (a `disconnected`
// event, code 1006, reason `keepalive timeout`). Every frame received resets the silence, so a
// connection with traffic is never pinged; an idle one costs one PING and one PONG per
// `keepaliveMs`. Timers are checked against the time of the last frame, not counted, so a
// background tab whose timers fire late loses no live connection. While close() waits for
// its closing handshake the keepalive goes on: on a dead network close() ends that way too.

import { decode, encode } from './msgpack.js';

export const SDK = 'js/0.1.0';
export const PROTOCOL = 'presence.v1';

// Message types (docs/protocol.md, sections 2 and 3).
const HELLO = 1, JOIN = 2, LEAVE = 3, CURSOR = 4, TYPING = 5, VIEWPORT = 6, FOCUS = 7, PING = 8;
const STATUS = 9; // v1.1
const WELCOME = 32, JOINED = 33, BATCH = 34, ERROR = 35, PONG = 36;
// BATCH event codes (section 5).
const EV_CURSOR = 1, EV_JOINED = 2, EV_LEFT = 3, EV_TYPING = 4, EV_VIEWPORT = 5;
const EV_ACTIVITY = 6, EV_FOCUS = 7, EV_STATUS = 8;
const ALREADY_JOINED = 8; // ERROR code (section 6)

export const Activity = Object.freeze({
  EDITING: 0, VIEWING: 1, SELECTING: 2, IDLE: 3, AWAY: 4, DISCONNECTED: 5,
});
export const ACTIVITY_NAMES = Object.freeze(
  ['Editing', 'Viewing', 'Selecting', 'Idle', 'Away', 'Disconnected']);

/** Why a member left (the third element of a `left` event, v1.1). */
export const LeaveReason = Object.freeze({
  LEFT: 0, LOST: 1, NODE_DOWN: 2, EVICTED: 3, EXPIRED: 4, SHUTDOWN: 5,
});
export const LEAVE_REASON_NAMES = Object.freeze(
  ['LEFT', 'LOST', 'NODE_DOWN', 'EVICTED', 'EXPIRED', 'SHUTDOWN']);

/** What a member is (MEMBER's `kind`, v1.1): a person, or an agent set over HTTP (a bot). */
export const Kind = Object.freeze({ PERSON: 0, AGENT: 1 });

/** The longest status text, in characters (Unicode code points): the relay refuses more. */
export const MAX_STATUS_CHARS = 64;
// JOINED's `recent` holds at most this many users; doc.recent keeps to the same.
const MAX_RECENT = 20;

// Close codes after which reconnecting cannot help, because the same client would only be
// closed again: a WebSocket protocol violation (1002, 1007 invalid UTF-8, 1009 too big), 4400
// (relay protocol violation), 4401 (unauthenticated), 4409 (v1.1: this connection was resumed
// by a newer one, another tab or page took the session over; reconnecting would take it back
// and the two would fight), 4429 (rate-limit abuse). The Python SDK
// (sdk/python/presence_client/connection.py, FATAL_CLOSE_CODES) uses the same set. One
// exception: with a token provider, 4401 "token expired" on a connection that had been
// welcomed is the relay ending it at the token's `exp`, and the client reconnects at once
// with a fresh token (a HELLO refused with 4401 stays fatal: a fresh token did not help).
const FATAL_CLOSES = new Set([1002, 1007, 1009, 4400, 4401, 4409, 4429]);
const CLOSE_NORMAL = 1000; // what close() sends: the relay takes it as a deliberate leave
const CLOSE_UNAUTHENTICATED = 4401;
const CLOSE_RESUMED = 4409;
const TOKEN_EXPIRED = 'token expired';
// A connection ended at its token's `exp` after living at least this long reconnects at
// once; a shorter one goes through the backoff, so a provider that hands out tokens about to
// expire cannot make the client reconnect in a tight loop.
const RENEW_AT_ONCE_AFTER_MS = 1000;
// After a resumed WELCOME, how long the documents the relay re-attached wait for this page to
// ask for them (a reloaded page joins again as its code runs); those it never asks for are
// left then, so that a reload does not keep documents open that the new page dropped.
export const CLAIM_WINDOW_MS = 2000;
const STORAGE_PREFIX = 'presence-relay:resume:';
// A reload blurs the page about a millisecond before pagehide (Chromium: beforeunload, blur,
// pagehide, visibilitychange, unload); a page that stays blurred or hidden this long has
// really lost focus.
const PAGE_LOSS_DELAY_MS = 250;
export const KEEPALIVE_MS = 10000;
// A keepalive check that ran more than a whole interval after it was due (a frozen or asleep
// page, a starved event loop) may run before the frames that arrived meanwhile are read: it
// waits this long once more before it calls the connection lost.
const KEEPALIVE_RECHECK_MS = 1000;

export class RelayError extends Error {
  constructor(code, message, handle = null) {
    super(`ERROR ${code}: ${message}`);
    this.name = 'RelayError';
    this.code = code;
    this.relayMessage = message;
    this.handle = handle;
  }
}

/** The token provider threw, timed out or gave no string; the original error is `cause`. */
export class TokenProviderError extends Error {
  constructor(cause) {
    // The error's name only: a provider's own message may quote a credential or a token.
    super(`token provider failed: ${cause?.name ?? typeof cause}`, { cause });
    this.name = 'TokenProviderError';
  }
}

export class ConnectionClosedError extends Error {
  constructor(code, reason) {
    super(`connection closed (${code}${reason ? `: ${reason}` : ''})`);
    this.name = 'ConnectionClosedError';
    this.code = code;
    this.reason = reason;
  }
}

/**
 * One member of a document, from a MEMBER array (section 4; later elements are ignored). A v1
 * relay's MEMBER has 13 elements: no kind (a person) and no status.
 */
export function memberFromWire(m) {
  const kind = typeof m[13] === 'number' ? m[13] : Kind.PERSON;
  return {
    sid: m[0],
    userId: m[1],
    name: m[2],
    avatar: m[3],
    color: m[4],
    activity: m[5],
    disconnected: m[5] === Activity.DISCONNECTED,
    typing: m[6],
    focused: m[7],
    cursor: m[8] ? { line: m[8][0], col: m[8][1], off: m[8][2] } : null,
    selection: m[9] ? { line: m[9][0], col: m[9][1], off: m[9][2], backward: m[9][3] } : null,
    viewport: m[10] ? { top: m[10][0], bottom: m[10][1], pct: m[10][2] } : null,
    connectedAtMs: m[11],
    lastActiveMs: m[12],
    kind,
    agent: kind === Kind.AGENT,
    status: statusFromWire(m[14]),
  };
}

// An empty status is no status (setStatus('') clears it too).
const statusFromWire = (s) => (typeof s === 'string' && s !== '' ? s : null);

/** One entry of JOINED's `recent` (v1.1), or null for one that is not an array. */
function recentFromWire(r) {
  if (!Array.isArray(r) || typeof r[0] !== 'string') return null;
  return {
    userId: r[0], name: r[1], avatar: r[2] ?? null, color: r[3], leftAtMs: r[4],
    reason: typeof r[5] === 'number' ? r[5] : null,
  };
}

/**
 * Members grouped by user, in order of first appearance: {userId, name, avatar, color, kind,
 * agent, sessions}. Name, avatar and color are the first session's; a user with any agent
 * session is an agent.
 */
function groupUsers(members) {
  const users = new Map();
  for (const m of members) {
    let user = users.get(m.userId);
    if (user === undefined) {
      user = { userId: m.userId, name: m.name, avatar: m.avatar, color: m.color, kind: m.kind,
        agent: m.agent, sessions: [] };
      users.set(m.userId, user);
    }
    if (m.agent && !user.agent) {
      user.kind = Kind.AGENT;
      user.agent = true;
    }
    user.sessions.push(m);
  }
  return users;
}

/** The user of `member` as it was before it left: no sessions any more. */
const goneUser = (member) => ({ ...groupUsers([member]).get(member.userId), sessions: [] });

/**
 * The status text to send: null (clear) for null, undefined or ''; a string of at most
 * MAX_STATUS_CHARS code points (what the relay counts), else RangeError; TypeError otherwise.
 */
function checkStatus(text) {
  if (text === null || text === undefined || text === '') return null;
  if (typeof text !== 'string') throw new TypeError(`a status is a string, not ${typeof text}`);
  const chars = [...text].length;
  if (chars > MAX_STATUS_CHARS) {
    throw new RangeError(`a status is at most ${MAX_STATUS_CHARS} characters, not ${chars}`);
  }
  return text;
}

const isMap = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const samePos = (a, b) => (a === null || b === null ? a === b
  : a.line === b.line && a.col === b.col && a.off === b.off);
const sameSelection = (a, b) => samePos(a, b) && (a === null || a.backward === b.backward);
const sameViewport = (a, b) => (a === null || b === null ? a === b
  : a.top === b.top && a.bottom === b.bottom && a.pct === b.pct);

function cursorFrame(handle, cursor, selection) {
  if (cursor === null) return [CURSOR, handle];
  return selection
    ? [CURSOR, handle, cursor.line, cursor.col, cursor.off, selection.line, selection.col,
      selection.off, Boolean(selection.backward)]
    : [CURSOR, handle, cursor.line, cursor.col, cursor.off];
}

/**
 * At most one send per `intervalMs`, and the last value offered is always sent (trailing
 * edge): the first offer after a quiet interval goes at once, later ones replace each other
 * until the interval has passed. `send(value)` does the sending.
 */
export class Throttle {
  constructor(intervalMs, send, clock = () => performance.now()) {
    this.intervalMs = intervalMs;
    this.send = send;
    this.clock = clock;
    this.last = -Infinity;
    this.pending = undefined;
    this.timer = null;
  }

  offer(value) {
    const now = this.clock();
    if (this.timer === null && now - this.last >= this.intervalMs) {
      this.last = now;
      this.send(value);
      return;
    }
    this.pending = value;
    if (this.timer === null) {
      this.timer = setTimeout(() => this.flush(), Math.max(0, this.last + this.intervalMs - now));
    }
  }

  flush() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.pending !== undefined) {
      const value = this.pending;
      this.pending = undefined;
      this.last = this.clock();
      this.send(value);
    }
  }

  cancel() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.pending = undefined;
  }
}

/**
 * The silence rule of one connection: `received()` on every frame; after `intervalMs` of
 * silence `ping()` is called, and after `intervalMs` more of silence `lost()` (once, then it
 * stops). One timer at a time, re-armed from the time of the last frame, never counted: a
 * timer that fires late (a throttled background tab) finds the frames that came meanwhile.
 */
export class Keepalive {
  constructor(intervalMs, { ping, lost }, clock = () => performance.now(),
    timers = { set: (fn, ms) => setTimeout(fn, ms), clear: (t) => clearTimeout(t) }) {
    this.intervalMs = intervalMs;
    this.ping = ping;
    this.lost = lost;
    this.clock = clock;
    this.timers = timers;
    this.lastReceived = 0;
    this.pingAt = null; // when the unanswered PING went, or null
    this.rechecked = false;
    this.timer = null;
    this.due = 0;
  }

  start() {
    this.lastReceived = this.clock();
    this.pingAt = null;
    this.#arm(this.intervalMs);
  }

  /** A frame came (any frame): the cost per frame is this one assignment. */
  received() {
    this.lastReceived = this.clock();
  }

  stop() {
    if (this.timer !== null) this.timers.clear(this.timer);
    this.timer = null;
  }

  #arm(ms) {
    this.due = this.clock() + ms;
    this.timer = this.timers.set(() => this.#check(), ms);
  }

  #check() {
    this.timer = null;
    const now = this.clock();
    const late = now - this.due > this.intervalMs;
    if (this.pingAt !== null && this.lastReceived >= this.pingAt) this.pingAt = null;
    if (this.pingAt === null) {
      const quiet = now - this.lastReceived;
      if (quiet < this.intervalMs) {
        this.#arm(this.intervalMs - quiet);
        return;
      }
      this.pingAt = now;
      this.rechecked = false;
      this.ping();
      if (this.timer === null) this.#arm(this.intervalMs); // ping() may have stopped it
      return;
    }
    const waited = now - this.pingAt;
    if (waited < this.intervalMs) {
      this.#arm(this.intervalMs - waited);
      return;
    }
    if (late && !this.rechecked) {
      this.rechecked = true;
      this.#arm(Math.min(KEEPALIVE_RECHECK_MS, this.intervalMs));
      return;
    }
    this.lost();
  }
}

/** A document this connection has open (one JOIN handle). */
export class PresenceDocument extends EventTarget {
  constructor(client, handle, docId) {
    super();
    this.client = client;
    this.handle = handle;
    this.docId = docId;
    this.sid = null;
    this.members = new Map(); // sid -> member, own session included
    this.recent = []; // users who left a little while ago, newest first (v1.1)
    this.open = false;
    // What this session last asked for (undefined: never), kept because frames sent while
    // disconnected are lost: after a JOINED, whatever the relay's snapshot of this session
    // lacks is sent again (reconcile).
    this.mine = {
      cursor: undefined, selection: null, viewport: undefined,
      typingUntil: 0, typingStopped: false, focused: true, status: undefined,
    };
    this.focusSent = true; // the relay's view of this session's focus (true at a join)
    const settings = client.settings;
    this.typingDebounceMs = settings.typing_debounce_ms ?? 500;
    this.cursorThrottle = new Throttle(settings.cursor_throttle_ms ?? 50,
      (frame) => this.#send(frame));
    // One TYPING per keystroke would be wasteful: one per half debounce keeps the relay's
    // debounce alive, and the trailing edge restarts it from the last keystroke.
    this.typingThrottle = new Throttle(Math.max(1, this.typingDebounceMs / 2),
      (frame) => this.#send(frame));
  }

  get me() {
    return this.sid === null ? null : (this.members.get(this.sid) ?? null);
  }

  /** Members other than this session, by sid. */
  others() {
    return new Map([...this.members].filter(([sid]) => sid !== this.sid));
  }

  /**
   * The members grouped by user (this document's own sessions included, as in `members`), in
   * order of first appearance: userId -> {userId, name, avatar, color, kind, agent, sessions}.
   * A new Map each call, made from `members`.
   */
  users() {
    return groupUsers(this.members.values());
  }

  moveCursor(line, col, off, selection = null) {
    this.mine.cursor = { line, col, off };
    this.mine.selection = selection
      ? { line: selection.line, col: selection.col, off: selection.off,
        backward: Boolean(selection.backward) }
      : null;
    this.cursorThrottle.offer(cursorFrame(this.handle, this.mine.cursor, this.mine.selection));
  }

  clearCursor() {
    this.mine.cursor = null;
    this.mine.selection = null;
    this.cursorThrottle.offer([CURSOR, this.handle]);
  }

  /** A keystroke: the relay shows this member typing until typing_debounce_ms after the last. */
  typed() {
    this.mine.typingUntil = performance.now() + this.typingDebounceMs;
    this.mine.typingStopped = false;
    this.typingThrottle.offer([TYPING, this.handle]);
  }

  /** Stop at once (focus lost, message sent). */
  stopTyping() {
    this.mine.typingUntil = 0;
    this.mine.typingStopped = true;
    this.typingThrottle.cancel();
    this.#send([TYPING, this.handle, false]);
  }

  setViewport(top, bottom, pct) {
    this.mine.viewport = { top, bottom, pct };
    // A float64 even when integral, as the protocol wants: 50 -> 50.0 is not expressible in
    // JS, and the relay accepts an integer percentage too (docs/protocol.md, VIEWPORT).
    this.#send([VIEWPORT, this.handle, top, bottom, pct]);
  }

  /**
   * A short text shown next to this member ("presenting", "thinking"); null, undefined or ''
   * clears it. At most MAX_STATUS_CHARS characters (RangeError), a string (TypeError). Kept,
   * and sent again after a reconnect if the relay's snapshot lacks it.
   */
  setStatus(text) {
    const status = checkStatus(text);
    this.mine.status = status;
    this.#send([STATUS, this.handle, status]);
  }

  /**
   * The editor gained or lost focus. What the relay is told is this and the page's own state
   * together (a hidden or blurred page is unfocused whatever the editor says), and only when
   * that changes.
   */
  setFocus(focused) {
    this.mine.focused = Boolean(focused);
    this.syncFocus();
  }

  /** Send FOCUS if the effective focus differs from what the relay last heard. */
  syncFocus() {
    const focused = this.mine.focused && this.client.pageActive;
    if (focused === this.focusSent) return;
    this.focusSent = focused;
    this.#send([FOCUS, this.handle, focused]);
  }

  async leave() {
    if (!this.open) return;
    this.cursorThrottle.flush();
    this.typingThrottle.cancel();
    this.#send([LEAVE, this.handle]);
    this.open = false;
    this.client.forget(this);
  }

  #send(frame) {
    if (this.open) this.client.send(frame);
  }

  // ---------------------------------------------------------------- from the client

  applyJoined(sid, members, recent, resync) {
    this.sid = sid;
    this.open = true;
    this.members = membersFromWire(members);
    this.#setRecent(recent);
    if (resync) this.#emit('resynced', { members: this.others(), resumed: false });
  }

  /**
   * A resume's JOINED: the same session, a fresh snapshot. It replaces the member list, and
   * only real differences become events: a member that is still there (it may have been
   * DISCONNECTED meanwhile, or moved) never gets a left and a joined.
   */
  applySnapshot(sid, members, recent) {
    const before = this.members;
    const usersBefore = groupUsers(before.values());
    this.sid = sid;
    this.open = true;
    this.members = membersFromWire(members);
    this.#setRecent(recent);
    const usersNow = this.users();
    const arrived = new Set(); // users announced: a user with two new sessions comes once
    for (const [s, member] of this.members) {
      const old = before.get(s);
      if (old === undefined) {
        this.#emitFor(s, 'joined', { member });
        // A user that had another session before the drop did not arrive: no news.
        const userId = member.userId;
        if (!usersBefore.has(userId) && !arrived.has(userId)) {
          arrived.add(userId);
          this.#emitUser('userjoined', { user: usersNow.get(userId), member });
        }
      } else {
        this.#emitChanges(old, member);
      }
    }
    for (const [s, member] of before) {
      // It left while this page was away: the event (and its reason) went with the old socket.
      if (!this.members.has(s)) this.#emitFor(s, 'left', { sid: s, member, reason: undefined });
    }
    for (const [userId, user] of usersBefore) {
      if (usersNow.has(userId)) continue;
      const member = user.sessions[user.sessions.length - 1];
      this.#emitUser('userleft', { user: goneUser(member), member, reason: undefined });
    }
    this.#emit('resynced', { members: this.others(), resumed: true });
  }

  // JOINED's `recent` (absent from a v1 relay: none), without anyone in the document now.
  #setRecent(recent) {
    const present = new Set([...this.members.values()].map((m) => m.userId));
    this.recent = (Array.isArray(recent) ? recent : []).map(recentFromWire)
      .filter((r) => r !== null && !present.has(r.userId)).slice(0, MAX_RECENT);
  }

  #emitChanges(old, now) {
    const sid = now.sid;
    if (!samePos(old.cursor, now.cursor) || !sameSelection(old.selection, now.selection)) {
      this.#emitFor(sid, 'cursor', { sid, cursor: now.cursor, selection: now.selection });
    }
    if (old.typing !== now.typing) this.#emitFor(sid, 'typing', { sid, typing: now.typing });
    if (!sameViewport(old.viewport, now.viewport)) {
      this.#emitFor(sid, 'viewport', { sid, viewport: now.viewport });
    }
    if (old.activity !== now.activity) {
      const { activity, disconnected } = now;
      this.#emitFor(sid, 'activity', { sid, activity, disconnected });
    }
    if (old.focused !== now.focused) this.#emitFor(sid, 'focus', { sid, focused: now.focused });
    if (old.status !== now.status) this.#emitFor(sid, 'status', { sid, status: now.status });
  }

  /**
   * After a JOINED (a first join, a rejoin or a resume): send what the relay's snapshot of this
   * session lacks. Frames sent while disconnected are lost, and the snapshot says exactly what
   * arrived, so only the differences go: re-sending an unchanged cursor would count as an
   * action and wake an Idle member.
   */
  reconcile() {
    const me = this.me;
    if (me === null) return;
    const m = this.mine;
    if (m.cursor !== undefined
      && !(samePos(m.cursor, me.cursor) && sameSelection(m.selection, me.selection))) {
      this.cursorThrottle.offer(cursorFrame(this.handle, m.cursor, m.selection));
    }
    if (m.viewport !== undefined && !sameViewport(m.viewport, me.viewport)) {
      this.#send([VIEWPORT, this.handle, m.viewport.top, m.viewport.bottom, m.viewport.pct]);
    }
    const typing = performance.now() < m.typingUntil;
    if (typing && !me.typing) this.#send([TYPING, this.handle]);
    else if (!typing && m.typingStopped && me.typing) this.#send([TYPING, this.handle, false]);
    if (m.status !== undefined && m.status !== me.status) {
      this.#send([STATUS, this.handle, m.status]);
    }
    this.focusSent = me.focused;
    this.syncFocus();
  }

  /** One BATCH's events; `serverMs` is its time (when a user who left, left). */
  applyEvents(events, serverMs) {
    for (const e of events) {
      if (!Array.isArray(e)) continue;
      const code = e[0];
      if (code === EV_JOINED) {
        this.#applyJoinedEvent(memberFromWire(e[1]), serverMs);
        continue;
      }
      const sid = e[1];
      const member = this.members.get(sid);
      if (member === undefined) continue; // an event of an unknown sid is ignored
      this.#applyEvent(code, e, sid, member);
      if (code === EV_LEFT && !this.#hasUser(member.userId)) {
        this.#userLeft(member, e[2], serverMs);
      }
    }
  }

  #applyJoinedEvent(member, serverMs) {
    const replaced = this.members.get(member.sid);
    const isNew = !this.#hasUser(member.userId);
    this.members.set(member.sid, member); // a known sid is replaced (idempotent apply)
    if (member.sid !== this.sid) this.#emit('joined', { member });
    if (isNew) {
      this.recent = this.recent.filter((r) => r.userId !== member.userId);
      this.#emitUser('userjoined', { user: this.users().get(member.userId), member });
    }
    // A sid known under another user (never from this relay): that user may be gone now.
    if (replaced !== undefined && replaced.userId !== member.userId
      && !this.#hasUser(replaced.userId)) {
      this.#userLeft(replaced, undefined, serverMs);
    }
  }

  // The last session of a user left: the user left, and is the most recent of `recent`.
  #userLeft(member, reason, serverMs) {
    const userId = member.userId;
    if (member.sid === this.sid || userId === this.me?.userId) return; // not for our own user
    const user = goneUser(member);
    const entry = { userId, name: user.name, avatar: user.avatar, color: user.color,
      leftAtMs: serverMs, reason: typeof reason === 'number' ? reason : null };
    this.recent = [entry, ...this.recent.filter((r) => r.userId !== userId)].slice(0, MAX_RECENT);
    this.#emitUser('userleft', { user, member, reason });
  }

  #hasUser(userId) {
    for (const m of this.members.values()) if (m.userId === userId) return true;
    return false;
  }

  // Each shape is read by its known prefix: a newer relay may append elements (section 11).
  #applyEvent(code, e, sid, member) {
    switch (code) {
      case EV_CURSOR:
        member.cursor = e.length >= 5 ? { line: e[2], col: e[3], off: e[4] } : null;
        member.selection = e.length >= 9 && typeof e[8] === 'boolean'
          ? { line: e[5], col: e[6], off: e[7], backward: e[8] } : null;
        this.#emitFor(sid, 'cursor', { sid, cursor: member.cursor, selection: member.selection });
        break;
      case EV_LEFT:
        this.members.delete(sid);
        this.#emitFor(sid, 'left', { sid, member, reason: e[2] }); // v1: [3, sid], no reason
        break;
      case EV_TYPING:
        member.typing = e[2];
        this.#emitFor(sid, 'typing', { sid, typing: e[2] });
        break;
      case EV_VIEWPORT:
        member.viewport = { top: e[2], bottom: e[3], pct: e[4] };
        this.#emitFor(sid, 'viewport', { sid, viewport: member.viewport });
        break;
      case EV_ACTIVITY:
        member.activity = e[2];
        member.disconnected = e[2] === Activity.DISCONNECTED;
        this.#emitFor(sid, 'activity', { sid, activity: e[2], disconnected: member.disconnected });
        break;
      case EV_FOCUS:
        member.focused = e[2];
        this.#emitFor(sid, 'focus', { sid, focused: e[2] });
        break;
      case EV_STATUS:
        member.status = statusFromWire(e[2]);
        this.#emitFor(sid, 'status', { sid, status: member.status });
        break;
      default:
        break; // an event code from a newer relay: skip it
    }
  }

  applyError(code, message) {
    this.#emit('error', { code, message });
  }

  close() {
    this.open = false;
    this.cursorThrottle.cancel();
    this.typingThrottle.cancel();
  }

  #emitFor(sid, type, detail) {
    if (sid !== this.sid) this.#emit(type, detail);
  }

  // userjoined / userleft: not for the document's own user (see the header).
  #emitUser(type, detail) {
    if (detail.user.userId !== this.me?.userId) this.#emit(type, detail);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function membersFromWire(members) {
  return new Map(members.map((m) => { const x = memberFromWire(m); return [x.sid, x]; }));
}

/**
 * The last WELCOME's resume_token, kept in sessionStorage so that a reload of this tab can
 * resume (another tab has its own sessionStorage and cannot). The key is scoped by relay URL
 * and `sessionKey`. Every access is guarded: storage may be disabled, full or throwing (a
 * sandboxed frame), and resuming is an optimisation, never a requirement.
 *
 * The record: {token, graceMs, lostAt, unloadedAt, docs: [[handle, docId], ...]}. `lostAt` is
 * when the connection was lost (or the page unloaded), `unloadedAt` is set on pagehide only.
 */
class ResumeStore {
  constructor(storage, key) {
    this.storage = storage;
    this.key = key;
  }

  read() {
    try {
      const raw = this.storage?.getItem(this.key);
      const record = raw ? JSON.parse(raw) : null;
      return isMap(record) ? record : null;
    } catch {
      return null;
    }
  }

  write(record) {
    try {
      this.storage?.setItem(this.key, JSON.stringify(record));
    } catch { /* disabled or full: this tab will not resume after a reload, nothing more */ }
  }

  clear() {
    try {
      this.storage?.removeItem(this.key);
    } catch { /* as in write() */ }
  }
}

function defaultStorage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null; // reading the property itself throws where storage is blocked
  }
}

const withinGrace = (token, graceMs, lostAt) => typeof token === 'string' && token !== ''
  && graceMs > 0 && typeof lostAt === 'number' && Date.now() - lostAt < graceMs;

/**
 * One connection to the relay; reconnects (and resumes or rejoins its documents) unless
 * closed, or closed with one of FATAL_CLOSES.
 *
 * Options: `token` (a string, or a function returning a string or a Promise of one, called
 * before every HELLO; with such a provider the relay ending the connection at the token's
 * `exp` is not fatal: the client reconnects at once with a fresh token and resumes; a
 * provider that throws, rejects or takes longer than `tokenTimeoutMs` is a failed attempt:
 * an `error` event, then the backoff), or `userId`/`name`/`avatar` for an anonymous relay;
 * `reconnect`, `backoffMs`, `maxBackoffMs`, `tokenTimeoutMs`, `WebSocket`;
 * `resume` (default true: resume the relay's session after a drop or a reload),
 * `storage` (where a reload finds the resume token: sessionStorage by default, null for none),
 * `sessionKey` (scopes that storage; default the anonymous `userId`: several clients of one
 * relay in one tab each need their own), `claimWindowMs` (CLAIM_WINDOW_MS);
 * `keepaliveMs` (KEEPALIVE_MS: after this long without a frame, a PING; after as long again,
 * the connection is lost and the client reconnects; 0: no keepalive, see the header).
 */
export class PresenceClient extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = url;
    // An option given as `undefined` is an option left out (`{ keepaliveMs: cfg.keepalive }`
    // with nothing configured must not turn the keepalive off, nor make the backoff NaN).
    const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
    this.options = {
      token: null, userId: null, name: null, avatar: null, reconnect: true,
      backoffMs: 250, maxBackoffMs: 5000, tokenTimeoutMs: 10000,
      WebSocket: globalThis.WebSocket, resume: true, storage: undefined, sessionKey: undefined,
      claimWindowMs: CLAIM_WINDOW_MS, keepaliveMs: KEEPALIVE_MS, ...given,
    };
    this.ws = null;
    this.welcome = null;
    this.settings = {};
    this.documents = new Map(); // handle -> PresenceDocument
    this.pendingJoins = new Map(); // handle -> {doc, resolve, reject, promise, sent, resync}
    this.pings = new Map(); // client_ms -> resolve
    this.nextHandle = 1;
    this.closing = false;
    this.closed = false;
    this.attempt = 0;
    // v1.1 sessions.
    const sessionKey = this.options.sessionKey ?? this.options.userId ?? '';
    this.store = new ResumeStore(
      this.options.storage === undefined ? defaultStorage() : this.options.storage,
      `${STORAGE_PREFIX}${url}${sessionKey === '' ? '' : `#${sessionKey}`}`);
    this.session = null; // {token, graceMs, lostAt} from the last WELCOME
    this.everWelcomed = false;
    this.claimable = new Map(); // docId -> document a resume re-attached, not asked for yet
    this.expected = new Map(); // docId -> handle: re-attached documents whose JOINED is to come
    this.awaiting = new Set(); // handles of this page's documents awaiting their resumed JOINED
    this.claimTimer = null;
    this.retryTimer = null;
    this.unloading = false;
    this.windowFocused = true; // until a blur says otherwise (headless pages never had focus)
    this.pageActive = this.#pageActiveNow();
    this.pageTimer = null;
    this.listeners = null;
    this.#listen();
  }

  get connected() {
    return this.ws !== null && this.ws.readyState === 1 && this.welcome !== null;
  }

  /** Open the socket, send HELLO, resolve with this client on WELCOME. */
  start() {
    return new Promise((resolve, reject) => this.#open(resolve, reject));
  }

  /**
   * Open a document: resolves with it on JOINED, rejects with RelayError on ERROR. A document
   * already open (or being joined) is that one; after a reload, one the resumed session
   * re-attached is taken over without a JOIN.
   */
  join(docId) {
    if (this.closed || this.closing) {
      return Promise.reject(new ConnectionClosedError(1000, 'closed'));
    }
    const open = this.#openDocument(docId);
    if (open !== null) return Promise.resolve(open);
    for (const p of this.pendingJoins.values()) {
      if (p.doc.docId === docId && p.promise) return p.promise;
    }
    const claimed = this.#claim(docId);
    if (claimed !== null) return Promise.resolve(claimed);
    // A document the resumed connection holds waits on its handle: the JOINED the resume
    // sends for it answers this join (#sendJoins holds the JOIN back meanwhile).
    const held = this.expected.get(docId);
    const free = held !== undefined && !this.pendingJoins.has(held) && !this.documents.has(held);
    const doc = new PresenceDocument(this, free ? held : this.#freeHandle(), docId);
    const pending = { doc, sent: false, resync: false };
    pending.promise = new Promise((resolve, reject) => {
      pending.resolve = resolve;
      pending.reject = reject;
    });
    this.pendingJoins.set(doc.handle, pending);
    this.#sendJoins();
    return pending.promise;
  }

  /** Round trip in ms (PING / PONG). */
  ping() {
    const clientMs = Date.now() + this.pings.size; // unique key while several are pending
    if (!this.connected) return Promise.reject(new ConnectionClosedError(1006, 'not connected'));
    return new Promise((resolve, reject) => {
      this.pings.set(clientMs, { resolve, reject, sent: performance.now() });
      this.send([PING, clientMs]);
    });
  }

  send(frame) {
    if (this.ws !== null && this.ws.readyState === 1) this.ws.send(encode(frame));
  }

  forget(doc) {
    this.documents.delete(doc.handle);
    this.#saveSession();
  }

  /**
   * Leave on purpose: LEAVE every document, then close with 1000, so the others see reason
   * LEFT at once (a dropped connection would show DISCONNECTED until the grace ran out). Not
   * called on pagehide: a reload must find the session to resume.
   */
  close() {
    if (this.closed) return Promise.resolve();
    this.closing = true;
    this.store.clear();
    this.#stopTimers();
    const ws = this.ws;
    if (ws === null || ws.readyState === 3) {
      this.#finish(CLOSE_NORMAL, 'closed');
      return Promise.resolve();
    }
    if (this.connected) this.#leaveAll();
    return new Promise((resolve) => {
      this.addEventListener('closed', () => resolve(), { once: true });
      ws.close(CLOSE_NORMAL, 'bye');
    });
  }

  #leaveAll() {
    const handles = [...this.documents.keys(), ...[...this.claimable.values()].map((d) => d.handle),
      ...[...this.pendingJoins].filter(([, p]) => p.sent).map(([h]) => h)];
    for (const h of handles) this.send([LEAVE, h]);
  }

  // ---------------------------------------------------------------- the socket

  get #hasProvider() {
    return typeof this.options.token === 'function';
  }

  // `resolve`/`reject` are start()'s (the first connect); null for a reconnect.
  #open(resolve, reject) {
    if (!this.#hasProvider) {
      this.#openSocket(this.options.token, resolve, reject);
      return;
    }
    // The token first, before the socket: the relay gives HELLO only auth_timeout_ms.
    this.#nextToken().then((token) => {
      if (this.closing) {
        if (reject) reject(new ConnectionClosedError(1000, 'closed'));
        return;
      }
      this.#openSocket(token, resolve, reject);
    }, (err) => {
      const failure = new TokenProviderError(err);
      if (reject) { // the first connect: no retry, the caller decides
        this.closed = true;
        this.#unlisten();
        reject(failure);
        return;
      }
      if (this.closing) return;
      this.#emit('error', { code: null, message: failure.message });
      this.#retry(false);
    });
  }

  async #nextToken() {
    let timer;
    const timeout = new Promise((_, rej) => {
      // Bounded: a token service that never answers must not stall reconnecting forever.
      timer = setTimeout(() => rej(new DOMException('token provider timed out', 'TimeoutError')),
        this.options.tokenTimeoutMs);
    });
    let token;
    try {
      token = await Promise.race([Promise.resolve().then(() => this.options.token()), timeout]);
    } finally {
      clearTimeout(timer);
    }
    if (typeof token !== 'string' || token === '') {
      throw new TypeError('the token provider returned no token string');
    }
    return token;
  }

  // Exponential backoff with jitter (0.5x-1.5x): after a relay restart, thousands of clients
  // must not all come back in the same millisecond. `atOnce` skips it (and leaves the attempt
  // count alone): a token that expired is no reason to wait.
  #retry(atOnce) {
    let delay = 0;
    if (!atOnce) {
      const base = Math.min(this.options.maxBackoffMs, this.options.backoffMs * 2 ** this.attempt);
      delay = base * (0.5 + Math.random());
      this.attempt += 1;
    }
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (!this.closing) this.#open(null, null);
    }, delay);
  }

  #helloInfo() {
    const o = this.options;
    const info = { sdk: SDK };
    if (o.userId !== null) info.user_id = o.userId;
    if (o.name !== null) info.name = o.name;
    if (o.avatar !== null) info.avatar = o.avatar;
    const resume = this.#resumeToken();
    if (resume !== null) info.resume = resume;
    return info;
  }

  /**
   * The token to resume with, or null. A reconnect of this page uses the last WELCOME's,
   * within the grace of when the connection was lost. The first connect of a page uses the
   * stored one, and only if the page that stored it unloaded (pagehide) within the grace: a
   * record without `unloadedAt` belongs to a page still open (a duplicated tab copies
   * sessionStorage), and resuming it would take that tab's session over (4409).
   */
  #resumeToken() {
    if (!this.options.resume) return null;
    if (this.everWelcomed) {
      const s = this.session;
      return s !== null && withinGrace(s.token, s.graceMs, s.lostAt) ? s.token : null;
    }
    const record = this.store.read();
    if (record === null || typeof record.unloadedAt !== 'number'
      || !withinGrace(record.token, record.graceMs, record.lostAt ?? record.unloadedAt)) {
      return null;
    }
    const docs = Array.isArray(record.docs) ? record.docs : [];
    this.expected = new Map(docs.filter(Array.isArray).map(([h, docId]) => [docId, h]));
    return record.token;
  }

  #openSocket(token, resolve, reject) {
    const ws = new this.options.WebSocket(this.url, PROTOCOL);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.welcome = null;
    let settled = false; // WELCOME came: this socket's HELLO succeeded
    let welcomedAt = 0;
    const keepaliveMs = Number(this.options.keepaliveMs) || 0;
    const keepalive = keepaliveMs > 0 ? new Keepalive(keepaliveMs, {
      ping: () => { if (this.ws === ws) this.send([PING, Date.now()]); },
      // Silent through a PING: the network is gone. Its closing handshake would never end, so
      // the socket is let go (close() still sent, should the relay hear it: not 1000, which
      // would be a deliberate leave) and this is a drop like any other.
      lost: () => {
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try { ws.close(); } catch { /* nothing to do: it is let go either way */ }
        onClose({ code: 1006, reason: 'keepalive timeout' });
      },
    }) : null;
    ws.onopen = () => {
      ws.send(encode([HELLO, 1, token, this.#helloInfo()]));
    };
    ws.onmessage = (event) => {
      keepalive?.received(); // any frame at all, even one that does not decode
      let frame;
      try {
        frame = decode(new Uint8Array(event.data));
      } catch (err) {
        this.#emit('error', { code: null, message: `undecodable frame: ${err.message}` });
        return;
      }
      if (!Array.isArray(frame)) return;
      if (frame[0] === WELCOME && !settled) {
        settled = true;
        welcomedAt = performance.now();
        this.attempt = 0;
        keepalive?.start();
        this.#welcomed(frame);
        if (resolve) resolve(this);
        return;
      }
      this.#dispatch(frame);
    };
    const onClose = (event) => {
      keepalive?.stop();
      if (this.ws === ws) this.ws = null;
      if (settled) this.#lost();
      // The relay ended a welcomed connection at its token's `exp`: a provider can renew it.
      const renew = settled && this.#hasProvider && event.code === CLOSE_UNAUTHENTICATED
        && event.reason === TOKEN_EXPIRED;
      const reconnect = this.options.reconnect && !this.closing
        && (renew || !FATAL_CLOSES.has(event.code)) && (settled || !resolve);
      const gone = new ConnectionClosedError(event.code, event.reason);
      for (const { reject: rj } of this.pendingJoins.values()) if (rj) rj(gone);
      this.pendingJoins.clear();
      for (const p of this.pings.values()) p.reject(gone);
      this.pings.clear();
      if (!settled && resolve) {
        settled = true;
        reject(new ConnectionClosedError(event.code, event.reason));
      }
      if (this.unloading) return; // the page is going: the next page resumes, if it wants
      if (reconnect) {
        this.#emit('disconnected', { code: event.code, reason: event.reason });
        this.#retry(renew && performance.now() - welcomedAt >= RENEW_AT_ONCE_AFTER_MS);
        return;
      }
      // Evicted (4400, 4401, 4429...): the session is gone, nothing left to resume. After
      // 4409 the session lives on in the newer connection, whose record this may be.
      if (FATAL_CLOSES.has(event.code) && event.code !== CLOSE_RESUMED) this.store.clear();
      this.#finish(event.code, event.reason);
    };
    ws.onclose = onClose;
  }

  #finish(code, reason) {
    this.closed = true;
    this.#stopTimers();
    const gone = new ConnectionClosedError(code, reason);
    for (const { reject } of this.pendingJoins.values()) if (reject) reject(gone);
    this.pendingJoins.clear();
    for (const doc of [...this.documents.values(), ...this.claimable.values()]) doc.close();
    this.claimable.clear();
    this.#unlisten();
    this.#emit('closed', { code, reason });
  }

  // A welcomed connection ended: note when (the grace runs from here), and forget what only
  // that connection knew; a resume brings the re-attached documents back as JOINEDs.
  #lost() {
    clearTimeout(this.claimTimer);
    this.claimTimer = null;
    for (const doc of this.claimable.values()) doc.close();
    this.claimable.clear();
    this.awaiting.clear();
    this.expected.clear();
    if (this.session !== null && this.session.lostAt === null) {
      this.session.lostAt = Date.now();
      this.#saveSession();
    }
  }

  #welcomed(frame) {
    const settings = isMap(frame[5]) ? frame[5] : {}; // unknown keys are ignored
    const resumed = settings.resumed === true;
    const reconnect = this.everWelcomed;
    this.everWelcomed = true;
    this.welcome = { connectionId: frame[2], user: frame[3], serverMs: frame[4], resumed };
    this.settings = settings;
    const token = settings.resume_token;
    this.session = typeof token === 'string' && token !== ''
      ? { token, graceMs: Number(settings.reconnect_grace_ms) || 0, lostAt: null }
      : null;
    if (this.session === null) this.store.clear();
    if (resumed) {
      // The relay re-attached the old connection's documents and sends one JOINED for each:
      // no JOIN for them. Ours wait for theirs; the window ends what nobody claims.
      for (const h of this.documents.keys()) this.awaiting.add(h);
      this.claimTimer = setTimeout(() => this.#endClaims(), this.options.claimWindowMs);
    } else {
      this.expected.clear();
      if (reconnect) this.#rejoin();
    }
    this.#saveSession();
    this.#sendJoins();
    if (reconnect) this.#emit('reconnected', { resumed });
  }

  // The claim window is over: leave what the resume re-attached and this page never asked
  // for; join afresh those of ours that the resume did not bring back.
  #endClaims() {
    this.claimTimer = null;
    for (const doc of this.claimable.values()) {
      this.send([LEAVE, doc.handle]);
      doc.close();
    }
    this.claimable.clear();
    for (const h of this.awaiting) {
      const doc = this.documents.get(h);
      if (doc === undefined) continue;
      this.pendingJoins.set(h, { doc, sent: true, resync: true });
      this.send([JOIN, h, doc.docId]);
    }
    this.awaiting.clear();
    this.expected.clear();
    this.#sendJoins();
    this.#saveSession();
  }

  #rejoin() {
    for (const doc of this.documents.values()) {
      this.pendingJoins.set(doc.handle, { doc, sent: true, resync: true });
      this.send([JOIN, doc.handle, doc.docId]);
    }
  }

  // JOIN what join() asked for while there was no connection, except documents a resume is
  // about to re-attach (their JOINED is on its way; a JOIN would be ERROR 8).
  #sendJoins() {
    if (!this.connected) return;
    for (const p of this.pendingJoins.values()) {
      if (p.sent || this.expected.has(p.doc.docId)) continue;
      p.sent = true;
      this.send([JOIN, p.doc.handle, p.doc.docId]);
    }
  }

  #openDocument(docId) {
    for (const doc of this.documents.values()) if (doc.docId === docId) return doc;
    return null;
  }

  // A handle no document of ours uses, nor one the resumed connection is known to hold.
  #freeHandle() {
    const used = new Set([...this.documents.keys(), ...this.pendingJoins.keys(),
      ...[...this.claimable.values()].map((d) => d.handle), ...this.expected.values()]);
    for (let i = 0; i < 65535; i += 1) {
      const h = this.nextHandle;
      this.nextHandle = (this.nextHandle % 65535) + 1;
      if (!used.has(h)) return h;
    }
    throw new RangeError('no free document handle');
  }

  #claim(docId) {
    const doc = this.claimable.get(docId);
    if (doc === undefined) return null;
    this.claimable.delete(docId);
    this.documents.set(doc.handle, doc);
    doc.reconcile();
    this.#saveSession();
    return doc;
  }

  #saveSession() {
    const s = this.session;
    if (s === null || this.closing || this.closed) return;
    const docs = [...this.documents.values(), ...this.claimable.values()]
      .map((d) => [d.handle, d.docId]);
    this.store.write({
      token: s.token, graceMs: s.graceMs, lostAt: s.lostAt, unloadedAt: null, docs,
    });
  }

  #dispatch(frame) {
    switch (frame[0]) {
      case BATCH: {
        for (const doc of [...this.documents.values(), ...this.claimable.values()]) {
          if (doc.docId !== frame[1] || !Array.isArray(frame[3])) continue;
          doc.applyEvents(frame[3], frame[2]);
        }
        break;
      }
      case JOINED:
        this.#onJoined(frame[1], frame[2], frame[3], Array.isArray(frame[4]) ? frame[4] : [],
          frame[5]);
        break;
      case ERROR:
        this.#onError(frame[1], frame[2], frame[3]);
        break;
      case PONG: {
        const p = this.pings.get(frame[1]);
        if (p !== undefined) {
          this.pings.delete(frame[1]);
          p.resolve(performance.now() - p.sent);
        }
        break;
      }
      default:
        break; // a message type from a newer relay: skip it
    }
  }

  // `recent` is v1.1's (undefined from a v1 relay).
  #onJoined(h, docId, sid, members, recent) {
    const pending = this.pendingJoins.get(h);
    if (pending !== undefined && pending.doc.docId === docId) {
      this.pendingJoins.delete(h);
      this.expected.delete(docId); // a held join may be answered by the resume's JOINED
      if (pending.superseded) { // a resume re-attached this document under another handle
        this.send([LEAVE, h]);
        return;
      }
      pending.doc.applyJoined(sid, members, recent, Boolean(pending.resync));
      this.documents.set(h, pending.doc);
      pending.doc.reconcile();
      this.#saveSession();
      if (pending.resolve) pending.resolve(pending.doc);
      return;
    }
    if (!this.welcome?.resumed) return; // a JOINED nobody asked for
    const known = this.documents.get(h);
    if (known !== undefined && known.docId === docId) { // ours, resumed: same handle and sid
      this.awaiting.delete(h);
      known.applySnapshot(sid, members, recent);
      known.reconcile();
      return;
    }
    this.#adopt(h, docId, sid, members, recent);
  }

  // A document of the resumed connection this page does not have open: the page before a
  // reload had it, or a JOIN was in flight when the connection dropped. It waits to be claimed
  // (join()), and is kept current meanwhile.
  #adopt(h, docId, sid, members, recent) {
    this.expected.delete(docId);
    const doc = new PresenceDocument(this, h, docId);
    doc.applyJoined(sid, members, recent, false);
    this.claimable.set(docId, doc);
    const waiting = [...this.pendingJoins.values()].find((p) => p.doc.docId === docId && p.resolve);
    if (waiting !== undefined) {
      // join() was called already: it gets this document. Its own JOIN, if it went, gets
      // ERROR 8 (ignored) or, should the relay allow it, a JOINED that is left at once.
      if (waiting.sent) waiting.superseded = true;
      else this.pendingJoins.delete(waiting.doc.handle);
      const resolve = waiting.resolve;
      waiting.resolve = null;
      waiting.reject = null;
      resolve(this.#claim(docId));
    }
    this.#saveSession();
  }

  #onError(handle, code, message) {
    const pending = handle === null ? undefined : this.pendingJoins.get(handle);
    if (pending === undefined) {
      if (handle !== null && this.documents.has(handle)) {
        this.documents.get(handle).applyError(code, message);
      } else {
        this.#emit('error', { code, message });
      }
      return;
    }
    this.pendingJoins.delete(handle);
    if (pending.superseded) return; // the expected ERROR 8 of a JOIN a resume made useless
    if (code === ALREADY_JOINED && !pending.retried && this.welcome?.resumed && pending.reject) {
      // The handle collided with one the resumed connection holds (a stale record): again,
      // under a free handle.
      pending.doc.handle = this.#freeHandle();
      pending.retried = true;
      pending.sent = false;
      this.pendingJoins.set(pending.doc.handle, pending);
      this.#sendJoins();
      return;
    }
    if (pending.reject) {
      pending.reject(new RelayError(code, message, handle));
    } else { // a rejoin after a reconnect was refused: the document is closed
      this.documents.delete(handle);
      pending.doc.close();
      pending.doc.applyError(code, message);
    }
  }

  // ---------------------------------------------------------------- the page

  // Liveness (section 11): a hidden or blurred page sends FOCUS false, so the member turns
  // Away, not gone. pagehide keeps the session for the next page instead of closing it.
  #listen() {
    const win = globalThis.window, doc = globalThis.document;
    if (!win || !doc || typeof win.addEventListener !== 'function') return; // not a page
    const changed = () => this.#pageChanged();
    this.listeners = [
      [doc, 'visibilitychange', changed],
      [win, 'blur', () => { this.windowFocused = false; changed(); }],
      [win, 'focus', () => { this.windowFocused = true; changed(); }],
      [win, 'pagehide', () => this.#onPageHide()],
      [win, 'pageshow', (e) => this.#onPageShow(e)],
      // Back online: try now rather than at the end of a backoff that may have grown long.
      [win, 'online', () => { if (this.retryTimer !== null) this.#retry(true); }],
    ];
    for (const [target, type, fn] of this.listeners) target.addEventListener(type, fn);
  }

  #unlisten() {
    for (const [target, type, fn] of this.listeners ?? []) target.removeEventListener(type, fn);
    this.listeners = null;
  }

  #pageActiveNow() {
    const doc = globalThis.document;
    if (!doc) return true;
    const visible = doc.visibilityState !== 'hidden';
    // hasFocus() is true while focus is in a child frame (whose focus blurs this window).
    const focused = this.windowFocused || (typeof doc.hasFocus === 'function' && doc.hasFocus());
    return visible && focused;
  }

  // Only a change of the combined state is sent. A loss waits PAGE_LOSS_DELAY_MS: a reload
  // blurs and hides the page a moment before pagehide, and that must not tell the others the
  // member looked away (Away takes away_after_blur_ms anyway); a return goes at once.
  #pageChanged() {
    clearTimeout(this.pageTimer);
    const delay = this.#pageActiveNow() ? 0 : PAGE_LOSS_DELAY_MS;
    this.pageTimer = setTimeout(() => {
      this.pageTimer = null;
      if (this.unloading) return;
      const active = this.#pageActiveNow();
      if (active === this.pageActive) return;
      this.pageActive = active;
      for (const doc of this.documents.values()) doc.syncFocus();
    }, delay);
  }

  // The socket is let go, not closed: the record says when, and the next page of this tab
  // resumes within the grace.
  #onPageHide() {
    this.unloading = true;
    const s = this.session;
    if (s === null || this.closing || this.closed) return;
    const record = this.store.read();
    if (record === null || record.token !== s.token) return;
    const now = Date.now();
    record.unloadedAt = now;
    record.lostAt = s.lostAt ?? now;
    this.store.write(record);
  }

  // Back from the back/forward cache: the page lives on, the record is no longer a reload's.
  #onPageShow(event) {
    if (!event.persisted || this.closed) return;
    this.unloading = false;
    this.#saveSession();
    if (this.ws === null && !this.closing && this.retryTimer === null) this.#retry(true);
  }

  #stopTimers() {
    for (const t of [this.claimTimer, this.retryTimer, this.pageTimer]) clearTimeout(t);
    this.claimTimer = this.retryTimer = this.pageTimer = null;
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * Connect and say HELLO: resolves with the client once WELCOME arrived; rejects with
 * ConnectionClosedError when the relay refuses (4401: bad token), TokenProviderError when
 * the token provider fails. Options: see PresenceClient (`token` may be a provider).
 */
export function connect(url, options = {}) {
  return new PresenceClient(url, options).start();
}
