# -*- test-case-name: tests.core.test_configfile -*-
"""Reading the programs' TOML config files, with errors that name the file and the problem."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hcm_twisted.core.errors import MalformedInput


def read_toml(path: str | Path, label: str = "", missing_ok: bool = False) -> dict[str, Any]:
    """The TOML document in ``path``; ``{}`` for a missing file when ``missing_ok``.

    Every failure is a :class:`MalformedInput` that starts with ``label`` (for example
    ``"relay config: "``) and the file's path, and says what is wrong: missing, unreadable,
    not UTF-8, or not valid TOML (with the line and column TOML reports).
    """
    p = Path(path)
    where = f"{label}{p}"
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise MalformedInput(f"{where}: no such config file") from None
    except OSError as e:
        raise MalformedInput(f"{where}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput(f"{where}: not UTF-8 text") from None
    return loads(text, where)


def loads(text: str, where: str) -> dict[str, Any]:
    """Parse TOML text; ``where`` names its origin in the error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MalformedInput(f"{where}: not valid TOML ({e})") from None
