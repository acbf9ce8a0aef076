// The plain-textarea adapter: a <textarea> reports its caret, selection, keystrokes, focus and
// visible lines to a PresenceDocument, and shows the other members' carets (with name labels)
// and selections drawn over it. No editor needed, no dependency: the demo page uses it.
//
//   import { connect } from 'presence-relay';
//   import { bindTextarea } from 'presence-relay/textarea';
//   const client = await connect('ws://127.0.0.1:8765/ws', { userId: 'ann', name: 'Ann' });
//   const doc = await client.join('notes');
//   const binding = bindTextarea(doc, document.querySelector('textarea'));
//   // ... binding.destroy() stops it and removes what it drew.
//
// Positions on the wire: `line` and `col` are 0-based, `off` is the UTF-16 offset in the text
// (as CodeMirror's adapter). Remote carets are placed by line and col, clamped to the local
// text: the relay carries presence, not content, so two tabs' texts may differ (when something
// else syncs the content, line/col and off agree).
//
// How it draws: a textarea cannot hold decorations, so the adapter keeps a hidden "mirror" of
// the text (one block per line, laid out with the textarea's own font, padding and width) and
// measures positions in it with DOM Ranges; what it draws goes in an overlay over the
// textarea's client area that scrolls with it. Elements: `.pr-caret[data-sid]` (with
// `.pr-caret-label`, faded with `.pr-label-faded` after `labelTimeoutMs` without a move;
// `.pr-typing` while the member types, `.pr-disconnected` while its connection is lost) and
// `.pr-selection[data-sid]`, one per line fragment. Essential styles are set inline, so no
// stylesheet is needed; the classes are hooks for one.
//
// The textarea's parent becomes the positioning box (`position: relative` if it was static).

import { Throttle } from '../presence.js';

export const LABEL_TIMEOUT_MS = 3000;
export const VIEWPORT_THROTTLE_MS = 100;
const DISCONNECTED_COLOR = '#9e9e9e';
const ZWSP = '\u200b'; // ends every mirrored line: an empty line has a height, col = length a glyph
const MIRRORED_STYLES = [
  'fontFamily', 'fontSize', 'fontWeight', 'fontStyle', 'fontVariant', 'fontStretch',
  'lineHeight', 'letterSpacing', 'wordSpacing', 'tabSize', 'textTransform', 'textIndent',
  'textAlign', 'direction', 'paddingTop', 'paddingRight', 'paddingBottom', 'paddingLeft',
];

/** Offsets where each line starts. */
function lineStarts(text) {
  const starts = [0];
  for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) starts.push(i + 1);
  return starts;
}

/** {line, col, off} of an offset. */
export function positionAt(text, off) {
  const starts = lineStarts(text);
  let lo = 0, hi = starts.length - 1;
  while (lo < hi) { // the last line starting at or before off
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= off) lo = mid; else hi = mid - 1;
  }
  return { line: lo, col: off - starts[lo], off };
}

/** A remote {line, col} made to fit the local text. */
export function clampPosition(text, line, col) {
  const starts = lineStarts(text);
  const l = Math.min(line, starts.length - 1);
  const end = l + 1 < starts.length ? starts[l + 1] - 1 : text.length;
  return { line: l, col: Math.min(col, end - starts[l]) };
}

function px(value) { return `${value}px`; }

class Mirror {
  constructor(textarea) {
    this.textarea = textarea;
    // A zero-size clipping box: the mirror is laid out (so it can be measured) but neither
    // shown nor able to grow the page.
    this.clip = document.createElement('div');
    Object.assign(this.clip.style, {
      position: 'absolute', width: '0', height: '0', overflow: 'hidden', visibility: 'hidden',
    });
    this.clip.setAttribute('aria-hidden', 'true');
    this.box = document.createElement('div');
    Object.assign(this.box.style, {
      position: 'absolute', left: '0', top: '0', whiteSpace: 'pre-wrap',
      overflowWrap: 'break-word', boxSizing: 'content-box', border: '0', margin: '0',
    });
    this.clip.appendChild(this.box);
    textarea.insertAdjacentElement('afterend', this.clip);
    this.text = null;
    this.lines = [];
  }

