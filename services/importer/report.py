"""The rejection report: every rejected row with line, field and problem.

Written as the rows are rejected (nothing is kept in memory), as CSV (``;``, for the
dealer's spreadsheet) or JSON Lines (for machines), chosen by the file name. A rejection
never contains the value of a contact field (personal data); see services/importer/rows.py.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Final, TextIO

import msgspec

from services.importer.plans import Rejection

_encode: Final = msgspec.json.Encoder().encode
REPORT_COLUMNS: Final = ("file", "line", "field", "problem")


class RejectionReport:
    """Opened lazily: no file is created for an import without rejections unless
    ``always`` is set (a nightly job may want an empty report as proof)."""

    def __init__(self, path: Path | str, file_label: str, *, always: bool = False) -> None:
        self.path = Path(path)
        self.file_label = file_label
        self.format = "jsonl" if self.path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv"
        self.count = 0
        self._out: IO[str] | None = None
        self._csv: csv.writer | None = None  # type: ignore[valid-type]
        if always:
            self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.path, "w", encoding="utf-8", newline="")
        if self.format == "csv":
            self._csv = csv.writer(self._out, delimiter=";")
            self._csv.writerow(REPORT_COLUMNS)

    def write(self, rejection: Rejection) -> None:
        if self._out is None:
            self._open()
        assert self._out is not None
        self.count += 1
        if self._csv is not None:
            self._csv.writerow((self.file_label, rejection.line, rejection.field, rejection.problem))
        else:
            self._out.write(_encode({"file": self.file_label, "line": rejection.line, "field": rejection.field,
                                     "problem": rejection.problem}).decode() + "\n")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


class ConsoleRejections:
    """Prints rejections as ``file:line: field: problem``, the first ``limit`` of them."""

    def __init__(self, out: TextIO, file_label: str, limit: int = 100) -> None:
        self.out = out
        self.file_label = file_label
        self.limit = limit
        self.count = 0

    def write(self, rejection: Rejection) -> None:
        self.count += 1
        if self.count <= self.limit:
            print(f"{self.file_label}:{rejection.line}: {rejection.field}: {rejection.problem}", file=self.out)
        elif self.count == self.limit + 1:
            print(f"{self.file_label}: ... more rejected rows: see the report", file=self.out)
