"""Fake peer actors for unit tests: they record what they receive and answer canned replies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modcoord.actors import ActorContext, ManagedActor, Message

__all__ = ["Recorder", "Sync", "fake"]


@dataclass(frozen=True)
class Sync(Message):
    """Test-only: asked of a fake peer to wait until it has handled earlier messages."""


class Recorder(ManagedActor):
    """A fake peer: records every message and answers from ``replies`` (default 0)."""

    def __init__(self, settings: Any, context: ActorContext, received: list[Any],
                 replies: dict[str, Any]) -> None:
        super().__init__(settings, context)
        self.received = received
        self.replies = replies

    def statistics(self) -> None:
        return None

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Sync):
            return None
        self.received.append(message)
        reply = self.replies.get(type(message).__name__, 0)
        return reply(message) if callable(reply) else reply


def fake(name: str) -> type[Recorder]:
    return type(f"Fake_{name}", (Recorder,), {"actor_name": name})
