# -*- test-case-name: tests.core.test_metrics -*-
"""Prometheus exposition for the agent and the relay.

The agent's metrics are computed from its aggregated status (the ``GET
/status`` list, DESIGN "Status") each time ``/metrics`` is scraped, so there is
one source of truth and nothing to keep in step:

========================================  =======  ===============================================
metric                                    type     labels / meaning
========================================  =======  ===============================================
``hcm_hybrid_connection_connected``       gauge    ``hc``: 1 when at least one worker listens
``hcm_hybrid_connection_info``            gauge    ``hc``, ``namespace``, ``endpoint``: always 1
``hcm_control_channel_up``                gauge    ``hc``, ``worker``: 1 when that channel is live
``hcm_control_channel_state``             gauge    ``hc``, ``worker``, ``state``: 1 for the state now
``hcm_connections_open``                  gauge    ``hc``, ``worker``: connections now
``hcm_connections_accepted_total``        counter  ``hc``, ``worker``: connections accepted so far
``hcm_connections_rejected_total``        counter  ``hc``, ``worker``: rendezvous rejected so far
``hcm_bytes_in_total``                    counter  ``hc``, ``worker``: bytes sender -> endpoint
``hcm_bytes_out_total``                   counter  ``hc``, ``worker``: bytes endpoint -> sender
``hcm_control_channel_reconnects_total``  counter  ``hc``, ``worker``
``hcm_endpoint_reachable``                gauge    ``hc``, ``worker``: 1/0 once known
``hcm_token_expiry_timestamp_seconds``    gauge    ``hc``, ``worker``: Unix time the token expires
``hcm_token_expiry_seconds``              gauge    ``hc``, ``worker``: seconds until then (< 0: past)
``hcm_worker_info``                       gauge    ``worker``, ``pid``: always 1
``hcm_worker_restarts_total``             counter  ``worker``
``hcm_build_info``                        gauge    ``version``: always 1
========================================  =======  ===============================================

``worker`` is the worker's slot number (stable across restarts), or its pid
when the status has no slot number.  Counters restart from zero when a worker
restarts (Prometheus' ``rate()`` handles that).

:func:`registry_from_dict` exposes any dict of numbers (the relay's own
counters) the same way, and :class:`MetricsResource` serves either at
``/metrics``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import IRequest

_log = Logger()

Status = list[dict[str, Any]]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _version() -> str:
    try:
        from hcm_twisted import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return str(__version__)


def _worker_label(worker: Mapping[str, Any]) -> str:
    for key in ("worker", "index", "pid"):
        value = worker.get(key)
        if isinstance(value, int | str) and not isinstance(value, bool):
            return str(value)
    return "?"


class _AgentCollector:
    def __init__(self, status: Status, now: float) -> None:
        self._status = status
        self._now = now

    def collect(self) -> Iterable[Metric]:
        hc_labels = ["hc"]
        w_labels = ["hc", "worker"]
        connected = GaugeMetricFamily(
            "hcm_hybrid_connection_connected",
            "1 when at least one worker holds a live control channel for the hybrid connection",
            labels=hc_labels,
        )
        info = GaugeMetricFamily(
            "hcm_hybrid_connection_info",
            "The hybrid connection's namespace and endpoint (value always 1)",
            labels=["hc", "namespace", "endpoint"],
        )
        up = GaugeMetricFamily(
            "hcm_control_channel_up", "1 when the worker's control channel is live", labels=w_labels
        )
        state = GaugeMetricFamily(
            "hcm_control_channel_state",
            "The control channel's state (1 for the current state)",
            labels=["hc", "worker", "state"],
        )
        open_ = GaugeMetricFamily(
            "hcm_connections_open", "Connections open now", labels=w_labels
        )
        counters = {
            "accepted": CounterMetricFamily(
                "hcm_connections_accepted", "Connections accepted", labels=w_labels
            ),
            "rejected": CounterMetricFamily(
                "hcm_connections_rejected",
                "Rendezvous rejected (endpoint unreachable, draining, ...)",
                labels=w_labels,
            ),
            "bytes_in": CounterMetricFamily(
                "hcm_bytes_in", "Bytes forwarded from senders to the endpoint", labels=w_labels
            ),
            "bytes_out": CounterMetricFamily(
                "hcm_bytes_out", "Bytes forwarded from the endpoint to senders", labels=w_labels
            ),
            "reconnects": CounterMetricFamily(
                "hcm_control_channel_reconnects",
                "Control channel reconnections",
                labels=w_labels,
            ),
        }
        reachable = GaugeMetricFamily(
            "hcm_endpoint_reachable",
            "1 when the last connection to the endpoint succeeded, 0 when it failed",
            labels=w_labels,
        )
        expiry_at = GaugeMetricFamily(
            "hcm_token_expiry_timestamp_seconds",
            "Unix time at which the control channel's token expires",
            labels=w_labels,
        )
        expiry_in = GaugeMetricFamily(
            "hcm_token_expiry_seconds",
            "Seconds until the control channel's token expires (negative: expired)",
            labels=w_labels,
        )
        worker_info = GaugeMetricFamily(
            "hcm_worker_info", "A worker process (value always 1)", labels=["worker", "pid"]
        )
        restarts = CounterMetricFamily(
            "hcm_worker_restarts", "Times the worker process was restarted", labels=["worker"]
        )
        seen_workers: set[str] = set()
        build = GaugeMetricFamily(
            "hcm_build_info", "The hcm-twisted version (value always 1)", labels=["version"]
        )
        build.add_metric([_version()], 1.0)

        for hc in self._status:
            if not isinstance(hc, Mapping):
                continue
            name = str(hc.get("name", "?"))
            connected.add_metric([name], 1.0 if hc.get("connected") else 0.0)
            info.add_metric(
                [name, str(hc.get("namespace") or ""), str(hc.get("endpoint") or "")], 1.0
            )
            workers = hc.get("workers")
            if not isinstance(workers, list):
                continue
            for w in workers:
                if not isinstance(w, Mapping):
                    continue
                wl = _worker_label(w)
                labels = [name, wl]
                st = str(w.get("state") or "unknown")
                live = w.get("connected") is True
                up.add_metric(labels, 1.0 if live else 0.0)
                state.add_metric([name, wl, st], 1.0)
                value = _number(w.get("open"))
                if value is not None:
                    open_.add_metric(labels, value)
                for key, family in counters.items():
                    value = _number(w.get(key))
                    if value is not None:
                        family.add_metric(labels, value)
                if isinstance(w.get("endpoint_reachable"), bool):
                    reachable.add_metric(labels, 1.0 if w["endpoint_reachable"] else 0.0)
                expiry = _number(w.get("token_expiry"))
                if expiry is None:
                    expiry = _number(hc.get("token_expiry"))
                if expiry is not None:
                    expiry_at.add_metric(labels, expiry)
                    expiry_in.add_metric(labels, expiry - self._now)
                if wl not in seen_workers:
                    seen_workers.add(wl)
                    pid = w.get("pid")
                    worker_info.add_metric([wl, "" if pid is None else str(pid)], 1.0)
                    value = _number(w.get("restarts"))
                    if value is not None:
                        restarts.add_metric([wl], value)

        yield from (build, connected, info, up, state, open_, *counters.values(), reachable,
                    expiry_at, expiry_in, worker_info, restarts)


def agent_registry(status: Status, now: float | None = None) -> CollectorRegistry:
    """A registry exposing the agent's status list (see the module's table)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AgentCollector(status, time.time() if now is None else now))  # type: ignore[arg-type]
    return registry


