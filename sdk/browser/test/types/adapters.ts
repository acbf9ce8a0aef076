// The editor adapters as an app uses them, type-checked with the rest (`npm run typecheck`):
// CodeMirror 6, ProseMirror (and Tiptap, which takes ProseMirror plugins), a textarea. Imports
// go through the package's own name and its `exports` map; the editors' own types come from
// the optional peer dependencies (installed here as devDependencies). Nothing here runs.

import { EditorState, type Extension } from '@codemirror/state';
import { EditorView } from '@codemirror/view';
import { schema } from 'prosemirror-schema-basic';
import { EditorState as ProseMirrorState, type Plugin } from 'prosemirror-state';
import { EditorView as ProseMirrorView } from 'prosemirror-view';
import { connect, type PresenceDocument } from 'presence-relay';
import { presenceCodeMirror } from 'presence-relay/codemirror';
import { presenceProseMirror } from 'presence-relay/prosemirror';
import { bindTextarea } from 'presence-relay/textarea';

function expectType<T>(value: T): T {
  return value;
}

function codeMirror(doc: PresenceDocument, parent: HTMLElement): EditorView {
  const extension: Extension = presenceCodeMirror(doc, { labelTimeoutMs: 3000, viewportThrottleMs: 100 });
  presenceCodeMirror(doc);
  // @ts-expect-error: an unknown option
  presenceCodeMirror(doc, { labelTimeout: 3000 });
  // @ts-expect-error: the adapter takes the document, not its id
  presenceCodeMirror('design-doc');
  return new EditorView({
    state: EditorState.create({ doc: 'Hello', extensions: [extension] }),
    parent,
  });
}

function proseMirror(doc: PresenceDocument, place: HTMLElement): ProseMirrorView {
  const plugin: Plugin = presenceProseMirror(doc, { labelTimeoutMs: 3000 });
  // @ts-expect-error: a throttle is a number of ms
  presenceProseMirror(doc, { viewportThrottleMs: '100ms' });
  const state = ProseMirrorState.create({ schema, plugins: [plugin] });
  return new ProseMirrorView(place, { state });
}

function textarea(doc: PresenceDocument, element: HTMLTextAreaElement): () => void {
  const binding = bindTextarea(doc, element, { labelTimeoutMs: 3000, viewportThrottleMs: 100 });
  expectType<HTMLElement>(binding.overlay);
  binding.refresh();
  bindTextarea(doc, element).destroy();
  // @ts-expect-error: a textarea, not any element
  bindTextarea(doc, document.createElement('div'));
  // @ts-expect-error: the overlay is the binding's
  binding.overlay = document.createElement('div');
  return () => binding.destroy();
}

export async function main(root: HTMLElement): Promise<void> {
  const client = await connect('ws://127.0.0.1:8765/ws', { userId: 'ann', name: 'Ann' });
  const doc = await client.join('design-doc');
  codeMirror(doc, root);
  proseMirror(doc, root);
  textarea(doc, document.createElement('textarea'))();
}
