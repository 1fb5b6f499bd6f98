"""The edge: nginx in front of the web processes, shedding the hold path before Python (issue 7).

One aiohttp process is one event loop: a 429 it answers is still a full request through
aiohttp and the middlewares, and at 10× the hold capacity those answers alone saturate the
loop, so admitted holds wait (loadtest/RESULTS.md, "Issue 7"). nginx answers them instead,
in C, before a request reaches Python:

- `POST /api/shows/{id}/holds` goes through `limit_req` with one bucket per show (the show
  id captured from the path) at `hold_rate_per_s`, `burst` requests of slack, `nodelay`:
  over it, 429 with the project's error body (`overloaded`), `Retry-After` and the
  request id, answered by nginx itself. Set the rate a little under the measured hold
  capacity of the web tier (loadtest/shed.py --edge uses 0.8×).
- Before that bucket, one per show *and client address* (`client_hold_rate_per_s`,
  `client_hold_burst`; L6): nginx charges a request to its zones only when all of them let
  it through, so a client flooding a show is shed by its own bucket and takes at most its
  own rate from the show's, which stays for the other clients. 0 turns it off (a load
  generator whose clients all share one address).
- Everything else is proxied as is: HTTP/1.1 with keep-alive to the upstreams, WebSockets
  (`Upgrade`/`Connection`, hour-long read timeouts on the live sockets), `Host`,
  `X-Forwarded-For` (appended: the web tier believes it only from `BMM_TRUSTED_PROXIES`, read
  from the right), `X-Forwarded-Proto`, and `X-Request-Id` (the client's when valid, else
  nginx's own, so the edge's and the app's logs share it).
- Optionally a ceiling on all holds together (`total_hold_rate_per_s`: a second bucket,
  shared by every show, for when several shows are on sale at once: the web tier's
  capacity is not per show) and `limit_conn` per client address (`conn_per_client`).

nginx runs unprivileged from a prefix directory (config, pid, logs, temp files all in it):

    python -m server.edge --upstream 127.0.0.1:8080 --listen 0.0.0.0:8000 --hold-rate 450
    python -m server.edge ... --print          # only print the config

`Edge` starts and stops one for tests and benchmarks.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SHED_MESSAGE = "too many holds on this show right now; retry shortly"
CONN_MESSAGE = "too many requests from your address at once; retry shortly"

# A client's X-Request-Id is passed on (and quoted in the shed answer's JSON) only when it
# is what the app itself accepts (server/ops/observability.py): no quotes or backslashes can
# reach the body. Otherwise nginx's own $request_id (32 hex digits) is used.
_VALID_REQUEST_ID = r"^[A-Za-z0-9._~:-]{1,128}$"

_TEMPLATE = """\
# Book My Movie edge (rendered by server/edge.py; do not edit by hand)
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log {error_level};

events {{
    worker_connections {worker_connections};
}}