class _DictCollector:
    def __init__(self, data: Mapping[str, Any], prefix: str, label: str,
                 help: Mapping[str, str]) -> None:
        self._data = data
        self._prefix = prefix
        self._label = label
        self._help = help

    def _family(self, key: str, labels: list[str]) -> GaugeMetricFamily | CounterMetricFamily:
        name = f"{self._prefix}_{key}" if self._prefix else key
        text = self._help.get(key, key.replace("_", " "))
        if key.endswith("_total"):
            return CounterMetricFamily(name[: -len("_total")], text, labels=labels)
        return GaugeMetricFamily(name, text, labels=labels)

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for key, value in self._data.items():
            number = _number(value)
            if number is not None:
                family = self._family(key, [])
                family.add_metric([], number)
                families[key] = family
            elif isinstance(value, Mapping):
                for item, inner in value.items():
                    number = _number(inner)
                    if number is not None:
                        family = families.get(key) or self._family(key, [self._label])
                        families[key] = family
                        family.add_metric([str(item)], number)
                    elif isinstance(inner, Mapping):
                        # {"hcs": {"hc1": {"listeners": 2}}} -> prefix_listeners{hc="hc1"}
                        for metric, v in inner.items():
                            number = _number(v)
                            if number is None:
                                continue
                            fkey = str(metric)
                            family = families.get(fkey) or self._family(fkey, [self._label])
                            families[fkey] = family
                            family.add_metric([str(item)], number)
        yield from families.values()


