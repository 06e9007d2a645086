"""``consent-ledger schemas export``: the message types as JSON Schema files.

One file per public message family, next to the types (``schemas/<name>.schema.json``),
generated with :func:`msgspec.json.schema_components` so they cannot drift from the code;
``--check`` fails when a committed file is out of date (for CI). Add a family to
:data:`EXPORTS`.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any, Final

import msgspec

from schemas import eligibility, events

FOLDER: Final = Path(__file__).resolve().parent

EXPORTS: Final[dict[str, tuple[str, str, tuple[type, ...]]]] = {
    # name: (title, description, (root type, other types...))
    "events": (
        "consent.ledger.events.v1 value",
        "A ledger event as recorded (the envelope published on consent.ledger.events.v1, key = stream id).",
        (events.RecordedEvent,),
    ),
    "eligibility": (
        "consent.eligibility.v1 value",
        "A subject's eligibility matrix (compacted topic consent.eligibility.v1, key {tenant}/{source}/{ref};"
        " null = erased). Also the HTTP answer for one subject; the bulk check's request and answer and the"
        " term warnings are in $defs.",
        (eligibility.EligibilityMatrix, eligibility.CampaignCheck, eligibility.CampaignCheckResult,
         eligibility.TermWarnings, eligibility.EpochMarker),
    ),
}


def _clean_descriptions(node: Any) -> Any:
    """Docstring-derived descriptions dedented the same way whatever msgspec's version.

    msgspec 0.18-0.22 copied ``__doc__`` as written (continuation lines indented), 0.23
    dedents it; ``inspect.cleandoc`` gives both the same text.
    """
    if isinstance(node, dict):
        return {k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _clean_descriptions(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_clean_descriptions(v) for v in node]
    return node


def schema_document(name: str) -> dict[str, Any]:
    title, description, types = EXPORTS[name]
    schemas, components = _clean_descriptions(
        msgspec.json.schema_components(types, ref_template="#/$defs/{name}"))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{name}.schema.json",
        "title": title,
        "description": description,
        **schemas[0],
        "$defs": components,
    }


def render(name: str) -> str:
    return json.dumps(schema_document(name), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export(folder: Path = FOLDER) -> list[Path]:
    written = []
    for name in EXPORTS:
        path = folder / f"{name}.schema.json"
        path.write_text(render(name), encoding="utf-8")
        written.append(path)
    return written


def stale(folder: Path = FOLDER) -> list[Path]:
    """The schema files that are missing or differ from the types."""
    out = []
    for name in EXPORTS:
        path = folder / f"{name}.schema.json"
        if not path.exists() or path.read_text(encoding="utf-8") != render(name):
            out.append(path)
    return out


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("schemas", help="the message types as JSON Schema")
    commands = p.add_subparsers(dest="schemas_command", required=True)
    e = commands.add_parser("export", help="write schemas/*.schema.json from the msgspec types")
    e.add_argument("--out", type=Path, default=FOLDER, help="folder to write to (default: the schemas package)")
    e.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is missing or out of date")
    e.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    if args.check:
        out_of_date = stale(args.out)
        for path in out_of_date:
            print(f"out of date: {path} (run `consent-ledger schemas export`)")
        return 1 if out_of_date else 0
    if not args.out.is_dir():
        raise SystemExit(f"consent-ledger: {args.out} is not a folder")
    for path in export(args.out):
        print(f"wrote {path}")
    return 0
