"""Shows as virtual actors on a few show hosts vs one Ray actor (one process) per show:
one command, one run on this machine, one table with both designs side by side.

    .venv/bin/python -m loadtest.hosts --server-root /tmp/base      # ~4-6 min
    .venv/bin/python -m loadtest.hosts                              # this design only

`--server-root DIR` is a checkout of the previous design (one actor per show, e.g.
`git worktree add /tmp/base 41d73f1`). For each design the bench starts `python -m server
--no-seed` from that checkout (its own Redis in a temp data dir, its own local Ray, rate
limits and the hold in-flight cap off: every simulated customer is 127.0.0.1), sets up a
partner and its shows (400 seats each) through the partner feed (`scenario.publish_rush`),
measures, and stops it:

1. **one hot show**: `--clients` (64) closed-loop customers, each cycling hold
   (`POST /api/shows/{id}/holds`, counted when 201) -> release (`DELETE /api/holds/{id}`)
   on its own seat of one show: cycles/s, and commands per host (actor) call from the web
   process's `/api/_stats` counters.
2. **many shows at once**: first every show is woken (one hold each, kept, 25 at a time,
   timed: for the previous design this starts an actor process per show), then the same
   customers cycle over all of them (customer i's k-th cycle is on show (i + k * clients)
   mod shows, always on seat i, so every show is busy and no two customers collide):
   holds/s and its ratio to the hot show, hold latency, commands per host call.
3. **cold activation under that load**: during the many-shows window a separate
   open-loop client makes a first hold (then its release) on a show never touched before,
   `--cold-rate` per second; latency from the scheduled arrival (no coordinated omission).
4. **processes and memory**: after the rush, the server's Ray worker processes that run
   shows (ShowHost / ShowActor; idle pooled workers apart) with their RSS and USS.

Then, with both servers stopped, **10,000 shows** (`--memory-shows`) of 400 seats are
loaded into a pool of show hosts as the server runs them (one per CPU) by
`loadtest/actor_memory.py` (own Redis and Ray; 10 % of each show's seats held, half of
them booked) and the hosts' RSS is read. The previous design cannot hold 10,000 actor
processes on one machine: its row is the per-show figure measured in step 4 (at the small
count that design ran with, `--base-shows`), times 10,000, labelled as an extrapolation.

The load generators run on the same cores as the server, and the machine may be shared:
absolute figures are a floor; compare the two designs within one run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from .bench import (
    Server,
    _closed_loop,
    _err,
    _mem_available_gb,
    _mem_total_gb,
    _session,
    _wake_all,
    batch_delta,
    batching,
    cpu_seconds,
    hold_release,
    http_json,
    merge_counts,
    pct,
    run_jobs,
    server_processes,
)
from .scenario import publish_rush

ROOT = Path(__file__).resolve().parent.parent
_json = msgspec.json.Decoder()
MB = 2**20
BASE_RSS_GUESS_MB = 90  # one actor process of the previous design (RESULTS.md: ~87 MB RSS)


class Res(msgspec.Struct):
    """One generator process's counts (the fields bench._closed_loop fills, plus a tag)."""

    kind: str = ""
    ok: int = 0
    released: int = 0
    conflicts: int = 0
    errors: dict[str, int] = {}
    latencies: list[float] = []
    cpu: float = 0.0
    late: int = 0


def merge(results: list[Res]) -> Res:
    return merge_counts(Res(), results)


# --- load generators ---------------------------------------------------------------------

async def _spread_loop(host: str, customers: list[int], n_clients: int, shows: list[str],
                       seats: list[str], t0: float, t1: float, res: Res) -> None:
    """Customer i cycles hold -> release on seat i of show (i + k * n_clients) % len(shows)
    in its k-th cycle; counts what ends in [t0, t1]."""
    headers = {"Content-Type": "application/json"}
    async with _session(len(customers) + 8) as http:
        async def customer(i: int) -> None:
            body = msgspec.json.encode({"seats": [seats[i]]})
            k = 0
            while (now := time.time()) < t1:
                show_id = shows[(i + k * n_clients) % len(shows)]
                k += 1
                try:
                    await hold_release(http, host, show_id, body, headers, now, t0, t1, res)
                except Exception as exc:  # count, never stop the customer
                    if t0 <= time.time() <= t1:
                        _err(res, type(exc).__name__)
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(customer(i) for i in customers))


