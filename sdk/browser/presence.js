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
// left {sid, member}, cursor {sid, cursor, selection}, typing {sid, typing},
// viewport {sid, viewport}, activity {sid, activity}, focus {sid, focused},
// resynced {members} (after a reconnect), error {code, message}. Events of the document's
// own sid update `doc.me` but are not dispatched. On the client: disconnected {code, reason},
// reconnected, error {code, message}, closed {code, reason}.
//
// Against a relay with a JWT secret pass `token`: a string, or a token provider, a function
// returning a token or a Promise of one, called before every HELLO so that reconnects use a
// fresh token: `connect(url, { token: () => fetch('/presence-token').then((r) => r.text()) })`.

import { decode, encode } from './msgpack.js';

export const SDK = 'js/0.1.0';
export const PROTOCOL = 'presence.v1';

// Message types (docs/protocol.md, sections 2 and 3).
const HELLO = 1, JOIN = 2, LEAVE = 3, CURSOR = 4, TYPING = 5, VIEWPORT = 6, FOCUS = 7, PING = 8;
const WELCOME = 32, JOINED = 33, BATCH = 34, ERROR = 35, PONG = 36;
// BATCH event codes (section 5).
const EV_CURSOR = 1, EV_JOINED = 2, EV_LEFT = 3, EV_TYPING = 4, EV_VIEWPORT = 5;
const EV_ACTIVITY = 6, EV_FOCUS = 7;

export const Activity = Object.freeze({ EDITING: 0, VIEWING: 1, SELECTING: 2, IDLE: 3, AWAY: 4 });
export const ACTIVITY_NAMES = Object.freeze(['Editing', 'Viewing', 'Selecting', 'Idle', 'Away']);

// Close codes after which reconnecting cannot help, because the same client would only be
// closed again: a WebSocket protocol violation (1002, 1007 invalid UTF-8, 1009 too big), 4400
// (relay protocol violation), 4401 (unauthenticated), 4429 (rate-limit abuse). The Python SDK
// (relay/client/connection.py, FATAL_CLOSE_CODES) uses the same set. One exception: with a
// token provider, 4401 "token expired" on a connection that had been welcomed is the relay
// ending it at the token's `exp`, and the client reconnects at once with a fresh token (a
// HELLO refused with 4401 stays fatal: a fresh token did not help).
const FATAL_CLOSES = new Set([1002, 1007, 1009, 4400, 4401, 4429]);
const CLOSE_UNAUTHENTICATED = 4401;
const TOKEN_EXPIRED = 'token expired';
// A connection ended at its token's `exp` after living at least this long reconnects at
// once; a shorter one goes through the backoff, so a provider that hands out tokens about to
// expire cannot make the client reconnect in a tight loop.
const RENEW_AT_ONCE_AFTER_MS = 1000;

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

