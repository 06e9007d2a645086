"""Slow clients (slow-loris): the API and the portal, run as `consent-ledger serve` and
`consent-ledger portal serve`, cut off connections that send their request head or body
too slowly (LEDGER_HTTP_HEADER_TIMEOUT, LEDGER_HTTP_BODY_TIMEOUT), and go on answering
everyone else meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp import web

from services.devservers import free_port
from services.ledger.api_keys import issue_key
from services.api.app import create_app
from services.api.portal import create_portal_app
from services.serving import server_options
from services.settings import Settings
from tests import processes
from tests.conftest import MASTER_KEY, Dealer

TIMEOUT = 2  # seconds, both timeouts
SLOW_SOCKETS = 40  # per kind, per server
DRIP = 0.25  # seconds between two bytes of a slow client


async def drip(port: int, head: bytes, body: bytes = b"") -> float | None:
    """Send ``head`` then ``body`` a byte every DRIP seconds (``head`` alone, dripped, when
    ``body`` is empty); the seconds until the server closed the connection, or None if it
    was still open when there was nothing left to send."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    slow = head if not body else body
    try:
        if body:
            writer.write(head)
            await writer.drain()
        for i in range(len(slow)):
            writer.write(slow[i:i + 1])
            try:
                await writer.drain()
                # The server closed (EOF), possibly after an answer (408): done.
                data = await asyncio.wait_for(reader.read(65536), DRIP)
                if data == b"" or reader.at_eof():
                    return time.monotonic() - started
                while not reader.at_eof():  # read the answer to its end (the server closes)
                    if await asyncio.wait_for(reader.read(65536), DRIP) == b"":
                        return time.monotonic() - started
            except TimeoutError:
                continue  # nothing from the server yet: the next byte
        return None
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - started
    finally:
        writer.close()


async def answers_meanwhile(url: str, until: float) -> list[float]:
    """GET ``url`` over fresh connections until ``until``; the latency of each (all 200)."""
    latencies = []
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < until:
            started = time.monotonic()
            async with http.get(url) as r:
                assert r.status == 200
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.2)
    return latencies


def env_for(db_url: str) -> dict[str, str]:
    env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_MASTER_KEY": MASTER_KEY,
           "LEDGER_LOG_LEVEL": "warning", "LEDGER_DB_POOL_SIZE": "3",
           "LEDGER_HTTP_HEADER_TIMEOUT": str(TIMEOUT), "LEDGER_HTTP_BODY_TIMEOUT": str(TIMEOUT),
           "LEDGER_PORTAL_RATE_PER_MINUTE": "0"}
    env.pop("LEDGER_KAFKA_BOOTSTRAP", None)
    return env


