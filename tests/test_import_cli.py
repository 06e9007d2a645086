"""``consent-ledger import`` and ``consent-ledger portal-links export`` as a cron job runs
them: real processes, exit status, report file, summary."""

from __future__ import annotations

import asyncio
import csv
import os
import stat
import sys
from pathlib import Path

import asyncpg
import msgspec

from services.ledger.commands import Ledger
from services.portal.links import LinkStore
from tests.conftest import MASTER_KEY
from tests.import_support import INVOICE_HEADER, event_types, write

REPO = Path(__file__).resolve().parent.parent


async def cli(db_url: str, *args: str, cwd: Path) -> tuple[int, str, str]:
    env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_MASTER_KEY": MASTER_KEY,
           "LEDGER_LOG_LEVEL": "warning", "LEDGER_PORTAL_BASE_URL": "https://privacy.garage-a.nl"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, cwd=cwd, env={**env, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_clean_file_exits_0_and_a_second_run_imports_nothing(
    ledger: Ledger, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "facturen.csv", INVOICE_HEADER + "\nK1;F1;05-03-2024;Jan;jan@example.nl\n")
    code, out, err = await cli(db_url, "import", "--tenant", "garage-a", "--source", "dealer", str(path), "--json",
                               cwd=tmp_path)
    assert code == 0, err
    assert "facturen.csv: invoices (csv, utf-8): 1 rows: 1 recorded" in out
    summary = msgspec.json.decode(out.strip().splitlines()[-1])
    assert (summary["recorded"], summary["rejected"], summary["events"]) == (1, 0, 1)
    assert not list(tmp_path.glob("import-rejected-*"))  # no rejections: no report file
    code, out, err = await cli(db_url, "import", "--tenant", "garage-a", "--source", "dealer", str(path),
                               "--progress", cwd=tmp_path)
    assert code == 0 and "0 recorded" in out and "1 unchanged" in out
    assert "facturen.csv" in err and "rows/s" in err  # the progress bar, on stderr
    assert await event_types(pool) == ["InvoiceRecorded"]


async def test_rejected_rows_go_to_stdout_and_the_report_and_the_exit_status_is_1(
    ledger: Ledger, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "facturen.csv", INVOICE_HEADER + "\nK1;F1;05-03-2024;;\nK2;F2;32-03-2024;;\n"
                                                            "K3;F3;05-03-2024;;nope\n")
    report = tmp_path / "out" / "rejected.csv"
    code, out, err = await cli(db_url, "import", "--tenant", "garage-a", "--source", "dealer", str(path),
                               "--report", str(report), cwd=tmp_path)
    assert code == 1, err
    assert "facturen.csv:3: invoice_date: '32-03-2024' is not a date (dd-mm-yyyy)" in out
    assert "facturen.csv:4: email: not an e-mail address" in out
    assert "1 recorded" in out and "2 rejected" in out
    with open(report, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    assert rows[0] == ["file", "line", "field", "problem"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [("facturen.csv", "3", "invoice_date"),
                                                       ("facturen.csv", "4", "email")]
    assert await event_types(pool) == ["InvoiceRecorded"]


async def test_a_refused_file_exits_2_and_writes_nothing(
    ledger: Ledger, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    bad_header = write(tmp_path, "a.csv", "Nummer;Datum\n1;2\n")
    code, _, err = await cli(db_url, "import", "--tenant", "garage-a", "--source", "dealer", "--kind", "invoices",
                             str(bad_header), cwd=tmp_path)
    assert code == 2 and "missing from the header" in err
    good = write(tmp_path, "b.csv", INVOICE_HEADER + "\nK1;F1;05-03-2024;;\n")
    code, _, err = await cli(db_url, "import", "--tenant", "garage-a", "--source", "elders", str(good), cwd=tmp_path)
    assert code == 2 and "data source 'elders' does not exist" in err
    mapping = write(tmp_path, "m.toml", "[invoices.columns]\nfactuur = 'Factuurnummer'\n")
    code, _, err = await cli(db_url, "import", "--tenant", "garage-a", "--source", "dealer", "--mapping",
                             str(mapping), str(good), cwd=tmp_path)
    assert code == 2 and "unknown field 'factuur'" in err
    assert await event_types(pool) == []


async def test_portal_links_export_writes_a_private_csv_with_new_links_and_their_status(
    ledger: Ledger, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    await cli(db_url, "import", "--tenant", "garage-a", "--source", "dealer",
              str(write(tmp_path, "f.csv", INVOICE_HEADER + "\nK1;F1;05-03-2024;;\nK2;F2;05-03-2024;;\n")),
              cwd=tmp_path)
    refs = write(tmp_path, "mailing.csv", "Klantnummer;Naam\nK1;Jan\nK2;Piet\nK9;Onbekend\nK1;Jan\nbad ref;x\n")
    out = tmp_path / "links.csv"
    code, stdout, err = await cli(db_url, "portal-links", "export", "--tenant", "garage-a", "--source", "dealer",
                                  str(refs), "--column", "Klantnummer", "--out", str(out), cwd=tmp_path)
    assert code == 1, err  # some customers got no link
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "https://" not in stdout  # live links are never printed
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert [(r["customer_ref"], r["status"]) for r in rows] == [
        ("K1", "issued"), ("K2", "issued"), ("K9", "unknown_subject"), ("K1", "duplicate"), ("bad ref", "invalid")]
    url = rows[0]["portal_url"]
    assert url.startswith("https://privacy.garage-a.nl/p/")
    target = await LinkStore(pool).lookup(url.rsplit("/", 1)[1])
    assert target is not None and (target.tenant_id, target.customer_ref) == ("garage-a", "K1")

    # Only for customers without a link: K1 and K2 keep theirs (it cannot be shown again).
    code, _, err = await cli(db_url, "portal-links", "export", "--tenant", "garage-a", "--source", "dealer",
                             str(write(tmp_path, "again.csv", "customer_ref\nK1\nK2\n")), "--only-missing",
                             "--out", str(out), cwd=tmp_path)
    assert code == 0, err
    with open(out, encoding="utf-8", newline="") as f:
        assert [(r["customer_ref"], r["portal_url"], r["status"]) for r in csv.DictReader(f, delimiter=";")] == [
            ("K1", "", "exists"), ("K2", "", "exists")]
    assert await LinkStore(pool).lookup(url.rsplit("/", 1)[1]) is not None  # still live

    # The default issues fresh links: the old one stops working.
    code, _, _ = await cli(db_url, "portal-links", "export", "--tenant", "garage-a", "--source", "dealer",
                           str(write(tmp_path, "k1.csv", "customer_ref\nK1\n")), "--out", str(out), cwd=tmp_path)
    with open(out, encoding="utf-8", newline="") as f:
        [row] = list(csv.DictReader(f, delimiter=";"))
    assert code == 0 and row["status"] == "replaced" and row["portal_url"] != url
    assert await LinkStore(pool).lookup(url.rsplit("/", 1)[1]) is None


async def test_the_nightly_script_imports_the_inbox_in_order_and_moves_processed_files(
    ledger: Ledger, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox" / "garage-a"
    inbox.mkdir(parents=True)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "garage-a.toml").write_bytes((REPO / "examples" / "dms-mapping.toml").read_bytes())
    (inbox / "optin-20260301.csv").write_bytes((REPO / "examples" / "dms-mapping.optin.csv").read_bytes())
    (inbox / "facturen-20260301.csv").write_bytes(
        (REPO / "examples" / "dms-mapping.invoices.csv").read_bytes() + b"2024-00020;100999;31-02-2024;;;;;;;\n")
    env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_MASTER_KEY": MASTER_KEY, "LEDGER_LOG_LEVEL": "warning",
           "DMS_INBOX": str(tmp_path / "inbox"), "IMPORT_REPORTS": str(tmp_path / "reports"),
           "IMPORT_MAPPINGS": str(tmp_path / "mappings"), "CONSENT_LEDGER": str(REPO / ".venv/bin/consent-ledger")}
    proc = await asyncio.create_subprocess_exec("sh", str(REPO / "deploy" / "nightly-import.sh"), "garage-a",
                                                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 1, (out.decode(), err.decode())  # one invoice row was rejected
    assert sorted(p.name.split("-", 1)[1] for p in (inbox / "done").iterdir()) == [
        "facturen-20260301.csv", "optin-20260301.csv"]
    assert not list(inbox.glob("*.csv"))
    [report] = (tmp_path / "reports" / "garage-a").glob("*facturen-20260301.csv.rejected.csv")
    assert "Factuurdatum" in report.read_text()
    assert await event_types(pool) == ["InvoiceRecorded"] * 3 + ["PreferencesChanged"] * 2
