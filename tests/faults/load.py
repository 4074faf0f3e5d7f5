"""A bounded load of app connections through a :class:`tests.e2e.stack.Stack`."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer

from tests.e2e.stack import PatternClient, run_pattern, wait_until


class Load:
    """Keep ``concurrency`` transfers of ``size`` bytes (paced at ``rate`` B/s) going.

    Every finished client is kept in ``clients``.  :meth:`stop` stops starting new ones
    and waits (bounded by each client's timeout) for the running ones.
    """

    def __init__(self, port: int, concurrency: int = 4, size: int = 1 << 20,
                 rate: float = 0.0, timeout: float = 60.0) -> None:
        self.port = port
        self.concurrency = concurrency
        self.size = size
        self.rate = rate
        self.timeout = timeout
        self.clients: list[PatternClient] = []
        self.running: set[defer.Deferred[PatternClient]] = set()
        self.live: set[PatternClient] = set()
        self._stopping = False
        self._retries: list[Any] = []

    def start(self) -> Load:
        for _ in range(self.concurrency):
            self._one()
        return self

    def _one(self) -> None:
        if self._stopping:
            return
        client = PatternClient(self.size, self.rate)
        d = run_pattern(self.port, self.size, rate=self.rate, timeout=self.timeout,
                        client=client)
        self.running.add(d)
        self.live.add(client)

        def done(client: PatternClient) -> None:
            self.running.discard(d)
            self.live.discard(client)
            self.clients.append(client)
            if not self._stopping:
                # A failed connection is retried after a short pause (no busy loop).
                from twisted.internet import reactor

                delay = 0.0 if client.complete else 0.1
                self._retries = [c for c in self._retries if c.active()]
                self._retries.append(
                    reactor.callLater(delay, self._one))  # type: ignore[attr-defined]

        d.addCallback(done)

    async def mid_transfer(self, completed: int = 4, timeout: float = 20.0) -> None:
        """Wait until ``completed`` transfers are done and another one is mid-way: some of
        its bytes came back through the whole path, and not all of them yet.  A fault
        injected right after this hits at least one transfer in flight."""
        await wait_until(
            lambda: len(self.completed()) >= completed
            and any(0 < c.count < c.size for c in self.live),
            timeout, what=f"{completed} transfers done and one mid-way")

    async def stop(self) -> list[PatternClient]:
        self._stopping = True
        for call in self._retries:
            if call.active():
                call.cancel()
        self._retries = []
        await defer.gatherResults(list(self.running), consumeErrors=True)
        return self.clients

    def completed(self, after: float = 0.0) -> list[PatternClient]:
        return [c for c in self.clients if c.complete and c.started >= after]

    def failed(self) -> list[PatternClient]:
        return [c for c in self.clients if not c.complete]


def check_no_loss(test: Any, clients: list[PatternClient], visible: bool = True) -> dict[str, int]:
    """Every connection either delivered all its bytes, in order, exactly once, or failed
    visibly: what it got back is an exact prefix and it was reset, not closed cleanly.
    ``visible=False`` checks only the bytes (exactly once, in order, no hang)."""
    summary = {"connections": len(clients), "complete": 0, "failed": 0, "bytes": 0}
    for c in clients:
        test.assertTrue(c.in_order, f"bytes out of order, duplicated or corrupted: {c.describe()}")
        test.assertIsNotNone(c.ended, f"still open: {c.describe()}")
        if c.complete:
            summary["complete"] += 1
            summary["bytes"] += c.count
        else:
            summary["failed"] += 1
            # The app must see the failure: a reset (or refused connect), never a clean FIN
            # after a part of the data.
            test.assertFalse(
                visible and c.clean and c.count > 0,
                f"silently truncated (clean close after {c.count} of {c.size} bytes): "
                f"{c.describe()}",
            )
    return summary


def now() -> float:
    return time.monotonic()
