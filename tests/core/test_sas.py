"""Tests for hcm_twisted.core.sas."""

import base64
import hashlib
import hmac
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.core import sas
from hcm_twisted.core.errors import MalformedInput

KEY = "bGlzdGVuLWtleS1mb3ItdGVzdHMtb25seS0xMTExMTE="
KEY2 = "c2Vjb25kYXJ5LWtleS1mb3ItdGVzdHMtb25seS0yMjI="
LISTEN = sas.Rule("defaultListener", KEY, KEY2, frozenset({"Listen"}))
SEND = sas.Rule("defaultSender", "c2VuZA==", "", frozenset({"Send"}))
MANAGE = sas.Rule("Root", "cm9vdA==", "", frozenset({"Manage"}))
NOW = 1_800_000_000


class MintTests(SynchronousTestCase):
    def test_known_answer(self) -> None:
        """The signature is HMAC-SHA256 over 'encoded\\nse' keyed with the key *text*."""
        token = sas.mint("http://ns/hc1/", "defaultListener", KEY, lifetime=100, now=NOW)
        encoded = "http%3A%2F%2Fns%2Fhc1%2F"
        expected = base64.b64encode(
            hmac.new(KEY.encode(), f"{encoded}\n{NOW + 100}".encode(), hashlib.sha256).digest()
        ).decode()
        self.assertEqual(
            token,
            f"SharedAccessSignature sr={encoded}&sig={quote(expected, safe='')}&se={NOW + 100}&skn=defaultListener",
        )

    def test_parse(self) -> None:
        token = sas.parse(sas.mint("http://ns/hc1/", "r", KEY, lifetime=5, now=NOW))
        self.assertEqual((token.audience, token.skn, token.expiry), ("http://ns/hc1/", "r", NOW + 5))
        self.assertEqual(sas.expiry_of(sas.mint("http://ns/", "r", KEY, 7, now=NOW)), NOW + 7)

    def test_parse_any_field_order_and_case(self) -> None:
        token = sas.parse("sharedaccesssignature SIG=abc&SE=12&SKN=r&SR=http%3a%2f%2fns")
        self.assertEqual((token.sig, token.se, token.skn, token.audience), ("abc", "12", "r", "http://ns"))

    def test_repr_hides_signature(self) -> None:
        text = sas.mint("http://ns/hc1/", "r", KEY, now=NOW)
        self.assertNotIn(sas.parse(text).sig, repr(sas.parse(text)))

    def test_malformed(self) -> None:
        for text, needle in [
            ("Bearer x", "does not start"),
            ("SharedAccessSignature sr=a&sig=b&se=1", "'skn' is missing"),
            ("SharedAccessSignature sr=a&sig=b&se=soon&skn=r", "not a Unix time"),
            ("SharedAccessSignature sr=a&sig&se=1&skn=r", "has no '='"),
        ]:
            with self.assertRaises(MalformedInput) as cm:
                sas.parse(text)
            self.assertIn(needle, str(cm.exception))


