"""Staff and admin accounts of a tenant, and their login sessions.

* Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile).
* A login does the same work and gets the same answer whether the e-mail belongs to an
  account or not: one query, one argon2 verification (against a dummy hash when there is no
  usable account), one write of the outcome. So neither the answer nor its time tells an
  attacker which staff accounts exist.
* Failures are counted per (tenant, typed e-mail, client address), not per account: after
  ``MAX_FAILED_LOGINS`` wrong passwords from one address, that address must wait
  ``BACKOFF_FIRST`` before its next try for that e-mail, twice as long after every further
  failure, at most ``BACKOFF_MAX``; a try during the wait is refused unchecked. Other
  addresses are not affected, so nobody can lock a colleague out. A success clears the
  count; ``FORGET_AFTER`` without failures starts it afresh. An admin unlocks an account
  (every address) on the users page or with ``consent-ledger portal unlock``.
* A session id is 256 random bits in a ``__Host-`` cookie (Secure, HttpOnly, SameSite=Strict,
  Path=/); only its SHA-256 is stored. Sessions end after ``SESSION_IDLE`` without use or
  ``SESSION_MAX`` after login, and all of a user's sessions end when the password is reset
  or the account is disabled.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import secrets
from typing import Final, Literal

import asyncpg
import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from consent.text import control_character_problem
from services.errors import LedgerError
from services.ledger.store import translate_errors

Role = Literal["admin", "staff", "marketing"]  # marketing: staff pages plus the mailing export (issue 15)
ROLES: Final[tuple[Role, ...]] = ("admin", "staff", "marketing")
MAX_FAILED_LOGINS: Final = 5
BACKOFF_FIRST: Final = dt.timedelta(seconds=15)
BACKOFF_MAX: Final = dt.timedelta(minutes=15)
FORGET_AFTER: Final = dt.timedelta(days=1)
SESSION_IDLE: Final = dt.timedelta(hours=1)
SESSION_MAX: Final = dt.timedelta(hours=12)
MIN_PASSWORD_LENGTH: Final = 12
MAX_PASSWORD_LENGTH: Final = 200
EMAIL_PATTERN: Final = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{2,}$")



class User(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    tenant_id: str
    email: str
    role: Role
    disabled: bool = False
    locked_until: dt.datetime | None = None  # unused since the per-client back-off (kept: old rows)
    created_at: dt.datetime | None = None
    blocked_clients: int = 0  # addresses that must wait before their next login try (list_users)

    @property
    def actor_id(self) -> str:
        """The id that goes into events' ``changed_by`` / metadata (never the e-mail)."""
        return f"user:{self.user_id}"


class AccountError(LedgerError, ValueError):
    """A request about an account that cannot be done; ``field`` names the form field. The
    staff pages show it next to the form (``message_key`` is a message id of the portal)."""

    status = 422
    error = "validation_error"

    def __init__(self, message_key: str, field: str | None = None) -> None:
        super().__init__(message_key)
        self.message_key = message_key
        self.field = field


LoginOutcome = Literal["ok", "bad_credentials", "locked"]


