"""`python -m server`: the whole platform on one machine (local Ray, its own Redis, demo data)."""
from __future__ import annotations

import argparse
import logging

from aiohttp import web

from .app import create_app
from .runtime import Runtime
from .settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description="Run Book My Movie")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--ray-address", help="join this Ray cluster instead of a local one")
    parser.add_argument("--no-seed", action="store_true", help="skip the demo data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(
        host=args.host, port=args.port, redis_url=args.redis_url,
        ray_address=args.ray_address, seed_demo=False if args.no_seed else None,
    )
    runtime = Runtime(settings).start()
    try:
        app = create_app(settings, runtime.redis_url)
        if settings.seed_demo:
            from .demo import seed_on_startup

            app.on_startup.append(seed_on_startup)
        print(f"Book My Movie is up: http://{settings.host}:{settings.port}/", flush=True)
        web.run_app(app, host=settings.host, port=settings.port, print=None)
    finally:
        runtime.stop()


if __name__ == "__main__":
    main()
