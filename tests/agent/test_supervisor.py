"""Tests for the agent master: :mod:`hcm_twisted.agent.supervisor`, ``tokens``, ``metadata``.

Workers are fake processes (in the style of twisted's ``test_procmon``) whose
AMP end is a small in-memory protocol; the clock is a ``MemoryReactorClock``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from hcm_twisted.agent import commands, config, metadata, supervisor, tap, tokens
from hcm_twisted.agent.supervisor import Supervisor
from hcm_twisted.core import connstr, sas, urls
from hcm_twisted.core.errors import MalformedInput

KEY = "bGlzdGVuLWtleS1mb3ItdGVzdHMtb25seS0xMTExMTE="


def cs_text(hc: str = "hc1", key: str = KEY) -> str:
    return (f"Endpoint=sb://localhost:9443/;SharedAccessKeyName=defaultListener;"
            f"SharedAccessKey={key};EntityPath={hc}")


def write_config(path: Path, workers: int = 2, hcs: tuple[tuple[str, str | None], ...] = (("hc1", "127.0.0.1:7001"),),
                 extra: str = "") -> config.AgentConfig:
    text = f'[agent]\nworkers = {workers}\ntoken-lifetime = 1000\ndrain-timeout = 7\n{extra}\n'
    for name, endpoint in hcs:
        text += f'[[hybrid-connection]]\nconnection-string = "{cs_text(name)}"\n'
        if endpoint:
            text += f'endpoint = "{endpoint}"\n'
    path.write_text(text)
    return config.load(path)


class FakeWorker(amp.AMP):
    """The worker's end of AMP, answering like a real worker would."""

    def __init__(self, process: FakeProcess) -> None:
        super().__init__()
        self.process = process
        self.sets: list[list[dict[str, Any]]] = []
        self.staged: list[dict[str, Any]] = []
        self.fail_tokens = False
        self.tokens: list[tuple[str, str]] = []
        self.drains: list[float] = []
        self.drain_answer: Deferred[dict[str, Any]] | None = None
        self.hc_state = "connected"
        self.open = 0

    @commands.SetHybridConnections.responder
    def set_hcs(self, hcs: Any) -> dict[str, Any]:
        self.sets.append(self.staged + hcs)
        self.staged = []
        return {}

    @commands.StageHybridConnections.responder
    def stage_hcs(self, hcs: Any) -> dict[str, Any]:
        self.staged.extend(hcs)
        return {}

    @commands.UpdateToken.responder
    def update_token(self, name: str, token: str) -> dict[str, Any]:
        if self.fail_tokens:
            raise RuntimeError("refusing the token")
        self.tokens.append((name, token))
        return {}

    @commands.GetStatus.responder
    def get_status(self) -> dict[str, Any]:
        names = [item["name"] for item in self.sets[-1]] if self.sets else []
        return {"status": {"pid": self.process.pid, "hcs": {
            n: {"state": self.hc_state, "open": self.open, "accepted": 3, "token": "SECRET",
                "token_expiry": 5, "last_error": None} for n in names}}}

    @commands.Drain.responder
    def drain(self, timeout: float) -> Any:
        self.drains.append(timeout)
        if self.drain_answer is not None:
            return self.drain_answer
        return {}


class _WorkerTransport:
    def __init__(self, process: FakeProcess) -> None:
        self.process = process

    def write(self, data: bytes) -> None:
        self.process.reactor.callLater(0, self.process.deliver_to_master, data)

    def writeSequence(self, seq: list[bytes]) -> None:  # noqa: N802
        for data in seq:
            self.write(data)

    def loseConnection(self) -> None:  # noqa: N802
        pass

    def getPeer(self) -> str:  # noqa: N802
        return "master"

    def getHost(self) -> str:  # noqa: N802
        return "worker"


