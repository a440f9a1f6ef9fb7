"""The relay's exception tree: every error the relay raises on purpose is a `RelayError`.

Callers catch by meaning, not by a builtin that happens to fit (`Busy`, not `OverflowError`) and not by
probing attributes (`StopPolling`, not an `ends_polling` flag). Storage errors are `StoreError`s
(`relay.storage.errors`), under this root too.
"""

from __future__ import annotations


class RelayError(Exception):
    """Root of the relay's own errors."""


class Busy(RelayError):
    """The relay is at one of its limits (e.g. how many jobs it polls at once): try again later (503)."""


class StopPolling(RelayError):
    """Not a crash: this relay may no longer poll the job (another replica holds its lease, or its spool
    cannot take files). The poller stops instead of being restarted: a restart would be refused too."""