http {{
    server_tokens off;
    {access_log}
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    client_max_body_size {max_body};
    keepalive_requests 100000;

    upstream bmm_web {{
        least_conn;
{upstream_servers}
        keepalive {upstream_keepalive};
    }}

    # WebSockets: pass the upgrade on; otherwise an empty Connection keeps the upstream
    # connection alive.
    map $http_upgrade $bmm_connection {{
        default upgrade;
        ''      '';
    }}

    map $http_x_request_id $bmm_request_id {{
        "~{valid_request_id}" $http_x_request_id;
        default $request_id;
    }}

    # The hold path's bucket is per show; other methods on the path are not counted
    # (an empty key is not accounted).
    map $request_method $bmm_hold_key {{
        POST    $bmm_show;
        default '';
    }}
    # ... and per show and client address, checked first (L6).
    map $request_method $bmm_hold_client_key {{
        POST    "$bmm_show $binary_remote_addr";
        default '';
    }}
    # nginx's 429s: `overloaded` when the hold path sheds, `rate_limited` (as the app's
    # per-client limits) when a client has too many requests open (limit_conn).
    map $limit_conn_status $bmm_shed_code {{
        REJECTED rate_limited;
        default  overloaded;
    }}
    map $limit_conn_status $bmm_shed_message {{
        REJECTED "{conn_message}";
        default  "{message}";
    }}

    map $request_method $bmm_hold_all {{
        POST    all;
        default '';
    }}

{timing_format}    limit_req_zone $bmm_hold_key zone=bmm_holds:{zone_size} rate={hold_rate};
{client_zone}{total_zone}    limit_req_status 429;
    limit_req_log_level {shed_log_level};
{conn_zone}
    server {{
        listen {listen};

        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $bmm_connection;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-Id $bmm_request_id;
        proxy_connect_timeout 5s;
        proxy_read_timeout {read_timeout_s}s;
        proxy_send_timeout {read_timeout_s}s;
{conn_limit}
        error_page 429 = @bmm_overloaded;

        location ~ ^/api/shows/(?<bmm_show>[^/]+)/holds$ {{
{client_limit}            limit_req zone=bmm_holds burst={hold_burst} nodelay;
{total_limit}{timing_log}            proxy_pass http://bmm_web;
        }}

        # The live sockets (seat map, waiting-room position) stay open for hours.
        location ~ /live$ {{
            proxy_read_timeout {ws_timeout_s}s;
            proxy_send_timeout {ws_timeout_s}s;
            proxy_buffering off;
            proxy_pass http://bmm_web;
        }}

        # The operators' endpoints are scraped on the machines, never through the edge.
        location = /metrics {{ return 404; }}
        location = /api/_stats {{ return 404; }}

        location / {{
            proxy_pass http://bmm_web;
        }}

        location @bmm_overloaded {{
            default_type application/json;
            add_header Retry-After {retry_after_s} always;
            add_header X-Request-Id $bmm_request_id always;
            add_header Cache-Control no-store always;
            return 429 '{{"error":{{"code":"$bmm_shed_code","message":"$bmm_shed_message",\
"retry_after_ms":{retry_after_ms},"request_id":"$bmm_request_id"}}}}';
        }}
    }}
}}
"""


def _hostport(addr: str) -> str:
    """`8080` -> `127.0.0.1:8080`; `host:port` and `[v6]:port` as given."""
    addr = addr.strip()
    if addr.isdigit():
        return f"127.0.0.1:{addr}"
    if addr.rsplit(":", 1)[-1].isdigit() and ":" in addr:
        return addr
    raise ValueError(f"not host:port: {addr!r}")


def _rate(per_s: float) -> str:
    """nginx takes whole requests per second, or per minute below 1/s."""
    return f"{round(per_s)}r/s" if per_s >= 1 else f"{max(1, round(per_s * 60))}r/m"


def render(listen_port: int, upstreams: Sequence[str], hold_rate_per_s: float,
           hold_burst: int, *, prefix: str | Path, listen_host: str = "127.0.0.1",
           total_hold_rate_per_s: float = 0, total_hold_burst: int | None = None,
           client_hold_rate_per_s: float = 10, client_hold_burst: int = 20,
           conn_per_client: int = 0, retry_after_s: int = 1, workers: int = 1,
           worker_connections: int = 4096, upstream_keepalive: int = 128,
           read_timeout_s: int = 60, ws_timeout_s: int = 3600, max_body: str = "1m",
           access_log: bool = False, hold_timing_log: bool = False,
           shed_log_level: str = "info", error_level: str = "warn") -> str:
    """The nginx config for an edge listening on `listen_host:listen_port`, proxying to
    `upstreams` (`host:port` of each web process) and shedding holds beyond
    `hold_rate_per_s` per show (+ `hold_burst`) and, when `total_hold_rate_per_s` is set,
    beyond that many for all shows together (+ `total_hold_burst`, default `hold_burst`).
    Before the show's bucket each client address has its own per show,
    `client_hold_rate_per_s` (+ `client_hold_burst`; 0: none), so that one client's flood
    cannot empty the show's bucket for the others.
    Every path it writes is under `prefix`.
    `shed_log_level` is the level of nginx's line per shed request: below `error_level`
    (the default) keeps thousands a second out of the error log. `hold_timing_log`
    writes `logs/holds.log`: `$msec $status $request_time $upstream_response_time` of
    every hold the edge let through (shed ones are answered elsewhere and not logged), so
    a benchmark can read the admitted holds' latency as nginx saw it."""
    if not upstreams:
        raise ValueError("at least one upstream")
    if hold_rate_per_s <= 0 or hold_burst < 0:
        raise ValueError("hold rate must be > 0 and burst >= 0")
    prefix = str(Path(prefix).resolve())
    if any(c in prefix for c in " ;{}'\"\\"):
        raise ValueError(f"unsafe prefix for nginx: {prefix!r}")
    if total_hold_rate_per_s < 0:
        raise ValueError("total hold rate must be >= 0 (0: none)")
    if client_hold_rate_per_s < 0 or client_hold_burst < 0:
        raise ValueError("client hold rate and burst must be >= 0 (rate 0: none)")
    listen = f"[{listen_host}]:{listen_port}" if ":" in listen_host else \
        f"{listen_host}:{listen_port}"
    return _TEMPLATE.format(
        prefix=prefix, workers=workers, worker_connections=worker_connections,
        error_level=error_level,
        access_log=(f"access_log {prefix}/logs/access.log;" if access_log else "access_log off;"),
        max_body=max_body,
        upstream_servers="\n".join(f"        server {_hostport(u)};" for u in upstreams),
        upstream_keepalive=upstream_keepalive, valid_request_id=_VALID_REQUEST_ID,
        zone_size="10m", hold_rate=_rate(hold_rate_per_s),
        client_zone=(f"    limit_req_zone $bmm_hold_client_key zone=bmm_holds_client:10m "
                     f"rate={_rate(client_hold_rate_per_s)};\n"
                     if client_hold_rate_per_s else ""),
        client_limit=(f"            limit_req zone=bmm_holds_client burst={client_hold_burst} "
                      "nodelay;\n" if client_hold_rate_per_s else ""),
        total_zone=(f"    limit_req_zone $bmm_hold_all zone=bmm_holds_all:1m "
                    f"rate={_rate(total_hold_rate_per_s)};\n" if total_hold_rate_per_s else ""),
        total_limit=("            limit_req zone=bmm_holds_all burst="
                     f"{hold_burst if total_hold_burst is None else total_hold_burst} nodelay;\n"
                     if total_hold_rate_per_s else ""), shed_log_level=shed_log_level,
        conn_zone=("    limit_conn_zone $binary_remote_addr zone=bmm_conn:10m;\n"
                   "    limit_conn_status 429;\n" if conn_per_client else ""),
        conn_limit=(f"        limit_conn bmm_conn {conn_per_client};\n"
                    if conn_per_client else ""),
        timing_format=("    log_format bmm_timing '$msec $status $request_time "
                       "$upstream_response_time';\n" if hold_timing_log else ""),
        timing_log=(f"            access_log {prefix}/logs/holds.log bmm_timing buffer=64k "
                    "flush=1s;\n" if hold_timing_log else ""),
        listen=listen, read_timeout_s=read_timeout_s, ws_timeout_s=ws_timeout_s,
        hold_burst=hold_burst, retry_after_s=retry_after_s,
        retry_after_ms=retry_after_s * 1000, message=SHED_MESSAGE,
        conn_message=CONN_MESSAGE)


