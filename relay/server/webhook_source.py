"""Webhook events of a relay without Redis: from the hub's observers of its own members.

`hub.on_member_joined` / `hub.on_member_left` are called after the document changed, so
`doc.sessions` already holds (or no longer holds) the session:

- `user.joined` when the session is its user's only one in the document, `user.left` when
  the user's last one went (with that session's leave reason);
- `document.active` when the document's first member arrived, `document.empty` when its
  last one left.

A held session (suspended: its connection was lost, DISCONNECTED for the others) is still a
member, so a reload or a network blip that resumes within `reconnect_grace_ms` is neither a
leave nor a join; one that is not resumed leaves with LOST. On a join the document event
comes first (`document.active`, then `user.joined`), on a leave last (`user.left`, then
`document.empty`). Events queued here are lost with the process (docs/webhooks.md).
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any

from relay.config import PresenceConfig
from relay.core import protocol as p
from relay.server.webhooks import (
    DOCUMENT_ACTIVE,
    DOCUMENT_EMPTY,
    USER_JOINED,
    USER_LEFT,
    WebhookEvent,
    Webhooks,
    new_event_id,
    wall_ms,
)

if TYPE_CHECKING:
    from relay.server.hub import Hub
    from relay.twin import Document

log = logging.getLogger("relay.webhooks")


def build_webhooks(
    config: PresenceConfig, hub: Hub, ssl_context: ssl.SSLContext | None = None
) -> Webhooks:
    """The webhook service of a relay (`webhook_urls` set), with its source: the presence
    stream on shared Redis, this node's members otherwise. ConfigError (naming the setting)
    when it cannot run, e.g. no `webhook_secret`."""
    webhooks = Webhooks(config, ssl_context)
    if hub.store.clustered:
        from relay.server.webhook_stream import StreamSource

        webhooks.source = StreamSource(config, hub.store, webhooks)
    else:
        members = MemberEvents(webhooks)
        members.attach(hub)
        webhooks.source = members
    return webhooks


def reason_name(reason: int) -> str:
    names = p.LEAVE_REASONS
    return names[reason] if 0 <= reason < len(names) else str(reason)


class MemberEvents:
    """The memory source: transitions computed from the document's sessions."""

    def __init__(self, sink: Webhooks) -> None:
        self.sink = sink
        self.reading = True

    def attach(self, hub: Hub) -> None:
        hub.on_member_joined.append(self.joined)
        hub.on_member_left.append(self.left)

    def describe(self) -> str:
        return "this node's members (memory backend: events are lost with the process)"

    async def start(self) -> None:
        self.reading = True

    async def stop_reading(self) -> None:
        # Members still leave while the relay stops (its clients are closed): those
        # events are taken and get the drain time. Nothing to stop here.
        pass

    async def close(self, abandoned: int) -> None:
        self.reading = False
        if abandoned:
            log.warning(
                "webhooks: %d event(s) not delivered before the stop are lost (memory backend)",
                abandoned,
            )

    def joined(self, doc: Document, session: Any) -> None:
        if not self.reading:
            return
        uid = session.user.user_id
        same = 0
        for s in doc.sessions.values():
            if s.user.user_id == uid:
                same += 1
        events: list[WebhookEvent] = []
        now = wall_ms()
        ws = session.user.workspace_id
        if len(doc.sessions) == 1:
            events.append(WebhookEvent(new_event_id(), DOCUMENT_ACTIVE, doc.doc_id, ws, now))
        if same == 1:
            events.append(WebhookEvent(new_event_id(), USER_JOINED, doc.doc_id, ws, now, uid))
        if events:
            self.sink.emit(events)

    def left(self, doc: Document, session: Any, reason: int) -> None:
        if not self.reading:
            return
        uid = session.user.user_id
        events: list[WebhookEvent] = []
        now = wall_ms()
        ws = session.user.workspace_id
        if not any(s.user.user_id == uid for s in doc.sessions.values()):
            events.append(
                WebhookEvent(
                    new_event_id(), USER_LEFT, doc.doc_id, ws, now, uid, reason_name(reason)
                )
            )
        if not doc.sessions:
            events.append(WebhookEvent(new_event_id(), DOCUMENT_EMPTY, doc.doc_id, ws, now))
        if events:
            self.sink.emit(events)
