"""Reactor hygiene for tests that run autobahn on the real reactor.

autobahn schedules its handshake, close and ping timeouts through txaio's batched
timers; cancelling a timer leaves its bucket's ``callLater`` behind, which trial
reports as a dirty reactor.  Tests that open WebSockets on the real reactor add
``self.addCleanup(cancel_batched_timers)``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor

reactor: Any = _reactor


def cancel_now() -> None:
    """Cancel every pending bucket call of autobahn's batched timers."""
    for call in reactor.getDelayedCalls():
        if getattr(call.func, "__name__", "") == "_notify_bucket" and call.active():
            call.cancel()


def cancel_batched_timers() -> defer.Deferred[None]:
    """Let pending network events run first (they may schedule more), then cancel."""
    return task.deferLater(reactor, 0.2, cancel_now)
