"""The mailing export: for a campaign (category, channel, send date), every subject that
may get it, with what a mailing house needs (name and address for post, e-mail for
e-mail, phone for phone and SMS) and what it must do with each message (the decision's
``requires_*`` flags).

Who is eligible comes from the projector's read model evaluated with the bulk check's own
call (:meth:`ReachCache.campaign`); contact data from the contact directory
(:mod:`services.ledger.directory`), decrypted per subject. A subject without the contact
field its channel needs cannot be reached and is left out (counted in ``missing_contact``).
An e-mail list has ``unsubscribe_url``: the subject's signed one-click link for this
category (RFC 8058; the mail's ``List-Unsubscribe`` header is ``<unsubscribe_url>`` and
``List-Unsubscribe-Post`` is ``List-Unsubscribe=One-Click``), the same link the eligibility
answers carry (:mod:`services.mail.tokens`).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Final

import msgspec

from consent.eligibility import Decision
from services.ledger.directory import Directory
from services.mail.tokens import AnswerLinks
from services.projector.reach import ReachCache

REQUIRES: Final = tuple(f for f in Decision.__struct_fields__ if f.startswith("requires_"))
"""Every ``requires_*`` flag the eligibility rule answers with (more come with the dated law rules)."""

CONTACT_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "post": ("name", "street", "postcode", "city", "country"),
    "email": ("name", "email"),
    "sms": ("name", "phone"),
    "phone": ("name", "phone"),
    "app": ("name",),
}
NEEDED: Final[dict[str, tuple[str, ...]]] = {
    "post": ("street", "postcode"), "email": ("email",), "sms": ("phone",), "phone": ("phone",), "app": (),
}


class MailingList(msgspec.Struct, frozen=True, kw_only=True):
    eligible: int
    missing_contact: int
    header: list[str]
    rows: list[list[str]]

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, delimiter=";", lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return out.getvalue()


async def mailing_list(reach: ReachCache, directory: Directory, links: AnswerLinks, tenant_id: str, category: str,
                       channel: str, send_date: dt.date, *, source: str | None = None) -> MailingList:
    eligible = await reach.campaign(tenant_id, category, channel, send_date, source=source)
    contacts = await directory.contacts_of_tenant(tenant_id, [(s, r) for s, r, _ in eligible])
    fields = CONTACT_COLUMNS[channel]
    needed = NEEDED[channel]
    email = channel == "email"
    header = ["customer_ref", "source", *fields, "basis", "until", *REQUIRES, *(["unsubscribe_url"] if email else [])]
    rows: list[list[str]] = []
    missing = 0
    for src, ref, decision in eligible:
        contact = contacts.get((src, ref))
        values = [(getattr(contact, f, None) or "") if contact is not None else "" for f in fields]
        if any(not (getattr(contact, f, None) if contact is not None else None) for f in needed):
            missing += 1
            continue
        row = [ref, src, *values, decision.basis or "", decision.until.isoformat() if decision.until else "",
               *("true" if getattr(decision, f) else "false" for f in REQUIRES)]
        if email:
            row.append(links.cell(tenant_id, src, ref, category).url)
        rows.append(row)
    return MailingList(eligible=len(eligible), missing_contact=missing, header=header, rows=rows)
