"""E-mail notifications from the outbox, over a real local SMTP server (aiosmtpd)."""
from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from server.notify.mailer import LogMailer, redact
from server.notify.notifications import NOTIFIER
from server.notify.notifications import DEAD_LETTERS, dead_letters, notices, render
from server.core.outbox import STREAMS, Event, GroupConsumer, publish
from server.core.settings import Settings

from .builders import GOOD_CARD, publish_show
from .outbox_helpers import SmtpSink, acked, destroy_group, locate, retry_record, until


@pytest.fixture
async def smtp():
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def app_settings(smtp: SmtpSink) -> Settings:
    return Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                    passivate_after_s=30, smtp_host="127.0.0.1", smtp_port=smtp.port,
                    smtp_from="BMM <tickets@bmm.test>", smtp_timeout_s=2.0,
                    notify_retry_s=0.05, notify_retry_max_s=0.2,
                    webhook_retry_s=0.05, webhook_retry_max_s=0.2)


def addr() -> str:
    return f"c-{uuid.uuid4().hex[:10]}@example.com"


async def book(api, show_id: str, seats: list[str], email: str, name: str) -> dict:
    async with api.post(f"/api/shows/{show_id}/holds", json={"seats": seats}) as resp:
        assert resp.status == 201, await resp.text()
        h = await resp.json()
    async with api.post(f"/api/holds/{h['hold_id']}/checkout",
                        headers={"X-Holder-Token": h["holder_token"],
                                 "Idempotency-Key": uuid.uuid4().hex},
                        json={"card": GOOD_CARD, "email": email, "name": name}) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


def parts(msg) -> tuple[str, str]:
    text = msg.get_body(preferencelist=("plain",)).get_content()
    page = msg.get_body(preferencelist=("html",)).get_content()
    return text, page


async def test_checkout_sends_a_booking_confirmed_email(api, redis, smtp):
    pub = await publish_show(redis)
    to = addr()
    booking = await book(api, pub.show_id, ["A3", "C3"], to, "Asha <Rao>")
    msg = await smtp.next_to(to)
    assert msg["From"] == "BMM <tickets@bmm.test>"
    assert msg["X-Test-Rcpt"] == to
    assert "The Test Movie" in msg["Subject"] and booking["booking_id"] in msg["Subject"]
    assert msg["X-BMM-Event-Type"] == "booking.confirmed"
    text, page = parts(msg)
    assert "Hello Asha <Rao>," in text and "A3, C3" in text
    assert "700.00 INR" in text and "Test Cinema, Testville" in text
    assert "Asha &lt;Rao&gt;" in page and "<Rao>" not in page  # escaped in HTML
    assert f"/api/bookings/{booking['booking_id']}" in page
    await until(lambda: acked(redis, "notifications", msg["X-BMM-Event-Id"]),
                what="the event to be acknowledged")
    assert len(smtp.to(to)) == 1


async def test_smtp_down_the_email_is_retried_and_delivered_once_it_is_back(server, redis, smtp):
    pub = await publish_show(redis)
    to = addr()
    smtp.stop()
    event_id = await publish(redis, "booking.cancelled", {
        "booking_id": f"{pub.show_id}.b1", "show_id": pub.show_id, "seats": ["B1"],
        "email": to, "name": "Ravi", "refund": {"amount": 45000, "currency": "INR"}})

    async def retried() -> bool:
        raw = await retry_record(redis, "notifications", event_id)
        return raw is not None and int(raw.split(b":")[0]) >= 2

    await until(retried, what="two failed attempts while SMTP is down")
    assert not await acked(redis, "notifications", event_id)  # kept, not lost
    assert smtp.to(to) == []
    smtp.start()
    msg = await smtp.next_to(to)
    assert "cancelled" in msg["Subject"] and msg["X-BMM-Event-Id"] == event_id
    text, _ = parts(msg)
    assert "450.00 INR" in text and "B1" in text
    await until(lambda: acked(redis, "notifications", event_id), what="acknowledgement")
    assert await retry_record(redis, "notifications", event_id) is None
    assert len(smtp.to(to)) == 1


async def test_a_redelivered_event_is_not_mailed_twice(server, redis, smtp):
    pub = await publish_show(redis)
    to = addr()
    data = {"booking_id": f"{pub.show_id}.b2", "show_id": pub.show_id, "seats": ["A1"],
            "email": to, "name": "Mei", "total": 45000, "currency": "INR"}
    event_id = f"booking.confirmed:{pub.show_id}.b2"
    await publish(redis, "booking.confirmed", data, event_id=event_id)
    await smtp.next_to(to)
    await until(lambda: acked(redis, "notifications", event_id), what="acknowledgement")
    # The producer retries after a crash: the same event again.
    await publish(redis, "booking.confirmed", data, event_id=event_id)
    marker = addr()  # a later event: once it arrives, the duplicate was handled before it
    await publish(redis, "booking.confirmed", {**data, "email": marker}, event_id="evt_" +
                  uuid.uuid4().hex)
    await smtp.next_to(marker)
    assert len(smtp.to(to)) == 1


