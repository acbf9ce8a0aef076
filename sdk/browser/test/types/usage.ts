// The package's public API as an app uses it, type-checked (`npm run typecheck`, and
// tests/test_browser_package.py, which also compiles this file in a fresh project against
// the installed tarball). Imports go through the package's own name, so what resolves is the
// package.json `exports` map. Every `@ts-expect-error` line is a misuse the declarations must
// reject: tsc fails if one of them compiles, so the check can fail. Nothing here runs.

import {
  ACTIVITY_NAMES,
  Activity,
  CLAIM_WINDOW_MS,
  ConnectionClosedError,
  connect,
  KEEPALIVE_MS,
  Keepalive,
  Kind,
  LEAVE_REASON_NAMES,
  LeaveReason,
  MAX_STATUS_CHARS,
  memberFromWire,
  PresenceClient,
  PresenceDocument,
  PROTOCOL,
  RelayError,
  SDK,
  Throttle,
  TokenProviderError,
} from 'presence-relay';
import type {
  ActivityCode,
  CursorDetail,
  KindCode,
  LeaveReasonCode,
  Member,
  MemberWire,
  Position,
  PresenceClientOptions,
  PresenceDocumentEventMap,
  RecentUser,
  Selection,
  Settings,
  StorageLike,
  TokenProvider,
  User,
  UserLeftDetail,
  Viewport,
  Welcome,
  WebSocketConstructor,
} from 'presence-relay';
import { type Decoded, decode, encode } from 'presence-relay/msgpack';
import {
  AvatarStack,
  activityLabel,
  bindPresence,
  CursorRenderer,
  cursorDisplay,
  type EditorAdapter,
  type MemberWithCursor,
  type PresenceUser,
  TypingIndicator,
  usersOf,
} from 'presence-relay/ui';
// @ts-expect-error: the declarations' own helpers are not exported
import type { Handler } from 'presence-relay';

/** Compiles only when A and B are the same type. */
type Equals<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
function assertType<T extends true>(): void {}
function expectType<T>(value: T): T {
  return value;
}

// ---------------------------------------------------------------- constants

assertType<Equals<typeof SDK, 'js/0.1.0'>>();
assertType<Equals<typeof PROTOCOL, 'presence.v1'>>();
assertType<Equals<typeof Activity.EDITING, 0>>();
assertType<Equals<typeof Activity.DISCONNECTED, 5>>();
assertType<Equals<Activity, 0 | 1 | 2 | 3 | 4 | 5>>();
assertType<Equals<typeof LeaveReason.LOST, 1>>();
assertType<Equals<LeaveReason, 0 | 1 | 2 | 3 | 4 | 5>>();
assertType<Equals<(typeof ACTIVITY_NAMES)[5], 'Disconnected'>>();
assertType<Equals<(typeof LEAVE_REASON_NAMES)[2], 'NODE_DOWN'>>();
assertType<Equals<typeof Kind.AGENT, 1>>();
assertType<Equals<Kind, 0 | 1>>();
assertType<Equals<typeof MAX_STATUS_CHARS, 64>>();
// @ts-expect-error: Kind is frozen
Kind.AGENT = 0;
const windows: number[] = [CLAIM_WINDOW_MS, KEEPALIVE_MS];
let keepalive = KEEPALIVE_MS; // a widening literal: a `let` of it is a number
keepalive = 2 * keepalive;
// @ts-expect-error: Activity is frozen
Activity.EDITING = 1;
// @ts-expect-error: the names are read-only
ACTIVITY_NAMES[0] = 'Typing';
// @ts-expect-error: 6 is no known activity
const unknownActivity: Activity = 6;
// @ts-expect-error: the constant is a string
const sdkNumber: number = SDK;

// ---------------------------------------------------------------- connecting

// A token provider: called before every HELLO, so a reconnect gets a fresh token.
const tokenProvider: TokenProvider = () => fetch('/presence-token').then((r) => r.text());
const syncProvider: TokenProvider = () => 'eyJhbGciOiJIUzI1NiJ9.e30.sig';

class MemoryStorage implements StorageLike {
  private readonly items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
  removeItem(key: string): void {
    this.items.delete(key);
  }
}

