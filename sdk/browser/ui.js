// Remote cursors and the typing line, as the presence SDD sketches them (CursorRenderer,
// TypingIndicator), plus `bindPresence`, which keeps both in step with a PresenceDocument.
//
// The editor is an adapter: `{ container: HTMLElement, getCoordinates({line, column}) ->
// {x, y}, lineHeight?: number }`; positions are in the container's coordinate space (the
// container should be `position: relative`).
//
// A member whose connection dropped (activity 5, DISCONNECTED, v1.1) keeps its caret where it
// was, greyed and labelled "Disconnected", while the relay holds its place for a resume.

const DISCONNECTED = 5; // activity code (docs/protocol.md, section 4)
const AGENT = 1; // MEMBER kind (v1.1): a member set over HTTP
const DISCONNECTED_COLOR = '#9e9e9e';
const DISCONNECTED_LABEL = 'Disconnected';

class CursorElement {
  constructor(element, label) {
    this.element = element;
    this.label = label;
    this.selection = null;
  }

  updateSelection(sel, color, editor) {
    const a = editor.getCoordinates({ line: sel.startLine, column: sel.startColumn });
    const b = editor.getCoordinates({ line: sel.endLine, column: sel.endColumn });
    if (this.selection === null) {
      this.selection = document.createElement('div');
      this.selection.className = 'remote-selection';
      editor.container.appendChild(this.selection);
    }
    const lineHeight = editor.lineHeight ?? 16;
    const s = this.selection.style;
    s.position = 'absolute';
    s.backgroundColor = color;
    s.opacity = '0.25';
    s.pointerEvents = 'none';
    if (sel.startLine === sel.endLine) {
      s.left = `${Math.min(a.x, b.x)}px`;
      s.top = `${a.y}px`;
      s.width = `${Math.abs(b.x - a.x)}px`;
      s.height = `${lineHeight}px`;
    } else { // several lines: the box spanning them (an editor can draw it more precisely)
      s.left = `${Math.min(a.x, b.x)}px`;
      s.top = `${Math.min(a.y, b.y)}px`;
      s.width = `${Math.max(1, Math.abs(b.x - a.x))}px`;
      s.height = `${Math.abs(b.y - a.y) + lineHeight}px`;
    }
  }

  clearSelection() {
    if (this.selection !== null) {
      this.selection.remove();
      this.selection = null;
    }
  }

  setTyping(isTyping) {
    this.element.classList.toggle('typing', isTyping); // styling hook (e.g. a pulsing label)
  }

  setDisconnected(disconnected) {
    this.element.classList.toggle('disconnected', disconnected); // styling hook
    this.element.style.opacity = disconnected ? '0.6' : '';
  }

  remove() {
    this.clearSelection();
    this.element.remove();
  }
}

/** Draws one caret (with a name label) per remote session, keyed by `data.key ?? data.userId`. */
export class CursorRenderer {
  constructor(editor) {
    this.editor = editor;
    this.cursors = new Map();
  }

  updateCursor(data) {
    const key = String(data.key ?? data.userId);
    let cursor = this.cursors.get(key);
    if (!cursor) {
      cursor = this.createCursorElement(data);
      this.cursors.set(key, cursor);
    }
    const coords = this.editor.getCoordinates(data.position);
    // Grey, not the member's color: its place is held, but nobody is behind it right now.
    const color = data.disconnected ? DISCONNECTED_COLOR : data.color;
    cursor.element.style.left = `${coords.x}px`;
    cursor.element.style.top = `${coords.y}px`;
    cursor.element.style.backgroundColor = color;
    cursor.label.style.backgroundColor = color;
    cursor.label.textContent = data.disconnected
      ? `${data.name} (${DISCONNECTED_LABEL})` : data.name;
    if (data.selection) {
      cursor.updateSelection(data.selection, color, this.editor);
    } else {
      cursor.clearSelection();
    }
    cursor.setTyping(Boolean(data.isTyping) && !data.disconnected);
    cursor.setDisconnected(Boolean(data.disconnected));
  }

  removeCursor(key) {
    const cursor = this.cursors.get(String(key));
    if (cursor) {
      cursor.remove();
      this.cursors.delete(String(key));
    }
  }

  clear() {
    for (const key of [...this.cursors.keys()]) this.removeCursor(key);
  }

