"""Personal portal links ``/p/{token}``: issue, rotate, revoke, look up.

A token is 33 URL-safe characters: an 11-character *selector* (64 random bits) followed by a
22-character *verifier* (128 random bits), 192 bits in all. Both halves are stored only as
SHA-256 digests (a fast hash is enough for this much randomness): the selector digest finds
the row through a unique index, and the verifier digest is compared with
:func:`hmac.compare_digest`, also against a dummy digest when no row matches, so the answer
time does not depend on how much of a guessed token was right.

The raw token exists only in the return value of :func:`issue_portal_link` /
:func:`LinkStore.issue`: a link that already exists can never be shown again. Callers that
issue links in bulk (the DMS import for mailings) either ask for new links (``rotate=True``,
which revokes the old link) or learn that a live one exists (:class:`PortalLinkExists`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import re
import secrets
from typing import TYPE_CHECKING, Final

import asyncpg
import msgspec

from schemas.events import RecordedEvent

# The store's own column list and row decoder, so the portal's one-round-trip read decodes
# events exactly as EventStore.read_stream does.
from schemas.vocabulary import is_customer_ref, is_slug, subject_stream
from services.errors import LedgerError
from services.ledger.store import EventStore, row_to_recorded, translate_errors

if TYPE_CHECKING:  # only a type here; the caller passes its own
    from services.ledger.commands import Ledger

SELECTOR_BYTES: Final = 8
VERIFIER_BYTES: Final = 16
SELECTOR_CHARS: Final = 11  # base64url of 8 bytes, no padding
TOKEN_CHARS: Final = 33
TOKEN_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{33}$")
DEFAULT_BASE_URL: Final = "http://127.0.0.1:8081"
_DUMMY_DIGEST: Final = hashlib.sha256(b"no such portal link").digest()


class PortalLinkExists(LedgerError, LookupError):
    """The subject already has a live link; its token cannot be shown again (stored hashed).

    Pass ``rotate=True`` to revoke it and issue a new one. The text names the subject (for
    the CLI); ``message`` is the API's answer, which tells what to send instead.
    """

    status = 409
    error = "portal_link_exists"
    field = "rotate"

    def __init__(self, tenant_id: str, source: str, customer_ref: str, issued_at: dt.datetime) -> None:
        super().__init__(f"subject {tenant_id}/{source}/{customer_ref} already has a portal link "
                         f"(issued {issued_at.isoformat()})")
        self.issued_at = issued_at
        self.message = (f"the subject has a live portal link (issued {issued_at.isoformat()}); its URL cannot be"
                        " shown again: send rotate=true to revoke it and issue a new one")


class UnknownSubject(LedgerError, LookupError):
    """No ledger events for this subject: there is nothing to show behind a link."""

    status = 404
    error = "unknown_subject"
    field = "ref"


class LinkTarget(msgspec.Struct, frozen=True):
    """What a live token opens."""

    link_id: int
    tenant_id: str
    source: str
    customer_ref: str
    issued_at: dt.datetime


class LinkInfo(msgspec.Struct, frozen=True):
    """A link as staff see it (never the token)."""

    link_id: int
    issued_at: dt.datetime
    issued_by: str
    revoked_at: dt.datetime | None
    revoked_by: str | None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def new_token() -> str:
    selector = secrets.token_urlsafe(SELECTOR_BYTES)
    verifier = secrets.token_urlsafe(VERIFIER_BYTES)
    assert len(selector) == SELECTOR_CHARS and len(selector) + len(verifier) == TOKEN_CHARS
    return selector + verifier


def split_token(token: str) -> tuple[bytes, bytes] | None:
    """(selector digest, verifier digest), or None if the text cannot be a token."""
    if not TOKEN_PATTERN.fullmatch(token):
        return None
    return _digest(token[:SELECTOR_CHARS]), _digest(token[SELECTOR_CHARS:])


def portal_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/p/{token}"


class LinkStore:
    """The ``portal.links`` table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._store = EventStore(pool)  # reads only: the partition count, a stream
        # First come, first served for the pool's connections on the hot path. asyncpg's pool
        # lets a newly arriving request take a connection that was just released to a waiter,
        # which then queues again at the back: at saturation a few pages waited ten times the
        # median. asyncio.Semaphore is FIFO and sized to the pool, so open() never waits inside it.
        self._fair = asyncio.Semaphore(pool.get_max_size())

    async def lookup(self, token: str) -> LinkTarget | None:
        """The subject a live token opens, or None (unknown, malformed or revoked alike)."""
        parts = split_token(token)
        if parts is None:
            return None
        selector_hash, verifier_hash = parts
        with translate_errors():
            row = await self._pool.fetchrow(
                "SELECT link_id, verifier_hash, tenant_id, source, customer_ref, issued_at, revoked_at"
                " FROM portal.links WHERE selector_hash = $1",
                selector_hash,
            )
        stored = bytes(row["verifier_hash"]) if row is not None else _DUMMY_DIGEST
        matches = hmac.compare_digest(stored, verifier_hash)
        if row is None or not matches or row["revoked_at"] is not None:
            return None
        return LinkTarget(row["link_id"], row["tenant_id"], row["source"], row["customer_ref"], row["issued_at"])

    async def open(self, token: str) -> tuple[LinkTarget, list[RecordedEvent]] | None:
        """The subject a live token opens and its stream, in ONE round trip (the portal page's
        hot path), or None exactly when :meth:`lookup` would answer None.

        The row is found by the selector digest and the verifier is checked in Python with
        :func:`hmac.compare_digest` (against the dummy digest when no row matches), as in
        :meth:`lookup`. The subject's events come from the same statement: a lateral read of
        ``ledger.events`` by stream id, ordered by version, skipped for a revoked link. The
        stream id is built in SQL the way :func:`schemas.vocabulary.subject_stream` builds it;
        if that ever disagreed, the events would be read again through the store (checked
        below), so the page can never show another stream or an empty one by mistake.
        """
        parts = split_token(token)
        if parts is None:
            return None
        selector_hash, verifier_hash = parts
        async with self._fair:
            with translate_errors():
                rows = await self._pool.fetch(
                    "SELECT l.link_id, l.verifier_hash, l.tenant_id AS link_tenant_id, l.source, l.customer_ref,"
                    " l.issued_at, l.revoked_at, e.*"
                    " FROM portal.links l LEFT JOIN LATERAL ("
                    + EventStore.stream_subquery(
                        "l.tenant_id", "'subject/' || l.tenant_id || '/' || l.source || '/' || l.customer_ref", "$2",
                        "l.revoked_at IS NULL")
                    + ") e ON true"
                    " WHERE l.selector_hash = $1",
                    selector_hash, await self._store.partitions(),
                )
        row = rows[0] if rows else None
        stored = bytes(row["verifier_hash"]) if row is not None else _DUMMY_DIGEST
        matches = hmac.compare_digest(stored, verifier_hash)
        if row is None or not matches or row["revoked_at"] is not None:
            return None
        target = LinkTarget(row["link_id"], row["link_tenant_id"], row["source"], row["customer_ref"],
                            row["issued_at"])
        stream = subject_stream(target.tenant_id, target.source, target.customer_ref)
        if row["stream_id"] != stream:  # no events joined (or a different stream id format)
            return target, await self._store.read_stream(stream)
        return target, [row_to_recorded(r) for r in rows]

    async def live(self, tenant_id: str, source: str, customer_ref: str) -> LinkInfo | None:
        with translate_errors():
            row = await self._pool.fetchrow(
                "SELECT link_id, issued_at, issued_by, revoked_at, revoked_by FROM portal.links"
                " WHERE tenant_id = $1 AND source = $2 AND customer_ref = $3 AND revoked_at IS NULL",
                tenant_id, source, customer_ref,
            )
        return None if row is None else LinkInfo(**dict(row))

    async def history(self, tenant_id: str, source: str, customer_ref: str) -> list[LinkInfo]:
        with translate_errors():
            rows = await self._pool.fetch(
                "SELECT link_id, issued_at, issued_by, revoked_at, revoked_by FROM portal.links"
                " WHERE tenant_id = $1 AND source = $2 AND customer_ref = $3 ORDER BY link_id DESC LIMIT 20",
                tenant_id, source, customer_ref,
            )
        return [LinkInfo(**dict(r)) for r in rows]

    async def issue(self, tenant_id: str, source: str, customer_ref: str, *, rotate: bool, issued_by: str) -> str:
        """A new raw token for the subject (shown once). With ``rotate`` the live link is
        revoked in the same transaction; without it an existing live link raises
        :class:`PortalLinkExists`."""
        token = new_token()
        parts = split_token(token)
        assert parts is not None
        with translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                # Serialise issuers of the same subject so that "rotate" never races into
                # the unique index and "exists" is answered from a settled state.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))",
                                   f"{tenant_id}/{source}/{customer_ref}")
                live = await conn.fetchrow(
                    "SELECT link_id, issued_at FROM portal.links"
                    " WHERE tenant_id = $1 AND source = $2 AND customer_ref = $3 AND revoked_at IS NULL",
                    tenant_id, source, customer_ref,
                )
                if live is not None:
                    if not rotate:
                        raise PortalLinkExists(tenant_id, source, customer_ref, live["issued_at"])
                    await conn.execute(
                        "UPDATE portal.links SET revoked_at = now(), revoked_by = $2 WHERE link_id = $1",
                        live["link_id"], issued_by,
                    )
                await conn.execute(
                    "INSERT INTO portal.links (selector_hash, verifier_hash, tenant_id, source, customer_ref,"
                    " issued_by) VALUES ($1, $2, $3, $4, $5, $6)",
                    parts[0], parts[1], tenant_id, source, customer_ref, issued_by,
                )
        return token

    async def rotate_many(self, tenant_id: str, subjects: list[tuple[str, str]], *, issued_by: str,
                          conn: asyncpg.Connection | None = None) -> list[str]:
        """New raw tokens for many subjects at once (a mailing), each revoking the subject's
        live link: one transaction, the same per-subject advisory locks as :meth:`issue`
        (taken in a fixed order, so two bulk issuers cannot deadlock). Tokens in the order
        of ``subjects``. ``conn``: run inside the caller's transaction instead."""
        if conn is None:  # a transaction of its own
            with translate_errors():
                async with self._pool.acquire() as own, own.transaction():
                    return await self.rotate_many(tenant_id, subjects, issued_by=issued_by, conn=own)
        tokens = [new_token() for _ in subjects]
        parts = [split_token(t) for t in tokens]
        names = [f"{tenant_id}/{source}/{ref}" for source, ref in subjects]
        with translate_errors():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(n, 7))"
                               " FROM (SELECT DISTINCT n FROM unnest($1::text[]) n ORDER BY n) x", names)
            await conn.execute(
                "UPDATE portal.links l SET revoked_at = now(), revoked_by = $4 FROM unnest($2::text[], $3::text[])"
                " AS u(source, customer_ref) WHERE l.tenant_id = $1 AND l.source = u.source"
                " AND l.customer_ref = u.customer_ref AND l.revoked_at IS NULL",
                tenant_id, [x for x, _ in subjects], [r for _, r in subjects], issued_by)
            await conn.copy_records_to_table(
                "links", schema_name="portal",
                records=[(p[0], p[1], tenant_id, source, ref, issued_by)  # type: ignore[index]
                         for p, (source, ref) in zip(parts, subjects, strict=True)],
                columns=["selector_hash", "verifier_hash", "tenant_id", "source", "customer_ref", "issued_by"])
        return tokens

    async def revoke(self, tenant_id: str, source: str, customer_ref: str, *, revoked_by: str) -> bool:
        """Revoke the subject's live link; False if it had none."""
        with translate_errors():
            done = await self._pool.execute(
                "UPDATE portal.links SET revoked_at = now(), revoked_by = $4"
                " WHERE tenant_id = $1 AND source = $2 AND customer_ref = $3 AND revoked_at IS NULL",
                tenant_id, source, customer_ref, revoked_by,
            )
        return done != "UPDATE 0"


