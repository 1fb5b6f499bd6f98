"""The sandbox gateway's durable state: payments, refund keys and the ledger, in SQLite.

One file, `<data dir>/gateway.sqlite3`, WAL journal, `synchronous=FULL`: a mutation is one
`BEGIN IMMEDIATE` ... `COMMIT` transaction, and the HTTP answer is sent only after the
commit returned, so whatever a client was told survives `kill -9` of the gateway (or of
the machine's power, as far as fsync goes).

Tables:
- `payments`: one row per authorise idempotency key (UNIQUE) that got an answer, its state
  (authorised | pending | captured | partially_refunded | refunded | voided | failed |
  declined), the amount, the card's last four digits, brand and opaque token, and the
  amount refunded so far. A declined key has a row too: it stays declined.
- `refund_keys`: refund idempotency key -> the amount its first call refunded.
- `ledger`: the append-only record of money events (authorise / pending / decline /
  capture / void / refund / failed), in commit order; triggers refuse UPDATE and DELETE.

The rules are those of `server.commerce.payments.SandboxGateway` (same test cards, same
errors): an invalid card is not recorded (fix it and retry under the same key), capturing
a captured payment is a no-op, a refund voids an uncaptured authorisation and refunds
captured money in full or in part, a repeated refund key returns the first amount.

`Ledger` is synchronous and not thread-safe: the HTTP app (`app.py`) runs every call on one
worker thread, which is also what serialises the mutations (20 concurrent authorises with
one key make one payment).
"""
from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

import msgspec

from server.commerce.payments import (
    DECLINES,
    PENDING,
    Authorisation,
    CardDeclined,
    CardDetails,
    LedgerEntry,
    LedgerKind,
    PaymentError,
    _check_card,
)

PaymentState = Literal["authorised", "pending", "captured", "partially_refunded", "refunded",
                       "voided", "failed", "declined"]