class FakeProcess:
    """What ``spawnProcess`` returns: records writes, closes and signals."""

    def __init__(self, reactor: FakeProcessReactor, proto: Any, executable: str, args: list[str],
                 env: dict[str, str], child_fds: dict[int, str], pid: int) -> None:
        self.reactor = reactor
        self.proto = proto
        self.executable = executable
        self.args = args
        self.env = env
        self.child_fds = child_fds
        self.pid: int | None = pid
        self.to_child = b""
        self.closed: set[int] = set()
        self.closed_by_child: set[int] = set()
        self.signals: list[str] = []
        self.exit_on_term = True
        self.worker = FakeWorker(self)
        self.worker.makeConnection(_WorkerTransport(self))  # type: ignore[arg-type]

    def writeToChild(self, fd: int, data: bytes) -> None:  # noqa: N802
        assert fd == 3, fd
        assert fd not in self.closed
        self.to_child += data
        self.reactor.callLater(0, self.deliver_to_worker, data)

    def deliver_to_worker(self, data: bytes) -> None:
        if self.pid is not None:
            self.worker.dataReceived(data)

    def deliver_to_master(self, data: bytes) -> None:
        if self.pid is not None and 4 not in self.closed_by_child:
            self.proto.childDataReceived(4, data)

    def closeChildFD(self, fd: int) -> None:  # noqa: N802
        self.closed.add(fd)

    def signalProcess(self, name: str) -> None:  # noqa: N802
        if self.pid is None:
            raise error.ProcessExitedAlready()
        self.signals.append(name)
        if name == "KILL" or (name == "TERM" and self.exit_on_term):
            self.reactor.callLater(0.1, self.exit, signal=9 if name == "KILL" else 15)

    def exit(self, code: int = 0, signal: int | None = None) -> None:
        if self.pid is None:
            return
        self.pid = None
        self.worker.connectionLost(Failure(error.ConnectionDone()))
        if code == 0 and signal is None:
            reason = Failure(error.ProcessDone(0))
        else:
            reason = Failure(error.ProcessTerminated(code if signal is None else None, signal))
        self.proto.processEnded(reason)


class FakeProcessReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []
        self._next_pid = 1000

    def spawnProcess(self, proto: Any, executable: Any, args: Any = (), env: Any = None,  # noqa: N802
                     path: Any = None, uid: Any = None, gid: Any = None, usePTY: Any = 0,  # noqa: N803
                     childFDs: Any = None) -> FakeProcess:  # noqa: N803
        self._next_pid += 1
        process = FakeProcess(self, proto, executable, list(args), dict(env or {}), dict(childFDs or {}),
                              self._next_pid)
        self.processes.append(process)
        proto.makeConnection(process)
        return process

    def live(self) -> list[FakeProcess]:
        return [p for p in self.processes if p.pid is not None]


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "hcm.toml"
        self.config = write_config(self.path)
        self.reactor = FakeProcessReactor()
        self.fetched: list[connstr.ConnectionString] = []
        self.fetch_result: dict[str, Deferred[str]] = {}
        self.sup = Supervisor(self.config, self.reactor, fetch=self.fetch,
                              env={"PYTHONPATH": "/x"})

    def fetch(self, cs: connstr.ConnectionString) -> Deferred[str]:
        self.fetched.append(cs)
        d = self.fetch_result.get(cs.entity_path or "")
        if d is None:
            return Deferred()
        return d

    def start(self) -> None:
        self.sup.startService()
        self.addCleanup(self._stop)
        self.pump()

    def pump(self) -> None:
        """Deliver every AMP message in flight (both ways)."""
        self.reactor.advance(0)

    def _stop(self) -> None:
        if self.sup.running:
            self.sup.stopService()
            self.pump()
            self.reactor.advance(30)
            self.reactor.advance(30)

    def status(self) -> list[dict[str, Any]]:
        d = self.sup.status()
        self.pump()
        return self.successResultOf(d)

    def test_spawn(self) -> None:
        """Workers are ``python -m hcm_twisted.agent.worker`` with AMP on fds 3 and 4."""
        self.start()
        self.assertEqual(len(self.reactor.processes), 2)
        for p in self.reactor.processes:
            self.assertEqual(p.executable, sys.executable)
            self.assertEqual(p.args, [sys.executable, "-m", "hcm_twisted.agent.worker"])
            self.assertEqual(p.child_fds, {0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})
            self.assertEqual(p.env, {"PYTHONPATH": "/x"})

    def test_environment(self) -> None:
        """The default worker environment makes this package importable and holds no key."""
        env = supervisor.worker_environment("json")
        root = str(Path(supervisor.__file__).resolve().parents[2])
        self.assertIn(root, env["PYTHONPATH"].split(":"))
        self.assertEqual(env["HCM_LOG_FORMAT"], "json")
        self.assertNotIn(KEY, json.dumps(env))

    def test_set_hybrid_connections(self) -> None:
        """Each worker gets the listen URL, endpoint, a valid token and the CA paths; never the key."""
        self.start()
        cs = connstr.parse(cs_text())
        for p in self.reactor.processes:
            (items,) = p.worker.sets
            (item,) = items
            self.assertEqual(item["name"], "hc1")
            self.assertEqual(item["url"], urls.listen_url(cs))
            self.assertEqual(item["endpoint"], "127.0.0.1:7001")
            self.assertEqual(item["ca_certificates"], [])
            self.assertEqual(item["ping_interval"], 30.0)
            self.assertIsNone(item["proxy"])  # the environment decides
            self.assertIsNone(item["no_proxy"])
            rule = sas.Rule("defaultListener", KEY, "", frozenset({"Listen"}))
            token = sas.verify(item["token"], [rule], ["localhost"], "hc1", "Listen",
                               now=self.reactor.seconds())
            self.assertEqual(token.expiry, int(self.reactor.seconds() + 1000))
            self.assertNotIn(KEY.encode(), p.to_child)
            self.assertNotIn(KEY, " ".join(p.args))

    def test_large_set_in_parts(self) -> None:
        """A set too big for one AMP value goes in parts; the worker gets all of it."""
        hcs = tuple((f"hc-{i:03d}-{'x' * 40}", f"127.0.0.1:{7000 + i}") for i in range(300))
        self.config = write_config(self.path, workers=1, hcs=hcs)
        self.sup = Supervisor(self.config, self.reactor, fetch=self.fetch, env={})
        self.start()
        (proc,) = self.reactor.processes
        (items,) = proc.worker.sets
        self.assertEqual([i["name"] for i in items], [name for name, _ in hcs])
        self.assertGreater(proc.to_child.count(b"StageHybridConnections"), 1)

    def test_chunk_items(self) -> None:
        self.assertEqual(supervisor.chunk_items([]), [[]])
        items = [{"n": "x" * 100} for _ in range(10)]
        chunks = supervisor.chunk_items(items, limit=350)
        self.assertEqual([len(c) for c in chunks], [3, 3, 3, 1])
        self.assertEqual(sum(chunks, []), items)

    def test_crash_restart_backoff(self) -> None:
        """A crashed worker is restarted after 1 s, then 2, 4 ... 30 s while it keeps crashing."""
        self.start()
        victim = self.reactor.processes[0]
        other = self.reactor.processes[1]
        victim.exit(signal=9)
        self.assertEqual(len(self.reactor.live()), 1)
        self.assertEqual(self.status()[0]["workers"][0]["state"], supervisor.BACKOFF)
        delays = []
        for _ in range(7):
            before = len(self.reactor.processes)
            waited = 0.0
            while len(self.reactor.processes) == before:
                self.reactor.advance(0.5)
                waited += 0.5
                self.assertLess(waited, 100)
            delays.append(waited)
            newest = self.reactor.processes[-1]
            self.assertEqual(len(newest.worker.sets), 1)  # the new one is configured at once
            newest.exit(code=1)  # crashes again right away
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0])
        slot = self.sup.slots[0]
        self.assertEqual(slot.state, supervisor.CRASH_LOOP)
        self.assertEqual(self.status()[0]["workers"][0]["state"], supervisor.CRASH_LOOP)
        self.assertEqual(self.status()[0]["workers"][0]["last_exit"], "exit status 1")
        self.assertEqual(self.status()[0]["workers"][0]["quick_exits"], 8)
        self.assertIsNotNone(other.pid)  # the other worker is untouched

    def proc_of(self, index: int) -> FakeProcess:
        proto = self.sup.slots[index].process
        assert proto is not None
        (proc,) = [p for p in self.reactor.processes if p.pid == proto.pid]
        return proc

    def test_stable_run_resets_backoff(self) -> None:
        """A worker that ran a while before crashing is restarted after 1 s again."""
        self.start()
        slot = self.sup.slots[0]
        for _ in range(3):
            self.reactor.advance(supervisor.STABLE_AFTER)
            self.proc_of(0).exit(code=1)
            self.assertEqual(slot.failures, 1)
            self.reactor.advance(1)
            self.assertEqual(slot.state, supervisor.RUNNING)
        self.proc_of(0).exit(code=1)  # a quick crash doubles the delay
        self.assertEqual(slot.failures, 2)
        self.reactor.advance(1)
        self.assertEqual(slot.state, supervisor.BACKOFF)
        self.reactor.advance(1)
        self.assertEqual(slot.state, supervisor.RUNNING)
        self.assertEqual(slot.restarts, 4)

    def test_stop_drains_then_terminates(self) -> None:
        """stopService sends Drain(drain-timeout), then closes the pipe and sends SIGTERM."""
        self.start()
        answers: list[Deferred[dict[str, Any]]] = []
        for p in self.reactor.processes:
            p.worker.drain_answer = Deferred()
            answers.append(p.worker.drain_answer)
        d = self.sup.stopService()
        self.pump()
        for p in self.reactor.processes:
            self.assertEqual(p.worker.drains, [7.0])
            self.assertEqual(p.signals, [])
        answers[0].callback({})
        self.pump()
        first, second = self.reactor.processes
        self.assertEqual(first.closed, {3})
        self.assertEqual(first.signals, ["TERM"])
        self.assertEqual(second.signals, [])
        self.assertNoResult(d)
        answers[1].callback({})
        self.pump()
        self.reactor.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(self.reactor.live(), [])
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.processes), 2)  # nothing restarted

    def test_stop_kills_stragglers(self) -> None:
        """A worker that neither answers Drain nor exits on SIGTERM gets SIGKILL."""
        self.start()
        for p in self.reactor.processes:
            p.worker.drain_answer = Deferred()
            p.exit_on_term = False
        d = self.sup.stopService()
        self.reactor.advance(7 + supervisor.DRAIN_SLACK)
        for p in self.reactor.processes:
            self.assertEqual(p.signals, ["TERM"])
        self.reactor.advance(supervisor.TERM_GRACE)
        for p in self.reactor.processes:
            self.assertEqual(p.signals, ["TERM", "KILL"])
        self.reactor.advance(1)
        self.successResultOf(d)

    def test_stop_cancels_pending_restart(self) -> None:
        self.start()
        self.reactor.processes[0].exit(code=1)
        d = self.sup.stopService()
        self.pump()
        self.reactor.advance(1)
        self.successResultOf(d)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_token_renewal(self) -> None:
        """At 80 % of the lifetime every worker gets a fresh token that outlives the old one."""
        self.start()
        first = self.reactor.processes[0].worker.sets[0][0]["token"]
        self.reactor.advance(799)
        for p in self.reactor.processes:
            self.assertEqual(p.worker.tokens, [])
        self.reactor.advance(1)
        for p in self.reactor.processes:
            (name, token), = p.worker.tokens
            self.assertEqual(name, "hc1")
            self.assertEqual(sas.expiry_of(token), sas.expiry_of(first) + 800)
            self.assertNotIn(KEY.encode(), p.to_child)
        self.reactor.advance(800)
        for p in self.reactor.processes:
            self.assertEqual(len(p.worker.tokens), 2)

    def test_token_push_failure_resends_set(self) -> None:
        """A worker that fails UpdateToken gets the whole set again, with the fresh token."""
        self.start()
        proc = self.reactor.processes[0]
        proc.worker.fail_tokens = True
        self.reactor.advance(800)
        self.pump()
        fresh = self.sup.tokens.token("hc1")
        self.assertEqual(len(proc.worker.sets), 2)
        self.assertEqual(proc.worker.sets[-1][0]["token"], fresh)
        self.assertEqual(self.reactor.processes[1].worker.tokens, [("hc1", fresh)])
        self.flushLoggedErrors(RuntimeError)

    def test_status(self) -> None:
        """connected = any worker connected; worker counters pass through; tokens never do."""
        self.start()
        first, second = self.reactor.processes
        first.worker.hc_state = "backing-off"
        second.worker.open = 2
        (item,) = self.status()
        self.assertEqual(item["name"], "hc1")
        self.assertTrue(item["connected"])
        self.assertEqual(item["endpoint"], "127.0.0.1:7001")
        self.assertEqual([w["pid"] for w in item["workers"]], [first.pid, second.pid])
        self.assertEqual([w["state"] for w in item["workers"]], ["backing-off", "connected"])
        self.assertEqual([w["open"] for w in item["workers"]], [0, 2])
        self.assertEqual([w["accepted"] for w in item["workers"]], [3, 3])
        self.assertEqual(item["workers"][0]["token_expiry"], 5)
        text = json.dumps(item)
        self.assertNotIn("SECRET", text)
        self.assertNotIn(KEY, text)
        self.assertIn("SharedAccessKey=***", item["connection_string"])
        second.worker.hc_state = "connecting"
        self.assertFalse(self.status()[0]["connected"])

    def test_reload(self) -> None:
        """Reload adds and removes HCs; an unchanged HC keeps its token."""
        self.start()
        old_token = self.reactor.processes[0].worker.sets[0][0]["token"]
        write_config(self.path, hcs=(("hc1", "127.0.0.1:7001"), ("hc2", "127.0.0.1:7002")))
        self.sup.reload()
        self.pump()
        for p in self.reactor.processes:
            items = {i["name"]: i for i in p.worker.sets[-1]}
            self.assertEqual(sorted(items), ["hc1", "hc2"])
            self.assertEqual(items["hc1"]["token"], old_token)
            self.assertEqual(items["hc2"]["endpoint"], "127.0.0.1:7002")
        write_config(self.path, hcs=(("hc2", "127.0.0.1:7002"),))
        self.sup.reload()
        self.pump()
        for p in self.reactor.processes:
            self.assertEqual([i["name"] for i in p.worker.sets[-1]], ["hc2"])
        self.assertEqual([s["name"] for s in self.status()], ["hc2"])

    def test_reload_bad_config(self) -> None:
        """A bad file is refused and the running config stays."""
        self.start()
        self.path.write_text("[agent]\nworkers = 'many'\n")
        self.assertRaises(MalformedInput, self.sup.reload)
        self.assertEqual(self.sup.config, self.config)
        for p in self.reactor.processes:
            self.assertEqual(len(p.worker.sets), 1)

    def test_reload_resizes(self) -> None:
        """More workers in the config spawn more; fewer drain and stop the extra ones."""
        self.start()
        write_config(self.path, workers=3)
        self.sup.reload()
        self.pump()
        self.assertEqual(len(self.reactor.live()), 3)
        self.assertEqual(len(self.reactor.processes[2].worker.sets), 1)
        write_config(self.path, workers=1)
        self.sup.reload()
        self.pump()
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.live()), 1)
        self.assertEqual(len(self.sup.slots), 1)
        self.assertEqual(len(self.status()[0]["workers"]), 1)

    def test_metadata_endpoint(self) -> None:
        """An HC without endpoint is reported, not started, until its metadata names one."""
        self.config = write_config(self.path, hcs=(("hc1", None),))
        self.sup = Supervisor(self.config, self.reactor, fetch=self.fetch, env={})
        self.start()
        self.assertEqual([cs.entity_path for cs in self.fetched], ["hc1"])
        (item,) = self.status()
        self.assertEqual(item["state"], "no endpoint")
        self.assertFalse(item["connected"])
        self.assertEqual(item["workers"], [])
        for p in self.reactor.processes:
            self.assertEqual(p.worker.sets, [[]])
        pending = self.sup.resolver._entries["hc1"].pending
        assert pending is not None
        pending.callback("db.internal:1433")
        self.pump()
        for p in self.reactor.processes:
            self.assertEqual(p.worker.sets[-1][0]["endpoint"], "db.internal:1433")
        self.assertEqual(self.status()[0]["endpoint"], "db.internal:1433")
        self.assertEqual(self.status()[0]["endpoint_source"], "metadata")

    def test_metadata_error_reported(self) -> None:
        self.fetch_result["hc1"] = Deferred()
        self.config = write_config(self.path, hcs=(("hc1", None),))
        self.sup = Supervisor(self.config, self.reactor, fetch=self.fetch, env={})
        self.start()
        self.fetch_result["hc1"].errback(metadata.MetadataError("no endpoint in the HC's user metadata"))
        (item,) = self.status()
        self.assertEqual(item["state"], "no endpoint")
        self.assertIn("no endpoint in the HC's user metadata", item["error"])
        # Refreshed periodically.
        self.fetch_result["hc1"] = succeed("h:1")
        self.reactor.advance(metadata.REFRESH_INTERVAL)
        self.pump()
        self.assertEqual(self.status()[0]["endpoint"], "h:1")

    def test_unresponsive_worker(self) -> None:
        """A worker that does not answer GetStatus in time is shown as unresponsive."""
        self.start()
        proc = self.reactor.processes[0]
        proc.closed_by_child.add(4)  # its answers no longer arrive
        d = self.sup.status()
        self.pump()
        self.assertNoResult(d)
        self.reactor.advance(supervisor.STATUS_TIMEOUT)
        (item,) = self.successResultOf(d)
        self.assertEqual(item["workers"][0]["state"], "unresponsive")
        self.assertTrue(item["connected"])  # the other worker still counts

    def test_worker_output_relayed(self) -> None:
        """A worker's stderr lines reach the master's log, tagged with its pid."""
        from twisted.logger import LogLevel, capturedLogs  # type: ignore[attr-defined]

        self.start()
        proc = self.reactor.processes[0]
        with capturedLogs() as events:
            proc.proto.childDataReceived(2, b"hello ")
            proc.proto.childDataReceived(2, b"world\nsecond")
            proc.exit()
        lines = [e["line"] for e in events if "line" in e]
        self.assertEqual(lines, ["hello world", "second"])
        self.assertTrue(all(e["log_level"] == LogLevel.info for e in events if "line" in e))

    def test_worker_line_levels(self) -> None:
        """Text and JSON lines from a worker keep their level, namespace and message."""
        from twisted.logger import LogLevel

        parse = supervisor._parse_worker_line
        self.assertEqual(
            parse("2026-11-29T05:10:32+0000 [hcm_twisted.agent.listener#warn] channel failed"),
            (LogLevel.warn, "hcm_twisted.agent.listener", "channel failed"),
        )
        self.assertEqual(
            parse('{"time":"x","level":"error","namespace":"w","message":"boom"}'),
            (LogLevel.error, "w", "boom"),
        )
        self.assertEqual(parse("Traceback (most recent call last):"),
                         (LogLevel.info, "-", "Traceback (most recent call last):"))
        self.assertEqual(parse("{not json"), (LogLevel.info, "-", "{not json"))

    def test_nofile_limit(self) -> None:
        soft, hard = supervisor.raise_nofile_limit()
        import resource

        if hard != resource.RLIM_INFINITY:
            self.assertEqual(soft, hard)

    def test_restart_delay(self) -> None:
        self.assertEqual([supervisor.restart_delay(n) for n in range(1, 8)],
                         [1, 2, 4, 8, 16, 30, 30])