def password_problem(password: str) -> str | None:
    """A message key if the password is not acceptable, else None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return "password_too_short"
    if len(password) > MAX_PASSWORD_LENGTH:
        return "password_too_long"
    return None


def new_password() -> str:
    """A random password for a new account or a reset (shown once to the admin)."""
    return secrets.token_urlsafe(15)


def _session_digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


def _user(row: asyncpg.Record) -> User:
    return User(user_id=row["user_id"], tenant_id=row["tenant_id"], email=row["email"], role=row["role"],
                disabled=row["disabled_at"] is not None, locked_until=row["locked_until"],
                created_at=row["created_at"],
                blocked_clients=row.get("blocked_clients", 0))


# The key of a typed e-mail address in portal.login_failures, computed by PostgreSQL (its
# lower() is the one the users' e-mail index uses).
_EMAIL_KEY: Final = "sha256(convert_to(lower({}), 'UTF8'))"


_USER_COLUMNS: Final = "user_id, tenant_id, email, role, disabled_at, locked_until, created_at"


class Accounts:
    """The ``portal.users`` and ``portal.sessions`` tables."""

    def __init__(self, pool: asyncpg.Pool, hasher: PasswordHasher | None = None) -> None:
        self._pool = pool
        # argon2-cffi's defaults: argon2id, RFC 9106 low-memory profile (t=3, m=64 MiB, p=4).
        self.hasher = hasher or PasswordHasher()
        self._dummy_hash: str | None = None

    async def _hash(self, password: str) -> str:
        # argon2 takes tens to hundreds of milliseconds of CPU: keep it off the event loop.
        return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, stored: str | None, password: str) -> bool:
        """Check ``password`` against ``stored``; with None, against a dummy hash, so that
        an unknown account costs the same time as a wrong password."""
        if stored is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash(secrets.token_urlsafe(16))
            stored = self._dummy_hash

        def check() -> bool:
            try:
                return self.hasher.verify(stored, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)

    # -- accounts ----------------------------------------------------------------------

    async def create(self, tenant_id: str, email: str, role: str, password: str, *, created_by: str) -> User:
        email = email.strip()
        if not EMAIL_PATTERN.fullmatch(email) or control_character_problem(email):  # the CLI too, not only forms
            raise AccountError("email_invalid", "email")
        if role not in ROLES:
            raise AccountError("role_invalid", "role")
        problem = password_problem(password)
        if problem:
            raise AccountError(problem, "password")
        password_hash = await self._hash(password)
        with translate_errors():
            row = await self._pool.fetchrow(
                f"INSERT INTO portal.users (user_id, tenant_id, email, role, password_hash, created_by)"
                f" VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING {_USER_COLUMNS}",
                "u-" + secrets.token_hex(8), tenant_id, email, role, password_hash, created_by,
            )
        if row is None:  # the (tenant, lower(email)) index already has this address
            raise AccountError("email_taken", "email")
        return _user(row)

    async def get(self, tenant_id: str, user_id: str) -> User | None:
        with translate_errors():
            row = await self._pool.fetchrow(
                f"SELECT {_USER_COLUMNS} FROM portal.users WHERE tenant_id = $1 AND user_id = $2", tenant_id, user_id
            )
        return None if row is None else _user(row)

    async def list_users(self, tenant_id: str) -> list[User]:
        with translate_errors():
            rows = await self._pool.fetch(
                f"SELECT {_USER_COLUMNS}, (SELECT count(*) FROM portal.login_failures f WHERE f.tenant_id = u.tenant_id"
                f"   AND f.email_key = {_EMAIL_KEY.format('u.email')} AND f.blocked_until > now()) AS blocked_clients"
                f" FROM portal.users u WHERE tenant_id = $1 ORDER BY role, lower(email)", tenant_id
            )
        return [_user(r) for r in rows]

    async def unlock(self, tenant_id: str, user_id: str) -> int:
        """Forget the failed logins for this account's e-mail from every address (the users
        page's "Unlock", ``consent-ledger portal unlock``); the number of addresses cleared."""
        with translate_errors():
            email = await self._pool.fetchval(
                "SELECT email FROM portal.users WHERE tenant_id = $1 AND user_id = $2", tenant_id, user_id)
            if email is None:
                raise AccountError("user_unknown")
            done = await self._pool.execute(
                f"DELETE FROM portal.login_failures WHERE tenant_id = $1 AND email_key = {_EMAIL_KEY.format('$2')}",
                tenant_id, email)
        return int(done.split()[-1])

    async def admins(self, tenant_id: str) -> list[User]:
        """Accounts with admin rights that can log in (shown on the AVG Beheer page)."""
        return [u for u in await self.list_users(tenant_id) if u.role == "admin" and not u.disabled]

    async def reset_password(self, tenant_id: str, user_id: str, password: str) -> None:
        """Set a new password, clear the lockout and end the user's sessions."""
        problem = password_problem(password)
        if problem:
            raise AccountError(problem, "password")
        password_hash = await self._hash(password)
        with translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                email = await conn.fetchval(
                    "UPDATE portal.users SET password_hash = $3, failed_logins = 0, locked_until = NULL,"
                    " password_set_at = now() WHERE tenant_id = $1 AND user_id = $2 RETURNING email",
                    tenant_id, user_id, password_hash,
                )
                if email is None:
                    raise AccountError("user_unknown")
                await conn.execute("DELETE FROM portal.sessions WHERE user_id = $1", user_id)
                await conn.execute(f"DELETE FROM portal.login_failures WHERE tenant_id = $1"
                                   f" AND email_key = {_EMAIL_KEY.format('$2')}", tenant_id, email)

    async def set_disabled(self, tenant_id: str, user_id: str, disabled: bool) -> None:
        """Disable (ends its sessions) or enable an account. The tenant's last active admin
        cannot be disabled, so a dealer never locks itself out."""
        with translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))", tenant_id)
                row = await conn.fetchrow(
                    "SELECT role, disabled_at FROM portal.users WHERE tenant_id = $1 AND user_id = $2",
                    tenant_id, user_id,
                )
                if row is None:
                    raise AccountError("user_unknown")
                if disabled and row["role"] == "admin" and row["disabled_at"] is None:
                    others = await conn.fetchval(
                        "SELECT count(*) FROM portal.users WHERE tenant_id = $1 AND role = 'admin'"
                        " AND disabled_at IS NULL AND user_id <> $2",
                        tenant_id, user_id,
                    )
                    if others == 0:
                        raise AccountError("last_admin")
                await conn.execute(
                    "UPDATE portal.users SET disabled_at = CASE WHEN $3 THEN coalesce(disabled_at, now()) END"
                    " WHERE tenant_id = $1 AND user_id = $2",
                    tenant_id, user_id, disabled,
                )
                if disabled:
                    await conn.execute("DELETE FROM portal.sessions WHERE user_id = $1", user_id)

    # -- login ---------------------------------------------------------------------------

    async def login(self, tenant_id: str, email: str, password: str, *, client: str = "local"
                    ) -> tuple[LoginOutcome, User | None]:
        """Check a password typed at ``client`` (the address the rate limit counts).

        Every path does the same work (see the module): the account and this client's
        failures in one query, one argon2 verification, one write. "locked": this client
        must wait before trying this e-mail again (whether or not it is an account)."""
        if self._dummy_hash is None:  # made before the first login of either kind, not inside one
            self._dummy_hash = await self._hash(secrets.token_urlsafe(16))
        client = client[:64]
        with translate_errors():
            row = await self._pool.fetchrow(
                f"SELECT u.user_id, u.tenant_id, u.email, u.role, u.disabled_at, u.locked_until, u.created_at,"
                f" u.password_hash, f.blocked_until > now() AS blocked"
                f" FROM (SELECT 1) one"
                f" LEFT JOIN portal.users u ON u.tenant_id = $1 AND lower(u.email) = lower($2)"
                f" LEFT JOIN portal.login_failures f ON f.tenant_id = $1 AND f.email_key = {_EMAIL_KEY.format('$2')}"
                f"   AND f.client = $3",
                tenant_id, email.strip(), client,
            )
        assert row is not None
        usable = (row["user_id"] is not None and row["disabled_at"] is None
                  and len(password) <= MAX_PASSWORD_LENGTH and not row["blocked"])
        verified = await self._verify(row["password_hash"] if usable else None, password[:MAX_PASSWORD_LENGTH])
        if row["blocked"]:
            await self._record(tenant_id, email, client, failed=None)  # the same one write, counting nothing
            return "locked", None
        if usable and verified:
            await self._record(tenant_id, email, client, failed=False)
            return "ok", _user(row)
        await self._record(tenant_id, email, client, failed=True)
        return "bad_credentials", None

    async def _record(self, tenant_id: str, email: str, client: str, *, failed: bool | None) -> None:
        """One statement whatever the outcome: a failure counted (and the wait it earns), a
        success clearing the count, or (None) a refused try during a wait, which touches
        nothing. Failures older than FORGET_AFTER are dropped on the way."""
        with translate_errors():
            await self._pool.execute(
                f"WITH forget AS (DELETE FROM portal.login_failures WHERE last_failed_at < now() - $5::interval"
                f"   AND $6::boolean IS NOT NULL AND NOT (tenant_id = $1 AND email_key = {_EMAIL_KEY.format('$2')}"
                f"   AND client = $3)),"  # this row is the upsert's: one statement must not touch it twice
                f" cleared AS (DELETE FROM portal.login_failures WHERE $6::boolean = false AND tenant_id = $1"
                f"   AND email_key = {_EMAIL_KEY.format('$2')} AND client = $3)"
                f" INSERT INTO portal.login_failures AS f (tenant_id, email_key, client, failures, last_failed_at,"
                f"   blocked_until)"
                f" SELECT $1, {_EMAIL_KEY.format('$2')}, $3, 1, now(), CASE WHEN 1 >= $4 THEN now() + $7::interval END"
                f" WHERE $6::boolean"
                f" ON CONFLICT (tenant_id, email_key, client) DO UPDATE SET"
                f"   failures = CASE WHEN f.last_failed_at < now() - $5::interval THEN 1 ELSE f.failures + 1 END,"
                f"   last_failed_at = now(),"
                f"   blocked_until = CASE WHEN (CASE WHEN f.last_failed_at < now() - $5::interval THEN 1"
                f"       ELSE f.failures + 1 END) >= $4"
                f"     THEN now() + least($7::interval * power(2, (CASE WHEN f.last_failed_at < now() - $5::interval"
                f"       THEN 1 ELSE f.failures + 1 END) - $4), $8::interval) END",
                tenant_id, email.strip(), client, MAX_FAILED_LOGINS, FORGET_AFTER, failed, BACKOFF_FIRST, BACKOFF_MAX,
            )

    # -- sessions ------------------------------------------------------------------------

    async def start_session(self, user: User) -> str:
        """A new session id for the cookie (its hash is stored)."""
        session_id = secrets.token_urlsafe(32)
        with translate_errors():
            await self._pool.execute(
                "INSERT INTO portal.sessions (session_hash, user_id, tenant_id, expires_at)"
                " VALUES ($1, $2, $3, now() + $4::interval)",
                _session_digest(session_id), user.user_id, user.tenant_id, SESSION_MAX,
            )
        return session_id

    async def session_user(self, session_id: str) -> tuple[User, bytes] | None:
        """The (enabled) user of a live session and the session's digest, or None.

        Touches ``last_seen_at`` at most once a minute, to keep idle expiry cheap.
        """
        if not session_id or len(session_id) > 100:
            return None
        digest = _session_digest(session_id)
        with translate_errors():
            row = await self._pool.fetchrow(
                f"SELECT u.user_id, u.tenant_id, u.email, u.role, u.disabled_at, u.locked_until, u.created_at,"
                f" s.last_seen_at < now() - interval '1 minute' AS stale"
                f" FROM portal.sessions s JOIN portal.users u USING (user_id)"
                f" WHERE s.session_hash = $1 AND s.expires_at > now() AND s.last_seen_at > now() - $2::interval",
                digest, SESSION_IDLE,
            )
            if row is None or row["disabled_at"] is not None:
                return None
            if row["stale"]:
                await self._pool.execute("UPDATE portal.sessions SET last_seen_at = now() WHERE session_hash = $1",
                                         digest)
        return _user(row), digest

    async def end_session(self, session_id: str) -> None:
        with translate_errors():
            await self._pool.execute("DELETE FROM portal.sessions WHERE session_hash = $1",
                                     _session_digest(session_id))
