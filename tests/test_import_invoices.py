"""DMS import of invoices: CSV as Dutch DMS exports write it, idempotency, corrections,
rejected rows, atomic batches."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import asyncpg
import pytest

from schemas.events import Actor, InvoiceCorrected, InvoiceRecorded, Metadata, SubjectErased
from services.importer.mapping import parse_mapping
from services.ledger.commands import Ledger
from services.ledger.store import AppendRequest, StreamWrite
from tests.import_support import (
    INVOICE_HEADER,
    TENANT,
    event_types,
    open_sealed,
    run_import,
    subject_events,
    write,
)

DMS_MAPPING = parse_mapping("""
[invoices.columns]
customer_ref = "Klantnummer"
invoice_id = "Factuurnummer"
invoice_date = "Factuurdatum"
name = "Naam"
email = "E-mailadres"
city = "Woonplaats"
""")


async def test_a_windows_1252_dms_export_becomes_one_sealed_invoice_event_per_row(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    path = write(tmp_path, "facturen.csv",
                 "Factuurnummer;Klantnummer;Factuurdatum;Naam;E-mailadres;Woonplaats;Kenteken\n"
                 "F-1001;K001;05-03-2024;José Ruïz;jose@example.nl;Den Haag;AB-12-CD\n"
                 'F-1002;K002;1-4-2024;"Jansen; Piet";;\'s-Hertogenbosch;\n', encoding="cp1252")
    summary, rejected = await run_import(ledger, path, mapping=DMS_MAPPING)
    assert rejected == []
    assert (summary.kind, summary.encoding, summary.rows, summary.recorded, summary.events) == (
        "invoices", "cp1252", 2, 2, 2)
    [first] = await subject_events(pool, "K001")
    assert isinstance(first, InvoiceRecorded)
    assert (first.invoice_id, first.invoice_date) == ("F-1001", dt.date(2024, 3, 5))
    assert await open_sealed(ledger, "K001", first.personal) == {
        "name": "José Ruïz", "email": "jose@example.nl", "city": "Den Haag"}
    [second] = await subject_events(pool, "K002")
    assert second.invoice_date == dt.date(2024, 4, 1)
    assert await open_sealed(ledger, "K002", second.personal) == {"name": "Jansen; Piet", "city": "'s-Hertogenbosch"}
    # The contact is never in clear in the ledger.
    raw = await pool.fetchval("SELECT string_agg(data::text, '') FROM ledger.events")
    assert "jose@example.nl" not in raw and "Ruïz" not in raw
    meta = await pool.fetchval("SELECT metadata::text FROM ledger.events WHERE stream_id LIKE 'subject/%' LIMIT 1")
    assert '"method":"import"' in meta and summary.run_id in meta


async def test_a_utf8_file_with_a_bom_and_iso_dates_is_read_as_utf8(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    path = write(tmp_path, "f.csv", "\ufeff" + INVOICE_HEADER + "\nK1;F1;2024-02-29;Zoë;\n")
    summary, rejected = await run_import(ledger, path)
    assert (summary.encoding, summary.recorded, rejected) == ("utf-8-sig", 1, [])
    [event] = await subject_events(pool, "K1")
    assert await open_sealed(ledger, "K1", event.personal) == {"name": "Zoë"}


async def test_importing_the_same_file_twice_appends_nothing_the_second_time(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    rows = "\n".join(f"K{i % 7};F{i};0{1 + i % 9}-01-2024;Klant {i};k{i}@example.nl" for i in range(40))
    path = write(tmp_path, "f.csv", INVOICE_HEADER + "\n" + rows + "\n")
    first, _ = await run_import(ledger, path, batch_size=8)
    # Consecutive batches share customers: each was planned on the one still committing,
    # without a single conflict (the plan's expected effects were right).
    assert (first.recorded, first.events, first.batches, first.retries) == (40, 40, 5, 0)
    head = await pool.fetchval("SELECT max(position) FROM ledger.partitions")
    again, rejected = await run_import(ledger, path, batch_size=8)
    assert rejected == []
    assert (again.rows, again.recorded, again.corrected, again.unchanged, again.events) == (40, 0, 0, 40, 0)
    assert await pool.fetchval("SELECT max(position) FROM ledger.partitions") == head


async def test_overlapping_files_append_only_the_invoices_not_seen_before(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    monday = write(tmp_path, "mon.csv", INVOICE_HEADER + "\nK1;F1;01-03-2024;;\nK2;F2;02-03-2024;;\n")
    tuesday = write(tmp_path, "tue.csv", INVOICE_HEADER + "\nK2;F2;02-03-2024;;\nK3;F3;03-03-2024;;\n")
    await run_import(ledger, monday)
    summary, _ = await run_import(ledger, tuesday)
    assert (summary.recorded, summary.unchanged) == (1, 1)
    assert await event_types(pool) == ["InvoiceRecorded"] * 3


async def test_a_redelivered_invoice_with_a_changed_date_appends_an_invoice_corrected(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await run_import(ledger, write(tmp_path, "a.csv", INVOICE_HEADER + "\nK1;F1;01-03-2024;Jan;jan@example.nl\n"))
    summary, _ = await run_import(ledger, write(tmp_path, "b.csv",
                                                INVOICE_HEADER + "\nK1;F1;11-03-2024;Jan;jan@example.nl\n"))
    assert (summary.corrected, summary.recorded) == (1, 0)
    recorded, corrected = await subject_events(pool, "K1")
    assert isinstance(corrected, InvoiceCorrected)
    assert (corrected.invoice_id, corrected.invoice_date) == ("F1", dt.date(2024, 3, 11))
    # and the index now holds the corrected state: the same file again is a no-op
    again, _ = await run_import(ledger, write(tmp_path, "c.csv",
                                              INVOICE_HEADER + "\nK1;F1;11-03-2024;Jan;jan@example.nl\n"))
    assert (again.unchanged, again.events) == (1, 0)


async def test_changed_contact_data_is_a_correction_but_a_file_without_contact_columns_is_not(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await run_import(ledger, write(tmp_path, "a.csv", INVOICE_HEADER + "\nK1;F1;01-03-2024;Jan;jan@example.nl\n"))
    moved, _ = await run_import(ledger, write(tmp_path, "b.csv",
                                              INVOICE_HEADER + "\nK1;F1;01-03-2024;Jan;jan@nieuw.nl\n"))
    assert moved.corrected == 1
    corrected = (await subject_events(pool, "K1"))[-1]
    assert await open_sealed(ledger, "K1", corrected.personal) == {"name": "Jan", "email": "jan@nieuw.nl"}
    bare, _ = await run_import(ledger, write(tmp_path, "c.csv",
                                             "customer_ref;invoice_id;invoice_date\nK1;F1;01-03-2024\n"))
    assert (bare.unchanged, bare.events) == (1, 0)
    same, _ = await run_import(ledger, write(tmp_path, "d.csv",
                                             INVOICE_HEADER + "\nK1;F1;01-03-2024;Jan;jan@nieuw.nl\n"))
    assert (same.unchanged, same.events) == (1, 0)


async def test_the_same_invoice_twice_in_one_file_is_recorded_once_and_then_corrected(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    path = write(tmp_path, "f.csv", INVOICE_HEADER + "\nK1;F1;01-03-2024;;\nK1;F1;01-03-2024;;\nK1;F1;02-03-2024;;\n")
    summary, _ = await run_import(ledger, path)
    assert (summary.recorded, summary.unchanged, summary.corrected) == (1, 1, 1)
    assert [type(e).__name__ for e in await subject_events(pool, "K1")] == ["InvoiceRecorded", "InvoiceCorrected"]
    date = await pool.fetchval("SELECT invoice_date FROM importer.invoices WHERE invoice_id = 'F1'")
    assert date == dt.date(2024, 3, 2)


async def test_bad_rows_are_reported_with_line_field_and_problem_and_the_valid_rows_are_committed(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    path = write(tmp_path, "facturen.csv",
                 "Factuurnummer;Klantnummer;Factuurdatum;Naam;E-mailadres;Woonplaats\n"
                 "F1;K1;31-02-2024;;;\n"          # 2: no such date
                 "F2;K2;01-03-2024;;geen-mail;\n"  # 3: bad e-mail
                 "F3;;01-03-2024;;;\n"             # 4: no customer
                 "F 4;K4;01-03-2024;;;\n"          # 5: bad invoice number
                 "F5;K5;01-03-2024;;;;extra\n"     # 6: a stray separator
                 "F6;K6;01-03-2099;;;\n"           # 7: in the future
                 "F7;K7;01-03-2024;Anna;anna@example.nl;Utrecht\n")  # 8: fine
    summary, rejected = await run_import(ledger, path, mapping=DMS_MAPPING)
    assert [(r.line, r.field) for r in rejected] == [
        (2, "Factuurdatum"), (3, "E-mailadres"), (4, "Klantnummer"), (5, "Factuurnummer"), (6, "(row)"),
        (7, "Factuurdatum")]
    problems = {r.line: r.problem for r in rejected}
    assert "not a date (dd-mm-yyyy)" in problems[2]
    assert "not an e-mail address" in problems[3] and "geen-mail" not in problems[3]  # no personal data
    assert problems[4] == "is empty"
    assert "in the future" in problems[7]
    assert (summary.rows, summary.recorded, summary.rejected, summary.ok) == (7, 1, 6, False)
    assert await event_types(pool) == ["InvoiceRecorded"]


async def test_a_missing_column_refuses_the_whole_file_before_anything_is_written(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    from services.importer.pipeline import ImportRefused

    path = write(tmp_path, "f.csv", "Factuurnummer;Klantnummer;Datum\nF1;K1;01-03-2024\n")
    with pytest.raises(ImportRefused) as info:
        await run_import(ledger, path, mapping=DMS_MAPPING, kind="invoices")
    assert info.value.field == "header" and "'Factuurdatum' (invoice_date)" in str(info.value)
    with pytest.raises(ImportRefused) as info:
        await run_import(ledger, write(tmp_path, "g.csv", INVOICE_HEADER + "\n"), source="nope")
    assert info.value.field == "source"
    assert await event_types(pool) == []


async def test_an_invoice_already_recorded_for_another_customer_is_rejected(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await run_import(ledger, write(tmp_path, "a.csv", INVOICE_HEADER + "\nK1;F1;01-03-2024;;\n"))
    summary, rejected = await run_import(ledger, write(tmp_path, "b.csv",
                                                       INVOICE_HEADER + "\nK2;F1;01-03-2024;;\nK2;F2;01-03-2024;;\n"))
    assert [(r.line, r.field) for r in rejected] == [(2, "customer_ref")]
    assert "already recorded for another customer" in rejected[0].problem
    assert summary.recorded == 1


async def test_an_erased_customer_is_rejected_and_gets_no_new_key(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await run_import(ledger, write(tmp_path, "a.csv", INVOICE_HEADER + "\nK1;F1;01-03-2024;Jan;jan@example.nl\n"))
    stream = "subject/garage-a/dealer/K1"
    async with pool.acquire() as conn:
        await ledger.keys.shred(conn, stream)
    await ledger.store.append(AppendRequest(
        tenant_id=TENANT, writes=[StreamWrite(stream, [SubjectErased(reason="request")])],
        metadata=Metadata(actor=Actor(kind="staff", id="test"))))
    summary, rejected = await run_import(ledger, write(tmp_path, "b.csv",
                                                       INVOICE_HEADER + "\nK1;F2;02-03-2024;Jan;jan@example.nl\n"))
    assert [(r.line, r.field) for r in rejected] == [(2, "customer_ref")] and "erased" in rejected[0].problem
    assert await pool.fetchval("SELECT count(*) FROM ledger.subject_keys WHERE stream_id = $1", stream) == 0
    assert summary.events == 0


async def test_a_batch_planned_on_a_stale_stream_version_is_planned_again_and_nothing_is_duplicated(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run_import(ledger, write(tmp_path, "a.csv", INVOICE_HEADER + "\nK1;F1;01-03-2024;;\n"))
    real = Ledger.subject_heads
    calls = {"n": 0}

    async def stale_once(self: Ledger, streams: list[str]) -> dict[str, tuple[int, bool]]:
        heads = await real(self, streams)
        calls["n"] += 1
        if calls["n"] == 1:  # as if a portal write landed between the plan and the append
            return {s: (max(0, v - 1), e) for s, (v, e) in heads.items()}
        return heads

    monkeypatch.setattr(Ledger, "subject_heads", stale_once)
    summary, _ = await run_import(ledger, write(tmp_path, "b.csv", INVOICE_HEADER + "\nK1;F2;02-03-2024;;\n"))
    assert (summary.retries, summary.recorded, summary.events) == (1, 1, 1)
    assert await event_types(pool) == ["InvoiceRecorded", "InvoiceRecorded"]


async def test_a_second_import_for_the_same_tenant_is_refused_while_one_runs(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    from services.importer.pipeline import ImportRefused

    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtextextended('importer/garage-a', 0))")
        with pytest.raises(ImportRefused) as info:
            await run_import(ledger, write(tmp_path, "a.csv", INVOICE_HEADER + "\nK1;F1;01-03-2024;;\n"))
        await conn.execute("SELECT pg_advisory_unlock_all()")
    assert info.value.status == 409 and "another import" in str(info.value)
    assert await event_types(pool) == []


async def test_an_invoice_corrected_in_the_batch_after_the_one_that_recorded_it_is_planned_on_the_batch_in_flight(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    rows = ["K1;F1;01-03-2024;Jan;jan@example.nl", "K2;F2;01-03-2024;;",
            "K1;F1;02-03-2024;Jan;jan@example.nl", "K1;F3;03-03-2024;Jan;jan@nieuw.nl",
            "K1;F1;02-03-2024;Jan;jan@example.nl"]
    summary, rejected = await run_import(ledger, write(tmp_path, "f.csv", INVOICE_HEADER + "\n" + "\n".join(rows) + "\n"),
                                         batch_size=2)
    assert rejected == []
    assert (summary.batches, summary.retries) == (3, 0)
    assert (summary.recorded, summary.corrected, summary.unchanged) == (3, 1, 1)
    assert [type(e).__name__ for e in await subject_events(pool, "K1")] == [
        "InvoiceRecorded", "InvoiceCorrected", "InvoiceRecorded"]
    index = {r["invoice_id"]: (r["invoice_date"], r["position"]) for r in
             await pool.fetch("SELECT invoice_id, invoice_date, position FROM importer.invoices")}
    assert index["F1"][0] == dt.date(2024, 3, 2)
    # each index row points at the event that set it
    for invoice_id, (_, position) in index.items():
        data = await pool.fetchval("SELECT data::text FROM ledger.events WHERE position = $1", position)
        assert f'"invoice_id":"{invoice_id}"' in data


async def test_a_customer_erased_while_the_batch_is_planned_is_rejected_on_the_retry(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run_import(ledger, write(tmp_path, "a.csv", INVOICE_HEADER + "\nK1;F1;01-03-2024;;\n"))
    await ledger.store.append(AppendRequest(
        tenant_id=TENANT, writes=[StreamWrite("subject/garage-a/dealer/K1", [SubjectErased(reason="request")])],
        metadata=Metadata(actor=Actor(kind="staff", id="test"))))
    real = Ledger.subject_heads
    calls = {"n": 0}

    async def erased_too_late(self: Ledger, streams: list[str]) -> dict[str, tuple[int, bool]]:
        heads = await real(self, streams)
        calls["n"] += 1
        if calls["n"] == 1:  # as if the erasure committed between the lookup and the append
            return {s: (v - 1 if e else v, False) for s, (v, e) in heads.items()}
        return heads

    monkeypatch.setattr(Ledger, "subject_heads", erased_too_late)
    summary, rejected = await run_import(ledger, write(tmp_path, "b.csv",
                                                       INVOICE_HEADER + "\nK1;F9;02-03-2024;;\nK2;F2;02-03-2024;;\n"))
    assert summary.retries == 1
    assert [(r.line, r.field) for r in rejected] == [(2, "customer_ref")] and "erased" in rejected[0].problem
    assert (summary.recorded, summary.events) == (1, 1)
    assert await event_types(pool) == ["InvoiceRecorded", "SubjectErased", "InvoiceRecorded"]


async def test_when_the_database_stays_away_the_import_stops_after_the_last_whole_batch_and_a_rerun_completes_it(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.importer.plans import InvoicePlanner
    from services.ledger.errors import StoreUnavailable

    path = write(tmp_path, "f.csv", INVOICE_HEADER + "\n" + "".join(f"K{i};F{i};01-03-2024;;\n" for i in range(10)))
    real = InvoicePlanner.plan
    calls = {"n": 0}

    async def failing_from_the_third_batch(self: InvoicePlanner, rows, overlay):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] >= 3:
            raise StoreUnavailable("connection refused")
        return await real(self, rows, overlay)

    monkeypatch.setattr(InvoicePlanner, "plan", failing_from_the_third_batch)
    summary, _ = await run_import(ledger, path, batch_size=3)
    assert summary.aborted is not None and "from line 8 on were not imported" in summary.aborted
    assert (summary.batches, summary.recorded, summary.last_line_done) == (2, 6, 7)
    assert await pool.fetchval("SELECT count(*) FROM ledger.events WHERE stream_id LIKE 'subject/%'") == 6
    monkeypatch.setattr(InvoicePlanner, "plan", real)
    again, _ = await run_import(ledger, path, batch_size=3)
    assert (again.aborted, again.unchanged, again.recorded) == (None, 6, 4)


async def test_a_customer_in_several_batches_has_their_key_fetched_once_and_every_event_opens_with_it(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.ledger.subject_keys import SubjectKeys

    await run_import(ledger, write(tmp_path, "a.csv", INVOICE_HEADER + "\nK1;F0;01-03-2024;Jan;jan@example.nl\n"))
    real = SubjectKeys.existing_sealers
    asked: list[str] = []

    async def counting(self: SubjectKeys, streams: list[str]) -> dict:
        asked.extend(streams)
        return await real(self, streams)

    monkeypatch.setattr(SubjectKeys, "existing_sealers", counting)
    rows = [f"K{1 + i % 2};F{i + 1};0{1 + i % 5}-03-2024;Jan;jan{i % 2}@example.nl" for i in range(6)]
    summary, rejected = await run_import(
        ledger, write(tmp_path, "b.csv", INVOICE_HEADER + "\n" + "\n".join(rows) + "\n"), batch_size=2)
    assert (rejected, summary.batches, summary.recorded) == ([], 3, 6)
    assert sorted(asked) == ["subject/garage-a/dealer/K1", "subject/garage-a/dealer/K2"]  # once each, not per batch
    for ref, email in (("K1", "jan0@example.nl"), ("K2", "jan1@example.nl")):
        events = await subject_events(pool, ref)
        assert len(events) == (4 if ref == "K1" else 3)
        for event in events[1 if ref == "K1" else 0:]:
            assert (await open_sealed(ledger, ref, event.personal))["email"] == email
    # the same file again: the fingerprints made with the kept keys match, nothing is appended
    again, _ = await run_import(ledger, write(tmp_path, "c.csv", INVOICE_HEADER + "\n" + "\n".join(rows) + "\n"),
                                batch_size=2)
    assert (again.unchanged, again.events) == (6, 0)


async def test_a_run_collects_garbage_less_often_and_leaves_the_setting_as_it_was(
    ledger: Ledger, tmp_path: Path
) -> None:
    import gc

    from services.importer.pipeline import Importer
    from tests.import_support import ACTOR

    before = gc.get_threshold()
    during: list[int] = []
    await Importer(ledger, batch_size=1).run_file(
        str(write(tmp_path, "a.csv", INVOICE_HEADER + "\nK1;F1;01-03-2024;;\nK2;F2;01-03-2024;;\n")),
        tenant=TENANT, source="dealer", mapping=parse_mapping(""), actor=ACTOR, on_reject=lambda r: None,
        on_progress=lambda rows, position: during.append(gc.get_threshold()[0]))
    assert during and min(during) >= 50_000
    assert gc.get_threshold() == before


async def test_a_full_sealer_cache_lets_the_oldest_subjects_go_and_every_event_still_opens_with_its_own_key(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.importer.plans as plans

    monkeypatch.setattr(plans, "_SEALER_CACHE", 2)
    rows = [f"K{i % 3};F{i};01-03-2024;Jan;jan{i % 3}@example.nl" for i in range(9)]
    summary, rejected = await run_import(
        ledger, write(tmp_path, "a.csv", INVOICE_HEADER + "\n" + "\n".join(rows) + "\n"), batch_size=2)
    assert (rejected, summary.recorded) == ([], 9)
    for n in range(3):
        for event in await subject_events(pool, f"K{n}"):
            assert (await open_sealed(ledger, f"K{n}", event.personal))["email"] == f"jan{n}@example.nl"
    again, _ = await run_import(
        ledger, write(tmp_path, "b.csv", INVOICE_HEADER + "\n" + "\n".join(rows) + "\n"), batch_size=2)
    assert (again.unchanged, again.events) == (9, 0)


async def test_subjects_past_the_cipher_cache_keep_their_keys_and_every_event_still_opens_with_its_own_key(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.importer.plans as plans
    from services.ledger.subject_keys import SubjectKeys

    monkeypatch.setattr(plans, "_CIPHER_CACHE", 1)
    real = SubjectKeys.existing_sealers
    asked: list[str] = []

    async def counting(self: SubjectKeys, streams: list[str]) -> dict:
        asked.extend(streams)
        return await real(self, streams)

    monkeypatch.setattr(SubjectKeys, "existing_sealers", counting)
    rows = [f"K{i % 3};F{i};01-03-2024;Jan;jan{i % 3}@example.nl" for i in range(9)]
    summary, rejected = await run_import(
        ledger, write(tmp_path, "a.csv", INVOICE_HEADER + "\n" + "\n".join(rows) + "\n"), batch_size=2)
    assert (rejected, summary.recorded) == ([], 9)
    # each subject's key looked up once (on first sight), then kept though its cipher was let go
    assert sorted(asked) == [f"subject/garage-a/dealer/K{n}" for n in range(3)]
    for n in range(3):
        for event in await subject_events(pool, f"K{n}"):
            assert (await open_sealed(ledger, f"K{n}", event.personal))["email"] == f"jan{n}@example.nl"
    again, _ = await run_import(
        ledger, write(tmp_path, "b.csv", INVOICE_HEADER + "\n" + "\n".join(rows) + "\n"), batch_size=2)
    assert (again.unchanged, again.events) == (9, 0)


async def test_a_subject_key_made_by_another_writer_while_the_batch_was_sealed_is_used_after_planning_again(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New keys are stored while the batch is sealed with them; if another writer stored a
    key for one of those subjects first, the batch is planned again with that key."""
    from services.ledger.subject_keys import SubjectKeys

    real = SubjectKeys.make_keys
    calls: list[list[str]] = []

    def racing(self: SubjectKeys, tenant_id: str, stream_ids: list[str]):  # noqa: ANN202
        calls.append(list(stream_ids))
        made, store = real(self, tenant_id, stream_ids)

        async def other_writer_first() -> set[str]:
            if len(calls) == 1:  # a portal save makes K2's key between our making and storing it
                await self.key_for(tenant_id, "subject/garage-a/dealer/K2")
            return await store

        return made, other_writer_first()

    monkeypatch.setattr(SubjectKeys, "make_keys", racing)
    rows = [f"K{1 + i % 3};F{i};01-03-2024;Jan;jan{i % 3}@example.nl" for i in range(6)]
    summary, rejected = await run_import(
        ledger, write(tmp_path, "a.csv", INVOICE_HEADER + "\n" + "\n".join(rows) + "\n"))
    assert (rejected, summary.recorded) == ([], 6)
    assert calls == [[f"subject/garage-a/dealer/K{n}" for n in (1, 2, 3)]]  # planned again: K2's key found then
    for n in (1, 2, 3):
        for event in await subject_events(pool, f"K{n}"):
            assert (await open_sealed(ledger, f"K{n}", event.personal))["email"] == f"jan{n - 1}@example.nl"


