# -*- test-case-name: tests.e2e.test_quickstart -*-
"""``hcm quickstart``: a whole hybrid connection on this machine, in one command.

It writes configs into a directory (a new temporary one unless ``--directory``),
then starts, each as its own process with its log in that directory:

1. ``hcm-relay`` (the local relay, TLS with a private CA it creates),
2. a small echo server (in this process) as the endpoint,
3. the ``hcm`` agent (master + workers, admin API on a unix socket there),
4. ``hcm-sender`` (the app side, on a local port),

prints what to type to see data cross, and runs until Ctrl-C or SIGTERM,
then stops everything (sender, agent, relay) and exits 0.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import tomli_w

from hcm_twisted.core import connstr

HC_NAME = "quickstart"


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


class ChildProcess:
    """A child program (own session, so Ctrl-C reaches only us); output in ``NAME.log``.

    ``env`` (default: this process's environment) gets this checkout on ``PYTHONPATH``.
    The end-to-end test harness builds on this class too.
    """

    def __init__(
        self, name: str, args: list[str], directory: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = directory / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self._offset = self._log.tell()  # an earlier run's lines are not ours
        child_env = dict(os.environ if env is None else env)
        child_env["PYTHONUNBUFFERED"] = "1"
        root = str(Path(__file__).resolve().parents[1])
        path = child_env.get("PYTHONPATH", "")
        if root not in path.split(os.pathsep):
            child_env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
        self.popen = subprocess.Popen(
            args, cwd=directory, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=child_env, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            return f.read().decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float) -> None:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if rx.search(self.output()):
                return
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.popen.returncode}; "
                    f"last lines of {self.log_path}:\n{_tail(self.output())}"
                )
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} did not log {pattern!r} within {timeout:.0f} s; "
            f"last lines of {self.log_path}:\n{_tail(self.output())}"
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to its process group, SIGKILL after ``timeout``."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        # Workers or other children left in the group (the leader is gone).
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return self.popen.returncode


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def admin_socket_path(directory: Path) -> Path:
    """``DIR/admin.sock``, or a short temporary directory's when that path is too long."""
    path = directory / "admin.sock"
    if len(str(path).encode()) <= 100:  # sun_path holds 108 bytes on Linux, 104 on BSDs
        return path
    return Path(tempfile.mkdtemp(prefix="hcmq-")) / "admin.sock"


def write_configs(directory: Path, relay_port: int, sender_port: int, echo_port: int,
                  workers: int, admin_socket: Path | None = None) -> dict[str, Path]:
    """The relay, agent and sender configs (keys fresh and random, files 0600)."""
    if admin_socket is None:
        admin_socket = directory / "admin.sock"
    listen_key, send_key = _key(), _key()
    relay = {
        "namespace": "localhost",
        "endpoint": f"ssl:{relay_port}:interface=127.0.0.1",
        "state": str(directory / "relay-state.sqlite"),
        "authorization-rule": [{
            "name": "RootManageSharedAccessKey", "rights": ["Manage", "Listen", "Send"],
            "primary-key": _key(),
        }],
        "hybrid-connection": [{
            "name": HC_NAME,
            "requires-client-authorization": True,
            "user-metadata": f'[{{"key":"endpoint","value":"127.0.0.1:{echo_port}"}}]',
            "authorization-rule": [
                {"name": "defaultListener", "rights": ["Listen"], "primary-key": listen_key},
                {"name": "defaultSender", "rights": ["Send"], "primary-key": send_key},
            ],
        }],
    }
    ca = str(directory / "relay-ca.pem")
    agent = {
        "agent": {
            "workers": workers,
            "admin": f"unix:{admin_socket}:mode=600",
            "ca-certificates": ca,
        },
        "hybrid-connection": [{
            "name": HC_NAME,
            "connection-string": connstr.build(
                "localhost", HC_NAME, "defaultListener", listen_key, relay_port).render(),
            "endpoint": f"127.0.0.1:{echo_port}",
        }],
    }
    sender = {
        "ca-certificates": ca,
        "hybrid-connection": [{
            "name": HC_NAME,
            "connection-string": connstr.build(
                "localhost", HC_NAME, "defaultSender", send_key, relay_port).render(),
            "listen": f"tcp:{sender_port}:interface=127.0.0.1",
        }],
    }
    paths = {
        "relay": directory / "hcm-relay.toml",
        "agent": directory / "hcm.toml",
        "sender": directory / "hcm-sender.toml",
    }
    for name, doc in (("relay", relay), ("agent", agent), ("sender", sender)):
        _write_private(paths[name], tomli_w.dumps(doc))
    return paths


def _start_echo(port: int) -> Any:
    from twisted.internet import reactor
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    @implementer(IHalfCloseableProtocol)
    class Echo(Protocol):
        def connectionMade(self) -> None:
            try:
                self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
            except Exception:  # noqa: S110
                pass

        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[union-attr]

        def readConnectionLost(self) -> None:
            self.transport.loseConnection()  # type: ignore[union-attr]

        def writeConnectionLost(self) -> None:
            pass

    return reactor.listenTCP(  # type: ignore[attr-defined]
        port, Factory.forProtocol(Echo), interface="127.0.0.1"  # type: ignore[arg-type]
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hcm quickstart",
        description="Run a local relay, an agent, a sender and an echo endpoint, "
        "and show how to send data through a hybrid connection.",
    )
    p.add_argument("--directory", "-d", metavar="DIR",
                   help="where configs and logs go (default: a new temporary directory)")
    p.add_argument("--port", type=int, default=0, metavar="PORT",
                   help="local port apps connect to (default: a free one)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="agent worker processes (default: 2, or 1 on one core)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for each program to be ready")
    return p


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.directory:
        directory = Path(args.directory).resolve()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    else:
        directory = Path(tempfile.mkdtemp(prefix="hcm-quickstart-"))
    relay_port, echo_port = _free_port(), _free_port()
    sender_port = args.port or _free_port()
    admin_socket = admin_socket_path(directory)
    paths = write_configs(directory, relay_port, sender_port, echo_port, max(1, args.workers),
                          admin_socket)
    python = sys.executable
    children: list[ChildProcess] = []

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    def stop_all() -> None:
        # The app side first, the relay last.
        for child in reversed(children):
            child.stop()
        children.clear()
        if admin_socket.parent != directory:
            try:
                admin_socket.unlink(missing_ok=True)
                admin_socket.parent.rmdir()
            except OSError:
                pass

    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    echo_listener = None
    try:
        say(f"hcm quickstart: configs and logs in {directory}")
        relay = ChildProcess("hcm-relay", [python, "-m", "twisted", "hcm-relay", "--config",
                                     str(paths["relay"])], directory)
        children.append(relay)
        relay.wait_for(r"hcm-relay listening on", args.timeout)
        say(f"  relay   listening on wss://localhost:{relay_port} (pid {relay.pid})")
        echo_listener = _start_echo(echo_port)
        say(f"  echo    endpoint on 127.0.0.1:{echo_port} (in this process)")
        agent = ChildProcess("hcm-agent", [python, "-m", "twisted", "hcm", "--config",
                                     str(paths["agent"])], directory)
        children.append(agent)
        agent.wait_for(r"hcm agent ready", args.timeout)
        agent.wait_for(r"control channel connected", args.timeout)
        say(f"  agent   {args.workers} worker(s) listening on '{HC_NAME}' (pid {agent.pid})")
        sender = ChildProcess("hcm-sender", [python, "-m", "twisted", "hcm-sender", "--config",
                                       str(paths["sender"])], directory)
        children.append(sender)
        sender.wait_for(r"hcm-sender listening on", args.timeout)
        say(f"  sender  listening on 127.0.0.1:{sender_port} (pid {sender.pid})")
    except (RuntimeError, OSError) as e:
        say(f"hcm quickstart: {e}")
        if echo_listener is not None:
            echo_listener.stopListening()
        stop_all()
        return 1

    say()
    say(f"app -> 127.0.0.1:{sender_port} -> hcm-sender -> hcm-relay -> hcm agent -> "
        f"echo 127.0.0.1:{echo_port}")
    say("Send something and it comes back through the hybrid connection:")
    say(f"  printf 'hello\\n' | nc -N 127.0.0.1 {sender_port}      "
        "(other netcats: nc -q 1 ...)")
    say(f"  {Path(python).name} -c \"import socket; s = socket.create_connection(('127.0.0.1', "
        f"{sender_port})); s.sendall(b'hello\\n'); s.shutdown(socket.SHUT_WR); "
        "print(s.makefile('rb').read())\"")
    say(f"Status:  hcm --config {paths['agent']} list")
    say("Press Ctrl-C to stop everything.")

    def watch() -> None:
        for child in children:
            if not child.alive():
                say(f"hcm quickstart: {child.name} exited ({child.popen.returncode}); "
                    f"see {child.log_path}. Stopping.")
                reactor.stop()
                return
        reactor.callLater(1.0, watch)

    def shutdown() -> None:
        say("hcm quickstart: stopping ...")
        echo_listener.stopListening()
        stop_all()
        say("hcm quickstart: stopped.")

    def self_check() -> None:
        from twisted.internet.threads import deferToThread

        def done(result: tuple[bytes, float]) -> None:
            data, ms = result
            if data == b"hello\n":
                say(f"(self-check: 'hello' went through and came back in {ms:.0f} ms)")
            else:
                say(f"hcm quickstart: self-check got {data!r} back; see the logs in {directory}")

        def failed(f: Any) -> None:
            say(f"hcm quickstart: self-check failed: {f.getErrorMessage()}; "
                f"see the logs in {directory}")

        deferToThread(_echo_once, sender_port).addCallbacks(done, failed)

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    reactor.callLater(1.0, watch)
    reactor.callWhenRunning(self_check)
    reactor.run()
    return 0


def _echo_once(port: int, timeout: float = 20.0) -> tuple[bytes, float]:
    """Send ``hello`` through the sender, half-close, read the answer (blocking)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"hello\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks), (time.monotonic() - started) * 1000


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
