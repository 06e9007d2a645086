"""Every declared operation refuses callers it should refuse, and a refused call writes nothing.

The operations come from the running app (``app[ROUTE_SETS]``), so a route added later by
anyone is covered without touching this file. For each non-public operation:

* no key, a malformed header, an unknown key or a revoked key -> 401;
* a key of every role the operation does not allow -> 403;
* a key of an allowed role but another tenant, for paths with ``{tenant}`` -> 403;
* nothing is appended (ledger head), no key issued or revoked, no subject key made;
* and, as the control that makes the refusals meaningful, the same request with an
  allowed key of the right tenant gets past the guard (neither 401 nor 403).

Requests carry a body that is valid for the operation's declared type (built from the
type), so a refusal is the guard's doing and not a side effect of a bad body.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import TestClient

from services.ledger.api.context import ROUTE_SETS
from services.ledger.api.jsonapi import Operation
from services.ledger.api_keys import ROLES
from tests.conftest import Dealer, make_dealer
from tests.raw_http import json_body, raw_request

TENANT_ROLES = tuple(r for r in ROLES if r != "operator")
_PATH_PARAM = re.compile(r"\{([a-z_]+)(?::[^}]*)?\}")


# -- valid example bodies, built from the declared msgspec type ----------------------------

_STRING_CANDIDATES = ("p1", "C1", "a@example.nl", "0612345678", "c01", "x")


def _example(t: Any) -> Any:
    mi = msgspec.inspect
    if isinstance(t, mi.Metadata):
        return _example(t.type)
    if isinstance(t, mi.StructType):
        out: dict[str, Any] = {}
        if t.tag_field is not None:
            out[t.tag_field] = t.tag
        for f in t.fields:
            if f.required:
                out[f.encode_name] = _example(f.type)
        return out
    if isinstance(t, mi.UnionType):
        options = [o for o in t.types if not isinstance(o, mi.NoneType)]
        return _example(options[0]) if options else None
    if isinstance(t, mi.StrType):
        for candidate in _STRING_CANDIDATES:
            if t.pattern and not re.search(t.pattern, candidate):
                continue
            if (t.min_length or 0) <= len(candidate) <= (t.max_length or 10**9):
                return candidate
        raise AssertionError(f"no example string for {t}: extend _STRING_CANDIDATES")
    if isinstance(t, mi.IntType):
        low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else 0)
        return max(low, 1) if t.le is None or t.le >= 1 else low
    if isinstance(t, mi.FloatType):
        return 1.0
    if isinstance(t, mi.BoolType):
        return True
    if isinstance(t, mi.DateType):
        return "2024-01-31"
    if isinstance(t, mi.DateTimeType):
        return "2024-01-31T12:00:00Z"
    if isinstance(t, mi.LiteralType):
        return t.values[0]
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        return [_example(t.item_type)] * max(t.min_length or 0, 1)
    if isinstance(t, mi.DictType):
        return {}
    if isinstance(t, (mi.AnyType, mi.NoneType)):
        return None
    raise AssertionError(f"no example for {t}")


def example_body(body_type: type) -> dict[str, Any]:
    example = _example(msgspec.inspect.type_info(body_type))
    msgspec.convert(example, body_type)  # the example really is valid for the type
    return example


# -- the operations ------------------------------------------------------------------------


def guarded_operations(api: TestClient) -> Iterator[Operation]:
    for route_set in api.server.app[ROUTE_SETS]:
        for op in route_set.operations:
            if op.roles != ("public",):
                yield op


class Fixture:
    def __init__(self, dealer: Dealer, other: Dealer, operator_key: str, spare_key_id: str) -> None:
        self.dealer = dealer
        self.other = other
        self.operator_key = operator_key
        self.params = {"tenant": dealer.tenant_id, "source": "dealer", "ref": "C1", "chapter_id": "c01",
                       "key_id": spare_key_id}

    def url(self, op: Operation, tenant: str | None = None) -> str:
        values = dict(self.params, **({"tenant": tenant} if tenant else {}))
        path = _PATH_PARAM.sub(lambda m: values.get(m.group(1), "p1"), op.path)
        query = [f"{name}={_query_example(kind)}" for name, kind, required, _ in op.query if required]
        return path + ("?" + "&".join(query) if query else "")

    def key(self, role: str, dealer: Dealer | None = None) -> dict[str, str]:
        raw = self.operator_key if role == "operator" else (dealer or self.dealer).keys[role]
        return {"Authorization": f"Bearer {raw}"}


def _query_example(kind: str) -> str:
    return {"integer": "1", "boolean": "true", "number": "1"}.get(kind, "p1")


async def call(api: TestClient, op: Operation, url: str, headers: dict[str, str]) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": headers}
    if op.body is not None:
        kwargs["json"] = example_body(op.body)
    async with api.request(op.method, url, **kwargs) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body


async def written_state(db_url: str) -> tuple[Any, ...]:
    """What a refused call must leave alone."""
    conn = await asyncpg.connect(db_url)
    try:
        return (
            tuple(await conn.fetchrow("SELECT array_agg(position ORDER BY log_partition), array_agg(hash ORDER BY log_partition) FROM ledger.partitions")),
            await conn.fetchval("SELECT count(*) FROM ledger.events"),
            await conn.fetchval("SELECT md5(string_agg(key_id || coalesce(tenant_id, '') || role"
                                " || coalesce(revoked_at::text, ''), ',' ORDER BY key_id)) FROM ledger.api_keys"),
            await conn.fetchval("SELECT count(*) FROM ledger.subject_keys"),
            await conn.fetchval("SELECT count(*) FROM ledger.idempotency"),
        )
    finally:
        await conn.close()


@pytest.fixture
async def world(api: TestClient, dealer: Dealer, other_dealer: Dealer, operator_key: str) -> Fixture:
    # A key that only exists to be the {key_id} of the revoke route.
    r = await api.post(f"/v1/tenants/{dealer.tenant_id}/api-keys", json={"role": "sender", "label": "spare"},
                       headers=dealer.auth("admin"))
    assert r.status == 201
    return Fixture(dealer, other_dealer, operator_key, (await r.json())["key_id"])


def test_the_example_bodies_are_valid_for_every_declared_type() -> None:
    from services.api.app import default_route_sets

    bodies = [op.body for rs in default_route_sets() for op in rs.operations if op.body is not None]
    assert bodies
    for body_type in bodies:
        example_body(body_type)


async def test_every_operation_declares_known_roles(api: TestClient) -> None:
    ops = list(guarded_operations(api))
    assert len(ops) >= 20, "the ledger API has at least the tenant and subject commands"
    for op in ops:
        assert op.roles, f"{op.method} {op.path} declares no roles"
        assert set(op.roles) <= set(ROLES), f"{op.method} {op.path}: unknown role in {op.roles}"


async def test_every_operation_refuses_missing_and_bad_keys(api: TestClient, world: Fixture, db_url: str) -> None:
    # A key that existed once: issued, then revoked.
    r = await api.post(f"/v1/tenants/{world.dealer.tenant_id}/api-keys", json={"role": "admin"},
                       headers=world.dealer.auth("admin"))
    revoked = await r.json()
    r = await api.delete(f"/v1/tenants/{world.dealer.tenant_id}/api-keys/{revoked['key_id']}",
                         headers=world.dealer.auth("admin"))
    assert r.status == 204
    valid = world.dealer.keys["admin"]
    key_id, secret = valid.removeprefix("clk_").split("_", 1)
    bad_headers = {
        "no header": {},
        "empty bearer": {"Authorization": "Bearer "},
        "basic auth": {"Authorization": f"Basic {valid}"},
        "unknown key": {"Authorization": "Bearer clk_000000000000_" + "x" * 43},
        "right id, wrong secret": {"Authorization": f"Bearer clk_{key_id}_{secret[::-1]}"},
        "not a key at all": {"Authorization": "Bearer hello"},
        "revoked key": {"Authorization": f"Bearer {revoked['key']}"},
        # Bytes that are no key at all must not reach the database (asyncpg refused them: 500).
        "non-ascii key id": {"Authorization": f"Bearer clk_{key_id}\u00e9_{secret}"},
        "non-ascii secret": {"Authorization": f"Bearer clk_{key_id}_{secret}\u00e9\u20ac"},
        "upper-case key id": {"Authorization": f"Bearer clk_{key_id.upper()}X_{secret}"},
    }
    before = await written_state(db_url)
    checked = 0
    for op in guarded_operations(api):
        for label, headers in bad_headers.items():
            status, body = await call(api, op, world.url(op), headers)
            assert status == 401, f"{op.method} {op.path} with {label}: {status} {body}"
            assert body["error"] == "unauthorized" and body["message"]
            checked += 1
    assert await written_state(db_url) == before
    assert checked >= 20 * len(bad_headers)


async def test_every_operation_refuses_the_roles_it_does_not_allow(api: TestClient, world: Fixture, db_url: str) -> None:
    before = await written_state(db_url)
    refusals = 0
    for op in guarded_operations(api):
        for role in ROLES:
            if role in op.roles:
                continue
            status, body = await call(api, op, world.url(op), world.key(role))
            assert status == 403, f"{op.method} {op.path} as {role}: {status} {body}"
            assert body["error"] == "forbidden" and role in body["message"]
            refusals += 1
    assert await written_state(db_url) == before
    assert refusals > 50


async def test_every_tenant_operation_refuses_another_tenants_key(api: TestClient, world: Fixture, db_url: str) -> None:
    before = await written_state(db_url)
    refusals = 0
    for op in guarded_operations(api):
        if "{tenant}" not in op.path:
            continue
        for role in op.roles:
            if role == "operator":
                continue
            # garage-b's key of an allowed role, on garage-a's path ...
            status, body = await call(api, op, world.url(op), world.key(role, world.other))
            assert status == 403, f"{op.method} {op.path} with garage-b's {role} key: {status} {body}"
            assert body["field"] == "tenant"
            # ... and garage-a's key on garage-b's path.
            status, body = await call(api, op, world.url(op, tenant=world.other.tenant_id), world.key(role))
            assert status == 403, f"{op.method} {op.path} on garage-b with garage-a's {role} key: {status} {body}"
            refusals += 2
    assert await written_state(db_url) == before
    assert refusals > 40


async def test_an_allowed_key_of_the_right_tenant_gets_past_the_guard(api: TestClient, world: Fixture) -> None:
    """The control: the requests refused above differ from accepted ones only in the key."""
    for op in guarded_operations(api):
        role = "admin" if "admin" in op.roles else op.roles[0]
        status, body = await call(api, op, world.url(op), world.key(role))
        assert status not in (401, 403), f"{op.method} {op.path} as {role}: {status} {body}"
        # 503 is an honest "not ready yet" (e.g. a read model still catching up); anything else 5xx is a bug.
        assert status < 500 or status == 503, f"{op.method} {op.path} as {role}: {status} {body}"


async def test_a_tenant_key_never_reaches_an_unknown_tenant(api: TestClient, operator_key: str, dealer: Dealer) -> None:
    """A tenant created later is not reachable with keys issued before it existed."""
    await make_dealer(api, operator_key, "garage-c")
    r = await api.get("/v1/tenants/garage-c", headers=dealer.auth("admin"))
    assert r.status == 403
    r = await api.get("/v1/tenants/garage-c/events", headers=dealer.auth("auditor"))
    assert r.status == 403


def test_role_list_covers_the_database_check() -> None:
    """The roles the tests iterate over are exactly those the api_keys table accepts."""
    from importlib import resources

    folder = resources.files("services.ledger") / "migrations"
    # the newest migration that sets the check (0055 added "marketing")
    sql = [f.read_text() for f in sorted(folder.iterdir(), key=lambda f: f.name)
           if f.name.endswith(".sql") and "CHECK (role IN" in f.read_text() and "api_keys" in f.read_text()][-1]
    declared = set(re.findall(r"'(\w+)'", sql.split("CHECK (role IN", 1)[1].split(")", 1)[0]))
    assert declared == set(ROLES)


async def test_a_key_with_bytes_that_are_not_utf8_or_ascii_is_a_401_not_a_500(api: TestClient, world: Fixture,
                                                                            db_url: str) -> None:
    """aiohttp's client will not send these, a hand-written client will: the server decodes the
    header with surrogate escapes, and such a string once reached the database (500)."""
    key_id, secret = world.dealer.keys["admin"].removeprefix("clk_").split("_", 1)
    path = f"/v1/tenants/{world.dealer.tenant_id}".encode()
    before = await written_state(db_url)
    for raw_key in (b"clk_" + key_id.encode() + b"\xff_" + secret.encode(),
                    b"clk_" + key_id.encode() + b"_" + secret.encode() + b"\xe9",
                    b"clk_\xc3\xa9_" + secret.encode()):
        status, body = await raw_request(api.host, api.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n"
                                         b"Authorization: Bearer " + raw_key + b"\r\nConnection: close\r\n\r\n")
        assert status == 401, (raw_key, body)
        assert json_body(body)["error"] == "unauthorized"
    assert await written_state(db_url) == before
