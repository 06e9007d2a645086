"""What makes the OpenAPI document readable on its own (issue 16): every operation with a
summary, a description (the handler's docstring), the roles that may call it in words, an
example request and response, and every error status with its ``error`` ids; every field
with a description. All of it is derived from the code:

* descriptions from the handlers' docstrings and the types' msgspec metadata, field
  descriptions not given there from :mod:`services.ledger.api.glossary`;
* error ids from the statuses every operation can get (auth, body, store) plus those its
  handler raises: the handler's source and the functions it calls (its module's helpers,
  the Ledger commands, the audit functions) are read for ``ApiError``, ``AuditError`` and
  ``CommandRejected`` with a literal status and id, and for the errors of the family
  (:mod:`services.errors`) whose class states its status and id (``UnknownCursor``);
* examples built from the request and response types (their field names, patterns,
  bounds and enums), checked against those types by tests/test_api_docs.py.

The human-readable page is ``/v1/docs``: Swagger UI 5 from the ``swagger-ui-py`` wheel
(assets served from the package, nothing from a CDN).
"""

from __future__ import annotations

import functools
import inspect
import re
import textwrap
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec.inspect as mi

from services.errors import LedgerError
from services.ledger.api.glossary import FIELD_DOCS

ROLE_WORDS: Final[dict[str, str]] = {
    "operator": "the platform operator (creates tenants; `consent-ledger operator-key`)",
    "admin": "the dealer's administrators",
    "staff": "dealer staff, also acting on a customer's behalf",
    "auditor": "auditors: read-only access to history and proof of consent",
    "sender": "campaign senders (machines that send e-mail, SMS, post, calls)",
    "importer": "the dealer's DMS import (machines)",
    "marketing": "the dealer's marketing staff or mailing house: the mailing export of a campaign",
    "public": "anyone, without an API key",
}