class TokenManagerTests(SynchronousTestCase):
    def test_renew_at_80_percent(self) -> None:
        clock = MemoryReactorClock()
        clock.advance(1_000_000)
        pushed: list[tuple[str, str]] = []
        tm = tokens.TokenManager(clock, lambda n, t: pushed.append((n, t)), lifetime=100)
        cs = connstr.parse(cs_text())
        first = tm.set("hc1", cs)
        self.assertEqual(tm.set("hc1", cs), first)  # unchanged: same token
        self.assertEqual(tm.expiry("hc1"), 1_000_100)
        self.assertEqual(sas.parse(first).audience, "http://localhost/hc1/")
        clock.advance(79)
        self.assertEqual(pushed, [])
        clock.advance(1)
        self.assertEqual([n for n, _ in pushed], ["hc1"])
        self.assertEqual(sas.expiry_of(pushed[0][1]), 1_000_180)
        self.assertEqual(tm.token("hc1"), pushed[0][1])
        tm.retain([])
        clock.advance(1000)
        self.assertEqual(len(pushed), 1)
        self.assertIsNone(tm.token("hc1"))

    def test_changed_key_mints_new_token(self) -> None:
        clock = MemoryReactorClock()
        tm = tokens.TokenManager(clock, lambda n, t: None, lifetime=100)
        a = tm.set("hc1", connstr.parse(cs_text()))
        b = tm.set("hc1", connstr.parse(cs_text(key="b3RoZXI=")))
        self.assertNotEqual(a, b)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        tm.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_sas_passed_as_is(self) -> None:
        """A connection string with a SharedAccessSignature: that token, never renewed."""
        clock = MemoryReactorClock()
        clock.advance(1000)
        token = sas.mint("http://localhost/hc1/", "r", KEY, lifetime=5000, now=1000)
        cs = connstr.parse(f"Endpoint=sb://localhost/;EntityPath=hc1;SharedAccessSignature={token}")
        pushed: list[Any] = []
        tm = tokens.TokenManager(clock, lambda n, t: pushed.append(t), lifetime=100)
        self.assertEqual(tm.set("hc1", cs), token)
        self.assertEqual(tm.expiry("hc1"), 6000)
        clock.advance(10000)
        self.assertEqual(pushed, [])
        self.assertEqual(tm.token("hc1"), token)


