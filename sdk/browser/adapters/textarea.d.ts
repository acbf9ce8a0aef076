// Types for presence-relay/textarea: a plain <textarea> reports its caret, selection,
// keystrokes, focus and visible lines, and shows the others' carets and selections over it.

import type { PresenceDocument } from '../presence.js';

/** A remote caret's label fades this long (ms) after that member's last move, by default. */
export declare const LABEL_TIMEOUT_MS = 3000;
/** At most one VIEWPORT per this many ms, by default (trailing edge: the last is sent). */
export declare const VIEWPORT_THROTTLE_MS = 100;

export interface TextareaOptions {
  /** Fade a remote caret's name label (class `pr-label-faded`) after this long without a move. */
  labelTimeoutMs?: number;
  /** At most one VIEWPORT per this many ms. */
  viewportThrottleMs?: number;
}

export interface TextareaBinding {
  /** The element drawn over the textarea's client area (remote carets and selections). */
  readonly overlay: HTMLElement;
  /** Redraw after a change the adapter cannot see (a font loaded, text set from code). */
  refresh(): void;
  /** Stop reporting and drawing; removes everything the binding added. */
  destroy(): void;
}

/** `{line, col, off}` (0-based line and column) of a UTF-16 offset in `text`. */
export declare function positionAt(
  text: string,
  off: number,
): { line: number; col: number; off: number };

/** A remote `{line, col}` made to fit `text`: the line clamped to its last, the column to its line. */
export declare function clampPosition(
  text: string,
  line: number,
  col: number,
): { line: number; col: number };

/**
 * Bind a textarea to a document. Its parent becomes the positioning box (`position:
 * relative` if it was static). Remote positions are placed by `line`/`col`, clamped.
 */
export declare function bindTextarea(
  doc: PresenceDocument,
  textarea: HTMLTextAreaElement,
  options?: TextareaOptions,
): TextareaBinding;
