"""Signed, unguessable tokens for links in mails: one-click unsubscribe and the double
opt-in confirmation.

A token is AES-256-GCM over a small JSON payload, under a key derived from the master key
per tenant and per kind (HKDF-SHA256), base64url without padding. So it is:

* unforgeable and unguessable (the GCM tag; 128 bits), and opaque (it names no customer);
* bound to its tenant (the URL carries the tenant id; another tenant's key cannot open it)
  and to its kind (an unsubscribe token is no confirmation token);
* independent of the portal link: rotating or revoking a link leaves it working;
* dead once the subject is erased: every use checks the subject's stream, and an erased
  stream is closed (the handlers answer with the neutral page).

Unsubscribe tokens are deterministic (the nonce is an HMAC of the payload): the same
subject and cell always get the same URL, so an eligibility answer or topic message does
not change for nothing. Confirmation tokens carry their expiry date.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from typing import Final, Literal

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from consent.eligibility import Decision
from consent.tenant import TenantState
from consent.terms import cell_key
from schemas.vocabulary import CATEGORIES
from schemas.eligibility import Disclosure, Unsubscribe, UnsubscribeLinks

Kind = Literal["unsubscribe", "confirm"]
ALL: Final = "all"
ONE_CLICK_BODY: Final = "List-Unsubscribe=One-Click"
CONFIRM_VALID_DAYS: Final = 14
_INFO: Final = b"consent-ledger mail token v1:"


class UnsubscribeToken(msgspec.Struct, frozen=True, array_like=True):
    source: str
    customer_ref: str
    category: str  # a category, or "all" (every marketing message: an objection)
    channel: str  # a channel, or "all"


class ConfirmToken(msgspec.Struct, frozen=True, array_like=True):
    source: str
    customer_ref: str
    preference_event_id: str
    mail_id: str
    expires_on: dt.date


_enc: Final = msgspec.json.Encoder()
_dec_unsub: Final = msgspec.json.Decoder(UnsubscribeToken)
_dec_confirm: Final = msgspec.json.Decoder(ConfirmToken)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes | None:
    if not text or len(text) > 600 or not all(c.isalnum() or c in "-_" for c in text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


class MailTokens:
    def __init__(self, master_key: bytes) -> None:
        self._master = master_key
        self._keys: dict[tuple[str, str], bytes] = {}

    def _key(self, kind: str, tenant_id: str) -> bytes:
        key = self._keys.get((kind, tenant_id))
        if key is None:
            key = self._keys[(kind, tenant_id)] = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None,
                info=_INFO + kind.encode() + b":" + tenant_id.encode()).derive(self._master)
        return key

    def _seal(self, kind: str, tenant_id: str, payload: bytes, *, deterministic: bool) -> str:
        key = self._key(kind, tenant_id)
        if deterministic:
            nonce = hmac.new(key, payload, hashlib.sha256).digest()[:12]
        else:
            import os

            nonce = os.urandom(12)
        return _b64(nonce + AESGCM(key).encrypt(nonce, payload, kind.encode()))

    def _open(self, kind: str, tenant_id: str, token: str) -> bytes | None:
        raw = _unb64(token)
        if raw is None or len(raw) < 12 + 16 + 2:
            return None
        try:
            return AESGCM(self._key(kind, tenant_id)).decrypt(raw[:12], raw[12:], kind.encode())
        except InvalidTag:
            return None

    def unsubscribe(self, tenant_id: str, source: str, ref: str, category: str = ALL, channel: str = ALL) -> str:
        return self._seal("unsubscribe", tenant_id, _enc.encode(UnsubscribeToken(source, ref, category, channel)),
                          deterministic=True)

    def open_unsubscribe(self, tenant_id: str, token: str) -> UnsubscribeToken | None:
        plain = self._open("unsubscribe", tenant_id, token)
        if plain is None:
            return None
        try:
            return _dec_unsub.decode(plain)
        except msgspec.DecodeError:
            return None

    def confirm(self, tenant_id: str, source: str, ref: str, preference_event_id: str, mail_id: str,
                today: dt.date) -> str:
        payload = ConfirmToken(source, ref, preference_event_id, mail_id, today + dt.timedelta(days=CONFIRM_VALID_DAYS))
        return self._seal("confirm", tenant_id, _enc.encode(payload), deterministic=False)

    def open_confirm(self, tenant_id: str, token: str, today: dt.date) -> ConfirmToken | None:
        """The token's content, or None if forged, of another tenant, or expired."""
        plain = self._open("confirm", tenant_id, token)
        if plain is None:
            return None
        try:
            opened = _dec_confirm.decode(plain)
        except msgspec.DecodeError:
            return None
        return opened if today <= opened.expires_on else None


def unsubscribe_url(base_url: str, tenant_id: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/u/{tenant_id}/{token}"


def confirm_url(base_url: str, tenant_id: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/bevestig/{tenant_id}/{token}"


def unsubscribe_for(tokens: MailTokens, base_url: str, tenant_id: str, source: str, ref: str,
                    category: str = ALL, channel: str = ALL) -> Unsubscribe:
    url = unsubscribe_url(base_url, tenant_id, tokens.unsubscribe(tenant_id, source, ref, category, channel))
    return Unsubscribe(url=url, list_unsubscribe=f"<{url}>", list_unsubscribe_post=ONE_CLICK_BODY)


def unsubscribe_links(tokens: MailTokens, base_url: str, tenant_id: str, source: str, ref: str,
                      decisions: Mapping[str, Decision]) -> UnsubscribeLinks | None:
    """The links for every category whose e-mail cell is eligible (None when none is)."""
    email = {category: unsubscribe_for(tokens, base_url, tenant_id, source, ref, category, "email")
             for category in CATEGORIES if decisions[cell_key(category, "email")].eligible}
    if not email:
        return None
    return UnsubscribeLinks(all=unsubscribe_for(tokens, base_url, tenant_id, source, ref), email=email)  # type: ignore[arg-type]


def disclosure_of(tenant: TenantState) -> Disclosure:
    """The tenant's prospect disclosure text, with the dealer's name filled in."""
    return Disclosure(text=tenant.disclosure.replace("{dealer}", tenant.name), version=tenant.disclosure_version)


class AnswerLinks:
    """What eligibility answers carry for a sender: unsubscribe links (signed with the
    master key) and the prospect disclosure text. Made once per process."""

    def __init__(self, master_key: bytes, base_url: str) -> None:
        self.tokens = MailTokens(master_key)
        self.base_url = base_url

    def matrix(self, tenant_id: str, source: str, ref: str, decisions: Mapping[str, Decision]) -> UnsubscribeLinks | None:
        return unsubscribe_links(self.tokens, self.base_url, tenant_id, source, ref, decisions)

    def cell(self, tenant_id: str, source: str, ref: str, category: str) -> Unsubscribe:
        return unsubscribe_for(self.tokens, self.base_url, tenant_id, source, ref, category, "email")