async def test_show_cancelled_mails_every_booking_once(server, redis, smtp):
    pub = await publish_show(redis)
    a, b = addr(), addr()
    bookings = [
        {"booking_id": f"{pub.show_id}.x1", "seats": ["A1"], "email": a, "name": "Ana",
         "refund": {"amount": 45000, "currency": "INR"}},
        {"booking_id": f"{pub.show_id}.x2", "seats": ["C1", "C2"], "email": b, "name": "Ben",
         "refund": {"amount": 50000, "currency": "INR"}},
    ]
    await publish(redis, "show.cancelled", {"show_id": pub.show_id, "bookings": bookings})
    # The per-booking cancellation of the same show: no second e-mail to Ana.
    await publish(redis, "booking.cancelled", {**bookings[0], "show_id": pub.show_id,
                                               "reason": "show_cancelled"})
    got = {(await smtp.next_to(a))["To"], (await smtp.next_to(b))["To"]}
    assert got == {a, b}
    msg = smtp.to(b)[0]
    assert msg["Subject"].startswith("Show cancelled: The Test Movie")
    text, _ = parts(msg)
    assert "Ben" in text and "C1, C2" in text and "500.00 INR" in text
    marker = addr()
    await publish(redis, "booking.cancelled", {"booking_id": "x.y", "show_id": pub.show_id,
                                               "email": marker, "seats": []})
    await smtp.next_to(marker)
    assert len(smtp.to(a)) == 1 and len(smtp.to(b)) == 1


async def test_sms_and_push_go_to_the_log_only_adapters(server, redis, smtp):
    to = addr()
    await publish(redis, "booking.confirmed", {
        "booking_id": "s.b", "show_id": "no-such-show", "seats": ["A1"], "email": to,
        "name": "Zed", "phone": "+911234567890", "customer_id": "u_1"})
    msg = await smtp.next_to(to)
    assert "your movie" in parts(msg)[0]  # an unknown show still mails, with defaults
    notifier = server.app[NOTIFIER]
    await until(lambda: _async(any(p == "+911234567890" for p, _ in notifier.sms.sent)),
                what="the SMS log")
    assert any(u == "u_1" for u, _, _ in notifier.push.sent)


async def _async(value: bool) -> bool:
    return value


def test_templates_render_subject_text_and_escaped_html():
    values = {"name": "<b>x</b>", "booking_id": "s.1", "seats": "A1", "total": "1.00 INR",
              "movie_title": "M & M", "theatre_name": "T", "theatre_city": "C",
              "starts_at": "Mon", "ticket_url": "/t"}
    out = render("booking_confirmed", values)
    assert out.subject == "Your booking for M & M is confirmed (s.1)"
    assert "Hello <b>x</b>," in out.text
    assert "&lt;b&gt;x&lt;/b&gt;" in out.html and "M &amp; M" in out.html
    for name in ("booking_cancelled", "show_cancelled"):
        r = render(name, values)
        assert r.subject and "$" not in r.subject and "s.1" in r.text and "s.1" in r.html


async def test_outbox_entries_carry_id_type_time_and_data(redis):
    event_id = await publish(redis, "show.sold_out", {"show_id": "abc"}, partner_id="p1")
    stream, entry = await locate(redis, event_id)
    [(_, fields)] = await redis.xrange(stream, entry, entry)
    assert fields[b"type"] == b"show.sold_out" and fields[b"partner_id"] == b"p1"
    assert fields[b"data"] == b'{"show_id":"abc"}' and fields[b"time"].endswith(b"Z")
    with pytest.raises(ValueError):
        await publish(redis, "no.such.event", {})


async def test_a_dead_consumers_pending_event_is_taken_over(redis):
    group = f"t-{uuid.uuid4().hex[:8]}"
    handled: list[str] = []

    async def handler(event) -> bool:
        handled.append(event.id)
        return True

    live = GroupConsumer(redis, group, handler, claim_idle_s=0.3, start_id="$", name="live")
    await live.ensure_group()
    try:
        event_id = await publish(redis, "show.sold_out", {"show_id": "dead-consumer"})
        # Another worker reads it and dies before acknowledging.
        read = set()
        for stream in STREAMS:  # one shard at a time (a cluster reads one slot per call)
            for _, entries in await redis.xreadgroup(group, "dead", {stream: ">"}, count=100):
                read |= {f[b"id"].decode() for _, f in entries}
        assert event_id in read
        assert await live.run_once(block_ms=0) == 0  # not idle long enough: still its
        assert handled == []

        async def taken_over() -> bool:
            await live.run_once(block_ms=0)
            return event_id in handled

        await until(taken_over, what="the live consumer to claim the entry")
        assert await acked(redis, group, event_id)
        assert handled.count(event_id) == 1
    finally:
        await destroy_group(redis, group)


