"""Reading DMS export files as a stream of records, whatever their size.

* CSV as Dutch DMS exports write it: ``;`` separator, a header row, UTF-8 or
  Windows-1252. ``encoding = "auto"`` decides per file before the first row is imported:
  a BOM wins (UTF-8 or UTF-16); else UTF-8 if the WHOLE file decodes as UTF-8 (one
  incremental pass, constant memory), else Windows-1252. Deciding up front means a file
  is never half-imported and then stopped by a stray byte on line 80,000.
* JSON Lines: one JSON object per line; keys are the mapping's column names.

Both yield ``(line number, values)`` with ``values`` in the order of the kind's fields
(None: not in the file), so the row parsers do not care which format it was.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import operator
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final, Literal

import msgspec

from consent.text import CONTROL_CHARACTERS, control_character_problem
from services.errors import LedgerError
from services.importer.mapping import KINDS, OPTIONAL, REQUIRED, Kind, Mapping, normalise_header

Format = Literal["csv", "jsonl"]
Values = Sequence[str | None]  # a list (JSON Lines) or a tuple (CSV)

_CHUNK: Final = 1 << 20
_CP1252_UNDEFINED: Final = re.compile(b"[\x81\x8d\x8f\x90\x9d]")  # the five bytes Windows-1252 leaves out


class FileProblem(LedgerError, ValueError):
    """The file as a whole cannot be imported (nothing was written)."""

    status = 422
    error = "import_refused"

    def __init__(self, message: str, field: str = "file") -> None:
        super().__init__(message)
        self.field = field


class RowProblem(LedgerError, ValueError):
    """One record is not readable (reported as a rejected row, never as the answer)."""

    status = 422
    error = "validation_error"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


def fields_of(kind: Kind) -> tuple[str, ...]:
    return REQUIRED[kind] + OPTIONAL[kind]


def detect_format(path: Path | str, declared: str | None = None) -> Format:
    """From ``--format``/the Content-Type if given, else from the file name."""
    if declared in ("csv", "jsonl"):
        return declared  # type: ignore[return-value]
    name = str(path).lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "csv"


def detect_encoding(path: Path | str, configured: str = "auto") -> str:
    """The Python codec to read the file with (see the module docstring); raises
    FileProblem for a file that is not text in the configured/detected encoding."""
    with open(path, "rb") as f:
        head = f.read(4)
        if head.startswith(codecs.BOM_UTF8):
            return "utf-8-sig"
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return "utf-16"
        if b"\x00" in head or head.startswith(b"PK\x03\x04"):
            raise FileProblem("this is not a text file (an Excel workbook? export it as CSV)")
        f.seek(0)
        utf8 = codecs.getincrementaldecoder("utf-8")()
        utf8_error: int | None = None  # byte offset of the first invalid UTF-8
        cp1252_error: int | None = None
        offset = 0
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            if utf8_error is None:
                try:
                    utf8.decode(chunk)
                except UnicodeDecodeError as exc:
                    utf8_error = offset + exc.start
            if cp1252_error is None:
                undefined = _CP1252_UNDEFINED.search(chunk)
                if undefined is not None:
                    cp1252_error = offset + undefined.start()
            offset += len(chunk)
            if utf8_error is not None and cp1252_error is not None:
                break
        if utf8_error is None:
            try:
                utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                utf8_error = offset
    if configured == "cp1252" or (configured == "auto" and utf8_error is not None):
        if cp1252_error is not None:
            what = "Windows-1252" if configured == "cp1252" else "UTF-8 nor Windows-1252"
            raise FileProblem(f"the file is not {'' if configured == 'cp1252' else 'neither '}{what}"
                              f" (byte offset {cp1252_error})", field="encoding")
        return "cp1252"
    if utf8_error is not None:
        raise FileProblem(f"the file is not UTF-8 (byte offset {utf8_error})", field="encoding")
    return "utf-8"


Record = tuple[int, "Values | RowProblem"]
"""(line number, the kind's field values) or (line number, why the line is unreadable)."""


class RecordReader:
    """Iterates records; ``kind``, ``encoding`` and ``header`` are known after :meth:`open`.

    Reads line by line: memory does not grow with the file. ``position()`` is how far
    into the file the reader is (bytes, approximately), for progress bars.
    """

    def __init__(self, path: Path | str, mapping: Mapping, *, kind: Kind | None = None,
                 fmt: Format | None = None) -> None:
        self.path = Path(path)
        self.mapping = mapping
        self.kind: Kind | None = kind
        self.format: Format = fmt or detect_format(path)
        self.encoding = "utf-8"
        self.header: list[str] = []
        self.size = self.path.stat().st_size
        self._raw: io.BufferedReader | None = None
        self._text: io.TextIOWrapper | None = None
        self._records: Iterator[Record] | None = None

    def __enter__(self) -> RecordReader:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._text is not None:
            self._text.close()  # and the binary file under it
            self._text = None
        elif self._raw is not None:
            self._raw.close()
        self._raw = None

    def position(self) -> int:
        return self._raw.tell() if self._raw is not None and not self._raw.closed else self.size

    def open(self) -> None:
        """Decide the encoding and the kind, check the header; raises FileProblem."""
        configured = self.mapping.csv.encoding if self.format == "csv" else "utf-8"
        self.encoding = detect_encoding(self.path, configured)
        self._raw = open(self.path, "rb")
        self._text = io.TextIOWrapper(self._raw, encoding=self.encoding, newline="", errors="strict")
        try:
            self._records = self._csv(self._text) if self.format == "csv" else self._jsonl(self._text)
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[Record]:
        assert self._records is not None, "open() first"
        return self._records

    # -- CSV -------------------------------------------------------------------------

    def _csv(self, text: IO[str]) -> Iterator[Record]:
        opts = self.mapping.csv
        reader = csv.reader(text, delimiter=opts.delimiter, quotechar=opts.quotechar)
        header: list[str] = []
        for header in reader:
            if any(cell.strip() for cell in header):
                break
        else:
            raise FileProblem("the file is empty (no header row)")
        if len(header) == 1:
            other = next((c for c in ";,\t|" if c != opts.delimiter and c in header[0]), None)
            if other is not None:
                raise FileProblem(f"the header has one column; is the separator {other!r}? (mapping: [csv] delimiter)",
                                  field="delimiter")
        self.header = [normalise_header(h) for h in header]
        if self.kind is None:
            self.kind = _guess_kind(set(self.header), self.mapping)
        return self._csv_rows(reader, self._column_indexes(self.kind), len(header))

    def _column_indexes(self, kind: Kind) -> list[int | None]:
        position = {h: i for i, h in enumerate(self.header)}
        explicit = self.mapping.for_kind(kind).columns
        indexes: list[int | None] = []
        missing: list[str] = []
        for field in fields_of(kind):
            column = self.mapping.column_for(kind, field)
            i = position.get(normalise_header(column))
            if i is None and (field in REQUIRED[kind] or field in explicit):
                missing.append(f"{column!r} ({field})" if column != field else repr(field))
            indexes.append(i)
        if missing:
            raise FileProblem(
                f"column(s) {', '.join(missing)} missing from the header of this {kind} file"
                f" (found: {', '.join(self.header)})", field="header")
        return indexes

    def _csv_rows(self, reader: Any, indexes: list[int | None], width: int) -> Iterator[Record]:
        delimiter = self.mapping.csv.delimiter
        # The kind's fields in order, in one C call per row (a field the file lacks picks
        # the None appended at index ``width``).
        picks = [i if i is not None else width for i in indexes]
        assert self.kind is not None
        columns = [self.mapping.column_for(self.kind, f) for f in fields_of(self.kind)]
        pick = operator.itemgetter(*picks) if len(picks) > 1 else (lambda row: (row[picks[0]],))
        last_line = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a NUL byte or a runaway quoted field
                line, last_line = last_line + 1, reader.line_num
                yield line, RowProblem("(row)", f"unreadable CSV: {exc}")
                continue
            line = last_line + 1
            last_line = reader.line_num
            if len(row) == width:
                row.append(None)  # what a column missing from the file reads as (index width)
                values = pick(row)
                yield line, _control_character_problem(values, columns) or values
            elif row and not (len(row) == 1 and not row[0].strip()):  # blank lines are skipped
                yield line, RowProblem("(row)", f"the row has {len(row)} columns, the header {width}"
                                                f" (an unquoted {delimiter!r} inside a value?)")

    # -- JSON Lines ------------------------------------------------------------------

    def _jsonl(self, text: IO[str]) -> Iterator[Record]:
        numbered = ((n, t) for n, t in enumerate(text, 1) if t.strip())
        first = next(numbered, None)
        if self.kind is None:
            obj = _json_object(first[1]) if first is not None else None
            if obj is None:
                raise FileProblem("the first line is not a JSON object; cannot tell what kind of file this is")
            self.kind = _guess_kind({normalise_header(k) for k in obj}, self.mapping)
        columns = [self.mapping.column_for(self.kind, f) for f in fields_of(self.kind)]
        lines = itertools.chain([first], numbered) if first is not None else numbered
        return (_jsonl_record(n, t, columns) for n, t in lines)


def _json_object(text: str) -> dict | None:
    try:
        obj = msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _jsonl_record(line: int, text: str, columns: list[str]) -> Record:
    try:
        obj = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        return line, RowProblem("(line)", f"not valid JSON: {exc}")
    except RecursionError:  # msgspec's depth limit ([[[[...]]]] on one line): a bad line, not a crash
        return line, RowProblem("(line)", "not valid JSON: nested too deeply")
    if not isinstance(obj, dict):
        return line, RowProblem("(line)", "not a JSON object")
    values: list[str | None] = []
    for column in columns:
        v = obj.get(column)
        if v is None or isinstance(v, str):
            values.append(v)
        elif isinstance(v, bool):
            values.append("true" if v else "false")
        elif isinstance(v, (int, float)):
            values.append(str(v))
        else:
            return line, RowProblem(column, "must be a string, a number or null")
    return line, _control_character_problem(values, columns) or values


def _control_character_problem(values: Values, columns: Sequence[str]) -> RowProblem | None:
    """The text rule of :mod:`consent.text`, naming the column; one regex over the whole
    row first, since almost every row passes."""
    if CONTROL_CHARACTERS.search("\t".join(v for v in values if v)) is None:
        return None
    for column, value in zip(columns, values):
        problem = control_character_problem(value) if value else None
        if problem is not None:
            return RowProblem(column, problem)
    return None  # pragma: no cover - the joined row had one, so one value has it


def _guess_kind(header: set[str], mapping: Mapping) -> Kind:
    fits = [k for k in KINDS
            if all(normalise_header(mapping.column_for(k, f)) in header for f in REQUIRED[k])]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        wanted = "; ".join(f"{k}: " + ", ".join(mapping.column_for(k, f) for f in REQUIRED[k]) for k in KINDS)
        raise FileProblem(f"cannot tell the kind of file from its columns; each kind needs: {wanted}",
                          field="kind")
    raise FileProblem(f"the columns fit several kinds ({', '.join(fits)}); say which with --kind", field="kind")