  /** Lay the mirror out as the textarea is now (its text, font and width). */
  sync() {
    const ta = this.textarea;
    const cs = getComputedStyle(ta);
    for (const name of MIRRORED_STYLES) this.box.style[name] = cs[name];
    const padX = parseFloat(cs.paddingLeft) + parseFloat(cs.paddingRight);
    this.box.style.width = px(Math.max(0, ta.clientWidth - padX));
    if (ta.value !== this.text) {
      this.text = ta.value;
      this.lines = this.text.split('\n').map((line) => {
        const div = document.createElement('div');
        div.appendChild(document.createTextNode(line + ZWSP));
        return div;
      });
      this.box.replaceChildren(...this.lines);
    }
    this.origin = this.box.getBoundingClientRect();
    this.padLeft = parseFloat(cs.paddingLeft);
    this.padTop = parseFloat(cs.paddingTop);
    this.lineHeight = parseFloat(cs.lineHeight); // NaN for 'normal': the glyph box, then
  }

  /** Rects (in the textarea's unscrolled content coordinates) of col a..b of one line, each
   * as tall as the line box (a Range measures the glyphs, shorter than the line height). */
  rects(line, a, b) {
    const node = this.lines[line].firstChild;
    const range = document.createRange();
    range.setStart(node, a);
    range.setEnd(node, Math.max(a, b));
    return Array.from(range.getClientRects(), (r) => {
      const height = this.lineHeight || r.height;
      return {
        x: r.left - this.origin.left, // the box has the textarea's padding: no offset to add
        y: r.top - this.origin.top - (height - r.height) / 2,
        width: r.width,
        height,
      };
    });
  }

  /** Where a caret before `col` of `line` goes: {x, y, height}. */
  caret(line, col) {
    const [r] = this.rects(line, col, col + 1); // the glyph after it (the ZWSP at the end)
    return r ?? { x: this.padLeft, y: this.padTop, width: 0, height: 16 };
  }

  /** The line at a vertical position of the unscrolled content. */
  lineAtY(y) {
    let lo = 0, hi = this.lines.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.lines[mid].offsetTop <= y) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  remove() { this.clip.remove(); }
}

class RemoteCaret {
  constructor(layer, sid) {
    this.caret = document.createElement('div');
    this.caret.className = 'pr-caret';
    this.caret.dataset.sid = String(sid);
    Object.assign(this.caret.style, { position: 'absolute', width: '2px' });
    this.label = document.createElement('span');
    this.label.className = 'pr-caret-label';
    Object.assign(this.label.style, {
      position: 'absolute', left: '0', whiteSpace: 'nowrap', color: '#fff',
      font: '11px/16px system-ui, sans-serif', padding: '0 4px', borderRadius: '3px',
      transition: 'opacity 0.4s',
    });
    this.caret.appendChild(this.label);
    this.selections = [];
    this.layer = layer;
    this.fadeTimer = null;
    layer.appendChild(this.caret);
  }

  draw(member, mirror, text) {
    const color = member.disconnected ? DISCONNECTED_COLOR : member.color;
    const head = clampPosition(text, member.cursor.line, member.cursor.col);
    const at = mirror.caret(head.line, head.col);
    Object.assign(this.caret.style, {
      left: px(at.x - 1), top: px(at.y), height: px(at.height), backgroundColor: color,
    });
    this.label.textContent = member.disconnected ? `${member.name} (Disconnected)` : member.name;
    this.label.style.backgroundColor = color;
    // Above the caret, or below it on the first visual line (where above is clipped).
    this.label.style.top = at.y < 16 ? px(at.height) : '-16px';
    this.caret.classList.toggle('pr-typing', Boolean(member.typing) && !member.disconnected);
    this.caret.classList.toggle('pr-disconnected', Boolean(member.disconnected));
    this.caret.style.opacity = member.disconnected ? '0.6' : '';
    this.drawSelection(member, mirror, text, color);
  }

