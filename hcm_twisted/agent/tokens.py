# -*- test-case-name: tests.agent.test_supervisor -*-
"""Listen tokens: minted by the master, pushed to the workers, renewed before expiry.

The master holds the keys.  For each hybrid connection it mints a SAS token
for ``http://{namespace}/{hc}/`` valid ``token-lifetime`` seconds and renews it
at about 80 % of that lifetime, handing every fresh token to a callback (the
supervisor sends it to each worker with ``UpdateToken``).  A connection string
that carries a ``SharedAccessSignature`` instead of a key is used as is; it
cannot be renewed, so the master warns when it is about to lapse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from hcm_twisted.core import sas
from hcm_twisted.core.connstr import ConnectionString
from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.core.timers import cancel

RENEW_FRACTION = 0.8


def sign(cs: ConnectionString, lifetime: float, now: float) -> str:
    """``cs``'s token (:meth:`ConnectionString.token`); :class:`MalformedInput` when it has
    neither a signature nor a key."""
    token = cs.token(lifetime, now)
    if token is None:
        raise MalformedInput(
            "connection string: no SharedAccessKeyName/SharedAccessKey to sign a token with")
    return token


@attrs.define(eq=False)
class _Entry:
    cs: ConnectionString
    token: str
    expiry: int | None
    call: IDelayedCall | None = None

    def cancel(self) -> None:
        cancel(self.call)
        self.call = None


@attrs.define(eq=False)
class TokenManager:
    """Current listen token per HC name, renewed on ``clock``.

    ``on_renew(name, token)`` is called with every renewed token (not with
    the first one: that travels with ``SetHybridConnections``).
    """

    _log = Logger()

    clock: IReactorTime
    on_renew: Callable[[str, str], object]
    lifetime: float = 3600.0
    renew_fraction: float = RENEW_FRACTION
    _entries: dict[str, _Entry] = attrs.field(factory=dict)

    def set(self, name: str, cs: ConnectionString) -> str:
        """Track ``name``; mint a token unless one for the same ``cs`` is current."""
        entry = self._entries.get(name)
        if entry is not None and entry.cs == cs:
            return entry.token
        if entry is not None:
            entry.cancel()
        entry = self._mint(name, cs)
        self._entries[name] = entry
        return entry.token

    def retain(self, names: Iterable[str]) -> None:
        """Forget every HC not in ``names``."""
        keep = set(names)
        for name in list(self._entries):
            if name not in keep:
                self._entries.pop(name).cancel()

    def token(self, name: str) -> str | None:
        entry = self._entries.get(name)
        return entry.token if entry is not None else None

    def expiry(self, name: str) -> int | None:
        entry = self._entries.get(name)
        return entry.expiry if entry is not None else None

    def stop(self) -> None:
        for entry in self._entries.values():
            entry.cancel()
        self._entries.clear()

    def _mint(self, name: str, cs: ConnectionString) -> _Entry:
        now = self.clock.seconds()
        token = sign(cs, self.lifetime, now)
        try:
            expiry: int | None = sas.expiry_of(token)
        except MalformedInput:
            expiry = None
        entry = _Entry(cs=cs, token=token, expiry=expiry)
        if cs.sas is None:
            delay = max(1.0, self.lifetime * self.renew_fraction)
            entry.call = self.clock.callLater(delay, self._renew, name)
        elif expiry is not None:
            left = expiry - now
            if left <= 0:
                self._log.error(
                    "hybrid connection {name}: the SharedAccessSignature in its connection"
                    " string has expired; replace the connection string",
                    name=name,
                )
            else:
                warn_in = max(0.0, left - min(600.0, left * 0.2))
                entry.call = self.clock.callLater(warn_in, self._warn_lapse, name)
        return entry

    def _renew(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is None:
            return
        entry.call = None
        fresh = self._mint(name, entry.cs)
        self._entries[name] = fresh
        self._log.debug("renewed the listen token of {name}", name=name)
        try:
            self.on_renew(name, fresh.token)
        except Exception:
            self._log.failure("pushing the renewed token of {name} failed", name=name)

    def _warn_lapse(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is None:
            return
        entry.call = None
        self._log.warn(
            "hybrid connection {name}: the SharedAccessSignature in its connection string"
            " expires at {expiry} and cannot be renewed without a key",
            name=name,
            expiry=entry.expiry,
        )
