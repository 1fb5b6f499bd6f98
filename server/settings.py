"""Settings from the environment (secrets never live in code or the repo)."""
from __future__ import annotations

import os

import msgspec


class Settings(msgspec.Struct, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None     # None: start an embedded Redis in data_dir
    ray_address: str | None = None   # None: start a local Ray
    data_dir: str = ".data"
    seed_demo: bool = True
    # Signs holder/booking tokens and e-tickets; set BMM_SECRET in production.
    secret: str = "dev-only-secret-change-me"
    admin_key: str = "dev-admin-key"  # platform admin: creates partners and their API keys
    passivate_after_s: float = 60.0

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = {
            "host": os.environ.get("BMM_HOST"),
            "port": os.environ.get("BMM_PORT"),
            "redis_url": os.environ.get("BMM_REDIS_URL"),
            "ray_address": os.environ.get("BMM_RAY_ADDRESS"),
            "data_dir": os.environ.get("BMM_DATA_DIR"),
            "seed_demo": os.environ.get("BMM_SEED_DEMO"),
            "secret": os.environ.get("BMM_SECRET"),
            "admin_key": os.environ.get("BMM_ADMIN_KEY"),
        }
        values = {k: v for k, v in env.items() if v is not None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return msgspec.convert(values, cls, strict=False)
