"""A faithful local stand-in for RunPod's serverless job API (both the client and the worker side).

    from podstream.emulator import Emulator, EmulatorConfig

    async with Emulator(EmulatorConfig(endpoint_id="test", api_key="secret")).serve() as emu:
        ...  # emu.endpoint_url, emu.worker_env(pod_id), emu.spawn_workers(n, cmd), emu.faults, emu.stats()

See docs/emulator.md for what it does, and where it differs from production.
"""

from podstream.emulator.config import EmulatorConfig, RateLimit
from podstream.emulator.faults import Faults
from podstream.emulator.jobs import JobStatus
from podstream.emulator.server import Emulator
from podstream.emulator.workers import WorkerFailure, WorkerProcess

__all__ = ["Emulator", "EmulatorConfig", "Faults", "JobStatus", "RateLimit", "WorkerFailure", "WorkerProcess"]
