"""A bot that joins a document and moves its caret like a person reading and editing.

    python -m presence_client.bot --doc demo        # against `make run`'s relay

It gives the relay's demo page (http://127.0.0.1:8765/#demo) a second participant without
opening a second browser: it walks its caret through a text of ``--lines`` lines of
``--width`` characters, column by column and down line by line, now and then selects a few
words, types a burst of keystrokes (the typing indicator), reports a viewport around its
line, and sometimes holds still. Ctrl-C (or SIGTERM) leaves the document deliberately (the
others see reason LEFT) and exits 0.

The walk is a pure generator, `walk(rng, lines, width)`, yielding `Step`s; `run()` does the
I/O. Offsets count every line as `width` characters plus a newline (`offset()`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import random
import secrets
import signal
import sys
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException

from .connection import Connection, connect
from .document import Document
from .errors import ConnectionClosedError, RelayClientError, RelayError

__all__ = ["Step", "main", "offset", "parse_args", "run", "walk"]

T = TypeVar("T")

DEFAULT_URL = "ws://127.0.0.1:8765/ws"
VIEW_LINES = 8
"""How many lines the bot's viewport shows (fewer when the text is shorter)."""
TYPED_EVERY_S = 0.1
"""At most one TYPING frame per this many seconds, whatever `--interval-ms` is: the relay
keeps the indicator on for `typing_debounce_ms` (500 ms) after the last one, and a very short
interval must not push the bot over the relay's frame rate limit."""
HOLD_CHANCE = 0.08
"""How often an episode ends with the bot holding still..."""
HOLD_INTERVALS = (30, 60)
"""... for this many intervals (3.6 to 7.2 s at the default 120 ms): long enough for the
demo to fade its label (the browser SDK's caret adapters fade a label 3 s after the last
move, `LABEL_TIMEOUT_MS`)."""

# The walk alternates reading a stretch of a line with one of these, by weight: select a
# few words, type, click somewhere else.
_ACTIONS = ("select", "type", "jump")
_WEIGHTS = (40, 35, 25)


# ---------------------------------------------------------------------------- the walk


@dataclass(frozen=True, slots=True)
class Step:
    """One move of the bot: where its caret is, and what it does there.

    `anchor` is the selection's anchor `(line, col)` (the caret is its head), None without
    a selection. `typing`: a keystroke happened with this step. `hold`: the bot then waits
    this many extra intervals without moving. `viewport` is `(top_line, bottom_line,
    scroll_pct)` and always contains `line`.
    """

    line: int
    col: int
    viewport: tuple[int, int, float]
    anchor: tuple[int, int] | None = None
    typing: bool = False
    hold: int = 0


def offset(line: int, col: int, width: int) -> int:
    """The document offset of `(line, col)` when every line is `width` chars + newline."""
    return line * (width + 1) + col