# (status) -> (what it means, the error ids every operation of that kind can get)
_GENERIC: Final[dict[int, tuple[str, tuple[str, ...]]]] = {
    400: ("Malformed request: the body is not JSON, or a header is malformed", ("malformed_json", "invalid_header")),
    401: ("Missing, unknown or revoked API key", ("unauthorized",)),
    403: ("The key's role may not do this, or the key is for another tenant", ("forbidden",)),
    404: ("Not found", ("not_found",)),
    409: ("Conflict: a stale expected_version, or the write conflicts with data that exists",
          ("wrong_expected_version", "conflict")),
    408: ("The request body did not arrive within LEDGER_HTTP_BODY_TIMEOUT; the connection is closed",
          ("request_timeout",)),
    410: ("Gone: the subject was erased; nothing more can be recorded for it", ("subject_erased",)),
    413: ("The body is too large", ("body_too_large",)),
    415: ("Wrong Content-Type", ("unsupported_media_type",)),
    422: ("A field is invalid: `field` names it, `message` says what is wrong (a key twice in one JSON object:"
          " `duplicate_key`)", ("validation_error", "duplicate_key")),
    503: ("The ledger database is unavailable; retry later (Retry-After)", ("unavailable",)),
}
_RAISE: Final = re.compile(r"(?:ApiError|AuditError|CommandRejected)\(\s*(\d{3}),\s*\"([a-z_]+)\"")
_CALLED: Final = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\(")
_METHOD_CALL: Final = re.compile(r"\.(\w+)\(")


def roles_in_words(roles: Iterable[str]) -> str:
    return "; ".join(f"`{r}`: {ROLE_WORDS.get(r, r)}" for r in roles)


@functools.lru_cache(maxsize=2048)
def _source(fn: Any) -> str:
    try:
        return textwrap.dedent(inspect.getsource(inspect.unwrap(fn)))
    except (OSError, TypeError):
        return ""


def raised_errors(handler: Callable[..., Any], depth: int = 4) -> dict[int, set[str]]:
    """The (status, error id) pairs the handler's code raises, following the functions it
    calls by name into the project's own modules (and the Ledger's commands)."""
    from services.ledger.commands import Ledger

    found: dict[int, set[str]] = {}
    seen: set[Any] = set()

    def visit(fn: Any, level: int) -> None:
        fn = inspect.unwrap(fn)
        if fn in seen or level > depth:
            return
        seen.add(fn)
        src = _source(fn)
        for status, error in _RAISE.findall(src):
            found.setdefault(int(status), set()).add(error)
        namespace = getattr(fn, "__globals__", {})
        for name in set(_CALLED.findall(src)):
            target = namespace.get(name)
            if inspect.isfunction(target) and target.__module__.startswith(("services.", "consent.")):
                visit(target, level + 1)
            elif (inspect.isclass(target) and issubclass(target, LedgerError) and target.error != LedgerError.error
                  and target.__module__ != "services.ledger.errors"):
                # An error of the family whose class states its answer (UnknownCursor: 422
                # unknown_cursor). The store's own errors are listed per kind of operation
                # above (_GENERIC: a GET never gets a 409), not wherever a read may raise one.
                found.setdefault(target.status, set()).add(target.error)
        # Methods: the Ledger's commands, and those of the project's classes this code can
        # see (its module's imports: TenantRecord.state_at, StreamCache.subject, ...).
        classes = [Ledger] + [c for c in namespace.values() if inspect.isclass(c)
                              and c.__module__.startswith(("services.", "consent."))]
        for name in set(_METHOD_CALL.findall(src)):
            for cls in classes:
                method = inspect.getattr_static(cls, name, None)
                if inspect.isfunction(method):
                    visit(method, level + 1)

    visit(handler, 0)
    return found


def error_responses(op: Any) -> dict[int, tuple[str, list[str]]]:
    """Every error status of ``op`` with its description and error ids."""
    statuses: dict[int, tuple[str, set[str]]] = {
        s: (_GENERIC[s][0], set(_GENERIC[s][1])) for s in (400, 404, 422, 503)}
    if op.roles != ("public",):
        for s in (401, 403):
            statuses[s] = (_GENERIC[s][0], set(_GENERIC[s][1]))
    if op.method != "GET":
        for s in (409, 410):
            statuses[s] = (_GENERIC[s][0], set(_GENERIC[s][1]))
        statuses[422][1].add("idempotency_key_reused")
    if op.body is not None or op.content_type != "application/json":
        for s in (408, 413, 415):
            statuses[s] = (_GENERIC[s][0], set(_GENERIC[s][1]))
    for status, ids in raised_errors(op.handler).items():
        if status >= 500 and status != 503:
            continue  # a bug, never an answer the operation promises
        desc = _GENERIC.get(status, (f"HTTP {status}", ()))[0]
        statuses.setdefault(status, (desc, set()))[1].update(ids)
    if op.roles == ("public",):
        for s in (401, 403):
            statuses.pop(s, None)
    return {s: (d, sorted(ids)) for s, (d, ids) in sorted(statuses.items())}


# ---------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------

_EXAMPLE_STRINGS: Final[dict[str, str]] = {
    "tenant_id": "demo-garage", "tenant": "demo-garage", "source": "dealer", "source_id": "occasions",
    "customer_ref": "K1001", "invoice_id": "F-2026-0001", "how": "proefrit aangevraagd via de website",
    "campaign_id": "nieuwsbrief-2026-12", "name": "Autobedrijf Demo", "label": "Occasions", "title": "Wie zijn wij?",
    "body": "<p>Autobedrijf Demo is verantwoordelijk voor de verwerking van uw gegevens.</p>",
    "email": "jan.devries@example.nl", "phone": "+31 30 123 4567", "street": "Stationsweg 1",
    "postcode": "1234 AB", "city": "Utrecht", "country": "NL", "licence_plate": "AB-123-C",
    "contact": "Privacy desk", "url": "https://autobedrijf-demo.example.nl", "note": "telefonisch verzoek",
    "evidence_ref": "formulier-0042", "policy_version": "pv-5e1c0b7f2a9d3e41", "version_id": "pv-5e1c0b7f2a9d3e41",
    "confirm_ref": "K1001", "chapter_id": "c01", "stream_id": "subject/demo-garage/dealer/K1001",
    "event_id": "01a241e5-7fee-752d-a341-6097dfa92e04", "key_id": "2fbc711b3004", "subject": "demo-garage/dealer/K1001",
    "key": "clk_2fbc711b3004_7QbT...", "error": "validation_error", "message": "not a calendar date (YYYY-MM-DD)",
    "field": "$.invoice_date", "hash": "9f2c...e1", "id": "user:12", "consentReceiptID": "cr-01a241e5-7fee-752d",
    "piiPrincipalId": "demo-garage/dealer/K1001", "policyUrl": "https://portal.example.nl/policy/demo-garage/pv-5e1c",
}


# Optional request fields whose value must match the ledger's state (a stream version, a
# published policy version): left out of examples so that "try it out" works as shown.
_STATE_BOUND: Final = frozenset({"expected_version", "policy_version"})


def _constraint_value(t: Any, name: str) -> Any:
    if isinstance(t, mi.StrType):
        text = _EXAMPLE_STRINGS.get(name, name.replace("_", "-") if t.pattern else f"example {name}")
        if t.pattern and not re.search(t.pattern, text):
            text = "x1"
        if t.max_length is not None:
            text = text[: t.max_length]
        if t.min_length and len(text) < t.min_length:
            text = text.ljust(t.min_length, "x")
        return text
    if isinstance(t, mi.IntType):
        low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else 0)
        high = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else None)
        value = {"months": 18, "customer_years": 7, "prospect_months": 3, "position": 42, "version": 3,
                 "expected_version": 2}.get(name, max(low, 1))
        return min(max(value, low), high) if high is not None else max(value, low)
    return None


