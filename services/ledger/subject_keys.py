"""Per-subject data keys: personal data in events is sealed with the subject's own
AES-256-GCM key; erasing the subject deletes the key (crypto-shredding).

Subject keys are stored wrapped with the deployment's master key
(``LEDGER_MASTER_KEY``), so a copy of the database alone does not reveal them.
The associated data binds each ciphertext to its subject stream.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Coroutine, Sequence
from typing import Any, Final

import asyncpg
import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.events import Sealed
from services.ledger.store import translate_errors
from services.settings import Settings

_encode: Final = msgspec.json.Encoder().encode
_b64e = base64.b64encode
_b64 = binascii.b2a_base64
_b64d = base64.b64decode


class SubjectKeys:
    """``previous``: the master key being rotated out, tried when the current one does not
    open a wrapped key (every new key is wrapped with the current one); see
    :func:`rewrap_subject_keys`."""

    def __init__(self, pool: asyncpg.Pool, master_key: bytes, previous: bytes | None = None) -> None:
        if len(master_key) != 32 or (previous is not None and len(previous) != 32):
            raise ValueError("the master key must be 32 bytes")
        self._pool = pool
        self._master = AESGCM(master_key)
        self._previous = AESGCM(previous) if previous is not None and previous != master_key else None

    @classmethod
    def from_settings(cls, pool: asyncpg.Pool, settings: Settings) -> SubjectKeys:
        current, previous = master_keys(settings)
        return cls(pool, current, previous)

    def _wrap(self, key: bytes, stream_id: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._master.encrypt(nonce, key, stream_id.encode())

    def _unwrap(self, wrapped: bytes, stream_id: str) -> bytes:
        try:
            return self._master.decrypt(wrapped[:12], wrapped[12:], stream_id.encode())
        except InvalidTag:
            if self._previous is None:
                raise
            return self._previous.decrypt(wrapped[:12], wrapped[12:], stream_id.encode())

    async def key_for(self, tenant_id: str, stream_id: str) -> tuple[str, bytes]:
        """The subject's (key_id, key), made on first use."""
        with translate_errors():
            row = await self._pool.fetchrow(
                "SELECT key_id, wrapped_key FROM ledger.subject_keys WHERE stream_id = $1", stream_id
            )
            if row is None:
                key = AESGCM.generate_key(bit_length=256)
                key_id = "sk-" + secrets.token_hex(8)
                row = await self._pool.fetchrow(
                    "INSERT INTO ledger.subject_keys (key_id, tenant_id, stream_id, wrapped_key)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (stream_id) DO NOTHING RETURNING key_id, wrapped_key",
                    key_id, tenant_id, stream_id, self._wrap(key, stream_id),
                )
                if row is None:  # another request made it first
                    row = await self._pool.fetchrow(
                        "SELECT key_id, wrapped_key FROM ledger.subject_keys WHERE stream_id = $1", stream_id
                    )
        assert row is not None
        return row["key_id"], self._unwrap(bytes(row["wrapped_key"]), stream_id)

    async def existing_sealers(self, stream_ids: Sequence[str]) -> dict[str, SubjectSealer]:
        """Sealers for the subjects that have a key, in one round trip (makes none: safe to
        call for subjects that may have been erased)."""
        if not stream_ids:
            return {}
        with translate_errors():
            rows = await self._pool.fetch(
                "SELECT stream_id, key_id, wrapped_key FROM ledger.subject_keys WHERE stream_id = ANY("
                + _ids_sql(stream_ids, 1) + ")", _ids_param(stream_ids),
            )
        return {r["stream_id"]: SubjectSealer(r["stream_id"], r["key_id"],
                                              self._unwrap(bytes(r["wrapped_key"]), r["stream_id"])) for r in rows}

    async def keys_for(self, tenant_id: str, stream_ids: Sequence[str], *,
                       existing: dict[str, SubjectSealer] | None = None) -> dict[str, SubjectSealer]:
        """A sealer per subject stream, made on first use: one round trip for the existing
        keys (skipped when the caller has them from :meth:`existing_sealers`) and one insert
        for the missing ones, whatever the number of subjects (bulk import). The caller must
        not pass erased subjects (this would make them a new key)."""
        wanted = sorted(set(stream_ids))
        if not wanted:
            return {}
        found = existing if existing is not None else await self.existing_sealers(wanted)
        sealers = {s: found[s] for s in wanted if s in found}
        missing = [s for s in wanted if s not in found]
        if missing:
            made, store = self.make_keys(tenant_id, missing)
            raced = await store
            sealers.update((s, sealer) for s, sealer in made.items() if s not in raced)
            if raced:  # made by another writer meanwhile
                sealers.update(await self.existing_sealers(sorted(raced)))
        return sealers

    def make_keys(self, tenant_id: str, stream_ids: Sequence[str]
                  ) -> tuple[dict[str, SubjectSealer], Coroutine[Any, Any, set[str]]]:
        """New keys for subjects that have none, made here at once, and the insert that
        stores them (one statement) for the caller to run, maybe while it seals with them:
        it answers the subjects another writer gave a key first (``ON CONFLICT DO
        NOTHING``), whose sealers here must not be used. Nothing sealed with a new key may
        be stored before the insert has answered. The caller must not pass erased subjects
        (this would make them a new key)."""
        missing = list(stream_ids)
        # Key ids, keys and wrapping nonces for all of them from one call to the OS random
        # source (a call per key was a visible cost for thousands of subjects).
        n = len(missing)
        random = os.urandom(52 * n)  # per subject: 8 id bytes, 32 key bytes, 12 nonce bytes
        ids, keys, nonces = random[:8 * n].hex(), random[8 * n:40 * n], random[40 * n:]
        made = {s: SubjectSealer(s, "sk-" + ids[16 * i:16 * i + 16], keys[32 * i:32 * i + 32])
                for i, s in enumerate(missing)}
        encrypt = self._master.encrypt
        wrapped = [nonces[12 * i:12 * i + 12] + encrypt(nonces[12 * i:12 * i + 12], keys[32 * i:32 * i + 32],
                                                         s.encode())
                   for i, s in enumerate(missing)]
        params: tuple[Any, ...] = ([made[s].key_id for s in missing], missing, wrapped)
        if not isinstance(_ids_param(missing), list):  # as text: see _ids_param
            params = ("\n".join(params[0]), "\n".join(missing), "\n".join(w.hex() for w in wrapped))
            sql = ("SELECT k, $1, s, decode(w, 'hex') FROM unnest(string_to_array($2, E'\\n'),"
                   " string_to_array($3, E'\\n'), string_to_array($4, E'\\n')) AS u(k, s, w)")
        else:
            sql = "SELECT k, $1, s, w FROM unnest($2::text[], $3::text[], $4::bytea[]) AS u(k, s, w)"

        async def store() -> set[str]:
            if not missing:
                return set()
            with translate_errors():
                inserted = await self._pool.fetch(
                    "INSERT INTO ledger.subject_keys (key_id, tenant_id, stream_id, wrapped_key) " + sql
                    + " ON CONFLICT (stream_id) DO NOTHING RETURNING stream_id", tenant_id, *params)
            return set(missing) - {r["stream_id"] for r in inserted}

        return made, store()

    async def seal(self, tenant_id: str, stream_id: str, payload: Any) -> Sealed:
        key_id, key = await self.key_for(tenant_id, stream_id)
        return seal_with(key_id, key, stream_id, payload)

    async def open(self, stream_id: str, sealed: Sealed) -> bytes | None:
        """The plaintext JSON, or None when the subject's key was shredded."""
        with translate_errors():
            row = await self._pool.fetchrow(
                "SELECT wrapped_key FROM ledger.subject_keys WHERE key_id = $1 AND stream_id = $2",
                sealed.key_id, stream_id,
            )
        if row is None:
            return None
        key = self._unwrap(bytes(row["wrapped_key"]), stream_id)
        return AESGCM(key).decrypt(_b64d(sealed.nonce), _b64d(sealed.ciphertext), stream_id.encode())

    async def opener(self, stream_id: str) -> SubjectOpener:
        """One key lookup for many Sealed fields of a subject (audit views, access export).

        Once the key is shredded the opener answers None for every field.
        """
        with translate_errors():
            row = await self._pool.fetchrow(
                "SELECT key_id, wrapped_key FROM ledger.subject_keys WHERE stream_id = $1", stream_id
            )
        if row is None:
            return SubjectOpener(stream_id, None, None)
        return SubjectOpener(stream_id, row["key_id"], self._unwrap(bytes(row["wrapped_key"]), stream_id))

    def opener_for(self, stream_id: str, key_id: str, wrapped_key: bytes) -> SubjectOpener:
        """An opener from a key row the caller read itself (many subjects in one query)."""
        return SubjectOpener(stream_id, key_id, self._unwrap(wrapped_key, stream_id))

    async def shred(self, conn: asyncpg.Connection, stream_id: str) -> int:
        """Delete the subject's key (inside the caller's transaction: erasure shreds it in
        one transaction with the subject's portal links and mail rows). Returns how many
        keys were deleted: more than one only if a key was made after an earlier shred."""
        with translate_errors():
            done = await conn.execute("DELETE FROM ledger.subject_keys WHERE stream_id = $1", stream_id)
        return int(done.split()[-1])

    async def shred_erased(self, tenant_id: str) -> int:
        """Delete the keys that still exist for the tenant's erased subjects (a crash
        between an erasure's event and its shred): the retention job's repair. Both tables
        are the ledger's, so this is one statement. Returns how many keys were deleted."""
        with translate_errors():
            done = await self._pool.execute(
                "DELETE FROM ledger.subject_keys k WHERE k.tenant_id = $1 AND EXISTS (SELECT 1 FROM ledger.events e"
                " WHERE e.log_partition = ledger.partition_of($1, (SELECT count(*)::integer FROM ledger.partitions))"
                " AND e.stream_id = k.stream_id AND e.event_type = 'SubjectErased')",
                tenant_id,
            )
        return int(done.split()[-1])


