"""Bring up what the web tier needs: Redis (embedded unless given), the sandbox payment
gateway (its own process unless a gateway URL is given) and Ray (local unless given)."""
from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import ray

from actors import redis_conn
from actors.pool import NAMESPACE

from server.core.embedded import RedisServer, SandboxGatewayServer
from server.core.settings import Settings
from server.core.embedded import free_port

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis_server: RedisServer | None = None
        self.gateway_server: SandboxGatewayServer | None = None
        self.redis_url = settings.redis_url or ""

    def start(self) -> Runtime:
        if not self.settings.redis_url:
            data = Path(self.settings.data_dir) / "redis"
            self.redis_server = RedisServer(data, port=_port_from(data)).start()
            self.redis_url = self.redis_server.url
            log.info("embedded Redis (AOF, fsync always) at %s, data in %s", self.redis_url, data)
        else:
            # Started side by side (Procfile): wait for Redis rather than fail.
            _retry(lambda: redis_conn.sync_client(self.redis_url).ping(), "Redis")
        self._gateway()
        if not ray.is_initialized():
            if self.settings.ray_address:
                _retry(lambda: ray.init(address=self.settings.ray_address, namespace=NAMESPACE),
                       "the Ray head")
            else:
                ray.init(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
        return self

    def _gateway(self) -> None:
        """No gateway URL: the sandbox gateway in its own process, its ledger in data_dir
        (a real deployment names its gateway with BMM_GATEWAY_URL)."""
        s = self.settings
        secret = s.gateway_webhook_secret or hmac.new(
            s.secret.encode(), b"sandbox gateway webhooks", hashlib.sha256).hexdigest()
        url = s.gateway_url
        if not url:
            data = Path(s.data_dir) / "gateway"
            self.gateway_server = SandboxGatewayServer(
                data, port=_port_from(data), webhook_secret=secret,
                webhook_url=f"http://127.0.0.1:{s.port}/api/payments/webhook").start()
            url = self.gateway_server.url
            log.info("sandbox payment gateway at %s, ledger in %s", url, data)
        self.settings = msgspec.structs.replace(s, gateway_url=url,
                                                gateway_webhook_secret=secret)

    def stop(self) -> None:
        if ray.is_initialized():
            ray.shutdown()
        if self.gateway_server:
            self.gateway_server.stop()
        if self.redis_server:
            self.redis_server.stop()


def _port_from(data: Path) -> int | None:
    """Reuse the embedded Redis port across restarts so a running browser keeps working."""
    marker = data / "port"
    if marker.exists():
        return int(marker.read_text())
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    marker.write_text(str(port))
    return port


def _retry(step: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            step()
            return
        except Exception as exc:  # connection refused, head not up yet, ...
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not reach {what}: {exc}") from exc
            log.info("waiting for %s (%s)", what, exc)
            time.sleep(1)
