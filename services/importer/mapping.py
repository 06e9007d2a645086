"""How a dealer's DMS export maps onto the import's fields: a small TOML file.

Every DMS names its columns its own way ("Factuurnummer", "Klantnr", "Toestemming").
A mapping says, per kind of file, which column holds which field, how CSV is written
(separator, date format, encoding) and, for opt-in settings, which words mean which
category, channel and value. Without a mapping the canonical field names are the column
names (see docs/import.md; an annotated example is examples/dms-mapping.toml).

Read with the standard library's ``tomllib`` and checked with msgspec, so a typo in the
file is an error naming the key, not a silently ignored setting.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from schemas.vocabulary import CATEGORIES, CHANNELS

from services.errors import LedgerError

Kind = Literal["invoices", "prospects", "preferences"]
KINDS: Final[tuple[Kind, ...]] = ("invoices", "prospects", "preferences")

CONTACT_FIELDS: Final = ("name", "email", "phone", "street", "postcode", "city", "country", "licence_plate",
                                "vehicle_make", "vehicle_model")
REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "invoices": ("customer_ref", "invoice_id", "invoice_date"),
    "prospects": ("customer_ref", "acquired_on", "how"),
    "preferences": ("customer_ref", "category", "channel", "value"),
}
OPTIONAL: Final[dict[str, tuple[str, ...]]] = {
    "invoices": CONTACT_FIELDS,
    "prospects": CONTACT_FIELDS,
    # The day the customer gave the setting (a signed form), if earlier than the import:
    # an opt-out then counts from that day (docs/rules.md, "Dated preferences").
    # "change": the write-back export's column (services/importer/writeback.py); a row whose
    # change is not "preference" (an objection, an erasure) is for the DMS, and is skipped
    # when the export is imported again
    "preferences": ("given_on", "change"),
}

# What a preference value may map to; "ignore" skips the row (counted, not rejected).
ValueTarget = Literal["opt_in", "opt_out", "default", "ignore"]

# Words understood without a mapping: the canonical ids and the seed's Dutch labels
# (section 5.1/5.2), compared after normalising (lower case, letters and digits only).
_BUILTIN_CATEGORIES: Final[dict[str, str]] = {
    **{c: c for c in CATEGORIES},
    "aftersales service": "aftersales_service",
    "nieuwsbrief": "newsletter",
    "sales acties": "sales_campaign",
    "aftersales acties": "aftersales_campaign",
    "prospects": "prospect",
}
_BUILTIN_CHANNELS: Final[dict[str, str]] = {
    **{c: c for c in CHANNELS},
    "e-mail": "email",
    "telefoon": "phone",
    "mobile app": "app",
    "mobiele app": "app",
}
_BUILTIN_VALUES: Final[dict[str, str]] = {
    "opt_in": "opt_in", "opt-in": "opt_in", "ja": "opt_in", "j": "opt_in", "yes": "opt_in", "y": "opt_in",
    "true": "opt_in", "1": "opt_in",
    "opt_out": "opt_out", "opt-out": "opt_out", "nee": "opt_out", "n": "opt_out", "no": "opt_out",
    "false": "opt_out", "0": "opt_out",
    "default": "default", "standaard": "default",
}

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def normalise_word(text: str) -> str:
    """"Sales acties", "sales_acties" and " SALES-ACTIES " all become "salesacties"."""
    return _NON_ALNUM.sub("", text.casefold())


class CsvOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    delimiter: Annotated[str, msgspec.Meta(min_length=1, max_length=1)] = ";"
    quotechar: Annotated[str, msgspec.Meta(min_length=1, max_length=1)] = '"'
    # "auto": UTF-8 if the whole file decodes as UTF-8 (BOM allowed), else Windows-1252.
    encoding: Literal["auto", "utf-8", "cp1252"] = "auto"
    # strptime format of dates in CSV files; ISO dates (yyyy-mm-dd) are always accepted too.
    date_format: str = "%d-%m-%Y"


class KindMapping(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``columns``: field name -> the DMS's column header (or JSON key)."""

    columns: dict[str, str] = {}


