"""Recipes: one TOML file describes a whole job; loaded into frozen, validated dataclasses.

Every key has a default (commented inline below and documented in the README), so a recipe only
states what differs. Unknown keys and bad values raise :class:`BadInputError` naming the key.
Relative paths are resolved against the working directory, then the recipe's folder and its parent.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from modelpress.calibration_data import shipped_path
from modelpress.config_types import checked_values
from modelpress.errors import BadInputError
from modelpress.runtimes.quantize.config import QuantizeConfig

TASKS = ("feature-extraction", "text-classification")
EVAL_FORMATS = ("auto", "text", "pairs", "stsb")


def _section(name: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise BadInputError(f"{name}: expected a table ([{name}])")
    return dict(raw)


def _build(cls, section: str, raw: Mapping[str, Any], **extra: Any):
    known = {f.name for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise BadInputError(f"{section}.{key}: unknown key; known keys: {', '.join(sorted(known))}")
    values = checked_values(cls, section, {**raw, **extra})
    try:
        return cls(**values)
    except TypeError as exc:
        raise BadInputError(f"{section}: {exc}") from None


@dataclass(frozen=True)
class TaskConfig:
    pooling: str = "auto"       # feature-extraction: "mean" | "cls" | "auto" (sentence-transformers config, else mean)
    normalize: bool | None = None  # L2-normalize embeddings; None: as the sentence-transformers config says (else False)

    def __post_init__(self) -> None:
        if self.pooling not in ("auto", "mean", "cls"):
            raise BadInputError(f"task_options.pooling: expected auto, mean or cls, got {self.pooling!r}")


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18             # ONNX opset (>= 18)
    atol: float = 1e-4          # parity tolerance: max |onnx - torch| on a batch of another shape
    fuse: bool = False          # also write model.fused.onnx (ORT transformer fusion), parity-checked
    fuse_atol: float = 1e-3     # parity tolerance of the fused graph (fusion reorders float math)

    def __post_init__(self) -> None:
        if self.opset < 18:
            raise BadInputError(f"export.opset: expected >= 18, got {self.opset}")
        if self.atol <= 0:
            raise BadInputError("export.atol: expected a positive tolerance")


@dataclass(frozen=True)
class CalibrationConfig:
    data: str = "calibration_data/en_default.txt"  # .txt | .jsonl | .csv | .tsv | datasets folder
    text_field: str = "text"    # field / column holding the text (structured files)
    num_samples: int = 512      # texts sampled (deterministically) for calibration
    max_length: int = 128       # tokens per text (truncation)
    batch_size: int = 16        # texts per calibration batch (padded to the longest)
    seed: int = 0               # sampling seed

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_length < 2 or self.batch_size < 1:
            raise BadInputError("calibration: num_samples and batch_size must be >= 1, max_length >= 2")


@dataclass(frozen=True)
class ValidateConfig:
    eval_data: str = "calibration_data/en_eval.jsonl"  # eval set (see README: text, pairs, stsb formats)
    eval_format: str = "auto"   # "auto" | "text" | "pairs" | "stsb"
    text_field: str = "text"    # text column for the "text" format
    label_field: str = "label"  # optional gold label column (classification accuracy)
    num_samples: int = 0        # cap on eval rows (0 = all)
    max_length: int = 128       # tokens per text
    batch_size: int = 32        # batch size for the accuracy pass (length-sorted, dynamic padding)
    batch_sizes: tuple[int, ...] = (1, 32)   # latency: batch sizes ...
    seq_lengths: tuple[int, ...] = (128,)    # ... times padded sequence lengths
    latency_runs: int = 30      # timed runs per shape (after warm-up)
    warmup_runs: int = 3        # untimed runs per shape
    threads: int = 0            # intra-op threads for ONNX Runtime and torch (0 = all cores)
    real_workload: bool = True  # also time the eval texts, length-sorted, batch 32, dynamic padding

    def __post_init__(self) -> None:
        if self.eval_format not in EVAL_FORMATS:
            raise BadInputError(f"validate.eval_format: expected one of {', '.join(EVAL_FORMATS)}, got {self.eval_format!r}")
        if not self.batch_sizes or not self.seq_lengths or min(self.batch_sizes + self.seq_lengths) < 1:
            raise BadInputError("validate.batch_sizes / seq_lengths: expected non-empty lists of positive ints")
        if self.latency_runs < 1 or self.warmup_runs < 0 or self.threads < 0 or self.num_samples < 0:
            raise BadInputError("validate: latency_runs >= 1, warmup_runs >= 0, threads >= 0, num_samples >= 0")


@dataclass(frozen=True)
class GateConfig:
    max_drop: float = 0.5       # most points (metric × 100) the candidate may lose vs the teacher
    metric: str = "auto"        # primary metric; "auto" picks per task (see README)

    def __post_init__(self) -> None:
        if self.max_drop < 0:
            raise BadInputError(f"gate.max_drop: expected >= 0, got {self.max_drop}")


@dataclass(frozen=True)
class Recipe:
    name: str
    teacher: str                # hub id | local folder | package:<module shipping an HF folder>
    student: str | None = None  # an already-trained student to deploy instead of the teacher (no [distill])
    task: str = "feature-extraction"   # | "text-classification"
    trust_remote_code: bool = False    # let transformers run code shipped with the model
    seed: int = 0
    task_options: TaskConfig = field(default_factory=TaskConfig)
    distill: Any = None         # distill.config.DistillConfig
    export: ExportConfig = field(default_factory=ExportConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    engine: Any = None          # runtimes.tensorrt.config.EngineConfig
    source: str = ""            # the recipe file this came from
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)  # as parsed, for the manifest

    def __post_init__(self) -> None:
        if self.student is not None and self.distill_enabled:
            raise BadInputError("student: a recipe names a ready student or distills one ([distill] enabled), not both")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise BadInputError(f"name: expected a plain folder name, got {self.name!r}")
        if self.task not in TASKS:
            raise BadInputError(f"task: expected one of {', '.join(TASKS)}, got {self.task!r}")

    @property
    def distill_enabled(self) -> bool:
        return bool(self.distill is not None and getattr(self.distill, "enabled", False))

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if k != "raw"}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


TOP_LEVEL = {"name", "teacher", "student", "task", "trust_remote_code", "seed"}
SECTIONS = {"task_options", "distill", "export", "calibration", "quantize", "validate", "gate", "engine"}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` → (["section", "key"], value); the value is read as TOML, else a string."""
    if "=" not in text:
        raise BadInputError(f"--set {text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise BadInputError(f"--set {text!r}: {part} is not a section")
        node[path[-1]] = value
    return raw


def resolve_path(value: str, base_dirs: list[Path]) -> str:
    """An existing path for a recipe value, trying each base folder; else the value unchanged."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    for base in base_dirs:
        if (base / p).exists():
            return str((base / p).resolve())
    shipped = shipped_path(value)
    return str(shipped) if shipped is not None else value


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: recipe file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not UTF-8 text") from None
    raw = apply_overrides(raw, overrides or [])
    return recipe_from_dict(raw, source=path)


def recipe_from_dict(raw: dict[str, Any], *, source: Path | None = None) -> Recipe:
    for key in raw:
        if key not in TOP_LEVEL | SECTIONS:
            raise BadInputError(f"{key}: unknown recipe key; known: {', '.join(sorted(TOP_LEVEL | SECTIONS))}")
    for key in ("name", "teacher"):
        if key not in raw:
            raise BadInputError(f"{key}: required recipe key is missing")
    base_dirs = [Path.cwd()]
    if source is not None:
        base_dirs += [source.resolve().parent, source.resolve().parent.parent]

    calibration = _section("calibration", raw.get("calibration"))
    if "data" in calibration:
        calibration["data"] = resolve_path(str(calibration["data"]), base_dirs)
    else:
        calibration["data"] = str(shipped_path(CalibrationConfig.data))
    validate = _section("validate", raw.get("validate"))
    if "eval_data" in validate:
        validate["eval_data"] = resolve_path(str(validate["eval_data"]), base_dirs)
    else:
        validate["eval_data"] = str(shipped_path(ValidateConfig.eval_data))

    teacher = str(raw["teacher"])
    if not teacher.startswith("package:"):
        teacher = resolve_path(teacher, base_dirs)
    student = raw.get("student")
    if student is not None:
        student = str(student)
        if not student.startswith("package:"):
            student = resolve_path(student, base_dirs)

    distill_raw = _section("distill", raw.get("distill"))
    distill_cfg = None
    if distill_raw:
        from modelpress.distill.config import DistillConfig
        if "data" in distill_raw:
            distill_raw["data"] = resolve_path(str(distill_raw["data"]), base_dirs)
        distill_cfg = DistillConfig.from_dict(distill_raw, base_dir=base_dirs[1] if source is not None else Path.cwd())
    engine_raw = _section("engine", raw.get("engine"))
    engine_cfg = None
    if engine_raw:
        from modelpress.runtimes.tensorrt.config import EngineConfig
        engine_cfg = EngineConfig.from_dict(engine_raw, base_dir=base_dirs[1] if source is not None else Path.cwd())

    return Recipe(
        name=str(raw["name"]),
        teacher=teacher,
        student=student,
        task=str(raw.get("task", "feature-extraction")),
        trust_remote_code=bool(raw.get("trust_remote_code", False)),
        seed=int(raw.get("seed", 0)),
        task_options=_build(TaskConfig, "task_options", _section("task_options", raw.get("task_options"))),
        distill=distill_cfg,
        export=_build(ExportConfig, "export", _section("export", raw.get("export"))),
        calibration=_build(CalibrationConfig, "calibration", calibration),
        quantize=QuantizeConfig.from_dict(_section("quantize", raw.get("quantize"))),
        validate=_build(ValidateConfig, "validate", validate),
        gate=_build(GateConfig, "gate", _section("gate", raw.get("gate"))),
        engine=engine_cfg,
        source=str(source) if source else "",
        raw=raw,
    )