async def test_a_failed_event_is_retried_by_its_consumer_with_backoff(redis):
    group = f"t-{uuid.uuid4().hex[:8]}"
    calls: list[float] = []

    async def flaky(event) -> bool:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) < 3:
            raise ConnectionError("receiver down")
        return True

    worker = GroupConsumer(redis, group, flaky, retry_s=0.05, retry_max_s=1.0,
                           claim_idle_s=60, start_id="$", name="w")
    await worker.ensure_group()
    try:
        event_id = await publish(redis, "show.sold_out", {"show_id": "flaky"})
        stream, entry = await locate(redis, event_id)
        await worker.run_once(block_ms=0)
        assert len(calls) == 1 and await worker.attempts(entry, stream) == 1
        assert not await acked(redis, group, event_id)

        async def done() -> bool:
            await worker.run_once(block_ms=20)
            return await acked(redis, group, event_id)

        await until(done, what="the third attempt")
        assert len(calls) == 3
        # The delay doubles. The worker stamps attempts in whole milliseconds on a different
        # clock than this loop's, so allow a few milliseconds of rounding (seen: 0.0997).
        tick = 0.005
        assert calls[1] - calls[0] >= 0.05 - tick and calls[2] - calls[1] >= 0.1 - tick
        assert await worker.attempts(entry, stream) == 0  # forgotten once done
    finally:
        await destroy_group(redis, group)


def test_the_log_mailer_logs_no_address_and_no_subject(caplog):
    # Security review L16: without SMTP every address and subject went to the INFO log.
    msg = EmailMessage()
    msg["To"] = "asha.rao@example.com"
    msg["Subject"] = "Booking confirmed: Secret Movie (bk_123)"
    msg["X-BMM-Event-Id"] = "evt_1"
    with caplog.at_level("INFO", logger="server.notify.mailer"):
        asyncio.run(LogMailer().send(msg))
    logged = caplog.text
    assert "asha.rao@example.com" not in logged and "Secret Movie" not in logged
    assert "a***@example.com" in logged and "evt_1" in logged
    assert redact("") == "(none)" and redact("nobody") == "***"


async def test_a_mail_with_no_recipient_is_skipped_not_retried(server, redis, smtp):
    # Security review L19: an erased customer's booking has email "": smtplib raised and
    # the event was retried for ever. Now it is recorded as skipped and acknowledged.
    pub = await publish_show(redis)
    event_id = await publish(redis, "booking.cancelled", {
        "booking_id": f"{pub.show_id}.gone", "show_id": pub.show_id, "seats": ["D1"],
        "email": "", "name": "(deleted account)"})
    await until(lambda: acked(redis, "notifications", event_id), what="acknowledgement")
    assert await retry_record(redis, "notifications", event_id) is None
    key = notices(Event(event_id, "booking.cancelled", datetime.now(UTC),
                        {"email": ""}))[0].key
    assert await redis.get(key) == b"skipped:no_recipient"


async def test_a_mail_that_keeps_failing_goes_to_the_dead_letter_list(server, redis, smtp):
    # Security review L19: bounded attempts, then a dead letter an operator can read.
    server.app[NOTIFIER].max_attempts = 3
    pub = await publish_show(redis)
    to = addr()
    smtp.stop()
    booking_id = f"{pub.show_id}.dl{uuid.uuid4().hex[:6]}"
    event_id = await publish(redis, "booking.cancelled", {
        "booking_id": booking_id, "show_id": pub.show_id, "seats": ["D2"], "email": to,
        "name": "Ravi"})
    await until(lambda: acked(redis, "notifications", event_id), timeout=20,
                what="the event to be acknowledged once the mail is dead-lettered")
    letters = [d for d in await dead_letters(redis, 1000) if d.event_id == event_id]
    assert len(letters) == 1, letters
    letter = letters[0]
    assert letter.booking_id == booking_id and letter.attempts == 3
    assert letter.template == "booking_cancelled" and letter.reason
    assert to not in letter.recipient and letter.recipient.endswith("@example.com")
    assert to.encode() not in b"".join(await redis.lrange(DEAD_LETTERS, 0, -1))
    smtp.start()
    marker = addr()  # a later event: once it is mailed, the dead one was not resent
    await publish(redis, "booking.confirmed", {"booking_id": "m.k", "show_id": pub.show_id,
                                               "email": marker, "seats": []})
    await smtp.next_to(marker)
    assert smtp.to(to) == []
