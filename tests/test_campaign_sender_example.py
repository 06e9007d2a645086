"""examples/campaign_sender.py against the real projector output: it follows the topic into
SQLite (a tombstone deletes), resumes at its stored offsets, and filters a send list."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg

from consent.terms import add_months, ledger_day
from services.devservers import LocalBroker
from services.ledger.store import EventStore
from services.projector.clock import SystemClock
from services.projector.projection import Projection, apply_until_caught_up
from services.projector.publisher import KafkaPublisher
from tests.projector_support import create_tenant, erased, invoice, prefs, prospect, subject

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "campaign_sender.py"
TODAY = ledger_day(dt.datetime.now(dt.timezone.utc))


def months_ago(n: int) -> str:
    return add_months(TODAY, -n).isoformat()


def sender(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLE), *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


async def test_the_example_sender_follows_the_topic_and_filters_a_send_list(
    store: EventStore, pool: asyncpg.Pool, broker: LocalBroker, tmp_path: Path
) -> None:
    topic = f"eligibility-{uuid.uuid4().hex[:8]}"
    await create_tenant(store, "acme")
    await subject(store, "acme", "C1", invoice(months_ago(3)))  # newsletter e-mail: 18 months
    await subject(store, "acme", "C2", invoice(months_ago(3)), prefs(newsletter__email="opt_out"))
    await subject(store, "acme", "C3", invoice(months_ago(20)))  # lapsed
    await subject(store, "acme", "P1", prospect(months_ago(1)))
    await subject(store, "acme", "E1", invoice(months_ago(1)))
    publisher = KafkaPublisher(broker.bootstrap, topic=topic, partitions=2)
    await publisher.start()
    try:
        projection = Projection(pool, clock=SystemClock(), store=store, publisher=publisher)
        await apply_until_caught_up(projection)
        db = tmp_path / "sender.sqlite"
        done = await asyncio.to_thread(sender, "follow", "--bootstrap", broker.bootstrap, "--db", str(db),
                                       "--topic", topic, "--until-idle", "1")
        assert done.returncode == 0, done.stderr
        assert "5 message(s) applied" in done.stderr

        await subject(store, "acme", "E1", erased())
        await apply_until_caught_up(projection)
    finally:
        await publisher.stop()
    done = await asyncio.to_thread(sender, "follow", "--bootstrap", broker.bootstrap, "--db", str(db),
                                   "--topic", topic, "--until-idle", "1")
    assert "1 message(s) applied" in done.stderr  # resumed at its offsets: only the tombstone

    send_list = "customer_ref,name\nC1,Jan\nC2,Piet\nC3,Kees\nE1,Els\nX9,Onbekend\nP1,Prospect\n"
    done = await asyncio.to_thread(sender, "filter", "--db", str(db), "--topic", topic, "--tenant", "acme", "--category",
                                   "newsletter", "--channel", "email", "--date", TODAY.isoformat(), "-",
                                   stdin=send_list)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == ("source,customer_ref,reason,until,requires_disclosure,requires_postfilter_check,"
                        "requires_objection_offer")
    assert [line.split(",")[1] for line in lines[1:]] == ["C1"]
    assert lines[1].split(",")[2] == "soft_opt_in"
    assert "eligible 1, not_eligible 3, unknown 2, recheck 0" in done.stderr  # E1 erased, X9 never known

    done = await asyncio.to_thread(sender, "filter", "--db", str(db), "--topic", topic, "--tenant", "acme", "--category",
                                   "prospect", "--channel", "post", "--date", TODAY.isoformat(), "-",
                                   stdin="customer_ref\nP1\n")
    assert done.stdout.strip().splitlines()[1].split(",") == [
        "dealer", "P1", "prospect_term", add_months(dt.date.fromisoformat(months_ago(1)), 3).isoformat(), "yes",
        "yes", "yes"]  # a letter to a prospect: disclosure, Postfilter check, right to object

    far = add_months(TODAY, 30).isoformat()  # beyond every matrix's valid_until: ask the API instead
    done = await asyncio.to_thread(sender, "filter", "--db", str(db), "--topic", topic, "--tenant", "acme", "--category",
                                   "newsletter", "--channel", "post", "--date", far, "-", stdin="customer_ref\nC1\n")
    assert done.stdout.strip().splitlines()[1:] == []
    assert "need a fresh check" in done.stderr and "dealer/C1" in done.stderr


def test_a_send_list_without_customer_ref_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "empty.sqlite"
    db.touch()
    done = sender("filter", "--db", str(db), "--tenant", "acme", "--category", "newsletter", "--channel", "email",
                  "-", stdin="ref\nC1\n")
    assert done.returncode != 0 and "customer_ref" in done.stderr
