"""Finding a customer without decrypting the whole tenant, and the contact data a
re-permission or campaign mailing needs.

Two tables, both tied to the subject's key (``REFERENCES ledger.subject_keys ON DELETE
CASCADE``), so crypto-shredding a subject (erasure, retention) removes its rows in the same
statement that deletes the key:

* ``ledger.subject_directory``: per subject, the Sealed contact of its newest event that
  carried one (a pointer copy: still encrypted with the subject's key);
* ``ledger.subject_search``: the blind index. Per normalised value (e-mail, phone, full name
  and each word of it, postcode + house number, licence plate) the first 16 bytes of
  HMAC-SHA256 under a per-tenant key derived from the master key (never stored). Equal
  values give equal digests within a tenant only; the table holds no plaintext, and a
  digest cannot be checked against a guess without the master key.

Both are filled from the ledger (events with contact data, in ledger order from a
per-tenant cursor) by :meth:`Directory.sync`, which every reader calls first: a search
sees what was recorded before it. Reading from the ledger rather than hooking every writer
(API, DMS import) means one code path, and existing data is indexed on the first sync.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Final

import asyncpg
import msgspec
import structlog

from schemas.vocabulary import parse_subject_stream
from schemas.api import Contact
from schemas.events import Sealed
from services.ledger.errors import IntegrityError
from services.ledger.partitions import partition_of
from services.ledger.store import partition_count, translate_errors
from services.ledger.subject_keys import SubjectKeys

log = structlog.get_logger(__name__)

__all__ = ["Directory", "Found", "normalise_phone", "normalise_plate", "search_terms"]

_CONTACT_EVENTS: Final = ["InvoiceRecorded", "InvoiceCorrected", "ProspectRegistered"]
_BATCH: Final = 2_000
_DIGEST_BYTES: Final = 16
_MAX_WORDS: Final = 6  # words of a name query that must all match (the longest are kept)
_contact_decoder: Final = msgspec.json.Decoder(Contact)
_sealed_decoder: Final = msgspec.json.Decoder(Sealed)
_NON_ALNUM: Final = re.compile(r"[^0-9a-z]+")
_POSTCODE_QUERY: Final = re.compile(r"^\s*(\d{4})\s*([A-Za-z]{2})\s*[,;]?\s*(\d{1,5})\s*-?\s*([A-Za-z]{0,2})\s*$")
_HOUSE_NUMBER: Final = re.compile(r"(\d{1,5})\s*-?\s*([A-Za-z]{0,2})\s*(?:[-/ ]\s*\S{1,6})?\s*$")


# -- normalising (the same for indexing and for queries) ------------------------------------


def _fold(text: str) -> str:
    """Lower case without accents, letters and digits separated by single spaces."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NON_ALNUM.sub(" ", plain).strip()


def normalise_phone(text: str) -> str:
    """Digits only, Dutch numbers in national form: "+31 6 1234 5678", "0031612345678" and
    "06-12345678" are all "0612345678"."""
    digits = "".join(ch for ch in text if ch.isdigit())
    if digits.startswith("00"):
        digits = digits[2:]
    if digits.startswith("31") and len(digits) == 11:
        digits = "0" + digits[2:]
    return digits


def normalise_plate(text: str) -> str:
    """"ab-123-c" and "AB 123 C" are "AB123C"."""
    return "".join(ch for ch in text.upper() if ch.isalnum())


def _postcode(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch.isalnum())


def index_terms(contact: Contact) -> set[tuple[str, str]]:
    """(kind, normalised value) pairs a contact is found by."""
    terms: set[tuple[str, str]] = set()
    if contact.email:
        terms.add(("email", contact.email.strip().casefold()))
    if contact.phone:
        phone = normalise_phone(contact.phone)
        if len(phone) >= 6:
            terms.add(("phone", phone))
    if contact.name:
        folded = _fold(contact.name)
        if folded:
            terms.add(("name", folded))
            terms.update(("word", w) for w in folded.split() if len(w) >= 2)
    if contact.postcode and contact.street:
        m = _HOUSE_NUMBER.search(contact.street)
        if m is not None:
            pc = _postcode(contact.postcode)
            terms.add(("address", f"{pc} {m.group(1)}"))
            if m.group(2):
                terms.add(("address", f"{pc} {m.group(1)}{m.group(2).upper()}"))
    if contact.licence_plate:
        plate = normalise_plate(contact.licence_plate)
        if plate:
            terms.add(("plate", plate))
    return terms


