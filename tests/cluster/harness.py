"""A real multi-process platform on loopback, for the scale-out and fault tests (and scripts).

    with Cluster(web=2, ray_nodes=2) as cl:       # Redis + the sandbox payment gateway +
        cl.web[0].url                             # Ray head + Ray worker + 2 web
        cl.redis.kill9(); cl.restart_redis()      # same AOF dir, same port
        cl.gateway.kill9(); cl.restart_gateway()  # same ledger, same port
        cl.audit()                                # python -m server.audit: (exit code, report)
        cl.web[1].kill9(); cl.web[1].start()      # same port
        cl.probe.actors("shows.")                 # Ray's actor table, from a helper process

Every process is a real one started here: `redis-server` (AOF, fsync always) through
`server.embedded.RedisServer`; the Ray nodes with the real CLI (`ray start --head ...
--block` and `ray start --address ... --block`, each in its own session, its own temp dir
and explicit ports, so several clusters - other test runs, other checkouts - can share the
machine); the web tier as `python -m server` subprocesses joining both by address.

Nothing here calls `ray.init` in the calling process (the pytest process may already run its
own in-process Ray for the other test folders): questions to the Ray cluster go to a
`ray_probe` child process. `close()` (also on any failure during start) ends exactly the
processes started here: it remembers each one's process tree and kills what is left of it,
and never runs `ray stop` (which would kill every Ray on the machine).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import psutil
import redis

from actors.client import ShowDirectory
from actors.pool import Pool, pool_key
from loadtest.scenario import ADMIN_KEY as SCENARIO_ADMIN_KEY
from server.core.embedded import RedisServer, SandboxGatewayServer, free_port

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
RAY = str(Path(PYTHON).with_name("ray"))
ADMIN_KEY = SCENARIO_ADMIN_KEY  # what loadtest.scenario.publish_rush sends
SECRET = "cluster-test-secret-shared-by-every-web-process"
GATEWAY_SECRET = "whsec_cluster_tests"
# Open payment intents are the reconciler's after this long (the web processes run it).
RECONCILE_AFTER_S = "2"
DATA_KEY = "Y2x1c3Rlci10ZXN0LWRhdGEta2V5LTMyLWJ5dGVzISE="  # base64 of 32 bytes (PII at rest)

# A slow 2-core machine shared with other work: generous, but bounded.
RAY_START_TIMEOUT_S = 120.0
WEB_START_TIMEOUT_S = 120.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "BMM_"))}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               # Ray's own "is my parent alive" check would not help: we kill by pid.
               **extra)
    return env


class _Owned:
    """A process we started in its own session; we remember its descendants as they
    appear so that nothing it spawned survives `kill_tree`."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.seen: dict[int, float] = {}  # pid -> create_time (guards against pid reuse)
        self.remember()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def remember(self) -> None:
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    self.seen.setdefault(p.pid, p.create_time())
        except psutil.Error:
            pass

    def kill_tree(self, grace_s: float = 10.0) -> None:
        """SIGTERM the root (Ray's `--block` then stops its node), wait, SIGKILL the rest."""
        self.remember()
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 0.01:
                    p.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # our own session only
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class RayNode:
    def __init__(self, base: Path, name: str, head_port: int, head: bool, num_cpus: int) -> None:
        self.name = name
        self.head = head
        self.head_port = head_port
        self.num_cpus = num_cpus
        self.dir = base / name
        self.proc: _Owned | None = None

    def start(self) -> RayNode:
        self.dir.mkdir(parents=True, exist_ok=True)
        # Every port explicit (the defaults - 10001, 52365, ... - clash with any other Ray
        # on the machine). Worker ports: a range of our own per node.
        lo = _free_range(64)
        cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1",
               "--num-cpus", str(self.num_cpus), "--disable-usage-stats",
               "--object-store-memory", str(200 * 1024 * 1024),
               "--node-manager-port", str(free_port()),
               "--object-manager-port", str(free_port()),
               "--metrics-export-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()),
               "--dashboard-agent-grpc-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port()),
               "--min-worker-port", str(lo), "--max-worker-port", str(lo + 63),
               "--resources", json.dumps({f"node:{self.name}": 1})]
        if self.head:
            cmd += ["--head", "--port", str(self.head_port), "--include-dashboard=false",
                    "--dashboard-port", str(free_port()),
                    "--temp-dir", str(self.dir / "tmp")]
        else:
            cmd += ["--address", f"127.0.0.1:{self.head_port}"]
        log = open(self.dir / "ray.log", "wb")  # noqa: SIM115
        self.proc = _Owned(subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True),
                           self.dir / "ray.log")
        log.close()
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise RuntimeError(f"ray node {self.name} exited:\n{self.proc.tail()}")
        self.proc.remember()
        return "This command will now block forever" in self.proc.tail(200)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill_tree()


