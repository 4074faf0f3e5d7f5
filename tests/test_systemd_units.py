"""The systemd units in etc/systemd: structure, hardening, and ``systemd-analyze verify``."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import harness

UNITS = harness.ROOT / "etc" / "systemd"
PLUGINS = {"hcm.service": "hcm", "hcm-relay.service": "hcm-relay", "hcm-sender.service": "hcm-sender"}


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections -> [(key, value)] in order (systemd allows repeated keys)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        if current is None or "=" not in line:
            raise AssertionError(f"{path.name}:{number}: not 'Key=value' inside a section: {raw!r}")
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    if len(found) != 1:
        raise AssertionError(f"{key}: expected once, found {found!r}")
    return found[0]


class UnitTests(SynchronousTestCase):
    def test_structure(self) -> None:
        for name, plugin in PLUGINS.items():
            unit = parse_unit(UNITS / name)
            self.assertEqual(set(unit), {"Unit", "Service", "Install"}, name)
            service = unit["Service"]
            user = one(service, "User")
            self.assertNotIn(user, ("root", "0", ""), name)
            for key, expected in [
                ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                ("LimitNOFILE", "1048576"), ("Restart", "on-failure"), ("ProtectHome", "yes"),
            ]:
                self.assertEqual(one(service, key), expected, f"{name} {key}")
            # The state directory is writable, and nothing else is.
            state = one(service, "StateDirectory")
            self.assertIn(f"/var/lib/{state}", one(service, "ReadWritePaths").split(), name)
            self.assertEqual(one(service, "WorkingDirectory"), f"/var/lib/{state}", name)
            # twistd in the foreground, no pid file, the right plugin and config.
            argv = shlex.split(one(service, "ExecStart"))
            self.assertTrue(argv[0].startswith("/"), name)
            self.assertEqual(os.path.basename(argv[0]), "twistd", name)
            self.assertIn("--nodaemon", argv)
            self.assertIn("--pidfile=", argv)
            self.assertEqual(argv[argv.index("--pidfile=") + 1], plugin, name)
            self.assertEqual(argv[-2:], ["--config", f"/etc/hcm/{plugin}.toml"], name)
            self.assertIn("network-online.target", one(unit["Unit"], "After"))
            self.assertEqual(one(unit["Install"], "WantedBy"), "multi-user.target")

    def test_plugins_exist(self) -> None:
        text = (harness.ROOT / "twisted" / "plugins" / "hcm_twisted_plugins.py").read_text()
        for plugin in PLUGINS.values():
            self.assertIn(f'"{plugin}"', text)

    def test_agent_reload(self) -> None:
        service = parse_unit(UNITS / "hcm.service")["Service"]
        argv = shlex.split(one(service, "ExecReload"))
        self.assertEqual(os.path.basename(argv[0]), "hcm")
        self.assertEqual(argv[1:], ["--config", "/etc/hcm/hcm.toml", "reload"])
        self.assertEqual(one(service, "KillMode"), "mixed")
        self.assertEqual(one(service, "RuntimeDirectory"), "hcm")
        # The command exists: with no agent running it says so (exit 1), it is not a usage error.
        config = Path(self.mktemp())
        config.write_text('[agent]\nadmin = "unix:' + str(config) + '.sock:mode=600"\n')
        result = harness.hcm_cli(["--config", str(config), "reload"], timeout=60)
        self.assertNotEqual(result.returncode, 2, result.stderr)
        self.assertNotEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("no agent is running", result.stdout + result.stderr)

    def test_systemd_analyze_verify(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise self.skipTest("systemd-analyze is not installed (the structural test ran)")
        tmp = Path(self.mktemp()).resolve()
        bindir = tmp / "bin"
        bindir.mkdir(parents=True)
        for exe in ("twistd", "hcm"):
            (bindir / exe).write_text("#!/bin/sh\nexit 0\n")
            (bindir / exe).chmod(0o755)
        copies = []
        for name in PLUGINS:
            text = (UNITS / name).read_text().replace("/opt/hcm-twisted/bin/", f"{bindir}/")
            (tmp / name).write_text(text)
            copies.append(str(tmp / name))
        result = subprocess.run([analyze, "verify", *copies], capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        # Unknown keys and bad values are only warnings: there must be none.
        self.assertEqual(output.strip(), "", output)

    def test_sysusers(self) -> None:
        lines = [ln.split() for ln in (UNITS / "hcm.sysusers").read_text().splitlines()
                 if ln.strip() and not ln.startswith("#")]
        users = {parts[1] for parts in lines if parts[0] == "u"}
        expected = {one(parse_unit(UNITS / n)["Service"], "User") for n in PLUGINS}
        self.assertEqual(users, expected)
