"""Configuration from the environment. One Settings object, built at start-up and
passed down; nothing reads os.environ after that."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from services.errors import LedgerError


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str
    kafka_bootstrap: str | None = None
    # TLS and SASL to Kafka (services/kafka_security.py); PLAINTEXT needs none of the rest.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None  # secret: LEDGER_KAFKA_SASL_PASSWORD_FILE
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    master_key: str | None = None  # base64, 32 bytes (LEDGER_MASTER_KEY)
    # The master key being rotated out (LEDGER_MASTER_KEY_PREVIOUS): still opens what it
    # wrapped until `consent-ledger keys rotate` has re-wrapped everything (docs/deploy.md).
    master_key_previous: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    portal_port: int = 8081
    # The ledger API: server processes sharing the port with SO_REUSEPORT (`serve --workers`).
    http_workers: int = 1
    portal_base_url: str = "http://127.0.0.1:8081"
    # Privacy portal (services/portal/): requests per minute and burst per client address on /p/ and /login.
    portal_rate_per_minute: int = 60
    portal_rate_burst: int = 20
    # Privacy portal: server processes sharing the port with SO_REUSEPORT (`portal serve --workers`).
    portal_workers: int = 1
    # Comma-separated addresses of reverse proxies whose X-Forwarded-For names the client (rate limit).
    portal_trusted_proxies: str = ""
    log_level: str = "info"
    pool_size: int = 10
    # The relay to Kafka (services/ledger/relay.py): partitions and replication of the topic it creates.
    relay_partitions: int = 6
    log_partitions: int = 32  # used once, by `migrate` on a new database (docs/event-store.md)
    relay_replication_factor: int = 1
    # The local stack (services/devstack.py): data folder and the ports of the embedded servers.
    var_dir: str = "var"
    pg_port: int = 54329
    broker_port: int = 19092
    # The DMS import's HTTP upload (services/importer/): folder of named mapping files
    # (<name>.toml, chosen with ?mapping=name) and the largest upload accepted.
    import_mappings_dir: str | None = None
    import_max_upload_mb: int = 200
    # Slow clients (API and portal servers, services/serving.py), in seconds: a connection
    # must send a complete request head within http_header_timeout of connecting or of the
    # previous response (so an idle kept-alive connection closes then too); a request body
    # must arrive within http_body_timeout (an import upload: no pause longer than that).
    http_header_timeout: int = 15
    http_body_timeout: int = 30
    # How long an eligibility check with ?min_position= waits for the read model to reach
    # that ledger position before it answers 503 (read your own writes).
    min_position_wait_ms: int = 2000
    # Outbound e-mail (services/mail/): the SMTP server the outbox worker sends through. No
    # host: mails are queued in PostgreSQL but not sent (`make run` starts a local server).
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_security: str = "none"  # none | starttls | tls (implicit TLS, usually port 465)
    smtp_user: str | None = None
    smtp_password: str | None = None  # secret: LEDGER_SMTP_PASSWORD_FILE
    smtp_from: str = "noreply@localhost"
    smtp_timeout: int = 30


CONNECTION_FILE = "local-stack.json"
"""Written by ``make run`` into its data folder (mode 0600) while the stack runs, so that
``consent-ledger`` commands in another terminal find the embedded PostgreSQL, broker and
master key without exports (issue 16). A real deployment sets LEDGER_DATABASE_URL, and then
the file is never read."""


def connection_file(var_dir: str | Path) -> Path:
    return Path(var_dir) / CONNECTION_FILE


def write_connection_file(var_dir: str | Path, values: Mapping[str, object]) -> Path:
    """Write the running stack's connection details, readable by the owner only, atomically
    (a reader never sees half a file); ``values`` holds ``pid`` and the settings to use."""
    path = connection_file(var_dir)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)  # also when the file was there with other bits
        json.dump(dict(values), f, indent=2)
    os.replace(tmp, path)
    return path


def remove_connection_file(var_dir: str | Path, pid: int) -> None:
    """Remove the file if it is this process's (a second stack may have written its own)."""
    path = connection_file(var_dir)
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def read_connection_file(var_dir: str | Path) -> dict[str, object] | None:
    """The running local stack's connection details, or None when no stack runs there (no
    file, or the process that wrote it is gone). A file others may read or write is
    refused: it points to the master key, and a planted one could redirect commands."""
    path = connection_file(var_dir)
    try:
        st = path.stat()
    except OSError:
        return None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SettingsError(f"{path} may be read or written by others (mode {stat.S_IMODE(st.st_mode):04o}):"
                            f" run 'chmod 600 {path}' or delete it and restart 'make run'")
    if st.st_uid != os.getuid():
        raise SettingsError(f"{path} belongs to another user: delete it and restart 'make run'")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path} cannot be read ({exc}): delete it and restart 'make run'") from None
    if not isinstance(values, dict) or not _alive(values.get("pid")):
        return None
    return values