@pytest.fixture
async def servers(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[int, int]]:
    """(API port, portal port) of real server processes with 2-second timeouts."""
    api_port, portal_port = free_port(), free_port()
    env = env_for(db_url)
    log_path = tmp_path / "servers.log"
    api = processes.start(["serve", "--port", str(api_port)], env, log_path)
    portal = processes.start(["portal", "serve", "--port", str(portal_port)], env, log_path)
    try:
        await processes.wait_http_ok(f"http://127.0.0.1:{api_port}/readyz", api, log_path)
        await processes.wait_http_ok(f"http://127.0.0.1:{portal_port}/healthz", portal, log_path)
        yield api_port, portal_port
    finally:
        processes.stop(api)
        processes.stop(portal)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def slow_head(path: bytes) -> bytes:
    return (b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: " + b"x" * 200 + b"\r\n\r\n")


def slow_body_request(path: bytes, content_type: bytes) -> tuple[bytes, bytes]:
    body = b"a=" + b"b" * 400
    return (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n", body)


@pytest.mark.slow
async def test_slow_heads_and_slow_bodies_are_cut_off_and_others_are_still_answered(
        servers: tuple[int, int], db_url: str) -> None:
    api_port, portal_port = servers
    # A slow body must reach the body read: on the API that is after the key check, so
    # the slow clients carry a real (operator) key; the portal's login reads its form first.
    conn = await asyncpg.connect(db_url)
    try:
        operator = (await issue_key(conn, None, "operator", "slow clients")).key
    finally:
        await conn.close()
    started = time.monotonic()
    clients = []
    for port, path in ((api_port, b"/readyz"), (portal_port, b"/login")):
        clients += [drip(port, slow_head(path)) for _ in range(SLOW_SOCKETS)]
    head, body = slow_body_request(b"/v1/tenants", b"application/json")
    api_body = (head.replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer " + operator.encode() + b"\r\n\r\n"), body)
    portal_body = slow_body_request(b"/login", b"application/x-www-form-urlencoded")
    clients += [drip(api_port, *api_body) for _ in range(SLOW_SOCKETS // 2)]
    clients += [drip(portal_port, *portal_body) for _ in range(SLOW_SOCKETS // 2)]
    until = started + 3 * TIMEOUT
    results = await asyncio.gather(
        asyncio.gather(*clients),
        answers_meanwhile(f"http://127.0.0.1:{api_port}/readyz", until),
        answers_meanwhile(f"http://127.0.0.1:{portal_port}/login", until),
    )
    closed_after, api_latencies, portal_latencies = results
    # Each slow client would need 100 s (400 bytes at 4 a second): every one was cut off
    # after about the timeout (plus a drip and some scheduling on a busy machine).
    assert all(t is not None for t in closed_after), closed_after
    assert max(t for t in closed_after if t is not None) < TIMEOUT + 4, sorted(closed_after)  # type: ignore[type-var]
    assert min(t for t in closed_after if t is not None) >= TIMEOUT - 0.5, sorted(closed_after)  # type: ignore[type-var]
    # Meanwhile both servers answered others, promptly.
    assert len(api_latencies) >= 5 and len(portal_latencies) >= 5
    assert max(api_latencies) < 2 and max(portal_latencies) < 2, (api_latencies, portal_latencies)


async def stalled_body(host: str, port: int, head: bytes, sent: bytes) -> tuple[int, bytes, bool]:
    """Send ``head`` and the first part of a body, then nothing; (status, body, closed after)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + sent)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # to EOF: the server must close
        status = int(answer.split(b" ", 2)[1])
        return status, answer.partition(b"\r\n\r\n")[2], reader.at_eof()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def served(app: web.Application, settings: Settings) -> AsyncIterator[Address]:
    """``app`` served as `make run` serves it (an AppRunner with :func:`server_options`)."""
    runner = web.AppRunner(app, access_log=None, **server_options(settings))
    await runner.setup()
    try:
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield Address("127.0.0.1", port)
    finally:
        await runner.cleanup()


@dataclass
class Address:
    host: str
    port: int


async def test_a_stalled_body_is_answered_408_naming_the_body_and_the_connection_closed(
        settings: Settings, dealer: Dealer) -> None:
    quick = msgspec.structs.replace(settings, http_body_timeout=1, portal_rate_per_minute=0)
    async with served(create_app(quick), quick) as api, served(create_portal_app(quick), quick) as portal:
        await _stalled_bodies(api, portal, dealer)


async def _stalled_bodies(api: Address, portal: Address, dealer: Dealer) -> None:
    head = (b"POST /v1/tenants/garage-a/subjects/dealer/C1/invoices HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\nAuthorization: "
            + dealer.auth()["Authorization"].encode() + b"\r\n\r\n")
    status, body, closed = await stalled_body(api.host, api.port, head, b'{"invoice_id": "F-1"')
    assert (status, json.loads(body)["error"], json.loads(body)["field"], closed) == (408, "request_timeout", "$", True)
    upload = (b"POST /v1/tenants/garage-a/sources/dealer/imports HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
              b"Content-Length: 100000\r\nAuthorization: " + dealer.auth("importer")["Authorization"].encode()
              + b"\r\n\r\n")
    status, body, closed = await stalled_body(api.host, api.port, upload, b"customer_ref;invoice_id;invoice_date\n")
    assert (status, json.loads(body)["error"], closed) == (408, "request_timeout", True)
    head = (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100\r\n\r\n")
    status, _, closed = await stalled_body(portal.host, portal.port, head, b"tenant=garage-a&em")
    assert (status, closed) == (408, True)