ATOM = b"""<entry xmlns="http://www.w3.org/2005/Atom"><title type="text">hc1</title>
 <content type="application/xml">
  <HybridConnectionDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"
      xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
   <CreatedAt>2024-01-01T00:00:00Z</CreatedAt><UpdatedAt>2024-01-01T00:00:00Z</UpdatedAt>
   <RequiresClientAuthorization>true</RequiresClientAuthorization>
   <UserMetadata>%s</UserMetadata>
   <ListenerCount>1</ListenerCount>
  </HybridConnectionDescription></content></entry>"""


class _Response:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.phrase = b"OK" if code == 200 else b"Unauthorized"
        self.body = body

    def deliverBody(self, protocol: Any) -> None:  # noqa: N802
        protocol.makeConnection(None)
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class _Agent:
    def __init__(self, response: _Response) -> None:
        self.response = response
        self.requests: list[tuple[bytes, bytes, Headers]] = []

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> Deferred[Any]:  # noqa: N803
        assert headers is not None
        self.requests.append((method, uri, headers))
        return succeed(self.response)


class MetadataTests(SynchronousTestCase):
    def test_parse(self) -> None:
        body = ATOM % b'[{"key":"other","value":"x"},{"key":"Endpoint","value":"db.internal:1433"},{"key":"endpoint","value":"b:2"}]'
        self.assertEqual(metadata.parse_runtime_info(body), "db.internal:1433")
        self.assertEqual(metadata.parse_runtime_info(ATOM % b""), None)
        self.assertEqual(metadata.parse_runtime_info(ATOM % b"[]"), None)
        self.assertEqual(metadata.parse_runtime_info(ATOM % b'[{"key":"endpoint","value":"[::1]:80"}]'), "[::1]:80")
        for bad in [b"not xml", b'<feed xmlns="http://www.w3.org/2005/Atom"/>', b"<other/>",
                    b'<entry xmlns="http://www.w3.org/2005/Atom"/>', ATOM % b"{nope",
                    ATOM % b'{"key":"endpoint"}', ATOM % b'[{"key":"endpoint","value":"nohost"}]']:
            self.assertRaises(metadata.MetadataError, metadata.parse_runtime_info, bad)

    def test_fetch(self) -> None:
        """The runtime GET of spec section 9: URL, Authorization (10-min token), X-PROCESS-AT."""
        agent = _Agent(_Response(200, ATOM % b'[{"key":"endpoint","value":"db:1433"}]'))
        cs = connstr.parse(cs_text())
        d = Deferred.fromCoroutine(metadata.fetch_endpoint(agent, cs, now=5000))  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(d), "db:1433")
        ((method, uri, headers),) = agent.requests
        self.assertEqual(method, b"GET")
        self.assertEqual(uri, b"https://localhost:9443/hc1?api-version=2016-07")
        (auth,) = headers.getRawHeaders(b"authorization") or []
        rule = sas.Rule("defaultListener", KEY, "", frozenset({"Listen"}))
        token = sas.verify(auth.decode(), [rule], ["localhost"], "hc1", "Listen", now=5000)
        self.assertEqual(token.expiry, 5600)
        self.assertEqual(headers.getRawHeaders(b"x-process-at"), [b"ServiceBus"])

    def test_fetch_errors(self) -> None:
        cs = connstr.parse(cs_text())
        for response, text in [(_Response(404, b""), "does not exist"),
                               (_Response(401, b"<Error/>"), "HTTP 401"),
                               (_Response(200, ATOM % b""), "no endpoint")]:
            d = Deferred.fromCoroutine(metadata.fetch_endpoint(_Agent(response), cs, now=0))  # type: ignore[arg-type]
            f = self.failureResultOf(d, metadata.MetadataError)
            self.assertIn(text, str(f.value))

    def test_body_limit(self) -> None:
        agent = _Agent(_Response(200, b"x" * (metadata.MAX_BODY + 1)))
        d = Deferred.fromCoroutine(metadata.fetch_endpoint(agent, connstr.parse(cs_text()), now=0))  # type: ignore[arg-type]
        self.assertIn("too large", str(self.failureResultOf(d, metadata.MetadataError).value))

    def test_make_agent(self) -> None:
        """The runtime GET goes through the proxy layer with verifying TLS."""
        from twisted.web.client import URI, Agent

        agent = metadata.make_agent(MemoryReactorClock(), (), "http://proxy.example:3128", "b.example")
        self.assertIsInstance(agent, Agent)
        factory = agent._endpointFactory  # type: ignore[attr-defined]
        endpoint = factory.endpointForURI(URI.fromBytes(b"https://a.example:9443/hc1"))
        self.assertEqual(type(endpoint).__name__, "_WrapperEndpoint")  # wrapClientTLS
        self.assertEqual(type(endpoint._wrappedEndpoint).__name__, "HTTPConnectProxyEndpoint")
        direct = factory.endpointForURI(URI.fromBytes(b"https://b.example/hc1"))
        self.assertEqual(type(direct._wrappedEndpoint).__name__, "HostnameEndpoint")

    def test_policy_verifies(self) -> None:
        """The TLS policy builds verifying client options for the host."""
        policy = metadata.VerifyingPolicy()
        creator = policy.creatorForNetloc(b"localhost", 443)
        self.assertEqual(creator._hostname, "localhost")  # type: ignore[attr-defined]


