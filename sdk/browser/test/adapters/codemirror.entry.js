// The CodeMirror 6 test page's entry (bundled by tests/test_editor_adapters.py with esbuild).
import { EditorView } from '@codemirror/view';
import { presenceCodeMirror } from '../../adapters/codemirror.js';
import { install } from './harness.js';

const wire = (text, pos) => {
  const l = text.lineAt(pos);
  return { line: l.number - 1, col: pos - l.from, off: pos };
};

install({
  create: (parent, text, doc, options) => new EditorView({
    parent, doc: text, extensions: [presenceCodeMirror(doc, options)],
  }),
  root: (view) => view.dom,
  focus: (view) => view.focus(),
  hasFocus: (view) => view.hasFocus,
  local(view) {
    const { head, anchor } = view.state.selection.main, text = view.state.doc;
    return {
      cursor: wire(text, head),
      selection: head === anchor ? null : { ...wire(text, anchor), backward: head < anchor },
    };
  },
  // The spec: by line and column, clamped to the last line and to that line's length.
  place(view, { line, col }) {
    const text = view.state.doc;
    const l = text.line(Math.min(line, text.lines - 1) + 1);
    return l.from + Math.min(col, l.length);
  },
  coords: (view, pos) => view.coordsAtPos(pos),
  text: (view, from, to) => view.state.sliceDoc(from, to).replace(/\n/g, ''),
  scroller: (view) => view.scrollDOM,
  lines: (view) => view.state.doc.lines,
  destroy: (view) => view.destroy(),
});
