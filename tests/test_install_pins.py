"""A fresh install gets what CI tested: every dependency pinned in constraints.txt, used everywhere.

A fresh machine once resolved msgspec 0.23 where 0.22 had been tested, and the schema test
failed for every submission. These tests fail when a dependency is added to pyproject.toml
without `make lock`, or when an install path stops using the pins.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.lower().replace("_", "-")] = pinned
    return pins


def test_every_dependency_of_every_extra_is_pinned_to_one_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = _pins()
    missing = sorted({_name(r) for r in wanted} - pins.keys())
    assert missing == [], f"not in constraints.txt (run `make lock`): {missing}"


def test_the_installed_packages_are_the_pinned_versions() -> None:
    pins = _pins()
    for name in ("msgspec", "aiohttp", "asyncpg", "aiokafka", "structlog", "schemathesis", "hypothesis"):
        assert version(name) == pins[name], f"{name} {version(name)} installed, {pins[name]} pinned"


def test_make_and_the_dockerfile_install_with_the_pins() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "install" in line and "$(PIP)" in line and "-e" in line]
    assert installs and all("-c constraints.txt" in line for line in installs)
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "COPY pyproject.toml constraints.txt" in dockerfile
    assert "pip install -c constraints.txt -r" in dockerfile
    assert "!constraints.txt" in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text()
