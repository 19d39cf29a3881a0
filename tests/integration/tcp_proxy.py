"""A TCP proxy of the tests' own, on loopback, that can cut, stall and reset connections.

It forwards bytes between a listening port and a target; the test flips its mode while
traffic flows: ``pass`` forwards, ``stall`` holds bytes (a network black hole), ``drop``
closes every connection cleanly and refuses new ones for a while, ``reset`` aborts every
connection with an RST.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field


@dataclass
class ProxyStats:
    connections: int = 0
    resets: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class TcpProxy:
    target_port: int
    mode: str = "pass"
    stats: ProxyStats = field(default_factory=ProxyStats)
    _server: asyncio.base_events.Server | None = None
    _conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = field(default_factory=set)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.cut("reset")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self, how: str) -> None:
        """Abort every live connection: ``reset`` sends RST, ``drop`` closes cleanly."""
        for a, b in list(self._conns):
            for w in (a, b):
                sock = w.get_extra_info("socket")
                if how == "reset" and sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                w.close()
            self.stats.resets += 1
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "drop":
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.stats.connections += 1
        pair = (writer, up_w)
        self._conns.add(pair)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    while self.mode == "stall":
                        await asyncio.sleep(0.05)
                    if up:
                        self.stats.bytes_up += len(data)
                    else:
                        self.stats.bytes_down += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_w, True), pump(up_r, writer, False))
        self._conns.discard(pair)
