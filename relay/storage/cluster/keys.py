"""Redis key names. Every key of one job shares the hash tag `{<job>}`, so the Lua scripts that touch
several of them (a fenced append reads the fence and writes the stream) also run on Redis Cluster."""

from __future__ import annotations

from typing import Final

#: Prefix of every key (several deployments may share one Redis with different prefixes).
DEFAULT_PREFIX: Final = "podstream"


class Keys:
    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def job(self, job: str, part: str) -> str:
        return f"{self.prefix}:{{{job}}}:{part}"

    def lease(self, name: str) -> str:
        return self.job(name, "lease")

    def fence(self, name: str) -> str:
        return self.job(name, "fence")

    def journal(self, job: str) -> str:
        return self.job(job, "journal")

    def wire(self, job: str) -> str:
        return self.job(job, "wire")

    def meta(self, job: str) -> str:
        return self.job(job, "meta")

    def link(self, code: str) -> str:
        """Hash: a link code's job, issuer, expiry and uses left (`relay.storage.cluster.link_codes`)."""
        return f"{self.prefix}:link:{code}"

    @property
    def jobs(self) -> str:
        """Sorted set: job -> created_at."""
        return f"{self.prefix}:jobs"

    @property
    def active(self) -> str:
        """Set: jobs not finished yet (what a replica may have to take over)."""
        return f"{self.prefix}:active"

    @property
    def expiry(self) -> str:
        """Sorted set: finished job -> the time it is to be deleted."""
        return f"{self.prefix}:expiry"
