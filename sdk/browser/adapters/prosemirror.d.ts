// Types for presence-relay/prosemirror: remote carets and selections as ProseMirror
// decorations, and the local editor's cursor, typing, focus and viewport sent to the relay.
// Tiptap: return the plugin from an Extension's addProseMirrorPlugins().

import type { Plugin } from 'prosemirror-state';
import type { PresenceDocument } from '../presence.js';

export interface PresenceProseMirrorOptions {
  /**
   * A remote caret's name label fades out (class `pr-label-faded`) after this long without
   * that member moving, and shows again on its next move. Default 3000 ms.
   */
  labelTimeoutMs?: number;
  /** At most one VIEWPORT per this many ms (trailing edge: the last one is sent). Default 100. */
  viewportThrottleMs?: number;
}

/**
 * The ProseMirror plugin: `EditorState.create({ schema, plugins: [presenceProseMirror(doc)] })`.
 * Remote positions are placed by `off` (the ProseMirror position, clamped to the document).
 */
export function presenceProseMirror(
  doc: PresenceDocument,
  options?: PresenceProseMirrorOptions,
): Plugin;
