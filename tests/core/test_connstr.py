"""Tests for hcm_twisted.core.connstr."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.core import connstr
from hcm_twisted.core.errors import MalformedInput

KEY = "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LWxlYWs9PT0="
GOOD = f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=defaultListener;SharedAccessKey={KEY};EntityPath=hc1"


class ParseTests(SynchronousTestCase):
    def test_azure_form(self) -> None:
        """The portal's form parses into host, port 443, rule, key and entity."""
        cs = connstr.parse(GOOD)
        self.assertEqual(cs.host, "ns.servicebus.windows.net")
        self.assertEqual(cs.port, 443)
        self.assertEqual(cs.namespace, "ns.servicebus.windows.net")
        self.assertEqual(cs.key_name, "defaultListener")
        self.assertEqual(cs.key, KEY)
        self.assertEqual(cs.entity_path, "hc1")

    def test_key_names_case_insensitive_values_verbatim(self) -> None:
        """Key names match in any case; base64 values keep their trailing '='."""
        cs = connstr.parse(
            "endpoint=sb://NS.example/;sharedaccesskeyname=R;SHAREDACCESSKEY=ab==;entitypath=Hc"
        )
        self.assertEqual((cs.host, cs.key_name, cs.key, cs.entity_path), ("ns.example", "R", "ab==", "Hc"))

    def test_explicit_port(self) -> None:
        """An explicit port in Endpoint is honoured (how a local relay is targeted)."""
        cs = connstr.parse("Endpoint=sb://localhost:9443/;SharedAccessKeyName=a;SharedAccessKey=b;EntityPath=hc")
        self.assertEqual((cs.host, cs.port, cs.namespace), ("localhost", 9443, "localhost:9443"))

    def test_unknown_keys_and_empty_pieces_ignored(self) -> None:
        cs = connstr.parse(GOOD + ";;Foo=bar;")
        self.assertEqual(cs.entity_path, "hc1")

    def test_entity_from_endpoint_path(self) -> None:
        cs = connstr.parse("Endpoint=sb://ns/hc2;SharedAccessKeyName=a;SharedAccessKey=b")
        self.assertEqual(cs.entity_path, "hc2")

    def test_token_variant(self) -> None:
        cs = connstr.parse("Endpoint=sb://ns/;EntityPath=hc;SharedAccessSignature=SharedAccessSignature sr=x&sig=y&se=1&skn=r")
        self.assertEqual(cs.sas, "SharedAccessSignature sr=x&sig=y&se=1&skn=r")
        self.assertIsNone(cs.key)

    def test_errors_name_the_problem(self) -> None:
        cases = {
            "SharedAccessKeyName=a;SharedAccessKey=b": "Endpoint is missing",
            "Endpoint=sb://ns/;SharedAccessKeyName=a": "must come together",
            "Endpoint=sb://ns/;SharedAccessKey=b": "must come together",
            "Endpoint=notauri;SharedAccessKeyName=a;SharedAccessKey=b": "not an absolute",
            "Endpoint=sb://ns:99999/": "not a URI",
            "Endpoint=sb://ns/;Endpoint=sb://x/": "given twice",
            "Endpoint=sb://ns/;garbage": "has no '='",
            "Endpoint=sb://ns/;SharedAccessKeyName=a;SharedAccessKey=b;SharedAccessSignature=c": "cannot be combined",
        }
        for text, needle in cases.items():
            with self.assertRaises(MalformedInput) as cm:
                connstr.parse(text)
            self.assertIn(needle, str(cm.exception), text)

    def test_error_never_shows_key(self) -> None:
        """A malformed string holding a key does not echo the key."""
        with self.assertRaises(MalformedInput) as cm:
            connstr.parse(f"Endpoint=sb://ns/;{KEY[:-1]};SharedAccessKey={KEY}")
        self.assertNotIn(KEY[:20], str(cm.exception))

    def test_masked_and_repr_hide_key(self) -> None:
        cs = connstr.parse(GOOD)
        self.assertNotIn(KEY, cs.masked())
        self.assertNotIn(KEY, repr(cs))
        self.assertIn("SharedAccessKey=***", cs.masked())

    def test_render_round_trip(self) -> None:
        cs = connstr.parse(GOOD)
        self.assertEqual(connstr.parse(cs.render()), cs)

    def test_build(self) -> None:
        cs = connstr.build("localhost", "hc1", "defaultSender", "k=", port=9443)
        self.assertEqual((cs.namespace, cs.entity_path, cs.key_name, cs.key), ("localhost:9443", "hc1", "defaultSender", "k="))


_names = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=";=/?#[]@%\\"), min_size=1, max_size=20)
_keys = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=";"), min_size=1, max_size=60)
_hosts = st.from_regex(r"[a-z][a-z0-9\-]{0,20}(\.[a-z][a-z0-9]{0,10}){0,3}", fullmatch=True)


class PropertyTests(SynchronousTestCase):
    @given(_hosts, st.integers(1, 65535), _names, _names, _keys)
    def test_round_trip(self, host: str, port: int, entity: str, rule: str, key: str) -> None:
        """Anything we build parses back to the same values."""
        cs = connstr.build(host, entity, rule, key, port=port)
        again = connstr.parse(cs.render())
        self.assertEqual((again.host, again.port, again.entity_path, again.key_name, again.key),
                         (host, port, entity, rule, key))

    @given(st.text(max_size=300))
    def test_no_other_exception(self, text: str) -> None:
        """Arbitrary text either parses or raises MalformedInput, nothing else."""
        try:
            connstr.parse(text)
        except MalformedInput:
            pass


class TokenTests(SynchronousTestCase):
    """``ConnectionString.token``: the one place a connection string becomes a token."""

    def test_signed_with_the_key_for_the_entity(self) -> None:
        from hcm_twisted.core import sas

        cs = connstr.parse(f"Endpoint=sb://ns.example/;SharedAccessKeyName=r;"
                           f"SharedAccessKey={KEY};EntityPath=hc1")
        token = cs.token(600, now=1_000_000)
        assert token is not None
        rule = sas.Rule("r", KEY, "", frozenset({"Listen"}))
        parsed = sas.verify(token, [rule], ["ns.example"], "hc1", "Listen", now=1_000_100)
        self.assertEqual(int(parsed.se), 1_000_600)

    def test_own_signature_or_nothing(self) -> None:
        given = "SharedAccessSignature sr=x&sig=y&se=1&skn=r"
        with_sas = connstr.parse(f"Endpoint=sb://ns.example/;SharedAccessSignature={given};"
                                 "EntityPath=hc1")
        self.assertEqual(with_sas.token(600, now=0), given)
        anonymous = connstr.parse("Endpoint=sb://ns.example/;EntityPath=hc1")
        self.assertIsNone(anonymous.token(600, now=0))
