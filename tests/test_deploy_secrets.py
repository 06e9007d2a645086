"""Secrets from files (LEDGER_MASTER_KEY_FILE, LEDGER_DATABASE_PASSWORD_FILE): how the
containers of deploy/compose.yaml get them without putting them in the environment."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from services.cli import main
from services.ledger.subject_keys import new_master_key, parse_master_key
from services.settings import SettingsError, from_env


def test_the_master_key_is_read_from_the_file_without_its_newline(tmp_path: Path) -> None:
    key = new_master_key()
    (tmp_path / "master_key").write_text(key + "\n")
    settings = from_env({"LEDGER_MASTER_KEY_FILE": str(tmp_path / "master_key")})
    assert settings.master_key == key
    assert len(parse_master_key(settings.master_key)) == 32


def test_a_master_key_in_the_environment_is_used_before_the_file(tmp_path: Path) -> None:
    key = new_master_key()
    assert from_env({"LEDGER_MASTER_KEY": key, "LEDGER_MASTER_KEY_FILE": str(tmp_path / "absent")}).master_key == key


def test_the_database_password_goes_into_the_url_percent_encoded(tmp_path: Path) -> None:
    password = "p@ss:w/rd%?#"
    (tmp_path / "db_app_password").write_text(password + "\n")
    settings = from_env({"LEDGER_DATABASE_URL": "postgresql://consent_app@postgres:5432/consent_ledger?sslmode=require",
                         "LEDGER_DATABASE_PASSWORD_FILE": str(tmp_path / "db_app_password")})
    url = urlsplit(settings.database_url)
    assert (url.hostname, url.port, url.path, url.query) == ("postgres", 5432, "/consent_ledger", "sslmode=require")
    assert url.username == "consent_app"
    assert unquote(url.password or "") == password


def test_several_hosts_keep_their_order_when_the_password_is_added(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x")
    settings = from_env({"LEDGER_DATABASE_URL": "postgresql://app@db1:5432,db2:5432/ledger",
                         "LEDGER_DATABASE_PASSWORD_FILE": str(tmp_path / "pw")})
    assert settings.database_url == "postgresql://app:x@db1:5432,db2:5432/ledger"


@pytest.mark.parametrize(("env", "message"), [
    ({"LEDGER_MASTER_KEY_FILE": "/nonexistent/master_key"}, "LEDGER_MASTER_KEY_FILE=/nonexistent/master_key: cannot read"),
    ({"LEDGER_DATABASE_URL": "postgresql://postgres/db", "LEDGER_DATABASE_PASSWORD_FILE": "{pw}"}, "needs a user"),
    ({"LEDGER_DATABASE_URL": "postgresql://u:inline@h/db", "LEDGER_DATABASE_PASSWORD_FILE": "{pw}"}, "use one"),
    ({"LEDGER_MASTER_KEY_FILE": "{empty}"}, "is empty"),
])
def test_an_unusable_secret_file_is_refused_with_the_variable_named(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    (tmp_path / "pw").write_text("secret")
    (tmp_path / "empty").write_text("\n")
    env = {k: v.format(pw=tmp_path / "pw", empty=tmp_path / "empty") for k, v in env.items()}
    with pytest.raises(SettingsError, match=message):
        from_env(env)


def test_the_cli_exits_2_with_a_clear_message_when_a_secret_file_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEDGER_MASTER_KEY_FILE", "/run/secrets/not-there")
    monkeypatch.delenv("LEDGER_MASTER_KEY", raising=False)
    assert main(["keygen"]) == 2
    err = capsys.readouterr().err
    assert "LEDGER_MASTER_KEY_FILE=/run/secrets/not-there: cannot read it" in err
    assert "Traceback" not in err