class WebProcess:
    """`python -m server` joining the cluster's Redis and Ray head; restartable on its port."""

    def __init__(self, base: Path, index: int, redis_url: str, ray_address: str,
                 port: int | None = None, extra_env: dict[str, str] | None = None,
                 gateway_url: str = "") -> None:
        self.index = index
        self.gateway_url = gateway_url
        self.port = port or free_port()
        self.redis_url = redis_url
        self.ray_address = ray_address
        self.dir = base / f"web{index}"
        self.extra_env = extra_env or {}
        self.proc: _Owned | None = None
        self.starts = 0
        self.last_ready: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> WebProcess:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        cmd = [PYTHON, "-m", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--redis-url", self.redis_url, "--ray-address", self.ray_address, "--no-seed",
               "--no-access-log"]
        # Rate limits off by default: every test customer comes from 127.0.0.1, so per-IP
        # limits would throttle the whole rush (tests/security and the on-sale tests cover
        # them). A test can turn them back on with extra_env.
        env = _env(BMM_DATA_DIR=str(self.dir / "data"), BMM_ADMIN_KEY=ADMIN_KEY,
                   BMM_SECRET=SECRET, BMM_DATA_KEY=DATA_KEY, BMM_SEED_DEMO="0",
                   BMM_RATE_LIMITS="false", BMM_HOLDER_CAPS="false",
                   BMM_GATEWAY_URL=self.gateway_url,
                   BMM_GATEWAY_WEBHOOK_SECRET=GATEWAY_SECRET,
                   BMM_RECONCILE_AFTER_S=RECONCILE_AFTER_S, **self.extra_env)
        log = open(self.dir / f"web-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = _Owned(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True),
                           self.dir / f"web-{self.starts}.log")
        log.close()
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise RuntimeError(f"web process {self.index} exited:\n{self.proc.tail()}")
        for path in ("/readyz", "/healthz"):
            try:
                with urllib.request.urlopen(self.url + path, timeout=3) as resp:
                    return resp.status == 200
            except urllib.error.HTTPError as exc:
                if exc.code == 404 and path == "/readyz":
                    continue  # no readiness endpoint (yet): liveness will do
                return False
            except OSError:
                return False
        return False

    def wait_ready(self, timeout: float = WEB_START_TIMEOUT_S) -> WebProcess:
        try:
            _wait(self.ready, timeout, f"web process {self.index} on port {self.port}")
        except TimeoutError as exc:
            assert self.proc is not None
            raise TimeoutError(f"{exc}; its log ends:\n{self.proc.tail()}") from None
        return self

    def kill9(self) -> None:
        """Crash it: SIGKILL, no shutdown handlers, sockets reset."""
        assert self.proc is not None
        if self.proc.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill_tree(grace_s=20.0)


