"""The dealer's pages at size: reach dashboard, customer search, mailing export.

Set-up: a PostgreSQL 18, one dealer, N customers imported through the DMS import (each an
invoice with name, e-mail, phone, address, licence plate and vehicle; invoice dates spread
over 2019-2025 so terms lapse at many dates; every 9th with a preference change, every
23rd a prospect), the projector's read model built by ``projector rebuild``.

Measured in-process, on the functions the pages and the API call (the HTTP layer adds the
same small cost to every route and is measured by bench/http_load.py and bench/portal.py):

* ``dashboard``: ``ReachCache.counts`` (today, +30, +90 per source x category x channel).
  ``cold_s`` is the first call of a process (evaluates every subject); ``p50_ms``/``p99_ms``
  are repeated views (the read model's fingerprint checked each time); ``after_change_ms``
  views right after one subject changed (re-evaluates that subject only).
* ``search``: ``Directory.search`` for random e-mail addresses, plates, phone numbers,
  postcode + house number and surnames; ``index_build_s`` is the first sync of the tenant's
  contact events into the blind index.
* ``mailing``: ``mailing_list`` for service reminders by post on today (the widest cell: 48
  months), all N subjects evaluated, the eligible decrypted, CSV text.

Targets (issue 15, 100,000 subjects): dashboard p99 < 300 ms, search p99 < 50 ms, mailing
export < 10 s. ``--quick``: 5,000 subjects. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import create_database, latency_summary, local_postgres, machine, run_loop, write_result  # noqa: E402
from schemas.events import Actor  # noqa: E402
from services.importer.mapping import DEFAULT_MAPPING  # noqa: E402
from services.importer.pipeline import Importer  # noqa: E402
from services.ledger.commands import Context, Ledger  # noqa: E402
from services.ledger.directory import Directory  # noqa: E402
from services.ledger.migrate import migrate  # noqa: E402
from services.ledger.store import EventStore  # noqa: E402
from services.ledger.subject_keys import SubjectKeys, new_master_key, parse_master_key  # noqa: E402
from services.mail.tokens import AnswerLinks  # noqa: E402
from services.portal.mailing import mailing_list  # noqa: E402
from services.projector.clock import SystemClock  # noqa: E402
from services.projector.reach import ReachCache  # noqa: E402
from services.projector.rebuild import rebuild  # noqa: E402

TENANT = "bench-dealer"
HEADER = ("customer_ref", "invoice_id", "invoice_date", "name", "email", "phone", "street", "postcode", "city",
          "licence_plate", "vehicle_make", "vehicle_model")
SURNAMES = ("Jansen", "de Vries", "van den Berg", "Bakker", "Visser", "Smit", "Meijer", "de Boer", "Mulder",
            "de Groot", "Bos", "Vos", "Peters", "Hendriks", "van Leeuwen", "Dekker", "Brouwer", "de Wit")
MAKES = (("Volkswagen", "Golf"), ("Toyota", "Yaris"), ("Opel", "Corsa"), ("Kia", "Niro"), ("Renault", "Clio"))


def person(i: int) -> dict[str, str]:
    r = random.Random(i)
    make, model = MAKES[i % len(MAKES)]
    return {"name": f"{'ABCDEFGHJKLMNPRSTW'[i % 18]}. {SURNAMES[r.randrange(len(SURNAMES))]} {i}",
            "email": f"klant{i}@example.nl", "phone": f"06-{10000000 + i:08d}",
            "street": f"Dorpsstraat {1 + i % 300}", "postcode": f"{1000 + i % 9000} {'AB' if i % 2 else 'CD'}",
            "city": "Utrecht", "licence_plate": f"{'ABCDEFGHJKLMNPRSTXZ'[i % 19]}{'ABCDEFGHJKLMNPRSTXZ'[i // 19 % 19]}-"
                                                f"{i % 1000:03d}-{'BDFGHJKLNPRSTXZ'[i // 1000 % 15]}",
            "vehicle_make": make, "vehicle_model": model}


def generate(path: Path, n: int) -> None:
    start = dt.date(2019, 1, 1).toordinal()
    span = dt.date(2025, 12, 31).toordinal() - start
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(HEADER)
        for i in range(n):
            p = person(i)
            day = dt.date.fromordinal(start + (i * 7919) % span).isoformat()
            w.writerow((f"K{i:07d}", f"F{i:08d}", day, *(p[h] for h in HEADER[3:])))


async def setup(url: str, n: int, folder: Path) -> tuple[dict[str, Any], str]:
    master = new_master_key()
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    pool = await asyncpg.create_pool(url, min_size=2, max_size=6)
    assert pool is not None
    store = EventStore(pool)
    await store.start()
    figures: dict[str, Any] = {}
    try:
        ledger = Ledger(pool, store, SubjectKeys(pool, parse_master_key(master)))
        await ledger.create_tenant(Context(Actor(kind="operator", id="bench")), TENANT, "Bench garage")
        path = folder / "invoices.csv"
        generate(path, n)
        started = time.perf_counter()
        rejected: list[object] = []
        summary = await Importer(ledger).run_file(str(path), tenant=TENANT, source="dealer", mapping=DEFAULT_MAPPING,
                                                  actor=Actor(kind="importer", id="bench"), on_reject=rejected.append)
        figures["import_s"] = round(time.perf_counter() - started, 2)
        if rejected or summary.aborted:
            raise RuntimeError(f"the import did not go through: {rejected[:3]}")
        from schemas.events import PreferenceSetting

        staff = Context(Actor(kind="staff", id="user:bench"), method="phone")
        for i in range(0, n, 9):
            await ledger.change_preferences(staff, TENANT, "dealer", f"K{i:07d}", [
                PreferenceSetting(category="newsletter", channel="email", value="opt_out")])
        for i in range(0, n, 23):
            await ledger.register_prospect(staff, TENANT, "dealer", f"P{i:07d}", dt.date(2026, 10, 1), "beurs")
    finally:
        await store.stop()
        await pool.close()
    started = time.perf_counter()
    await rebuild(url, clock=SystemClock())
    figures["rebuild_s"] = round(time.perf_counter() - started, 2)
    # What autovacuum does to a freshly built table within a minute (its insert threshold):
    # it sets the visibility map, which lets the dashboard's fingerprint be an index-only scan.
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM (ANALYZE) projector.subjects")
    finally:
        await conn.close()
    return figures, master


async def measure(url: str, n: int, master: str, views: int, searches: int) -> dict[str, Any]:
    pool = await asyncpg.create_pool(url, min_size=2, max_size=6)
    assert pool is not None
    store = EventStore(pool)
    await store.start()
    out: dict[str, Any] = {}
    try:
        today = SystemClock().today()
        reach = ReachCache(pool)
        started = time.perf_counter()
        counts = await reach.counts(TENANT, today)
        out["dashboard_cold_s"] = round(time.perf_counter() - started, 3)
        out["subjects"] = sum(counts.subjects.values())
        lat = []
        for _ in range(views):
            t0 = time.perf_counter()
            await reach.counts(TENANT, today)
            lat.append(time.perf_counter() - t0)
        out["dashboard"] = latency_summary(lat)
        keys = SubjectKeys(pool, parse_master_key(master))
        ledger = Ledger(pool, store, keys)
        changed = []
        from schemas.events import PreferenceSetting

        for i in range(20):
            heads = await store.heads()
            await ledger.change_preferences(Context(Actor(kind="subject", id="subject"), method="portal"), TENANT,
                                            "dealer", f"K{(i * 37) % n:07d}", [
                                                PreferenceSetting(category="sales_campaign", channel="post",
                                                                  value="opt_out")])
            await apply_new_events(pool, heads)
            t0 = time.perf_counter()
            await reach.counts(TENANT, today)
            changed.append(time.perf_counter() - t0)
        out["dashboard_after_change"] = latency_summary(changed)

        directory = Directory(pool, keys, parse_master_key(master))
        started = time.perf_counter()
        await directory.sync(TENANT)
        out["search_index_build_s"] = round(time.perf_counter() - started, 2)
        rnd = random.Random(3)
        lat = []
        by_kind: dict[str, list[float]] = {}
        misses = 0
        for k in range(searches):
            i = rnd.randrange(n)
            p = person(i)
            query = (p["email"], p["licence_plate"].replace("-", ""), p["phone"],
                     f"{p['postcode']} {p['street'].split()[-1]}", p["name"])[k % 5]
            t0 = time.perf_counter()
            found = await directory.search(TENANT, query)
            lat.append(time.perf_counter() - t0)
            by_kind.setdefault(("email", "plate", "phone", "address", "name")[k % 5], []).append(lat[-1])
            misses += f"K{i:07d}" not in {f.customer_ref for f in found}
        out["search"] = latency_summary(lat)
        out["search_by_kind_p99_ms"] = {kind: latency_summary(v)["p99_ms"] for kind, v in by_kind.items()}
        out["search_misses"] = misses

        started = time.perf_counter()
        links = AnswerLinks(parse_master_key(master), "http://127.0.0.1:8081")
        found_list = await mailing_list(reach, directory, links, TENANT, "aftersales_service", "post", today)
        text = found_list.csv()
        out["mailing_s"] = round(time.perf_counter() - started, 2)
        out["mailing_rows"] = len(found_list.rows)
        out["mailing_eligible"] = found_list.eligible
        out["mailing_bytes"] = len(text)
    finally:
        await store.stop()
        await pool.close()
    return out


async def apply_new_events(pool: asyncpg.Pool, after: dict[int, int]) -> None:
    """Apply the new event to the read model as the projector does (its own code); ``after``:
    the position of every log partition before it was written."""
    from services.projector.projection import Projection, apply_until_caught_up

    await apply_until_caught_up(Projection(pool, clock=SystemClock()), batch=1000, after=after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 subjects instead of 100,000")
    parser.add_argument("--subjects", type=int)
    args = parser.parse_args()
    n = args.subjects or (5_000 if args.quick else 100_000)
    views, searches = (100, 200) if args.quick else (200, 1000)
    with local_postgres(durable=False) as server, tempfile.TemporaryDirectory() as tmp:
        url = run_loop(create_database(server, "bench_dealer"))
        setup_figures, master = run_loop(setup(url, n, Path(tmp)))
        figures = run_loop(measure(url, n, master, views, searches))
    headline = {  # flat, so bench/medians.py takes medians of them
        "dashboard_p50_ms": figures["dashboard"]["p50_ms"], "dashboard_p99_ms": figures["dashboard"]["p99_ms"],
        "dashboard_after_change_p99_ms": figures["dashboard_after_change"]["p99_ms"],
        "search_p50_ms": figures["search"]["p50_ms"], "search_p99_ms": figures["search"]["p99_ms"]}
    result = {"benchmark": "dealer", "quick": args.quick, "subjects_imported": n, **headline, **setup_figures, **figures,
              "targets": {"dashboard_p99_ms": 300, "search_p99_ms": 50, "mailing_s": 10},
              "postgres": "fsync off (bench set-up speed; these paths only read)", "machine": machine()}
    write_result("dealer", result)


if __name__ == "__main__":
    main()