def _local_stack_values(e: Mapping[str, str]) -> dict[str, object]:
    """Settings from the running ``make run`` stack, for those the environment leaves unset."""
    found = read_connection_file(e.get("LEDGER_VAR_DIR", "var"))
    if found is None:
        return {}
    values: dict[str, object] = {}
    if isinstance(found.get("database_url"), str):
        values["database_url"] = found["database_url"]
    if isinstance(found.get("kafka_bootstrap"), str) and not e.get("LEDGER_KAFKA_BOOTSTRAP"):
        values["kafka_bootstrap"] = found["kafka_bootstrap"]
    key_file = found.get("master_key_file")
    if isinstance(key_file, str) and not (e.get("LEDGER_MASTER_KEY") or e.get("LEDGER_MASTER_KEY_FILE")):
        values["master_key"] = _secret_file({"master key file": key_file}, "master key file")
    return values


def from_env(env: Mapping[str, str] | None = None, *, local_stack: bool | None = None,
             **overrides: object) -> Settings:
    """Settings from the environment. Where LEDGER_DATABASE_URL is unset and a ``make run``
    stack is running in the data folder (``local_stack``; default: when reading the real
    environment), its connection file fills in the database, the broker and the master key."""
    e = os.environ if env is None else env
    use_local = (env is None) if local_stack is None else local_stack
    local = _local_stack_values(e) if use_local and not e.get("LEDGER_DATABASE_URL") else {}
    values: dict[str, object] = {
        "database_url": _with_password(e.get("LEDGER_DATABASE_URL", ""),
                                       _secret_file(e, "LEDGER_DATABASE_PASSWORD_FILE")),
        "kafka_bootstrap": e.get("LEDGER_KAFKA_BOOTSTRAP") or None,
        "kafka_security_protocol": e.get("LEDGER_KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT",
        "kafka_sasl_mechanism": e.get("LEDGER_KAFKA_SASL_MECHANISM") or None,
        "kafka_sasl_username": e.get("LEDGER_KAFKA_SASL_USERNAME") or None,
        "kafka_sasl_password": e.get("LEDGER_KAFKA_SASL_PASSWORD")
        or _secret_file(e, "LEDGER_KAFKA_SASL_PASSWORD_FILE"),
        "kafka_ssl_cafile": e.get("LEDGER_KAFKA_SSL_CAFILE") or None,
        "kafka_ssl_certfile": e.get("LEDGER_KAFKA_SSL_CERTFILE") or None,
        "kafka_ssl_keyfile": e.get("LEDGER_KAFKA_SSL_KEYFILE") or None,
        "master_key": e.get("LEDGER_MASTER_KEY") or _secret_file(e, "LEDGER_MASTER_KEY_FILE"),
        "master_key_previous": e.get("LEDGER_MASTER_KEY_PREVIOUS") or _secret_file(e, "LEDGER_MASTER_KEY_PREVIOUS_FILE"),
        "host": e.get("LEDGER_HTTP_HOST", "127.0.0.1"),
        "port": _int(e, "LEDGER_HTTP_PORT", 8080, minimum=1, maximum=65535),
        "portal_port": _int(e, "LEDGER_PORTAL_PORT", 8081, minimum=1, maximum=65535),
        "http_workers": _int(e, "LEDGER_HTTP_WORKERS", 1, minimum=1),
        "portal_base_url": e.get("LEDGER_PORTAL_BASE_URL", "http://127.0.0.1:8081"),
        "portal_rate_per_minute": _int(e, "LEDGER_PORTAL_RATE_PER_MINUTE", 60, minimum=0),
        "portal_rate_burst": _int(e, "LEDGER_PORTAL_RATE_BURST", 20, minimum=0),
        "portal_workers": _int(e, "LEDGER_PORTAL_WORKERS", 1, minimum=1),
        "portal_trusted_proxies": e.get("LEDGER_PORTAL_TRUSTED_PROXIES", ""),
        "log_level": _choice(e, "LEDGER_LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")),
        "pool_size": _int(e, "LEDGER_DB_POOL_SIZE", 10, minimum=1),
        "relay_partitions": _int(e, "LEDGER_RELAY_PARTITIONS", 6, minimum=1),
        "log_partitions": _int(e, "LEDGER_LOG_PARTITIONS", 32, minimum=1, maximum=1024),
        "relay_replication_factor": _int(e, "LEDGER_RELAY_REPLICATION_FACTOR", 1, minimum=1),
        "var_dir": e.get("LEDGER_VAR_DIR", "var"),
        "pg_port": _int(e, "LEDGER_PG_PORT", 54329, minimum=1, maximum=65535),
        "broker_port": _int(e, "LEDGER_BROKER_PORT", 19092, minimum=1, maximum=65535),
        "import_mappings_dir": e.get("LEDGER_IMPORT_MAPPINGS_DIR") or None,
        "import_max_upload_mb": _int(e, "LEDGER_IMPORT_MAX_UPLOAD_MB", 200, minimum=1),
        "http_header_timeout": _int(e, "LEDGER_HTTP_HEADER_TIMEOUT", 15, minimum=1, maximum=3600),
        "http_body_timeout": _int(e, "LEDGER_HTTP_BODY_TIMEOUT", 30, minimum=1, maximum=3600),
        "min_position_wait_ms": _int(e, "LEDGER_MIN_POSITION_WAIT_MS", 2000, minimum=0, maximum=60_000),
        "smtp_host": e.get("LEDGER_SMTP_HOST") or None,
        "smtp_port": _int(e, "LEDGER_SMTP_PORT", 25, minimum=1, maximum=65535),
        "smtp_security": _choice(e, "LEDGER_SMTP_SECURITY", "none", ("none", "starttls", "tls")),
        "smtp_user": e.get("LEDGER_SMTP_USER") or None,
        "smtp_password": _secret_file(e, "LEDGER_SMTP_PASSWORD_FILE"),
        "smtp_from": _mail_address(e, "LEDGER_SMTP_FROM", "noreply@localhost"),
        "smtp_timeout": _int(e, "LEDGER_SMTP_TIMEOUT", 30, minimum=1, maximum=600),
    }
    for name, value in local.items():
        if not values.get(name):
            values[name] = value
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


