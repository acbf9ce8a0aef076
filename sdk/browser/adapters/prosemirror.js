// presence-relay for ProseMirror (and Tiptap): the others' carets (with a name label) and
// selections drawn as the editor's own decorations, and this editor's cursor, selection,
// typing, focus and visible lines sent to the relay. Plain ES module; `prosemirror-state`,
// `prosemirror-view` and `prosemirror-model` are peer dependencies, imported by their bare
// names (the consumer's bundler resolves them). Tiptap: return the plugin from an Extension's
// `addProseMirrorPlugins()`.
//
//   import { EditorState } from 'prosemirror-state';
//   import { EditorView } from 'prosemirror-view';
//   import { presenceProseMirror } from 'presence-relay/prosemirror';
//   const doc = await client.join('notes'); // client = await connect(url, {...}), presence-relay
//   const state = EditorState.create({ schema, plugins: [presenceProseMirror(doc)] });
//   const view = new EditorView(document.querySelector('#editor'), { state });
//
// Positions: sent as off = the ProseMirror position, line = the index of the textblock
// holding it (0-based, textblocks in document order), col = off - the start of that
// textblock's content (a position between blocks counts in the textblock before it, col
// clamped to its length). A remote position is placed by `off`, clamped to
// [0, doc.content.size] and moved to the nearest place a caret can be: the relay carries
// presence, not content, so the two editors' documents may differ (when something else keeps
// them in sync, off agrees). Between a member's moves its caret maps through this editor's
// transactions.
//
// What is drawn: per other member with a cursor, a widget `.pr-caret[data-sid]` (2px in the
// member's color, `.pr-typing` while it types, `.pr-disconnected` and grey while its
// connection is down) holding `.pr-caret-label` (the name; `.pr-label-faded` after
// `labelTimeoutMs` without a move), and its selection as inline decorations
// `.pr-selection[data-sid]`. The look is inline styles: nothing is injected into the page.
// Options: `labelTimeoutMs` (3000), `viewportThrottleMs` (100).
//
// Typing: ProseMirror does not mark the transactions that come from the user, so a document
// change counts as typed when it follows, within INPUT_WINDOW_MS, a keyboard, input, paste,
// drop or cut event in this editor, and is not `addToHistory: false` (what collaboration
// plugins set on remote steps); a blur soon after stops it at once. Focus is reported on
// changes only: an editor nobody has clicked into yet leaves the member as focused as its
// page is (presence.js combines the two).

import { Plugin, PluginKey, TextSelection } from 'prosemirror-state';
import { Decoration, DecorationSet } from 'prosemirror-view';
import {
  DISCONNECTED_COLOR, LocalLinkBase, SELECTION_ALPHA, RemoteTracker, ViewportReporter, allRemotes,
  applyChanges, mapRemotes, scrollPct,
} from './shared.js';

// ProseMirror reads typed text from the DOM a moment after the input event (a mutation
// observer, and for compositions a short timeout): a change this soon after one is the user's.
const INPUT_WINDOW_MS = 250;
const INPUT_EVENTS = ['keydown', 'beforeinput', 'input', 'compositionend', 'paste', 'drop', 'cut'];

