"""The one rule for free text from outside (API bodies, portal forms, DMS files): no
control characters except tab and line breaks.

A NUL cannot be stored in a PostgreSQL text column at all (it answered 500), and the other
C0/C1 controls, DEL and lone surrogates are never part of a name, an address, a label or a
policy text: they come from broken exports, binary garbage or probing, and would reach
letters, CSV exports and the portal's HTML unseen. Tab, line feed and carriage return
stay allowed (policy bodies and notes have lines; browsers post CRLF). Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, Final

CONTROL_CHARACTERS: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def control_character_problem(text: str) -> str | None:
    """Why ``text`` is refused, or None."""
    m = CONTROL_CHARACTERS.search(text)
    if m is None:
        return None
    return (f"contains the control character U+{ord(m.group()):04X} at position {m.start()};"
            " only tab and line breaks are allowed in text")


_PLAIN_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(parent: str, key: str | int) -> str:
    """``$.a.b[0]`` as msgspec writes paths (a key that is not a plain name: ``$["a b"]``)."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if _PLAIN_NAME.match(key):
        return f"{parent}.{key}"
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    escaped = CONTROL_CHARACTERS.sub(lambda m: f"\\u{ord(m.group()):04x}", escaped)
    return f'{parent}["{escaped}"]'


def first_control_character(value: Any, path: str = "$") -> tuple[str, str] | None:
    """(JSON path, problem) of the first string (object keys included) in a decoded JSON
    value that breaks the rule, or None."""
    if isinstance(value, str):
        problem = control_character_problem(value)
        return None if problem is None else (path, problem)
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                problem = control_character_problem(key)
                if problem is not None:
                    return json_path(path, key), "the field name " + problem
            found = first_control_character(item, json_path(path, key))
            if found is not None:
                return found
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = first_control_character(item, json_path(path, i))
            if found is not None:
                return found
    return None
