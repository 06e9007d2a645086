"""From a record's text values to a checked row, or a rejection naming field and problem.

The checks are the ledger's own (msgspec types of schemas/api.py and schemas/events.py:
customer ref and invoice id patterns, Contact fields), applied per field so that a
rejection says which field is wrong. Values of contact fields are personal data: a
rejection names the field and the problem, never the value.

Cheap per row on purpose (the import's budget is a few microseconds a row): precompiled
patterns, a fast path for ``dd-mm-yyyy`` dates, one ``msgspec.convert`` for the contact.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Final
from zoneinfo import ZoneInfo

import msgspec
import msgspec.inspect

from consent.terms import fact_date_problem
from schemas.api import Contact
from schemas.vocabulary import CUSTOMER_REF_PATTERN
from services.importer.mapping import CONTACT_FIELDS, Kind, Mapping, normalise_word
from services.importer.reader import RowProblem, Values, fields_of

_CUSTOMER_REF: Final = re.compile(CUSTOMER_REF_PATTERN)
_IDENTIFIER: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_AMSTERDAM: Final = ZoneInfo("Europe/Amsterdam")
_contact_encoder: Final = msgspec.json.Encoder()
_DATE_CACHE: Final = 20_000  # distinct date texts remembered per file (bounded memory)



def _contact_rules() -> dict[str, tuple[int | None, Callable[[str], object] | None]]:
    """Per contact field, its maximum length and pattern as schemas/api.py's Contact
    declares them (read from the type, so the rules live in one place). A field whose type
    says anything else gets no fast check: it always goes through msgspec.convert."""
    rules: dict[str, tuple[int | None, Callable[[str], object] | None]] = {}
    for field in msgspec.inspect.type_info(Contact).fields:
        texts = [t for t in getattr(field.type, "types", (field.type,)) if isinstance(t, msgspec.inspect.StrType)]
        if len(texts) == 1 and texts[0].min_length is None:
            rules[field.name] = (texts[0].max_length, re.compile(texts[0].pattern).search if texts[0].pattern else None)
        else:
            rules[field.name] = (-1, None)  # len(text) > -1: always the full check
    return rules


_CONTACT_RULES: Final = _contact_rules()
_CONTACT_PROBLEMS: Final[dict[str, str]] = {
    "email": "not an e-mail address (name@domain, at most 254 characters)",
    "phone": "not a phone number (3-40 digits, spaces, +, (, ) and -)",
    "licence_plate": "not a licence plate (2-12 letters and digits, single '-' or spaces between them)",
}
_CONTACT_MAX: Final[dict[str, int]] = {
    "name": 200, "email": 254, "phone": 40, "street": 200, "postcode": 20, "city": 100, "country": 100,
    "licence_plate": 20, "vehicle_make": 60, "vehicle_model": 60,
}


# Rows, rejections and index states hold only text, dates and bytes: no reference cycle
# is possible, so they are not tracked by the cyclic GC (``gc=False``), which otherwise
# traverses every row of the batches in memory on each pass.


class InvoiceRow(msgspec.Struct, frozen=True, gc=False):
    line: int
    customer_ref: str
    invoice_id: str
    invoice_date: dt.date
    contact: bytes | None  # the Contact as JSON (what gets sealed), None: none delivered


class ProspectRow(msgspec.Struct, frozen=True, gc=False):
    line: int
    customer_ref: str
    acquired_on: dt.date
    how: str
    contact: bytes | None


class PreferenceRow(msgspec.Struct, frozen=True, gc=False):
    line: int
    customer_ref: str
    category: str
    channel: str
    value: str  # opt_in / opt_out / default / ignore
    given_on: dt.date | None = None  # the optional given_on column


Row = InvoiceRow | ProspectRow | PreferenceRow


def date_hint(fmt: str) -> str:
    return fmt.replace("%d", "dd").replace("%m", "mm").replace("%Y", "yyyy").replace("%y", "yy")


def date_parser(fmt: str) -> Callable[[str], dt.date]:
    """Parses ``fmt`` (fast path for dd-mm-yyyy) or ISO ``yyyy-mm-dd``; ValueError else."""
    fast = fmt in ("%d-%m-%Y", "%d/%m/%Y", "%d.%m.%Y")
    sep = fmt[2] if fast else ""
    strptime = dt.datetime.strptime
    date = dt.date

    def parse(text: str) -> dt.date:
        if len(text) == 10 and text[4] == "-" and text[7] == "-":
            return date.fromisoformat(text)
        if fast:
            parts = text.split(sep)
            if len(parts) == 3 and len(parts[2]) == 4 and all(0 < len(p) <= 4 and p.isascii() and p.isdigit()
                                                              for p in parts):
                return date(int(parts[2]), int(parts[1]), int(parts[0]))
            raise ValueError(text)
        return strptime(text, fmt).date()

    return parse


def today() -> dt.date:
    """The Dutch calendar day (dates in a DMS export are local dates)."""
    return dt.datetime.now(_AMSTERDAM).date()


class RowParser:
    """Parses the records of one kind of file; ``parse(line, values)`` returns a row or
    raises RowProblem."""

    def __init__(self, kind: Kind, mapping: Mapping, *, today_: dt.date | None = None) -> None:
        self.kind = kind
        self.mapping = mapping
        self.fields = fields_of(kind)
        self._date = date_parser(mapping.csv.date_format)
        self._date_hint = date_hint(mapping.csv.date_format)
        self._days: dict[str, dt.date] = {}
        self._today = today_ or today()
        self._columns = {f: mapping.column_for(kind, f) for f in self.fields}
        if kind == "preferences":
            self._categories = mapping.category_words()
            self._channels = mapping.channel_words()
            self._values = mapping.value_words()
        self.parse: Callable[[int, Values], Row] = getattr(self, f"_{kind}")

    # -- fields ----------------------------------------------------------------------

    def _required(self, field: str, value: str | None) -> str:
        text = value.strip() if value is not None else ""
        if not text:
            raise RowProblem(self._columns[field], "is empty")
        return text

    def _ref(self, value: str | None) -> str:
        ref = self._required("customer_ref", value)
        if not _CUSTOMER_REF.match(ref):
            raise RowProblem(self._columns["customer_ref"],
                             f"{ref[:70]!r} is not a customer number (letters, digits, '.', '_', '-'; at most 64)")
        return ref

    def _day(self, field: str, value: str | None) -> dt.date:
        day = self._days.get(value)  # type: ignore[arg-type]
        if day is not None:  # a file has few distinct dates: checked once each
            return day
        text = self._required(field, value)
        try:
            day = self._date(text)
        except ValueError:
            raise RowProblem(self._columns[field], f"{text[:30]!r} is not a date ({self._date_hint})") from None
        problem = fact_date_problem(day, self._today)
        if problem is not None:
            raise RowProblem(self._columns[field], problem)
        if len(self._days) < _DATE_CACHE:
            self._days[value] = day  # type: ignore[index]
        return day

    def _contact(self, values: Values, start: int) -> bytes | None:
        found: dict[str, str] = {}
        for i, field in enumerate(CONTACT_FIELDS, start):
            v = values[i]
            if v is not None:
                v = v.strip()
                if v:
                    found[field] = v
        if not found:
            return None
        for field, text in found.items():  # the common case: Contact's own limits, without building one
            limit, search = _CONTACT_RULES[field]
            if (limit is not None and len(text) > limit) or (search is not None and search(text) is None):
                break
        else:  # the same JSON as encoding the Contact (its field order, no None fields)
            return _contact_encoder.encode(found)
        try:
            contact = msgspec.convert(found, Contact)
        except msgspec.ValidationError as exc:
            field = str(exc).rsplit("$.", 1)[-1].rstrip("`")
            problem = _CONTACT_PROBLEMS.get(field)
            if problem is None or "length" in str(exc):
                problem = f"longer than {_CONTACT_MAX.get(field, 0)} characters"
            raise RowProblem(self._columns.get(field, field), problem) from None
        return _contact_encoder.encode(contact)

    # -- kinds -----------------------------------------------------------------------

    def _invoices(self, line: int, values: Values) -> InvoiceRow:
        # The common case inline (one call per row, not five); anything unusual takes the
        # checks above, which say what is wrong.
        ref, invoice_id, date_text = values[0], values[1], values[2]
        ref = ref.strip() if ref is not None else ""
        if not (ref and _CUSTOMER_REF.match(ref)):
            ref = self._ref(values[0])
        invoice_id = invoice_id.strip() if invoice_id is not None else ""
        if not (invoice_id and _IDENTIFIER.fullmatch(invoice_id)):
            invoice_id = self._required("invoice_id", values[1])
            raise RowProblem(self._columns["invoice_id"],
                             f"{invoice_id[:70]!r} is not an invoice number (letters, digits, '.', '_', '-';"
                             " at most 64)")
        day = self._days.get(date_text)  # type: ignore[arg-type]
        if day is None:
            day = self._day("invoice_date", date_text)
        return InvoiceRow(line, ref, invoice_id, day, self._contact(values, 3))

    def _prospects(self, line: int, values: Values) -> ProspectRow:
        ref = self._ref(values[0])
        acquired_on = self._day("acquired_on", values[1])
        how = self._required("how", values[2])
        if len(how) > 200:
            raise RowProblem(self._columns["how"], "longer than 200 characters")
        return ProspectRow(line, ref, acquired_on, how, self._contact(values, 3))

    def _preferences(self, line: int, values: Values) -> PreferenceRow:
        ref = self._ref(values[0])
        # values: customer_ref, category, channel, value, then OPTIONAL["preferences"]:
        # given_on (4), change (5)
        change = values[5].strip() if len(values) > 5 and values[5] is not None else ""
        if change and change != "preference":  # a write-back row without a cell: nothing to import
            if change not in ("objection", "objection_withdrawn", "erasure"):
                raise RowProblem(self._columns["change"],
                                 f"{change[:40]!r} is not a change (preference, objection, objection_withdrawn,"
                                 " erasure)")
            return PreferenceRow(line, ref, "", "", "ignore")
        category = self._word("category", values[1], self._categories)
        channel = self._word("channel", values[2], self._channels)
        raw = values[3].strip() if values[3] is not None else ""
        value = self._values.get(normalise_word(raw)) if raw else self._values.get("")
        if value is None:
            raise RowProblem(self._columns["value"],
                             f"{raw[:40]!r} is not a known opt-in value" if raw else
                             "is empty (map \"\" in [preferences.values] to ignore or default)")
        given = values[4].strip() if len(values) > 4 and values[4] is not None else ""
        if given:
            return PreferenceRow(line, ref, category, channel, value, self._day("given_on", given))
        return PreferenceRow(line, ref, category, channel, value)

    def _word(self, field: str, value: str | None, words: dict[str, str]) -> str:
        text = self._required(field, value)
        found = words.get(normalise_word(text))
        if found is None:
            raise RowProblem(self._columns[field],
                             f"{text[:40]!r} is not a known {field} (add it to [preferences.{field}"
                             f"{'ies' if field == 'category' else 's'}] in the mapping)")
        return found
