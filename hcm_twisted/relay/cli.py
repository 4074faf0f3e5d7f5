# -*- test-case-name: tests.relay.test_cli -*-
"""``hcm relay ...``: connection strings and key regeneration for a local relay.

    hcm relay connection-string --config PATH HC --rule NAME [--secondary] [--json]
    hcm relay regenerate-key --config PATH RULE [--hc HC] [--secondary] [--json]

Keys live in the relay's SQLite ``state`` file.  A running relay notices the
changed file on its next authorization (it compares the file's size and
modification time) and uses the new key from then on; tokens signed with the
old key stop working at once (as in Azure).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

from hcm_twisted.core import connstr
from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.relay.namespace import (
    DEFAULT_ENDPOINT,
    NAMESPACE_SCOPE,
    Namespace,
    RelayConfig,
    load_config,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"hcm relay: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hcm relay", description="Manage a local hcm-relay's keys.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    cs = sub.add_parser("connection-string", help="print a connection string for an HC and rule")
    cs.add_argument("--config", required=True, metavar="PATH", help="the relay's TOML file")
    cs.add_argument("hc", metavar="HC", help="hybrid connection name")
    cs.add_argument("--rule", default="defaultListener", metavar="NAME",
                    help="authorization rule (on the HC or the namespace; default "
                         "defaultListener)")
    cs.add_argument("--secondary", action="store_true", help="use the secondary key")
    cs.add_argument("--json", action="store_true", help="print JSON")
    rk = sub.add_parser("regenerate-key", help="replace a rule's key (a running relay follows)")
    rk.add_argument("--config", required=True, metavar="PATH", help="the relay's TOML file")
    rk.add_argument("rule", metavar="RULE", help="authorization rule name")
    rk.add_argument("--hc", metavar="HC", help="the rule is on this HC (else on the namespace)")
    rk.add_argument("--secondary", action="store_true", help="regenerate the secondary key")
    rk.add_argument("--json", action="store_true", help="print JSON")
    return p


def endpoint_port(config: RelayConfig) -> int:
    """The TCP port of the relay's endpoint string (``ssl:9443:...``, ``tcp:port=9443``)."""
    desc = config.endpoint or DEFAULT_ENDPOINT
    parts: list[str] = []
    current = ""
    escaped = False
    for ch in desc:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    for part in parts[1:]:
        if part.startswith("port="):
            part = part[5:]
        if part.isdigit():
            return int(part)
    raise MalformedInput(f"relay config: cannot find a port in endpoint {desc.split(':')[0]}:...")


def _connection_string(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ns = Namespace.open(config)
    entity = ns.entities.get(args.hc.lower())
    if entity is None:
        raise MalformedInput(f"no hybrid connection {args.hc!r} in {args.config}")
    rule = ns.rule(args.rule, entity.name)
    if rule is None:
        raise MalformedInput(f"no rule {args.rule!r} on {entity.name!r} or the namespace")
    key = rule.secondary_key if args.secondary else rule.primary_key
    cs = connstr.build(config.namespace, entity.name, rule.name, key, endpoint_port(config))
    text = cs.render()
    if args.json:
        print(json.dumps({"connectionString": text, "namespace": cs.namespace,
                          "entityPath": entity.name, "keyName": rule.name,
                          "rights": sorted(rule.rights)}))
    else:
        print(text)
    return 0


def _regenerate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ns = Namespace.open(config)
    scope = NAMESPACE_SCOPE
    if args.hc:
        entity = ns.entities.get(args.hc.lower())
        if entity is None:
            raise MalformedInput(f"no hybrid connection {args.hc!r} in {args.config}")
        scope = entity.name.lower()
    key = ns.store.regenerate(scope, args.rule, secondary=args.secondary)
    which = "secondary" if args.secondary else "primary"
    if args.json:
        print(json.dumps({"rule": args.rule, "hc": args.hc, "key": which, "value": key}))
    else:
        print(key)
    return 0


def main(argv: list[str]) -> int:
    """Run ``hcm relay ARGV``; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    try:
        if args.command == "connection-string":
            return _connection_string(args)
        return _regenerate(args)
    except MalformedInput as e:
        print(f"hcm relay: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"hcm relay: {e.filename or ''} {e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
