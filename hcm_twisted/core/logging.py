# -*- test-case-name: tests.core.test_logging -*-
"""Log output for the three programs: text or JSON lines, a level, and redaction.

Every line goes through :func:`redact` last, whatever produced it (our code,
Twisted, autobahn, a traceback): a safety net that masks anything looking like
a key or signature.  It is a net, not a licence: code still must not log
secrets.

Use from a tap's ``makeService``::

    from hcm_twisted.core import logging as hcm_logging

    def makeService(options):
        config = load(options["config"])
        service = build(config)
        return hcm_logging.configure(options, service, config.log_format, config.log_level)

:func:`configure` makes the runner log through :func:`make_observer`, under
both ``twist`` (``python -m twisted PLUGIN``: it sets the runner's
``fileLogObserverFactory`` and ``logLevel``, so the configuration wins over
``--log-format``/``--log-level``) and ``twistd`` (it sets the application's
``ILogObserver`` component, writing to ``--logfile`` when one is given, else
standard output).  Stand-alone code calls :func:`start`.

JSON lines: one object per line with ``time`` (ISO 8601, UTC), ``level``,
``namespace``, ``message`` (the formatted text) and, when the event had one,
``traceback``, plus the event's own simple fields (strings, numbers, booleans)
except any whose name looks like a secret.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any

from twisted.application.service import IService, MultiService
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogBeginner,
)
from twisted.python.components import Componentized
from zope.interface import implementer

from hcm_twisted.core.errors import MalformedInput

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

_LEVEL_ALIASES = {"warning": "warn", "fatal": "critical"}

# (pattern, replacement) applied in order; each keeps the label and masks the value.
_REDACTIONS: list[tuple[re.Pattern[str], str]] = [
    # Connection-string fields: SharedAccessKey=...; SharedAccessSignature=...
    (re.compile(r"(SharedAccessKey\s*=\s*)[^;\s\"'&,]+", re.I), r"\1***"),
    (re.compile(r"(SharedAccessSignature\s*=\s*)[^;\s\"']+", re.I), r"\1***"),
    # A SAS token: "SharedAccessSignature sr=..&sig=..&se=..&skn=.." (also URL-encoded).
    (re.compile(r"(SharedAccessSignature(?:\s+|%20|\+))[^\s\"',;]+", re.I), r"\1***"),
    # Query parameters and fields carrying tokens or signatures.
    (re.compile(r"((?:^|[?&\s;\"'(,])sb-hc-token=)[^&\s\"']+", re.I), r"\1***"),
    (re.compile(r"(\bsig(?:=|%3D))[^&\s\"',;]+", re.I), r"\1***"),
    (re.compile(r"(ServiceBusAuthorization[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+", re.I), r"\1***"),
    # Keys in TOML/JSON/kwargs: primary-key = "...", "secondaryKey": "...".
    (
        re.compile(
            r"((?:primary|secondary)[-_]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]+", re.I
        ),
        r"\1***",
    ),
    # HTTP credentials: Authorization headers and user:password@ in URLs.
    (re.compile(r"((?:Proxy-)?Authorization\s*:\s*(?:Basic|Bearer)\s+)\S+", re.I), r"\1***"),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@", re.I), r"\1***@"),
]

_SECRET_FIELD = re.compile(r"key|secret|token|sig|password|authorization|credential", re.I)


#: Every pattern above needs one of these (same case-insensitive matching): a line with
#: none of them is returned as it is, after one scan instead of one per pattern.
_MAYBE_SECRET = re.compile(r"sharedaccess|sb-hc-token|sig|authorization|key|://", re.I)


def redact(text: str) -> str:
    """``text`` with keys, signatures, tokens and passwords replaced by ``***``."""
    if _MAYBE_SECRET.search(text) is None:
        return text
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _is_level(value: object) -> bool:
    try:
        return LogLevel.lookupByName(value.name) is value  # type: ignore[attr-defined]
    except (AttributeError, ValueError, TypeError):
        return False


def parse_level(name: str | LogLevel, what: str = "log-level") -> LogLevel:
    """``"debug"``, ``"info"``, ``"warn"`` (or ``"warning"``), ``"error"``, ``"critical"``."""
    if not isinstance(name, str) and _is_level(name):
        return name
    if not isinstance(name, str):
        raise MalformedInput(f"{what}: must be one of {', '.join(LOG_LEVELS)}")
    key = name.strip().lower()
    key = _LEVEL_ALIASES.get(key, key)
    if key not in LOG_LEVELS:
        raise MalformedInput(
            f"{what}: {name!r} is not a level (one of {', '.join(LOG_LEVELS)})"
        )
    return LogLevel.levelWithName(key)


def check_format(name: str, what: str = "log-format") -> str:
    """``"text"`` or ``"json"``; :class:`MalformedInput` else."""
    if name not in LOG_FORMATS:
        raise MalformedInput(f"{what}: {name!r} is not one of {', '.join(LOG_FORMATS)}")
    return name


def _timestamp(event: LogEvent) -> str:
    t = event.get("log_time")
    if not isinstance(t, int | float):
        return ""
    dt = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_text(event: LogEvent) -> str | None:
    """One classic Twisted text line (with traceback), redacted."""
    text = formatEventAsClassicLogText(event)
    return redact(text) if text else None


def _namespace(event: LogEvent) -> str:
    namespace = event.get("log_namespace")
    if not namespace or namespace == "log_legacy":  # twisted.python.log.msg: use its system
        system = event.get("log_system")
        return str(system) if system and system != "-" else str(namespace or "-")
    return str(namespace)


def format_json(event: LogEvent) -> str:
    """One JSON object on one line, redacted."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _timestamp(event),
        "level": level.name if level is not None and _is_level(level) else "info",
        "namespace": _namespace(event),
        "message": redact(formatEvent(event)),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = redact(failure.getTraceback())
        except Exception:  # pragma: no cover (a broken failure object)
            record["traceback"] = "(unformattable traceback)"
    for name, value in event.items():
        if name.startswith("log_") or name in record or _SECRET_FIELD.search(name):
            continue
        if isinstance(value, str):
            record[name] = redact(value)
        elif isinstance(value, bool | int | float) or value is None:
            record[name] = value
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


