"""Settings from the environment: a value that cannot be used stops every command with a
message naming the variable (exit 2), never a traceback or a start on a default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.settings import SettingsError, from_env

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("name", "value", "says"), [
    ("LEDGER_HTTP_PORT", "abc", "must be a whole number, not 'abc'"),
    ("LEDGER_HTTP_PORT", "70000", "must be from 1 to 65535, not 70000"),
    ("LEDGER_HTTP_WORKERS", "0", "must be at least 1, not 0"),
    ("LEDGER_DB_POOL_SIZE", "-3", "must be at least 1, not -3"),
    ("LEDGER_PORTAL_RATE_BURST", "1.5", "must be a whole number"),
    ("LEDGER_LOG_LEVEL", "loud", "must be one of debug, info, warning, error, critical"),
])
def test_an_unusable_value_is_refused_naming_the_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as refused:
        from_env({"LEDGER_DATABASE_URL": "postgresql://x", name: value})
    assert str(refused.value).startswith(f"{name} {says}")


def test_empty_values_mean_the_default_and_levels_are_case_blind() -> None:
    settings = from_env({"LEDGER_HTTP_PORT": "", "LEDGER_LOG_LEVEL": "WARNING", "LEDGER_PORTAL_RATE_PER_MINUTE": "0"})
    assert (settings.port, settings.log_level, settings.portal_rate_per_minute) == (8080, "warning", 0)


def test_the_cli_exits_2_with_the_message_and_no_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "services.cli", "keygen"], capture_output=True, text=True,
                          env={**os.environ, "LEDGER_HTTP_WORKERS": "many"}, timeout=60, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip() == "consent-ledger: LEDGER_HTTP_WORKERS must be a whole number, not 'many'"
