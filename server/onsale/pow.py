"""The proof of work a visitor solves to join a waiting room (issue 15): ALTCHA v1.

The challenge (`GET /api/shows/{id}/queue/challenge`) is made by the `altcha` library:
a random salt (carrying its expiry and the show id as parameters), a secret number drawn
from 0..max_number, `challenge = sha256(salt + number)` and `signature = HMAC-SHA256(key,
challenge)`, the key derived from the platform secret for this purpose only. The client
finds the number by trying 0, 1, 2, ... (max_number / 2 hashes on average; the browser's
solver is web/js/pow.js) and sends back base64(JSON {algorithm, challenge, number, salt,
signature}), which is what the ALTCHA widget sends too. Checking it costs the server two
hashes; a solution is accepted once (the join script remembers it in Redis until the
challenge expires, `replay_key`).

The cost is the waiting room's `challenge_max_number` (a partner raises it for a hot
on-sale): it is the only thing a bot pays per identity, since a client without a cookie
gets a new visitor id on every join.
"""
from __future__ import annotations

import base64
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import altcha

from server.accounts.users import derive_key
from server.onsale.keys import pow_used_key

ALGORITHM = "SHA-256"
DEFAULT_MAX_NUMBER = 100_000   # ~50,000 SHA-256 on average: a fraction of a second in a browser
MIN_MAX_NUMBER = 1_000
MAX_MAX_NUMBER = 20_000_000    # ~10 M hashes on average: tens of seconds on a phone
TTL_S = 300                    # a challenge must be solved and sent within this
MAX_PAYLOAD = 2_048            # characters of base64: a real payload is ~350


@lru_cache(maxsize=8)
def hmac_key(secret: str) -> bytes:
    return derive_key(secret, "waiting-room-pow")


def challenge(secret: str, show_id: str, max_number: int,
              now: float | None = None) -> dict[str, object]:
    """A fresh signed challenge for `show_id`, in ALTCHA's JSON shape
    (`algorithm`, `challenge`, `maxNumber`, `salt`, `signature`)."""
    expires = datetime.fromtimestamp(now if now is not None else time.time(), UTC) \
        + timedelta(seconds=TTL_S)
    made = altcha.create_challenge_v1(altcha.ChallengeOptionsV1(
        algorithm=ALGORITHM, max_number=max_number, hmac_key=hmac_key(secret),
        expires=expires, params={"show": show_id}))
    return made.to_dict()


class Checked:
    """A verified solution: the Redis key that marks it used, and for how long."""

    __slots__ = ("key", "ttl_ms")

    def __init__(self, key: str, ttl_ms: int) -> None:
        self.key, self.ttl_ms = key, ttl_ms


def check(secret: str, payload: str, show_id: str,
          now: float | None = None) -> Checked | str:
    """A `Checked` when `payload` solves a challenge this server made for `show_id` and
    that has not expired; otherwise why not (`malformed`, `expired`, `other_show`,
    `wrong_solution`). Whether it was used before is the join script's business."""
    if not payload or len(payload) > MAX_PAYLOAD:
        return "malformed"
    try:
        data = json.loads(base64.b64decode(payload, validate=True))
        fields = {k: data[k] for k in ("algorithm", "challenge", "number", "salt",
                                       "signature")}
    except (ValueError, TypeError, KeyError):
        return "malformed"
    if fields["algorithm"] != ALGORITHM or not isinstance(fields["number"], int) \
            or isinstance(fields["number"], bool) or fields["number"] < 0 \
            or not all(isinstance(fields[k], str) for k in ("challenge", "salt", "signature")):
        return "malformed"
    parsed = altcha.PayloadV1.from_dict(fields)  # type: ignore[arg-type]
    _, expires, params = parsed.parse_salt()
    if expires is None:
        return "malformed"
    if params.get("show") != [show_id]:
        return "other_show"
    now = now if now is not None else time.time()
    if expires < now:
        return "expired"
    try:
        ok, _ = altcha.verify_solution_v1(fields, hmac_key(secret), check_expires=False)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return "malformed"
    # the library compares with ==; the signature is checked again in constant time
    good = altcha.hmac_hex(ALGORITHM, fields["challenge"].encode(), hmac_key(secret))
    if not ok or not hmac.compare_digest(good, fields["signature"]):
        return "wrong_solution"
    ttl_ms = max(1_000, int((expires - now) * 1000) + 1_000)
    return Checked(pow_used_key(show_id, fields["challenge"]), ttl_ms)


def solve(made: dict[str, object]) -> str:
    """Solve a challenge the way a client does (tests and the load test): the payload."""
    found = altcha.solve_challenge_v1(str(made["challenge"]), str(made["salt"]), ALGORITHM,
                                      int(made["maxNumber"]))  # type: ignore[call-overload]
    if found is None:
        raise ValueError("challenge has no solution")
    return base64.b64encode(json.dumps({
        "algorithm": ALGORITHM, "challenge": made["challenge"], "number": found.number,
        "salt": made["salt"], "signature": made["signature"]}).encode()).decode()
