"""`consent-ledger audit ...` as a real process: snapshot (CSV, as of K), as-of view,
export, erase (then `consent-ledger verify` still passes), and clear failures."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import os
import sys
from pathlib import Path

from aiohttp.test_utils import TestClient

from consent.terms import ledger_day
from services.audit.snapshot import header
from services.settings import Settings
from tests.conftest import Dealer

BATCH = "/v1/tenants/garage-a/subjects:batch"


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """The CLI with the API's database and master key (the ``settings`` fixture)."""
    env = {**os.environ, "LEDGER_DATABASE_URL": settings.database_url, "LEDGER_MASTER_KEY": settings.master_key or "",
           "LEDGER_LOG_LEVEL": "warning"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_snapshot_holds_every_subject_known_at_k_and_agrees_with_the_as_of_view(
    api: TestClient, dealer: Dealer, settings: Settings, tmp_path: Path
) -> None:
    items = [{"kind": "invoice", "source": "dealer", "customer_ref": f"C{i}", "invoice_id": "F-1",
              "invoice_date": f"2024-0{1 + i % 9}-15"} for i in range(30)]
    items += [{"kind": "prospect", "source": "unknown", "customer_ref": f"P{i}", "acquired_on": "2024-11-01",
               "how": "beurs"} for i in range(5)]
    items.append({"kind": "preferences", "source": "dealer", "customer_ref": "C3",
                  "changes": [{"category": "newsletter", "channel": "email", "value": "opt_out"}]})
    r = await api.post(BATCH, json={"items": items}, headers=dealer.auth("importer"))
    assert r.status == 201, await r.text()
    known_at = (await r.json())["recorded_at"]
    r = await api.post(BATCH, headers=dealer.auth("importer"), json={"items": [
        {"kind": "invoice", "source": "dealer", "customer_ref": "LATE", "invoice_id": "F-1", "invoice_date": "2024-06-01"},
        {"kind": "invoice", "source": "dealer", "customer_ref": "C4", "invoice_id": "F-2", "invoice_date": "2024-12-01"},
    ]})
    assert r.status == 201

    out = tmp_path / "snapshot.csv"
    on = ledger_day(dt.datetime.now(dt.timezone.utc)).isoformat()  # the opt-out counts from the day it was saved
    code, _, err = await cli(settings, "audit", "snapshot", "--tenant", "garage-a", "--as-of", known_at,
                             "--at", on, "--out", str(out))
    assert code == 0, err
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["subjects"] == 35 and summary["on"] == on and summary["eligible_cells"] > 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == header() and len(rows) == 35
    by_ref = {row["customer_ref"]: row for row in rows}
    assert "LATE" not in by_ref and by_ref["P1"]["status"] == "prospect" and by_ref["P1"]["source"] == "unknown"
    assert by_ref["C3"]["newsletter:email"] == "no" and by_ref["C3"]["newsletter:email:reason"] == "opted_out"
    assert by_ref["C4"]["last_invoice_on"] == "2024-05-15"  # the later invoice was not known at K

    for ref in ("C4", "C0", "C8"):
        r = await api.get(f"/v1/tenants/garage-a/audit/subjects/dealer/{ref}",
                          params={"known_at": known_at, "on": on}, headers=dealer.auth("auditor"))
        view = await r.json()
        for c in view["cells"]:
            key = f"{c['category']}:{c['channel']}"
            assert by_ref[ref][key] == ("yes" if c["eligible"] else "no"), (ref, key, c, by_ref[ref])
            assert by_ref[ref][key + ":reason"] == c["reason"]
            assert by_ref[ref][key + ":until"] == (c["until"] or "")

    code, _, err = await cli(settings, "audit", "snapshot", "--tenant", "garage-a", "--as-of", "2999-01-01")
    assert code == 2 and "known_at_in_future" in err and "--as-of" in err
    code, _, err = await cli(settings, "audit", "snapshot", "--tenant", "garage-a", "--at", "tomorrow")
    assert code == 2 and "--at" in err
    code, _, err = await cli(settings, "audit", "snapshot", "--tenant", "nobody")
    assert code == 2 and "unknown_tenant" in err


async def test_the_cli_answers_as_of_exports_and_erases_and_the_chain_still_verifies(
    api: TestClient, dealer: Dealer, settings: Settings, tmp_path: Path
) -> None:
    path = "/v1/tenants/garage-a/subjects/dealer/C1/invoices"
    r = await api.post(path, json={"invoice_id": "F-1", "invoice_date": "2025-01-01",
                                   "contact": {"name": "Piet Puk"}}, headers=dealer.auth("importer"))
    assert r.status == 201
    subject = ("--tenant", "garage-a", "--source", "dealer", "--ref", "C1")

    code, out, err = await cli(settings, "audit", "as-of", *subject, "--on", "2025-06-01", "--compare")
    assert code == 0, err
    assert json.loads(out)["now"]["last_invoice_on"] == "2025-01-01"
    code, out, _ = await cli(settings, "audit", "export", *subject, "--format", "csv")
    assert code == 0 and "Piet Puk" in out

    code, _, err = await cli(settings, "audit", "erase", *subject, "--confirm-ref", "C2")
    assert code == 2 and "confirm" in err
    code, out, err = await cli(settings, "audit", "erase", *subject, "--confirm-ref", "C1")
    assert code == 0, err
    assert json.loads(out)["keys_shredded"] == 1
    code, out, _ = await cli(settings, "audit", "export", *subject)
    assert code == 0 and "Piet Puk" not in out and json.loads(out)["personal_data"] == "[erased]"
    code, out, err = await cli(settings, "audit", "as-of", *subject)  # an erased subject: an explicit answer
    assert code == 0, err
    view = json.loads(out)
    assert view["erased"] and view["status"] == "erased" and {c["reason"] for c in view["cells"]} == {"erased"}
    code, out, err = await cli(settings, "verify")
    assert code == 0 and out.startswith("ok:"), err

    code, _, err = await cli(settings, "audit", "as-of", "--tenant", "garage-a", "--ref", "NOPE")
    assert code == 2 and "unknown_subject" in err
    code, _, err = await cli(settings, "audit", "as-of", *subject, "--known-at", "2025-01-01T00:00:00")
    assert code == 2 and "offset" in err


async def test_an_unwritable_output_path_fails_clearly_and_a_complete_file_leaves_no_part_behind(
    api: TestClient, dealer: Dealer, settings: Settings, tmp_path: Path
) -> None:
    r = await api.post("/v1/tenants/garage-a/subjects/dealer/C1/invoices", headers=dealer.auth("importer"),
                       json={"invoice_id": "F-1", "invoice_date": "2025-01-01"})
    assert r.status == 201
    missing = tmp_path / "no-such-dir" / "snapshot.csv"
    code, _, err = await cli(settings, "audit", "snapshot", "--tenant", "garage-a", "--out", str(missing))
    assert code == 2 and "cannot write" in err and "Traceback" not in err
    code, _, err = await cli(settings, "audit", "export", "--tenant", "garage-a", "--ref", "C1", "--out", str(missing))
    assert code == 2 and "cannot write" in err and "Traceback" not in err

    out = tmp_path / "export.json"
    code, _, err = await cli(settings, "audit", "export", "--tenant", "garage-a", "--ref", "C1", "--out", str(out))
    assert code == 0, err
    assert json.loads(out.read_text())["customer_ref"] == "C1"
    assert [p.name for p in tmp_path.iterdir()] == ["export.json"]
