"""The Python package as a user gets it: `python -m build` makes an sdist and a wheel that pass
`twine check` and carry the relay's page, the licence and the type marker; the wheel installs into a
fresh virtual environment (core dependencies only: no torch) where `podstream` runs, and where each server
command says in one line which extra it needs.

Needs only PyPI (or the pip cache) reachable: the build backend and the core dependencies are fetched
the ordinary way. Slow-ish (one build, one venv), so it is one test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{argv}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_build_check_install_and_run(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # sdist first, then the wheel built from that sdist (what `python -m build` does): a file missing
    # from the sdist is then missing from the wheel too, and this test sees it.
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
    (sdist,) = dist.glob("podstream-*.tar.gz")
    (wheel,) = dist.glob("podstream-*-py3-none-any.whl")
    check = run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)
    assert check.stdout.count("PASSED") == 2, check.stdout

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(info).decode()
    for needed in ("relay/static/index.html", "relay/static/podstream-client.js", "podstream/py.typed",
                   "worker/inputs.py", "podstream/backoff.py"):  # fmt: skip
        assert needed in names, needed
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    # PyPI's page: where the project lives, who made it, the Pythons it runs on (the images run 3.12), and
    # a description whose links work there too (PyPI resolves no relative link)
    assert "Project-URL: Repository, https://github.com/" in metadata
    assert "Project-URL: Documentation, https://github.com/" in metadata
    assert re.search(r"^Author: .+$", metadata, re.MULTILINE)
    for version in ("3.11", "3.12"):
        assert f"Classifier: Programming Language :: Python :: {version}" in metadata
    description = metadata.split("\n\n", 1)[1]
    targets = re.findall(r"\]\(([^)\s]+)\)", description)
    assert targets and not [t for t in targets if not t.startswith(("https://", "#"))], targets
    assert not any(n.startswith("tests/") for n in names)
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "relay/static/index.html", "pyproject.toml"} <= members

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # This interpreter's pip installs into the fresh venv: the wheel and its core dependencies only.
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", wheel)
    freeze = run(sys.executable, "-m", "pip", "--python", python, "list", "--format", "json").stdout
    installed = {entry["name"].lower() for entry in json.loads(freeze)}
    assert "podstream" in installed and "torch" not in installed and "starlette" not in installed

    help_text = run(venv / "bin" / "podstream", "--help", cwd=tmp_path).stdout
    assert help_text.startswith("usage: podstream") and "cancel" in help_text and "submit" in help_text
    assert run(venv / "bin" / "podstream", "--version", cwd=tmp_path).stdout.strip() == "podstream 0.1.0"
    code = (
        "import sys, importlib.resources as r, podstream, podstream.puller, podstream.watcher, podstream.submit\n"
        "assert podstream.__file__.startswith(sys.prefix), podstream.__file__\n"
        "assert (r.files('relay') / 'static' / 'index.html').is_file()\n"
        "podstream.submit.validate({'task': 'text-to-image', 'items': [{'id': 'a', 'prompt': 'x'}]})\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok', podstream.__version__)\n"
    )
    assert run(python, "-c", code, cwd=tmp_path).stdout.strip() == "ok 0.1.0"
    # a user mistake in the installed CLI: one line, exit 2, the schema check shipped with the wheel
    (tmp_path / "p.txt").write_text("a fox\n")
    bad = subprocess.run(
        [venv / "bin" / "podstream", "submit", "--prompts", "p.txt", "--steps", "-3", "--out", "x",
         "--relay", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2 and "params.steps: -3 is less than the minimum of 1" in bad.stderr, bad.stderr
    # the server commands without their extras: one line naming the extra to install, exit 1; help works
    (tmp_path / "job.json").write_text('{"task": "text-to-image", "items": [{"id": "a", "prompt": "x"}]}')
    for argv, extra in (
        (["relay", "--insecure"], "relay"),
        (["relay", "--generate-key"], "relay"),
        (["emulator"], "emulator"),
        (["worker", "--once", "job.json"], "worker"),
        (["demo", "--out", "demo"], "worker,relay"),
    ):
        done = subprocess.run(
            [venv / "bin" / "podstream", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert done.returncode == 1 and done.stdout == "", (argv, done)
        [line] = done.stderr.splitlines()
        assert (
            line.startswith(f"podstream {argv[0]}: needs the ")
            and f"pip install 'podstream[{extra}]'" in line
        )
    assert not (tmp_path / "demo").exists()  # refused before it started anything
    assert run(venv / "bin" / "podstream", "relay", "--help", cwd=tmp_path).stdout.startswith("usage:")


#: Declared dependencies the code never imports by name, and why they are declared anyway.
RUNTIME_ONLY = {
    "accelerate": "diffusers loads big checkpoints through it (low_cpu_mem_usage, device_map)",
}
#: Distribution name -> import name, where they differ.
IMPORT_NAMES = {
    "pillow": "PIL",
    "prometheus-client": "prometheus_client",
    "pyjwt": "jwt",
    "py-cpuinfo": "cpuinfo",
}


def test_the_cli_knows_each_extras_modules() -> None:
    """`podstream.cli.EXTRA_MODULES` (which extra a missing module names) is pyproject.toml's extras."""
    import re
    import tomllib

    from podstream.cli import COMMAND_EXTRAS, EXTRA_MODULES

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    declared = {
        extra: {
            IMPORT_NAMES.get(name, name.replace("-", "_"))
            for name in (re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in requirements)
        }
        for extra, requirements in extras.items()
        if extra != "dev"
    }
    assert {extra: set(modules) for extra, modules in EXTRA_MODULES.items()} == declared
    assert {extra for needed in COMMAND_EXTRAS.values() for extra in needed} <= set(declared)


