// Type declarations for presence.js, the presence-relay browser SDK (the `presence-relay`
// package's main module). Written by hand against the JS; test/types/usage.ts checks them
// (`npm run typecheck`). The wire protocol is docs/protocol.md.

// ---------------------------------------------------------------- constants

/** The SDK's name and version, sent in HELLO's `info.sdk`. */
export declare const SDK = 'js/0.1.0';

/** The WebSocket subprotocol the client offers (docs/protocol.md, section 1). */
export declare const PROTOCOL = 'presence.v1';

/** Activity codes, computed by the relay (docs/protocol.md, sections 4 and 5). */
export declare const Activity: Readonly<{
  EDITING: 0;
  VIEWING: 1;
  SELECTING: 2;
  IDLE: 3;
  AWAY: 4;
  /** v1.1: the connection dropped and the relay holds the member's place for a resume. */
  DISCONNECTED: 5;
}>;
/** One of the activity codes this SDK knows (the values of `Activity`). */
export type Activity = (typeof Activity)[keyof typeof Activity];
/**
 * An activity as received: one of `Activity`, or a code a newer relay added (the SDK passes
 * the relay's value through unchecked).
 */
export type ActivityCode = Activity | (number & {});

/** Display names of the activity codes, indexed by code. */
export declare const ACTIVITY_NAMES: readonly [
  'Editing',
  'Viewing',
  'Selecting',
  'Idle',
  'Away',
  'Disconnected',
];

/** Why a member left (the third element of a `left` event, v1.1). */
export declare const LeaveReason: Readonly<{
  /** LEAVE, or a deliberate close (`close()`: LEAVE each document, then close 1000). */
  LEFT: 0;
  /** The connection ended any other way and was not resumed within `reconnect_grace_ms`. */
  LOST: 1;
  /** The node that held the session died and the session was not resumed in time. */
  NODE_DOWN: 2;
  /** The relay closed the connection: 4400, 4401 (token expired), 4408, 4429. */
  EVICTED: 3;
  /** A member set over HTTP reached the end of its `ttl_s`. */
  EXPIRED: 4;
  /** A relay without shared state (memory backend) shut down gracefully. */
  SHUTDOWN: 5;
}>;
/** One of the leave reasons this SDK knows (the values of `LeaveReason`). */
export type LeaveReason = (typeof LeaveReason)[keyof typeof LeaveReason];
/** A leave reason as received: one of `LeaveReason`, or a code a newer relay added. */
export type LeaveReasonCode = LeaveReason | (number & {});

/** Names of the leave reasons, indexed by code. */
export declare const LEAVE_REASON_NAMES: readonly [
  'LEFT',
  'LOST',
  'NODE_DOWN',
  'EVICTED',
  'EXPIRED',
  'SHUTDOWN',
];

/** What a member is (MEMBER's `kind`, v1.1). */
export declare const Kind: Readonly<{
  /** A person at an editor. */
  PERSON: 0;
  /** An agent: a member set over HTTP by a service or a bot. */
  AGENT: 1;
}>;
/** One of the kinds this SDK knows (the values of `Kind`). */
export type Kind = (typeof Kind)[keyof typeof Kind];
/** A kind as received: one of `Kind`, or a code a newer relay added. */
export type KindCode = Kind | (number & {});

/** The longest status text (`setStatus`), in characters: Unicode code points, not bytes. */
export declare const MAX_STATUS_CHARS = 64;

/**
 * After a resumed WELCOME, how long (ms) the documents the relay re-attached wait for this
 * page to ask for them (`join()`); those never asked for are left then. Default of the
 * `claimWindowMs` option.
 */
export declare const CLAIM_WINDOW_MS = 2000;

/**
 * Default of the `keepaliveMs` option: after this long (ms) without any frame received the
 * client sends a PING; after as long again without one, the connection counts as lost.
 */
export declare const KEEPALIVE_MS = 10000;

// ---------------------------------------------------------------- wire data

/** A place in the document: line, column and offset, each an integer in 0..2^32-1. */
export interface Position {
  readonly line: number;
  readonly col: number;
  readonly off: number;
}

/**
 * A selection's anchor (its head is the member's cursor); `backward` is true when the head
 * comes before the anchor.
 */
export interface Selection extends Position {
  readonly backward: boolean;
}

/** The anchor of a selection as `moveCursor` takes it (`backward` defaults to false). */
export interface SelectionInput extends Position {
  readonly backward?: boolean | undefined;
}

