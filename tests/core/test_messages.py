"""Tests for hcm_twisted.core.messages."""

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.core import messages as m
from hcm_twisted.core.errors import MalformedInput

ACCEPT = {
    "accept": {
        "address": "wss://g0.example:443/$hc/hc1?sb-hc-action=accept&sb-hc-id=4cb5_G0",
        "id": "4cb5_G0",
        "connectHeaders": {"Host": "ns:443", "Sec-WebSocket-Key": "l8fW==", "X-Custom": "v"},
        "remoteEndpoint": {"address": "10.0.0.1", "port": 1234},
    }
}


class ParseTests(SynchronousTestCase):
    def test_accept(self) -> None:
        msg = m.parse(json.dumps(ACCEPT))
        assert isinstance(msg, m.Accept)
        self.assertEqual(msg.id, "4cb5_G0")
        self.assertEqual(msg.connect_headers["Sec-WebSocket-Key"], "l8fW==")
        self.assertEqual(msg.remote_endpoint, m.RemoteEndpoint("10.0.0.1", 1234))

    def test_unknown_fields_ignored_bytes_accepted(self) -> None:
        doc = {"accept": dict(ACCEPT["accept"], newField=[1, 2], remoteEndpoint=None)}
        msg = m.parse(json.dumps(doc).encode())
        assert isinstance(msg, m.Accept)
        self.assertIsNone(msg.remote_endpoint)

    def test_unknown_type(self) -> None:
        self.assertEqual(m.parse('{"ping":{}}'), m.Unknown("ping"))

    def test_request_and_rendezvous_only(self) -> None:
        full = m.parse('{"request":{"address":"wss://a","id":"1","requestTarget":"/hc1/x?y=1",'
                       '"method":"POST","requestHeaders":{"Content-Type":"a/b"},"body":true}}')
        assert isinstance(full, m.Request)
        self.assertFalse(full.rendezvous_only)
        self.assertTrue(full.body)
        stub = m.parse('{"request":{"address":"wss://a","id":"1"}}')
        assert isinstance(stub, m.Request)
        self.assertTrue(stub.rendezvous_only)

    def test_response_numeric_string(self) -> None:
        """statusCode may come as a string ("200") or a number; body as "true"."""
        r = m.parse('{"response":{"requestId":"1","statusCode":"200","body":"true"}}')
        self.assertEqual(r, m.Response("1", 200, None, {}, True))

    def test_renew_token_repr_hides_token(self) -> None:
        r = m.parse('{"renewToken":{"token":"SharedAccessSignature sr=x&sig=SECRET&se=1&skn=r"}}')
        assert isinstance(r, m.RenewToken)
        self.assertNotIn("SECRET", repr(r))

    def test_errors(self) -> None:
        for text, needle in [
            ("not json", "not JSON"),
            ("[1]", "JSON object"),
            ("{}", "JSON object"),
            ('{"accept":{"id":"x"}}', "'address' is missing"),
            ('{"accept":"x"}', "must be an object"),
            ('{"response":{"requestId":"1","statusCode":"abc"}}', "must be a number"),
            ('{"response":{"requestId":"1","statusCode":42}}', "out of range"),
            ('{"request":{"address":"a","id":"1","body":"maybe"}}', "true or false"),
            ('{"accept":{"address":"a","id":"1","connectHeaders":[1]}}', "must be an object"),
        ]:
            with self.assertRaises(MalformedInput) as cm:
                m.parse(text)
            self.assertIn(needle, str(cm.exception), text)
        with self.assertRaises(MalformedInput):
            m.parse(b"\xff\xfe")
        with self.assertRaises(MalformedInput):
            m.parse(" " * (65 * 1024))


_text = st.text(max_size=30)
_headers = st.dictionaries(st.text(min_size=1, max_size=10), _text, max_size=4)
_accepts = st.builds(m.Accept, _text, _text, _headers,
                     st.none() | st.builds(m.RemoteEndpoint, _text, st.integers(0, 65535)))
_requests = st.builds(m.Request, _text, _text, _text, st.none() | _text, _headers, st.booleans())
_responses = st.builds(m.Response, _text, st.integers(100, 999), st.none() | _text, _headers, st.booleans())
_renews = st.builds(m.RenewToken, _text)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=20,
)


class PropertyTests(SynchronousTestCase):
    @given(_accepts | _requests | _responses | _renews)
    def test_round_trip(self, msg: m.Accept | m.Request | m.Response | m.RenewToken) -> None:
        """Every message we encode parses back to an equal value."""
        again = m.parse(m.encode(msg))
        if isinstance(msg, m.Request) and msg.method is None:
            msg = m.Request(msg.address, msg.id)
        self.assertEqual(again, msg)
        if isinstance(msg, (m.Accept, m.Request, m.Response)):
            self.assertEqual(getattr(again, "connect_headers", None), getattr(msg, "connect_headers", None))

    @given(st.sampled_from(["accept", "request", "response", "renewToken", "other"]), _json)
    def test_malformed_only_raises_our_error(self, kind: str, body: object) -> None:
        try:
            m.parse(json.dumps({kind: body}))
        except MalformedInput:
            pass

    @given(st.binary(max_size=200))
    def test_bytes_only_raise_our_error(self, data: bytes) -> None:
        try:
            m.parse(data)
        except MalformedInput:
            pass