def test_every_declared_dependency_is_imported() -> None:
    """A dependency nothing imports (`filelock`, `redis` until a backend uses it) is dead weight for every
    install: each one declared for the package (not the dev tools) must be imported somewhere in it."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    groups.pop("dev")
    sources = "\n".join(
        path.read_text(encoding="utf-8")
        for package in ("podstream", "worker", "relay")
        for path in (ROOT / package).rglob("*.py")
    )
    unused = []
    for group, requirements in groups.items():
        for requirement in requirements:
            name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()
            module = IMPORT_NAMES.get(name, name.replace("-", "_"))
            if name in RUNTIME_ONLY:
                continue
            if module not in imported_modules(sources):
                unused.append(f"{name} ({group})")
    assert not unused, f"declared but never imported: {unused}"


def imported_modules(source: str) -> set[str]:
    """The top-level modules `source` imports: `import x`, `from x import y`, `importlib.import_module("x...")`."""
    found = set(re.findall(r"^\s*(?:import|from) ([A-Za-z_]\w*)", source, re.MULTILINE))
    return found | set(re.findall(r"import_module\(\s*[\"']([A-Za-z_]\w*)", source))


@pytest.mark.parametrize(("package", "groups"), [("worker", ("worker",)), ("podstream", ("worker", "relay"))])
def test_each_third_party_module_imported_is_declared(package: str, groups: tuple[str, ...]) -> None:
    """Declare what you import: a module that only arrives through another package (botocore through the
    runpod SDK, huggingface_hub through diffusers) goes when that package stops bringing it. `worker` may use
    the core dependencies and its extra; `podstream` (whose server commands name the extra they need) the
    core and its extras."""
    import ast
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = [*project["dependencies"], *(r for g in groups for r in extras[g])]
    if package == "podstream":
        requirements += [r for g, rs in extras.items() if g != "dev" for r in rs]
    declared = {
        IMPORT_NAMES.get(name, name.replace("-", "_"))
        for name in (re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in requirements)
    }
    own = {"podstream", "worker", "relay"}
    imported: dict[str, str] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute | ast.Name)
                and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
                == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in own:
                    imported.setdefault(top, str(path.relative_to(ROOT)))
    undeclared = {module: where for module, where in imported.items() if module not in declared}
    assert not undeclared, f"imported but not declared for {package} ({', '.join(groups)}): {undeclared}"
