"""Customer notifications: the e-mail worker, its templates, and SMS / push adapters.

The worker is the outbox consumer group `notifications` (see outbox.py): for each event it
sends the e-mails the event calls for and acknowledges the event only after every one of
them was accepted by the SMTP server. If SMTP is down the event stays pending and is
retried with exponential backoff, so nothing is lost. Each e-mail has an idempotency key
(`notify:sent:{<digest>}:<event or kind>`, the digest a hash of both and the recipient),
recorded right after the send, so a redelivered event does not mail anyone twice. The
e-mail's send lock (`...:lock`) and try counter (`notify:attempts:{<digest>}:...`) share
its hash tag.

    booking.confirmed                  -> "booking confirmed" to the booking's e-mail
    booking.cancelled                  -> "booking cancelled" (or "show cancelled" when
                                          data.reason == "show_cancelled")
    show.cancelled  (data.bookings[])  -> "show cancelled" to every listed booking's e-mail
    show.sold_out                      -> nothing (partners get it as a webhook)

A booking told about its show's cancellation by both a `show.cancelled` and its own
`booking.cancelled` gets one e-mail: that notice's key is per booking, not per event.

Failures are bounded (security review L19):

- a notice with no recipient (an erased customer's booking keeps `email=""`) is not sent:
  it is recorded as skipped (its idempotency key holds `skipped:no_recipient`);
- a mail the SMTP server does not accept is tried again with the event, at most
  `max_attempts` times (`notify:attempts:<notice>` counts them), or once when the server
  refused the recipient for good (5xx). Then it goes to the dead-letter list `DEAD_LETTERS`
  (`notify:dead`, one key for all, newest first, JSON: event id and type, template, booking id, the redacted
  recipient, reason, attempts, time), its key holds `dead`, and the event is acknowledged.
  An operator reads it with `LRANGE notify:dead 0 -1` or `dead_letters(redis)`.

Templates are `server/templates/<name>.txt` (first line `Subject: ...`, a blank line, the
plain-text body) and `<name>.html`, filled with `string.Template` (values HTML-escaped in
the HTML part). SMS and push go through adapters whose defaults only log.
"""
from __future__ import annotations

import hashlib
import html
import logging
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from string import Template
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import msgspec
import redis.asyncio as aioredis
from aiohttp import web


from server.catalog.model import Movie, Show, Theatre, catalog_key
from server.notify.mailer import MailError, Mailer, mailer_from, redact
from server.core.outbox import Event, GroupConsumer, run_with_app
from server.core.settings import Settings

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
GROUP = "notifications"
SENT_TTL_S = 30 * 24 * 3600
SEND_LOCK_MS = 60_000
MAX_ATTEMPTS = 8          # tries of one e-mail before it goes to the dead-letter list
DEAD_LETTERS = "notify:dead"
DEAD_LETTERS_KEPT = 10_000


# --- SMS and push: adapters with log-only defaults --------------------------------------

class SmsSender(Protocol):
    async def send(self, to: str, text: str) -> None: ...


class PushSender(Protocol):
    async def send(self, user_id: str, title: str, body: str) -> None: ...


class LogSms:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, to: str, text: str) -> None:
        self.sent.append((to, text))
        del self.sent[:-100]
        log.info("sms (log only) to=***%s (%d characters)", to[-2:], len(text))


class LogPush:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    async def send(self, user_id: str, title: str, body: str) -> None:
        self.sent.append((user_id, title, body))
        del self.sent[:-100]
        log.info("push (log only) user=%s", user_id)


# --- templates ------------------------------------------------------------------------

class Rendered(msgspec.Struct, frozen=True):
    subject: str
    text: str
    html: str


def render(name: str, values: dict[str, str]) -> Rendered:
    """Fill `<name>.txt` / `<name>.html`; unknown placeholders stay as they are."""
    raw = (TEMPLATES / f"{name}.txt").read_text()
    first, _, body = raw.partition("\n")
    if not first.startswith("Subject:"):
        raise ValueError(f"template {name}.txt must start with 'Subject: '")
    subject = Template(first.removeprefix("Subject:").strip()).safe_substitute(values)
    text = Template(body.lstrip("\n")).safe_substitute(values)
    escaped = {k: html.escape(v) for k, v in values.items()}
    page = Template((TEMPLATES / f"{name}.html").read_text()).safe_substitute(escaped)
    return Rendered(" ".join(subject.split()), text, page)


def money(amount: int | None, currency: str | None) -> str:
    if not currency:
        return "-"
    return f"{(amount or 0) / 100:,.2f} {currency}"


# --- dead letters ---------------------------------------------------------------------

