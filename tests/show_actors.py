"""Test helpers for the (detached, ~80 MB each) show actors of the session's local Ray."""
from __future__ import annotations

import ray

from actors.show_actor import NAMESPACE, actor_name


def get_actor(show_id: str) -> ray.actor.ActorHandle:
    """The show's live actor; raises ValueError if there is none (never creates one)."""
    return ray.get_actor(actor_name(show_id), namespace=NAMESPACE)


def kill_actor_for_good(show_id: str) -> None:
    """Stop the show's actor if it is running (tests clean up the actors they woke)."""
    try:
        ray.kill(get_actor(show_id), no_restart=True)
    except ValueError:
        pass
