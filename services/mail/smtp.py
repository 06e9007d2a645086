"""Sending through SMTP with aiosmtplib: one connection for a batch of mails, with STARTTLS,
implicit TLS and AUTH as configured (LEDGER_SMTP_*)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator

import aiosmtplib

from services.settings import Settings


class SmtpSender:
    def __init__(self, settings: Settings) -> None:
        if not settings.smtp_host:
            raise ValueError("LEDGER_SMTP_HOST is not set")
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.security = settings.smtp_security
        self.user = settings.smtp_user
        self.password = settings.smtp_password
        self.from_address = settings.smtp_from
        self.timeout = settings.smtp_timeout

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosmtplib.SMTP]:
        """A connected (and, with a user, logged in) client; closed afterwards."""
        tls = self.security == "tls"
        client = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, timeout=self.timeout, use_tls=tls,
            start_tls=True if self.security == "starttls" else False,
            tls_context=ssl.create_default_context() if self.security != "none" else None,
        )
        await client.connect()
        try:
            if self.user:
                await client.login(self.user, self.password or "")
            yield client
        finally:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()
            if client.is_connected:
                client.close()


def permanent(exc: BaseException) -> bool:
    """A refusal that retrying cannot change (5xx for this message or recipient)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(r.code >= 500 for r in exc.recipients)
    if isinstance(exc, (aiosmtplib.SMTPDataError, aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPSenderRefused)):
        return exc.code >= 500
    return False
