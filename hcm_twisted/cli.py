# -*- test-case-name: tests.agent.test_cli -*-
"""``hcm``: manage the agent's hybrid connections.

    hcm add CONNECTION-STRING [--endpoint HOST:PORT] [--name NAME]
    hcm add --namespace NS --name HC --key-name RULE --key KEY [--endpoint HOST:PORT]
    hcm list | show NAME | remove NAME | reload | version | help [COMMAND]
    hcm relay ... | sender ... | quickstart ...

Edits the agent config (``--config PATH``, else ``$HCM_CONFIG``, else
``/etc/hcm/hcm.toml``) atomically, then asks a running agent to reload it
through its admin API.  ``--json`` prints machine-readable output.  Keys are
never printed.  Exit status: 0 fine, 1 failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, TextIO

import hcm_twisted
from hcm_twisted.agent import admin, config
from hcm_twisted.core import connstr
from hcm_twisted.core.errors import MalformedInput

DISPATCH = {
    "relay": "hcm_twisted.relay.cli",
    "sender": "hcm_twisted.sender.cli",
    "quickstart": "hcm_twisted.quickstart",
    "test": "hcm_twisted.agent.diagnose",
}
AZURE_SUFFIX = ".servicebus.windows.net"


class UsageError(Exception):
    """The command line is wrong (exit 2)."""


class CommandError(Exception):
    """The command failed (exit 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--config", "-c", metavar="PATH", default=argparse.SUPPRESS,
                        help="agent config file (default: $HCM_CONFIG or /etc/hcm/hcm.toml)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    parser = _Parser(
        prog="hcm", parents=[common],
        description="Manage the Hybrid Connection Manager agent's hybrid connections.",
        epilog="Also: 'hcm relay ...', 'hcm sender ...', 'hcm quickstart' (see their --help).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    add = sub.add_parser(
        "add", parents=[common], help="add a hybrid connection",
        description="Add a hybrid connection from a connection string ('-' reads it from stdin),"
        " or from its parts.  A namespace without a dot gets '.servicebus.windows.net'.",
    )
    add.add_argument("connection_string", nargs="?", metavar="CONNECTION-STRING")
    add.add_argument("--endpoint", metavar="HOST:PORT",
                     help="where connections go (default: the HC's user metadata)")
    add.add_argument("--name", metavar="NAME",
                     help="the HC name (default: the connection string's EntityPath)")
    add.add_argument("--namespace", metavar="NS", help="relay namespace host[:port]")
    add.add_argument("--key-name", metavar="RULE", help="shared access rule name")
    add.add_argument("--key", metavar="KEY", help="shared access key ('-' reads it from stdin)")
    add.add_argument("--replace", action="store_true",
                     help="change an existing hybrid connection (key rotation, new endpoint);"
                     " a running agent renews its tokens without dropping connections")
    sub.add_parser("list", parents=[common], help="list hybrid connections and their state")
    show = sub.add_parser("show", parents=[common], help="show one hybrid connection in detail")
    show.add_argument("name", metavar="NAME")
    remove = sub.add_parser("remove", parents=[common], help="remove a hybrid connection")
    remove.add_argument("name", metavar="NAME")
    sub.add_parser("version", parents=[common], help="print the version")
    sub.add_parser("reload", parents=[common],
                   help="ask the running agent to re-read its config (systemctl reload hcm)")
    help_ = sub.add_parser("help", parents=[common], help="show help for a command")
    help_.add_argument("topic", nargs="?", metavar="COMMAND")
    for name in DISPATCH:
        sub.add_parser(name, help=f"'hcm {name} --help' for more", add_help=False)
    parser.set_defaults(_sub=sub)
    return parser


def _config_path(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "config", None) or os.environ.get("HCM_CONFIG")
                or config.DEFAULT_CONFIG_PATH)


