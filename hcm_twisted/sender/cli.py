# -*- test-case-name: tests.sender.test_cli -*-
"""``hcm sender ...``: helpers for the app side.

    hcm sender hosts --config PATH   hosts-file lines for DNS-name mode HCs
    hcm sender check --config PATH   check the config file, print what would listen where

The sender itself runs as ``twistd -n hcm-sender --config PATH``.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from hcm_twisted.core.configfile import parse_host_port
from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.sender import config as _config
from hcm_twisted.sender.config import SenderConfig, SenderHc


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(message)


def _parser() -> _Parser:
    parser = _Parser(
        prog="hcm sender",
        description="App side of hybrid connections (run it with 'twistd -n hcm-sender').",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    hosts = sub.add_parser(
        "hosts", help="print hosts-file lines for DNS-name mode hybrid connections",
        description="Print /etc/hosts lines mapping each DNS-name mode HC's endpoint host to "
        "its loopback address.  Endpoints not in the config are read from the HC's user "
        "metadata on the relay (runtime GET).",
    )
    check = sub.add_parser("check", help="check the config file and show the listen addresses")
    for p in (hosts, check):
        p.add_argument("--config", "-c", metavar="PATH", required=True,
                       help="the sender config file (TOML)")
    return parser


def resolve_endpoints(config: SenderConfig) -> dict[str, str | Exception]:
    """``{hc name: host:port or the error}`` for DNS-mode HCs, reading metadata where needed."""
    out: dict[str, str | Exception] = {}
    missing = []
    for hc in config.hybrid_connections:
        if not hc.dns_mode:
            continue
        if hc.endpoint is not None:
            out[hc.name] = hc.endpoint
        else:
            missing.append(hc)
    if missing:
        out.update(_fetch_all(config, missing))
    return out


def _fetch_all(config: SenderConfig, hcs: list[SenderHc]) -> dict[str, str | Exception]:
    from twisted.internet import defer, task

    from hcm_twisted.sender.forwarder import metadata_client, read_endpoint

    results: dict[str, str | Exception] = {}

    async def run(reactor: Any) -> None:
        web = metadata_client(config, reactor)
        for hc in hcs:
            try:
                results[hc.name] = await read_endpoint(web, hc, reactor)
            except Exception as e:
                results[hc.name] = e

    def main(reactor: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(run(reactor))

    try:
        task.react(main)
    except SystemExit:
        pass
    return results


def hosts_lines(config: SenderConfig, endpoints: dict[str, str | Exception]) -> list[str]:
    lines = []
    for hc in config.hybrid_connections:
        if not hc.dns_mode:
            continue
        found = endpoints.get(hc.name)
        if isinstance(found, Exception) or found is None:
            lines.append(f"# {hc.name}: endpoint unknown ({found})")
            continue
        host, port = parse_host_port(found, f"{hc.name}: endpoint")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            lines.append(f"{hc.address}\t{host}\t# hcm-sender {hc.name} (port {port})")
        else:
            lines.append(
                f"# {hc.name}: endpoint {found} is an IP address; apps connect to "
                f"{hc.address}:{port} instead"
            )
    return lines


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except _Usage as e:
        print(f"hcm sender: {e}", file=err)
        parser.print_usage(err)
        return 2
    if args.command is None:
        parser.print_help(out)
        return 0
    try:
        config = _config.load(args.config)
    except MalformedInput as e:
        print(f"hcm sender: {e}", file=err)
        return 1
    if args.command == "check":
        for hc in config.hybrid_connections:
            if hc.dns_mode:
                where = f"{hc.address} on the port of {hc.endpoint or '(endpoint from metadata)'}"
            else:
                where = hc.listen or ""
            print(f"{hc.name}: {hc.connection_string.masked()} <- {where}", file=out)
        return 0
    endpoints = resolve_endpoints(config)
    lines = hosts_lines(config, endpoints)
    if not lines:
        print("# no DNS-name mode hybrid connections (every HC has 'listen')", file=out)
    for line in lines:
        print(line, file=out)
    return 1 if any(isinstance(v, Exception) for v in endpoints.values()) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
