"""Consent receipts conform to the standard they name (issue 16, item 8): every receipt
validates against Kantara's published Consent Receipt v1.1 JSON Schema (a copy in
tests/data/, its source in tests/data/README.md), with the dealer's contact details and a
public URL of the policy version it names."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pytest
from aiohttp.test_utils import TestClient

from schemas.events import ControllerContact, ControllerContactSet, PreferenceSetting
from services.audit.loading import TenantRecord
from services.audit.receipts import build_receipt, receipts_from
from services.api.portal import create_portal_app
from tests.conftest import Dealer
from tests.consent_builders import SubjectHistoryBuilder, TenantHistoryBuilder
from tests.portal_support import OPERATOR, World, make_world

SCHEMA_FILE = Path(__file__).parent / "data" / "kantara-consent-receipt-v1_1-schema.json"
CONTACT = ControllerContact(contact="Privacy desk", street="Stationsweg 1", postcode="1234 AB", city="Utrecht",
                            email="privacy@garage.example.nl", phone="+31 30 123 4567",
                            url="https://garage.example.nl")


def kantara_schema() -> dict[str, Any]:
    """The published file starts with '//' comment lines (not JSON): those are dropped."""
    text = "\n".join(line for line in SCHEMA_FILE.read_text().splitlines() if not line.strip().startswith("//"))
    return json.loads(text)


VALIDATOR = jsonschema_rs.Draft4Validator(kantara_schema())


def errors(receipt: Any) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(msgspec.to_builtins(receipt))]


def tenant_with_contact() -> TenantHistoryBuilder:
    tenant = TenantHistoryBuilder("acme", name="Autobedrijf Acme", created_at="2024-01-01")
    tenant._append(ControllerContactSet(details=CONTACT), at="2024-01-02")
    return tenant


def receipts(tenant: TenantHistoryBuilder) -> list[Any]:
    version = tenant.state().policy_version
    subject = (SubjectHistoryBuilder("acme", "dealer", "C7", start="2024-02-01").invoice("2024-02-01")
               .preferences({"newsletter:email": "opt_in", "sales_campaign:sms": "opt_out"}, policy_version=version)
               .object().withdraw_objection()
               .opt_out("newsletter", "post", given_on="2024-02-01"))
    return receipts_from(subject.events, TenantRecord(tenant.events), public_base="https://portal.example.nl")


def test_the_copy_of_the_schema_is_the_kantara_v1_1_schema_with_its_required_fields() -> None:
    schema = kantara_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    assert schema["required"] == ["version", "jurisdiction", "consentTimestamp", "collectionMethod",
                                  "consentReceiptID", "piiPrincipalId", "piiControllers", "services", "policyUrl",
                                  "sensitive", "spiCat"]


@pytest.mark.parametrize("with_contact", [True, False])
def test_every_kind_of_receipt_validates_against_the_published_schema(with_contact: bool) -> None:
    tenant = tenant_with_contact() if with_contact else TenantHistoryBuilder("acme", created_at="2024-01-01")
    made = receipts(tenant)
    assert [r.event_type for r in made] == ["PreferencesChanged", "ObjectionRecorded", "ObjectionWithdrawn",
                                            "PreferencesChanged"]
    for receipt in made:
        assert errors(receipt) == []


def test_every_required_field_has_the_type_the_spec_gives_it() -> None:
    receipt = msgspec.to_builtins(receipts(tenant_with_contact())[0])
    assert receipt["version"] == "KI-CR-v1.1.0" and receipt["jurisdiction"] == "NL"
    assert isinstance(receipt["consentTimestamp"], int) and receipt["consentTimestamp"] >= 0
    assert receipt["consentTimestamp"] == int(dt.datetime.fromisoformat(receipt["consentTime"]).timestamp())
    assert receipt["collectionMethod"] == "portal"
    assert receipt["consentReceiptID"].startswith("cr-") and receipt["piiPrincipalId"] == "acme/dealer/C7"
    [controller] = receipt["piiControllers"]
    assert controller["piiController"] == "Autobedrijf Acme" and controller["contact"] == "Privacy desk"
    assert controller["address"] == {"streetAddress": "Stationsweg 1", "postalCode": "1234 AB",
                                     "addressLocality": "Utrecht", "addressCountry": "NL"}
    assert (controller["email"], controller["phone"]) == ("privacy@garage.example.nl", "+31 30 123 4567")
    assert controller["piiControllerUrl"] == "https://garage.example.nl"
    assert receipt["policyUrl"] == f"https://portal.example.nl/policy/acme/{receipt['policyVersion']}"
    assert receipt["sensitive"] is False and receipt["spiCat"] == []
    [service] = receipt["services"]
    assert isinstance(service["service"], str)
    for purpose in service["purposes"]:
        assert isinstance(purpose["consentType"], str) and isinstance(purpose["termination"], str)
        assert all(isinstance(x, str) for x in purpose["purposeCategory"] + purpose["piiCategory"])
        assert purpose["purposeCategory"] and purpose["piiCategory"]
        assert purpose["thirdPartyDisclosure"] is False


@pytest.mark.parametrize("field", ["version", "jurisdiction", "consentTimestamp", "collectionMethod",
                                   "consentReceiptID", "piiPrincipalId", "piiControllers", "services", "policyUrl",
                                   "sensitive", "spiCat"])
def test_the_validation_fails_on_a_receipt_without_a_required_field(field: str) -> None:
    """The check can fail: the same receipt without one required field is refused."""
    receipt = msgspec.to_builtins(receipts(tenant_with_contact())[0])
    del receipt[field]
    assert not VALIDATOR.is_valid(receipt)


def test_the_old_snake_case_shape_fails_the_schema() -> None:
    old = {"version": "KI-CR-v1.1.0", "jurisdiction": "NL", "consent_timestamp": "2024-01-01T00:00:00Z",
           "pii_controller": {"name": "x"}, "purposes": []}
    assert not VALIDATOR.is_valid(old)


def test_a_receipt_says_policy_shown_or_policy_in_force_and_the_day_given() -> None:
    made = receipts(tenant_with_contact())
    assert [(r.policy_version_basis, r.policy_version_label) for r in made] == [
        ("shown", "policy shown"), ("in_force", "policy in force"), ("in_force", "policy in force"),
        ("in_force", "policy in force")]
    assert made[-1].given_on == dt.date(2024, 2, 1) and made[-1].evidence_ref == "form-1"


def test_the_receipt_names_the_controller_as_it_stood_when_the_change_was_recorded() -> None:
    tenant = TenantHistoryBuilder("acme", name="Autobedrijf Acme", created_at="2024-01-01")
    subject = SubjectHistoryBuilder("acme", "dealer", "C7", start="2024-02-01").opt_in("newsletter", "email")
    tenant._append(ControllerContactSet(details=CONTACT), at="2024-03-01")
    receipt = build_receipt(subject.events[0], TenantRecord(tenant.events).state_at(subject.events[0].recorded_at))
    assert receipt.pii_controllers[0].email == ""  # not set yet then
    assert errors(receipt) == []


async def test_receipts_over_http_conform_and_their_policy_url_opens_that_exact_text_in_the_portal(
        api: TestClient, dealer: Dealer, aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    r = await api.put("/v1/tenants/garage-a/controller-contact", json={"details": msgspec.to_builtins(CONTACT)},
                      headers=dealer.auth())
    assert r.status == 200, await r.text()
    r = await api.post("/v1/tenants/garage-a/subjects/dealer/C1/preferences", headers=dealer.auth("staff"),
                       json={"changes": [{"category": "newsletter", "channel": "email", "value": "opt_in"}]})
    assert r.status == 201, await r.text()
    r = await api.get("/v1/tenants/garage-a/audit/subjects/dealer/C1/receipts", headers=dealer.auth("auditor"))
    [receipt] = (await r.json())["receipts"]
    assert [e.message for e in VALIDATOR.iter_errors(receipt)] == []
    assert receipt["piiControllers"][0]["email"] == "privacy@garage.example.nl"
    base = settings.portal_base_url
    assert receipt["policyUrl"].startswith(base + "/policy/garage-a/")
    portal = await aiohttp_client(create_portal_app(settings))
    page = await portal.get(receipt["policyUrl"].removeprefix(base))
    assert page.status == 200
    html = await page.text()
    assert receipt["policyVersion"] in html and "Autobedrijf garage-a" in html
    assert (await portal.get("/policy/garage-a/pv-never")).status == 404
    assert (await portal.get("/policy/garage-zz/" + receipt["policyVersion"])).status == 404


async def test_a_controller_contact_with_a_bad_e_mail_is_refused_naming_the_field(api: TestClient,
                                                                                  dealer: Dealer) -> None:
    body = {"details": {**msgspec.to_builtins(CONTACT), "email": "not-an-address"}}
    r = await api.put("/v1/tenants/garage-a/controller-contact", json=body, headers=dealer.auth())
    assert r.status == 422 and (await r.json())["field"] == "$.details.email"


async def test_the_portal_receipt_download_conforms_too(settings, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    world: World = await make_world(aiohttp_client, settings)
    await world.ledger.set_controller_contact(OPERATOR, "garage-a", CONTACT)
    result = await world.ledger.change_preferences(
        OPERATOR, "garage-a", "dealer", "K1", [PreferenceSetting(category="newsletter", channel="email",
                                                                 value="opt_out")])
    r = await world.client.get(world.url("garage-a/dealer/K1") + "/receipt/" + result.event_ids[0])
    assert r.status == 200
    assert [e.message for e in VALIDATOR.iter_errors(await r.json())] == []