def example_of(t: Any, name: str = "", depth: int = 0) -> Any:
    """A plausible value of type info ``t`` for a field called ``name``."""
    if depth > 8:
        return None
    if isinstance(t, mi.Metadata):
        return example_of(t.type, name, depth)
    if isinstance(t, mi.UnionType):
        options = [x for x in t.types if not isinstance(x, mi.NoneType)]
        return example_of(options[0], name, depth) if options else None
    if isinstance(t, mi.LiteralType):
        preferred = {"category": "newsletter", "channel": "email", "value": "opt_out", "method": "portal",
                     "role": "sender", "direction": "up"}
        return preferred.get(name) if preferred.get(name) in t.values else t.values[0]
    if isinstance(t, (mi.StrType, mi.IntType)):
        return _constraint_value(t, name)
    if isinstance(t, mi.BoolType):
        return name not in ("replayed", "erased", "already_erased", "suppressed", "sensitive", "dry_run",
                            "rotate", "rotated", "onBehalf", "thirdPartyDisclosure", "requires_disclosure")
    if isinstance(t, mi.FloatType):
        return 1.5
    if isinstance(t, mi.DateType):
        return "2026-11-20"
    if isinstance(t, mi.DateTimeType):
        return "2026-12-01T09:30:00Z"
    if isinstance(t, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
        item = example_of(t.item_type, name.rstrip("s"), depth + 1)
        return [] if item is None else [item]
    if isinstance(t, mi.DictType):
        key = example_of(t.key_type, "key", depth + 1)
        return {key if isinstance(key, str) else "dealer": example_of(t.value_type, name, depth + 1)}
    if isinstance(t, mi.StructType):
        out: dict[str, Any] = {}
        if t.tag_field is not None:
            out[t.tag_field] = t.tag
        for f in t.fields:
            if not f.required and f.encode_name in _STATE_BOUND:
                continue  # an example that names them would be refused against any real ledger
            value = example_of(f.type, f.encode_name, depth + 1)
            if value is None and not f.required:
                continue
            out[f.encode_name] = value
        return out
    if isinstance(t, mi.AnyType):
        return {}
    return None


@functools.lru_cache(maxsize=512)
def example_for(tp: type) -> Any:
    return example_of(mi.type_info(tp))


# ---------------------------------------------------------------------------------------
# Field descriptions
# ---------------------------------------------------------------------------------------


def describe_fields(components: dict[str, Any]) -> None:
    """Give every property of every component schema a description: its own, else the
    glossary's (``Schema.field`` first, then the field name)."""
    for schema_name, schema in components.items():
        short = schema_name.rpartition(".")[2]
        for field_name, prop in schema.get("properties", {}).items():
            if "description" in prop:
                continue
            text = FIELD_DOCS.get(f"{short}.{field_name}") or FIELD_DOCS.get(field_name)
            if text is None:
                continue
            if "$ref" in prop:  # a sibling of $ref is allowed in OpenAPI 3.1
                prop["description"] = text
            else:
                prop["description"] = text


def describe(op: Any) -> str:
    doc = inspect.getdoc(inspect.unwrap(op.handler)) or ""
    return f"{doc}\n\n**Who may call:** {roles_in_words(op.roles)}.".strip()


__all__ = ["ROLE_WORDS", "describe", "describe_fields", "error_responses", "example_for", "raised_errors",
           "roles_in_words"]