/** One member of a document, from a MEMBER array (section 4). */
export function memberFromWire(m) {
  return {
    sid: m[0],
    userId: m[1],
    name: m[2],
    avatar: m[3],
    color: m[4],
    activity: m[5],
    typing: m[6],
    focused: m[7],
    cursor: m[8] ? { line: m[8][0], col: m[8][1], off: m[8][2] } : null,
    selection: m[9] ? { line: m[9][0], col: m[9][1], off: m[9][2], backward: m[9][3] } : null,
    viewport: m[10] ? { top: m[10][0], bottom: m[10][1], pct: m[10][2] } : null,
    connectedAtMs: m[11],
    lastActiveMs: m[12],
  };
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

/** A document this connection has open (one JOIN handle). */
export class PresenceDocument extends EventTarget {
  constructor(client, handle, docId) {
    super();
    this.client = client;
    this.handle = handle;
    this.docId = docId;
    this.sid = null;
    this.members = new Map(); // sid -> member, own session included
    this.open = false;
    const settings = client.settings;
    this.cursorThrottle = new Throttle(settings.cursor_throttle_ms ?? 50,
      (frame) => this.#send(frame));
    // One TYPING per keystroke would be wasteful: one per half debounce keeps the relay's
    // debounce alive, and the trailing edge restarts it from the last keystroke.
    this.typingThrottle = new Throttle(Math.max(1, (settings.typing_debounce_ms ?? 500) / 2),
      (frame) => this.#send(frame));
  }

  get me() {
    return this.sid === null ? null : (this.members.get(this.sid) ?? null);
  }

  /** Members other than this session, by sid. */
  others() {
    return new Map([...this.members].filter(([sid]) => sid !== this.sid));
  }

  moveCursor(line, col, off, selection = null) {
    const frame = selection
      ? [CURSOR, this.handle, line, col, off, selection.line, selection.col, selection.off,
        Boolean(selection.backward)]
      : [CURSOR, this.handle, line, col, off];
    this.cursorThrottle.offer(frame);
  }

  clearCursor() {
    this.cursorThrottle.offer([CURSOR, this.handle]);
  }

  /** A keystroke: the relay shows this member typing until typing_debounce_ms after the last. */
  typed() {
    this.typingThrottle.offer([TYPING, this.handle]);
  }

  /** Stop at once (focus lost, message sent). */
  stopTyping() {
    this.typingThrottle.cancel();
    this.#send([TYPING, this.handle, false]);
  }

  setViewport(top, bottom, pct) {
    // A float64 even when integral, as the protocol wants: 50 -> 50.0 is not expressible in
    // JS, and the relay accepts an integer percentage too (docs/protocol.md, VIEWPORT).
    this.#send([VIEWPORT, this.handle, top, bottom, pct]);
  }

  setFocus(focused) {
    this.#send([FOCUS, this.handle, Boolean(focused)]);
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

  applyJoined(sid, members, resync) {
    this.sid = sid;
    this.open = true;
    this.members = new Map(members.map((m) => { const x = memberFromWire(m); return [x.sid, x]; }));
    if (resync) this.#emit('resynced', { members: this.others() });
  }

  applyEvents(events) {
    for (const e of events) {
      const code = e[0];
      if (code === EV_JOINED) {
        const member = memberFromWire(e[1]);
        this.members.set(member.sid, member);  // a known sid is replaced (idempotent apply)
        if (member.sid !== this.sid) this.#emit('joined', { member });
        continue;
      }
      const sid = e[1];
      const member = this.members.get(sid);
      if (member === undefined) continue; // an event of an unknown sid is ignored
      switch (code) {
        case EV_CURSOR:
          member.cursor = e.length >= 5 ? { line: e[2], col: e[3], off: e[4] } : null;
          member.selection = e.length === 9
            ? { line: e[5], col: e[6], off: e[7], backward: e[8] } : null;
          this.#emitFor(sid, 'cursor', { sid, cursor: member.cursor, selection: member.selection });
          break;
        case EV_LEFT:
          this.members.delete(sid);
          this.#emitFor(sid, 'left', { sid, member });
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
          this.#emitFor(sid, 'activity', { sid, activity: e[2] });
          break;
        case EV_FOCUS:
          member.focused = e[2];
          this.#emitFor(sid, 'focus', { sid, focused: e[2] });
          break;
        default:
          break; // an event code from a newer relay: skip it
      }
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

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * One connection to the relay; reconnects (and rejoins its documents) unless closed, or
 * closed with one of FATAL_CLOSES.
 *
 * Options: `token` (a string, or a function returning a string or a Promise of one, called
 * before every HELLO; with such a provider the relay ending the connection at the token's
 * `exp` is not fatal: the client reconnects at once with a fresh token and rejoins; a
 * provider that throws, rejects or takes longer than `tokenTimeoutMs` is a failed attempt:
 * an `error` event, then the backoff), or `userId`/`name`/`avatar` for an anonymous relay;
 * `reconnect`, `backoffMs`, `maxBackoffMs`, `tokenTimeoutMs`, `WebSocket`.
 */
export class PresenceClient extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = {
      token: null, userId: null, name: null, avatar: null, reconnect: true,
      backoffMs: 250, maxBackoffMs: 5000, tokenTimeoutMs: 10000,
      WebSocket: globalThis.WebSocket, ...options,
    };
    this.ws = null;
    this.welcome = null;
    this.settings = {};
    this.documents = new Map(); // handle -> PresenceDocument
    this.pendingJoins = new Map(); // handle -> {resolve, reject, doc}
    this.pings = new Map(); // client_ms -> resolve
    this.nextHandle = 1;
    this.closing = false;
    this.closed = false;
    this.attempt = 0;
  }

  get connected() {
    return this.ws !== null && this.ws.readyState === 1 && this.welcome !== null;
  }

  /** Open the socket, send HELLO, resolve with this client on WELCOME. */
  start() {
    return new Promise((resolve, reject) => this.#open(resolve, reject));
  }

  /** Open a document: resolves with it on JOINED, rejects with RelayError on ERROR. */
  join(docId) {
    if (this.closed) return Promise.reject(new ConnectionClosedError(1000, 'closed'));
    for (const doc of this.documents.values()) {
      if (doc.docId === docId) return Promise.resolve(doc);
    }
    const handle = this.nextHandle;
    this.nextHandle = (this.nextHandle % 65535) + 1;
    const doc = new PresenceDocument(this, handle, docId);
    return new Promise((resolve, reject) => {
      this.pendingJoins.set(handle, { resolve, reject, doc });
      this.send([JOIN, handle, docId]);
    });
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
  }

  close() {
    this.closing = true;
    if (this.ws === null || this.ws.readyState === 3) {
      this.closed = true;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.addEventListener('closed', () => resolve(), { once: true });
      this.ws.close(1000, 'bye');
    });
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
    setTimeout(() => { if (!this.closing) this.#open(null, null); }, delay);
  }

  #openSocket(token, resolve, reject) {
    const ws = new this.options.WebSocket(this.url, PROTOCOL);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.welcome = null;
    let settled = false; // WELCOME came: this socket's HELLO succeeded
    let welcomedAt = 0;
    ws.onopen = () => {
      const o = this.options;
      const info = { sdk: SDK };
      if (o.userId !== null) info.user_id = o.userId;
      if (o.name !== null) info.name = o.name;
      if (o.avatar !== null) info.avatar = o.avatar;
      ws.send(encode([HELLO, 1, token, info]));
    };
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = decode(new Uint8Array(event.data));
      } catch (err) {
        this.#emit('error', { code: null, message: `undecodable frame: ${err.message}` });
        return;
      }
      if (frame[0] === WELCOME && !settled) {
        settled = true;
        welcomedAt = performance.now();
        this.attempt = 0;
        this.welcome = { connectionId: frame[2], user: frame[3], serverMs: frame[4] };
        this.settings = frame[5];
        if (resolve) resolve(this); else this.#rejoin();
        return;
      }
      this.#dispatch(frame);
    };
    ws.onclose = (event) => {
      this.ws = null;
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
      if (reconnect) {
        this.#emit('disconnected', { code: event.code, reason: event.reason });
        this.#retry(renew && performance.now() - welcomedAt >= RENEW_AT_ONCE_AFTER_MS);
        return;
      }
      this.closed = true;
      for (const doc of this.documents.values()) doc.close();
      this.#emit('closed', { code: event.code, reason: event.reason });
    };
  }

  #rejoin() {
    for (const doc of this.documents.values()) {
      this.pendingJoins.set(doc.handle, { resolve: null, reject: null, doc, resync: true });
      this.send([JOIN, doc.handle, doc.docId]);
    }
    this.#emit('reconnected', {});
  }

  #dispatch(frame) {
    switch (frame[0]) {
      case BATCH: {
        for (const doc of this.documents.values()) {
          if (doc.docId === frame[1]) doc.applyEvents(frame[3]);
        }
        break;
      }
      case JOINED: {
        const pending = this.pendingJoins.get(frame[1]);
        if (pending === undefined) break;
        this.pendingJoins.delete(frame[1]);
        pending.doc.applyJoined(frame[3], frame[4], Boolean(pending.resync));
        this.documents.set(frame[1], pending.doc);
        if (pending.resolve) pending.resolve(pending.doc);
        break;
      }
      case ERROR: {
        const [, handle, code, message] = frame;
        const pending = handle === null ? undefined : this.pendingJoins.get(handle);
        if (pending !== undefined) {
          this.pendingJoins.delete(handle);
          if (pending.reject) {
            pending.reject(new RelayError(code, message, handle));
          } else { // a rejoin after a reconnect was refused: the document is closed
            this.documents.delete(handle);
            pending.doc.close();
            pending.doc.applyError(code, message);
          }
        } else if (handle !== null && this.documents.has(handle)) {
          this.documents.get(handle).applyError(code, message);
        } else {
          this.#emit('error', { code, message });
        }
        break;
      }
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
