"""TLS and SASL for the Kafka clients (relay, projector), from the settings, in one place.

A real Apache Kafka cluster outside a trusted network wants encrypted connections (TLS)
and authenticated clients (SASL: PLAIN or SCRAM over TLS). aiokafka takes these as
``security_protocol``, ``ssl_context`` and ``sasl_*`` arguments on every client (producer,
consumer, admin); :meth:`KafkaSecurity.client_options` gives exactly those, and nothing at
all for the default ``PLAINTEXT``, so a local broker needs no settings.

The SASL password is a secret: it comes from a file (``LEDGER_KAFKA_SASL_PASSWORD_FILE``)
or the environment, is never part of a ``repr`` and never logged.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from services.settings import Settings, SettingsError

PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, kw_only=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None  # CA bundle that signed the brokers' certificates (default: the system's)
    ssl_certfile: str | None = None  # client certificate, for brokers that require mutual TLS
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        """Refuse a configuration aiokafka would fail on later, naming the setting."""
        if self.protocol not in PROTOCOLS:
            raise SettingsError(f"LEDGER_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)},"
                                f" not {self.protocol!r}")
        if self.protocol.startswith("SASL_"):
            if self.sasl_mechanism not in MECHANISMS:
                raise SettingsError(f"LEDGER_KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)}"
                                    f" with {self.protocol}, not {self.sasl_mechanism!r}")
            if not self.sasl_username or not self.sasl_password:
                raise SettingsError(f"{self.protocol} needs LEDGER_KAFKA_SASL_USERNAME and"
                                    " LEDGER_KAFKA_SASL_PASSWORD_FILE (or LEDGER_KAFKA_SASL_PASSWORD)")
            if self.protocol == "SASL_PLAINTEXT" and self.sasl_mechanism == "PLAIN":
                raise SettingsError("SASL PLAIN sends the password as it is: use SASL_SSL (or a SCRAM mechanism)")
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise SettingsError(f"SASL settings are given but LEDGER_KAFKA_SECURITY_PROTOCOL is {self.protocol}:"
                                " use SASL_SSL")
        uses_tls = self.protocol in ("SSL", "SASL_SSL")
        for name, path in (("LEDGER_KAFKA_SSL_CAFILE", self.ssl_cafile), ("LEDGER_KAFKA_SSL_CERTFILE", self.ssl_certfile),
                           ("LEDGER_KAFKA_SSL_KEYFILE", self.ssl_keyfile)):
            if path is None:
                continue
            if not uses_tls:
                raise SettingsError(f"{name} is set but LEDGER_KAFKA_SECURITY_PROTOCOL is {self.protocol}: use SSL"
                                    " or SASL_SSL")
            if not Path(path).is_file():
                raise SettingsError(f"{name} names {path!r}, which is not a readable file")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise SettingsError("LEDGER_KAFKA_SSL_CERTFILE and LEDGER_KAFKA_SSL_KEYFILE go together (mutual TLS)")

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaSecurity:
        return cls(
            protocol=settings.kafka_security_protocol.upper(),
            sasl_mechanism=settings.kafka_sasl_mechanism.upper() if settings.kafka_sasl_mechanism else None,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=settings.kafka_sasl_password,
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """A context that verifies the brokers' certificates and host names, or None
        without TLS."""
        if self.protocol not in ("SSL", "SASL_SSL"):
            return None
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka client; empty for PLAINTEXT."""
        if self.protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": self.protocol}
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.protocol.startswith("SASL_"):
            options.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                           sasl_plain_password=self.sasl_password)
        return options


PLAINTEXT: Final = KafkaSecurity()
