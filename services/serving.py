"""Running an aiohttp server in one or more processes on one port (``--workers N``).

A Python server process uses at most one core (one event loop, one GIL). With more than
one worker, every process binds the same port with ``SO_REUSEPORT`` and the kernel spreads
the connections over them; this process is one of them and the others are its children
(started with ``spawn``, so each builds its own app, pool and writer; they end with it).
Nothing that must be shared lives in a worker's memory: the event store orders writers
of all processes with its head lock (docs/event-store.md), and the relay runs in one
process at a time (its advisory lock).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable

ServeOne = Callable[[str, int, bool], None]  # (host, port, reuse_port): serves until stopped


def serve_processes(serve_one: ServeOne, host: str, port: int, workers: int, name: str) -> None:
    """Serve in ``workers`` processes; ``serve_one`` must be a module-level function
    (the children import it)."""
    if workers < 1:
        raise SystemExit("consent-ledger: --workers must be at least 1")
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=serve_one, args=(host, port, True), daemon=True, name=f"{name}-{i}")
                for i in range(1, workers)]
    for child in children:
        child.start()
    try:
        serve_one(host, port, workers > 1)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.join(10)


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