class SubjectOpener:
    """Opens the Sealed fields of one subject with a key fetched once."""

    __slots__ = ("stream_id", "_key_id", "_aead")

    def __init__(self, stream_id: str, key_id: str | None, key: bytes | None) -> None:
        self.stream_id = stream_id
        self._key_id = key_id
        self._aead = AESGCM(key) if key is not None else None

    @property
    def shredded(self) -> bool:
        return self._aead is None

    def open(self, sealed: Sealed) -> bytes | None:
        """The plaintext JSON, or None when the key was shredded (or is not this subject's)."""
        if self._aead is None or sealed.key_id != self._key_id:
            return None
        return self._aead.decrypt(_b64d(sealed.nonce), _b64d(sealed.ciphertext), self.stream_id.encode())


def _ids_param(ids: Sequence[str]) -> str | list[str]:
    """Many ids as ONE text parameter, split in SQL: asyncpg checks every element of a
    list parameter against collections.abc (a Python-level call each), which costs more
    than the query for the thousands of ids of a bulk import. Ids never hold a newline
    (subject streams are slugs and customer refs); otherwise the list is passed as is."""
    joined = "\n".join(ids)
    return list(ids) if joined.count("\n") != len(ids) - 1 else joined


def _ids_sql(ids: Sequence[str], n: int) -> str:
    return f"string_to_array(${n}, E'\\n')" if not isinstance(_ids_param(ids), list) else f"${n}::text[]"


