"""Redis clients for the cache and locks: short timeouts, one quick retry.

Owns how the cache room connects: a dead or hung Redis must cost a caller little
(sub-second timeouts), and one immediate retry lets a pooled connection that went
stale across a Redis restart reconnect without the cache reporting an outage. A Redis
the local stack started again at another address is followed with ``repoint_redis``
(every user of the client's pool moves, the near cache's feed included).
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

DEFAULT_SOCKET_TIMEOUT_S = 0.5
DEFAULT_CLIENT_NAME = "wflo-cache"


def connect_redis(
    url: str,
    *,
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
    client_name: str = DEFAULT_CLIENT_NAME,
) -> redis.Redis:
    """A thread-safe client for ``url`` (``redis://host:port/db``). Connects lazily:
    building it never fails because Redis is down. Its connections show up as
    ``client_name`` in ``CLIENT LIST``. The caller closes it (``close()`` disconnects
    every pooled connection)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
        client_name=client_name,
    )


def describe_redis(client: redis.Redis) -> str:
    """``host:port/db`` (or the socket path) of a client, without credentials."""
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    if "path" in kwargs:
        return f"unix:{kwargs['path']}/{db}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def repoint_redis(client: redis.Redis, url: str) -> bool:
    """Point ``client``'s pool at ``url`` (same kind: TCP or Unix socket) and drop its
    connections; the next command connects there. False (nothing changed) when ``url``
    is where it points already or names another kind of server."""
    pool = client.connection_pool
    target = redis.ConnectionPool.from_url(url).connection_kwargs
    keys = ("path", "db") if "path" in pool.connection_kwargs else ("host", "port", "db")
    if ("path" in target) != ("path" in pool.connection_kwargs):
        return False
    moved = {k: target[k] for k in keys if k in target}
    if all(pool.connection_kwargs.get(k) == v for k, v in moved.items()):
        return False
    pool.connection_kwargs.update(moved)
    pool.disconnect()
    pool.reset()  # drop the connection objects too: each keeps the address it was made with
    return True
