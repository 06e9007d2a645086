"""Raw HTTP/1.1 over a socket, for what aiohttp's client refuses to send (bytes that are
not UTF-8 in a header, a request sent a byte at a time)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def raw_request(host: str, port: int, request: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send ``request`` as is and read the answer up to the end of its body; (status, body)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
        return status, body
    finally:
        writer.close()


def json_body(body: bytes) -> Any:
    return json.loads(body)