/** The lines on screen (`top <= bottom`) and the scroll position in percent, 0..100. */
export interface Viewport {
  readonly top: number;
  readonly bottom: number;
  readonly pct: number;
}

/**
 * One member (session) of a document: one document open in one tab. A user with the
 * document open in two tabs is two members with two sids, and one color. The SDK updates
 * these objects as events arrive; treat them as read-only.
 */
export interface Member {
  /** Session id, unique in the document. */
  readonly sid: number;
  readonly userId: string;
  readonly name: string;
  /** An http/https URL, or null. */
  readonly avatar: string | null;
  /** The color to draw this member in (CSS, `hsl(H, 70%, 50%)`). */
  readonly color: string;
  readonly activity: ActivityCode;
  /** `activity === Activity.DISCONNECTED`: the relay holds its place for a resume. */
  readonly disconnected: boolean;
  readonly typing: boolean;
  readonly focused: boolean;
  /** The caret (the head of the selection), or null. */
  readonly cursor: Position | null;
  /** The selection's anchor, or null. */
  readonly selection: Selection | null;
  readonly viewport: Viewport | null;
  /** Unix ms, the relay's clock. */
  readonly connectedAtMs: number;
  /** Unix ms, the relay's clock. */
  readonly lastActiveMs: number;
  /** A person or an agent (v1.1; `Kind.PERSON` from a v1 relay). */
  readonly kind: KindCode;
  /** `kind === Kind.AGENT`: a member set over HTTP (a bot, a service). */
  readonly agent: boolean;
  /** A short text shown next to the member ("presenting"), or null (v1.1). */
  readonly status: string | null;
}

/**
 * A MEMBER array as the relay sends it (docs/protocol.md, section 4): 13 elements from a v1
 * relay, 15 from a v1.1 relay (`kind`, `status`); later elements are ignored.
 */
export type MemberWire = readonly [
  sid: number,
  userId: string,
  name: string,
  avatar: string | null,
  color: string,
  activity: number,
  typing: boolean,
  focused: boolean,
  cursor: readonly [line: number, col: number, off: number] | null,
  selection: readonly [line: number, col: number, off: number, backward: boolean] | null,
  viewport: readonly [top: number, bottom: number, pct: number] | null,
  connectedAtMs: number,
  lastActiveMs: number,
  kind?: number,
  status?: string | null,
  ...rest: unknown[],
];

/** One member of a document, from a MEMBER array (section 4; later elements are ignored). */
export declare function memberFromWire(m: MemberWire): Member;

/**
 * WELCOME's settings (docs/protocol.md, section 3): the throttles an SDK reads instead of
 * hard-coding them, and the v1.1 session keys. Unknown keys are kept and ignored.
 */
export interface Settings {
  readonly batch_ms: number;
  readonly cursor_throttle_ms: number;
  readonly typing_debounce_ms: number;
  readonly max_frame_bytes: number;
  readonly max_documents: number;
  readonly max_frames_per_s: number;
  readonly max_frames_burst: number;
  readonly activity_timeout_ms?: number;
  /** v1.1: how long (ms) the relay holds a dropped session for a resume. */
  readonly reconnect_grace_ms?: number;
  /** v1.1: opaque, valid once; the client keeps it to resume. */
  readonly resume_token?: string;
  /** v1.1: this connection resumed an earlier one. */
  readonly resumed?: boolean;
  readonly [key: string]: unknown;
}

/** WELCOME's `user` map: who the relay says this connection is. */
export interface WelcomeUser {
  readonly id: string;
  readonly name: string;
  readonly avatar: string | null;
  /** The user's preferred color; inside a document, draw the member's `color`. */
  readonly color: string;
  readonly workspace: string;
  readonly [key: string]: unknown;
}

/** The last WELCOME, as the client keeps it (`client.welcome`). */
export interface Welcome {
  readonly connectionId: string;
  readonly user: WelcomeUser;
  /** The relay's clock at WELCOME, Unix ms. */
  readonly serverMs: number;
  readonly resumed: boolean;
}

// ---------------------------------------------------------------- errors

/** The relay answered with ERROR (e.g. a refused JOIN: 4 FORBIDDEN, 5 DOCUMENT_AT_CAPACITY). */
export declare class RelayError extends Error {
  constructor(code: number, message: string, handle?: number | null);
  readonly name: 'RelayError';
  /** The ERROR code (docs/protocol.md, section 6). */
  readonly code: number;
  /** The relay's message: for logs, not for users. */
  readonly relayMessage: string;
  /** The handle the failed frame named, or null. */
  readonly handle: number | null;
}

