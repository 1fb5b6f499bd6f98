"""`python -m server`: the whole platform on one machine (local Ray, its own Redis, demo data).

`--workers N` runs N web processes on the same port (SO_REUSEPORT: the kernel spreads
connections over them). Redis and the Ray head are started once, by this process; the
other N-1 web processes are `python -m server` children that join them by address, so
every process reaches the same show hosts (the pool recorded in Redis).

Logging (server/ops/logs.py): BMM_LOG_FORMAT=json|text, BMM_LOG_LEVEL; written by a background
thread. With several web processes, metrics run in prometheus-client's multiprocess mode
over `<data_dir>/metrics` so that any process answers `/metrics` for all (server/ops/metrics.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys

import ray
from aiohttp import web

from server.core import dev_secrets
from server.core import tls
from server.core.eventloop import new_event_loop
from server.ops import logs
from server.core.runtime import Runtime
from server.core.settings import Settings

log = logging.getLogger("server")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run Book My Movie")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--ray-address", help="join this Ray cluster instead of a local one")
    parser.add_argument("--no-seed", action="store_true", help="skip the demo data")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("BMM_WEB_WORKERS", "1")),
                        help="web processes sharing the port (SO_REUSEPORT); default 1 (BMM_WEB_WORKERS)")
    parser.add_argument("--no-access-log", action="store_true",
                        help="do not log every request (aiohttp's access log)")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logs.configure()  # BMM_LOG_FORMAT, BMM_LOG_LEVEL; asynchronous (a queue and a thread)
    settings = Settings.from_env(
        host=args.host, port=args.port, redis_url=args.redis_url,
        ray_address=args.ray_address, seed_demo=False if args.no_seed else None,
    )
    try:
        settings = dev_secrets.resolve(settings)
        settings, ssl_context = tls.configure(settings)
    except (dev_secrets.MissingSecrets, ValueError, OSError) as exc:
        sys.exit(f"Book My Movie cannot start: {exc}")
    runtime = Runtime(settings).start()
    settings = runtime.settings  # with the payment gateway it started or was given
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # After Ray started (its processes must not inherit it), before prometheus_client
        # is imported (by .app); our web children inherit it.
        _metrics_dir(os.path.join(settings.data_dir, "metrics"))
    from server.ops import gc_pauses
    from server.app import create_app
    from server.ops.observability import AccessLogger

    workers: list[subprocess.Popen[bytes]] = []
    try:
        if args.workers > 1:
            workers = _start_workers(args, settings, runtime)
        app = create_app(settings, runtime.redis_url)
        if settings.seed_demo:
            from server.demo import seed_on_startup

            app.on_startup.append(seed_on_startup)
        scheme = "https" if ssl_context else "http"
        print(f"Book My Movie is up: {scheme}://{settings.host}:{settings.port}/"
              + (f" ({args.workers} web processes)" if workers else ""), flush=True)
        AccessLogger.every = max(1, settings.access_log_every)
        kwargs = ({"access_log": None} if args.no_access_log
                  else {"access_log_class": AccessLogger})
        gc_pauses.calm()  # full collections over live sockets paused the loop
        gc_pauses.watch()
        web.run_app(app, host=settings.host, port=settings.port, print=None,
                    reuse_port=bool(workers) or args.reuse_port, ssl_context=ssl_context,
                    loop=new_event_loop(settings.uvloop), **kwargs)
    finally:
        _stop_workers(workers)
        runtime.stop()


def _start_workers(args: argparse.Namespace, settings: Settings,
                   runtime: Runtime) -> list[subprocess.Popen[bytes]]:
    """N-1 more web processes on our port, joining our Redis and Ray head."""
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "server", "--host", settings.host, "--port", str(settings.port),
           "--redis-url", runtime.redis_url, "--ray-address", address, "--no-seed",
           "--workers", "1", "--reuse-port"]
    if args.no_access_log:
        cmd.append("--no-access-log")
    log.info("starting %d more web processes on port %d", args.workers - 1, settings.port)
    # The children join a real Redis, so they need the secrets in their environment
    # (generated ones included) rather than generating their own.
    env = {**os.environ, "BMM_SECRET": settings.secret, "BMM_ADMIN_KEY": settings.admin_key,
           "BMM_DATA_KEY": settings.data_key, "BMM_GATEWAY_URL": settings.gateway_url or "",
           "BMM_GATEWAY_WEBHOOK_SECRET": settings.gateway_webhook_secret}
    return [subprocess.Popen(cmd, env=env) for _ in range(args.workers - 1)]


def _metrics_dir(path: str) -> None:
    """Multiprocess metrics: one file per process in `path`, emptied of an earlier run's."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.abspath(path)


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in workers:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if workers:
        from server.ops.metrics import process_exited

        for proc in workers:
            process_exited(proc.pid)


if __name__ == "__main__":
    main()
