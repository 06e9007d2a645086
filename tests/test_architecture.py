"""The package layering and the types of the bottom packages, checked on every test run (so in
CI): services -> consent -> schemas, no I/O in consent/ (import contracts in pyproject.toml,
``[tool.importlinter]``, checked by import-linter), and consent/ and schemas/ pass mypy in
strict mode (``[tool.mypy]``). docs/layering.md says what each layer may import and why."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH: analyse this checkout's packages, whatever the venv's editable install points to.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    return subprocess.run([str(c) for c in command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def contracts() -> list[dict[str, Any]]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["tool"]["importlinter"]["contracts"])


def test_the_layers_are_declared_services_above_consent_above_schemas() -> None:
    layers = [c for c in contracts() if c["type"] == "layers"]
    assert [c["layers"] for c in layers] == [["services", "consent", "schemas"]]
    forbidden = {m for c in contracts() if c["type"] == "forbidden" and c["source_modules"] == ["consent"]
                 for m in c["forbidden_modules"]}
    assert {"aiohttp", "asyncpg", "aiokafka"} <= forbidden


def test_every_import_contract_in_pyproject_is_kept() -> None:
    done = run(BIN / "lint-imports")
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"lint-imports found imports that break the layering:\n{output}"
    for contract in contracts():
        # the report wraps long names; the verdict follows each name
        name = " ".join(str(contract["name"]).split())
        assert f"{name} KEPT" in " ".join(output.split()), f"contract {contract['id']} not reported kept:\n{output}"


def test_consent_and_schemas_type_check_in_strict_mode() -> None:
    done = run(sys.executable, "-m", "mypy", "--strict", "consent", "schemas")
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Success: no issues found" in output, f"mypy --strict consent schemas:\n{output}"
