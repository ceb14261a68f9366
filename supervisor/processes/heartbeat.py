"""When a silent actor process counts as hung: the heartbeat's rules, pure.

The daemon pings each actor process every ``interval`` seconds; the child's reader thread
answers at once. A process whose last answer (or, before the first, its start) is more
than ``timeout`` seconds old is hung — stopped (SIGSTOP), or so starved that it cannot
answer — and is replaced: killed, and restarted like a crash.
"""

from __future__ import annotations

__all__ = ["Heartbeat"]


class Heartbeat:
    """The ping schedule and the verdict for one actor process.

    Args:
        interval: seconds between pings.
        timeout: seconds without an answer after which the process is hung.
        now: the clock reading at start (the process counts as answering then).
    """

    def __init__(self, interval: float, timeout: float, now: float) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("heartbeat interval and timeout must be positive")
        self.interval = interval
        self.timeout = timeout
        self.last_answer = now
        self.next_ping = now + interval
        self.sent = 0
        self.answered = 0

    def ping_due(self, now: float) -> int | None:
        """The number of the ping to send now, or None if none is due."""
        if now < self.next_ping:
            return None
        self.next_ping = now + self.interval
        self.sent += 1
        return self.sent

    def answer(self, number: int, now: float) -> None:
        """Ping ``number`` was answered at ``now`` (stale answers count too: it lives)."""
        self.answered = max(self.answered, number)
        self.last_answer = max(self.last_answer, now)

    def hung(self, now: float) -> bool:
        """Whether the process has not answered for longer than ``timeout``."""
        return now - self.last_answer > self.timeout

    def silent_for(self, now: float) -> float:
        return max(0.0, now - self.last_answer)
