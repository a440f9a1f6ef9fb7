"""Leases in Redis: exactly one holder per name (a job's poller, the retention sweeper), with fencing.

`acquire` is `SET lease holder|token NX PX ttl`; only when it succeeds is the name's fencing token
incremented (`INCR fence`) and written into the lease, in one Lua script so no other replica sees a lease
without its token. `renew` and `release` compare the whole value first (a holder whose lease expired and was
taken by another replica cannot extend or delete the new holder's lease).

A lease alone does not make writes safe: a holder can stall (GC pause, a partition) past its TTL and wake
up believing it still holds the lease. So every write of a job's logs carries the token and is refused when
the fence has moved on (`relay.storage.cluster.fenced_stream`); the lease decides who *should* poll, the fence
decides whose writes count.
"""

from __future__ import annotations

from typing import Final

import redis

from relay.storage.cluster.keys import Keys
from relay.storage.protocols import DEFAULT_LEASE_TTL_S, Lease

DEFAULT_TTL_S: Final = DEFAULT_LEASE_TTL_S

_ACQUIRE: Final = """
if not redis.call('SET', KEYS[1], 'pending', 'NX', 'PX', ARGV[2]) then return false end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLeases:
    """Leases of one replica (`holder`, its replica id)."""

    def __init__(
        self, client: redis.Redis, holder: str, *, ttl_s: float = DEFAULT_TTL_S, keys: Keys | None = None
    ) -> None:
        if "|" in holder or not holder:
            raise ValueError("a lease holder is a non-empty name without '|'")
        self.client = client
        self.holder = holder
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.keys = keys or Keys()
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def _value(lease: Lease) -> str:
        return f"{lease.holder}|{lease.token}"

    def acquire(self, name: str) -> Lease | None:
        """The lease of `name` with a new fencing token, or None while another holder has it."""
        token = self._acquire(
            keys=[self.keys.lease(name), self.keys.fence(name)], args=[self.holder, self.ttl_ms]
        )
        if token is None:
            return None
        return Lease(name, self.holder, int(token))

    def renew(self, lease: Lease) -> bool:
        """Extend the lease by a TTL from now; False when it is no longer ours (expired, taken over)."""
        return bool(self._renew(keys=[self.keys.lease(lease.name)], args=[self._value(lease), self.ttl_ms]))

    def release(self, lease: Lease) -> bool:
        """Give the lease up (another replica may take it at once); False when it was no longer ours."""
        return bool(self._release(keys=[self.keys.lease(lease.name)], args=[self._value(lease)]))

    def holder_of(self, name: str) -> tuple[str, int] | None:
        """(holder, token) of the current lease of `name`, or None when nobody holds it."""
        value = self.client.get(self.keys.lease(name))
        if value is None:
            return None
        holder, _, token = (value.decode() if isinstance(value, bytes) else str(value)).rpartition("|")
        return (holder, int(token)) if token.isdigit() else None

    def fence(self, name: str) -> int:
        """The newest token handed out for `name` (0: never leased)."""
        value = self.client.get(self.keys.fence(name))
        return int(value) if value is not None else 0
