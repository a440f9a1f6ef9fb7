"""Link codes in Redis (cluster mode): a code issued by one replica is redeemed on any other.

Behind a load balancer the request that trades a code for a token lands on any replica, so the codes live
where every replica sees them: one hash per code, `<prefix>:link:<code>` = {job, issuer, expires, uses},
expiring in Redis when the code does (`PEXPIREAT`). Redeeming is one Lua script (check the expiry, spend a
use, delete the code with its last use), so a one-time code is redeemed once across all the replicas, however
many ask at the same moment. Same surface as the in-process `relay.api.links.LinkCodes`, blocking (the routes
call it in a thread).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from typing import Final

import redis

from relay.api.links import CODE_BYTES, Link
from relay.storage.cluster.keys import Keys

_ISSUE: Final = """
redis.call('HSET', KEYS[1], 'job', ARGV[1], 'issuer', ARGV[2], 'expires', ARGV[3], 'uses', ARGV[4])
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
return 1
"""
# ARGV[1]: now (the replica's clock, seconds). Returns {job, issuer, expires, uses left} or nil.
_REDEEM: Final = """
local link = redis.call('HMGET', KEYS[1], 'job', 'issuer', 'expires', 'uses')
if not link[1] then return false end
if tonumber(link[3]) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return false
end
local left = redis.call('HINCRBY', KEYS[1], 'uses', -1)
if left <= 0 then redis.call('DEL', KEYS[1]) end
if left < 0 then return false end
return {link[1], link[2], link[3], tostring(left)}
"""
#: What a code can be (`secrets.token_urlsafe`): anything else is not looked up.
_CODE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class RedisLinkCodes:
    """The link codes of every replica, in Redis: `issue` one, `redeem` it (each redeem spends one use)."""

    #: Its calls wait for Redis: the routes make them in a thread.
    blocking: Final = True

    def __init__(
        self, client: redis.Redis, keys: Keys | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.clock = clock
        self._issue = client.register_script(_ISSUE)
        self._redeem = client.register_script(_REDEEM)

    def issue(self, job: str, issuer: str, ttl_s: float, uses: int) -> tuple[str, Link]:
        code = secrets.token_urlsafe(CODE_BYTES)
        link = Link(job=job, issuer=issuer, expires=self.clock() + ttl_s, uses=uses)
        self._issue(
            keys=[self.keys.link(code)],
            args=[job, issuer, repr(link.expires), uses, int(link.expires * 1000) + 1],
        )
        return code, link

    def redeem(self, code: str) -> Link | None:
        """The link of `code` with one use spent, or None (unknown, used up or expired)."""
        if not _CODE.fullmatch(code):
            return None
        answer = self._redeem(keys=[self.keys.link(code)], args=[repr(self.clock())])
        if not answer:
            return None
        job, issuer, expires, uses = (v.decode() if isinstance(v, bytes) else str(v) for v in answer)
        return Link(job=job, issuer=issuer, expires=float(expires), uses=int(uses))
