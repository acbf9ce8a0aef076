// What the CodeMirror and ProseMirror adapters share: following the document's other members
// (with the label timers), and sending this editor's viewport. Internal to the adapters (not
// in the package's exports): its API may change with them.

import { Throttle } from '../presence.js';

export const DISCONNECTED_COLOR = '#9e9e9e';

export const SELECTION_ALPHA = 25; // percent of the member color in a selection's background

export function scrollPct(el) {
  const range = el.scrollHeight - el.clientHeight;
  return range > 0 ? Math.min(100, Math.max(0, (el.scrollTop / range) * 100)) : 0;
}

/**
 * What both editors' links to the relay share: the cursor sent only when it changed, the
 * typing state a blur must end, and the window listeners (`win`, `onScroll`, `onResize`,
 * `viewport`, set by the subclass) taken down on destroy.
 */
export class LocalLinkBase {
  constructor(doc) {
    this.doc = doc;
    this.sentCursor = null; // a key of what moveCursor last got: an unchanged one is not resent
    this.typingUntil = 0;
  }

  sendPositions(h, a) {
    const key = JSON.stringify([h, a]);
    if (key === this.sentCursor) return; // resending would count as an action (wakes Idle)
    this.sentCursor = key;
    this.doc.moveCursor(h.line, h.col, h.off, a);
  }

  typed() {
    this.typingUntil = performance.now() + (this.doc.typingDebounceMs ?? 500);
    this.doc.typed();
  }

  focusChanged(focused) {
    this.doc.setFocus(focused);
    // The others stop seeing "typing" at once rather than a debounce later.
    if (!focused && performance.now() < this.typingUntil) {
      this.typingUntil = 0;
      this.doc.stopTyping();
    }
  }

  destroy() {
    this.win.removeEventListener('scroll', this.onScroll, { capture: true });
    this.win.removeEventListener('resize', this.onResize);
    this.viewport.destroy();
  }
}

/**
 * VIEWPORT, throttled (presence.js sends every setViewport) and only when it changed. The
 * layout is read after the editor's update, at send time: the trailing send is the latest.
 */
export class ViewportReporter {
  constructor(doc, intervalMs, measure) {
    this.doc = doc;
    this.measure = measure;
    this.last = null;
    this.scheduled = false;
    this.destroyed = false;
    this.throttle = new Throttle(intervalMs, () => this.send());
  }

  schedule() {
    if (this.scheduled || this.destroyed) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      if (!this.destroyed) this.throttle.offer(true);
    });
  }

  send() {
    const vp = this.measure();
    if (vp === null) return;
    const l = this.last;
    if (l !== null && l.top === vp.top && l.bottom === vp.bottom && l.pct === vp.pct) return;
    this.last = vp;
    this.doc.setViewport(vp.top, vp.bottom, vp.pct);
  }

  destroy() {
    this.destroyed = true;
    this.throttle.cancel();
  }
}

/**
 * Follows the document's other members and hands each change to `push` as
 * `{reset, changes: [{sid, remote, moved}]}` (remote null: not drawn). Also owns the label
 * timers: a member's label fades `labelTimeoutMs` after its last move.
 */
export class RemoteTracker {
  constructor(doc, labelTimeoutMs, push) {
    this.doc = doc;
    this.labelTimeoutMs = labelTimeoutMs;
    this.push = push;
    this.faded = new Set();
    this.timers = new Map();
    this.destroyed = false; // a resync queued before destroy() must not dispatch after it
    const changed = (moved) => (e) => this.changed(e.detail.sid ?? e.detail.member.sid, moved);
    this.handlers = {
      joined: changed(true),
      cursor: changed(true),
      typing: changed(false),
      activity: changed(false),
      left: changed(true),
      resynced: () => this.resync(),
    };
    for (const [type, fn] of Object.entries(this.handlers)) doc.addEventListener(type, fn);
    for (const sid of doc.others().keys()) this.wake(sid);
  }

  changed(sid, moved) {
    if (this.destroyed) return;
    if (moved) this.wake(sid);
    const remote = snapshot(this.doc, sid, this.faded);
    this.push({ reset: false, changes: [{ sid, remote, moved }] });
  }

  resync() {
    if (this.destroyed) return;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.faded.clear();
    for (const sid of this.doc.others().keys()) this.wake(sid);
    this.push({ reset: true, changes: allRemotes(this.doc, this.faded) });
  }

  // The label shows again, and fades after labelTimeoutMs unless the member moves again.
  wake(sid) {
    this.faded.delete(sid);
    clearTimeout(this.timers.get(sid));
    if (!this.doc.members.has(sid)) {
      this.timers.delete(sid);
      return;
    }
    this.timers.set(sid, setTimeout(() => {
      this.timers.delete(sid);
      this.faded.add(sid);
      this.changed(sid, false);
    }, this.labelTimeoutMs));
  }

  destroy() {
    this.destroyed = true;
    for (const [type, fn] of Object.entries(this.handlers)) this.doc.removeEventListener(type, fn);
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }
}

/** What is drawn of a member, copied: presence.js updates its members in place. */
function snapshot(doc, sid, faded) {
  const m = doc.members.get(sid);
  if (m === undefined || sid === doc.sid || !m.cursor) return null;
  return {
    sid,
    name: m.name,
    color: cssColor(m.color),
    disconnected: Boolean(m.disconnected),
    typing: Boolean(m.typing) && !m.disconnected,
    faded: faded.has(sid),
    cursor: { ...m.cursor },
    selection: m.selection ? { ...m.selection } : null,
  };
}

// The color goes into style attributes: only a real CSS color, never anything more.
const cssColor = (color) => (typeof color === 'string' && globalThis.CSS?.supports?.('color', color)
  ? color : DISCONNECTED_COLOR);

export function allRemotes(doc, faded) {
  return [...doc.others().keys()]
    .map((sid) => ({ sid, remote: snapshot(doc, sid, faded), moved: true }));
}

/**
 * The remotes as drawn, after a tracker's update `{reset, changes}`: sid -> {look, head,
 * anchor}, positions in this editor's document; `place(position)` turns a wire position
 * (`{line, col, off}`) into one (each editor has its own rule, see their headers).
 */
export function applyChanges(remotes, { reset, changes }, place) {
  const next = reset ? new Map() : new Map(remotes);
  for (const { sid, remote, moved } of changes) {
    if (remote === null) {
      next.delete(sid);
      continue;
    }
    const old = next.get(sid);
    // A change of look only (typing, label, connection) keeps the caret where local edits
    // mapped it; a move places it where the wire says.
    const keep = !moved && old !== undefined;
    const head = keep ? old.head : place(remote.cursor);
    const anchor = keep ? old.anchor : (remote.selection ? place(remote.selection) : null);
    next.set(sid, { look: remote, head, anchor });
  }
  return next;
}

/** The remotes through a local edit: `map(pos)` is the editor's position mapping. */
export function mapRemotes(remotes, map) {
  const next = new Map();
  for (const [sid, r] of remotes) {
    next.set(sid, { ...r, head: map(r.head), anchor: r.anchor === null ? null : map(r.anchor) });
  }
  return next;
}
