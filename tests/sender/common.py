"""What the sender's unit tests share: a Send connection string and config files."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

KEY = "c2VuZC1rZXktZm9yLXRlc3RzLW9ubHktMjIyMjIyMjI="
#: A Send connection string without its EntityPath value: append the HC's name.
CS_PREFIX = (f"Endpoint=sb://localhost:9443/;SharedAccessKeyName=defaultSender;"
             f"SharedAccessKey={KEY};EntityPath=")
CS = CS_PREFIX + "hc1"


def write_config(test: SynchronousTestCase, text: str) -> Path:
    """``text`` as ``hcm-sender.toml`` in a new directory of ``test`` (beside a ``ca.pem``)."""
    d = Path(test.mktemp())
    d.mkdir()
    (d / "ca.pem").write_text("not checked here")
    p = d / "hcm-sender.toml"
    p.write_text(text)
    return p