/** The token provider threw, timed out or gave no string; the original error is `cause`. */
export declare class TokenProviderError extends Error {
  constructor(cause: unknown);
  readonly name: 'TokenProviderError';
  readonly cause: unknown;
}

/** The connection closed (or never opened) before the request was answered. */
export declare class ConnectionClosedError extends Error {
  constructor(code: number, reason: string);
  readonly name: 'ConnectionClosedError';
  /** The WebSocket close code (4401: bad token, 1000: closed by `close()`...). */
  readonly code: number;
  readonly reason: string;
}

// ---------------------------------------------------------------- helpers

/**
 * At most one send per `intervalMs`, and the last value offered is always sent (trailing
 * edge): the first offer after a quiet interval goes at once, later ones replace each other
 * until the interval has passed. `send(value)` does the sending. (`undefined` marks "nothing
 * pending": an offered `undefined` is never sent by `flush()`.)
 */
export declare class Throttle<T> {
  constructor(intervalMs: number, send: (value: T) => void, clock?: () => number);
  intervalMs: number;
  readonly send: (value: T) => void;
  readonly clock: () => number;
  /** When the last send went (the clock's time), -Infinity before the first. */
  readonly last: number;
  /** The value the trailing edge will send, or undefined. */
  readonly pending: T | undefined;
  readonly timer: ReturnType<typeof setTimeout> | null;
  offer(value: T): void;
  /** Send the pending value now, if any. */
  flush(): void;
  /** Drop the pending value. */
  cancel(): void;
}

/** What `Keepalive` is told to do. */
export interface KeepaliveCallbacks {
  /** Send a PING: nothing was received for `intervalMs`. */
  ping(): void;
  /** Nothing was received for `intervalMs` after the PING either: the connection is lost. */
  lost(): void;
}

/** The timer functions `Keepalive` uses (setTimeout / clearTimeout by default). */
export interface KeepaliveTimers<Timer> {
  set(fn: () => void, ms: number): Timer;
  clear(timer: Timer): void;
}

/**
 * The silence rule of one connection: `received()` on every frame; after `intervalMs` of
 * silence `ping()` is called, and after `intervalMs` more of silence `lost()` (once, then it
 * stops). One timer at a time, re-armed from the time of the last frame, never counted: a
 * timer that fires late (a throttled background tab) finds the frames that came meanwhile.
 */
export declare class Keepalive<Timer = ReturnType<typeof setTimeout>> {
  constructor(
    intervalMs: number,
    callbacks: KeepaliveCallbacks,
    clock?: () => number,
    timers?: KeepaliveTimers<Timer>,
  );
  readonly intervalMs: number;
  readonly ping: () => void;
  readonly lost: () => void;
  readonly clock: () => number;
  readonly timers: KeepaliveTimers<Timer>;
  /** When the last frame came (the clock's time). */
  readonly lastReceived: number;
  /** When the unanswered PING went, or null. */
  readonly pingAt: number | null;
  readonly rechecked: boolean;
  readonly timer: Timer | null;
  readonly due: number;
  /** Start watching (a connection was welcomed): silence is counted from now. */
  start(): void;
  /** A frame came (any frame): the cost per frame is this one assignment. */
  received(): void;
  stop(): void;
}

// ---------------------------------------------------------------- users

/**
 * One user of a document, however many sessions (tabs, devices) it has: an entry of
 * `doc.users()`. Name, avatar and color are those of its first session.
 */
export interface User {
  readonly userId: string;
  readonly name: string;
  readonly avatar: string | null;
  readonly color: string;
  /** `Kind.AGENT` when any session is an agent, else the first session's. */
  readonly kind: KindCode;
  readonly agent: boolean;
  /** Its sessions in the document, in order of appearance (empty in a `userleft`). */
  readonly sessions: readonly Member[];
}

/** A user who left the document a little while ago and is not in it now (`doc.recent`). */
export interface RecentUser {
  readonly userId: string;
  readonly name: string;
  readonly avatar: string | null;
  readonly color: string;
  /** When its last session left, Unix ms, the relay's clock. */
  readonly leftAtMs: number;
  /** Why its last session left; null when unknown (a v1 relay's `left`). */
  readonly reason: LeaveReasonCode | null;
}

// ---------------------------------------------------------------- documents