def registry_from_dict(
    data: Mapping[str, Any],
    prefix: str = "hcm_relay",
    label: str = "hc",
    help: Mapping[str, str] | None = None,
) -> CollectorRegistry:
    """Expose a dict of numbers, e.g. the relay's counters.

    * ``{"pending_rendezvous": 3}`` -> gauge ``hcm_relay_pending_rendezvous 3``;
    * a key ending in ``_total`` is a counter: ``{"connections_total": 9}`` ->
      ``hcm_relay_connections_total 9``;
    * ``{"listeners": {"hc1": 2}}`` -> ``hcm_relay_listeners{hc="hc1"} 2``;
    * ``{"hcs": {"hc1": {"listeners": 2, "bytes_in_total": 10}}}`` ->
      ``hcm_relay_listeners{hc="hc1"} 2`` and ``hcm_relay_bytes_in_total{hc="hc1"} 10``.

    Booleans count as 0/1; anything else (strings, None) is left out.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DictCollector(data, prefix, label, help or {}))  # type: ignore[arg-type]
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition format of ``registry``."""
    return generate_latest(registry)


class MetricsResource(resource.Resource):
    """``GET /metrics`` rendering ``to_registry(source())``.

    ``source`` returns the data (or a Deferred of it): for the agent,
    ``supervisor.status`` with ``to_registry=agent_registry`` (the default);
    for the relay, a function returning its counters dict with
    ``to_registry=registry_from_dict``.
    """

    isLeaf = True

    def __init__(
        self,
        source: Callable[[], Any],
        to_registry: Callable[[Any], CollectorRegistry] = agent_registry,
    ) -> None:
        super().__init__()
        self._source = source
        self._to_registry = to_registry

    def render_GET(self, request: IRequest) -> int | bytes:
        d = defer.maybeDeferred(self._source)
        d.addCallback(lambda data: exposition(self._to_registry(data)))

        def ok(body: bytes) -> None:
            request.setResponseCode(200)
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
            request.setHeader(b"cache-control", b"no-store")
            request.write(body)
            request.finish()

        def failed(reason: Failure) -> None:
            _log.failure("metrics: cannot collect", reason)
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(b"cannot collect metrics (see the log)\n")
            request.finish()

        finished = request.notifyFinish()  # type: ignore[attr-defined]
        gone: list[bool] = []
        finished.addErrback(lambda _: gone.append(True))

        def deliver(result: Any) -> None:
            if gone:
                return
            if isinstance(result, Failure):
                failed(result)
            else:
                ok(result)

        d.addBoth(deliver)
        return server.NOT_DONE_YET  # type: ignore[no-any-return]
