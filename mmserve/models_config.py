"""The model table: built-in entries (MODELS_CONFIG, in builtin_models.py) merged with
override files and settings, and validated into ModelSpecs."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .builtin_models import MODELS_CONFIG  # noqa: F401 - the table's data, re-exported
from .durations import parse_keep_alive

FAMILIES = ("text", "vision_language", "vqa", "audio", "omni", "embedding")
CAPABILITIES = ("text", "image", "audio", "video")
DTYPES = ("auto", "float32", "float16", "bfloat16")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SOURCE_TYPES = ("hub", "pypi_gguf", "pypi_dir")
ROOT = Path(__file__).resolve().parent.parent

# Per-entry generation defaults: key -> (kind, smallest value, largest value).
GENERATION_RULES = {
    "max_new_tokens": (int, 1, None),
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.0, 1.0),
    "top_k": (int, 0, None),
    "repetition_penalty": (float, 0.01, 10.0),
    # speech output of omni models (families/omni.py): codec tokens and vocoder steps
    "talker_max_new_tokens": (int, 1, None),
    "token2wav_num_steps": (int, 1, None),
}
GENERATION_KEYS = set(GENERATION_RULES)
# Fields an override inherits only while it keeps the earlier entry's family / repo_id: they
# describe the old family's inputs and classes, or the old weights (where they are, what they
# are, whether their code is trusted, whether their template opens a think block).
FAMILY_FIELDS = ("capabilities", "loader_class", "processor_class")
REPO_FIELDS = (
    "local_dir", "source", "revision", "description", "owned_by", "trust_remote_code", "reasoning",
)  # fmt: skip


class ConfigError(ValueError):
    """An invalid table entry; the message names the entry and the field."""


@dataclass(frozen=True)
class ModelSpec:
    """One validated table entry."""

    name: str
    repo_id: str | None
    family: str
    local_dir: str
    revision: str = "main"
    description: str = ""
    source: dict = field(default_factory=lambda: {"type": "hub"})
    loader_class: str | None = None
    processor_class: str | None = None
    dtype: str = "auto"
    quantization: int | None = None  # bits of a fixed choice; the first choice of a list
    # Choices tried in order at load, the first that fits wins: (q,) for a fixed entry;
    # `quantization: auto` is (None, 8, 4); a list such as [null, 8, 4] is taken as given.
    quantization_choices: tuple = (None,)
    max_memory: dict | None = None
    keep_alive: float | None = None  # None: the server default
    capabilities: tuple[str, ...] = ("text",)  # validate_entry: the family's when not given
    trust_remote_code: bool = False
    reasoning: bool = False  # the chat template opens <think>: output starts inside reasoning
    generation: dict = field(default_factory=dict)
    owned_by: str = "mmserve"
    origin: str | None = None  # the --models-config file the entry came from (not a table field)

    def path(self, models_dir: Path) -> Path:
        """Where the weights live; always inside models_dir."""
        return Path(models_dir) / self.local_dir

    def download_command(self, models_dir: Path | None = None) -> str:
        """A shell command that fetches this entry as printed: this server's own interpreter
        running main.py --download, with the config file and models folder it needs."""
        argv = [sys.executable, str(ROOT / "main.py")]
        if self.origin:
            argv += ["--models-config", self.origin]
        if models_dir is not None and Path(models_dir).resolve() != (ROOT / "models").resolve():
            argv += ["--models-dir", str(Path(models_dir).resolve())]
        return shlex.join(argv + ["--download", self.name])


def _fail(name: str, field_name: str, why: str):
    raise ConfigError(f"model '{name}': field '{field_name}' {why}")


def _quantization_choices(name: str, value) -> tuple:
    """none | 4 | 8 | auto | a list of those: the bits tried in order (None = full precision)."""
    if value == "auto":
        return (None, 8, 4)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        _fail(name, "quantization", "must be none, 4, 8, auto or a non-empty list of those")
    out = []
    for item in items:
        if item in (None, 0, "none", "None", ""):
            item = None
        if item is not None and (isinstance(item, bool) or item not in (4, 8)):
            _fail(name, "quantization", "must be none, 4, 8, auto or a non-empty list of those")
        out.append(item)
    return tuple(out)


def validate_entry(raw: dict) -> ModelSpec:
    """Validate one raw entry into a ModelSpec, naming the entry and the field on error."""
    if not isinstance(raw, dict):
        raise ConfigError("model entry must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"model '{name}': field 'name' must be URL-safe (letters, digits, . _ -)")
    known = set(ModelSpec.__dataclass_fields__) - {"origin", "quantization_choices"}
    for key in raw:
        if key not in known:
            _fail(name, key, "is not a known field")
    family = raw.get("family")
    if family not in FAMILIES:
        missing = "is required" if family is None else f"is {family!r}: it"
        _fail(name, "family", f"{missing} must be one of {', '.join(FAMILIES)}")
    source = raw.get("source") or {"type": "hub"}
    if not isinstance(source, dict) or source.get("type") not in SOURCE_TYPES:
        _fail(name, "source", f"must be a mapping with type one of {', '.join(SOURCE_TYPES)}")
    if source["type"] != "hub" and not source.get("package"):
        _fail(name, "source", "needs 'package' for a PyPI source")
    repo_id = raw.get("repo_id")
    if source["type"] == "hub" and (not isinstance(repo_id, str) or "/" not in repo_id):
        missing = "is required: it" if repo_id is None else ""
        _fail(name, "repo_id", f"{missing} must be a Hub id like 'org/name'".lstrip())
    local_dir = raw.get("local_dir") or name
    if (
        not isinstance(local_dir, str)
        or local_dir.startswith(("/", "\\"))
        or ".." in Path(local_dir).parts
        or "\\" in local_dir
    ):
        _fail(name, "local_dir", "must be a relative folder inside models/")
    dtype = raw.get("dtype", "auto")
    if dtype not in DTYPES:
        _fail(name, "dtype", f"must be one of {', '.join(DTYPES)}")
    choices = _quantization_choices(name, raw.get("quantization"))
    caps = _capabilities(name, family, raw.get("capabilities"))
    keep_alive = raw.get("keep_alive")
    if keep_alive is not None:
        try:
            keep_alive = parse_keep_alive(keep_alive)
        except ValueError as exc:
            _fail(name, "keep_alive", str(exc).replace("keep_alive ", ""))
    gen = _generation(name, raw.get("generation"))
    max_memory = raw.get("max_memory")
    if max_memory is not None and not isinstance(max_memory, dict):
        _fail(name, "max_memory", "must be a mapping like {'0': '20GiB', 'cpu': '30GiB'}")
    trc = raw.get("trust_remote_code", False)
    if not isinstance(trc, bool):
        _fail(name, "trust_remote_code", "must be true or false")
    reasoning = raw.get("reasoning", False)
    if not isinstance(reasoning, bool):
        _fail(name, "reasoning", "must be true or false")
    for key in ("loader_class", "processor_class"):
        value = raw.get(key)
        if value is not None and not (isinstance(value, str) and value.isidentifier()):
            _fail(name, key, "must be a transformers class name")
    return ModelSpec(
        name=name,
        repo_id=repo_id,
        family=family,
        local_dir=local_dir,
        revision=str(raw.get("revision") or "main"),
        description=str(raw.get("description", "")),
        source=dict(source),
        loader_class=raw.get("loader_class"),
        processor_class=raw.get("processor_class"),
        dtype=dtype,
        quantization=choices[0],
        quantization_choices=choices,
        max_memory=max_memory,
        keep_alive=keep_alive,
        capabilities=caps,
        trust_remote_code=trc,
        reasoning=reasoning,
        generation=dict(gen),
        owned_by=str(raw.get("owned_by") or (repo_id or "mmserve").split("/")[0]),
    )


def _capabilities(name: str, family: str, caps) -> tuple[str, ...]:
    """The entry's inputs: its family's (declared by the family handler) when not given; a
    given list may narrow them, never widen them."""
    from .families import get_handler  # here: the handlers import this module

    takes = tuple(get_handler(family).capabilities)
    if caps is None:
        return takes
    if not isinstance(caps, (list, tuple)) or not caps or any(c not in CAPABILITIES for c in caps):
        _fail(name, "capabilities", f"must be a non-empty list of {', '.join(CAPABILITIES)}")
    extra = [c for c in caps if c not in takes]
    if extra:
        _fail(
            name,
            "capabilities",
            f"lists {', '.join(extra)}, which the family '{family}' cannot take "
            f"(it takes {', '.join(takes)}; leave the field out for all of them)",
        )
    return tuple(dict.fromkeys(caps))


def _generation(name: str, gen) -> dict:
    """Generation defaults, each checked against GENERATION_RULES; null drops a key."""
    gen = {} if gen is None else gen
    if not isinstance(gen, dict):
        _fail(name, "generation", "must be a mapping")
    out = {}
    for key, value in gen.items():
        if key not in GENERATION_RULES:
            _fail(name, f"generation.{key}", f"is not one of {', '.join(sorted(GENERATION_KEYS))}")
        if value is None:
            continue
        kind, lo, hi = GENERATION_RULES[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind is int and value != int(value)):
            _fail(
                name, f"generation.{key}", f"must be {'an integer' if kind is int else 'a number'}"
            )
        if value < lo or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            _fail(name, f"generation.{key}", f"must be {bounds}")
        out[key] = kind(value)
    return out


def override(base: dict | None, raw: dict) -> dict:
    """An entry over an earlier one of the same name. Given fields replace inherited ones, and
    `generation` merges key by key. If the override changes the family, the fields that came
    with the old family (FAMILY_FIELDS) are not inherited; if it changes repo_id, neither are
    those that located or described the old weights (REPO_FIELDS): they default afresh."""
    if not base:
        return dict(raw)
    out = {**base, **raw}
    for key, derived in (("family", FAMILY_FIELDS), ("repo_id", REPO_FIELDS)):
        if key in raw and raw[key] != base.get(key):
            for field_name in derived:
                if field_name not in raw:
                    out.pop(field_name, None)
    if isinstance(base.get("generation"), dict) and isinstance(raw.get("generation"), dict):
        out["generation"] = {**base["generation"], **raw["generation"]}
    return out


def read_config_file(path: Path) -> list[dict]:
    """Entries from a YAML or JSON file (by suffix): a list, or {"models": [...]}.
    Raises ConfigError naming the file, and the line and column of a syntax error."""
    path = Path(path)
    where = f"models config file '{path}'"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{where} cannot be read: {why}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            ) from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "syntax error"
            raise ConfigError(f"{where} is not valid YAML: {problem}{at}") from None
    if isinstance(data, dict):
        others = [str(k) for k in data if k != "models"]
        if others:
            raise ConfigError(f"{where}: unknown top-level key {others[0]!r} (only 'models')")
        data = data.get("models")
    if not isinstance(data, list):
        raise ConfigError(f"{where} must hold a list of entries under 'models'")
    return data


def build_table(
    extra: list[dict] | None = None,
    config_file: Path | None = None,
    replace: bool = False,
) -> dict[str, ModelSpec]:
    """The validated table: built-ins, then the file's entries, then `extra`; a later entry of
    the same name overrides an earlier one (see `override`). Raises ConfigError naming the
    source (file or setting), the entry's position in it, the model and the field."""
    merged: dict[str, dict] = {}
    where: dict[str, str] = {}  # name -> the source and position of its last entry
    origin: dict[str, str] = {}  # entries a --models-config file added or changed
    sources = [("built-in table", None, [] if replace else MODELS_CONFIG)]
    if config_file:
        sources.append(
            (
                f"models config file '{config_file}'",
                str(Path(config_file).resolve()),
                read_config_file(config_file),
            )
        )
    sources.append(("setting 'models'", None, extra or []))
    for label, source, entries in sources:
        for i, raw in enumerate(entries, start=1):
            at = f"{label}, entry {i}"
            if not isinstance(raw, dict):
                raise ConfigError(f"{at}: a model entry must be a mapping")
            if not isinstance(raw.get("name"), str):
                raise ConfigError(f"{at}: field 'name' is required (a URL-safe string)")
            merged[raw["name"]] = override(merged.get(raw["name"]), raw)
            where[raw["name"]] = at
            if source:
                origin[raw["name"]] = source
    table = {}
    for name, raw in merged.items():
        try:
            table[name] = validate_entry(raw)
        except ConfigError as exc:
            raise ConfigError(f"{where[name]}: {exc}") from None
    for name, source in origin.items():
        table[name] = dataclasses.replace(table[name], origin=source)
    dirs: dict[str, str] = {}
    for spec in table.values():
        if spec.local_dir in dirs:
            raise ConfigError(
                f"{where[spec.name]}: model '{spec.name}': field 'local_dir' "
                f"is also used by '{dirs[spec.local_dir]}'"
            )
        dirs[spec.local_dir] = spec.name
    return table
