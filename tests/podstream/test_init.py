"""podstream/__init__.py: the public names, imported on first use. `import podstream` and the worker API
(`podstream.wrap`, `serve`, the model types) never import torch, and find podstream's worker package even
where the user's own `worker.py` comes first on sys.path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv] if argv else [sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_the_worker_api_is_the_worker_packages_and_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys, podstream\n"
        "assert 'worker' not in sys.modules, 'import podstream imported the worker'\n"
        "from podstream import wrap, serve, WrapConfig, run_once, Request, Context, Result, Image, Video, File\n"
        "from podstream import Model, Models, Cancelled\n"
        "import worker, worker.wrapper, worker.start, worker.model\n"
        "assert wrap is worker.wrapper.wrap and serve is worker.start.serve and Video is worker.model.Video\n"
        "assert 'torch' not in sys.modules and 'runpod' not in sys.modules, 'heavy import'\n"
        "print('ok')\n"
    )
    done = run_python(code, tmp_path)
    assert done.stdout.strip() == "ok", done.stderr
    assert set(__import__("podstream").__all__) >= {"wrap", "serve", "WrapConfig", "Request", "Video"}


def test_the_client_api_imports_neither_torch_nor_the_runpod_sdk(tmp_path: Path) -> None:
    code = (
        "import sys, podstream\n"
        "from podstream import pull, apull, watch, awatch, save, asave\n"
        "import podstream.sdk\n"
        "assert save is podstream.sdk.save and asave is podstream.sdk.asave\n"
        "assert not {'torch', 'runpod', 'worker'} & set(sys.modules), 'heavy import'\n"
        "print('ok')\n"
    )
    done = run_python(code, tmp_path)
    assert done.stdout.strip() == "ok", done.stderr
    assert set(__import__("podstream").__all__) >= {"pull", "watch", "save", "asave"}


def test_a_users_worker_py_does_not_hide_the_worker_package(tmp_path: Path) -> None:
    """A handler script named worker.py (`import worker` would import itself), and a script beside one."""
    (tmp_path / "worker.py").write_text(
        "import podstream\n"
        "handler = podstream.wrap(lambda job: {'ok': True})\n"
        "import worker, inspect\n"  # now podstream's package: this file runs as __main__
        "print(inspect.isasyncgenfunction(handler), worker.__file__)\n"
    )
    done = run_python("", tmp_path, str(tmp_path / "worker.py"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", str(ROOT / "worker" / "__init__.py")]
    (tmp_path / "handler.py").write_text("from podstream import serve\nprint(serve.__module__)\n")
    done = run_python("", tmp_path, str(tmp_path / "handler.py"))
    assert done.stdout.strip() == "worker.start", done.stderr


def test_a_module_named_worker_already_imported_is_named() -> None:
    """Where the user's own module holds the name `worker`, the two cannot share it: say which file."""
    fake = type(sys)("worker")
    fake.__file__ = "/srv/app/worker.py"
    saved = sys.modules.get("worker")
    sys.modules["worker"] = fake
    try:
        import podstream

        with pytest.raises(ImportError, match=r"hidden by /srv/app/worker.py.*rename that module"):
            podstream._worker_module("wrapper")
    finally:
        if saved is None:
            del sys.modules["worker"]
        else:
            sys.modules["worker"] = saved
