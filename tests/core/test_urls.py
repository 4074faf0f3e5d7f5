"""Tests for hcm_twisted.core.urls."""

from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.core import connstr, urls

CS = connstr.parse("Endpoint=sb://localhost:9443/;SharedAccessKeyName=a;SharedAccessKey=b;EntityPath=hc1")
AZ = connstr.parse("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=b;EntityPath=hc1")


class UrlTests(SynchronousTestCase):
    def test_listen(self) -> None:
        self.assertEqual(urls.listen_url(CS, "id1"), "wss://localhost:9443/$hc/hc1?sb-hc-action=listen&sb-hc-id=id1")
        self.assertEqual(urls.listen_url(AZ), "wss://ns.servicebus.windows.net/$hc/hc1?sb-hc-action=listen")

    def test_connect(self) -> None:
        url = urls.connect_url(CS, suffix="x/y", token="SharedAccessSignature sr=a&sig=b")
        self.assertTrue(url.startswith("wss://localhost:9443/$hc/hc1/x/y?sb-hc-action=connect&sb-hc-token="))
        self.assertEqual(urls.query_params(url)["sb-hc-token"], "SharedAccessSignature sr=a&sig=b")

    def test_runtime(self) -> None:
        self.assertEqual(urls.runtime_url(CS), "https://localhost:9443/hc1?api-version=2016-07")

    def test_reject(self) -> None:
        url = urls.reject_url("wss://h/$hc/hc1?sb-hc-action=accept&sb-hc-id=1", 502, "Endpoint unreachable: a&b")
        params = urls.query_params(url)
        self.assertEqual((params["sb-hc-statuscode"], params["sb-hc-statusdescription"]), ("502", "Endpoint unreachable: a&b"))

    def test_strip(self) -> None:
        self.assertEqual(urls.strip_relay_params("a=1&sb-hc-token=x&SB-HC-ID=2&b=%2F"), "a=1&b=%2F")
        self.assertEqual(urls.strip_relay_params("a=1&sb-hc-token=x&SB-HC-ID=2&sb-hc-flag&b=%20"),
                         "a=1&sb-hc-flag&b=%20")

    def test_split(self) -> None:
        self.assertEqual(urls.split_ws_url("wss://h:1/$hc/x?y=1"), (True, "h", 1, "/$hc/x?y=1"))
        self.assertEqual(urls.split_ws_url("ws://h/p"), (False, "h", 80, "/p"))
