"""`python -m presence_client.bot`: a second participant for the demo, in one command.

The bot runs as a real process against an in-process relay, and an SDK client in the same
document watches it: it joins with its name, moves its caret (selections included) inside
the text it was given, types, and leaves with reason LEFT when its moves are done or when
it gets SIGTERM / SIGINT; a relay that is not there is one line on stderr and exit 1. The
walk itself is a pure generator, tested on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from helpers import MS, free_port
from presence_client import (
    CursorMoved,
    Document,
    Event,
    Joined,
    LeaveReason,
    Left,
    Typing,
    Viewport,
    connect,
)
from presence_client.bot import Step, offset, parse_args, walk

from relay.auth import mint_token
from relay.server.app import Relay

pytestmark = pytest.mark.timeout(60)

BOT = [sys.executable, "-m", "presence_client.bot"]
START_S = 15000 * MS  # a fresh interpreter importing websockets and msgpack, on a busy box
EXIT_S = 15000 * MS
SECRET = "bot-tests-secret-that-is-long-enough-for-hs256!"


class BotProcess:
    """The bot as a subprocess (asynchronous: the relay runs on this test's event loop)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str, cwd: Path) -> BotProcess:
        proc = await asyncio.create_subprocess_exec(
            *BOT,
            *args,
            cwd=cwd,  # not the repository: the installed SDK, nothing of the relay's
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def line(self, timeout: float = START_S) -> str:
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise AssertionError(f"no line from the bot in {timeout:.1f} s") from None
        return raw.decode().rstrip("\n")

    async def joined_sid(self) -> int:
        """Read the start line and return the sid it names."""
        line = await self.line()
        m = re.fullmatch(r"(.+) joined (\S+) as sid (\d+) on (\S+); Ctrl-C to leave", line)
        assert m is not None, line
        return int(m[3])

    async def finish(self, timeout: float = EXIT_S) -> tuple[int, str, str]:
        """Wait for the exit: (code, the rest of stdout, stderr)."""
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            raise AssertionError(f"the bot did not exit in {timeout:.1f} s") from None
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), err.decode()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)


@contextlib.asynccontextmanager
async def bot(*args: str, cwd: Path) -> AsyncIterator[BotProcess]:
    p = await BotProcess.start(*args, cwd=cwd)
    try:
        yield p
    finally:
        await p.kill()


async def events_until_left(doc: Document, sid: int, timeout: float) -> list[Event]:
    """Every event of `doc` until `sid` leaves (that Left last)."""
    got: list[Event] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                ev = await doc.next_event()
                got.append(ev)
                if isinstance(ev, Left) and ev.sid == sid:
                    return got
    except TimeoutError:
        raise AssertionError(f"sid {sid} did not leave in {timeout:.1f} s: {got}") from None


def check_position(line: int, col: int, off: int, lines: int, width: int) -> None:
    assert 0 <= line < lines and 0 <= col <= width, (line, col)
    assert off == line * (width + 1) + col, (line, col, off)


# ---------------------------------------------------------------------------- the process


async def test_the_bot_walks_types_and_leaves_when_its_moves_are_done(
    relay: Relay, tmp_path: Path
) -> None:
    url = f"ws://127.0.0.1:{relay.port}/ws"
    async with connect(url, user_id="watcher", name="Watcher") as conn:
        doc = await conn.join("d")
        args = ("--url", url, "--doc", "d", "--moves", "30", "--interval-ms", "10", "--seed", "1")
        async with bot(*args, cwd=tmp_path) as p:
            sid = await p.joined_sid()
            events = await events_until_left(doc, sid, EXIT_S)
            code, out, err = await p.finish()
    assert code == 0, err
    assert out == "Robot left d\n" and "Traceback" not in err, (out, err)

    joins = [e.member for e in events if isinstance(e, Joined) and e.member.sid == sid]
    assert len(joins) == 1
    assert joins[0].name == "Robot" and re.fullmatch(r"bot-[0-9a-f]{6}", joins[0].user_id)

    moves = [e for e in events if isinstance(e, CursorMoved) and e.sid == sid]
    positions = set()
    selections = 0
    for mv in moves:
        assert mv.cursor is not None
        line, col, off = mv.cursor
        check_position(line, col, off, 12, 60)
        positions.add((line, col))
        if mv.selection is not None:
            selections += 1
            a_line, a_col, a_off, backward = mv.selection
            check_position(a_line, a_col, a_off, 12, 60)
            assert (a_line, a_col) != (line, col)
            assert backward == ((line, col) < (a_line, a_col))
    assert len(positions) >= 3, moves
    assert selections >= 1, moves

    assert Typing(sid, True) in events
    viewports = [e.viewport for e in events if isinstance(e, Viewport) and e.sid == sid]
    assert viewports, events
    for top, bottom, pct in viewports:
        assert 0 <= top <= bottom < 12 and 0.0 <= pct <= 100.0
    left = events[-1]
    assert isinstance(left, Left) and left.reason == LeaveReason.LEFT


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_mid_walk_leaves_deliberately_and_exits_0(
    relay: Relay, tmp_path: Path, sig: signal.Signals
) -> None:
    url = f"ws://127.0.0.1:{relay.port}/ws"
    async with connect(url, user_id="watcher") as conn:
        doc = await conn.join("d")
        args = ("--url", url, "--doc", "d", "--interval-ms", "20", "--name", "Second Robot")
        async with bot(*args, "--user-id", "bot-two", cwd=tmp_path) as p:
            sid = await p.joined_sid()
            joined = await doc.next_event(timeout=EXIT_S)
            assert isinstance(joined, Joined) and joined.member.sid == sid
            assert (joined.member.user_id, joined.member.name) == ("bot-two", "Second Robot")
            async with asyncio.timeout(EXIT_S):  # walking (forever, without --moves)
                while not isinstance(await doc.next_event(), CursorMoved):
                    pass
            p.proc.send_signal(sig)
            events = await events_until_left(doc, sid, EXIT_S)
            code, out, err = await p.finish()
    assert code == 0, err
    assert out == "Second Robot left d\n" and "Traceback" not in err, (out, err)
    left = events[-1]
    assert isinstance(left, Left) and left.reason == LeaveReason.LEFT
    assert sid not in doc.members


