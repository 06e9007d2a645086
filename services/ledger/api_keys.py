"""API keys for machines and admins: ``clk_<key_id>_<secret>``.

Only SHA-256 of the secret is stored (256 random bits need no slow hash); the whole key
is shown once, when issued. Lookups compare digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Final

import asyncpg
import msgspec

from schemas.api import ApiKeyIssued
from schemas.events import Actor
from services.ledger.store import translate_errors

PREFIX: Final = "clk_"
ROLES: Final = ("operator", "admin", "staff", "auditor", "sender", "importer", "marketing")
_ACTOR_KIND: Final = {
    "operator": "operator", "admin": "staff", "staff": "staff", "auditor": "api", "sender": "api", "importer": "importer",
    "marketing": "api",
}


class Principal(msgspec.Struct, frozen=True):
    key_id: str
    tenant_id: str | None
    role: str

    def actor(self) -> Actor:
        return Actor(kind=_ACTOR_KIND[self.role], id=f"key:{self.key_id}")  # type: ignore[arg-type]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


_KEY_ID: Final = re.compile(r"[0-9a-f]{1,32}")
_SECRET: Final = re.compile(r"[A-Za-z0-9_-]{1,100}")


def split_key(raw: str) -> tuple[str, str] | None:
    """(key id, secret) of a key in the shape :func:`issue_key` makes, else None. Anything
    else (non-ASCII bytes, a NUL, an overlong secret) is simply not a key: it must answer
    401 like any unknown key, never reach the database (asyncpg refused a NUL: a 500)."""
    if not raw.startswith(PREFIX):
        return None
    rest = raw[len(PREFIX):]
    key_id, sep, secret = rest.partition("_")
    if not sep or not _KEY_ID.fullmatch(key_id) or not _SECRET.fullmatch(secret):
        return None
    return key_id, secret


async def issue_key(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str | None, role: str, label: str = "") -> ApiKeyIssued:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    with translate_errors():
        await conn.execute(
            "INSERT INTO ledger.api_keys (key_id, tenant_id, role, label, secret_hash) VALUES ($1, $2, $3, $4, $5)",
            key_id, tenant_id, role, label, _digest(secret),
        )
    return ApiKeyIssued(key_id=key_id, key=f"{PREFIX}{key_id}_{secret}", role=role, tenant_id=tenant_id, label=label)



async def revoke_labelled(conn: asyncpg.Connection | asyncpg.Pool, label: str) -> int:
    """Revoke every live key with this label (the dev stack's demo keys, new at each
    start); returns how many. A running KeyRing stops accepting them within its ttl."""
    with translate_errors():
        done = await conn.execute(
            "UPDATE ledger.api_keys SET revoked_at = now() WHERE label = $1 AND revoked_at IS NULL", label)
    return int(done.split()[-1])

class KeyRing:
    """Authenticates keys, with a short cache so a hot client costs no query per request.
    A revoked key stops working within ``ttl`` seconds."""

    def __init__(self, pool: asyncpg.Pool, ttl: float = 10.0) -> None:
        self._pool = pool
        self._ttl = ttl
        self._cache: dict[str, tuple[float, bytes, Principal]] = {}

    async def authenticate(self, raw: str) -> Principal | None:
        parts = split_key(raw)
        if parts is None:
            return None
        key_id, secret = parts
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is None or cached[0] < now:
            with translate_errors():
                row = await self._pool.fetchrow(
                    "SELECT tenant_id, role, secret_hash FROM ledger.api_keys WHERE key_id = $1 AND revoked_at IS NULL",
                    key_id,
                )
            if row is None:
                self._cache.pop(key_id, None)
                hmac.compare_digest(_digest(secret), bytes(32))  # same work either way
                return None
            cached = (now + self._ttl, bytes(row["secret_hash"]), Principal(key_id, row["tenant_id"], row["role"]))
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = cached
        if not hmac.compare_digest(_digest(secret), cached[1]):
            return None
        return cached[2]

    async def revoke(self, key_id: str, tenant_id: str) -> bool:
        with translate_errors():
            done = await self._pool.execute(
                "UPDATE ledger.api_keys SET revoked_at = now() WHERE key_id = $1 AND tenant_id = $2 AND revoked_at IS NULL",
                key_id, tenant_id,
            )
        self._cache.pop(key_id, None)
        return done.endswith(" 1")
