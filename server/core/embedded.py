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

    def pause(self) -> None:
        """Freeze it (SIGSTOP): its connections stay open, it answers nothing."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()


class RedisServer(_ChildProcess):
    def __init__(self, data_dir: Path, port: int | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()  # redis-server chdirs into it
        self.port = port or free_port()
        self.extra_args = extra_args or []
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
                *self.extra_args,
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


class RedisClusterServer:
    """A Redis Cluster on loopback: `masters` masters with `replicas` replicas each, every
    node a `RedisServer` (AOF, fsync always) with `--cluster-enabled yes`, joined by
    `redis-cli --cluster create`. `node_timeout_ms` is how long a master may be silent
    before its replica takes over (a production cluster keeps the default 15 s).

    Writes are acknowledged by a master before its replicas have them (asynchronous
    replication); `min_replicas_to_write` makes a master refuse writes while fewer replicas
    are connected, and the show hosts `WAIT` for a replica before they answer (DESIGN
    "Redis Cluster")."""

    def __init__(self, data_dir: Path, masters: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 2000, min_replicas_to_write: int | None = None
                 ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.masters, self.replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self.min_replicas_to_write = (min(1, replicas) if min_replicas_to_write is None
                                      else min_replicas_to_write)
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}/"

    def _node(self, i: int) -> RedisServer:
        # The bus port is named: the default (port + 10000) overflows for a random port.
        return RedisServer(
            self.data_dir / f"node{i}",
            extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-port", str(free_port()),
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                        "--min-replicas-to-write", str(self.min_replicas_to_write),
                        "--min-replicas-max-lag", "10"])

    def start(self, timeout: float = 60.0) -> RedisClusterServer:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found: apt-get install redis-tools")
        count = self.masters * (1 + self.replicas)
        self.nodes = [self._node(i).start() for i in range(count)]
        # A fresh node refuses writes until the cluster has replicas (min-replicas-to-
        # write); `--cluster create` makes the first `masters` nodes the masters.
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            timeout=timeout)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every live node says the cluster is ok, every slot is served, and every
        master has its replicas connected (a write needs `min_replicas_to_write` of them)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(self._healthy(n) for n in self.live_nodes()):
                    return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster in {self.data_dir} is not healthy")
            time.sleep(0.05)

    def _healthy(self, node: RedisServer) -> bool:
        client = redis.Redis(port=node.port, socket_timeout=2)
        try:
            info = client.execute_command("CLUSTER", "INFO").decode()
            fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
            if fields.get("cluster_state") != "ok" or fields.get("cluster_slots_ok") != "16384":
                return False
            role = client.info("replication")
            if role.get("role") != "master":
                return role.get("master_link_status") == "up"
            me = client.execute_command("CLUSTER", "MYID").decode()
            serves = any(s[2][2].decode() == me
                         for s in client.execute_command("CLUSTER", "SLOTS"))
            return not serves or int(role.get("connected_slaves", 0)) >= self.min_replicas_to_write
        finally:
            client.close()

    def live_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc and n.proc.poll() is None]

    def master_of(self, key: str) -> RedisServer:
        """The node serving `key`'s slot now."""
        client = redis.Redis(port=self.live_nodes()[0].port, socket_timeout=2)
        try:
            slot = client.execute_command("CLUSTER", "KEYSLOT", key)
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        finally:
            client.close()
        raise RuntimeError(f"no node serves {key!r}")

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        client = redis.Redis(port=master.port, socket_timeout=2)
        try:
            info = client.info("replication")
        finally:
            client.close()
        ports = {int(v["port"]) for k, v in info.items()
                 if k.startswith("slave") and isinstance(v, dict)}
        return [n for n in self.nodes if n.port in ports]

    def masters_now(self) -> list[RedisServer]:
        client = redis.Redis(port=self.live_nodes()[0].port, socket_timeout=2)
        try:
            ports = {int(s[2][1]) for s in client.execute_command("CLUSTER", "SLOTS")}
        finally:
            client.close()
        return [n for n in self.nodes if n.port in ports]

    def restart(self, node: RedisServer) -> RedisServer:
        """Start a killed node again on its port and data (it rejoins, as a replica of
        whoever took over its slots)."""
        i = self.nodes.index(node)
        self.nodes[i] = RedisServer(node.data_dir, port=node.port,
                                    extra_args=node.extra_args).start()
        return self.nodes[i]

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


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