class SubjectSealer:
    """Seals many payloads for one subject with a key fetched once (see ``keys_for``).

    The AES-GCM object (about 2.6 KB) is made on first use and can be let go with
    :meth:`release_cipher` while the sealer is kept: a bulk import keeps the keys of many
    subjects, but ciphers only for those it saw last."""

    __slots__ = ("stream_id", "key_id", "_aead", "_aad", "_key")

    def __init__(self, stream_id: str, key_id: str, key: bytes) -> None:
        self.stream_id = stream_id
        self.key_id = key_id
        self._key = key
        self._aead: AESGCM | None = None
        self._aad = stream_id.encode()

    def release_cipher(self) -> None:
        self._aead = None

    def seal_json(self, plaintext: bytes, nonce: bytes | None = None, nonce_b64: str | None = None) -> Sealed:
        """Seal already-encoded JSON (same format as :func:`seal_with`). ``nonce``: 12
        random bytes (a bulk caller draws them many at a time); never reuse one.
        ``nonce_b64``: its base64 text, if the caller encoded many nonces at once."""
        if nonce is None:
            nonce = os.urandom(12)
        aead = self._aead
        if aead is None:
            aead = self._aead = AESGCM(self._key)
        ciphertext = aead.encrypt(nonce, plaintext, self._aad)
        return Sealed(key_id=self.key_id, nonce=nonce_b64 or _b64(nonce, newline=False).decode(),
                      ciphertext=_b64(ciphertext, newline=False).decode())

    def open_json(self, sealed: Sealed) -> bytes | None:
        """The plaintext of a Sealed field of this subject, or None if another key sealed it."""
        if sealed.key_id != self.key_id:
            return None
        aead = self._aead
        if aead is None:
            aead = self._aead = AESGCM(self._key)
        return aead.decrypt(_b64d(sealed.nonce), _b64d(sealed.ciphertext), self._aad)

    def derive(self, purpose: bytes) -> bytes:
        """A sub-key for another use (e.g. keyed fingerprints), gone with the subject key
        (BLAKE2b in keyed mode: a MAC in one call)."""
        return hashlib.blake2b(purpose, key=self._key, digest_size=32).digest()


