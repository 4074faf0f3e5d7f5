"""A short soak (CI version of ``bench/soak.py``): file descriptors return to their baseline
and memory stays flat while new connections keep coming.

``HCM_SOAK_SECONDS`` (default 60) and ``HCM_SOAK_RATE`` (new connections per second, default
30) make it longer or heavier locally; ``bench/soak.py`` is the 30-minute version.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from bench.soak import soak, verdict
from tests.e2e import harness
from tests.e2e.stack import secret_findings

SECONDS = float(os.environ.get("HCM_SOAK_SECONDS", "60"))
RATE = float(os.environ.get("HCM_SOAK_RATE", "30"))


class Soak(TestCase):
    timeout = SECONDS + 120

    def test_soak(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._soak())

    async def _soak(self) -> None:
        directory = Path(self.mktemp()).resolve()
        # max_open bounds a backlog on a busy machine (shared CI cores): memory then
        # measures the stack, not how many connections piled up.
        result: dict[str, Any] = await soak(directory, rate=RATE, duration=SECONDS, size=16384,
                                            every=max(5.0, SECONDS / 12), quiet=True,
                                            max_open=64)
        counts = result["counts"]
        base, end, series = result["baseline"], result["end"], result["series"]
        print(f"\nsoak {SECONDS:g} s at {RATE:g}/s: {counts}")
        for role in sorted(base):
            peak = max(p["procs"].get(role, {}).get("rss", 0) for p in series)
            print(f"  {role:>9}: fds {base[role]['fds']} -> {end.get(role, {}).get('fds')}, "
                  f"RSS {base[role]['rss'] >> 20} -> {end.get(role, {}).get('rss', 0) >> 20} MiB"
                  f" (peak {peak >> 20} MiB)")
        self.assertEqual(verdict(result, fd_slack=4, rss_slack=24 << 20), [])
        self.assertGreaterEqual(counts["started"], RATE * SECONDS * 0.6, "the rate was kept")
        self.assertEqual(counts["complete"], counts["started"])
        # Flat in the second half: no per-connection growth.
        mid = series[len(series) // 2]["procs"]
        for role, e in end.items():
            if role in mid and mid[role]["pid"] == e["pid"]:
                grown = e["rss"] - mid[role]["rss"]
                self.assertLess(grown, 8 << 20, f"{role} grew {grown >> 20} MiB in the 2nd half")
        logs = [(p.name, p.read_text(errors="replace")) for p in directory.rglob("*.log")]
        self.assertTrue(logs)
        self.assertEqual(secret_findings(logs, harness.TEST_KEYS.values()), [])
