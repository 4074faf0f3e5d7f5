"""A real ``hcm-relay`` process on loopback for end-to-end tests.

    relay = start_relay(tmpdir, hcs=("hc1", {"name": "hc2", "user-metadata": "..."}))
    relay.connection_string("hc1")                   # defaultListener (Listen)
    relay.connection_string("hc1", "defaultSender")  # Send
    relay.stop(); relay.start()                      # restart on the same port

Each HC gets the rules ``defaultListener`` (Listen) and ``defaultSender`` (Send); the namespace
has ``RootManageSharedAccessKey`` (Manage, Listen, Send); keys come from ``harness.TEST_KEYS``.
A dict item may set ``name``, ``user-metadata`` and ``requires-client-authorization``.
TLS uses the relay's private CA, written to ``relay.ca_path``.  Helpers block (bounded waits).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli_w

from tests.e2e import harness

_HC_KEYS = ("name", "user-metadata", "requires-client-authorization")


def relay_toml(port: int, hcs: Sequence[str | dict[str, Any]], extra_toml: str = "",
               state: str = "relay-state.sqlite") -> str:
    """The TOML text of a test relay config."""
    top = tomli_w.dumps({
        "namespace": "localhost",
        "endpoint": f"ssl:{port}:interface=127.0.0.1",
        "state": state,
    })
    tables: dict[str, Any] = {
        "authorization-rule": [{
            "name": "RootManageSharedAccessKey",
            "rights": ["Manage", "Listen", "Send"],
            "primary-key": harness.TEST_KEYS["RootManageSharedAccessKey"],
        }],
        "hybrid-connection": [],
    }
    for item in hcs:
        spec: dict[str, Any] = {"name": item} if isinstance(item, str) else dict(item)
        unknown = set(spec) - set(_HC_KEYS)
        if unknown or "name" not in spec:
            raise ValueError(f"relay fixture: bad hybrid connection item {item!r}")
        spec["authorization-rule"] = [
            {"name": "defaultListener", "rights": ["Listen"],
             "primary-key": harness.TEST_KEYS["defaultListener"]},
            {"name": "defaultSender", "rights": ["Send"],
             "primary-key": harness.TEST_KEYS["defaultSender"]},
        ]
        tables["hybrid-connection"].append(spec)
    return top + "\n" + extra_toml.strip() + "\n\n" + tomli_w.dumps(tables)


class Relay:
    """A relay process; see the module docstring."""

    namespace = "localhost"

    def __init__(self, directory: Path, port: int, config_path: Path) -> None:
        self.directory = directory
        self.port = port
        self.config_path = config_path
        self.ca_path = directory / "relay-ca.pem"
        self.proc: harness.Proc | None = None
        self._starts = 0

    @property
    def endpoint(self) -> str:
        return f"sb://{self.namespace}:{self.port}/"

    def connection_string(self, hc: str, rule: str = "defaultListener") -> str:
        return (
            f"Endpoint={self.endpoint};SharedAccessKeyName={rule};"
            f"SharedAccessKey={harness.TEST_KEYS[rule]};EntityPath={hc}"
        )

    def start(self, timeout: float = 30.0) -> Relay:
        """Start (or restart) the process on the same port; wait until it listens."""
        if self.proc is not None and self.proc.popen.poll() is None:
            raise RuntimeError("relay already running")
        self._starts += 1
        name = "hcm-relay" if self._starts == 1 else f"hcm-relay-{self._starts}"
        self.proc = harness.twist("hcm-relay", self.config_path, cwd=self.directory, name=name)
        try:
            self.proc.wait_log(r"hcm-relay listening on", timeout=timeout)
            harness.wait_port(self.port, timeout=timeout)
        except BaseException:
            self.proc.stop()
            raise
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return self.proc.stop()

    def output(self) -> str:
        return self.proc.output() if self.proc is not None else ""


def start_relay(
    directory: Path, hcs: Sequence[str | dict[str, Any]] = ("hc1",), extra_toml: str = ""
) -> Relay:
    """Write a config into ``directory`` and start ``twist hcm-relay`` on a free port."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = harness.free_port()
    config_path = directory / "hcm-relay.toml"
    config_path.write_text(relay_toml(port, hcs, extra_toml))
    return Relay(directory, port, config_path).start()
