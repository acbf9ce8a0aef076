"""Prometheus metrics read at scrape time.

prometheus_client's `inc()` takes a lock; at tens of thousands of frames a second that is
real CPU. So the hot path bumps plain integers (relay/server/stats.py), and the
`RelayCollector` turns them into metric families only when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from relay.server.stats import CounterHistogram

if TYPE_CHECKING:
    from relay.server.hub import Hub
    from relay.server.webhooks import Webhooks

# Client-driven updates, by the message type that carries them (index = wire type).
HOT_TYPES = {"cursor": 4, "typing": 5, "viewport": 6, "focus": 7}


def _cumulative(h: CounterHistogram) -> tuple[list[tuple[str, float]], float]:
    cumulative: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(h.bounds, h.counts, strict=False):
        running += count
        cumulative.append((repr(float(bound)), running))
    running += h.counts[-1]
    cumulative.append(("+Inf", running))
    return cumulative, h.sum


def histogram_family(h: CounterHistogram, name: str, doc: str) -> HistogramMetricFamily:
    buckets, total = _cumulative(h)
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


class RelayCollector(Collector):
    def __init__(self, hub: Hub, implementation: Callable[[], str]) -> None:
        self.hub = hub
        self.implementation = implementation

    def collect(self) -> Iterator[Metric]:
        hub, st = self.hub, self.hub.stats
        per_doc = hub.config.metrics_per_document
        users = GaugeMetricFamily(
            "materi_presence_active_users",
            "Distinct users present in documents on this node",
            labels=["document_id", "workspace_id"] if per_doc else [],
        )
        total = 0
        for doc in hub.documents.values():
            n = len({s.user.user_id for s in doc.sessions.values() if not s.remote})
            total += n
            if per_doc:
                ws = next(iter(doc.workspaces()), "")
                users.add_metric([doc.doc_id, ws], n)
        if not per_doc:
            users.add_metric([], total)
        yield users
        updates = CounterMetricFamily(
            "materi_presence_updates", "Presence update events", labels=["event_type"]
        )
        for kind, n in st.updates.items():
            updates.add_metric([kind], n)
        for kind, t in HOT_TYPES.items():
            updates.add_metric([kind], st.hot[t])
        yield updates
        yield histogram_family(
            st.cursor_latency,
            "materi_cursor_update_latency_seconds",
            "Time from a cursor frame's arrival to the broadcast that carries it",
        )
        yield GaugeMetricFamily(
            "presence_relay_connections", "Open WebSocket connections", value=len(hub.clients)
        )
        yield CounterMetricFamily(
            "presence_relay_connections",
            "Accepted WebSocket connections",
            value=st.connections_total,
        )
        yield GaugeMetricFamily(
            "presence_relay_sockets",
            "Open TCP connections, past HELLO or not (what max_connections counts)",
            value=len(hub.sockets),
        )
        yield CounterMetricFamily(
            "presence_relay_flush_failures",
            "Documents whose flush failed (the others of that tick still flushed)",
            value=st.flush_failures,
        )
        yield GaugeMetricFamily(
            "presence_relay_documents",
            "Documents with members on this node",
            value=len(hub.documents),
        )
        yield CounterMetricFamily(
            "presence_relay_frames_in",
            "Client frames received",
            value=st.frames_other + st.hot.total,
        )
        yield CounterMetricFamily(
            "presence_relay_frames_out", "Frames written to members", value=st.frames_out
        )
        yield CounterMetricFamily(
            "presence_relay_bytes_out", "Payload bytes written to members", value=st.bytes_out
        )
        yield histogram_family(
            st.batch_sizes, "presence_relay_batch_events", "Events per BATCH frame"
        )
        yield histogram_family(
            st.tick_duration,
            "presence_relay_flush_duration_seconds",
            "Time to advance, encode and send one tick",
        )
        errors = CounterMetricFamily("presence_relay_errors", "ERROR frames sent", labels=["code"])
        for code, n in sorted(st.errors.items()):
            errors.add_metric([str(code)], n)
        yield errors
        closes = CounterMetricFamily(
            "presence_relay_closes", "Connections closed by the relay", labels=["code"]
        )
        for code, n in sorted(st.closes.items()):
            closes.add_metric([str(code)], n)
        yield closes
        yield GaugeMetricFamily(
            "presence_relay_backend_queue_depth",
            "Writes waiting for the store",
            value=hub.store.queue_depth(),
        )
        info = GaugeMetricFamily(
            "presence_relay_implementation_info",
            "Which twin of the hot path runs",
            labels=["implementation"],
        )
        info.add_metric([self.implementation()], 1)
        yield info
        yield from cluster_metrics(hub)


def cluster_metrics(hub: Hub) -> Iterator[Metric]:
    """Cross-node traffic and repairs (shared Redis only)."""
    cluster, broker = hub.cluster, hub.broker
    if cluster is None:
        return
    for name, doc, attr in (
        ("presence_relay_broker_published", "Messages this node published", "published"),
        ("presence_relay_broker_received", "Messages received from other nodes", "received"),
        ("presence_relay_broker_skipped",
         "Batches not published: no other node had the document open", "skipped"),
        ("presence_relay_broker_dropped", "Messages dropped (publish failed, queue full)",
         "dropped"),
        ("presence_relay_broker_gaps",
         "Messages found missing or repeated in another node's sequence", "gaps"),
    ):  # fmt: skip
        yield CounterMetricFamily(name, doc, value=getattr(broker, attr, 0))
    resyncs = CounterMetricFamily(
        "presence_relay_cluster_resyncs",
        "Reasons to re-read a document from the store: gap, duplicate (in another node's "
        "sequence), reconnect (of the pub/sub connection)",
        labels=["cause"],
    )
    for cause, n in sorted(cluster.resyncs_by_cause.items()):
        resyncs.add_metric([cause], n)
    yield resyncs


class WebhookCollector(Collector):
    """Webhook counters, per endpoint (`scheme://host:port/path`, no query string)."""

    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks

    def collect(self) -> Iterator[Metric]:
        label = ["endpoint"]
        delivered = CounterMetricFamily(
            "presence_relay_webhooks_delivered", "Webhook events delivered (2xx)", labels=label
        )
        failed = CounterMetricFamily(
            "presence_relay_webhooks_failed_attempts",
            "Webhook POSTs that failed (non-2xx, timeout, connection error)",
            labels=label,
        )
        dropped = CounterMetricFamily(
            "presence_relay_webhooks_dropped",
            "Webhook events not delivered: queue_full (oldest dropped past webhook_queue_max), "
            "attempts (webhook_max_attempts used up), shutdown (still queued at a stop)",
            labels=["endpoint", "reason"],
        )
        depth = GaugeMetricFamily(
            "presence_relay_webhooks_queue_depth",
            "Webhook events waiting or in flight",
            labels=label,
        )
        for e in self.webhooks.endpoints:
            st = e.stats
            delivered.add_metric([e.label], st.delivered)
            failed.add_metric([e.label], st.failed_attempts)
            for why, n in st.dropped.items():
                dropped.add_metric([e.label, why], n)
            depth.add_metric([e.label], e.depth())
        yield delivered
        yield failed
        yield dropped
        yield depth
        delay = HistogramMetricFamily(
            "presence_relay_webhooks_delivery_seconds",
            "From the presence event to its webhook's 2xx",
            labels=label,
        )
        for e in self.webhooks.endpoints:
            delay.add_metric([e.label], *_cumulative(e.stats.delay))
        yield delay


def make_registry(hub: Hub, implementation: Callable[[], str]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(hub, implementation))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
