"""Key changes announced to every replica over Redis pub/sub.

When a key is revoked, rotated or edited (admin API or CLI), its id is published on
``{prefix}:keys``; every replica listening drops that key from its lookup cache, so a
revocation takes effect everywhere at once instead of within ``auth.cache_ttl_s``.
Delivery is best effort: with Redis down the cache TTL still bounds the delay.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from .redis import key, new_client

log = logging.getLogger("shipyard.shared")


def channel(cfg: Any) -> str:
    return key(cfg, "keys")


async def publish(link: Any, key_id: str) -> bool:
    try:
        await link.run("key change", lambda: link.client.publish(channel(link.cfg), key_id))
        return True
    except Exception:
        return False


def publish_sync(cfg: Any, key_id: str) -> bool:
    """From the CLI (no event loop): one short-lived connection."""
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis.from_url(cfg.url, socket_timeout=cfg.timeout_s,
                                      socket_connect_timeout=cfg.connect_timeout_s)
        try:
            client.publish(channel(cfg), key_id)
        finally:
            client.close()
        return True
    except Exception as exc:
        log.warning("could not announce the key change over Redis (%s); replicas pick it up within "
                    "auth.cache_ttl_s", type(exc).__name__)
        return False


async def listen(cfg: Any, on_change: Callable[[str], None]) -> None:
    """Forever: subscribe (a dedicated connection) and call ``on_change(key_id)``; after an
    outage, reconnect and drop every cached key (changes may have been missed)."""
    missed = False
    while True:
        client = new_client(cfg, socket_timeout=None)
        try:
            pubsub = client.pubsub()
            await pubsub.subscribe(channel(cfg))
            if missed:
                on_change("*")
                missed = False
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                if msg is None:
                    await pubsub.ping()
                    continue
                if msg.get("type") != "message":
                    continue
                data = msg.get("data")
                on_change(data.decode() if isinstance(data, bytes) else str(data))
        except asyncio.CancelledError:
            raise
        except Exception:
            missed = True
            await asyncio.sleep(cfg.retry_interval_s)
        finally:
            try:
                await client.aclose()
            except Exception:
                pass