def _out(args: argparse.Namespace, obj: Any, text: str, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if getattr(args, "json", False):
        stream.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    elif text:
        stream.write(text.rstrip("\n") + "\n")


def _info(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")


def _read_stdin(what: str) -> str:
    line = sys.stdin.readline().strip()
    if not line:
        raise UsageError(f"{what}: nothing on stdin")
    return line


# ---- talking to the agent --------------------------------------------------


def _admin_endpoint(path: Path) -> str:
    """The admin endpoint the config names (its default when the file is missing or empty)."""
    return config.parse_document(config.read_document(path, missing_ok=True), path).admin


def _post_reload(path: Path, context: str) -> Any:
    """``POST /reload`` to the agent of ``path``; its answer.  :class:`admin.AgentNotRunning`
    when no agent answers; :class:`CommandError` (``context`` first) for the rest."""
    endpoint = config.load(path).admin
    try:
        status, body = admin.request(endpoint, "POST", "/reload")
    except admin.AdminError as e:
        raise CommandError(f"{context}could not ask the agent to reload: {e}") from None
    if status != 200:
        detail = body.get("error") if isinstance(body, dict) else None
        raise CommandError(f"{context}the agent refused to reload: {detail or f'HTTP {status}'}")
    return body


def _reload(path: Path) -> tuple[bool, str]:
    """After a config change: reload a running agent, if there is one."""
    try:
        _post_reload(path, f"saved {path}, but ")
    except admin.AgentNotRunning:
        return False, "no agent is running; the change applies when it starts"
    return True, "the running agent reloaded its config"


def _live_status(path: Path) -> list[dict[str, Any]] | None:
    """The agent's status list, or None when no agent runs."""
    endpoint = _admin_endpoint(path)
    try:
        status, body = admin.request(endpoint, "GET", "/status")
    except admin.AgentNotRunning:
        return None
    except admin.AdminError as e:
        raise CommandError(str(e)) from None
    if status != 200 or not isinstance(body, list):
        raise CommandError(f"the agent's status failed (HTTP {status})")
    return body


def _config_status(path: Path) -> list[dict[str, Any]]:
    doc = config.read_document(path, missing_ok=True)
    cfg = config.parse_document(doc, path)
    out = []
    for hc in cfg.hybrid_connections:
        out.append({
            "name": hc.name,
            "connected": False,
            "endpoint": hc.endpoint,
            "endpoint_source": "config" if hc.endpoint is not None else "metadata",
            "namespace": hc.connection_string.namespace,
            "entity": hc.entity,
            "connection_string": hc.connection_string.masked(),
            "state": "agent not running",
            "error": None,
            "workers": [],
        })
    return out


def _status(path: Path) -> tuple[list[dict[str, Any]], bool]:
    live = _live_status(path)
    if live is not None:
        return live, True
    return _config_status(path), False


# ---- commands ---------------------------------------------------------------


def _namespace_host(ns: str) -> str:
    host, port = ns.strip(), ""
    if host.count(":") == 1:
        host, port = host.split(":")
    if host and "." not in host and ":" not in host and host != "localhost":
        host += AZURE_SUFFIX
    return f"{host}:{port}" if port else host


def _cmd_add(args: argparse.Namespace) -> int:
    path = _config_path(args)
    parts = (args.namespace, args.key_name, args.key)
    try:
        if args.connection_string is not None:
            if any(p is not None for p in parts):
                raise UsageError(
                    "give either a connection string or --namespace/--key-name/--key, not both"
                )
            text = args.connection_string
            if text == "-":
                text = _read_stdin("connection string")
            cs = connstr.parse(text)
        else:
            missing = [flag for flag, value in (("--namespace", args.namespace),
                       ("--name", args.name), ("--key-name", args.key_name),
                       ("--key", args.key)) if not value]
            if missing:
                raise UsageError(
                    "give a connection string, or all of --namespace --name --key-name --key"
                    f" (missing: {' '.join(missing)})"
                )
            key = _read_stdin("key") if args.key == "-" else args.key
            cs = connstr.build(_namespace_host(args.namespace), args.name, args.key_name, key)
        hc = config.make_hybrid_connection(cs, name=args.name, endpoint=args.endpoint)
    except MalformedInput as e:
        raise UsageError(str(e)) from None
    doc = config.read_document(path, missing_ok=True)
    config.write_document(path, config.with_hybrid_connection(doc, hc, replace=args.replace))
    reloaded, message = _reload(path)
    obj = {
        "replaced" if args.replace else "added": hc.name,
        "endpoint": hc.endpoint,
        "connection_string": hc.connection_string.masked(),
        "config": str(path),
        "reloaded": reloaded,
        "message": message,
    }
    where = hc.endpoint or "the HC's user metadata"
    verb = "replaced" if args.replace else "added"
    _out(args, obj, f"{verb} {hc.name} ({hc.connection_string.masked()}) -> {where}\n{message}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    path = _config_path(args)
    doc = config.read_document(path)
    config.write_document(path, config.without_hybrid_connection(doc, args.name))
    reloaded, message = _reload(path)
    obj = {"removed": args.name, "config": str(path), "reloaded": reloaded, "message": message}
    _out(args, obj, f"removed {args.name}\n{message}")
    return 0


def _cmd_reload(args: argparse.Namespace) -> int:
    path = _config_path(args)
    try:
        body = _post_reload(path, "")
    except admin.AgentNotRunning as e:
        raise CommandError(f"no agent is running ({e})") from None
    _out(args, body, "the running agent reloaded its config")
    return 0


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def _workers_summary(item: dict[str, Any]) -> str:
    workers = item.get("workers") or []
    if not workers:
        return "-"
    up = sum(1 for w in workers if w.get("connected") or w.get("state") == "connected")
    return f"{up}/{len(workers)}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _cmd_list(args: argparse.Namespace) -> int:
    path = _config_path(args)
    items, live = _status(path)
    if getattr(args, "json", False):
        _out(args, items, "")
    elif not items:
        _out(args, None, f"no hybrid connections in {path}")
    else:
        rows = [["NAME", "CONNECTED", "ENDPOINT", "WORKERS", "NAMESPACE", "STATE"]]
        for item in items:
            rows.append([
                str(item.get("name")), _yes(item.get("connected")),
                str(item.get("endpoint") or "-"), _workers_summary(item),
                str(item.get("namespace") or "-"), str(item.get("state") or "-"),
            ])
        _out(args, None, _table(rows))
    if not live:
        _info("(no agent is running: this is the config only)")
    return 0


def _when(value: Any) -> str:
    if isinstance(value, int | float) and value > 0:
        left = value - time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
        return f"{stamp} (in {int(left)} s)" if left > 0 else f"{stamp} (expired)"
    return "-"


def _cmd_show(args: argparse.Namespace) -> int:
    path = _config_path(args)
    items, live = _status(path)
    match = [i for i in items if i.get("name") == args.name]
    if not match:
        raise CommandError(f"no hybrid connection named {args.name!r} in {path}")
    item = match[0]
    if getattr(args, "json", False):
        _out(args, item, "")
    else:
        lines = [
            f"name:              {item.get('name')}",
            f"connected:         {_yes(item.get('connected'))}",
            f"endpoint:          {item.get('endpoint') or '-'} ({item.get('endpoint_source', '?')})",
            f"namespace:         {item.get('namespace', '-')}",
            f"entity:            {item.get('entity', '-')}",
            f"connection string: {item.get('connection_string', '-')}",
            f"state:             {item.get('state', '-')}",
        ]
        if item.get("error"):
            lines.append(f"problem:           {item['error']}")
        if "token_expiry" in item:
            lines.append(f"token expiry:      {_when(item.get('token_expiry'))}")
        workers = item.get("workers") or []
        lines.append(f"workers:           {len(workers)}")
        for w in workers:
            extra = []
            for key in ("last_error", "last_exit", "reconnects", "restarts", "rejected",
                        "bytes_in", "bytes_out", "endpoint_reachable"):
                if w.get(key) not in (None, 0, "", False) or key == "endpoint_reachable" and key in w:
                    extra.append(f"{key}={w[key]}")
            lines.append(
                f"  worker {w.get('worker', '?')} pid {w.get('pid') or '-'}: {w.get('state', '?')},"
                f" open {w.get('open', 0)}, accepted {w.get('accepted', 0)}"
                + (f" ({', '.join(extra)})" if extra else "")
            )
        _out(args, None, "\n".join(lines))
    if not live:
        _info("(no agent is running: this is the config only)")
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    import twisted

    try:
        import autobahn

        ab = autobahn.__version__
    except ImportError:  # pragma: no cover
        ab = None
    obj = {
        "version": hcm_twisted.__version__,
        "python": sys.version.split()[0],
        "twisted": twisted.__version__,
        "autobahn": ab,
    }
    _out(args, obj, f"hcm-twisted {hcm_twisted.__version__} (Python {obj['python']},"
         f" Twisted {obj['twisted']}, autobahn {ab})")
    return 0


def _dispatch(command: str, rest: list[str]) -> int:
    module_name = DISPATCH[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise CommandError(
                f"'hcm {command}' is not available in this installation ({module_name} is missing)"
            ) from None
        raise
    result = module.main(rest)
    return int(result or 0)


def _first_command(argv: list[str]) -> int | None:
    """Index of the first non-option word (skipping ``--config``'s value)."""
    skip = False
    for index, word in enumerate(argv):
        if skip:
            skip = False
            continue
        if word in ("--config", "-c"):
            skip = True
            continue
        if word.startswith("-"):
            continue
        return index
    return None


def _run(argv: list[str]) -> int:
    index = _first_command(argv)
    if index is not None and argv[index] in DISPATCH:
        rest = argv[index + 1 :]
        if argv[index] == "test":
            rest = argv[:index] + rest  # hcm --config PATH [--json] test NAME
        return _dispatch(argv[index], rest)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        raise UsageError("no command given (try 'hcm help')")
    if args.command == "help":
        if args.topic is None:
            parser.print_help()
            return 0
        choices = args._sub.choices
        if args.topic not in choices:
            raise UsageError(f"no command {args.topic!r} (try 'hcm help')")
        if args.topic in DISPATCH:
            return _dispatch(args.topic, ["--help"])
        choices[args.topic].print_help()
        return 0
    handlers = {"add": _cmd_add, "remove": _cmd_remove, "list": _cmd_list, "show": _cmd_show,
                "version": _cmd_version, "reload": _cmd_reload}
    return handlers[args.command](args)


def main(argv: list[str] | None = None) -> int:
    """Run ``hcm``; returns the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    try:
        return _run(list(argv))
    except UsageError as e:
        _info(f"hcm: error: {e}")
        return 2
    except (CommandError, MalformedInput) as e:
        _info(f"hcm: {e}")
        return 1
    except SystemExit as e:  # --help from argparse
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        _info(f"hcm:{where} {e.strerror or e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
