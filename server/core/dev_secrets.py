"""Where the platform's secrets come from: the environment, never the code.

Embedded development mode (`./bmm run`: no BMM_REDIS_URL) needs no setup: missing secrets
are generated once into `<data_dir>/secrets.json` (mode 0600) and reused, so sessions,
tickets and encrypted personal data survive restarts. Any other mode (a real Redis, i.e.
a deployment) refuses to start without BMM_SECRET, BMM_ADMIN_KEY and BMM_DATA_KEY.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from pathlib import Path

import msgspec

from server.core.settings import Settings
from server.core.pii import parse_key

log = logging.getLogger(__name__)
REQUIRED = {"secret": "BMM_SECRET", "admin_key": "BMM_ADMIN_KEY", "data_key": "BMM_DATA_KEY"}
MIN_SECRET_LEN = 16


class MissingSecrets(RuntimeError):
    pass


def _generate() -> dict[str, str]:
    return {"secret": secrets.token_urlsafe(32), "admin_key": secrets.token_urlsafe(24),
            "data_key": base64.b64encode(secrets.token_bytes(32)).decode()}


def _load_or_create(path: Path) -> dict[str, str]:
    stored: dict[str, str] = {}
    if path.exists():
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            stored = {k: v for k, v in loaded.items() if isinstance(v, str) and v}
    if all(k in stored for k in REQUIRED):
        return stored
    # Keep what is there (data sealed with an existing key must stay readable); add the rest.
    stored = {**_generate(), **stored}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 (never readable by others, even briefly); 0600 again if it existed.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(stored, out)
    os.chmod(path, 0o600)
    return stored


def resolve(settings: Settings) -> Settings:
    """Settings with every secret filled in, or MissingSecrets saying which to set."""
    missing = [env for field, env in REQUIRED.items() if not getattr(settings, field)]
    if not missing:
        _check(settings)
        return settings
    if settings.redis_url:
        raise MissingSecrets(
            "refusing to start without " + ", ".join(missing) + " in the environment "
            "(only the embedded development mode, without BMM_REDIS_URL, generates them)")
    path = Path(settings.data_dir).resolve() / "secrets.json"
    stored = _load_or_create(path)
    print(f"Development secrets (generated once, mode 0600): {path}", flush=True)
    filled = {f: stored[f] for f in REQUIRED if not getattr(settings, f)}
    settings = msgspec.structs.replace(settings, **filled)
    _check(settings)
    return settings


# Words of an example value left in place (L17: the KubeRay example's "change-me: 32+
# random bytes..." passed the length check, and a deployment could ship a public secret).
# (Long enough that a random secret never contains one by chance.)
_PLACEHOLDERS = ("change-me", "changeme", "change me", "replace-me", "example", "<",
                 "secret-here", "random bytes")


def _check(settings: Settings) -> None:
    for name, value in (("BMM_SECRET", settings.secret), ("BMM_ADMIN_KEY", settings.admin_key),
                        ("BMM_DATA_KEY", settings.data_key)):
        if any(p in value.lower() for p in _PLACEHOLDERS):
            raise MissingSecrets(f"{name} is an example value: put a random secret there "
                                 "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if len(settings.secret) < MIN_SECRET_LEN:
        raise MissingSecrets(f"BMM_SECRET must be at least {MIN_SECRET_LEN} characters")
    if len(settings.admin_key) < MIN_SECRET_LEN:
        raise MissingSecrets(f"BMM_ADMIN_KEY must be at least {MIN_SECRET_LEN} characters")
    parse_key(settings.data_key)
    for retired in settings.data_keys_retired:
        parse_key(retired)
