"""Running an aiohttp server in one or more processes on one port (``--workers N``).

A Python server process uses at most one core (one event loop, one GIL). With more than
one worker, this process only supervises: it starts ``N`` worker processes (``spawn``, so
each builds its own app, pool and writer) that bind the same port with ``SO_REUSEPORT``,
and the kernel spreads the connections over them. Nothing that must be shared lives in a
worker's memory: the event store orders writers of all processes with its head locks
(docs/event-store.md), and the relay runs in one process at a time (its advisory lock).

The workers live and die as one service: when one exits, the supervisor stops the others
and exits non-zero, so that whatever runs the service (systemd, Compose, Kubernetes)
restarts all of it, instead of the port going on with fewer workers unnoticed.

Their Prometheus metrics are one set: each worker keeps its samples in a file of
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, a directory the
supervisor makes for this run and removes after it), and ``/metrics`` of any worker adds
them all up (:meth:`services.ledger.metrics.LedgerMetrics.exposition`). Without it a
scrape answered for whichever process the kernel picked, and counters jumped between
them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import web

from services.errors import LedgerError

if TYPE_CHECKING:
    from services.settings import Settings

log = structlog.get_logger(__name__)

ServeOne = Callable[[str, int, bool], None]  # (host, port, reuse_port): serves until stopped

# prometheus_client reads it when it is first imported: a spawned worker gets it from its
# environment before it imports anything.
METRICS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


class _Stop(Exception):
    """SIGTERM or SIGINT reached the supervisor: raised by its signal handler to end its
    wait for the workers, caught in :func:`serve_processes`; never an answer to anyone."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def serve_processes(serve_one: ServeOne, host: str, port: int, workers: int, name: str) -> int:
    """Serve in ``workers`` processes; ``serve_one`` must be a module-level function (the
    workers import it). Returns the exit code: 0 after SIGTERM or SIGINT, 1 when a worker
    stopped on its own."""
    if workers < 1:
        raise SystemExit("consent-ledger: --workers must be at least 1")
    if workers == 1:
        serve_one(host, port, False)
        return 0
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix=f"consent-{name}-metrics-") as metrics_dir:
        os.environ[METRICS_DIR_ENV] = metrics_dir  # the workers inherit it
        children = [context.Process(target=serve_one, args=(host, port, True), daemon=True, name=f"{name}-{i}")
                    for i in range(1, workers + 1)]
        previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for child in children:
                child.start()
            log.info("workers_started", service=name, workers=[c.pid for c in children])
            ended = wait([c.sentinel for c in children])
            gone = [c for c in children if c.sentinel in ended]
            log.error("worker_exited", service=name, pid=gone[0].pid, exitcode=gone[0].exitcode,
                      action="stopping the other workers")
            return 1
        except _Stop as stop:
            log.info("workers_stopping", service=name, signal=str(stop))
            return 0
        finally:
            for s in previous:  # one stop is enough; a second signal must not cut this short
                signal.signal(s, signal.SIG_IGN)
            for child in children:
                if child.is_alive():
                    child.terminate()  # SIGTERM: aiohttp finishes the requests in flight
            for child in children:
                child.join(15)
                if child.is_alive():
                    child.kill()
                    child.join(5)
            for s, handler in previous.items():
                signal.signal(s, handler)
            os.environ.pop(METRICS_DIR_ENV, None)


def server_gc() -> None:
    """The cyclic GC of a long-running server: what was loaded at start-up is never
    scanned again (freeze), and young collections run every 50,000 allocations instead of
    700. Requests make few reference cycles (reference counting frees the rest), and the
    default cost about 4 % of the API's CPU under load (docs/performance.md)."""
    import gc

    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop for the servers: its socket I/O in C costs less CPU per request than
    asyncio's loop (docs/performance.md); the stock loop if uvloop is missing."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# -- slow clients ------------------------------------------------------------------------

BODY_TIMEOUT: Final = web.AppKey("http_body_timeout", float)
DEFAULT_BODY_TIMEOUT: Final = 30.0


def server_options(settings: Settings) -> dict[str, Any]:
    """What ``web.run_app`` / ``web.AppRunner`` get for the API and portal servers.

    The header timeout is aiohttp's ``keepalive_timeout``: aiohttp (3.14) arms it when a
    connection opens and again after every response, and closes the connection when it
    fires while no complete request head has arrived. So a client that connects and sends
    nothing, or its headers a byte at a time, is cut off after ``http_header_timeout``
    seconds, and so is a kept-alive connection idle that long (a proxy in front must reuse
    upstream connections for less than that). aiohttp has no separate header-read
    timeout; the body timeout is ours (:func:`read_body_within`). ``lingering_time=0``:
    when an answer leaves part of the body unread (a refused key, a body that timed out),
    the connection closes after the answer, instead of aiohttp reading and discarding the
    rest for up to 10 s to keep the connection (a slow body would hold it that long)."""
    return {"keepalive_timeout": float(settings.http_header_timeout), "lingering_time": 0.0}


def set_body_timeout(app: web.Application, settings: Settings) -> None:
    app[BODY_TIMEOUT] = float(settings.http_body_timeout)


class BodyTimeout(LedgerError):
    """The client did not send the request body in time; answer 408 and close the
    connection (the API's and the portal's error middlewares do both)."""

    status = 408
    error = "request_timeout"
    field = "$"


def body_timeout(request: web.BaseRequest) -> float:
    app = getattr(request, "config_dict", None)
    return app.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT) if app is not None else DEFAULT_BODY_TIMEOUT


async def read_body_within(request: web.Request) -> bytes:
    """The whole body, within the app's body timeout (a slow-loris body holds a connection,
    a task and its buffer for as long as the client likes otherwise)."""
    if request.content.is_eof():
        # The whole body came with the headers (nearly every API call): nothing to wait
        # for, so no timer: arming and cancelling one costs 7 µs on uvloop, 2 % of the
        # server's CPU per append (docs/performance.md).
        return await request.read()
    try:
        async with asyncio.timeout(body_timeout(request)):
            return await request.read()
    except TimeoutError:
        raise BodyTimeout from None


async def post_within(request: web.Request) -> Any:
    """``request.post()`` (a form) within the app's body timeout."""
    try:
        async with asyncio.timeout(body_timeout(request)):
            return await request.post()
    except TimeoutError:
        raise BodyTimeout from None


async def chunk_within(request: web.Request, size: int) -> bytes:
    """The next piece of a streamed body (b"" at its end); a pause longer than the body
    timeout raises :class:`BodyTimeout`. For uploads that may rightly take minutes."""
    try:
        async with asyncio.timeout(body_timeout(request)):
            return await request.content.read(size)
    except TimeoutError:
        raise BodyTimeout from None