class _Walker:
    """The walk's state: the caret, the end of the current line's text, the viewport."""

    def __init__(self, rng: random.Random, lines: int, width: int, view_lines: int) -> None:
        self.rng, self.lines, self.width = rng, lines, width
        self.visible = max(1, min(view_lines, lines))
        self.line = rng.randrange(min(lines, 3))
        self.col = 0
        self.top = 0
        self.end = self._line_end()
        self.reading = False

    def _line_end(self) -> int:
        """Where reading this line stops: lines of text are not all full."""
        return self.rng.randint(max(0, self.width * 2 // 3), self.width)

    def step(self, anchor: tuple[int, int] | None = None, typing: bool = False) -> Step:
        if self.line < self.top:
            self.top = self.line
        elif self.line >= self.top + self.visible:
            self.top = self.line - self.visible + 1
        scrollable = self.lines - self.visible
        pct = 100.0 * self.top / scrollable if scrollable > 0 else 0.0
        viewport = (self.top, self.top + self.visible - 1, pct)
        return Step(self.line, self.col, viewport, anchor, typing)

    def _newline(self) -> None:
        self.line = (self.line + 1) % self.lines  # past the last line: back to the top
        self.col = 0
        self.end = self._line_end()

    def episode(self) -> list[Step]:
        """The next few steps: a stretch of reading, or (after one) an action."""
        self.reading = not self.reading
        if self.reading:
            return self._read()
        kind = self.rng.choices(_ACTIONS, _WEIGHTS)[0]
        if kind == "select":
            return self._select()
        if kind == "type":
            return self._type(self.rng.randint(3, 10))
        return self._jump()

    def _read(self) -> list[Step]:
        steps = []
        for _ in range(self.rng.randint(4, 14)):
            if self.col < self.end:
                self.col += 1
            else:
                self._newline()
            steps.append(self.step())
        return steps

    def _type(self, keystrokes: int) -> list[Step]:
        steps = []
        for _ in range(keystrokes):
            self.col = min(self.col + 1, self.width)  # the caret moves past what it typed
            self.end = max(self.end, self.col)
            steps.append(self.step(typing=True))
        return steps

    def _jump(self) -> list[Step]:
        """A click elsewhere: a few lines up or down, somewhere in that line."""
        self.line = min(self.lines - 1, max(0, self.line + self.rng.randint(-3, 3)))
        self.end = self._line_end()
        self.col = self.rng.randint(0, self.end)
        return [self.step()]

    def _select(self) -> list[Step]:
        """Drag over one to three words, hold, then click away or type over them."""
        rng = self.rng
        words = rng.randint(1, 3)
        length = sum(rng.randint(3, 8) for _ in range(words)) + words - 1
        backward = self.col >= 2 and rng.random() < 0.3
        target = max(0, self.col - length) if backward else min(self.width, self.col + length)
        if target == self.col:
            return self._read()  # at the end of the line: nothing to select forwards
        anchor = (self.line, self.col)
        steps = []
        while self.col != target:
            by = rng.randint(1, 3)
            self.col = max(target, self.col - by) if backward else min(target, self.col + by)
            steps.append(self.step(anchor=anchor))
        steps[-1] = replace(steps[-1], hold=rng.randint(4, 12))
        if rng.random() < 0.4:  # type over the selection: the caret lands at its start
            self.col = min(self.col, anchor[1])
            return [*steps, *self._type(rng.randint(2, 8))]
        return [*steps, self.step()]  # a click at the head: the selection collapses


def walk(
    rng: random.Random, lines: int = 12, width: int = 60, view_lines: int = VIEW_LINES
) -> Iterator[Step]:
    """The bot's moves, forever: pure, and the same for the same `rng` state.

    Every position has `0 <= line < lines` and `0 <= col <= width` (col `width` is the end
    of a full line), anchors included; the viewport shows `view_lines` lines (fewer when
    the text is shorter) and scrolls to keep the caret in view.
    """
    if lines < 1 or width < 1:
        raise ValueError("lines and width must be at least 1")
    walker = _Walker(rng, lines, width, view_lines)
    yield walker.step()
    while True:
        steps = walker.episode()
        if rng.random() < HOLD_CHANCE:
            steps[-1] = replace(steps[-1], hold=rng.randint(*HOLD_INTERVALS))
        yield from steps


# ---------------------------------------------------------------------------- the I/O


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m presence_client.bot",
        description="Join a document of a presence relay and walk a caret through it like a "
        "person reading and editing (moves, selections, typing, a viewport, pauses), so "
        "the relay's demo page shows a second participant. Ctrl-C (or SIGTERM) leaves "
        "the document and exits 0.",
        epilog="Try it: `make run`, open http://127.0.0.1:8765/#demo, then run "
        "`python -m presence_client.bot --doc demo`.",
    )
    add = parser.add_argument
    add("--url", default=DEFAULT_URL, help="the relay's WebSocket URL (default: %(default)s)")
    add(
        "--doc",
        default="demo",
        help="document id; the demo page's URL fragment (#demo) picks it (default: %(default)s)",
    )
    add("--name", default="Robot", help="display name, without --token (default: %(default)s)")
    add("--user-id", help="user id, without --token (default: bot-<6 random hex digits>)")
    add(
        "--token",
        help="a JWT, for a relay with a JWT secret: the identity then comes from the token "
        "(default: none; anonymous with --user-id and --name, which a relay without a "
        "secret allows from loopback)",
    )
    add("--lines", type=_positive, default=12, help="lines of text walked (default: %(default)s)")
    add("--width", type=_positive, default=60, help="characters a line (default: %(default)s)")
    add(
        "--interval-ms",
        type=_positive,
        default=120,
        help="milliseconds between moves (default: %(default)s)",
    )
    add(
        "--moves",
        type=_count,
        default=0,
        help="stop (and leave) after this many moves; 0: never (default: %(default)s)",
    )
    add("--seed", type=int, help="random seed, for a repeatable walk (default: none)")
    args = parser.parse_args(argv)
    if args.user_id is None:
        args.user_id = f"bot-{secrets.token_hex(3)}"
    return args


def _fail(message: str) -> int:
    print(f"presence_client.bot: {message}", file=sys.stderr, flush=True)
    return 1


_START_IT = "Is the relay running? Start it with `make run` (in the repository)."


def _startup_error(exc: BaseException, url: str) -> str:
    """A one-line explanation of why connecting or joining failed."""
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to {url}: connection refused. {_START_IT}"
    if isinstance(exc, InvalidURI):
        return f"not a WebSocket URL: {url!r} (e.g. {DEFAULT_URL})"
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return f"{url} answered HTTP {status}, not a WebSocket: is that the relay's /ws URL?"
    if isinstance(exc, ConnectionClosedError):
        hint = " (a relay with a JWT secret needs --token)" if exc.code == 4401 else ""
        return f"the relay at {url} closed the connection: {exc.code} {exc.reason}{hint}"
    if isinstance(exc, RelayError):
        return f"the relay refused the join: {exc}"
    if isinstance(exc, TimeoutError):
        return f"no answer from {url} in time. {_START_IT}"
    if isinstance(exc, OSError):
        return f"cannot connect to {url}: {exc.strerror or exc}. {_START_IT}"
    return f"cannot connect to {url}: {exc}"


async def _unless_stopped(aw: Awaitable[T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """Await `aw` unless `stop` is set first (then cancel it): (finished, its result)."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return False, None


async def _sleep_unless_stopped(seconds: float, stop: asyncio.Event) -> bool:
    """Sleep `seconds`; True if `stop` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


def _on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # e.g. Windows: plain handlers
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))


def _send(doc: Document, step: Step, width: int) -> None:
    selection = None
    if step.anchor is not None:
        a_line, a_col = step.anchor
        backward = (step.line, step.col) < step.anchor
        selection = (a_line, a_col, offset(a_line, a_col, width), backward)
    doc.move_cursor(step.line, step.col, offset(step.line, step.col, width), selection)


async def _walk(
    conn: Connection, doc: Document, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    loop = asyncio.get_running_loop()
    interval = args.interval_ms / 1000.0
    steps: Iterator[Step] = walk(random.Random(args.seed), args.lines, args.width)
    if args.moves:
        steps = itertools.islice(steps, args.moves)
    viewport: tuple[int, int, float] | None = None
    last_typed = -TYPED_EVERY_S
    for step in steps:
        if conn.closed:
            break
        _send(doc, step, args.width)
        if step.viewport != viewport:
            viewport = step.viewport
            doc.set_viewport(*viewport)
        if step.typing and loop.time() - last_typed >= TYPED_EVERY_S:
            last_typed = loop.time()
            doc.typed()
        if await _sleep_unless_stopped(interval * (1 + step.hold), stop):
            break
    if conn.closed:  # closed for good, not by us: a fatal close (the SDK retries the rest)
        try:
            await conn.wait_closed()
        except ConnectionClosedError as exc:
            return _fail(f"the relay closed the connection: {exc.code} {exc.reason}")
        return _fail("the connection closed")
    return 0


async def run(args: argparse.Namespace) -> int:
    """Connect, join `args.doc`, walk until `args.moves` are done or a signal comes, leave.
    Returns the exit code."""
    stop = asyncio.Event()
    _on_signals(stop)
    conn = connect(args.url, token=args.token, user_id=args.user_id, name=args.name)
    try:
        try:
            started, _ = await _unless_stopped(conn.start(), stop)
            if not started:
                return 0
            joined, doc = await _unless_stopped(conn.join(args.doc), stop)
            if doc is None:
                return 0 if not joined else _fail("the join returned no document")
        except (OSError, TimeoutError, WebSocketException, RelayClientError) as exc:
            return _fail(_startup_error(exc, args.url))
        name = conn.user.get("name") or args.name
        print(
            f"{name} joined {args.doc} as sid {doc.sid} on {args.url}; Ctrl-C to leave",
            flush=True,
        )
        doc.set_focus(True)
        code = await _walk(conn, doc, args, stop)
        if code == 0:
            print(f"{name} left {args.doc}", flush=True)
        return code
    finally:
        await conn.close()  # LEAVE for the document, then close 1000: the others see LEFT


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The SDK's reconnect notices ("connection lost ...; reconnecting") and warnings.
    logging.basicConfig(format="presence_client.bot: %(message)s", level=logging.WARNING)
    logging.getLogger("presence_client").setLevel(logging.INFO)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were in place
        return 0


if __name__ == "__main__":
    sys.exit(main())
