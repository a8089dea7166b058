"""A Redis lock that only its holder can release, for the scheduled reconciliation tick.

``SET key token NX PX ttl`` takes it; a Lua compare-and-delete releases it, so a tick
whose lock already expired (and was taken by the next tick) cannot delete the lock of the
tick now running. The TTL is short -- one beat interval -- and the holder extends it
(compare-and-expire) after each pass, so a holder that died mid-tick (its worker killed)
delays the next tick by one interval at most. The lock only spares work: two ticks that
do overlap (a pass slower than the TTL) are still safe, each pass locks its rows with
SKIP LOCKED and every write is a compare-and-set.
"""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, unquote, urlsplit

import redis

from worker.errors import ConfigurationError

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

RECONCILE_LOCK_KEY = "runwarden:lock:reconcile"


def redis_client(url: str) -> redis.Redis:
    """A client for a Celery Redis URL (``redis://``, ``rediss://``, ``redis+socket://``)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in {"redis+socket", "socket", "unix"}:
        query = parse_qs(parts.query)
        db = query.get("virtual_host") or query.get("db") or ["0"]
        return redis.Redis(
            unix_socket_path=unquote(parts.path),
            db=int(db[0] or 0),
            password=parts.password,
            socket_timeout=5,
            socket_connect_timeout=5,
        )
    if scheme in {"redis", "rediss"}:
        return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    raise ConfigurationError(
        f"RUNWARDEN_BROKER_URL: the reconciliation lock needs a Redis broker, not {scheme}://"
    )


class RedisLock:
    def __init__(self, client: redis.Redis, key: str, *, ttl_seconds: float) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._client = client
        self.key = key
        self.ttl_ms = int(ttl_seconds * 1000)
        self.token: str | None = None

    def acquire(self) -> bool:
        token = secrets.token_hex(16)
        if self._client.set(self.key, token, nx=True, px=self.ttl_ms):
            self.token = token
            return True
        return False

    def extend(self) -> bool:
        """Renew the TTL if this holder still owns the lock; False if it expired (and may
        be another tick's now)."""
        if self.token is None:
            return False
        return bool(self._client.eval(_EXTEND, 1, self.key, self.token, self.ttl_ms))

    def release(self) -> bool:
        """Delete the lock if this holder still owns it; False if it expired meanwhile."""
        if self.token is None:
            return False
        released = self._client.eval(_RELEASE, 1, self.key, self.token)
        self.token = None
        return bool(released)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()