/** `joined`: a member joined the document. */
export interface JoinedDetail {
  readonly member: Member;
}

/** `left`: a member left; `member` is what it was when it left. */
export interface LeftDetail {
  readonly sid: number;
  readonly member: Member;
  /**
   * Why (a `LeaveReason`); undefined from a v1 relay, or for a member found gone in a
   * resume's snapshot.
   */
  readonly reason: LeaveReasonCode | undefined;
}

/** `cursor`: a member's caret (the head) and selection anchor; null when cleared. */
export interface CursorDetail {
  readonly sid: number;
  readonly cursor: Position | null;
  readonly selection: Selection | null;
}

/** `typing`: a member started or stopped typing. */
export interface TypingDetail {
  readonly sid: number;
  readonly typing: boolean;
}

/** `viewport`: what a member has on screen (null only when a resume's snapshot has none). */
export interface ViewportDetail {
  readonly sid: number;
  readonly viewport: Viewport | null;
}

/** `activity`: the relay recomputed a member's activity. */
export interface ActivityDetail {
  readonly sid: number;
  readonly activity: ActivityCode;
  /** `activity === Activity.DISCONNECTED`: its connection dropped, its place is held. */
  readonly disconnected: boolean;
}

/** `focus`: a member's tab or editor gained or lost focus. */
export interface FocusDetail {
  readonly sid: number;
  readonly focused: boolean;
}

/** `status`: a member's status text changed (null: cleared). */
export interface StatusDetail {
  readonly sid: number;
  readonly status: string | null;
}

/** `userjoined`: a user's first session appeared (after that session's `joined`). */
export interface UserJoinedDetail {
  /** The user, with its sessions now. */
  readonly user: User;
  /** The session that made it arrive. */
  readonly member: Member;
}

/** `userleft`: a user's last session went (after that session's `left`). */
export interface UserLeftDetail {
  /** The user as it was, with no sessions left. */
  readonly user: User;
  /** Its last session, as it was when it left. */
  readonly member: Member;
  /** As in `left`: undefined from a v1 relay, or for a user found gone after a resume. */
  readonly reason: LeaveReasonCode | undefined;
}

/**
 * `resynced`: after a reconnect the member list was replaced (a rejoin: `resumed` false; a
 * resume: `resumed` true, and the differences were dispatched as events just before).
 */
export interface ResyncedDetail {
  /** The members other than this session, by sid. */
  readonly members: Map<number, Member>;
  readonly resumed: boolean;
}

/** `error`: the relay sent ERROR about this document (its code, docs/protocol.md, section 6). */
export interface DocumentErrorDetail {
  readonly code: number;
  readonly message: string;
}

/** The events of a PresenceDocument, by name (each a CustomEvent, payload in `detail`). */
export interface PresenceDocumentEventMap {
  joined: CustomEvent<JoinedDetail>;
  left: CustomEvent<LeftDetail>;
  cursor: CustomEvent<CursorDetail>;
  typing: CustomEvent<TypingDetail>;
  viewport: CustomEvent<ViewportDetail>;
  activity: CustomEvent<ActivityDetail>;
  focus: CustomEvent<FocusDetail>;
  status: CustomEvent<StatusDetail>;
  userjoined: CustomEvent<UserJoinedDetail>;
  userleft: CustomEvent<UserLeftDetail>;
  resynced: CustomEvent<ResyncedDetail>;
  error: CustomEvent<DocumentErrorDetail>;
}

/**
 * A document this connection has open (one JOIN handle); made by `client.join()`, not by
 * hand. Events (see PresenceDocumentEventMap) are about the other members: events of the
 * document's own sid update `doc.me` but are not dispatched, and `userjoined`/`userleft` are
 * not dispatched for the document's own user (the userId of `doc.me`).
 */
export declare class PresenceDocument extends EventTarget {
  /** Made by `PresenceClient.join()`. */
  constructor(client: PresenceClient, handle: number, docId: string);
  readonly client: PresenceClient;
  /** The JOIN handle on this connection (0..65535). */
  readonly handle: number;
  readonly docId: string;
  /** This session's sid in the document; null until JOINED. */
  readonly sid: number | null;
  /** Every member by sid, this session included. */
  readonly members: Map<number, Member>;
  /** Joined and not left or closed. */
  readonly open: boolean;
  /** This session's own member, or null before JOINED. */
  readonly me: Member | null;
  /**
   * The users who left within the relay's `recent_window_s` and are not here now, newest
   * first, at most 20: from every JOINED (empty from a v1 relay), then kept current (a user
   * whose last session leaves comes first; one who comes back is removed).
   */
  readonly recent: readonly RecentUser[];