async def test_when_storing_new_keys_fails_nothing_sealed_with_them_is_kept_and_the_batch_is_planned_again(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.ledger.errors import StoreUnavailable
    from services.ledger.subject_keys import SubjectKeys

    real = SubjectKeys.make_keys
    calls: list[int] = []

    def failing_once(self: SubjectKeys, tenant_id: str, stream_ids: list[str]):  # noqa: ANN202
        calls.append(len(stream_ids))
        made, store = real(self, tenant_id, stream_ids)
        if len(calls) > 1:
            return made, store

        async def lost() -> set[str]:
            store.close()  # never sent: the database went away
            raise StoreUnavailable("connection lost")

        return made, lost()

    monkeypatch.setattr(SubjectKeys, "make_keys", failing_once)
    rows = [f"K{1 + i % 2};F{i};01-03-2024;Jan;jan{i % 2}@example.nl" for i in range(4)]
    summary, rejected = await run_import(
        ledger, write(tmp_path, "a.csv", INVOICE_HEADER + "\n" + "\n".join(rows) + "\n"))
    assert (rejected, summary.recorded, summary.retries) == ([], 4, 1)
    assert calls == [2, 2]  # the lost keys were forgotten and made again
    for n in (1, 2):
        for event in await subject_events(pool, f"K{n}"):
            assert (await open_sealed(ledger, f"K{n}", event.personal))["email"] == f"jan{n - 1}@example.nl"