async def issue_portal_link(pool: asyncpg.Pool, tenant: str, source: str, ref: str, *, rotate: bool = False,
                            base_url: str = DEFAULT_BASE_URL, issued_by: str = "import") -> str:
    """Issue the subject's personal portal link and return its URL (the only time the raw
    token is available).

    For bulk issuing (e.g. the DMS import before a mailing): ``rotate=False`` raises
    :class:`PortalLinkExists` when the subject already has a live link (its URL cannot be
    shown again: only hashes are stored), so the caller can report "link exists" or call
    again with ``rotate=True`` to revoke the old link and get a new URL. Raises
    :class:`UnknownSubject` if the ledger holds no events for the subject and
    ``ValueError`` for ids that are not valid. ``base_url`` is the portal's public address
    (``Settings.portal_base_url``).
    """
    if not is_slug(tenant) or not is_slug(source) or not is_customer_ref(ref):
        raise ValueError("tenant/source must be slugs and ref a customer ref")
    if await EventStore(pool).stream_version(subject_stream(tenant, source, ref)) == 0:
        raise UnknownSubject(f"no ledger events for subject {tenant}/{source}/{ref}")
    token = await LinkStore(pool).issue(tenant, source, ref, rotate=rotate, issued_by=issued_by)
    return portal_url(base_url, token)