  /** Members other than this session, by sid (a new Map). */
  others(): Map<number, Member>;
  /**
   * The members grouped by user (this document's own sessions included), in order of first
   * appearance: a new Map each call.
   */
  users(): Map<string, User>;
  /**
   * Move the caret (the head of the selection), with the selection's anchor if any.
   * Throttled to the relay's `cursor_throttle_ms`; the last position is always sent.
   */
  moveCursor(line: number, col: number, off: number, selection?: SelectionInput | null): void;
  /** The editor lost its caret: clears cursor and selection. */
  clearCursor(): void;
  /** A keystroke: the relay shows this member typing until typing_debounce_ms after the last. */
  typed(): void;
  /** Stop at once (focus lost, message sent). */
  stopTyping(): void;
  /** The lines on screen and the scroll position (0..100). */
  setViewport(top: number, bottom: number, pct: number): void;
  /**
   * The editor gained or lost focus. What the relay is told is this and the page's own state
   * together (a hidden or blurred page is unfocused whatever the editor says), and only when
   * that changes.
   */
  setFocus(focused: boolean): void;
  /**
   * A short text shown next to this member ("presenting", "thinking"); null, undefined or ''
   * clears it. Throws RangeError past MAX_STATUS_CHARS characters, TypeError for a
   * non-string. Kept, and sent again after a reconnect if the relay's snapshot lacks it.
   */
  setStatus(text: string | null | undefined): void;
  /** Send FOCUS if the effective focus differs from what the relay last heard. */
  syncFocus(): void;
  /** LEAVE this document (the pending cursor goes first); the others see reason LEFT. */
  leave(): Promise<void>;

