"""Delayed calls."""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall


def cancel(call: IDelayedCall | None) -> None:
    """Cancel ``call`` if it is set and still pending."""
    if call is not None and call.active():
        call.cancel()
