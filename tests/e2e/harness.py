"""Real processes on loopback for end-to-end tests.

Every program is started as ``python -m twisted PLUGIN --config PATH`` (``twist``) with
``PYTHONPATH`` pointing at this checkout, its output captured in a log file in the test's
temporary directory.  Helpers here block (they run before or after the reactor work of a test);
every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hcm_twisted.quickstart import ChildProcess

ROOT = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("HCM_TEST_PYTHON", sys.executable)

# Keys used by test relays: fixed, so tests can scan logs for them.
TEST_KEYS = {
    "RootManageSharedAccessKey": "cm9vdC1rZXktZm9yLXRlc3RzLW9ubHktMDAwMDAwMDA=",
    "defaultListener": "bGlzdGVuLWtleS1mb3ItdGVzdHMtb25seS0xMTExMTE=",
    "defaultSender": "c2VuZC1rZXktZm9yLXRlc3RzLW9ubHktMjIyMjIyMjI=",
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class Proc(ChildProcess):
    """A child process with its output in ``log_path`` (the quickstart's process handling,
    with what tests want on top: the whole log, regex waits that time out, signals)."""

    def __init__(self, args: Sequence[str], cwd: Path, name: str, env: dict[str, str] | None = None):
        super().__init__(name, list(args), cwd, env=child_env(env))

    def output(self) -> str:
        """Everything in the log file, earlier runs under the same name included."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait until the log matches ``pattern`` (a regex)."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            m = rx.search(self.output())
            if m:
                return m
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.output()[-4000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: no {pattern!r} after {timeout} s:\n{self.output()[-4000:]}")

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL this process only (not its group)."""
        self.signal(signal.SIGKILL)
        self.popen.wait(5)


def twist(plugin: str, config: Path, cwd: Path, name: str | None = None,
          args: Sequence[str] = (), env: dict[str, str] | None = None) -> Proc:
    """Start ``twist PLUGIN --config CONFIG``."""
    return Proc([PYTHON, "-m", "twisted", plugin, "--config", str(config), *args],
                cwd=cwd, name=name or plugin, env=env)


def hcm_cli(args: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the ``hcm`` command (as ``python -m hcm_twisted.cli``)."""
    return subprocess.run([PYTHON, "-m", "hcm_twisted.cli", *args], cwd=cwd, env=child_env(env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, step: float = 0.1) -> Any:
    """Poll ``check`` until it returns something true; TimeoutError names ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(step)
    raise TimeoutError(f"{what}: not after {timeout} s (last: {last!r})")


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


class EchoServer(socketserver.ThreadingTCPServer):
    """A threaded TCP echo endpoint on loopback: echoes until EOF, then half-closes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close(self) -> None:
        self.shutdown()
        self.server_close()
