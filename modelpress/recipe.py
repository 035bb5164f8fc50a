"""Recipes: one TOML file describes a whole job; loaded into frozen, validated dataclasses.

Every key has a default (commented inline below and documented in the README), so a recipe only
states what differs. The top level and every section go through one checker
(:mod:`modelpress.config_check`): unknown keys and bad values raise :class:`BadInputError` naming
the key, and relative paths follow one rule (:class:`~modelpress.config_check.PathRule`).
Task-dependent values (task options, eval format, gate metric) are checked against the task
registry at load, so a typo fails in a second, not after the pipeline ran.

Lengths the model must take (``LENGTH_KEYS`` and the task's ``length_keys``) are fitted to its
positions once it is loaded (:func:`fit_lengths`): a value the user wrote (the file or a ``--set``:
:meth:`Recipe.written`) that does not fit is refused, a default that does not fit is clipped.
"""

from __future__ import annotations

import re
import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from modelpress.runtimes.registry import RUNTIMES
from modelpress.modalities import Length

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from modelpress.config_check import PathRule, check_fields, check_section, checked_fields, written_in
from modelpress.distill.config import DistillConfig
from modelpress.errors import BadInputError
from modelpress.paths import SIBLING_SUFFIXES
from modelpress.quantize.config import QuantizeConfig
from modelpress.runtimes.artifacts import BUNDLE_RUNTIMES, TASK_API
from modelpress.runtimes.target import TARGET_CHOICES
from modelpress.runtimes.tensorrt.config import EngineConfig
from modelpress.tasks import configure_task, get_task, task_names

log = logging.getLogger(__name__)

AUTO = "auto"


def _all_eval_formats() -> tuple[str, ...]:
    formats: list[str] = [AUTO]
    for name in task_names():
        formats += [f for f in get_task(name).eval_formats if f not in formats]
    return tuple(formats)


@dataclass(frozen=True)
class ExportConfig:
    opset: int = field(default=18, metadata={"min": 18, "max": 24})  # ONNX opset (18..24)
    atol: float = field(
        default=1e-4, metadata={"gt": 0.0}
    )  # parity tolerance: max |onnx - torch| on a batch of another shape
    fuse: bool = False  # also write model.fused.onnx (ORT transformer fusion), parity-checked
    fuse_atol: float = field(default=1e-3, metadata={"gt": 0.0})  # parity tolerance of the fused graph

    def __post_init__(self) -> None:
        check_fields(self, "export")


@dataclass(frozen=True)
class CalibrationConfig:
    data: str = field(
        default="calibration_data/en_default.txt", metadata={"path": True}
    )  # .txt | .jsonl | .csv | .tsv | datasets folder
    text_field: str = "text"  # field / column holding the text (structured files)
    image_field: str = (
        "image"  # field / column holding the image path (image models' .jsonl/.csv; a datasets folder's Image column)
    )
    num_samples: int = field(default=512, metadata={"min": 1})  # texts sampled (deterministically) for calibration
    max_length: int = field(default=128, metadata={"min": 2})  # tokens per text (truncation)
    batch_size: int = field(default=16, metadata={"min": 1})  # texts per calibration batch (padded to the longest)
    seed: int = 0  # sampling seed

    def __post_init__(self) -> None:
        check_fields(self, "calibration")


