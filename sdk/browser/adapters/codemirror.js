// presence-relay for CodeMirror 6: the others' carets (with a name label) and selections drawn
// as the editor's own decorations, and this editor's cursor, selection, typing, focus and
// visible lines sent to the relay. Plain ES module; `@codemirror/state` and `@codemirror/view`
// are peer dependencies, imported by their bare names (the consumer's bundler resolves them).
//
//   import { EditorView } from '@codemirror/view';
//   import { connect } from 'presence-relay';
//   import { presenceCodeMirror } from 'presence-relay/codemirror';
//   const doc = await (await connect(url, { userId: 'ann', name: 'Ann' })).join('notes');
//   const view = new EditorView({ parent: document.body, doc: text,
//     extensions: [presenceCodeMirror(doc, { labelTimeoutMs: 3000 })] });
//
// Positions: sent as line = state.doc.lineAt(pos).number - 1, col = pos - line.from, off = pos
// (UTF-16 offsets), for the main selection (its head is the cursor). A remote position is
// placed by its line and col, clamped to the last line and to that line's length: the relay
// carries presence, not content, so the two editors' texts may differ (when something else
// keeps them in sync, line/col and off agree). Between a member's moves its caret maps
// through this editor's edits.
//
// What is drawn: per other member with a cursor, a widget `.pr-caret[data-sid]` (2px in the
// member's color, `.pr-typing` while it types, `.pr-disconnected` and grey while its
// connection is down) holding `.pr-caret-label` (the name; `.pr-label-faded` after
// `labelTimeoutMs` without a move), and its selection as marks `.pr-selection[data-sid]`.
// Options: `labelTimeoutMs` (3000), `viewportThrottleMs` (100).
//
// Typing: a transaction that changes the document with a user event (CodeMirror's input,
// delete, drop, undo...) and is not `Transaction.remote`; a blur soon after stops it at once.
// Focus is reported on changes only: an editor nobody has clicked into yet leaves the member
// as focused as its page is (presence.js combines the two).

import { StateEffect, StateField, Transaction } from '@codemirror/state';
import { Decoration, EditorView, ViewPlugin, WidgetType } from '@codemirror/view';
import {
  DISCONNECTED_COLOR, LocalLinkBase, SELECTION_ALPHA, RemoteTracker, ViewportReporter, allRemotes,
  applyChanges, mapRemotes, scrollPct,
} from './shared.js';

/** The CodeMirror extension; see the header. */
export function presenceCodeMirror(doc, options = {}) {
  const labelTimeoutMs = options.labelTimeoutMs ?? 3000;
  const viewportThrottleMs = options.viewportThrottleMs ?? 100;
  // Per call: each extension (one document's presence) has its own effect and field.
  const remoteEffect = StateEffect.define();

  const field = StateField.define({
    create: (state) => {
      const remotes = applyChanges(new Map(), { reset: true, changes: allRemotes(doc, new Set()) },
        (pos) => placeLineCol(state.doc, pos));
      return { remotes, decorations: buildDecorations(remotes) };
    },
    update: (value, tr) => {
      let remotes = tr.docChanged
        ? mapRemotes(value.remotes, (pos) => tr.changes.mapPos(pos, 1)) : value.remotes;
      for (const e of tr.effects) {
        if (e.is(remoteEffect)) {
          remotes = applyChanges(remotes, e.value, (pos) => placeLineCol(tr.state.doc, pos));
        }
      }
      if (remotes === value.remotes) return value;
      return { remotes, decorations: buildDecorations(remotes) };
    },
    provide: (f) => EditorView.decorations.from(f, (value) => value.decorations),
  });

  const plugin = ViewPlugin.fromClass(class {
    constructor(view) {
      this.link = new LocalLink(view, doc, viewportThrottleMs);
      this.tracker = new RemoteTracker(doc, labelTimeoutMs,
        (update) => view.dispatch({ effects: remoteEffect.of(update) }));
      // The state may be older than this view: catch up on what happened in between.
      queueMicrotask(() => this.tracker.resync());
    }

    update(update) {
      this.link.update(update);
    }

    destroy() {
      this.tracker.destroy();
      this.link.destroy();
    }
  });

  return [field, plugin, theme];
}

// ---------------------------------------------------------------- this editor -> the relay

/** Sends what this editor's user does: cursor and selection, typing, focus, viewport. */
class LocalLink extends LocalLinkBase {
  constructor(view, doc, viewportThrottleMs) {
    super(doc);
    this.view = view;
    this.viewport = new ViewportReporter(doc, viewportThrottleMs, () => measureViewport(view));
    this.onScroll = (e) => {
      const t = e.target;
      if (t === view.dom.ownerDocument || (t instanceof Node && t.contains(view.scrollDOM))) {
        this.viewport.schedule();
      }
    };
    this.onResize = () => this.viewport.schedule();
    const win = view.dom.ownerDocument.defaultView;
    // Scroll does not bubble: captured at the window, it is seen from the editor's own
    // scroller and from any ancestor that scrolls it.
    win.addEventListener('scroll', this.onScroll, { capture: true, passive: true });
    win.addEventListener('resize', this.onResize);
    this.win = win;
    this.viewport.schedule();
  }

