"""A lean HTTP/1.1 keep-alive client for load generation: the benchmark's ``wrk``.

The load generator shares this machine's two cores with the server and PostgreSQL, so
every microsecond it spends per request is taken from the thing being measured. aiohttp's
client costs about 200 µs of CPU per request here (docs/performance.md); this one writes
a pre-built request with one ``transport.write`` and parses only the status line and
``Content-Length`` of the answer, on an ``asyncio.Protocol`` (uvloop when installed), so a
request costs a few tens of µs. It does no redirects, no chunked bodies, no TLS: it is a
measuring instrument for our own server, not a general client. Anything it does not
understand is an error, never silently accepted.
"""

from __future__ import annotations

import asyncio
from typing import Final

_HEAD_END: Final = b"\r\n\r\n"
_LENGTH: Final = b"\r\ncontent-length:"


class ProtocolError(Exception):
    """The server answered something this client does not parse (e.g. a chunked body)."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None:
            return
        end = self.buffer.find(_HEAD_END)
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(_LENGTH)
        if at < 0:
            self.waiter = None
            waiter.set_exception(ProtocolError(f"no Content-Length in {head[:200]!r}"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + len(_LENGTH):stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4:total])
        del self.buffer[:total]
        self.waiter = None
        waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("the server closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)
        self.waiter = None


class HttpConnection:
    """One keep-alive connection; one request at a time (a closed-loop client)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._conn: _Connection | None = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        return conn

    def request_bytes(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send a request made by :meth:`request_bytes`; (status, body) of the answer."""
        conn = self._conn
        if conn is None or conn.lost is not None:
            conn = self._conn = await self._connect()
        assert conn.transport is not None
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        conn.waiter = waiter
        conn.transport.write(request)
        return await waiter

    def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None
