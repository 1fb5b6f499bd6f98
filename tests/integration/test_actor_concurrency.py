"""200 clients in three web processes race for the same 50 seats through the coalescing
client and the real show actor: nobody is ever told they got a seat someone else got, and
the actor's state, Redis' replayed state and what the clients were told all agree."""
from __future__ import annotations

import asyncio
import random
import uuid

import msgspec
import ray

from actors import commands as c, redis_conn
from actors.client import ShowDirectory
from actors.layout import Rules, grid_layout
from actors.host import ActorSettings
from actors.store import ShowStore
from tests.conftest import CORE_POOL

from .conftest import assert_one_owner_per_seat, comparable, replayed_state, state_of


class Job(msgspec.Struct, frozen=True):
    hold_id: str
    token: str
    seats: list[str]
    confirm: bool


async def run_job(directory: ShowDirectory, show_id: str, job: Job, go: asyncio.Event
                  ) -> list[c.Result]:
    await go.wait()
    held = await directory.submit(show_id, c.Hold(f"h-{job.hold_id}", job.hold_id, job.token,
                                                  job.seats))
    out = [held]
    if job.confirm and isinstance(held, c.Held):
        out.append(await directory.submit(show_id, c.Confirm(
            f"c-{job.hold_id}", job.hold_id, job.token, f"b-{job.hold_id}", "pay-1")))
    return out


@ray.remote(num_cpus=0)
def other_web_process(show_id: str, redis_url: str, settings: ActorSettings,
                      jobs: bytes, barrier: str) -> bytes:
    """A separate OS process (a Ray worker) acting as a second web server."""

    async def main() -> bytes:
        r = redis_conn.async_client(redis_url)
        directory = await ShowDirectory(redis_url, settings, pool=CORE_POOL).start()
        go = asyncio.Event()
        tasks = [asyncio.create_task(run_job(directory, show_id, job, go))
                 for job in msgspec.msgpack.decode(jobs, type=list[Job])]
        await r.rpush(f"{barrier}:ready", 1)
        assert await r.blpop([f"{barrier}:go"], timeout=60), "never told to go"
        go.set()
        results = await asyncio.gather(*tasks)
        await r.aclose()
        await directory.close()
        hosts = directory.clients()
        return c.command_encoder.encode([results, sum(h.calls for h in hosts),
                                         sum(h.commands for h in hosts)])

    return asyncio.run(main())


def make_jobs(rng: random.Random, seat_ids: list[str], n: int, prefix: str) -> list[Job]:
    return [
        Job(f"{prefix}{i}", f"tok-{prefix}{i}", rng.sample(seat_ids, rng.randint(1, 3)),
            confirm=rng.random() < 0.5)
        for i in range(n)
    ]


