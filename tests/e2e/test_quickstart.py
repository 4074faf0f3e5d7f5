"""``hcm quickstart``: start everything, push data through, SIGINT, nothing left running."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.e2e import harness


def processes_in(directory: Path) -> list[int]:
    """Pids of processes whose working directory is ``directory``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") == str(directory):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def echo_through(port: int, payload: bytes, timeout: float = 30.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


class QuickstartTests(TestCase):
    timeout = 120

    def test_start_push_sigint(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        directory = base / "qs"
        proc = harness.Proc(
            [harness.PYTHON, "-m", "hcm_twisted.quickstart", "--directory", str(directory)],
            cwd=base, name="quickstart",
        )
        self.addCleanup(proc.stop)
        m = proc.wait_log(r"nc -N 127\.0\.0\.1 (\d+)", timeout=90)
        port = int(m.group(1))
        output = proc.output()
        self.assertIn("python", output)
        self.assertIn(f"hcm --config {directory / 'hcm.toml'} list", output)
        for name in ("hcm-relay.toml", "hcm.toml", "hcm-sender.toml"):
            self.assertEqual((directory / name).stat().st_mode & 0o777, 0o600, name)
        proc.wait_log(r"self-check: 'hello' went through and came back", timeout=30)
        children = processes_in(directory)
        self.assertGreaterEqual(len(children), 5)  # relay, agent master + 2 workers, sender

        self.assertEqual(echo_through(port, b"hello\n"), b"hello\n")
        payload = os.urandom(4 << 20)
        self.assertEqual(
            hashlib.sha256(echo_through(port, payload)).hexdigest(),
            hashlib.sha256(payload).hexdigest(),
        )

        proc.signal(signal.SIGINT)
        self.assertEqual(proc.popen.wait(30), 0)
        self.assertIn("hcm quickstart: stopped.", proc.output())
        deadline = time.monotonic() + 10
        while processes_in(directory) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(processes_in(directory), [])
        for log in ("hcm-relay.log", "hcm-agent.log", "hcm-sender.log"):
            text = (directory / log).read_text()
            for key in re.findall(r'primary-key = "([^"]+)"', (directory / "hcm-relay.toml").read_text()):
                self.assertNotIn(key, text, log)
