"""Tenant commands: create, API keys, processor agreement, module, policy, term matrix."""

from __future__ import annotations

import msgspec
from aiohttp import web

from consent.policy import policy_version
from schemas import api as s
from schemas.events import ControllerContact
from services.ledger.api.context import POOL, Call
from services.ledger.api.jsonapi import ApiError, ApiRoutes, json_response
from services.ledger.api_keys import issue_key
from services.ledger.commands import CommandRejected
from services.ledger.errors import WrongExpectedVersion

routes = ApiRoutes(tag="tenants")
ADMIN = ("admin",)


class ChapterView(msgspec.Struct, frozen=True):
    chapter_id: str
    title: str
    body: str
    active: bool


class TermView(msgspec.Struct, frozen=True):
    category: str
    channel: str
    months: int


class TenantView(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    name: str
    version: int
    data_sources: dict[str, str]
    processor_agreement_signed: bool
    processor_agreement_signed_on: str | None
    module_active: bool
    policy_version: str
    chapters: list[ChapterView]
    terms: list[TermView]
    controller: ControllerContact | None = None


class ChapterAdded(msgspec.Struct, frozen=True, kw_only=True):
    chapter_id: str
    result: s.AppendResponse


@routes.post("/v1/tenants", summary="Create a tenant with the seed's policy and term matrix; returns its first admin key",
             roles=("operator",), body=s.CreateTenant, responses={201: s.TenantCreatedResponse})
async def create_tenant(call: Call) -> web.Response:
    """Creates a dealer with the seed's ten policy chapters, its term matrix and the data
    sources `dealer` and `unknown`, and returns the tenant's first admin key (shown once).
    409 `tenant_exists` if the id is taken."""
    body: s.CreateTenant = call.body
    try:
        result = await call.ledger.create_tenant(call.ctx(), body.tenant_id, body.name)
    except WrongExpectedVersion:
        raise ApiError(409, "tenant_exists", f"tenant {body.tenant_id!r} already exists", field="$.tenant_id") from None
    key = await issue_key(call.request.app[POOL], body.tenant_id, "admin", "first admin key")
    return json_response(s.TenantCreatedResponse(tenant_id=body.tenant_id, admin_key=key,
                                                 position=result.last_position, partition=result.partition),
                         status=201)


@routes.get("/v1/tenants/{tenant}", summary="The tenant's current settings, policy and term matrix",
            roles=("admin", "staff", "auditor"), responses={200: TenantView})
async def get_tenant(call: Call) -> web.Response:
    """The dealer's settings as they stand: data sources, processor agreement, module
    switch, the policy chapters with the current policy version id, the 25-cell term matrix
    and the controller contact details."""
    version, state = await call.ledger.require_tenant(call.param("tenant"), fresh=True)
    return json_response(TenantView(
        tenant_id=state.tenant_id, name=state.name, version=version, data_sources=dict(state.data_sources),
        processor_agreement_signed=state.processor_agreement_signed,
        processor_agreement_signed_on=state.processor_agreement_signed_on.isoformat()
        if state.processor_agreement_signed_on else None,
        module_active=state.module_active,
        policy_version=policy_version(state.chapters),
        chapters=[ChapterView(c.chapter_id, c.title, c.body, c.active) for c in state.chapters],
        terms=[TermView(c.category, c.channel, c.months) for c in state.terms.cells()],
        controller=state.controller,
    ))


@routes.post("/v1/tenants/{tenant}/api-keys", summary="Issue an API key for this tenant (shown once)",
             roles=ADMIN, body=s.IssueApiKey, responses={201: s.ApiKeyIssued})
async def issue_api_key(call: Call) -> web.Response:
    """A new key for a machine or person of this dealer, with one role. The key is in the
    answer once; only its hash is stored."""
    tenant = call.param("tenant")
    await call.ledger.require_tenant(tenant)
    key = await issue_key(call.request.app[POOL], tenant, call.body.role, call.body.label)
    return json_response(key, status=201)


@routes.delete("/v1/tenants/{tenant}/api-keys/{key_id}", summary="Revoke an API key", roles=ADMIN,
               responses={204: None})
async def revoke_api_key(call: Call) -> web.Response:
    """The key stops working at once. 404 if the tenant has no such active key."""
    from services.ledger.api.context import KEYRING

    if not await call.request.app[KEYRING].revoke(call.param("key_id"), call.param("tenant")):
        raise ApiError(404, "not_found", "no such active key for this tenant", field="key_id")
    return web.Response(status=204)


@routes.put("/v1/tenants/{tenant}/processor-agreement", summary="Verwerkersovereenkomst signed yes/no",
            roles=ADMIN, body=s.SetProcessorAgreement, responses={200: s.AppendResponse})
async def set_processor_agreement(call: Call) -> web.Response:
    """Records whether the processor agreement (verwerkersovereenkomst) is signed, and on
    which day (required when signed, not in the future)."""
    b: s.SetProcessorAgreement = call.body
    return json_response(await call.ledger.set_processor_agreement(
        call.ctx(), call.param("tenant"), b.signed, b.signed_on, b.expected_version))


@routes.put("/v1/tenants/{tenant}/modules/mijngegevensbescherming", summary="Activate or deactivate the module",
            roles=ADMIN, body=s.SetModuleActivation, responses={200: s.AppendResponse})
async def set_module(call: Call) -> web.Response:
    """Switches the mijngegevensbescherming module (the customer's privacy portal) on or
    off."""
    return json_response(await call.ledger.set_module(call.ctx(), call.param("tenant"), call.body.active,
                                                      call.body.expected_version))


@routes.post("/v1/tenants/{tenant}/data-sources", summary="Add a data source (databron)",
             roles=ADMIN, body=s.AddDataSource, responses={201: s.AppendResponse})
async def add_data_source(call: Call) -> web.Response:
    """Adds a data source (databron): settings and subjects are kept per source. 409 if the
    id exists."""
    return json_response(await call.ledger.add_data_source(call.ctx(), call.param("tenant"), call.body.source_id,
                                                           call.body.label), status=201)


@routes.post("/v1/tenants/{tenant}/policy/chapters", summary="Add a policy chapter at the end (Nieuw hoofdstuk)",
             roles=ADMIN, body=s.AddChapter, responses={201: ChapterAdded})
async def add_chapter(call: Call) -> web.Response:
    """Appends a chapter to the privacy policy; the policy version id changes when an active
    chapter is added. Returns the new chapter's id."""
    b: s.AddChapter = call.body
    chapter_id, result = await call.ledger.add_chapter(call.ctx(), call.param("tenant"), b.title, b.body, b.active,
                                                       b.expected_version)
    return json_response({"chapter_id": chapter_id, "result": result}, status=201)


@routes.put("/v1/tenants/{tenant}/policy/chapters/{chapter_id}", summary="Edit a chapter (Bewerken)",
            roles=ADMIN, body=s.EditChapter, responses={200: s.AppendResponse})
async def edit_chapter(call: Call) -> web.Response:
    """Replaces a chapter's title, body (HTML, sanitised) and active flag. 404
    `unknown_chapter`."""
    b: s.EditChapter = call.body
    return json_response(await call.ledger.edit_chapter(call.ctx(), call.param("tenant"), call.param("chapter_id"),
                                                        b.title, b.body, b.active, b.expected_version))


@routes.put("/v1/tenants/{tenant}/policy/chapters/{chapter_id}/active", summary="Show or hide a chapter (Actief)",
            roles=ADMIN, body=s.SetChapterActive, responses={200: s.AppendResponse})
async def set_chapter_active(call: Call) -> web.Response:
    """Shows or hides a chapter in the customer's portal (the policy version changes)."""
    return json_response(await call.ledger.set_chapter_active(
        call.ctx(), call.param("tenant"), call.param("chapter_id"), call.body.active, call.body.expected_version))


@routes.post("/v1/tenants/{tenant}/policy/chapters/{chapter_id}/move", summary="Move a chapter (Up/Down)",
             roles=ADMIN, body=s.MoveChapter, responses={200: s.AppendResponse})
async def move_chapter(call: Call) -> web.Response:
    """Moves a chapter one step (`direction`) or to a place (`to_index`)."""
    b: s.MoveChapter = call.body
    return json_response(await call.ledger.move_chapter(
        call.ctx(), call.param("tenant"), call.param("chapter_id"), direction=b.direction, to_index=b.to_index,
        expected=b.expected_version))


@routes.delete("/v1/tenants/{tenant}/policy/chapters/{chapter_id}", summary="Delete a chapter (Verwijder)",
               roles=ADMIN, responses={200: s.AppendResponse})
async def delete_chapter(call: Call) -> web.Response:
    """Deletes a chapter from the policy. Versions that showed it stay readable in the
    audit."""
    return json_response(await call.ledger.delete_chapter(call.ctx(), call.param("tenant"), call.param("chapter_id")))


@routes.patch("/v1/tenants/{tenant}/terms", summary="Edit cells of the opt-in term matrix (months, 0..120)",
              roles=ADMIN, body=s.EditTerms, responses={200: s.AppendResponse})
async def edit_terms(call: Call) -> web.Response:
    """Changes cells of the opt-in term matrix (0-120 months). Applies to every evaluation
    from the moment it is recorded; the projector re-evaluates the tenant's subjects and
    publishes changed matrices."""
    return json_response(await call.ledger.edit_terms(call.ctx(), call.param("tenant"), call.body.cells,
                                                      call.body.expected_version))


@routes.put("/v1/tenants/{tenant}/controller-contact", summary="The dealer's contact details as data controller",
            roles=ADMIN, body=s.SetControllerContact, responses={200: s.AppendResponse})
async def set_controller_contact(call: Call) -> web.Response:
    """Contact point, address, e-mail, phone and web site of the dealer as data controller
    (GDPR art. 13(1)(a)). Every consent receipt names them (Kantara CR v1.1
    ``piiControllers``); a receipt of a change recorded before they were set names the
    dealer only, with empty contact fields."""
    return json_response(await call.ledger.set_controller_contact(call.ctx(), call.param("tenant"), call.body.details,
                                                                  call.body.expected_version))


@routes.put("/v1/tenants/{tenant}/retention", summary="Retention: years after last invoice, months for prospects",
            roles=ADMIN, body=s.SetRetention, responses={200: s.AppendResponse})
async def set_retention(call: Call) -> web.Response:
    """How long personal data is kept: years after a customer's last invoice, months after a
    prospect's last marketing activity. The daily retention job erases by these."""
    return json_response(await call.ledger.set_retention(call.ctx(), call.param("tenant"), call.body.customer_years,
                                                         call.body.prospect_months))


__all__ = ["routes", "CommandRejected"]
