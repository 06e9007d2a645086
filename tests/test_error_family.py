"""One error family (services/errors.py): every error the services raise on purpose derives
from LedgerError and carries its own answer, and the API turns any of them into its JSON
ErrorBody in one place, the composition root's error middleware (docs/layering.md)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from aiohttp import web
from aiohttp.test_utils import TestClient

import services
from services.api.app import create_app
from services.audit.errors import AuditError
from services.errors import LedgerError, Refused
from services.ledger.api.context import Call
from services.ledger.api.jsonapi import ApiError, ApiRoutes
from services.ledger.changes import UnknownCursor
from services.ledger.commands import CommandRejected
from services.ledger.errors import StoreUnavailable, StreamClosed, WrongExpectedVersion
from services.settings import Settings

# Raised and caught inside one component, never an answer to anyone: outside the family on
# purpose (each class says why in its docstring or comment).
INTERNAL_SIGNALS = {
    "services.projector.projection._NewSubjectTaken",
    "services.ledger.verify._Misplaced",
    "services.ledger.api.jsonapi._DuplicateKey",
    "services.ledger.relay.BrokerLostData",
    "services.ledger.relay.TopicMissing",
    "services.importer.pipeline._Aborted",
    "services.projector.reach.TenantNotProjected",
    "services.serving._Stop",
}


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(services.__path__, "services."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                found.append(cls)
    return found


def test_every_error_class_of_the_services_derives_from_the_project_base_error() -> None:
    classes = _exception_classes()
    assert len(classes) > 25
    outside = {f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, LedgerError)}
    assert outside == INTERNAL_SIGNALS


def test_the_three_refusals_share_one_shape() -> None:
    for cls in (ApiError, CommandRejected, AuditError):
        exc = cls(404, "unknown_subject", "the ledger holds nothing about this subject", "ref")
        assert isinstance(exc, Refused) and isinstance(exc, LedgerError)
        assert (exc.status, exc.error, exc.message, exc.field) == (
            404, "unknown_subject", "the ledger holds nothing about this subject", "ref")


_raise = ApiRoutes(tag="test")


@_raise.get("/v1/test/raise/{kind}", summary="Raises the error named by kind", roles=("public",))
async def raise_one(call: Call) -> web.Response:
    errors: dict[str, LedgerError] = {
        "audit": AuditError(404, "unknown_tenant", "tenant 'x' does not exist", "tenant"),
        "command": CommandRejected(410, "subject_erased", "erased", field="ref"),
        "cursor": UnknownCursor("99"),
        "version": WrongExpectedVersion("subject/a/b/c", 2, 5),
        "database": StoreUnavailable("connection refused by 10.0.0.7:5432"),
        "closed": StreamClosed("subject/a/b/c", "SubjectErased"),
    }
    raise errors[call.param("kind")]


async def test_an_error_of_the_family_raised_in_a_route_is_answered_as_json_by_the_middleware(
        aiohttp_client, settings: Settings) -> None:
    client: TestClient = await aiohttp_client(create_app(settings, route_sets=[_raise]))

    async def answer(kind: str) -> tuple[int, dict, web.Response]:
        r = await client.get(f"/v1/test/raise/{kind}")
        assert r.content_type == "application/json"
        return r.status, await r.json(), r

    status, body, _ = await answer("audit")
    assert status == 404 and body == {"error": "unknown_tenant", "message": "tenant 'x' does not exist",
                                      "field": "tenant"}
    status, body, _ = await answer("command")
    assert status == 410 and body["error"] == "subject_erased" and body["field"] == "ref"
    status, body, _ = await answer("cursor")
    assert status == 422 and body == {"error": "unknown_cursor", "field": "after",
                                      "message": "this cursor was not given by this ledger (it is past its end)"}
    status, body, _ = await answer("version")
    assert status == 409 and body["error"] == "wrong_expected_version" and body["current_version"] == 5
    status, body, r = await answer("database")
    assert status == 503 and r.headers["Retry-After"] == "1"
    assert body["message"] == "the ledger database is unavailable; retry later" and "10.0.0.7" not in str(body)
    # an error of the family without an answer of its own reaching a route is a bug: a 500
    # that says nothing of the internals
    status, body, _ = await answer("closed")
    assert status == 500 and body["error"] == "internal_error" and "SubjectErased" not in str(body)
