// The part of the adapter test pages both editors share: connect, join, make the editor
// (through the editor's driver: codemirror.entry.js, prosemirror.entry.js), and report what
// tests/test_editor_adapters.py asserts on, through `window.t`.

import { connect } from '../../presence.js';

// A CSS color as [r, g, b, a] (0..255, alpha 0..1), from what getComputedStyle gives.
function rgba(css) {
  let m = css.match(/^rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?\)$/);
  if (m) return [+m[1], +m[2], +m[3], m[4] === undefined ? 1 : +m[4]];
  m = css.match(/^color\(srgb ([\d.e-]+) ([\d.e-]+) ([\d.e-]+)(?: \/ ([\d.e-]+))?\)$/);
  if (m) return [m[1] * 255, m[2] * 255, m[3] * 255, m[4] === undefined ? 1 : +m[4]];
  return null;
}

function computedColor(color) {
  const probe = document.createElement('span');
  probe.style.color = color;
  document.body.append(probe);
  const value = getComputedStyle(probe).color;
  probe.remove();
  return rgba(value);
}

const rect = (r) => (r ? { left: r.left, right: r.right, top: r.top, bottom: r.bottom } : null);

/** `driver`: create, focus, local, place, coords, text, scroller, destroy (see the entries). */
export function install(driver) {
  let client = null, doc = null, view = null;
  const log = []; // each change of a drawn caret: {sid, faded, typing, disconnected, label}
  const listeners = new Map();
  const drawn = new Map();
  let resyncs = 0;

  function record() {
    const now = new Map();
    for (const caret of driver.root(view).querySelectorAll('.pr-caret')) {
      const label = caret.querySelector('.pr-caret-label');
      now.set(caret.dataset.sid, {
        sid: caret.dataset.sid,
        faded: label.classList.contains('pr-label-faded'),
        typing: caret.classList.contains('pr-typing'),
        disconnected: caret.classList.contains('pr-disconnected'),
        label: label.textContent,
        color: rgba(getComputedStyle(caret).borderLeftColor),
      });
    }
    for (const [sid, s] of now) {
      if (JSON.stringify(drawn.get(sid)) !== JSON.stringify(s)) log.push({ ...s, gone: false });
    }
    for (const sid of drawn.keys()) if (!now.has(sid)) log.push({ sid, gone: true });
    drawn.clear();
    for (const [sid, s] of now) drawn.set(sid, s);
  }

  // Listener bookkeeping, to see that destroying the editor removes what the adapter added.
  function countListeners(target) {
    const add = target.addEventListener.bind(target);
    const remove = target.removeEventListener.bind(target);
    target.addEventListener = (type, fn, opts) => {
      listeners.set(fn, type);
      add(type, fn, opts);
    };
    target.removeEventListener = (type, fn, opts) => {
      listeners.delete(fn);
      remove(type, fn, opts);
    };
  }

  window.t = {
    async start({ url, userId, name, docId, text, labelTimeoutMs }) {
      client = await connect(url, { userId, name });
      doc = await client.join(docId);
      doc.addEventListener('resynced', () => { resyncs += 1; });
      countListeners(doc); // from here on: the adapter's listeners
      view = driver.create(document.getElementById('editor'), text, doc, { labelTimeoutMs });
      new MutationObserver(record).observe(driver.root(view),
        { subtree: true, childList: true, attributes: true, attributeFilter: ['class'] });
      return { sid: doc.sid };
    },
    focus: () => driver.focus(view),
    hasFocus: () => driver.hasFocus(view),
    /** This editor's selection in wire terms, computed here, not by the adapter. */
    local: () => driver.local(view),
    wire(sid) {
      const m = doc.members.get(sid);
      return m ? { cursor: m.cursor, selection: m.selection } : null;
    },
    member: (sid) => doc.members.get(sid) ?? null,
    /**
     * How another member is drawn here, and where the test expects it: where the wire says,
     * `shift` characters on (local edits before it since its last move).
     */
    remote(sid, shift = 0) {
      const m = doc.members.get(sid);
      const root = driver.root(view);
      const carets = root.querySelectorAll(`.pr-caret[data-sid="${sid}"]`);
      const out = { carets: carets.length, member: m ?? null };
      if (carets.length === 0 || !m) return out;
      const caret = carets[0], label = caret.querySelector('.pr-caret-label');
      const head = driver.place(view, m.cursor) + shift;
      const anchor = m.selection ? driver.place(view, m.selection) + shift : head;
      const sels = [...root.querySelectorAll(`.pr-selection[data-sid="${sid}"]`)];
      Object.assign(out, {
        head,
        caretRect: rect(caret.getBoundingClientRect()),
        expectedRect: rect(driver.coords(view, head)),
        label: label?.textContent ?? null,
        labelClasses: label ? [...label.classList] : [],
        caretClasses: [...caret.classList],
        caretColor: rgba(getComputedStyle(caret).borderLeftColor),
        caretWidth: getComputedStyle(caret).borderLeftWidth,
        labelColor: label ? rgba(getComputedStyle(label).backgroundColor) : null,
        memberColor: computedColor(m.color),
                selections: sels.length,
        selectionText: sels.map((s) => s.textContent).join(''),
        selectionColor: sels.length ? rgba(getComputedStyle(sels[0]).backgroundColor) : null,
        expectedText: driver.text(view, Math.min(head, anchor), Math.max(head, anchor)),
      });
      return out;
    },
    log: () => log.slice(),
    grey: () => computedColor('#9e9e9e'),
    blur: () => document.activeElement?.blur(),
    /** The socket goes away without close(): the client reconnects and resumes. */
    drop: () => client.ws.close(4000, 'simulated drop'),
    resyncs: () => resyncs,
    logLength: () => log.length,
    scrollToBottom() {
      const s = driver.scroller(view);
      s.scrollTop = s.scrollHeight;
      return { lines: driver.lines(view) };
    },
    destroy() {
      driver.destroy(view);
      return { listeners: [...listeners.values()] };
    },
    listeners: () => [...listeners.values()],
  };
  window.ready = true;
}
