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


# -- the composition root (docs/layering.md) -------------------------------------------------

ROOT_MODULES = ("services.api.app", "services.api.portal")
CONTEXT_MODULES = ("services.ledger.api.context", "services.portal.context")


def _graph() -> Any:
    import grimp

    return grimp.build_graph("services", "consent", "schemas")


def _route_modules(graph: Any) -> list[str]:
    return sorted(m for m in graph.modules if m.startswith("services.") and m.rsplit(".", 1)[-1].startswith("routes"))


def test_the_composition_root_contracts_are_declared() -> None:
    by_id = {c["id"]: c for c in contracts()}
    assert by_id["api-root"]["forbidden_modules"] == ["services.api"]
    assert {"services.ledger", "services.portal", "services.audit", "services.importer", "services.projector",
            "services.mail"} <= set(by_id["api-root"]["source_modules"])
    assert set(CONTEXT_MODULES) <= set(by_id["context-below-routes"]["source_modules"])
    assert by_id["http-acyclic"]["type"] == "acyclic_siblings"


def test_the_root_assembles_every_route_module_and_no_route_module_reaches_the_root_back() -> None:
    """Found by name, so a route module added later is covered without a new contract: the
    root imports it (directly or through the service), and nothing it imports, however
    indirectly, leads back to the root (that would be an import circle)."""
    graph = _graph()
    routes = _route_modules(graph)
    assert len(routes) >= 14, routes
    for route in routes:
        assert any(graph.chain_exists(importer=root, imported=route) for root in ROOT_MODULES), \
            f"{route} is assembled by no composition root"
        for root in ROOT_MODULES:
            chain = graph.find_shortest_chain(importer=route, imported=root)
            assert chain is None, f"import circle: {' -> '.join(chain)}"


def test_the_request_context_modules_lead_to_no_route_module() -> None:
    graph = _graph()
    for context in CONTEXT_MODULES:
        for route in _route_modules(graph):
            chain = graph.find_shortest_chain(importer=context, imported=route)
            assert chain is None, f"the context reaches a route module: {' -> '.join(chain)}"