# -- what other services call (docs/layering.md, "Who owns which tables") ----------------------
# The portal owns ``portal.links``; erasure (services/audit/erasure.py), retention
# (services/audit/retention.py) and the importer's link export call these instead of
# writing their own SQL on the table.


async def live_link_refs(pool: asyncpg.Pool | asyncpg.Connection, tenant_id: str, source: str,
                         refs: list[str]) -> set[str]:
    """The customer refs among ``refs`` that have a live (not revoked) link, in one query."""
    if not refs:
        return set()
    with translate_errors():
        rows = await pool.fetch(
            "SELECT customer_ref FROM portal.links WHERE tenant_id = $1 AND source = $2"
            " AND customer_ref = ANY($3::text[]) AND revoked_at IS NULL", tenant_id, source, refs)
    return {r["customer_ref"] for r in rows}


async def drop_subject_links(conn: asyncpg.Connection, tenant_id: str, source: str, customer_ref: str) -> int:
    """Delete every link of one subject, live and revoked alike (the rows name the subject
    and who issued its links), inside the caller's transaction: erasure runs it in the
    transaction that shreds the subject's key, so the two are done together or not at
    all. Returns how many rows were deleted."""
    with translate_errors():
        done = await conn.execute(
            "DELETE FROM portal.links WHERE tenant_id = $1 AND source = $2 AND customer_ref = $3",
            tenant_id, source, customer_ref,
        )
    return int(done.split()[-1])