async def _cold_loop(host: str, shows: list[str], seat: str, rate: float, t0: float,
                     t1: float, res: Res) -> None:
    """The k-th arrival (at t0 + k / rate, until t1) is the first hold on shows[k], then its
    release; latency of the hold from the scheduled arrival."""
    tasks: set[asyncio.Task[None]] = set()
    body = msgspec.json.encode({"seats": [seat]})
    import aiohttp

    # A first hold in the previous design starts a process: give it time, count it late.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        async def arrival(at: float, show_id: str) -> None:
            try:
                await hold_release(http, host, show_id, body,
                                   {"Content-Type": "application/json"}, at, 0.0, math.inf, res)
            except Exception as exc:
                _err(res, type(exc).__name__)

        k = 0
        while k < len(shows) and (at := t0 + k / rate) < t1:
            delay = at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(arrival(at, shows[k]))
            k += 1
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=150)
        res.late = len(tasks)  # still unanswered


def _job_main(job: dict[str, Any], out: Any) -> None:
    res = Res(kind=job["kind"])
    start_cpu = time.process_time()
    if job["kind"] == "hot":
        coro = _closed_loop("hold", job["host"], job["slots"], job["t0"], job["t1"], res)  # type: ignore[arg-type]
    elif job["kind"] == "spread":
        coro = _spread_loop(job["host"], job["customers"], job["clients"], job["shows"],
                            job["seats"], job["t0"], job["t1"], res)
    else:
        coro = _cold_loop(job["host"], job["shows"], job["seat"], job["rate"], job["t0"],
                          job["t1"], res)
    asyncio.run(coro)
    res.cpu = time.process_time() - start_cpu
    out.put(msgspec.msgpack.encode(res))


# --- one design ----------------------------------------------------------------------------

def show_workers(root_pid: int) -> dict[str, list[Any]]:
    """The server's Ray worker processes by what they run (ShowHost, ShowActor, IDLE, ...)."""
    kinds: dict[str, list[Any]] = {}
    for p in server_processes(root_pid)["actors"]:
        try:
            cmd = " ".join(p.cmdline())
        except Exception:
            continue
        kind = cmd[5:].split(".")[0].split()[0] if cmd.startswith("ray::") else "worker"
        kinds.setdefault(kind or "?", []).append(p)
    return kinds


def rss_uss(procs: list[Any]) -> tuple[float, float]:
    rss = uss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except Exception:
            continue
        rss += info.rss
        uss += info.uss
    return rss / MB, uss / MB


def git_commit(root: Path) -> str:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(root), *cmd], capture_output=True,
                              text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + (" + uncommitted changes" if dirty else "")