  createCursorElement(data) {
    const element = document.createElement('div');
    element.className = 'remote-cursor';
    element.style.position = 'absolute';
    element.style.width = '2px';
    element.style.height = `${this.editor.lineHeight ?? 16}px`;
    element.style.pointerEvents = 'none';
    element.style.backgroundColor = data.color;
    const label = document.createElement('span');
    label.className = 'cursor-label';
    label.textContent = data.name;
    label.style.backgroundColor = data.color;
    element.appendChild(label);
    this.editor.container.appendChild(element);
    return new CursorElement(element, label);
  }
}

/** "Ann is typing...", "Ann and Bob are typing...", "3 people are typing...". */
export class TypingIndicator {
  constructor(container) {
    this.container = container;
    this.typingUsers = new Map();
    this.render();
  }

  updateTyping(key, userName, isTyping) {
    if (isTyping) {
      this.typingUsers.set(String(key), { name: userName, startedAt: Date.now() });
    } else {
      this.typingUsers.delete(String(key));
    }
    this.render();
  }

  render() {
    const names = Array.from(this.typingUsers.values()).map((u) => u.name);
    if (names.length === 0) {
      this.container.textContent = '';
      this.container.classList.add('hidden');
      return;
    }
    if (names.length === 1) {
      this.container.textContent = `${names[0]} is typing...`;
    } else if (names.length === 2) {
      this.container.textContent = `${names[0]} and ${names[1]} are typing...`;
    } else {
      this.container.textContent = `${names.length} people are typing...`;
    }
    this.container.classList.remove('hidden');
  }
}

/** The seed's CursorDisplay for a member (keyed by sid: two tabs are two cursors). */
export function cursorDisplay(member) {
  const display = {
    key: member.sid,
    userId: member.userId,
    name: member.name,
    color: member.color,
    position: { line: member.cursor.line, column: member.cursor.col },
    isTyping: member.typing,
    lastActive: member.lastActiveMs,
    activity: member.activity,
    disconnected: member.activity === DISCONNECTED,
  };
  if (member.selection) {
    // The cursor is the head; `backward` says the head comes first.
    const head = member.cursor, anchor = member.selection;
    const [start, end] = member.selection.backward ? [head, anchor] : [anchor, head];
    display.selection = {
      startLine: start.line, startColumn: start.col, endLine: end.line, endColumn: end.col,
    };
  }
  return display;
}

/**
 * Keep a CursorRenderer and a TypingIndicator in step with a document's other members.
 * Returns a function that stops it (and clears what it drew).
 */
export function bindPresence(doc, { renderer = null, typing = null } = {}) {
  const draw = (member) => {
    if (!renderer) return;
    if (member.cursor) renderer.updateCursor(cursorDisplay(member));
    else renderer.removeCursor(member.sid);
  };
  const redrawAll = () => {
    if (renderer) renderer.clear();
    if (typing) { typing.typingUsers.clear(); typing.render(); }
    for (const member of doc.others().values()) {
      draw(member);
      if (typing && member.typing) typing.updateTyping(member.sid, member.name, true);
    }
  };
  const handlers = {
    joined: (e) => { draw(e.detail.member); },
    left: (e) => {
      if (renderer) renderer.removeCursor(e.detail.sid);
      if (typing) typing.updateTyping(e.detail.sid, '', false);
    },
    cursor: (e) => { const m = doc.members.get(e.detail.sid); if (m) draw(m); },
    typing: (e) => {
      const m = doc.members.get(e.detail.sid);
      if (!m) return;
      if (typing) typing.updateTyping(m.sid, m.name, e.detail.typing);
      if (renderer && m.cursor) draw(m);
    },
    // DISCONNECTED and back: the caret greys out and comes back, it is never removed.
    activity: (e) => { const m = doc.members.get(e.detail.sid); if (m) draw(m); },
    resynced: redrawAll,
  };
  for (const [type, fn] of Object.entries(handlers)) doc.addEventListener(type, fn);
  redrawAll();
  return () => {
    for (const [type, fn] of Object.entries(handlers)) doc.removeEventListener(type, fn);
    if (renderer) renderer.clear();
    if (typing) { typing.typingUsers.clear(); typing.render(); }
  };
}