_ERASED_CHECK_CHUNK: Final = 5000  # subjects asked about per round trip to the ledger


async def drop_erased_subject_links(pool: asyncpg.Pool, ledger: Ledger, tenant_id: str) -> int:
    """Delete the links of the tenant's subjects that the ledger says are erased: what an
    erasure did not remove (a crash between its event and its shred, or a link issued by
    a request that checked the subject just before the erasure was appended). The
    retention job's repair. Which subjects are erased is the ledger's answer
    (:meth:`Ledger.subject_heads`, one index probe per subject), asked for the subjects
    that have a link. Returns how many rows were deleted."""
    with translate_errors():
        rows = await pool.fetch("SELECT DISTINCT source, customer_ref FROM portal.links WHERE tenant_id = $1"
                                " ORDER BY source, customer_ref", tenant_id)
    linked = [(r["source"], r["customer_ref"]) for r in rows]
    removed = 0
    for start in range(0, len(linked), _ERASED_CHECK_CHUNK):
        chunk = linked[start:start + _ERASED_CHECK_CHUNK]
        heads = await ledger.subject_heads([subject_stream(tenant_id, s, r) for s, r in chunk])
        erased = [(s, r) for s, r in chunk if heads.get(subject_stream(tenant_id, s, r), (0, False))[1]]
        if not erased:
            continue
        with translate_errors():
            done = await pool.execute(
                "DELETE FROM portal.links l USING unnest($2::text[], $3::text[]) AS u(source, customer_ref)"
                " WHERE l.tenant_id = $1 AND l.source = u.source AND l.customer_ref = u.customer_ref",
                tenant_id, [s for s, _ in erased], [r for _, r in erased])
        removed += int(done.split()[-1])
    return removed