# -- secrets from files (container secrets, systemd credentials, Kubernetes secret volumes) ------


class SettingsError(LedgerError, ValueError):
    """A setting that cannot be used (not a number, out of range, a secret file that cannot
    be read); the message names it. Raised at start-up: the CLI prints it and exits 2."""


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    """A whole-number setting; anything else stops the command with a message naming it."""
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {text!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise SettingsError(f"{name} must be {bounds}, not {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = (env.get(name) or default).lower()
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, not {env.get(name)!r}")
    return value


def _mail_address(env: Mapping[str, str], name: str, default: str) -> str:
    """A bare e-mail address (no display name, no line break: it becomes a mail header)."""
    value = env.get(name) or default
    local, at, domain = value.partition("@")
    if not at or not local or not domain or any(c.isspace() or c in '<>,;"' for c in value) \
            or not value.isprintable():
        raise SettingsError(f"{name} must be a bare e-mail address like noreply@dealer.example, not {value!r}")
    return value


def _secret_file(env: Mapping[str, str], name: str) -> str | None:
    """The content of the file that ``env[name]`` points to, without its trailing newline,
    so a secret never has to sit in the environment itself (``docker inspect``, /proc)."""
    path = env.get(name)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"{name}={path}: cannot read it ({exc.strerror})") from None
    if not value:
        raise SettingsError(f"{name}={path}: the file is empty")
    return value


def _with_password(url: str, password: str | None) -> str:
    """``postgresql://user@host/db`` plus the password from LEDGER_DATABASE_PASSWORD_FILE
    (percent-encoded, as libpq and asyncpg decode it)."""
    if password is None or not url:
        return url
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or not userinfo:
        raise SettingsError("LEDGER_DATABASE_PASSWORD_FILE needs a user in LEDGER_DATABASE_URL"
                            " (postgresql://user@host:5432/db)")
    if ":" in userinfo:
        raise SettingsError("LEDGER_DATABASE_URL has a password and LEDGER_DATABASE_PASSWORD_FILE is set: use one")
    return urlunsplit(parts._replace(netloc=f"{userinfo}:{quote(password, safe='')}@{hosts}"))