/** The ProseMirror plugin; see the header. */
export function presenceProseMirror(doc, options = {}) {
  const labelTimeoutMs = options.labelTimeoutMs ?? 3000;
  const viewportThrottleMs = options.viewportThrottleMs ?? 100;
  const key = new PluginKey('presence-relay'); // a fresh key per plugin, as a plugin needs
  const links = new WeakMap(); // EditorView -> its LocalLink

  const inputEvent = (view) => {
    const link = links.get(view);
    if (link) link.lastInputAt = performance.now();
    return false;
  };
  const focusEvent = (focused) => (view) => {
    links.get(view)?.focusChanged(focused);
    return false;
  };

  return new Plugin({
    key,
    state: {
      init: (_config, state) => {
        const all = { reset: true, changes: allRemotes(doc, new Set()) };
        const remotes = applyChanges(new Map(), all, (pos) => placeOff(state.doc, pos.off));
        return { remotes, decorations: buildDecorations(remotes, state.doc), edits: 0 };
      },
      apply: (tr, value) => {
        let { remotes, edits } = value;
        if (tr.docChanged) {
          remotes = mapRemotes(remotes, (pos) => tr.mapping.map(pos, 1));
          if (tr.getMeta('addToHistory') !== false) edits += 1;
        }
        const change = tr.getMeta(key);
        if (change) remotes = applyChanges(remotes, change, (pos) => placeOff(tr.doc, pos.off));
        if (remotes === value.remotes) return edits === value.edits ? value : { ...value, edits };
        return { remotes, decorations: buildDecorations(remotes, tr.doc), edits };
      },
    },
    props: {
      decorations: (state) => key.getState(state).decorations,
      handleDOMEvents: {
        ...Object.fromEntries(INPUT_EVENTS.map((type) => [type, inputEvent])),
        focus: focusEvent(true),
        blur: focusEvent(false),
      },
    },
    view: (view) => {
      const link = new LocalLink(view, doc, key, viewportThrottleMs);
      links.set(view, link);
      const tracker = new RemoteTracker(doc, labelTimeoutMs,
        (change) => view.dispatch(view.state.tr.setMeta(key, change)));
      // The state may be older than this view: catch up on what happened in between.
      queueMicrotask(() => tracker.resync());
      return {
        update: (v, prevState) => link.update(v, prevState),
        destroy: () => {
          tracker.destroy();
          link.destroy();
          links.delete(view);
        },
      };
    },
  });
}

// ---------------------------------------------------------------- this editor -> the relay

/** Sends what this editor's user does: cursor and selection, typing, focus, viewport. */
class LocalLink extends LocalLinkBase {
  constructor(view, doc, key, viewportThrottleMs) {
    super(doc);
    this.view = view;
    this.key = key;
    this.lastInputAt = -Infinity;
    this.viewport = new ViewportReporter(doc, viewportThrottleMs, () => measureViewport(view));
    this.onScroll = (e) => {
      const t = e.target;
      if (t === view.dom.ownerDocument || (t instanceof Node && t.contains(view.dom))) {
        this.viewport.schedule();
      }
    };
    this.onResize = () => this.viewport.schedule();
    this.win = view.dom.ownerDocument.defaultView;
    // Scroll does not bubble: captured at the window, it is seen from whichever ancestor
    // scrolls the editor (or from the editor itself).
    this.win.addEventListener('scroll', this.onScroll, { capture: true, passive: true });
    this.win.addEventListener('resize', this.onResize);
    this.viewport.schedule();
  }

  update(view, prevState) {
    const { state } = view;
    const docChanged = state.doc !== prevState.doc;
    if (docChanged || !state.selection.eq(prevState.selection)) this.sendCursor(state);
    const edited = this.key.getState(state)?.edits !== this.key.getState(prevState)?.edits;
    if (edited && performance.now() - this.lastInputAt < INPUT_WINDOW_MS) this.typed();
    if (docChanged) this.viewport.schedule();
  }

  sendCursor(state) {
    const { head, anchor } = state.selection;
    const h = wirePos(state.doc, head);
    const a = head === anchor ? null : { ...wirePos(state.doc, anchor), backward: head < anchor };
    this.sendPositions(h, a);
  }
}

/** A position in wire terms (see the header). */
function wirePos(pmDoc, pos) {
  let line = -1, start = 0, size = 0;
  pmDoc.nodesBetween(0, pos, (node, p) => {
    if (!node.isTextblock) return true;
    if (p + 1 <= pos) {
      line += 1;
      start = p + 1;
      size = node.content.size;
    }
    return false;
  });
  if (line < 0) return { line: 0, col: 0, off: pos }; // before the first textblock
  return { line, col: Math.min(pos - start, size), off: pos };
}

function textblockCount(pmDoc) {
  let n = 0;
  pmDoc.descendants((node) => {
    if (node.isTextblock) n += 1;
    return !node.isTextblock;
  });
  return n;
}

// The element that scrolls the editor: itself or an ancestor, null for the page.
function scrollerOf(el) {
  for (let n = el; n instanceof Element && n !== n.ownerDocument.body; n = n.parentElement) {
    const overflow = getComputedStyle(n).overflowY;
    if (/auto|scroll|overlay/.test(overflow) && n.scrollHeight > n.clientHeight) return n;
  }
  return null;
}