// Most present first: a user's activity is that of their most present session.
const PRESENCE_RANK = [0, 2, 1, 3, 4, 5]; // by activity code: Editing, Selecting, Viewing, ...
const ACTIVITY_LABELS = ['Editing', 'Viewing', 'Selecting', 'Idle', 'Away', 'Disconnected'];

/**
 * Members grouped by user (one entry however many tabs): {userId, name, avatar, color, kind,
 * agent, sessions, activity, typing, disconnected, status}, in order of first appearance.
 * `activity` is the most present of the sessions' (Editing, Selecting, Viewing, Idle, Away,
 * Disconnected); `typing` is true when any session types; `disconnected` when every session
 * is; a user with an agent session is an agent (v1.1 `kind`; a v1 member is a person);
 * `status` is the first status text among the sessions, or null.
 */
export function usersOf(members) {
  const users = new Map();
  for (const m of members) {
    let user = users.get(m.userId);
    if (!user) {
      user = {
        userId: m.userId, name: m.name, avatar: m.avatar, color: m.color, kind: m.kind ?? 0,
        agent: false, sessions: [], activity: m.activity, typing: false, disconnected: true,
        status: null,
      };
      users.set(m.userId, user);
    }
    user.sessions.push(m);
    if (PRESENCE_RANK[m.activity] < PRESENCE_RANK[user.activity]) user.activity = m.activity;
    user.typing ||= Boolean(m.typing) && !m.disconnected;
    user.disconnected &&= Boolean(m.disconnected);
    if (m.kind === AGENT) user.kind = AGENT;
    user.agent = user.kind === AGENT;
    user.status ??= m.status || null;
  }
  return [...users.values()];
}

/** The label of an activity code ("Editing", ..., "Disconnected"). */
export function activityLabel(activity) {
  return ACTIVITY_LABELS[activity] ?? 'Unknown';
}

function initials(name) {
  const words = String(name).trim().split(/\s+/).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[words.length - 1][0] : (words[0] ?? '?').slice(0, 2);
  return letters.toUpperCase();
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
export class AvatarStack {
  constructor(container, { max = 8, me = null } = {}) {
    this.container = container;
    this.max = max;
    this.me = me; // a userId shown as "(you)"
  }

  render(users) {
    const shown = users.slice(0, this.max);
    const items = shown.map((user) => this.avatar(user));
    if (users.length > shown.length) {
      const more = document.createElement('div');
      more.className = 'pr-avatar-more';
      more.textContent = `+${users.length - shown.length}`;
      items.push(more);
    }
    this.container.replaceChildren(...items);
  }

  avatar(user) {
    const el = document.createElement('div');
    el.className = 'pr-avatar';
    el.dataset.user = user.userId;
    el.classList.toggle('pr-avatar-typing', user.typing);
    el.classList.toggle('pr-avatar-disconnected', user.disconnected);
    el.classList.toggle('pr-avatar-agent', Boolean(user.agent));
    const face = document.createElement('div');
    face.className = 'pr-avatar-face';
    face.style.backgroundColor = user.disconnected ? DISCONNECTED_COLOR : user.color;
    if (user.avatar) {
      const img = document.createElement('img');
      img.src = user.avatar;
      img.alt = '';
      face.appendChild(img);
    } else {
      face.textContent = initials(user.name);
    }
    el.appendChild(face);
    if (user.sessions.length > 1) {
      const badge = document.createElement('span');
      badge.className = 'pr-avatar-badge';
      badge.textContent = String(user.sessions.length);
      badge.title = `${user.sessions.length} tabs`;
      el.appendChild(badge);
    }
    const name = document.createElement('div');
    name.className = 'pr-avatar-name';
    name.textContent = user.userId === this.me ? `${user.name} (you)` : user.name;
    const activity = document.createElement('div');
    activity.className = 'pr-avatar-activity';
    activity.textContent = user.typing ? `${activityLabel(user.activity)}, typing` : activityLabel(user.activity);
    el.append(name, activity);
    el.title = `${user.name}: ${activity.textContent}`;
    // Users made by hand (not by usersOf) may lack it: the status of any session counts.
    const text = user.status ?? user.sessions.find((m) => m.status)?.status ?? null;
    if (text) {
      const status = document.createElement('div');
      status.className = 'pr-avatar-status';
      status.textContent = text; // text, never markup: anyone in the document sets it
      el.appendChild(status);
      el.title += ` (${text})`;
    }
    return el;
  }
}
