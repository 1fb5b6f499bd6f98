"""Headless Locust run with an end-state check.

    python -m loadtest.run_locust                       # starts the embedded platform itself
    python -m loadtest.run_locust --host http://10.0.0.5:8080 --users 500 --run-time 2m

Writes Locust's CSV and HTML report to results/<timestamp>/, then checks the end state on
the server: no seat sold twice, every booking a client was given exists with its seats
booked, every hold the clients still own is held. Exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from server.core.embedded import free_port

from .scenario import call, publish_rush

ROOT = Path(__file__).resolve().parent.parent


def start_platform(data_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    # All Locust users share 127.0.0.1: per-IP limits and the in-flight cap off unless set.
    env = {"BMM_RATE_LIMITS": "0", "BMM_HOLD_MAX_INFLIGHT": "0", "BMM_HOLDER_CAPS": "0",
           **os.environ,
           "BMM_DATA_DIR": data_dir, "BMM_SEED_DEMO": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(host + "/api/cities", timeout=2).read()
            return proc, host
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the platform did not come up")


def check_end_state(host: str, ledger: Path, rush: dict) -> list[str]:
    entries = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    problems: list[str] = []
    booked_by_show: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for e in (e for e in entries if e["kind"] == "booking"):
        booked_by_show[e["show"]].update(e["seats"])
        req = urllib.request.Request(f"{host}/api/bookings/{e['booking_id']}",
                                     headers={"X-Booking-Token": e["token"],
                                              "Authorization": f"Bearer {e['token']}"})
        try:
            got = json.loads(urllib.request.urlopen(req, timeout=10).read())
            if sorted(got["seats"]) != sorted(e["seats"]):
                problems.append(f"booking {e['booking_id']}: seats {got['seats']} != {e['seats']}")
        except urllib.error.HTTPError as exc:
            problems.append(f"booking {e['booking_id']} the client was given: HTTP {exc.code}")
    done = {e["hold_id"] for e in entries if e["kind"] == "released"}
    done |= {e["hold_id"] for e in entries if e["kind"] == "booking"}
    now = dt.datetime.now(dt.UTC)
    for show in rush["show_ids"]:
        status = {s["id"]: s["status"] for s in call(host, "GET", f"/api/shows/{show}/seatmap")["seats"]}
        twice = [seat for seat, n in booked_by_show[show].items() if n > 1]
        if twice:
            problems.append(f"show {show}: seats sold twice: {twice}")
        lost = [seat for seat in booked_by_show[show] if status.get(seat) != "booked"]
        if lost:
            problems.append(f"show {show}: booked seats not booked on the server: {lost}")
    for e in (e for e in entries if e["kind"] == "hold"):
        expires = dt.datetime.fromisoformat(e["expires_at"].replace("Z", "+00:00"))
        if e["hold_id"] not in done and expires > now + dt.timedelta(seconds=5):
            status = {s["id"]: s["status"] for s in call(host, "GET", f"/api/shows/{e['show']}/seatmap")["seats"]}
            free = [s for s in e["seats"] if status.get(s) == "free"]
            if free:
                problems.append(f"hold {e['hold_id']}: seats {free} are free while the hold lives")
    counts = collections.Counter(e["kind"] for e in entries)
    print(f"end state: {counts['hold']} holds, {counts['booking']} bookings, "
          f"{counts['released']} releases seen by clients; {len(problems)} problems")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", help="a running platform (default: start one)")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--spawn-rate", type=float, default=50)
    ap.add_argument("--run-time", default="30s")
    ap.add_argument("--shows", type=int, default=1, help="hot shows in the on-sale")
    ap.add_argument("--results", default=str(ROOT / "results"))
    args = ap.parse_args()

    out = Path(args.results) / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    platform = None
    host = args.host
    with tempfile.TemporaryDirectory() as tmp:
        if not host:
            platform, host = start_platform(tmp)
        try:
            rush = publish_rush(host, shows=args.shows)
            ledger = out / "ledger.jsonl"
            env = {**os.environ, "BMM_RUSH": json.dumps(rush), "BMM_LEDGER": str(ledger)}
            cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest/locustfile.py"),
                   "--headless", "--host", host, "-u", str(args.users), "-r", str(args.spawn_rate),
                   "--run-time", args.run_time, "--csv", str(out / "locust"),
                   "--html", str(out / "report.html"), "--only-summary"]
            print("running:", " ".join(cmd[2:]), flush=True)
            subprocess.run(cmd, cwd=ROOT, env=env, check=False)
            problems = check_end_state(host, ledger, rush)
        finally:
            if platform:
                platform.terminate()
                platform.wait(timeout=30)
    print(f"results in {out}")
    for p in problems:
        print("PROBLEM:", p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