const options: PresenceClientOptions = {
  token: tokenProvider,
  reconnect: true,
  backoffMs: 250,
  maxBackoffMs: 5000,
  tokenTimeoutMs: 10000,
  WebSocket,
  resume: true,
  storage: new MemoryStorage(),
  sessionKey: 'editor-1',
  claimWindowMs: CLAIM_WINDOW_MS,
  keepaliveMs: 0,
};
const anonymous: PresenceClientOptions = { userId: 'ann', name: 'Ann', avatar: null, storage: null };
const withString: PresenceClientOptions = { token: 'eyJhbGciOiJIUzI1NiJ9.e30.sig', resume: false };
// @ts-expect-error: an unknown option
const typo: PresenceClientOptions = { tokn: 'x' };
// @ts-expect-error: keepaliveMs is a number of ms
const badKeepalive: PresenceClientOptions = { keepaliveMs: '10s' };
// @ts-expect-error: a token provider returns a token, not a number
const badProvider: PresenceClientOptions = { token: () => 42 };
// @ts-expect-error: not a WebSocket constructor
const badSocket: PresenceClientOptions = { WebSocket: Object };

// A WebSocket of one's own (a test double): the client needs only these members.
class FakeSocket {
  binaryType = 'blob';
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: ArrayBuffer }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  constructor(
    readonly url: string,
    readonly protocol: string,
  ) {}
  send(bytes: Uint8Array): void {
    expectType<Decoded>(decode(bytes));
  }
  close(code?: number, reason?: string): void {
    this.onclose?.({ code: code ?? 1005, reason: reason ?? '' });
  }
}
const fakeSocket: WebSocketConstructor = FakeSocket;