  addEventListener<K extends keyof PresenceDocumentEventMap>(
    type: K,
    listener: (this: PresenceDocument, event: PresenceDocumentEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof PresenceDocumentEventMap>(
    type: K,
    listener: (this: PresenceDocument, event: PresenceDocumentEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

// ---------------------------------------------------------------- the client

/**
 * Returns a token (a JWT) or a Promise of one; called before every HELLO, so that
 * reconnects and resumes use a fresh token.
 */
export type TokenProvider = () => string | PromiseLike<string>;

/** Where a reload finds the resume token (the parts of `Storage` the client uses). */
export type StorageLike = Pick<Storage, 'getItem' | 'setItem' | 'removeItem'>;

type Handler<E> = { bivarianceHack(event: E): void }['bivarianceHack'] | null;

/** What the client needs of a WebSocket (the browser's satisfies it). */
export interface WebSocketLike {
  /** The client sets it to 'arraybuffer'. */
  binaryType: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: Handler<unknown>;
  /** `data` is an ArrayBuffer (binaryType 'arraybuffer'). */
  onmessage: Handler<{ readonly data: unknown }>;
  onclose: Handler<{ readonly code: number; readonly reason: string }>;
  onerror: Handler<unknown>;
}

/** A WebSocket constructor: `new WebSocket(url, 'presence.v1')`. */
export type WebSocketConstructor = new (url: string, protocol: string) => WebSocketLike;

/**
 * Options of `connect()` / `new PresenceClient()`. An option given as `undefined` is one
 * left out: it keeps its default.
 */
export interface PresenceClientOptions {
  /**
   * Against a relay with a JWT secret: a token, or a token provider, called before every
   * HELLO. With a provider the relay ending the connection at the token's `exp` is not
   * fatal: the client reconnects at once with a fresh token and resumes. A provider that
   * throws, rejects or takes longer than `tokenTimeoutMs` is a failed attempt: an `error`
   * event, then the backoff (on the first connect, `connect()` rejects with
   * TokenProviderError).
   */
  token?: string | TokenProvider | null | undefined;
  /** For an anonymous relay: the user id sent in HELLO (a token's identity wins). */
  userId?: string | null | undefined;
  /** For an anonymous relay: the display name. */
  name?: string | null | undefined;
  /** For an anonymous relay: an http/https avatar URL. */
  avatar?: string | null | undefined;
  /** Reconnect (and resume or rejoin) after a drop. Default true. */
  reconnect?: boolean | undefined;
  /** First reconnect delay (ms), doubled per attempt, with jitter (0.5x-1.5x). Default 250. */
  backoffMs?: number | undefined;
  /** Cap of the reconnect delay (ms). Default 5000. */
  maxBackoffMs?: number | undefined;
  /** How long (ms) a token provider may take. Default 10000. */
  tokenTimeoutMs?: number | undefined;
  /** The WebSocket implementation. Default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor | undefined;
  /** Resume the relay's session after a drop or a reload (v1.1). Default true. */
  resume?: boolean | undefined;
  /** Where a reload finds the resume token: sessionStorage by default, null for none. */
  storage?: StorageLike | null | undefined;
  /**
   * Scopes that storage; default the anonymous `userId`: several clients of one relay in
   * one tab each need their own.
   */
  sessionKey?: string | undefined;
  /** See CLAIM_WINDOW_MS (the default). */
  claimWindowMs?: number | undefined;
  /**
   * After this long (ms) without a frame, a PING; after as long again, the connection is
   * lost and the client reconnects (`disconnected` with code 1006, reason `keepalive
   * timeout`). Default KEEPALIVE_MS; 0: no keepalive.
   */
  keepaliveMs?: number | undefined;
}

/** `disconnected`: the connection dropped; the client is reconnecting. */
export interface DisconnectedDetail {
  readonly code: number;
  readonly reason: string;
}

/** `reconnected`: welcomed again after a drop; `resumed`: the relay resumed the session. */
export interface ReconnectedDetail {
  readonly resumed: boolean;
}

/**
 * `error`: an ERROR about no open document (its code), or a frame that did not decode, or a
 * token provider that failed on a reconnect (code null).
 */
export interface ClientErrorDetail {
  readonly code: number | null;
  readonly message: string;
}

/** `closed`: the client is done (closed by `close()`, or by a close code reconnecting cannot help). */
export interface ClosedDetail {
  readonly code: number;
  readonly reason: string;
}

/** The events of a PresenceClient, by name (each a CustomEvent, payload in `detail`). */
export interface PresenceClientEventMap {
  disconnected: CustomEvent<DisconnectedDetail>;
  reconnected: CustomEvent<ReconnectedDetail>;
  error: CustomEvent<ClientErrorDetail>;
  closed: CustomEvent<ClosedDetail>;
}

/**
 * One connection to the relay; reconnects (and resumes or rejoins its documents) unless
 * closed, or closed with a code after which reconnecting cannot help (1002, 1007, 1009, 4400,
 * 4401, 4409, 4429).
 */
export declare class PresenceClient extends EventTarget {
  constructor(url: string, options?: PresenceClientOptions);
  readonly url: string;
  /** The last WELCOME; null while not welcomed. */
  readonly welcome: Welcome | null;
  /** The last WELCOME's settings (`{}` before the first). */
  readonly settings: Settings;
  /** The open documents, by handle. */
  readonly documents: ReadonlyMap<number, PresenceDocument>;
  /** The socket is open and welcomed. */
  readonly connected: boolean;
  /**
   * The client is done: its `closed` event was dispatched (or the first connect's token
   * provider failed). A closed client does not reconnect; `join()` rejects.
   */
  readonly closed: boolean;

  /** Open the socket, send HELLO, resolve with this client on WELCOME. */
  start(): Promise<this>;
  /**
   * Open a document: resolves with it on JOINED, rejects with RelayError on ERROR. A document
   * already open (or being joined) is that one; after a reload, one the resumed session
   * re-attached is taken over without a JOIN.
   */
  join(docId: string): Promise<PresenceDocument>;
  /** Round trip in ms (PING / PONG). */
  ping(): Promise<number>;
  /**
   * Leave on purpose: LEAVE every document, then close with 1000, so the others see reason
   * LEFT at once (a dropped connection would show DISCONNECTED until the grace ran out). Not
   * called on pagehide: a reload must find the session to resume.
   */
  close(): Promise<void>;

  addEventListener<K extends keyof PresenceClientEventMap>(
    type: K,
    listener: (this: PresenceClient, event: PresenceClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof PresenceClientEventMap>(
    type: K,
    listener: (this: PresenceClient, event: PresenceClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/**
 * Connect and say HELLO: resolves with the client once WELCOME arrived; rejects with
 * ConnectionClosedError when the relay refuses (4401: bad token), TokenProviderError when
 * the token provider fails. Options: see PresenceClientOptions (`token` may be a provider).
 */
export declare function connect(url: string, options?: PresenceClientOptions): Promise<PresenceClient>;

// Only what is exported above is the package's API (the `Handler` helper stays private).
export {};
