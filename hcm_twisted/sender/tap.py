# -*- test-case-name: tests.sender.test_config -*-
"""``twistd -n hcm-sender --config PATH``: forward local ports through Hybrid Connections."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.python import usage

from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.sender import config as _config


class Options(usage.Options):
    synopsis = "--config PATH"
    longdesc = (
        "Listen on local ports (one per hybrid connection) and forward every "
        "connection through the relay to a listening hcm agent."
    )
    optParameters = [
        ["config", "c", None, "the sender config file (TOML), e.g. etc/hcm-sender.toml"],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config PATH is required")
        try:
            self["loaded"] = _config.load(self["config"])
        except MalformedInput as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Any, reactor: Any = None) -> service.IService:
    from hcm_twisted.core import logging as hcm_logging
    from hcm_twisted.sender.forwarder import SenderService

    loaded = options["loaded"]  # checked by postOptions
    sender = SenderService(loaded, reactor=reactor)
    return hcm_logging.configure(options, sender, loaded.log_format, loaded.log_level)