@dataclass(frozen=True)
class ValidateConfig:
    eval_data: str = field(
        default="calibration_data/en_eval.jsonl", metadata={"path": True}
    )  # eval set (formats: README)
    eval_format: str = field(default=AUTO, metadata={"choices": _all_eval_formats()})  # the task's formats, or auto
    text_field: str = "text"  # text column ("text" format); token lists of "jsonl" tagged sets when not "text"
    label_field: str = (
        "label"  # gold label column (classification accuracy); tag lists of tagged jsonl when not "label"
    )
    image_field: str = "image"  # image path column of .jsonl/.csv eval sets (image models)
    num_samples: int = field(default=0, metadata={"min": 0})  # cap on eval rows (0 = all)
    max_length: int = field(default=128, metadata={"min": 2})  # tokens per text
    batch_size: int = field(default=32, metadata={"min": 1})  # batch size for the accuracy pass (length-sorted)
    batch_sizes: tuple[int, ...] = field(
        default=(1, 32), metadata={"min": 1, "nonempty": True}
    )  # latency: batch sizes ...
    seq_lengths: tuple[int, ...] = field(default=(128,), metadata={"min": 1, "nonempty": True})  # ... × padded lengths
    latency_runs: int = field(default=30, metadata={"min": 1})  # timed runs per shape (after warm-up), at most
    latency_budget_s: float = field(
        default=60.0, metadata={"min": 0.0}
    )  # seconds of timed rounds per shape (0 = no limit; ≥ 5 rounds)
    warmup_runs: int = field(default=3, metadata={"min": 0})  # untimed runs per shape
    threads: int = field(default=0, metadata={"min": 0})  # intra-op threads for ONNX Runtime and torch (0 = all cores)
    real_workload: bool = True  # also time the eval set, length-sorted, batch 32, dynamic padding
    runtimes: tuple[str, ...] = field(
        default=("onnxruntime",), metadata={"choices": BUNDLE_RUNTIMES, "nonempty": True}
    )  # the bundle's CPU runtimes: each is measured and gated
    openvino_precision: str = field(
        default="f32", metadata={"choices": ("f32", "bf16")}
    )  # OpenVINO's float parts: f32, or bf16 (AVX512-BF16/AMX CPUs)

    def __post_init__(self) -> None:
        check_fields(self, "validate")
        if len(set(self.runtimes)) != len(self.runtimes):
            raise BadInputError(f"validate.runtimes: each runtime once, got {list(self.runtimes)}")

    def runner_options(self, runtime: str) -> dict[str, Any]:
        """What this section says to one runtime's runner beyond threads."""

        return RUNTIMES.get(runtime).options_from(self)


@dataclass(frozen=True)
class GateConfig:
    max_drop: float = field(default=0.5, metadata={"min": 0.0})  # most points (metric × 100) the candidate may lose
    metric: str = AUTO  # the gated metric: "auto" (the task's rule) or one of the task's metrics
    policy: str = field(
        default="point", metadata={"choices": ("point", "confident", "lenient")}
    )  # how the 95 % interval decides
    max_latency_ratio: float | None = field(
        default=1.0, metadata={"gt": 0.0}
    )  # candidate ÷ ORT fp32 time at select.shape; fails only when its whole 95 % interval is above it
    latency_shape: str = ""  # the timed shape of max_latency_ratio, e.g. "b32xs128" (default: select.shape)

    def __post_init__(self) -> None:
        check_fields(self, "gate")


#: what ``select.candidates`` may name: the precisions a runtime can offer
CANDIDATE_PRECISIONS = ("int8", "fp32", "bf16")


@dataclass(frozen=True)
class SelectConfig:
    """Which validated candidate the bundle opens by default (``validate.select``)."""

    shape: str = (
        ""  # "workload" (the eval set) or a timed shape "b32xs128"; "" = the workload when timed, else the last shape
    )
    keep: str = field(default="all", metadata={"choices": ("all", "chosen")})  # artifacts the bundle carries
    candidates: tuple[str, ...] = field(
        default=("int8", "fp32"), metadata={"choices": CANDIDATE_PRECISIONS, "nonempty": True}
    )  # precisions tried on each of validate.runtimes (bf16 where the target has it); ORT fp32 always
    int8_classes: str = field(
        default="all", metadata={"choices": ("all", "auto")}
    )  # "auto": an op class stays int8 only where it pays (timed here, or the target's rules)

    def __post_init__(self) -> None:
        check_fields(self, "select")
        if self.shape not in ("", "workload") and not re.fullmatch(r"b\d+xs\d+", self.shape):
            raise BadInputError(
                f'select.shape: expected "workload" or a timed shape such as "b32xs128", got {self.shape!r}'
            )