def nginx_binary() -> str:
    """nginx from PATH, else Debian's /usr/sbin/nginx (not on a normal user's PATH)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
                                      else None)
    if found is None:
        raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx)")
    return found


def prepare_prefix(prefix: Path) -> None:
    """The directories nginx writes to. When started as root nginx's workers run as
    `nobody`, so the prefix must be traversable (nginx makes and chowns the temp dirs)."""
    for sub in ("", "logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
        (prefix / sub).chmod(0o755)


def command(prefix: Path, conf: Path) -> list[str]:
    return [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "logs/error.log"),
            "-g", "daemon off;"]


class Edge:
    """One nginx edge in a temp prefix dir, for tests and benchmarks:
    `Edge(port, ["127.0.0.1:8080"], 400, 40).start()` ... `.stop()`."""

    def __init__(self, listen_port: int, upstreams: Sequence[str], hold_rate_per_s: float,
                 hold_burst: int, **options: object) -> None:
        self.port = listen_port
        self.url = f"http://127.0.0.1:{listen_port}"
        self.prefix = Path(tempfile.mkdtemp(prefix="bmm-edge-"))
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(render(listen_port, upstreams, hold_rate_per_s, hold_burst,
                                    prefix=self.prefix, **options))  # type: ignore[arg-type]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> Edge:
        prepare_prefix(self.prefix)
        self.log = open(self.prefix / "logs/stderr.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(command(self.prefix, self.conf), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop(keep_files=True)
                    raise RuntimeError(f"nginx did not start ({self.prefix}): "
                                       + self.errors()) from None
                time.sleep(0.05)

    def errors(self) -> str:
        out = []
        for name in ("logs/stderr.log", "logs/error.log"):
            path = self.prefix / name
            if path.exists():
                out.append(path.read_text(errors="replace"))
        return "\n".join(out).strip()

    def stop(self, keep_files: bool = False) -> None:
        """Fast shutdown of our nginx (SIGTERM to its master, which stops its workers and
        flushes buffered logs); SIGKILL to its own process group if it does not go. Then the
        prefix dir is removed unless `keep_files` (the caller reads the logs, then calls
        `remove()`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        if not keep_files:
            self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.prefix, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    ap = argparse.ArgumentParser(description="Run nginx as the edge in front of the web "
                                             "processes (shedding the hold path).")
    ap.add_argument("--listen", default=env("BMM_EDGE_LISTEN", "127.0.0.1:8000"),
                    help="host:port to listen on (BMM_EDGE_LISTEN; default 127.0.0.1:8000)")
    ap.add_argument("--upstream", action="append",
                    help="a web process, host:port (repeatable; BMM_EDGE_UPSTREAMS, "
                         "comma-separated; default 127.0.0.1:8080)")
    ap.add_argument("--hold-rate", type=float, default=float(env("BMM_EDGE_HOLD_RATE", "400")),
                    help="holds per second per show let through (BMM_EDGE_HOLD_RATE; 400)")
    ap.add_argument("--hold-burst", type=int, default=int(env("BMM_EDGE_HOLD_BURST", "50")),
                    help="holds over the rate let through at once (BMM_EDGE_HOLD_BURST; 50)")
    ap.add_argument("--total-hold-rate", type=float,
                    default=float(env("BMM_EDGE_TOTAL_HOLD_RATE", "0")),
                    help="holds per second for all shows together (BMM_EDGE_TOTAL_HOLD_RATE; "
                         "0: no such ceiling)")
    ap.add_argument("--total-hold-burst", type=int,
                    default=int(env("BMM_EDGE_TOTAL_HOLD_BURST", "0")) or None,
                    help="burst of that ceiling (default: --hold-burst)")
    ap.add_argument("--client-hold-rate", type=float,
                    default=float(env("BMM_EDGE_CLIENT_HOLD_RATE", "10")),
                    help="holds per second per show from one client address, checked before "
                         "the show's bucket (BMM_EDGE_CLIENT_HOLD_RATE; 10; 0: none)")
    ap.add_argument("--client-hold-burst", type=int,
                    default=int(env("BMM_EDGE_CLIENT_HOLD_BURST", "20")),
                    help="burst of that limit (BMM_EDGE_CLIENT_HOLD_BURST; 20)")
    ap.add_argument("--conn-per-client", type=int,
                    default=int(env("BMM_EDGE_CONN_PER_CLIENT", "0")),
                    help="concurrent requests per client address (0: no limit)")
    ap.add_argument("--workers", type=int, default=int(env("BMM_EDGE_WORKERS", "1")),
                    help="nginx worker processes (BMM_EDGE_WORKERS; 1)")
    ap.add_argument("--prefix", default=env("BMM_EDGE_DIR", ".data/edge"),
                    help="directory for config, pid, logs, temp files (BMM_EDGE_DIR)")
    ap.add_argument("--access-log", action="store_true", help="write logs/access.log")
    ap.add_argument("--print", action="store_true", help="print the config and exit")
    args = ap.parse_args(argv)
    upstreams = args.upstream or [u for u in env("BMM_EDGE_UPSTREAMS", "127.0.0.1:8080")
                                  .split(",") if u.strip()]
    host, _, port = args.listen.rpartition(":")
    prefix = Path(args.prefix).resolve()
    text = render(int(port), upstreams, args.hold_rate, args.hold_burst, prefix=prefix,
                  listen_host=(host or "0.0.0.0").strip("[]"),
                  total_hold_rate_per_s=args.total_hold_rate,
                  total_hold_burst=args.total_hold_burst,
                  client_hold_rate_per_s=args.client_hold_rate,
                  client_hold_burst=args.client_hold_burst,
                  conn_per_client=args.conn_per_client, workers=args.workers,
                  access_log=args.access_log)
    if args.print:
        sys.stdout.write(text)
        return
    prepare_prefix(prefix)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    cmd = command(prefix, conf)
    test = subprocess.run([*cmd[:-2], "-t", "-q"], capture_output=True, text=True)
    if test.returncode:
        sys.exit(test.stderr.strip() or "nginx -t failed")
    print(f"edge: nginx on {args.listen} -> {', '.join(upstreams)}; holds {args.hold_rate:g}/s "
          f"per show, burst {args.hold_burst}; config {conf}", flush=True)
    os.execv(cmd[0], cmd)  # nginx itself in the foreground: signals go straight to it


if __name__ == "__main__":
    main()
