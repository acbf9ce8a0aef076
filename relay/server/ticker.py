"""The ticker: one per process. It runs the documents' timers and flushes the dirty ones.

Every `batch_ms / flush_groups` one flush group takes its turn: due timers run (typing stops,
Idle and Away), and each dirty document of the group is encoded ONCE into a BATCH frame,
written unchanged to every local member through the outlet and published once to the
broker for other nodes. So each document gets one BATCH per `batch_ms`, and one tick writes
one group's frames, not the whole node's (README, "How it works").
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable

from relay.backends.base import Broker
from relay.server.client import Client
from relay.server.logbudget import LogBudget
from relay.server.outlet import Outlet
from relay.server.registry import Registry
from relay.server.stats import Stats
from relay.twin import NEVER, Batch, Document

log = logging.getLogger("relay.hub")


class Ticker:
    def __init__(
        self,
        registry: Registry,
        outlet: Outlet,
        broker: Broker,
        stats: Stats,
        batch_ms: int,
        on_slow: Callable[[list[Client]], None],
        unused: Callable[[Document], bool] | None = None,
    ) -> None:
        self.registry = registry
        self.outlet = outlet
        self.broker = broker
        self.stats = stats
        self.batch_ms = batch_ms
        self.on_slow = on_slow
        # Clustered: a document whose only members are other nodes' is dropped too.
        self.unused = unused
        self.next_group = 0
        self._timers: list[tuple[int, int, Document]] = []
        self._armed: dict[Document, int] = {}
        self._seq = itertools.count()
        self._failure_log = LogBudget(log, 10, 60.0)
        registry.on_drop.append(self.forget)

    def forget(self, doc: Document) -> None:
        self._armed.pop(doc, None)

    def tick(self, now: int) -> None:
        """One group's turn: run due timers, flush the group's dirty documents, deliver.

        The ticker calls this `flush_groups` times per `batch_ms`, so each group (and each
        document) flushes once per interval.
        """
        registry = self.registry
        groups = registry.groups
        g = self.next_group
        self.next_group = (g + 1) % len(groups)
        group = groups[g]
        dirty = set(group)  # documents hold a reference to their group's set: clear, don't swap
        group.clear()
        for doc in dirty:
            self._arm(doc)
        timers = self._timers
        group_of = registry.group_of
        while timers and timers[0][0] <= now:
            deadline, _, doc = heapq.heappop(timers)
            if self._armed.get(doc) != deadline:
                continue  # stale entry: the document re-armed or went away
            del self._armed[doc]
            before = doc.dirty
            try:
                doc.advance(now)
                self._arm(doc)
            except Exception:
                self._flush_failed(doc)
            if doc.dirty and not before and group_of.get(doc) == g:
                dirty.add(doc)  # (a document of another group flushes on its group's turn)
        unused = self.unused
        for doc in dirty:
            # One document's failure (a bug, a backend that raises) stays in that document:
            # the others of this turn still flush, and it flushes again once it changes.
            try:
                batch = doc.flush(now)
                if batch is not None:
                    self._deliver(doc, batch, now)
            except Exception:
                self._flush_failed(doc)
            if doc.empty or (unused is not None and unused(doc)):
                registry.drop(doc)

    def flush_all(self, now: int) -> None:
        """Every group's turn at once (shutdown: every document's pending events go out now,
        not on their group's turn)."""
        for _ in self.registry.groups:
            self.tick(now)

    def _flush_failed(self, doc: Document) -> None:
        self.stats.flush_failures += 1
        if self._failure_log.allow():
            log.exception("flushing %s failed; its members may miss this batch", doc.doc_id)
        g = self.registry.group_of.get(doc)
        if g is not None and doc.dirty:
            self.registry.groups[g].add(doc)  # what it still holds goes out on its next turn

    def _arm(self, doc: Document) -> None:
        d = doc.next_deadline_ms
        if d == NEVER or doc.empty:
            return
        current = self._armed.get(doc)
        if current is None or d < current:
            self._armed[doc] = d
            heapq.heappush(self._timers, (d, next(self._seq), doc))

    def _deliver(self, doc: Document, batch: Batch, now: int) -> None:
        st = self.stats
        frame = batch.frame
        slow: list[Client] = []
        members = self.registry.local[doc.doc_id]
        self.outlet.batch(members, batch.skip_sid, frame, slow)
        self.broker.publish(doc.doc_id, frame)
        st.batch_sizes.observe(batch.event_count)
        for arrived in batch.cursor_arrivals:
            st.cursor_latency.observe((now - arrived) / 1000.0)
        if slow:
            self.on_slow(slow)

    async def run(self, clock: Callable[[], int]) -> None:
        """A group's turn every `batch_ms / flush_groups`, on a fixed schedule.

        A late turn does not shift the schedule: the next one comes sooner, so every group
        keeps one flush per `batch_ms` on average (a drifting schedule stretches every
        document's interval, and cursor moves further apart than one interval would then be
        coalesced away). Only when a whole interval behind (a stall) does it start afresh
        rather than run every missed turn back to back.
        """
        loop = asyncio.get_running_loop()
        interval = self.batch_ms / 1000.0 / len(self.registry.groups)
        whole = self.batch_ms / 1000.0
        next_at = loop.time()
        while True:
            next_at += interval
            delay = next_at - loop.time()
            if delay < -whole:
                next_at = loop.time()
            # sleep(0) when late still lets the loop read sockets between two turns
            await asyncio.sleep(max(delay, 0.0))
            started = time.perf_counter()
            try:
                self.tick(clock())
            except Exception:  # a bug in one tick must not stop presence for everyone
                log.exception("tick failed")
            self.stats.tick_duration.observe(time.perf_counter() - started)
