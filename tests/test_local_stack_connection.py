"""The connection file `make run` leaves in var/ for CLI commands (issue 16, item 9): used
only while its stack runs, only when private, and never over the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.settings import SettingsError, connection_file, from_env, write_connection_file


def running(var: Path, **values: object) -> Path:
    (var / "master.key").write_text("a2V5LWtleS1rZXkta2V5LWtleS1rZXkta2V5LWtleS0=\n")
    return write_connection_file(var, {"pid": os.getpid(), "database_url": "postgresql://local/x",
                                       "kafka_bootstrap": "127.0.0.1:1", "master_key_file": str(var / "master.key"),
                                       **values})


def test_a_running_stack_fills_in_the_database_broker_and_master_key(tmp_path: Path) -> None:
    path = running(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    settings = from_env({"LEDGER_VAR_DIR": str(tmp_path)}, local_stack=True)
    assert settings.database_url == "postgresql://local/x" and settings.kafka_bootstrap == "127.0.0.1:1"
    assert settings.master_key == "a2V5LWtleS1rZXkta2V5LWtleS1rZXkta2V5LWtleS0="


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    running(tmp_path)
    settings = from_env({"LEDGER_VAR_DIR": str(tmp_path), "LEDGER_DATABASE_URL": "postgresql://real/db"},
                        local_stack=True)
    assert settings.database_url == "postgresql://real/db" and settings.kafka_bootstrap is None
    assert settings.master_key is None


def test_a_file_left_by_a_stack_that_is_gone_is_ignored(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    running(tmp_path, pid=int(gone.stdout))
    assert from_env({"LEDGER_VAR_DIR": str(tmp_path)}, local_stack=True).database_url == ""


def test_a_file_others_may_read_is_refused_with_how_to_fix_it(tmp_path: Path) -> None:
    path = running(tmp_path)
    path.chmod(0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        from_env({"LEDGER_VAR_DIR": str(tmp_path)}, local_stack=True)


def test_an_explicit_environment_mapping_never_reads_the_file_unless_asked(tmp_path: Path) -> None:
    running(tmp_path)
    assert from_env({"LEDGER_VAR_DIR": str(tmp_path)}).database_url == ""
    assert connection_file(tmp_path).exists()