class DeadLetter(msgspec.Struct, kw_only=True):
    """An e-mail given up on (the `notify:dead` list holds these as JSON, newest first)."""

    event_id: str
    event_type: str
    template: str
    booking_id: str
    recipient: str  # redacted: a***@example.com
    reason: str
    attempts: int
    dead_at: datetime


def notice_key(digest: str, kind: str) -> str:
    """The e-mail's idempotency key; its lock and try counter share the tag (the hex
    digest: `kind` may hold any character)."""
    return f"notify:sent:{{{digest}}}:{kind}"


def attempts_key(key: str) -> str:
    return f"notify:attempts:{key.removeprefix('notify:sent:')}"


async def dead_letters(redis: aioredis.Redis, count: int = 100) -> list[DeadLetter]:
    """The newest `count` e-mails given up on, for an operator."""
    raws = await redis.lrange(DEAD_LETTERS, 0, max(0, count - 1))
    return [msgspec.json.decode(r, type=DeadLetter) for r in raws]


# --- the worker -----------------------------------------------------------------------

class Notice(msgspec.Struct, frozen=True):
    template: str
    booking: dict[str, Any]
    key: str  # idempotency key of this e-mail


def notices(event: Event) -> list[Notice]:
    """The e-mails an event calls for."""
    data = event.data

    def key(kind: str, booking: dict[str, Any]) -> str:
        email = str(booking.get("email", "")).lower()
        digest = hashlib.sha256(f"{kind}\n{email}".encode()).hexdigest()[:24]
        return notice_key(digest, kind)

    if event.type == "booking.confirmed":
        return [Notice("booking_confirmed", data, key(event.id, data))]
    if event.type == "booking.cancelled":
        if data.get("reason") == "show_cancelled":
            return [Notice("show_cancelled", data,
                           key(f"show_cancelled:{data.get('booking_id')}", data))]
        return [Notice("booking_cancelled", data, key(event.id, data))]
    if event.type == "show.cancelled":
        out = []
        for booking in data.get("bookings") or []:
            if isinstance(booking, dict) and booking.get("email"):
                booking = {"show_id": data.get("show_id"), **booking}
                out.append(Notice("show_cancelled", booking,
                                  key(f"show_cancelled:{booking.get('booking_id')}", booking)))
        return out
    return []


