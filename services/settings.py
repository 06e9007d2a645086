"""Configuration from the environment. One Settings object, built at start-up and
passed down; nothing reads os.environ after that."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec


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
    relay_replication_factor: int = 1
    # The local stack (services/devstack.py): data folder and the ports of the embedded servers.
    var_dir: str = "var"
    pg_port: int = 54329
    broker_port: int = 19092
    # The DMS import's HTTP upload (services/importer/): folder of named mapping files
    # (<name>.toml, chosen with ?mapping=name) and the largest upload accepted.
    import_mappings_dir: str | None = None
    import_max_upload_mb: int = 200
    # Outbound e-mail (services/mail/): the SMTP server the outbox worker sends through. No
    # host: mails are queued in PostgreSQL but not sent (`make run` starts a local server).
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_security: str = "none"  # none | starttls | tls (implicit TLS, usually port 465)
    smtp_user: str | None = None
    smtp_password: str | None = None  # secret: LEDGER_SMTP_PASSWORD_FILE
    smtp_from: str = "noreply@localhost"
    smtp_timeout: int = 30


def from_env(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    e = os.environ if env is None else env
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
        "relay_replication_factor": _int(e, "LEDGER_RELAY_REPLICATION_FACTOR", 1, minimum=1),
        "var_dir": e.get("LEDGER_VAR_DIR", "var"),
        "pg_port": _int(e, "LEDGER_PG_PORT", 54329, minimum=1, maximum=65535),
        "broker_port": _int(e, "LEDGER_BROKER_PORT", 19092, minimum=1, maximum=65535),
        "import_mappings_dir": e.get("LEDGER_IMPORT_MAPPINGS_DIR") or None,
        "import_max_upload_mb": _int(e, "LEDGER_IMPORT_MAX_UPLOAD_MB", 200, minimum=1),
        "smtp_host": e.get("LEDGER_SMTP_HOST") or None,
        "smtp_port": _int(e, "LEDGER_SMTP_PORT", 25, minimum=1, maximum=65535),
        "smtp_security": _choice(e, "LEDGER_SMTP_SECURITY", "none", ("none", "starttls", "tls")),
        "smtp_user": e.get("LEDGER_SMTP_USER") or None,
        "smtp_password": _secret_file(e, "LEDGER_SMTP_PASSWORD_FILE"),
        "smtp_from": _mail_address(e, "LEDGER_SMTP_FROM", "noreply@localhost"),
        "smtp_timeout": _int(e, "LEDGER_SMTP_TIMEOUT", 30, minimum=1, maximum=600),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


# -- secrets from files (container secrets, systemd credentials, Kubernetes secret volumes) ------


class SettingsError(ValueError):
    """A setting that cannot be used (not a number, out of range, a secret file that cannot
    be read); the message names it."""


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
