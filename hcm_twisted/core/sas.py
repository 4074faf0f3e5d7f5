# -*- test-case-name: tests.core.test_sas -*-
"""Shared Access Signature tokens (spec section 3).

``SharedAccessSignature sr={URLENC(uri)}&sig={URLENC(b64)}&se={expiry}&skn={rule}``
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable, Sequence
from urllib.parse import quote, unquote, urlsplit

import attrs

from hcm_twisted.core.errors import MalformedInput

PREFIX = "SharedAccessSignature "


class TokenRejected(Exception):
    """A token failed verification.  ``status`` is 401 or 403."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@attrs.frozen(repr=False)
class SasToken:
    """A parsed token; ``sr`` and ``se`` are kept exactly as sent."""

    sr: str
    sig: str
    se: str
    skn: str

    @property
    def expiry(self) -> int:
        return int(self.se)

    @property
    def audience(self) -> str:
        return unquote(self.sr)

    def __repr__(self) -> str:
        return f"<SasToken sr={self.audience!r} skn={self.skn!r} se={self.se}>"


def audience_for(namespace_host: str, entity: str | None = None) -> str:
    """The canonical resource URI for an entity, as the .NET client signs it."""
    host = namespace_host.lower()
    if entity:
        return f"http://{host}/{entity.strip('/')}/"
    return f"http://{host}/"


def sign(key: str, encoded_sr: str, se: str) -> str:
    """Base64 HMAC-SHA256 of ``encoded_sr + "\\n" + se`` with the key text as bytes."""
    mac = hmac.new(key.encode("utf-8"), f"{encoded_sr}\n{se}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def mint(
    resource_uri: str,
    key_name: str,
    key: str,
    lifetime: float = 3600,
    now: float | None = None,
) -> str:
    """Mint a token for ``resource_uri`` valid for ``lifetime`` seconds."""
    if now is None:
        now = time.time()
    se = str(int(now + lifetime))
    encoded = quote(resource_uri, safe="")
    sig = sign(key, encoded, se)
    return (
        f"{PREFIX}sr={encoded}&sig={quote(sig, safe='')}"
        f"&se={se}&skn={quote(key_name, safe='')}"
    )


def parse(token: str) -> SasToken:
    """Parse a token; raise :class:`MalformedInput` naming what is wrong."""
    if not isinstance(token, str):
        raise MalformedInput("token: must be text")
    if not token[: len(PREFIX)].lower() == PREFIX.lower():
        raise MalformedInput("token: does not start with 'SharedAccessSignature '")
    fields: dict[str, str] = {}
    for piece in token[len(PREFIX) :].strip().split("&"):
        if not piece:
            continue
        name, sep, value = piece.partition("=")
        if not sep:
            raise MalformedInput("token: a field has no '='")
        fields[name.strip().lower()] = value
    for name in ("sr", "sig", "se", "skn"):
        if not fields.get(name):
            raise MalformedInput(f"token: field {name!r} is missing")
    se = fields["se"]
    if not se.isascii() or not se.isdigit() or len(se) > 12:
        raise MalformedInput("token: field 'se' is not a Unix time")
    return SasToken(sr=fields["sr"], sig=fields["sig"], se=se, skn=unquote(fields["skn"]))


def expiry_of(token: str) -> int:
    """The expiry (Unix seconds) of a token; :class:`MalformedInput` if unparseable."""
    return parse(token).expiry


def audience_matches(
    audience: str, namespace_hosts: Iterable[str], entity: str
) -> bool:
    """Does ``audience`` (decoded ``sr``) cover ``entity`` on one of the hosts?

    Scheme, port, query and trailing ``/`` are ignored; the path must be empty
    (a namespace token), equal to the entity path or a parent of it on a ``/``
    boundary, compared case-insensitively (spec section 3 step 5 and 14).
    """
    text = audience.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
    except ValueError:
        return False
    hosts = {h.lower().strip("[]") for h in namespace_hosts}
    if host.lower() not in hosts:
        return False
    path = unquote(parts.path).strip("/").lower()
    target = entity.strip("/").lower()
    return path == "" or path == target or target.startswith(path + "/")


@attrs.frozen(repr=False)
class Rule:
    """An authorization rule: a name, two keys and rights."""

    name: str
    primary_key: str
    secondary_key: str
    rights: frozenset[str]

    def __repr__(self) -> str:
        return f"<Rule {self.name} rights={sorted(self.rights)}>"

    def grants(self, right: str) -> bool:
        return right in self.rights or "Manage" in self.rights


def verify(
    token_text: str | None,
    rules: Sequence[Rule],
    namespace_hosts: Iterable[str],
    entity: str,
    right: str,
    now: float | None = None,
    grace: float = 0,
) -> SasToken:
    """Check a token for ``right`` on ``entity``; raise :class:`TokenRejected`.

    ``rules`` are the ones that apply (the entity's and the namespace's).
    """
    if not token_text:
        raise TokenRejected(401, "TokenMissingOrInvalid: no authorization token was given.")
    try:
        token = parse(token_text)
    except MalformedInput as e:
        raise TokenRejected(401, f"TokenMissingOrInvalid: {e}.") from None
    rule = next((r for r in rules if r.name == token.skn), None)
    if rule is None:
        raise TokenRejected(401, "TokenMissingOrInvalid: the token names an unknown rule.")
    given = unquote(token.sig).encode("ascii", "replace")
    ok = False
    for key in (rule.primary_key, rule.secondary_key):
        if not key:
            continue
        expected = sign(key, token.sr, token.se).encode("ascii")
        # Both keys are always tried so that timing does not say which matched.
        ok |= hmac.compare_digest(expected, given)
    if not ok:
        raise TokenRejected(401, "The token has an invalid signature.")
    if now is None:
        now = time.time()
    if token.expiry + grace < now:
        raise TokenRejected(401, "ExpiredToken: the token has expired.")
    if not audience_matches(token.audience, namespace_hosts, entity):
        raise TokenRejected(
            401,
            "InvalidAudience: The authorization header contains a token with a wrong audience.",
        )
    if not rule.grants(right):
        raise TokenRejected(403, f"Unauthorized: the rule does not grant {right}.")
    return token
