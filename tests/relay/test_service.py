"""relay.service and the app shell: retention sweep, the demo page, `import relay` stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from relay.app import STATIC_DIR
from relay.config import RelaySettings
from relay.service import Relay
from tests.relay.conftest import RelayServer


async def test_sweep_deletes_finished_jobs_past_retention(tmp_path: Path) -> None:
    relay = Relay(RelaySettings(data_dir=tmp_path, fsync="never", retention_s=60, insecure=True))
    await relay.start()
    try:
        done = relay.store.create("old-job")
        done.record([("done", {"status": "COMPLETED", "items": 0, "errors": 0})])
        done.commit()
        running = relay.store.create("running-job")
        finished_at = done.meta["finished_at"]
        assert relay.sweep(now=finished_at + 30) == []
        assert relay.sweep(now=finished_at + 61) == ["old-job"]
        assert relay.store.job_ids() == ["running-job"] and relay.job("old-job") is None
        running.close()
    finally:
        await relay.stop()


async def test_demo_page_and_static_files(relay_server: RelayServer) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{relay_server.url}/")
        assert r.status_code == 200
        if (STATIC_DIR / "index.html").is_file():
            assert r.headers["content-type"].startswith("text/html")
            for path in sorted(STATIC_DIR.iterdir()):
                if path.is_file():
                    s = await http.get(f"{relay_server.url}/static/{path.name}")
                    assert s.status_code == 200 and s.content == path.read_bytes()
        else:
            assert r.json()["service"] == "podstream relay"
        assert (await http.get(f"{relay_server.url}/static/../app.py")).status_code == 404


def test_import_relay_does_not_import_torch() -> None:
    code = "import sys, relay, relay.app, relay.serve, relay.ws; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
