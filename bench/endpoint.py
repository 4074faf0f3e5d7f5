"""The benchmark's target server (the "endpoint" behind every path).

One port, a tiny command protocol so that every path (raw, socat, ``ssh -R``,
hcm) forwards to the same process:

- ``E``                 echo everything that follows (until the peer closes)
- ``U`` + u64 N         read N bytes, then answer ``K``; back to reading commands
- ``D`` + u64 N         send N bytes; back to reading commands

Runs as its own process (``python bench/endpoint.py PORT``) so that its CPU is
not charged to the load generator.  Prints ``ready PORT`` when listening.
"""

from __future__ import annotations

import asyncio
import resource
import struct
import sys

CHUNK = 256 * 1024
_ZEROS = memoryview(bytes(CHUNK))


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Target(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.mode = b""  # b"" = reading a command, b"E" echo, b"U" upload
        self.left = 0
        self.download_left = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1024 * 1024)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.mode == b"E":
            self.transport.write(data)
            return
        if self.mode == b"U":
            n = len(data)
            if n < self.left:
                self.left -= n
                return
            data = data[self.left:]
            self.left = 0
            self.mode = b""
            self.transport.write(b"K")
            if not data:
                return
        self.buf += data
        self._commands()

    def _commands(self) -> None:
        assert self.transport is not None
        while self.buf and self.mode == b"":
            cmd = self.buf[:1]
            if cmd == b"E":
                self.mode = b"E"
                rest, self.buf = self.buf[1:], b""
                if rest:
                    self.transport.write(rest)
                return
            if cmd in (b"U", b"D"):
                if len(self.buf) < 9:
                    return
                (n,) = struct.unpack("!Q", self.buf[1:9])
                self.buf = self.buf[9:]
                if cmd == b"U":
                    self.mode = b"U"
                    self.left = n
                    rest, self.buf = self.buf, b""
                    if rest:
                        self.data_received(rest)
                    return
                self.download_left = n
                self._pump()
                if self.download_left:
                    self.mode = b"D"  # further commands wait until the download is sent
                    return
                continue
            self.transport.close()  # unknown command
            return

    def _pump(self) -> None:
        assert self.transport is not None
        while self.download_left and not self.paused:
            n = min(CHUNK, self.download_left)
            self.transport.write(_ZEROS[:n])
            self.download_left -= n
        if not self.download_left and self.mode == b"D":
            self.mode = b""
            self._commands()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.download_left:
            self._pump()


async def main(port: int) -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Target, "127.0.0.1", port, backlog=4096)
    print(f"ready {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
