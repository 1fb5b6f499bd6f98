"""Settings from the environment (secrets never live in code or the repo)."""
from __future__ import annotations

import os

import msgspec

from actors.redis_conn import sentinel_url


class Settings(msgspec.Struct, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None     # None: start an embedded Redis in data_dir
    ray_address: str | None = None   # None: start a local Ray
    data_dir: str = ".data"
    seed_demo: bool = True
    # No usable secret lives in code: BMM_SECRET / BMM_ADMIN_KEY / BMM_DATA_KEY come from the
    # environment, or (embedded dev mode only) are generated once into data_dir (dev_secrets.py).
    secret: str = ""     # signs holder/booking tokens and e-tickets, keys the session cookie
    admin_key: str = ""  # platform admin: creates partners and their API keys ("" = nobody)
    # AES-256-GCM key for personal data at rest (server/core/pii.py): base64 of 32 bytes. Retired
    # keys (comma-separated) still decrypt old records after a rotation.
    data_key: str = ""
    data_keys_retired: tuple[str, ...] = ()
    # Browser origins allowed to open WebSockets besides the server's own host
    # (BMM_ALLOWED_ORIGINS, comma-separated, e.g. "https://bookmymovie.example").
    allowed_origins: tuple[str, ...] = ()
    # TLS: with both set, `python -m server` serves HTTPS/WSS (cookie Secure + HSTS).
    tls_cert: str | None = None
    tls_key: str | None = None
    # Mark the session cookie Secure (sent over HTTPS only): on behind TLS in production.
    cookie_secure: bool = False
    passivate_after_s: float = 60.0    # an idle show with no holds leaves its host's memory
    hosts_per_node: int = 0            # show hosts per Ray node (BMM_HOSTS_PER_NODE; 0 = its CPUs)
    # The access log keeps every error and slow request, and 1 in this many of the others
    # per route (the first always; BMM_ACCESS_LOG_EVERY, 1 = all): a line per hold was a
    # tenth of the web process's time under a rush, and the show's log and the metrics
    # already count every hold (server/ops/observability.py).
    access_log_every: int = 100
    # The event loop: uvloop's (libuv, C transports) or asyncio's own (BMM_UVLOOP=0).
    uvloop: bool = True
    # Notifications and partner webhooks (server/notify/notifications.py, server/partner/webhooks.py).
    workers: bool = True               # run the outbox workers in this web process
    smtp_host: str | None = None       # None: e-mails are logged, not sent
    smtp_port: int = 25
    smtp_from: str = "Book My Movie <no-reply@bookmymovie.local>"
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_timeout_s: float = 10.0
    notify_retry_s: float = 5.0        # e-mail retry: first delay, doubled per attempt
    notify_retry_max_s: float = 300.0
    webhook_retry_s: float = 5.0       # webhook retry: first delay, doubled per attempt
    webhook_retry_max_s: float = 3600.0
    webhook_max_attempts: int = 10
    webhook_timeout_s: float = 10.0
    # Deliver webhooks to loopback/private addresses too (development, tests); off: public
    # addresses only, against server-side request forgery (server/partner/ssrf.py).
    webhook_private_targets: bool = False
    outbox_claim_idle_s: float = 60.0  # take over a dead worker's events after this
    # Pricing (server/commerce/pricing.py): platform convenience fee and tax on every ticket.
    fee_fixed: int = 0   # minor units per ticket (BMM_FEE_FIXED)
    fee_bp: int = 0      # basis points of the ticket price after discounts (BMM_FEE_BP)
    tax_bp: int = 0      # basis points of (price after discounts + fee) (BMM_TAX_BP; 1800 = 18 %)
    # On-sale protection (server/onsale/ratelimit.py, server/onsale/waiting_room.py); env BMM_<NAME>.
    # Rate limits are GCRA buckets: a sustained rate per second plus a burst.
    rate_limits: bool = True
    trusted_proxies: str = ""          # CIDRs whose X-Forwarded-For is believed ("" = none)
    rl_ip_read_per_s: float = 100.0    # per client IP: GETs
    rl_ip_read_burst: int = 400
    rl_ip_write_per_s: float = 50.0    # per client IP: POST/PUT/PATCH/DELETE (holds, checkout)
    rl_ip_write_burst: int = 200
    rl_customer_write_per_s: float = 5.0  # per logged-in customer / queued visitor: writes
    rl_customer_write_burst: int = 30
    rl_partner_per_s: float = 100.0    # per partner API key
    rl_partner_burst: int = 500
    hold_max_inflight: int = 64        # hold requests in progress per web process (0 = no cap)
    # Holds slower than this on average shrink that cap (down to 4), faster ones grow it
    # back, so admitted holds stay near this latency when the server completes fewer of
    # them per second (0 = fixed cap; loadtest/shed.py runs with 150).
    hold_latency_target_ms: float = 0.0
    hold_cap_seats: int = 10           # seats one customer may hold at once on a show (0 = off)
    # The per-device and per-network caps of a show's hold policy (catalog.model.HoldPolicy).
    # Off only for load tests, whose clients all share one loopback address.
    holder_caps: bool = True
    # /metrics and /api/_stats: for the operators only (L4): a scraper that sends this token
    # as a bearer, or one on the machine itself (a loopback peer, not through a proxy).
    metrics_token: str = ""
    admission_ttl_s: int = 900         # how long a waiting-room admission stays valid
    # Open WebSockets (live seat map + queue position) per web process (M8): per client
    # address (as the rate limiter sees it) and in all; 0 = no cap.
    ws_per_client: int = 20            # BMM_WS_PER_CLIENT
    ws_total: int = 10_000             # BMM_WS_TOTAL
    # Payments: the gateway's HTTP API (None: `python -m server` starts the sandbox
    # gateway process, server/sandbox) and the secret its webhooks are signed with.
    gateway_url: str | None = None
    gateway_webhook_secret: str = ""
    reconcile: bool = True             # run the payment reconciler here (booking/reconciler.py)
    reconcile_after_s: float = 30.0    # an open intent untouched this long is the reconciler's
    # Tests only: the checkout step after which this process kills itself with SIGKILL
    # (checkout.CRASH_POINTS), to prove the reconciler repairs a crash at every step.
    crash_at: str = ""

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = {
            "host": os.environ.get("BMM_HOST"),
            "port": os.environ.get("BMM_PORT"),
            "redis_url": os.environ.get("BMM_REDIS_URL"),
            "ray_address": os.environ.get("BMM_RAY_ADDRESS"),
            "data_dir": os.environ.get("BMM_DATA_DIR"),
            "seed_demo": os.environ.get("BMM_SEED_DEMO"),
            "secret": os.environ.get("BMM_SECRET"),
            "admin_key": os.environ.get("BMM_ADMIN_KEY"),
            "data_key": os.environ.get("BMM_DATA_KEY"),
            "data_keys_retired": _split(os.environ.get("BMM_DATA_KEYS_RETIRED")),
            "allowed_origins": _split(os.environ.get("BMM_ALLOWED_ORIGINS")),
            "tls_cert": os.environ.get("BMM_TLS_CERT"),
            "tls_key": os.environ.get("BMM_TLS_KEY"),
            "webhook_private_targets": os.environ.get("BMM_WEBHOOK_PRIVATE_TARGETS"),
            "cookie_secure": os.environ.get("BMM_COOKIE_SECURE"),
            "smtp_host": os.environ.get("BMM_SMTP_HOST"),
            "smtp_port": os.environ.get("BMM_SMTP_PORT"),
            "smtp_from": os.environ.get("BMM_SMTP_FROM"),
            "smtp_username": os.environ.get("BMM_SMTP_USERNAME"),
            "smtp_password": os.environ.get("BMM_SMTP_PASSWORD"),
            "smtp_starttls": os.environ.get("BMM_SMTP_STARTTLS"),
            "fee_fixed": os.environ.get("BMM_FEE_FIXED"),
            "fee_bp": os.environ.get("BMM_FEE_BP"),
            "tax_bp": os.environ.get("BMM_TAX_BP"),
            "hosts_per_node": os.environ.get("BMM_HOSTS_PER_NODE"),
            "access_log_every": os.environ.get("BMM_ACCESS_LOG_EVERY"),
            "uvloop": os.environ.get("BMM_UVLOOP"),
            "gateway_url": os.environ.get("BMM_GATEWAY_URL"),
            "gateway_webhook_secret": os.environ.get("BMM_GATEWAY_WEBHOOK_SECRET"),
            "reconcile": os.environ.get("BMM_RECONCILE"),
            "reconcile_after_s": os.environ.get("BMM_RECONCILE_AFTER_S"),
            "crash_at": os.environ.get("BMM_CRASH_AT"),
            "metrics_token": os.environ.get("BMM_METRICS_TOKEN"),
            "ws_per_client": os.environ.get("BMM_WS_PER_CLIENT"),
            "ws_total": os.environ.get("BMM_WS_TOTAL"),
        }
        env.update({name: os.environ.get("BMM_" + name.upper()) for name in _ON_SALE})
        sentinels = os.environ.get("BMM_REDIS_SENTINELS")
        if sentinels and not env["redis_url"]:
            # Redis behind Sentinel: one URL naming the Sentinels and the master, which
            # every client (web, show actors, workers) resolves (actors/redis_conn.py).
            env["redis_url"] = sentinel_url(sentinels, os.environ.get("BMM_REDIS_MASTER", "mymaster"),
                                            int(os.environ.get("BMM_REDIS_DB", "0")),
                                            os.environ.get("BMM_REDIS_PASSWORD"))
        values = {k: v for k, v in env.items() if v is not None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return msgspec.convert(values, cls, strict=False)


_ON_SALE = ("rate_limits", "trusted_proxies", "rl_ip_read_per_s", "rl_ip_read_burst",
            "rl_ip_write_per_s", "rl_ip_write_burst", "rl_customer_write_per_s",
            "rl_customer_write_burst", "rl_partner_per_s", "rl_partner_burst",
            "hold_max_inflight", "hold_latency_target_ms", "hold_cap_seats",
            "holder_caps", "admission_ttl_s")


def _split(raw: str | None) -> list[str] | None:
    """A comma-separated environment list; None when unset."""
    if raw is None:
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]
