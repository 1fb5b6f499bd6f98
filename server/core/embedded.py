"""Servers the platform (or a test) starts for itself.

`RedisServer`: AOF on, fsync on every write. `appendfsync always` is what makes an
acknowledged booking survive `kill -9` of Redis; the show actors' group commit keeps it
cheap (one fsync per batch, not per seat).

`SandboxGatewayServer`: the sandbox payment gateway as its own process
(`python -m server.sandbox`), its ledger in SQLite under `data_dir`, committed before
every answer: what was charged survives `kill -9` of a web process or of the gateway.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ChildProcess:
    """A server process this one started: crashed on purpose, or stopped."""

    proc: subprocess.Popen[bytes] | None = None

    def kill9(self) -> None:
        """Crash it (SIGKILL): only what it made durable before answering survives (Redis:
        the fsynced AOF; the gateway: every answered call's ledger entry)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()


class RedisServer(_ChildProcess):
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()  # redis-server chdirs into it
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--appendonly", "yes",
                "--appendfsync", "always", "--save", "",
                "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + timeout
        while True:
            try:
                # PING answers while the AOF is still loading; wait until it is done.
                if client.info("persistence").get("loading") == 0:
                    break
            except redis.exceptions.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.data_dir}/redis.log")
            time.sleep(0.02)
        client.close()
        return self



class SandboxGatewayServer(_ChildProcess):
    """`python -m server.sandbox` on 127.0.0.1:`port`, its ledger and log
    (`gateway.log`) in `data_dir`. A new instance on the same data_dir (and port) after
    `kill9()` or `stop()` has the whole ledger. `webhook_secret` defaults to a random one."""

    def __init__(self, data_dir: Path, port: int | None = None,
                 webhook_secret: str | None = None, hang_s: float = 120.0,
                 webhook_url: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.webhook_secret = webhook_secret or secrets.token_hex(16)
        self.hang_s = hang_s
        self.webhook_url = webhook_url
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "gateway.log"

    def start(self, timeout: float = 15.0) -> SandboxGatewayServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "server.sandbox", "--host", "127.0.0.1",
               "--port", str(self.port), "--data-dir", str(self.data_dir),
               "--hang-s", repr(float(self.hang_s))]
        if self.webhook_url:
            cmd += ["--webhook-url", self.webhook_url]
        root = str(Path(__file__).resolve().parents[2])  # the repo: `server` importable
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "BMM_GATEWAY_WEBHOOK_SECRET": self.webhook_secret,
               "PYTHONPATH": root + (os.pathsep + path if path else "")}
        with open(self.log_path, "ab") as log:  # appended to: one log across restarts
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(f"the sandbox gateway did not start; see {self.log_path}")
            time.sleep(0.02)
        return self

    def _healthy(self) -> bool:
        """/healthz answers, from our process (not an earlier one still on the port)."""
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                return resp.status == 200 and json.load(resp).get("pid") == self.proc.pid
        except (OSError, ValueError):  # URLError, refused, reset, timeout, bad JSON
            return False

