"""`python -m server.sandbox`: run the sandbox payment gateway as its own process.

    python -m server.sandbox --port 8099 --data-dir .data/gateway --webhook-secret S \
        [--host 127.0.0.1] [--webhook-url http://127.0.0.1:8080/api/payments/webhook] \
        [--hang-s 120]

The webhook secret may come from BMM_GATEWAY_WEBHOOK_SECRET instead (keeps it out of `ps`).
SIGTERM or SIGINT: stop accepting, give in-flight calls a second, close the ledger, exit 0.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from aiohttp import web

from server.sandbox.app import create_app

log = logging.getLogger("sandbox.gateway")
SECRET_ENV = "BMM_GATEWAY_WEBHOOK_SECRET"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server.sandbox",
                                     description="The sandbox payment gateway (test mode)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", required=True, help="where the ledger (SQLite) lives")
    parser.add_argument("--webhook-secret", default=os.environ.get(SECRET_ENV),
                        help=f"signs the webhooks (default: ${SECRET_ENV})")
    parser.add_argument("--webhook-url", help="POST settled payments' webhooks here")
    parser.add_argument("--hang-s", type=float, default=120.0,
                        help="how long the TIMES_OUT card makes authorise hang")
    args = parser.parse_args(argv)
    if not args.webhook_secret:
        parser.error(f"a webhook secret is required (--webhook-secret or ${SECRET_ENV})")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> None:
    app = create_app(args.data_dir, webhook_secret=args.webhook_secret, hang_s=args.hang_s,
                     webhook_url=args.webhook_url)
    # A TIMES_OUT call still hanging at shutdown is cancelled after a second (nothing of
    # it was recorded yet); calls already inside the ledger thread finish and commit.
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, args.host, args.port).start()
        log.info("sandbox gateway listening on http://%s:%d (pid %d, data %s)",
                 args.host, args.port, os.getpid(), args.data_dir)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
    log.info("stopped")


if __name__ == "__main__":
    main()
