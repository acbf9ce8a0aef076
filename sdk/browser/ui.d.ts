// Type declarations for ui.js (`presence-relay/ui`): remote cursors and the typing line
// (CursorRenderer, TypingIndicator), plus `bindPresence`, which keeps both in step with a
// PresenceDocument. A member whose connection dropped (activity 5, DISCONNECTED) keeps its
// caret where it was, greyed and labelled "Disconnected", while the relay holds its place.

import type {
  ACTIVITY_NAMES,
  ActivityCode,
  Member,
  Position,
  PresenceDocument,
  User,
} from './presence.js';

/** A place as the renderer asks the editor for it. */
export interface EditorPosition {
  readonly line: number;
  readonly column: number;
}

/** A point in the container's coordinate space (px). */
export interface Coordinates {
  readonly x: number;
  readonly y: number;
}

/**
 * The editor, as the renderer sees it. Positions are in the container's coordinate space
 * (the container should be `position: relative`).
 */
export interface EditorAdapter {
  readonly container: HTMLElement;
  getCoordinates(position: EditorPosition): Coordinates;
  /** px; default 16. */
  readonly lineHeight?: number | undefined;
}

/** A selection as the renderer draws it (start before end). */
export interface DisplaySelection {
  readonly startLine: number;
  readonly startColumn: number;
  readonly endLine: number;
  readonly endColumn: number;
}

/** What `CursorRenderer.updateCursor` draws: one caret with a name label. */
export interface CursorDisplay {
  /** Which caret this is; default `userId` (`cursorDisplay` keys by sid: two tabs, two carets). */
  readonly key?: string | number | null | undefined;
  readonly userId: string;
  readonly name: string;
  readonly color: string;
  readonly position: EditorPosition;
  readonly selection?: DisplaySelection | null | undefined;
  /** Adds the `typing` class (a styling hook). */
  readonly isTyping?: boolean | undefined;
  /** Unix ms. */
  readonly lastActive?: number | undefined;
  readonly activity?: ActivityCode | undefined;
  /** Grey, labelled "(Disconnected)", `disconnected` class. */
  readonly disconnected?: boolean | undefined;
}

/** The CursorDisplay `cursorDisplay()` makes for a member. */
export interface MemberCursorDisplay extends CursorDisplay {
  /** The member's sid. */
  readonly key: number;
  readonly isTyping: boolean;
  readonly lastActive: number;
  readonly activity: ActivityCode;
  readonly disconnected: boolean;
  readonly selection?: DisplaySelection;
}

/** A member that has a caret (`cursorDisplay` needs one). */
export type MemberWithCursor = Member & { readonly cursor: Position };

/** The elements drawn for one remote caret. */
export interface RenderedCursor {
  /** The caret: `div.remote-cursor` (classes `typing`, `disconnected`). */
  readonly element: HTMLDivElement;
  /** Its name: `span.cursor-label`. */
  readonly label: HTMLSpanElement;
  /** The selection box, `div.remote-selection`, or null. */
  readonly selection: HTMLDivElement | null;
}

/** Draws one caret (with a name label) per remote session, keyed by `data.key ?? data.userId`. */
export declare class CursorRenderer {
  constructor(editor: EditorAdapter);
  readonly editor: EditorAdapter;
  /** The drawn carets, by key (as a string). */
  readonly cursors: Map<string, RenderedCursor>;
  /** Draw or move the caret of `data.key ?? data.userId`. */
  updateCursor(data: CursorDisplay): void;
  removeCursor(key: string | number): void;
  /** Remove every caret. */
  clear(): void;
  /** Makes the elements of a new caret (in `editor.container`); a hook for subclasses. */
  createCursorElement(data: CursorDisplay): RenderedCursor;
}

/** "Ann is typing...", "Ann and Bob are typing...", "3 people are typing...". */
export declare class TypingIndicator {
  /** `container` gets the text, and the class `hidden` while nobody types. */
  constructor(container: HTMLElement);
  readonly container: HTMLElement;
  /** Who is typing, by key (as a string). */
  readonly typingUsers: Map<string, { readonly name: string; readonly startedAt: number }>;
  updateTyping(key: string | number, userName: string, isTyping: boolean): void;
  render(): void;
}

/** The seed's CursorDisplay for a member (keyed by sid: two tabs are two cursors). */
export declare function cursorDisplay(member: MemberWithCursor): MemberCursorDisplay;

/** What `bindPresence` draws with (a CursorRenderer, a TypingIndicator, or either). */
export interface BindPresenceOptions {
  readonly renderer?: Pick<CursorRenderer, 'updateCursor' | 'removeCursor' | 'clear'> | null | undefined;
  readonly typing?: Pick<TypingIndicator, 'typingUsers' | 'render' | 'updateTyping'> | null | undefined;
}

/**
 * Keep a CursorRenderer and a TypingIndicator in step with a document's other members.
 * Returns a function that stops it (and clears what it drew).
 */
export declare function bindPresence(doc: PresenceDocument, options?: BindPresenceOptions): () => void;

/**
 * One user of a document, however many sessions (tabs, devices) it has: what `usersOf`
 * makes of the members (`doc.users()`'s entries, with what the avatars show). Name, avatar
 * and color are those of the user's first session; a user with an agent session is an agent.
 */
export interface PresenceUser extends User {
  /** The user's sessions, in the order given. */
  readonly sessions: Member[];
  /** The most present of the sessions' (Editing, Selecting, Viewing, Idle, Away, Disconnected). */
  readonly activity: ActivityCode;
  /** Any session types (and is not disconnected). */
  readonly typing: boolean;
  /** Every session is disconnected. */
  readonly disconnected: boolean;
  /** The first status text among the sessions, or null. */
  readonly status: string | null;
}

/**
 * Members grouped by user (one entry however many tabs), in order of first appearance.
 * Pass members, not a Map: `usersOf(doc.members.values())`.
 */
export declare function usersOf(members: Iterable<Member>): PresenceUser[];

/** The label of an activity code ("Editing", ..., "Disconnected"; "Unknown" for another code). */
export declare function activityLabel(activity: number): (typeof ACTIVITY_NAMES)[number] | 'Unknown';

/** Options of `AvatarStack`. */
export interface AvatarStackOptions {
  /** At most this many avatars, then "+N". Default 8. */
  readonly max?: number | undefined;
  /** A userId shown as "(you)". */
  readonly me?: string | null | undefined;
}

/**
 * One avatar per user (`usersOf`), each with its activity and typing state, and a badge with
 * the number of sessions when a user has several (tabs, devices). `render(users)` redraws.
 * Elements: `.pr-avatar[data-user]` (`.pr-avatar-typing`, `.pr-avatar-disconnected`,
 * `.pr-avatar-agent` for an agent) holding `.pr-avatar-face` (initials in the user's color,
 * or the avatar image), `.pr-avatar-badge`, `.pr-avatar-name`, `.pr-avatar-activity` and,
 * when the user has a status text, `.pr-avatar-status`; past `max` users, `.pr-avatar-more`
 * says "+N".
 */
export declare class AvatarStack {
  constructor(container: HTMLElement, options?: AvatarStackOptions);
  readonly container: HTMLElement;
  max: number;
  /** A userId shown as "(you)", or null. */
  me: string | null;
  /** Redraw the container's content with these users. */
  render(users: readonly PresenceUser[]): void;
  /** The element of one user (a hook for subclasses). */
  avatar(user: PresenceUser): HTMLDivElement;
}

// Only what is exported above is the module's API.
export {};