@dataclass(frozen=True)
class Recipe:
    name: str
    teacher: str = field(metadata={"path": True})  # hub id | local folder | package:<module shipping an HF folder>
    student: str | None = field(
        default=None, metadata={"path": True}
    )  # a trained student to deploy instead (no [distill])
    revision: str | None = None  # the teacher's hub revision (branch, tag or commit); the manifest records its commit
    task: str = field(default="feature-extraction", metadata={"choices": task_names()})
    trust_remote_code: bool = False  # let transformers run code shipped with the model
    allow_new_heads: bool = False  # a checkpoint without the task's head gets a new one (seeded by seed)
    seed: int = 0  # seeds what a run initialises (allow_new_heads)
    target: str = field(
        default="auto", metadata={"choices": TARGET_CHOICES}
    )  # the CPU the bundle is for: auto (this machine) or a level
    task_options: Mapping[str, Any] = field(default_factory=dict)  # the task's options (README, per task)
    distill: DistillConfig | None = None
    export: ExportConfig = field(default_factory=ExportConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    engine: EngineConfig | None = None
    source: str = ""  # the recipe file this came from
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)  # as parsed, for the manifest

    def __post_init__(self) -> None:
        check_fields(self, "")
        if self.select.shape == "workload" and not self.validate.real_workload:
            raise BadInputError('select.shape: "workload" needs validate.real_workload = true')
        if self.student is not None and self.distill_enabled:
            raise BadInputError("student: a recipe names a ready student or distills one ([distill] enabled), not both")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise BadInputError(f"name: expected a plain folder name, got {self.name!r}")
        if self.name.endswith(SIBLING_SUFFIXES):
            raise BadInputError(
                f"name: {self.name!r} ends in a suffix of the folders beside a bundle "
                f"({', '.join(SIBLING_SUFFIXES)}); choose another name"
            )
        task = get_task(self.task)
        configured = configure_task(self.task, self.task_options)  # checks the options (model folder not needed)
        if self.validate.eval_format not in (AUTO, *task.eval_formats):
            raise BadInputError(
                f"validate.eval_format: {self.task} reads {', '.join(task.eval_formats)} "
                f"(or auto), not {self.validate.eval_format!r}"
            )
        for runtime in self.validate.runtimes:
            if TASK_API.get(runtime, "") not in ("", *task.api):
                raise BadInputError(
                    f"validate.runtimes: {runtime} runs only tasks with {TASK_API[runtime]}(); {self.task} has none"
                )
        if self.quantize.mode == "weight-only":
            if any(not RUNTIMES.get(r).contrib_ops for r in self.validate.runtimes):
                raise BadInputError(
                    'validate.runtimes: quantize.mode = "weight-only" writes ONNX Runtime\'s '
                    "MatMulNBits; ship it on onnxruntime (or onnxruntime-genai) only"
                )
            if self.engine is not None and self.engine.enabled:
                raise BadInputError('[engine]: quantize.mode = "weight-only" has no TensorRT form; use "static"')
        configured.check_runtimes({r: RUNTIMES.get(r) for r in self.validate.runtimes})
        if self.engine is not None and self.engine.enabled and not task.engines:
            raise BadInputError(f"[engine]: {self.task} has no TensorRT engine yet; leave [engine] out")
        if self.gate.metric != AUTO and self.gate.metric not in task.metrics:
            raise BadInputError(
                f"gate.metric: {self.task} reports {', '.join(task.metrics)} (or auto), not {self.gate.metric!r}"
            )
        needs = task.conditional_metrics.get(self.gate.metric)
        if needs and not getattr(configured, needs):
            raise BadInputError(f"gate.metric: {self.gate.metric} is measured only with task_options.{needs} set")

    def with_(self, **changes: Any) -> "Recipe":
        """This recipe with some fields replaced (checked again); what was written stays ``raw``."""
        return dataclasses.replace(self, **changes)

    def written(self, key: str) -> bool:
        """Whether the user wrote ``key`` ("validate.seq_lengths") in the recipe or a ``--set``;
        a recipe built in code (no parsed table) counts every key as written."""
        return not self.raw or written_in(self.raw, key)

    @property
    def distill_enabled(self) -> bool:
        return bool(self.distill is not None and self.distill.enabled)

    def to_dict(self) -> dict[str, Any]:
        return _plain({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "raw"})


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


#: recipe values that name files: their defaults go through the path rule too
_DEFAULT_FILES = {"calibration": ("data", CalibrationConfig.data), "validate": ("eval_data", ValidateConfig.eval_data)}


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


def _task_default(raw: Mapping[str, Any], section: str, key: str, default: str) -> str:
    """The data file the recipe's task calibrates / evaluates on when the recipe names none
    (``Task.auto``); a task with nothing shipped that fits (images) makes the key required."""
    name = raw.get("task", Recipe.task)
    if not isinstance(name, str) or name not in task_names():
        return default  # the field check names the bad task
    spec = get_task(name).auto
    value = spec.calibration_data if section == "calibration" else spec.eval_data
    # nothing shipped fits (images): "" (none) until a stage needs it (require_data); `distill` does not
    return "" if value is None else value


