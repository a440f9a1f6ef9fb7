"""An append-only log in one Redis Stream whose writes are fenced: entry ids are dense `<n>-0` from 1.

`append(token, first, records)` runs one Lua script that refuses the whole batch unless
- `token` is the name's current fencing token (`relay.storage.cluster.lease`): a replica that lost its lease and
  was replaced can never append, even if it wakes up believing it still polls the job (`Fenced`);
- `first` is the stream's last id + 1: two writers can never interleave and no seq is skipped or written
  twice (`OutOfSequence`); XADD with the explicit id `<n>-0` makes Redis check it a second time.
The batch is applied whole or not at all (a script is atomic), so a reader never sees half an answer.

Each entry holds one msgpack-encoded record in the field `r`. Readers use XRANGE (catching up) and
XREAD BLOCK (waiting for the next entry; no sleep loops).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import msgpack
import redis

from relay.errors import StopPolling

_APPEND: Final = """
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
if fence ~= tonumber(ARGV[1]) then
  return redis.error_reply('FENCED token ' .. ARGV[1] .. ' is stale, the fence is at ' .. fence)
end
local last = 0
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then last = tonumber(string.match(newest[1][1], '^(%d+)')) end
local first = tonumber(ARGV[2])
if first ~= last + 1 then
  return redis.error_reply('SEQUENCE the next entry is ' .. (last + 1) .. ', not ' .. first)
end
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], (first + i - 3) .. '-0', 'r', ARGV[i])
end
return first + #ARGV - 3
"""


class StreamError(Exception):
    pass


class Fenced(StopPolling, StreamError):
    """This writer's fencing token is stale: another replica holds the job now. Stop writing."""


class OutOfSequence(StreamError):
    """The batch does not start right after the stream's last entry (another writer appended)."""


def _id_number(entry_id: Any) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])


def _decode(fields: dict[Any, Any]) -> dict[str, Any]:
    raw: bytes = fields[b"r"] if b"r" in fields else fields["r"]
    record: dict[str, Any] = msgpack.unpackb(raw, raw=False)
    return record


class FencedStream:
    """One Redis Stream `key`, appended to under the fencing token kept at `fence_key`."""

    def __init__(self, client: redis.Redis, key: str, fence_key: str) -> None:
        self.client = client
        self.key = key
        self.fence_key = fence_key
        self._append = client.register_script(_APPEND)

    def append(self, token: int, first: int, records: list[dict[str, Any]]) -> int:
        """Append `records` as entries `first`, `first + 1`, ...; returns the last id number."""
        if not records:
            return first - 1
        blobs = [msgpack.packb(r, use_bin_type=True) for r in records]
        try:
            last = self._append(keys=[self.key, self.fence_key], args=[token, first, *blobs])
        except redis.ResponseError as exc:
            text = str(exc)
            if text.startswith("FENCED"):
                raise Fenced(text.removeprefix("FENCED ")) from None
            if text.startswith("SEQUENCE"):
                raise OutOfSequence(text.removeprefix("SEQUENCE ")) from None
            raise
        return int(last)

    def last(self) -> int:
        """The id number of the newest entry (0 when empty)."""
        newest: Any = self.client.xrevrange(self.key, count=1)
        return _id_number(newest[0][0]) if newest else 0

    def read(self, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Entries with an id number above `after`, at most `limit`, in order."""
        if limit <= 0:
            return []
        entries: Any = self.client.xrange(self.key, min=f"{after + 1}-0", max="+", count=limit)
        return [(_id_number(entry_id), _decode(fields)) for entry_id, fields in entries]

    def scan(self, batch: int = 1024) -> Iterator[tuple[int, dict[str, Any]]]:
        after = 0
        while entries := self.read(after, batch):
            yield from entries
            after = entries[-1][0]

    def wait(self, after: int, block_ms: int) -> int:
        """Block until an entry above `after` exists (or `block_ms` passed); returns the newest id number
        seen (`after` when none came). XREAD BLOCK: Redis wakes the reader, nothing polls."""
        answer = self.client.xread({self.key: f"{after}-0"}, count=1, block=max(1, block_ms))
        if not answer:
            return after
        return max(after, self.last())

    def delete(self) -> None:
        self.client.delete(self.key)