  drawSelection(member, mirror, text, color) {
    for (const el of this.selections) el.remove();
    this.selections = [];
    if (!member.selection) return;
    const head = clampPosition(text, member.cursor.line, member.cursor.col);
    const anchor = clampPosition(text, member.selection.line, member.selection.col);
    const headFirst = head.line < anchor.line || (head.line === anchor.line && head.col < anchor.col);
    const [from, to] = headFirst ? [head, anchor] : [anchor, head];
    for (let line = from.line; line <= to.line; line += 1) {
      const a = line === from.line ? from.col : 0;
      const b = line === to.line ? to.col : mirror.lines[line].firstChild.length - 1;
      // An empty line inside a selection still shows as selected: a sliver, as editors do.
      const rects = b > a ? mirror.rects(line, a, b) : [{ ...mirror.caret(line, a), width: 4 }];
      for (const r of rects) {
        const el = document.createElement('div');
        el.className = 'pr-selection';
        el.dataset.sid = this.caret.dataset.sid;
        Object.assign(el.style, {
          position: 'absolute', left: px(r.x), top: px(r.y), width: px(r.width),
          height: px(r.height), backgroundColor: color, opacity: '0.25',
        });
        this.layer.insertBefore(el, this.layer.firstChild); // under every caret
        this.selections.push(el);
      }
    }
  }

  /** A move: the label shows, and fades after `timeoutMs` without another. */
  moved(timeoutMs) {
    this.label.classList.remove('pr-label-faded');
    this.label.style.opacity = '';
    clearTimeout(this.fadeTimer);
    this.fadeTimer = setTimeout(() => {
      this.label.classList.add('pr-label-faded');
      this.label.style.opacity = '0';
    }, timeoutMs);
  }

  remove() {
    clearTimeout(this.fadeTimer);
    for (const el of this.selections) el.remove();
    this.caret.remove();
  }
}

/**
 * Bind a textarea to a document. Options: `labelTimeoutMs` (LABEL_TIMEOUT_MS),
 * `viewportThrottleMs` (VIEWPORT_THROTTLE_MS). Returns {overlay, refresh(), destroy()}:
 * `refresh()` redraws after a change the adapter cannot see (a font loaded, text set from
 * code without an input event).
 */
