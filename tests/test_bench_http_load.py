"""The benchmarks' lean HTTP client (bench/http_load.py) reads what servers really send:
answers split over several packets, several answers on one keep-alive connection, and it
fails loudly on what it cannot read instead of counting it."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.http_load import HttpConnection, ProtocolError


async def test_answers_on_one_connection_come_back_whole_and_in_order() -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(status=201, body=body * 5000, content_type="application/json")  # several packets

    app = web.Application()
    app.router.add_post("/echo", echo)
    async with TestServer(app) as server:
        conn = HttpConnection("127.0.0.1", server.port)
        try:
            for n in range(3):
                payload = f'{{"n":{n}}}'.encode()
                status, body = await conn.send(conn.request_bytes("POST", "/echo", {"Content-Type": "application/json"},
                                                                  payload))
                assert status == 201 and body == payload * 5000
        finally:
            conn.close()


async def test_a_chunked_answer_or_a_closed_connection_is_an_error() -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"part")
        await response.write_eof()
        return response

    async def hang_up(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.1)
        return web.Response(text="never sent")

    app = web.Application()
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/hang-up", hang_up)
    async with TestServer(app) as server:
        conn = HttpConnection("127.0.0.1", server.port)
        try:
            with pytest.raises(ProtocolError):
                await conn.send(conn.request_bytes("GET", "/chunked", {}))
            other = HttpConnection("127.0.0.1", server.port)
            with pytest.raises(ConnectionError):
                await other.send(other.request_bytes("GET", "/hang-up", {}))
            other.close()
        finally:
            conn.close()