  update(u) {
    if (u.selectionSet || u.docChanged) this.sendCursor(u.state);
    if (u.transactions.some(isUserEdit)) this.typed();
    if (u.focusChanged) this.focusChanged(u.view.hasFocus);
    if (u.viewportChanged || u.geometryChanged || u.docChanged) this.viewport.schedule();
  }

  sendCursor(state) {
    const { head, anchor } = state.selection.main;
    const h = wirePos(state.doc, head);
    const a = head === anchor ? null : { ...wirePos(state.doc, anchor), backward: head < anchor };
    this.sendPositions(h, a);
  }
}

// An edit of this editor's user: CodeMirror marks input, deletes, drops, undo and redo with a
// user event; a change from elsewhere (collaboration, the application) has none, or is remote.
const isUserEdit = (tr) => tr.docChanged && tr.annotation(Transaction.userEvent) !== undefined
  && !tr.annotation(Transaction.remote);

function wirePos(text, pos) {
  const line = text.lineAt(pos);
  return { line: line.number - 1, col: pos - line.from, off: pos };
}

/** The lines on screen and the scroller's scroll percentage, or null when none is. */
function measureViewport(view) {
  if (!view.dom.isConnected) return null;
  const scroller = view.scrollDOM;
  const rect = scroller.getBoundingClientRect();
  const win = view.dom.ownerDocument.defaultView;
  const top = Math.max(rect.top, 0), bottom = Math.min(rect.bottom, win.innerHeight);
  if (bottom <= top) return null;
  const text = view.state.doc;
  const first = view.lineBlockAtHeight(top - view.documentTop);
  const last = view.lineBlockAtHeight(Math.max(top, bottom - 1) - view.documentTop);
  return {
    top: text.lineAt(first.from).number - 1,
    bottom: text.lineAt(last.to).number - 1,
    pct: scrollPct(scroller),
  };
}

// ---------------------------------------------------------------- the relay -> this editor

// Line and column, clamped: the remote's text may not be this one.
function placeLineCol(text, { line, col }) {
  const l = text.line(Math.min(Math.max(0, line), text.lines - 1) + 1);
  return l.from + Math.min(Math.max(0, col), l.length);
}

function buildDecorations(remotes) {
  const ranges = [];
  for (const [sid, { look, head, anchor }] of remotes) {
    const color = look.disconnected ? DISCONNECTED_COLOR : look.color;
    if (anchor !== null && anchor !== head) {
      const mark = Decoration.mark({
        class: look.disconnected ? 'pr-selection pr-disconnected' : 'pr-selection',
        attributes: {
          'data-sid': String(sid),
          style: `background-color: color-mix(in srgb, ${color} ${SELECTION_ALPHA}%, transparent)`,
        },
        sid,
      });
      ranges.push(mark.range(Math.min(head, anchor), Math.max(head, anchor)));
    }
    const caret = Decoration.widget({ widget: new CaretWidget(look, color), side: 1, sid });
    ranges.push(caret.range(head));
  }
  return Decoration.set(ranges, true);
}

class CaretWidget extends WidgetType {
  constructor(look, color) {
    super();
    this.look = look;
    this.color = color;
  }

  eq(other) {
    const a = this.look, b = other.look;
    return a.sid === b.sid && a.name === b.name && this.color === other.color
      && a.disconnected === b.disconnected && a.typing === b.typing && a.faded === b.faded;
  }

  toDOM() {
    const caret = document.createElement('span');
    caret.className = 'pr-caret';
    caret.setAttribute('aria-hidden', 'true');
    const label = document.createElement('span');
    label.className = 'pr-caret-label';
    // A word joiner gives the inline caret the line's height without taking any width.
    caret.append('\u2060', label);
    this.paint(caret);
    return caret;
  }

  // The same element, restyled: the label's fade can then be a CSS transition.
  updateDOM(dom, _view, from) {
    if (!(from instanceof CaretWidget) || from.look.sid !== this.look.sid) return false;
    this.paint(dom);
    return true;
  }

  paint(caret) {
    const { sid, name, disconnected, typing, faded } = this.look;
    caret.dataset.sid = String(sid);
    caret.classList.toggle('pr-typing', typing);
    caret.classList.toggle('pr-disconnected', disconnected);
    caret.style.borderLeftColor = this.color;
    const label = caret.querySelector('.pr-caret-label');
    label.textContent = disconnected ? `${name} (Disconnected)` : name;
    label.style.backgroundColor = this.color;
    label.classList.toggle('pr-label-faded', faded);
  }

  ignoreEvent() {
    return true;
  }
}

const theme = EditorView.baseTheme({
  '.pr-caret': {
    position: 'relative',
    borderLeft: '2px solid',
    marginLeft: '-1px',
    marginRight: '-1px',
    boxSizing: 'border-box',
    pointerEvents: 'none',
    wordBreak: 'normal',
  },
  '.pr-caret-label': {
    position: 'absolute',
    bottom: '100%',
    left: '-2px',
    padding: '0 3px',
    borderRadius: '3px 3px 3px 0',
    color: 'white',
    fontSize: '11px',
    lineHeight: '15px',
    fontFamily: 'sans-serif',
    whiteSpace: 'nowrap',
    userSelect: 'none',
    transition: 'opacity 0.3s',
    zIndex: '10',
  },
  '.pr-caret-label.pr-label-faded': { opacity: '0' },
  '.pr-caret.pr-typing .pr-caret-label': { fontStyle: 'italic' },
});