export function bindTextarea(doc, textarea, options = {}) {
  const labelTimeoutMs = options.labelTimeoutMs ?? LABEL_TIMEOUT_MS;
  const parent = textarea.parentElement;
  if (getComputedStyle(parent).position === 'static') parent.style.position = 'relative';
  const mirror = new Mirror(textarea);
  const overlay = document.createElement('div');
  overlay.className = 'pr-overlay';
  Object.assign(overlay.style, { position: 'absolute', overflow: 'hidden', pointerEvents: 'none' });
  const layer = document.createElement('div');
  Object.assign(layer.style, { position: 'absolute', left: '0', top: '0' });
  overlay.appendChild(layer);
  textarea.insertAdjacentElement('afterend', overlay);
  const carets = new Map(); // sid -> RemoteCaret

  const place = () => {
    const cs = getComputedStyle(textarea);
    Object.assign(overlay.style, {
      left: px(textarea.offsetLeft + parseFloat(cs.borderLeftWidth)),
      top: px(textarea.offsetTop + parseFloat(cs.borderTopWidth)),
      width: px(textarea.clientWidth),
      height: px(textarea.clientHeight),
    });
    Object.assign(mirror.clip.style, { left: overlay.style.left, top: overlay.style.top });
    layer.style.transform = `translate(${-textarea.scrollLeft}px, ${-textarea.scrollTop}px)`;
  };
  const draw = (member) => {
    if (member.sid === doc.sid) return;
    if (!member.cursor) { forget(member.sid); return; }
    let caret = carets.get(member.sid);
    if (!caret) {
      caret = new RemoteCaret(layer, member.sid);
      carets.set(member.sid, caret);
      caret.moved(labelTimeoutMs);
    }
    caret.draw(member, mirror, mirror.text);
  };
  const forget = (sid) => {
    carets.get(sid)?.remove();
    carets.delete(sid);
  };
  const redraw = () => {
    mirror.sync();
    place();
    const others = doc.others();
    for (const sid of [...carets.keys()]) if (!others.has(sid)) forget(sid);
    for (const member of others.values()) draw(member);
  };

  // Local -> relay.
  let sent = null;
  const report = () => {
    const text = textarea.value;
    const backward = textarea.selectionDirection === 'backward';
    const [start, end] = [textarea.selectionStart, textarea.selectionEnd];
    const head = positionAt(text, backward ? start : end);
    const anchor = start === end ? null : { ...positionAt(text, backward ? end : start), backward };
    const key = `${head.off}:${anchor?.off}:${backward}`;
    if (key === sent) return;
    sent = key;
    doc.moveCursor(head.line, head.col, head.off, anchor);
  };
  const viewport = new Throttle(options.viewportThrottleMs ?? VIEWPORT_THROTTLE_MS, () => {
    const top = mirror.lineAtY(textarea.scrollTop);
    const bottom = Math.max(top, mirror.lineAtY(textarea.scrollTop + textarea.clientHeight - 1));
    const room = textarea.scrollHeight - textarea.clientHeight;
    doc.setViewport(top, bottom, room > 0 ? Math.min(100, (textarea.scrollTop / room) * 100) : 0);
  });
  const local = {
    input: () => { doc.typed(); redraw(); report(); viewport.offer(null); },
    select: report,
    keyup: report,
    mouseup: report,
    focus: () => { doc.setFocus(true); report(); },
    blur: () => { doc.setFocus(false); },
    scroll: () => { place(); viewport.offer(null); },
  };
  // Caret moves without a key or mouse event (the IME, select-all from a menu).
  const selectionchange = () => { if (document.activeElement === textarea) report(); };
  for (const [type, fn] of Object.entries(local)) textarea.addEventListener(type, fn);
  document.addEventListener('selectionchange', selectionchange);
  const resize = new ResizeObserver(() => { redraw(); viewport.offer(null); });
  resize.observe(textarea);

  // Relay -> overlay.
  const moved = (sid) => {
    const member = doc.members.get(sid);
    if (!member) return;
    draw(member);
    carets.get(sid)?.moved(labelTimeoutMs);
  };
  const remote = {
    joined: (e) => moved(e.detail.member.sid),
    left: (e) => forget(e.detail.sid),
    cursor: (e) => moved(e.detail.sid),
    typing: (e) => { const m = doc.members.get(e.detail.sid); if (m) draw(m); },
    activity: (e) => { const m = doc.members.get(e.detail.sid); if (m) draw(m); },
    resynced: redraw,
  };
  for (const [type, fn] of Object.entries(remote)) doc.addEventListener(type, fn);

  redraw();
  viewport.offer(null);
  if (document.activeElement === textarea) report();

  return {
    overlay,
    refresh: redraw,
    destroy() {
      for (const [type, fn] of Object.entries(local)) textarea.removeEventListener(type, fn);
      for (const [type, fn] of Object.entries(remote)) doc.removeEventListener(type, fn);
      document.removeEventListener('selectionchange', selectionchange);
      resize.disconnect();
      viewport.cancel();
      for (const sid of [...carets.keys()]) forget(sid);
      overlay.remove();
      mirror.remove();
    },
  };
}
