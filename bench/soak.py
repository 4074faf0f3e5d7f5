"""Soak: N new connections per second through sender -> relay -> agent -> echo, for a while.

    PYTHONPATH=. python bench/soak.py [--rate 50] [--duration 1800] [--size 16384]
                                      [--sample 10] [--workers 2] [--json out.json]

Starts a relay, an agent (master + workers) and a sender as processes on loopback (the
``tests/e2e/stack.py`` helpers), an echo endpoint in this process, and opens ``rate`` new app
connections per second, each sending ``size`` bytes and checking every byte of the echo.
Every ``sample`` seconds it records open file descriptors and RSS of each process; at the end
it prints a table and a verdict (fd count back to baseline, RSS growth after warm-up).
Everything is bounded: the duration, the number of connections in flight (``--max-open``),
and the wait for stragglers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.stack import (  # noqa: E402 (after the path is set)
    Echo,
    PatternClient,
    Stack,
    fd_count,
    listen,
    rss,
    run_pattern,
    sleep,
)


def sample(stack: Stack) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for role, pid in stack.pids().items():
        try:
            out[role] = {"pid": pid, "fds": fd_count(pid), "rss": rss(pid)}
        except (OSError, AssertionError):
            continue
    return out


async def soak(directory: Path, rate: float = 50, duration: float = 1800, size: int = 16384,
               every: float = 10, workers: int = 2, max_open: int = 500,
               quiet: bool = False) -> dict[str, Any]:
    """Run the soak; returns the figures (see :func:`verdict`)."""
    echo = listen(Echo)
    stack = Stack(directory, {"hc1": f"127.0.0.1:{echo.getHost().port}"}, workers=workers)
    try:
        stack.start()
        port = stack.sender_ports["hc1"]
        # Warm up: a few connections so every process has loaded what it loads once.
        for _ in range(3):
            c = await run_pattern(port, size)
            if not c.complete:
                raise RuntimeError(f"warm-up transfer failed: {c.describe()}")
        await sleep(1.0)
        baseline = sample(stack)
        series: list[dict[str, Any]] = [{"t": 0.0, "open": 0, "done": 0, "procs": baseline}]
        running: set[defer.Deferred[PatternClient]] = set()
        counts = {"started": 0, "complete": 0, "failed": 0, "skipped": 0, "bytes": 0,
                  "out_of_order": 0}
        failures: list[str] = []
        started = time.monotonic()

        def finished(c: PatternClient, d: defer.Deferred[PatternClient]) -> None:
            running.discard(d)
            if c.complete:
                counts["complete"] += 1
                counts["bytes"] += c.count
            else:
                counts["failed"] += 1
                if len(failures) < 20:
                    failures.append(c.describe())
            if not c.in_order:
                counts["out_of_order"] += 1

        def tick() -> None:
            if len(running) >= max_open:
                counts["skipped"] += 1
                return
            counts["started"] += 1
            d = run_pattern(port, size, timeout=60)
            running.add(d)
            d.addCallback(finished, d)

        loop = task.LoopingCall(tick)
        loop.start(1.0 / rate, now=True)
        next_sample = started + every
        try:
            while time.monotonic() - started < duration:
                await sleep(min(1.0, max(0.05, next_sample - time.monotonic())))
                if time.monotonic() >= next_sample:
                    next_sample += every
                    point = {"t": round(time.monotonic() - started, 1), "open": len(running),
                             "done": counts["complete"], "procs": sample(stack)}
                    series.append(point)
                    if not quiet:
                        print(_line(point), flush=True)
        finally:
            loop.stop()
        # Stragglers: bounded by the per-connection timeout.
        await defer.gatherResults(list(running), consumeErrors=True)
        await sleep(2.0)  # let every process close its side
        end = sample(stack)
        series.append({"t": round(time.monotonic() - started, 1), "open": 0,
                       "done": counts["complete"], "procs": end})
        elapsed = time.monotonic() - started
        return {"rate": rate, "duration": duration, "size": size, "elapsed": round(elapsed, 1),
                "counts": counts, "failures": failures, "baseline": baseline, "end": end,
                "series": series, "achieved_rate": round(counts["started"] / elapsed, 1)}
    finally:
        stack.stop()
        await echo.stopListening()


def _line(point: dict[str, Any]) -> str:
    procs = " ".join(f"{role}={p['fds']}fd/{p['rss'] >> 20}M"
                     for role, p in sorted(point["procs"].items()))
    return f"t={point['t']:>7}s open={point['open']:>4} done={point['done']:>7} {procs}"


def verdict(result: dict[str, Any], fd_slack: int = 8,
            rss_slack: int = 24 << 20) -> list[str]:
    """Problems: fd counts not back to baseline, RSS grown beyond ``rss_slack``, lost bytes."""
    problems: list[str] = []
    counts = result["counts"]
    if counts["out_of_order"]:
        problems.append(f"{counts['out_of_order']} connections got bytes out of order")
    if counts["failed"]:
        problems.append(f"{counts['failed']} connections failed: {result['failures'][:3]}")
    base, end = result["baseline"], result["end"]
    for role, b in base.items():
        e = end.get(role)
        if e is None:
            problems.append(f"{role} (pid {b['pid']}) is gone")
            continue
        if e["pid"] != b["pid"]:
            problems.append(f"{role} restarted (pid {b['pid']} -> {e['pid']})")
        if e["fds"] > b["fds"] + fd_slack:
            problems.append(f"{role}: {e['fds']} fds at the end, {b['fds']} at the start")
        if e["rss"] - b["rss"] > rss_slack:
            problems.append(f"{role}: RSS grew {(e['rss'] - b['rss']) >> 20} MiB")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=50, help="new connections per second")
    p.add_argument("--duration", type=float, default=1800, help="seconds (default 30 min)")
    p.add_argument("--size", type=int, default=16384, help="bytes each connection sends")
    p.add_argument("--sample", type=float, default=10, help="seconds between samples")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-open", type=int, default=500)
    p.add_argument("--json", help="write all figures to this file")
    args = p.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="hcm-soak-"))
    print(f"soak: {args.rate:g} connections/s for {args.duration:g} s, logs in {directory}")
    result: dict[str, Any] = {}

    async def run() -> None:
        result.update(await soak(directory, args.rate, args.duration, args.size,
                                 args.sample, args.workers, args.max_open))

    def go(reactor: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(run())

    try:
        task.react(go)
    except SystemExit as stop:
        if stop.code:
            return int(stop.code)
    problems = verdict(result)
    print(f"\n{result['counts']}, achieved {result['achieved_rate']} connections/s")
    for role, b in sorted(result["baseline"].items()):
        e = result["end"].get(role, {})
        peak = max(p["procs"].get(role, {}).get("rss", 0) for p in result["series"])
        print(f"{role:>9}: fds {b['fds']} -> {e.get('fds')}, RSS {b['rss'] >> 20} -> "
              f"{e.get('rss', 0) >> 20} MiB (peak {peak >> 20} MiB)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print("verdict:", "flat" if not problems else "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