class PreferenceMapping(KindMapping, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Plus the DMS's words for categories, channels and values."""

    categories: dict[str, str] = {}
    channels: dict[str, str] = {}
    values: dict[str, ValueTarget] = {}


class Mapping(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(max_length=100)] = "default"
    csv: CsvOptions = CsvOptions()
    invoices: KindMapping = KindMapping()
    prospects: KindMapping = KindMapping()
    preferences: PreferenceMapping = PreferenceMapping()

    def for_kind(self, kind: Kind) -> KindMapping:
        return getattr(self, kind)

    def column_for(self, kind: Kind, field: str) -> str:
        return self.for_kind(kind).columns.get(field, field)

    def category_words(self) -> dict[str, str]:
        return _words(_BUILTIN_CATEGORIES, self.preferences.categories)

    def channel_words(self) -> dict[str, str]:
        return _words(_BUILTIN_CHANNELS, self.preferences.channels)

    def value_words(self) -> dict[str, str]:
        return _words(_BUILTIN_VALUES, self.preferences.values)


DEFAULT_MAPPING: Final = Mapping()


def _words(builtin: dict[str, str], own: dict[str, str]) -> dict[str, str]:
    words = {normalise_word(k): v for k, v in builtin.items()}
    words.update({normalise_word(k): v for k, v in own.items()})  # the dealer's own words win
    return words


class MappingError(LedgerError, ValueError):
    """The mapping file is not valid; ``where`` names the file and the key."""

    status = 422
    error = "invalid_mapping"
    field = "mapping"

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.problem = message


def parse_mapping(text: str | bytes, *, origin: str = "mapping") -> Mapping:
    """A Mapping from TOML text; raises MappingError naming the bad key."""
    try:
        data = tomllib.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MappingError(f"not valid TOML: {exc}", origin) from None
    try:
        mapping = msgspec.convert(data, Mapping)
    except msgspec.ValidationError as exc:
        raise MappingError(str(exc), origin) from None
    _check(mapping, origin)
    return mapping


def load_mapping(path: Path | str) -> Mapping:
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise MappingError(f"cannot read: {exc.strerror}", str(p)) from None
    return parse_mapping(text, origin=str(p))


def _check(mapping: Mapping, origin: str) -> None:
    for kind in KINDS:
        known = set(REQUIRED[kind]) | set(OPTIONAL[kind])
        columns = mapping.for_kind(kind).columns
        for field, column in columns.items():
            if field not in known:
                raise MappingError(f"unknown field {field!r} (known: {', '.join(sorted(known))})",
                                   f"{origin}: [{kind}.columns]")
            if not column.strip():
                raise MappingError(f"field {field!r} maps to an empty column name", f"{origin}: [{kind}.columns]")
        headers = [normalise_header(c) for c in (columns.get(f, f) for f in sorted(known))]
        if len(set(headers)) != len(headers):
            raise MappingError("two fields map to the same column", f"{origin}: [{kind}.columns]")
    for word, target in mapping.preferences.categories.items():
        if target not in CATEGORIES:
            raise MappingError(f"{word!r} maps to {target!r}, not a category ({', '.join(CATEGORIES)})",
                               f"{origin}: [preferences.categories]")
    for word, target in mapping.preferences.channels.items():
        if target not in CHANNELS:
            raise MappingError(f"{word!r} maps to {target!r}, not a channel ({', '.join(CHANNELS)})",
                               f"{origin}: [preferences.channels]")
    if "%" not in mapping.csv.date_format:
        raise MappingError("date_format needs strptime codes such as %d-%m-%Y", f"{origin}: [csv]")


def normalise_header(text: str) -> str:
    """Headers are matched case-insensitively, ignoring surrounding blanks."""
    return text.strip().casefold()
