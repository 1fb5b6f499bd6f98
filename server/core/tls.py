"""TLS when a certificate is configured (BMM_TLS_CERT + BMM_TLS_KEY, PEM files)."""
from __future__ import annotations

import ssl

import msgspec

from server.core.settings import Settings


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """An SSLContext for the listening socket, or None to serve plain HTTP.
    One of the two set without the other is a mistake, not a reason to fall back to HTTP."""
    if not settings.tls_cert and not settings.tls_key:
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("set both BMM_TLS_CERT and BMM_TLS_KEY (or neither)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def enabled(settings: Settings) -> bool:
    return bool(settings.tls_cert and settings.tls_key)


def configure(settings: Settings) -> tuple[Settings, ssl.SSLContext | None]:
    """What `python -m server` serves with: over TLS the session cookie is Secure (HSTS
    follows from request.secure in security.py)."""
    context = server_context(settings)
    if context is not None:
        settings = msgspec.structs.replace(settings, cookie_secure=True)
    return settings, context
