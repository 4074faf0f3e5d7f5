# -*- test-case-name: tests.agent.test_commands -*-
"""AMP commands between the agent's master and its workers.

The master holds the keys; a worker receives only what it needs to listen:
the listen URL, the endpoint, a short-lived SAS token and the trust anchors.
Structured arguments travel as JSON text (``JSONArgument``).

Master → worker:
  ``SetHybridConnections(hcs)``  the whole desired set; the worker reconciles
      (opens channels for new names, closes removed ones, updates changed ones).
      Each item: ``{"name", "url" (listen URL), "endpoint" ("host:port" or null),
      "token", "ca_certificates" (list of PEM file paths), "ping_interval",
      "connect_timeout"}``; optional ``"proxy"`` (an ``http://`` proxy URL or
      ``"none"``; absent/null: the environment's ``https_proxy`` decides) and
      ``"no_proxy"`` (comma-separated hosts), as in ``[agent] proxy``/``no-proxy``.
  ``StageHybridConnections(hcs)``  part of a desired set too big for one AMP
      value (64 kB, about 130 items): the worker buffers these items and adds
      them to the items of the next ``SetHybridConnections``, which completes
      the set.  Only sent when the set does not fit in one call.
  ``UpdateToken(name, token)``   a fresh token; the worker sends ``renewToken``
      on its live channel and uses it for later reconnects.
  ``GetStatus() -> status``      ``{"pid", "hcs": {name: {...}}}`` (see worker).
  ``Drain(timeout) -> {}``       stop accepting, let open connections finish up
      to ``timeout`` seconds, then close them; answers when done.

Workers log to their stderr, which the master reads line by line (see supervisor).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.protocols import amp

#: Bytes of JSON in one AMP value (AMP's cap is 65535; the rest is headroom).
AMP_VALUE_LIMIT = 60_000


def json_size(obj: Any) -> int:
    """How many bytes ``obj`` takes as a :class:`JSONArgument`."""
    return len(JSONArgument().toString(obj))


class JSONArgument(amp.Argument):
    """Any JSON value, as UTF-8 text (AMP values are capped at 64 kB; big sets are chunked by callers)."""

    def toString(self, inObject: Any) -> bytes:
        return json.dumps(inObject, separators=(",", ":")).encode("utf-8")

    def fromString(self, inString: bytes) -> Any:
        return json.loads(inString.decode("utf-8"))


class SetHybridConnections(amp.Command):
    arguments = [(b"hcs", JSONArgument())]
    response = []


class StageHybridConnections(amp.Command):
    arguments = [(b"hcs", JSONArgument())]
    response = []


class UpdateToken(amp.Command):
    arguments = [(b"name", amp.Unicode()), (b"token", amp.Unicode())]
    response = []


class GetStatus(amp.Command):
    arguments = []
    response = [(b"status", JSONArgument())]


class Drain(amp.Command):
    arguments = [(b"timeout", amp.Float())]
    response = []
