"""Authorization decisions (spec section 3)."""

from __future__ import annotations

import time
from pathlib import Path

from twisted.trial import unittest

from hcm_twisted.core import sas
from hcm_twisted.relay import auth
from hcm_twisted.relay.namespace import Namespace, parse_config
from tests.relay.common import ROOT_KEY, SEND_KEY, config_dict, listen_token, send_token


class FindTokenTests(unittest.TestCase):
    def test_precedence(self) -> None:
        self.assertEqual(auth.find_token({"sb-hc-token": "q"}, {"servicebusauthorization": "h"}),
                         ("q", "query"))
        self.assertEqual(auth.find_token({}, {"servicebusauthorization": "h",
                                              "authorization": "a"}, http=True),
                         ("h", "ServiceBusAuthorization"))
        self.assertEqual(auth.find_token({}, {"authorization": "a"}), (None, None))
        self.assertEqual(auth.find_token({}, {"authorization": "a"}, http=True),
                         ("a", "Authorization"))


class AuthorizeTests(unittest.TestCase):
    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        self.ns = Namespace.open(parse_config(config_dict(**{"token-grace": 5}), base))
        self.hc1 = self.ns.entities["hc1"]
        self.open = self.ns.entities["open"]

    def status(self, entity_name: str, right: str, token: str | None,
               now: float | None = None) -> int:
        try:
            auth.authorize(self.ns, self.ns.entities[entity_name], right, token, now)
        except sas.TokenRejected as e:
            return e.status
        return 200

    def test_decisions(self) -> None:
        now = time.time()
        self.assertEqual(self.status("hc1", auth.LISTEN, listen_token(now=now)), 200)
        self.assertEqual(self.status("hc1", auth.SEND, listen_token(now=now)), 403)
        self.assertEqual(self.status("hc1", auth.LISTEN, send_token(now=now)), 403)
        self.assertEqual(self.status("hc1", auth.SEND, None), 401)
        self.assertEqual(self.status("open", auth.SEND, None), 200)
        self.assertEqual(self.status("open", auth.LISTEN, None), 401)
        # A token given to an open HC is still checked.
        self.assertEqual(self.status("open", auth.SEND, "SharedAccessSignature sr=x"), 401)
        # Expiry with grace.
        tok = listen_token(lifetime=10, now=now)
        self.assertEqual(self.status("hc1", auth.LISTEN, tok, now + 14), 200)
        self.assertEqual(self.status("hc1", auth.LISTEN, tok, now + 16), 401)
        # Audience: another HC, another host.
        self.assertEqual(self.status("hc1", auth.LISTEN, listen_token("open", now=now)), 401)
        other = sas.mint("http://elsewhere/hc1", "defaultListener",
                         "bGlzdGVuLWtleS1mb3ItdGVzdHMtb25seS0xMTExMTE=")
        self.assertEqual(self.status("hc1", auth.LISTEN, other), 401)
        # The namespace rule covers every HC.
        root = sas.mint("http://localhost/", "RootManageSharedAccessKey", ROOT_KEY)
        self.assertEqual(self.status("hc1", auth.SEND, root), 200)
        self.assertEqual(self.status("open", auth.LISTEN, root), 200)

    def test_authorize_any(self) -> None:
        auth.authorize_any(self.ns, self.hc1, listen_token())
        auth.authorize_any(self.ns, self.hc1, send_token())
        with self.assertRaises(sas.TokenRejected) as ctx:
            auth.authorize_any(self.ns, self.hc1, None)
        self.assertEqual(ctx.exception.status, 401)


class SuffixAudienceTests(unittest.TestCase):
    """Microsoft's Node clients sign the whole sender URL, suffix included."""

    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        self.ns = Namespace.open(parse_config(config_dict(), base))
        self.hc1 = self.ns.entities["hc1"]

    def status(self, audience: str, suffix: str) -> int:
        token = send_token(now=time.time()) if not audience else sas.mint(
            audience, "defaultSender", SEND_KEY, 60)
        try:
            auth.authorize(self.ns, self.hc1, auth.SEND, token, time.time(), suffix)
        except sas.TokenRejected as e:
            return e.status
        return 200

    def test_full_url_audience(self) -> None:
        self.assertEqual(self.status("http://localhost:443/hc1/sub/path", "/sub/path"), 200)
        self.assertEqual(self.status("http://localhost/hc1/sub", "/sub/path"), 200)
        self.assertEqual(self.status("http://localhost/hc1", "/sub/path"), 200)
        self.assertEqual(self.status("", "/sub/path"), 200)

    def test_audience_below_what_is_asked_for(self) -> None:
        """A token for a deeper path does not open the HC itself or a sibling path."""
        self.assertEqual(self.status("http://localhost/hc1/sub/path", ""), 401)
        self.assertEqual(self.status("http://localhost/hc1/sub/path", "/sub/other"), 401)
        self.assertEqual(self.status("http://localhost/hc1/sub", "/subway"), 401)