class Query(msgspec.Struct, frozen=True):
    """What one search text may be: any of ``exact`` finds a subject; ``words`` (a name)
    find it only all together."""

    exact: tuple[tuple[str, str], ...]
    words: tuple[str, ...]


def search_terms(text: str) -> Query:
    """The terms a free search text stands for: an e-mail address, a phone number, a
    postcode with house number, a licence plate, or (words of) a name."""
    text = text.strip()
    exact: list[tuple[str, str]] = []
    words: tuple[str, ...] = ()
    if "@" in text:
        exact.append(("email", text.casefold()))
        return Query(tuple(exact), ())
    m = _POSTCODE_QUERY.match(text)
    if m is not None:
        pc = f"{m.group(1)}{m.group(2).upper()}"
        exact.append(("address", f"{pc} {m.group(3)}{m.group(4).upper()}"))
        return Query(tuple(exact), ())
    phone = normalise_phone(text)
    if len(phone) >= 6 and re.fullmatch(r"[0-9+() -]+", text):
        exact.append(("phone", phone))
    plate = normalise_plate(text)
    if 2 <= len(plate) <= 12 and re.fullmatch(r"[A-Za-z0-9 -]+", text):
        exact.append(("plate", plate))
    folded = _fold(text)
    if folded and any(ch.isalpha() for ch in folded):
        exact.append(("name", folded))
        words = tuple(sorted({w for w in folded.split() if len(w) >= 2}))
    return Query(tuple(exact), words)


# -- the directory ------------------------------------------------------------------------


