"""Reading DMS files: encodings, separators, kinds, dates, mappings (no database), and the
example mapping in examples/ imported end to end."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import asyncpg
import pytest

from services.importer.mapping import DEFAULT_MAPPING, MappingError, load_mapping, parse_mapping
from services.importer.reader import FileProblem, RecordReader, RowProblem, detect_encoding
from services.importer.rows import date_parser
from tests.conftest import MASTER_KEY
from tests.import_support import run_import, start_ledger, subject_events, write

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(("data", "expected"), [
    ("Zoë;Ruïz\n".encode(), "utf-8"),
    ("Zoë;Ruïz\n".encode("cp1252"), "cp1252"),
    ("\ufeffZoë\n".encode(), "utf-8-sig"),
    ("Zoë\n".encode("utf-16"), "utf-16"),
    (b"plain ascii\n", "utf-8"),
])
def test_the_encoding_is_utf8_when_the_whole_file_is_else_windows_1252(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    assert detect_encoding(path) == expected


def test_a_utf8_file_with_one_windows_byte_far_down_is_read_as_windows_1252_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b"a;b\n" + b"x;y\n" * 300_000 + "Café;z\n".encode("cp1252"))
    assert detect_encoding(path) == "cp1252"


def test_files_that_are_no_text_are_refused(tmp_path: Path) -> None:
    for data, words in ((b"\x81\xff;\x8d\n", "neither UTF-8 nor Windows-1252"), (b"PK\x03\x04rest", "Excel")):
        path = tmp_path / "f.csv"
        path.write_bytes(data)
        with pytest.raises(FileProblem, match=words):
            detect_encoding(path)


def test_a_comma_separated_file_is_refused_with_a_hint_about_the_separator(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "customer_ref,invoice_id,invoice_date\nK1,F1,05-03-2024\n")
    with pytest.raises(FileProblem, match="is the separator ','"), RecordReader(path, DEFAULT_MAPPING):
        pass


def test_the_kind_is_recognised_from_the_columns_or_must_be_given(tmp_path: Path) -> None:
    with RecordReader(write(tmp_path, "a.csv", "CUSTOMER_REF ; acquired_on;how\n"), DEFAULT_MAPPING) as r:
        assert r.kind == "prospects"
    with pytest.raises(FileProblem, match="cannot tell the kind"), \
            RecordReader(write(tmp_path, "b.csv", "a;b\n"), DEFAULT_MAPPING):
        pass
    both = write(tmp_path, "c.csv", "customer_ref;invoice_id;invoice_date;acquired_on;how\n")
    with pytest.raises(FileProblem, match="fit several kinds"), RecordReader(both, DEFAULT_MAPPING):
        pass
    with RecordReader(both, DEFAULT_MAPPING, kind="invoices") as r:
        assert r.kind == "invoices"


def test_quoted_values_may_hold_separators_and_line_breaks_and_line_numbers_stay_right(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", 'customer_ref;invoice_id;invoice_date;name\n'
                                    'K1;F1;01-01-2024;"de Vries; Jan"\n'
                                    'K2;F2;01-01-2024;"two\nlines"\n'
                                    '\n'
                                    'K3;F3\n')
    with RecordReader(path, DEFAULT_MAPPING) as r:
        records = list(r)
    assert [(line, v if isinstance(v, RowProblem) else v[3]) for line, v in records][:2] == [
        (2, "de Vries; Jan"), (3, "two\nlines")]
    line, problem = records[2]
    assert line == 6 and isinstance(problem, RowProblem) and "2 columns" in problem.problem


def test_dates_in_the_dms_format_and_in_iso_are_read_and_others_refused() -> None:
    parse = date_parser("%d-%m-%Y")
    assert parse("05-03-2024") == parse("5-3-2024") == parse("2024-03-05") == dt.date(2024, 3, 5)
    for bad in ("31-02-2024", "05-03-24", "5/3/2024", "1_0-03-2024", "", "٠٥-٠٣-٢٠٢٤"):
        with pytest.raises(ValueError):
            parse(bad)
    assert date_parser("%d/%m/%y")("05/03/24") == dt.date(2024, 3, 5)


def test_a_mapping_error_names_the_key_and_the_problem() -> None:
    with pytest.raises(MappingError, match=r"\[invoices.columns\].*unknown field 'factuur'"):
        parse_mapping("[invoices.columns]\nfactuur = 'Factuurnummer'\n")
    with pytest.raises(MappingError, match=r"\[preferences.categories\].*'Winter' maps to 'winter'"):
        parse_mapping("[preferences.categories]\nWinter = 'winter'\n")
    with pytest.raises(MappingError, match=r"Object contains unknown field `delimeter`"):
        parse_mapping("[csv]\ndelimeter = ';'\n")
    with pytest.raises(MappingError, match="not valid TOML"):
        parse_mapping("[csv\n")
    with pytest.raises(MappingError, match="same column"):
        parse_mapping("[invoices.columns]\nname = 'Naam'\ncity = 'naam'\n")


async def test_the_example_mapping_imports_the_example_files(pool: asyncpg.Pool, tmp_path: Path) -> None:
    mapping = load_mapping(EXAMPLES / "dms-mapping.toml")
    ledger = await start_ledger(pool, MASTER_KEY)
    try:
        invoices, rejected = await run_import(ledger, EXAMPLES / "dms-mapping.invoices.csv", mapping=mapping)
        assert (invoices.kind, invoices.recorded, rejected) == ("invoices", 3, [])
        optin, rejected = await run_import(ledger, EXAMPLES / "dms-mapping.optin.csv", mapping=mapping)
        assert (optin.kind, optin.recorded, optin.ignored, rejected) == ("preferences", 3, 1, [])
        [*_, prefs] = await subject_events(pool, "100231")
        assert {(c.category, c.channel, c.value) for c in prefs.changes} == {
            ("newsletter", "email", "opt_in"), ("sales_campaign", "phone", "opt_out")}
    finally:
        await ledger.store.stop()


@pytest.mark.parametrize("contact", [
    ("Jan", "jan@example.nl", None, None, None, "Zwolle", None, None),
    ("  Zoë Ruïz 🚗 ", " zoe@example.nl ", "+31 (0)6-1234 5678", "Dorpsstraat 1", "1234 AB", "'s-Hertogenbosch",
     "NL", "AB-12-CD"),
    ("", "  ", None, None, None, None, None, None),
    ("x" * 200, "a@" + "b" * 252, "1" * 40, "s" * 200, "p" * 20, "c" * 100, "n" * 100, "l" * 20),
    ("x" * 201, None, None, None, None, None, None, None),
    (None, "a@" + "b" * 253, None, None, None, None, None, None),
    (None, "no at sign", None, None, None, None, None, None),
    (None, "two@@example.nl", None, None, None, None, None, None),
    (None, "jan@exa mple.nl", None, None, None, None, None, None),
    (None, None, "12", None, None, None, None, None),
    (None, None, "06 12 34 56 78 ext. 9", None, None, None, None, None),
    (None, None, "1" * 41, None, None, None, None, None),
    (None, None, None, None, "p" * 21, None, None, "l" * 21),
    ("Anna", None, None, None, None, None, None, "GH-456-J", "Toyota", "Yaris"),
    (None, None, None, None, None, None, None, "AB--12"),
    (None, None, None, None, None, None, None, None, "m" * 61),
])
def test_contact_fields_are_checked_and_encoded_exactly_as_the_ledger_s_contact_type_says(
    contact: tuple[str | None, ...]
) -> None:
    """The row parser checks the common case against Contact's limits without building a
    Contact; it must accept, reject and encode exactly as msgspec.convert into Contact."""
    import msgspec

    from schemas.api import Contact
    from services.importer.mapping import CONTACT_FIELDS
    from services.importer.rows import RowParser

    parser = RowParser("invoices", DEFAULT_MAPPING, today_=dt.date(2025, 1, 1))
    contact = contact + (None,) * (len(CONTACT_FIELDS) - len(contact))  # cases written before merk/model
    values = ("K1", "F1", "01-01-2024", *contact)
    found = {f: v.strip() for f, v in zip(CONTACT_FIELDS, contact) if v is not None and v.strip()}
    try:
        expected: bytes | None | str = msgspec.json.encode(msgspec.convert(found, Contact)) if found else None
    except msgspec.ValidationError:
        expected = "rejected"
    try:
        got: bytes | None | str = parser.parse(1, values).contact  # type: ignore[union-attr]
    except RowProblem as problem:
        got = "rejected"
        assert problem.field in CONTACT_FIELDS
    assert got == expected
