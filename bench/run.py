"""hcm-twisted benchmark: our stack against raw TCP, a socat hop and ``ssh -R``.

    python bench/run.py                 # everything, ~5-9 minutes
    python bench/run.py --quick         # one repetition, fewer connections (a smoke run)
    python bench/run.py --paths hcm,ssh --profile

Starts an endpoint server, then each path in turn on loopback, and measures: one-stream
throughput both ways, 2/4/8 parallel streams, 1-byte echo RTT, connection setup (rate and
connect -> first echoed byte), CPU seconds per GB of each process (from /proc), and
concurrent connections held with RSS per connection.  Each measurement runs ``--reps``
times and the median is reported.  Writes ``bench/results/latest.json`` and
``bench/results/throughput.png`` and prints a table with the targets of issue 6.

Benchmarks are not tests and are not run in CI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

HERE = FsPath(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import load  # noqa: E402
import paths  # noqa: E402
from paths import Path  # noqa: E402

from tests.e2e import harness  # noqa: E402

MB = 1_000_000
GB = 1_000_000_000
STREAMS = (1, 2, 4, 8)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def med(values: list[float]) -> float | None:
    return load.median(values) if values else None


class Budget:
    """The run's overall time bound: sections are skipped once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def ok(self, need: float) -> bool:
        return self.left() > need


def cpu_snapshot(p: Path) -> dict[str, float]:
    return {role: paths.cpu_seconds(p.pids(role)) for role in p.roles}


def settle(p: Path, timeout: float = 60.0) -> float:
    """Wait (bounded) until the path's processes are idle again, e.g. after closing
    thousands of connections; returns the seconds waited."""
    t0 = time.monotonic()
    before = sum(cpu_snapshot(p).values())
    while time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        now = sum(cpu_snapshot(p).values())
        if now - before < 0.05:  # under 10 % of one CPU
            break
        before = now
    return time.monotonic() - t0


