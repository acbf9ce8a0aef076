// Types for presence-relay/codemirror: remote carets and selections as CodeMirror 6
// decorations, and the local editor's cursor, typing, focus and viewport sent to the relay.

import type { Extension } from '@codemirror/state';
import type { PresenceDocument } from '../presence.js';

export interface PresenceCodeMirrorOptions {
  /**
   * A remote caret's name label fades out (class `pr-label-faded`) after this long without
   * that member moving, and shows again on its next move. Default 3000 ms.
   */
  labelTimeoutMs?: number;
  /** At most one VIEWPORT per this many ms (trailing edge: the last one is sent). Default 100. */
  viewportThrottleMs?: number;
}

/**
 * The CodeMirror 6 extension: `new EditorView({ extensions: [presenceCodeMirror(doc)] })`.
 * Remote positions are placed by `line`/`col` (clamped to the local document).
 */
export function presenceCodeMirror(
  doc: PresenceDocument,
  options?: PresenceCodeMirrorOptions,
): Extension;
