"""E-mail transport: SMTP with the standard library's smtplib, run in a worker thread so
the event loop never blocks on the network.

`SmtpMailer` sends; `LogMailer` (used when no SMTP host is configured) only logs, so a
development server works without a mail server. Both raise `MailError` when a message
could not be handed over: the caller keeps the event and retries later (a bounded number
of times: see notifications.py).

Logs never carry a customer's address or the subject (which names the booking and the
movie): `redact()` keeps the first character of the address and its domain (L16).
"""
from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from email.message import EmailMessage
from typing import Protocol

from server.core.settings import Settings

log = logging.getLogger(__name__)


class MailError(Exception):
    """The message was not accepted (server down, refused, timed out): retry later.
    `permanent`: the server refused every recipient for good (5xx): retrying is useless."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def redact(address: str | None) -> str:
    """`asha@example.com` -> `a***@example.com`, for logs and the dead-letter list."""
    address = (address or "").strip()
    if not address:
        return "(none)"
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpMailer:
    def __init__(self, host: str, port: int = 25, *, username: str | None = None,
                 password: str | None = None, starttls: bool = False,
                 timeout_s: float = 10.0) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.starttls = starttls
        self.timeout_s = timeout_s

    async def send(self, message: EmailMessage) -> None:
        try:
            await asyncio.to_thread(self._send_sync, message)
        except smtplib.SMTPRecipientsRefused as exc:
            permanent = bool(exc.recipients) and all(
                isinstance(v, tuple) and int(v[0]) >= 500 for v in exc.recipients.values())
            raise MailError(f"SMTP {self.host}:{self.port}: recipient refused "
                            f"{_codes(exc.recipients)}", permanent=permanent) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(f"SMTP {self.host}:{self.port}: {exc}") from exc

    def _send_sync(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password or "")
            refused = smtp.send_message(message)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)


def _codes(refused: dict) -> str:
    """The SMTP answers of refused recipients, without the addresses."""
    return ", ".join(f"{v[0]} {v[1].decode(errors='replace') if isinstance(v[1], bytes) else v[1]}"
                     if isinstance(v, tuple) and len(v) == 2 else str(v)
                     for v in refused.values())


class LogMailer:
    """No SMTP server configured: log what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> None:
        self.sent.append(message)
        del self.sent[:-100]
        log.info("e-mail (not sent, no SMTP host): to=%s event=%s", redact(message["To"]),
                 message["X-BMM-Event-Id"] or "-")


def mailer_from(settings: Settings) -> Mailer:
    if not settings.smtp_host:
        return LogMailer()
    return SmtpMailer(settings.smtp_host, settings.smtp_port, username=settings.smtp_username,
                      password=settings.smtp_password, starttls=settings.smtp_starttls,
                      timeout_s=settings.smtp_timeout_s)
