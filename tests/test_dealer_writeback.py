"""Write-back to the DMS: every preference change, objection and erasure since a cursor,
as JSON or as CSV in the import mapping's columns; resumable and idempotent; the round
trip import -> portal opt-out -> export-changes -> re-import changes nothing."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestClient

from schemas.events import Actor
from services.ledger.commands import Context, Ledger
from services.ledger.store import EventStore
from services.ledger.subject_keys import SubjectKeys
from services.settings import Settings
from tests.conftest import Dealer
from tests.test_import_cli import cli

T = "/v1/tenants/garage-a"
MAPPING = """
[preferences.columns]
customer_ref = "Klantnr"
category = "Doelgroep"
channel = "Kanaal"
value = "Toestemming"

[preferences.categories]
"Occasions" = "sales_campaign"

[preferences.values]
"Ja" = "opt_in"
"Nee" = "opt_out"
"""
OPTIN = "Klantnr;Doelgroep;Kanaal;Toestemming\nK1;Nieuwsbrief;E-mail;Ja\nK1;Occasions;Post;Ja\nK2;Nieuwsbrief;SMS;Nee\n"


async def _import(api: TestClient, dealer: Dealer, body: str, mapping: str | None = "dms") -> dict:
    r = await api.post(f"{T}/sources/dealer/imports" + (f"?mapping={mapping}" if mapping else ""),
                       data=body.encode(), headers={**dealer.auth("importer"), "Content-Type": "text/csv"})
    assert r.status == 200, await r.text()
    return await r.json()


async def _portal_opt_out(pool: asyncpg.Pool, settings: Settings, ref: str) -> None:
    from schemas.events import PreferenceSetting

    store = EventStore(pool)
    await store.start()
    try:
        ledger = Ledger(pool, store, SubjectKeys.from_settings(pool, settings))
        await ledger.change_preferences(Context(actor=Actor(kind="subject", id="subject"), method="portal"),
                                        "garage-a", "dealer", ref,
                                        [PreferenceSetting(category="newsletter", channel="email", value="opt_out")],
                                        policy_version_shown=await ledger.current_policy_version("garage-a"))
    finally:
        await store.stop()


async def test_import_portal_opt_out_export_changes_and_re_import_changes_nothing(
    aiohttp_client, settings: Settings, operator_key: str, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    from services.api.app import create_app
    from tests.conftest import make_dealer

    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "dms.toml").write_text(MAPPING)
    import msgspec

    api = await aiohttp_client(create_app(msgspec.structs.replace(settings, import_mappings_dir=str(tmp_path / "maps"))))
    dealer = await make_dealer(api, operator_key, "garage-a")
    for ref in ("K1", "K2"):
        r = await api.post(f"{T}/subjects/dealer/{ref}/invoices", headers=dealer.auth("importer"),
                           json={"invoice_id": f"F-{ref}", "invoice_date": "2026-01-05"})
        assert r.status == 201
    first = await _import(api, dealer, OPTIN)
    assert first["ok"], first
    await _portal_opt_out(pool, settings, "K1")

    # the DMS fetches everything since the start as CSV in its own columns and words
    r = await api.get(f"{T}/changes", params={"format": "csv", "mapping": "dms", "source": "dealer"},
                      headers=dealer.auth("importer"))
    assert r.status == 200, await r.text()
    text = await r.text()
    rows = list(csv.DictReader(io.StringIO(text), delimiter=";"))
    assert [(x["Klantnr"], x["Doelgroep"], x["Kanaal"], x["Toestemming"], x["method"]) for x in rows] == [
        ("K1", "newsletter", "email", "Ja", "import"), ("K1", "Occasions", "post", "Ja", "import"),
        ("K2", "newsletter", "sms", "Nee", "import"), ("K1", "newsletter", "email", "Nee", "portal")]
    cursor = int(r.headers["X-Next-Cursor"])
    events_before = await pool.fetchval("SELECT count(*) FROM ledger.events")
    again = await _import(api, dealer, text)
    assert again["ok"] and await pool.fetchval("SELECT count(*) FROM ledger.events") == events_before, again

    # an objection and an erasure come next; asking from the cursor gives only those
    r = await api.post(f"{T}/subjects/dealer/K2/objection", json={}, headers=dealer.auth("staff"))
    assert r.status == 201
    r = await api.post(f"{T}/subjects/dealer/K2/erasure", json={"confirm_ref": "K2"}, headers=dealer.auth("admin"))
    assert r.status == 201
    page = await (await api.get(f"{T}/changes", params={"after": str(cursor)}, headers=dealer.auth("admin"))).json()
    assert [(c["customer_ref"], c["change"]) for c in page["changes"]] == [("K2", "objection"), ("K2", "erasure")]
    assert page["after"] == cursor and not page["has_more"]
    same = await (await api.get(f"{T}/changes", params={"after": str(cursor)}, headers=dealer.auth("admin"))).json()
    assert same == page  # asking again with the same cursor gives the same answer
    r = await api.get(f"{T}/changes", params={"after": str(cursor), "format": "csv", "mapping": "dms"},
                      headers=dealer.auth("importer"))
    events_before = await pool.fetchval("SELECT count(*) FROM ledger.events")
    again = await _import(api, dealer, await r.text())
    assert again["ok"] and again["summary"]["ignored"] == 2, again  # objection/erasure rows are for the DMS
    assert await pool.fetchval("SELECT count(*) FROM ledger.events") == events_before

    # the command, with a cursor file: a second run finds nothing new, a new change only
    mapping = tmp_path / "maps" / "dms.toml"
    out, cursor_file = tmp_path / "changes.csv", tmp_path / "cursor"
    code, stdout, err = await cli(db_url, "export-changes", "--tenant", "garage-a", "--source", "dealer",
                                  "--mapping", str(mapping), "--cursor-file", str(cursor_file), "--out", str(out),
                                  cwd=tmp_path)
    assert code == 0, err
    assert "6 changes after cursor 0" in stdout and out.read_text().count("\n") == 7
    code, stdout, err = await cli(db_url, "export-changes", "--tenant", "garage-a", "--source", "dealer",
                                  "--cursor-file", str(cursor_file), "--out", str(out), cwd=tmp_path)
    assert code == 0 and "0 changes" in stdout, err
    await _portal_opt_out(pool, settings, "K1")  # the same value again: still a recorded change
    code, stdout, err = await cli(db_url, "export-changes", "--tenant", "garage-a", "--format", "json",
                                  "--cursor-file", str(cursor_file), "--out", str(out), cwd=tmp_path)
    assert code == 0 and "1 changes" in stdout, err
    assert msgspec.json.decode(out.read_bytes())["changes"][0]["method"] == "portal"


async def test_bad_cursors_limits_and_formats_get_a_422_naming_the_field(
    api: TestClient, dealer: Dealer, other_dealer: Dealer, db_url: str, tmp_path: Path
) -> None:
    for query, field in (({"after": "99999999"}, "after"), ({"after": "-1"}, "after"), ({"after": "abc"}, "after"),
                         ({"limit": "0"}, "limit"), ({"limit": "1000000"}, "limit"), ({"format": "xml"}, "format"),
                         ({"source": "nope"}, "source"), ({"source": "Bad/"}, "source"), ({"mapping": "nope"}, "mapping")):
        r = await api.get(f"{T}/changes", params=query, headers=dealer.auth("admin"))
        assert r.status == 422, (query, await r.text())
        assert (await r.json())["field"] == field, query
    r = await api.get(f"{T}/changes", headers=other_dealer.auth("admin"))
    assert r.status == 403
    assert (await api.get(f"{T}/changes", headers=dealer.auth("sender"))).status == 403
    code, _, err = await cli(db_url, "export-changes", "--tenant", "garage-a", "--after", "99999999", "--out",
                             str(tmp_path / "x.csv"), cwd=tmp_path)
    assert code == 2 and "cursor" in err and not (tmp_path / "x.csv").exists()
    code, _, err = await cli(db_url, "export-changes", "--tenant", "nobody", "--out", str(tmp_path / "x.csv"),
                             cwd=tmp_path)
    assert code == 2 and "does not exist" in err


async def test_the_cursor_is_a_position_in_the_tenants_own_log_partition_and_dated_changes_keep_their_day(
    aiohttp_client, settings: Settings, operator_key: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The ledger is split into log partitions and a tenant's positions only order its own
    partition: another tenant's busy partition neither shows up in nor moves this tenant's
    cursor, and a cursor beyond this tenant's partition head is refused even if another
    partition has reached it. A dated opt-out carries its given_on to the DMS, and the CSV
    imports back as a no-op."""
    import datetime as dt

    import msgspec

    from services.api.app import create_app
    from services.ledger.partitions import partition_of
    from tests.conftest import make_dealer

    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "dms.toml").write_text(MAPPING)
    api = await aiohttp_client(create_app(msgspec.structs.replace(settings, import_mappings_dir=str(tmp_path / "maps"))))
    dealer = await make_dealer(api, operator_key, "garage-a")
    other = await make_dealer(api, operator_key, "garage-b")
    store = EventStore(pool)
    assert await store.partition_of("garage-a") != await store.partition_of("garage-b") == partition_of(
        "garage-b", await store.partitions())
    for d, refs in ((dealer, ("K1",)), (other, tuple(f"B{i}" for i in range(8)))):
        for ref in refs:
            r = await api.post(f"/v1/tenants/{d.tenant_id}/subjects/dealer/{ref}/invoices", headers=d.auth("importer"),
                               json={"invoice_id": f"F-{ref}", "invoice_date": "2026-01-05"})
            assert r.status == 201, await r.text()
            r = await api.post(f"/v1/tenants/{d.tenant_id}/subjects/dealer/{ref}/preferences", headers=d.auth("staff"),
                               json={"changes": [{"category": "newsletter", "channel": "email", "value": "opt_out"}]})
            assert r.status in (200, 201), await r.text()
    given = dt.date.today() - dt.timedelta(days=3)
    r = await api.post(f"{T}/subjects/dealer/K1/preferences", headers=dealer.auth("staff"),
                       json={"changes": [{"category": "sales_campaign", "channel": "post", "value": "opt_out"}],
                             "given_on": given.isoformat(), "evidence_ref": "form-3"})
    assert r.status in (200, 201), await r.text()

    page = await (await api.get(f"{T}/changes", headers=dealer.auth("admin"))).json()
    assert {c["customer_ref"] for c in page["changes"]} == {"K1"}  # never garage-b's
    assert page["next_cursor"] == await store.tenant_head("garage-a") < await store.tenant_head("garage-b")
    assert [c["given_on"] for c in page["changes"]] == [None, given.isoformat()]
    r = await api.get(f"{T}/changes", params={"after": str(await store.tenant_head("garage-b"))},
                      headers=dealer.auth("admin"))
    assert r.status == 422 and (await r.json())["error"] == "unknown_cursor"

    r = await api.get(f"{T}/changes", params={"format": "csv", "mapping": "dms"}, headers=dealer.auth("importer"))
    text = await r.text()
    rows = list(csv.DictReader(io.StringIO(text), delimiter=";"))
    assert [x["given_on"] for x in rows] == ["", given.isoformat()]
    events_before = await pool.fetchval("SELECT count(*) FROM ledger.events")
    again = await _import(api, dealer, text)
    assert again["ok"] and await pool.fetchval("SELECT count(*) FROM ledger.events") == events_before, again
