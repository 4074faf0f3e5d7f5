# -*- test-case-name: tests.relay.test_auth -*-
"""Authorization decisions of the relay (spec section 3).

The token comes from the ``sb-hc-token`` query parameter, else the
``ServiceBusAuthorization`` header, else (HTTP only) ``Authorization``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from hcm_twisted.core.sas import SasToken, TokenRejected, verify
from hcm_twisted.relay.namespace import Entity, Namespace

LISTEN, SEND = "Listen", "Send"


def find_token(
    params: Mapping[str, str], headers: Mapping[str, str], http: bool = False
) -> tuple[str | None, str | None]:
    """``(token, where)``; ``params`` and ``headers`` have lower-case names.

    ``where`` is ``"query"``, ``"ServiceBusAuthorization"``, ``"Authorization"`` or None.
    """
    token = params.get("sb-hc-token")
    if token:
        return token, "query"
    token = headers.get("servicebusauthorization")
    if token:
        return token, "ServiceBusAuthorization"
    if http:
        token = headers.get("authorization")
        if token:
            return token, "Authorization"
    return None, None


def authorize(
    namespace: Namespace,
    entity: Entity,
    right: str,
    token: str | None,
    now: float | None = None,
    suffix: str = "",
) -> SasToken | None:
    """Check ``token`` for ``right`` on ``entity``; raise :class:`TokenRejected`.

    Senders of an entity without ``requires-client-authorization`` need no
    token (None is returned then when none was given).  A sender's ``suffix``
    (the path after the HC name) is part of the resource it asks for, so a
    token signed for the whole URL, as Microsoft's Node clients sign it, is
    accepted too: the audience may be the HC, a parent, or the full path.
    """
    if right == SEND and not entity.config.requires_client_authorization and not token:
        return None
    return verify(
        token,
        namespace.rules_for(entity),
        namespace.hosts,
        f"{entity.name}/{suffix.strip('/')}" if suffix.strip("/") else entity.name,
        right,
        now=time.time() if now is None else now,
        grace=namespace.config.token_grace,
    )


def authorize_any(
    namespace: Namespace, entity: Entity, token: str | None, now: float | None = None
) -> SasToken:
    """Any valid token for the entity's path, whatever its rights (runtime GET, spec §9)."""
    last: TokenRejected | None = None
    for right in (LISTEN, SEND):
        try:
            result = verify(
                token, namespace.rules_for(entity), namespace.hosts, entity.name, right,
                now=time.time() if now is None else now, grace=namespace.config.token_grace,
            )
            return result
        except TokenRejected as e:
            if e.status != 403:
                raise
            last = e
    assert last is not None
    raise last


__all__ = ["LISTEN", "SEND", "TokenRejected", "authorize", "authorize_any", "find_token"]