class Cluster:
    def __init__(self, web: int = 2, ray_nodes: int = 2, cpus_per_node: int = 1,
                 base: Path | None = None, web_env: dict[str, str] | None = None) -> None:
        # Short base path: Ray's unix sockets live under it (108-byte limit).
        self._own_base = base is None
        self.base = Path(base or tempfile.mkdtemp(prefix="bmmc-", dir="/tmp"))
        self.n_web = web
        self.n_ray = ray_nodes
        self.cpus_per_node = cpus_per_node
        self.web_env = web_env or {}
        self.redis: RedisServer | None = None
        self.gateway: SandboxGatewayServer | None = None
        self.nodes: list[RayNode] = []
        self.web: list[WebProcess] = []
        self._probe: RayProbe | None = None
        self.head_port = free_port()

    @property
    def ray_address(self) -> str:
        return f"127.0.0.1:{self.head_port}"

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> Cluster:
        try:
            self.redis = RedisServer(self.base / "redis").start(timeout=30)
            self.gateway = SandboxGatewayServer(self.base / "gateway",
                                                webhook_secret=GATEWAY_SECRET).start()
            self._start_node("head")
            for i in range(1, self.n_ray):
                self._start_node(f"worker{i}")
            _wait(lambda: len(self.probe.nodes()) >= self.n_ray, RAY_START_TIMEOUT_S,
                  f"{self.n_ray} alive Ray nodes")
            for i in range(self.n_web):
                self.web.append(WebProcess(self.base, i, self.redis.url, self.ray_address,
                                           extra_env=dict(self.web_env),
                                           gateway_url=self.gateway.url).start())
            for w in self.web:
                w.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _start_node(self, name: str, attempts: int = 3) -> None:
        """Start one Ray node; on a machine shared with other work a port picked as free
        can be taken before Ray binds it, so a node that exits at start is tried again
        with fresh ports (a new head port for the head)."""
        for attempt in range(attempts):
            if name == "head" and attempt:
                self.head_port = free_port()
            node = RayNode(self.base / f"try{attempt}", name, self.head_port,
                           head=name == "head", num_cpus=self.cpus_per_node).start()
            self.nodes.append(node)
            try:
                _wait(node.ready, RAY_START_TIMEOUT_S, f"Ray node {name}")
                return
            except RuntimeError as exc:  # it exited
                node.stop()
                self.nodes.remove(node)
                if attempt == attempts - 1:
                    raise
                print(f"harness: Ray node {name} exited at start, retrying: {exc}")

    def add_node(self, name: str) -> str:
        """Start one more Ray worker node; returns its node id."""
        before = {n["node_id"] for n in self.probe.nodes()}
        self._start_node(name)
        _wait(lambda: len(self.probe.nodes()) > len(before), RAY_START_TIMEOUT_S,
              f"Ray node {name} to join")
        [node_id] = [n["node_id"] for n in self.probe.nodes() if n["node_id"] not in before]
        return node_id

    @property
    def pool_name(self) -> str:
        """The show-host pool the web processes use (actors/client.py names it)."""
        return ShowDirectory(self.redis_url).pool

    def pool(self) -> Pool:
        """The pool as recorded in Redis (by the first web process to start)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            raw = client.get(pool_key(self.pool_name))
        finally:
            client.close()
        assert raw, "no pool recorded yet"
        return msgspec.json.decode(raw, type=Pool)

    def restart_redis(self) -> None:
        """After a crash: the same data dir (its AOF) and the same port."""
        assert self.redis is not None
        self.redis = RedisServer(self.redis.data_dir, port=self.redis.port).start(timeout=60)

    def restart_gateway(self) -> None:
        """After a crash: the same ledger and the same port."""
        assert self.gateway is not None
        self.gateway.start()

    def audit(self, show_id: str | None = None) -> tuple[int, str]:
        """`python -m server.audit` over this cluster's Redis and gateway."""
        assert self.gateway is not None
        cmd = [PYTHON, "-m", "server.audit", "--redis-url", self.redis_url,
               "--gateway-url", self.gateway.url] + (["--show", show_id] if show_id else [])
        done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, timeout=120)
        return done.returncode, (done.stdout + done.stderr).decode()

    def restart_web(self, index: int) -> WebProcess:
        self.web[index].start()
        return self.web[index].wait_ready()

    @property
    def probe(self) -> RayProbe:
        if self._probe is None:
            self._probe = RayProbe(self.ray_address, self.base / "probe.log")
        return self._probe

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
        # All at once: each `ray start --block` takes its whole grace period (10 s) to
        # go on SIGTERM, and one after the other that was most of a module's teardown.
        with ThreadPoolExecutor(max_workers=8) as stopping:
            list(stopping.map(lambda w: w.stop(), self.web))
        with ThreadPoolExecutor(max_workers=8) as stopping:
            list(stopping.map(lambda n: n.stop(), self.nodes))
        if self.redis is not None:
            self.redis.stop()
        if self.gateway is not None:
            self.gateway.stop()
        if self._own_base and not os.environ.get("BMM_KEEP_CLUSTER_DIR"):
            shutil.rmtree(self.base, ignore_errors=True)

    def logs(self) -> str:
        """The tail of every process's log (for a failing test's report)."""
        parts = []
        for w in self.web:
            if w.proc:
                parts.append(f"--- web{w.index} (pid {w.proc.pid}) ---\n{w.proc.tail(30)}")
        for n in self.nodes:
            if n.proc:
                parts.append(f"--- ray {n.name} ---\n{n.proc.tail(15)}")
        return "\n".join(parts)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class RayProbe:
    """A child process connected to the cluster as a Ray driver, answering questions about
    it (Ray's actor and node tables from the GCS) as JSON lines over its stdin/stdout."""

    def __init__(self, address: str, log_path: Path) -> None:
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "tests.cluster.ray_probe", address], cwd=ROOT, env=_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True)
        self._owned = _Owned(self.proc, log_path)
        first = self._read(timeout=RAY_START_TIMEOUT_S)
        if first.get("ready") is not True:
            raise RuntimeError(f"ray probe failed: {first}")

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        import select

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("ray probe did not answer")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"ray probe exited:\n{self._owned.tail()}")
                return json.loads(line)

    def ask(self, op: str, timeout: float = 60.0, **args: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.proc.stdin.flush()
        answer = self._read(timeout)
        if "error" in answer:
            raise RuntimeError(f"ray probe: {answer['error']}")
        return answer["result"]

    def nodes(self) -> list[dict[str, Any]]:
        """Alive nodes: [{"node_id", "resources"}]."""
        return self.ask("nodes")

    def actors(self, prefix: str) -> list[dict[str, Any]]:
        """Alive actors named `prefix...`: [{"name", "pid", "node_id", "actor_id", "state"}]."""
        return self.ask("actors", prefix=prefix)

    def loaded(self, hosts: list[str]) -> dict[str, dict[str, Any]]:
        """Each show host's own answer: {"shows": [ids in its memory], "pid"}."""
        return self.ask("loaded", hosts=hosts, timeout=120.0)

    def inspect(self, host: str, show_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each show as `host` has it in memory (loading it if need be)."""
        return self.ask("inspect", host=host, show_ids=show_ids, timeout=120.0)

    def add_hosts(self, redis_url: str, count: int, node_id: str) -> list[str]:
        """Grow the platform's host pool by `count` hosts pinned to `node_id`."""
        return self.ask("add_hosts", redis_url=redis_url, count=count, node_id=node_id,
                        timeout=120.0)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin:
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._owned.kill_tree(grace_s=1.0)
        self._log.close()


def node_of_pid(pid: int) -> str | None:
    """The Ray node a worker process runs on, from the OS alone: the `--node_id` of the
    raylet it descends from (a worker is its raylet's child). None if there is none."""
    try:
        proc: psutil.Process | None = psutil.Process(pid)
        while proc is not None:
            cmd = proc.cmdline()
            if cmd and cmd[0].endswith("/raylet"):
                for arg in cmd:
                    if arg.startswith("--node_id="):
                        return arg.split("=", 1)[1]
            proc = proc.parent()
    except psutil.Error:
        return None
    return None


def _free_range(n: int) -> int:
    """The start of `n` consecutive ports that are free right now (best effort)."""
    import random
    import socket

    for _ in range(200):
        lo = random.randrange(20000, 30000 - n)
        try:
            socks = []
            for p in range(lo, lo + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return lo
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> None:
    """Poll a condition with a deadline (nothing here offers an event to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
