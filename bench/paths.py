"""The paths under test, each a context manager that yields a :class:`Path`.

- ``raw``:   app -> endpoint (loopback TCP, no hop)
- ``socat``: app -> socat (fork) -> endpoint
- ``ssh``:   app -> sshd (-R listener) => ssh client -> endpoint, through a private sshd on
             127.0.0.1 with its own config, host key and authorized_keys in a temporary
             directory (never the system's sshd config), cipher aes128-gcm@openssh.com
- ``hcm``:   app -> hcm-sender => hcm-relay <= hcm agent worker -> endpoint

``Path.roles`` maps a role name to a function returning the pids that play it right now
(process trees are followed for forking programs).  ``forwarder`` is the role compared for
CPU per GB: the process that dials out and forwards to the target (ssh client, agent worker).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

ROOT = FsPath(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e import harness  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CIPHER = "aes128-gcm@openssh.com"

TOOLS = {"ssh": ["/usr/sbin/sshd", "ssh", "ssh-keygen"], "socat": ["socat"]}
APT = {"ssh": "openssh-server openssh-client", "socat": "socat"}


def missing_tools(path: str) -> list[str]:
    return [t for t in TOOLS.get(path, []) if shutil.which(t) is None and not os.path.exists(t)]


# -- /proc ---------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        raw = FsPath(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from "state" (field 3) on


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and int(st[1]) == pid:
                out.append(int(entry))
    return out


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(children(p))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, plus that of their reaped children (socat's forks)."""
    total = 0
    for pid in pids:
        st = _stat(pid)
        if st is not None:
            # utime, stime, cutime, cstime (fields 14-17 of /proc/PID/stat)
            total += int(st[11]) + int(st[12]) + int(st[13]) + int(st[14])
    return total / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(FsPath(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def wait_port(port: int, timeout: float = 30.0) -> None:
    harness.wait_port(port, timeout=timeout)


# -- paths -----------------------------------------------------------------------------------


@dataclass
class Path:
    name: str
    port: int  # where the app connects
    roles: dict[str, Callable[[], list[int]]] = field(default_factory=dict)
    forwarder: str | None = None  # role compared for CPU per GB
    rss_role: str | None = None  # role whose RSS per held connection is measured
    hold: bool = False  # whether the concurrent-connections test makes sense here
    notes: dict[str, Any] = field(default_factory=dict)

    def pids(self, role: str) -> list[int]:
        return self.roles[role]()


@contextlib.contextmanager
def raw(endpoint_port: int, workdir: FsPath) -> Iterator[Path]:
    yield Path("raw", endpoint_port, notes={"command": "direct loopback TCP"})


@contextlib.contextmanager
def socat(endpoint_port: int, workdir: FsPath) -> Iterator[Path]:
    port = harness.free_port()
    args = ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=4096,nodelay",
            f"TCP:127.0.0.1:{endpoint_port},nodelay"]
    proc = harness.Proc(args, cwd=workdir, name="socat")
    try:
        wait_port(port)
        yield Path("socat", port, roles={"socat": lambda: tree(proc.pid)}, forwarder="socat",
                   notes={"command": " ".join(args)})
    finally:
        proc.stop()


def _sshd_config(d: FsPath, port: int, user: str) -> FsPath:
    cfg = d / "sshd_config"
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {d / 'host_ed25519'}",
        f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}",
        f"AllowUsers {user}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "UseDNS no",
        "StrictModes no",
        f"Ciphers {CIPHER}",
        "Compression no",
        "AllowTcpForwarding yes",
        "GatewayPorts no",
        "X11Forwarding no",
        "PrintMotd no",
        "MaxStartups 100:30:200",
        "LogLevel ERROR",
        "Subsystem sftp internal-sftp",
    ]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


