// The ProseMirror test page's entry (bundled by tests/test_editor_adapters.py with esbuild).
import { EditorState, TextSelection } from 'prosemirror-state';
import { EditorView } from 'prosemirror-view';
import { schema } from 'prosemirror-schema-basic';
import { presenceProseMirror } from '../../adapters/prosemirror.js';
import { install } from './harness.js';

// line: the index of the textblock holding pos; col: pos - the start of its content.
function wire(doc, pos) {
  let line = -1, start = 0;
  doc.descendants((node, p) => {
    if (!node.isTextblock) return true;
    if (p + 1 <= pos) { line += 1; start = p + 1; }
    return false;
  });
  return { line: Math.max(0, line), col: pos - start, off: pos };
}

function textblocks(doc) {
  let n = 0;
  doc.descendants((node) => { if (node.isTextblock) n += 1; return !node.isTextblock; });
  return n;
}

install({
  create(parent, text, doc, options) {
    const paragraphs = text.split('\n').map((line) => schema.node('paragraph', null,
      line ? [schema.text(line)] : []));
    const state = EditorState.create({
      schema,
      doc: schema.node('doc', null, paragraphs),
      plugins: [presenceProseMirror(doc, options)],
    });
    return new EditorView(parent, { state });
  },
  root: (view) => view.dom,
  focus: (view) => view.focus(),
  hasFocus: (view) => view.hasFocus(),
  local(view) {
    const { head, anchor } = view.state.selection, d = view.state.doc;
    return {
      cursor: wire(d, head),
      selection: head === anchor ? null : { ...wire(d, anchor), backward: head < anchor },
    };
  },
  // The spec: by offset, clamped to the document, at a position a caret can be.
  place(view, { off }) {
    const d = view.state.doc;
    const $pos = d.resolve(Math.min(Math.max(0, off), d.content.size));
    if ($pos.parent.inlineContent) return $pos.pos;
    return (TextSelection.findFrom($pos, 1, true) ?? TextSelection.findFrom($pos, -1, true)).head;
  },
  coords: (view, pos) => view.coordsAtPos(pos),
  text: (view, from, to) => view.state.doc.textBetween(from, to, ''),
  scroller: (view) => view.dom.parentElement,
  lines: (view) => textblocks(view.state.doc),
  destroy: (view) => view.destroy(),
});
