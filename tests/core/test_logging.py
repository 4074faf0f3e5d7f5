"""Log output: text and JSON lines, level filtering, redaction, runner wiring."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.application.service import Application, IService, Service
from twisted.logger import ILogObserver, Logger, LogLevel, jsonFileLogObserver
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.core import logging as hcm_logging
from hcm_twisted.core.errors import MalformedInput

KEY = "bGlzdGVuLWtleS1mb3ItdGVzdHMtb25seS0xMTExMTE="
SIG = "Zk9vQmFyJTJCYmF6JTNE"
TOKEN = f"SharedAccessSignature sr=https%3a%2f%2fns%2fhc1&sig={SIG}&se=1790000000&skn=defaultListener"


def observe(fmt: str = "text", level: str = "info") -> tuple[Logger, io.StringIO]:
    stream = io.StringIO()
    return Logger(namespace="hcm.test", observer=hcm_logging.make_observer(fmt, level, stream)), stream


class RedactTests(SynchronousTestCase):
    def test_patterns(self) -> None:
        cases = [
            f"Endpoint=sb://ns/;SharedAccessKeyName=r;SharedAccessKey={KEY};EntityPath=hc1",
            f"Endpoint=sb://ns/;SharedAccessSignature={TOKEN};EntityPath=hc1",
            f"token {TOKEN} expires",
            f"ServiceBusAuthorization: {TOKEN}",
            f"wss://ns/$hc/hc1?sb-hc-action=connect&sb-hc-token={TOKEN.replace(' ', '%20')}",
            f"wss://ns/$hc/hc1?sb-hc-action=connect&sb-hc-token=SharedAccessSignature%20sr%3Dx%26sig%3D{SIG}%26se%3D1",
            f"/path?sig={SIG}&se=1",
            f'{{"primaryKey":"{KEY}","secondaryKey":"{KEY}"}}',
            f'primary-key = "{KEY}"',
            f"Proxy-Authorization: Basic {KEY}",
            f"http://user:{KEY}@proxy:3128",
        ]
        for text in cases:
            out = hcm_logging.redact(text)
            self.assertNotIn(KEY, out, text)
            self.assertNotIn(SIG, out, text)
            self.assertIn("***", out, text)

    def test_keeps_the_rest(self) -> None:
        text = f"Endpoint=sb://ns/;SharedAccessKeyName=rule;SharedAccessKey={KEY};EntityPath=hc1"
        self.assertEqual(
            hcm_logging.redact(text),
            "Endpoint=sb://ns/;SharedAccessKeyName=rule;SharedAccessKey=***;EntityPath=hc1",
        )
        plain = "control channel connected hc1 (worker 1234), 5 open, signature check passed"
        self.assertEqual(hcm_logging.redact(plain), plain)
        self.assertEqual(hcm_logging.redact("http://proxy:3128"), "http://proxy:3128")


class ObserverTests(SynchronousTestCase):
    def test_text_and_level(self) -> None:
        log, out = observe("text", "info")
        log.debug("hidden {x}", x=1)
        log.info("control channel connected {hc}", hc="hc1")
        log.warn("connection string {cs}", cs=f"SharedAccessKeyName=r;SharedAccessKey={KEY}")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertRegex(lines[0], r"^\d{4}-\d\d-\d\dT.* \[hcm\.test#info\] control channel connected hc1$")
        self.assertIn("[hcm.test#warn] connection string SharedAccessKeyName=r;SharedAccessKey=***", lines[1])
        self.assertNotIn(KEY, out.getvalue())

    def test_levels(self) -> None:
        for level, expected in [("debug", 5), ("info", 4), ("warning", 3), ("error", 2), ("critical", 1)]:
            log, out = observe("text", level)
            log.debug("d")
            log.info("i")
            log.warn("w")
            log.error("e")
            log.critical("c")
            self.assertEqual(len(out.getvalue().splitlines()), expected, level)

    def test_json(self) -> None:
        log, out = observe("json", "debug")
        log.info("accepted {n} from {peer}", n=3, peer="10.0.0.1", token=TOKEN, blob=object())
        log.error("bad: {detail}", detail=f"SharedAccessKey={KEY}")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = json.loads(lines[0]), json.loads(lines[1])
        self.assertEqual(first["level"], "info")
        self.assertEqual(first["namespace"], "hcm.test")
        self.assertEqual(first["message"], "accepted 3 from 10.0.0.1")
        self.assertEqual((first["n"], first["peer"]), (3, "10.0.0.1"))
        self.assertNotIn("token", first)  # secret-looking field names are dropped
        self.assertNotIn("blob", first)  # not a simple value
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(second["level"], "error")
        self.assertEqual(second["message"], "bad: SharedAccessKey=***")
        self.assertEqual(second["detail"], "SharedAccessKey=***")
        self.assertNotIn(KEY, out.getvalue())
        self.assertNotIn(SIG, out.getvalue())

    def test_json_legacy_events(self) -> None:
        from twisted.logger._legacy import publishToNewObserver
        from twisted.python.log import textFromEventDict

        stream = io.StringIO()
        observer = hcm_logging.make_observer("json", "info", stream)
        publishToNewObserver(
            observer,
            {"message": ("Site starting on 8080",), "system": "_Quiet", "isError": 0,
             "time": 1_800_000_000.0},
            textFromEventDict,
        )
        record = json.loads(stream.getvalue())
        self.assertEqual(record["namespace"], "_Quiet")
        self.assertEqual(record["message"], "Site starting on 8080")

    def test_traceback_redacted(self) -> None:
        for fmt in ("text", "json"):
            log, out = observe(fmt)
            try:
                raise ValueError(f"cannot use SharedAccessKey={KEY}")
            except ValueError:
                log.failure("listen failed")
            text = out.getvalue()
            self.assertIn("listen failed", text)
            self.assertIn("ValueError", text)
            self.assertIn("SharedAccessKey=***", text)
            self.assertNotIn(KEY, text)

    def test_bad_settings(self) -> None:
        with self.assertRaises(MalformedInput) as cm:
            hcm_logging.make_observer("xml")
        self.assertIn("log-format: 'xml'", str(cm.exception))
        with self.assertRaises(MalformedInput) as cm:
            hcm_logging.make_observer("text", "loud")
        self.assertIn("log-level: 'loud'", str(cm.exception))
        self.assertEqual(hcm_logging.parse_level(LogLevel.error), LogLevel.error)


class PluginOptions(usage.Options):
    optParameters = [["config", "c", None, "config"]]


class RunnerTests(SynchronousTestCase):
    def test_twist(self) -> None:
        runner: dict[str, Any] = {"fileLogObserverFactory": jsonFileLogObserver, "logLevel": LogLevel.info}
        options = PluginOptions()
        options.parent = runner  # type: ignore[attr-defined]
        service = Service()
        self.assertIs(hcm_logging.configure(options, service, "json", "warn"), service)
        self.assertEqual(runner["logLevel"], LogLevel.warn)
        stream = io.StringIO()
        observer = runner["fileLogObserverFactory"](stream)
        Logger(namespace="t", observer=observer).warn("hello {k}", k=f"SharedAccessKey={KEY}")
        Logger(namespace="t", observer=observer).info("not shown")
        record = json.loads(stream.getvalue())
        self.assertEqual(record["message"], "hello SharedAccessKey=***")

    def test_twistd(self) -> None:
        options = PluginOptions()
        options.parent = {"logfile": None, "logger": None}  # type: ignore[attr-defined]
        service = Service()
        top = hcm_logging.configure(options, service, "text", "debug")
        self.assertIs(service.parent, top)
        application = Application("hcm")
        IService(top).setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertTrue(ILogObserver.providedBy(observer))

    def test_twistd_logfile(self) -> None:
        path = self.mktemp()
        options = PluginOptions()
        options.parent = {"logfile": path}  # type: ignore[attr-defined]
        top = hcm_logging.configure(options, Service(), "text", "info")
        application = Application("hcm")
        top.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        Logger(namespace="t", observer=observer).info("to the file {u}", u="http://a:b@c")
        with open(path) as f:
            self.assertIn("to the file http://a:***@c", f.read())

    def test_bad_settings_fail_fast(self) -> None:
        self.assertRaises(MalformedInput, hcm_logging.configure, PluginOptions(), Service(), "yaml")