def require_data(recipe: Recipe) -> None:
    """Refuse, in one line, a recipe whose task ships no default data and that names none: what
    ``run``, the single stages and ``init`` need before any work."""
    for section, (key, _) in _DEFAULT_FILES.items():
        if not getattr(getattr(recipe, section), key):
            raise BadInputError(
                f"{section}.{key}: {recipe.task} has no shipped default data; name your own "
                f"(in the recipe, or --set {section}.{key}=PATH)"
            )


def recipe_from_dict(raw: dict[str, Any], *, source: Path | None = None) -> Recipe:
    for key in ("name", "teacher"):
        if key not in raw:
            raise BadInputError(f"{key}: required recipe key is missing")
    rule = PathRule.for_recipe(source)
    raw = _moved_task_options(raw)
    given = dict(raw)
    task = given.get("task", Recipe.task)
    if isinstance(task, str) and task in task_names() and isinstance(given.get("task_options", {}), Mapping):
        # typed, and its paths resolved by the recipe's rule (the task re-checks the values when configured)
        given["task_options"] = checked_fields(get_task(task), "task_options", given.get("task_options", {}), rule=rule)
    for section, (key, default) in _DEFAULT_FILES.items():
        table = given.get(section, {})
        if isinstance(table, Mapping) and key not in table:
            given[section] = {**table, key: _task_default(raw, section, key, default)}
    values = checked_fields(Recipe, "", given, rule=rule, skip=("source", "raw"))
    return Recipe(**values, source=str(source) if source else "", raw=raw)


def _moved_task_options(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the task's options written in ``[validate]`` where they were until 0.x
    (``Task.moved_from_validate``) moved into ``[task_options]``, with one WARNING line; read there
    for one release, then refused."""
    task, validate = raw.get("task", Recipe.task), raw.get("validate")
    if not isinstance(task, str) or task not in task_names() or not isinstance(validate, Mapping):
        return raw
    moved = [k for k in validate if k in get_task(task).moved_from_validate]
    if not moved:
        return raw
    options = raw.get("task_options", {})
    both = [k for k in moved if isinstance(options, Mapping) and k in options]
    if both:
        raise BadInputError(f"validate.{both[0]}: also given as task_options.{both[0]}; keep the [task_options] one")
    log.warning(
        "%s: deprecated in [validate], a task option now: write %s under [task_options] (read from [validate] "
        "this release only)",
        ", ".join(f"validate.{k}" for k in moved),
        ", ".join(moved),
    )
    out = dict(raw)
    out["validate"] = {k: v for k, v in validate.items() if k not in moved}
    out["task_options"] = {**(options if isinstance(options, Mapping) else {}), **{k: validate[k] for k in moved}}
    return out


#: recipe values that are lengths the model must take, beyond the task's own (``Task.length_keys``)
LENGTH_KEYS = ("calibration.max_length", "validate.max_length", "validate.seq_lengths")


def fit_lengths(
    sections: Mapping[str, Any],
    *,
    task: Any,
    modality: Any,
    model_config: Any,
    preprocessor: Any,
    written: Callable[[str], bool],
) -> tuple[dict[str, Any], Any]:
    """``sections`` (``{"calibration": CalibrationConfig, "validate": ValidateConfig}``, either may
    be absent) with every length the model must take fitted to its positions: a value the user
    wrote (``written(key)``) that does not fit is refused, naming its key; a default that does not
    fit is clipped (``Modality.fit_lengths``). Returns (the sections, the ``Fitted`` record)."""

    lengths = {}
    for key in LENGTH_KEYS:
        section, name = key.split(".")
        if section in sections:
            lengths[key] = Length(getattr(sections[section], name), written=written(key))
    if "validate" in sections:  # the task's own: each needs what ``checked_lengths`` says beyond its value
        for key, need in task.checked_lengths().items():
            value = getattr(task, key.split(".")[1])
            lengths[key] = Length(value, extra=need - Length(value).need, written=written(key))
    fitted = modality.fit_lengths(model_config, preprocessor, lengths)
    out = dict(sections)
    for key, value in fitted.values.items():
        section, name = key.split(".")
        if section in out and value != getattr(out[section], name):  # the task's: ``Task.with_lengths``
            out[section] = dataclasses.replace(out[section], **{name: value})
    return out, fitted


def section_config(cls: type, section: str, raw: Mapping[str, Any], *, source: Path | None = None):
    """One section on its own (the single-stage commands), through the same checker."""
    return check_section(cls, section, raw, rule=PathRule.for_recipe(source))
