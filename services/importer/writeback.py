"""Write-back to the DMS: the ledger's preference changes, objections and erasures since a
cursor, in the import mapping's own columns and words (CSV) or as JSON, so the nightly
exchange runs both ways.

A preference row has the columns the import reads (``customer_ref``, ``category``,
``channel``, ``value``, named and worded as the dealer's mapping says), so the DMS can
take it in with the same mapping it exports with (``given_on``, in ISO form, is the day
the customer gave a dated setting; empty when it counts from when it was recorded); importing the file into the ledger again
changes nothing (each value equals the current preference). Objection and erasure rows
leave the cell columns empty and say what happened in the ``change`` column, which the
import skips. After them: ``source``, ``recorded_at``, ``method``, ``actor``,
``position``.
"""

from __future__ import annotations

import csv
import io
from typing import Final

from services.importer.mapping import Mapping
from services.ledger.changes import ChangesPage

EXTRA_COLUMNS: Final = ("change", "source", "recorded_at", "method", "actor", "position")


def _reverse(own: dict[str, str]) -> dict[str, str]:
    """id -> the dealer's own word for it (the first one in the mapping; the import reads
    the dealer's words first, so it reads back as the same id); ids without one stay ids."""
    out: dict[str, str] = {}
    for word, target in own.items():
        if word and target not in out and target != "ignore":
            out[target] = word
    return out


def _column(mapping: Mapping, field: str) -> str:
    return mapping.column_for("preferences", field)


def csv_header(mapping: Mapping) -> list[str]:
    return [_column(mapping, f) for f in ("customer_ref", "category", "channel", "value", "given_on",
                                                   "change")] + list(
        EXTRA_COLUMNS[1:])


def changes_csv(page: ChangesPage, mapping: Mapping, *, header: bool = True) -> str:
    categories = _reverse(mapping.preferences.categories)
    channels = _reverse(mapping.preferences.channels)
    values = _reverse(mapping.preferences.values)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=mapping.csv.delimiter, quotechar=mapping.csv.quotechar, lineterminator="\n")
    if header:
        writer.writerow(csv_header(mapping))
    for c in page.changes:
        if c.change == "preference":
            assert c.category is not None and c.channel is not None and c.value is not None
            cell = [categories.get(c.category, c.category), channels.get(c.channel, c.channel),
                    values.get(c.value, c.value)]
        else:
            cell = ["", "", ""]
        given = c.given_on.isoformat() if c.given_on else ""
        writer.writerow([c.customer_ref, *cell, given, c.change, c.source, c.recorded_at.isoformat(), c.method,
                         c.actor_kind, c.position])
    return out.getvalue()
