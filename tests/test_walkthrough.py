"""The README's walkthrough (issue 16, item 2), run as written against `consent-ledger run`
(what `make run` starts), on free ports in a scratch folder: the six flows a newcomer needs,
each block of README.md's "Walkthrough" section executed by bash in order, in one shell. And
the CLI under the local stack finds it through var/local-stack.json (item 9)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from services.devservers import free_port
from services.devstack import READY_LINE
from tests import processes

REPO = Path(__file__).resolve().parents[1]
MARK = "=== walkthrough block {} ==="


def walkthrough_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Walkthrough: the six flows")
    end = readme.index("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", readme[start:end], re.S)


def wait_ready(log_path: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if READY_LINE in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"consent-ledger run exited with {proc.returncode}:\n{text}")
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout}s:\n{log_path.read_text()}")


def exported(output: str) -> dict[str, str]:
    """The variables of the `export ...` line `make run` prints for the walkthrough."""
    [line] = [ln.strip() for ln in output.splitlines() if ln.strip().startswith("export API=")]
    return dict(word.split("=", 1) for word in shlex.split(line)[1:])


@pytest.fixture
def stack():  # type: ignore[no-untyped-def]
    """`consent-ledger run` in a scratch folder (its ./var there), with the repository's
    examples. The folder is not under pytest's /tmp/pytest-of-<user>: the embedded
    PostgreSQL runs as another user when tests run as root, and a concurrent pytest session
    resets that folder to 0700, which would lock the server out mid-test."""
    with tempfile.TemporaryDirectory(prefix="walkthrough-") as scratch:
        yield from _stack(Path(scratch))


def _stack(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    ports = {name: free_port() for name in ("LEDGER_HTTP_PORT", "LEDGER_PORTAL_PORT", "LEDGER_PG_PORT",
                                             "LEDGER_BROKER_PORT")}
    env.update({k: str(v) for k, v in ports.items()})
    env["LEDGER_PORTAL_BASE_URL"] = f"http://127.0.0.1:{ports['LEDGER_PORTAL_PORT']}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log_path = tmp_path / "run.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([*processes.consent_ledger(), "run"], env=env, cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        output = wait_ready(log_path, proc)
        yield tmp_path, env, output, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                processes.stop(proc)


def test_the_readme_walkthrough_runs_as_written_against_the_local_stack(stack) -> None:  # type: ignore[no-untyped-def]
    cwd, env, output, proc = stack
    blocks = walkthrough_blocks()
    assert len(blocks) == 6, "one block per flow"
    # The CLI must find the stack by itself: nothing but the printed export line is set.
    env = {k: v for k, v in env.items() if not k.startswith("LEDGER_")} | exported(output)
    script = "set -euo pipefail\n" + "".join(f"printf '\\n{MARK.format(i)}\\n'\n{b}" for i, b in enumerate(blocks, 1))
    done = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    parts = re.split(r"\n=== walkthrough block \d ===\n", done.stdout)[1:]
    invoice, preference, check, topic, audit, erasure = parts
    assert '"event_ids"' in invoice and '"replayed":false' in invoice
    assert '"event_ids"' in preference
    assert check.split() == ['["K2001","opted_out"]', '["K1001","soft_opt_in"]', '["NIEMAND","unknown_subject"]']
    assert "K1001" in topic and "K2001" not in topic
    changed, then_cell = audit.strip().splitlines()
    assert '"then_reason":"soft_opt_in"' in changed and '"now_reason":"opted_out"' in changed
    assert '"reason":"soft_opt_in"' in then_cell
    assert '"keys_shredded":1' in erasure and erasure.strip().splitlines()[-1] == "HTTP 410"
    # The receipts of the walkthrough's change name the demo dealer's contact details.
    receipts = subprocess.run(["consent-ledger", "audit", "receipts", "--tenant", "demo-garage", "--ref", "K1003"],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert receipts.returncode == 0, receipts.stderr
    assert "privacy@autobedrijf-demo.example.nl" in receipts.stdout and '"policyUrl"' in receipts.stdout


def test_cli_commands_find_the_local_stack_through_a_private_connection_file(stack) -> None:  # type: ignore[no-untyped-def]
    cwd, env, output, proc = stack
    conn = cwd / "var" / "local-stack.json"
    assert conn.stat().st_mode & 0o777 == 0o600
    assert "master.key" in conn.read_text() and (cwd / "var" / "master.key").read_text() not in conn.read_text()
    bare = {k: v for k, v in env.items() if not k.startswith("LEDGER_")}
    made = subprocess.run([*processes.consent_ledger(), "portal", "create-user", "--tenant", "demo-garage",
                           "--email", "nieuw@demo.example.nl", "--role", "staff"], cwd=cwd, env=bare,
                          input="een-lang-genoeg-wachtwoord\n", capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    # Stopped: the file goes, and the same command says what is missing instead of guessing.
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert not conn.exists()
    again = subprocess.run([*processes.consent_ledger(), "portal", "create-user", "--tenant", "demo-garage",
                            "--email", "ander@demo.example.nl"], cwd=cwd, env=bare,
                           input="een-lang-genoeg-wachtwoord\n", capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "LEDGER_DATABASE_URL" in again.stderr
