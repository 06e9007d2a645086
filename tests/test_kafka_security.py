"""TLS and SASL to Kafka from the settings (services/kafka_security.py): what every client
(relay, projector) is given, and the clear refusals of settings that could not work."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from services.kafka_security import PLAINTEXT, KafkaSecurity
from services.ledger.relay import RelayConfig
from services.projector import publisher as publisher_module
from services.projector.publisher import KafkaPublisher
from services.settings import SettingsError, from_env

REPO = Path(__file__).resolve().parent.parent


def test_without_settings_the_clients_get_no_security_options() -> None:
    assert KafkaSecurity.from_settings(from_env({"LEDGER_DATABASE_URL": "postgresql://x"})) == PLAINTEXT
    assert PLAINTEXT.client_options() == {}


async def test_sasl_over_tls_gives_every_client_a_verifying_context_and_the_credentials(tmp_path: Path) -> None:
    password = tmp_path / "kafka-password"
    password.write_text("s3cret-kafka-pass\n")
    settings = from_env({
        "LEDGER_DATABASE_URL": "postgresql://x", "LEDGER_KAFKA_BOOTSTRAP": "kafka-1:9093",
        "LEDGER_KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "LEDGER_KAFKA_SASL_MECHANISM": "scram-sha-512",
        "LEDGER_KAFKA_SASL_USERNAME": "consent-ledger", "LEDGER_KAFKA_SASL_PASSWORD_FILE": str(password),
    })
    security = KafkaSecurity.from_settings(settings)
    options = security.client_options()
    context = options.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert options == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                       "sasl_plain_username": "consent-ledger", "sasl_plain_password": "s3cret-kafka-pass"}
    assert "s3cret" not in repr(security)
    assert RelayConfig.from_settings(settings).security == security
    # aiokafka's own clients accept exactly these options (their constructors check them).
    producer = AIOKafkaProducer(bootstrap_servers="kafka-1:9093", **security.client_options())
    consumer = AIOKafkaConsumer(bootstrap_servers="kafka-1:9093", **security.client_options())
    admin = AIOKafkaAdminClient(bootstrap_servers="kafka-1:9093", **security.client_options())
    await producer.stop()
    await consumer.stop()
    await admin.close()


async def test_the_projectors_clients_are_built_with_the_security_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []

    class Refused(Exception):
        pass

    def admin(**kwargs: object) -> None:
        seen.append(kwargs)
        raise Refused

    monkeypatch.setattr(publisher_module, "AIOKafkaAdminClient", admin)
    security = KafkaSecurity(protocol="SSL")
    with pytest.raises(Refused):
        await KafkaPublisher("kafka-1:9093", security=security).start()
    assert seen[0]["security_protocol"] == "SSL" and isinstance(seen[0]["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize(("env", "named"), [
    ({"LEDGER_KAFKA_SECURITY_PROTOCOL": "TLS"}, "LEDGER_KAFKA_SECURITY_PROTOCOL"),
    ({"LEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LEDGER_KAFKA_SASL_USERNAME": "u",
      "LEDGER_KAFKA_SASL_PASSWORD": "p"}, "LEDGER_KAFKA_SASL_MECHANISM"),
    ({"LEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LEDGER_KAFKA_SASL_MECHANISM": "PLAIN"},
     "LEDGER_KAFKA_SASL_USERNAME"),
    ({"LEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "LEDGER_KAFKA_SASL_MECHANISM": "PLAIN",
      "LEDGER_KAFKA_SASL_USERNAME": "u", "LEDGER_KAFKA_SASL_PASSWORD": "p"}, "SASL_SSL"),
    ({"LEDGER_KAFKA_SASL_USERNAME": "u"}, "SASL_SSL"),
    ({"LEDGER_KAFKA_SECURITY_PROTOCOL": "SSL", "LEDGER_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
     "LEDGER_KAFKA_SSL_CAFILE"),
    ({"LEDGER_KAFKA_SSL_CAFILE": __file__}, "LEDGER_KAFKA_SSL_CAFILE"),
    ({"LEDGER_KAFKA_SECURITY_PROTOCOL": "SSL", "LEDGER_KAFKA_SSL_CERTFILE": __file__},
     "LEDGER_KAFKA_SSL_KEYFILE"),
])
def test_settings_that_cannot_work_are_refused_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        KafkaSecurity.from_settings(from_env({"LEDGER_DATABASE_URL": "postgresql://x", **env}))


def test_the_cli_refuses_a_wrong_kafka_setting_before_it_starts_anything() -> None:
    env = {**os.environ, "LEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LEDGER_KAFKA_SASL_MECHANISM": "GSSAPI"}
    done = subprocess.run([sys.executable, "-m", "services.cli", "keygen"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 2
    assert "LEDGER_KAFKA_SASL_MECHANISM" in done.stderr and done.stdout == ""