PAYMENT_STATES: tuple[str, ...] = get_args(PaymentState)
LEDGER_KINDS: tuple[str, ...] = get_args(LedgerKind)
DB_NAME = "gateway.sqlite3"
BRAND = "visa"  # every sandbox test card is a Visa
SCHEMA_VERSION = 1


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS payments (
    ref              TEXT PRIMARY KEY,
    idempotency_key  TEXT NOT NULL UNIQUE,
    state            TEXT NOT NULL CHECK (state IN ({_in(PAYMENT_STATES)})),
    amount           INTEGER NOT NULL,
    currency         TEXT NOT NULL,
    last4            TEXT NOT NULL,
    brand            TEXT NOT NULL,
    card_token       TEXT NOT NULL,
    refunded         INTEGER NOT NULL DEFAULT 0,
    answered_pending INTEGER NOT NULL DEFAULT 0,  -- the first answer said "pending"
    created_at       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refund_keys (
    idempotency_key TEXT PRIMARY KEY,
    ref             TEXT NOT NULL,
    amount          INTEGER NOT NULL,
    at              TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL CHECK (kind IN ({_in(LEDGER_KINDS)})),
    ref             TEXT NOT NULL,
    amount          INTEGER NOT NULL,
    currency        TEXT NOT NULL,
    last4           TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    at              TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_by_ref ON ledger (ref, seq);
CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"""


class UnknownPayment(PaymentError):
    """No payment has this ref (HTTP 404; the code is the operation's, as in SandboxGateway)."""

    status = 404


class PaymentRecord(msgspec.Struct, frozen=True):
    ref: str
    idempotency_key: str
    state: PaymentState
    amount: int
    currency: str
    last4: str
    brand: str
    card_token: str    # "" for a declined key: no token is issued
    refunded: int
    answered_pending: bool
    created_at: datetime

    def authorisation(self) -> Authorisation:
        """The first answer authorise gave for this key (what a retry gets again)."""
        return Authorisation(self.ref, self.card_token, self.last4, self.brand, self.amount,
                             self.currency, "pending" if self.answered_pending else "authorised")


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Ledger:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
        # One worker thread uses it (app.py), not the thread that opened it.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: cannot use the WAL journal (got {mode!r})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: schema version {version} is newer than this code")
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed (and fsynced) when the block ends, rolled back if it
        raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- mutations ---------------------------------------------------------------------

    def authorise(self, *, amount: int, currency: str, card: CardDetails,
                  idempotency_key: str) -> Authorisation:
        """The first answer for this key, or a new one; raises CardInvalid (nothing
        recorded) or CardDeclined (recorded: the key stays declined)."""
        with self._write():
            known = self._by_key(idempotency_key)
            if known is None:
                _check_card(card)  # invalid details are not recorded: fix them and retry
                known = self._new_payment(amount, currency, card, idempotency_key)
        if known.state == "declined":
            raise CardDeclined("card_declined", "the card was declined by its issuer")
        return known.authorisation()

    def _new_payment(self, amount: int, currency: str, card: CardDetails,
                     key: str) -> PaymentRecord:
        last4 = card.number[-4:]
        ref = f"sbx_{secrets.token_hex(8)}"
        if card.number == DECLINES:
            state, kind, token = "declined", "decline", ""
        elif card.number == PENDING:
            state, kind, token = "pending", "pending", f"tok_{secrets.token_hex(8)}"
        else:
            state, kind, token = "authorised", "authorise", f"tok_{secrets.token_hex(8)}"
        at = _now()
        self._db.execute(
            "INSERT INTO payments (ref, idempotency_key, state, amount, currency, last4, brand,"
            " card_token, refunded, answered_pending, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (ref, key, state, amount, currency, last4, BRAND, token, int(state == "pending"), at))
        self._append(kind, ref, amount, currency, last4, key, at)
        record = self._get(ref)
        assert record is not None
        return record

    def capture(self, ref: str) -> str:
        """Take the authorised money; a captured payment stays captured (no-op). Returns
        the state ("captured")."""
        with self._write():
            p = self._get(ref)
            if p is None:
                raise UnknownPayment("capture_failed", f"no payment {ref}")
            if p.state == "captured":
                return p.state
            if p.state != "authorised":
                raise PaymentError("capture_failed",
                                   f"payment {ref} cannot be captured ({p.state})")
            self._set_state(ref, "captured")
            self._append_for(p, "capture", p.amount)
            return "captured"

    def refund(self, ref: str, amount: int | None = None,
               idempotency_key: str | None = None) -> int:
        """Void an uncaptured authorisation (all of it, whatever `amount`), or refund
        `amount` (default: all that is left) of a captured payment; returns the amount."""
        with self._write():
            if idempotency_key is not None:
                first = self._db.execute("SELECT amount FROM refund_keys WHERE idempotency_key = ?",
                                         (idempotency_key,)).fetchone()
                if first is not None:
                    return int(first["amount"])
            p = self._get(ref)
            if p is None:
                raise UnknownPayment("refund_failed", f"no payment {ref}")
            if p.state == "declined":
                raise PaymentError("refund_failed", f"payment {ref} was declined: nothing to refund")
            done = 0
            if p.state in ("authorised", "pending"):
                self._set_state(ref, "voided")
                self._append_for(p, "void", p.amount)
                done = p.amount
            elif p.state in ("captured", "partially_refunded"):
                left = p.amount - p.refunded
                done = left if amount is None else amount
                if not 0 <= done <= left:
                    raise PaymentError("refund_failed",
                                       f"cannot refund {done} of payment {ref} ({left} left)")
                if done:
                    self._db.execute(
                        "UPDATE payments SET refunded = refunded + ?, state = ? WHERE ref = ?",
                        (done, "refunded" if done == left else "partially_refunded", ref))
                    self._append_for(p, "refund", done)
            # voided / refunded / failed: nothing left to give back (done = 0)
            if idempotency_key is not None:
                self._db.execute(
                    "INSERT INTO refund_keys (idempotency_key, ref, amount, at) VALUES (?, ?, ?, ?)",
                    (idempotency_key, ref, done, _now()))
            return done

    def settle(self, ref: str, outcome: Literal["succeeded", "failed"]) -> str | None:
        """The asynchronous outcome of a pending payment (what the webhook reports): pending
        -> authorised, or -> failed (with a "failed" ledger entry). Any other state is left
        as it is. Returns the payment's state afterwards (None: no such payment)."""
        with self._write():
            p = self._get(ref)
            if p is None:
                return None
            if p.state != "pending":
                return p.state
            if outcome == "succeeded":
                self._set_state(ref, "authorised")
                return "authorised"
            self._set_state(ref, "failed")
            self._append_for(p, "failed", p.amount)
            return "failed"

    # --- reads -------------------------------------------------------------------------

    def payment(self, ref: str) -> PaymentRecord | None:
        return self._get(ref)

    def by_key(self, idempotency_key: str) -> PaymentRecord | None:
        return self._by_key(idempotency_key)

    def knows_key(self, idempotency_key: str) -> bool:
        return self._db.execute("SELECT 1 FROM payments WHERE idempotency_key = ?",
                                (idempotency_key,)).fetchone() is not None

    def entries(self, ref: str | None = None, kind: str | None = None) -> list[LedgerEntry]:
        sql, args = "SELECT * FROM ledger", []
        where = []
        if ref is not None:
            where.append("ref = ?")
            args.append(ref)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [LedgerEntry(r["kind"], r["ref"], r["amount"], r["currency"], r["last4"],
                            r["idempotency_key"], datetime.fromisoformat(r["at"]))
                for r in self._db.execute(sql + " ORDER BY seq", args)]

    # --- helpers -----------------------------------------------------------------------

    def _get(self, ref: str) -> PaymentRecord | None:
        return _record(self._db.execute("SELECT * FROM payments WHERE ref = ?", (ref,)).fetchone())

    def _by_key(self, key: str) -> PaymentRecord | None:
        return _record(self._db.execute("SELECT * FROM payments WHERE idempotency_key = ?",
                                        (key,)).fetchone())

    def _set_state(self, ref: str, state: PaymentState) -> None:
        self._db.execute("UPDATE payments SET state = ? WHERE ref = ?", (state, ref))

    def _append_for(self, p: PaymentRecord, kind: LedgerKind, amount: int) -> None:
        self._append(kind, p.ref, amount, p.currency, p.last4, p.idempotency_key, _now())

    def _append(self, kind: LedgerKind, ref: str, amount: int, currency: str, last4: str,
                key: str, at: str) -> None:
        self._db.execute(
            "INSERT INTO ledger (kind, ref, amount, currency, last4, idempotency_key, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (kind, ref, amount, currency, last4, key, at))


def _record(row: sqlite3.Row | None) -> PaymentRecord | None:
    if row is None:
        return None
    return PaymentRecord(row["ref"], row["idempotency_key"], row["state"], row["amount"],
                         row["currency"], row["last4"], row["brand"], row["card_token"],
                         row["refunded"], bool(row["answered_pending"]),
                         datetime.fromisoformat(row["created_at"]))