class Notifier:
    """The `notifications` outbox consumer: renders and sends e-mails (plus SMS / push
    when the event carries a phone number / customer id)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, *,
                 mailer: Mailer | None = None, sms: SmsSender | None = None,
                 push: PushSender | None = None, public_url: str = "",
                 max_attempts: int = MAX_ATTEMPTS) -> None:
        self.redis = redis
        self.max_attempts = max(1, max_attempts)
        self.settings = settings
        self.mailer = mailer or mailer_from(settings)
        self.sms = sms or LogSms()
        self.push = push or LogPush()
        self.public_url = public_url.rstrip("/")
        self.consumer = GroupConsumer(redis, GROUP, self.handle,
                                      retry_s=settings.notify_retry_s,
                                      retry_max_s=settings.notify_retry_max_s,
                                      claim_idle_s=settings.outbox_claim_idle_s)

    def start(self) -> None:
        self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def handle(self, event: Event) -> bool:
        for notice in notices(event):
            await self._send_once(event, notice)
        return True

    async def _send_once(self, event: Event, notice: Notice) -> None:
        if await self.redis.exists(notice.key):
            return  # sent already (a redelivery)
        lock = notice.key + ":lock"
        if not await self.redis.set(lock, event.id, nx=True, px=SEND_LOCK_MS):
            raise RuntimeError("another worker is sending this e-mail right now")
        try:
            if await self.redis.exists(notice.key):
                return
            if not str(notice.booking.get("email") or "").strip():
                await self.redis.set(notice.key, "skipped:no_recipient", ex=SENT_TTL_S)
                log.info("e-mail %s for booking %s skipped: no recipient", notice.template,
                         notice.booking.get("booking_id"))
                return  # nothing to send to, nor an SMS or push for an erased customer
            message = await self._message(event, notice)
            try:
                await self.mailer.send(message)
            except MailError as exc:
                if not await self._give_up(event, notice, exc):
                    raise  # not acknowledged: the event is retried later
                return
            await self.redis.set(notice.key, event.id, ex=SENT_TTL_S)
            await self.redis.delete(attempts_key(notice.key))
        finally:
            await self.redis.delete(lock)
        booking = notice.booking
        subject = message["Subject"]
        if booking.get("phone"):
            await self.sms.send(str(booking["phone"]), subject)
        if booking.get("customer_id"):
            await self.push.send(str(booking["customer_id"]), subject,
                                 f"Booking {booking.get('booking_id')}")

    async def _give_up(self, event: Event, notice: Notice, exc: MailError) -> bool:
        """Count a failed try; past `max_attempts` (or at once for a permanent refusal)
        move the e-mail to the dead-letter list and say so (True)."""
        akey = attempts_key(notice.key)
        attempts = int(await self.redis.incr(akey))
        await self.redis.expire(akey, SENT_TTL_S)
        if attempts < self.max_attempts and not exc.permanent:
            return False
        letter = DeadLetter(
            event_id=event.id, event_type=event.type, template=notice.template,
            booking_id=str(notice.booking.get("booking_id") or ""),
            recipient=redact(str(notice.booking.get("email") or "")), reason=str(exc),
            attempts=attempts, dead_at=datetime.now(UTC))
        # The shared list, then the notice (two slots): stopped in between, the event is
        # retried, counted past the limit again and lettered again (a repeated letter
        # rather than a lost one).
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(DEAD_LETTERS, msgspec.json.encode(letter))
            pipe.ltrim(DEAD_LETTERS, 0, DEAD_LETTERS_KEPT - 1)
            await pipe.execute()
        async with self.redis.pipeline(transaction=True) as pipe:  # the notice's slot
            pipe.set(notice.key, "dead", ex=SENT_TTL_S)
            pipe.delete(akey)
            await pipe.execute()
        log.error("e-mail %s for booking %s to %s given up after %d attempts: %s",
                  notice.template, letter.booking_id, letter.recipient, attempts, exc)
        return True

    async def _message(self, event: Event, notice: Notice) -> EmailMessage:
        values = await self._values(notice.booking)
        rendered = render(notice.template, values)
        msg = EmailMessage()
        msg["From"] = self.settings.smtp_from
        msg["To"] = str(notice.booking["email"])
        msg["Subject"] = rendered.subject
        msg["Message-ID"] = make_msgid(domain="bookmymovie.local")
        msg["X-BMM-Event-Id"] = event.id
        msg["X-BMM-Event-Type"] = event.type
        msg.set_content(rendered.text)
        msg.add_alternative(rendered.html, subtype="html")
        return msg

    async def _values(self, booking: dict[str, Any]) -> dict[str, str]:
        show_id = str(booking.get("show_id") or "")
        show = movie = theatre = None
        if show_id:
            raw = await self.redis.get(catalog_key("show", show_id))
            show = _decode(raw, Show)
            if show is not None:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.get(catalog_key("movie", show.movie_id))
                    pipe.get(catalog_key("theatre", show.theatre_id))
                    movie_raw, theatre_raw = await pipe.execute()
                movie, theatre = _decode(movie_raw, Movie), _decode(theatre_raw, Theatre)
        starts = "-"
        if show is not None:
            at = show.starts_at_utc
            tz = getattr(theatre, "timezone", None) or "UTC"
            try:
                at = at.astimezone(ZoneInfo(tz))
            except (KeyError, ValueError):
                at = at.astimezone(UTC)
            starts = at.strftime("%a %d %b %Y, %H:%M %Z")
        refund = booking.get("refund")
        if isinstance(refund, dict):
            refund_text = money(refund.get("amount"), refund.get("currency"))
        elif isinstance(refund, int):
            refund_text = money(refund, booking.get("currency"))
        else:
            refund_text = "as per the cancellation policy"
        booking_id = str(booking.get("booking_id", ""))
        return {
            "name": str(booking.get("name") or "there"),
            "booking_id": booking_id,
            "seats": ", ".join(map(str, booking.get("seats") or [])) or "-",
            "total": money(booking.get("total"), booking.get("currency")),
            "refund": refund_text,
            "movie_title": movie.title if movie is not None else "your movie",
            "theatre_name": theatre.name if theatre is not None else "the theatre",
            "theatre_city": theatre.city if theatre is not None else "",
            "starts_at": starts,
            "ticket_url": f"{self.public_url}/api/bookings/{booking_id}",
            "generated_at": datetime.now(UTC).isoformat(),
        }


def _decode(raw: bytes | None, type_: type) -> Any:
    if not raw:
        return None
    try:
        return msgspec.json.decode(raw, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


# --- the app's workers ----------------------------------------------------------------

NOTIFIER = web.AppKey("notifier", Notifier)


def setup(app: web.Application, settings: Settings, redis_url: str) -> None:
    """Runs this process's e-mail worker while the app runs."""
    run_with_app(app, NOTIFIER, redis_url, lambda redis: Notifier(redis, settings))