def progress(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_design(label: str, root: Path, n_shows: int, args: argparse.Namespace) -> dict[str, Any]:
    secs, clients = args.seconds, args.clients
    n_cold = math.ceil(args.cold_rate * secs) + 2
    n_idle = args.idle_cold
    progress(f"{label}: starting `python -m server` from {root}")
    server = Server(None, args.server_arg, root).start()
    host, root_pid = server.host, server.proc.pid
    out: dict[str, Any] = {"label": label, "root": str(root), "commit": git_commit(root),
                           "shows": n_shows, "log": str(server.dir / "server.log")}
    try:
        stats = http_json(host + "/api/_stats")
        out["design"] = "hosts" if "hosts" in stats else "actor per show"
        t = time.monotonic()
        setup = publish_rush(host, shows=1 + n_shows + n_cold + n_idle)
        shows, seats = setup["show_ids"], setup["seat_ids"]
        hot, many = shows[0], shows[1:1 + n_shows]
        cold = shows[1 + n_shows:1 + n_shows + n_cold]
        idle = shows[1 + n_shows + n_cold:]
        progress(f"{label}: {len(shows)} shows of {len(seats)} seats published in "
                 f"{time.monotonic() - t:.1f} s")
        if clients > len(seats) - 1:
            raise SystemExit(f"--clients {clients}: at most {len(seats) - 1} (one seat each)")
        n = args.gen_procs

        # 1. one hot show (its first hold, kept, wakes it untimed)
        _wake_all(host, [hot], seats[0])
        slots = [(hot, seats[1 + i]) for i in range(clients)]
        t0 = time.time() + 2.0  # process start, then 1 s of warm-up
        b0, cpu0, w0 = batching(host), cpu_seconds(root_pid), time.monotonic()
        results = run_jobs(_job_main, [{"kind": "hot", "host": host, "slots": slots[i::n],
                                        "t0": t0, "t1": t0 + secs} for i in range(n)], Res)
        b1, cpu1, wall = batching(host), cpu_seconds(root_pid), time.monotonic() - w0
        out["hot"] = merge(results)
        out["hot_batch"] = batch_delta(b0, b1)
        # cores busy over the whole generator run (process start and warm-up included)
        out["hot_cpu"] = {k: (cpu1[k] - cpu0.get(k, 0.0)) / wall for k in cpu1}
        progress(f"{label}: hot show {out['hot'].ok / secs:,.0f} cycles/s")

        # 2. wake every show of the rush (first hold each, kept), timed
        progress(f"{label}: waking {len(many)} shows (one hold each, 25 at a time)")
        t = time.monotonic()
        out["wake_statuses"] = _wake_all(host, many, seats[0])
        out["wake_s"] = time.monotonic() - t
        progress(f"{label}: woken in {out['wake_s']:.1f} s {out['wake_statuses']}")

        # 2 + 3. the rush over all of them, with the cold client beside it
        t0 = time.time() + 2.0
        jobs = [{"kind": "spread", "host": host, "customers": list(range(clients))[i::n],
                 "clients": clients, "shows": many, "seats": seats[1:], "t0": t0,
                 "t1": t0 + secs} for i in range(n)]
        jobs.append({"kind": "cold", "host": host, "shows": cold, "seat": seats[0],
                     "rate": args.cold_rate, "t0": t0, "t1": t0 + secs})
        b0, cpu0, w0 = batching(host), cpu_seconds(root_pid), time.monotonic()
        results = run_jobs(_job_main, jobs, Res)
        b1, cpu1, wall = batching(host), cpu_seconds(root_pid), time.monotonic() - w0
        out["many"] = merge([r for r in results if r.kind == "spread"])
        out["cold"] = merge([r for r in results if r.kind == "cold"])
        out["many_batch"] = batch_delta(b0, b1)
        # cores busy from before the generators started until the cold client's last
        # first hold was answered (after the window, for the previous design)
        out["many_cpu"] = {k: (cpu1[k] - cpu0.get(k, 0.0)) / wall for k in cpu1}
        out["many_wall"] = wall
        progress(f"{label}: {len(many)} shows {out['many'].ok / secs:,.0f} holds/s; cold "
                 f"first holds {out['cold'].ok} (p99 {pct(out['cold'].latencies, 99):.0f} ms)")

        # 3b. the same first hold with no other load: activation alone, without queueing
        time.sleep(1.0)
        out["idle_cold"] = first_holds(host, idle, seats[0])

        # 4. processes and memory after the rush
        kinds = show_workers(root_pid)
        show_kind = "ShowHost" if out["design"] == "hosts" else "ShowActor"
        procs = kinds.get(show_kind, [])
        rss, uss = rss_uss(procs)
        out["workers"] = {k: len(v) for k, v in kinds.items()}
        out["show_procs"], out["show_rss_mb"], out["show_uss_mb"] = len(procs), rss, uss
        out["shows_loaded"] = 1 + len(many) + out["cold"].ok + out["idle_cold"].ok
        out["stats_hosts"] = http_json(host + "/api/_stats").get("hosts")
    finally:
        progress(f"{label}: stopping the server")
        server.stop()
    return out


def first_holds(host: str, shows: list[str], seat: str) -> Res:
    """One at a time, nothing else running: the first hold on each show (then its
    release, untimed)."""
    import urllib.error
    import urllib.request

    res = Res(kind="idle")
    for show_id in shows:
        req = urllib.request.Request(f"{host}/api/shows/{show_id}/holds",
                                     data=msgspec.json.encode({"seats": [seat]}),
                                     headers={"Content-Type": "application/json"}, method="POST")
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                raw = r.read()
            res.latencies.append((time.perf_counter() - t) * 1000)
            res.ok += 1
            hold = _json.decode(raw)
            urllib.request.urlopen(urllib.request.Request(
                f"{host}/api/holds/{hold['hold_id']}", method="DELETE",
                headers={"X-Holder-Token": hold["holder_token"]}), timeout=60).read()
            res.released += 1
        except urllib.error.HTTPError as exc:
            _err(res, f"hold {exc.code}")
        except Exception as exc:
            _err(res, type(exc).__name__)
        time.sleep(0.05)
    return res


def run_memory(args: argparse.Namespace) -> dict[str, Any] | None:
    """loadtest/actor_memory.py in a process of its own (its own Redis and Ray)."""
    path = Path(tempfile.mkdtemp(prefix="bmm-hosts-mem-")) / "memory.json"
    cmd = [sys.executable, "-m", "loadtest.actor_memory", "--levels", str(args.memory_shows),
           "--booked", str(args.memory_booked), "--no-passivation", "--json", str(path)]
    progress(f"memory: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    table = [line for line in proc.stdout.splitlines() if line.startswith(("|", "machine"))]
    if proc.returncode != 0 or not path.exists():
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return None
    data = json.loads(path.read_text())
    path.unlink()
    path.parent.rmdir()
    data["table"] = table
    return data


# --- the table -----------------------------------------------------------------------------

@dataclass
class Row:
    metric: str
    new: str
    base: str = ""
    goal: str = ""
    verdict: str = ""


def check(ok: bool) -> str:
    return "met" if ok else "NOT met"


def ms(values: list[float]) -> str:
    return f"{pct(values, 50):,.1f} / {pct(values, 99):,.1f} ms" if values else "-"


def errs(r: Res) -> str:
    parts = []
    if r.conflicts:
        parts.append(f"{r.conflicts} × 409")
    parts += [f"{v} × {k}" for k, v in sorted(r.errors.items())]
    return ", ".join(parts) if parts else "no errors"


def cores(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v >= 0.05) or "-"


def build_rows(new: dict[str, Any], base: dict[str, Any] | None, mem: dict[str, Any] | None,
               args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    secs = args.seconds
    rows: list[Row] = []
    notes: list[str] = []
    designs = [d for d in (new, base) if d]

    def each(fn) -> list[str]:  # noqa: ANN001
        vals = [fn(d) for d in designs]
        return vals + [""] * (2 - len(vals))

    hot_rate = {d["label"]: d["hot"].ok / secs for d in designs}
    many_rate = {d["label"]: d["many"].ok / secs for d in designs}

    rows.append(Row(f"one hot show: hold+release cycles/s ({args.clients} clients, own seat each)",
                    *each(lambda d: f"{hot_rate[d['label']]:,.0f} cycles/s "
                                    f"({d['hot'].released / secs:,.0f} releases/s; {errs(d['hot'])})")))
    rows.append(Row("  hot show: hold latency p50 / p99", *each(lambda d: ms(d["hot"].latencies))))
    rows.append(Row("  hot show: commands per host call (actor call, previous design)",
                    *each(lambda d: f"{d['hot_batch'][1] / max(d['hot_batch'][0], 1):.1f} "
                                    f"({d['hot_batch'][1]:,} in {d['hot_batch'][0]:,} calls)")))
    rows.append(Row("shows in the many-shows rush",
                    *each(lambda d: f"{d['shows']:,}" + ("" if d["shows"] == args.shows else
                                                         f" (not {args.shows:,}: see notes)"))))
    rows.append(Row("  waking them: first hold each, 25 at a time",
                    *each(lambda d: f"{d['wake_s']:.1f} s (statuses {d['wake_statuses']})")))
    rows.append(Row(f"  many shows at once: holds/s ({args.clients} clients cycling over all)",
                    *each(lambda d: f"{many_rate[d['label']]:,.0f} holds/s "
                                    f"({d['many'].released / secs:,.0f} releases/s; {errs(d['many'])})")))
    ratio = {k: many_rate[k] / hot_rate[k] if hot_rate[k] else 0.0 for k in hot_rate}
    rows.append(Row("  ratio: many-shows holds/s ÷ hot-show cycles/s",
                    *each(lambda d: f"{ratio[d['label']]:.2f}"), "≥ 0.8",
                    check(ratio[new["label"]] >= 0.8)))
    rows.append(Row("  many shows: hold latency p50 / p99 (warm shows)",
                    *each(lambda d: ms(d["many"].latencies))))
    rows.append(Row("  commands per host call under the many-shows rush",
                    *each(lambda d: f"{d['many_batch'][1] / max(d['many_batch'][0], 1):.1f} "
                                    f"({d['many_batch'][1]:,} in {d['many_batch'][0]:,} calls)")))
    cold_p99 = pct(new["cold"].latencies, 99)
    rows.append(Row(f"cold activation under the rush: first hold on an untouched show, "
                    f"{args.cold_rate:g}/s, p50 / p99",
                    *each(lambda d: f"{ms(d['cold'].latencies)} ({d['cold'].ok} first holds, "
                                    f"max {max(d['cold'].latencies, default=float('nan')):,.0f} ms; "
                                    f"{errs(d['cold'])}"
                                    + (f"; {d['cold'].late} unanswered" if d['cold'].late else "") + ")"),
                    "p99 ≤ 20 ms", check(bool(new["cold"].latencies) and cold_p99 <= 20)))
    rows.append(Row("  cold minus warm p50 (what activation adds, roughly)",
                    *each(lambda d: f"{pct(d['cold'].latencies, 50) - pct(d['many'].latencies, 50):+,.1f} ms"
                          if d["cold"].latencies and d["many"].latencies else "-")))
    if args.idle_cold:
        rows.append(Row("  for reference: first hold with no other load, one at a time, p50 / p99",
                        *each(lambda d: f"{ms(d['idle_cold'].latencies)} ({d['idle_cold'].ok} "
                                        f"first holds; {errs(d['idle_cold'])})")))
    # processes and memory after the rush, in the servers
    rows.append(Row("worker processes for shows after the rush (Ray workers running shows)",
                    *each(lambda d: f"{d['show_procs']:,} for {d['shows_loaded']:,} shows "
                                    + (f"(hosts in the pool: {d['stats_hosts']})" if d["design"] == "hosts"
                                       else "(one per show)")),
                    "= hosts", check(new["show_procs"] == new["stats_hosts"])))
    rows.append(Row("  their memory after the rush: RSS (USS)",
                    *each(lambda d: f"{d['show_rss_mb']:,.0f} MB (USS {d['show_uss_mb']:,.0f} MB) "
                                    f"for {d['shows_loaded']:,} shows"
                                    + (f" in {d['show_procs']} hosts" if d["design"] == "hosts" else
                                       f" = {d['show_rss_mb'] / max(d['show_procs'], 1):,.0f} MB "
                                       f"(USS {d['show_uss_mb'] / max(d['show_procs'], 1):,.0f} MB) per show"))))
    n = args.memory_shows
    if not n:
        pass
    elif mem and mem.get("levels"):
        lv = mem["levels"][-1]
        empty = mem["empty"]
        new_mem = (f"measured: {lv['rss_mb']:,.0f} MB RSS in {lv['hosts']} hosts "
                   f"({' + '.join(f'{x:,.0f}' for x in lv['rss_per_host_mb'])} MB; USS "
                   f"{lv['uss_mb']:,.0f} MB) with {lv['shows']:,} shows in memory; empty hosts "
                   f"{empty['rss_mb']:,.0f} MB, so {lv['rss_growth_per_show_kb']:,.1f} KB per show")
        verdict = check(lv["rss_mb"] <= 1536 and lv["shows"] >= n)
    else:
        new_mem, verdict = "not measured (see the errors above)", "NOT met"
    base_mem = ""
    if base and n:
        per_rss = base["show_rss_mb"] / max(base["show_procs"], 1)
        per_uss = base["show_uss_mb"] / max(base["show_procs"], 1)
        base_mem = (f"EXTRAPOLATED, not run: {n:,} × {per_rss:,.0f} MB RSS ({per_uss:,.0f} MB "
                    f"USS) per actor process, measured at {base['show_procs']} actors = "
                    f"{n * per_rss / 1024:,.0f} GB RSS ({n * per_uss / 1024:,.0f} GB USS) and "
                    f"{n:,} processes")
    if n:
        rows.append(Row(f"memory with {n:,} shows of 400 seats loaded (show processes' RSS)",
                        new_mem, base_mem, "≤ 1.5 GB", verdict))
    if mem and mem.get("levels"):
        lv = mem["levels"][-1]
        rows.append(Row(f"  worker processes for shows with {n:,} shows",
                        f"{lv['host_procs']} ShowHost processes (pool of {lv['hosts']} hosts; "
                        f"{lv['ray_workers']} Ray workers in all incl. idle)",
                        f"{n:,} (one per show; extrapolated)" if base else "",
                        "= hosts", check(lv["host_procs"] == lv["hosts"])))
        rows.append(Row(f"  loading {n:,} shows (configs written, then activated: "
                        f"{args.memory_booked:.0%} of seats held, half booked)",
                        f"{lv['activate_s']:.1f} s ({lv['configs_s']:.1f} s of config writes "
                        f"before); results {lv['outcome']}"))
    for d in designs:
        notes.append(f"{d['label']}: server cores busy (generators excluded) during the hot-show "
                     f"run: {cores(d['hot_cpu'])}; during the many-shows run "
                     f"({d['many_wall']:.0f} s until the last cold hold was answered): "
                     f"{cores(d['many_cpu'])}")
        others = {k: v for k, v in d["workers"].items() if k not in ("ShowHost", "ShowActor")}
        if others:
            notes.append(f"{d['label']}: other Ray workers in the server after the rush "
                         f"(not counted above): {others}")
    if base and base["shows"] != args.shows:
        notes.append(f"previous design: {base['shows']} shows in the rush, not {args.shows}: one "
                     f"actor process per show (~{BASE_RSS_GUESS_MB} MB RSS, ~0.5 s of CPU to "
                     f"start each); `--base-shows` (and the memory left on this machine) caps "
                     f"it, so its ratio is for fewer shows than this design's")
    return rows, notes


def print_table(rows: list[Row], base: bool) -> None:
    heads = ["metric", "this design (show hosts)"] + (["previous design (actor per show)"]
                                                       if base else []) + ["goal", "this design"]
    cells = [[r.metric, r.new] + ([r.base] if base else []) + [r.goal, r.verdict] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server-root", help="checkout of the previous design (actor per show) "
                                          "to run as the baseline; without it, this design only")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each measured window")
    ap.add_argument("--clients", type=int, default=64, help="closed-loop customers")
    ap.add_argument("--shows", type=int, default=300, help="shows in the many-shows rush")
    ap.add_argument("--base-shows", type=int, default=100,
                    help="shows in the previous design's rush (a process each; default 100, "
                         "fewer if memory is short)")
    ap.add_argument("--keep-free-gb", type=float, default=6.0,
                    help="memory to leave free when sizing the previous design's rush")
    ap.add_argument("--cold-rate", type=float, default=5.0,
                    help="first holds on untouched shows per second, during the rush")
    ap.add_argument("--idle-cold", type=int, default=20,
                    help="first holds on untouched shows with no other load, one at a time "
                         "(for reference; 0: skip)")
    ap.add_argument("--memory-shows", type=int, default=10_000,
                    help="shows loaded for the memory row (0: skip)")
    ap.add_argument("--memory-booked", type=float, default=0.1,
                    help="share of each show's seats held (half of them booked) when loading")
    ap.add_argument("--gen-procs", type=int, default=2, help="load generator processes")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra argument for `python -m server` (repeatable; both designs)")
    args = ap.parse_args()
    started = time.monotonic()
    print(f"loadtest.hosts: {args.clients} clients, windows of {args.seconds:g} s, "
          f"{args.shows} shows (previous design: up to {args.base_shows}), cold first holds "
          f"at {args.cold_rate:g}/s, memory at {args.memory_shows:,} shows", flush=True)

    new = run_design("this design", ROOT, args.shows, args)
    base = None
    if args.server_root:
        n_cold = math.ceil(args.cold_rate * args.seconds) + 2
        fits = (int((_mem_available_gb() - args.keep_free_gb) * 1024 / BASE_RSS_GUESS_MB)
                - n_cold - args.idle_cold - 1)
        n_base = max(1, min(args.base_shows, args.shows, fits))
        base = run_design("previous design", Path(args.server_root).resolve(), n_base, args)
    mem = run_memory(args) if args.memory_shows else None

    rows, notes = build_rows(new, base, mem, args)
    print()
    print_table(rows, base is not None)
    print()
    load = os.getloadavg()
    print(f"machine: {platform.node()}: {os.cpu_count()} cores, {_mem_total_gb():.0f} GB RAM, "
          f"Python {platform.python_version()}; load average at the end {load[0]:.1f} / "
          f"{load[1]:.1f} / {load[2]:.1f} (other work on the machine counts too); "
          f"whole run {time.monotonic() - started:.0f} s")
    for d in (new, base):
        if d:
            print(f"{d['label']}: {d['root']} at {d['commit']} ({d['design']}); server log {d['log']}")
    print(f"generators: {args.gen_procs} processes × asyncio/aiohttp (+1 for the cold client), "
          f"on the same cores as the server; each window {args.seconds:g} s after 1 s of warm-up")
    for note in notes:
        print(f"  {note}")
    if mem:
        print(f"\nmemory phase (python -m loadtest.actor_memory --levels {args.memory_shows} "
              f"--booked {args.memory_booked:g} --no-passivation):")
        for line in mem["table"]:
            print(f"  {line}")


if __name__ == "__main__":
    main()