def test_no_relay_is_one_line_on_stderr_and_exit_1(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens there
    done = subprocess.run(
        [*BOT, "--url", url], cwd=tmp_path, capture_output=True, text=True, timeout=EXIT_S
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "connection refused" in done.stderr and "make run" in done.stderr
    assert url in done.stderr


async def test_a_relay_with_a_secret_wants_a_token_and_the_token_names_the_bot(
    relay_factory: Callable[..., Awaitable[Relay]], tmp_path: Path
) -> None:
    r = await relay_factory(jwt_secret=SECRET)
    url = f"ws://127.0.0.1:{r.port}/ws"
    async with bot("--url", url, "--doc", "d", cwd=tmp_path) as p:
        code, out, err = await p.finish()
    assert code == 1 and out == "" and "Traceback" not in err, (code, out, err)
    assert "4401" in err and "--token" in err and err.count("\n") == 1, err

    tok = mint_token(SECRET, "bot-tok", "Token Robot", "w", ["*"], 600)
    async with connect(url, token=mint_token(SECRET, "watcher", "W", "w", ["*"], 600)) as conn:
        doc = await conn.join("d")
        args = ("--url", url, "--doc", "d", "--token", tok, "--moves", "5", "--interval-ms", "10")
        async with bot(*args, cwd=tmp_path) as p:
            sid = await p.joined_sid()
            events = await events_until_left(doc, sid, EXIT_S)
            code, out, err = await p.finish()
    assert code == 0, err
    joins = [e.member for e in events if isinstance(e, Joined) and e.member.sid == sid]
    assert [(m.user_id, m.name) for m in joins] == [("bot-tok", "Token Robot")]
    assert out == "Token Robot left d\n"


# ---------------------------------------------------------------------------- the walk


def steps(seed: int, n: int, lines: int = 12, width: int = 60) -> list[Step]:
    return list(itertools.islice(walk(random.Random(seed), lines, width), n))


@pytest.mark.parametrize(("lines", "width"), [(12, 60), (1, 1), (1, 60), (3, 5), (40, 8), (2, 200)])
def test_the_walk_stays_inside_the_text(lines: int, width: int) -> None:
    for seed in range(5):
        for s in steps(seed, 3000, lines, width):
            check_position(s.line, s.col, offset(s.line, s.col, width), lines, width)
            if s.anchor is not None:
                a_line, a_col = s.anchor
                assert 0 <= a_line < lines and 0 <= a_col <= width, s
                assert s.anchor != (s.line, s.col), s
            top, bottom, pct = s.viewport
            assert 0 <= top <= s.line <= bottom < lines, s
            assert bottom - top + 1 == min(8, lines) and 0.0 <= pct <= 100.0, s
            assert s.hold >= 0


def test_the_walk_reads_selects_types_scrolls_and_pauses() -> None:
    walked = steps(7, 3000)
    assert {s.line for s in walked} == set(range(12))  # down line by line, and around
    forward = [s for s in walked if s.anchor is not None and (s.line, s.col) > s.anchor]
    backward = [s for s in walked if s.anchor is not None and (s.line, s.col) < s.anchor]
    assert forward and backward
    assert any(s.typing for s in walked)
    # 30 intervals and more: 3.6 s at the default 120 ms, past the demo's 3 s label fade
    assert any(s.hold >= 30 for s in walked)
    assert {s.viewport[0] for s in walked} == set(range(5))  # 8 of 12 lines: it scrolls
    # most moves are one column along the line: reading
    along = sum(1 for a, b in itertools.pairwise(walked) if a.line == b.line and b.col == a.col + 1)
    assert along > len(walked) // 2


def test_the_walk_is_deterministic_with_a_seed() -> None:
    assert steps(1, 500) == steps(1, 500)
    assert steps(1, 500) != steps(2, 500)
    # The process test runs 30 moves with seed 1: they hold a selection and a keystroke.
    first = steps(1, 30)
    assert any(s.anchor is not None and s.hold > 0 for s in first)
    assert any(s.typing for s in first)


def test_offsets_count_width_chars_and_a_newline_a_line() -> None:
    assert offset(0, 0, 60) == 0
    assert offset(0, 60, 60) == 60
    assert offset(1, 0, 60) == 61
    assert offset(2, 5, 60) == 127
    with pytest.raises(ValueError):
        next(walk(random.Random(0), 0, 60))


def test_the_command_line_defaults() -> None:
    a = parse_args([])
    assert (a.url, a.doc, a.name, a.token) == ("ws://127.0.0.1:8765/ws", "demo", "Robot", None)
    assert (a.lines, a.width, a.interval_ms, a.moves, a.seed) == (12, 60, 120, 0, None)
    assert re.fullmatch(r"bot-[0-9a-f]{6}", a.user_id)
    assert len({parse_args([]).user_id for _ in range(5)}) > 1
    for bad in (["--lines", "0"], ["--width", "-1"], ["--interval-ms", "0"], ["--moves", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