class Found(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    customer_ref: str
    contact: Contact | None  # None: no contact data (or not readable any more)


class Directory:
    """``master_key``: the deployment's current master key; the per-tenant search key is
    derived from it (after a master key rotation, run ``reindex``)."""

    def __init__(self, pool: asyncpg.Pool, keys: SubjectKeys, master_key: bytes) -> None:
        self._pool = pool
        self._keys = keys
        self._root = hmac.new(master_key, b"consent-ledger/search-index/v1", hashlib.sha256).digest()
        self._tenant_keys: dict[str, bytes] = {}
        self._partitions: int | None = None

    async def _partition(self, tenant_id: str) -> int:
        """The tenant's log partition: every query on ``ledger.events`` names it, and the
        cursor is a position in it (positions of two partitions are not comparable)."""
        if self._partitions is None:
            self._partitions = await partition_count(self._pool)  # fixed at install
        return partition_of(tenant_id, self._partitions)

    def _tenant_key(self, tenant_id: str) -> bytes:
        key = self._tenant_keys.get(tenant_id)
        if key is None:
            key = self._tenant_keys[tenant_id] = hmac.new(self._root, tenant_id.encode(), hashlib.sha256).digest()
        return key

    def digest(self, tenant_id: str, kind: str, value: str) -> bytes:
        return hmac.new(self._tenant_key(tenant_id), f"{kind}\x00{value}".encode(), hashlib.sha256).digest()[
            :_DIGEST_BYTES]

    # -- keeping up with the ledger -------------------------------------------------------

    async def sync(self, tenant_id: str) -> int:
        """Index the tenant's contact events recorded since the last sync; returns how many.
        Concurrent syncs of a tenant take turns (the cursor row is locked). When the tenant
        has no event past the cursor (the common case for a search) this is one index probe
        and no transaction."""
        partition = await self._partition(tenant_id)
        with translate_errors():
            # The tenant's newest position (a backward scan of the (log_partition, tenant_id,
            # position) index) against the cursor. (An EXISTS over "position > cursor" may be
            # planned as a sequential scan that stops at the first match: every older event
            # read first.)
            behind = await self._pool.fetchval(
                "SELECT coalesce((SELECT position FROM ledger.events WHERE log_partition = $2 AND tenant_id = $1"
                " ORDER BY position DESC LIMIT 1), 0)"
                " > coalesce((SELECT position FROM ledger.directory_cursor WHERE tenant_id = $1), 0)",
                tenant_id, partition)
        if not behind:
            return 0
        done = 0
        while True:
            read, indexed = await self._sync_batch(tenant_id)
            done += indexed
            if read < _BATCH:
                break
        if done:
            log.info("directory_synced", tenant=tenant_id, events=done)
        return done

    async def _sync_batch(self, tenant_id: str) -> tuple[int, int]:
        for attempt in range(5):
            try:
                return await self._sync_batch_once(tenant_id)
            except IntegrityError:  # the foreign key on ledger.subject_keys (translate_errors)
                if attempt == 4:
                    raise
                log.info("directory_subject_erased_meanwhile", tenant=tenant_id)  # read the batch again
        raise AssertionError("unreachable")

    async def _sync_batch_once(self, tenant_id: str) -> tuple[int, int]:
        """(events read, contact events among them). Every event of the tenant is read, so
        the cursor moves past the ones without contact data too and the check in
        :meth:`sync` stays one probe. The cursor is a position in the tenant's log
        partition, where a row not yet visible can only get a position above every visible
        one (the partition's head lock): reading in position order from it misses nothing."""
        partition = await self._partition(tenant_id)
        with translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("INSERT INTO ledger.directory_cursor (tenant_id, position) VALUES ($1, 0)"
                                   " ON CONFLICT (tenant_id) DO NOTHING", tenant_id)
                after = await conn.fetchval(
                    "SELECT position FROM ledger.directory_cursor WHERE tenant_id = $1 FOR UPDATE", tenant_id)
                rows = await conn.fetch(
                    "SELECT position, stream_id, CASE WHEN event_type = ANY($3::text[]) THEN data->'personal' END"
                    " FROM ledger.events WHERE log_partition = $5 AND tenant_id = $1 AND position > $2"
                    " ORDER BY position LIMIT $4",
                    tenant_id, after, _CONTACT_EVENTS, _BATCH, partition)
                if not rows:
                    return 0, 0
                latest: dict[str, tuple[int, Sealed]] = {}
                indexed = 0
                for position, stream_id, personal in rows:
                    if personal is None or personal == "null":
                        continue
                    indexed += 1
                    latest[stream_id] = (position, _sealed_decoder.decode(personal))
                if latest:
                    await self._write(conn, tenant_id, latest)
                await conn.execute("UPDATE ledger.directory_cursor SET position = $2 WHERE tenant_id = $1",
                                   tenant_id, rows[-1][0])
                return len(rows), indexed

    async def _write(self, conn: asyncpg.Connection, tenant_id: str, latest: dict[str, tuple[int, Sealed]]) -> None:
        streams = sorted(latest)
        # A stream without a key was erased. An erasure that deletes a key after this read
        # makes the insert below fail on the foreign key (the batch is then read again), or,
        # if it comes after the insert, its cascade removes what is written here.
        keyed = {r[0]: (r[1], bytes(r[2])) for r in await conn.fetch(
            "SELECT stream_id, key_id, wrapped_key FROM ledger.subject_keys WHERE stream_id = ANY($1::text[])",
            streams)}
        directory: list[tuple[str, str, str, str, str, str, str, int]] = []
        search: list[tuple[str, bytes]] = []
        for stream_id in streams:
            found = keyed.get(stream_id)
            parsed = parse_subject_stream(stream_id)
            if found is None or parsed is None:
                continue
            position, sealed = latest[stream_id]
            opener = self._keys.opener_for(stream_id, found[0], found[1])
            plain = opener.open(sealed)
            if plain is None:
                continue
            contact = _contact_decoder.decode(plain)
            directory.append((stream_id, tenant_id, parsed[1], parsed[2], sealed.key_id, sealed.nonce,
                              sealed.ciphertext, position))
            search.extend((stream_id, self.digest(tenant_id, kind, value)) for kind, value in index_terms(contact))
        if not directory:
            return
        written = [d[0] for d in directory]
        await conn.execute(
            "INSERT INTO ledger.subject_directory (stream_id, tenant_id, source, customer_ref, key_id, nonce,"
            " ciphertext, position) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
            " $6::text[], $7::text[], $8::bigint[]) ON CONFLICT (stream_id) DO UPDATE SET key_id = excluded.key_id,"
            " nonce = excluded.nonce, ciphertext = excluded.ciphertext, position = excluded.position"
            " WHERE ledger.subject_directory.position < excluded.position",
            *[list(c) for c in zip(*directory)])
        await conn.execute("DELETE FROM ledger.subject_search WHERE stream_id = ANY($1::text[])", written)
        if search:
            await conn.execute(
                "INSERT INTO ledger.subject_search (tenant_id, digest, stream_id) SELECT $1, d, s"
                " FROM unnest($2::bytea[], $3::text[]) AS u(d, s) ON CONFLICT DO NOTHING",
                tenant_id, [d for _, d in search], [s for s, _ in search])

    async def reindex(self, tenant_id: str) -> int:
        """Forget the tenant's directory and index and build them again from the ledger
        (after a master key rotation, whose new key derives other search keys)."""
        with translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM ledger.subject_search WHERE tenant_id = $1", tenant_id)
                await conn.execute("DELETE FROM ledger.subject_directory WHERE tenant_id = $1", tenant_id)
                await conn.execute("DELETE FROM ledger.directory_cursor WHERE tenant_id = $1", tenant_id)
        return await self.sync(tenant_id)

    # -- reading --------------------------------------------------------------------------

    async def search(self, tenant_id: str, text: str, *, limit: int = 50) -> list[Found]:
        """Subjects of this tenant whose contact matches ``text`` (see :func:`search_terms`),
        with their contact data; only the matches are decrypted."""
        await self.sync(tenant_id)
        query = search_terms(text)
        exact = [self.digest(tenant_id, k, v) for k, v in query.exact]
        # longest first: the first word drives the join (long words are rarer)
        words = [self.digest(tenant_id, "word", w) for w in sorted(query.words, key=len, reverse=True)]
        if not exact and not words:
            return []
        # The exact matches, and the subjects that have every word of a name: a join of the
        # words' index ranges in stream order, so a common surname (thousands of rows) stops
        # after the first ``limit`` subjects instead of being read whole.
        words = words[:_MAX_WORDS]
        joins = "".join(
            f" JOIN ledger.subject_search w{i} ON w{i}.tenant_id = $1 AND w{i}.digest = ${i + 4}"
            f" AND w{i}.stream_id = w0.stream_id" for i in range(1, len(words)))
        sql = ("(SELECT stream_id FROM ledger.subject_search WHERE tenant_id = $1 AND digest = ANY($2::bytea[])"
               " ORDER BY stream_id LIMIT $3)")
        if words:
            sql += (f" UNION (SELECT w0.stream_id FROM ledger.subject_search w0{joins} WHERE w0.tenant_id = $1"
                    " AND w0.digest = $4 ORDER BY w0.stream_id LIMIT $3) ORDER BY 1 LIMIT $3")
        with translate_errors():
            rows = await self._pool.fetch(sql, tenant_id, exact, limit, *words)
        return await self.contacts(tenant_id, [r[0] for r in rows])

    async def contacts(self, tenant_id: str, stream_ids: Sequence[str]) -> list[Found]:
        """The contact data of these subjects (of this tenant), in the given order."""
        if not stream_ids:
            return []
        with translate_errors():
            rows = await self._pool.fetch(
                "SELECT d.stream_id, d.source, d.customer_ref, d.key_id, d.nonce, d.ciphertext, k.key_id,"
                " k.wrapped_key FROM ledger.subject_directory d JOIN ledger.subject_keys k USING (stream_id)"
                " WHERE d.tenant_id = $1 AND d.stream_id = ANY($2::text[])", tenant_id, list(stream_ids))
        by_stream = {r[0]: r for r in rows}
        out: list[Found] = []
        for stream_id in stream_ids:
            r = by_stream.get(stream_id)
            if r is None:
                parsed = parse_subject_stream(stream_id)
                if parsed is not None and parsed[0] == tenant_id:
                    out.append(Found(source=parsed[1], customer_ref=parsed[2], contact=None))
                continue
            out.append(Found(source=r[1], customer_ref=r[2], contact=self._open(r)))
        return out

    async def contacts_of_tenant(self, tenant_id: str, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Contact]:
        """(source, ref) -> contact for the subjects that have contact data (one query per
        10,000 subjects; mailing lists)."""
        await self.sync(tenant_id)
        wanted = [f"subject/{tenant_id}/{s}/{r}" for s, r in keys]
        out: dict[tuple[str, str], Contact] = {}
        for start in range(0, len(wanted), 10_000):
            chunk = wanted[start:start + 10_000]
            with translate_errors():
                rows = await self._pool.fetch(
                    "SELECT d.stream_id, d.source, d.customer_ref, d.key_id, d.nonce, d.ciphertext, k.key_id,"
                    " k.wrapped_key FROM ledger.subject_directory d JOIN ledger.subject_keys k USING (stream_id)"
                    " WHERE d.tenant_id = $1 AND d.stream_id = ANY(string_to_array($2, E'\\n'))",
                    tenant_id, "\n".join(chunk))
            for r in rows:
                contact = self._open(r)
                if contact is not None:
                    out[(r[1], r[2])] = contact
        return out

    def _open(self, r: asyncpg.Record) -> Contact | None:
        opener = self._keys.opener_for(r[0], r[6], bytes(r[7]))
        plain = opener.open(Sealed(key_id=r[3], nonce=r[4], ciphertext=r[5]))
        return _contact_decoder.decode(plain) if plain is not None else None