async def test_200_clients_race_for_50_seats(shows, directory, redis, redis_server, settings):
    show_id = await shows(grid_layout(5, 10), Rules(max_seats_per_hold=4))
    seat_ids = [s.id for s in grid_layout(5, 10).seats]
    rng = random.Random(20261125)
    local_jobs = [make_jobs(rng, seat_ids, 70, "a"), make_jobs(rng, seat_ids, 70, "b")]
    remote_jobs = make_jobs(rng, seat_ids, 60, "r")
    web1 = directory
    web2 = await ShowDirectory(redis_server.url, settings, pool=CORE_POOL).start()  # web 2

    # Load the show and start every process before the race, so the race is the race.
    before = await web1.inspect(show_id)
    barrier = f"barrier-{uuid.uuid4().hex}"
    remote = other_web_process.remote(show_id, redis_server.url, settings,
                                      msgspec.msgpack.encode(remote_jobs), barrier)
    assert await redis.blpop([f"{barrier}:ready"], timeout=60), "remote web process not ready"

    go = asyncio.Event()
    local = [asyncio.create_task(run_job(web, show_id, job, go))
             for web, jobs in zip((web1, web2), local_jobs) for job in jobs]
    await redis.rpush(f"{barrier}:go", 1)
    go.set()
    local_results = await asyncio.gather(*local)
    remote_results, remote_calls, remote_commands = msgspec.msgpack.decode(
        await remote, type=tuple[list[list[c.Result]], int, int])

    jobs = local_jobs[0] + local_jobs[1] + remote_jobs
    results = local_results + remote_results
    assert len(jobs) == len(results) == 200

    inspected = await web1.inspect(show_id)
    state = comparable(inspected)
    assert state == await replayed_state(redis, show_id)
    assert_one_owner_per_seat(state)

    told: dict[str, str] = {}  # seat -> hold id the clients were told owns it
    expect_holds: dict[str, list[str]] = {}
    expect_bookings: dict[str, list[str]] = {}
    rejected: list[Job] = []
    for job, res in zip(jobs, results):
        held = res[0]
        if isinstance(held, c.Rejected):
            assert held.code == "seats_unavailable", held
            rejected.append(job)
            continue
        assert isinstance(held, c.Held) and held.seats == job.seats, held
        for seat in held.seats:
            assert seat not in told, f"{seat} was given to {told[seat]} and {job.hold_id}"
            told[seat] = job.hold_id
        if job.confirm:
            confirmed = res[1]
            assert isinstance(confirmed, c.Confirmed), confirmed
            assert confirmed.seats == job.seats
            expect_bookings[confirmed.booking_id] = job.seats
        else:
            expect_holds[job.hold_id] = job.seats

    # Every success the clients saw is in the final state, and nothing else is.
    assert {k: v["seats"] for k, v in state["holds"].items()} == expect_holds
    assert {k: v["seats"] for k, v in state["bookings"].items()} == expect_bookings
    # Every refusal was for a seat that somebody really has (nothing is ever released).
    for job in rejected:
        assert any(seat in told for seat in job.seats), job
    assert expect_holds and expect_bookings and rejected  # it was a race with winners

    # Group commit: far fewer host calls than commands, in every process.
    clients = web1.clients() + web2.clients()
    local_calls = sum(cl.calls for cl in clients)
    local_commands = sum(cl.commands for cl in clients)
    assert local_commands == 140 + sum(
        1 for job, res in zip(jobs[:140], local_results) if len(res) == 2)
    assert local_calls * 5 <= local_commands, (local_calls, local_commands)
    assert remote_calls * 5 <= remote_commands, (remote_calls, remote_commands)
    assert inspected["commands"] - before["commands"] == local_commands + remote_commands
    calls = inspected["calls"] - before["calls"]
    assert calls * 5 <= local_commands + remote_commands, calls
    await web2.close()


async def test_rebuilding_from_redis_while_the_actor_writes(shows, directory, redis, settings):
    """Readers rebuild the show from Redis (snapshot + log) while the actor appends,
    snapshots and trims: every rebuild succeeds and is a consistent state."""
    show_id = await shows(grid_layout(10, 20))
    client = directory.client(show_id)
    seats = [s.id for s in grid_layout(10, 20).seats]

    async def churn(seat: str) -> None:
        for i in range(30):
            cmd = (c.Block if i % 2 == 0 else c.Unblock)(f"{seat}-{i}", [seat])
            assert not isinstance(await client.submit(cmd), c.Rejected)

    writers = asyncio.gather(*(churn(seat) for seat in seats[:20]))
    loads: list[int] = []

    async def reader() -> None:
        last = 0
        while not writers.done():
            state = state_of(await ShowStore(redis, show_id).load())
            assert state["version"] >= last
            last = state["version"]
            blocked = sum(st == "blocked" for st in state["status"].values())
            assert blocked <= 20
            loads.append(last)

    await asyncio.gather(writers, *(reader() for _ in range(4)))
    final = await replayed_state(redis, show_id)
    assert final["version"] == 600 and final["version"] >= 10 * settings.snapshot_every
    assert final == comparable(await directory.inspect(show_id))
    assert len(set(loads)) > 5  # the reads really interleaved with the writes