async function app(container: HTMLElement, typingLine: HTMLElement): Promise<void> {
  const client = await connect('wss://relay.example/ws', { token: tokenProvider });
  expectType<PresenceClient>(client);
  const other = new PresenceClient('ws://127.0.0.1:8765/ws', { ...anonymous, WebSocket: fakeSocket });
  expectType<PresenceClient>(await other.start());
  // @ts-expect-error: an unknown option in a call
  await connect('ws://127.0.0.1:8765/ws', { userId: 'ann', nmae: 'Ann' });
  // @ts-expect-error: the URL comes first
  await connect({ token: 'x' });

  const welcome: Welcome | null = client.welcome;
  if (welcome !== null) {
    const who: string = `${welcome.user.name} (${welcome.user.id}) in ${welcome.user.workspace}`;
    const at: number = welcome.serverMs;
    const resumed: boolean = welcome.resumed;
  }
  const settings: Settings = client.settings;
  const throttleMs: number = settings.cursor_throttle_ms;
  const grace: number | undefined = settings.reconnect_grace_ms;
  const future: unknown = settings['some_future_setting'];
  // @ts-expect-error: settings are the relay's, read-only
  client.settings.batch_ms = 10;
  const connected: boolean = client.connected;
  const closed: boolean = client.closed;
  const rtt: number = await client.ping();
  for (const [handle, open] of client.documents) expectType<[number, PresenceDocument]>([handle, open]);

  client.addEventListener('disconnected', (e) => {
    const code: number = e.detail.code;
    const reason: string = e.detail.reason;
  });
  client.addEventListener('reconnected', (e) => {
    const resumed: boolean = e.detail.resumed;
    // @ts-expect-error: reconnected carries no code
    e.detail.code;
  });
  client.addEventListener('error', (e) => {
    const code: number | null = e.detail.code;
    // @ts-expect-error: a client error's code may be null (an undecodable frame, a token provider)
    const always: number = e.detail.code;
    console.warn(e.detail.message);
  });
  client.addEventListener('closed', function (e) {
    expectType<PresenceClient>(this);
    const code: number = e.detail.code;
  });
  client.addEventListener('closed', () => {}, { once: true });

  // ---------------------------------------------------------------- a document

  const doc = await client.join('design-doc');
  expectType<PresenceDocument>(doc);
  const handle: number = doc.handle;
  const docId: string = doc.docId;
  const sid: number | null = doc.sid;
  const open: boolean = doc.open;
  const members: Map<number, Member> = doc.members;
  const others: Map<number, Member> = doc.others();
  const me: Member | null = doc.me;
  expectType<PresenceClient>(doc.client);
  // @ts-expect-error: sid is null until JOINED
  const sidNow: number = doc.sid;
  // @ts-expect-error: the SDK sets the sid
  doc.sid = 3;
  // @ts-expect-error: join takes a document id
  await client.join(42);

  // The caret at line 12 col 4 (offset 318), the selection's anchor at line 10 col 0.
  doc.moveCursor(12, 4, 318);
  doc.moveCursor(12, 4, 318, { line: 10, col: 0, off: 250, backward: true });
  doc.moveCursor(12, 4, 318, { line: 10, col: 0, off: 250 });
  doc.moveCursor(12, 4, 318, null);
  doc.clearCursor();
  doc.typed();
  doc.stopTyping();
  doc.setViewport(0, 40, 12.5);
  doc.setFocus(false);
  doc.syncFocus();
  doc.setStatus('presenting');
  doc.setStatus(null);
  doc.setStatus(undefined);
  // @ts-expect-error: a status is a text
  doc.setStatus(42);
  // @ts-expect-error: setStatus takes the text
  doc.setStatus();
  // @ts-expect-error: positions are numbers
  doc.moveCursor('12', 4, 318);
  // @ts-expect-error: a selection anchor needs its offset
  doc.moveCursor(12, 4, 318, { line: 10, col: 0 });
  // @ts-expect-error: backward is a boolean
  doc.moveCursor(12, 4, 318, { line: 10, col: 0, off: 250, backward: 1 });
  // @ts-expect-error: a viewport is three numbers
  doc.setViewport(0, 40);

  doc.addEventListener('joined', (e) => {
    const m: Member = e.detail.member;
    describe(m);
  });
  doc.addEventListener('left', (e) => {
    const s: number = e.detail.sid;
    const name: string = e.detail.member.name;
    const reason: LeaveReasonCode | undefined = e.detail.reason;
    if (reason === LeaveReason.LOST) console.log(`${name} lost`);
    else if (reason !== undefined) console.log(LEAVE_REASON_NAMES[reason] ?? `reason ${reason}`);
    // @ts-expect-error: a v1 relay sends no reason
    const always: number = e.detail.reason;
  });
  doc.addEventListener('cursor', (e) => {
    const d: CursorDetail = e.detail;
    const cursor: Position | null = e.detail.cursor;
    const selection: Selection | null = e.detail.selection;
    if (cursor !== null) console.log(cursor.line, cursor.col, cursor.off);
    if (selection !== null) console.log(selection.backward);
    // @ts-expect-error: a cursor event has no typing field
    e.detail.typing;
    // @ts-expect-error: the cursor may be cleared (null)
    e.detail.cursor.line;
  });
  doc.addEventListener('typing', (e) => {
    const s: number = e.detail.sid;
    const typing: boolean = e.detail.typing;
  });
  doc.addEventListener('viewport', (e) => {
    const v: Viewport | null = e.detail.viewport;
    if (v !== null) console.log(v.top, v.bottom, v.pct);
  });
  doc.addEventListener('activity', (e) => {
    const activity: ActivityCode = e.detail.activity;
    const disconnected: boolean = e.detail.disconnected;
    if (activity === Activity.AWAY) console.log('away');
    // @ts-expect-error: an activity is a number, not its name
    const name: string = e.detail.activity;
  });
  doc.addEventListener('focus', (e) => {
    const focused: boolean = e.detail.focused;
  });
  doc.addEventListener('status', (e) => {
    const s: number = e.detail.sid;
    const status: string | null = e.detail.status;
    // @ts-expect-error: the status may be cleared (null)
    const always: string = e.detail.status;
  });
  doc.addEventListener('userjoined', (e) => {
    const user: User = e.detail.user;
    const first: Member = e.detail.member;
    const tabs: number = user.sessions.length;
    if (user.agent) console.log(`${user.name} (a bot) is here`);
    // @ts-expect-error: a user is not a member: it has no sid
    user.sid;
  });
  doc.addEventListener('userleft', (e) => {
    const d: UserLeftDetail = e.detail;
    const reason: LeaveReasonCode | undefined = d.reason;
    const last: Member = d.member;
    // @ts-expect-error: the sessions are the SDK's, read-only
    d.user.sessions.push(last);
  });
  doc.addEventListener('resynced', (e) => {
    const all: Map<number, Member> = e.detail.members;
    const resumed: boolean = e.detail.resumed;
  });
  doc.addEventListener('error', function (e) {
    expectType<PresenceDocument>(this);
    const code: number = e.detail.code;
    const message: string = e.detail.message;
  });
  const onCursor = (e: PresenceDocumentEventMap['cursor']): void => console.log(e.detail.sid);
  doc.addEventListener('cursor', onCursor);
  doc.removeEventListener('cursor', onCursor);
  // Any other name is a plain event (as on every EventTarget).
  doc.addEventListener('something-else', (e) => expectType<Event>(e));
  // @ts-expect-error: a typing listener on the cursor event
  doc.addEventListener('cursor', (e: PresenceDocumentEventMap['typing']) => e.detail.typing);

  // ---------------------------------------------------------------- members

  const ann = [...doc.members.values()][0];
  if (ann !== undefined) {
    const userId: string = ann.userId;
    const avatar: string | null = ann.avatar;
    const label: string = ACTIVITY_NAMES[ann.activity] ?? 'Unknown';
    const times: number = ann.lastActiveMs - ann.connectedAtMs;
    const kind: KindCode = ann.kind;
    const agent: boolean = ann.agent;
    const status: string | null = ann.status;
    if (ann.kind === Kind.AGENT) console.log('a bot');
    // @ts-expect-error: a member's status is the relay's
    ann.status = 'busy';
    // @ts-expect-error: members are the SDK's, read-only
    ann.name = 'Bob';
    // @ts-expect-error: the cursor may be null
    ann.cursor.line;
  }
  const wire: MemberWire = [2, 'u-7', 'Grace', null, 'hsl(15, 70%, 50%)', 1, false, true, [12, 8, 190],
    [10, 4, 120, false], [0, 40, 25.0], 1799999940000, 1799999999000, Kind.PERSON, null, 'a newer element'];
  const v1: MemberWire = [2, 'u-7', 'Grace', null, 'hsl(15, 70%, 50%)', 1, false, true, null, null, null,
    1799999940000, 1799999999000]; // a v1 relay's: no kind, no status
  expectType<Member>(memberFromWire(v1));
  expectType<Member>(memberFromWire(wire));
  const v11: MemberWire = [4, 'review-bot', 'Reviewer', null, 'hsl(60, 70%, 50%)', 1, false, true, [3, 0, 42],
    null, null, 1799999995000, 1799999999000, Kind.AGENT, 'reading section 2'];
  expectType<Member>(memberFromWire(v11));
  // @ts-expect-error: a status is a text or nil
  const badStatus: MemberWire = [4, 'b', 'B', null, 'c', 1, false, true, null, null, null, 1, 1, 1, 7];

  // One roster per user, and who left a little while ago.
  const roster: Map<string, User> = doc.users();
  for (const [userId, user] of roster) {
    const sessions: readonly Member[] = user.sessions;
    const kind: KindCode = user.kind;
    console.log(userId, user.name, user.avatar, user.color, sessions.length);
  }
  const recent: readonly RecentUser[] = doc.recent;
  for (const r of recent) {
    const at: number = r.leftAtMs;
    const why: string = r.reason === null ? 'unknown' : (LEAVE_REASON_NAMES[r.reason] ?? `reason ${r.reason}`);
    console.log(r.userId, r.name, r.avatar, r.color, at, why);
  }
  // @ts-expect-error: recent is the SDK's, read-only
  doc.recent.push({ userId: 'x', name: 'X', avatar: null, color: 'c', leftAtMs: 0, reason: 0 });
  // @ts-expect-error: a MEMBER has 13 elements at least
  memberFromWire([2, 'u-7', 'Grace']);

  // ---------------------------------------------------------------- drawing the others

  const editor: EditorAdapter = {
    container,
    lineHeight: 18,
    getCoordinates: ({ line, column }) => ({ x: column * 8, y: line * 18 }),
  };
  const renderer = new CursorRenderer(editor);
  const indicator = new TypingIndicator(typingLine);
  const unbind: () => void = bindPresence(doc, { renderer, typing: indicator });
  unbind();
  bindPresence(doc, { typing: indicator })();
  bindPresence(doc)();
  // @ts-expect-error: an editor adapter needs getCoordinates
  new CursorRenderer({ container });
  // @ts-expect-error: not a renderer
  bindPresence(doc, { renderer: {} });
  // @ts-expect-error: bindPresence takes a document, not its id
  bindPresence('design-doc');

  // By hand: one caret per member that has one.
  const hasCursor = (m: Member): m is MemberWithCursor => m.cursor !== null;
  for (const m of doc.others().values()) {
    if (hasCursor(m)) {
      const display = cursorDisplay(m);
      const key: number = display.key;
      renderer.updateCursor(display);
    } else renderer.removeCursor(m.sid);
    indicator.updateTyping(m.sid, m.name, m.typing);
    // @ts-expect-error: cursorDisplay needs a member with a cursor
    cursorDisplay(m);
  }
  renderer.updateCursor({ userId: 'bot', name: 'Bot', color: '#333', position: { line: 1, column: 0 } });
  renderer.clear();
  const drawn = renderer.cursors.get('2');
  if (drawn !== undefined) drawn.element.classList.add('mine');

  // Who is here: one avatar per user, however many tabs.
  const users: PresenceUser[] = usersOf(doc.members.values());
  const stack = new AvatarStack(container, { max: 5, me: me?.userId ?? null });
  stack.render(users);
  const label: string = activityLabel(users[0]?.activity ?? Activity.VIEWING);
  const bots: PresenceUser[] = users.filter((u) => u.agent);
  const statuses: (string | null)[] = users.map((u) => u.status);
  const asUser: User = users[0]!; // a PresenceUser is a User, with what the avatars show
  // @ts-expect-error: usersOf takes members, not the Map's [sid, member] entries
  usersOf(doc.members);

  await doc.leave();
  await client.close();
}

