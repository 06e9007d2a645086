"""Mails as the dealer sends them: Dutch (or English) text and HTML from templates, the
dealer's name and contact details, and headers that cannot be injected into.

Everything that becomes a header (the dealer's name, addresses, the subject line) is
checked for line breaks and other control characters: such a value is refused
(:class:`MailRefused`), never cleaned up silently, so a crafted name can never add a
``Bcc:`` line. The Python ``email`` package's default policy would refuse them too; this
check names the field.
"""

from __future__ import annotations

import email.utils
import functools
import quopri
import uuid
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any, Final

import jinja2
import msgspec

from consent.tenant import TenantState
from services.errors import LedgerError

ONE_CLICK: Final = "List-Unsubscribe=One-Click"


class MailRefused(LedgerError, ValueError):
    """A mail that must not be sent as asked: ``field`` names the value at fault."""

    status = 422
    error = "validation_error"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class OutgoingMail(msgspec.Struct, frozen=True, kw_only=True):
    """One mail, before sealing. ``headers``: extra headers such as List-Unsubscribe."""

    to: str
    from_name: str
    subject: str
    text: str
    html: str
    headers: dict[str, str] = {}


def check_header(field: str, value: str) -> str:
    if not value or not value.isprintable():
        raise MailRefused(field, "empty, or holds a line break or another control character")
    return value


def check_address(field: str, value: str) -> str:
    """A bare address (name@domain); anything that could smuggle a header or a second
    recipient is refused."""
    check_header(field, value)
    local, at, domain = value.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() or c in '<>,;"()[]\\' for c in value):
        raise MailRefused(field, "not a single e-mail address (name@domain)")
    return value


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("services.mail", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


SUBJECTS: Final = {
    ("portal_link", "nl"): "Uw persoonlijke link naar het Privacy Portaal van {dealer}",
    ("portal_link", "en"): "Your personal link to the privacy portal of {dealer}",
    ("opt_in_confirmation", "nl"): "Bevestig uw aanmelding voor e-mail van {dealer}",
    ("opt_in_confirmation", "en"): "Please confirm e-mail from {dealer}",
}


def compose(kind: str, tenant: TenantState, to: str, lang: str = "nl", **context: Any) -> OutgoingMail:
    """The mail of ``kind`` (templates ``{kind}.{lang}.txt`` / ``.html``) for ``tenant``."""
    check_address("to", to)
    dealer = check_header("tenant.name", tenant.name)
    env = _environment()
    values = {"dealer": dealer, "contact": tenant.contact, **context}
    text = env.get_template(f"{kind}.{lang}.txt").render(**values)
    html = env.get_template(f"{kind}.{lang}.html").render(**values)
    return OutgoingMail(to=to, from_name=dealer, subject=SUBJECTS[(kind, lang)].format(dealer=dealer), text=text,
                        html=html)


def to_bytes(mail: OutgoingMail, from_address: str, message_id: str) -> bytes:
    """The RFC 5322 message as sent: multipart/alternative (text, then HTML), UTF-8 bodies
    quoted-printable, non-ASCII headers RFC 2047-encoded, CRLF line ends. Written out directly rather
    than through :class:`email.message.EmailMessage`, whose header objects cost about 1 ms
    per mail (most of a bulk mailing's CPU); :func:`to_message` gives the same message as an
    object (the tests parse what the SMTP server received either way)."""
    check_address("from", from_address)
    check_address("to", mail.to)
    name = check_header("from_name", mail.from_name)
    subject = check_header("subject", mail.subject)
    boundary = "=_" + uuid.uuid4().hex
    lines = [
        "From: " + email.utils.formataddr((name, from_address), charset="utf-8"),
        "To: " + mail.to,
        "Subject: " + (subject if subject.isascii() and len(subject) < 900 else Header(subject, "utf-8").encode()),
        "Date: " + email.utils.formatdate(localtime=False),
        "Message-ID: " + check_header("message_id", message_id),
        "MIME-Version: 1.0",
    ]
    for header, value in mail.headers.items():
        check_header("header", header)
        lines.append(f"{header}: {check_header(header, value)}")
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    out = "\r\n".join(lines) + "\r\n\r\n"
    for subtype, body in (("plain", mail.text), ("html", mail.html)):
        # quoted-printable: the mail stays readable as text (var/mail/*.eml under `make run`)
        encoded = quopri.encodestring(body.replace("\r\n", "\n").encode("utf-8")).decode("ascii")
        encoded = encoded.replace("\n", "\r\n") + "\r\n"  # this CRLF belongs to the boundary (RFC 2046)
        out += (f"--{boundary}\r\nContent-Type: text/{subtype}; charset=\"utf-8\"\r\n"
                f"Content-Transfer-Encoding: quoted-printable\r\n\r\n{encoded}")
    out += f"--{boundary}--\r\n"
    return out.encode("ascii")


def to_message(mail: OutgoingMail, from_address: str, message_id: str) -> EmailMessage:
    """The RFC 5322 message (multipart/alternative: text, then HTML)."""
    check_address("from", from_address)
    check_address("to", mail.to)
    msg = EmailMessage()
    local, _, domain = from_address.partition("@")
    msg["From"] = Address(display_name=check_header("from_name", mail.from_name), username=local, domain=domain)
    local, _, domain = mail.to.partition("@")
    msg["To"] = Address(username=local, domain=domain)
    msg["Subject"] = check_header("subject", mail.subject)
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = message_id
    for name, value in mail.headers.items():
        msg[check_header("header", name)] = check_header(name, value)
    msg.set_content(mail.text)
    msg.add_alternative(mail.html, subtype="html")
    return msg
