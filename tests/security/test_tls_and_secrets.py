"""TLS when a certificate is configured, and secrets only from the environment.

TLS: a self-signed certificate made here; the app served over it exactly as
`python -m server` does (tls.configure -> TCPSite with the SSLContext); fetched over https
and wss trusting that certificate only. Secrets: the embedded dev mode generates them once
into data_dir (0600); any other mode refuses to start without them."""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import ssl
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect

from server.core import dev_secrets
from server.core import tls
from server.app import create_app
from server.core.embedded import RedisServer
from server.core.settings import Settings

from ..api.builders import PublishedShow
from ..api.conftest import TEST_DATA_KEY

ROOT = Path(__file__).resolve().parents[2]


def make_cert(where: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsServer:
    def __init__(self, url: str, cert: Path, settings: Settings) -> None:
        self.url, self.cert, self.settings = url, cert, settings

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture
async def tls_server(redis_server: RedisServer, ray_cluster: None,
                     tmp_path: Path) -> AsyncIterator[TlsServer]:
    cert, key = make_cert(tmp_path)
    settings, context = tls.configure(Settings(
        seed_demo=False, secret="test-secret-for-tls", admin_key="test-admin-key",
        data_key=TEST_DATA_KEY, workers=False, data_dir=str(tmp_path / "data"),
        tls_cert=str(cert), tls_key=str(key)))
    assert context is not None
    runner = web.AppRunner(create_app(settings, redis_server.url))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield TlsServer(f"127.0.0.1:{port}", cert, settings)
    await runner.cleanup()


async def test_https_with_hsts_and_secure_cookie(tls_server: TlsServer) -> None:
    assert tls_server.settings.cookie_secure
    conn = aiohttp.TCPConnector(ssl=tls_server.client_context())
    async with aiohttp.ClientSession(connector=conn) as http:
        async with http.get(f"https://{tls_server.url}/healthz") as resp:
            assert resp.status == 200
            assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
        async with http.post(f"https://{tls_server.url}/api/accounts", json={
                "email": f"tls-{uuid.uuid4().hex[:8]}@example.test",
                "password": "a long password", "name": "T"},
                headers={"Origin": f"https://{tls_server.url}"}) as resp:
            assert resp.status == 201, await resp.text()
            cookie = resp.headers["Set-Cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie, cookie
    # Only our certificate is trusted: the default store refuses the self-signed one...
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"https://{tls_server.url}/healthz")
    # ...and plain HTTP to the TLS port gets no answer.
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            await http.get(f"http://{tls_server.url}/healthz")


async def test_wss_live_seat_map_over_tls(tls_server: TlsServer, show: PublishedShow) -> None:
    url = f"wss://{tls_server.url}/api/shows/{show.show_id}/live"
    async with connect(url, ssl=tls_server.client_context(),
                       origin=f"https://{tls_server.url}") as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"


async def test_plain_http_headers(api: aiohttp.ClientSession) -> None:
    async with api.get("/healthz") as resp:
        assert "Strict-Transport-Security" not in resp.headers  # HSTS over TLS only
        assert resp.headers["Server"] == "BookMyMovie"  # no software versions
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
    async with api.get("/api/cities") as resp:
        assert resp.headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


def test_one_of_cert_and_key_is_a_mistake(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path)
    with pytest.raises(ValueError):
        tls.configure(Settings(tls_cert=str(cert)))
    assert tls.configure(Settings()) == (Settings(), None)


# --- secrets -------------------------------------------------------------------------------

def test_dev_mode_generates_secrets_once_with_mode_0600(tmp_path: Path) -> None:
    first = dev_secrets.resolve(Settings(data_dir=str(tmp_path)))
    path = tmp_path / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.secret) >= 32 and len(first.admin_key) >= 16 and first.data_key
    again = dev_secrets.resolve(Settings(data_dir=str(tmp_path)))
    assert (again.secret, again.admin_key, again.data_key) == (
        first.secret, first.admin_key, first.data_key)
    # What the environment sets wins over the file.
    chosen = dev_secrets.resolve(Settings(data_dir=str(tmp_path), admin_key="x" * 20))
    assert chosen.admin_key == "x" * 20 and chosen.secret == first.secret
    # A file from before the data key existed keeps its secrets and gains a data key.
    older = tmp_path / "older"
    older.mkdir()
    (older / "secrets.json").write_text(json.dumps({"secret": "s" * 40, "admin_key": "a" * 20}))
    upgraded = dev_secrets.resolve(Settings(data_dir=str(older)))
    assert (upgraded.secret, upgraded.admin_key) == ("s" * 40, "a" * 20) and upgraded.data_key
    # Another data dir, other secrets: nothing is a constant in the code.
    other = dev_secrets.resolve(Settings(data_dir=str(tmp_path / "other")))
    assert other.secret != first.secret and other.data_key != first.data_key


def test_with_a_real_redis_missing_secrets_refuse(tmp_path: Path) -> None:
    base = Settings(redis_url="redis://127.0.0.1:1/0", data_dir=str(tmp_path))
    with pytest.raises(dev_secrets.MissingSecrets, match="BMM_SECRET"):
        dev_secrets.resolve(base)
    assert not (tmp_path / "secrets.json").exists()
    with pytest.raises(dev_secrets.MissingSecrets, match="at least"):
        dev_secrets.resolve(Settings(redis_url="redis://x", secret="short",
                                     admin_key="y" * 20, data_key=TEST_DATA_KEY))
    with pytest.raises(ValueError):
        dev_secrets.resolve(Settings(redis_url="redis://x", secret="s" * 20,
                                     admin_key="y" * 20, data_key="not-a-key"))
    ok = Settings(redis_url="redis://x", secret="s" * 20, admin_key="y" * 20,
                  data_key=TEST_DATA_KEY)
    assert dev_secrets.resolve(ok) == ok
    # L17: the deployment example's placeholder passed the length check
    example = yaml_value(Path(__file__).parents[2] / "docs/deploy/kuberay/web.yaml", "BMM_SECRET")
    assert len(example) >= dev_secrets.MIN_SECRET_LEN
    with pytest.raises(dev_secrets.MissingSecrets, match="example value"):
        dev_secrets.resolve(msgspec.structs.replace(ok, secret=example))


def yaml_value(path: Path, name: str) -> str:
    line = next(x for x in path.read_text().splitlines() if x.strip().startswith(name + ":"))
    return line.split(":", 1)[1].strip().strip('"')


def test_the_procfile_web_does_not_seed_demo_data_into_a_real_redis() -> None:
    # L17: the Procfile's web seeded the demo partner (and its write key) into a real Redis.
    procfile = (Path(__file__).parents[2] / "Procfile").read_text()
    web = next(line for line in procfile.splitlines() if line.startswith("web:"))
    assert "--redis-url" in web and "--no-seed" in web


def test_python_m_server_refuses_without_secrets(tmp_path: Path) -> None:
    """The real entry point, before it starts anything (no Redis or Ray needed)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("BMM_SECRET", "BMM_ADMIN_KEY", "BMM_DATA_KEY")}
    env["BMM_DATA_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "server", "--redis-url",
                           "redis://127.0.0.1:1/0", "--port", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "BMM_SECRET" in done.stderr and "BMM_DATA_KEY" in done.stderr, done.stderr