function describe(m: Member): string {
  return `${m.name} ${m.disconnected ? 'disconnected' : (ACTIVITY_NAMES[m.activity] ?? '')}`;
}

// ---------------------------------------------------------------- errors

async function joinOrExplain(client: PresenceClient): Promise<PresenceDocument | null> {
  try {
    return await client.join('design-doc');
  } catch (err) {
    if (err instanceof RelayError) {
      const code: number = err.code;
      const message: string = err.relayMessage;
      const handle: number | null = err.handle;
    } else if (err instanceof ConnectionClosedError) {
      const code: number = err.code;
      const reason: string = err.reason;
    } else if (err instanceof TokenProviderError) {
      const cause: unknown = err.cause;
    }
    return null;
  }
}

// ---------------------------------------------------------------- the codec and the helpers

const bytes = encode([4, 0, 10, 4, 120]);
expectType<Uint8Array<ArrayBuffer>>(bytes);
const blob = new Blob([bytes]); // a fresh ArrayBuffer behind it: a BlobPart
const value: Decoded = decode(bytes);
if (Array.isArray(value)) console.log(value.length);
encode({ sdk: SDK, user_id: 'u-42', nested: new Map<Decoded, Decoded>([[1, 'one']]), big: 2n ** 60n });
encode(new Uint8Array([1, 2, 3]).buffer);
decode(new DataView(bytes.buffer));
// @ts-expect-error: a function has no MessagePack form
encode(() => 1);
// @ts-expect-error: nor has a Date (a class instance)
encode(new Date());
// @ts-expect-error: decode takes bytes, not a string
decode('94010101');

const throttle = new Throttle<[number, number]>(50, ([line, col]) => console.log(line, col));
throttle.offer([1, 2]);
throttle.flush();
throttle.cancel();
// @ts-expect-error: the throttle's values are [line, col]
throttle.offer('x');

const watch = new Keepalive(10000, { ping: () => {}, lost: () => {} });
watch.start();
watch.received();
watch.stop();
const manual = new Keepalive(5, { ping() {}, lost() {} }, () => 0, {
  set: (fn: () => void, ms: number) => 7,
  clear: (timer: number) => {},
});
expectType<number | null>(manual.timer);
// @ts-expect-error: a keepalive needs both callbacks
new Keepalive(10000, { ping: () => {} });

export { app, joinOrExplain, windows, options, withString, blob };
