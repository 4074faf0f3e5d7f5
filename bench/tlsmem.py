"""Memory of one TLS connection, as the agent worker holds it, measured on its own.

    python bench/tlsmem.py [--conns 2000]

Makes ``--conns`` client/server pairs of pyOpenSSL connections over memory BIOs (as
Twisted's TLS transport does), completes each handshake, moves 100 bytes each way, then
drops the server side and reports what the client side keeps: glibc's ``mallinfo2``
(bytes in use) and RSS, per connection.  Twisted's client contexts have
``MODE_RELEASE_BUFFERS`` on; so does this.  It runs with OpenSSL's default key-exchange
groups (the hybrid post-quantum ``X25519MLKEM768`` first, what our clients use) and with
``X25519`` only, and with TLS 1.2, for comparison.  A script, not a test.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import subprocess
import sys
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _lib


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


def _malloc_in_use() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _server_context() -> SSL.Context:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.use_certificate(crypto.X509.from_cryptography(cert))
    ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return ctx


def _pump(a: SSL.Connection, b: SSL.Connection) -> None:
    moved = True
    while moved:
        moved = False
        for src, dst in ((a, b), (b, a)):
            try:
                data = src.bio_read(65536)
            except SSL.WantReadError:
                continue
            if data:
                dst.bio_write(data)
                moved = True


def _step(conn: SSL.Connection) -> None:
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass


def measure(conns: int, tune: Callable[[SSL.Context], None]) -> dict[str, float]:
    server_ctx = _server_context()
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    client_ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    tune(client_ctx)
    held: list[SSL.Connection] = []
    gc.collect()
    malloc0, rss0 = _malloc_in_use(), _rss()
    for _ in range(conns):
        client = SSL.Connection(client_ctx, None)
        client.set_connect_state()
        server = SSL.Connection(server_ctx, None)
        server.set_accept_state()
        for _ in range(4):
            _step(client)
            _pump(client, server)
            _step(server)
            _pump(client, server)
        client.send(b"x" * 100)
        _pump(client, server)
        server.recv(65536)
        server.send(b"y" * 100)
        _pump(client, server)
        client.recv(65536)
        held.append(client)
        del server
    gc.collect()
    out = {"malloc_kb": (_malloc_in_use() - malloc0) / conns / 1024,
           "rss_kb": (_rss() - rss0) / conns / 1024}
    del held
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # one measurement, in a child
    args = ap.parse_args()

    def x25519(ctx: SSL.Context) -> None:
        _lib.SSL_CTX_set1_curves_list(ctx._context, b"X25519")  # type: ignore[attr-defined]

    def tls12(ctx: SSL.Context) -> None:
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)

    variants: dict[str, tuple[str, Callable[[SSL.Context], None]]] = {
        "default": ("TLS 1.3, default groups (X25519MLKEM768)", lambda c: None),
        "x25519": ("TLS 1.3, X25519 only", x25519),
        "tls12": ("TLS 1.2", tls12),
    }
    if args.variant:
        print(json.dumps(measure(args.conns, variants[args.variant][1])))
        return
    print(SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode())  # type: ignore[attr-defined]
    print(f"{'client TLS connection, after a handshake':45} {'malloc KB':>10} {'RSS KB':>8}")
    for name, (label, _) in variants.items():
        # Each in a fresh process: freed memory would otherwise be reused and hide RSS.
        child = subprocess.run([sys.executable, __file__, "--conns", str(args.conns),
                                "--variant", name], check=True, capture_output=True, text=True)
        r = json.loads(child.stdout)
        print(f"{label:45} {r['malloc_kb']:10.1f} {r['rss_kb']:8.1f}")


if __name__ == "__main__":
    main()