class TapTests(SynchronousTestCase):
    def test_options(self) -> None:
        """--config is read and validated up front; a bad key is a usage error naming it."""
        path = Path(self.mktemp())
        write_config(path)
        options = tap.Options()
        options.parseOptions(["--config", str(path)])
        self.assertEqual(options["loaded"].workers, 2)
        path.write_text("[agent]\nbogus = 1\n")
        from twisted.python import usage

        with self.assertRaises(usage.UsageError) as cm:
            tap.Options().parseOptions(["--config", str(path)])
        self.assertIn("'bogus'", str(cm.exception))
        self.assertIn(str(path), str(cm.exception))

    def test_service_ready(self) -> None:
        """The agent service listens on the admin endpoint and logs 'hcm agent ready'."""
        from twisted.logger import capturedLogs  # type: ignore[attr-defined]

        path = Path(self.mktemp())
        write_config(path, extra='admin = "tcp:0:interface=127.0.0.1"')
        options = tap.Options()
        options.parseOptions(["--config", str(path)])
        reactor = FakeProcessReactor()
        with capturedLogs() as events:
            svc = tap.makeService(options, reactor=reactor)
            svc.startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        self.assertEqual(len(reactor.processes), 2)
        self.assertTrue(any("hcm agent ready" in e.get("log_format", "") for e in events))
        d = svc.stopService()
        reactor.advance(0)
        reactor.advance(1)
        self.successResultOf(d)

    def test_admin_listen_fails(self) -> None:
        """If the admin endpoint is taken, no worker starts and the program exits naming it."""
        path = Path(self.mktemp())
        write_config(path, extra='admin = "tcp:7777:interface=127.0.0.1"')
        options = tap.Options()
        options.parseOptions(["--config", str(path)])

        class Busy(FakeProcessReactor):
            def listenTCP(self, port: int, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
                raise error.CannotListenError("127.0.0.1", port, OSError(98, "Address in use"))

        reactor = Busy()
        svc = tap.makeService(options, reactor=reactor)
        with self.assertRaises(SystemExit) as cm:
            svc.startService()
        self.assertIn("tcp:7777", str(cm.exception.code))
        self.assertEqual(reactor.processes, [])