def measure(p: Path, args: argparse.Namespace, budget: Budget,
            profile_hook: Callable[[Path, int], dict[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"notes": p.notes, "skipped": []}
    reps = args.reps

    # Size each transfer so that one repetition takes about --seconds.
    sizes: dict[str, int] = {}
    for direction in ("up", "down"):
        probe = load.transfer(p.port, direction, 1, 16 * MB, time_limit=30)
        if not probe["ok"]:
            out[f"probe_{direction}"] = probe
            raise RuntimeError(f"{p.name}: probe transfer {direction} failed: {probe['error']}")
        size = int(probe["mbps"] * MB * args.seconds)
        sizes[direction] = max(8 * MB, min(size, 4 * GB))
    out["transfer_bytes"] = sizes

    # One stream, both ways, with CPU accounting of every role.
    tput: dict[str, dict[int, dict[str, Any]]] = {"up": {}, "down": {}}
    cpu_total: dict[str, float] = {}
    moved = 0
    for direction in ("up", "down"):
        runs = []
        before = cpu_snapshot(p)
        for _ in range(reps):
            r = load.transfer(p.port, direction, 1, sizes[direction],
                              time_limit=max(10.0, args.seconds * 10))
            runs.append(r)
            if r["ok"]:
                moved += r["bytes"]
        after = cpu_snapshot(p)
        for role in before:
            cpu_total[role] = cpu_total.get(role, 0.0) + after[role] - before[role]
        tput[direction][1] = _summ(runs)
    if moved:
        out["cpu_s_per_gb"] = {role: s / (moved / GB) for role, s in cpu_total.items()}
        out["cpu_bytes_moved"] = moved

    # Parallel streams (aggregate), both ways.
    for n in STREAMS[1:]:
        for direction in ("up", "down"):
            if not budget.ok(60):
                out["skipped"].append(f"{n} streams {direction}")
                continue
            runs = [load.transfer(p.port, direction, n, max(MB, sizes[direction] // n),
                                  time_limit=max(10.0, args.seconds * 10)) for _ in range(reps)]
            tput[direction][n] = _summ(runs)
    out["throughput"] = tput

    # 1-byte echo round trips.
    rtts = [load.echo_rtt(p.port, count=args.echo_count, time_limit=2.0) for _ in range(reps)]
    out["echo"] = {"p50_us": med([r["p50_us"] for r in rtts]),
                   "p99_us": med([r["p99_us"] for r in rtts]), "runs": rtts}

    # Connection setup: sequential latency, then rate with 32 in flight.
    out["connect_latency"] = load.connect_latency(p.port, count=args.latency_conns)
    before = cpu_snapshot(p)
    rates = [load.connection_rate(p.port, total=args.rate_conns, concurrency=32,
                                  time_limit=10.0) for _ in range(reps)]
    after = cpu_snapshot(p)
    made = sum(r["ok"] for r in rates)
    if made:  # CPU per connection: unlike the rate, not skewed by other load on the host
        out["cpu_ms_per_conn"] = {role: (after[role] - before[role]) * 1e3 / made
                                  for role in before}
    out["connect_rate"] = {"per_s": med([r["per_s"] for r in rates]),
                           "p50_ms": med([r.get("p50_ms", 0.0) for r in rates]),
                           "p99_ms": med([r.get("p99_ms", 0.0) for r in rates]),
                           "failed": sum(r["failed"] for r in rates), "runs": rates}

    # Concurrent connections held, RSS per connection of the forwarding process.
    if p.hold and args.conns and p.rss_role:
        if budget.ok(120):
            role = p.rss_role
            base = paths.rss_bytes(p.pids(role))
            base_all = {r: paths.rss_bytes(p.pids(r)) for r in p.roles}

            def on_held(n: int) -> dict[str, Any]:
                now = paths.rss_bytes(p.pids(role))
                now_all = {r: paths.rss_bytes(p.pids(r)) for r in p.roles}
                return {
                    "role": role, "rss_before": base, "rss_held": now,
                    "rss_per_conn": (now - base) / n if n else None,
                    "rss_per_conn_by_role": {
                        r: (now_all[r] - base_all[r]) / n if n else None for r in p.roles},
                }

            out["hold"] = load.hold_connections(p.port, args.conns, on_held,
                                                time_limit=args.hold_seconds)
            out["hold"]["teardown_seconds"] = settle(p)
        else:
            out["skipped"].append("hold")

    if profile_hook is not None and budget.ok(30):
        out["profile"] = profile_hook(p, max(sizes.values()))
    return out


def _summ(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r["mbps"] for r in runs if r["ok"]]
    errors = [r["error"] for r in runs if not r["ok"]]
    return {"mbps": med(good), "runs": good, "errors": errors}


# -- profiling ----------------------------------------------------------------------------


def make_profiler(outdir: FsPath, seconds: float) -> Callable[[Path, int], dict[str, Any]]:
    """py-spy the hcm processes while one-stream transfers run (up, then down)."""

    def hook(p: Path, size: int) -> dict[str, Any]:
        if p.name != "hcm":
            return {}
        spy = shutil.which("py-spy") or str(FsPath(sys.executable).with_name("py-spy"))
        if not os.path.exists(spy):
            return {"error": "py-spy not installed (pip install py-spy)"}
        result: dict[str, Any] = {}
        for direction in ("up", "down", "connect"):
            procs = []
            for role in ("relay", "agent worker", "sender"):
                for pid in p.pids(role):
                    raw = outdir / f"profile-{direction}-{role.replace(' ', '-')}-{pid}.txt"
                    cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                           "--rate", "200", "--format", "raw", "--native",
                           "--output", str(raw)]
                    procs.append((role, raw, subprocess.Popen(
                        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
            time.sleep(1.0)
            stop = time.monotonic() + seconds - 1.5
            moved = 0
            if direction == "connect":  # connection setup: connect, 1-byte echo, close
                r = load.connection_rate(p.port, total=20000, concurrency=32,
                                         time_limit=max(1.0, stop - time.monotonic()))
                moved = r["ok"]
            while direction != "connect" and time.monotonic() < stop:
                r = load.transfer(p.port, direction, 1, size, time_limit=seconds + 20)
                moved += r.get("bytes", 0)
            for _role, _raw, proc in procs:
                try:
                    proc.wait(seconds + 30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            result[direction] = {
                "connections" if direction == "connect" else "bytes": moved,
                "processes": {role: top_functions(raw) for role, raw, _ in procs},
            }
        return result

    return hook


def top_functions(raw: FsPath, n: int = 15) -> dict[str, Any]:
    """Where the main thread's time goes, from py-spy's ``--native`` collapsed stacks.

    Each sample is charged to its innermost Python frame (``self``: that function plus the
    C code it called, e.g. a socket send or OpenSSL), ``inclusive`` to every Python frame
    on the stack.  Samples blocked in ``epoll_wait`` are idle and left out; percentages
    are of the busy samples.  ``native`` groups the innermost native frame (syscalls,
    crypto, interpreter); other threads (Twisted's thread pool) are ignored.
    """
    try:
        lines = raw.read_text().splitlines()
    except OSError as e:
        return {"error": str(e)}
    selfc: dict[str, int] = {}
    incl: dict[str, int] = {}
    files: dict[str, int] = {}
    native: dict[str, int] = {}
    total = idle = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack or "threading.py" in stack:
            continue
        c = int(count)
        total += c
        frames = stack.split(";")
        leaf = frames[-1]
        if leaf.startswith(("epoll_wait", "EPollReactor.doPoll")):
            idle += c
            continue
        py = [_frame_name(f) for f in frames if ".py:" in f]
        inner = py[-1] if py else "(no Python frame)"
        selfc[inner] = selfc.get(inner, 0) + c
        where = inner.rpartition("(")[2].rstrip(")")
        files[where] = files.get(where, 0) + c
        for f in set(py):
            incl[f] = incl.get(f, 0) + c
        kind = _native_kind(leaf)
        native[kind] = native.get(kind, 0) + c
    busy = total - idle
    if not busy:
        return {"samples": total, "busy": 0}

    def pct(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / busy, 1))
                for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    return {"samples": total, "busy": busy, "file": str(raw), "self": pct(selfc),
            "inclusive": pct(incl), "by_file": pct(files), "native": pct(native)}


_SYSCALLS = ("send", "recv", "sendmsg", "recvmsg", "writev", "read", "write", "epoll_ctl",
             "sendto", "recvfrom", "close", "accept4", "connect")


def _native_kind(leaf: str) -> str:
    func, _, where = leaf.partition(" (")
    if ".py:" in leaf:
        return "Python code"
    if func in _SYSCALLS:
        return f"syscall {func}"
    if "_rust.abi3.so" in where or "libcrypto" in where or "libssl" in where:
        return "OpenSSL (TLS, AES-GCM)"
    if "_xormasker" in where or "nvx" in where.lower():
        return "WebSocket masking (NVX)"
    if "libpython" in where or ".c:" in where:
        return "interpreter"
    if func in ("malloc", "free", "realloc", "calloc") or func.startswith(("_int_", "__libc_")):
        return "malloc"
    if "libc.so" in where:
        return "libc (memcpy, malloc, syscall stubs; unresolved)"
    return where.rstrip(")") or func


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``."""
    func, sep, where = frame.partition(" (")
    if not sep:
        return frame
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{func} ({path.rsplit('/', 1)[-1]})"


# -- report -------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def _get(d: dict[str, Any], *keys: Any) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def evaluate(res: dict[str, Any], conns: int) -> list[dict[str, Any]]:
    """The targets of issue 6, each with its value, limit and verdict."""
    ours, ssh = res.get("hcm", {}), res.get("ssh", {})
    targets = []

    def add(name: str, value: float | None, limit: float, higher: bool, unit: str) -> None:
        ok = None if value is None else (value >= limit if higher else value <= limit)
        targets.append({"target": name, "value": value, "limit": limit,
                        "better": "higher" if higher else "lower", "unit": unit, "met": ok})

    def ratio(a: Any, b: Any) -> float | None:
        return a / b if a is not None and b else None

    for direction, label in (("up", "app->endpoint"), ("down", "endpoint->app")):
        add(f"one-stream throughput {label} / ssh -R",
            ratio(_get(ours, "throughput", direction, 1, "mbps"),
                  _get(ssh, "throughput", direction, 1, "mbps")), 0.35, True, "x")
    add("agent worker CPU per GB / ssh client CPU per GB",
        ratio(_get(ours, "cpu_s_per_gb", "agent worker"),
              _get(ssh, "cpu_s_per_gb", "ssh client")), 2.0, False, "x")
    add("1-byte echo p50 / ssh -R", ratio(_get(ours, "echo", "p50_us"),
                                          _get(ssh, "echo", "p50_us")), 3.0, False, "x")
    add("new connections per second (full path)", _get(ours, "connect_rate", "per_s"),
        300, True, "/s")
    held = _get(ours, "hold", "held")
    add(f"concurrent connections held (of {conns})", held, 5000, True, "")
    add("agent worker RSS per held connection", _get(ours, "hold", "rss_per_conn"),
        16 * 1024, False, "bytes")
    return targets


def table(res: dict[str, Any], names: list[str]) -> str:
    rows: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
        ("1 stream app->endpoint MB/s", lambda r: _get(r, "throughput", "up", 1, "mbps"), ".0f"),
        ("1 stream endpoint->app MB/s", lambda r: _get(r, "throughput", "down", 1, "mbps"),
         ".0f"),
    ]
    def tp(direction: str, n: int) -> Callable[[dict[str, Any]], Any]:
        return lambda r: _get(r, "throughput", direction, n, "mbps")

    for n in STREAMS[1:]:
        rows.append((f"{n} streams app->endpoint MB/s", tp("up", n), ".0f"))
        rows.append((f"{n} streams endpoint->app MB/s", tp("down", n), ".0f"))
    rows += [
        ("1-byte echo RTT p50 us", lambda r: _get(r, "echo", "p50_us"), ".0f"),
        ("1-byte echo RTT p99 us", lambda r: _get(r, "echo", "p99_us"), ".0f"),
        ("new connections/s (32 in flight)", lambda r: _get(r, "connect_rate", "per_s"), ".0f"),
        ("connect->first echo p50 ms", lambda r: _get(r, "connect_latency", "p50_ms"), ".2f"),
        ("connect->first echo p99 ms", lambda r: _get(r, "connect_latency", "p99_ms"), ".2f"),
        ("forwarder CPU s/GB", lambda r: _forwarder_cpu(r, "cpu_s_per_gb"), ".2f"),
        ("forwarder CPU ms/connection",
         lambda r: _forwarder_cpu(r, "cpu_ms_per_conn"), ".2f"),
        ("connections held", lambda r: _get(r, "hold", "held"), ".0f"),
        ("forwarder RSS per conn KB",
         lambda r: (_get(r, "hold", "rss_per_conn") or 0) / 1024 if _get(r, "hold") else None,
         ".1f"),
    ]
    cols = names + (["hcm/ssh"] if "hcm" in names and "ssh" in names else [])
    width = max(len(r[0]) for r in rows) + 2
    lines = [" " * width + "".join(f"{c:>12}" for c in cols)]
    for label, getter, spec in rows:
        vals = [getter(res.get(n, {})) for n in names]
        cells = [f"{_fmt(v, spec):>12}" for v in vals]
        if "hcm/ssh" in cols:
            a, b = getter(res.get("hcm", {})), getter(res.get("ssh", {}))
            cells.append(f"{_fmt(a / b if a is not None and b else None, '.2f'):>12}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    return "\n".join(lines)


def _forwarder_cpu(r: dict[str, Any], key: str) -> float | None:
    fwd = _get(r, "notes", "forwarder")
    return _get(r, key, fwd) if fwd else None


def plot(res: dict[str, Any], names: list[str], out: FsPath) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib missing: pip install -e '.[bench]' (or pip install matplotlib)"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    labels = {"raw": "raw loopback TCP", "socat": "socat hop", "ssh": "ssh -R (aes128-gcm)",
              "hcm": "hcm (sender > relay > agent)"}
    for ax, (direction, title) in zip(axes, (("up", "app -> endpoint"),
                                             ("down", "endpoint -> app")), strict=True):
        for name in names:
            t = _get(res, name, "throughput", direction) or {}
            xs = [n for n in STREAMS if (t.get(n) or {}).get("mbps")]
            ys = [t[n]["mbps"] for n in xs]
            if xs:
                ax.plot(xs, ys, marker="o", label=labels.get(name, name),
                        linewidth=2.5 if name == "hcm" else 1.5)
        ax.set_title(title)
        ax.set_xlabel("parallel streams")
        ax.set_xticks(list(STREAMS))
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("MB/s (median, log scale)")
    axes[1].legend(fontsize=8, loc="center right")
    fig.suptitle("hcm-twisted throughput vs baselines (loopback, "
                 f"{os.cpu_count()} CPUs)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return None


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", default="raw,socat,ssh,hcm",
                    help="comma-separated subset of raw,socat,ssh,hcm")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per measurement (median)")
    ap.add_argument("--seconds", type=float, default=1.5,
                    help="target duration of one throughput repetition")
    ap.add_argument("--conns", type=int, default=5000, help="concurrent connections to hold")
    ap.add_argument("--hold-seconds", type=float, default=90.0,
                    help="time bound for opening the held connections")
    ap.add_argument("--rate-conns", type=int, default=600,
                    help="connections per connection-rate repetition")
    ap.add_argument("--latency-conns", type=int, default=200)
    ap.add_argument("--echo-count", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=1, help="agent workers")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the relay, agent worker and sender during one-stream transfers")
    ap.add_argument("--profile-seconds", type=float, default=8.0)
    ap.add_argument("--budget", type=float, default=570.0,
                    help="overall time bound in seconds (sections are skipped after it)")
    ap.add_argument("--quick", action="store_true", help="one repetition, 500 held connections")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary directory (configs, keys, logs) even on success")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.rate_conns, args.seconds = 1, 300, 1.0
        args.conns = min(args.conns, 500)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child
    if hard < 2 * args.conns + 100:
        log(f"open-file limit {hard} is low for {args.conns} connections; expect failures")

    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    for n in names:
        if n not in paths.PATHS:
            ap.error(f"unknown path {n!r} (choose from {', '.join(paths.PATHS)})")
    missing = {n: paths.missing_tools(n) for n in names}
    if any(missing.values()):
        pkgs = " ".join(sorted({paths.APT[n] for n, m in missing.items() if m}))
        print(f"missing tools for baselines: "
              f"{', '.join(t for m in missing.values() for t in m)}\n"
              f"install them with:\n  sudo apt-get install -y {pkgs}\n"
              "(those baselines are skipped in this run)", flush=True)

    outdir = FsPath(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget)
    load_start = os.getloadavg()
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
        log(f"note: load average {load_start[0]:.1f} on {os.cpu_count()} CPUs; "
            "rates and latencies will be lower than on an idle host")
    started = time.monotonic()
    workdir = FsPath(tempfile.mkdtemp(prefix="hcm-bench-"))
    res: dict[str, Any] = {}
    endpoint_port = harness.free_port()
    endpoint = harness.Proc([sys.executable, str(HERE / "endpoint.py"), str(endpoint_port)],
                            cwd=workdir, name="endpoint")
    profiler = make_profiler(outdir, args.profile_seconds) if args.profile else None
    try:
        endpoint.wait_log(r"ready \d+", timeout=20)
        for name in names:
            if missing[name]:
                res[name] = {"skipped": f"missing {', '.join(missing[name])}"}
                continue
            if not budget.ok(45):
                res[name] = {"skipped": "time budget spent"}
                continue
            log(f"{name}: starting")
            t0 = time.monotonic()
            try:
                kwargs = {"workers": args.workers} if name == "hcm" else {}
                with paths.PATHS[name](endpoint_port, workdir, **kwargs) as p:
                    p.notes["forwarder"] = p.forwarder
                    res[name] = measure(p, args, budget, profiler)
            except Exception as e:
                log(f"{name}: FAILED {type(e).__name__}: {e}")
                res[name] = {"error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc()}
            log(f"{name}: done in {time.monotonic() - t0:.0f} s")
    finally:
        endpoint.stop()
    elapsed = time.monotonic() - started

    targets = evaluate(res, args.conns)
    doc = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(),
                 "kernel": platform.release(), "loadavg_at_start": load_start,
                 "loadavg_at_end": os.getloadavg()},
        "args": vars(args), "elapsed_seconds": elapsed, "paths": res, "targets": targets,
        "workdir": str(workdir),
    }
    failed = [n for n in names if res.get(n, {}).get("error")]
    if failed or args.keep:
        print(f"logs and configs kept in {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)  # it holds test keys and logs
        doc["workdir"] = None
    (outdir / "latest.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print()
    print(table(res, [n for n in names if "throughput" in res.get(n, {})] or names))
    print()
    for t in targets:
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        op = ">=" if t["better"] == "higher" else "<="
        val = "-" if t["value"] is None else f"{t['value']:.3g}"
        print(f"  [{verdict:>6}] {t['target']}: {val} {t['unit']} (target {op} {t['limit']:g})")
    for n in names:
        if res.get(n, {}).get("error"):
            print(f"  {n}: error: {res[n]['error']}")
        if res.get(n, {}).get("skipped"):
            print(f"  {n}: skipped: {res[n]['skipped']}")
    note = plot(res, names, outdir / "throughput.png")
    print(f"\nresults: {outdir / 'latest.json'}"
          + ("" if note else f", plot: {outdir / 'throughput.png'}") + f"; {elapsed:.0f} s")
    if note:
        print(note)
    for n in names:
        prof = res.get(n, {}).get("profile")
        if prof:
            print_profile(prof)
    return 0


def print_profile(prof: dict[str, Any]) -> None:
    for direction, d in prof.items():
        if not isinstance(d, dict) or "processes" not in d:
            print(f"profile: {d}")
            continue
        if direction == "connect":
            print(f"\nprofile, connection setup ({d['connections']} connections):")
        else:
            print(f"\nprofile, one stream {direction} ({d['bytes'] / MB:.0f} MB moved):")
        for role, top in d["processes"].items():
            print(f"  {role}: {top.get('busy', 0)} busy of {top.get('samples', 0)} samples")
            for fn, pc in top.get("self", [])[:10]:
                print(f"    self {pc:5.1f}%  {fn}")
            print("    by file: " + ", ".join(f"{f} {pc:.0f}%"
                                            for f, pc in top.get("by_file", [])[:8]))
            print("    native:  " + ", ".join(f"{f} {pc:.0f}%"
                                            for f, pc in top.get("native", [])[:8]))


if __name__ == "__main__":
    sys.exit(main())