/** The textblocks on screen and the scroller's scroll percentage, or null when none is. */
function measureViewport(view) {
  const dom = view.dom;
  if (!dom.isConnected) return null;
  const win = dom.ownerDocument.defaultView;
  const scroller = scrollerOf(dom);
  const box = dom.getBoundingClientRect();
  const port = scroller === null
    ? { top: 0, bottom: win.innerHeight } : scroller.getBoundingClientRect();
  const top = Math.max(box.top, port.top, 0);
  const bottom = Math.min(box.bottom, port.bottom, win.innerHeight);
  if (bottom <= top) return null;
  const x = box.left + box.width / 2;
  const from = view.posAtCoords({ left: x, top: top + 1 });
  const to = view.posAtCoords({ left: x, top: Math.max(top, bottom - 1) });
  const first = from ? wirePos(view.state.doc, from.pos).line : 0;
  const last = to ? wirePos(view.state.doc, to.pos).line
    : Math.max(0, textblockCount(view.state.doc) - 1);
  const el = scroller ?? dom.ownerDocument.scrollingElement;
  return { top: first, bottom: Math.max(first, last), pct: el ? scrollPct(el) : 0 };
}

// ---------------------------------------------------------------- the relay -> this editor

// By offset, clamped, at the nearest place a caret can be: the remote's document may not be
// this one, and a widget between two blocks would draw a stray line.
function placeOff(pmDoc, off) {
  const $pos = pmDoc.resolve(Math.min(Math.max(0, off), pmDoc.content.size));
  if ($pos.parent.inlineContent) return $pos.pos;
  const near = TextSelection.findFrom($pos, 1, true) ?? TextSelection.findFrom($pos, -1, true);
  return near ? near.head : $pos.pos;
}

function buildDecorations(remotes, pmDoc) {
  const decorations = [];
  for (const [sid, { look, head, anchor }] of remotes) {
    const color = look.disconnected ? DISCONNECTED_COLOR : look.color;
    if (anchor !== null && anchor !== head) {
      decorations.push(Decoration.inline(Math.min(head, anchor), Math.max(head, anchor), {
        class: look.disconnected ? 'pr-selection pr-disconnected' : 'pr-selection',
        'data-sid': String(sid),
        style: `background-color: color-mix(in srgb, ${color} ${SELECTION_ALPHA}%, transparent)`,
      }, { sid }));
    }
    // The key says when the element must be made again: ProseMirror keeps a widget's DOM
    // while its key is the same.
    const key = JSON.stringify(['pr-caret', sid, look.name, color, look.disconnected,
      look.typing, look.faded]);
    // placeOff again: a mapped position may have left the textblocks (a block deleted).
    decorations.push(Decoration.widget(placeOff(pmDoc, head), () => caretElement(look, color),
      { key, side: 1, ignoreSelection: true, sid }));
  }
  return DecorationSet.create(pmDoc, decorations);
}

function caretElement(look, color) {
  const caret = document.createElement('span');
  caret.className = 'pr-caret';
  caret.classList.toggle('pr-typing', look.typing);
  caret.classList.toggle('pr-disconnected', look.disconnected);
  caret.dataset.sid = String(look.sid);
  caret.setAttribute('aria-hidden', 'true');
  caret.style.cssText = `position: relative; border-left: 2px solid ${color}; margin-left: -1px;`
    + ' margin-right: -1px; box-sizing: border-box; pointer-events: none; word-break: normal;';
  const label = document.createElement('span');
  label.className = look.faded ? 'pr-caret-label pr-label-faded' : 'pr-caret-label';
  label.textContent = look.disconnected ? `${look.name} (Disconnected)` : look.name;
  label.style.cssText = 'position: absolute; bottom: 100%; left: -2px; padding: 0 3px;'
    + ' border-radius: 3px 3px 3px 0; color: white; font: 11px/15px sans-serif;'
    + ` white-space: nowrap; user-select: none; z-index: 10; background-color: ${color};`
    + (look.faded ? ' opacity: 0;' : '') + (look.typing ? ' font-style: italic;' : '');
  // A word joiner gives the inline caret the line's height without taking any width.
  caret.append('\u2060', label);
  return caret;
}
