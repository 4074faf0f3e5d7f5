"""Tests for hcm_twisted.sender.forwarder.SenderService (listening, DNS-name mode, retries)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.agent.metadata import MetadataError
from hcm_twisted.sender import config
from hcm_twisted.sender.forwarder import RETRY_INTERVAL, SenderService
from tests.sender.common import CS_PREFIX, KEY, write_config


class FakeMetadata(SenderService):
    answers: list[Any]

    async def _read_metadata(self, hc: config.SenderHc) -> str:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)


class ServiceTests(SynchronousTestCase):
    def load(self) -> config.SenderConfig:
        return config.load(write_config(self, f'''
[[hybrid-connection]]
connection-string = "{CS_PREFIX}hc1"
listen = "tcp:7002:interface=127.0.0.1"

[[hybrid-connection]]
connection-string = "{CS_PREFIX}db"
'''))

    def test_listens_and_retries_metadata(self) -> None:
        reactor = MemoryReactorClock()
        service = FakeMetadata(self.load(), reactor=reactor)
        service.answers = [MetadataError("no endpoint in the HC's user metadata"), "db.internal:1433"]
        with capturedLogs() as events:
            service.startService()
            ports = [(p[0], p[3]) for p in reactor.tcpServers]
            self.assertEqual(ports, [(7002, "127.0.0.1")])
            reactor.advance(RETRY_INTERVAL)
            ports = [(p[0], p[3]) for p in reactor.tcpServers]
            self.assertEqual(ports, [(7002, "127.0.0.1"), (1433, "127.0.0.2")])
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("hcm-sender listening on", text)
        self.assertIn("db: cannot listen: no endpoint in the HC's user metadata; retrying in 30", text)
        self.assertIn("for db (apps use db.internal:1433)", text)
        self.assertEqual(service.endpoints, {"db": "db.internal:1433"})
        self.assertNotIn(KEY, text)
        d = service.stopService()
        reactor.advance(6)
        self.successResultOf(d)

    def test_stop_cancels_retry(self) -> None:
        reactor = MemoryReactorClock()
        service = FakeMetadata(self.load(), reactor=reactor)
        service.answers = [MetadataError("down")]
        service.startService()
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        d: defer.Deferred[None] = service.stopService()  # type: ignore[assignment]
        reactor.advance(6)
        self.successResultOf(d)
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.active()], [])


class MetadataClientTests(SynchronousTestCase):
    def test_metadata_goes_through_the_configured_proxy(self) -> None:
        """The runtime GET of an HC's metadata honours ``proxy`` and ``no-proxy`` and the CAs
        (as the agent's does), for the service and for ``hcm sender hosts``."""
        from hcm_twisted.agent import metadata
        from hcm_twisted.sender import forwarder

        cfg = config.load(write_config(self, f'''
ca-certificates = "ca.pem"
proxy = "http://proxy.example:3128"
no-proxy = ["internal.example"]

[[hybrid-connection]]
connection-string = "{CS_PREFIX}db"
'''))
        made: list[tuple[Any, ...]] = []
        self.patch(metadata, "make_agent", lambda *args: made.append(args) or object())
        forwarder.metadata_client(cfg, "reactor")
        self.assertEqual(made, [("reactor", cfg.ca_certificates, "http://proxy.example:3128",
                                 "internal.example")])