class VerifyTests(SynchronousTestCase):
    rules = [LISTEN, SEND, MANAGE]

    def verify(self, token: str | None, entity: str = "hc1", right: str = "Listen", now: float = NOW) -> sas.SasToken:
        return sas.verify(token, self.rules, ["localhost"], entity, right, now=now)

    def rejected(self, token: str | None, **kw: object) -> sas.TokenRejected:
        with self.assertRaises(sas.TokenRejected) as cm:
            self.verify(token, **kw)  # type: ignore[arg-type]
        return cm.exception

    def test_audience_forms_accepted(self) -> None:
        """.NET, Node and Python audiences all name hc1 (scheme, port, trailing / ignored)."""
        for aud in ["http://localhost/hc1/", "http://localhost:443/hc1", "https://localhost:9443/hc1",
                    "sb://LOCALHOST/HC1", "http://localhost/", "http://localhost", "localhost/hc1"]:
            token = sas.mint(aud, "defaultListener", KEY, 60, now=NOW)
            self.assertEqual(self.verify(token).skn, "defaultListener", aud)

    def test_lowercase_hex_escapes(self) -> None:
        """A token signed over lower-case escapes verifies (sr is hashed as sent)."""
        sr = "http%3a%2f%2flocalhost%2fhc1"
        sig = sas.sign(KEY, sr, str(NOW + 60))
        token = f"SharedAccessSignature sr={sr}&sig={quote(sig, safe='')}&se={NOW + 60}&skn=defaultListener"
        self.assertEqual(self.verify(token).audience, "http://localhost/hc1")

    def test_parent_path(self) -> None:
        token = sas.mint("http://localhost/a/", "defaultListener", KEY, 60, now=NOW)
        self.verify(token, entity="a/b")
        e = self.rejected(token, entity="ab")
        self.assertEqual(e.status, 401)

    def test_secondary_key(self) -> None:
        self.verify(sas.mint("http://localhost/hc1", "defaultListener", KEY2, 60, now=NOW))

    def test_failures(self) -> None:
        good = sas.mint("http://localhost/hc1", "defaultListener", KEY, 60, now=NOW)
        cases = [
            (None, 401, "TokenMissingOrInvalid"),
            ("garbage", 401, "TokenMissingOrInvalid"),
            (sas.mint("http://localhost/hc1", "nobody", KEY, 60, now=NOW), 401, "unknown rule"),
            (sas.mint("http://localhost/hc1", "defaultListener", "wrong", 60, now=NOW), 401, "invalid signature"),
            (good.replace(f"se={NOW + 60}", f"se={NOW + 6000}"), 401, "invalid signature"),
            (sas.mint("http://localhost/hc1", "defaultListener", KEY, -10, now=NOW), 401, "expired"),
            (sas.mint("http://evil/hc1", "defaultListener", KEY, 60, now=NOW), 401, "wrong audience"),
            (sas.mint("http://localhost/hc2", "defaultListener", KEY, 60, now=NOW), 401, "wrong audience"),
        ]
        for token, status, needle in cases:
            e = self.rejected(token)
            self.assertEqual(e.status, status)
            self.assertIn(needle, e.reason)
            if token:
                self.assertNotIn(sas.parse(good).sig, e.reason)

    def test_rights(self) -> None:
        """A Listen key cannot send, a Send key cannot listen; Manage carries both."""
        listen = sas.mint("http://localhost/hc1", "defaultListener", KEY, 60, now=NOW)
        send = sas.mint("http://localhost/hc1", "defaultSender", "c2VuZA==", 60, now=NOW)
        root = sas.mint("http://localhost/", "Root", "cm9vdA==", 60, now=NOW)
        self.assertEqual(self.rejected(listen, right="Send").status, 403)
        self.assertEqual(self.rejected(send, right="Listen").status, 403)
        self.verify(send, right="Send")
        self.verify(root, right="Send")
        self.verify(root, right="Listen")

    def test_grace(self) -> None:
        token = sas.mint("http://localhost/hc1", "defaultListener", KEY, 0, now=NOW)
        sas.verify(token, self.rules, ["localhost"], "hc1", "Listen", now=NOW + 3, grace=5)
        self.rejected(token, now=NOW + 3)


class PropertyTests(SynchronousTestCase):
    @given(st.text(max_size=200))
    def test_parse_only_raises_malformed(self, text: str) -> None:
        try:
            sas.parse(text)
        except MalformedInput:
            pass

    @given(st.text(max_size=200))
    def test_verify_only_raises_rejected(self, text: str) -> None:
        try:
            sas.verify("SharedAccessSignature " + text, [LISTEN], ["localhost"], "hc1", "Listen", now=NOW)
        except sas.TokenRejected as e:
            self.assertIn(e.status, (401, 403))

    @given(st.from_regex(r"[a-z0-9]{1,12}(/[a-z0-9]{1,8}){0,2}", fullmatch=True),
           st.integers(1, 10**6), st.text(min_size=1, max_size=40))
    def test_mint_verify_round_trip(self, entity: str, lifetime: int, key: str) -> None:
        rule = sas.Rule("r", key, "", frozenset({"Send"}))
        token = sas.mint(sas.audience_for("localhost", entity), "r", key, lifetime, now=NOW)
        self.assertEqual(sas.verify(token, [rule], ["localhost"], entity, "Send", now=NOW).expiry, NOW + lifetime)