def seal_with(key_id: str, key: bytes, stream_id: str, payload: Any) -> Sealed:
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(nonce, _encode(payload), stream_id.encode())
    return Sealed(key_id=key_id, nonce=_b64e(nonce).decode(), ciphertext=_b64e(ciphertext).decode())


def new_master_key() -> str:
    """A fresh master key, base64, for LEDGER_MASTER_KEY."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def parse_master_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ValueError("LEDGER_MASTER_KEY must be 32 bytes, base64") from exc
    if len(key) != 32:
        raise ValueError("LEDGER_MASTER_KEY must be 32 bytes, base64")
    return key


def master_keys(settings: Settings) -> tuple[bytes, bytes | None]:
    """(current, previous) master keys from the settings; previous is None outside a rotation."""
    if not settings.master_key:
        raise ValueError("LEDGER_MASTER_KEY is not set (32 bytes, base64); `consent-ledger keygen` makes one")
    current = parse_master_key(settings.master_key)
    if not settings.master_key_previous:
        return current, None
    try:
        return current, parse_master_key(settings.master_key_previous)
    except ValueError:
        raise ValueError("LEDGER_MASTER_KEY_PREVIOUS must be 32 bytes, base64") from None


class RewrapReport(msgspec.Struct, kw_only=True):
    keys: int = 0  # subject keys looked at
    rewrapped: int = 0  # wrapped with the previous master key, now with the current one
    unopenable: list[str] = msgspec.field(default_factory=list)  # streams neither key opens


async def rewrap_subject_keys(pool: asyncpg.Pool, current: bytes, previous: bytes, *,
                              batch: int = 1000) -> RewrapReport:
    """Re-wrap every subject key that the previous master key wrapped with the current one.

    In batches by stream id, each UPDATE only if the row still holds what was read (a key
    shredded or made meanwhile is left alone). Safe to run again: keys the current master
    key opens are skipped. A key that neither opens is reported, never changed."""
    report = RewrapReport()
    now, old = AESGCM(current), AESGCM(previous)
    after = ""
    while True:
        with translate_errors():
            rows = await pool.fetch(
                "SELECT stream_id, wrapped_key FROM ledger.subject_keys WHERE stream_id > $1 ORDER BY stream_id LIMIT $2",
                after, batch,
            )
        if not rows:
            return report
        after = rows[-1]["stream_id"]
        streams, olds, news = [], [], []
        for r in rows:
            stream_id, wrapped = r["stream_id"], bytes(r["wrapped_key"])
            report.keys += 1
            aad = stream_id.encode()
            try:
                now.decrypt(wrapped[:12], wrapped[12:], aad)
                continue  # already the current key's
            except InvalidTag:
                pass
            try:
                key = old.decrypt(wrapped[:12], wrapped[12:], aad)
            except InvalidTag:
                report.unopenable.append(stream_id)
                continue
            nonce = os.urandom(12)
            streams.append(stream_id)
            olds.append(wrapped)
            news.append(nonce + now.encrypt(nonce, key, aad))
        if streams:
            with translate_errors():
                done = await pool.fetch(
                    "UPDATE ledger.subject_keys k SET wrapped_key = u.new FROM unnest($1::text[], $2::bytea[],"
                    " $3::bytea[]) AS u(stream_id, old, new) WHERE k.stream_id = u.stream_id AND k.wrapped_key = u.old"
                    " RETURNING k.stream_id", streams, olds, news,
                )
            report.rewrapped += len(done)