@implementer(ILogObserver)
class _StreamObserver:
    def __init__(self, stream: IO[str], formatter: Callable[[LogEvent], str | None]) -> None:
        self._stream = stream
        self._formatter = formatter

    def __call__(self, event: LogEvent) -> None:
        try:
            text = self._formatter(event)
        except Exception:
            text = redact(f"(unformattable log event: {event.get('log_format')!r})") + "\n"
        if text:
            self._stream.write(text)
            self._stream.flush()


def make_observer(
    log_format: str = "text", log_level: str | LogLevel = "info", stream: IO[str] | None = None
) -> ILogObserver:
    """An observer writing redacted ``text`` or ``json`` lines at ``log_level`` and above."""
    formatter = format_json if check_format(log_format) == "json" else format_text
    out = _StreamObserver(stream if stream is not None else sys.stdout, formatter)
    predicate = LogLevelFilterPredicate(defaultLogLevel=parse_level(log_level))
    return FilteringLogObserver(out, [predicate])


def start(
    log_format: str = "text", log_level: str | LogLevel = "info", stream: IO[str] | None = None
) -> ILogObserver:
    """Begin global logging to ``stream`` (standard output) for stand-alone programs."""
    observer = make_observer(log_format, log_level, stream)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    return observer


class _LogConfiguredService(MultiService):
    """Sets the twistd application's ``ILogObserver`` when it becomes our parent."""

    def __init__(self, observer_factory: Callable[[], ILogObserver]) -> None:
        super().__init__()
        self._observer_factory = observer_factory

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, self._observer_factory())
        super().setServiceParent(parent)


def configure(
    options: Mapping[str, Any] | Any,
    service: IService,
    log_format: str = "text",
    log_level: str | LogLevel = "info",
) -> IService:
    """Route the runner's logging through :func:`make_observer`; returns the service to run.

    ``options`` are the plugin's options (their ``parent`` is the runner's);
    ``service`` is what ``makeService`` built.  Checks both settings first
    (:class:`MalformedInput` names the key).
    """
    check_format(log_format)
    level = parse_level(log_level)
    runner = getattr(options, "parent", None)
    if runner is not None and "fileLogObserverFactory" in runner:  # twist
        runner["fileLogObserverFactory"] = lambda stream: make_observer(log_format, level, stream)
        runner["logLevel"] = level
        return service

    def twistd_observer() -> ILogObserver:
        logfile = runner.get("logfile") if runner is not None else None
        if logfile and logfile != "-":
            return make_observer(log_format, level, open(logfile, "a", encoding="utf-8"))  # noqa: SIM115
        return make_observer(log_format, level, sys.stdout)

    wrapper = _LogConfiguredService(twistd_observer)
    service.setServiceParent(wrapper)
    return wrapper
