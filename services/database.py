"""The connection pool every HTTP service process uses.

asyncpg's default pool sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
RESET ALL;`` every time a connection goes back to the pool: one more round trip and about
7% of the API server's CPU per append, plus PostgreSQL's work to run it (measured with
py-spy under ``bench/append.py``'s load, docs/performance.md). These processes leave no
session state on a pooled connection: no SET (only SET LOCAL, inside transactions), no
LISTEN, no cursor outside its transaction, and a session advisory lock only on a
connection held until it is unlocked (the import's tenant lock, which ends the connection
if the unlock fails). asyncpg still rolls back a transaction left open on release. The
projector's worker and the relay, which do hold session advisory locks on their own
connections, keep asyncpg's default.
"""

from __future__ import annotations

import asyncpg


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to reset (see the module's docstring)."""


async def create_pool(url: str, *, min_size: int, max_size: int) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, reset=_keep_session)
    assert pool is not None
    return pool
