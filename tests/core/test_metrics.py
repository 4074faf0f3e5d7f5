"""Prometheus exposition of the agent's status and of the relay's counters."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from hcm_twisted.core import metrics

NOW = 1_800_000_000.0

STATUS: list[dict[str, Any]] = [
    {
        "name": "hc1",
        "connected": True,
        "endpoint": "127.0.0.1:7001",
        "namespace": "localhost:9443",
        "token_expiry": int(NOW) + 3000,
        "workers": [
            {
                "worker": 0, "pid": 101, "state": "connected", "connected": True, "open": 2,
                "accepted": 10, "rejected": 1, "bytes_in": 1000, "bytes_out": 2000,
                "reconnects": 0, "token_expiry": int(NOW) + 2700, "last_error": None,
                "endpoint_reachable": True, "restarts": 0,
            },
            {
                "worker": 1, "pid": 102, "state": "backing-off", "connected": False, "open": 0,
                "accepted": 3, "rejected": 4, "bytes_in": 5, "bytes_out": 6, "reconnects": 7,
                "token_expiry": int(NOW) - 10, "last_error": "401 Unauthorized",
                "endpoint_reachable": False, "restarts": 2,
            },
        ],
    },
    {
        "name": "hc2",
        "connected": False,
        "endpoint": None,
        "state": "no endpoint",
        "error": "no endpoint: metadata has none",
        "token_expiry": None,
        "workers": [],
    },
]


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


class AgentMetricsTests(SynchronousTestCase):
    def test_values(self) -> None:
        text = metrics.exposition(metrics.agent_registry(STATUS, now=NOW))
        s = samples(text)
        self.assertEqual(s[key("hcm_hybrid_connection_connected", hc="hc1")], 1)
        self.assertEqual(s[key("hcm_hybrid_connection_connected", hc="hc2")], 0)
        self.assertEqual(
            s[key("hcm_hybrid_connection_info", hc="hc1", namespace="localhost:9443",
                  endpoint="127.0.0.1:7001")], 1)
        self.assertEqual(s[key("hcm_control_channel_up", hc="hc1", worker="0")], 1)
        self.assertEqual(s[key("hcm_control_channel_up", hc="hc1", worker="1")], 0)
        self.assertEqual(
            s[key("hcm_control_channel_state", hc="hc1", worker="1", state="backing-off")], 1)
        self.assertEqual(s[key("hcm_connections_open", hc="hc1", worker="0")], 2)
        self.assertEqual(s[key("hcm_connections_accepted_total", hc="hc1", worker="0")], 10)
        self.assertEqual(s[key("hcm_connections_rejected_total", hc="hc1", worker="1")], 4)
        self.assertEqual(s[key("hcm_bytes_in_total", hc="hc1", worker="0")], 1000)
        self.assertEqual(s[key("hcm_bytes_out_total", hc="hc1", worker="0")], 2000)
        self.assertEqual(s[key("hcm_control_channel_reconnects_total", hc="hc1", worker="1")], 7)
        self.assertEqual(s[key("hcm_endpoint_reachable", hc="hc1", worker="0")], 1)
        self.assertEqual(s[key("hcm_endpoint_reachable", hc="hc1", worker="1")], 0)
        self.assertEqual(s[key("hcm_token_expiry_seconds", hc="hc1", worker="0")], 2700)
        self.assertEqual(s[key("hcm_token_expiry_seconds", hc="hc1", worker="1")], -10)
        self.assertEqual(
            s[key("hcm_token_expiry_timestamp_seconds", hc="hc1", worker="0")], NOW + 2700)
        self.assertEqual(s[key("hcm_worker_info", worker="1", pid="102")], 1)
        self.assertEqual(s[key("hcm_worker_restarts_total", worker="1")], 2)
        # hc2 has no workers: no per-worker series for it.
        self.assertFalse([k for k in s if ("hc", "hc2") in k[1] and k[0] != "hcm_hybrid_connection_connected"
                          and k[0] != "hcm_hybrid_connection_info"])
        self.assertIn(b"# TYPE hcm_connections_accepted_total counter", text)
        self.assertIn(b"# TYPE hcm_connections_open gauge", text)

    def test_partial_and_odd_input(self) -> None:
        status: list[Any] = [
            {"name": "a", "connected": False, "token_expiry": NOW + 5,
             "workers": [{"pid": 7, "state": "unresponsive", "open": 0, "accepted": 0},
                         "junk", {"worker": 3}]},
            "junk",
            {"name": "b", "workers": None},
        ]
        s = samples(metrics.exposition(metrics.agent_registry(status, now=NOW)))
        # The worker label falls back to the pid; the HC's expiry stands in for the worker's.
        self.assertEqual(s[key("hcm_control_channel_state", hc="a", worker="7", state="unresponsive")], 1)
        self.assertEqual(s[key("hcm_token_expiry_seconds", hc="a", worker="7")], 5)
        self.assertEqual(s[key("hcm_control_channel_state", hc="a", worker="3", state="unknown")], 1)
        self.assertNotIn(key("hcm_endpoint_reachable", hc="a", worker="7"), s)
        self.assertEqual(s[key("hcm_hybrid_connection_connected", hc="b")], 0)

    def test_empty(self) -> None:
        import hcm_twisted

        self.assertEqual(samples(metrics.exposition(metrics.agent_registry([]))),
                         {key("hcm_build_info", version=hcm_twisted.__version__): 1.0})


class RelayMetricsTests(SynchronousTestCase):
    def test_dict(self) -> None:
        data = {
            "pending_rendezvous": 3,
            "connections_total": 9,
            "listeners": {"hc1": 2, "hc2": 0},
            "hcs": {"hc1": {"bytes_in_total": 10, "connections_open": 1, "note": "x"}},
            "up": True,
            "version": "1.0",
            "nothing": None,
        }
        text = metrics.exposition(metrics.registry_from_dict(data, help={"listeners": "Live listeners"}))
        s = samples(text)
        self.assertEqual(s[key("hcm_relay_pending_rendezvous")], 3)
        self.assertEqual(s[key("hcm_relay_connections_total")], 9)
        self.assertEqual(s[key("hcm_relay_listeners", hc="hc1")], 2)
        self.assertEqual(s[key("hcm_relay_listeners", hc="hc2")], 0)
        self.assertEqual(s[key("hcm_relay_bytes_in_total", hc="hc1")], 10)
        self.assertEqual(s[key("hcm_relay_connections_open", hc="hc1")], 1)
        self.assertEqual(s[key("hcm_relay_up")], 1)
        self.assertIn(b"# TYPE hcm_relay_connections_total counter", text)
        self.assertIn(b"# HELP hcm_relay_listeners Live listeners", text)
        self.assertNotIn(b"version", text)
        self.assertNotIn(b"note", text)


class ResourceTests(SynchronousTestCase):
    def render(self, res: metrics.MetricsResource) -> DummyRequest:
        request = DummyRequest([b"metrics"])
        self.assertEqual(res.render(request), NOT_DONE_YET)
        return request

    def test_value_source(self) -> None:
        request = self.render(metrics.MetricsResource(lambda: STATUS))
        self.assertEqual(request.finished, 1)
        self.assertEqual(request.responseCode, 200)
        self.assertTrue(
            request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=")
        )
        body = b"".join(request.written)
        self.assertIn(b'hcm_connections_accepted_total{hc="hc1",worker="0"} 10.0', body)

    def test_deferred_source(self) -> None:
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        request = self.render(metrics.MetricsResource(lambda: d, metrics.registry_from_dict))
        self.assertEqual(request.finished, 0)
        d.callback({"pending_rendezvous": 4})
        self.assertEqual(request.finished, 1)
        self.assertIn(b"hcm_relay_pending_rendezvous 4.0", b"".join(request.written))

    def test_failing_source(self) -> None:
        def broken() -> Any:
            raise RuntimeError("boom SharedAccessKey=abc")

        request = self.render(metrics.MetricsResource(broken))
        self.assertEqual(request.responseCode, 500)
        body = b"".join(request.written)
        self.assertIn(b"cannot collect metrics", body)
        self.assertNotIn(b"abc", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_client_gone(self) -> None:
        d: defer.Deferred[Any] = defer.Deferred()
        request = self.render(metrics.MetricsResource(lambda: d))
        request.processingFailed(Exception("gone"))  # errbacks notifyFinish, as a lost client does
        d.callback(STATUS)
        self.assertEqual(request.written, [])