@contextlib.contextmanager
def ssh(endpoint_port: int, workdir: FsPath) -> Iterator[Path]:
    d = workdir / "ssh"
    d.mkdir(mode=0o700)
    user = os.environ.get("USER") or subprocess.run(
        ["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    for key in ("host_ed25519", "client_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                       check=True, stdin=subprocess.DEVNULL)
    (d / "authorized_keys").write_text((d / "client_ed25519.pub").read_text())
    sshd_port = harness.free_port()
    fwd_port = harness.free_port()
    host_pub = (d / "host_ed25519.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{sshd_port} {host_pub[0]} {host_pub[1]}\n")
    cfg = _sshd_config(d, sshd_port, user)
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    sshd = harness.Proc(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)], cwd=d, name="sshd")
    client = None
    try:
        wait_port(sshd_port)
        client_args = [
            "ssh", "-N", "-F", "/dev/null", "-i", str(d / "client_ed25519"),
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={d / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", f"Ciphers={CIPHER}", "-o", "Compression=no",
            "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=0",
            "-p", str(sshd_port), "-R", f"127.0.0.1:{fwd_port}:127.0.0.1:{endpoint_port}",
            f"{user}@127.0.0.1",
        ]
        client = harness.Proc(client_args, cwd=d, name="ssh-client")
        deadline = time.monotonic() + 20
        while True:
            if client.popen.poll() is not None:
                raise RuntimeError(f"ssh exited: {client.output()[-2000:]}\n"
                                   f"sshd: {sshd.output()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", fwd_port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("ssh -R port never opened") from None
                time.sleep(0.1)
        c = client
        yield Path(
            "ssh", fwd_port,
            roles={"ssh client": lambda: [c.pid], "sshd": lambda: tree(sshd.pid)},
            forwarder="ssh client", rss_role="ssh client", hold=True,
            notes={"command": " ".join(client_args), "sshd_config": cfg.read_text()},
        )
    finally:
        if client is not None:
            client.stop()
        sshd.stop()


def _worker_pids(master: int) -> list[int]:
    out = []
    for pid in tree(master):
        if pid == master:
            continue
        try:
            cmd = FsPath(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"hcm_twisted.agent.worker" in cmd:
            out.append(pid)
    return out


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def hcm(endpoint_port: int, workdir: FsPath, workers: int = 1) -> Iterator[Path]:
    from tests.e2e import relayfixture  # the relay engineer's fixture (contract in HELPERS.md)

    d = workdir / "hcm"
    d.mkdir()
    relay = relayfixture.start_relay(d / "relay", ["hc1"])
    agent = sender = None
    try:
        admin_port = harness.free_port()
        agent_cfg = d / "hcm.toml"
        agent_cfg.write_text(
            "[agent]\n"
            f"workers = {workers}\n"
            f"admin = {_toml_str(f'tcp:{admin_port}:interface=127.0.0.1')}\n"
            f"ca-certificates = {_toml_str(str(relay.ca_path))}\n\n"
            "[[hybrid-connection]]\n"
            'name = "hc1"\n'
            f"connection-string = {_toml_str(relay.connection_string('hc1'))}\n"
            f'endpoint = "127.0.0.1:{endpoint_port}"\n'
        )
        os.chmod(agent_cfg, 0o600)
        agent = harness.twist("hcm", agent_cfg, cwd=d, name="agent")
        agent.wait_log("hcm agent ready", timeout=30)
        deadline = time.monotonic() + 30
        while sum("control channel connected" in line
                  for line in agent.output().splitlines()) < workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent workers not connected:\n{agent.output()[-3000:]}")
            time.sleep(0.1)
        sender_port = harness.free_port()
        sender_cfg = d / "hcm-sender.toml"
        sender_cfg.write_text(
            f"ca-certificates = {_toml_str(str(relay.ca_path))}\n\n"
            "[[hybrid-connection]]\n"
            'name = "hc1"\n'
            f"connection-string = {_toml_str(relay.connection_string('hc1', rule='defaultSender'))}\n"
            f"listen = {_toml_str(f'tcp:{sender_port}:interface=127.0.0.1')}\n"
        )
        os.chmod(sender_cfg, 0o600)
        sender = harness.twist("hcm-sender", sender_cfg, cwd=d, name="sender")
        wait_port(sender_port)
        _probe_echo(sender_port, timeout=30)
        a_pid, s_pid, r_pid = agent.pid, sender.pid, relay.proc.pid  # type: ignore[union-attr]
        yield Path(
            "hcm", sender_port,
            roles={
                "agent worker": lambda: _worker_pids(a_pid),
                "agent master": lambda: [a_pid],
                "relay": lambda: [r_pid],
                "sender": lambda: [s_pid],
            },
            forwarder="agent worker", rss_role="agent worker", hold=True,
            notes={"workers": workers, "logs": str(d)},
        )
    finally:
        for p in (sender, agent):
            if p is not None:
                p.stop()
        relay.stop()


def _probe_echo(port: int, timeout: float) -> None:
    """Bounded retries until one echo goes through the whole path."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"Ex")
                if s.recv(1) == b"x":
                    return
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise TimeoutError(f"no echo through port {port} after {timeout} s: {last}")


PATHS: dict[str, Callable[..., contextlib.AbstractContextManager[Path]]] = {
    "raw": raw, "socat": socat, "ssh": ssh, "hcm": hcm,
}
