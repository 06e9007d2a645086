"""Staff and admin accounts of a tenant, and their login sessions.

* Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile);
  a login for an unknown or disabled e-mail still runs one argon2 verification, so the answer
  time does not reveal which accounts exist.
* After ``MAX_FAILED_LOGINS`` wrong passwords in a row an account is locked for
  ``LOCKOUT``; a correct password during the lock is refused too (and not counted).
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

from services.ledger.store import translate_errors

Role = Literal["admin", "staff", "marketing"]  # marketing: staff pages plus the mailing export (issue 15)
ROLES: Final[tuple[Role, ...]] = ("admin", "staff", "marketing")
MAX_FAILED_LOGINS: Final = 5
LOCKOUT: Final = dt.timedelta(minutes=15)
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
    locked_until: dt.datetime | None = None
    created_at: dt.datetime | None = None

    @property
    def actor_id(self) -> str:
        """The id that goes into events' ``changed_by`` / metadata (never the e-mail)."""
        return f"user:{self.user_id}"


class AccountError(ValueError):
    """A request about an account that cannot be done; ``field`` names the form field."""

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
                created_at=row["created_at"])


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
        if not EMAIL_PATTERN.fullmatch(email):
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
                f"SELECT {_USER_COLUMNS} FROM portal.users WHERE tenant_id = $1 ORDER BY role, lower(email)", tenant_id
            )
        return [_user(r) for r in rows]

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
                done = await conn.execute(
                    "UPDATE portal.users SET password_hash = $3, failed_logins = 0, locked_until = NULL,"
                    " password_set_at = now() WHERE tenant_id = $1 AND user_id = $2",
                    tenant_id, user_id, password_hash,
                )
                if done == "UPDATE 0":
                    raise AccountError("user_unknown")
                await conn.execute("DELETE FROM portal.sessions WHERE user_id = $1", user_id)

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

    async def login(self, tenant_id: str, email: str, password: str) -> tuple[LoginOutcome, User | None]:
        """Check a password. Counts failures and locks the account after too many."""
        with translate_errors():
            row = await self._pool.fetchrow(
                f"SELECT {_USER_COLUMNS}, password_hash, failed_logins, now() AS now FROM portal.users"
                " WHERE tenant_id = $1 AND lower(email) = lower($2)",
                tenant_id, email.strip(),
            )
        if row is None or row["disabled_at"] is not None or len(password) > MAX_PASSWORD_LENGTH:
            await self._verify(None, password[:MAX_PASSWORD_LENGTH])  # same work either way
            return "bad_credentials", None
        if row["locked_until"] is not None and row["locked_until"] > row["now"]:
            await self._verify(None, password)
            return "locked", None
        if not await self._verify(row["password_hash"], password):
            with translate_errors():
                # A lock that has run out starts a fresh count.
                await self._pool.execute(
                    "UPDATE portal.users u SET failed_logins = f.n,"
                    " locked_until = CASE WHEN f.n >= $2 THEN now() + $3::interval END"
                    " FROM (SELECT CASE WHEN locked_until IS NOT NULL AND locked_until <= now() THEN 1"
                    "       ELSE failed_logins + 1 END AS n FROM portal.users WHERE user_id = $1) f"
                    " WHERE u.user_id = $1",
                    row["user_id"], MAX_FAILED_LOGINS, LOCKOUT,
                )
            return "bad_credentials", None
        with translate_errors():
            await self._pool.execute(
                "UPDATE portal.users SET failed_logins = 0, locked_until = NULL WHERE user_id = $1", row["user_id"]
            )
        return "ok", _user(row)

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
